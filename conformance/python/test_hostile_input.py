"""Crafted frames that once stopped the whole broker: deep nesting (a stack overflow in the
decoder), declared lengths allocated before they were read, and arrays whose declared count
decodes to megabytes. Each is sent raw; the broker must answer that connection with an error,
stay up, and keep serving a client that was connected all along."""

import struct
import uuid

import pytest

from amqp_raw import (AMQP_HEADER, ATTACH, FLOW, OPEN, SASL_HEADER, SASL_MECHANISMS,
                      SASL_OUTCOME, DISPOSITION, REJECTED, ACCEPTED, FRAME_SASL, RawPeer,
                      Symbol, attach_sender_frame, encode, frame, perf, raw_frame, transfer_frame,
                      encode_message, SASL_INIT, Described, ULong, CLOSE, TRANSFER, flow_frame,
                      disposition_frame)
from proton import Message
from helpers import connect
from peer_checks import expect_close


# -- crafted bytes -------------------------------------------------------------------------
def nested_lists(n):
    """n list32s, each holding the next, around an empty list."""
    v = b"\x45"
    for _ in range(n):
        v = b"\xd0" + struct.pack(">II", 4 + len(v), 1) + v
    return v


def nulls_array32(count):
    """An array32 of `count` nulls: 10 bytes whatever the count."""
    return b"\xf0" + struct.pack(">II", 5, count) + b"\x40"


def list32_declaring(count, items=b"\x40"):
    """A list32 whose count says `count` but that holds `items` only."""
    return b"\xd0" + struct.pack(">II", 4 + len(items), count) + items


def map32_declaring(count):
    return b"\xd1" + struct.pack(">II", 4 + 4, count) + b"\xa3\x01k\x40"


def str32_declaring(length):
    return b"\xb1" + struct.pack(">I", length) + b"x"


def described_list(code, fields):
    """A described list (performative or section) of already-encoded fields."""
    body = b"".join(fields)
    return b"\x00\x53" + bytes([code]) + b"\xd0" + struct.pack(">II", 4 + len(body), len(fields)) + body


def fields_map(value):
    """A map {sym "k": value}, value already encoded."""
    entries = b"\xa3\x01k" + value
    return b"\xd1" + struct.pack(">II", 4 + len(entries), 2) + entries


NULL = b"\x40"


def open_body(properties):
    """Open(container-id "hostile", ..., properties)."""
    return described_list(OPEN, [b"\xa1\x07hostile"] + [NULL] * 8 + [properties])


CRAFTED_VALUES = {
    "nested-4000": nested_lists(4000),
    "array32-65536-nulls": nulls_array32(65536),
    "list32-count-4g": list32_declaring(0xFFFFFFFF),
    "map32-count-4g": map32_declaring(0xFFFFFFFE),
    "str32-length-4g": str32_declaring(0xFFFFFFFF),
}


# -- checks ----------------------------------------------------------------------------------
def sasl_anonymous(p):
    p.send(SASL_HEADER)
    assert p.read_header() == SASL_HEADER
    p.expect(SASL_MECHANISMS)
    p.send(frame(perf(SASL_INIT, Symbol("ANONYMOUS"), b""), ftype=FRAME_SASL))
    outcome = p.expect(SASL_OUTCOME)
    assert outcome.field(0) == 0, "sasl outcome %r" % outcome


def rss_kib(broker):
    with open("/proc/%d/status" % broker.proc.pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- tests -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CRAFTED_VALUES))
def test_crafted_open_before_sasl_is_a_decode_error(broker, healthy, name):
    before = rss_kib(broker)
    with RawPeer(broker.amqp_addr) as p:
        p.send(AMQP_HEADER + raw_frame(open_body(fields_map(CRAFTED_VALUES[name]))))
        assert p.read_header() == AMQP_HEADER
        expect_close(p, "amqp:decode-error")
    healthy.check()
    grew = rss_kib(broker) - before
    assert grew < 64 * 1024, "RSS grew by %d KiB for one small frame" % grew


@pytest.mark.parametrize("name", ["nested-4000", "array32-65536-nulls"])
def test_crafted_open_after_sasl_is_a_decode_error(broker, healthy, name):
    with RawPeer(broker.amqp_addr) as p:
        sasl_anonymous(p)
        p.send(AMQP_HEADER + raw_frame(open_body(fields_map(CRAFTED_VALUES[name]))))
        assert p.read_header() == AMQP_HEADER
        expect_close(p, "amqp:decode-error")
    healthy.check()


@pytest.mark.parametrize("name", ["nested-4000", "str32-length-4g"])
def test_crafted_sasl_init_closes_only_that_socket(broker, healthy, name):
    # sasl-init [mechanism, initial-response]: the crafted value in the mechanism's place
    with RawPeer(broker.amqp_addr) as p:
        p.send(SASL_HEADER)
        assert p.read_header() == SASL_HEADER
        p.expect(SASL_MECHANISMS)
        p.send(raw_frame(described_list(SASL_INIT, [CRAFTED_VALUES[name]]), ftype=FRAME_SASL))
        frames, closed = p.read_until_closed(10)
        assert closed, "socket still open after a crafted sasl-init: %r" % frames
    healthy.check()


def test_nineteen_byte_sasl_init_declaring_four_gib(broker, healthy):
    before = rss_kib(broker)
    with RawPeer(broker.amqp_addr) as p:
        p.send(SASL_HEADER)
        assert p.read_header() == SASL_HEADER
        p.expect(SASL_MECHANISMS)
        body = b"\x00\x53\x41\xc0\x06\x01\xb3\xff\xff\xff\xff"
        p.send(raw_frame(body, ftype=FRAME_SASL))
        _, closed = p.read_until_closed(10)
        assert closed
    healthy.check()
    assert rss_kib(broker) - before < 64 * 1024


def test_crafted_attach_properties_are_a_decode_error(broker, healthy):
    with RawPeer(broker.amqp_addr) as p:
        p.open()
        p.begin()
        # attach [name, handle, role, snd, rcv, source, target, unsettled, incomplete,
        #         initial-delivery-count, max-message-size, offered, desired, properties]
        attach = described_list(ATTACH, [
            b"\xa1\x04deep", b"\x70\x00\x00\x00\x00", b"\x42", NULL, NULL,
            encode(perf(0x28, None)), encode(perf(0x29, "q1")), NULL, NULL, NULL, NULL, NULL, NULL,
            fields_map(nested_lists(4000))])
        p.send(raw_frame(attach))
        expect_close(p, "amqp:decode-error")
    healthy.check()


def test_a_source_filter_the_encoder_cannot_write_back_is_not_echoed(broker, healthy):
    """serde_amqp 0.18 panics encoding a map with a timestamp key before a binary value (found
    by fuzzing); the broker once echoed the peer's filter set in its Attach and lost the
    connection to that panic. Now the reply carries no filter and the link works."""
    ts_bin_map = b"\xc1\x0d\x02\x83" + b"\x00" * 8 + b"\xa0\x01x"
    filter_set = b"\xc1" + bytes([1 + 3 + 4 + len(ts_bin_map)]) + b"\x02" + b"\xa3\x01f" \
        + b"\x00\xa3\x01f" + ts_bin_map
    # source [address, durable, expiry, timeout, dynamic, dynamic-node-properties,
    #         distribution-mode, filter]
    source = described_list(0x28, [b"\xa1\x02q1", NULL, NULL, NULL, NULL, NULL, NULL, filter_set])
    with RawPeer(broker.amqp_addr) as p:
        p.open()
        p.begin()
        attach = described_list(ATTACH, [
            b"\xa1\x06filter", b"\x70\x00\x00\x00\x00", b"\x41", NULL, NULL,
            source, encode(perf(0x29, None))])
        p.send(raw_frame(attach))
        reply = p.expect(ATTACH)
        reply_source = reply.field(5)
        assert reply_source is not None and reply_source.field(0) == "q1", reply
        assert reply_source.field(7) is None, "the filter was echoed: %r" % (reply_source,)
        # the link works: a message sent meanwhile arrives on it
        body = "after-filter-" + uuid.uuid4().hex
        conn = connect(broker)
        try:
            conn.create_sender("q1").send(Message(body=body), timeout=10)
        finally:
            conn.close()
        p.send(flow_frame(0, 1))
        transfer = p.expect(TRANSFER)
        assert body.encode() in transfer.payload
        p.send(disposition_frame(transfer.field(1), ACCEPTED))
        p.send(frame(perf(CLOSE)))
        p.expect(CLOSE)
    assert "panicked" not in broker.stderr_tail(20000)
    healthy.check()


def test_a_message_with_crafted_application_properties_is_rejected_alone(broker, healthy):
    with RawPeer(broker.amqp_addr) as p:
        p.open()
        p.begin()
        p.send(attach_sender_frame("hostile-snd", 0, "q1"))
        p.expect(ATTACH)
        p.expect(FLOW)
        app = b"\x00\x53\x74" + b"\xd1" + struct.pack(">II", 4 + 3 + len(nested_lists(3000)), 2) \
            + b"\xa1\x01k" + nested_lists(3000)
        body = encode_message("x")
        p.send(transfer_frame(0, 0, b"t0", app + body))
        d = p.expect(DISPOSITION)
        state = d.field(4)
        assert state is not None and state.code == REJECTED, "outcome %r" % state
        assert state.field(0).field(0) == "amqp:decode-error", "error %r" % state.field(0)
        # the same link goes on: a good message is accepted
        p.send(transfer_frame(0, 1, b"t1", encode_message("fine")))
        d = p.expect(DISPOSITION)
        assert d.field(4).code == ACCEPTED
    healthy.check()
    # nothing of the rejected message was stored: q1 holds exactly the good one
    c = connect(broker)
    try:
        r = c.create_receiver("q1", credit=5)
        m = r.receive(timeout=10)
        r.accept()
        assert m.body == "fine"
        with pytest.raises(Exception):
            r.receive(timeout=1)
    finally:
        c.close()


def test_a_management_request_with_a_crafted_body_is_rejected(broker, healthy):
    with RawPeer(broker.amqp_addr) as p:
        p.open()
        p.begin()
        p.send(attach_sender_frame("mgmt-snd", 0, "q1/$management"))
        p.expect(ATTACH)
        p.expect(FLOW)
        props = encode(perf(0x73, "req-1", None, None, None, "reply-here"))
        app = encode(Described(ULong(0x74), {"operation": "com.microsoft:peek-message"}))
        value = b"\x00\x53\x77" + nested_lists(4000)
        p.send(transfer_frame(0, 0, b"m0", props + app + value))
        d = p.expect(DISPOSITION)
        state = d.field(4)
        assert state is not None and state.code == REJECTED, "expected rejected, got %r" % (d,)
        err = state.field(0)
        assert err is not None and err.field(0) == "amqp:decode-error", state
    healthy.check()

