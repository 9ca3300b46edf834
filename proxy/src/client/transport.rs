//! HTTP(S) to the proxies: one pooled client per (scheme, CA bundle), trusting exactly the group's
//! CA bundle when one is published (the public web PKI otherwise), and the block requests.

use super::ClientError;
use super::arriving::PutData;
use super::chunks::Chunks;
use super::info::{ObjectInfo, version_of};
use crate::protocol::{
    self, BlockKey, CHECKSUM_HEADER, Checksum, DirtyKeys, LENGTH_HEADER, ObjectAttrs, VERSION_HEADER, VolumeId,
};
use bytes::Bytes;
use reqwest::StatusCode;
use std::sync::Arc;
use std::time::Duration;

/// Verifies a proxy's certificate chain against the group's CA bundle and its name against the
/// group's published server name, whatever address was dialled.
#[derive(Debug)]
struct GroupNameVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: rustls::pki_types::ServerName<'static>,
}

impl rustls::client::danger::ServerCertVerifier for GroupNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _dialled: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Builds a pooled client for a group. With a CA bundle, exactly that bundle is trusted; with a
/// server name too, certificates are checked against that name instead of the dialled address.
pub fn http_client(
    ca_bundle: Option<&str>,
    server_name: Option<&str>,
    connect_timeout: Duration,
) -> Result<reqwest::Client, ClientError> {
    let tls_err = |reason: String| ClientError::Tls { reason };
    let mut builder = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        // Below the proxies' --header-read-timeout (10 s), which also closes idle keep-alive
        // connections: the client lets an idle connection go first, instead of reusing one the
        // proxy is closing at that moment (a spurious failure and failover).
        .pool_idle_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if let Some(pem) = ca_bundle {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
            let cert = cert.map_err(|e| tls_err(format!("unparseable CA bundle: {e}")))?;
            roots.add(cert).map_err(|e| tls_err(format!("unusable CA certificate: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder_tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(e.to_string()))?;
        let mut tls = match server_name {
            None => builder_tls.with_root_certificates(roots).with_no_client_auth(),
            Some(name) => {
                let name = rustls::pki_types::ServerName::try_from(name.to_owned())
                    .map_err(|e| tls_err(format!("invalid serverName {name:?}: {e}")))?;
                let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| tls_err(format!("building the certificate verifier: {e}")))?;
                builder_tls
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(GroupNameVerifier { inner, name }))
                    .with_no_client_auth()
            }
        };
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        builder = builder.use_preconfigured_tls(tls);
    }
    builder.build().map_err(|e| tls_err(format!("building the HTTP client: {e}")))
}

/// How one attempt against one proxy ended, when it did not succeed.
#[derive(Debug)]
pub enum AttemptError {
    /// Connection refused/reset, timeout: the proxy is marked down.
    Unreachable(String),
    /// The proxy answered 5xx (draining, back-pressure, store trouble): try the next one.
    Unavailable(String),
    /// The request itself is wrong (4xx): retrying elsewhere will not help.
    Rejected(ClientError),
    /// A write was not applied: the block already holds this newer version (409).
    Superseded(u64),
}

pub(super) fn classify(e: reqwest::Error) -> AttemptError {
    AttemptError::Unreachable(if e.is_timeout() { format!("timed out: {e}") } else { format!("{e:#}") })
}

pub(super) async fn check(resp: reqwest::Response, what: &str) -> Result<reqwest::Response, AttemptError> {
    let status = resp.status();
    if status.is_success() || status == StatusCode::NOT_FOUND {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    let msg = format!("{what}: proxy answered {status}: {}", body.trim());
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        Err(AttemptError::Unavailable(msg))
    } else {
        Err(AttemptError::Rejected(ClientError::Rejected { status: status.as_u16(), message: msg }))
    }
}

/// Bytes read from somewhere, with what was said about their object version: one buffer
/// (`Bytes`), or the [`Chunks`] the connection delivered.
#[derive(Debug, Clone)]
pub struct Fetched<D = Bytes> {
    pub data: D,
    /// `info.size` is the size of the whole object (differs from `data.len()` for a range).
    pub info: ObjectInfo,
}

impl<D> Fetched<D> {
    pub fn version(&self) -> u64 {
        self.info.version
    }

    pub fn total(&self) -> u64 {
        self.info.size
    }
}

impl Fetched<Chunks> {
    pub fn into_contiguous(self) -> Fetched {
        Fetched { data: self.data.into_bytes(), info: self.info }
    }
}

/// A response's body as its chunks (no copy into one buffer). With `sum`, the body is verified
/// against it: each chunk is hashed as it arrives, while it is still in the CPU's cache, rather
/// than the whole body after its last chunk (a 4 MiB block no longer fits that cache by then).
/// `what` names the request in the error.
pub(super) async fn read_chunks(
    mut resp: reqwest::Response,
    sum: Option<&Checksum>,
    what: impl FnOnce() -> String,
) -> Result<Chunks, AttemptError> {
    let mut running = sum.map(Checksum::running);
    let mut out = Chunks::default();
    while let Some(chunk) = resp.chunk().await.map_err(classify)? {
        if let Some(r) = &mut running {
            r.update(&chunk);
        }
        out.push(chunk);
    }
    if let Some(r) = running {
        r.verify().map_err(|e| AttemptError::Unavailable(format!("{} failed verification: {e}", what())))?;
    }
    Ok(out)
}

/// What a write carries besides its bytes.
#[derive(Debug, Clone, Copy)]
pub struct WriteMeta<'a> {
    pub attrs: &'a ObjectAttrs,
    /// Part sizes for the store upload; empty for one part.
    pub parts: &'a [u64],
}

/// An applied write: the version the proxy stamped, and the object's S3 ETag when it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub version: u64,
    pub etag: Option<String>,
}

pub(crate) fn etag_of(h: &reqwest::header::HeaderMap) -> Option<String> {
    h.get(protocol::ETAG_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// The block API of one proxy.
pub struct ProxyCall<'a> {
    pub http: &'a reqwest::Client,
    pub base: String,
    pub token: &'a str,
    pub volume: &'a VolumeId,
    pub timeout: Duration,
}

impl ProxyCall<'_> {
    pub(super) fn url(&self, key: &BlockKey) -> String {
        format!("{}{}", self.base, protocol::block_path(self.volume, key))
    }

    /// With `repair`, the proxy installs exactly `version` or refuses with 409.
    pub async fn put(
        &self,
        key: &BlockKey,
        data: &PutData,
        version: u64,
        repair: bool,
        meta: WriteMeta<'_>,
    ) -> Result<Written, AttemptError> {
        let mut req = self.http.put(self.url(key));
        if repair {
            req = req.header(protocol::REPAIR_HEADER, "1");
        }
        for (name, value) in meta.attrs.to_headers() {
            req = req.header(name, value);
        }
        if !meta.parts.is_empty() {
            let parts: Vec<String> = meta.parts.iter().map(u64::to_string).collect();
            req = req.header(protocol::PARTS_HEADER, parts.join(","));
        }
        req = req.bearer_auth(self.token).header(VERSION_HEADER, version).timeout(self.timeout);
        let relay = match data {
            PutData::Arriving(a) => a.take_relay().map(|r| (a, r)),
            PutData::Whole(_) => None,
        };
        let resp = match relay {
            // The first attempt of bytes still arriving: relayed as they come, checksum last.
            Some((arriving, relay)) => {
                let sent = req
                    .header(reqwest::header::TRAILER, CHECKSUM_HEADER)
                    .header(LENGTH_HEADER, arriving.len())
                    .body(reqwest::Body::wrap(relay))
                    .send()
                    .await;
                arriving.end_relay();
                match sent {
                    // Not the proxy's fault: its source failed, and the proxy stored nothing.
                    Err(_) if arriving.failed() => return Err(arriving.source_failed()),
                    sent => sent.map_err(classify)?,
                }
            }
            None => {
                let data = data.whole().await?;
                req.header(CHECKSUM_HEADER, Checksum::crc32c(&data).to_string())
                    .body(data)
                    .send()
                    .await
                    .map_err(classify)?
            }
        };
        if resp.status() == StatusCode::CONFLICT {
            return Err(AttemptError::Superseded(version_of(resp.headers())));
        }
        let resp = check(resp, "PUT").await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(AttemptError::Rejected(ClientError::Rejected {
                status: 404,
                message: "PUT: the proxy does not serve this volume".into(),
            }));
        }
        Ok(Written { version: version_of(resp.headers()).max(version), etag: etag_of(resp.headers()) })
    }

    pub async fn get(&self, key: &BlockKey, range: Option<&str>) -> Result<Option<Fetched<Chunks>>, AttemptError> {
        let mut req = self.http.get(self.url(key)).bearer_auth(self.token).timeout(self.timeout);
        if let Some(r) = range {
            req = req.header(reqwest::header::RANGE, r);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Err(classify(e)),
        };
        if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE {
            let body = resp.text().await.unwrap_or_default();
            return Err(AttemptError::Rejected(ClientError::RangeNotSatisfiable(body)));
        }
        let resp = check(resp, "GET").await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let headers = resp.headers().clone();
        let total = resp
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit('/').next())
            .and_then(|v| v.parse().ok());
        let checksum: Option<Checksum> =
            resp.headers().get(CHECKSUM_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        // End to end: a whole block (also one that a range covers whole) is checked against the
        // checksum the proxy verified on disk (a part cannot be; the proxy verified the whole
        // block before slicing it). The body has the length its header says (hyper checks).
        let whole = resp.status() != StatusCode::PARTIAL_CONTENT || (total.is_some() && resp.content_length() == total);
        let data = read_chunks(resp, checksum.as_ref().filter(|_| whole), || "GET body".to_owned()).await?;
        let info = ObjectInfo::from_headers(&headers, total.unwrap_or(data.len() as u64));
        Ok(Some(Fetched { data, info }))
    }

    /// The object's current version, or `None` when it does not exist (or is deleted).
    pub async fn head(&self, key: &BlockKey) -> Result<Option<ObjectInfo>, AttemptError> {
        let resp = self
            .http
            .head(self.url(key))
            .bearer_auth(self.token)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(classify)?;
        let resp = check(resp, "HEAD").await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let size = resp
            .headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(Some(ObjectInfo::from_headers(resp.headers(), size)))
    }

    pub async fn delete(&self, key: &BlockKey, version: u64) -> Result<u64, AttemptError> {
        let resp = self
            .http
            .delete(self.url(key))
            .bearer_auth(self.token)
            .header(VERSION_HEADER, version)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(classify)?;
        if resp.status() == StatusCode::CONFLICT {
            return Err(AttemptError::Superseded(version_of(resp.headers())));
        }
        let resp = check(resp, "DELETE").await?;
        Ok(version_of(resp.headers()).max(version))
    }

    /// Keys acknowledged by this proxy but not yet flushed.
    pub async fn dirty(&self, prefix: &str) -> Result<DirtyKeys, AttemptError> {
        self.listing(&protocol::dirty_keys_path(self.volume), prefix, "list dirty keys").await
    }

    /// The store's objects under the volume, as this proxy lists them.
    pub async fn store_objects(&self, prefix: &str) -> Result<protocol::StoreObjects, AttemptError> {
        self.listing(&protocol::store_objects_path(self.volume), prefix, "list store objects").await
    }

    /// GET of a JSON listing under `prefix`.
    async fn listing<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        prefix: &str,
        what: &str,
    ) -> Result<T, AttemptError> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .query(&[("prefix", prefix)])
            .bearer_auth(self.token)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(classify)?;
        let resp = check(resp, what).await?;
        resp.json().await.map_err(|e| AttemptError::Unavailable(format!("{what}: answer is not valid JSON: {e}")))
    }

    /// One ping; the elapsed time on success.
    pub async fn ping(&self) -> Result<Duration, AttemptError> {
        let started = std::time::Instant::now();
        let resp = self
            .http
            .get(format!("{}{}", self.base, protocol::PING_PATH))
            .timeout(self.timeout)
            .send()
            .await
            .map_err(classify)?;
        if !resp.status().is_success() {
            return Err(AttemptError::Unavailable(format!("ping answered {}", resp.status())));
        }
        let _ = resp.bytes().await.map_err(classify)?;
        Ok(started.elapsed())
    }
}
