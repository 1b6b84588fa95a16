//! The topic test suite: fan-out stored once, rules, shared bodies across restarts. Run for
//! every storage by [`topic_suite!`](crate::topic_suite).

use std::sync::Arc;

use bytes::Bytes;
pub use ferrobus_filter as filter;
use ferrobus_filter::{Filter, Parameters, PropertyBag, Rule};

use crate::keys;
use crate::storage::{Cf, Storage};
use crate::topic::{MessageView, SubscriptionConfig, TopicConfig, TopicSpec};
use crate::{Entities, NewMessage, StoreError};

/// Test messages are `key=value;key=value` text; the view shows them as user properties.
pub fn text_view() -> MessageView {
    Arc::new(|payload: &Bytes| {
        let mut bag = PropertyBag::new();
        for pair in String::from_utf8_lossy(payload).split(';') {
            if let Some((k, v)) = pair.split_once('=') {
                bag.set_user(k, v.into());
            }
        }
        Box::new(bag)
    })
}

/// Test copies made by actions: the payload with `;RuleName=<rule>` and `;k=v` for each string
/// a user property is set to appended.
pub fn text_rewrite() -> crate::Rewrite {
    Arc::new(|payload: &Bytes, rule: &str, changes: &[filter::Change]| {
        let mut s = String::from_utf8_lossy(payload).into_owned();
        s.push_str(&format!(";RuleName={rule}"));
        for c in changes {
            if let filter::Change::Set(filter::Target::User(k), filter::Value::String(v)) = c {
                s.push_str(&format!(";{k}={v}"));
            }
        }
        Ok(Bytes::from(s))
    })
}

/// A subscription whose one rule has this SQL filter.
pub fn sql_sub(name: &str, sql: &str) -> (String, SubscriptionConfig) {
    let rule = Rule {
        name: "r".into(),
        filter: Filter::sql(sql, &Parameters::default()).expect("valid SQL"),
        action: None,
    };
    (
        name.to_string(),
        SubscriptionConfig {
            rules: vec![rule],
            ..SubscriptionConfig::default()
        },
    )
}

/// Topic `t` with subscriptions `all` (default rule), `red` (`color = 'red'`) and `none`
/// (false filter), over `storage`.
pub fn open_topic(storage: &Arc<dyn Storage>, config: TopicConfig) -> Entities {
    let spec = TopicSpec {
        name: "t".into(),
        config,
        subscriptions: vec![
            ("all".to_string(), SubscriptionConfig::default()),
            sql_sub("red", "color = 'red'"),
            sql_sub("none", "1=0"),
        ],
    };
    open_spec(storage, spec)
}

/// Opens one topic as declared.
pub fn open_spec(storage: &Arc<dyn Storage>, spec: TopicSpec) -> Entities {
    Entities::open_all(storage.clone(), &[], &[spec], text_view(), text_rewrite()).expect("open")
}

/// Publishes each message in its own group; returns each group's outcome.
pub fn publish(e: &Entities, items: Vec<NewMessage>) -> Vec<Result<Vec<u64>, StoreError>> {
    let (tx, rx) = std::sync::mpsc::channel();
    e.topic("t").expect("topic t").enqueue_each(
        items.into_iter().map(|m| vec![m]).collect(),
        Box::new(move |r| tx.send(r).unwrap()),
    );
    rx.recv().unwrap().expect("the write succeeds")
}

/// A message of this text.
pub fn text(p: &str) -> NewMessage {
    NewMessage::new(Bytes::copy_from_slice(p.as_bytes()))
}

/// Publishes plain messages; returns their topic sequence numbers.
pub fn publish_text(e: &Entities, payloads: &[&str]) -> Vec<u64> {
    publish(e, payloads.iter().map(|p| text(p)).collect())
        .into_iter()
        .flat_map(|r| r.expect("accepted"))
        .collect()
}

/// Whether the topic's body with this sequence number is stored.
pub fn body_stored(storage: &dyn Storage, topic_id: u64, seq: u64) -> bool {
    storage
        .get_many(Cf::Body, &[keys::body_key(topic_id, seq)])
        .expect("read")[0]
        .is_some()
}

/// Cancels scheduled messages of topic `t` and waits for the outcome.
pub fn cancel(e: &Entities, seqs: &[u64]) -> Result<(), StoreError> {
    let (tx, rx) = std::sync::mpsc::channel();
    e.topic("t")
        .expect("topic t")
        .cancel_scheduled(seqs, Box::new(move |r| tx.send(r).unwrap()));
    rx.recv().unwrap()
}

/// Instantiates the topic suite; `$storage` makes a fresh `Arc<dyn Storage>`.
#[macro_export]
macro_rules! topic_suite {
    ($storage:expr) => {
        use std::sync::Arc;
        use $crate::queue::*;
        use $crate::storage::Storage;
        use $crate::testing::topics::*;
        use $crate::testing::{barrier, sync_settle, Recorder};
        use $crate::{NewMessage, QueueConfig, StoreError, TopicConfig, TopicSpec};

        type Taken = (ConsumerHandle, Arc<Recorder>, Vec<(u64, String)>);

        /// What a new peek-lock consumer of `path` gets: (sequence number, payload).
        fn take(e: &$crate::Entities, path: &str, credit: u32) -> Taken {
            let q = e.resolve(path).expect("subscription");
            let r = Arc::new(Recorder::default());
            let c = q
                .queue
                .add_consumer(q.lane, ReceiveMode::PeekLock, r.clone());
            c.flow(0, credit, false);
            let got = r
                .deliveries
                .lock()
                .unwrap()
                .iter()
                .map(|d| {
                    let p = String::from_utf8_lossy(&d.message.payload).into_owned();
                    (d.message.seq, p)
                })
                .collect();
            (c, r, got)
        }

        fn complete_all(c: &ConsumerHandle, r: &Recorder) {
            for d in r.take() {
                sync_settle(c, &d, Outcome::Complete).unwrap();
            }
        }

        #[test]
        fn each_subscription_gets_what_its_rules_select_with_its_own_sequence_numbers() {
            let _end = $crate::testing::TestGuard;
            let s: Arc<dyn Storage> = $storage;
            let e = open_topic(&s, TopicConfig::default());
            let seqs = publish_text(
                &e,
                &["color=red;n=1", "color=blue;n=2", "color=red;n=3", "n=4"],
            );
            assert_eq!(seqs, vec![1, 2, 3, 4]);
            let (_a, _, all) = take(&e, "t/Subscriptions/all", 10);
            let (_b, _, red) = take(&e, "T/subscriptions/RED", 10);
            let (_c, _, none) = take(&e, "t/Subscriptions/none", 10);
            let all_seqs: Vec<u64> = all.iter().map(|(s, _)| *s).collect();
            assert_eq!(all_seqs, vec![1, 2, 3, 4]);
            assert_eq!(
                red,
                vec![
                    (1, "color=red;n=1".to_string()),
                    (2, "color=red;n=3".to_string())
                ]
            );
            assert!(none.is_empty());
            // one body per message, whatever the number of copies
            assert_eq!(e.topic("t").unwrap().stored_bodies(), 4);
        }

        #[test]
        fn the_body_goes_with_its_last_reference_and_not_before() {
            let _end = $crate::testing::TestGuard;
            let s: Arc<dyn Storage> = $storage;
            let e = open_topic(&s, TopicConfig::default());
            publish_text(&e, &["color=red"]);
            let topic_id = 1; // the first entity named
            let (a, ra, _) = take(&e, "t/Subscriptions/all", 10);
            complete_all(&a, &ra);
            barrier(s.as_ref());
            assert!(
                body_stored(s.as_ref(), topic_id, 1),
                "deleted while 'red' holds it"
            );
            let (b, rb, got) = take(&e, "t/Subscriptions/red", 10);
            assert_eq!(got.len(), 1);
            complete_all(&b, &rb);
            barrier(s.as_ref());
            assert!(
                !body_stored(s.as_ref(), topic_id, 1),
                "the last reference is gone"
            );
            assert_eq!(e.topic("t").unwrap().stored_bodies(), 0);
        }

        #[test]
        fn shared_bodies_are_counted_again_after_a_restart() {
            let _end = $crate::testing::TestGuard;
            let s: Arc<dyn Storage> = $storage;
            let e = open_topic(&s, TopicConfig::default());
            publish_text(&e, &["color=red;n=1", "color=red;n=2"]);
            let (a, ra, _) = take(&e, "t/Subscriptions/all", 1);
            complete_all(&a, &ra);
            let (_locked, _, _) = take(&e, "t/Subscriptions/all", 1);
            barrier(s.as_ref());
            // a crash: the old entities are abandoned, a new broker opens the same storage
            let _crashed = (a, _locked, e);
            let e2 = open_topic(&s, TopicConfig::default());
            assert_eq!(e2.topic("t").unwrap().stored_bodies(), 2);
            let (_held, _, all) = take(&e2, "t/Subscriptions/all", 10);
            assert_eq!(all, vec![(2, "color=red;n=2".to_string())]);
            let (b, rb, red) = take(&e2, "t/Subscriptions/red", 10);
            assert_eq!(red.len(), 2);
            complete_all(&b, &rb);
            barrier(s.as_ref());
            assert!(
                !body_stored(s.as_ref(), 1, 1),
                "message 1 has no reference left"
            );
            assert!(body_stored(s.as_ref(), 1, 2), "'all' still holds message 2");
            // sequence numbers continue in the topic
            assert_eq!(publish_text(&e2, &["color=red"]), vec![3]);
        }

        #[test]
        fn a_message_no_subscription_selects_is_accepted_and_not_stored() {
            let _end = $crate::testing::TestGuard;
            let s: Arc<dyn Storage> = $storage;
            let e = open_spec(
                &s,
                TopicSpec {
                    name: "t".into(),
                    config: TopicConfig::default(),
                    subscriptions: vec![sql_sub("red", "color = 'red'")],
                },
            );
            assert_eq!(publish_text(&e, &["color=blue"]), vec![1]);
            barrier(s.as_ref());
            assert!(!body_stored(s.as_ref(), 1, 1));
            assert_eq!(e.topic("t").unwrap().stored_bodies(), 0);
        }

        #[test]
        fn scheduled_messages_are_cancelled_by_topic_sequence_number_everywhere() {
            let _end = $crate::testing::TestGuard;
            let s: Arc<dyn Storage> = $storage;
            let e = open_topic(&s, TopicConfig::default());
            let later = $crate::now_ms() + 3_600_000;
            let mk = |p: &str| NewMessage {
                scheduled_ms: Some(later),
                ..text(p)
            };
            let out = publish(&e, vec![mk("color=red;n=1"), mk("color=red;n=2")]);
            assert_eq!(out[0].as_ref().unwrap(), &vec![1]);
            let all = e.resolve("t/Subscriptions/all").unwrap().queue;
            let red = e.resolve("t/Subscriptions/red").unwrap().queue;
            assert_eq!((all.stats().scheduled, red.stats().scheduled), (2, 2));
            cancel(&e, &[1]).unwrap();
            assert_eq!((all.stats().scheduled, red.stats().scheduled), (1, 1));
            barrier(s.as_ref());
            assert!(!body_stored(s.as_ref(), 1, 1));
            // an unknown number cancels nothing
            assert!(matches!(cancel(&e, &[2, 99]), Err(StoreError::NotFound(_))));
            assert_eq!(all.stats().scheduled, 1);
            // after a restart message 2 is still known by its topic sequence number
            let _crashed = (all, red, e);
            let e2 = open_topic(&s, TopicConfig::default());
            cancel(&e2, &[2]).unwrap();
            barrier(s.as_ref());
            assert!(!body_stored(s.as_ref(), 1, 2));
        }

        #[test]
        fn the_topic_drops_duplicates_within_its_window() {
            let _end = $crate::testing::TestGuard;
            let s: Arc<dyn Storage> = $storage;
            let e = open_topic(
                &s,
                TopicConfig {
                    duplicate_detection_ms: 60_000,
                    ..TopicConfig::default()
                },
            );
            let mk = |id: &[u8]| NewMessage {
                message_id: Some(id.to_vec()),
                ..text("color=red")
            };
            let out = publish(&e, vec![mk(b"a"), mk(b"a"), mk(b"b")]);
            let seqs: Vec<Vec<u64>> = out.into_iter().map(|r| r.unwrap()).collect();
            assert_eq!(seqs, vec![vec![1], vec![], vec![2]]);
            let (_c, _, red) = take(&e, "t/Subscriptions/red", 10);
            assert_eq!(red.len(), 2);
        }

        #[test]
        fn a_full_subscription_refuses_the_message_for_every_subscription() {
            let _end = $crate::testing::TestGuard;
            let s: Arc<dyn Storage> = $storage;
            let e = open_topic(
                &s,
                TopicConfig {
                    max_size_bytes: 20,
                    ..TopicConfig::default()
                },
            );
            let out = publish(
                &e,
                vec![text("color=red;n=1"), text("color=red;n=2"), text("n=3")],
            );
            assert_eq!(out[0].as_ref().unwrap(), &vec![1]);
            // neither 'all' nor 'red' has room for the second: it reaches neither
            assert!(matches!(out[1], Err(StoreError::Full(_))), "{:?}", out[1]);
            // the third, smaller, goes to 'all' only, which still has room for it
            assert_eq!(out[2].as_ref().unwrap(), &vec![2]);
            let (_c, _, red) = take(&e, "t/Subscriptions/red", 10);
            assert_eq!(red, vec![(1, "color=red;n=1".to_string())]);
            let (_d, _, all) = take(&e, "t/Subscriptions/all", 10);
            assert_eq!(all.len(), 2);
        }

        #[test]
        fn a_rule_that_cannot_be_evaluated_dead_letters_the_copy() {
            let _end = $crate::testing::TestGuard;
            let s: Arc<dyn Storage> = $storage;
            let e = open_spec(
                &s,
                TopicSpec {
                    name: "t".into(),
                    config: TopicConfig::default(),
                    subscriptions: vec![sql_sub("math", "color * 2 = 4")],
                },
            );
            publish_text(&e, &["color=red"]);
            let (_c, r, got) = take(&e, "t/Subscriptions/math/$DeadLetterQueue", 10);
            assert_eq!(got.len(), 1);
            let d = r.take();
            assert_eq!(
                d[0].dead_letter_reason.as_deref(),
                Some($crate::topic::FILTER_EVALUATION_FAILED)
            );
            let sub = e.resolve("t/Subscriptions/math").unwrap().queue;
            assert_eq!(sub.stats().active, 0);
        }

        #[test]
        fn runtime_rules_are_kept_until_the_configuration_declares_other_rules() {
            let _end = $crate::testing::TestGuard;
            let s: Arc<dyn Storage> = $storage;
            let names = |e: &$crate::Entities| -> Vec<String> {
                let (_, sub) = e.subscription("t/Subscriptions/red").unwrap();
                sub.rules().iter().map(|r| r.name.clone()).collect()
            };
            let e = open_topic(&s, TopicConfig::default());
            let (_, sub) = e.subscription("t/Subscriptions/red").unwrap();
            let extra = filter::Rule {
                name: "Blue".into(),
                filter: filter::Filter::sql("color = 'blue'", &filter::Parameters::default())
                    .unwrap(),
                action: None,
            };
            let (tx, rx) = std::sync::mpsc::channel();
            let tx2 = tx.clone();
            sub.add_rule(
                s.as_ref(),
                extra.clone(),
                Box::new(move |r| tx.send(r).unwrap()),
            );
            rx.recv().unwrap().unwrap();
            sub.add_rule(s.as_ref(), extra, Box::new(move |r| tx2.send(r).unwrap()));
            assert!(matches!(
                rx.recv().unwrap(),
                Err(StoreError::EntityExists(_))
            ));
            assert_eq!(publish_text(&e, &["color=blue"]), vec![1]);
            let (_c, _, got) = take(&e, "t/Subscriptions/red", 10);
            assert_eq!(got.len(), 1, "the new rule selects at once");
            // the same configuration: the runtime rule stays
            let _old = e;
            let e2 = open_topic(&s, TopicConfig::default());
            assert_eq!(names(&e2), vec!["Blue".to_string(), "r".to_string()]);
            let (_, sub2) = e2.subscription("t/Subscriptions/red").unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            sub2.remove_rule(s.as_ref(), "blue", Box::new(move |r| tx.send(r).unwrap()));
            rx.recv().unwrap().unwrap();
            assert_eq!(names(&e2), vec!["r".to_string()]);
            let (tx, rx) = std::sync::mpsc::channel();
            sub2.remove_rule(s.as_ref(), "blue", Box::new(move |r| tx.send(r).unwrap()));
            assert!(matches!(
                rx.recv().unwrap(),
                Err(StoreError::EntityNotFound(_))
            ));
            // another configuration: its rules replace whatever was stored
            let _old2 = e2;
            let e3 = open_spec(
                &s,
                TopicSpec {
                    name: "t".into(),
                    config: TopicConfig::default(),
                    subscriptions: vec![
                        ("all".to_string(), $crate::SubscriptionConfig::default()),
                        sql_sub("red", "color = 'crimson'"),
                        sql_sub("none", "1=0"),
                    ],
                },
            );
            let (_, sub3) = e3.subscription("t/Subscriptions/red").unwrap();
            let rules = sub3.rules();
            assert_eq!(rules.len(), 1);
            match &rules[0].filter {
                filter::Filter::Sql(f) => assert_eq!(f.expression(), "color = 'crimson'"),
                other => panic!("{other:?}"),
            }
        }

        #[test]
        fn each_matching_rule_with_an_action_makes_its_own_changed_copy() {
            let _end = $crate::testing::TestGuard;
            let s: Arc<dyn Storage> = $storage;
            let rule = |name: &str, sql: &str, action: Option<&str>| filter::Rule {
                name: name.into(),
                filter: filter::Filter::sql(sql, &filter::Parameters::default()).unwrap(),
                action: action
                    .map(|a| filter::SqlAction::parse(a, &filter::Parameters::default()).unwrap()),
            };
            let sub = $crate::SubscriptionConfig {
                rules: vec![
                    rule("plain", "color = 'red'", None),
                    rule("tag", "color = 'red'", Some("SET tag = 'hot'")),
                    rule("mark", "1=1", Some("SET mark = 'all'")),
                ],
                ..$crate::SubscriptionConfig::default()
            };
            let spec = TopicSpec {
                name: "t".into(),
                config: TopicConfig::default(),
                subscriptions: vec![("acts".to_string(), sub)],
            };
            let e = open_spec(&s, spec.clone());
            publish_text(&e, &["color=red", "color=blue"]);
            let (c, r, got) = take(&e, "t/Subscriptions/acts", 10);
            let mut bodies: Vec<String> = got.iter().map(|(_, b)| b.clone()).collect();
            bodies.sort();
            assert_eq!(
                bodies,
                vec![
                    "color=blue;RuleName=mark;mark=all".to_string(),
                    "color=red".to_string(),
                    "color=red;RuleName=mark;mark=all".to_string(),
                    "color=red;RuleName=tag;tag=hot".to_string(),
                ]
            );
            // the changed copies' own bodies survive a restart, and go when completed
            drop(r);
            let _crashed = (c, e);
            let e2 = open_spec(&s, spec);
            let (c2, r2, again) = take(&e2, "t/Subscriptions/acts", 10);
            assert_eq!(again.len(), 4);
            complete_all(&c2, &r2);
            barrier(s.as_ref());
            assert_eq!(e2.topic("t").unwrap().stored_bodies(), 0);
            let mut left = 0;
            s.for_each($crate::storage::Cf::Body, &[], &[0xff; 17], &mut |_, _| {
                left += 1;
                Ok(())
            })
            .unwrap();
            assert_eq!(left, 0, "a body outlived its copies");
        }

        #[test]
        fn a_subscription_forwards_its_copies_to_a_queue_in_the_same_batch() {
            let _end = $crate::testing::TestGuard;
            let s: Arc<dyn Storage> = $storage;
            let fwd = $crate::SubscriptionConfig {
                forward_to: Some("Inbox".into()),
                ..$crate::SubscriptionConfig::default()
            };
            let spec = TopicSpec {
                name: "t".into(),
                config: TopicConfig::default(),
                subscriptions: vec![("fwd".to_string(), fwd), sql_sub("red", "color = 'red'")],
            };
            let queues = vec![("inbox".to_string(), QueueConfig::default())];
            let open = || {
                $crate::Entities::open_all(
                    s.clone(),
                    &queues,
                    std::slice::from_ref(&spec),
                    text_view(),
                    text_rewrite(),
                )
                .unwrap()
            };
            let e = open();
            publish_text(&e, &["color=red", "color=blue"]);
            let (_f, _, fwd_got) = take(&e, "t/Subscriptions/fwd", 10);
            assert!(
                fwd_got.is_empty(),
                "a forwarding subscription holds nothing"
            );
            let (c, r, inbox) = take(&e, "inbox", 10);
            assert_eq!(
                inbox,
                vec![(1, "color=red".to_string()), (2, "color=blue".to_string())]
            );
            // the forwarded copies own their bodies: completing them leaves the shared one to 'red'
            complete_all(&c, &r);
            barrier(s.as_ref());
            assert!(body_stored(s.as_ref(), 2, 1), "'red' still holds message 1");
            let (c2, r2, red) = take(&e, "t/Subscriptions/red", 10);
            assert_eq!(red.len(), 1);
            complete_all(&c2, &r2);
            barrier(s.as_ref());
            assert_eq!(e.topic("t").unwrap().stored_bodies(), 0);
        }

        #[test]
        fn a_subscription_forwards_its_copies_to_another_topic() {
            let _end = $crate::testing::TestGuard;
            let s: Arc<dyn Storage> = $storage;
            let to = |dest: &str| $crate::SubscriptionConfig {
                forward_to: Some(dest.into()),
                ..$crate::SubscriptionConfig::default()
            };
            // declared before the topic it forwards into: topics open in dependency order
            let first = TopicSpec {
                name: "t".into(),
                config: TopicConfig::default(),
                subscriptions: vec![
                    ("fwd".to_string(), to("U")),
                    ("keep".to_string(), $crate::SubscriptionConfig::default()),
                ],
            };
            let second = TopicSpec {
                name: "u".into(),
                config: TopicConfig {
                    max_size_bytes: 64,
                    ..TopicConfig::default()
                },
                subscriptions: vec![
                    ("x".to_string(), $crate::SubscriptionConfig::default()),
                    sql_sub("y", "color = 'red'"),
                ],
            };
            let e = $crate::Entities::open_all(
                s.clone(),
                &[],
                &[first, second],
                text_view(),
                text_rewrite(),
            )
            .unwrap();
            publish_text(&e, &["color=red", "color=blue"]);
            let texts = |got: Vec<(u64, String)>| got.into_iter().map(|g| g.1).collect::<Vec<_>>();
            let (_x, _, x) = take(&e, "u/Subscriptions/x", 10);
            assert_eq!(texts(x), vec!["color=red", "color=blue"]);
            let (_y, _, y) = take(&e, "u/Subscriptions/y", 10);
            assert_eq!(texts(y), vec!["color=red"]);
            let (_k, _, keep) = take(&e, "t/Subscriptions/keep", 10);
            assert_eq!(texts(keep), vec!["color=red", "color=blue"]);
            let (f, _, fwd) = take(&e, "t/Subscriptions/fwd", 10);
            assert!(fwd.is_empty(), "a forwarding subscription holds nothing");
            drop(f);
            assert_eq!(e.topic("u").unwrap().stats().published, 2);
            // 'u' is full now (64 bytes a subscription): the copy stays where it was
            let big = "color=green;".repeat(6);
            publish_text(&e, &[big.as_str()]);
            let (_f2, _, kept) = take(&e, "t/Subscriptions/fwd", 10);
            assert_eq!(texts(kept), vec![big.clone()]);
            assert_eq!(e.topic("u").unwrap().stats().published, 2);
        }

        #[test]
        fn cancelling_reaches_forwarded_copies_before_and_after_a_restart() {
            let _end = $crate::testing::TestGuard;
            let s: Arc<dyn Storage> = $storage;
            let to = |dest: &str| $crate::SubscriptionConfig {
                forward_to: Some(dest.into()),
                ..$crate::SubscriptionConfig::default()
            };
            let specs = [
                TopicSpec {
                    name: "t".into(),
                    config: TopicConfig::default(),
                    subscriptions: vec![
                        ("to-queue".to_string(), to("inbox")),
                        ("to-topic".to_string(), to("u")),
                        ("keep".to_string(), $crate::SubscriptionConfig::default()),
                    ],
                },
                TopicSpec {
                    name: "u".into(),
                    config: TopicConfig::default(),
                    subscriptions: vec![("x".to_string(), $crate::SubscriptionConfig::default())],
                },
            ];
            let queues = vec![("inbox".to_string(), QueueConfig::default())];
            let open = || {
                $crate::Entities::open_all(s.clone(), &queues, &specs, text_view(), text_rewrite())
                    .unwrap()
            };
            let waiting = |e: &$crate::Entities| {
                ["inbox", "u/Subscriptions/x", "t/Subscriptions/keep"]
                    .map(|p| e.resolve(p).unwrap().queue.stats().scheduled)
            };
            let e = open();
            let later = $crate::now_ms() + 3_600_000;
            let mk = |p: &str| NewMessage {
                scheduled_ms: Some(later),
                ..text(p)
            };
            let out = publish(&e, vec![mk("n=1"), mk("n=2")]);
            assert_eq!(
                (out[0].clone().unwrap(), out[1].clone().unwrap()),
                (vec![1], vec![2])
            );
            assert_eq!(waiting(&e), [2, 2, 2]);
            let id = s
                .get_many($crate::storage::Cf::Meta, &[$crate::keys::entity_key("t")])
                .unwrap()[0]
                .clone()
                .expect("t has an id");
            let (lo, hi) = $crate::keys::forwarded_schedule_range(u64::from_be_bytes(
                id.as_ref().try_into().unwrap(),
            ));
            let records = || s.scan($crate::storage::Cf::Meta, &lo, &hi).unwrap().len();
            assert_eq!(
                records(),
                2,
                "each scheduled message records its forwarded copies"
            );
            cancel(&e, &[1]).unwrap();
            assert_eq!(waiting(&e), [1, 1, 1]);
            let _crashed = e;
            let e = open();
            assert_eq!(waiting(&e), [1, 1, 1]);
            cancel(&e, &[2]).unwrap();
            assert_eq!(
                waiting(&e),
                [0, 0, 0],
                "every copy went, forwarded ones too"
            );
            assert!(matches!(cancel(&e, &[2]), Err(StoreError::NotFound(_))));
            barrier(s.as_ref());
            assert_eq!(
                records(),
                0,
                "the records of cancelled messages are deleted"
            );
            // and those of messages whose time came
            publish(&e, vec![mk("n=3")]);
            assert_eq!(records(), 1);
            e.topic("t").unwrap().sweep(later + 1);
            barrier(s.as_ref());
            assert_eq!(records(), 0);
        }

        #[test]
        fn forwarding_through_topics_that_cannot_end_is_refused_at_start() {
            let _end = $crate::testing::TestGuard;
            let s: Arc<dyn Storage> = $storage;
            let topic = |name: &str, to: Option<&str>| TopicSpec {
                name: name.into(),
                config: TopicConfig::default(),
                subscriptions: vec![(
                    "s".to_string(),
                    $crate::SubscriptionConfig {
                        forward_to: to.map(str::to_string),
                        ..$crate::SubscriptionConfig::default()
                    },
                )],
            };
            let q = |name: &str, to: Option<&str>| {
                (
                    name.to_string(),
                    QueueConfig {
                        forward_to: to.map(str::to_string),
                        ..QueueConfig::default()
                    },
                )
            };
            let refused = |queues: &[(String, QueueConfig)], topics: &[TopicSpec]| -> String {
                match $crate::Entities::open_all(
                    s.clone(),
                    queues,
                    topics,
                    text_view(),
                    text_rewrite(),
                ) {
                    Ok(_) => panic!("accepted"),
                    Err(e) => e.to_string(),
                }
            };
            let why = refused(&[], &[topic("t", Some("t"))]);
            assert!(
                why.contains("circle") && why.contains("t -> t/subscriptions/s -> t"),
                "{why}"
            );
            let why = refused(&[], &[topic("t", Some("u")), topic("u", Some("t"))]);
            assert!(why.contains("circle"), "{why}");
            let why = refused(&[q("a", Some("t"))], &[topic("t", Some("a"))]);
            assert!(why.contains("circle"), "{why}");
            // a -> b -> topic t -> its subscription -> c -> d -> e: five forwards
            let long = [
                q("a", Some("b")),
                q("b", Some("t")),
                q("c", Some("d")),
                q("d", Some("e")),
                q("e", None),
            ];
            let why = refused(&long, &[topic("t", Some("c"))]);
            assert!(why.contains("longer than 4 hops"), "{why}");
            let why = refused(&[], &[topic("t", Some("nowhere"))]);
            assert!(why.contains("not a queue or topic"), "{why}");
            // four forwards are fine
            let ok = [
                q("a", Some("b")),
                q("b", Some("t")),
                q("c", Some("d")),
                q("d", None),
            ];
            $crate::Entities::open_all(
                s.clone(),
                &ok,
                &[topic("t", Some("c"))],
                text_view(),
                text_rewrite(),
            )
            .expect("four hops");
        }

        #[test]
        fn forwarding_that_cannot_work_is_refused_at_start() {
            let _end = $crate::testing::TestGuard;
            let s: Arc<dyn Storage> = $storage;
            let q = |name: &str, to: Option<&str>| {
                (
                    name.to_string(),
                    QueueConfig {
                        forward_to: to.map(str::to_string),
                        ..QueueConfig::default()
                    },
                )
            };
            let refused = |queues: Vec<(String, QueueConfig)>| -> String {
                match $crate::Entities::open_all(
                    s.clone(),
                    &queues,
                    &[],
                    text_view(),
                    text_rewrite(),
                ) {
                    Ok(_) => panic!("accepted"),
                    Err(e) => e.to_string(),
                }
            };
            assert!(refused(vec![q("a", Some("a"))]).contains("circle"));
            assert!(refused(vec![q("a", Some("b")), q("b", Some("a"))]).contains("a -> b -> a"));
            assert!(refused(vec![q("a", Some("nowhere"))]).contains("not a queue or topic"));
            let long = vec![
                q("a", Some("b")),
                q("b", Some("c")),
                q("c", Some("d")),
                q("d", Some("e")),
                q("e", Some("f")),
                q("f", None),
            ];
            assert!(refused(long).contains("longer than 4 hops"));
            // four hops are fine, and a sender to the start lands at the end
            let ok = vec![
                q("a", Some("b")),
                q("b", Some("c")),
                q("c", Some("d")),
                q("d", Some("E")),
                q("e", None),
            ];
            let e = $crate::Entities::open_all(s.clone(), &ok, &[], text_view(), text_rewrite())
                .unwrap();
            match e.send_target("A") {
                Some($crate::SendTarget::Queue(end)) => assert_eq!(end.name(), "e"),
                _ => panic!("no queue at the end of the chain"),
            }
        }
    };
}
