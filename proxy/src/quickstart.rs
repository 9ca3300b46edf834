//! `blockproxy quickstart`.
