//! Zero-copy hits on plain HTTP/1 (ADR 0012): the bytes of a cached block go from the page cache
//! to the socket with `sendfile(2)`, as nginx sends its cache files, instead of being read into a
//! buffer and written from it.
//!
//! hyper writes a response from `Buf`s and has no file path (hyperium/hyper#3026). So a hit's
//! body is made of *stand-ins*: slices of one static, never-written buffer, each recorded, in
//! order, with the file range it stands for. The connection's writer ([`SendfileStream`]) sees
//! hyper's `writev` slices; a stand-in slice is sent with `sendfile` from its file range, every
//! other slice (headers, other bodies) is written as it is.
//!
//! A stand-in must never reach the wire as bytes. hyper's HTTP/1 writer queues body chunks and
//! hands them to `poll_write_vectored` as they are when the connection says it writes vectored
//! (its `Queue` strategy, forced with `writev(true)` in the listener); only its `Flatten`
//! strategy copies chunks, and that one writes with `poll_write`. So the writer refuses, and
//! ends the connection on, any `poll_write` while stand-ins are pending, a stand-in without a
//! recorded range, or a slice that does not match the range it should stand for: the client
//! then sees a short body, never wrong bytes. Only HTTP/1 requests get a [`FileSends`]: HTTP/2
//! copies its DATA frames.

use bytes::Bytes;
use prometheus::IntCounter;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The largest file range one stand-in covers. It costs no memory: the buffer is never written,
/// so its pages are never touched.
pub const STAND_IN_MAX: usize = 1024 * 1024;
static STAND_IN: [u8; STAND_IN_MAX] = [0; STAND_IN_MAX];

fn is_stand_in(slice: &[u8]) -> bool {
    let (start, at) = (STAND_IN.as_ptr() as usize, slice.as_ptr() as usize);
    !slice.is_empty() && (start..start + STAND_IN_MAX).contains(&at)
}

/// A file range a stand-in on the connection still has to send.
struct Pending {
    file: Arc<File>,
    offset: u64,
    len: usize,
}

/// The file ranges of one HTTP/1 connection's stand-ins, in the order hyper writes them. Handlers
/// find it in the request's extensions.
#[derive(Clone, Default)]
pub struct FileSends(Arc<Mutex<VecDeque<Pending>>>);

impl FileSends {
    /// A body chunk standing in for `len` (at most [`STAND_IN_MAX`]) bytes of `file` from
    /// `offset`. Chunks must be made in the order hyper writes them: as it polls the body.
    pub fn chunk(&self, file: &Arc<File>, offset: u64, len: usize) -> Bytes {
        assert!(len > 0 && len <= STAND_IN_MAX, "a stand-in covers 1..={STAND_IN_MAX} bytes, not {len}");
        self.queue().push_back(Pending { file: Arc::clone(file), offset, len });
        Bytes::from_static(&STAND_IN[..len])
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A plain TCP connection that sends stand-ins from their files (see the module's docs).
pub struct SendfileStream {
    tcp: TcpStream,
    sends: FileSends,
    sent_bytes: IntCounter,
}

impl SendfileStream {
    pub fn new(tcp: TcpStream, sends: FileSends, sent_bytes: IntCounter) -> Self {
        Self { tcp, sends, sent_bytes }
    }

    /// Sends the start of `slice`, a stand-in that must cover exactly what is left of the oldest
    /// pending range.
    fn poll_send_file(&mut self, cx: &mut Context<'_>, slice: &[u8]) -> Poll<io::Result<usize>> {
        let mut queue = self.sends.queue();
        let Some(front) = queue.front_mut() else {
            return Poll::Ready(Err(out_of_step("a stand-in with no file range behind it")));
        };
        if front.len != slice.len() {
            let what = format!("a {}-byte stand-in where {} bytes of a file are due", slice.len(), front.len);
            return Poll::Ready(Err(out_of_step(&what)));
        }
        let sent = ready!(poll_write_with(&self.tcp, cx, || {
            let mut offset = front.offset;
            Ok(rustix::fs::sendfile(&self.tcp, &*front.file, Some(&mut offset), front.len)?)
        }));
        match sent {
            // The file is shorter than its header said: end the body short.
            Ok(0) => Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "cache file ended early"))),
            Ok(n) => {
                front.offset += n as u64;
                front.len -= n;
                if front.len == 0 {
                    queue.pop_front();
                }
                self.sent_bytes.inc_by(n as u64);
                Poll::Ready(Ok(n))
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// Sends `bufs`, which a stand-in follows, with `MSG_MORE`: the kernel holds them for the
    /// file's bytes, which `sendfile` sends next, so that a hit's headers do not cross the
    /// network as a small segment of their own (ADR 0021). The file's last bytes go without it,
    /// so nothing waits on an open connection, unlike with `TCP_CORK`, which stays set.
    fn poll_send_before_file(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        use rustix::net::{SendAncillaryBuffer, SendFlags, sendmsg};
        poll_write_with(&self.tcp, cx, || {
            let flags = SendFlags::MORE | SendFlags::NOSIGNAL;
            Ok(sendmsg(&self.tcp, bufs, &mut SendAncillaryBuffer::default(), flags)?)
        })
    }
}

/// Runs the write `op` on `tcp` once the socket is writable, again after each `WouldBlock`.
fn poll_write_with(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    mut op: impl FnMut() -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(tcp.poll_write_ready(cx))?;
        match tcp.try_io(Interest::WRITABLE, &mut op) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            done => return Poll::Ready(done),
        }
    }
}

fn out_of_step(what: &str) -> io::Error {
    tracing::error!(what, "zero-copy writer out of step with hyper; closing the connection");
    io::Error::other(format!("zero-copy writer out of step: {what}"))
}

impl AsyncRead for SendfileStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // hyper's copying writer: with stand-ins pending it may be carrying one as bytes.
        if is_stand_in(buf) || !self.sends.queue().is_empty() {
            return Poll::Ready(Err(out_of_step("a flat write while stand-ins are pending")));
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match bufs.iter().position(|b| is_stand_in(b)) {
            None => Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs),
            Some(0) => self.poll_send_file(cx, &bufs[0]),
            // What precedes the first stand-in (a response's headers) goes out first, as it is.
            Some(first) => self.poll_send_before_file(cx, &bufs[..first]),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair(sends: FileSends) -> (SendfileStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let counter = IntCounter::new("sent", "sent").unwrap();
        (SendfileStream::new(server, sends, counter), client)
    }

    fn file_of(bytes: &[u8]) -> Arc<File> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        Arc::new(f)
    }

    #[tokio::test]
    async fn stand_ins_go_out_as_their_file_ranges_between_ordinary_bytes() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let file = file_of(&data);
        let sends = FileSends::default();
        let (mut server, mut client) = pair(sends.clone()).await;
        let a = sends.chunk(&file, 10, 1_000_000);
        let b = sends.chunk(&file, 2_000_000, 999_999);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut bufs: Vec<Bytes> = vec![Bytes::from_static(b"head "), a, Bytes::from_static(b" mid "), b];
        while !bufs.is_empty() {
            let slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
            let mut n = server.write_vectored(&slices).await.unwrap();
            while n > 0 {
                let first = bufs[0].len().min(n);
                bytes::Buf::advance(&mut bufs[0], first);
                n -= first;
                if bufs[0].is_empty() {
                    bufs.remove(0);
                }
            }
        }
        server.shutdown().await.unwrap();
        drop(server);
        let mut want = b"head ".to_vec();
        want.extend_from_slice(&data[10..1_000_010]);
        want.extend_from_slice(b" mid ");
        want.extend_from_slice(&data[2_000_000..2_999_999]);
        assert!(reader.await.unwrap() == want, "the bytes on the wire are not the file ranges in order");
        assert!(sends.queue().is_empty());
    }

    /// The bytes before a stand-in (a response's headers) wait in the socket for the file's
    /// bytes, so that they leave in one segment instead of a small one of their own.
    #[tokio::test]
    async fn headers_before_a_stand_in_wait_for_the_file_then_all_arrive_on_the_open_connection() {
        let data: Vec<u8> = (0..65_536u32).map(|i| (i % 251) as u8).collect();
        let sends = FileSends::default();
        let (mut server, client) = pair(sends.clone()).await;
        let body = sends.chunk(&file_of(&data), 0, data.len());
        let head = Bytes::from_static(b"HTTP/1.1 200 OK\r\ncontent-length: 65536\r\n\r\n");
        let n = server.write_vectored(&[IoSlice::new(&head), IoSlice::new(&body)]).await.unwrap();
        assert_eq!(n, head.len(), "the headers go first, on their own");
        let written = std::time::Instant::now();
        let mut got = vec![0u8; head.len() + data.len()];
        // Sent at once, they would be in the client's socket when the write returns (loopback).
        // Looked for with reads that do not wait, for 50 ms: held bytes do leave after the
        // kernel's 200 ms probe timer, and a read waiting that long lost that race under load.
        let std_client = client.into_std().unwrap();
        while written.elapsed() < Duration::from_millis(50) {
            match (&std_client).read(&mut got) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                early => panic!("the headers left before the file's bytes: {early:?} after {:?}", written.elapsed()),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut client = TcpStream::from_std(std_client).unwrap();
        let mut left = &body[..];
        while !left.is_empty() {
            let n = server.write_vectored(&[IoSlice::new(left)]).await.unwrap();
            left = &left[n..];
        }
        // The connection stays open: the last segment must not wait for more.
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut got)).await.unwrap().unwrap();
        assert!(got[..head.len()] == head[..] && got[head.len()..] == data[..], "wrong bytes on the wire");
    }

    #[tokio::test]
    async fn a_copying_write_with_stand_ins_pending_ends_the_connection() {
        let sends = FileSends::default();
        let (mut server, _client) = pair(sends.clone()).await;
        let chunk = sends.chunk(&file_of(b"0123456789"), 0, 10);
        let copied = chunk.to_vec();
        let err = server.write(&copied).await.expect_err("a flat write with a stand-in pending must fail");
        assert!(err.to_string().contains("out of step"), "{err}");
    }

    #[tokio::test]
    async fn a_stand_in_that_does_not_match_its_range_ends_the_connection() {
        let sends = FileSends::default();
        let (mut server, _client) = pair(sends.clone()).await;
        let chunk = sends.chunk(&file_of(b"0123456789"), 0, 10);
        let err = server.write_vectored(&[IoSlice::new(&chunk[..4])]).await.expect_err("must fail");
        assert!(err.to_string().contains("4-byte stand-in where 10 bytes"), "{err}");
        let stray = Bytes::from_static(&STAND_IN[..3]);
        let (mut other, _client) = pair(FileSends::default()).await;
        let err = other.write_vectored(&[IoSlice::new(&stray)]).await.expect_err("must fail");
        assert!(err.to_string().contains("no file range"), "{err}");
    }

    #[tokio::test]
    async fn a_file_shorter_than_its_range_ends_the_body_short() {
        let sends = FileSends::default();
        let (mut server, _client) = pair(sends.clone()).await;
        let chunk = sends.chunk(&file_of(b"0123"), 0, 10);
        let slices = [IoSlice::new(&chunk)];
        let n = server.write_vectored(&slices).await.unwrap();
        assert_eq!(n, 4, "sendfile sends what the file has");
        let rest = [IoSlice::new(&chunk[4..])];
        let err = server.write_vectored(&rest).await.expect_err("must fail at the file's end");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
