//! The writer thread: group commit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrobus_store::storage::{Batch, Op};
use ferrobus_store::{Completion, StoreError};
use rocksdb::{WriteBatch, WriteOptions};

use crate::RocksOptions;

/// Most operations in one group commit.
const MAX_OPS: usize = 16 * 1024;
/// Most bytes in one group commit.
const MAX_BYTES: usize = 8 * 1024 * 1024;

/// Hears about every group commit.
pub trait CommitObserver: Send + Sync {
    /// `requests` write requests with `ops` operations were synced in `elapsed` (or failed,
    /// when `ok` is false).
    fn committed(&self, requests: usize, ops: usize, bytes: usize, elapsed: Duration, ok: bool);
}

pub(crate) struct Request {
    pub batch: Batch,
    pub done: Completion<()>,
}

pub(crate) struct Writer {
    db: Arc<crate::db::Db>,
    opts: RocksOptions,
    written: u64,
}

/// A group the writer applied (or failed to), on its way to the syncer.
pub(crate) struct Written {
    group: Vec<Request>,
    result: Result<(), StoreError>,
    /// Some request of the group waits for durability.
    sync: bool,
    ops: usize,
    bytes: usize,
    started: Instant,
}

impl Writer {
    pub fn new(db: Arc<crate::db::Db>, opts: RocksOptions) -> Self {
        Writer {
            db,
            opts,
            written: 0,
        }
    }

    /// Applies groups of requests in arrival order without waiting for the disk, and hands
    /// each group to the syncer, which makes it durable and completes it. While one fsync runs
    /// the writer already applies the next groups, so the WAL write and memtable inserts of
    /// group N+1 overlap the fsync of group N. A group with nothing queued behind it and
    /// nothing ahead of it at the syncer is synced and completed right here instead, which
    /// saves a thread hand-over when a lone client waits for each message.
    pub fn run(
        mut self,
        rx: Receiver<Request>,
        to_syncer: Sender<Written>,
        handed: Arc<AtomicUsize>,
    ) {
        let unsynced = WriteOptions::default();
        let mut carried = None;
        loop {
            let first = match carried.take() {
                Some(r) => r,
                None => match rx.recv() {
                    Ok(r) => r,
                    Err(_) => break,
                },
            };
            let mut group = vec![first];
            let (mut ops, mut bytes) = size(&group[0].batch);
            while ops < MAX_OPS && bytes < MAX_BYTES {
                match rx.try_recv() {
                    Ok(r) => {
                        let (o, b) = size(&r.batch);
                        ops += o;
                        bytes += b;
                        group.push(r);
                    }
                    Err(_) => break,
                }
            }
            let started = Instant::now();
            let result = self.commit(&group, &unsynced, bytes);
            let sync = group.iter().any(|r| !r.batch.lazy);
            let w = Written {
                group,
                result,
                sync,
                ops,
                bytes,
                started,
            };
            carried = rx.try_recv().ok();
            // `handed` is zero only once the syncer has completed everything it was given
            if carried.is_none() && handed.load(Ordering::Acquire) == 0 {
                finish(&self.db, self.opts.observer.as_deref(), vec![w]);
                continue;
            }
            handed.fetch_add(1, Ordering::AcqRel);
            if let Err(e) = to_syncer.send(w) {
                handed.fetch_sub(1, Ordering::AcqRel);
                // the syncer is gone (it could not start): nothing can be made durable
                for r in e.0.group {
                    (r.done)(Err(StoreError::Storage("the syncer thread stopped".into())));
                }
            }
        }
    }

    fn commit(
        &mut self,
        group: &[Request],
        opts: &WriteOptions,
        bytes: usize,
    ) -> Result<(), StoreError> {
        if let Some(limit) = self.opts.fail_writes_after_bytes {
            if self.written + bytes as u64 > limit {
                return Err(StoreError::Full(
                    "injected fault: No space left on device".into(),
                ));
            }
        }
        let mut wb = WriteBatch::with_capacity_bytes(bytes + 64 * group.len());
        for r in group {
            for op in &r.batch.ops {
                let name = match op {
                    Op::Put(cf, ..) | Op::Delete(cf, _) | Op::Max(cf, ..) => cf.name(),
                };
                let cf = self.db.cf_handle(name).ok_or_else(|| {
                    StoreError::Storage(format!("column family {name} is missing"))
                })?;
                match op {
                    Op::Put(_, k, v) => wb.put_cf(cf, k, v),
                    Op::Delete(_, k) => wb.delete_cf(cf, k),
                    Op::Max(_, k, v) => wb.merge_cf(cf, k, v.to_be_bytes()),
                }
            }
        }
        self.db.write_opt(wb, opts).map_err(classify)?;
        self.written += bytes as u64;
        Ok(())
    }
}

/// The syncer thread: takes every group the writer has handed over so far and finishes them
/// together (see [`finish`]).
pub(crate) fn sync_loop(
    db: Arc<crate::db::Db>,
    observer: Option<Arc<dyn CommitObserver>>,
    rx: Receiver<Written>,
    handed: Arc<AtomicUsize>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(w) = rx.try_recv() {
            batch.push(w);
        }
        let n = batch.len();
        finish(&db, observer.as_deref(), batch);
        handed.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Syncs the WAL once for all of `batch` if any group waits for durability (one fsync covers
/// every earlier write: the WAL is sequential), then completes the groups in order. Lazy-only
/// groups complete without a sync.
fn finish(db: &crate::db::Db, observer: Option<&dyn CommitObserver>, batch: Vec<Written>) {
    let needed = batch.iter().any(|w| w.sync && w.result.is_ok());
    let synced = if needed {
        db.flush_wal(true).map_err(classify)
    } else {
        Ok(())
    };
    let ok = synced.is_ok() && batch.iter().all(|w| w.result.is_ok());
    // the observer hears of synced group commits (and of every failure), not of lazy-only
    // batches, which wait for no disk
    if let Some(obs) = observer.filter(|_| needed || !ok) {
        let requests = batch.iter().map(|w| w.group.len()).sum();
        let ops = batch.iter().map(|w| w.ops).sum();
        let bytes = batch.iter().map(|w| w.bytes).sum();
        obs.committed(requests, ops, bytes, batch[0].started.elapsed(), ok);
    }
    for w in batch {
        let result = match (&w.result, w.sync) {
            (Err(e), _) => Err(e.clone()),
            (Ok(()), true) => synced.clone(),
            (Ok(()), false) => Ok(()),
        };
        for r in w.group {
            (r.done)(result.clone());
        }
    }
}

fn size(b: &Batch) -> (usize, usize) {
    let bytes = b
        .ops
        .iter()
        .map(|op| match op {
            Op::Put(_, k, v) => k.len() + v.len(),
            Op::Delete(_, k) => k.len(),
            Op::Max(_, k, _) => k.len() + 8,
        })
        .sum();
    (b.ops.len(), bytes)
}

/// A full disk is the producer's problem to hear about (`amqp:resource-limit-exceeded`);
/// anything else is ours (`amqp:internal-error`).
fn classify(e: rocksdb::Error) -> StoreError {
    let text = e.to_string();
    if text.contains("No space left") || text.contains("NoSpace") {
        StoreError::Full(format!("disk full: {text}"))
    } else {
        StoreError::Storage(text)
    }
}
