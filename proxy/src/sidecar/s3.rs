//! The S3-compatible frontend on top of [`Client`](crate::client::Client), built on `s3s`
//! (docs/adr/0004-object-model.md):
//!
//! - The bucket name is the volume id: `s3://<volume-id>/<key>`, any S3 key. CreateBucket of that
//!   bucket succeeds (it exists), any other bucket is `NoSuchBucket`.
//! - Objects of any size: reads stream the object's blocks with a bounded read-ahead; single PUTs
//!   over one part, and copies, become multipart uploads on the key's home proxy; an S3 client's
//!   own multipart uploads are staged there part by part.
//! - ETags are S3's (MD5, or `md5(md5s)-N` for N parts); attributes and user metadata round-trip.
//! - Operations not listed here answer s3s's `NotImplemented`, which names the operation.

use super::conditions::Conditions;
use super::errors::map_err;
use super::listing::{self, Listed};
use super::writes::{Body, PartReader, part_size_for, write_object};
use crate::client::{Client, ObjectInfo, ObjectRead, Upload};
use crate::protocol::{
    BlockKey, CompletePart, CompleteUpload, MAX_OBJECT_SIZE, MAX_SINGLE_PUT_SIZE, NameError, ObjectAttrs,
};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use std::time::{SystemTime, UNIX_EPOCH};

pub struct VolumeS3 {
    client: Client,
    max_part_size: u64,
}

impl VolumeS3 {
    pub fn new(client: Client, max_part_size: u64) -> Self {
        Self { client, max_part_size }
    }

    fn check_bucket(&self, bucket: &str) -> S3Result<()> {
        if bucket == self.client.volume().as_str() {
            Ok(())
        } else {
            Err(s3_error!(
                NoSuchBucket,
                "this endpoint serves only bucket {:?} (the volume id)",
                self.client.volume().as_str()
            ))
        }
    }

    fn user_key(&self, bucket: &str, key: &str) -> S3Result<BlockKey> {
        self.check_bucket(bucket)?;
        let max = self.client.max_key_len();
        if key.len() > max {
            return Err(s3_error!(
                KeyTooLongError,
                "object key is {} bytes; this volume's keys are at most {max} (1024 with its store prefix)",
                key.len()
            ));
        }
        // The protocol takes any S3 key; the few it refuses answer S3's own error codes.
        BlockKey::parse(key).map_err(|e| match e {
            NameError::TooLong { .. } => s3_error!(KeyTooLongError, "object key: {e}"),
            e => s3_error!(InvalidArgument, "object key {key:?} is not supported: {e}"),
        })
    }

    fn upload(id: &str) -> S3Result<Upload> {
        Upload::parse(id).ok_or_else(|| s3_error!(NoSuchUpload, "unknown upload id"))
    }

    /// The body of a request as parts, at most `limit` bytes (`declared`: its Content-Length).
    fn body(&self, body: Option<StreamingBlob>, limit: u64, declared: Option<i64>) -> PartReader {
        let stream = match body {
            Some(b) => b.map_err(|e| s3_error!(IncompleteBody, "reading the request body failed: {e}")).boxed(),
            None => futures::stream::empty().boxed(),
        };
        self.parts(stream, limit, declared.map(|n| n.max(0) as u64))
    }

    /// Parts of `stream`, bounded by the client's write budget.
    fn parts(&self, stream: Body, limit: u64, expected: Option<u64>) -> PartReader {
        PartReader::new(stream, limit, expected, self.client.write_budget().clone())
    }

    /// Opens a read of `key` after checking `cond`.
    async fn open(&self, key: &BlockKey, range: Option<&Range>, cond: &Conditions, copy: bool) -> S3Result<ObjectRead> {
        let range = range.map(Range::to_header_string);
        let read = self
            .client
            .read_object(key, range.as_deref())
            .await
            .map_err(map_err)?
            .ok_or_else(|| s3_error!(NoSuchKey))?;
        cond.check(&etag_value(&read.info), read.info.modified(), copy)?;
        Ok(read)
    }
}

/// The ETag to show: the object's S3 ETag, or one derived from the version for objects whose
/// proxy did not say.
fn etag_value(info: &ObjectInfo) -> String {
    info.etag.clone().unwrap_or_else(|| format!("\"v{}\"", info.version))
}

fn etag(info: &ObjectInfo) -> ETag {
    ETag::Strong(etag_value(info).trim_matches('"').to_owned())
}

fn strong(quoted: &str) -> ETag {
    ETag::Strong(quoted.trim_matches('"').to_owned())
}

fn attrs_of(
    content_type: Option<String>,
    content_encoding: Option<String>,
    cache_control: Option<String>,
    content_disposition: Option<String>,
    metadata: Option<Metadata>,
) -> ObjectAttrs {
    ObjectAttrs {
        content_type,
        content_encoding,
        cache_control,
        content_disposition,
        user_metadata: metadata.unwrap_or_default().into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect(),
    }
}

fn metadata(attrs: &ObjectAttrs) -> Option<Metadata> {
    (!attrs.user_metadata.is_empty()).then(|| attrs.user_metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

fn timestamp(t: SystemTime) -> Timestamp {
    Timestamp::from(t)
}

fn body_of(read: ObjectRead) -> StreamingBlob {
    let frames = read.body.map_ok(http_body::Frame::data);
    StreamingBlob::from(s3s::Body::http_body_unsync(http_body_util::StreamBody::new(frames)))
}

fn listed_object(e: crate::client::ListEntry, encode: bool) -> Object {
    Object {
        key: Some(if encode { listing::url_encode(&e.key) } else { e.key }),
        size: Some(e.size as i64),
        e_tag: e.etag.as_deref().map(strong),
        last_modified: Some(timestamp(e.last_modified.unwrap_or(UNIX_EPOCH))),
        storage_class: Some(ObjectStorageClass::from_static(ObjectStorageClass::STANDARD)),
        ..Default::default()
    }
}

fn url_encoded(encoding: &Option<EncodingType>) -> bool {
    encoding.as_ref().is_some_and(|e| e.as_str() == EncodingType::URL)
}

/// Copy sources must be in this volume: `bucket/key`.
fn copy_source(src: &CopySource) -> S3Result<(&str, &str)> {
    match src {
        CopySource::Bucket { bucket, key, .. } => Ok((bucket, key)),
        _ => Err(s3_error!(NotImplemented, "copies from access points are not supported")),
    }
}

#[async_trait::async_trait]
impl S3 for VolumeS3 {
    async fn list_buckets(&self, _req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        let bucket = Bucket {
            name: Some(self.client.volume().to_string()),
            creation_date: Some(timestamp(UNIX_EPOCH)),
            ..Default::default()
        };
        Ok(S3Response::new(ListBucketsOutput { buckets: Some(vec![bucket]), ..Default::default() }))
    }

    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        // The volume's bucket always exists: creating it is a no-op (clients such as rclone
        // create the bucket before their first upload), and no other bucket can be created.
        self.check_bucket(&req.input.bucket)?;
        Ok(S3Response::new(CreateBucketOutput { location: Some(format!("/{}", req.input.bucket)) }))
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.check_bucket(&req.input.bucket)?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.check_bucket(&req.input.bucket)?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let i = req.input;
        let key = self.user_key(&i.bucket, &i.key)?;
        if i.part_number.is_some() {
            return Err(s3_error!(NotImplemented, "GetObject with partNumber is not supported; use a Range"));
        }
        let cond = Conditions {
            if_match: i.if_match,
            if_none_match: i.if_none_match,
            if_modified_since: i.if_modified_since,
            if_unmodified_since: i.if_unmodified_since,
        };
        let read = self.open(&key, i.range.as_ref(), &cond, false).await?;
        let info = read.info.clone();
        let content_range =
            i.range.is_some().then(|| format!("bytes {}-{}/{}", read.start, read.end.saturating_sub(1), info.size));
        let len = read.end - read.start;
        let a = &info.attrs;
        Ok(S3Response::new(GetObjectOutput {
            content_length: Some(len as i64),
            content_range,
            accept_ranges: Some("bytes".into()),
            content_type: Some(a.content_type.clone().unwrap_or_else(|| "binary/octet-stream".into())),
            content_encoding: a.content_encoding.clone(),
            cache_control: a.cache_control.clone(),
            content_disposition: a.content_disposition.clone(),
            metadata: metadata(a),
            e_tag: Some(etag(&info)),
            last_modified: Some(timestamp(info.modified())),
            body: Some(body_of(read)),
            ..Default::default()
        }))
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        let i = req.input;
        let key = self.user_key(&i.bucket, &i.key)?;
        let info = self.client.head(&key).await.map_err(map_err)?.ok_or_else(|| s3_error!(NoSuchKey))?;
        let cond = Conditions {
            if_match: i.if_match,
            if_none_match: i.if_none_match,
            if_modified_since: i.if_modified_since,
            if_unmodified_since: i.if_unmodified_since,
        };
        cond.check(&etag_value(&info), info.modified(), false)?;
        let a = &info.attrs;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(info.size as i64),
            accept_ranges: Some("bytes".into()),
            content_type: Some(a.content_type.clone().unwrap_or_else(|| "binary/octet-stream".into())),
            content_encoding: a.content_encoding.clone(),
            cache_control: a.cache_control.clone(),
            content_disposition: a.content_disposition.clone(),
            metadata: metadata(a),
            e_tag: Some(etag(&info)),
            last_modified: Some(timestamp(info.modified())),
            ..Default::default()
        }))
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        let i = req.input;
        let key = self.user_key(&i.bucket, &i.key)?;
        if i.if_match.is_some() || i.if_none_match.is_some() {
            return Err(s3_error!(NotImplemented, "conditional PutObject (If-Match / If-None-Match) is not supported"));
        }
        let size = i.content_length.map_or(0, |l| l.max(0) as u64);
        if size > MAX_SINGLE_PUT_SIZE {
            return Err(s3_error!(EntityTooLarge, "a single PUT takes at most 5 GiB; use a multipart upload"));
        }
        let attrs = attrs_of(i.content_type, i.content_encoding, i.cache_control, i.content_disposition, i.metadata);
        let body = self.body(i.body, MAX_SINGLE_PUT_SIZE, i.content_length);
        let stored = write_object(&self.client, &key, &attrs, body, part_size_for(size)).await?;
        Ok(S3Response::new(PutObjectOutput { e_tag: Some(strong(&stored.etag)), ..Default::default() }))
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        let i = req.input;
        let key = self.user_key(&i.bucket, &i.key)?;
        let (src_bucket, src_key) = copy_source(&i.copy_source)?;
        let src = self.user_key(src_bucket, src_key)?;
        let cond = Conditions {
            if_match: i.copy_source_if_match,
            if_none_match: i.copy_source_if_none_match,
            if_modified_since: i.copy_source_if_modified_since,
            if_unmodified_since: i.copy_source_if_unmodified_since,
        };
        let read = self.open(&src, None, &cond, true).await?;
        let replace = i.metadata_directive.as_ref().is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let attrs = if replace {
            attrs_of(i.content_type, i.content_encoding, i.cache_control, i.content_disposition, i.metadata)
        } else {
            if src == key {
                return Err(s3_error!(
                    InvalidRequest,
                    "copying an object onto itself without changing anything is not allowed (use MetadataDirective REPLACE)"
                ));
            }
            read.info.attrs.clone()
        };
        let size = read.info.size;
        let body = self.parts(read.body.map_err(map_err).boxed(), MAX_OBJECT_SIZE, Some(size));
        let stored = write_object(&self.client, &key, &attrs, body, part_size_for(size)).await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(strong(&stored.etag)),
                last_modified: Some(timestamp(UNIX_EPOCH + std::time::Duration::from_nanos(stored.version))),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        let key = self.user_key(&req.input.bucket, &req.input.key)?;
        self.client.delete(&key).await.map_err(map_err)?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.check_bucket(&req.input.bucket)?;
        if req.input.delete.objects.len() > 1000 {
            return Err(s3_error!(MalformedXML, "at most 1000 keys per DeleteObjects request"));
        }
        let quiet = req.input.delete.quiet.unwrap_or(false);
        let bucket = req.input.bucket;
        let keys: Vec<String> = req.input.delete.objects.into_iter().map(|o| o.key).collect();
        // A few at a time: a batch of 1,000 must neither take 1,000 round trips in sequence nor
        // monopolise the proxies.
        let results: Vec<(String, S3Result<u64>)> = futures::stream::iter(keys)
            .map(|key| {
                let bucket = &bucket;
                async move {
                    let res = match self.user_key(bucket, &key) {
                        Ok(k) => self.client.delete(&k).await.map_err(map_err),
                        Err(e) => Err(e),
                    };
                    (key, res)
                }
            })
            .buffered(8)
            .collect()
            .await;
        let (mut deleted, mut errors) = (Vec::new(), Vec::new());
        for (key, res) in results {
            match res {
                Ok(_) if !quiet => deleted.push(DeletedObject { key: Some(key), ..Default::default() }),
                Ok(_) => {}
                Err(e) => errors.push(Error {
                    key: Some(key),
                    code: Some(e.code().as_str().to_owned()),
                    message: e.message().map(str::to_owned),
                    ..Default::default()
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput { deleted: Some(deleted), errors: Some(errors), ..Default::default() }))
    }

    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        let i = req.input;
        self.check_bucket(&i.bucket)?;
        let prefix = i.prefix.clone().unwrap_or_default();
        let delimiter = i.delimiter.clone().filter(|d| !d.is_empty());
        let max_keys = i.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
        let after = listing::resume_point(i.marker.as_deref().unwrap_or(""), &prefix, delimiter.as_deref());
        let Listed { objects, common_prefixes, truncated, last, .. } =
            listing::list(&self.client, &prefix, delimiter.as_deref(), &after, max_keys).await.map_err(map_err)?;
        let enc = url_encoded(&i.encoding_type);
        let e = |s: String| if enc { listing::url_encode(&s) } else { s };
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(i.bucket),
            prefix: Some(e(prefix)),
            marker: Some(e(i.marker.unwrap_or_default())),
            delimiter: delimiter.map(e),
            max_keys: Some(max_keys as i32),
            is_truncated: Some(truncated),
            // S3 sends NextMarker only with a delimiter; sending it always helps clients that
            // would otherwise use the last key (the same value).
            next_marker: if truncated { last.map(e) } else { None },
            contents: Some(objects.into_iter().map(|o| listed_object(o, enc)).collect()),
            common_prefixes: Some(common_prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(e(p)) }).collect()),
            encoding_type: i.encoding_type,
            ..Default::default()
        }))
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        let i = req.input;
        self.check_bucket(&i.bucket)?;
        let prefix = i.prefix.clone().unwrap_or_default();
        let delimiter = i.delimiter.clone().filter(|d| !d.is_empty());
        let max_keys = i.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
        // The continuation token is where the previous page stopped (hex, so any key survives).
        let after = match &i.continuation_token {
            Some(t) => String::from_utf8(
                hex::decode(t).map_err(|_| s3_error!(InvalidArgument, "malformed continuation token"))?,
            )
            .map_err(|_| s3_error!(InvalidArgument, "malformed continuation token"))?,
            None => listing::resume_point(i.start_after.as_deref().unwrap_or(""), &prefix, delimiter.as_deref()),
        };
        let Listed { objects, common_prefixes, truncated, resume_after, .. } =
            listing::list(&self.client, &prefix, delimiter.as_deref(), &after, max_keys).await.map_err(map_err)?;
        let enc = url_encoded(&i.encoding_type);
        let e = |s: String| if enc { listing::url_encode(&s) } else { s };
        let key_count = (objects.len() + common_prefixes.len()) as i32;
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(i.bucket),
            prefix: Some(e(prefix)),
            delimiter: delimiter.map(e),
            max_keys: Some(max_keys as i32),
            key_count: Some(key_count),
            continuation_token: i.continuation_token,
            start_after: i.start_after.map(e),
            is_truncated: Some(truncated),
            next_continuation_token: if truncated { resume_after.map(hex::encode) } else { None },
            contents: Some(objects.into_iter().map(|o| listed_object(o, enc)).collect()),
            common_prefixes: Some(common_prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(e(p)) }).collect()),
            encoding_type: i.encoding_type,
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let i = req.input;
        let key = self.user_key(&i.bucket, &i.key)?;
        let attrs = attrs_of(i.content_type, i.content_encoding, i.cache_control, i.content_disposition, i.metadata);
        let upload = self.client.create_upload(&key, &attrs).await.map_err(map_err)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(i.bucket),
            key: Some(i.key),
            upload_id: Some(upload.id()),
            ..Default::default()
        }))
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        let i = req.input;
        let key = self.user_key(&i.bucket, &i.key)?;
        let upload = Self::upload(&i.upload_id)?;
        let part = part_number(i.part_number)?;
        let mut body = self.body(i.body, self.max_part_size, i.content_length);
        // Held (with its bytes of the write budget) until the proxy has the part.
        let read = body.next_part(self.max_part_size as usize + 1).await?;
        let data = read.as_ref().map(|p| p.data.clone()).unwrap_or_default();
        let etag = self.client.upload_part(&key, &upload, part, data).await.map_err(map_err)?;
        drop(read);
        Ok(S3Response::new(UploadPartOutput { e_tag: Some(strong(&etag)), ..Default::default() }))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let i = req.input;
        let key = self.user_key(&i.bucket, &i.key)?;
        let upload = Self::upload(&i.upload_id)?;
        let part = part_number(i.part_number)?;
        let (src_bucket, src_key) = copy_source(&i.copy_source)?;
        let src = self.user_key(src_bucket, src_key)?;
        let range = i
            .copy_source_range
            .as_deref()
            .map(|r| Range::parse(r).map_err(|_| s3_error!(InvalidArgument, "malformed x-amz-copy-source-range {r:?}")))
            .transpose()?;
        let cond = Conditions {
            if_match: i.copy_source_if_match,
            if_none_match: i.copy_source_if_none_match,
            if_modified_since: i.copy_source_if_modified_since,
            if_unmodified_since: i.copy_source_if_unmodified_since,
        };
        let read = self.open(&src, range.as_ref(), &cond, true).await?;
        if read.end - read.start > self.max_part_size {
            return Err(s3_error!(EntityTooLarge, "a copied part may be at most {} bytes", self.max_part_size));
        }
        let mut body = self.parts(read.body.map_err(map_err).boxed(), self.max_part_size, Some(read.end - read.start));
        let copied = body.next_part(self.max_part_size as usize).await?;
        let data: Bytes = copied.as_ref().map(|p| p.data.clone()).unwrap_or_default();
        let etag = self.client.upload_part(&key, &upload, part, data).await.map_err(map_err)?;
        drop(copied);
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult { e_tag: Some(strong(&etag)), ..Default::default() }),
            ..Default::default()
        }))
    }

    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        let i = req.input;
        let key = self.user_key(&i.bucket, &i.key)?;
        let upload = Self::upload(&i.upload_id)?;
        let staged = self.client.list_parts(&key, &upload).await.map_err(map_err)?;
        let after = i.part_number_marker.unwrap_or(0).max(0) as u32;
        let max = i.max_parts.unwrap_or(1000).clamp(1, 1000) as usize;
        let mut parts: Vec<_> = staged.parts.into_iter().filter(|p| p.part_number > after).collect();
        let truncated = parts.len() > max;
        parts.truncate(max);
        let next = parts.last().map(|p| p.part_number as i32);
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(i.bucket),
            key: Some(i.key),
            upload_id: Some(i.upload_id),
            max_parts: Some(max as i32),
            is_truncated: Some(truncated),
            next_part_number_marker: if truncated { next } else { None },
            parts: Some(
                parts
                    .into_iter()
                    .map(|p| Part {
                        part_number: Some(p.part_number as i32),
                        e_tag: Some(strong(&p.etag)),
                        size: Some(p.size as i64),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let i = req.input;
        let key = self.user_key(&i.bucket, &i.key)?;
        let upload = Self::upload(&i.upload_id)?;
        let parts = i.multipart_upload.and_then(|m| m.parts).unwrap_or_default();
        if parts.is_empty() {
            return Err(s3_error!(MalformedXML, "CompleteMultipartUpload needs at least one part"));
        }
        let parts = parts
            .into_iter()
            .map(|p| {
                let n = p.part_number.ok_or_else(|| s3_error!(InvalidPart, "a part has no PartNumber"))?;
                Ok(CompletePart { part_number: part_number(n)?, etag: p.e_tag.map(|e| format!("\"{}\"", e.value())) })
            })
            .collect::<S3Result<Vec<_>>>()?;
        if parts.windows(2).any(|w| w[0].part_number >= w[1].part_number) {
            return Err(s3_error!(InvalidPartOrder, "parts must be listed in ascending order"));
        }
        let done = self
            .client
            .complete_upload(&key, &upload, CompleteUpload { parts, version: None })
            .await
            .map_err(map_err)?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(i.bucket),
            key: Some(i.key),
            e_tag: Some(strong(&done.etag)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let key = self.user_key(&req.input.bucket, &req.input.key)?;
        let upload = Self::upload(&req.input.upload_id)?;
        self.client.abort_upload(&key, &upload).await.map_err(map_err)?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }
}

fn part_number(n: i32) -> S3Result<u32> {
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=crate::protocol::MAX_PARTS).contains(n))
        .ok_or_else(|| s3_error!(InvalidArgument, "part numbers go from 1 to 10000"))
}
