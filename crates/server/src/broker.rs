//! The broker as the engine sees it: address routing, logins, and the link endpoints that
//! join AMQP links to queues.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ferrobus_codec::message::{decode_millis, Sections};
use ferrobus_codec::types::definitions::{AmqpError, Error, ErrorCondition, Role};
use ferrobus_codec::types::messaging::{Accepted, DeliveryState, Rejected, TargetArchetype};
use ferrobus_metrics::{EntityCounts, EntitySource, Metrics, SessionCounts, TopicCounts};
use ferrobus_session::{AttachRequest, Endpoint, Event, IncomingLink, Outbox, Refusal, Router};
use ferrobus_store::storage::Storage;
use ferrobus_store::{Entities, Lane, NewMessage, ReceiveMode, SendTarget, StoreError};

use crate::cbs::Grants;
use crate::config::KeyRule;
use crate::consumer::{ConsumerParts, Sink};
use crate::dest::Dest;
use crate::errors::store_error;
use crate::management::{Management, TopicManagement, SCHEDULED_ENQUEUE_TIME};
use crate::message_id;
use crate::nodes::{Node, ReplyLinks, RequestLink};

/// The address suffix of an entity's management node (matched case-insensitively).
const MANAGEMENT_SUFFIX: &str = "/$management";

/// The router: entities, key rules, request/response nodes and metrics.
pub struct Broker {
    pub entities: Entities,
    /// The storage under the entities (for `/health`).
    pub storage: Arc<dyn Storage>,
    pub keys: Arc<Vec<KeyRule>>,
    pub metrics: Arc<Metrics>,
    /// Receiver links attached from request/response nodes.
    pub replies: Arc<ReplyLinks>,
    /// The `$cbs` node.
    pub cbs: Arc<dyn Node>,
    /// Entity links need a covering token or a PLAIN login (`auth.require`).
    pub require_auth: bool,
    /// What each connection's tokens cover (written by `$cbs`).
    pub grants: Grants,
    /// Test faults: attaching to [`crate::faults::PANIC_NODE`] panics the connection task.
    pub test_panic: bool,
    /// What next-available session receivers wait on, per entity.
    pub session_waits: crate::session_link::Waits,
}

impl Router for Broker {
    fn check_plain(&self, user: &str, password: &str) -> bool {
        let ok = self
            .keys
            .iter()
            .any(|k| k.name == user && constant_time_eq(k.key.as_bytes(), password.as_bytes()));
        if !ok {
            self.metrics.auth_failures.inc();
        }
        ok
    }

    fn attach(&self, req: AttachRequest<'_>) -> Result<Endpoint, Refusal> {
        let a = req.attach;
        let peer_sends = a.role == Role::Sender;
        // the node the link leads to: the target when the peer sends, the source when it receives
        let address = if peer_sends {
            target_address(a)
        } else {
            a.source.as_deref().and_then(|s| s.address.clone())
        };
        if let Some(n) = address
            .as_deref()
            .map(ferrobus_store::registry::strip_authority)
        {
            if n.eq_ignore_ascii_case(self.cbs.name()) {
                return Ok(self.attach_node(&req, self.cbs.clone(), peer_sends));
            }
            if self.test_panic && n == crate::faults::PANIC_NODE {
                panic!("test fault: a link attached to {n}");
            }
            if self.require_auth && req.user.is_none() && !self.covered(req.connection, n) {
                self.metrics.auth_failures.inc();
                return Err(refuse(
                    AmqpError::UnauthorizedAccess,
                    format!("no token covering '{n}' was put on $cbs for this connection"),
                ));
            }
            let lower = n.trim_matches('/').to_ascii_lowercase();
            if let Some(entity) = lower.strip_suffix(MANAGEMENT_SUFFIX) {
                if let Some(topic) = self.entities.topic(entity) {
                    let node = Arc::new(TopicManagement {
                        name: lower.clone(),
                        topic: topic.clone(),
                    });
                    return Ok(self.attach_node(&req, node, peer_sends));
                }
                let resolved = self
                    .entities
                    .resolve(entity)
                    .map_err(|e| refuse(AmqpError::NotFound, e.to_string()))?;
                let subscription = self
                    .entities
                    .subscription(
                        entity.trim_end_matches(ferrobus_store::registry::DEAD_LETTER_SUFFIX),
                    )
                    .map(|(t, s)| (t.clone(), s.clone()));
                let send = self
                    .send_target(entity)
                    .unwrap_or(Dest::Queue(resolved.queue.clone()));
                let node = Arc::new(Management {
                    name: lower.clone(),
                    queue: resolved.queue,
                    lane: resolved.lane,
                    subscription,
                    send,
                });
                return Ok(self.attach_node(&req, node, peer_sends));
            }
        }
        let Some(address) = address.filter(|a| !a.is_empty()) else {
            return Err(refuse(
                AmqpError::InvalidField,
                "the link has no address".into(),
            ));
        };
        if let Some(topic) = self.entities.topic(&address) {
            if !peer_sends {
                return Err(refuse(
                    AmqpError::NotAllowed,
                    format!(
                        "'{address}' is a topic: receive from one of its subscriptions, \
                         '{}/Subscriptions/<name>'",
                        topic.name()
                    ),
                ));
            }
            self.metrics.links.inc();
            return Ok(Endpoint::Incoming(Box::new(Producer {
                dest: Dest::Topic(topic.clone()),
                session_required_by: None,
                outbox: req.outbox,
                metrics: self.metrics.clone(),
                pending: Vec::new(),
                _gauge: LinkGauge(self.metrics.clone()),
            })));
        }
        let resolved = self
            .entities
            .resolve(&address)
            .map_err(|e| refuse(AmqpError::NotFound, e.to_string()))?;
        if peer_sends {
            if resolved.lane == Lane::DeadLetter {
                return Err(refuse(
                    AmqpError::NotAllowed,
                    format!("'{address}' is a dead-letter queue; messages cannot be sent to it"),
                ));
            }
            if resolved.queue.is_subscription() {
                return Err(refuse(
                    AmqpError::NotAllowed,
                    format!("'{address}' is a subscription; send to its topic instead"),
                ));
            }
        }
        let send_to = self.send_target(&address);
        self.metrics.links.inc();
        let guard = LinkGauge(self.metrics.clone());
        if peer_sends {
            // a session queue that forwards still wants a session id on what is sent to it
            let session_required_by = (send_to.is_some() && resolved.queue.requires_session())
                .then(|| resolved.queue.name().to_string());
            Ok(Endpoint::Incoming(Box::new(Producer {
                dest: send_to.unwrap_or(Dest::Queue(resolved.queue)),
                session_required_by,
                outbox: req.outbox,
                metrics: self.metrics.clone(),
                pending: Vec::new(),
                _gauge: guard,
            })))
        } else {
            let mode = if req.presettled {
                ReceiveMode::ReceiveAndDelete
            } else {
                ReceiveMode::PeekLock
            };
            // a session entity's queue takes session receivers only; its dead-letter queue
            // and every other entity, plain receivers only
            let wanted = crate::session_link::requested(a);
            let sessionful = resolved.lane == Lane::Main && resolved.queue.requires_session();
            match (sessionful, &wanted) {
                (true, None) => {
                    return Err(refuse(
                        AmqpError::NotAllowed,
                        "It is not possible for an entity that requires sessions to create a \
                     non-sessionful message receiver."
                            .into(),
                    ))
                }
                (false, Some(_)) => {
                    return Err(refuse(
                        AmqpError::NotAllowed,
                        format!(
                            "'{address}' does not require sessions: a session receiver cannot be \
                         created on it"
                        ),
                    ))
                }
                _ => {}
            }
            let inflight = Arc::new(Mutex::new(HashMap::new()));
            let parts = ConsumerParts {
                sink: Arc::new(Sink {
                    outbox: req.outbox.clone(),
                    metrics: self.metrics.clone(),
                    inflight: inflight.clone(),
                }),
                outbox: req.outbox,
                metrics: self.metrics.clone(),
                inflight,
                gauge: guard,
            };
            if let Some(which) = wanted {
                return crate::session_link::attach(
                    &self.session_waits,
                    &resolved.queue,
                    which,
                    mode,
                    crate::session_link::wait_of(a),
                    parts,
                );
            }
            let handle = resolved
                .queue
                .add_consumer(resolved.lane, mode, parts.sink.clone());
            Ok(Endpoint::Outgoing(Box::new(
                parts.into_consumer(handle, None),
            )))
        }
    }

    fn connection_opened(&self) {
        self.metrics.connections_total.inc();
        self.metrics.connections.inc();
    }

    fn connection_closed(&self, connection: u64) {
        self.grants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&connection);
        self.metrics.connections.dec();
    }

    fn session_begun(&self) {
        self.metrics.sessions.inc();
    }

    fn session_ended(&self) {
        self.metrics.sessions.dec();
    }
}

impl Broker {
    /// A link to or from a request/response node.
    fn attach_node(
        &self,
        req: &AttachRequest<'_>,
        node: Arc<dyn Node>,
        peer_sends: bool,
    ) -> Endpoint {
        let key = (req.connection, req.session);
        if peer_sends {
            Endpoint::Incoming(Box::new(RequestLink {
                node,
                replies: self.replies.clone(),
                key,
                outbox: req.outbox.clone(),
            }))
        } else {
            let target = target_address(req.attach);
            Endpoint::Outgoing(Box::new(self.replies.attach(
                key,
                node.name(),
                target,
                req.outbox.clone(),
            )))
        }
    }

    /// Where messages sent to `address` are stored (the end of a queue's forwarding chain).
    fn send_target(&self, address: &str) -> Option<Dest> {
        self.entities.send_target(address).map(|t| match t {
            SendTarget::Queue(q) => Dest::Queue(q),
            SendTarget::Topic(t) => Dest::Topic(t),
        })
    }

    /// True if a token put on this connection covers `address` (its path, any case): the
    /// token's path is the address or a parent of it.
    fn covered(&self, connection: u64, address: &str) -> bool {
        let path = address.trim_matches('/').to_ascii_lowercase();
        let grants = self.grants.lock().unwrap_or_else(|e| e.into_inner());
        grants.get(&connection).is_some_and(|scopes| {
            scopes
                .iter()
                .any(|s| s.is_empty() || path == *s || path.starts_with(&format!("{s}/")))
        })
    }

    /// Ends the locks that expired by now, releases scheduled messages that are due and
    /// expires messages, in every queue; then forwards what dead-letter sub-queues that
    /// forward hold (including what those steps just dead-lettered).
    pub fn sweep(&self) {
        let now = ferrobus_store::now_ms();
        for q in self.entities.queues() {
            q.expire_locks(now);
            q.release_due(now);
            q.expire_messages(now);
        }
        self.entities.forward_dead_letters();
        for t in self.entities.topics() {
            t.sweep(now);
        }
    }
}

impl EntitySource for Broker {
    fn storage_failure(&self) -> Option<String> {
        self.storage.failure().map(|e| e.to_string())
    }

    fn topic_counts(&self) -> Vec<TopicCounts> {
        self.entities
            .topics()
            .map(|t| {
                let s = t.stats();
                TopicCounts {
                    name: t.name().to_string(),
                    published: s.published,
                    copies: s.copies,
                    filter_seconds: s.filter_seconds,
                }
            })
            .collect()
    }

    fn entity_counts(&self) -> Vec<EntityCounts> {
        self.entities
            .queues()
            .map(|q| {
                let s = q.stats();
                EntityCounts {
                    name: q.name().to_string(),
                    active: s.active,
                    locked: s.locked,
                    deferred: s.deferred,
                    dead_lettered: s.dead_lettered,
                    bytes: s.bytes,
                    scheduled: s.scheduled,
                    expired_total: s.expired_total,
                    sessions: q.requires_session().then_some(SessionCounts {
                        available: s.sessions_available,
                        locked: s.sessions_locked,
                        locks_lost_total: s.session_locks_lost,
                    }),
                }
            })
            .collect()
    }
}

/// The address of an attach's target, if it has one.
fn target_address(a: &ferrobus_codec::types::performatives::Attach) -> Option<String> {
    a.target.as_deref().and_then(|t| match t {
        TargetArchetype::Target(t) => t.address.clone(),
        #[allow(unreachable_patterns)]
        _ => None,
    })
}

fn refuse(c: impl Into<ErrorCondition>, text: String) -> Refusal {
    Refusal(ferrobus_codec::error(c, text))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Keeps the links gauge right: one per live endpoint.
pub(crate) struct LinkGauge(pub Arc<Metrics>);

impl Drop for LinkGauge {
    fn drop(&mut self) {
        self.0.links.dec();
    }
}

/// A transfer's messages and size, or why it is refused.
type Unpacked = Result<(Vec<NewMessage>, u64), Error>;

/// A producer link into a queue or a topic.
struct Producer {
    dest: Dest,
    /// The session queue the link is attached to, when it forwards elsewhere (`dest`): its
    /// messages still need a session id (the destination itself checks the rest).
    session_required_by: Option<String>,
    outbox: Outbox,
    metrics: Arc<Metrics>,
    /// The messages of the current read, stored together at its end: each transfer's
    /// delivery id, messages and size, or why it is refused.
    pending: Vec<(u32, Unpacked)>,
    _gauge: LinkGauge,
}

impl IncomingLink for Producer {
    fn message(&mut self, delivery_id: u32, _settled: bool, message_format: u32, payload: Bytes) {
        let with_id = self.dest.detects_duplicates();
        let items = unpack(message_format, &payload, with_id).and_then(|i| {
            match &self.session_required_by {
                Some(q) if i.iter().any(|m| m.session_id.is_none()) => Err(ferrobus_codec::error(
                    AmqpError::NotAllowed,
                    format!(
                        "the message has no SessionId, and '{q}' requires sessions: every \
                         message sent to it must have its SessionId set"
                    ),
                )),
                _ => Ok((i, payload.len() as u64)),
            }
        });
        self.pending.push((delivery_id, items));
    }

    fn messages_end(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut groups = Vec::with_capacity(self.pending.len());
        // per transfer: delivery id, message count and bytes, or the refusal
        let mut each = Vec::with_capacity(self.pending.len());
        for (id, r) in self.pending.drain(..) {
            match r {
                Ok((items, len)) => {
                    each.push((id, Ok((items.len() as u64, len))));
                    groups.push(items);
                }
                Err(e) => each.push((id, Err(e))),
            }
        }
        let outbox = self.outbox.clone();
        let metrics = self.metrics.clone();
        let handed = groups.len();
        let published = move |stored: Result<Vec<Result<Vec<u64>, StoreError>>, StoreError>| {
            // one outcome per transfer handed to the queue
            let stored: Vec<Result<(), StoreError>> = match stored {
                Ok(v) => v.into_iter().map(|r| r.map(drop)).collect(),
                Err(e) => vec![Err(e); handed],
            };
            let mut stored = stored.into_iter();
            for (id, r) in each {
                let state = match r {
                    Err(refused) => rejected(refused),
                    Ok((count, len)) => match stored.next().unwrap_or_else(|| {
                        Err(StoreError::Storage("no outcome for a transfer".into()))
                    }) {
                        Ok(()) => {
                            metrics.messages_in.inc_by(count);
                            metrics.bytes_in.inc_by(len);
                            DeliveryState::Accepted(Accepted {})
                        }
                        Err(e) => rejected(store_error(&e)),
                    },
                };
                outbox.send(|l| Event::Published(l, id, state));
            }
        };
        if groups.is_empty() {
            return published(Ok(Vec::new()));
        }
        self.dest.enqueue_each(groups, Box::new(published));
    }
}

/// Service Bus batches: one data section per inner message.
const BATCH_FORMAT: u32 = 0x8001_3700;

/// The messages a transfer carries (one, or a batch's inner messages, enqueued atomically),
/// with what the queue needs to know of each: its scheduled time, its time to live, and (when
/// the queue detects duplicates) its message-id.
fn unpack(format: u32, payload: &Bytes, with_id: bool) -> Result<Vec<NewMessage>, Error> {
    let decode_error = |what: String| ferrobus_codec::error(AmqpError::DecodeError, what);
    let scheduled = |p: &Bytes| -> Result<NewMessage, Error> {
        let s = Sections::scan(p).map_err(|e| decode_error(format!("malformed message: {e}")))?;
        let (p, s) = match message_id::assign(p, &s) {
            Ok(Some((rewritten, s))) => (rewritten, s),
            Ok(None) => (p.clone(), s),
            Err(e) => return Err(decode_error(format!("malformed properties: {e}"))),
        };
        let p = &p;
        let header = s
            .header(p)
            .map_err(|e| decode_error(format!("malformed header: {e}")))?;
        Ok(NewMessage {
            payload: p.clone(),
            scheduled_ms: s
                .annotation(p, SCHEDULED_ENQUEUE_TIME)
                .and_then(decode_millis),
            ttl_ms: header.and_then(|h| h.ttl).filter(|t| *t > 0).map(u64::from),
            message_id: if with_id {
                message_id::dedup_key(p, &s)
            } else {
                None
            },
            dead_lettered: None,
            session_id: s.group_id(p).map(Arc::from),
        })
    };
    match format {
        0 => Ok(vec![scheduled(payload)?]),
        BATCH_FORMAT => {
            let s = Sections::scan(payload)
                .map_err(|e| decode_error(format!("malformed batch: {e}")))?;
            let inner = s
                .data_sections(payload)
                .map_err(|e| decode_error(format!("malformed batch: {e}")))?;
            if inner.is_empty() {
                return Err(decode_error("an empty batch".into()));
            }
            inner
                .into_iter()
                .map(|m| scheduled(&payload.slice_ref(m)))
                .collect()
        }
        other => Err(ferrobus_codec::error(
            AmqpError::NotImplemented,
            format!("message-format {other:#x} is not supported"),
        )),
    }
}

pub(crate) fn rejected(error: Error) -> DeliveryState {
    DeliveryState::Rejected(Rejected { error: Some(error) })
}
