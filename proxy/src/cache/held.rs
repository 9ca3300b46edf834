//! Block files kept open between hits, like nginx's `open_file_cache`, but never stale: an open
//! file is held by the index entry it was opened for, so whatever replaces or removes that entry
//! (a write, a flush, an eviction, a quarantine) drops the file with it (ADR 0015). A 64 KiB hit
//! then costs no `open`, header read, `statx` or `close`, about 13% of the proxy's CPU in a
//! figure 2 profile.

use super::disk::BlockHeader;
use super::index::BlockId;
use std::collections::VecDeque;
use std::fs::File;
use std::sync::{Arc, OnceLock};

/// An open block file and what its header said: enough to serve it without reading it again.
#[derive(Debug)]
pub struct HeldFile {
    pub file: Arc<File>,
    pub header: Arc<BlockHeader>,
    pub data_offset: u64,
    /// The headers of the server's answer with this file's whole data, kept with the file they
    /// describe so that its hits format them once (ADR 0023).
    pub reply_headers: OnceLock<ReplyHeaders>,
}

/// See [`HeldFile::reply_headers`].
#[derive(Debug)]
pub struct ReplyHeaders {
    pub headers: http::HeaderMap,
    /// The store ETag (unquoted) that `headers` name: an entry's changes when it is flushed or
    /// revalidated, its file's header does not.
    pub store_etag: Option<String>,
}

impl HeldFile {
    pub fn new(file: Arc<File>, header: Arc<BlockHeader>, data_offset: u64) -> Self {
        Self { file, header, data_offset, reply_headers: OnceLock::new() }
    }
}

/// Which entries hold a file, oldest first: past `capacity`, the oldest let go of theirs. Each
/// item names its entry by serial, so an item whose entry was replaced meanwhile is skipped.
#[derive(Debug, Default)]
pub struct HeldOrder {
    pub capacity: usize,
    pub order: VecDeque<(BlockId, u64)>,
    /// Entries holding a file now.
    pub count: usize,
}

/// How many files to hold when `wanted` are asked for: at most half the process's open-file
/// limit, whose soft value is first raised to its hard one (connections and the flushes' files
/// need the rest).
pub fn allowance(wanted: usize) -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = Rlimit { current: limit.maximum, maximum: limit.maximum };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %e, "could not raise the open-file limit to its hard value");
        }
    }
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let cap = usize::try_from(soft / 2).unwrap_or(usize::MAX);
    if wanted > cap {
        tracing::warn!(
            wanted,
            allowed = cap,
            open_file_limit = soft,
            "--open-files lowered to half the open-file limit"
        );
    }
    wanted.min(cap)
}
