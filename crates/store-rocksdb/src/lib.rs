//! RocksDB storage for the Ferrobus entity store.
//!
//! Role: implements [`ferrobus_store::storage::Storage`] on one RocksDB database with one
//! column family per [`Cf`]. Writes go through **one writer thread** that drains every queued
//! request into one group, writes it as one record of the [journal](journal) (our own
//! write-ahead log, in place of RocksDB's) and applies it as one `WriteBatch`, without
//! waiting for the disk, then hands the group to **one syncer thread** that syncs the journal
//! once for every group written meanwhile and completes the requests: a producer hears
//! "accepted" only after the fsync that covers its message, and the batches grow with the load
//! instead of costing one fsync per message (group commit), while the next groups are written
//! during the fsync. **One retirer thread** flushes RocksDB's memtables (atomically, all column
//! families) when a journal segment fills up, and then recycles it.
//!
//! Invariants:
//! - A request's writes are applied atomically, together with the other requests of its group,
//!   in the order the requests arrived; a group's journal record is written before RocksDB
//!   sees it.
//! - Completions run on the syncer thread (or on the writer, for a group with nothing before
//!   or after it), with no lock of ours held, in request order; a request that is not lazy
//!   completes only after a journal sync that covers it and every record before it.
//! - Opening replays the journal records that RocksDB's flushed state lacks; RocksDB's own
//!   WAL is off, so its flushed state and the journal are the whole truth.

mod db;
mod journal;
mod options;
mod writer;

use std::path::Path;
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use ferrobus_store::storage::{Batch, Cf, Storage, Visitor};
use ferrobus_store::{Completion, StoreError};
use rocksdb::{ReadOptions, DB};

pub use db::Closed;
pub use writer::CommitObserver;

/// How the storage is opened.
#[derive(Clone, Default)]
pub struct RocksOptions {
    /// Told about every group commit (metrics).
    pub observer: Option<Arc<dyn CommitObserver>>,
    /// Test hook: after this many bytes have been written, every write fails as if the disk
    /// were full. Set from `FERROBUS_TEST_FAIL_WRITES_AFTER_BYTES`; never in production.
    pub fail_writes_after_bytes: Option<u64>,
    /// Test hook: after this many bytes have been written, the storage behaves as if a journal
    /// sync had failed (every write fails from then on). Set from
    /// `FERROBUS_TEST_FAIL_SYNCS_AFTER_BYTES`; never in production.
    pub fail_syncs_after_bytes: Option<u64>,
    /// A fixed journal segment size (by default they start at 4 MiB and grow to 64 MiB under
    /// load; tests use small fixed ones to exercise recycling).
    pub journal_segment_bytes: Option<u64>,
}

/// The RocksDB storage.
pub struct RocksStorage {
    db: Arc<db::Db>,
    closed: Closed,
    /// Requests for the writer. Unbounded so that `write` never blocks (it is called with a
    /// queue lock held); AMQP credit bounds what producers and consumers can have in flight.
    tx: Option<Sender<writer::Request>>,
    writer: Option<JoinHandle<()>>,
    failed: writer::Failed,
    /// What opening replayed from the journal.
    #[cfg_attr(not(test), allow(dead_code))]
    recovered: journal::Recovered,
}

impl RocksStorage {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path, opts: RocksOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Storage(format!("creating {}: {e}", dir.display())))?;
        let db = DB::open_cf_descriptors(&options::db_options(), dir, options::column_families())
            .map_err(|e| {
            StoreError::Storage(format!("opening RocksDB in {}: {e}", dir.display()))
        })?;
        let (db, closed) = db::Db::new(db);
        let sizes = match opts.journal_segment_bytes {
            Some(n) => {
                let n = n.div_ceil(journal::BLOCK as u64).max(1) * journal::BLOCK as u64;
                journal::Sizes { min: n, max: n }
            }
            None => journal::SEGMENT_BYTES,
        };
        let journal_dir = dir.join("journal");
        let started = std::time::Instant::now();
        let (journal, pool, recovered) = journal::recover(&db, &journal_dir, sizes)?;
        if recovered.records > 0 || recovered.discarded > 0 {
            tracing::info!(
                records = recovered.records,
                bytes = recovered.bytes,
                ms = started.elapsed().as_millis() as u64,
                "journal replayed"
            );
        }
        if recovered.discarded > 0 {
            tracing::warn!(
                records = recovered.discarded,
                "journal records after a torn or missing one were never acknowledged: not replayed"
            );
        }
        let retire_db = db.clone();
        std::thread::Builder::new()
            .name("ferrobus-store-retire".into())
            .spawn(move || journal::retire_loop(retire_db, pool, journal_dir))
            .map_err(|e| StoreError::Storage(format!("starting the retirer thread: {e}")))?;
        let (tx, rx) = channel();
        let (synced_tx, synced_rx) = channel();
        let failed = writer::Failed::default();
        let sync_failed = failed.clone();
        let observer = opts.observer.clone();
        // groups handed to the syncer and not yet completed
        let handed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let syncer_handed = handed.clone();
        // the syncer ends on its own once the writer is gone and everything is completed;
        // nobody joins it, since the last reference to the storage may drop on it
        std::thread::Builder::new()
            .name("ferrobus-store-sync".into())
            .spawn(move || writer::sync_loop(sync_failed, observer, synced_rx, syncer_handed))
            .map_err(|e| StoreError::Storage(format!("starting the syncer thread: {e}")))?;
        let w = writer::Writer::new(db.clone(), opts, journal, failed.clone());
        let writer = std::thread::Builder::new()
            .name("ferrobus-store-writer".into())
            .spawn(move || w.run(rx, synced_tx, handed))
            .map_err(|e| StoreError::Storage(format!("starting the writer thread: {e}")))?;
        Ok(RocksStorage {
            db,
            closed,
            tx: Some(tx),
            writer: Some(writer),
            failed,
            recovered,
        })
    }

    /// Raised when the database is closed (after the last reference to the storage is gone and
    /// the writer has finished); wait for it before the process exits.
    pub fn closed(&self) -> Closed {
        self.closed.clone()
    }

    fn cf(&self, cf: Cf) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db
            .cf_handle(cf.name())
            .ok_or_else(|| StoreError::Storage(format!("column family {} is missing", cf.name())))
    }
}

impl Storage for RocksStorage {
    fn write(&self, batch: Batch, done: Completion<()>) {
        let Some(tx) = &self.tx else {
            return done(Err(StoreError::Storage("the storage is closed".into())));
        };
        if let Err(e) = tx.send(writer::Request { batch, done }) {
            (e.0.done)(Err(StoreError::Storage("the writer thread stopped".into())));
        }
    }

    fn failure(&self) -> Option<StoreError> {
        self.failed.get()
    }

    fn for_each(&self, cf: Cf, start: &[u8], end: &[u8], f: Visitor<'_>) -> Result<(), StoreError> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(start.to_vec());
        ro.set_iterate_upper_bound(end.to_vec());
        // a recovery scan reads everything once: do not push the hot blocks out of the cache
        ro.fill_cache(false);
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cf)?, ro);
        it.seek_to_first();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            f(k, v)?;
            it.next();
        }
        it.status()
            .map_err(|e| StoreError::Storage(format!("reading {}: {e}", cf.name())))
    }

    fn get_many(&self, cf: Cf, keys: &[Vec<u8>]) -> Result<Vec<Option<Bytes>>, StoreError> {
        let handle = self.cf(cf)?;
        self.db
            .multi_get_cf(keys.iter().map(|k| (handle, k.as_slice())))
            .into_iter()
            .map(|r| {
                r.map(|v| v.map(Bytes::from))
                    .map_err(|e| StoreError::Storage(format!("reading {}: {e}", cf.name())))
            })
            .collect()
    }
}

impl Drop for RocksStorage {
    fn drop(&mut self) {
        // closing the channel lets the writer finish what is queued, then stop
        self.tx.take();
        if let Some(w) = self.writer.take() {
            // The last reference can go away inside a completion, on the writer thread itself:
            // it then finishes the queued requests and ends on its own once this returns.
            if w.thread().id() != std::thread::current().id() {
                let _ = w.join();
            }
        }
    }
}

#[cfg(test)]
mod journal_tests;
#[cfg(test)]
mod tests;
