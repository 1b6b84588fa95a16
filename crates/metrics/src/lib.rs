//! Ferrobus metrics: one Prometheus registry, counters updated on the hot path as atomics,
//! entity gauges gathered at scrape time, and a small HTTP listener serving `/metrics`
//! (Prometheus text format) and `/health`.
//!
//! The HTTP side is deliberately tiny (GET only, one request per connection, bounded request
//! head): it serves probes and scrapers, not browsers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Counts of one entity, reported at scrape time.
#[derive(Debug, Clone, Default)]
pub struct EntityCounts {
    /// Entity name.
    pub name: String,
    /// Messages waiting.
    pub active: u64,
    /// Messages locked by consumers.
    pub locked: u64,
    /// Deferred messages.
    pub deferred: u64,
    /// Dead-lettered messages.
    pub dead_lettered: u64,
    /// Payload bytes held.
    pub bytes: u64,
    /// Scheduled messages.
    pub scheduled: u64,
    /// Messages expired since start.
    pub expired_total: u64,
    /// Session counts, for an entity that requires sessions.
    pub sessions: Option<SessionCounts>,
}

/// The sessions of a session entity, reported at scrape time.
#[derive(Debug, Clone, Default)]
pub struct SessionCounts {
    /// Sessions with messages available.
    pub available: u64,
    /// Sessions a receiver holds the lock of.
    pub locked: u64,
    /// Session locks that expired while held, since start.
    pub locks_lost_total: u64,
}

/// Counters of one topic, reported at scrape time.
#[derive(Debug, Clone, Default)]
pub struct TopicCounts {
    /// Topic name.
    pub name: String,
    /// Messages published to it since start (duplicates left out).
    pub published: u64,
    /// Subscription copies written since start.
    pub copies: u64,
    /// Time spent evaluating subscription rules since start, in seconds.
    pub filter_seconds: f64,
}

/// Something that can list its entities' counts (the broker).
pub trait EntitySource: Send + Sync {
    /// Counts of every entity, now.
    fn entity_counts(&self) -> Vec<EntityCounts>;

    /// Counters of every topic, now.
    fn topic_counts(&self) -> Vec<TopicCounts> {
        Vec::new()
    }

    /// Why the broker cannot store messages any more, if it cannot (`/health` and `/ready`
    /// then answer 503 with the reason).
    fn storage_failure(&self) -> Option<String> {
        None
    }
}

/// The broker's metrics.
pub struct Metrics {
    registry: Registry,
    // topic counters, kept by the topics and copied in at scrape time (gauges that only grow,
    // named `_total` as the counters they are)
    topic_published: prometheus::GaugeVec,
    topic_copies: prometheus::GaugeVec,
    topic_filter_seconds: prometheus::GaugeVec,
    /// Connections accepted.
    pub connections_total: IntCounter,
    /// Connections open now.
    pub connections: IntGauge,
    /// Sessions begun now.
    pub sessions: IntGauge,
    /// Links attached now.
    pub links: IntGauge,
    /// Messages accepted from producers.
    pub messages_in: IntCounter,
    /// Payload bytes accepted from producers.
    pub bytes_in: IntCounter,
    /// Messages delivered to consumers.
    pub messages_out: IntCounter,
    /// Payload bytes delivered to consumers.
    pub bytes_out: IntCounter,
    /// Time from enqueue to completion (or to delivery, in receive-and-delete).
    pub end_to_end_seconds: Histogram,
    /// Failed group commits.
    pub store_write_errors: IntCounter,
    /// Settlement outcomes by kind (completed, abandoned, released, deferred, dead_lettered).
    pub settled: IntCounterVec,
    /// Failed SASL logins.
    pub auth_failures: IntCounter,
    /// Duration of one synced group commit.
    pub commit_seconds: Histogram,
    /// Write requests (producer batches, settlements) per group commit.
    pub commit_requests: Histogram,
    entity_messages: IntGaugeVec,
    entity_bytes: IntGaugeVec,
    expired: IntCounterVec,
    entity_sessions: IntGaugeVec,
    session_locks_lost: IntCounterVec,
    /// What the entities last reported as totals (by metric and entity), to add only the
    /// difference to the counters.
    seen: std::sync::Mutex<std::collections::HashMap<(&'static str, String), u64>>,
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let connections_total = counter("ferrobus_connections_total", "AMQP connections accepted.");
        let connections = gauge("ferrobus_connections", "AMQP connections open.");
        let sessions = gauge("ferrobus_sessions", "AMQP sessions begun.");
        let links = gauge("ferrobus_links", "AMQP links attached.");
        let messages_in = counter(
            "ferrobus_messages_received_total",
            "Messages accepted from producers.",
        );
        let bytes_in = counter(
            "ferrobus_received_bytes_total",
            "Message bytes accepted from producers.",
        );
        let messages_out = counter(
            "ferrobus_messages_delivered_total",
            "Deliveries sent to consumers.",
        );
        let auth_failures = counter("ferrobus_auth_failures_total", "Failed logins.");
        let bytes_out = counter(
            "ferrobus_delivered_bytes_total",
            "Message payload bytes delivered to consumers.",
        );
        let store_write_errors = counter(
            "ferrobus_store_write_errors_total",
            "Group commits that failed (every request in them was refused).",
        );
        let settled = IntCounterVec::new(
            Opts::new(
                "ferrobus_messages_settled_total",
                "Consumer settlements by outcome.",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(settled.clone()))
            .expect("unique metric");
        let entity_messages = IntGaugeVec::new(
            Opts::new(
                "ferrobus_entity_messages",
                "Messages held per entity and state.",
            ),
            &["entity", "state"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(entity_messages.clone()))
            .expect("unique metric");
        let entity_bytes = IntGaugeVec::new(
            Opts::new(
                "ferrobus_entity_bytes",
                "Message payload bytes held per entity.",
            ),
            &["entity"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(entity_bytes.clone()))
            .expect("unique metric");
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let commit_seconds = histogram(
            "ferrobus_store_commit_duration_seconds",
            "Duration of one synced group commit.",
            prometheus::exponential_buckets(0.00005, 2.0, 16).expect("valid buckets"),
        );
        let commit_requests = histogram(
            "ferrobus_store_commit_requests",
            "Write requests per synced group commit.",
            prometheus::exponential_buckets(1.0, 2.0, 14).expect("valid buckets"),
        );
        let end_to_end_seconds = histogram(
            "ferrobus_end_to_end_latency_seconds",
            "Time from enqueue to completion (to delivery in receive-and-delete).",
            prometheus::exponential_buckets(0.0001, 2.0, 20).expect("valid buckets"),
        );
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        let topic = |name: &str, help: &str| {
            let g =
                prometheus::GaugeVec::new(Opts::new(name, help), &["topic"]).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let topic_published = topic(
            "ferrobus_topic_messages_published_total",
            "Messages published to a topic since start (duplicates left out).",
        );
        let topic_copies = topic(
            "ferrobus_topic_copies_total",
            "Subscription copies written for a topic's messages since start.",
        );
        let topic_filter_seconds = topic(
            "ferrobus_topic_filter_seconds_total",
            "Time spent evaluating a topic's subscription rules since start; divided by published messages, the mean per message.",
        );
        let expired = IntCounterVec::new(
            Opts::new(
                "ferrobus_messages_expired_total",
                "Messages whose time to live ended (dropped or dead-lettered), per entity.",
            ),
            &["entity"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(expired.clone()))
            .expect("unique metric");
        let entity_sessions = IntGaugeVec::new(
            Opts::new(
                "ferrobus_entity_sessions",
                "Sessions of a session entity: with messages available, or locked by a receiver.",
            ),
            &["entity", "state"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(entity_sessions.clone()))
            .expect("unique metric");
        let session_locks_lost = IntCounterVec::new(
            Opts::new(
                "ferrobus_session_locks_lost_total",
                "Session locks that expired while a receiver held them, per entity.",
            ),
            &["entity"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(session_locks_lost.clone()))
            .expect("unique metric");
        Arc::new(Metrics {
            registry,
            topic_published,
            topic_copies,
            topic_filter_seconds,
            expired,
            entity_sessions,
            session_locks_lost,
            seen: Default::default(),
            sessions,
            bytes_out,
            end_to_end_seconds,
            store_write_errors,
            commit_seconds,
            commit_requests,
            connections_total,
            connections,
            links,
            messages_in,
            bytes_in,
            messages_out,
            settled,
            auth_failures,
            entity_messages,
            entity_bytes,
        })
    }

    /// Brings `counter` for `entity` up to the `total` the entity reports.
    fn add_total(&self, counter: &IntCounterVec, metric: &'static str, entity: &str, total: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let last = seen.entry((metric, entity.to_string())).or_default();
        counter
            .with_label_values(&[entity])
            .inc_by(total.saturating_sub(*last));
        *last = total.max(*last);
    }

    /// The Prometheus text exposition of every metric, with entity gauges refreshed.
    pub fn render(&self, entities: &dyn EntitySource) -> String {
        for t in entities.topic_counts() {
            let l = [t.name.as_str()];
            self.topic_published
                .with_label_values(&l)
                .set(t.published as f64);
            self.topic_copies.with_label_values(&l).set(t.copies as f64);
            self.topic_filter_seconds
                .with_label_values(&l)
                .set(t.filter_seconds);
        }
        for e in entities.entity_counts() {
            self.add_total(&self.expired, "expired", &e.name, e.expired_total);
            if let Some(s) = &e.sessions {
                for (state, v) in [("available", s.available), ("locked", s.locked)] {
                    self.entity_sessions
                        .with_label_values(&[e.name.as_str(), state])
                        .set(v as i64);
                }
                self.add_total(
                    &self.session_locks_lost,
                    "locks_lost",
                    &e.name,
                    s.locks_lost_total,
                );
            }
            for (state, v) in [
                ("active", e.active),
                ("scheduled", e.scheduled),
                ("locked", e.locked),
                ("deferred", e.deferred),
                ("dead_lettered", e.dead_lettered),
            ] {
                self.entity_messages
                    .with_label_values(&[e.name.as_str(), state])
                    .set(v as i64);
            }
            self.entity_bytes
                .with_label_values(&[e.name.as_str()])
                .set(e.bytes as i64);
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into memory");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

/// Serves `/health` (alive), `/ready` (200 while `ready`, else 503) and `/metrics` on
/// `listener` until `shutdown` fires. Both probes answer 503 once the storage has failed.
pub async fn serve_http(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    entities: Arc<dyn EntitySource>,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    loop {
        let (mut sock, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let entities = entities.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), async move {
                let mut buf = Vec::with_capacity(1024);
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = sock.read(&mut chunk).await?;
                    if n == 0 || buf.len() > 8192 {
                        return Ok::<(), std::io::Error>(());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let line = String::from_utf8_lossy(&buf);
                let mut parts = line.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let path = path.split('?').next().unwrap_or("");
                let failure = match (method, path) {
                    ("GET", "/health" | "/ready") => entities.storage_failure(),
                    _ => None,
                };
                let (status, ctype, body) = match (method, path) {
                    ("GET", "/health" | "/ready") if failure.is_some() => (
                        "503 Service Unavailable",
                        "text/plain",
                        format!("storage failed: {}\n", failure.unwrap_or_default()),
                    ),
                    ("GET", "/health") => ("200 OK", "text/plain", "ok\n".to_string()),
                    ("GET", "/ready") if ready.load(Ordering::SeqCst) => {
                        ("200 OK", "text/plain", "ready\n".to_string())
                    }
                    ("GET", "/ready") => (
                        "503 Service Unavailable",
                        "text/plain",
                        "shutting down\n".to_string(),
                    ),
                    ("GET", "/metrics") => (
                        "200 OK",
                        "text/plain; version=0.0.4; charset=utf-8",
                        metrics.render(entities.as_ref()),
                    ),
                    ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
                    _ => ("405 Method Not Allowed", "text/plain", "only GET\n".to_string()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                sock.write_all(head.as_bytes()).await?;
                sock.write_all(body.as_bytes()).await?;
                sock.shutdown().await
            })
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Two;
    impl EntitySource for Two {
        fn entity_counts(&self) -> Vec<EntityCounts> {
            vec![EntityCounts {
                name: "q1".into(),
                active: 3,
                bytes: 10,
                ..Default::default()
            }]
        }
    }

    #[test]
    fn render_includes_counters_and_entity_gauges() {
        let m = Metrics::new();
        m.messages_in.inc_by(5);
        let text = m.render(&Two);
        assert!(text.contains("ferrobus_messages_received_total 5"));
        assert!(text.contains("ferrobus_entity_messages{entity=\"q1\",state=\"active\"} 3"));
        assert!(text.contains("ferrobus_entity_bytes{entity=\"q1\"} 10"));
    }
}
