//! A write's bytes, whole or still arriving (ADR 0022). Bytes still arriving are relayed by the
//! write's first attempt to its proxy as they come, with their CRC32C as a trailer after the last
//! one, so the proxy's receive and hashing overlap the writer's own receive. Any later attempt (a
//! retry, a failover, the store) sends them whole, once they have all arrived.
//!
//! The proxy stores nothing unless the trailer came and matches, so a body whose source fails
//! part-way (a client gone, a payload that fails its signature) ends the relay with an error
//! before the trailer and leaves nothing behind.

use super::ClientError;
use super::transport::AttemptError;
use crate::protocol::crc;
use blockproxy_protocol::{CHECKSUM_HEADER, crc32c_text};
use bytes::Bytes;
use futures::FutureExt;
use futures::future::Shared;
use http_body::Frame;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Chunks the relay may run behind its source before the source waits for it.
const RELAY_CHUNKS: usize = 16;

/// A write's bytes.
#[derive(Clone)]
pub enum PutData {
    Whole(Bytes),
    Arriving(Arc<Arriving>),
}

impl From<Bytes> for PutData {
    fn from(b: Bytes) -> Self {
        PutData::Whole(b)
    }
}

impl PutData {
    /// The bytes, once they have all arrived. Fails (as a rejected request: no other proxy would
    /// do better) when their source failed.
    pub async fn whole(&self) -> Result<Bytes, AttemptError> {
        match self {
            PutData::Whole(b) => Ok(b.clone()),
            PutData::Arriving(a) => a.whole.clone().await.map_err(|_| a.source_failed()),
        }
    }
}

const ARRIVING: u8 = 0;
const COMPLETE: u8 = 1;
const FAILED: u8 = 2;

/// Bytes still arriving: see the module's documentation.
pub struct Arriving {
    len: u64,
    relay: Mutex<Option<mpsc::Receiver<Bytes>>>,
    whole: Shared<oneshot::Receiver<Bytes>>,
    state: Arc<AtomicU8>,
    relay_over: CancellationToken,
}

impl Arriving {
    /// The declared length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The relay of the bytes as they arrive, for the first attempt to ask; `None` after.
    pub(super) fn take_relay(&self) -> Option<Relay> {
        let rx = self.relay.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        Some(Relay { rx, state: self.state.clone(), crc: 0, sent: 0, len: self.len, ended: false })
    }

    /// The relaying attempt is over (answered or failed): the source stops feeding it, so that
    /// it never waits for a request nobody reads any more.
    pub(super) fn end_relay(&self) {
        self.relay_over.cancel();
    }

    /// Whether the source failed before the last byte.
    pub(super) fn failed(&self) -> bool {
        self.state.load(Ordering::Acquire) == FAILED
    }

    pub(super) fn source_failed(&self) -> AttemptError {
        AttemptError::Rejected(ClientError::Rejected {
            status: 400,
            message: "the write's body failed before its last byte: nothing was stored".into(),
        })
    }
}

/// Bytes of `len` that are still to arrive: the [`Feed`] to give them to, and the [`PutData`]
/// to write them with.
pub fn arriving(len: u64) -> (Feed, PutData) {
    let (tx, rx) = mpsc::channel(RELAY_CHUNKS);
    let (whole_tx, whole_rx) = oneshot::channel();
    let state = Arc::new(AtomicU8::new(ARRIVING));
    let relay_over = CancellationToken::new();
    let a = Arriving {
        len,
        relay: Mutex::new(Some(rx)),
        whole: whole_rx.shared(),
        state: state.clone(),
        relay_over: relay_over.clone(),
    };
    (Feed { tx: Some(tx), whole: Some(whole_tx), state, relay_over }, PutData::Arriving(Arc::new(a)))
}

/// Where the bytes go as they arrive. Dropped before [`Feed::finish`], the write's source has
/// failed: the relay ends in an error and the whole never comes.
pub struct Feed {
    tx: Option<mpsc::Sender<Bytes>>,
    whole: Option<oneshot::Sender<Bytes>>,
    state: Arc<AtomicU8>,
    relay_over: CancellationToken,
}

impl Feed {
    /// Passes a chunk on to the relaying attempt, while there is one; waits while it runs
    /// [`RELAY_CHUNKS`] behind.
    pub async fn chunk(&mut self, b: Bytes) {
        let Some(tx) = &self.tx else { return };
        let sent = tokio::select! {
            sent = tx.send(b) => sent.is_ok(),
            () = self.relay_over.cancelled() => false,
        };
        if !sent {
            self.tx = None;
        }
    }

    /// Every byte has arrived: `whole` is all of them. The relay sends its trailer, and any later
    /// attempt sends `whole`.
    pub fn finish(mut self, whole: Bytes) {
        self.state.store(COMPLETE, Ordering::Release);
        // Closing the channel after the store: the relay reads the state once it sees the close.
        self.tx = None;
        if let Some(w) = self.whole.take() {
            let _ = w.send(whole);
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        // Before the channel closes (fields drop after this), so the relay sees the failure.
        let _ = self.state.compare_exchange(ARRIVING, FAILED, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// The request body of a relaying attempt: the chunks as they arrive, then the CRC32C trailer,
/// or an error (and no trailer) when the source failed or fell short of the declared length.
pub(super) struct Relay {
    rx: mpsc::Receiver<Bytes>,
    state: Arc<AtomicU8>,
    crc: u32,
    sent: u64,
    len: u64,
    ended: bool,
}

impl http_body::Body for Relay {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match ready!(self.rx.poll_recv(cx)) {
            Some(b) => {
                self.crc = crc::crc32c_append(self.crc, &b);
                self.sent += b.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            None => {
                self.ended = true;
                let complete = self.state.load(Ordering::Acquire) == COMPLETE;
                if !complete || self.sent != self.len {
                    return Poll::Ready(Some(Err(std::io::Error::other(format!(
                        "the body's source ended after {} of {} bytes; no checksum follows it",
                        self.sent, self.len
                    )))));
                }
                let mut trailers = http::HeaderMap::new();
                let text = crc32c_text(self.crc);
                trailers.insert(CHECKSUM_HEADER, http::HeaderValue::from_bytes(&text).expect("hex is a header value"));
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockproxy_protocol::Checksum;
    use http_body_util::BodyExt;

    async fn frames(relay: Relay) -> (Vec<u8>, Result<Option<http::HeaderMap>, String>) {
        let mut body = std::pin::pin!(relay);
        let mut data = Vec::new();
        while let Some(f) = body.frame().await {
            match f {
                Ok(f) => match f.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(f) => return (data, Ok(f.into_trailers().ok())),
                },
                Err(e) => return (data, Err(e.to_string())),
            }
        }
        (data, Ok(None))
    }

    #[tokio::test]
    async fn a_finished_body_is_relayed_with_its_crc32c_after_it_and_whole_to_later_attempts() {
        let (mut feed, data) = arriving(6);
        let PutData::Arriving(a) = &data else { unreachable!() };
        let relay = a.take_relay().unwrap();
        assert!(a.take_relay().is_none(), "only the first attempt relays");
        let reader = tokio::spawn(frames(relay));
        feed.chunk(Bytes::from_static(b"abc")).await;
        feed.chunk(Bytes::from_static(b"def")).await;
        feed.finish(Bytes::from_static(b"abcdef"));
        let (got, trailers) = reader.await.unwrap();
        assert_eq!(got, b"abcdef");
        let want = Checksum::crc32c(b"abcdef").to_string();
        assert_eq!(trailers.unwrap().unwrap().get(CHECKSUM_HEADER).unwrap(), want.as_str());
        assert_eq!(data.whole().await.ok().unwrap(), "abcdef");
    }

    #[tokio::test]
    async fn a_source_that_fails_ends_the_relay_in_an_error_and_never_gives_a_whole() {
        let (mut feed, data) = arriving(6);
        let PutData::Arriving(a) = &data else { unreachable!() };
        let reader = tokio::spawn(frames(a.take_relay().unwrap()));
        feed.chunk(Bytes::from_static(b"abcdef")).await;
        // Every byte came, but the source failed at its end (a payload failing its signature).
        drop(feed);
        let (got, end) = reader.await.unwrap();
        assert_eq!(got, b"abcdef");
        assert!(end.is_err(), "no trailer: {end:?}");
        assert!(a.failed());
        assert!(matches!(data.whole().await, Err(AttemptError::Rejected(_))));
    }

    #[tokio::test]
    async fn a_finish_short_of_the_declared_length_sends_no_trailer() {
        let (mut feed, data) = arriving(7);
        let PutData::Arriving(a) = &data else { unreachable!() };
        let reader = tokio::spawn(frames(a.take_relay().unwrap()));
        feed.chunk(Bytes::from_static(b"abcdef")).await;
        feed.finish(Bytes::from_static(b"abcdef"));
        assert!(reader.await.unwrap().1.is_err());
    }

    #[tokio::test]
    async fn the_source_never_waits_for_a_relay_whose_attempt_is_over() {
        let (mut feed, data) = arriving(1 << 20);
        let PutData::Arriving(a) = &data else { unreachable!() };
        // Taken and never read, like a request its proxy stopped reading.
        let _stalled = a.take_relay().unwrap();
        for _ in 0..RELAY_CHUNKS {
            feed.chunk(Bytes::from_static(b"x")).await;
        }
        let more = tokio::spawn(async move {
            feed.chunk(Bytes::from_static(b"y")).await;
            feed
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!more.is_finished(), "a full relay holds its source back");
        a.end_relay();
        let feed = tokio::time::timeout(std::time::Duration::from_secs(5), more).await.unwrap().unwrap();
        feed.finish(Bytes::from_static(b"whole"));
        assert_eq!(data.whole().await.ok().unwrap(), "whole");
    }
}
