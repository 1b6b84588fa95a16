//! The store test suite. [`store_suite!`](crate::store_suite) instantiates it for a storage
//! implementation, so the in-memory and the RocksDB storage are held to the same behaviour.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::queue::{ConsumerHandle, ConsumerSink, Delivery, Outcome, Queue};
use crate::StoreError;

pub mod dead_forward;
pub mod sessions;
pub mod topics;

#[derive(Default)]
pub struct Recorder {
    pub deliveries: Mutex<Vec<Delivery>>,
    pub drained: Mutex<Vec<u32>>,
    /// How often the consumer heard its session lock was lost.
    pub lost: std::sync::atomic::AtomicUsize,
}

impl ConsumerSink for Recorder {
    // the suite's sink: it records what the queue hands over
    fn deliver(&self, d: Delivery) {
        self.deliveries.lock().unwrap().push(d);
    }
    fn drained(&self, count: u32) {
        self.drained.lock().unwrap().push(count);
    }
    fn session_lost(&self) {
        self.lost.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Recorder {
    pub fn take(&self) -> Vec<Delivery> {
        std::mem::take(&mut *self.deliveries.lock().unwrap())
    }
}

thread_local! {
    static AT_END: std::cell::RefCell<Vec<Box<dyn FnOnce()>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Registers something to run when the current test's [`TestGuard`] drops (after every other
/// local of the test): a storage factory uses it to wait until the storage is closed, since the
/// last reference may be released on another thread after the test body returns.
pub fn at_test_end(f: impl FnOnce() + 'static) {
    AT_END.with(|v| v.borrow_mut().push(Box::new(f)));
}

/// The first local of every suite test; see [`at_test_end`].
pub struct TestGuard;

impl Drop for TestGuard {
    fn drop(&mut self) {
        for f in AT_END.with(|v| std::mem::take(&mut *v.borrow_mut())) {
            f();
        }
    }
}

/// Writes a batch and waits until it is committed.
pub fn write_and_wait(
    s: &dyn crate::storage::Storage,
    b: crate::storage::Batch,
) -> Result<(), StoreError> {
    crate::queue::write_and_wait(s, b)
}

/// Waits until every write submitted before it has committed and its completion has run
/// (writes complete in order).
pub fn barrier(s: &dyn crate::storage::Storage) {
    write_and_wait(s, crate::storage::Batch::default()).expect("empty batch");
}

pub fn sync_enqueue(q: &Arc<Queue>, bodies: &[&[u8]]) -> Vec<u64> {
    let (tx, rx) = std::sync::mpsc::channel();
    q.enqueue(
        bodies.iter().map(|b| Bytes::copy_from_slice(b)).collect(),
        Box::new(move |r| tx.send(r).unwrap()),
    );
    rx.recv().unwrap().unwrap()
}

/// Attaches a peek-lock consumer to `q`'s main lane with `credit` and returns it with the
/// sequence numbers and delivery counts it was handed.
pub fn take_counted(q: &Arc<Queue>, credit: u32) -> (ConsumerHandle, Vec<(u64, u32)>) {
    let (c, r) = consumer(
        q,
        crate::queue::Lane::Main,
        crate::queue::ReceiveMode::PeekLock,
        credit,
    );
    let got = r
        .take()
        .iter()
        .map(|d| (d.message.seq, d.delivery_count))
        .collect();
    (c, got)
}

/// Registers a consumer on `lane` of `q` and gives it `credit`; returns it with the recorder
/// of what it was handed.
pub fn consumer(
    q: &Arc<Queue>,
    lane: crate::queue::Lane,
    mode: crate::queue::ReceiveMode,
    credit: u32,
) -> (ConsumerHandle, Arc<Recorder>) {
    let r = Arc::new(Recorder::default());
    let c = q.add_consumer(lane, mode, r.clone());
    c.flow(0, credit, false);
    (c, r)
}

pub fn sync_settle(c: &ConsumerHandle, d: &Delivery, o: Outcome) -> Result<(), StoreError> {
    let (tx, rx) = std::sync::mpsc::channel();
    c.settle(d.lock.unwrap(), o, Box::new(move |r| tx.send(r).unwrap()));
    rx.recv().unwrap()
}

/// Instantiates the store test suite; `$storage` is an expression that makes a fresh
/// `Arc<dyn Storage>` (called once per test).
#[macro_export]
macro_rules! store_suite {
    ($storage:expr) => {
        use std::sync::Arc;
        use $crate::queue::*;
        use $crate::storage::Storage;
        use $crate::testing::{barrier, sync_enqueue, sync_settle, Recorder};
        use $crate::StoreError;

        fn open(storage: &Arc<dyn Storage>, cfg: QueueConfig) -> Arc<Queue> {
            Queue::open("q", 1, cfg, storage.clone()).unwrap()
        }

        fn fresh() -> (Arc<dyn Storage>, Arc<Queue>) {
            with_config(QueueConfig::default())
        }

        fn with_config(cfg: QueueConfig) -> (Arc<dyn Storage>, Arc<Queue>) {
            let s: Arc<dyn Storage> = $storage;
            let q = open(&s, cfg);
            (s, q)
        }

        #[test]
        fn fifo_with_sequence_numbers_from_one() {
            let _end = $crate::testing::TestGuard;
            let (_s, q) = fresh();
            assert_eq!(sync_enqueue(&q, &[b"a", b"b"]), vec![1, 2]);
            assert_eq!(sync_enqueue(&q, &[b"c"]), vec![3]);
            let (_c, r) = $crate::testing::consumer(&q, Lane::Main, ReceiveMode::PeekLock, 10);
            let d = r.take();
            let bodies: Vec<_> = d.iter().map(|d| &d.message.payload[..]).collect();
            assert_eq!(bodies, vec![&b"a"[..], b"b", b"c"]);
            assert!(d.iter().all(|d| d.lock.is_some() && d.delivery_count == 0));
            assert_eq!(q.stats().locked, 3);
        }

        #[test]
        fn credit_limits_dispatch_and_counts_from_the_receivers_view() {
            let _end = $crate::testing::TestGuard;
            let (_s, q) = fresh();
            sync_enqueue(&q, &[b"1", b"2", b"3", b"4", b"5"]);
            let (c, r) = $crate::testing::consumer(&q, Lane::Main, ReceiveMode::PeekLock, 2);
            assert_eq!(r.take().len(), 2);
            // the receiver has seen 1 of the 2 and grants 2 more from there: 1 new delivery
            c.flow(1, 2, false);
            assert_eq!(r.take().len(), 1);
            c.flow(3, 5, false);
            assert_eq!(r.take().len(), 2);
        }

        #[test]
        fn competing_consumers_share_round_robin() {
            let _end = $crate::testing::TestGuard;
            let (_s, q) = fresh();
            let a = Arc::new(Recorder::default());
            let b = Arc::new(Recorder::default());
            let ca = q.add_consumer(Lane::Main, ReceiveMode::PeekLock, a.clone());
            let cb = q.add_consumer(Lane::Main, ReceiveMode::PeekLock, b.clone());
            ca.flow(0, 100, false);
            cb.flow(0, 100, false);
            sync_enqueue(&q, &[b"1", b"2", b"3", b"4"]);
            let (da, db) = (a.take(), b.take());
            assert_eq!((da.len(), db.len()), (2, 2));
            let mut seqs: Vec<u64> = da.iter().chain(&db).map(|d| d.message.seq).collect();
            seqs.sort();
            assert_eq!(seqs, vec![1, 2, 3, 4]);
        }

        #[test]
        fn outcomes() {
            let _end = $crate::testing::TestGuard;
            let (_s, q) = fresh();
            sync_enqueue(&q, &[b"done", b"rel", b"ab", b"def", b"dl"]);
            let (c, r) = $crate::testing::consumer(&q, Lane::Main, ReceiveMode::PeekLock, 5);
            let d = r.take();
            sync_settle(&c, &d[0], Outcome::Complete).unwrap();
            sync_settle(&c, &d[1], Outcome::Release).unwrap();
            sync_settle(&c, &d[2], Outcome::Abandon).unwrap();
            sync_settle(&c, &d[3], Outcome::Defer).unwrap();
            sync_settle(
                &c,
                &d[4],
                Outcome::DeadLetter {
                    reason: Some("bad".into()),
                    description: None,
                },
            )
            .unwrap();
            // settling twice: the lock is gone
            assert_eq!(
                sync_settle(&c, &d[0], Outcome::Complete),
                Err(StoreError::LockLost)
            );
            c.flow(5, 5, false);
            let again = r.take();
            let got: Vec<(u64, u32)> = again
                .iter()
                .map(|d| (d.message.seq, d.delivery_count))
                .collect();
            assert_eq!(got, vec![(2, 0), (3, 1)]);
            let st = q.stats();
            assert_eq!((st.deferred, st.dead_lettered), (1, 1));
            let dl = Arc::new(Recorder::default());
            let cd = q.add_consumer(Lane::DeadLetter, ReceiveMode::PeekLock, dl.clone());
            cd.flow(0, 10, false);
            let dd = dl.take();
            assert_eq!(dd.len(), 1);
            assert_eq!(dd[0].message.seq, 5);
            assert_eq!(dd[0].dead_letter_reason.as_deref(), Some("bad"));
            sync_settle(&cd, &dd[0], Outcome::Complete).unwrap();
            assert_eq!(q.stats().dead_lettered, 0);
        }

        #[test]
        fn max_delivery_count_dead_letters() {
            let _end = $crate::testing::TestGuard;
            let (_s, q) = with_config(QueueConfig {
                max_delivery_count: 2,
                ..Default::default()
            });
            sync_enqueue(&q, &[b"x"]);
            let (c, r) = $crate::testing::consumer(&q, Lane::Main, ReceiveMode::PeekLock, 10);
            let d = r.take().remove(0);
            sync_settle(&c, &d, Outcome::Abandon).unwrap();
            let d = r.take().remove(0);
            assert_eq!(d.delivery_count, 1);
            sync_settle(&c, &d, Outcome::Abandon).unwrap();
            assert!(r.take().is_empty());
            let dl = Arc::new(Recorder::default());
            let cd = q.add_consumer(Lane::DeadLetter, ReceiveMode::PeekLock, dl.clone());
            cd.flow(0, 1, false);
            let d = dl.take().remove(0);
            assert_eq!(
                d.dead_letter_reason.as_deref(),
                Some(MAX_DELIVERY_COUNT_EXCEEDED)
            );
            assert_eq!(d.delivery_count, 2);
        }

        #[test]
        fn receive_and_delete_removes_on_delivery() {
            let _end = $crate::testing::TestGuard;
            let (s, q) = fresh();
            sync_enqueue(&q, &[b"a", b"b"]);
            let (c, r) =
                $crate::testing::consumer(&q, Lane::Main, ReceiveMode::ReceiveAndDelete, 10);
            let d = r.take();
            assert_eq!(d.len(), 2);
            assert!(d.iter().all(|d| d.lock.is_none()));
            assert_eq!(
                q.stats(),
                QueueStats {
                    consumers: 1,
                    ..Default::default()
                }
            );
            drop(c);
            barrier(s.as_ref());
            let q2 = open(&s, QueueConfig::default());
            assert_eq!(q2.stats().active, 0);
        }

        #[test]
        fn drain_delivers_what_is_there_then_uses_up_the_credit() {
            let _end = $crate::testing::TestGuard;
            let (_s, q) = fresh();
            sync_enqueue(&q, &[b"a", b"b"]);
            let r = Arc::new(Recorder::default());
            let c = q.add_consumer(Lane::Main, ReceiveMode::PeekLock, r.clone());
            c.flow(0, 5, true);
            assert_eq!(r.take().len(), 2);
            assert_eq!(*r.drained.lock().unwrap(), vec![5]);
            // no credit left: a new message waits
            sync_enqueue(&q, &[b"c"]);
            assert!(r.take().is_empty());
            c.flow(5, 1, true);
            assert_eq!(r.take().len(), 1);
            assert_eq!(r.drained.lock().unwrap().last(), Some(&6));
        }

        #[test]
        fn a_closed_consumer_returns_its_locked_messages_counted() {
            let _end = $crate::testing::TestGuard;
            let (s, q) = fresh();
            sync_enqueue(&q, &[b"a", b"b"]);
            let (c, r) = $crate::testing::consumer(&q, Lane::Main, ReceiveMode::PeekLock, 10);
            assert_eq!(r.take().len(), 2);
            c.close();
            barrier(s.as_ref());
            let (_c2, r2) = $crate::testing::consumer(&q, Lane::Main, ReceiveMode::PeekLock, 10);
            let d = r2.take();
            let got: Vec<(u64, u32)> = d
                .iter()
                .map(|d| (d.message.seq, d.delivery_count))
                .collect();
            assert_eq!(got, vec![(1, 1), (2, 1)]);
        }

        #[test]
        fn reopening_recovers_messages_lanes_counts_and_sequence() {
            let _end = $crate::testing::TestGuard;
            let (s, q) = fresh();
            sync_enqueue(&q, &[b"a", b"b", b"c", b"d"]);
            let (c, r) = $crate::testing::consumer(&q, Lane::Main, ReceiveMode::PeekLock, 4);
            let d = r.take();
            sync_settle(&c, &d[0], Outcome::Complete).unwrap();
            sync_settle(&c, &d[1], Outcome::Abandon).unwrap();
            sync_settle(&c, &d[2], Outcome::Defer).unwrap();
            sync_settle(
                &c,
                &d[3],
                Outcome::DeadLetter {
                    reason: Some("r".into()),
                    description: Some("d".into()),
                },
            )
            .unwrap();
            // a crash: the old queue and its consumer are simply abandoned (kept alive until the
            // end of the test, so they never return their locks to the storage before we look)
            let _crashed = (c, q);
            let q2 = open(&s, QueueConfig::default());
            let st = q2.stats();
            assert_eq!((st.active, st.deferred, st.dead_lettered), (1, 1, 1));
            assert_eq!(st.bytes, 3);
            assert_eq!(sync_enqueue(&q2, &[b"e"]), vec![5]);
            let (_c2, r2) = $crate::testing::consumer(&q2, Lane::Main, ReceiveMode::PeekLock, 10);
            let got: Vec<(u64, u32)> = r2
                .take()
                .iter()
                .map(|d| (d.message.seq, d.delivery_count))
                .collect();
            // 2 was abandoned once, and was not locked when the broker stopped
            assert_eq!(got, vec![(2, 1), (5, 0)]);
        }

        #[test]
        fn a_full_queue_refuses_and_keeps_what_it_has() {
            let _end = $crate::testing::TestGuard;
            let (_s, q) = with_config(QueueConfig {
                max_size_bytes: 10,
                ..Default::default()
            });
            sync_enqueue(&q, &[b"12345678"]);
            let (tx, rx) = std::sync::mpsc::channel();
            q.enqueue(
                vec![bytes::Bytes::from_static(b"abc")],
                Box::new(move |r| tx.send(r).unwrap()),
            );
            assert!(matches!(rx.recv().unwrap(), Err(StoreError::Full(_))));
            assert_eq!(q.stats().active, 1);
        }

        #[test]
        fn a_backlog_larger_than_the_window_comes_back_in_order_after_reopen() {
            let _end = $crate::testing::TestGuard;
            let (s, q) = fresh();
            let n = 3000u64;
            let bodies: Vec<Vec<u8>> = (0..n).map(|i| i.to_be_bytes().to_vec()).collect();
            for chunk in bodies.chunks(100) {
                let refs: Vec<&[u8]> = chunk.iter().map(|b| &b[..]).collect();
                sync_enqueue(&q, &refs);
            }
            assert_eq!(q.stats().active, n);
            assert_eq!(q.stats().bytes, n * 8);
            drop(q);
            let q = open(&s, QueueConfig::default());
            assert_eq!(q.stats().active, n);
            let r = Arc::new(Recorder::default());
            let c = q.add_consumer(Lane::Main, ReceiveMode::PeekLock, r.clone());
            let mut got = Vec::new();
            let mut count = 0u32;
            while got.len() < n as usize {
                c.flow(count, 250, false);
                let batch = r.take();
                assert!(!batch.is_empty(), "stalled after {}", got.len());
                count = count.wrapping_add(batch.len() as u32);
                for d in batch {
                    assert_eq!(
                        &d.message.payload[..],
                        &(d.message.seq - 1).to_be_bytes()[..]
                    );
                    got.push(d.message.seq);
                    sync_settle(&c, &d, Outcome::Complete).unwrap();
                }
            }
            assert_eq!(got, (1..=n).collect::<Vec<_>>());
            assert_eq!(
                q.stats(),
                QueueStats {
                    consumers: 1,
                    ..Default::default()
                }
            );
        }

        #[test]
        fn sequence_numbers_keep_growing_after_everything_is_completed() {
            let _end = $crate::testing::TestGuard;
            let (s, q) = fresh();
            sync_enqueue(&q, &[b"a", b"b"]);
            let (c, r) =
                $crate::testing::consumer(&q, Lane::Main, ReceiveMode::ReceiveAndDelete, 10);
            assert_eq!(r.take().len(), 2);
            drop(c);
            drop(q);
            barrier(s.as_ref());
            let q = open(&s, QueueConfig::default());
            assert_eq!(sync_enqueue(&q, &[b"c"]), vec![3]);
        }

        #[test]
        fn messages_locked_when_the_broker_stopped_come_back_counted() {
            let _end = $crate::testing::TestGuard;
            let (s, q) = fresh();
            sync_enqueue(&q, &[b"locked", b"waiting"]);
            let (c, r) = $crate::testing::consumer(&q, Lane::Main, ReceiveMode::PeekLock, 1);
            assert_eq!(r.take().len(), 1);
            let _crashed = (c, q); // the broker dies with the lock held
            barrier(s.as_ref()); // the delivery count is written in the background
            let q2 = open(&s, QueueConfig::default());
            let (c2, r2) = $crate::testing::consumer(&q2, Lane::Main, ReceiveMode::PeekLock, 10);
            let got: Vec<(u64, u32)> = r2
                .take()
                .iter()
                .map(|d| (d.message.seq, d.delivery_count))
                .collect();
            assert_eq!(got, vec![(1, 1), (2, 0)]);
            // counted once, not again at the next start
            drop(c2);
            barrier(s.as_ref());
            let q3 = open(&s, QueueConfig::default());
            let (_c3, r3) = $crate::testing::consumer(&q3, Lane::Main, ReceiveMode::PeekLock, 10);
            let got: Vec<(u64, u32)> = r3
                .take()
                .iter()
                .map(|d| (d.message.seq, d.delivery_count))
                .collect();
            // c2 was closed properly: both came back counted once more; reopening adds nothing
            assert_eq!(got, vec![(1, 2), (2, 1)]);
        }

        #[test]
        fn a_released_message_is_not_counted_after_a_restart() {
            let _end = $crate::testing::TestGuard;
            let (s, q) = fresh();
            sync_enqueue(&q, &[b"a"]);
            let (c, r) = $crate::testing::consumer(&q, Lane::Main, ReceiveMode::PeekLock, 1);
            let d = r.take().remove(0);
            sync_settle(&c, &d, Outcome::Release).unwrap();
            barrier(s.as_ref());
            let _stopped = (c, q);
            let q2 = open(&s, QueueConfig::default());
            let (_c2, r2) = $crate::testing::consumer(&q2, Lane::Main, ReceiveMode::PeekLock, 1);
            assert_eq!(r2.take()[0].delivery_count, 0);
        }

        #[test]
        fn an_expired_lock_returns_the_message_counted_and_settling_it_fails() {
            let _end = $crate::testing::TestGuard;
            let (s, q) = with_config(QueueConfig {
                lock_duration_ms: 1000,
                ..Default::default()
            });
            sync_enqueue(&q, &[b"a"]);
            let (c, r) = $crate::testing::consumer(&q, Lane::Main, ReceiveMode::PeekLock, 10);
            let d = r.take().remove(0);
            let until = d.locked_until_ms.unwrap();
            assert!(until > $crate::now_ms() + 500 && until <= $crate::now_ms() + 1000);
            q.expire_locks(until - 1);
            assert_eq!(q.stats().locked, 1, "not before its time");
            q.expire_locks(until);
            barrier(s.as_ref());
            let again = r.take();
            assert_eq!(again.len(), 1);
            assert_eq!((again[0].message.seq, again[0].delivery_count), (1, 1));
            assert_eq!(
                sync_settle(&c, &d, Outcome::Complete),
                Err(StoreError::LockLost)
            );
            sync_settle(&c, &again[0], Outcome::Complete).unwrap();
        }

        #[test]
        fn scheduled_messages_wait_survive_a_restart_and_can_be_cancelled() {
            let _end = $crate::testing::TestGuard;
            let (s, q) = fresh();
            let at = $crate::now_ms() + 60_000;
            let item = |b: &'static [u8]| $crate::NewMessage {
                scheduled_ms: Some(at),
                ..$crate::NewMessage::new(bytes::Bytes::from_static(b))
            };
            let (tx, rx) = std::sync::mpsc::channel();
            q.enqueue_at(
                vec![item(b"later"), item(b"cancel me")],
                Box::new(move |r| tx.send(r).unwrap()),
            );
            assert_eq!(rx.recv().unwrap().unwrap(), vec![1, 2]);
            assert_eq!((q.stats().active, q.stats().scheduled), (0, 2));
            let (tx, rx) = std::sync::mpsc::channel();
            q.cancel_scheduled(&[2], Box::new(move |r| tx.send(r).unwrap()));
            rx.recv().unwrap().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            q.cancel_scheduled(&[7], Box::new(move |r| tx.send(r).unwrap()));
            assert!(matches!(rx.recv().unwrap(), Err(StoreError::NotFound(_))));
            barrier(s.as_ref());
            let _stopped = q;
            let q = open(&s, QueueConfig::default());
            assert_eq!((q.stats().active, q.stats().scheduled), (0, 1));
            let (_c, r) = $crate::testing::consumer(&q, Lane::Main, ReceiveMode::PeekLock, 10);
            q.release_due(at - 1);
            assert!(r.take().is_empty(), "not before its time");
            q.release_due(at);
            barrier(s.as_ref());
            let d = r.take();
            assert_eq!(d.len(), 1);
            assert_eq!(
                (d[0].message.seq, &d[0].message.payload[..]),
                (1, &b"later"[..])
            );
        }

        #[test]
        fn expired_messages_are_dropped_or_dead_lettered_and_never_delivered() {
            let _end = $crate::testing::TestGuard;
            let s: Arc<dyn Storage> = $storage;
            for to_dlq in [false, true] {
                let q = Queue::open(
                    if to_dlq { "dlq" } else { "drop" },
                    if to_dlq { 2 } else { 1 },
                    QueueConfig {
                        dead_letter_on_expiration: to_dlq,
                        ..Default::default()
                    },
                    s.clone(),
                )
                .unwrap();
                let msg = |b: &'static [u8], ttl| $crate::NewMessage {
                    ttl_ms: ttl,
                    ..$crate::NewMessage::new(bytes::Bytes::from_static(b))
                };
                let (tx, rx) = std::sync::mpsc::channel();
                q.enqueue_at(
                    vec![msg(b"short", Some(1)), msg(b"long", None)],
                    Box::new(move |r| tx.send(r).unwrap()),
                );
                rx.recv().unwrap().unwrap();
                std::thread::sleep(std::time::Duration::from_millis(5));
                let (_c, r) = $crate::testing::consumer(&q, Lane::Main, ReceiveMode::PeekLock, 10);
                let got: Vec<u64> = r.take().iter().map(|d| d.message.seq).collect();
                assert_eq!(got, vec![2], "the expired message must not be delivered");
                assert_eq!(q.stats().expired_total, 1);
                assert_eq!(q.stats().dead_lettered, u64::from(to_dlq));
                if to_dlq {
                    let dl = Arc::new(Recorder::default());
                    let cd = q.add_consumer(Lane::DeadLetter, ReceiveMode::PeekLock, dl.clone());
                    cd.flow(0, 10, false);
                    let d = dl.take();
                    assert_eq!(
                        d.len(),
                        1,
                        "TTL does not apply inside the dead-letter sub-queue"
                    );
                    assert_eq!(d[0].dead_letter_reason.as_deref(), Some(TTL_EXPIRED));
                }
            }
        }

        #[test]
        fn completions_settled_first_go_together_and_skip_lost_locks() {
            let _end = $crate::testing::TestGuard;
            let (s, q) = fresh();
            sync_enqueue(&q, &[b"a", b"b", b"c", b"d"]);
            let (c, r) = $crate::testing::consumer(&q, Lane::Main, ReceiveMode::PeekLock, 10);
            let d = r.take();
            let complete = |locks: &[$crate::LockToken]| {
                let (tx, rx) = std::sync::mpsc::channel();
                c.complete_unconfirmed(locks, Box::new(move |r| tx.send(r).unwrap()));
                rx.recv().unwrap().unwrap()
            };
            let unknown = [7u8; 16];
            assert_eq!(
                complete(&[d[0].lock.unwrap(), unknown, d[2].lock.unwrap()]),
                vec![true, false, true]
            );
            assert_eq!(q.stats().locked, 2);
            assert_eq!(q.stats().bytes, 2);
            // already completed: nothing to do
            assert_eq!(complete(&[d[0].lock.unwrap()]), vec![false]);
            barrier(s.as_ref());
            // a crash: b and d come back, counted once; a and c are gone
            let _crashed = (c, q);
            let q2 = open(&s, QueueConfig::default());
            let (_c2, got) = $crate::testing::take_counted(&q2, 10);
            assert_eq!(got, vec![(2, 1), (4, 1)]);
        }

        #[test]
        fn transfers_stored_together_are_each_accepted_or_refused() {
            let _end = $crate::testing::TestGuard;
            let (_s, q) = with_config(QueueConfig {
                max_size_bytes: 10,
                ..QueueConfig::default()
            });
            let group = |bodies: &[&[u8]]| -> Vec<$crate::NewMessage> {
                bodies
                    .iter()
                    .map(|b| $crate::NewMessage::new(bytes::Bytes::copy_from_slice(b)))
                    .collect()
            };
            let (tx, rx) = std::sync::mpsc::channel();
            q.enqueue_each(
                vec![
                    group(&[b"aaaa", b"bb"]),
                    group(&[b"cccccccc"]),
                    group(&[b"dd"]),
                ],
                Box::new(move |r| tx.send(r).unwrap()),
            );
            let each = rx.recv().unwrap().unwrap();
            assert_eq!(each.len(), 3);
            assert_eq!(each[0].as_ref().unwrap(), &vec![1, 2]);
            assert!(matches!(each[1], Err(StoreError::Full(_))), "{:?}", each[1]);
            assert_eq!(each[2].as_ref().unwrap(), &vec![3]);
            let (_c, got) = $crate::testing::take_counted(&q, 10);
            assert_eq!(got, vec![(1, 0), (2, 0), (3, 0)]);
            assert_eq!(q.stats().bytes, 8);
        }
    };
}
