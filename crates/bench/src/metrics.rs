//! Reads the group-commit histogram from a Ferrobus `/metrics` page.

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HIST: &str = "ferrobus_store_commit_requests";

/// Cumulative bucket counts of the requests-per-commit histogram.
#[derive(Debug, Clone, Default)]
pub struct Commits {
    /// (upper bound, cumulative count)
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Commits {
    /// What happened between `before` and now.
    pub fn since(&self, before: &Commits) -> Commits {
        let buckets = self
            .buckets
            .iter()
            .map(|(le, n)| {
                let b = before
                    .buckets
                    .iter()
                    .find(|(l, _)| l == le)
                    .map_or(0, |(_, c)| *c);
                (*le, n.saturating_sub(b))
            })
            .collect();
        Commits {
            buckets,
            sum: self.sum - before.sum,
            count: self.count.saturating_sub(before.count),
        }
    }
}

/// GETs `http://<hostport>/metrics` and parses the histogram.
pub async fn scrape(hostport: &str) -> anyhow::Result<Commits> {
    let mut s = tokio::net::TcpStream::connect(hostport)
        .await
        .with_context(|| format!("connecting to {hostport}"))?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {hostport}\r\n\r\n").as_bytes())
        .await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    Ok(parse(&text))
}

fn parse(text: &str) -> Commits {
    let mut c = Commits::default();
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if let Some(rest) = name.strip_prefix(&format!("{HIST}_bucket{{le=\"")) {
            let le = rest.trim_end_matches("\"}");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            c.buckets.push((le, value.parse().unwrap_or(0)));
        } else if name == format!("{HIST}_sum") {
            c.sum = value.parse().unwrap_or(0.0);
        } else if name == format!("{HIST}_count") {
            c.count = value.parse().unwrap_or(0);
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_subtracts() {
        let a = parse("x 1\nferrobus_store_commit_requests_bucket{le=\"1\"} 2\nferrobus_store_commit_requests_bucket{le=\"+Inf\"} 5\nferrobus_store_commit_requests_sum 40\nferrobus_store_commit_requests_count 5\n");
        assert_eq!(a.buckets, vec![(1.0, 2), (f64::INFINITY, 5)]);
        let b = parse("ferrobus_store_commit_requests_bucket{le=\"1\"} 3\nferrobus_store_commit_requests_bucket{le=\"+Inf\"} 9\nferrobus_store_commit_requests_sum 100\nferrobus_store_commit_requests_count 9\n");
        let d = b.since(&a);
        assert_eq!(d.count, 4);
        assert_eq!(d.buckets, vec![(1.0, 1), (f64::INFINITY, 4)]);
        assert_eq!(d.sum, 60.0);
    }
}
