//! Azure Blob Storage through its REST API (docs/adr/0005-gcs-and-azure-stores.md). A bucket is a
//! container; objects are block blobs.
//!
//! Conditions are the blob's ETag (`If-Match`, `If-None-Match: *`) on Put Blob, Put Block List,
//! ranged Get Blob and Delete Blob. A file is uploaded as blocks (Put Block, uncommitted and
//! invisible) and published by one Put Block List carrying the condition, so nothing is published
//! when the blob changed meanwhile. Block ids carry a random upload id, so concurrent uploads of a
//! name never mix blocks; a commit by another writer discards our uncommitted blocks, and the
//! resulting "invalid block list" is a lost race like a failed precondition. Azure has no abort:
//! blocks of a failed upload are dropped by Azure after a week.
//!
//! Metadata names must be C# identifiers on Azure: ours are `blockproxy_version` and
//! `blockproxy_crc32c`; user names that are not identifiers are stored as `bpx_<hex of the name>`
//! and decoded back ([`metadata`]).

use super::http::{check, client, encode_key, file_body, send_err, status_err, total_size};
use super::{
    ListPage, ListedObject, ObjectAttrs, ObjectInfo, ObjectMeta, Precondition, Store, StoreError, StoredBlock,
    StoredRange, check_parts, check_range, verify_fetched, without_tombstones,
};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue};
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

mod auth;
mod metadata;
pub use auth::AzureCredentials;

/// The REST API version we speak.
const API_VERSION: &str = "2021-08-06";
/// Listing continuations remembered (see [`AzureStore::list_page`]).
const MARKERS_KEPT: usize = 256;

#[derive(Debug, Clone)]
pub struct AzureStoreConfig {
    pub account: String,
    /// `None`: `https://{account}.blob.core.windows.net`; Azurite's
    /// `http://127.0.0.1:10000/{account}` otherwise.
    pub endpoint: Option<String>,
    pub credentials: AzureCredentials,
}

#[derive(Debug)]
pub struct AzureStore {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    account: String,
    credentials: AzureCredentials,
    /// (container, prefix, last listed key) -> Azure's opaque marker for the next page: Azure
    /// lists from a marker, not from a key, so the page after a key we returned resumes there.
    markers: Mutex<HashMap<(String, String, String), String>>,
    describe: String,
}

fn op_err(op: &'static str, bucket: &str, key: &str, message: String) -> StoreError {
    StoreError::Request { op, bucket: bucket.into(), key: key.into(), message }
}

impl AzureStore {
    pub fn new(cfg: AzureStoreConfig) -> anyhow::Result<Self> {
        let ep = cfg.endpoint.clone().unwrap_or_else(|| format!("https://{}.blob.core.windows.net", cfg.account));
        let endpoint = reqwest::Url::parse(ep.trim_end_matches('/'))
            .map_err(|e| anyhow::anyhow!("Azure endpoint {ep:?} is not a URL: {e}"))?;
        let describe =
            format!("azure endpoint={endpoint} account={} credentials={}", cfg.account, cfg.credentials.kind());
        Ok(Self {
            http: client(),
            endpoint,
            account: cfg.account,
            credentials: cfg.credentials,
            markers: Mutex::new(HashMap::new()),
            describe,
        })
    }

    fn url(&self, container: &str, blob: Option<&str>, query: &[(&str, &str)]) -> reqwest::Url {
        let mut path = format!("{}/{}", self.endpoint.path().trim_end_matches('/'), encode_key(container, false));
        if let Some(b) = blob {
            path.push('/');
            path.push_str(&encode_key(b, true));
        }
        let mut url = self.endpoint.clone();
        url.set_path(&path);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// Signs and sends one request. `body`: with its length (Shared Key signs it).
    #[allow(clippy::too_many_arguments)] // op, bucket and key only label errors
    async fn send(
        &self,
        op: &'static str,
        bucket: &str,
        key: &str,
        method: reqwest::Method,
        url: reqwest::Url,
        mut headers: HeaderMap,
        body: Option<(reqwest::Body, u64)>,
    ) -> Result<reqwest::Response, StoreError> {
        headers.insert("x-ms-version", HeaderValue::from_static(API_VERSION));
        headers.insert("x-ms-date", HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now())).expect("ascii"));
        let len = body.as_ref().map_or(0, |b| b.1);
        if body.is_some() {
            headers.insert("content-length", HeaderValue::from(len));
        }
        let url = self.credentials.authorize(&self.account, &method, url, &mut headers, len);
        let mut req = self.http.request(method, url).headers(headers);
        if let Some((b, _)) = body {
            req = req.body(b);
        }
        req.send().await.map_err(send_err(op, bucket, key))
    }

    /// An answer or, for a missing blob, `None`; a missing container is the store's problem.
    async fn found(
        op: &'static str,
        bucket: &str,
        key: &str,
        resp: reqwest::Response,
    ) -> Result<Option<reqwest::Response>, StoreError> {
        if resp.status() == 404 && error_code(&resp) != Some("ContainerNotFound") {
            return Ok(None);
        }
        check_azure(op, bucket, key, resp).await.map(Some)
    }

    async fn put_block_list(
        &self,
        bucket: &str,
        key: &str,
        ids: &[String],
        meta: ObjectMeta,
        attrs: &ObjectAttrs,
        cond: Precondition<'_>,
    ) -> Result<(), StoreError> {
        let mut xml = String::from(r#"<?xml version="1.0" encoding="utf-8"?><BlockList>"#);
        for id in ids {
            xml.push_str(&format!("<Latest>{id}</Latest>"));
        }
        xml.push_str("</BlockList>");
        let mut headers = write_headers(meta, attrs, cond, "x-ms-blob-")?;
        headers.insert("content-type", HeaderValue::from_static("application/xml"));
        let url = self.url(bucket, Some(key), &[("comp", "blocklist")]);
        let len = xml.len() as u64;
        let resp =
            self.send("PutBlockList", bucket, key, reqwest::Method::PUT, url, headers, Some((xml.into(), len))).await?;
        match check_azure("PutBlockList", bucket, key, resp).await {
            // Another writer committed the blob and so discarded our uncommitted blocks.
            Err(StoreError::Refused { status: 400, message, .. }) if message.contains("InvalidBlockList") => {
                Err(StoreError::PreconditionFailed { op: "PutBlockList", bucket: bucket.into(), key: key.into() })
            }
            other => other.map(drop),
        }
    }
}

fn error_code(resp: &reqwest::Response) -> Option<&str> {
    resp.headers().get("x-ms-error-code").and_then(|v| v.to_str().ok())
}

/// [`check`], also reading `If-None-Match: *` against an existing blob (409 BlobAlreadyExists) as
/// a lost race, and keeping Azure's error code in the message.
async fn check_azure(
    op: &'static str,
    bucket: &str,
    key: &str,
    resp: reqwest::Response,
) -> Result<reqwest::Response, StoreError> {
    match error_code(&resp).map(str::to_owned) {
        Some(code) if code == "BlobAlreadyExists" || code == "ConditionNotMet" => {
            Err(StoreError::PreconditionFailed { op, bucket: bucket.into(), key: key.into() })
        }
        Some(code) if !resp.status().is_success() => {
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            Err(status_err(op, bucket, key, status, format!("{code}: {}", body.chars().take(300).collect::<String>())))
        }
        _ => check(op, bucket, key, resp).await,
    }
}

/// Attribute, metadata and condition headers of a write. `prefix`: `x-ms-blob-` (Put Blob and
/// Put Block List both take the blob's properties so).
fn write_headers(
    meta: ObjectMeta,
    attrs: &ObjectAttrs,
    cond: Precondition<'_>,
    prefix: &str,
) -> Result<HeaderMap, StoreError> {
    let mut h = HeaderMap::new();
    let bad = |what: &str| StoreError::InvalidParts {
        bucket: String::new(),
        key: String::new(),
        message: format!("{what} is not a valid header value"),
    };
    for (name, value) in [
        ("content-type", &attrs.content_type),
        ("content-encoding", &attrs.content_encoding),
        ("cache-control", &attrs.cache_control),
        ("content-disposition", &attrs.content_disposition),
    ] {
        if let Some(v) = value {
            let value = HeaderValue::from_str(v).map_err(|_| bad(name))?;
            h.insert(
                reqwest::header::HeaderName::from_bytes(format!("{prefix}{name}").as_bytes()).expect("static"),
                value,
            );
        }
    }
    for (name, value) in metadata::encode(meta, &attrs.user_metadata) {
        let header = reqwest::header::HeaderName::from_bytes(format!("x-ms-meta-{name}").as_bytes())
            .map_err(|_| bad("a metadata name"))?;
        h.insert(header, HeaderValue::from_str(&value).map_err(|_| bad("a metadata value"))?);
    }
    match cond {
        Precondition::Absent => h.insert("if-none-match", HeaderValue::from_static("*")),
        Precondition::Matches(etag) => h.insert("if-match", HeaderValue::from_str(etag).map_err(|_| bad("an ETag"))?),
    };
    Ok(h)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// ETags quoted as everywhere else (listings send them bare).
fn quoted(etag: &str) -> String {
    if etag.starts_with('"') { etag.to_owned() } else { format!("\"{etag}\"") }
}

/// What a Get Blob or Get Blob Properties answer says of the blob. `size`: the whole blob's.
fn info_of(h: &HeaderMap, size: u64) -> ObjectInfo {
    let metadata::Ours { version, crc32c, s3_etag, user: user_metadata } = metadata::decode(
        h.iter().filter_map(|(k, v)| Some((k.as_str().strip_prefix("x-ms-meta-")?, v.to_str().ok()?))),
    );
    ObjectInfo {
        size,
        etag: quoted(header(h, "etag").unwrap_or("*")),
        s3_etag: s3_etag.map(|e| e.quoted()),
        version,
        last_modified: header(h, "last-modified")
            .and_then(|t| httpdate::parse_http_date(t).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH),
        attrs: ObjectAttrs {
            content_type: header(h, "content-type").map(str::to_owned),
            content_encoding: header(h, "content-encoding").map(str::to_owned),
            cache_control: header(h, "cache-control").map(str::to_owned),
            content_disposition: header(h, "content-disposition").map(str::to_owned),
            user_metadata,
        },
        crc32c,
    }
}

/// Block ids: the same length for every block of a blob (Azure requires it), unique per upload.
fn block_id(upload: u64, part: usize) -> String {
    B64.encode(format!("{upload:016x}-{part:05}"))
}

#[derive(Debug, serde::Deserialize)]
struct EnumerationResults {
    #[serde(rename = "Blobs", default)]
    blobs: Blobs,
    #[serde(rename = "NextMarker", default)]
    next_marker: Option<String>,
}

#[derive(Debug, serde::Deserialize, Default)]
struct Blobs {
    #[serde(rename = "Blob", default)]
    blob: Vec<ListedBlob>,
}

#[derive(Debug, serde::Deserialize)]
struct ListedBlob {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Properties")]
    properties: BlobProperties,
}

#[derive(Debug, serde::Deserialize)]
struct BlobProperties {
    #[serde(rename = "Last-Modified", default)]
    last_modified: String,
    #[serde(rename = "Etag", default)]
    etag: String,
    #[serde(rename = "Content-Length", default)]
    content_length: u64,
}

#[async_trait]
impl Store for AzureStore {
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<StoredBlock>, StoreError> {
        let url = self.url(bucket, Some(key), &[]);
        let resp = self.send("GET", bucket, key, reqwest::Method::GET, url, HeaderMap::new(), None).await?;
        let Some(resp) = Self::found("GET", bucket, key, resp).await? else { return Ok(None) };
        let size = header(resp.headers(), "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let info = info_of(resp.headers(), size);
        let data = resp.bytes().await.map_err(send_err("GET body", bucket, key))?;
        let crc32c = verify_fetched(bucket, key, &data, info.crc32c)?;
        let ObjectInfo { version, etag, s3_etag, last_modified, attrs, .. } = info;
        Ok(Some(StoredBlock { data, version, crc32c, etag, s3_etag, last_modified, attrs }))
    }

    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Option<StoredRange>, StoreError> {
        if range.is_empty() {
            let Some(info) = self.head(bucket, key).await? else { return Ok(None) };
            if if_match.is_some_and(|e| e != info.etag) {
                return Err(StoreError::PreconditionFailed { op: "GET", bucket: bucket.into(), key: key.into() });
            }
            check_range(bucket, key, &range, info.size)?;
            return Ok(Some(StoredRange { data: Bytes::new(), info }));
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-ms-range",
            HeaderValue::from_str(&format!("bytes={}-{}", range.start, range.end - 1)).expect("ascii"),
        );
        if let Some(etag) = if_match {
            headers.insert(
                "if-match",
                HeaderValue::from_str(etag).map_err(|_| op_err("GET", bucket, key, "bad ETag".into()))?,
            );
        }
        let url = self.url(bucket, Some(key), &[]);
        let resp = self.send("GET range", bucket, key, reqwest::Method::GET, url, headers, None).await?;
        if resp.status() == 416 {
            let size = total_size(header(resp.headers(), "content-range"));
            let (bucket, key) = (bucket.to_owned(), key.to_owned());
            return Err(StoreError::InvalidRange { bucket, key, start: range.start, end: range.end, size });
        }
        let Some(resp) = Self::found("GET range", bucket, key, resp).await? else { return Ok(None) };
        let size = total_size(header(resp.headers(), "content-range")).unwrap_or(0);
        let info = info_of(resp.headers(), size);
        check_range(bucket, key, &range, size)?;
        let data = resp.bytes().await.map_err(send_err("GET range body", bucket, key))?;
        if data.len() as u64 != range.end - range.start {
            let message = format!("asked for {} bytes, got {}", range.end - range.start, data.len());
            return Err(op_err("GET range body", bucket, key, message));
        }
        Ok(Some(StoredRange { data, info }))
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        let url = self.url(bucket, Some(key), &[]);
        let resp = self.send("HEAD", bucket, key, reqwest::Method::HEAD, url, HeaderMap::new(), None).await?;
        // A HEAD answer has no body, so the error code header is all there is.
        let Some(resp) = Self::found("HEAD", bucket, key, resp).await? else { return Ok(None) };
        let size = header(resp.headers(), "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(Some(info_of(resp.headers(), size)))
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
        let mut headers = write_headers(meta, attrs, cond, "x-ms-blob-").map_err(|e| with_key(e, bucket, key))?;
        headers.insert("x-ms-blob-type", HeaderValue::from_static("BlockBlob"));
        let url = self.url(bucket, Some(key), &[]);
        let len = data.len() as u64;
        let resp = self.send("PUT", bucket, key, reqwest::Method::PUT, url, headers, Some((data.into(), len))).await?;
        check_azure("PUT", bucket, key, resp).await.map(drop)
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
            let mut headers = write_headers(meta, attrs, cond, "x-ms-blob-").map_err(|e| with_key(e, bucket, key))?;
            headers.insert("x-ms-blob-type", HeaderValue::from_static("BlockBlob"));
            let url = self.url(bucket, Some(key), &[]);
            let body = file_body(path, start, *only).await?;
            let resp = self.send("PUT", bucket, key, reqwest::Method::PUT, url, headers, Some((body, *only))).await?;
            return check_azure("PUT", bucket, key, resp).await.map(drop);
        }
        let upload = rand::random::<u64>();
        let mut ids = Vec::with_capacity(part_sizes.len());
        let mut offset = start;
        for (i, &n) in part_sizes.iter().enumerate() {
            let id = block_id(upload, i);
            let url = self.url(bucket, Some(key), &[("comp", "block"), ("blockid", &id)]);
            let body = file_body(path, offset, n).await?;
            let resp = self
                .send("PutBlock", bucket, key, reqwest::Method::PUT, url, HeaderMap::new(), Some((body, n)))
                .await?;
            check_azure("PutBlock", bucket, key, resp).await?;
            ids.push(id);
            offset += n;
        }
        self.put_block_list(bucket, key, &ids, meta, attrs, cond).await.map_err(|e| with_key(e, bucket, key))
    }

    /// Azure honours `If-Match` on Delete Blob.
    fn deletes_are_conditional(&self) -> bool {
        true
    }

    async fn delete_if(&self, bucket: &str, key: &str, etag: &str) -> Result<(), StoreError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            "if-match",
            HeaderValue::from_str(etag).map_err(|_| op_err("DELETE", bucket, key, "bad ETag".into()))?,
        );
        let url = self.url(bucket, Some(key), &[]);
        let resp = self.send("DELETE", bucket, key, reqwest::Method::DELETE, url, headers, None).await?;
        Self::found("DELETE", bucket, key, resp).await.map(drop)
    }

    /// One List Blobs request. Azure resumes from its own marker, not from a key: the marker of
    /// each page we return is remembered under its last key, so paging through our own pages
    /// costs one request each; any other `start_after` lists from the prefix and skips.
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        max_keys: u32,
    ) -> Result<ListPage, StoreError> {
        let mut marker = start_after.and_then(|s| {
            self.markers.lock().expect("not poisoned").get(&(bucket.into(), prefix.into(), s.into())).cloned()
        });
        let max = max_keys.clamp(1, 5000).to_string();
        loop {
            let mut query =
                vec![("restype", "container"), ("comp", "list"), ("prefix", prefix), ("maxresults", max.as_str())];
            if let Some(m) = &marker {
                query.push(("marker", m));
            }
            let url = self.url(bucket, None, &query);
            let resp = self.send("LIST", bucket, prefix, reqwest::Method::GET, url, HeaderMap::new(), None).await?;
            let resp = check_azure("LIST", bucket, prefix, resp).await?;
            let text = resp.text().await.map_err(send_err("LIST body", bucket, prefix))?;
            let page: EnumerationResults = quick_xml::de::from_str(&text)
                .map_err(|e| op_err("LIST body", bucket, prefix, format!("unreadable listing: {e}")))?;
            let last = page.blobs.blob.last().map(|b| b.name.clone());
            let objects: Vec<ListedObject> = page
                .blobs
                .blob
                .into_iter()
                .filter(|b| start_after.is_none_or(|s| b.name.as_str() > s))
                .map(|b| ListedObject {
                    key: b.name,
                    size: b.properties.content_length,
                    etag: quoted(&b.properties.etag),
                    last_modified: httpdate::parse_http_date(&b.properties.last_modified)
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                })
                .collect();
            let next = page.next_marker.filter(|m| !m.is_empty());
            // Skipping towards an unknown start key: a page wholly before it is not worth returning.
            if objects.is_empty()
                && next.is_some()
                && start_after.is_some_and(|s| last.as_deref().is_some_and(|l| l <= s))
            {
                marker = next;
                continue;
            }
            let next_start_after = match (next, last) {
                (Some(m), Some(last)) => {
                    let mut markers = self.markers.lock().expect("not poisoned");
                    if markers.len() >= MARKERS_KEPT {
                        markers.clear();
                    }
                    markers.insert((bucket.into(), prefix.into(), last.clone()), m);
                    Some(last)
                }
                _ => None,
            };
            return Ok(ListPage { objects: without_tombstones(objects), next_start_after });
        }
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

/// Fills in the key of an error built before it was known.
fn with_key(e: StoreError, bucket: &str, key: &str) -> StoreError {
    match e {
        StoreError::InvalidParts { message, .. } => {
            StoreError::InvalidParts { bucket: bucket.into(), key: key.into(), message }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ids_have_one_length_per_upload() {
        let ids: Vec<_> = [0, 7, 9_999].iter().map(|&i| block_id(0xabc, i)).collect();
        assert!(ids.iter().all(|id| id.len() == ids[0].len()), "{ids:?}");
        assert_ne!(ids[0], block_id(0xabd, 0), "another upload's ids differ");
    }

    #[test]
    fn listings_parse() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?><EnumerationResults ServiceEndpoint="x" ContainerName="c"><Prefix>p/</Prefix><MaxResults>2</MaxResults><Blobs><Blob><Name>p/a &amp; b</Name><Properties><Last-Modified>Thu, 26 Nov 2026 15:00:00 GMT</Last-Modified><Etag>0x8DD1</Etag><Content-Length>5</Content-Length></Properties></Blob></Blobs><NextMarker>m1</NextMarker></EnumerationResults>"#;
        let page: EnumerationResults = quick_xml::de::from_str(xml).unwrap();
        assert_eq!(page.blobs.blob[0].name, "p/a & b");
        assert_eq!((page.blobs.blob[0].properties.content_length, page.next_marker.as_deref()), (5, Some("m1")));
        let empty: EnumerationResults =
            quick_xml::de::from_str("<EnumerationResults><Blobs /><NextMarker /></EnumerationResults>").unwrap();
        assert!(empty.blobs.blob.is_empty());
    }
}
