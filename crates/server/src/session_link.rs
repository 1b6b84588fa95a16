//! Session receivers: a receiver link on a session entity names the session it wants in its
//! source filter (`com.microsoft:session-filter`: a session id, or null for "next available"),
//! takes that session's lock, and learns in our attach which session it got and until when.
//!
//! A named session locked by another receiver is refused at once
//! (`com.microsoft:session-cannot-be-locked`). A next-available receiver with no session to
//! take waits, without an attach reply, until one becomes available or its
//! `com.microsoft:timeout` (default 60 s) passes, then is refused with `com.microsoft:timeout`
//! (Python's `OperationTimeoutError`, JS's `ServiceTimeout`); the engine answers the attach
//! when the waiting task posts the outcome ([`Endpoint::Later`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrobus_codec::types::definitions::{ErrorCondition, Fields};
use ferrobus_codec::types::messaging::FilterSet;
use ferrobus_codec::types::performatives::Attach;
use ferrobus_codec::types::primitives::{Symbol, Value};
use ferrobus_session::{Endpoint, Event, LinkReply, Refusal};
use ferrobus_store::{Queue, ReceiveMode, SessionLock};
use tokio::sync::Notify;

use crate::consumer::ConsumerParts;
use crate::errors::{store_error, TIMEOUT};

/// The source filter that asks for a session.
pub const SESSION_FILTER: &str = "com.microsoft:session-filter";
/// The attach property that says until when the session is locked (.NET ticks).
pub const LOCKED_UNTIL_UTC: &str = "com.microsoft:locked-until-utc";
/// The attach property with how long a next-available receiver waits (ms).
pub const TIMEOUT_PROPERTY: &str = "com.microsoft:timeout";
/// How long a next-available receiver waits when it does not say.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// .NET ticks (100 ns since 0001-01-01) at the Unix epoch.
const TICKS_AT_UNIX_EPOCH: i64 = 621_355_968_000_000_000;

/// What next-available receivers wait on, one signal per session entity.
#[derive(Default)]
pub struct Waits(Mutex<HashMap<String, Arc<Notify>>>);

impl Waits {
    /// The signal of `queue`, set up with the queue on first use.
    fn of(&self, queue: &Queue) -> Arc<Notify> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(queue.name().to_ascii_lowercase())
            .or_insert_with(|| {
                let n = Arc::new(Notify::new());
                let wake = n.clone();
                queue.on_session_available(move || wake.notify_waiters());
                n
            })
            .clone()
    }
}

/// The session a receiver's attach asks for: `None` for a plain receiver, `Some(None)` for
/// the next available session, `Some(Some(id))` for a named one. The SDKs send the id as a
/// plain string (not a described value); a described one is read too.
pub fn requested(a: &Attach) -> Option<Option<String>> {
    let filter = a.source.as_ref()?.filter.as_ref()?;
    let (_, v) = filter.iter().find(|(k, _)| k.as_str() == SESSION_FILTER)?;
    let v = match v {
        Value::Described(d) => &d.value,
        v => v,
    };
    Some(match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Symbol(s) if !s.as_str().is_empty() => Some(s.as_str().to_string()),
        _ => None,
    })
}

/// How long a next-available receiver waits (its `com.microsoft:timeout`, in ms).
pub fn wait_of(a: &Attach) -> Duration {
    a.properties
        .as_ref()
        .and_then(|p| p.iter().find(|(k, _)| k.as_str() == TIMEOUT_PROPERTY))
        .and_then(|(_, v)| crate::management::int(v))
        .filter(|ms| *ms >= 0)
        .map_or(DEFAULT_WAIT, |ms| Duration::from_millis(ms as u64))
}

/// Attaches a session receiver: at once when the session can be locked (or is refused), or
/// later when it waits for the next available one.
pub fn attach(
    waits: &Waits,
    queue: &Arc<Queue>,
    which: Option<String>,
    mode: ReceiveMode,
    wait: Duration,
    parts: ConsumerParts,
) -> Result<Endpoint, Refusal> {
    match queue.accept_session(which.as_deref(), mode, parts.sink.clone()) {
        Ok(Some((handle, lock))) => Ok(Endpoint::Outgoing(Box::new(
            parts.into_consumer(handle, Some(lock)),
        ))),
        Err(e) => Err(Refusal(store_error(&e))),
        Ok(None) => {
            let notify = waits.of(queue);
            tokio::spawn(wait_for_session(queue.clone(), notify, mode, wait, parts));
            Ok(Endpoint::Later)
        }
    }
}

/// Waits for a session of `queue` to become available, takes it, and posts the answer to
/// the attach. A link that went away meanwhile drops what it is given, which releases it.
async fn wait_for_session(
    queue: Arc<Queue>,
    notify: Arc<Notify>,
    mode: ReceiveMode,
    wait: Duration,
    parts: ConsumerParts,
) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        // registered before looking, so a session that comes right after is not missed
        notified.as_mut().enable();
        if parts.outbox.is_closed() {
            return;
        }
        let outbox = parts.outbox.clone();
        match queue.accept_session(None, mode, parts.sink.clone()) {
            Ok(Some((handle, lock))) => {
                let consumer = parts.into_consumer(handle, Some(lock));
                outbox.send(|l| Event::Attached(l, Ok(Endpoint::Outgoing(Box::new(consumer)))));
                return;
            }
            Err(e) => {
                outbox.send(|l| Event::Attached(l, Err(Refusal(store_error(&e)))));
                return;
            }
            Ok(None) => {}
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {
                let error = ferrobus_codec::error(
                    ErrorCondition::Custom(Symbol::from(TIMEOUT)),
                    format!(
                        "The operation did not complete within the allotted timeout of {} ms: \
                         no session of '{}' became available",
                        wait.as_millis(),
                        queue.name()
                    ),
                );
                outbox.send(|l| Event::Attached(l, Err(Refusal(error))));
                return;
            }
        }
    }
}

/// What the attach reply of a session receiver states: the session it got (in the source
/// filter, as a plain string) and until when it holds the lock (.NET ticks, a `long`).
pub fn reply(lock: &SessionLock) -> LinkReply {
    let mut filter = FilterSet::new();
    filter.insert(
        Symbol::from(SESSION_FILTER),
        Value::String(lock.session.to_string()),
    );
    let mut properties = Fields::new();
    properties.insert(
        Symbol::from(LOCKED_UNTIL_UTC),
        Value::Long(ticks(lock.locked_until_ms)),
    );
    LinkReply {
        source_filter: Some(filter),
        properties: Some(properties),
    }
}

/// Milliseconds since the Unix epoch as .NET ticks.
pub fn ticks(unix_ms: i64) -> i64 {
    unix_ms
        .saturating_mul(10_000)
        .saturating_add(TICKS_AT_UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_count_from_year_one() {
        assert_eq!(ticks(0), TICKS_AT_UNIX_EPOCH);
        // 2024-01-01T00:00:00Z
        assert_eq!(ticks(1_704_067_200_000), 638_396_640_000_000_000);
    }
}
