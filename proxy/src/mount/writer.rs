//! Writing one file: sequential writes are cut into parts of 8 MiB; a file of at most one part
//! is one PUT at commit, a larger one a multipart upload staged on the key's home proxy, each
//! part sent while the next fills (at most two parts in memory per open file). The commit
//! (`close`, `fsync`) returns once the object is acknowledged: durable on the proxies (ADR 0001).
//!
//! A part being sent holds its bytes of the client's write budget (`--write-buffer-bytes`,
//! ADR 0017) until its proxy answers. The part still filling does not: it fills at the
//! application's pace, and a budget held by an idle open file could stall a thread writing
//! another. So the mount holds at most the budget plus one part per file being written.

use crate::client::{Client, ClientError, Upload};
use crate::protocol::{BlockKey, CompletePart, CompleteUpload, DEFAULT_PART_SIZE, MAX_PARTS, ObjectAttrs};
use bytes::{Bytes, BytesMut};
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("write at offset {offset}, but the file ends at {end}: only sequential writes are supported")]
    NotSequential { offset: u64, end: u64 },
    #[error("the file is larger than {max_parts} parts of {part_size} bytes")]
    TooLarge { max_parts: u32, part_size: u64 },
    #[error("the file was already committed (fsync) or failed; open it again to write")]
    Closed,
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("a part upload task failed: {0}")]
    Task(String),
}

/// The bytes written so far, cut into parts. Pure: no I/O.
pub struct PartBuffer {
    part_size: usize,
    buf: BytesMut,
    len: u64,
    parts_out: u32,
}

impl PartBuffer {
    pub fn new(part_size: usize) -> Self {
        Self { part_size, buf: BytesMut::new(), len: 0, parts_out: 0 }
    }

    /// The file's length so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Appends `data` at `offset` (which must be the current end); returns the parts that are
    /// complete. A full part is only cut once more bytes follow it, so a file of exactly one
    /// part stays a single PUT.
    pub fn push(&mut self, offset: u64, data: &[u8]) -> Result<Vec<Bytes>, WriteError> {
        if offset != self.len {
            return Err(WriteError::NotSequential { offset, end: self.len });
        }
        self.buf.extend_from_slice(data);
        self.len += data.len() as u64;
        let mut out = Vec::new();
        while self.buf.len() > self.part_size {
            self.parts_out += 1;
            if self.parts_out >= MAX_PARTS {
                return Err(WriteError::TooLarge { max_parts: MAX_PARTS, part_size: self.part_size as u64 });
            }
            out.push(self.buf.split_to(self.part_size).freeze());
        }
        Ok(out)
    }

    /// The last part (maybe empty), and whether earlier parts were cut (a multipart upload).
    pub fn finish(&mut self) -> (Bytes, bool) {
        (self.buf.split().freeze(), self.parts_out > 0)
    }
}

/// An open file being written.
pub struct Writer {
    client: Client,
    key: BlockKey,
    parts: PartBuffer,
    upload: Option<Upload>,
    sent: Vec<CompletePart>,
    in_flight: Option<JoinHandle<Result<CompletePart, ClientError>>>,
    /// Bytes written since the last commit (a fresh writer commits even when empty: `touch`).
    dirty: bool,
    /// Committed (or failed): the object is whole, no more writes...
    closed: bool,
    /// ...except that an empty file may be written on after its commit (`dd` and shells `dup2`
    /// a new descriptor and close the first one before writing), unless it failed.
    failed: bool,
}

impl Writer {
    pub fn new(client: Client, key: BlockKey) -> Self {
        Self::with_part_size(client, key, DEFAULT_PART_SIZE as usize)
    }

    pub fn with_part_size(client: Client, key: BlockKey, part_size: usize) -> Self {
        Self {
            client,
            key,
            parts: PartBuffer::new(part_size),
            upload: None,
            sent: Vec::new(),
            in_flight: None,
            dirty: true,
            closed: false,
            failed: false,
        }
    }

    pub fn len(&self) -> u64 {
        self.parts.len()
    }

    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), WriteError> {
        if self.closed {
            if self.failed || self.parts.len() > 0 {
                return Err(WriteError::Closed);
            }
            self.closed = false;
        }
        self.dirty = true;
        let ready = self.parts.push(offset, data).inspect_err(|_| self.closed = true)?;
        for part in ready {
            if let Err(e) = self.send(part).await {
                self.fail().await;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Sends one part, after the previous one arrived (bounding memory to two parts), once the
    /// write budget has its bytes.
    async fn send(&mut self, part: Bytes) -> Result<(), WriteError> {
        if self.upload.is_none() {
            self.upload = Some(self.client.create_upload(&self.key, &ObjectAttrs::default()).await?);
        }
        self.wait_in_flight().await?;
        let held = self.client.write_budget().take(part.len() as u64).await;
        let n = self.sent.len() as u32 + 1;
        let (client, key, upload) =
            (self.client.clone(), self.key.clone(), self.upload.clone().expect("created above"));
        self.in_flight = Some(tokio::spawn(async move {
            let etag = client.upload_part(&key, &upload, n, part).await;
            drop(held);
            Ok(CompletePart { part_number: n, etag: Some(etag?) })
        }));
        Ok(())
    }

    async fn wait_in_flight(&mut self) -> Result<(), WriteError> {
        if let Some(h) = self.in_flight.take() {
            let part = h.await.map_err(|e| WriteError::Task(e.to_string()))??;
            self.sent.push(part);
        }
        Ok(())
    }

    /// Makes everything written durable (close, fsync). Later writes fail: the object is whole
    /// (an empty one excepted, see `failed`).
    pub async fn commit(&mut self) -> Result<(), WriteError> {
        if !self.dirty {
            return Ok(());
        }
        if self.closed {
            return Err(WriteError::Closed);
        }
        self.closed = true;
        let result = self.commit_inner().await;
        if result.is_err() {
            self.fail().await;
        } else {
            self.dirty = false;
        }
        result
    }

    async fn commit_inner(&mut self) -> Result<(), WriteError> {
        let (last, multipart) = self.parts.finish();
        if !multipart {
            let _held = self.client.write_budget().take(last.len() as u64).await;
            self.client.put_object(&self.key, last.into(), &ObjectAttrs::default(), &[]).await?;
            return Ok(());
        }
        self.send(last).await?;
        self.wait_in_flight().await?;
        let upload = self.upload.clone().expect("a multipart file has an upload");
        let parts = CompleteUpload { parts: std::mem::take(&mut self.sent), version: None };
        self.client.complete_upload(&self.key, &upload, parts).await?;
        Ok(())
    }

    /// The file was unlinked while open: nothing of it is committed, ever (`git` unlinks an
    /// unused lock file before closing it).
    pub async fn discard(&mut self) {
        self.fail().await;
    }

    /// Gives up: aborts the staged upload (the proxy expires it otherwise).
    async fn fail(&mut self) {
        self.closed = true;
        self.failed = true;
        self.dirty = false;
        if let Some(h) = self.in_flight.take() {
            h.abort();
        }
        if let Some(upload) = self.upload.take()
            && let Err(e) = self.client.abort_upload(&self.key, &upload).await
        {
            tracing::warn!(key = %self.key, error = %e, "aborting a failed upload failed; the proxy expires it later");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_cut_only_when_more_bytes_follow() {
        let mut b = PartBuffer::new(4);
        assert!(b.push(0, b"abcd").unwrap().is_empty(), "exactly one part stays a single PUT");
        assert_eq!(b.push(4, b"efghij").unwrap(), vec![Bytes::from_static(b"abcd"), Bytes::from_static(b"efgh")]);
        assert_eq!(b.len(), 10);
        assert_eq!(b.finish(), (Bytes::from_static(b"ij"), true));
    }

    #[test]
    fn a_small_file_is_one_part_and_writes_must_be_sequential() {
        let mut b = PartBuffer::new(4);
        b.push(0, b"ab").unwrap();
        assert!(matches!(b.push(5, b"x"), Err(WriteError::NotSequential { offset: 5, end: 2 })));
        assert!(matches!(b.push(0, b"x"), Err(WriteError::NotSequential { offset: 0, end: 2 })));
        assert_eq!(b.finish(), (Bytes::from_static(b"ab"), false));
        let mut empty = PartBuffer::new(4);
        assert_eq!(empty.finish(), (Bytes::new(), false), "touch: an empty object");
    }
}
