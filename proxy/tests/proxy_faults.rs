//! Faults: crashes, store outages, full quota, racing overwrites, shutdown and drain. Every
//! acknowledged block is counted and found in MinIO with the right bytes.

mod support;

use anyhow::{Context, Result, ensure};
use blockproxy_testenv::blockproxy::{files_under, flip_last_byte};
use blockproxy_testenv::eventually;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

/// Waits until MinIO holds exactly `expected` (key -> bytes, `None` = absent).
async fn assert_store_converges(
    backend: &Backend,
    expected: &BTreeMap<String, Option<Vec<u8>>>,
    timeout: Duration,
) -> Result<()> {
    eventually(timeout, Duration::from_millis(250), || async {
        for (key, want) in expected {
            let got = backend.object(key).await?;
            ensure!(
                got.as_deref() == want.as_deref(),
                "{key}: store has {:?} bytes, want {:?}",
                got.map(|b| b.len()),
                want.as_ref().map(Vec::len)
            );
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_blocks_survive_kill_9() -> Result<()> {
    let backend = Backend::start().await?;
    // A slow store keeps plenty of blocks dirty when the proxy is killed.
    backend.toxi.add_latency(STORE_PROXY, 30, 10).await?;
    let dir = tempfile::tempdir()?;
    let mut proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    let acked: Arc<Mutex<BTreeMap<String, Option<Vec<u8>>>>> = Arc::default();
    let mut refused = 0u64;
    const ROUNDS: usize = 12;
    for round in 0..ROUNDS {
        // A storm of concurrent PUTs; kill -9 at a random moment while they are in flight.
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let (http, url_base, acked) = (proxy.http.clone(), proxy.block_url(""), Arc::clone(&acked));
                tokio::spawn(async move {
                    let mut refused = 0u64;
                    for i in 0.. {
                        let key = format!("r{round}/w{w}/{i}");
                        let data = random_bytes((16 << 10) | ((i % 7) * 4096));
                        let sum = blockproxy::protocol::Checksum::crc32c(&data).to_string();
                        let sent = http
                            .put(format!("{url_base}{key}"))
                            .bearer_auth(TOKEN)
                            .header(blockproxy::protocol::CHECKSUM_HEADER, sum)
                            .body(data.clone())
                            .send()
                            .await;
                        match sent {
                            Ok(r) if r.status() == 200 => {
                                acked.lock().unwrap().insert(key, Some(data));
                            }
                            // Not acknowledged: the client may not assume anything about it.
                            Ok(_) | Err(_) => {
                                refused += 1;
                                break;
                            }
                        }
                    }
                    refused
                })
            })
            .collect();
        let delay = 100 + rand::random::<u64>() % 400;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        proxy.kill9();
        for w in writers {
            refused += w.await?;
        }
        // Alternate --sync so both write paths are crashed.
        proxy.opts.sync = round % 2 == 0;
        proxy.restart().await?;
    }
    let expected = acked.lock().unwrap().clone();
    assert!(expected.len() > ROUNDS * 8, "the storm acknowledged only {} writes", expected.len());
    proxy.wait_flushed(Duration::from_secs(120)).await?;
    assert_store_converges(&backend, &expected, Duration::from_secs(30)).await?;
    println!(
        "kill -9 x{ROUNDS}: {} acknowledged blocks, all {} in MinIO byte-identical; {refused} in-flight writes were cut off unacknowledged",
        expected.len(),
        expected.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_keeps_acking_and_serving_then_flushes_everything() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    // A small quota: 2 MiB of dirty data at most.
    let proxy =
        ProxyProcess::start(&backend, dir.path(), ProxyOptions { quota: "2Mi".into(), ..Default::default() }).await?;
    backend.toxi.set_down(STORE_PROXY, true).await?;

    let mut expected = BTreeMap::new();
    let mut back_pressure = None;
    for i in 0..64 {
        let key = format!("outage/{i}");
        let data = random_bytes(128 << 10);
        let r = proxy.put(&key, &data).await?;
        match r.status().as_u16() {
            200 => {
                expected.insert(key, Some(data));
            }
            503 => {
                let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u32>().ok());
                back_pressure = Some((i, retry_after, r.text().await?));
                break;
            }
            s => anyhow::bail!("PUT {key}: unexpected {s}"),
        }
    }
    let (at, retry_after, msg) = back_pressure.expect("the dirty quota must push back with 503");
    assert!(retry_after.is_some(), "503 carries Retry-After");
    assert!(msg.contains("quota"), "the 503 says why: {msg}");
    assert!(at >= 8, "only {at} writes fit in a 2 MiB quota");
    // While the store is down, acknowledged blocks are served from the cache.
    for (key, data) in &expected {
        assert_eq!(proxy.get_bytes(key).await?.as_deref(), data.as_deref(), "{key} readable during the outage");
    }
    // The SDK's own retries take a few seconds before a flush attempt counts as failed.
    eventually(Duration::from_secs(30), Duration::from_millis(200), || async {
        let errors = proxy.metric("blockproxy_writeback_flush_errors_total").await?;
        ensure!(errors > 0.0, "failed flushes are counted");
        Ok(())
    })
    .await?;
    assert!(proxy.metric("blockproxy_http_backpressure_total").await? >= 1.0);

    backend.toxi.set_down(STORE_PROXY, false).await?;
    proxy.wait_flushed(Duration::from_secs(90)).await?;
    assert_store_converges(&backend, &expected, Duration::from_secs(10)).await?;
    // Flushed blocks can be evicted, so writes are accepted again.
    proxy.put_ok("outage/after", &random_bytes(128 << 10)).await?;
    println!(
        "outage: {} blocks acknowledged while the store was down, 503 at write {at}, all flushed after",
        expected.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrites_and_deletes_racing_slow_flushes_end_in_the_last_acknowledged_state() -> Result<()> {
    let backend = Backend::start().await?;
    backend.toxi.add_latency(STORE_PROXY, 150, 100).await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    let keys: Vec<String> = (0..6).map(|i| format!("race/{i}")).collect();
    let mut tasks = Vec::new();
    for key in keys {
        let (http, url) = (proxy.http.clone(), proxy.block_url(&key));
        tasks.push(tokio::spawn(async move {
            let mut last: Option<Vec<u8>> = None;
            for step in 0..25 {
                if rand::random::<u8>().is_multiple_of(3) {
                    let r = http.delete(&url).bearer_auth(TOKEN).send().await?;
                    ensure!(r.status() == 204, "delete: {}", r.status());
                    last = None;
                } else {
                    let data = format!("{key} step {step} {}", rand::random::<u64>()).into_bytes();
                    let r = http
                        .put(&url)
                        .bearer_auth(TOKEN)
                        .header(
                            blockproxy::protocol::CHECKSUM_HEADER,
                            blockproxy::protocol::Checksum::crc32c(&data).to_string(),
                        )
                        .body(data.clone())
                        .send()
                        .await?;
                    ensure!(r.status() == 200, "put: {}", r.status());
                    last = Some(data);
                }
                tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 60)).await;
            }
            Ok((key, last))
        }));
    }
    let mut expected = BTreeMap::new();
    for t in tasks {
        let (key, last) = t.await??;
        // The proxy answers with the last acknowledged state at once...
        assert_eq!(proxy.get_bytes(&key).await?.map(|b| b.to_vec()), last, "{key} read back");
        expected.insert(key, last);
    }
    // ...and the store ends in it once flushed.
    proxy.wait_flushed(Duration::from_secs(60)).await?;
    assert_store_converges(&backend, &expected, Duration::from_secs(10)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_dirty_blocks_before_exit_and_a_restart_flushes_the_rest() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let mut proxy = ProxyProcess::start(
        &backend,
        dir.path(),
        ProxyOptions { extra: vec!["--shutdown-grace".into(), "20s".into()], ..Default::default() },
    )
    .await?;
    backend.toxi.set_down(STORE_PROXY, true).await?;
    let mut expected = BTreeMap::new();
    for i in 0..20 {
        let data = random_bytes(32 << 10);
        proxy.put_ok(&format!("term/{i}"), &data).await?;
        expected.insert(format!("term/{i}"), Some(data));
    }
    // Bring the store back just as the shutdown starts: the proxy flushes within its grace.
    backend.toxi.set_down(STORE_PROXY, false).await?;
    let status = proxy.terminate(Duration::from_secs(40)).await?;
    assert!(status.success(), "clean exit: {status}");
    assert_store_converges(&backend, &expected, Duration::from_secs(5)).await?;

    // Shutdown with the store down: exits after the grace period; the restart flushes the rest.
    let mut proxy = ProxyProcess::start(
        &backend,
        dir.path(),
        ProxyOptions { extra: vec!["--shutdown-grace".into(), "1s".into()], ..Default::default() },
    )
    .await?;
    backend.toxi.set_down(STORE_PROXY, true).await?;
    let data = random_bytes(1000);
    proxy.put_ok("term/late", &data).await?;
    proxy.terminate(Duration::from_secs(20)).await?;
    assert_eq!(backend.object("term/late").await?, None);
    backend.toxi.set_down(STORE_PROXY, false).await?;
    proxy.restart().await?;
    expected.insert("term/late".into(), Some(data));
    assert_store_converges(&backend, &expected, Duration::from_secs(30)).await?;
    Ok(())
}

/// A flush whose store request hangs (the store took the request and never answers) must not hold
/// the exit past the grace period: Kubernetes would SIGKILL the pod anyway, and until then the
/// proxy refuses writes. The flush is abandoned like a crash's: the block stays dirty on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_after_its_grace_while_a_flush_hangs_on_the_store() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let mut proxy = ProxyProcess::start(
        &backend,
        dir.path(),
        ProxyOptions { extra: vec!["--shutdown-grace".into(), "1s".into()], ..Default::default() },
    )
    .await?;
    // toxiproxy's timeout toxic with timeout 0 swallows the bytes and never closes the connection.
    let hang = backend
        .toxi
        .add_toxic(
            STORE_PROXY,
            serde_json::json!({"name": "hang", "type": "timeout", "stream": "upstream", "toxicity": 1.0,
                "attributes": {"timeout": 0}}),
        )
        .await?;
    let data = random_bytes(4 << 10);
    proxy.put_ok("hang/a", &data).await?;
    // The SDK's read timeout (60 s) is far beyond the grace: only the proxy's own bound ends this.
    let status = proxy.terminate(Duration::from_secs(15)).await.context("the proxy must exit soon after its grace")?;
    assert!(status.success(), "clean exit: {status}");
    assert_eq!(backend.object("hang/a").await?, None, "the hanging flush never reached the store");

    backend.toxi.remove_toxic(STORE_PROXY, &hang).await?;
    proxy.restart().await?;
    let expected = BTreeMap::from([("hang/a".to_owned(), Some(data))]);
    assert_store_converges(&backend, &expected, Duration::from_secs(30)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_refuses_writes_and_reports_done_when_everything_is_flushed() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    backend.toxi.set_down(STORE_PROXY, true).await?;
    for i in 0..10 {
        proxy.put_ok(&format!("drain/{i}"), &random_bytes(8 << 10)).await?;
    }
    // A GET reports without starting a drain, with the figures the operator shows per proxy.
    let before = proxy.drain_status().await?;
    assert!(!before.draining, "{before:?}");
    assert!(before.dirty_bytes >= 10 * (8 << 10) && before.cache_bytes >= before.dirty_bytes, "{before:?}");
    assert_eq!(before.quota_bytes, 1 << 30, "the --disk-quota of ProxyOptions::default()");
    let unauth = proxy.http.post(proxy.url("/v1/admin/drain")).bearer_auth(TOKEN).send().await?;
    assert_eq!(unauth.status(), 401, "a volume token is not an admin token");
    let started = proxy.http.post(proxy.url("/v1/admin/drain")).bearer_auth(ADMIN_TOKEN).send().await?;
    assert_eq!(started.status(), 202);
    let status = proxy.drain_status().await?;
    assert!(status.draining && !status.done && status.dirty_blocks == 10, "{status:?}");
    assert_eq!(proxy.put("drain/new", b"x").await?.status(), 503, "writes are refused while draining");
    assert_eq!(proxy.http.get(proxy.url("/readyz")).send().await?.status(), 503, "not ready while draining");
    backend.toxi.set_down(STORE_PROXY, false).await?;
    eventually(Duration::from_secs(30), Duration::from_millis(100), || async {
        let s = proxy.drain_status().await?;
        ensure!(s.done && s.dirty_bytes == 0, "{s:?}");
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_usage_within_quota_and_never_evicts_dirty_blocks() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let quota = 3u64 << 20;
    let proxy =
        ProxyProcess::start(&backend, dir.path(), ProxyOptions { quota: quota.to_string(), ..Default::default() })
            .await?;
    // Fill the cache with clean blocks (written, flushed) well beyond the quota.
    let mut expected = BTreeMap::new();
    for i in 0..16 {
        let data = random_bytes(256 << 10);
        proxy.put_ok(&format!("evict/clean{i}"), &data).await?;
        expected.insert(format!("evict/clean{i}"), Some(data));
        proxy.wait_flushed(Duration::from_secs(20)).await?;
        let used = proxy.metric("blockproxy_cache_used_bytes").await? as u64;
        assert!(used <= quota, "used {used} > quota {quota}");
    }
    // Now dirty blocks only (store down): they push the clean ones out, never each other.
    backend.toxi.set_down(STORE_PROXY, true).await?;
    let mut dirty_acked = 0;
    for i in 0..16 {
        let data = random_bytes(256 << 10);
        let key = format!("evict/dirty{i}");
        if proxy.put(&key, &data).await?.status() == 200 {
            expected.insert(key, Some(data));
            dirty_acked += 1;
        }
        let used = proxy.metric("blockproxy_cache_used_bytes").await? as u64;
        assert!(used <= quota, "used {used} > quota {quota}");
    }
    assert!(dirty_acked >= 8, "dirty writes evict clean blocks: only {dirty_acked} fit");
    assert_eq!(proxy.metric("blockproxy_cache_dirty_blocks").await? as usize, dirty_acked);
    // Every dirty block is still readable from the cache while the store is down.
    for i in 0..16 {
        let key = format!("evict/dirty{i}");
        if let Some(Some(data)) = expected.get(&key) {
            assert_eq!(proxy.get_bytes(&key).await?.as_deref(), Some(data.as_slice()));
        }
    }
    backend.toxi.set_down(STORE_PROXY, false).await?;
    proxy.wait_flushed(Duration::from_secs(60)).await?;
    assert_store_converges(&backend, &expected, Duration::from_secs(10)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_cached_block_is_refetched_and_never_served() -> Result<()> {
    // Read from memory (64 KiB) and checked as it is read from its file in chunks (3 MiB).
    for size in [64 << 10, 3 << 20] {
        corrupted_block_of(size).await.with_context(|| format!("a {size}-byte block"))?;
    }
    Ok(())
}

async fn corrupted_block_of(size: usize) -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    let data = random_bytes(size);
    proxy.put_ok("rot/clean", &data).await?;
    proxy.wait_flushed(Duration::from_secs(20)).await?;
    // Flip one byte of the clean block file on disk.
    let files: Vec<_> = files_under(&proxy.cache_dir().join("clean"));
    assert_eq!(files.len(), 1, "{files:?}");
    flip_last_byte(&files[0])?;
    let r = proxy.get("rot/clean").await?;
    assert_eq!(r.headers()["x-blockproxy-source"], "store", "the corrupt copy was dropped and refetched");
    assert_eq!(r.bytes().await?.as_ref(), data.as_slice());
    assert_eq!(proxy.metric("blockproxy_cache_corrupt_blocks_total").await?, 1.0);

    // A corrupt dirty block cannot be refetched: it is refused, not served.
    backend.toxi.set_down(STORE_PROXY, true).await?;
    proxy.put_ok("rot/dirty", &data).await?;
    let dirty: Vec<_> = files_under(&proxy.cache_dir().join("dirty"));
    flip_last_byte(&dirty[0])?;
    let r = proxy.get("rot/dirty").await?;
    let status = r.status();
    assert_eq!(status, 500, "a corrupt unflushed block is an error: {}", r.text().await?);
    let r = proxy.get_range("rot/dirty", 0..1000).await?;
    assert_eq!(r.status(), 500, "also when only its first bytes are asked for");
    Ok(())
}

/// ADR 0020: a cached block of a striped object is verified whole on its first read from the
/// cache in a process, whether that read asks for the block or for a part of it that the rot is
/// not in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_cached_striped_block_is_refetched_and_never_served() -> Result<()> {
    for part in [false, true] {
        corrupted_stripe(part).await.with_context(|| format!("read {}", if part { "in part" } else { "whole" }))?;
    }
    Ok(())
}

async fn corrupted_stripe(part: bool) -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    let block = 1 << 20;
    let data = random_bytes(4 * block);
    backend.put_object("rot/striped", &data).await?;
    let etag = proxy.head("rot/striped").await?.headers()["x-blockproxy-store-etag"].to_str()?.to_owned();
    let r = proxy.get_block("rot/striped", 1, block as u64, &etag).await?;
    assert_eq!(r.headers()["x-blockproxy-source"], "store");
    assert_eq!(r.bytes().await?.as_ref(), &data[block..2 * block]);
    let files: Vec<_> = files_under(&proxy.cache_dir().join("clean"));
    assert_eq!(files.len(), 1, "{files:?}");
    flip_last_byte(&files[0])?;

    let (r, want) = if part {
        let at = block..block + (64 << 10);
        (proxy.get_block_part("rot/striped", 1, block as u64, &etag, at.clone()).await?, &data[at])
    } else {
        (proxy.get_block("rot/striped", 1, block as u64, &etag).await?, &data[block..2 * block])
    };
    assert_eq!(r.headers()["x-blockproxy-source"], "store", "the corrupt copy was dropped and refetched");
    assert_eq!(r.bytes().await?.as_ref(), want);
    assert_eq!(proxy.metric("blockproxy_cache_corrupt_blocks_total").await?, 1.0);
    Ok(())
}

/// ADR 0025: a range of a clean cached file, read once (which checks the file and sums its
/// pieces), then rotting on disk, is never served: the proxy checks the pieces around each later
/// range, drops the rotten copy and reads the store. A range carries no checksum the client
/// could check against the data as written, so this is the only check it gets. Three files: a
/// striped block's, a whole object's read in blocks at its home, and a small object's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_rotting_after_its_files_checked_read_is_refetched_and_never_served() -> Result<()> {
    for file in [RangeOf::StripedBlock, RangeOf::HomeBlock, RangeOf::SmallObject] {
        rotten_range(file).await.with_context(|| format!("{file:?}"))?;
    }
    Ok(())
}

/// ADR 0025: a range larger than `--max-block-size` of a cached object (held whole, in one file)
/// is checked too. Once the file has rotted, the proxy drops it, and then answers such a range
/// as for any large object it does not hold: read it in blocks. It never serves the rot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_larger_than_a_block_of_a_rotten_file_is_refused_not_served() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let mut proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    let data = random_bytes(3 << 20);
    proxy.put_ok("rot/big", &data).await?;
    proxy.wait_flushed(Duration::from_secs(20)).await?;
    // The same file, now larger than the proxy's block size.
    proxy.opts.extra = vec!["--max-block-size".into(), "1Mi".into()];
    proxy.restart().await?;
    let large = 1000..data.len();
    for round in 0..2 {
        let r = proxy.get_range("rot/big", large.clone()).await?;
        assert_eq!(r.headers()["x-blockproxy-source"], "cache", "round {round}");
        assert_eq!(r.bytes().await?.as_ref(), &data[large.clone()], "round {round}");
    }
    let files: Vec<_> = files_under(&proxy.cache_dir().join("clean"));
    assert_eq!(files.len(), 1, "{files:?}");
    flip_last_byte(&files[0])?;
    let r = proxy.get_range("rot/big", large.clone()).await?;
    let status = r.status();
    let body = r.bytes().await?;
    assert_ne!(body.as_ref(), &data[large.clone()][..], "rotten bytes were served ({status})");
    assert_eq!(status, 400, "read it in blocks: {}", String::from_utf8_lossy(&body));
    assert_eq!(proxy.metric("blockproxy_cache_corrupt_blocks_total").await?, 1.0);
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum RangeOf {
    StripedBlock,
    HomeBlock,
    SmallObject,
}

async fn rotten_range(file: RangeOf) -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    let block = 1usize << 20;
    let data = random_bytes(if matches!(file, RangeOf::SmallObject) { 200 << 10 } else { 2 * block });
    let key = "rot/range";
    match file {
        RangeOf::StripedBlock => backend.put_object(key, &data).await?,
        RangeOf::HomeBlock | RangeOf::SmallObject => {
            proxy.put_ok(key, &data).await?;
            proxy.wait_flushed(Duration::from_secs(20)).await?;
        }
    }
    let etag = proxy.head(key).await?.headers()["x-blockproxy-store-etag"].to_str()?.to_owned();
    // The last block's ranges (object offsets); the second one holds the file's last byte.
    let (first, last) = match file {
        RangeOf::SmallObject => (10..1000, data.len() - 3000..data.len()),
        _ => (block + 10..block + 1000, 2 * block - 3000..2 * block),
    };
    let read = async |at: std::ops::Range<usize>| match file {
        RangeOf::SmallObject => proxy.get_range(key, at).await,
        _ => proxy.get_block_part(key, 1, block as u64, &etag, at).await,
    };
    if matches!(file, RangeOf::StripedBlock) {
        // Cached as a block of its own, from the store.
        let r = proxy.get_block(key, 1, block as u64, &etag).await?;
        assert_eq!(r.bytes().await?.as_ref(), &data[block..]);
    }
    for at in [first.clone(), last.clone()] {
        let r = read(at.clone()).await?;
        assert_eq!(r.headers()["x-blockproxy-source"], "cache", "{at:?} before the rot");
        assert_eq!(r.bytes().await?.as_ref(), &data[at]);
    }
    if matches!(file, RangeOf::HomeBlock) {
        // The pass the first range made also summed the blocks: a whole block carries its sum.
        let r = proxy.get_block(key, 1, block as u64, &etag).await?;
        let sum = blockproxy::protocol::crc32c_text(blockproxy::protocol::crc::crc32c(&data[block..]));
        assert_eq!(
            r.headers().get("x-blockproxy-checksum").and_then(|v| v.to_str().ok()),
            Some(std::str::from_utf8(&sum)?)
        );
    }
    let files: Vec<_> = files_under(&proxy.cache_dir().join("clean"));
    assert_eq!(files.len(), 1, "{files:?}");
    flip_last_byte(&files[0])?;

    let r = read(first.clone()).await?;
    assert_eq!(r.headers()["x-blockproxy-source"], "cache", "a range clear of the rot is served from the file");
    assert_eq!(r.bytes().await?.as_ref(), &data[first]);
    let r = read(last.clone()).await?;
    assert_eq!(r.headers()["x-blockproxy-source"], "store", "the rotten copy was dropped and refetched");
    assert_eq!(r.bytes().await?.as_ref(), &data[last], "rotten bytes were served");
    assert_eq!(proxy.metric("blockproxy_cache_corrupt_blocks_total").await?, 1.0);
    Ok(())
}

/// A write that rots on disk before its flush is quarantined. The store still holds the version
/// before it, which is older than an acknowledged write: no read may answer it, and no read may
/// cache it (a later hit would answer it without asking).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_write_is_never_answered_with_the_older_version_in_the_store() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let mut proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    let (old, new) = (random_bytes(64 << 10), random_bytes(64 << 10));
    proxy.put_ok("rot/q", &old).await?;
    proxy.wait_flushed(Duration::from_secs(20)).await?;
    backend.toxi.set_down(STORE_PROXY, true).await?;
    proxy.put_ok("rot/q", &new).await?;
    // The rot happens while the proxy is down: a running flush may already hold the good bytes
    // in memory (read before the rot, retried while the store is cut) and upload them.
    proxy.kill9();
    let dirty: Vec<_> = files_under(&proxy.cache_dir().join("dirty"));
    assert_eq!(dirty.len(), 1, "{dirty:?}");
    flip_last_byte(&dirty[0])?;
    backend.toxi.set_down(STORE_PROXY, false).await?;
    proxy.restart().await?;
    blockproxy_testenv::eventually(Duration::from_secs(30), Duration::from_millis(100), || async {
        let q = proxy.metric("blockproxy_writeback_quarantined_blocks").await?;
        anyhow::ensure!(q == 1.0, "{q} quarantined");
        Ok(())
    })
    .await?;
    assert_eq!(backend.object("rot/q").await?.as_deref(), Some(old.as_slice()), "the store has the old version");

    // Whole, from the start (as clients open a read), and again: each time an error, never `old`.
    for round in 0..2 {
        let r = proxy.get("rot/q").await?;
        assert_eq!(r.status(), 500, "round {round}: whole read answered {}", r.status());
        let r = proxy.get_range("rot/q", 0..1000).await?;
        assert_eq!(r.status(), 500, "round {round}: first bytes answered {}", r.status());
    }
    Ok(())
}

/// ADR 0001, item 6: a clean block is verified on its first read in a process, not on every hit.
/// Rot after that read is served, with the checksum header of the written data, so the client
/// (the client library checks it) detects it; after a restart the first read checks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_rotting_after_its_checked_read_is_caught_by_the_checksum_header_and_after_a_restart() -> Result<()> {
    use blockproxy::protocol::{CHECKSUM_HEADER, Checksum};
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let mut proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    let data = random_bytes(64 << 10);
    proxy.put_ok("rot/later", &data).await?;
    proxy.wait_flushed(Duration::from_secs(20)).await?;
    let first = proxy.get("rot/later").await?;
    assert_eq!(first.headers()["x-blockproxy-source"], "cache");
    assert_eq!(first.bytes().await?.as_ref(), data.as_slice(), "the checked first read");

    let files: Vec<_> = files_under(&proxy.cache_dir().join("clean"));
    assert_eq!(files.len(), 1, "{files:?}");
    flip_last_byte(&files[0])?;
    let rotten = proxy.get("rot/later").await?;
    assert_eq!(rotten.headers()["x-blockproxy-source"], "cache", "a checked block is not checked again");
    let sum: Checksum = rotten.headers()[CHECKSUM_HEADER].to_str()?.parse()?;
    let body = rotten.bytes().await?;
    assert_ne!(body.as_ref(), data.as_slice(), "the rotten bytes were served");
    assert!(sum.verify(&body).is_err(), "the checksum header lets the client detect the rot");
    assert!(sum.verify(&data).is_ok(), "the checksum header is the written data's");

    proxy.restart().await?;
    let r = proxy.get("rot/later").await?;
    assert_eq!(r.headers()["x-blockproxy-source"], "store", "after a restart the first read checks it again");
    assert_eq!(r.bytes().await?.as_ref(), data.as_slice());
    assert_eq!(proxy.metric("blockproxy_cache_corrupt_blocks_total").await?, 1.0);
    Ok(())
}
