//! The producer and consumer loops, each on its own connection, and the counters they share.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use ferrobus_codec::frame::encode_empty_frame;
use ferrobus_codec::message::Sections;
use ferrobus_codec::types::messaging::DeliveryState;
use ferrobus_codec::types::performatives::{Flow, Performative};
use hdrhistogram::Histogram;

use crate::wire::{
    encode_transfer, message_prefix, routed_prefix, session_prefix, AcceptRanges, Endpoint, Wire,
};

/// Per-queue counts the producers and consumers of one run share.
#[derive(Default)]
pub struct QueueCounts {
    /// Messages the broker took (accepted, or sent pre-settled).
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

/// State shared by every task of a run.
pub struct Shared {
    /// Time zero: message send times are nanoseconds since it.
    pub epoch: Instant,
    /// Samples before this (ns since `epoch`) are warm-up: not measured.
    pub warmup_ns: u64,
    /// Producers stop sending at this time (duration runs).
    pub send_until: Option<Instant>,
    pub queues: Vec<QueueCounts>,
    pub producers_left: AtomicUsize,
}

impl Shared {
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn sent(&self) -> u64 {
        self.queues
            .iter()
            .map(|q| q.sent.load(Ordering::Relaxed))
            .sum()
    }

    pub fn received(&self) -> u64 {
        self.queues
            .iter()
            .map(|q| q.received.load(Ordering::Relaxed))
            .sum()
    }
}

/// What one producer or consumer measured.
#[derive(Debug, Default)]
pub struct Measured {
    /// Messages in total.
    pub total: u64,
    /// Messages after the warm-up.
    pub measured: u64,
    /// When the last one was accepted / received (ns since the epoch).
    pub last_ns: u64,
}

pub struct ProducerPlan {
    pub address: String,
    pub queue: usize,
    /// Messages to send (`None`: until `send_until`).
    pub count: Option<u64>,
    pub size: usize,
    pub window: usize,
    pub presettled: bool,
    /// Messages per second (0: as fast as credit and the window allow).
    pub rate: u64,
    /// Sending to a topic: how its subscriptions get the messages.
    pub fanout: Fanout,
}

/// Which subscriptions (count slots) a message reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fanout {
    /// A queue: the producer's own slot.
    Queue,
    /// Every one of `n` subscriptions (true filters).
    All(usize),
    /// One of `n`: message k carries `region = 'r<k % n + 1>'` and `amount = 500`, and
    /// subscription i selects `region = 'r<i>' AND amount > 100`.
    Routed(usize),
    /// A session queue: message k belongs to session `s<k % n>`.
    Sessions(usize),
}

/// Sends messages with a window of unsettled transfers (or pre-settled) and counts what
/// the broker accepted. Any outcome other than accepted ends the run with an error.
pub async fn produce(
    ep: Endpoint,
    plan: ProducerPlan,
    shared: &Shared,
    name: String,
) -> anyhow::Result<Measured> {
    let r = produce_inner(&ep, &plan, shared, &name).await;
    shared.producers_left.fetch_sub(1, Ordering::SeqCst);
    r
}

async fn produce_inner(
    ep: &Endpoint,
    plan: &ProducerPlan,
    shared: &Shared,
    name: &str,
) -> anyhow::Result<Measured> {
    let mut w = Wire::connect(ep, name).await?;
    w.attach(ep, &plan.address, true, plan.presettled).await?;
    let counts = &shared.queues[plan.queue];
    let mut credit = 0u32;
    let mut delivery_count = 0u32;
    if let Some(f) = w.pending_flow.take() {
        credit = link_credit(&f, delivery_count).unwrap_or(credit);
    }
    let prefix = message_prefix(ep.durable, plan.size);
    let routed: Vec<Vec<u8>> = match plan.fanout {
        Fanout::Routed(n) => (1..=n)
            .map(|i| routed_prefix(ep.durable, plan.size, Some((&format!("r{i}"), 500))))
            .collect(),
        Fanout::Sessions(n) => (0..n)
            .map(|i| session_prefix(ep.durable, plan.size, &format!("s{i}")))
            .collect(),
        _ => Vec::new(),
    };
    // the slots a message counts in once accepted
    let count_in = |slot: usize, n: u64| match plan.fanout {
        Fanout::Queue | Fanout::Sessions(_) => counts.sent.fetch_add(n, Ordering::Relaxed),
        Fanout::All(k) => {
            for q in &shared.queues[..k] {
                q.sent.fetch_add(n, Ordering::Relaxed);
            }
            0
        }
        Fanout::Routed(_) => shared.queues[slot].sent.fetch_add(n, Ordering::Relaxed),
    };
    let mut body = vec![0u8; plan.size];
    let pace = (plan.rate > 0).then(|| Duration::from_secs_f64(1.0 / plan.rate as f64));
    let mut next_due = Instant::now();
    let mut heartbeat = w.heartbeat.map(tokio::time::interval);
    let mut next_id = 0u32;
    let mut seq = 0u64;
    let mut unsettled = 0usize;
    let mut m = Measured::default();
    // sent after the warm-up but not yet settled, by delivery id order
    let mut warm_marks = std::collections::VecDeque::new();
    // nothing more to send: the count is reached or the time is up
    let finished = |seq: u64| {
        plan.count.is_some_and(|c| seq >= c)
            || shared.send_until.is_some_and(|t| Instant::now() >= t)
    };
    // the window, the link credit and the session window all allow one more transfer
    let window_open = |unsettled: usize, credit: u32, room: u32| {
        (plan.presettled || unsettled < plan.window.max(1)) && credit > 0 && room > 0
    };
    loop {
        while let Some((p, _)) = w.buffered()? {
            match p {
                Performative::Disposition(d) => {
                    match &d.state {
                        Some(DeliveryState::Accepted(_)) => {}
                        other => bail!("the broker settled a message with {other:?}"),
                    }
                    let n = d.last.unwrap_or(d.first).wrapping_sub(d.first) as usize + 1;
                    let n = n.min(unsettled);
                    unsettled -= n;
                    let mut warm = 0;
                    for (w, slot) in warm_marks.drain(..n) {
                        warm += u64::from(w);
                        count_in(slot, 1);
                    }
                    m.total += n as u64;
                    m.measured += warm;
                    m.last_ns = shared.now_ns();
                }
                Performative::Flow(f) => {
                    w.on_session_flow(&f);
                    if let Some(c) = link_credit(&f, delivery_count) {
                        credit = c;
                    }
                }
                Performative::Detach(d) => bail!("the broker detached the sender: {:?}", d.error),
                Performative::End(e) => bail!("the broker ended the session: {:?}", e.error),
                _ => {}
            }
        }
        let now = Instant::now();
        let mut waiting_on_pace = false;
        if !finished(seq) {
            while window_open(unsettled, credit, w.session_room())
                && plan.count.is_none_or(|c| seq < c)
                && w.wbuf.len() < 64 * 1024
            {
                if pace.is_some() && Instant::now() < next_due {
                    waiting_on_pace = true;
                    break;
                }
                let t = shared.now_ns();
                body[..8].copy_from_slice(&t.to_be_bytes());
                body[8..16].copy_from_slice(&seq.to_be_bytes());
                let slot = match plan.fanout {
                    Fanout::Routed(n) => (seq % n as u64) as usize,
                    _ => plan.queue,
                };
                let head = match plan.fanout {
                    Fanout::Sessions(n) => &routed[(seq % n as u64) as usize],
                    _ => routed.get(slot).unwrap_or(&prefix),
                };
                encode_transfer(&mut w.wbuf, next_id, plan.presettled, &[head, &body]);
                let warm = t >= shared.warmup_ns;
                next_id = next_id.wrapping_add(1);
                w.next_outgoing_id = w.next_outgoing_id.wrapping_add(1);
                credit -= 1;
                delivery_count = delivery_count.wrapping_add(1);
                seq += 1;
                if let Some(p) = pace {
                    next_due += p;
                }
                if plan.presettled {
                    count_in(slot, 1);
                    m.total += 1;
                    m.measured += u64::from(warm);
                    m.last_ns = t;
                } else {
                    unsettled += 1;
                    warm_marks.push_back((warm, slot));
                }
            }
        }
        w.flush().await?;
        let stop = finished(seq);
        if stop && unsettled == 0 {
            break;
        }
        if !stop && !waiting_on_pace && window_open(unsettled, credit, w.session_room()) {
            // stopped only to write a full buffer: go on, but let other tasks run
            tokio::task::yield_now().await;
            continue;
        }
        let pace_wait = if waiting_on_pace {
            next_due
        } else {
            now + Duration::from_secs(3600)
        };
        let send_until = shared
            .send_until
            .filter(|t| *t > now)
            .unwrap_or(now + Duration::from_secs(3600));
        tokio::select! {
            r = w.fill() => r?,
            _ = tokio::time::sleep_until(pace_wait.into()) => continue,
            _ = tokio::time::sleep_until(send_until.into()) => continue,
            _ = tick(&mut heartbeat) => {
                encode_empty_frame(&mut w.wbuf);
                continue;
            }
        }
    }
    w.close().await;
    Ok(m)
}

/// The link credit a flow leaves us, given our delivery count.
fn link_credit(f: &Flow, delivery_count: u32) -> Option<u32> {
    f.handle.as_ref()?;
    let credit = f.link_credit?;
    let theirs = f.delivery_count.unwrap_or(0);
    let c = theirs.wrapping_add(credit).wrapping_sub(delivery_count);
    Some(if c > i32::MAX as u32 { 0 } else { c })
}

async fn tick(hb: &mut Option<tokio::time::Interval>) {
    match hb {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

pub struct ConsumerPlan {
    pub address: String,
    pub queue: usize,
    pub credit: u32,
    /// Record end-to-end latency (off for a drain of messages sent by another run).
    pub latency: bool,
}

/// Receives and accepts messages until the producers are done and every message the broker
/// took for this queue has been received; records end-to-end latency in microseconds.
pub async fn consume(
    ep: Endpoint,
    plan: ConsumerPlan,
    shared: &Shared,
    name: String,
) -> anyhow::Result<(Measured, Histogram<u64>)> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut w = Wire::connect(&ep, &name).await?;
    w.attach(&ep, &plan.address, false, false).await?;
    let counts = &shared.queues[plan.queue];
    let credit = plan.credit.max(1);
    let mut delivery_count = 0u32;
    let mut outstanding = credit;
    w.grant(delivery_count, credit);
    w.flush().await?;
    let mut heartbeat = w.heartbeat.map(tokio::time::interval);
    let mut m = Measured::default();
    // a delivery spread over several frames
    let mut partial: Option<(u32, bool, Vec<u8>)> = None;
    loop {
        if shared.producers_left.load(Ordering::SeqCst) == 0
            && counts.received.load(Ordering::Relaxed) >= counts.sent.load(Ordering::Relaxed)
        {
            break;
        }
        let mut accepts = AcceptRanges::default();
        while let Some((p, payload)) = w.buffered()? {
            let t = match p {
                Performative::Transfer(t) => t,
                Performative::Flow(f) => {
                    w.on_session_flow(&f);
                    continue;
                }
                Performative::Detach(d) => {
                    bail!("the broker detached the receiver: {:?}", d.error)
                }
                Performative::End(e) => bail!("the broker ended the session: {:?}", e.error),
                _ => continue,
            };
            w.next_incoming_id = w.next_incoming_id.wrapping_add(1);
            let (id, settled, whole) = match (partial.take(), t.more) {
                (None, false) => (
                    t.delivery_id.unwrap_or(0),
                    t.settled.unwrap_or(false),
                    payload,
                ),
                (None, true) => {
                    let id = t.delivery_id.unwrap_or(0);
                    partial = Some((id, t.settled.unwrap_or(false), payload.to_vec()));
                    continue;
                }
                (Some((id, s, mut buf)), more) => {
                    buf.extend_from_slice(&payload);
                    if more {
                        partial = Some((id, s, buf));
                        continue;
                    }
                    (id, s || t.settled.unwrap_or(false), buf.into())
                }
            };
            let now = shared.now_ns();
            delivery_count = delivery_count.wrapping_add(1);
            outstanding = outstanding.saturating_sub(1);
            counts.received.fetch_add(1, Ordering::Relaxed);
            m.total += 1;
            if !plan.latency {
                m.measured += 1;
                m.last_ns = now;
            } else if let Some(sent) = send_time(&whole) {
                if sent >= shared.warmup_ns {
                    hist.saturating_record((now.saturating_sub(sent) / 1000).max(1));
                    m.measured += 1;
                    m.last_ns = now;
                }
            }
            if !settled {
                accepts.add(&mut w.wbuf, id);
            }
        }
        accepts.flush(&mut w.wbuf);
        if outstanding <= credit / 2 {
            outstanding = credit;
            w.grant(delivery_count, credit);
        }
        w.flush().await?;
        tokio::select! {
            r = w.fill() => r?,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = tick(&mut heartbeat) => encode_empty_frame(&mut w.wbuf),
        }
    }
    w.close().await;
    Ok((m, hist))
}

/// The send time a bench producer wrote at the start of the first data section.
pub fn send_time(payload: &[u8]) -> Option<u64> {
    stamp(payload).map(|(t, _)| t)
}

/// The send time and the producer's sequence number at the start of the first data section.
pub fn stamp(payload: &[u8]) -> Option<(u64, u64)> {
    let s = Sections::scan(payload).ok()?;
    let body = &payload[s.body?];
    let bin = match body.get(..4)? {
        [0x00, 0x53, 0x75, 0xb0] => body.get(8..)?,
        [0x00, 0x53, 0x75, 0xa0] => body.get(5..)?,
        _ => return None,
    };
    let t = u64::from_be_bytes(bin.get(..8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(bin.get(8..16)?.try_into().ok()?);
    Some((t, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_send_time_after_other_sections() {
        // a header, empty message annotations, then the body
        let mut payload = vec![0x00, 0x53, 0x70, 0x45, 0x00, 0x53, 0x72, 0xc1, 0x01, 0x00];
        payload.extend([0x00, 0x53, 0x75, 0xb0, 0, 0, 0, 16]);
        payload.extend(42u64.to_be_bytes());
        payload.extend(7u64.to_be_bytes());
        assert_eq!(send_time(&payload), Some(42));
        assert_eq!(stamp(&payload), Some((42, 7)));
        assert_eq!(send_time(&[0x00, 0x53, 0x77, 0x40]), None);
    }
}
