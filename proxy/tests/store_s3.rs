//! The S3 store's object model against a real MinIO: attributes are the object's real headers and
//! metadata, ranged reads are pinned to an ETag, a file goes up as one multipart upload whose
//! ETag S3 clients expect and which is published only if its condition still holds, and listings
//! page with `StartAfter`.

mod support;

use anyhow::{Context, Result, ensure};
use aws_sdk_s3::primitives::ByteStream;
use blockproxy::protocol::{MIN_PART_SIZE, STORE_CRC32C_METADATA, STORE_VERSION_METADATA, multipart_etag};
use blockproxy::store::{
    Conditional, ObjectAttrs, ObjectMeta, Precondition, S3Store, S3StoreConfig, Store, StoreError, TOMBSTONE_PREFIX,
    put_file_unless_newer,
};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use rand::RngCore;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};
use support::Backend;

async fn store_for(backend: &Backend) -> S3Store {
    let minio = &backend.minio;
    S3Store::new(S3StoreConfig {
        endpoint: Some(minio.endpoint()),
        region: "us-east-1".into(),
        path_style: true,
        credentials: Some((minio.access_key().into(), minio.secret_key().into())),
        sse: false,
    })
    .await
}

fn attrs() -> ObjectAttrs {
    let user_metadata: BTreeMap<String, String> =
        [("owner", "team a"), ("source-md5", "abc123")].into_iter().map(|(k, v)| (k.into(), v.into())).collect();
    ObjectAttrs {
        content_type: Some("text/csv; charset=utf-8".into()),
        content_encoding: Some("gzip".into()),
        cache_control: Some("max-age=60".into()),
        content_disposition: Some("attachment; filename=\"data.csv\"".into()),
        user_metadata,
    }
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut data = vec![0; len];
    rand::rng().fill_bytes(&mut data);
    data
}

/// A file of random content cut into parts of `part_sizes`; returns its bytes and the parts' MD5s.
fn part_file(path: &Path, part_sizes: &[u64]) -> Result<(Vec<u8>, Vec<[u8; 16]>)> {
    let data = random_bytes(part_sizes.iter().sum::<u64>() as usize);
    std::fs::write(path, &data)?;
    let mut md5s = Vec::new();
    let mut offset = 0;
    for &len in part_sizes {
        md5s.push(Md5::digest(&data[offset..offset + len as usize]).into());
        offset += len as usize;
    }
    Ok((data, md5s))
}

fn quoted(etag: &str) -> String {
    format!("\"{etag}\"")
}

#[tokio::test]
async fn attributes_round_trip_as_real_headers_and_metadata() -> Result<()> {
    let backend = Backend::start().await?;
    let (store, bucket) = (store_for(&backend).await, backend.minio.bucket());
    let mut sent = attrs();
    // A user key named like our own metadata must not replace it.
    sent.user_metadata.insert(STORE_VERSION_METADATA.into(), "999".into());
    let data = Bytes::from_static(b"a,b\n1,2\n");
    store
        .put_if(bucket, "attrs/one", data.clone(), ObjectMeta::for_data(7, &data), &sent, Precondition::Absent)
        .await?;
    let dir = tempfile::tempdir()?;
    let parts = [MIN_PART_SIZE, 1000];
    let (file_data, _) = part_file(&dir.path().join("f"), &parts)?;
    let meta = ObjectMeta::for_data(8, &file_data);
    store.put_file_if(bucket, "attrs/multi", &dir.path().join("f"), &parts, meta, &sent, Precondition::Absent).await?;

    let want = attrs();
    for (key, version) in [("attrs/one", 7), ("attrs/multi", 8)] {
        let head = store.head(bucket, key).await?.context("head")?;
        ensure!(head.attrs == want, "{key}: head gave {:?}", head.attrs);
        ensure!(head.version == version, "{key}: version {}", head.version);
        let got = store.get(bucket, key).await?.context("get")?;
        ensure!(got.attrs == want && got.etag == head.etag && got.version == version, "{key}: get gave {got:?}");

        // What any S3 tool sees: the real headers, and user metadata next to ours.
        let raw = backend.minio.s3_client().head_object().bucket(bucket).key(key).send().await?;
        ensure!(raw.content_type() == want.content_type.as_deref(), "{key}: {:?}", raw.content_type());
        ensure!(raw.content_encoding() == want.content_encoding.as_deref(), "{key}: {:?}", raw.content_encoding());
        ensure!(raw.cache_control() == want.cache_control.as_deref(), "{key}: {:?}", raw.cache_control());
        ensure!(raw.content_disposition() == want.content_disposition.as_deref(), "{key}");
        let m = raw.metadata().context("no metadata")?;
        ensure!(m.get("owner").map(String::as_str) == Some("team a"), "{key}: {m:?}");
        ensure!(m.get(STORE_VERSION_METADATA) == Some(&version.to_string()), "{key}: {m:?}");
        ensure!(m.contains_key(STORE_CRC32C_METADATA), "{key}: {m:?}");
    }
    Ok(())
}

#[tokio::test]
async fn ranged_reads_are_pinned_to_the_etag_they_name() -> Result<()> {
    let backend = Backend::start().await?;
    let (store, bucket) = (store_for(&backend).await, backend.minio.bucket());
    let first = random_bytes(100_000);
    let s3 = backend.minio.s3_client();
    s3.put_object().bucket(bucket).key("r/k").body(ByteStream::from(first.clone())).send().await?;
    let etag = store.head(bucket, "r/k").await?.context("head")?.etag;
    ensure!(etag.starts_with('"') && etag.ends_with('"'), "ETags are quoted: {etag}");

    let got = store.get_range(bucket, "r/k", 4096..70_000, Some(&etag)).await?.context("missing")?;
    ensure!(got.data[..] == first[4096..70_000], "wrong bytes");
    ensure!(got.info.size == 100_000 && got.info.etag == etag, "{:?}", got.info);
    let tail = store.get_range(bucket, "r/k", 99_999..100_000, None).await?.context("missing")?;
    ensure!(tail.data[..] == first[99_999..], "the last byte");

    for beyond in [99_000..100_001, 100_000..100_010, 200_000..200_001] {
        let err = store.get_range(bucket, "r/k", beyond.clone(), Some(&etag)).await.unwrap_err();
        ensure!(matches!(err, StoreError::InvalidRange { .. }), "{beyond:?}: {err}");
    }

    // Another tool replaces the object: the old pin fails, it never reads the new bytes.
    s3.put_object().bucket(bucket).key("r/k").body(ByteStream::from(random_bytes(100_000))).send().await?;
    let err = store.get_range(bucket, "r/k", 0..10, Some(&etag)).await.unwrap_err();
    ensure!(matches!(err, StoreError::PreconditionFailed { .. }), "a stale pin: {err}");
    ensure!(store.get_range(bucket, "r/missing", 0..10, None).await?.is_none(), "a missing object");
    Ok(())
}

#[tokio::test]
async fn a_file_goes_up_as_one_multipart_object_with_the_s3_etag() -> Result<()> {
    let backend = Backend::start().await?;
    let (store, bucket) = (store_for(&backend).await, backend.minio.bucket());
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("object");
    let parts = [MIN_PART_SIZE, MIN_PART_SIZE + 3, 1_048_583];
    let (data, md5s) = part_file(&path, &parts)?;
    let meta = ObjectMeta::for_data(11, &data);
    store.put_file_if(bucket, "m/three", &path, &parts, meta, &ObjectAttrs::default(), Precondition::Absent).await?;

    let raw = backend.minio.s3_client().get_object().bucket(bucket).key("m/three").send().await?;
    let raw_etag = raw.e_tag().map(str::to_owned);
    let stored = raw.body.collect().await?.into_bytes();
    ensure!(stored.len() == data.len() && stored[..] == data[..], "the stored object differs from the file");
    let want = quoted(&multipart_etag(&md5s));
    ensure!(raw_etag.as_deref() == Some(want.as_str()), "S3 ETag {raw_etag:?}, want {want}");
    let head = store.head(bucket, "m/three").await?.context("head")?;
    ensure!(head.etag == want && head.size == data.len() as u64, "{head:?}");
    ensure!(head.version == 11 && head.crc32c == Some(crc32c::crc32c(&data)), "{head:?}");

    // One part is a plain PUT: its ETag is the content's MD5.
    let one = dir.path().join("one");
    let (small, small_md5) = part_file(&one, &[1234])?;
    let meta = ObjectMeta::for_data(1, &small);
    store.put_file_if(bucket, "m/one", &one, &[1234], meta, &ObjectAttrs::default(), Precondition::Absent).await?;
    let head = store.head(bucket, "m/one").await?.context("head")?;
    ensure!(head.etag == quoted(&multipart_etag(&small_md5)), "{head:?}");
    ensure!(store.get(bucket, "m/one").await?.context("get")?.data[..] == small[..], "one part differs");
    Ok(())
}

/// Multipart uploads of `key` still open in the bucket (a failed upload must abort its own).
async fn open_uploads(backend: &Backend, key: &str) -> Result<usize> {
    let out =
        backend.minio.s3_client().list_multipart_uploads().bucket(backend.minio.bucket()).prefix(key).send().await?;
    Ok(out.uploads().len())
}

#[tokio::test]
async fn a_multipart_upload_that_lost_its_condition_publishes_nothing() -> Result<()> {
    let backend = Backend::start().await?;
    let (store, bucket) = (store_for(&backend).await, backend.minio.bucket());
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("object");
    let parts = [MIN_PART_SIZE, 77];
    let (data, _) = part_file(&path, &parts)?;
    let meta = ObjectMeta::for_data(5, &data);
    let none = ObjectAttrs::default();
    let key = "lost/k";

    // The condition is only sent with CompleteMultipartUpload: every part is uploaded first.
    let s3 = backend.minio.s3_client();
    s3.put_object().bucket(bucket).key(key).body(ByteStream::from_static(b"old")).send().await?;
    let read = store.head(bucket, key).await?.context("head")?.etag;
    s3.put_object().bucket(bucket).key(key).body(ByteStream::from_static(b"newer")).send().await?;
    let err =
        store.put_file_if(bucket, key, &path, &parts, meta, &none, Precondition::Matches(&read)).await.unwrap_err();
    ensure!(matches!(err, StoreError::PreconditionFailed { .. }), "If-Match a replaced object: {err}");
    let now = store.get(bucket, key).await?.context("gone")?;
    ensure!(now.data[..] == b"newer"[..], "the newer object was replaced");
    ensure!(open_uploads(&backend, key).await? == 0, "the failed upload was not aborted");

    let err = store.put_file_if(bucket, key, &path, &parts, meta, &none, Precondition::Absent).await.unwrap_err();
    ensure!(matches!(err, StoreError::PreconditionFailed { .. }), "If-None-Match an existing object: {err}");
    ensure!(store.get(bucket, key).await?.context("gone")?.data[..] == b"newer"[..], "replaced");
    ensure!(open_uploads(&backend, key).await? == 0, "the failed upload was not aborted");

    // With the current ETag the same upload succeeds.
    let current = store.head(bucket, key).await?.context("head")?.etag;
    store.put_file_if(bucket, key, &path, &parts, meta, &none, Precondition::Matches(&current)).await?;
    ensure!(store.get(bucket, key).await?.context("gone")?.data[..] == data[..], "not published");

    // Through the ordering decision: an older version is skipped, a newer one replaces it.
    let older = ObjectMeta::for_data(4, b"older");
    let skipped = put_file_unless_newer(&store, bucket, key, &path, &parts, older, &none).await?;
    ensure!(skipped == Conditional::StoreNewer { store_version: 5 }, "{skipped:?}");
    let newer = ObjectMeta::for_data(6, &data);
    let applied = put_file_unless_newer(&store, bucket, key, &path, &parts, newer, &none).await?;
    ensure!(applied == Conditional::Applied, "{applied:?}");
    ensure!(store.head(bucket, key).await?.context("gone")?.version == 6, "version 6 not written");
    Ok(())
}

#[tokio::test]
async fn listing_pages_over_every_key_once_in_order_with_real_times() -> Result<()> {
    const KEYS: usize = 2_500;
    let backend = Backend::start().await?;
    let (store, bucket) = (store_for(&backend).await, backend.minio.bucket());
    let s3 = backend.minio.s3_client();
    // LastModified has a resolution of a second or coarser in some answers.
    let before = SystemTime::now() - Duration::from_secs(2);
    let mut keys: Vec<String> = (0..KEYS).map(|i| format!("list/{:x}/{i}", i % 7)).collect();
    futures::stream::iter(keys.clone())
        .map(|key| {
            let s3 = s3.clone();
            async move { s3.put_object().bucket(bucket).key(key).body(ByteStream::from_static(b"x")).send().await }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    s3.put_object()
        .bucket(bucket)
        .key(format!("{TOMBSTONE_PREFIX}list/0/0"))
        .body(ByteStream::from_static(b""))
        .send()
        .await?;
    let after = SystemTime::now() + Duration::from_secs(2);
    keys.sort();

    let lists_before = backend.store_api_count("ListObjectsV2").await?;
    let mut listed = Vec::new();
    let mut start_after = None;
    let mut pages = 0;
    loop {
        let page = store.list_page(bucket, "", start_after.as_deref(), 1000).await?;
        pages += 1;
        listed.extend(page.objects);
        match page.next_start_after {
            Some(next) => start_after = Some(next),
            None => break,
        }
    }
    let requests = backend.store_api_count("ListObjectsV2").await? - lists_before;
    ensure!(requests == pages, "{pages} pages took {requests} ListObjectsV2 requests");
    ensure!(pages == KEYS.div_ceil(1000) as u64, "{pages} pages");
    let names: Vec<&str> = listed.iter().map(|o| o.key.as_str()).collect();
    ensure!(names == keys, "the listing is not every key once in order ({} listed)", names.len());
    for o in &listed {
        ensure!(o.last_modified > before && o.last_modified < after, "{}: LastModified {:?}", o.key, o.last_modified);
        ensure!(o.size == 1 && o.etag == quoted(&hex::encode(Md5::digest(b"x"))), "{o:?}");
    }
    ensure!(store.list(bucket, "list/3/").await?.len() == keys.iter().filter(|k| k.starts_with("list/3/")).count());
    Ok(())
}

/// Store requests from the S3 store arrive this late (toxiproxy), so another writer's change fits
/// between its parts and its CompleteMultipartUpload.
const SLOW_LINK_MS: u64 = 2000;

#[tokio::test]
async fn an_object_replaced_during_a_multipart_upload_is_not_overwritten() -> Result<()> {
    let backend = Backend::start().await?;
    let bucket = backend.minio.bucket().to_owned();
    let toxic = serde_json::json!({
        "name": "latency_upstream",
        "type": "latency",
        "stream": "upstream",
        "toxicity": 1.0,
        "attributes": { "latency": SLOW_LINK_MS, "jitter": 0 },
    });
    backend.toxi.add_toxic(support::STORE_PROXY, toxic).await?;
    let slow = S3Store::from_client(backend.minio.s3_client_for(&format!("http://{}", backend.store_addr)));
    let s3 = backend.minio.s3_client();
    let key = "during/k";
    s3.put_object().bucket(&bucket).key(key).body(ByteStream::from_static(b"read")).send().await?;
    let read = store_for(&backend).await.head(&bucket, key).await?.context("head")?.etag;

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("object");
    let parts = [MIN_PART_SIZE, MIN_PART_SIZE, 10];
    let (data, _) = part_file(&path, &parts)?;
    let parts_before = backend.store_api_count("PutObjectPart").await?;
    let upload = tokio::spawn({
        let (bucket, path) = (bucket.clone(), path.clone());
        async move {
            let meta = ObjectMeta::for_data(3, &data);
            let cond = Precondition::Matches(&read);
            slow.put_file_if(&bucket, key, &path, &parts, meta, &ObjectAttrs::default(), cond).await
        }
    });
    // The upload is under way (its first part has landed): another writer replaces the object.
    blockproxy_testenv::eventually(Duration::from_secs(60), Duration::from_millis(20), || async {
        let n = backend.store_api_count("PutObjectPart").await? - parts_before;
        ensure!(n >= 1, "no part uploaded yet");
        Ok(())
    })
    .await?;
    s3.put_object().bucket(&bucket).key(key).body(ByteStream::from_static(b"newer")).send().await?;
    let err = upload.await?.unwrap_err();
    ensure!(matches!(err, StoreError::PreconditionFailed { .. }), "the upload completed over a newer object: {err}");
    let now = s3.get_object().bucket(&bucket).key(key).send().await?.body.collect().await?.into_bytes();
    ensure!(now[..] == b"newer"[..], "the newer object was replaced");
    ensure!(open_uploads(&backend, key).await? == 0, "the failed upload was not aborted");
    Ok(())
}
