//! blockproxy's control plane: the `ProxyGroup` and `VolumeProxyGroup` custom resources and their
//! reconcilers. Reconcilers are pure planning functions (`proxygroup::build`, `volume::build`)
//! plus one apply/prune mechanism (`apply`).

pub mod crd;
