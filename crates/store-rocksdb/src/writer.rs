//! The writer and syncer threads: group commit.

use std::fs::File;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrobus_store::storage::{Batch, Op};
use ferrobus_store::{Completion, StoreError};
use rocksdb::WriteBatch;

use crate::journal::{self, Journal};
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
    journal: Journal,
    failed: Failed,
}

/// Set once a journal sync has failed: what was written since may not be on disk, and the
/// kernel may have dropped it, so no later write can be acknowledged either (the broker must
/// be restarted, which replays what the disk holds).
#[derive(Clone, Default)]
pub(crate) struct Failed(Arc<Mutex<Option<StoreError>>>);

impl Failed {
    pub(crate) fn get(&self) -> Option<StoreError> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, e: &StoreError) {
        let mut failed = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if failed.is_none() {
            tracing::error!(error = %e, "the storage cannot make writes durable any more: every write fails until the broker is restarted");
            *failed = Some(e.clone());
        }
    }
}

/// A group the writer applied (or failed to), on its way to the syncer.
pub(crate) struct Written {
    group: Vec<Request>,
    /// The journal segment the group went to, or why it could not be written.
    result: Result<Arc<File>, StoreError>,
    /// Some request of the group waits for durability.
    sync: bool,
    ops: usize,
    bytes: usize,
    started: Instant,
}

impl Writer {
    pub fn new(
        db: Arc<crate::db::Db>,
        opts: RocksOptions,
        journal: Journal,
        failed: Failed,
    ) -> Self {
        Writer {
            db,
            opts,
            written: 0,
            journal,
            failed,
        }
    }

    /// Applies groups of requests in arrival order without waiting for the disk (one journal
    /// record and one RocksDB write batch per group), and hands each group to the syncer,
    /// which makes it durable and completes it. While one fsync runs the writer already
    /// applies the next groups, so the journal write and memtable inserts of group N+1 overlap
    /// the fsync of group N. A group with nothing queued behind it and
    /// nothing ahead of it at the syncer is synced and completed right here instead, which
    /// saves a thread hand-over when a lone client waits for each message.
    pub fn run(
        mut self,
        rx: Receiver<Request>,
        to_syncer: Sender<Written>,
        handed: Arc<AtomicUsize>,
    ) {
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
            let result = self.commit(&group, bytes);
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
                finish(self.opts.observer.as_deref(), &self.failed, vec![w]);
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

    /// Writes the group's journal record, then applies it to RocksDB (without its WAL).
    fn commit(&mut self, group: &[Request], bytes: usize) -> Result<Arc<File>, StoreError> {
        if let Some(e) = self.failed.get() {
            return Err(e);
        }
        if let Some(limit) = self.opts.fail_syncs_after_bytes {
            if self.written + bytes as u64 > limit {
                let e = StoreError::Storage(
                    "syncing the journal: injected fault: Input/output error".into(),
                );
                self.failed.set(&e);
                return Err(e);
            }
        }
        if let Some(limit) = self.opts.fail_writes_after_bytes {
            if self.written + bytes as u64 > limit {
                return Err(StoreError::Full(
                    "injected fault: No space left on device".into(),
                ));
            }
        }
        let items = journal::merged(group.iter().flat_map(|r| r.batch.ops.iter()));
        let mut wb = WriteBatch::with_capacity_bytes(bytes + 64 * group.len());
        journal::to_write_batch(&self.db, &items, self.journal.next_seq(), &mut wb)?;
        let file = self.journal.append(&items).map_err(classify_io)?;
        if let Err(e) = self.db.write_opt(wb, &journal::write_options()) {
            // the requests fail: the record must not come back at the next start
            if let Err(undo) = self.journal.undo() {
                let e = StoreError::Storage(format!("taking back a journal record: {undo}"));
                self.failed.set(&e);
            }
            return Err(classify(e));
        }
        self.written += bytes as u64;
        Ok(file)
    }
}

/// The syncer thread: takes every group the writer has handed over so far and finishes them
/// together (see [`finish`]).
pub(crate) fn sync_loop(
    failed: Failed,
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
        finish(observer.as_deref(), &failed, batch);
        handed.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Syncs the journal once for all of `batch` if any group waits for durability (one sync of
/// a segment covers every earlier record in it; a batch spans two segments at most when the
/// writer moved on to a new one), then completes the groups in order. Lazy-only groups
/// complete without a sync. Records in earlier segments were synced when the writer left them.
fn finish(observer: Option<&dyn CommitObserver>, failed: &Failed, batch: Vec<Written>) {
    let needed = batch.iter().any(|w| w.sync && w.result.is_ok());
    let synced = if needed {
        let mut files: Vec<&Arc<File>> = Vec::new();
        for f in batch.iter().filter_map(|w| w.result.as_ref().ok()) {
            if !files.iter().any(|g| Arc::ptr_eq(g, f)) {
                files.push(f);
            }
        }
        let r = files
            .iter()
            .try_for_each(|f| f.sync_data())
            .map_err(|e| StoreError::Storage(format!("syncing the journal: {e}")));
        if let Err(e) = &r {
            failed.set(e);
        }
        r
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
            (Ok(_), true) => synced.clone(),
            (Ok(_), false) => Ok(()),
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

/// A journal write error; a full disk is the producer's problem, as for [`classify`].
fn classify_io(e: std::io::Error) -> StoreError {
    if e.kind() == std::io::ErrorKind::StorageFull {
        StoreError::Full(format!("disk full: writing the journal: {e}"))
    } else {
        StoreError::Storage(format!("writing the journal: {e}"))
    }
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
