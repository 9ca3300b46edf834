//! The object model at the proxy (ADR 0004), against a real MinIO: multipart staging at the
//! home, attributes and S3 ETags reaching the store, block reads pinned to the store's ETag, and
//! crashes during staging and completion.

mod support;

use anyhow::{Context, Result, bail, ensure};
use blockproxy::protocol::{MIN_PART_SIZE, UploadCompleted, UploadParts};
use blockproxy_testenv::eventually;
use sha2::{Digest, Sha256};
use std::time::Duration;
use support::*;

const MIB: usize = 1 << 20;

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The object in MinIO must be flushed (present) and hold exactly `data`.
async fn flushed(backend: &Backend, key: &str, data: &[u8]) -> Result<()> {
    eventually(Duration::from_secs(120), Duration::from_millis(200), || async {
        let got = backend.object(key).await?.context("not flushed yet")?;
        ensure!(got.len() == data.len() && sha(&got) == sha(data), "MinIO holds {} other bytes", got.len());
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_upload_staged_at_the_home_reaches_the_store_whole_with_its_etag_and_attributes() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    let data = random_bytes(300 * MIB + 12_345);
    let attrs = [("content-type", "video/mp4"), ("cache-control", "max-age=60"), ("x-amz-meta-camera", "north")];
    let upload = proxy.create_upload("media/big.mp4", &attrs).await?;

    // An upload id belongs to its key.
    let other = proxy.put_part("media/other", &upload, 1, b"x").await?;
    assert_eq!(other.status(), 404, "a part for another key's upload");
    let abort_other = proxy
        .http
        .delete(proxy.upload_url("media/other"))
        .query(&[("uploadId", &upload)])
        .bearer_auth(TOKEN)
        .send()
        .await?;
    assert_eq!(abort_other.status(), 404, "an abort through another key");

    let etags = proxy.put_parts("media/big.mp4", &upload, &data, 8 * MIB).await?;
    let listed: UploadParts = proxy
        .http
        .get(proxy.upload_url("media/big.mp4"))
        .query(&[("uploadId", &upload)])
        .bearer_auth(TOKEN)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(listed.parts.iter().map(|p| p.etag.clone()).collect::<Vec<_>>(), etags);
    assert_eq!(listed.parts.iter().map(|p| p.size).sum::<u64>(), data.len() as u64);

    let r = proxy.complete_upload("media/big.mp4", &upload, &etags).await?;
    ensure!(r.status() == 200, "complete: {} {}", r.status(), r.text().await?);
    let done: UploadCompleted = r.json().await?;
    assert_eq!(done.size, data.len() as u64);
    assert!(done.etag.ends_with(&format!("-{}\"", etags.len())), "a multipart ETag: {}", done.etag);
    // A retried Complete answers the same.
    let again: UploadCompleted = proxy.complete_upload("media/big.mp4", &upload, &etags).await?.json().await?;
    assert_eq!(again, done);

    // Read back at the home while dirty: a range from the middle, and the object's identity.
    let r = proxy.get_range("media/big.mp4", 100_000_000..101_000_000).await?;
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["etag"].to_str()?, done.etag);
    assert_eq!(r.headers()["content-type"].to_str()?, "video/mp4");
    assert_eq!(r.headers()["x-amz-meta-camera"].to_str()?, "north");
    assert_eq!(r.headers()["x-blockproxy-object-size"].to_str()?, data.len().to_string());
    assert!(r.headers().get("x-blockproxy-store-etag").is_none(), "not in the store yet");
    assert_eq!(r.bytes().await?.as_ref(), &data[100_000_000..101_000_000]);

    flushed(&backend, "media/big.mp4", &data).await?;
    let head = backend.head_object("media/big.mp4").await?.context("flushed")?;
    assert_eq!(head.e_tag(), Some(done.etag.as_str()), "MinIO's ETag is the one the proxy answered");
    assert_eq!(head.content_type(), Some("video/mp4"));
    assert_eq!(head.cache_control(), Some("max-age=60"));
    assert_eq!(head.metadata().and_then(|m| m.get("camera")).map(String::as_str), Some("north"));
    let r = proxy.put_part("media/big.mp4", &upload, 1, b"late").await?;
    assert_eq!(r.status(), 404, "a completed upload takes no more parts");
    Ok(())
}

/// The Complete turns the staged parts into the object's dirty file: those bytes are counted
/// once, so an object of more than half the quota completes, and nothing stays counted after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_of_more_than_half_the_quota_complete_one_after_another() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let opts = ProxyOptions { quota: "64Mi".into(), ..ProxyOptions::default() };
    let proxy = ProxyProcess::start(&backend, dir.path(), opts).await?;
    for round in 0..2 {
        let key = format!("big/{round}");
        let data = random_bytes(40 * MIB + round);
        let upload = proxy.create_upload(&key, &[]).await?;
        let etags = proxy.put_parts(&key, &upload, &data, 8 * MIB).await?;
        let r = proxy.complete_upload(&key, &upload, &etags).await?;
        ensure!(r.status() == 200, "complete of {key}: {} {}", r.status(), r.text().await?);
        flushed(&backend, &key, &data).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completes_follow_s3_rules_and_an_abort_removes_the_upload() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    let upload = proxy.create_upload("small-parts", &[]).await?;
    let etags = proxy.put_parts("small-parts", &upload, &random_bytes(3 * MIB), MIB).await?;
    let r = proxy.complete_upload("small-parts", &upload, &etags).await?;
    assert_eq!(r.status(), 400);
    assert!(r.text().await?.contains("EntityTooSmall"), "parts below {MIN_PART_SIZE} bytes but the last");
    let wrong = vec![etags[0].clone(), "\"00000000000000000000000000000000\"".to_owned(), etags[2].clone()];
    let r = proxy.complete_upload("small-parts", &upload, &wrong).await?;
    assert_eq!(r.status(), 400);
    assert!(r.text().await?.contains("InvalidPart"));

    let r = proxy
        .http
        .delete(proxy.upload_url("small-parts"))
        .query(&[("uploadId", &upload)])
        .bearer_auth(TOKEN)
        .send()
        .await?;
    assert_eq!(r.status(), 204);
    let r = proxy.put_part("small-parts", &upload, 1, b"x").await?;
    assert_eq!(r.status(), 404, "an aborted upload is gone");
    assert!(backend.object("small-parts").await?.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_put_carries_attributes_and_parts_to_the_store_and_answers_its_s3_etag() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    let data = random_bytes(12 * MIB);
    let r = proxy
        .http
        .put(proxy.block_url("docs/report.pdf"))
        .bearer_auth(TOKEN)
        .header(blockproxy::protocol::CHECKSUM_HEADER, blockproxy::protocol::Checksum::crc32c(&data).to_string())
        .header(blockproxy::protocol::PARTS_HEADER, format!("{},{}", 8 * MIB, 4 * MIB))
        .header("content-type", "application/pdf")
        .header("content-disposition", "attachment")
        .header("x-amz-meta-owner", "ops")
        .body(data.clone())
        .send()
        .await?;
    ensure!(r.status() == 200, "PUT: {} {}", r.status(), r.text().await?);
    let etag = r.headers()["etag"].to_str()?.to_owned();
    assert!(etag.ends_with("-2\""), "two parts: {etag}");

    let small = b"hello, object".to_vec();
    let r = proxy.put("docs/hello.txt", &small).await?;
    let small_etag = r.headers()["etag"].to_str()?.to_owned();
    assert_eq!(small_etag, format!("\"{}\"", hex::encode(md5_of(&small))), "one part: the MD5");

    flushed(&backend, "docs/report.pdf", &data).await?;
    flushed(&backend, "docs/hello.txt", &small).await?;
    let head = backend.head_object("docs/report.pdf").await?.context("flushed")?;
    assert_eq!(head.e_tag(), Some(etag.as_str()));
    assert_eq!(head.content_type(), Some("application/pdf"));
    assert_eq!(head.content_disposition(), Some("attachment"));
    assert_eq!(head.metadata().and_then(|m| m.get("owner")).map(String::as_str), Some("ops"));
    assert_eq!(backend.head_object("docs/hello.txt").await?.context("flushed")?.e_tag(), Some(small_etag.as_str()));

    // Clean now: the home answers the store's ETag too, and its attributes.
    let r = eventually(Duration::from_secs(10), Duration::from_millis(100), || async {
        let r = proxy.head("docs/report.pdf").await?;
        if r.headers().get("x-blockproxy-store-etag").is_none() {
            bail!("no store ETag yet");
        }
        Ok(r)
    })
    .await?;
    assert_eq!(r.headers()["x-blockproxy-store-etag"].to_str()?, etag);
    assert_eq!(r.headers()["content-type"].to_str()?, "application/pdf");
    assert!(r.headers().contains_key("last-modified"));
    Ok(())
}

fn md5_of(data: &[u8]) -> [u8; 16] {
    use md5::Digest as _;
    md5::Md5::digest(data).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_read_pinned_to_an_etag_gets_412_once_the_object_is_replaced_behind_the_cache() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    let block = 256 << 10;
    let old = random_bytes(3 * block + 100);
    backend.put_object("pinned", &old).await?;
    let head = proxy.head("pinned").await?;
    assert_eq!(head.status(), 200);
    let etag = head.headers()["x-blockproxy-store-etag"].to_str()?.to_owned();
    assert_eq!(head.headers()["x-blockproxy-object-size"].to_str()?, old.len().to_string());

    let r = proxy.get_block("pinned", 1, block as u64, &etag).await?;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await?.as_ref(), &old[block..2 * block]);
    let last = proxy.get_block("pinned", 3, block as u64, &etag).await?;
    assert_eq!(last.bytes().await?.as_ref(), &old[3 * block..], "the last block is cut at the end");
    assert_eq!(proxy.get_block("pinned", 4, block as u64, &etag).await?.status(), 416);
    // A Range inside the block moves only its bytes: first from the store (the whole block is
    // cached), then from the cache. A Range reaching into the next block is refused.
    for source in ["store", "cache"] {
        let r = proxy.get_block_part("pinned", 0, block as u64, &etag, 10..5000).await?;
        assert_eq!(r.status(), 206);
        assert_eq!(r.headers()["x-blockproxy-source"].to_str()?, source);
        assert_eq!(r.headers()["content-range"].to_str()?, format!("bytes 10-4999/{}", old.len()));
        assert_eq!(r.bytes().await?.as_ref(), &old[10..5000], "from the {source}");
    }
    let across = proxy.get_block_part("pinned", 0, block as u64, &etag, block - 10..block + 10).await?;
    assert_eq!(across.status(), 416);

    // Replaced behind the cache: a block not read before, pinned to the old ETag, is refused.
    let new = random_bytes(3 * block + 100);
    backend.put_object("pinned", &new).await?;
    let r = proxy.get_block("pinned", 2, block as u64, &etag).await?;
    assert_eq!(r.status(), 412, "{}", r.text().await?);
    // Reading the attributes again (after the TTL) gives the new ETag, and its blocks.
    let fresh = eventually(Duration::from_secs(10), Duration::from_millis(100), || async {
        let e = proxy.head("pinned").await?.headers()["x-blockproxy-store-etag"].to_str()?.to_owned();
        ensure!(e != etag, "still the old ETag");
        Ok(e)
    })
    .await?;
    let r = proxy.get_block("pinned", 1, block as u64, &fresh).await?;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await?.as_ref(), &new[block..2 * block], "never a block of the old object");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_read_of_a_large_object_fetches_only_that_block_from_the_store() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    let data = random_bytes(1 << 30);
    // Written by another tool, in MinIO only.
    let s3 = backend.minio.s3_client();
    let key = format!("{PREFIX}/huge");
    let bucket = backend.minio.bucket();
    let created = s3.create_multipart_upload().bucket(bucket).key(&key).send().await?;
    let id = created.upload_id().context("upload id")?;
    let mut parts = Vec::new();
    for (i, chunk) in data.chunks(64 * MIB).enumerate() {
        let n = i as i32 + 1;
        let out = s3
            .upload_part()
            .bucket(bucket)
            .key(&key)
            .upload_id(id)
            .part_number(n)
            .body(chunk.to_vec().into())
            .send()
            .await?;
        parts.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(n)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .build(),
        );
    }
    s3.complete_multipart_upload()
        .bucket(bucket)
        .key(&key)
        .upload_id(id)
        .multipart_upload(aws_sdk_s3::types::CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await?;

    let gets_before = backend.store_get_count().await?;
    let head = proxy.head("huge").await?;
    assert_eq!(head.headers()["x-blockproxy-object-size"].to_str()?, data.len().to_string());
    assert_eq!(backend.store_get_count().await?, gets_before, "a HEAD fetches no data");
    let etag = head.headers()["x-blockproxy-store-etag"].to_str()?.to_owned();

    let read_before = proxy.metric("blockproxy_store_read_bytes_total").await?;
    let block = 4 * MIB;
    let r = proxy.get_block("huge", 100, block as u64, &etag).await?;
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["x-blockproxy-source"], "store");
    assert_eq!(r.bytes().await?.as_ref(), &data[100 * block..101 * block]);
    let fetched = proxy.metric("blockproxy_store_read_bytes_total").await? - read_before;
    assert_eq!(fetched as usize, block, "exactly one block came from the store");
    // Again: from the cache, nothing more from the store.
    let r = proxy.get_block("huge", 100, block as u64, &etag).await?;
    assert_eq!(r.headers()["x-blockproxy-source"], "cache");
    assert_eq!(r.bytes().await?.as_ref(), &data[100 * block..101 * block]);
    assert_eq!(proxy.metric("blockproxy_store_read_bytes_total").await? - read_before, fetched);
    // A whole GET of a clean object over one block is refused with a hint, not fetched whole.
    let r = proxy.get("huge").await?;
    assert_eq!(r.status(), 400);
    assert!(r.text().await?.contains("read it in blocks"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_upload_is_removed_after_the_upload_expiry() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let opts = ProxyOptions { extra: vec!["--upload-expiry".into(), "2s".into()], ..Default::default() };
    let proxy = ProxyProcess::start(&backend, dir.path(), opts).await?;
    let upload = proxy.create_upload("abandoned", &[]).await?;
    let r = proxy.put_part("abandoned", &upload, 1, &random_bytes(MIB)).await?;
    assert_eq!(r.status(), 200);
    let staged = proxy.cache_dir().join("uploads").join(&upload);
    assert!(staged.is_dir());
    eventually(Duration::from_secs(30), Duration::from_millis(200), || async {
        ensure!(!staged.exists(), "still staged");
        Ok(())
    })
    .await?;
    let r = proxy.put_part("abandoned", &upload, 2, b"late").await?;
    assert_eq!(r.status(), 404, "an expired upload is gone");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_staging_or_completion_never_publishes_a_partial_object_nor_loses_a_completed_one() -> Result<()>
{
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let mut proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    let data = random_bytes(96 * MIB + 7);

    // Killed while parts are staged, one of them half sent: nothing is ever published.
    let upload = proxy.create_upload("staging", &[]).await?;
    proxy.put_parts("staging", &upload, &data[..32 * MIB], 8 * MIB).await?;
    let half = {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
        tx.send(Ok(data[32 * MIB..36 * MIB].to_vec())).await?;
        let req = proxy
            .http
            .put(proxy.upload_url("staging"))
            .query(&[("uploadId", upload.as_str()), ("partNumber", "5")])
            .bearer_auth(TOKEN)
            .header(blockproxy::protocol::CHECKSUM_HEADER, "crc32c=00000000")
            .header("content-length", (8 * MIB).to_string())
            .body(reqwest::Body::wrap_stream(tokio_stream_of(rx)));
        let task = tokio::spawn(req.send());
        (tx, task)
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.kill9();
    drop(half);
    proxy.restart().await?;
    proxy.wait_flushed(Duration::from_secs(30)).await?;
    assert!(backend.object("staging").await?.is_none(), "no object from an unfinished upload");
    assert_eq!(proxy.get("staging").await?.status(), 404);

    // Killed at various moments of a Complete: an acknowledged one is whole in the store after
    // the restart; an unacknowledged one is whole or absent, never partial.
    for (round, delay_ms) in [0u64, 20, 80, 200, 600].into_iter().enumerate() {
        let key = format!("complete-{round}");
        let upload = proxy.create_upload(&key, &[]).await?;
        let etags = proxy.put_parts(&key, &upload, &data, 8 * MIB).await?;
        let complete = {
            let (http, url, body) = (proxy.http.clone(), proxy.upload_url(&key), etags.clone());
            let upload = upload.clone();
            tokio::spawn(async move {
                let parts = body
                    .iter()
                    .enumerate()
                    .map(|(i, e)| blockproxy::protocol::CompletePart {
                        part_number: i as u32 + 1,
                        etag: Some(e.clone()),
                    })
                    .collect();
                let req = blockproxy::protocol::CompleteUpload { parts, version: None };
                http.post(url).query(&[("uploadId", upload)]).bearer_auth(TOKEN).json(&req).send().await
            })
        };
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        proxy.kill9();
        let acked = matches!(complete.await?, Ok(r) if r.status() == 200);
        proxy.restart().await?;
        proxy.wait_flushed(Duration::from_secs(60)).await?;
        match backend.object(&key).await? {
            Some(got) => assert!(sha(&got) == sha(&data) && got.len() == data.len(), "round {round}: a partial object"),
            None => assert!(!acked, "round {round}: an acknowledged object was lost"),
        }
        println!("round {round}: killed after {delay_ms} ms, acknowledged: {acked}");
    }
    Ok(())
}

/// A body stream fed by a channel (left open: the sender stalls the body).
fn tokio_stream_of(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_parts_count_against_the_disk_quota_like_dirty_data() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let opts = ProxyOptions { quota: "20Mi".into(), ..Default::default() };
    let proxy = ProxyProcess::start(&backend, dir.path(), opts).await?;
    let upload = proxy.create_upload("quota", &[]).await?;
    let part = random_bytes(8 * MIB);
    assert_eq!(proxy.put_part("quota", &upload, 1, &part).await?.status(), 200);
    assert_eq!(proxy.put_part("quota", &upload, 2, &part).await?.status(), 200);
    let full = proxy.put_part("quota", &upload, 3, &part).await?;
    assert_eq!(full.status(), 503, "a third part would exceed the quota");
    assert!(full.headers().contains_key("retry-after"));
    // Aborting gives the staged bytes back.
    let r =
        proxy.http.delete(proxy.upload_url("quota")).query(&[("uploadId", &upload)]).bearer_auth(TOKEN).send().await?;
    assert_eq!(r.status(), 204);
    let again = proxy.create_upload("quota", &[]).await?;
    for n in 1..=2 {
        assert_eq!(proxy.put_part("quota", &again, n, &part).await?.status(), 200, "part {n} after the abort");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unflushed_object_is_listed_and_read_at_its_home_with_its_etag_and_no_store_etag() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    backend.toxi.set_down(STORE_PROXY, true).await?;
    let data = random_bytes(3 * MIB);
    let r = proxy.put("held/one", &data).await?;
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str()?.to_owned();
    let listed: blockproxy::protocol::DirtyKeys = proxy
        .http
        .get(proxy.url(&format!("/v1/volumes/{VOLUME}/dirty")))
        .query(&[("prefix", "held/")])
        .bearer_auth(TOKEN)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let [entry] = listed.keys.as_slice() else { bail!("{listed:?}") };
    assert_eq!(
        (entry.key.as_str(), entry.size, entry.etag.as_deref()),
        ("held/one", data.len() as u64, Some(etag.as_str()))
    );
    assert!(entry.last_modified_ms.is_some());
    let head = proxy.head("held/one").await?;
    assert_eq!(head.headers()["etag"].to_str()?, etag);
    assert!(head.headers().get("x-blockproxy-store-etag").is_none(), "dirty: not in the store");
    let r = proxy.get_range("held/one", 1000..2000).await?;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await?.as_ref(), &data[1000..2000]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_writeback_a_completed_upload_is_in_the_store_when_acknowledged() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let opts = ProxyOptions { no_writeback: true, ..Default::default() };
    let proxy = ProxyProcess::start(&backend, dir.path(), opts).await?;
    let data = random_bytes(MIN_PART_SIZE as usize + 1000);
    let upload = proxy.create_upload("through", &[("content-type", "text/csv")]).await?;
    let etags = proxy.put_parts("through", &upload, &data, MIN_PART_SIZE as usize).await?;
    let r = proxy.complete_upload("through", &upload, &etags).await?;
    ensure!(r.status() == 200, "complete: {} {}", r.status(), r.text().await?);
    let done: UploadCompleted = r.json().await?;
    // No waiting: the acknowledgement came after the store's.
    let got = backend.object("through").await?.context("in the store when acknowledged")?;
    assert_eq!(sha(&got), sha(&data));
    let head = backend.head_object("through").await?.context("in the store")?;
    assert_eq!(head.e_tag(), Some(done.etag.as_str()));
    assert_eq!(head.content_type(), Some("text/csv"));
    Ok(())
}

/// Bytes the process `pid` has read through read-like system calls (pread, sendfile), from
/// `/proc/PID/io`: what a hit costs in file reads, whatever the page cache holds.
fn bytes_read_by(pid: u32) -> Result<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    let line = io.lines().find_map(|l| l.strip_prefix("rchar: ")).context("no rchar in /proc/PID/io")?;
    Ok(line.trim().parse()?)
}

/// Parts of a cached block read only their own bytes from disk (ADR 0020), once the block's first
/// part read has summed its pieces in one pass (ADR 0025): never the whole block on each read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_of_a_cached_block_reads_the_block_once_then_only_its_own_bytes() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    let block = 4 * MIB;
    let data = random_bytes(4 * block);
    backend.put_object("striped", &data).await?;
    let etag = proxy.head("striped").await?.headers()["x-blockproxy-store-etag"].to_str()?.to_owned();
    // Cached by its first read, verified by its second.
    for source in ["store", "cache"] {
        let r = proxy.get_block("striped", 2, block as u64, &etag).await?;
        assert_eq!(r.headers()["x-blockproxy-source"], source);
        assert_eq!(r.bytes().await?.as_ref(), &data[2 * block..3 * block]);
    }

    let pid = proxy.pid().context("the proxy is running")?;
    let (pieces, piece) = (16, 64 * 1024);
    let read_part = async |i: usize| -> Result<()> {
        let at = 2 * block + i * 3 * piece;
        let r = proxy.get_block_part("striped", 2, block as u64, &etag, at..at + piece).await?;
        assert_eq!(r.status(), 206);
        assert_eq!(r.headers()["x-blockproxy-source"], "cache");
        assert_eq!(r.bytes().await?.as_ref(), &data[at..at + piece]);
        Ok(())
    };
    // The file's first part read sums its pieces, in one pass over the block (ADR 0025).
    let before = bytes_read_by(pid)?;
    read_part(0).await?;
    let read = bytes_read_by(pid)? - before;
    let bound = (block + piece + MIB) as u64;
    assert!(
        read <= bound,
        "the first part read {read} bytes from files (bound {bound}: the block once, and its piece)"
    );
    let before = bytes_read_by(pid)?;
    for i in 1..=pieces {
        read_part(i).await?;
    }
    let read = bytes_read_by(pid)? - before;
    eprintln!("{pieces} parts of {piece} bytes read {read} bytes from files");
    // Its pieces (each part is one whole piece here), plus room for the process's other reads
    // (its block headers, /proc, sockets).
    let bound = (pieces * piece + MIB) as u64;
    assert!(read <= bound, "{pieces} pieces of {piece} bytes read {read} bytes from files (bound {bound})");
    Ok(())
}
