//! Cost of one CNI ADD's IPAM step on a busy node: with 100 reservations in the directory,
//! allocate + release must stay far below the ~1 ms ADD budget in release builds. The
//! assertion is generous (debug builds, a shared 2-core machine); the numbers are printed.

use std::time::{Duration, Instant};

use ipam::host_local::{HostLocal, RangeConfig, RangeSet};

#[test]
fn allocate_release_with_100_reservations_is_fast() {
    for existing in [0, 100] {
        let (a, r) = measure(existing);
        eprintln!("median allocate {a:?}, release {r:?} ({existing} reservations)");
        assert!(a < Duration::from_millis(5), "allocate median {a:?}");
        assert!(r < Duration::from_millis(5), "release median {r:?}");
    }
}

fn measure(existing: usize) -> (Duration, Duration) {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = HostLocal::open(tmp.path(), "cbr0").expect("open");
    let sets = [RangeSet::from_config(&[RangeConfig::from_subnet(
        "10.244.3.0/24".parse().expect("net"),
    )])
    .expect("set")];
    for i in 0..existing {
        h.allocate(&format!("{i:064x}"), "eth0", &sets, &[])
            .expect("fill");
    }
    let mut alloc = Vec::new();
    let mut rel = Vec::new();
    for i in 0..200 {
        let id = format!("pod-{i:060x}");
        let t = Instant::now();
        h.allocate(&id, "eth0", &sets, &[]).expect("allocate");
        alloc.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(h.release(&id, "eth0").expect("release").len(), 1);
        rel.push(t.elapsed());
    }
    alloc.sort();
    rel.sort();
    (alloc[alloc.len() / 2], rel[rel.len() / 2])
}
