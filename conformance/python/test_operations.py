"""Production operations: `--check-config`, JSON logs (span fields, levels, never any message
content), /health and /ready, the Prometheus metrics (content, `promtool check metrics`, a real
Prometheus server scraping the broker), the Service Bus emulator's Config.json, and graceful
shutdown under load (Close amqp:connection:forced, exit 0, every accepted message kept).
"""

import collections
import os
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from proton import Delivery, Message
from proton.utils import LinkDetached, SendException

from amqp_raw import CLOSE, END, PeerClosed, RawPeer, attach_receiver_frame, flow_frame, transfer_frame
from brokers import render_config
from crash_soak import close_quietly, drain
from helpers import (collect, connect, connection, expect_empty, lenient_receiver, pump, send_many,
                     settle_next)
from ops_helpers import (CA, KEY_NAME, KEY_VALUE, PrometheusServer, RawSession, leak_forms, message_payload,
                         parse_json_lines, parse_prometheus, prometheus_tool, record_level, run_broker_cli,
                         sasl_plain, span_fields, strip_ansi, toml_str, value, values)

HERE = os.path.dirname(os.path.abspath(__file__))
EMULATOR_CONFIG = os.path.join(HERE, "data", "emulator_config.json")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki-ops")
    ca = CA(d, "ops")
    return SimpleNamespace(ca=ca, srv=ca.issue("srv"), other=ca.issue("other"), dir=str(d))


def pem_body_lines(path):
    """The base64 lines of a PEM file (what must never be printed)."""
    with open(path) as f:
        return [ln.strip() for ln in f if ln.strip() and not ln.startswith("-----")]


# ---------------------------------------------------------------------------
# --check-config
# ---------------------------------------------------------------------------
def check_config(tmp_path, text, name="ferrobus.toml", extra=()):
    p = tmp_path / name
    p.write_text(text)
    return run_broker_cli(["--config", str(p), "--check-config", "--data-dir", str(tmp_path / "data")] + list(extra))


def test_check_config_ok_binds_nothing_prints_no_secret(tmp_path, pki):
    secret = "SasSecret" + secrets.token_hex(12)
    text = render_config(auth_keys=[(KEY_NAME, KEY_VALUE), ("ops-rule", secret)])
    text += "\n[tls]\namqps_listen = \"127.0.0.1:0\"\ncert = %s\nkey = %s\n" % (toml_str(pki.srv.cert),
                                                                               toml_str(pki.srv.key))
    text += "\n[log]\nformat = \"json\"\nlevel = \"info\"\n\n[server]\nshutdown_timeout_secs = 7\n"
    # a port somebody else listens on: a check that tried to bind it would fail
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    try:
        port = held.getsockname()[1]
        t0 = time.monotonic()
        rc, out, err = check_config(tmp_path, text, extra=["--amqp-listen", "127.0.0.1:%d" % port,
                                                           "--http-listen", "127.0.0.1:%d" % port])
        elapsed = time.monotonic() - t0
    finally:
        held.close()
    both = out + err
    assert rc == 0, "check-config of a good config: exit %r\nstdout: %s\nstderr: %s" % (rc, out, err)
    assert "configuration ok" in out, "stdout: %r" % out
    assert "READY" not in both and "TLS amqps=" not in both, "check-config started listeners: %r" % both
    assert elapsed < 10, "check-config took %.1fs" % elapsed
    assert secret not in both, "check-config printed a SAS key"
    for ln in pem_body_lines(pki.srv.key):
        assert ln not in both, "check-config printed the TLS private key"
    # the embedded default is fine too
    rc, out, err = run_broker_cli(["--check-config", "--data-dir", str(tmp_path / "d2")])
    assert rc == 0 and "configuration ok" in out, (rc, out, err)
    assert KEY_VALUE not in out + err, "check-config of the default printed the root key"


BAD_CONFIGS = {
    # name: (TOML added to a valid config, regex the error must match (naming the key))
    "unknown key": ("[amqp]\nidle_timout_ms = 5\n", r"idle_timout_ms"),
    "log format": ("[log]\nformat = \"xml\"\n", r"log\.format|\bformat\b"),
    "storage kind": ("[storage]\nkind = \"sqlite\"\n", r"storage\.kind|\bkind\b"),
    "wrong type": ("[server]\nshutdown_timeout_secs = \"soon\"\n", r"shutdown_timeout_secs"),
    "cert without key": ("[tls]\ncert = \"/nonexistent/tls.crt\"\n", r"tls\.(cert|key)"),
    "unknown key in a key rule": ("[[auth.keys]]\nname = \"extra-rule\"\nkey = \"{secret}\"\nexpires = 5\n",
                                  r"expires"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_check_config_bad_names_the_key(tmp_path, case):
    secret = "SasSecret" + secrets.token_hex(12)
    addition, pattern = BAD_CONFIGS[case]
    # [amqp] comes from render_config; a case that adds its own [amqp] goes into that table
    base = render_config(auth_keys=[("ops-rule", secret)])
    if addition.startswith("[amqp]\n"):
        text = base.replace("[amqp]\n", addition, 1)
    else:
        text = base + "\n" + addition.replace("{secret}", secret)
    rc, out, err = check_config(tmp_path, text)
    both = out + err
    assert rc == 1, "bad config (%s): exit %r, expected 1\nstdout: %s\nstderr: %s" % (case, rc, out, err)
    assert "configuration ok" not in out
    assert re.search(pattern, both), "the error does not name the key (%s): %r" % (pattern, both)
    assert secret not in both, "the error printed a SAS key: %r" % both
    assert "READY" not in both


SECRET_ECHO_CONFIGS = {
    # errors in the lines that hold a SAS key: the error may point at the line, never show the key
    "TOML syntax error on the key line": "[[auth.keys]]\nname = \"r\"\nkey = \"{secret}\n",
    "garbage after the key": "[[auth.keys]]\nname = \"r\"\nkey = \"{secret}\" x\n",
    "key given twice": "[[auth.keys]]\nname = \"r\"\nkey = \"{secret}\"\nkey = \"{secret}\"\n",
    "key rules written as a string": "[auth]\nkeys = \"{secret}\"\n",
    "key rule with a map as key": "[[auth.keys]]\nname = \"r\"\nkey = {{ value = \"{secret}\" }}\n",
}


@pytest.mark.parametrize("case", sorted(SECRET_ECHO_CONFIGS))
def test_check_config_errors_never_echo_a_sas_key(tmp_path, case):
    secret = "SasSecret" + secrets.token_hex(12)
    text = render_config(auth_keys=[]) + "\n" + SECRET_ECHO_CONFIGS[case].format(secret=secret)
    rc, out, err = check_config(tmp_path, text)
    both = out + err
    assert rc == 1, "bad config (%s): exit %r, expected 1\nstdout: %s\nstderr: %s" % (case, rc, out, err)
    assert "configuration ok" not in out
    assert secret not in both, "the error (%s) printed the SAS key:\n%s" % (case, both[:1500])


def test_check_config_tls_errors_print_no_key_material(tmp_path, pki):
    marker = "KeyMaterial" + secrets.token_hex(12)
    cases = {
        # PEM framing around base64 of bytes that are no key, and around text that is no base64
        "garbage key (base64)": "-----BEGIN PRIVATE KEY-----\n%s\n-----END PRIVATE KEY-----\n"
                                % __import__("base64").b64encode((marker * 3).encode()).decode(),
        "garbage key (text)": "-----BEGIN PRIVATE KEY-----\n%s!!\n-----END PRIVATE KEY-----\n" % marker,
        "no PEM at all": marker + "\n",
    }
    for what, key_text in cases.items():
        kp = tmp_path / "bad.key"
        kp.write_text(key_text)
        text = render_config() + "\n[tls]\ncert = %s\nkey = %s\n" % (toml_str(pki.srv.cert), toml_str(kp))
        rc, out, err = check_config(tmp_path, text)
        both = out + err
        assert rc == 1, "%s: exit %r\n%s" % (what, rc, both)
        assert re.search(r"tls\.key|tls", both), "%s: the error does not name tls.key: %r" % (what, both)
        for form in leak_forms(marker):
            assert form not in both, "%s: the error printed the key file's contents: %r" % (what, both)
        for ln in key_text.splitlines():
            if not ln.startswith("-----"):
                assert ln.strip() not in both, "%s: the error printed a line of the key file: %r" % (what, both)
    # a real key that does not belong to the certificate
    text = render_config() + "\n[tls]\ncert = %s\nkey = %s\n" % (toml_str(pki.srv.cert),
                                                                toml_str(pki.other.key))
    rc, out, err = check_config(tmp_path, text)
    assert rc == 1, "mismatched key: exit %r\n%s%s" % (rc, out, err)
    for ln in pem_body_lines(pki.other.key):
        assert ln not in out + err, "the error printed the private key"


def test_check_config_emulator_json(tmp_path):
    rc, out, err = run_broker_cli(["--config", EMULATOR_CONFIG, "--check-config", "--data-dir", str(tmp_path / "d")])
    assert rc == 0 and "configuration ok" in out, (rc, out, err)
    # the topic, its subscription and both rules are served now: nothing to warn about them
    assert "topic.1" not in out + err and "subscription.1" not in out + err, out + err
    assert KEY_VALUE not in out + err
    bad = tmp_path / "Config.json"
    with open(EMULATOR_CONFIG) as f:
        bad.write_text(f.read().replace('"MaxDeliveryCount": 3, // -> max_delivery_count',
                                        '"MaxDeliveryCount": "three",'))
    rc, out, err = run_broker_cli(["--config", str(bad), "--check-config", "--data-dir", str(tmp_path / "d")])
    assert rc == 1, (rc, out, err)
    assert "MaxDeliveryCount" in out + err, out + err


# ---------------------------------------------------------------------------
# logs
# ---------------------------------------------------------------------------
def test_json_logs_carry_peer_and_container_id(ops_broker):
    b = ops_broker(extra_toml="[log]\nformat = \"json\"\nlevel = \"debug\"\n")
    cid = "ops-json-" + secrets.token_hex(6)
    with RawPeer(b.amqp_addr) as p:
        local = "%s:%d" % p.sock.getsockname()[:2]
        p.open(container_id=cid)
        p.begin()
        # then drop the socket without a Close: the broker logs how this connection ended
    with connection(b) as c:
        c.create_sender("q1").send(Message(body="json logs"))
    b.wait_stderr(lambda t: local in t, 10, "a log line of connection %s" % local)
    assert b.stop() == 0
    assert b.stdout_lines == [ln for ln in b.stdout_lines if ln.startswith("READY ")], \
        "logs went to stdout: %r" % b.stdout_lines
    recs = parse_json_lines(b.run_stderr())
    assert recs, "no log lines at level debug"
    for r in recs:
        assert record_level(r) in ("TRACE", "DEBUG", "INFO", "WARN", "ERROR"), "no level in %r" % r
    mine = [r for r in recs if span_fields(r).get("peer") == local]
    assert mine, "no JSON line carries span peer=%s; lines with a span: %r" % (
        local, [r for r in recs if span_fields(r)][:5])
    print("connection %s: %d lines, e.g. %r" % (local, len(mine), mine[-1]))
    named = [r for r in mine if span_fields(r).get("container_id") == cid]
    assert named, "no line of connection %s carries container_id=%s after Open: %r" % (local, cid, mine[:5])
    for r in recs:
        if span_fields(r).get("container_id") == cid:
            assert span_fields(r).get("peer") == local, r


def test_logs_never_contain_message_content_even_at_trace(ops_broker):
    tok = secrets.token_hex(16)
    body_s, prop_s, bin_s, raw_s = ("BodyText" + tok, "PropValue" + tok, "BinBody" + tok, "RawBody" + tok)
    # [log] says warn; RUST_LOG=trace overrides it; the format comes from the environment
    b = ops_broker(extra_toml="[log]\nlevel = \"warn\"\n",
                   env={"FERROBUS__LOG__FORMAT": "json", "RUST_LOG": "trace"})
    with connection(b) as c:
        snd = c.create_sender("q1")
        send_many(c, snd, [Message(body=body_s, properties={"secret": prop_s, "n": 1}),
                           Message(body=bin_s.encode(), properties={"k": prop_s}),
                           Message(body={"nested": body_s}, properties={"x": prop_s}),
                           Message(body=body_s + "-rejected", properties={"k": prop_s})])
        rcv = c.create_receiver("q1", credit=4)
        collect(c, rcv, 4)
        settle_next(rcv, Delivery.ACCEPTED)
        settle_next(rcv, Delivery.RELEASED)
        settle_next(rcv, Delivery.MODIFIED, failed=True)
        settle_next(rcv, Delivery.REJECTED)
        pump(c, 0.3)
    # raw frames: a good message, then a transfer on a handle that is not attached (error path)
    with RawPeer(b.amqp_addr) as p:
        s = RawSession(p, "trace-raw")
        s.send("q2", raw_s, {"p": prop_s})
        s.receive("q2")
        p.send(transfer_frame(77, 99, b"x" * 16, message_payload(raw_s, {"p": prop_s})))
        deadline = time.monotonic() + 5
        try:
            while time.monotonic() < deadline:
                if p.next_frame(max(0.01, deadline - time.monotonic())).code in (END, CLOSE):
                    break
        except (PeerClosed, socket.timeout, TimeoutError):
            pass
    assert b.stop() == 0
    text = b.run_stderr()
    recs = parse_json_lines(text)
    levels = collections.Counter(record_level(r) for r in recs)
    assert levels["TRACE"] + levels["DEBUG"] > 0, \
        "RUST_LOG=trace must override [log] level = warn; levels seen: %r" % dict(levels)
    print("trace log: %d JSON lines, levels %r" % (len(recs), dict(levels)))
    for marker in (body_s, prop_s, bin_s, raw_s):
        for form in leak_forms(marker):
            assert form not in text, "the log contains message content (%r)" % form


def test_log_level_from_config(ops_broker):
    b = ops_broker(extra_toml="[log]\nformat = \"json\"\nlevel = \"warn\"\n")
    with connection(b) as c:
        c.create_sender("q1").send(Message(body="quiet"))
    assert b.stop() == 0
    recs = parse_json_lines(b.run_stderr())
    noisy = [r for r in recs if record_level(r) in ("INFO", "DEBUG", "TRACE")]
    assert not noisy, "[log] level = warn, yet: %r" % noisy[:5]


# ---------------------------------------------------------------------------
# HTTP: /health, /ready, /metrics
# ---------------------------------------------------------------------------
def test_health_and_ready(ops_broker):
    b = ops_broker()
    st, _, body = b.http_get("/health")
    assert st == 200 and body.strip() == b"ok", (st, body)
    st, _, body = b.http_get("/ready")
    assert st == 200, "/ready right after READY: %r %r" % (st, body)


REQUIRED_METRICS = {
    "ferrobus_connections": "gauge",
    "ferrobus_connections_total": "counter",
    "ferrobus_sessions": "gauge",
    "ferrobus_links": "gauge",
    "ferrobus_auth_failures_total": "counter",
    "ferrobus_messages_received_total": "counter",
    "ferrobus_received_bytes_total": "counter",
    "ferrobus_messages_delivered_total": "counter",
    "ferrobus_delivered_bytes_total": "counter",
    "ferrobus_messages_settled_total": "counter",
    "ferrobus_entity_messages": "gauge",
    "ferrobus_entity_bytes": "gauge",
    "ferrobus_end_to_end_latency_seconds": "histogram",
    "ferrobus_store_commit_duration_seconds": "histogram",
    "ferrobus_store_commit_requests": "histogram",
    "ferrobus_store_write_errors_total": "counter",
    "process_resident_memory_bytes": "gauge",
    "process_cpu_seconds_total": "counter",
    "process_open_fds": "gauge",
}


def scrape(b):
    st, headers, body = b.http_get("/metrics")
    assert st == 200, (st, body[:200])
    return body.decode("utf-8")


def test_metrics_content_and_promtool(ops_broker):
    b = ops_broker()
    with RawPeer(b.amqp_addr) as p:  # one failed login
        assert sasl_plain(p, KEY_NAME, "wrong-" + KEY_VALUE) == 1
    body_len = 300
    c = connect(b)
    try:
        snd = c.create_sender("q1")
        send_many(c, snd, [Message(body="m%d-" % i + "x" * body_len) for i in range(6)])
        rcv = c.create_receiver("q1", credit=6)
        collect(c, rcv, 6)
        settle_next(rcv, Delivery.ACCEPTED)
        settle_next(rcv, Delivery.ACCEPTED)
        settle_next(rcv, Delivery.RELEASED)
        settle_next(rcv, Delivery.REJECTED)                               # -> dead-letter queue
        settle_next(rcv, Delivery.MODIFIED, failed=True, undeliverable=True)  # defer
        # the sixth stays locked
        pump(c, 0.5)
        text = scrape(b)
        m = parse_prometheus(text)
        for name, typ in REQUIRED_METRICS.items():
            assert m["types"].get(name) == typ, "metric %s: TYPE %r, expected %s" % (name, m["types"].get(name), typ)
        for h in ("ferrobus_end_to_end_latency_seconds", "ferrobus_store_commit_duration_seconds",
                  "ferrobus_store_commit_requests"):
            assert values(m, h + "_bucket", le="+Inf"), "histogram %s has no +Inf bucket" % h
        assert value(m, "ferrobus_connections") >= 1
        assert value(m, "ferrobus_connections_total") >= 2
        assert value(m, "ferrobus_sessions") >= 1
        assert value(m, "ferrobus_links") >= 2
        assert value(m, "ferrobus_auth_failures_total") >= 1
        assert value(m, "ferrobus_messages_received_total") == 6
        assert value(m, "ferrobus_received_bytes_total") >= 6 * body_len
        assert value(m, "ferrobus_messages_delivered_total") >= 6
        assert value(m, "ferrobus_delivered_bytes_total") >= 6 * body_len
        settled = {l.get("outcome"): v for (n, l, v) in m["samples"] if n == "ferrobus_messages_settled_total"}
        assert sum(settled.values()) >= 5, "settlements: %r" % settled
        assert len([o for o, v in settled.items() if v > 0]) >= 4, \
            "accept, release, reject and defer should be four outcomes: %r" % settled
        q1 = {l["state"]: v for (n, l, v) in m["samples"] if n == "ferrobus_entity_messages" and l.get("entity") == "q1"}
        assert q1.get("active", 0) + q1.get("locked", 0) == 2, "q1 active+locked (released + still locked): %r" % q1
        assert q1.get("deferred") == 1, q1
        assert q1.get("dead_lettered") == 1, q1
        assert value(m, "ferrobus_entity_bytes", entity="q1") > 0
        assert value(m, "ferrobus_end_to_end_latency_seconds_count") >= 2
        assert value(m, "ferrobus_store_commit_duration_seconds_count") > 0
        assert value(m, "ferrobus_store_commit_requests_count") > 0
        assert value(m, "ferrobus_store_write_errors_total") == 0
        assert value(m, "process_resident_memory_bytes") > 1_000_000
        assert value(m, "process_open_fds") > 3
        assert value(m, "process_cpu_seconds_total") >= 0
    finally:
        c.close()
    # the gauges come back down
    deadline = time.monotonic() + 5
    while True:
        m = parse_prometheus(scrape(b))
        now = (value(m, "ferrobus_connections"), value(m, "ferrobus_sessions"), value(m, "ferrobus_links"))
        if now == (0, 0, 0):
            break
        assert time.monotonic() < deadline, "connections/sessions/links after every client left: %r" % (now,)
        time.sleep(0.2)

    promtool = prometheus_tool("promtool")
    assert promtool, "promtool not available (Debian's prometheus package could not be fetched)"
    r = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
    assert r.returncode == 0, "promtool check metrics failed (%d):\n%s%s" % (
        r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace"))


def test_prometheus_scrapes_the_broker(ops_broker, tmp_path):
    exe = prometheus_tool("prometheus")
    assert exe, "prometheus server binary not available (Debian's prometheus package could not be fetched)"
    b = ops_broker()
    prom = PrometheusServer(tmp_path / "prometheus", ["127.0.0.1:%d" % b.http_port]).start()
    try:
        prom.wait_query('up{job="ferrobus"}', lambda r: len(r) == 1 and r[0]["value"][1] == "1", timeout=40)
        with connection(b) as c:
            send_many(c, c.create_sender("q1"), [Message(body="scraped %d" % i) for i in range(10)])
        r = prom.wait_query('ferrobus_messages_received_total{job="ferrobus"}',
                            lambda r: len(r) == 1 and float(r[0]["value"][1]) >= 10, timeout=30)
        assert float(r[0]["value"][1]) == 10, r
        r = prom.wait_query('ferrobus_entity_messages{job="ferrobus",entity="q1",state="active"}',
                            lambda r: len(r) == 1 and float(r[0]["value"][1]) == 10, timeout=30)
    finally:
        rc = prom.stop()
    assert rc == 0, "prometheus exited %r\n%s" % (rc, prom.log_tail())


# ---------------------------------------------------------------------------
# the Service Bus emulator's Config.json
# ---------------------------------------------------------------------------
def test_emulator_config_json(ops_broker):
    b = ops_broker(config_file=EMULATOR_CONFIG)
    lines = [strip_ansi(ln) for ln in b.run_stderr().splitlines()]
    warns = [ln for ln in lines if re.search(r"\bWARN(ING)?\b", ln)]
    # its topic, subscription and rules are served, not warned about
    for item in ("topic.1", "subscription.1", "app-prop-filter-1", "sql-filter-1"):
        assert not any(item in ln for ln in warns), "%r warned about:\n%s" % (item, "\n".join(warns))
    # what it does map onto queue settings is not warned about
    for item in ("LockDuration", "DefaultMessageTimeToLive", "DuplicateDetectionHistoryTimeWindow",
                 "DeadLetteringOnMessageExpiration", "RequiresDuplicateDetection", "MaxDeliveryCount",
                 "ForwardTo", "RequiresSession"):
        assert not any(item in ln for ln in warns), "%r is supported but warned about:\n%s" % (item, "\n".join(warns))
    # the emulator's key rule
    with connection(b, user=KEY_NAME, password=KEY_VALUE, allowed_mechs="PLAIN", allow_insecure_mechs=True) as c:
        snd = c.create_sender("queue.1")
        snd.send(Message(body="emulator queue"))
        rcv = c.create_receiver("queue.1", credit=1)
        assert rcv.receive(timeout=10).body == "emulator queue"
        rcv.accept()
        # the topic and its correlation rule: a message with every field it names is selected
        props = {"prop1": "value1"}
        c.create_sender("topic.1").send(Message(
            body="for subscription.1", id="msgid1", correlation_id="id1", subject="subject1",
            reply_to="someQueue", content_type="application/text", address="xyz",
            group_id="session1", reply_to_group_id="sessionId", properties=props))
        sub = c.create_receiver("topic.1/Subscriptions/subscription.1", credit=1)
        assert sub.receive(timeout=10).body == "for subscription.1"
        sub.accept()
        # queue.2 requires sessions and forwards to queue.1 (ForwardTo): what is sent to it needs
        # a session id (group-id) and lands in queue.1
        q2 = c.create_sender("queue.2")
        q2.send(Message(body="via queue.2", group_id="g1"))
        assert rcv.receive(timeout=10).body == "via queue.2"
        rcv.accept()
        with pytest.raises(SendException) as e:
            q2.send(Message(body="no session id"))
        assert e.value.state == Delivery.REJECTED, e.value
        # the default entity set is replaced: q1 is unknown
        with pytest.raises(LinkDetached):
            c.create_sender("q1")
    # MaxDeliveryCount = 3: the third failed delivery dead-letters the message
    with connection(b) as c:
        c.create_sender("queue.1").send(Message(body="poison"))
        rcv = c.create_receiver("queue.1", credit=1)
        for i in range(3):
            m = rcv.receive(timeout=10)
            assert m.body == "poison" and (m.delivery_count or 0) == i, (m.body, m.delivery_count)
            settle_next(rcv, Delivery.MODIFIED, failed=True)
        expect_empty(rcv, 1.5)
        dlq = lenient_receiver(c, "queue.1/$DeadLetterQueue", credit=5)
        m = dlq.receive(timeout=10)
        assert m.body == "poison"
        dlq.accept()


# ---------------------------------------------------------------------------
# graceful shutdown
# ---------------------------------------------------------------------------
class LoadProducer(threading.Thread):
    """Unsettled sender until the broker ends the connection; records what the broker accepted and
    how the connection ended."""

    def __init__(self, broker, tag, queue="q1", window=200, size=700):
        super().__init__(name="producer-" + tag, daemon=True)
        self.broker, self.tag, self.queue, self.window, self.size = broker, tag, queue, window, size
        self.ready = threading.Event()
        self.accepted = []
        self.other = []
        self.sent = 0
        self.error = None
        self.condition = None
        self.disconnected = None

    def run(self):
        conn = None
        outstanding = collections.deque()
        try:
            conn = connect(self.broker, timeout=10)
            link = conn.create_sender(self.queue).link
            self.ready.set()
            while True:
                while len(outstanding) < self.window and link.credit > 0:
                    mid = "%s-%07d" % (self.tag, self.sent)
                    outstanding.append((link.send(Message(body=mid + "|" + "p" * self.size,
                                                          properties={"id": mid})), mid))
                    self.sent += 1
                conn.wait(lambda: (bool(outstanding) and bool(outstanding[0][0].remote_state))
                          or (len(outstanding) < self.window and link.credit > 0),
                          timeout=10, msg="producer %s: no disposition" % self.tag)
                while outstanding and outstanding[0][0].remote_state:
                    self._record(*outstanding.popleft())
        except BaseException as e:  # noqa: BLE001  (the broker closing is how this ends)
            self.error = e
        finally:
            for d, mid in outstanding:
                if d.remote_state:
                    self._record(d, mid)
            if conn is not None:
                rc = conn.conn.remote_condition
                self.condition = getattr(self.error, "condition", None) or (rc.name if rc else None)
                self.disconnected = conn.disconnected
            close_quietly(conn, dead=True)

    def _record(self, d, mid):
        (self.accepted if d.remote_state == Delivery.ACCEPTED else self.other).append(mid)

    def ending(self):
        return "error=%r condition=%r disconnected=%r" % (self.error, self.condition, self.disconnected)


def test_graceful_shutdown_under_load(ops_broker):
    grace = 5
    b = ops_broker(extra_toml="[server]\nshutdown_timeout_secs = %d\n" % grace)
    # messages handed to a consumer that never settles them: locked at shutdown
    with connection(b) as c:
        send_many(c, c.create_sender("q1"), [Message(body="locked-%d" % i, properties={"id": "locked-%d" % i})
                                             for i in range(40)])
    consumer = connect(b)
    rcv = consumer.create_receiver("q1", credit=40)
    collect(consumer, rcv, 40)
    # an idle connection that only waits for the broker's Close
    idle = RawPeer(b.amqp_addr)
    idle.open(container_id="idle-at-shutdown")
    idle.begin()
    # /ready while shutting down
    ready_log, ready_stop = [], threading.Event()

    def poll_ready():
        while not ready_stop.is_set():
            try:
                with urllib.request.urlopen(b.http_url + "/ready", timeout=2) as r:
                    ready_log.append(r.status)
            except urllib.error.HTTPError as e:
                ready_log.append(e.code)
            except (urllib.error.URLError, ConnectionError, socket.timeout, OSError):
                ready_log.append("refused")
            time.sleep(0.02)

    producers = [LoadProducer(b, "p%d" % i) for i in range(2)]
    for p in producers:
        p.start()
    for p in producers:
        assert p.ready.wait(10), "producer %s did not attach: %s" % (p.tag, p.ending())
    poller = threading.Thread(target=poll_ready, daemon=True)
    poller.start()
    time.sleep(1.5)
    assert all(p.accepted for p in producers), "no load: %r" % [(p.tag, len(p.accepted), p.ending()) for p in producers]
    assert ready_log and ready_log[0] == 200, "/ready before shutdown: %r" % ready_log[:5]

    t0 = time.monotonic()
    b.signal(signal.SIGTERM)
    frames, closed = idle.read_until_closed(grace + 5)
    idle.close()
    rc = b.wait_exit(grace + 10)
    elapsed = time.monotonic() - t0
    ready_stop.set()
    poller.join(5)
    for p in producers:
        p.join(15)
    close_quietly(consumer, dead=True)

    assert rc == 0, "exit code after SIGTERM under load: %r (after %.1fs)\n%s" % (rc, elapsed, b.stderr_tail())
    assert elapsed <= grace + 5, "shutdown took %.1fs with shutdown_timeout_secs = %d" % (elapsed, grace)
    closes = [f for f in frames if f.code == CLOSE]
    assert closes, "the idle connection got no Close before the socket ended (frames %r, eof %r)" % (frames, closed)
    assert closes[0].error() and closes[0].error()[0] == "amqp:connection:forced", \
        "Close on shutdown: %r" % (closes[0].error(),)
    for p in producers:
        assert not p.is_alive(), "producer %s still running after the broker exited" % p.tag
        assert p.condition == "amqp:connection:forced" or p.disconnected or p.error is not None, \
            "producer %s did not see the shutdown: %s" % (p.tag, p.ending())
    seen_not_ready = False
    for s in ready_log:
        assert s in (200, 503, "refused"), "/ready answered %r during shutdown" % (s,)
        if s != 200:
            seen_not_ready = True
        elif seen_not_ready:
            pytest.fail("/ready went back to 200 after %r: %r" % (ready_log, ready_log[-20:]))

    accepted = set()
    for p in producers:
        accepted.update(p.accepted)
    b.restart()
    msgs = drain(b, "q1", idle=1.0, timeout=90)
    ids = [(m.properties or {}).get("id") for m in msgs]
    have = set(ids)
    missing = accepted - have
    locked = {"locked-%d" % i for i in range(40)}
    assert not missing, "%d of %d accepted messages lost in the graceful shutdown, e.g. %r" % (
        len(missing), len(accepted), sorted(missing)[:10])
    assert locked <= have, "locked messages lost: %r" % sorted(locked - have)[:10]
    print("graceful shutdown: exit %r after %.2fs; accepted %d (p0 %d, p1 %d), drained %d after restart; "
          "producers: %s; /ready samples: %s" % (
              rc, elapsed, len(accepted), len(producers[0].accepted), len(producers[1].accepted), len(msgs),
              "; ".join("%s %s" % (p.tag, p.ending()) for p in producers),
              dict(collections.Counter(ready_log))))
    unknown = [i for i in have if i not in accepted and i not in locked
               and not any(i.startswith(p.tag + "-") for p in producers)]
    assert not unknown, "messages nobody sent: %r" % unknown[:10]


def test_ready_is_503_while_shutting_down(ops_broker):
    """A consumer that stops reading keeps its connection from closing, so the shutdown lasts until
    shutdown_timeout_secs; all that time the process is alive and /ready must say 503."""
    grace = 3
    b = ops_broker(extra_toml="[server]\nshutdown_timeout_secs = %d\n" % grace)
    with connection(b) as c:
        send_many(c, c.create_sender("q1"), [Message(body="big-%d|" % i + "x" * 60000) for i in range(150)])
    deaf = RawPeer(b.amqp_addr)
    try:
        deaf.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        deaf.open(container_id="deaf-consumer")
        deaf.begin()
        deaf.send(attach_receiver_frame("deaf", 0, "q1") + flow_frame(0, 1000))
        time.sleep(0.5)  # the broker's writes to us block from here on
        st, _, _ = b.http_get("/ready")
        assert st == 200
        t0 = time.monotonic()
        b.signal(signal.SIGTERM)
        answers = []
        asked = []  # when each answer's request was sent, after SIGTERM
        while b.alive() and time.monotonic() - t0 < grace + 10:
            asked.append(time.monotonic() - t0)
            try:
                with urllib.request.urlopen(b.http_url + "/ready", timeout=2) as r:
                    answers.append(r.status)
            except urllib.error.HTTPError as e:
                answers.append(e.code)
            except (urllib.error.URLError, ConnectionError, socket.timeout, OSError) as e:
                answers.append(type(getattr(e, "reason", e)).__name__)
            time.sleep(0.05)
        rc = b.wait_exit(grace + 10)
        elapsed = time.monotonic() - t0
    finally:
        deaf.close()
    assert rc == 0, "exit %r after SIGTERM with a consumer that does not read" % (rc,)
    assert grace - 0.5 <= elapsed <= grace + 5, \
        "shutdown took %.1fs with shutdown_timeout_secs = %d and a connection that cannot close" % (elapsed, grace)
    # a request sent in the instant between kill() and the broker handling the signal may still
    # be answered 200; after the first 503, and later than 0.2 s after SIGTERM, never
    first_503 = answers.index(503) if 503 in answers else len(answers)
    late_200 = [(round(t, 3), a) for i, (t, a) in enumerate(zip(asked, answers))
                if a == 200 and (i > first_503 or t > 0.2)]
    assert not late_200, "/ready said 200 during shutdown: %r" % late_200
    counts = dict(collections.Counter(answers))
    assert counts.get(503), "/ready while shutting down (%.1fs, process alive): expected 503, got %r" % (
        elapsed, counts)
