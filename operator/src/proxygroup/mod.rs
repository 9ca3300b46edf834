//! ProxyGroup reconciling: `build` (pure plan), `args` (the proxy's command line), `weight`
//! (each proxy's share of the keys).

pub mod args;
pub mod build;
pub mod weight;
