"""Hand-encoded AMQP frames over a raw socket: pipelining, SASL, bad input, idle timeout."""

import socket
import struct
import threading
import time

import pytest
from proton import Message

from amqp_raw import (ACCEPTED, AMQP_HEADER, ATTACH, BEGIN, CLOSE, END, FLOW, FRAME_SASL, OPEN, SASL_HEADER,
                      SASL_INIT, SASL_MECHANISMS, SASL_OUTCOME, TRANSFER, PeerClosed, RawPeer, Symbol,
                      UInt, amqp_value_body, attach_receiver_frame, attach_sender_frame, begin_frame, disposition_frame, encode_message,
                      flow_frame, frame, perf, raw_frame, transfer_frame)
from helpers import KEY_NAME, KEY_VALUE, connect, expect_empty, pump
from peer_checks import Healthy, expect_close


# ---------------------------------------------------------------------------
# (a) pipelining
# ---------------------------------------------------------------------------
def test_pipelined_open_begin_attach_flow_receives_message(broker):
    c = connect(broker)  # another client puts a message on q1
    try:
        c.create_sender("q1").send(Message(body="pipelined-hello"))
    finally:
        c.close()

    with RawPeer(broker.amqp_addr) as p:
        p.send(AMQP_HEADER
               + frame(perf(OPEN, "raw-pipeliner", "localhost"))
               + begin_frame()
               + attach_receiver_frame("pipe-rcv", 0, "q1")
               + flow_frame(handle=0, link_credit=10))
        assert p.read_header() == AMQP_HEADER
        o = p.expect(OPEN)
        assert isinstance(o.field(0), str) and o.field(0), "broker Open without container-id"
        b = p.expect(BEGIN)
        assert b.field(0) == 0, "begin reply remote-channel %r" % b.field(0)
        a = p.expect(ATTACH)
        broker_handle = a.field(1)
        assert isinstance(broker_handle, int), "attach reply handle %r" % broker_handle
        assert a.field(2) is False, "broker side of our receiver link must be the sender (role=false)"
        src = a.field(5)
        assert src is not None and src.field(0) == "q1", "attach reply source %r" % src
        t = None
        while t is None:
            f = p.next_frame(10)
            if f.code == TRANSFER:
                t = f
            else:
                assert f.code == FLOW, "unexpected %r" % f
        assert t.field(0) == broker_handle, "transfer on handle %r, broker attached %r" % (t.field(0), broker_handle)
        tag = t.field(2)
        assert isinstance(tag, bytes) and len(tag) == 16, "delivery tag %r" % tag
        assert amqp_value_body(t.payload) == "pipelined-hello"
        assert not t.field(4), "peek-lock delivery must be unsettled"
        # accept it, then close cleanly
        p.send(disposition_frame(t.field(1), ACCEPTED))
        p.send(frame(perf(CLOSE)))
        f = p.next_frame(10)
        while f.code != CLOSE:
            f = p.next_frame(10)
        assert f.error() is None, "clean close answered with %r" % (f.error(),)
    c = connect(broker)
    try:
        expect_empty(c.create_receiver("q1", credit=5), 1.0)
    finally:
        c.close()


def test_raw_sender_and_presettled_transfer(broker):
    with RawPeer(broker.amqp_addr) as p:
        p.open()
        p.begin()
        p.send(attach_sender_frame("raw-snd", 0, "q1"))
        a = p.expect(ATTACH)
        assert a.field(2) is True, "broker side of our sender link must be the receiver (role=true)"
        f = p.expect(FLOW)
        credit = f.field(6)
        assert credit and credit > 0, "broker granted no credit: %r" % f
        for i in range(3):
            p.send(transfer_frame(0, i, ("tag%d" % i).encode(), encode_message("raw-%d" % i), settled=(i == 2)))
        # unsettled ones are accepted by the broker
        accepted = set()
        deadline = time.monotonic() + 10
        while len(accepted) < 2 and time.monotonic() < deadline:
            g = p.next_frame(10)
            if g.name == "disposition":
                first, last = g.field(1), g.field(2)
                last = first if last is None else last
                state = g.field(4)
                assert state is not None and state.code == ACCEPTED, "outcome %r" % state
                accepted.update(range(first, last + 1))
        assert accepted >= {0, 1}, "dispositions for %r" % accepted
        p.send(frame(perf(CLOSE)))
    c = connect(broker)
    try:
        r = c.create_receiver("q1", credit=5)
        got = [r.receive(timeout=10).body for _ in range(3)]
        assert got == ["raw-0", "raw-1", "raw-2"]
    finally:
        c.close()


def test_protocol_header_answered_before_open(broker):
    """Clients such as go-amqp send the protocol header alone and wait for the
    broker's header before sending Open; the broker must not hold its header back."""
    with RawPeer(broker.amqp_addr) as p:
        p.send(AMQP_HEADER)
        try:
            h = p.read_header(3)
        except (socket.timeout, TimeoutError):
            pytest.fail("no protocol header from the broker within 3 s of ours (it waits for our Open?)")
        assert h == AMQP_HEADER, h
        p.send(frame(perf(OPEN, "header-first", "localhost")))
        p.expect(OPEN)
        p.send(frame(perf(CLOSE)))
        p.expect(CLOSE)
    # the same for the AMQP header that follows a successful SASL exchange
    with RawPeer(broker.amqp_addr) as p:
        p.send(SASL_HEADER)
        assert p.read_header(3) == SASL_HEADER
        assert p.next_frame(3).code == SASL_MECHANISMS
        p.send(frame(perf(SASL_INIT, Symbol("ANONYMOUS"), b""), ftype=FRAME_SASL))
        o = p.next_frame(3)
        assert o.code == SASL_OUTCOME and o.field(0) == 0, repr(o)
        p.send(AMQP_HEADER)
        try:
            h = p.read_header(3)
        except (socket.timeout, TimeoutError):
            pytest.fail("no AMQP protocol header within 3 s after SASL (it waits for our Open?)")
        assert h == AMQP_HEADER, h


# ---------------------------------------------------------------------------
# SASL on the wire
# ---------------------------------------------------------------------------
def _sasl_mechanisms(p):
    p.send(SASL_HEADER)
    h = p.read_header()
    assert h == SASL_HEADER, "broker answered SASL header with %r" % h
    f = p.next_frame()
    assert f.ftype == FRAME_SASL and f.code == SASL_MECHANISMS, repr(f)
    mechs = f.field(0)
    return [str(m) for m in (mechs if isinstance(mechs, list) else [mechs])]


def test_sasl_mechanisms_and_plain_outcomes(broker):
    with RawPeer(broker.amqp_addr) as p:
        mechs = _sasl_mechanisms(p)
        assert set(mechs) == {"MSSBCBS", "ANONYMOUS", "PLAIN"}, mechs
        resp = b"\x00" + KEY_NAME.encode() + b"\x00" + KEY_VALUE.encode()
        p.send(frame(perf(SASL_INIT, Symbol("PLAIN"), resp), ftype=FRAME_SASL))
        o = p.next_frame()
        assert o.code == SASL_OUTCOME and o.field(0) == 0, "good PLAIN: %r" % o
        p.send(AMQP_HEADER + frame(perf(OPEN, "raw-sasl", "localhost")))
        assert p.read_header() == AMQP_HEADER
        p.expect(OPEN)
        p.send(frame(perf(CLOSE)))
        p.expect(CLOSE)

    with RawPeer(broker.amqp_addr) as p:
        _sasl_mechanisms(p)
        resp = b"\x00" + KEY_NAME.encode() + b"\x00wrong-key"
        p.send(frame(perf(SASL_INIT, Symbol("PLAIN"), resp), ftype=FRAME_SASL))
        o = p.next_frame()
        assert o.code == SASL_OUTCOME, repr(o)
        assert o.field(0) == 1, "bad PLAIN must give outcome code 1 (auth), got %r" % o.field(0)
        assert p.wait_eof(5), "socket not closed after failed SASL"

    with RawPeer(broker.amqp_addr) as p:
        _sasl_mechanisms(p)
        p.send(frame(perf(SASL_INIT, Symbol("ANONYMOUS"), b"anon@example"), ftype=FRAME_SASL))
        o = p.next_frame()
        assert o.code == SASL_OUTCOME and o.field(0) == 0, "ANONYMOUS: %r" % o


# ---------------------------------------------------------------------------
# (b) bad input: each case on its own connection, a healthy one keeps working
# ---------------------------------------------------------------------------
BAD_HEADERS = {
    "garbage": b"\xde\xad\xbe\xef\x00\x01\x02\x03",
    "http": b"GET / HT",
    "amqp-0-9-1": b"AMQP\x00\x00\x09\x01",
    "wrong-version": b"AMQP\x00\x02\x00\x00",
    "wrong-protocol-id": b"AMQP\x09\x01\x00\x00",
}


@pytest.mark.parametrize("name", sorted(BAD_HEADERS))
def test_bad_protocol_header(broker, healthy, name):
    with RawPeer(broker.amqp_addr) as p:
        p.send(BAD_HEADERS[name])
        try:
            h = p.read_header(5)
        except PeerClosed:
            pytest.fail("broker closed without sending its protocol header (reset=%s)" % p.reset)
        assert h[:4] == b"AMQP" and h[5:] == b"\x01\x00\x00" and h[4] in (0, 3), "answered %r" % h
        assert p.wait_eof(5), "socket still open after bad header %r" % BAD_HEADERS[name]
        assert not p.buf, "unexpected bytes after the header: %r" % bytes(p.buf)
    healthy.check()


def test_truncated_frame_then_half_close(broker, healthy):
    with RawPeer(broker.amqp_addr) as p:
        full = AMQP_HEADER + frame(perf(OPEN, "truncated", "localhost", UInt(65536)))
        p.send(full[:8 + 12])  # header + 12 bytes of a longer Open frame
        p.sock.shutdown(socket.SHUT_WR)
        assert p.wait_eof(5), "broker did not close a half-closed connection with a truncated frame"
    with RawPeer(broker.amqp_addr) as p:
        # same after Open: a truncated Begin
        p.open()
        p.send(begin_frame()[:10])
        p.sock.shutdown(socket.SHUT_WR)
        assert p.wait_eof(5), "broker did not close after a truncated Begin + half-close"
    healthy.check()


BAD_FRAME_HEADERS = {
    "size-below-8": struct.pack(">IBBH", 4, 2, 0, 0),
    "size-zero": struct.pack(">IBBH", 0, 2, 0, 0),
    "doff-below-2": struct.pack(">IBBH", 8, 1, 0, 0),
    "over-max-frame-size": struct.pack(">IBBH", 4 * 262144, 2, 0, 0),
}


@pytest.mark.parametrize("name", sorted(BAD_FRAME_HEADERS))
def test_bad_frame_header_is_framing_error(broker, healthy, name):
    with RawPeer(broker.amqp_addr) as p:
        o = p.open()
        if name == "over-max-frame-size":
            assert o.field(2) == 262144, "broker advertised max-frame-size %r" % o.field(2)
        # only the 8 header bytes: the broker must decide without the (absent) body
        p.send(BAD_FRAME_HEADERS[name])
        expect_close(p, "amqp:connection:framing-error")
    healthy.check()


@pytest.mark.broker(amqp={"max_frame_size": 4096})
def test_complete_frame_over_max_frame_size(broker, healthy):
    with RawPeer(broker.amqp_addr) as p:
        o = p.open()
        assert o.field(2) == 4096, "broker advertised max-frame-size %r" % o.field(2)
        p.begin()
        p.send(attach_receiver_frame("big", 0, "q1"))
        p.expect(ATTACH)
        # a complete, well-formed Flow frame padded (properties map) beyond 4096 bytes
        props = {Symbol("pad"): "x" * 4200}  # small enough to sit in one read buffer
        body = perf(FLOW, UInt(0), UInt(100), UInt(0), UInt(100), UInt(0), UInt(0), UInt(1), None, False, False,
                    props)
        data = frame(body)
        assert len(data) > 4096
        try:
            p.send(data)
        except OSError:
            pass
        expect_close(p, "amqp:connection:framing-error")
    healthy.check()


UNDECODABLE = {
    # begin descriptor, list8 of one element whose constructor (0xff) is invalid
    "invalid-constructor": b"\x00\x53\x11\xc0\x03\x01\xff\x00",
    # begin descriptor, list32 whose declared size runs past the frame
    "overrunning-list": b"\x00\x53\x11\xd0\x00\x00\x10\x00\x00\x00\x00\x04\x43",
    # not a described type at all
    "not-described": b"\xff\xff\xff\xff",
}


@pytest.mark.parametrize("name", sorted(UNDECODABLE))
def test_undecodable_performative_is_decode_error(broker, healthy, name):
    with RawPeer(broker.amqp_addr) as p:
        p.open()
        p.send(raw_frame(UNDECODABLE[name]))
        expect_close(p, "amqp:decode-error")
    healthy.check()


def test_transfer_on_unattached_handle(broker, healthy):
    with RawPeer(broker.amqp_addr) as p:
        p.open()
        p.begin()
        p.send(transfer_frame(7, 0, b"t" * 16, encode_message("nobody-attached"), settled=True))
        deadline = time.monotonic() + 10
        got = None
        while got is None:
            try:
                f = p.next_frame(max(0.001, deadline - time.monotonic()))
            except (PeerClosed, socket.timeout, TimeoutError) as e:
                raise AssertionError("no End/Close after transfer on unattached handle (%r); log %r" % (e, p.log))
            if f.code in (END, CLOSE):
                got = f
        err = got.error()
        assert err is not None and err[0] == "amqp:session:unattached-handle", \
            "%s carries %r (log %r)" % (got.name, err, p.log)
        if got.code == END:
            # session ended; the connection itself is still usable
            p.send(frame(perf(END)))
            p.send(frame(perf(CLOSE)))
            f = p.next_frame(5)
            while f.code != CLOSE:
                f = p.next_frame(5)
            assert f.error() is None
        else:
            p.send(frame(perf(CLOSE)))
            assert p.wait_eof(5)
    healthy.check()


def test_broker_survives_abrupt_disconnects(broker, healthy):
    # connect and vanish at every stage of the handshake
    stages = [b"", AMQP_HEADER[:3], AMQP_HEADER, AMQP_HEADER + frame(perf(OPEN, "x", "localhost")),
              AMQP_HEADER + frame(perf(OPEN, "x", "localhost")) + begin_frame()
              + attach_receiver_frame("abrupt", 0, "q1") + flow_frame(0, 100)]
    for data in stages:
        s = socket.create_connection(broker.amqp_addr, timeout=5)
        if data:
            s.sendall(data)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
        s.close()
    time.sleep(0.3)
    healthy.check()


# ---------------------------------------------------------------------------
# idle timeout
# ---------------------------------------------------------------------------
@pytest.mark.broker(amqp={"idle_timeout_ms": 2000})
def test_silent_peer_is_closed_for_idleness(broker):
    h = Healthy(broker)  # proton heartbeats on this one, it must survive
    stop = threading.Event()
    errors = []

    def keep_pumping():
        try:
            while not stop.is_set():
                pump(h.conn, 0.2)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=keep_pumping, daemon=True)
    t.start()
    try:
        with RawPeer(broker.amqp_addr) as p:
            t0 = time.monotonic()
            o = p.open()  # we advertise no idle-time-out and then say nothing
            assert o.field(4) == 1000, "broker should advertise half of 2000 ms, got %r" % o.field(4)
            close = expect_close(p, "amqp:resource-limit-exceeded", timeout=10)
            elapsed = time.monotonic() - t0
            assert 1.8 <= elapsed <= 5.0, "closed after %.2f s (threshold 2 s)" % elapsed
            assert close is not None
    finally:
        stop.set()
        t.join(5)
    assert not errors, "heartbeating connection failed meanwhile: %r" % errors
    h.check()
    h.close()


HANDSHAKE_STALLS = {
    "no-bytes": b"",
    "amqp-header-only": AMQP_HEADER,
    "sasl-header-only": SASL_HEADER,
    "partial-open": AMQP_HEADER + frame(perf(OPEN, "stalled", "localhost"))[:6],
}


@pytest.mark.broker(amqp={"idle_timeout_ms": 2000})
@pytest.mark.parametrize("name", sorted(HANDSHAKE_STALLS))
def test_peer_silent_during_handshake_is_dropped(broker, name):
    """A peer that stops talking before its Open holds a connection just the same:
    it must be dropped once it has been silent past the idle threshold."""
    with RawPeer(broker.amqp_addr) as p:
        t0 = time.monotonic()
        if HANDSHAKE_STALLS[name]:
            p.send(HANDSHAKE_STALLS[name])
        closed = p.wait_eof(6.0)
        elapsed = time.monotonic() - t0
        assert closed, "connection stalled at %s still open after %.1f s (idle_timeout_ms=2000); received %r" % (
            name, elapsed, bytes(p.buf))
        assert elapsed >= 1.5, "dropped after only %.2f s" % elapsed
    assert broker.alive()


# ---------------------------------------------------------------------------
# session flow control, ranged dispositions, handle reuse
# ---------------------------------------------------------------------------
def test_session_incoming_window_and_ranged_disposition(broker):
    c = connect(broker)
    try:
        snd = c.create_sender("q1")
        for i in range(6):
            snd.send(Message(body="w-%d" % i))
    finally:
        c.close()
    with RawPeer(broker.amqp_addr) as p:
        p.open()
        p.send(begin_frame(incoming_window=2))
        bg = p.expect(BEGIN)
        next_in = bg.field(1)  # the broker's next-outgoing-id
        p.send(attach_receiver_frame("win", 0, "q1"))
        p.expect(ATTACH)
        p.send(flow_frame(0, 10, next_incoming_id=next_in, incoming_window=2))
        frames, closed = p.read_until_closed(1.5)
        ts = [f for f in frames if f.code == TRANSFER]
        assert not closed
        assert len(ts) == 2, "session incoming-window 2 but the broker sent %d transfers" % len(ts)
        # accept both with one ranged disposition
        p.send(disposition_frame(ts[0].field(1), ACCEPTED, last=ts[1].field(1)))
        # open the window: the other four follow
        p.send(flow_frame(0, 10, next_incoming_id=next_in + 2, incoming_window=100, delivery_count=2))
        frames, closed = p.read_until_closed(1.5)
        ts2 = [f for f in frames if f.code == TRANSFER]
        assert [amqp_value_body(t.payload) for t in ts + ts2] == ["w-%d" % i for i in range(6)]
        p.send(disposition_frame(ts2[0].field(1), ACCEPTED, last=ts2[-1].field(1)))
        p.send(frame(perf(CLOSE)))
        p.expect(CLOSE)
    c = connect(broker)
    try:
        expect_empty(c.create_receiver("q1", credit=10), 1.0)
    finally:
        c.close()


def test_attach_on_handle_in_use(broker, healthy):
    with RawPeer(broker.amqp_addr) as p:
        p.open()
        p.begin()
        p.send(attach_receiver_frame("first", 0, "q1"))
        p.expect(ATTACH)
        p.send(attach_receiver_frame("second", 0, "q2"))
        deadline = time.monotonic() + 5
        f = p.next_frame(5)
        while f.code not in (END, CLOSE) and time.monotonic() < deadline:
            f = p.next_frame(5)
        assert f.code in (END, CLOSE), "no End/Close: %r" % p.log
        err = f.error()
        assert err is not None and err[0] == "amqp:session:handle-in-use", "%s carries %r" % (f.name, err)
    healthy.check()
