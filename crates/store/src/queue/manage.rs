//! What management operations do to a queue: renew a lock, peek, settle by lock token, and
//! receive deferred messages by sequence number.

use std::sync::Arc;

use super::{
    load_entries, now_ms, Batch, Cf, Completion, Entry, Lane, LockToken, Locked, Message, Outcome,
    Queue, StoreError, LANE_ACTIVE, LANE_DEAD, LANE_DEFERRED, MANAGEMENT,
};
use crate::keys::{self};

/// The state a peeked message is in (Service Bus `x-opt-message-state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageState {
    /// Available or locked.
    Active = 0,
    /// Deferred: only received by sequence number.
    Deferred = 1,
    /// Scheduled for later.
    Scheduled = 2,
}

/// A message seen by peek: nothing about it changes.
#[derive(Debug, Clone)]
pub struct Peeked {
    pub message: Arc<Message>,
    pub delivery_count: u32,
    pub state: MessageState,
    pub locked_until_ms: Option<i64>,
    pub dead_letter_reason: Option<String>,
    pub dead_letter_description: Option<String>,
    pub dead_letter_source: Option<String>,
}

impl Queue {
    /// Extends a lock by the queue's lock duration from now; returns the new expiry (ms).
    pub fn renew_lock(&self, token: LockToken) -> Result<i64, StoreError> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let l = st.locks.get(&token).ok_or(StoreError::LockLost)?;
        // a session receiver's message is locked as long as its session is
        if let Some(until) = self.session_lock_of(st, l) {
            return Ok(until);
        }
        let l = st.locks.get_mut(&token).ok_or(StoreError::LockLost)?;
        let until = now_ms() + self.config.lock_duration_ms as i64;
        st.expiries.remove(&(l.expires_ms, token));
        l.expires_ms = until;
        st.expiries.insert((until, token));
        Ok(until)
    }

    /// Settles a lock by its token, whoever received the message (management's
    /// `update-disposition`).
    pub fn settle_lock(self: &Arc<Self>, token: LockToken, outcome: Outcome, done: Completion<()>) {
        self.settle(None, token, outcome, true, done);
    }

    /// Up to `count` messages of `lane` with sequence numbers from `from`, in order: available,
    /// locked, deferred (main lane) and scheduled ones. Nothing is locked or counted.
    pub fn peek(&self, lane: Lane, from: u64, count: usize) -> Result<Vec<Peeked>, StoreError> {
        self.peek_in(lane, None, from, count)
    }

    /// [`Queue::peek`] of one session's messages (a session receiver's peek), or of every
    /// message when `session` is `None`.
    pub fn peek_in(
        &self,
        lane: Lane,
        session: Option<&str>,
        from: u64,
        count: usize,
    ) -> Result<Vec<Peeked>, StoreError> {
        let mut found: Vec<Peeked> = Vec::new();
        let mut on_disk: Vec<u64> = Vec::new();
        let mine = |e: &Entry| session.is_none() || e.msg.session.as_deref() == session;
        {
            let st = self.lock();
            let ls = match lane {
                Lane::Main => &st.main,
                Lane::DeadLetter => &st.dead,
            };
            let peeked = |e: &Entry, state, locked_until_ms| Peeked {
                message: e.msg.clone(),
                delivery_count: e.delivery_count,
                state,
                locked_until_ms,
                dead_letter_reason: e.dead_letter_reason.clone(),
                dead_letter_description: e.dead_letter_description.clone(),
                dead_letter_source: e.dead_letter_source.clone(),
            };
            for e in ls.window_from(from).filter(|e| mine(e)).take(count) {
                found.push(peeked(e, MessageState::Active, None));
            }
            if session.is_none() {
                on_disk.extend(ls.spilled_from(from).take(count));
            }
            if lane == Lane::Main {
                // the sessions' available messages: one session's, or all of them in order
                let sessions = &st.sessions;
                match session {
                    Some(s) => {
                        if let Some(slot) = sessions.map.get(s) {
                            for e in slot.lane.window_from(from).take(count) {
                                found.push(peeked(e, MessageState::Active, None));
                            }
                            on_disk.extend(slot.lane.spilled_from(from).take(count));
                        }
                    }
                    None => {
                        for (seq, id) in sessions.of.range(from..).take(count) {
                            match sessions.map.get(id).and_then(|slot| slot.lane.get(*seq)) {
                                Some(e) => found.push(peeked(e, MessageState::Active, None)),
                                None => on_disk.push(*seq),
                            }
                        }
                    }
                }
            }
            for l in st
                .locks
                .values()
                .filter(|l| l.lane == lane && l.entry.msg.seq >= from && mine(&l.entry))
            {
                let state = if l.deferred {
                    MessageState::Deferred
                } else {
                    MessageState::Active
                };
                found.push(peeked(&l.entry, state, Some(l.expires_ms)));
            }
            if lane == Lane::Main {
                for e in st
                    .deferred
                    .range(from..)
                    .map(|(_, e)| e)
                    .filter(|e| mine(e))
                    .take(count)
                {
                    found.push(peeked(e, MessageState::Deferred, None));
                }
                for (e, _) in st
                    .scheduled
                    .range(from..)
                    .map(|(_, s)| s)
                    .filter(|(e, _)| mine(e))
                    .take(count)
                {
                    found.push(peeked(e, MessageState::Scheduled, None));
                }
            }
        }
        found.sort_by_key(|p| p.message.seq);
        found.truncate(count);
        on_disk.sort_unstable();
        on_disk.truncate(count);
        // spilled messages come after the window: read only those that can make the cut
        let limit = if found.len() == count {
            found.last().map_or(u64::MAX, |p| p.message.seq)
        } else {
            u64::MAX
        };
        on_disk.retain(|s| *s < limit);
        let byte = match lane {
            Lane::Main => LANE_ACTIVE,
            Lane::DeadLetter => LANE_DEAD,
        };
        for e in load_entries(self.storage.as_ref(), self.id, byte, &on_disk)? {
            found.push(Peeked {
                message: e.msg,
                delivery_count: e.delivery_count,
                state: MessageState::Active,
                locked_until_ms: None,
                dead_letter_reason: e.dead_letter_reason,
                dead_letter_description: e.dead_letter_description,
                dead_letter_source: e.dead_letter_source,
            });
        }
        found.sort_by_key(|p| p.message.seq);
        found.truncate(count);
        Ok(found)
    }

    /// Takes deferred messages by sequence number: locked (peek-lock) or removed
    /// (receive-and-delete). All or nothing: an unknown number is [`StoreError::NotFound`].
    pub fn receive_deferred(
        self: &Arc<Self>,
        seqs: &[u64],
        peek_lock: bool,
    ) -> Result<Vec<super::Delivery>, StoreError> {
        self.receive_deferred_in(None, seqs, peek_lock)
    }

    /// [`Queue::receive_deferred`] of one session's deferred messages: a message of another
    /// session is not found.
    pub fn receive_deferred_in(
        self: &Arc<Self>,
        session: Option<&str>,
        seqs: &[u64],
        peek_lock: bool,
    ) -> Result<Vec<super::Delivery>, StoreError> {
        let mut out = Vec::new();
        let mut batch = Batch::default();
        {
            let mut guard = self.lock();
            let st = &mut *guard;
            let there = |s: &u64| {
                st.deferred
                    .get(s)
                    .is_some_and(|e| session.is_none() || e.msg.session.as_deref() == session)
            };
            if let Some(missing) = seqs.iter().find(|s| !there(s)) {
                return Err(StoreError::NotFound(format!(
                    "no deferred message with sequence number {missing}"
                )));
            }
            let until = now_ms() + self.config.lock_duration_ms as i64;
            for seq in seqs {
                let Some(entry) = st.deferred.remove(seq) else {
                    continue;
                }; // listed twice
                let mut d = super::Delivery {
                    message: entry.msg.clone(),
                    lock: None,
                    locked_until_ms: None,
                    delivery_count: entry.delivery_count,
                    dead_letter_reason: entry.dead_letter_reason.clone(),
                    dead_letter_description: entry.dead_letter_description.clone(),
                    dead_letter_source: entry.dead_letter_source.clone(),
                };
                let ref_key = keys::ref_key(self.id, LANE_DEFERRED, *seq);
                if peek_lock {
                    let counted = crate::keys::RefRecord {
                        delivery_count: entry.delivery_count + 1,
                        ..entry.ref_record()
                    };
                    batch.put(Cf::Ref, ref_key, counted.encode());
                    let token = self.tokens.next();
                    d.lock = Some(token);
                    d.locked_until_ms = Some(until);
                    st.expiries.insert((until, token));
                    st.locks.insert(
                        token,
                        Locked {
                            entry,
                            lane: Lane::Main,
                            consumer: MANAGEMENT,
                            expires_ms: until,
                            deferred: true,
                        },
                    );
                } else {
                    st.bytes -= entry.msg.payload.len() as u64;
                    self.drop_body(&mut batch, &entry);
                    batch.delete(Cf::Ref, ref_key);
                }
                out.push(d);
            }
            self.write_in_background(batch);
        }
        Ok(out)
    }

    /// The outcome of a lock on a deferred message: its home is the deferred set.
    pub(super) fn settle_deferred(
        self: &Arc<Self>,
        locked: Locked,
        outcome: Outcome,
        done: Completion<()>,
    ) {
        let mut entry = locked.entry;
        let seq = entry.msg.seq;
        let deferred_ref = keys::ref_key(self.id, LANE_DEFERRED, seq);
        let mut batch = Batch::default();
        let mut to_dead = None;
        match outcome {
            Outcome::Complete => {
                self.drop_body(&mut batch, &entry);
                batch.delete(Cf::Ref, deferred_ref);
                self.lock().bytes -= entry.msg.payload.len() as u64;
            }
            Outcome::Release | Outcome::Defer | Outcome::Abandon => {
                if outcome == Outcome::Abandon {
                    entry.delivery_count += 1;
                }
                batch.put(Cf::Ref, deferred_ref, entry.ref_record().encode());
                self.lock().deferred.insert(seq, entry.clone());
            }
            Outcome::DeadLetter {
                reason,
                description,
            } => {
                entry.dead_letter_reason = reason;
                entry.dead_letter_description = description;
                batch.delete(Cf::Ref, deferred_ref);
                batch.put(
                    Cf::Ref,
                    keys::ref_key(self.id, LANE_DEAD, seq),
                    entry.ref_record().encode(),
                );
                to_dead = Some(entry);
            }
        }
        let me = self.clone();
        self.write(
            batch,
            Box::new(move |r| {
                if let (Ok(()), Some(e)) = (&r, to_dead) {
                    me.make_available(Lane::DeadLetter, vec![e], false);
                }
                drop(me);
                done(r)
            }),
        );
    }
}
