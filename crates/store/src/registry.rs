//! The broker's entities by name, and address resolution.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::keys;
use crate::queue::{Lane, Queue, QueueConfig};
use crate::storage::{Batch, Cf, Storage};
use crate::StoreError;

/// The suffix that names a queue's dead-letter sub-queue (matched case-insensitively).
pub const DEAD_LETTER_SUFFIX: &str = "/$deadletterqueue";

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
    queues: HashMap<String, Arc<Queue>>,
}

impl Entities {
    /// Opens the configured queues over `storage`: names keep their entity ids across
    /// restarts, new names get new ids, and each queue recovers its messages.
    pub fn open(
        storage: Arc<dyn Storage>,
        queues: &[(String, QueueConfig)],
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
        let mut map = HashMap::new();
        for (name, config) in queues {
            let key = name.to_ascii_lowercase();
            if map.contains_key(&key) {
                return Err(StoreError::Corrupt(format!(
                    "queue '{name}' is declared twice"
                )));
            }
            let id = match ids.get(&key) {
                Some(id) => *id,
                None => {
                    max_id += 1;
                    batch.put(
                        Cf::Meta,
                        keys::entity_key(&key),
                        Bytes::copy_from_slice(&max_id.to_be_bytes()),
                    );
                    max_id
                }
            };
            map.insert(key, Queue::open(name, id, config.clone(), storage.clone())?);
        }
        if !batch.is_empty() {
            crate::queue::write_and_wait(storage.as_ref(), batch)?;
        }
        Ok(Entities { queues: map })
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

    /// Every queue.
    pub fn queues(&self) -> impl Iterator<Item = &Arc<Queue>> {
        self.queues.values()
    }
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
