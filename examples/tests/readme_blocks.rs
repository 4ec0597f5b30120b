//! The README's command blocks marked `<!-- test: NAME -->` are run here exactly as written
//! (with bash, from the repository root), so the documented sequences cannot rot.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The fenced block that follows `<!-- test: name -->` in the README.
fn readme_block(name: &str) -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let marker = format!("<!-- test: {name} -->");
    let after = readme
        .split_once(&marker)
        .unwrap_or_else(|| panic!("README has no {marker}"))
        .1;
    let body = after
        .split_once("```sh\n")
        .expect("a ```sh block after the marker")
        .1;
    body.split_once("```")
        .expect("the block's closing fence")
        .0
        .to_string()
}

#[test]
fn install_twice_then_uninstall_leaves_destdir_empty() {
    let block = readme_block("install-destdir");
    let bins = repo_root().join("target/debug");
    for b in ["flanneld", "flannel"] {
        if !bins.join(b).exists() {
            flanneld::testing::skip_or_panic(&format!(
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
