//! A minimal AMQP 1.0 client endpoint: one connection, one session, one link, owned by one
//! task with no channels or locks between the socket and the load loop.
//!
//! Handshake frames go through `ferrobus-codec` (serde); the per-message frames (transfer,
//! disposition) have hand-written encoders so that the load generator spends as little CPU
//! per message as the broker under test gets to keep.

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{BufMut, BytesMut};
use ferrobus_codec::frame::{
    decode_frame, encode_frame, encode_sasl_frame, Frame, FrameKind, ProtocolId,
};
use ferrobus_codec::sasl::SaslFrame;
use ferrobus_codec::types::definitions::{Fields, ReceiverSettleMode, Role, SenderSettleMode};
use ferrobus_codec::types::messaging::{
    FilterSet, Source, Target, TargetArchetype, TerminusDurability,
};
use ferrobus_codec::types::performatives::{
    Attach, Begin, Close, Detach, Flow, Open, Performative,
};
use ferrobus_codec::types::primitives::{Binary, Symbol};
use ferrobus_codec::types::sasl::SaslInit;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Our largest frame; brokers may ask for less.
pub const MAX_FRAME: u32 = 256 * 1024;
/// The session window we advertise, refreshed with every link flow.
pub const INCOMING_WINDOW: u32 = 1 << 16;

/// How to reach a broker.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: String,
    /// SASL PLAIN user and password; `None` uses ANONYMOUS.
    pub login: Option<(String, String)>,
    /// Ask for a durable terminus and send durable messages.
    pub durable: bool,
}

/// What [`Wire::attach_link`] sets beyond direction and address.
#[derive(Debug, Default)]
pub struct LinkOptions {
    pub handle: u32,
    /// The link name (default: from the direction and address).
    pub name: Option<String>,
    /// A receiver's source filter.
    pub filter: Option<FilterSet>,
    pub properties: Option<Fields>,
    /// A receiver's credit, granted right behind the attach (pipelined, as rhea does).
    pub credit: Option<u32>,
}

/// One open connection with one session.
pub struct Wire {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    /// The peer's max-frame-size.
    pub peer_max_frame: u32,
    /// Heartbeat interval the peer asked for (half its idle time-out).
    pub heartbeat: Option<Duration>,
    /// Session flow state of our outgoing transfers.
    pub next_outgoing_id: u32,
    pub remote_incoming_limit: u32,
    /// Session flow state of incoming transfers.
    pub next_incoming_id: u32,
    /// A link flow that arrived while attaching, for the caller to apply.
    pub pending_flow: Option<Flow>,
}

impl Wire {
    /// Connects, authenticates and opens a connection and a session.
    pub async fn connect(ep: &Endpoint, container: &str) -> anyhow::Result<Wire> {
        let stream = TcpStream::connect(&ep.addr)
            .await
            .with_context(|| format!("connecting to {}", ep.addr))?;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        let mut w = Wire {
            rd,
            wr,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::with_capacity(64 * 1024),
            peer_max_frame: 512,
            heartbeat: None,
            next_outgoing_id: 0,
            remote_incoming_limit: 0,
            next_incoming_id: 0,
            pending_flow: None,
        };
        w.sasl(ep).await?;
        w.wbuf.put_slice(&ProtocolId::Amqp.header());
        w.send(0, &open(container));
        let begin = Begin {
            remote_channel: None,
            next_outgoing_id: 0,
            incoming_window: INCOMING_WINDOW,
            outgoing_window: u32::MAX,
            handle_max: 0.into(),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        w.send(0, &Performative::Begin(begin));
        w.flush().await?;
        w.read_header(ProtocolId::Amqp).await?;
        match w.next_frame().await? {
            Performative::Open(o) => {
                w.peer_max_frame = o.max_frame_size.0.max(512);
                w.heartbeat = o
                    .idle_time_out
                    .filter(|t| *t > 0)
                    .map(|t| Duration::from_millis(u64::from(t) / 2));
            }
            other => bail!("expected open, got {other:?}"),
        }
        match w.next_frame().await? {
            Performative::Begin(b) => {
                w.remote_incoming_limit = b.incoming_window;
                w.next_incoming_id = b.next_outgoing_id;
            }
            other => bail!("expected begin, got {other:?}"),
        }
        Ok(w)
    }

    async fn sasl(&mut self, ep: &Endpoint) -> anyhow::Result<()> {
        self.wbuf.put_slice(&ProtocolId::Sasl.header());
        self.flush().await?;
        self.read_header(ProtocolId::Sasl).await?;
        let offered = match self.next_sasl().await? {
            SaslFrame::Mechanisms(m) => m.sasl_server_mechanisms.0,
            other => bail!("expected SASL mechanisms, got {other:?}"),
        };
        let (mechanism, response) = match &ep.login {
            Some((user, pass)) => {
                let mut r = vec![0u8];
                r.extend_from_slice(user.as_bytes());
                r.push(0);
                r.extend_from_slice(pass.as_bytes());
                ("PLAIN", Some(Binary::from(r)))
            }
            None => ("ANONYMOUS", None),
        };
        if !offered.iter().any(|m| m.as_str() == mechanism) {
            bail!("the broker does not offer SASL {mechanism} (offers {offered:?})");
        }
        let init = SaslInit {
            mechanism: Symbol::from(mechanism),
            initial_response: response,
            hostname: None,
        };
        encode_sasl_frame(&mut self.wbuf, &SaslFrame::Init(init));
        self.flush().await?;
        match self.next_sasl().await? {
            SaslFrame::Outcome(o) if o.code == ferrobus_codec::types::sasl::SaslCode::Ok => Ok(()),
            other => bail!("SASL {mechanism} failed: {other:?}"),
        }
    }

    async fn next_sasl(&mut self) -> anyhow::Result<SaslFrame> {
        loop {
            if let Some(f) = decode_frame(&mut self.rbuf, MAX_FRAME, FrameKind::Sasl)? {
                match f {
                    Frame::Sasl(s) => return Ok(s),
                    Frame::Amqp { .. } => bail!("AMQP frame during SASL"),
                }
            }
            self.fill().await?;
        }
    }

    async fn read_header(&mut self, want: ProtocolId) -> anyhow::Result<()> {
        while self.rbuf.len() < 8 {
            self.fill().await?;
        }
        let h: [u8; 8] = self.rbuf.split_to(8)[..].try_into().expect("8 bytes");
        if h != want.header() {
            bail!("the broker answered protocol header {h:?}");
        }
        Ok(())
    }

    /// Reads more bytes; an end of stream is an error.
    pub async fn fill(&mut self) -> anyhow::Result<()> {
        if self.rbuf.capacity() - self.rbuf.len() < 16 * 1024 {
            self.rbuf.reserve(64 * 1024);
        }
        let n = self.rd.read_buf(&mut self.rbuf).await?;
        if n == 0 {
            bail!("the broker closed the connection");
        }
        Ok(())
    }

    /// The next performative already buffered, skipping heartbeats; `None` if more bytes
    /// are needed. Returns the transfer payload beside it.
    pub fn buffered(&mut self) -> anyhow::Result<Option<(Performative, bytes::Bytes)>> {
        loop {
            match decode_frame(&mut self.rbuf, MAX_FRAME, FrameKind::Amqp)? {
                None => return Ok(None),
                Some(Frame::Amqp {
                    body: Some(p),
                    payload,
                    ..
                }) => {
                    if let Performative::Close(c) = &p {
                        bail!("the broker closed the connection: {:?}", c.error);
                    }
                    return Ok(Some((p, payload)));
                }
                Some(_) => continue,
            }
        }
    }

    /// Waits for the next performative (handshake use).
    pub async fn next_frame(&mut self) -> anyhow::Result<Performative> {
        loop {
            if let Some((p, _)) = self.buffered()? {
                return Ok(p);
            }
            self.fill().await?;
        }
    }

    /// Queues a performative (channel 0) for the next flush.
    pub fn send(&mut self, channel: u16, p: &Performative) {
        encode_frame(&mut self.wbuf, channel, p, &[]);
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.wbuf.is_empty() {
            self.wr.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Attaches link handle 0 as a sender (`sender == true`) or a receiver to `address`;
    /// returns once the broker's attach arrives (a refusal is an error).
    pub async fn attach(
        &mut self,
        ep: &Endpoint,
        address: &str,
        sender: bool,
        presettled: bool,
    ) -> anyhow::Result<()> {
        self.attach_link(ep, address, sender, presettled, LinkOptions::default())
            .await
            .map(drop)
    }

    /// [`Wire::attach`] with a handle, name, source filter and properties of the caller's;
    /// returns the broker's attach.
    pub async fn attach_link(
        &mut self,
        ep: &Endpoint,
        address: &str,
        sender: bool,
        presettled: bool,
        opts: LinkOptions,
    ) -> anyhow::Result<Attach> {
        let durability = if ep.durable {
            TerminusDurability::UnsettledState
        } else {
            TerminusDurability::None
        };
        let (source, target) = if sender {
            (
                Source::builder().build(),
                Target::builder()
                    .address(address)
                    .durable(durability)
                    .build(),
            )
        } else {
            let mut source = Source::builder()
                .address(address)
                .durable(durability)
                .build();
            source.filter = opts.filter;
            (source, Target::builder().build())
        };
        let name = opts
            .name
            .unwrap_or_else(|| format!("bench-{}-{address}", if sender { "send" } else { "recv" }));
        let attach = Attach {
            name,
            handle: opts.handle.into(),
            role: if sender { Role::Sender } else { Role::Receiver },
            snd_settle_mode: if presettled {
                SenderSettleMode::Settled
            } else {
                SenderSettleMode::Unsettled
            },
            rcv_settle_mode: ReceiverSettleMode::First,
            source: Some(Box::new(source)),
            target: Some(Box::new(TargetArchetype::Target(target))),
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: sender.then_some(0),
            max_message_size: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: opts.properties,
        };
        self.send(0, &Performative::Attach(attach));
        if let Some(c) = opts.credit {
            self.grant_on(opts.handle, 0, c);
        }
        self.flush().await?;
        loop {
            match self.next_frame().await? {
                Performative::Attach(a) => {
                    let refused = if sender {
                        a.target.is_none()
                    } else {
                        a.source.is_none()
                    };
                    if refused {
                        // the detach with the reason follows; answering it frees the handle
                        let why = match self.next_frame().await? {
                            Performative::Detach(d) => format!("{:?}", d.error),
                            other => format!("{other:?}"),
                        };
                        self.send(
                            0,
                            &Performative::Detach(Detach {
                                handle: a.handle.clone(),
                                closed: true,
                                error: None,
                            }),
                        );
                        self.flush().await?;
                        bail!("the broker refused the link to {address}: {why}");
                    }
                    return Ok(a);
                }
                Performative::Detach(d) => {
                    bail!("the broker detached the link to {address}: {:?}", d.error)
                }
                Performative::End(e) => bail!("the broker ended the session: {:?}", e.error),
                // flows may precede or follow the attach; the caller reads them next
                Performative::Flow(f) => {
                    self.on_session_flow(&f);
                    self.pending_flow = Some(f);
                }
                Performative::Disposition(_) => {}
                other => bail!("unexpected {other:?} while attaching"),
            }
        }
    }

    /// Detaches link `handle` and waits for the broker's detach; transfers that still arrive
    /// for it are dropped.
    pub async fn detach(&mut self, handle: u32) -> anyhow::Result<()> {
        self.send(
            0,
            &Performative::Detach(Detach {
                handle: handle.into(),
                closed: true,
                error: None,
            }),
        );
        self.flush().await?;
        loop {
            match self.next_frame().await? {
                Performative::Detach(d) if d.handle.0 == handle => return Ok(()),
                Performative::Transfer(_) => {
                    self.next_incoming_id = self.next_incoming_id.wrapping_add(1)
                }
                Performative::End(e) => bail!("the broker ended the session: {:?}", e.error),
                Performative::Flow(f) => self.on_session_flow(&f),
                _ => {}
            }
        }
    }

    /// Records the session half of a flow.
    pub fn on_session_flow(&mut self, f: &Flow) {
        let next_in = f.next_incoming_id.unwrap_or(0);
        self.remote_incoming_limit = next_in.wrapping_add(f.incoming_window);
    }

    /// Transfers the session lets us send now.
    pub fn session_room(&self) -> u32 {
        let room = self
            .remote_incoming_limit
            .wrapping_sub(self.next_outgoing_id);
        // a window that went "negative" wraps to a huge number
        if room > i32::MAX as u32 {
            0
        } else {
            room
        }
    }

    /// Queues a flow granting `credit` on link 0 (and refreshing the session window).
    pub fn grant(&mut self, delivery_count: u32, credit: u32) {
        self.grant_on(0, delivery_count, credit)
    }

    /// [`Wire::grant`] on link `handle`.
    pub fn grant_on(&mut self, handle: u32, delivery_count: u32, credit: u32) {
        let flow = Flow {
            next_incoming_id: Some(self.next_incoming_id),
            incoming_window: INCOMING_WINDOW,
            next_outgoing_id: self.next_outgoing_id,
            outgoing_window: u32::MAX,
            handle: Some(handle.into()),
            delivery_count: Some(delivery_count),
            link_credit: Some(credit),
            available: None,
            drain: false,
            echo: false,
            properties: None,
        };
        self.send(0, &Performative::Flow(flow));
    }

    /// Closes the connection politely (best effort).
    pub async fn close(mut self) {
        self.send(0, &Performative::Close(Close { error: None }));
        let _ = self.flush().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match self.next_frame().await {
                    Err(_) => break,
                    Ok(_) => continue,
                }
            }
        })
        .await;
    }
}

/// Our open: `MAX_FRAME`, no idle time-out, no channel beyond 0.
pub fn open(container: &str) -> Performative {
    Performative::Open(Open {
        container_id: container.to_string(),
        hostname: None,
        max_frame_size: MAX_FRAME.into(),
        channel_max: 0.into(),
        idle_time_out: None,
        outgoing_locales: None,
        incoming_locales: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    })
}

/// Appends one single-frame transfer of `payload` on channel 0, link 0.
pub fn encode_transfer(out: &mut BytesMut, delivery_id: u32, settled: bool, payload: &[&[u8]]) {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    // frame header (8) + descriptor (3) + list8 header (3) + fields (22)
    let size = 8 + 3 + 3 + 22 + len;
    out.reserve(size);
    out.put_u32(size as u32);
    out.put_slice(&[2, 0, 0, 0]);
    out.put_slice(&[0x00, 0x53, 0x14, 0xc0, 23, 5]);
    out.put_u8(0x70); // handle 0
    out.put_u32(0);
    out.put_u8(0x70);
    out.put_u32(delivery_id);
    out.put_slice(&[0xa0, 8]);
    out.put_u64(u64::from(delivery_id));
    out.put_u8(0x43); // message-format 0
    out.put_u8(if settled { 0x41 } else { 0x42 });
    for p in payload {
        out.put_slice(p);
    }
}

/// Appends a disposition settling `first..=last` as accepted.
pub fn encode_accept(out: &mut BytesMut, role_receiver: bool, first: u32, last: u32) {
    out.put_u32(8 + 3 + 3 + 16);
    out.put_slice(&[2, 0, 0, 0]);
    out.put_slice(&[0x00, 0x53, 0x15, 0xc0, 17, 5]);
    out.put_u8(if role_receiver { 0x41 } else { 0x42 });
    out.put_u8(0x70);
    out.put_u32(first);
    out.put_u8(0x70);
    out.put_u32(last);
    out.put_u8(0x41); // settled
    out.put_slice(&[0x00, 0x53, 0x24, 0x45]); // accepted
}

/// Delivery ids to accept, merged into one disposition per run of consecutive ids.
#[derive(Default)]
pub struct AcceptRanges(Option<(u32, u32)>);

impl AcceptRanges {
    /// Adds `id`; a gap writes the run so far to `out`.
    pub fn add(&mut self, out: &mut BytesMut, id: u32) {
        self.0 = match self.0 {
            Some((first, last)) if last.wrapping_add(1) == id => Some((first, id)),
            Some((first, last)) => {
                encode_accept(out, true, first, last);
                Some((id, id))
            }
            None => Some((id, id)),
        };
    }

    /// Writes the pending run to `out`.
    pub fn flush(&mut self, out: &mut BytesMut) {
        if let Some((first, last)) = self.0.take() {
            encode_accept(out, true, first, last);
        }
    }
}

/// The encoded message: a header (durable or not) and one data section of `body_len` bytes
/// whose first 16 bytes the caller fills (send time, sequence).
pub fn message_prefix(durable: bool, body_len: usize) -> Vec<u8> {
    routed_prefix(durable, body_len, None)
}

/// [`message_prefix`] with application properties `region` (a string) and `amount` (an int)
/// between the header and the body, for topics with SQL filters.
pub fn routed_prefix(durable: bool, body_len: usize, props: Option<(&str, i32)>) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&[0x00, 0x53, 0x70, 0xc0, 0x02, 0x01]);
    m.push(if durable { 0x41 } else { 0x42 });
    if let Some((region, amount)) = props {
        let mut entries = vec![0xa1, 6];
        entries.extend_from_slice(b"region");
        entries.extend_from_slice(&[0xa1, region.len() as u8]);
        entries.extend_from_slice(region.as_bytes());
        entries.extend_from_slice(&[0xa1, 6]);
        entries.extend_from_slice(b"amount");
        entries.push(0x71);
        entries.extend_from_slice(&amount.to_be_bytes());
        m.extend_from_slice(&[0x00, 0x53, 0x74, 0xc1, (entries.len() + 1) as u8, 4]);
        m.extend_from_slice(&entries);
    }
    m.extend_from_slice(&[0x00, 0x53, 0x75, 0xb0]);
    m.extend_from_slice(&(body_len as u32).to_be_bytes());
    m
}

/// [`message_prefix`] with a properties section whose group-id (Service Bus's SessionId) is
/// `session`, for session queues.
pub fn session_prefix(durable: bool, body_len: usize, session: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(32 + session.len());
    m.extend_from_slice(&[0x00, 0x53, 0x70, 0xc0, 0x02, 0x01]);
    m.push(if durable { 0x41 } else { 0x42 });
    // properties: ten null fields, then the group-id (str8)
    let fields = 10 + 2 + session.len();
    m.extend_from_slice(&[0x00, 0x53, 0x73, 0xc0, (fields + 1) as u8, 11]);
    m.extend_from_slice(&[0x40; 10]);
    m.extend_from_slice(&[0xa1, session.len() as u8]);
    m.extend_from_slice(session.as_bytes());
    m.extend_from_slice(&[0x00, 0x53, 0x75, 0xb0]);
    m.extend_from_slice(&(body_len as u32).to_be_bytes());
    m
}

#[cfg(test)]
mod routed_tests {
    use super::*;

    #[test]
    fn routed_messages_carry_their_properties_in_a_valid_section() {
        let p = routed_prefix(true, 16, Some(("r7", 500)));
        let mut msg = p.clone();
        msg.extend_from_slice(&[0u8; 16]);
        let s = ferrobus_codec::message::Sections::scan(&msg).expect("sections");
        let ap = &msg[s.application_properties.expect("application properties")];
        assert!(ap.windows(2).any(|w| w == b"r7"));
        assert_eq!(&msg[s.body.expect("body")][..4], &[0x00, 0x53, 0x75, 0xb0]);
        assert_eq!(routed_prefix(true, 16, None), message_prefix(true, 16));
    }

    #[test]
    fn session_messages_carry_their_group_id() {
        let mut msg = session_prefix(true, 16, "s42");
        msg.extend_from_slice(&[0u8; 16]);
        let s = ferrobus_codec::message::Sections::scan(&msg).expect("sections");
        assert_eq!(s.group_id(&msg), Some("s42"));
        assert_eq!(&msg[s.body.expect("body")][..4], &[0x00, 0x53, 0x75, 0xb0]);
    }
}
