//! The on-disk block format and layout. Every cached block is one file:
//!
//! ```text
//! magic "BPXB" | header_len u32 | format u16 | flags u16 | version u64 | data_crc32c u32 |
//! data_len u64 | 4 x (u16 len + bytes): volume, key, bucket, store_key | header_crc32c u32 | data
//! ```
//!
//! The header carries everything needed to flush the block (its store location and version), so
//! the writeback queue is rebuilt from the `dirty/` directory alone after a crash, even if the
//! volume has meanwhile been removed from the volumes file. Files are named by a hash of
//! (volume, key) under a two-level fan-out, because keys may be longer than a file name.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"BPXB";
const FORMAT: u16 = 1;
const FLAG_TOMBSTONE: u16 = 1;

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
        for s in [&self.volume, &self.key, &self.bucket, &self.store_key] {
            // Names are validated to be far below u16::MAX long.
            body.put_u16_le(s.len() as u16);
            body.put_slice(s.as_bytes());
        }
        let header_len = (4 + 4 + body.len() + 4) as u32;
        let mut out = BytesMut::with_capacity(header_len as usize);
        out.put_slice(MAGIC);
        out.put_u32_le(header_len);
        out.put_slice(&body);
        let crc = crc32c::crc32c(&out);
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
        if crc32c::crc32c(covered) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(FormatError::Corrupt);
        }
        let mut b = &covered[8..];
        let format = b.get_u16_le();
        if format != FORMAT {
            return Err(FormatError::UnsupportedFormat(format));
        }
        let flags = b.get_u16_le();
        let version = b.get_u64_le();
        let data_crc32c = b.get_u32_le();
        let data_len = b.get_u64_le();
        let mut strings = Vec::with_capacity(4);
        for _ in 0..4 {
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
        let [volume, key, bucket, store_key]: [String; 4] = strings.try_into().map_err(|_| FormatError::Corrupt)?;
        let header = Self {
            volume,
            key,
            bucket,
            store_key,
            version,
            data_crc32c,
            data_len,
            tombstone: flags & FLAG_TOMBSTONE != 0,
        };
        Ok((header, header_len))
    }
}

/// The cache folder's layout: `dirty/`, `clean/` and `tmp/`, each with hashed file names.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    Dirty,
    Clean,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        for d in ["dirty", "clean", "tmp"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        // Leftovers of writes that were never acknowledged.
        for entry in std::fs::read_dir(root.join("tmp"))? {
            let _ = std::fs::remove_file(entry?.path());
        }
        Ok(Self { root })
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
        let dir = match area {
            Area::Dirty => "dirty",
            Area::Clean => "clean",
        };
        self.root.join(dir).join(&name[..2]).join(name)
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
    pub fn write_tmp(&self, header: &BlockHeader, data: &[u8], sync: bool) -> io::Result<PathBuf> {
        let path = self.tmp_path();
        let mut f = File::create(&path)?;
        f.write_all(&header.encode())?;
        f.write_all(data)?;
        if sync {
            f.sync_all()?;
        }
        Ok(path)
    }

    /// Moves a finished file into place (atomic rename), creating its fan-out directory.
    pub fn install(&self, from: &Path, area: Area, name: &str) -> io::Result<PathBuf> {
        let to = self.path(area, name);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(from, &to)?;
        Ok(to)
    }
}

/// Fsyncs a directory so a rename into it survives power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads a whole block file and verifies both checksums.
pub fn read_block(path: &Path) -> io::Result<Result<(BlockHeader, Bytes), FormatError>> {
    let mut buf = Vec::new();
    File::open(path)?.read_to_end(&mut buf)?;
    let buf = Bytes::from(buf);
    let (header, len) = match BlockHeader::decode(&buf) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    let data = buf.slice(len..);
    if data.len() as u64 != header.data_len || crc32c::crc32c(&data) != header.data_crc32c {
        return Ok(Err(FormatError::DataChecksum));
    }
    Ok(Ok((header, data)))
}

/// Reads only the header of a block file (for the start-up scan), and the file's size.
pub fn read_header(path: &Path) -> io::Result<Result<(BlockHeader, u64), FormatError>> {
    let mut f = File::open(path)?;
    let size = f.metadata()?.len();
    let mut buf = vec![0u8; 4096.min(size as usize)];
    f.read_exact(&mut buf)?;
    Ok(BlockHeader::decode(&buf).map(|(h, _)| (h, size)))
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
mod tests {
    use super::*;

    fn header() -> BlockHeader {
        BlockHeader {
            volume: "v".into(),
            key: "a/b".into(),
            bucket: "bucket".into(),
            store_key: "pfx/a/b".into(),
            version: 42,
            data_crc32c: crc32c::crc32c(b"data"),
            data_len: 4,
            tombstone: false,
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
    fn block_files_verify_data() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path()).unwrap();
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

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = BlockHeader::decode(&data);
        }
    }
}
