//! One store contract, run against every backend on its real server or emulator: MinIO (S3),
//! Azurite (Azure Blob) and fake-gcs-server (GCS JSON API). Each backend's own specifics (S3's
//! multipart ETags, MinIO's request counts) are in its own test file; this is what the proxy
//! relies on from any store: attributes, ETag-pinned ranges, conditional writes that lose, file
//! uploads in parts published under their condition, paged listings and versioned deletes.

use anyhow::{Context, Result, ensure};
use blockproxy::protocol::{MIN_PART_SIZE, STORE_VERSION_METADATA};
use blockproxy::store::{
    AzureCredentials, AzureStore, AzureStoreConfig, Conditional, ErrorClass, GcsCredentials, GcsStore, GcsStoreConfig,
    ObjectAttrs, ObjectMeta, Precondition, S3ETag, S3Store, S3StoreConfig, SmallObject, Store, StoreError,
    TOMBSTONE_PREFIX, delete_unless_newer, put_file_unless_newer, put_unless_newer,
};
use blockproxy_testenv::{Azurite, FakeGcs, Minio};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use rand::RngCore;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

#[tokio::test]
async fn minio_keeps_the_store_contract() -> Result<()> {
    let minio = Minio::start().await?;
    let store = S3Store::new(S3StoreConfig {
        endpoint: Some(minio.endpoint()),
        region: "us-east-1".into(),
        path_style: true,
        credentials: Some((minio.access_key().into(), minio.secret_key().into())),
        sse: false,
    })
    .await;
    contract(&store, minio.bucket(), false).await
}

#[tokio::test]
async fn azurite_keeps_the_store_contract() -> Result<()> {
    let azurite = Azurite::start().await?;
    let store = AzureStore::new(AzureStoreConfig {
        account: azurite.account().into(),
        endpoint: Some(azurite.endpoint()),
        credentials: AzureCredentials::shared_key(azurite.key()).map_err(anyhow::Error::msg)?,
    })?;
    contract(&store, azurite.bucket(), true).await
}

#[tokio::test]
async fn fake_gcs_keeps_the_store_contract() -> Result<()> {
    let gcs = FakeGcs::start().await?;
    let store =
        GcsStore::new(GcsStoreConfig { endpoint: Some(gcs.endpoint()), credentials: GcsCredentials::Anonymous });
    contract(&store, gcs.bucket(), true).await
}

/// Every scenario, each under its own key prefix. `conditional_deletes`: whether the store honours
/// a DELETE's ETag condition.
async fn contract(store: &dyn Store, bucket: &str, conditional_deletes: bool) -> Result<()> {
    attributes_round_trip(store, bucket).await.context("attributes")?;
    first_bytes_come_with_the_attributes(store, bucket).await.context("first bytes")?;
    blocks_are_read_without_knowing_the_size(store, bucket).await.context("blocks")?;
    ranged_reads_are_pinned(store, bucket).await.context("ranged reads")?;
    conditional_puts_lose_against_a_change(store, bucket).await.context("conditional puts")?;
    files_go_up_in_parts_under_their_condition(store, bucket).await.context("file uploads")?;
    listings_page_over_every_key_once(store, bucket).await.context("listings")?;
    deletes_leave_tombstones_that_stop_older_writes(store, bucket, conditional_deletes).await.context("deletes")?;
    Ok(())
}

fn attrs() -> ObjectAttrs {
    let user_metadata: BTreeMap<String, String> =
        [("owner", "team a"), ("source-md5", "abc123")].into_iter().map(|(k, v)| (k.into(), v.into())).collect();
    ObjectAttrs {
        content_type: Some("text/csv; charset=utf-8".into()),
        content_encoding: Some("identity".into()),
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

/// A file of random content; returns its bytes.
fn random_file(path: &Path, len: u64) -> Result<Vec<u8>> {
    let data = random_bytes(len as usize);
    std::fs::write(path, &data)?;
    Ok(data)
}

/// Another writer replaces `key` (whatever is there) with `data`.
async fn replace(store: &dyn Store, bucket: &str, key: &str, data: &[u8]) -> Result<()> {
    let cond = store.head(bucket, key).await?.map(|i| i.etag);
    let cond = cond.as_deref().map_or(Precondition::Absent, Precondition::Matches);
    let data = Bytes::copy_from_slice(data);
    store.put_if(bucket, key, data.clone(), ObjectMeta::for_data(0, &data), &ObjectAttrs::default(), cond).await?;
    Ok(())
}

/// `get_small` and `get_first`: what one GET (on S3) or a HEAD and a GET (the default) answer.
async fn first_bytes_come_with_the_attributes(store: &dyn Store, bucket: &str) -> Result<()> {
    let (small, large) = (random_bytes(10_000), random_bytes(300_000));
    for (key, version, data) in
        [("first/small", 3, &small[..]), ("first/large", 4, &large[..]), ("first/empty", 5, &[][..])]
    {
        let data = Bytes::copy_from_slice(data);
        let meta = ObjectMeta::for_data(version, &data);
        store.put_if(bucket, key, data, meta, &attrs(), Precondition::Absent).await?;
    }
    let max = 100_000;
    for (key, version, data) in [("first/small", 3, &small[..]), ("first/empty", 5, &[][..])] {
        let head = store.head(bucket, key).await?.context("head")?;
        match store.get_small(bucket, key, max).await?.context("get_small")? {
            SmallObject::Whole(b) => ensure!(
                b.data[..] == data[..] && b.version == version && b.etag == head.etag && b.attrs == attrs(),
                "{key}: get_small gave {b:?}"
            ),
            SmallObject::Large(i) => anyhow::bail!("{key}: get_small said large: {i:?}"),
        }
        let first = store.get_first(bucket, key, max).await?.context("get_first")?;
        ensure!(
            first.data[..] == data[..] && first.info.size == data.len() as u64,
            "{key}: get_first {:?}",
            first.info
        );
        ensure!(first.info.etag == head.etag && first.info.version == version, "{key}: get_first {:?}", first.info);
    }
    let head = store.head(bucket, "first/large").await?.context("head")?;
    match store.get_small(bucket, "first/large", max).await?.context("get_small")? {
        SmallObject::Large(i) => ensure!(i.size == 300_000 && i.etag == head.etag && i.version == 4, "{i:?}"),
        SmallObject::Whole(_) => anyhow::bail!("a 300,000-byte object came whole under a {max}-byte limit"),
    }
    let first = store.get_first(bucket, "first/large", max).await?.context("get_first")?;
    ensure!(first.data[..] == large[..max as usize], "get_first of a large object: not its first bytes");
    ensure!(first.info.size == 300_000 && first.info.etag == head.etag && first.info.version == 4, "{:?}", first.info);
    ensure!(first.info.attrs == attrs(), "get_first attributes {:?}", first.info.attrs);
    ensure!(store.get_small(bucket, "first/missing", max).await?.is_none(), "a missing object is not small");
    ensure!(store.get_first(bucket, "first/missing", max).await?.is_none(), "a missing object has no first bytes");
    Ok(())
}

/// `get_block`: up to a block from any offset, cut at the object's end, pinned to an ETag.
async fn blocks_are_read_without_knowing_the_size(store: &dyn Store, bucket: &str) -> Result<()> {
    let data = random_bytes(250_000);
    store
        .put_if(
            bucket,
            "block/obj",
            Bytes::from(data.clone()),
            ObjectMeta::for_data(6, &data),
            &attrs(),
            Precondition::Absent,
        )
        .await?;
    store
        .put_if(bucket, "block/empty", Bytes::new(), ObjectMeta::for_data(7, &[]), &attrs(), Precondition::Absent)
        .await?;
    let head = store.head(bucket, "block/obj").await?.context("head")?;
    let block = 100_000;
    for (start, want) in [(0, 0..100_000), (100_000, 100_000..200_000), (200_000, 200_000..250_000)] {
        let got = store.get_block(bucket, "block/obj", start, block, Some(&head.etag)).await?.context("get_block")?;
        ensure!(got.data[..] == data[want.clone()], "block at {start}: {} bytes, not bytes {want:?}", got.data.len());
        ensure!(
            got.info.size == 250_000
                && got.info.etag == head.etag
                && got.info.version == 6
                && got.info.attrs == attrs(),
            "block at {start}: {:?}",
            got.info
        );
    }
    let unpinned = store.get_block(bucket, "block/obj", 249_999, block, None).await?.context("unpinned")?;
    ensure!(unpinned.data[..] == data[249_999..], "the last byte");
    for start in [250_000, 300_000] {
        match store.get_block(bucket, "block/obj", start, block, Some(&head.etag)).await {
            Err(StoreError::InvalidRange { .. }) => {}
            other => anyhow::bail!("a block at {start} of a 250,000-byte object: {other:?}"),
        }
    }
    let empty = store.get_block(bucket, "block/empty", 0, block, None).await?.context("empty")?;
    ensure!(empty.data.is_empty() && empty.info.size == 0 && empty.info.version == 7, "{:?}", empty.info);
    match store.get_block(bucket, "block/obj", 0, block, Some("\"not-the-etag\"")).await {
        Err(e) if e.class() == ErrorClass::PreconditionFailed => {}
        other => anyhow::bail!("a block pinned to another ETag: {other:?}"),
    }
    ensure!(store.get_block(bucket, "block/missing", 0, block, None).await?.is_none(), "a missing object");
    Ok(())
}

async fn attributes_round_trip(store: &dyn Store, bucket: &str) -> Result<()> {
    let mut sent = attrs();
    // A user key named like our own metadata must not replace it.
    sent.user_metadata.insert(STORE_VERSION_METADATA.into(), "999".into());
    let data = Bytes::from_static(b"a,b\n1,2\n");
    store
        .put_if(bucket, "attrs/one", data.clone(), ObjectMeta::for_data(7, &data), &sent, Precondition::Absent)
        .await?;
    let dir = tempfile::tempdir()?;
    let parts = [MIN_PART_SIZE, 1000];
    let file_data = random_file(&dir.path().join("f"), parts.iter().sum())?;
    let meta = ObjectMeta::for_data(8, &file_data);
    store.put_file_if(bucket, "attrs/multi", &dir.path().join("f"), &parts, meta, &sent, Precondition::Absent).await?;

    let want = attrs();
    for (key, version, bytes) in [("attrs/one", 7, &data[..]), ("attrs/multi", 8, &file_data[..])] {
        let head = store.head(bucket, key).await?.context("head")?;
        ensure!(head.attrs == want, "{key}: head gave {:?}", head.attrs);
        ensure!(head.version == version && head.size == bytes.len() as u64, "{key}: {head:?}");
        ensure!(head.crc32c == Some(crc32c::crc32c(bytes)), "{key}: {head:?}");
        ensure!(head.etag.starts_with('"') && head.etag.ends_with('"'), "ETags are quoted: {}", head.etag);
        let got = store.get(bucket, key).await?.context("get")?;
        ensure!(got.attrs == want && got.etag == head.etag && got.version == version, "{key}: get gave {got:?}");
        ensure!(got.data[..] == bytes[..], "{key}: other bytes");
    }
    // S3 clients are answered the object's S3 ETag (its MD5 for one part) on every store, also
    // where the store's own ETag is a generation or a token.
    let md5 = S3ETag::of_data(&data).quoted();
    let one = store.head(bucket, "attrs/one").await?.context("head")?;
    let got = store.get(bucket, "attrs/one").await?.context("get")?;
    ensure!(
        one.client_etag() == md5 && got.client_etag() == md5,
        "S3 ETags {} / {}, not {md5}",
        one.client_etag(),
        got.client_etag()
    );
    ensure!(store.head(bucket, "attrs/missing").await?.is_none(), "a missing object has no head");
    ensure!(store.get(bucket, "attrs/missing").await?.is_none(), "a missing object has no data");
    Ok(())
}

async fn ranged_reads_are_pinned(store: &dyn Store, bucket: &str) -> Result<()> {
    let first = random_bytes(100_000);
    replace(store, bucket, "r/k", &first).await?;
    let etag = store.head(bucket, "r/k").await?.context("head")?.etag;

    let got = store.get_range(bucket, "r/k", 4096..70_000, Some(&etag)).await?.context("missing")?;
    ensure!(got.data[..] == first[4096..70_000], "wrong bytes");
    ensure!(got.info.size == 100_000 && got.info.etag == etag, "{:?}", got.info);
    let tail = store.get_range(bucket, "r/k", 99_999..100_000, None).await?.context("missing")?;
    ensure!(tail.data[..] == first[99_999..], "the last byte");

    for beyond in [99_000..100_001, 100_000..100_010, 200_000..200_001] {
        let err = store.get_range(bucket, "r/k", beyond.clone(), Some(&etag)).await.unwrap_err();
        ensure!(matches!(err, StoreError::InvalidRange { .. }), "{beyond:?}: {err}");
    }

    // Another writer replaces the object: the old pin fails, it never reads the new bytes.
    replace(store, bucket, "r/k", &random_bytes(100_000)).await?;
    let err = store.get_range(bucket, "r/k", 0..10, Some(&etag)).await.unwrap_err();
    ensure!(matches!(err, StoreError::PreconditionFailed { .. }), "a stale pin: {err}");
    ensure!(store.get_range(bucket, "r/missing", 0..10, None).await?.is_none(), "a missing object");
    Ok(())
}

async fn conditional_puts_lose_against_a_change(store: &dyn Store, bucket: &str) -> Result<()> {
    let key = "cond/k";
    let none = ObjectAttrs::default();
    let put = |data: &'static [u8], version, cond| {
        store.put_if(bucket, key, Bytes::from_static(data), ObjectMeta::for_data(version, data), &none, cond)
    };
    put(b"first", 1, Precondition::Absent).await?;
    let read = store.head(bucket, key).await?.context("head")?.etag;
    let err = put(b"again", 2, Precondition::Absent).await.unwrap_err();
    ensure!(matches!(err, StoreError::PreconditionFailed { .. }), "absent, but it exists: {err}");
    put(b"second", 2, Precondition::Matches(&read)).await?;
    let err = put(b"stale", 3, Precondition::Matches(&read)).await.unwrap_err();
    ensure!(matches!(err, StoreError::PreconditionFailed { .. }), "a replaced ETag: {err}");
    let now = store.get(bucket, key).await?.context("gone")?;
    ensure!(now.data[..] == b"second"[..] && now.version == 2, "{now:?}");

    // Through the ordering decision: older loses, newer wins.
    let older = put_unless_newer(store, bucket, key, Bytes::from_static(b"v1"), ObjectMeta::for_data(1, b"v1"), &none);
    ensure!(older.await? == Conditional::StoreNewer { store_version: 2 }, "an older version was written");
    let newer = put_unless_newer(store, bucket, key, Bytes::from_static(b"v9"), ObjectMeta::for_data(9, b"v9"), &none);
    ensure!(newer.await? == Conditional::Applied, "the newer version was not written");
    ensure!(store.get(bucket, key).await?.context("gone")?.data[..] == b"v9"[..], "v9 not stored");
    Ok(())
}

async fn files_go_up_in_parts_under_their_condition(store: &dyn Store, bucket: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("object");
    let parts = [MIN_PART_SIZE, MIN_PART_SIZE + 3, 1_048_583];
    let data = random_file(&path, parts.iter().sum())?;
    let none = ObjectAttrs::default();
    let key = "file/k";
    store.put_file_if(bucket, key, &path, &parts, ObjectMeta::for_data(5, &data), &none, Precondition::Absent).await?;
    let got = store.get(bucket, key).await?.context("not published")?;
    ensure!(got.data.len() == data.len() && got.data[..] == data[..], "the stored object differs from the file");
    ensure!(got.version == 5, "{}", got.version);
    let mid = MIN_PART_SIZE - 10..MIN_PART_SIZE + 10;
    let across = store.get_range(bucket, key, mid.clone(), Some(&got.etag)).await?.context("range")?;
    ensure!(across.data[..] == data[mid.start as usize..mid.end as usize], "a range across a part boundary");

    // The condition is checked when the object is published: a change meanwhile wins.
    let read = got.etag;
    replace(store, bucket, key, b"newer").await?;
    let other = dir.path().join("other");
    let other_data = random_file(&other, parts.iter().sum())?;
    let meta = ObjectMeta::for_data(6, &other_data);
    let err =
        store.put_file_if(bucket, key, &other, &parts, meta, &none, Precondition::Matches(&read)).await.unwrap_err();
    ensure!(matches!(err, StoreError::PreconditionFailed { .. }), "If-Match a replaced object: {err}");
    let err = store.put_file_if(bucket, key, &other, &parts, meta, &none, Precondition::Absent).await.unwrap_err();
    ensure!(matches!(err, StoreError::PreconditionFailed { .. }), "absent, but it exists: {err}");
    ensure!(store.get(bucket, key).await?.context("gone")?.data[..] == b"newer"[..], "the newer object was replaced");

    // Through the ordering decision: an older version is skipped, a newer one replaces it.
    let older = put_file_unless_newer(store, bucket, key, &other, &parts, ObjectMeta::for_data(0, b"x"), &none).await?;
    ensure!(matches!(older, Conditional::Applied), "version 0 over version 0 counts as done: {older:?}");
    let applied = put_file_unless_newer(store, bucket, key, &other, &parts, meta, &none).await?;
    ensure!(applied == Conditional::Applied, "{applied:?}");
    let now = store.get(bucket, key).await?.context("gone")?;
    ensure!(now.version == 6 && now.data[..] == other_data[..], "version 6 not written");
    let skipped =
        put_file_unless_newer(store, bucket, key, &path, &parts, ObjectMeta::for_data(5, &data), &none).await?;
    ensure!(skipped == Conditional::StoreNewer { store_version: 6 }, "{skipped:?}");

    // From an offset (the cache's files start with a header), in parts and as one part.
    let headed = dir.path().join("headed");
    let mut bytes = b"HEADER-not-part-of-the-object".to_vec();
    let start = bytes.len() as u64;
    bytes.extend_from_slice(&other_data);
    std::fs::write(&headed, &bytes)?;
    let m = ObjectMeta::for_data(1, &other_data);
    store.put_file_at_if(bucket, "file/at", &headed, start, &parts, m, &none, Precondition::Absent).await?;
    ensure!(store.get(bucket, "file/at").await?.context("get")?.data[..] == other_data[..], "parts from an offset");
    let one_len = [other_data.len() as u64];
    store.put_file_at_if(bucket, "file/at1", &headed, start, &one_len, m, &none, Precondition::Absent).await?;
    ensure!(store.get(bucket, "file/at1").await?.context("get")?.data[..] == other_data[..], "one part from an offset");

    // One part is a plain conditional write.
    let one = dir.path().join("one");
    let small = random_file(&one, 1234)?;
    store
        .put_file_if(bucket, "file/one", &one, &[1234], ObjectMeta::for_data(1, &small), &none, Precondition::Absent)
        .await?;
    ensure!(store.get(bucket, "file/one").await?.context("get")?.data[..] == small[..], "one part differs");
    Ok(())
}

async fn listings_page_over_every_key_once(store: &dyn Store, bucket: &str) -> Result<()> {
    const KEYS: usize = 230;
    // LastModified has a resolution of a second or coarser in some answers.
    let before = SystemTime::now() - Duration::from_secs(2);
    let mut keys: Vec<String> = (0..KEYS).map(|i| format!("list/{:x}/{i} ü+&", i % 7)).collect();
    futures::stream::iter(keys.clone())
        .map(|key| async move { replace(store, bucket, &key, b"x").await })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    replace(store, bucket, &format!("{TOMBSTONE_PREFIX}list/0/0 ü+&"), b"").await?;
    let after = SystemTime::now() + Duration::from_secs(2);
    keys.sort();

    let mut listed = Vec::new();
    let mut start_after = None;
    let mut pages = 0;
    loop {
        let page = store.list_page(bucket, "list/", start_after.as_deref(), 100).await?;
        pages += 1;
        ensure!(page.objects.len() <= 100, "a page of {}", page.objects.len());
        listed.extend(page.objects);
        match page.next_start_after {
            Some(next) => start_after = Some(next),
            None => break,
        }
        ensure!(pages <= KEYS, "the listing does not end");
    }
    ensure!(pages >= KEYS.div_ceil(100), "{pages} pages of at most 100 for {KEYS} keys");
    let names: Vec<&str> = listed.iter().map(|o| o.key.as_str()).collect();
    ensure!(names == keys, "the listing is not every key once in order ({} listed)", names.len());
    for o in &listed {
        ensure!(o.last_modified > before && o.last_modified < after, "{}: LastModified {:?}", o.key, o.last_modified);
        ensure!(o.size == 1 && o.etag.starts_with('"'), "{o:?}");
    }
    // A page may start after any key, not only one a page ended on.
    let middle = &keys[KEYS / 2];
    let page = store.list_page(bucket, "list/", Some(middle), 5).await?;
    let want: Vec<&str> = keys.iter().filter(|k| k.as_str() > middle.as_str()).take(5).map(String::as_str).collect();
    let got: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
    // A page may be short (Azure resumes from its own markers), never wrong.
    ensure!(!got.is_empty() && want.starts_with(&got), "after {middle:?}: {got:?}, want {want:?}");
    let three = store.list(bucket, "list/3/").await?;
    ensure!(three.len() == keys.iter().filter(|k| k.starts_with("list/3/")).count(), "{} under list/3/", three.len());
    Ok(())
}

async fn deletes_leave_tombstones_that_stop_older_writes(
    store: &dyn Store,
    bucket: &str,
    conditional_deletes: bool,
) -> Result<()> {
    let key = "del/k";
    let none = ObjectAttrs::default();
    let write = |v: u64| {
        let data = Bytes::from(format!("v{v}"));
        put_unless_newer(store, bucket, key, data.clone(), ObjectMeta::for_data(v, &data), &none)
    };
    write(3).await?;
    ensure!(delete_unless_newer(store, bucket, key, 4).await? == Conditional::Applied, "delete v4");
    ensure!(store.head(bucket, key).await?.is_none(), "still there after the delete");
    // A write older than the delete arrives late: the tombstone keeps the key deleted.
    ensure!(write(2).await? == Conditional::StoreNewer { store_version: 4 }, "an older write came back");
    ensure!(store.head(bucket, key).await?.is_none(), "an older write recreated the key");
    ensure!(store.list(bucket, "del/").await?.is_empty(), "listed");
    // A newer one is written; an older delete then leaves it.
    ensure!(write(5).await? == Conditional::Applied, "v5");
    ensure!(
        delete_unless_newer(store, bucket, key, 4).await? == Conditional::StoreNewer { store_version: 5 },
        "older delete"
    );
    ensure!(store.get(bucket, key).await?.context("gone")?.data[..] == b"v5"[..], "v5 removed");
    // A stale ETag never deletes the newer object.
    let stale = store.head(bucket, key).await?.context("head")?.etag;
    replace(store, bucket, key, b"other").await?;
    match store.delete_if(bucket, key, &stale).await {
        Err(StoreError::PreconditionFailed { .. }) => {}
        // MinIO ignores If-Match on DELETE (see S3Store::delete_if); the others must not.
        Ok(()) if !conditional_deletes => return Ok(()),
        other => anyhow::bail!("a delete naming a stale ETag: {other:?}"),
    }
    ensure!(store.get(bucket, key).await?.context("gone")?.data[..] == b"other"[..], "the newer object was deleted");
    Ok(())
}
