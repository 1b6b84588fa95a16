"""Helpers for the production-operations tests (test_tls.py, test_operations.py).

* run_broker_cli: the broker binary run to completion (--check-config); the brokers the tests talk
  to come from conftest's `ops_broker` fixture (brokers.Broker with extra flags, TOML, env).
* Certificates made at test time with the `openssl` CLI: a CA and server certificates for
  127.0.0.1 / localhost (subjectAltName).
* TlsPeer: amqp_raw.RawPeer over Python's ssl module (python-qpid-proton here has no TLS), started
  directly or after the AMQP TLS protocol header, plus SASL / Open / Begin / Attach / transfer helpers.
* Prometheus text parsing, promtool and a throw-away Prometheus server (binaries taken out of
  Debian's `prometheus` package into ~/.cache/ferrobus/tools when missing).
"""

import base64
import glob
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from amqp_raw import (ACCEPTED, AMQP_VALUE, APPLICATION_PROPERTIES, ATTACH, BEGIN, CLOSE, DETACH,
                      DISPOSITION, END, FLOW, FRAME_SASL, NAMES, SASL_HEADER, SASL_INIT, SASL_MECHANISMS,
                      SASL_OUTCOME, TLS_HEADER, TRANSFER, Described, RawPeer, Symbol, ULong,
                      amqp_value_body, attach_receiver_frame, attach_sender_frame, begin_frame, disposition_frame,
                      encode, flow_frame, frame, message_sections, perf, transfer_frame)
from brokers import KEY_NAME, KEY_VALUE, broker_bin, clean_environ, toml_value

ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
TOOLS = os.path.join(os.path.expanduser("~"), ".cache", "ferrobus", "tools")


def strip_ansi(s):
    return ANSI_RE.sub("", s)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run_broker_cli(args, env=None, timeout=20):
    """Runs the broker binary to completion: (exit code, stdout, stderr)."""
    p = subprocess.run([broker_bin()] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout, env=clean_environ(env))
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def toml_str(s):
    return toml_value(str(s))


# --------------------------------------------------------------------------
# certificates (openssl CLI)
# --------------------------------------------------------------------------
def openssl(*args, cwd=None):
    p = subprocess.run(["openssl"] + [str(a) for a in args], capture_output=True, cwd=cwd, timeout=60)
    if p.returncode != 0:
        raise RuntimeError("openssl %s failed (%d):\n%s" % (" ".join(map(str, args)), p.returncode,
                                                            p.stderr.decode(errors="replace")))
    return p.stdout


def _newkey_args(key_type):
    if key_type == "ec":
        return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    if key_type == "rsa":
        return ["-newkey", "rsa:2048"]
    raise ValueError(key_type)


class ServerCert:
    def __init__(self, cert, key, ca):
        self.cert, self.key, self.ca = cert, key, ca

    @property
    def der(self):
        with open(self.cert) as f:
            return ssl.PEM_cert_to_DER_cert(f.read())

    def install(self, cert_path, key_path, keep_mtime=False, bump_mtime=True):
        """Atomically replaces the files at cert_path / key_path with this certificate and key.
        keep_mtime: give the new files the old modification times (so only SIGHUP can notice).
        bump_mtime: otherwise set the times clearly later than the old ones."""
        old = [os.stat(p) if os.path.exists(p) else None for p in (cert_path, key_path)]
        for src, dst, st in ((self.key, key_path, old[1]), (self.cert, cert_path, old[0])):
            tmp = dst + ".tmp-%s" % secrets.token_hex(4)
            shutil.copyfile(src, tmp)
            if keep_mtime and st is not None:
                os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
            elif bump_mtime and st is not None:
                t = max(time.time_ns(), st.st_mtime_ns + 2_000_000_000)
                os.utime(tmp, ns=(t, t))
            os.replace(tmp, dst)


class CA:
    """A throw-away certificate authority made with the openssl CLI."""

    def __init__(self, directory, name, key_type="ec"):
        self.dir = str(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.name = name
        self.cert = os.path.join(self.dir, "%s-ca.pem" % name)
        self.key = os.path.join(self.dir, "%s-ca.key" % name)
        openssl("req", "-x509", "-new", *_newkey_args(key_type), "-nodes", "-keyout", self.key, "-out", self.cert,
                "-days", "3", "-subj", "/O=Ferrobus conformance/CN=Ferrobus test CA %s" % name,
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        with open(self.cert) as f:
            self.pem = f.read()

    def issue(self, stem, key_type="ec", sans=("DNS:localhost", "IP:127.0.0.1"), cn="localhost",
              traditional_key=False):
        key = os.path.join(self.dir, stem + ".key")
        csr = os.path.join(self.dir, stem + ".csr")
        cert = os.path.join(self.dir, stem + ".pem")
        ext = os.path.join(self.dir, stem + ".ext")
        openssl("req", "-new", *_newkey_args(key_type), "-nodes", "-keyout", key, "-out", csr,
                "-subj", "/O=Ferrobus conformance/CN=%s" % cn)
        if traditional_key:  # PKCS#1 "RSA PRIVATE KEY" / SEC1 "EC PRIVATE KEY" instead of PKCS#8
            conv = ["rsa", "-traditional"] if key_type == "rsa" else ["ec"]
            openssl(*conv, "-in", key, "-out", key + ".trad")
            os.replace(key + ".trad", key)
        with open(ext, "w") as f:
            f.write("subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\n"
                    "keyUsage=critical,%s\nextendedKeyUsage=serverAuth\n"
                    % (",".join(sans), "digitalSignature,keyEncipherment" if key_type == "rsa" else "digitalSignature"))
        openssl("x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
                "-set_serial", "0x" + secrets.token_hex(8), "-days", "3", "-out", cert, "-extfile", ext)
        return ServerCert(cert, key, self)

    def context(self):
        return client_context(self.cert)


def client_context(cafile=None, system=False):
    """A TLS client context that verifies the server (hostname included) against cafile, or against
    the system's trust store when system=True."""
    if system:
        return ssl.create_default_context()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile:
        ctx.load_verify_locations(cafile)
    return ctx


# --------------------------------------------------------------------------
# a raw AMQP peer over TLS
# --------------------------------------------------------------------------
class TlsPeer(RawPeer):
    """RawPeer whose socket is wrapped in TLS: directly (amqps) or after the AMQP TLS header
    exchange. Raises ssl.SSLError (e.g. SSLCertVerificationError) when the handshake fails."""

    def __init__(self, addr, ctx, server_hostname="localhost", tls_header=False, timeout=10.0):
        super().__init__(addr, timeout)
        self.header_reply = None
        try:
            if tls_header:
                self.send(TLS_HEADER)
                self.header_reply = self.read_header(timeout)
                if self.header_reply != TLS_HEADER:
                    raise AssertionError("broker answered the AMQP TLS header with %r" % self.header_reply)
                if self.buf:
                    raise AssertionError("broker sent %r after its TLS header, before the handshake" % bytes(self.buf))
            raw = self.sock
            raw.settimeout(timeout)
            self.sock = ctx.wrap_socket(raw, server_hostname=server_hostname)
        except BaseException:
            self.close()
            raise

    @property
    def peer_cert_der(self):
        return self.sock.getpeercert(binary_form=True)


def until(p, code, timeout=10.0, pred=None):
    """Reads frames until one with this performative code (and pred(frame)) arrives; other frames
    (flow, disposition, ...) are skipped. A close/end/detach that is not awaited fails."""
    deadline = time.monotonic() + timeout
    while True:
        f = p.next_frame(max(0.001, deadline - time.monotonic()))
        if f.code == code and (pred is None or pred(f)):
            return f
        if f.code in (CLOSE, END, DETACH):
            raise AssertionError("broker sent %r while we waited for %s (log: %r)" % (f, NAMES[code], p.log[-10:]))


def sasl_anonymous(p):
    mechs = sasl_mechanisms(p)
    assert "ANONYMOUS" in mechs, mechs
    p.send(frame(perf(SASL_INIT, Symbol("ANONYMOUS"), b""), ftype=FRAME_SASL))
    o = p.next_frame()
    assert o.code == SASL_OUTCOME and o.field(0) == 0, "sasl ANONYMOUS outcome %r" % o


def sasl_plain(p, user=KEY_NAME, password=KEY_VALUE):
    mechs = sasl_mechanisms(p)
    assert "PLAIN" in mechs, mechs
    p.send(frame(perf(SASL_INIT, Symbol("PLAIN"), b"\x00" + user.encode() + b"\x00" + password.encode()),
                 ftype=FRAME_SASL))
    o = p.next_frame()
    assert o.code == SASL_OUTCOME, repr(o)
    return o.field(0)


def sasl_mechanisms(p):
    p.send(SASL_HEADER)
    h = p.read_header()
    assert h == SASL_HEADER, "broker answered the SASL header with %r" % h
    f = p.next_frame()
    assert f.ftype == FRAME_SASL and f.code == SASL_MECHANISMS, repr(f)
    m = f.field(0)
    return [str(x) for x in (m if isinstance(m, list) else [m])]


def message_payload(body, app_props=None):
    out = b""
    if app_props:
        out += encode(Described(ULong(APPLICATION_PROPERTIES), app_props))
    return out + encode(Described(ULong(AMQP_VALUE), body))


def app_props_of(payload):
    for s in message_sections(payload):
        if isinstance(s, Described) and s.code == APPLICATION_PROPERTIES:
            return s.value
    return None


class RawSession:
    """Open + Begin on a peer whose SASL (if any) is done; send and receive single-frame messages."""

    def __init__(self, p, container_id="ops-raw"):
        self.p = p
        o = p.open(container_id=container_id)
        self.broker_open = o
        p.send(begin_frame())
        b = until(p, BEGIN)
        self.broker_next_outgoing = b.field(1)
        self.next_handle = 0
        self.delivery_id = 0
        self.senders = {}

    def sender(self, address):
        h = self.next_handle
        self.next_handle += 1
        self.p.send(attach_sender_frame("snd-%d" % h, h, address))
        a = until(self.p, ATTACH)
        assert a.field(6) is not None, "attach reply for %r has no target (unknown node?): %r" % (address, a)
        until(self.p, FLOW, pred=lambda f: f.field(4) == h and (f.field(6) or 0) > 0)
        self.senders[address] = h
        return h

    def send(self, address, body, app_props=None, timeout=10.0):
        """One unsettled transfer; returns the broker's outcome (a Described state)."""
        h = self.senders.get(address)
        if h is None:
            h = self.sender(address)
        did = self.delivery_id
        self.delivery_id += 1
        self.p.send(transfer_frame(h, did, b"t%015d" % did, message_payload(body, app_props)))
        d = until(self.p, DISPOSITION, timeout,
                  pred=lambda f: f.field(1) <= did <= (f.field(2) if f.field(2) is not None else f.field(1)))
        return d.field(4)

    def receive(self, address, timeout=10.0):
        """Attach a receiver, take one message, accept it. Returns (body, application properties)."""
        h = self.next_handle
        self.next_handle += 1
        self.p.send(attach_receiver_frame("rcv-%d" % h, h, address))
        a = until(self.p, ATTACH)
        assert a.field(5) is not None, "attach reply for %r has no source (unknown node?): %r" % (address, a)
        self.p.send(flow_frame(handle=h, link_credit=1, next_incoming_id=self.broker_next_outgoing))
        t = until(self.p, TRANSFER, timeout)
        assert not t.field(5), "single-frame transfer expected"
        self.p.send(disposition_frame(t.field(1), ACCEPTED))
        return amqp_value_body(t.payload), app_props_of(t.payload)

    def close(self):
        self.p.send(frame(perf(CLOSE)))
        c = until(self.p, CLOSE)
        assert c.error() is None, "clean close answered with %r" % (c.error(),)


def raw_roundtrip(p, queue="q1", body=None, container_id="ops-raw", close=True):
    """Open/Begin/Attach on p (SASL already done), send one message, receive it back."""
    body = body or ("roundtrip-" + secrets.token_hex(6))
    s = RawSession(p, container_id)
    state = s.send(queue, body, {"k": "v"})
    assert state is not None and state.code == ACCEPTED, "send outcome %r" % (state,)
    got, props = s.receive(queue)
    assert got == body, "received %r, sent %r" % (got, body)
    assert props == {"k": "v"}, props
    if close:
        s.close()
    return s


# --------------------------------------------------------------------------
# logs
# --------------------------------------------------------------------------
def parse_json_lines(text):
    """Every non-empty line as a JSON object; AssertionError naming the first line that is not."""
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise AssertionError("stderr line %d is not JSON (%s): %r" % (i, e, line[:300]))
        assert isinstance(rec, dict), "stderr line %d is JSON but not an object: %r" % (i, line[:300])
        out.append(rec)
    return out


def span_fields(rec):
    """Fields of the span(s) a JSON log record carries (current span and span list merged)."""
    out = {}
    spans = rec.get("spans")
    if isinstance(spans, list):
        for s in spans:
            if isinstance(s, dict):
                out.update(s)
    s = rec.get("span")
    if isinstance(s, dict):
        out.update(s)
    return out


def record_level(rec):
    lv = rec.get("level") or rec.get("severity") or ""
    return str(lv).upper()


def leak_forms(marker):
    """Ways a string may show up in a log: as is, hex, base64, Debug of its bytes."""
    b = marker.encode()
    forms = {marker, b.hex(), b.hex().upper(), base64.b64encode(b).decode().rstrip("="),
             ", ".join(str(x) for x in b), ",".join(str(x) for x in b)}
    # a slice, in case it is cut short or wrapped
    forms.add(marker[:16])
    return forms


# --------------------------------------------------------------------------
# Prometheus
# --------------------------------------------------------------------------
_SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?\s*$')
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def parse_prometheus(text):
    """{"types": {name: type}, "samples": [(name, {labels}, float)]}; raises on malformed lines."""
    types, samples = {}, []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 4 and parts[1] == "TYPE":
                types[parts[2]] = parts[3].strip()
            continue
        m = _SAMPLE_RE.match(line)
        assert m, "metrics line %d malformed: %r" % (n, line)
        labels = {}
        if m.group(3):
            pos, raw = 0, m.group(3)
            while pos < len(raw):
                lm = _LABEL_RE.match(raw, pos)
                assert lm, "metrics line %d: bad labels %r" % (n, raw)
                labels[lm.group(1)] = lm.group(2)
                pos = lm.end()
        samples.append((m.group(1), labels, float(m.group(4))))
    return {"types": types, "samples": samples}


def values(parsed, name, **labels):
    return [v for (n, l, v) in parsed["samples"] if n == name and all(l.get(k) == x for k, x in labels.items())]


def value(parsed, name, **labels):
    vs = values(parsed, name, **labels)
    assert len(vs) == 1, "expected one sample %s%r, found %r" % (name, labels, vs)
    return vs[0]


def _apt_download_prometheus(workdir):
    def dl():
        return subprocess.run(["apt-get", "download", "prometheus"], cwd=workdir, capture_output=True, timeout=300)
    r = dl()
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300)
        r = dl()
    debs = glob.glob(os.path.join(workdir, "prometheus_*.deb"))
    if r.returncode != 0 or not debs:
        raise RuntimeError("apt-get download prometheus failed: %s" % r.stderr.decode(errors="replace")[-2000:])
    return debs[0]


_tool_lock = threading.Lock()


def prometheus_tool(name):
    """Path of `promtool` or `prometheus`: on PATH, else in ~/.cache/ferrobus/tools, else taken out of
    Debian's prometheus package (downloaded, not installed: no service is set up). None if impossible."""
    with _tool_lock:
        p = shutil.which(name)
        if p:
            return p
        cached = os.path.join(TOOLS, name)
        if os.access(cached, os.X_OK):
            return cached
        work = tempfile.mkdtemp(prefix="ferrobus-promdeb-")
        try:
            os.chmod(work, 0o777)  # apt's _apt user writes the download here
            deb = _apt_download_prometheus(work)
            subprocess.run(["dpkg-deb", "-x", deb, os.path.join(work, "x")], check=True, capture_output=True)
            os.makedirs(TOOLS, exist_ok=True)
            for tool in ("promtool", "prometheus"):
                dst = os.path.join(TOOLS, tool)
                if not os.access(dst, os.X_OK):
                    tmp = dst + ".tmp"
                    shutil.copyfile(os.path.join(work, "x", "usr", "bin", tool), tmp)
                    os.chmod(tmp, 0o755)
                    os.replace(tmp, dst)
        except Exception as e:  # noqa: BLE001
            print("could not obtain %s: %s" % (name, e))
            return None
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return cached if os.access(cached, os.X_OK) else None


class PrometheusServer:
    """A Prometheus server on a free loopback port, scraping the given targets every second, with its
    own storage directory."""

    def __init__(self, workdir, targets, job="ferrobus"):
        self.exe = prometheus_tool("prometheus")
        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.port = free_port()
        self.config = os.path.join(self.workdir, "prometheus.yml")
        with open(self.config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: %s\n    metrics_path: /metrics\n    static_configs:\n"
                    "      - targets: [%s]\n" % (job, ", ".join('"%s"' % t for t in targets)))
        self.log_path = os.path.join(self.workdir, "prometheus.log")
        self.proc = None

    def start(self):
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [self.exe, "--config.file", self.config, "--storage.tsdb.path", os.path.join(self.workdir, "tsdb"),
             "--web.listen-address", "127.0.0.1:%d" % self.port, "--log.level", "info"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir)
        return self

    def log_tail(self, n=4000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")[-n:]
        except OSError:
            return ""

    def query(self, promql):
        url = "http://127.0.0.1:%d/api/v1/query?%s" % (self.port, urllib.parse.urlencode({"query": promql}))
        with urllib.request.urlopen(url, timeout=5) as r:
            doc = json.loads(r.read())
        assert doc.get("status") == "success", doc
        return doc["data"]["result"]

    def wait_query(self, promql, pred, timeout=30.0):
        """Polls an instant query until pred(result) is truthy; returns the result."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("prometheus exited (%r):\n%s" % (self.proc.returncode, self.log_tail()))
            try:
                last = self.query(promql)
                if pred(last):
                    return last
            except (urllib.error.URLError, ConnectionError, socket.timeout) as e:
                last = e
            time.sleep(0.25)
        raise AssertionError("prometheus query %r: condition not met within %.0fs; last result %r\n%s"
                             % (promql, timeout, last, self.log_tail()))

    def stop(self):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
