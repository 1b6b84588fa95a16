//! The suite for message sessions (`RequiresSession`). Run for every storage by
//! [`session_suite!`](crate::session_suite).

use std::sync::Arc;

use bytes::Bytes;

use crate::queue::{ConsumerHandle, Queue, QueueConfig, ReceiveMode, SessionLock};
use crate::storage::Storage;
use crate::testing::Recorder;
use crate::{NewMessage, StoreError};

/// A session queue's settings.
pub fn session_config() -> QueueConfig {
    QueueConfig {
        requires_session: true,
        ..QueueConfig::default()
    }
}

/// A message with `body` in `session`.
pub fn in_session(session: Option<&str>, body: &str) -> NewMessage {
    NewMessage {
        session_id: session.map(Arc::from),
        ..NewMessage::new(Bytes::copy_from_slice(body.as_bytes()))
    }
}

/// Stores each message as its own transfer; returns each one's outcome.
pub fn send(q: &Arc<Queue>, messages: Vec<NewMessage>) -> Vec<Result<Vec<u64>, StoreError>> {
    let (tx, rx) = std::sync::mpsc::channel();
    q.enqueue_each(
        messages.into_iter().map(|m| vec![m]).collect(),
        Box::new(move |r| tx.send(r).unwrap()),
    );
    rx.recv().unwrap().unwrap()
}

/// Stores `(session, body)` messages, each accepted.
pub fn send_all(q: &Arc<Queue>, messages: &[(&str, &str)]) {
    let out = send(
        q,
        messages
            .iter()
            .map(|(s, b)| in_session(Some(s), b))
            .collect(),
    );
    assert!(out.iter().all(Result::is_ok), "{out:?}");
}

/// A session receiver (`which`: a session id, or the next available) with `credit`.
pub fn accept(
    q: &Arc<Queue>,
    which: Option<&str>,
    credit: u32,
) -> Result<Option<(ConsumerHandle, SessionLock, Arc<Recorder>)>, StoreError> {
    let r = Arc::new(Recorder::default());
    Ok(q.accept_session(which, ReceiveMode::PeekLock, r.clone())?
        .map(|(c, lock)| {
            c.flow(0, credit, false);
            (c, lock, r)
        }))
}

/// The bodies a recorder was handed (and forgets them).
pub fn bodies(r: &Recorder) -> Vec<String> {
    r.take()
        .iter()
        .map(|d| String::from_utf8_lossy(&d.message.payload).into_owned())
        .collect()
}

/// Opens the session queue "q" (id 1) over `storage`.
pub fn open(storage: &Arc<dyn Storage>, cfg: QueueConfig) -> Arc<Queue> {
    Queue::open("q", 1, cfg, storage.clone()).unwrap()
}

/// Instantiates the session suite; `$storage` makes a fresh `Arc<dyn Storage>`.
#[macro_export]
macro_rules! session_suite {
    ($storage:expr) => {
        use std::sync::Arc;
        use $crate::queue::{Lane, Outcome, QueueConfig};
        use $crate::storage::Storage;
        use $crate::testing::sessions::*;
        use $crate::testing::{barrier, sync_settle};
        use $crate::StoreError;

        fn fresh() -> (Arc<dyn Storage>, Arc<$crate::Queue>) {
            let s: Arc<dyn Storage> = $storage;
            let q = open(&s, session_config());
            (s, q)
        }

        #[test]
        fn a_receiver_gets_only_its_session_in_order() {
            let _end = $crate::testing::TestGuard;
            let (_s, q) = fresh();
            send_all(
                &q,
                &[
                    ("a", "a1"),
                    ("b", "b1"),
                    ("a", "a2"),
                    ("b", "b2"),
                    ("a", "a3"),
                ],
            );
            let (_ca, lock, ra) = accept(&q, Some("a"), 10).unwrap().unwrap();
            assert_eq!(&*lock.session, "a");
            assert!(lock.locked_until_ms > $crate::now_ms());
            assert_eq!(bodies(&ra), vec!["a1", "a2", "a3"]);
            // one holder at a time
            assert!(matches!(
                accept(&q, Some("a"), 1),
                Err(StoreError::SessionCannotBeLocked(_))
            ));
            let (_cb, lock, rb) = accept(&q, None, 10).unwrap().unwrap();
            assert_eq!(&*lock.session, "b");
            assert_eq!(bodies(&rb), vec!["b1", "b2"]);
            // nothing else is available
            assert!(accept(&q, None, 1).unwrap().is_none());
            // a message for a held session goes to its holder
            send_all(&q, &[("a", "a4")]);
            assert_eq!(bodies(&ra), vec!["a4"]);
            let st = q.stats();
            assert_eq!((st.sessions_locked, st.locked, st.active), (2, 6, 0));
        }

        #[test]
        fn a_message_without_a_session_id_is_refused_and_plain_receivers_too() {
            let _end = $crate::testing::TestGuard;
            let (s, q) = fresh();
            let out = send(&q, vec![in_session(None, "x"), in_session(Some("s"), "y")]);
            assert!(matches!(out[0], Err(StoreError::NotAllowed(_))), "{out:?}");
            assert!(out[1].is_ok());
            assert_eq!(q.stats().active, 1);
            // a plain queue takes no session receiver, and ignores session ids
            let plain = $crate::Queue::open("p", 2, QueueConfig::default(), s.clone()).unwrap();
            assert!(matches!(
                accept(&plain, None, 1),
                Err(StoreError::NotAllowed(_))
            ));
            assert!(send(&plain, vec![in_session(Some("s"), "z")])[0].is_ok());
        }

        #[test]
        fn next_available_takes_sessions_oldest_first_and_a_closed_receiver_returns_them_uncounted()
        {
            let _end = $crate::testing::TestGuard;
            let (s, q) = fresh();
            send_all(&q, &[("x", "x1"), ("y", "y1"), ("z", "z1"), ("x", "x2")]);
            let (c, lock, r) = accept(&q, None, 10).unwrap().unwrap();
            assert_eq!(&*lock.session, "x");
            let got = r.take();
            assert_eq!(got.len(), 2);
            sync_settle(&c, &got[0], Outcome::Complete).unwrap();
            // closing with x2 still locked: back in x, not counted, and x goes to the back
            c.close();
            barrier(s.as_ref());
            let mut held = Vec::new();
            let order: Vec<String> = (0..3)
                .map(|_| {
                    let (c, lock, r) = accept(&q, None, 10).unwrap().unwrap();
                    let d = r.take();
                    if &*lock.session == "x" {
                        assert_eq!(d.len(), 1);
                        assert_eq!(d[0].delivery_count, 0, "a release is not a delivery");
                        assert_eq!(&d[0].message.payload[..], b"x2");
                    }
                    // keep the lock: the next receiver takes another session
                    held.push(c);
                    lock.session.to_string()
                })
                .collect();
            assert_eq!(order, vec!["y", "z", "x"]);
        }

        #[test]
        fn abandon_and_redelivery_keep_the_session_order() {
            let _end = $crate::testing::TestGuard;
            let (_s, q) = fresh();
            send_all(&q, &[("s", "1"), ("s", "2"), ("s", "3")]);
            let (c, _, r) = accept(&q, Some("s"), 1).unwrap().unwrap();
            let d1 = r.take().remove(0);
            // more credit while the abandon is being written: 1 still comes before 2
            let (tx, rx) = std::sync::mpsc::channel();
            c.settle(
                d1.lock.unwrap(),
                Outcome::Abandon,
                Box::new(move |r| tx.send(r).unwrap()),
            );
            c.flow(1, 3, false);
            rx.recv().unwrap().unwrap();
            let again = r.take();
            let got: Vec<(String, u32)> = again
                .iter()
                .map(|d| {
                    (
                        String::from_utf8_lossy(&d.message.payload).into(),
                        d.delivery_count,
                    )
                })
                .collect();
            assert_eq!(got, vec![("1".into(), 1), ("2".into(), 0), ("3".into(), 0)]);
        }

        #[test]
        fn an_expired_session_lock_is_lost_and_its_messages_come_back_counted() {
            let _end = $crate::testing::TestGuard;
            let (s, q) = fresh();
            send_all(&q, &[("s", "1"), ("s", "2")]);
            let (c, lock, r) = accept(&q, Some("s"), 10).unwrap().unwrap();
            let d = r.take();
            assert_eq!(d.len(), 2);
            assert_eq!(d[0].locked_until_ms, Some(lock.locked_until_ms));
            // renewing extends the lock (and its messages' locks)
            let renewed = q.renew_session_lock("s").unwrap();
            assert!(renewed >= lock.locked_until_ms);
            assert_eq!(q.renew_lock(d[0].lock.unwrap()).unwrap(), renewed);
            q.expire_locks(renewed - 1);
            assert_eq!(r.lost.load(std::sync::atomic::Ordering::SeqCst), 0);
            q.expire_locks(renewed);
            assert_eq!(r.lost.load(std::sync::atomic::Ordering::SeqCst), 1);
            assert_eq!(q.stats().session_locks_lost, 1);
            assert_eq!(
                sync_settle(&c, &d[0], Outcome::Complete),
                Err(StoreError::LockLost)
            );
            assert!(matches!(
                q.renew_session_lock("s"),
                Err(StoreError::SessionLockLost(_))
            ));
            barrier(s.as_ref());
            drop(c);
            let (_c2, _, r2) = accept(&q, None, 10).unwrap().unwrap();
            let counts: Vec<u32> = r2.take().iter().map(|d| d.delivery_count).collect();
            assert_eq!(counts, vec![1, 1]);
        }

        #[test]
        fn session_state_is_durable_and_listed_with_the_sessions_that_have_messages() {
            let _end = $crate::testing::TestGuard;
            let (s, q) = fresh();
            send_all(&q, &[("m1", "x"), ("m2", "y")]);
            let set = |q: &Arc<$crate::Queue>, id: &str, v: Option<&str>| {
                let (tx, rx) = std::sync::mpsc::channel();
                q.set_session_state(
                    id,
                    v.map(|v| bytes::Bytes::copy_from_slice(v.as_bytes())),
                    Box::new(move |r| tx.send(r).unwrap()),
                );
                rx.recv().unwrap()
            };
            // only a held session's state can be read or set
            assert!(matches!(
                set(&q, "st", Some("v")),
                Err(StoreError::SessionLockLost(_))
            ));
            let (c, _, _r) = accept(&q, Some("st"), 0).unwrap().unwrap();
            assert_eq!(q.session_state("st").unwrap(), None);
            set(&q, "st", Some("v1")).unwrap();
            assert_eq!(q.session_state("st").unwrap().as_deref(), Some(&b"v1"[..]));
            drop(c);
            let (c, _, r1) = accept(&q, Some("m1"), 10).unwrap().unwrap();
            set(&q, "m1", Some("gone")).unwrap();
            set(&q, "m1", None).unwrap();
            assert_eq!(q.session_state("m1").unwrap(), None);
            // m1's message is locked: still a session with messages
            assert_eq!(r1.take().len(), 1);
            assert_eq!(
                q.message_sessions(None, 0, 10).unwrap(),
                vec!["m1", "m2", "st"]
            );
            assert_eq!(q.message_sessions(None, 1, 1).unwrap(), vec!["m2"]);
            assert!(q.message_sessions(None, 3, 10).unwrap().is_empty());
            // only sessions whose state was set after a time
            let before = $crate::now_ms() - 60_000;
            assert_eq!(q.message_sessions(Some(before), 0, 10).unwrap(), vec!["st"]);
            assert!(q
                .message_sessions(Some($crate::now_ms() + 60_000), 0, 10)
                .unwrap()
                .is_empty());
            drop(c);
            barrier(s.as_ref());
            // a restart keeps messages and state and frees every lock
            let _gone = q;
            let q2 = open(&s, session_config());
            assert_eq!(
                q2.message_sessions(None, 0, 10).unwrap(),
                vec!["m1", "m2", "st"]
            );
            let (_c, _, r) = accept(&q2, Some("st"), 0).unwrap().unwrap();
            assert!(r.take().is_empty());
            assert_eq!(q2.session_state("st").unwrap().as_deref(), Some(&b"v1"[..]));
        }

        #[test]
        fn a_restart_brings_back_each_sessions_messages_in_order() {
            let _end = $crate::testing::TestGuard;
            let (s, q) = fresh();
            let mut sent = Vec::new();
            for i in 0..40 {
                let session = ["p", "q", "r"][i % 3];
                sent.push((session, format!("{session}{i}")));
            }
            let refs: Vec<(&str, &str)> = sent.iter().map(|(s, b)| (*s, b.as_str())).collect();
            send_all(&q, &refs);
            // a receiver holds p when the broker stops: its messages come back counted once
            let (c, _, r) = accept(&q, Some("p"), 100).unwrap().unwrap();
            assert_eq!(r.take().len(), 14);
            barrier(s.as_ref());
            let _crashed = (c, q);
            let q2 = open(&s, session_config());
            assert_eq!(q2.stats().active, 40);
            assert_eq!(q2.stats().sessions_available, 3);
            let mut seen = Vec::new();
            let mut held = Vec::new();
            while let Some((c, lock, r)) = accept(&q2, None, 100).unwrap() {
                let d = r.take();
                let expected: Vec<&str> = sent
                    .iter()
                    .filter(|(s, _)| *s == &*lock.session)
                    .map(|(_, b)| b.as_str())
                    .collect();
                let got: Vec<String> = d
                    .iter()
                    .map(|d| String::from_utf8_lossy(&d.message.payload).into())
                    .collect();
                assert_eq!(got, expected);
                let counted = d.iter().all(|d| d.delivery_count == 1);
                assert_eq!(counted, &*lock.session == "p", "{}", lock.session);
                seen.push(lock.session.to_string());
                held.push(c);
            }
            seen.sort();
            assert_eq!(seen, vec!["p", "q", "r"]);
        }

        #[test]
        fn peek_and_deferred_messages_stay_within_a_session() {
            let _end = $crate::testing::TestGuard;
            let (_s, q) = fresh();
            send_all(&q, &[("a", "a1"), ("b", "b1"), ("a", "a2")]);
            let seqs =
                |v: Vec<$crate::Peeked>| -> Vec<u64> { v.iter().map(|p| p.message.seq).collect() };
            assert_eq!(
                seqs(q.peek_in(Lane::Main, Some("a"), 1, 10).unwrap()),
                vec![1, 3]
            );
            assert_eq!(
                seqs(q.peek_in(Lane::Main, Some("b"), 1, 10).unwrap()),
                vec![2]
            );
            assert_eq!(seqs(q.peek(Lane::Main, 1, 10).unwrap()), vec![1, 2, 3]);
            assert_eq!(seqs(q.peek(Lane::Main, 2, 1).unwrap()), vec![2]);
            let (c, _, r) = accept(&q, Some("a"), 1).unwrap().unwrap();
            let d = r.take().remove(0);
            sync_settle(&c, &d, Outcome::Defer).unwrap();
            // deferred a1 is a's, not b's
            assert!(matches!(
                q.receive_deferred_in(Some("b"), &[1], true),
                Err(StoreError::NotFound(_))
            ));
            let got = q.receive_deferred_in(Some("a"), &[1], true).unwrap();
            assert_eq!(&got[0].message.payload[..], b"a1");
            assert_eq!(
                seqs(q.peek_in(Lane::Main, Some("a"), 1, 10).unwrap()),
                vec![1, 3]
            );
        }
    };
}
