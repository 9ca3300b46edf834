//! A block that can never be flushed does not stall writeback: with one flush worker, a key the
//! store refuses for good (`x/y` on a `file://` store where another tool left a file in the way
//! of its directory) is quarantined, kept on disk,
//! counted in a metric and in the drain status, and every other key and volume still flushes.

mod support;

use anyhow::{Result, ensure};
use blockproxy_testenv::eventually;
use std::time::Duration;
use support::*;

const VOLUME2: &str = "vol2";
const TOKEN2: &str = "volume-token-2";

fn files_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_that_can_never_be_flushed_is_quarantined_and_blocks_nothing() -> Result<()> {
    let backend = Backend::start().await?;
    let root = tempfile::tempdir()?;
    let store = root.path().join("store");
    std::fs::create_dir_all(root.path().join("proxy"))?;
    let opts = ProxyOptions { extra: vec!["--writeback-active".into(), "1".into()], ..Default::default() };
    let mut proxy =
        ProxyProcess::start_with_store(&backend, &root.path().join("proxy"), opts, file_store_endpoint(&store)).await?;
    let bucket = backend.minio.bucket().to_owned();
    std::fs::write(proxy.volumes_file(), volumes_yaml(&[(VOLUME, &bucket, TOKEN), (VOLUME2, &bucket, TOKEN2)]))?;
    let object = |key: &str| std::fs::read(store.join(&bucket).join(local_store_path(&format!("{PREFIX}/{key}")))).ok();

    proxy.put_ok("q/x", b"an object named x").await?;
    proxy.wait_flushed(Duration::from_secs(30)).await?;
    // Another tool left a file where `q/x/y` needs its directory, so it can never be stored.
    let needed = local_store_path(&format!("{PREFIX}/q/x/y"));
    let in_the_way = store.join(&bucket).join(needed.parent().unwrap_or(&needed));
    std::fs::write(&in_the_way, b"not ours")?;
    proxy.put_ok("q/x/y", b"can never be flushed").await?;
    let mut expected = Vec::new();
    for i in 0..20 {
        let (key, data) = (format!("good/{i}"), format!("good block {i}"));
        proxy.put_ok(&key, data.as_bytes()).await?;
        expected.push((key, data));
    }
    // The second volume becomes known within the reload interval.
    let other = eventually(Duration::from_secs(10), Duration::from_millis(100), || {
        proxy.put_ok_in(VOLUME2, TOKEN2, "other/1", b"another volume's block")
    });
    other.await?;
    expected.push(("other/1".into(), "another volume's block".into()));

    proxy.wait_flushed(Duration::from_secs(60)).await?;
    for (key, data) in &expected {
        assert_eq!(object(key).as_deref(), Some(data.as_bytes()), "{key} was flushed");
    }
    assert_eq!(proxy.metric("blockproxy_writeback_quarantined_blocks").await?, 1.0);
    let quarantine = proxy.cache_dir().join("quarantine");
    assert_eq!(files_in(&quarantine), 1, "the block is kept on disk");
    // Its acknowledged write is not lost from view either: reads fail rather than answer "absent".
    assert_eq!(proxy.get("q/x/y").await?.status(), 500, "a quarantined write is never read as absent");
    let log = proxy.log_text();
    assert!(
        log.lines().any(|l| l.contains("ERROR") && l.contains("quarantined") && l.contains("q/x/y")),
        "an error log names the key"
    );

    // A drain flushes everything else, and is not done while the quarantined write exists only
    // on this disk: the operator must not delete the disk with it.
    proxy.start_drain().await?;
    eventually(Duration::from_secs(30), Duration::from_millis(100), || async {
        let s = proxy.drain_status().await?;
        ensure!(s.dirty_blocks == 0 && s.quarantined_blocks == 1, "{s:?}");
        Ok(())
    })
    .await?;
    let s = proxy.drain_status().await?;
    assert!(!s.done, "a drain leaving a quarantined write behind reported done: {s:?}");

    // After a restart the block is still there, counted and not flushed.
    proxy.restart().await?;
    assert_eq!(proxy.metric("blockproxy_writeback_quarantined_blocks").await?, 1.0);
    assert_eq!(proxy.metric("blockproxy_cache_dirty_blocks").await?, 0.0);
    assert_eq!(proxy.drain_status().await?.quarantined_blocks, 1);
    assert_eq!(files_in(&quarantine), 1);
    assert_eq!(proxy.get("q/x/y").await?.status(), 500, "found again after the restart");
    assert_eq!(object("q/x").as_deref(), Some(&b"an object named x"[..]), "the conflicting object is untouched");
    Ok(())
}
