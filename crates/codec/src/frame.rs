//! Protocol headers and frames (AMQP 1.0 part 2.3).
//!
//! [`decode_frame`] takes whole frames off the front of a read buffer: "not enough bytes yet"
//! is `Ok(None)`, a malformed frame is a [`FrameError`] that says which connection error
//! condition it deserves.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fe2o3_amqp_types::performatives::{Performative, Transfer};

use crate::sasl::SaslFrame;
use crate::value::{check_value, descriptor_code};
use crate::CodecError;

/// The smallest max-frame-size a peer may announce (part 2.7.1).
pub const MIN_MAX_FRAME_SIZE: u32 = 512;
/// Bytes in a frame header.
pub const FRAME_HEADER_LEN: usize = 8;

/// The three protocol headers a connection may start with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolId {
    /// `AMQP 0 1.0.0`: AMQP frames follow.
    Amqp,
    /// `AMQP 2 1.0.0`: a TLS handshake follows.
    Tls,
    /// `AMQP 3 1.0.0`: SASL frames follow.
    Sasl,
}

impl ProtocolId {
    /// The eight header bytes.
    pub fn header(self) -> [u8; 8] {
        let id = match self {
            ProtocolId::Amqp => 0,
            ProtocolId::Tls => 2,
            ProtocolId::Sasl => 3,
        };
        [b'A', b'M', b'Q', b'P', id, 1, 0, 0]
    }

    /// Parses eight header bytes; anything else (another version, not AMQP) is `None`.
    pub fn parse(bytes: &[u8; 8]) -> Option<Self> {
        if &bytes[..4] != b"AMQP" || bytes[5..] != [1, 0, 0] {
            return None;
        }
        match bytes[4] {
            0 => Some(ProtocolId::Amqp),
            2 => Some(ProtocolId::Tls),
            3 => Some(ProtocolId::Sasl),
            _ => None,
        }
    }
}

/// A decoded frame.
// Frames are decoded and handled one at a time, never stored in bulk: boxing the large
// variant would only add an allocation per frame.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Frame {
    /// An AMQP frame; `body == None` is an empty (heartbeat) frame.
    Amqp {
        /// The session channel.
        channel: u16,
        /// The performative.
        body: Option<Performative>,
        /// Bytes after the performative (only transfers carry any).
        payload: Bytes,
    },
    /// A SASL frame.
    Sasl(SaslFrame),
}

/// Why a frame could not be decoded, split by the connection error it deserves.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame header is broken or the frame is too large: `amqp:connection:framing-error`.
    #[error("framing error: {0}")]
    Framing(String),
    /// The frame body does not decode: `amqp:decode-error`.
    #[error("decode error: {0}")]
    Decode(#[from] CodecError),
}

/// Which kind of frames the connection is reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// AMQP frames (type 0).
    Amqp,
    /// SASL frames (type 1).
    Sasl,
}

/// Takes one whole frame off the front of `buf`, or returns `Ok(None)` if more bytes are
/// needed. Frames larger than `max_frame_size` are refused before they are buffered.
pub fn decode_frame(
    buf: &mut BytesMut,
    max_frame_size: u32,
    kind: FrameKind,
) -> Result<Option<Frame>, FrameError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let size = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let doff = buf[4] as usize;
    let ftype = buf[5];
    let channel = u16::from_be_bytes([buf[6], buf[7]]);
    if (size as usize) < FRAME_HEADER_LEN {
        return Err(FrameError::Framing(format!("frame size {size} is below 8")));
    }
    if size > max_frame_size {
        return Err(FrameError::Framing(format!(
            "frame of {size} bytes exceeds max-frame-size {max_frame_size}"
        )));
    }
    if doff < 2 || doff * 4 > size as usize {
        return Err(FrameError::Framing(format!(
            "data offset {doff} invalid for a frame of {size} bytes"
        )));
    }
    let expected = match kind {
        FrameKind::Amqp => 0,
        FrameKind::Sasl => 1,
    };
    if ftype != expected {
        return Err(FrameError::Framing(format!(
            "frame type {ftype} where type {expected} was expected"
        )));
    }
    if buf.len() < size as usize {
        buf.reserve(size as usize - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(size as usize).freeze();
    frame.advance(doff * 4);
    match kind {
        FrameKind::Sasl => Ok(Some(Frame::Sasl(SaslFrame::decode(&frame)?))),
        FrameKind::Amqp => {
            if frame.is_empty() {
                return Ok(Some(Frame::Amqp {
                    channel,
                    body: None,
                    payload: Bytes::new(),
                }));
            }
            let (perf, payload) = decode_performative(frame)?;
            Ok(Some(Frame::Amqp {
                channel,
                body: Some(perf),
                payload,
            }))
        }
    }
}

fn decode_performative(body: Bytes) -> Result<(Performative, Bytes), CodecError> {
    let code =
        descriptor_code(&body).ok_or(CodecError::Invalid("frame body is not a performative"))?;
    if !(0x10..=0x18).contains(&code) {
        return Err(CodecError::Invalid("unknown performative"));
    }
    let n = check_value(&body)?;
    let perf: Performative = match serde_amqp::from_slice(&body[..n]) {
        Ok(p) => p,
        Err(source) => {
            // string keys where `fields` want symbols: read them as symbols (the same
            // layout, so the check above holds for the copy too)
            let mut copy = body[..n].to_vec();
            crate::value::symbolize_map_keys(&mut copy)?;
            serde_amqp::from_slice(&copy).map_err(|_| CodecError::Serde {
                what: "performative",
                source,
            })?
        }
    };
    let payload = body.slice(n..);
    if !payload.is_empty() && !matches!(perf, Performative::Transfer(_)) {
        return Err(CodecError::Invalid(
            "payload after a performative other than transfer",
        ));
    }
    Ok((perf, payload))
}

/// Appends one frame holding `perf` (and `payload`, for transfers) to `out`.
pub fn encode_frame(out: &mut BytesMut, channel: u16, perf: &Performative, payload: &[u8]) {
    let start = out.len();
    out.put_slice(&[0, 0, 0, 0, 2, 0]);
    out.put_u16(channel);
    write_value(out, perf);
    out.put_slice(payload);
    let size = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

/// Appends an empty AMQP frame (a heartbeat).
pub fn encode_empty_frame(out: &mut BytesMut) {
    out.put_slice(&[0, 0, 0, 8, 2, 0, 0, 0]);
}

/// Appends a SASL frame.
pub fn encode_sasl_frame(out: &mut BytesMut, frame: &SaslFrame) {
    let start = out.len();
    out.put_slice(&[0, 0, 0, 0, 2, 1, 0, 0]);
    frame.encode(out);
    let size = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

/// Appends a delivery as one or more transfer frames, none larger than `max_frame_size`.
/// `first` carries the delivery's fields; continuation frames repeat only the handle and the
/// delivery-id. `chunks` are written in order as the message payload. Returns the number of
/// frames written.
pub fn encode_transfer(
    out: &mut BytesMut,
    channel: u16,
    first: Transfer,
    chunks: &[&[u8]],
    max_frame_size: u32,
) -> u32 {
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    // the common case, a delivery that fits one frame, skips serde entirely
    if let Some(()) = encode_single_transfer(out, channel, &first, chunks, total, max_frame_size) {
        return 1;
    }
    let mut head = first;
    head.more = true;
    let mut perf = BytesMut::new();
    write_value(&mut perf, &Performative::Transfer(head.clone()));
    let room = (max_frame_size as usize).saturating_sub(FRAME_HEADER_LEN + perf.len());
    if total <= room {
        head.more = false;
        encode_frame_from_parts(out, channel, &Performative::Transfer(head), chunks, total);
        return 1;
    }
    let cont = Transfer {
        handle: head.handle.clone(),
        delivery_id: head.delivery_id,
        delivery_tag: None,
        message_format: None,
        settled: None,
        more: true,
        rcv_settle_mode: None,
        state: None,
        resume: false,
        aborted: false,
        batchable: head.batchable,
    };
    let mut cursor = ChunkCursor {
        chunks,
        idx: 0,
        off: 0,
    };
    let mut remaining = total;
    let mut perf = Performative::Transfer(head);
    let mut frames = 0;
    loop {
        frames += 1;
        let mut pbuf = BytesMut::new();
        write_value(&mut pbuf, &perf);
        let room = (max_frame_size as usize)
            .saturating_sub(FRAME_HEADER_LEN + pbuf.len())
            .max(1);
        let take = remaining.min(room);
        remaining -= take;
        if remaining == 0 {
            if let Performative::Transfer(t) = &mut perf {
                t.more = false;
            }
            pbuf.clear();
            write_value(&mut pbuf, &perf);
        }
        let start = out.len();
        out.put_slice(&[0, 0, 0, 0, 2, 0]);
        out.put_u16(channel);
        out.put_slice(&pbuf);
        cursor.copy_into(out, take);
        let size = (out.len() - start) as u32;
        out[start..start + 4].copy_from_slice(&size.to_be_bytes());
        if remaining == 0 {
            return frames;
        }
        perf = Performative::Transfer(cont.clone());
    }
}

/// Writes `t` (with `more = false`) and `chunks` as one frame, hand-encoded, when `t` uses
/// only the fields a broker sets on a fresh delivery and the whole frame fits; otherwise
/// writes nothing and returns `None`.
fn encode_single_transfer(
    out: &mut BytesMut,
    channel: u16,
    t: &Transfer,
    chunks: &[&[u8]],
    total: usize,
    max_frame_size: u32,
) -> Option<()> {
    let tag = t.delivery_tag.as_ref().map(|b| b.as_ref());
    if t.rcv_settle_mode.is_some()
        || t.state.is_some()
        || t.resume
        || t.aborted
        || t.batchable
        || tag.is_some_and(|b| b.len() > 32)
    {
        return None;
    }
    // fields: handle, delivery-id, delivery-tag, message-format, settled, more
    let start = out.len();
    out.reserve(FRAME_HEADER_LEN + 64 + total);
    out.put_slice(&[0, 0, 0, 0, 2, 0]);
    out.put_u16(channel);
    out.put_slice(&[0x00, 0x53, 0x14, 0xc0, 0, 6]);
    let list_size_at = out.len() - 2;
    out.put_u8(0x70);
    out.put_u32(t.handle.0);
    let put_uint = |out: &mut BytesMut, v: Option<u32>| match v {
        Some(v) => {
            out.put_u8(0x70);
            out.put_u32(v);
        }
        None => out.put_u8(0x40),
    };
    put_uint(out, t.delivery_id);
    match tag {
        Some(b) => {
            out.put_u8(0xa0);
            out.put_u8(b.len() as u8);
            out.put_slice(b);
        }
        None => out.put_u8(0x40),
    }
    put_uint(out, t.message_format);
    out.put_u8(match t.settled {
        Some(true) => 0x41,
        Some(false) => 0x42,
        None => 0x40,
    });
    out.put_u8(0x42); // more = false
                      // the list's size counts the count byte and the fields (at most 59 bytes here)
    out[list_size_at] = (out.len() - list_size_at - 1) as u8;
    let size = out.len() - start + total;
    if size > max_frame_size as usize {
        out.truncate(start);
        return None;
    }
    out[start..start + 4].copy_from_slice(&(size as u32).to_be_bytes());
    for c in chunks {
        out.put_slice(c);
    }
    Some(())
}

fn encode_frame_from_parts(
    out: &mut BytesMut,
    channel: u16,
    perf: &Performative,
    chunks: &[&[u8]],
    total: usize,
) {
    let start = out.len();
    out.reserve(FRAME_HEADER_LEN + 64 + total);
    out.put_slice(&[0, 0, 0, 0, 2, 0]);
    out.put_u16(channel);
    write_value(out, perf);
    for c in chunks {
        out.put_slice(c);
    }
    let size = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

struct ChunkCursor<'a> {
    chunks: &'a [&'a [u8]],
    idx: usize,
    off: usize,
}

impl ChunkCursor<'_> {
    fn copy_into(&mut self, out: &mut BytesMut, mut n: usize) {
        while n > 0 {
            let c = self.chunks[self.idx];
            let take = (c.len() - self.off).min(n);
            out.put_slice(&c[self.off..self.off + take]);
            self.off += take;
            n -= take;
            if self.off == c.len() {
                self.idx += 1;
                self.off = 0;
            }
        }
    }
}

/// Serialises a value with `serde_amqp` straight into `out`.
pub(crate) fn write_value<T: serde::Serialize>(out: &mut BytesMut, value: &T) {
    let mut ser = serde_amqp::ser::Serializer::new(out.writer());
    // Serialising our own well-formed performatives into memory cannot fail.
    value
        .serialize(&mut ser)
        .expect("serialising a performative into memory");
}

#[cfg(test)]
mod tests;
