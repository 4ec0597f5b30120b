//! The flanneld binary's command line as a unit file or DaemonSet passes it: flannel's
//! Kubernetes mode is refused with a clear message (flag or environment), and the hardened
//! systemd unit we ship passes `systemd-analyze verify`.

use std::process::Command;

fn flanneld(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flanneld"))
        .args(args)
        .envs(env.iter().copied())
        .env("FLANNELD_LOG", "info")
        .output()
        .expect("run flanneld");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn kube_subnet_mgr_exits_with_a_clear_message() {
    for (args, env) in [
        (&["--kube-subnet-mgr"][..], &[][..]),
        (&["-kube-subnet-mgr=true", "-v=2"], &[]),
        (&[], &[("FLANNELD_KUBE_SUBNET_MGR", "true")]),
    ] {
        let (code, stderr) = flanneld(args, env);
        assert_eq!(code, 1, "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains("this flanneld runs the etcd subnet manager only"),
            "{stderr}"
        );
    }
    // An unknown flag is still an error, not silently ignored.
    let (code, stderr) = flanneld(&["--no-such-flag"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
}

#[test]
fn the_shipped_unit_passes_systemd_analyze_verify() {
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    if analyze.is_err() {
        flannel_testkit::skip_or_panic("systemd-analyze not installed (package systemd)");
        return;
    }
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/systemd/flanneld.service");
    let text = std::fs::read_to_string(&unit).expect("unit file");
    for needed in [
        "Type=notify",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW",
        "Restart=always",
        "WatchdogSec=",
    ] {
        assert!(text.contains(needed), "the unit lacks {needed}");
    }
    // verify wants ExecStart's binary to exist: point it at this build's flanneld.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("flanneld.service");
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/flanneld", env!("CARGO_BIN_EXE_flanneld")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("flanneld.service:"),
        "warnings about the unit: {stderr}"
    );
}
