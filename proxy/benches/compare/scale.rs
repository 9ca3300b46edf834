//! Figure 8: the group as it grows from 1 to 4 proxies on this machine, measured on running
//! proxies (figure 5 computes the same movement from the hash function alone):
//! - the hit rate of one pass over the small blocks right after proxy `n` joins (the keys that
//!   rendezvous moved to it miss once; ideally `(n - 1) / n` hit);
//! - 4 MiB cache-hit throughput of the whole group and per proxy, routed by rendezvous.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use blockproxy::client::rendezvous::{self, Node};
use http::Uri;

use crate::load::{self, Http};
use crate::peers::{BlockProxy, TOKEN, VOLUME, Wan};
use crate::{Results, check, get_load};

pub struct Scale<'a> {
    pub root: &'a std::path::Path,
    pub wan: &'a Wan,
    pub store_endpoint: &'a str,
    pub http: &'a Http,
    pub large_keys: &'a [String],
    pub small_keys: &'a [String],
    pub concurrency: usize,
    pub duration: Duration,
}

/// The key's URL on its owner among the first `n` proxies.
fn routed(proxies: &[BlockProxy], n: usize, keys: &[String]) -> Result<Arc<Vec<Uri>>> {
    let addrs: Vec<String> = proxies[..n].iter().map(|p| p.addr.to_string()).collect();
    let nodes: Vec<Node<'_>> = addrs.iter().map(|a| Node { address: a, weight: 1 }).collect();
    let uris = keys
        .iter()
        .map(|k| proxies[rendezvous::owner(VOLUME, k, &nodes).unwrap_or(0)].block_url(k).parse())
        .collect::<Result<Vec<Uri>, _>>()?;
    Ok(Arc::new(uris))
}

async fn hits_and_misses(proxies: &[BlockProxy]) -> Result<(f64, f64)> {
    let (mut hits, mut misses) = (0.0, 0.0);
    for p in proxies {
        hits += p.metric("blockproxy_cache_hits_total").await?;
        misses += p.metric("blockproxy_cache_misses_total").await?;
    }
    Ok((hits, misses))
}

pub async fn figure8(s: Scale<'_>, r: &mut Results) -> Result<()> {
    let mut proxies = Vec::new();
    for i in 0..4 {
        proxies.push(BlockProxy::start(&format!("scale-{i}"), s.root, s.wan, s.store_endpoint, &[]).await?);
    }
    for n in 1..=4 {
        let small = routed(&proxies, n, s.small_keys)?;
        let before = hits_and_misses(&proxies).await?;
        load::get_each(s.http, &small, TOKEN).await?;
        let after = hits_and_misses(&proxies).await?;
        let (hits, misses) = (after.0 - before.0, after.1 - before.1);
        let hit_rate = hits / (hits + misses).max(1.0);
        let large = routed(&proxies, n, s.large_keys)?;
        load::get_each(s.http, &large, TOKEN).await?;
        let g = get_load(s.http, &large, s.concurrency, s.duration).await;
        check(&format!("group of {n}, 4 MiB"), &g)?;
        eprintln!(
            "  {n} proxies: first pass after the join hit {:.1}% (ideal {:.1}%); 4 MiB hits {:.0} MiB/s, {:.0} per proxy",
            hit_rate * 100.0,
            (n - 1) as f64 / n as f64 * 100.0,
            g.mib_per_s(),
            g.mib_per_s() / n as f64
        );
        if n > 1 {
            r.push(&format!("f8.hit_rate_after_join.n{n}"), hit_rate);
            r.push(&format!("f8.ratio.hit_rate_over_ideal.n{n}"), hit_rate / ((n - 1) as f64 / n as f64));
        }
        r.push(&format!("f8.mib_s.n{n}"), g.mib_per_s());
        r.push(&format!("f8.mib_s_per_proxy.n{n}"), g.mib_per_s() / n as f64);
    }
    Ok(())
}
