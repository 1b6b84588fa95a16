"""Ferrobus driven by the official Python SDK, azure-servicebus 7.15.0 (pyamqp transport).

Connection string as in the spec (section 10):
  Endpoint=sb://127.0.0.1:PORT;SharedAccessKeyName=RootManageSharedAccessKey;
  SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;

Every test starts its own broker (they start in ~20 ms) with the queue settings it needs, so
sequence numbers start at 1 and a config key the running binary does not know yet only fails the
tests that use it. Settings used: max_delivery_count, lock_duration_ms, default_message_ttl_ms,
dead_lettering_on_message_expiration, requires_duplicate_detection, duplicate_detection_window_ms
and [amqp] max_message_size.

Covers spec section 10 items 1 (explicit port), 2-10, 12-18, 27-29, plus the SDK's connection-open
write pattern (header alone, then Open + Begin + attaches in one write). Sessions, topics and
forwarding (items 19-26) belong to later work.

Client knobs (sdk_helpers): retry_total=1, try_timeout=5 s per attempt, keep_alive=0 (the SDK's
keep-alive thread only makes close() slower), send/settle timeout 20 s. Run:
  conformance/python/run test_sdk_python.py        (or: pytest -q test_sdk_python.py in the venv)
"""

import datetime
import time
import uuid

import pytest
from azure.servicebus import (
    ServiceBusMessage,
    ServiceBusMessageState,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)
from azure.servicebus.exceptions import (
    MessageLockLostError,
    MessageNotFoundError,
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
)

from sdk_helpers import (
    KEY_NAME,
    KEY_VALUE,
    MGMT_TIMEOUT,
    FixedSasCredential,
    app_props,
    body_of,
    drain,
    receive_n,
    receive_one,
    receiver,
    sb_client,
    sb_client_with_credential,
    sdk_style_open,
    sender,
)

SEND_TIMEOUT = 20
DLQ = ServiceBusSubQueue.DEAD_LETTER
UTC = datetime.timezone.utc
S = datetime.timedelta(seconds=1)


def utcnow():
    return datetime.datetime.now(UTC)


@pytest.fixture
def sbroker(start_broker):
    """Factory: sbroker(queues, amqp=None, auth_keys=None) -> a started broker with these queues
    (names or dicts of per-queue settings); conftest's teardown checks it."""
    def start(queues, amqp=None, auth_keys=None):
        return start_broker(amqp=amqp, queues=queues, auth_keys=auth_keys)
    return start


def send(client, queue, messages):
    with sender(client, queue) as s:
        s.send_messages(messages, timeout=SEND_TIMEOUT)


def assert_nothing(rcv, wait=0.7, what="queue"):
    got = rcv.receive_messages(max_message_count=10, max_wait_time=wait)
    assert got == [], "expected the %s to be empty, received %r" % (
        what, [(str(m), m.message_id, m.sequence_number, m.delivery_count) for m in got])


def ids(msgs):
    return [m.message_id for m in msgs]


# ---------------------------------------------------------------------------------------------
# send / receive / settle
# ---------------------------------------------------------------------------------------------
def test_single_send_receive_complete(sbroker):
    b = sbroker(["q1"])
    with sb_client(b) as c:
        send(c, "q1", ServiceBusMessage("hello-1", message_id="m-1"))
        with receiver(c, "q1") as r:
            m = receive_one(r)
            assert body_of(m) == b"hello-1"
            assert m.message_id == "m-1"
            assert m.delivery_count == 0
            assert m.lock_token is not None
            r.complete_message(m)
            assert_nothing(r)
        # a fresh receiver (new connection) does not see it either
        with receiver(c, "q1") as r:
            assert_nothing(r, 1.0)


def test_handler_open_is_prompt(sbroker):
    """Every sender / receiver is its own connection (SASL, Open + Begin + CBS attaches pipelined,
    put-token, entity attach). 8 in a row must each be ready well within 3 s, without the SDK's
    retry (retry_total=0): a broker that leaves pipelined frames unprocessed until more bytes
    arrive stalls here."""
    b = sbroker(["q1"])
    slow = []
    with sb_client(b, retry_total=0, try_timeout=3) as c:
        for i in range(8):
            t = time.monotonic()
            try:
                if i % 2:
                    with receiver(c, "q1") as r:
                        for m in r.receive_messages(max_message_count=5, max_wait_time=0.3):
                            r.complete_message(m)
                else:
                    send(c, "q1", ServiceBusMessage("o%d" % i, message_id="o%d" % i))
            except Exception as e:  # noqa: BLE001 - report every stall, not just the first
                slow.append((i, "%s: %s" % (type(e).__name__, e)))
                continue
            took = time.monotonic() - t
            if took > 2.5:
                slow.append((i, "took %.1fs" % took))
    assert not slow, "handlers that did not open promptly (of 8): %r" % slow


def test_pipelined_open_begin_after_header(sbroker):
    """The exact write pattern of the Python SDK: AMQP header alone, then Open + Begin (+ CBS
    attaches) in one write. The broker must answer the Begin without waiting for more bytes."""
    b = sbroker(["q1"])
    for _ in range(3):
        codes = sdk_style_open(b.amqp_host, b.amqp_port)
        assert codes == [0x10, 0x11], \
            "after header + [Open+Begin] the broker sent performatives %r within 2 s (want Open, Begin)" % (
                ["0x%02x" % c for c in codes],)


def test_send_list_of_messages(sbroker):
    """send_messages([...]) goes out as one batch transfer (message-format 0x80013700); every
    inner message is enqueued on its own, in order."""
    b = sbroker(["q1"])
    with sb_client(b) as c:
        send(c, "q1", [ServiceBusMessage("list-%d" % i, message_id="l%d" % i,
                                         application_properties={"i": i}) for i in range(5)])
        with receiver(c, "q1") as r:
            got = receive_n(r, 5)
            assert ids(got) == ["l%d" % i for i in range(5)]
            assert [body_of(m) for m in got] == [b"list-%d" % i for i in range(5)]
            assert [app_props(m)["i"] for m in got] == list(range(5))
            assert [m.sequence_number for m in got] == [1, 2, 3, 4, 5]
            for m in got:
                r.complete_message(m)
            assert_nothing(r)


def test_create_message_batch(sbroker):
    """create_message_batch sizes itself from the attach max-message-size; a full batch goes
    through and arrives in order."""
    b = sbroker(["q1"], amqp={"max_message_size": 262144})
    with sb_client(b) as c:
        with sender(c, "q1") as s:
            batch = s.create_message_batch()
            # the broker stated max-message-size on the sender attach (not the SDK's 1 MiB fallback)
            assert s._max_message_size_on_link == 262144
            assert batch.max_size_in_bytes == 256 * 1024
            for i in range(20):
                batch.add_message(ServiceBusMessage(b"%04d" % i + b"x" * 1000, message_id="b%d" % i))
            s.send_messages(batch, timeout=SEND_TIMEOUT)

            full = s.create_message_batch()
            n = 0
            with pytest.raises(ValueError):
                while True:
                    full.add_message(ServiceBusMessage(b"y" * 8000, message_id="f%d" % n))
                    n += 1
            assert n >= 25, "only %d 8 KB messages fit into a %d byte batch" % (n, full.max_size_in_bytes)
            s.send_messages(full, timeout=SEND_TIMEOUT)
        with receiver(c, "q1") as r:
            got = receive_n(r, 20 + n, timeout=20)
            assert ids(got) == ["b%d" % i for i in range(20)] + ["f%d" % i for i in range(n)]
            assert body_of(got[7]) == b"0007" + b"x" * 1000
            assert all(body_of(m) == b"y" * 8000 for m in got[20:])
            seqs = [m.sequence_number for m in got]
            assert seqs == list(range(1, 21 + n))
            for m in got:
                r.complete_message(m)
            assert_nothing(r)


def test_oversized_message_refused(sbroker):
    b = sbroker(["q1"], amqp={"max_message_size": 262144})
    with sb_client(b) as c:
        with sender(c, "q1") as s:
            with pytest.raises(MessageSizeExceededError):
                s.send_messages(ServiceBusMessage(b"z" * 400_000, message_id="big"), timeout=SEND_TIMEOUT)
            s.send_messages(ServiceBusMessage("small", message_id="small"), timeout=SEND_TIMEOUT)
        with receiver(c, "q1") as r:
            got = drain(r)
            assert ids(got) == ["small"]
            r.complete_message(got[0])


def test_message_fields_round_trip(sbroker):
    """Checklist item 4."""
    b = sbroker(["q1"])
    u = uuid.uuid4()
    props = {"s": "text ✓", "i": 42, "neg": -7, "f": 3.25, "t": True, "ff": False, "u": u}
    m1 = ServiceBusMessage(
        b"\x00\x01binary\xff",
        message_id="mid-fields",
        correlation_id="corr-1",
        subject="subj",
        content_type="application/octet-stream",
        to="dest",
        reply_to="reply-q",
        reply_to_session_id="rs-1",
        partition_key="pk-1",
        application_properties=props,
        time_to_live=datetime.timedelta(seconds=300),
    )
    m2 = ServiceBusMessage("héllo wörld", message_id="mid-text")
    with sb_client(b) as c:
        with sender(c, "q1") as s:
            s.send_messages(m1, timeout=SEND_TIMEOUT)
            s.send_messages(m2, timeout=SEND_TIMEOUT)
        with receiver(c, "q1") as r:
            a, t = receive_n(r, 2)
            assert body_of(a) == b"\x00\x01binary\xff"
            assert a.message_id == "mid-fields"
            assert a.correlation_id == "corr-1"
            assert a.subject == "subj"
            assert a.content_type == "application/octet-stream"
            assert a.to == "dest"
            assert a.reply_to == "reply-q"
            assert a.reply_to_session_id == "rs-1"
            assert a.session_id is None
            assert a.partition_key == "pk-1"
            assert a.time_to_live == datetime.timedelta(seconds=300)
            assert a.expires_at_utc == a.enqueued_time_utc + datetime.timedelta(seconds=300)
            got = app_props(a)
            assert got == props, got
            for k in ("t", "ff"):
                assert type(got[k]) is bool, (k, got[k])
            assert isinstance(got["u"], uuid.UUID) and got["u"] == u
            assert isinstance(got["f"], float)
            assert body_of(t) == "héllo wörld".encode()
            assert t.message_id == "mid-text"
            assert t.application_properties in (None, {})
            r.complete_message(a)
            r.complete_message(t)


def test_broker_annotations(sbroker):
    """Checklist item 5: sequence numbers from 1, enqueued time, locked-until = now + LockDuration,
    delivery_count 0, lock token = UUID(bytes_le=16-byte delivery tag)."""
    b = sbroker([{"name": "q1", "lock_duration_ms": 30000}, "q2"])
    with sb_client(b) as c:
        t0 = utcnow()
        with sender(c, "q1") as s:
            for i in range(3):
                s.send_messages(ServiceBusMessage("a%d" % i, message_id="a%d" % i), timeout=SEND_TIMEOUT)
        t1 = utcnow()
        send(c, "q2", ServiceBusMessage("other", message_id="o"))
        with receiver(c, "q1") as r:
            r0 = utcnow()
            got = receive_n(r, 3)
            r1 = utcnow()
            assert ids(got) == ["a0", "a1", "a2"]
            assert [m.sequence_number for m in got] == [1, 2, 3]
            tokens = set()
            for m in got:
                assert t0 - S <= m.enqueued_time_utc <= t1 + S, (m.enqueued_time_utc, t0, t1)
                lu = m.locked_until_utc
                assert lu is not None
                assert r0 + 29 * S <= lu <= r1 + 31 * S, (lu, r0, r1)
                assert m.delivery_count == 0
                assert m.state == ServiceBusMessageState.ACTIVE
                tag = m._delivery_tag
                assert isinstance(tag, (bytes, bytearray)) and len(tag) == 16, tag
                assert m.lock_token == uuid.UUID(bytes_le=bytes(tag))
                tokens.add(m.lock_token)
            assert len(tokens) == 3
            for m in got:
                r.complete_message(m)
        with receiver(c, "q2") as r:
            m = receive_one(r)
            assert m.sequence_number == 1, "sequence numbers are per entity"
            r.complete_message(m)


def test_abandon_redelivers_with_delivery_count(sbroker):
    b = sbroker(["q1"])
    with sb_client(b) as c:
        send(c, "q1", ServiceBusMessage("ab", message_id="ab"))
        with receiver(c, "q1") as r:
            m = receive_one(r)
            assert m.delivery_count == 0
            seq = m.sequence_number
            r.abandon_message(m)
            m2 = receive_one(r)
            assert (m2.message_id, m2.sequence_number, m2.delivery_count) == ("ab", seq, 1)
            r.abandon_message(m2)
            m3 = receive_one(r)
            assert m3.delivery_count == 2
            r.complete_message(m3)
            assert_nothing(r)


def test_max_delivery_count_dead_letters(sbroker):
    b = sbroker([{"name": "q1", "max_delivery_count": 3}])
    with sb_client(b) as c:
        send(c, "q1", ServiceBusMessage("poison", message_id="poison"))
        with receiver(c, "q1") as r:
            for dc in range(3):
                m = receive_one(r)
                assert (m.message_id, m.delivery_count) == ("poison", dc)
                r.abandon_message(m)
            assert_nothing(r)
        with receiver(c, "q1", sub_queue=DLQ) as d:
            m = receive_one(d)
            assert m.message_id == "poison"
            assert body_of(m) == b"poison"
            assert m.dead_letter_reason == "MaxDeliveryCountExceeded"
            d.complete_message(m)
            assert_nothing(d, 1.0, "DLQ")


def test_dead_letter_with_reason_and_dlq_receive(sbroker):
    b = sbroker(["q1"])
    with sb_client(b) as c:
        send(c, "q1", [ServiceBusMessage("dl-1", message_id="dl-1", application_properties={"k": "v"}),
                       ServiceBusMessage("dl-2", message_id="dl-2")])
        with receiver(c, "q1") as r:
            m1, m2 = receive_n(r, 2)
            r.dead_letter_message(m1, reason="bad-order", error_description="total < 0")
            r.dead_letter_message(m2, reason="second")
            assert_nothing(r)
        with receiver(c, "q1", sub_queue=DLQ) as d:
            a, bb = receive_n(d, 2)
            assert ids([a, bb]) == ["dl-1", "dl-2"]
            assert body_of(a) == b"dl-1"
            assert a.dead_letter_reason == "bad-order"
            assert a.dead_letter_error_description == "total < 0"
            assert app_props(a)["k"] == "v"
            assert bb.dead_letter_reason == "second"
            assert a.delivery_count is not None and a.lock_token is not None
            d.complete_message(a)
            d.abandon_message(bb)      # stays in the DLQ
            again = receive_one(d)
            assert again.message_id == "dl-2"
            d.complete_message(again)
            assert_nothing(d, 1.0, "DLQ")
        # the DLQ is drainable in receive-and-delete mode too
        send(c, "q1", ServiceBusMessage("dl-3", message_id="dl-3"))
        with receiver(c, "q1") as r:
            r.dead_letter_message(receive_one(r), reason="r3", error_description="d3")
        with receiver(c, "q1", sub_queue=DLQ, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as d:
            m = receive_one(d)
            assert (m.message_id, m.dead_letter_reason, m.dead_letter_error_description) == ("dl-3", "r3", "d3")
            assert_nothing(d, 1.0, "DLQ")


def test_receive_and_delete(sbroker):
    b = sbroker(["q1"])
    with sb_client(b) as c:
        send(c, "q1", [ServiceBusMessage("rd-%d" % i, message_id="rd-%d" % i) for i in range(3)])
        with receiver(c, "q1", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as r:
            got = receive_n(r, 3)
            assert ids(got) == ["rd-0", "rd-1", "rd-2"]
            for m in got:
                assert m.lock_token is None
                assert m.locked_until_utc is None
                assert m.delivery_count == 0
            with pytest.raises(ValueError):
                r.complete_message(got[0])
        with receiver(c, "q1") as r:
            assert_nothing(r)


def test_receive_returns_early_and_close_returns_locked_messages(sbroker):
    """Checklist item 10: a receive asking for more than is there returns what there is without
    waiting for max_wait_time; closing a receiver returns its locked messages at once (delivery
    count + 1, behaviour decisions), long before the 60 s lock would expire."""
    b = sbroker(["q1"])
    with sb_client(b) as c:
        send(c, "q1", [ServiceBusMessage("e0", message_id="e0"), ServiceBusMessage("e1", message_id="e1")])
        with receiver(c, "q1") as r:
            t = time.monotonic()
            got = receive_n(r, 2, timeout=8, max_wait=8)
            took = time.monotonic() - t
            assert ids(got) == ["e0", "e1"]
            assert took < 4, "receive of 2 (asking for up to 2, max_wait_time=8) took %.1fs" % took
            t = time.monotonic()
            assert r.receive_messages(max_message_count=5, max_wait_time=1.0) == []
            took = time.monotonic() - t
            assert 0.5 <= took < 5, "empty receive with max_wait_time=1 took %.1fs" % took
        # closed without settling
        with receiver(c, "q1") as r:
            t = time.monotonic()
            again = receive_n(r, 2, timeout=10)
            assert ids(again) == ["e0", "e1"]
            assert time.monotonic() - t < 5
            assert [m.delivery_count for m in again] == [1, 1]
            for m in again:
                r.complete_message(m)


# ---------------------------------------------------------------------------------------------
# defer
# ---------------------------------------------------------------------------------------------
def test_defer_receive_deferred_and_complete(sbroker):
    """Checklist item 8."""
    b = sbroker(["q1"])
    with sb_client(b) as c:
        send(c, "q1", [ServiceBusMessage("df", message_id="df"), ServiceBusMessage("after", message_id="after")])
        with receiver(c, "q1") as r:
            m = receive_one(r)
            assert m.message_id == "df"
            seq = m.sequence_number
            r.defer_message(m)
            nxt = receive_one(r)
            assert nxt.message_id == "after", "a deferred message must not be redelivered"
            r.complete_message(nxt)
            assert_nothing(r)

            peeked = r.peek_messages(10, sequence_number=1, timeout=MGMT_TIMEOUT)
            assert [(p.sequence_number, p.state) for p in peeked] == [(seq, ServiceBusMessageState.DEFERRED)]

            (d,) = r.receive_deferred_messages([seq], timeout=MGMT_TIMEOUT)
            assert (d.message_id, d.sequence_number) == ("df", seq)
            assert body_of(d) == b"df"
            assert d.lock_token is not None
            assert d.locked_until_utc is not None and d.locked_until_utc > utcnow()
            r.complete_message(d)          # com.microsoft:update-disposition "completed"

            assert r.peek_messages(10, sequence_number=1, timeout=MGMT_TIMEOUT) == []
            with pytest.raises(MessageNotFoundError):
                r.receive_deferred_messages([seq], timeout=MGMT_TIMEOUT)


def test_deferred_messages_abandon_and_dead_letter_via_management(sbroker):
    b = sbroker(["q1"])
    with sb_client(b) as c:
        send(c, "q1", [ServiceBusMessage("d%d" % i, message_id="d%d" % i) for i in range(3)])
        with receiver(c, "q1") as r:
            got = receive_n(r, 3)
            seqs = [m.sequence_number for m in got]
            for m in got:
                r.defer_message(m)
            assert_nothing(r)
            ds = r.receive_deferred_messages(seqs, timeout=MGMT_TIMEOUT)
            by_id = {m.message_id: m for m in ds}
            assert sorted(by_id) == ["d0", "d1", "d2"]
            r.dead_letter_message(by_id["d0"], reason="mgmt-reason", error_description="mgmt-desc")
            r.abandon_message(by_id["d1"])
            r.defer_message(by_id["d2"])
            # abandoned / re-deferred deferred messages stay deferred: not receivable normally
            assert_nothing(r)
            again = r.receive_deferred_messages(seqs[1:], timeout=MGMT_TIMEOUT)
            assert sorted(ids(again)) == ["d1", "d2"]
            for m in again:
                r.complete_message(m)
            assert r.peek_messages(10, sequence_number=1, timeout=MGMT_TIMEOUT) == []
        with receiver(c, "q1", sub_queue=DLQ) as d:
            m = receive_one(d)
            assert (m.message_id, m.dead_letter_reason, m.dead_letter_error_description) == \
                ("d0", "mgmt-reason", "mgmt-desc")
            d.complete_message(m)


def test_receive_deferred_unknown_sequence_number(sbroker):
    b = sbroker(["q1"])
    with sb_client(b) as c:
        send(c, "q1", ServiceBusMessage("active", message_id="active"))
        with receiver(c, "q1") as r:
            t = time.monotonic()
            with pytest.raises(MessageNotFoundError):
                r.receive_deferred_messages([12345], timeout=MGMT_TIMEOUT)
            # an active (not deferred) message cannot be fetched by sequence number either
            with pytest.raises(MessageNotFoundError):
                r.receive_deferred_messages([1], timeout=MGMT_TIMEOUT)
            assert time.monotonic() - t < 20
            m = receive_one(r)
            assert (m.message_id, m.delivery_count) == ("active", 0)
            r.complete_message(m)


# ---------------------------------------------------------------------------------------------
# peek
# ---------------------------------------------------------------------------------------------
def test_peek(sbroker):
    """Checklist items 3 and 27: paging from last seq + 1, explicit start, empty = [], never locks
    or counts a delivery."""
    b = sbroker(["q1"])
    with sb_client(b) as c:
        with receiver(c, "q1") as r:
            assert r.peek_messages(5, timeout=MGMT_TIMEOUT) == []
        send(c, "q1", [ServiceBusMessage("p%d" % i, message_id="p%d" % i) for i in range(5)])
        with receiver(c, "q1") as r:
            p1 = r.peek_messages(3, timeout=MGMT_TIMEOUT)
            assert [(p.sequence_number, p.message_id) for p in p1] == [(1, "p0"), (2, "p1"), (3, "p2")]
            assert all(p.state == ServiceBusMessageState.ACTIVE for p in p1)
            assert body_of(p1[0]) == b"p0"
            assert p1[0].enqueued_time_utc is not None
            p2 = r.peek_messages(3, timeout=MGMT_TIMEOUT)      # continues at last seq + 1
            assert [p.sequence_number for p in p2] == [4, 5]
            p3 = r.peek_messages(2, sequence_number=2, timeout=MGMT_TIMEOUT)
            assert [p.sequence_number for p in p3] == [2, 3]
            assert r.peek_messages(5, sequence_number=6, timeout=MGMT_TIMEOUT) == []
            with pytest.raises(ValueError):
                r.complete_message(p1[0])                      # peeked messages are not locked

            got = receive_n(r, 5)
            assert ids(got) == ["p%d" % i for i in range(5)]
            assert [m.delivery_count for m in got] == [0] * 5, "peek must not count a delivery"
            # locked messages are still peekable, and peek does not bump their delivery count
            p4 = r.peek_messages(5, sequence_number=1, timeout=MGMT_TIMEOUT)
            assert [p.sequence_number for p in p4] == [1, 2, 3, 4, 5]
            for m in got:
                r.complete_message(m)
            assert r.peek_messages(5, sequence_number=1, timeout=MGMT_TIMEOUT) == []


# ---------------------------------------------------------------------------------------------
# locks
# ---------------------------------------------------------------------------------------------
def test_renew_message_lock(sbroker):
    """Checklist item 13."""
    b = sbroker([{"name": "q1", "lock_duration_ms": 3000}])
    with sb_client(b) as c:
        send(c, "q1", [ServiceBusMessage("rn-1", message_id="rn-1"), ServiceBusMessage("rn-2", message_id="rn-2")])
        with receiver(c, "q1") as r:
            m1, m2 = receive_n(r, 2)
            lu1 = m1.locked_until_utc
            time.sleep(1.5)
            before = utcnow()
            new = r.renew_message_lock(m1, timeout=MGMT_TIMEOUT)
            assert new == m1.locked_until_utc
            assert before + 2 * S <= new <= utcnow() + 4 * S, (new, before)
            assert new > lu1 + S
            # past the original lock, inside the renewed one
            time.sleep(max(0.0, (lu1 - utcnow()).total_seconds()) + 0.7)
            assert utcnow() < new
            r.complete_message(m1)
            # m2 was never renewed: its lock is gone; renewing it is refused by the broker
            with pytest.raises(MessageLockLostError):
                r.renew_message_lock(m2, timeout=MGMT_TIMEOUT)
        with receiver(c, "q1") as r:
            got = drain(r)
            assert [(m.message_id, m.delivery_count) for m in got] == [("rn-2", 1)], \
                "only the un-renewed message comes back, with delivery_count 1"
            r.complete_message(got[0])


def test_lock_expiry_redelivery_and_lock_lost(sbroker):
    """Checklist item 12: after LockDuration the message is redelivered with delivery_count + 1;
    settling the stale delivery raises MessageLockLostError (first the SDK's own check of
    x-opt-locked-until, then - with that check defeated - the broker's answer on the link)."""
    b = sbroker([{"name": "q1", "lock_duration_ms": 2000}])
    with sb_client(b) as c:
        send(c, "q1", ServiceBusMessage("lx", message_id="lx"))
        with receiver(c, "q1") as r:
            m = receive_one(r)
            assert m.delivery_count == 0
            lu = m.locked_until_utc
            time.sleep(max(0.0, (lu - utcnow()).total_seconds()) + 0.5)
            with pytest.raises(MessageLockLostError):
                r.complete_message(m)                       # SDK: locked_until_utc has passed
            m._expiry = utcnow() + datetime.timedelta(minutes=5)   # defeat the client-side check
            with pytest.raises(MessageLockLostError):
                r.complete_message(m)                       # broker: com.microsoft:message-lock-lost
        with receiver(c, "q1") as r:
            again = receive_one(r, timeout=5)
            assert (again.message_id, again.delivery_count) == ("lx", 1)
            r.complete_message(again)
            assert_nothing(r, 1.0)


def test_lock_expiry_counts_towards_max_delivery_count(sbroker):
    b = sbroker([{"name": "q1", "lock_duration_ms": 1000, "max_delivery_count": 2}])
    with sb_client(b) as c:
        send(c, "q1", ServiceBusMessage("slow", message_id="slow"))
        with receiver(c, "q1") as r:
            for dc in range(2):
                m = receive_one(r, timeout=5)
                assert (m.message_id, m.delivery_count) == ("slow", dc)
                time.sleep(1.5)                              # let the lock expire
            assert_nothing(r, 2.0)
        with receiver(c, "q1", sub_queue=DLQ) as d:
            m = receive_one(d, timeout=5)
            assert (m.message_id, m.dead_letter_reason) == ("slow", "MaxDeliveryCountExceeded")
            d.complete_message(m)


# ---------------------------------------------------------------------------------------------
# schedule
# ---------------------------------------------------------------------------------------------
def wait_for_scheduled(rcv, due, n=1, late=4.0):
    """Receive until n messages arrived or due + late passed; returns (messages, arrival time of
    the first one)."""
    out, first_at = [], None
    deadline = due + late * S
    while len(out) < n and utcnow() < deadline:
        got = rcv.receive_messages(max_message_count=n - len(out), max_wait_time=0.5)
        if got and first_at is None:
            first_at = utcnow()
        out.extend(got)
    return out, first_at


def test_schedule_and_cancel(sbroker):
    """Checklist item 17 (schedule_messages / cancel_scheduled_messages over $management)."""
    b = sbroker(["q1"])
    with sb_client(b) as c, sender(c, "q1") as s, receiver(c, "q1") as r:
        # both links are open before the clock starts
        due = (utcnow() + 5 * S).replace(microsecond=0)
        later = due + datetime.timedelta(hours=1)
        keep = s.schedule_messages(ServiceBusMessage("sch-keep", message_id="sch-keep"), due,
                                   timeout=MGMT_TIMEOUT)
        drop = s.schedule_messages([ServiceBusMessage("sch-drop", message_id="sch-drop")], later,
                                   timeout=MGMT_TIMEOUT)
        assert len(keep) == 1 and len(drop) == 1
        assert keep[0] != drop[0] and all(isinstance(x, int) and x > 0 for x in keep + drop)
        peeked = r.peek_messages(10, sequence_number=1, timeout=MGMT_TIMEOUT)
        assert utcnow() < due, "test setup too slow"
        assert sorted((p.sequence_number, p.message_id, p.state) for p in peeked) == sorted(
            [(keep[0], "sch-keep", ServiceBusMessageState.SCHEDULED),
             (drop[0], "sch-drop", ServiceBusMessageState.SCHEDULED)])
        assert sorted(p.scheduled_enqueue_time_utc for p in peeked) == [due, later]
        s.cancel_scheduled_messages(drop, timeout=MGMT_TIMEOUT)
        peeked = r.peek_messages(10, sequence_number=1, timeout=MGMT_TIMEOUT)
        assert [p.sequence_number for p in peeked] == keep, "cancelled message still there"
        assert utcnow() < due - 1.5 * S, "test setup too slow"
        got, arrived = wait_for_scheduled(r, due, n=2)
        assert ids(got) == ["sch-keep"], "scheduled message did not arrive by due + 4 s"
        assert due - S <= arrived <= due + 2.5 * S, \
            "scheduled for %s, arrived %s" % (due.time(), arrived.time())
        m = got[0]
        assert m.sequence_number == keep[0]
        assert m.scheduled_enqueue_time_utc == due
        assert m.delivery_count == 0
        r.complete_message(m)
        assert_nothing(r)


def test_send_with_scheduled_enqueue_time(sbroker):
    b = sbroker(["q1"])
    with sb_client(b) as c, sender(c, "q1") as s, receiver(c, "q1") as r:
        due = (utcnow() + 4 * S).replace(microsecond=0)
        s.send_messages([ServiceBusMessage("later", message_id="later", scheduled_enqueue_time_utc=due),
                         ServiceBusMessage("now", message_id="now")], timeout=SEND_TIMEOUT)
        first = receive_n(r, 1)
        assert ids(first) == ["now"]
        r.complete_message(first[0])
        assert utcnow() < due - 1.5 * S, "test setup too slow"
        got, arrived = wait_for_scheduled(r, due)
        assert ids(got) == ["later"]
        assert due - S <= arrived <= due + 2.5 * S, \
            "scheduled for %s, arrived %s" % (due.time(), arrived.time())
        assert got[0].scheduled_enqueue_time_utc == due
        r.complete_message(got[0])


# ---------------------------------------------------------------------------------------------
# TTL
# ---------------------------------------------------------------------------------------------
def test_message_ttl_expiry_drops(sbroker):
    b = sbroker(["q1"])
    with sb_client(b) as c:
        send(c, "q1", [ServiceBusMessage("short", message_id="short", time_to_live=datetime.timedelta(seconds=2)),
                       ServiceBusMessage("keep", message_id="keep")])
        time.sleep(3.0)
        with receiver(c, "q1") as r:
            got = drain(r)
            assert ids(got) == ["keep"], "an expired message must never be delivered"
            r.complete_message(got[0])
        with receiver(c, "q1", sub_queue=DLQ) as d:
            assert_nothing(d, 1.0, "DLQ (dead_lettering_on_message_expiration is off)")


def test_entity_default_ttl_expires_and_caps(sbroker):
    """default_message_ttl_ms applies to messages without a TTL and caps longer ones."""
    b = sbroker([{"name": "q1", "default_message_ttl_ms": 2000}])
    with sb_client(b) as c:
        send(c, "q1", [ServiceBusMessage("no-ttl", message_id="no-ttl"),
                       ServiceBusMessage("long-ttl", message_id="long-ttl",
                                         time_to_live=datetime.timedelta(seconds=60))])
        time.sleep(3.0)
        with receiver(c, "q1") as r:
            assert_nothing(r, 1.5)


def test_entity_default_ttl_in_header(sbroker):
    """Behaviour decision: delivered messages carry their (effective) TTL in the header."""
    b = sbroker([{"name": "q1", "default_message_ttl_ms": 20000}])
    with sb_client(b) as c:
        send(c, "q1", [ServiceBusMessage("probe", message_id="probe"),
                       ServiceBusMessage("capped", message_id="capped",
                                         time_to_live=datetime.timedelta(seconds=60)),
                       ServiceBusMessage("short", message_id="short",
                                         time_to_live=datetime.timedelta(seconds=5))])
        with receiver(c, "q1") as r:
            got = receive_n(r, 3)
            assert ids(got) == ["probe", "capped", "short"]
            assert [m.time_to_live for m in got] == [20 * S, 20 * S, 5 * S]
            for m in got:
                assert m.expires_at_utc == m.enqueued_time_utc + m.time_to_live
                r.complete_message(m)


def test_ttl_expiry_dead_letters(sbroker):
    """With dead_lettering_on_message_expiration the broker moves an expired message to the DLQ
    on its own (nobody receives from the queue) within 15 s."""
    b = sbroker([{"name": "q1", "dead_lettering_on_message_expiration": True}])
    with sb_client(b) as c:
        send(c, "q1", [ServiceBusMessage("exp", message_id="exp", application_properties={"k": 1},
                                         time_to_live=datetime.timedelta(seconds=2)),
                       ServiceBusMessage("live", message_id="live")])
        expires = utcnow() + 2 * S
        with receiver(c, "q1", sub_queue=DLQ) as d:
            got = receive_n(d, 1, timeout=20, max_wait=2)
            assert ids(got) == ["exp"], "expired message not in the DLQ within 18 s of expiring"
            m = got[0]
            assert utcnow() >= expires - 0.5 * S
            assert m.dead_letter_reason == "TTLExpiredException"
            assert body_of(m) == b"exp" and app_props(m)["k"] == 1
            d.complete_message(m)
        with receiver(c, "q1") as r:
            got = drain(r)
            assert ids(got) == ["live"]
            r.complete_message(got[0])


def test_ttl_expiry_dead_letters_entity_default(sbroker):
    """Same with the entity default TTL, and with a receiver active on the queue meanwhile."""
    b = sbroker([{"name": "q1", "dead_lettering_on_message_expiration": True, "default_message_ttl_ms": 2000}])
    with sb_client(b) as c:
        send(c, "q1", ServiceBusMessage("exp-default", message_id="exp-default"))
        time.sleep(2.5)
        with receiver(c, "q1") as r:
            assert_nothing(r, 1.0)
        with receiver(c, "q1", sub_queue=DLQ) as d:
            got = receive_n(d, 1, timeout=15, max_wait=2)
            assert ids(got) == ["exp-default"]
            assert got[0].dead_letter_reason == "TTLExpiredException"
            d.complete_message(got[0])


# ---------------------------------------------------------------------------------------------
# duplicate detection
# ---------------------------------------------------------------------------------------------
def test_duplicate_detection(sbroker):
    """Checklist item 18: same message-id within the window -> accepted and dropped."""
    b = sbroker([{"name": "dd", "requires_duplicate_detection": True, "duplicate_detection_window_ms": 600000},
                 "plain"])
    with sb_client(b) as c:
        for q in ("dd", "plain"):
            with sender(c, q) as s:                                         # every send succeeds
                s.send_messages(ServiceBusMessage("first", message_id="dup-1"), timeout=SEND_TIMEOUT)
                s.send_messages(ServiceBusMessage("second", message_id="dup-1"), timeout=SEND_TIMEOUT)
                s.send_messages([ServiceBusMessage("batched-dup", message_id="dup-1"),
                                 ServiceBusMessage("new", message_id="dup-2")], timeout=SEND_TIMEOUT)
        # a new connection is no way around it
        send(c, "dd", ServiceBusMessage("other-conn", message_id="dup-2"))
        with receiver(c, "dd") as r:
            got = drain(r)
            assert [(m.message_id, body_of(m)) for m in got] == [("dup-1", b"first"), ("dup-2", b"new")]
            for m in got:
                r.complete_message(m)
            # completing does not forget the id
            send(c, "dd", ServiceBusMessage("third", message_id="dup-1"))
            assert_nothing(r)
        with receiver(c, "plain") as r:
            got = drain(r)
            assert ids(got) == ["dup-1", "dup-1", "dup-1", "dup-2"], "no detection on a plain queue"
            for m in got:
                r.complete_message(m)


def test_duplicate_detection_window_expires(sbroker):
    b = sbroker([{"name": "dd", "requires_duplicate_detection": True, "duplicate_detection_window_ms": 3000}])
    with sb_client(b) as c:
        with sender(c, "dd") as s:                     # one link: the sends are milliseconds apart
            t0 = time.monotonic()
            s.send_messages(ServiceBusMessage("one", message_id="w-1"), timeout=SEND_TIMEOUT)
            s.send_messages(ServiceBusMessage("dup", message_id="w-1"), timeout=SEND_TIMEOUT)
            assert time.monotonic() - t0 < 2.0
            time.sleep(4.0)
            s.send_messages(ServiceBusMessage("two", message_id="w-1"), timeout=SEND_TIMEOUT)
        with receiver(c, "dd") as r:
            got = drain(r)
            assert [body_of(m) for m in got] == [b"one", b"two"]
            for m in got:
                r.complete_message(m)


def test_duplicate_detection_survives_restart(sbroker):
    b = sbroker([{"name": "dd", "requires_duplicate_detection": True, "duplicate_detection_window_ms": 600000}])
    with sb_client(b) as c:
        send(c, "dd", ServiceBusMessage("x", message_id="rx"))
        with receiver(c, "dd") as r:
            m = receive_one(r)
            r.complete_message(m)
    b.restart()                                                       # graceful
    with sb_client(b) as c:
        send(c, "dd", ServiceBusMessage("x-again", message_id="rx"))
        send(c, "dd", ServiceBusMessage("y", message_id="ry"))
        with receiver(c, "dd") as r:
            got = drain(r)
            assert ids(got) == ["ry"], "duplicate of a pre-restart id was enqueued"
            r.complete_message(got[0])
    b.kill9()                                                         # and not graceful
    b.start()
    with sb_client(b) as c:
        send(c, "dd", [ServiceBusMessage("x3", message_id="rx"), ServiceBusMessage("y3", message_id="ry"),
                       ServiceBusMessage("z", message_id="rz")])
        with receiver(c, "dd") as r:
            got = drain(r)
            assert ids(got) == ["rz"], "duplicate detection history lost by kill -9"
            r.complete_message(got[0])


# ---------------------------------------------------------------------------------------------
# management odds and ends
# ---------------------------------------------------------------------------------------------
def test_list_queue_sessions_empty(sbroker):
    b = sbroker(["q1"])
    with sb_client(b) as c:
        assert list(c.list_queue_sessions("q1", timeout=MGMT_TIMEOUT)) == []
        send(c, "q1", ServiceBusMessage("no-session", message_id="ns"))
        assert list(c.list_queue_sessions("q1", timeout=MGMT_TIMEOUT)) == []


# ---------------------------------------------------------------------------------------------
# errors: missing entity, authentication
# ---------------------------------------------------------------------------------------------
def test_missing_entity_sender(sbroker):
    b = sbroker(["q1"])
    with sb_client(b) as c:
        t = time.monotonic()
        with pytest.raises(MessagingEntityNotFoundError):
            with sender(c, "no-such-queue") as s:
                s.send_messages(ServiceBusMessage("x"), timeout=SEND_TIMEOUT)
        assert time.monotonic() - t < 20
        send(c, "q1", ServiceBusMessage("still-fine", message_id="ok"))


def test_missing_entity_receiver(sbroker):
    b = sbroker(["q1"])
    with sb_client(b) as c:
        t = time.monotonic()
        with pytest.raises(MessagingEntityNotFoundError):
            with receiver(c, "no-such-queue") as r:
                r.receive_messages(max_message_count=1, max_wait_time=3)
        with pytest.raises(MessagingEntityNotFoundError):
            with receiver(c, "no-such-queue", sub_queue=DLQ) as r:
                r.receive_messages(max_message_count=1, max_wait_time=3)
        assert time.monotonic() - t < 30


AUTH_ERRORS = (ServiceBusAuthenticationError, ServiceBusAuthorizationError)


def test_wrong_key_refused(sbroker):
    b = sbroker(["q1"])
    t = time.monotonic()
    with sb_client(b, key="WRONG-" + KEY_VALUE) as bad:
        with pytest.raises(AUTH_ERRORS):
            send(bad, "q1", ServiceBusMessage("must-not-arrive", message_id="bad"))
        with pytest.raises(AUTH_ERRORS):
            with receiver(bad, "q1") as r:
                r.receive_messages(max_message_count=1, max_wait_time=2)
    with sb_client(b, key_name="NoSuchRule") as bad:
        with pytest.raises(AUTH_ERRORS):
            send(bad, "q1", ServiceBusMessage("must-not-arrive", message_id="bad2"))
    assert time.monotonic() - t < 40
    with sb_client(b) as c, receiver(c, "q1") as r:
        assert_nothing(r, 1.0)


def test_self_signed_token_accepted(sbroker):
    """Control for the expired-token test: the same credential class with `se` in the future works,
    so the token built in sdk_helpers.sas_token is exactly what the broker validates."""
    b = sbroker(["q1"])
    cred = FixedSasCredential(KEY_NAME, KEY_VALUE, se_offset=+3600)
    with sb_client_with_credential(b, cred) as c:
        send(c, "q1", ServiceBusMessage("signed", message_id="signed"))
        with receiver(c, "q1") as r:
            m = receive_one(r)
            assert m.message_id == "signed"
            r.complete_message(m)
    assert cred.tokens and all(t.startswith("SharedAccessSignature sr=sb%3A%2F%2F127.0.0.1%3A") for t in cred.tokens)


def test_expired_token_refused(sbroker):
    """A correctly signed token whose `se` is 5 minutes in the past is refused by the broker (the
    credential tells the SDK it is valid for an hour, so the SDK cannot refuse it itself)."""
    b = sbroker(["q1"])
    cred = FixedSasCredential(KEY_NAME, KEY_VALUE, se_offset=-300)
    t = time.monotonic()
    with sb_client_with_credential(b, cred) as c:
        with pytest.raises(AUTH_ERRORS):
            send(c, "q1", ServiceBusMessage("expired", message_id="expired"))
        with pytest.raises(AUTH_ERRORS):
            with receiver(c, "q1") as r:
                r.receive_messages(max_message_count=1, max_wait_time=2)
    assert cred.tokens, "the SDK never asked the credential for a token"
    assert time.monotonic() - t < 40
    with sb_client(b) as c, receiver(c, "q1") as r:
        assert_nothing(r, 1.0)
