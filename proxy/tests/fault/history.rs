//! The history: every operation's invocation and completion, as `hack/checker` reads it (JSON, the
//! same fields as its `history.go`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Put,
    Delete,
    Get,
}

/// One completed (or failed) operation of one client.
#[derive(Debug, Clone, Serialize)]
pub struct Op {
    pub id: usize,
    pub client: usize,
    pub kind: Kind,
    pub key: String,
    /// A put's value id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub call_ns: i64,
    pub return_ns: i64,
    /// Acknowledged (a get: answered). Otherwise indeterminate.
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The version an acknowledged put or delete returned, or the version a get read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// A get's value id; `None` = not found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read: Option<String>,
    pub intact: bool,
}

/// A read after the run, once everything was healed and flushed.
#[derive(Debug, Clone, Serialize)]
pub struct Final {
    pub key: String,
    /// `store`, or `client<N>`.
    pub source: String,
    pub at_ns: i64,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    pub intact: bool,
}

#[derive(Debug, Serialize)]
pub struct History {
    pub seed: u64,
    pub ops: Vec<Op>,
    #[serde(rename = "final")]
    pub finals: Vec<Final>,
}

/// What the checker found (its `Report`).
#[derive(Debug, Deserialize)]
pub struct Report {
    pub anomalies: Vec<Anomaly>,
    /// What ADR 0002 allows as a known limit but a stricter model would not (printed, not failed).
    pub notes: Vec<Anomaly>,
    /// Porcupine's verdict per key: `Ok`, `Illegal` or `Unknown` (timed out).
    pub keys: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
pub struct Anomaly {
    pub kind: String,
    pub key: String,
    pub op: Option<usize>,
    pub message: String,
}

/// Collects the operations of every client, timed against one clock.
pub struct Recorder {
    start: Instant,
    next_id: AtomicUsize,
    ops: Mutex<Vec<Op>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self { start: Instant::now(), next_id: AtomicUsize::new(0), ops: Mutex::new(Vec::new()) }
    }

    /// Nanoseconds since the run started.
    pub fn now_ns(&self) -> i64 {
        i64::try_from(self.start.elapsed().as_nanos()).unwrap_or(i64::MAX)
    }

    pub fn next_id(&self) -> usize {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn record(&self, op: Op) {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).push(op);
    }

    pub fn ops(&self) -> Vec<Op> {
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone();
        ops.sort_by_key(|o| o.id);
        ops
    }
}

/// "put ok 812, put failed 31, ..." by kind and outcome.
pub fn counts(ops: &[Op]) -> String {
    let mut by: BTreeMap<(Kind, &str), usize> = BTreeMap::new();
    for op in ops {
        let outcome = match (op.ok, op.kind, &op.read) {
            (false, ..) => "failed",
            (true, Kind::Get, None) => "ok (not found)",
            (true, ..) => "ok",
        };
        *by.entry((op.kind, outcome)).or_default() += 1;
    }
    by.iter().map(|((kind, outcome), n)| format!("{kind:?} {outcome}: {n}")).collect::<Vec<_>>().join(", ")
}
