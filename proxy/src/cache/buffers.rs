//! Reused read buffers for cache hits. A hit reads its block (or a chunk of it) into memory
//! before sending; a fresh allocation per hit costs page faults and zeroing (4 MiB: a thousand faults),
//! and glibc keeps freed blocks in per-thread arenas, so the blocking threads that read hits grew
//! the proxy's RSS to 5x nginx's under load. Buffers come in power-of-two sizes and go back to the
//! pool when the response body that owns them is dropped; the pool keeps at most
//! [`IDLE_LIMIT`] bytes idle.

use bytes::Bytes;
use std::sync::{Arc, Mutex};

/// Smallest pooled size; smaller reads are allocated (they are cheap and glibc reuses them well).
const MIN_POOLED: usize = 64 * 1024;
/// Idle bytes the pool holds on to, over all sizes.
const IDLE_LIMIT: usize = 32 * 1024 * 1024;
/// Idle bytes of one size (but always room for one buffer): 4 MiB hits must not fill the pool
/// and leave every 64 KiB hit to allocate and zero a fresh buffer (profiled: a fifth of a small
/// hit's CPU went to malloc and memset once a large load had run).
const IDLE_PER_SIZE: usize = IDLE_LIMIT / 4;

#[derive(Default)]
pub struct BufferPool {
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

impl BufferPool {
    /// Reads `len` bytes with `fill` into a buffer of the pool, as [`Bytes`] that return the
    /// buffer when dropped. The buffer's old contents are overwritten by `fill`, never exposed:
    /// `fill` must fill the whole slice or fail.
    pub fn read(
        self: &Arc<Self>,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> std::io::Result<()>,
    ) -> std::io::Result<Bytes> {
        if len < MIN_POOLED {
            let mut buf = vec![0u8; len];
            fill(&mut buf)?;
            return Ok(Bytes::from(buf));
        }
        let mut buf = self.take(len.next_power_of_two());
        fill(&mut buf[..len])?;
        Ok(Bytes::from_owner(Pooled { buf, len, pool: Arc::clone(self) }))
    }

    fn take(&self, size: usize) -> Vec<u8> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = idle.buffers.iter().position(|b| b.len() == size) {
            idle.bytes -= size;
            return idle.buffers.swap_remove(i);
        }
        drop(idle);
        vec![0u8; size]
    }

    fn give_back(&self, buf: Vec<u8>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let same_size: usize = idle.buffers.iter().filter(|b| b.len() == buf.len()).map(Vec::len).sum();
        if idle.bytes + buf.len() <= IDLE_LIMIT && (same_size == 0 || same_size + buf.len() <= IDLE_PER_SIZE) {
            idle.bytes += buf.len();
            idle.buffers.push(buf);
        }
    }

    #[cfg(test)]
    fn idle_bytes(&self) -> usize {
        self.idle.lock().unwrap().bytes
    }
}

/// A pooled buffer holding `len` bytes of data, owned by a [`Bytes`].
struct Pooled {
    buf: Vec<u8>,
    len: usize,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(pool: &Arc<BufferPool>, len: usize, byte: u8) -> Bytes {
        pool.read(len, |b| {
            b.fill(byte);
            Ok(())
        })
        .unwrap()
    }

    #[test]
    fn a_buffer_returns_when_its_last_slice_is_dropped_and_is_reused() {
        let pool = Arc::new(BufferPool::default());
        let data = filled(&pool, 100_000, 7);
        assert_eq!((data.len(), data.iter().all(|b| *b == 7)), (100_000, true));
        let part = data.slice(10..20);
        drop(data);
        assert_eq!(pool.idle_bytes(), 0, "returned while a slice still uses it");
        drop(part);
        assert_eq!(pool.idle_bytes(), 131_072);
        // Reused for any length of the same power of two, and only the asked-for bytes are seen.
        let again = filled(&pool, 70_000, 9);
        assert_eq!(pool.idle_bytes(), 0);
        assert_eq!((again.len(), again.iter().all(|b| *b == 9)), (70_000, true));
    }

    #[test]
    fn small_reads_are_not_pooled_and_idle_bytes_are_bounded() {
        let pool = Arc::new(BufferPool::default());
        drop(filled(&pool, 1000, 1));
        assert_eq!(pool.idle_bytes(), 0);
        let many: Vec<Bytes> = (0..5).map(|_| filled(&pool, 16 << 20, 2)).collect();
        drop(many);
        assert_eq!(pool.idle_bytes(), 16 << 20, "kept one 16 MiB buffer (over the per-size share), freed the rest");
        let many: Vec<Bytes> = (0..8).map(|_| filled(&pool, 4 << 20, 2)).collect();
        drop(many);
        assert_eq!(pool.idle_bytes(), (16 << 20) + IDLE_PER_SIZE, "two 4 MiB buffers fill their share");
    }

    #[test]
    fn large_buffers_leave_room_for_small_ones() {
        let pool = Arc::new(BufferPool::default());
        for size in [4 << 20, 1 << 20] {
            let many: Vec<Bytes> = (0..16).map(|_| filled(&pool, size, 3)).collect();
            drop(many);
        }
        let small: Vec<Bytes> = (0..32).map(|_| filled(&pool, 64 << 10, 4)).collect();
        drop(small);
        assert_eq!(pool.idle_bytes(), 2 * IDLE_PER_SIZE + (32 << 16), "32 small buffers kept after the large ones");
    }

    #[test]
    fn a_failed_fill_leaves_nothing_in_the_pool() {
        let pool = Arc::new(BufferPool::default());
        let err = pool.read(1 << 20, |_| Err(std::io::Error::other("disk"))).unwrap_err();
        assert_eq!(err.to_string(), "disk");
        assert_eq!(pool.idle_bytes(), 0, "a failed read's buffer is simply dropped");
    }
}
