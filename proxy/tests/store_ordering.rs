//! Store writes are ordered by version whoever flushes them: two real proxies flushing different
//! versions of one key leave the newer one in the store, in either order, on MinIO (with the
//! race between one proxy's read and write forced open by toxiproxy) and on the local store. And
//! the store never serves corrupt bytes as valid.

mod support;

use anyhow::{Context, Result, ensure};
use aws_sdk_s3::primitives::ByteStream;
use blockproxy::protocol::{CHECKSUM_HEADER, Checksum, STORE_CRC32C_METADATA, STORE_VERSION_METADATA};
use blockproxy_testenv::eventually;
use serde_json::json;
use std::path::Path;
use std::time::Duration;
use support::*;

/// Upstream latency on a proxy's store link: every request reaches MinIO this late, so a flush's
/// HEAD and its PUT arrive seconds apart, and another proxy's flush fits in between.
const SLOW_LINK_MS: u64 = 3000;

async fn slow_link(backend: &Backend, link: &str) -> Result<()> {
    let toxic = json!({
        "name": "latency_upstream",
        "type": "latency",
        "stream": "upstream",
        "toxicity": 1.0,
        "attributes": { "latency": SLOW_LINK_MS, "jitter": 0 },
    });
    backend.toxi.add_toxic(link, toxic).await?;
    Ok(())
}

/// Two proxies on the same MinIO: `slow` through a link with [`SLOW_LINK_MS`] of latency.
async fn two_proxies_one_slow(backend: &Backend, root: &Path) -> Result<(ProxyProcess, ProxyProcess)> {
    let link = backend.toxi.create_proxy("slow-store", &backend.minio.addr().to_string()).await?;
    slow_link(backend, "slow-store").await?;
    std::fs::create_dir_all(root.join("slow"))?;
    std::fs::create_dir_all(root.join("fast"))?;
    let slow =
        ProxyProcess::start_with_store(backend, &root.join("slow"), ProxyOptions::default(), format!("http://{link}"))
            .await?;
    let fast = ProxyProcess::start(backend, &root.join("fast"), ProxyOptions::default()).await?;
    Ok((slow, fast))
}

/// Waits until MinIO has answered `n` more HEAD requests than `before`.
async fn wait_for_heads(backend: &Backend, before: u64, n: u64) -> Result<()> {
    eventually(Duration::from_secs(30), Duration::from_millis(20), || async {
        let now = backend.store_api_count("HeadObject").await?;
        ensure!(now >= before + n, "MinIO answered {} HEADs since, waiting for {n}", now - before);
        Ok(())
    })
    .await
}

/// The slow proxy's flush reads the store (HEAD), then the fast proxy flushes its version of the
/// key, then the slow proxy's PUT arrives. Returns what the store ends with, and the two
/// (version, data) pairs.
async fn race_one_key(slow_is_newer: bool) -> Result<(Option<Vec<u8>>, (u64, Vec<u8>), (u64, Vec<u8>))> {
    let backend = Backend::start().await?;
    let root = tempfile::tempdir()?;
    let (slow, fast) = two_proxies_one_slow(&backend, root.path()).await?;
    let key = "race/k";
    let (slow_data, fast_data) = (b"written through the slow proxy".to_vec(), b"written through the fast one".to_vec());

    let heads = backend.store_api_count("HeadObject").await?;
    let slow_version = slow.put_ok(key, &slow_data).await?;
    // The slow proxy's flush has read the store: its write is now decided on that read.
    wait_for_heads(&backend, heads, 1).await?;
    let fast_version = if slow_is_newer {
        let r = fast.put_exact_version(key, &fast_data, slow_version - 1).await?;
        ensure!(r.status() == 200, "PUT to the fast proxy: {}", r.status());
        version_of(&r)?
    } else {
        fast.put_ok(key, &fast_data).await?
    };
    ensure!((fast_version > slow_version) != slow_is_newer, "versions {slow_version} / {fast_version}");
    fast.wait_flushed(Duration::from_secs(30)).await?;
    slow.wait_flushed(Duration::from_secs(60)).await.context("the slow proxy never finished its flush")?;
    // The interleaving this test is about did happen: the slow proxy's write met a changed object.
    ensure!(slow.log_text().contains("lost a race"), "the slow proxy's conditional write never met the race");
    let stored = backend.object(key).await?.map(|b| b.to_vec());
    Ok((stored, (slow_version, slow_data), (fast_version, fast_data)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_flush_never_overtakes_a_newer_one_that_landed_after_its_read() -> Result<()> {
    let (stored, (sv, _), (fv, fast_data)) = race_one_key(false).await?;
    assert_eq!(
        stored.as_deref(),
        Some(fast_data.as_slice()),
        "the store must keep the newer version {fv}, not the older {sv} whose flush read the store first"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_flush_lands_even_when_an_older_one_slipped_in_after_its_read() -> Result<()> {
    let (stored, (sv, slow_data), (fv, _)) = race_one_key(true).await?;
    assert_eq!(
        stored.as_deref(),
        Some(slow_data.as_slice()),
        "the store must end with the newer version {sv}, not the older {fv} that landed in between"
    );
    Ok(())
}

/// MinIO ignores `If-Match` on DeleteObject. The slow proxy's flush of a delete reads the key,
/// then the fast proxy's newer write lands, then the slow proxy's DELETE arrives and removes it.
/// The newer write, acknowledged after the delete, must be what the store ends with (ADR 0001;
/// the fault test once ended with the key absent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_that_lands_after_a_newer_write_does_not_remove_it() -> Result<()> {
    let backend = Backend::start().await?;
    let root = tempfile::tempdir()?;
    let (slow, fast) = two_proxies_one_slow(&backend, root.path()).await?;
    let key = "race/deleted-then-written";
    fast.put_ok(key, b"first").await?;
    fast.wait_flushed(Duration::from_secs(30)).await?;

    let heads = backend.store_api_count("HeadObject").await?;
    let deleted = slow.delete(key).await?;
    ensure!(deleted.status().is_success(), "DELETE through the slow proxy: {}", deleted.status());
    let delete_version = version_of(&deleted)?;
    // Its flush reads the tombstone, then (after writing it) the key: from then on its DELETE is
    // decided, and on its way.
    wait_for_heads(&backend, heads, 2).await?;
    let newer = b"written after the delete was acknowledged";
    let written_version = fast.put_ok(key, newer).await?;
    ensure!(written_version > delete_version, "versions {delete_version} / {written_version}");
    slow.wait_flushed(Duration::from_secs(60)).await.context("the slow proxy never flushed its delete")?;
    fast.wait_flushed(Duration::from_secs(90)).await.context("the fast proxy never finished its flush")?;
    assert_eq!(
        backend.object(key).await?.as_deref(),
        Some(newer.as_slice()),
        "the store must end with version {written_version}, written after the delete {delete_version}"
    );
    // The interleaving this test is about did happen: the DELETE removed the newer write, which
    // its proxy then wrote again.
    ensure!(
        fast.log_text().contains("an older delete removed this write"),
        "the slow proxy's DELETE never landed on the newer write"
    );
    Ok(())
}

/// Two proxies sharing one `file://` store: in both orders, and with both flushing every key at
/// once, each key ends with the data of its newest version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_on_the_local_store_leave_the_newest_version_of_every_key() -> Result<()> {
    let backend = Backend::start().await?;
    let root = tempfile::tempdir()?;
    let store = root.path().join("store");
    let object = |key: &str| {
        std::fs::read(store.join(backend.minio.bucket()).join(local_store_path(&format!("{PREFIX}/{key}")))).ok()
    };
    let mut proxies = Vec::new();
    for name in ["a", "b"] {
        std::fs::create_dir_all(root.path().join(name))?;
        let opts = ProxyOptions::default();
        proxies.push(
            ProxyProcess::start_with_store(&backend, &root.path().join(name), opts, file_store_endpoint(&store))
                .await?,
        );
    }
    let (a, b) = (&proxies[0], &proxies[1]);

    // Older first, then newer.
    let v1 = a.put_ok("seq/1", b"older").await?;
    a.wait_flushed(Duration::from_secs(30)).await?;
    let v2 = b.put_ok("seq/1", b"newer").await?;
    assert!(v2 > v1);
    b.wait_flushed(Duration::from_secs(30)).await?;
    assert_eq!(object("seq/1").as_deref(), Some(&b"newer"[..]));

    // Newer first, then older: the older flush is skipped.
    let v3 = b.put_ok("seq/2", b"newer").await?;
    b.wait_flushed(Duration::from_secs(30)).await?;
    let r = a.put_exact_version("seq/2", b"older", v3 - 1).await?;
    assert_eq!(r.status(), 200);
    a.wait_flushed(Duration::from_secs(30)).await?;
    assert_eq!(object("seq/2").as_deref(), Some(&b"newer"[..]));

    // Both proxies flush their own version of the same keys at the same time.
    const KEYS: usize = 40;
    let writes = (0..KEYS).map(|i| async move {
        let key = format!("both/{i}");
        let (da, db) = (format!("{key} via a"), format!("{key} via b"));
        let (va, vb) = tokio::try_join!(a.put_ok(&key, da.as_bytes()), b.put_ok(&key, db.as_bytes()))?;
        anyhow::Ok((key, if va > vb { da } else { db }))
    });
    let newest = futures::future::try_join_all(writes).await?;
    a.wait_flushed(Duration::from_secs(60)).await?;
    b.wait_flushed(Duration::from_secs(60)).await?;
    for (key, want) in newest {
        assert_eq!(object(&key).as_deref(), Some(want.as_bytes()), "{key} must hold its newest version");
    }
    Ok(())
}

async fn put_raw_object(backend: &Backend, key: &str, data: &[u8], crc32c: Option<u32>) -> Result<()> {
    let mut req = backend
        .minio
        .s3_client()
        .put_object()
        .bucket(backend.minio.bucket())
        .key(format!("{PREFIX}/{key}"))
        .body(ByteStream::from(data.to_vec()));
    if let Some(crc) = crc32c {
        req = req.metadata(STORE_VERSION_METADATA, "5").metadata(STORE_CRC32C_METADATA, format!("{crc:08x}"));
    }
    req.send().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_in_the_store_is_never_served_and_foreign_objects_still_are() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;

    // The bytes in the store no longer match the checksum their writer recorded.
    put_raw_object(&backend, "c/rotten", b"bytes after bit rot", Some(crc32c::crc32c(b"bytes as written"))).await?;
    let r = proxy.get("c/rotten").await?;
    assert_eq!(r.status(), 502, "a corrupt object is an error, never data");
    assert!(r.text().await?.contains("corrupt"));

    // Intact objects carry the writer's checksum to the client.
    put_raw_object(&backend, "c/intact", b"bytes as written", Some(crc32c::crc32c(b"bytes as written"))).await?;
    // Objects written by other tools have no checksum: served as they are.
    put_raw_object(&backend, "c/foreign", b"written by another tool", None).await?;
    for (key, data) in [("c/intact", &b"bytes as written"[..]), ("c/foreign", b"written by another tool")] {
        let r = proxy.get(key).await?;
        assert_eq!(r.status(), 200, "{key}");
        let sum = r.headers().get(CHECKSUM_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(sum, Some(Checksum::crc32c(data).to_string()), "{key}");
        assert_eq!(&r.bytes().await?[..], data, "{key}");
    }
    Ok(())
}
