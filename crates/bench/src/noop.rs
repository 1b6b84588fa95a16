//! A no-op AMQP peer that stores nothing: it accepts every transfer at once and feeds
//! receivers freshly stamped messages as fast as their credit allows. Running the load
//! generator against it shows the generator's own ceiling.

use std::sync::Arc;

use anyhow::bail;
use bytes::{BufMut, BytesMut};
use ferrobus_codec::frame::{
    decode_frame, encode_frame, encode_sasl_frame, Frame, FrameKind, ProtocolId,
};
use ferrobus_codec::sasl::SaslFrame;
use ferrobus_codec::types::definitions::Role;
use ferrobus_codec::types::performatives::{Attach, Begin, Close, Detach, End, Flow, Performative};
use ferrobus_codec::types::primitives::{Array, Symbol};
use ferrobus_codec::types::sasl::{SaslCode, SaslMechanisms, SaslOutcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::load::Shared;
use crate::wire::{encode_transfer, message_prefix, open, AcceptRanges, MAX_FRAME};

/// Credit granted to senders, topped up at half.
const CREDIT: u32 = 100_000;

/// Listens on 127.0.0.1 (any free port); returns the address.
pub async fn start(shared: Arc<Shared>, size: usize) -> anyhow::Result<String> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let shared = shared.clone();
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let _ = serve(s, &shared, size).await;
            });
        }
    });
    Ok(addr)
}

struct Link {
    /// The client sends on it (we receive).
    client_sends: bool,
    delivery_count: u32,
    credit: u32,
}

async fn serve(mut s: TcpStream, shared: &Shared, size: usize) -> anyhow::Result<()> {
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut header = [0u8; 8];
    s.read_exact(&mut header).await?;
    if header == ProtocolId::Sasl.header() {
        out.put_slice(&header);
        let mechanisms = SaslMechanisms {
            sasl_server_mechanisms: Array(vec![Symbol::from("ANONYMOUS"), Symbol::from("PLAIN")]),
        };
        encode_sasl_frame(&mut out, &SaslFrame::Mechanisms(mechanisms));
        s.write_all(&out).await?;
        out.clear();
        loop {
            if let Some(Frame::Sasl(SaslFrame::Init(_))) =
                decode_frame(&mut rbuf, MAX_FRAME, FrameKind::Sasl)?
            {
                break;
            }
            if s.read_buf(&mut rbuf).await? == 0 {
                return Ok(());
            }
        }
        let outcome = SaslOutcome {
            code: SaslCode::Ok,
            additional_data: None,
        };
        encode_sasl_frame(&mut out, &SaslFrame::Outcome(outcome));
        s.write_all(&out).await?;
        out.clear();
        while rbuf.len() < 8 {
            if s.read_buf(&mut rbuf).await? == 0 {
                return Ok(());
            }
        }
        header.copy_from_slice(&rbuf.split_to(8));
    }
    if header != ProtocolId::Amqp.header() {
        bail!("unsupported protocol header");
    }
    out.put_slice(&header);
    let prefix = message_prefix(false, size);
    let mut body = vec![0u8; size];
    let mut link: Option<Link> = None;
    let mut next_delivery = 0u32;
    loop {
        let mut accepts = AcceptRanges::default();
        while let Some(f) = decode_frame(&mut rbuf, MAX_FRAME, FrameKind::Amqp)? {
            let Frame::Amqp {
                channel,
                body: Some(p),
                ..
            } = f
            else {
                continue;
            };
            match p {
                Performative::Open(_) => {
                    encode_frame(&mut out, 0, &open("ferrobus-bench-noop"), &[]);
                }
                Performative::Begin(_) => {
                    let begin = Begin {
                        remote_channel: Some(channel),
                        next_outgoing_id: 0,
                        incoming_window: i32::MAX as u32,
                        outgoing_window: u32::MAX,
                        handle_max: 0.into(),
                        offered_capabilities: None,
                        desired_capabilities: None,
                        properties: None,
                    };
                    encode_frame(&mut out, channel, &Performative::Begin(begin), &[]);
                }
                Performative::Attach(a) => {
                    let client_sends = a.role == Role::Sender;
                    let reply = Attach {
                        role: if client_sends {
                            Role::Receiver
                        } else {
                            Role::Sender
                        },
                        initial_delivery_count: (!client_sends).then_some(0),
                        ..a
                    };
                    encode_frame(&mut out, channel, &Performative::Attach(reply), &[]);
                    if client_sends {
                        encode_frame(&mut out, channel, &credit_flow(0), &[]);
                    }
                    link = Some(Link {
                        client_sends,
                        delivery_count: 0,
                        credit: if client_sends { CREDIT } else { 0 },
                    });
                }
                Performative::Transfer(t) => {
                    let Some(l) = link.as_mut().filter(|l| l.client_sends) else {
                        bail!("transfer on no sending link");
                    };
                    if t.more {
                        continue;
                    }
                    l.delivery_count = l.delivery_count.wrapping_add(1);
                    l.credit = l.credit.saturating_sub(1);
                    if l.credit < CREDIT / 2 {
                        l.credit = CREDIT;
                        encode_frame(&mut out, 0, &credit_flow(l.delivery_count), &[]);
                    }
                    if !t.settled.unwrap_or(false) {
                        accepts.add(&mut out, t.delivery_id.unwrap_or(0));
                    }
                }
                Performative::Flow(f) => {
                    if let (Some(l), Some(_), Some(c)) = (link.as_mut(), f.handle, f.link_credit) {
                        if !l.client_sends {
                            let theirs = f.delivery_count.unwrap_or(0);
                            l.credit = theirs.wrapping_add(c).wrapping_sub(l.delivery_count);
                        }
                    }
                }
                Performative::Detach(d) => {
                    let reply = Detach {
                        handle: d.handle,
                        closed: d.closed,
                        error: None,
                    };
                    encode_frame(&mut out, channel, &Performative::Detach(reply), &[]);
                    link = None;
                }
                Performative::End(_) => {
                    encode_frame(
                        &mut out,
                        channel,
                        &Performative::End(End { error: None }),
                        &[],
                    );
                }
                Performative::Close(_) => {
                    encode_frame(
                        &mut out,
                        0,
                        &Performative::Close(Close { error: None }),
                        &[],
                    );
                    s.write_all(&out).await?;
                    return Ok(());
                }
                _ => {}
            }
        }
        accepts.flush(&mut out);
        // feed a receiver as much as its credit allows, in bounded batches
        if let Some(l) = link.as_mut().filter(|l| !l.client_sends) {
            let mut batch = 0;
            while l.credit > 0 && batch < 256 {
                body[..8].copy_from_slice(&shared.now_ns().to_be_bytes());
                encode_transfer(&mut out, next_delivery, false, &[&prefix, &body]);
                next_delivery = next_delivery.wrapping_add(1);
                l.delivery_count = l.delivery_count.wrapping_add(1);
                l.credit -= 1;
                batch += 1;
            }
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
        let feeding = link
            .as_ref()
            .is_some_and(|l| !l.client_sends && l.credit > 0);
        if feeding {
            // keep feeding, but take in whatever the client sent meanwhile
            tokio::select! {
                r = s.read_buf(&mut rbuf) => if r? == 0 { return Ok(()) },
                _ = tokio::task::yield_now() => {}
            }
        } else if s.read_buf(&mut rbuf).await? == 0 {
            return Ok(());
        }
    }
}

fn credit_flow(delivery_count: u32) -> Performative {
    Performative::Flow(Flow {
        next_incoming_id: None,
        incoming_window: i32::MAX as u32,
        next_outgoing_id: 0,
        outgoing_window: u32::MAX,
        handle: Some(0.into()),
        delivery_count: Some(delivery_count),
        link_credit: Some(CREDIT),
        available: None,
        drain: false,
        echo: false,
        properties: None,
    })
}
