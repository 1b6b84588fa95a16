//! Storing new messages: staged in a batch under the queue's lock (sequence numbers,
//! duplicate detection, time to live, schedule), made available once the batch is durable.

use std::sync::Arc;

use bytes::Bytes;

use super::{timing, Entry, Lane, Queue, State, LANE_ACTIVE, LANE_SCHEDULED};
use crate::keys::{self, BodyRecord, RefRecord};
use crate::storage::{Batch, Cf};
use crate::{now_ms, Completion, Message, NewMessage, StoreError};

/// Messages a [`Queue::stage_groups`] staged, each with its scheduled time if it has one.
#[derive(Default)]
pub(crate) struct Enqueued {
    entries: Vec<(Entry, Option<i64>)>,
    /// Their payload bytes.
    size: u64,
}

impl Queue {
    /// Stores `payloads` atomically, in order, and makes them available once committed;
    /// `done` gets their sequence numbers.
    pub fn enqueue(self: &Arc<Self>, payloads: Vec<Bytes>, done: Completion<Vec<u64>>) {
        self.enqueue_at(payloads.into_iter().map(NewMessage::new).collect(), done);
    }

    /// Stores messages atomically, in order: each becomes available once committed, or at its
    /// scheduled time. With duplicate detection on, a message whose message-id was seen within
    /// the window is dropped (and still reported as stored: that is what Service Bus does).
    /// `done` gets the sequence numbers of the messages kept.
    pub fn enqueue_at(self: &Arc<Self>, items: Vec<NewMessage>, done: Completion<Vec<u64>>) {
        self.enqueue_each(
            vec![items],
            Box::new(move |r| done(r.and_then(|mut each| each.pop().expect("one group")))),
        );
    }

    /// Stores several groups of messages (one per transfer) with one storage write: each group
    /// is accepted or refused on its own (a group that does not fit in the queue is refused,
    /// the others are stored), as [`Queue::enqueue_at`] does for one. `done` gets each group's
    /// outcome, in order, or the storage's error if the write failed (then nothing is stored).
    pub fn enqueue_each(
        self: &Arc<Self>,
        groups: Vec<Vec<NewMessage>>,
        done: Completion<Vec<Result<Vec<u64>, StoreError>>>,
    ) {
        let mut batch = Batch::default();
        let (outcomes, staged) = self.stage_groups(groups, &mut batch);
        if batch.is_empty() {
            // every group refused, or only duplicates
            return done(Ok(outcomes));
        }
        let me = self.clone();
        self.write(
            batch,
            Box::new(move |r| match r {
                Ok(()) => {
                    me.commit_enqueued(staged);
                    drop(me);
                    done(Ok(outcomes));
                }
                Err(e) => {
                    me.forget_enqueued(&staged);
                    done(Err(e));
                }
            }),
        );
    }

    /// Stages groups of messages in `batch` as [`Queue::enqueue_each`] stores them: each
    /// group's outcome, and what to make available once the batch is written
    /// ([`Queue::commit_enqueued`]) or to take back if it is not ([`Queue::forget_enqueued`]).
    pub(crate) fn stage_groups(
        &self,
        groups: Vec<Vec<NewMessage>>,
        batch: &mut Batch,
    ) -> (Vec<Result<Vec<u64>, StoreError>>, Enqueued) {
        let now = now_ms();
        let mut staged = Enqueued::default();
        let mut outcomes = Vec::with_capacity(groups.len());
        {
            let mut guard = self.lock();
            let st = &mut *guard;
            for items in groups {
                if self.config.requires_session && items.iter().any(|m| m.session_id.is_none()) {
                    outcomes.push(Err(self.session_required()));
                    continue;
                }
                let incoming: u64 = items.iter().map(|m| m.payload.len() as u64).sum();
                if st.bytes + incoming > self.config.max_size_bytes {
                    outcomes.push(Err(StoreError::Full(format!(
                        "queue '{}' holds {} of {} bytes",
                        self.name, st.bytes, self.config.max_size_bytes
                    ))));
                    continue;
                }
                let first = staged.entries.len();
                let size = self.stage(st, items, now, batch, &mut staged.entries);
                st.bytes += size;
                staged.size += size;
                let seqs = staged.entries[first..].iter().map(|(e, _)| e.msg.seq);
                outcomes.push(Ok(seqs.collect()));
            }
        }
        if let Some((e, _)) = staged.entries.last() {
            batch.max(Cf::Meta, keys::last_seq_key(self.id), e.msg.seq);
        }
        (outcomes, staged)
    }

    /// The refusal of a message without a session id by an entity that requires sessions.
    pub fn session_required(&self) -> StoreError {
        StoreError::NotAllowed(format!(
            "the message has no SessionId, and '{}' requires sessions: every message sent to \
             it must have its SessionId set",
            self.name
        ))
    }

    /// The batch of a [`Queue::stage_groups`] is durable: its messages become available (or
    /// wait for their time).
    pub(crate) fn commit_enqueued(&self, staged: Enqueued) {
        let (later, now): (Vec<_>, Vec<_>) =
            staged.entries.into_iter().partition(|(_, at)| at.is_some());
        self.add_scheduled(later);
        self.make_available(Lane::Main, now.into_iter().map(|(e, _)| e).collect(), true);
    }

    /// The batch of a [`Queue::stage_groups`] failed: its bytes are not held after all.
    pub(crate) fn forget_enqueued(&self, staged: &Enqueued) {
        self.lock().bytes -= staged.size;
    }

    /// Adds one group's messages to `batch` and `entries` (sequence numbers, duplicate
    /// detection, time to live, schedule) and returns their payload bytes.
    fn stage(
        &self,
        st: &mut State,
        items: Vec<NewMessage>,
        now: i64,
        batch: &mut Batch,
        entries: &mut Vec<(Entry, Option<i64>)>,
    ) -> u64 {
        let mut size = 0;
        for m in items {
            let window = self.config.duplicate_detection_ms;
            if let (Some(id), true) = (&m.message_id, window > 0) {
                if !st.dedup.admit(self.id, id, now, window, batch) {
                    continue;
                }
            }
            let (at, expires) = timing(&m, self.config.default_ttl_ms, now);
            let seq = st.next_seq;
            st.next_seq += 1;
            size += m.payload.len() as u64;
            let body = BodyRecord {
                enqueued_ms: now,
                expires_ms: expires.unwrap_or(0),
                payload: m.payload,
            };
            batch.put(Cf::Body, keys::body_key(self.id, seq), body.encode());
            let dead = m.dead_lettered.unwrap_or_default();
            let e = Entry {
                shared: None,
                msg: Arc::new(Message {
                    seq,
                    enqueued_ms: now,
                    expires_ms: expires,
                    payload: body.payload,
                    session: m.session_id,
                }),
                delivery_count: 0,
                dead_letter_reason: dead.reason,
                dead_letter_description: dead.description,
                dead_letter_source: (!dead.source.is_empty()).then_some(dead.source),
            };
            let r = RefRecord {
                scheduled_ms: at,
                ..e.ref_record()
            };
            let lane = if at.is_some() {
                LANE_SCHEDULED
            } else {
                LANE_ACTIVE
            };
            batch.put(Cf::Ref, keys::ref_key(self.id, lane, seq), r.encode());
            entries.push((e, at));
        }
        size
    }
}
