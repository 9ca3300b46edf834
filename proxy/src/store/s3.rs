//! S3 and S3-compatible stores (AWS, MinIO, Ceph RGW, OCI, GCS XML) through aws-sdk-s3.

use super::{ListedObject, Store, StoreError, StoredBlock};
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use blockproxy_protocol::STORE_VERSION_METADATA;
use bytes::Bytes;

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

fn request_err<E: std::error::Error + 'static>(
    op: &'static str,
    bucket: &str,
    key: &str,
) -> impl FnOnce(E) -> StoreError {
    let (bucket, key) = (bucket.to_owned(), key.to_owned());
    move |e| StoreError::Request { op, bucket, key, message: DisplayErrorContext(e).to_string() }
}

fn parse_version(meta: Option<&std::collections::HashMap<String, String>>) -> u64 {
    meta.and_then(|m| m.get(STORE_VERSION_METADATA)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[async_trait]
impl Store for S3Store {
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<StoredBlock>, StoreError> {
        let out = match self.client.get_object().bucket(bucket).key(key).send().await {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(request_err("GET", bucket, key)(e)),
        };
        let version = parse_version(out.metadata());
        let data = out.body.collect().await.map_err(request_err("GET body", bucket, key))?;
        Ok(Some(StoredBlock { data: data.into_bytes(), version }))
    }

    async fn head_version(&self, bucket: &str, key: &str) -> Result<Option<u64>, StoreError> {
        match self.client.head_object().bucket(bucket).key(key).send().await {
            Ok(out) => Ok(Some(parse_version(out.metadata()))),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found() || s.code() == Some("NoSuchKey")) => {
                Ok(None)
            }
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(None),
            Err(e) => Err(request_err("HEAD", bucket, key)(e)),
        }
    }

    async fn put(&self, bucket: &str, key: &str, data: Bytes, version: u64) -> Result<(), StoreError> {
        let mut req = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .metadata(STORE_VERSION_METADATA, version.to_string())
            .body(ByteStream::from(data));
        if self.sse {
            req = req.server_side_encryption(ServerSideEncryption::Aes256);
        }
        req.send().await.map_err(request_err("PUT", bucket, key))?;
        Ok(())
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError> {
        self.client.delete_object().bucket(bucket).key(key).send().await.map_err(request_err("DELETE", bucket, key))?;
        Ok(())
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
