//! The HTTP API: object PUT/DELETE (reads in [`super::reads`], multipart staging in
//! [`super::uploads`]), the listings, ping, health, metrics and the drain admin call.

use super::block_body::{Declared, read_body};
use super::errors::ApiError;
use super::gate::{Closed, WritePass};
use super::object::{ObjectHeaders, attrs_from_headers, crc32c_value, names, part_md5s, parts_from_headers};
use super::reads::{self, BlockQuery};
use super::sendfile::FileSends;
use super::state::AppState;
use super::volumes::{AuthError, token_matches};
use crate::cache::{BlockId, CacheError, DirtyWrite, WriteOutcome};
use crate::protocol::crc;
use crate::store::{Conditional, ObjectMeta, delete_unless_newer, put_unless_newer};
use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use blockproxy_protocol::{
    self as protocol, DirtyKey, DirtyKeys, DrainStatus, REFUSAL_TOKEN, REFUSAL_UNKNOWN_VOLUME, StoreObject,
    StoreObjects, VERSION_HEADER, VolumeConfig, VolumeId,
};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// The proxy's HTTP API. Every data request (all of `/v1/volumes/`) goes straight to
/// [`volume_request`], which parses its own path; the few other endpoints (ping, health, metrics,
/// drain) go through an axum [`Router`]. A hit then pays for no route matching and no stack of
/// boxed services, which were about 8% of a proxy's CPU under 64 KiB hits (ADR 0023).
#[derive(Clone)]
pub struct Api {
    state: Arc<AppState>,
    others: Router,
}

impl Api {
    pub fn new(state: Arc<AppState>) -> Self {
        let others = Router::new()
            .route(protocol::PING_PATH, get(|| async { "pong" }))
            .route(protocol::HEALTHZ_PATH, get(|| async { "ok" }))
            .route(protocol::READYZ_PATH, get(readyz))
            .route(protocol::METRICS_PATH, get(metrics))
            .route(protocol::DRAIN_PATH, get(drain_status).post(start_drain))
            .layer(axum::middleware::from_fn(super::linger::linger_layer))
            .with_state(Arc::clone(&state));
        Self { state, others }
    }
}

/// Where the data API lives.
const VOLUMES_PREFIX: &str = "/v1/volumes/";

impl<B> tower::Service<axum::http::Request<B>> for Api
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response, std::convert::Infallible>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        if req.uri().path().starts_with(VOLUMES_PREFIX) {
            let s = Arc::clone(&self.state);
            let req = req.map(axum::body::Body::new);
            Box::pin(async move { Ok(super::linger::linger_on_refusal(req, |req| volume_request(s, req)).await) })
        } else {
            Box::pin(tower::ServiceExt::oneshot(self.others.clone(), req))
        }
    }
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    match s.gate.closed() {
        None => "ready".into_response(),
        Some(Closed::Draining) => (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response(),
        Some(Closed::ShuttingDown) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response(),
    }
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    s.metrics.set_usage(s.cache.usage(), s.cache.oldest_dirty_age());
    s.metrics.writeback_quarantined_blocks.set(s.cache.quarantined_blocks() as i64);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

fn drain_report(s: &AppState) -> DrainStatus {
    // Read the writes inside the gate before the dirty count: a write that leaves the gate has
    // already made its block dirty, so it is seen in one figure or the other, never in neither.
    let draining = s.gate.closed().is_some();
    let in_flight_writes = s.gate.inside();
    let u = s.cache.usage();
    let quarantined_blocks = s.cache.quarantined_blocks();
    DrainStatus {
        draining,
        in_flight_writes,
        dirty_blocks: u.dirty_blocks,
        dirty_bytes: u.dirty_bytes,
        // Quarantined blocks are acknowledged writes that exist only on this disk: a drain that
        // reported done would let the operator delete the disk with them.
        done: draining && in_flight_writes == 0 && u.dirty_blocks == 0 && quarantined_blocks == 0,
        quarantined_blocks,
        cache_bytes: u.used_bytes + u.staged_bytes,
        quota_bytes: u.quota,
        last_flush_error: s.writeback.last_error(),
    }
}

fn check_admin(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &s.admin_token else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "the admin API is disabled: start the proxy with --admin-token-file",
        ));
    };
    if token_matches(expected, headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong admin bearer token"))
    }
}

async fn drain_status(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_admin(&s, &headers)?;
    Ok(axum::Json(drain_report(&s)).into_response())
}

async fn start_drain(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_admin(&s, &headers)?;
    if s.gate.close(Closed::Draining) {
        let u = s.cache.usage();
        tracing::info!(
            in_flight_writes = s.gate.inside(),
            dirty_blocks = u.dirty_blocks,
            dirty_bytes = u.dirty_bytes,
            "drain requested: refusing writes, flushing"
        );
    }
    Ok((StatusCode::ACCEPTED, axum::Json(drain_report(&s))).into_response())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listing {
    /// Unflushed keys of this proxy.
    Dirty,
    /// The store's objects under the volume.
    Store,
}

fn op_label(method: &Method, listing: Option<Listing>, path: &str, query: &str) -> &'static str {
    if path.contains(UPLOADS_INFIX) {
        return "upload";
    }
    match (method, listing) {
        (_, Some(Listing::Dirty)) => "list_dirty",
        (_, Some(Listing::Store)) => "list_store",
        (&Method::GET | &Method::HEAD, None) if query.contains("block=") => "get_block",
        (&Method::GET, None) => "get",
        (&Method::HEAD, None) => "head",
        (&Method::PUT, None) => "put",
        (&Method::DELETE, None) => "delete",
        _ => "other",
    }
}

/// Everything under `/v1/volumes/`: validates names from the raw (undecoded) path, authorizes,
/// dispatches, and records metrics.
async fn volume_request(s: Arc<AppState>, req: Request) -> Response {
    let started = Instant::now();
    let path = req.uri().path().to_owned();
    let listing = (!path.contains("/blocks/") && !path.contains(UPLOADS_INFIX))
        .then(|| {
            if path.ends_with("/dirty") {
                Some(Listing::Dirty)
            } else if path.ends_with("/objects") {
                Some(Listing::Store)
            } else {
                None
            }
        })
        .flatten();
    let op = op_label(req.method(), listing, &path, req.uri().query().unwrap_or(""));
    let span = tracing::debug_span!("request", op, path = %path);
    let resp = match dispatch(&s, req, listing).instrument(span.clone()).await {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_server_error() {
                span.in_scope(|| tracing::warn!(status = %e.status, error = %e.message, "request failed"));
            }
            e.into_response()
        }
    };
    s.metrics.http_requests_total.with_label_values(&[op, resp.status().as_str()]).inc();
    s.metrics.http_request_duration_seconds.with_label_values(&[op]).observe(started.elapsed().as_secs_f64());
    resp
}

async fn dispatch(s: &Arc<AppState>, req: Request, listing: Option<Listing>) -> Result<Response, ApiError> {
    let path = req.uri().path();
    let auth = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Some(listing) = listing {
        let suffix = if listing == Listing::Dirty { "/dirty" } else { "/objects" };
        let volume = path
            .strip_prefix("/v1/volumes/")
            .and_then(|r| r.strip_suffix(suffix))
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such path"))?;
        let volume = VolumeId::parse(volume).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let cfg = authorize(s, &volume, auth)?;
        if req.method() != Method::GET {
            return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "use GET"));
        }
        let Query(q) = Query::<ListQuery>::try_from_uri(req.uri()).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let prefix = q.prefix.as_deref().unwrap_or("");
        return match listing {
            Listing::Dirty => Ok(list_dirty(s, &volume, prefix)),
            Listing::Store => Box::pin(list_store(s, &cfg, prefix, &q)).await,
        };
    }
    let uploads = path.contains(UPLOADS_INFIX);
    let parsed = if uploads { protocol::parse_upload_path(path) } else { protocol::parse_block_path(path) };
    let (volume, key) = match parsed {
        Some(Ok(parts)) => parts,
        Some(Err(e)) => return Err(ApiError::bad_request(e.to_string())),
        None => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no such path; blocks live at /v1/volumes/{volume}/blocks/{key}",
            ));
        }
    };
    let cfg = authorize(s, &volume, auth)?;
    if key.as_str().len() > cfg.max_key_len() {
        let max = cfg.max_key_len();
        return Err(ApiError::bad_request(format!(
            "key is longer than this volume's {max} bytes (S3's 1024 with its prefix)"
        )));
    }
    let id = BlockId::object(volume, key);
    let _permit = s.bops.acquire().await.map_err(|_| ApiError::unavailable("shutting down", 5))?;
    // Writes and deletes are boxed, so that a read's future is only as large as its own path.
    if uploads {
        return Box::pin(super::uploads::handle(s, &cfg, id, req)).await;
    }
    match *req.method() {
        Method::PUT => Box::pin(put_block(s, &cfg, id, req)).await,
        Method::GET | Method::HEAD => {
            let with_body = req.method() == Method::GET;
            let Query(q) =
                Query::<BlockQuery>::try_from_uri(req.uri()).map_err(|e| ApiError::bad_request(e.to_string()))?;
            let sends = req.extensions().get::<FileSends>();
            if q.block.is_some() {
                reads::get_stripe(s, &cfg, id, &q, req.headers(), with_body, sends).await
            } else {
                reads::get_object(s, &cfg, id, req.headers(), with_body, sends).await
            }
        }
        Method::DELETE => Box::pin(delete_block(s, &cfg, id, req.headers())).await,
        _ => Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "use GET, HEAD, PUT or DELETE")),
    }
}

#[derive(serde::Deserialize)]
struct ListQuery {
    prefix: Option<String>,
    #[serde(rename = "startAfter")]
    start_after: Option<String>,
    #[serde(rename = "maxKeys")]
    max_keys: Option<u32>,
}

/// Marks an upload path: `/v1/volumes/{volume}/uploads/{key}`.
const UPLOADS_INFIX: &str = "/uploads/";

fn authorize(s: &AppState, volume: &VolumeId, auth: Option<&str>) -> Result<Arc<VolumeConfig>, ApiError> {
    s.volumes.authorize(volume, auth).map_err(|e| match e {
        AuthError::UnknownVolume => ApiError::refused(
            StatusCode::NOT_FOUND,
            REFUSAL_UNKNOWN_VOLUME,
            format!("volume {volume} is not served by this proxy"),
        ),
        AuthError::MissingToken => {
            ApiError::refused(StatusCode::UNAUTHORIZED, REFUSAL_TOKEN, "missing 'Authorization: Bearer <token>'")
        }
        AuthError::BadToken => {
            ApiError::refused(StatusCode::UNAUTHORIZED, REFUSAL_TOKEN, "wrong token for this volume")
        }
    })
}

fn list_dirty(s: &AppState, volume: &VolumeId, prefix: &str) -> Response {
    let keys = s
        .cache
        .dirty_under(volume, prefix)
        .into_iter()
        .map(|(id, e)| DirtyKey {
            key: id.key.to_string(),
            size: e.data_len,
            deleted: e.is_tombstone(),
            version: e.version,
            etag: (!e.etag.is_empty()).then(|| super::object::quote(&e.etag)),
            // Versions are clock readings in nanoseconds.
            last_modified_ms: Some(e.version / 1_000_000),
        })
        .collect();
    axum::Json(DirtyKeys { keys }).into_response()
}

/// One page of the store's objects under the volume's prefix, keys relative to it.
async fn list_store(s: &AppState, cfg: &VolumeConfig, prefix: &str, q: &ListQuery) -> Result<Response, ApiError> {
    let volume_prefix = cfg.prefix.trim_matches('/');
    let (store_prefix, strip) = if volume_prefix.is_empty() {
        (prefix.to_owned(), 0)
    } else {
        (format!("{volume_prefix}/{prefix}"), volume_prefix.len() + 1)
    };
    s.metrics.store_requests_total.with_label_values(&["list"]).inc();
    // startAfter is relative to the volume, as the keys listed are.
    let start_after =
        q.start_after.as_deref().filter(|k| !k.is_empty()).map(|k| format!("{}{k}", &store_prefix[..strip]));
    let max_keys = q.max_keys.unwrap_or(crate::store::LIST_PAGE_SIZE).clamp(1, crate::store::LIST_PAGE_SIZE);
    let page = s
        .store
        .list_page(&cfg.bucket, &store_prefix, start_after.as_deref(), max_keys)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("listing the store failed: {e}")))?;
    let objects = page
        .objects
        .into_iter()
        .filter(|o| o.key.len() > strip && !crate::store::is_tombstone_key(&o.key))
        .map(|o| StoreObject {
            key: o.key[strip..].to_owned(),
            size: o.size,
            etag: Some(o.etag),
            last_modified_ms: o.last_modified.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_millis() as u64),
        })
        .collect();
    let next_start_after = page.next_start_after.and_then(|k| k.get(strip..).map(str::to_owned));
    Ok(axum::Json(StoreObjects { objects, next_start_after }).into_response())
}

/// Lets a write through the gate, or refuses it while draining or shutting down.
pub(super) fn enter_gate(s: &AppState) -> Result<WritePass, ApiError> {
    s.gate.enter().map_err(|why| {
        let what = match why {
            Closed::Draining => "this proxy is draining",
            Closed::ShuttingDown => "this proxy is shutting down",
        };
        ApiError::unavailable(format!("{what}; write to another proxy of the group, or retry"), 5)
    })
}

/// The version of a write: the volume's clock, raised to the client's version when it sent one
/// (see `clock`).
pub(super) fn write_version(s: &AppState, volume: &VolumeId, headers: &HeaderMap) -> Result<u64, ApiError> {
    let client =
        match headers.get(VERSION_HEADER) {
            None => None,
            Some(v) => {
                Some(v.to_str().ok().and_then(|v| v.trim().parse().ok()).filter(|v: &u64| *v > 0).ok_or_else(|| {
                    ApiError::bad_request(format!("{VERSION_HEADER} must be a positive decimal integer"))
                })?)
            }
        };
    // A read repair keeps exactly the version of the copy it carries: stamping it anew would make
    // an old value look newer than a write made since.
    let stamped = if headers.contains_key(protocol::REPAIR_HEADER) {
        let v = client
            .ok_or_else(|| ApiError::bad_request(format!("{} needs {VERSION_HEADER}", protocol::REPAIR_HEADER)))?;
        s.clocks.admit_exact(volume, v)
    } else {
        s.clocks.stamp(volume, client)
    };
    stamped.map_err(|e| match e {
        e @ super::clock::ClockError::TooFarAhead { .. } => {
            s.metrics.http_versions_refused_total.inc();
            ApiError::bad_request(e.to_string())
        }
        e => ApiError::internal(e.to_string()),
    })
}

/// The answer to a write that a newer one of the same block overtook: it was not applied, so it
/// must not look like a success. The client library retries with a newer version.
pub(super) fn superseded(s: &AppState, id: &BlockId, version: u64, current: u64) -> ApiError {
    s.metrics.http_writes_superseded_total.inc();
    tracing::debug!(volume = %id.volume, key = %id.key, version, current, "write superseded by a newer version");
    let mut e = ApiError::new(
        StatusCode::CONFLICT,
        format!("not applied: the block already holds version {current}, newer than this write's {version}"),
    );
    e.version = Some(current);
    e
}

pub(super) async fn reserve_bytes(s: &AppState, bytes: u64) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
    let permit = s.budget.reserve(bytes).await.map_err(|e| {
        s.metrics.http_backpressure_total.inc();
        ApiError::unavailable(e.to_string(), 1)
    })?;
    s.metrics.http_inflight_bytes.set(s.budget.in_use() as i64);
    Ok(permit)
}

async fn put_block(s: &Arc<AppState>, cfg: &VolumeConfig, id: BlockId, req: Request) -> Result<Response, ApiError> {
    let _pass = enter_gate(s)?;
    let declared = Declared::from_headers(req.headers())?;
    let version = write_version(s, &id.volume, req.headers())?;
    let attrs = attrs_from_headers(req.headers())?;
    let mut part_headers = HeaderMap::new();
    if let Some(p) = req.headers().get(protocol::PARTS_HEADER) {
        part_headers.insert(protocol::PARTS_HEADER, p.clone());
    }
    // One part (no parts header): its MD5 is the ETag, hashed while the body arrives.
    let single_part = part_headers.is_empty();
    let read = read_body(s, req, single_part).await?;
    let checksum = declared.resolve(read.trailers.as_ref())?;
    let body = read.data.clone();
    // One pass over the body for its CRC32C: it checks the declared checksum, comes back in the
    // ack and, for a one-part write (the common one), goes in the block's header.
    let crc = crc::crc32c(&body);
    checksum.verify_with_crc32c(&body, crc).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let parts = parts_from_headers(&part_headers, body.len() as u64)?;
    let store_key = cfg.store_key(&id.key);
    s.meta.forget(&id);

    if s.write_through {
        if parts.len() > 1 {
            return Err(ApiError::bad_request(format!(
                "{} is not supported with --no-writeback: write the object in one part",
                protocol::PARTS_HEADER
            )));
        }
        let md5 = match read.md5 {
            Some(md5) => md5.finish().await.map_err(|e| ApiError::internal(format!("hashing the body failed: {e}")))?,
            None => part_md5s(&body, &parts)[0],
        };
        let meta = ObjectMeta::for_data(version, &body);
        let done = put_unless_newer(s.store.as_ref(), &cfg.bucket, &store_key, body.clone(), meta, &attrs)
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("write-through to the store failed: {e}")))?;
        if let Conditional::StoreNewer { store_version } = done {
            // The store holds a newer version: not applied, so never a 2xx.
            return Err(superseded(s, &id, version, store_version));
        }
        // Not cached: the store's own ETag and time are learnt by the next read (one HEAD).
        s.cache.invalidate(&id);
        return Ok(write_ack(version, body.len(), crc, &protocol::multipart_etag(&[md5])));
    }

    let single = parts.len() <= 1;
    let mut write = DirtyWrite {
        id: id.clone(),
        bucket: cfg.bucket.clone(),
        store_key,
        version,
        data: Some(body.clone()),
        etag: String::new(),
        attrs,
        parts: if single { Vec::new() } else { parts.clone() },
    };
    let (outcome, etag) = match read.md5 {
        // One part: its MD5, the ETag, may still be hashing; the cache writes the data meanwhile.
        Some(md5) => {
            let (outcome, md5) =
                s.cache.write_dirty_hashing(write, md5.finish(), crc).await.map_err(|e| cache_error(s, e))?;
            (outcome, protocol::multipart_etag(&[md5]))
        }
        None => {
            write.etag = protocol::multipart_etag(&part_md5s(&body, &parts));
            let etag = write.etag.clone();
            (s.cache.write_dirty(write).await.map_err(|e| cache_error(s, e))?, etag)
        }
    };
    match outcome {
        WriteOutcome::Committed => s.writeback.enqueue(id),
        WriteOutcome::Superseded { current } => return Err(superseded(s, &id, version, current)),
    }
    Ok(write_ack(version, body.len(), crc, &etag))
}

/// The answer to a write of `len` bytes whose CRC32C is `crc32c`.
fn write_ack(version: u64, len: usize, crc32c: u32, etag: &str) -> Response {
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    let no_attrs = protocol::ObjectAttrs::default();
    ObjectHeaders { etag, modified_ns: version, size: len as u64, store_etag: None, attrs: &no_attrs }.apply(h);
    h.insert(names::VERSION, HeaderValue::from(version));
    h.insert(names::CHECKSUM, crc32c_value(crc32c));
    resp
}

pub(super) fn cache_error(s: &AppState, e: CacheError) -> ApiError {
    match e {
        CacheError::DirtyQuota | CacheError::NoSpace | CacheError::DiskFull { .. } => {
            s.metrics.http_backpressure_total.inc();
            ApiError::unavailable(e.to_string(), 1)
        }
        other => ApiError::internal(other.to_string()),
    }
}

async fn delete_block(
    s: &Arc<AppState>,
    cfg: &VolumeConfig,
    id: BlockId,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let _pass = enter_gate(s)?;
    let version = write_version(s, &id.volume, headers)?;
    let store_key = cfg.store_key(&id.key);
    if s.write_through {
        let done = delete_unless_newer(s.store.as_ref(), &cfg.bucket, &store_key, version)
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("delete in the store failed: {e}")))?;
        if let Conditional::StoreNewer { store_version } = done {
            // The store holds a newer version: not applied, so never a 2xx.
            return Err(superseded(s, &id, version, store_version));
        }
        s.cache.invalidate(&id);
    } else {
        let write = DirtyWrite {
            id: id.clone(),
            bucket: cfg.bucket.clone(),
            store_key,
            version,
            data: None,
            etag: String::new(),
            attrs: Default::default(),
            parts: Vec::new(),
        };
        match s.cache.write_dirty(write).await.map_err(|e| cache_error(s, e))? {
            WriteOutcome::Committed => s.writeback.enqueue(id),
            WriteOutcome::Superseded { current } => return Err(superseded(s, &id, version, current)),
        }
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(names::VERSION, HeaderValue::from(version));
    Ok(resp)
}
