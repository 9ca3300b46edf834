//! The CRC32Cs of the parts of a clean block file, made in one pass over data that matched the
//! file's own checksum (ADR 0024, ADR 0025).
//!
//! A file's checksum covers all its data. A read of less than that, a slice of it, could not be
//! checked against it, so bytes that rotted on disk after the file's checked first read were
//! served as they were. The first such read of a file in this process reads the file once,
//! checks it against its header, and keeps:
//! - the CRC32C of each block, at the block size that read asked for: a whole-object file's
//!   block answers carry their block's checksum, which the client checks (ADR 0024);
//! - the CRC32C of each [`PIECE`] of the data: a range is read with the pieces around it, which
//!   the proxy checks before it answers (ADR 0025).

use crate::protocol::crc;
use std::ops::Range;

/// The grain of the piece sums: 4 bytes of memory per 64 KiB of a file read in parts, and at
/// most two pieces read beyond a range to check it.
pub const PIECE: u64 = 64 << 10;

/// The sums of one file's data, `len` bytes.
#[derive(Debug)]
pub struct FileSums {
    len: u64,
    /// The block size of `blocks`; `None` when the pass was made for a range.
    block_size: Option<u64>,
    blocks: Box<[u32]>,
    pieces: Box<[u32]>,
}

/// Made once per file by whichever read needs it first; the others wait for it.
pub type FileSumsCell = tokio::sync::OnceCell<std::sync::Arc<FileSums>>;

impl FileSums {
    pub fn new(len: u64, block_size: Option<u64>, blocks: Vec<u32>, pieces: Vec<u32>) -> Self {
        Self { len, block_size, blocks: blocks.into_boxed_slice(), pieces: pieces.into_boxed_slice() }
    }

    /// The CRC32C of block `index` when blocks are `block_size` bytes; `None` for another block
    /// size (a client with another discovery document), whose blocks were not summed.
    pub fn of_block(&self, index: u64, block_size: u64) -> Option<u32> {
        if self.block_size != Some(block_size) {
            return None;
        }
        self.blocks.get(usize::try_from(index).ok()?).copied()
    }

    /// The data bytes to read to check `range`: the whole pieces it touches.
    pub fn cover(&self, range: &Range<u64>) -> Range<u64> {
        let start = range.start / PIECE * PIECE;
        let end = range.end.div_ceil(PIECE).saturating_mul(PIECE).min(self.len);
        start..end.max(start)
    }

    /// Checks the pieces around `range` (data offsets), read through `read(offset, len)` in
    /// reads of at most `chunk` bytes, against the sums made in the pass. The CRC32C of the
    /// range's bytes when every piece matches, hashed while each piece is still in the CPU's
    /// cache; `None` when one does not.
    pub fn check_range<B: AsRef<[u8]>>(
        &self,
        range: &Range<u64>,
        chunk: u64,
        mut read: impl FnMut(u64, usize) -> std::io::Result<B>,
    ) -> std::io::Result<Option<u32>> {
        let cover = self.cover(range);
        let chunk = (chunk / PIECE).max(1) * PIECE;
        let mut in_range = crc::Crc32c::default();
        let mut at = cover.start;
        while at < cover.end {
            let n = (cover.end - at).min(chunk);
            let bytes = read(at, n as usize)?;
            for (i, piece) in bytes.as_ref().chunks(PIECE as usize).enumerate() {
                let start = at + i as u64 * PIECE;
                if self.pieces.get((start / PIECE) as usize) != Some(&crc::crc32c(piece)) {
                    return Ok(None);
                }
                let (lo, hi) = (range.start.max(start) - start, range.end.min(start + piece.len() as u64) - start);
                if lo < hi {
                    in_range.update(&piece[lo as usize..hi as usize]);
                }
            }
            at += n;
        }
        Ok(Some(in_range.finish()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::crc::crc32c;

    fn sums_of(data: &[u8]) -> FileSums {
        let pieces = data.chunks(PIECE as usize).map(crc32c).collect();
        FileSums::new(data.len() as u64, None, Vec::new(), pieces)
    }

    /// A range is checked through the whole pieces around it, whatever its alignment and the
    /// size of the reads, and any changed byte of them fails the check.
    #[test]
    fn a_range_is_checked_through_the_pieces_around_it() {
        let mut data: Vec<u8> = (0..(3 * PIECE + 100)).map(|i| (i * 7 % 253) as u8).collect();
        let sums = sums_of(&data);
        let ranges =
            [0..1, 5..PIECE, PIECE - 1..PIECE + 1, 2 * PIECE..3 * PIECE + 100, 3 * PIECE + 99..3 * PIECE + 100];
        for (range, chunk) in ranges.into_iter().flat_map(|r| [(r.clone(), PIECE), (r, 4 * PIECE)]) {
            let cover = sums.cover(&range);
            assert!(cover.start <= range.start && range.end <= cover.end, "{range:?} in {cover:?}");
            assert!(
                cover.start.is_multiple_of(PIECE)
                    && (cover.end.is_multiple_of(PIECE) || cover.end == data.len() as u64)
            );
            let check = |data: &[u8]| {
                let mut reads = Vec::new();
                let crc = sums.check_range(&range, chunk, |at, len| {
                    reads.push(at..at + len as u64);
                    Ok(data[at as usize..at as usize + len].to_vec())
                });
                (crc.unwrap(), reads)
            };
            let want = crc32c(&data[range.start as usize..range.end as usize]);
            let (crc, reads) = check(&data);
            assert_eq!(crc, Some(want), "{range:?}, reads of {chunk}");
            assert!(reads.iter().all(|r| r.end - r.start <= chunk && cover.start <= r.start && r.end <= cover.end));
            let last = cover.end as usize - 1;
            data[last] ^= 1;
            assert_eq!(check(&data).0, None, "{range:?}: a flipped byte passed");
            data[last] ^= 1;
        }
    }

    #[test]
    fn block_sums_answer_only_their_block_size() {
        let sums = FileSums::new(10, Some(4), vec![1, 2, 3], Vec::new());
        assert_eq!((sums.of_block(1, 4), sums.of_block(3, 4), sums.of_block(1, 8)), (Some(2), None, None));
    }
}
