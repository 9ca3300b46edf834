//! The proxy's read and write paths against a real MinIO (through toxiproxy).

mod support;

use anyhow::{Context, Result};
use blockproxy::protocol::{CHECKSUM_HEADER, Checksum};
use blockproxy_testenv::eventually;
use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_put_appears_in_store_byte_identical() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    let data = random_bytes(4 << 20);
    proxy.put_ok("chunks/0/block-1", &data).await?;
    let stored = eventually(Duration::from_secs(20), Duration::from_millis(100), || async {
        backend.object("chunks/0/block-1").await?.ok_or_else(|| anyhow::anyhow!("not flushed yet"))
    })
    .await?;
    assert_eq!(stored.as_ref(), data.as_slice(), "the store holds exactly the acknowledged bytes");
    Ok(())
}

/// The ack answers the body's CRC32C and its MD5 (the S3 ETag) whether the writer declared a
/// CRC32C or a SHA-256, and the block then reads back verified (its file's header holds the same
/// CRC32C).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ack_carries_the_bodys_crc32c_and_md5_whichever_checksum_was_declared() -> Result<()> {
    use md5::Digest;
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    // Both sides of the hashing thread's threshold (256 KiB).
    for (size, declared) in [(1usize << 20, "crc32c"), (1 << 20, "sha256"), (1000, "sha256"), (1000, "crc32c")] {
        let data = random_bytes(size);
        let sum = match declared {
            "crc32c" => Checksum::crc32c(&data),
            _ => Checksum::Sha256(sha2::Sha256::digest(&data).into()),
        };
        let key = format!("ack-{declared}-{size}");
        let r = proxy
            .http
            .put(proxy.block_url(&key))
            .bearer_auth(TOKEN)
            .header(CHECKSUM_HEADER, sum.to_string())
            .body(data.clone())
            .send()
            .await?;
        assert_eq!(r.status(), 200, "{key}");
        let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(header(CHECKSUM_HEADER), Some(Checksum::crc32c(&data).to_string()), "{key}: the ack's checksum");
        let md5 = format!("\"{}\"", hex::encode(md5::Md5::digest(&data)));
        assert_eq!(header("etag"), Some(md5), "{key}: the ack's ETag");
        assert_eq!(proxy.get_bytes(&key).await?.as_deref(), Some(data.as_slice()), "{key} reads back");
    }
    Ok(())
}

/// A body sent as it arrives (chunked) may carry its checksum as a trailer, after its last byte:
/// with the right one the write is stored and acknowledged like any other; with a wrong one, none,
/// or a body of another length than declared, the proxy answers 400 and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksum_may_follow_the_body_as_a_trailer_and_a_wrong_or_missing_one_stores_nothing() -> Result<()> {
    use blockproxy::protocol::LENGTH_HEADER;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use md5::Digest;
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    let data = bytes::Bytes::from(random_bytes(3 << 20));
    let right = Checksum::crc32c(&data).to_string();
    let wrong = Checksum::crc32c(b"other bytes").to_string();
    // (key, bytes sent, declared length, trailer sent, status wanted)
    let cases: [(&str, usize, usize, Option<&str>, u16); 4] = [
        ("trailer-right", data.len(), data.len(), Some(&right), 200),
        ("trailer-wrong", data.len(), data.len(), Some(&wrong), 400),
        ("trailer-missing", data.len(), data.len(), None, 400),
        ("trailer-short", data.len() - 1, data.len(), Some(&right), 400),
    ];
    for (key, sent, declared, trailer, want) in cases {
        // In pieces, as a relay sends what it has received so far.
        let mut frames: Vec<Result<Frame<bytes::Bytes>, std::convert::Infallible>> =
            data.slice(..sent).chunks(256 << 10).map(|c| Ok(Frame::data(bytes::Bytes::copy_from_slice(c)))).collect();
        if let Some(t) = trailer {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(CHECKSUM_HEADER, t.parse()?);
            frames.push(Ok(Frame::trailers(h)));
        }
        let r = proxy
            .http
            .put(proxy.block_url(key))
            .bearer_auth(TOKEN)
            .header(reqwest::header::TRAILER, CHECKSUM_HEADER)
            .header(LENGTH_HEADER, declared)
            .body(reqwest::Body::wrap(StreamBody::new(futures::stream::iter(frames))))
            .send()
            .await?;
        let status = r.status().as_u16();
        let etag = r.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let text = r.text().await?;
        assert_eq!(status, want, "{key}: {text}");
        let stored = proxy.get_bytes(key).await?;
        if want == 200 {
            assert_eq!(etag, Some(format!("\"{}\"", hex::encode(md5::Md5::digest(&data)))), "{key}: the ack's ETag");
            assert_eq!(stored.as_deref(), Some(data.as_ref()), "{key} reads back");
        } else {
            assert_eq!(stored, None, "{key}: a refused write stores nothing");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_read_is_served_from_cache_without_touching_the_store() -> Result<()> {
    let backend = Backend::start().await?;
    let data = random_bytes(1 << 20);
    backend.put_object("cold", &data).await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;

    let before = backend.store_get_count().await?;
    let first = proxy.get("cold").await?;
    assert_eq!(first.headers()["x-blockproxy-source"], "store");
    assert_eq!(first.bytes().await?.as_ref(), data.as_slice());
    let after_miss = backend.store_get_count().await?;
    assert_eq!(after_miss - before, 1, "the miss made exactly one GetObject on MinIO");

    let second = proxy.get("cold").await?;
    assert_eq!(second.headers()["x-blockproxy-source"], "cache");
    assert_eq!(second.bytes().await?.as_ref(), data.as_slice());
    assert_eq!(backend.store_get_count().await?, after_miss, "the hit made no GetObject on MinIO");

    // And with the store cut off entirely, the hit is still served.
    backend.toxi.set_down(STORE_PROXY, true).await?;
    assert_eq!(proxy.get_bytes("cold").await?.as_deref(), Some(data.as_slice()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_read_is_one_store_request_for_small_large_and_empty_objects() -> Result<()> {
    let backend = Backend::start().await?;
    let (small, large) = (random_bytes(300_000), random_bytes(1_500_000));
    for (key, data) in [("small", &small[..]), ("first", &small[..]), ("large", &large[..]), ("empty", &[][..])] {
        backend.put_object(key, data).await?;
    }
    let dir = tempfile::tempdir()?;
    let options = ProxyOptions { extra: vec!["--max-block-size".into(), "1Mi".into()], ..Default::default() };
    let proxy = ProxyProcess::start(&backend, dir.path(), options).await?;
    let store_requests = || async {
        Ok::<_, anyhow::Error>((backend.store_get_count().await?, backend.store_api_count("HeadObject").await?))
    };
    let ranged = |key: &'static str, range: &'static str| {
        proxy.http.get(proxy.block_url(key)).bearer_auth(TOKEN).header("Range", range).send()
    };

    // A miss of a small object asks for its data and attributes in one GET: one WAN round trip.
    let (gets, heads) = store_requests().await?;
    let r = proxy.get("small").await?;
    assert_eq!(r.headers()["x-blockproxy-source"], "store");
    assert_eq!(r.headers()["content-length"], small.len().to_string().as_str());
    assert_eq!(r.bytes().await?.as_ref(), small.as_slice());
    assert_eq!(store_requests().await?, (gets + 1, heads), "one GetObject and no HeadObject for the miss");
    assert_eq!(proxy.get_bytes("small").await?.as_deref(), Some(small.as_slice()), "then a hit");
    assert_eq!(store_requests().await?, (gets + 1, heads), "the hit asked the store nothing");

    // So does a read from the start, as clients read a first block: of a small object (then cached
    // whole) and of a larger one (its range answered from the same GET).
    let r = ranged("first", "bytes=0-399999").await?;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await?.as_ref(), small.as_slice());
    assert_eq!(store_requests().await?, (gets + 2, heads), "one GetObject for a small object's first block");
    let r = ranged("first", "bytes=10-19").await?;
    assert_eq!(r.headers()["x-blockproxy-source"], "cache");
    assert_eq!(r.bytes().await?.as_ref(), &small[10..20]);
    let r = ranged("large", "bytes=0-524287").await?;
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["x-blockproxy-object-size"], large.len().to_string().as_str());
    assert_eq!(r.bytes().await?.as_ref(), &large[..524_288]);
    assert_eq!(store_requests().await?, (gets + 3, heads), "one GetObject for a large object's first block");

    // A block of an object this proxy has not seen, as a striped read reaches every proxy of a
    // group cold: one GET pinned to the ETag, cut at the object's end by the store, no HEAD.
    backend.put_object("striped", &large).await?;
    let etag = backend.head_object("striped").await?.context("striped in MinIO")?.e_tag.context("ETag")?;
    let (gets, heads) = store_requests().await?;
    for (index, bytes) in [(1, &large[524_288..1_048_576]), (2, &large[1_048_576..])] {
        let r = proxy.get_block("striped", index, 524_288, &etag).await?;
        assert_eq!(r.status(), 206, "block {index}");
        assert_eq!(r.headers()["x-blockproxy-object-size"], large.len().to_string().as_str());
        assert_eq!(r.bytes().await?.as_ref(), bytes, "block {index}");
    }
    assert_eq!(store_requests().await?, (gets + 2, heads), "one GetObject per block and no HeadObject");
    let r = proxy.get_block("striped", 3, 524_288, &etag).await?;
    assert_eq!(r.status(), 416, "a block past the end");
    let r = proxy.get_block("striped", 0, 524_288, "\"0123456789abcdef0123456789abcdef\"").await?;
    assert_eq!(r.status(), 412, "a block pinned to another version");

    // An empty object has no byte 0 to range over: it is still read, the two-request way.
    let r = proxy.get("empty").await?;
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await?.is_empty());

    // An object over one block is refused whole, with the way to read it; a range of it is read.
    let r = proxy.get("large").await?;
    assert_eq!(r.status(), 400);
    assert!(r.text().await?.contains("read it in blocks"));
    let r = ranged("large", "bytes=1000000-1099999").await?;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await?.as_ref(), &large[1_000_000..1_100_000]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_misses_make_one_store_get() -> Result<()> {
    let backend = Backend::start().await?;
    let data = random_bytes(256 << 10);
    backend.put_object("hot", &data).await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    // Slow store responses so that all 50 misses overlap.
    backend.toxi.add_latency(STORE_PROXY, 500, 0).await?;
    let before = backend.store_get_count().await?;
    let reads = (0..50).map(|_| proxy.get_bytes("hot"));
    for r in futures::future::join_all(reads).await {
        assert_eq!(r?.as_deref(), Some(data.as_slice()));
    }
    assert_eq!(backend.store_get_count().await? - before, 1, "MinIO saw exactly one GetObject");

    // The same for reads from the start, as clients open a read with its first block.
    let before = backend.store_get_count().await?;
    let first = |_| async {
        let r = proxy.http.get(proxy.block_url("hot2")).bearer_auth(TOKEN).header("Range", "bytes=0-99999").send();
        anyhow::Ok(r.await?.bytes().await?)
    };
    backend.put_object("hot2", &data).await?;
    for r in futures::future::join_all((0..50).map(first)).await {
        assert_eq!(r?.as_ref(), &data[..100_000]);
    }
    assert_eq!(backend.store_get_count().await? - before, 1, "one GetObject for 50 first-block reads");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_reads_return_the_requested_bytes() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    let data = random_bytes(100_000);
    proxy.put_ok("r", &data).await?;
    for (range, expect) in
        [("bytes=0-9", &data[0..10]), ("bytes=99990-", &data[99_990..]), ("bytes=-5", &data[99_995..])]
    {
        let r = proxy.http.get(proxy.block_url("r")).bearer_auth(TOKEN).header("Range", range).send().await?;
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(r.bytes().await?.as_ref(), expect, "{range}");
    }
    Ok(())
}

/// ADR 0012: on plain HTTP/1 a hit's bytes leave from the cache file with sendfile, except a
/// small block's verifying read (its first after it became clean, and every read while dirty),
/// which is checked and sent from memory. HTTP/2 copies (its frames would carry the writer's
/// stand-ins otherwise), and so does a proxy started with --no-sendfile. Every answer carries
/// exactly the object's bytes, on one keep-alive connection mixing whole reads, ranges, block
/// reads and small objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_leave_by_sendfile_on_http1_only_and_always_carry_the_objects_bytes() -> Result<()> {
    const SENT: &str = "blockproxy_http_sendfile_bytes_total";
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    // A long TTL: the hits below are hits, not revalidations.
    let opts = ProxyOptions { extra: vec!["--metadata-ttl=1h".into()], ..ProxyOptions::default() };
    let proxy = ProxyProcess::start(&backend, dir.path(), opts).await?;
    let h1 = reqwest::Client::builder().http1_only().pool_max_idle_per_host(1).build()?;
    let get = |client: &reqwest::Client, key: &str, range: Option<String>| {
        let mut req = client.get(proxy.block_url(key)).bearer_auth(TOKEN);
        if let Some(r) = range {
            req = req.header("Range", r);
        }
        req.send()
    };

    // A small write read back at once: dirty, or flushed and not yet verified; either way its
    // read is a verifying one.
    let small = random_bytes(70_000);
    proxy.put_ok("small", &small).await?;
    let r = get(&h1, "small", None).await?;
    assert!(r.bytes().await?.as_ref() == small.as_slice(), "small read differs");
    assert_eq!(proxy.metric(SENT).await?, 0.0, "a verifying read of a small block is sent from memory");

    // 3 MiB + 5 bytes: several stand-ins, the last one short. Large blocks are verified by
    // reading their file, then sent from it, so every read of it leaves by sendfile.
    let big = random_bytes((3 << 20) + 5);
    proxy.put_ok("big", &big).await?;
    let mut expected_sent = 0.0;
    for round in 0..2 {
        let r = get(&h1, "big", None).await?;
        assert_eq!((r.status().as_u16(), r.version()), (200, reqwest::Version::HTTP_11));
        assert!(r.bytes().await?.as_ref() == big.as_slice(), "round {round}: whole read differs");
        expected_sent += big.len() as f64;
        let r = get(&h1, "big", Some("bytes=1048570-2200000".into())).await?;
        assert_eq!(r.status(), 206);
        assert!(r.bytes().await?.as_ref() == &big[1_048_570..=2_200_000], "round {round}: range differs");
        expected_sent += (2_200_000 - 1_048_570 + 1) as f64;
    }
    assert_eq!(proxy.counter_once_at(SENT, expected_sent).await?, expected_sent, "large hits leave by sendfile");

    // A flushed object's block reads (pinned to the store's ETag) leave by sendfile too.
    proxy.wait_flushed(Duration::from_secs(30)).await?;
    let etag = proxy.head("big").await?.headers()["x-blockproxy-store-etag"].to_str()?.to_owned();
    let block = 1 << 20;
    let r = proxy.get_block("big", 1, block, &etag).await?;
    assert_eq!((r.status().as_u16(), r.headers()["x-blockproxy-source"].to_str()?), (206, "cache"));
    assert!(r.bytes().await?.as_ref() == &big[block as usize..2 * block as usize], "block read differs");
    expected_sent += block as f64;
    assert_eq!(proxy.counter_once_at(SENT, expected_sent).await?, expected_sent, "the block read went out by sendfile");

    // A small clean block: fetched from the store, verified on its first hit, then sendfile.
    let cold = random_bytes(60_000);
    backend.put_object("cold-small", &cold).await?;
    for (read, source, by_sendfile) in
        [(0, "store", false), (1, "cache", false), (2, "cache", true), (3, "cache", true)]
    {
        let r = get(&h1, "cold-small", None).await?;
        assert_eq!(r.headers()["x-blockproxy-source"], source, "clean small read {read}");
        assert!(r.bytes().await?.as_ref() == cold.as_slice(), "clean small read {read} differs");
        expected_sent += if by_sendfile { cold.len() as f64 } else { 0.0 };
        assert_eq!(proxy.counter_once_at(SENT, expected_sent).await?, expected_sent, "clean small read {read}");
    }

    let h2 = reqwest::Client::builder().http2_prior_knowledge().build()?;
    for _ in 0..2 {
        let r = get(&h2, "big", None).await?;
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert!(r.bytes().await?.as_ref() == big.as_slice(), "HTTP/2 whole read differs");
        let r = get(&h2, "big", Some("bytes=5-3000000".into())).await?;
        assert!(r.bytes().await?.as_ref() == &big[5..=3_000_000], "HTTP/2 range differs");
        let r = get(&h2, "cold-small", None).await?;
        assert!(r.bytes().await?.as_ref() == cold.as_slice(), "HTTP/2 small read differs");
    }
    assert_eq!(proxy.counter_once_at(SENT, expected_sent).await?, expected_sent, "HTTP/2 answers never use sendfile");

    let dir = tempfile::tempdir()?;
    let opts = ProxyOptions { extra: vec!["--no-sendfile".into()], ..ProxyOptions::default() };
    let copying = ProxyProcess::start(&backend, dir.path(), opts).await?;
    copying.put_ok("big", &big).await?;
    for _ in 0..2 {
        assert!(copying.get_bytes("big").await?.as_deref() == Some(big.as_slice()), "copied read differs");
        assert!(copying.get_bytes("cold-small").await?.as_deref() == Some(cold.as_slice()), "copied small read");
    }
    assert_eq!(copying.metric(SENT).await?, 0.0, "--no-sendfile copies every hit");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_reuse_held_files_and_never_serve_a_replaced_version() -> Result<()> {
    const HELD: &str = "blockproxy_cache_open_files";
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let opts = ProxyOptions { extra: vec!["--metadata-ttl=1h".into()], ..ProxyOptions::default() };
    let proxy = ProxyProcess::start(&backend, dir.path(), opts).await?;
    for (round, size) in [70_000, (2 << 20) + 3, 0].into_iter().enumerate() {
        let key = format!("held-{round}");
        let read_back = |data: Vec<u8>, what: String| {
            let (proxy, key) = (&proxy, &key);
            async move {
                for read in 0..3 {
                    let got = proxy.get_bytes(key).await?;
                    assert!(got.as_deref() == Some(data.as_slice()), "{key} {what} read {read}: other bytes");
                }
                anyhow::Ok(())
            }
        };
        // The store cut off: no flush replaces the entries, each write replaces a dirty one
        // whose file a read holds.
        backend.toxi.set_down(STORE_PROXY, true).await?;
        for version in 0..3 {
            let data = random_bytes(size);
            proxy.put_ok(&key, &data).await?;
            read_back(data, format!("dirty version {version}")).await?;
        }
        backend.toxi.set_down(STORE_PROXY, false).await?;
        proxy.wait_flushed(Duration::from_secs(60)).await?;
        // A write over a clean block whose file a read holds.
        proxy.get_bytes(&key).await?;
        let data = random_bytes(size);
        proxy.put_ok(&key, &data).await?;
        read_back(data, "over a clean one".into()).await?;
        assert!(proxy.delete(&key).await?.status().is_success(), "DELETE {key}");
        assert_eq!(proxy.get_bytes(&key).await?, None, "{key}: a deleted block is not served from a held file");
    }
    // Once everything is flushed (a flush lets go of the dirty file), the one block read since
    // holds its file.
    proxy.put_ok("kept", &random_bytes(1000)).await?;
    proxy.wait_flushed(Duration::from_secs(30)).await?;
    proxy.get_bytes("kept").await?;
    assert_eq!(proxy.metric(HELD).await?, 1.0, "the block read since the flush holds its file");

    let dir = tempfile::tempdir()?;
    let opts = ProxyOptions { extra: vec!["--open-files=0".into()], ..ProxyOptions::default() };
    let unheld = ProxyProcess::start(&backend, dir.path(), opts).await?;
    let data = random_bytes(5000);
    unheld.put_ok("kept", &data).await?;
    for _ in 0..2 {
        assert!(unheld.get_bytes("kept").await?.as_deref() == Some(data.as_slice()));
    }
    assert_eq!(unheld.metric(HELD).await?, 0.0, "--open-files=0 holds none");
    Ok(())
}

/// A held file's hits copy the headers of its whole answer, made on its first hit (ADR 0023).
/// Whatever is asked first (a range, a HEAD, the whole), every hit must answer with what a proxy
/// that opens the file afresh for each hit (`--open-files=0`) answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_on_a_held_file_answer_with_the_headers_of_a_file_opened_afresh() -> Result<()> {
    const KEY: &str = "held-headers";
    let backend = Backend::start().await?;
    let data = random_bytes(70_000);
    backend
        .minio
        .s3_client()
        .put_object()
        .bucket(backend.minio.bucket())
        .key(format!("{PREFIX}/{KEY}"))
        .content_type("text/csv")
        .cache_control("max-age=60")
        .metadata("owner", "ops")
        .body(data.clone().into())
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", aws_sdk_s3::error::DisplayErrorContext(e)))?;
    let (held_dir, fresh_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let held = ProxyProcess::start(&backend, held_dir.path(), ProxyOptions::default()).await?;
    let fresh_opts = ProxyOptions { extra: vec!["--open-files=0".into()], ..ProxyOptions::default() };
    let fresh = ProxyProcess::start(&backend, fresh_dir.path(), fresh_opts).await?;
    for proxy in [&held, &fresh] {
        assert!(proxy.get_bytes(KEY).await?.as_deref() == Some(data.as_slice()), "the cold read");
    }
    async fn answers(proxy: &ProxyProcess) -> Result<Vec<(&'static str, u16, reqwest::header::HeaderMap)>> {
        let mut out = Vec::new();
        for ask in ["range 1000..2000", "whole", "head", "range 0..1", "whole", "range 69999..70000", "head"] {
            let r = match ask.strip_prefix("range ").and_then(|r| r.split_once("..")) {
                Some((a, b)) => proxy.get_range(KEY, a.parse()?..b.parse()?).await?,
                None if ask == "head" => proxy.head(KEY).await?,
                None => proxy.get(KEY).await?,
            };
            let mut headers = r.headers().clone();
            headers.remove("date");
            out.push((ask, r.status().as_u16(), headers));
        }
        Ok(out)
    }
    let (from_held, from_fresh) = (answers(&held).await?, answers(&fresh).await?);
    for ((ask, status, headers), (_, fresh_status, fresh_headers)) in from_held.iter().zip(&from_fresh) {
        assert_eq!(headers.get("x-blockproxy-source").and_then(|v| v.to_str().ok()), Some("cache"), "{ask}: a hit");
        assert_eq!((status, headers), (fresh_status, fresh_headers), "{ask}: held and fresh answers differ");
        let (want_status, want_len) = match ask.strip_prefix("range ").and_then(|r| r.split_once("..")) {
            Some((a, b)) => (206, b.parse::<u64>()? - a.parse::<u64>()?),
            None => (200, data.len() as u64),
        };
        assert_eq!(*status, want_status, "{ask}");
        assert_eq!(headers["content-length"].to_str()?, want_len.to_string(), "{ask}");
        assert_eq!(headers.contains_key("content-range"), want_status == 206, "{ask}");
        assert_eq!(headers["content-type"].to_str()?, "text/csv", "{ask}");
        assert_eq!(headers["x-amz-meta-owner"].to_str()?, "ops", "{ask}");
    }
    assert!(held.metric("blockproxy_cache_open_files").await? >= 1.0, "the held proxy holds the file");
    assert_eq!(fresh.metric("blockproxy_cache_open_files").await?, 0.0, "the fresh proxy holds none");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_4xx_and_write_nothing() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(
        &backend,
        dir.path(),
        ProxyOptions { extra: vec!["--max-block-size".into(), "1Mi".into()], ..Default::default() },
    )
    .await?;
    let body = b"payload".to_vec();
    let good_sum = Checksum::crc32c(&body).to_string();
    let base = proxy.url("/v1/volumes");
    struct Case {
        name: &'static str,
        url: String,
        token: Option<&'static str>,
        checksum: Option<String>,
        body: Vec<u8>,
        expect: u16,
    }
    let case = |name, url: String, token, checksum: Option<String>, body: Vec<u8>, expect| Case {
        name,
        url,
        token,
        checksum,
        body,
        expect,
    };
    let cases = vec![
        case(
            "key longer than the volume holds",
            format!("{base}/{VOLUME}/blocks/{}", "k".repeat(1024)),
            Some(TOKEN),
            Some(good_sum.clone()),
            body.clone(),
            400,
        ),
        case("bad volume id", format!("{base}/-vol/blocks/a"), Some(TOKEN), Some(good_sum.clone()), body.clone(), 400),
        case(
            "unknown volume",
            format!("{base}/other/blocks/a"),
            Some(TOKEN),
            Some(good_sum.clone()),
            body.clone(),
            404,
        ),
        case("missing token", format!("{base}/{VOLUME}/blocks/a"), None, Some(good_sum.clone()), body.clone(), 401),
        case(
            "wrong token",
            format!("{base}/{VOLUME}/blocks/a"),
            Some("nope"),
            Some(good_sum.clone()),
            body.clone(),
            401,
        ),
        case("missing checksum", format!("{base}/{VOLUME}/blocks/a"), Some(TOKEN), None, body.clone(), 400),
        case(
            "wrong checksum",
            format!("{base}/{VOLUME}/blocks/a"),
            Some(TOKEN),
            Some(Checksum::crc32c(b"other").to_string()),
            body.clone(),
            400,
        ),
        case(
            "malformed checksum",
            format!("{base}/{VOLUME}/blocks/a"),
            Some(TOKEN),
            Some("md5=zz".into()),
            body.clone(),
            400,
        ),
        case(
            "oversized body",
            format!("{base}/{VOLUME}/blocks/a"),
            Some(TOKEN),
            Some(Checksum::crc32c(&vec![0; 2 << 20]).to_string()),
            vec![0; 2 << 20],
            413,
        ),
    ];
    for c in cases {
        let mut req = proxy.http.put(&c.url).body(c.body);
        if let Some(t) = c.token {
            req = req.bearer_auth(t);
        }
        if let Some(sum) = c.checksum {
            req = req.header(CHECKSUM_HEADER, sum);
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        // Only the refusals for "not your volume or token" carry the marker the operator's
        // readiness check relies on; other 4xx answers must not.
        let refusal = r.headers().get(blockproxy_protocol::REFUSAL_HEADER).cloned();
        let msg = r.text().await?;
        assert_eq!(status, c.expect, "{}: {msg}", c.name);
        let expected_refusal = match c.name {
            "unknown volume" => Some(blockproxy_protocol::REFUSAL_UNKNOWN_VOLUME),
            "missing token" | "wrong token" => Some(blockproxy_protocol::REFUSAL_TOKEN),
            _ => None,
        };
        assert_eq!(refusal.as_ref().map(|v| v.to_str().unwrap()), expected_refusal, "{}", c.name);
        assert!(msg.contains("error"), "{}: the answer says why: {msg}", c.name);
    }
    // Dot segments exactly as sent (an HTTP client library would normalise them away, so they are
    // refused, not guessed at), broken escapes, and keys S3 refuses. Keys themselves are any S3
    // key and never a path on disk: `a%2F..%2Fx` is the key `a/../x`.
    let auth = format!("Bearer {TOKEN}");
    let headers = [("Authorization", auth.as_str()), (CHECKSUM_HEADER, good_sum.as_str())];
    for path in [
        format!("/v1/volumes/{VOLUME}/blocks/a/../../etc/passwd"),
        format!("/v1/volumes/{VOLUME}/blocks/../x"),
        format!("/v1/volumes/{VOLUME}/blocks/%2e%2e/x"),
        format!("/v1/volumes/{VOLUME}/blocks/a%zz"),
        format!("/v1/volumes/{VOLUME}/blocks/%FF"),
        format!("/v1/volumes/{VOLUME}/blocks/a%00b"),
        "/v1/volumes/../blocks/x".to_string(),
    ] {
        assert_eq!(raw_status(proxy.addr, "PUT", &path, &headers, &body).await?, 400, "PUT {path}");
    }
    // Malformed and unsatisfiable ranges on an existing block.
    proxy.put_ok("ok", &body).await?;
    for (range, expect) in [("bytes=abc", 400), ("lines=1-2", 400), ("bytes=100-200", 416), ("bytes=5-2", 400)] {
        let r = proxy.http.get(proxy.block_url("ok")).bearer_auth(TOKEN).header("Range", range).send().await?;
        assert_eq!(r.status().as_u16(), expect, "Range {range}");
    }
    proxy.wait_flushed(Duration::from_secs(20)).await?;
    // Nothing but the one good block was written, and the proxy is still serving.
    let listed = backend.minio.s3_client().list_objects_v2().bucket(backend.minio.bucket()).send().await?;
    let keys: Vec<_> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, [format!("{PREFIX}/ok")]);
    assert_eq!(proxy.get_bytes("ok").await?.as_deref(), Some(body.as_slice()));
    // No secret reached the log, not even the wrong token a client presented.
    let log = proxy.log_text();
    assert!(log.contains("blockproxy serving"), "the log was captured");
    for secret in [TOKEN, "nope", ADMIN_TOKEN, backend.minio.secret_key()] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_writeback_puts_are_in_the_store_before_the_ack() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let proxy =
        ProxyProcess::start(&backend, dir.path(), ProxyOptions { no_writeback: true, ..Default::default() }).await?;
    for i in 0..5 {
        let data = random_bytes(64 << 10);
        proxy.put_ok(&format!("wt/{i}"), &data).await?;
        assert_eq!(backend.object(&format!("wt/{i}")).await?.as_deref(), Some(data.as_slice()));
    }
    assert!(proxy.delete("wt/0").await?.status().is_success());
    assert_eq!(backend.object("wt/0").await?, None, "a write-through delete is applied before the ack");
    // With the store down, a write-through PUT fails instead of being acknowledged.
    backend.toxi.set_down(STORE_PROXY, true).await?;
    let r = proxy.put("wt/down", b"x").await?;
    assert_eq!(r.status(), 502);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_file_changes_take_effect_without_restart() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start(&backend, dir.path(), ProxyOptions::default()).await?;
    let url = proxy.url("/v1/volumes/vol2/blocks/k");
    let put = || {
        proxy
            .http
            .put(&url)
            .bearer_auth("tok2")
            .header(CHECKSUM_HEADER, Checksum::crc32c(b"v2").to_string())
            .body("v2")
            .send()
    };
    assert_eq!(put().await?.status(), 404);
    std::fs::write(
        proxy.volumes_file(),
        volumes_yaml(&[(VOLUME, backend.minio.bucket(), TOKEN), ("vol2", backend.minio.bucket(), "tok2")]),
    )?;
    eventually(Duration::from_secs(10), Duration::from_millis(100), || async {
        anyhow::ensure!(put().await?.status() == 200, "vol2 not served yet");
        Ok(())
    })
    .await?;
    // A broken file keeps the last good configuration.
    std::fs::write(proxy.volumes_file(), "volumes: [ {id: ")?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(put().await?.status(), 200);
    Ok(())
}
