//! Message-ids: the id Ferrobus gives a message that arrives without one, and the typed key
//! duplicate detection compares.
//!
//! Service Bus gives every message that arrives without a message-id one of its own, and
//! clients rely on it: the JS SDK's settlement path looks messages up by id and fails on a
//! message without one. Ours are what Service Bus's look like: a random GUID written as 32
//! lowercase hex digits, an AMQP `string`. The id is assigned before the message is stored, so
//! every delivery, peek and dead-lettered copy carries the same one. Only such messages get
//! their properties section re-encoded; every other message keeps the producer's bytes.

use bytes::Bytes;
use ferrobus_codec::message::Sections;
use ferrobus_codec::types::messaging::{MessageId, Properties};
use ferrobus_codec::CodecError;
use ring::rand::{SecureRandom, SystemRandom};

/// `payload` with a message-id of ours if it had none (and its new sections), or `None`
/// when it already has one.
pub fn assign(payload: &[u8], s: &Sections) -> Result<Option<(Bytes, Sections)>, CodecError> {
    if s.has_message_id(payload) {
        return Ok(None);
    }
    let mut props: Properties = match &s.properties {
        Some(r) => ferrobus_codec::decode(&payload[r.clone()], "properties")?,
        None => Properties::default(),
    };
    props.message_id = Some(MessageId::String(new_id()));
    let section =
        ferrobus_codec::serde_amqp::to_vec(&props).map_err(|source| CodecError::Serde {
            what: "properties",
            source,
        })?;
    let rewritten = Bytes::from(s.with_properties(payload, &section));
    let sections = Sections::scan(&rewritten)?;
    Ok(Some((rewritten, sections)))
}

/// A new id: 16 random bytes as 32 lowercase hex digits.
fn new_id() -> String {
    let mut b = [0u8; 16];
    // the OS's random source does not fail once the process runs; an all-zero id would only
    // repeat, never lose a message
    let _ = SystemRandom::new().fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A message-id as bytes that keep its AMQP type apart (`"1"` is not `1`).
pub fn dedup_key(payload: &[u8], s: &Sections) -> Option<Vec<u8>> {
    let props: Properties =
        ferrobus_codec::decode(&payload[s.properties.clone()?], "properties").ok()?;
    let mut out = Vec::new();
    match props.message_id? {
        MessageId::String(v) => {
            out.push(b's');
            out.extend_from_slice(v.as_bytes());
        }
        MessageId::Ulong(v) => {
            out.push(b'l');
            out.extend_from_slice(&v.to_be_bytes());
        }
        MessageId::Uuid(v) => {
            out.push(b'u');
            out.extend_from_slice(v.as_inner());
        }
        MessageId::Binary(v) => {
            out.push(b'b');
            out.extend_from_slice(&v);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrobus_codec::types::messaging::{ApplicationProperties, Data, Header};
    use ferrobus_codec::types::primitives::Binary;

    fn encode_parts(props: Option<Properties>) -> Vec<u8> {
        let mut out = ferrobus_codec::serde_amqp::to_vec(&Header::default()).unwrap();
        if let Some(p) = props {
            out.extend(ferrobus_codec::serde_amqp::to_vec(&p).unwrap());
        }
        let mut app = ApplicationProperties::default();
        app.0.insert("k".into(), 1i32.into());
        out.extend(ferrobus_codec::serde_amqp::to_vec(&app).unwrap());
        out.extend(ferrobus_codec::serde_amqp::to_vec(&Data(Binary::from(vec![7u8; 10]))).unwrap());
        out
    }

    fn id_of(payload: &[u8]) -> Option<MessageId> {
        let s = Sections::scan(payload).unwrap();
        let p: Properties = ferrobus_codec::decode(&payload[s.properties.unwrap()], "p").unwrap();
        p.message_id
    }

    #[test]
    fn a_message_without_properties_gets_an_id_and_keeps_its_other_sections() {
        let payload = encode_parts(None);
        let s = Sections::scan(&payload).unwrap();
        assert!(!s.has_message_id(&payload));
        let (out, s2) = assign(&payload, &s).unwrap().expect("an id is assigned");
        let Some(MessageId::String(id)) = id_of(&out) else {
            panic!("a string id")
        };
        assert_eq!(id.len(), 32);
        assert!(id
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        // header before, application properties and body after: the producer's bytes
        let h = s.header.clone().unwrap();
        assert_eq!(&out[s2.header.clone().unwrap()], &payload[h]);
        let tail = s.application_properties.clone().unwrap().start;
        assert_eq!(
            &out[s2.application_properties.clone().unwrap().start..],
            &payload[tail..]
        );
        assert!(s2.has_message_id(&out));
        assert!(assign(&out, &s2).unwrap().is_none());
    }

    #[test]
    fn a_null_id_is_replaced_and_the_other_properties_are_kept() {
        let props = Properties {
            subject: Some("label".into()),
            correlation_id: Some(MessageId::Ulong(9)),
            ..Default::default()
        };
        let payload = encode_parts(Some(props));
        let s = Sections::scan(&payload).unwrap();
        assert!(!s.has_message_id(&payload));
        let (out, s2) = assign(&payload, &s).unwrap().unwrap();
        let p: Properties =
            ferrobus_codec::decode(&out[s2.properties.clone().unwrap()], "p").unwrap();
        assert_eq!(p.subject.as_deref(), Some("label"));
        assert_eq!(p.correlation_id, Some(MessageId::Ulong(9)));
        assert!(matches!(p.message_id, Some(MessageId::String(_))));
        // two messages get two ids
        let (again, _) = assign(&payload, &s).unwrap().unwrap();
        assert_ne!(id_of(&again), id_of(&out));
    }

    #[test]
    fn a_message_with_an_id_is_left_alone() {
        for id in [MessageId::Ulong(5), MessageId::String("mid".into())] {
            let props = Properties {
                message_id: Some(id.clone()),
                ..Default::default()
            };
            let payload = encode_parts(Some(props));
            let s = Sections::scan(&payload).unwrap();
            assert!(s.has_message_id(&payload));
            assert!(assign(&payload, &s).unwrap().is_none());
            assert_eq!(id_of(&payload), Some(id));
        }
    }
}
