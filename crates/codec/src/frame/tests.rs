use super::*;
use fe2o3_amqp_types::definitions::{ReceiverSettleMode, Role};
use fe2o3_amqp_types::performatives::{Attach, Close, Flow, Open};
use fe2o3_amqp_types::primitives::Binary;
use proptest::prelude::*;

use crate::value::check_tests::nested_lists;

fn decode_all(buf: &mut BytesMut, max: u32) -> Vec<(u16, Option<Performative>, Bytes)> {
    let mut frames = vec![];
    while let Some(f) = decode_frame(buf, max, FrameKind::Amqp).unwrap() {
        match f {
            Frame::Amqp {
                channel,
                body,
                payload,
            } => frames.push((channel, body, payload)),
            Frame::Sasl(_) => unreachable!(),
        }
    }
    frames
}

#[test]
fn protocol_headers_round_trip_and_reject_other_versions() {
    for id in [ProtocolId::Amqp, ProtocolId::Tls, ProtocolId::Sasl] {
        assert_eq!(ProtocolId::parse(&id.header()), Some(id));
    }
    assert_eq!(ProtocolId::parse(b"AMQP\x00\x00\x09\x01"), None);
    assert_eq!(ProtocolId::parse(b"GET / HT"), None);
}

#[test]
fn incomplete_frames_wait_for_more_bytes() {
    let mut out = BytesMut::new();
    let open = Open {
        container_id: "c".into(),
        hostname: None,
        max_frame_size: 4096.into(),
        channel_max: 10.into(),
        idle_time_out: Some(1000),
        outgoing_locales: None,
        incoming_locales: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    encode_frame(&mut out, 0, &Performative::Open(open.clone()), &[]);
    let full = out.clone();
    for cut in 0..full.len() {
        let mut part = BytesMut::from(&full[..cut]);
        assert!(decode_frame(&mut part, 4096, FrameKind::Amqp)
            .unwrap()
            .is_none());
    }
    let frames = decode_all(&mut out, 4096);
    assert_eq!(frames.len(), 1);
    assert!(matches!(&frames[0].1, Some(Performative::Open(o)) if *o == open));
}

#[test]
fn bad_frame_headers_are_framing_errors() {
    let mut small = BytesMut::from(&[0u8, 0, 0, 4, 2, 0, 0, 0][..]);
    assert!(matches!(
        decode_frame(&mut small, 512, FrameKind::Amqp),
        Err(FrameError::Framing(_))
    ));
    let mut big = BytesMut::from(&[0u8, 1, 0, 0, 2, 0, 0, 0][..]);
    assert!(matches!(
        decode_frame(&mut big, 512, FrameKind::Amqp),
        Err(FrameError::Framing(_))
    ));
    let mut doff = BytesMut::from(&[0u8, 0, 0, 8, 1, 0, 0, 0][..]);
    assert!(matches!(
        decode_frame(&mut doff, 512, FrameKind::Amqp),
        Err(FrameError::Framing(_))
    ));
    let mut sasl_type = BytesMut::from(&[0u8, 0, 0, 8, 2, 1, 0, 0][..]);
    assert!(matches!(
        decode_frame(&mut sasl_type, 512, FrameKind::Amqp),
        Err(FrameError::Framing(_))
    ));
}

#[test]
fn garbage_bodies_are_decode_errors() {
    let mut f = BytesMut::from(&[0u8, 0, 0, 12, 2, 0, 0, 0, 0x00, 0x53, 0x10, 0x45][..]);
    // an Open with an empty list misses its mandatory container-id
    assert!(matches!(
        decode_frame(&mut f, 512, FrameKind::Amqp),
        Err(FrameError::Decode(_))
    ));
    let mut f = BytesMut::from(&[0u8, 0, 0, 11, 2, 0, 0, 0, 0xff, 0xff, 0xff][..]);
    assert!(matches!(
        decode_frame(&mut f, 512, FrameKind::Amqp),
        Err(FrameError::Decode(_))
    ));
}

#[test]
fn empty_frames_are_heartbeats() {
    let mut out = BytesMut::new();
    encode_empty_frame(&mut out);
    let frames = decode_all(&mut out, 512);
    assert!(frames[0].1.is_none());
}

fn transfer(handle: u32, id: u32, tag: Vec<u8>) -> Transfer {
    Transfer {
        handle: handle.into(),
        delivery_id: Some(id),
        delivery_tag: Some(Binary::from(tag)),
        message_format: Some(0),
        settled: Some(false),
        more: false,
        rcv_settle_mode: None,
        state: None,
        resume: false,
        aborted: false,
        batchable: false,
    }
}

#[test]
fn string_keys_in_fields_are_read_as_symbols() {
    use fe2o3_amqp_types::messaging::{DeliveryState, Rejected};
    // what the Service Bus JS SDK sends to dead-letter: error info keyed by str8
    let mut body = vec![0x00, 0x53, 0x15, 0xc0, 0x00, 0x05, 0x41, 0x43, 0x40, 0x41];
    let mut state = vec![0x00, 0x53, 0x25, 0xc0, 0x00, 0x01];
    let mut err = vec![0x00, 0x53, 0x1d, 0xc0, 0x00, 0x03];
    let cond = {
        let mut c = vec![0xa3, 25];
        c.extend_from_slice(b"com.microsoft:dead-letter");
        c
    };
    let mut info = vec![0xc1, 0x00, 0x02];
    info.extend_from_slice(&[0xa1, 16]);
    info.extend_from_slice(b"DeadLetterReason");
    info.extend_from_slice(&[0xa1, 3]);
    info.extend_from_slice(b"why");
    info[1] = (info.len() - 2) as u8;
    err.extend_from_slice(&cond);
    err.push(0x40);
    err.extend_from_slice(&info);
    err[4] = (err.len() - 5) as u8;
    state.extend_from_slice(&err);
    state[4] = (state.len() - 5) as u8;
    body.extend_from_slice(&state);
    body[4] = (body.len() - 5) as u8;
    let mut frame = BytesMut::new();
    frame.put_slice(&((8 + body.len()) as u32).to_be_bytes());
    frame.put_slice(&[2, 0, 0, 1]);
    frame.put_slice(&body);
    let f = decode_frame(&mut frame, 4096, FrameKind::Amqp)
        .unwrap()
        .unwrap();
    let Frame::Amqp {
        body: Some(Performative::Disposition(d)),
        ..
    } = f
    else {
        panic!("not a disposition")
    };
    let Some(DeliveryState::Rejected(Rejected { error: Some(e) })) = d.state else {
        panic!("not rejected")
    };
    let info = e.info.unwrap();
    assert_eq!(
        info.iter().next().map(|(k, _)| k.as_str()),
        Some("DeadLetterReason")
    );
}

proptest! {
    #[test]
    fn transfers_split_to_max_frame_size_and_reassemble(
        payload in proptest::collection::vec(any::<u8>(), 0..20_000),
        max in 512u32..4096,
        split in 1usize..200,
        id in any::<u32>(),
    ) {
        let mut out = BytesMut::new();
        let (a, b) = payload.split_at(payload.len() / 2);
        encode_transfer(&mut out, 3, transfer(7, id, vec![9; 16]), &[a, b], max);
        // feed the bytes in arbitrary pieces, as a socket would
        let mut buf = BytesMut::new();
        let mut frames = vec![];
        for piece in out.chunks(split) {
            buf.extend_from_slice(piece);
            while let Some(f) = decode_frame(&mut buf, max, FrameKind::Amqp).unwrap() {
                frames.push(f);
            }
        }
        let mut joined = Vec::new();
        let n = frames.len();
        for (i, f) in frames.into_iter().enumerate() {
            let Frame::Amqp { channel, body: Some(Performative::Transfer(t)), payload } = f else {
                panic!("expected a transfer");
            };
            prop_assert_eq!(channel, 3);
            prop_assert_eq!(t.delivery_id, Some(id));
            prop_assert_eq!(t.more, i + 1 < n);
            if i == 0 {
                prop_assert_eq!(t.delivery_tag.as_ref().map(|b| b.len()), Some(16));
            }
            joined.extend_from_slice(&payload);
        }
        prop_assert_eq!(joined, payload);
    }

    #[test]
    fn flows_round_trip(credit in any::<u32>(), count in any::<u32>(), drain in any::<bool>(), handle in any::<u32>()) {
        let flow = Flow {
            next_incoming_id: Some(1),
            incoming_window: 100,
            next_outgoing_id: 5,
            outgoing_window: 100,
            handle: Some(handle.into()),
            delivery_count: Some(count),
            link_credit: Some(credit),
            available: None,
            drain,
            echo: false,
            properties: None,
        };
        let mut out = BytesMut::new();
        encode_frame(&mut out, 1, &Performative::Flow(flow.clone()), &[]);
        let frames = decode_all(&mut out, 512);
        prop_assert!(matches!(&frames[0].1, Some(Performative::Flow(f)) if *f == flow));
    }

    #[test]
    fn attach_and_close_round_trip(name in "[a-z0-9-]{1,40}", handle in any::<u32>()) {
        let attach = Attach {
            name: name.clone(),
            handle: handle.into(),
            role: Role::Receiver,
            snd_settle_mode: Default::default(),
            rcv_settle_mode: ReceiverSettleMode::Second,
            source: None,
            target: None,
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: None,
            max_message_size: Some(1 << 20),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        let close = Close { error: Some(fe2o3_amqp_types::definitions::Error::new(
            fe2o3_amqp_types::definitions::AmqpError::DecodeError, Some(name), None)) };
        let mut out = BytesMut::new();
        encode_frame(&mut out, 0, &Performative::Attach(attach.clone()), &[]);
        encode_frame(&mut out, 0, &Performative::Close(close.clone()), &[]);
        let frames = decode_all(&mut out, 4096);
        prop_assert!(matches!(&frames[0].1, Some(Performative::Attach(a)) if *a == attach));
        prop_assert!(matches!(&frames[1].1, Some(Performative::Close(c)) if *c == close));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decode_frame(&mut buf, 1024, FrameKind::Amqp) {}
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decode_frame(&mut buf, 1024, FrameKind::Sasl) {}
    }
}

#[test]
fn single_frame_transfers_are_hand_encoded_and_decode_to_the_same_fields() {
    let full = transfer(7, 123_456, vec![9; 16]);
    let bare = Transfer {
        delivery_id: None,
        delivery_tag: None,
        message_format: None,
        settled: None,
        ..transfer(1, 0, vec![])
    };
    for (t, channel) in [(full, 3u16), (bare, 0)] {
        let mut out = BytesMut::new();
        let n = encode_transfer(&mut out, channel, t.clone(), &[b"abc", b"defg"], 512);
        assert_eq!(n, 1);
        // the same fields as serde's encoding, read back by the generic decoder
        let frames = decode_all(&mut out, 512);
        assert_eq!(frames.len(), 1);
        let (ch, body, payload) = &frames[0];
        assert_eq!(*ch, channel);
        let Some(Performative::Transfer(back)) = body else {
            panic!("not a transfer")
        };
        assert_eq!(back.handle, t.handle);
        assert_eq!(back.delivery_id, t.delivery_id);
        assert_eq!(back.delivery_tag, t.delivery_tag);
        assert_eq!(back.message_format, t.message_format);
        assert_eq!(back.settled, t.settled);
        assert!(!back.more);
        assert_eq!(&payload[..], b"abcdefg");
    }
}

#[test]
fn transfers_with_a_state_use_the_general_encoder() {
    use fe2o3_amqp_types::messaging::{Accepted, DeliveryState};
    let mut t = transfer(0, 5, vec![1]);
    t.state = Some(DeliveryState::Accepted(Accepted {}));
    let mut out = BytesMut::new();
    encode_transfer(&mut out, 0, t, &[b"x"], 512);
    let frames = decode_all(&mut out, 512);
    let Some(Performative::Transfer(back)) = &frames[0].1 else {
        panic!("not a transfer")
    };
    assert!(matches!(back.state, Some(DeliveryState::Accepted(_))));
}

/// A frame of `kind` around `body`.
fn frame_of(kind: u8, body: &[u8]) -> BytesMut {
    let mut f = BytesMut::new();
    f.put_u32(8 + body.len() as u32);
    f.put_slice(&[2, kind, 0, 0]);
    f.put_slice(body);
    f
}

/// An Open whose `properties` map holds `value` under the key "k".
fn open_with_property(value: &[u8]) -> Vec<u8> {
    let mut map = vec![0xa3, 1, b'k'];
    map.extend_from_slice(value);
    let mut props = vec![0xd1];
    props.extend_from_slice(&(4 + map.len() as u32).to_be_bytes());
    props.extend_from_slice(&2u32.to_be_bytes());
    props.extend_from_slice(&map);
    // container-id "c", eight nulls, then the properties
    let mut fields = vec![0xa1, 1, b'c'];
    fields.extend_from_slice(&[0x40; 8]);
    fields.extend_from_slice(&props);
    let mut body = vec![0x00, 0x53, 0x10, 0xd0];
    body.extend_from_slice(&(4 + fields.len() as u32).to_be_bytes());
    body.extend_from_slice(&10u32.to_be_bytes());
    body.extend_from_slice(&fields);
    body
}

#[test]
fn crafted_opens_are_decode_errors_not_crashes() {
    // a sensible property decodes
    let mut ok = frame_of(0, &open_with_property(&[0xa1, 1, b'v']));
    assert!(matches!(
        decode_frame(&mut ok, 1 << 20, FrameKind::Amqp),
        Ok(Some(Frame::Amqp {
            body: Some(Performative::Open(_)),
            ..
        }))
    ));
    // ~4,000 nested lists once overflowed a worker's stack and aborted the process
    let mut deep = frame_of(0, &open_with_property(&nested_lists(4000)));
    assert!(matches!(
        decode_frame(&mut deep, 1 << 20, FrameKind::Amqp),
        Err(FrameError::Decode(_))
    ));
    // an array32 of 65,536 nulls: 10 bytes on the wire, megabytes decoded
    let mut nulls = vec![0xf0, 0, 0, 0, 5];
    nulls.extend_from_slice(&65_536u32.to_be_bytes());
    nulls.push(0x40);
    let mut amplified = frame_of(0, &open_with_property(&nulls));
    assert!(matches!(
        decode_frame(&mut amplified, 1 << 20, FrameKind::Amqp),
        Err(FrameError::Decode(_))
    ));
    // a str32 declaring 4 GiB
    let mut long = frame_of(
        0,
        &open_with_property(&[0xb1, 0xff, 0xff, 0xff, 0xff, b'x']),
    );
    assert!(matches!(
        decode_frame(&mut long, 1 << 20, FrameKind::Amqp),
        Err(FrameError::Decode(_))
    ));
}

#[test]
fn a_sasl_init_declaring_gigabytes_is_a_decode_error() {
    // sasl-init [mechanism: sym32 of 4 GiB]: 19 bytes that once reserved 4 GiB
    let body = [0x00, 0x53, 0x41, 0xc0, 6, 1, 0xb3, 0xff, 0xff, 0xff, 0xff];
    let mut f = frame_of(1, &body);
    assert!(matches!(
        decode_frame(&mut f, 512, FrameKind::Sasl),
        Err(FrameError::Decode(_))
    ));
    // and deep nesting in the initial response's place
    let mut deep = vec![0x00, 0x53, 0x41, 0xd0];
    let inner = nested_lists(2000);
    let mut fields = vec![0xa3, 5];
    fields.extend_from_slice(b"PLAIN");
    fields.extend_from_slice(&inner);
    deep.extend_from_slice(&(4 + fields.len() as u32).to_be_bytes());
    deep.extend_from_slice(&2u32.to_be_bytes());
    deep.extend_from_slice(&fields);
    let mut f = frame_of(1, &deep);
    assert!(matches!(
        decode_frame(&mut f, 1 << 20, FrameKind::Sasl),
        Err(FrameError::Decode(_))
    ));
}
