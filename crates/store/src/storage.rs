//! The storage trait the entities write through, and its in-memory implementation.
//!
//! A storage is an ordered key-value store with a few column families and atomic write
//! batches. [`Storage::write`] commits a batch and calls the completion once it is durable
//! (for the in-memory storage: at once, inline). The RocksDB implementation sits behind the
//! same trait.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;

use crate::{Completion, StoreError};

/// Column families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cf {
    /// Entity metadata: names to ids, counters.
    Meta,
    /// Message bodies: owner id + sequence number.
    Body,
    /// Message references: consumer id + lane + sequence number.
    Ref,
    /// Time index (scheduled messages, TTL): due ms + consumer id + sequence number.
    Sched,
    /// Duplicate detection: entity id + message-id.
    Dedup,
    /// Message-session state: consumer id + session id.
    Session,
}

impl Cf {
    /// Every column family.
    pub const ALL: [Cf; 6] = [
        Cf::Meta,
        Cf::Body,
        Cf::Ref,
        Cf::Sched,
        Cf::Dedup,
        Cf::Session,
    ];

    /// The column family's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Body => "body",
            Cf::Ref => "ref",
            Cf::Sched => "sched",
            Cf::Dedup => "dedup",
            Cf::Session => "session",
        }
    }
}

/// One write in a batch.
#[derive(Debug, Clone)]
pub enum Op {
    /// Insert or replace.
    Put(Cf, Vec<u8>, Bytes),
    /// Remove one key.
    Delete(Cf, Vec<u8>),
    /// Store the larger of the stored and the given big-endian `u64` (a high-water mark that
    /// never goes back, whatever order requests merged into one batch come in).
    Max(Cf, Vec<u8>, u64),
}

/// An atomic group of writes.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// The writes, applied in order.
    pub ops: Vec<Op>,
    /// Nobody is told when this batch is done (a delivery count, a settlement the client
    /// did not ask to hear back about): it may complete once written, before it is synced.
    /// It is ordered with every other write and becomes durable with the next synced one;
    /// only an operating-system crash in between can lose it, and losing it never loses a
    /// message (at worst one is delivered again).
    pub lazy: bool,
    /// Shared bodies (owner id, sequence number) this batch gives up a reference to. The
    /// entity resolves them before the batch reaches the storage ([`crate::bodies`]): the
    /// last reference's batch also deletes the body. A storage never sees one.
    pub releases: Vec<(u64, u64)>,
}

impl Batch {
    /// Adds a put.
    pub fn put(&mut self, cf: Cf, key: Vec<u8>, value: impl Into<Bytes>) {
        self.ops.push(Op::Put(cf, key, value.into()));
    }
    /// Adds a high-water mark update.
    pub fn max(&mut self, cf: Cf, key: Vec<u8>, value: u64) {
        self.ops.push(Op::Max(cf, key, value));
    }
    /// Adds a delete.
    pub fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.ops.push(Op::Delete(cf, key));
    }
    /// True when the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.releases.is_empty()
    }
}

/// Called with each key and value of a [`Storage::for_each`] range.
pub type Visitor<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> Result<(), StoreError>;

/// A key and its value, as [`Storage::scan`] returns them.
pub type KeyValue = (Vec<u8>, Bytes);

/// An ordered key-value store with atomic, durable batches.
pub trait Storage: Send + Sync + 'static {
    /// Commits `batch` atomically; calls `done` once it is durable. Never blocks. `done` may
    /// run inline, so the caller must not hold a lock that `done` takes.
    fn write(&self, batch: Batch, done: Completion<()>);

    /// Why the storage can no longer make writes durable, once that has happened (a failed
    /// sync: every later write fails until a restart). `None` while it is healthy.
    fn failure(&self) -> Option<StoreError> {
        None
    }

    /// Calls `f` with every key/value in `cf` with `start <= key < end`, in key order,
    /// without holding them all in memory at once.
    fn for_each(&self, cf: Cf, start: &[u8], end: &[u8], f: Visitor<'_>) -> Result<(), StoreError>;

    /// Every key/value in `cf` with `start <= key < end`, in key order (small ranges only).
    fn scan(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        let mut out = Vec::new();
        self.for_each(cf, start, end, &mut |k, v| {
            out.push((k.to_vec(), Bytes::copy_from_slice(v)));
            Ok(())
        })?;
        Ok(out)
    }

    /// The values of `keys` in `cf` (point reads), in the same order.
    fn get_many(&self, cf: Cf, keys: &[Vec<u8>]) -> Result<Vec<Option<Bytes>>, StoreError>;
}

/// Decodes a value written by [`Op::Max`].
pub fn decode_max(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

/// Storage that keeps everything in memory: for tests and development. Nothing survives the
/// process, but everything survives reopening the entities over the same instance.
#[derive(Default)]
pub struct MemoryStorage {
    cfs: Mutex<BTreeMap<(Cf, Vec<u8>), Bytes>>,
}

impl MemoryStorage {
    /// An empty storage.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Storage for MemoryStorage {
    fn write(&self, batch: Batch, done: Completion<()>) {
        {
            let mut map = self.cfs.lock().expect("memory storage poisoned");
            for op in batch.ops {
                match op {
                    Op::Put(cf, k, v) => {
                        map.insert((cf, k), v);
                    }
                    Op::Delete(cf, k) => {
                        map.remove(&(cf, k));
                    }
                    Op::Max(cf, k, v) => {
                        let old = map
                            .get(&(cf, k.clone()))
                            .and_then(|b| decode_max(b))
                            .unwrap_or(0);
                        map.insert((cf, k), Bytes::copy_from_slice(&old.max(v).to_be_bytes()));
                    }
                }
            }
        }
        done(Ok(()));
    }

    fn for_each(&self, cf: Cf, start: &[u8], end: &[u8], f: Visitor<'_>) -> Result<(), StoreError> {
        let map = self.cfs.lock().expect("memory storage poisoned");
        for ((_, k), v) in map.range((cf, start.to_vec())..(cf, end.to_vec())) {
            f(k, v)?;
        }
        Ok(())
    }

    fn get_many(&self, cf: Cf, keys: &[Vec<u8>]) -> Result<Vec<Option<Bytes>>, StoreError> {
        let map = self.cfs.lock().expect("memory storage poisoned");
        Ok(keys
            .iter()
            .map(|k| map.get(&(cf, k.clone())).cloned())
            .collect())
    }
}
