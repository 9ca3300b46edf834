//! RTT probes: every proxy of every group, `probe_samples` pings each over the group's pooled
//! connections; a proxy's RTT is the median of its samples, a group's the median of its healthy
//! proxies. Each round updates proxy health (down / back, which starts the recovery window), feeds
//! the group [`Selector`](super::selection::Selector), and exports metrics and logs.

use super::selection::{self, GroupRtt};
use super::{Inner, median};
use std::collections::HashMap;
use std::time::{Duration, Instant};

impl Inner {
    pub(super) async fn probe_round(&self) {
        let topo = self.topology();
        let mut jobs = Vec::new();
        for g in &topo.groups {
            for e in &g.endpoints {
                let call = self.proxy_call(g, &e.address, self.cfg.probe_timeout);
                let samples = self.cfg.probe_samples.max(1);
                jobs.push(async move {
                    let mut rtts = Vec::with_capacity(samples);
                    let mut last_err = None;
                    for _ in 0..samples {
                        match call.ping().await {
                            Ok(d) => rtts.push(d),
                            Err(e) => last_err = Some(format!("{e:?}")),
                        }
                    }
                    (g.name.clone(), e.address.clone(), median(rtts), last_err)
                });
            }
        }
        let results = futures::future::join_all(jobs).await;
        let mut by_group: HashMap<String, Vec<Duration>> = HashMap::new();
        {
            let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
            for (group, addr, rtt, err) in results {
                let p = health.entry((group.clone(), addr.clone())).or_default();
                let labels = [group.as_str(), addr.as_str()];
                match rtt {
                    Some(rtt) => {
                        if let Some(since) = p.down_since.take() {
                            tracing::info!(group, proxy = addr, down_for = ?since.elapsed(), "proxy is back; checking its reads for the recovery window");
                            p.recovering_since = Some(Instant::now());
                        }
                        p.rtt = Some(rtt);
                        self.metrics.proxy_up.with_label_values(&labels).set(1);
                        self.metrics.proxy_rtt_seconds.with_label_values(&labels).set(rtt.as_secs_f64());
                        by_group.entry(group).or_default().push(rtt);
                    }
                    None => {
                        let why = err.unwrap_or_else(|| "no answer".into());
                        self.metrics
                            .proxy_errors_total
                            .with_label_values(&[group.as_str(), addr.as_str(), "probe"])
                            .inc();
                        if p.down_since.is_none() {
                            tracing::warn!(
                                group,
                                proxy = addr,
                                error = why,
                                "proxy does not answer probes; marked down"
                            );
                            p.down_since = Some(Instant::now());
                            p.recovering_since = None;
                        }
                        p.rtt = None;
                        p.last_error = Some(why);
                        self.metrics.proxy_up.with_label_values(&labels).set(0);
                    }
                }
            }
        }
        let round: Vec<GroupRtt> = topo
            .groups
            .iter()
            .map(|g| GroupRtt { name: g.name.clone(), rtt: by_group.remove(&g.name).and_then(median) })
            .collect();
        for g in &round {
            self.metrics.group_rtt_seconds.with_label_values(&[&g.name]).set(g.rtt.map_or(-1.0, |r| r.as_secs_f64()));
        }
        let change = self.selector.lock().unwrap_or_else(|e| e.into_inner()).observe(&round);
        let n = self.rounds.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        self.metrics.probe_rounds_total.inc();
        let rtts: Vec<String> = round
            .iter()
            .map(|g| {
                format!("{}={}", g.name, g.rtt.map_or("down".to_owned(), |r| format!("{:.1}ms", r.as_secs_f64() * 1e3)))
            })
            .collect();
        if let Some(change) = change {
            use selection::Change;
            let (reason, to) = match &change {
                Change::Immediate { from, to } => {
                    tracing::info!(round = n, from = ?from, to, rtts = ?rtts, "group chosen");
                    ("immediate", Some(to.clone()))
                }
                Change::Better { from, to, rounds } => {
                    tracing::info!(round = n, from, to, rounds, rtts = ?rtts, "switching to a clearly faster group");
                    ("better", Some(to.clone()))
                }
                Change::NoneHealthy { from } => {
                    tracing::warn!(round = n, from = ?from, rtts = ?rtts, direct_store = self.cfg.direct_store.is_some(), "no group has a healthy proxy");
                    ("none_healthy", None)
                }
            };
            self.metrics.group_switches_total.with_label_values(&[reason]).inc();
            for g in &round {
                self.metrics
                    .chosen_group
                    .with_label_values(&[&g.name])
                    .set(i64::from(to.as_deref() == Some(g.name.as_str())));
            }
        } else {
            tracing::debug!(round = n, rtts = ?rtts, "probe round");
        }
        *self.last_round.lock().unwrap_or_else(|e| e.into_inner()) = round;
    }
}
