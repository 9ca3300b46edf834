//! `blockproxy-mount`.
fn main() {}
