//! blockproxy's data plane.
//!
//! - [`protocol`]: paths, headers, names and documents shared by every component (and the operator).

pub mod protocol;
