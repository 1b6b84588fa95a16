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
}

impl Cf {
    /// Every column family.
    pub const ALL: [Cf; 3] = [Cf::Meta, Cf::Body, Cf::Ref];

    /// The column family's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Body => "body",
            Cf::Ref => "ref",
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
}

/// An atomic group of writes.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// The writes, applied in order.
    pub ops: Vec<Op>,
}

impl Batch {
    /// Adds a put.
    pub fn put(&mut self, cf: Cf, key: Vec<u8>, value: impl Into<Bytes>) {
        self.ops.push(Op::Put(cf, key, value.into()));
    }
    /// Adds a delete.
    pub fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.ops.push(Op::Delete(cf, key));
    }
    /// True when the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// An ordered key-value store with atomic, durable batches.
pub trait Storage: Send + Sync + 'static {
    /// Commits `batch` atomically; calls `done` once it is durable. `done` may run inline, so
    /// the caller must not hold a lock that `done` takes.
    fn write(&self, batch: Batch, done: Completion<()>);

    /// Every key/value in `cf` with `start <= key < end`, in key order.
    fn scan(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Vec<(Vec<u8>, Bytes)>, StoreError>;
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
                }
            }
        }
        done(Ok(()));
    }

    fn scan(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Vec<(Vec<u8>, Bytes)>, StoreError> {
        let map = self.cfs.lock().expect("memory storage poisoned");
        Ok(map
            .range((cf, start.to_vec())..(cf, end.to_vec()))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }
}
