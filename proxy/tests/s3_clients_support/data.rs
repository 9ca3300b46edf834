//! Deterministic test content, produced and hashed as a stream so that gigabytes never sit in
//! memory or on disk.
//!
//! Content is a 4 MiB pseudo-random base buffer read at an offset that depends on the seed, with
//! every 64 KiB chunk starting with its own (seed, offset) tag: no two chunks of any object are
//! equal, so a block served at the wrong offset or from another object changes the hash. Copying
//! slices keeps the generator fast in debug builds.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;

const BASE_LEN: usize = 4 * MIB as usize;
const TAG_EVERY: u64 = 64 * KIB;
/// How much is generated (and written) at a time.
pub const CHUNK: usize = MIB as usize;

fn base() -> &'static [u8] {
    static BASE: OnceLock<Vec<u8>> = OnceLock::new();
    BASE.get_or_init(|| {
        // xorshift64*: a fixed, seedable sequence (the content must be the same in every run).
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut out = Vec::with_capacity(BASE_LEN);
        while out.len() < BASE_LEN {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        out
    })
}

/// The bytes `[offset, offset + out.len())` of object `seed`'s content.
pub fn fill(seed: u64, offset: u64, out: &mut [u8]) {
    let base = base();
    let start = (seed.wrapping_mul(7_919 * 4096)) as usize;
    let mut pos = 0;
    while pos < out.len() {
        let abs = offset + pos as u64;
        let b = (start.wrapping_add(abs as usize)) % BASE_LEN;
        let n = (out.len() - pos).min(BASE_LEN - b);
        out[pos..pos + n].copy_from_slice(&base[b..b + n]);
        pos += n;
    }
    // Tags: 16 bytes at every TAG_EVERY boundary, also the part of one that the range cuts.
    let mut t = offset / TAG_EVERY * TAG_EVERY;
    let end = offset + out.len() as u64;
    while t < end {
        let mut tag = [0u8; 16];
        tag[..8].copy_from_slice(&seed.to_le_bytes());
        tag[8..].copy_from_slice(&t.to_le_bytes());
        for (i, byte) in tag.iter().enumerate() {
            let at = t + i as u64;
            if at >= offset && at < end {
                out[(at - offset) as usize] = *byte;
            }
        }
        t += TAG_EVERY;
    }
}

/// Object `seed`'s whole content (for small objects).
pub fn content(seed: u64, len: u64) -> Vec<u8> {
    let mut out = vec![0; len as usize];
    fill(seed, 0, &mut out);
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The sha256 of object `seed`'s content of `len` bytes, generated chunk by chunk.
pub fn sha256_of(seed: u64, len: u64) -> String {
    let mut hasher = Sha256::new();
    let mut buf = vec![0; CHUNK];
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(CHUNK as u64) as usize;
        fill(seed, offset, &mut buf[..n]);
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    hex::encode(hasher.finalize())
}

/// Writes object `seed`'s content of `len` bytes into `sink` (a child's stdin) and closes it.
/// Returns the sha256 of what was written.
pub async fn write_content(seed: u64, len: u64, mut sink: impl AsyncWrite + Unpin) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0; CHUNK];
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(CHUNK as u64) as usize;
        fill(seed, offset, &mut buf[..n]);
        hasher.update(&buf[..n]);
        sink.write_all(&buf[..n]).await.with_context(|| format!("writing byte {offset} of {len}"))?;
        offset += n as u64;
    }
    sink.shutdown().await?;
    Ok(hex::encode(hasher.finalize()))
}

/// Reads `source` (a child's stdout) to its end; returns (bytes read, sha256).
pub async fn hash_stream(mut source: impl AsyncRead + Unpin) -> Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0; CHUNK];
    let mut total = 0;
    loop {
        let n = source.read(&mut buf).await?;
        if n == 0 {
            return Ok((total, hex::encode(hasher.finalize())));
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

/// The sha256 of a file, read in chunks (blocking: call it from `spawn_blocking`).
pub fn sha256_file(path: &std::path::Path) -> Result<(u64, String)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; CHUNK];
    let mut total = 0;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((total, hex::encode(hasher.finalize())));
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

#[test]
fn content_is_the_same_in_any_chunking_and_differs_by_seed_and_offset() {
    let whole = content(3, 300 * KIB);
    let mut pieces = vec![0; whole.len()];
    for (i, piece) in pieces.chunks_mut(7_777).enumerate() {
        fill(3, (i * 7_777) as u64, piece);
    }
    assert!(whole == pieces, "fill depends on how the range is cut");
    assert_ne!(content(4, 300 * KIB), whole);
    assert_ne!(&whole[..TAG_EVERY as usize], &whole[TAG_EVERY as usize..2 * TAG_EVERY as usize]);
    assert_eq!(sha256_of(3, 300 * KIB), sha256_hex(&whole));
}
