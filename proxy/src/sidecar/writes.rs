//! Writing objects through the S3 endpoint with bounded memory: a body is cut into parts; one
//! that fits in one part is a single PUT to the key's home proxy (relayed to it as it arrives
//! when its length is declared, ADR 0022), anything larger becomes a multipart upload there,
//! the next part read while the previous one is sent (at most two parts in memory). The same
//! path serves copies, whose body is a read of the source.
//!
//! Across writes, what they hold is bounded by the client's write budget (`--write-buffer-bytes`):
//! a part's bytes are taken before it is read and given back once its proxy has answered. A write
//! never waits for the budget while holding a part it has not sent, so writes cannot wait on
//! each other in a cycle: the bytes held are always on their way to a proxy.

use super::errors::map_err;
use crate::budget::QueuedBudget;
use crate::client::{Client, ClientError, Feed};
use crate::protocol::{BlockKey, CompletePart, CompleteUpload, DEFAULT_PART_SIZE, MAX_PARTS, ObjectAttrs};
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};
use md5::{Digest, Md5};
use s3s::{S3Error, S3Result, s3_error};
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// A body being read, as a stream of chunks.
pub type Body = BoxStream<'static, Result<Bytes, S3Error>>;

/// Reads a body in parts of a given size, each part's bytes taken from the write budget first.
pub struct PartReader {
    body: Body,
    carry: Bytes,
    ended: bool,
    read: u64,
    limit: u64,
    /// What the body declares (its Content-Length), so a small body takes only what it needs.
    expected: Option<u64>,
    budget: Arc<QueuedBudget>,
}

/// A part read from a body, and its bytes of the write budget: keep `held` until its proxy has
/// answered.
pub struct Part {
    pub data: Bytes,
    pub held: OwnedSemaphorePermit,
}

impl PartReader {
    /// `limit`: the most bytes accepted; more is `EntityTooLarge`. `expected`: the declared
    /// length, if any.
    pub fn new(body: Body, limit: u64, expected: Option<u64>, budget: Arc<QueuedBudget>) -> Self {
        Self { body, carry: Bytes::new(), ended: false, read: 0, limit, expected, budget }
    }

    /// The next `size` bytes (fewer at the end), or `None` once nothing is left. Waits for the
    /// write budget first.
    pub async fn next_part(&mut self, size: usize) -> S3Result<Option<Part>> {
        self.fill(size, None).await
    }

    /// The whole body, which declares fewer than `size` bytes, as one part; each chunk is also
    /// given to `feed` as it arrives, and the whole once it has all arrived. A body that fails,
    /// or ends short of its declared length, drops `feed` unfinished: its relay then ends in an
    /// error and stores nothing.
    pub async fn relay_whole(&mut self, size: usize, feed: Feed) -> S3Result<Part> {
        let part = self.fill(size, Some(feed)).await?;
        Ok(part.expect("a relayed part is whole or an error"))
    }

    async fn fill(&mut self, size: usize, mut feed: Option<Feed>) -> S3Result<Option<Part>> {
        if self.ended && self.carry.is_empty() && feed.is_none() {
            return Ok(None);
        }
        let left = self.expected.map(|n| n.saturating_sub(self.read) + self.carry.len() as u64);
        let want = left.map_or(size as u64, |l| l.min(size as u64));
        let held = self.budget.take(want).await;
        // All of it at once: growing by doubling would hold two copies for a while, beyond the
        // budget. Pages not yet written are not resident, so an undeclared length costs nothing.
        let mut buf = BytesMut::with_capacity(want as usize);
        loop {
            if !self.carry.is_empty() {
                let take = (size - buf.len()).min(self.carry.len());
                let piece = self.carry.split_to(take);
                buf.extend_from_slice(&piece);
                if let Some(f) = &mut feed {
                    f.chunk(piece).await;
                }
            }
            if buf.len() == size || self.ended {
                break;
            }
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    self.read += chunk.len() as u64;
                    if self.read > self.limit {
                        return Err(s3_error!(EntityTooLarge, "the body exceeds {} bytes", self.limit));
                    }
                    self.carry = chunk;
                }
                Some(Err(e)) => return Err(e),
                None => self.ended = true,
            }
        }
        let data = buf.freeze();
        if let Some(f) = feed {
            if self.expected != Some(data.len() as u64) {
                return Err(s3_error!(
                    IncompleteBody,
                    "the body ended after {} bytes, {:?} were declared",
                    data.len(),
                    self.expected
                ));
            }
            f.finish(data.clone());
            return Ok(Some(Part { data, held }));
        }
        Ok((!data.is_empty()).then(|| Part { data, held }))
    }
}

/// The part size for an object of `size` bytes: 8 MiB, or larger so that it needs at most
/// 10,000 parts (S3's limit), in whole MiB.
pub fn part_size_for(size: u64) -> u64 {
    let min = size.div_ceil(u64::from(MAX_PARTS));
    DEFAULT_PART_SIZE.max(min.div_ceil(1 << 20) << 20)
}

/// What a write answered.
pub struct Stored {
    /// Quoted S3 ETag.
    pub etag: String,
    pub version: u64,
}

fn quoted_md5(data: &[u8]) -> String {
    format!("\"{}\"", hex::encode(Md5::digest(data)))
}

/// Writes `body` as `key` (`part_size` bytes per part).
pub async fn write_object(
    client: &Client,
    key: &BlockKey,
    attrs: &ObjectAttrs,
    mut body: PartReader,
    part_size: u64,
) -> S3Result<Stored> {
    if let Some(len) = body.expected.filter(|n| (1..part_size).contains(n)) {
        return relay_one_part(client, key, attrs, body, len).await;
    }
    // Held (with its bytes of the write budget) until the proxy has it. No copy of its bytes
    // may outlive it: they would stay in memory after the budget got them back.
    let first = match body.next_part(part_size as usize).await? {
        Some(part) if part.data.len() as u64 == part_size => part,
        small => {
            let data = small.as_ref().map(|p| p.data.clone()).unwrap_or_default();
            // The proxy answers the ETag it computed; hashing here too would only cost the ack
            // time (2 ms a MiB), so only for a proxy that does not.
            let w = client.put_object(key, data.clone().into(), attrs, &[]).await.map_err(map_err)?;
            return Ok(Stored { etag: w.etag.unwrap_or_else(|| quoted_md5(&data)), version: w.version });
        }
    };
    let upload = client.create_upload(key, attrs).await.map_err(map_err)?;
    match upload_parts(client, key, &upload, first, body, part_size).await {
        Ok(parts) => {
            let done = client.complete_upload(key, &upload, parts).await.map_err(map_err)?;
            Ok(Stored { etag: done.etag, version: done.version })
        }
        Err(e) => {
            if let Err(abort) = client.abort_upload(key, &upload).await {
                tracing::warn!(key = %key, error = %abort, "aborting a failed upload failed; the proxy expires it later");
            }
            Err(e)
        }
    }
}

/// Writes a body declared to fit in one part by relaying it to its proxy as it arrives (ADR
/// 0022): the proxy receives and hashes it while this side still receives it, instead of after.
/// The part is still read whole, for a retry or a failover to send.
async fn relay_one_part(
    client: &Client,
    key: &BlockKey,
    attrs: &ObjectAttrs,
    mut body: PartReader,
    len: u64,
) -> S3Result<Stored> {
    let (feed, data) = crate::client::arriving(len);
    let read = body.relay_whole(len as usize, feed);
    let write = async { client.put_object(key, data, attrs, &[]).await.map_err(map_err) };
    // The body's own error comes first: the write can only fail because of it once the body has.
    let (part, w) = tokio::try_join!(read, write)?;
    Ok(Stored { etag: w.etag.unwrap_or_else(|| quoted_md5(&part.data)), version: w.version })
}

/// Sends `first` and every further part of `body`, reading part n+1 while part n is sent.
async fn upload_parts(
    client: &Client,
    key: &BlockKey,
    upload: &crate::client::Upload,
    first: Part,
    mut body: PartReader,
    part_size: u64,
) -> S3Result<CompleteUpload> {
    let send = |n: u32, part: Part| {
        let (client, key, upload) = (client.clone(), key.clone(), upload.clone());
        tokio::spawn(async move {
            let sent = client.upload_part(&key, &upload, n, part.data).await.map(|etag| (n, etag));
            drop(part.held);
            sent
        })
    };
    let mut parts = Vec::new();
    let mut n = 1u32;
    let mut in_flight = send(n, first);
    while let Some(next) = body.next_part(part_size as usize).await? {
        n += 1;
        if n > MAX_PARTS {
            return Err(s3_error!(EntityTooLarge, "the object needs more than {MAX_PARTS} parts of {part_size} bytes"));
        }
        let done = std::mem::replace(&mut in_flight, send(n, next));
        parts.push(joined(done.await)?);
    }
    parts.push(joined(in_flight.await)?);
    Ok(CompleteUpload {
        parts: parts.into_iter().map(|(n, etag)| CompletePart { part_number: n, etag: Some(etag) }).collect(),
        version: None,
    })
}

fn joined(r: Result<Result<(u32, String), ClientError>, tokio::task::JoinError>) -> S3Result<(u32, String)> {
    r.map_err(|e| s3_error!(InternalError, "a part upload task failed: {e}"))?.map_err(map_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(chunks: &[&'static [u8]]) -> Body {
        let chunks: Vec<Bytes> = chunks.iter().map(|c| Bytes::from_static(c)).collect();
        futures::stream::iter(chunks.into_iter().map(Ok)).boxed()
    }

    fn budget(bytes: u64) -> Arc<QueuedBudget> {
        QueuedBudget::new(bytes, prometheus::IntCounter::new("waits", "waits").unwrap())
    }

    #[tokio::test]
    async fn parts_are_cut_at_the_part_size_whatever_the_chunks() {
        let mut r = PartReader::new(body(&[b"abc", b"defgh", b"", b"ij"]), 100, None, budget(1 << 20));
        for want in ["abcd", "efgh", "ij"] {
            assert_eq!(r.next_part(4).await.unwrap().unwrap().data, want);
        }
        assert!(r.next_part(4).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused() {
        let mut r = PartReader::new(body(&[b"abcdef"]), 5, None, budget(1 << 20));
        let e = r.next_part(4).await.err().unwrap();
        assert_eq!(e.code().as_str(), "EntityTooLarge");
    }

    #[tokio::test]
    async fn a_part_holds_its_bytes_of_the_budget_until_dropped_and_a_declared_length_takes_no_more() {
        let b = budget(64 << 10);
        let data = Bytes::from(vec![7u8; 40 << 10]);
        let stream = || futures::stream::iter([Ok(data.clone())]).boxed();
        let mut declared = PartReader::new(stream(), 1 << 20, Some(40 << 10), b.clone());
        let part = declared.next_part(1 << 20).await.unwrap().unwrap();
        assert_eq!(part.data.len(), 40 << 10);
        assert_eq!(b.in_use(), 40 << 10, "the declared length, not the part size");
        // Without a declared length a part takes its whole size: here all 64 KiB, so it waits.
        let mut undeclared = PartReader::new(stream(), 1 << 20, None, b.clone());
        let waiting = tokio::spawn(async move { undeclared.next_part(1 << 20).await.map(|p| p.map(|p| p.data.len())) });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the budget is held by the first part");
        drop(part);
        assert_eq!(waiting.await.unwrap().unwrap(), Some(40 << 10));
        assert_eq!(b.in_use(), 0, "every part gave its bytes back");
    }

    #[test]
    fn part_sizes_keep_within_ten_thousand_parts() {
        assert_eq!(part_size_for(100 << 20), DEFAULT_PART_SIZE);
        let five_tib = 5u64 << 40;
        let p = part_size_for(five_tib);
        assert!(five_tib.div_ceil(p) <= u64::from(MAX_PARTS) && p.is_multiple_of(1 << 20));
    }
}
