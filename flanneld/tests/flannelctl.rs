//! `flannelctl` against a real etcd: the lease table and its JSON, reservations added and
//! removed, a dead node's lease released, and the refusals that keep an operator from
//! deleting the wrong kind of key.

use std::process::Command;
use std::time::Duration;

use flannel_testkit::etcd::EtcdServer;
use flanneld::subnet::{CreateOutcome, EtcdConfig, EtcdLeaseStore, LeaseStore};
use ipam::lease::{Lease, LeaseAttrs};
use serde_json::json;

fn ctl(server: &EtcdServer, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flannelctl"))
        .arg("--etcd-endpoints")
        .arg(server.endpoint())
        .args(args)
        .env_remove("FLANNELD_ETCD_ENDPOINTS")
        .output()
        .expect("run flannelctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fresh etcd and a lease store on it; `None` when the test is to be skipped.
async fn etcd_with_store() -> Option<(EtcdServer, EtcdLeaseStore)> {
    let server = EtcdServer::start_or_skip().await?;
    let store = EtcdLeaseStore::connect(EtcdConfig {
        endpoints: vec![server.endpoint()],
        ..EtcdConfig::default()
    })
    .await
    .unwrap();
    Some((server, store))
}

#[tokio::test]
async fn lease_table_json_reservations_and_release() {
    let Some((server, store)) = etcd_with_store().await else {
        return;
    };
    let mut attrs = LeaseAttrs::new("198.18.0.2".parse().unwrap(), "vxlan");
    attrs.backend_data = Some(json!({"VNI": 1, "VtepMAC": "0a:1b:2c:3d:4e:5f"}).into());
    let lease = Lease::new("10.244.2.0/24".parse().unwrap(), None, attrs);
    let CreateOutcome::Created(_) = store
        .create_if_absent(&lease, Duration::from_secs(600))
        .await
        .unwrap()
    else {
        panic!("create")
    };

    let (ok, out, err) = ctl(
        &server,
        &["reserve", "10.244.9.0/24", "--public-ip", "198.18.0.9"],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("reserved 10.244.9.0/24 for 198.18.0.9"),
        "{out}"
    );
    let (ok, _, err) = ctl(
        &server,
        &["reserve", "10.244.9.0/24", "--public-ip", "198.18.0.10"],
    );
    assert!(!ok && err.contains("exists already"), "{err}");

    let (ok, table, err) = ctl(&server, &["leases"]);
    assert!(ok, "{err}");
    eprintln!("{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("SUBNET") && lines[0].contains("VTEP-MAC/KEY"),
        "{table}"
    );
    assert!(lines[1].starts_with("10.244.2.0/24"), "{table}");
    assert!(lines[1].contains("198.18.0.2") && lines[1].contains("0a:1b:2c:3d:4e:5f"));
    assert!(
        lines[1].ends_with("lease") && lines[1].contains("m"),
        "{table}"
    );
    assert!(lines[2].starts_with("10.244.9.0/24") && lines[2].ends_with("reservation"));

    let (ok, js, err) = ctl(&server, &["leases", "-o", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&js).unwrap();
    assert_eq!(v[0]["subnet"], "10.244.2.0/24");
    assert_eq!(v[0]["kind"], "lease");
    assert_eq!(v[0]["vtep_mac_or_key"], "0a:1b:2c:3d:4e:5f");
    let ttl = v[0]["ttl_seconds"].as_i64().unwrap();
    assert!(ttl > 500 && ttl <= 600, "{ttl}");
    assert_eq!(v[1]["kind"], "reservation");
    assert!(v[1]["ttl_seconds"].is_null());

    // Each removal refuses the other kind of key.
    let (ok, _, err) = ctl(&server, &["release", "10.244.9.0/24"]);
    assert!(!ok && err.contains("is a reservation"), "{err}");
    let (ok, _, err) = ctl(&server, &["unreserve", "10.244.2.0/24"]);
    assert!(!ok && err.contains("is a lease"), "{err}");
    let (ok, out, err) = ctl(&server, &["unreserve", "10.244.9.0/24"]);
    assert!(ok && out.contains("unreserved 10.244.9.0/24"), "{err}");
    let (ok, out, err) = ctl(&server, &["release", "10.244.2.0/24"]);
    assert!(ok && out.contains("released 10.244.2.0/24"), "{err}");
    assert!(store.list().await.unwrap().leases.is_empty());
    let (ok, _, err) = ctl(&server, &["release", "10.244.2.0/24"]);
    assert!(!ok && err.contains("no key"), "{err}");
}

#[tokio::test]
async fn dual_stack_and_ipv6_only_leases_show_both_families() {
    let Some((server, store)) = etcd_with_store().await else {
        return;
    };
    let mut dual = LeaseAttrs::new("198.18.0.3".parse().unwrap(), "vxlan");
    dual.public_ipv6 = Some("fd00:198:18::3".parse().unwrap());
    dual.backend_data = Some(json!({"VNI": 1, "VtepMAC": "0a:00:00:00:00:03"}).into());
    dual.backend_v6_data = Some(json!({"VNI": 1, "VtepMAC": "0a:00:00:00:06:03"}).into());
    let mut v6_only = LeaseAttrs::new(std::net::Ipv4Addr::UNSPECIFIED, "vxlan");
    v6_only.public_ipv6 = Some("fd00:198:18::4".parse().unwrap());
    v6_only.backend_v6_data = Some(json!({"VNI": 1, "VtepMAC": "0a:00:00:00:06:04"}).into());
    for lease in [
        Lease::new(
            "10.244.3.0/24".parse().unwrap(),
            Some("fd00:10:244:3::/64".parse().unwrap()),
            dual,
        ),
        Lease::new(
            ipam::lease::NO_IPV4_SUBNET,
            Some("fd00:10:244:4::/64".parse().unwrap()),
            v6_only,
        ),
    ] {
        let CreateOutcome::Created(_) = store
            .create_if_absent(&lease, Duration::from_secs(600))
            .await
            .unwrap()
        else {
            panic!("create")
        };
    }
    let (ok, table, err) = ctl(&server, &["leases"]);
    assert!(ok, "{err}");
    let row = |needle: &str| {
        table
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} not in {table}"))
            .to_string()
    };
    let d = row("10.244.3.0/24,fd00:10:244:3::/64");
    assert!(
        d.contains("198.18.0.3,fd00:198:18::3")
            && d.contains("0a:00:00:00:00:03,0a:00:00:00:06:03"),
        "{d}"
    );
    let v6 = row("fd00:10:244:4::/64");
    assert!(
        !v6.contains("0.0.0.0"),
        "the empty IPv4 half is left out: {v6}"
    );
    assert!(
        v6.contains(" fd00:198:18::4 ") && v6.contains("0a:00:00:00:06:04"),
        "{v6}"
    );

    let (ok, out, err) = ctl(&server, &["leases", "-o", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let v6_row = v
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ipv6_subnet"] == "fd00:10:244:4::/64")
        .expect("IPv6-only row");
    assert_eq!(v6_row["subnet"], "0.0.0.0/0", "flannel's key, as stored");
    assert_eq!(v6_row["public_ipv6"], "fd00:198:18::4");
    assert_eq!(v6_row["vtep_mac_or_key_v6"], "0a:00:00:00:06:04");

    // Reservations: dual stack (both halves, both addresses) and IPv6-only.
    let (ok, out, err) = ctl(
        &server,
        &[
            "reserve",
            "10.244.9.0/24",
            "--public-ip",
            "198.18.0.9",
            "--ipv6-subnet",
            "fd00:10:244:9::/64",
            "--public-ipv6",
            "fd00:198:18::9",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("reserved 10.244.9.0/24,fd00:10:244:9::/64 for 198.18.0.9,fd00:198:18::9"),
        "{out}"
    );
    let (ok, out, err) = ctl(
        &server,
        &[
            "reserve",
            "fd00:10:244:a::/64",
            "--public-ipv6",
            "fd00:198:18::a",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("reserved fd00:10:244:a::/64 for fd00:198:18::a"),
        "{out}"
    );
    let (ok, _, err) = ctl(&server, &["reserve", "fd00:10:244:b::/64"]);
    assert!(!ok && err.contains("--public-ipv6"), "{err}");
    let keys: Vec<String> = store
        .list()
        .await
        .unwrap()
        .leases
        .iter()
        .map(Lease::key)
        .collect();
    assert!(
        keys.contains(&"10.244.9.0-24&fd00:10:244:9::-64".to_string()),
        "{keys:?}"
    );

    // Unreserve and release by either half of the key.
    let (ok, out, err) = ctl(&server, &["unreserve", "fd00:10:244:9::/64"]);
    assert!(
        ok && out.contains("unreserved fd00:10:244:9::/64 (10.244.9.0-24&fd00:10:244:9::-64"),
        "{out}{err}"
    );
    let (ok, out, err) = ctl(&server, &["unreserve", "fd00:10:244:a::/64"]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = ctl(&server, &["release", "10.244.3.0/24"]);
    assert!(ok, "{err}");
    let (ok, _, err) = ctl(&server, &["release", "fd00:10:244:4::/64"]);
    assert!(ok, "{err}");
    assert!(store.list().await.unwrap().leases.is_empty());
}
