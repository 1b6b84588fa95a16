//! One connection: its task, its buffers, its sessions and links.

mod attach;
mod disposition;
mod flow;
mod handshake;
mod session;
mod transfer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ferrobus_codec::frame::{
    decode_frame, encode_empty_frame, encode_frame, Frame, FrameError, FrameKind,
};
use ferrobus_codec::types::definitions::{AmqpError, ConnectionError, Error};
use ferrobus_codec::types::performatives::{Close, Performative};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::api::{Event, LinkId, Router};
use crate::config::EngineConfig;
use disposition::PendingDisposition;
use session::Session;

/// Events handled per wake-up before the socket gets a turn again.
const EVENT_BATCH: usize = 512;
/// Bytes written before a flush even in the middle of a batch.
const FLUSH_AT: usize = 256 * 1024;
/// A new connection's buffers are small, so an idle connection costs a few KiB; the write
/// buffer grows with what is written at once, and the read buffer takes [`READ_BLOCK`]s once
/// less than [`READ_SPARE`] is left.
const FIRST_READ_BUFFER: usize = 8 * 1024;
const FIRST_WRITE_BUFFER: usize = 4 * 1024;
/// Size of the read blocks of a busy connection (messages are slices of them).
const READ_BLOCK: usize = 64 * 1024;
const READ_SPARE: usize = 2 * 1024;

/// Why the connection ends.
#[derive(Debug)]
pub(crate) enum Fatal {
    /// Close the connection with this error (or none).
    Close(Option<Error>),
    /// The socket failed or the peer went away.
    Io(std::io::Error),
    /// The peer closed the socket.
    Eof,
}

impl From<std::io::Error> for Fatal {
    fn from(e: std::io::Error) -> Self {
        Fatal::Io(e)
    }
}

pub(crate) fn error(
    condition: impl Into<ferrobus_codec::types::definitions::ErrorCondition>,
    text: impl Into<String>,
) -> Error {
    ferrobus_codec::error(condition, text)
}

pub(crate) fn close_with(
    condition: impl Into<ferrobus_codec::types::definitions::ErrorCondition>,
    text: impl Into<String>,
) -> Fatal {
    Fatal::Close(Some(error(condition, text)))
}

/// Connection ids, unique in the process.
static NEXT_CONNECTION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub(crate) struct Connection<S> {
    /// Unique in the process.
    id: u64,
    io: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Incoming links (channel, handle) handed messages since their last `messages_end`.
    incoming: Vec<(u16, u32)>,
    cfg: Arc<EngineConfig>,
    router: Arc<dyn Router>,
    tx: UnboundedSender<Event>,
    rx: UnboundedReceiver<Event>,
    /// Largest frame we send: the peer's max-frame-size.
    peer_max_frame: u32,
    /// The peer's idle timeout (we heartbeat at half of it).
    peer_idle: Option<Duration>,
    peer_container: String,
    user: Option<String>,
    sessions: HashMap<u16, Session>,
    /// Where each live link is: (channel, handle).
    links: HashMap<LinkId, (u16, u32)>,
    next_link: u64,
    last_read: Instant,
    last_write: Instant,
    dispositions: Vec<PendingDisposition>,
}

/// Serves one AMQP connection on `io` until the peer closes it, it fails, or `shutdown` fires
/// (then the peer gets Close with `amqp:connection:forced`).
pub async fn serve<S>(
    io: S,
    router: Arc<dyn Router>,
    cfg: Arc<EngineConfig>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (tx, rx) = unbounded_channel();
    let now = Instant::now();
    let mut conn = Connection {
        id: NEXT_CONNECTION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        io,
        rbuf: BytesMut::with_capacity(FIRST_READ_BUFFER),
        wbuf: BytesMut::with_capacity(FIRST_WRITE_BUFFER),
        incoming: Vec::new(),
        cfg,
        router: router.clone(),
        tx,
        rx,
        peer_max_frame: ferrobus_codec::frame::MIN_MAX_FRAME_SIZE,
        peer_idle: None,
        peer_container: String::new(),
        user: None,
        sessions: HashMap::new(),
        links: HashMap::new(),
        next_link: 1,
        last_read: now,
        last_write: now,
        dispositions: Vec::new(),
    };
    router.connection_opened();
    // a peer that stalls before Open is dropped after the handshake timeout, or sooner if our
    // idle threshold is shorter
    let limit = conn
        .cfg
        .idle_timeout
        .map_or(conn.cfg.handshake_timeout, |t| {
            t.min(conn.cfg.handshake_timeout)
        });
    let handshake = tokio::time::timeout(limit, conn.handshake());
    let result = match handshake.await {
        Err(_) => {
            debug!(
                ms = limit.as_millis() as u64,
                "handshake did not finish in time; dropping the socket"
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.io.shutdown()).await;
            Err(Fatal::Eof)
        }
        Ok(Ok(())) => conn.run(&shutdown).await,
        Ok(Err(e)) => Err(e),
    };
    match result {
        Ok(()) => {}
        Err(Fatal::Close(err)) => {
            if let Some(e) = &err {
                debug!(condition = ?e.condition, description = ?e.description, "closing connection");
            }
            conn.send_close(err).await;
        }
        Err(Fatal::Io(e)) => debug!(error = %e, "connection i/o ended"),
        Err(Fatal::Eof) => debug!("peer closed the socket"),
    }
    // dropping the sessions drops every endpoint: consumers return their locked messages
    for _ in conn.sessions.drain() {
        router.session_ended();
    }
    router.connection_closed(conn.id);
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    async fn run(&mut self, shutdown: &CancellationToken) -> Result<(), Fatal> {
        loop {
            let deadline = self.next_deadline();
            if self.rbuf.capacity() - self.rbuf.len() < READ_SPARE {
                self.rbuf.reserve(READ_BLOCK);
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    return Err(close_with(ConnectionError::ConnectionForced, "the broker is shutting down"));
                }
                n = self.io.read_buf(&mut self.rbuf) => {
                    if n? == 0 {
                        return Err(Fatal::Eof);
                    }
                    self.last_read = Instant::now();
                    if self.process_frames()? {
                        self.flush().await?;
                        return Ok(());
                    }
                }
                ev = self.rx.recv() => {
                    let Some(ev) = ev else { return Err(Fatal::Eof) };
                    self.on_event(ev)?;
                    for _ in 0..EVENT_BATCH {
                        match self.rx.try_recv() {
                            Ok(ev) => self.on_event(ev)?,
                            Err(_) => break,
                        }
                        if self.wbuf.len() >= FLUSH_AT {
                            self.flush_dispositions();
                            self.flush().await?;
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => self.on_timer()?,
            }
            self.flush_dispositions();
            self.flush().await?;
        }
    }

    /// Tells every incoming link that got messages that they are all there is for now.
    fn messages_end(&mut self) {
        for (channel, handle) in std::mem::take(&mut self.incoming) {
            let link = self
                .sessions
                .get_mut(&channel)
                .and_then(|s| s.links.get_mut(&handle));
            if let Some(attach::LinkKind::In(inl)) = link.map(|l| &mut l.kind) {
                inl.ep.messages_end();
            }
        }
    }

    /// Decodes and handles every whole frame in the read buffer. True when the peer closed.
    fn process_frames(&mut self) -> Result<bool, Fatal> {
        loop {
            let frame = match decode_frame(&mut self.rbuf, self.cfg.max_frame_size, FrameKind::Amqp)
            {
                Ok(Some(f)) => f,
                Ok(None) => {
                    self.messages_end();
                    return Ok(false);
                }
                Err(FrameError::Framing(m)) => {
                    return Err(close_with(ConnectionError::FramingError, m))
                }
                Err(FrameError::Decode(e)) => {
                    return Err(close_with(AmqpError::DecodeError, e.to_string()))
                }
            };
            let Frame::Amqp {
                channel,
                body,
                payload,
            } = frame
            else {
                return Err(close_with(
                    ConnectionError::FramingError,
                    "SASL frame after SASL",
                ));
            };
            let Some(perf) = body else { continue };
            if !matches!(perf, Performative::Transfer(_)) {
                // whatever this does (a detach, a close, a management request) comes after the
                // messages before it
                self.messages_end();
            }
            match perf {
                Performative::Open(_) => {
                    return Err(close_with(
                        AmqpError::IllegalState,
                        "second open on the connection",
                    ))
                }
                Performative::Close(c) => {
                    if let Some(e) = &c.error {
                        debug!(condition = ?e.condition, "peer closed with an error");
                    }
                    self.write(0, &Performative::Close(Close { error: None }));
                    return Ok(true);
                }
                Performative::Begin(b) => self.on_begin(channel, b)?,
                Performative::End(e) => self.on_end(channel, e)?,
                Performative::Attach(a) => self.on_attach(channel, a)?,
                Performative::Detach(d) => self.on_detach(channel, d)?,
                Performative::Flow(f) => self.on_flow(channel, f)?,
                Performative::Transfer(t) => self.on_transfer(channel, t, payload)?,
                Performative::Disposition(d) => self.on_disposition(channel, d)?,
            }
        }
    }

    fn on_event(&mut self, ev: Event) -> Result<(), Fatal> {
        match ev {
            Event::Deliver(link, d) => self.deliver(link, d),
            Event::Drained(link, count) => self.drained(link, count),
            Event::Published(link, id, state) => self.published(link, id, state),
            Event::Settled(link, id, state) => self.settled(link, id, state),
            Event::Detach(link, err) => self.detach_with_error(link, err),
            Event::Attached(link, endpoint) => self.attached(link, endpoint),
        }
        Ok(())
    }

    fn next_deadline(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let idle = self
            .cfg
            .idle_timeout
            .map(|t| self.last_read + t)
            .unwrap_or(far);
        let beat = self
            .peer_idle
            .map(|t| self.last_write + t / 2)
            .unwrap_or(far);
        idle.min(beat)
    }

    fn on_timer(&mut self) -> Result<(), Fatal> {
        let now = Instant::now();
        if let Some(t) = self.cfg.idle_timeout {
            if now >= self.last_read + t {
                return Err(close_with(
                    AmqpError::ResourceLimitExceeded,
                    format!("no frame received for {} ms (idle timeout)", t.as_millis()),
                ));
            }
        }
        if let Some(t) = self.peer_idle {
            if now >= self.last_write + t / 2 && self.wbuf.is_empty() {
                encode_empty_frame(&mut self.wbuf);
            }
        }
        Ok(())
    }

    pub(crate) fn write(&mut self, channel: u16, perf: &Performative) {
        encode_frame(&mut self.wbuf, channel, perf, &[]);
    }

    async fn flush(&mut self) -> Result<(), Fatal> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.wbuf.clear();
            self.last_write = Instant::now();
        }
        Ok(())
    }

    async fn send_close(&mut self, err: Option<Error>) {
        self.write(0, &Performative::Close(Close { error: err }));
        let done = async {
            self.flush().await?;
            self.io.shutdown().await?;
            Ok::<(), Fatal>(())
        };
        if tokio::time::timeout(Duration::from_secs(5), done)
            .await
            .is_err()
        {
            warn!("peer did not take our close in time");
        }
    }

    pub(crate) fn new_link_id(&mut self) -> LinkId {
        let id = LinkId(self.next_link);
        self.next_link += 1;
        id
    }
}
