"""Fixtures that start a real ferrobus broker per test (see ../INTERFACE.md).

Usage in a test:

    def test_x(broker):                      # default config
        broker.amqp_url                      # "amqp://127.0.0.1:PORT"

    @pytest.mark.broker(amqp={"idle_timeout_ms": 2000}, queues=["a", "b"])
    def test_y(broker): ...

    def test_z(start_broker):                # factory, several brokers or per-call config
        b = start_broker(amqp={"require_sasl": True})

`amqp` entries override the [amqp] table, `queues` replaces the queue list
(default q1, q2), `auth_keys` replaces the [[auth.keys]] list.
"""

import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

DEFAULT_BIN = "/root/.cache/ferrobus/target/release/ferrobus"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0

KEY_NAME = "RootManageSharedAccessKey"
KEY_VALUE = "SAS_KEY_VALUE"

DEFAULT_AMQP = {
    "idle_timeout_ms": 120000,
    "max_frame_size": 262144,
    "max_message_size": 104857600,
    "require_sasl": False,
    "link_credit": 1000,
}
DEFAULT_QUEUES = ["q1", "q2"]
DEFAULT_KEYS = [(KEY_NAME, KEY_VALUE)]

READY_RE = re.compile(r"^READY amqp=(\S+):(\d+) http=(\S+):(\d+)\s*$")


def broker_bin():
    return os.environ.get("FERROBUS_BIN") or DEFAULT_BIN


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError("unsupported TOML value %r" % (v,))


def render_config(amqp=None, queues=None, auth_keys=None):
    a = dict(DEFAULT_AMQP)
    a.update(amqp or {})
    lines = ["[amqp]"]
    for k, v in a.items():
        lines.append("%s = %s" % (k, _toml_value(v)))
    lines.append("")
    for name, key in (DEFAULT_KEYS if auth_keys is None else auth_keys):
        lines += ["[[auth.keys]]", "name = %s" % _toml_value(name), "key = %s" % _toml_value(key), ""]
    for q in (DEFAULT_QUEUES if queues is None else queues):
        lines += ["[[queues]]", "name = %s" % _toml_value(q), ""]
    return "\n".join(lines)


class Broker:
    """One running ferrobus process."""

    def __init__(self, workdir, amqp=None, queues=None, auth_keys=None):
        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.config_path = os.path.join(self.workdir, "ferrobus.toml")
        self.data_dir = os.path.join(self.workdir, "data")
        os.makedirs(self.data_dir, exist_ok=True)
        self.stderr_path = os.path.join(self.workdir, "stderr.log")
        self.config_text = render_config(amqp, queues, auth_keys)
        with open(self.config_path, "w") as f:
            f.write(self.config_text)
        self.stdout_lines = []
        self.proc = None
        self.amqp_host = self.http_host = None
        self.amqp_port = self.http_port = None
        self.exit_code = None

    # -- lifecycle ---------------------------------------------------------
    def start(self):
        exe = broker_bin()
        if not os.path.exists(exe):
            pytest.fail("ferrobus binary not found: %s (set FERROBUS_BIN)" % exe, pytrace=False)
        self._stderr_f = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [exe, "--config", self.config_path, "--data-dir", self.data_dir,
             "--amqp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr_f,
        )
        ready = threading.Event()

        def pump():
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.stdout_lines.append(line)
                m = READY_RE.match(line)
                if m and not ready.is_set():
                    self.amqp_host, self.amqp_port = m.group(1), int(m.group(2))
                    self.http_host, self.http_port = m.group(3), int(m.group(4))
                    ready.set()

        t = threading.Thread(target=pump, name="ferrobus-stdout", daemon=True)
        t.start()
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if ready.wait(0.05):
                break
            if self.proc.poll() is not None:
                t.join(1)
                break
        if not ready.is_set():
            rc = self.proc.poll()
            if rc is None:
                self.proc.kill()
                self.proc.wait()
            pytest.fail(
                "broker did not print READY within %.0fs (exit=%r)\nstdout: %r\nstderr tail:\n%s\nconfig:\n%s"
                % (READY_TIMEOUT, rc, self.stdout_lines, self.stderr_tail(), self.config_text),
                pytrace=False,
            )
        return self

    def stop(self):
        """SIGTERM; returns the exit code (None if it had to be killed)."""
        if self.proc is None or self.exit_code is not None:
            return self.exit_code
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.exit_code = self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.exit_code = None
                self._stderr_f.close()
                return "hung (killed after %.0fs)" % STOP_TIMEOUT
        else:
            self.exit_code = self.proc.returncode
        self._stderr_f.close()
        return self.exit_code

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    # -- addresses ---------------------------------------------------------
    @property
    def amqp_addr(self):
        return (self.amqp_host, self.amqp_port)

    @property
    def amqp_url(self):
        return "amqp://%s:%d" % (self.amqp_host, self.amqp_port)

    @property
    def http_url(self):
        return "http://%s:%d" % (self.http_host, self.http_port)

    def http_get(self, path, timeout=10):
        """(status, headers, body bytes); HTTP errors are returned, not raised."""
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    # -- diagnostics -------------------------------------------------------
    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stderr_tail(self, limit=20000):
        s = self.stderr_text()
        return s if len(s) <= limit else "...(truncated)...\n" + s[-limit:]


@pytest.fixture
def start_broker(request, tmp_path):
    brokers = []
    request.node._ferrobus_brokers = brokers

    def start(amqp=None, queues=None, auth_keys=None):
        b = Broker(tmp_path / ("broker%d" % len(brokers)), amqp, queues, auth_keys)
        brokers.append(b)
        return b.start()

    yield start

    problems = []
    for b in brokers:
        rc = b.stop()
        if rc != 0:
            problems.append("broker %s exited with %r on SIGTERM (expected 0)\nstderr tail:\n%s"
                            % (b.workdir, rc, b.stderr_tail()))
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def broker(request, start_broker):
    marker = request.node.get_closest_marker("broker")
    kwargs = dict(marker.kwargs) if marker else {}
    return start_broker(**kwargs)


def pytest_configure(config):
    config.addinivalue_line("markers", "broker(amqp=None, queues=None, auth_keys=None): broker config for the test")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for i, b in enumerate(getattr(item, "_ferrobus_brokers", [])):
            rep.sections.append(("ferrobus[%d] stderr (%s)" % (i, call.when), b.stderr_tail()))
            if b.stdout_lines:
                rep.sections.append(("ferrobus[%d] stdout" % i, "\n".join(b.stdout_lines)))
