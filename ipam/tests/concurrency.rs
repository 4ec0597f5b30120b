//! Many allocators on one directory at once: the `flock` must serialise them so that every
//! address is handed out exactly once.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipam::host_local::{HostLocal, RangeConfig, RangeSet};

#[test]
fn eight_threads_sixteen_allocations_each_are_distinct() {
    let tmp = tempfile::tempdir().expect("tmp");
    let set = RangeSet::from_config(&[RangeConfig::from_subnet(
        "10.244.7.0/24".parse().expect("net"),
    )])
    .expect("set");
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let dir = tmp.path().to_path_buf();
            let set = set.clone();
            std::thread::spawn(move || {
                // Each thread opens its own allocator, like separate plugin processes.
                let h = HostLocal::open(&dir, "cbr0").expect("open");
                (0..16)
                    .map(|i| {
                        let id = format!("pod-{t}-{i}");
                        let a = h
                            .allocate(&id, "eth0", std::slice::from_ref(&set), &[])
                            .unwrap_or_else(|e| panic!("{id}: {e}"));
                        (id, a[0].address.ip())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<(String, IpAddr)> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("thread"))
        .collect();
    assert_eq!(all.len(), 128);
    let distinct: BTreeSet<IpAddr> = all.iter().map(|(_, ip)| *ip).collect();
    assert_eq!(distinct.len(), 128, "an address was handed out twice");
    assert!(!distinct.contains(&"10.244.7.1".parse::<IpAddr>().expect("gw")));

    let h = HostLocal::open(tmp.path(), "cbr0").expect("open");
    let res = h.reservations().expect("list");
    assert_eq!(res.len(), 128);
    for (id, ip) in &all {
        let r = res.iter().find(|r| r.ip == *ip).expect("reserved");
        assert_eq!(&r.container_id, id);
        let bytes = std::fs::read(h.dir().join(ip.to_string())).expect("file");
        assert_eq!(bytes, format!("{id}\r\neth0").into_bytes());
    }
    // Round-robin over a fresh /24 under contention still fills .2 ..= .129 exactly.
    let expected: BTreeSet<IpAddr> = (2..130)
        .map(|i| format!("10.244.7.{i}").parse().expect("ip"))
        .collect();
    assert_eq!(distinct, expected);
    assert_eq!(h.free_count(&set).expect("free"), 253 - 128);
}
