"""Message sessions (RequiresSession), driven by the official Python SDK (azure-servicebus
7.15.0): named and next-available session receivers, order within a session, session locks
(renew, expiry, busy), session state, listing sessions, deferral and scheduling in a session, a
session subscription, and a restart with locked sessions and state.

One broker serves the tests that do not restart it; each test uses its own queue or session ids
so their messages never meet.
"""

import datetime
import socket
import time

import pytest
from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusMessage
from azure.servicebus.exceptions import (
    OperationTimeoutError,
    ServiceBusError,
    SessionCannotBeLockedError,
    SessionLockLostError,
)

from amqp_raw import (AMQP_HEADER, ATTACH, BEGIN, DETACH, OPEN, SOURCE, TARGET, RawPeer, Symbol,
                      UByte, UInt, begin_frame, flow_frame, frame, perf)
from brokers import Broker
from sdk_helpers import HANDLER_KW, MGMT_TIMEOUT, body_of, receive_n, sb_client

SEND_TIMEOUT = 20
UTC = datetime.timezone.utc

TOML = """
[[queues]]
name = "orders"
requires_session = true

[[queues]]
name = "fair"
requires_session = true

[[queues]]
name = "idle"
requires_session = true

[[queues]]
name = "short"
requires_session = true
lock_duration_ms = 2000

[[queues]]
name = "state"
requires_session = true

[[queues]]
name = "plain"

[[topics]]
name = "events"
[[topics.subscriptions]]
name = "per-device"
requires_session = true
[[topics.subscriptions]]
name = "all"

[[topics]]
name = "routed"
[[topics.subscriptions]]
name = "by-rule"
requires_session = true
[[topics.subscriptions.rules]]
name = "assign"
sql = "1=1"
action = "SET sys.SessionId = 'from-rule'"
"""


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("sessions"), queues=[], extra_toml=TOML).start()
    yield b
    problems = b.teardown_problems()
    assert not problems, "\n\n".join(problems)


@pytest.fixture(scope="module")
def client(sessions):
    c = sb_client(sessions)
    yield c
    c.close()


def send(client, queue, messages):
    with client.get_queue_sender(queue, **HANDLER_KW) as s:
        s.send_messages(messages, timeout=SEND_TIMEOUT)


def session_receiver(client, queue, session_id, **kw):
    for k, v in HANDLER_KW.items():
        kw.setdefault(k, v)
    return client.get_queue_receiver(queue, session_id=session_id, **kw)


def msg(session, body):
    return ServiceBusMessage(body, session_id=session)


def test_a_session_receiver_gets_its_session_in_order_and_the_lock_time(client):
    # interleaved sends across three sessions
    send(client, "orders", [msg("s%d" % (i % 3), "%d" % i) for i in range(12)])
    with session_receiver(client, "orders", "s1") as r:
        assert r.session.session_id == "s1"
        until = r.session.locked_until_utc
        now = datetime.datetime.now(UTC)
        assert now < until <= now + datetime.timedelta(seconds=61), until
        got = receive_n(r, 4)
        assert [body_of(m) for m in got] == [b"1", b"4", b"7", b"10"]
        assert all(m.session_id == "s1" for m in got)
        # abandon keeps the order: 1 comes first again, counted once
        r.abandon_message(got[0])
        for m in got[1:]:
            r.abandon_message(m)
        again = receive_n(r, 4)
        assert [body_of(m) for m in again] == [b"1", b"4", b"7", b"10"]
        assert [m.delivery_count for m in again] == [1, 1, 1, 1]
        for m in again:
            r.complete_message(m)
        assert r.receive_messages(max_message_count=5, max_wait_time=1) == []
    for session in ("s0", "s2"):
        with session_receiver(client, "orders", NEXT_AVAILABLE_SESSION) as r:
            assert r.session.session_id in ("s0", "s2")
            got = receive_n(r, 4)
            for m in got:
                r.complete_message(m)
            assert len(got) == 4
            want = [b"%d" % i for i in range(12) if "s%d" % (i % 3) == r.session.session_id]
            assert [body_of(m) for m in got] == want


def test_next_available_takes_each_session_in_turn_and_times_out_when_none_is_left(client):
    send(client, "fair", [msg("f%d" % (i % 4), "x%d" % i) for i in range(8)])
    seen = []
    for _ in range(4):
        with session_receiver(client, "fair", NEXT_AVAILABLE_SESSION, max_wait_time=5) as r:
            got = receive_n(r, 2)
            assert len(got) == 2, r.session.session_id
            for m in got:
                r.complete_message(m)
            seen.append(r.session.session_id)
    # oldest session first: the order the sessions got their first message
    assert seen == ["f0", "f1", "f2", "f3"]
    started = time.monotonic()
    with pytest.raises(OperationTimeoutError):
        with session_receiver(client, "fair", NEXT_AVAILABLE_SESSION, max_wait_time=2) as r:
            r.receive_messages(max_wait_time=1)
    waited = time.monotonic() - started
    assert 1.5 <= waited < 15, waited


def test_a_waiting_next_available_receiver_gets_a_session_that_arrives_later(client):
    import threading

    def later():
        time.sleep(1.5)
        send(client, "idle", [msg("late", "hello")])

    t = threading.Thread(target=later)
    t.start()
    started = time.monotonic()
    try:
        with session_receiver(client, "idle", NEXT_AVAILABLE_SESSION, max_wait_time=20) as r:
            got = receive_n(r, 1)
            assert r.session.session_id == "late"
            assert [body_of(m) for m in got] == [b"hello"]
            r.complete_message(got[0])
    finally:
        t.join()
    assert time.monotonic() - started < 15


def test_a_locked_session_cannot_be_taken_and_plain_receivers_are_refused(client):
    send(client, "orders", [msg("busy", "b")])
    with session_receiver(client, "orders", "busy") as r:
        with pytest.raises(SessionCannotBeLockedError):
            with session_receiver(client, "orders", "busy") as r2:
                r2.receive_messages(max_wait_time=1)
        (m,) = receive_n(r, 1)
        r.complete_message(m)
    # a plain receiver on a session queue, and a session receiver on a plain queue
    with pytest.raises(ServiceBusError) as e:
        with client.get_queue_receiver("orders", **HANDLER_KW) as r:
            r.receive_messages(max_wait_time=1)
    assert "sessions" in str(e.value), e.value
    with pytest.raises(ServiceBusError):
        with session_receiver(client, "plain", "s") as r:
            r.receive_messages(max_wait_time=1)
    # a message without a session id is refused by a session queue
    with pytest.raises(ServiceBusError) as e:
        send(client, "orders", [ServiceBusMessage("no session")])
    assert "SessionId" in str(e.value), e.value


def metric(broker, line_prefix):
    status, _, body = broker.http_get("/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.split()[-1])
    return None


def test_renewing_extends_the_session_lock_and_expiry_loses_it(client, sessions):
    send(client, "short", [msg("exp", "a"), msg("exp", "b")])
    with session_receiver(client, "short", "exp") as r:
        first = r.session.locked_until_utc
        time.sleep(1.0)
        renewed = r.session.renew_lock(timeout=MGMT_TIMEOUT)
        assert renewed > first
        got = receive_n(r, 2)
        assert len(got) == 2
        time.sleep(2.5)
        with pytest.raises(SessionLockLostError):
            r.complete_message(got[0])
    assert metric(sessions, 'ferrobus_session_locks_lost_total{entity="short"}') == 1
    # both messages came back counted
    with session_receiver(client, "short", "exp") as r:
        assert metric(sessions, 'ferrobus_entity_sessions{entity="short",state="locked"}') == 1
        again = receive_n(r, 2)
        assert [(body_of(m), m.delivery_count) for m in again] == [(b"a", 1), (b"b", 1)]
        for m in again:
            r.complete_message(m)


def test_closing_a_session_receiver_returns_its_messages_uncounted(client):
    send(client, "orders", [msg("close", "c1"), msg("close", "c2")])
    with session_receiver(client, "orders", "close") as r:
        assert len(receive_n(r, 2)) == 2
    with session_receiver(client, "orders", "close") as r:
        again = receive_n(r, 2)
        assert [(body_of(m), m.delivery_count) for m in again] == [(b"c1", 0), (b"c2", 0)]
        for m in again:
            r.complete_message(m)


def test_the_dead_letter_queue_of_a_session_queue_has_no_sessions(client):
    from azure.servicebus import ServiceBusSubQueue

    send(client, "orders", [msg("dl", "poison")])
    with session_receiver(client, "orders", "dl") as r:
        (m,) = receive_n(r, 1)
        r.dead_letter_message(m, reason="bad", error_description="cannot parse")
    with client.get_queue_receiver("orders", sub_queue=ServiceBusSubQueue.DEAD_LETTER,
                                   **HANDLER_KW) as r:
        (d,) = receive_n(r, 1)
        assert body_of(d) == b"poison" and d.session_id == "dl"
        assert d.dead_letter_reason == "bad"
        r.complete_message(d)


def test_session_state_is_kept_and_sessions_are_listed(client):
    with session_receiver(client, "state", "with-state") as r:
        assert r.session.get_state(timeout=MGMT_TIMEOUT) is None
        r.session.set_state(b"step-2", timeout=MGMT_TIMEOUT)
        assert r.session.get_state(timeout=MGMT_TIMEOUT) == b"step-2"
    send(client, "state", [msg("with-messages", "m")])
    listed = sorted(client.list_queue_sessions("state", timeout=MGMT_TIMEOUT))
    assert listed == ["with-messages", "with-state"], listed
    # only the sessions whose state changed after a time
    hour_ago = datetime.datetime.now(UTC) - datetime.timedelta(hours=1)
    assert list(client.list_queue_sessions("state", state_updated_after=hour_ago,
                                           timeout=MGMT_TIMEOUT)) == ["with-state"]
    with session_receiver(client, "state", "with-state") as r:
        assert r.session.get_state(timeout=MGMT_TIMEOUT) == b"step-2"
        r.session.set_state(None, timeout=MGMT_TIMEOUT)
        assert r.session.get_state(timeout=MGMT_TIMEOUT) is None
    with session_receiver(client, "state", "with-messages") as r:
        (m,) = receive_n(r, 1)
        r.complete_message(m)
    assert list(client.list_queue_sessions("state", timeout=MGMT_TIMEOUT)) == []


def test_peek_defer_and_schedule_within_a_session(client):
    send(client, "orders", [msg("pd", "p1"), msg("other", "o1"), msg("pd", "p2")])
    with session_receiver(client, "orders", "pd") as r:
        peeked = r.peek_messages(max_message_count=10, timeout=MGMT_TIMEOUT)
        assert [body_of(m) for m in peeked] == [b"p1", b"p2"]
        (m1,) = receive_n(r, 1)
        seq = m1.sequence_number
        r.defer_message(m1)
        (m2,) = receive_n(r, 1)
        assert body_of(m2) == b"p2"
        r.complete_message(m2)
        (d,) = r.receive_deferred_messages([seq], timeout=MGMT_TIMEOUT)
        assert body_of(d) == b"p1"
        r.complete_message(d)
    with session_receiver(client, "orders", "other") as r:
        (m,) = receive_n(r, 1)
        r.complete_message(m)
    # a message scheduled with a session id arrives in that session when due
    when = datetime.datetime.now(UTC) + datetime.timedelta(seconds=2)
    with client.get_queue_sender("orders", **HANDLER_KW) as s:
        s.schedule_messages(msg("sched", "later"), when, timeout=MGMT_TIMEOUT)
    with session_receiver(client, "orders", NEXT_AVAILABLE_SESSION, max_wait_time=15) as r:
        assert r.session.session_id == "sched"
        (m,) = receive_n(r, 1, timeout=15)
        assert body_of(m) == b"later"
        assert m.scheduled_enqueue_time_utc is not None
        r.complete_message(m)


def test_a_session_subscription_groups_its_copies_by_session(client):
    with client.get_topic_sender("events", **HANDLER_KW) as s:
        s.send_messages([msg("dev-%d" % (i % 2), "e%d" % i) for i in range(6)],
                        timeout=SEND_TIMEOUT)
        # a copy for the session subscription needs a session id: refused, nothing stored
        with pytest.raises(ServiceBusError):
            s.send_messages(ServiceBusMessage("anonymous"), timeout=SEND_TIMEOUT)
    for device in ("dev-1", "dev-0"):
        with client.get_subscription_receiver("events", "per-device", session_id=device,
                                              **HANDLER_KW) as r:
            got = receive_n(r, 3)
            want = [b"e%d" % i for i in range(6) if "dev-%d" % (i % 2) == device]
            assert [body_of(m) for m in got] == want
            for m in got:
                r.complete_message(m)
    with client.get_subscription_receiver("events", "all", **HANDLER_KW) as r:
        got = receive_n(r, 6)
        extra = r.receive_messages(max_message_count=5, max_wait_time=1)
        assert len(got) == 6 and extra == []
        for m in got:
            r.complete_message(m)


def test_a_rule_action_can_give_a_copy_its_session(client):
    # the message has no session id; the subscription's rule gives its copy one
    with client.get_topic_sender("routed", **HANDLER_KW) as s:
        s.send_messages(ServiceBusMessage("no session of its own"), timeout=SEND_TIMEOUT)
    with client.get_subscription_receiver("routed", "by-rule", session_id="from-rule",
                                          **HANDLER_KW) as r:
        (m,) = receive_n(r, 1)
        assert body_of(m) == b"no session of its own" and m.session_id == "from-rule"
        r.complete_message(m)


def test_a_restart_keeps_sessions_order_and_state_and_frees_every_lock(start_broker):
    b = start_broker(queues=[{"name": "durable", "requires_session": True}])
    c = sb_client(b)
    try:
        send(c, "durable", [msg("k%d" % (i % 2), "%d" % i) for i in range(6)])
        r = session_receiver(c, "durable", "k0")
        r.__enter__()
        r.session.set_state(b"kept", timeout=MGMT_TIMEOUT)
        assert len(receive_n(r, 3)) == 3
        b.kill9()  # SIGKILL with k0 locked
        try:
            r.__exit__(None, None, None)
        except Exception:  # noqa: BLE001 - the broker is gone
            pass
        c.close()
        b.start()
        c = sb_client(b)
        with session_receiver(c, "durable", "k0") as r:
            assert r.session.get_state(timeout=MGMT_TIMEOUT) == b"kept"
            got = receive_n(r, 3)
            assert [(body_of(m), m.delivery_count) for m in got] == [
                (b"0", 1), (b"2", 1), (b"4", 1)]
            for m in got:
                r.complete_message(m)
        with session_receiver(c, "durable", "k1") as r:
            got = receive_n(r, 3)
            assert [(body_of(m), m.delivery_count) for m in got] == [
                (b"1", 0), (b"3", 0), (b"5", 0)]
            for m in got:
                r.complete_message(m)
    finally:
        c.close()


CONFIG_JSON = """{"UserConfig": {"Namespaces": [{"Name": "sbemulatorns",
  "Queues": [{"Name": "emu.sessions", "Properties": {"RequiresSession": true, "LockDuration": "PT30S"}}],
  "Topics": [{"Name": "emu.topic", "Properties": {},
    "Subscriptions": [{"Name": "emu.sub", "Properties": {"RequiresSession": true}, "Rules": []}]}]
}]}}"""


def test_requires_session_from_the_emulators_config_json(start_broker, tmp_path):
    path = tmp_path / "Config.json"
    path.write_text(CONFIG_JSON)
    b = start_broker(queues=[], config_file=str(path))
    assert "RequiresSession" not in b.run_stderr()
    c = sb_client(b)
    try:
        send(c, "emu.sessions", [msg("e1", "one")])
        with c.get_topic_sender("emu.topic", **HANDLER_KW) as s:
            s.send_messages(msg("e2", "two"), timeout=SEND_TIMEOUT)
        with session_receiver(c, "emu.sessions", NEXT_AVAILABLE_SESSION) as r:
            assert r.session.session_id == "e1"
            now = datetime.datetime.now(UTC)
            assert r.session.locked_until_utc <= now + datetime.timedelta(seconds=31)
            (m,) = receive_n(r, 1)
            r.complete_message(m)
        with c.get_subscription_receiver("emu.topic", "emu.sub", session_id=NEXT_AVAILABLE_SESSION,
                                         **HANDLER_KW) as r:
            assert r.session.session_id == "e2"
            (m,) = receive_n(r, 1)
            assert body_of(m) == b"two"
            r.complete_message(m)
    finally:
        c.close()


def next_available_attach(name, address, timeout_ms):
    """A raw receiver attach asking for the next available session (null filter value)."""
    source = perf(SOURCE, address, None, None, None, None, None, None,
                  {Symbol("com.microsoft:session-filter"): None})
    return frame(perf(ATTACH, name, UInt(0), True, UByte(0), UByte(1), source, perf(TARGET, None),
                      None, None, None, None, None, None,
                      {Symbol("com.microsoft:timeout"): UInt(timeout_ms)}))


def test_a_waiting_receiver_that_detaches_gets_an_answer_and_takes_no_session(client, sessions):
    with RawPeer(sessions.amqp_addr) as p:
        p.send(AMQP_HEADER + frame(perf(OPEN, "raw-waiter", "localhost")) + begin_frame()
               + next_available_attach("waiter", "idle", 30000) + flow_frame(handle=0, link_credit=5))
        assert p.read_header() == AMQP_HEADER
        p.expect(OPEN)
        p.expect(BEGIN)
        # no session of "idle" is available: no answer yet
        with pytest.raises(socket.timeout):
            p.expect(ATTACH, timeout=0.7)
        p.send(frame(perf(DETACH, UInt(0), True)))
        a = p.expect(ATTACH, timeout=5)
        assert a.field(5) is None, "a refused attach has no source: %r" % a
        p.expect(DETACH, timeout=5)
        # the abandoned wait takes nothing: a session that comes now goes to the next receiver
        send(client, "idle", [msg("after-detach", "x")])
        with session_receiver(client, "idle", NEXT_AVAILABLE_SESSION, max_wait_time=10) as r:
            assert r.session.session_id == "after-detach"
            (m,) = receive_n(r, 1)
            r.complete_message(m)
