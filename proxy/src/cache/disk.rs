//! The on-disk block format and layout. Every cached block is one file:
//!
//! ```text
//! magic "BPXB" | header_len u32 | format u16 | flags u16 | version u64 | data_crc32c u32 |
//! data_len u64 | 4 x (u16 len + bytes): volume, key, bucket, store_key |
//! (format 2:) u16 len + etag | modified_ns u64 | u32 len + attributes JSON | u32 n + n x u64 part sizes |
//! u8 striped + (index u64, block size u64, object size u64) |
//! (optional:) u16 len + store ETag | header_crc32c u32 | data
//! ```
//!
//! Format 1 files (written before the object model) still decode, with no ETag, attributes or
//! parts. The store ETag is an optional trailing field of format 2 (older files have none, older
//! binaries ignore it): it is written only for a fetched copy whose S3 ETag, recorded with the
//! object, is not the store's own ETag (GCS, Azure). The header is the commit record of an object version (ADR 0004): the data, its part
//! sizes (the store upload repeats them, so the store's ETag equals `etag`), its attributes and
//! its version become visible together, by the rename of the complete file.
//!
//! The header carries everything needed to flush the block (its store location and version), so
//! the writeback queue is rebuilt from the `dirty/` directory alone after a crash, even if the
//! volume has meanwhile been removed from the volumes file. Files are named by a hash of
//! (volume, key) under a two-level fan-out, because keys may be longer than a file name.

use crate::protocol::crc;
use blockproxy_protocol::ObjectAttrs;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const MAGIC: &[u8; 4] = b"BPXB";
const FORMAT_V1: u16 = 1;
const FORMAT: u16 = 2;
const FLAG_TOMBSTONE: u16 = 1;
/// 10,000 parts, attributes within S3's limits and names: far below this.
const MAX_HEADER_LEN: u64 = 1 << 20;

/// Everything about a block file except its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockHeader {
    pub volume: String,
    pub key: String,
    pub bucket: String,
    pub store_key: String,
    pub version: u64,
    pub data_crc32c: u32,
    pub data_len: u64,
    /// A pending delete: no data, flushing it deletes the object.
    pub tombstone: bool,
    /// The S3 ETag of this version, unquoted: `multipart_etag` of the parts' MD5s for our writes;
    /// for a block fetched from the store, the S3 ETag recorded with it, else the store's ETag.
    /// Empty for tombstones and format 1 files.
    pub etag: String,
    /// When this version was written, in nanoseconds since the Unix epoch: the version itself for
    /// our writes (versions are clock readings), the store's Last-Modified for fetched blocks.
    pub modified_ns: u64,
    pub attrs: ObjectAttrs,
    /// Part sizes of the store upload; empty means one part.
    pub parts: Vec<u64>,
    /// Set when the file holds one striped block of a clean object rather than the object.
    pub stripe: Option<StripeHeader>,
    /// The store's ETag (unquoted) a fetched copy is pinned to, when it is not `etag` (a GCS
    /// generation, an Azure token: see `store::S3ETag`).
    pub store_etag: Option<String>,
}

/// Which block of a clean store object a file holds (ADR 0004, striped reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StripeHeader {
    pub index: u64,
    pub block_size: u64,
    pub object_size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not a block file (bad magic)")]
    BadMagic,
    #[error("unsupported block format {0}")]
    UnsupportedFormat(u16),
    #[error("block header is truncated or corrupt")]
    Corrupt,
    #[error("block data checksum mismatch")]
    DataChecksum,
}

impl BlockHeader {
    pub fn encode(&self) -> Bytes {
        let mut body = BytesMut::new();
        body.put_u16_le(FORMAT);
        body.put_u16_le(if self.tombstone { FLAG_TOMBSTONE } else { 0 });
        body.put_u64_le(self.version);
        body.put_u32_le(self.data_crc32c);
        body.put_u64_le(self.data_len);
        for s in [&self.volume, &self.key, &self.bucket, &self.store_key, &self.etag] {
            // Names are validated to be far below u16::MAX long.
            body.put_u16_le(s.len() as u16);
            body.put_slice(s.as_bytes());
        }
        body.put_u64_le(self.modified_ns);
        let attrs = serde_json::to_vec(&self.attrs).unwrap_or_default();
        body.put_u32_le(attrs.len() as u32);
        body.put_slice(&attrs);
        body.put_u32_le(self.parts.len() as u32);
        for p in &self.parts {
            body.put_u64_le(*p);
        }
        match self.stripe {
            None => body.put_u8(0),
            Some(st) => {
                body.put_u8(1);
                body.put_u64_le(st.index);
                body.put_u64_le(st.block_size);
                body.put_u64_le(st.object_size);
            }
        }
        if let Some(e) = &self.store_etag {
            body.put_u16_le(e.len() as u16);
            body.put_slice(e.as_bytes());
        }
        let header_len = (4 + 4 + body.len() + 4) as u32;
        let mut out = BytesMut::with_capacity(header_len as usize);
        out.put_slice(MAGIC);
        out.put_u32_le(header_len);
        out.put_slice(&body);
        let crc = crc::crc32c(&out);
        out.put_u32_le(crc);
        out.freeze()
    }

    /// Decodes a header from the start of `buf`; returns it and its length.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), FormatError> {
        if buf.len() < 8 || &buf[..4] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let header_len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
        if header_len < 8 + 24 + 8 + 4 || buf.len() < header_len {
            return Err(FormatError::Corrupt);
        }
        let (covered, crc) = buf[..header_len].split_at(header_len - 4);
        if crc::crc32c(covered) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(FormatError::Corrupt);
        }
        let mut b = &covered[8..];
        let format = b.get_u16_le();
        if format != FORMAT && format != FORMAT_V1 {
            return Err(FormatError::UnsupportedFormat(format));
        }
        let flags = b.get_u16_le();
        let version = b.get_u64_le();
        let data_crc32c = b.get_u32_le();
        let data_len = b.get_u64_le();
        let n_strings = if format == FORMAT_V1 { 4 } else { 5 };
        let mut strings = Vec::with_capacity(n_strings);
        for _ in 0..n_strings {
            if b.remaining() < 2 {
                return Err(FormatError::Corrupt);
            }
            let len = b.get_u16_le() as usize;
            if b.remaining() < len {
                return Err(FormatError::Corrupt);
            }
            let s = std::str::from_utf8(&b[..len]).map_err(|_| FormatError::Corrupt)?.to_owned();
            b.advance(len);
            strings.push(s);
        }
        let etag = if format == FORMAT_V1 { String::new() } else { strings.pop().ok_or(FormatError::Corrupt)? };
        let [volume, key, bucket, store_key]: [String; 4] = strings.try_into().map_err(|_| FormatError::Corrupt)?;
        let (mut attrs, mut parts, mut stripe, mut modified_ns) = (ObjectAttrs::default(), Vec::new(), None, version);
        let mut store_etag = None;
        if format != FORMAT_V1 {
            if b.remaining() < 8 {
                return Err(FormatError::Corrupt);
            }
            modified_ns = b.get_u64_le();
            let len = take_u32(&mut b)? as usize;
            if b.remaining() < len {
                return Err(FormatError::Corrupt);
            }
            attrs = serde_json::from_slice(&b[..len]).map_err(|_| FormatError::Corrupt)?;
            b.advance(len);
            let n = take_u32(&mut b)? as usize;
            if b.remaining() < n.saturating_mul(8) {
                return Err(FormatError::Corrupt);
            }
            parts = (0..n).map(|_| b.get_u64_le()).collect();
            if b.remaining() < 1 {
                return Err(FormatError::Corrupt);
            }
            if b.get_u8() == 1 {
                if b.remaining() < 24 {
                    return Err(FormatError::Corrupt);
                }
                stripe = Some(StripeHeader {
                    index: b.get_u64_le(),
                    block_size: b.get_u64_le(),
                    object_size: b.get_u64_le(),
                });
            }
            if b.remaining() >= 2 {
                let len = b.get_u16_le() as usize;
                if b.remaining() < len {
                    return Err(FormatError::Corrupt);
                }
                store_etag = Some(std::str::from_utf8(&b[..len]).map_err(|_| FormatError::Corrupt)?.to_owned());
            }
        }
        let header = Self {
            volume,
            key,
            bucket,
            store_key,
            version,
            data_crc32c,
            data_len,
            tombstone: flags & FLAG_TOMBSTONE != 0,
            etag,
            modified_ns,
            attrs,
            parts,
            stripe,
            store_etag,
        };
        Ok((header, header_len))
    }

    /// The store ETag this copy is pinned to (unquoted).
    pub fn pinned_etag(&self) -> &str {
        self.store_etag.as_deref().unwrap_or(&self.etag)
    }
}

fn take_u32(b: &mut &[u8]) -> Result<u32, FormatError> {
    if b.remaining() < 4 {
        return Err(FormatError::Corrupt);
    }
    Ok(b.get_u32_le())
}

/// Makes a directory's entries durable: an fsync of the directory. A trait only so that tests can
/// see which directories were synced, since power loss cannot be simulated here.
pub trait DirSync: std::fmt::Debug + Send + Sync {
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real [`DirSync`]: `fsync(2)` on the directory.
#[derive(Debug)]
pub struct Fsync;

impl DirSync for Fsync {
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// The cache folder's layout: `dirty/`, `clean/` and `tmp/`, each with hashed file names.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    /// Set with `--sync`: every directory entry an acknowledged dirty block depends on is made
    /// durable before the ack.
    dir_sync: Option<Arc<dyn DirSync>>,
    /// Fan-out directories known to exist (and, with `dir_sync`, to be durable) in this process.
    fanouts: Arc<Mutex<HashSet<PathBuf>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    Dirty,
    Clean,
}

impl Layout {
    /// Opens (creating if needed) the layout under `root`; `sync` fsyncs directories as needed.
    pub fn new(root: impl Into<PathBuf>, sync: bool) -> io::Result<Self> {
        Self::with_dir_sync(root, sync.then(|| Arc::new(Fsync) as Arc<dyn DirSync>))
    }

    pub fn with_dir_sync(root: impl Into<PathBuf>, dir_sync: Option<Arc<dyn DirSync>>) -> io::Result<Self> {
        let root = root.into();
        let created_root = !root.is_dir();
        std::fs::create_dir_all(&root)?;
        for d in ["dirty", "clean", "tmp"] {
            match std::fs::create_dir(root.join(d)) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        if let Some(s) = &dir_sync {
            // The area directories must not vanish on power loss with the blocks acked into them.
            if created_root && let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                s.sync_dir(parent)?;
            }
            s.sync_dir(&root)?;
        }
        // Leftovers of writes that were never acknowledged, and of evicted blocks set aside.
        for entry in std::fs::read_dir(root.join("tmp"))? {
            let _ = std::fs::remove_file(entry?.path());
        }
        Ok(Self { root, dir_sync, fanouts: Arc::default() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn file_name(volume: &str, key: &str) -> String {
        let mut h = Sha256::new();
        h.update(volume.as_bytes());
        h.update([0]);
        h.update(key.as_bytes());
        hex::encode(&h.finalize()[..16])
    }

    pub fn path(&self, area: Area, name: &str) -> PathBuf {
        self.fanout_dir(area, name).join(name)
    }

    fn fanout_dir(&self, area: Area, name: &str) -> PathBuf {
        self.area_dir(area).join(&name[..2])
    }

    pub fn area_dir(&self, area: Area) -> PathBuf {
        self.root.join(match area {
            Area::Dirty => "dirty",
            Area::Clean => "clean",
        })
    }

    pub fn tmp_path(&self) -> PathBuf {
        self.root.join("tmp").join(format!("{:016x}", rand::random::<u64>()))
    }

    /// Writes header + data to a fresh temporary file, fsyncing it when `sync`. Returns its path.
    /// A failed write (a full disk, say) removes what it wrote.
    pub fn write_tmp(&self, header: &BlockHeader, data: &[u8], sync: bool) -> io::Result<PathBuf> {
        let path = self.tmp_path();
        let written = File::create(&path).and_then(|mut f| {
            f.write_all(&header.encode())?;
            f.write_all(data)?;
            if sync { f.sync_all() } else { Ok(()) }
        });
        match written {
            Ok(()) => Ok(path),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Starts a temporary block file with `data` at `room`, leaving the first `room` bytes for a
    /// header that is not known yet (a write's ETag still being hashed). [`Layout::finish_tmp`]
    /// writes it. A failed write removes what it wrote.
    pub fn write_tmp_data_at(&self, room: u64, data: &[u8]) -> io::Result<(PathBuf, File)> {
        use std::os::unix::fs::FileExt;
        let path = self.tmp_path();
        let written = File::create(&path).and_then(|f| f.write_all_at(data, room).map(|()| f));
        written.map(|f| (path.clone(), f)).inspect_err(|_| {
            let _ = std::fs::remove_file(&path);
        })
    }

    /// Writes `header` into the `room` left by [`Layout::write_tmp_data_at`], fsyncing the file
    /// when `sync`. The header must fill the room exactly; otherwise, or on a failed write, the
    /// file is removed.
    pub fn finish_tmp(&self, path: &Path, file: File, header: &BlockHeader, room: u64, sync: bool) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let encoded = header.encode();
        let written = if encoded.len() as u64 != room {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the block header is {} bytes, not the {room} left for it", encoded.len()),
            ))
        } else {
            file.write_all_at(&encoded, 0).and_then(|()| if sync { file.sync_all() } else { Ok(()) })
        };
        written.inspect_err(|_| {
            let _ = std::fs::remove_file(path);
        })
    }

    /// Creates the fan-out directory of `name` in `area` unless this process already has. A dirty
    /// one is then made durable in its area directory when syncing: without that, power loss could
    /// take the directory, and every block acknowledged into it, away. Clean blocks are a cache,
    /// so losing one costs only a refetch. Blocking; call it before taking locks where possible.
    pub fn ensure_fanout(&self, area: Area, name: &str) -> io::Result<()> {
        let dir = self.fanout_dir(area, name);
        if self.known_fanouts().contains(&dir) {
            return Ok(());
        }
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        if area == Area::Dirty
            && let Some(s) = &self.dir_sync
        {
            // Also when it existed already: a previous process may have crashed before its fsync.
            s.sync_dir(&self.area_dir(area))?;
        }
        self.known_fanouts().insert(dir);
        Ok(())
    }

    fn known_fanouts(&self) -> std::sync::MutexGuard<'_, HashSet<PathBuf>> {
        self.fanouts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves a finished file into place (atomic rename), creating its fan-out directory.
    pub fn install(&self, from: &Path, area: Area, name: &str) -> io::Result<PathBuf> {
        self.ensure_fanout(area, name)?;
        let to = self.path(area, name);
        std::fs::rename(from, &to)?;
        Ok(to)
    }

    /// Makes an installed file's directory entry durable, when syncing.
    pub fn sync_installed(&self, path: &Path) -> io::Result<()> {
        match (&self.dir_sync, path.parent()) {
            (Some(s), Some(dir)) => s.sync_dir(dir),
            _ => Ok(()),
        }
    }

    /// Moves a block file out of its area into `tmp/` (emptied at start) and returns where it
    /// went, or `None` if there was no such file. A rename is a short metadata operation, so it can
    /// run under the index lock; the unlink, slow for a large file, can then run outside it,
    /// without the risk of deleting a newer file installed meanwhile under the same name.
    pub fn set_aside(&self, area: Area, name: &str) -> io::Result<Option<PathBuf>> {
        let to = self.tmp_path();
        match std::fs::rename(self.path(area, name), &to) {
            Ok(()) => Ok(Some(to)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Opens a cache file to read it, with `O_NOATIME`: every read or `sendfile` of a file opened
/// without it goes through the kernel's access-time check (about 2% of the proxy's CPU under
/// 64 KiB hits, perf), and the cache keeps its own order of use (the index's LRU). The flag
/// needs the caller to own the file; one it does not own (a cache folder copied in by another
/// user) is opened as usual.
pub fn open_to_read(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let no_atime = rustix::fs::OFlags::NOATIME.bits() as i32;
    match std::fs::OpenOptions::new().read(true).custom_flags(no_atime).open(path) {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error()) => File::open(path),
        opened => opened,
    }
}

/// Reads a whole block file and verifies both checksums.
pub fn read_block(path: &Path) -> io::Result<Result<(BlockHeader, Bytes), FormatError>> {
    let mut buf = Vec::new();
    open_to_read(path)?.read_to_end(&mut buf)?;
    let buf = Bytes::from(buf);
    let (header, len) = match BlockHeader::decode(&buf) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    let data = buf.slice(len..);
    if data.len() as u64 != header.data_len || crc::crc32c(&data) != header.data_crc32c {
        return Ok(Err(FormatError::DataChecksum));
    }
    Ok(Ok((header, data)))
}

/// Opens a block file and verifies its data's CRC32C, reading it in 1 MiB steps: the header, the
/// open file, where the data starts, and the data itself when it is one part of at most
/// `in_memory` bytes.
#[allow(clippy::type_complexity)]
pub fn open_verified(
    path: &Path,
    in_memory: u64,
) -> io::Result<Result<(BlockHeader, File, u64, Option<Bytes>), FormatError>> {
    let mut file = open_to_read(path)?;
    let (header, offset, size) = match read_header_of(&mut file)? {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    if size != offset + header.data_len {
        return Ok(Err(FormatError::DataChecksum));
    }
    let whole = header.parts.len() <= 1 && header.data_len <= in_memory;
    let mut data = whole.then(|| Vec::with_capacity(header.data_len as usize));
    let crc = data_crc32c(&file, offset, header.data_len, &mut vec![0u8; 1 << 20], |piece| {
        if let Some(d) = data.as_mut() {
            d.extend_from_slice(piece);
        }
    })?;
    if crc != header.data_crc32c {
        return Ok(Err(FormatError::DataChecksum));
    }
    Ok(Ok((header, file, offset, data.map(Bytes::from))))
}

/// The CRC32C of `len` bytes of `file` from `offset`, read through `buf`; `each` sees every
/// piece as it is read.
pub fn data_crc32c(file: &File, offset: u64, len: u64, buf: &mut [u8], mut each: impl FnMut(&[u8])) -> io::Result<u32> {
    use std::os::unix::fs::FileExt;
    let (mut crc, mut at) = (0u32, 0u64);
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset + at)?;
        crc = crc::crc32c_append(crc, &buf[..n]);
        each(&buf[..n]);
        at += n as u64;
    }
    Ok(crc)
}

/// The CRC32Cs of `len` bytes of `file` from `offset`, in one pass through `buf`: of all of
/// them, of their blocks of `block_size` (when given), and of their pieces of `piece` bytes (the
/// last block or piece may be shorter).
pub fn part_crc32cs(
    file: &File,
    offset: u64,
    len: u64,
    block_size: Option<u64>,
    piece: u64,
    buf: &mut [u8],
) -> io::Result<(u32, Vec<u32>, Vec<u32>)> {
    let mut blocks = block_size.map(|size| Cuts::new(size, len));
    let mut pieces = Cuts::new(piece, len);
    let whole = data_crc32c(file, offset, len, buf, |bytes| {
        pieces.feed(bytes);
        if let Some(b) = blocks.as_mut() {
            b.feed(bytes);
        }
    })?;
    Ok((whole, blocks.map(Cuts::finish).unwrap_or_default(), pieces.finish()))
}

/// The CRC32Cs of bytes fed in any slices, cut every `size` bytes.
struct Cuts {
    size: u64,
    running: crc::Crc32c,
    filled: u64,
    crcs: Vec<u32>,
}

impl Cuts {
    fn new(size: u64, len: u64) -> Self {
        let size = size.max(1);
        Self { size, running: crc::Crc32c::default(), filled: 0, crcs: Vec::with_capacity(len.div_ceil(size) as usize) }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = bytes.len().min((self.size - self.filled) as usize);
            self.running.update(&bytes[..n]);
            (self.filled, bytes) = (self.filled + n as u64, &bytes[n..]);
            if self.filled == self.size {
                self.crcs.push(self.running.finish());
                (self.running, self.filled) = (crc::Crc32c::default(), 0);
            }
        }
    }

    fn finish(mut self) -> Vec<u32> {
        if self.filled > 0 {
            self.crcs.push(self.running.finish());
        }
        self.crcs
    }
}

/// Reads only the header of a block file (for the start-up scan), and the file's size.
pub fn read_header(path: &Path) -> io::Result<Result<(BlockHeader, u64), FormatError>> {
    Ok(read_header_len(path)?.map(|(h, _, size)| (h, size)))
}

/// Reads only the header of a block file: the header, its length (where the data starts), and
/// the file's size. Headers with many parts or attributes may exceed the first read.
pub fn read_header_len(path: &Path) -> io::Result<Result<(BlockHeader, u64, u64), FormatError>> {
    read_header_of(&mut open_to_read(path)?)
}

/// [`read_header_len`] of an open file (read from its current position, the start).
pub fn read_header_of(f: &mut File) -> io::Result<Result<(BlockHeader, u64, u64), FormatError>> {
    let size = f.metadata()?.len();
    read_sized_header_of(f, size)
}

/// [`read_header_of`] a file of `size` bytes.
fn read_sized_header_of(f: &mut File, size: u64) -> io::Result<Result<(BlockHeader, u64, u64), FormatError>> {
    let mut buf = vec![0u8; 4096.min(size as usize)];
    f.read_exact(&mut buf)?;
    if buf.len() >= 8 && &buf[..4] == MAGIC {
        let header_len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as u64;
        if header_len > buf.len() as u64 && header_len <= size && header_len <= MAX_HEADER_LEN {
            let have = buf.len();
            buf.resize(header_len as usize, 0);
            f.read_exact(&mut buf[have..])?;
        }
    }
    Ok(BlockHeader::decode(&buf).map(|(h, len)| (h, len as u64, size)))
}

/// What [`read_block_of`] found in a block file.
pub struct ReadBlock {
    pub header: BlockHeader,
    /// Where the data starts.
    pub data_offset: u64,
    pub file_size: u64,
    /// The data, when the file was read whole (not verified).
    pub data: Option<Bytes>,
}

/// A block file's header, and its data too when the whole file is at most `read_whole` bytes:
/// then one read into a pooled buffer brings both (a small hit costs one read, not three and
/// an allocation). Larger files get [`read_header_of`].
pub fn read_block_of(
    f: &mut File,
    read_whole: u64,
    buffers: &Arc<super::buffers::BufferPool>,
) -> io::Result<Result<ReadBlock, FormatError>> {
    use std::os::unix::fs::FileExt;
    let size = f.metadata()?.len();
    if size > read_whole {
        return Ok(read_sized_header_of(f, size)?.map(|(header, data_offset, file_size)| ReadBlock {
            header,
            data_offset,
            file_size,
            data: None,
        }));
    }
    let whole = buffers.read(size as usize, |buf| f.read_exact_at(buf, 0))?;
    Ok(BlockHeader::decode(&whole).map(|(header, at)| ReadBlock {
        header,
        data_offset: at as u64,
        file_size: size,
        data: Some(whole.slice(at..)),
    }))
}

/// Every file below an area (two-level fan-out).
pub fn list_area(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for fan in std::fs::read_dir(dir)? {
        let fan = fan?;
        if fan.file_type()?.is_dir() {
            for f in std::fs::read_dir(fan.path())? {
                out.push(f?.path());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A file opened by [`open_to_read`] is read without moving its access time, where a plain
    /// open's read moves it. That is checked first: on a file system mounted `noatime` neither
    /// moves it, so there the test can check nothing; it prints so and returns. Here (ext4,
    /// `relatime`) it checks, and it fails without the flag.
    #[test]
    fn a_cache_file_is_read_without_touching_its_access_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("block");
        std::fs::write(&path, b"some bytes").unwrap();
        // Older than the modification time and than a day, so `relatime` would update it.
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 24 * 3600);
        let set_old = || {
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.set_times(std::fs::FileTimes::new().set_accessed(old)).unwrap();
        };
        let accessed = || std::fs::metadata(&path).unwrap().accessed().unwrap();
        let read_all = |mut f: File| {
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).unwrap();
            assert_eq!(buf, b"some bytes");
        };

        set_old();
        read_all(File::open(&path).unwrap());
        if accessed() == old {
            eprintln!("this file system does not record access times: nothing to check here");
            return;
        }
        set_old();
        read_all(open_to_read(&path).unwrap());
        assert_eq!(accessed(), old, "a read through open_to_read moved the access time");
    }

    /// Each block's and each piece's CRC32C is the CRC32C of its bytes, and the whole's is the
    /// data's, for cuts smaller and larger than the read buffer, a short last cut, and no data.
    #[test]
    fn part_crc32cs_are_each_blocks_each_pieces_and_the_wholes() {
        use std::io::Write;
        let data: Vec<u8> = (0..300_001u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"header").unwrap();
        f.write_all(&data).unwrap();
        for (len, block_size, piece, buf) in [
            (0, Some(64), 16, 16),
            (300_001, Some(65_536), 1_000, 4096),
            (300_001, Some(1_000), 65_536, 65_536),
            (131_072, None, 65_536, 1 << 20),
        ] {
            let d = &data[..len];
            let (whole, blocks, pieces) =
                part_crc32cs(&f, 6, len as u64, block_size, piece, &mut vec![0u8; buf]).unwrap();
            assert_eq!(whole, crc::crc32c(d), "len {len}");
            let cut = |size: u64| d.chunks(size as usize).map(crc::crc32c).collect::<Vec<u32>>();
            assert_eq!(blocks, block_size.map(cut).unwrap_or_default(), "len {len}, blocks of {block_size:?}");
            assert_eq!(pieces, cut(piece), "len {len}, pieces of {piece}, buffer {buf}");
        }
    }

    pub(crate) fn header() -> BlockHeader {
        BlockHeader {
            volume: "v".into(),
            key: "a/b".into(),
            bucket: "bucket".into(),
            store_key: "pfx/a/b".into(),
            version: 42,
            data_crc32c: crc::crc32c(b"data"),
            data_len: 4,
            tombstone: false,
            etag: "8d777f385d3dfec8815d20f7496026dc".into(),
            modified_ns: 42,
            attrs: ObjectAttrs {
                content_type: Some("text/plain".into()),
                user_metadata: [("a".to_owned(), "b".to_owned())].into(),
                ..Default::default()
            },
            parts: vec![4],
            stripe: None,
            store_etag: None,
        }
    }

    #[test]
    fn header_round_trips_and_detects_corruption() {
        let enc = header().encode();
        let (h, len) = BlockHeader::decode(&enc).unwrap();
        assert_eq!((h, len), (header(), enc.len()));
        for i in 8..enc.len() {
            let mut bad = enc.to_vec();
            bad[i] ^= 0x40;
            assert!(BlockHeader::decode(&bad).is_err(), "flip at {i} undetected");
        }
        assert!(BlockHeader::decode(&enc[..enc.len() - 1]).is_err());
    }

    #[test]
    fn a_fetched_copy_keeps_its_store_etag_apart_from_its_s3_etag() {
        let h = BlockHeader { store_etag: Some("1795718556636854".into()), ..header() };
        let enc = h.encode();
        let (back, len) = BlockHeader::decode(&enc).unwrap();
        assert_eq!((back.pinned_etag(), back.etag.as_str(), len), ("1795718556636854", h.etag.as_str(), enc.len()));
        assert_eq!(header().pinned_etag(), header().etag, "without one, the copy is pinned to its ETag");
    }

    #[test]
    fn format_1_headers_written_before_the_object_model_still_decode() {
        // Encoded as format 1 did: no ETag, write time, attributes, parts or stripe.
        let mut body = BytesMut::new();
        body.put_u16_le(FORMAT_V1);
        body.put_u16_le(0);
        body.put_u64_le(42);
        body.put_u32_le(crc::crc32c(b"data"));
        body.put_u64_le(4);
        for s in ["v", "a/b", "bucket", "pfx/a/b"] {
            body.put_u16_le(s.len() as u16);
            body.put_slice(s.as_bytes());
        }
        let mut enc = BytesMut::new();
        enc.put_slice(MAGIC);
        enc.put_u32_le((4 + 4 + body.len() + 4) as u32);
        enc.put_slice(&body);
        let crc = crc::crc32c(&enc);
        enc.put_u32_le(crc);
        let (h, len) = BlockHeader::decode(&enc).unwrap();
        assert_eq!(len, enc.len());
        let expected =
            BlockHeader { etag: String::new(), attrs: ObjectAttrs::default(), parts: Vec::new(), ..header() };
        assert_eq!(h, expected, "format 1 decodes with no ETag, attributes or parts; written at its version");
    }

    #[test]
    fn large_headers_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), false).unwrap();
        let mut h = header();
        h.parts = vec![1; 2000];
        h.data_len = 4;
        let tmp = layout.write_tmp(&h, b"data", false).unwrap();
        let (read, offset, size) = read_header_len(&tmp).unwrap().unwrap();
        assert!(offset > 4096, "the header spans more than the first read");
        assert_eq!((read, size), (h, offset + 4));
    }

    #[test]
    fn block_files_verify_data() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), false).unwrap();
        let tmp = layout.write_tmp(&header(), b"data", true).unwrap();
        let name = Layout::file_name("v", "a/b");
        let path = layout.install(&tmp, Area::Dirty, &name).unwrap();
        let (h, data) = read_block(&path).unwrap().unwrap();
        assert_eq!((h.version, &data[..]), (42, &b"data"[..]));
        // Flip one data byte on disk: the read must refuse it.
        let mut raw = std::fs::read(&path).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        std::fs::write(&path, raw).unwrap();
        assert!(matches!(read_block(&path).unwrap(), Err(FormatError::DataChecksum)));
        assert_eq!(list_area(&layout.area_dir(Area::Dirty)).unwrap(), vec![path]);
    }

    /// Records the directories it syncs, then really syncs them.
    #[derive(Debug, Default)]
    struct RecordingSync(Mutex<Vec<PathBuf>>);

    impl DirSync for RecordingSync {
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            self.0.lock().unwrap().push(dir.to_path_buf());
            Fsync.sync_dir(dir)
        }
    }

    impl RecordingSync {
        fn take(&self) -> Vec<PathBuf> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
    }

    /// Installs a dirty block as `Cache::write_dirty` does before its ack.
    fn install_dirty(layout: &Layout, key: &str) -> PathBuf {
        let name = Layout::file_name("v", key);
        let tmp = layout.write_tmp(&header(), b"data", true).unwrap();
        let path = layout.install(&tmp, Area::Dirty, &name).unwrap();
        layout.sync_installed(&path).unwrap();
        path
    }

    #[test]
    fn with_sync_a_new_fan_out_directory_is_made_durable_in_its_area_before_the_ack() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let syncs = Arc::new(RecordingSync::default());
        let layout = Layout::with_dir_sync(&root, Some(syncs.clone() as Arc<dyn DirSync>)).unwrap();
        assert_eq!(syncs.take(), [dir.path(), root.as_path()], "the new root and its area directories");

        let first = install_dirty(&layout, "a");
        let fanout = first.parent().unwrap().to_path_buf();
        assert_eq!(syncs.take(), [layout.area_dir(Area::Dirty), fanout.clone()]);
        // A second block in the same fan-out directory needs only that directory synced. Find a
        // key whose file name shares the first one's two-character fan-out prefix.
        let same_fanout = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| Layout::file_name("v", k)[..2] == Layout::file_name("v", "a")[..2])
            .unwrap();
        install_dirty(&layout, &same_fanout);
        assert_eq!(syncs.take(), [fanout]);
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = BlockHeader::decode(&data);
        }
    }
}
