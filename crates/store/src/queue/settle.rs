//! Settling locks one at a time: outcomes from consumers and management, lost locks, and
//! where a message goes after a failed delivery attempt.

use std::sync::Arc;

use super::{
    lane_mut, Entry, Lane, Locked, Outcome, Queue, State, LANE_ACTIVE, LANE_DEAD, LANE_DEFERRED,
    MAX_DELIVERY_COUNT_EXCEEDED,
};
use crate::keys;
use crate::storage::{Batch, Cf};
use crate::{Completion, LockToken, StoreError};

impl Queue {
    /// Settles a lock held by `consumer` (`None`: by whoever has the token, as management
    /// does).
    pub(super) fn settle(
        self: &Arc<Self>,
        consumer: Option<u64>,
        token: LockToken,
        outcome: Outcome,
        confirm: bool,
        done: Completion<()>,
    ) {
        let locked = {
            let mut st = self.lock();
            match st.locks.get(&token) {
                Some(l) if consumer.is_none_or(|c| c == l.consumer) => {
                    let l = st.locks.remove(&token).expect("present");
                    st.expiries.remove(&(l.expires_ms, token));
                    l
                }
                _ => {
                    drop(st);
                    return done(Err(StoreError::LockLost));
                }
            }
        };
        if locked.deferred {
            return self.settle_deferred(locked, outcome, done);
        }
        let Locked {
            mut entry, lane, ..
        } = locked;
        let original = (lane, entry.clone());
        let seq = entry.msg.seq;
        let ref_key = |l: u8| keys::ref_key(self.id, l, seq);
        let mut batch = Batch {
            lazy: !confirm,
            ..Batch::default()
        };
        let restore_bytes = if outcome == Outcome::Complete {
            entry.msg.payload.len() as u64
        } else {
            0
        };
        let back = match outcome {
            Outcome::Complete => {
                self.drop_body(&mut batch, &entry);
                batch.delete(Cf::Ref, ref_key(lane.key_byte()));
                self.lock().bytes -= entry.msg.payload.len() as u64;
                None
            }
            Outcome::Release => {
                // not a delivery attempt: put back the count written at dispatch
                batch.put(
                    Cf::Ref,
                    ref_key(lane.key_byte()),
                    entry.ref_record().encode(),
                );
                self.write_in_background(batch);
                self.make_available(lane, vec![entry], false);
                return done(Ok(()));
            }
            Outcome::Abandon => {
                entry.delivery_count += 1;
                let to = self.after_failed_delivery(&mut entry, lane, &mut batch);
                Some((to, entry))
            }
            Outcome::Defer => {
                batch.delete(Cf::Ref, ref_key(lane.key_byte()));
                batch.put(Cf::Ref, ref_key(LANE_DEFERRED), entry.ref_record().encode());
                self.lock().deferred.insert(seq, entry);
                None
            }
            Outcome::DeadLetter {
                reason,
                description,
            } => {
                if lane == Lane::Main {
                    entry.dead_letter_reason = reason;
                    entry.dead_letter_description = description;
                }
                batch.delete(Cf::Ref, ref_key(lane.key_byte()));
                batch.put(Cf::Ref, ref_key(LANE_DEAD), entry.ref_record().encode());
                Some((Lane::DeadLetter, entry))
            }
        };
        // A session's abandoned message goes back at once, so that nothing newer of its session
        // is handed out before it; its write is queued first, so it precedes the count the
        // redelivery writes. If the write fails, the message is back anyway (uncounted).
        if let Some((Lane::Main, e)) = &back {
            if self.config.requires_session && e.msg.session.is_some() {
                let (lane, entry) = back.expect("matched");
                self.write(batch, done);
                self.make_available(lane, vec![entry], false);
                return;
            }
        }
        let me = self.clone();
        self.write(
            batch,
            Box::new(move |r| match r {
                Ok(()) => {
                    if let Some((lane, entry)) = back {
                        me.make_available(lane, vec![entry], false);
                    }
                    done(Ok(()))
                }
                Err(e) => {
                    // nothing changed on disk: the message is where it was, unlocked
                    let (lane, entry) = original;
                    {
                        let mut st = me.lock();
                        st.deferred.remove(&entry.msg.seq);
                        st.bytes += restore_bytes;
                    }
                    me.make_available(lane, vec![entry], false);
                    done(Err(e))
                }
            }),
        );
    }

    /// Decides where a message goes after a failed delivery attempt (abandon, lost lock,
    /// consumer gone): back to its lane, or to the dead-letter lane once it has been delivered
    /// `MaxDeliveryCount` times. Adds the reference update to `batch`.
    pub(super) fn after_failed_delivery(
        &self,
        entry: &mut Entry,
        lane: Lane,
        batch: &mut Batch,
    ) -> Lane {
        let seq = entry.msg.seq;
        if lane == Lane::Main && entry.delivery_count >= self.config.max_delivery_count {
            entry.dead_letter_reason = Some(MAX_DELIVERY_COUNT_EXCEEDED.into());
            entry.dead_letter_description = Some(format!(
                "message was delivered {} times, MaxDeliveryCount is {}",
                entry.delivery_count, self.config.max_delivery_count
            ));
            batch.delete(Cf::Ref, keys::ref_key(self.id, LANE_ACTIVE, seq));
            batch.put(
                Cf::Ref,
                keys::ref_key(self.id, LANE_DEAD, seq),
                entry.ref_record().encode(),
            );
            Lane::DeadLetter
        } else {
            batch.put(
                Cf::Ref,
                keys::ref_key(self.id, lane.key_byte(), seq),
                entry.ref_record().encode(),
            );
            lane
        }
    }

    /// Ends every lock that expired at or before `now` (ms): the message is available again
    /// with its delivery count raised (dead-lettered past `max_delivery_count`). Settling it
    /// later fails with [`StoreError::LockLost`].
    pub fn expire_locks(self: &Arc<Self>, now: i64) {
        let mut returned: Vec<(Lane, Entry)> = Vec::new();
        let mut batch = Batch::default();
        {
            let mut guard = self.lock();
            let st = &mut *guard;
            while let Some(&(at, token)) = st.expiries.first() {
                if at > now {
                    break;
                }
                st.expiries.pop_first();
                if let Some(Locked {
                    mut entry,
                    lane,
                    deferred,
                    ..
                }) = st.locks.remove(&token)
                {
                    entry.delivery_count += 1;
                    if deferred {
                        // back into the deferred set; the count was written when it was received
                        st.deferred.insert(entry.msg.seq, entry);
                        continue;
                    }
                    let to = self.after_failed_delivery(&mut entry, lane, &mut batch);
                    returned.push((to, entry));
                }
            }
        }
        self.return_entries(batch, returned);
        if self.config.requires_session {
            self.expire_session_locks(now);
        }
    }

    pub(super) fn remove_consumer(self: &Arc<Self>, consumer: u64, lane: Lane) {
        let mut returned: Vec<(Lane, Entry)> = Vec::new();
        let mut batch = Batch::default();
        {
            let mut guard = self.lock();
            let st = &mut *guard;
            let ls = lane_mut(&mut st.main, &mut st.dead, lane);
            ls.consumers.retain(|c| c.id != consumer);
            if ls.next >= ls.consumers.len() {
                ls.next = 0;
            }
            for Locked {
                mut entry, lane, ..
            } in take_locks(st, consumer)
            {
                entry.delivery_count += 1;
                let to = self.after_failed_delivery(&mut entry, lane, &mut batch);
                returned.push((to, entry));
            }
        }
        self.return_entries(batch, returned);
    }

    /// Writes `batch`, then makes `returned` available again, whether or not the write worked
    /// (the messages are never lost; at worst a count update is).
    pub(super) fn return_entries(
        self: &Arc<Self>,
        mut batch: Batch,
        mut returned: Vec<(Lane, Entry)>,
    ) {
        if returned.is_empty() {
            return;
        }
        // nobody waits to hear about a return
        batch.lazy = true;
        returned.sort_by_key(|(_, e)| e.msg.seq);
        let me = self.clone();
        self.storage
            .write(batch, Box::new(move |_| me.make_available_again(returned)));
    }
}

/// Takes every lock `consumer` holds out of the lock tables.
pub(super) fn take_locks(st: &mut State, consumer: u64) -> Vec<Locked> {
    let tokens: Vec<LockToken> = st
        .locks
        .iter()
        .filter(|(_, l)| l.consumer == consumer)
        .map(|(t, _)| *t)
        .collect();
    tokens
        .into_iter()
        .map(|t| {
            let l = st.locks.remove(&t).expect("listed");
            st.expiries.remove(&(l.expires_ms, t));
            l
        })
        .collect()
}
