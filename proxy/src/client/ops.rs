//! Block operations: route to the key's owner in the chosen group, fail over along the
//! rendezvous order, then to the other groups, then to the object store; check reads served by a
//! recovering proxy against the other places a newer version may live, and repair the owner.

use super::arriving::PutData;
use super::chunks::Chunks;
use super::info::ObjectInfo;
use super::recent::{self, Judgement};
use super::transport::{AttemptError, Fetched, WriteMeta, Written};
use super::{Client, ClientError, Inner, Topology, rendezvous};
use crate::protocol::{BlockKey, ObjectAttrs};
use bytes::Bytes;
use std::ops::Range;

/// Where one attempt goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Proxy { group: usize, address: String },
    Store,
}

pub(super) enum Op<'a> {
    /// `repair`: install exactly `version` (a copy read elsewhere), never a newer one.
    Put {
        key: &'a BlockKey,
        data: PutData,
        version: u64,
        repair: bool,
        meta: WriteMeta<'a>,
    },
    Get {
        key: &'a BlockKey,
        range: Option<&'a str>,
    },
    Head {
        key: &'a BlockKey,
    },
    /// Block `index` of a clean object, pinned to its store ETag (ADR 0004).
    GetBlock {
        key: &'a BlockKey,
        index: u64,
        block_size: u64,
        /// The object's size (the store needs the range's end).
        size: u64,
        store_etag: &'a str,
        /// The bytes wanted (object offsets inside the block).
        part: Range<u64>,
    },
    Delete {
        key: &'a BlockKey,
        version: u64,
    },
}

impl Op<'_> {
    fn name(&self) -> &'static str {
        match self {
            Op::Put { .. } => "put",
            Op::Get { .. } => "get",
            Op::Head { .. } => "head",
            Op::GetBlock { .. } => "get_block",
            Op::Delete { .. } => "delete",
        }
    }
}

pub(super) enum Outcome {
    Written(Written),
    Fetched(Option<Fetched<Chunks>>),
    Head(Option<ObjectInfo>),
    Block(Chunks),
}

/// The largest object a read repair copies (the proxies' default `--max-block-size`).
const MAX_REPAIR_SIZE: u64 = 64 << 20;

pub(super) fn store_key(prefix: &str, key: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() { key.to_owned() } else { format!("{p}/{key}") }
}

/// Cuts `range` (an HTTP `Range` value) out of a whole object.
pub(crate) fn slice_range(
    data: Chunks,
    mut info: ObjectInfo,
    range: Option<&str>,
) -> Result<Fetched<Chunks>, ClientError> {
    let total = data.len() as u64;
    info.size = total;
    let Some(r) = range else {
        return Ok(Fetched { data, info });
    };
    let parsed = http_range_header::parse_range_header(r)
        .map_err(|e| ClientError::Rejected { status: 400, message: format!("malformed Range {r:?}: {e}") })?;
    let ranges =
        parsed.validate(total).map_err(|e| ClientError::RangeNotSatisfiable(format!("{r:?} on {total} bytes: {e}")))?;
    let [range] = ranges.as_slice() else {
        return Err(ClientError::RangeNotSatisfiable("only a single byte range is supported".into()));
    };
    Ok(Fetched { data: data.slice(*range.start() as usize..*range.end() as usize + 1), info })
}

/// What a request does, which decides whether draining proxies may take it (ADR 0002).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// Reads go to the serving proxies first, then to the draining ones, which may still hold
    /// acknowledged writes that are not in the store yet.
    Read,
    /// Writes never go to a draining proxy (it refuses them): they go to the next proxy in
    /// rendezvous order.
    Write,
}

impl Op<'_> {
    fn purpose(&self) -> Purpose {
        match self {
            Op::Put { .. } | Op::Delete { .. } => Purpose::Write,
            Op::Get { .. } | Op::Head { .. } | Op::GetBlock { .. } => Purpose::Read,
        }
    }
}

/// Indices of `g`'s endpoints in rendezvous order for `route_key`, over every endpoint draining
/// or not. Ranking on the proxy's stable identity (its node: one proxy per node and group), not
/// its address: a Pod recreated on the same node and disk gets a new IP but must keep its keys,
/// which it may still hold dirty.
fn group_rank(volume: &str, g: &super::Group, route_key: &str) -> Vec<usize> {
    let nodes: Vec<rendezvous::Node<'_>> = g
        .endpoints
        .iter()
        .map(|e| rendezvous::Node { address: e.node.as_deref().unwrap_or(&e.address), weight: e.weight })
        .collect();
    rendezvous::rank(volume, route_key, &nodes)
}

impl Inner {
    /// The proxies (group index, address) to try for `route_key`, in order, down ones last.
    pub(super) fn proxy_targets(&self, topo: &Topology, route_key: &str, purpose: Purpose) -> Vec<(usize, String)> {
        let mut out: Vec<(usize, String)> = Vec::new();
        for t in self.plan(topo, route_key, false, purpose).into_iter().chain(self.plan(topo, route_key, true, purpose))
        {
            if let Target::Proxy { group, address } = t
                && !out.iter().any(|(g, a)| *g == group && *a == address)
            {
                out.push((group, address));
            }
        }
        out
    }

    /// Targets in the order to try them for `route_key`: per group (chosen first), the group's
    /// serving proxies in rendezvous order, then (reads only) its draining ones, skipping those
    /// marked down; then the store when configured. With `include_down`, down proxies are
    /// included (last resort when nothing else is left). Leaving the draining proxies out of a
    /// rank keeps the others' order: the next proxy in rendezvous order takes the draining
    /// one's writes.
    fn plan(&self, topo: &Topology, route_key: &str, include_down: bool, purpose: Purpose) -> Vec<Target> {
        let order = {
            let round = self.last_round.lock().unwrap_or_else(|e| e.into_inner());
            self.selector.lock().unwrap_or_else(|e| e.into_inner()).order(&round)
        };
        let mut group_idx: Vec<usize> =
            order.iter().filter_map(|n| topo.groups.iter().position(|g| &g.name == n)).collect();
        for i in 0..topo.groups.len() {
            if !group_idx.contains(&i) {
                group_idx.push(i);
            }
        }
        let mut out = Vec::new();
        for gi in group_idx {
            let g = &topo.groups[gi];
            let (serving, draining): (Vec<usize>, Vec<usize>) =
                group_rank(self.cfg.volume.as_str(), g, route_key).into_iter().partition(|i| !g.endpoints[*i].draining);
            let draining = if purpose == Purpose::Read { draining } else { Vec::new() };
            for i in serving.into_iter().chain(draining) {
                let address = &g.endpoints[i].address;
                if include_down || !self.is_down(&g.name, address) {
                    out.push(Target::Proxy { group: gi, address: address.clone() });
                }
            }
        }
        if self.cfg.direct_store.is_some() && !include_down {
            out.push(Target::Store);
        }
        out
    }

    async fn attempt(&self, topo: &Topology, target: &Target, op: &Op<'_>) -> Result<Outcome, AttemptError> {
        match target {
            Target::Proxy { group, address } => {
                let g = &topo.groups[*group];
                let call = self.proxy_call(g, address, self.cfg.request_timeout);
                match op {
                    Op::Put { key, data, version, repair, meta } => {
                        call.put(key, data, *version, *repair, *meta).await.map(Outcome::Written)
                    }
                    Op::Get { key, range } => call.get(key, *range).await.map(Outcome::Fetched),
                    Op::Head { key } => call.head(key).await.map(Outcome::Head),
                    Op::GetBlock { key, index, block_size, size, store_etag, part } => {
                        let whole = index * block_size..(index * block_size + block_size).min(*size);
                        let cut = (*part != whole).then(|| part.clone());
                        call.get_block(key, *index, *block_size, store_etag, cut).await.map(Outcome::Block)
                    }
                    Op::Delete { key, version } => call
                        .delete(key, *version)
                        .await
                        .map(|version| Outcome::Written(Written { version, etag: None })),
                }
            }
            Target::Store => {
                let store = self
                    .cfg
                    .direct_store
                    .as_ref()
                    .ok_or_else(|| AttemptError::Unavailable("no direct store".into()))?;
                super::direct::attempt(store.as_ref(), &topo.doc.store, op).await
            }
        }
    }

    /// Counts a request `op` that `t` served, in `requests_total` and `served_total`.
    fn count_served(&self, topo: &Topology, op: &str, t: &Target) {
        let (target, by) = match t {
            Target::Proxy { group, .. } => ("proxy", topo.groups[*group].name.as_str()),
            Target::Store => ("store", "store"),
        };
        self.metrics.requests_total.with_label_values(&[op, target]).inc();
        self.metrics.served_total.with_label_values(&[op, by]).inc();
    }

    fn target_label(topo: &Topology, t: &Target) -> String {
        match t {
            Target::Proxy { group, address } => format!("{}/{}", topo.groups[*group].name, address),
            Target::Store => "store".into(),
        }
    }

    /// Tries the plan's targets in order, `retries + 1` passes with doubling back-off.
    async fn run(&self, route_key: &str, op: Op<'_>) -> Result<Outcome, ClientError> {
        let mut last = String::from("no proxy is configured");
        let passes = self.cfg.retries + 1;
        let mut attempts = 0u32;
        for pass in 0..passes {
            let topo = self.topology();
            let mut targets = self.plan(&topo, route_key, false, op.purpose());
            if targets.is_empty() {
                targets = self.plan(&topo, route_key, true, op.purpose());
            }
            let first_group = match targets.first() {
                Some(Target::Proxy { group, .. }) => Some(*group),
                _ => None,
            };
            for (i, t) in targets.iter().enumerate() {
                attempts += 1;
                match self.attempt(&topo, t, &op).await {
                    Ok(out) => {
                        let kind = match t {
                            Target::Store => "store",
                            Target::Proxy { group, .. } if Some(*group) != first_group => "group",
                            Target::Proxy { .. } => "proxy",
                        };
                        if i > 0 || pass > 0 {
                            self.metrics.fallbacks_total.with_label_values(&[kind]).inc();
                            tracing::debug!(op = op.name(), key = route_key, target = %Self::target_label(&topo, t), "served by a fallback");
                        }
                        self.count_served(&topo, op.name(), t);
                        return Ok(out);
                    }
                    Err(AttemptError::Rejected(e)) => return Err(e),
                    Err(AttemptError::Superseded(current)) => return Err(ClientError::Superseded { current }),
                    Err(AttemptError::Unreachable(m)) => {
                        if let Target::Proxy { group, address } = t {
                            let g = &topo.groups[*group].name;
                            self.metrics.proxy_errors_total.with_label_values(&[g, address, "unreachable"]).inc();
                            self.mark_down(g, address, &m);
                        }
                        last = format!("{}: {m}", Self::target_label(&topo, t));
                    }
                    Err(AttemptError::Unavailable(m)) => {
                        if let Target::Proxy { group, address } = t {
                            self.metrics
                                .proxy_errors_total
                                .with_label_values(&[&topo.groups[*group].name, address, "unavailable"])
                                .inc();
                        }
                        last = format!("{}: {m}", Self::target_label(&topo, t));
                    }
                }
            }
            if pass + 1 < passes {
                tokio::time::sleep(self.cfg.retry_backoff * 2u32.saturating_pow(pass)).await;
            }
        }
        self.metrics.requests_total.with_label_values(&[op.name(), "failed"]).inc();
        Err(ClientError::Unreachable { op: op.name(), attempts, last })
    }

    /// When the owner is recovering (it came back or was just added), the newest version of the
    /// block may live elsewhere: on the next proxy in rendezvous order (which took the owner's
    /// writes while it was away, and owned the key before it was added), on the owner in another
    /// group (group failover), or in the store (direct fallback). Returns the newest copy when it
    /// is newer than the owner's, after writing it back to the owner.
    async fn read_newest_if_recovering(&self, key: &BlockKey) -> Result<Option<Option<Fetched<Chunks>>>, ClientError> {
        let topo = self.topology();
        let plan = self.plan(&topo, key.as_str(), false, Purpose::Read);
        let Some(Target::Proxy { group: og, address: oa }) = plan.first().cloned() else {
            return Ok(None);
        };
        if let Some(draining) = self.draining_owner(&topo, og, key.as_str()).filter(|d| *d != oa) {
            // The key's owner is draining: it may hold an acknowledged write the store does not
            // have yet, and the serving owner (plan[0]) takes the key's new writes. The newer of
            // the two wins, and the serving owner is repaired with it.
            let candidates = [plan[0].clone(), Target::Proxy { group: og, address: draining }];
            return Ok(self
                .newest_and_repair(&topo, key, &candidates, "the draining owner holds a newer version")
                .await);
        }
        if !self.is_recovering(&topo.groups[og].name, &oa) {
            return Ok(None);
        }
        let mut candidates = vec![plan[0].clone()];
        if let Some(next) =
            plan.iter().find(|t| matches!(t, Target::Proxy { group, address } if *group == og && *address != oa))
        {
            candidates.push(next.clone());
        }
        let mut seen_groups = vec![og];
        for t in &plan {
            match t {
                Target::Proxy { group, .. } if !seen_groups.contains(group) => {
                    seen_groups.push(*group);
                    candidates.push(t.clone());
                }
                Target::Store => candidates.push(Target::Store),
                _ => {}
            }
        }
        Ok(self.newest_and_repair(&topo, key, &candidates, "recovering owner holds an older version").await)
    }

    /// The address of the key's owner in group `gi` when that owner is draining and not down.
    fn draining_owner(&self, topo: &Topology, gi: usize, route_key: &str) -> Option<String> {
        let g = &topo.groups[gi];
        let first = *group_rank(self.cfg.volume.as_str(), g, route_key).first()?;
        let e = &g.endpoints[first];
        (e.draining && !self.is_down(&g.name, &e.address)).then(|| e.address.clone())
    }

    /// Asks every candidate (the first is the key's owner) for its version of `key`. When one holds
    /// a newer version than the owner, fetches it, writes it back to the owner (read repair), and
    /// returns it. `None` when the owner cannot answer or no one has anything newer.
    async fn newest_and_repair(
        &self,
        topo: &Topology,
        key: &BlockKey,
        candidates: &[Target],
        why: &'static str,
    ) -> Option<Option<Fetched<Chunks>>> {
        let head = Op::Head { key };
        let heads = futures::future::join_all(candidates.iter().map(|t| self.attempt(topo, t, &head))).await;
        let version = |r: &Result<Outcome, AttemptError>| match r {
            Ok(Outcome::Head(Some(info))) => Some(info.version),
            _ => None,
        };
        let owner_v = match heads.first()? {
            Ok(Outcome::Head(h)) => h.as_ref().map_or(0, |i| i.version),
            _ => 0,
        };
        let best =
            heads.iter().enumerate().skip(1).filter_map(|(i, r)| version(r).map(|v| (i, v))).max_by_key(|(_, v)| *v);
        let (bi, bv) = best.filter(|(_, v)| *v > owner_v)?;
        // A repair copies the whole object through this client: only for objects that fit in one
        // PUT. A larger newer copy is left where it is (it is flushed from there), and logged.
        if let Ok(Outcome::Head(Some(info))) = &heads[bi]
            && info.size > MAX_REPAIR_SIZE
        {
            tracing::warn!(key = %key, size = info.size, newer = %Self::target_label(topo, &candidates[bi]), "a newer copy is too large to repair the owner with; serving the owner's");
            return None;
        }
        let get = Op::Get { key, range: None };
        let Ok(Outcome::Fetched(Some(newest))) = self.attempt(topo, &candidates[bi], &get).await else {
            return None;
        };
        // Served, like a read that `run` routes: counted where it was served from.
        self.count_served(topo, get.name(), &candidates[bi]);
        tracing::info!(
            key = %key,
            owner = %Self::target_label(topo, &candidates[0]),
            owner_version = owner_v,
            newer = %Self::target_label(topo, &candidates[bi]),
            newer_version = bv,
            "{why}; serving the newer one and repairing the owner"
        );
        self.metrics.read_repairs_total.inc();
        // The repair carries the object as it was written (attributes, and one part: repairs
        // only happen for objects small enough to be read in one GET).
        let meta = WriteMeta { attrs: &newest.info.attrs, parts: &[] };
        let data = newest.data.clone().into_bytes();
        let repair = Op::Put { key, data: PutData::Whole(data), version: newest.version(), repair: true, meta };
        if let Err(e) = self.attempt(topo, &candidates[0], &repair).await {
            tracing::warn!(key = %key, error = ?e, "read repair of the owner failed");
        }
        Some(Some(newest))
    }

    /// A read found something older than this client's own last write: look everywhere the newer
    /// copy may be (every proxy of every group, then the store) and serve the newest if it is at
    /// least `want`. Fails rather than go back in time.
    async fn read_own_write(&self, key: &BlockKey, want: u64) -> Result<Fetched<Chunks>, ClientError> {
        let topo = self.topology();
        let mut candidates = self.plan(&topo, key.as_str(), false, Purpose::Read);
        if let Some(pos) = candidates.iter().position(|t| matches!(t, Target::Store)) {
            // The store goes last: it is the slowest, and the plan already ends with it.
            let store = candidates.remove(pos);
            candidates.push(store);
        }
        match self.newest_and_repair(&topo, key, &candidates, "a read was older than this client's last write").await {
            Some(Some(f)) if f.version() >= want => Ok(f),
            _ => Err(ClientError::Stale { key: key.to_string(), want }),
        }
    }
}

impl Client {
    /// Writes an object of one part (no attributes); returns its version.
    pub async fn put(&self, key: &BlockKey, data: Bytes) -> Result<u64, ClientError> {
        let meta = WriteMeta { attrs: &ObjectAttrs::default(), parts: &[] };
        Ok(self.write(key, key.as_str(), Some((data.into(), meta))).await?.version)
    }

    /// Writes an object in one request (at most the proxies' `--max-block-size`), with its
    /// attributes and the part sizes its store upload will use (empty: one part). Bytes still
    /// arriving ([`super::arriving`]) are relayed to the proxy as they come.
    pub async fn put_object(
        &self,
        key: &BlockKey,
        data: PutData,
        attrs: &ObjectAttrs,
        parts: &[u64],
    ) -> Result<Written, ClientError> {
        self.write(key, key.as_str(), Some((data, WriteMeta { attrs, parts }))).await
    }

    /// A put (`Some`) or delete (`None`). A write that a concurrent one overtook (409) is sent
    /// again with a newer version, so an acknowledged write is always the newest when acknowledged.
    async fn write(
        &self,
        key: &BlockKey,
        route_key: &str,
        data: Option<(PutData, WriteMeta<'_>)>,
    ) -> Result<Written, ClientError> {
        const ATTEMPTS: usize = 5;
        let inner = &self.inner;
        let mut current = 0;
        for _ in 0..ATTEMPTS {
            let version = inner.clock.next();
            let op = match &data {
                Some((d, meta)) => Op::Put { key, data: d.clone(), version, repair: false, meta: *meta },
                None => Op::Delete { key, version },
            };
            match inner.run(route_key, op).await {
                Ok(Outcome::Written(w)) => {
                    self.record_write(key, w.version, data.is_none());
                    return Ok(w);
                }
                Ok(_) => unreachable!("writes yield a version"),
                // Our own earlier attempt (answered too late, retried) already holds this version.
                Err(ClientError::Superseded { current }) if current == version => {
                    self.record_write(key, version, data.is_none());
                    return Ok(Written { version, etag: None });
                }
                Err(ClientError::Superseded { current: c }) => {
                    current = c;
                    inner.clock.observe(c);
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Superseded { current })
    }

    /// Remembers an acknowledged write for read-your-writes (ADR 0002).
    pub(super) fn record_write(&self, key: &BlockKey, version: u64, deleted: bool) {
        self.inner.clock.observe(version);
        self.inner.recent.record(key.as_str(), recent::Written { version, deleted });
    }

    /// Reads a whole object, or a byte range of it (`range` is an HTTP `Range` value), in one
    /// request to its home proxy: for objects up to one block, and for tests.
    pub async fn get(&self, key: &BlockKey, range: Option<&str>) -> Result<Option<Fetched>, ClientError> {
        Ok(self.get_chunks(key, range).await?.map(Fetched::into_contiguous))
    }

    /// [`Client::get`], the body left in the chunks it arrived in.
    pub async fn get_chunks(
        &self,
        key: &BlockKey,
        range: Option<&str>,
    ) -> Result<Option<Fetched<Chunks>>, ClientError> {
        let mut out = None;
        if let Some(found) = self.inner.read_newest_if_recovering(key).await? {
            out = Some(match found {
                Some(f) => Some(slice_range(f.data, f.info, range)?),
                None => None,
            });
        }
        let out = match out {
            Some(out) => out,
            None => match self.inner.run(key.as_str(), Op::Get { key, range }).await? {
                Outcome::Fetched(f) => f,
                _ => unreachable!("get yields a block"),
            },
        };
        let out = match self.inner.recent.judge(key.as_str(), out.as_ref().map(|f| f.version())) {
            Judgement::Fresh => out,
            Judgement::Deleted => None,
            Judgement::Stale { want } => {
                self.inner.metrics.stale_reads_total.inc();
                let newest = self.inner.read_own_write(key, want).await?;
                Some(slice_range(newest.data, newest.info, range)?)
            }
        };
        if let Some(f) = &out {
            self.inner.clock.observe(f.version());
        }
        Ok(out)
    }

    /// The object's current version as its home proxy knows it, or `None` when it does not exist.
    pub async fn head(&self, key: &BlockKey) -> Result<Option<ObjectInfo>, ClientError> {
        let found = match self.inner.read_newest_if_recovering(key).await? {
            Some(found) => found.map(|f| f.info),
            None => match self.inner.run(key.as_str(), Op::Head { key }).await? {
                Outcome::Head(h) => h,
                _ => unreachable!("head yields a size"),
            },
        };
        match self.inner.recent.judge(key.as_str(), found.as_ref().map(|i| i.version)) {
            Judgement::Fresh => Ok(found),
            Judgement::Deleted => Ok(None),
            Judgement::Stale { want } => {
                self.inner.metrics.stale_reads_total.inc();
                Ok(Some(self.inner.read_own_write(key, want).await?.info))
            }
        }
    }

    /// Block `index` of a clean object, from the proxy that owns that block (ADR 0004), failing
    /// over like any read. [`ClientError::Changed`] when the store object is no longer `store_etag`.
    /// Bytes `part` (object offsets inside block `index`) of a clean object, from the block's owner.
    pub async fn get_block(
        &self,
        key: &BlockKey,
        index: u64,
        block_size: u64,
        size: u64,
        store_etag: &str,
        part: Range<u64>,
    ) -> Result<Chunks, ClientError> {
        let route = crate::protocol::block_route_key(key.as_str(), index);
        match self.inner.run(&route, Op::GetBlock { key, index, block_size, size, store_etag, part }).await? {
            Outcome::Block(b) => Ok(b),
            _ => unreachable!("a block read yields bytes"),
        }
    }

    pub async fn delete(&self, key: &BlockKey) -> Result<u64, ClientError> {
        Ok(self.write(key, key.as_str(), None).await?.version)
    }
}
