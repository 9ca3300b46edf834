//! The client against real proxies (spawned `blockproxy serve`), a real MinIO, and toxiproxy
//! links in front of every proxy: RTT group selection with hysteresis, failover to the next
//! group and to the store, membership changes, and the consistency contract
//! (docs/adr/0002-consistency-contract.md).

mod client_support;

use anyhow::Result;
use blockproxy::client::rendezvous;
use blockproxy_testenv::blockproxy::{files_under, flip_last_byte};
use blockproxy_testenv::{Minio, Toxiproxy};
use bytes::Bytes;
use client_support::*;
use std::path::PathBuf;
use std::time::Duration;

/// MinIO behind a toxiproxy link named "store" (which a test cuts), and a volumes file for it.
struct CutStore {
    minio: Minio,
    toxi: Toxiproxy,
    root: tempfile::TempDir,
    volumes: PathBuf,
    /// The link's endpoint, for `--store-endpoint`.
    store_ep: String,
}

impl CutStore {
    async fn start() -> Result<Self> {
        let minio = Minio::start().await?;
        let toxi = Toxiproxy::start().await?;
        let root = tempfile::tempdir()?;
        let volumes = write_volumes_file(root.path(), minio.bucket())?;
        let store_link = toxi.create_proxy("store", &minio.addr().to_string()).await?;
        Ok(Self { minio, toxi, root, volumes, store_ep: format!("http://{store_link}") })
    }

    /// Proxies p1 and p2 on this store, each behind a toxiproxy link (l1, l2) that a test cuts,
    /// and a discovery file with one group of the two links.
    async fn two_linked_proxies(&self) -> Result<(Proxy, Proxy, String, String, PathBuf)> {
        let p1 = Proxy::start("p1", self.root.path(), &self.volumes, &self.store_ep, &self.minio).await?;
        let p2 = Proxy::start("p2", self.root.path(), &self.volumes, &self.store_ep, &self.minio).await?;
        let l1 = link(&self.toxi, "l1", p1.addr).await?;
        let l2 = link(&self.toxi, "l2", p2.addr).await?;
        let disc = self.root.path().join("discovery.json");
        let group = GroupSpec { name: "g".into(), addresses: vec![l1.clone(), l2.clone()] };
        write_discovery(&disc, &discovery(self.minio.bucket(), None, &[group]))?;
        Ok((p1, p2, l1, l2, disc))
    }
}

async fn set_latency(toxi: &Toxiproxy, proxies: &[&str], ms: u64) -> Result<()> {
    for p in proxies {
        let _ = toxi.remove_toxic(p, "latency_downstream").await;
        toxi.add_latency(p, ms, 0).await?;
    }
    Ok(())
}

async fn set_down(toxi: &Toxiproxy, proxies: &[&str], down: bool) -> Result<()> {
    for p in proxies {
        toxi.set_down(p, down).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_picks_lowest_rtt_group_switches_with_hysteresis_fails_over_and_falls_back_to_the_store() -> Result<()> {
    let minio = Minio::start().await?;
    let toxi = Toxiproxy::start().await?;
    let root = tempfile::tempdir()?;
    let volumes = write_volumes_file(root.path(), minio.bucket())?;
    let mut procs = Vec::new();
    let mut links = Vec::new();
    for name in ["a1", "a2", "b1", "b2"] {
        let p = Proxy::start(name, root.path(), &volumes, &minio.endpoint(), &minio).await?;
        links.push(link(&toxi, name, p.addr).await?);
        procs.push(p);
    }
    set_latency(&toxi, &["a1", "a2"], 2).await?;
    set_latency(&toxi, &["b1", "b2"], 40).await?;
    let disc = root.path().join("discovery.json");
    write_discovery(
        &disc,
        &discovery(
            minio.bucket(),
            None,
            &[
                GroupSpec { name: "a".into(), addresses: links[0..2].to_vec() },
                GroupSpec { name: "b".into(), addresses: links[2..4].to_vec() },
            ],
        ),
    )?;
    let mut cfg = fast_config(&disc);
    cfg.direct_store = Some(arc_store(minio_store(&minio).await));
    let client = start_client(cfg).await?;

    // A (+2 ms) beats B (+40 ms).
    assert_eq!(client.status().chosen_group.as_deref(), Some("a"), "{:?}", client.status());

    // A rises to +120 ms: the switch to B comes after the stated number of rounds (3), not before.
    set_latency(&toxi, &["a1", "a2"], 120).await?;
    let r0 = client.status().probe_rounds;
    wait_until("B is chosen", Duration::from_secs(20), || async {
        client.status().chosen_group.as_deref() == Some("b")
    })
    .await?;
    let switched_after = client.status().probe_rounds - r0;
    println!("RTT switch: A raised to +120ms, switched to B after {switched_after} probe rounds (hysteresis: 3)");
    assert!((3..=5).contains(&switched_after), "switched after {switched_after} rounds");

    // A back to +2 ms: chosen again (again after the hysteresis rounds).
    set_latency(&toxi, &["a1", "a2"], 2).await?;
    wait_until("A is chosen again", Duration::from_secs(20), || async {
        client.status().chosen_group.as_deref() == Some("a")
    })
    .await?;

    // A cut: every request succeeds, through B.
    set_down(&toxi, &["a1", "a2"], true).await?;
    for i in 0..20 {
        let k = key(&format!("cut-a/{i}"));
        let data = Bytes::from(format!("through b {i}"));
        client.put(&k, data.clone()).await?;
        assert_eq!(client.get(&k, None).await?.expect("just written").data, data);
    }
    let m = client.metrics().render();
    assert!(m.contains("blockproxy_client_fallbacks_total{kind=\"group\"}"), "{m}");
    wait_until("B is chosen after A is cut", Duration::from_secs(10), || async {
        client.status().chosen_group.as_deref() == Some("b")
    })
    .await?;

    // Both cut: straight to MinIO.
    set_down(&toxi, &["b1", "b2"], true).await?;
    let k = key("direct/0");
    let v = client.put(&k, Bytes::from_static(b"direct to the store")).await?;
    let (data, version) = in_minio(&minio, "direct/0").await?.expect("written directly to MinIO");
    assert_eq!((data.as_slice(), version), (&b"direct to the store"[..], v));
    assert_eq!(client.get(&k, None).await?.expect("readable").data.as_ref(), b"direct to the store");
    assert_eq!(
        client.get(&key("cut-a/3"), None).await.map(|f| f.is_some()).ok(),
        Some(true),
        "flushed blocks readable from the store"
    );
    // Served by the store (whether the probes had already marked both groups down, making the
    // store the first target, or the request found them down itself and fell back).
    let m = client.metrics().render();
    assert!(m.contains("blockproxy_client_requests_total{op=\"put\",target=\"store\"}"), "{m}");
    assert!(m.contains("blockproxy_client_requests_total{op=\"get\",target=\"store\"}"), "{m}");

    // A comes back: chosen again.
    set_down(&toxi, &["a1", "a2"], false).await?;
    wait_until("A is chosen once it is back", Duration::from_secs(10), || async {
        client.status().chosen_group.as_deref() == Some("a")
    })
    .await?;
    set_down(&toxi, &["b1", "b2"], false).await?;
    let k = key("after/0");
    client.put(&k, Bytes::from_static(b"back")).await?;
    assert_eq!(client.get(&k, None).await?.unwrap().data.as_ref(), b"back");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_proxy_moves_about_one_in_n_keys_and_reads_stay_correct() -> Result<()> {
    // The proxies reach MinIO through a link that is cut below: every write stays dirty on its
    // owner, so correct reads after the change prove the data came from the previous owner.
    let CutStore { minio, toxi, root, volumes, store_ep } = CutStore::start().await?;
    let mut procs = Vec::new();
    for name in ["p1", "p2", "p3", "p4"] {
        procs.push(Proxy::start(name, root.path(), &volumes, &store_ep, &minio).await?);
    }
    toxi.set_down("store", true).await?;
    let addrs: Vec<String> = procs.iter().map(|p| p.addr.to_string()).collect();
    let disc = root.path().join("discovery.json");
    let doc3 = discovery(minio.bucket(), None, &[GroupSpec { name: "g".into(), addresses: addrs[0..3].to_vec() }]);
    write_discovery(&disc, &doc3)?;
    let client = start_client(fast_config(&disc)).await?;

    const KEYS: usize = 300;
    let keys: Vec<String> = (0..KEYS).map(|i| format!("m/{i}")).collect();
    for k in &keys {
        client.put(&key(k), Bytes::from(format!("value of {k}"))).await?;
    }
    let nodes = |n: usize| -> Vec<rendezvous::Node<'_>> {
        addrs[0..n].iter().map(|a| rendezvous::Node { address: a, weight: 1 }).collect()
    };
    let (n3, n4) = (nodes(3), nodes(4));

    write_discovery(
        &disc,
        &discovery(minio.bucket(), None, &[GroupSpec { name: "g".into(), addresses: addrs.clone() }]),
    )?;
    wait_until("the client sees 4 proxies", Duration::from_secs(10), || async {
        client.status().groups[0].proxies.len() == 4
    })
    .await?;
    let mut moved = 0;
    for k in &keys {
        let before = rendezvous::owner("vol1", k, &n3).unwrap();
        let after = rendezvous::owner("vol1", k, &n4).unwrap();
        if before != after {
            assert_eq!(after, 3, "keys only move to the new proxy");
            moved += 1;
        }
        let got = client.get(&key(k), None).await?.unwrap_or_else(|| panic!("{k} lost after the membership change"));
        assert_eq!(got.data, Bytes::from(format!("value of {k}")), "{k}");
    }
    let frac = moved as f64 / KEYS as f64;
    println!("membership change 3 -> 4 proxies: {moved}/{KEYS} keys moved ({:.1}%, ideal 25%)", frac * 100.0);
    assert!((0.17..=0.33).contains(&frac), "moved {frac}");

    // New writes land on the new owner, and the store gets everything once the link is back.
    let k = keys.iter().find(|k| rendezvous::owner("vol1", k, &n4) == Some(3)).unwrap();
    client.put(&key(k), Bytes::from_static(b"newer")).await?;
    assert_eq!(procs[3].get_direct(k).await?.map(|(d, _)| d), Some(b"newer".to_vec()));
    toxi.set_down("store", false).await?;
    wait_until("MinIO holds the newest version", Duration::from_secs(30), || async {
        in_minio(&minio, k).await.ok().flatten().is_some_and(|(d, _)| d == b"newer")
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistency_contract_failover_writes_win_and_a_returning_owner_is_repaired() -> Result<()> {
    let cut = CutStore::start().await?;
    let (p1, p2, l1, l2, disc) = cut.two_linked_proxies().await?;
    let CutStore { minio, toxi, .. } = cut;
    let writer = start_client(fast_config(&disc)).await?;
    let reader = start_client(fast_config(&disc)).await?;
    let nodes = [rendezvous::Node { address: &l1, weight: 1 }, rendezvous::Node { address: &l2, weight: 1 }];
    let name = (0..).map(|i| format!("c/{i}")).find(|k| rendezvous::owner("vol1", k, &nodes) == Some(0)).unwrap();
    let k = key(&name);

    // Case 1, stable membership: another client reads the acknowledged write at once.
    toxi.set_down("store", true).await?;
    let v1 = writer.put(&k, Bytes::from_static(b"v1")).await?;
    assert_eq!(reader.get(&k, None).await?.map(|f| (f.data, f.info.version)), Some((Bytes::from_static(b"v1"), v1)));

    // Case 2, failover: the owner is cut; the write goes to the next proxy in rendezvous order
    // and readers see it there.
    toxi.set_down("l1", true).await?;
    let v2 = writer.put(&k, Bytes::from_static(b"v2")).await?;
    assert!(v2 > v1);
    assert_eq!(reader.get(&k, None).await?.map(|f| f.data), Some(Bytes::from_static(b"v2")));
    assert_eq!(p2.get_direct(&name).await?.map(|(d, _)| d), Some(b"v2".to_vec()));

    // Case 3, the owner comes back holding the older v1 (dirty, unflushed): reads do not go back
    // to v1. The client checks the recovering owner against the next proxy, serves v2, and
    // repairs the owner.
    toxi.set_down("l1", false).await?;
    wait_until("the reader sees p1 back", Duration::from_secs(10), || async {
        reader.status().groups[0].proxies.iter().all(|p| p.up)
    })
    .await?;
    assert_eq!(p1.get_direct(&name).await?.map(|(d, _)| d), Some(b"v1".to_vec()), "p1 still holds the old version");
    assert_eq!(reader.get(&k, None).await?.map(|f| f.data), Some(Bytes::from_static(b"v2")));
    assert_eq!(p1.get_direct(&name).await?, Some((b"v2".to_vec(), v2)), "owner repaired");
    assert!(reader.metrics().render().contains("blockproxy_client_read_repairs_total 1"));

    // The store ends at v2 whatever order the flushes run in (conditional flushes).
    toxi.set_down("store", false).await?;
    wait_until("MinIO holds v2", Duration::from_secs(30), || async {
        in_minio(&minio, &name).await.ok().flatten() == Some((b"v2".to_vec(), v2))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await; // let any late flush of v1 run; it must be skipped
    assert_eq!(in_minio(&minio, &name).await?, Some((b"v2".to_vec(), v2)));
    Ok(())
}

/// Bytes still arriving (ADR 0022) are relayed to the key's owner as they come: the owner has
/// the request, and has reserved the body's length, before the last byte exists. When the owner
/// is cut they go whole to the next proxy. A source that fails part-way stores nothing anywhere,
/// and does not mark the proxy it was relayed to down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_still_arriving_are_relayed_to_the_owner_fail_over_whole_and_a_failed_source_stores_nothing() -> Result<()>
{
    let cut = CutStore::start().await?;
    cut.toxi.set_down("store", true).await?;
    let (p1, p2, l1, l2, disc) = cut.two_linked_proxies().await?;
    let CutStore { minio, toxi, .. } = cut;
    let client = start_client(fast_config(&disc)).await?;
    let nodes = [rendezvous::Node { address: &l1, weight: 1 }, rendezvous::Node { address: &l2, weight: 1 }];
    let owned_by_p1 = |prefix: &str| {
        let name = (0..).map(|i| format!("{prefix}/{i}")).find(|k| rendezvous::owner("vol1", k, &nodes) == Some(0));
        name.unwrap()
    };
    let data = Bytes::from((0..3u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect::<Vec<u8>>());
    let half = data.len() / 2;
    // A write of `name` whose bytes are still to be fed, under way.
    let start_put = |name: &str| {
        let (feed, arriving) = blockproxy::client::arriving(data.len() as u64);
        let (client, k) = (client.clone(), key(name));
        (feed, tokio::spawn(async move { client.put_object(&k, arriving, &Default::default(), &[]).await }))
    };
    // The relayed request reached p1: it reserves the declared length as the request starts.
    let p1_has_the_request = || {
        wait_until("p1 reserves the body before it has all arrived", Duration::from_secs(10), || async {
            let reserved = p1.metrics().await.map(|m| metric_sum(&m, "blockproxy_http_inflight_bytes"));
            reserved.is_ok_and(|r| r >= data.len() as f64)
        })
    };

    // Relayed: half the bytes fed, the owner already holds the request and its reservation.
    let name = owned_by_p1("relay");
    let (mut feed, put) = start_put(&name);
    feed.chunk(data.slice(..half)).await;
    p1_has_the_request().await?;
    feed.chunk(data.slice(half..)).await;
    feed.finish(data.clone());
    let written = put.await??;
    assert_eq!(p1.get_direct(&name).await?, Some((data.to_vec(), written.version)), "the owner holds it");

    // The owner cut: the relay fails to connect, and the next proxy gets the bytes whole.
    toxi.set_down("l1", true).await?;
    let name = owned_by_p1("failover");
    let (mut feed, arriving) = blockproxy::client::arriving(data.len() as u64);
    let feeding = {
        let data = data.clone();
        tokio::spawn(async move {
            feed.chunk(data.slice(..half)).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            feed.chunk(data.slice(half..)).await;
            feed.finish(data);
        })
    };
    let written = client.put_object(&key(&name), arriving, &Default::default(), &[]).await?;
    feeding.await?;
    assert_eq!(p2.get_direct(&name).await?, Some((data.to_vec(), written.version)), "the next proxy holds it");
    toxi.set_down("l1", false).await?;
    wait_until("the client sees p1 back", Duration::from_secs(10), || async {
        client.status().groups[0].proxies.iter().all(|p| p.up)
    })
    .await?;

    // The source fails half-way: an error, nothing stored, and the owner is still up. (The
    // store back up, so that a proxy can tell a missing key from an unreachable store.)
    toxi.set_down("store", false).await?;
    let name = owned_by_p1("failed");
    let (mut feed, put) = start_put(&name);
    feed.chunk(data.slice(..half)).await;
    p1_has_the_request().await?;
    drop(feed);
    let err = put.await?.expect_err("a write whose source failed");
    assert!(err.to_string().contains("nothing was stored"), "{err}");
    assert_eq!(p1.get_direct(&name).await?, None);
    assert_eq!(p2.get_direct(&name).await?, None);
    assert_eq!(in_minio(&minio, &name).await?, None);
    assert!(client.status().groups[0].proxies.iter().all(|p| p.up), "a failed source is not the proxy's fault");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_proxy_serves_its_dirty_blocks_but_takes_no_new_writes() -> Result<()> {
    // The store is cut for the whole drain: what the draining proxy holds is only on its disk.
    let CutStore { minio, toxi, root, volumes, store_ep } = CutStore::start().await?;
    let admin = root.path().join("admin-token");
    std::fs::write(&admin, "admin-s3cr3t")?;
    let admin_flag = format!("--admin-token-file={}", admin.display());
    let p1 = Proxy::start_with_args("p1", root.path(), &volumes, &store_ep, &minio, "2Gi", &[&admin_flag]).await?;
    let p2 = Proxy::start_with_args("p2", root.path(), &volumes, &store_ep, &minio, "2Gi", &[&admin_flag]).await?;
    let (a1, a2) = (p1.addr.to_string(), p2.addr.to_string());
    let disc = root.path().join("discovery.json");
    let mut doc =
        discovery(minio.bucket(), None, &[GroupSpec { name: "g".into(), addresses: vec![a1.clone(), a2.clone()] }]);
    write_discovery(&disc, &doc)?;
    let writer = start_client(fast_config(&disc)).await?;
    let nodes = [rendezvous::Node { address: &a1, weight: 1 }, rendezvous::Node { address: &a2, weight: 1 }];
    let owned_by_p1: Vec<String> =
        (0..).map(|i| format!("d/{i}")).filter(|k| rendezvous::owner("vol1", k, &nodes) == Some(0)).take(2).collect();
    let (old, new) = (&owned_by_p1[0], &owned_by_p1[1]);

    toxi.set_down("store", true).await?;
    let v1 = writer.put(&key(old), Bytes::from_static(b"dirty on p1")).await?;
    assert_eq!(p1.get_direct(old).await?, Some((b"dirty on p1".to_vec(), v1)));

    // p1 drains (it refuses writes from now on) and the operator publishes it as draining.
    let drain = reqwest::Client::new()
        .post(format!("http://{a1}{}", blockproxy::protocol::DRAIN_PATH))
        .bearer_auth("admin-s3cr3t")
        .send()
        .await?;
    assert_eq!(drain.status(), reqwest::StatusCode::ACCEPTED);
    doc.groups[0].endpoints[0].draining = true;
    write_discovery(&disc, &doc)?;
    let reader = start_client(fast_config(&disc)).await?;
    wait_until("the writer sees p1 draining", Duration::from_secs(10), || async {
        writer.status().groups[0].proxies.iter().any(|p| p.address == a1 && p.draining)
    })
    .await?;

    // Another client (no memory of the write) reads p1's dirty block while the store is cut.
    assert_eq!(
        reader.get(&key(old), None).await?.map(|f| (f.data, f.info.version)),
        Some((Bytes::from_static(b"dirty on p1"), v1))
    );

    // New writes of p1's keys go to p2, the next in rendezvous order, without trying p1 first.
    let unavailable_before = writer.metrics().render();
    let v2 = writer.put(&key(old), Bytes::from_static(b"newer on p2")).await?;
    writer.put(&key(new), Bytes::from_static(b"new on p2")).await?;
    assert_eq!(p2.get_direct(old).await?, Some((b"newer on p2".to_vec(), v2)));
    assert_eq!(p2.get_direct(new).await?.map(|(d, _)| d), Some(b"new on p2".to_vec()));
    assert_eq!(p1.get_direct(old).await?, Some((b"dirty on p1".to_vec(), v1)), "p1 took no write");
    let unavailable = |m: &str| -> Vec<String> {
        m.lines().filter(|l| l.contains(a1.as_str()) && l.contains("unavailable")).map(str::to_owned).collect()
    };
    assert_eq!(
        unavailable(&writer.metrics().render()),
        unavailable(&unavailable_before),
        "no write was sent to the draining proxy"
    );
    // Readers see the newer write, not p1's older dirty copy.
    assert_eq!(reader.get(&key(old), None).await?.map(|f| f.data), Some(Bytes::from_static(b"newer on p2")));
    assert_eq!(reader.get(&key(new), None).await?.map(|f| f.data), Some(Bytes::from_static(b"new on p2")));

    // The store comes back: everything lands there, at the newest version.
    toxi.set_down("store", false).await?;
    wait_until("MinIO holds the newest versions", Duration::from_secs(30), || async {
        in_minio(&minio, old).await.ok().flatten() == Some((b"newer on p2".to_vec(), v2))
            && in_minio(&minio, new).await.ok().flatten().is_some()
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_discovery_files_and_tokens_get_clear_errors() -> Result<()> {
    let root = tempfile::tempdir()?;
    let disc = root.path().join("discovery.json");
    std::fs::write(&disc, "{ this is not json")?;
    let err = start_client(fast_config(&disc)).await.err().expect("malformed discovery must fail at start").to_string();
    assert!(err.contains("not a valid discovery document"), "{err}");
    std::fs::write(&disc, r#"{"volumeId":"other","store":{"bucket":"b"},"groups":[]}"#)?;
    let err = start_client(fast_config(&disc)).await.err().unwrap().to_string();
    assert!(err.contains("this sidecar serves"), "{err}");

    // The sidecar binary: a missing token file is a usage error, not a panic.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_blockproxy-mount"))
        .args(["--volume-id", "vol1", "--discovery-file"])
        .arg(&disc)
        .args(["--token-file", "/nonexistent/token", "--listen", "127.0.0.1:0"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("token file") && !stderr.contains("panicked"), "{stderr}");

    // A wrong token: the proxy refuses it and the client says so (no retry storm, no panic).
    let minio = Minio::start().await?;
    let volumes = write_volumes_file(root.path(), minio.bucket())?;
    let p = Proxy::start("p", root.path(), &volumes, &minio.endpoint(), &minio).await?;
    write_discovery(
        &disc,
        &discovery(minio.bucket(), None, &[GroupSpec { name: "g".into(), addresses: vec![p.addr.to_string()] }]),
    )?;
    let mut cfg = fast_config(&disc);
    cfg.token = "wrong".into();
    let client = start_client(cfg).await?;
    let err = client.put(&key("x"), Bytes::from_static(b"x")).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");

    // Malformed file while running: the last good configuration stays in use.
    let good = start_client(fast_config(&disc)).await?;
    std::fs::write(&disc, "garbage")?;
    wait_until("the bad file is noticed", Duration::from_secs(5), || async {
        good.metrics().render().contains("blockproxy_client_discovery_errors_total 1")
    })
    .await?;
    good.put(&key("still-works"), Bytes::from_static(b"ok")).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_trusts_the_groups_ca_bundle_over_tls() -> Result<()> {
    let minio = Minio::start().await?;
    let root = tempfile::tempdir()?;
    let volumes = write_volumes_file(root.path(), minio.bucket())?;
    let p = Proxy::start_with("tls", root.path(), &volumes, &minio.endpoint(), &minio, true).await?;
    let ca = std::fs::read_to_string(p.dir.join("cache/tls/selfsigned.crt"))?;
    let disc = root.path().join("discovery.json");
    let mut doc =
        discovery(minio.bucket(), None, &[GroupSpec { name: "g".into(), addresses: vec![p.addr.to_string()] }]);
    doc.groups[0].scheme = "https".into();
    doc.groups[0].ca_bundle = Some(ca);
    write_discovery(&disc, &doc)?;
    let client = start_client(fast_config(&disc)).await?;
    assert_eq!(client.status().chosen_group.as_deref(), Some("g"), "{:?}", client.status());
    client.put(&key("tls/1"), Bytes::from_static(b"over tls")).await?;
    assert_eq!(client.get(&key("tls/1"), Some("bytes=5-7")).await?.unwrap().data.as_ref(), b"tls");
    // Bytes still arriving are relayed over HTTP/2 (ALPN) too, their checksum in a trailer
    // (ADR 0022), on the first attempt: no attempt fails.
    let relayed = Bytes::from(vec![9u8; 300 << 10]);
    let (mut feed, arriving) = blockproxy::client::arriving(relayed.len() as u64);
    let feeding = {
        let relayed = relayed.clone();
        tokio::spawn(async move {
            for piece in relayed.chunks(64 << 10) {
                feed.chunk(Bytes::copy_from_slice(piece)).await;
            }
            feed.finish(relayed);
        })
    };
    client.put_object(&key("tls/relayed"), arriving, &Default::default(), &[]).await?;
    feeding.await?;
    assert_eq!(client.get(&key("tls/relayed"), None).await?.unwrap().data, relayed);
    assert_eq!(metric_sum(&client.metrics().render(), "blockproxy_client_proxy_errors_total"), 0.0);

    // Without the CA bundle the proxy's certificate is not trusted: no group is usable.
    doc.groups[0].ca_bundle = None;
    write_discovery(&disc, &doc)?;
    let untrusting = start_client(fast_config(&disc)).await?;
    assert_eq!(untrusting.status().chosen_group, None);
    assert!(untrusting.put(&key("tls/2"), Bytes::from_static(b"x")).await.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_without_store_credentials_goes_through_a_proxy() -> Result<()> {
    let minio = Minio::start().await?;
    let root = tempfile::tempdir()?;
    let volumes = write_volumes_file(root.path(), minio.bucket())?;
    let p1 = Proxy::start("l1", root.path(), &volumes, &minio.endpoint(), &minio).await?;
    let p2 = Proxy::start("l2", root.path(), &volumes, &minio.endpoint(), &minio).await?;
    let disc = root.path().join("discovery.json");
    let addresses = vec![p1.addr.to_string(), p2.addr.to_string()];
    write_discovery(&disc, &discovery(minio.bucket(), None, &[GroupSpec { name: "g".into(), addresses }]))?;
    let cfg = fast_config(&disc);
    assert!(cfg.direct_store.is_none(), "this client has no store credentials");
    let client = start_client(cfg).await?;
    for i in 0..6 {
        client.put(&key(&format!("ls/{i}")), Bytes::from(format!("object {i}"))).await?;
    }
    client.delete(&key("ls/0")).await?;
    // Flushed or not, every acknowledged object is listed once and the deleted one is not.
    for _ in 0..2 {
        let listed: Vec<String> = client.list("ls/").await?.into_iter().map(|e| e.key).collect();
        assert_eq!(listed, (1..6).map(|i| format!("ls/{i}")).collect::<Vec<_>>());
        wait_until("flushed", Duration::from_secs(20), || async {
            in_minio(&minio, "ls/5").await.ok().flatten().is_some()
                && in_minio(&minio, "ls/0").await.ok().flatten().is_none()
        })
        .await?;
    }
    Ok(())
}

/// A listing merges the store's page with the proxies' unflushed writes. A write or delete that
/// is flushed between the two reads must still show: the proxy is asked first, then the store.
/// Here the client reads the store directly and at once, while its requests reach the proxy a
/// second late and the proxy's flushes take a few hundred milliseconds: each flush then completes
/// after the store is read but before the proxy is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_shows_writes_and_deletes_that_are_flushed_while_it_is_taken() -> Result<()> {
    let CutStore { minio, toxi, root, volumes, store_ep } = CutStore::start().await?;
    toxi.add_latency("store", 150, 0).await?;
    let p = Proxy::start("l1", root.path(), &volumes, &store_ep, &minio).await?;
    let to_proxy = link(&toxi, "l1", p.addr).await?;
    toxi.add_request_latency("l1", 1000).await?;
    let disc = root.path().join("discovery.json");
    write_discovery(
        &disc,
        &discovery(minio.bucket(), None, &[GroupSpec { name: "g".into(), addresses: vec![to_proxy] }]),
    )?;
    let mut cfg = fast_config(&disc);
    cfg.probe_timeout = Duration::from_secs(3);
    cfg.direct_store = Some(arc_store(minio_store(&minio).await));
    let client = start_client(cfg).await?;
    wait_until("the client uses the proxy", Duration::from_secs(30), || async {
        client.status().chosen_group.is_some()
    })
    .await?;

    let mut want: Vec<String> = Vec::new();
    for i in 0..3 {
        let k = format!("race/{i}");
        client.put(&key(&k), Bytes::from(format!("object {i}"))).await?;
        want.push(k);
        let listed: Vec<String> = client.list("race/").await?.into_iter().map(|e| e.key).collect();
        assert_eq!(listed, want, "listed right after writing race/{i}");
    }
    for i in 0..3 {
        client.delete(&key(&format!("race/{i}"))).await?;
        want.remove(0);
        let listed: Vec<String> = client.list("race/").await?.into_iter().map(|e| e.key).collect();
        assert_eq!(listed, want, "listed right after deleting race/{i}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_verifies_proxies_against_the_groups_server_name_not_their_ip() -> Result<()> {
    let minio = Minio::start().await?;
    let root = tempfile::tempdir()?;
    let volumes = write_volumes_file(root.path(), minio.bucket())?;
    // Like the operator: a CA and one certificate for the group's Service name, not for Pod IPs.
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let key_pair = rcgen::KeyPair::generate()?;
    let cert =
        rcgen::CertificateParams::new(vec!["pg-eu.blockproxy-system.svc".to_string()])?.signed_by(&key_pair, &ca)?;
    let (cert_path, key_path) = (root.path().join("tls.crt"), root.path().join("tls.key"));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key_pair.serialize_pem())?;
    let p = Proxy::start_with_tls_files("sn", root.path(), &volumes, &minio.endpoint(), &minio, &cert_path, &key_path)
        .await?;

    let disc = root.path().join("discovery.json");
    let mut doc =
        discovery(minio.bucket(), None, &[GroupSpec { name: "g".into(), addresses: vec![p.addr.to_string()] }]);
    doc.groups[0].scheme = "https".into();
    doc.groups[0].ca_bundle = Some(ca.pem());
    // Dialled by IP, the certificate does not match: no group is usable.
    write_discovery(&disc, &doc)?;
    let by_ip = start_client(fast_config(&disc)).await?;
    assert_eq!(by_ip.status().chosen_group, None, "the IP is not in the certificate");
    // With the group's server name published, the same certificate is accepted.
    doc.groups[0].server_name = Some("pg-eu.blockproxy-system.svc".into());
    write_discovery(&disc, &doc)?;
    let by_name = start_client(fast_config(&disc)).await?;
    assert_eq!(by_name.status().chosen_group.as_deref(), Some("g"), "{:?}", by_name.status());
    by_name.put(&key("sn/1"), Bytes::from_static(b"verified by name")).await?;
    assert_eq!(by_name.get(&key("sn/1"), None).await?.unwrap().data.as_ref(), b"verified by name");
    // A wrong name is refused.
    doc.groups[0].server_name = Some("someone-else.svc".into());
    write_discovery(&disc, &doc)?;
    let wrong = start_client(fast_config(&disc)).await?;
    assert_eq!(wrong.status().chosen_group, None);
    Ok(())
}

/// MinIO, one proxy on it, and a discovery file for that proxy with the smallest block size (so
/// that a few KiB make a large object). Keep the first three alive.
async fn one_proxy_with_small_blocks() -> Result<(Minio, tempfile::TempDir, Proxy, PathBuf)> {
    one_proxy_with_blocks_of(blockproxy::protocol::MIN_BLOCK_SIZE).await
}

async fn one_proxy_with_blocks_of(block_size: u64) -> Result<(Minio, tempfile::TempDir, Proxy, PathBuf)> {
    let minio = Minio::start().await?;
    let root = tempfile::tempdir()?;
    let volumes = write_volumes_file(root.path(), minio.bucket())?;
    let p = Proxy::start("s1", root.path(), &volumes, &minio.endpoint(), &minio).await?;
    let disc = root.path().join("discovery.json");
    let mut doc =
        discovery(minio.bucket(), None, &[GroupSpec { name: "g".into(), addresses: vec![p.addr.to_string()] }]);
    doc.block_size = block_size;
    write_discovery(&disc, &doc)?;
    Ok((minio, root, p, disc))
}

/// Reads of an object of at most one block skip the HEAD once the client has seen the key that
/// small (one GET instead of two round trips), and stay right when the key then grows past a
/// block, shrinks to nothing or is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_objects_are_read_in_one_request_and_a_grown_one_still_reads_right() -> Result<()> {
    use futures::TryStreamExt;
    let (_minio, _root, _proxy, disc) = one_proxy_with_small_blocks().await?;
    let bs = blockproxy::protocol::MIN_BLOCK_SIZE;
    let client = start_client(fast_config(&disc)).await?;
    let heads = || client.metrics().requests_total.with_label_values(&["head", "proxy"]).get();
    let read = |range: Option<&'static str>| {
        let client = client.clone();
        async move {
            let Some(r) = client.read_object(&key("small/a"), range).await? else { return anyhow::Ok(None) };
            let body: Vec<Bytes> = r.body.try_collect().await?;
            anyhow::Ok(Some((r.info.version, body.concat())))
        }
    };

    let v1 = client.put(&key("small/a"), Bytes::from_static(b"hello, small world")).await?;
    assert_eq!(read(None).await?, Some((v1, b"hello, small world".to_vec())));
    let before = heads();
    assert_eq!(read(None).await?, Some((v1, b"hello, small world".to_vec())));
    assert_eq!(read(Some("bytes=7-11")).await?, Some((v1, b"small".to_vec())));
    assert_eq!(heads(), before, "a key known to be small is read without a HEAD");

    // Grown past one block: read whole, in blocks pinned to the new version.
    let big: Vec<u8> = (0..(3 * bs + 123)).map(|i| (i % 251) as u8).collect();
    let v2 = client.put(&key("small/a"), Bytes::from(big.clone())).await?;
    assert_eq!(read(None).await?, Some((v2, big.clone())));
    let r = (bs + 5) as usize..(2 * bs + 9) as usize;
    let range: &'static str = Box::leak(format!("bytes={}-{}", r.start, r.end - 1).into_boxed_str());
    assert_eq!(read(Some(range)).await?, Some((v2, big[r].to_vec())));

    // Small again, then empty, then gone.
    let v3 = client.put(&key("small/a"), Bytes::from_static(b"tiny")).await?;
    assert_eq!(read(None).await?, Some((v3, b"tiny".to_vec())));
    assert_eq!(read(None).await?, Some((v3, b"tiny".to_vec())));
    let v4 = client.put(&key("small/a"), Bytes::new()).await?;
    assert_eq!(read(None).await?, Some((v4, Vec::new())));
    let v5 = client.put(&key("small/a"), Bytes::from_static(b"again")).await?;
    assert_eq!(read(None).await?, Some((v5, b"again".to_vec())));
    client.delete(&key("small/a")).await?;
    assert_eq!(read(None).await?, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_read_asks_no_head_and_reads_a_large_objects_first_block_once() -> Result<()> {
    use futures::TryStreamExt;
    let (_minio, _root, _proxy, disc) = one_proxy_with_small_blocks().await?;
    let bs = blockproxy::protocol::MIN_BLOCK_SIZE;
    let big: Vec<u8> = (0..(3 * bs + 77)).map(|i| (i % 239) as u8).collect();
    {
        // Written by one client; read below by another that has never seen the keys.
        let writer = start_client(fast_config(&disc)).await?;
        writer.put(&key("first/small"), Bytes::from_static(b"a small object")).await?;
        writer.put(&key("first/big"), Bytes::from(big.clone())).await?;
    }
    let client = start_client(fast_config(&disc)).await?;
    let count = |op: &str| client.metrics().requests_total.with_label_values(&[op, "proxy"]).get();
    let read = |k: &'static str, range: Option<String>| {
        let client = client.clone();
        async move {
            let r = client.read_object(&key(k), range.as_deref()).await?.ok_or_else(|| anyhow::anyhow!("missing"))?;
            let body: Vec<Bytes> = r.body.try_collect().await?;
            anyhow::Ok(body.concat())
        }
    };

    assert_eq!(read("first/small", None).await?, b"a small object");
    assert_eq!((count("head"), count("get")), (0, 1), "a small object: one GET, no HEAD");

    // Read in block-sized requests (from the home while unflushed, else striped): four blocks.
    let reads = || count("get") + count("get_block");
    assert_eq!(read("first/big", None).await?, big);
    assert_eq!(count("head"), 0, "a large object read from its start: no HEAD either");
    assert_eq!(reads(), 1 + 4, "its first block came with the first GET and was not read again");

    // A read that starts past the first block does not fetch that block: it asks a HEAD.
    let r = (2 * bs + 5) as usize..(3 * bs + 10) as usize;
    assert_eq!(read("first/big", Some(format!("bytes={}-{}", r.start, r.end - 1))).await?, big[r].to_vec());
    assert_eq!(count("head"), 1);
    assert_eq!(reads(), 1 + 4 + 2, "two block-sized requests, none of them for the first block");
    Ok(())
}

/// Reads in progress, each with the bytes taken from it so far.
type Reads = Vec<(futures::stream::BoxStream<'static, Result<Bytes, blockproxy::client::ClientError>>, Vec<u8>)>;

/// Writes `data` as `k` and waits until it is flushed, so that reads are striped over blocks.
async fn put_flushed(
    client: &blockproxy::client::Client,
    k: &blockproxy::protocol::BlockKey,
    data: &[u8],
) -> Result<()> {
    client.put(k, Bytes::from(data.to_vec())).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while client.head(k).await?.and_then(|i| i.store_etag).is_none() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the object was not flushed within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Opens `n` reads of `k`, and has each take bytes until it holds more than `first` of them
/// (the first block and some of the second), then stop.
async fn stalled_reads(
    client: &blockproxy::client::Client,
    k: &blockproxy::protocol::BlockKey,
    n: usize,
    first: u64,
) -> Result<Reads> {
    use futures::StreamExt;
    let mut reads = Vec::new();
    for _ in 0..n {
        let r = client.read_object(k, None).await?.ok_or_else(|| anyhow::anyhow!("missing"))?;
        reads.push((r.body, Vec::new()));
    }
    let start_each = async {
        for (body, got) in &mut reads {
            while got.len() as u64 <= first {
                got.extend_from_slice(&body.next().await.ok_or_else(|| anyhow::anyhow!("ended early"))??);
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(60), start_each)
        .await
        .map_err(|_| anyhow::anyhow!("a reader never got into its second block: the read budget deadlocked it"))??;
    Ok(reads)
}

/// Polls `count` until it stops changing; returns its last value.
async fn until_settled<F, Fut>(count: F) -> Result<f64>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<f64>>,
{
    let mut seen = count().await?;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = count().await?;
        if now == seen {
            return Ok(seen);
        }
        seen = now;
    }
}

/// One task reads every read in turn, a chunk at a time, to the end; each must equal `want`.
async fn read_in_turn(mut reads: Reads, want: &[u8]) -> Result<()> {
    use futures::StreamExt;
    let in_turn = async {
        let mut open = reads.len();
        while open > 0 {
            open = 0;
            for (body, got) in &mut reads {
                if let Some(chunk) = body.next().await {
                    got.extend_from_slice(&chunk?);
                    open += 1;
                }
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(60), in_turn)
        .await
        .map_err(|_| anyhow::anyhow!("reads read in turn did not finish: the read budget deadlocked them"))??;
    for (_, got) in &reads {
        anyhow::ensure!(got == want, "a read returned other bytes ({} of {})", got.len(), want.len());
    }
    Ok(())
}

/// Stalled large reads, with blocks larger than a piece and the read budget full: each read in
/// progress holds at most one piece outside the budget (ADR 0019), not a whole block, and they
/// all still finish, read in turn by one task, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reads_hold_a_piece_each_beyond_a_full_read_budget_not_a_block() -> Result<()> {
    const READS: usize = 8;
    const PIECE: u64 = blockproxy::client::READ_PIECE;
    let bs = 4 * PIECE;
    let (_minio, _root, proxy, disc) = one_proxy_with_blocks_of(bs).await?;
    let big: Vec<u8> = (0..(3 * bs)).map(|i| (i % 251) as u8).collect();
    let k = key("pieces/big");
    let mut cfg = fast_config(&disc);
    cfg.read_ahead_bytes = bs;
    let client = start_client(cfg).await?;
    put_flushed(&client, &k, &big).await?;
    let served = || async { anyhow::Ok(metric_sum(&proxy.metrics().await?, "blockproxy_cache_served_bytes_total")) };
    let before = served().await?;

    let reads = stalled_reads(&client, &k, READS, bs).await?;
    let seen = until_settled(served).await?;
    // What the proxy sent and no reader has taken yet is what the client holds.
    let taken: u64 = reads.iter().map(|(_, got)| got.len() as u64).sum();
    let held = (seen - before) as u64 - taken;
    let bound = bs + READS as u64 * PIECE;
    println!("{READS} stalled reads hold {held} bytes (budget {bs}, pieces of {PIECE}); bound {bound}");
    // Without pieces each read held its second block whole: about READS x bs.
    assert!(held <= bound, "{READS} stalled reads hold {held} bytes, more than the budget and a piece each ({bound})");
    let m = || client.metrics();
    assert!(m().read_pieces_total.get() > 0, "no block was read in pieces with the budget full");

    read_in_turn(reads, &big).await?;
    assert_eq!(m().read_ahead_bytes.get(), 0, "every block's bytes went back to the budget");
    Ok(())
}

/// A read of a key last seen small takes that size of the read budget, not a whole block: a
/// sidecar serving many small objects at once left none of the budget to large reads beside
/// them, whose blocks then moved in pieces (ADR 0019).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_a_key_seen_small_takes_its_size_of_the_read_budget_not_a_block() -> Result<()> {
    use futures::TryStreamExt;
    const READS: usize = 4;
    let bs = 4 * blockproxy::client::READ_PIECE;
    let (_minio, _root, _proxy, disc) = one_proxy_with_blocks_of(bs).await?;
    let mut cfg = fast_config(&disc);
    cfg.read_ahead_bytes = bs;
    let client = start_client(cfg).await?;
    let small: Vec<u8> = (0..(64u32 << 10)).map(|i| (i % 251) as u8).collect();
    let k = key("small/one");
    client.put(&k, Bytes::from(small.clone())).await?;
    // The first read learns that the key is small.
    let first = client.read_object(&k, None).await?.expect("written");
    anyhow::ensure!(
        first.body.try_collect::<Vec<Bytes>>().await?.concat() == small,
        "the first read returned other bytes"
    );
    let m = || client.metrics();
    let pieces = m().read_pieces_total.get();

    // Reads opened and not yet sent on hold their bytes of the budget.
    let mut open = Vec::new();
    for _ in 0..READS {
        open.push(client.read_object(&k, None).await?.expect("written"));
    }
    let held = m().read_ahead_bytes.get() as u64;
    assert_eq!(held, READS as u64 * small.len() as u64, "{READS} open reads of a small key hold {held} bytes");
    assert_eq!(m().read_pieces_total.get(), pieces, "a small key's read found no block free and asked for a piece");
    for read in open {
        anyhow::ensure!(read.body.try_collect::<Vec<Bytes>>().await?.concat() == small, "a read returned other bytes");
    }
    assert_eq!(m().read_ahead_bytes.get(), 0, "every read gave its bytes back");
    Ok(())
}

/// Many large reads at once hold at most `read_ahead_bytes` in blocks fetched ahead of their
/// readers (ADR 0016), and readers that one task reads in turn, one chunk each, all finish: the
/// block a reader waits for never waits for the budget that the other readers' read-ahead holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_reads_hold_at_most_the_read_ahead_budget_and_all_finish() -> Result<()> {
    const READS: usize = 8;
    let (_minio, _root, _proxy, disc) = one_proxy_with_small_blocks().await?;
    let bs = blockproxy::protocol::MIN_BLOCK_SIZE;
    let big: Vec<u8> = (0..(12 * bs)).map(|i| (i % 251) as u8).collect();
    let k = key("read-ahead/big");
    let mut cfg = fast_config(&disc);
    cfg.read_ahead_bytes = bs;
    let client = start_client(cfg).await?;
    // Flushed, so that reads are striped over blocks with the full read-ahead (4 blocks).
    put_flushed(&client, &k, &big).await?;

    let m = || client.metrics();
    let fetches = || async {
        anyhow::Ok(
            (m().requests_total.with_label_values(&["get", "proxy"]).get()
                + m().requests_total.with_label_values(&["get_block", "proxy"]).get()) as f64,
        )
    };
    // Every reader takes the first block and a byte of the second, then stops reading.
    let reads = stalled_reads(&client, &k, READS, bs).await?;
    // Until the read-ahead stops fetching.
    let seen = until_settled(fetches).await? as u64;
    // Per read: the GET of its first block and the block being sent; read-ahead beyond those
    // only within the budget (one block). Without the bound: 1 + 5 blocks per read.
    assert!(
        seen <= (READS as u64) * 2 + 1,
        "{seen} blocks fetched by {READS} stalled reads with a budget of one block"
    );
    assert!(m().read_ahead_bytes.get() as u64 <= bs, "read-ahead held {} bytes", m().read_ahead_bytes.get());
    assert!(m().read_ahead_waits_total.get() > 0, "the budget held read-ahead back");

    // One task reads all of them in turn, a chunk at a time.
    read_in_turn(reads, &big).await?;
    assert_eq!(m().read_ahead_bytes.get(), 0, "every block's bytes went back to the budget");
    Ok(())
}

/// The client checks every whole block it reads against the checksum the proxy sends (ADR 0001,
/// item 6; ADR 0024): a cached block that rots after the proxy's own checked first read is served
/// by the proxy as it is, and refused by the client, in a one-request read of a small object and
/// in a large object's block reads alike (the home answers those from its whole-object file). It
/// never hands out the rotten bytes. A large object that rots before its first block read is
/// caught by the home's own pass over its file, dropped, and read from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_rotting_after_the_proxys_checked_read_is_refused_by_the_client() -> Result<()> {
    use futures::TryStreamExt;
    let (_minio, _root, proxy, disc) = one_proxy_with_small_blocks().await?;
    let bs = blockproxy::protocol::MIN_BLOCK_SIZE as usize;
    let client = start_client(fast_config(&disc)).await?;
    let read = async |k: &str| -> Result<Vec<u8>> {
        let r = client.read_object(&key(k), None).await?.ok_or_else(|| anyhow::anyhow!("{k} not found"))?;
        let body: Vec<Bytes> = r.body.try_collect().await?;
        Ok(body.concat())
    };
    let small = b"bytes that will rot on the proxy's disk".to_vec();
    let large: Vec<u8> = (0..(3 * bs + 123)).map(|i| (i % 251) as u8).collect();
    let early: Vec<u8> = large.iter().map(|b| b.wrapping_add(1)).collect();
    for (k, data) in [("rot/small", &small), ("rot/large", &large), ("rot/early", &early)] {
        put_flushed(&client, &key(k), data).await?;
    }
    for (k, data) in [("rot/small", &small), ("rot/large", &large)] {
        assert_eq!(&read(k).await?, data, "{k}: the proxy's checked first read");
    }
    let clean = proxy.dir.join("cache").join("clean");
    let files = files_under(&clean);
    assert_eq!(files.len(), 3, "each object is cached whole, in one file: {files:?}");
    for f in &files {
        flip_last_byte(f)?;
    }
    for (k, data) in [("rot/small", &small), ("rot/large", &large)] {
        match read(k).await {
            Ok(got) => assert_eq!(&got, data, "{k}: the client handed out rotten bytes"),
            Err(e) => assert!(format!("{e:#}").contains("failed verification"), "{k}: {e:#}"),
        }
    }
    assert_eq!(read("rot/early").await?, early, "rot before the first block read: read from the store");
    let corrupt = metric_sum(&proxy.metrics().await?, "blockproxy_cache_corrupt_blocks_total");
    assert!(corrupt >= 1.0, "the home dropped its rotten copy: {corrupt}");
    Ok(())
}
