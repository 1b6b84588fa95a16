"""Helpers for driving ferrobus with the official Python SDK (azure-servicebus 7.15.0).

* SdkBroker: a brokers.Broker with the queue list first, each queue a name or a dict of per-queue
  settings (max_delivery_count, lock_duration_ms, default_message_ttl_ms, ...), for a test that
  makes its own; conftest's `start_broker(queues=[...])` gives the same broker as a fixture.
* conn_str / sb_client: the emulator-style connection string and a ServiceBusClient with short
  timeouts and few retries, so a missing broker feature fails in seconds, not minutes.
* sas_token / FixedSasCredential: a SAS token signed the way section 1.6 of the spec describes,
  handed to the SDK by a credential object (used for the expired-token test).
* receive_n / receive_until / drain: receive loops with deadlines.
"""

import base64
import hashlib
import hmac
import logging
import os
import sys
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from azure.core.credentials import AccessToken  # noqa: E402
from azure.servicebus import ServiceBusClient  # noqa: E402

from brokers import KEY_NAME, KEY_VALUE, Broker  # noqa: E402

TOKEN_TYPE_SASTOKEN = b"servicebus.windows.net:sastoken"

# The SDK logs every retry and link error at INFO/WARNING; keep pytest output readable.
for _name in ("azure", "azure.servicebus", "azure.servicebus._pyamqp", "uamqp"):
    logging.getLogger(_name).setLevel(logging.ERROR)

# Per-operation bounds passed to every sender/receiver (see _common/_configuration.py).
HANDLER_KW = {
    "timeout": 20,         # settlement-outcome / send timeout (default 60 s)
    "auth_timeout": 20,    # CBS put-token answer (default 60 s)
    # no keep-alive thread: its 1 s sleep loop makes every close() wait ~0.5 s; the tests are far
    # shorter than any idle timeout
    "keep_alive": 0,
}
MGMT_TIMEOUT = 15          # `timeout=` of $management calls (peek, renew, schedule, ...)


class SdkBroker(Broker):
    """A brokers.Broker whose queue list comes first: SdkBroker(workdir, queues, amqp=None,
    auth_keys=None), each queue a name or a dict with its settings. Default storage (RocksDB);
    restart() stops it gracefully (exit 0) and starts it again on the same data dir."""

    def __init__(self, workdir, queues, amqp=None, auth_keys=None, **options):
        super().__init__(workdir, amqp=amqp, queues=queues, auth_keys=auth_keys, **options)


# --------------------------------------------------------------------------
# clients
# --------------------------------------------------------------------------
def conn_str(broker, key=KEY_VALUE, key_name=KEY_NAME):
    return ("Endpoint=sb://%s;SharedAccessKeyName=%s;SharedAccessKey=%s;UseDevelopmentEmulator=true;"
            % (broker.endpoint, key_name, key))


def sb_client(broker, key=KEY_VALUE, key_name=KEY_NAME, retry_total=1, **kw):
    """ServiceBusClient for the emulator-style connection string, few quick retries."""
    kw.setdefault("retry_backoff_factor", 0.3)
    kw.setdefault("retry_backoff_max", 2)
    # One attempt (link open, send, $management call) is bounded at 5 s; on loopback everything
    # takes well under a second, and test_sdk_python.test_handler_open_is_prompt checks that
    # opening never needs the retry.
    kw.setdefault("try_timeout", 5)
    return ServiceBusClient.from_connection_string(conn_str(broker, key, key_name),
                                                   retry_total=retry_total, **kw)


def sender(client, queue, **kw):
    for k, v in HANDLER_KW.items():
        kw.setdefault(k, v)
    return client.get_queue_sender(queue, **kw)


def receiver(client, queue, **kw):
    for k, v in HANDLER_KW.items():
        kw.setdefault(k, v)
    return client.get_queue_receiver(queue, **kw)


# --------------------------------------------------------------------------
# SAS tokens (spec section 1.6)
# --------------------------------------------------------------------------
def sas_token(resource, key_name, key, expiry_unix):
    """`SharedAccessSignature sr=..&sig=..&se=..&skn=..` signed over quote_plus(resource) + "\\n" + se
    with HMAC-SHA256 keyed by the UTF-8 key text (what the SDKs do)."""
    sr = urllib.parse.quote_plus(resource)
    se = str(int(expiry_unix))
    digest = hmac.new(key.encode("utf-8"), (sr + "\n" + se).encode("utf-8"), hashlib.sha256).digest()
    sig = urllib.parse.quote_plus(base64.b64encode(digest).decode("ascii"))
    return "SharedAccessSignature sr=%s&sig=%s&se=%s&skn=%s" % (sr, sig, se, urllib.parse.quote_plus(key_name))


class FixedSasCredential:
    """A credential whose token carries `se` = now + se_offset seconds, while telling the SDK
    (AccessToken.expires_on) that it is valid for an hour, so the SDK itself never notices an
    expired token and only the broker can refuse it."""

    token_type = TOKEN_TYPE_SASTOKEN

    def __init__(self, key_name=KEY_NAME, key=KEY_VALUE, se_offset=-300):
        self.key_name, self.key, self.se_offset = key_name, key, se_offset
        self.tokens = []

    def get_token(self, *scopes, **kwargs):
        resource = scopes[0]
        tok = sas_token(resource, self.key_name, self.key, time.time() + self.se_offset)
        self.tokens.append(tok)
        return AccessToken(tok, int(time.time()) + 3600)


def sb_client_with_credential(broker, credential, retry_total=0, **kw):
    kw.setdefault("try_timeout", 5)
    return ServiceBusClient(broker.endpoint, credential, use_tls=False, retry_total=retry_total,
                            retry_backoff_factor=0.3, **kw)


# --------------------------------------------------------------------------
# receive loops
# --------------------------------------------------------------------------
def receive_n(rcv, n, timeout=10.0, max_wait=1.0):
    """Receive until n messages arrived or timeout; returns what arrived (may be fewer)."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        wait = max(0.2, min(max_wait, deadline - time.monotonic()))
        out.extend(rcv.receive_messages(max_message_count=n - len(out), max_wait_time=wait))
    return out


def receive_one(rcv, timeout=10.0):
    got = receive_n(rcv, 1, timeout)
    assert got, "no message arrived within %.1fs" % timeout
    return got[0]


def drain(rcv, quiet=1.0, limit=1000):
    """Receive (and leave unsettled / as the mode implies) until nothing arrives for `quiet` s."""
    out = []
    while len(out) < limit:
        got = rcv.receive_messages(max_message_count=min(100, limit - len(out)), max_wait_time=quiet)
        if not got:
            break
        out.extend(got)
    return out


def body_of(msg):
    """The body of a received message as bytes (single data section) or the amqp value."""
    b = msg.body
    if isinstance(b, (bytes, bytearray)):
        return bytes(b)
    if isinstance(b, str):
        return b.encode()
    try:
        return b"".join(b)
    except TypeError:
        return b


def app_props(msg):
    """application_properties with str keys and str (decoded) string values."""
    out = {}
    for k, v in (msg.application_properties or {}).items():
        if isinstance(k, bytes):
            k = k.decode()
        if isinstance(v, bytes):
            v = v.decode()
        out[k] = v
    return out


def wait_until(pred, timeout, interval=0.2, msg="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, msg))
        time.sleep(interval)


# --------------------------------------------------------------------------
# the Python SDK's connection-open byte pattern, by hand (no SDK timing involved)
# --------------------------------------------------------------------------
AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
SASL_HEADER = b"AMQP\x03\x01\x00\x00"


def _frame(perf_code, fields, channel=0, ftype=0):
    body = b""
    for f in fields:
        if f is None:
            body += b"\x40"
        elif isinstance(f, str):
            raw = f.encode()
            body += b"\xa1" + bytes([len(raw)]) + raw
        elif isinstance(f, bytes):                      # symbol
            body += b"\xa3" + bytes([len(f)]) + f
        elif isinstance(f, int):                        # uint
            body += b"\x70" + f.to_bytes(4, "big")
        else:
            raise TypeError(f)
    lst = b"\xc0" + bytes([len(body) + 1, len(fields)]) + body
    perf = b"\x00\x53" + bytes([perf_code]) + lst
    size = 8 + len(perf)
    return size.to_bytes(4, "big") + bytes([2, ftype]) + channel.to_bytes(2, "big") + perf


def _read_exact(sock, n, deadline):
    out = b""
    while len(out) < n:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError("broker closed the socket")
        out += chunk
    return out


def _read_frame_code(sock, deadline):
    """Performative code of the next non-empty frame."""
    while True:
        size = int.from_bytes(_read_exact(sock, 4, deadline), "big")
        rest = _read_exact(sock, size - 4, deadline)
        doff = rest[0] * 4
        body = rest[doff - 4:]
        if body:
            return body[2]


def sdk_style_open(host, port, timeout=2.0):
    """SASL ANONYMOUS, then the AMQP header in its own write and Open + Begin in ONE write (what
    azure-servicebus' pyamqp does). Returns the performative codes the broker sent after its
    header within `timeout` (0x10 Open, 0x11 Begin)."""
    import socket
    s = socket.create_connection((host, port), timeout=timeout)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        deadline = time.monotonic() + 10
        s.sendall(SASL_HEADER)
        assert _read_exact(s, 8, deadline) == SASL_HEADER
        assert _read_frame_code(s, deadline) == 0x40                  # sasl-mechanisms
        s.sendall(_frame(0x41, [b"ANONYMOUS", None, host], ftype=1))   # sasl-init
        assert _read_frame_code(s, deadline) == 0x44                  # sasl-outcome
        s.sendall(AMQP_HEADER)
        assert _read_exact(s, 8, deadline) == AMQP_HEADER
        s.sendall(_frame(0x10, ["sdk-style", host]) +                 # open
                  _frame(0x11, [None, 0, 5000, 5000], channel=1))     # begin
        codes = []
        deadline = time.monotonic() + timeout
        try:
            while len(codes) < 2:
                codes.append(_read_frame_code(s, deadline))
        except (OSError, EOFError):
            pass
        return codes
    finally:
        s.close()
