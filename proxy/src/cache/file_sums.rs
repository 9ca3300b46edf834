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

    /// Whether `data`, the file's bytes [`FileSums::cover`] returned for a range starting at
    /// `cover_start`, matches the sums made in the pass.
    pub fn matches(&self, cover_start: u64, data: &[u8]) -> bool {
        let first = (cover_start / PIECE) as usize;
        data.chunks(PIECE as usize)
            .enumerate()
            .all(|(i, piece)| self.pieces.get(first + i) == Some(&crate::protocol::crc::crc32c(piece)))
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

    /// A range is checked through the whole pieces around it, whatever its alignment, and any
    /// changed byte of them fails the check.
    #[test]
    fn a_range_is_checked_through_the_pieces_around_it() {
        let data: Vec<u8> = (0..(3 * PIECE + 100)).map(|i| (i * 7 % 253) as u8).collect();
        let sums = sums_of(&data);
        for range in [0..1, 5..PIECE, PIECE - 1..PIECE + 1, 2 * PIECE..3 * PIECE + 100, 3 * PIECE + 99..3 * PIECE + 100]
        {
            let cover = sums.cover(&range);
            assert!(cover.start <= range.start && range.end <= cover.end, "{range:?} in {cover:?}");
            assert!(
                cover.start.is_multiple_of(PIECE)
                    && (cover.end.is_multiple_of(PIECE) || cover.end == data.len() as u64)
            );
            let mut bytes = data[cover.start as usize..cover.end as usize].to_vec();
            assert!(sums.matches(cover.start, &bytes), "{range:?}");
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            assert!(!sums.matches(cover.start, &bytes), "{range:?}: a flipped byte passed");
        }
    }

    #[test]
    fn block_sums_answer_only_their_block_size() {
        let sums = FileSums::new(10, Some(4), vec![1, 2, 3], Vec::new());
        assert_eq!((sums.of_block(1, 4), sums.of_block(3, 4), sums.of_block(1, 8)), (Some(2), None, None));
    }
}
