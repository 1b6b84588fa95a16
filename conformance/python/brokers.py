"""The ferrobus process the conformance tests talk to (see ../INTERFACE.md).

One class, Broker, does everything the suite needs from a broker process; the pytest fixtures
in conftest.py (`broker`, `start_broker`, `ops_broker`) and crash_soak.py's script build on it.

    b = Broker(workdir, amqp={"require_sasl": True}, queues=["q1", {"name": "q2", "max_delivery_count": 3}],
               storage="rocksdb", extra_toml="[log]\\nlevel = \\"warn\\"\\n", args=["--tls-cert", c],
               env={"RUST_LOG": "trace"}, clean_env=True).start()
    b.amqp_url, b.amqp_addr, b.amqps_addr, b.http_url, b.http_get("/health"), b.endpoint
    b.stop() / b.kill9() / b.signal(sig) + b.wait_exit(t) / b.restart()   # same data dir
    b.stderr_text(), b.run_stderr(), b.wait_stderr(pred), b.panics()

Every run (start) writes its stderr to a file of its own (stderr.N.log in the work dir).
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
TLS_RE = re.compile(r"^TLS amqps=(\S+):(\d+)\s*$")
PANIC_MARKERS = ("panicked at", "failed to join thread")


def broker_bin():
    """The broker executable: $FERROBUS_BIN, else the release build in the shared target dir."""
    return os.environ.get("FERROBUS_BIN") or DEFAULT_BIN


def clean_environ(extra=None):
    """os.environ without RUST_LOG and FERROBUS__* (so only the test decides the log level and
    config overrides), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "RUST_LOG" and not k.startswith("FERROBUS__")}
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


# --------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------
def toml_value(v):
    """A bool, int or str as a TOML literal."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError("unsupported TOML value %r" % (v,))


def render_config(amqp=None, queues=None, auth_keys=None, storage=None, extra_toml=""):
    """ferrobus.toml text.

    amqp        entries that override DEFAULT_AMQP in [amqp]
    queues      replaces DEFAULT_QUEUES; each entry a name or a dict with `name` and queue settings
                (max_delivery_count, lock_duration_ms, ...)
    auth_keys   replaces the [[auth.keys]] list: (name, key) pairs
    storage     [storage] kind, if given ("rocksdb", "memory")
    extra_toml  appended as is
    """
    a = dict(DEFAULT_AMQP)
    a.update(amqp or {})
    lines = ["[amqp]"] + ["%s = %s" % (k, toml_value(v)) for k, v in a.items()] + [""]
    for name, key in (DEFAULT_KEYS if auth_keys is None else auth_keys):
        lines += ["[[auth.keys]]", "name = %s" % toml_value(name), "key = %s" % toml_value(key), ""]
    for q in (DEFAULT_QUEUES if queues is None else queues):
        q = {"name": q} if isinstance(q, str) else q
        lines += ["[[queues]]", "name = %s" % toml_value(q["name"])]
        lines += ["%s = %s" % (k, toml_value(v)) for k, v in q.items() if k != "name"] + [""]
    if storage is not None:
        lines += ["[storage]", "kind = %s" % toml_value(storage), ""]
    text = "\n".join(lines)
    return text + "\n" + extra_toml + "\n" if extra_toml else text


# --------------------------------------------------------------------------
# the process
# --------------------------------------------------------------------------
class Broker:
    """One ferrobus process on a work dir of its own; can be stopped, killed and started again on
    the same data dir.

    amqp, queues, auth_keys, storage, extra_toml  rendered into ferrobus.toml (render_config)
    config_file  use this file as --config instead (e.g. an emulator Config.json)
    args         extra command-line flags
    env          environment additions for the process
    clean_env    drop RUST_LOG and FERROBUS__* from the inherited environment first
    """

    def __init__(self, workdir, amqp=None, queues=None, auth_keys=None, storage=None, extra_toml="",
                 config_file=None, args=(), env=None, clean_env=False):
        self.workdir = str(workdir)
        self.data_dir = os.path.join(self.workdir, "data")
        os.makedirs(self.data_dir, exist_ok=True)
        self.storage = storage
        if config_file is None:
            self.config_path = os.path.join(self.workdir, "ferrobus.toml")
            self.config_text = render_config(amqp, queues, auth_keys, storage, extra_toml)
            with open(self.config_path, "w") as f:
                f.write(self.config_text)
        else:
            self.config_path = str(config_file)
            with open(self.config_path) as f:
                self.config_text = f.read()
        self.args = [str(a) for a in args]
        self.env = {k: str(v) for k, v in (env or {}).items()}
        self.clean_env = clean_env
        self.runs = 0
        self.logs = []             # one stderr file per run
        self.proc = None
        self.exit_code = None      # how the latest run ended, once known (int or a description)
        self.ready_seconds = None  # start to READY, latest run
        self._reset_run_state()

    def _reset_run_state(self):
        self.stdout_lines = []
        self.amqp_host = self.http_host = self.amqps_host = None
        self.amqp_port = self.http_port = self.amqps_port = None
        self.tls_line_index = self.ready_line_index = None

    def command(self):
        return [broker_bin(), "--config", self.config_path, "--data-dir", self.data_dir,
                "--amqp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"] + self.args

    def child_env(self):
        if self.clean_env:
            return clean_environ(self.env)
        return dict(os.environ, **self.env)

    # -- lifecycle ---------------------------------------------------------
    def start(self):
        """Starts a run and waits for its READY line (pytest.fail if none comes)."""
        exe = broker_bin()
        if not os.path.exists(exe):
            pytest.fail("ferrobus binary not found: %s (set FERROBUS_BIN)" % exe, pytrace=False)
        if self.alive():
            raise RuntimeError("broker %s is still running" % self.workdir)
        self.runs += 1
        self.stderr_path = os.path.join(self.workdir, "stderr.%d.log" % self.runs)
        self.logs.append(self.stderr_path)
        self.exit_code = None
        self._reset_run_state()
        t0 = time.monotonic()
        self._stderr_f = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._stderr_f, env=self.child_env())
        if not self._wait_ready():
            rc = self.proc.poll()
            if rc is None:
                self.proc.kill()
                self.proc.wait()
            self._ended("no READY")
            pytest.fail("broker did not print READY within %.0fs (exit=%r)\ncommand: %s\nstdout: %r\n"
                        "stderr tail:\n%s\nconfig:\n%s"
                        % (READY_TIMEOUT, rc, " ".join(self.command()), self.stdout_lines,
                           self.stderr_tail(), self.config_text), pytrace=False)
        self.ready_seconds = time.monotonic() - t0
        if self.storage == "rocksdb" and not os.path.isdir(os.path.join(self.data_dir, "db")):
            raise AssertionError("broker %s printed READY but %s/db does not exist: is %s the RocksDB build?"
                                 % (self.workdir, self.data_dir, broker_bin()))
        return self

    def _wait_ready(self):
        """Reads stdout on a thread of its own (for the whole run); True once READY was printed."""
        ready = threading.Event()
        proc = self.proc

        def pump():
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.stdout_lines.append(line)
                m = TLS_RE.match(line)
                if m and self.tls_line_index is None:
                    self.amqps_host, self.amqps_port = m.group(1), int(m.group(2))
                    self.tls_line_index = len(self.stdout_lines) - 1
                m = READY_RE.match(line)
                if m and not ready.is_set():
                    self.amqp_host, self.amqp_port = m.group(1), int(m.group(2))
                    self.http_host, self.http_port = m.group(3), int(m.group(4))
                    self.ready_line_index = len(self.stdout_lines) - 1
                    ready.set()

        t = threading.Thread(target=pump, name="ferrobus-stdout", daemon=True)
        t.start()
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if ready.wait(0.05):
                break
            if proc.poll() is not None:
                t.join(1)
                break
        return ready.is_set()

    def _ended(self, exit_code):
        self.exit_code = exit_code
        self._stderr_f.close()
        return exit_code

    def stop(self):
        """SIGTERM and wait; returns the exit code (a description if it had to be killed). A run
        that has already ended returns how it ended."""
        if self.proc is None or self.exit_code is not None:
            return self.exit_code
        if self.proc.poll() is not None:
            return self._ended(self.proc.returncode)
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self._ended(self.proc.wait(STOP_TIMEOUT))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return self._ended("hung (killed after %.0fs)" % STOP_TIMEOUT)

    def restart(self):
        """Graceful stop (SIGTERM, must exit 0) if running, then start again on the same data dir."""
        if self.alive():
            rc = self.stop()
            assert rc == 0, "broker exited with %r on SIGTERM\n%s" % (rc, self.stderr_tail())
        return self.start()

    def kill9(self):
        """SIGKILL and reap; no shutdown code runs in the broker."""
        assert self.alive(), "broker is not running (exit %r)" % (self.proc and self.proc.poll(),)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._ended("killed (SIGKILL)")

    def signal(self, sig):
        assert self.alive(), "broker is not running (exit %r)\n%s" % (self.proc and self.proc.poll(),
                                                                     self.stderr_tail())
        self.proc.send_signal(sig)

    def wait_exit(self, timeout):
        """Waits for the process to end by itself; returns its exit code (None if still running)."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self._ended(rc)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def status_kb(self, field):
        """A /proc/<pid>/status field in kB (VmRSS, VmHWM)."""
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise KeyError(field)

    # -- addresses ---------------------------------------------------------
    @property
    def amqp_addr(self):
        return (self.amqp_host, self.amqp_port)

    @property
    def amqps_addr(self):
        return (self.amqps_host, self.amqps_port)

    @property
    def amqp_url(self):
        return "amqp://%s:%d" % (self.amqp_host, self.amqp_port)

    @property
    def endpoint(self):
        """host:port of the AMQP listener, as a Service Bus connection string names it."""
        return "%s:%d" % (self.amqp_host, self.amqp_port)

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
    def run_stderr(self, run=None):
        """stderr of one run (default: the latest)."""
        try:
            with open(self.logs[(run or self.runs) - 1], "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stderr_text(self):
        """stderr of every run, each under a `===== run N =====` line."""
        return "\n".join("===== run %d (%s) =====\n%s" % (i, os.path.basename(p), self.run_stderr(i))
                         for i, p in enumerate(self.logs, 1))

    def stderr_tail(self, limit=20000):
        s = self.stderr_text()
        return s if len(s) <= limit else "...(truncated)...\n" + s[-limit:]

    def wait_stderr(self, pred, timeout=10.0, what="a log line"):
        """Polls this run's stderr until pred(text) is truthy; returns the text."""
        deadline = time.monotonic() + timeout
        while True:
            t = self.run_stderr()
            if pred(t):
                return t
            if time.monotonic() > deadline:
                raise AssertionError("timed out after %.0fs waiting for %s in stderr:\n%s"
                                     % (timeout, what, t[-4000:]))
            time.sleep(0.1)

    def panics(self):
        """Lines of every run's stderr that report a Rust panic."""
        return [ln for ln in self.stderr_text().splitlines() if any(m in ln for m in PANIC_MARKERS)]

    def teardown_problems(self):
        """What is wrong with this broker at the end of a test: a run the test did not end itself
        must stop on SIGTERM with exit code 0, and no run may have panicked."""
        problems = []
        if self.proc is not None and self.exit_code is None:
            rc = self.stop()
            if rc != 0:
                problems.append("broker %s exited with %r on SIGTERM (expected 0)\nstderr tail:\n%s"
                                % (self.workdir, rc, self.stderr_tail()))
        panics = self.panics()
        if panics:
            problems.append("broker %s panicked (%d runs):\n  %s"
                            % (self.workdir, self.runs, "\n  ".join(panics[:10])))
        return problems
