"""Connection-level behaviour: heartbeats, unknown addresses, address forms, HTTP endpoints."""

import re

import pytest
from proton import Delivery, Message
from proton._utils import LinkDetached

from helpers import connection, expect_empty, lenient_receiver, lenient_sender, pump, roundtrip


def _roundtrip_on(c, address="q1", body="still-alive"):
    snd = c.create_sender(address)
    d = snd.send(Message(body=body), timeout=10)
    assert d.remote_state == Delivery.ACCEPTED
    rcv = c.create_receiver(address, credit=1)
    m = rcv.receive(timeout=10)
    rcv.accept()
    assert m.body == body
    snd.close()
    rcv.close()


def test_broker_sends_heartbeats_for_short_client_idle_timeout(broker):
    # proton advertises idle-time-out 2000 ms and closes the connection itself
    # (amqp:resource-limit-exceeded) if nothing arrives for 2 s.
    with connection(broker, heartbeat=2) as c:
        t = c.conn.transport
        assert t.idle_timeout == 2.0
        before = t.frames_input
        pump(c, 6.0)  # raises ConnectionException if the connection died
        heartbeats = t.frames_input - before
        assert heartbeats >= 3, "only %d frames from the broker in 6 s idle" % heartbeats
        assert not (c.conn.state & c.conn.REMOTE_CLOSED), "broker closed: %s" % c.conn.remote_condition
        _roundtrip_on(c)


@pytest.mark.broker(amqp={"idle_timeout_ms": 2000})
def test_heartbeating_client_is_not_timed_out(broker):
    with connection(broker) as c:
        t = c.conn.transport
        # the broker advertises half of its threshold
        assert t.remote_idle_timeout == pytest.approx(1.0), "broker advertised %r s" % t.remote_idle_timeout
        pump(c, 5.0)  # proton heartbeats at half of 1 s; the broker must not close us
        assert not (c.conn.state & c.conn.REMOTE_CLOSED), "broker closed: %s" % c.conn.remote_condition
        _roundtrip_on(c)


def test_unknown_address_sender_not_found(broker):
    with connection(broker) as c:
        with pytest.raises(LinkDetached) as ei:
            c.create_sender("no-such-queue")
        assert ei.value.condition == "amqp:not-found", str(ei.value)
        link = ei.value.link
        assert link.remote_target is None or not link.remote_target.address, \
            "attach reply should carry a null target, got %r" % link.remote_target.address
        _roundtrip_on(c)  # the connection is unaffected


def test_unknown_address_receiver_not_found(broker):
    with connection(broker) as c:
        with pytest.raises(LinkDetached) as ei:
            c.create_receiver("no-such-queue", credit=5)
        assert ei.value.condition == "amqp:not-found", str(ei.value)
        link = ei.value.link
        assert link.remote_source is None or not link.remote_source.address, \
            "attach reply should carry a null source, got %r" % link.remote_source.address
        _roundtrip_on(c)


def test_unknown_dead_letter_address_not_found(broker):
    with connection(broker) as c:
        with pytest.raises(LinkDetached) as ei:
            c.create_receiver("nope/$DeadLetterQueue", credit=5)
        assert ei.value.condition == "amqp:not-found", str(ei.value)


def test_address_forms(broker):
    with connection(broker) as c:
        # amqp://host:port/<queue>: prefix stripped
        snd = lenient_sender(c, "%s/q2" % broker.amqp_url)
        assert snd.send(Message(body="via-url")).remote_state == Delivery.ACCEPTED
        rcv = c.create_receiver("q2", credit=5)
        m = rcv.receive(timeout=10)
        assert m.body == "via-url"
        rcv.reject()  # -> q2/$DeadLetterQueue
        # the $DeadLetterQueue segment is case-insensitive
        dlq = lenient_receiver(c, "q2/$deadletterqueue", credit=5)
        assert dlq.receive(timeout=10).body == "via-url"
        dlq.accept()
        # and a receiver via the URL form
        snd2 = c.create_sender("q1")
        snd2.send(Message(body="to-url-receiver"))
        r2 = lenient_receiver(c, "%s/q1" % broker.amqp_url, credit=5)
        assert r2.receive(timeout=10).body == "to-url-receiver"
        r2.accept()
        expect_empty(r2, 0.5)


def test_queues_are_isolated(broker):
    assert roundtrip(broker, "q1", "one") == "one"
    with connection(broker) as c:
        c.create_sender("q1").send(Message(body="for-q1"))
        expect_empty(c.create_receiver("q2", credit=5), 0.5)


def test_http_health(broker):
    status, _headers, body = broker.http_get("/health")
    assert status == 200
    assert body.strip() == b"ok", body


def test_http_metrics(broker):
    # some traffic first
    assert roundtrip(broker, "q1", "metrics") == "metrics"
    status, headers, body = broker.http_get("/metrics")
    assert status == 200
    ctype = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    assert ctype.startswith("text/plain"), ctype
    text = body.decode("utf-8")
    assert re.search(r"^# TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|histogram|summary|untyped)$", text, re.M), \
        text[:2000]
    sample = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? [-+]?([0-9.eE+-]+|NaN|\+?Inf|-Inf)( [0-9]+)?$")
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert lines, "no samples in /metrics"
    bad = [ln for ln in lines if not sample.match(ln)]
    assert not bad, "malformed Prometheus lines: %r" % bad[:5]

