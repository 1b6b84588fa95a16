//! Message sessions (`RequiresSession`): the main lane of a session entity is split by session
//! id, and a receiver takes one session's lock and gets only that session's messages, in order.
//!
//! Each session with available messages, or held by a receiver, has a [`Slot`]: its own
//! [`LaneState`] (the same window / spilled split and dispatch as a plain lane, with at most one
//! consumer: the lock holder) and its holder. A session nobody holds and with nothing available
//! has no slot, so only active sessions take memory; a fresh message for a session nobody holds
//! stays on disk until a receiver takes the session. Sessions that became available wait in
//! `ready`, oldest first, for next-available receivers, so none starves. Locks live in memory
//! only (as message locks do): a restart frees every session. Session state is on disk only
//! (`session` column family), read and written through management operations.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::lane::{Consumer, LaneState};
use super::{
    lane_mut, ConsumerHandle, ConsumerSink, Entry, Lane, Locked, Queue, ReceiveMode, State,
};
use crate::keys;
use crate::storage::{Batch, Cf};
use crate::{now_ms, Completion, StoreError};

/// Called when a session becomes available to next-available receivers (under the queue's
/// lock: it must only wake someone up).
pub(super) type Signal = Box<dyn Fn() + Send + Sync>;

/// A session lock taken by [`Queue::accept_session`].
#[derive(Debug, Clone)]
pub struct SessionLock {
    /// The session's id.
    pub session: Arc<str>,
    /// Until when the lock holds (ms since the epoch).
    pub locked_until_ms: i64,
}

pub(super) struct Holder {
    consumer: u64,
    pub until_ms: i64,
}

#[derive(Default)]
pub(super) struct Slot {
    /// The session's available messages and its consumer (the holder's).
    pub lane: LaneState,
    pub holder: Option<Holder>,
}

#[derive(Default)]
pub(super) struct Sessions {
    pub map: HashMap<Arc<str>, Slot>,
    /// Sessions that became available (nobody holds them, messages wait), oldest first; an
    /// entry that no longer holds is skipped when it comes up.
    ready: VecDeque<Arc<str>>,
    /// The session of each available message, by sequence number (peek across sessions,
    /// time to live).
    pub of: BTreeMap<u64, Arc<str>>,
    /// Held locks by expiry.
    expiries: BTreeSet<(i64, Arc<str>)>,
    /// Locks that expired while held, since start.
    pub lost_total: u64,
}

impl Sessions {
    /// A message of `session` found on disk at start-up.
    pub fn recover(&mut self, session: Arc<str>, seq: u64) {
        let slot = self.map.entry(session.clone()).or_default();
        slot.lane.push_spilled(seq);
        self.of.insert(seq, session);
    }

    /// Start-up is over: every session with messages waits for a receiver, the one with the
    /// oldest message first.
    pub fn recovered(&mut self) {
        let mut firsts: Vec<(u64, Arc<str>)> = self
            .map
            .iter()
            .filter_map(|(s, slot)| slot.lane.spilled_from(0).next().map(|q| (q, s.clone())))
            .collect();
        firsts.sort();
        self.ready = firsts.into_iter().map(|(_, s)| s).collect();
    }

    /// Sessions with messages available.
    pub fn available(&self) -> usize {
        self.map.values().filter(|s| !s.lane.is_empty()).count()
    }

    /// Sessions held by a receiver.
    pub fn locked(&self) -> usize {
        self.map.values().filter(|s| s.holder.is_some()).count()
    }

    /// Lists `session` as available to next-available receivers. Entries that no longer hold
    /// are dropped once they outnumber the sessions, so the list stays bounded even when only
    /// receivers of named sessions come and go.
    fn push_ready(&mut self, session: Arc<str>) {
        self.ready.push_back(session);
        if self.ready.len() > 2 * self.map.len() + 16 {
            let map = &self.map;
            let mut seen = std::collections::HashSet::new();
            self.ready.retain(|s| {
                map.get(s)
                    .is_some_and(|slot| slot.holder.is_none() && !slot.lane.is_empty())
                    && seen.insert(s.clone())
            });
        }
    }

    /// Forgets the slot of `session` if nobody holds it and it has nothing available.
    pub fn tidy(&mut self, session: &Arc<str>) {
        if let Some(slot) = self.map.get(session) {
            if slot.holder.is_none() && slot.lane.is_empty() {
                self.map.remove(session);
            }
        }
    }
}

impl Queue {
    /// Whether the entity requires sessions.
    pub fn requires_session(&self) -> bool {
        self.config.requires_session
    }

    /// Sets what is called when a session becomes available to next-available receivers
    /// (once; later calls are ignored). It runs under the queue's lock and must only wake
    /// someone up.
    pub fn on_session_available(&self, signal: impl Fn() + Send + Sync + 'static) {
        let _ = self.session_signal.set(Box::new(signal));
    }

    fn signal_session(&self) {
        if let Some(s) = self.session_signal.get() {
            s();
        }
    }

    /// Makes an available message of a session entity part of its session's lane; a session
    /// that has a holder is listed in `touched` (to dispatch to), one that just became
    /// available is offered to next-available receivers.
    pub(super) fn push_session(
        &self,
        st: &mut State,
        e: Entry,
        fresh: bool,
        touched: &mut Vec<Arc<str>>,
    ) {
        let session = e.msg.session.clone().expect("a session message");
        let sessions = &mut st.sessions;
        let slot = sessions.map.entry(session.clone()).or_default();
        let was_empty = slot.lane.is_empty();
        let seq = e.msg.seq;
        match &slot.holder {
            // nobody reads it now: the message waits on disk, so idle sessions cost no memory
            None if fresh => slot.lane.push_spilled(seq),
            _ => slot.lane.push(e, fresh),
        }
        sessions.of.insert(seq, session.clone());
        if slot.holder.is_some() {
            if !touched.contains(&session) {
                touched.push(session);
            }
        } else if was_empty {
            sessions.push_ready(session);
            self.signal_session();
        }
    }

    /// Takes the lock of session `which` (or of the next session with available messages,
    /// when `None`) for a new consumer. `Ok(None)`: no session is available now.
    pub fn accept_session(
        self: &Arc<Self>,
        which: Option<&str>,
        mode: ReceiveMode,
        sink: Arc<dyn ConsumerSink>,
    ) -> Result<Option<(ConsumerHandle, SessionLock)>, StoreError> {
        if !self.config.requires_session {
            return Err(StoreError::NotAllowed(format!(
                "'{}' does not require sessions: a session receiver cannot be created on it",
                self.name
            )));
        }
        let mut guard = self.lock();
        let st = &mut *guard;
        let sessions = &mut st.sessions;
        let session: Arc<str> = match which {
            Some(id) => match sessions.map.get_key_value(id) {
                Some((_, slot)) if slot.holder.is_some() => {
                    return Err(StoreError::SessionCannotBeLocked(format!(
                        "the session '{id}' is locked by another receiver"
                    )))
                }
                Some((key, _)) => key.clone(),
                None => Arc::from(id),
            },
            None => loop {
                let Some(s) = sessions.ready.pop_front() else {
                    return Ok(None);
                };
                match sessions.map.get(&s) {
                    Some(slot) if slot.holder.is_none() && !slot.lane.is_empty() => break s,
                    _ => continue,
                }
            },
        };
        let id = st.next_consumer;
        st.next_consumer += 1;
        let until = now_ms() + self.config.lock_duration_ms as i64;
        let slot = sessions.map.entry(session.clone()).or_default();
        slot.holder = Some(Holder {
            consumer: id,
            until_ms: until,
        });
        slot.lane.consumers.push(Consumer {
            id,
            mode,
            credit: 0,
            delivery_count: 0,
            sink,
        });
        sessions.expiries.insert((until, session.clone()));
        let handle = ConsumerHandle {
            queue: self.clone(),
            id,
            lane: Lane::Main,
            session: Some(session.clone()),
            closed: false,
        };
        Ok(Some((
            handle,
            SessionLock {
                session,
                locked_until_ms: until,
            },
        )))
    }

    /// Extends a held session's lock by the lock duration from now; returns the new expiry.
    pub fn renew_session_lock(&self, session: &str) -> Result<i64, StoreError> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let (key, slot) = held(&mut st.sessions.map, session)?;
        let h = slot.holder.as_mut().expect("held");
        let until = now_ms() + self.config.lock_duration_ms as i64;
        st.sessions.expiries.remove(&(h.until_ms, key.clone()));
        h.until_ms = until;
        st.sessions.expiries.insert((until, key));
        let consumer = h.consumer;
        for l in st.locks.values_mut().filter(|l| l.consumer == consumer) {
            l.expires_ms = until;
        }
        Ok(until)
    }

    /// Until when a message lock taken by a session receiver holds: its session's lock (the
    /// message locks of a session end with it). `None`: not such a lock.
    pub(super) fn session_lock_of(&self, st: &State, l: &Locked) -> Option<i64> {
        let session = l.entry.msg.session.as_ref()?;
        let slot = st.sessions.map.get(session)?;
        slot.holder
            .as_ref()
            .filter(|h| h.consumer == l.consumer)
            .map(|h| h.until_ms)
    }

    /// The state of a held session (`None`: none set).
    pub fn session_state(&self, session: &str) -> Result<Option<Bytes>, StoreError> {
        {
            let mut st = self.lock();
            held(&mut st.sessions.map, session)?;
        }
        let key = keys::session_state_key(self.id, session);
        let mut v = self.storage.get_many(Cf::Session, &[key])?;
        match v.pop().flatten() {
            None => Ok(None),
            Some(v) => Ok(Some(decode_state(&v)?.1)),
        }
    }

    /// Sets (or with `None` clears) the state of a held session; `done` hears once durable.
    pub fn set_session_state(&self, session: &str, state: Option<Bytes>, done: Completion<()>) {
        {
            let mut st = self.lock();
            if let Err(e) = held(&mut st.sessions.map, session) {
                drop(st);
                return done(Err(e));
            }
        }
        let key = keys::session_state_key(self.id, session);
        let mut batch = Batch::default();
        match state {
            Some(v) => {
                let mut record = Vec::with_capacity(8 + v.len());
                record.extend_from_slice(&now_ms().to_be_bytes());
                record.extend_from_slice(&v);
                batch.put(Cf::Session, key, Bytes::from(record))
            }
            None => batch.delete(Cf::Session, key),
        }
        self.storage.write(batch, done);
    }

    /// Ids of the sessions that have messages (available, locked, deferred or scheduled) or
    /// state, in order, from `skip`, at most `top`; with `state_after` (ms), only those whose
    /// state was set after that time.
    pub fn message_sessions(
        &self,
        state_after: Option<i64>,
        skip: usize,
        top: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut ids: BTreeSet<String> = BTreeSet::new();
        if state_after.is_none() {
            let st = self.lock();
            let of_entry = |e: &Entry| e.msg.session.as_deref().map(str::to_string);
            ids.extend(st.sessions.of.values().map(|s| s.to_string()));
            ids.extend(st.locks.values().filter_map(|l| of_entry(&l.entry)));
            ids.extend(st.deferred.values().filter_map(of_entry));
            ids.extend(st.scheduled.values().filter_map(|(e, _)| of_entry(e)));
        }
        let (lo, hi) = keys::id_range(self.id);
        self.storage.for_each(Cf::Session, &lo, &hi, &mut |k, v| {
            let (updated, _) = decode_state(v)?;
            if state_after.is_none_or(|after| updated > after) {
                ids.insert(keys::parse_session_state_key(k)?.to_string());
            }
            Ok(())
        })?;
        Ok(ids.into_iter().skip(skip).take(top).collect())
    }

    /// Ends the session locks that expired by `now`: the holder hears it has lost the session
    /// ([`ConsumerSink::session_lost`]) and its locked messages come back counted.
    pub(super) fn expire_session_locks(self: &Arc<Self>, now: i64) {
        let expired: Vec<(Arc<str>, u64)> = {
            let mut st = self.lock();
            let sessions = &mut st.sessions;
            let mut out = Vec::new();
            while let Some((at, _)) = sessions.expiries.first() {
                if *at > now {
                    break;
                }
                let (_, s) = sessions.expiries.pop_first().expect("checked");
                if let Some(h) = sessions.map.get(&s).and_then(|slot| slot.holder.as_ref()) {
                    out.push((s, h.consumer));
                }
            }
            out
        };
        for (session, consumer) in expired {
            self.release_session(&session, consumer, true);
        }
    }

    /// Releases the lock `consumer` holds on `session` and unregisters it; its locked
    /// messages go back to the session, in order, without counting a delivery — unless the
    /// lock was `lost` (it expired): then the holder is told and they come back counted.
    pub(super) fn release_session(self: &Arc<Self>, session: &Arc<str>, consumer: u64, lost: bool) {
        let mut batch = Batch::default();
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(slot) = st.sessions.map.get_mut(session) else {
            return;
        };
        if slot.holder.as_ref().is_none_or(|h| h.consumer != consumer) {
            return;
        }
        let h = slot.holder.take().expect("checked");
        st.sessions.expiries.remove(&(h.until_ms, session.clone()));
        if let Some(i) = slot.lane.consumers.iter().position(|c| c.id == consumer) {
            let c = slot.lane.consumers.remove(i);
            if lost {
                c.sink.session_lost();
            }
        }
        slot.lane.next = 0;
        if lost {
            st.sessions.lost_total += 1;
        }
        let mut back: Vec<(Lane, Entry)> = Vec::new();
        for Locked {
            mut entry, lane, ..
        } in super::settle::take_locks(st, consumer)
        {
            let to = if lost {
                entry.delivery_count += 1;
                self.after_failed_delivery(&mut entry, lane, &mut batch)
            } else {
                // not a delivery attempt: put back the count written at dispatch
                batch.put(
                    Cf::Ref,
                    keys::ref_key(self.id, lane.key_byte(), entry.msg.seq),
                    entry.ref_record().encode(),
                );
                lane
            };
            back.push((to, entry));
        }
        // back at once, under the lock, so the session's next holder sees them in order; the
        // writes are queued before any later write about the same messages
        back.sort_by_key(|(_, e)| e.msg.seq);
        let listed = st.sessions.ready.len();
        let mut touched = Vec::new();
        let mut dead_lettered = false;
        for (lane, e) in back {
            match lane {
                Lane::Main => self.push_session(st, e, false, &mut touched),
                Lane::DeadLetter => {
                    dead_lettered = true;
                    lane_mut(&mut st.main, &mut st.dead, lane).push(e, false)
                }
            }
        }
        // messages left behind (or just returned) wait for the next receiver
        let slot = st.sessions.map.get(session);
        if slot.is_some_and(|s| s.holder.is_none() && !s.lane.is_empty())
            && st.sessions.ready.len() == listed
        {
            st.sessions.push_ready(session.clone());
            self.signal_session();
        }
        st.sessions.tidy(session);
        if dead_lettered {
            self.dispatch(st, Lane::DeadLetter, &mut batch);
        }
        self.write_in_background(batch);
    }
}

/// A stored session state: when it was set (ms) and the client's bytes.
fn decode_state(v: &[u8]) -> Result<(i64, Bytes), StoreError> {
    let at = v
        .get(..8)
        .ok_or_else(|| StoreError::Corrupt("session state record".into()))?;
    let at = i64::from_be_bytes(at.try_into().expect("8 bytes"));
    Ok((at, Bytes::copy_from_slice(&v[8..])))
}

/// The slot of a session a receiver holds, or [`StoreError::SessionLockLost`].
fn held<'a>(
    map: &'a mut HashMap<Arc<str>, Slot>,
    session: &str,
) -> Result<(Arc<str>, &'a mut Slot), StoreError> {
    let key = match map.get_key_value(session) {
        Some((k, slot)) if slot.holder.is_some() => k.clone(),
        _ => {
            return Err(StoreError::SessionLockLost(format!(
                "the lock on session '{session}' is lost or expired: no receiver holds it"
            )))
        }
    };
    let slot = map.get_mut(&key).expect("present");
    Ok((key, slot))
}
