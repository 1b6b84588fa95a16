"""Checks shared by the tests that send bad or hostile input on a raw socket: a client that
must keep working meanwhile, and the Close a bad peer must get."""

import socket
import time
import uuid

from proton import Delivery, Message

from amqp_raw import CLOSE, PeerClosed, RawPeer, frame, perf
from helpers import connect


class Healthy:
    """A well-behaved proton connection opened before the bad peer and used after it."""

    def __init__(self, broker):
        self.broker = broker
        self.conn = connect(broker)
        self.snd = self.conn.create_sender("q2")
        self.rcv = self.conn.create_receiver("q2", credit=1)

    def check(self):
        assert self.broker.alive(), "broker process died (exit %r)\n%s" % (
            self.broker.proc.poll(), self.broker.stderr_tail(4000))
        body = "healthy-" + uuid.uuid4().hex
        d = self.snd.send(Message(body=body), timeout=10)
        assert d.remote_state == Delivery.ACCEPTED
        m = self.rcv.receive(timeout=10)
        self.rcv.accept()
        assert m.body == body
        # and a brand-new connection works too
        with RawPeer(self.broker.amqp_addr) as p:
            p.open()
            p.send(frame(perf(CLOSE)))
            p.expect(CLOSE)
        assert self.broker.alive()

    def close(self):
        self.conn.close()


def expect_close(peer, condition, timeout=10):
    """Read until a Close arrives (heartbeats/other frames skipped), check its error
    condition, answer it, and require the socket to be closed afterwards."""
    deadline = time.monotonic() + timeout
    close = None
    while close is None:
        try:
            f = peer.next_frame(max(0.001, deadline - time.monotonic()))
        except PeerClosed:
            raise AssertionError("socket %s without a Close frame carrying %s; received: %r"
                                 % ("reset" if peer.reset else "closed", condition, peer.log))
        except (socket.timeout, TimeoutError):
            raise AssertionError("no Close(%s) within %ss; received: %r" % (condition, timeout, peer.log))
        if f.code == CLOSE:
            close = f
    err = close.error()
    assert err is not None and err[0] == condition, "Close carries %r, expected %s (log %r)" % (
        err, condition, peer.log)
    try:
        peer.send(frame(perf(CLOSE)))
    except OSError:
        pass
    assert peer.wait_eof(5), "socket still open 5 s after Close(%s)" % condition
    return close
