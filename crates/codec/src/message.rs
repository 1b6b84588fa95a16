//! The sections of an AMQP message, as slices of the producer's bytes (part 3.2).
//!
//! [`Sections::scan`] walks section boundaries without decoding values; it checks every
//! section but the body whole ([`crate::value::check_value`]), so whatever later decodes a
//! header, properties or annotations of a scanned message decodes bounded input. The broker keeps the
//! producer's payload exactly as received and, when it delivers, writes a fresh header and
//! message-annotations section in front of the untouched bare message (properties,
//! application-properties, body, footer); delivery annotations are per hop and are dropped.

use std::ops::Range;

use bytes::{BufMut, BytesMut};
use fe2o3_amqp_types::messaging::Header;

use crate::value::{check_value, descriptor_code, map_entries, value_len};
use crate::CodecError;

const HEADER: u64 = 0x70;
const DELIVERY_ANNOTATIONS: u64 = 0x71;
const MESSAGE_ANNOTATIONS: u64 = 0x72;
const PROPERTIES: u64 = 0x73;
const APPLICATION_PROPERTIES: u64 = 0x74;
const FOOTER: u64 = 0x78;

/// Byte ranges of a message's sections inside its payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sections {
    /// The header section (descriptor included).
    pub header: Option<Range<usize>>,
    /// The delivery-annotations section.
    pub delivery_annotations: Option<Range<usize>>,
    /// The message-annotations section.
    pub message_annotations: Option<Range<usize>>,
    /// The properties section.
    pub properties: Option<Range<usize>>,
    /// The application-properties section.
    pub application_properties: Option<Range<usize>>,
    /// The body sections (one or more `data` / `amqp-sequence`, or one `amqp-value`).
    pub body: Option<Range<usize>>,
    /// The bare message and footer: from the first section after the annotations to the end.
    pub bare: Range<usize>,
}

impl Sections {
    /// Splits `payload` into its sections. Sections must appear in the order the
    /// specification gives and each at most once (body sections may repeat).
    pub fn scan(payload: &[u8]) -> Result<Self, CodecError> {
        Self::scan_with(payload, true)
    }

    /// [`Sections::scan`] for bytes that [`Sections::scan`] accepted before (a stored message
    /// on its way out): the same boundaries and order checks, without checking every value of
    /// every section whole again, which would cost each delivery what the message's arrival
    /// already paid. Decoding a section still goes through [`crate::decode`], which checks it.
    pub fn scan_stored(payload: &[u8]) -> Result<Self, CodecError> {
        Self::scan_with(payload, false)
    }

    fn scan_with(payload: &[u8], check: bool) -> Result<Self, CodecError> {
        let mut s = Sections {
            bare: payload.len()..payload.len(),
            ..Default::default()
        };
        let mut pos = 0;
        let mut last_rank = 0u8;
        let mut bare_start = None;
        while pos < payload.len() {
            let rest = &payload[pos..];
            let code =
                descriptor_code(rest).ok_or(CodecError::Invalid("expected a message section"))?;
            // the body is the producer's business and is never decoded here; every other
            // section may be, so it is checked whole (see `value::check_value`)
            let len = match code {
                0x75..=0x77 => value_len(rest)?,
                _ if !check => value_len(rest)?,
                _ => check_value(rest)?,
            };
            let range = pos..pos + len;
            let rank = match code {
                HEADER => 1,
                DELIVERY_ANNOTATIONS => 2,
                MESSAGE_ANNOTATIONS => 3,
                PROPERTIES => 4,
                APPLICATION_PROPERTIES => 5,
                0x75..=0x77 => 6,
                FOOTER => 7,
                _ => return Err(CodecError::Invalid("unknown message section")),
            };
            if rank < last_rank || (rank == last_rank && rank != 6) {
                return Err(CodecError::Invalid("message sections out of order"));
            }
            last_rank = rank;
            match code {
                HEADER => s.header = Some(range),
                DELIVERY_ANNOTATIONS => s.delivery_annotations = Some(range),
                MESSAGE_ANNOTATIONS => s.message_annotations = Some(range),
                PROPERTIES => s.properties = Some(range.clone()),
                APPLICATION_PROPERTIES => s.application_properties = Some(range.clone()),
                0x75..=0x77 => {
                    let start = s.body.as_ref().map_or(range.start, |b| b.start);
                    s.body = Some(start..range.end);
                }
                _ => {}
            }
            if rank >= 4 && bare_start.is_none() {
                bare_start = Some(pos);
            }
            pos += len;
        }
        if let Some(start) = bare_start {
            s.bare = start..payload.len();
        }
        Ok(s)
    }

    /// The decoded header, if the message has one.
    pub fn header(&self, payload: &[u8]) -> Result<Option<Header>, CodecError> {
        self.header
            .as_ref()
            .map(|r| crate::decode(&payload[r.clone()], "header"))
            .transpose()
    }

    /// The key/value pairs of the message annotations, raw: element count and bytes.
    pub fn annotation_entries<'a>(&self, payload: &'a [u8]) -> Result<(u32, &'a [u8]), CodecError> {
        match &self.message_annotations {
            None => Ok((0, &[])),
            Some(r) => {
                let sec = &payload[r.clone()];
                let d = value_len(&sec[1..])?;
                map_entries(&sec[1 + d..])
            }
        }
    }
}

impl Sections {
    /// The raw encoded value of message annotation `key`, if present.
    pub fn annotation<'a>(&self, payload: &'a [u8], key: &str) -> Option<&'a [u8]> {
        let (_, mut rest) = self.annotation_entries(payload).ok()?;
        while !rest.is_empty() {
            let kl = value_len(rest).ok()?;
            let vl = value_len(&rest[kl..]).ok()?;
            if symbol_text(&rest[..kl]) == Some(key) {
                return Some(&rest[kl..kl + vl]);
            }
            rest = &rest[kl + vl..];
        }
        None
    }

    /// The contents of each `data` body section (a batch's inner messages), in order.
    pub fn data_sections<'a>(&self, payload: &'a [u8]) -> Result<Vec<&'a [u8]>, CodecError> {
        let Some(body) = &self.body else {
            return Ok(Vec::new());
        };
        let mut rest = &payload[body.clone()];
        let mut out = Vec::new();
        while !rest.is_empty() {
            if descriptor_code(rest) != Some(0x75) {
                return Err(CodecError::Invalid("a batch body holds only data sections"));
            }
            let len = value_len(rest)?;
            let d = value_len(&rest[1..])?;
            let bin = &rest[1 + d..len];
            let start = match bin.first() {
                Some(0xa0) => 2,
                Some(0xb0) => 5,
                _ => return Err(CodecError::Invalid("a data section holds binary")),
            };
            out.push(&bin[start..]);
            rest = &rest[len..];
        }
        Ok(out)
    }
}

impl Sections {
    /// True when the message carries a message-id (the first field of its properties, not
    /// null); read from the bytes without decoding the section.
    pub fn has_message_id(&self, payload: &[u8]) -> bool {
        let Some(r) = &self.properties else {
            return false;
        };
        let sec = &payload[r.clone()];
        let Ok(d) = value_len(&sec[1..]) else {
            return false;
        };
        // the list: list0, or list8/list32 whose count is at least one and whose first
        // element is not null
        let list = &sec[1 + d..];
        let first = match list.first() {
            Some(0xc0) => list.get(2).filter(|c| **c > 0).and_then(|_| list.get(3)),
            Some(0xd0) => list
                .get(5..9)
                .filter(|c| c != &[0, 0, 0, 0])
                .and_then(|_| list.get(9)),
            _ => None,
        };
        first.is_some_and(|code| *code != 0x40)
    }

    /// The message's group-id (the 11th field of its properties; Service Bus's SessionId),
    /// read from the bytes without decoding the section. `None` when it is absent, null or
    /// not a string.
    pub fn group_id<'a>(&self, payload: &'a [u8]) -> Option<&'a str> {
        let sec = payload.get(self.properties.clone()?)?;
        let d = value_len(sec.get(1..)?).ok()?;
        let list = sec.get(1 + d..)?;
        // the list's count and where its first element starts
        let (count, mut at) = match *list.first()? {
            0xc0 => (*list.get(2)? as usize, 3),
            0xd0 => (
                u32::from_be_bytes(list.get(5..9)?.try_into().ok()?) as usize,
                9,
            ),
            _ => return None,
        };
        const GROUP_ID: usize = 10;
        if count <= GROUP_ID {
            return None;
        }
        for _ in 0..GROUP_ID {
            at += value_len(list.get(at..)?).ok()?;
        }
        let v = list.get(at..)?;
        let text = match *v.first()? {
            0xa1 => v.get(2..2 + *v.get(1)? as usize)?,
            0xb1 => {
                let n = u32::from_be_bytes(v.get(1..5)?.try_into().ok()?) as usize;
                v.get(5..5 + n)?
            }
            _ => return None,
        };
        std::str::from_utf8(text).ok()
    }

    /// `payload` with `properties` (an encoded properties section) in place of its own
    /// properties section, or added where it belongs if it had none. Every other section
    /// keeps the producer's bytes.
    pub fn with_properties(&self, payload: &[u8], properties: &[u8]) -> Vec<u8> {
        let at = self
            .properties
            .clone()
            .unwrap_or(self.bare.start..self.bare.start);
        let mut out = Vec::with_capacity(payload.len() + properties.len());
        out.extend_from_slice(&payload[..at.start]);
        out.extend_from_slice(properties);
        out.extend_from_slice(&payload[at.end..]);
        out
    }
}

/// Decodes an AMQP `timestamp` or `long` value (milliseconds).
pub fn decode_millis(v: &[u8]) -> Option<i64> {
    match v.first()? {
        0x83 | 0x81 => Some(i64::from_be_bytes(v.get(1..9)?.try_into().ok()?)),
        0x55 => Some(*v.get(1)? as i8 as i64),
        _ => None,
    }
}

/// Writes the bare message of `payload` with `extra` application properties set (replacing
/// any of the same name): the properties section, body and footer stay the producer's bytes.
/// Used where Service Bus semantics put broker data into application properties
/// (dead-letter reason and description).
pub fn encode_bare_with_properties(
    out: &mut BytesMut,
    payload: &[u8],
    sections: &Sections,
    extra: &[(&str, AnnotationValue)],
) -> Result<(), CodecError> {
    encode_bare_edited(out, payload, sections, None, extra, &[], |a, b| a == b)
}

/// Writes the bare message of `payload` edited: the properties section replaced by
/// `properties` (an encoded section) when given; application properties named in `set`
/// written with their values first, those named in `remove` left out, the others kept as the
/// producer's bytes; body and footer unchanged. `same` decides whether two property names are
/// the same name. Used for dead-lettered copies and for the copies rule actions change.
pub fn encode_bare_edited(
    out: &mut BytesMut,
    payload: &[u8],
    sections: &Sections,
    properties: Option<&[u8]>,
    set: &[(&str, AnnotationValue)],
    remove: &[&str],
    same: impl Fn(&str, &str) -> bool,
) -> Result<(), CodecError> {
    match (properties, &sections.properties) {
        (Some(p), _) => out.put_slice(p),
        (None, Some(p)) => out.put_slice(&payload[p.clone()]),
        (None, None) => {}
    }
    out.put_slice(&[0x00, 0x53, 0x74, 0xd1]);
    let size_at = out.len();
    out.put_slice(&[0; 8]);
    let mut count = 0u32;
    for (k, v) in set {
        put_str(out, 0xa1, 0xb1, k.as_bytes());
        v.encode(out);
        count += 2;
    }
    if let Some(ap) = &sections.application_properties {
        let sec = &payload[ap.clone()];
        let d = value_len(&sec[1..])?;
        let (_, mut rest) = map_entries(&sec[1 + d..])?;
        while !rest.is_empty() {
            let kl = value_len(rest)?;
            let vl = value_len(&rest[kl..])?;
            let key = symbol_text(&rest[..kl]);
            let dropped = key.is_some_and(|k| {
                set.iter().any(|(e, _)| same(e, k)) || remove.iter().any(|e| same(e, k))
            });
            if !dropped {
                out.put_slice(&rest[..kl + vl]);
                count += 2;
            }
            rest = &rest[kl + vl..];
        }
    }
    let size = (out.len() - size_at - 4) as u32;
    out[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    out[size_at + 4..size_at + 8].copy_from_slice(&count.to_be_bytes());
    let after = sections
        .application_properties
        .as_ref()
        .or(sections.properties.as_ref())
        .map_or(sections.bare.start, |r| r.end);
    out.put_slice(&payload[after..]);
    Ok(())
}

/// A value the broker writes into the message annotations.
#[derive(Debug, Clone, PartialEq)]
pub enum AnnotationValue {
    /// AMQP `null`.
    Null,
    /// AMQP `boolean`.
    Bool(bool),
    /// AMQP `double`.
    Double(f64),
    /// AMQP `long`.
    Long(i64),
    /// AMQP `int`.
    Int(i32),
    /// AMQP `timestamp` (milliseconds since the Unix epoch).
    Timestamp(i64),
    /// AMQP `string`.
    Str(String),
    /// AMQP `uuid` (RFC byte order).
    Uuid([u8; 16]),
}

impl AnnotationValue {
    fn encode(&self, out: &mut BytesMut) {
        match self {
            AnnotationValue::Null => out.put_u8(0x40),
            AnnotationValue::Bool(b) => out.put_u8(if *b { 0x41 } else { 0x42 }),
            AnnotationValue::Double(v) => {
                out.put_u8(0x82);
                out.put_f64(*v);
            }
            AnnotationValue::Long(v) => {
                out.put_u8(0x81);
                out.put_i64(*v);
            }
            AnnotationValue::Int(v) => {
                out.put_u8(0x71);
                out.put_i32(*v);
            }
            AnnotationValue::Timestamp(v) => {
                out.put_u8(0x83);
                out.put_i64(*v);
            }
            AnnotationValue::Str(s) => put_str(out, 0xa1, 0xb1, s.as_bytes()),
            AnnotationValue::Uuid(u) => {
                out.put_u8(0x98);
                out.put_slice(u);
            }
        }
    }
}

fn put_str(out: &mut BytesMut, short: u8, long: u8, b: &[u8]) {
    if b.len() <= 255 {
        out.put_u8(short);
        out.put_u8(b.len() as u8);
    } else {
        out.put_u8(long);
        out.put_u32(b.len() as u32);
    }
    out.put_slice(b);
}

/// The header fields the broker sends with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderFields {
    /// Durable flag, as the producer set it.
    pub durable: bool,
    /// Priority, as the producer set it (default 4).
    pub priority: u8,
    /// Time to live in milliseconds.
    pub ttl: Option<u32>,
    /// True only if no earlier acquirer could have seen the message.
    pub first_acquirer: bool,
    /// Earlier unsuccessful delivery attempts.
    pub delivery_count: u32,
}

impl HeaderFields {
    /// The fields of a producer's header (or the defaults when it sent none).
    pub fn from_header(h: Option<&Header>) -> Self {
        match h {
            Some(h) => HeaderFields {
                durable: h.durable,
                priority: h.priority.0,
                ttl: h.ttl,
                first_acquirer: h.first_acquirer,
                delivery_count: h.delivery_count,
            },
            None => HeaderFields {
                durable: false,
                priority: 4,
                ttl: None,
                first_acquirer: false,
                delivery_count: 0,
            },
        }
    }

    /// The header of a delivery of a stored message: the producer's fields with the broker's
    /// delivery count and, when it set one, its TTL. First-acquirer stays true only while no
    /// link acquired the message before; a producer's `false` (or no header) is kept.
    pub fn for_delivery(h: Option<&Header>, delivery_count: u32, ttl: Option<u32>) -> Self {
        let mut header = HeaderFields::from_header(h);
        header.delivery_count = delivery_count;
        header.first_acquirer &= delivery_count == 0;
        if ttl.is_some() {
            header.ttl = ttl;
        }
        header
    }

    /// Appends the header section.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_slice(&[0x00, 0x53, 0x70, 0xc0]);
        let size_at = out.len();
        out.put_slice(&[0, 5]);
        out.put_u8(if self.durable { 0x41 } else { 0x42 });
        out.put_slice(&[0x50, self.priority]);
        match self.ttl {
            Some(t) => {
                out.put_u8(0x70);
                out.put_u32(t);
            }
            None => out.put_u8(0x40),
        }
        out.put_u8(if self.first_acquirer { 0x41 } else { 0x42 });
        out.put_u8(0x70);
        out.put_u32(self.delivery_count);
        out[size_at] = (out.len() - size_at - 1) as u8;
    }
}

/// Writes the broker-owned prefix of an outgoing message: a header section and a
/// message-annotations section made of `broker` first, then the producer's own annotations
/// except those whose key the broker owns (`owned`, or any key in `broker`). The caller sends
/// this prefix followed by `payload[sections.bare]`.
pub fn encode_delivery_prefix(
    out: &mut BytesMut,
    payload: &[u8],
    sections: &Sections,
    header: &HeaderFields,
    broker: &[(&str, AnnotationValue)],
    owned: &[&str],
) -> Result<(), CodecError> {
    header.encode(out);
    let (_, producer) = sections.annotation_entries(payload)?;
    if broker.is_empty() && producer.is_empty() {
        return Ok(());
    }
    out.put_slice(&[0x00, 0x53, 0x72, 0xd1]);
    let size_at = out.len();
    out.put_slice(&[0; 8]);
    let mut count = 0u32;
    for (k, v) in broker {
        put_str(out, 0xa3, 0xb3, k.as_bytes());
        v.encode(out);
        count += 2;
    }
    let mut rest = producer;
    while !rest.is_empty() {
        let kl = value_len(rest)?;
        let vl = value_len(&rest[kl..])?;
        let key = symbol_text(&rest[..kl]);
        let drop = key.is_some_and(|k| owned.contains(&k) || broker.iter().any(|(b, _)| *b == k));
        if !drop {
            out.put_slice(&rest[..kl + vl]);
            count += 2;
        }
        rest = &rest[kl + vl..];
    }
    let size = (out.len() - size_at - 4) as u32;
    out[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    out[size_at + 4..size_at + 8].copy_from_slice(&count.to_be_bytes());
    Ok(())
}

/// The text of an encoded symbol or string, if `v` is one.
pub fn symbol_text(v: &[u8]) -> Option<&str> {
    let body = match v.first()? {
        0xa3 | 0xa1 => v.get(2..)?,
        0xb3 | 0xb1 => v.get(5..)?,
        _ => return None,
    };
    std::str::from_utf8(body).ok()
}

#[cfg(test)]
mod tests;
