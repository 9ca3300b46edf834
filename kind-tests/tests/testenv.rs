//! Shows that each component of the test environment is the real thing, and that every test gets
//! its own instances, which are gone after the test.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_sdk_s3::primitives::ByteStream;
use blockproxy_testenv::{ControlPlane, Helm, Minio, Tool, Toxiproxy, eventually, tool_path};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::Client;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.to_owned()), ..Default::default() }
}

/// Whether something accepts TCP connections on `addr`.
async fn accepts_connections(addr: SocketAddr) -> bool {
    TcpStream::connect(addr).await.is_ok()
}

fn forbidden<T: std::fmt::Debug>(result: kube::Result<T>) -> bool {
    matches!(result, Err(kube::Error::Api(status)) if status.code == 403)
}

#[tokio::test]
async fn api_server_reports_its_version_stores_objects_and_stops_when_dropped() -> Result<()> {
    let plane = ControlPlane::start().await?;
    let client = plane.client();

    let version = client.apiserver_version().await?;
    assert_eq!((version.major.as_str(), version.minor.as_str()), ("1", "35"), "{version:?}");
    assert!(version.git_version.starts_with("v1.35."), "{}", version.git_version);

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&PostParams::default(), &Namespace { metadata: meta("made-by-test"), ..Default::default() })
        .await?;
    let read = namespaces.get("made-by-test").await?;
    assert_eq!(read.metadata.name.as_deref(), Some("made-by-test"));
    assert!(read.metadata.uid.is_some(), "the server assigned no uid");

    let kubeconfig = std::fs::read_to_string(plane.kubeconfig())?;
    assert!(kubeconfig.contains(&plane.url()), "{kubeconfig}");

    let addr = plane.addr();
    assert!(accepts_connections(addr).await);
    drop(plane);
    assert!(!accepts_connections(addr).await, "kube-apiserver still listens on {addr} after drop");
    Ok(())
}

#[tokio::test]
async fn installed_crds_are_established_and_serve_their_kind() -> Result<()> {
    let plane = ControlPlane::start().await?;
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("widgets.yaml"),
        r#"---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.testenv.blockproxy.io
spec:
  group: testenv.blockproxy.io
  names: {kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {size: {type: integer}}}
"#,
    )?;
    std::fs::write(dir.path().join("ignored.txt"), "not yaml")?;

    let names = plane.install_crds(dir.path()).await?;
    assert_eq!(names, vec!["widgets.testenv.blockproxy.io".to_owned()]);

    let gvk = kube::api::GroupVersionKind::gvk("testenv.blockproxy.io", "v1", "Widget");
    let resource = kube::api::ApiResource::from_gvk(&gvk);
    let widgets: Api<kube::api::DynamicObject> = Api::namespaced_with(plane.client(), "default", &resource);
    let widget: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "testenv.blockproxy.io/v1",
        "kind": "Widget",
        "metadata": {"name": "w1"},
        "spec": {"size": 3},
    }))?;
    widgets.create(&PostParams::default(), &widget).await?;
    assert_eq!(widgets.get("w1").await?.data["spec"]["size"], 3);
    Ok(())
}

#[tokio::test]
async fn service_account_client_gets_exactly_what_its_role_grants() -> Result<()> {
    let plane = ControlPlane::start().await?;
    let admin = plane.client();
    let restricted: Client = plane.client_for_service_account("granted", "reader").await?;

    // The ServiceAccount exists and is who the restricted client authenticates as.
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), "granted");
    accounts.get("reader").await?;

    let role = Role {
        metadata: meta("configmap-reader"),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".to_owned()]),
            verbs: vec!["get".to_owned(), "list".to_owned()],
            ..Default::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), "granted").create(&PostParams::default(), &role).await?;
    let binding = RoleBinding {
        metadata: meta("reader-reads-configmaps"),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: "configmap-reader".to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: "reader".to_owned(),
            namespace: Some("granted".to_owned()),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin.clone(), "granted").create(&PostParams::default(), &binding).await?;
    let other: Api<Namespace> = Api::all(admin.clone());
    other.create(&PostParams::default(), &Namespace { metadata: meta("not-granted"), ..Default::default() }).await?;

    // Granted: list configmaps in "granted" (RBAC caches, so allow for propagation).
    let configmaps: Api<ConfigMap> = Api::namespaced(restricted.clone(), "granted");
    eventually(WAIT, POLL, || async { configmaps.list(&ListParams::default()).await.context("list configmaps") })
        .await?;

    // Not granted: secrets in the same namespace, configmaps elsewhere, writing configmaps.
    let secrets: Api<Secret> = Api::namespaced(restricted.clone(), "granted");
    assert!(forbidden(secrets.list(&ListParams::default()).await), "listing secrets was allowed");
    let elsewhere: Api<ConfigMap> = Api::namespaced(restricted.clone(), "not-granted");
    assert!(forbidden(elsewhere.list(&ListParams::default()).await), "listing configmaps elsewhere was allowed");
    let cm = ConfigMap { metadata: meta("x"), ..Default::default() };
    assert!(forbidden(configmaps.create(&PostParams::default(), &cm).await), "creating a configmap was allowed");
    Ok(())
}

#[tokio::test]
async fn controllers_create_default_service_accounts_and_the_scheduler_reports_unschedulable_pods() -> Result<()> {
    let plane = ControlPlane::builder().with_controllers().start().await?;
    let client = plane.client();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &Namespace { metadata: meta("apps"), ..Default::default() })
        .await?;

    // kube-controller-manager's serviceaccount controller creates "default" in new namespaces.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "apps");
    eventually(WAIT, POLL, || async { accounts.get("default").await.context("get default SA") }).await?;

    // kube-scheduler finds no node for a pod (there are none) and says so on the pod.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "apps");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "example.invalid/none"}]},
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    eventually(WAIT, POLL, || async {
        let pod = pods.get("p").await?;
        let unschedulable =
            pod.status.and_then(|s| s.conditions).unwrap_or_default().iter().any(|c| {
                c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
            });
        if !unschedulable {
            bail!("pod not yet marked Unschedulable");
        }
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn minio_returns_a_4_mib_object_byte_identical_and_counts_the_requests() -> Result<()> {
    let minio = Minio::start().await?;
    let s3 = minio.s3_client();
    let mut body = vec![0u8; 4 << 20];
    rand::rng().fill_bytes(&mut body);

    s3.put_object()
        .bucket(minio.bucket())
        .key("volumes/v1/blocks/b0")
        .body(ByteStream::from(body.clone()))
        .send()
        .await?;
    let read = s3.get_object().bucket(minio.bucket()).key("volumes/v1/blocks/b0").send().await?;
    let read = read.body.collect().await?.into_bytes();
    assert_eq!(read.len(), body.len());
    assert!(read.as_ref() == body.as_slice(), "the object read back differs");

    let metrics = minio.metrics().await?;
    assert!(metrics.contains("minio_s3_requests_total"), "no request counter in:\n{metrics}");
    Ok(())
}

#[tokio::test]
async fn every_minio_has_its_own_credentials_and_stops_listening_when_dropped() -> Result<()> {
    let (a, b) = tokio::try_join!(Minio::start(), Minio::start())?;
    assert_ne!(a.addr(), b.addr());
    assert_ne!(a.access_key(), b.access_key());
    assert_ne!(a.secret_key(), b.secret_key());

    // b's credentials do not open a.
    let wrong = b.s3_client_for(&a.endpoint());
    assert!(wrong.list_objects_v2().bucket(a.bucket()).send().await.is_err());

    let addr = a.addr();
    assert!(accepts_connections(addr).await);
    drop(a);
    assert!(!accepts_connections(addr).await, "minio still listens on {addr} after drop");
    Ok(())
}

/// A TCP server that answers every connection with `payload` and closes it.
async fn serve_bytes(payload: &'static [u8]) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = socket.write_all(payload).await;
            });
        }
    });
    Ok(addr)
}

/// A TCP server that answers every connection with `hello` and closes it.
async fn hello_server() -> Result<SocketAddr> {
    serve_bytes(b"hello").await
}

/// Connects to `addr` and reads everything, returning the bytes and the time it took.
async fn fetch(addr: SocketAddr) -> Result<(Vec<u8>, Duration)> {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out)).await??;
    Ok((out, start.elapsed()))
}

#[tokio::test]
async fn toxiproxy_latency_toxic_delays_responses_by_at_least_100_ms() -> Result<()> {
    let toxiproxy = Toxiproxy::start().await?;
    let upstream = hello_server().await?;
    let listen = toxiproxy.create_proxy("hello", &upstream.to_string()).await?;

    let (body, _) = fetch(listen).await?;
    assert_eq!(body, b"hello");

    let toxic = toxiproxy.add_latency("hello", 100, 0).await?;
    let (body, took) = fetch(listen).await?;
    assert_eq!(body, b"hello");
    assert!(took >= Duration::from_millis(100), "took only {took:?} through a 100 ms toxic");
    toxiproxy.remove_toxic("hello", &toxic).await?;

    // reset removes every toxic: a 5 s latency no longer applies.
    toxiproxy.add_latency("hello", 5_000, 0).await?;
    toxiproxy.reset().await?;
    let (_, took) = fetch(listen).await?;
    assert!(took < Duration::from_secs(5), "the latency survived reset: {took:?}");
    Ok(())
}

#[tokio::test]
async fn toxiproxy_bandwidth_toxic_throttles_responses() -> Result<()> {
    static PAYLOAD: [u8; 32 * 1024] = [7; 32 * 1024];
    let toxiproxy = Toxiproxy::start().await?;
    let upstream = serve_bytes(&PAYLOAD).await?;
    let listen = toxiproxy.create_proxy("slow", &upstream.to_string()).await?;

    toxiproxy.add_bandwidth("slow", 16).await?;
    let (body, took) = fetch(listen).await?;
    assert_eq!(body.len(), PAYLOAD.len());
    // 32 KiB at 16 KB/s takes about 2 s.
    assert!(took >= Duration::from_secs(1), "32 KiB at 16 KB/s took only {took:?}");
    Ok(())
}

#[tokio::test]
async fn toxiproxy_down_proxy_refuses_connections_until_brought_back() -> Result<()> {
    let toxiproxy = Toxiproxy::start().await?;
    let upstream = hello_server().await?;
    let listen = toxiproxy.create_proxy("cut", &upstream.to_string()).await?;

    toxiproxy.set_down("cut", true).await?;
    assert!(!accepts_connections(listen).await, "a down proxy accepted a connection");

    toxiproxy.set_down("cut", false).await?;
    let (body, _) = eventually(WAIT, POLL, || fetch(listen)).await?;
    assert_eq!(body, b"hello");
    Ok(())
}

#[tokio::test]
async fn helm_runs_from_the_cache() -> Result<()> {
    let output = Helm::new()?.run(["version", "--short"]).await?;
    assert!(output.stdout.starts_with("v3.21."), "{output:?}");
    Ok(())
}

#[tokio::test]
async fn helm_installs_a_chart_into_the_control_plane() -> Result<()> {
    let plane = ControlPlane::start().await?;
    let chart = tempfile::tempdir()?;
    std::fs::create_dir(chart.path().join("templates"))?;
    std::fs::write(chart.path().join("Chart.yaml"), "apiVersion: v2\nname: hello\nversion: 0.1.0\n")?;
    std::fs::write(chart.path().join("values.yaml"), "greeting: hi\n")?;
    std::fs::write(
        chart.path().join("templates/configmap.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-greeting\n\
         data:\n  greeting: {{ .Values.greeting | quote }}\n",
    )?;

    let helm = Helm::for_control_plane(&plane)?;
    let chart_path = chart.path().display().to_string();
    helm.run(["install", "r1", chart_path.as_str(), "--namespace", "default", "--set", "greeting=hello"]).await?;

    let configmaps: Api<ConfigMap> = Api::namespaced(plane.client(), "default");
    let data = configmaps.get("r1-greeting").await?.data.unwrap_or_default();
    assert_eq!(data.get("greeting").map(String::as_str), Some("hello"));
    let list = helm.run(["list", "--namespace", "default", "--short"]).await?;
    assert_eq!(list.stdout.trim(), "r1");
    Ok(())
}

#[tokio::test]
async fn kwok_runs_from_the_cache() -> Result<()> {
    let output = tokio::process::Command::new(tool_path(Tool::Kwok)?).arg("--version").output().await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("v0.8.0"), "{stdout}");
    Ok(())
}
