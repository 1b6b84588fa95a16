//! Completing many locks at once: the settlements a client made in one disposition range and
//! settled itself (rcv-settle-mode first), written as one lazy batch.

use std::sync::Arc;

use super::{Locked, Outcome, Queue};
use crate::keys;
use crate::storage::{Batch, Cf};
use crate::{Completion, LockToken};

impl Queue {
    /// Completes the locks `tokens` held by `consumer` with one storage write that nobody waits
    /// on (see [`Batch::lazy`]); `done` hears which ones were completed, in the order given.
    /// Locks that are gone (expired, or not this consumer's) are skipped; a deferred message
    /// received by sequence number goes its own way, as in [`Queue::settle`].
    pub(super) fn complete_unconfirmed(
        self: &Arc<Self>,
        consumer: u64,
        tokens: &[LockToken],
        done: Completion<Vec<bool>>,
    ) {
        let mut batch = Batch {
            lazy: true,
            ..Batch::default()
        };
        let mut completed = vec![false; tokens.len()];
        let mut taken = Vec::with_capacity(tokens.len());
        let mut deferred = Vec::new();
        {
            let mut st = self.lock();
            for (i, token) in tokens.iter().enumerate() {
                if st.locks.get(token).is_none_or(|l| l.consumer != consumer) {
                    continue;
                }
                let l = st.locks.remove(token).expect("present");
                st.expiries.remove(&(l.expires_ms, *token));
                completed[i] = true;
                if l.deferred {
                    deferred.push(l);
                    continue;
                }
                let Locked { entry, lane, .. } = l;
                let seq = entry.msg.seq;
                self.drop_body(&mut batch, &entry);
                batch.delete(Cf::Ref, keys::ref_key(self.id, lane.key_byte(), seq));
                st.bytes -= entry.msg.payload.len() as u64;
                taken.push((lane, entry));
            }
        }
        for l in deferred {
            self.settle_deferred(l, Outcome::Complete, Box::new(|_| {}));
        }
        if taken.is_empty() {
            return done(Ok(completed));
        }
        let me = self.clone();
        self.write(
            batch,
            Box::new(move |r| match r {
                Ok(()) => done(Ok(completed)),
                Err(e) => {
                    // nothing changed on disk: the messages are where they were, unlocked
                    me.lock().bytes += taken
                        .iter()
                        .map(|(_, e)| e.msg.payload.len() as u64)
                        .sum::<u64>();
                    me.make_available_again(taken);
                    done(Err(e))
                }
            }),
        );
    }
}
