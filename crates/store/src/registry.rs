//! The broker's entities by name, and address resolution.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::forward::DeadLetterForward;
use crate::keys;
use crate::paths;
use crate::queue::{Lane, Queue, QueueConfig};
use crate::storage::{Batch, Cf, Storage};
use crate::topic::{self, MessageView, Rewrite, Subscription, Topic, TopicSpec};
use crate::StoreError;

/// The suffix that names a queue's dead-letter sub-queue (matched case-insensitively).
pub const DEAD_LETTER_SUFFIX: &str = "/$deadletterqueue";

/// What joins a topic's name and a subscription's in the subscription's address.
pub const SUBSCRIPTIONS: &str = "/Subscriptions/";

/// What an address leads to.
#[derive(Clone)]
pub struct Resolved {
    /// The queue.
    pub queue: Arc<Queue>,
    /// Which part of it.
    pub lane: Lane,
}

/// Why an address leads nowhere.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    /// No such entity: `amqp:not-found`.
    #[error("the messaging entity '{0}' could not be found")]
    NotFound(String),
}

/// Every entity of the broker. Built once at start-up; entity names are case-insensitive.
pub struct Entities {
    /// Queues and subscriptions (`<topic>/subscriptions/<name>`), by lower-case path.
    queues: HashMap<String, Arc<Queue>>,
    topics: HashMap<String, Arc<Topic>>,
    /// Queues that forward, by lower-case name: the lower-case name of the chain's end.
    forwards: HashMap<String, String>,
    /// Queues and subscriptions whose dead-letter sub-queues forward.
    dead_forwards: Vec<DeadLetterForward>,
}

/// Where messages sent to an address are stored.
#[derive(Clone)]
pub enum SendTarget {
    Queue(Arc<Queue>),
    Topic(Arc<Topic>),
}

impl Entities {
    /// Opens the configured queues over `storage`: names keep their entity ids across
    /// restarts, new names get new ids, and each queue recovers its messages.
    pub fn open(
        storage: Arc<dyn Storage>,
        queues: &[(String, QueueConfig)],
    ) -> Result<Self, StoreError> {
        Self::open_all(storage, queues, &[], no_view(), no_rewrite())
    }

    /// Opens the configured queues and topics (with their subscriptions) over `storage`, as
    /// [`Entities::open`] does; `view` shows the topics' filters a message's properties.
    pub fn open_all(
        storage: Arc<dyn Storage>,
        queues: &[(String, QueueConfig)],
        topics: &[TopicSpec],
        view: MessageView,
        rewrite: Rewrite,
    ) -> Result<Self, StoreError> {
        let (lo, hi) = keys::entity_range();
        let mut ids: HashMap<String, u64> = HashMap::new();
        let mut max_id = 0;
        for (k, v) in storage.scan(Cf::Meta, &lo, &hi)? {
            let name = String::from_utf8(k[1..].to_vec())
                .map_err(|_| StoreError::Corrupt("entity name".into()))?;
            let id = u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("entity id".into()))?,
            );
            max_id = max_id.max(id);
            ids.insert(name, id);
        }
        let mut batch = Batch::default();
        let mut id_of = |key: &str, batch: &mut Batch| match ids.get(key) {
            Some(id) => *id,
            None => {
                max_id += 1;
                batch.put(
                    Cf::Meta,
                    keys::entity_key(key),
                    Bytes::copy_from_slice(&max_id.to_be_bytes()),
                );
                ids.insert(key.to_string(), max_id);
                max_id
            }
        };
        let mut taken = std::collections::HashSet::new();
        let mut claim = |name: &str| -> Result<String, StoreError> {
            let key = name.to_ascii_lowercase();
            if !taken.insert(key.clone()) {
                return Err(StoreError::Invalid(format!(
                    "entity '{name}' is declared twice"
                )));
            }
            Ok(key)
        };
        let mut map = HashMap::new();
        for (name, config) in queues {
            let key = claim(name)?;
            let id = id_of(&key, &mut batch);
            map.insert(key, Queue::open(name, id, config.clone(), storage.clone())?);
        }
        // queues' forwarding chains, before the topics open (their subscriptions forward into
        // the same chains)
        let declared = paths::names(queues, topics);
        let chains = paths::queue_chains(queues, &|n: &str| declared.contains(n))?;
        let order = paths::topic_order(topics, &chains)?;
        let forwards: HashMap<String, String> = chains
            .iter()
            .map(|(from, c)| (from.clone(), c.end.clone()))
            .collect();
        let mut sub_queues = map.clone();
        for (from, end) in &forwards {
            if let Some(q) = map.get(end) {
                sub_queues.insert(from.clone(), q.clone());
            } else {
                sub_queues.remove(from);
            }
        }
        // ids in declaration order; topics open after every topic they forward into
        let mut named = Vec::with_capacity(topics.len());
        for spec in topics {
            let key = claim(&spec.name)?;
            let id = id_of(&key, &mut batch);
            let mut subs = Vec::new();
            for (sub, config) in &spec.subscriptions {
                let path = format!("{}{SUBSCRIPTIONS}{sub}", spec.name);
                let sub_key = claim(&path)?;
                subs.push((path, id_of(&sub_key, &mut batch), config.clone()));
            }
            named.push(Some((key, id, subs)));
        }
        let mut topic_map: HashMap<String, Arc<Topic>> = HashMap::new();
        for i in order {
            let (key, id, subs) = named[i].take().expect("each topic once");
            let destinations = topic::Destinations {
                queues: &sub_queues,
                forwards: &forwards,
                topics: &topic_map,
            };
            let topic = Topic::open(
                &topics[i],
                id,
                subs,
                storage.clone(),
                (view.clone(), rewrite.clone()),
                destinations,
                &mut batch,
            )?;
            for s in topic.subscriptions() {
                map.insert(s.path.to_ascii_lowercase(), s.queue.clone());
            }
            topic_map.insert(key, topic);
        }
        if !batch.is_empty() {
            crate::queue::write_and_wait(storage.as_ref(), batch)?;
        }
        let mut entities = Entities {
            queues: map,
            topics: topic_map,
            forwards,
            dead_forwards: Vec::new(),
        };
        entities.dead_forwards = entities.dead_letter_forwards()?;
        Ok(entities)
    }

    /// Where each entity that forwards its dead letters sends them, refusing a destination
    /// that is the entity itself, a subscription, or no entity at all.
    fn dead_letter_forwards(&self) -> Result<Vec<DeadLetterForward>, StoreError> {
        let mut out = Vec::new();
        let mut names: Vec<&String> = self.queues.keys().collect();
        names.sort();
        for key in names {
            let queue = &self.queues[key];
            let Some(to) = &queue.config().forward_dead_lettered_to else {
                continue;
            };
            let dest = to.trim_matches('/').to_ascii_lowercase();
            let name = queue.name();
            let refuse = |why: &str| {
                Err(StoreError::Invalid(format!(
                    "'{name}' forwards its dead-lettered messages to '{to}', {why}"
                )))
            };
            if dest == *key {
                return refuse("itself");
            }
            if self.subscription(&dest).is_some() {
                return refuse("a subscription (forward to a queue or a topic)");
            }
            match self.send_target(&dest) {
                Some(target) => out.push(DeadLetterForward::new(queue.clone(), target)),
                None => return refuse("which is not a queue or topic"),
            }
        }
        crate::forward::refuse_circles(&out)?;
        Ok(out)
    }

    /// Moves what the dead-letter sub-queues that forward (`ForwardDeadLetteredMessagesTo`)
    /// hold to their destinations (`store/src/forward.rs`); the broker calls it periodically.
    pub fn forward_dead_letters(&self) {
        for f in &self.dead_forwards {
            f.run();
        }
    }

    /// Where a message sent to `address` is stored: the queue or topic it names, or, for a
    /// queue that forwards (`ForwardTo`), the end of its forwarding chain.
    pub fn send_target(&self, address: &str) -> Option<SendTarget> {
        let path = strip_authority(address)
            .trim_matches('/')
            .to_ascii_lowercase();
        let end = self.forwards.get(&path).unwrap_or(&path);
        if let Some(t) = self.topics.get(end) {
            return Some(SendTarget::Topic(t.clone()));
        }
        self.queues.get(end).cloned().map(SendTarget::Queue)
    }

    /// Resolves a link address: `<queue>`, `<queue>/$DeadLetterQueue`, or either behind an
    /// `amqp[s]://host[:port]/` prefix.
    pub fn resolve(&self, address: &str) -> Result<Resolved, ResolveError> {
        let path = strip_authority(address);
        let lower = path.trim_matches('/').to_ascii_lowercase();
        let (name, lane) = match lower.strip_suffix(DEAD_LETTER_SUFFIX) {
            Some(n) => (n, Lane::DeadLetter),
            None => (lower.as_str(), Lane::Main),
        };
        self.queues
            .get(name)
            .map(|q| Resolved {
                queue: q.clone(),
                lane,
            })
            .ok_or_else(|| ResolveError::NotFound(path.to_string()))
    }

    /// The topic an address names (`<topic>`, with or without an `amqp[s]://host/` prefix).
    pub fn topic(&self, address: &str) -> Option<&Arc<Topic>> {
        let path = strip_authority(address);
        self.topics
            .get(&path.trim_matches('/').to_ascii_lowercase())
    }

    /// Every queue and subscription.
    pub fn queues(&self) -> impl Iterator<Item = &Arc<Queue>> {
        self.queues.values()
    }

    /// The subscription an address names (`<topic>/Subscriptions/<name>`), with its topic.
    pub fn subscription(&self, address: &str) -> Option<(&Arc<Topic>, &Arc<Subscription>)> {
        let path = strip_authority(address)
            .trim_matches('/')
            .to_ascii_lowercase();
        let (topic, _) = path.split_once("/subscriptions/")?;
        let t = self.topics.get(topic)?;
        let s = t
            .subscriptions()
            .iter()
            .find(|s| s.path.to_ascii_lowercase() == path)?;
        Some((t, s))
    }

    /// Every topic.
    pub fn topics(&self) -> impl Iterator<Item = &Arc<Topic>> {
        self.topics.values()
    }
}

/// A rewriter for stores without topics: nothing to rewrite.
fn no_rewrite() -> Rewrite {
    Arc::new(|_, rule, _| Err(format!("rule '{rule}': no rule actions here")))
}

/// A view for stores without topics: no properties.
fn no_view() -> MessageView {
    struct Nothing;
    impl ferrobus_filter::Message for Nothing {
        fn system(&self, _: ferrobus_filter::SystemProperty) -> Option<ferrobus_filter::Value> {
            None
        }
        fn user(&self, _: &str) -> Option<ferrobus_filter::Value> {
            None
        }
    }
    Arc::new(|_| Box::new(Nothing))
}

/// Strips `scheme://authority` from an absolute address; relative ones pass through.
pub fn strip_authority(address: &str) -> &str {
    match address.find("://") {
        Some(i) => {
            let rest = &address[i + 3..];
            match rest.find('/') {
                Some(j) => &rest[j + 1..],
                None => "",
            }
        }
        None => address,
    }
}
