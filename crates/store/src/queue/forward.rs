//! The source side of a dead-letter sub-queue that forwards (`ForwardDeadLetteredMessagesTo`):
//! messages leave the dead-letter lane in the same batch that stores them at the destination
//! (see [`crate::forward`], which stages the destination's side).

use std::sync::Arc;

use super::{load_entries, Entry, Lane, Queue, LANE_DEAD};
use crate::keys;
use crate::storage::{Batch, Cf};
use crate::{DeadLettered, NewMessage};

impl Queue {
    /// Takes up to `max` messages off the dead-letter lane, oldest first. Until their batch is
    /// written they are in no lane; [`Queue::write_forwarding`] or [`Queue::return_dead`]
    /// settles where they end up.
    pub(crate) fn take_dead(&self, max: usize) -> Vec<Entry> {
        let mut st = self.lock();
        let load = |seqs: &[u64]| load_entries(self.storage.as_ref(), self.id, LANE_DEAD, seqs);
        let mut out = Vec::new();
        while out.len() < max {
            match st.dead.pop(&load) {
                Ok(Some(e)) => out.push(e),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(queue = %self.name, error = %e, "reading dead-lettered messages to forward failed");
                    break;
                }
            }
        }
        out
    }

    /// A dead-lettered message as it arrives at the forwarding destination: the producer's
    /// bytes, its time to live (counted again from its arrival there), and why and where it
    /// was dead-lettered.
    pub(crate) fn forwarded_message(&self, e: &Entry) -> NewMessage {
        let ttl_ms = e
            .msg
            .expires_ms
            .map(|at| at.saturating_sub(e.msg.enqueued_ms).max(1) as u64);
        NewMessage {
            payload: e.msg.payload.clone(),
            ttl_ms,
            dead_lettered: Some(DeadLettered {
                reason: e.dead_letter_reason.clone(),
                description: e.dead_letter_description.clone(),
                source: self.name.clone(),
            }),
            session_id: e.msg.session.clone(),
            ..NewMessage::default()
        }
    }

    /// Adds to `batch` that `moved` leave the dead-letter lane, bodies and all.
    pub(crate) fn stage_removal(&self, moved: &[Entry], batch: &mut Batch) {
        let mut size = 0;
        for e in moved {
            batch.delete(Cf::Ref, keys::ref_key(self.id, LANE_DEAD, e.msg.seq));
            self.drop_body(batch, e);
            size += e.msg.payload.len() as u64;
        }
        self.lock().bytes -= size;
    }

    /// Writes a forwarding batch (staged by [`Queue::stage_removal`] and the destination);
    /// `done` hears whether it was written. If not, `moved` are back in the dead-letter lane.
    pub(crate) fn write_forwarding(
        self: &Arc<Self>,
        batch: Batch,
        moved: Vec<Entry>,
        done: Box<dyn FnOnce(bool) + Send>,
    ) {
        let me = self.clone();
        self.write(
            batch,
            Box::new(move |r| match r {
                Ok(()) => done(true),
                Err(e) => {
                    tracing::warn!(queue = %me.name, error = %e, "forwarding dead-lettered messages failed; they stay");
                    let size: u64 = moved.iter().map(|e| e.msg.payload.len() as u64).sum();
                    me.lock().bytes += size;
                    me.return_dead(moved);
                    done(false)
                }
            }),
        );
    }

    /// Puts messages taken by [`Queue::take_dead`] back into the dead-letter lane.
    pub(crate) fn return_dead(&self, moved: Vec<Entry>) {
        if !moved.is_empty() {
            self.make_available(Lane::DeadLetter, moved, false);
        }
    }
}
