//! blockproxy's data plane.
//!
//! - [`protocol`]: the wire format (re-exported from the `blockproxy-protocol` crate).
//! - [`store`]: object-store backends (S3, local directory) behind the [`store::Store`] trait.
//! - [`cache`]: block files on local disk, the index with quota and LRU eviction, single-flight.
//! - [`writeback`]: the durable flush queue and its bounded, retrying workers.
//! - [`server`]: the HTTP API over TLS, and [`server::run`], which wires everything together.
//! - [`client`]: discovery, RTT group selection, rendezvous routing and failover (the mount side).
//! - [`sidecar`]: the `blockproxy-mount` S3-compatible endpoint; [`mount`]: its FUSE frontend; [`quickstart`]: a one-machine demo.
//! - [`config`], [`metrics`], [`telemetry`]: flags, Prometheus metrics, logging and signals;
//!   `budget`: the bound on bytes held in memory, shared by the proxy and the client.

pub use blockproxy_protocol as protocol;
mod budget;
pub mod cache;
pub mod client;
pub mod config;
pub mod csi;
pub mod metrics;
pub mod mount;
pub mod quickstart;
pub mod server;
pub mod sidecar;
pub mod store;
pub mod telemetry;
pub mod writeback;
