//! The MD5 of a write's body, hashed beside the task that receives it.
//!
//! A write's ack carries its S3 ETag, the MD5 of the body. MD5 is serial and slow (about
//! 600 MiB/s here), slower than a body arrives on loopback or a fast network. Hashed on the task
//! that reads the body, most of the hash lands after the last byte, on the ack's path. Hashed on
//! a blocking thread fed with the body's chunks as they arrive, it runs beside the receive and
//! the checksum: on 2 cores, a 1 MiB write's ack no longer waits for receive + MD5 in series.

use bytes::Bytes;
use md5::{Digest, Md5};
use tokio::sync::mpsc;

/// Bodies from this size are hashed on a thread; below it the hand-off costs more than it saves.
const THREAD_FROM: u64 = 256 * 1024;

/// Chunks go to the thread in batches of this many bytes: each hand-off wakes the thread, and a
/// body arrives in chunks of a few KiB at first.
const BATCH: usize = 128 * 1024;

/// Batches the thread may lag behind the receive. The chunks it holds are memory outside the
/// body's reservation against `--max-inflight-bytes`, so the receive waits rather than let the
/// lag grow to a whole body.
const LAG: usize = 4;

/// MD5 of a body, fed chunk by chunk; see the module docs.
pub struct BodyMd5(Inner);

enum Inner {
    Inline(Md5),
    Thread {
        batch: Vec<Bytes>,
        batched: usize,
        batches: mpsc::Sender<Vec<Bytes>>,
        digest: tokio::task::JoinHandle<[u8; 16]>,
    },
}

impl BodyMd5 {
    /// A hasher for a body of `expected_len` bytes (its Content-Length, when sent).
    pub fn for_len(expected_len: Option<u64>) -> Self {
        if expected_len.is_none_or(|n| n < THREAD_FROM) {
            return Self(Inner::Inline(Md5::new()));
        }
        let (batches, mut rx) = mpsc::channel::<Vec<Bytes>>(LAG);
        // Ends when the sender is dropped: when the body is complete, or the request is abandoned.
        let digest = tokio::task::spawn_blocking(move || {
            let mut md5 = Md5::new();
            while let Some(batch) = rx.blocking_recv() {
                batch.iter().for_each(|chunk| md5.update(chunk));
            }
            md5.finalize().into()
        });
        Self(Inner::Thread { batch: Vec::new(), batched: 0, batches, digest })
    }

    /// Hashes `chunk` next (a `Bytes` clone: the thread reads the same memory, nothing is copied).
    /// Waits while the thread is [`LAG`] batches behind.
    pub async fn update(&mut self, chunk: &Bytes) {
        match &mut self.0 {
            Inner::Inline(md5) => md5.update(chunk),
            // The receiver lives until the sender is dropped, so a send fails only if the thread
            // panicked, which `finish` reports.
            Inner::Thread { batch, batched, batches, .. } => {
                batch.push(chunk.clone());
                *batched += chunk.len();
                if *batched >= BATCH {
                    *batched = 0;
                    let _ = batches.send(std::mem::take(batch)).await;
                }
            }
        }
    }

    /// The MD5 of every chunk given to [`BodyMd5::update`], in order.
    pub async fn finish(self) -> std::io::Result<[u8; 16]> {
        match self.0 {
            Inner::Inline(md5) => Ok(md5.finalize().into()),
            Inner::Thread { batch, batches, digest, .. } => {
                let _ = batches.send(batch).await;
                drop(batches);
                digest.await.map_err(std::io::Error::other)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn hash_in_chunks(data: &[u8], chunk: usize, declared: Option<u64>) -> [u8; 16] {
        let mut h = BodyMd5::for_len(declared);
        for c in data.chunks(chunk) {
            h.update(&Bytes::copy_from_slice(c)).await;
        }
        h.finish().await.unwrap()
    }

    #[tokio::test]
    async fn both_ways_give_the_md5_of_the_whole_body_in_order() {
        let data: Vec<u8> = (0..(THREAD_FROM as usize * 3 + 17)).map(|i| (i * 31 % 251) as u8).collect();
        let want: [u8; 16] = Md5::digest(&data).into();
        let threaded = hash_in_chunks(&data, 16 * 1024 + 3, Some(data.len() as u64)).await;
        let inline = hash_in_chunks(&data, 16 * 1024 + 3, None).await;
        assert!(matches!(BodyMd5::for_len(Some(data.len() as u64)).0, Inner::Thread { .. }));
        assert!(matches!(BodyMd5::for_len(Some(THREAD_FROM - 1)).0, Inner::Inline(_)));
        assert_eq!(threaded, want, "hashed on the thread");
        assert_eq!(inline, want, "hashed inline");
    }

    #[tokio::test]
    async fn an_empty_body_hashes_to_the_md5_of_nothing() {
        let want: [u8; 16] = Md5::digest(b"").into();
        assert_eq!(BodyMd5::for_len(Some(THREAD_FROM)).finish().await.unwrap(), want);
        assert_eq!(BodyMd5::for_len(Some(0)).finish().await.unwrap(), want);
    }
}
