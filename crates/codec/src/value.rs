//! Walking the AMQP 1.0 type system's encoding without decoding it.
//!
//! [`value_len`] returns how many bytes one encoded value (possibly described) occupies; the
//! frame decoder uses it to find where a performative ends and its payload begins, and the
//! message scanner uses it to find section boundaries.

use crate::CodecError;

/// How deeply described types may nest before the input is called malformed.
const MAX_DEPTH: usize = 16;

/// Length in bytes of the first encoded value in `buf`.
pub fn value_len(buf: &[u8]) -> Result<usize, CodecError> {
    value_len_at(buf, 0)
}

fn value_len_at(buf: &[u8], depth: usize) -> Result<usize, CodecError> {
    let code = *buf.first().ok_or(CodecError::Truncated)?;
    if code == 0x00 {
        if depth >= MAX_DEPTH {
            return Err(CodecError::Invalid("described types nested too deeply"));
        }
        let d = value_len_at(&buf[1..], depth + 1)?;
        let v = value_len_at(&buf[1 + d..], depth + 1)?;
        return Ok(1 + d + v);
    }
    let len = 1 + match code {
        0x40..=0x45 => 0,
        0x50..=0x56 => 1,
        0x60 | 0x61 => 2,
        0x70..=0x74 => 4,
        0x80..=0x84 => 8,
        0x94 | 0x98 => 16,
        0xa0 | 0xa1 | 0xa3 | 0xc0 | 0xc1 | 0xe0 => {
            1 + *buf.get(1).ok_or(CodecError::Truncated)? as usize
        }
        0xb0 | 0xb1 | 0xb3 | 0xd0 | 0xd1 | 0xf0 => {
            let b = buf.get(1..5).ok_or(CodecError::Truncated)?;
            4 + u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        }
        _ => return Err(CodecError::Invalid("unknown format code")),
    };
    if len > buf.len() {
        return Err(CodecError::Truncated);
    }
    Ok(len)
}

/// The numeric descriptor of a described value at the start of `buf`, mapping the symbolic
/// descriptors of the performatives, SASL frames and message sections to their codes.
pub fn descriptor_code(buf: &[u8]) -> Option<u64> {
    if buf.first() != Some(&0x00) {
        return None;
    }
    match *buf.get(1)? {
        0x53 => buf.get(2).map(|c| *c as u64),
        0x80 => {
            let b = buf.get(2..10)?;
            Some(u64::from_be_bytes(b.try_into().ok()?))
        }
        0x44 => Some(0),
        0xa3 => {
            let n = *buf.get(2)? as usize;
            symbolic_code(buf.get(3..3 + n)?)
        }
        0xb3 => {
            let b = buf.get(2..6)?;
            let n = u32::from_be_bytes(b.try_into().ok()?) as usize;
            symbolic_code(buf.get(6..6 + n)?)
        }
        _ => None,
    }
}

fn symbolic_code(name: &[u8]) -> Option<u64> {
    const NAMES: &[(&[u8], u64)] = &[
        (b"amqp:open:list", 0x10),
        (b"amqp:begin:list", 0x11),
        (b"amqp:attach:list", 0x12),
        (b"amqp:flow:list", 0x13),
        (b"amqp:transfer:list", 0x14),
        (b"amqp:disposition:list", 0x15),
        (b"amqp:detach:list", 0x16),
        (b"amqp:end:list", 0x17),
        (b"amqp:close:list", 0x18),
        (b"amqp:sasl-mechanisms:list", 0x40),
        (b"amqp:sasl-init:list", 0x41),
        (b"amqp:sasl-challenge:list", 0x42),
        (b"amqp:sasl-response:list", 0x43),
        (b"amqp:sasl-outcome:list", 0x44),
        (b"amqp:header:list", 0x70),
        (b"amqp:delivery-annotations:map", 0x71),
        (b"amqp:message-annotations:map", 0x72),
        (b"amqp:properties:list", 0x73),
        (b"amqp:application-properties:map", 0x74),
        (b"amqp:data:binary", 0x75),
        (b"amqp:amqp-sequence:list", 0x76),
        (b"amqp:amqp-value:*", 0x77),
        (b"amqp:footer:map", 0x78),
    ];
    NAMES.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
}

/// Rewrites, in place, every string map key (`str8`/`str32`) inside an encoded value into a
/// symbol (`sym8`/`sym32`): the same layout with another format code. Performatives carry only
/// `fields` maps, whose keys are symbols, but some clients (the Service Bus JS SDK in a
/// rejected outcome's error info) send strings; decoding retries with this.
pub fn symbolize_map_keys(buf: &mut [u8]) -> Result<(), CodecError> {
    walk_keys(buf, 0).map(|_| ())
}

fn walk_keys(buf: &mut [u8], depth: usize) -> Result<usize, CodecError> {
    if depth >= MAX_DEPTH {
        return Err(CodecError::Invalid("values nested too deeply"));
    }
    let len = value_len(buf)?;
    let code = buf[0];
    match code {
        0x00 => {
            let d = walk_keys(&mut buf[1..], depth + 1)?;
            walk_keys(&mut buf[1 + d..], depth + 1)?;
        }
        0xc0 | 0xd0 | 0xc1 | 0xd1 => {
            let header = if code & 0xf0 == 0xc0 { 3 } else { 9 };
            let is_map = code & 1 == 1;
            let mut pos = header.min(len);
            let mut index = 0usize;
            while pos < len {
                if is_map && index.is_multiple_of(2) {
                    match buf[pos] {
                        0xa1 => buf[pos] = 0xa3,
                        0xb1 => buf[pos] = 0xb3,
                        _ => {}
                    }
                }
                pos += walk_keys(&mut buf[pos..len], depth + 1)?;
                index += 1;
            }
        }
        _ => {}
    }
    Ok(len)
}

/// Splits an encoded map (`map8`/`map32`) into its element count and the raw bytes of its
/// key/value pairs.
pub fn map_entries(buf: &[u8]) -> Result<(u32, &[u8]), CodecError> {
    let total = value_len(buf)?;
    match buf[0] {
        0xc1 => {
            let count = *buf.get(2).ok_or(CodecError::Truncated)? as u32;
            Ok((count, &buf[3..total]))
        }
        0xd1 => {
            let b = buf.get(5..9).ok_or(CodecError::Truncated)?;
            let count = u32::from_be_bytes(b.try_into().expect("4 bytes"));
            Ok((count, &buf[9..total]))
        }
        0x40 => Ok((0, &[])),
        _ => Err(CodecError::Invalid("expected a map")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_amqp::{primitives::Symbol, Value};

    #[test]
    fn lengths_of_encoded_values_match_the_encoder() {
        let values = vec![
            Value::Null,
            Value::Bool(true),
            Value::Ubyte(7),
            Value::Uint(0),
            Value::Uint(70000),
            Value::Ulong(1 << 40),
            Value::String("héllo".into()),
            Value::Symbol(Symbol::from("x-opt-sequence-number")),
            Value::Binary(serde_bytes::ByteBuf::from(vec![1u8; 300])),
            Value::List(vec![Value::Int(1), Value::String("a".repeat(400))]),
        ];
        for v in values {
            let enc = serde_amqp::to_vec(&v).unwrap();
            let mut padded = enc.clone();
            padded.extend_from_slice(&[0xde, 0xad]);
            assert_eq!(value_len(&padded).unwrap(), enc.len(), "{v:?}");
        }
    }

    #[test]
    fn truncated_and_invalid_input_is_an_error() {
        assert!(matches!(value_len(&[]), Err(CodecError::Truncated)));
        assert!(matches!(
            value_len(&[0xa1, 5, b'a']),
            Err(CodecError::Truncated)
        ));
        assert!(matches!(value_len(&[0x2f]), Err(CodecError::Invalid(_))));
        let deep = vec![0u8; 64];
        assert!(value_len(&deep).is_err());
    }

    #[test]
    fn symbolic_descriptors_map_to_codes() {
        let mut buf = vec![0x00, 0xa3, 14];
        buf.extend_from_slice(b"amqp:open:list");
        assert_eq!(descriptor_code(&buf), Some(0x10));
        assert_eq!(descriptor_code(&[0x00, 0x53, 0x75]), Some(0x75));
    }
}
