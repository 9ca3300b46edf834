//! The object-model requests of one proxy (ADR 0004): striped block reads pinned to a store
//! ETag, multipart staging on the home proxy, and paged store listings.

use super::ClientError;
use super::chunks::Chunks;
use super::transport::{AttemptError, ProxyCall, check, classify, read_chunks};
use crate::protocol::{
    self, BLOCK_QUERY, BLOCK_SIZE_QUERY, BlockKey, CHECKSUM_HEADER, Checksum, CompleteUpload, ObjectAttrs,
    PART_NUMBER_QUERY, StoreObjects, UPLOAD_ID_QUERY, UploadCompleted, UploadCreated, UploadParts,
};
use bytes::Bytes;
use reqwest::StatusCode;
use std::ops::Range;

fn changed(key: &BlockKey) -> AttemptError {
    AttemptError::Rejected(ClientError::Changed { key: key.to_string() })
}

impl ProxyCall<'_> {
    fn upload_url(&self, key: &BlockKey) -> String {
        format!("{}{}", self.base, protocol::upload_path(self.volume, key))
    }

    /// Bytes `part` (object offsets, inside the block; the whole block when `None`) of block
    /// `index` of the clean object `key`, cut at `block_size`, as the store object with
    /// `store_etag` holds it. A changed (or vanished) object is [`ClientError::Changed`].
    pub async fn get_block(
        &self,
        key: &BlockKey,
        index: u64,
        block_size: u64,
        store_etag: &str,
        part: Option<Range<u64>>,
    ) -> Result<Chunks, AttemptError> {
        let mut req = self
            .http
            .get(self.url(key))
            .query(&[(BLOCK_QUERY, index), (BLOCK_SIZE_QUERY, block_size)])
            .header(reqwest::header::IF_MATCH, store_etag)
            .bearer_auth(self.token)
            .timeout(self.timeout);
        if let Some(p) = part {
            req = req.header(reqwest::header::RANGE, format!("bytes={}-{}", p.start, p.end - 1));
        }
        let resp = req.send().await.map_err(classify)?;
        match resp.status() {
            StatusCode::PRECONDITION_FAILED | StatusCode::NOT_FOUND => return Err(changed(key)),
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let body = resp.text().await.unwrap_or_default();
                return Err(AttemptError::Rejected(ClientError::RangeNotSatisfiable(body)));
            }
            _ => {}
        }
        let resp = check(resp, "GET block").await?;
        let checksum: Option<Checksum> =
            resp.headers().get(CHECKSUM_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        read_chunks(resp, checksum.as_ref(), || format!("GET block {index}")).await
    }

    /// Starts a multipart upload on this proxy (the key's home); returns the proxy's upload id.
    pub async fn create_upload(&self, key: &BlockKey, attrs: &ObjectAttrs) -> Result<String, AttemptError> {
        let mut req = self.http.post(self.upload_url(key)).bearer_auth(self.token).timeout(self.timeout);
        for (name, value) in attrs.to_headers() {
            req = req.header(name, value);
        }
        let resp = check(req.send().await.map_err(classify)?, "create upload").await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(AttemptError::Rejected(ClientError::Rejected {
                status: 404,
                message: "create upload: the proxy does not serve this volume".into(),
            }));
        }
        let created: UploadCreated = resp
            .json()
            .await
            .map_err(|e| AttemptError::Unavailable(format!("create upload: answer is not valid JSON: {e}")))?;
        Ok(created.upload_id)
    }

    /// Stages one part; returns its ETag (quoted MD5).
    pub async fn upload_part(&self, key: &BlockKey, id: &str, part: u32, data: Bytes) -> Result<String, AttemptError> {
        let resp = self
            .http
            .put(self.upload_url(key))
            .query(&[(UPLOAD_ID_QUERY, id), (PART_NUMBER_QUERY, &part.to_string())])
            .header(CHECKSUM_HEADER, Checksum::crc32c(&data).to_string())
            .bearer_auth(self.token)
            .timeout(self.timeout)
            .body(data)
            .send()
            .await
            .map_err(classify)?;
        let resp = no_such_upload(check(resp, "upload part").await?, id)?;
        super::transport::etag_of(resp.headers())
            .ok_or_else(|| AttemptError::Unavailable("upload part: the proxy answered without an ETag".into()))
    }

    pub async fn list_parts(&self, key: &BlockKey, id: &str) -> Result<UploadParts, AttemptError> {
        let resp = self
            .http
            .get(self.upload_url(key))
            .query(&[(UPLOAD_ID_QUERY, id)])
            .bearer_auth(self.token)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(classify)?;
        let resp = no_such_upload(check(resp, "list parts").await?, id)?;
        resp.json().await.map_err(|e| AttemptError::Unavailable(format!("list parts: answer is not valid JSON: {e}")))
    }

    /// Assembles the staged parts into the object and commits it (acknowledged like a PUT).
    pub async fn complete_upload(
        &self,
        key: &BlockKey,
        id: &str,
        parts: &CompleteUpload,
    ) -> Result<UploadCompleted, AttemptError> {
        let resp = self
            .http
            .post(self.upload_url(key))
            .query(&[(UPLOAD_ID_QUERY, id)])
            .json(parts)
            .bearer_auth(self.token)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(classify)?;
        if resp.status() == StatusCode::CONFLICT {
            return Err(AttemptError::Superseded(super::info::version_of(resp.headers())));
        }
        let resp = no_such_upload(check(resp, "complete upload").await?, id)?;
        resp.json()
            .await
            .map_err(|e| AttemptError::Unavailable(format!("complete upload: answer is not valid JSON: {e}")))
    }

    pub async fn abort_upload(&self, key: &BlockKey, id: &str) -> Result<(), AttemptError> {
        let resp = self
            .http
            .delete(self.upload_url(key))
            .query(&[(UPLOAD_ID_QUERY, id)])
            .bearer_auth(self.token)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(classify)?;
        no_such_upload(check(resp, "abort upload").await?, id).map(drop)
    }

    /// One page of the store's objects under `prefix`, after `start_after`, at most `max_keys`.
    pub async fn store_objects_page(
        &self,
        prefix: &str,
        start_after: &str,
        max_keys: usize,
    ) -> Result<StoreObjects, AttemptError> {
        let resp = self
            .http
            .get(format!("{}{}", self.base, protocol::store_objects_path(self.volume)))
            .query(&[("prefix", prefix), ("startAfter", start_after), ("maxKeys", &max_keys.to_string())])
            .bearer_auth(self.token)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(classify)?;
        let resp = check(resp, "list store objects").await?;
        resp.json()
            .await
            .map_err(|e| AttemptError::Unavailable(format!("list store objects: answer is not valid JSON: {e}")))
    }
}

/// `check` lets 404 through (a missing object is an answer); for an upload it is an error.
fn no_such_upload(resp: reqwest::Response, id: &str) -> Result<reqwest::Response, AttemptError> {
    if resp.status() == StatusCode::NOT_FOUND {
        Err(AttemptError::Rejected(ClientError::NoSuchUpload(id.to_owned())))
    } else {
        Ok(resp)
    }
}
