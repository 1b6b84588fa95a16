//! What a rule action does to the copy of a message it selected: the changes an action
//! computed (`ferrobus_filter::Change`) written into a new encoding of the copy, with the
//! `RuleName` application property naming the rule, as Service Bus marks such copies.
//!
//! Only the copy changes; the message's other copies keep the producer's bytes. The header and
//! annotations are copied as they are; the properties section is decoded and encoded again
//! only when a system property changes (and then holds our typed values only); application
//! properties that do not change keep their bytes; the body is never touched. Changing
//! `sys.TimeToLive` or `sys.ScheduledEnqueueTimeUtc` is ignored on a subscription, as Service
//! Bus documents; so are the partition keys (no partitions here).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use ferrobus_codec::message::{encode_bare_edited, AnnotationValue, Sections};
use ferrobus_codec::types::messaging::{MessageId, Properties};
use ferrobus_codec::types::primitives::Symbol;
use ferrobus_filter::{names_equal, Change, SystemProperty, Target, Value};
use ferrobus_store::Rewrite;

/// The application property that names the rule whose action made a copy.
pub const RULE_NAME: &str = "RuleName";

/// The rewriter the store's topics use.
pub fn rewriter() -> Rewrite {
    Arc::new(|payload: &Bytes, rule: &str, changes: &[Change]| apply(payload, rule, changes))
}

/// The copy of `payload` that rule `rule`'s action makes with `changes`.
pub fn apply(payload: &Bytes, rule: &str, changes: &[Change]) -> Result<Bytes, String> {
    let s = Sections::scan(payload).map_err(|e| format!("the message does not parse: {e}"))?;
    let mut props: Option<Properties> = match &s.properties {
        Some(r) => Some(
            ferrobus_codec::decode(&payload[r.clone()], "properties")
                .map_err(|e| format!("the message's properties do not decode: {e}"))?,
        ),
        None => None,
    };
    let mut props_changed = false;
    let mut set: Vec<(String, AnnotationValue)> = Vec::new();
    let mut remove: Vec<String> = Vec::new();
    for c in changes {
        match c.target() {
            Target::System(p) => {
                let value = match c {
                    Change::Set(_, v) => Some(v),
                    Change::Remove(_) => None,
                };
                props_changed |=
                    set_system(props.get_or_insert_with(Properties::default), *p, value);
            }
            Target::User(name) => {
                set.retain(|(k, _)| !names_equal(k, name));
                remove.retain(|k| !names_equal(k, name));
                match c {
                    Change::Set(_, v) => set.push((name.clone(), annotation_value(v))),
                    Change::Remove(_) => remove.push(name.clone()),
                }
            }
        }
    }
    set.retain(|(k, _)| !names_equal(k, RULE_NAME));
    set.push((
        RULE_NAME.to_string(),
        AnnotationValue::Str(rule.to_string()),
    ));
    let new_props = match (&props, props_changed) {
        (Some(p), true) => Some(
            ferrobus_codec::serde_amqp::to_vec(p)
                .map_err(|e| format!("the changed properties do not encode: {e}"))?,
        ),
        _ => None,
    };
    let mut out = BytesMut::with_capacity(payload.len() + 64);
    out.put_slice(&payload[..s.bare.start]);
    let set_refs: Vec<(&str, AnnotationValue)> =
        set.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let remove_refs: Vec<&str> = remove.iter().map(String::as_str).collect();
    encode_bare_edited(
        &mut out,
        payload,
        &s,
        new_props.as_deref(),
        &set_refs,
        &remove_refs,
        names_equal,
    )
    .map_err(|e| format!("the copy does not encode: {e}"))?;
    Ok(out.freeze())
}

/// A user property's new value as it is written.
fn annotation_value(v: &Value) -> AnnotationValue {
    match v {
        Value::Null | Value::Opaque(_) => AnnotationValue::Null,
        Value::Bool(b) => AnnotationValue::Bool(*b),
        Value::Long(n) => AnnotationValue::Long(*n),
        Value::Double(x) => AnnotationValue::Double(*x),
        Value::String(s) => AnnotationValue::Str(s.clone()),
        Value::DateTime(t) => AnnotationValue::Timestamp(*t),
        Value::TimeSpan(t) => AnnotationValue::Long(*t),
        Value::Uuid(u) => AnnotationValue::Uuid(*u),
    }
}

/// Sets (or, with `None`, unsets) a system property; false if the property is one a
/// subscription's copy ignores.
fn set_system(p: &mut Properties, prop: SystemProperty, v: Option<&Value>) -> bool {
    use SystemProperty as S;
    let t = v.and_then(Value::system_text);
    match prop {
        S::MessageId => p.message_id = t.map(MessageId::String),
        S::CorrelationId => p.correlation_id = t.map(MessageId::String),
        S::To => p.to = t,
        S::ReplyTo => p.reply_to = t,
        S::Label => p.subject = t,
        S::SessionId => p.group_id = t,
        S::ReplyToSessionId => p.reply_to_group_id = t,
        S::ContentType => p.content_type = t.map(Symbol::from),
        _ => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrobus_codec::types::messaging::{ApplicationProperties, Data};
    use ferrobus_codec::types::primitives::{Binary, SimpleValue};
    use ferrobus_filter::{Parameters, PropertyBag, SqlAction};

    fn message() -> Bytes {
        let props = Properties {
            message_id: Some(MessageId::String("m1".into())),
            subject: Some("old".into()),
            ..Default::default()
        };
        let mut ap = ferrobus_codec::types::primitives::OrderedMap::new();
        ap.insert("Keep".to_string(), SimpleValue::Int(7));
        ap.insert("drop".to_string(), SimpleValue::String("x".into()));
        ap.insert("Color".to_string(), SimpleValue::String("red".into()));
        let mut b = ferrobus_codec::serde_amqp::to_vec(&props).unwrap();
        b.extend(ferrobus_codec::serde_amqp::to_vec(&ApplicationProperties(ap)).unwrap());
        b.extend(ferrobus_codec::serde_amqp::to_vec(&Data(Binary::from(vec![1, 2, 3]))).unwrap());
        Bytes::from(b)
    }

    #[test]
    fn an_action_changes_the_copy_and_names_the_rule() {
        let action = SqlAction::parse(
            "SET color = 'green'; REMOVE DROP; SET sys.Label = 'new'; SET n = 5",
            &Parameters::default(),
        )
        .unwrap();
        // the action runs on the message's own properties
        let seen = PropertyBag::new()
            .with_user("Keep", 7i64)
            .with_user("drop", "x")
            .with_user("Color", "red");
        let changes = action.apply(&seen).unwrap();
        let payload = message();
        let copy = apply(&payload, "recolor", &changes).unwrap();
        let s = Sections::scan(&copy).unwrap();
        let p: Properties =
            ferrobus_codec::decode(&copy[s.properties.clone().unwrap()], "p").unwrap();
        assert_eq!(p.subject.as_deref(), Some("new"));
        assert_eq!(p.message_id, Some(MessageId::String("m1".into())));
        let ap: ApplicationProperties =
            ferrobus_codec::decode(&copy[s.application_properties.clone().unwrap()], "ap").unwrap();
        let get = |k: &str| ap.0.get(k).cloned();
        assert_eq!(get("color"), Some(SimpleValue::String("green".into())));
        assert_eq!(get("Color"), None, "replaced, not doubled");
        assert_eq!(get("drop"), None);
        assert_eq!(get("Keep"), Some(SimpleValue::Int(7)));
        assert_eq!(get("n"), Some(SimpleValue::Long(5)));
        assert_eq!(get(RULE_NAME), Some(SimpleValue::String("recolor".into())));
        let body = s.body.unwrap();
        assert_eq!(
            &copy[body.clone()],
            &payload[payload.len() - (body.end - body.start)..]
        );
    }

    #[test]
    fn without_system_changes_the_properties_keep_their_bytes() {
        let payload = message();
        let copy = apply(&payload, "r", &[]).unwrap();
        let a = Sections::scan(&payload).unwrap();
        let b = Sections::scan(&copy).unwrap();
        assert_eq!(
            &copy[b.properties.unwrap()],
            &payload[a.properties.unwrap()]
        );
    }
}
