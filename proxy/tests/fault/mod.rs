//! The seeded fault test of issue 9, in the manner of Jepsen: clients write, overwrite, delete and
//! read a small key space through the real client library, into two groups of real `blockproxy`
//! processes over a real MinIO, with toxiproxy between clients and proxies and between proxies and
//! MinIO, while a nemesis injects faults. Every operation's invocation and completion is recorded
//! (a history), and `hack/checker` (Go, porcupine) checks the history against this model, which
//! is ADR 0002's contract (docs/adr/0002-consistency-contract.md, "How it is tested"):
//!
//! 1. **Final state** (porcupine, per key): after every fault is healed and every proxy has
//!    flushed, the store, and a read through every client, hold the effect of the last mutation in
//!    *some* order of the mutations that respects real time. An acknowledged put or delete takes
//!    effect at one instant between its invocation and its completion; a failed or timed-out one
//!    (indeterminate) takes effect at such an instant or never. So an acknowledged write is in the
//!    final state unless a later acknowledged write or delete of the key replaced it (or an
//!    indeterminate one that overlapped or followed it), and an acknowledged delete is never
//!    undone. The model is a register whose state is the value (absent at the start); it is
//!    checked for linearizability with the reads *during* the run left out, because ADR 0002 lets
//!    another client read an older version while a failover lasts.
//! 2. **Read your own writes**: no read returns a value older (a lower version) than the reader's
//!    own last acknowledged put or delete of the key; not-found after its own acknowledged put is
//!    older unless a delete that may be newer ran.
//! 3. **No phantom, torn or future value**: every read returns a value some put of that key wrote,
//!    byte for byte, and whose put had started before the read completed.
//!
//! A seed (`BLOCKPROXY_FAULT_SEED`, random and printed when unset) fixes every choice the clients
//! and the nemesis make; the interleaving with the processes is not deterministic, so a seed
//! replays the same workload and fault schedule, not the same history.

pub mod checker;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod values;
pub mod workload;
