"""Peek-lock outcomes, receive-and-delete, drain, lock return on link close / dropped connection."""

import os
import signal
import subprocess
import sys
import time
import uuid

from proton import Delivery, Message
from proton.reactor import AtMostOnce

from helpers import (collect, connection, expect_empty, lenient_receiver, pump, send_many, settle_next,
                     unsettled_count)

HERE = os.path.dirname(os.path.abspath(__file__))


def _send(c, address, *bodies):
    snd = c.create_sender(address, name="snd-" + uuid.uuid4().hex)
    for b in bodies:
        d = snd.send(Message(body=b))
        assert d.remote_state == Delivery.ACCEPTED
    return snd


def test_first_delivery_count_is_zero_and_accept_removes(broker):
    with connection(broker) as c:
        _send(c, "q1", "a")
        rcv = c.create_receiver("q1", credit=1)
        m = rcv.receive(timeout=10)
        assert m.body == "a" and m.delivery_count == 0
        assert unsettled_count(rcv) == 1, "peek-lock delivery arrived settled"
        rcv.accept()
        expect_empty(rcv, 1.0)
    with connection(broker) as c:
        expect_empty(c.create_receiver("q1", credit=5), 1.0)


def test_released_is_redelivered_with_same_delivery_count(broker):
    with connection(broker) as c:
        _send(c, "q1", "rel")
        rcv = c.create_receiver("q1", credit=1)
        m1 = rcv.receive(timeout=10)
        assert (m1.body, m1.delivery_count) == ("rel", 0)
        settle_next(rcv, Delivery.RELEASED)
        m2 = rcv.receive(timeout=10)
        assert m2.body == "rel", "released message not redelivered"
        assert m2.delivery_count == 0, "released must not bump delivery-count (got %d)" % m2.delivery_count
        # release again, still unchanged, then accept
        settle_next(rcv, Delivery.RELEASED)
        m3 = rcv.receive(timeout=10)
        assert (m3.body, m3.delivery_count) == ("rel", 0)
        rcv.accept()
        expect_empty(rcv, 1.0)


def test_modified_is_redelivered_with_delivery_count_plus_one(broker):
    with connection(broker) as c:
        _send(c, "q1", "mod")
        rcv = c.create_receiver("q1", credit=1)
        m1 = rcv.receive(timeout=10)
        assert (m1.body, m1.delivery_count) == ("mod", 0)
        settle_next(rcv, Delivery.MODIFIED, failed=True)
        m2 = rcv.receive(timeout=10)
        assert m2.body == "mod", "modified message not redelivered"
        assert m2.delivery_count == 1, "modified must bump delivery-count to 1 (got %d)" % m2.delivery_count
        settle_next(rcv, Delivery.MODIFIED, failed=True)
        m3 = rcv.receive(timeout=10)
        assert (m3.body, m3.delivery_count) == ("mod", 2)
        rcv.accept()
        expect_empty(rcv, 1.0)


def test_modified_undeliverable_here_is_deferred(broker):
    with connection(broker) as c:
        _send(c, "q1", "defer-me", "next")
        rcv = c.create_receiver("q1", credit=1)
        m1 = rcv.receive(timeout=10)
        assert m1.body == "defer-me"
        settle_next(rcv, Delivery.MODIFIED, failed=True, undeliverable=True)
        # the queue goes on with the next message; the deferred one is not redelivered
        m2 = rcv.receive(timeout=10)
        assert m2.body == "next", "expected the next message, got %r (dc=%d)" % (m2.body, m2.delivery_count)
        rcv.accept()
        expect_empty(rcv, 1.5)
    with connection(broker) as c:
        expect_empty(c.create_receiver("q1", credit=10), 1.0)


def test_rejected_goes_to_dead_letter_queue(broker):
    with connection(broker) as c:
        _send(c, "q1", "poison", "fine")
        rcv = c.create_receiver("q1", credit=1)
        m1 = rcv.receive(timeout=10)
        assert m1.body == "poison"
        rcv.reject()
        m2 = rcv.receive(timeout=10)
        assert m2.body == "fine", "rejected message was redelivered on q1 (got %r)" % m2.body
        rcv.accept()
        expect_empty(rcv, 1.0)
        dlq = lenient_receiver(c, "q1/$DeadLetterQueue", credit=5)
        d = dlq.receive(timeout=10)
        assert d.body == "poison"
        dlq.accept()
        expect_empty(dlq, 1.0)
    # the dead-lettered message was removed by that accept
    with connection(broker) as c:
        expect_empty(lenient_receiver(c, "q1/$DeadLetterQueue", credit=5), 1.0)


def test_receive_and_delete(broker):
    with connection(broker) as c:
        _send(c, "q1", "rd-0", "rd-1", "rd-2")
        rcv = c.create_receiver("q1", credit=10, options=AtMostOnce())
        got = [rcv.receive(timeout=10).body for _ in range(3)]
        assert got == ["rd-0", "rd-1", "rd-2"]
        assert unsettled_count(rcv) == 0, "receive-and-delete deliveries arrived unsettled"
        rcv.close()  # nothing to return: the broker already deleted them
    with connection(broker) as c:
        expect_empty(c.create_receiver("q1", credit=10), 1.0)


def _wait_drained(c, rcv, timeout=5):
    c.wait(lambda: not rcv.link.draining(), timeout=timeout,
           msg="drain not completed: credit=%d queued=%d" % (rcv.link.credit, rcv.link.queued))


def test_drain_on_empty_queue(broker):
    with connection(broker) as c:
        rcv = c.create_receiver("q1", credit=0)
        assert rcv.link.credit == 0
        rcv.link.drain(10)
        _wait_drained(c, rcv)
        assert rcv.link.credit == 0, "credit after drain: %d" % rcv.link.credit
        assert rcv.fetcher.has_message == 0
        # a message sent after the drain must not arrive (no credit left)
        _send(c, "q1", "late")
        pump(c, 0.5)
        assert rcv.fetcher.has_message == 0, "message delivered without credit after drain"
        # ... until credit is granted again
        rcv.link.flow(1)
        assert [m.body for m in collect(c, rcv, 1)] == ["late"]
        rcv.accept()


def test_drain_on_non_empty_queue(broker):
    with connection(broker) as c:
        _send(c, "q1", "d-0", "d-1", "d-2")
        rcv = c.create_receiver("q1", credit=0)
        pump(c, 0.3)
        assert rcv.fetcher.has_message == 0, "message delivered without credit"
        rcv.link.drain(10)
        _wait_drained(c, rcv)
        pump(c, 0.3)
        got = [rcv.fetcher.pop() for _ in range(rcv.fetcher.has_message)]
        assert [m.body for m in got] == ["d-0", "d-1", "d-2"]
        assert rcv.link.credit == 0, "credit after drain: %d" % rcv.link.credit
        for _ in got:
            rcv.accept()
        # drain with fewer credits than messages: exactly that many arrive
        _send(c, "q1", "e-0", "e-1", "e-2")
        rcv.link.drain(2)
        _wait_drained(c, rcv)
        pump(c, 0.3)
        assert [rcv.fetcher.pop().body for _ in range(rcv.fetcher.has_message)] == ["e-0", "e-1"]
        rcv.accept()
        rcv.accept()
        assert rcv.link.credit == 0


def test_closed_link_returns_locked_messages(broker):
    with connection(broker) as c:
        _send(c, "q1", "lk-0", "lk-1", "lk-2")
        rcv = c.create_receiver("q1", credit=0)
        rcv.link.flow(2)
        msgs = collect(c, rcv, 2)
        assert [m.body for m in msgs] == ["lk-0", "lk-1"]
        rcv.close()
        r2 = c.create_receiver("q1", credit=10)
        got = [r2.receive(timeout=10) for _ in range(3)]
        for _ in got:
            r2.accept()
        by_body = {m.body: m.delivery_count for m in got}
        assert sorted(by_body) == ["lk-0", "lk-1", "lk-2"], "got %r" % [m.body for m in got]
        assert by_body == {"lk-0": 1, "lk-1": 1, "lk-2": 0}, "delivery counts %r" % by_body
        expect_empty(r2, 0.5)


CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[4])
from proton.utils import BlockingConnection
from helpers import collect
url, credit, accept = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = BlockingConnection(url, timeout=20, allowed_mechs="ANONYMOUS")
r = c.create_receiver("q1", credit=0)
r.link.flow(credit)
got = collect(c, r, credit, timeout=15)
for _ in range(accept):
    r.accept()
c.create_sender("q2")  # round trip: the broker has processed the dispositions
print("GOT " + ",".join(m.body for m in got), flush=True)
time.sleep(120)
"""


def test_dropped_connection_returns_unacknowledged(broker):
    n_total, credit, n_accept = 10, 5, 2
    with connection(broker) as c:
        send_many(c, c.create_sender("q1"), [Message(body="dc-%d" % i) for i in range(n_total)])
    child = subprocess.Popen([sys.executable, "-c", CHILD, broker.amqp_url, str(credit), str(n_accept), HERE],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.startswith("GOT "), "child failed: %r %s" % (line, child.stderr.read() if child.poll() else "")
        assert line.split()[1].split(",") == ["dc-%d" % i for i in range(credit)]
    finally:
        child.send_signal(signal.SIGKILL)  # no Close, no Detach: the socket just goes away
        child.wait()
        child.stdout.close()
        child.stderr.close()
    time.sleep(0.2)
    with connection(broker) as c:
        rcv = c.create_receiver("q1", credit=20)
        got = [rcv.receive(timeout=10) for _ in range(n_total - n_accept)]
        for _ in got:
            rcv.accept()
        counts = {m.body: m.delivery_count for m in got}
        expected = {"dc-%d" % i: (1 if i < credit else 0) for i in range(n_accept, n_total)}
        assert counts == expected, "after drop: %r, expected %r" % (counts, expected)
        expect_empty(rcv, 1.0)  # the accepted ones are gone
