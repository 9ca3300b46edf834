//! S3 and S3-compatible stores (AWS, MinIO, Ceph RGW, OCI, GCS XML) through aws-sdk-s3.

use super::{ListedObject, ObjectMeta, ObjectState, Precondition, Store, StoreError, StoredBlock, verify_fetched};
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use blockproxy_protocol::{STORE_CRC32C_METADATA, STORE_VERSION_METADATA};
use bytes::Bytes;
use std::collections::HashMap;

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

fn is_not_found<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    status_of(e) == Some(404) && e.code() != Some("NoSuchBucket")
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
        let data = out.body.collect().await.map_err(|e| StoreError::Request {
            op: "GET body",
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            message: DisplayErrorContext(e).to_string(),
        })?;
        let data = data.into_bytes();
        let crc32c = verify_fetched(bucket, key, &data, recorded)?;
        Ok(Some(StoredBlock { data, version, crc32c }))
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectState>, StoreError> {
        match self.client.head_object().bucket(bucket).key(key).send().await {
            Ok(out) => Ok(Some(ObjectState {
                version: parse_version(out.metadata()),
                // Every S3 store answers with an ETag; "*" (any object) is the safe fallback.
                etag: out.e_tag().unwrap_or("*").to_owned(),
            })),
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
        cond: Precondition<'_>,
    ) -> Result<(), StoreError> {
        let mut req = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .metadata(STORE_VERSION_METADATA, meta.version.to_string())
            .metadata(STORE_CRC32C_METADATA, format!("{:08x}", meta.crc32c))
            .body(ByteStream::from(data));
        req = match cond {
            Precondition::Absent => req.if_none_match("*"),
            Precondition::Matches(etag) => req.if_match(etag),
        };
        if self.sse {
            req = req.server_side_encryption(ServerSideEncryption::Aes256);
        }
        req.send().await.map_err(request_err("PUT", bucket, key))?;
        Ok(())
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

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ListedObject>, StoreError> {
        let mut out = Vec::new();
        let mut pages = self.client.list_objects_v2().bucket(bucket).prefix(prefix).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(request_err("LIST", bucket, prefix))?;
            for obj in page.contents() {
                if let Some(key) = obj.key() {
                    out.push(ListedObject { key: key.to_owned(), size: obj.size().unwrap_or(0).max(0) as u64 });
                }
            }
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}
