//! What a topic's filters see of a message: its properties and application properties,
//! decoded once per published message (not once per subscription) from the producer's bytes.

use bytes::Bytes;
use ferrobus_codec::message::{decode_millis, Sections};
use ferrobus_codec::types::messaging::{ApplicationProperties, MessageId, Properties};
use ferrobus_codec::types::primitives::SimpleValue;
use ferrobus_filter::{format_uuid, names_equal, Message, SystemProperty, Value};
use ferrobus_store::MessageView;

use crate::management::SCHEDULED_ENQUEUE_TIME;

/// The view the store's topics use: nothing is decoded until a filter asks for a property
/// (a topic whose subscriptions all take everything decodes nothing).
pub fn view() -> MessageView {
    std::sync::Arc::new(|payload: &Bytes| {
        Box::new(Lazy {
            payload: payload.clone(),
            decoded: std::sync::OnceLock::new(),
        })
    })
}

struct Lazy {
    payload: Bytes,
    decoded: std::sync::OnceLock<View>,
}

impl Lazy {
    fn get(&self) -> &View {
        self.decoded.get_or_init(|| View::new(&self.payload))
    }
}

impl Message for Lazy {
    fn system(&self, property: SystemProperty) -> Option<Value> {
        self.get().system(property)
    }

    fn user(&self, name: &str) -> Option<Value> {
        self.get().user(name)
    }
}

/// One message's properties. A section that does not decode reads as absent (the message
/// was checked on its way in, so that does not happen for a stored message).
#[derive(Default)]
pub struct View {
    properties: Option<Properties>,
    user: Vec<(String, Value)>,
    ttl_ms: Option<u32>,
    scheduled_ms: Option<i64>,
}

impl View {
    pub fn new(payload: &Bytes) -> View {
        let Ok(s) = Sections::scan(payload) else {
            return View::default();
        };
        let properties = s.properties.as_ref().and_then(|r| {
            ferrobus_codec::decode::<Properties>(&payload[r.clone()], "properties").ok()
        });
        let user = s
            .application_properties
            .as_ref()
            .and_then(|r| {
                ferrobus_codec::decode::<ApplicationProperties>(
                    &payload[r.clone()],
                    "application-properties",
                )
                .ok()
            })
            .map(|ap| ap.0.into_iter().map(|(k, v)| (k, value(v))).collect())
            .unwrap_or_default();
        let ttl_ms = s.header(payload).ok().flatten().and_then(|h| h.ttl);
        let scheduled_ms = s
            .annotation(payload, SCHEDULED_ENQUEUE_TIME)
            .and_then(decode_millis);
        View {
            properties,
            user,
            ttl_ms,
            scheduled_ms,
        }
    }
}

fn id_text(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => s.clone(),
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => format_uuid(&<[u8; 16]>::from(u.clone())),
        MessageId::Binary(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

fn value(v: SimpleValue) -> Value {
    match v {
        SimpleValue::Null => Value::Null,
        SimpleValue::Bool(b) => Value::Bool(b),
        SimpleValue::Ubyte(n) => Value::Long(n.into()),
        SimpleValue::Ushort(n) => Value::Long(n.into()),
        SimpleValue::Uint(n) => Value::Long(n.into()),
        SimpleValue::Ulong(n) => match i64::try_from(n) {
            Ok(n) => Value::Long(n),
            Err(_) => Value::Double(n as f64),
        },
        SimpleValue::Byte(n) => Value::Long(n.into()),
        SimpleValue::Short(n) => Value::Long(n.into()),
        SimpleValue::Int(n) => Value::Long(n.into()),
        SimpleValue::Long(n) => Value::Long(n),
        SimpleValue::Float(x) => Value::Double(f64::from(x.into_inner())),
        SimpleValue::Double(x) => Value::Double(x.into_inner()),
        SimpleValue::Char(c) => Value::String(c.to_string()),
        SimpleValue::Timestamp(t) => Value::DateTime(t.milliseconds()),
        SimpleValue::Uuid(u) => Value::Uuid(u.into()),
        SimpleValue::String(s) => Value::String(s),
        SimpleValue::Symbol(s) => Value::String(s.0),
        // decimals, binary and described values: kept, compared by nothing
        _ => Value::Opaque(Vec::new()),
    }
}

impl Message for View {
    fn system(&self, property: SystemProperty) -> Option<Value> {
        use SystemProperty as S;
        let p = self.properties.as_ref();
        let text = |s: Option<String>| s.map(Value::String);
        match property {
            S::MessageId => text(p?.message_id.as_ref().map(id_text)),
            S::CorrelationId => text(p?.correlation_id.as_ref().map(id_text)),
            S::To => text(p?.to.clone()),
            S::ReplyTo => text(p?.reply_to.clone()),
            S::Label => text(p?.subject.clone()),
            S::SessionId => text(p?.group_id.clone()),
            S::ReplyToSessionId => text(p?.reply_to_group_id.clone()),
            S::ContentType => text(p?.content_type.as_ref().map(|s| s.0.clone())),
            // a TimeSpan counts 100 ns ticks
            S::TimeToLive => self
                .ttl_ms
                .map(|ms| Value::TimeSpan(i64::from(ms) * ferrobus_filter::TICKS_PER_MILLISECOND)),
            S::ScheduledEnqueueTimeUtc => self.scheduled_ms.map(Value::DateTime),
            // assigned by the broker after the filters ran, or unknown to a producer's message
            _ => None,
        }
    }

    fn user(&self, name: &str) -> Option<Value> {
        self.user
            .iter()
            .find(|(k, _)| names_equal(k, name))
            .map(|(_, v)| v.clone())
    }
}
