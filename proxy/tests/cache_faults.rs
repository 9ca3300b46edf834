//! The cache's own faults, against the real binary and MinIO: a cache disk that fills up before
//! the quota does, and reads that race a flushed delete through the single-flight fetch.

mod support;

use anyhow::{Context, Result, ensure};
use blockproxy_testenv::eventually;
use std::collections::BTreeMap;
use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cache_disk_answers_503_with_retry_after_and_leaves_no_partial_files() -> Result<()> {
    const BLOCK: usize = 192 << 10;
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    // A 2 MiB filesystem under a 1 GiB quota: the disk fills long before the quota does.
    let disk = TmpfsMount::new(&dir.path().join("cache"), 2 << 20)?;
    let proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    // With the store cut, every block stays dirty, so nothing can be evicted to make room.
    backend.toxi.set_down(STORE_PROXY, true).await?;

    let mut acked = BTreeMap::new();
    let mut refused = None;
    for i in 0..64 {
        let (key, data) = (format!("full/{i}"), random_bytes(BLOCK));
        let r = proxy.put(&key, &data).await?;
        if r.status() != 200 {
            refused = Some(r);
            break;
        }
        acked.insert(key, data);
    }
    let r = refused.context("64 blocks of 192 KiB fitted on a 2 MiB disk")?;
    let (status, retry_after) = (r.status(), r.headers().get("retry-after").cloned());
    let body = r.text().await?;
    assert_eq!(status, 503, "a full disk is back-pressure, not a server error: {body}");
    assert!(retry_after.is_some(), "503 without Retry-After: {body}");
    ensure!(!acked.is_empty(), "not even one block fitted before the disk was full");
    assert_eq!(proxy.metric("blockproxy_http_backpressure_total").await?, 1.0);

    let leftovers: Vec<_> = std::fs::read_dir(proxy.cache_dir().join("tmp"))?.collect::<Result<_, _>>()?;
    let leftovers: Vec<_> = leftovers.iter().map(|e| e.path()).collect();
    assert!(leftovers.is_empty(), "the refused write left partial files behind: {leftovers:?}");

    // Every block acknowledged before the disk filled up is intact, served and then flushed.
    for (key, data) in &acked {
        assert_eq!(proxy.get_bytes(key).await?.as_deref(), Some(data.as_slice()), "{key}");
    }
    backend.toxi.set_down(STORE_PROXY, false).await?;
    proxy.wait_flushed(Duration::from_secs(60)).await?;
    for (key, data) in &acked {
        assert_eq!(backend.object(key).await?.as_deref(), Some(data.as_slice()), "{key} in the store");
    }

    // Flushed blocks are clean and evictable: the proxy makes room on the full disk for new writes.
    let after = random_bytes(BLOCK);
    proxy.put_ok("full/after", &after).await?;
    assert_eq!(proxy.get_bytes("full/after").await?.as_deref(), Some(after.as_slice()));
    drop(proxy);
    drop(disk);
    Ok(())
}

/// A GET that misses starts a slow store fetch of the old value; then a DELETE is acknowledged
/// (and flushed, with writeback). A GET sent after that must not join the older fetch.
async fn read_after_acknowledged_delete_does_not_join_an_older_fetch(opts: ProxyOptions) -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(&backend, dir.path(), opts).await?;
    // Small enough for MinIO to keep inline: it releases its object lock before streaming such an
    // object, so the slow read below does not hold back the delete in the store.
    let old = random_bytes(32 << 10);
    backend.put_object("sf/k", &old).await?;
    // 32 KiB at 4 KB/s: the fetch of the old value takes about 8 s; the delete's requests are tiny.
    let toxic = backend.toxi.add_bandwidth(STORE_PROXY, 4).await?;

    let (http, url) = (proxy.http.clone(), proxy.block_url("sf/k"));
    let first_read = tokio::spawn(async move {
        let r = http.get(url).bearer_auth(TOKEN).send().await?;
        anyhow::Ok((r.status(), r.bytes().await?))
    });
    eventually(Duration::from_secs(10), Duration::from_millis(20), || async {
        ensure!(backend.store_get_count().await? >= 1, "the first read's store fetch has not started");
        Ok(())
    })
    .await?;

    let r = proxy.delete("sf/k").await?;
    assert_eq!(r.status(), 204, "{}", r.text().await?);
    proxy.wait_flushed(Duration::from_secs(10)).await?;
    ensure!(
        !first_read.is_finished(),
        "the slow fetch ended before the delete was acknowledged; the race this test needs did not happen"
    );

    let r = proxy.get("sf/k").await?;
    let status = r.status();
    let len = r.bytes().await?.len();
    assert_eq!(status, 404, "a read after an acknowledged delete got {len} bytes of the older fetch");

    // The first read started before the delete, so the old value is a correct answer for it.
    let (status, body) = first_read.await??;
    assert_eq!((status.as_u16(), body.as_ref() == old.as_slice()), (200, true));
    backend.toxi.remove_toxic(STORE_PROXY, &toxic).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_a_flushed_delete_never_joins_an_older_fetch() -> Result<()> {
    read_after_acknowledged_delete_does_not_join_an_older_fetch(ProxyOptions::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_a_write_through_delete_never_joins_an_older_fetch() -> Result<()> {
    read_after_acknowledged_delete_does_not_join_an_older_fetch(ProxyOptions {
        no_writeback: true,
        ..Default::default()
    })
    .await
}
