//! Ferrobus entities and their durable state.
//!
//! Role: the semantics of queues (FIFO competing consumers, credit-driven dispatch, per-entity
//! sequence numbers, peek-lock with complete / release / abandon / defer / dead-letter,
//! receive-and-delete) over a small [`storage::Storage`] trait. The crate knows nothing of AMQP
//! frames: a message is the producer's bytes ([`Message::payload`]) plus the few fields the
//! entity needs.
//!
//! Invariants:
//! - Each queue owns its state behind one mutex that is never held across a storage call, an
//!   `.await` or a sink callback that could block; there is no lock over the whole broker.
//! - A change is visible (a message offered to consumers, a completion reported) only after the
//!   storage has committed the write that records it.
//! - Sinks ([`queue::ConsumerSink`]) and completions are called without any entity lock held,
//!   or from under the entity's own lock only to hand over a delivery; they must never call back
//!   into the same entity synchronously.

pub mod bodies;
mod forward;
pub mod keys;
mod paths;
pub mod queue;
pub mod registry;
pub mod storage;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod topic;

pub use paths::MAX_FORWARD_HOPS;
pub use queue::{
    ConsumerHandle, ConsumerSink, Delivery, Lane, MessageState, Outcome, Peeked, Queue,
    QueueConfig, QueueStats, ReceiveMode, SessionLock,
};
pub use registry::{Entities, ResolveError, Resolved, SendTarget};
pub use topic::{
    MessageView, Rewrite, Subscription, SubscriptionConfig, Topic, TopicConfig, TopicSpec,
    TopicStats,
};

use std::sync::Arc;

use bytes::Bytes;

/// A message as the store keeps it.
#[derive(Debug)]
pub struct Message {
    /// Sequence number within its entity (starts at 1, only grows).
    pub seq: u64,
    /// When the entity accepted it, in milliseconds since the Unix epoch.
    pub enqueued_ms: i64,
    /// When it expires (its time to live ends), if it does.
    pub expires_ms: Option<i64>,
    /// The producer's encoded message, exactly as received.
    pub payload: Bytes,
    /// Its session (the message's `group-id`), if it has one.
    pub session: Option<Arc<str>>,
}

/// A message arriving at an entity.
#[derive(Debug, Clone, Default)]
pub struct NewMessage {
    /// The producer's encoded message.
    pub payload: Bytes,
    /// Not available before this time (ms since the epoch).
    pub scheduled_ms: Option<i64>,
    /// Time to live in ms (capped by the entity's default).
    pub ttl_ms: Option<u64>,
    /// Its message-id, as bytes that identify it (for duplicate detection).
    pub message_id: Option<Vec<u8>>,
    /// Set when a dead-letter sub-queue forwards the message (`ForwardDeadLetteredMessagesTo`):
    /// why it was dead-lettered and where, delivered with it from its new entity.
    pub dead_lettered: Option<DeadLettered>,
    /// Its session id (the message's `group-id`, Service Bus's `SessionId`), if it has one.
    /// Entities that require sessions refuse a message without one.
    pub session_id: Option<Arc<str>>,
}

/// Why and where a message was dead-lettered, carried with it when its entity's dead-letter
/// sub-queue forwards it to another entity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLettered {
    /// The dead-letter reason (`DeadLetterReason`).
    pub reason: Option<String>,
    /// The dead-letter description (`DeadLetterErrorDescription`).
    pub description: Option<String>,
    /// The entity it was dead-lettered in (`x-opt-deadletter-source`).
    pub source: String,
}

impl NewMessage {
    /// Just the payload.
    pub fn new(payload: Bytes) -> Self {
        NewMessage {
            payload,
            ..Default::default()
        }
    }
}

/// A 16-byte lock token (RFC 4122 byte order).
pub type LockToken = [u8; 16];

/// What can go wrong in the store; each maps to one AMQP error condition in the server.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// No such message (sequence number): `com.microsoft:message-not-found`.
    #[error("{0}")]
    NotFound(String),
    /// The lock is unknown or expired: `com.microsoft:message-lock-lost`.
    #[error("the lock on the message is lost or expired")]
    LockLost,
    /// The entity is full: `amqp:resource-limit-exceeded`.
    #[error("entity is full: {0}")]
    Full(String),
    /// The storage failed to write: `amqp:internal-error`.
    #[error("storage write failed: {0}")]
    Storage(String),
    /// A stored record is corrupt.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A declaration the store cannot take (at start-up).
    #[error("{0}")]
    Invalid(String),
    /// The entity (a rule) already exists: `com.microsoft:entity-already-exists`.
    #[error("{0}")]
    EntityExists(String),
    /// No such entity (a rule): `amqp:not-found`.
    #[error("{0}")]
    EntityNotFound(String),
    /// Not allowed on this entity (a message without a session id sent to an entity that
    /// requires sessions): `amqp:not-allowed`.
    #[error("{0}")]
    NotAllowed(String),
    /// The session is locked by another receiver: `com.microsoft:session-cannot-be-locked`.
    #[error("{0}")]
    SessionCannotBeLocked(String),
    /// The session's lock is lost or expired: `com.microsoft:session-lock-lost`.
    #[error("{0}")]
    SessionLockLost(String),
}

/// Called once when a write has been committed (or has failed).
pub type Completion<T> = Box<dyn FnOnce(Result<T, StoreError>) + Send>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
