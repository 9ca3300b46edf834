//! Slow and oversized clients get a clear answer, and cannot hold memory or permits forever
//! (issue 9: the 413 that never reached the client, slowloris, bytes in flight).

mod support;

use anyhow::Result;
use blockproxy::protocol::{CHECKSUM_HEADER, Checksum};
use blockproxy_testenv::eventually;
use std::time::Duration;
use support::raw::{StalledPut, closed_within};
use support::*;
use tokio::io::AsyncWriteExt;

fn put_headers(data: &[u8]) -> Vec<(&'static str, String)> {
    vec![("Authorization", format!("Bearer {TOKEN}")), (CHECKSUM_HEADER, Checksum::crc32c(data).to_string())]
}

/// MinIO and one proxy started with extra `flags`.
async fn proxy_with(flags: &[&str]) -> Result<(Backend, tempfile::TempDir, ProxyProcess)> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let opts = ProxyOptions { extra: flags.iter().map(|f| f.to_string()).collect(), ..Default::default() };
    let proxy = ProxyProcess::start(&backend, dir.path(), opts).await?;
    Ok((backend, dir, proxy))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_put_gets_its_413_with_or_without_expect_continue() -> Result<()> {
    let (_backend, _dir, proxy) = proxy_with(&["--max-block-size", "1Mi"]).await?;
    let big = random_bytes(8 << 20);
    // A client library that sends the whole body before reading (reqwest does) reads the 413.
    for round in 0..5 {
        let r = proxy.put("too/big", &big).await?;
        assert_eq!(r.status(), 413, "round {round}");
        assert!(r.text().await?.contains("--max-block-size"));
    }
    // With Expect: 100-continue the answer comes before any body byte is sent.
    let mut headers = put_headers(&big);
    headers.push(("Expect", "100-continue".into()));
    let path = format!("/v1/volumes/{VOLUME}/blocks/too/big");
    let waiting = StalledPut::start(proxy.addr, &path, &headers, &[], big.len()).await?;
    let (status, head) = waiting.response(Duration::from_secs(10)).await?;
    assert_eq!(status, 413, "{head}");
    assert!(proxy.get_bytes("too/big").await?.is_none(), "nothing was written");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_time_out_and_release_their_permits() -> Result<()> {
    let (_backend, _dir, proxy) =
        proxy_with(&["--max-bops", "1", "--header-read-timeout", "1s", "--body-idle-timeout", "1s"]).await?;
    // Half a request head, then nothing: the proxy hangs up.
    let mut slow_head = tokio::net::TcpStream::connect(proxy.addr).await?;
    slow_head.write_all(format!("GET /v1/volumes/{VOLUME}/blocks/x HTTP/1.1\r\nHost: x\r\n").as_bytes()).await?;
    assert!(closed_within(&mut slow_head, Duration::from_secs(30)).await, "a half-sent head holds the connection");

    // A body that stalls holds the only block-operation permit until its idle timeout.
    let data = random_bytes(64 << 10);
    let path = format!("/v1/volumes/{VOLUME}/blocks/slow/body");
    let stalled = StalledPut::start(proxy.addr, &path, &put_headers(&data), &data[..100], data.len()).await?;
    let (status, head) = stalled.response(Duration::from_secs(30)).await?;
    assert_eq!(status, 408, "{head}");
    // The permit is free again: a normal write goes through.
    tokio::time::timeout(Duration::from_secs(30), proxy.put_ok("slow/after", b"ok")).await??;
    assert!(proxy.get_bytes("slow/body").await?.is_none(), "the abandoned write left nothing");
    assert!(proxy.metric("blockproxy_http_timeouts_total").await? >= 2.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_in_flight_are_bounded_with_a_clear_503() -> Result<()> {
    let (_backend, _dir, proxy) = proxy_with(&["--max-block-size", "1Mi", "--max-inflight-bytes", "1Mi"]).await?;
    let data = random_bytes(768 << 10);
    let path = format!("/v1/volumes/{VOLUME}/blocks/budget/held");
    let held = StalledPut::start(proxy.addr, &path, &put_headers(&data), &data[..1024], data.len()).await?;
    eventually(Duration::from_secs(10), Duration::from_millis(20), || async {
        let inflight = proxy.metric("blockproxy_http_inflight_bytes").await?;
        anyhow::ensure!(inflight >= (768 << 10) as f64, "reserved {inflight}");
        Ok(())
    })
    .await?;
    let refused = proxy.put("budget/second", &data).await?;
    assert_eq!(refused.status(), 503, "a second 768 KiB body does not fit a 1 MiB budget");
    assert!(refused.headers().contains_key("retry-after"));
    // The first finishes; then there is room again.
    let (status, head) = held.finish(&data[1024..]).await?;
    assert_eq!(status, 200, "{head}");
    proxy.put_ok("budget/third", &data).await?;
    assert_eq!(proxy.get_bytes("budget/third").await?.as_deref(), Some(&data[..]));
    Ok(())
}
