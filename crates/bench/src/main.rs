//! `ferrobus-bench`: an AMQP 1.0 load generator for Ferrobus and other brokers.
//!
//! Each producer and each consumer is one connection driven by one task, with hand-encoded
//! transfers and dispositions (see [`wire`]), so the generator's CPU per message stays far
//! below the broker's. Producers send with a window of unsettled transfers (or pre-settled),
//! at a fixed rate or as fast as credit allows, for a count or a duration; consumers receive
//! with a credit window and accept in contiguous ranges. Every message carries its send time,
//! so the report has end-to-end latency percentiles from an HDR histogram. With
//! `--broker-pid` it reports the broker's CPU and RSS; with `--metrics` (Ferrobus only) how
//! many write requests each synced group commit carried; `--noop` runs against a built-in
//! peer that stores nothing, to show the generator's own ceiling; `--idle N` measures the
//! broker's memory per idle connection.
//!
//! Speed is reported, never asserted: this is a benchmark, not a test.

mod idle;
mod load;
mod metrics;
mod noop;
mod procstat;
mod progress;
mod report;
mod sessions;
mod wire;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;

use load::{ConsumerPlan, Fanout, Measured, ProducerPlan, QueueCounts, Shared};
use wire::Endpoint;

/// Load generator for AMQP 1.0 brokers.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
struct Opts {
    /// Broker address (host:port).
    #[arg(long, default_value = "127.0.0.1:5672")]
    addr: String,
    /// Queue address; with several queues, producer/consumer i uses `<queue>.<i % queues + 1>`.
    #[arg(long, default_value = "queue.1")]
    queue: String,
    /// Number of queues.
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// Send to the topic `--queue` and receive from its subscriptions `s1` ... `sN`
    /// (consumer i reads `<queue>/Subscriptions/s<i % N + 1>`); every message reaches every
    /// subscription unless `--routed`.
    #[arg(long, default_value_t = 0)]
    subscriptions: usize,
    /// A session queue with N sessions: the producer's message k belongs to session
    /// `s<k % N>`, and the consumers are next-available session receivers that each take a
    /// session, receive its `--count / N` messages (checking their order) and let it go.
    #[arg(long, default_value_t = 0)]
    sessions: usize,
    /// After the run, set state on sessions `s0` .. `s<K-1>` through `$management`.
    #[arg(long, default_value_t = 0)]
    session_state: usize,
    /// Bytes of state per session for `--session-state`.
    #[arg(long, default_value_t = 64)]
    state_size: usize,
    /// With `--subscriptions N`: message k carries `region = 'r<k % N + 1>'` and
    /// `amount = 500`, for subscriptions whose rule is `region = 'r<i>' AND amount > 100`.
    #[arg(long)]
    routed: bool,
    /// Producer connections (0: drain `--count` messages already queued).
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Consumer connections (0: only fill the queues).
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Messages per producer (with no producers: messages to drain in all).
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Send for this many seconds after the warm-up instead of a count.
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds at the start that are not measured.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Message body size in bytes (at least 16).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Unsettled transfers in flight per producer.
    #[arg(long, default_value_t = 100)]
    window: usize,
    /// Send pre-settled (no acknowledgement awaited).
    #[arg(long)]
    presettled: bool,
    /// Non-durable: plain terminus and `durable = false` messages.
    #[arg(long)]
    transient: bool,
    /// Consumer credit.
    #[arg(long, default_value_t = 500)]
    credit: u32,
    /// Target send rate per producer in messages per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// SASL PLAIN user (default: ANONYMOUS).
    #[arg(long)]
    user: Option<String>,
    /// SASL PLAIN password.
    #[arg(long, default_value = "")]
    password: String,
    /// The broker's process id, to report its CPU and RSS.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Ferrobus metrics address host:port, to report group-commit batch sizes.
    #[arg(long)]
    metrics: Option<String>,
    /// Run against a built-in peer that stores nothing (the generator's own ceiling).
    #[arg(long)]
    noop: bool,
    /// Open this many idle connections and report the broker's RSS per connection.
    #[arg(long)]
    idle: Option<usize>,
    /// Seconds to hold idle connections before measuring.
    #[arg(long, default_value_t = 3.0)]
    hold: f64,
    /// A label carried into the JSON report.
    #[arg(long)]
    label: Option<String>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = Opts::parse();
    anyhow::ensure!(o.size >= 16, "--size must be at least 16");
    anyhow::ensure!(o.queues >= 1, "--queues must be at least 1");
    if o.sessions > 0 {
        anyhow::ensure!(
            o.producers <= 1 && o.queues == 1 && o.subscriptions == 0 && o.duration.is_none(),
            "--sessions takes at most one producer, one queue and a --count"
        );
        anyhow::ensure!(
            o.count.is_multiple_of(o.sessions as u64),
            "--count must be a multiple of --sessions"
        );
    }
    let ep = Endpoint {
        addr: o.addr.clone(),
        login: o.user.clone().map(|u| (u, o.password.clone())),
        durable: !o.transient,
    };
    let report = match o.idle {
        Some(n) => report::Report {
            label: o.label.clone(),
            idle: Some(idle::run(&ep, n, Duration::from_secs_f64(o.hold), o.broker_pid).await?),
            ..Default::default()
        },
        None => tokio::time::timeout(Duration::from_secs(o.timeout), load_run(&o, ep))
            .await
            .map_err(|_| anyhow::anyhow!("gave up after {} s (--timeout)", o.timeout))??,
    };
    if o.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

async fn load_run(o: &Opts, mut ep: Endpoint) -> anyhow::Result<report::Report> {
    let epoch = Instant::now();
    let warmup = Duration::from_secs_f64(o.warmup);
    let shared = Arc::new(Shared {
        epoch,
        warmup_ns: warmup.as_nanos() as u64,
        send_until: o
            .duration
            .map(|d| epoch + warmup + Duration::from_secs_f64(d)),
        queues: (0..o.queues.max(o.subscriptions))
            .map(|_| QueueCounts::default())
            .collect(),
        producers_left: AtomicUsize::new(o.producers),
    });
    if o.producers == 0 {
        // a drain: what each queue is expected to hold
        for (q, c) in shared.queues.iter().enumerate() {
            let n = o.count / o.queues as u64 + u64::from((q as u64) < o.count % o.queues as u64);
            c.sent.store(n, Ordering::Relaxed);
        }
    }
    if o.noop {
        ep.addr = noop::start(shared.clone(), o.size).await?;
    }
    let commits_before = match &o.metrics {
        Some(m) => Some(metrics::scrape(m).await.context("scraping metrics")?),
        None => None,
    };
    let cpu_before = o.broker_pid.and_then(|p| procstat::cpu_seconds(Some(p)));
    let written_before = o.broker_pid.and_then(procstat::write_bytes);
    let own_before = procstat::cpu_seconds(None);
    let rss = o.broker_pid.map(procstat::RssPeak::start);
    let wall = Instant::now();

    let mut consumers = Vec::new();
    let mut session_consumers = Vec::new();
    for i in 0..o.consumers {
        if o.sessions > 0 {
            let plan = sessions::SessionPlan {
                address: o.queue.clone(),
                per_session: o.count / o.sessions as u64,
                latency: o.producers > 0,
            };
            let (ep, shared) = (ep.clone(), shared.clone());
            session_consumers.push(tokio::spawn(async move {
                sessions::consume_sessions(ep, plan, &shared, format!("bench-session-{i}")).await
            }));
            continue;
        }
        let plan = ConsumerPlan {
            address: queue_for(o, i),
            queue: i % o.queues.max(o.subscriptions),
            credit: o.credit,
            latency: o.producers > 0,
        };
        let (ep, shared) = (ep.clone(), shared.clone());
        consumers.push(tokio::spawn(async move {
            load::consume(ep, plan, &shared, format!("bench-consumer-{i}")).await
        }));
    }
    let mut producers = Vec::new();
    for i in 0..o.producers {
        let plan = ProducerPlan {
            address: if o.subscriptions > 0 {
                o.queue.clone()
            } else {
                queue_for(o, i)
            },
            queue: i % o.queues,
            count: if o.duration.is_some() {
                None
            } else {
                Some(o.count)
            },
            size: o.size,
            window: o.window,
            presettled: o.presettled,
            rate: o.rate,
            fanout: match (o.subscriptions, o.routed) {
                (0, _) if o.sessions > 0 => Fanout::Sessions(o.sessions),
                (0, _) => Fanout::Queue,
                (n, false) => Fanout::All(n),
                (n, true) => Fanout::Routed(n),
            },
        };
        let (ep, shared) = (ep.clone(), shared.clone());
        producers.push(tokio::spawn(async move {
            load::produce(ep, plan, &shared, format!("bench-producer-{i}")).await
        }));
    }
    let progress = {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let t = shared.epoch.elapsed().as_secs_f64();
                progress::line(&format!(
                    "{t:6.1} s  sent {:>10}  received {:>10}",
                    shared.sent(),
                    shared.received()
                ));
            }
        })
    };

    let mut sent = Vec::new();
    for p in producers {
        sent.push(p.await??);
    }
    let mut received = Vec::new();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for c in consumers {
        let (m, h) = c.await??;
        hist.add(h)?;
        received.push(m);
    }
    let mut sessions_taken = (o.sessions > 0).then_some(0);
    for c in session_consumers {
        let seen = c.await??;
        hist.add(seen.latency)?;
        received.push(seen.measured);
        sessions_taken = sessions_taken.map(|n| n + seen.sessions);
    }
    progress.abort();
    progress::clear();
    let session_state_secs = if o.session_state > 0 {
        Some(
            sessions::set_states(&ep, &o.queue, o.session_state, o.state_size)
                .await?
                .as_secs_f64(),
        )
    } else {
        None
    };
    let elapsed = wall.elapsed().as_secs_f64();

    let commits = match (&o.metrics, commits_before) {
        (Some(m), Some(b)) => Some(metrics::scrape(m).await?.since(&b)),
        _ => None,
    };
    let broker_cores = match (
        cpu_before,
        o.broker_pid.and_then(|p| procstat::cpu_seconds(Some(p))),
    ) {
        (Some(b), Some(a)) => Some((a - b) / elapsed),
        _ => None,
    };
    let total_sent: u64 = sent.iter().map(|m| m.total).sum();
    let total_received: u64 = received.iter().map(|m| m.total).sum();
    let moved = total_sent + total_received;
    let bench_cpu_us_per_msg = match (own_before, procstat::cpu_seconds(None)) {
        (Some(b), Some(a)) if moved > 0 && !o.noop => Some((a - b) * 1e6 / moved as f64),
        _ => None,
    };
    Ok(report::Report {
        label: o.label.clone(),
        sent: total_sent,
        received: total_received,
        send_rate: rate(&sent, shared.warmup_ns),
        recv_rate: rate(&received, shared.warmup_ns),
        latency: (o.producers > 0 && o.consumers > 0).then_some(hist),
        broker_cores,
        broker_rss_peak_kib: rss.map(|r| r.stop()),
        broker_rss_end_kib: o.broker_pid.and_then(procstat::rss_kib),
        bench_cpu_us_per_msg,
        commits,
        idle: None,
        broker_write_bytes: match (written_before, o.broker_pid.and_then(procstat::write_bytes)) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b)),
            _ => None,
        },
        sessions: sessions_taken,
        session_state_secs,
    })
}

/// Messages per second after the warm-up, up to the last one.
fn rate(ms: &[Measured], warmup_ns: u64) -> f64 {
    let n: u64 = ms.iter().map(|m| m.measured).sum();
    let last = ms.iter().map(|m| m.last_ns).max().unwrap_or(0);
    let secs = last.saturating_sub(warmup_ns) as f64 / 1e9;
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

fn queue_for(o: &Opts, i: usize) -> String {
    if o.subscriptions > 0 {
        return format!("{}/Subscriptions/s{}", o.queue, i % o.subscriptions + 1);
    }
    if o.queues <= 1 {
        o.queue.clone()
    } else {
        format!("{}.{}", o.queue, i % o.queues + 1)
    }
}
