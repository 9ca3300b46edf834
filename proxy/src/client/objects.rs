//! Objects of any size on top of the routed requests (ADR 0004):
//!
//! - reads: the home proxy says which version to read; a version in the store is read in blocks
//!   from the proxies that own them (striped, pinned to the store ETag, a bounded read-ahead),
//!   a version only on its home is read from the home in block-sized ranges pinned to the version;
//! - multipart uploads: staged on the key's home proxy, which the upload id names, so the parts
//!   of one upload always reach the same disk, also after a restart of this sidecar;
//! - listings one page at a time, with the unflushed writes of every proxy merged in.

use super::info::ObjectInfo;
use super::read_ahead::{PIECE, holding, read_ahead, sent_on};
use super::transport::AttemptError;
use super::{Client, ClientError, Inner};
use crate::protocol::{BlockKey, CompleteUpload, ObjectAttrs, UploadCompleted, UploadParts};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};

/// Blocks fetched ahead of the one being sent: bounds a read's memory to this many blocks while
/// keeping several proxies busy (and all reads together to `--read-ahead-bytes`).
const READ_AHEAD: usize = 4;
/// Attempts of one upload request against its (only) proxy.
const UPLOAD_ATTEMPTS: u32 = 3;

/// A read in progress: the version being read, the byte range `[start, end)`, and its bytes.
pub struct ObjectRead {
    pub info: ObjectInfo,
    pub start: u64,
    pub end: u64,
    pub body: BoxStream<'static, Result<Bytes, ClientError>>,
}

/// A multipart upload staged on one proxy. Its [`Upload::id`] names the proxy, so any sidecar
/// can continue it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub group: String,
    pub address: String,
    pub proxy_upload_id: String,
}

impl Upload {
    /// The id an S3 client sees: hex of `group`, `address` and the proxy's id.
    pub fn id(&self) -> String {
        hex::encode(format!("{}\n{}\n{}", self.group, self.address, self.proxy_upload_id))
    }

    pub fn parse(id: &str) -> Option<Self> {
        let raw = String::from_utf8(hex::decode(id).ok()?).ok()?;
        let mut it = raw.splitn(3, '\n');
        let (group, address, proxy_upload_id) = (it.next()?, it.next()?, it.next()?);
        (!proxy_upload_id.is_empty()).then(|| Self {
            group: group.to_owned(),
            address: address.to_owned(),
            proxy_upload_id: proxy_upload_id.to_owned(),
        })
    }
}

/// `[start, end)` of an HTTP `Range` value on `size` bytes; the whole object without one.
pub(super) fn resolve_range(range: Option<&str>, size: u64) -> Result<(u64, u64), ClientError> {
    let Some(r) = range else { return Ok((0, size)) };
    let parsed = http_range_header::parse_range_header(r)
        .map_err(|e| ClientError::Rejected { status: 400, message: format!("malformed Range {r:?}: {e}") })?;
    let ranges =
        parsed.validate(size).map_err(|e| ClientError::RangeNotSatisfiable(format!("{r:?} on {size} bytes: {e}")))?;
    match ranges.as_slice() {
        [one] => Ok((*one.start(), *one.end() + 1)),
        _ => Err(ClientError::RangeNotSatisfiable("only a single byte range is supported".into())),
    }
}

/// Whether a read of the HTTP `Range` value `range` (the whole object without one) starts in the
/// first block; a suffix range (`bytes=-N`) depends on the size, so it does not count.
fn starts_in_first_block(range: Option<&str>, bs: u64) -> bool {
    let Some(r) = range else { return true };
    let first = r.trim().strip_prefix("bytes=").and_then(|r| r.split_once('-')).map(|(a, _)| a.trim());
    first.and_then(|a| a.parse::<u64>().ok()).is_some_and(|a| a < bs)
}

impl Inner {
    /// The volume's block size, as the discovery document gives it.
    pub(super) fn block_size(&self) -> u64 {
        use crate::protocol::{DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};
        // The operator validates it; a hand-written document with a wild value gets the default.
        Some(self.topology().doc.block_size)
            .filter(|b| (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(b))
            .unwrap_or(DEFAULT_BLOCK_SIZE)
    }
}

impl Client {
    /// Reads an object (or the byte range `range`, an HTTP `Range` value) as a stream; `None`
    /// when it does not exist. The stream ends with [`ClientError::Changed`] rather than mix two
    /// versions when the object is replaced while it is read.
    pub async fn read_object(&self, key: &BlockKey, range: Option<&str>) -> Result<Option<ObjectRead>, ClientError> {
        let bs = self.inner.block_size();
        let small = &self.inner.small;
        // One GET of the first block answers what a HEAD would (the version, checked like a
        // HEAD's for read-your-writes): for an object of at most one block it is the whole
        // object, for a larger one its first block, which the read then starts with. A proxy's
        // miss fetches it with one request to the store (ADR 0011). Asked when the read starts
        // in the first block or the key was last seen small; a read further into a large object
        // asks a HEAD rather than move a block it does not want.
        //
        // Its bytes come from the read budget like any block's until sent: a block's, or for a
        // key seen small that size's, asking for at most a piece more in case it grew. When
        // they are not free it asks for the first piece only, so that every read in progress
        // holds at most a piece outside the budget (ADR 0019).
        let mut known = None;
        let mut first_block = None;
        let mut first_len = bs;
        let mut first_held = None;
        let seen_small = small.size_of(key.as_str());
        if seen_small.is_some() || starts_in_first_block(range, bs) {
            let want = seen_small.map_or(bs, |n| n.clamp(1, bs));
            first_len = want.max(PIECE).min(bs);
            first_held = self.inner.read_budget.try_take(want);
            if first_held.is_none() && want > PIECE {
                first_len = PIECE;
                self.inner.metrics.read_pieces_total.inc();
            }
            match self.get_chunks(key, Some(&format!("bytes=0-{}", first_len - 1))).await {
                Ok(None) => return Ok(None),
                Ok(Some(f)) if f.info.size > first_len => {
                    if f.data.len() as u64 == first_len {
                        first_block = Some(f.data);
                    }
                    known = Some(f.info);
                }
                Ok(Some(f)) if f.data.len() as u64 == f.info.size => {
                    small.remember(key.as_str(), f.info.size);
                    if let Some(held) = &mut first_held {
                        self.inner.read_budget.keep_only(held, f.info.size);
                    }
                    let (start, end) = resolve_range(range, f.info.size)?;
                    let body = holding(sent_on(f.data.slice(start as usize..end as usize)).boxed(), first_held);
                    return Ok(Some(ObjectRead { info: f.info, start, end, body }));
                }
                // Emptied (a range of nothing is unsatisfiable) or oddly answered: HEAD first.
                Ok(Some(_)) | Err(ClientError::RangeNotSatisfiable(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let info = match known {
            Some(info) => info,
            None => match self.head(key).await? {
                Some(info) => info,
                None => return Ok(None),
            },
        };
        if (1..=bs).contains(&info.size) {
            small.remember(key.as_str(), info.size);
        } else {
            small.forget(key.as_str());
        }
        let (start, end) = resolve_range(range, info.size)?;
        if start == end {
            return Ok(Some(ObjectRead { info, start, end, body: futures::stream::empty().boxed() }));
        }
        // The first block (or piece), when the GET above brought it, is not read again.
        let (head, rest_start) = match first_block {
            Some(block) if start < first_len => {
                (Some(block.slice(start as usize..end.min(first_len) as usize)), first_len)
            }
            _ => (None, start),
        };
        let rest = if rest_start >= end {
            futures::stream::empty().boxed()
        } else {
            match info.store_etag.clone() {
                Some(etag) if info.size > bs => self.striped(key, &info, etag, rest_start, end, bs),
                _ => self.held_by_home(key, info.version, rest_start, end, bs),
            }
        };
        let body = match head {
            Some(head) => holding(sent_on(head).boxed(), first_held).chain(rest).boxed(),
            None => rest,
        };
        Ok(Some(ObjectRead { info, start, end, body }))
    }

    /// The blocks covering `[start, end)` of a version in the store, each from its owner.
    fn striped(
        &self,
        key: &BlockKey,
        info: &ObjectInfo,
        etag: String,
        start: u64,
        end: u64,
        bs: u64,
    ) -> BoxStream<'static, Result<Bytes, ClientError>> {
        let (client, key, size) = (self.clone(), key.clone(), info.size);
        let blocks = (start / bs..=(end - 1) / bs).map(move |i| start.max(i * bs)..end.min((i + 1) * bs));
        // Any range within one block: the block's bytes that the read covers, or a piece of them.
        // Only those bytes travel.
        let fetch = move |part: std::ops::Range<u64>| {
            let (client, key, etag) = (client.clone(), key.clone(), etag.clone());
            async move {
                let i = part.start / bs;
                let first = i * bs;
                let whole = first..(first + bs).min(size);
                let got = client.get_block(&key, i, bs, size, &etag, part.clone()).await?;
                match got.len() as u64 {
                    n if n == part.end - part.start => Ok(got),
                    // A proxy of an older release answers the whole block.
                    n if n == whole.end - whole.start => {
                        Ok(got.slice((part.start - first) as usize..(part.end - first) as usize))
                    }
                    // Another length belongs to another object, whatever its ETag said.
                    _ => Err(ClientError::Changed { key: key.to_string() }),
                }
            }
        };
        self.read_ahead(READ_AHEAD, blocks, fetch)
    }

    /// `[start, end)` of a version held by its home proxy, in block-sized ranges, each checked to
    /// still be that version.
    fn held_by_home(
        &self,
        key: &BlockKey,
        version: u64,
        start: u64,
        end: u64,
        bs: u64,
    ) -> BoxStream<'static, Result<Bytes, ClientError>> {
        let (client, key) = (self.clone(), key.clone());
        let blocks = (start..end).step_by(bs as usize).map(move |a| a..(a + bs).min(end));
        let fetch = move |r: std::ops::Range<u64>| {
            let (client, key) = (client.clone(), key.clone());
            async move {
                let range = format!("bytes={}-{}", r.start, r.end - 1);
                match client.get_chunks(&key, Some(&range)).await? {
                    Some(f) if f.version() == version && f.data.len() as u64 == r.end - r.start => Ok(f.data),
                    _ => Err(ClientError::Changed { key: key.to_string() }),
                }
            }
        };
        self.read_ahead(2, blocks, fetch)
    }

    /// [`read_ahead`] within this client's read budget.
    fn read_ahead<I, F, Fut>(&self, depth: usize, blocks: I, fetch: F) -> BoxStream<'static, Result<Bytes, ClientError>>
    where
        I: Iterator<Item = std::ops::Range<u64>> + Send + 'static,
        F: Fn(std::ops::Range<u64>) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<super::Chunks, ClientError>> + Send + 'static,
    {
        let (budget, in_pieces) = (self.inner.read_budget.clone(), self.inner.metrics.read_pieces_total.clone());
        read_ahead(budget, depth, blocks, fetch, in_pieces)
    }

    /// Starts a multipart upload on the key's home proxy (the first reachable one in rendezvous
    /// order of the chosen group, failing over like a write).
    pub async fn create_upload(&self, key: &BlockKey, attrs: &ObjectAttrs) -> Result<Upload, ClientError> {
        let inner = &self.inner;
        let topo = inner.topology();
        let mut last = String::from("no proxy is configured");
        let mut attempts = 0;
        for (group, address) in inner.proxy_targets(&topo, key.as_str(), super::ops::Purpose::Write) {
            attempts += 1;
            let call = inner.proxy_call(&topo.groups[group], &address, inner.cfg.request_timeout);
            match call.create_upload(key, attrs).await {
                Ok(id) => {
                    return Ok(Upload { group: topo.groups[group].name.clone(), address, proxy_upload_id: id });
                }
                Err(AttemptError::Rejected(e)) => return Err(e),
                Err(e) => last = format!("{address}: {e:?}"),
            }
        }
        Err(ClientError::Unreachable { op: "create upload", attempts, last })
    }

    /// Runs `op` against the upload's proxy, retrying transient failures there (the parts live
    /// on its disk: no other proxy can take over).
    async fn on_upload_proxy(
        &self,
        key: &BlockKey,
        upload: &Upload,
        op: UploadOp<'_>,
    ) -> Result<UploadOutcome, ClientError> {
        let inner = &self.inner;
        let id = upload.proxy_upload_id.as_str();
        let mut last = String::new();
        for attempt in 0..UPLOAD_ATTEMPTS {
            let topo = inner.topology();
            let Some(group) = topo.groups.iter().find(|g| g.name == upload.group) else {
                return Err(ClientError::NoSuchUpload(format!(
                    "the upload's group {:?} is no longer published",
                    upload.group
                )));
            };
            let call = inner.proxy_call(group, &upload.address, inner.cfg.request_timeout);
            let result = match &op {
                UploadOp::Part { part, data } => {
                    call.upload_part(key, id, *part, data.clone()).await.map(UploadOutcome::Etag)
                }
                UploadOp::List => call.list_parts(key, id).await.map(UploadOutcome::Parts),
                UploadOp::Complete(parts) => call.complete_upload(key, id, parts).await.map(UploadOutcome::Completed),
                UploadOp::Abort => call.abort_upload(key, id).await.map(|()| UploadOutcome::Aborted),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(AttemptError::Rejected(e)) => return Err(e),
                Err(AttemptError::Superseded(current)) => return Err(ClientError::Superseded { current }),
                Err(AttemptError::Unreachable(m) | AttemptError::Unavailable(m)) => last = m,
            }
            if attempt + 1 < UPLOAD_ATTEMPTS {
                tokio::time::sleep(inner.cfg.retry_backoff * 2u32.pow(attempt)).await;
            }
        }
        Err(ClientError::Unreachable { op: op.name(), attempts: UPLOAD_ATTEMPTS, last })
    }

    /// Stages part `part` (1-10000); returns its ETag.
    pub async fn upload_part(
        &self,
        key: &BlockKey,
        upload: &Upload,
        part: u32,
        data: Bytes,
    ) -> Result<String, ClientError> {
        match self.on_upload_proxy(key, upload, UploadOp::Part { part, data }).await? {
            UploadOutcome::Etag(e) => Ok(e),
            _ => unreachable!("a part upload yields an ETag"),
        }
    }

    pub async fn list_parts(&self, key: &BlockKey, upload: &Upload) -> Result<UploadParts, ClientError> {
        match self.on_upload_proxy(key, upload, UploadOp::List).await? {
            UploadOutcome::Parts(p) => Ok(p),
            _ => unreachable!("listing parts yields parts"),
        }
    }

    /// Assembles and commits the object: acknowledged like a PUT once this returns.
    pub async fn complete_upload(
        &self,
        key: &BlockKey,
        upload: &Upload,
        mut parts: CompleteUpload,
    ) -> Result<UploadCompleted, ClientError> {
        parts.version = Some(self.inner.clock.next());
        match self.on_upload_proxy(key, upload, UploadOp::Complete(&parts)).await? {
            UploadOutcome::Completed(done) => {
                self.record_write(key, done.version, false);
                Ok(done)
            }
            _ => unreachable!("completing yields the committed version"),
        }
    }

    pub async fn abort_upload(&self, key: &BlockKey, upload: &Upload) -> Result<(), ClientError> {
        self.on_upload_proxy(key, upload, UploadOp::Abort).await.map(drop)
    }
}

/// A request of an upload to its proxy.
enum UploadOp<'a> {
    Part { part: u32, data: Bytes },
    List,
    Complete(&'a CompleteUpload),
    Abort,
}

impl UploadOp<'_> {
    fn name(&self) -> &'static str {
        match self {
            Self::Part { .. } => "upload part",
            Self::List => "list parts",
            Self::Complete(_) => "complete upload",
            Self::Abort => "abort upload",
        }
    }
}

enum UploadOutcome {
    Etag(String),
    Parts(UploadParts),
    Completed(UploadCompleted),
    Aborted,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ids_name_their_proxy() {
        let u = Upload { group: "dc1".into(), address: "10.0.0.1:8443".into(), proxy_upload_id: "abc".into() };
        assert_eq!(Upload::parse(&u.id()), Some(u));
        assert_eq!(Upload::parse("zz"), None);
        assert_eq!(Upload::parse(&hex::encode("dc1\n10.0.0.1:1")), None);
    }

    #[test]
    fn ranges_resolve_to_half_open_intervals() {
        assert_eq!(resolve_range(None, 10).unwrap(), (0, 10));
        assert_eq!(resolve_range(Some("bytes=2-4"), 10).unwrap(), (2, 5));
        assert_eq!(resolve_range(Some("bytes=-3"), 10).unwrap(), (7, 10));
        assert_eq!(resolve_range(Some("bytes=5-"), 10).unwrap(), (5, 10));
        assert!(matches!(resolve_range(Some("bytes=20-30"), 10), Err(ClientError::RangeNotSatisfiable(_))));
    }
}
