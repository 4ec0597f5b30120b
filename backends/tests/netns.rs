//! NetNs: opening, identity, running closures inside, and netlink sockets bound to another ns.

mod common;

use std::io::ErrorKind;
use std::path::Path;

use backends::kernel::netlink::Netlink;
use backends::kernel::netns::NetNs;
use common::{in_new_netns, prerequisites};

fn link_names_in(ns: &NetNs) -> Vec<String> {
    ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let nl = Netlink::new().unwrap();
            let mut names: Vec<String> = nl
                .links()
                .await
                .unwrap()
                .into_iter()
                .map(|l| l.name)
                .collect();
            names.sort();
            names
        })
    })
    .unwrap()
}

#[test]
fn open_rejects_missing_and_non_netns_paths() {
    if !prerequisites(&[]) {
        return;
    }
    let e = NetNs::open(Path::new("/run/netns/does-not-exist-flannel-rs")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("does-not-exist-flannel-rs"), "{e}");

    let e = NetNs::open(Path::new("/proc/self/status")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let e = NetNs::open(Path::new("/proc/self/ns/uts")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("not a network namespace"), "{e}");

    let me = NetNs::open(Path::new("/proc/thread-self/ns/net")).unwrap();
    assert!(me.is_same_as_current().unwrap());
}

#[test]
fn run_sees_the_other_namespace() {
    if !prerequisites(&[]) {
        return;
    }
    in_new_netns(|| async {
        let here = NetNs::current().unwrap();
        assert!(here.is_same_as_current().unwrap());
        let nl = Netlink::new().unwrap();
        nl.ensure_bridge("nsbr0", None).await.unwrap();

        let other = NetNs::create_anonymous().unwrap();
        assert!(!other.is_same_as_current().unwrap());
        assert_eq!(link_names_in(&other), vec!["lo".to_string()]);
        assert!(
            other
                .run(|| NetNs::current().unwrap().is_same_as_current().unwrap())
                .unwrap()
        );
        let other2 = other.try_clone().unwrap();
        assert!(
            other
                .run(move || other2.is_same_as_current().unwrap())
                .unwrap()
        );
        assert!(
            !other
                .run(move || here.is_same_as_current().unwrap())
                .unwrap()
        );

        // The path of an anonymous namespace can be reopened and names the same namespace.
        let reopened = NetNs::open(other.path()).unwrap();
        let probe = other.try_clone().unwrap();
        assert!(
            reopened
                .run(move || probe.is_same_as_current().unwrap())
                .unwrap()
        );

        // Our namespace has the bridge, the other one does not.
        let names: Vec<String> = nl
            .links()
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert!(names.contains(&"nsbr0".to_string()), "{names:?}");

        // A panic inside run() reaches the caller.
        let caught = std::panic::catch_unwind(|| other.run(|| panic!("boom inside netns")));
        assert!(caught.is_err());
    });
}

#[test]
fn new_in_programs_the_other_namespace_from_here() {
    if !prerequisites(&[]) {
        return;
    }
    in_new_netns(|| async {
        let other = NetNs::create_anonymous().unwrap();
        let remote = Netlink::new_in(&other).unwrap();
        let br = remote.ensure_bridge("farbr0", Some(1400)).await.unwrap();
        assert_eq!(br.mtu, 1400);

        let local = Netlink::new().unwrap();
        assert!(
            local.link("farbr0").await.unwrap().is_none(),
            "bridge leaked into the caller's netns"
        );
        assert_eq!(
            link_names_in(&other),
            vec!["farbr0".to_string(), "lo".to_string()]
        );
        // This thread never left its namespace.
        assert!(!other.is_same_as_current().unwrap());

        // Each socket names the namespace it was made in, whichever thread asks.
        assert!(local.netns().unwrap().is_same_as_current().unwrap());
        let theirs = remote.netns().unwrap();
        assert!(!theirs.is_same_as_current().unwrap());
        let probe = other.try_clone().unwrap();
        assert!(
            theirs
                .run(move || probe.is_same_as_current().unwrap())
                .unwrap()
        );
        // After the last handle is gone the namespace handle still works (it holds its own
        // descriptor, not the socket's).
        drop(remote);
        let probe = other.try_clone().unwrap();
        assert!(
            theirs
                .run(move || probe.is_same_as_current().unwrap())
                .unwrap()
        );
    });
}

#[test]
fn netlink_outside_a_runtime_is_an_error() {
    let e = Netlink::new().unwrap_err();
    assert!(e.to_string().contains("tokio runtime"), "{e}");
}

#[test]
fn run_on_this_thread_enters_and_comes_back() {
    if !prerequisites(&[]) {
        return;
    }
    in_new_netns(|| async {
        let home = NetNs::current().unwrap();
        let other = NetNs::create_anonymous().unwrap();
        assert!(!other.is_same_as_current().unwrap());
        let inside = other
            .run_on_this_thread(&home, || other.is_same_as_current().unwrap())
            .unwrap();
        assert!(inside, "the closure runs inside the other namespace");
        assert!(
            home.is_same_as_current().unwrap(),
            "and the thread is back home"
        );
        // A netlink socket opened that way programs the other namespace.
        let nl = Netlink::new_in_here(&other, &home).unwrap();
        let names: Vec<String> = nl
            .links()
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(names, vec!["lo".to_string()]);
        assert!(home.is_same_as_current().unwrap());
    });
}
