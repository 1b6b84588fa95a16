//! `ferrobus`: the broker binary. Reads the configuration, opens the entities, binds the AMQP
//! and HTTP listeners, serves one task per connection, and shuts down gracefully on SIGINT or
//! SIGTERM.

mod broker;
mod config;
mod errors;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ferrobus_session::EngineConfig;
use ferrobus_store::storage::{MemoryStorage, Storage};
use ferrobus_store::{Entities, QueueConfig};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use crate::config::{Config, Overrides, DEFAULT_CONFIG};

/// A durable AMQP 1.0 message broker with the Azure Service Bus entity model.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML). Without it the embedded default runs.
    #[arg(long)]
    config: Option<String>,
    /// Data directory (overrides server.data_dir).
    #[arg(long)]
    data_dir: Option<String>,
    /// AMQP listener address (overrides server.amqp_listen).
    #[arg(long)]
    amqp_listen: Option<String>,
    /// HTTP listener address for /health and /metrics (overrides server.http_listen).
    #[arg(long)]
    http_listen: Option<String>,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{DEFAULT_CONFIG}");
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let overrides = Overrides {
        data_dir: cli.data_dir,
        amqp_listen: cli.amqp_listen,
        http_listen: cli.http_listen,
    };
    let cfg = Config::load(cli.config.as_deref(), &overrides)?;
    let closed = StorageClosed::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = rt.block_on(run(cfg, closed.clone()));
    // dropping the runtime drops every task and with them the last references to the store;
    // RocksDB must be closed before the process exits
    drop(rt);
    if let Some(c) = closed.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
        if !c.wait(Duration::from_secs(30)) {
            warn!("the store did not close within 30 s");
        }
    }
    result
}

/// Where `run` leaves the handle that says the RocksDB store is closed.
#[derive(Clone, Default)]
struct StorageClosed(Arc<std::sync::Mutex<Option<ferrobus_store_rocksdb::Closed>>>);

async fn run(cfg: Config, closed: StorageClosed) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.server.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.server.data_dir))?;
    let metrics = ferrobus_metrics::Metrics::new();
    let storage = open_storage(&cfg, &metrics, &closed)?;
    let queues: Vec<(String, QueueConfig)> = cfg
        .queues
        .iter()
        .map(|q| {
            let qc = QueueConfig {
                max_delivery_count: q.max_delivery_count,
                max_size_bytes: q.max_size_mb * 1024 * 1024,
            };
            (q.name.clone(), qc)
        })
        .collect();
    let entities = Entities::open(storage, &queues).context("opening the entities")?;
    let broker = Arc::new(broker::Broker {
        entities,
        keys: cfg.auth.keys,
        metrics: metrics.clone(),
    });
    let engine = Arc::new(EngineConfig {
        container_id: "ferrobus".into(),
        max_frame_size: cfg.amqp.max_frame_size,
        channel_max: cfg.amqp.channel_max,
        idle_timeout: (cfg.amqp.idle_timeout_ms > 0)
            .then(|| Duration::from_millis(cfg.amqp.idle_timeout_ms)),
        max_message_size: cfg.amqp.max_message_size,
        link_credit: cfg.amqp.link_credit,
        require_sasl: cfg.amqp.require_sasl,
        handshake_timeout: Duration::from_secs(30),
    });

    let amqp = bind(&cfg.server.amqp_listen)
        .await
        .context("binding the AMQP listener")?;
    let http = bind(&cfg.server.http_listen)
        .await
        .context("binding the HTTP listener")?;
    // signal handlers exist before READY, so a SIGTERM right after it is a clean shutdown
    let signals = Signals::install()?;
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(ferrobus_metrics::serve_http(
        http.0,
        metrics,
        broker.clone(),
        shutdown.clone(),
    ));
    info!(amqp = %amqp.1, http = %http.1, queues = queues.len(), storage = %cfg.storage.kind, "ferrobus is ready");
    println!("READY amqp={} http={}", amqp.1, http.1);

    let limit = Arc::new(Semaphore::new(cfg.server.max_connections.max(1)));
    let accept = {
        let shutdown = shutdown.clone();
        let tracker = tracker.clone();
        async move {
            loop {
                let permit = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    p = limit.clone().acquire_owned() => p.expect("semaphore never closes"),
                };
                let (sock, peer) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = amqp.0.accept() => match r {
                        Ok(s) => s,
                        Err(e) => {
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = sock.set_nodelay(true);
                let span = tracing::info_span!("connection", %peer);
                let router: Arc<dyn ferrobus_session::Router> = broker.clone();
                tracker.spawn(
                    ferrobus_session::serve(sock, router, engine.clone(), shutdown.clone())
                        .instrument(span)
                        .map_permit(permit),
                );
            }
        }
    };
    tracker.spawn(accept);
    signals.wait().await;
    info!("shutting down");
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(
        Duration::from_secs(cfg.server.shutdown_timeout_secs),
        tracker.wait(),
    )
    .await
    .is_err()
    {
        warn!("connections did not close within the shutdown timeout");
    }
    info!("stopped");
    Ok(())
}

/// Opens the configured storage: RocksDB in `<data_dir>/db`, or memory.
fn open_storage(
    cfg: &Config,
    metrics: &Arc<ferrobus_metrics::Metrics>,
    closed: &StorageClosed,
) -> anyhow::Result<Arc<dyn Storage>> {
    if cfg.storage.kind == "memory" {
        return Ok(Arc::new(MemoryStorage::new()));
    }
    let fail_writes_after_bytes = match std::env::var("FERROBUS_TEST_FAIL_WRITES_AFTER_BYTES") {
        Ok(v) => {
            let n = v
                .parse()
                .context("FERROBUS_TEST_FAIL_WRITES_AFTER_BYTES must be a number of bytes")?;
            warn!(
                bytes = n,
                "test fault injection: writes fail after this many bytes"
            );
            Some(n)
        }
        Err(_) => None,
    };
    let dir = std::path::Path::new(&cfg.server.data_dir).join("db");
    let opts = ferrobus_store_rocksdb::RocksOptions {
        observer: Some(Arc::new(CommitMetrics(metrics.clone()))),
        fail_writes_after_bytes,
    };
    let started = std::time::Instant::now();
    let s = ferrobus_store_rocksdb::RocksStorage::open(&dir, opts)
        .context("opening the RocksDB store")?;
    info!(dir = %dir.display(), ms = started.elapsed().as_millis() as u64, "storage opened");
    *closed.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(s.closed());
    Ok(Arc::new(s))
}

/// Group-commit metrics.
struct CommitMetrics(Arc<ferrobus_metrics::Metrics>);

impl ferrobus_store_rocksdb::CommitObserver for CommitMetrics {
    fn committed(&self, requests: usize, _ops: usize, _bytes: usize, elapsed: Duration) {
        self.0.commit_seconds.observe(elapsed.as_secs_f64());
        self.0.commit_requests.observe(requests as f64);
    }
}

async fn bind(addr: &str) -> anyhow::Result<(TcpListener, std::net::SocketAddr)> {
    let addr: std::net::SocketAddr = tokio::net::lookup_host(addr)
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

/// SIGTERM and SIGINT, listened for from the moment they are installed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Holds a connection-limit permit for as long as the connection's future runs.
trait MapPermit: std::future::Future + Sized {
    fn map_permit(
        self,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> impl std::future::Future<Output = Self::Output> {
        async move {
            let out = self.await;
            drop(permit);
            out
        }
    }
}

impl<F: std::future::Future> MapPermit for F {}
