//! TLS for the block API: a given certificate, or a generated self-signed one (as the reference
//! product does), written next to the cache so clients can pin it.

use anyhow::Context;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn load(cert_file: &Path, key_file: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert_file).with_context(|| format!("opening TLS certificate {}", cert_file.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("parsing TLS certificate {}", cert_file.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate found in {}", cert_file.display());
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key_file).with_context(|| format!("opening TLS key {}", key_file.display()))?,
    ))
    .with_context(|| format!("parsing TLS key {}", key_file.display()))?
    .with_context(|| format!("no private key found in {}", key_file.display()))?;
    server_config(certs, key)
}

/// Generates a self-signed certificate for localhost and the host's name, writes it to
/// `<dir>/selfsigned.crt` (public part only) and returns the server configuration.
pub fn self_signed(dir: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        names.push(h.trim().to_owned());
    }
    let certified = rcgen::generate_simple_self_signed(names).context("generating a self-signed certificate")?;
    std::fs::create_dir_all(dir)?;
    let crt_path = dir.join("selfsigned.crt");
    std::fs::write(&crt_path, certified.cert.pem())?;
    tracing::info!(path = %crt_path.display(), "serving a generated self-signed certificate");
    let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der()).map_err(|e| anyhow::anyhow!(e))?;
    server_config(vec![certified.cert.der().clone()], key)
}

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<ServerConfig>> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
