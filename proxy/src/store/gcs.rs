//! Google Cloud Storage through its JSON API (docs/adr/0005-gcs-and-azure-stores.md).
//!
//! An object's ETag here is its generation, quoted (`"1732634400123456"`): GCS gives every write
//! of a name a new generation, and its preconditions (`ifGenerationMatch`, `0` for "absent") name
//! generations, so conditional writes, pinned reads and conditional deletes all use it. Reads pin
//! the generation itself (`generation=`), so a replaced object is never mixed in.
//!
//! A file is uploaded as one resumable upload whose initiating request carries the precondition;
//! GCS evaluates it when the upload is finalised, so the object is published only if nothing
//! changed it meanwhile (and nothing is published otherwise). Attributes are the object's own
//! fields (contentType, contentEncoding, cacheControl, contentDisposition) and `metadata`; our
//! version and checksum ride in `metadata` as on S3.

use super::http::{check, client, encode_key, file_body, send_err, status_err};
use super::{
    ListPage, ListedObject, ObjectAttrs, ObjectInfo, ObjectMeta, Precondition, S3ETag, Store, StoreError, StoredBlock,
    StoredRange, check_parts, check_range, verify_fetched, without_tombstones,
};
use async_trait::async_trait;
use blockproxy_protocol::{STORE_CRC32C_METADATA, STORE_S3_ETAG_METADATA, STORE_VERSION_METADATA};
use bytes::Bytes;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::time::SystemTime;

mod auth;
pub use auth::GcsCredentials;

/// The public endpoint.
pub const GCS_ENDPOINT: &str = "https://storage.googleapis.com";
/// Resumable upload chunks must be multiples of 256 KiB (but the last).
const CHUNK_SIZE: u64 = 32 * 256 * 1024;

#[derive(Debug, Clone)]
pub struct GcsStoreConfig {
    /// `None`: [`GCS_ENDPOINT`]; an emulator such as fake-gcs-server otherwise.
    pub endpoint: Option<String>,
    pub credentials: GcsCredentials,
}

#[derive(Debug, Clone)]
pub struct GcsStore {
    http: reqwest::Client,
    endpoint: String,
    auth: auth::Auth,
    describe: String,
}

impl GcsStore {
    pub fn new(cfg: GcsStoreConfig) -> Self {
        let endpoint = cfg.endpoint.clone().unwrap_or_else(|| GCS_ENDPOINT.to_owned()).trim_end_matches('/').to_owned();
        let describe = format!("gcs endpoint={endpoint} credentials={}", cfg.credentials.describe());
        let http = client();
        Self { auth: auth::Auth::new(cfg.credentials, http.clone()), http, endpoint, describe }
    }

    fn object_url(&self, bucket: &str, key: &str) -> String {
        format!("{}/storage/v1/b/{}/o/{}", self.endpoint, encode_key(bucket, false), encode_key(key, false))
    }

    fn upload_url(&self, bucket: &str) -> String {
        format!("{}/upload/storage/v1/b/{}/o", self.endpoint, encode_key(bucket, false))
    }

    async fn send(
        &self,
        op: &'static str,
        bucket: &str,
        key: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, StoreError> {
        let req = match self.auth.token().await.map_err(|message| StoreError::Request {
            op,
            bucket: bucket.into(),
            key: key.into(),
            message,
        })? {
            Some(token) => req.bearer_auth(token),
            None => req,
        };
        req.send().await.map_err(send_err(op, bucket, key))
    }

    /// The object's resource, or `None` when it does not exist.
    async fn resource(&self, bucket: &str, key: &str) -> Result<Option<Resource>, StoreError> {
        let resp = self.send("HEAD", bucket, key, self.http.get(self.object_url(bucket, key))).await?;
        let Some(resp) = not_found_is_none("HEAD", bucket, key, resp).await? else { return Ok(None) };
        let res: Resource = resp.json().await.map_err(send_err("HEAD body", bucket, key))?;
        Ok(Some(res))
    }

    /// The media of generation `generation`, `range` of it when given. `Ok(None)`: that
    /// generation is gone.
    async fn media(
        &self,
        bucket: &str,
        key: &str,
        generation: u64,
        range: Option<&Range<u64>>,
    ) -> Result<Option<reqwest::Response>, StoreError> {
        let gen_s = generation.to_string();
        // `generation` reads exactly that write; `ifGenerationMatch` makes GCS say 412 rather than
        // 404 when it was replaced. Accept-Encoding keeps gzip objects as stored (no transcoding).
        let mut req = self
            .http
            .get(self.object_url(bucket, key))
            .query(&[("alt", "media"), ("generation", gen_s.as_str()), ("ifGenerationMatch", gen_s.as_str())])
            .header("accept-encoding", "gzip");
        if let Some(r) = range {
            req = req.header("range", format!("bytes={}-{}", r.start, r.end - 1));
        }
        let resp = self.send("GET", bucket, key, req).await?;
        not_found_is_none("GET", bucket, key, resp).await
    }

    /// Starts a resumable upload published under `cond`; its session URL.
    async fn start_resumable(
        &self,
        bucket: &str,
        key: &str,
        len: u64,
        meta: ObjectMeta,
        attrs: &ObjectAttrs,
        cond: Precondition<'_>,
    ) -> Result<String, StoreError> {
        let Some(if_gen) = if_generation(cond) else { return Err(lost("upload", bucket, key)) };
        let req = self
            .http
            .post(self.upload_url(bucket))
            .query(&[("uploadType", "resumable"), ("name", key), ("ifGenerationMatch", &if_gen)])
            .header("x-upload-content-length", len)
            .header("x-upload-content-type", attrs.content_type.as_deref().unwrap_or("application/octet-stream"))
            .json(&resource_for(key, meta, attrs));
        let resp = check("start upload", bucket, key, self.send("start upload", bucket, key, req).await?).await?;
        resp.headers().get("location").and_then(|l| l.to_str().ok()).map(str::to_owned).ok_or_else(|| {
            StoreError::Request {
                op: "start upload",
                bucket: bucket.into(),
                key: key.into(),
                message: "no session location in the answer".into(),
            }
        })
    }

    /// Sends the file in chunks; the last one finalises the object (and checks the precondition).
    /// `len` bytes of the file from `start`.
    #[allow(clippy::too_many_arguments)] // bucket and key only label errors
    async fn upload_chunks(
        &self,
        bucket: &str,
        key: &str,
        session: &str,
        path: &Path,
        start: u64,
        len: u64,
    ) -> Result<(), StoreError> {
        let mut offset = 0;
        loop {
            let n = CHUNK_SIZE.min(len - offset);
            let last = offset + n == len;
            let range = match (n, last) {
                (0, _) => format!("bytes */{len}"),
                (_, true) => format!("bytes {}-{}/{len}", offset, offset + n - 1),
                (_, false) => format!("bytes {}-{}/*", offset, offset + n - 1),
            };
            let body = file_body(path, start + offset, n).await?;
            let req = self.http.put(session).header("content-range", range).header("content-length", n).body(body);
            let resp = self.send("upload chunk", bucket, key, req).await?;
            // 308: the chunk was taken, more expected.
            if resp.status() != 308 || last {
                check("upload chunk", bucket, key, resp).await?;
            }
            offset += n;
            if last {
                return Ok(());
            }
        }
    }
}

/// The `ifGenerationMatch` value for a condition; `None` when an ETag is not one of ours (it can
/// never match).
fn if_generation(cond: Precondition<'_>) -> Option<String> {
    match cond {
        Precondition::Absent => Some("0".into()),
        Precondition::Matches(etag) => generation_of(etag).map(|g| g.to_string()),
    }
}

fn generation_of(etag: &str) -> Option<u64> {
    etag.trim_matches('"').parse().ok()
}

fn lost(op: &'static str, bucket: &str, key: &str) -> StoreError {
    StoreError::PreconditionFailed { op, bucket: bucket.into(), key: key.into() }
}

/// A successful answer, `None` for a missing object, an error otherwise. GCS answers 404 for a
/// missing bucket too: that is the store's problem (retried), not a missing object.
async fn not_found_is_none(
    op: &'static str,
    bucket: &str,
    key: &str,
    resp: reqwest::Response,
) -> Result<Option<reqwest::Response>, StoreError> {
    if resp.status() != 404 {
        return check(op, bucket, key, resp).await.map(Some);
    }
    let body = resp.text().await.unwrap_or_default();
    if body.contains("bucket does not exist") {
        return Err(status_err(op, bucket, key, 404, body));
    }
    Ok(None)
}

/// The fields of an object resource we use.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Resource {
    #[serde(default)]
    name: String,
    #[serde(default, deserialize_with = "number_string")]
    generation: u64,
    #[serde(default, deserialize_with = "number_string")]
    size: u64,
    #[serde(default)]
    updated: Option<String>,
    content_type: Option<String>,
    content_encoding: Option<String>,
    cache_control: Option<String>,
    content_disposition: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

/// GCS sends int64 fields as JSON strings.
fn number_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        S(String),
        N(u64),
    }
    match N::deserialize(d)? {
        N::S(s) => s.parse().map_err(serde::de::Error::custom),
        N::N(n) => Ok(n),
    }
}

impl Resource {
    fn etag(&self) -> String {
        format!("\"{}\"", self.generation)
    }

    fn info(&self) -> ObjectInfo {
        let meta = self.metadata.as_ref();
        ObjectInfo {
            size: self.size,
            etag: self.etag(),
            s3_etag: meta
                .and_then(|m| m.get(STORE_S3_ETAG_METADATA))
                .and_then(|e| S3ETag::parse(e))
                .map(|e| e.quoted()),
            version: meta.and_then(|m| m.get(STORE_VERSION_METADATA)).and_then(|v| v.parse().ok()).unwrap_or(0),
            last_modified: self.last_modified(),
            attrs: ObjectAttrs {
                content_type: self.content_type.clone(),
                content_encoding: self.content_encoding.clone(),
                cache_control: self.cache_control.clone(),
                content_disposition: self.content_disposition.clone(),
                user_metadata: meta
                    .into_iter()
                    .flatten()
                    .filter(|(k, _)| !is_ours(k))
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                    .collect(),
            },
            crc32c: meta.and_then(|m| m.get(STORE_CRC32C_METADATA)).and_then(|v| u32::from_str_radix(v, 16).ok()),
        }
    }

    fn last_modified(&self) -> SystemTime {
        self.updated.as_deref().and_then(|t| humantime::parse_rfc3339_weak(t).ok()).unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

fn is_ours(name: &str) -> bool {
    [STORE_VERSION_METADATA, STORE_CRC32C_METADATA, STORE_S3_ETAG_METADATA].iter().any(|o| name.eq_ignore_ascii_case(o))
}

/// The object resource a write sends: attributes, user metadata and ours.
fn resource_for(key: &str, meta: ObjectMeta, attrs: &ObjectAttrs) -> serde_json::Value {
    let mut metadata: serde_json::Map<String, serde_json::Value> =
        attrs.user_metadata.iter().filter(|(k, _)| !is_ours(k)).map(|(k, v)| (k.clone(), v.clone().into())).collect();
    metadata.insert(STORE_VERSION_METADATA.into(), meta.version.to_string().into());
    metadata.insert(STORE_CRC32C_METADATA.into(), format!("{:08x}", meta.crc32c).into());
    if let Some(etag) = meta.s3_etag {
        metadata.insert(STORE_S3_ETAG_METADATA.into(), etag.to_string().into());
    }
    let mut res = serde_json::json!({ "name": key, "metadata": metadata });
    for (field, value) in [
        ("contentType", &attrs.content_type),
        ("contentEncoding", &attrs.content_encoding),
        ("cacheControl", &attrs.cache_control),
        ("contentDisposition", &attrs.content_disposition),
    ] {
        if let Some(v) = value {
            res[field] = v.clone().into();
        }
    }
    res
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListAnswer {
    #[serde(default)]
    items: Vec<Resource>,
    next_page_token: Option<String>,
}

#[async_trait]
impl Store for GcsStore {
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<StoredBlock>, StoreError> {
        // The resource, then exactly its generation's bytes; a replacement in between is read
        // again (bounded: a key rewritten that fast is retried by the caller).
        for _ in 0..4 {
            let Some(res) = self.resource(bucket, key).await? else { return Ok(None) };
            let resp = match self.media(bucket, key, res.generation, None).await {
                Ok(Some(resp)) => resp,
                Ok(None) | Err(StoreError::PreconditionFailed { .. }) => continue,
                Err(e) => return Err(e),
            };
            let data = resp.bytes().await.map_err(send_err("GET body", bucket, key))?;
            let info = res.info();
            let crc32c = verify_fetched(bucket, key, &data, info.crc32c)?;
            return Ok(Some(StoredBlock {
                data,
                version: info.version,
                crc32c,
                etag: info.etag,
                s3_etag: info.s3_etag,
                last_modified: info.last_modified,
                attrs: info.attrs,
            }));
        }
        Err(StoreError::Contended { op: "GET", bucket: bucket.into(), key: key.into(), attempts: 4 })
    }

    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Option<StoredRange>, StoreError> {
        for _ in 0..4 {
            let Some(res) = self.resource(bucket, key).await? else { return Ok(None) };
            let info = res.info();
            if if_match.is_some_and(|e| e != info.etag) {
                return Err(lost("GET", bucket, key));
            }
            check_range(bucket, key, &range, info.size)?;
            if range.is_empty() {
                return Ok(Some(StoredRange { data: Bytes::new(), info }));
            }
            let resp = match self.media(bucket, key, res.generation, Some(&range)).await {
                Ok(Some(resp)) => resp,
                // The generation just seen is gone: replaced (or deleted) since.
                Ok(None) | Err(StoreError::PreconditionFailed { .. }) if if_match.is_some() => {
                    return Err(lost("GET", bucket, key));
                }
                Ok(None) | Err(StoreError::PreconditionFailed { .. }) => continue,
                Err(e) => return Err(e),
            };
            let whole = range.start == 0 && range.end == info.size;
            if resp.status() != 206 && !whole {
                let message = format!("asked for a range, got HTTP {}", resp.status());
                return Err(StoreError::Request { op: "GET range", bucket: bucket.into(), key: key.into(), message });
            }
            let data = resp.bytes().await.map_err(send_err("GET range body", bucket, key))?;
            if data.len() as u64 != range.end - range.start {
                return Err(StoreError::Request {
                    op: "GET range body",
                    bucket: bucket.into(),
                    key: key.into(),
                    message: format!("asked for {} bytes, got {}", range.end - range.start, data.len()),
                });
            }
            return Ok(Some(StoredRange { data, info }));
        }
        Err(StoreError::Contended { op: "GET range", bucket: bucket.into(), key: key.into(), attempts: 4 })
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        Ok(self.resource(bucket, key).await?.map(|r| r.info()))
    }

    /// One multipart (metadata + media) upload under the precondition.
    async fn put_if(
        &self,
        bucket: &str,
        key: &str,
        data: Bytes,
        meta: ObjectMeta,
        attrs: &ObjectAttrs,
        cond: Precondition<'_>,
    ) -> Result<(), StoreError> {
        let Some(if_gen) = if_generation(cond) else { return Err(lost("PUT", bucket, key)) };
        let boundary = format!("blockproxy-{:016x}", rand::random::<u64>());
        let mut body = Vec::with_capacity(data.len() + 1024);
        body.extend_from_slice(
            format!("--{boundary}\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(resource_for(key, meta, attrs).to_string().as_bytes());
        // The media part's type too: some servers (fake-gcs-server) take it from there.
        let media_type = attrs.content_type.as_deref().unwrap_or("application/octet-stream");
        body.extend_from_slice(format!("\r\n--{boundary}\r\ncontent-type: {media_type}\r\n\r\n").as_bytes());
        body.extend_from_slice(&data);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let req = self
            .http
            .post(self.upload_url(bucket))
            .query(&[("uploadType", "multipart"), ("ifGenerationMatch", &if_gen)])
            .header("content-type", format!("multipart/related; boundary={boundary}"))
            .body(body);
        check("PUT", bucket, key, self.send("PUT", bucket, key, req).await?).await?;
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
        // GCS has no parts: the whole file goes through one resumable upload in fixed chunks.
        let session = self.start_resumable(bucket, key, len, meta, attrs, cond).await?;
        let done = self.upload_chunks(bucket, key, &session, path, start, len).await;
        if done.is_err() {
            // An unfinished session holds nothing visible; cancelling frees it now rather than in
            // a week.
            let _ = self.send("cancel upload", bucket, key, self.http.delete(&session)).await;
        }
        done
    }

    /// `ifGenerationMatch` (and `generation`) make GCS refuse a delete of a newer write.
    fn deletes_are_conditional(&self) -> bool {
        true
    }

    async fn delete_if(&self, bucket: &str, key: &str, etag: &str) -> Result<(), StoreError> {
        let Some(generation) = generation_of(etag) else { return Err(lost("DELETE", bucket, key)) };
        let g = generation.to_string();
        // `generation` deletes only that write (a newer one answers 404 and stays);
        // `ifGenerationMatch` says 412 instead where GCS supports it.
        let req = self
            .http
            .delete(self.object_url(bucket, key))
            .query(&[("generation", g.as_str()), ("ifGenerationMatch", g.as_str())]);
        let resp = self.send("DELETE", bucket, key, req).await?;
        if resp.status() == 404 {
            // That generation is gone: deleted (done), or replaced by a newer one (which stays).
            return match self.resource(bucket, key).await? {
                Some(now) if now.generation != generation => Err(lost("DELETE", bucket, key)),
                _ => Ok(()),
            };
        }
        check("DELETE", bucket, key, resp).await?;
        Ok(())
    }

    /// One objects.list request from `startOffset` (inclusive, so the `start_after` key itself
    /// is dropped).
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        max_keys: u32,
    ) -> Result<ListPage, StoreError> {
        // One more than asked, as the start key itself may come back.
        let max = (max_keys.clamp(1, 1000) + 1).to_string();
        let mut query = vec![("prefix", prefix), ("maxResults", max.as_str())];
        if let Some(s) = start_after {
            query.push(("startOffset", s));
        }
        let req =
            self.http.get(format!("{}/storage/v1/b/{}/o", self.endpoint, encode_key(bucket, false))).query(&query);
        let resp = check("LIST", bucket, prefix, self.send("LIST", bucket, prefix, req).await?).await?;
        let answer: ListAnswer = resp.json().await.map_err(send_err("LIST body", bucket, prefix))?;
        let mut objects: Vec<ListedObject> = answer
            .items
            .iter()
            .filter(|r| Some(r.name.as_str()) != start_after)
            .map(|r| ListedObject {
                key: r.name.clone(),
                size: r.size,
                etag: r.etag(),
                last_modified: r.last_modified(),
            })
            .collect();
        let mut truncated = answer.next_page_token.is_some();
        if objects.len() > max_keys as usize {
            objects.truncate(max_keys as usize);
            truncated = true;
        }
        let next_start_after = if truncated { objects.last().map(|o| o.key.clone()) } else { None };
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
    fn generations_are_the_etags() {
        assert_eq!(generation_of("\"1732634400123456\""), Some(1732634400123456));
        assert_eq!(generation_of("\"d41d8cd98f00b204e9800998ecf8427e\""), None);
        assert_eq!(if_generation(Precondition::Absent).as_deref(), Some("0"));
        assert_eq!(if_generation(Precondition::Matches("\"7\"")).as_deref(), Some("7"));
    }

    #[test]
    fn resources_parse_gcs_string_numbers_and_split_our_metadata() {
        let res: Resource = serde_json::from_str(
            r#"{"name":"k","generation":"12","size":"5","updated":"2026-11-26T15:00:00.123Z",
                "contentType":"text/plain","metadata":{"blockproxy-version":"3","blockproxy-crc32c":"0000abcd","Owner":"me"}}"#,
        )
        .unwrap();
        let info = res.info();
        assert_eq!((info.size, info.etag.as_str(), info.version, info.crc32c), (5, "\"12\"", 3, Some(0xabcd)));
        assert_eq!(info.attrs.user_metadata.into_iter().collect::<Vec<_>>(), [("owner".to_owned(), "me".to_owned())]);
        assert_ne!(info.last_modified, SystemTime::UNIX_EPOCH);
    }
}
