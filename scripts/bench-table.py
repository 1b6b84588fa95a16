#!/usr/bin/env python3
"""Prints the results of scripts/bench (JSON lines) as Markdown tables with Ferrobus's ratio
to each peer broker. Higher is better for rates; lower for latency, memory and CPU."""
import json
import os
import sys
import time

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
brokers = []
for r in rows:
    if r["broker"] not in brokers:
        brokers.append(r["broker"])
peers = [b for b in brokers if b != "ferrobus"]
by = {(r["broker"], r["scenario"]): r for r in rows}
titles = {}
for r in rows:
    titles.setdefault(r["scenario"], r["title"])


def get(b, s, path):
    r = by.get((b, s))
    if r is None:
        return None
    v = r["result"]
    for k in path:
        if not isinstance(v, dict) or v.get(k) is None:
            return None
        v = v[k]
    return v


# (scenario, label, path in the result, scale, format, higher is better)
METRICS = [
    ("w100", "msg/s", ["recv_rate"], 1, "{:,.0f}", True),
    ("w100", "p99 ms", ["latency_ms", "p99"], 1, "{:.2f}", False),
    ("w100", "disk bytes/msg", ["broker_write_bytes_per_sent"], 1, "{:,.0f}", False),
    ("w1", "msg/s", ["recv_rate"], 1, "{:,.0f}", True),
    ("w1", "p99 ms", ["latency_ms", "p99"], 1, "{:.2f}", False),
    ("q4", "msg/s", ["recv_rate"], 1, "{:,.0f}", True),
    ("q4", "p99 ms", ["latency_ms", "p99"], 1, "{:.2f}", False),
    ("lat1k", "p50 ms", ["latency_ms", "p50"], 1, "{:.2f}", False),
    ("lat1k", "p99 ms", ["latency_ms", "p99"], 1, "{:.2f}", False),
    ("lat1k", "p99.9 ms", ["latency_ms", "p99.9"], 1, "{:.2f}", False),
    ("fill", "msg/s", ["send_rate"], 1, "{:,.0f}", True),
    ("fill", "RSS peak MiB", ["broker_rss_peak_kib"], 1 / 1024, "{:.0f}", False),
    ("drain", "msg/s", ["recv_rate"], 1, "{:,.0f}", True),
    ("drain", "RSS peak MiB", ["broker_rss_peak_kib"], 1 / 1024, "{:.0f}", False),
    ("idle", "KiB per connection", ["idle", "per_connection_kib"], 1, "{:.1f}", False),
    ("idle", "RSS MiB", ["idle", "rss_after_kib"], 1 / 1024, "{:.0f}", False),
    ("t5", "delivered msg/s", ["recv_rate"], 1, "{:,.0f}", True),
    ("t5", "published msg/s", ["send_rate"], 1, "{:,.0f}", True),
    ("t5", "disk bytes/published msg", ["broker_write_bytes_per_sent"], 1, "{:,.0f}", False),
    ("t5", "p99 ms", ["latency_ms", "p99"], 1, "{:.2f}", False),
    ("t20", "published msg/s", ["send_rate"], 1, "{:,.0f}", True),
    ("t20", "p99 ms", ["latency_ms", "p99"], 1, "{:.2f}", False),
    ("sfill", "msg/s", ["send_rate"], 1, "{:,.0f}", True),
    ("s8", "msg/s", ["recv_rate"], 1, "{:,.0f}", True),
    ("smany", "RSS MiB", ["broker_rss_end_kib"], 1 / 1024, "{:.0f}", False),
    ("smany", "state set s", ["session_state_secs"], 1, "{:.1f}", False),
    ("srestart", "ready s", ["ready_secs"], 1, "{:.2f}", False),
    ("srestart", "RSS MiB", ["broker_rss_end_kib"], 1 / 1024, "{:.0f}", False),
]


def fmt(fmt_, v):
    return "—" if v is None else fmt_.format(v)


print(f"Ferrobus benchmark: {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
      "durable (fsync before accepted), 1 KiB messages, all on 127.0.0.1")
print()
head = ["scenario", "metric"] + brokers + [f"Ferrobus vs {p}" for p in peers] + ["disk fsync/s"]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for s, label, path, scale, f, higher in METRICS:
    if not any((b, s) in by for b in brokers):
        continue
    vals = {b: get(b, s, path) for b in brokers}
    vals = {b: (v * scale if v is not None else None) for b, v in vals.items()}
    cells = [titles[s], label] + [fmt(f, vals[b]) for b in brokers]
    for p in peers:
        a, o = vals.get("ferrobus"), vals.get(p)
        if a is None or o is None or a == 0 or o == 0:
            cells.append("—")
        else:
            ratio = a / o if higher else o / a
            cells.append(f"{ratio:.2f}×")
    disk = [str(by[(b, s)]["fsync_per_s"]) for b in brokers if (b, s) in by]
    cells.append(" / ".join(disk))
    print("| " + " | ".join(cells) + " |")
print()
print("Ratios are Ferrobus's advantage (>1 is better for Ferrobus): rate ÷ rate, or the peer's "
      "latency/memory ÷ Ferrobus's.")
print()
print("Broker CPU (cores busy over the scenario) and generator CPU per message moved:")
print()
head = ["scenario"] + [f"{b} CPU" for b in brokers] + [f"generator µs/msg ({b})" for b in brokers]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for s in ["w100", "w1", "q4", "lat1k", "fill", "drain"]:
    if not any((b, s) in by for b in brokers):
        continue
    cells = [titles[s]]
    cells += [fmt("{:.2f}", get(b, s, ["broker_cores"])) for b in brokers]
    cells += [fmt("{:.1f}", get(b, s, ["bench_cpu_us_per_msg"])) for b in brokers]
    print("| " + " | ".join(cells) + " |")

# Topics against the queue scenario of the same run (issue 11's targets: delivered >= 3x, disk
# bytes per published message < 2x, SQL-filtered publishing >= 0.7x).
q = get("ferrobus", "w100", ["recv_rate"])
qd = get("ferrobus", "w100", ["broker_write_bytes_per_sent"])
lines = []
for s_, path, base, what in [
    ("t5", ["recv_rate"], q, "t5 delivered / w100 delivered"),
    ("t5", ["broker_write_bytes_per_sent"], qd, "t5 disk bytes per published / w100 per sent"),
    ("t20", ["send_rate"], q, "t20 published / w100 delivered"),
]:
    v = get("ferrobus", s_, path)
    if v is not None and base:
        lines.append(f"- {what}: {v / base:.2f}×")
if lines:
    print()
    print("Topics against the 1P/1C queue scenario of this run:")
    print("\n".join(lines))

# Sessions against the queue scenarios of the same run (issue 12's target: >= 0.5x w100).
s8 = get("ferrobus", "s8", ["recv_rate"])
qdrain = get("ferrobus", "drain", ["recv_rate"])
lines = []
if s8 is not None and q:
    lines.append(f"- s8 received / w100 delivered: {s8 / q:.2f}×")
if s8 is not None and qdrain:
    lines.append(f"- s8 received / queue drain: {s8 / qdrain:.2f}×")
if lines:
    print()
    print("Sessions against the queue scenarios of this run:")
    print("\n".join(lines))
