//! SASL frames (AMQP 1.0 part 5.3).

use bytes::BytesMut;
use fe2o3_amqp_types::sasl::{SaslChallenge, SaslInit, SaslMechanisms, SaslOutcome, SaslResponse};

use crate::frame::write_value;
use crate::value::{check_value, descriptor_code};
use crate::CodecError;

/// The body of a SASL frame.
#[derive(Debug, Clone)]
pub enum SaslFrame {
    /// Server: the mechanisms on offer.
    Mechanisms(SaslMechanisms),
    /// Client: the chosen mechanism and its initial response.
    Init(SaslInit),
    /// Server: a challenge.
    Challenge(SaslChallenge),
    /// Client: a response to a challenge.
    Response(SaslResponse),
    /// Server: the outcome.
    Outcome(SaslOutcome),
}

impl SaslFrame {
    /// Decodes a SASL frame body.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let code = descriptor_code(body).ok_or(CodecError::Invalid("not a SASL frame body"))?;
        let n = check_value(body)?;
        if n != body.len() {
            return Err(CodecError::Invalid(
                "trailing bytes after a SASL frame body",
            ));
        }
        fn de<'a, T: serde::Deserialize<'a>>(b: &'a [u8]) -> Result<T, CodecError> {
            crate::decode(b, "SASL frame")
        }
        Ok(match code {
            0x40 => SaslFrame::Mechanisms(de(body)?),
            0x41 => SaslFrame::Init(de(body)?),
            0x42 => SaslFrame::Challenge(de(body)?),
            0x43 => SaslFrame::Response(de(body)?),
            0x44 => SaslFrame::Outcome(de(body)?),
            _ => return Err(CodecError::Invalid("unknown SASL frame")),
        })
    }

    /// Appends the encoded body.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            SaslFrame::Mechanisms(v) => write_value(out, v),
            SaslFrame::Init(v) => write_value(out, v),
            SaslFrame::Challenge(v) => write_value(out, v),
            SaslFrame::Response(v) => write_value(out, v),
            SaslFrame::Outcome(v) => write_value(out, v),
        }
    }
}
