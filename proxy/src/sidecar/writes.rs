//! Writing objects through the S3 endpoint with bounded memory: a body is cut into parts; one
//! that fits in one part is a single PUT to the key's home proxy, anything larger becomes a
//! multipart upload there, the next part read while the previous one is sent (at most two parts
//! in memory). The same path serves copies, whose body is a read of the source.

use super::errors::map_err;
use crate::client::{Client, ClientError};
use crate::protocol::{BlockKey, CompletePart, CompleteUpload, DEFAULT_PART_SIZE, MAX_PARTS, ObjectAttrs};
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};
use md5::{Digest, Md5};
use s3s::{S3Error, S3Result, s3_error};

/// A body being read, as a stream of chunks.
pub type Body = BoxStream<'static, Result<Bytes, S3Error>>;

/// Reads a body in parts of a given size.
pub struct PartReader {
    body: Body,
    carry: Bytes,
    ended: bool,
    read: u64,
    limit: u64,
}

impl PartReader {
    /// `limit`: the most bytes accepted; more is `EntityTooLarge`.
    pub fn new(body: Body, limit: u64) -> Self {
        Self { body, carry: Bytes::new(), ended: false, read: 0, limit }
    }

    /// The next `size` bytes (fewer at the end), or `None` once nothing is left.
    pub async fn next_part(&mut self, size: usize) -> S3Result<Option<Bytes>> {
        let mut buf = BytesMut::with_capacity(size.min(self.carry.len().max(64 << 10)));
        loop {
            if !self.carry.is_empty() {
                let take = (size - buf.len()).min(self.carry.len());
                buf.extend_from_slice(&self.carry.split_to(take));
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
        Ok((!buf.is_empty()).then(|| buf.freeze()))
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
    let first = body.next_part(part_size as usize).await?.unwrap_or_default();
    if (first.len() as u64) < part_size {
        // The proxy answers the ETag it computed; hashing here too would only cost the ack time
        // (2 ms a MiB), so only for a proxy that does not.
        let w = client.put_object(key, first.clone(), attrs, &[]).await.map_err(map_err)?;
        return Ok(Stored { etag: w.etag.unwrap_or_else(|| quoted_md5(&first)), version: w.version });
    }
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

/// Sends `first` and every further part of `body`, reading part n+1 while part n is sent.
async fn upload_parts(
    client: &Client,
    key: &BlockKey,
    upload: &crate::client::Upload,
    first: Bytes,
    mut body: PartReader,
    part_size: u64,
) -> S3Result<CompleteUpload> {
    let send = |n: u32, data: Bytes| {
        let (client, key, upload) = (client.clone(), key.clone(), upload.clone());
        tokio::spawn(async move { client.upload_part(&key, &upload, n, data).await.map(|etag| (n, etag)) })
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

    #[tokio::test]
    async fn parts_are_cut_at_the_part_size_whatever_the_chunks() {
        let mut r = PartReader::new(body(&[b"abc", b"defgh", b"", b"ij"]), 100);
        assert_eq!(r.next_part(4).await.unwrap().unwrap(), "abcd");
        assert_eq!(r.next_part(4).await.unwrap().unwrap(), "efgh");
        assert_eq!(r.next_part(4).await.unwrap().unwrap(), "ij");
        assert!(r.next_part(4).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused() {
        let mut r = PartReader::new(body(&[b"abcdef"]), 5);
        let e = r.next_part(4).await.unwrap_err();
        assert_eq!(e.code().as_str(), "EntityTooLarge");
    }

    #[test]
    fn part_sizes_keep_within_ten_thousand_parts() {
        assert_eq!(part_size_for(100 << 20), DEFAULT_PART_SIZE);
        let five_tib = 5u64 << 40;
        let p = part_size_for(five_tib);
        assert!(five_tib.div_ceil(p) <= u64::from(MAX_PARTS) && p.is_multiple_of(1 << 20));
    }
}
