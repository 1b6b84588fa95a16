//! Handing messages out: dispatch to consumers with credit (locking or removing each one),
//! and the consumers' flow (credit and drain).

use std::sync::Arc;

use super::{lane_mut, lane_of, load_entries, Delivery, Lane, Locked, Queue, ReceiveMode, State};
use crate::keys::{self, RefRecord};
use crate::now_ms;
use crate::storage::{Batch, Cf};

impl Queue {
    pub(super) fn dispatch(&self, st: &mut State, lane: Lane, pending: &mut Batch) {
        self.dispatch_at(st, lane, None, pending)
    }

    /// Hands available messages of `lane` (or of one session of the main lane) to its
    /// consumers while they have credit.
    pub(super) fn dispatch_at(
        &self,
        st: &mut State,
        lane: Lane,
        session: Option<&Arc<str>>,
        pending: &mut Batch,
    ) {
        let State {
            main,
            dead,
            locks,
            expiries,
            expiring,
            bytes,
            sessions,
            ..
        } = st;
        let now = now_ms();
        let mut lock_until = now + self.config.lock_duration_ms as i64;
        let mut expired = Vec::new();
        let (ls, mut of) = match session {
            None => (lane_mut(main, dead, lane), None),
            Some(s) => {
                let Some(slot) = sessions.map.get_mut(s) else {
                    return;
                };
                // a session's messages are locked as long as the session is
                if let Some(h) = &slot.holder {
                    lock_until = h.until_ms;
                }
                (&mut slot.lane, Some(&mut sessions.of))
            }
        };
        let load =
            |seqs: &[u64]| load_entries(self.storage.as_ref(), self.id, lane.key_byte(), seqs);
        while ls.dispatchable() {
            let entry = match ls.pop(&load) {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(queue = %self.name, error = %e, "reading messages back from storage failed");
                    break;
                }
            };
            let seq = entry.msg.seq;
            if let Some(of) = of.as_mut() {
                of.remove(&seq);
            }
            // time to live applies in the queue, never in its dead-letter sub-queue
            if let (Lane::Main, Some(at)) = (lane, entry.msg.expires_ms) {
                expiring.remove(&(at, seq));
                if at <= now {
                    // an expired message is never delivered
                    expired.push(entry);
                    continue;
                }
            }
            let i = ls.next_consumer().expect("dispatchable");
            let c = &mut ls.consumers[i];
            c.credit -= 1;
            c.delivery_count = c.delivery_count.wrapping_add(1);
            let mut d = Delivery {
                message: entry.msg.clone(),
                lock: None,
                locked_until_ms: None,
                delivery_count: entry.delivery_count,
                dead_letter_reason: entry.dead_letter_reason.clone(),
                dead_letter_description: entry.dead_letter_description.clone(),
                dead_letter_source: entry.dead_letter_source.clone(),
            };
            match c.mode {
                ReceiveMode::PeekLock => {
                    // Count this delivery on disk before it can be settled: if the broker stops
                    // while the message is locked, it comes back counted (locks are not
                    // persisted). Releasing it writes the old count back.
                    let counted = RefRecord {
                        delivery_count: entry.delivery_count + 1,
                        ..entry.ref_record()
                    };
                    pending.put(
                        Cf::Ref,
                        keys::ref_key(self.id, lane.key_byte(), seq),
                        counted.encode(),
                    );
                    let token = self.tokens.next();
                    d.lock = Some(token);
                    d.locked_until_ms = Some(lock_until);
                    // a session's message locks end with the session's lock
                    if session.is_none() {
                        expiries.insert((lock_until, token));
                    }
                    locks.insert(
                        token,
                        Locked {
                            entry,
                            lane,
                            consumer: c.id,
                            expires_ms: lock_until,
                            deferred: false,
                        },
                    );
                }
                ReceiveMode::ReceiveAndDelete => {
                    *bytes -= entry.msg.payload.len() as u64;
                    self.drop_body(pending, &entry);
                    pending.delete(Cf::Ref, keys::ref_key(self.id, lane.key_byte(), seq));
                }
            }
            c.sink.deliver(d);
        }
        for e in expired {
            self.expire(e, dead, bytes, pending);
        }
    }

    /// Writes what dispatch recorded (delivery counts, receive-and-delete removals) without
    /// waiting. Called with the queue lock held, so these writes are queued before any later
    /// write about the same messages (a settlement needs the lock first); that is safe because
    /// the completion does nothing and `Storage::write` does not block.
    pub(super) fn write_in_background(&self, mut batch: Batch) {
        batch.lazy = true;
        if !batch.is_empty() {
            // if it fails, a removed message may reappear or a delivery go uncounted after a
            // crash; nothing is lost
            self.write(batch, Box::new(|_| {}));
        }
    }

    pub(super) fn flow(
        &self,
        consumer: u64,
        lane: Lane,
        session: Option<&Arc<str>>,
        delivery_count: u32,
        link_credit: u32,
        drain: bool,
    ) {
        let mut pending = Batch::default();
        {
            let mut st = self.lock();
            let st = &mut *st;
            let Some(ls) = lane_of(st, lane, session) else {
                return;
            };
            let Some(c) = ls.consumers.iter_mut().find(|c| c.id == consumer) else {
                return;
            };
            // credit counts from the receiver's view of the delivery count; deliveries it has
            // not seen yet are already spent
            let limit = delivery_count.wrapping_add(link_credit);
            c.credit = (limit.wrapping_sub(c.delivery_count) as i32).max(0) as u32;
            self.dispatch_at(st, lane, session, &mut pending);
            self.write_in_background(pending);
            if drain {
                let Some(ls) = lane_of(st, lane, session) else {
                    return;
                };
                if let Some(c) = ls.consumers.iter_mut().find(|c| c.id == consumer) {
                    c.delivery_count = c.delivery_count.wrapping_add(c.credit);
                    c.credit = 0;
                    c.sink.drained(c.delivery_count);
                }
            }
        }
    }
}
