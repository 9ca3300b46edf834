//! The real proxy binary on the cloud stores' emulators, one body per scenario run against each
//! of fake-gcs-server (`--store-provider gcs`) and Azurite (`--store-provider azure`):
//! - writeback: what clients write lands byte for byte with its version, a delete removes the
//!   object, a crashed proxy flushes what it acknowledged after its restart, and a restarted proxy
//!   with an empty cache reads it all back;
//! - outage: writes acknowledged while the store is unreachable land once it is back;
//! - ordering: an older version flushed by another proxy after a newer one (or after a delete)
//!   never replaces it;
//! - large objects: an upload in parts, larger than the old 64 MiB limit, goes up in parts and
//!   comes back whole, with its attributes and the ETag the proxy answered.

mod support;

use anyhow::{Context, Result, ensure};
use blockproxy::protocol::UploadCompleted;
use blockproxy::store::{
    AzureCredentials, AzureStore, AzureStoreConfig, GcsCredentials, GcsStore, GcsStoreConfig, Store,
};
use blockproxy_testenv::{Azurite, FakeGcs, Toxiproxy, eventually};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::time::Duration;
use support::{PREFIX, ProxyOptions, ProxyProcess, StoreFlags, random_bytes, version_of};

const FLUSHED: Duration = Duration::from_secs(120);
const MIB: usize = 1 << 20;

/// One emulator, with the store client a test reads it through (as any other tool would) and
/// the flags that point a proxy at it.
struct Cloud {
    emulator: Emulator,
    store: Box<dyn Store>,
    /// Keeps the Azure credentials file alive.
    _dir: tempfile::TempDir,
}

enum Emulator {
    Gcs(FakeGcs),
    Azure { azurite: Azurite, credentials_file: std::path::PathBuf },
}

impl Cloud {
    async fn fake_gcs() -> Result<Self> {
        let gcs = FakeGcs::start().await?;
        let store =
            GcsStore::new(GcsStoreConfig { endpoint: Some(gcs.endpoint()), credentials: GcsCredentials::Anonymous });
        Ok(Self { emulator: Emulator::Gcs(gcs), store: Box::new(store), _dir: tempfile::tempdir()? })
    }

    async fn azurite() -> Result<Self> {
        let azurite = Azurite::start().await?;
        let dir = tempfile::tempdir()?;
        let credentials_file = dir.path().join("azure-credentials.yaml");
        std::fs::write(&credentials_file, azurite.credentials_yaml())?;
        let store = AzureStore::new(AzureStoreConfig {
            account: azurite.account().into(),
            endpoint: Some(azurite.endpoint()),
            credentials: AzureCredentials::shared_key(azurite.key()).map_err(anyhow::Error::msg)?,
        })?;
        Ok(Self { emulator: Emulator::Azure { azurite, credentials_file }, store: Box::new(store), _dir: dir })
    }

    fn bucket(&self) -> &str {
        match &self.emulator {
            Emulator::Gcs(gcs) => gcs.bucket(),
            Emulator::Azure { azurite, .. } => azurite.bucket(),
        }
    }

    fn addr(&self) -> SocketAddr {
        match &self.emulator {
            Emulator::Gcs(gcs) => gcs.addr(),
            Emulator::Azure { azurite, .. } => azurite.addr(),
        }
    }

    /// Flags for a proxy that reaches the emulator directly.
    fn flags(&self) -> StoreFlags {
        self.flags_via(self.addr())
    }

    /// Flags for a proxy that reaches the emulator at `addr` (a toxiproxy link to it).
    fn flags_via(&self, addr: SocketAddr) -> StoreFlags {
        match &self.emulator {
            Emulator::Gcs(_) => StoreFlags::Gcs { endpoint: format!("http://{addr}") },
            Emulator::Azure { azurite, credentials_file } => StoreFlags::Azure {
                endpoint: format!("http://{addr}/{}", azurite.account()),
                credentials_file: credentials_file.clone(),
            },
        }
    }

    async fn proxy(&self, dir: &std::path::Path) -> Result<ProxyProcess> {
        ProxyProcess::start_on(dir, ProxyOptions::default(), self.bucket(), self.flags()).await
    }

    async fn object(&self, key: &str) -> Result<Option<blockproxy::store::StoredBlock>> {
        Ok(self.store.get(self.bucket(), &format!("{PREFIX}/{key}")).await?)
    }
}

/// One test per emulator for each scenario.
macro_rules! on_each_cloud {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fake_gcs() -> anyhow::Result<()> {
                super::$scenario(super::Cloud::fake_gcs().await?).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn azurite() -> anyhow::Result<()> {
                super::$scenario(super::Cloud::azurite().await?).await
            }
        }
    )*};
}

on_each_cloud!(
    writeback_lands,
    outage_then_flush,
    an_older_version_never_replaces_a_newer_one,
    large_objects_go_up_in_parts
);

/// The proxy reaches the store through a toxiproxy link, which is cut while clients write.
async fn outage_then_flush(cloud: Cloud) -> Result<()> {
    let toxi = Toxiproxy::start().await?;
    let link = toxi.create_proxy("store", &cloud.addr().to_string()).await?;
    let dir = tempfile::tempdir()?;
    let proxy =
        ProxyProcess::start_on(dir.path(), ProxyOptions::default(), cloud.bucket(), cloud.flags_via(link)).await?;
    toxi.set_down("store", true).await?;
    let objects: Vec<(String, Vec<u8>)> = (0..4).map(|i| (format!("outage/{i}"), random_bytes(50_000 + i))).collect();
    for (key, data) in &objects {
        proxy.put_ok(key, data).await?;
    }
    for (key, data) in &objects {
        let got = proxy.get_bytes(key).await?.with_context(|| format!("{key}: not served during the outage"))?;
        ensure!(got[..] == data[..], "{key}: other bytes during the outage");
        ensure!(cloud.object(key).await?.is_none(), "{key} reached a store that was down");
    }
    toxi.set_down("store", false).await?;
    proxy.wait_flushed(FLUSHED).await?;
    for (key, data) in &objects {
        let got = cloud.object(key).await?.with_context(|| format!("{key} not flushed"))?;
        ensure!(got.data[..] == data[..], "{key}: the store holds other bytes");
    }
    Ok(())
}

async fn writeback_lands(cloud: Cloud) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut proxy = cloud.proxy(dir.path()).await?;
    let objects: Vec<(String, Vec<u8>)> =
        [("a", 1), ("dir/b c", 4096), ("dir/ü+&=?#%", 100_000), ("up/../dot/./key", 10), ("big", 9 << 20)]
            .into_iter()
            .map(|(k, n)| (k.to_owned(), random_bytes(n)))
            .collect();
    let mut versions = Vec::new();
    for (key, data) in &objects {
        versions.push(proxy.put_ok(&percent(key), data).await?);
    }
    proxy.wait_flushed(FLUSHED).await?;
    for ((key, data), version) in objects.iter().zip(&versions) {
        let got = cloud.object(key).await?.with_context(|| format!("{key} not in the store"))?;
        ensure!(got.data[..] == data[..], "{key}: the store holds other bytes");
        ensure!(got.version == *version, "{key}: version {} in the store, {version} acknowledged", got.version);
    }

    // A delete reaches the store.
    let r = proxy.delete(&percent("a")).await?;
    ensure!(r.status().is_success(), "DELETE: {}", r.status());
    eventually(FLUSHED, Duration::from_millis(100), || async {
        ensure!(cloud.object("a").await?.is_none(), "a is still in the store");
        Ok(())
    })
    .await?;

    // A crash after the acknowledgement: the restarted proxy flushes it.
    proxy.opts.sync = true;
    proxy.restart().await?;
    let data = random_bytes(70_000);
    let version = proxy.put_ok("after-crash", &data).await?;
    proxy.kill9();
    proxy.restart().await?;
    proxy.wait_flushed(FLUSHED).await?;
    let got = cloud.object("after-crash").await?.context("after-crash not in the store")?;
    ensure!(got.data[..] == data[..] && got.version >= version, "after-crash: version {}", got.version);

    // A proxy with an empty cache reads everything back from the store.
    proxy.kill9();
    std::fs::remove_dir_all(proxy.cache_dir())?;
    proxy.restart().await?;
    for (key, data) in &objects[1..] {
        let r = proxy.get(&percent(key)).await?;
        ensure!(r.status() == 200, "{key}: {}", r.status());
        // S3's ETag of an object written in one part is its MD5, whatever the store's own is.
        let etag = r.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let md5 = format!("\"{}\"", hex::encode(Md5::digest(data)));
        ensure!(etag.as_deref() == Some(md5.as_str()), "{key}: ETag {etag:?} after the store, not its MD5");
        ensure!(r.bytes().await?[..] == data[..], "{key}: read back other bytes");
    }
    ensure!(proxy.get_bytes(&percent("a")).await?.is_none(), "the deleted object came back");
    Ok(())
}

/// Two proxies flush versions of one key in the wrong order: the store keeps the newest, and a
/// delete is not undone by an older write flushed after it (the tombstone stops it).
async fn an_older_version_never_replaces_a_newer_one(cloud: Cloud) -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("a"))?;
    std::fs::create_dir_all(dir.path().join("b"))?;
    let a = cloud.proxy(&dir.path().join("a")).await?;
    let b = cloud.proxy(&dir.path().join("b")).await?;

    let newer = random_bytes(30_000);
    let version = a.put_ok("order/kept", &newer).await?;
    a.wait_flushed(FLUSHED).await?;
    // An older copy reaches the other proxy late (as a read repair carries one) and is flushed.
    let r = b.put_exact_version("order/kept", &random_bytes(30_001), version - 1).await?;
    ensure!(r.status().is_success(), "the older copy was not taken: {}", r.status());
    b.wait_flushed(FLUSHED).await?;
    let got = cloud.object("order/kept").await?.context("order/kept vanished")?;
    ensure!(got.version == version, "the store holds version {}, not the newest {version}", got.version);
    ensure!(got.data[..] == newer[..], "the store holds the older bytes");

    let written = a.put_ok("order/deleted", &random_bytes(20_000)).await?;
    a.wait_flushed(FLUSHED).await?;
    let r = a.delete("order/deleted").await?;
    ensure!(r.status().is_success(), "DELETE: {}", r.status());
    let deleted = version_of(&r)?;
    a.wait_flushed(FLUSHED).await?;
    ensure!(cloud.object("order/deleted").await?.is_none(), "the delete did not reach the store");
    ensure!(written < deleted, "the delete's version {deleted} is not after the write's {written}");
    let r = b.put_exact_version("order/deleted", &random_bytes(20_001), written).await?;
    ensure!(r.status().is_success(), "the older copy was not taken: {}", r.status());
    b.wait_flushed(FLUSHED).await?;
    ensure!(cloud.object("order/deleted").await?.is_none(), "an older write undid the delete");
    Ok(())
}

/// An upload in 8 MiB parts, over the old 64 MiB object limit, reaches the store whole with its
/// attributes, and a proxy with an empty cache serves it back from there with the same ETag and
/// bytes.
async fn large_objects_go_up_in_parts(cloud: Cloud) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut proxy = cloud.proxy(dir.path()).await?;
    let data = random_bytes(70 * MIB + 4321);
    let upload = proxy.create_upload("media/big.bin", &[("content-type", "video/mp4")]).await?;
    let etags = proxy.put_parts("media/big.bin", &upload, &data, 8 * MIB).await?;
    let r = proxy.complete_upload("media/big.bin", &upload, &etags).await?;
    ensure!(r.status() == 200, "complete: {} {}", r.status(), r.text().await?);
    let done: UploadCompleted = r.json().await?;
    proxy.wait_flushed(FLUSHED).await?;

    let info = cloud.store.head(cloud.bucket(), &format!("{PREFIX}/media/big.bin")).await?.context("not flushed")?;
    ensure!(info.size == data.len() as u64, "the store holds {} bytes, not {}", info.size, data.len());
    ensure!(info.attrs.content_type.as_deref() == Some("video/mp4"), "attributes lost: {:?}", info.attrs);
    let got = cloud.object("media/big.bin").await?.context("not flushed")?;
    ensure!(sha(&got.data) == sha(&data), "the store holds other bytes");

    proxy.kill9();
    std::fs::remove_dir_all(proxy.cache_dir())?;
    proxy.restart().await?;
    let r = proxy.get_range("media/big.bin", 66_000_000..68_000_000).await?;
    ensure!(r.status() == 206, "ranged read from the store: {}", r.status());
    let etag = r.headers().get("etag").map(|v| v.to_str().unwrap_or_default().to_owned());
    ensure!(etag.as_deref() == Some(done.etag.as_str()), "ETag {etag:?} after the store, {} answered", done.etag);
    ensure!(r.bytes().await?[..] == data[66_000_000..68_000_000], "the range holds other bytes");
    Ok(())
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A key as it travels in the proxy's path (ADR 0004).
fn percent(key: &str) -> String {
    blockproxy::protocol::encode_key(&blockproxy::protocol::BlockKey::parse(key).expect("a valid key"))
}
