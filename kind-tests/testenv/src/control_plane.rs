//! A real Kubernetes control plane: etcd + kube-apiserver, optionally with
//! kube-controller-manager and kube-scheduler.
//!
//! Without the controllers (the default, as controller-runtime's envtest does) nothing runs
//! controllers: no default ServiceAccount per namespace, no garbage collection, no namespace
//! finalisation, no pods from Deployments or DaemonSets, no PVC binding.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};
use serde::Deserialize;
use tempfile::TempDir;

use crate::certs::Pki;
use crate::eventually::eventually;
use crate::logs::LogDir;
use crate::ports::free_port;
use crate::process::Process;
use crate::tools::{Tool, tool_path};

/// How long each component may take to become ready (2 cores, tests in parallel).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a CRD may take to become Established.
const CRD_TIMEOUT: Duration = Duration::from_secs(60);
/// The field manager of everything the test environment applies.
const FIELD_MANAGER: &str = "blockproxy-testenv";

/// Options for [`ControlPlane`]; start with [`ControlPlane::builder`].
#[derive(Debug, Default, Clone)]
pub struct ControlPlaneBuilder {
    controllers: bool,
}

impl ControlPlaneBuilder {
    /// Also run kube-controller-manager and kube-scheduler (default: only etcd + apiserver).
    pub fn with_controllers(mut self) -> Self {
        self.controllers = true;
        self
    }

    /// Starts the control plane and waits until it is ready.
    pub async fn start(self) -> Result<ControlPlane> {
        ControlPlane::start_with(self).await
    }
}

/// A running etcd + kube-apiserver (and optionally controllers) on loopback; stopped on drop.
pub struct ControlPlane {
    // Fields drop in order: the processes first, then the files, then the log folder (which
    // prints the logs when the test panicked).
    scheduler: Option<Process>,
    controller_manager: Option<Process>,
    apiserver: Process,
    etcd: Process,
    client: Client,
    addr: SocketAddr,
    kubeconfig: PathBuf,
    pki: Pki,
    dir: TempDir,
    logs: LogDir,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("addr", &self.addr)
            .field("kubeconfig", &self.kubeconfig)
            .field("controllers", &self.controller_manager.is_some())
            .field("logs", &self.logs.path())
            .finish()
    }
}

impl ControlPlane {
    /// Options, e.g. `ControlPlane::builder().with_controllers().start().await`.
    pub fn builder() -> ControlPlaneBuilder {
        ControlPlaneBuilder::default()
    }

    /// Starts etcd + kube-apiserver and waits for `/readyz`.
    pub async fn start() -> Result<Self> {
        Self::builder().start().await
    }

    async fn start_with(options: ControlPlaneBuilder) -> Result<Self> {
        crate::init_crypto();
        let logs = LogDir::new()?;
        let dir = tempfile::Builder::new().prefix("testenv-kube-").tempdir()?;
        let pki = Pki::generate(dir.path())?;

        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        let etcd_client_url = format!("http://127.0.0.1:{etcd_client}");
        let etcd_peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let etcd = Process::spawn(
            "etcd",
            &tool_path(Tool::Etcd)?,
            [
                "--name=default".to_owned(),
                format!("--data-dir={}", dir.path().join("etcd").display()),
                format!("--listen-client-urls={etcd_client_url}"),
                format!("--advertise-client-urls={etcd_client_url}"),
                format!("--listen-peer-urls={etcd_peer_url}"),
                format!("--initial-advertise-peer-urls={etcd_peer_url}"),
                format!("--initial-cluster=default={etcd_peer_url}"),
                "--unsafe-no-fsync=true".to_owned(),
                "--log-level=warn".to_owned(),
            ],
            &[],
            &logs,
        )?;

        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let path = |p: &Path| p.display().to_string();
        let apiserver = Process::spawn(
            "kube-apiserver",
            &tool_path(Tool::KubeApiserver)?,
            [
                "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
                "--allow-privileged=true".to_owned(),
                "--authorization-mode=RBAC".to_owned(),
                "--disable-admission-plugins=ServiceAccount".to_owned(),
                format!("--secure-port={port}"),
                "--bind-address=127.0.0.1".to_owned(),
                "--advertise-address=127.0.0.1".to_owned(),
                format!("--cert-dir={}", path(&dir.path().join("apiserver-certs"))),
                format!("--etcd-servers={etcd_client_url}"),
                format!("--client-ca-file={}", path(&pki.ca_cert)),
                format!("--tls-cert-file={}", path(&pki.serving_cert)),
                format!("--tls-private-key-file={}", path(&pki.serving_key)),
                "--service-account-issuer=https://kubernetes.default.svc".to_owned(),
                // The key file takes public keys only: a PKCS#8 private key there is refused
                // ("data does not contain any valid RSA or ECDSA public keys").
                format!("--service-account-key-file={}", path(&pki.service_account_public_key)),
                format!("--service-account-signing-key-file={}", path(&pki.service_account_key)),
            ],
            &[],
            &logs,
        )?;

        let server = format!("https://{addr}");
        let kubeconfig = dir.path().join("admin.kubeconfig");
        let admin_user =
            format!("client-certificate: {}\n    client-key: {}", path(&pki.admin_cert), path(&pki.admin_key));
        std::fs::write(&kubeconfig, kubeconfig_yaml(&server, &pki.ca_cert, "admin", &admin_user))
            .context("writing the admin kubeconfig")?;
        let client = client_from_kubeconfig_file(&kubeconfig).await?;

        let mut plane = Self {
            scheduler: None,
            controller_manager: None,
            apiserver,
            etcd,
            client,
            addr,
            kubeconfig,
            pki,
            dir,
            logs,
        };
        plane.wait_for_apiserver().await?;
        if options.controllers {
            plane.start_controllers().await?;
        }
        Ok(plane)
    }

    async fn wait_for_apiserver(&self) -> Result<()> {
        let result = eventually(READY_TIMEOUT, Duration::from_millis(200), || async {
            self.etcd.ensure_running()?;
            self.apiserver.ensure_running()?;
            let request = http::Request::get("/readyz").body(Vec::new())?;
            self.client.request_text(request).await.context("GET /readyz")?;
            Ok(())
        })
        .await;
        result.map_err(|e| self.startup_error("kube-apiserver", e))
    }

    async fn start_controllers(&mut self) -> Result<()> {
        let path = |p: &Path| p.display().to_string();
        let kubeconfig = path(&self.kubeconfig);
        let common = |port: u16, name: &str| {
            vec![
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                "--bind-address=127.0.0.1".to_owned(),
                format!("--secure-port={port}"),
                format!("--cert-dir={}", path(&self.dir.path().join(name))),
                "--leader-elect=false".to_owned(),
            ]
        };

        let kcm_port = free_port()?;
        let mut kcm_args = common(kcm_port, "kube-controller-manager");
        kcm_args.extend([
            "--use-service-account-credentials=false".to_owned(),
            format!("--service-account-private-key-file={}", path(&self.pki.service_account_key)),
            format!("--root-ca-file={}", path(&self.pki.ca_cert)),
            format!("--cluster-signing-cert-file={}", path(&self.pki.ca_cert)),
            format!("--cluster-signing-key-file={}", path(&self.pki.ca_key)),
        ]);
        let kcm = Process::spawn(
            "kube-controller-manager",
            &tool_path(Tool::KubeControllerManager)?,
            kcm_args,
            &[],
            &self.logs,
        )?;
        self.controller_manager = Some(kcm);

        let scheduler_port = free_port()?;
        let scheduler = Process::spawn(
            "kube-scheduler",
            &tool_path(Tool::KubeScheduler)?,
            common(scheduler_port, "kube-scheduler"),
            &[],
            &self.logs,
        )?;
        self.scheduler = Some(scheduler);

        let http =
            reqwest::Client::builder().danger_accept_invalid_certs(true).timeout(Duration::from_secs(5)).build()?;
        let processes = [(&self.controller_manager, kcm_port), (&self.scheduler, scheduler_port)];
        for (process, port) in processes {
            let Some(process) = process else { continue };
            let url = format!("https://127.0.0.1:{port}/healthz");
            let result = eventually(READY_TIMEOUT, Duration::from_millis(200), || async {
                process.ensure_running()?;
                let response = http.get(&url).send().await?;
                if !response.status().is_success() {
                    bail!("GET {url}: {}", response.status());
                }
                Ok(())
            })
            .await;
            result.map_err(|e| self.startup_error(process.name(), e))?;
        }
        Ok(())
    }

    fn startup_error(&self, what: &str, error: anyhow::Error) -> anyhow::Error {
        anyhow!(
            "{what} did not become ready: {error:#}\nlogs in {}:\n{}",
            self.logs.path().display(),
            self.logs.tail(30)
        )
    }

    /// A client that authenticates as the admin (group `system:masters`).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The admin kubeconfig file (for kubectl, helm, or a process under test).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's address (`127.0.0.1:<port>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API server's URL (`https://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The generated certificates and keys.
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// The folder with the components' logs.
    pub fn log_dir(&self) -> &Path {
        self.logs.path()
    }

    /// Creates the namespace `namespace` (if missing) and the ServiceAccount `name` in it (if
    /// missing), and returns a client that authenticates as that ServiceAccount with a token from
    /// the TokenRequest API. The ServiceAccount has no permissions until the test grants some.
    pub async fn client_for_service_account(&self, namespace: &str, name: &str) -> Result<Client> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let ns = Namespace {
            metadata: ObjectMeta { name: Some(namespace.to_owned()), ..Default::default() },
            ..Default::default()
        };
        ignore_conflict(namespaces.create(&PostParams::default(), &ns).await)
            .with_context(|| format!("creating namespace {namespace}"))?;

        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let account = ServiceAccount {
            metadata: ObjectMeta { name: Some(name.to_owned()), ..Default::default() },
            ..Default::default()
        };
        ignore_conflict(accounts.create(&PostParams::default(), &account).await)
            .with_context(|| format!("creating ServiceAccount {namespace}/{name}"))?;

        let request = TokenRequest {
            spec: TokenRequestSpec { audiences: vec![], expiration_seconds: Some(3600), ..Default::default() },
            ..Default::default()
        };
        let token = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("requesting a token for {namespace}/{name}"))?
            .status
            .map(|s| s.token)
            .ok_or_else(|| anyhow!("TokenRequest for {namespace}/{name} has no status"))?;

        let user = format!("token: {token}");
        let yaml = kubeconfig_yaml(&self.url(), &self.pki.ca_cert, name, &user);
        client_from_kubeconfig(Kubeconfig::from_yaml(&yaml)?).await
    }

    /// Server-side applies every CustomResourceDefinition in the `*.yaml`/`*.yml` files of `dir`
    /// (multi-document files allowed) and waits until each is Established. Returns their names.
    /// A document of another kind is an error.
    pub async fn install_crds(&self, dir: impl AsRef<Path>) -> Result<Vec<String>> {
        let dir = dir.as_ref();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();

        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mut names = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            for document in serde_yaml::Deserializer::from_str(&text) {
                let value =
                    serde_yaml::Value::deserialize(document).with_context(|| format!("parsing {}", file.display()))?;
                if value.is_null() {
                    continue;
                }
                let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
                if kind != "CustomResourceDefinition" {
                    bail!("{}: expected only CustomResourceDefinitions, found kind {kind:?}", file.display());
                }
                let crd: CustomResourceDefinition =
                    serde_yaml::from_value(value).with_context(|| format!("parsing a CRD in {}", file.display()))?;
                let name = crd.metadata.name.clone().ok_or_else(|| anyhow!("{}: a CRD has no name", file.display()))?;
                api.patch(&name, &params, &Patch::Apply(&crd))
                    .await
                    .with_context(|| format!("applying CRD {name} from {}", file.display()))?;
                names.push(name);
            }
        }
        for name in &names {
            let established = await_condition(api.clone(), name, conditions::is_crd_established());
            tokio::time::timeout(CRD_TIMEOUT, established)
                .await
                .map_err(|_| anyhow!("CRD {name} not Established within {CRD_TIMEOUT:?}"))?
                .with_context(|| format!("waiting for CRD {name}"))?;
        }
        Ok(names)
    }
}

/// Builds a client from a kubeconfig file.
pub async fn client_from_kubeconfig_file(path: &Path) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
    client_from_kubeconfig(kubeconfig).await
}

async fn client_from_kubeconfig(kubeconfig: Kubeconfig) -> Result<Client> {
    crate::init_crypto();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("loading kubeconfig")?;
    Client::try_from(config).context("building a kube client")
}

/// A one-context kubeconfig; `user` is the indented body of the user entry.
pub(crate) fn kubeconfig_yaml(server: &str, ca: &Path, user_name: &str, user: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {user_name}
  user:
    {user}
contexts:
- name: testenv
  context:
    cluster: testenv
    user: {user_name}
    namespace: default
current-context: testenv
",
        ca = ca.display()
    )
}

fn ignore_conflict<T>(result: kube::Result<T>) -> kube::Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}
