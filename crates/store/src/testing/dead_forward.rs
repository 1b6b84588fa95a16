//! The suite for dead-letter sub-queues that forward (`ForwardDeadLetteredMessagesTo`). Run
//! for every storage by [`dead_forward_suite!`](crate::dead_forward_suite).

use std::sync::Arc;

use crate::queue::{Lane, QueueConfig, ReceiveMode};
use crate::storage::Storage;
use crate::testing::topics::{sql_sub, text_rewrite, text_view};
use crate::testing::{barrier, consumer, Recorder};
use crate::topic::{SubscriptionConfig, TopicConfig, TopicSpec};
use crate::Entities;

/// A queue declaration whose dead letters go to `to`.
pub fn forwarding(name: &str, to: Option<&str>, max_delivery_count: u32) -> (String, QueueConfig) {
    (
        name.to_string(),
        QueueConfig {
            forward_dead_lettered_to: to.map(str::to_string),
            max_delivery_count,
            ..QueueConfig::default()
        },
    )
}

/// Opens queues and topics over `storage` with the topic suite's text messages.
pub fn open(
    storage: &Arc<dyn Storage>,
    queues: &[(String, QueueConfig)],
    topics: &[TopicSpec],
) -> Result<Entities, crate::StoreError> {
    Entities::open_all(storage.clone(), queues, topics, text_view(), text_rewrite())
}

/// Stores `payloads` in `queue`, then has a consumer with `max_delivery_count` 1 take them
/// and go away: each is dead-lettered (`MaxDeliveryCountExceeded`) once `storage` wrote it.
pub fn dead_letter_all(e: &Entities, storage: &dyn Storage, queue: &str, payloads: &[&str]) {
    let q = e.resolve(queue).expect("queue").queue;
    crate::testing::sync_enqueue(
        &q,
        &payloads.iter().map(|p| p.as_bytes()).collect::<Vec<_>>(),
    );
    let (c, r) = consumer(&q, Lane::Main, ReceiveMode::PeekLock, payloads.len() as u32);
    assert_eq!(r.take().len(), payloads.len(), "the consumer took them all");
    c.close();
    barrier(storage);
}

/// What a receive-and-delete consumer of `path` is handed now: (payload, reason, description,
/// source) of each delivery, in order.
pub fn received(e: &Entities, path: &str, credit: u32) -> Vec<(String, Option<String>, String)> {
    let at = e.resolve(path).expect("entity");
    let r = Arc::new(Recorder::default());
    let c = at
        .queue
        .add_consumer(at.lane, ReceiveMode::ReceiveAndDelete, r.clone());
    c.flow(0, credit, false);
    let got = r
        .take()
        .into_iter()
        .map(|d| {
            (
                String::from_utf8_lossy(&d.message.payload).into_owned(),
                d.dead_letter_reason,
                d.dead_letter_source.unwrap_or_default(),
            )
        })
        .collect();
    c.close();
    got
}

/// Forwards what the dead-letter sub-queues hold and waits until it is written.
pub fn forward(e: &Entities, storage: &dyn Storage) {
    e.forward_dead_letters();
    barrier(storage);
}

/// A topic `audit` with subscriptions `everything` and `red` (`color = 'red'`).
pub fn audit_topic() -> TopicSpec {
    TopicSpec {
        name: "audit".into(),
        config: TopicConfig::default(),
        subscriptions: vec![
            ("everything".to_string(), SubscriptionConfig::default()),
            sql_sub("red", "color = 'red'"),
        ],
    }
}

/// Instantiates the suite; `$storage` makes a fresh `Arc<dyn Storage>`.
#[macro_export]
macro_rules! dead_forward_suite {
    ($storage:expr) => {
        use std::sync::Arc;
        use $crate::storage::Storage;
        use $crate::testing::barrier;
        use $crate::testing::dead_forward::*;
        use $crate::{QueueConfig, SubscriptionConfig, TopicConfig, TopicSpec};

        const MDC: &str = "MaxDeliveryCountExceeded";

        #[test]
        fn dead_letters_move_to_the_destination_with_reason_and_source() {
            let _end = $crate::testing::TestGuard;
            let s: Arc<dyn Storage> = $storage;
            let queues = [
                forwarding("work", Some("Poison"), 1),
                forwarding("poison", None, 10),
            ];
            let e = open(&s, &queues, &[]).unwrap();
            dead_letter_all(&e, s.as_ref(), "work", &["a", "b"]);
            forward(&e, s.as_ref());
            let work = e.resolve("work").unwrap().queue;
            assert_eq!(work.stats().dead_lettered, 0, "nothing stays behind");
            assert_eq!(work.stats().bytes, 0);
            let got = received(&e, "poison", 10);
            let want = |p: &str| (p.to_string(), Some(MDC.to_string()), "work".to_string());
            assert_eq!(got, vec![want("a"), want("b")]);
            // their bodies left the source in the move
            for seq in [1, 2] {
                let body = $crate::keys::body_key(1, seq);
                assert!(s.get_many($crate::storage::Cf::Body, &[body]).unwrap()[0].is_none());
            }
        }

        #[test]
        fn a_restart_forwards_what_the_dead_letter_queue_held() {
            let _end = $crate::testing::TestGuard;
            let s: Arc<dyn Storage> = $storage;
            {
                let before = [forwarding("work", None, 1), forwarding("poison", None, 10)];
                let e = open(&s, &before, &[]).unwrap();
                dead_letter_all(&e, s.as_ref(), "work", &["a", "b", "c"]);
            }
            let after = [
                forwarding("work", Some("poison"), 1),
                forwarding("poison", None, 10),
            ];
            let e = open(&s, &after, &[]).unwrap();
            assert_eq!(e.resolve("work").unwrap().queue.stats().dead_lettered, 3);
            forward(&e, s.as_ref());
            let got: Vec<String> = received(&e, "poison", 10)
                .into_iter()
                .map(|g| g.0)
                .collect();
            assert_eq!(got, vec!["a", "b", "c"]);
            drop(e);
            // and the move is durable: nothing comes back in either place
            let e = open(&s, &after, &[]).unwrap();
            forward(&e, s.as_ref());
            assert!(received(&e, "work/$DeadLetterQueue", 10).is_empty());
            assert!(received(&e, "poison", 10).is_empty());
        }

        #[test]
        fn more_than_a_batch_moves_in_order() {
            let _end = $crate::testing::TestGuard;
            let s: Arc<dyn Storage> = $storage;
            let queues = [
                forwarding("work", Some("poison"), 1),
                forwarding("poison", None, 10),
            ];
            let e = open(&s, &queues, &[]).unwrap();
            let texts: Vec<String> = (0..600).map(|i| format!("m{i:03}")).collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            dead_letter_all(&e, s.as_ref(), "work", &refs);
            forward(&e, s.as_ref());
            let got: Vec<String> = received(&e, "poison", 1000)
                .into_iter()
                .map(|g| g.0)
                .collect();
            assert_eq!(got, texts);
        }

        #[test]
        fn a_destination_without_room_leaves_them_in_the_dead_letter_queue() {
            let _end = $crate::testing::TestGuard;
            let s: Arc<dyn Storage> = $storage;
            let tiny = (
                "poison".to_string(),
                QueueConfig {
                    max_size_bytes: 4,
                    ..QueueConfig::default()
                },
            );
            let queues = [forwarding("work", Some("poison"), 1), tiny];
            let e = open(&s, &queues, &[]).unwrap();
            dead_letter_all(&e, s.as_ref(), "work", &["too big for it"]);
            forward(&e, s.as_ref());
            forward(&e, s.as_ref());
            assert!(received(&e, "poison", 10).is_empty());
            let got = received(&e, "work/$DeadLetterQueue", 10);
            assert_eq!(got.len(), 1, "still receivable where it was dead-lettered");
            assert_eq!(got[0].0, "too big for it");
            assert_eq!(got[0].2, "", "never forwarded, so no source");
        }

        #[test]
        fn a_subscription_forwards_dead_letters_to_a_topic() {
            let _end = $crate::testing::TestGuard;
            let s: Arc<dyn Storage> = $storage;
            let failing = SubscriptionConfig {
                queue: QueueConfig {
                    max_delivery_count: 1,
                    forward_dead_lettered_to: Some("audit".into()),
                    ..QueueConfig::default()
                },
                ..SubscriptionConfig::default()
            };
            let orders = TopicSpec {
                name: "orders".into(),
                config: TopicConfig::default(),
                subscriptions: vec![("billing".to_string(), failing)],
            };
            let e = open(&s, &[], &[orders, audit_topic()]).unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            e.topic("orders").unwrap().enqueue_each(
                vec![vec![
                    $crate::testing::topics::text("color=red"),
                    $crate::testing::topics::text("color=blue"),
                ]],
                Box::new(move |r| tx.send(r).unwrap()),
            );
            rx.recv().unwrap().unwrap();
            let billing = e.resolve("orders/Subscriptions/billing").unwrap().queue;
            let (c, r) = $crate::testing::consumer(
                &billing,
                $crate::queue::Lane::Main,
                $crate::queue::ReceiveMode::PeekLock,
                10,
            );
            assert_eq!(r.take().len(), 2);
            c.close();
            barrier(s.as_ref());
            forward(&e, s.as_ref());
            let source = "orders/Subscriptions/billing".to_string();
            let everything = received(&e, "audit/Subscriptions/everything", 10);
            assert_eq!(
                everything,
                vec![
                    ("color=red".into(), Some(MDC.into()), source.clone()),
                    ("color=blue".into(), Some(MDC.into()), source.clone()),
                ]
            );
            let red = received(&e, "audit/Subscriptions/red", 10);
            assert_eq!(red, vec![("color=red".into(), Some(MDC.into()), source)]);
            // the failing subscription's shared bodies went with their last references
            assert_eq!(e.topic("orders").unwrap().stored_bodies(), 0);
        }

        #[test]
        fn forwarding_dead_letters_where_it_cannot_work_is_refused_at_start() {
            let _end = $crate::testing::TestGuard;
            let s: Arc<dyn Storage> = $storage;
            let refused =
                |queues: &[(String, QueueConfig)]| match open(&s, queues, &[audit_topic()]) {
                    Ok(_) => panic!("accepted"),
                    Err(e) => e.to_string(),
                };
            let why = refused(&[forwarding("work", Some("WORK"), 1)]);
            assert!(why.contains("itself"), "{why}");
            let why = refused(&[forwarding("work", Some("audit/subscriptions/red"), 1)]);
            assert!(why.contains("a subscription"), "{why}");
            let why = refused(&[forwarding("work", Some("nowhere"), 1)]);
            assert!(why.contains("not a queue or topic"), "{why}");
            // nothing dead-lettered may come back where it was dead-lettered
            let why = refused(&[forwarding("a", Some("b"), 1), forwarding("b", Some("A"), 1)]);
            assert!(why.contains("circle: a -> b -> a"), "{why}");
            let back = (
                "b".to_string(),
                QueueConfig {
                    forward_to: Some("a".into()),
                    ..QueueConfig::default()
                },
            );
            let why = refused(&[forwarding("a", Some("b"), 1), back]);
            assert!(why.contains("circle: a -> a"), "{why}");
            let own_topic = SubscriptionConfig {
                queue: QueueConfig {
                    forward_dead_lettered_to: Some("audit".into()),
                    ..QueueConfig::default()
                },
                ..SubscriptionConfig::default()
            };
            let mut audit = audit_topic();
            audit.subscriptions.push(("loop".to_string(), own_topic));
            let why = match open(&s, &[], &[audit]) {
                Ok(_) => panic!("accepted"),
                Err(e) => e.to_string(),
            };
            assert!(
                why.contains("audit/subscriptions/loop -> audit/subscriptions/loop"),
                "{why}"
            );
            // a chain that ends is fine
            let chain = [
                forwarding("a", Some("b"), 1),
                forwarding("b", Some("c"), 1),
                forwarding("c", None, 1),
            ];
            open(&s, &chain, &[]).expect("a chain of dead-letter forwards");
        }
    };
}
