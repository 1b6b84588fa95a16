#!/usr/bin/env python3
"""Writes the seed corpus of the ferrobus-codec fuzz targets into corpus/<target>/.

Every seed is built here from a small AMQP 1.0 encoder (part 1.6 of the specification), so
the corpus can be read and regenerated rather than hand-edited: `python3 gen_corpus.py`
rewrites corpus/ (it removes the files it wrote before, named *.bin, and keeps any other file,
such as inputs added by `scripts/fuzz --merge`).

crates/codec/tests/corpus.rs checks that every seed is accepted, except `regress-*`, the
inputs of past crashes, which must be rejected with an error, and `edge-*`, legal but unusual
encodings the codec may take or refuse, which only have to pass the target's checks.

Input layout per target (see src/lib.rs):
  frame     4-byte prefix [kind, mfs_hi, mfs_lo, chunk] then the bytes of the connection:
            kind bit 0 = SASL frames, max-frame-size = max(512, 16 * u16(mfs)), chunk = how
            many bytes arrive per read (0: all at once)
  sasl      one SASL frame body (a described list)
  sections  a transfer's message payload (its sections)
  value     one encoded AMQP value
"""

import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"

# ---------------------------------------------------------------------------------------------
# A minimal AMQP encoder. Every function returns the bytes of one encoded value.


def null():
    return b"\x40"


def boolean(v):
    return b"\x41" if v else b"\x42"


def ubyte(v):
    return b"\x50" + struct.pack(">B", v)


def ushort(v):
    return b"\x60" + struct.pack(">H", v)


def uint(v):
    if v == 0:
        return b"\x43"
    if v < 256:
        return b"\x52" + struct.pack(">B", v)
    return b"\x70" + struct.pack(">I", v)


def ulong(v):
    if v == 0:
        return b"\x44"
    if v < 256:
        return b"\x53" + struct.pack(">B", v)
    return b"\x80" + struct.pack(">Q", v)


def byte(v):
    return b"\x51" + struct.pack(">b", v)


def short(v):
    return b"\x61" + struct.pack(">h", v)


def int_(v):
    if -128 <= v < 128:
        return b"\x54" + struct.pack(">b", v)
    return b"\x71" + struct.pack(">i", v)


def long(v):
    if -128 <= v < 128:
        return b"\x55" + struct.pack(">b", v)
    return b"\x81" + struct.pack(">q", v)


def float_(v):
    return b"\x72" + struct.pack(">f", v)


def double(v):
    return b"\x82" + struct.pack(">d", v)


def char(c):
    return b"\x73" + struct.pack(">I", ord(c))


def timestamp(ms):
    return b"\x83" + struct.pack(">q", ms)


def uuid(b16):
    assert len(b16) == 16
    return b"\x98" + b16


def decimal32(raw):
    return b"\x74" + raw


def decimal64(raw):
    return b"\x84" + raw


def decimal128(raw):
    return b"\x94" + raw


def _variable(code8, code32, data, wide=False):
    if len(data) < 256 and not wide:
        return bytes([code8, len(data)]) + data
    return bytes([code32]) + struct.pack(">I", len(data)) + data


def binary(data, wide=False):
    return _variable(0xA0, 0xB0, data, wide)


def string(s, wide=False):
    return _variable(0xA1, 0xB1, s.encode(), wide)


def symbol(s, wide=False):
    return _variable(0xA3, 0xB3, s.encode(), wide)


def _compound(code8, code32, count, body, wide=False):
    # the size counts the count field and the elements
    if len(body) + 1 < 256 and count < 256 and not wide:
        return bytes([code8, len(body) + 1, count]) + body
    return bytes([code32]) + struct.pack(">II", len(body) + 4, count) + body


def list_(items, wide=False):
    if not items and not wide:
        return b"\x45"  # list0
    return _compound(0xC0, 0xD0, len(items), b"".join(items), wide)


def map_(pairs, wide=False):
    body = b"".join(k + v for k, v in pairs)
    return _compound(0xC1, 0xD1, 2 * len(pairs), body, wide)


def array(constructor, elements, wide=False):
    """An array: one constructor (a format code) then the elements without theirs."""
    body = constructor + b"".join(elements)
    return _compound(0xE0, 0xF0, len(elements), body, wide)


def symbol_array(names):
    """An array of sym8: each element is its size byte and its bytes."""
    return array(b"\xa3", [bytes([len(n)]) + n.encode() for n in names])


def described(code, value):
    return b"\x00" + ulong(code) + value


def described_sym(name, value):
    return b"\x00" + symbol(name) + value


def fields(pairs):
    """A `fields` map: symbol keys."""
    return map_([(symbol(k), v) for k, v in pairs])


# ---------------------------------------------------------------------------------------------
# Performatives, SASL frames and message sections (codes of part 2.7, 5.3 and 3.2).

OPEN, BEGIN, ATTACH, FLOW, TRANSFER, DISPOSITION, DETACH, END, CLOSE = range(0x10, 0x19)
SASL_MECHANISMS, SASL_INIT, SASL_CHALLENGE, SASL_RESPONSE, SASL_OUTCOME = range(0x40, 0x45)
HEADER, DELIVERY_ANN, MESSAGE_ANN, PROPERTIES, APP_PROPS, DATA, SEQUENCE, VALUE, FOOTER = range(
    0x70, 0x79
)
ERROR, ACCEPTED, REJECTED, RELEASED, MODIFIED = 0x1D, 0x24, 0x25, 0x26, 0x27
SOURCE, TARGET = 0x28, 0x29


def error(condition, description):
    return described(ERROR, list_([symbol(condition), string(description), map_([])]))


def open_(container="ferrobus-fuzz", properties=None):
    return described(
        OPEN,
        list_(
            [
                string(container),
                string("localhost"),
                uint(262144),  # max-frame-size
                ushort(255),  # channel-max
                uint(60000),  # idle-time-out
                null(),  # outgoing-locales
                null(),  # incoming-locales
                symbol_array(["ANONYMOUS-RELAY"]),  # offered-capabilities
                null(),  # desired-capabilities
                properties if properties is not None else fields([("product", string("fuzz"))]),
            ]
        ),
    )


def begin():
    return described(
        BEGIN, list_([null(), uint(0), uint(2048), uint(2048), uint(1023)])
    )


def attach(role_receiver=False):
    source = described(SOURCE, list_([string("queue-a"), uint(0), symbol("session-end")]))
    target = described(TARGET, list_([string("queue-a")]))
    return described(
        ATTACH,
        list_(
            [
                string("link-1"),
                uint(0),  # handle
                boolean(role_receiver),
                ubyte(0),  # snd-settle-mode unsettled
                ubyte(0),  # rcv-settle-mode first
                source,
                target,
                null(),  # unsettled
                boolean(False),  # incomplete-unsettled
                uint(0) if role_receiver else null(),  # initial-delivery-count
                ulong(1 << 20),  # max-message-size
                null(),
                null(),
                fields([("com.microsoft:timeout", uint(30000))]),
            ]
        ),
    )


def flow():
    return described(
        FLOW,
        list_([uint(1), uint(2048), uint(0), uint(2048), uint(0), uint(0), uint(100), uint(0),
               boolean(False), boolean(False)]),
    )


def transfer(delivery_id=0, more=False, state=None):
    items = [uint(0), uint(delivery_id), binary(struct.pack(">Q", delivery_id)), uint(0),
             boolean(False), boolean(more)]
    if state is not None:
        items += [null(), state]
    return described(TRANSFER, list_(items))


def disposition():
    return described(
        DISPOSITION,
        list_([boolean(True), uint(0), uint(9), boolean(True), described(ACCEPTED, list_([]))]),
    )


def detach():
    return described(
        DETACH, list_([uint(0), boolean(True), error("amqp:not-found", "no such queue")])
    )


def end():
    return described(END, list_([]))


def close():
    return described(CLOSE, list_([error("amqp:connection:forced", "shutting down")]))


def sasl_mechanisms():
    return described(
        SASL_MECHANISMS, list_([symbol_array(["PLAIN", "ANONYMOUS"])])
    )


def sasl_init(mechanism="PLAIN", response=b"\x00user\x00pass"):
    return described(SASL_INIT, list_([symbol(mechanism), binary(response), string("localhost")]))


def sasl_challenge():
    return described(SASL_CHALLENGE, list_([binary(b"challenge")]))


def sasl_response():
    return described(SASL_RESPONSE, list_([binary(b"response")]))


def sasl_outcome(code=0):
    return described(SASL_OUTCOME, list_([ubyte(code), binary(b"welcome")]))


def header(durable=True, priority=4, ttl=60000, delivery_count=0):
    return described(
        HEADER,
        list_([boolean(durable), ubyte(priority), uint(ttl), boolean(False), uint(delivery_count)]),
    )


def message_annotations():
    return described(
        MESSAGE_ANN,
        map_(
            [
                (symbol("x-opt-sequence-number"), long(42)),
                (symbol("x-opt-enqueued-time"), timestamp(1_700_000_000_000)),
                (symbol("x-opt-partition-key"), string("p-1")),
                (symbol("x-opt-scheduled-enqueue-time"), timestamp(1_700_000_060_000)),
                (symbol("x-opt-locked-until"), long(-1)),
            ]
        ),
    )


def delivery_annotations():
    return described(DELIVERY_ANN, map_([(symbol("x-opt-lock-token"), uuid(bytes(range(16))))]))


def properties():
    return described(
        PROPERTIES,
        list_(
            [
                string("msg-1"),  # message-id
                binary(b"user"),  # user-id
                string("queue-a"),  # to
                string("subject"),
                string("reply-queue"),
                uuid(bytes(range(16, 32))),  # correlation-id
                symbol("application/json"),  # content-type
                null(),  # content-encoding
                timestamp(1_700_000_100_000),  # absolute-expiry-time
                timestamp(1_700_000_000_000),  # creation-time
                string("group"),
                uint(1),
                string("reply-group"),
            ]
        ),
    )


def application_properties():
    return described(
        APP_PROPS,
        map_(
            [
                (string("kind"), string("order")),
                (string("count"), int_(7)),
                (string("price"), double(9.5)),
                (string("flag"), boolean(True)),
                (string("DeadLetterReason"), string("old")),
            ]
        ),
    )


def data(payload):
    return described(DATA, binary(payload))


def amqp_value(v):
    return described(VALUE, v)


def amqp_sequence(items):
    return described(SEQUENCE, list_(items))


def footer():
    return described(FOOTER, map_([(symbol("x-opt-checksum"), uint(1234))]))


# ---------------------------------------------------------------------------------------------
# Frames.


def frame(body, channel=0, ftype=0, doff=2, extended=b""):
    size = 8 + len(extended) + len(body)
    return struct.pack(">IBBH", size, doff, ftype, channel) + extended + body


def amqp_frame(perf, payload=b"", channel=0):
    return frame(perf + payload, channel=channel)


def sasl_frame(body):
    return frame(body, ftype=1)


def frame_input(frames, sasl=False, max_frame_size=262144, chunk=0):
    """The frame target's input: the prefix then the frames, back to back."""
    mfs = min(0xFFFF, -(-max_frame_size // 16))
    return bytes([1 if sasl else 0]) + struct.pack(">H", mfs) + bytes([chunk]) + b"".join(frames)


# ---------------------------------------------------------------------------------------------
# The three crash shapes of the first fuzzing pass.

NESTING = 4000


def deep_lists(depth=NESTING):
    """`depth` lists, each holding the next (list32, so any depth fits)."""
    v = b"\x45"
    for _ in range(depth):
        v = list_([v], wide=True)
    return v


def sym32_claiming_4gib():
    """A sym32 whose size field says 4 GiB, with no bytes after it."""
    return b"\xb3\xff\xff\xff\xff"


def sasl_init_4gib_body():
    """A SASL init body (11 bytes) whose mechanism is a sym32 declaring 4 GiB: the list8's own
    size is consistent, so only a scanner that checks every element catches it."""
    body = b"\x00\x53\x41" + bytes([0xC0, 6, 1]) + sym32_claiming_4gib()
    assert len(body) == 11
    return body


def nulls_array32(count=65536):
    """An array32 of `count` nulls in 10 bytes: its size field claims count + 4 bytes (a size
    at least the count is what serde_amqp's own check asks for), none of which follow."""
    v = b"\xf0" + struct.pack(">II", count + 4, count) + b"\x40"
    assert len(v) == 10
    return v


def nulls_array8_lists(arrays=257):
    """A list of `arrays` array8s of 255 nulls, each 4 bytes claiming 255 (65,535 nulls in
    ~1 KiB). The list's own size is true, so a scanner that stops at the list misses them."""
    one = bytes([0xE0, 255, 255, 0x40])
    return list_([one] * arrays, wide=True)


def open_with(value):
    return open_(properties=fields([("x", value)]))


# ---------------------------------------------------------------------------------------------


def seeds():
    msg_full = (
        header()
        + delivery_annotations()
        + message_annotations()
        + properties()
        + application_properties()
        + data(b'{"id": 1, "items": ["a", "b"]}')
        + footer()
    )
    msg_batch = message_annotations() + b"".join(data(header() + data(b"inner-%d" % i)) for i in range(3))
    msg_value = header(durable=False) + properties() + amqp_value(
        map_([(string("k"), list_([int_(1), string("two"), double(3.0)]))])
    )
    msg_sequence = application_properties() + amqp_sequence([string("a"), long(2)]) + amqp_sequence([null()])
    msg_minimal = data(b"hello")
    msg_big_data = header() + data(bytes(range(256)) * 8)

    out = {
        "frame": {
            "open": frame_input([amqp_frame(open_())]),
            "connection-lifecycle": frame_input(
                [
                    amqp_frame(open_()),
                    amqp_frame(begin()),
                    amqp_frame(attach(), channel=0),
                    amqp_frame(flow()),
                    amqp_frame(transfer(0), msg_full),
                    amqp_frame(disposition()),
                    frame(b""),  # heartbeat
                    amqp_frame(detach()),
                    amqp_frame(end()),
                    amqp_frame(close()),
                ]
            ),
            "receiver-attach": frame_input([amqp_frame(attach(role_receiver=True), channel=3)]),
            "open-nested-values": frame_input(
                [amqp_frame(open_with(map_([(ulong(1), binary(b"x")),
                                            (string("k"), list_([timestamp(0), uuid(bytes(16))])),
                                            (symbol("a"), array(b"\x71", [struct.pack(">i", 5)]))])))]
            ),
            "transfer-multi-frame": frame_input(
                [amqp_frame(transfer(5, more=True), msg_big_data[:700]),
                 amqp_frame(transfer(5), msg_big_data[700:])],
                chunk=13,
            ),
            "transfer-with-state": frame_input(
                [amqp_frame(transfer(6, state=described(ACCEPTED, list_([]))), msg_minimal)]
            ),
            "symbolic-descriptor": frame_input(
                [amqp_frame(described_sym("amqp:begin:list", list_([null(), uint(0), uint(10), uint(10)])))]
            ),
            "extended-header": frame_input([frame(close(), doff=3, extended=b"\x00\x00\x00\x00")]),
            "small-max-frame": frame_input([amqp_frame(open_())], max_frame_size=512, chunk=1),
            "sasl-handshake": frame_input(
                [sasl_frame(sasl_mechanisms()), sasl_frame(sasl_init()), sasl_frame(sasl_outcome())],
                sasl=True,
            ),
            "sasl-challenge": frame_input(
                [sasl_frame(sasl_challenge()), sasl_frame(sasl_response())], sasl=True, chunk=5
            ),
            "regress-deep-nesting-open": frame_input(
                [amqp_frame(open_with(deep_lists()))], max_frame_size=1 << 20
            ),
            "regress-sasl-init-sym32-4gib": frame_input(
                [sasl_frame(sasl_init_4gib_body())], sasl=True
            ),
            "regress-array32-65536-nulls-open": frame_input([amqp_frame(open_with(nulls_array32()))]),
            "regress-array8-65535-nulls-open": frame_input(
                [amqp_frame(open_with(nulls_array8_lists()))]
            ),
        },
        "sasl": {
            "mechanisms": sasl_mechanisms(),
            "init-plain": sasl_init(),
            "init-anonymous": sasl_init("ANONYMOUS", b"anonymous"),
            "challenge": sasl_challenge(),
            "response": sasl_response(),
            "outcome": sasl_outcome(),
            "outcome-auth-failed": sasl_outcome(1),
            "init-symbolic": described_sym("amqp:sasl-init:list", list_([symbol("EXTERNAL")])),
            "regress-init-sym32-4gib": sasl_init_4gib_body(),
            "regress-init-deep-nesting": described(SASL_INIT, list_([symbol("PLAIN"), deep_lists()], wide=True)),
        },
        "sections": {
            "full": msg_full,
            "batch": msg_batch,
            "amqp-value": msg_value,
            "amqp-sequence": msg_sequence,
            "data-only": msg_minimal,
            "big-data": msg_big_data,
            "header-only": header(durable=False, priority=9, ttl=0, delivery_count=3),
            "symbolic-sections": described_sym("amqp:header:list", list_([boolean(True)]))
            + described_sym("amqp:data:binary", binary(b"x")),
            "regress-header-bin32-4gib": described(HEADER, list_([b"\xb0\xff\xff\xff\xff"])) + data(b"x"),
            "regress-header-deep-nesting": described(HEADER, list_([deep_lists()], wide=True)),
        },
        "value": {
            "open": open_(),
            "attach": attach(),
            "transfer": transfer(1, state=described(ACCEPTED, list_([]))),
            "close": close(),
            "sasl-mechanisms": sasl_mechanisms(),
            "header": header(),
            "message-annotations": message_annotations(),
            "properties": properties(),
            "application-properties": application_properties(),
            "scalars": list_(
                [null(), boolean(True), boolean(False), b"\x56\x01", ubyte(200), ushort(65535),
                 uint(0), uint(7), uint(1 << 20), ulong(0), ulong(9), ulong(1 << 40),
                 byte(-3), short(-300), int_(-5), int_(1 << 20), long(-7), long(1 << 40),
                 float_(1.5), double(-2.25), char("é"), timestamp(0), uuid(bytes(16)),
                 decimal32(bytes(4)), decimal64(bytes(8)), decimal128(bytes(16)),
                 binary(b"bytes"), string("héllo"), symbol("sym"),
                 binary(b"w", wide=True), string("wide", wide=True), symbol("wide", wide=True)],
                wide=True,
            ),
            "arrays": list_(
                [array(b"\x71", [struct.pack(">i", i) for i in range(4)]),
                 array(b"\xa1", [bytes([1]) + b"a", bytes([2]) + b"bc"]),
                 array(b"\xe0", [bytes([3, 1, 0x52, 9])]),  # array of arrays of smalluint
                 array(b"\x40", [b""] * 3, wide=True)]
            ),
            "maps": map_(
                [(symbol("a"), map_([(string("b"), list_([]))])),
                 (ulong(1), map_([], wide=True)),
                 (string("c"), described_sym("com.example:thing", list_([uint(1)])))]
            ),
            "described-nested": described(1, described(2, described(3, null()))),
            # legal AMQP that the codec may refuse: these only have to pass the checks
            "edge-array-described-constructor": array(b"\x00\x53\x24\x45", [b"", b""]),
            "edge-empty-array-no-constructor": b"\xe0\x01\x00",  # serde_amqp's and amqpnetlite's
            "regress-deep-nesting": deep_lists(),
            "regress-sasl-init-sym32-4gib": sasl_init_4gib_body(),
            "regress-sym32-4gib": list_([sym32_claiming_4gib()]),
            "regress-str32-4gib": list_([b"\xb1\xff\xff\xff\xff"]),
            "regress-bin32-4gib": list_([b"\xb0\xff\xff\xff\xff"]),
            "regress-array32-65536-nulls": list_([nulls_array32()]),
            "regress-array8-65535-nulls": nulls_array8_lists(),
        },
    }
    return out


def main():
    for target, files in seeds().items():
        d = CORPUS / target
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.bin"):
            old.unlink()
        for name, content in files.items():
            (d / f"{name}.bin").write_bytes(content)
        print(f"{target}: {len(files)} seeds", file=sys.stderr)


if __name__ == "__main__":
    main()
