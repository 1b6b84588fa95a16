//! The checks behind the fuzz targets of `ferrobus-codec`.
//!
//! Each function takes one fuzz input, feeds it to a public entry point of the codec and
//! panics if an invariant breaks. Beyond "no panic", every decode must stay within an
//! allocation budget proportional to the bytes it was given ([`alloc_budget`]), measured by
//! [`alloc::Counting`], which the caller installs as the global allocator.
//!
//! The same file is compiled into the fuzz targets (`fuzz_targets/*.rs`) and into the corpus
//! replay test of the codec (`crates/codec/tests/corpus.rs`), so `cargo test` checks the
//! committed corpus with exactly the fuzzers' invariants. It uses only the codec and its own
//! dependencies.

use bytes::BytesMut;
use ferrobus_codec::decode;
use ferrobus_codec::frame::{
    decode_frame, encode_frame, encode_sasl_frame, Frame, FrameKind, MIN_MAX_FRAME_SIZE,
};
use ferrobus_codec::message::{
    decode_millis, encode_bare_with_properties, encode_delivery_prefix, symbol_text,
    AnnotationValue, HeaderFields, Sections,
};
use ferrobus_codec::sasl::SaslFrame;
use ferrobus_codec::serde_amqp::{self, Value};
use ferrobus_codec::value::{
    check_value, descriptor_code, map_entries, symbolize_map_keys, value_len,
};

/// Heap bytes a decode may hold at its peak per input byte it was given.
///
/// The densest legal encodings turn one byte into one `Value` (a null in a list: 1 byte on the
/// wire, 72 bytes as a `serde_amqp::Value`), and a vector growing by doubling briefly holds its
/// old and new buffers, so up to 3 × 72 = 216 bytes per input byte (a list32 of 20,000 nulls
/// measures 177). 256 leaves room for that; the amplifications this catches are far beyond it:
/// 10 bytes declaring 65,536 nulls decode to ~7 MB (700,000 per byte), 257 array8s of 255
/// nulls in 1 KiB to ~4.8 MB (4,200 per byte).
pub const ALLOC_PER_INPUT_BYTE: usize = 256;

/// Heap bytes any decode may use whatever its input (the decoded struct itself, small buffers).
pub const ALLOC_SLACK: usize = 64 * 1024;

/// The most heap a decode of `input_len` bytes may hold at once.
pub fn alloc_budget(input_len: usize) -> usize {
    ALLOC_PER_INPUT_BYTE * input_len + ALLOC_SLACK
}

/// What an entry point made of one input.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// How many things it decoded: frames, or 1 for a SASL body, message or value.
    pub accepted: usize,
    /// Whether it returned an error.
    pub rejected: bool,
}

/// Counts the heap bytes the current thread holds, to check a decode's allocations.
pub mod alloc {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        // Const-initialised and without a destructor: safe to use from inside the allocator.
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    /// The system allocator, counting what the current thread allocates and frees.
    pub struct Counting;

    fn grow(n: usize) {
        let _ = LIVE.try_with(|live| {
            let v = live.get().wrapping_add(n as isize);
            live.set(v);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(v)));
        });
    }

    fn shrink(n: usize) {
        let _ = LIVE.try_with(|live| live.set(live.get().wrapping_sub(n as isize)));
    }

    // SAFETY: every call is forwarded unchanged to the system allocator; the counting only
    // touches this thread's counters.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                grow(layout.size());
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() {
                grow(layout.size());
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) };
            shrink(layout.size());
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                grow(new_size);
                shrink(layout.size());
            }
            p
        }
    }

    /// Runs `f` and returns its result with the most heap bytes the current thread held at
    /// once during the call beyond what it held before. Reads 0 unless [`Counting`] is the
    /// global allocator (see [`counting`]).
    pub fn measure<R>(f: impl FnOnce() -> R) -> (R, usize) {
        let base = LIVE.with(Cell::get);
        PEAK.with(|p| p.set(base));
        let r = f();
        let peak = PEAK.with(Cell::get);
        (r, peak.saturating_sub(base).max(0) as usize)
    }

    /// Whether [`Counting`] is installed as the global allocator.
    pub fn counting() -> bool {
        let (_, n) = measure(|| std::hint::black_box(vec![0u8; 100]));
        n >= 100
    }
}

fn check_budget(what: &str, input_len: usize, extra: usize, peak: usize) {
    let budget = alloc_budget(input_len) + extra;
    assert!(
        peak <= budget,
        "{what}: decoding {input_len} bytes held {peak} heap bytes at once (budget {budget})"
    );
}

/// The `frame` target: a connection's bytes through [`decode_frame`].
///
/// Input: `[kind, mfs_hi, mfs_lo, chunk]` then the bytes. Bit 0 of `kind` picks SASL frames
/// over AMQP frames; max-frame-size is `16 * u16(mfs)` (at least 512, at most ~1 MiB); `chunk`
/// is how many bytes arrive per read (0: all at once). After each read, frames are taken until
/// the decoder wants more bytes; the first error ends the connection.
///
/// Checks: each call consumes a whole frame or nothing; a decode holds no more heap than its
/// budget plus the read buffer's reservation (at most twice max-frame-size); every decoded
/// frame encodes again with the codec's own encoder and decodes to the same frame.
pub fn frame(data: &[u8]) -> Outcome {
    let Some((prefix, bytes)) = data.split_first_chunk::<4>() else {
        return Outcome::default();
    };
    let kind = if prefix[0] & 1 == 1 {
        FrameKind::Sasl
    } else {
        FrameKind::Amqp
    };
    let max = (u32::from(u16::from_be_bytes([prefix[1], prefix[2]])) * 16).max(MIN_MAX_FRAME_SIZE);
    let chunk = match prefix[3] {
        0 => bytes.len().max(1),
        n => n as usize,
    };
    let mut out = Outcome::default();
    let mut buf = BytesMut::new();
    for piece in bytes.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            // The frame's own bytes, copied only once they are all here: copying the whole
            // buffer before every call made a frame trickled in byte by byte cost O(n²) in
            // this harness (and the sanitizer's quarantine kept the copies).
            let raw = complete_frame(&buf).map(bytes::Bytes::copy_from_slice);
            let (result, peak) = alloc::measure(|| decode_frame(&mut buf, max, kind));
            check_budget("decode_frame", before, 2 * max as usize, peak);
            match result {
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                    break;
                }
                Ok(Some(f)) => {
                    let used = before - buf.len();
                    assert!(
                        (8..=max as usize).contains(&used),
                        "a frame of {used} bytes was taken (max-frame-size {max})"
                    );
                    let raw = raw.expect("a decoded frame was complete in the buffer");
                    assert_eq!(raw.len(), used, "a frame's size differs from its header's");
                    if serde_amqp_writes_back(&raw) {
                        round_trip_frame(&f);
                    }
                    out.accepted += 1;
                }
                Err(_) => {
                    out.rejected = true;
                    return out;
                }
            }
        }
    }
    out
}

/// The bytes of the first frame in `buf` when all of them have arrived, by its size field.
fn complete_frame(buf: &[u8]) -> Option<&[u8]> {
    let size = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    buf.get(..size)
}

/// Whether serde_amqp 0.18 can encode again what the frame's body holds (see [`value`] for its
/// bugs): the round trip of a frame that holds such a value would only find them again.
fn serde_amqp_writes_back(raw: &[u8]) -> bool {
    let doff = usize::from(raw[4]) * 4;
    let Some(body) = raw.get(doff..).filter(|b| !b.is_empty()) else {
        return true;
    };
    match decode::<Value>(body, "frame body") {
        Ok(v) => !serde_amqp_misencodes(&v) && !has_timestamp_map_key(&v),
        Err(_) => true,
    }
}

fn round_trip_frame(f: &Frame) {
    let mut wire = BytesMut::new();
    match f {
        Frame::Amqp {
            body: None,
            payload,
            ..
        } => {
            assert!(payload.is_empty(), "a heartbeat with a payload");
            return;
        }
        Frame::Amqp {
            channel,
            body: Some(perf),
            payload,
        } => encode_frame(&mut wire, *channel, perf, payload),
        Frame::Sasl(s) => encode_sasl_frame(&mut wire, s),
    }
    let kind = match f {
        Frame::Amqp { .. } => FrameKind::Amqp,
        Frame::Sasl(_) => FrameKind::Sasl,
    };
    let max = (wire.len() as u32).max(MIN_MAX_FRAME_SIZE);
    let again = match decode_frame(&mut wire, max, kind) {
        Ok(Some(again)) => again,
        other => panic!("a decoded frame, encoded again, does not decode: {other:?}\n{f:?}"),
    };
    assert!(wire.is_empty(), "bytes left after the re-encoded frame");
    match (f, &again) {
        (
            Frame::Amqp {
                channel: c1,
                body: b1,
                payload: p1,
            },
            Frame::Amqp {
                channel: c2,
                body: b2,
                payload: p2,
            },
        ) => {
            assert_eq!(c1, c2);
            assert_eq!(b1, b2, "performative changed in a round trip");
            assert_eq!(p1, p2);
        }
        (Frame::Sasl(s1), Frame::Sasl(s2)) => {
            assert_eq!(
                format!("{s1:?}"),
                format!("{s2:?}"),
                "SASL frame changed in a round trip"
            );
        }
        _ => panic!("frame kind changed in a round trip"),
    }
}

/// The `sasl` target: a SASL frame body through [`SaslFrame::decode`].
///
/// Checks: the decode stays within its allocation budget; a decoded frame encodes again and
/// decodes to the same frame.
pub fn sasl(data: &[u8]) -> Outcome {
    let (result, peak) = alloc::measure(|| SaslFrame::decode(data));
    check_budget("SaslFrame::decode", data.len(), 0, peak);
    let Ok(f) = result else {
        return Outcome {
            accepted: 0,
            rejected: true,
        };
    };
    let mut wire = BytesMut::new();
    f.encode(&mut wire);
    let again = SaslFrame::decode(&wire).expect("an encoded SASL frame decodes");
    assert_eq!(format!("{f:?}"), format!("{again:?}"));
    Outcome {
        accepted: 1,
        rejected: false,
    }
}

/// The annotation keys the broker reads or writes.
const ANNOTATION_KEYS: &[&str] = &[
    "x-opt-sequence-number",
    "x-opt-enqueued-time",
    "x-opt-scheduled-enqueue-time",
    "x-opt-locked-until",
    "x-opt-partition-key",
];

/// The `sections` target: a transfer payload through [`Sections::scan`] and every accessor,
/// then through the two writers that build outgoing messages from it.
///
/// Checks: the ranges lie inside the payload, in section order, and the bare message runs to
/// the end; every raw slice an accessor returns lies inside the payload and is one whole
/// value; the header decode stays within its allocation budget; an outgoing message built by
/// [`encode_delivery_prefix`] or [`encode_bare_with_properties`] scans again and carries the
/// producer's bare message or body byte for byte. `rejected`: the scan or the header decode
/// failed.
pub fn sections(payload: &[u8]) -> Outcome {
    let rejected = Outcome {
        accepted: 0,
        rejected: true,
    };
    let Ok(s) = Sections::scan(payload) else {
        return rejected;
    };
    let len = payload.len();
    let ordered = [
        &s.header,
        &s.delivery_annotations,
        &s.message_annotations,
        &s.properties,
        &s.application_properties,
        &s.body,
    ];
    let mut end = 0;
    for r in ordered.into_iter().flatten() {
        assert!(
            end <= r.start && r.start < r.end && r.end <= len,
            "section range {r:?} out of place"
        );
        end = r.end;
    }
    assert_eq!(s.bare.end, len, "the bare message runs to the end");
    assert!(s.bare.start <= len);

    let (header, peak) = alloc::measure(|| s.header(payload));
    check_budget("Sections::header", len, 0, peak);

    let inside = |part: &[u8]| {
        if part.is_empty() {
            return; // `&[]` may point anywhere
        }
        let start = part.as_ptr() as usize;
        let base = payload.as_ptr() as usize;
        assert!(
            start >= base && start + part.len() <= base + len,
            "a slice outside the payload"
        );
    };
    if let Ok((_, entries)) = s.annotation_entries(payload) {
        inside(entries);
    }
    for key in ANNOTATION_KEYS {
        if let Some(v) = s.annotation(payload, key) {
            inside(v);
            assert_eq!(value_len(v).ok(), Some(v.len()), "annotation is one value");
            let _ = decode_millis(v);
            let _ = symbol_text(v);
        }
    }
    if let Ok(data) = s.data_sections(payload) {
        for d in data {
            inside(d);
        }
    }

    let fields = HeaderFields::from_header(header.as_ref().ok().and_then(Option::as_ref));
    let broker = [
        ("x-opt-sequence-number", AnnotationValue::Long(7)),
        (
            "x-opt-enqueued-time",
            AnnotationValue::Timestamp(1_700_000_000_000),
        ),
        ("x-opt-lock-token", AnnotationValue::Uuid([7; 16])),
    ];
    let mut out = BytesMut::new();
    if encode_delivery_prefix(
        &mut out,
        payload,
        &s,
        &fields,
        &broker,
        &["x-opt-locked-until"],
    )
    .is_ok()
    {
        let prefix_len = out.len();
        out.extend_from_slice(&payload[s.bare.clone()]);
        let again = Sections::scan(&out).expect("an outgoing message scans");
        assert_eq!(&out[again.bare.clone()], &payload[s.bare.clone()]);
        assert_eq!(
            again.bare.start, prefix_len,
            "the bare message follows the prefix"
        );
        again.header(&out).expect("the broker's header decodes");
        assert!(again.annotation(&out, "x-opt-sequence-number").is_some());
        assert!(again.annotation(&out, "x-opt-locked-until").is_none());
    }
    let mut out = BytesMut::new();
    let extra = [("DeadLetterReason", AnnotationValue::Str("fuzz".to_string()))];
    if encode_bare_with_properties(&mut out, payload, &s, &extra).is_ok() {
        let again = Sections::scan(&out).expect("a bare message with properties scans");
        assert!(again.application_properties.is_some());
        assert_eq!(
            again.body.clone().map(|r| &out[r]),
            s.body.clone().map(|r| &payload[r]),
            "body changed"
        );
        assert_eq!(
            again.properties.clone().map(|r| &out[r]),
            s.properties.clone().map(|r| &payload[r]),
            "properties changed"
        );
    }
    match header {
        Ok(_) => Outcome {
            accepted: 1,
            rejected: false,
        },
        Err(_) => rejected,
    }
}

/// The `value` target: one encoded value through the scanners and the checked decode.
///
/// Checks: [`value_len`] and [`check_value`] never claim more bytes than there are, and agree
/// on the length where both accept; [`map_entries`] returns a slice of the input;
/// [`symbolize_map_keys`] changes only string format codes into symbol ones (so the value's
/// length stays); where `check_value` accepts, [`decode`]`::<Value>` does not panic and stays
/// within its allocation budget, and what it decodes, encoded again by serde_amqp, passes
/// `check_value` whole and decodes again. `rejected`: the checked decode failed.
pub fn value(data: &[u8]) -> Outcome {
    let _ = descriptor_code(data);
    let len = value_len(data).ok();
    if let Some(n) = len {
        assert!(
            (1..=data.len()).contains(&n),
            "value_len {n} of {} bytes",
            data.len()
        );
    }
    if let Ok((_, entries)) = map_entries(data) {
        if !entries.is_empty() {
            let start = entries.as_ptr() as usize - data.as_ptr() as usize;
            assert!(
                start + entries.len() <= data.len(),
                "map entries outside the map"
            );
        }
    }
    let mut copy = data.to_vec();
    let _ = symbolize_map_keys(&mut copy);
    for (a, b) in data.iter().zip(&copy) {
        assert!(
            a == b || matches!((a, b), (0xa1, 0xa3) | (0xb1, 0xb3)),
            "symbolize_map_keys wrote {b:#x} over {a:#x}"
        );
    }
    assert_eq!(
        value_len(&copy).ok(),
        len,
        "symbolize_map_keys changed the value's length"
    );

    let checked = check_value(data);
    if let Ok(n) = checked {
        assert!(
            (1..=data.len()).contains(&n),
            "check_value {n} of {} bytes",
            data.len()
        );
        if let Some(l) = len {
            assert_eq!(l, n, "value_len and check_value disagree on the length");
        }
    }
    let (decoded, peak) = alloc::measure(|| decode::<Value>(data, "value"));
    check_budget("decode::<Value>", data.len(), 0, peak);
    let Ok(v) = decoded else {
        return Outcome {
            accepted: 0,
            rejected: true,
        };
    };
    assert!(checked.is_ok(), "decode accepted what check_value refused");
    // serde_amqp 0.18 writes two kinds of array wrongly, and check_value rightly refuses them:
    // the length of a string element is its count of chars, not bytes (ser.rs, `serialize_str`
    // for `IsArrayElement`), and every null or empty-list element after the first gets a format
    // code byte (0x40, 0x45) although those encodings are zero-width. Those are serde_amqp's
    // bugs, not the scanner's. And it panics (`unreachable!`, ser.rs:588) encoding a map with
    // a timestamp key before a binary value, so maps with timestamp keys are not re-encoded
    // here either. The broker never encodes a value a peer sent (the Attach reply drops the
    // peer's filters, session/src/conn/attach.rs), so none of this reaches it.
    if serde_amqp_misencodes(&v) || has_timestamp_map_key(&v) {
        return Outcome {
            accepted: 1,
            rejected: false,
        };
    }
    if let Ok(enc) = serde_amqp::to_vec(&v) {
        if let Err(e) = check_value(&enc) {
            panic!(
                "serde_amqp's encoding of a decoded value does not pass check_value ({e}): \
                 {enc:02x?}\nfrom {v:?}"
            );
        }
        decode::<Value>(&enc, "value").expect("a re-encoded value decodes");
    }
    Outcome {
        accepted: 1,
        rejected: false,
    }
}

/// Whether `v` holds a map with a timestamp key, which serde_amqp 0.18 may panic encoding.
fn has_timestamp_map_key(v: &Value) -> bool {
    match v {
        Value::Map(m) => m.iter().any(|(k, v)| {
            matches!(k, Value::Timestamp(_)) || has_timestamp_map_key(k) || has_timestamp_map_key(v)
        }),
        Value::Array(a) => a.iter().any(has_timestamp_map_key),
        Value::List(l) => l.iter().any(has_timestamp_map_key),
        Value::Described(d) => has_timestamp_map_key(&d.value),
        _ => false,
    }
}

/// Whether `v` holds an array that serde_amqp 0.18 encodes wrongly: one with a non-ASCII
/// string, a null or an empty list among its elements.
fn serde_amqp_misencodes(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.iter().any(|e| match e {
            Value::String(s) => !s.is_ascii(),
            Value::Null => true,
            Value::List(l) if l.is_empty() => true,
            e => serde_amqp_misencodes(e),
        }),
        Value::List(l) => l.iter().any(serde_amqp_misencodes),
        Value::Map(m) => m
            .iter()
            .any(|(k, v)| serde_amqp_misencodes(k) || serde_amqp_misencodes(v)),
        Value::Described(d) => serde_amqp_misencodes(&d.value),
        _ => false,
    }
}
