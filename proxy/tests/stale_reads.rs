//! Stale reads after a failover (issue 9, hole 5): a proxy that answers reads but refuses a write
//! (draining, back-pressure) makes the client write the key elsewhere, while it still caches the
//! old copy. The writer must read its own write at once; every other reader of the group must
//! see it within the bound ADR 0002 states: once the newer copy is in the store, within
//! `--metadata-ttl`.

mod client_support;
mod support;

use anyhow::{Result, ensure};
use blockproxy::client::{ClientConfig, rendezvous};
use blockproxy::protocol::{BlockKey, DiscoveryDocument, DiscoveryEndpoint, DiscoveryGroup, StoreLocation, VolumeId};
use blockproxy_testenv::eventually;
use bytes::Bytes;
use std::time::Duration;
use support::{ADMIN_TOKEN, Backend, PREFIX, ProxyOptions, ProxyProcess, TOKEN, VOLUME};

fn discovery(bucket: &str, addresses: &[String]) -> DiscoveryDocument {
    DiscoveryDocument {
        volume_id: VolumeId::parse(VOLUME).unwrap(),
        store: StoreLocation {
            bucket: bucket.into(),
            prefix: PREFIX.into(),
            endpoint: None,
            region: None,
            provider: None,
            path_style: false,
        },
        block_size: blockproxy::protocol::DEFAULT_BLOCK_SIZE,
        metadata_ttl_ms: blockproxy::protocol::DEFAULT_METADATA_TTL_MS,
        groups: vec![DiscoveryGroup {
            name: "g1".into(),
            provider_code: "s3".into(),
            region_code: "r1".into(),
            scheme: "http".into(),
            ca_bundle: None,
            server_name: None,
            endpoints: addresses
                .iter()
                .map(|a| DiscoveryEndpoint { address: a.clone(), node: None, weight: 1, draining: false })
                .collect(),
        }],
    }
}

/// A key whose rendezvous owner is `owner` among `addresses`.
fn key_owned_by(owner: &str, addresses: &[String]) -> BlockKey {
    let nodes: Vec<rendezvous::Node<'_>> =
        addresses.iter().map(|a| rendezvous::Node { address: a, weight: 1 }).collect();
    (0..)
        .map(|i| format!("stale/k{i}"))
        .find(|k| addresses[rendezvous::rank(VOLUME, k, &nodes)[0]] == owner)
        .map(|k| BlockKey::parse(&k).unwrap())
        .unwrap()
}

/// Two proxies A and B in one group over MinIO, and the configuration of a client of it.
struct Group {
    backend: Backend,
    a: ProxyProcess,
    b: ProxyProcess,
    addresses: Vec<String>,
    client: ClientConfig,
    _dirs: [tempfile::TempDir; 3],
}

async fn group_of_two() -> Result<Group> {
    let backend = Backend::start().await?;
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?];
    let a = ProxyProcess::start(&backend, dirs[0].path(), ProxyOptions::default()).await?;
    let b = ProxyProcess::start(&backend, dirs[1].path(), ProxyOptions::default()).await?;
    let addresses = vec![a.addr.to_string(), b.addr.to_string()];
    let discovery_file = dirs[2].path().join("discovery.json");
    client_support::write_discovery(&discovery_file, &discovery(backend.minio.bucket(), &addresses))?;
    let mut client = client_support::fast_config(&discovery_file);
    client.token = TOKEN.into();
    Ok(Group { backend, a, b, addresses, client, _dirs: dirs })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_5xx_failover_the_writer_reads_its_write_and_others_within_the_ttl() -> Result<()> {
    let Group { backend: _backend, a, b, addresses, client: cfg, _dirs } = group_of_two().await?;
    let writer = client_support::start_client(cfg.clone()).await?;
    let reader = client_support::start_client(cfg).await?;

    let key = key_owned_by(&addresses[0], &addresses);
    writer.put(&key, Bytes::from_static(b"one")).await?;
    a.wait_flushed(Duration::from_secs(30)).await?;
    let seen = reader.get(&key, None).await?.expect("written");
    assert_eq!(&seen.data[..], b"one");

    // A drains: it still serves reads (its clean copy of "one"), and refuses writes with 503.
    let drain = a.http.post(a.url("/v1/admin/drain")).bearer_auth(ADMIN_TOKEN).send().await?;
    assert_eq!(drain.status(), 202);
    let v2 = writer.put(&key, Bytes::from_static(b"two")).await?;
    assert_eq!(b.get_bytes(key.as_str()).await?.as_deref(), Some(&b"two"[..]), "the write failed over to B");

    // Read your writes, at once.
    let mine = writer.get(&key, None).await?.expect("written");
    assert_eq!(
        (&mine.data[..], mine.info.version),
        (&b"two"[..], v2),
        "the writer read an older value than its own write"
    );

    // Everyone else: once B flushed it, within A's --metadata-ttl (1 s by default) plus slack.
    b.wait_flushed(Duration::from_secs(30)).await?;
    eventually(Duration::from_secs(5), Duration::from_millis(100), || async {
        let theirs = reader.get(&key, None).await?.expect("written");
        ensure!(&theirs.data[..] == b"two", "reader still sees {:?}", String::from_utf8_lossy(&theirs.data));
        Ok(())
    })
    .await?;
    assert!(a.metric("blockproxy_cache_revalidations_total").await? >= 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_never_reads_a_value_older_than_its_own_delete() -> Result<()> {
    // B must stay up (it takes the failed-over delete) even though the test never names it.
    let Group { backend: _backend, a, b: _b, addresses, client: cfg, _dirs } = group_of_two().await?;
    let client = client_support::start_client(cfg).await?;

    let key = key_owned_by(&addresses[0], &addresses);
    client.put(&key, Bytes::from_static(b"doomed")).await?;
    a.wait_flushed(Duration::from_secs(30)).await?;
    let drain = a.http.post(a.url("/v1/admin/drain")).bearer_auth(ADMIN_TOKEN).send().await?;
    assert_eq!(drain.status(), 202);
    // The delete fails over to B (A refuses writes); A still holds the old copy.
    client.delete(&key).await?;
    assert!(client.get(&key, None).await?.is_none(), "read back a value this client had deleted");
    assert!(client.head(&key).await?.is_none());
    Ok(())
}
