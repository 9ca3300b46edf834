//! Reading one open file: the version is fixed at `open`, and every read of the handle is pinned
//! to it. A read that continues where the last one ended takes the next bytes of one stream to
//! the end of the file (the client reads blocks ahead from their owners); a read elsewhere starts
//! a short ranged stream, so random reads do not fetch whole read-ahead windows.

use crate::client::info::ObjectInfo;
use crate::client::{Client, ClientError};
use crate::protocol::BlockKey;
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};
use std::collections::VecDeque;

/// How far a read at a new offset streams (unless the file ends first): two of the kernel's
/// usual 128 KiB FUSE reads, so that a random read moves little more than it asks for, while a
/// read that goes on from there turns into a stream to the end of the file.
const RANDOM_WINDOW: u64 = 256 << 10;

/// Reads up to this far past the stream's position continue it (the bytes between are held):
/// the kernel's readahead sends several reads of one file at once, and they reach the handle
/// in any order.
const AHEAD: u64 = 4 << 20;
/// Bytes kept behind the newest read, for its siblings that arrive after it.
const BEHIND: u64 = 4 << 20;

struct Stream {
    end: u64,
    body: BoxStream<'static, Result<Bytes, ClientError>>,
}

/// The bytes a stream has yielded and that reads may still ask for: contiguous, ending where
/// the stream goes on.
#[derive(Default)]
struct Held {
    start: u64,
    len: u64,
    chunks: VecDeque<Bytes>,
}

impl Held {
    fn at(start: u64) -> Self {
        Self { start, ..Default::default() }
    }

    fn end(&self) -> u64 {
        self.start + self.len
    }

    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len() as u64;
        self.chunks.push_back(chunk);
    }

    /// Drops whole chunks that end at least [`BEHIND`] bytes before `offset`.
    fn trim(&mut self, offset: u64) {
        while let Some(first) = self.chunks.front() {
            let first_len = first.len() as u64;
            if self.start + first_len + BEHIND > offset {
                break;
            }
            self.start += first_len;
            self.len -= first_len;
            self.chunks.pop_front();
        }
    }

    /// `[offset, offset + want)`, which must lie within the held bytes: a slice when one chunk
    /// holds it, else a copy.
    fn get(&self, offset: u64, want: usize) -> Bytes {
        let mut at = self.start;
        let mut out: Option<BytesMut> = None;
        let (mut from, end) = (offset, offset + want as u64);
        for chunk in &self.chunks {
            let chunk_end = at + chunk.len() as u64;
            if chunk_end > from && at < end {
                let part = chunk.slice((from - at) as usize..(end.min(chunk_end) - at) as usize);
                if out.is_none() && part.len() == want {
                    return part;
                }
                out.get_or_insert_with(|| BytesMut::with_capacity(want)).extend_from_slice(&part);
                from += part.len() as u64;
            }
            at = chunk_end;
        }
        out.map(BytesMut::freeze).unwrap_or_default()
    }
}

pub struct Reader {
    client: Client,
    key: BlockKey,
    pub info: ObjectInfo,
    stream: Option<Stream>,
    held: Held,
}

/// Whether a stream that has yielded `held` (and ends at `stream_end`) can answer the read
/// `wanted`: it starts within the held bytes or at most [`AHEAD`] past them, and the stream
/// reaches its end.
fn continues(held: std::ops::Range<u64>, stream_end: u64, wanted: std::ops::Range<u64>) -> bool {
    held.start <= wanted.start && wanted.start <= held.end + AHEAD && wanted.end <= stream_end
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
        Ok(Some(Self { client, key, info, stream: None, held: Held::default() }))
    }

    /// Up to `size` bytes at `offset` (fewer at the end of the file).
    pub async fn read(&mut self, offset: u64, size: u64) -> Result<Bytes, ClientError> {
        let file_size = self.info.size;
        if offset >= file_size || size == 0 {
            return Ok(Bytes::new());
        }
        let want = size.min(file_size - offset);
        let end = offset + want;
        let pos = self.held.end();
        let held = self.held.start..pos;
        if !self.stream.as_ref().is_some_and(|s| continues(held, s.end, offset..end)) {
            let sequential = self.stream.is_some() && offset == pos;
            self.stream = Some(start(&self.client, &self.key, &self.info, offset, size, sequential).await?);
            self.held = Held::at(offset);
        }
        let s = self.stream.as_mut().expect("started above");
        while self.held.end() < end {
            match s.body.next().await {
                Some(chunk) => self.held.push(chunk?),
                None => break,
            }
        }
        let got = self.held.get(offset, (end.min(self.held.end()) - offset) as usize);
        self.held.trim(offset);
        Ok(got)
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
    Ok(Stream { end, body: read.body })
}

#[cfg(test)]
mod tests {
    use super::{AHEAD, BEHIND, Bytes, Held, RANDOM_WINDOW, continues, stream_range};

    #[test]
    fn reads_near_the_stream_continue_it_and_others_start_a_new_one() {
        let k = 128 << 10;
        let (held, end) = (1000..1000 + 4 * k, 1 << 30);
        assert!(continues(held.clone(), end, held.end..held.end + k), "the next read");
        assert!(continues(held.clone(), end, held.end + 2 * k..held.end + 3 * k), "a readahead sibling, early");
        assert!(continues(held.clone(), end, 1000 + k..1000 + 2 * k), "a sibling that arrived late");
        assert!(!continues(held.clone(), end, 0..k), "behind what is held");
        assert!(!continues(held.clone(), end, held.end + AHEAD + 1..held.end + AHEAD + k), "too far ahead");
        assert!(!continues(held.clone(), held.end + k, held.end..held.end + 2 * k), "past a short stream's end");
    }

    #[test]
    fn held_bytes_answer_reads_in_any_order_and_are_trimmed_behind_the_newest() {
        let data: Vec<u8> = (0..40u32).map(|i| i as u8).collect();
        let mut held = Held::at(100);
        for part in data.chunks(10) {
            held.push(Bytes::copy_from_slice(part));
        }
        assert_eq!(held.end(), 140);
        assert_eq!(held.get(125, 10).as_ref(), &data[25..35], "across two chunks");
        assert_eq!(held.get(110, 10).as_ref(), &data[10..20], "one chunk, before a read already answered");
        assert_eq!(held.get(139, 1).as_ref(), &data[39..40]);
        held.trim(135);
        assert_eq!((held.start, held.end()), (100, 140), "all within BEHIND of the newest read");
        let mut far = Held::at(0);
        far.push(Bytes::from(vec![1u8; BEHIND as usize]));
        far.push(Bytes::from(vec![2u8; 10]));
        far.trim(2 * BEHIND + 5);
        assert_eq!(
            (far.start, far.end()),
            (BEHIND, BEHIND + 10),
            "the chunk ending more than BEHIND before the read is dropped"
        );
        assert_eq!(far.get(BEHIND + 2, 3).as_ref(), &[2u8, 2, 2]);
    }

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
