//! How a stored message looks to a Service Bus client: broker annotations in front of the
//! producer's bare message, and for dead-lettered messages the reason and description as
//! application properties (where the SDKs read them).

use bytes::{Bytes, BytesMut};
use ferrobus_codec::message::{
    encode_bare_with_properties, encode_delivery_prefix, AnnotationValue, HeaderFields, Sections,
};

/// Message annotations the broker owns: a producer's values for these are dropped.
pub const OWNED_ANNOTATIONS: &[&str] = &[
    "x-opt-sequence-number",
    "x-opt-enqueued-time",
    "x-opt-locked-until",
    "x-opt-message-state",
    "x-opt-enqueue-sequence-number",
    "x-opt-deadletter-source",
];

/// What the broker says about one message.
pub struct Stamp<'a> {
    pub seq: u64,
    /// The effective time to live, for the header.
    pub ttl_ms: Option<u32>,
    pub enqueued_ms: i64,
    pub state: i32,
    pub locked_until_ms: Option<i64>,
    pub dead_letter_reason: Option<&'a str>,
    pub dead_letter_description: Option<&'a str>,
    /// The entity whose dead-letter sub-queue forwarded the message here, if one did.
    pub dead_letter_source: Option<&'a str>,
}

impl Stamp<'_> {
    /// The broker annotations.
    pub fn annotations(&self) -> Vec<(&'static str, AnnotationValue)> {
        let mut a = vec![
            (
                "x-opt-sequence-number",
                AnnotationValue::Long(self.seq as i64),
            ),
            (
                "x-opt-enqueued-time",
                AnnotationValue::Timestamp(self.enqueued_ms),
            ),
            ("x-opt-message-state", AnnotationValue::Int(self.state)),
        ];
        if let Some(until) = self.locked_until_ms {
            a.push(("x-opt-locked-until", AnnotationValue::Timestamp(until)));
        }
        if let Some(source) = self.dead_letter_source {
            a.push((
                "x-opt-deadletter-source",
                AnnotationValue::Str(source.to_string()),
            ));
        }
        a
    }

    /// True when the bare message gets extra application properties.
    pub fn dead_lettered(&self) -> bool {
        self.dead_letter_reason.is_some() || self.dead_letter_description.is_some()
    }

    /// The whole message, encoded (peek, receive-by-sequence-number, dead-lettered
    /// deliveries). `None` if the stored bytes do not parse (they were checked on the way in).
    pub fn encode(&self, payload: &[u8], delivery_count: u32) -> Option<Bytes> {
        let sections = Sections::scan_stored(payload).ok()?;
        let header = HeaderFields::for_delivery(
            sections.header(payload).ok()?.as_ref(),
            delivery_count,
            self.ttl_ms,
        );
        let mut out = BytesMut::with_capacity(payload.len() + 128);
        encode_delivery_prefix(
            &mut out,
            payload,
            &sections,
            &header,
            &self.annotations(),
            OWNED_ANNOTATIONS,
        )
        .ok()?;
        if self.dead_lettered() {
            let mut extra = Vec::new();
            if let Some(r) = self.dead_letter_reason {
                extra.push(("DeadLetterReason", AnnotationValue::Str(r.to_string())));
            }
            if let Some(d) = self.dead_letter_description {
                extra.push((
                    "DeadLetterErrorDescription",
                    AnnotationValue::Str(d.to_string()),
                ));
            }
            encode_bare_with_properties(&mut out, payload, &sections, &extra).ok()?;
        } else {
            out.extend_from_slice(&payload[sections.bare.clone()]);
        }
        Some(out.freeze())
    }
}
