//! Interop with the real reference plugin binary (`/usr/lib/cni/host-local`, Debian
//! `containernetworking-plugins`): both implementations share one data directory and must
//! see each other's reservations, cursor and lock.
//!
//! Without the binary the tests print `SKIPPED:`; in CI they fail instead (`flannel_testkit`).

use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipam::host_local::{HostLocal, IpamError, RangeConfig, RangeSet, Reservation};

const REFERENCE: &str = "/usr/lib/cni/host-local";
const NET: &str = "testnet";

fn reference_bin() -> Option<PathBuf> {
    let p = std::env::var_os("HOST_LOCAL_REFERENCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(REFERENCE));
    if p.is_file() {
        return Some(p);
    }
    flannel_testkit::skip_or_panic(&format!(
        "reference host-local binary {} not found",
        p.display()
    ));
    None
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// The reference plugin's answer: `Ok(addresses)` or `Err(error message)`.
fn run_ref(
    bin: &Path,
    cmd: &str,
    data_dir: &Path,
    ranges: &str,
    id: &str,
    ifname: &str,
    cni_args: Option<&str>,
) -> Result<Vec<String>, String> {
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"{NET}","ipam":{{"type":"host-local","dataDir":"{}","ranges":{ranges}}}}}"#,
        data_dir.display()
    );
    let mut c = Command::new(bin);
    c.env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", "/nonexistent")
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(a) = cni_args {
        c.env("CNI_ARGS", a);
    }
    let mut child = c.spawn().expect("spawn reference host-local");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let v: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|_| serde_json::json!({ "msg": stdout.clone() }));
        return Err(v["msg"].as_str().unwrap_or_default().to_string());
    }
    if cmd != "ADD" {
        return Ok(Vec::new());
    }
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("reference result JSON");
    Ok(v["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .map(|i| i["address"].as_str().expect("address").to_string())
        .collect())
}

fn v4_set() -> RangeSet {
    RangeSet::from_config(&[RangeConfig::from_subnet(
        "10.244.1.0/24".parse().expect("net"),
    )])
    .expect("set")
}

const V4_RANGES: &str = r#"[[{"subnet":"10.244.1.0/24"}]]"#;

fn file_bytes(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn reference_writes_we_read_and_continue() {
    let Some(bin) = reference_bin() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let mut ref_ips = Vec::new();
    for id in ["ref-c1", "ref-c2", "ref-c3"] {
        let got = run_ref(&bin, "ADD", tmp.path(), V4_RANGES, id, "eth0", None)
            .unwrap_or_else(|e| panic!("reference ADD {id}: {e}"));
        assert_eq!(got.len(), 1);
        ref_ips.push(got[0].clone());
    }
    assert_eq!(ref_ips, ["10.244.1.2/24", "10.244.1.3/24", "10.244.1.4/24"]);

    let h = HostLocal::open(tmp.path(), NET).expect("open");
    let want: Vec<Reservation> = ["ref-c1", "ref-c2", "ref-c3"]
        .iter()
        .zip(&ref_ips)
        .map(|(id, a)| Reservation {
            ip: ip(a.split('/').next().expect("addr")),
            container_id: id.to_string(),
            ifname: Some("eth0".into()),
        })
        .collect();
    assert_eq!(h.reservations().expect("reservations"), want);
    assert_eq!(
        h.lookup("ref-c2", "eth0").expect("lookup"),
        vec![ip("10.244.1.3")]
    );

    // Our next allocation continues the reference's round-robin.
    let sets = [v4_set()];
    let ours = h.allocate("our-c4", "eth0", &sets, &[]).expect("allocate");
    assert_eq!(ours[0].address.to_string(), "10.244.1.5/24");
    assert_eq!(ours[0].gateway, ip("10.244.1.1"));
    // Same bytes as the reference writes for its own reservations.
    assert_eq!(file_bytes(h.dir(), "10.244.1.2"), b"ref-c1\r\neth0");
    assert_eq!(file_bytes(h.dir(), "10.244.1.5"), b"our-c4\r\neth0");
    assert_eq!(file_bytes(h.dir(), "last_reserved_ip.0"), b"10.244.1.5");
    // Our duplicate check sees the reference's reservation.
    assert!(matches!(
        h.allocate("ref-c1", "eth0", &sets, &[]),
        Err(IpamError::Duplicate { .. })
    ));

    // Requesting .3 explicitly fails while ref-c2 holds it ...
    let e = run_ref(
        &bin,
        "ADD",
        tmp.path(),
        V4_RANGES,
        "ref-c5",
        "eth0",
        Some("IP=10.244.1.3"),
    )
    .expect_err("taken");
    assert!(e.contains("10.244.1.3"), "{e}");
    // ... and succeeds once our code released it.
    assert_eq!(
        h.release("ref-c2", "eth0").expect("release"),
        vec![ip("10.244.1.3")]
    );
    assert!(!h.dir().join("10.244.1.3").exists());
    let got = run_ref(
        &bin,
        "ADD",
        tmp.path(),
        V4_RANGES,
        "ref-c5",
        "eth0",
        Some("IP=10.244.1.3"),
    )
    .expect("reference sees the address free");
    assert_eq!(got, ["10.244.1.3/24"]);

    // And the reference's own round-robin continues after our .5 (its cursor is .3 now,
    // the requested one, so the next is .4 taken -> .5 ours -> .6).
    let got = run_ref(&bin, "ADD", tmp.path(), V4_RANGES, "ref-c6", "eth0", None).expect("add");
    assert_eq!(got, ["10.244.1.6/24"]);
}

#[test]
fn we_write_reference_reads_and_releases() {
    let Some(bin) = reference_bin() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let h = HostLocal::open(tmp.path(), NET).expect("open");
    let sets = [v4_set()];
    for (id, want) in [("our-1", "10.244.1.2/24"), ("our-2", "10.244.1.3/24")] {
        let a = h.allocate(id, "eth0", &sets, &[]).expect("allocate");
        assert_eq!(a[0].address.to_string(), want);
    }

    // The reference continues after our cursor.
    let got = run_ref(&bin, "ADD", tmp.path(), V4_RANGES, "ref-1", "eth0", None).expect("add");
    assert_eq!(got, ["10.244.1.4/24"]);
    // Byte-identical files from both writers.
    assert_eq!(file_bytes(h.dir(), "10.244.1.4"), b"ref-1\r\neth0");
    assert_eq!(file_bytes(h.dir(), "10.244.1.2"), b"our-1\r\neth0");

    // The reference sees our reservation as a duplicate for the same (id, ifname) ...
    let e =
        run_ref(&bin, "ADD", tmp.path(), V4_RANGES, "our-2", "eth0", None).expect_err("duplicate");
    assert!(e.contains("duplicate allocation is not allowed"), "{e}");
    // ... and its DEL removes our file.
    run_ref(&bin, "DEL", tmp.path(), V4_RANGES, "our-1", "eth0", None).expect("del");
    assert!(!h.dir().join("10.244.1.2").exists());
    let left: Vec<String> = h
        .reservations()
        .expect("list")
        .iter()
        .map(|r| r.ip.to_string())
        .collect();
    assert_eq!(left, ["10.244.1.3", "10.244.1.4"]);
    // CHECK finds ours.
    run_ref(&bin, "CHECK", tmp.path(), V4_RANGES, "our-2", "eth0", None).expect("check");

    // A legacy id-only file written by an old plugin is released by the reference and by us.
    std::fs::write(h.dir().join("10.244.1.50"), "legacy-id").expect("write");
    std::fs::write(h.dir().join("10.244.1.51"), "legacy-id2\n").expect("write");
    run_ref(
        &bin,
        "DEL",
        tmp.path(),
        V4_RANGES,
        "legacy-id",
        "eth0",
        None,
    )
    .expect("del");
    assert!(!h.dir().join("10.244.1.50").exists());
    assert_eq!(
        h.release("legacy-id2", "eth0").expect("rel"),
        vec![ip("10.244.1.51")]
    );

    // DEL of an unknown container succeeds on both sides.
    run_ref(&bin, "DEL", tmp.path(), V4_RANGES, "nobody", "eth0", None).expect("del");
    assert!(h.release("nobody", "eth0").expect("release").is_empty());
}

#[test]
fn dual_stack_file_names_match() {
    let Some(bin) = reference_bin() else { return };
    let ranges = r#"[[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00:10:244:1::/64"}]]"#;
    let sets = [
        v4_set(),
        RangeSet::from_config(&[RangeConfig::from_subnet(
            "fd00:10:244:1::/64".parse().expect("net"),
        )])
        .expect("set"),
    ];
    let tmp = tempfile::tempdir().expect("tmp");
    let got = run_ref(&bin, "ADD", tmp.path(), ranges, "ref-1", "eth0", None).expect("add");
    assert_eq!(got, ["10.244.1.2/24", "fd00:10:244:1::2/64"]);

    let h = HostLocal::open(tmp.path(), NET).expect("open");
    let a = h.allocate("our-1", "eth0", &sets, &[]).expect("allocate");
    let ours: Vec<String> = a.iter().map(|x| x.address.to_string()).collect();
    assert_eq!(ours, ["10.244.1.3/24", "fd00:10:244:1::3/64"]);

    let names: BTreeSet<String> = std::fs::read_dir(h.dir())
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let want: BTreeSet<String> = [
        "10.244.1.2",
        "10.244.1.3",
        "fd00:10:244:1::2",
        "fd00:10:244:1::3",
        "last_reserved_ip.0",
        "last_reserved_ip.1",
        "lock",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(names, want);
    assert_eq!(
        file_bytes(h.dir(), "last_reserved_ip.1"),
        b"fd00:10:244:1::3"
    );

    let got = run_ref(&bin, "ADD", tmp.path(), ranges, "ref-2", "eth0", None).expect("add");
    assert_eq!(got, ["10.244.1.4/24", "fd00:10:244:1::4/64"]);
    run_ref(&bin, "DEL", tmp.path(), ranges, "our-1", "eth0", None).expect("del");
    assert_eq!(
        h.lookup("our-1", "eth0").expect("lookup"),
        Vec::<IpAddr>::new()
    );
    assert_eq!(
        h.release("ref-2", "eth0").expect("release"),
        vec![ip("10.244.1.4"), ip("fd00:10:244:1::4")]
    );
}

#[test]
fn concurrent_with_reference_processes() {
    let Some(bin) = reference_bin() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().to_path_buf();
    let mut handles = Vec::new();
    for t in 0..3 {
        let dir = dir.clone();
        let bin = bin.clone();
        handles.push(std::thread::spawn(move || {
            (0..6)
                .map(|i| {
                    let id = format!("ref-{t}-{i}");
                    let got = run_ref(&bin, "ADD", &dir, V4_RANGES, &id, "eth0", None)
                        .unwrap_or_else(|e| panic!("{id}: {e}"));
                    (id, got[0].clone())
                })
                .collect::<Vec<_>>()
        }));
    }
    for t in 0..3 {
        let dir = dir.clone();
        handles.push(std::thread::spawn(move || {
            let h = HostLocal::open(&dir, NET).expect("open");
            let sets = [v4_set()];
            (0..6)
                .map(|i| {
                    let id = format!("our-{t}-{i}");
                    let a = h.allocate(&id, "eth0", &sets, &[]).expect("allocate");
                    (id, a[0].address.to_string())
                })
                .collect::<Vec<_>>()
        }));
    }
    let all: Vec<(String, String)> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("thread"))
        .collect();
    let distinct: BTreeSet<&String> = all.iter().map(|(_, a)| a).collect();
    assert_eq!(distinct.len(), 36, "{all:?}");
    let h = HostLocal::open(&dir, NET).expect("open");
    let res = h.reservations().expect("list");
    assert_eq!(res.len(), 36);
    for (id, addr) in &all {
        let a = ip(addr.split('/').next().expect("addr"));
        let r = res.iter().find(|r| r.ip == a).expect("reserved");
        assert_eq!(&r.container_id, id);
    }
}

#[test]
fn reference_waits_for_our_lock() {
    use ipam::host_local::{DiskStore, Store};
    use std::sync::mpsc;
    use std::time::Duration;

    let Some(bin) = reference_bin() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let store = DiskStore::new(tmp.path().join(NET));
    let guard = store.lock().expect("our lock");

    let (tx, rx) = mpsc::channel();
    let dir = tmp.path().to_path_buf();
    let t = std::thread::spawn(move || {
        let r = run_ref(&bin, "ADD", &dir, V4_RANGES, "ref-waiter", "eth0", None);
        let _ = tx.send(r);
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "the reference must block on the lock file we hold"
    );
    drop(guard);
    let got = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("reference finished after unlock")
        .expect("reference ADD");
    assert_eq!(got, ["10.244.1.2/24"]);
    t.join().expect("thread");
}
