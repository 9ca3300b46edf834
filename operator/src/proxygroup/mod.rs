//! ProxyGroup reconciling: `build` (pure plan), `args` (the proxy's command line).

pub mod args;
pub mod build;
