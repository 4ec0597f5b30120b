//! The README's command blocks marked `<!-- test: NAME -->` are run here exactly as written
//! (with bash, from the repository root), so the documented sequences cannot rot.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::readme_block;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

#[test]
fn install_twice_then_uninstall_leaves_destdir_empty() {
    let block = readme_block("install-destdir");
    let bins = repo_root().join("target/debug");
    for b in ["flanneld", "flannel"] {
        if !bins.join(b).exists() {
            flannel_testkit::skip_or_panic(&format!(
                "target/debug/{b} not built (cargo build --workspace --bins)"
            ));
            return;
        }
    }
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &block])
        .current_dir(repo_root())
        .env("FLANNELD_BIN", bins.join("flanneld"))
        .env("CNI_BIN", bins.join("flannel"))
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{block}\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("staged under"), "{stdout}");
    assert_eq!(
        stdout.lines().last(),
        Some("0"),
        "DESTDIR not empty: {stdout}"
    );
}
