//! The proxy server: wires cache, store, writeback and the HTTP API together, and runs them
//! until shutdown. See [`run`].

mod block_body;
mod body_md5;
mod build_store;
mod clock;
mod errors;
mod gate;
mod linger;
pub(crate) mod listener;
mod metacache;
mod object;
mod reads;
mod routes;
mod sendfile;
mod state;
mod tls;
mod uploads;
mod volumes;

pub use volumes::bearer;

use crate::cache::Cache;
use crate::config::ProxyArgs;
use crate::metrics::Metrics;
use crate::writeback::{Writeback, WritebackConfig};
use anyhow::Context;
use state::AppState;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use build_store::build_store;

fn auto_parallelism(per_cpu: usize, max: usize) -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).saturating_mul(per_cpu).min(max)
}

/// Runs the proxy until `shutdown` resolves, then stops taking writes, flushes dirty blocks for
/// up to `--shutdown-grace`, and returns. Dirty blocks left over stay on disk and are flushed
/// after the next start.
pub async fn run(args: ProxyArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let volumes = Arc::new(volumes::Volumes::load(&args.volumes_file)?);
    let admin_token = match &args.admin_token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading admin token file {}", p.display()))?
                .trim()
                .to_owned(),
        )
        .filter(|t| !t.is_empty()),
        None => None,
    };
    anyhow::ensure!(
        args.max_inflight_bytes >= args.max_block_size,
        "--max-inflight-bytes ({}) must be at least --max-block-size ({}), or no block could ever be received",
        args.max_inflight_bytes,
        args.max_block_size
    );
    std::fs::create_dir_all(&args.disk_folder)
        .with_context(|| format!("creating disk folder {}", args.disk_folder.display()))?;
    let quota = args
        .disk_quota
        .resolve(&args.disk_folder)
        .with_context(|| format!("measuring the filesystem of {}", args.disk_folder.display()))?;
    let tls = if args.no_tls {
        None
    } else if let (Some(c), Some(k)) = (&args.tls_cert_file, &args.tls_key_file) {
        Some(tls::load(c, k)?)
    } else {
        Some(tls::self_signed(&args.disk_folder.join("tls"))?)
    };
    let store = build_store(&args.store).await?;

    let started = Instant::now();
    let (folder, sync) = (args.disk_folder.clone(), args.sync);
    let (cache, recovery) = tokio::task::spawn_blocking(move || Cache::open(&folder, quota, sync))
        .await?
        .with_context(|| format!("opening the cache in {}", args.disk_folder.display()))?;
    cache.set_held_files(crate::cache::held::allowance(args.open_files));
    let cache = Arc::new(cache);
    let usage = cache.usage();
    tracing::info!(
        folder = %args.disk_folder.display(),
        quota_bytes = quota,
        clean_blocks = recovery.clean_blocks,
        dirty_blocks = recovery.dirty.len(),
        corrupt_files = recovery.corrupt_files,
        quarantined_blocks = cache.quarantined_blocks(),
        used_bytes = usage.used_bytes,
        took = ?started.elapsed(),
        "cache opened"
    );

    let clocks = clock::VolumeClocks::open(&args.disk_folder, args.max_version_ahead, args.sync, cache.max_versions())
        .with_context(|| format!("opening the version clock in {}", args.disk_folder.display()))?;
    let metrics = Arc::new(Metrics::new());
    let active = if args.writeback_active == 0 { auto_parallelism(4, 64) } else { args.writeback_active };
    let writeback = Writeback::new(
        Arc::clone(&cache),
        Arc::clone(&store),
        Arc::clone(&metrics),
        WritebackConfig { active, delay: Duration::from_millis(args.writeback_delay), ..Default::default() },
    );
    for id in recovery.dirty {
        writeback.enqueue(id);
    }
    let (stop_workers_tx, stop_workers) = watch::channel(false);
    let workers = writeback.spawn_workers(stop_workers);

    let staging = crate::cache::staging::Staging::open(&args.disk_folder, args.sync)
        .with_context(|| format!("opening the upload staging area in {}", args.disk_folder.display()))?;
    // Staged parts left by the last run count against the quota until they complete or expire.
    let staged: u64 = staging.list().map(|l| l.iter().map(|u| u.2).sum()).unwrap_or(0);
    cache.account_staged(staged);
    let max_bops = if args.max_bops == 0 { auto_parallelism(64, 1024) } else { args.max_bops };
    let state = Arc::new(AppState {
        volumes: Arc::clone(&volumes),
        cache: Arc::clone(&cache),
        store: Arc::clone(&store),
        writeback: Arc::clone(&writeback),
        metrics,
        fetches: Default::default(),
        stripe_fetches: Default::default(),
        first_fetches: Default::default(),
        revalidations: Default::default(),
        meta: Default::default(),
        staging,
        bops: tokio::sync::Semaphore::new(max_bops),
        budget: crate::budget::ByteBudget::new(args.max_inflight_bytes, Duration::from_secs(5)),
        max_block_size: args.max_block_size,
        body_idle_timeout: args.body_idle_timeout,
        metadata_ttl: args.metadata_ttl,
        write_through: args.no_writeback,
        admin_token,
        gate: Default::default(),
        clocks,
    });
    let reload = tokio::spawn(Arc::clone(&volumes).watch(args.volumes_file.clone(), args.reload_interval));
    let expiry = tokio::spawn(uploads::expire_loop(Arc::clone(&state), args.upload_expiry));

    let listener = TcpListener::bind(args.bind_addr).await.with_context(|| format!("binding {}", args.bind_addr))?;
    let local = listener.local_addr()?;
    tracing::info!(
        addr = %local,
        tls = tls.is_some(),
        store = %store.describe(),
        writeback = !args.no_writeback,
        writeback_active = active,
        sync = args.sync,
        volumes = volumes.len(),
        "blockproxy serving"
    );
    let (stop_http_tx, stop_http) = watch::channel(false);
    let deadline_for_requests = args.shutdown_grace.min(Duration::from_secs(10));
    let server = tokio::spawn(listener::serve(
        listener,
        routes::Api::new(Arc::clone(&state)),
        listener::Limits {
            tls,
            header_read_timeout: args.header_read_timeout,
            tls_handshake_timeout: args.tls_handshake_timeout,
            grace: deadline_for_requests,
            sendfile: (!args.no_sendfile).then(|| state.metrics.http_sendfile_bytes_total.clone()),
        },
        state.metrics.http_timeouts_total.clone(),
        stop_http,
    ));

    // Shutdown, in the order that acknowledges nothing it cannot keep: refuse new writes, stop
    // accepting and let the requests in flight finish, then flush while the workers still run.
    shutdown.await;
    let deadline = Instant::now() + args.shutdown_grace;
    state.gate.close(gate::Closed::ShuttingDown);
    tracing::info!(in_flight_writes = state.gate.inside(), grace = ?args.shutdown_grace, "shutting down: refusing writes, finishing requests in flight");
    let _ = stop_http_tx.send(true);
    let _ = server.await;
    if tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), state.gate.wait_empty()).await.is_err()
    {
        tracing::warn!(
            in_flight_writes = state.gate.inside(),
            "writes still running at the end of the grace period; they were not acknowledged"
        );
    }
    let dirty = cache.usage();
    tracing::info!(dirty_blocks = dirty.dirty_blocks, "flushing dirty blocks before exit");
    let clean = writeback.wait_clean(deadline).await;
    let _ = stop_workers_tx.send(true);
    // A worker sees the stop between flushes; one in a store request that hangs (up to the SDK's
    // read timeout) would hold the exit past the grace. It is abandoned as a crash abandons it:
    // its block stays dirty on disk and the store's conditional write makes a retry safe.
    let aborts: Vec<_> = workers.iter().map(tokio::task::JoinHandle::abort_handle).collect();
    let joined = futures::future::join_all(workers);
    if tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), joined).await.is_err() {
        let in_flight = aborts.iter().filter(|a| !a.is_finished()).count();
        aborts.iter().for_each(tokio::task::AbortHandle::abort);
        tracing::warn!(in_flight, "flushes still waiting on the store at the end of the grace period; abandoned");
    }
    reload.abort();
    expiry.abort();
    let left = cache.usage();
    if clean {
        tracing::info!("all dirty blocks flushed; exiting");
    } else {
        tracing::warn!(
            dirty_blocks = left.dirty_blocks,
            dirty_bytes = left.dirty_bytes,
            "grace period over with dirty blocks left; they stay on disk and are flushed after the next start"
        );
    }
    Ok(())
}
