//! The `blockproxy-mount` sidecar.
