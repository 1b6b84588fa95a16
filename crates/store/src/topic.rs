//! A topic: a message is published once and fanned out to the subscriptions whose rules
//! select it.
//!
//! The body is written once, at the topic's id and the topic's sequence number; each copy is a
//! reference in its subscription (a [`Queue`] with its own sequence numbers, lanes, locks,
//! dead-letter sub-queue and time to live) that names the shared body. Body and references go
//! in one batch, so after a crash a message is in every subscription it matched or in none;
//! the body is deleted with its last reference ([`crate::bodies`]). A message no subscription
//! selects is accepted and not stored.
//!
//! Filters run outside every lock, on a view of the message's properties that the broker
//! provides ([`MessageView`]); the store knows no AMQP.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use ferrobus_filter::Rule;

use crate::bodies::SharedBodies;
use crate::keys::rules::{decode_rule, encode_rule};
use crate::keys::{self, BodyRecord};
use crate::queue::copy::{Copy, Staged};
use crate::queue::history::History;
use crate::queue::timing;
use crate::storage::{decode_max, Batch, Cf, Storage};
use crate::{now_ms, Completion, NewMessage, Queue, QueueConfig, StoreError};

mod fanout;
mod schedule;
use fanout::{session_of, CopyKind, Fanout};
use schedule::{Place, Scheduled};

/// The reason given to copies dead-lettered because a rule could not be evaluated on them.
pub const FILTER_EVALUATION_FAILED: &str = "FilterEvaluationException";

/// How the topic's filters see a message: built by the broker from the producer's bytes.
pub type MessageView = Arc<dyn Fn(&Bytes) -> Box<dyn ferrobus_filter::Message> + Send + Sync>;

/// The copy a rule action makes of a message: the producer's bytes, the rule's name and the
/// changes its action computed, to a new encoding (the broker's; the store knows no AMQP).
pub type Rewrite =
    Arc<dyn Fn(&Bytes, &str, &[ferrobus_filter::Change]) -> Result<Bytes, String> + Send + Sync>;

/// Per-topic settings.
#[derive(Debug, Clone)]
pub struct TopicConfig {
    /// Time to live of messages that set none, and the cap on those that do; 0: none.
    pub default_ttl_ms: u64,
    /// Duplicate-detection window in milliseconds; 0: off.
    pub duplicate_detection_ms: u64,
    /// Payload bytes each subscription may hold (`MaxSizeInMegabytes`).
    pub max_size_bytes: u64,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            default_ttl_ms: 0,
            duplicate_detection_ms: 0,
            max_size_bytes: QueueConfig::default().max_size_bytes,
        }
    }
}

/// A subscription's settings.
#[derive(Debug, Clone)]
pub struct SubscriptionConfig {
    /// Lock duration, max delivery count, time to live, dead-lettering on expiration (its
    /// size limit and duplicate detection are the topic's).
    pub queue: QueueConfig,
    /// Its rules; a subscription declared without rules gets [`Rule::default_rule`].
    pub rules: Vec<Rule>,
    /// A copy whose rules fail to evaluate goes to the dead-letter sub-queue
    /// (`DeadLetteringOnFilterEvaluationExceptions`); otherwise the failing rule does not match.
    pub dead_letter_on_filter_errors: bool,
    /// The queue or topic its copies are forwarded to (`ForwardTo`), if any: they are stored
    /// at the end of that queue's own forwarding chain, or published to that topic, in the same
    /// batch as the published message.
    pub forward_to: Option<String>,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        SubscriptionConfig {
            queue: QueueConfig::default(),
            rules: vec![Rule::default_rule()],
            dead_letter_on_filter_errors: true,
            forward_to: None,
        }
    }
}

/// A topic as declared: its settings and its subscriptions.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub config: TopicConfig,
    pub subscriptions: Vec<(String, SubscriptionConfig)>,
}

/// Most rules one subscription may have (Service Bus' quota).
pub const MAX_RULES_PER_SUBSCRIPTION: usize = 2000;

/// One subscription of a topic.
pub struct Subscription {
    /// `<topic>/Subscriptions/<name>`.
    pub path: String,
    /// The subscription's messages.
    pub queue: Arc<Queue>,
    id: u64,
    /// The rules in force (replaced whole when one is added or removed), and the names of
    /// rules being added or removed whose write is not durable yet.
    rules: Mutex<(Arc<Vec<Rule>>, HashSet<String>)>,
    dead_letter_on_filter_errors: bool,
    /// Where its copies go: its own queue's index in the topic's targets, or the queue it
    /// forwards to.
    target: usize,
    /// The topic it forwards its copies to (an index into the topic's `onward`), if it does.
    onward: Option<usize>,
}

impl Subscription {
    /// Its rules, ordered by name (case-insensitively), as they are stored.
    pub fn rules(&self) -> Arc<Vec<Rule>> {
        self.rules.lock().expect("rules poisoned").0.clone()
    }

    /// Adds a rule, durably; a rule of that name (any case) is [`StoreError::EntityExists`].
    pub fn add_rule(self: &Arc<Self>, storage: &dyn Storage, rule: Rule, done: Completion<()>) {
        let key = rule.name.to_lowercase();
        {
            let mut g = self.rules.lock().expect("rules poisoned");
            let (rules, pending) = &mut *g;
            if pending.contains(&key) || rules.iter().any(|r| r.name.to_lowercase() == key) {
                drop(g);
                return done(Err(StoreError::EntityExists(format!(
                    "rule '{}' already exists in subscription '{}'",
                    rule.name, self.path
                ))));
            }
            if rules.len() + pending.len() >= MAX_RULES_PER_SUBSCRIPTION {
                drop(g);
                return done(Err(StoreError::Full(format!(
                    "subscription '{}' has {MAX_RULES_PER_SUBSCRIPTION} rules, the most it may have",
                    self.path
                ))));
            }
            pending.insert(key.clone());
        }
        let mut batch = Batch::default();
        batch.put(
            Cf::Meta,
            keys::rule_key(self.id, &rule.name),
            encode_rule(&rule),
        );
        self.change_rules(storage, batch, key, done, move |rules, key| {
            let at = rules.partition_point(|x| x.name.to_lowercase() < *key);
            rules.insert(at, rule);
        });
    }

    /// Removes a rule by name (any case), durably; none of that name is
    /// [`StoreError::EntityNotFound`].
    pub fn remove_rule(self: &Arc<Self>, storage: &dyn Storage, name: &str, done: Completion<()>) {
        let key = name.to_lowercase();
        {
            let mut g = self.rules.lock().expect("rules poisoned");
            let (rules, pending) = &mut *g;
            if pending.contains(&key) || !rules.iter().any(|r| r.name.to_lowercase() == key) {
                drop(g);
                return done(Err(StoreError::EntityNotFound(format!(
                    "no rule '{name}' in subscription '{}'",
                    self.path
                ))));
            }
            pending.insert(key.clone());
        }
        let mut batch = Batch::default();
        batch.delete(Cf::Meta, keys::rule_key(self.id, name));
        self.change_rules(storage, batch, key, done, |rules, key| {
            rules.retain(|x| x.name.to_lowercase() != *key)
        });
    }

    /// Writes a rule change; once it is durable, applies it to the rules in force and lets
    /// other changes of rule `key` in.
    fn change_rules(
        self: &Arc<Self>,
        storage: &dyn Storage,
        batch: Batch,
        key: String,
        done: Completion<()>,
        apply: impl FnOnce(&mut Vec<Rule>, &String) + Send + 'static,
    ) {
        let me = self.clone();
        storage.write(
            batch,
            Box::new(move |r| {
                let mut g = me.rules.lock().expect("rules poisoned");
                g.1.remove(&key);
                if r.is_ok() {
                    let mut next = (*g.0).clone();
                    apply(&mut next, &key);
                    g.0 = Arc::new(next);
                }
                drop(g);
                done(r)
            }),
        );
    }
}

/// The rules a subscription starts with: the stored ones, unless the configuration declares
/// other rules than it did when they were stored; then the configuration's replace them.
fn load_rules(
    storage: &dyn Storage,
    path: &str,
    id: u64,
    declared: &[Rule],
    batch: &mut Batch,
) -> Result<Vec<Rule>, StoreError> {
    let mut declared_bytes = Vec::new();
    for r in declared {
        let e = encode_rule(r);
        declared_bytes.extend_from_slice(&(e.len() as u32).to_be_bytes());
        declared_bytes.extend_from_slice(&e);
    }
    let last = storage.get_many(Cf::Meta, &[keys::declared_rules_key(id)])?;
    let (lo, hi) = keys::rules_range(id);
    let mut stored = Vec::new();
    storage.for_each(Cf::Meta, &lo, &hi, &mut |k, v| {
        stored.push((k.to_vec(), decode_rule(v)?));
        Ok(())
    })?;
    if last[0].as_deref() == Some(&declared_bytes[..]) {
        return Ok(stored.into_iter().map(|(_, r)| r).collect());
    }
    if last[0].is_some() {
        tracing::warn!(
            subscription = path,
            "the configuration declares other rules than before: they replace the stored ones (rules added at runtime are gone)"
        );
    }
    for (k, _) in stored {
        batch.delete(Cf::Meta, k);
    }
    for r in declared {
        batch.put(Cf::Meta, keys::rule_key(id, &r.name), encode_rule(r));
    }
    batch.put(
        Cf::Meta,
        keys::declared_rules_key(id),
        Bytes::from(declared_bytes),
    );
    let mut rules = declared.to_vec();
    rules.sort_by_key(|r| r.name.to_lowercase());
    Ok(rules)
}

struct State {
    next_seq: u64,
    dedup: History,
    /// Scheduled messages by topic sequence number.
    scheduled: Scheduled,
}

/// A topic and its subscriptions.
pub struct Topic {
    name: String,
    id: u64,
    config: TopicConfig,
    storage: Arc<dyn Storage>,
    bodies: Arc<SharedBodies>,
    subs: Vec<Arc<Subscription>>,
    /// Where copies are stored: the subscriptions' queues (same indexes as `subs`), then the
    /// queues subscriptions forward to.
    targets: Vec<Arc<Queue>>,
    /// Topics subscriptions forward to: their copies are published there, in the same batch.
    onward: Vec<Arc<Topic>>,
    view: MessageView,
    rewrite: Rewrite,
    state: Mutex<State>,
    stats: Stats,
}

/// What a [`Topic::stage`] staged, to make visible or take back once its batch is written.
#[derive(Default)]
pub(crate) struct Publication {
    /// Copies by subscription (index into the topic's targets).
    staged: Vec<(usize, Staged)>,
    /// Body references counted for the staged copies.
    retained: Vec<((u64, u64), u32)>,
    /// Topic sequence numbers this publication scheduled.
    scheduled_now: Vec<u64>,
    /// Messages published (duplicates left out).
    published: u64,
    /// What forwarding subscriptions published to other topics (index into `onward`).
    onward: Vec<(usize, Publication)>,
}

/// Where subscriptions may forward to when a topic opens: queues (by lower-case name, each
/// standing for the end of its chain), the ends of queue chains, and the topics already open.
pub(crate) struct Destinations<'a> {
    pub queues: &'a HashMap<String, Arc<Queue>>,
    pub forwards: &'a HashMap<String, String>,
    pub topics: &'a HashMap<String, Arc<Topic>>,
}

/// Counters for metrics.
#[derive(Default)]
struct Stats {
    published: AtomicU64,
    copies: AtomicU64,
    filter_ns: AtomicU64,
}

/// A topic's counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TopicStats {
    /// Messages published (duplicates left out).
    pub published: u64,
    /// Subscription copies written.
    pub copies: u64,
    /// Time spent evaluating rules, in seconds.
    pub filter_seconds: f64,
}

impl Topic {
    /// Opens the topic with id `id` and its subscriptions (each with its own id), recovering
    /// their messages and the counts of the bodies they share.
    pub(crate) fn open(
        spec: &TopicSpec,
        id: u64,
        subs: Vec<(String, u64, SubscriptionConfig)>,
        storage: Arc<dyn Storage>,
        (view, rewrite): (MessageView, Rewrite),
        dests: Destinations<'_>,
        rules_batch: &mut Batch,
    ) -> Result<Arc<Topic>, StoreError> {
        let bodies = Arc::new(SharedBodies::default());
        let mut opened = Vec::with_capacity(subs.len());
        // the subscriptions' queues, then the queues they forward to
        let mut targets: Vec<Arc<Queue>> = Vec::with_capacity(subs.len());
        let mut forwards: Vec<Option<Arc<Queue>>> = Vec::with_capacity(subs.len());
        let mut onward: Vec<Arc<Topic>> = Vec::new();
        for (path, sub_id, c) in subs {
            // the topic's size limit holds for each subscription; duplicates are the topic's
            let config = QueueConfig {
                max_size_bytes: spec.config.max_size_bytes,
                duplicate_detection_ms: 0,
                ..c.queue.clone()
            };
            let queue = Queue::open_with_bodies(
                &path,
                sub_id,
                config,
                storage.clone(),
                Some(bodies.clone()),
            )?;
            let rules = load_rules(storage.as_ref(), &path, sub_id, &c.rules, rules_batch)?;
            let (forward, to_topic) = match &c.forward_to {
                None => (None, None),
                Some(dest) => {
                    let d = dest.to_ascii_lowercase();
                    let end = dests.forwards.get(&d).unwrap_or(&d);
                    if let Some(t) = dests.topics.get(end) {
                        let at = match onward.iter().position(|o| Arc::ptr_eq(o, t)) {
                            Some(at) => at,
                            None => {
                                onward.push(t.clone());
                                onward.len() - 1
                            }
                        };
                        (None, Some(at))
                    } else {
                        let q = dests.queues.get(&d).filter(|q| !q.is_subscription());
                        let q = q.cloned().ok_or_else(|| {
                            StoreError::Invalid(format!(
                                "subscription '{path}' forwards to '{dest}', which is not a queue or topic"
                            ))
                        })?;
                        (Some(q), None)
                    }
                }
            };
            forwards.push(forward);
            targets.push(queue.clone());
            opened.push(Subscription {
                path,
                queue,
                id: sub_id,
                rules: Mutex::new((Arc::new(rules), HashSet::new())),
                dead_letter_on_filter_errors: c.dead_letter_on_filter_errors,
                target: 0,
                onward: to_topic,
            });
        }
        for (i, (s, f)) in opened.iter_mut().zip(forwards).enumerate() {
            s.target = match f {
                None => i,
                Some(q) => match targets.iter().position(|t| Arc::ptr_eq(t, &q)) {
                    Some(t) => t,
                    None => {
                        targets.push(q);
                        targets.len() - 1
                    }
                },
            };
        }
        let opened: Vec<Arc<Subscription>> = opened.into_iter().map(Arc::new).collect();
        let meta = storage.get_many(Cf::Meta, &[keys::last_seq_key(id)])?;
        let next_seq = meta[0].as_deref().and_then(decode_max).unwrap_or(0) + 1;
        let mut stale = Batch::default();
        let dedup = History::load(
            storage.as_ref(),
            id,
            spec.config.duplicate_detection_ms,
            now_ms(),
            &mut stale,
        )?;
        if !stale.is_empty() {
            storage.write(stale, Box::new(|_| {}));
        }
        let mut scheduled = Scheduled::new();
        for (i, s) in opened.iter().enumerate() {
            for (seq, (owner, tseq), at) in s.queue.scheduled_shared() {
                if owner == id {
                    let e = scheduled.entry(tseq).or_insert((at, Vec::new()));
                    e.1.push((Place::Target(i), seq));
                }
            }
        }
        schedule::recover_forwarded(storage.as_ref(), id, (&targets, &onward), &mut scheduled)?;
        Ok(Arc::new(Topic {
            name: spec.name.clone(),
            id,
            targets,
            onward,
            config: spec.config.clone(),
            storage,
            bodies,
            subs: opened,
            view,
            rewrite,
            state: Mutex::new(State {
                next_seq,
                dedup,
                scheduled,
            }),
            stats: Stats::default(),
        }))
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topic's settings.
    pub fn config(&self) -> &TopicConfig {
        &self.config
    }

    /// Its subscriptions.
    pub fn subscriptions(&self) -> &[Arc<Subscription>] {
        &self.subs
    }

    /// The storage its rules are written to.
    pub fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    /// Counters since start.
    pub fn stats(&self) -> TopicStats {
        TopicStats {
            published: self.stats.published.load(Ordering::Relaxed),
            copies: self.stats.copies.load(Ordering::Relaxed),
            filter_seconds: self.stats.filter_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }

    /// The queues a message published here can be stored in: each subscription's (or the
    /// queue it forwards to), and those of the topics subscriptions forward to.
    pub(crate) fn landings(&self) -> Vec<Arc<Queue>> {
        let mut out = Vec::new();
        for s in &self.subs {
            out.push(self.targets[s.target].clone());
            if let Some(o) = s.onward {
                // its copies go there; one the other topic refuses stays here
                out.extend(self.onward[o].landings());
            }
        }
        out
    }

    /// Bodies with references left (for tests).
    pub fn stored_bodies(&self) -> usize {
        self.bodies.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("topic state poisoned")
    }

    /// Publishes several groups of messages (one per transfer) with one storage write, as
    /// [`Queue::enqueue_each`] stores them in a queue: each group is accepted or refused on
    /// its own (refused if a subscription it goes to is full). `done` gets each group's topic
    /// sequence numbers (duplicates left out), or the storage's error (then nothing is stored).
    pub fn enqueue_each(
        self: &Arc<Self>,
        groups: Vec<Vec<NewMessage>>,
        done: Completion<Vec<Result<Vec<u64>, StoreError>>>,
    ) {
        let mut batch = Batch::default();
        let (outcomes, publication) = self.stage(groups, &mut batch);
        if batch.is_empty() {
            return done(Ok(outcomes));
        }
        let me = self.clone();
        self.storage.write(
            batch,
            Box::new(move |r| match r {
                Ok(()) => {
                    me.commit(publication);
                    done(Ok(outcomes))
                }
                Err(e) => {
                    me.forget(publication);
                    done(Err(e))
                }
            }),
        );
    }

    /// Stages groups of messages in `batch` as [`Topic::enqueue_each`] publishes them: each
    /// group's outcome, and what to make visible once the batch is written
    /// ([`Topic::commit`]) or to take back if it is not ([`Topic::forget`]).
    pub(crate) fn stage(
        &self,
        groups: Vec<Vec<NewMessage>>,
        batch: &mut Batch,
    ) -> (Vec<Result<Vec<u64>, StoreError>>, Publication) {
        let routed: Vec<Vec<(NewMessage, Fanout)>> = groups
            .into_iter()
            .map(|g| {
                g.into_iter()
                    .map(|m| {
                        let f = self.fan_out(&m.payload);
                        (m, f)
                    })
                    .collect()
            })
            .collect();
        let now = now_ms();
        let mut p = Publication::default();
        let mut outcomes = Vec::new();
        let mut last_seq = None;
        {
            let mut st = self.lock();
            for group in routed {
                if let Err(e) = self.check_room(&group) {
                    outcomes.push(Err(e));
                    continue;
                }
                let mut seqs = Vec::with_capacity(group.len());
                for (m, fanout) in group {
                    let window = self.config.duplicate_detection_ms;
                    if let (Some(mid), true) = (&m.message_id, window > 0) {
                        if !st.dedup.admit(self.id, mid, now, window, batch) {
                            continue;
                        }
                    }
                    let tseq = st.next_seq;
                    st.next_seq += 1;
                    last_seq = Some(tseq);
                    seqs.push(tseq);
                    p.published += 1;
                    if fanout.is_empty() {
                        continue;
                    }
                    let (at, expires) = timing(&m, self.config.default_ttl_ms, now);
                    let body_at = (self.id, tseq);
                    let carried = m.dead_lettered;
                    let session = m.session_id;
                    let body = BodyRecord {
                        enqueued_ms: now,
                        expires_ms: expires.unwrap_or(0),
                        payload: m.payload,
                    };
                    // copies an action changed have bodies of their own
                    let n = fanout
                        .iter()
                        .filter(|(_, k)| matches!(k, CopyKind::Shared | CopyKind::Dead(..)))
                        .count() as u32;
                    if n > 0 {
                        batch.put(Cf::Body, keys::body_key(self.id, tseq), body.encode());
                        self.bodies.retain(body_at, n);
                        p.retained.push((body_at, n));
                    }
                    for (i, kind) in fanout {
                        // an action may have set or removed the copy's SessionId
                        let copy_session = session_of(&kind, &session);
                        let (shared, payload, dead_letter) = match kind {
                            CopyKind::Shared => (Some(body_at), body.payload.clone(), None),
                            CopyKind::Changed(bytes, _) => (None, bytes, None),
                            CopyKind::Dead(r, d) => {
                                (Some(body_at), body.payload.clone(), Some((r, d)))
                            }
                            CopyKind::Onward(o, bytes, _) => {
                                let onward = NewMessage {
                                    payload: bytes.clone(),
                                    scheduled_ms: at,
                                    ttl_ms: expires
                                        .map(|e| e.saturating_sub(at.unwrap_or(now)).max(1) as u64),
                                    message_id: None,
                                    dead_lettered: carried.clone(),
                                    session_id: copy_session.clone(),
                                };
                                // published there in this batch; if that topic refuses it (a
                                // subscription of it is full), the copy stays here
                                let (mut out, publ) =
                                    self.onward[o].stage(vec![vec![onward]], batch);
                                if let Some(Ok(there)) = out.pop() {
                                    p.onward.push((o, publ));
                                    if let (Some(due), Some(seq)) = (at, there.first()) {
                                        let e =
                                            st.scheduled.entry(tseq).or_insert((due, Vec::new()));
                                        e.1.push((Place::Onward(o), *seq));
                                    }
                                    continue;
                                }
                                (None, bytes, None)
                            }
                        };
                        let copy = Copy {
                            body: shared,
                            payload,
                            enqueued_ms: now,
                            expires_ms: expires,
                            scheduled_ms: if dead_letter.is_some() { None } else { at },
                            dead_letter,
                            carried: carried.clone(),
                            session: copy_session,
                        };
                        for s in self.targets[i].stage_copies(vec![copy], batch) {
                            if let Some(due) = s.scheduled_ms() {
                                let e = st.scheduled.entry(tseq).or_insert((due, Vec::new()));
                                e.1.push((Place::Target(i), s.seq()));
                            }
                            p.staged.push((i, s));
                        }
                    }
                    if let Some((due, copies)) = st.scheduled.get(&tseq) {
                        p.scheduled_now.push(tseq);
                        self.record_forwarded(tseq, *due, copies, batch);
                    }
                }
                outcomes.push(Ok(seqs));
            }
        }
        if let Some(seq) = last_seq {
            batch.max(Cf::Meta, keys::last_seq_key(self.id), seq);
        }
        (outcomes, p)
    }

    /// The batch of a [`Topic::stage`] is durable: the copies become available.
    pub(crate) fn commit(&self, p: Publication) {
        for (o, publ) in p.onward {
            self.onward[o].commit(publ);
        }
        self.stats
            .published
            .fetch_add(p.published, Ordering::Relaxed);
        self.stats
            .copies
            .fetch_add(p.staged.len() as u64, Ordering::Relaxed);
        let mut per_target: Vec<Vec<Staged>> = self.targets.iter().map(|_| Vec::new()).collect();
        for (i, s) in p.staged {
            per_target[i].push(s);
        }
        for (queue, copies) in self.targets.iter().zip(per_target) {
            if !copies.is_empty() {
                queue.commit_copies(copies);
            }
        }
    }

    /// The batch of a [`Topic::stage`] failed: nothing of it is held.
    pub(crate) fn forget(&self, p: Publication) {
        for (o, publ) in p.onward {
            self.onward[o].forget(publ);
        }
        for (i, s) in &p.staged {
            self.targets[*i].forget_copies(std::slice::from_ref(s));
        }
        for (at, n) in p.retained {
            self.bodies.forget(at, n);
        }
        let mut st = self.lock();
        for tseq in p.scheduled_now {
            st.scheduled.remove(&tseq);
        }
    }
}
