//! The promise that no acknowledged write is lost, reordered or silently dropped, under hostile
//! version headers, overtaken writes, drains and SIGTERM (issue 9, holes 1 and 2). Each test runs
//! the real `blockproxy` binary against a real MinIO and checks the store afterwards.

mod support;

use anyhow::{Result, ensure};
use blockproxy::protocol::{CHECKSUM_HEADER, Checksum, VERSION_HEADER};
use blockproxy_testenv::eventually;
use std::time::Duration;
use support::raw::StalledPut;
use support::*;

const OTHER_VOLUME: &str = "vol2";
const OTHER_TOKEN: &str = "volume-token-2";

fn put_headers(token: &str, data: &[u8]) -> Vec<(&'static str, String)> {
    vec![("Authorization", format!("Bearer {token}")), (CHECKSUM_HEADER, Checksum::crc32c(data).to_string())]
}

/// Serves a second volume on the same bucket (another prefix would not matter: clocks are per
/// volume id) and waits until the proxy has reloaded its volumes file.
async fn add_other_volume(backend: &Backend, proxy: &ProxyProcess) -> Result<()> {
    let bucket = backend.minio.bucket();
    std::fs::write(
        proxy.volumes_file(),
        volumes_yaml(&[(VOLUME, bucket, TOKEN), (OTHER_VOLUME, bucket, OTHER_TOKEN)]),
    )?;
    let url = proxy.url(&format!("/v1/volumes/{OTHER_VOLUME}/blocks/probe"));
    eventually(Duration::from_secs(20), Duration::from_millis(100), || async {
        let r = proxy.http.get(&url).bearer_auth(OTHER_TOKEN).send().await?;
        ensure!(r.status() == 404 && r.text().await?.contains("no such object"), "volume not served yet");
        Ok(())
    })
    .await
}

async fn put_version(
    proxy: &ProxyProcess,
    volume: &str,
    token: &str,
    key: &str,
    data: &[u8],
    version: u64,
) -> Result<reqwest::Response> {
    Ok(proxy
        .http
        .put(proxy.url(&format!("/v1/volumes/{volume}/blocks/{key}")))
        .bearer_auth(token)
        .header(CHECKSUM_HEADER, Checksum::crc32c(data).to_string())
        .header(VERSION_HEADER, version)
        .body(data.to_vec())
        .send()
        .await?)
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_volumes_hostile_versions_cannot_make_acknowledged_writes_vanish() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    add_other_volume(&backend, &proxy).await?;

    // The reproduction from the issue: a client of volume B sends 2^64-2.
    let forged = put_version(&proxy, OTHER_VOLUME, OTHER_TOKEN, "x", b"evil", u64::MAX - 1).await?;
    assert_eq!(forged.status(), 400, "a version far ahead of the clock is refused");
    let why = forged.text().await?;
    assert!(why.contains("ahead"), "the refusal says why: {why}");
    // A version ahead of the clock but within the bound is accepted, and moves only its volume.
    let ahead = now_nanos() + 30_000_000_000;
    assert_eq!(put_version(&proxy, OTHER_VOLUME, OTHER_TOKEN, "x", b"b-ahead", ahead).await?.status(), 200);

    // Two plain writes to volume A: both acknowledged, so the second must win, in the cache and
    // in the store.
    let first = proxy.put_ok("a/key", b"first").await?;
    let second = proxy.put_ok("a/key", b"second").await?;
    assert!(second > first, "versions of one volume increase: {first} then {second}");
    assert!(second < ahead, "volume B's clock did not move volume A's");
    assert_eq!(proxy.get_bytes("a/key").await?.as_deref(), Some(&b"second"[..]));
    proxy.wait_flushed(Duration::from_secs(30)).await?;
    assert_eq!(backend.object("a/key").await?.as_deref(), Some(&b"second"[..]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_never_moves_the_clock_back() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let mut proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    let ahead = now_nanos() + 40_000_000_000;
    assert_eq!(put_version(&proxy, VOLUME, TOKEN, "r/one", b"old", ahead).await?.status(), 200);
    proxy.wait_flushed(Duration::from_secs(30)).await?;
    // Evict nothing, but forget everything in memory: SIGKILL and start again.
    proxy.restart().await?;
    // A write without a version, to another key the clock never saw in the cache, then to the
    // same key: both get versions beyond everything handed out before the crash.
    let v_other = proxy.put_ok("r/two", b"x").await?;
    assert!(v_other > ahead, "after a restart the clock went back: {v_other} <= {ahead}");
    let v_same = proxy.put_ok("r/one", b"new").await?;
    assert!(v_same > ahead);
    proxy.wait_flushed(Duration::from_secs(30)).await?;
    assert_eq!(backend.object("r/one").await?.as_deref(), Some(&b"new"[..]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_overtaken_by_a_newer_one_is_answered_409_not_200() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    // The slow write gets its version when it arrives, then streams its body; a newer write of
    // the same key completes meanwhile.
    let slow = vec![7u8; 64 << 10];
    let path = format!("/v1/volumes/{VOLUME}/blocks/race");
    let stalled = StalledPut::start(proxy.addr, &path, &put_headers(TOKEN, &slow), &slow[..1024], slow.len()).await?;
    // Let the proxy read the head and stamp the version before the newer write arrives.
    eventually(Duration::from_secs(10), Duration::from_millis(20), || async {
        ensure!(proxy.metric("blockproxy_http_inflight_bytes").await? > 0.0, "slow PUT not admitted yet");
        Ok(())
    })
    .await?;
    let newer = proxy.put_ok("race", b"newer").await?;
    let (status, head) = stalled.finish(&slow[1024..]).await?;
    assert_eq!(status, 409, "the overtaken write was not applied, so it is not a success: {head}");
    assert!(
        head.to_ascii_lowercase().contains(&format!("{VERSION_HEADER}: {newer}")),
        "409 names the current version: {head}"
    );
    assert_eq!(proxy.get_bytes("race").await?.as_deref(), Some(&b"newer"[..]));
    proxy.wait_flushed(Duration::from_secs(30)).await?;
    assert_eq!(backend.object("race").await?.as_deref(), Some(&b"newer"[..]));
    assert_eq!(proxy.metric("blockproxy_http_writes_superseded_total").await?, 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_is_not_done_while_a_write_admitted_before_it_can_still_be_acknowledged() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    let data = vec![3u8; 256 << 10];
    let path = format!("/v1/volumes/{VOLUME}/blocks/fence/streaming");
    let stalled = StalledPut::start(proxy.addr, &path, &put_headers(TOKEN, &data), &data[..4096], data.len()).await?;
    eventually(Duration::from_secs(10), Duration::from_millis(20), || async {
        ensure!(proxy.metric("blockproxy_http_inflight_bytes").await? > 0.0, "PUT not admitted yet");
        Ok(())
    })
    .await?;
    let started = proxy.http.post(proxy.url("/v1/admin/drain")).bearer_auth(ADMIN_TOKEN).send().await?;
    assert_eq!(started.status(), 202);
    let status = proxy.drain_status().await?;
    assert!(status.draining && !status.done, "a write is still streaming, so the drain cannot be done: {status:?}");
    assert_eq!(status.in_flight_writes, 1, "{status:?}");
    assert_eq!(proxy.put("fence/new", b"x").await?.status(), 503, "new writes are refused");

    let (code, head) = stalled.finish(&data[4096..]).await?;
    assert_eq!(code, 200, "a write admitted before the drain completes: {head}");
    eventually(Duration::from_secs(30), Duration::from_millis(100), || async {
        let s = proxy.drain_status().await?;
        ensure!(s.done, "{s:?}");
        Ok(())
    })
    .await?;
    // `done` means: everything acknowledged is in the store.
    assert_eq!(backend.object("fence/streaming").await?.as_deref(), Some(&data[..]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_writes_acknowledged_while_finishing_requests() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let mut proxy = ProxyProcess::start(
        &backend,
        dir.path(),
        ProxyOptions { extra: vec!["--shutdown-grace".into(), "30s".into()], ..Default::default() },
    )
    .await?;
    let data = vec![5u8; 256 << 10];
    let path = format!("/v1/volumes/{VOLUME}/blocks/term/streaming");
    let stalled = StalledPut::start(proxy.addr, &path, &put_headers(TOKEN, &data), &data[..4096], data.len()).await?;
    eventually(Duration::from_secs(10), Duration::from_millis(20), || async {
        ensure!(proxy.metric("blockproxy_http_inflight_bytes").await? > 0.0, "PUT not admitted yet");
        Ok(())
    })
    .await?;
    let pid = proxy.pid().expect("running");
    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
    // Give the proxy time to take the signal before the body completes (it must not matter
    // whether it did: either way an acknowledged write must reach the store before exit).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, head) = stalled.finish(&data[4096..]).await?;
    // (A second SIGTERM changes nothing: shutdown is already under way.)
    proxy.terminate(Duration::from_secs(60)).await?;
    match code {
        200 => assert_eq!(
            backend.object("term/streaming").await?.as_deref(),
            Some(&data[..]),
            "acknowledged during shutdown, so flushed before exit"
        ),
        503 => {}
        other => panic!("unexpected answer {other}: {head}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_repair_keeps_its_version_and_never_overtakes_a_newer_write() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    let old = proxy.put_ok("repair/k", b"old").await?;
    let newer = proxy.put_ok("repair/k", b"newer").await?;
    let repair = |data: &'static [u8], version: u64| {
        proxy
            .http
            .put(proxy.block_url("repair/k"))
            .bearer_auth(TOKEN)
            .header(CHECKSUM_HEADER, Checksum::crc32c(data).to_string())
            .header(VERSION_HEADER, version)
            .header(blockproxy::protocol::REPAIR_HEADER, "1")
            .body(data)
            .send()
    };
    // A repair carrying the old copy arrives late: refused, the newer write stays.
    let late = repair(b"old", old).await?;
    assert_eq!(late.status(), 409);
    assert_eq!(proxy.get_bytes("repair/k").await?.as_deref(), Some(&b"newer"[..]));
    // A repair with a newer copy is installed with exactly its version.
    let carried = newer + 1_000;
    let ok = repair(b"repaired", carried).await?;
    assert_eq!(ok.status(), 200);
    assert_eq!(version_of(&ok)?, carried);
    // Without a version a repair is refused.
    let bad = proxy
        .http
        .put(proxy.block_url("repair/k"))
        .bearer_auth(TOKEN)
        .header(CHECKSUM_HEADER, Checksum::crc32c(b"x").to_string())
        .header(blockproxy::protocol::REPAIR_HEADER, "1")
        .body(&b"x"[..])
        .send()
        .await?;
    assert_eq!(bad.status(), 400);
    Ok(())
}
