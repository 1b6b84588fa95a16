//! The broker's configuration: one typed struct, read from the embedded default (or a TOML
//! file), then `FERROBUS__SECTION__KEY` environment variables, then command-line flags.

use std::fmt;

use serde::Deserialize;

/// The commented reference configuration, embedded in the binary.
pub const DEFAULT_CONFIG: &str = include_str!("../../../deploy/ferrobus.toml");

/// Everything the broker can be told.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners and process settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// AMQP protocol limits.
    #[serde(default)]
    pub amqp: AmqpConfig,
    /// Credentials.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Where messages are kept.
    #[serde(default)]
    pub storage: StorageConfig,
    /// AMQPS listener and certificate.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Log output.
    #[serde(default)]
    pub log: LogConfig,
    /// The queues.
    #[serde(default)]
    pub queues: Vec<QueueDecl>,
    /// The topics, with their subscriptions and rules.
    #[serde(default)]
    pub topics: Vec<crate::topology::TopicDecl>,
    /// Things in the configuration that are accepted but not applied (logged at start-up).
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// AMQP listener address.
    pub amqp_listen: String,
    /// HTTP listener address (`/health`, `/metrics`).
    pub http_listen: String,
    /// Connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// Data directory.
    pub data_dir: String,
    /// Seconds that connections get to close on shutdown.
    pub shutdown_timeout_secs: u64,
    /// Threads serving connections; 0 = one per core but one, which is left to the storage
    /// writer and syncer threads.
    pub worker_threads: usize,
}

impl ServerConfig {
    /// The number of connection-serving threads to start.
    pub fn worker_threads(&self) -> usize {
        if self.worker_threads > 0 {
            return self.worker_threads;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        cores.saturating_sub(1).max(1)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            amqp_listen: "127.0.0.1:5672".into(),
            http_listen: "127.0.0.1:5300".into(),
            max_connections: 10_000,
            data_dir: "./data".into(),
            shutdown_timeout_secs: 10,
            worker_threads: 0,
        }
    }
}

/// `[amqp]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// A peer silent this long is closed (we advertise half). 0 = never.
    pub idle_timeout_ms: u64,
    /// Largest frame accepted.
    pub max_frame_size: u32,
    /// Largest message accepted.
    pub max_message_size: u64,
    /// Highest channel number.
    pub channel_max: u16,
    /// Refuse clients that skip SASL.
    pub require_sasl: bool,
    /// Credit granted to each producer link.
    pub link_credit: u32,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            idle_timeout_ms: 120_000,
            max_frame_size: 262_144,
            max_message_size: 104_857_600,
            channel_max: 1023,
            require_sasl: false,
            link_credit: 1000,
        }
    }
}

/// `[auth]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Links to entities need a CBS token or PLAIN key-rule login that covers them. Off is
    /// only allowed while every AMQP listener is on a loopback address.
    pub require: bool,
    /// Key rules; SASL PLAIN logs in with a rule's name and key.
    pub keys: Vec<KeyRule>,
}

/// A shared-access key rule.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRule {
    /// Rule name (the PLAIN user name).
    pub name: String,
    /// The key (the PLAIN password). Never printed.
    pub key: String,
}

impl fmt::Debug for KeyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRule")
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// `[storage]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `rocksdb` (durable, in `server.data_dir`) or `memory` (nothing survives a restart).
    pub kind: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            kind: "rocksdb".into(),
        }
    }
}

/// `[tls]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// AMQPS listener address; it runs only when `cert` and `key` are set.
    pub amqps_listen: String,
    /// PEM certificate chain.
    pub cert: Option<String>,
    /// PEM private key. Its path is printed, never its contents.
    pub key: Option<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            amqps_listen: "127.0.0.1:5671".into(),
            cert: None,
            key: None,
        }
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("amqps_listen", &self.amqps_listen)
            .field("cert", &self.cert)
            .field("key", &self.key.as_ref().map(|_| "<path set>"))
            .finish()
    }
}

/// `[log]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: String,
    /// Level filter (`RUST_LOG` overrides it), e.g. `info` or `ferrobus=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "pretty".into(),
            level: "info".into(),
        }
    }
}

/// `[[queues]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueDecl {
    /// Queue name (case-insensitive).
    pub name: String,
    /// Deliveries before a message is dead-lettered.
    #[serde(default = "default_max_delivery_count")]
    pub max_delivery_count: u32,
    /// Largest total payload the queue holds, in MiB.
    #[serde(default = "default_max_size_mb")]
    pub max_size_mb: u64,
    /// How long a peek-lock lasts, in milliseconds (`LockDuration`).
    #[serde(default = "default_lock_duration_ms")]
    pub lock_duration_ms: u64,
    /// Time to live of messages that set none, and the cap on those that do, in
    /// milliseconds (`DefaultMessageTimeToLive`); 0: none.
    #[serde(default)]
    pub default_message_ttl_ms: u64,
    /// Expired messages go to the dead-letter sub-queue (`DeadLetteringOnMessageExpiration`).
    #[serde(default)]
    pub dead_lettering_on_message_expiration: bool,
    /// Drop messages whose message-id was seen within the window (`RequiresDuplicateDetection`).
    #[serde(default)]
    pub requires_duplicate_detection: bool,
    /// The duplicate-detection window in milliseconds (`DuplicateDetectionHistoryTimeWindow`).
    #[serde(default = "default_duplicate_window_ms")]
    pub duplicate_detection_window_ms: u64,
    /// A queue or topic that messages sent here go to instead (`ForwardTo`).
    #[serde(default)]
    pub forward_to: Option<String>,
    /// A queue or topic that dead-lettered messages go to (`ForwardDeadLetteredMessagesTo`).
    #[serde(default)]
    pub forward_dead_lettered_messages_to: Option<String>,
    /// Messages are grouped in sessions by their SessionId (`RequiresSession`).
    #[serde(default)]
    pub requires_session: bool,
}

pub(crate) fn default_duplicate_window_ms() -> u64 {
    600_000
}

pub(crate) fn default_lock_duration_ms() -> u64 {
    60_000
}

pub(crate) fn default_max_delivery_count() -> u32 {
    10
}

pub(crate) fn default_max_size_mb() -> u64 {
    1024
}

/// Flags that override the file and the environment.
#[derive(Debug, Default)]
pub struct Overrides {
    /// `--data-dir`
    pub data_dir: Option<String>,
    /// `--amqp-listen`
    pub amqp_listen: Option<String>,
    /// `--http-listen`
    pub http_listen: Option<String>,
    /// `--amqps-listen`
    pub amqps_listen: Option<String>,
    /// `--tls-cert`
    pub tls_cert: Option<String>,
    /// `--tls-key`
    pub tls_key: Option<String>,
}

impl Config {
    /// Loads the file at `path` (or the embedded default), then the environment, then the
    /// flags. Errors name the offending key.
    pub fn load(path: Option<&str>, overrides: &Overrides) -> anyhow::Result<Config> {
        use config::{Environment, File, FileFormat};
        let mut warnings = Vec::new();
        let mut b = config::Config::builder();
        b = match path {
            Some(p) if p.ends_with(".json") => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("configuration: reading {p}: {e}"))?;
                let (toml, w) = crate::emulator::to_toml(&text)?;
                warnings = w;
                b.add_source(File::from_str(&toml, FileFormat::Toml))
            }
            Some(p) => b.add_source(File::new(p, FileFormat::Toml)),
            None => b.add_source(File::from_str(DEFAULT_CONFIG, FileFormat::Toml)),
        };
        b = b.add_source(
            Environment::with_prefix("FERROBUS")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        for (key, value) in [
            ("server.data_dir", &overrides.data_dir),
            ("server.amqp_listen", &overrides.amqp_listen),
            ("server.http_listen", &overrides.http_listen),
            ("tls.amqps_listen", &overrides.amqps_listen),
            ("tls.cert", &overrides.tls_cert),
            ("tls.key", &overrides.tls_key),
        ] {
            if let Some(v) = value {
                b = b.set_override(key, v.as_str())?;
            }
        }
        let redact = |e: &dyn std::fmt::Display| {
            let text = format!("configuration: {e}");
            anyhow::anyhow!(redact_secrets(&text, path))
        };
        let mut cfg: Config = b
            .build()
            .map_err(|e| redact(&e))?
            .try_deserialize()
            .map_err(|e| redact(&e))?;
        cfg.validate()?;
        cfg.warnings = warnings;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if !matches!(self.storage.kind.as_str(), "rocksdb" | "memory") {
            anyhow::bail!(
                "configuration: storage.kind = {:?} is not supported (use \"rocksdb\" or \"memory\")",
                self.storage.kind
            );
        }
        if !self.auth.require {
            let mut listeners = vec![("server.amqp_listen", &self.server.amqp_listen)];
            if self.tls.cert.is_some() {
                listeners.push(("tls.amqps_listen", &self.tls.amqps_listen));
            }
            for (key, addr) in listeners {
                if !is_loopback(addr) {
                    anyhow::bail!(
                        "configuration: {key} = {addr:?} is not a loopback address, and auth.require is false: \
                         anyone who can reach it could use every entity without credentials. \
                         Set auth.require = true (clients then need a SAS token or PLAIN key-rule login), \
                         or listen on 127.0.0.1"
                    );
                }
            }
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            anyhow::bail!("configuration: tls.cert and tls.key must be set together");
        }
        if !matches!(self.log.format.as_str(), "pretty" | "json") {
            anyhow::bail!(
                "configuration: log.format = {:?} is not supported (use \"pretty\" or \"json\")",
                self.log.format
            );
        }
        if self.amqp.max_frame_size < 512 {
            anyhow::bail!("configuration: amqp.max_frame_size must be at least 512");
        }
        if self.amqp.link_credit == 0 {
            anyhow::bail!("configuration: amqp.link_credit must be at least 1");
        }
        for q in &self.queues {
            if q.name.is_empty() || q.name.contains('$') {
                anyhow::bail!("configuration: queues: invalid queue name {:?}", q.name);
            }
            if q.lock_duration_ms < 1000 {
                anyhow::bail!(
                    "configuration: queues.{}: lock_duration_ms must be at least 1000",
                    q.name
                );
            }
            if q.max_delivery_count == 0 {
                anyhow::bail!(
                    "configuration: queues.{}: max_delivery_count must be at least 1",
                    q.name
                );
            }
        }
        Ok(())
    }
}

/// True for `127.0.0.0/8`, `::1` and `localhost` addresses (the port does not matter).
fn is_loopback(addr: &str) -> bool {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Removes secret values from a configuration error. A parse error quotes the offending
/// source line and a type error the offending value, so every value assigned to a key whose
/// name says secret (`key`, `keys`, `password`, `secret`), in the file or in
/// `FERROBUS__…` variables, is replaced by `<redacted>` wherever it appears.
fn redact_secrets(text: &str, path: Option<&str>) -> String {
    let mut secrets: Vec<String> = Vec::new();
    let is_secret = |k: &str| {
        let k = k.to_ascii_lowercase();
        ["key", "password", "secret"].iter().any(|s| k.contains(s))
    };
    if let Some(src) = path.and_then(|p| std::fs::read_to_string(p).ok()) {
        for line in src.lines() {
            if let Some((k, v)) = line.split_once('=') {
                if is_secret(k.trim()) {
                    let v = v.trim().trim_matches(|c| c == '"' || c == '\'' || c == ',');
                    secrets.push(v.to_string());
                    // an unterminated string: everything after the quote
                    if let Some(rest) = line.split_once('"').map(|(_, r)| r) {
                        secrets.push(rest.trim_end_matches('"').to_string());
                    }
                }
            }
        }
    }
    for (k, v) in std::env::vars() {
        if k.starts_with("FERROBUS__") && is_secret(&k) {
            secrets.push(v);
        }
    }
    secrets.retain(|s| s.len() >= 3);
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_string();
    for s in secrets {
        out = out.replace(&s, "<redacted>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_loads() {
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(c.server.amqp_listen, "127.0.0.1:5672");
        assert_eq!(c.server.http_listen, "127.0.0.1:5300");
        assert_eq!(c.queues.len(), 2);
        assert_eq!(c.queues[0].name, "queue.1");
        assert!(!c.queues[0].requires_session);
        assert_eq!(c.queues[1].name, "session.1");
        assert!(c.queues[1].requires_session);
    }

    #[test]
    fn worker_threads_default_to_all_cores_but_one() {
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(c.server.worker_threads, 0);
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(c.server.worker_threads(), cores.saturating_sub(1).max(1));
        let fixed = ServerConfig {
            worker_threads: 3,
            ..ServerConfig::default()
        };
        assert_eq!(fixed.worker_threads(), 3);
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let dir = std::env::temp_dir().join(format!("ferrobus-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.toml");
        std::fs::write(&p, "[amqp]\nidle_timout_ms = 5\n").unwrap();
        let e = Config::load(Some(p.to_str().unwrap()), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("idle_timout_ms"), "{e}");
    }

    #[test]
    fn parse_and_type_errors_do_not_echo_secrets() {
        let dir = std::env::temp_dir().join(format!("ferrobus-cfg-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (i, body) in [
            "[[auth.keys]]\nname = \"r\"\nkey = \"TopSecretValue\n",
            "[auth]\nkeys = \"TopSecretValue\"\n",
            "[[auth.keys]]\nname = \"r\"\nkey = \"TopSecretValue\" garbage\n",
        ]
        .iter()
        .enumerate()
        {
            let p = dir.join(format!("bad{i}.toml"));
            std::fs::write(&p, body).unwrap();
            let e = Config::load(Some(p.to_str().unwrap()), &Overrides::default()).unwrap_err();
            assert!(!format!("{e:#}").contains("TopSecret"), "{e:#}");
        }
    }

    #[test]
    fn open_access_is_refused_off_loopback() {
        assert!(
            is_loopback("127.0.0.1:5672")
                && is_loopback("[::1]:5672")
                && is_loopback("localhost:1")
        );
        assert!(!is_loopback("0.0.0.0:5672") && !is_loopback("10.1.2.3:5672"));
        let o = Overrides {
            amqp_listen: Some("0.0.0.0:5672".into()),
            ..Default::default()
        };
        let e = Config::load(None, &o).unwrap_err().to_string();
        assert!(e.contains("auth.require"), "{e}");
    }

    #[test]
    fn key_rules_never_print_their_key() {
        let k = KeyRule {
            name: "n".into(),
            key: "SECRET".into(),
        };
        assert!(!format!("{k:?}").contains("SECRET"));
    }
}
