"""TLS: the AMQPS listener (TLS first, or the AMQP TLS header first), the TLS upgrade on the plain
listener, certificate verification by clients, and certificate reloads (SIGHUP, file change, a bad
replacement keeps the old certificate).

Certificates are made at test time with the openssl CLI (CA + server certificate for 127.0.0.1 and
localhost). python-qpid-proton here has no TLS, so the client is Python's ssl module over a raw
socket with amqp_raw for the frames: SASL, Open, Begin, Attach, a message sent and received back.
"""

import os
import shutil
import signal
import ssl
import time
from types import SimpleNamespace

import pytest

from amqp_raw import ACCEPTED, AMQP_HEADER, OPEN, TLS_HEADER, PeerClosed, RawPeer, frame, perf
from helpers import roundtrip
from ops_helpers import (CA, RawSession, TlsPeer, client_context, raw_roundtrip,
                         sasl_anonymous, sasl_plain, toml_str)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_a = CA(d, "a")
    ca_b = CA(d, "b", key_type="rsa")
    return SimpleNamespace(
        ca_a=ca_a,
        ca_b=ca_b,
        srv_a=ca_a.issue("srv-a"),                                       # ECDSA P-256, PKCS#8 key
        srv_b=ca_b.issue("srv-b", key_type="rsa", traditional_key=True),  # RSA, PKCS#1 key
        dir=str(d),
    )


def start_tls(ops_broker, tmp_path, cert, via="flags", **kw):
    """A broker serving `cert` from files of its own (tests replace them), TLS set by flags or TOML."""
    live = tmp_path / "live"
    live.mkdir(exist_ok=True)
    c, k = str(live / "tls.crt"), str(live / "tls.key")
    shutil.copyfile(cert.cert, c)
    shutil.copyfile(cert.key, k)
    if via == "flags":
        b = ops_broker(args=["--amqps-listen", "127.0.0.1:0", "--tls-cert", c, "--tls-key", k], **kw)
    else:
        b = ops_broker(extra_toml="[tls]\namqps_listen = \"127.0.0.1:0\"\ncert = %s\nkey = %s\n"
                       % (toml_str(c), toml_str(k)), **kw)
    assert b.amqps_port, "TLS is configured but stdout has no 'TLS amqps=HOST:PORT' line: %r" % b.stdout_lines
    assert b.tls_line_index < b.ready_line_index, "the TLS line must come before READY: %r" % b.stdout_lines
    assert b.amqps_host == "127.0.0.1", b.stdout_lines
    b.cert_path, b.key_path = c, k
    return b


def served_cert(addr, ctx, tls_header=False):
    """DER of the certificate a new TLS connection sees (raises ssl.SSLError when not verified)."""
    with TlsPeer(addr, ctx, tls_header=tls_header) as p:
        return p.peer_cert_der


def wait_for_cert(addr, cert, ctx, timeout, tls_header=False):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            if served_cert(addr, ctx, tls_header) == cert.der:
                return
            last = "another certificate"
        except ssl.SSLError as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError("new connections to %s:%d did not get %s within %.0fs (last: %r)"
                                 % (addr[0], addr[1], os.path.basename(cert.cert), timeout, last))
        time.sleep(0.2)


def write_garbage(path, text):
    """Atomically replaces the file at path with text, with a clearly later modification time."""
    st = os.stat(path)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    t = max(time.time_ns(), st.st_mtime_ns + 2_000_000_000)
    os.utime(tmp, ns=(t, t))
    os.replace(tmp, path)


def assert_keeps_serving(b, cert, ctx, seconds):
    """For `seconds`, every new connection (AMQPS and plain-listener upgrade) gets `cert`."""
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        for addr, hdr in ((b.amqps_addr, False), (b.amqp_addr, True)):
            try:
                der = served_cert(addr, ctx, hdr)
            except ssl.SSLError as e:
                raise AssertionError("after a bad replacement, a TLS connection to %r (header=%r) failed: %r "
                                     "(the old certificate must stay)" % (addr, hdr, e))
            assert der == cert.der, "after a bad replacement the broker serves another certificate"
            n += 1
        time.sleep(0.4)
    assert b.alive(), "broker died after a bad certificate replacement:\n%s" % b.stderr_tail()
    return n


# ---------------------------------------------------------------------------
# the AMQPS listener
# ---------------------------------------------------------------------------
def test_amqps_direct_tls_sasl_roundtrip(ops_broker, pki, tmp_path):
    b = start_tls(ops_broker, tmp_path, pki.srv_a, via="flags")
    with TlsPeer(b.amqps_addr, pki.ca_a.context()) as p:
        assert p.peer_cert_der == pki.srv_a.der, "the broker serves another certificate"
        assert p.sock.version() in ("TLSv1.2", "TLSv1.3"), p.sock.version()
        sasl_anonymous(p)
        raw_roundtrip(p, "q1", body="over amqps, TLS first")
    # SASL is optional inside TLS too (require_sasl = false): AMQP header straight after the handshake
    with TlsPeer(b.amqps_addr, pki.ca_a.context()) as p:
        raw_roundtrip(p, "q2", body="over amqps without SASL")


def test_amqps_listener_refuses_plaintext_amqp(ops_broker, pki, tmp_path):
    b = start_tls(ops_broker, tmp_path, pki.srv_a, via="flags")
    with RawPeer(b.amqps_addr) as p:
        p.send(AMQP_HEADER + frame(perf(OPEN, "plaintext-on-amqps", "localhost")))
        closed = p.wait_eof(10)
        got = bytes(p.buf)
    assert not got.startswith(b"AMQP"), "the AMQPS listener answered plaintext AMQP with %r" % got[:64]
    assert closed, "the AMQPS listener kept a plaintext AMQP connection open for 10 s (got %r)" % got[:64]
    with TlsPeer(b.amqps_addr, pki.ca_a.context()) as p:  # and it is still serving
        sasl_anonymous(p)
        raw_roundtrip(p, "q1")


def test_amqps_with_amqp_tls_header(ops_broker, pki, tmp_path):
    b = start_tls(ops_broker, tmp_path, pki.srv_a, via="config")
    with TlsPeer(b.amqps_addr, pki.ca_a.context(), tls_header=True) as p:
        assert p.header_reply == TLS_HEADER
        assert p.peer_cert_der == pki.srv_a.der
        assert sasl_plain(p) == 0, "SASL PLAIN with the root key inside TLS"
        raw_roundtrip(p, "q2", body="over amqps after the AMQP TLS header")


def test_plain_listener_tls_upgrade(ops_broker, pki, tmp_path):
    b = start_tls(ops_broker, tmp_path, pki.srv_b, via="config")
    with TlsPeer(b.amqp_addr, pki.ca_b.context(), tls_header=True) as p:
        assert p.header_reply == TLS_HEADER
        assert p.peer_cert_der == pki.srv_b.der
        sasl_anonymous(p)
        raw_roundtrip(p, "q1", body="upgraded on the plain listener")
    # plain AMQP keeps working on the plain listener
    assert roundtrip(b, "q2", body="still plain") == "still plain"


def test_tls_header_without_tls_configured_is_refused(ops_broker):
    b = ops_broker()
    with RawPeer(b.amqp_addr) as p:
        p.send(TLS_HEADER)
        try:
            h = p.read_header(5)
        except PeerClosed:
            h = None
        assert h != TLS_HEADER, "broker without a certificate accepted the AMQP TLS header"
        assert p.wait_eof(10), "socket not closed after an unsupported TLS header (got header %r)" % (h,)
    assert roundtrip(b, "q1") == "ping"


# ---------------------------------------------------------------------------
# verification by the client
# ---------------------------------------------------------------------------
def test_untrusting_client_fails_the_handshake(ops_broker, pki, tmp_path):
    b = start_tls(ops_broker, tmp_path, pki.srv_a, via="flags")
    untrusting = {
        "another CA": pki.ca_b.context(),
        "system trust store": client_context(system=True),
        "no CA at all": client_context(None),
    }
    for what, ctx in untrusting.items():
        for addr, hdr in ((b.amqps_addr, False), (b.amqps_addr, True), (b.amqp_addr, True)):
            with pytest.raises(ssl.SSLCertVerificationError):
                TlsPeer(addr, ctx, tls_header=hdr).close()
                pytest.fail("client trusting %s verified the broker (%r, header=%r)" % (what, addr, hdr))
    # the hostname is checked too: the certificate names 127.0.0.1 and localhost only
    with pytest.raises(ssl.SSLCertVerificationError):
        TlsPeer(b.amqps_addr, pki.ca_a.context(), server_hostname="not-this-host.example").close()
    # a trusting client works, on both listeners
    with TlsPeer(b.amqps_addr, pki.ca_a.context()) as p:
        sasl_anonymous(p)
        raw_roundtrip(p, "q1")
    with TlsPeer(b.amqp_addr, pki.ca_a.context(), tls_header=True) as p:
        sasl_anonymous(p)
        raw_roundtrip(p, "q2")


# ---------------------------------------------------------------------------
# reloads
# ---------------------------------------------------------------------------
def test_cert_reload_on_sighup(ops_broker, pki, tmp_path):
    b = start_tls(ops_broker, tmp_path, pki.srv_a, via="flags")
    # a connection made before the reload
    old = TlsPeer(b.amqps_addr, pki.ca_a.context())
    try:
        sasl_anonymous(old)
        s = RawSession(old, "before-reload")
        st = s.send("q1", "sent before the reload")
        assert st is not None and st.code == ACCEPTED, st
        # new files with the old modification times: only the signal can make the broker notice
        pki.srv_b.install(b.cert_path, b.key_path, keep_mtime=True)
        b.signal(signal.SIGHUP)
        wait_for_cert(b.amqps_addr, pki.srv_b, pki.ca_b.context(), timeout=5)
        wait_for_cert(b.amqp_addr, pki.srv_b, pki.ca_b.context(), timeout=5, tls_header=True)
        with pytest.raises(ssl.SSLCertVerificationError):
            TlsPeer(b.amqps_addr, pki.ca_a.context()).close()
        with TlsPeer(b.amqps_addr, pki.ca_b.context()) as p:
            sasl_anonymous(p)
            raw_roundtrip(p, "q2", body="after the SIGHUP reload")
        # the connection from before the reload goes on
        body, _ = s.receive("q1")
        assert body == "sent before the reload"
        s.close()
    finally:
        old.close()
    assert b.alive()


def test_cert_reload_when_files_change(ops_broker, pki, tmp_path):
    b = start_tls(ops_broker, tmp_path, pki.srv_a, via="config")
    assert served_cert(b.amqps_addr, pki.ca_a.context()) == pki.srv_a.der
    pki.srv_b.install(b.cert_path, b.key_path)  # no signal
    wait_for_cert(b.amqps_addr, pki.srv_b, pki.ca_b.context(), timeout=20)
    with pytest.raises(ssl.SSLCertVerificationError):
        TlsPeer(b.amqps_addr, pki.ca_a.context()).close()
    with TlsPeer(b.amqps_addr, pki.ca_b.context(), tls_header=True) as p:
        assert sasl_plain(p) == 0
        raw_roundtrip(p, "q1", body="after the file-change reload")


def test_bad_replacement_keeps_the_old_cert(ops_broker, pki, tmp_path):
    b = start_tls(ops_broker, tmp_path, pki.srv_a, via="flags")
    ctx = pki.ca_a.context()
    # 1. the certificate file becomes garbage (file change + SIGHUP)
    write_garbage(b.cert_path, "this is not a certificate\n")
    b.signal(signal.SIGHUP)
    assert_keeps_serving(b, pki.srv_a, ctx, 4.5)
    # 2. a valid certificate whose key is not the one in the key file
    with open(pki.srv_b.cert) as f:
        write_garbage(b.cert_path, f.read())
    b.signal(signal.SIGHUP)
    assert_keeps_serving(b, pki.srv_a, ctx, 4.5)
    # 3. the key file becomes an empty PEM-less file
    write_garbage(b.key_path, "")
    b.signal(signal.SIGHUP)
    assert_keeps_serving(b, pki.srv_a, ctx, 2.5)
    with TlsPeer(b.amqps_addr, ctx) as p:
        sasl_anonymous(p)
        raw_roundtrip(p, "q1", body="old certificate still served")
    # a good pair afterwards is taken
    pki.srv_b.install(b.cert_path, b.key_path)
    b.signal(signal.SIGHUP)
    wait_for_cert(b.amqps_addr, pki.srv_b, pki.ca_b.context(), timeout=10)
