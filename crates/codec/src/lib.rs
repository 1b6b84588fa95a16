//! AMQP 1.0 wire format for Ferrobus: protocol headers, frames, performatives, SASL frames and
//! the sections of a message.
//!
//! Role and invariants:
//! - This crate knows bytes and AMQP types only: no async runtime, no sockets, no logging.
//! - Performatives and SASL frames are the `fe2o3-amqp-types` structs, (de)serialised with
//!   `serde_amqp`.
//! - A message payload is never decoded and re-encoded: [`message::Sections`] splits a transfer
//!   payload into byte slices of its sections, and [`message::OutgoingMessage`] writes a message
//!   back out from fresh broker-owned sections (header, message annotations) followed by the
//!   producer's bare-message bytes, untouched.
//! - Decoding never panics on any input; malformed input is a typed [`CodecError`].
//! - Nothing a peer sends reaches `serde_amqp` unchecked ([`decode`]): nesting is bounded by
//!   [`value::MAX_NESTING`], every declared length and count by the bytes present, and the
//!   values in one decode by [`value::MAX_VALUES`], so no input can overflow the stack or make
//!   decoding allocate more than a small multiple of itself.

pub mod frame;
pub mod message;
pub mod sasl;
pub mod value;

pub use fe2o3_amqp_types as types;
pub use serde_amqp;

/// An AMQP error with a description and an empty `info` map. The map is sent on purpose: an
/// encoder omits trailing null fields, and some clients (the Python Service Bus SDK) index the
/// error's fields by position and fail on a shorter list.
pub fn error(
    condition: impl Into<types::definitions::ErrorCondition>,
    description: impl Into<String>,
) -> types::definitions::Error {
    types::definitions::Error::new(
        condition,
        Some(description.into()),
        Some(Default::default()),
    )
}

/// Decodes one value of type `T` from bytes a peer sent: [`value::check_value`] first, so
/// `serde_amqp` only ever sees input whose nesting, lengths and counts are bounded, then
/// `serde_amqp`. `what` names the value in the error. Every decode of peer bytes goes here.
pub fn decode<'de, T: serde::Deserialize<'de>>(
    buf: &'de [u8],
    what: &'static str,
) -> Result<T, CodecError> {
    let n = value::check_value(buf)?;
    serde_amqp::from_slice(&buf[..n]).map_err(|source| CodecError::Serde { what, source })
}

/// What can be wrong with bytes that claim to be AMQP.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The input ended inside a value.
    #[error("truncated AMQP value")]
    Truncated,
    /// The input is not a valid encoding.
    #[error("invalid AMQP encoding: {0}")]
    Invalid(&'static str),
    /// `serde_amqp` refused the value.
    #[error("cannot decode {what}: {source}")]
    Serde {
        /// The type that was being decoded.
        what: &'static str,
        /// The decoder's error.
        source: serde_amqp::Error,
    },
}
