//! Listeners, the accept loop and signals.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ferrobus_session::{EngineConfig, Router};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};

use crate::tls::{self, Start, Tls};

/// What every connection task needs.
pub struct Context {
    pub router: Arc<dyn Router>,
    pub engine: Arc<EngineConfig>,
    pub tls: Option<Arc<Tls>>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// Connections served at once.
    pub limit: Arc<Semaphore>,
}

/// Binds `addr` with `SO_REUSEADDR`, so a restarted broker gets its ports back at once.
pub async fn bind(addr: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let addr: SocketAddr = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to nothing"))?;
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr).with_context(|| format!("binding {addr}"))?;
    let l = sock.listen(1024)?;
    let local = l.local_addr()?;
    Ok((l, local))
}

/// Accepts until shutdown. `implicit_tls`: the AMQPS listener, where every client speaks TLS.
/// TLS and protocol handshakes run in the connection's own task, never here.
pub async fn accept_loop(listener: TcpListener, implicit_tls: bool, ctx: Arc<Context>) {
    loop {
        let permit = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            p = ctx.limit.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (sock, peer) = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = sock.set_nodelay(true);
        let span = tracing::info_span!("connection", %peer, tls = implicit_tls, container_id = tracing::field::Empty);
        let c = ctx.clone();
        ctx.tracker.spawn(
            async move {
                // a client that says nothing is dropped as the engine drops one stuck before Open
                let limit = c
                    .engine
                    .idle_timeout
                    .map_or(c.engine.handshake_timeout, |t| {
                        t.min(c.engine.handshake_timeout)
                    });
                let started =
                    tokio::time::timeout(limit, tls::start(sock, c.tls.as_deref(), implicit_tls));
                let shutdown = c.shutdown.clone();
                match started.await {
                    Ok(Ok(Start::Plain(s))) => {
                        ferrobus_session::serve(s, c.router.clone(), c.engine.clone(), shutdown)
                            .await
                    }
                    Ok(Ok(Start::Tls(s))) => {
                        ferrobus_session::serve(*s, c.router.clone(), c.engine.clone(), shutdown)
                            .await
                    }
                    Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
                    Err(_) => debug!("TLS handshake timed out"),
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// What a signal asks for.
pub enum Signal {
    /// SIGHUP: reload TLS certificates.
    Reload,
    /// Time to check whether the certificate files changed.
    Check,
    /// SIGTERM or SIGINT.
    Stop,
}

/// SIGTERM, SIGINT and SIGHUP, listened for from the moment they are installed, plus a timer
/// that checks the certificate files for changes.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    poll: tokio::time::Interval,
}

/// How often certificate files are checked for changes.
const CERT_POLL: Duration = Duration::from_secs(2);

impl Signals {
    pub fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut poll = tokio::time::interval(CERT_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
            poll,
        })
    }

    /// The next thing to do.
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
            _ = self.poll.tick() => Signal::Check,
        }
    }
}
