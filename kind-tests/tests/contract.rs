//! The contract between the operator and the binaries it starts, as one typed thing: every
//! command line the operator (proxy Pods) and the webhook (sidecar) can write parses with the
//! binaries' own argument definitions (`blockproxy serve`'s `ProxyArgs`, `blockproxy-mount`'s
//! `MountArgs`), and means what the spec says. No cluster needed.

use blockproxy::config::ProxyArgs;
use blockproxy::sidecar::MountArgs;
use blockproxy_operator::crd::ProxyGroupSpec;
use blockproxy_operator::proxygroup::build::pod_spec;
use blockproxy_operator::sidecar_resources::{self, SidecarResources};
use blockproxy_operator::webhook::{self, PodCredentials, SidecarConfig};
use clap::{CommandFactory, Parser};
use k8s_openapi::api::core::v1::Container;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(name = "blockproxy")]
enum ProxyCli {
    Serve(Box<ProxyArgs>),
}

#[derive(Parser, Debug)]
#[command(name = "blockproxy-mount")]
struct MountCli {
    #[command(flatten)]
    mount: Box<MountArgs>,
}

/// Specs that cover every setting `proxy_args` turns into a flag.
fn specs() -> Vec<ProxyGroupSpec> {
    let base = json!({
        "providerCode": "minio",
        "regionCode": "dc1",
        "placement": {"storageClassName": "local-nvme"},
        "objectStore": {"provider": "s3Compatible", "endpoint": "http://minio:9000", "region": "eu-west-1",
                        "pathStyle": true, "credentialsSecret": {"name": "store"}},
    });
    let variants = [
        json!({}),
        json!({"port": 9443, "cache": {"diskQuota": "500Gi"}, "tls": {"enabled": false}}),
        json!({"writeback": {"enabled": false, "sync": true}}),
        json!({"writeback": {"enabled": true, "active": 8, "delay": "2s"}, "cache": {"diskQuota": "75%"}}),
        json!({"writeback": {"delay": "250ms"}, "objectStore": {"provider": "s3", "region": "us-east-2", "sse": true}}),
        json!({"objectStore": {"provider": "file", "endpoint": "file:///data"}}),
    ];
    variants
        .into_iter()
        .map(|v| {
            let mut spec = base.clone();
            merge(&mut spec, v);
            serde_json::from_value(spec).expect("a valid ProxyGroup spec")
        })
        .collect()
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    match (into, from) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn argv(c: &Container) -> Vec<String> {
    c.command.iter().flatten().chain(c.args.iter().flatten()).cloned().collect()
}

#[test]
fn every_proxy_pod_command_line_parses_as_blockproxy_serve() {
    for spec in specs() {
        let pod = pod_spec(&spec, "dc1", "example.local/blockproxy:test");
        let container = &pod.containers[0];
        let argv = argv(container);
        assert_eq!(argv.first().map(String::as_str), Some("blockproxy"), "{argv:?}");
        let ProxyCli::Serve(args) = ProxyCli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}:\n{e}"));
        assert_eq!(i32::from(args.bind_addr.port()), spec.port, "{argv:?}");
        assert_eq!(args.writeback_delay, spec.writeback.delay_millis(), "{argv:?}");
        // Every environment variable the Pod sets is one the proxy reads.
        let known: Vec<String> = ProxyCli::command()
            .find_subcommand("serve")
            .map(|s| s.get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        for env in container.env.iter().flatten() {
            let aws = env.name.starts_with("AWS_");
            assert!(aws || known.contains(&env.name), "{} is not a blockproxy serve variable", env.name);
        }
    }
}

#[test]
fn the_injected_sidecar_command_line_parses_as_blockproxy_mount() {
    let volume = blockproxy_protocol::VolumeId::parse("team-a-data").expect("volume id");
    let cfg = SidecarConfig { image: "example.local/blockproxy:test".into(), resource_defaults: Default::default() };
    let creds = PodCredentials::random();
    let plain = SidecarResources::from_annotations(None).expect("the defaults");
    // With direct-store credentials (the Pod annotation) they reach the sidecar's flag.
    let direct: Container =
        serde_json::from_value(webhook::sidecar(&volume, &cfg, &creds, &plain, true, false)).expect("a container");
    let direct_argv = argv(&direct);
    let parsed = MountCli::try_parse_from(&direct_argv).unwrap_or_else(|e| panic!("{direct_argv:?}:\n{e}"));
    let file = parsed.mount.store.store_credentials_file.expect("no --store-credentials-file");
    assert_eq!(file, std::path::Path::new(webhook::DIRECT_STORE_DIR).join(webhook::DIRECT_STORE_KEY));
    let container: Container =
        serde_json::from_value(webhook::sidecar(&volume, &cfg, &creds, &plain, false, false)).expect("a container");
    let argv = argv(&container);
    let parsed = MountCli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}:\n{e}"));
    assert_eq!(parsed.mount.store.store_credentials_file, None);
    assert_eq!(parsed.mount.fuse.fuse_fd_socket, None);
    assert_eq!(parsed.mount.volume_id, volume);
    let defaults = blockproxy_protocol::SidecarBudgets::default();
    assert_eq!(
        (parsed.mount.read_ahead_bytes, parsed.mount.write_buffer_bytes, parsed.mount.max_part_size),
        (defaults.read_ahead_bytes, defaults.write_buffer_bytes, defaults.max_part_size)
    );
    // Under a memory limit (the Pod annotation), the budgets sized to it reach the sidecar's flags.
    let limited = SidecarResources::from_annotations(Some(&std::collections::BTreeMap::from([(
        sidecar_resources::MEMORY_LIMIT_ANNOTATION.to_owned(),
        "160Mi".to_owned(),
    )])))
    .expect("a valid limit");
    let limited_container: Container =
        serde_json::from_value(webhook::sidecar(&volume, &cfg, &creds, &limited, false, false)).expect("a container");
    let limited_argv = self::argv(&limited_container);
    let parsed = MountCli::try_parse_from(&limited_argv).unwrap_or_else(|e| panic!("{limited_argv:?}:\n{e}"));
    let want = blockproxy_protocol::SidecarBudgets::within(160 << 20).expect("above the minimum");
    assert_eq!(
        (parsed.mount.read_ahead_bytes, parsed.mount.write_buffer_bytes, parsed.mount.max_part_size),
        (want.read_ahead_bytes, want.write_buffer_bytes, want.max_part_size)
    );
    // With the Pod's inline CSI volume, the sidecar takes the plugin's descriptor where the
    // plugin offers it (the names are blockproxy_protocol's, shared with blockproxy-csi).
    let fuse: Container =
        serde_json::from_value(webhook::sidecar(&volume, &cfg, &creds, &plain, false, true)).expect("a container");
    let fuse_argv = self::argv(&fuse);
    let parsed = MountCli::try_parse_from(&fuse_argv).unwrap_or_else(|e| panic!("{fuse_argv:?}:\n{e}"));
    let socket = parsed.mount.fuse.fuse_fd_socket.expect("no --fuse-fd-socket");
    assert_eq!(
        socket,
        std::path::Path::new(blockproxy::csi::HANDOVER_MOUNT_PATH).join(blockproxy::csi::socket_name(volume.as_str()))
    );
    assert!(fuse.volume_mounts.iter().flatten().any(|m| m.mount_path == blockproxy::csi::HANDOVER_MOUNT_PATH));
    assert_eq!(parsed.mount.listen.to_string(), webhook::LISTEN);
    let known: Vec<String> = MountCli::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    let names: Vec<&str> = container.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert!(names.contains(&"BLOCKPROXY_S3_ACCESS_KEY") && names.contains(&"BLOCKPROXY_S3_SECRET_KEY"), "{names:?}");
    for name in names {
        assert!(known.iter().any(|k| k == name), "{name} is not a blockproxy-mount variable");
    }
}
