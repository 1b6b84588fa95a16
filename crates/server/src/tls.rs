//! TLS for AMQP connections: certificates from PEM files, reloaded without a restart, and the
//! two ways a client starts TLS.
//!
//! A client either starts the TLS handshake directly (`amqps://`, first byte 0x16) or first
//! sends the AMQP TLS protocol header `AMQP 2 1.0.0`, which we answer with the same header
//! before the handshake. Both are served on the AMQPS listener, and on the plain listener when
//! TLS is configured. The handshake runs in the connection's task under a timeout.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

/// The AMQP protocol header that announces TLS.
const AMQP_TLS_HEADER: [u8; 8] = *b"AMQP\x02\x01\x00\x00";

/// The server certificate and key, reloadable.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    config: RwLock<Arc<ServerConfig>>,
    stamp: Mutex<Option<(SystemTime, SystemTime)>>,
}

impl Tls {
    /// Loads the certificate chain and key; an error names the file and what is wrong.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<Tls>> {
        let config = build(cert, key)?;
        let tls = Tls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            config: RwLock::new(Arc::new(config)),
            stamp: Mutex::new(stamp(cert, key)),
        };
        Ok(Arc::new(tls))
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.config
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }

    /// Reads the files again. A bad new certificate or key is logged and the old ones stay.
    pub fn reload(&self) {
        match build(&self.cert, &self.key) {
            Ok(c) => {
                *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(c);
                *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) =
                    stamp(&self.cert, &self.key);
                info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "TLS certificate not reloaded; keeping the current one")
            }
        }
    }

    /// Reloads when either file changed since the last load (polled by a timer).
    pub fn reload_if_changed(&self) {
        let now = stamp(&self.cert, &self.key);
        let changed = *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) != now;
        if changed && now.is_some() {
            self.reload();
        }
    }
}

fn stamp(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(cert)?, m(key)?))
}

fn build(cert: &Path, key: &Path) -> anyhow::Result<ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("tls.cert: reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "tls.cert: {} is not a PEM certificate chain",
                cert.display()
            )
        })?;
    anyhow::ensure!(
        !chain.is_empty(),
        "tls.cert: {} holds no certificate",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
        format!(
            "tls.key: {} holds no readable PEM private key",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("tls: the certificate and key do not belong together")
}

/// How a connection starts.
pub enum Start {
    /// Plain AMQP (or SASL) on the socket.
    Plain(TcpStream),
    /// TLS established.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Looks at the first bytes and sets up TLS if the client asks for it (or, with
/// `implicit`, always). Runs under the caller's timeout.
pub async fn start(
    mut sock: TcpStream,
    tls: Option<&Tls>,
    implicit: bool,
) -> std::io::Result<Start> {
    let wants_header = {
        let mut buf = [0u8; 5];
        loop {
            let n = sock.peek(&mut buf).await?;
            if n == 0 {
                return Ok(Start::Plain(sock)); // the engine sees EOF and ends
            }
            if buf[0] != b'A' || n == 5 {
                break buf[..n] == AMQP_TLS_HEADER[..5];
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let Some(tls) = tls else {
        return Ok(Start::Plain(sock));
    };
    if wants_header {
        let mut h = [0u8; 8];
        sock.read_exact(&mut h).await?;
        if h != AMQP_TLS_HEADER {
            // another version of the TLS header: answer with ours and hang up
            sock.write_all(&AMQP_TLS_HEADER).await?;
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "unsupported TLS protocol header",
            ));
        }
        sock.write_all(&AMQP_TLS_HEADER).await?;
    } else if !implicit && !starts_tls_handshake(&sock).await? {
        return Ok(Start::Plain(sock));
    }
    let stream = tls.acceptor().accept(sock).await?;
    Ok(Start::Tls(Box::new(stream)))
}

/// True if the client's first byte is a TLS handshake record.
async fn starts_tls_handshake(sock: &TcpStream) -> std::io::Result<bool> {
    let mut b = [0u8; 1];
    Ok(sock.peek(&mut b).await? == 1 && b[0] == 0x16)
}
