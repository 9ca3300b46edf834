//! TLS for figure 9: one self-signed certificate for localhost and 127.0.0.1 that both blockproxy
//! and nginx present, and the load generator's rustls client that trusts only it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

/// The certificate and key as PEM files, for both servers.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    der: CertificateDer<'static>,
}

impl CertFiles {
    /// Generates the pair (ECDSA P-256, rcgen's default) into `dir`.
    pub fn generate(dir: &Path) -> Result<Self> {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        std::fs::create_dir_all(dir)?;
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, c.cert.pem())?;
        std::fs::write(&key, c.signing_key.serialize_pem())?;
        Ok(Self { cert, key, der: c.cert.der().clone() })
    }

    /// The load generator's TLS: TLS 1.3 offering only AES-128-GCM, so both servers negotiate the
    /// same suite (rustls alone would offer AES-256-GCM first, and both servers follow the
    /// client's order); trusts only this certificate.
    pub fn client_config(&self) -> Result<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone())?;
        let provider = CryptoProvider {
            cipher_suites: vec![ring::cipher_suite::TLS13_AES_128_GCM_SHA256],
            ..ring::default_provider()
        };
        Ok(ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }
}

/// One handshake with `config` to `addr`: what it negotiated, e.g. "TLSv1_3 TLS13_AES_128_GCM_SHA256 X25519".
pub async fn negotiated(config: &ClientConfig, addr: SocketAddr) -> Result<String> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config.clone()))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .with_context(|| format!("TLS handshake with {addr}"))?;
    let conn = tls.get_ref().1;
    Ok(format!(
        "{:?} {:?} {:?}",
        conn.protocol_version().context("no protocol version")?,
        conn.negotiated_cipher_suite().context("no cipher suite")?.suite(),
        conn.negotiated_key_exchange_group().context("no key exchange group")?.name()
    ))
}

/// Kernel TLS transmit sockets set up so far (`TlsTxSw` + `TlsTxDevice` of /proc/net/tls_stat);
/// `None` when the kernel has no TLS module loaded, so no process can have used kTLS.
pub fn ktls_tx_sockets() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/net/tls_stat").ok()?;
    Some(
        stat.lines()
            .filter_map(|l| l.split_once(char::is_whitespace))
            .filter(|(k, _)| matches!(*k, "TlsTxSw" | "TlsTxDevice"))
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .sum(),
    )
}
