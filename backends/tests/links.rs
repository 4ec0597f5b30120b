//! Links: bridges, veth pairs born in another namespace, bridge-port settings, deletion.

mod common;

use std::time::{Duration, Instant};

use backends::kernel::netlink::{Netlink, NetlinkError, VethSpec, del_link_detached};
use backends::kernel::netns::NetNs;
use backends::kernel::sysctl;
use common::{in_new_netns, ip, ip_in, prerequisites};

#[test]
fn bridge_create_is_idempotent_and_race_safe() {
    if !prerequisites(&["ip"]) {
        return;
    }
    in_new_netns(|| async {
        let nl = Netlink::new().unwrap();
        let br = nl.ensure_bridge("cni0", Some(1450)).await.unwrap();
        assert_eq!(br.name, "cni0");
        assert_eq!(br.kind.as_deref(), Some("bridge"));
        assert_eq!(br.mtu, 1450);
        assert!(br.admin_up);
        let shown = ip(&["-d", "link", "show", "cni0"]);
        assert!(shown.contains("mtu 1450"), "{shown}");
        assert!(shown.contains("\n    bridge "), "{shown}");
        assert!(shown.contains("<BROADCAST,MULTICAST,UP"), "{shown}");

        // The dump reports the IPv6 `accept_ra` knob as /proc/sys has it.
        let knob = "net/ipv6/conf/cni0/accept_ra";
        assert_eq!(
            br.ipv6_accept_ra,
            Some(sysctl::read(knob).unwrap().parse().unwrap())
        );
        sysctl::write(knob, "0").unwrap();
        assert_eq!(
            nl.link("cni0").await.unwrap().unwrap().ipv6_accept_ra,
            Some(0)
        );
        sysctl::write(knob, "2").unwrap();
        assert_eq!(
            nl.link("cni0").await.unwrap().unwrap().ipv6_accept_ra,
            Some(2)
        );

        // Again: same bridge, untouched MTU.
        let again = nl.ensure_bridge("cni0", Some(1500)).await.unwrap();
        assert_eq!(again.index, br.index);
        assert_eq!(again.mtu, 1450);

        // A bridge someone set down is brought back up.
        nl.set_down(br.index).await.unwrap();
        assert!(!nl.link_by_index(br.index).await.unwrap().unwrap().admin_up);
        assert!(nl.ensure_bridge("cni0", None).await.unwrap().admin_up);
        assert!(nl.link("cni0").await.unwrap().unwrap().admin_up);

        // Two concurrent creators: both look up (absent), both create, one gets EEXIST.
        let (a, b) = (nl.clone(), Netlink::new().unwrap());
        let (ra, rb) = tokio::join!(a.ensure_bridge("cbr1", None), b.ensure_bridge("cbr1", None));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!(ra.index, rb.index);
        assert!(ra.admin_up && rb.admin_up);
        let count = nl
            .links()
            .await
            .unwrap()
            .iter()
            .filter(|l| l.name == "cbr1")
            .count();
        assert_eq!(count, 1);

        // Bad names never reach the kernel.
        assert!(matches!(
            nl.ensure_bridge("much-too-long-name", None).await,
            Err(NetlinkError::Other(_))
        ));
    });
}

#[test]
fn ensure_bridge_refuses_a_non_bridge() {
    if !prerequisites(&[]) {
        return;
    }
    in_new_netns(|| async {
        let nl = Netlink::new().unwrap();
        let here = NetNs::current().unwrap();
        let spec = VethSpec {
            host_name: "notabr",
            peer_name: "notabr-p",
            mtu: None,
            master: None,
            host_up: false,
            peer_ns: &here,
            peer_mac: None,
        };
        nl.create_veth(&spec).await.unwrap();
        let err = nl.ensure_bridge("notabr", None).await.unwrap_err();
        assert!(matches!(err, NetlinkError::Other(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("notabr") && text.contains("veth"), "{text}");
    });
}

#[test]
fn veth_peer_is_born_in_the_pod_namespace() {
    if !prerequisites(&["ip"]) {
        return;
    }
    in_new_netns(|| async {
        let pod_ns = NetNs::create_anonymous().unwrap();
        let host = Netlink::new().unwrap();
        let br = host.ensure_bridge("cni0", Some(1400)).await.unwrap();
        let mac = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05];
        let spec = VethSpec {
            host_name: "veth1234abcd",
            peer_name: "eth0",
            mtu: Some(1400),
            master: Some(br.index),
            host_up: true,
            peer_ns: &pod_ns,
            peer_mac: Some(mac),
        };
        let t0 = Instant::now();
        let hv = host.create_veth(&spec).await.unwrap();
        let create_time = t0.elapsed();
        assert_eq!(hv.name, "veth1234abcd");
        assert_eq!(hv.kind.as_deref(), Some("veth"));
        assert_eq!(hv.mtu, 1400);
        assert_eq!(hv.master, Some(br.index));
        assert!(hv.admin_up);

        // The kernel's view agrees with the returned struct.
        let hv2 = host.link("veth1234abcd").await.unwrap().unwrap();
        assert_eq!(
            (hv2.index, hv2.master, hv2.mtu, hv2.admin_up),
            (hv.index, Some(br.index), 1400, true)
        );
        let shown = ip(&["-d", "link", "show", "veth1234abcd"]);
        assert!(
            shown.contains("master cni0") && shown.contains("mtu 1400"),
            "{shown}"
        );
        assert!(shown.contains("numtxqueues 1 numrxqueues 1"), "{shown}");
        let pod_shown = ip_in(&pod_ns, &["-d", "link", "show", "eth0"]);
        assert!(
            pod_shown.contains("numtxqueues 1 numrxqueues 1"),
            "{pod_shown}"
        );
        assert!(
            shown.contains("link-netns") || shown.contains("link-netnsid"),
            "{shown}"
        );
        assert!(
            host.link("eth0").await.unwrap().is_none(),
            "peer must never appear on the host"
        );

        // The pod end: name, MTU and MAC as asked, peered with the host end.
        let t1 = Instant::now();
        let pod = Netlink::new_in(&pod_ns).unwrap();
        let eth0 = pod.link("eth0").await.unwrap().expect("eth0 in the pod");
        let pod_time = t1.elapsed();
        assert_eq!(eth0.kind.as_deref(), Some("veth"));
        assert_eq!(eth0.mtu, 1400);
        assert_eq!(eth0.mac, Some(mac));
        assert!(!eth0.admin_up);
        assert_eq!(eth0.link, Some(hv.index));
        assert_eq!(hv2.link, Some(eth0.index));
        let in_pod = ip_in(&pod_ns, &["link", "show", "eth0"]);
        assert!(
            in_pod.contains("mtu 1400") && in_pod.contains("0a:58:0a:f4:01:05"),
            "{in_pod}"
        );
        eprintln!("create_veth: {create_time:?}; new_in + lookup: {pod_time:?}");

        // Once the pod end is up, the host end becomes operationally up.
        assert!(!host.link_by_index(hv.index).await.unwrap().unwrap().oper_up);
        pod.set_up(eth0.index).await.unwrap();
        let mut up = false;
        for _ in 0..200 {
            if host.link_by_index(hv.index).await.unwrap().unwrap().oper_up {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(up, "host veth never became oper up");

        // Same names again: EEXIST, reported as Exists.
        let again = host.create_veth(&spec).await.unwrap_err();
        assert!(matches!(again, NetlinkError::Exists(_)), "{again:?}");
        // Host name free but the peer name taken in the pod: still Exists, and nothing is left over.
        let spec2 = VethSpec {
            host_name: "veth-other",
            ..spec
        };
        assert!(matches!(
            host.create_veth(&spec2).await,
            Err(NetlinkError::Exists(_))
        ));
        assert!(host.link("veth-other").await.unwrap().is_none());

        // Deleting the host end takes the pod end with it; deleting again reports absence.
        assert!(host.del_link("veth1234abcd").await.unwrap());
        assert!(pod.link("eth0").await.unwrap().is_none());
        assert!(!host.del_link("veth1234abcd").await.unwrap());
        assert!(!host.del_link_index(987_654).await.unwrap());
        assert!(!host.del_link("no/such:name").await.unwrap());
    });
}

#[test]
fn detached_delete_returns_with_the_pair_gone_and_its_names_free() {
    if !prerequisites(&["ip"]) {
        return;
    }
    in_new_netns(|| async {
        let pod_ns = NetNs::create_anonymous().unwrap();
        let host = Netlink::new().unwrap();
        let pod = Netlink::new_in(&pod_ns).unwrap();
        let br = host.ensure_bridge("cni0", None).await.unwrap();
        let spec = VethSpec {
            host_name: "vethdd1",
            peer_name: "eth0",
            mtu: None,
            master: Some(br.index),
            host_up: true,
            peer_ns: &pod_ns,
            peer_mac: None,
        };
        let mut timings = Vec::new();
        for round in 0..3 {
            let hv = host.create_veth(&spec).await.unwrap();
            pod.set_up(hv.link.unwrap()).await.unwrap();
            pod.add_address(hv.link.unwrap(), "10.244.1.5/24".parse().unwrap())
                .await
                .unwrap();
            let t0 = Instant::now();
            assert!(del_link_detached("vethdd1").unwrap(), "round {round}");
            timings.push(t0.elapsed());
            // Observable state right away: both ends gone, no bridge port, names free.
            assert!(host.link("vethdd1").await.unwrap().is_none());
            assert!(pod.link("eth0").await.unwrap().is_none());
            let addrs = ip_in(&pod_ns, &["-4", "addr", "show"]);
            assert!(!addrs.contains("10.244.1.5"), "{addrs}");
            let ports = ip(&["-o", "link", "show", "master", "cni0"]);
            assert!(ports.trim().is_empty(), "{ports}");
        }
        // Absent and invalid names: false, like del_link.
        assert!(!del_link_detached("vethdd1").unwrap());
        assert!(!del_link_detached("no/such:name").unwrap());
        // For comparison, the synchronous delete of the same pair.
        let hv = host.create_veth(&spec).await.unwrap();
        pod.set_up(hv.link.unwrap()).await.unwrap();
        let t0 = Instant::now();
        assert!(host.del_link("vethdd1").await.unwrap());
        eprintln!(
            "detached delete: {timings:?}; ip link del: {:?}",
            t0.elapsed()
        );
    });
}

#[test]
fn hairpin_promisc_mac_mtu_read_back() {
    if !prerequisites(&["ip"]) {
        return;
    }
    in_new_netns(|| async {
        let nl = Netlink::new().unwrap();
        let here = NetNs::current().unwrap();
        let br = nl.ensure_bridge("cni0", None).await.unwrap();
        let spec = VethSpec {
            host_name: "vethhp",
            peer_name: "vethhp-p",
            mtu: None,
            master: Some(br.index),
            host_up: true,
            peer_ns: &here,
            peer_mac: None,
        };
        let v = nl.create_veth(&spec).await.unwrap();
        assert_eq!(nl.bridge_port_hairpin(v.index).await.unwrap(), Some(false));
        nl.set_hairpin(v.index, true).await.unwrap();
        assert_eq!(nl.bridge_port_hairpin(v.index).await.unwrap(), Some(true));
        let shown = ip(&["-d", "link", "show", "vethhp"]);
        assert!(shown.contains("hairpin on"), "{shown}");
        nl.set_hairpin(v.index, false).await.unwrap();
        assert!(ip(&["-d", "link", "show", "vethhp"]).contains("hairpin off"));
        // Not a bridge port: no hairpin to read, and setting it fails.
        let peer = nl.link("vethhp-p").await.unwrap().unwrap();
        assert_eq!(nl.bridge_port_hairpin(peer.index).await.unwrap(), None);
        assert!(nl.set_hairpin(peer.index, true).await.is_err());
        assert_eq!(nl.bridge_port_hairpin(987_654).await.unwrap(), None);

        nl.set_promisc(br.index, true).await.unwrap();
        assert!(nl.link_by_index(br.index).await.unwrap().unwrap().promisc);
        assert!(ip(&["link", "show", "cni0"]).contains("PROMISC"));
        nl.set_promisc(br.index, false).await.unwrap();
        assert!(!nl.link_by_index(br.index).await.unwrap().unwrap().promisc);

        let mac = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01];
        nl.set_mac(br.index, mac).await.unwrap();
        assert_eq!(nl.link("cni0").await.unwrap().unwrap().mac, Some(mac));
        assert!(ip(&["link", "show", "cni0"]).contains("0a:58:0a:f4:01:01"));

        nl.set_mtu(peer.index, 1300).await.unwrap();
        assert_eq!(
            nl.link_by_index(peer.index).await.unwrap().unwrap().mtu,
            1300
        );

        // Missing links: NotFound.
        assert!(matches!(
            nl.set_up(987_654).await,
            Err(NetlinkError::NotFound(_))
        ));
        assert!(nl.link("nonexistent0").await.unwrap().is_none());
        assert!(nl.link_by_index(987_654).await.unwrap().is_none());
    });
}
