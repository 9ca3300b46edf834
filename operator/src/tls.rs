//! Operator-issued TLS material: one CA and one serving certificate per group, and the drain
//! client that trusts exactly that CA.

use crate::Error;
use crate::proxygroup::build::TlsMaterial;
use blockproxy_protocol::{DRAIN_PATH, DrainStatus, VolumeId, dirty_keys_path};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use std::net::SocketAddr;
use std::time::Duration;

/// The name clients verify the proxies' certificate against (they dial the IPs of the
/// discovery document): the group's headless Service name.
pub fn server_name(service: &str, namespace: &str) -> String {
    format!("{service}.{namespace}.svc")
}

/// A new CA and a serving certificate for `server_name` (plus the cluster-local variants).
pub fn issue(group: &str, server_name: &str) -> Result<TlsMaterial, Error> {
    let ca_key = KeyPair::generate().map_err(Error::Tls)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(Error::Tls)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.distinguished_name.push(DnType::CommonName, format!("blockproxy {group} CA"));
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca_params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let ca_cert = ca_params.self_signed(&ca_key).map_err(Error::Tls)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().map_err(Error::Tls)?;
    let names = vec![server_name.to_owned(), format!("{server_name}.cluster.local"), format!("*.{server_name}")];
    let mut params = CertificateParams::new(names).map_err(Error::Tls)?;
    params.distinguished_name.push(DnType::CommonName, server_name.to_owned());
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let cert = params.signed_by(&key, &issuer).map_err(Error::Tls)?;
    Ok(TlsMaterial { ca_pem: ca_cert.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// How to reach one proxy's admin API.
pub struct AdminTarget<'a> {
    /// `ip:port` or `host:port` (a proxy's stable DNS name, resolved at each call).
    pub address: &'a str,
    pub token: &'a str,
    /// `Some((ca_pem, server_name))` for TLS, `None` for plain HTTP.
    pub tls: Option<(&'a str, &'a str)>,
}

/// The socket address of `ip:port`, or of `host:port` resolved now (a name that does not
/// resolve, such as a proxy whose Pod is not Ready, is an error like a refused connection).
async fn resolve(address: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = address.parse() {
        return Ok(addr);
    }
    // Bounded like the connect below: a resolver that does not answer must not hold a
    // reconcile (and with it the volume's lock) for the libc's retries.
    let mut found = tokio::time::timeout(Duration::from_secs(3), tokio::net::lookup_host(address))
        .await
        .map_err(|_| format!("resolving {address}: no answer within 3s"))?
        .map_err(|e| format!("resolving {address}: {e}"))?;
    found.next().ok_or_else(|| format!("resolving {address}: no address"))
}

/// An HTTP client for one proxy and the base URL to use with it (`https://<server name>:port`
/// resolved to the proxy's IP, so the certificate is checked against the group's name).
async fn client_for(target: &AdminTarget<'_>) -> Result<(reqwest::Client, String), String> {
    let addr = resolve(target.address).await?;
    let mut builder =
        reqwest::Client::builder().timeout(Duration::from_secs(10)).connect_timeout(Duration::from_secs(3));
    let base = match target.tls {
        Some((ca, name)) => {
            let cert = reqwest::Certificate::from_pem(ca.as_bytes()).map_err(|e| format!("bad CA bundle: {e}"))?;
            builder = builder.tls_built_in_root_certs(false).add_root_certificate(cert).resolve(name, addr);
            format!("https://{name}:{}", addr.port())
        }
        None => format!("http://{addr}"),
    };
    Ok((builder.build().map_err(|e| format!("building HTTP client: {e}"))?, base))
}

/// Starts (idempotently) a drain and returns the proxy's progress.
pub async fn drain(target: &AdminTarget<'_>) -> Result<DrainStatus, String> {
    admin_status(target, reqwest::Method::POST).await
}

/// The proxy's cache and drain figures, without starting a drain.
pub async fn report(target: &AdminTarget<'_>) -> Result<DrainStatus, String> {
    admin_status(target, reqwest::Method::GET).await
}

async fn admin_status(target: &AdminTarget<'_>, method: reqwest::Method) -> Result<DrainStatus, String> {
    let (client, base) = client_for(target).await?;
    let status: DrainStatus = client
        .request(method, format!("{base}{DRAIN_PATH}"))
        .bearer_auth(target.token)
        .send()
        .await
        .map_err(|e| format!("admin call to {}: {e}", target.address))?
        .error_for_status()
        .map_err(|e| format!("admin call to {}: {e}", target.address))?
        .json()
        .await
        .map_err(|e| format!("admin answer from {}: {e}", target.address))?;
    Ok(status)
}

/// Whether the proxy serves `volume` for `target.token` (a volume token) yet: it loads its
/// volumes file from a mounted Secret, which the kubelet refreshes up to a minute after the
/// operator wrote it. Asks for the volume's dirty keys under a prefix nobody uses: 200 yes, a
/// refusal marked `x-blockproxy-refusal` (unknown volume or token) not yet. Any other answer,
/// such as a 404 from something else on the address, is an error: the operator could not ask.
pub async fn serves_volume(target: &AdminTarget<'_>, volume: &VolumeId) -> Result<bool, String> {
    let (client, base) = client_for(target).await?;
    let response = client
        .get(format!("{base}{}", dirty_keys_path(volume)))
        .query(&[("prefix", "blockproxy-operator-volume-check/")])
        .bearer_auth(target.token)
        .send()
        .await
        .map_err(|e| format!("volume check at {}: {e}", target.address))?;
    let refused = response.headers().contains_key(blockproxy_protocol::REFUSAL_HEADER);
    match response.status().as_u16() {
        200 => Ok(true),
        401 | 404 if refused => Ok(false),
        other => Err(format!("volume check at {}: HTTP {other} without a proxy's refusal", target.address)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_ips_and_names() {
        assert_eq!(resolve("10.1.2.3:8443").await.unwrap(), "10.1.2.3:8443".parse().unwrap());
        assert_eq!(resolve("[fd00::1]:8443").await.unwrap(), "[fd00::1]:8443".parse().unwrap());
        let local = resolve("localhost:8443").await.unwrap();
        assert!(local.ip().is_loopback() && local.port() == 8443, "{local}");
        // `.invalid` never resolves (RFC 6761).
        assert!(resolve("proxy.blockproxy.invalid:8443").await.is_err());
        assert!(resolve("no-port").await.is_err());
    }

    #[test]
    fn issues_a_ca_and_a_serving_cert() {
        let m = issue("eu", "eu.blockproxy-system.svc").unwrap();
        assert!(m.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(m.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(m.key_pem.contains("PRIVATE KEY"));
        assert_ne!(m.ca_pem, m.cert_pem);
    }
}
