//! Bodies shared by several references: a topic's message is stored once and referenced by
//! each subscription copy.
//!
//! [`SharedBodies`] counts, per body, the references that still name it. A batch that drops a
//! reference lists the body in [`Batch::releases`]; [`SharedBodies::write`] turns the last
//! release of a body into its deletion in that same batch and hands the batch to the storage
//! while it holds the counts' lock. Storage writes are applied and made durable in the order
//! they are handed over, so the batch that deletes a body always comes after every batch that
//! dropped another reference to it: after a crash no reference names a deleted body.
//!
//! The counts live in memory and are rebuilt when the subscriptions open (each reference found
//! is [`SharedBodies::retain`]ed). The lock is a leaf: it is taken under an entity's lock
//! (never the reverse) and nothing is called under it but the storage's non-blocking `write`.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::keys;
use crate::storage::{Batch, Cf, Storage};
use crate::Completion;

/// Reference counts of shared bodies, keyed by (owner id, sequence number).
#[derive(Default)]
pub struct SharedBodies {
    counts: Mutex<HashMap<(u64, u64), u32>>,
}

impl SharedBodies {
    /// Records `n` more references to the body at `at` (a new message's copies, or one
    /// reference found when a subscription opens).
    pub fn retain(&self, at: (u64, u64), n: u32) {
        if n > 0 {
            *self.lock().entry(at).or_insert(0) += n;
        }
    }

    /// Takes back references recorded by [`SharedBodies::retain`] for a write that failed.
    pub fn forget(&self, at: (u64, u64), n: u32) {
        let mut counts = self.lock();
        if let Some(c) = counts.get_mut(&at) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                counts.remove(&at);
            }
        }
    }

    /// How many bodies have references.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no body has a reference.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u64), u32>> {
        self.counts.lock().expect("shared body counts poisoned")
    }

    /// Writes `batch`, first resolving its releases: each drops one reference, and the batch
    /// that drops the last one also deletes the body. See the module's notes on ordering.
    pub fn write(&self, storage: &dyn Storage, mut batch: Batch, done: Completion<()>) {
        if batch.releases.is_empty() {
            return storage.write(batch, done);
        }
        let mut counts = self.lock();
        for at in std::mem::take(&mut batch.releases) {
            match counts.get_mut(&at) {
                Some(n) if *n > 1 => *n -= 1,
                Some(_) => {
                    counts.remove(&at);
                    batch.delete(Cf::Body, keys::body_key(at.0, at.1));
                }
                None => {
                    tracing::error!(
                        owner = at.0,
                        seq = at.1,
                        "a shared body released more often than it was referenced"
                    );
                }
            }
        }
        storage.write(batch, done);
    }
}
