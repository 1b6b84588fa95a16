"""A tiny hand-written AMQP 1.0 encoder/decoder and a raw socket peer.

Only what the raw-peer tests need: primitive types, described types, lists,
maps, arrays, frames and performatives. It is deliberately independent of
python-qpid-proton so that it can send bytes proton would never produce.
"""

import socket
import struct
import time

AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
SASL_HEADER = b"AMQP\x03\x01\x00\x00"
TLS_HEADER = b"AMQP\x02\x01\x00\x00"

FRAME_AMQP = 0
FRAME_SASL = 1

# performatives / described types
OPEN, BEGIN, ATTACH, FLOW, TRANSFER, DISPOSITION, DETACH, END, CLOSE = range(0x10, 0x19)
ERROR = 0x1D
RECEIVED, ACCEPTED, REJECTED, RELEASED, MODIFIED = 0x23, 0x24, 0x25, 0x26, 0x27
SOURCE, TARGET = 0x28, 0x29
SASL_MECHANISMS, SASL_INIT, SASL_CHALLENGE, SASL_RESPONSE, SASL_OUTCOME = range(0x40, 0x45)
HEADER, DELIVERY_ANNOTATIONS, MESSAGE_ANNOTATIONS, PROPERTIES, APPLICATION_PROPERTIES = range(0x70, 0x75)
DATA, AMQP_SEQUENCE, AMQP_VALUE, FOOTER = range(0x75, 0x79)

NAMES = {
    OPEN: "open", BEGIN: "begin", ATTACH: "attach", FLOW: "flow", TRANSFER: "transfer",
    DISPOSITION: "disposition", DETACH: "detach", END: "end", CLOSE: "close", ERROR: "error",
    RECEIVED: "received", ACCEPTED: "accepted", REJECTED: "rejected", RELEASED: "released",
    MODIFIED: "modified", SOURCE: "source", TARGET: "target",
    SASL_MECHANISMS: "sasl-mechanisms", SASL_INIT: "sasl-init", SASL_CHALLENGE: "sasl-challenge",
    SASL_RESPONSE: "sasl-response", SASL_OUTCOME: "sasl-outcome",
    HEADER: "header", DELIVERY_ANNOTATIONS: "delivery-annotations",
    MESSAGE_ANNOTATIONS: "message-annotations", PROPERTIES: "properties",
    APPLICATION_PROPERTIES: "application-properties", DATA: "data",
    AMQP_SEQUENCE: "amqp-sequence", AMQP_VALUE: "amqp-value", FOOTER: "footer",
}
# symbolic descriptors ("amqp:open:list") -> numeric code
_SYMBOLIC = {("amqp:%s:list" % n): c for c, n in NAMES.items()}
_SYMBOLIC.update({"amqp:data:binary": DATA, "amqp:amqp-sequence:list": AMQP_SEQUENCE,
                  "amqp:amqp-value:*": AMQP_VALUE, "amqp:delivery-annotations:map": DELIVERY_ANNOTATIONS,
                  "amqp:message-annotations:map": MESSAGE_ANNOTATIONS,
                  "amqp:application-properties:map": APPLICATION_PROPERTIES, "amqp:footer:map": FOOTER})


# --------------------------------------------------------------------------
# typed wrappers
# --------------------------------------------------------------------------
class UByte(int):
    pass


class UShort(int):
    pass


class UInt(int):
    pass


class ULong(int):
    pass


class Int(int):
    pass


class Long(int):
    pass


class Symbol(str):
    def __repr__(self):
        return "Symbol(%s)" % str.__repr__(self)


class Described:
    def __init__(self, descriptor, value):
        self.descriptor = descriptor
        self.value = value

    @property
    def code(self):
        d = self.descriptor
        if isinstance(d, str):
            return _SYMBOLIC.get(d)
        return int(d)

    @property
    def name(self):
        return NAMES.get(self.code, repr(self.descriptor))

    def field(self, i, default=None):
        """i-th field of a described list (None when absent)."""
        v = self.value
        if isinstance(v, list) and i < len(v):
            return v[i]
        return default

    def __eq__(self, other):
        return isinstance(other, Described) and self.code == other.code and self.value == other.value

    def __repr__(self):
        return "%s%r" % (self.name, self.value)


class Array(list):
    """An AMQP array; element_ctor is the (single) constructor byte to encode with."""

    def __init__(self, items, element_ctor=0xA3):
        super().__init__(items)
        self.element_ctor = element_ctor


def sym(s):
    return Symbol(s)


def perf(code, *fields):
    """A performative / described list with trailing nulls trimmed."""
    fields = list(fields)
    while fields and fields[-1] is None:
        fields.pop()
    return Described(ULong(code), fields)


# --------------------------------------------------------------------------
# encoder
# --------------------------------------------------------------------------
def _enc_ulong_descriptor(v):
    v = int(v)
    if v < 256:
        return b"\x53" + bytes([v])
    return b"\x80" + struct.pack(">Q", v)


def _enc_var(small_code, big_code, data):
    if len(data) < 256:
        return bytes([small_code, len(data)]) + data
    return bytes([big_code]) + struct.pack(">I", len(data)) + data


def _enc_compound(small_code, big_code, items):
    body = b"".join(encode(x) for x in items)
    count = len(items)
    if len(body) + 1 < 256 and count < 256:
        return bytes([small_code, len(body) + 1, count]) + body
    return bytes([big_code]) + struct.pack(">II", len(body) + 4, count) + body


def _enc_array_element(ctor, v):
    """Encode one array element *without* its constructor."""
    if ctor == 0xA3:
        b = str(v).encode("utf-8")
        return bytes([len(b)]) + b
    if ctor == 0xB3 or ctor == 0xB1:
        b = str(v).encode("utf-8")
        return struct.pack(">I", len(b)) + b
    if ctor == 0x70:
        return struct.pack(">I", int(v))
    if ctor == 0x80:
        return struct.pack(">Q", int(v))
    raise ValueError("unsupported array element constructor 0x%02x" % ctor)


def encode(v):
    if v is None:
        return b"\x40"
    if isinstance(v, Described):
        d = v.descriptor
        de = encode(d) if isinstance(d, str) else _enc_ulong_descriptor(d)
        return b"\x00" + de + encode(v.value)
    if isinstance(v, bool):
        return b"\x41" if v else b"\x42"
    if isinstance(v, UByte):
        return b"\x50" + struct.pack(">B", v)
    if isinstance(v, UShort):
        return b"\x60" + struct.pack(">H", v)
    if isinstance(v, UInt):
        if v == 0:
            return b"\x43"
        if v < 256:
            return b"\x52" + bytes([v])
        return b"\x70" + struct.pack(">I", v)
    if isinstance(v, ULong):
        if v == 0:
            return b"\x44"
        if v < 256:
            return b"\x53" + bytes([v])
        return b"\x80" + struct.pack(">Q", v)
    if isinstance(v, Long):
        return b"\x81" + struct.pack(">q", v)
    if isinstance(v, (Int, int)):
        return b"\x71" + struct.pack(">i", v)
    if isinstance(v, Symbol):
        return _enc_var(0xA3, 0xB3, v.encode("ascii"))
    if isinstance(v, str):
        return _enc_var(0xA1, 0xB1, v.encode("utf-8"))
    if isinstance(v, (bytes, bytearray)):
        return _enc_var(0xA0, 0xB0, bytes(v))
    if isinstance(v, Array):
        elems = b"".join(_enc_array_element(v.element_ctor, x) for x in v)
        body = bytes([v.element_ctor]) + elems
        if len(body) + 1 < 256 and len(v) < 256:
            return bytes([0xE0, len(body) + 1, len(v)]) + body
        return b"\xf0" + struct.pack(">II", len(body) + 4, len(v)) + body
    if isinstance(v, (list, tuple)):
        if len(v) == 0:
            return b"\x45"
        return _enc_compound(0xC0, 0xD0, list(v))
    if isinstance(v, dict):
        items = []
        for k, x in v.items():
            items += [k, x]
        return _enc_compound(0xC1, 0xD1, items)
    raise TypeError("cannot encode %r" % (v,))


# --------------------------------------------------------------------------
# decoder
# --------------------------------------------------------------------------
class DecodeError(Exception):
    pass


def _need(buf, pos, n):
    if pos + n > len(buf):
        raise DecodeError("truncated at %d (need %d, have %d)" % (pos, n, len(buf) - pos))


def _decode_fixed(code, raw):
    if code == 0x50:
        return UByte(raw[0])
    if code == 0x51:
        return struct.unpack(">b", raw)[0]
    if code in (0x52, 0x53):
        return (UInt if code == 0x52 else ULong)(raw[0])
    if code == 0x54:
        return struct.unpack(">b", raw)[0]
    if code == 0x55:
        return struct.unpack(">b", raw)[0]
    if code == 0x56:
        return raw[0] != 0
    if code == 0x60:
        return UShort(struct.unpack(">H", raw)[0])
    if code == 0x61:
        return struct.unpack(">h", raw)[0]
    if code == 0x70:
        return UInt(struct.unpack(">I", raw)[0])
    if code == 0x71:
        return struct.unpack(">i", raw)[0]
    if code == 0x72:
        return struct.unpack(">f", raw)[0]
    if code == 0x73:
        return struct.unpack(">I", raw)[0]  # char (UTF-32)
    if code == 0x80:
        return ULong(struct.unpack(">Q", raw)[0])
    if code in (0x81, 0x83):
        return struct.unpack(">q", raw)[0]
    if code == 0x82:
        return struct.unpack(">d", raw)[0]
    return bytes(raw)  # decimals, uuid: opaque


_WIDTH = {0x5: 1, 0x6: 2, 0x7: 4, 0x8: 8, 0x9: 16}


def _compound_header(buf, pos, small):
    """The size and count fields of a list, map or array (one byte each when small, else four).
    Returns (count, end, pos): where the compound ends by its size, and the position after count."""
    if small:
        _need(buf, pos, 2)
        size, count = buf[pos], buf[pos + 1]
        start, pos = pos + 1, pos + 2
    else:
        _need(buf, pos, 8)
        size, count = struct.unpack(">II", buf[pos:pos + 8])
        start, pos = pos + 4, pos + 8
    _need(buf, start, size)
    return count, start + size, pos


def _decode_ctor_value(buf, pos, code):
    """Decode a value whose constructor byte `code` has been consumed."""
    hi = code >> 4
    if code == 0x40:
        return None, pos
    if code == 0x41:
        return True, pos
    if code == 0x42:
        return False, pos
    if code == 0x43:
        return UInt(0), pos
    if code == 0x44:
        return ULong(0), pos
    if code == 0x45:
        return [], pos
    if hi == 0x4:
        raise DecodeError("invalid constructor 0x%02x" % code)
    if hi in _WIDTH:
        w = _WIDTH[hi]
        _need(buf, pos, w)
        if code not in (0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x60, 0x61, 0x70, 0x71, 0x72, 0x73,
                        0x74, 0x80, 0x81, 0x82, 0x83, 0x84, 0x94, 0x98):
            raise DecodeError("invalid constructor 0x%02x" % code)
        return _decode_fixed(code, buf[pos:pos + w]), pos + w
    if hi in (0xA, 0xB):
        if hi == 0xA:
            _need(buf, pos, 1)
            n = buf[pos]
            pos += 1
        else:
            _need(buf, pos, 4)
            n = struct.unpack(">I", buf[pos:pos + 4])[0]
            pos += 4
        _need(buf, pos, n)
        raw = bytes(buf[pos:pos + n])
        pos += n
        if code in (0xA0, 0xB0):
            return raw, pos
        if code in (0xA1, 0xB1):
            return raw.decode("utf-8"), pos
        if code in (0xA3, 0xB3):
            return Symbol(raw.decode("ascii")), pos
        raise DecodeError("invalid constructor 0x%02x" % code)
    if hi in (0xC, 0xD):
        count, end, pos = _compound_header(buf, pos, small=hi == 0xC)
        items = []
        for _ in range(count):
            v, pos = decode_value(buf, pos)
            items.append(v)
        if pos != end:
            raise DecodeError("compound size mismatch (end %d, consumed to %d)" % (end, pos))
        if code in (0xC0, 0xD0):
            return items, pos
        if code in (0xC1, 0xD1):
            if count % 2:
                raise DecodeError("odd map count")
            d = {}
            for i in range(0, count, 2):
                k = items[i]
                d[k if not isinstance(k, list) else tuple(k)] = items[i + 1]
            return d, pos
        raise DecodeError("invalid constructor 0x%02x" % code)
    if hi in (0xE, 0xF):
        count, end, pos = _compound_header(buf, pos, small=hi == 0xE)
        _need(buf, pos, 1)
        ector = buf[pos]
        pos += 1
        descriptor = None
        if ector == 0x00:
            descriptor, pos = decode_value(buf, pos)
            ector = buf[pos]
            pos += 1
        items = []
        for _ in range(count):
            v, pos = _decode_ctor_value(buf, pos, ector)
            items.append(Described(descriptor, v) if descriptor is not None else v)
        if pos != end:
            raise DecodeError("array size mismatch")
        return Array(items, ector), pos
    raise DecodeError("invalid constructor 0x%02x" % code)


def decode_value(buf, pos=0):
    """Decode one value at buf[pos:]; returns (value, new_pos)."""
    _need(buf, pos, 1)
    code = buf[pos]
    pos += 1
    if code == 0x00:
        descriptor, pos = decode_value(buf, pos)
        value, pos = decode_value(buf, pos)
        return Described(descriptor, value), pos
    return _decode_ctor_value(buf, pos, code)


def decode_all(buf):
    out, pos = [], 0
    while pos < len(buf):
        v, pos = decode_value(buf, pos)
        out.append(v)
    return out


# --------------------------------------------------------------------------
# frames
# --------------------------------------------------------------------------
def frame(body=None, channel=0, ftype=FRAME_AMQP, payload=b""):
    """One frame; body is a performative (Described) or None for an empty frame."""
    b = (encode(body) if body is not None else b"") + payload
    return struct.pack(">IBBH", 8 + len(b), 2, ftype, channel) + b


def raw_frame(body_bytes, channel=0, ftype=FRAME_AMQP, size=None, doff=2):
    size = 8 + len(body_bytes) if size is None else size
    return struct.pack(">IBBH", size, doff, ftype, channel) + body_bytes


class Frame:
    def __init__(self, ftype, channel, body):
        self.ftype = ftype
        self.channel = channel
        self.raw = body
        self.performative = None
        self.payload = b""
        if body:
            self.performative, pos = decode_value(body, 0)
            self.payload = bytes(body[pos:])

    @property
    def empty(self):
        return self.performative is None

    @property
    def code(self):
        return None if self.performative is None else self.performative.code

    @property
    def name(self):
        return "empty" if self.performative is None else self.performative.name

    def field(self, i, default=None):
        return self.performative.field(i, default) if self.performative is not None else default

    def error(self):
        """(condition, description) of a close/end/detach error, or None."""
        idx = {CLOSE: 0, END: 0, DETACH: 2}.get(self.code)
        if idx is None:
            return None
        e = self.field(idx)
        if e is None:
            return None
        return (e.field(0), e.field(1))

    def __repr__(self):
        if self.empty:
            return "<empty frame ch=%d>" % self.channel
        r = "<%s ch=%d %r" % (self.name, self.channel, self.performative.value)
        if self.payload:
            r += " +%d payload bytes" % len(self.payload)
        return r + ">"


# --------------------------------------------------------------------------
# minimal messages
# --------------------------------------------------------------------------
def message_sections(payload):
    """Decode a transfer payload into a list of Described sections."""
    return decode_all(payload)


def amqp_value_body(payload):
    for s in message_sections(payload):
        if isinstance(s, Described) and s.code == AMQP_VALUE:
            return s.value
        if isinstance(s, Described) and s.code == DATA:
            return s.value
    return None


def encode_message(body, durable=False):
    out = b""
    if durable:
        out += encode(perf(HEADER, True))
    return out + encode(Described(ULong(AMQP_VALUE), body))


# --------------------------------------------------------------------------
# socket peer
# --------------------------------------------------------------------------
class PeerClosed(Exception):
    pass


class RawPeer:
    def __init__(self, addr, timeout=10.0):
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False
        self.reset = False
        self.log = []  # everything received, for failure messages

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        if self.eof:
            raise PeerClosed("peer closed the connection")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("timed out waiting for data")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            self.eof = self.reset = True
            raise PeerClosed("connection reset by peer")
        if not chunk:
            self.eof = True
            raise PeerClosed("peer closed the connection")
        self.buf += chunk

    def recv_exact(self, n, timeout=10.0):
        deadline = time.monotonic() + timeout
        while len(self.buf) < n:
            self._fill(deadline)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_header(self, timeout=10.0):
        h = self.recv_exact(8, timeout)
        self.log.append(("header", h))
        return h

    def read_frame(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while len(self.buf) < 8:
            self._fill(deadline)
        size, doff, ftype, channel = struct.unpack(">IBBH", self.buf[:8])
        if size < 8 or doff < 2 or doff * 4 > size:
            raise DecodeError("bad frame header from broker: size=%d doff=%d" % (size, doff))
        while len(self.buf) < size:
            self._fill(deadline)
        body = bytes(self.buf[doff * 4:size])
        del self.buf[:size]
        f = Frame(ftype, channel, body)
        self.log.append(f)
        return f

    def next_frame(self, timeout=10.0, skip_empty=True):
        """Next frame, skipping heartbeats (empty frames)."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.read_frame(max(0.0, deadline - time.monotonic()))
            if not (skip_empty and f.empty):
                return f

    def expect(self, code, timeout=10.0):
        f = self.next_frame(timeout)
        assert f.code == code, "expected %s, got %r (log: %r)" % (NAMES[code], f, self.log)
        return f

    def read_until_closed(self, timeout=10.0):
        """Read frames until EOF; returns (frames, closed_bool)."""
        frames = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                frames.append(self.read_frame(max(0.001, deadline - time.monotonic())))
            except PeerClosed:
                return frames, True
            except (socket.timeout, TimeoutError):
                return frames, False

    def wait_eof(self, timeout=10.0):
        """True when the peer closes (EOF or RST) within timeout; drains data."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._fill(deadline)
            except PeerClosed:
                return True
            except (socket.timeout, TimeoutError):
                return False

    # --- convenience -----------------------------------------------------
    def open(self, container_id="raw-peer", idle_timeout_ms=None, max_frame_size=None, hostname="localhost",
             with_header=True, read_reply=True):
        data = (AMQP_HEADER if with_header else b"") + frame(
            perf(OPEN, container_id, hostname,
                 UInt(max_frame_size) if max_frame_size is not None else None,
                 None,
                 UInt(idle_timeout_ms) if idle_timeout_ms is not None else None))
        self.send(data)
        if read_reply:
            h = self.read_header()
            assert h == AMQP_HEADER, "broker answered header %r" % h
            return self.expect(OPEN)
        return None

    def begin(self, channel=0, read_reply=True):
        self.send(frame(perf(BEGIN, None, UInt(0), UInt(5000), UInt(5000)), channel=channel))
        if read_reply:
            return self.expect(BEGIN)
        return None


def begin_frame(channel=0, remote_channel=None, next_outgoing_id=0, incoming_window=5000, outgoing_window=5000):
    return frame(perf(BEGIN, UShort(remote_channel) if remote_channel is not None else None,
                      UInt(next_outgoing_id), UInt(incoming_window), UInt(outgoing_window)), channel=channel)


def attach_receiver_frame(name, handle, address, channel=0, snd_settle_mode=None):
    """Attach as receiver (role=true) pulling from `address`."""
    return frame(perf(ATTACH, name, UInt(handle), True,
                      UByte(snd_settle_mode) if snd_settle_mode is not None else None, UByte(0),
                      perf(SOURCE, address), perf(TARGET, None)), channel=channel)


def attach_sender_frame(name, handle, address, channel=0):
    return frame(perf(ATTACH, name, UInt(handle), False, None, None,
                      perf(SOURCE, None), perf(TARGET, address),
                      None, None, UInt(0)), channel=channel)


def flow_frame(handle, link_credit, delivery_count=0, next_incoming_id=None, incoming_window=5000,
               next_outgoing_id=0, outgoing_window=5000, drain=False, channel=0):
    return frame(perf(FLOW,
                      UInt(next_incoming_id) if next_incoming_id is not None else None,
                      UInt(incoming_window), UInt(next_outgoing_id), UInt(outgoing_window),
                      UInt(handle), UInt(delivery_count), UInt(link_credit), None, drain), channel=channel)


def transfer_frame(handle, delivery_id, tag, payload, settled=False, channel=0, more=False):
    return frame(perf(TRANSFER, UInt(handle), UInt(delivery_id), bytes(tag), UInt(0), settled, more),
                 channel=channel, payload=payload)


def disposition_frame(first, state_code, role_receiver=True, last=None, settled=True, channel=0):
    return frame(perf(DISPOSITION, role_receiver, UInt(first), UInt(last) if last is not None else None,
                      settled, perf(state_code)), channel=channel)
