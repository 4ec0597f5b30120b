//! sysctl isolation per namespace, and gratuitous ARP observed on the far end of a veth.

mod common;

use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;

use backends::kernel::netlink::{Netlink, VethSpec};
use backends::kernel::netns::NetNs;
use backends::kernel::{garp, sysctl};
use common::{in_new_netns, ip, prerequisites};

const FWD: &str = "net/ipv4/ip_forward";

#[test]
fn sysctl_in_a_child_namespace_leaves_the_root_alone() {
    if !prerequisites(&["cat"]) {
        return;
    }
    let root_before = sysctl::read(FWD).unwrap(); // read-only in the root namespace
    let target = if root_before == "1" { "0" } else { "1" };
    in_new_netns(move || async move {
        let initial = sysctl::read(FWD).unwrap();
        assert_eq!(sysctl::ensure(FWD, target).unwrap(), initial != target);
        assert_eq!(sysctl::read(FWD).unwrap(), target);
        assert!(
            !sysctl::ensure(FWD, target).unwrap(),
            "second ensure must not write"
        );
        // A child process of this thread sees the same namespace's value.
        let out = Command::new("cat")
            .arg(format!("/proc/sys/{FWD}"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), target);

        // Through NetNs::run into yet another namespace: this one is unaffected.
        let other = NetNs::create_anonymous().unwrap();
        let key = "net/ipv4/conf/lo/arp_notify";
        let mine = sysctl::read(key).unwrap();
        let theirs_target = if mine == "1" { "0" } else { "1" };
        other
            .run(move || sysctl::write(key, theirs_target))
            .unwrap()
            .unwrap();
        assert_eq!(
            other.run(move || sysctl::read(key)).unwrap().unwrap(),
            theirs_target
        );
        assert_eq!(sysctl::read(key).unwrap(), mine);

        // Errors name the key; bad keys never touch the filesystem.
        let e = sysctl::read("net/ipv4/conf/nosuchdev0/arp_notify").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("nosuchdev0"), "{e}");
        for bad in [
            "",
            "/net/ipv4/ip_forward",
            "net/../../etc/passwd",
            "net//ipv4",
        ] {
            assert_eq!(
                sysctl::read(bad).unwrap_err().kind(),
                ErrorKind::InvalidInput,
                "{bad:?}"
            );
            assert_eq!(
                sysctl::write(bad, "1").unwrap_err().kind(),
                ErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
    });
    assert_eq!(
        sysctl::read(FWD).unwrap(),
        root_before,
        "root namespace value changed"
    );
}

#[test]
fn a_knob_written_during_a_visit_lands_there_and_home_is_untouched() {
    if !prerequisites(&[]) {
        return;
    }
    in_new_netns(|| async {
        let home = NetNs::current().unwrap();
        let other = NetNs::create_anonymous().unwrap();
        let key = "net/ipv4/conf/lo/arp_notify";
        let mine = sysctl::read(key).unwrap();
        // What ADD does: write the pod's knob while visiting it on this very thread.
        for value in ["1", "0", "1"] {
            other
                .run_on_this_thread(&home, || sysctl::write(key, value))
                .unwrap()
                .unwrap();
            assert_eq!(
                other.run(move || sysctl::read(key)).unwrap().unwrap(),
                value
            );
            assert_eq!(sysctl::read(key).unwrap(), mine, "home is untouched");
        }
        let e = other
            .run_on_this_thread(&home, || {
                sysctl::write("net/ipv6/conf/nosuchdev0/accept_dad", "0")
            })
            .unwrap()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("nosuchdev0"), "{e}");
        assert_eq!(
            sysctl::write("net/../x", "0").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    });
}

/// An AF_PACKET socket receiving ARP frames on `ifindex` in the calling thread's namespace.
fn arp_listener(ifindex: u32) -> OwnedFd {
    let proto = i32::from(garp::ETH_P_ARP.to_be());
    // SAFETY: plain syscalls on a descriptor we own; results are checked.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            proto,
        );
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = garp::ETH_P_ARP.to_be();
        sll.sll_ifindex = ifindex as i32;
        let rc = libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 3,
            tv_usec: 0,
        };
        let rc = libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        assert_eq!(rc, 0);
        fd
    }
}

/// Receives one ARP payload and its packet type (`PACKET_BROADCAST`, ...); `None` on timeout.
fn recv_arp(fd: &OwnedFd) -> Option<(Vec<u8>, u8)> {
    let mut buf = [0u8; 256];
    // SAFETY: buffers are valid for the lengths passed.
    unsafe {
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        let n = libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            (&mut sll as *mut libc::sockaddr_ll).cast(),
            &mut len,
        );
        if n < 0 {
            return None;
        }
        Some((buf[..n as usize].to_vec(), sll.sll_pkttype))
    }
}

#[test]
fn gratuitous_arp_arrives_on_the_peer() {
    if !prerequisites(&["ip"]) {
        return;
    }
    in_new_netns(|| async {
        let pod_ns = NetNs::create_anonymous().unwrap();
        let host = Netlink::new().unwrap();
        let pod_mac = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05];
        let pod_ip = Ipv4Addr::new(10, 244, 1, 5);
        let spec = VethSpec {
            host_name: "garp0",
            peer_name: "eth0",
            mtu: None,
            master: None,
            host_up: true,
            peer_ns: &pod_ns,
            peer_mac: Some(pod_mac),
        };
        let hv = host.create_veth(&spec).await.unwrap();
        host.add_address(hv.index, "10.244.1.1/24".parse().unwrap())
            .await
            .unwrap();
        sysctl::write("net/ipv4/conf/garp0/arp_accept", "1").unwrap();
        let pod = Netlink::new_in(&pod_ns).unwrap();
        let eth0 = pod.link("eth0").await.unwrap().unwrap();
        pod.set_up(eth0.index).await.unwrap();

        let listener = arp_listener(hv.index);
        let index = eth0.index;
        pod_ns
            .run(move || garp::send_gratuitous_arp(index, pod_mac, pod_ip))
            .unwrap()
            .unwrap();

        let expected = garp::gratuitous_arp_payload(pod_mac, pod_ip);
        let mut seen = Vec::new();
        loop {
            let Some((payload, pkttype)) = recv_arp(&listener) else {
                panic!("no gratuitous ARP arrived; saw {seen:?}");
            };
            if payload.len() >= 28 && payload[..28] == expected[..] {
                assert_eq!(
                    pkttype,
                    libc::PACKET_BROADCAST,
                    "must be an Ethernet broadcast"
                );
                assert_eq!(&payload[6..8], &[0, 1], "ARP request");
                assert_eq!(&payload[8..14], &pod_mac);
                assert_eq!(&payload[14..18], &pod_ip.octets());
                assert_eq!(&payload[24..28], &pod_ip.octets());
                break;
            }
            seen.push(payload);
        }

        // With arp_accept the receiver learnt the sender's MAC from the announcement alone.
        let neigh = ip(&["neigh", "show", "dev", "garp0"]);
        assert!(
            neigh.contains("10.244.1.5 lladdr 0a:58:0a:f4:01:05"),
            "{neigh}"
        );

        // Sending on a missing interface fails with an error naming it.
        let e = pod_ns
            .run(move || garp::send_gratuitous_arp(987_654, pod_mac, pod_ip))
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("987654"), "{e}");
    });
}
