//! What the engine asks of the broker, and how the broker talks back.

use bytes::Bytes;
use ferrobus_codec::message::AnnotationValue;
use ferrobus_codec::types::definitions::{Error, Fields};
use ferrobus_codec::types::messaging::{DeliveryState, FilterSet};
use ferrobus_codec::types::performatives::Attach;
use tokio::sync::mpsc::UnboundedSender;

/// Identifies one link within its connection for its whole life (handles are reused; ids
/// are not), so events for a link that is gone are recognised and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkId(pub u64);

/// Something for the connection task to do on behalf of a link.
#[derive(Debug)]
pub enum Event {
    /// Send a delivery on an outgoing link (within the credit the link was given).
    Deliver(LinkId, OutgoingDelivery),
    /// A drain is complete: the link's delivery count is now `delivery_count`, its credit 0.
    Drained(LinkId, u32),
    /// An incoming delivery has its outcome (sent to the peer unless it was pre-settled).
    Published(LinkId, u32, DeliveryState),
    /// The outcome of the peer's unsettled disposition is final: echo it settled.
    Settled(LinkId, u32, DeliveryState),
    /// Detach the link with an error.
    Detach(LinkId, Error),
    /// The router's answer to an attach it took time over ([`Endpoint::Later`]).
    Attached(LinkId, Result<Endpoint, Refusal>),
}

/// The channel back to a connection, scoped to one link.
#[derive(Debug, Clone)]
pub struct Outbox {
    pub(crate) link: LinkId,
    pub(crate) tx: UnboundedSender<Event>,
}

impl Outbox {
    /// Posts an event for this link. Returns false when the connection is gone.
    ///
    /// The channel is unbounded, but what goes through it is bounded by AMQP flow control:
    /// deliveries by the credit the peer granted, outcomes by the credit we granted and the
    /// deliveries we sent.
    pub fn send(&self, make: impl FnOnce(LinkId) -> Event) -> bool {
        self.tx.send(make(self.link)).is_ok()
    }

    /// True once the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// A message for an outgoing link.
#[derive(Debug)]
pub struct OutgoingDelivery {
    /// The delivery tag (for Service Bus: the lock token, .NET byte order).
    pub tag: [u8; 16],
    /// Pre-settled (receive-and-delete) or not.
    pub settled: bool,
    /// The message-format of the transfer.
    pub message_format: u32,
    /// What to send.
    pub body: OutgoingBody,
}

/// The bytes of an outgoing message.
#[derive(Debug)]
pub enum OutgoingBody {
    /// A stored message: a fresh header and broker annotations, then the producer's bare
    /// message, untouched.
    Stored {
        /// The producer's encoded message.
        payload: Bytes,
        /// Earlier delivery attempts, sent as the header's delivery-count (the rest of the
        /// header is the producer's).
        delivery_count: u32,
        /// The message's effective time to live, sent as the header's ttl when set.
        ttl_ms: Option<u32>,
        /// Broker annotations, first in the message annotations.
        annotations: Vec<(&'static str, AnnotationValue)>,
        /// Annotation keys the broker owns: the producer's values for these are dropped.
        owned: &'static [&'static str],
    },
    /// A complete encoded message, sent as is.
    Encoded(Bytes),
}

/// A link the peer sends on (we are the receiver).
pub trait IncomingLink: Send {
    /// A complete message. The link must answer with [`Event::Published`] for this
    /// `delivery_id` once the outcome is known (also for pre-settled transfers, which frees
    /// the credit they used).
    fn message(&mut self, delivery_id: u32, settled: bool, message_format: u32, payload: Bytes);

    /// The messages handed over since the last call are all there is for now (the engine
    /// calls this once it has handled what one read brought, and before any other
    /// performative of the connection): a link may store them together now.
    fn messages_end(&mut self) {}
}

/// A link we send on (the peer is the receiver).
pub trait OutgoingLink: Send {
    /// The peer's flow state for the link: its delivery count and its credit from there.
    fn flow(&mut self, delivery_count: u32, link_credit: u32, drain: bool);

    /// The peer's disposition of one of our deliveries. When `settled` is false the link must
    /// answer with [`Event::Settled`] once the outcome is final.
    fn disposition(
        &mut self,
        delivery_id: u32,
        tag: [u8; 16],
        state: Option<DeliveryState>,
        settled: bool,
    );

    /// Every delivery of one disposition frame (a range) has been handed to
    /// [`OutgoingLink::disposition`]: a link may act on them together now.
    fn dispositions_end(&mut self) {}

    /// What our attach reply states beyond the echo of the peer's terminus; the default
    /// states nothing more.
    fn reply(&self) -> LinkReply {
        LinkReply::default()
    }
}

/// What an attach reply states beyond the echo of the peer's terminus (a session receiver:
/// the session it got and until when it is locked). Built by the broker, never a peer's
/// values.
#[derive(Debug, Clone, Default)]
pub struct LinkReply {
    /// The source's filters in force.
    pub source_filter: Option<FilterSet>,
    /// The link's properties.
    pub properties: Option<Fields>,
}

/// The broker side of an attached link.
pub enum Endpoint {
    /// The peer sends; we receive.
    Incoming(Box<dyn IncomingLink>),
    /// We send; the peer receives.
    Outgoing(Box<dyn OutgoingLink>),
    /// The answer takes time (a receiver waiting for a session): the router posts
    /// [`Event::Attached`] for the link later, and the engine answers the attach then.
    Later,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Endpoint::Incoming(_) => "Endpoint::Incoming",
            Endpoint::Outgoing(_) => "Endpoint::Outgoing",
            Endpoint::Later => "Endpoint::Later",
        })
    }
}

/// Why an attach is refused.
#[derive(Debug, Clone)]
pub struct Refusal(pub Error);

/// What the router is told about an attach.
pub struct AttachRequest<'a> {
    /// The peer's attach.
    pub attach: &'a Attach,
    /// The peer's container-id.
    pub container_id: &'a str,
    /// The SASL identity, if the peer logged in with PLAIN.
    pub user: Option<&'a str>,
    /// How the link's endpoint reaches the connection.
    pub outbox: Outbox,
    /// Pre-settled deliveries requested (`snd-settle-mode = settled`).
    pub presettled: bool,
    /// The connection, unique in the process (request/response nodes pair links by it).
    pub connection: u64,
    /// The session's channel on that connection.
    pub session: u16,
}

/// The broker as the engine sees it.
pub trait Router: Send + Sync + 'static {
    /// Checks SASL PLAIN credentials.
    fn check_plain(&self, user: &str, password: &str) -> bool;

    /// A peer attaches a link: return its endpoint or refuse it.
    fn attach(&self, req: AttachRequest<'_>) -> Result<Endpoint, Refusal>;

    /// Connection-level notifications for metrics; the default ignores them.
    fn connection_opened(&self) {}
    /// See [`Router::connection_opened`]; `connection` is the id links were attached with.
    fn connection_closed(&self, _connection: u64) {}
    /// A session began (metrics).
    fn session_begun(&self) {}
    /// A session ended (metrics).
    fn session_ended(&self) {}
}
