"""SASL: ANONYMOUS, PLAIN (good and bad credentials), require_sasl."""

import pytest
from proton import Message, SASL
from proton._exceptions import ConnectionException, LinkException, ProtonException
from proton.utils import BlockingConnection

from helpers import KEY_NAME, KEY_VALUE, connect, connection, roundtrip


def _sasl(c):
    return c.conn.transport.sasl()


def test_anonymous_login(broker):
    with connection(broker, allowed_mechs="ANONYMOUS") as c:
        s = _sasl(c)
        assert s.outcome == SASL.OK, "sasl outcome %r" % s.outcome
        assert s.mech == "ANONYMOUS"
        assert c.conn.remote_container, "broker Open carried no container-id"
        snd = c.create_sender("q1")
        snd.send(Message(body="anon"))
        rcv = c.create_receiver("q1", credit=1)
        assert rcv.receive(timeout=10).body == "anon"
        rcv.accept()


def test_plain_login_ok(broker):
    with connection(broker, user=KEY_NAME, password=KEY_VALUE, allowed_mechs="PLAIN",
                    allow_insecure_mechs=True) as c:
        s = _sasl(c)
        assert s.outcome == SASL.OK, "sasl outcome %r" % s.outcome
        assert s.mech == "PLAIN"
        snd = c.create_sender("q1")
        snd.send(Message(body="plain"))
        rcv = c.create_receiver("q1", credit=1)
        assert rcv.receive(timeout=10).body == "plain"
        rcv.accept()


def test_plain_login_wrong_password_refused(broker):
    with pytest.raises(ConnectionException) as ei:
        c = BlockingConnection(broker.amqp_url, timeout=10, user=KEY_NAME, password="WRONG-" + KEY_VALUE,
                               allowed_mechs="PLAIN", allow_insecure_mechs=True)
        try:
            # If the constructor did not fail, any use must.
            c.create_sender("q1").send(Message(body="must-not-arrive"))
        finally:
            c.close()
    text = str(ei.value)
    assert "unauthorized" in text.lower() or "auth" in text.lower(), text
    # unknown user is refused too
    with pytest.raises(ConnectionException):
        c = BlockingConnection(broker.amqp_url, timeout=10, user="nobody", password=KEY_VALUE,
                               allowed_mechs="PLAIN", allow_insecure_mechs=True)
        c.close()
    # the broker is fine and nothing was enqueued by the refused client
    assert roundtrip(broker, "q1", "after-bad-login") == "after-bad-login"


@pytest.mark.broker(amqp={"require_sasl": True})
def test_require_sasl_refuses_client_without_sasl(broker):
    sent = False
    with pytest.raises((ProtonException, ConnectionException, LinkException)):
        c = BlockingConnection(broker.amqp_url, timeout=5, sasl_enabled=False)
        try:
            c.create_sender("q1").send(Message(body="no-sasl"))
            sent = True
        finally:
            c.close()
    assert not sent
    # SASL clients still get in, and the refused client's message is not there.
    with connection(broker, allowed_mechs="ANONYMOUS") as c:
        rcv = c.create_receiver("q1", credit=1)
        from helpers import expect_empty
        expect_empty(rcv, 1.0)
    with connection(broker, user=KEY_NAME, password=KEY_VALUE, allowed_mechs="PLAIN") as c:
        snd = c.create_sender("q1")
        snd.send(Message(body="sasl-ok"))


def test_client_without_sasl_accepted_by_default(broker):
    c = connect(broker, sasl_enabled=False)
    try:
        snd = c.create_sender("q1")
        snd.send(Message(body="no-sasl-ok"))
        rcv = c.create_receiver("q1", credit=1)
        assert rcv.receive(timeout=10).body == "no-sasl-ok"
        rcv.accept()
    finally:
        c.close()
