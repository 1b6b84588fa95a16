//! `ferrobus`: the broker binary. Reads the configuration, opens the store and the entities,
//! binds the AMQP, AMQPS and HTTP listeners, serves one task per connection, reloads TLS
//! certificates on SIGHUP, and shuts down gracefully on SIGINT or SIGTERM.

mod broker;
mod cbs;
mod config;
mod consumer;
mod dest;
mod emulator;
mod encode;
mod errors;
mod faults;
mod filter_view;
mod listen;
mod management;
mod message_id;
mod nodes;
mod rule_action;
mod rule_ops;
mod sas;
mod session_link;
mod session_ops;
mod tls;
mod topology;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ferrobus_session::EngineConfig;
use ferrobus_store::storage::{MemoryStorage, Storage};
use ferrobus_store::{Entities, QueueConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{Config, LogConfig, Overrides, DEFAULT_CONFIG};

/// Rust's allocations (messages, batches, frames) go to mimalloc: with glibc's malloc, freeing
/// a group commit's batches and building the next ones cost ~10% of the broker's CPU under
/// load (RocksDB's own C++ allocations still use glibc's).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A durable AMQP 1.0 message broker with the Azure Service Bus entity model.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Configuration file: TOML, or the Service Bus emulator's Config.json (a `.json` file).
    /// Without it the embedded default runs.
    #[arg(long)]
    config: Option<String>,
    /// Data directory (overrides server.data_dir).
    #[arg(long)]
    data_dir: Option<String>,
    /// AMQP listener address (overrides server.amqp_listen).
    #[arg(long)]
    amqp_listen: Option<String>,
    /// HTTP listener address for /health, /ready and /metrics (overrides server.http_listen).
    #[arg(long)]
    http_listen: Option<String>,
    /// AMQPS listener address (overrides tls.amqps_listen; used once a certificate is set).
    #[arg(long)]
    amqps_listen: Option<String>,
    /// PEM certificate chain for TLS (overrides tls.cert).
    #[arg(long)]
    tls_cert: Option<String>,
    /// PEM private key for TLS (overrides tls.key).
    #[arg(long)]
    tls_key: Option<String>,
    /// Check the configuration (and the TLS files) and exit without starting.
    #[arg(long)]
    check_config: bool,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    /// For Ferrobus's own tests only: honour the FERROBUS_TEST_* fault variables and the
    /// panic node. Never use it in a deployment.
    #[arg(long)]
    enable_test_faults: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{DEFAULT_CONFIG}");
        return Ok(());
    }
    let overrides = Overrides {
        data_dir: cli.data_dir,
        amqp_listen: cli.amqp_listen,
        http_listen: cli.http_listen,
        amqps_listen: cli.amqps_listen,
        tls_cert: cli.tls_cert,
        tls_key: cli.tls_key,
    };
    let cfg = Config::load(cli.config.as_deref(), &overrides)?;
    if cli.check_config {
        if let (Some(cert), Some(key)) = (&cfg.tls.cert, &cfg.tls.key) {
            tls::Tls::load(cert.as_ref(), key.as_ref())?;
        }
        for w in &cfg.warnings {
            eprintln!("warning: {w}");
        }
        println!("configuration ok");
        return Ok(());
    }
    init_logging(&cfg.log);
    install_panic_log();
    for w in &cfg.warnings {
        warn!("{w}");
    }
    let faults = faults::TestFaults::from_env(cli.enable_test_faults)?;
    let closed = StorageClosed::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.server.worker_threads())
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = rt.block_on(run(cfg, faults, closed.clone()));
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

fn init_logging(cfg: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.level));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if cfg.format == "json" {
        fmt.json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        fmt.init();
    }
}

/// A panic is logged as an error where the logs go. Panics unwind (the release profile keeps
/// `panic = "unwind"`), and tokio ends only the task that panicked: a connection's task owns
/// everything of that connection, so a panic closes its socket and drops its links (their
/// locked messages come back as on any disconnect) while every other connection carries on.
fn install_panic_log() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("?"),
            "panic: {info}; only the task that panicked is ended"
        );
    }));
}

/// Where `run` leaves the handle that says the RocksDB store is closed.
#[derive(Clone, Default)]
struct StorageClosed(Arc<std::sync::Mutex<Option<ferrobus_store_rocksdb::Closed>>>);

async fn run(cfg: Config, faults: faults::TestFaults, closed: StorageClosed) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.server.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.server.data_dir))?;
    let metrics = ferrobus_metrics::Metrics::new();
    let storage = open_storage(&cfg, &faults, &metrics, &closed)?;
    let queues: Vec<(String, QueueConfig)> = cfg
        .queues
        .iter()
        .map(|q| {
            let qc = QueueConfig {
                max_delivery_count: q.max_delivery_count,
                max_size_bytes: q.max_size_mb * 1024 * 1024,
                lock_duration_ms: q.lock_duration_ms,
                default_ttl_ms: q.default_message_ttl_ms,
                dead_letter_on_expiration: q.dead_lettering_on_message_expiration,
                duplicate_detection_ms: if q.requires_duplicate_detection {
                    q.duplicate_detection_window_ms.max(1)
                } else {
                    0
                },
                forward_to: q.forward_to.clone().filter(|f| !f.is_empty()),
                forward_dead_lettered_to: q
                    .forward_dead_lettered_messages_to
                    .clone()
                    .filter(|f| !f.is_empty()),
                requires_session: q.requires_session,
            };
            (q.name.clone(), qc)
        })
        .collect();
    let topics = topology::topic_specs(&cfg.topics)?;
    let entities = Entities::open_all(
        storage.clone(),
        &queues,
        &topics,
        filter_view::view(),
        rule_action::rewriter(),
    )
    .context("opening the entities")?;
    let keys = Arc::new(cfg.auth.keys);
    let grants = cbs::Grants::default();
    let broker = Arc::new(broker::Broker {
        entities,
        storage,
        keys: keys.clone(),
        metrics: metrics.clone(),
        replies: Arc::default(),
        cbs: Arc::new(cbs::Cbs {
            keys,
            grants: grants.clone(),
            metrics: metrics.clone(),
        }),
        require_auth: cfg.auth.require,
        grants,
        test_panic: faults.panic_node,
        session_waits: Default::default(),
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
        properties: vec![
            ("product", "ferrobus".into()),
            ("version", env!("CARGO_PKG_VERSION").into()),
        ],
    });
    let tls = match (&cfg.tls.cert, &cfg.tls.key) {
        (Some(cert), Some(key)) => Some(tls::Tls::load(cert.as_ref(), key.as_ref())?),
        _ => None,
    };

    let amqp = listen::bind(&cfg.server.amqp_listen)
        .await
        .context("binding the AMQP listener")?;
    let amqps = match &tls {
        Some(_) => Some(
            listen::bind(&cfg.tls.amqps_listen)
                .await
                .context("binding the AMQPS listener")?,
        ),
        None => None,
    };
    let http = listen::bind(&cfg.server.http_listen)
        .await
        .context("binding the HTTP listener")?;
    // signal handlers exist before READY, so a SIGTERM right after it is a clean shutdown
    let mut signals = listen::Signals::install()?;
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let ready = Arc::new(AtomicBool::new(true));
    // the HTTP listener outlives the AMQP ones, so /ready can say 503 while connections close
    let http_stop = CancellationToken::new();
    let http_task = tokio::spawn(ferrobus_metrics::serve_http(
        http.0,
        metrics,
        broker.clone(),
        ready.clone(),
        http_stop.clone(),
    ));
    let ctx = Arc::new(listen::Context {
        router: broker.clone(),
        engine,
        tls: tls.clone(),
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
        limit: Arc::new(tokio::sync::Semaphore::new(
            cfg.server.max_connections.max(1),
        )),
    });
    if let Some((l, addr)) = amqps {
        info!(amqps = %addr, "TLS listener ready");
        println!("TLS amqps={addr}");
        tracker.spawn(listen::accept_loop(l, true, ctx.clone()));
    }
    tracker.spawn(listen::accept_loop(amqp.0, false, ctx.clone()));
    tracker.spawn(expire_locks(broker.clone(), shutdown.clone()));
    info!(amqp = %amqp.1, http = %http.1, queues = queues.len(), storage = %cfg.storage.kind, "ferrobus is ready");
    println!("READY amqp={} http={}", amqp.1, http.1);

    loop {
        match signals.next().await {
            listen::Signal::Reload => {
                if let Some(t) = &tls {
                    t.reload();
                }
            }
            listen::Signal::Check => {
                if let Some(t) = &tls {
                    t.reload_if_changed();
                }
            }
            listen::Signal::Stop => break,
        }
    }
    // first of all: a load balancer asking from now on must hear 503
    ready.store(false, Ordering::SeqCst);
    info!("shutting down");
    shutdown.cancel();
    tracker.close();
    let grace = Duration::from_secs(cfg.server.shutdown_timeout_secs);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!("connections did not close within the shutdown timeout");
    }
    http_stop.cancel();
    let _ = http_task.await;
    info!("stopped");
    Ok(())
}

/// How often expired locks and due scheduled messages are looked for: a lock's message is
/// available again, and a scheduled message available, within this much of its time.
const LOCK_SWEEP: Duration = Duration::from_millis(100);

async fn expire_locks(broker: Arc<broker::Broker>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(LOCK_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => broker.sweep(),
        }
    }
}

/// Opens the configured storage: RocksDB in `<data_dir>/db`, or memory.
fn open_storage(
    cfg: &Config,
    faults: &faults::TestFaults,
    metrics: &Arc<ferrobus_metrics::Metrics>,
    closed: &StorageClosed,
) -> anyhow::Result<Arc<dyn Storage>> {
    if cfg.storage.kind == "memory" {
        return Ok(Arc::new(MemoryStorage::new()));
    }
    let dir = std::path::Path::new(&cfg.server.data_dir).join("db");
    let opts = ferrobus_store_rocksdb::RocksOptions {
        observer: Some(Arc::new(CommitMetrics(metrics.clone()))),
        fail_writes_after_bytes: faults.fail_writes_after_bytes,
        fail_syncs_after_bytes: faults.fail_syncs_after_bytes,
        ..Default::default()
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
    fn committed(&self, requests: usize, _ops: usize, _bytes: usize, elapsed: Duration, ok: bool) {
        self.0.commit_seconds.observe(elapsed.as_secs_f64());
        self.0.commit_requests.observe(requests as f64);
        if !ok {
            self.0.store_write_errors.inc();
        }
    }
}
