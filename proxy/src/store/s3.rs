//! S3 and S3-compatible stores (AWS, MinIO, Ceph RGW, OCI, GCS XML) through aws-sdk-s3.

//!
//! Attributes are the object's real headers (`Content-Type`, `Content-Encoding`, `Cache-Control`,
//! `Content-Disposition`) and `x-amz-meta-*` user metadata; our own version and checksum metadata
//! ride along as `x-amz-meta-blockproxy-*` and are never part of the user metadata.
//!
//! A file is uploaded as one conditional PutObject, or as a multipart upload whose
//! CompleteMultipartUpload carries the condition (`If-Match` / `If-None-Match: *`), so the object
//! is published only if nothing changed it meanwhile; any failure aborts the upload. AWS S3 and
//! MinIO honour both conditions there (proxy/tests/store_s3.rs checks it against MinIO). The parts
//! are streamed from the file, and the store's ETag is then `md5(part md5s)-N`.

use super::{
    ListPage, ListedObject, ObjectAttrs, ObjectInfo, ObjectMeta, Precondition, SmallObject, Store, StoreError,
    StoredBlock, StoredRange, check_parts, check_range, get_block_by_head, get_first_by_head, get_small_by_head,
    verify_fetched, without_tombstones,
};
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use blockproxy_protocol::{STORE_CRC32C_METADATA, STORE_VERSION_METADATA};
use bytes::Bytes;
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::time::SystemTime;

#[derive(Debug, Clone, Default)]
pub struct S3StoreConfig {
    /// Custom endpoint (MinIO, RGW...); `None` means AWS.
    pub endpoint: Option<String>,
    pub region: String,
    pub path_style: bool,
    /// Static credentials; `None` uses the SDK's default chain (environment, profile, IMDS...).
    pub credentials: Option<(String, String)>,
    /// Ask the store for server-side encryption (SSE-S3, AES256).
    pub sse: bool,
}

#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    sse: bool,
    describe: String,
}

impl S3Store {
    pub async fn new(cfg: S3StoreConfig) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(cfg.region.clone()));
        if let Some((id, secret)) = &cfg.credentials {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                id,
                secret,
                None,
                None,
                "blockproxy",
            ));
        }
        let shared = loader.load().await;
        // A store that stops answering must fail the attempt (and be retried by writeback) rather
        // than hang a flush worker; generous read timeout for large blocks over a WAN.
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .read_timeout(std::time::Duration::from_secs(60))
            .build();
        let mut builder =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(cfg.path_style).timeout_config(timeouts);
        if let Some(ep) = &cfg.endpoint {
            builder = builder.endpoint_url(ep);
        }
        let describe = format!(
            "s3 endpoint={} region={} path_style={} sse={}",
            cfg.endpoint.as_deref().unwrap_or("aws"),
            cfg.region,
            cfg.path_style,
            cfg.sse
        );
        Self { client: Client::from_conf(builder.build()), sse: cfg.sse, describe }
    }

    pub fn from_client(client: Client) -> Self {
        Self { client, sse: false, describe: "s3 (provided client)".into() }
    }
}

/// Turns an SDK error into a classified [`StoreError`]: 412 is a lost race; timeouts, throttling,
/// 5xx and store-wide refusals (403 credentials, 404 bucket) may pass and are retried; any other
/// 4xx is about this request itself and permanent.
fn request_err<E>(op: &'static str, bucket: &str, key: &str) -> impl FnOnce(SdkError<E, HttpResponse>) -> StoreError
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    let (bucket, key) = (bucket.to_owned(), key.to_owned());
    move |e| {
        let status = status_of(&e);
        let code = e.code().map(str::to_owned);
        let message = DisplayErrorContext(e).to_string();
        match (status, code.as_deref()) {
            (Some(412), _) | (Some(409), Some("ConditionalRequestConflict")) => {
                StoreError::PreconditionFailed { op, bucket, key }
            }
            (Some(status @ 400..=499), _) if !matches!(status, 403 | 404 | 408 | 429) => {
                StoreError::Refused { op, bucket, key, status, message }
            }
            _ => StoreError::Request { op, bucket, key, message },
        }
    }
}

fn status_of<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    match e {
        SdkError::ServiceError(s) => Some(s.raw().status().as_u16()),
        _ => None,
    }
}

fn parse_version(meta: Option<&HashMap<String, String>>) -> u64 {
    meta.and_then(|m| m.get(STORE_VERSION_METADATA)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The writer's checksum; `None` for objects without one (written by another tool).
fn parse_crc32c(meta: Option<&HashMap<String, String>>) -> Option<u32> {
    meta.and_then(|m| m.get(STORE_CRC32C_METADATA)).and_then(|v| u32::from_str_radix(v, 16).ok())
}

/// Our own metadata, kept out of the user's (and never taken from it).
fn is_ours(name: &str) -> bool {
    name.eq_ignore_ascii_case(STORE_VERSION_METADATA) || name.eq_ignore_ascii_case(STORE_CRC32C_METADATA)
}

fn user_metadata(meta: Option<&HashMap<String, String>>) -> std::collections::BTreeMap<String, String> {
    meta.into_iter().flatten().filter(|(k, _)| !is_ours(k)).map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect()
}

fn system_time(t: Option<&DateTime>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok()).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The object's size from `Content-Range: bytes a-b/size`.
fn total_size(content_range: Option<&str>) -> Option<u64> {
    content_range?.rsplit_once('/')?.1.parse().ok()
}

/// The attributes of a HeadObject or GetObject answer (both have the same accessors).
macro_rules! attrs_of {
    ($out:expr) => {
        ObjectAttrs {
            content_type: $out.content_type().map(str::to_owned),
            content_encoding: $out.content_encoding().map(str::to_owned),
            cache_control: $out.cache_control().map(str::to_owned),
            content_disposition: $out.content_disposition().map(str::to_owned),
            user_metadata: user_metadata($out.metadata()),
        }
    };
}

/// Sets the attributes, our metadata and SSE on a PutObject or CreateMultipartUpload request
/// (their builders have the same setters).
macro_rules! with_attrs {
    ($req:expr, $meta:expr, $attrs:expr, $sse:expr) => {{
        let mut req = $req
            .set_content_type($attrs.content_type.clone())
            .set_content_encoding($attrs.content_encoding.clone())
            .set_cache_control($attrs.cache_control.clone())
            .set_content_disposition($attrs.content_disposition.clone());
        for (k, v) in $attrs.user_metadata.iter().filter(|(k, _)| !is_ours(k)) {
            req = req.metadata(k, v);
        }
        req = req
            .metadata(STORE_VERSION_METADATA, $meta.version.to_string())
            .metadata(STORE_CRC32C_METADATA, format!("{:08x}", $meta.crc32c));
        if $sse {
            req = req.server_side_encryption(ServerSideEncryption::Aes256);
        }
        req
    }};
}

/// The object's attributes from a HeadObject or (ranged) GetObject answer, for an object of
/// `size` bytes (both have the same accessors).
macro_rules! info_of {
    ($out:expr, $size:expr) => {
        ObjectInfo {
            size: $size,
            // Every S3 store answers with an ETag; "*" (any object) is the safe fallback.
            etag: $out.e_tag().unwrap_or("*").to_owned(),
            s3_etag: None,
            version: parse_version($out.metadata()),
            last_modified: system_time($out.last_modified()),
            attrs: attrs_of!($out),
            crc32c: parse_crc32c($out.metadata()),
        }
    };
}

fn is_not_found<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    status_of(e) == Some(404) && e.code() != Some("NoSuchBucket")
}

fn body_err(
    op: &'static str,
    bucket: &str,
    key: &str,
) -> impl FnOnce(aws_smithy_types::byte_stream::error::Error) -> StoreError {
    let (bucket, key) = (bucket.to_owned(), key.to_owned());
    move |e| StoreError::Request { op, bucket, key, message: DisplayErrorContext(e).to_string() }
}

impl S3Store {
    /// A stream of `len` bytes of the file from `offset`, re-readable for retries.
    async fn file_body(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        offset: u64,
        len: u64,
    ) -> Result<ByteStream, StoreError> {
        ByteStream::read_from().path(path).offset(offset).length(Length::Exact(len)).build().await.map_err(|e| {
            StoreError::Io {
                op: "read",
                path: path.display().to_string(),
                source: std::io::Error::other(format!("{bucket}/{key}: {e}")),
            }
        })
    }

    /// Uploads the parts of an already created multipart upload (read from `start` of the file)
    /// and completes it under `cond`.
    #[allow(clippy::too_many_arguments)]
    async fn upload_parts(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        path: &Path,
        start: u64,
        part_sizes: &[u64],
        cond: Precondition<'_>,
    ) -> Result<(), StoreError> {
        let mut completed = Vec::with_capacity(part_sizes.len());
        let mut offset = start;
        for (i, &len) in part_sizes.iter().enumerate() {
            let number = i as i32 + 1;
            let body = self.file_body(bucket, key, path, offset, len).await?;
            let out = self
                .client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(len as i64)
                .body(body)
                .send()
                .await
                .map_err(request_err("UploadPart", bucket, key))?;
            completed
                .push(CompletedPart::builder().part_number(number).set_e_tag(out.e_tag().map(str::to_owned)).build());
            offset += len;
        }
        let req = self
            .client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(completed)).build());
        let req = match cond {
            Precondition::Absent => req.if_none_match("*"),
            Precondition::Matches(etag) => req.if_match(etag),
        };
        req.send().await.map_err(request_err("CompleteMultipartUpload", bucket, key))?;
        Ok(())
    }
}

/// What a ranged GET found.
enum Ranged {
    Missing,
    /// The object is empty: it has no byte 0 to range over (416).
    Unsatisfiable,
    /// Its attributes and the bytes asked for (fewer at its end), or `None` when it is larger
    /// than the range and they were not wanted.
    Got(Box<ObjectInfo>, Option<Bytes>),
}

impl S3Store {
    /// One GET of up to `len` bytes from `start`: the attributes, the size (from Content-Range)
    /// and the bytes. S3 cuts a range at the object's end itself, so no size is needed first.
    /// Of an object larger than the range the bytes are read only with `keep_larger`; left
    /// unread, they close the connection.
    async fn bytes_from(
        &self,
        bucket: &str,
        key: &str,
        start: u64,
        len: u64,
        if_match: Option<&str>,
        keep_larger: bool,
    ) -> Result<Ranged, StoreError> {
        if len == 0 {
            return Ok(Ranged::Unsatisfiable);
        }
        let last = start.saturating_add(len) - 1;
        let req = self.client.get_object().bucket(bucket).key(key).range(format!("bytes={start}-{last}"));
        let out = match req.set_if_match(if_match.map(str::to_owned)).send().await {
            Ok(out) => out,
            Err(e) if is_not_found(&e) => return Ok(Ranged::Missing),
            Err(e) if status_of(&e) == Some(416) && start == 0 => return Ok(Ranged::Unsatisfiable),
            Err(e) if status_of(&e) == Some(416) => {
                let size = match &e {
                    SdkError::ServiceError(s) => total_size(s.raw().headers().get("content-range")),
                    _ => None,
                };
                let (bucket, key) = (bucket.to_owned(), key.to_owned());
                return Err(StoreError::InvalidRange { bucket, key, start, end: start.saturating_add(len), size });
            }
            Err(e) => return Err(request_err("GET", bucket, key)(e)),
        };
        // A store that ignores the Range answers 200 with the whole object and no Content-Range.
        let (size, whole) = match out.content_range() {
            Some(r) => (
                total_size(Some(r)).ok_or_else(|| StoreError::Request {
                    op: "GET",
                    bucket: bucket.into(),
                    key: key.into(),
                    message: format!("unreadable Content-Range {r:?}"),
                })?,
                false,
            ),
            None => (out.content_length().unwrap_or(0).max(0) as u64, true),
        };
        let info = info_of!(out, size);
        if start >= size && !(start == 0 && size == 0) {
            // Only a store that ignored the Range gets here (S3 answers 416).
            let (bucket, key) = (bucket.to_owned(), key.to_owned());
            return Err(StoreError::InvalidRange {
                bucket,
                key,
                start,
                end: start.saturating_add(len),
                size: Some(size),
            });
        }
        if size - start > len && !keep_larger {
            return Ok(Ranged::Got(Box::new(info), None));
        }
        let data = out.body.collect().await.map_err(body_err("GET body", bucket, key))?.into_bytes();
        let want = (size - start).min(len);
        let data = if whole { data.slice(start.min(data.len() as u64) as usize..) } else { data };
        if (data.len() as u64) < want {
            return Err(StoreError::Request {
                op: "GET body",
                bucket: bucket.into(),
                key: key.into(),
                message: format!("asked for {want} bytes from byte {start}, got {}", data.len()),
            });
        }
        Ok(Ranged::Got(Box::new(info), Some(data.slice(..want as usize))))
    }
}

#[async_trait]
impl Store for S3Store {
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<StoredBlock>, StoreError> {
        let out = match self.client.get_object().bucket(bucket).key(key).send().await {
            Ok(out) => out,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(request_err("GET", bucket, key)(e)),
        };
        let version = parse_version(out.metadata());
        let recorded = parse_crc32c(out.metadata());
        let attrs = attrs_of!(out);
        let etag = out.e_tag().unwrap_or("*").to_owned();
        let last_modified = system_time(out.last_modified());
        let data = out.body.collect().await.map_err(body_err("GET body", bucket, key))?.into_bytes();
        let crc32c = verify_fetched(bucket, key, &data, recorded)?;
        // S3 keeps the S3 ETag as its own.
        Ok(Some(StoredBlock { data, version, crc32c, etag, s3_etag: None, last_modified, attrs }))
    }

    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Option<StoredRange>, StoreError> {
        if range.is_empty() {
            // No byte range to ask for: check the object (and the pin) by its attributes.
            let Some(info) = self.head(bucket, key).await? else { return Ok(None) };
            if if_match.is_some_and(|e| e != info.etag) {
                return Err(StoreError::PreconditionFailed { op: "GET", bucket: bucket.into(), key: key.into() });
            }
            check_range(bucket, key, &range, info.size)?;
            return Ok(Some(StoredRange { data: Bytes::new(), info }));
        }
        let req =
            self.client.get_object().bucket(bucket).key(key).range(format!("bytes={}-{}", range.start, range.end - 1));
        let out = match req.set_if_match(if_match.map(str::to_owned)).send().await {
            Ok(out) => out,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) if status_of(&e) == Some(416) => {
                let size = match &e {
                    SdkError::ServiceError(s) => total_size(s.raw().headers().get("content-range")),
                    _ => None,
                };
                let (bucket, key) = (bucket.to_owned(), key.to_owned());
                return Err(StoreError::InvalidRange { bucket, key, start: range.start, end: range.end, size });
            }
            Err(e) => return Err(request_err("GET range", bucket, key)(e)),
        };
        let size = total_size(out.content_range()).unwrap_or(0);
        let info = info_of!(out, size);
        // The store cuts a range that reaches past the end short: that is the caller's error.
        check_range(bucket, key, &range, size)?;
        let data = out.body.collect().await.map_err(body_err("GET range body", bucket, key))?.into_bytes();
        if data.len() as u64 != range.end - range.start {
            return Err(StoreError::Request {
                op: "GET range body",
                bucket: bucket.into(),
                key: key.into(),
                message: format!("asked for {} bytes, got {}", range.end - range.start, data.len()),
            });
        }
        Ok(Some(StoredRange { data, info }))
    }

    async fn get_small(&self, bucket: &str, key: &str, max: u64) -> Result<Option<SmallObject>, StoreError> {
        match self.bytes_from(bucket, key, 0, max, None, false).await? {
            Ranged::Missing => Ok(None),
            Ranged::Unsatisfiable => get_small_by_head(self, bucket, key, max).await,
            Ranged::Got(info, None) => Ok(Some(SmallObject::Large(*info))),
            Ranged::Got(info, Some(data)) => {
                let crc32c = verify_fetched(bucket, key, &data, info.crc32c)?;
                let ObjectInfo { etag, version, last_modified, attrs, .. } = *info;
                Ok(Some(SmallObject::Whole(StoredBlock {
                    data,
                    version,
                    crc32c,
                    etag,
                    s3_etag: None,
                    last_modified,
                    attrs,
                })))
            }
        }
    }

    async fn get_first(&self, bucket: &str, key: &str, len: u64) -> Result<Option<StoredRange>, StoreError> {
        match self.bytes_from(bucket, key, 0, len, None, true).await? {
            Ranged::Missing => Ok(None),
            Ranged::Unsatisfiable => get_first_by_head(self, bucket, key, len).await,
            Ranged::Got(info, data) => {
                let data = data.unwrap_or_default();
                if info.size <= len {
                    verify_fetched(bucket, key, &data, info.crc32c)?;
                }
                Ok(Some(StoredRange { data, info: *info }))
            }
        }
    }

    async fn get_block(
        &self,
        bucket: &str,
        key: &str,
        start: u64,
        len: u64,
        if_match: Option<&str>,
    ) -> Result<Option<StoredRange>, StoreError> {
        match self.bytes_from(bucket, key, start, len, if_match, true).await? {
            Ranged::Missing => Ok(None),
            Ranged::Unsatisfiable => get_block_by_head(self, bucket, key, start, len, if_match).await,
            Ranged::Got(info, data) => Ok(Some(StoredRange { data: data.unwrap_or_default(), info: *info })),
        }
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        match self.client.head_object().bucket(bucket).key(key).send().await {
            Ok(out) => Ok(Some(info_of!(out, out.content_length().unwrap_or(0).max(0) as u64))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(request_err("HEAD", bucket, key)(e)),
        }
    }

    async fn put_if(
        &self,
        bucket: &str,
        key: &str,
        data: Bytes,
        meta: ObjectMeta,
        attrs: &ObjectAttrs,
        cond: Precondition<'_>,
    ) -> Result<(), StoreError> {
        let req = self.client.put_object().bucket(bucket).key(key).body(ByteStream::from(data));
        let req = with_attrs!(req, meta, attrs, self.sse);
        let req = match cond {
            Precondition::Absent => req.if_none_match("*"),
            Precondition::Matches(etag) => req.if_match(etag),
        };
        req.send().await.map_err(request_err("PUT", bucket, key))?;
        Ok(())
    }

    async fn put_file_at_if(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        start: u64,
        part_sizes: &[u64],
        meta: ObjectMeta,
        attrs: &ObjectAttrs,
        cond: Precondition<'_>,
    ) -> Result<(), StoreError> {
        let len = tokio::fs::metadata(path)
            .await
            .map_err(|source| StoreError::Io { op: "stat", path: path.display().to_string(), source })?
            .len()
            .saturating_sub(start);
        check_parts(bucket, key, len, part_sizes)?;
        if let [only] = part_sizes {
            let body = self.file_body(bucket, key, path, start, *only).await?;
            let req = self.client.put_object().bucket(bucket).key(key).content_length(*only as i64).body(body);
            let req = with_attrs!(req, meta, attrs, self.sse);
            let req = match cond {
                Precondition::Absent => req.if_none_match("*"),
                Precondition::Matches(etag) => req.if_match(etag),
            };
            req.send().await.map_err(request_err("PUT", bucket, key))?;
            return Ok(());
        }
        let req = self.client.create_multipart_upload().bucket(bucket).key(key);
        let created = with_attrs!(req, meta, attrs, self.sse).send().await.map_err(request_err(
            "CreateMultipartUpload",
            bucket,
            key,
        ))?;
        let Some(upload_id) = created.upload_id().map(str::to_owned) else {
            let message = "CreateMultipartUpload answered without an upload id".to_owned();
            return Err(StoreError::Request {
                op: "CreateMultipartUpload",
                bucket: bucket.into(),
                key: key.into(),
                message,
            });
        };
        let done = self.upload_parts(bucket, key, &upload_id, path, start, part_sizes, cond).await;
        if done.is_err() {
            // Nothing of a failed upload may linger (parts cost storage until aborted).
            let abort = self.client.abort_multipart_upload().bucket(bucket).key(key).upload_id(&upload_id).send().await;
            if let Err(e) = abort {
                tracing::warn!(bucket, key, error = %DisplayErrorContext(e), "aborting a failed multipart upload failed; the bucket's lifecycle rule must remove it");
            }
        }
        done
    }

    /// Sends `If-Match`. AWS S3 honours it on DELETE; MinIO (as tested here) ignores it, so on
    /// MinIO a newer object written between the caller's HEAD and this DELETE can still be
    /// removed (see docs/adr/0001-durability-contract.md).
    async fn delete_if(&self, bucket: &str, key: &str, etag: &str) -> Result<(), StoreError> {
        match self.client.delete_object().bucket(bucket).key(key).if_match(etag).send().await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(request_err("DELETE", bucket, key)(e)),
        }
    }

    /// One ListObjectsV2 request, starting after `start_after`.
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        max_keys: u32,
    ) -> Result<ListPage, StoreError> {
        let req = self.client.list_objects_v2().bucket(bucket).prefix(prefix).max_keys(max_keys.min(1000) as i32);
        let page = req
            .set_start_after(start_after.map(str::to_owned))
            .send()
            .await
            .map_err(request_err("LIST", bucket, prefix))?;
        let objects: Vec<ListedObject> = page
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ListedObject {
                    key: o.key()?.to_owned(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    etag: o.e_tag().unwrap_or("*").to_owned(),
                    last_modified: system_time(o.last_modified()),
                })
            })
            .collect();
        let next_start_after = match page.is_truncated() {
            Some(true) => objects.last().map(|o| o.key.clone()),
            _ => None,
        };
        Ok(ListPage { objects: without_tombstones(objects), next_start_after })
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_object_size_comes_from_content_range() {
        assert_eq!(total_size(Some("bytes 0-9/1234")), Some(1234));
        assert_eq!(total_size(Some("bytes */77")), Some(77));
        assert_eq!(total_size(Some("bytes 0-9/*")), None);
        assert_eq!(total_size(None), None);
    }

    #[test]
    fn our_metadata_is_not_user_metadata() {
        let meta: HashMap<String, String> =
            [(STORE_VERSION_METADATA, "3"), ("Owner", "me"), (STORE_CRC32C_METADATA, "0000abcd")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        assert_eq!(user_metadata(Some(&meta)).into_iter().collect::<Vec<_>>(), [("owner".to_owned(), "me".to_owned())]);
    }
}
