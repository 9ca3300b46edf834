//! Read-ahead within one memory budget for the whole client (`--read-ahead-bytes`, ADR 0016).
//!
//! A large read fetches the blocks after the one being sent, so that several proxies work at
//! once. Each fetched block is held in memory until its bytes are sent, so without a bound a
//! sidecar serving many large reads holds `reads x depth` blocks. Read-ahead therefore takes
//! bytes from a budget shared by every read, in turn, and gives them back once the block is sent.
//!
//! The block a reader is waiting for never waits for the budget. One task may read several
//! objects in turn (a FUSE reader with many open files, an S3 client reading its streams one
//! after another): if the block it waits for needed bytes that other streams' read-ahead holds,
//! and those streams are only read after this one, it would wait forever. So a block the reader
//! waits for takes its bytes from the budget when they are free, and otherwise is read in
//! [`PIECE`]-byte ranges, one at a time, each fetched once the previous one is sent (ADR 0019).
//! Memory is then at most the budget plus one piece per read in progress, whatever the block
//! size, and a read under pressure still moves, a piece at a time.

use super::ClientError;
use super::chunks::Chunks;
use crate::budget::QueuedBudget;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use prometheus::IntCounter;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::task::Poll;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio_util::task::AbortOnDropHandle;

/// A verified body, sent on in the chunks it arrived in (ADR 0014).
pub(super) fn sent_on(body: Chunks) -> impl futures::Stream<Item = Result<Bytes, ClientError>> + Send + 'static {
    futures::stream::iter(body.into_parts().into_iter().map(Ok))
}

/// What a block read under pressure is cut into: bytes held outside the budget per read in
/// progress. A block of at most this size is read whole either way.
pub const PIECE: u64 = 1 << 20;

/// `range` in consecutive pieces of at most [`PIECE`] bytes.
pub(super) fn pieces(range: Range<u64>) -> impl Iterator<Item = Range<u64>> {
    (range.start..range.end).step_by(PIECE as usize).map(move |a| a..(a + PIECE).min(range.end))
}

/// How a block is read: whole, its bytes held from the budget until sent, or piece by piece.
enum Read {
    Whole(OwnedSemaphorePermit, Chunks),
    InPieces(Range<u64>),
}

/// Fetches `blocks` (byte ranges of the object, in order) with `fetch`, at most `depth` at a
/// time, each whole block on its own task, and streams their bytes in order. A block first takes
/// its size from `budget`: the blocks ahead of the one the reader waits for wait their turn; the
/// one it waits for is read in pieces when the bytes are not free (see the module docs).
/// `in_pieces` counts those. Dropping the stream aborts the fetches in flight.
pub(super) fn read_ahead<I, F, Fut>(
    budget: Arc<QueuedBudget>,
    depth: usize,
    blocks: I,
    fetch: F,
    in_pieces: IntCounter,
) -> BoxStream<'static, Result<Bytes, ClientError>>
where
    I: Iterator<Item = Range<u64>> + Send + 'static,
    F: Fn(Range<u64>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Chunks, ClientError>> + Send + 'static,
{
    // The index of the block the reader waits for: the one after the last block fully sent.
    let (waiting_tx, waiting_rx) = watch::channel(0usize);
    let waiting_tx = Arc::new(waiting_tx);
    let fetch_ahead = fetch.clone();
    futures::stream::iter(blocks.enumerate())
        .map(move |(n, range)| {
            let (budget, mut waiting, fetch) = (budget.clone(), waiting_rx.clone(), fetch_ahead.clone());
            async move {
                let bytes = range.end - range.start;
                let held = match budget.try_take(bytes) {
                    Some(held) => held,
                    None => tokio::select! {
                        biased;
                        // An error means the read was dropped; nothing waits for this block then.
                        _ = waiting.wait_for(|w| *w >= n) => return Ok((n, Read::InPieces(range))),
                        held = budget.take(bytes) => held,
                    },
                };
                // Spawned: a future inside `buffered` only moves when the reader asks for the
                // next block, so the fetches ahead would otherwise wait for each block's send.
                let task = AbortOnDropHandle::new(tokio::spawn(fetch(range)));
                let body = match task.await {
                    Ok(body) => body?,
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                };
                Ok::<_, ClientError>((n, Read::Whole(held, body)))
            }
        })
        .buffered(depth)
        .map_ok(move |(n, read)| {
            let waiting = waiting_tx.clone();
            let (sent, held) = match read {
                Read::Whole(held, body) => (sent_on(body).boxed(), Some(held)),
                Read::InPieces(range) => {
                    in_pieces.inc();
                    let fetch = fetch.clone();
                    let sent = futures::stream::iter(pieces(range)).then(fetch).map_ok(sent_on).try_flatten();
                    (sent.boxed(), None)
                }
            };
            // After the block's last chunk: its bytes go back, then the reader waits for the next.
            let next = futures::stream::poll_fn(move |_| {
                waiting.send_replace(n + 1);
                Poll::Ready(None)
            });
            holding(sent, held).chain(next)
        })
        .try_flatten()
        .boxed()
}

/// `body` followed by giving `held` back once it is sent (or dropped).
pub(super) fn holding(
    body: BoxStream<'static, Result<Bytes, ClientError>>,
    held: Option<OwnedSemaphorePermit>,
) -> BoxStream<'static, Result<Bytes, ClientError>> {
    let mut held = held;
    body.chain(futures::stream::poll_fn(move |_| {
        drop(held.take());
        Poll::Ready(None)
    }))
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_range_in_order_and_never_exceed_a_piece() {
        for range in [0..1, 5..PIECE, 3..PIECE + 3, 7..3 * PIECE + 1, 2 * PIECE..4 * PIECE] {
            let got: Vec<_> = pieces(range.clone()).collect();
            assert_eq!(got.first().map(|r| r.start), Some(range.start), "{range:?}");
            assert_eq!(got.last().map(|r| r.end), Some(range.end), "{range:?}");
            assert!(got.windows(2).all(|w| w[0].end == w[1].start), "{range:?}: contiguous");
            assert!(got.iter().all(|r| r.end > r.start && r.end - r.start <= PIECE), "{range:?}: {got:?}");
        }
    }
}
