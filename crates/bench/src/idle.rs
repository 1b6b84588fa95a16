//! Idle connections: opens many connections (each with a session), holds them, and reports
//! how much the broker's resident memory grew per connection.

use std::time::Duration;

use ferrobus_codec::frame::encode_empty_frame;
use tokio::sync::watch;

use crate::procstat::rss_kib;
use crate::wire::{Endpoint, Wire};

pub struct IdleReport {
    pub connections: usize,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
}

impl IdleReport {
    pub fn per_connection_kib(&self) -> Option<f64> {
        let (b, a) = (self.rss_before_kib?, self.rss_after_kib?);
        Some(a.saturating_sub(b) as f64 / self.connections.max(1) as f64)
    }
}

/// Opens `n` connections (64 handshakes at a time), waits `hold`, reads the broker's RSS,
/// then closes them all.
pub async fn run(
    ep: &Endpoint,
    n: usize,
    hold: Duration,
    broker: Option<u32>,
) -> anyhow::Result<IdleReport> {
    let rss_before_kib = broker.and_then(rss_kib);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(n);
    let mut opened = 0;
    while opened < n {
        let batch = (n - opened).min(64);
        let mut handshakes = Vec::with_capacity(batch);
        for i in opened..opened + batch {
            let ep = ep.clone();
            handshakes.push(tokio::spawn(async move {
                Wire::connect(&ep, &format!("bench-idle-{i}")).await
            }));
        }
        for h in handshakes {
            let w = h.await??;
            tasks.push(tokio::spawn(hold_open(w, stop_rx.clone())));
        }
        opened += batch;
        crate::progress::line(&format!("idle connections open: {opened}/{n}"));
    }
    tokio::time::sleep(hold).await;
    let rss_after_kib = broker.and_then(rss_kib);
    let _ = stop_tx.send(true);
    for t in tasks {
        t.await??;
    }
    crate::progress::clear();
    Ok(IdleReport {
        connections: n,
        rss_before_kib,
        rss_after_kib,
    })
}

/// Keeps a connection alive (heartbeats if the broker asked for them) until told to stop.
async fn hold_open(mut w: Wire, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let period = w.heartbeat.unwrap_or(Duration::from_secs(3600));
    let mut hb = tokio::time::interval(period);
    hb.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            r = w.fill() => {
                r?;
                while w.buffered()?.is_some() {}
            }
            _ = hb.tick() => {
                encode_empty_frame(&mut w.wbuf);
                w.flush().await?;
            }
        }
    }
    w.close().await;
    Ok(())
}
