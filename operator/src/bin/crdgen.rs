//! Writes the generated CRD YAML to `crds/` and `charts/blockproxy/crds/` (relative to the
//! workspace root), or prints it with `--stdout`.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let crds = blockproxy_operator::crd::generated_crds();
    if std::env::args().any(|a| a == "--stdout") {
        for (_, yaml) in &crds {
            println!("---\n{yaml}");
        }
        return Ok(());
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in ["crds", "charts/blockproxy/crds"] {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir)?;
        for (name, yaml) in &crds {
            std::fs::write(dir.join(name), yaml)?;
            println!("wrote {}", dir.join(name).display());
        }
    }
    Ok(())
}
