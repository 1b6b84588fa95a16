//! Protocol headers, SASL and Open.

use std::time::Duration;

use bytes::Buf;
use ferrobus_codec::frame::{
    decode_frame, encode_sasl_frame, Frame, FrameError, FrameKind, ProtocolId, MIN_MAX_FRAME_SIZE,
};
use ferrobus_codec::sasl::SaslFrame;
use ferrobus_codec::types::definitions::{AmqpError, ConnectionError};
use ferrobus_codec::types::performatives::{Open, Performative};
use ferrobus_codec::types::primitives::{Array, Symbol, Value};
use ferrobus_codec::types::sasl::{SaslCode, SaslMechanisms, SaslOutcome};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use super::{close_with, Connection, Fatal};

/// Mechanisms we offer: `MSSBCBS` (what .NET and Rust Service Bus clients ask for) and
/// `ANONYMOUS` log in without credentials; `PLAIN` checks a key rule name and key.
const MECHANISMS: [&str; 3] = ["MSSBCBS", "ANONYMOUS", "PLAIN"];

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Reads until the buffer holds `n` bytes.
    async fn fill(&mut self, n: usize) -> Result<(), Fatal> {
        while self.rbuf.len() < n {
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                return Err(Fatal::Eof);
            }
        }
        Ok(())
    }

    async fn read_header(&mut self) -> Result<Option<ProtocolId>, Fatal> {
        self.fill(8).await?;
        let raw: [u8; 8] = self.rbuf[..8].try_into().expect("8 bytes");
        self.rbuf.advance(8);
        Ok(ProtocolId::parse(&raw))
    }

    /// Answers a header we will not serve with the one we would, then hangs up.
    async fn refuse_header(&mut self, ours: ProtocolId) -> Fatal {
        self.wbuf.extend_from_slice(&ours.header());
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
        Fatal::Eof
    }

    pub(super) async fn handshake(&mut self) -> Result<(), Fatal> {
        let preferred = if self.cfg.require_sasl {
            ProtocolId::Sasl
        } else {
            ProtocolId::Amqp
        };
        match self.read_header().await? {
            Some(ProtocolId::Sasl) => {
                self.sasl().await?;
                if self.read_header().await? != Some(ProtocolId::Amqp) {
                    return Err(self.refuse_header(ProtocolId::Amqp).await);
                }
            }
            Some(ProtocolId::Amqp) if !self.cfg.require_sasl => {}
            Some(ProtocolId::Amqp) => {
                debug!("client skipped SASL, which this broker requires");
                return Err(self.refuse_header(ProtocolId::Sasl).await);
            }
            _ => return Err(self.refuse_header(preferred).await),
        }
        // our header goes out now: some clients wait for it before they send Open
        self.wbuf.extend_from_slice(&ProtocolId::Amqp.header());
        self.flush().await?;
        self.open().await
    }

    async fn sasl(&mut self) -> Result<(), Fatal> {
        self.wbuf.extend_from_slice(&ProtocolId::Sasl.header());
        let mechs = SaslMechanisms {
            sasl_server_mechanisms: Array(MECHANISMS.iter().map(|m| Symbol::from(*m)).collect()),
        };
        encode_sasl_frame(&mut self.wbuf, &SaslFrame::Mechanisms(mechs));
        self.flush().await?;
        let init = loop {
            match decode_frame(
                &mut self.rbuf,
                MIN_MAX_FRAME_SIZE.max(4096),
                FrameKind::Sasl,
            ) {
                Ok(Some(Frame::Sasl(SaslFrame::Init(init)))) => break init,
                Ok(Some(_)) => return Err(self.sasl_fail().await),
                Ok(None) => {
                    if self.io.read_buf(&mut self.rbuf).await? == 0 {
                        return Err(Fatal::Eof);
                    }
                }
                Err(FrameError::Framing(_)) | Err(FrameError::Decode(_)) => {
                    return Err(self.sasl_fail().await)
                }
            }
        };
        let ok = match init.mechanism.as_str() {
            "ANONYMOUS" | "MSSBCBS" => true,
            "PLAIN" => {
                let resp = init
                    .initial_response
                    .as_ref()
                    .map(|b| b.as_slice())
                    .unwrap_or(&[]);
                let mut parts = resp.split(|b| *b == 0);
                let (_authz, user, pass) = (parts.next(), parts.next(), parts.next());
                match (user.map(std::str::from_utf8), pass.map(std::str::from_utf8)) {
                    (Some(Ok(u)), Some(Ok(p))) if self.router.check_plain(u, p) => {
                        self.user = Some(u.to_string());
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        };
        if !ok {
            debug!(
                mechanism = init.mechanism.as_str(),
                "SASL authentication failed"
            );
            return Err(self.sasl_fail().await);
        }
        let outcome = SaslOutcome {
            code: SaslCode::Ok,
            additional_data: None,
        };
        encode_sasl_frame(&mut self.wbuf, &SaslFrame::Outcome(outcome));
        self.flush().await
    }

    async fn sasl_fail(&mut self) -> Fatal {
        let outcome = SaslOutcome {
            code: SaslCode::Auth,
            additional_data: None,
        };
        encode_sasl_frame(&mut self.wbuf, &SaslFrame::Outcome(outcome));
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
        Fatal::Eof
    }

    async fn open(&mut self) -> Result<(), Fatal> {
        let open = loop {
            match decode_frame(&mut self.rbuf, self.cfg.max_frame_size, FrameKind::Amqp) {
                Ok(Some(Frame::Amqp {
                    body: Some(Performative::Open(o)),
                    ..
                })) => break o,
                Ok(Some(Frame::Amqp { body: None, .. })) => continue,
                Ok(Some(_)) => {
                    return Err(close_with(
                        AmqpError::IllegalState,
                        "the first frame must be open",
                    ))
                }
                Ok(None) => {
                    if self.io.read_buf(&mut self.rbuf).await? == 0 {
                        return Err(Fatal::Eof);
                    }
                }
                Err(FrameError::Framing(m)) => {
                    return Err(close_with(ConnectionError::FramingError, m))
                }
                Err(FrameError::Decode(e)) => {
                    return Err(close_with(AmqpError::DecodeError, e.to_string()))
                }
            }
        };
        self.peer_max_frame = open
            .max_frame_size
            .0
            .max(MIN_MAX_FRAME_SIZE)
            .min(self.cfg.max_frame_size.max(MIN_MAX_FRAME_SIZE) * 4);
        self.peer_idle = open
            .idle_time_out
            .filter(|t| *t > 0)
            .map(|t| Duration::from_millis(t as u64));
        self.peer_container = open.container_id.clone();
        tracing::Span::current().record("container_id", open.container_id.as_str());
        let ours = Open {
            container_id: self.cfg.container_id.clone(),
            hostname: None,
            max_frame_size: self.cfg.max_frame_size.into(),
            channel_max: self.cfg.channel_max.into(),
            idle_time_out: self.cfg.idle_timeout.map(|t| (t.as_millis() / 2) as u32),
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: (!self.cfg.properties.is_empty()).then(|| {
                self.cfg
                    .properties
                    .iter()
                    .map(|(k, v)| (Symbol::from(*k), Value::String(v.clone())))
                    .collect()
            }),
        };
        self.write(0, &Performative::Open(ours));
        self.flush().await?;
        // frames the peer pipelined after its Open (its Begin, its attaches) are in the buffer
        // already: handle them and send the answers now, not when the next byte arrives
        let closed = self.process_frames()?;
        self.flush_dispositions();
        self.flush().await?;
        if closed {
            return Err(Fatal::Eof);
        }
        Ok(())
    }
}
