//! blockproxy's data plane. The wire format lives in the `blockproxy-protocol` crate and is
//! re-exported here as [`protocol`].

pub use blockproxy_protocol as protocol;
