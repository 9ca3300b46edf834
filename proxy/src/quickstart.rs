//! `blockproxy quickstart`: the whole data plane on one machine, with no cloud, cluster or
//! credentials. It starts a group of proxies on loopback (in this process) on the embedded
//! local-directory store, and the mount sidecar's S3 endpoint in front of them, then prints what to
//! run next. Ctrl-C stops everything cleanly: proxies flush their dirty blocks first.

use crate::client::{Client, ClientConfig};
use crate::config::ProxyArgs;
use crate::protocol::{DiscoveryDocument, DiscoveryEndpoint, DiscoveryGroup, StoreLocation, VolumeId};
use crate::store::LocalDirStore;
use anyhow::Context;
use clap::{Args, Parser};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Debug, Clone, Args)]
pub struct QuickstartArgs {
    /// Folder for the store, the proxies' caches and the generated config (kept between runs).
    /// Default: <temp dir>/blockproxy-quickstart.
    #[arg(long, env = "BLOCKPROXY_QUICKSTART_DIR")]
    pub dir: Option<PathBuf>,

    /// Where the S3 endpoint listens.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,

    /// Number of proxies in the group.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub proxies: u16,

    /// The volume id, which is also the S3 bucket name.
    #[arg(long, default_value = "demo")]
    pub volume: String,

    /// Also mount the volume at this directory through FUSE (docs/SEMANTICS.md).
    #[arg(long)]
    pub mount: Option<PathBuf>,
}

pub const ACCESS_KEY: &str = "blockproxy";
pub const SECRET_KEY: &str = "blockproxy";

#[derive(Parser)]
struct ProxyCli {
    #[command(flatten)]
    args: ProxyArgs,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn wait_for_ping(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let http = reqwest::Client::new();
    loop {
        if http
            .get(format!("http://{addr}{}", crate::protocol::PING_PATH))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "proxy {addr} did not start within 20s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn run(args: QuickstartArgs, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let volume = VolumeId::parse(&args.volume).map_err(|e| anyhow::anyhow!("--volume: {e}"))?;
    let dir = args.dir.clone().unwrap_or_else(|| std::env::temp_dir().join("blockproxy-quickstart"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let store_dir = dir.join("store");
    std::fs::create_dir_all(&store_dir)?;
    let (bucket, prefix) = ("quickstart-bucket", format!("volumes/{volume}"));
    let token = hex::encode(rand::random::<[u8; 16]>());
    let volumes_file = dir.join("volumes.yaml");
    std::fs::write(
        &volumes_file,
        format!("volumes:\n- id: {volume}\n  bucket: {bucket}\n  prefix: {prefix}\n  token: {token}\n"),
    )?;
    let store_url = format!("file://{}", store_dir.display());

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut proxies = Vec::new();
    let mut endpoints = Vec::new();
    for i in 0..args.proxies {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let cache = dir.join(format!("proxy-{i}"));
        let cli = ProxyCli::try_parse_from([
            "proxy".to_owned(),
            format!("--bind-addr={addr}"),
            format!("--disk-folder={}", cache.display()),
            "--disk-quota=1Gi".into(),
            format!("--volumes-file={}", volumes_file.display()),
            format!("--store-endpoint={store_url}"),
            "--no-tls".into(),
            "--shutdown-grace=10s".into(),
        ])
        .context("building proxy arguments")?;
        let mut rx = stop_rx.clone();
        proxies.push(tokio::spawn(crate::server::run(cli.args, async move {
            let _ = rx.wait_for(|s| *s).await;
        })));
        endpoints.push((addr, cache));
    }
    for (addr, _) in &endpoints {
        wait_for_ping(*addr).await?;
    }
    let doc = DiscoveryDocument {
        volume_id: volume.clone(),
        store: StoreLocation {
            bucket: bucket.into(),
            prefix: prefix.clone(),
            endpoint: Some(store_url.clone()),
            region: None,
            provider: None,
            path_style: false,
        },
        block_size: crate::protocol::DEFAULT_BLOCK_SIZE,
        metadata_ttl_ms: crate::protocol::DEFAULT_METADATA_TTL_MS,
        groups: vec![DiscoveryGroup {
            name: "quickstart".into(),
            provider_code: "local".into(),
            region_code: "loopback".into(),
            scheme: "http".into(),
            ca_bundle: None,
            server_name: None,
            endpoints: endpoints
                .iter()
                .enumerate()
                .map(|(i, (a, _))| DiscoveryEndpoint {
                    address: a.to_string(),
                    node: Some(format!("proxy-{i}")),
                    weight: 1,
                    draining: false,
                })
                .collect(),
        }],
    };
    let discovery_file = dir.join(DiscoveryDocument::CONFIGMAP_KEY);
    std::fs::write(&discovery_file, doc.to_json_pretty())?;
    let mut cfg = ClientConfig::new(volume.clone(), discovery_file.clone(), token);
    cfg.direct_store = Some(Arc::new(LocalDirStore::open(&store_dir)?));
    let client = Client::start(cfg).await?;
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| {
        format!(
            "binding the S3 endpoint on {} (is another quickstart running? try --listen 127.0.0.1:9100)",
            args.listen
        )
    })?;
    let ep = format!("http://{}", listener.local_addr()?);
    let proxies_list: Vec<String> = endpoints.iter().map(|(a, c)| format!("    {a}  cache {}", c.display())).collect();
    println!(
        r#"
blockproxy quickstart is running.

  S3 endpoint  {ep}   (bucket = volume id "{volume}", any S3 key, objects of any size)
  proxies      (one group, rendezvous-hashed, writeback to the local store)
{proxies}
  store        {store}/{bucket}/{prefix}/
  discovery    {disc}
  status       curl {ep}/_blockproxy/status

Try it (in another terminal):

  export AWS_ACCESS_KEY_ID={ak} AWS_SECRET_ACCESS_KEY={sk} AWS_DEFAULT_REGION=us-east-1
  echo "hello, blockproxy" > hello.txt
  aws --endpoint-url {ep} s3 cp hello.txt s3://{volume}/hello.txt
  aws --endpoint-url {ep} s3 ls s3://{volume}/
  aws --endpoint-url {ep} s3 cp s3://{volume}/hello.txt back.txt && cat back.txt

  # A large file: written whole to its home proxy, read back in 4 MiB blocks from every proxy
  head -c 300M /dev/urandom > big.bin
  aws --endpoint-url {ep} s3 cp big.bin "s3://{volume}/data/a big file.bin"
  aws --endpoint-url {ep} s3 cp "s3://{volume}/data/a big file.bin" big.back && cmp big.bin big.back && echo identical
  find {store} -type f          # the flushed objects, one file each

Press Ctrl-C to stop; the proxies flush their dirty blocks first.
"#,
        proxies = proxies_list.join("\n"),
        store = store_dir.display(),
        disc = discovery_file.display(),
        ak = ACCESS_KEY,
        sk = SECRET_KEY,
    );
    let mounted = match &args.mount {
        Some(dir) => {
            let fuse = crate::mount::FuseArgs {
                mount_point: Some(dir.clone()),
                fuse_fd_socket: None,
                fuse_fd_wait: std::time::Duration::ZERO,
                fuse_threads: 4,
                allow_other: false,
                uid: None,
                gid: None,
            };
            let m = crate::mount::mount(client.clone(), &fuse, dir)?;
            println!("  mount        {} (try: echo hi > {0}/hi.txt; ls -l {0})\n", dir.display());
            Some(m)
        }
        None => None,
    };
    let served = crate::sidecar::serve(
        listener,
        client,
        ACCESS_KEY,
        SECRET_KEY,
        blockproxy_protocol::DEFAULT_MAX_PART_SIZE,
        crate::sidecar::EndpointLimits::default(),
        shutdown,
    )
    .await;
    if let Some(m) = mounted {
        m.unmount().await;
    }
    served?;
    tracing::info!("stopping the proxies (flushing dirty blocks)");
    let _ = stop_tx.send(true);
    for p in proxies {
        p.await.context("proxy task")??;
    }
    println!("blockproxy quickstart stopped; blocks are in {}", store_dir.display());
    Ok(())
}
