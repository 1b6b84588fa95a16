//! The run's report: throughput, latency percentiles, group-commit sizes.

use std::fmt::Write;
use std::time::Duration;

use crate::metrics::Commits;

pub struct Report {
    sent: u64,
    send_rate: f64,
    received: u64,
    recv_rate: f64,
    /// (label, ms)
    latency: Vec<(&'static str, f64)>,
    commits: Option<Commits>,
}

impl Report {
    pub fn new(
        sent: u64,
        send_time: Duration,
        mut lat: Vec<u64>,
        elapsed: Duration,
        commits: Option<Commits>,
    ) -> Self {
        lat.sort_unstable();
        let pct = |p: f64| -> f64 {
            if lat.is_empty() {
                return 0.0;
            }
            let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
            lat[i] as f64 / 1e6
        };
        let latency = vec![
            ("p50", pct(0.50)),
            ("p90", pct(0.90)),
            ("p99", pct(0.99)),
            ("p99.9", pct(0.999)),
            ("max", pct(1.0)),
        ];
        Report {
            sent,
            send_rate: sent as f64 / send_time.as_secs_f64().max(1e-9),
            received: lat.len() as u64,
            recv_rate: lat.len() as f64 / elapsed.as_secs_f64().max(1e-9),
            latency,
            commits,
        }
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
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
        let lat: Vec<String> = self
            .latency
            .iter()
            .map(|(l, v)| format!("{l} {v:.2}"))
            .collect();
        let _ = writeln!(s, "latency ms  {}", lat.join("  "));
        if let Some(c) = &self.commits {
            let mean = if c.count > 0 {
                c.sum / c.count as f64
            } else {
                0.0
            };
            let _ = writeln!(
                s,
                "group commits {}  mean requests/commit {:.1}",
                c.count, mean
            );
            let mut prev = 0;
            for (le, n) in &c.buckets {
                let here = n - prev;
                prev = *n;
                if here > 0 {
                    let _ = writeln!(s, "  <= {le:>6}  {here}");
                }
            }
        }
        s
    }

    pub fn json(&self) -> String {
        let lat: Vec<String> = self
            .latency
            .iter()
            .map(|(l, v)| format!("\"{l}\":{v:.3}"))
            .collect();
        let commits = match &self.commits {
            Some(c) if c.count > 0 => format!(
                ",\"commits\":{},\"mean_requests_per_commit\":{:.2}",
                c.count,
                c.sum / c.count as f64
            ),
            _ => String::new(),
        };
        format!(
            "{{\"sent\":{},\"send_rate\":{:.1},\"received\":{},\"recv_rate\":{:.1},\"latency_ms\":{{{}}}{}}}",
            self.sent,
            self.send_rate,
            self.received,
            self.recv_rate,
            lat.join(","),
            commits
        )
    }
}
