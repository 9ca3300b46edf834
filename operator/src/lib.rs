//! blockproxy's control plane.
