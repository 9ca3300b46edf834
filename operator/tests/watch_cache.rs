//! The operator reconciles from its watch caches: measured on a real API server with its own
//! request counter, not with a mock.

mod common;

use blockproxy_operator::crd::ProxyGroup;
use blockproxy_testenv::anyhow::{Context as _, Result};
use common::*;
use kube::Api;
use kube::api::{Patch, PatchParams};
use std::collections::BTreeMap;

/// The cluster-wide kinds the reconcilers used to LIST on every reconcile.
const WATCHED: [&str; 4] = ["nodes", "persistentvolumes", "proxygroups", "volumeproxygroups"];

/// LIST requests the API server has served so far, per resource of `WATCHED`, from its
/// `apiserver_request_total` metric (summed over response codes and clients).
async fn lists(client: &kube::Client) -> Result<BTreeMap<&'static str, f64>> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await.context("scraping the API server's metrics")?;
    let mut out: BTreeMap<&'static str, f64> = WATCHED.iter().map(|r| (*r, 0.0)).collect();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{") && l.contains("verb=\"LIST\"")) {
        let Some(resource) = WATCHED.iter().find(|r| line.contains(&format!("resource=\"{r}\""))) else { continue };
        let value: f64 = line.rsplit(' ').next().unwrap_or_default().parse().context("a metric value")?;
        *out.entry(resource).or_default() += value;
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciles_do_not_list_nodes_pvs_or_groups() -> Result<()> {
    let cp = control_plane().await?;
    let client = cp.client();
    nvme_cluster(&client, "w", "local-nvme", 3, 1).await?;
    create_group(&client, "g", group_spec("local-nvme", 8443, &["team-a"])?).await?;
    create_vpg(&client, "team-a", "vol1-g", "vol1", "g", "bucket").await?;
    // No resync within the test: only the changes below reconcile.
    let settings =
        blockproxy_operator::controller::Config { resync: std::time::Duration::from_secs(3600), ..config("op-0") };
    let op = Operator::start_with(client.clone(), settings, false);
    wait("the proxies", || async { ensure(group_pods(&client, "g").await?.len() == 3, || "not yet".into()) }).await?;
    // The watches' first LISTs are done (the proxies needed every store): from here on, none.
    let before = lists(&client).await?;
    assert!(WATCHED.iter().all(|r| before[r] >= 1.0), "the watches' own LISTs are counted: {before:?}");
    let groups: Api<ProxyGroup> = Api::all(client.clone());
    for i in 0..5 {
        let reconciles = op.reconciles();
        // A changed annotation reconciles the group, and through it the volume's association.
        let touch = serde_json::json!({"metadata": {"annotations": {"test/touch": i.to_string()}}});
        groups.patch("g", &PatchParams::default(), &Patch::Merge(&touch)).await?;
        wait("a reconcile", || async { ensure(op.reconciles() > reconciles, || "none yet".into()) }).await?;
    }
    // Every started reconcile has finished (its duration is observed at its end).
    wait("the reconciles to finish", || async {
        let done: u64 = ["proxygroup", "volumeproxygroup"]
            .iter()
            .map(|c| op.metrics.duration.with_label_values(&[c]).get_sample_count())
            .sum();
        ensure(done == op.reconciles(), || format!("{done} of {} finished", op.reconciles()))
    })
    .await?;
    let after = lists(&client).await?;
    assert_eq!(after, before, "LIST requests of the watched kinds during 5+ reconciles");
    op.stop().await?;
    Ok(())
}
