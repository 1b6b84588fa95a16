//! The session operations of a session entity's `$management` node: renew a session's lock,
//! get and set its state, list the sessions that have messages or state.
//!
//! Session state is the client's bytes, stored as they come (durable before the answer); its
//! size is bounded by the request that carries it, which `amqp.max_message_size` bounds.

use std::sync::Arc;

use bytes::Bytes;
use ferrobus_codec::types::primitives::{Array, Timestamp, Value};
use ferrobus_store::Queue;

use crate::management::{field, from_store, int, map, text, Failure, Reply};

/// The operations this module answers.
pub(crate) const OPERATIONS: &[&str] = &[
    "com.microsoft:renew-session-lock",
    "com.microsoft:get-session-state",
    "com.microsoft:set-session-state",
    "com.microsoft:get-message-sessions",
];

/// The `last-updated-time` that means "every session with messages or state" (10000-01-01).
const ANY_TIME_MS: i64 = 253_402_300_800_000;

/// At most this many session ids per `get-message-sessions` answer.
const MAX_TOP: i64 = 1000;

/// Answers one session operation on `queue`.
pub(crate) fn handle(op: &str, queue: &Arc<Queue>, body: &Value, reply: Reply) {
    let listing = op == "com.microsoft:get-message-sessions";
    if !queue.requires_session() {
        if listing {
            // an entity without sessions has none to list
            return reply(Ok(None));
        }
        return reply(Err(Failure(
            400,
            "amqp:not-allowed",
            format!(
                "'{}' does not require sessions: it has no session operations",
                queue.name()
            ),
        )));
    }
    if listing {
        return reply(message_sessions(queue, body));
    }
    let Some(session) = text(field(body, "session-id")) else {
        return reply(Err(Failure::bad("session-id must be a non-empty string")));
    };
    match op {
        "com.microsoft:renew-session-lock" => reply(
            queue
                .renew_session_lock(&session)
                .map(|until| {
                    Some(map(vec![(
                        "expiration",
                        Value::Timestamp(Timestamp::from_milliseconds(until)),
                    )]))
                })
                .map_err(from_store),
        ),
        "com.microsoft:get-session-state" => reply(
            queue
                .session_state(&session)
                .map(|state| {
                    let v = match state {
                        Some(b) => Value::Binary(b.to_vec().into()),
                        None => Value::Null,
                    };
                    Some(map(vec![("session-state", v)]))
                })
                .map_err(from_store),
        ),
        _ => {
            let state = match field(body, "session-state") {
                None | Some(Value::Null) => None,
                Some(Value::Binary(b)) => Some(Bytes::copy_from_slice(b)),
                // a client that sends text means its bytes (JS stringifies non-binary state)
                Some(Value::String(s)) => Some(Bytes::copy_from_slice(s.as_bytes())),
                Some(_) => return reply(Err(Failure::bad("session-state must be binary or null"))),
            };
            queue.set_session_state(
                &session,
                state,
                Box::new(move |r| reply(r.map(|()| Some(map(vec![]))).map_err(from_store))),
            );
        }
    }
}

/// `get-message-sessions`: the ids of the sessions with messages or state (or, with a
/// `last-updated-time`, of those whose state was set after it), paged with `skip` / `top`;
/// 204 when there are none.
fn message_sessions(queue: &Queue, body: &Value) -> Result<Option<Value>, Failure> {
    let skip = field(body, "skip").and_then(int).unwrap_or(0).max(0);
    let top = field(body, "top")
        .and_then(int)
        .unwrap_or(100)
        .clamp(1, MAX_TOP);
    // Python's "any time" is the year 10000; a time before that asks for the sessions whose
    // state was set after it
    let after = match field(body, "last-updated-time") {
        Some(Value::Timestamp(t)) => Some(t.milliseconds()),
        Some(v) => int(v),
        None => None,
    }
    .filter(|ms| *ms < ANY_TIME_MS);
    let ids = queue
        .message_sessions(after, skip as usize, top as usize)
        .map_err(from_store)?;
    if ids.is_empty() {
        return Ok(None);
    }
    Ok(Some(map(vec![
        ("skip", Value::Int((skip as usize + ids.len()) as i32)),
        (
            "sessions-ids",
            Value::Array(Array(ids.into_iter().map(Value::String).collect())),
        ),
    ])))
}
