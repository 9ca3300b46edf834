//! blockproxy's data plane. The wire format lives in the `blockproxy-protocol` crate and is
//! re-exported here as [`protocol`].
//!
//! - [`store`]: object-store backends (S3, local directory) behind the [`store::Store`] trait.

pub use blockproxy_protocol as protocol;
pub mod cache;
pub mod metrics;
pub mod store;
pub mod writeback;
