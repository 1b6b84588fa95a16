//! Session scenarios (Ferrobus and Service Bus only): next-available session receivers that
//! each take a session, receive all its messages, check they come in the order they were
//! sent, and let the session go; and setting session state through `$management`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferrobus_codec::frame::{encode_empty_frame, encode_frame};
use ferrobus_codec::message::Sections;
use ferrobus_codec::types::definitions::Fields;
use ferrobus_codec::types::messaging::{
    AmqpValue, ApplicationProperties, FilterSet, MessageId, Properties,
};
use ferrobus_codec::types::performatives::{Performative, Transfer};
use ferrobus_codec::types::primitives::{Binary, OrderedMap, SimpleValue, Symbol, Value};
use hdrhistogram::Histogram;

use crate::load::{stamp, Measured, Shared};
use crate::wire::{AcceptRanges, Endpoint, LinkOptions, Wire};

const SESSION_FILTER: &str = "com.microsoft:session-filter";

/// What a session consumer does.
pub struct SessionPlan {
    pub address: String,
    /// Messages each session holds: the receiver lets a session go once it has them all.
    pub per_session: u64,
    pub latency: bool,
}

/// What one session consumer saw.
pub struct SessionsSeen {
    pub measured: Measured,
    pub latency: Histogram<u64>,
    /// Sessions it took.
    pub sessions: u64,
}

/// Takes the next available session again and again until every message was received;
/// each session's messages must come in the order the producer sent them.
pub async fn consume_sessions(
    ep: Endpoint,
    plan: SessionPlan,
    shared: &Shared,
    name: String,
) -> anyhow::Result<SessionsSeen> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut w = Wire::connect(&ep, &name).await?;
    let counts = &shared.queues[0];
    let mut m = Measured::default();
    let mut sessions = 0u64;
    let mut heartbeat = w.heartbeat.map(tokio::time::interval);
    for k in 0u64.. {
        if shared.producers_left.load(Ordering::SeqCst) == 0
            && counts.received.load(Ordering::Relaxed) >= counts.sent.load(Ordering::Relaxed)
        {
            break;
        }
        let mut filter = FilterSet::new();
        filter.insert(Symbol::from(SESSION_FILTER), Value::Null);
        let mut properties = Fields::new();
        properties.insert(Symbol::from("com.microsoft:timeout"), Value::Uint(1000));
        let opts = LinkOptions {
            handle: 0,
            name: Some(format!("{name}-{k}")),
            filter: Some(filter),
            properties: Some(properties),
            credit: Some(plan.per_session.min(u32::MAX as u64) as u32),
        };
        let reply = match w.attach_link(&ep, &plan.address, false, false, opts).await {
            Ok(a) => a,
            // no session available within the second: look again (or stop, when all came)
            Err(e) if e.to_string().contains("com.microsoft:timeout") => continue,
            Err(e) => return Err(e),
        };
        let session = reply
            .source
            .as_ref()
            .and_then(|s| s.filter.as_ref())
            .and_then(|f| f.get(&Symbol::from(SESSION_FILTER)))
            .and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                _ => None,
            })
            .context("the attach reply names no session")?;
        sessions += 1;
        let want = plan.per_session;
        let mut got = 0u64;
        let mut last: Option<u64> = None;
        while got < want {
            let mut accepts = AcceptRanges::default();
            while let Some((p, payload)) = w.buffered()? {
                let t = match p {
                    Performative::Transfer(t) => t,
                    Performative::Flow(f) => {
                        w.on_session_flow(&f);
                        continue;
                    }
                    Performative::Detach(d) => {
                        bail!("the broker detached session {session}: {:?}", d.error)
                    }
                    Performative::End(e) => bail!("the broker ended the session: {:?}", e.error),
                    _ => continue,
                };
                if t.more {
                    bail!("multi-frame deliveries are not expected in this scenario");
                }
                w.next_incoming_id = w.next_incoming_id.wrapping_add(1);
                let (sent, seq) = stamp(&payload).context("a message without a stamp")?;
                if let Some(l) = last.filter(|l| seq <= *l) {
                    bail!("session {session}: message {seq} came after {l}");
                }
                last = Some(seq);
                got += 1;
                counts.received.fetch_add(1, Ordering::Relaxed);
                m.total += 1;
                let now = shared.now_ns();
                if !plan.latency {
                    m.measured += 1;
                    m.last_ns = now;
                } else if sent >= shared.warmup_ns {
                    hist.saturating_record((now.saturating_sub(sent) / 1000).max(1));
                    m.measured += 1;
                    m.last_ns = now;
                }
                if !t.settled.unwrap_or(false) {
                    accepts.add(&mut w.wbuf, t.delivery_id.unwrap_or(0));
                }
            }
            accepts.flush(&mut w.wbuf);
            w.flush().await?;
            if got >= want {
                break;
            }
            tokio::select! {
                r = w.fill() => r?,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = tick(&mut heartbeat) => encode_empty_frame(&mut w.wbuf),
            }
        }
        w.detach(0).await?;
    }
    w.close().await;
    Ok(SessionsSeen {
        measured: m,
        latency: hist,
        sessions,
    })
}

async fn tick(hb: &mut Option<tokio::time::Interval>) {
    match hb {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Sets `size` bytes of state on sessions `s0` .. `s<count - 1>` of `address`, one after the
/// other through its `$management` node (each session held by a receiver meanwhile); returns
/// how long it took.
pub async fn set_states(
    ep: &Endpoint,
    address: &str,
    count: usize,
    size: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut w = Wire::connect(ep, "bench-session-state").await?;
    let node = format!("{address}/$management");
    let link = |handle: u32, name: &str| LinkOptions {
        handle,
        name: Some(name.to_string()),
        ..LinkOptions::default()
    };
    w.attach_link(ep, &node, true, true, link(1, "bench-mgmt-send"))
        .await?;
    w.attach_link(ep, &node, false, true, link(2, "bench-mgmt-recv"))
        .await?;
    let mut answers = 0u32;
    w.grant_on(2, 0, 1000);
    let state = vec![7u8; size];
    for i in 0..count {
        let session = format!("s{i}");
        let mut filter = FilterSet::new();
        filter.insert(Symbol::from(SESSION_FILTER), Value::String(session.clone()));
        let opts = LinkOptions {
            handle: 0,
            name: Some(format!("bench-state-{i}")),
            filter: Some(filter),
            properties: None,
            credit: None,
        };
        w.attach_link(ep, address, false, false, opts).await?;
        let payload = request(i as u64, &session, &state)?;
        let transfer = Transfer {
            handle: 1.into(),
            delivery_id: Some(i as u32),
            delivery_tag: Some(Binary::from((i as u64).to_be_bytes().to_vec())),
            message_format: Some(0),
            settled: Some(true),
            more: false,
            rcv_settle_mode: None,
            state: None,
            resume: false,
            aborted: false,
            batchable: false,
        };
        encode_frame(&mut w.wbuf, 0, &Performative::Transfer(transfer), &payload);
        w.next_outgoing_id = w.next_outgoing_id.wrapping_add(1);
        w.flush().await?;
        loop {
            let (p, payload) = match w.buffered()? {
                Some(x) => x,
                None => {
                    w.fill().await?;
                    continue;
                }
            };
            match p {
                Performative::Transfer(t) if t.handle.0 == 2 => {
                    w.next_incoming_id = w.next_incoming_id.wrapping_add(1);
                    answers += 1;
                    let status = status_code(&payload)?;
                    if status != 200 {
                        bail!("set-session-state for {session} answered {status}");
                    }
                    break;
                }
                Performative::Transfer(_) => {
                    w.next_incoming_id = w.next_incoming_id.wrapping_add(1)
                }
                Performative::Flow(f) => w.on_session_flow(&f),
                Performative::Detach(d) => bail!("the broker detached a link: {:?}", d.error),
                Performative::End(e) => bail!("the broker ended the session: {:?}", e.error),
                _ => {}
            }
        }
        if answers.is_multiple_of(500) {
            w.grant_on(2, answers, 1000);
        }
        w.detach(0).await?;
    }
    w.close().await;
    Ok(started.elapsed())
}

/// A `set-session-state` request.
fn request(id: u64, session: &str, state: &[u8]) -> anyhow::Result<Vec<u8>> {
    let props = Properties {
        message_id: Some(MessageId::Ulong(id)),
        ..Properties::default()
    };
    let mut app = OrderedMap::new();
    app.insert(
        "operation".to_string(),
        SimpleValue::String("com.microsoft:set-session-state".into()),
    );
    let mut body = OrderedMap::new();
    body.insert(
        Value::String("session-id".into()),
        Value::String(session.into()),
    );
    body.insert(
        Value::String("session-state".into()),
        Value::Binary(state.to_vec().into()),
    );
    let mut out = ferrobus_codec::serde_amqp::to_vec(&props)?;
    out.extend(ferrobus_codec::serde_amqp::to_vec(&ApplicationProperties(
        app,
    ))?);
    out.extend(ferrobus_codec::serde_amqp::to_vec(&AmqpValue(Value::Map(
        body,
    )))?);
    Ok(out)
}

/// The `statusCode` of a management answer.
fn status_code(payload: &[u8]) -> anyhow::Result<i64> {
    let s = Sections::scan(payload)?;
    let range = s
        .application_properties
        .context("an answer without a status")?;
    let app: ApplicationProperties =
        ferrobus_codec::decode(&payload[range], "application properties")?;
    match app.0.get("statusCode") {
        Some(SimpleValue::Int(c)) => Ok(*c as i64),
        Some(SimpleValue::Long(c)) => Ok(*c),
        other => bail!("an answer with statusCode {other:?}"),
    }
}
