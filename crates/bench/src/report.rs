//! The run's report: throughput, latency percentiles, CPU, memory and group-commit sizes,
//! as text or as one JSON object.

use std::fmt::Write;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::idle::IdleReport;
use crate::metrics::Commits;

#[derive(Default)]
pub struct Report {
    pub label: Option<String>,
    pub sent: u64,
    pub received: u64,
    /// Messages per second after the warm-up.
    pub send_rate: f64,
    pub recv_rate: f64,
    /// End-to-end latency in microseconds (none for a drain of older messages).
    pub latency: Option<Histogram<u64>>,
    /// Broker CPU in cores (CPU seconds per wall second) over the run.
    pub broker_cores: Option<f64>,
    pub broker_rss_peak_kib: Option<u64>,
    pub broker_rss_end_kib: Option<u64>,
    /// The generator's own CPU per message moved (sent plus received), in microseconds.
    pub bench_cpu_us_per_msg: Option<f64>,
    pub commits: Option<Commits>,
    pub idle: Option<IdleReport>,
    /// Bytes the broker wrote to storage during the run (`/proc/<pid>/io`).
    pub broker_write_bytes: Option<u64>,
    /// Sessions the session receivers took (`--sessions`).
    pub sessions: Option<u64>,
    /// Seconds it took to set the state of `--session-state` sessions.
    pub session_state_secs: Option<f64>,
}

const PERCENTILES: [(&str, f64); 5] = [
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
    ("max", 100.0),
];

impl Report {
    fn percentiles_ms(&self) -> Option<Vec<(&'static str, f64)>> {
        let h = self.latency.as_ref().filter(|h| !h.is_empty())?;
        Some(
            PERCENTILES
                .iter()
                .map(|(name, p)| {
                    let us = if *p >= 100.0 {
                        h.max()
                    } else {
                        h.value_at_percentile(*p)
                    };
                    (*name, us as f64 / 1000.0)
                })
                .collect(),
        )
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        if let Some(idle) = &self.idle {
            let _ = writeln!(s, "idle connections {}", idle.connections);
            if let (Some(b), Some(a)) = (idle.rss_before_kib, idle.rss_after_kib) {
                let _ = writeln!(
                    s,
                    "broker RSS {:.1} MiB -> {:.1} MiB, {:.1} KiB per connection",
                    b as f64 / 1024.0,
                    a as f64 / 1024.0,
                    idle.per_connection_kib().unwrap_or(0.0)
                );
            }
            return s;
        }
        let _ = writeln!(
            s,
            "sent      {:>10} msgs  {:>10.0} msg/s",
            self.sent, self.send_rate
        );
        let _ = writeln!(
            s,
            "received  {:>10} msgs  {:>10.0} msg/s",
            self.received, self.recv_rate
        );
        if let Some(p) = self.percentiles_ms() {
            let lat: Vec<String> = p.iter().map(|(l, v)| format!("{l} {v:.2}")).collect();
            let _ = writeln!(s, "latency ms  {}", lat.join("  "));
        }
        if let Some(c) = self.broker_cores {
            let _ = write!(s, "broker CPU {c:.2} cores");
            if let (Some(p), Some(e)) = (self.broker_rss_peak_kib, self.broker_rss_end_kib) {
                let _ = write!(
                    s,
                    "  RSS peak {:.1} MiB, end {:.1} MiB",
                    p as f64 / 1024.0,
                    e as f64 / 1024.0
                );
            }
            let _ = writeln!(s);
        }
        if let Some(b) = self.bench_cpu_us_per_msg {
            let _ = writeln!(s, "generator CPU {b:.1} us per message moved");
        }
        if let Some(w) = self.broker_write_bytes.filter(|_| self.sent > 0) {
            let _ = writeln!(
                s,
                "broker wrote {:.1} MiB to storage, {:.0} bytes per message sent",
                w as f64 / 1048576.0,
                w as f64 / self.sent as f64
            );
        }
        if let Some(n) = self.sessions {
            let _ = writeln!(s, "sessions taken {n}");
        }
        if let Some(t) = self.session_state_secs {
            let _ = writeln!(s, "session state set in {t:.1} s");
        }
        if let Some(c) = self.commits.as_ref().filter(|c| c.count > 0) {
            let _ = writeln!(
                s,
                "group commits {}  mean requests/commit {:.1}",
                c.count,
                c.sum / c.count as f64
            );
        }
        s
    }

    pub fn json(&self) -> String {
        let mut v = json!({
            "label": self.label,
            "sent": self.sent,
            "received": self.received,
            "send_rate": round(self.send_rate),
            "recv_rate": round(self.recv_rate),
            "broker_cores": self.broker_cores,
            "broker_rss_peak_kib": self.broker_rss_peak_kib,
            "broker_rss_end_kib": self.broker_rss_end_kib,
            "bench_cpu_us_per_msg": self.bench_cpu_us_per_msg,
            "broker_write_bytes": self.broker_write_bytes,
            "broker_write_bytes_per_sent": self
                .broker_write_bytes
                .filter(|_| self.sent > 0)
                .map(|b| round(b as f64 / self.sent as f64)),
        });
        if let Some(p) = self.percentiles_ms() {
            let lat: serde_json::Map<String, Value> = p
                .into_iter()
                .map(|(k, ms)| (k.to_string(), json!(ms)))
                .collect();
            v["latency_ms"] = Value::Object(lat);
        }
        if let Some(n) = self.sessions {
            v["sessions"] = json!(n);
        }
        if let Some(t) = self.session_state_secs {
            v["session_state_secs"] = json!((t * 1000.0).round() / 1000.0);
        }
        if let Some(c) = self.commits.as_ref().filter(|c| c.count > 0) {
            v["commits"] = json!(c.count);
            v["mean_requests_per_commit"] = json!(c.sum / c.count as f64);
        }
        if let Some(i) = &self.idle {
            v["idle"] = json!({
                "connections": i.connections,
                "rss_before_kib": i.rss_before_kib,
                "rss_after_kib": i.rss_after_kib,
                "per_connection_kib": i.per_connection_kib(),
            });
        }
        v.to_string()
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
