//! The S3-compatible frontend on top of [`Client`](crate::client::Client), built on `s3s`.
//!
//! - The bucket name is the volume id: `s3://<volume-id>/<key>`. Other buckets do not exist.
//! - Object = block: an object key must be a valid block key (`[A-Za-z0-9._-]` segments separated
//!   by `/`, at most 512 bytes), up to the proxies' `--max-block-size` (64 MiB by default).
//! - Multipart uploads stage each part as a block under `.blockproxy-mpu/<upload-id>/`, routed to
//!   the final object's owner proxy, and complete by assembling them into one block.
//! - ETags are the block's write version (`"v<version>"`), so GET, HEAD and PUT agree.

use crate::client::{Client, ClientError};
use crate::protocol::{BlockKey, Checksum};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Hidden prefix of staged multipart parts; refused as a user key and hidden from listings.
pub const MULTIPART_PREFIX: &str = ".blockproxy-mpu/";

pub struct VolumeS3 {
    client: Client,
    max_object_size: u64,
    uploads: Mutex<HashMap<String, (String, BTreeSet<i32>)>>,
}

impl VolumeS3 {
    pub fn new(client: Client, max_object_size: u64) -> Self {
        Self { client, max_object_size, uploads: Mutex::default() }
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
        if key.starts_with(MULTIPART_PREFIX) {
            return Err(s3_error!(InvalidArgument, "keys under {MULTIPART_PREFIX} are reserved for multipart staging"));
        }
        BlockKey::parse(key).map_err(|e| {
            if key.len() > crate::protocol::MAX_KEY_LEN {
                s3_error!(KeyTooLongError, "object key: {e}")
            } else {
                s3_error!(InvalidArgument, "object key {key:?} is not a valid block key: {e}")
            }
        })
    }

    async fn read_body(&self, body: Option<StreamingBlob>) -> S3Result<Bytes> {
        let Some(mut body) = body else { return Ok(Bytes::new()) };
        let mut buf = BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| s3_error!(IncompleteBody, "reading the request body failed: {e}"))?;
            buf.extend_from_slice(&chunk);
            if buf.len() as u64 > self.max_object_size {
                return Err(s3_error!(
                    EntityTooLarge,
                    "objects are single blocks of at most {} bytes",
                    self.max_object_size
                ));
            }
        }
        Ok(buf.freeze())
    }

    fn upload_id_ok(id: &str) -> S3Result<()> {
        if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err(s3_error!(NoSuchUpload, "unknown upload id"))
        }
    }

    fn part_key(upload_id: &str, part: i32) -> S3Result<BlockKey> {
        if !(1..=10_000).contains(&part) {
            return Err(s3_error!(InvalidArgument, "part numbers go from 1 to 10000"));
        }
        BlockKey::parse(&format!("{MULTIPART_PREFIX}{upload_id}/{part:05}"))
            .map_err(|e| s3_error!(InternalError, "part key: {e}"))
    }
}

fn etag(version: u64) -> ETag {
    ETag::Strong(format!("v{version}"))
}

fn modified(version: u64) -> Timestamp {
    // Versions are nanoseconds since the epoch (see the version clock); others map to the epoch.
    Timestamp::from(UNIX_EPOCH + Duration::from_nanos(version))
}

fn map_err(e: ClientError) -> S3Error {
    match &e {
        ClientError::RangeNotSatisfiable(m) => s3_error!(InvalidRange, "{m}"),
        ClientError::Rejected { status: 401 | 403, message } => {
            s3_error!(AccessDenied, "the proxies refused the volume token: {message}")
        }
        ClientError::Rejected { status: 413, message } => s3_error!(EntityTooLarge, "{message}"),
        ClientError::Rejected { status: 400, message } => s3_error!(InvalidArgument, "{message}"),
        ClientError::Rejected { message, .. } => s3_error!(InvalidRequest, "{message}"),
        ClientError::Unreachable { .. } | ClientError::Stale { .. } => {
            S3Error::with_message(S3ErrorCode::ServiceUnavailable, e.to_string())
        }
        // S3's answer to a write that lost to a concurrent one on the same key.
        ClientError::Superseded { .. } => S3Error::with_message(S3ErrorCode::OperationAborted, e.to_string()),
        _ => S3Error::with_message(S3ErrorCode::InternalError, e.to_string()),
    }
}

#[async_trait::async_trait]
impl S3 for VolumeS3 {
    async fn list_buckets(&self, _req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        let bucket = Bucket {
            name: Some(self.client.volume().to_string()),
            creation_date: Some(modified(0)),
            ..Default::default()
        };
        Ok(S3Response::new(ListBucketsOutput { buckets: Some(vec![bucket]), ..Default::default() }))
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
        let key = self.user_key(&req.input.bucket, &req.input.key)?;
        let range = req.input.range.map(|r| r.to_header_string());
        let f = self.client.get(&key, range.as_deref()).await.map_err(map_err)?.ok_or_else(|| s3_error!(NoSuchKey))?;
        let len = f.data.len() as u64;
        let content_range = range.as_ref().map(|_| {
            let start = f.total - len.min(f.total);
            // The proxy returns exactly the requested bytes; compute their offsets from the range.
            let first = match req.input.range {
                Some(Range::Int { first, .. }) => first,
                Some(Range::Suffix { .. }) | None => start,
            };
            format!("bytes {first}-{}/{}", first + len.saturating_sub(1), f.total)
        });
        let out = GetObjectOutput {
            body: Some(StreamingBlob::from(s3s::Body::from(f.data))),
            content_length: Some(len as i64),
            content_range,
            accept_ranges: Some("bytes".into()),
            content_type: Some("application/octet-stream".into()),
            e_tag: Some(etag(f.version)),
            last_modified: Some(modified(f.version)),
            ..Default::default()
        };
        Ok(S3Response::new(out))
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        let key = self.user_key(&req.input.bucket, &req.input.key)?;
        let (size, version) = self.client.head(&key).await.map_err(map_err)?.ok_or_else(|| s3_error!(NoSuchKey))?;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(size as i64),
            accept_ranges: Some("bytes".into()),
            content_type: Some("application/octet-stream".into()),
            e_tag: Some(etag(version)),
            last_modified: Some(modified(version)),
            ..Default::default()
        }))
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        let key = self.user_key(&req.input.bucket, &req.input.key)?;
        let data = self.read_body(req.input.body).await?;
        let version = self.client.put(&key, data).await.map_err(map_err)?;
        Ok(S3Response::new(PutObjectOutput { e_tag: Some(etag(version)), ..Default::default() }))
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
        let mut results = Vec::with_capacity(keys.len());
        // Sequential: deletes are small and a batch must not monopolise the proxies.
        for key in keys {
            let res = match self.user_key(&bucket, &key) {
                Ok(k) => self.client.delete(&k).await.map_err(map_err),
                Err(e) => Err(e),
            };
            results.push((key, res));
        }
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

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let entries = self.client.list(&prefix).await.map_err(map_err)?;
        let max_keys = input.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
        let after = input.continuation_token.clone().or(input.start_after.clone()).unwrap_or_default();
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        let now = Timestamp::from(SystemTime::now());
        let mut contents = Vec::new();
        let mut prefixes: BTreeMap<String, ()> = BTreeMap::new();
        let mut last = None;
        let mut truncated = false;
        for e in entries.into_iter().filter(|e| !e.key.starts_with(MULTIPART_PREFIX) && e.key.as_str() > after.as_str())
        {
            if let Some(d) = &delimiter
                && let Some(pos) = e.key[prefix.len()..].find(d.as_str())
            {
                let p = e.key[..prefix.len() + pos + d.len()].to_owned();
                if prefixes.contains_key(&p) {
                    continue;
                }
                if contents.len() + prefixes.len() >= max_keys {
                    truncated = true;
                    break;
                }
                last = Some(e.key.clone());
                prefixes.insert(p, ());
                continue;
            }
            if contents.len() + prefixes.len() >= max_keys {
                truncated = true;
                break;
            }
            last = Some(e.key.clone());
            contents.push(Object {
                key: Some(e.key),
                size: Some(e.size as i64),
                last_modified: Some(now.clone()),
                ..Default::default()
            });
        }
        let key_count = (contents.len() + prefixes.len()) as i32;
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: input.prefix,
            delimiter: input.delimiter,
            max_keys: Some(max_keys as i32),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            start_after: input.start_after,
            is_truncated: Some(truncated),
            next_continuation_token: if truncated { last } else { None },
            contents: Some(contents),
            common_prefixes: Some(prefixes.into_keys().map(|p| CommonPrefix { prefix: Some(p) }).collect()),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let key = self.user_key(&req.input.bucket, &req.input.key)?;
        let upload_id = hex::encode(rand::random::<[u8; 16]>());
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(upload_id.clone(), (key.to_string(), BTreeSet::new()));
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(req.input.bucket),
            key: Some(key.to_string()),
            upload_id: Some(upload_id),
            ..Default::default()
        }))
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        let key = self.user_key(&req.input.bucket, &req.input.key)?;
        Self::upload_id_ok(&req.input.upload_id)?;
        let part_key = Self::part_key(&req.input.upload_id, req.input.part_number)?;
        let data = self.read_body(req.input.body).await?;
        let sum = Checksum::crc32c(&data).to_string();
        self.client.put_routed(&part_key, key.as_str(), data).await.map_err(map_err)?;
        if let Some((_, parts)) = self.uploads.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&req.input.upload_id) {
            parts.insert(req.input.part_number);
        }
        Ok(S3Response::new(UploadPartOutput { e_tag: Some(ETag::Strong(sum.replace('=', "-"))), ..Default::default() }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let key = self.user_key(&input.bucket, &input.key)?;
        Self::upload_id_ok(&input.upload_id)?;
        let parts = input.multipart_upload.and_then(|m| m.parts).unwrap_or_default();
        if parts.is_empty() {
            return Err(s3_error!(MalformedXML, "CompleteMultipartUpload needs at least one part"));
        }
        let mut data = BytesMut::new();
        let mut prev = 0;
        let mut part_keys = Vec::with_capacity(parts.len());
        for p in &parts {
            let n = p.part_number.ok_or_else(|| s3_error!(InvalidPart, "a part has no PartNumber"))?;
            if n <= prev {
                return Err(s3_error!(InvalidPartOrder, "parts must be listed in ascending order"));
            }
            prev = n;
            let pk = Self::part_key(&input.upload_id, n)?;
            let f = self
                .client
                .get_routed(&pk, key.as_str(), None)
                .await
                .map_err(map_err)?
                .ok_or_else(|| s3_error!(InvalidPart, "part {n} was not uploaded"))?;
            if let Some(tag) = &p.e_tag
                && tag.value() != Checksum::crc32c(&f.data).to_string().replace('=', "-")
            {
                return Err(s3_error!(InvalidPart, "part {n}'s ETag does not match the uploaded data"));
            }
            data.extend_from_slice(&f.data);
            if data.len() as u64 > self.max_object_size {
                return Err(s3_error!(
                    EntityTooLarge,
                    "objects are single blocks of at most {} bytes",
                    self.max_object_size
                ));
            }
            part_keys.push(pk);
        }
        let version = self.client.put(&key, data.freeze()).await.map_err(map_err)?;
        let staged = self.uploads.lock().unwrap_or_else(|e| e.into_inner()).remove(&input.upload_id);
        let mut to_delete: BTreeSet<i32> = staged.map(|(_, p)| p).unwrap_or_default();
        to_delete.extend(parts.iter().filter_map(|p| p.part_number));
        for n in to_delete {
            if let Ok(pk) = Self::part_key(&input.upload_id, n)
                && let Err(e) = self.client.delete_routed(&pk, key.as_str()).await
            {
                tracing::warn!(part = %pk, error = %e, "removing a staged part failed");
            }
        }
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(key.to_string()),
            e_tag: Some(etag(version)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let key = self.user_key(&req.input.bucket, &req.input.key)?;
        Self::upload_id_ok(&req.input.upload_id)?;
        let staged = self.uploads.lock().unwrap_or_else(|e| e.into_inner()).remove(&req.input.upload_id);
        for n in staged.map(|(_, p)| p).unwrap_or_default() {
            let pk = Self::part_key(&req.input.upload_id, n)?;
            self.client.delete_routed(&pk, key.as_str()).await.map_err(map_err)?;
        }
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }
}
