//! Reading one open file: the version is fixed at `open`, and every read of the handle is pinned
//! to it. A read that continues where the last one ended takes the next bytes of one stream to
//! the end of the file (the client reads blocks ahead from their owners); a read elsewhere starts
//! a short ranged stream, so random reads do not fetch whole read-ahead windows.

use crate::client::info::ObjectInfo;
use crate::client::{Client, ClientError};
use crate::protocol::BlockKey;
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};

/// How far a read at a new offset streams (unless the file ends first): two of the kernel's
/// usual 128 KiB FUSE reads, so that a random read moves little more than it asks for, while a
/// read that goes on from there turns into a stream to the end of the file.
const RANDOM_WINDOW: u64 = 256 << 10;

struct Stream {
    /// Offset of the next byte the stream yields (`carry` first).
    pos: u64,
    end: u64,
    carry: Bytes,
    body: BoxStream<'static, Result<Bytes, ClientError>>,
}

pub struct Reader {
    client: Client,
    key: BlockKey,
    pub info: ObjectInfo,
    stream: Option<Stream>,
}

/// The byte range a stream started for a read at `offset` covers.
pub fn stream_range(offset: u64, size: u64, file_size: u64, sequential: bool) -> (u64, u64) {
    let end = if sequential || offset == 0 { file_size } else { (offset + size.max(RANDOM_WINDOW)).min(file_size) };
    (offset, end)
}

impl Reader {
    /// The newest version of `key`, or `None` when there is no such object.
    pub async fn open(client: Client, key: BlockKey) -> Result<Option<Self>, ClientError> {
        let Some(info) = client.head(&key).await? else { return Ok(None) };
        Ok(Some(Self { client, key, info, stream: None }))
    }

    /// Up to `size` bytes at `offset` (fewer at the end of the file).
    pub async fn read(&mut self, offset: u64, size: u64) -> Result<Bytes, ClientError> {
        let file_size = self.info.size;
        if offset >= file_size || size == 0 {
            return Ok(Bytes::new());
        }
        let want = size.min(file_size - offset) as usize;
        let continues = self.stream.as_ref().is_some_and(|s| s.pos == offset);
        if !continues || self.stream.as_ref().is_some_and(|s| s.pos >= s.end) {
            let sequential = continues || self.last_end() == Some(offset);
            self.stream = Some(start(&self.client, &self.key, &self.info, offset, size, sequential).await?);
        }
        let s = self.stream.as_mut().expect("started above");
        let mut out = BytesMut::with_capacity(want);
        while out.len() < want {
            if s.carry.is_empty() {
                match s.body.next().await {
                    Some(chunk) => s.carry = chunk?,
                    None => break,
                }
            }
            let take = (want - out.len()).min(s.carry.len());
            out.extend_from_slice(&s.carry.split_to(take));
            s.pos += take as u64;
        }
        Ok(out.freeze())
    }

    fn last_end(&self) -> Option<u64> {
        self.stream.as_ref().map(|s| s.pos)
    }
}

/// A stream of `info`'s version from `offset` (not a method: the handle's own stream is not
/// `Sync`, so the future must not borrow the whole handle).
async fn start(
    client: &Client,
    key: &BlockKey,
    info: &ObjectInfo,
    offset: u64,
    size: u64,
    sequential: bool,
) -> Result<Stream, ClientError> {
    let (start, end) = stream_range(offset, size, info.size, sequential);
    let range = format!("bytes={start}-{}", end - 1);
    let changed = || ClientError::Changed { key: key.to_string() };
    let read = client.read_object(key, Some(&range)).await?.ok_or_else(changed)?;
    // The handle reads the version it opened, never a mix.
    if read.info.version != info.version || read.info.size != info.size {
        return Err(changed());
    }
    Ok(Stream { pos: start, end, carry: Bytes::new(), body: read.body })
}

#[cfg(test)]
mod tests {
    use super::{RANDOM_WINDOW, stream_range};

    #[test]
    fn sequential_reads_stream_to_the_end_and_random_ones_a_window() {
        let mib = 1u64 << 20;
        assert_eq!(stream_range(0, 4096, 100 * mib, false), (0, 100 * mib));
        assert_eq!(stream_range(5 * mib, 4096, 100 * mib, true), (5 * mib, 100 * mib));
        assert_eq!(stream_range(5 * mib, 4096, 100 * mib, false), (5 * mib, 5 * mib + RANDOM_WINDOW));
        assert_eq!(stream_range(5 * mib, 2 * mib, 100 * mib, false), (5 * mib, 7 * mib));
        assert_eq!(stream_range(100 * mib - 1000, 4096, 100 * mib, false), (100 * mib - 1000, 100 * mib));
    }
}
