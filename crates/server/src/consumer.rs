//! Consumer links: a receiver link on a queue lane (or on one session of it), the sink that
//! hands the queue's deliveries to the link's connection, and the mapping of the peer's
//! dispositions onto store outcomes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ferrobus_codec::types::messaging::{Accepted, DeliveryState, Modified, Rejected, Released};
use ferrobus_metrics::Metrics;
use ferrobus_session::{Event, LinkReply, Outbox, OutgoingBody, OutgoingDelivery, OutgoingLink};
use ferrobus_store::{
    Completion, ConsumerHandle, ConsumerSink, Delivery, LockToken, Outcome, SessionLock, StoreError,
};

use crate::broker::{rejected, LinkGauge};
use crate::encode::{Stamp, OWNED_ANNOTATIONS};
use crate::errors::{condition, store_error};

/// Enqueue times of a consumer's locked messages, by delivery tag (for end-to-end latency).
/// Bounded by the consumer's credit.
pub(crate) type Inflight = Arc<Mutex<HashMap<[u8; 16], i64>>>;

/// What a consumer link is made of before it has its registration with a queue.
pub(crate) struct ConsumerParts {
    pub sink: Arc<Sink>,
    pub outbox: Outbox,
    pub metrics: Arc<Metrics>,
    pub inflight: Inflight,
    pub gauge: LinkGauge,
}

impl ConsumerParts {
    /// The consumer link, registered with `handle` (and holding `session`'s lock).
    pub(crate) fn into_consumer(
        self,
        handle: ConsumerHandle,
        session: Option<SessionLock>,
    ) -> Consumer {
        Consumer {
            handle,
            outbox: self.outbox,
            metrics: self.metrics,
            inflight: self.inflight,
            completing: Vec::new(),
            session,
            _gauge: self.gauge,
        }
    }
}

/// Hands a queue's deliveries to the consumer link's connection.
pub(crate) struct Sink {
    pub outbox: Outbox,
    pub metrics: Arc<Metrics>,
    pub inflight: Inflight,
}

impl ConsumerSink for Sink {
    fn deliver(&self, d: Delivery) {
        let m = &d.message;
        self.metrics.messages_out.inc();
        self.metrics.bytes_out.inc_by(m.payload.len() as u64);
        let tag = match d.lock {
            Some(lock) => dotnet_guid_bytes(lock),
            None => {
                let mut t = [0u8; 16];
                t[8..].copy_from_slice(&m.seq.to_be_bytes());
                t
            }
        };
        let stamp = Stamp {
            seq: m.seq,
            ttl_ms: ttl_of(m),
            enqueued_ms: m.enqueued_ms,
            state: 0,
            locked_until_ms: d.locked_until_ms,
            dead_letter_reason: d.dead_letter_reason.as_deref(),
            dead_letter_description: d.dead_letter_description.as_deref(),
            dead_letter_source: d.dead_letter_source.as_deref(),
        };
        if d.lock.is_some() {
            self.inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(tag, m.enqueued_ms);
        } else {
            // receive-and-delete: delivering is completing
            observe_latency(&self.metrics, m.enqueued_ms);
        }
        let delivery = OutgoingDelivery {
            tag,
            settled: d.lock.is_none(),
            message_format: 0,
            body: match stamp
                .dead_lettered()
                .then(|| stamp.encode(&m.payload, d.delivery_count))
            {
                // dead-lettered: the reason goes into the application properties (a copy)
                Some(Some(bytes)) => OutgoingBody::Encoded(bytes),
                _ => OutgoingBody::Stored {
                    payload: m.payload.clone(),
                    delivery_count: d.delivery_count,
                    ttl_ms: stamp.ttl_ms,
                    annotations: stamp.annotations(),
                    owned: OWNED_ANNOTATIONS,
                },
            },
        };
        self.outbox.send(|l| Event::Deliver(l, delivery));
    }

    fn drained(&self, delivery_count: u32) {
        self.outbox.send(|l| Event::Drained(l, delivery_count));
    }

    fn session_lost(&self) {
        let error = store_error(&StoreError::SessionLockLost(
            "the session lock expired: the session and its messages were released".into(),
        ));
        self.outbox.send(|l| Event::Detach(l, error));
    }
}

/// A message's effective time to live (what is left of it from enqueue), for the header.
pub fn ttl_of(m: &ferrobus_store::Message) -> Option<u32> {
    m.expires_ms
        .map(|e| (e - m.enqueued_ms).clamp(0, u32::MAX as i64) as u32)
}

/// A lock token as a Service Bus delivery tag: the UUID in .NET (little-endian) byte order.
fn dotnet_guid_bytes(u: [u8; 16]) -> [u8; 16] {
    let mut t = u;
    t[0..4].reverse();
    t[4..6].reverse();
    t[6..8].reverse();
    t
}

fn observe_latency(metrics: &Metrics, enqueued_ms: i64) {
    let ms = (ferrobus_store::now_ms() - enqueued_ms).max(0);
    metrics.end_to_end_seconds.observe(ms as f64 / 1000.0);
}

/// A consumer link on a queue lane (or on one session of it).
pub(crate) struct Consumer {
    handle: ConsumerHandle,
    outbox: Outbox,
    metrics: Arc<Metrics>,
    inflight: Inflight,
    /// Completions the client settled itself, gathered over one disposition range (with each
    /// message's enqueue time) and written together at its end.
    completing: Vec<(LockToken, Option<i64>)>,
    /// The session it holds, for a session receiver.
    session: Option<SessionLock>,
    _gauge: LinkGauge,
}

impl OutgoingLink for Consumer {
    fn flow(&mut self, delivery_count: u32, link_credit: u32, drain: bool) {
        self.handle.flow(delivery_count, link_credit, drain);
    }

    fn disposition(
        &mut self,
        delivery_id: u32,
        tag: [u8; 16],
        state: Option<DeliveryState>,
        settled: bool,
    ) {
        let (outcome, echo, label) = match &state {
            Some(DeliveryState::Accepted(_)) => (Outcome::Complete, state.clone(), "completed"),
            Some(DeliveryState::Released(_)) | None => (
                Outcome::Release,
                Some(DeliveryState::Released(Released {})),
                "released",
            ),
            Some(DeliveryState::Modified(m)) if m.undeliverable_here == Some(true) => (
                Outcome::Defer,
                Some(DeliveryState::Modified(echo_modified(m))),
                "deferred",
            ),
            Some(DeliveryState::Modified(m)) => (
                Outcome::Abandon,
                Some(DeliveryState::Modified(echo_modified(m))),
                "abandoned",
            ),
            Some(DeliveryState::Rejected(r)) => {
                let (reason, description) = dead_letter_fields(r);
                (
                    Outcome::DeadLetter {
                        reason,
                        description,
                    },
                    Some(DeliveryState::Rejected(Rejected { error: None })),
                    "dead_lettered",
                )
            }
            Some(_) => return, // received: not an outcome
        };
        let outbox = self.outbox.clone();
        let metrics = self.metrics.clone();
        let enqueued = self
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&tag);
        let completing = outcome == Outcome::Complete;
        let in_session = self.session.is_some();
        if completing && settled {
            // settled first, hears nothing back: completed with the rest of the range
            self.completing.push((dotnet_guid_bytes(tag), enqueued));
            return;
        }
        let done: Completion<()> = Box::new(move |r| {
            let echoed = match r {
                Ok(()) => {
                    metrics.settled.with_label_values(&[label]).inc();
                    if let (true, Some(at)) = (completing, enqueued) {
                        observe_latency(&metrics, at);
                    }
                    echo.unwrap_or(DeliveryState::Accepted(Accepted {}))
                }
                // a session receiver's locks end with its session's
                Err(StoreError::LockLost) if in_session => {
                    rejected(store_error(&StoreError::SessionLockLost(
                        "the session lock was lost or expired: its messages were released".into(),
                    )))
                }
                Err(e) => rejected(store_error(&e)),
            };
            if !settled {
                outbox.send(|l| Event::Settled(l, delivery_id, echoed));
            }
        });
        let lock = dotnet_guid_bytes(tag);
        if settled {
            // the client settled first and hears nothing back: no need to wait for the disk
            self.handle.settle_unconfirmed(lock, outcome, done);
        } else {
            self.handle.settle(lock, outcome, done);
        }
    }

    fn reply(&self) -> LinkReply {
        match &self.session {
            Some(lock) => crate::session_link::reply(lock),
            None => LinkReply::default(),
        }
    }

    fn dispositions_end(&mut self) {
        if self.completing.is_empty() {
            return;
        }
        let (locks, enqueued): (Vec<LockToken>, Vec<Option<i64>>) =
            std::mem::take(&mut self.completing).into_iter().unzip();
        let metrics = self.metrics.clone();
        self.handle.complete_unconfirmed(
            &locks,
            Box::new(move |r| {
                // the client settled first: it hears nothing either way
                if let Ok(done) = r {
                    let counter = metrics.settled.with_label_values(&["completed"]);
                    for (ok, at) in done.into_iter().zip(enqueued) {
                        if ok {
                            counter.inc();
                            if let Some(at) = at {
                                observe_latency(&metrics, at);
                            }
                        }
                    }
                }
            }),
        );
    }
}

fn echo_modified(m: &Modified) -> Modified {
    Modified {
        delivery_failed: m.delivery_failed,
        undeliverable_here: m.undeliverable_here,
        message_annotations: None,
    }
}

/// The dead-letter reason and description a client put in its rejected outcome: the error's
/// info fields `DeadLetterReason` / `DeadLetterErrorDescription` (Service Bus SDKs), else the
/// error's condition and description.
fn dead_letter_fields(r: &Rejected) -> (Option<String>, Option<String>) {
    let Some(err) = &r.error else {
        return (None, None);
    };
    let info = |key: &str| {
        err.info.as_ref().and_then(|m| {
            m.iter()
                .find(|(k, _)| k.as_str() == key)
                .and_then(|(_, v)| match v {
                    ferrobus_codec::types::primitives::Value::String(s) => Some(s.clone()),
                    _ => None,
                })
        })
    };
    let reason = info("DeadLetterReason").or_else(|| Some(condition(&err.condition)));
    let description = info("DeadLetterErrorDescription").or_else(|| err.description.clone());
    (reason, description)
}
