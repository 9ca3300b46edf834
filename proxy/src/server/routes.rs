//! The HTTP API: block PUT/GET/HEAD/DELETE, the dirty-key listing, ping, health, metrics and the
//! drain admin call.

use super::errors::ApiError;
use super::gate::{Closed, WritePass};
use super::state::{AppState, FetchResult};
use super::volumes::{AuthError, token_matches};
use crate::cache::{BlockId, CacheError, DirtyWrite, Lookup, WriteOutcome};
use crate::store::{Conditional, ObjectMeta, delete_unless_newer, put_unless_newer};
use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use blockproxy_protocol::{
    self as protocol, CHECKSUM_HEADER, Checksum, DirtyKey, DirtyKeys, DrainStatus, SOURCE_HEADER, StoreObject,
    StoreObjects, VERSION_HEADER, VolumeConfig, VolumeId,
};
use bytes::Bytes;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(protocol::PING_PATH, get(|| async { "pong" }))
        .route(protocol::HEALTHZ_PATH, get(|| async { "ok" }))
        .route(protocol::READYZ_PATH, get(readyz))
        .route(protocol::METRICS_PATH, get(metrics))
        .route(protocol::DRAIN_PATH, get(drain_status).post(start_drain))
        .route("/v1/volumes/{*rest}", any(volume_request))
        .layer(axum::middleware::from_fn(super::linger::linger_on_refusal))
        .with_state(state)
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

fn op_label(method: &Method, listing: Option<Listing>) -> &'static str {
    match (method, listing) {
        (_, Some(Listing::Dirty)) => "list_dirty",
        (_, Some(Listing::Store)) => "list_store",
        (&Method::GET, None) => "get",
        (&Method::HEAD, None) => "head",
        (&Method::PUT, None) => "put",
        (&Method::DELETE, None) => "delete",
        _ => "other",
    }
}

/// Everything under `/v1/volumes/`: validates names from the raw (undecoded) path, authorizes,
/// dispatches, and records metrics.
async fn volume_request(State(s): State<Arc<AppState>>, req: Request) -> Response {
    let started = Instant::now();
    let path = req.uri().path().to_owned();
    let listing = (!path.contains("/blocks/"))
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
    let op = op_label(req.method(), listing);
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
    let path = req.uri().path().to_owned();
    let auth = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Some(listing) = listing {
        let suffix = if listing == Listing::Dirty { "/dirty" } else { "/objects" };
        let volume = path
            .strip_prefix("/v1/volumes/")
            .and_then(|r| r.strip_suffix(suffix))
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such path"))?;
        let volume = VolumeId::parse(volume).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let cfg = authorize(s, &volume, auth.as_deref())?;
        if req.method() != Method::GET {
            return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "use GET"));
        }
        let Query(q) = Query::<ListQuery>::try_from_uri(req.uri()).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let prefix = q.prefix.as_deref().unwrap_or("");
        return match listing {
            Listing::Dirty => Ok(list_dirty(s, &volume, prefix)),
            Listing::Store => list_store(s, &cfg, prefix).await,
        };
    }
    let (volume, key) = match protocol::parse_block_path(&path) {
        Some(Ok(parts)) => parts,
        Some(Err(e)) => return Err(ApiError::bad_request(e.to_string())),
        None => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no such path; blocks live at /v1/volumes/{volume}/blocks/{key}",
            ));
        }
    };
    let cfg = authorize(s, &volume, auth.as_deref())?;
    if key.as_str().len() > cfg.max_key_len() {
        let max = cfg.max_key_len();
        return Err(ApiError::bad_request(format!(
            "key is longer than this volume's {max} bytes (S3's 1024 with its prefix)"
        )));
    }
    let id = BlockId { volume, key };
    let _permit = s.bops.acquire().await.map_err(|_| ApiError::unavailable("shutting down", 5))?;
    match *req.method() {
        Method::PUT => put_block(s, &cfg, id, req).await,
        Method::GET => get_block(s, &cfg, id, req.headers(), true).await,
        Method::HEAD => get_block(s, &cfg, id, req.headers(), false).await,
        Method::DELETE => delete_block(s, &cfg, id, req.headers()).await,
        _ => Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "use GET, HEAD, PUT or DELETE")),
    }
}

#[derive(serde::Deserialize)]
struct ListQuery {
    prefix: Option<String>,
}

fn authorize(s: &AppState, volume: &VolumeId, auth: Option<&str>) -> Result<VolumeConfig, ApiError> {
    s.volumes.authorize(volume, auth).map_err(|e| match e {
        AuthError::UnknownVolume => {
            ApiError::new(StatusCode::NOT_FOUND, format!("volume {volume} is not served by this proxy"))
        }
        AuthError::MissingToken => ApiError::new(StatusCode::UNAUTHORIZED, "missing 'Authorization: Bearer <token>'"),
        AuthError::BadToken => ApiError::new(StatusCode::UNAUTHORIZED, "wrong token for this volume"),
    })
}

fn list_dirty(s: &AppState, volume: &VolumeId, prefix: &str) -> Response {
    let keys = s
        .cache
        .dirty_under(volume, prefix)
        .into_iter()
        .map(|(id, size, version, deleted)| DirtyKey { key: id.key.to_string(), size, deleted, version, etag: None })
        .collect();
    axum::Json(DirtyKeys { keys }).into_response()
}

/// The store's objects under the volume's prefix, keys relative to it.
async fn list_store(s: &AppState, cfg: &VolumeConfig, prefix: &str) -> Result<Response, ApiError> {
    let volume_prefix = cfg.prefix.trim_matches('/');
    let (store_prefix, strip) = if volume_prefix.is_empty() {
        (prefix.to_owned(), 0)
    } else {
        (format!("{volume_prefix}/{prefix}"), volume_prefix.len() + 1)
    };
    s.metrics.store_requests_total.with_label_values(&["list"]).inc();
    let listed = s
        .store
        .list(&cfg.bucket, &store_prefix)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("listing the store failed: {e}")))?;
    let objects = listed
        .into_iter()
        .filter(|o| o.key.len() > strip && !crate::store::is_tombstone_key(&o.key))
        .map(|o| StoreObject { key: o.key[strip..].to_owned(), size: o.size, etag: None, last_modified_ms: None })
        .collect();
    Ok(axum::Json(StoreObjects { objects }).into_response())
}

/// Lets a write through the gate, or refuses it while draining or shutting down.
fn enter_gate(s: &AppState) -> Result<WritePass, ApiError> {
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
fn write_version(s: &AppState, volume: &VolumeId, headers: &HeaderMap) -> Result<u64, ApiError> {
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
fn superseded(s: &AppState, id: &BlockId, version: u64, current: u64) -> ApiError {
    s.metrics.http_writes_superseded_total.inc();
    tracing::debug!(volume = %id.volume, key = %id.key, version, current, "write superseded by a newer version");
    let mut e = ApiError::new(
        StatusCode::CONFLICT,
        format!("not applied: the block already holds version {current}, newer than this write's {version}"),
    );
    e.version = Some(current);
    e
}

async fn reserve_bytes(s: &AppState, bytes: u64) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
    let permit = s.budget.reserve(bytes).await.map_err(|e| {
        s.metrics.http_backpressure_total.inc();
        ApiError::unavailable(e.to_string(), 1)
    })?;
    s.metrics.http_inflight_bytes.set(s.budget.in_use() as i64);
    Ok(permit)
}

/// Reads a block body: bounded in size (413), in bytes held across requests (503), and in how
/// long it may stall (408).
async fn read_body(s: &AppState, req: Request) -> Result<(Bytes, tokio::sync::SemaphorePermit<'_>), ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("block is larger than --max-block-size ({} bytes)", s.max_block_size),
        )
    };
    if let Some(len) =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
        && len > s.max_block_size
    {
        return Err(too_large());
    }
    let expected =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let permit = reserve_bytes(s, expected.unwrap_or(s.max_block_size)).await?;
    let mut body = http_body_util::Limited::new(req.into_body(), s.max_block_size as usize);
    let mut buf = bytes::BytesMut::with_capacity(expected.unwrap_or(0) as usize);
    loop {
        let frame = match tokio::time::timeout(s.body_idle_timeout, body.frame()).await {
            Err(_) => {
                s.metrics.http_timeouts_total.with_label_values(&["body"]).inc();
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the request body sent nothing for {:?}", s.body_idle_timeout),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
            Ok(Some(Err(e))) => return Err(ApiError::bad_request(format!("reading the body failed: {e}"))),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
    }
    Ok((buf.freeze(), permit))
}

async fn put_block(s: &Arc<AppState>, cfg: &VolumeConfig, id: BlockId, req: Request) -> Result<Response, ApiError> {
    let _pass = enter_gate(s)?;
    let checksum: Checksum = req
        .headers()
        .get(CHECKSUM_HEADER)
        .ok_or_else(|| {
            ApiError::bad_request(format!("missing {CHECKSUM_HEADER} header (crc32c=<hex> or sha256=<hex>)"))
        })?
        .to_str()
        .map_err(|_| ApiError::bad_request(format!("{CHECKSUM_HEADER} is not ASCII")))?
        .parse()
        .map_err(|e: protocol::ChecksumError| ApiError::bad_request(e.to_string()))?;
    let version = write_version(s, &id.volume, req.headers())?;
    let (body, _bytes) = read_body(s, req).await?;
    checksum.verify(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let store_key = cfg.store_key(&id.key);

    if s.write_through {
        let meta = ObjectMeta::for_data(version, &body);
        let done = put_unless_newer(s.store.as_ref(), &cfg.bucket, &store_key, body.clone(), meta, &Default::default())
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("write-through to the store failed: {e}")))?;
        if let Conditional::StoreNewer { store_version } = done {
            // The store holds a newer version: not applied, so never a 2xx.
            return Err(superseded(s, &id, version, store_version));
        }
        s.cache.invalidate(&id);
        let fetch = s.cache.fetch_key(&id);
        s.cache.insert_clean(fetch, &cfg.bucket, &store_key, body.clone(), version).await;
        return Ok(write_ack(version, &body));
    }

    let write = DirtyWrite { id: id.clone(), bucket: cfg.bucket.clone(), store_key, version, data: Some(body.clone()) };
    match s.cache.write_dirty(write).await.map_err(|e| cache_error(s, e))? {
        WriteOutcome::Committed => s.writeback.enqueue(id),
        WriteOutcome::Superseded { current } => return Err(superseded(s, &id, version, current)),
    }
    Ok(write_ack(version, &body))
}

/// A read of a block whose newest acknowledged write could not be flushed and was quarantined.
fn quarantined_block(id: &BlockId) -> ApiError {
    ApiError::internal(format!(
        "the newest write of {}/{} is quarantined on this proxy and the store holds nothing newer; an operator \
         must recover it (README: Recovering quarantined blocks)",
        id.volume, id.key
    ))
}

fn write_ack(version: u64, body: &[u8]) -> Response {
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    h.insert(VERSION_HEADER, HeaderValue::from(version));
    if let Ok(v) = HeaderValue::from_str(&Checksum::crc32c(body).to_string()) {
        h.insert(CHECKSUM_HEADER, v);
    }
    resp
}

fn cache_error(s: &AppState, e: CacheError) -> ApiError {
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
        let write = DirtyWrite { id: id.clone(), bucket: cfg.bucket.clone(), store_key, version, data: None };
        match s.cache.write_dirty(write).await.map_err(|e| cache_error(s, e))? {
            WriteOutcome::Committed => s.writeback.enqueue(id),
            WriteOutcome::Superseded { current } => return Err(superseded(s, &id, version, current)),
        }
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(VERSION_HEADER, HeaderValue::from(version));
    Ok(resp)
}

async fn fetch(s: &Arc<AppState>, cfg: &VolumeConfig, id: &BlockId) -> FetchResult {
    let store = Arc::clone(&s.store);
    let cache = Arc::clone(&s.cache);
    let metrics = Arc::clone(&s.metrics);
    let (bucket, store_key) = (cfg.bucket.clone(), cfg.store_key(&id.key));
    // Keyed by the removal epoch too: a read never joins a fetch older than a delete or overwrite
    // that was acknowledged and flushed before the read started.
    let key = s.cache.fetch_key(id);
    s.fetches
        .run(
            key.clone(),
            move || async move {
                metrics.store_requests_total.with_label_values(&["get"]).inc();
                match store.get(&bucket, &store_key).await {
                    Ok(Some(b)) => {
                        cache.insert_clean(key, &bucket, &store_key, b.data.clone(), b.version).await;
                        Ok(Some(Arc::new(b)))
                    }
                    Ok(None) => Ok(None),
                    Err(e) => Err(Arc::from(e.to_string())),
                }
            },
            |panic| Err(Arc::from(format!("store fetch aborted: {panic}"))),
        )
        .await
}

/// Whether the store still holds `version` of a clean cached block, checked at most once per
/// `--metadata-ttl`: a write acknowledged by another proxy (after a failover) or made behind the
/// cache is seen within that bound once it is in the store (ADR 0002). A changed block is dropped
/// from the cache. While the store cannot answer, the cached copy is served.
async fn still_in_store(s: &AppState, cfg: &VolumeConfig, id: &BlockId, version: u64) -> bool {
    let checked_at = Instant::now();
    s.metrics.store_requests_total.with_label_values(&["head"]).inc();
    let result = match s.store.head(&cfg.bucket, &cfg.store_key(&id.key)).await {
        Ok(Some(o)) if o.version == version => {
            s.cache.mark_validated(id, version, checked_at);
            "current"
        }
        Ok(_) => {
            s.cache.invalidate(id);
            "changed"
        }
        Err(e) => {
            tracing::warn!(volume = %id.volume, key = %id.key, error = %e, "revalidating a cached block failed; serving the cached copy");
            "error"
        }
    };
    s.metrics.cache_revalidations_total.with_label_values(&[result]).inc();
    result != "changed"
}

async fn get_block(
    s: &Arc<AppState>,
    cfg: &VolumeConfig,
    id: BlockId,
    headers: &HeaderMap,
    with_body: bool,
) -> Result<Response, ApiError> {
    let range = headers.get(header::RANGE).map(|v| v.to_str().map(str::to_owned));
    // Hits reserve their size before reading from disk; misses once the fetch says how big.
    let mut reserved = match s.cache.size_of(&id) {
        Some(len) => Some(reserve_bytes(s, len).await?),
        None => None,
    };
    // The checksum of the whole block, verified on the way from disk or from the store.
    let mut lookup = s.cache.read(&id).await.map_err(|e| cache_error(s, e))?;
    if let Lookup::Hit { dirty: false, version, validated, .. } = &lookup
        && validated.is_none_or(|t| t.elapsed() >= cfg.metadata_ttl(s.metadata_ttl))
        && !still_in_store(s, cfg, &id, *version).await
    {
        lookup = Lookup::Miss;
    }
    let (data, version, source, checksum) = match lookup {
        Lookup::Hit { data, version, crc32c, .. } => {
            s.metrics.cache_hits_total.inc();
            (data, version, "cache", Checksum::Crc32c(crc32c))
        }
        Lookup::Deleted => return Err(ApiError::new(StatusCode::NOT_FOUND, "no such block")),
        lookup @ (Lookup::Miss | Lookup::DroppedCorrupt) => {
            if matches!(lookup, Lookup::DroppedCorrupt) {
                s.metrics.cache_corrupt_blocks_total.inc();
            }
            s.metrics.cache_misses_total.inc();
            let quarantined = s.cache.quarantined_version(&id);
            match fetch(s, cfg, &id).await {
                // The newest acknowledged write is quarantined: anything the store has is older.
                Ok(Some(b)) if quarantined.is_some_and(|q| q > b.version) => {
                    return Err(quarantined_block(&id));
                }
                Ok(None) | Err(_) if quarantined.is_some() => return Err(quarantined_block(&id)),
                Ok(Some(b)) => {
                    if reserved.is_none() {
                        reserved = Some(reserve_bytes(s, b.data.len() as u64).await?);
                    }
                    s.clocks.observe(&id.volume, b.version);
                    // The store verified the writer's checksum (or computed it for a foreign object).
                    (b.data.clone(), b.version, "store", Checksum::Crc32c(b.crc32c))
                }
                Ok(None) => return Err(ApiError::new(StatusCode::NOT_FOUND, "no such block")),
                Err(e) => {
                    return Err(ApiError::new(StatusCode::BAD_GATEWAY, format!("fetching from the store failed: {e}")));
                }
            }
        }
    };
    let total = data.len() as u64;
    let (status, body, content_range) = match range {
        None => (StatusCode::OK, data.clone(), None),
        Some(Err(_)) => return Err(ApiError::bad_request("Range header is not ASCII")),
        Some(Ok(r)) => {
            let parsed = http_range_header::parse_range_header(&r)
                .map_err(|e| ApiError::bad_request(format!("malformed Range header {r:?}: {e}")))?;
            let ranges = parsed.validate(total).map_err(|e| {
                ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    format!("Range {r:?} does not fit a {total}-byte block: {e}"),
                )
            })?;
            let [range] = ranges.as_slice() else {
                return Err(ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, "only a single byte range is supported"));
            };
            let (start, end) = (*range.start(), *range.end());
            (
                StatusCode::PARTIAL_CONTENT,
                data.slice(start as usize..=end as usize),
                Some(format!("bytes {start}-{end}/{total}")),
            )
        }
    };
    s.metrics.cache_served_bytes_total.with_label_values(&[source]).inc_by(body.len() as u64);
    let mut resp = Response::new(if with_body { Body::from(body.clone()) } else { Body::empty() });
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(VERSION_HEADER, HeaderValue::from(version));
    h.insert(SOURCE_HEADER, HeaderValue::from_static(source));
    if let Ok(v) = HeaderValue::from_str(&checksum.to_string()) {
        h.insert(CHECKSUM_HEADER, v);
    }
    if let Some(cr) = content_range.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(header::CONTENT_RANGE, cr);
    }
    // The body is a reference-counted copy of the block; the reservation covers it until the
    // answer is built (hyper then writes it out).
    drop(reserved);
    Ok(resp)
}
