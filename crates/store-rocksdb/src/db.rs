//! The database handle shared by readers and the writer thread, and the signal that it is
//! closed.

use std::ops::Deref;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rocksdb::DB;

/// Owns the open database; whoever drops the last reference closes it and raises [`Closed`].
pub(crate) struct Db {
    db: Option<DB>,
    closed: Closed,
}

impl Db {
    pub fn new(db: DB) -> (Arc<Db>, Closed) {
        let closed = Closed(Arc::new((Mutex::new(false), Condvar::new())));
        (
            Arc::new(Db {
                db: Some(db),
                closed: closed.clone(),
            }),
            closed,
        )
    }
}

impl Deref for Db {
    type Target = DB;
    fn deref(&self) -> &DB {
        self.db.as_ref().expect("open until dropped")
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if self.db.is_some() {
            // persist the memtables, so the next start has no journal to replay (RocksDB would
            // flush on close by itself, since its WAL is off; this reports a failure)
            if let Err(e) = crate::journal::flush(self) {
                tracing::error!(error = %e, "flushing RocksDB at close failed; the journal will be replayed");
            }
        }
        drop(self.db.take());
        let (lock, cv) = &*self.closed.0;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
    }
}

/// Raised once the database is closed. RocksDB must be closed before the process exits (its
/// background threads abort otherwise), and the last reference may go away on any thread.
#[derive(Clone)]
pub struct Closed(Arc<(Mutex<bool>, Condvar)>);

impl Closed {
    /// Waits up to `timeout` for the database to close; true if it did.
    pub fn wait(&self, timeout: Duration) -> bool {
        let (lock, cv) = &*self.0;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = cv
            .wait_timeout_while(guard, timeout, |closed| !*closed)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }
}
