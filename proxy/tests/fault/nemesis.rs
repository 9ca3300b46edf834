//! The nemesis: one fault at a time, from a seeded schedule that covers every kind in each round,
//! held for a random while and then healed.

use super::cluster::{CLIENT_STORE_LINK, Cluster, GROUPS, Membership, SHUTDOWN_GRACE};
use super::history::Recorder;
use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::fmt;
use std::time::{Duration, Instant};

/// How long a drain may take before the nemesis gives up on it (and restarts the proxy on its
/// folder, so nothing is lost).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// SIGKILL a proxy, restart it on the same cache folder.
    Kill9,
    /// SIGTERM a proxy (it flushes for its grace), restart it on the same cache folder.
    Term,
    /// Drain a proxy; once done, replace it with an empty one at the same address.
    Drain,
    /// Cut every link to MinIO (proxies' and the clients' direct fallback), then restore them.
    StoreCut,
    /// Cut the clients' link to one proxy, then restore it.
    Partition,
    /// Move one client to the other group (or to both) by rewriting its discovery file.
    Switch,
}

pub const ALL_KINDS: [FaultKind; 6] =
    [FaultKind::Kill9, FaultKind::Term, FaultKind::Drain, FaultKind::StoreCut, FaultKind::Partition, FaultKind::Switch];

/// One injected fault, for the report.
pub struct FaultRecord {
    pub kind: FaultKind,
    pub start_ns: i64,
    pub end_ns: i64,
    pub what: String,
}

impl fmt::Display for FaultRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>8.3}s..{:>8.3}s {}", self.start_ns as f64 / 1e9, self.end_ns as f64 / 1e9, self.what)
    }
}

pub struct Nemesis {
    rng: StdRng,
    membership: Vec<Membership>,
    pub faults: Vec<FaultRecord>,
}

impl Nemesis {
    pub fn new(seed: u64, clients: usize) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321),
            membership: vec![Membership::Both; clients],
            faults: Vec::new(),
        }
    }

    /// Injects faults until `deadline`, and at least one of every kind; the last one is healed
    /// before it returns.
    pub async fn run(&mut self, cluster: &mut Cluster, deadline: Instant, clock: &Recorder) -> Result<()> {
        let mut round: Vec<FaultKind> = Vec::new();
        let mut first_round_done = false;
        while Instant::now() < deadline || !first_round_done {
            self.pause(500..2000).await;
            if round.is_empty() {
                round = ALL_KINDS.to_vec();
                round.shuffle(&mut self.rng);
            }
            let kind = round.pop().context("empty round")?;
            let start_ns = clock.now_ns();
            let what = self.inject(kind, cluster).await.with_context(|| format!("injecting {kind:?}"))?;
            self.faults.push(FaultRecord { kind, start_ns, end_ns: clock.now_ns(), what });
            first_round_done |= round.is_empty();
        }
        Ok(())
    }

    async fn pause(&mut self, ms: std::ops::Range<u64>) -> Duration {
        let d = Duration::from_millis(self.rng.random_range(ms));
        tokio::time::sleep(d).await;
        d
    }

    async fn inject(&mut self, kind: FaultKind, cluster: &mut Cluster) -> Result<String> {
        let target = self.rng.random_range(0..cluster.proxies.len());
        let name = cluster.proxies[target].name.clone();
        Ok(match kind {
            FaultKind::Kill9 => {
                cluster.proxies[target].proc.kill();
                let held = self.pause(500..4000).await;
                cluster.proxies[target].proc.restart().await?;
                format!("kill -9 {name}, down {held:?}, restarted on its cache folder")
            }
            FaultKind::Term => {
                let status = cluster.proxies[target].proc.stop_with("TERM", SHUTDOWN_GRACE * 4).await?;
                let held = self.pause(500..3000).await;
                cluster.proxies[target].proc.restart().await?;
                format!("SIGTERM {name} (exit {status}), down {held:?}, restarted on its cache folder")
            }
            FaultKind::Drain => {
                let proxy = &mut cluster.proxies[target];
                proxy.drain(true).await?;
                let started = Instant::now();
                let mut done = false;
                while started.elapsed() < DRAIN_TIMEOUT {
                    if proxy.drain(false).await.is_ok_and(|s| s.done) {
                        done = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if done {
                    proxy.replace_after_drain().await?;
                    format!("drain {name}: done after {:?}; replaced by an empty proxy", started.elapsed())
                } else {
                    proxy.proc.restart().await?;
                    format!("drain {name}: NOT done within {DRAIN_TIMEOUT:?}; restarted on its cache folder")
                }
            }
            FaultKind::StoreCut => {
                let links: Vec<String> = cluster.proxies.iter().map(|p| p.store_link.clone()).collect();
                for link in links.iter().map(String::as_str).chain([CLIENT_STORE_LINK]) {
                    cluster.toxi.set_down(link, true).await?;
                }
                let held = self.pause(1000..5000).await;
                for link in links.iter().map(String::as_str).chain([CLIENT_STORE_LINK]) {
                    cluster.toxi.set_down(link, false).await?;
                }
                format!("object store cut for {held:?}")
            }
            FaultKind::Partition => {
                let link = cluster.proxies[target].client_link.clone();
                cluster.toxi.set_down(&link, true).await?;
                let held = self.pause(500..4000).await;
                cluster.toxi.set_down(&link, false).await?;
                format!("{name} cut off from the clients for {held:?}")
            }
            FaultKind::Switch => {
                let client = self.rng.random_range(0..self.membership.len());
                let choices: Vec<Membership> = std::iter::once(Membership::Both)
                    .chain((0..GROUPS.len()).map(Membership::Only))
                    .filter(|m| *m != self.membership[client])
                    .collect();
                let to = choices[self.rng.random_range(0..choices.len())];
                cluster.set_membership(client, to)?;
                self.membership[client] = to;
                let groups = match to {
                    Membership::Both => "both groups".to_owned(),
                    Membership::Only(g) => format!("only group {}", GROUPS[g].0),
                };
                format!("client {client}'s discovery file now lists {groups}")
            }
        })
    }
}
