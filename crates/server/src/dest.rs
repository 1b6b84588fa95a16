//! Where a producer's messages go: a queue, or a topic that fans them out.

use std::sync::Arc;

use ferrobus_store::{Completion, NewMessage, Queue, StoreError, Topic};

/// An entity messages can be sent to.
#[derive(Clone)]
pub enum Dest {
    Queue(Arc<Queue>),
    Topic(Arc<Topic>),
}

impl Dest {
    /// Whether the entity drops duplicates (so producers pass each message's id).
    pub fn detects_duplicates(&self) -> bool {
        match self {
            Dest::Queue(q) => q.config().duplicate_detection_ms > 0,
            Dest::Topic(t) => t.config().duplicate_detection_ms > 0,
        }
    }

    /// Stores groups of messages with one write; see [`Queue::enqueue_each`].
    pub fn enqueue_each(
        &self,
        groups: Vec<Vec<NewMessage>>,
        done: Completion<Vec<Result<Vec<u64>, StoreError>>>,
    ) {
        match self {
            Dest::Queue(q) => q.enqueue_each(groups, done),
            Dest::Topic(t) => t.enqueue_each(groups, done),
        }
    }

    /// Cancels scheduled messages by sequence number (a topic's, for a topic).
    pub fn cancel_scheduled(&self, seqs: &[u64], done: Completion<()>) {
        match self {
            Dest::Queue(q) => q.cancel_scheduled(seqs, done),
            Dest::Topic(t) => t.cancel_scheduled(seqs, done),
        }
    }
}
