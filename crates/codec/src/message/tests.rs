use super::*;
use fe2o3_amqp_types::messaging::message::__private::Deserializable;
use fe2o3_amqp_types::messaging::{
    ApplicationProperties, Data, DeliveryAnnotations, Header, Message, MessageAnnotations,
    Properties,
};
use fe2o3_amqp_types::primitives::{Binary, Symbol, Value};
use proptest::prelude::*;

fn build(
    header: Option<Header>,
    with_da: bool,
    annotations: &[(&str, i64)],
    subject: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(h) = header {
        out.extend(serde_amqp::to_vec(&h).unwrap());
    }
    if with_da {
        let da = DeliveryAnnotations::builder().insert("x-da", 1i32).build();
        out.extend(serde_amqp::to_vec(&da).unwrap());
    }
    if !annotations.is_empty() {
        let mut b = MessageAnnotations::builder();
        for (k, v) in annotations {
            b = b.insert(*k, *v);
        }
        out.extend(serde_amqp::to_vec(&b.build()).unwrap());
    }
    let props = Properties::builder().subject(subject.to_string()).build();
    out.extend(serde_amqp::to_vec(&props).unwrap());
    let ap = ApplicationProperties::builder().insert("k", "v").build();
    out.extend(serde_amqp::to_vec(&ap).unwrap());
    out.extend(serde_amqp::to_vec(&Data(Binary::from(body.to_vec()))).unwrap());
    out
}

fn decode(bytes: &[u8]) -> Message<Data> {
    let d: Deserializable<Message<Data>> = serde_amqp::from_slice(bytes).unwrap();
    d.0
}

#[test]
fn scan_finds_every_section() {
    let h = Header {
        durable: true,
        ..Default::default()
    };
    let bytes = build(Some(h), true, &[("x-opt-custom", 5)], "s", b"hello");
    let s = Sections::scan(&bytes).unwrap();
    assert!(s.header.is_some() && s.delivery_annotations.is_some());
    assert!(s.message_annotations.is_some() && s.properties.is_some());
    assert_eq!(s.bare.start, s.properties.clone().unwrap().start);
    assert_eq!(s.bare.end, bytes.len());
    let body = s.body.clone().unwrap();
    assert_eq!(body.end, bytes.len());
    assert_eq!(
        serde_amqp::from_slice::<Data>(&bytes[body])
            .unwrap()
            .0
            .as_slice(),
        b"hello"
    );
    assert!(s.header(&bytes).unwrap().unwrap().durable);
    let (count, _) = s.annotation_entries(&bytes).unwrap();
    assert_eq!(count, 2);
    // a stored message scans to the same sections without its values being checked again
    let stored = Sections::scan_stored(&bytes).unwrap();
    assert_eq!(format!("{stored:?}"), format!("{s:?}"));
}

#[test]
fn only_the_checked_scan_refuses_sections_nested_too_deep() {
    // message annotations {"k": 40 nested lists}: well-formed, deeper than decoding allows
    let mut v = vec![0x45u8];
    for _ in 0..40 {
        let mut l = vec![0xc0, (v.len() + 1) as u8, 1];
        l.extend(&v);
        v = l;
    }
    let mut entries = vec![0xa3, 1, b'k'];
    entries.extend(&v);
    let mut bytes = vec![0x00, 0x53, 0x72, 0xc1, (entries.len() + 1) as u8, 2];
    bytes.extend(&entries);
    bytes.extend(serde_amqp::to_vec(&Data(Binary::from(vec![1]))).unwrap());
    assert!(Sections::scan(&bytes).is_err());
    assert!(Sections::scan_stored(&bytes).is_ok());
}

#[test]
fn out_of_order_and_unknown_sections_are_errors() {
    let data = serde_amqp::to_vec(&Data(Binary::from(vec![1]))).unwrap();
    let header = serde_amqp::to_vec(&Header::default()).unwrap();
    let mut bad = data.clone();
    bad.extend(&header);
    assert!(Sections::scan(&bad).is_err());
    assert!(Sections::scan(&[0x00, 0x53, 0x99, 0x40]).is_err());
    assert!(Sections::scan(&[0xa1, 1, b'x']).is_err());
}

#[test]
fn delivery_prefix_replaces_broker_annotations_and_keeps_the_bare_message() {
    let bytes = build(
        None,
        true,
        &[("x-opt-sequence-number", 999), ("x-opt-custom", 5)],
        "subject",
        b"payload",
    );
    let s = Sections::scan(&bytes).unwrap();
    let mut out = BytesMut::new();
    let header = HeaderFields {
        delivery_count: 3,
        ..HeaderFields::from_header(None)
    };
    encode_delivery_prefix(
        &mut out,
        &bytes,
        &s,
        &header,
        &[
            ("x-opt-sequence-number", AnnotationValue::Long(42)),
            ("x-opt-enqueued-time", AnnotationValue::Timestamp(7)),
        ],
        &["x-opt-locked-until"],
    )
    .unwrap();
    out.extend_from_slice(&bytes[s.bare.clone()]);
    let m = decode(&out);
    assert_eq!(m.header.unwrap().delivery_count, 3);
    assert!(m.delivery_annotations.is_none());
    let ma = m.message_annotations.unwrap().0;
    assert_eq!(ma.len(), 3);
    let get = |k: &str| {
        ma.iter()
            .find(|(key, _)| format!("{key:?}").contains(k))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("x-opt-sequence-number"), Some(Value::Long(42)));
    assert_eq!(get("x-opt-custom"), Some(Value::Long(5)));
    assert_eq!(m.properties.unwrap().subject.as_deref(), Some("subject"));
    assert_eq!(&m.body.0[..], b"payload");
    // the bare message bytes are the producer's, byte for byte
    let s2 = Sections::scan(&out).unwrap();
    assert_eq!(&out[s2.bare.clone()], &bytes[s.bare.clone()]);
}

#[test]
fn annotations_by_key_batches_and_extra_application_properties() {
    let bytes = build(
        None,
        false,
        &[("x-opt-scheduled-enqueue-time", 1234)],
        "s",
        b"body",
    );
    let s = Sections::scan(&bytes).unwrap();
    assert_eq!(
        s.annotation(&bytes, "x-opt-scheduled-enqueue-time")
            .and_then(decode_millis),
        Some(1234)
    );
    assert_eq!(s.annotation(&bytes, "x-nope"), None);

    let inner1 = build(None, false, &[], "one", b"1");
    let inner2 = build(None, false, &[], "two", b"22");
    let mut batch = serde_amqp::to_vec(&Properties::default()).unwrap();
    batch.extend(serde_amqp::to_vec(&Data(Binary::from(inner1.clone()))).unwrap());
    batch.extend(serde_amqp::to_vec(&Data(Binary::from(inner2.clone()))).unwrap());
    let bs = Sections::scan(&batch).unwrap();
    assert_eq!(
        bs.data_sections(&batch).unwrap(),
        vec![&inner1[..], &inner2[..]]
    );

    let mut out = BytesMut::new();
    HeaderFields::from_header(None).encode(&mut out);
    encode_bare_with_properties(
        &mut out,
        &bytes,
        &s,
        &[
            ("DeadLetterReason", AnnotationValue::Str("why".into())),
            ("k", AnnotationValue::Str("new".into())),
        ],
    )
    .unwrap();
    let m = decode(&out);
    let ap = m.application_properties.unwrap().0;
    assert_eq!(
        ap.get("DeadLetterReason"),
        Some(&fe2o3_amqp_types::primitives::SimpleValue::String(
            "why".into()
        ))
    );
    assert_eq!(
        ap.get("k"),
        Some(&fe2o3_amqp_types::primitives::SimpleValue::String(
            "new".into()
        ))
    );
    assert_eq!(ap.len(), 2);
    assert_eq!(m.properties.unwrap().subject.as_deref(), Some("s"));
    assert_eq!(&m.body.0[..], b"body");
}

proptest! {
    #[test]
    fn rewritten_messages_decode_with_the_same_bare_bytes(
        body in proptest::collection::vec(any::<u8>(), 0..3000),
        subject in "[ -~]{0,300}",
        ttl in proptest::option::of(any::<u32>()),
        durable in any::<bool>(),
        count in any::<u32>(),
        ann in proptest::collection::vec(("[a-z]{1,10}", any::<i64>()), 0..5),
    ) {
        let mut keys = std::collections::BTreeMap::new();
        for (k, v) in &ann { keys.insert(format!("x-{k}"), *v); }
        let pairs: Vec<(&str, i64)> = keys.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let h = Header { durable, ttl, ..Default::default() };
        let bytes = build(Some(h), false, &pairs, &subject, &body);
        let s = Sections::scan(&bytes).unwrap();
        let mut fields = HeaderFields::from_header(s.header(&bytes).unwrap().as_ref());
        prop_assert_eq!(fields.durable, durable);
        prop_assert_eq!(fields.ttl, ttl);
        fields.delivery_count = count;
        let mut out = BytesMut::new();
        encode_delivery_prefix(&mut out, &bytes, &s, &fields, &[("x-opt-sequence-number", AnnotationValue::Long(1))], &[]).unwrap();
        out.extend_from_slice(&bytes[s.bare.clone()]);
        let m = decode(&out);
        let mh = m.header.unwrap();
        prop_assert_eq!(mh.delivery_count, count);
        prop_assert_eq!(mh.ttl, ttl);
        prop_assert_eq!(m.message_annotations.unwrap().0.len(), pairs.len() + 1);
        prop_assert_eq!(&m.body.0[..], &body[..]);
    }

    #[test]
    fn scanning_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(s) = Sections::scan(&bytes) {
            let _ = s.header(&bytes);
            let _ = s.annotation_entries(&bytes);
        }
    }
}

#[test]
fn group_id_is_read_from_the_properties_bytes() {
    let with = |props: Properties| {
        let mut out = serde_amqp::to_vec(&props).unwrap();
        out.extend(serde_amqp::to_vec(&Data(Binary::from(vec![1u8]))).unwrap());
        out
    };
    let long = "s".repeat(300); // str32 inside a list32
    for id in ["s1", "", long.as_str()] {
        let p = with(
            Properties::builder()
                .message_id(String::from("m"))
                .subject("label".to_string())
                .group_id(id.to_string())
                .build(),
        );
        let s = Sections::scan(&p).unwrap();
        assert_eq!(s.group_id(&p), Some(id));
    }
    // fields after the group-id are skipped too
    let p = with(
        Properties::builder()
            .group_id("g".to_string())
            .reply_to_group_id("r".to_string())
            .build(),
    );
    assert_eq!(Sections::scan(&p).unwrap().group_id(&p), Some("g"));
    // absent: no properties, a list cut short before it, a null
    let p = with(Properties::builder().subject("x".to_string()).build());
    assert_eq!(Sections::scan(&p).unwrap().group_id(&p), None);
    let mut bare = Vec::new();
    bare.extend(serde_amqp::to_vec(&Data(Binary::from(vec![1u8]))).unwrap());
    assert_eq!(Sections::scan(&bare).unwrap().group_id(&bare), None);
    let p = with(
        Properties::builder()
            .group_sequence(3)
            .content_type(Symbol::from("text/plain"))
            .build(),
    );
    assert_eq!(Sections::scan(&p).unwrap().group_id(&p), None);
}
