"""ferrobus-bench against a real Ferrobus process (RocksDB on disk, loopback)."""
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

BROKER = os.environ["FERROBUS_BIN"]
BENCH = os.environ["FERROBUS_BENCH"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIG = """
[storage]
kind = "rocksdb"
[[queues]]
name = "bench"
[[queues]]
name = "bench.1"
[[queues]]
name = "bench.2"
[[queues]]
name = "bench.sessions"
requires_session = true
"""


class Broker:
    def __init__(self, work):
        cfg = os.path.join(work, "ferrobus.toml")
        with open(cfg, "w") as f:
            f.write(CONFIG)
        self.out = open(os.path.join(work, "stdout"), "w+")
        self.err = open(os.path.join(work, "stderr"), "w+")
        self.proc = subprocess.Popen(
            [BROKER, "--config", cfg, "--data-dir", os.path.join(work, "data"),
             "--amqp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
            stdout=self.out, stderr=self.err)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.out.seek(0)
            m = re.search(r"^READY amqp=(\S+) http=(\S+)", self.out.read(), re.M)
            if m:
                self.amqp, self.http = m.group(1), m.group(2)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.err.seek(0)
        raise RuntimeError("broker did not start: " + self.err.read())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def bench(*args, expect_ok=True):
    r = subprocess.run([BENCH, *args, "--json", "--timeout", "60"],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "RUST_BACKTRACE": "0"})
    if not expect_ok:
        return r
    assert r.returncode == 0, f"ferrobus-bench {args} failed: {r.stderr}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    work = tempfile.mkdtemp(prefix="ferrobus-bench-check-")
    broker = Broker(work)
    pid = str(broker.proc.pid)
    results = []
    checks = []

    def check(fn):
        checks.append(fn)
        return fn

    @check
    def unsettled_window_counts_add_up_and_latency_is_reported():
        r = bench("--addr", broker.amqp, "--queue", "bench", "--count", "3000", "--window", "50",
                  "--broker-pid", pid, "--metrics", broker.http)
        assert r["sent"] == 3000 and r["received"] == 3000, r
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"], lat
        assert r["recv_rate"] > 0 and r["send_rate"] > 0, r
        assert r["broker_rss_peak_kib"] > 0 and r["broker_cores"] is not None, r
        # every message was enqueued, dispatched and settled through group commits
        assert r["commits"] > 0 and r["mean_requests_per_commit"] >= 1, r
        results.append(("w100", "1 producer / 1 consumer", r))

    @check
    def presettled_messages_all_arrive():
        r = bench("--addr", broker.amqp, "--queue", "bench", "--count", "2000", "--presettled")
        assert r["sent"] == 2000 and r["received"] == 2000, r

    @check
    def several_queues_producers_and_consumers():
        r = bench("--addr", broker.amqp, "--queue", "bench", "--queues", "2", "--producers", "2",
                  "--consumers", "2", "--count", "700", "--window", "20")
        assert r["sent"] == 1400 and r["received"] == 1400, r

    @check
    def a_backlog_fills_then_drains_exactly():
        r = bench("--addr", broker.amqp, "--queue", "bench", "--producers", "2", "--consumers", "0",
                  "--count", "1500", "--broker-pid", pid)
        assert r["sent"] == 3000 and r["received"] == 0, r
        assert "latency_ms" not in r, r
        results.append(("fill", "backlog: fill", r))
        r = bench("--addr", broker.amqp, "--queue", "bench", "--producers", "0",
                  "--count", "3000", "--credit", "300", "--broker-pid", pid)
        assert r["received"] == 3000 and r["recv_rate"] > 0, r
        results.append(("drain", "backlog: drain", r))
        # nothing is left: a fixed-rate run now receives exactly what it sends
        r = bench("--addr", broker.amqp, "--queue", "bench", "--count", "200", "--rate", "400",
                  "--window", "400", "--duration", "0.5")
        assert r["sent"] == r["received"] > 0, r

    @check
    def session_receivers_take_every_session_and_get_it_in_order():
        # the bench fails the run if a session's messages come out of order
        r = bench("--addr", broker.amqp, "--queue", "bench.sessions", "--sessions", "50",
                  "--count", "500", "--consumers", "0", "--window", "50")
        assert r["sent"] == 500 and r["received"] == 0, r
        r = bench("--addr", broker.amqp, "--queue", "bench.sessions", "--sessions", "50",
                  "--count", "500", "--producers", "0", "--consumers", "4",
                  "--session-state", "20", "--broker-pid", pid)
        assert r["received"] == 500 and r["sessions"] == 50, r
        assert r["session_state_secs"] > 0, r
        # a session queue refuses a plain receiver: an error, not a hang
        r = bench("--addr", broker.amqp, "--queue", "bench.sessions", "--producers", "0",
                  "--count", "1", expect_ok=False)
        assert r.returncode != 0 and "requires sessions" in r.stderr, r.stderr

    @check
    def idle_connections_report_memory_per_connection():
        r = bench("--addr", broker.amqp, "--idle", "40", "--hold", "0.5", "--broker-pid", pid)
        idle = r["idle"]
        assert idle["connections"] == 40, r
        assert idle["rss_before_kib"] > 0 and idle["rss_after_kib"] > 0, r
        assert idle["per_connection_kib"] is not None, r
        results.append(("idle", "idle connections", r))

    @check
    def a_link_the_broker_refuses_is_an_error():
        r = bench("--addr", broker.amqp, "--queue", "no-such-queue", "--count", "10",
                  expect_ok=False)
        assert r.returncode != 0, r
        assert "no-such-queue" in r.stderr and "refused" in r.stderr, r.stderr

    @check
    def the_noop_peer_shows_the_generators_ceiling():
        r = bench("--noop", "--count", "5000", "--window", "100")
        assert r["sent"] == 5000 and r["received"] >= 5000, r
        assert r["latency_ms"]["p50"] > 0, r

    @check
    def the_bench_table_renders_from_the_results():
        path = os.path.join(work, "results.jsonl")
        with open(path, "w") as f:
            for scen, title, r in results:
                for b in ("ferrobus", "peer"):
                    f.write(json.dumps({"broker": b, "scenario": scen, "title": title,
                                        "fsync_per_s": 1000, "result": r}) + "\n")
        t = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench-table.py"), path],
                           capture_output=True, text=True, check=True).stdout
        assert "| 1 producer / 1 consumer | msg/s |" in t, t
        assert "1.00×" in t, t  # the same numbers on both sides
        assert "KiB per connection" in t, t

    passed = failed = 0
    try:
        for c in checks:
            try:
                c()
                passed += 1
                print(f"PASS {c.__name__}")
            except Exception:
                failed += 1
                print(f"FAIL {c.__name__}")
                traceback.print_exc()
    finally:
        broker.stop()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
