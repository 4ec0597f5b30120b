//! `EtcdLeaseStore` against a real etcd (Debian's etcd-server 3.4): flannel's byte format,
//! conditional writes, lease bookkeeping, keep-alive and watch/compaction mapping.

use std::time::Duration;

use etcd_client::{GetOptions, PutOptions};
use flannel_testkit::etcd::EtcdServer;
use flanneld::subnet::{
    CreateOutcome, EtcdConfig, EtcdLeaseStore, KeepAliveOutcome, LeaseStore, StoreError,
    UpdateOutcome, WatchBatch, WatchEvent, WatchStream,
};
use futures::StreamExt;
use ipam::lease::{Lease, LeaseAttrs};
use serde_json::json;

const TTL: Duration = Duration::from_secs(30);

fn vxlan_lease(subnet: &str, ip: &str, mac: &str) -> Lease {
    let mut attrs = LeaseAttrs::new(ip.parse().unwrap(), "vxlan");
    attrs.backend_data = Some(json!({"VNI": 1, "VtepMAC": mac}).into());
    Lease::new(subnet.parse().unwrap(), None, attrs)
}

async fn store(server: &EtcdServer) -> EtcdLeaseStore {
    let cfg = EtcdConfig {
        endpoints: vec![server.endpoint()],
        ..EtcdConfig::default()
    };
    EtcdLeaseStore::connect(&cfg).await.expect("connect")
}

async fn live_leases(c: &mut etcd_client::Client) -> Vec<i64> {
    let mut ids: Vec<i64> = c
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    ids.sort_unstable();
    ids
}

async fn next(w: &mut WatchStream) -> WatchBatch {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("watch batch in time")
        .expect("stream open")
        .expect("no watch error")
}

#[tokio::test]
async fn key_and_value_bytes_match_flannel() {
    let Some(server) = EtcdServer::start_or_skip().await else {
        return;
    };
    let st = store(&server).await;
    let mut c = server.client().await.unwrap();
    assert_eq!(st.network_config().await.unwrap(), None);
    let cfg = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
    c.put("/coreos.com/network/config", cfg, None)
        .await
        .unwrap();
    assert_eq!(st.network_config().await.unwrap().as_deref(), Some(cfg));
    assert_eq!(st.config_location(), "/coreos.com/network/config");

    let want = vxlan_lease("10.244.1.0/24", "198.18.0.1", "0a:58:0a:f4:01:00");
    let CreateOutcome::Created(got) = st.create_if_absent(&want, TTL).await.unwrap() else {
        panic!("create must succeed on an empty store");
    };
    let raw = c
        .get("/coreos.com/network/subnets/10.244.1.0-24", None)
        .await
        .unwrap();
    let kv = &raw.kvs()[0];
    // Go flannel's json.Marshal(LeaseAttrs) output, byte for byte.
    assert_eq!(
        kv.value_str().unwrap(),
        r#"{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:00"}}"#
    );
    assert_eq!(Some(kv.lease()), got.lease_id);
    let ttl = c.lease_time_to_live(kv.lease(), None).await.unwrap().ttl();
    assert!((1..=30).contains(&ttl), "ttl {ttl}");

    // A reservation written by an operator with etcdctl (no --lease), flannel's documented value.
    c.put(
        "/coreos.com/network/subnets/10.244.9.0-24",
        r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#,
        None,
    )
    .await
    .unwrap();
    c.put(
        "/coreos.com/network/subnets/10.244.8.0-24",
        "{not json",
        None,
    )
    .await
    .unwrap();
    let listing = st.list().await.unwrap();
    assert_eq!(listing.leases.len(), 2);
    let res = listing
        .leases
        .iter()
        .find(|l| l.subnet.to_string() == "10.244.9.0/24")
        .unwrap();
    assert!(!res.leased && res.lease_id.is_none());
    assert_eq!(res.attrs.public_ip.to_string(), "192.168.64.3");
    let mine = listing.leases.iter().find(|l| l.leased).unwrap();
    assert_eq!(mine.lease_id, got.lease_id);
    assert_eq!(
        listing.unreadable,
        vec![("10.244.8.0/24".parse().unwrap(), None)]
    );
    let head = c.get("x", None).await.unwrap().header().unwrap().revision();
    assert_eq!(listing.revision, head);
}

#[tokio::test]
async fn writes_are_conditional_and_leases_are_not_leaked() {
    let Some(server) = EtcdServer::start_or_skip().await else {
        return;
    };
    let st = store(&server).await;
    let mut c = server.client().await.unwrap();
    let a = vxlan_lease("10.244.1.0/24", "198.18.0.1", "0a:00:00:00:00:01");
    let CreateOutcome::Created(mine) = st.create_if_absent(&a, TTL).await.unwrap() else {
        panic!()
    };
    let b = vxlan_lease("10.244.1.0/24", "198.18.0.2", "0a:00:00:00:00:02");
    match st.create_if_absent(&b, TTL).await.unwrap() {
        CreateOutcome::Exists(Some(cur)) => assert_eq!(cur.attrs, a.attrs),
        other => panic!("expected Exists, got {other:?}"),
    }
    assert_eq!(
        live_leases(&mut c).await,
        vec![mine.lease_id.unwrap()],
        "loser's lease revoked"
    );

    let mut stale = mine.clone();
    stale.lease_id = Some(mine.lease_id.unwrap() + 12345);
    assert!(matches!(
        st.update(&stale, TTL).await.unwrap(),
        UpdateOutcome::Conflict(Some(_))
    ));
    assert!(!st.delete(&stale).await.unwrap());
    let mut want = mine.clone();
    want.attrs.backend_data = Some(json!({"VNI": 1, "VtepMAC": "0a:00:00:00:00:11"}).into());
    let UpdateOutcome::Updated(new) = st.update(&want, TTL).await.unwrap() else {
        panic!()
    };
    assert_ne!(new.lease_id, mine.lease_id);
    assert_eq!(
        live_leases(&mut c).await,
        vec![new.lease_id.unwrap()],
        "old lease revoked"
    );
    assert_eq!(
        st.get(&new.id()).await.unwrap(),
        Some(Lease {
            expiration: None,
            ..new.clone()
        })
    );

    // A reservation stays lease-less on update; a missing one is not created.
    let r = vxlan_lease("10.244.2.0/24", "198.18.0.3", "0a:00:00:00:00:03");
    c.put(
        "/coreos.com/network/subnets/10.244.2.0-24",
        r.attrs.to_json(),
        None,
    )
    .await
    .unwrap();
    let mut r2 = r.clone();
    r2.attrs.backend_type = "host-gw".into();
    r2.attrs.backend_data = None;
    assert!(matches!(
        st.update(&r2, TTL).await.unwrap(),
        UpdateOutcome::Updated(_)
    ));
    let raw = c
        .get("/coreos.com/network/subnets/10.244.2.0-24", None)
        .await
        .unwrap();
    assert_eq!(raw.kvs()[0].lease(), 0);
    assert_eq!(
        raw.kvs()[0].value_str().unwrap(),
        r#"{"PublicIP":"198.18.0.3","PublicIPv6":null,"BackendType":"host-gw"}"#
    );
    let ghost = vxlan_lease("10.244.3.0/24", "198.18.0.4", "0a:00:00:00:00:04");
    assert_eq!(
        st.update(&ghost, TTL).await.unwrap(),
        UpdateOutcome::Conflict(None)
    );
    assert!(!st.delete(&ghost).await.unwrap());
    assert!(st.get(&ghost.id()).await.unwrap().is_none());

    assert!(st.delete(&new).await.unwrap());
    assert!(
        live_leases(&mut c).await.is_empty(),
        "deleted key's lease revoked"
    );
    let left = c
        .get(
            "/coreos.com/network/subnets/",
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(left.kvs().len(), 1, "only the reservation is left");
}

#[tokio::test]
async fn keep_alive_reports_lost_leases() {
    let Some(server) = EtcdServer::start_or_skip().await else {
        return;
    };
    let st = store(&server).await;
    let mut c = server.client().await.unwrap();
    let a = vxlan_lease("10.244.1.0/24", "198.18.0.1", "0a:00:00:00:00:01");
    let CreateOutcome::Created(mine) = st
        .create_if_absent(&a, Duration::from_secs(5))
        .await
        .unwrap()
    else {
        panic!()
    };
    let id = mine.lease_id.unwrap();
    for _ in 0..3 {
        assert_eq!(
            st.keep_alive(id).await.unwrap(),
            KeepAliveOutcome::Alive {
                ttl: Duration::from_secs(5)
            }
        );
    }
    c.lease_revoke(id).await.unwrap();
    assert_eq!(st.keep_alive(id).await.unwrap(), KeepAliveOutcome::Lost);
    assert_eq!(st.keep_alive(id).await.unwrap(), KeepAliveOutcome::Lost);
    assert!(st.get(&a.id()).await.unwrap().is_none());
    // A lease that never existed.
    assert_eq!(st.keep_alive(0x7777).await.unwrap(), KeepAliveOutcome::Lost);
}

#[tokio::test]
async fn watch_maps_events_and_compaction() {
    let Some(server) = EtcdServer::start_or_skip().await else {
        return;
    };
    let st = store(&server).await;
    let mut c = server.client().await.unwrap();
    let start = st.list().await.unwrap().revision + 1;
    let mut w = st.watch(start).await.unwrap();
    let a = vxlan_lease("10.244.1.0/24", "198.18.0.1", "0a:00:00:00:00:01");
    let CreateOutcome::Created(mine) = st.create_if_absent(&a, TTL).await.unwrap() else {
        panic!()
    };
    let bare = Lease {
        expiration: None,
        ..mine.clone()
    };
    assert!(
        matches!(next(&mut w).await, WatchBatch::Events { events, .. } if events == vec![WatchEvent::Put(bare.clone())])
    );
    // A changed VTEP MAC arrives as a Put with the new value.
    let mut want = mine.clone();
    want.attrs.backend_data = Some(json!({"VNI": 1, "VtepMAC": "0a:00:00:00:00:99"}).into());
    let UpdateOutcome::Updated(upd) = st.update(&want, TTL).await.unwrap() else {
        panic!()
    };
    match next(&mut w).await {
        WatchBatch::Events { events, .. } => {
            assert_eq!(
                events,
                vec![WatchEvent::Put(Lease {
                    expiration: None,
                    ..upd.clone()
                })]
            )
        }
        other => panic!("{other:?}"),
    }
    // Unconditional delete (etcdctl del): a Delete carrying the previous value.
    c.delete("/coreos.com/network/subnets/10.244.1.0-24", None)
        .await
        .unwrap();
    let WatchBatch::Events { events, revision } = next(&mut w).await else {
        panic!()
    };
    assert_eq!(
        events,
        vec![WatchEvent::Delete {
            id: a.id(),
            prev: Some(Lease {
                expiration: None,
                ..upd
            })
        }]
    );
    // A lease expiry/revoke is a Delete too.
    let l = c.lease_grant(30, None).await.unwrap().id();
    c.put(
        "/coreos.com/network/subnets/10.244.2.0-24",
        a.attrs.to_json(),
        Some(PutOptions::new().with_lease(l)),
    )
    .await
    .unwrap();
    assert!(matches!(next(&mut w).await, WatchBatch::Events { .. }));
    c.lease_revoke(l).await.unwrap();
    assert!(
        matches!(next(&mut w).await, WatchBatch::Events { events, .. } if matches!(events[..], [WatchEvent::Delete { .. }]))
    );

    // Compact past `start`: a new watch from there is told so.
    let head = c.get("x", None).await.unwrap().header().unwrap().revision();
    c.compact(head, None).await.unwrap();
    let mut old = st.watch(start).await.unwrap();
    match next(&mut old).await {
        WatchBatch::Compacted { compact_revision } => assert_eq!(compact_revision, head),
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(revision < head);
    // From head + 1 it works.
    let mut w = st.watch(head + 1).await.unwrap();
    c.put(
        "/coreos.com/network/subnets/10.244.3.0-24",
        a.attrs.to_json(),
        None,
    )
    .await
    .unwrap();
    assert!(matches!(next(&mut w).await, WatchBatch::Events { .. }));
}

#[tokio::test]
async fn malformed_settings_are_config_errors_and_missing_files_name_the_path() {
    let mixed = EtcdConfig {
        endpoints: vec!["http://127.0.0.1:1".into(), "https://127.0.0.1:2".into()],
        ..EtcdConfig::default()
    };
    match EtcdLeaseStore::connect(&mixed).await {
        Err(StoreError::Config(m)) => assert!(m.contains("mixes http:// and https://"), "{m}"),
        other => panic!("expected Config, got {other:?}"),
    }
    let scheme = EtcdConfig {
        endpoints: vec!["ftp://127.0.0.1:1".into()],
        ..EtcdConfig::default()
    };
    assert!(matches!(
        EtcdLeaseStore::connect(&scheme).await,
        Err(StoreError::Config(_))
    ));
    let missing_ca = EtcdConfig {
        endpoints: vec!["https://127.0.0.1:1".into()],
        ca_file: Some("/nonexistent/flannel-ca.pem".into()),
        ..EtcdConfig::default()
    };
    match EtcdLeaseStore::connect(&missing_ca).await {
        Err(e @ StoreError::TlsFile(_)) => assert_eq!(
            e.to_string(),
            "etcd: --etcd-cafile /nonexistent/flannel-ca.pem: cannot read it: no such file"
        ),
        other => panic!("expected TlsFile, got {other:?}"),
    }
}
