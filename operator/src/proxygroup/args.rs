//! The proxy's command line, in one place so it is easy to adjust to the `blockproxy` binary.

use crate::crd::{ObjectStoreProvider, ProxyGroupSpec};

/// Where the Pod mounts what the operator gives it.
pub const CACHE_DIR: &str = "/cache";
pub const VOLUMES_DIR: &str = "/etc/blockproxy/volumes";
pub const VOLUMES_FILE: &str = "/etc/blockproxy/volumes/volumes.yaml";
pub const ADMIN_DIR: &str = "/etc/blockproxy/admin";
pub const ADMIN_TOKEN_FILE: &str = "/etc/blockproxy/admin/token";
pub const TLS_DIR: &str = "/etc/blockproxy/tls";
pub const TLS_CERT_FILE: &str = "/etc/blockproxy/tls/tls.crt";
pub const TLS_KEY_FILE: &str = "/etc/blockproxy/tls/tls.key";
/// The store's credentials Secret, for providers that read a file (`gcs`).
pub const STORE_CREDENTIALS_DIR: &str = "/etc/blockproxy/store";

/// The proxy binary in the image.
pub const PROXY_COMMAND: &str = "blockproxy";
/// How long the proxy may flush on SIGTERM; the Pod's grace period is a little longer.
pub const SHUTDOWN_GRACE_SECONDS: i64 = 110;

/// Arguments of the `blockproxy` container for a group's spec.
pub fn proxy_args(spec: &ProxyGroupSpec) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--bind-addr".into(),
        format!("0.0.0.0:{}", spec.port),
        "--disk-folder".into(),
        CACHE_DIR.into(),
        "--disk-quota".into(),
        spec.cache.disk_quota.clone(),
        "--volumes-file".into(),
        VOLUMES_FILE.into(),
        "--admin-token-file".into(),
        ADMIN_TOKEN_FILE.into(),
        "--shutdown-grace".into(),
        format!("{SHUTDOWN_GRACE_SECONDS}s"),
    ];
    let wb = &spec.writeback;
    if wb.sync {
        args.push("--sync".into());
    }
    if wb.enabled {
        args.extend(["--writeback-active".into(), wb.active.to_string()]);
        args.extend(["--writeback-delay".into(), wb.delay_millis().to_string()]);
    } else {
        args.push("--no-writeback".into());
    }
    if spec.tls.enabled {
        args.extend(["--tls-cert-file".into(), TLS_CERT_FILE.into(), "--tls-key-file".into(), TLS_KEY_FILE.into()]);
    } else {
        args.push("--no-tls".into());
    }
    let store = &spec.object_store;
    let provider = match store.provider {
        ObjectStoreProvider::S3 | ObjectStoreProvider::S3Compatible => "s3",
        ObjectStoreProvider::Gcs => "gcs",
        ObjectStoreProvider::Azure => "azure",
        ObjectStoreProvider::File => "local",
    };
    args.extend(["--store-provider".into(), provider.into()]);
    if let (ObjectStoreProvider::Gcs, Some(creds)) = (store.provider, &store.credentials_secret) {
        args.extend([
            "--store-credentials-file".into(),
            format!("{STORE_CREDENTIALS_DIR}/{}", creds.service_account_key_key),
        ]);
    }
    if let Some(endpoint) = &store.endpoint {
        args.extend(["--store-endpoint".into(), endpoint.clone()]);
    }
    if let Some(region) = &store.region {
        args.extend(["--store-region".into(), region.clone()]);
    }
    if store.path_style && matches!(store.provider, ObjectStoreProvider::S3 | ObjectStoreProvider::S3Compatible) {
        args.push("--store-path-style".into());
    }
    if store.sse {
        args.push("--store-sse".into());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxygroup::build::tests::spec;

    #[test]
    fn defaults_give_tls_and_writeback() {
        let args = proxy_args(&spec()).join(" ");
        assert!(args.starts_with("serve --bind-addr 0.0.0.0:8443 --disk-folder /cache --disk-quota 90%"));
        assert!(args.contains("--writeback-active 0 --writeback-delay 0"));
        assert!(args.contains("--tls-cert-file /etc/blockproxy/tls/tls.crt"));
        assert!(args.contains("--store-endpoint http://minio:9000 --store-region us-east-1 --store-path-style"));
        assert!(!args.contains("--sync"));
        assert!(!args.contains("--no-tls"));
    }

    #[test]
    fn settings_map_to_flags() {
        let mut s = spec();
        s.writeback.enabled = false;
        s.writeback.sync = true;
        s.tls.enabled = false;
        s.object_store.sse = true;
        s.cache.disk_quota = "500Gi".into();
        let args = proxy_args(&s).join(" ");
        assert!(args.contains("--no-writeback"));
        assert!(!args.contains("--writeback-active"));
        assert!(args.contains("--sync"));
        assert!(args.contains("--no-tls"));
        assert!(args.contains("--store-sse"));
        assert!(args.contains("--disk-quota 500Gi"));
        s.writeback.enabled = true;
        s.writeback.delay = "2s".into();
        s.writeback.active = 8;
        assert!(proxy_args(&s).join(" ").contains("--writeback-active 8 --writeback-delay 2000"));
    }
}
