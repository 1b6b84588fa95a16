//! A topic's scheduled messages: cancelled by the topic's sequence number, wherever their
//! copies wait.
//!
//! A copy in a subscription names the topic's body, so after a restart the topic finds it by
//! that body. A copy that a subscription forwarded (to a queue, with a body of its own, or
//! published to another topic) does not; for those, the batch that schedules the message also
//! writes a [`ForwardedSchedule`] record under the topic, read back when the topic opens and
//! deleted once the message is due or cancelled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Topic;
use crate::keys::{self, ForwardedSchedule};
use crate::storage::{Batch, Cf, Storage};
use crate::{Completion, Queue, StoreError};

/// Where a scheduled copy waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// In one of the topic's targets (a subscription's queue, or a queue one forwards to).
    Target(usize),
    /// Published to one of the topics subscriptions forward to.
    Onward(usize),
}

/// Scheduled messages by topic sequence number: due time and where each copy waits (with its
/// sequence number there).
pub(crate) type Scheduled = HashMap<u64, (i64, Vec<(Place, u64)>)>;

/// Adds to `scheduled` the forwarded copies that `storage` records for topic `id` and that
/// still wait where they were put; records with none left are deleted.
pub(super) fn recover_forwarded(
    storage: &dyn Storage,
    id: u64,
    (targets, onward): (&[Arc<Queue>], &[Arc<Topic>]),
    scheduled: &mut Scheduled,
) -> Result<(), StoreError> {
    let (lo, hi) = keys::forwarded_schedule_range(id);
    let mut stale = Batch {
        lazy: true,
        ..Batch::default()
    };
    for (k, v) in storage.scan(Cf::Meta, &lo, &hi)? {
        let tseq = u64::from_be_bytes(
            k[k.len() - 8..]
                .try_into()
                .map_err(|_| StoreError::Corrupt("forwarded schedule key".into()))?,
        );
        let record = ForwardedSchedule::decode(&v)?;
        let mut found = Vec::new();
        for (entity, seq) in record.copies {
            if let Some(i) = targets.iter().position(|q| q.id() == entity) {
                if targets[i].is_scheduled(seq) {
                    found.push((Place::Target(i), seq));
                }
            } else if let Some(o) = onward.iter().position(|t| t.id == entity) {
                if onward[o].is_scheduled(seq) {
                    found.push((Place::Onward(o), seq));
                }
            }
        }
        if found.is_empty() {
            stale.delete(Cf::Meta, k.to_vec());
            continue;
        }
        let e = scheduled.entry(tseq).or_insert((record.due_ms, Vec::new()));
        e.1.extend(found);
    }
    if !stale.is_empty() {
        storage.write(stale, Box::new(|_| {}));
    }
    Ok(())
}

impl Topic {
    /// Whether a copy is forwarded: it does not name the topic's body.
    fn forwarded(&self, place: Place) -> bool {
        match place {
            Place::Target(i) => i >= self.subs.len(),
            Place::Onward(_) => true,
        }
    }

    /// Whether a copy still waits for its time.
    fn waiting(&self, (place, seq): (Place, u64)) -> bool {
        match place {
            Place::Target(i) => self.targets[i].is_scheduled(seq),
            Place::Onward(o) => self.onward[o].is_scheduled(seq),
        }
    }

    /// Adds to `batch` the record of a scheduled message's forwarded copies, if it has any.
    pub(super) fn record_forwarded(
        &self,
        tseq: u64,
        due_ms: i64,
        copies: &[(Place, u64)],
        batch: &mut Batch,
    ) {
        let forwarded: Vec<(u64, u64)> = copies
            .iter()
            .filter(|(p, _)| self.forwarded(*p))
            .map(|(p, seq)| match p {
                Place::Target(i) => (self.targets[*i].id(), *seq),
                Place::Onward(o) => (self.onward[*o].id, *seq),
            })
            .collect();
        if !forwarded.is_empty() {
            let record = ForwardedSchedule {
                due_ms,
                copies: forwarded,
            };
            batch.put(
                Cf::Meta,
                keys::forwarded_schedule_key(self.id, tseq),
                record.encode(),
            );
        }
    }

    /// Whether the message with topic sequence number `tseq` is scheduled and has a copy
    /// still waiting.
    pub(crate) fn is_scheduled(&self, tseq: u64) -> bool {
        let copies = match self.lock().scheduled.get(&tseq) {
            Some((_, copies)) => copies.clone(),
            None => return false,
        };
        copies.into_iter().any(|c| self.waiting(c))
    }

    /// Cancels scheduled messages by topic sequence number: their copies leave every
    /// subscription, and every queue or topic a subscription forwarded them to. A number that
    /// is not scheduled (or whose time came) is [`StoreError::NotFound`], and then nothing is
    /// cancelled.
    pub fn cancel_scheduled(self: &Arc<Self>, seqs: &[u64], done: Completion<()>) {
        let mut work: Vec<(Place, u64)> = Vec::new();
        let mut records = Batch {
            lazy: true,
            ..Batch::default()
        };
        {
            let mut st = self.lock();
            for seq in seqs {
                let live = st
                    .scheduled
                    .get(seq)
                    .is_some_and(|(_, copies)| copies.iter().any(|c| self.waiting(*c)));
                if !live {
                    return done(Err(StoreError::NotFound(format!(
                        "no scheduled message with sequence number {seq}"
                    ))));
                }
            }
            for seq in seqs {
                if let Some((_, copies)) = st.scheduled.remove(seq) {
                    if copies.iter().any(|(p, _)| self.forwarded(*p)) {
                        records.delete(Cf::Meta, keys::forwarded_schedule_key(self.id, *seq));
                    }
                    work.extend(copies.into_iter().filter(|c| self.waiting(*c)));
                }
            }
        }
        let me = self.clone();
        let finish: Completion<()> = Box::new(move |r| {
            // the record goes once every copy is gone; if one was not, it still finds the rest
            if r.is_ok() && !records.is_empty() {
                me.storage.write(records, Box::new(|_| {}));
            }
            done(r)
        });
        let pending = Arc::new(Mutex::new((work.len(), None, Some(finish))));
        for (place, s) in work {
            let pending = pending.clone();
            let one: Completion<()> = Box::new(move |r| {
                let mut p = pending.lock().expect("cancel state poisoned");
                p.0 -= 1;
                if let Err(e) = r {
                    p.1.get_or_insert(e);
                }
                if p.0 == 0 {
                    if let Some(done) = p.2.take() {
                        let err = p.1.take();
                        drop(p);
                        done(err.map_or(Ok(()), Err));
                    }
                }
            });
            match place {
                Place::Target(i) => self.targets[i].cancel_scheduled(&[s], one),
                Place::Onward(o) => self.onward[o].cancel_scheduled(&[s], one),
            }
        }
    }

    /// Forgets scheduled messages whose time came (their copies are ordinary messages now)
    /// with their forwarded-copy records, and message-ids older than the duplicate-detection
    /// window.
    pub fn sweep(&self, now: i64) {
        let mut pending = Batch::default();
        {
            let mut st = self.lock();
            let due: Vec<(u64, bool)> = st
                .scheduled
                .iter()
                .filter(|(_, (at, _))| *at <= now)
                .map(|(tseq, (_, copies))| (*tseq, copies.iter().any(|(p, _)| self.forwarded(*p))))
                .collect();
            for (tseq, forwarded) in due {
                st.scheduled.remove(&tseq);
                if forwarded {
                    pending.delete(Cf::Meta, keys::forwarded_schedule_key(self.id, tseq));
                }
            }
            let window = self.config.duplicate_detection_ms;
            if window > 0 {
                for id in st.dedup.prune(now, window) {
                    pending.delete(Cf::Dedup, keys::dedup_key(self.id, &id));
                }
            }
        }
        if !pending.is_empty() {
            pending.lazy = true;
            self.storage.write(pending, Box::new(|_| {}));
        }
    }
}
