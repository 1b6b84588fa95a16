//! Request/response nodes (`$cbs` now, `$management` next): a client attaches a sender link
//! to the node and a receiver link from it in the same session, sends requests on the first
//! and gets each response on the second.
//!
//! Responses are matched to the receiver link attached from the same node in the same session
//! (preferring the one whose target equals the request's reply-to): the SDKs differ in what
//! they put in reply-to, and Python's CBS requests carry none.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ferrobus_codec::message::Sections;
use ferrobus_codec::types::messaging::{
    Accepted, AmqpValue, ApplicationProperties, DeliveryState, MessageId, Properties,
};
use ferrobus_codec::types::primitives::{SimpleValue, Value};
use ferrobus_session::{Event, IncomingLink, Outbox, OutgoingBody, OutgoingDelivery, OutgoingLink};

/// A decoded request.
pub struct Request {
    /// The connection the request came on.
    pub connection: u64,
    pub message_id: Option<MessageId>,
    pub reply_to: Option<String>,
    pub app: HashMap<String, Value>,
    pub body: Value,
}

impl Request {
    /// Decodes the sections a request needs; anything malformed is `None`.
    pub fn decode(payload: &[u8]) -> Option<Request> {
        let s = Sections::scan(payload).ok()?;
        let props: Option<Properties> = match &s.properties {
            Some(r) => Some(ferrobus_codec::decode(&payload[r.clone()], "properties").ok()?),
            None => None,
        };
        let app: HashMap<String, Value> = match &s.application_properties {
            Some(r) => {
                let ap: ApplicationProperties =
                    ferrobus_codec::decode(&payload[r.clone()], "application-properties").ok()?;
                ap.0.into_iter().map(|(k, v)| (k, Value::from(v))).collect()
            }
            None => HashMap::new(),
        };
        let body = match &s.body {
            Some(r) => {
                ferrobus_codec::decode::<AmqpValue<Value>>(&payload[r.clone()], "request body")
                    .ok()?
                    .0
            }
            None => Value::Null,
        };
        let (message_id, reply_to) = props.map_or((None, None), |p| (p.message_id, p.reply_to));
        Some(Request {
            connection: 0,
            message_id,
            reply_to,
            app,
            body,
        })
    }

    /// An application property as text.
    pub fn text(&self, key: &str) -> Option<&str> {
        match self.app.get(key) {
            Some(Value::String(s)) => Some(s),
            Some(Value::Symbol(s)) => Some(s.as_str()),
            _ => None,
        }
    }
}

/// Encodes a response: correlation-id = the request's message-id (same AMQP type), the status
/// application properties, and an amqp-value body.
pub fn response(
    correlation: Option<MessageId>,
    status: Vec<(&str, SimpleValue)>,
    body: Value,
) -> Bytes {
    let props = Properties {
        correlation_id: correlation,
        ..Default::default()
    };
    let mut ap = ApplicationProperties::builder();
    for (k, v) in status {
        ap = ap.insert(k, v);
    }
    let mut out = ferrobus_codec::serde_amqp::to_vec(&props).expect("encoding properties");
    out.extend(
        ferrobus_codec::serde_amqp::to_vec(&ap.build()).expect("encoding application properties"),
    );
    out.extend(ferrobus_codec::serde_amqp::to_vec(&AmqpValue(body)).expect("encoding a body"));
    Bytes::from(out)
}

/// A session: (connection id, channel).
pub type SessionKey = (u64, u16);

/// Receiver links attached from nodes, by session.
#[derive(Default)]
pub struct ReplyLinks {
    map: Mutex<HashMap<SessionKey, Vec<Arc<Reply>>>>,
}

/// One receiver link attached from a node: where its responses wait for credit.
pub struct Reply {
    node: String,
    target: Option<String>,
    outbox: Outbox,
    st: Mutex<ReplyState>,
}

#[derive(Default)]
struct ReplyState {
    credit: u32,
    sent: u32,
    pending: VecDeque<Bytes>,
}

impl Reply {
    /// Queues a response; it goes out as soon as the link has credit.
    pub fn push(&self, msg: Bytes) {
        let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
        st.pending.push_back(msg);
        self.pump(&mut st);
    }

    fn pump(&self, st: &mut ReplyState) {
        while st.credit > 0 {
            let Some(msg) = st.pending.pop_front() else {
                break;
            };
            st.credit -= 1;
            st.sent = st.sent.wrapping_add(1);
            let mut tag = [0u8; 16];
            tag[12..].copy_from_slice(&st.sent.to_be_bytes());
            let d = OutgoingDelivery {
                tag,
                settled: false,
                message_format: 0,
                body: OutgoingBody::Encoded(msg),
            };
            self.outbox.send(|l| Event::Deliver(l, d));
        }
    }
}

impl ReplyLinks {
    /// Registers a receiver link attached from `node`; the endpoint unregisters on drop.
    pub fn attach(
        self: &Arc<Self>,
        key: (u64, u16),
        node: &str,
        target: Option<String>,
        outbox: Outbox,
    ) -> ReplyEndpoint {
        let reply = Arc::new(Reply {
            node: node.to_string(),
            target,
            outbox,
            st: Mutex::new(ReplyState::default()),
        });
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .push(reply.clone());
        ReplyEndpoint {
            reply,
            links: self.clone(),
            key,
        }
    }

    /// The link a response to a request on `node` goes to.
    pub fn find(&self, key: (u64, u16), node: &str, reply_to: Option<&str>) -> Option<Arc<Reply>> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let links: Vec<&Arc<Reply>> = map.get(&key)?.iter().filter(|r| r.node == node).collect();
        reply_to
            .and_then(|rt| links.iter().find(|r| r.target.as_deref() == Some(rt)))
            .or_else(|| links.last())
            .map(|r| (*r).clone())
    }
}

/// The endpoint of a receiver link attached from a node.
pub struct ReplyEndpoint {
    reply: Arc<Reply>,
    links: Arc<ReplyLinks>,
    key: (u64, u16),
}

impl OutgoingLink for ReplyEndpoint {
    fn flow(&mut self, delivery_count: u32, link_credit: u32, drain: bool) {
        let mut st = self.reply.st.lock().unwrap_or_else(|e| e.into_inner());
        st.credit = (delivery_count
            .wrapping_add(link_credit)
            .wrapping_sub(st.sent) as i32)
            .max(0) as u32;
        self.reply.pump(&mut st);
        if drain {
            st.sent = st.sent.wrapping_add(st.credit);
            st.credit = 0;
            let count = st.sent;
            self.reply.outbox.send(|l| Event::Drained(l, count));
        }
    }

    fn disposition(
        &mut self,
        delivery_id: u32,
        _tag: [u8; 16],
        state: Option<DeliveryState>,
        settled: bool,
    ) {
        if !settled {
            let state = state.unwrap_or(DeliveryState::Accepted(Accepted {}));
            self.reply
                .outbox
                .send(|l| Event::Settled(l, delivery_id, state));
        }
    }
}

impl Drop for ReplyEndpoint {
    fn drop(&mut self) {
        let mut map = self.links.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = map.get_mut(&self.key) {
            v.retain(|r| !Arc::ptr_eq(r, &self.reply));
            if v.is_empty() {
                map.remove(&self.key);
            }
        }
    }
}

/// Where a node sends its answer (possibly later, once a write is durable).
pub type Respond = Box<dyn FnOnce(Bytes) + Send>;

/// Handles requests.
pub trait Node: Send + Sync {
    /// The node's address (`$cbs`, `q1/$management`), lower case.
    fn name(&self) -> &str;
    /// Answers a request through `respond`.
    fn handle(&self, req: Request, respond: Respond);
}

/// A sender link attached to a node: requests in, responses to the session's reply link.
pub struct RequestLink {
    pub node: Arc<dyn Node>,
    pub replies: Arc<ReplyLinks>,
    pub key: (u64, u16),
    pub outbox: Outbox,
}

impl IncomingLink for RequestLink {
    fn message(&mut self, delivery_id: u32, _settled: bool, _format: u32, payload: Bytes) {
        let accepted = DeliveryState::Accepted(Accepted {});
        let Some(mut req) = Request::decode(&payload) else {
            let err = ferrobus_codec::error(
                ferrobus_codec::types::definitions::AmqpError::DecodeError,
                format!("{} request is not a decodable message", self.node.name()),
            );
            let state = DeliveryState::Rejected(ferrobus_codec::types::messaging::Rejected {
                error: Some(err),
            });
            self.outbox
                .send(|l| Event::Published(l, delivery_id, state));
            return;
        };
        req.connection = self.key.0;
        match self
            .replies
            .find(self.key, self.node.name(), req.reply_to.as_deref())
        {
            Some(reply) => self
                .node
                .handle(req, Box::new(move |resp| reply.push(resp))),
            None => tracing::debug!(
                node = self.node.name(),
                "no reply link for a request; dropped"
            ),
        }
        self.outbox
            .send(|l| Event::Published(l, delivery_id, accepted));
    }
}
