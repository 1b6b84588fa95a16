use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::time::Duration;

use super::*;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A fresh database in its own temporary directory (removed at the end of the process).
fn fresh() -> Arc<dyn Storage> {
    let dir = std::env::temp_dir().join(format!(
        "ferrobus-rocks-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let s = RocksStorage::open(&dir, RocksOptions::default()).unwrap();
    let closed = s.closed();
    ferrobus_store::testing::at_test_end(move || {
        assert!(
            closed.wait(Duration::from_secs(30)),
            "the store did not close"
        );
        let _ = std::fs::remove_dir_all(&dir);
    });
    Arc::new(s)
}

mod suite {
    ferrobus_store::store_suite!(super::fresh());
}

mod topics {
    ferrobus_store::topic_suite!(super::fresh());
}

mod dead_forward {
    ferrobus_store::dead_forward_suite!(super::fresh());
}

mod sessions {
    ferrobus_store::session_suite!(super::fresh());
}

fn write(s: &dyn Storage, b: Batch) -> Result<(), StoreError> {
    ferrobus_store::testing::write_and_wait(s, b)
}

/// Drops the storage and waits until its threads have closed the database, so that it can be
/// opened again (RocksDB holds a file lock until then).
pub(crate) fn close(s: RocksStorage) {
    let closed = s.closed();
    drop(s);
    assert!(
        closed.wait(Duration::from_secs(30)),
        "the store did not close"
    );
}

#[test]
fn data_survives_closing_and_reopening_the_database() {
    let dir = std::env::temp_dir().join(format!("ferrobus-rocks-reopen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        let s = RocksStorage::open(&dir, RocksOptions::default()).unwrap();
        let mut b = Batch::default();
        b.put(Cf::Body, vec![1, 2], Bytes::from_static(b"v"));
        b.max(Cf::Meta, vec![b'N'], 5);
        b.max(Cf::Meta, vec![b'N'], 3);
        write(&s, b).unwrap();
        close(s);
    }
    let s = RocksStorage::open(&dir, RocksOptions::default()).unwrap();
    assert_eq!(
        s.scan(Cf::Body, &[0], &[9]).unwrap(),
        vec![(vec![1, 2], Bytes::from_static(b"v"))]
    );
    let m = s.get_many(Cf::Meta, &[vec![b'N'], vec![b'X']]).unwrap();
    assert_eq!(
        m[0].as_deref()
            .and_then(ferrobus_store::storage::decode_max),
        Some(5)
    );
    assert_eq!(m[1], None);
    close(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn concurrent_writers_share_group_commits() {
    struct Count(AtomicU64, AtomicU64);
    impl CommitObserver for Count {
        fn committed(
            &self,
            requests: usize,
            _ops: usize,
            _bytes: usize,
            _elapsed: Duration,
            _ok: bool,
        ) {
            self.0.fetch_add(1, Ordering::Relaxed);
            self.1.fetch_add(requests as u64, Ordering::Relaxed);
        }
    }
    let dir = std::env::temp_dir().join(format!("ferrobus-rocks-group-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let obs = Arc::new(Count(AtomicU64::new(0), AtomicU64::new(0)));
    let s = RocksStorage::open(
        &dir,
        RocksOptions {
            observer: Some(obs.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let n = 2000u64;
    for i in 0..n {
        let mut b = Batch::default();
        b.put(
            Cf::Body,
            i.to_be_bytes().to_vec(),
            Bytes::from(vec![0u8; 100]),
        );
        let tx = tx.clone();
        s.write(b, Box::new(move |r| tx.send(r).unwrap()));
    }
    for _ in 0..n {
        rx.recv().unwrap().unwrap();
    }
    let (commits, requests) = (obs.0.load(Ordering::Relaxed), obs.1.load(Ordering::Relaxed));
    assert_eq!(requests, n);
    // requests queued while an fsync ran were committed together
    assert!(commits < n, "{commits} commits for {n} requests");
    close(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_injected_full_disk_fails_writes_and_keeps_reads() {
    let dir = std::env::temp_dir().join(format!("ferrobus-rocks-full-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let s = RocksStorage::open(
        &dir,
        RocksOptions {
            fail_writes_after_bytes: Some(1000),
            ..Default::default()
        },
    )
    .unwrap();
    let mut b = Batch::default();
    b.put(Cf::Body, vec![1], Bytes::from(vec![7u8; 500]));
    write(&s, b).unwrap();
    let mut b = Batch::default();
    b.put(Cf::Body, vec![2], Bytes::from(vec![7u8; 600]));
    assert!(matches!(write(&s, b), Err(StoreError::Full(_))));
    assert_eq!(s.scan(Cf::Body, &[0], &[9]).unwrap().len(), 1);
    close(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lazy_batches_apply_in_order_with_synced_ones_and_survive_reopening() {
    let dir = std::env::temp_dir().join(format!("ferrobus-rocks-lazy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        let s = RocksStorage::open(&dir, RocksOptions::default()).unwrap();
        // a synced put, a lazy delete of it, a lazy put: queued without waiting in between
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, lazy) in [(0u8, false), (1, true), (2, true)] {
            let mut b = Batch {
                lazy,
                ..Batch::default()
            };
            match i {
                0 => b.put(Cf::Ref, vec![1], Bytes::from_static(b"a")),
                1 => b.delete(Cf::Ref, vec![1]),
                _ => b.put(Cf::Ref, vec![2], Bytes::from_static(b"b")),
            }
            let tx = tx.clone();
            s.write(b, Box::new(move |r| tx.send((i, r)).unwrap()));
        }
        let mut done: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
        done.sort_by_key(|(i, _)| *i);
        assert!(done.iter().all(|(_, r)| r.is_ok()), "{done:?}");
        assert_eq!(
            s.scan(Cf::Ref, &[0], &[9]).unwrap(),
            vec![(vec![2], Bytes::from_static(b"b"))]
        );
        close(s);
    }
    // closing flushes what was only written, not synced
    let s = RocksStorage::open(&dir, RocksOptions::default()).unwrap();
    assert_eq!(
        s.scan(Cf::Ref, &[0], &[9]).unwrap(),
        vec![(vec![2], Bytes::from_static(b"b"))]
    );
    close(s);
    let _ = std::fs::remove_dir_all(&dir);
}
