//! The AMQP 1.0 connection engine of Ferrobus: connections, sessions and links on tokio.
//!
//! Role: [`serve`] runs one connection in one task. It owns the socket, the read buffer,
//! every session and link of the connection, and writes many frames per flush. It knows
//! nothing of queues: where a link's address leads is the [`Router`]'s business, and the
//! endpoints a router returns talk back to the connection through its [`Outbox`].
//!
//! Invariants:
//! - Credit, drain, delivery tags and settlement timing are decided here and by the
//!   endpoints, never implicitly: a producer's transfer is settled only when its
//!   [`IncomingLink`] reports the outcome, and a consumer's unsettled disposition is echoed
//!   only when the [`OutgoingLink`] reports that the outcome is final.
//! - Nothing a peer sends can panic the task; malformed input closes the connection with the
//!   matching AMQP error condition.
//! - Never more than the peer's max-frame-size per frame, nor more transfers than its
//!   session incoming window.

mod api;
mod config;
mod conn;

pub use api::{
    AttachRequest, Endpoint, Event, IncomingLink, LinkId, LinkReply, Outbox, OutgoingBody,
    OutgoingDelivery, OutgoingLink, Refusal, Router,
};
pub use config::EngineConfig;
pub use conn::serve;
pub use ferrobus_codec::types;
