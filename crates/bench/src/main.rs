//! `ferrobus-bench`: an AMQP 1.0 load generator.
//!
//! Producers send unsettled messages with a window of outstanding transfers (or pre-settled),
//! consumers receive with a credit window and accept each message. Every message carries its
//! send time, so the report has end-to-end latency percentiles. With `--metrics` it also
//! scrapes a Ferrobus `/metrics` before and after the run and reports how many write requests
//! each synced group commit carried.
//!
//! Speed is reported, never asserted: this is a benchmark, not a test.

mod metrics;
mod report;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::types::messaging::{Body, Message, Outcome};
use fe2o3_amqp::types::primitives::{Binary, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::net::TcpStream;

/// Load generator for AMQP 1.0 brokers.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
struct Opts {
    /// Broker address (host:port).
    #[arg(long, default_value = "127.0.0.1:5672")]
    addr: String,
    /// Queue address prefix; with several queues, producer/consumer i uses `<queue>.<i % queues>`
    /// (one queue: the name as given).
    #[arg(long, default_value = "queue.1")]
    queue: String,
    /// Number of queues.
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// Producer connections.
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Consumer connections (0: only fill the queue).
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Messages per producer (with no producers: messages to drain).
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Message body size in bytes (at least 16).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Unsettled transfers in flight per producer.
    #[arg(long, default_value_t = 100)]
    window: usize,
    /// Send pre-settled (no acknowledgement awaited).
    #[arg(long)]
    presettled: bool,
    /// Consumer credit.
    #[arg(long, default_value_t = 500)]
    credit: u32,
    /// Target send rate per producer in messages per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Ferrobus metrics URL host:port, to report group-commit batch sizes.
    #[arg(long)]
    metrics: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Stop after this many seconds even if not every message arrived.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = Opts::parse();
    anyhow::ensure!(o.size >= 16, "--size must be at least 16");
    let before = match &o.metrics {
        Some(m) => Some(
            metrics::scrape(m)
                .await
                .context("scraping metrics before the run")?,
        ),
        None => None,
    };
    let start = Instant::now();
    // with no producers the run drains `count` messages already in the queue
    let expected = if o.producers == 0 {
        o.count
    } else {
        o.count * o.producers as u64
    };
    let received = Arc::new(AtomicU64::new(0));
    let mut consumers = Vec::new();
    // consumers first, so nothing waits in the queue longer than it must
    // with no consumers the run only fills the queue (a backlog)
    for i in 0..o.consumers {
        let quota =
            expected / o.consumers as u64 + u64::from((i as u64) < expected % o.consumers as u64);
        consumers.push(tokio::spawn(consume(
            o.clone(),
            queue_for(&o, i),
            quota,
            start,
            received.clone(),
        )));
    }
    let mut producers = Vec::new();
    for i in 0..o.producers {
        producers.push(tokio::spawn(produce(o.clone(), queue_for(&o, i), start)));
    }
    let mut sent = 0u64;
    let mut send_done = Duration::ZERO;
    for p in producers {
        let (n, t) = p.await??;
        sent += n;
        send_done = send_done.max(t);
    }
    let mut latencies = Vec::with_capacity(expected as usize);
    let deadline = tokio::time::sleep(Duration::from_secs(o.timeout));
    tokio::pin!(deadline);
    for c in consumers {
        tokio::select! {
            r = c => latencies.extend(r??),
            _ = &mut deadline => anyhow::bail!("timed out with {} of {expected} messages received", received.load(Ordering::Relaxed)),
        }
    }
    let elapsed = start.elapsed();
    let commits = match (&o.metrics, before) {
        (Some(m), Some(b)) => Some(metrics::scrape(m).await?.since(&b)),
        _ => None,
    };
    let r = report::Report::new(sent, send_done, latencies, elapsed, commits);
    if o.json {
        println!("{}", r.json());
    } else {
        print!("{}", r.text());
    }
    Ok(())
}

fn queue_for(o: &Opts, i: usize) -> String {
    if o.queues <= 1 {
        o.queue.clone()
    } else {
        format!("{}.{}", o.queue, i % o.queues + 1)
    }
}

async fn connect(
    o: &Opts,
    name: &str,
) -> anyhow::Result<(
    fe2o3_amqp::connection::ConnectionHandle<()>,
    fe2o3_amqp::session::SessionHandle<()>,
)> {
    let stream = TcpStream::connect(&o.addr)
        .await
        .with_context(|| format!("connecting to {}", o.addr))?;
    stream.set_nodelay(true)?;
    let mut conn = Connection::builder()
        .container_id(name)
        .max_frame_size(256 * 1024)
        .open_with_stream(stream)
        .await
        .context("opening the connection")?;
    let session = Session::builder()
        .incoming_window(1 << 20)
        .outgoing_window(1 << 20)
        .begin(&mut conn)
        .await
        .context("beginning the session")?;
    Ok((conn, session))
}

/// Sends `count` messages; returns how many were accepted and when the last one was.
async fn produce(o: Opts, queue: String, start: Instant) -> anyhow::Result<(u64, Duration)> {
    let (mut conn, mut session) = connect(&o, "bench-producer").await?;
    let mut sender = Sender::attach(&mut session, "bench-sender", queue.as_str())
        .await
        .context("attaching the sender")?;
    let mut inflight = FuturesUnordered::new();
    let mut accepted = 0u64;
    let pace = (o.rate > 0).then(|| Duration::from_secs_f64(1.0 / o.rate as f64));
    for i in 0..o.count {
        if let Some(p) = pace {
            let due = start + p * i as u32;
            tokio::time::sleep_until(due.into()).await;
        }
        let mut body = vec![0u8; o.size];
        body[..8].copy_from_slice(&(start.elapsed().as_nanos() as u64).to_be_bytes());
        body[8..16].copy_from_slice(&i.to_be_bytes());
        let msg = Message::builder().data(Binary::from(body)).build();
        if o.presettled {
            let sendable = fe2o3_amqp::link::delivery::Sendable::builder()
                .message(msg)
                .settled(true)
                .build();
            sender.send(sendable).await.context("sending")?;
            accepted += 1;
            continue;
        }
        inflight.push(sender.send_batchable(msg).await.context("sending")?);
        while inflight.len() >= o.window.max(1) {
            accepted += outcome(inflight.next().await.expect("not empty"))?;
        }
    }
    while let Some(r) = inflight.next().await {
        accepted += outcome(r)?;
    }
    let done = start.elapsed();
    sender.close().await.ok();
    session.end().await.ok();
    conn.close().await.ok();
    Ok((accepted, done))
}

fn outcome(r: Result<Outcome, fe2o3_amqp::link::SendError>) -> anyhow::Result<u64> {
    match r {
        Ok(Outcome::Accepted(_)) => Ok(1),
        Ok(other) => anyhow::bail!("the broker answered {other:?}"),
        Err(e) => anyhow::bail!("send failed: {e}"),
    }
}

/// Receives `quota` messages, accepting each; returns their end-to-end latencies in ns.
async fn consume(
    o: Opts,
    queue: String,
    quota: u64,
    start: Instant,
    received: Arc<AtomicU64>,
) -> anyhow::Result<Vec<u64>> {
    let (mut conn, mut session) = connect(&o, "bench-consumer").await?;
    let mut receiver = Receiver::builder()
        .name("bench-receiver")
        .source(queue.as_str())
        .credit_mode(CreditMode::Auto(o.credit))
        .attach(&mut session)
        .await
        .context("attaching the receiver")?;
    let mut lat = Vec::with_capacity(quota as usize);
    while (lat.len() as u64) < quota {
        let d = receiver.recv::<Body<Value>>().await.context("receiving")?;
        let now = start.elapsed().as_nanos() as u64;
        if let Body::Data(data) = d.body() {
            if let Some(first) = data.first() {
                if first.0.len() >= 8 {
                    let sent = u64::from_be_bytes(first.0[..8].try_into().expect("8 bytes"));
                    lat.push(now.saturating_sub(sent));
                }
            }
        }
        receiver.accept(&d).await.context("accepting")?;
        received.fetch_add(1, Ordering::Relaxed);
    }
    receiver.close().await.ok();
    session.end().await.ok();
    conn.close().await.ok();
    Ok(lat)
}
