//! Property test: random allocate / release / GC sequences over a small /28, against the
//! disk store, compared step by step with a tiny model of the reference semantics
//! (round-robin after the cursor, skip the gateway, one address per (id, ifname)).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipam::host_local::{HostLocal, IpamError, RangeConfig, RangeSet, Reservation};
use proptest::prelude::*;

const IDS: usize = 8;
const IFNAMES: [&str; 2] = ["eth0", "net1"];

#[derive(Clone, Debug)]
enum Op {
    Allocate(usize, usize),
    Release(usize, usize),
    /// GC keeping only ids whose index has this parity.
    Gc(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..IDS, 0..IFNAMES.len()).prop_map(|(i, f)| Op::Allocate(i, f)),
        3 => (0..IDS, 0..IFNAMES.len()).prop_map(|(i, f)| Op::Release(i, f)),
        1 => (0..2usize).prop_map(Op::Gc),
    ]
}

fn host(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 244, 9, n))
}

fn id(i: usize) -> String {
    format!("container-{i}")
}

/// The reference allocator in a dozen lines: the /28 range is .1 ..= .14, gateway .1.
#[derive(Default)]
struct Model {
    owners: BTreeMap<IpAddr, (usize, usize)>,
    cursor: Option<IpAddr>,
}

impl Model {
    fn allocate(&mut self, i: usize, f: usize) -> Result<IpAddr, &'static str> {
        if self.owners.values().any(|o| *o == (i, f)) {
            return Err("duplicate");
        }
        let order: Vec<IpAddr> = (1..=14).map(host).collect();
        let start = match self.cursor.and_then(|c| order.iter().position(|a| *a == c)) {
            Some(p) => p + 1,
            None => 0,
        };
        for k in 0..order.len() {
            let cand = order[(start + k) % order.len()];
            if cand == host(1) || self.owners.contains_key(&cand) {
                continue;
            }
            self.owners.insert(cand, (i, f));
            self.cursor = Some(cand);
            return Ok(cand);
        }
        Err("exhausted")
    }

    fn reservations(&self) -> Vec<Reservation> {
        self.owners
            .iter()
            .map(|(ip, (i, f))| Reservation {
                ip: *ip,
                container_id: id(*i),
                ifname: Some(IFNAMES[*f].to_string()),
            })
            .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn allocator_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        let tmp = tempfile::tempdir().expect("tmp");
        let h = HostLocal::open(tmp.path(), "prop").expect("open");
        let set = RangeSet::from_config(&[RangeConfig::from_subnet(
            "10.244.9.0/28".parse().expect("net"),
        )])
        .expect("set");
        let sets = [set.clone()];
        let mut model = Model::default();

        for op in ops {
            match op {
                Op::Allocate(i, f) => {
                    let got = h.allocate(&id(i), IFNAMES[f], &sets, &[]);
                    match (model.allocate(i, f), got) {
                        (Ok(want), Ok(a)) => {
                            prop_assert_eq!(a.len(), 1);
                            prop_assert_eq!(a[0].address.ip(), want);
                            prop_assert_eq!(a[0].address.prefix(), 28);
                            prop_assert_eq!(a[0].gateway, host(1));
                        }
                        (Err("duplicate"), Err(IpamError::Duplicate { .. })) => {}
                        (Err("exhausted"), Err(IpamError::Exhausted { .. })) => {}
                        (want, got) => prop_assert!(false, "model {:?} vs {:?}", want, got),
                    }
                }
                Op::Release(i, f) => {
                    let want: Vec<IpAddr> = model
                        .owners
                        .iter()
                        .filter(|(_, o)| **o == (i, f))
                        .map(|(ip, _)| *ip)
                        .collect();
                    model.owners.retain(|_, o| *o != (i, f));
                    prop_assert_eq!(h.release(&id(i), IFNAMES[f]).expect("release"), want);
                }
                Op::Gc(parity) => {
                    let keep = |r: &Reservation| {
                        r.container_id
                            .rsplit('-')
                            .next()
                            .and_then(|n| n.parse::<usize>().ok())
                            .is_some_and(|n| n % 2 == parity)
                    };
                    let want: Vec<IpAddr> = model
                        .owners
                        .iter()
                        .filter(|(_, (i, _))| i % 2 != parity)
                        .map(|(ip, _)| *ip)
                        .collect();
                    model.owners.retain(|_, (i, _)| *i % 2 == parity);
                    let gone: Vec<IpAddr> =
                        h.gc(&keep).expect("gc").iter().map(|r| r.ip).collect();
                    prop_assert_eq!(gone, want);
                }
            }

            // Invariants after every step.
            let res = h.reservations().expect("reservations");
            prop_assert_eq!(&res, &model.reservations());
            let mut owners = BTreeSet::new();
            for r in &res {
                prop_assert!(r.ip != host(0) && r.ip != host(1) && r.ip != host(15));
                prop_assert!(owners.insert((r.container_id.clone(), r.ifname.clone())),
                    "two addresses for one owner");
            }
            // The directory holds exactly these files, with the reference's bytes.
            let mut names = BTreeSet::new();
            if h.dir().exists() {
                for e in std::fs::read_dir(h.dir()).expect("readdir") {
                    let name = e.expect("entry").file_name().to_string_lossy().into_owned();
                    if name != "lock" && name != "last_reserved_ip.0" {
                        names.insert(name);
                    }
                }
            }
            let want_names: BTreeSet<String> = res.iter().map(|r| r.ip.to_string()).collect();
            prop_assert_eq!(names, want_names);
            for r in &res {
                let bytes = std::fs::read(h.dir().join(r.ip.to_string())).expect("file");
                let want = format!("{}\r\n{}", r.container_id, r.ifname.as_deref().unwrap_or(""));
                prop_assert_eq!(bytes, want.into_bytes());
            }
            prop_assert_eq!(h.free_count(&set).expect("free"), 13 - res.len() as u128);
        }
    }
}
