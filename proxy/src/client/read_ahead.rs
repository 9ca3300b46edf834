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
//! and those streams are only read after this one, it would wait forever. So memory is at most
//! the budget plus one block per read in progress, and a read under pressure still moves, one
//! block at a time.

use super::ClientError;
use super::chunks::Chunks;
use crate::budget::QueuedBudget;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

/// A verified body, sent on in the chunks it arrived in (ADR 0014).
pub(super) fn sent_on(body: Chunks) -> impl futures::Stream<Item = Result<Bytes, ClientError>> + Send + 'static {
    futures::stream::iter(body.into_parts().into_iter().map(Ok))
}

/// Fetches `blocks` (each: its size in bytes, and the fetch, not started until admitted) at most
/// `depth` at a time, each on its own task, and streams their bytes in order. A fetch ahead of
/// the block the reader waits for first takes its size from `budget`. Dropping the stream
/// aborts the fetches in flight.
pub(super) fn read_ahead<I, F>(
    budget: Arc<QueuedBudget>,
    depth: usize,
    blocks: I,
) -> BoxStream<'static, Result<Bytes, ClientError>>
where
    I: Iterator<Item = (u64, F)> + Send + 'static,
    F: Future<Output = Result<Chunks, ClientError>> + Send + 'static,
{
    // The index of the block the reader waits for: the one after the last block fully sent.
    let (waiting_tx, waiting_rx) = watch::channel(0usize);
    let waiting_tx = Arc::new(waiting_tx);
    futures::stream::iter(blocks.enumerate())
        .map(move |(n, (bytes, fetch))| {
            let (budget, mut waiting) = (budget.clone(), waiting_rx.clone());
            async move {
                let held = tokio::select! {
                    biased;
                    // An error means the read was dropped; nothing waits for this block then.
                    _ = waiting.wait_for(|w| *w >= n) => None,
                    held = budget.take(bytes) => Some(held),
                };
                // Spawned: a future inside `buffered` only moves when the reader asks for the
                // next block, so the fetches ahead would otherwise wait for each block's send.
                let task = AbortOnDropHandle::new(tokio::spawn(fetch));
                let body = match task.await {
                    Ok(body) => body?,
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                };
                Ok::<_, ClientError>((n, held, body))
            }
        })
        .buffered(depth)
        .map_ok(move |(n, mut held, body)| {
            let waiting = waiting_tx.clone();
            let sent = sent_on(body);
            // After the block's last chunk: its bytes go back, and the reader waits for the next.
            let done = futures::stream::poll_fn(move |_| {
                drop(held.take());
                waiting.send_replace(n + 1);
                Poll::Ready(None)
            });
            sent.chain(done)
        })
        .try_flatten()
        .boxed()
}
