//! Operating the operator: restarts, leader election, missing CRDs.

mod common;

use blockproxy_operator::crd::ProxyGroup;
use blockproxy_operator::metrics::Metrics;
use blockproxy_operator::run::{RunError, Settings};
use blockproxy_testenv::ControlPlane;
use blockproxy_testenv::anyhow::Result;
use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret, Service};
use kube::Api;
use kube::api::ListParams;

async fn owned_counts(client: &kube::Client, group: &str) -> Result<(usize, usize, usize, usize)> {
    let lp = ListParams::default().labels(&format!("blockproxy.io/proxy-group={group}"));
    Ok((
        group_pods(client, group).await?.len(),
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), NS).list(&lp).await?.items.len(),
        Api::<Secret>::namespaced(client.clone(), NS).list(&lp).await?.items.len(),
        Api::<Service>::namespaced(client.clone(), NS).list(&lp).await?.items.len(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_restarted_mid_reconcile_converges_without_duplicates() -> Result<()> {
    let cp = control_plane().await?;
    let client = cp.client();
    nvme_cluster(&client, "r", "local-nvme", 4, 1).await?;
    create_group(&client, "g", group_spec("local-nvme", 8443, &[])?).await?;
    // Crash the operator repeatedly, as soon as it has created anything, then let it finish.
    for round in 0..3 {
        let op = Operator::start(client.clone(), "op-0", false);
        wait("the operator to start acting", || async {
            let (pods, pvcs, secrets, _) = owned_counts(&client, "g").await?;
            ensure(pods + pvcs + secrets > round, || "nothing yet".into())
        })
        .await?;
        op.kill().await;
    }
    let op = Operator::start(client.clone(), "op-1", false);
    wait("convergence", || async {
        let counts = owned_counts(&client, "g").await?;
        // 4 pods, 4 PVCs, volumes + admin Secrets (TLS is off in the fixture), 1 Service.
        ensure(counts == (4, 4, 2, 1), || format!("{counts:?}"))
    })
    .await?;
    // The admin token survived the crashes unchanged (it is generated once, then read back).
    let token = |s: Secret| s.data.unwrap()["token"].0.clone();
    let before = token(Api::<Secret>::namespaced(client.clone(), NS).get("g-admin").await?);
    let status = wait("status", || async {
        let st = Api::<ProxyGroup>::all(client.clone()).get("g").await?.status.unwrap_or_default();
        ensure(st.desired_proxies == 4, || format!("{st:?}"))?;
        Ok(st)
    })
    .await?;
    assert_eq!(status.proxies.len(), 4);
    assert_eq!(token(Api::<Secret>::namespaced(client.clone(), NS).get("g-admin").await?), before);
    op.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_replicas_only_the_leader_reconciles() -> Result<()> {
    let cp = control_plane().await?;
    let client = cp.client();
    nvme_cluster(&client, "l", "local-nvme", 2, 0).await?;
    let a = Operator::start(client.clone(), "replica-a", true);
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    wait("replica-a to lead", || async {
        let holder = leases.get_opt("blockproxy-operator").await?.and_then(|l| l.spec?.holder_identity);
        ensure(holder.as_deref() == Some("replica-a"), || format!("holder {holder:?}"))
    })
    .await?;
    let b = Operator::start(client.clone(), "replica-b", true);
    create_group(&client, "one", group_spec("local-nvme", 8443, &[])?).await?;
    wait("the leader to create the proxies", || async {
        ensure(group_pods(&client, "one").await?.len() == 2, || "not yet".into())
    })
    .await?;
    assert!(a.reconciles() > 0);
    assert_eq!(b.reconciles(), 0, "the follower must not reconcile");
    assert_eq!(b.metrics.leader.get(), 0);
    assert_eq!(a.metrics.leader.get(), 1);

    // The leader stops gracefully and releases the Lease; the follower takes over and acts.
    a.stop().await?;
    wait("replica-b to lead", || async {
        let holder = leases.get_opt("blockproxy-operator").await?.and_then(|l| l.spec?.holder_identity);
        ensure(holder.as_deref() == Some("replica-b"), || format!("holder {holder:?}"))
    })
    .await?;
    create_group(&client, "two", group_spec("local-nvme", 9443, &[])?).await?;
    wait("the new leader to reconcile", || async {
        let st = Api::<ProxyGroup>::all(client.clone()).get("two").await?.status.unwrap_or_default();
        ensure(st.desired_proxies == 2 && b.reconciles() > 0, || format!("{st:?}"))
    })
    .await?;
    let lease = leases.get("blockproxy-operator").await?;
    assert_eq!(lease.spec.unwrap().lease_transitions, Some(1));
    b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_without_crds_exits_with_an_install_hint() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let settings = Settings { controllers: config("x"), lease: None, admin_addr: None, webhook: None };
    let err = blockproxy_operator::run::run(cp.client(), settings, Metrics::default(), std::future::pending())
        .await
        .expect_err("must refuse to run");
    assert!(matches!(err, RunError::CrdMissing(_)));
    let msg = err.to_string();
    assert!(msg.contains("proxygroups.blockproxy.io") && msg.contains("helm install"), "{msg}");
    Ok(())
}
