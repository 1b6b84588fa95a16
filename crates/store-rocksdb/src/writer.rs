//! The writer thread: group commit.

use std::sync::mpsc::Receiver;
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

impl Writer {
    pub fn new(db: Arc<crate::db::Db>, opts: RocksOptions) -> Self {
        Writer {
            db,
            opts,
            written: 0,
        }
    }

    pub fn run(mut self, rx: Receiver<Request>) {
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        let lazy = WriteOptions::default();
        while let Ok(first) = rx.recv() {
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
            // a group of lazy batches only is written without waiting for the disk; a
            // synced group makes every earlier write durable too (the WAL is sequential)
            let opts = if group.iter().all(|r| r.batch.lazy) {
                &lazy
            } else {
                &sync
            };
            let result = self.commit(&group, opts, bytes);
            if let Some(obs) = &self.opts.observer {
                obs.committed(group.len(), ops, bytes, started.elapsed(), result.is_ok());
            }
            for r in group {
                (r.done)(result.clone());
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
        let mut wb = WriteBatch::default();
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
