//! Reads (ADR 0004): `GET`/`HEAD blocks/{key}` at the object's home, answered with the version's
//! identity and attributes, and block reads `?block=&blockSize=` pinned to the store object's ETag.
//!
//! Memory stays bounded whatever the object's size: a cached object larger than
//! `--max-block-size` is streamed from its open file in [`CHUNK`]-byte reads (the CRC32C covering
//! the whole object is verified by the flush and by whole reads up to the block size; the client
//! checks a whole read against it). A range of a clean file is checked first, through the pieces
//! around it and a chunk-sized buffer, against their sums (ADR 0025). A clean object not cached
//! here and larger than one block is not fetched whole: a GET of it answers `400` saying to read
//! it in blocks, unless it asks for a range of at most one block, which is read from the store
//! pinned to the object's ETag. A cached block of such an object is served from its open file too
//! (ADR 0020): whole, or a part's bytes.

use super::errors::ApiError;
use super::object::{ObjectHeaders, crc32c_value, names, quote, unquote};
use super::routes::{cache_error, reserve_bytes};
use super::sendfile::{FileSends, STAND_IN_MAX};
use super::state::AppState;
use crate::cache::buffers::BufferPool;
use crate::cache::held::ReplyHeaders;
use crate::cache::{BlockId, BlockSum, CacheError, CheckedRange, FetchedMeta, Lookup, OpenBlock, Opened, Stripe};
use crate::protocol::crc;
use crate::store::{ErrorClass, ObjectInfo, SmallObject, StoreError};
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use blockproxy_protocol::{MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, ObjectAttrs, VolumeConfig};
use bytes::Bytes;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

/// Bytes read from disk per step when streaming a file.
const CHUNK: u64 = crate::cache::INLINE_READ_MAX;

/// The query of a block read.
#[derive(Debug, Default, serde::Deserialize)]
pub struct BlockQuery {
    pub block: Option<u64>,
    #[serde(rename = "blockSize")]
    pub block_size: Option<u64>,
}

/// How long this volume's clean objects are trusted before the store is asked again.
pub fn metadata_ttl(s: &AppState, cfg: &VolumeConfig) -> Duration {
    cfg.metadata_ttl(s.metadata_ttl)
}

/// The requested byte range of an object of `total` bytes: `None` for all of it.
fn requested_range(headers: &HeaderMap, total: u64) -> Result<Option<Range<u64>>, ApiError> {
    let Some(r) = headers.get(header::RANGE) else { return Ok(None) };
    let r = r.to_str().map_err(|_| ApiError::bad_request("Range header is not ASCII"))?;
    let parsed = http_range_header::parse_range_header(r)
        .map_err(|e| ApiError::bad_request(format!("malformed Range header {r:?}: {e}")))?;
    let ranges = parsed.validate(total).map_err(|e| {
        ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, format!("Range {r:?} does not fit a {total}-byte object: {e}"))
    })?;
    let [range] = ranges.as_slice() else {
        return Err(ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, "only a single byte range is supported"));
    };
    Ok(Some(*range.start()..*range.end() + 1))
}

/// Everything an answer says besides its body.
struct Answer<'a> {
    version: u64,
    source: &'static str,
    crc32c: Option<u32>,
    object: ObjectHeaders<'a>,
    /// The bytes of the object this answer carries, when not all of it.
    range: Option<Range<u64>>,
}

fn respond(a: Answer<'_>, body: Option<Body>, len: u64) -> Response {
    let mut h = version_headers(&a);
    add_answer_headers(&mut h, &a, len);
    response(h, &a, body)
}

fn response(headers: HeaderMap, a: &Answer<'_>, body: Option<Body>) -> Response {
    let mut resp = Response::new(body.unwrap_or_else(Body::empty));
    *resp.status_mut() = if a.range.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
    *resp.headers_mut() = headers;
    resp
}

/// The headers of an answer that follow from the version it carries alone.
fn version_headers(a: &Answer<'_>) -> HeaderMap {
    // Room for these, a few attributes and what `add_answer_headers` adds, so that the map
    // seldom grows.
    let mut h = HeaderMap::with_capacity(16);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    ObjectHeaders { store_etag: None, ..a.object }.apply(&mut h);
    h.insert(names::VERSION, HeaderValue::from(a.version));
    h.insert(names::SOURCE, HeaderValue::from_static(a.source));
    if let Some(crc) = a.crc32c {
        h.insert(names::CHECKSUM, crc32c_value(crc));
    }
    h
}

/// Adds to `h` (or replaces in it) what the answer `a` of `len` bytes says beyond its version:
/// its length and range, and the store's ETag when the store is known to hold it.
fn add_answer_headers(h: &mut HeaderMap, a: &Answer<'_>, len: u64) {
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    match a.object.store_etag.filter(|e| !e.is_empty()).and_then(super::object::etag_value) {
        Some(v) => h.insert(names::STORE_ETAG, v),
        None => h.remove(names::STORE_ETAG),
    };
    if let Some(r) = &a.range
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{}/{}", r.start, r.end - 1, a.object.size))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
}

/// The answer `a` from a held file: the headers of its whole answer are made on its first hit
/// and copied on the next ones (ADR 0023), unless this answer differs from it (a range, or a
/// store ETag learnt since).
fn respond_held(ob: &OpenBlock, a: Answer<'_>, body: Option<Body>, len: u64) -> Response {
    let store_etag = a.object.store_etag;
    let memo = ob.reply_headers().get_or_init(|| {
        let whole = Answer { range: None, ..a };
        let mut headers = version_headers(&whole);
        add_answer_headers(&mut headers, &whole, whole.object.size);
        ReplyHeaders { headers, store_etag: store_etag.map(str::to_owned) }
    });
    let mut h = memo.headers.clone();
    if a.range.is_some() || memo.store_etag.as_deref() != store_etag {
        add_answer_headers(&mut h, &a, len);
    }
    response(h, &a, body)
}

/// Streams `range` of an open block file. On a plain HTTP/1 connection (`sends`), as stand-ins
/// its writer sends from the file with `sendfile` (ADR 0012). Otherwise in [`CHUNK`]-byte reads,
/// each on the task that polls the body, as small hits are read (see
/// [`crate::cache::INLINE_READ_MAX`]): hyper asks for the next chunk only while its write buffer
/// has room (about 400 KiB), so a response holds about three chunks in memory, and no read waits
/// on the blocking pool.
fn file_body(
    buffers: &Arc<BufferPool>,
    file: Arc<std::fs::File>,
    data_offset: u64,
    range: Range<u64>,
    sends: Option<&FileSends>,
) -> Body {
    use futures::StreamExt;
    use std::os::unix::fs::FileExt;
    if let Some(sends) = sends {
        let sends = sends.clone();
        let chunks = futures::stream::iter((range.start..range.end).step_by(STAND_IN_MAX)).map(move |at| {
            let len = (range.end - at).min(STAND_IN_MAX as u64) as usize;
            Ok::<_, std::convert::Infallible>(sends.chunk(&file, data_offset + at, len))
        });
        return Body::from_stream(chunks);
    }
    let buffers = Arc::clone(buffers);
    let chunks = futures::stream::iter((range.start..range.end).step_by(CHUNK as usize)).map(move |at| {
        let len = (range.end - at).min(CHUNK) as usize;
        buffers.read(len, |buf| file.read_exact_at(buf, data_offset + at))
    });
    Body::from_stream(chunks)
}

/// The CRC32C of `len` bytes of `file` from `offset`, read in [`CHUNK`] pieces on the blocking
/// pool. Gives the file back for serving.
async fn checksum_file(file: Arc<std::fs::File>, offset: u64, len: u64) -> Result<(Arc<std::fs::File>, u32), ApiError> {
    tokio::task::spawn_blocking(move || {
        let crc = crate::cache::disk::data_crc32c(&file, offset, len, &mut vec![0u8; CHUNK as usize], |_| {})?;
        Ok::<_, std::io::Error>((file, crc))
    })
    .await
    .map_err(|e| cache_read_failed(&e))?
    .map_err(|e| cache_read_failed(&e))
}

/// How large a block file [`Cache::open_block`](crate::cache::Cache::open_block) reads whole
/// with its header: small ones, which a GET serves from memory anyway; none when a GET's hit
/// leaves by sendfile (`sends`), whose data is read only to verify it.
fn read_whole(s: &AppState, with_body: bool, sends: Option<&FileSends>) -> u64 {
    if with_body && sends.is_none() { crate::cache::INLINE_READ_MAX.min(s.max_block_size) } else { 0 }
}

fn cache_read_failed(e: &dyn std::fmt::Display) -> ApiError {
    ApiError::internal(format!("reading the cache failed: {e}"))
}

/// Whether the store still holds `version` of a clean cached object, checked at most once per
/// metadata TTL (ADR 0002): a changed object is dropped from the cache. While the store cannot
/// answer, the cached copy is served.
async fn still_in_store(s: &AppState, cfg: &VolumeConfig, id: &BlockId, version: u64, etag: &str) -> bool {
    let checked_at = Instant::now();
    s.metrics.store_requests_total.with_label_values(&["head"]).inc();
    let result = match s.store.head(&cfg.bucket, &cfg.store_key(&id.key)).await {
        // Objects of other tools carry no version: their ETag says whether they changed.
        Ok(Some(o)) if o.version == version && (version != 0 || unquote(&o.etag) == etag) => {
            s.cache.mark_validated(id, version, checked_at, unquote(&o.etag));
            s.meta.put(id, o);
            "current"
        }
        Ok(_) => {
            s.cache.invalidate(id);
            s.meta.forget(id);
            "changed"
        }
        Err(e) => {
            tracing::warn!(volume = %id.volume, key = %id.key, error = %e, "revalidating a cached object failed; serving the cached copy");
            "error"
        }
    };
    s.metrics.cache_revalidations_total.with_label_values(&[result]).inc();
    result != "changed"
}

/// Whether a clean cached block may be served without asking the store first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freshness {
    Fresh,
    /// Still within its TTL, but near its end: serve it, and revalidate in the background, so
    /// that a block read steadily is revalidated before it expires and no read waits on the
    /// store (the WAN) for it. The TTL's bound (ADR 0002) is unchanged.
    RefreshAhead,
    /// Past its TTL (or never validated): the store is asked before it is served.
    Stale,
}

/// Revalidation starts ahead once this share of the TTL has passed: late enough that the
/// store sees few more HEADs than with inline revalidation (one per 3/4 TTL instead of one per
/// TTL for a block read steadily), early enough that it is done before the TTL ends.
const REFRESH_AHEAD_AT: (u32, u32) = (3, 4);

/// `validated`: when the store last confirmed the block, `None` if never.
fn freshness(validated: Option<Instant>, ttl: Duration) -> Freshness {
    let Some(at) = validated else { return Freshness::Stale };
    let age = at.elapsed();
    if age >= ttl {
        Freshness::Stale
    } else if age >= ttl * REFRESH_AHEAD_AT.0 / REFRESH_AHEAD_AT.1 {
        Freshness::RefreshAhead
    } else {
        Freshness::Fresh
    }
}

/// Starts [`still_in_store`] for a block unless one is already running for it.
fn revalidate_in_background(s: &Arc<AppState>, cfg: &VolumeConfig, id: &BlockId, version: u64, etag: &str) {
    let (state, cfg, block, etag) = (Arc::clone(s), cfg.clone(), id.clone(), etag.to_owned());
    s.revalidations.start(
        id.clone(),
        move || async move {
            still_in_store(&state, &cfg, &block, version, &etag).await;
        },
        |e| tracing::warn!(error = %e, "a background revalidation failed"),
    );
}

/// A read of an object whose newest acknowledged write is quarantined here.
fn quarantined_block(id: &BlockId) -> ApiError {
    ApiError::internal(format!(
        "the newest write of {}/{} is quarantined on this proxy and the store holds nothing newer; an operator \
         must recover it (README: Recovering quarantined blocks)",
        id.volume, id.key
    ))
}

/// `GET`/`HEAD blocks/{key}` (without `?block=`): the object at its home.
pub async fn get_object(
    s: &Arc<AppState>,
    cfg: &VolumeConfig,
    id: BlockId,
    headers: &HeaderMap,
    with_body: bool,
    sends: Option<&FileSends>,
) -> Result<Response, ApiError> {
    let whole = read_whole(s, with_body, sends);
    match s.cache.open_block(&id, whole).await.map_err(|e| cache_error(s, e))? {
        Opened::Deleted => return Err(ApiError::new(StatusCode::NOT_FOUND, "no such object")),
        Opened::Block(ob) => {
            let freshness = if ob.dirty {
                Freshness::Fresh
            } else {
                freshness(ob.validated.filter(|_| ob.store_etag.is_some()), metadata_ttl(s, cfg))
            };
            if freshness == Freshness::RefreshAhead {
                revalidate_in_background(s, cfg, &id, ob.header.version, ob.header.pinned_etag());
            }
            let stale = freshness == Freshness::Stale;
            // Boxed, as the miss below: the rare paths' futures would otherwise make every hit's
            // future as large as theirs, and it is moved (copied) on its way to the runtime.
            if !stale || Box::pin(still_in_store(s, cfg, &id, ob.header.version, ob.header.pinned_etag())).await {
                // Reopen after a revalidation: it recorded the store's ETag.
                let ob = if stale {
                    match s.cache.open_block(&id, whole).await.map_err(|e| cache_error(s, e))? {
                        Opened::Block(ob) => ob,
                        _ => return Box::pin(get_object(s, cfg, id, headers, with_body, sends)).await,
                    }
                } else {
                    ob
                };
                if let Some(resp) = serve_cached(s, &id, *ob, headers, with_body, sends).await? {
                    return Ok(resp);
                }
            }
        }
        Opened::Miss => {}
    }
    Box::pin(serve_miss(s, cfg, id, headers, with_body)).await
}

/// Answers a GET or HEAD of an object not served from the cache: from the store.
async fn serve_miss(
    s: &Arc<AppState>,
    cfg: &VolumeConfig,
    id: BlockId,
    headers: &HeaderMap,
    with_body: bool,
) -> Result<Response, ApiError> {
    s.metrics.cache_misses_total.inc();
    let quarantined = s.cache.quarantined_version(&id);
    let Found { info, data, first } = match store_object(s, cfg, &id, with_body, headers).await {
        Ok(Some(found)) if quarantined.is_none_or(|q| q <= found.info.version) => found,
        Ok(_) | Err(_) if quarantined.is_some() => return Err(quarantined_block(&id)),
        Ok(_) => return Err(ApiError::new(StatusCode::NOT_FOUND, "no such object")),
        Err(e) => return Err(e),
    };
    s.clocks.observe(&id.volume, info.version);
    let range = requested_range(headers, info.size)?;
    let attrs = info.attrs.clone();
    // S3 clients see the object's S3 ETag; block reads pin the store's.
    let (etag, store_etag) = (unquote(info.client_etag()).to_owned(), unquote(&info.etag).to_owned());
    let modified_ns = info.last_modified.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let answer = |range: Option<Range<u64>>, crc32c: Option<u32>, source| Answer {
        version: info.version,
        source,
        crc32c,
        object: ObjectHeaders {
            etag: &etag,
            modified_ns,
            size: info.size,
            store_etag: Some(&store_etag),
            attrs: &attrs,
        },
        range,
    };
    if !with_body {
        // A HEAD never fetches data: the store's HEAD (cached for the TTL) is the answer.
        let len = range.as_ref().map_or(info.size, |r| r.end - r.start);
        return Ok(respond(answer(range, info.crc32c, "store"), None, len));
    }
    if let Some(data) = data {
        let _reserved = reserve_bytes(s, data.len() as u64).await?;
        let crc = crc::crc32c(&data);
        let body = match &range {
            Some(r) => data.slice(r.start as usize..r.end as usize),
            None => data,
        };
        s.metrics.cache_served_bytes_total.with_label_values(&["store"]).inc_by(body.len() as u64);
        let len = body.len() as u64;
        return Ok(respond(answer(range, Some(crc), "store"), Some(Body::from(body)), len));
    }
    match range {
        Some(r) if r.end - r.start <= s.max_block_size => {
            let _reserved = reserve_bytes(s, r.end - r.start).await?;
            let got = match first {
                // Fetched with the attributes: the range is within the object's first bytes.
                Some(first) if r.end <= first.len() as u64 => {
                    s.metrics.cache_served_bytes_total.with_label_values(&["store"]).inc_by(r.end - r.start);
                    first.slice(r.start as usize..r.end as usize)
                }
                _ => fetch_range(s, cfg, &id, r.clone(), &store_etag).await?,
            };
            let len = got.len() as u64;
            Ok(respond(answer(Some(r), None, "store"), Some(Body::from(got)), len))
        }
        _ => Err(ApiError::bad_request(format!(
            "the object has {} bytes, more than one block ({} bytes): read it in blocks (?block=&blockSize= with \
             If-Match: the store ETag), or ask for a Range of at most one block",
            info.size, s.max_block_size
        ))),
    }
}

/// Serves a cached object (or a range of it) from its open file; `None` when the cached copy
/// failed verification and was dropped (fetch it from the store).
async fn serve_cached(
    s: &Arc<AppState>,
    id: &BlockId,
    ob: OpenBlock,
    headers: &HeaderMap,
    with_body: bool,
    sends: Option<&FileSends>,
) -> Result<Option<Response>, ApiError> {
    s.metrics.cache_hits_total.inc();
    let h = &ob.header;
    let total = h.data_len;
    let range = requested_range(headers, total)?;
    let store_etag = if ob.dirty { None } else { ob.store_etag.as_deref() };
    let answer = |range| Answer {
        version: h.version,
        source: "cache",
        crc32c: Some(h.data_crc32c),
        object: ObjectHeaders { etag: &h.etag, modified_ns: h.modified_ns, size: total, store_etag, attrs: &h.attrs },
        range,
    };
    if !with_body {
        let len = range.as_ref().map_or(total, |r| r.end - r.start);
        return Ok(Some(respond_held(&ob, answer(range), None, len)));
    }
    let r = range.clone().unwrap_or(0..total);
    let len = r.end - r.start;
    // A block up to the block size is verified whole before it is served: a dirty one on every
    // read (its only copy), a clean one on its first read in this process (ADR 0001, item 6;
    // the checksum header lets the client check every later read). Larger objects stream
    // unverified from their open file. A block not already in memory is checked by reading its
    // file through one chunk-sized buffer, then streamed like any large hit, so a first read
    // holds a chunk in memory rather than the block (figure 6: 8 first reads of 4 MiB blocks
    // had lifted the peak RSS by about 40 MiB).
    let verify = total <= s.max_block_size && (ob.dirty || !ob.checked);
    if range.is_some() && !ob.dirty && !verify {
        // A range of a clean file (checked whole before, or larger than a block): checked here
        // through the pieces around it, as the client can check only a whole object against its
        // checksum (ADR 0025).
        match check_range(s, id, &ob, r.clone(), None).await? {
            CheckedRange::Checked { data: Some(data), .. } => {
                s.metrics.cache_served_bytes_total.with_label_values(&["cache"]).inc_by(len);
                return Ok(Some(respond_held(&ob, answer(range), Some(Body::from(data)), len)));
            }
            CheckedRange::Dropped => return Ok(None),
            // Checked, to be streamed from the file below.
            CheckedRange::Checked { data: None, .. } | CheckedRange::Unknown => {}
        }
    }
    let (mut data, mut file) = (ob.data.clone(), Arc::clone(&ob.file));
    if verify {
        if data.is_none() && total <= crate::cache::INLINE_READ_MAX {
            // Opened for sendfile, header only: a small block is read whole on this task.
            data = Some(read_part(s.cache.buffers(), Arc::clone(&file), ob.data_offset, total).await?);
        }
        let crc = match &data {
            Some(data) => crc::crc32c(data),
            None => {
                let checked = checksum_file(file, ob.data_offset, total).await?;
                file = checked.0;
                checked.1
            }
        };
        if crc != h.data_crc32c {
            if ob.dirty {
                tracing::error!(volume = %id.volume, key = %id.key, "unflushed block failed verification");
                let reason = "its data does not match its checksum".to_owned();
                let (volume, key) = (id.volume.to_string(), id.key.to_string());
                return Err(cache_error(s, CacheError::CorruptDirty { volume, key, reason }));
            }
            return drop_corrupt_copy(s, id).await.map(|()| None);
        }
        if !ob.dirty {
            s.cache.mark_checked(id, ob.serial);
        }
    }
    let body = match data {
        Some(data) => Body::from(data.slice(r.start as usize..r.end as usize)),
        None => file_body(s.cache.buffers(), file, ob.data_offset, r, sends),
    };
    s.metrics.cache_served_bytes_total.with_label_values(&["cache"]).inc_by(len);
    Ok(Some(respond_held(&ob, answer(range), Some(body), len)))
}

fn store_failed(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, format!("reading from the store failed: {e}"))
}

/// The store object's metadata: from the attributes cache while it is fresh, else one HEAD.
async fn object_info(s: &AppState, cfg: &VolumeConfig, id: &BlockId) -> Result<Option<ObjectInfo>, StoreError> {
    if let Some(info) = s.meta.get(id, metadata_ttl(s, cfg)) {
        return Ok(Some(info));
    }
    s.metrics.store_requests_total.with_label_values(&["head"]).inc();
    let info = s.store.head(&cfg.bucket, &cfg.store_key(&id.key)).await?;
    match &info {
        Some(i) => s.meta.put(id, i.clone()),
        None => s.meta.forget(id),
    }
    Ok(info)
}

/// What the store holds under a key: its attributes, and its bytes when they were fetched.
struct Found {
    info: ObjectInfo,
    /// The whole object.
    data: Option<Bytes>,
    /// The first bytes of a larger object, when a read from its start fetched them.
    first: Option<Bytes>,
}

impl Found {
    fn info(info: ObjectInfo) -> Self {
        Self { info, data: None, first: None }
    }
}

/// The length of a `Range` of the form `bytes=0-E` of at most `max` bytes: a read from the start,
/// whose bytes one GET can fetch together with the object's attributes.
fn from_start(headers: &HeaderMap, max: u64) -> Option<u64> {
    let r = headers.get(header::RANGE)?.to_str().ok()?.trim().strip_prefix("bytes=0-")?;
    let len = r.parse::<u64>().ok()?.checked_add(1)?;
    (len <= max).then_some(len)
}

/// The object's attributes, and for a read (`with_body`) its data when it fits in one block.
/// A cold read costs one round trip across the WAN: a whole-object read asks for both in one GET
/// unless the cached attributes say the object is large, and so does a read from the object's
/// start (`Range: bytes=0-E`, the first block a client reads), which answers a larger object's
/// range from the same GET. Another range asks for the attributes first (one HEAD unless
/// cached), as a large object's range is read on its own.
async fn store_object(
    s: &Arc<AppState>,
    cfg: &VolumeConfig,
    id: &BlockId,
    with_body: bool,
    headers: &HeaderMap,
) -> Result<Option<Found>, ApiError> {
    let ranged = headers.contains_key(header::RANGE);
    let cached = s.meta.get(id, metadata_ttl(s, cfg));
    let known = match from_start(headers, s.max_block_size) {
        Some(len) if with_body && cached.is_none() => return fetch_first(s, cfg, id, len).await,
        _ if !with_body || ranged => match object_info(s, cfg, id).await.map_err(store_failed)? {
            Some(info) => Some(info),
            None => return Ok(None),
        },
        _ => cached,
    };
    if !with_body || known.as_ref().is_some_and(|i| i.size > s.max_block_size) {
        return Ok(known.map(Found::info));
    }
    // The GET's own attributes answer it, even where they differ from cached ones: they are newer.
    let found = match fetch_whole(s, cfg, id).await? {
        Some(SmallObject::Whole(b)) => Found { info: b.info(), data: Some(b.data), first: None },
        Some(SmallObject::Large(info)) => Found::info(info),
        None => {
            s.meta.forget(id);
            return Ok(None);
        }
    };
    s.meta.put(id, found.info.clone());
    Ok(Some(found))
}

/// The object's first `len` bytes and its attributes in one GET, once for concurrent readers:
/// the whole object, cached clean, when it is no longer.
async fn fetch_first(s: &Arc<AppState>, cfg: &VolumeConfig, id: &BlockId, len: u64) -> Result<Option<Found>, ApiError> {
    let (store, cache, metrics) = (Arc::clone(&s.store), Arc::clone(&s.cache), Arc::clone(&s.metrics));
    let (bucket, store_key) = (cfg.bucket.clone(), cfg.store_key(&id.key));
    // Keyed by the removal epoch too, as fetch_whole is.
    let key = s.cache.fetch_key(id);
    let got = s
        .first_fetches
        .run(
            (key.clone(), len),
            move || async move {
                metrics.store_requests_total.with_label_values(&["get"]).inc();
                let got = match store.get_first(&bucket, &store_key, len).await {
                    Ok(Some(got)) => got,
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(Arc::from(e.to_string())),
                };
                metrics.store_read_bytes_total.inc_by(got.data.len() as u64);
                let info = &got.info;
                // Never cached over a newer write that could not be flushed.
                let cacheable = cache.quarantined_version(&key.id).is_none_or(|q| q <= info.version);
                if info.size <= len && cacheable {
                    let meta = FetchedMeta {
                        etag: unquote(&info.etag).to_owned(),
                        s3_etag: info.s3_etag.as_deref().map(|e| unquote(e).to_owned()),
                        attrs: info.attrs.clone(),
                        object_size: info.size,
                        modified_ns: info.last_modified.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
                    };
                    cache.insert_clean(key, &bucket, &store_key, got.data.clone(), info.version, meta).await;
                }
                Ok(Some(Arc::new(got)))
            },
            |panic| Err(Arc::from(format!("store fetch aborted: {panic}"))),
        )
        .await
        .map_err(store_failed)?;
    let Some(got) = got else {
        s.meta.forget(id);
        return Ok(None);
    };
    let (info, data) = (got.info.clone(), got.data.clone());
    s.meta.put(id, info.clone());
    if s.cache.quarantined_version(id).is_some_and(|q| q > info.version) {
        return Err(quarantined_block(id));
    }
    Ok(Some(if info.size > len {
        Found { info, data: None, first: Some(data) }
    } else {
        Found { info, data: Some(data), first: None }
    }))
}

/// The whole object when it fits in one block (else its attributes), fetched once for concurrent
/// readers; a fetched object is cached clean.
async fn fetch_whole(s: &Arc<AppState>, cfg: &VolumeConfig, id: &BlockId) -> Result<Option<SmallObject>, ApiError> {
    let (store, cache, metrics) = (Arc::clone(&s.store), Arc::clone(&s.cache), Arc::clone(&s.metrics));
    let (bucket, store_key, max) = (cfg.bucket.clone(), cfg.store_key(&id.key), s.max_block_size);
    // Keyed by the removal epoch too: a read never joins a fetch older than a delete or overwrite
    // that was acknowledged and flushed before the read started.
    let key = s.cache.fetch_key(id);
    let got = s
        .fetches
        .run(
            key.clone(),
            move || async move {
                metrics.store_requests_total.with_label_values(&["get"]).inc();
                match store.get_small(&bucket, &store_key, max).await {
                    Ok(Some(SmallObject::Whole(b))) => {
                        metrics.store_read_bytes_total.inc_by(b.data.len() as u64);
                        let meta = FetchedMeta {
                            etag: unquote(&b.etag).to_owned(),
                            s3_etag: b.s3_etag.as_deref().map(|e| unquote(e).to_owned()),
                            attrs: b.attrs.clone(),
                            object_size: b.data.len() as u64,
                            modified_ns: b.last_modified.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
                        };
                        // Never cached over a newer write that could not be flushed.
                        if cache.quarantined_version(&key.id).is_none_or(|q| q <= b.version) {
                            cache.insert_clean(key, &bucket, &store_key, b.data.clone(), b.version, meta).await;
                        }
                        Ok(Some(Arc::new(SmallObject::Whole(b))))
                    }
                    Ok(got) => Ok(got.map(Arc::new)),
                    Err(e) => Err(Arc::from(e.to_string())),
                }
            },
            |panic| Err(Arc::from(format!("store fetch aborted: {panic}"))),
        )
        .await;
    match got {
        Ok(Some(small)) => match &*small {
            SmallObject::Whole(b) if s.cache.quarantined_version(id).is_some_and(|q| q > b.version) => {
                Err(quarantined_block(id))
            }
            other => Ok(Some(other.clone())),
        },
        Ok(None) => Ok(None),
        Err(e) => Err(store_failed(e)),
    }
}

/// A range of a large clean object, read from the store pinned to its ETag (not cached).
async fn fetch_range(
    s: &AppState,
    cfg: &VolumeConfig,
    id: &BlockId,
    range: Range<u64>,
    etag: &str,
) -> Result<Bytes, ApiError> {
    s.metrics.store_requests_total.with_label_values(&["get_range"]).inc();
    match s.store.get_range(&cfg.bucket, &cfg.store_key(&id.key), range, Some(&quote(etag))).await {
        Ok(Some(r)) => {
            s.metrics.store_read_bytes_total.inc_by(r.data.len() as u64);
            s.metrics.cache_served_bytes_total.with_label_values(&["store"]).inc_by(r.data.len() as u64);
            Ok(r.data)
        }
        Ok(None) => Err(ApiError::new(StatusCode::NOT_FOUND, "no such object")),
        Err(e) if e.class() == ErrorClass::PreconditionFailed => {
            s.meta.forget(id);
            Err(changed_since(etag))
        }
        Err(e) => Err(store_failed(e)),
    }
}

fn changed_since(etag: &str) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        format!("the object is no longer the one with ETag {}: read its attributes again", quote(etag)),
    )
}

/// `GET`/`HEAD blocks/{key}?block={i}&blockSize={B}` with `If-Match: <store etag>`: block `i` of
/// the clean object, from the cache when the copy here is pinned to that ETag, else fetched from
/// the store (that range only, `If-Match`), cached clean and served.
pub async fn get_stripe(
    s: &Arc<AppState>,
    cfg: &VolumeConfig,
    object: BlockId,
    q: &BlockQuery,
    headers: &HeaderMap,
    with_body: bool,
    sends: Option<&FileSends>,
) -> Result<Response, ApiError> {
    let index = q.block.unwrap_or_default();
    let block_size = q.block_size.ok_or_else(|| ApiError::bad_request("a block read needs blockSize"))?;
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(ApiError::bad_request(format!("blockSize must be {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE} bytes")));
    }
    let pinned = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| unquote(v).to_owned())
        .filter(|v| !v.is_empty() && v != "*")
        .ok_or_else(|| ApiError::bad_request("a block read needs If-Match: the store ETag it is pinned to"))?;
    let start = index.checked_mul(block_size).ok_or_else(|| ApiError::bad_request("block index out of range"))?;

    // The home may hold the whole object, clean and pinned to the same ETag: serve from it.
    if let Opened::Block(ob) = s.cache.open_block(&object, 0).await.map_err(|e| cache_error(s, e))?
        && !ob.dirty
        && ob.store_etag.as_deref() == Some(pinned.as_str())
        && ob.validated.is_some_and(|t| t.elapsed() < metadata_ttl(s, cfg))
    {
        let ob = *ob;
        let size = ob.header.data_len;
        let block = block_range(start, block_size, size)?;
        let range = within_block(headers, block.clone(), size)?;
        // A whole block carries its own checksum for the client to verify (ADR 0024); a range
        // within it is checked here, through the pieces around it, and carries the checksum of
        // its checked bytes (ADR 0025).
        let mut in_memory = None;
        let crc32c = if !with_body {
            None
        } else if range != block {
            match check_range(s, &object, &ob, range.clone(), Some(block_size)).await? {
                CheckedRange::Checked { crc32c, data } => {
                    in_memory = data;
                    Some(crc32c)
                }
                CheckedRange::Unknown => None,
                // Rotten: dropped, so this read goes on to the block's own copy or the store.
                CheckedRange::Dropped => {
                    return Box::pin(get_stripe(s, cfg, object.clone(), q, headers, with_body, sends)).await;
                }
            }
        } else {
            match s.cache.block_crc32c(&object, &ob, index, block_size).await.map_err(|e| cache_error(s, e))? {
                BlockSum::Crc32c(crc) => Some(crc),
                BlockSum::Unknown => None,
                BlockSum::Dropped => {
                    // Rotten: dropped, so this read goes on to the block's own copy or the store.
                    s.metrics.cache_corrupt_blocks_total.inc();
                    return Box::pin(get_stripe(s, cfg, object.clone(), q, headers, with_body, sends)).await;
                }
            }
        };
        s.metrics.cache_hits_total.inc();
        let h = &ob.header;
        let a = Answer {
            version: h.version,
            source: "cache",
            crc32c,
            object: ObjectHeaders {
                etag: &h.etag,
                modified_ns: h.modified_ns,
                size,
                store_etag: Some(&pinned),
                attrs: &h.attrs,
            },
            range: Some(range.clone()),
        };
        let len = range.end - range.start;
        s.metrics.cache_served_bytes_total.with_label_values(&["cache"]).inc_by(if with_body { len } else { 0 });
        let body = with_body.then(|| checked_body(s, in_memory, &ob, range, sends));
        return Ok(respond(a, body, len));
    }

    let id = BlockId { stripe: Some(Stripe { index, block_size }), ..object };
    if let Some(served) = serve_cached_stripe(s, &id, &pinned, start, headers, with_body, sends).await? {
        return Ok(served);
    }
    let _reserved = reserve_bytes(s, block_size).await?;
    s.metrics.cache_misses_total.inc();
    let fetched = Box::pin(fetch_stripe(s, cfg, &id, start, &pinned)).await?;
    let (range, data) = cut(headers, start, fetched.data.clone(), fetched.object_size)?;
    Ok(fetched_stripe_answer(s, &fetched, &pinned, range, data, with_body))
}

/// Serves block `id` of a clean object from its file here, when that copy is pinned to `pinned`;
/// `None` when there is none, or it failed verification and was dropped: fetch it then. The block
/// is verified whole on its first read in this process (ADR 0001, item 6), through one
/// chunk-sized buffer. The whole block then streams from its open file (sendfile on plain HTTP)
/// with the block's checksum; a part of it (a piece of a read under memory pressure, a mount's
/// random read) reads only its own bytes, and carries their checksum for the client to verify.
async fn serve_cached_stripe(
    s: &Arc<AppState>,
    id: &BlockId,
    pinned: &str,
    start: u64,
    headers: &HeaderMap,
    with_body: bool,
    sends: Option<&FileSends>,
) -> Result<Option<Response>, ApiError> {
    let Opened::Block(ob) = s.cache.open_block(id, 0).await.map_err(|e| cache_error(s, e))? else {
        return Ok(None);
    };
    let h = &ob.header;
    let Some(stripe) = h.stripe.as_ref().filter(|_| h.pinned_etag() == pinned) else {
        // Pinned to another ETag: that copy is of another object version.
        s.cache.invalidate(id);
        return Ok(None);
    };
    let range = within_block(headers, start..start + h.data_len, stripe.object_size)?;
    let len = range.end - range.start;
    let in_file = range.start - start..range.end - start;
    let whole = len == h.data_len;
    let (crc32c, body) = match (with_body, whole) {
        (false, _) => (whole.then_some(h.data_crc32c), None),
        (true, true) => {
            let mut file = Arc::clone(&ob.file);
            if !ob.checked {
                let (read, crc) = checksum_file(file, ob.data_offset, h.data_len).await?;
                if crc != h.data_crc32c {
                    return drop_corrupt_copy(s, id).await.map(|()| None);
                }
                s.cache.mark_checked(id, ob.serial);
                file = read;
            }
            (Some(h.data_crc32c), Some(file_body(s.cache.buffers(), file, ob.data_offset, in_file, sends)))
        }
        (true, false) => {
            // Checked here through the pieces around it (ADR 0025); sent with the checksum of its
            // checked bytes, for the client to check the transfer: from memory when they were read
            // in one read, else streamed from the file.
            match check_range(s, id, &ob, in_file.clone(), None).await? {
                CheckedRange::Checked { crc32c, data } => {
                    (Some(crc32c), Some(checked_body(s, data, &ob, in_file, sends)))
                }
                // Rotten and dropped, or replaced since it was opened (a rare race): a miss.
                CheckedRange::Dropped | CheckedRange::Unknown => return Ok(None),
            }
        }
    };
    s.metrics.cache_hits_total.inc();
    if with_body {
        s.metrics.cache_served_bytes_total.with_label_values(&["cache"]).inc_by(len);
    }
    let a = Answer {
        version: h.version,
        source: "cache",
        crc32c,
        object: ObjectHeaders {
            etag: pinned,
            modified_ns: h.modified_ns,
            size: stripe.object_size,
            store_etag: Some(pinned),
            attrs: &h.attrs,
        },
        range: Some(range),
    };
    Ok(Some(respond(a, body, len)))
}

/// [`crate::cache::Cache::check_range`] for a read: a file found rotten is counted here, once
/// for every kind of read.
async fn check_range(
    s: &AppState,
    id: &BlockId,
    ob: &OpenBlock,
    range: Range<u64>,
    block_size: Option<u64>,
) -> Result<CheckedRange, ApiError> {
    let checked = s.cache.check_range(id, ob, range, block_size).await.map_err(|e| cache_error(s, e))?;
    if checked == CheckedRange::Dropped {
        s.metrics.cache_corrupt_blocks_total.inc();
    }
    Ok(checked)
}

/// The body of a checked range: the bytes that checked it when it took one read, else streamed
/// from the file.
fn checked_body(
    s: &AppState,
    data: Option<Bytes>,
    ob: &OpenBlock,
    range: Range<u64>,
    sends: Option<&FileSends>,
) -> Body {
    match data {
        Some(data) => Body::from(data),
        None => file_body(s.cache.buffers(), Arc::clone(&ob.file), ob.data_offset, range, sends),
    }
}

/// `len` bytes of `file` from `offset`, into a pooled buffer: on this task when at most a chunk,
/// as small hits are read, else on the blocking pool.
async fn read_part(
    buffers: &Arc<BufferPool>,
    file: Arc<std::fs::File>,
    offset: u64,
    len: u64,
) -> Result<Bytes, ApiError> {
    use std::os::unix::fs::FileExt;
    let buffers = Arc::clone(buffers);
    let read = move || buffers.read(len as usize, |buf| file.read_exact_at(buf, offset));
    let read = if len <= CHUNK {
        read()
    } else {
        tokio::task::spawn_blocking(read).await.map_err(|e| cache_read_failed(&e))?
    };
    read.map_err(|e| cache_read_failed(&e))
}

/// Drops a clean cached copy that failed verification, through the cache's own read of it (it is
/// fetched from the store again); an error when the copy changed meanwhile instead.
async fn drop_corrupt_copy(s: &AppState, id: &BlockId) -> Result<(), ApiError> {
    match s.cache.read(id).await.map_err(|e| cache_error(s, e))? {
        Lookup::DroppedCorrupt => {
            s.metrics.cache_corrupt_blocks_total.inc();
            Ok(())
        }
        _ => Err(ApiError::unavailable("the object changed while it was read; retry", 0)),
    }
}

/// The bytes of `block` (object offsets) that the request's `Range` asks for: the whole block
/// without one, `416` for a range reaching outside the block. A small random read then moves
/// only its bytes, not the block's.
fn within_block(headers: &HeaderMap, block: Range<u64>, object_size: u64) -> Result<Range<u64>, ApiError> {
    match requested_range(headers, object_size)? {
        None => Ok(block),
        Some(r) if r.start >= block.start && r.end <= block.end => Ok(r),
        Some(r) => Err(ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!("bytes {}-{} reach outside block bytes {}-{}", r.start, r.end - 1, block.start, block.end - 1),
        )),
    }
}

/// [`within_block`] for a block held in memory, whose first byte is at `start`.
fn cut(headers: &HeaderMap, start: u64, data: Bytes, object_size: u64) -> Result<(Range<u64>, Bytes), ApiError> {
    let r = within_block(headers, start..start + data.len() as u64, object_size)?;
    let bytes = data.slice((r.start - start) as usize..(r.end - start) as usize);
    Ok((r, bytes))
}

/// Bytes `[start, start + block_size)` of an object of `size` bytes, cut at its end; `416` past it.
fn block_range(start: u64, block_size: u64, size: u64) -> Result<Range<u64>, ApiError> {
    if start >= size && !(start == 0 && size == 0) {
        return Err(ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!("the block starts at byte {start}, past the end of the {size}-byte object"),
        ));
    }
    Ok(start..size.min(start.saturating_add(block_size)))
}

/// The answer for the part `range` (`data`) of a block just fetched from the store.
fn fetched_stripe_answer(
    s: &AppState,
    fetched: &FetchedStripe,
    pinned: &str,
    range: Range<u64>,
    data: Bytes,
    with_body: bool,
) -> Response {
    let len = data.len() as u64;
    if with_body {
        s.metrics.cache_served_bytes_total.with_label_values(&["store"]).inc_by(len);
    }
    let a = Answer {
        version: fetched.version,
        source: "store",
        crc32c: Some(crc::crc32c(&data)),
        object: ObjectHeaders {
            etag: pinned,
            modified_ns: fetched.modified_ns,
            size: fetched.object_size,
            store_etag: Some(pinned),
            attrs: &fetched.attrs,
        },
        range: Some(range),
    };
    respond(a, with_body.then(|| Body::from(data)), len)
}

/// A block fetched from the store.
#[derive(Clone)]
pub struct FetchedStripe {
    data: Bytes,
    version: u64,
    object_size: u64,
    attrs: ObjectAttrs,
    modified_ns: u64,
}

pub type StripeResult = Result<Arc<FetchedStripe>, (u16, Arc<str>)>;

/// Fetches one block from the store, pinned to `etag`: once for concurrent misses of the same
/// block and ETag, cached clean.
async fn fetch_stripe(
    s: &Arc<AppState>,
    cfg: &VolumeConfig,
    id: &BlockId,
    start: u64,
    etag: &str,
) -> Result<Arc<FetchedStripe>, ApiError> {
    let block_size = id.stripe.map_or(0, |st| st.block_size);
    let (store, cache, metrics) = (Arc::clone(&s.store), Arc::clone(&s.cache), Arc::clone(&s.metrics));
    let (bucket, store_key, etag_owned) = (cfg.bucket.clone(), cfg.store_key(&id.key), etag.to_owned());
    let state = Arc::clone(s);
    let key = (s.cache.fetch_key(id), etag.to_owned());
    let id_owned = id.clone();
    let got = s
        .stripe_fetches
        .run(
            key.clone(),
            move || async move {
                let id = id_owned;
                // Pinned to the ETag, and cut at the object's end by the store: one GET, no HEAD
                // for the size (on S3; other stores ask it inside `get_block`).
                metrics.store_requests_total.with_label_values(&["get_range"]).inc();
                let got = store.get_block(&bucket, &store_key, start, block_size, Some(&quote(&etag_owned))).await;
                let r = match got {
                    Ok(Some(r)) => r,
                    Ok(None) => return Err((404, Arc::from("no such object"))),
                    Err(e) if e.class() == ErrorClass::PreconditionFailed => {
                        state.meta.forget(&id);
                        return Err((412, Arc::from("changed")));
                    }
                    Err(StoreError::InvalidRange { size, .. }) => {
                        let size =
                            size.map_or_else(|| "its end".to_owned(), |n| format!("the end of the {n}-byte object"));
                        return Err((416, Arc::from(format!("the block starts at byte {start}, past {size}"))));
                    }
                    Err(e) => return Err((502, Arc::from(e.to_string()))),
                };
                state.meta.put(&id, r.info.clone());
                metrics.store_read_bytes_total.inc_by(r.data.len() as u64);
                let modified_ns = r.info.last_modified.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
                let fetched = FetchedStripe {
                    data: r.data.clone(),
                    version: r.info.version,
                    object_size: r.info.size,
                    attrs: r.info.attrs.clone(),
                    modified_ns,
                };
                let meta = FetchedMeta {
                    etag: etag_owned.clone(),
                    s3_etag: r.info.s3_etag.as_deref().map(|e| unquote(e).to_owned()),
                    attrs: r.info.attrs.clone(),
                    object_size: r.info.size,
                    modified_ns,
                };
                cache.insert_clean(key.0, &bucket, &store_key, r.data, r.info.version, meta).await;
                Ok(Arc::new(fetched))
            },
            |panic| Err((500, Arc::from(format!("store fetch aborted: {panic}")))),
        )
        .await;
    got.map_err(|(status, msg)| match status {
        412 => changed_since(etag),
        404 => ApiError::new(StatusCode::NOT_FOUND, "no such object"),
        416 => ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, msg.to_string()),
        _ => store_failed(msg),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_is_revalidated_ahead_near_its_ttls_end_and_inline_past_it() {
        let ttl = Duration::from_secs(8);
        let validated = |ago: u64| Instant::now().checked_sub(Duration::from_secs(ago));
        assert_eq!(freshness(None, ttl), Freshness::Stale, "never validated");
        assert_eq!(freshness(validated(0), ttl), Freshness::Fresh);
        assert_eq!(freshness(validated(5), ttl), Freshness::Fresh);
        assert_eq!(freshness(validated(6), ttl), Freshness::RefreshAhead);
        assert_eq!(freshness(validated(7), ttl), Freshness::RefreshAhead);
        assert_eq!(freshness(validated(8), ttl), Freshness::Stale, "the TTL's bound holds");
        assert_eq!(freshness(validated(60), ttl), Freshness::Stale);
    }
}
