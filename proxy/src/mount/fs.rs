//! The FUSE adapter: fuser's session threads call these methods; each one becomes a task on the
//! tokio runtime that answers the kernel when the client library is done, so no session thread
//! ever waits on the network (ADR 0006). What each operation means is docs/SEMANTICS.md.

use super::dirs::Listing;
use super::errno;
use super::inodes::{Inodes, Kind, ROOT, child_path};
use super::reader::Reader;
use super::writer::Writer;
use crate::client::Client;
use crate::protocol::BlockKey;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::Mutex as AsyncMutex;

/// How long the kernel may trust attributes and entries: the volume's default metadata TTL.
const TTL: Duration = Duration::from_secs(1);
const BLKSIZE: u32 = 128 << 10;

type Result<T> = std::result::Result<T, Errno>;

#[derive(Clone)]
enum Handle {
    Read(Arc<AsyncMutex<Reader>>),
    Write { path: String, writer: Arc<AsyncMutex<Writer>> },
    Dir(Arc<AsyncMutex<Listing>>),
}

/// What `stat` says about a path.
struct Stat {
    kind: Kind,
    size: u64,
    mtime: SystemTime,
}

/// The state every request task shares.
struct Shared {
    client: Client,
    inodes: Inodes,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// Files being written on this mount, by path: the handle writing it and its length so far.
    /// Only that handle removes the entry (an old handle's late release must not hide a new one).
    writing: Mutex<HashMap<String, (u64, Arc<AtomicU64>)>>,
    uid: u32,
    gid: u32,
    started: SystemTime,
}

pub struct VolumeFs {
    shared: Arc<Shared>,
    rt: tokio::runtime::Handle,
}

impl VolumeFs {
    /// Files show as owned by `uid`:`gid`.
    pub fn new(client: Client, rt: tokio::runtime::Handle, uid: u32, gid: u32) -> Self {
        let shared = Shared {
            client,
            inodes: Inodes::default(),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            writing: Mutex::new(HashMap::new()),
            uid,
            gid,
            started: SystemTime::now(),
        };
        Self { shared: Arc::new(shared), rt }
    }

    /// Runs `f` on the runtime.
    fn spawn<F, Fut>(&self, f: F)
    where
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(f(self.shared.clone()));
    }
}

fn key(path: &str) -> Result<BlockKey> {
    BlockKey::parse(path).map_err(|_| Errno::EINVAL)
}

impl Shared {
    fn path_of(&self, ino: INodeNo) -> Result<(String, Kind)> {
        self.inodes.get(ino.0).ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<String> {
        let (dir, _) = self.path_of(parent)?;
        child_path(&dir, name, self.client.max_key_len()).map_err(|e| errno::name(&e))
    }

    fn attr(&self, ino: u64, st: &Stat) -> FileAttr {
        let (kind, perm, nlink) = match st.kind {
            Kind::File => (FileType::RegularFile, 0o644, 1),
            Kind::Dir => (FileType::Directory, 0o755, 2),
        };
        FileAttr {
            ino: INodeNo(ino),
            size: st.size,
            blocks: st.size.div_ceil(512),
            atime: st.mtime,
            mtime: st.mtime,
            ctime: st.mtime,
            crtime: st.mtime,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLKSIZE,
            flags: 0,
        }
    }

    fn dir_stat(&self) -> Stat {
        Stat { kind: Kind::Dir, size: 0, mtime: self.started }
    }

    fn writing_len(&self, path: &str) -> Option<u64> {
        self.writing.lock().unwrap().get(path).map(|(_, n)| n.load(Ordering::Relaxed))
    }

    /// The path as the volume has it: a directory when keys exist under `path/` (it shadows an
    /// object of the same name), else a file when the object exists; files being written here
    /// count too.
    async fn stat(&self, path: &str) -> Result<Option<Stat>> {
        if path.is_empty() {
            return Ok(Some(self.dir_stat()));
        }
        if let Some(size) = self.writing_len(path) {
            return Ok(Some(Stat { kind: Kind::File, size, mtime: SystemTime::now() }));
        }
        let k = key(path)?;
        let prefix = format!("{path}/");
        let (head, below) = tokio::join!(self.client.head(&k), self.client.list_page(&prefix, "", 1));
        if !below.map_err(|e| errno::client(&e))?.entries.is_empty() {
            return Ok(Some(self.dir_stat()));
        }
        Ok(head.map_err(|e| errno::client(&e))?.map(|i| Stat { kind: Kind::File, size: i.size, mtime: i.modified() }))
    }

    fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(fh, h);
        fh
    }

    fn handle(&self, fh: FileHandle) -> Result<Handle> {
        self.handles.lock().unwrap().get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// A write handle for `path`, whose content starts empty.
    fn start_writing(&self, path: &str) -> Result<u64> {
        let writer = Writer::new(self.client.clone(), key(path)?);
        let fh = self.add_handle(Handle::Write { path: path.to_owned(), writer: Arc::new(AsyncMutex::new(writer)) });
        tracing::debug!(path, fh, "writing");
        self.writing.lock().unwrap().insert(path.to_owned(), (fh, Arc::new(AtomicU64::new(0))));
        Ok(fh)
    }

    /// Commits a write handle (close, fsync): durable on the proxies when this returns `Ok`.
    async fn commit(&self, fh: u64, path: &str, writer: &AsyncMutex<Writer>) -> Result<()> {
        let mut w = writer.lock().await;
        let result = w.commit().await;
        tracing::debug!(path, fh, len = w.len(), ok = result.is_ok(), "commit");
        let mut writing = self.writing.lock().unwrap();
        if writing.get(path).is_some_and(|(owner, _)| *owner == fh) {
            writing.remove(path);
        }
        drop(writing);
        result.map_err(|e| {
            tracing::warn!(path, error = %e, "committing a file failed");
            errno::write(&e)
        })
    }

    async fn lookup(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr> {
        let path = self.child(parent, name)?;
        let st = self.stat(&path).await?;
        tracing::debug!(path, found = ?st.as_ref().map(|s| (s.kind, s.size)), "lookup");
        let st = st.ok_or(Errno::ENOENT)?;
        Ok(self.attr(self.inodes.intern(&path, st.kind), &st))
    }

    async fn getattr(&self, ino: INodeNo) -> Result<FileAttr> {
        let (path, _) = self.path_of(ino)?;
        let st = self.stat(&path).await?.ok_or(Errno::ENOENT)?;
        Ok(self.attr(ino.0, &st))
    }

    /// Only truncation to 0 (of an empty or new file, or a whole overwrite) or to the current
    /// size changes anything; mode, owner ids and times are accepted and not stored.
    async fn setattr(&self, ino: INodeNo, size: Option<u64>, uid: Option<u32>, gid: Option<u32>) -> Result<FileAttr> {
        if uid.is_some_and(|u| u != self.uid) || gid.is_some_and(|g| g != self.gid) {
            return Err(Errno::EPERM);
        }
        let (path, _) = self.path_of(ino)?;
        let st = self.stat(&path).await?.ok_or(Errno::ENOENT)?;
        if let Some(size) = size
            && size != st.size
        {
            if size != 0 || st.kind == Kind::Dir || self.writing_len(&path).is_some() {
                return Err(Errno::EPERM);
            }
            self.client.put(&key(&path)?, bytes::Bytes::new()).await.map_err(|e| errno::client(&e))?;
            return Ok(self.attr(ino.0, &Stat { size: 0, mtime: SystemTime::now(), ..st }));
        }
        Ok(self.attr(ino.0, &st))
    }

    async fn mkdir(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr> {
        let path = self.child(parent, name)?;
        if self.stat(&path).await?.is_some() {
            return Err(Errno::EEXIST);
        }
        let marker = key(&format!("{path}/"))?;
        self.client.put(&marker, bytes::Bytes::new()).await.map_err(|e| errno::client(&e))?;
        Ok(self.attr(self.inodes.intern(&path, Kind::Dir), &self.dir_stat()))
    }

    async fn unlink(&self, parent: INodeNo, name: &OsStr) -> Result<()> {
        let path = self.child(parent, name)?;
        // A file still being written here is dropped with its handle, and it may not exist yet.
        let pending = self.writing.lock().unwrap().remove(&path).map(|(fh, _)| fh);
        if let Some(fh) = pending {
            tracing::debug!(path, fh, "unlinked while being written: discarded");
            if let Ok(Handle::Write { writer, .. }) = self.handle(FileHandle(fh)) {
                writer.lock().await.discard().await;
            }
            // Only an older version needs a delete (O_TRUNC over an existing file); a delete of
            // an absent key is not sent at all.
            let k = key(&path)?;
            if self.client.head(&k).await.map_err(|e| errno::client(&e))?.is_some() {
                self.client.delete(&k).await.map_err(|e| errno::client(&e))?;
            }
            return Ok(());
        }
        match self.stat(&path).await?.map(|s| s.kind) {
            None => Err(Errno::ENOENT),
            Some(Kind::Dir) => Err(Errno::EISDIR),
            Some(Kind::File) => self.client.delete(&key(&path)?).await.map(drop).map_err(|e| errno::client(&e)),
        }
    }

    async fn rmdir(&self, parent: INodeNo, name: &OsStr) -> Result<()> {
        let path = self.child(parent, name)?;
        let prefix = format!("{path}/");
        let page = self.client.list_page(&prefix, "", 2).await.map_err(|e| errno::client(&e))?;
        let marker = page.entries.iter().any(|e| e.key == prefix);
        if page.entries.iter().any(|e| e.key != prefix) {
            return Err(Errno::ENOTEMPTY);
        }
        if !marker {
            return Err(if self.stat(&path).await?.is_some() { Errno::ENOTDIR } else { Errno::ENOENT });
        }
        self.client.delete(&key(&prefix)?).await.map(drop).map_err(|e| errno::client(&e))
    }

    /// Copy, then delete: not atomic (docs/SEMANTICS.md). Directories answer `EXDEV`, so `mv`
    /// copies their trees itself.
    async fn rename(&self, from: String, to: String, flags: RenameFlags) -> Result<()> {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return Err(Errno::EINVAL);
        }
        match self.stat(&from).await?.map(|s| s.kind) {
            None => return Err(Errno::ENOENT),
            Some(Kind::Dir) => return Err(Errno::EXDEV),
            Some(Kind::File) if self.writing_len(&from).is_some() => return Err(Errno::EBUSY),
            Some(Kind::File) => {}
        }
        match self.stat(&to).await?.map(|s| s.kind) {
            Some(Kind::Dir) => return Err(Errno::EISDIR),
            Some(Kind::File) if flags.contains(RenameFlags::RENAME_NOREPLACE) => return Err(Errno::EEXIST),
            _ => {}
        }
        tracing::debug!(from, to, "rename");
        let (src, dst) = (key(&from)?, key(&to)?);
        let failed = |e: &crate::client::ClientError| errno::client(e);
        let read = self.client.read_object(&src, None).await.map_err(|e| failed(&e))?.ok_or(Errno::ENOENT)?;
        let mut writer = Writer::new(self.client.clone(), dst);
        let mut body = read.body;
        let mut offset = 0u64;
        use futures::StreamExt;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| failed(&e))?;
            writer.write(offset, &chunk).await.map_err(|e| errno::write(&e))?;
            offset += chunk.len() as u64;
        }
        writer.commit().await.map_err(|e| errno::write(&e))?;
        self.client.delete(&src).await.map_err(|e| failed(&e))?;
        self.inodes.rename(&from, &to);
        Ok(())
    }

    async fn open(&self, ino: INodeNo, flags: OpenFlags) -> Result<u64> {
        let (path, kind) = self.path_of(ino)?;
        if kind == Kind::Dir {
            return Err(Errno::EISDIR);
        }
        if flags.acc_mode() == OpenAccMode::O_RDONLY {
            let reader = Reader::open(self.client.clone(), key(&path)?).await.map_err(|e| errno::client(&e))?;
            let reader = reader.ok_or(Errno::ENOENT)?;
            return Ok(self.add_handle(Handle::Read(Arc::new(AsyncMutex::new(reader)))));
        }
        // Writing replaces the whole object: with O_TRUNC, or when there is nothing to keep.
        if flags.0 & libc_o_trunc() == 0 {
            match self.stat(&path).await? {
                None => return Err(Errno::ENOENT),
                Some(st) if st.size > 0 => return Err(Errno::EPERM),
                Some(_) => {}
            }
        }
        self.start_writing(&path)
    }

    async fn create(&self, parent: INodeNo, name: &OsStr) -> Result<(FileAttr, u64)> {
        let path = self.child(parent, name)?;
        let fh = self.start_writing(&path)?;
        let ino = self.inodes.intern(&path, Kind::File);
        Ok((self.attr(ino, &Stat { kind: Kind::File, size: 0, mtime: SystemTime::now() }), fh))
    }

    async fn read(&self, fh: FileHandle, offset: u64, size: u32) -> Result<bytes::Bytes> {
        match self.handle(fh)? {
            Handle::Read(r) => r.lock().await.read(offset, u64::from(size)).await.map_err(|e| errno::client(&e)),
            _ => Err(Errno::EBADF),
        }
    }

    async fn write(&self, fh: FileHandle, offset: u64, data: &[u8]) -> Result<u32> {
        let Handle::Write { path, writer } = self.handle(fh)? else { return Err(Errno::EBADF) };
        let mut w = writer.lock().await;
        w.write(offset, data).await.map_err(|e| {
            tracing::warn!(path, offset, error = %e, "a write failed");
            errno::write(&e)
        })?;
        if let Some((owner, len)) = self.writing.lock().unwrap().get(&path)
            && *owner == fh.0
        {
            len.store(w.len(), Ordering::Relaxed);
        }
        Ok(data.len() as u32)
    }

    /// close (every `close` of a descriptor) and fsync.
    async fn flush(&self, fh: FileHandle) -> Result<()> {
        match self.handle(fh)? {
            Handle::Write { path, writer } => self.commit(fh.0, &path, &writer).await,
            _ => Ok(()),
        }
    }

    /// The last close; a handle nobody flushed is committed here (its errors reach no one).
    async fn release(&self, fh: FileHandle) {
        let h = self.handles.lock().unwrap().remove(&fh.0);
        if let Some(Handle::Write { path, writer }) = h {
            let _ = self.commit(fh.0, &path, &writer).await;
        }
    }

    fn opendir(&self, ino: INodeNo) -> Result<u64> {
        let (path, kind) = self.path_of(ino)?;
        if kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let prefix = if path.is_empty() { String::new() } else { format!("{path}/") };
        let pending = self
            .writing
            .lock()
            .unwrap()
            .keys()
            .filter_map(|p| p.strip_prefix(&prefix).filter(|n| !n.contains('/')).map(str::to_owned))
            .collect();
        Ok(self.add_handle(Handle::Dir(Arc::new(AsyncMutex::new(Listing::new(&path, pending))))))
    }

    /// Entries from `offset` on: 0 is ".", 1 "..", child `i` is at `i + 2` (its next offset
    /// `i + 3`); pages are listed as the kernel reads on.
    async fn readdir(&self, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Ok(Handle::Dir(listing)) = self.handle(fh) else { return reply.error(Errno::EBADF) };
        let Ok((dir, _)) = self.path_of(ino) else { return reply.error(Errno::ENOENT) };
        let mut l = listing.lock().await;
        let mut at = offset;
        if at == 0 && reply.add(ino, 1, FileType::Directory, ".") {
            return reply.ok();
        }
        at = at.max(1);
        if at == 1 && reply.add(INodeNo(ROOT), 2, FileType::Directory, "..") {
            return reply.ok();
        }
        let mut i = (at.max(2) - 2) as usize;
        loop {
            if let Err(e) = l.fill(&self.client, i + 1).await {
                tracing::warn!(dir, error = %e, "listing a directory failed");
                return reply.error(errno::client(&e));
            }
            let Some(c) = l.children.get(i) else { return reply.ok() };
            let path = if dir.is_empty() { c.name.clone() } else { format!("{dir}/{}", c.name) };
            let kind = if c.kind == Kind::Dir { FileType::Directory } else { FileType::RegularFile };
            if reply.add(INodeNo(self.inodes.intern(&path, c.kind)), i as u64 + 3, kind, &c.name) {
                return reply.ok();
            }
            i += 1;
        }
    }
}

/// `O_TRUNC` on Linux (the kernel passes it to open with `FUSE_ATOMIC_O_TRUNC`).
const fn libc_o_trunc() -> i32 {
    0o1000
}

/// Answers the kernel with `f`'s result.
macro_rules! answer {
    ($reply:ident, $fut:expr, |$v:ident| $ok:expr) => {
        match $fut.await {
            Ok($v) => $ok,
            Err(e) => $reply.error(e),
        }
    };
}

impl Filesystem for VolumeFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // open(O_TRUNC) arrives as one open, not a truncate then an open: an overwrite keeps the
        // old content readable until the new one is committed.
        let _ = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC);
        let _ = config.set_max_write(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_owned();
        self.spawn(
            |s| async move { answer!(reply, s.lookup(parent, &name), |a| reply.entry(&TTL, &a, Generation(0))) },
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.spawn(|s| async move { answer!(reply, s.getattr(ino), |a| reply.attr(&TTL, &a)) });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.spawn(|s| async move { answer!(reply, s.setattr(ino, size, uid, gid), |a| reply.attr(&TTL, &a)) });
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        const S_IFMT: u32 = 0o170000;
        const S_IFREG: u32 = 0o100000;
        if mode & S_IFMT != S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let name = name.to_owned();
        self.spawn(|s| async move {
            let made = async {
                let path = s.child(parent, &name)?;
                s.client.put(&key(&path)?, bytes::Bytes::new()).await.map_err(|e| errno::client(&e))?;
                let st = Stat { kind: Kind::File, size: 0, mtime: SystemTime::now() };
                Ok(s.attr(s.inodes.intern(&path, Kind::File), &st))
            };
            answer!(reply, made, |a| reply.entry(&TTL, &a, Generation(0)))
        });
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        let name = name.to_owned();
        self.spawn(|s| async move { answer!(reply, s.mkdir(parent, &name), |a| reply.entry(&TTL, &a, Generation(0))) });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.spawn(|s| async move { answer!(reply, s.unlink(parent, &name), |_v| reply.ok()) });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.spawn(|s| async move { answer!(reply, s.rmdir(parent, &name), |_v| reply.ok()) });
    }

    fn symlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, _target: &Path, reply: ReplyEntry) {
        reply.error(Errno::EPERM);
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EPERM);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, newname) = (name.to_owned(), newname.to_owned());
        self.spawn(|s| async move {
            let renamed = async {
                let (from, to) = (s.child(parent, &name)?, s.child(newparent, &newname)?);
                s.rename(from, to, flags).await
            };
            answer!(reply, renamed, |_v| reply.ok())
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.spawn(|s| async move {
            answer!(reply, s.open(ino, flags), |fh| reply.opened(FileHandle(fh), FopenFlags::empty()))
        });
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name.to_owned();
        self.spawn(|s| async move {
            answer!(reply, s.create(parent, &name), |v| reply.created(
                &Duration::ZERO,
                &v.0,
                Generation(0),
                FileHandle(v.1),
                FopenFlags::empty()
            ))
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.spawn(|s| async move { answer!(reply, s.read(fh, offset, size), |d| reply.data(&d)) });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        self.spawn(|s| async move { answer!(reply, s.write(fh, offset, &data), |n| reply.written(n)) });
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        self.spawn(|s| async move { answer!(reply, s.flush(fh), |_v| reply.ok()) });
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.spawn(|s| async move { answer!(reply, s.flush(fh), |_v| reply.ok()) });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(|s| async move {
            s.release(fh).await;
            reply.ok();
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.shared.opendir(ino) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, reply: ReplyDirectory) {
        self.spawn(|s| async move { s.readdir(ino, fh, offset, reply).await });
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.shared.handles.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Every namespace change is durable when it returns.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // An object store has no fixed capacity: report a large, constant one so that tools
        // that check free space go ahead.
        const BLOCKS: u64 = 1 << 40;
        reply.statfs(BLOCKS, BLOCKS, BLOCKS, BLOCKS, BLOCKS, BLKSIZE, 255, BLKSIZE);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // Not a terminal, not a device (isatty asks).
        reply.error(Errno::ENOTTY);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // The kernel then copies with reads and writes (cp does this).
        reply.error(Errno::ENOSYS);
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::EOPNOTSUPP);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::EOPNOTSUPP);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EOPNOTSUPP);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EOPNOTSUPP);
    }
}
