"""First contact: what a new user does in the first five minutes must work.

* The README's Python quickstarts (the Service Bus SDK one and the python-qpid-proton one) are
  extracted from README.md at test time and run verbatim as subprocesses of this venv's python,
  against a broker with the queue and key rule the README assumes (those of the embedded default
  configuration that `scripts/run` serves; a test checks that the README and the default agree).
  The only substitution is the port of the endpoint (the default 5672 may be taken on a test
  machine): `sb://localhost;` -> `sb://localhost:PORT;` (the README says that form works too) and
  `amqp://127.0.0.1:5672` -> `amqp://127.0.0.1:PORT`.
* A message sent without a message-id is given one by the broker (32 lowercase hex digits, an AMQP
  string), the same one on every delivery, on peek and in the dead-letter queue, and it can be
  completed (Python SDK and python-qpid-proton; the JS side is conformance/js/test/first-contact.test.js).
  azure-servicebus puts a uuid4 of its own on every ServiceBusMessage, so the SDK tests clear it or
  send its raw AmqpAnnotatedMessage. A message that has an id keeps it, value and AMQP type.
* Two receivers (and two senders) on one queue from one Proton BlockingConnection: with Proton's
  default link names (`<container-id>-<address>`, the same for both) the second takes the name
  over and the connection stays up (see section 3 for why both cannot live); with distinct names
  both work.
* header first-acquirer as sent, false on a redelivery; Open properties `product` = "ferrobus"
  and a `version` (symbol keys, string values).

Tests that do not interfere share one broker (module fixture `shared`, one queue per test);
the quickstarts get a fresh broker each (`start_broker`), so sequence numbers start at 1.
Run: conformance/python/run test_first_contact.py
"""

import contextlib
import os
import re
import subprocess
import sys
import time
import tomllib
import uuid

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.amqp import AmqpAnnotatedMessage
from proton import Endpoint, Message, Timeout, symbol, ulong
from proton.utils import BlockingConnection, LinkDetached

from brokers import Broker, broker_bin
from sdk_helpers import MGMT_TIMEOUT, body_of, receive_n, receive_one, receiver, sb_client, sender

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
README = os.path.join(REPO, "README.md")

HEX32 = re.compile(r"[0-9a-f]{32}")
SUBPROCESS_TIMEOUT = 60

# what `scripts/run` serves (the embedded default configuration, deploy/ferrobus.toml)
DEFAULT_LISTEN = "127.0.0.1:5672"
DEFAULT_QUEUE = "queue.1"
ROOT_KEY = ("RootManageSharedAccessKey", "SAS_KEY_VALUE")

# one queue per test on the shared broker
SHARED_QUEUES = [
    "sdk-noid", "sdk-noid-stable",
    "pn-noid", "pn-ids",
    "pn-two-receivers-same", "pn-two-receivers-distinct",
    "pn-two-senders-same", "pn-two-senders-distinct",
    "pn-first-acquirer",
]


@pytest.fixture(scope="module")
def _shared_broker(tmp_path_factory):
    """One broker for the tests that do not interfere (one queue each)."""
    b = Broker(tmp_path_factory.mktemp("first-contact"), queues=SHARED_QUEUES,
               auth_keys=[ROOT_KEY]).start()
    yield b
    problems = b.teardown_problems()
    assert not problems, "\n\n".join(problems)


@pytest.fixture
def shared(request, _shared_broker):
    """The module's broker; on a failure conftest's report hook attaches its stderr."""
    assert _shared_broker.alive(), "the shared broker is gone (exit %r)\n%s" % (
        _shared_broker.proc.returncode, _shared_broker.stderr_tail())
    request.node._ferrobus_brokers = [_shared_broker]
    return _shared_broker


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------
def pn_connect(b, **kw):
    """BlockingConnection, SASL ANONYMOUS, bounded waits."""
    kw.setdefault("allowed_mechs", "ANONYMOUS")
    return BlockingConnection(b.amqp_url if hasattr(b, "amqp_url") else b, timeout=10, **kw)


def pn_expect_empty(rcv, wait=0.7, what="queue"):
    try:
        m = rcv.receive(timeout=wait)
    except Timeout:
        return
    raise AssertionError("expected the %s to be empty, received %r (id %r)" % (what, m.body, m.id))


def sdk_expect_empty(rcv, wait=0.7, what="queue"):
    got = rcv.receive_messages(max_message_count=10, max_wait_time=wait)
    assert got == [], "expected the %s to be empty, received %r" % (
        what, [(str(m), m.message_id, m.sequence_number) for m in got])


def assert_assigned_id(mid, what):
    assert mid is not None, "%s: the message arrived without a message-id" % what
    assert isinstance(mid, str) and HEX32.fullmatch(mid), \
        "%s: the broker-assigned message-id %r (%s) is not 32 lowercase hex digits" % (what, mid, type(mid).__name__)


@contextlib.contextmanager
def two_connections(b):
    """The connection under test and a second one that feeds or drains its queue."""
    conn = pn_connect(b)
    other = pn_connect(b)
    try:
        yield conn, other
    finally:
        other.close()
        conn.close()


def send_numbered(snd, prefix, n):
    for i in range(n):
        snd.send(Message(body="%s-%d" % (prefix, i)))


def receive_bodies(rcv, n):
    """The bodies of the next n messages, each accepted."""
    bodies = []
    for _ in range(n):
        bodies.append(rcv.receive(timeout=10).body)
        rcv.accept()
    return bodies


def connection_still_open(conn):
    c = conn.conn
    assert c.remote_condition is None, "the broker closed the connection: %s" % c.remote_condition
    assert c.state & Endpoint.REMOTE_ACTIVE, "the connection is not open any more (state %#x)" % c.state


# ---------------------------------------------------------------------------------------------
# 1. the README's quickstarts, verbatim
# ---------------------------------------------------------------------------------------------
def readme_section(title):
    with open(README, encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"^## %s[ \t]*\n(.*?)(?=^## |\Z)" % re.escape(title), text, re.M | re.S)
    assert m, "README.md has no section '## %s'" % title
    return m.group(1)


def readme_block(title, lang):
    blocks = re.findall(r"^```%s[ \t]*\n(.*?)^```" % re.escape(lang), readme_section(title), re.M | re.S)
    assert len(blocks) == 1, "README.md section '%s': expected one ```%s block, found %d" % (title, lang, len(blocks))
    return blocks[0]


def substitute_once(code, old, new):
    assert code.count(old) == 1, "the README code is expected to use %r exactly once:\n%s" % (old, code)
    return code.replace(old, new)


def run_python(code, tmp_path, name):
    script = tmp_path / name
    script.write_text(code)
    t0 = time.monotonic()
    try:
        p = subprocess.run([sys.executable, str(script)], cwd=str(tmp_path), stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("the quickstart did not finish within %ds\nstdout:\n%s\nstderr:\n%s"
                             % (SUBPROCESS_TIMEOUT, e.stdout, e.stderr))
    return p, time.monotonic() - t0


def test_readme_quickstarts_use_what_scripts_run_serves():
    """The quickstarts' endpoint, queue and key are those of the embedded default configuration
    (what `scripts/run` starts), so the substitutions below change only the port."""
    p = subprocess.run([broker_bin(), "--print-default-config"], capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, "--print-default-config: exit %r\n%s" % (p.returncode, p.stderr)
    cfg = tomllib.loads(p.stdout)
    assert cfg["server"]["amqp_listen"] == DEFAULT_LISTEN
    assert [q["name"] for q in cfg["queues"]] == [DEFAULT_QUEUE, "session.1"]
    assert [q.get("requires_session", False) for q in cfg["queues"]] == [False, True]
    for code in (readme_block("Sessions quickstart", "python"), readme_block("Sessions quickstart", "js")):
        assert '"session.1"' in code
    assert [(t["name"], [s["name"] for s in t["subscriptions"]]) for t in cfg["topics"]] == \
        [("topic.1", ["subscription.1", "subscription.2"])]
    topics_py = readme_block("Topics quickstart", "python")
    topics_js = readme_block("Topics quickstart", "js")
    for code in (topics_py, topics_js):
        assert '"topic.1"' in code and '"subscription.2"' in code
    assert [(k["name"], k["key"]) for k in cfg["auth"]["keys"]] == [ROOT_KEY]
    assert cfg["auth"]["require"] is False
    sdk_py = readme_block("Service Bus SDK quickstart", "python")
    sdk_js = readme_block("Service Bus SDK quickstart", "js")
    conn = ("Endpoint=sb://localhost;SharedAccessKeyName=%s;SharedAccessKey=%s;UseDevelopmentEmulator=true;"
            % ROOT_KEY)
    for code in (sdk_py, sdk_js):
        assert conn in code, "the SDK quickstart does not use the emulator connection string %r:\n%s" % (conn, code)
        assert '"%s"' % DEFAULT_QUEUE in code
    plain_py = readme_block("A plain AMQP client", "python")
    plain_js = readme_block("A plain AMQP client", "js")
    assert "amqp://%s" % DEFAULT_LISTEN in plain_py
    assert 'host: "127.0.0.1", port: 5672' in plain_js
    for code in (plain_py, plain_js):
        assert '"%s"' % DEFAULT_QUEUE in code


def test_readme_sdk_quickstart_python_runs_verbatim(start_broker, tmp_path):
    code = readme_block("Service Bus SDK quickstart", "python")
    b = start_broker(queues=[DEFAULT_QUEUE], auth_keys=[ROOT_KEY])
    code = substitute_once(code, "Endpoint=sb://localhost;", "Endpoint=sb://localhost:%d;" % b.amqp_port)
    p, took = run_python(code, tmp_path, "quickstart_sdk.py")
    assert p.returncode == 0 and p.stdout == "hello 1\n", \
        "README SDK quickstart (python): exit %r in %.1fs\nstdout:\n%s\nstderr:\n%s" % (
            p.returncode, took, p.stdout, p.stderr[-6000:])
    # complete_message really completed it
    conn = pn_connect(b)
    try:
        pn_expect_empty(conn.create_receiver(DEFAULT_QUEUE), 0.5, "queue after the quickstart")
    finally:
        conn.close()


def test_readme_topics_quickstart_python_runs_verbatim(start_broker, tmp_path):
    """Against the embedded default configuration itself (its topic.1 and subscriptions)."""
    code = readme_block("Topics quickstart", "python")
    b = start_broker(config_file=os.path.join(REPO, "deploy", "ferrobus.toml"))
    code = substitute_once(code, "Endpoint=sb://localhost;", "Endpoint=sb://localhost:%d;" % b.amqp_port)
    p, took = run_python(code, tmp_path, "quickstart_topics.py")
    want = "subscription.1 red one\nsubscription.1 blue one\nsubscription.2 red one\n"
    assert p.returncode == 0 and p.stdout == want, \
        "README topics quickstart (python): exit %r in %.1fs\nstdout:\n%s\nstderr:\n%s" % (
            p.returncode, took, p.stdout, p.stderr[-6000:])


def test_readme_sessions_quickstart_python_runs_verbatim(start_broker, tmp_path):
    """Against the embedded default configuration itself (its session.1)."""
    code = readme_block("Sessions quickstart", "python")
    b = start_broker(config_file=os.path.join(REPO, "deploy", "ferrobus.toml"))
    code = substitute_once(code, "Endpoint=sb://localhost;", "Endpoint=sb://localhost:%d;" % b.amqp_port)
    p, took = run_python(code, tmp_path, "quickstart_sessions.py")
    want = "session order-7\nstep 0\nstep 1\nstep 2\n"
    assert p.returncode == 0 and p.stdout == want, \
        "README sessions quickstart (python): exit %r in %.1fs\nstdout:\n%s\nstderr:\n%s" % (
            p.returncode, took, p.stdout, p.stderr[-6000:])


def test_readme_proton_quickstart_runs_verbatim(start_broker, tmp_path):
    code = readme_block("A plain AMQP client", "python")
    b = start_broker(queues=[DEFAULT_QUEUE], auth_keys=[ROOT_KEY])
    code = substitute_once(code, "amqp://%s" % DEFAULT_LISTEN, b.amqp_url)
    p, took = run_python(code, tmp_path, "quickstart_proton.py")
    assert p.returncode == 0 and p.stdout == "hello\n", \
        "README proton quickstart: exit %r in %.1fs\nstdout:\n%s\nstderr:\n%s" % (
            p.returncode, took, p.stdout, p.stderr[-6000:])
    conn = pn_connect(b)
    try:
        pn_expect_empty(conn.create_receiver(DEFAULT_QUEUE), 0.5, "queue after the quickstart")
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# 2. a message without a message-id gets one from the broker
# ---------------------------------------------------------------------------------------------
def test_sdk_message_without_id_gets_one_and_completes(shared):
    """azure-servicebus gives a ServiceBusMessage an id of its own (str(uuid4()), set by the
    scheduled_enqueue_time_utc setter in its constructor), so a message without an id comes from
    clearing it or from the SDK's raw AmqpAnnotatedMessage. Both get the broker's id; the SDK's
    own id is kept exactly."""
    q = "sdk-noid"
    own = ServiceBusMessage("sdk-own-id")
    cleared = ServiceBusMessage("cleared-id")
    cleared.message_id = None
    raw = AmqpAnnotatedMessage(data_body=b"raw-amqp")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", own.message_id)
    assert cleared.message_id is None and raw.properties is None
    with sb_client(shared) as c:
        with sender(c, q) as s:
            for m in (own, cleared, raw):
                s.send_messages(m, timeout=20)
        with receiver(c, q) as r:
            got = receive_n(r, 3)
            assert [body_of(m) for m in got] == [b"sdk-own-id", b"cleared-id", b"raw-amqp"]
            assert got[0].message_id == own.message_id, "the SDK's own id %r came back as %r" % (
                own.message_id, got[0].message_id)
            assert_assigned_id(got[1].message_id, "python SDK, ServiceBusMessage with message_id=None")
            assert_assigned_id(got[2].message_id, "python SDK, AmqpAnnotatedMessage without properties")
            assert got[1].message_id != got[2].message_id
            for m in got:
                r.complete_message(m)
            sdk_expect_empty(r, what="queue after complete_message")


def test_sdk_assigned_id_is_stable(shared):
    """One id per message: the same on peek, on redelivery after abandon and in the dead-letter
    queue; two messages get two ids."""
    q = "sdk-noid-stable"
    with sb_client(shared) as c:
        with sender(c, q) as s:
            s.send_messages([AmqpAnnotatedMessage(data_body=b"a"), AmqpAnnotatedMessage(data_body=b"b")],
                            timeout=20)
        with receiver(c, q) as r:
            peeked = r.peek_messages(max_message_count=2, timeout=MGMT_TIMEOUT)
            assert [body_of(m) for m in peeked] == [b"a", b"b"]
            pa, pb = (m.message_id for m in peeked)
            assert_assigned_id(pa, "peek")
            assert_assigned_id(pb, "peek")
            assert pa != pb, "two messages got the same assigned id %r" % pa
            m1 = receive_one(r)
            assert body_of(m1) == b"a"
            assert m1.message_id == pa, "receive gave id %r, peek %r" % (m1.message_id, pa)
            r.abandon_message(m1)
            m2 = receive_one(r)
            assert (body_of(m2), m2.delivery_count) == (b"a", 1)
            assert m2.message_id == pa, "redelivery after abandon gave id %r, first delivery %r" % (m2.message_id, pa)
            r.dead_letter_message(m2, reason="first-contact", error_description="test")
            m3 = receive_one(r)
            assert body_of(m3) == b"b" and m3.message_id == pb
            r.complete_message(m3)
        with receiver(c, q, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
            d = receive_one(dlq)
            assert body_of(d) == b"a"
            assert d.message_id == pa, "dead-lettered copy has id %r, the message had %r" % (d.message_id, pa)
            dlq.complete_message(d)
            sdk_expect_empty(dlq, what="dead-letter queue")


def test_proton_message_without_id_gets_one_and_is_accepted(shared):
    q = "pn-noid"
    conn = pn_connect(shared)
    try:
        out = Message(body="x")
        assert out.id is None
        conn.create_sender(q).send(out)
        rcv = conn.create_receiver(q)          # unsettled deliveries: peek-lock
        m = rcv.receive(timeout=10)
        assert m.body == "x"
        assert type(m.id) is str, "message-id %r has type %s, expected an AMQP string" % (m.id, type(m.id).__name__)
        assert_assigned_id(m.id, "proton receive")
        rcv.release(delivered=True)            # modified(delivery-failed): abandon
        again = rcv.receive(timeout=10)
        assert (again.body, again.delivery_count) == ("x", 1)
        assert again.id == m.id, "redelivery has id %r, first delivery %r" % (again.id, m.id)
        rcv.accept()
        pn_expect_empty(rcv, what="queue after accept")
        connection_still_open(conn)
    finally:
        conn.close()


def id_kind(v):
    """(AMQP type, value) of a message-id as Proton gives it back: a ulong comes back as int, a
    binary as memoryview; within the four message-id types the mapping is one to one."""
    if isinstance(v, str):
        return ("string", v)
    if isinstance(v, uuid.UUID):
        return ("uuid", v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return ("binary", bytes(v))
    if isinstance(v, int):
        return ("ulong", int(v))
    return (type(v).__name__, v)


def test_proton_message_ids_keep_value_and_type(shared):
    q = "pn-ids"
    ids = [
        "explicit-id-1",
        ulong(18446744073709551000),
        uuid.UUID("6f1c0b0e-3a9d-4c47-9a3e-2b8f5d0c7e11"),
        b"\x00\x01binary-id\xff",
    ]
    conn = pn_connect(shared)
    try:
        snd = conn.create_sender(q)
        for i, mid in enumerate(ids):
            snd.send(Message(body="m%d" % i, id=mid))
        rcv = conn.create_receiver(q, credit=len(ids))
        got = []
        for _ in ids:
            got.append(rcv.receive(timeout=10))
            rcv.accept()
        assert [m.body for m in got] == ["m%d" % i for i in range(len(ids))]
        want = [id_kind(x) for x in ids]
        have = [id_kind(m.id) for m in got]
        assert have == want, "message-ids changed on the way through the broker"
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# 3. two links on one queue from one connection
#
# BlockingConnection.create_receiver / create_sender name a link `<container-id>-<address>`, so two
# receivers (or two senders) on one queue get the same name, in the same session. Both cannot be
# live: Proton-C matches an incoming attach to the first live link of that name and, when that one
# is attached already, closes the connection itself with `amqp:invalid-field: link name already
# attached` (transport.c, pn_do_attach); AMQP 1.0 2.6.1 says a name identifies one link. The
# broker's answer (README, "Link names"): the new attach takes the name over, the old link is
# detached with `amqp:link:stolen` before the reply, so Proton finds the new link and the
# connection stays up. BlockingConnection may report that detach from the second create_* call
# (its handlers raise LinkDetached for the FIRST link); that is accepted as the takeover being
# reported, provided it names the first link and amqp:link:stolen, and the connection goes on
# working (a link with its own name then carries the traffic).
# With distinct names both links work: competing consumers / two producers.
# ---------------------------------------------------------------------------------------------
STOLEN = "amqp:link:stolen"


def second_same_name_link(conn, first, make):
    """(second link, None) if Proton handed it out, or (None, LinkDetached) if the takeover of
    `first` was raised from the call. Anything else fails with what happened."""
    try:
        second = make()
    except LinkDetached as e:
        assert e.link == first.link, "LinkDetached for a link other than the first one: %s" % e
        assert e.condition == STOLEN, "the first link was detached, but not as %s: %s" % (STOLEN, e)
        connection_still_open(conn)
        return None, e
    except Exception as e:  # noqa: BLE001 - report what the client saw and what the broker sent
        raise AssertionError(
            "opening the second link of the same name failed: %s: %s (the broker's connection close: %s)"
            % (type(e).__name__, e, conn.conn.remote_condition)) from e
    assert second.link.name == first.link.name
    cond = first.link.remote_condition
    assert first.link.state & Endpoint.REMOTE_CLOSED and cond is not None and cond.name == STOLEN, \
        "the second link of the same name opened but the first was not detached with %s (state %#x, %s)" % (
            STOLEN, first.link.state, cond)
    connection_still_open(conn)
    return second, None


def receive_spread(receivers, n, timeout=15):
    """Round over the receivers until n messages arrived; {index: [bodies]}."""
    per = {i: [] for i in range(len(receivers))}
    deadline = time.monotonic() + timeout
    while sum(map(len, per.values())) < n and time.monotonic() < deadline:
        for i, r in enumerate(receivers):
            try:
                m = r.receive(timeout=0.1)
            except Timeout:
                continue
            r.accept()
            per[i].append(m.body)
    return per


def test_two_proton_receivers_same_name_one_connection(shared):
    q = "pn-two-receivers-same"
    with two_connections(shared) as (conn, feeder):
        r1 = conn.create_receiver(q)
        assert r1.link.name == "%s-%s" % (conn.container.container_id, q)
        r2, _ = second_same_name_link(conn, r1, lambda: conn.create_receiver(q))
        rcv = r2 or conn.create_receiver(q, name="own-name")
        send_numbered(feeder.create_sender(q), "same-rcv", 10)
        per = receive_spread([rcv], 10)
        assert per[0] == ["same-rcv-%d" % i for i in range(10)], "received: %r" % per
        pn_expect_empty(rcv, 0.3)
        connection_still_open(conn)


def test_two_proton_senders_same_name_one_connection(shared):
    q = "pn-two-senders-same"
    with two_connections(shared) as (conn, drainer):
        s1 = conn.create_sender(q)
        s1.send(Message(body="before"))
        s2, _ = second_same_name_link(conn, s1, lambda: conn.create_sender(q))
        snd = s2 or conn.create_sender(q, name="own-name")
        send_numbered(snd, "same-snd", 10)    # send() waits for `accepted` (raises otherwise)
        connection_still_open(conn)
        rcv = drainer.create_receiver(q, credit=20)
        bodies = receive_bodies(rcv, 11)
        assert bodies == ["before"] + ["same-snd-%d" % i for i in range(10)]
        pn_expect_empty(rcv, 0.3)


def test_two_proton_receivers_distinct_names_one_connection(shared):
    q = "pn-two-receivers-distinct"
    with two_connections(shared) as (conn, feeder):
        r1 = conn.create_receiver(q, name="first")
        r2 = conn.create_receiver(q, name="second")
        send_numbered(feeder.create_sender(q), "two-rcv", 10)
        per = receive_spread([r1, r2], 10)
        assert sorted(per[0] + per[1]) == sorted("two-rcv-%d" % i for i in range(10)), \
            "received across the two receivers: %r" % per
        assert per[0] and per[1], "one receiver got nothing (competing consumers): %r" % per
        pn_expect_empty(r1, 0.3)
        pn_expect_empty(r2, 0.3)
        connection_still_open(conn)


def test_two_proton_senders_distinct_names_one_connection(shared):
    q = "pn-two-senders-distinct"
    with two_connections(shared) as (conn, drainer):
        s1 = conn.create_sender(q, name="first")
        s2 = conn.create_sender(q, name="second")
        for i in range(5):
            s1.send(Message(body="s1-%d" % i))
            s2.send(Message(body="s2-%d" % i))
        connection_still_open(conn)
        rcv = drainer.create_receiver(q, credit=10)
        bodies = receive_bodies(rcv, 10)
        assert bodies == [x for i in range(5) for x in ("s1-%d" % i, "s2-%d" % i)]
        pn_expect_empty(rcv, 0.3)


# ---------------------------------------------------------------------------------------------
# 4. header first-acquirer as sent
# ---------------------------------------------------------------------------------------------
def test_proton_first_acquirer_as_sent(shared):
    q = "pn-first-acquirer"
    sent = [
        ("fa-false", dict(first_acquirer=False)),                 # all header fields default
        ("fa-false-durable", dict(first_acquirer=False, durable=True)),
        ("fa-true", dict(first_acquirer=True)),
    ]
    conn = pn_connect(shared)
    try:
        snd = conn.create_sender(q)
        for body, hdr in sent:
            snd.send(Message(body=body, **hdr))
        rcv = conn.create_receiver(q, credit=len(sent))
        have = []
        for _ in sent:
            m = rcv.receive(timeout=10)
            rcv.accept()
            have.append((m.body, m.first_acquirer, m.delivery_count))
        assert have == [(body, hdr["first_acquirer"], 0) for body, hdr in sent]
        # a redelivery is not a first acquisition, whatever the producer said
        snd.send(Message(body="fa-redelivered", first_acquirer=True))
        m = rcv.receive(timeout=10)
        assert (m.body, m.first_acquirer, m.delivery_count) == ("fa-redelivered", True, 0)
        rcv.release(delivered=True)
        m = rcv.receive(timeout=10)
        assert (m.body, m.first_acquirer, m.delivery_count) == ("fa-redelivered", False, 1)
        rcv.accept()
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# 5. Open properties
# ---------------------------------------------------------------------------------------------
def test_open_carries_product_and_version(shared):
    conn = pn_connect(shared)
    try:
        props = conn.conn.remote_properties
        assert props, "the broker's Open carries no properties"
        product = props.get(symbol("product"))
        version = props.get(symbol("version"))
        assert product == "ferrobus", "Open properties: %r" % (props,)
        assert isinstance(version, str) and version.strip(), "Open properties: %r" % (props,)
        for k in ("product", "version"):
            key = next(x for x in props if x == k)
            assert type(key) is symbol, "Open property key %r is a %s, not a symbol" % (k, type(key).__name__)
            assert type(props[key]) is str, "Open property %s = %r is a %s, not a string" % (
                k, props[key], type(props[key]).__name__)
    finally:
        conn.close()
