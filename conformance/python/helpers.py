"""Shared python-qpid-proton helpers for the conformance tests."""

import contextlib

from proton import Delivery, Message
from proton.utils import BlockingConnection
from proton._exceptions import Timeout

KEY_NAME = "RootManageSharedAccessKey"
KEY_VALUE = "SAS_KEY_VALUE"

__all__ = ["connect", "connection", "Timeout", "drain_all", "settle_next", "roundtrip", "send_many",
           "receive_n", "expect_empty", "KEY_NAME", "KEY_VALUE", "unsettled_count"]


def connect(broker, timeout=20, **kw):
    """BlockingConnection to the broker; default SASL ANONYMOUS."""
    if "user" not in kw and "sasl_enabled" not in kw and "allowed_mechs" not in kw:
        kw["allowed_mechs"] = "ANONYMOUS"
    return BlockingConnection(broker.amqp_url, timeout=timeout, **kw)


@contextlib.contextmanager
def connection(broker, **kw):
    c = connect(broker, **kw)
    try:
        yield c
    finally:
        try:
            c.close()
        except Exception:
            pass


def settle_next(rcv, state, failed=None, undeliverable=None):
    """Settle the oldest message popped by rcv.receive() with a specific outcome."""
    d = rcv.fetcher.unsettled.popleft()
    if failed is not None:
        d.local.failed = failed
    if undeliverable is not None:
        d.local.undeliverable = undeliverable
    d.update(state)
    d.settle()
    return d


def unsettled_count(rcv):
    return len(rcv.fetcher.unsettled)


def send_many(conn, snd, messages, timeout=60):
    """Pipelined unsettled send: queue every message, then wait until all are settled
    by the broker. Returns the deliveries."""
    link = snd.link
    deliveries = [link.send(m) for m in messages]
    state = {"i": 0}

    def all_settled():
        i = state["i"]
        while i < len(deliveries) and deliveries[i].remote_state:
            i += 1
        state["i"] = i
        return i == len(deliveries)

    conn.wait(all_settled, timeout=timeout, msg="waiting for %d dispositions" % len(deliveries))
    for d in deliveries:
        d.settle()
    return deliveries


def receive_n(rcv, n, timeout=10, accept=True):
    out = []
    for _ in range(n):
        m = rcv.receive(timeout=timeout)
        if accept and unsettled_count(rcv):
            rcv.accept()
        out.append(m)
    return out


def expect_empty(rcv, timeout=1.0):
    """Assert that nothing arrives on rcv within timeout."""
    try:
        m = rcv.receive(timeout=timeout)
    except Timeout:
        return
    raise AssertionError("expected no message, got %r (delivery_count=%r)" % (m.body, m.delivery_count))


def drain_all(rcv, timeout=1.0, accept=True):
    out = []
    while True:
        try:
            m = rcv.receive(timeout=timeout)
        except Timeout:
            return out
        if accept and unsettled_count(rcv):
            rcv.accept()
        out.append(m)


def roundtrip(broker, address="q2", body="ping", **kw):
    """Send and receive one message on a fresh connection; returns the received body."""
    with connection(broker, **kw) as c:
        snd = c.create_sender(address)
        snd.send(Message(body=body))
        rcv = c.create_receiver(address, credit=1)
        m = rcv.receive(timeout=10)
        rcv.accept()
        return m.body


# re-exported for tests
Delivery = Delivery


# --------------------------------------------------------------------------
# links without proton's "remote address must echo ours" check (used for
# addresses the broker may normalise: amqp:// prefixes, $DeadLetterQueue case)
# --------------------------------------------------------------------------
from proton.utils import BlockingSender, BlockingReceiver  # noqa: E402
from proton._utils import BlockingLink, Fetcher  # noqa: E402


def lenient_sender(conn, address, options=None):
    link = conn.container.create_sender(conn.conn, address, options=options)
    s = BlockingSender.__new__(BlockingSender)
    BlockingLink.__init__(s, conn, link)  # waits for the attach reply, raises LinkDetached if closed
    assert link.remote_target is not None and link.remote_target.address, \
        "attach reply for %r has no target address (unknown node?)" % address
    return s


def lenient_receiver(conn, address, credit=10, options=None):
    fetcher = Fetcher(conn, credit)
    link = conn.container.create_receiver(conn.conn, address, handler=fetcher, options=options)
    r = BlockingReceiver.__new__(BlockingReceiver)
    BlockingLink.__init__(r, conn, link)
    assert link.remote_source is not None and link.remote_source.address, \
        "attach reply for %r has no source address (unknown node?)" % address
    if credit:
        link.flow(credit)
    r.fetcher = fetcher
    r.container = conn.container
    return r


def collect(conn, rcv, n, timeout=10):
    """Wait until n messages are buffered on rcv (without issuing extra credit
    the way BlockingReceiver.receive does) and pop them. Returns messages."""
    conn.wait(lambda: rcv.fetcher.has_message >= n, timeout=timeout,
              msg="waiting for %d messages (have %d)" % (n, rcv.fetcher.has_message))
    return [rcv.fetcher.pop() for _ in range(n)]


def pump(conn, seconds):
    """Run the connection's event loop for `seconds` (I/O keeps flowing)."""
    try:
        conn.wait(lambda: False, timeout=seconds)
    except Timeout:
        pass


def raw_tag(delivery):
    """The delivery tag as bytes (proton's Delivery.tag decodes it as UTF-8)."""
    from cproton_ffi import ffi, lib
    b = lib.pn_delivery_tag(delivery._impl)
    return ffi.unpack(b.start, b.size)
