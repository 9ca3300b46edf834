//! Free loopback ports.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

/// A free TCP port on 127.0.0.1.
///
/// The port is found by binding port 0 and closing the socket, so another process could take it
/// before the component binds it. Ports handed out by this process are never handed out twice,
/// which rules out collisions between the tests of one test binary.
pub fn free_port() -> Result<u16> {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..100 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("binding 127.0.0.1:0")?
            .local_addr()
            .context("local_addr")?
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    bail!("no free loopback port found in 100 tries")
}
