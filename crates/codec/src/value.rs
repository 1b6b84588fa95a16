//! Walking the AMQP 1.0 type system's encoding without decoding it.
//!
//! [`value_len`] returns how many bytes one encoded value (possibly described) occupies; the
//! frame decoder uses it to find where a performative ends and its payload begins, and the
//! message scanner uses it to find section boundaries.
//!
//! [`check_value`] walks a whole value, every element of every list, map and array, and
//! accepts it only if a decoder can take it without trusting a single declared number: the
//! nesting is at most [`MAX_NESTING`] deep, every declared size, count and length fits in the
//! bytes present, and the values it holds are at most [`MAX_VALUES`]. Nothing reaches
//! `serde_amqp` (whose decoder recurses without a limit and allocates declared lengths before
//! reading them) from a peer without passing it first: see [`crate::decode`].

use crate::CodecError;

/// How deeply described types may nest before the input is called malformed.
const MAX_DEPTH: usize = 16;

/// How deeply values may nest (a described value, a list, map or array each add a level).
///
/// The deepest structure a Service Bus client sends is a source filter set or a management
/// request: a performative (1) holding a map (2) of described filters (3) over a list or map (4)
/// of values (5), and a management body of a few levels more. 32 leaves room for any sensible
/// peer while keeping a recursive decoder's stack use trivial (a few KiB).
pub const MAX_NESTING: usize = 32;

/// The most values (primitives, compound values and their elements) one checked value may
/// hold. A decoded value costs up to ~100 bytes of memory, so this bounds what decoding one
/// value can allocate at ~25 MiB whatever its declared counts, even for a management request
/// reassembled from many frames.
pub const MAX_VALUES: usize = 1 << 18;

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

/// Checks the whole first encoded value in `buf` (see the module docs) and returns its length.
pub fn check_value(buf: &[u8]) -> Result<usize, CodecError> {
    let mut budget = MAX_VALUES;
    check_at(buf, 0, &mut budget)
}

fn too_deep() -> CodecError {
    CodecError::Invalid("values nested too deeply")
}

/// Counts one value against the budget.
fn spend(budget: &mut usize, n: usize) -> Result<(), CodecError> {
    *budget = budget
        .checked_sub(n)
        .ok_or(CodecError::Invalid("too many values in one value"))?;
    Ok(())
}

fn check_at(buf: &[u8], depth: usize, budget: &mut usize) -> Result<usize, CodecError> {
    if depth >= MAX_NESTING {
        return Err(too_deep());
    }
    let code = *buf.first().ok_or(CodecError::Truncated)?;
    if code == 0x00 {
        spend(budget, 1)?;
        let d = check_at(&buf[1..], depth + 1, budget)?;
        let v = check_at(&buf[1 + d..], depth + 1, budget)?;
        return Ok(1 + d + v);
    }
    spend(budget, 1)?;
    Ok(1 + check_body(code, &buf[1..], depth, budget)?)
}

/// Bytes taken by the encoding that follows format code `code` at the start of `body`.
fn check_body(
    code: u8,
    body: &[u8],
    depth: usize,
    budget: &mut usize,
) -> Result<usize, CodecError> {
    let need = |n: usize| {
        if n <= body.len() {
            Ok(n)
        } else {
            Err(CodecError::Truncated)
        }
    };
    match code {
        0x40..=0x45 => Ok(0),
        0x50..=0x56 => need(1),
        0x60 | 0x61 => need(2),
        0x70..=0x74 => need(4),
        0x80..=0x84 => need(8),
        0x94 | 0x98 => need(16),
        0xa0 | 0xa1 | 0xa3 => need(1 + *body.first().ok_or(CodecError::Truncated)? as usize),
        0xb0 | 0xb1 | 0xb3 => need(4 + read_u32(body, 0)? as usize),
        0xc0 | 0xc1 | 0xd0 | 0xd1 | 0xe0 | 0xf0 => {
            // size and count are one byte each, or four for the 32-bit encodings
            let width = if matches!(code, 0xd0 | 0xd1 | 0xf0) {
                4
            } else {
                1
            };
            let (size, count) = if width == 4 {
                (read_u32(body, 0)? as usize, read_u32(body, 4)? as usize)
            } else {
                let size = *body.first().ok_or(CodecError::Truncated)? as usize;
                (size, *body.get(1).ok_or(CodecError::Truncated)? as usize)
            };
            // size counts the count field and the elements
            let end = need(width + size)?;
            let items = body
                .get(2 * width..end)
                .ok_or(CodecError::Invalid("compound size smaller than its count"))?;
            if depth + 1 >= MAX_NESTING {
                return Err(too_deep());
            }
            match code {
                0xe0 | 0xf0 => check_array(items, count, 1 + end, depth + 1, budget)?,
                _ => {
                    if code & 1 == 1 && count % 2 != 0 {
                        return Err(CodecError::Invalid("a map with an odd element count"));
                    }
                    check_items(items, count, depth + 1, budget)?
                }
            }
            Ok(end)
        }
        _ => Err(CodecError::Invalid("unknown format code")),
    }
}

fn read_u32(b: &[u8], at: usize) -> Result<u32, CodecError> {
    let b = b.get(at..at + 4).ok_or(CodecError::Truncated)?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The elements of a list or map: exactly `count` values filling `items`.
fn check_items(
    items: &[u8],
    count: usize,
    depth: usize,
    budget: &mut usize,
) -> Result<(), CodecError> {
    // every element takes at least one byte: a count the bytes cannot hold is a lie
    if count > items.len() {
        return Err(CodecError::Invalid(
            "element count exceeds the bytes present",
        ));
    }
    let mut pos = 0;
    for _ in 0..count {
        pos += check_at(&items[pos..], depth, budget)?;
    }
    if pos != items.len() {
        return Err(CodecError::Invalid(
            "compound size does not match its elements",
        ));
    }
    Ok(())
}

/// The elements of an array: one constructor (possibly described), then `count` encodings
/// without a format code. `encoded` is the whole array's length on the wire.
fn check_array(
    items: &[u8],
    count: usize,
    encoded: usize,
    depth: usize,
    budget: &mut usize,
) -> Result<(), CodecError> {
    // an empty array may come without its constructor (serde_amqp writes it so)
    if count == 0 && items.is_empty() {
        return Ok(());
    }
    let mut pos = 0;
    if items.first() == Some(&0x00) {
        pos = 1 + check_at(&items[1..], depth, budget)?;
    }
    let code = *items.get(pos).ok_or(CodecError::Truncated)?;
    if code == 0x00 {
        return Err(CodecError::Invalid(
            "an array constructor nests descriptors",
        ));
    }
    pos += 1;
    let rest = &items[pos..];
    if (0x40..=0x45).contains(&code) {
        // zero-width elements take no bytes at all: bound them by the array's own size so
        // a few bytes can never stand for millions of decoded values
        if count > encoded {
            return Err(CodecError::Invalid("too many zero-width array elements"));
        }
        if !rest.is_empty() {
            return Err(CodecError::Invalid(
                "array size does not match its elements",
            ));
        }
        return spend(budget, count);
    }
    if count > rest.len() {
        return Err(CodecError::Invalid(
            "element count exceeds the bytes present",
        ));
    }
    spend(budget, count)?;
    let mut at = 0;
    for _ in 0..count {
        at += check_body(code, &rest[at..], depth, budget)?;
    }
    if at != rest.len() {
        return Err(CodecError::Invalid(
            "array size does not match its elements",
        ));
    }
    Ok(())
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
    let short = CodecError::Invalid("map size smaller than its count");
    match buf[0] {
        0xc1 => {
            let count = *buf.get(2).ok_or(CodecError::Truncated)? as u32;
            Ok((count, buf.get(3..total).ok_or(short)?))
        }
        0xd1 => {
            let count = read_u32(buf, 5)?;
            Ok((count, buf.get(9..total).ok_or(short)?))
        }
        0x40 => Ok((0, &[])),
        _ => Err(CodecError::Invalid("expected a map")),
    }
}

#[cfg(test)]
pub(crate) mod check_tests;

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
