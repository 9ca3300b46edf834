//! Multipart staging at the object's home (`/v1/volumes/{v}/uploads/{key}`, see
//! `protocol::UPLOADS_SEGMENT` and ADR 0004). Parts are streamed to files under the cache folder
//! (bounded memory whatever their size); Complete assembles them into one file on the same disk
//! and commits it exactly like a PUT (version clock, gate, quota, fsync, rename into `dirty/`).
//!
//! A crash at any point commits no partial object: before the rename only staging and `tmp/`
//! files exist. A Complete retried after it committed answers the recorded result, unless the
//! crash came between the commit and that record: then the retry commits the same bytes again
//! as a newer version (never a partial or different object).

use super::block_body::next_frame;
use super::body_md5::BodyMd5;
use super::errors::ApiError;
use super::object::{attrs_from_headers, check_parts, etag_value, names, quote, unquote};
use super::routes::{cache_error, enter_gate, superseded, write_version};
use super::state::AppState;
use crate::cache::staging::{PartRecord, Staging, UploadMeta};
use crate::cache::{BlockHeader, BlockId, WriteOutcome};
use crate::protocol::crc;
use crate::store::{Conditional, ObjectMeta, S3ETag, put_file_at_unless_newer};
use axum::body::Body;
use axum::extract::{Query, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use blockproxy_protocol::{
    CHECKSUM_HEADER, Checksum, CompleteUpload, MAX_PARTS, MAX_SINGLE_PUT_SIZE, UploadCompleted, UploadCreated,
    UploadPart, UploadParts, VolumeConfig, multipart_etag,
};
use http_body_util::BodyExt;
use md5::Digest;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;

#[derive(Debug, Default, serde::Deserialize)]
pub struct UploadQuery {
    #[serde(rename = "uploadId")]
    upload_id: Option<String>,
    #[serde(rename = "partNumber")]
    part_number: Option<u32>,
}

/// A Complete body is a list of part numbers and ETags: small.
const MAX_COMPLETE_BODY: usize = 2 << 20;

pub async fn handle(s: &Arc<AppState>, cfg: &VolumeConfig, id: BlockId, req: Request) -> Result<Response, ApiError> {
    let Query(q) = Query::<UploadQuery>::try_from_uri(req.uri()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    match (req.method().clone(), q.upload_id, q.part_number) {
        (Method::POST, None, None) => create(s, &id, req.headers()).await,
        (Method::PUT, Some(u), Some(n)) => put_part(s, &id, &u, n, req).await,
        (Method::GET, Some(u), None) => list_parts(s, &id, &u).await,
        (Method::POST, Some(u), None) => complete(s, cfg, id, &u, req).await,
        (Method::DELETE, Some(u), None) => abort(s, &id, &u).await,
        _ => Err(ApiError::bad_request(
            "uploads: POST (create), PUT ?uploadId=&partNumber=, GET|POST|DELETE ?uploadId= (list, complete, abort)",
        )),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(format!("staging task failed: {e}")))?.map_err(
        |e| match e.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                ApiError::unavailable(format!("the cache disk is full: {e}"), 1)
            }
            _ => ApiError::internal(format!("staging I/O failed: {e}")),
        },
    )
}

fn no_such_upload() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NoSuchUpload: no such upload for this key")
}

/// The upload's record, if `upload` exists and belongs to this key.
async fn owned_upload(s: &AppState, id: &BlockId, upload: &str) -> Result<UploadMeta, ApiError> {
    let (st, u) = (s.staging.clone(), upload.to_owned());
    let meta = blocking(move || st.meta(&u)).await?.ok_or_else(no_such_upload)?;
    if meta.volume != id.volume.as_str() || meta.key != id.key.as_str() {
        return Err(no_such_upload());
    }
    Ok(meta)
}

async fn create(s: &Arc<AppState>, id: &BlockId, headers: &HeaderMap) -> Result<Response, ApiError> {
    let _pass = enter_gate(s)?;
    let attrs = attrs_from_headers(headers)?;
    let (st, v, k) = (s.staging.clone(), id.volume.to_string(), id.key.to_string());
    let upload_id = blocking(move || st.create(&v, &k, &attrs)).await?;
    Ok(axum::Json(UploadCreated { upload_id }).into_response())
}

async fn put_part(s: &Arc<AppState>, id: &BlockId, upload: &str, n: u32, req: Request) -> Result<Response, ApiError> {
    let _pass = enter_gate(s)?;
    if !(1..=MAX_PARTS).contains(&n) {
        return Err(ApiError::bad_request(format!("partNumber must be 1 to {MAX_PARTS}")));
    }
    let checksum: Checksum = req
        .headers()
        .get(CHECKSUM_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::bad_request(format!("a part needs {CHECKSUM_HEADER} (crc32c=<hex> or sha256=<hex>)")))?
        .parse()
        .map_err(|e: blockproxy_protocol::ChecksumError| ApiError::bad_request(e.to_string()))?;
    let len = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| ApiError::new(StatusCode::LENGTH_REQUIRED, "a part needs Content-Length"))?;
    if len > MAX_SINGLE_PUT_SIZE {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("EntityTooLarge: a part has at most {MAX_SINGLE_PUT_SIZE} bytes"),
        ));
    }
    owned_upload(s, id, upload).await?;
    let (st, u) = (s.staging.clone(), upload.to_owned());
    if blocking(move || st.completed(&u)).await?.is_some() {
        return Err(no_such_upload());
    }
    s.cache.stage(len).await.map_err(|e| cache_error(s, e))?;
    let (file, path) = s.staging.part_file(upload, n).map_err(|_| no_such_upload())?;
    let streamed = stream_part(s, req.into_body(), &path, len, &checksum).await;
    let rec = match streamed {
        Ok((md5, crc32c)) => PartRecord { part_number: n, file, size: len, md5: hex::encode(md5), crc32c },
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            s.cache.unstage(len);
            return Err(e);
        }
    };
    let (st, u, r) = (s.staging.clone(), upload.to_owned(), rec.clone());
    match blocking(move || st.record_part(&u, &r)).await {
        Ok(replaced) => s.cache.unstage(replaced.unwrap_or(0)),
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            s.cache.unstage(len);
            return Err(e);
        }
    }
    let mut resp = StatusCode::OK.into_response();
    if let Some(v) = etag_value(&rec.md5) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    Ok(resp)
}

/// Writes a part's body to `path` as it arrives, checking its length and checksum; returns its
/// MD5 and CRC32C. Holds one frame in memory at a time.
async fn stream_part(
    s: &AppState,
    body: Body,
    path: &std::path::Path,
    len: u64,
    checksum: &Checksum,
) -> Result<([u8; 16], u32), ApiError> {
    let io = |e: std::io::Error| ApiError::internal(format!("writing the part failed: {e}"));
    let mut f = tokio::fs::File::create(path).await.map_err(io)?;
    // The MD5 (the part's ETag) is hashed beside the receive, as a one-part write's is (ADR 0013).
    let (mut md5, mut crc, mut sha) = (BodyMd5::for_len(Some(len)), 0u32, sha2::Sha256::new());
    let mut body = body;
    let mut got = 0u64;
    loop {
        let frame = match next_frame(s, &mut body).await? {
            None => break,
            Some(Err(e)) => return Err(ApiError::bad_request(format!("reading the body failed: {e}"))),
            Some(Ok(frame)) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        got += data.len() as u64;
        if got > len {
            return Err(ApiError::bad_request("the body is longer than its Content-Length"));
        }
        md5.update(&data).await;
        crc = crc::crc32c_append(crc, &data);
        if matches!(checksum, Checksum::Sha256(_)) {
            sha2::Digest::update(&mut sha, &data);
        }
        f.write_all(&data).await.map_err(io)?;
    }
    if got != len {
        return Err(ApiError::bad_request(format!("the body has {got} bytes, its Content-Length says {len}")));
    }
    let ok = match checksum {
        Checksum::Crc32c(want) => *want == crc,
        Checksum::Sha256(want) => want[..] == sha.finalize()[..],
    };
    if !ok {
        return Err(ApiError::bad_request(format!("{CHECKSUM_HEADER} does not match the part's bytes")));
    }
    f.flush().await.map_err(io)?;
    if s.cache.sync() {
        f.sync_all().await.map_err(io)?;
    }
    let md5 = md5.finish().await.map_err(|e| ApiError::internal(format!("hashing the part failed: {e}")))?;
    Ok((md5, crc))
}

async fn list_parts(s: &AppState, id: &BlockId, upload: &str) -> Result<Response, ApiError> {
    owned_upload(s, id, upload).await?;
    let (st, u) = (s.staging.clone(), upload.to_owned());
    let parts = blocking(move || st.parts(&u)).await?;
    let parts = parts
        .into_iter()
        .map(|p| UploadPart { part_number: p.part_number, etag: quote(&p.md5), size: p.size })
        .collect();
    Ok(axum::Json(UploadParts { parts }).into_response())
}

async fn abort(s: &AppState, id: &BlockId, upload: &str) -> Result<Response, ApiError> {
    owned_upload(s, id, upload).await?;
    let (st, u) = (s.staging.clone(), upload.to_owned());
    let freed = blocking(move || st.remove(&u)).await?;
    s.cache.unstage(freed);
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn completed_response(done: &UploadCompleted) -> Response {
    let mut resp = axum::Json(done.clone()).into_response();
    let h = resp.headers_mut();
    h.insert(names::VERSION, HeaderValue::from(done.version));
    if let Ok(v) = HeaderValue::from_str(&done.etag) {
        h.insert(header::ETAG, v);
    }
    resp
}

async fn complete(
    s: &Arc<AppState>,
    cfg: &VolumeConfig,
    id: BlockId,
    upload: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let _pass = enter_gate(s)?;
    let meta = owned_upload(s, &id, upload).await?;
    let body = http_body_util::Limited::new(req.into_body(), MAX_COMPLETE_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the Complete body failed: {e}")))?
        .to_bytes();
    let request: CompleteUpload =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("malformed Complete body: {e}")))?;
    let (st, u) = (s.staging.clone(), upload.to_owned());
    if let Some(done) = blocking(move || st.completed(&u)).await? {
        return Ok(completed_response(&done));
    }
    let (st, u) = (s.staging.clone(), upload.to_owned());
    let staged = blocking(move || st.parts(&u)).await?;
    let parts = chosen_parts(&request, staged)?;
    let sizes: Vec<u64> = parts.iter().map(|p| p.size).collect();
    let total: u64 = sizes.iter().sum();
    check_parts(&sizes, total).map_err(ApiError::bad_request)?;

    let mut version_headers = HeaderMap::new();
    if let Some(v) = request.version {
        version_headers.insert(names::VERSION, HeaderValue::from(v));
    }
    let version = write_version(s, &id.volume, &version_headers)?;
    let md5s: Vec<[u8; 16]> = parts
        .iter()
        .map(|p| hex::decode(&p.md5).ok().and_then(|d| d.try_into().ok()))
        .collect::<Option<_>>()
        .ok_or_else(|| ApiError::internal("a staged part's record is corrupt"))?;
    let data_crc32c = parts.iter().fold(0u32, |acc, p| crc::crc32c_combine(acc, p.crc32c, p.size));
    let header = BlockHeader {
        volume: id.volume.to_string(),
        key: id.key.to_string(),
        bucket: cfg.bucket.clone(),
        store_key: cfg.store_key(&id.key),
        version,
        data_crc32c,
        data_len: total,
        tombstone: false,
        etag: multipart_etag(&md5s),
        modified_ns: version,
        attrs: meta.attrs,
        parts: sizes,
        stripe: None,
        store_etag: None,
    };
    let tmp = s.cache.tmp_path();
    let (st, u, h, t, p) = (s.staging.clone(), upload.to_owned(), header.clone(), tmp.clone(), parts.clone());
    let file_size = blocking(move || st.assemble(&u, &p, &h, &t)).await?;
    if s.write_through {
        // --no-writeback: acknowledged only once the store holds it, uploaded from the file.
        let through = write_through(s, &header, &tmp, file_size - total).await;
        let _ = tokio::fs::remove_file(&tmp).await;
        if let Conditional::StoreNewer { store_version } = through? {
            return Err(superseded(s, &id, version, store_version));
        }
        s.cache.invalidate(&id);
        // The chosen parts are no longer needed: counted as staged until deleted below.
        s.cache.unstage(total);
    } else {
        match s.cache.commit_dirty_file(&id, tmp, &header, file_size, total).await.map_err(|e| cache_error(s, e))? {
            WriteOutcome::Committed => s.writeback.enqueue(id.clone()),
            WriteOutcome::Superseded { current } => return Err(superseded(s, &id, version, current)),
        }
    }
    s.meta.forget(&id);
    let done = UploadCompleted { version, etag: quote(&header.etag), size: total };
    let (st, u, d) = (s.staging.clone(), upload.to_owned(), done.clone());
    // The object is committed (acknowledgeable) whatever happens to the staging from here on.
    // The chosen parts' bytes are the object's now (or were given back, written through): only
    // parts left out of the Complete are still counted as staged.
    match blocking(move || st.mark_completed(&u, &d)).await {
        Ok(freed) => s.cache.unstage(freed.saturating_sub(total)),
        Err(e) => tracing::warn!(upload, error = %e.message, "could not record a completed upload; it expires later"),
    }
    Ok(completed_response(&done))
}

/// Uploads an assembled object straight to the store (`--no-writeback`), conditional like every
/// store write.
async fn write_through(
    s: &AppState,
    header: &BlockHeader,
    file: &std::path::Path,
    data_offset: u64,
) -> Result<Conditional, ApiError> {
    let meta = ObjectMeta { version: header.version, crc32c: header.data_crc32c, s3_etag: S3ETag::parse(&header.etag) };
    let store = s.store.as_ref();
    put_file_at_unless_newer(
        store,
        &header.bucket,
        &header.store_key,
        file,
        data_offset,
        &header.parts,
        meta,
        &header.attrs,
    )
    .await
    .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("write-through to the store failed: {e}")))
}

/// The staged parts a Complete names, checked as S3 does: ascending part numbers, each staged,
/// ETags (when given) matching.
fn chosen_parts(request: &CompleteUpload, staged: Vec<PartRecord>) -> Result<Vec<PartRecord>, ApiError> {
    if request.parts.is_empty() {
        return Err(ApiError::bad_request("MalformedXML: a Complete names at least one part"));
    }
    let mut by_number: std::collections::HashMap<u32, PartRecord> =
        staged.into_iter().map(|p| (p.part_number, p)).collect();
    let mut last = 0;
    let mut out = Vec::with_capacity(request.parts.len());
    for p in &request.parts {
        if p.part_number <= last {
            return Err(ApiError::bad_request("InvalidPartOrder: parts must be listed in ascending order"));
        }
        last = p.part_number;
        let rec = by_number
            .remove(&p.part_number)
            .ok_or_else(|| ApiError::bad_request(format!("InvalidPart: part {} was not uploaded", p.part_number)))?;
        if let Some(etag) = &p.etag
            && unquote(etag) != rec.md5
        {
            return Err(ApiError::bad_request(format!(
                "InvalidPart: part {} has ETag {}, not {etag}",
                p.part_number,
                quote(&rec.md5)
            )));
        }
        out.push(rec);
    }
    Ok(out)
}

/// Removes uploads older than `expiry` now and then (and once at start), giving their bytes back.
pub async fn expire_loop(s: Arc<AppState>, expiry: Duration) {
    let every = (expiry / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        let st = s.staging.clone();
        match tokio::task::spawn_blocking(move || expire(&st, expiry)).await {
            Ok(Ok(freed)) => s.cache.unstage(freed),
            Ok(Err(e)) => tracing::warn!(error = %e, "removing expired uploads failed"),
            Err(e) => tracing::warn!(error = %e, "removing expired uploads failed"),
        }
        tokio::time::sleep(every).await;
    }
}

fn expire(st: &Staging, expiry: Duration) -> std::io::Result<u64> {
    let now = SystemTime::now();
    let mut freed = 0;
    for (id, created, _) in st.list()? {
        if now.duration_since(created).is_ok_and(|age| age >= expiry) {
            tracing::info!(upload = %id, "removing an upload left unfinished for longer than --upload-expiry");
            freed += st.remove(&id)?;
        }
    }
    Ok(freed)
}
