//! The real proxy binary on the cloud stores' emulators: what clients write is written back to
//! fake-gcs-server (`--store-provider gcs`) and Azurite (`--store-provider azure`) byte for byte
//! with its version, a delete removes the object there, a crashed proxy flushes what it
//! acknowledged after its restart, a restarted proxy with an empty cache reads it back, and
//! writes acknowledged while the store is unreachable land once it is back. One body per
//! scenario, run against each emulator.

mod support;

use anyhow::{Context, Result, ensure};
use blockproxy::store::{
    AzureCredentials, AzureStore, AzureStoreConfig, GcsCredentials, GcsStore, GcsStoreConfig, Store,
};
use blockproxy_testenv::{Azurite, FakeGcs, Toxiproxy, eventually};
use std::time::Duration;
use support::{PREFIX, ProxyOptions, ProxyProcess, StoreFlags, random_bytes};

const FLUSHED: Duration = Duration::from_secs(60);

#[tokio::test]
async fn writes_through_a_proxy_land_in_fake_gcs() -> Result<()> {
    let gcs = FakeGcs::start().await?;
    let store =
        GcsStore::new(GcsStoreConfig { endpoint: Some(gcs.endpoint()), credentials: GcsCredentials::Anonymous });
    writeback_lands(&store, gcs.bucket(), StoreFlags::Gcs { endpoint: gcs.endpoint() }).await
}

#[tokio::test]
async fn writes_through_a_proxy_land_in_azurite() -> Result<()> {
    let azurite = Azurite::start().await?;
    let dir = tempfile::tempdir()?;
    let credentials_file = dir.path().join("azure-credentials.yaml");
    std::fs::write(&credentials_file, azurite.credentials_yaml())?;
    let store = AzureStore::new(AzureStoreConfig {
        account: azurite.account().into(),
        endpoint: Some(azurite.endpoint()),
        credentials: AzureCredentials::shared_key(azurite.key()).map_err(anyhow::Error::msg)?,
    })?;
    let flags = StoreFlags::Azure { endpoint: azurite.endpoint(), credentials_file };
    writeback_lands(&store, azurite.bucket(), flags).await
}

#[tokio::test]
async fn writes_during_a_fake_gcs_outage_land_when_it_is_back() -> Result<()> {
    let gcs = FakeGcs::start().await?;
    let toxi = Toxiproxy::start().await?;
    let link = toxi.create_proxy("store", &gcs.addr().to_string()).await?;
    let store =
        GcsStore::new(GcsStoreConfig { endpoint: Some(gcs.endpoint()), credentials: GcsCredentials::Anonymous });
    let flags = StoreFlags::Gcs { endpoint: format!("http://{link}") };
    outage_then_flush(&store, gcs.bucket(), flags, &toxi).await
}

#[tokio::test]
async fn writes_during_an_azurite_outage_land_when_it_is_back() -> Result<()> {
    let azurite = Azurite::start().await?;
    let toxi = Toxiproxy::start().await?;
    let link = toxi.create_proxy("store", &azurite.addr().to_string()).await?;
    let dir = tempfile::tempdir()?;
    let credentials_file = dir.path().join("azure-credentials.yaml");
    std::fs::write(&credentials_file, azurite.credentials_yaml())?;
    let store = AzureStore::new(AzureStoreConfig {
        account: azurite.account().into(),
        endpoint: Some(azurite.endpoint()),
        credentials: AzureCredentials::shared_key(azurite.key()).map_err(anyhow::Error::msg)?,
    })?;
    let flags = StoreFlags::Azure { endpoint: format!("http://{link}/{}", azurite.account()), credentials_file };
    outage_then_flush(&store, azurite.bucket(), flags, &toxi).await
}

/// The proxy reaches the store through toxiproxy's link "store", which is cut while clients write.
async fn outage_then_flush(store: &dyn Store, bucket: &str, flags: StoreFlags, toxi: &Toxiproxy) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let proxy = ProxyProcess::start_on(dir.path(), ProxyOptions::default(), bucket, flags).await?;
    toxi.set_down("store", true).await?;
    let objects: Vec<(String, Vec<u8>)> = (0..4).map(|i| (format!("outage/{i}"), random_bytes(50_000 + i))).collect();
    for (key, data) in &objects {
        proxy.put_ok(key, data).await?;
    }
    for (key, data) in &objects {
        let got = proxy.get_bytes(key).await?.with_context(|| format!("{key}: not served during the outage"))?;
        ensure!(got[..] == data[..], "{key}: other bytes during the outage");
        ensure!(store.head(bucket, &format!("{PREFIX}/{key}")).await?.is_none(), "{key} reached a store that was down");
    }
    toxi.set_down("store", false).await?;
    proxy.wait_flushed(FLUSHED).await?;
    for (key, data) in &objects {
        let got = store.get(bucket, &format!("{PREFIX}/{key}")).await?.with_context(|| format!("{key} not flushed"))?;
        ensure!(got.data[..] == data[..], "{key}: the store holds other bytes");
    }
    Ok(())
}

/// `store` reads the emulator directly (as any other tool would).
async fn writeback_lands(store: &dyn Store, bucket: &str, flags: StoreFlags) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut proxy = ProxyProcess::start_on(dir.path(), ProxyOptions::default(), bucket, flags).await?;
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
        let got =
            store.get(bucket, &format!("{PREFIX}/{key}")).await?.with_context(|| format!("{key} not in the store"))?;
        ensure!(got.data[..] == data[..], "{key}: the store holds other bytes");
        ensure!(got.version == *version, "{key}: version {} in the store, {version} acknowledged", got.version);
    }

    // A delete reaches the store.
    let r = proxy.delete(&percent("a")).await?;
    ensure!(r.status().is_success(), "DELETE: {}", r.status());
    eventually(FLUSHED, Duration::from_millis(100), || async {
        ensure!(store.head(bucket, &format!("{PREFIX}/a")).await?.is_none(), "a is still in the store");
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
    let got = store.get(bucket, &format!("{PREFIX}/after-crash")).await?.context("after-crash not in the store")?;
    ensure!(got.data[..] == data[..] && got.version >= version, "after-crash: version {}", got.version);

    // A proxy with an empty cache reads everything back from the store.
    proxy.kill9();
    std::fs::remove_dir_all(proxy.cache_dir())?;
    proxy.restart().await?;
    for (key, data) in &objects[1..] {
        let got = proxy.get_bytes(&percent(key)).await?.with_context(|| format!("{key}: not found"))?;
        ensure!(got[..] == data[..], "{key}: read back other bytes");
    }
    ensure!(proxy.get_bytes(&percent("a")).await?.is_none(), "the deleted object came back");
    Ok(())
}

/// A key as it travels in the proxy's path (ADR 0004).
fn percent(key: &str) -> String {
    blockproxy::protocol::encode_key(&blockproxy::protocol::BlockKey::parse(key).expect("a valid key"))
}
