//! CRC32C (Castagnoli, the algorithm of iSCSI, ext4 and S3's `x-amz-checksum-crc32c`): block
//! files, writes and reads carry it. One implementation for every crate of the workspace.
//!
//! Computed with `crc-fast` (already in the tree through aws-smithy-checksums and s3s), whose
//! carry-less-multiply folding ran about 4x the `crc32c` crate's `crc32` instruction loop here on
//! bytes still in the CPU's cache (a body checked as it arrives); the values are the same
//! (`matches_the_reference_crate`, so files written before still verify).

use crc_fast::{CrcAlgorithm, Digest};

/// The CRC32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(data)
}

/// The CRC32C of `a ++ b`, given the CRC32C of `a` (`crc`) and the bytes `b`.
pub fn crc32c_append(crc: u32, b: &[u8]) -> u32 {
    let mut running = Crc32c::resume(crc);
    running.update(b);
    running.finish()
}

/// The CRC32C of `a ++ b` from the CRC32Cs of `a` and of `b` (`b_len` bytes), without the bytes.
pub fn crc32c_combine(a: u32, b: u32, b_len: u64) -> u32 {
    crc_fast::checksum_combine(CrcAlgorithm::Crc32Iscsi, a.into(), b.into(), b_len) as u32
}

/// A CRC32C over bytes fed as they come.
#[derive(Clone, Copy)]
pub struct Crc32c(Digest);

impl Default for Crc32c {
    fn default() -> Self {
        Self(Digest::new(CrcAlgorithm::Crc32Iscsi))
    }
}

impl Crc32c {
    /// Continues after bytes whose CRC32C is `crc`.
    pub fn resume(crc: u32) -> Self {
        // The digest's state is the register before the final XOR, which CRC32C's
        // finishing XOR (all ones) undoes.
        Self(Digest::new_with_init_state(CrcAlgorithm::Crc32Iscsi, u64::from(!crc)))
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(&self) -> u32 {
        self.0.finalize() as u32
    }
}

impl std::fmt::Debug for Crc32c {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Crc32c({:08x})", self.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn check_value() {
        // The catalogue's check value of CRC-32/ISCSI.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    proptest! {
        /// The same values as the `crc32c` crate, which wrote every block file and checksum
        /// before: whole, appended in pieces, fed in pieces, and combined.
        #[test]
        fn matches_the_reference_crate(
            data in proptest::collection::vec(any::<u8>(), 0..20_000),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let reference = ::crc32c::crc32c(&data);
            prop_assert_eq!(crc32c(&data), reference);
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
            at.extend([0, data.len()]);
            at.sort_unstable();
            let pieces: Vec<&[u8]> = at.windows(2).map(|w| &data[w[0]..w[1]]).collect();
            prop_assert_eq!(pieces.iter().fold(0, |c, p| crc32c_append(c, p)), reference);
            let mut fed = Crc32c::default();
            pieces.iter().for_each(|p| fed.update(p));
            prop_assert_eq!(fed.finish(), reference);
            let combined = pieces.iter().fold(0, |c, p| crc32c_combine(c, ::crc32c::crc32c(p), p.len() as u64));
            prop_assert_eq!(combined, reference);
        }
    }
}
