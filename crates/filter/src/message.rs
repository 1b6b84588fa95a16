//! The message as a filter sees it: system properties by [`SystemProperty`], user (application)
//! properties by name. The broker implements [`Message`] over the stored message bytes, decoding
//! only what a filter asks for.

use crate::Value;

/// A Service Bus system property a filter can name as `sys.<Name>`.
///
/// The names follow Service Bus' message model; matching is case-insensitive and a few
/// newer SDK spellings are accepted as aliases (see [`SystemProperty::from_name`]). The value
/// the broker supplies, and its AMQP source:
///
/// | property | value | AMQP source |
/// |---|---|---|
/// | `MessageId` | string | properties.message-id (a uuid, ulong or binary id as its text: hyphenated uuid, decimal, hex) |
/// | `CorrelationId` | string | properties.correlation-id (same conversion) |
/// | `To` | string | properties.to |
/// | `ReplyTo` | string | properties.reply-to |
/// | `Label` (`Subject`) | string | properties.subject |
/// | `SessionId` | string | properties.group-id |
/// | `ReplyToSessionId` | string | properties.reply-to-group-id |
/// | `ContentType` | string | properties.content-type |
/// | `PartitionKey` | string | message-annotations `x-opt-partition-key` |
/// | `ViaPartitionKey` | string | message-annotations `x-opt-via-partition-key` |
/// | `SequenceNumber` | long | the topic's sequence number |
/// | `EnqueuedSequenceNumber` | long | `x-opt-enqueue-sequence-number` (auto-forwarded), else null |
/// | `EnqueuedTimeUtc` | datetime | the topic's enqueue time |
/// | `ScheduledEnqueueTimeUtc` | datetime | `x-opt-scheduled-enqueue-time` |
/// | `ExpiresAtUtc` | datetime | enqueue time + TTL, or properties.absolute-expiry-time |
/// | `TimeToLive` | timespan | header.ttl (or the entity default) |
/// | `DeliveryCount` | long | header.delivery-count (0 when filters run) |
/// | `Size` | long | the stored message's size in bytes |
/// | `DeadLetterSource` | string | `x-opt-deadletter-source`, else null |
///
/// A property the message does not carry is `None` from [`Message::system`] and evaluates to
/// `NULL`: `sys.ReplyTo = 'x'` is then unknown (no match), `sys.ReplyTo IS NULL` is true.
/// Lock state (`LockToken`, `LockedUntilUtc`) does not exist while filters run and is not a
/// name here: `sys.LockToken` is refused when the filter is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SystemProperty {
    /// Application-defined message identifier.
    MessageId,
    /// Correlation identifier.
    CorrelationId,
    /// Logical destination.
    To,
    /// Reply address.
    ReplyTo,
    /// AMQP `subject`; Service Bus' `Label`, newer SDKs' `Subject`.
    Label,
    /// AMQP `group-id`.
    SessionId,
    /// AMQP `reply-to-group-id`.
    ReplyToSessionId,
    /// AMQP `content-type`.
    ContentType,
    /// Partition key annotation.
    PartitionKey,
    /// Transfer-queue partition key annotation (newer SDKs: `TransactionPartitionKey`).
    ViaPartitionKey,
    /// Broker-assigned sequence number.
    SequenceNumber,
    /// Sequence number at first submission of an auto-forwarded message.
    EnqueuedSequenceNumber,
    /// When the broker accepted the message.
    EnqueuedTimeUtc,
    /// When a scheduled message becomes available.
    ScheduledEnqueueTimeUtc,
    /// When the message expires.
    ExpiresAtUtc,
    /// Time to live.
    TimeToLive,
    /// Delivery attempts so far.
    DeliveryCount,
    /// Stored size in bytes.
    Size,
    /// Entity the message was dead-lettered in, for auto-forwarded dead letters.
    DeadLetterSource,
}

use SystemProperty as S;

/// Every property with its canonical name, then accepted aliases.
const NAMES: &[(SystemProperty, &str, &[&str])] = &[
    (S::MessageId, "MessageId", &[]),
    (S::CorrelationId, "CorrelationId", &[]),
    (S::To, "To", &[]),
    (S::ReplyTo, "ReplyTo", &[]),
    (S::Label, "Label", &["Subject"]),
    (S::SessionId, "SessionId", &[]),
    (S::ReplyToSessionId, "ReplyToSessionId", &[]),
    (S::ContentType, "ContentType", &[]),
    (S::PartitionKey, "PartitionKey", &[]),
    (
        S::ViaPartitionKey,
        "ViaPartitionKey",
        &["TransactionPartitionKey"],
    ),
    (S::SequenceNumber, "SequenceNumber", &[]),
    (S::EnqueuedSequenceNumber, "EnqueuedSequenceNumber", &[]),
    (S::EnqueuedTimeUtc, "EnqueuedTimeUtc", &["EnqueuedTime"]),
    (
        S::ScheduledEnqueueTimeUtc,
        "ScheduledEnqueueTimeUtc",
        &["ScheduledEnqueueTime"],
    ),
    (S::ExpiresAtUtc, "ExpiresAtUtc", &["ExpiresAt"]),
    (S::TimeToLive, "TimeToLive", &[]),
    (S::DeliveryCount, "DeliveryCount", &[]),
    (S::Size, "Size", &[]),
    (S::DeadLetterSource, "DeadLetterSource", &[]),
];

/// The kind of value a system property holds, which decides what an action may set it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemKind {
    /// Text (ids, addresses, subject, content type, partition keys).
    String,
    /// A `long` counter or number.
    Long,
    /// An instant.
    DateTime,
    /// A duration.
    TimeSpan,
}

impl SystemProperty {
    /// Every system property, in declaration order.
    pub const ALL: [SystemProperty; 19] = [
        S::MessageId,
        S::CorrelationId,
        S::To,
        S::ReplyTo,
        S::Label,
        S::SessionId,
        S::ReplyToSessionId,
        S::ContentType,
        S::PartitionKey,
        S::ViaPartitionKey,
        S::SequenceNumber,
        S::EnqueuedSequenceNumber,
        S::EnqueuedTimeUtc,
        S::ScheduledEnqueueTimeUtc,
        S::ExpiresAtUtc,
        S::TimeToLive,
        S::DeliveryCount,
        S::Size,
        S::DeadLetterSource,
    ];

    /// Looks a name up, ASCII case-insensitively, canonical names and aliases (`Subject` for
    /// `Label`, `EnqueuedTime`, `ScheduledEnqueueTime`, `ExpiresAt`, `TransactionPartitionKey`).
    pub fn from_name(name: &str) -> Option<SystemProperty> {
        NAMES.iter().find_map(|(p, canonical, aliases)| {
            (canonical.eq_ignore_ascii_case(name)
                || aliases.iter().any(|a| a.eq_ignore_ascii_case(name)))
            .then_some(*p)
        })
    }

    /// The canonical name (`Label`, not `Subject`).
    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(p, _, _)| *p == self)
            .map(|(_, n, _)| *n)
            .expect("every property has a name")
    }

    /// The kind of value the property holds.
    pub fn kind(self) -> SystemKind {
        match self {
            S::SequenceNumber | S::EnqueuedSequenceNumber | S::DeliveryCount | S::Size => {
                SystemKind::Long
            }
            S::EnqueuedTimeUtc | S::ScheduledEnqueueTimeUtc | S::ExpiresAtUtc => {
                SystemKind::DateTime
            }
            S::TimeToLive => SystemKind::TimeSpan,
            _ => SystemKind::String,
        }
    }

    /// Whether a rule action may `SET` it: the properties a sender may set, not the ones the
    /// broker assigns (sequence numbers, enqueue and expiry times, delivery count, size,
    /// dead-letter source).
    pub fn settable(self) -> bool {
        !matches!(
            self,
            S::SequenceNumber
                | S::EnqueuedSequenceNumber
                | S::EnqueuedTimeUtc
                | S::ExpiresAtUtc
                | S::DeliveryCount
                | S::Size
                | S::DeadLetterSource
        )
    }

    /// Whether a rule action may `REMOVE` it: the settable ones except `MessageId`, which every
    /// Service Bus message has.
    pub fn removable(self) -> bool {
        self.settable() && self != S::MessageId
    }
}

/// The properties of one message, as filters and actions read them.
///
/// Implemented by the broker over the stored message (lazily: a filter asks only for the
/// properties it names), and by [`PropertyBag`] for tests and configuration checks.
pub trait Message {
    /// The value of a system property, or `None` when the message does not carry it (which a
    /// filter reads as `NULL`). See [`SystemProperty`] for the kind of value each one holds.
    fn system(&self, property: SystemProperty) -> Option<Value>;

    /// The value of the application property `name`, or `None` when there is none. Names match
    /// case-insensitively, as [`names_equal`] decides; when two properties differ only in case,
    /// the first one in the message wins. A present property whose value is AMQP `null` is
    /// `Some(Value::Null)`: it exists (`EXISTS` is true) but `IS NULL` too.
    fn user(&self, name: &str) -> Option<Value>;
}

/// Whether two property names are the same name: equal after Unicode lowercasing, character by
/// character (ASCII names take a fast path).
pub fn names_equal(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(b);
    }
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

/// A message made of owned values: for tests, and for checking configured rules without a
/// broker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PropertyBag {
    /// System properties present on the message.
    pub system: Vec<(SystemProperty, Value)>,
    /// Application properties, in message order.
    pub user: Vec<(String, Value)>,
}

impl PropertyBag {
    /// An empty message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a system property (builder style).
    pub fn with_system(mut self, property: SystemProperty, value: impl Into<Value>) -> Self {
        self.set_system(property, value.into());
        self
    }

    /// Sets an application property (builder style).
    pub fn with_user(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.set_user(name, value.into());
        self
    }

    /// Sets a system property; `Value::Null` clears it.
    pub fn set_system(&mut self, property: SystemProperty, value: Value) {
        self.system.retain(|(p, _)| *p != property);
        if !value.is_null() {
            self.system.push((property, value));
        }
    }

    /// Sets an application property, replacing one of the same name (case-insensitively) in
    /// place.
    pub fn set_user(&mut self, name: &str, value: Value) {
        match self.user.iter_mut().find(|(n, _)| names_equal(n, name)) {
            Some(slot) => slot.1 = value,
            None => self.user.push((name.to_owned(), value)),
        }
    }

    /// Applies the changes an action produced, in order.
    pub fn apply(&mut self, changes: &[crate::Change]) {
        use crate::{Change, Target};
        for change in changes {
            match change {
                Change::Set(Target::System(p), v) => self.set_system(*p, v.clone()),
                Change::Remove(Target::System(p)) => self.set_system(*p, Value::Null),
                Change::Set(Target::User(n), v) => self.set_user(n, v.clone()),
                Change::Remove(Target::User(n)) => self.user.retain(|(u, _)| !names_equal(u, n)),
            }
        }
    }
}

impl Message for PropertyBag {
    fn system(&self, property: SystemProperty) -> Option<Value> {
        self.system
            .iter()
            .find(|(p, _)| *p == property)
            .map(|(_, v)| v.clone())
    }

    fn user(&self, name: &str) -> Option<Value> {
        self.user
            .iter()
            .find(|(n, _)| names_equal(n, name))
            .map(|(_, v)| v.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases() {
        for p in SystemProperty::ALL {
            assert_eq!(SystemProperty::from_name(p.name()), Some(p));
            assert_eq!(SystemProperty::from_name(&p.name().to_uppercase()), Some(p));
        }
        assert_eq!(SystemProperty::from_name("subject"), Some(S::Label));
        assert_eq!(SystemProperty::from_name("LABEL"), Some(S::Label));
        assert_eq!(
            SystemProperty::from_name("ScheduledEnqueueTime"),
            Some(S::ScheduledEnqueueTimeUtc)
        );
        assert_eq!(SystemProperty::from_name("LockToken"), None);
        assert_eq!(SystemProperty::from_name(""), None);
        assert!(S::To.settable() && S::To.removable());
        assert!(S::MessageId.settable() && !S::MessageId.removable());
        assert!(!S::SequenceNumber.settable() && !S::SequenceNumber.removable());
    }

    #[test]
    fn user_names_are_case_insensitive() {
        assert!(names_equal("Color", "cOLOR"));
        assert!(names_equal("ÄPFEL", "äpfel"));
        assert!(!names_equal("color", "colour"));
        let bag = PropertyBag::new()
            .with_user("Color", "red")
            .with_user("COLOR", "blue");
        assert_eq!(bag.user("color"), Some("blue".into()));
        assert_eq!(bag.user.len(), 1);
    }
}
