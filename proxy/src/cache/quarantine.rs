//! Quarantine: dirty blocks that can never be flushed (the store refuses them for good, or they
//! are corrupt on disk) move to `quarantine/` of the cache folder. They leave the dirty index, so
//! they no longer block drains, other flushes or the dirty quota, and they are never deleted: an
//! operator inspects and recovers them (README, "Recovering quarantined blocks"). The files keep
//! the block format of [`super::disk`]; the name is the block's file name plus `.v<version>`.

use super::disk::{self, Area};
use super::{BlockId, Cache, block_id};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

pub(super) const DIR: &str = "quarantine";

/// The version of each quarantined block, from the headers of the files in `quarantine/` (files
/// too damaged to name their block are only counted).
pub(super) fn scan(root: &Path) -> io::Result<HashMap<BlockId, u64>> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir(root.join(DIR)) else { return Ok(out) };
    for entry in entries {
        if let Ok((header, _)) = disk::read_header(&entry?.path())?
            && let Some(id) = block_id(&header)
        {
            let v = out.entry(id).or_insert(header.version);
            *v = (*v).max(header.version);
        }
    }
    Ok(out)
}

impl Cache {
    fn quarantine_dir(&self) -> PathBuf {
        self.layout.root().join(DIR)
    }

    /// Moves the dirty block `id` to quarantine if it still holds `version` (a newer write is left
    /// alone: it gets its own flush). Returns the quarantined file, or `None` when it was not the
    /// current dirty version any more.
    pub fn quarantine_dirty(&self, id: &BlockId, version: u64) -> io::Result<Option<PathBuf>> {
        let dir = self.quarantine_dir();
        std::fs::create_dir_all(&dir)?;
        let mut index = self.index();
        let Some(entry) = index.get(id).filter(|e| e.is_dirty() && e.version == version).cloned() else {
            return Ok(None);
        };
        let to = dir.join(format!("{}.v{version}", entry.name));
        // Under the index lock, like every rename of a dirty file, so no write or flush interleaves.
        std::fs::rename(self.layout.path(Area::Dirty, &entry.name), &to)?;
        index.remove(id);
        // Reads of the key now go to the store; a fetch that started before must not cache.
        self.epochs.bump(id);
        drop(index);
        let mut quarantined = self.quarantined.lock().unwrap_or_else(|p| p.into_inner());
        let v = quarantined.entry(id.clone()).or_insert(version);
        *v = (*v).max(version);
        drop(quarantined);
        self.layout.sync_installed(&to)?;
        Ok(Some(to))
    }

    /// The newest quarantined version of `id`. A read must not answer with anything older: that
    /// write was acknowledged, and only an operator can bring it back.
    pub fn quarantined_version(&self, id: &BlockId) -> Option<u64> {
        self.quarantined.lock().unwrap_or_else(|p| p.into_inner()).get(id).copied()
    }

    /// Blocks in quarantine now (files on disk, so an operator's recovery shows at once).
    pub fn quarantined_blocks(&self) -> u64 {
        std::fs::read_dir(self.quarantine_dir()).map_or(0, |d| d.filter_map(Result::ok).count() as u64)
    }
}
