//! Allocator scenarios from the reference test suites (`allocator_test.go`,
//! `host_local_test.go`), run against both stores.

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn set(subnets: &[&str]) -> RangeSet {
    let c: Vec<RangeConfig> = subnets
        .iter()
        .map(|s| RangeConfig::from_subnet(s.parse().expect("subnet")))
        .collect();
    RangeSet::from_config(&c).expect("valid set")
}

fn mem(files: &[(&str, &str)], last: Option<&str>) -> HostLocal<MemoryStore> {
    let mut state = MemoryState::default();
    for (a, c) in files {
        state.files.insert(ip(a), c.to_string());
    }
    if let Some(l) = last {
        state.last_reserved.insert(0, ip(l));
    }
    HostLocal::with_store(MemoryStore::with_state(state))
}

fn one(h: &HostLocal<impl Store>, id: &str, sets: &[RangeSet]) -> Result<String, IpamError> {
    h.allocate(id, "eth0", sets, &[])
        .map(|a| a[0].address.ip().to_string())
}

/// (subnets, existing files, last reserved, expected)
type RoundRobinCase<'a> = (&'a [&'a str], &'a [&'a str], Option<&'a str>, &'a str);

#[test]
fn round_robin_table() {
    let cases: [RoundRobinCase; 12] = [
        (&["10.0.0.0/29"], &[], None, "10.0.0.2"),
        (&["2001:db8:1::0/64"], &[], None, "2001:db8:1::2"),
        (&["10.0.0.0/30"], &[], None, "10.0.0.2"),
        (&["10.0.0.0/29"], &["10.0.0.2"], None, "10.0.0.3"),
        (&["10.0.0.0/29"], &[], Some("10.0.0.5"), "10.0.0.6"),
        (
            &["10.0.0.0/29"],
            &["10.0.0.4", "10.0.0.5"],
            Some("10.0.0.3"),
            "10.0.0.6",
        ),
        (
            &["10.0.0.0/29"],
            &["10.0.0.6"],
            Some("10.0.0.5"),
            "10.0.0.2",
        ),
        (
            &["10.0.0.0/29"],
            &["10.0.0.2"],
            Some("10.0.0.128"),
            "10.0.0.3",
        ),
        (
            &["10.0.0.0/29"],
            &["10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"],
            Some("10.0.0.3"),
            "10.0.0.3",
        ),
        (&["10.0.0.0/30", "10.0.1.0/30"], &[], None, "10.0.0.2"),
        (
            &["10.0.0.0/30", "10.0.1.0/30"],
            &[],
            Some("10.0.0.2"),
            "10.0.1.2",
        ),
        (
            &["10.0.0.0/30", "10.0.1.0/30", "10.0.2.0/30"],
            &[],
            Some("10.0.2.2"),
            "10.0.0.2",
        ),
    ];
    for (i, (subnets, files, last, want)) in cases.iter().enumerate() {
        let files: Vec<(&str, &str)> = files.iter().map(|f| (*f, "id")).collect();
        let h = mem(&files, *last);
        let got = one(&h, "ID", &[set(subnets)]).unwrap_or_else(|e| panic!("case {i}: {e}"));
        assert_eq!(&got, want, "case {i}");
        assert_eq!(
            h.store().snapshot().last_reserved.get(&0),
            Some(&ip(want)),
            "case {i}: cursor"
        );
    }
}

#[test]
fn never_broadcast_then_exhausted() {
    let h = mem(&[], None);
    let s = [set(&["192.168.1.0/29"])];
    for i in 2..7 {
        let a = h
            .allocate(&format!("ID{i}"), "eth0", &s, &[])
            .expect("alloc");
        assert_eq!(a[0].address.to_string(), format!("192.168.1.{i}/29"));
        assert_eq!(a[0].gateway, ip("192.168.1.1"));
    }
    let e = h.allocate("ID8", "eth0", &s, &[]).expect_err("full");
    assert!(matches!(e, IpamError::Exhausted { .. }));
    assert_eq!(
        e.to_string(),
        "no IP addresses available in range set: 192.168.1.1-192.168.1.6"
    );
    assert_eq!(h.free_count(&s[0]).expect("count"), 0);
}

#[test]
fn exhaustion_message_table() {
    let cases: [(&[&str], &[&str]); 3] = [
        (&["10.0.0.0/30"], &["10.0.0.2"]),
        (
            &["10.0.0.0/29"],
            &["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"],
        ),
        (&["10.0.0.0/30", "10.0.1.0/30"], &["10.0.0.2", "10.0.1.2"]),
    ];
    for (subnets, files) in cases {
        let files: Vec<(&str, &str)> = files.iter().map(|f| (*f, "id")).collect();
        let h = mem(&files, None);
        let e = one(&h, "ID", &[set(subnets)]).expect_err("exhausted");
        assert!(
            e.to_string()
                .starts_with("no IP addresses available in range set"),
            "{e}"
        );
        // Nothing was created by the failed call.
        assert_eq!(h.store().snapshot().files.len(), files.len());
    }
}

#[test]
fn round_robin_after_release() {
    let h = mem(&[], None);
    let s = [set(&["192.168.1.0/29"])];
    assert_eq!(one(&h, "ID", &s).expect("a"), "192.168.1.2");
    assert_eq!(
        h.release("ID", "eth0").expect("rel"),
        vec![ip("192.168.1.2")]
    );
    assert_eq!(one(&h, "ID", &s).expect("b"), "192.168.1.3");
    // The released .2 comes back only after wrap-around.
    for (i, want) in ["192.168.1.4", "192.168.1.5", "192.168.1.6", "192.168.1.2"]
        .iter()
        .enumerate()
    {
        assert_eq!(&one(&h, &format!("other{i}"), &s).expect("c"), want);
    }
}

#[test]
fn requested_ip() {
    let s = [set(&["192.168.1.0/29"])];
    let h = mem(&[], None);
    let a = h
        .allocate("ID", "eth0", &s, &[ip("192.168.1.5")])
        .expect("requested");
    assert_eq!(a[0].address.to_string(), "192.168.1.5/29");
    // The cursor follows requested allocations too (reference Reserve writes it).
    assert_eq!(
        h.store().snapshot().last_reserved.get(&0),
        Some(&ip("192.168.1.5"))
    );

    // Taken by someone else.
    let e = h
        .allocate("ID2", "eth0", &s, &[ip("192.168.1.5")])
        .expect_err("taken");
    assert!(matches!(e, IpamError::RequestedUnavailable(x) if x == ip("192.168.1.5")));
    // Outside every set.
    let e = h
        .allocate("ID2", "eth0", &s, &[ip("192.168.2.5")])
        .expect_err("outside");
    assert!(matches!(e, IpamError::RequestedOutOfRange(_)));
    // The gateway.
    let e = h
        .allocate("ID2", "eth0", &s, &[ip("192.168.1.1")])
        .expect_err("gateway");
    assert!(matches!(e, IpamError::RequestedGateway(_)));
    // Two from the same set.
    let e = h
        .allocate("ID2", "eth0", &s, &[ip("192.168.1.2"), ip("192.168.1.3")])
        .expect_err("two");
    assert!(matches!(e, IpamError::RequestedNotAllocated(x) if x == ip("192.168.1.3")));
    assert_eq!(
        h.store().snapshot().files.len(),
        1,
        "failed calls left nothing"
    );
}

#[test]
fn requested_outside_start_end() {
    let c = RangeConfig {
        range_start: Some(ip("192.168.1.3")),
        range_end: Some(ip("192.168.1.4")),
        ..RangeConfig::from_subnet("192.168.1.0/29".parse().expect("net"))
    };
    let s = [RangeSet::from_config(&[c]).expect("set")];
    let h = mem(&[], None);
    for bad in ["192.168.1.2", "192.168.1.5"] {
        let e = h.allocate("ID", "eth0", &s, &[ip(bad)]).expect_err(bad);
        assert!(matches!(e, IpamError::RequestedOutOfRange(_)), "{bad}: {e}");
    }
    assert!(h.allocate("ID", "eth0", &s, &[ip("192.168.1.4")]).is_ok());
}

#[test]
fn two_range_sets_v4_v6_and_requested() {
    let sets = [
        set(&["10.1.2.0/24", "10.2.2.0/24"]),
        set(&["2001:db8:1::/64"]),
    ];
    let h = mem(&[], None);
    let a = h.allocate("dummy", "eth0", &sets, &[]).expect("dual");
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].address.to_string(), "10.1.2.2/24");
    assert_eq!(a[0].gateway, ip("10.1.2.1"));
    assert_eq!(a[1].address.to_string(), "2001:db8:1::2/64");
    assert_eq!(a[1].gateway, ip("2001:db8:1::1"));
    let snap = h.store().snapshot();
    assert_eq!(
        snap.files.get(&ip("10.1.2.2")).map(String::as_str),
        Some("dummy\r\neth0")
    );
    assert_eq!(snap.last_reserved.get(&0), Some(&ip("10.1.2.2")));
    assert_eq!(snap.last_reserved.get(&1), Some(&ip("2001:db8:1::2")));

    // Requested addresses in both families, given in reverse order.
    let b = h
        .allocate(
            "other",
            "eth0",
            &sets,
            &[ip("2001:db8:1::99"), ip("10.2.2.9")],
        )
        .expect("requested dual");
    assert_eq!(b[0].address.to_string(), "10.2.2.9/24");
    assert_eq!(b[1].address.to_string(), "2001:db8:1::99/64");

    assert_eq!(
        h.release("dummy", "eth0").expect("release"),
        vec![ip("10.1.2.2"), ip("2001:db8:1::2")]
    );
}

#[test]
fn all_or_nothing_across_sets() {
    // The v6 set is full, so the v4 address taken first must be given back.
    let sets = [set(&["10.0.0.0/29"]), set(&["2001:db8::/126"])];
    let h = mem(
        &[("2001:db8::2", "x\r\neth0"), ("2001:db8::3", "y\r\neth0")],
        None,
    );
    let e = h.allocate("ID", "eth0", &sets, &[]).expect_err("v6 full");
    assert!(matches!(e, IpamError::Exhausted { ref range } if range == "2001:db8::1-2001:db8::3"));
    let snap = h.store().snapshot();
    assert_eq!(snap.files.len(), 2);
    assert!(!snap.files.contains_key(&ip("10.0.0.2")));
}

#[test]
fn duplicate_id_ifname_rejected() {
    let s = [set(&["10.0.0.0/29"])];
    let h = mem(&[], None);
    one(&h, "dummy", &s).expect("first");
    let e = one(&h, "dummy", &s).expect_err("dup");
    assert_eq!(
        e.to_string(),
        "10.0.0.2 has been allocated to dummy, duplicate allocation is not allowed"
    );
    // Same container, another interface: fine. Another network (store): fine.
    assert!(h.allocate("dummy", "eth1", &s, &[]).is_ok());
    // A legacy id-only file counts as held too (reference GetByID).
    let h = mem(&[("10.0.0.5", "legacy")], None);
    assert!(matches!(
        one(&h, "legacy", &s),
        Err(IpamError::Duplicate { .. })
    ));
}

#[test]
fn release_unknown_and_legacy_and_whitespace() {
    let h = mem(
        &[
            ("10.0.0.2", "  dummy\r\neth0 \n"),
            ("10.0.0.3", "dummy"),
            ("10.0.0.4", "dummy\r\neth1"),
            ("10.0.0.5", "other\r\neth0"),
        ],
        None,
    );
    assert_eq!(
        h.release("nobody", "eth0").expect("unknown"),
        Vec::<IpAddr>::new()
    );
    assert_eq!(
        h.lookup("dummy", "eth0").expect("lookup"),
        vec![ip("10.0.0.2"), ip("10.0.0.3")]
    );
    assert_eq!(
        h.release(" dummy ", "eth0").expect("release"),
        vec![ip("10.0.0.2"), ip("10.0.0.3")]
    );
    let left: Vec<IpAddr> = h.store().snapshot().files.keys().copied().collect();
    assert_eq!(left, vec![ip("10.0.0.4"), ip("10.0.0.5")]);
}

#[test]
fn reservations_and_gc() {
    let h = mem(
        &[
            ("10.0.0.2", "a\r\neth0"),
            ("10.0.0.3", "b"),
            ("10.0.0.4", "c\r\neth0\n"),
        ],
        None,
    );
    let all = h.reservations().expect("list");
    assert_eq!(
        all,
        vec![
            Reservation {
                ip: ip("10.0.0.2"),
                container_id: "a".into(),
                ifname: Some("eth0".into())
            },
            Reservation {
                ip: ip("10.0.0.3"),
                container_id: "b".into(),
                ifname: None
            },
            Reservation {
                ip: ip("10.0.0.4"),
                container_id: "c".into(),
                ifname: Some("eth0".into())
            },
        ]
    );
    let gone = h.gc(&|r: &Reservation| r.container_id == "a").expect("gc");
    assert_eq!(gone.len(), 2);
    assert_eq!(h.reservations().expect("list"), all[..1].to_vec());
    // An empty valid list releases everything.
    assert_eq!(h.gc(&|_: &Reservation| false).expect("gc").len(), 1);
    assert!(h.reservations().expect("list").is_empty());
}

#[test]
fn free_count_tracks_allocations() {
    let s = set(&["10.0.0.0/28"]);
    let h = mem(&[("10.0.9.9", "elsewhere")], None);
    assert_eq!(h.free_count(&s).expect("count"), 13);
    one(&h, "a", std::slice::from_ref(&s)).expect("a");
    one(&h, "b", std::slice::from_ref(&s)).expect("b");
    assert_eq!(h.free_count(&s).expect("count"), 11);
    let v6 = set(&["2001:db8::/64"]);
    assert_eq!(h.free_count(&v6).expect("count"), (1u128 << 64) - 2);
}

#[test]
fn network_name_validation() {
    let d = Path::new("/nonexistent-data-dir");
    for bad in ["", ".", "..", "a/b", "a\0b", &"x".repeat(256)] {
        assert!(
            matches!(
                HostLocal::open(d, bad),
                Err(IpamError::InvalidNetworkName(_))
            ),
            "{bad:?}"
        );
    }
    let h = HostLocal::open(d, "cbr0").expect("ok");
    assert_eq!(h.dir(), Path::new("/nonexistent-data-dir/cbr0"));
    assert!(HostLocal::open(d, &"x".repeat(255)).is_ok());
    assert!(HostLocal::open(d, "...").is_ok());
}

// ---- DiskStore: the same policy against real files ----

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn disk_layout_matches_reference() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tmp");
    let h = HostLocal::open(tmp.path(), "mynet").expect("open");
    assert!(!h.dir().exists(), "open must not create anything");
    // DEL / lookup / list on a never-used network: success, nothing created.
    assert!(h.release("x", "eth0").expect("release").is_empty());
    assert!(h.lookup("x", "eth0").expect("lookup").is_empty());
    assert!(h.reservations().expect("list").is_empty());
    assert!(!h.dir().exists());

    let sets = [
        set(&["10.1.2.0/24", "10.2.2.0/24"]),
        set(&["2001:db8:1::/64"]),
    ];
    let a = h.allocate("dummy", "eth0", &sets, &[]).expect("alloc");
    assert_eq!(a[0].address.to_string(), "10.1.2.2/24");
    assert_eq!(a[1].address.to_string(), "2001:db8:1::2/64");
    let dir = h.dir();
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(dir) & 0o700, 0o700);
    assert_eq!(read(&dir.join("10.1.2.2")), b"dummy\r\neth0");
    assert_eq!(read(&dir.join("2001:db8:1::2")), b"dummy\r\neth0");
    assert_eq!(mode(&dir.join("10.1.2.2")), 0o600);
    assert_eq!(read(&dir.join("last_reserved_ip.0")), b"10.1.2.2");
    assert_eq!(read(&dir.join("last_reserved_ip.1")), b"2001:db8:1::2");
    assert_eq!(read(&dir.join("lock")), b"");

    // Foreign files are ignored; a directory named like an address too.
    std::fs::write(dir.join("README"), "hello").expect("write");
    std::fs::create_dir(dir.join("10.1.2.77")).expect("mkdir");
    std::fs::write(dir.join("10.1.2.9"), " old-id \n").expect("write");
    let r = h.reservations().expect("list");
    let ips: Vec<String> = r.iter().map(|r| r.ip.to_string()).collect();
    assert_eq!(ips, ["10.1.2.2", "10.1.2.9", "2001:db8:1::2"]);
    assert_eq!(r[1].container_id, "old-id");
    assert_eq!(r[1].ifname, None);

    assert_eq!(
        h.release("dummy", "eth0").expect("release"),
        vec![ip("10.1.2.2"), ip("2001:db8:1::2")]
    );
    assert!(!dir.join("10.1.2.2").exists());
    assert_eq!(
        h.release("old-id", "eth0").expect("legacy"),
        vec![ip("10.1.2.9")]
    );
    // The cursor survives release: the next pod gets .3, not .2.
    let b = h.allocate("next", "eth0", &sets, &[]).expect("alloc");
    assert_eq!(b[0].address.to_string(), "10.1.2.3/24");
}

#[test]
fn disk_leftovers_of_interrupted_writes_are_removed_and_never_reservations() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = HostLocal::open(tmp.path(), "n").expect("open");
    let s = [set(&["10.1.2.0/29"])];
    h.allocate("a", "eth0", &s, &[]).expect("create dir");
    let dir = h.dir().to_path_buf();
    // A writer killed after creating the temporary file, one killed before writing into the
    // address file (the reference's own window), and a complete temporary file never linked.
    std::fs::write(
        dir.join(".reserving.10.1.2.3.4242"),
        "b
eth0",
    )
    .expect("write");
    std::fs::write(dir.join("10.1.2.4"), "").expect("write");
    std::fs::write(dir.join(".reserving.10.1.2.5.7"), "").expect("write");
    let r = h.reservations().expect("list");
    let ips: Vec<String> = r.iter().map(|r| r.ip.to_string()).collect();
    assert_eq!(
        ips,
        ["10.1.2.2"],
        "leftovers must not count as reservations"
    );
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["10.1.2.2", "last_reserved_ip.0", "lock"]);
    // The addresses are free again: the next pods get .3 and .4.
    let b = h.allocate("b", "eth0", &s, &[]).expect("alloc");
    let c = h.allocate("c", "eth0", &s, &[]).expect("alloc");
    assert_eq!(b[0].address.to_string(), "10.1.2.3/29");
    assert_eq!(c[0].address.to_string(), "10.1.2.4/29");
    assert_eq!(read(&dir.join("10.1.2.4")), b"c\r\neth0");
}

#[test]
fn disk_non_canonical_names_are_released() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = HostLocal::open(tmp.path(), "n").expect("open");
    let s = [set(&["2001:db8:1::/64"])];
    h.allocate("a", "eth0", &s, &[]).expect("create dir");
    std::fs::write(h.dir().join("2001:DB8:1::0:9"), "upper\r\neth0").expect("write");
    assert_eq!(
        h.lookup("upper", "eth0").expect("lookup"),
        vec![ip("2001:db8:1::9")]
    );
    assert_eq!(
        h.release("upper", "eth0").expect("rel"),
        vec![ip("2001:db8:1::9")]
    );
    assert!(!h.dir().join("2001:DB8:1::0:9").exists());
}

#[test]
fn disk_garbage_cursor_is_ignored() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = HostLocal::open(tmp.path(), "n").expect("open");
    let s = [set(&["10.0.0.0/24"])];
    std::fs::create_dir_all(h.dir()).expect("mkdir");
    std::fs::write(h.dir().join("last_reserved_ip.0"), "banana").expect("write");
    assert_eq!(one(&h, "a", &s).expect("a"), "10.0.0.2");
    std::fs::write(h.dir().join("last_reserved_ip.0"), "10.0.0.40\n").expect("write");
    assert_eq!(one(&h, "b", &s).expect("b"), "10.0.0.41");
}

#[test]
fn disk_lock_is_exclusive() {
    use std::sync::mpsc;
    use std::time::Duration;
    let tmp = tempfile::tempdir().expect("tmp");
    let store = DiskStore::new(tmp.path().join("net"));
    let guard = store.lock().expect("lock");
    let (tx, rx) = mpsc::channel();
    let dir = tmp.path().join("net");
    let t = std::thread::spawn(move || {
        let other = DiskStore::new(dir);
        let _g = other.lock().expect("lock 2");
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "second lock must block while the first is held"
    );
    drop(guard);
    rx.recv_timeout(Duration::from_secs(5))
        .expect("second lock acquired after release");
    t.join().expect("thread");
}

#[test]
fn bad_calls_are_rejected_before_touching_the_store() {
    let h = mem(&[("10.0.0.9", "")], None);
    let s = set(&["10.0.0.0/24"]);
    for (id, sets) in [
        ("", vec![s.clone()]),
        ("  ", vec![s.clone()]),
        ("a", vec![]),
        ("a", vec![s.clone(), set(&["10.0.0.0/25"])]),
    ] {
        assert!(
            matches!(
                h.allocate(id, "eth0", &sets, &[]),
                Err(IpamError::InvalidConfig(_))
            ),
            "{id:?} {sets:?}"
        );
    }
    // An empty id owns nothing, not even an empty file.
    assert!(h.lookup("", "eth0").expect("lookup").is_empty());
    assert!(h.release("", "eth0").expect("release").is_empty());
    assert_eq!(h.store().snapshot().files.len(), 1);
}

#[test]
fn allocate_unclaimed_matches_allocate_and_reads_no_reservation() {
    // Same round robin as `allocate`, including skipping files it never read.
    let files = [("10.0.0.3", "x\r\neth0"), ("10.0.0.4", "y\r\neth0")];
    let checked = mem(&files, Some("10.0.0.2"));
    let unclaimed = mem(&files, Some("10.0.0.2"));
    let sets = [set(&["10.0.0.0/29"])];
    let a = checked.allocate("c", "eth0", &sets, &[]).expect("allocate");
    let b = unclaimed
        .allocate_unclaimed("c", "eth0", &sets, &[])
        .expect("allocate_unclaimed");
    assert_eq!(a, b);
    assert_eq!(b[0].address.ip(), ip("10.0.0.5"));
    assert_eq!(
        unclaimed
            .store()
            .snapshot()
            .files
            .get(&ip("10.0.0.5"))
            .map(String::as_str),
        Some("c\r\neth0")
    );
    // The duplicate check is the caller's: a second call claims another address.
    let again = unclaimed
        .allocate_unclaimed("c", "eth0", &sets, &[])
        .expect("second");
    assert_eq!(again[0].address.ip(), ip("10.0.0.6"));
    // A requested address that is taken is still refused (O_EXCL), without a scan.
    assert!(matches!(
        unclaimed.allocate_unclaimed("d", "eth0", &sets, &[ip("10.0.0.3")]),
        Err(IpamError::RequestedUnavailable(_))
    ));
}

#[test]
fn release_addresses_touches_only_the_named_ips_of_the_owner() {
    let h = mem(
        &[
            ("10.0.0.2", "c\r\neth0"),
            ("10.0.0.3", "c\r\neth0"),
            ("10.0.0.4", "other\r\neth0"),
        ],
        None,
    );
    let released = h
        .release_addresses(
            "c",
            "eth0",
            &[ip("10.0.0.3"), ip("10.0.0.4"), ip("10.0.0.9")],
        )
        .expect("release");
    assert_eq!(
        released,
        vec![ip("10.0.0.3")],
        "10.0.0.4 belongs to another owner"
    );
    let left: Vec<IpAddr> = h.store().snapshot().files.keys().copied().collect();
    assert_eq!(left, vec![ip("10.0.0.2"), ip("10.0.0.4")]);
}
