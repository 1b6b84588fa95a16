//! A subscription's side of a topic's fan-out: copies staged in the topic's batch, each with
//! the subscription's own sequence number and a reference to the topic's shared body.

use std::sync::Arc;

use bytes::Bytes;

use super::{Entry, Lane, Queue, LANE_ACTIVE, LANE_DEAD, LANE_SCHEDULED};
use crate::keys::{self, BodyRecord, RefRecord};
use crate::storage::{Batch, Cf};
use crate::{DeadLettered, Message, StoreError};

/// One copy of a topic's message for a subscription.
#[derive(Debug, Clone)]
pub(crate) struct Copy {
    /// Where the body is (topic id, topic sequence number); `None`: the copy has a body of its
    /// own (a rule action changed it), written with it at the subscription's id.
    pub body: Option<(u64, u64)>,
    pub payload: Bytes,
    pub enqueued_ms: i64,
    /// When the topic's message expires, if it does.
    pub expires_ms: Option<i64>,
    /// Not available before this time (ms).
    pub scheduled_ms: Option<i64>,
    /// Straight to the dead-letter sub-queue, with this reason and description.
    pub dead_letter: Option<(String, String)>,
    /// Forwarded from a dead-letter sub-queue: why and where it was dead-lettered.
    pub carried: Option<DeadLettered>,
    /// The message's session id.
    pub session: Option<std::sync::Arc<str>>,
}

/// A staged copy: its entry and where it goes once committed.
pub(crate) struct Staged {
    entry: Entry,
    at: Where,
}

enum Where {
    Active,
    Scheduled(i64),
    Dead,
}

impl Staged {
    /// The copy's sequence number in its subscription.
    pub fn seq(&self) -> u64 {
        self.entry.msg.seq
    }

    /// Its scheduled time, if it waits for one.
    pub fn scheduled_ms(&self) -> Option<i64> {
        match self.at {
            Where::Scheduled(at) => Some(at),
            _ => None,
        }
    }
}

impl Queue {
    /// Refuses `incoming` more payload bytes if they would not fit.
    pub(crate) fn check_room(&self, incoming: u64) -> Result<(), StoreError> {
        let st = self.lock();
        if st.bytes + incoming > self.config.max_size_bytes {
            return Err(StoreError::Full(format!(
                "subscription '{}' holds {} of {} bytes",
                self.name, st.bytes, self.config.max_size_bytes
            )));
        }
        Ok(())
    }

    /// Gives each copy the next sequence number and records its reference in `batch`; nothing
    /// is visible until [`Queue::commit_copies`].
    pub(crate) fn stage_copies(&self, copies: Vec<Copy>, batch: &mut Batch) -> Vec<Staged> {
        let mut out = Vec::with_capacity(copies.len());
        let mut st = self.lock();
        for c in copies {
            let seq = st.next_seq;
            st.next_seq += 1;
            st.bytes += c.payload.len() as u64;
            let from = c.scheduled_ms.unwrap_or(c.enqueued_ms);
            let own = (self.config.default_ttl_ms > 0).then(|| {
                from.saturating_add(self.config.default_ttl_ms.min(i64::MAX as u64) as i64)
            });
            let expires_ms = match (c.expires_ms, own) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let (lane, at) = match (&c.dead_letter, c.scheduled_ms) {
                (Some(_), _) => (LANE_DEAD, Where::Dead),
                (None, Some(t)) => (LANE_SCHEDULED, Where::Scheduled(t)),
                (None, None) => (LANE_ACTIVE, Where::Active),
            };
            let (reason, description, source) = match (c.dead_letter, c.carried) {
                (Some((r, d)), _) => (Some(r), Some(d), None),
                (None, Some(dl)) => (dl.reason, dl.description, Some(dl.source)),
                (None, None) => (None, None, None),
            };
            let entry = Entry {
                msg: Arc::new(Message {
                    seq,
                    enqueued_ms: c.enqueued_ms,
                    expires_ms,
                    payload: c.payload,
                    session: c.session,
                }),
                shared: c.body,
                delivery_count: 0,
                dead_letter_reason: reason,
                dead_letter_description: description,
                dead_letter_source: source,
            };
            if c.body.is_none() {
                let own = BodyRecord {
                    enqueued_ms: c.enqueued_ms,
                    expires_ms: expires_ms.unwrap_or(0),
                    payload: entry.msg.payload.clone(),
                };
                batch.put(Cf::Body, keys::body_key(self.id, seq), own.encode());
            }
            let r = RefRecord {
                scheduled_ms: c.scheduled_ms,
                ..entry.ref_record()
            };
            batch.put(Cf::Ref, keys::ref_key(self.id, lane, seq), r.encode());
            out.push(Staged { entry, at });
        }
        if let Some(s) = out.last() {
            batch.max(Cf::Meta, keys::last_seq_key(self.id), s.seq());
        }
        out
    }

    /// The topic's batch is durable: the copies become available (or wait for their time).
    pub(crate) fn commit_copies(&self, staged: Vec<Staged>) {
        let (mut active, mut dead, mut later) = (Vec::new(), Vec::new(), Vec::new());
        for s in staged {
            match s.at {
                Where::Active => active.push(s.entry),
                Where::Dead => dead.push(s.entry),
                Where::Scheduled(t) => later.push((s.entry, Some(t))),
            }
        }
        self.add_scheduled(later);
        for (lane, es) in [(Lane::Main, active), (Lane::DeadLetter, dead)] {
            if !es.is_empty() {
                self.make_available(lane, es, true);
            }
        }
    }

    /// The topic's batch failed: the copies' bytes are not held after all.
    pub(crate) fn forget_copies(&self, staged: &[Staged]) {
        let n: u64 = staged
            .iter()
            .map(|s| s.entry.msg.payload.len() as u64)
            .sum();
        self.lock().bytes -= n;
    }

    /// Scheduled copies whose body is shared: (sequence number here, body location, due time).
    pub(crate) fn scheduled_shared(&self) -> Vec<(u64, (u64, u64), i64)> {
        let st = self.lock();
        st.scheduled
            .iter()
            .filter_map(|(seq, (e, at))| e.shared.map(|body| (*seq, body, *at)))
            .collect()
    }

    /// Whether this queue is a topic's subscription (its bodies are shared).
    pub fn is_subscription(&self) -> bool {
        self.bodies.is_some()
    }

    /// Whether a message with this sequence number is scheduled here.
    pub(crate) fn is_scheduled(&self, seq: u64) -> bool {
        self.lock().scheduled.contains_key(&seq)
    }
}
