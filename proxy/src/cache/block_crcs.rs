//! The CRC32Cs of the blocks of a clean file that holds a whole object (ADR 0024).
//!
//! A client reads a large object block by block, spread over the group (ADR 0004). The home of
//! the object may hold it whole, in one file, and then answers a block read with a slice of that
//! file. The file's checksum covers the whole object, not the slice, so the client could not
//! verify the slice. Now the first block read of such a file in this process reads the file once,
//! checks its data against the header's CRC32C, and keeps the CRC32C of every block: each later
//! block answer carries its block's checksum, as a striped block's answer does, and the client
//! checks it. Rot after that pass is caught by the client, not served as the object's bytes.

/// The CRC32Cs of a file's data cut in blocks of `block_size` bytes, made from data that matched
/// the file's own checksum.
#[derive(Debug)]
pub struct BlockCrcs {
    block_size: u64,
    crcs: Box<[u32]>,
}

/// Made once per file by whichever block read comes first; the others wait for it.
pub type BlockCrcsCell = tokio::sync::OnceCell<BlockCrcs>;

impl BlockCrcs {
    pub fn new(block_size: u64, crcs: Vec<u32>) -> Self {
        Self { block_size, crcs: crcs.into_boxed_slice() }
    }

    /// The CRC32C of block `index` when blocks are `block_size` bytes; `None` for another block
    /// size (a client with another discovery document), whose blocks were not summed.
    pub fn of_block(&self, index: u64, block_size: u64) -> Option<u32> {
        if block_size != self.block_size {
            return None;
        }
        self.crcs.get(usize::try_from(index).ok()?).copied()
    }
}
