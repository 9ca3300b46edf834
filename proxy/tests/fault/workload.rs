//! The clients: each one loops over seeded random puts, deletes and gets of a small key space until
//! the deadline, one operation at a time, recording each into the history.

use super::history::{Kind, Op, Recorder};
use super::values::{Written, identify, value_bytes};
use crate::client_support::key;
use blockproxy::client::Client;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The key space: small, so that clients collide on keys all the time.
pub const KEYS: usize = 8;
/// Every operation's bound; one that reaches it is recorded as failed (indeterminate).
pub const OP_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between one client's operations, at most (keeps the 2-core machine responsive).
const THINK_MAX: Duration = Duration::from_millis(20);

pub fn key_name(i: usize) -> String {
    format!("k{i}")
}

/// Runs client `index` until `stop` is set.
pub async fn run_client(
    index: usize,
    client: &Client,
    seed: u64,
    stop: &AtomicBool,
    history: &Recorder,
    written: &Written,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(index as u64 + 1)));
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let name = key_name(rng.random_range(0..KEYS));
        let k = key(&name);
        let roll = rng.random_range(0..100);
        let id = history.next_id();
        let call_ns = history.now_ns();
        let mut op = Op {
            id,
            client: index,
            kind: Kind::Get,
            key: name.clone(),
            value: None,
            call_ns,
            return_ns: 0,
            ok: false,
            error: None,
            version: None,
            read: None,
            intact: false,
        };
        if roll < 45 {
            seq += 1;
            let value = format!("c{index}-{seq}");
            // Mostly small blocks, now and then a larger one that streams.
            let len = if rng.random_bool(0.05) { 256 * 1024 } else { rng.random_range(16..4096) };
            written.record(&value, len);
            let data = value_bytes(&name, &value, len);
            op.kind = Kind::Put;
            op.value = Some(value);
            match bounded(client.put(&k, data)).await {
                Ok(version) => (op.ok, op.version) = (true, Some(version)),
                Err(e) => op.error = Some(e),
            }
        } else if roll < 55 {
            op.kind = Kind::Delete;
            match bounded(client.delete(&k)).await {
                Ok(version) => (op.ok, op.version) = (true, Some(version)),
                Err(e) => op.error = Some(e),
            }
        } else {
            match bounded(client.get(&k, None)).await {
                Ok(Some(fetched)) => {
                    let (read, intact) = identify(&name, &fetched.data, written);
                    (op.ok, op.version, op.read, op.intact) = (true, Some(fetched.info.version), Some(read), intact);
                }
                Ok(None) => (op.ok, op.intact) = (true, true),
                Err(e) => op.error = Some(e),
            }
        }
        op.return_ns = history.now_ns();
        history.record(op);
        tokio::time::sleep(THINK_MAX.mul_f64(rng.random::<f64>())).await;
    }
}

/// The operation under [`OP_TIMEOUT`], its error as text.
pub async fn bounded<T, E: std::fmt::Display>(f: impl Future<Output = Result<T, E>>) -> Result<T, String> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {OP_TIMEOUT:?}")),
    }
}
