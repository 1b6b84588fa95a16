//! The `$management` node of a queue (`<queue>/$management`, `<queue>/$DeadLetterQueue/$management`):
//! the request/response operations the Service Bus SDKs send.
//!
//! Responses carry `statusCode`, `statusDescription` and, on failure, `errorCondition`
//! (without it Python retries a failure as a generic error); bodies are amqp-value maps with
//! string keys.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ferrobus_codec::message::{decode_millis, Sections};
use ferrobus_codec::types::messaging::MessageId;
use ferrobus_codec::types::primitives::{
    Array, OrderedMap, SimpleValue, Symbol, Timestamp, Uuid, Value,
};
use ferrobus_store::{Lane, Outcome, Queue, StoreError, Subscription, Topic};

use crate::dest::Dest;

use crate::encode::Stamp;
use crate::nodes::{response, Node, Request, Respond};

use crate::errors::{
    ENTITY_EXISTS, MESSAGE_LOCK_LOST as LOCK_LOST, MESSAGE_NOT_FOUND, SESSION_CANNOT_BE_LOCKED,
    SESSION_LOCK_LOST,
};
/// The annotation that schedules a message.
pub const SCHEDULED_ENQUEUE_TIME: &str = "x-opt-scheduled-enqueue-time";

/// One queue lane's management node (a subscription's too, which also manages its rules).
pub struct Management {
    pub name: String,
    pub queue: Arc<Queue>,
    pub lane: Lane,
    /// The subscription and its topic, when the queue is one.
    pub subscription: Option<(Arc<Topic>, Arc<Subscription>)>,
    /// Where scheduled messages go: the queue, or the end of its forwarding chain.
    pub send: Dest,
}

/// A failed operation: status code, AMQP condition, description.
pub(crate) struct Failure(pub i32, pub &'static str, pub String);

impl Failure {
    pub(crate) fn bad(text: impl Into<String>) -> Self {
        Failure(400, "amqp:invalid-field", text.into())
    }
}

pub(crate) fn from_store(e: StoreError) -> Failure {
    match e {
        StoreError::LockLost => Failure(410, LOCK_LOST, e.to_string()),
        StoreError::NotFound(t) => Failure(404, MESSAGE_NOT_FOUND, t),
        StoreError::EntityExists(t) => Failure(409, ENTITY_EXISTS, t),
        StoreError::EntityNotFound(t) => Failure(404, "amqp:not-found", t),
        StoreError::Full(t) => Failure(403, "amqp:resource-limit-exceeded", t),
        StoreError::NotAllowed(t) => Failure(400, "amqp:not-allowed", t),
        StoreError::SessionLockLost(t) => Failure(410, SESSION_LOCK_LOST, t),
        StoreError::SessionCannotBeLocked(t) => Failure(410, SESSION_CANNOT_BE_LOCKED, t),
        other => Failure(500, "amqp:internal-error", other.to_string()),
    }
}

impl Node for Management {
    fn name(&self) -> &str {
        &self.name
    }

    fn handle(&self, req: Request, respond: Respond) {
        let reply = replier(req.message_id.clone(), respond);
        let op = req.text("operation").unwrap_or("").to_string();
        let body = &req.body;
        match op.as_str() {
            "com.microsoft:renew-lock" => reply(self.renew_lock(body)),
            "com.microsoft:peek-message" => reply(self.peek(body)),
            "com.microsoft:receive-by-sequence-number" => reply(self.receive_by_sequence(body)),
            "com.microsoft:update-disposition" => self.update_disposition(body, reply),
            "com.microsoft:schedule-message" => self.schedule(body, reply),
            "com.microsoft:cancel-scheduled-message" => self.cancel_scheduled(body, reply),
            op if crate::session_ops::OPERATIONS.contains(&op) => {
                crate::session_ops::handle(op, &self.queue, body, reply)
            }
            "com.microsoft:add-rule"
            | "com.microsoft:remove-rule"
            | "com.microsoft:enumerate-rules" => match &self.subscription {
                Some((topic, sub)) => crate::rule_ops::handle(&op, topic, sub, body, reply),
                None => reply(Err(Failure(
                    400,
                    "amqp:not-allowed",
                    format!(
                        "'{}' is not a subscription: rules belong to subscriptions",
                        self.name
                    ),
                ))),
            },
            other => reply(Err(Failure(
                501,
                "amqp:not-implemented",
                format!("management operation '{other}' is not supported"),
            ))),
        }
    }
}

pub(crate) type Reply = Box<dyn FnOnce(Result<Option<Value>, Failure>) + Send>;

/// Answers a request: 200 with a body, 204 without, or the failure's status and condition.
fn replier(id: Option<MessageId>, respond: Respond) -> Reply {
    Box::new(move |r| {
        respond(match r {
            Ok(Some(body)) => response(id, status(200, "OK".into(), None), body),
            Ok(None) => response(id, status(204, "No Content".into(), None), Value::Null),
            Err(Failure(code, cond, text)) => {
                response(id, status(code, text, Some(cond)), Value::Null)
            }
        })
    })
}

fn status(code: i32, text: String, condition: Option<&str>) -> Vec<(&'static str, SimpleValue)> {
    let mut v = vec![
        ("statusCode", SimpleValue::Int(code)),
        ("statusDescription", SimpleValue::String(text)),
    ];
    if let Some(c) = condition {
        v.push(("errorCondition", SimpleValue::Symbol(Symbol::from(c))));
    }
    v
}

pub(crate) fn field<'a>(body: &'a Value, key: &str) -> Option<&'a Value> {
    let Value::Map(m) = body else { return None };
    m.iter()
        .find(|(k, _)| {
            matches!(k, Value::String(s) if s == key)
                || matches!(k, Value::Symbol(s) if s.as_str() == key)
        })
        .map(|(_, v)| v)
}

fn items(v: Option<&Value>) -> Vec<&Value> {
    match v {
        Some(Value::Array(Array(a))) | Some(Value::List(a)) => a.iter().collect(),
        Some(other) => vec![other],
        None => vec![],
    }
}

pub(crate) fn int(v: &Value) -> Option<i64> {
    Some(match v {
        Value::Long(x) => *x,
        Value::Int(x) => *x as i64,
        Value::Short(x) => *x as i64,
        Value::Byte(x) => *x as i64,
        Value::Ulong(x) => i64::try_from(*x).ok()?,
        Value::Uint(x) => *x as i64,
        Value::Ushort(x) => *x as i64,
        Value::Ubyte(x) => *x as i64,
        _ => return None,
    })
}

pub(crate) fn text(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Symbol(s)) if !s.as_str().is_empty() => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn lock_tokens(body: &Value) -> Result<Vec<[u8; 16]>, Failure> {
    let tokens: Option<Vec<[u8; 16]>> = items(field(body, "lock-tokens"))
        .into_iter()
        .map(|v| match v {
            Value::Uuid(u) => Some(*u.as_inner()),
            _ => None,
        })
        .collect();
    match tokens {
        Some(t) if !t.is_empty() => Ok(t),
        _ => Err(Failure::bad("lock-tokens must be an array of uuid")),
    }
}

fn sequence_numbers(body: &Value) -> Result<Vec<u64>, Failure> {
    let seqs: Option<Vec<u64>> = items(field(body, "sequence-numbers"))
        .into_iter()
        .map(|v| int(v).and_then(|n| u64::try_from(n).ok()))
        .collect();
    match seqs {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(Failure::bad("sequence-numbers must be an array of long")),
    }
}

pub(crate) fn map(pairs: Vec<(&str, Value)>) -> Value {
    let mut m = OrderedMap::new();
    for (k, v) in pairs {
        m.insert(Value::String(k.to_string()), v);
    }
    Value::Map(m)
}

/// Waits for several store completions and answers once, with the first failure if any.
fn join(
    n: usize,
    reply: Reply,
    ok: Value,
) -> impl Fn(Result<(), StoreError>) + Send + Sync + Clone {
    let state = Arc::new(Mutex::new((n, None::<StoreError>, Some((reply, ok)))));
    move |r: Result<(), StoreError>| {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = r {
            s.1.get_or_insert(e);
        }
        s.0 -= 1;
        if s.0 == 0 {
            if let Some((reply, ok)) = s.2.take() {
                match s.1.take() {
                    Some(e) => reply(Err(from_store(e))),
                    None => reply(Ok(Some(ok))),
                }
            }
        }
    }
}

impl Management {
    fn renew_lock(&self, body: &Value) -> Result<Option<Value>, Failure> {
        let mut expirations = Vec::new();
        for t in lock_tokens(body)? {
            let until = self.queue.renew_lock(t).map_err(from_store)?;
            expirations.push(Value::Timestamp(Timestamp::from_milliseconds(until)));
        }
        Ok(Some(map(vec![(
            "expirations",
            Value::Array(Array(expirations)),
        )])))
    }

    fn peek(&self, body: &Value) -> Result<Option<Value>, Failure> {
        let from = field(body, "from-sequence-number")
            .and_then(int)
            .unwrap_or(1)
            .max(1) as u64;
        let count = field(body, "message-count")
            .and_then(int)
            .unwrap_or(1)
            .clamp(1, 1000) as usize;
        // a session receiver peeks its session
        let session = text(field(body, "session-id"));
        let peeked = self
            .queue
            .peek_in(self.lane, session.as_deref(), from, count)
            .map_err(from_store)?;
        if peeked.is_empty() {
            return Ok(None);
        }
        let messages = peeked
            .iter()
            .filter_map(|p| {
                let stamp = Stamp {
                    seq: p.message.seq,
                    ttl_ms: crate::consumer::ttl_of(&p.message),
                    enqueued_ms: p.message.enqueued_ms,
                    state: p.state as i32,
                    locked_until_ms: p.locked_until_ms,
                    dead_letter_reason: p.dead_letter_reason.as_deref(),
                    dead_letter_description: p.dead_letter_description.as_deref(),
                    dead_letter_source: p.dead_letter_source.as_deref(),
                };
                let bytes = stamp.encode(&p.message.payload, p.delivery_count)?;
                Some(map(vec![("message", Value::Binary(bytes.to_vec().into()))]))
            })
            .collect();
        Ok(Some(map(vec![("messages", Value::List(messages))])))
    }

    fn receive_by_sequence(&self, body: &Value) -> Result<Option<Value>, Failure> {
        let seqs = sequence_numbers(body)?;
        // 0 = receive-and-delete, 1 = peek-lock
        let peek_lock = field(body, "receiver-settle-mode")
            .and_then(int)
            .unwrap_or(1)
            != 0;
        let session = text(field(body, "session-id"));
        let got = self
            .queue
            .receive_deferred_in(session.as_deref(), &seqs, peek_lock)
            .map_err(from_store)?;
        let messages = got
            .iter()
            .filter_map(|d| {
                let stamp = Stamp {
                    seq: d.message.seq,
                    ttl_ms: crate::consumer::ttl_of(&d.message),
                    enqueued_ms: d.message.enqueued_ms,
                    state: 1,
                    locked_until_ms: d.locked_until_ms,
                    dead_letter_reason: d.dead_letter_reason.as_deref(),
                    dead_letter_description: d.dead_letter_description.as_deref(),
                    dead_letter_source: d.dead_letter_source.as_deref(),
                };
                let bytes = stamp.encode(&d.message.payload, d.delivery_count)?;
                let mut pairs = vec![("message", Value::Binary(bytes.to_vec().into()))];
                if let Some(lock) = d.lock {
                    pairs.push(("lock-token", Value::Uuid(Uuid::from(lock))));
                }
                Some(map(pairs))
            })
            .collect();
        Ok(Some(map(vec![("messages", Value::List(messages))])))
    }

    fn update_disposition(&self, body: &Value, reply: Reply) {
        let tokens = match lock_tokens(body) {
            Ok(t) => t,
            Err(f) => return reply(Err(f)),
        };
        let outcome = match text(field(body, "disposition-status")).as_deref() {
            Some("completed") => Outcome::Complete,
            Some("abandoned") => Outcome::Abandon,
            Some("defered") | Some("deferred") => Outcome::Defer,
            Some("suspended") => Outcome::DeadLetter {
                reason: text(field(body, "deadletter-reason")),
                description: text(field(body, "deadletter-description")),
            },
            other => {
                return reply(Err(Failure::bad(format!(
                    "disposition-status {other:?} is unknown"
                ))))
            }
        };
        let done = join(tokens.len(), reply, map(vec![]));
        for t in tokens {
            let done = done.clone();
            self.queue.settle_lock(t, outcome.clone(), Box::new(done));
        }
    }

    fn schedule(&self, body: &Value, reply: Reply) {
        match scheduled_items(body) {
            // a session queue that forwards: the messages still need a session id
            Ok(items)
                if self.queue.requires_session()
                    && items.iter().any(|m| m.session_id.is_none()) =>
            {
                reply(Err(from_store(self.queue.session_required())))
            }
            Ok(items) => schedule_into(&self.send, items, reply),
            Err(f) => reply(Err(f)),
        }
    }

    fn cancel_scheduled(&self, body: &Value, reply: Reply) {
        cancel_in(&self.send, body, reply)
    }
}

/// A topic's management node (`<topic>/$management`): scheduling and cancelling; a topic has
/// no messages of its own to peek or lock.
pub struct TopicManagement {
    pub name: String,
    pub topic: Arc<Topic>,
}

impl Node for TopicManagement {
    fn name(&self) -> &str {
        &self.name
    }

    fn handle(&self, req: Request, respond: Respond) {
        let reply = replier(req.message_id.clone(), respond);
        let dest = Dest::Topic(self.topic.clone());
        match req.text("operation").unwrap_or("") {
            "com.microsoft:schedule-message" => match scheduled_items(&req.body) {
                Ok(items) => schedule_into(&dest, items, reply),
                Err(f) => reply(Err(f)),
            },
            "com.microsoft:cancel-scheduled-message" => cancel_in(&dest, &req.body, reply),
            other => reply(Err(Failure(
                501,
                "amqp:not-implemented",
                format!("management operation '{other}' is not supported on a topic (use one of its subscriptions)"),
            ))),
        }
    }
}

/// The messages of a schedule-message request, each with its message-id assigned.
fn scheduled_items(body: &Value) -> Result<Vec<ferrobus_store::NewMessage>, Failure> {
    let mut items = Vec::new();
    for m in items_of(body) {
        let Some(Value::Binary(b)) = field(m, "message") else {
            return Err(Failure::bad(
                "each scheduled message needs a binary 'message'",
            ));
        };
        let payload = Bytes::copy_from_slice(b);
        let bad = || Failure::bad("a scheduled message does not decode");
        let Ok(sections) = Sections::scan(&payload) else {
            return Err(bad());
        };
        let (payload, sections) = match crate::message_id::assign(&payload, &sections) {
            Ok(Some(assigned)) => assigned,
            Ok(None) => (payload, sections),
            Err(_) => return Err(bad()),
        };
        let at = sections
            .annotation(&payload, SCHEDULED_ENQUEUE_TIME)
            .and_then(decode_millis);
        let ttl = sections
            .header(&payload)
            .ok()
            .flatten()
            .and_then(|h| h.ttl)
            .filter(|t| *t > 0);
        // the message's own SessionId, else the request's `session-id`
        let session = sections
            .group_id(&payload)
            .map(Arc::from)
            .or_else(|| text(field(m, "session-id")).map(Arc::from));
        items.push(ferrobus_store::NewMessage {
            payload,
            scheduled_ms: at,
            ttl_ms: ttl.map(u64::from),
            message_id: None,
            dead_lettered: None,
            session_id: session,
        });
    }
    if items.is_empty() {
        return Err(Failure::bad("messages must list at least one message"));
    }
    Ok(items)
}

/// Stores scheduled messages and answers with their sequence numbers.
fn schedule_into(dest: &Dest, items: Vec<ferrobus_store::NewMessage>, reply: Reply) {
    dest.enqueue_each(
        vec![items],
        Box::new(
            move |r| match r.and_then(|mut each| each.pop().expect("one group")) {
                Ok(seqs) => {
                    let seqs = seqs.into_iter().map(|s| Value::Long(s as i64)).collect();
                    reply(Ok(Some(map(vec![(
                        "sequence-numbers",
                        Value::Array(Array(seqs)),
                    )]))))
                }
                Err(e) => reply(Err(from_store(e))),
            },
        ),
    );
}

/// Cancels the scheduled messages a request names.
fn cancel_in(dest: &Dest, body: &Value, reply: Reply) {
    let seqs = match sequence_numbers(body) {
        Ok(s) => s,
        Err(f) => return reply(Err(f)),
    };
    dest.cancel_scheduled(
        &seqs,
        Box::new(move |r| match r {
            Ok(()) => reply(Ok(Some(map(vec![])))),
            Err(e) => reply(Err(from_store(e))),
        }),
    );
}

fn items_of(body: &Value) -> Vec<&Value> {
    items(field(body, "messages"))
}
