//! The committed CRD YAML (in `crds/` and in the chart) is exactly what `crdgen` generates.

use std::path::PathBuf;

#[test]
fn committed_crd_yaml_matches_generated() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in ["crds", "charts/blockproxy/crds"] {
        for (name, yaml) in blockproxy_operator::crd::generated_crds() {
            let path = root.join(dir).join(name);
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == yaml,
                "{} is stale; regenerate with `cargo run -p blockproxy-operator --bin crdgen`",
                path.display()
            );
        }
    }
}
