//! The load generator every peer gets: a closed loop of `concurrency` tasks, each sending one
//! request at a time for a fixed duration, on hyper's pooled client (hyper-util legacy client,
//! HTTP/1.1 keep-alive, TCP_NODELAY), over plain HTTP or, for figure 9, HTTPS (hyper-rustls on
//! the same TCP connector). Bodies are streamed and counted, never collected, so the generator
//! copies nothing.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;

/// The pooled client on connector `C`: plain TCP, or TLS over it ([`Https`]).
pub type Http<C = HttpConnector> = Client<C, Full<Bytes>>;
pub type Https = Http<HttpsConnector<HttpConnector>>;

fn tcp() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector
}

fn pooled<C: Connect + Clone + Send + Sync + 'static>(connector: C, concurrency: usize) -> Http<C> {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency.max(1) * 2)
        .pool_idle_timeout(Duration::from_secs(120))
        .build(connector)
}

/// A pooled HTTP/1.1 client with room for `concurrency` idle connections per host.
pub fn http_client(concurrency: usize) -> Http {
    pooled(tcp(), concurrency)
}

/// [`http_client`] over TLS with `tls`, HTTPS only. HTTP/1.1 only, so no ALPN is offered and
/// every server answers in HTTP/1.1 on keep-alive connections, as in the plain figures.
pub fn https_client(concurrency: usize, tls: rustls::ClientConfig) -> Https {
    let mut tcp = tcp();
    tcp.enforce_http(false);
    let connector = HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().wrap_connector(tcp);
    pooled(connector, concurrency)
}

/// GETs `uri` and returns the number of body bytes received (streamed, not kept).
pub async fn get<C: Connect + Clone + Send + Sync + 'static>(
    http: &Http<C>,
    uri: &Uri,
    token: Option<&str>,
) -> Result<u64> {
    let mut req = Request::builder().method(Method::GET).uri(uri.clone());
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    counted(http, req.body(Full::new(Bytes::new()))?).await
}

/// Sends `req` and returns the number of body bytes received (streamed, not kept).
async fn counted<C: Connect + Clone + Send + Sync + 'static>(http: &Http<C>, req: Request<Full<Bytes>>) -> Result<u64> {
    let uri = req.uri().clone();
    let resp = http.request(req).await.with_context(|| format!("GET {uri}"))?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            n += data.len() as u64;
        }
    }
    if !status.is_success() {
        bail!("GET {uri}: {status}");
    }
    Ok(n)
}

/// SigV4 credentials, for the load generator to speak S3 as an S3 client does: every request
/// signed (region us-east-1, service s3, `UNSIGNED-PAYLOAD` for the empty GET body).
pub struct S3Signer {
    identity: aws_smithy_runtime_api::client::identity::Identity,
}

impl S3Signer {
    pub fn new(access_key: &str, secret_key: &str) -> Self {
        let credentials = aws_sdk_s3::config::Credentials::new(access_key, secret_key, None, None, "bench");
        Self { identity: credentials.into() }
    }
}

impl S3Signer {
    /// SigV4 headers for `method` on `uri` (path style: `http://host/bucket/key`), the payload
    /// unsigned (`x-amz-content-sha256: UNSIGNED-PAYLOAD`), as of now.
    pub fn headers(&self, method: &str, uri: &Uri) -> Result<Vec<(String, String)>> {
        use aws_sigv4::http_request::{PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign};
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&self.identity)
            .region("us-east-1")
            .name("s3")
            .time(std::time::SystemTime::now())
            .settings(settings)
            .build()?
            .into();
        let host = uri.authority().context("an S3 URI names its host")?.as_str();
        let headers = [("host", host)];
        let signable =
            SignableRequest::new(method, uri.to_string(), headers.into_iter(), SignableBody::UnsignedPayload)?;
        let (instructions, _) = sign(signable, &params)?.into_parts();
        Ok(instructions.headers().map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
    }
}

/// An S3 GetObject of `uri` (path style: `http://host/bucket/key`), signed with `signer`; returns
/// the number of body bytes received. The same client as [`get`], so the two compare.
pub async fn s3_get(http: &Http, uri: &Uri, signer: &S3Signer) -> Result<u64> {
    let mut req = Request::builder().method(Method::GET).uri(uri.clone());
    for (k, v) in signer.headers("GET", uri)? {
        req = req.header(k, v);
    }
    counted(http, req.body(Full::new(Bytes::new()))?).await
}

/// PUTs `data` to `uri` with the given extra headers; returns when the response has been read.
pub async fn put(http: &Http, uri: &Uri, headers: &[(&str, String)], data: Bytes) -> Result<()> {
    let mut req = Request::builder().method(Method::PUT).uri(uri.clone()).header(header::CONTENT_LENGTH, data.len());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = http.request(req.body(Full::new(data))?).await.with_context(|| format!("PUT {uri}"))?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("PUT {uri}: {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}

/// What one closed-loop run measured.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    pub requests: u64,
    pub errors: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Latency of every successful request, in microseconds, sorted.
    pub latencies_us: Vec<u64>,
    pub first_error: Option<String>,
}

impl LoadResult {
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64()
    }

    pub fn req_per_s(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// The `p`-th percentile latency (0..=100) in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        percentile(&self.latencies_us, p) / 1000.0
    }

    /// Two runs of the same load pooled: their requests, bytes and time add up.
    pub fn pooled(mut self, other: LoadResult) -> LoadResult {
        self.requests += other.requests;
        self.errors += other.errors;
        self.bytes += other.bytes;
        self.elapsed += other.elapsed;
        self.latencies_us.extend(other.latencies_us);
        self.latencies_us.sort_unstable();
        self.first_error = self.first_error.or(other.first_error);
        self
    }
}

/// `p`-th percentile (nearest rank) of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

/// Runs `op(i)` (`i` = 0, 1, 2, ... across all tasks) from `concurrency` tasks until `duration`
/// has passed. `op` returns the bytes it moved.
pub async fn closed_loop<F, Fut>(concurrency: usize, duration: Duration, op: F) -> LoadResult
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<u64>> + Send + 'static,
{
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (op, next) = (op.clone(), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut out = LoadResult::default();
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let t0 = Instant::now();
                match op(i).await {
                    Ok(n) => {
                        out.latencies_us.push(t0.elapsed().as_micros() as u64);
                        out.requests += 1;
                        out.bytes += n;
                    }
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            out
        }));
    }
    let mut total = LoadResult::default();
    for t in tasks {
        if let Ok(r) = t.await {
            total.requests += r.requests;
            total.errors += r.errors;
            total.bytes += r.bytes;
            total.latencies_us.extend(r.latencies_us);
            if total.first_error.is_none() {
                total.first_error = r.first_error;
            }
        }
    }
    total.elapsed = start.elapsed();
    total.latencies_us.sort_unstable();
    total
}

/// Runs `op(i)` for `i` in `0..count`, `concurrency` at a time (used for warming and loading).
pub async fn for_each<F, Fut>(count: u64, concurrency: usize, op: F) -> Result<()>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    use futures::stream::{self, StreamExt, TryStreamExt};
    stream::iter(0..count).map(&op).buffer_unordered(concurrency.max(1)).try_collect::<Vec<()>>().await.map(drop)
}

/// One GET of every URL in `uris`, 8 at a time, with the bearer `token` (warms caches).
pub async fn get_each<C: Connect + Clone + Send + Sync + 'static>(
    http: &Http<C>,
    uris: &Arc<Vec<Uri>>,
    token: &str,
) -> Result<()> {
    for_each(uris.len() as u64, 8, |i| {
        let uris = Arc::clone(uris);
        async move { get(http, &uris[i as usize], Some(token)).await.map(drop) }
    })
    .await
}
