//! End-to-end tests live in tests/; the test environment is the blockproxy-testenv crate.
