//! A node that ran flannel, switched to flannel-rs in place. Node 1 is set up as flannel
//! leaves it: flannel's subnet.env (subnet 10.244.77.0/24), bridge `cni0` holding the gateway
//! with a running pod attached by the reference `bridge` + `host-local` plugins (flannel's
//! delegate config), flannel's `FLANNEL-POSTRTG`/`FLANNEL-FWD` iptables chains and its
//! nftables-mode table. Then flanneld starts there:
//!
//! * it keeps the subnet, removes flannel's chains and table and says so in its log;
//! * the old pod stays reachable from a pod on another node;
//! * our plugin with the default conflist refuses to put the gateway on a second bridge and
//!   names the one-line conflist change, leaving no `cbr0` behind;
//! * with `"bridge": "cni0"` it attaches new pods next to the old one, with other addresses
//!   (the host-local files are shared), all reachable.

use std::path::Path;
use std::time::Duration;

use flannel_examples::cluster::{Backend, Cluster, ClusterSpec};

mod common;
use common::readme_block;

const OLD_SUBNET: &str = "10.244.77.0/24";

fn sh(c: &Cluster, i: usize, args: &[&str]) -> String {
    let out = c.node_exec(i, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_flannel_node_is_migrated_with_its_pod_reachable() {
    if !flannel_examples::cluster::prerequisites(
        "a_flannel_node_is_migrated_with_its_pod_reachable",
        &[
            "iptables-nft",
            "/usr/lib/cni/bridge",
            "/usr/lib/cni/host-local",
        ],
    ) {
        return;
    }
    let mut spec = ClusterSpec::new(2, Backend::Vxlan);
    spec.start_daemons = false;
    let mut c = Cluster::start(spec).unwrap_or_else(|e| panic!("cluster start: {e}"));

    // --- Node 1 as flannel left it.
    std::fs::write(
        c.nodes[0].subnet_file(),
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.77.1/24\nFLANNEL_MTU=1450\n\
         FLANNEL_IPMASQ=true\n",
    )
    .unwrap();
    let ours = c.cni_conf(0);
    let delegate = serde_json::json!({
        "cniVersion": "0.3.1", "name": "cbr0", "type": "bridge", "bridge": "cni0",
        "isGateway": true, "isDefaultGateway": true, "hairpinMode": true, "ipMasq": false,
        "mtu": 1450,
        "ipam": {"type": "host-local", "subnet": OLD_SUBNET,
                 "routes": [{"dst": "10.244.0.0/16"}], "dataDir": ours["ipam"]["dataDir"]},
    });
    let old_pod = c
        .add_pod_with(0, "old", &delegate, Path::new("/usr/lib/cni/bridge"))
        .expect("reference bridge ADD");
    for rule in [
        &["-t", "nat", "-N", "FLANNEL-POSTRTG"][..],
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-m",
            "comment",
            "--comment",
            "flanneld masq",
            "-j",
            "FLANNEL-POSTRTG",
        ],
        &[
            "-t",
            "nat",
            "-A",
            "FLANNEL-POSTRTG",
            "-s",
            "10.244.0.0/16",
            "!",
            "-d",
            "224.0.0.0/4",
            "-j",
            "MASQUERADE",
        ],
        &["-N", "FLANNEL-FWD"],
        &[
            "-A",
            "FORWARD",
            "-m",
            "comment",
            "--comment",
            "flanneld forward",
            "-j",
            "FLANNEL-FWD",
        ],
        &["-A", "FLANNEL-FWD", "-s", "10.244.0.0/16", "-j", "ACCEPT"],
    ] {
        let mut args = vec!["iptables-nft"];
        args.extend_from_slice(rule);
        sh(&c, 0, &args);
    }
    sh(
        &c,
        0,
        &[
            "nft",
            "add table ip flannel-ipv4; add chain ip flannel-ipv4 forward { type filter hook forward priority 0; }",
        ],
    );

    // --- flanneld takes over. Node 1 first: started together, node 2 (no subnet.env) picks
    // a random free subnet and can pick 10.244.77.0/24 before node 1 has leased it, after
    // which node 1 rightly takes another (the likely cause of one CI failure in which node
    // 1 ended up with 10.244.98.0/24).
    for i in 0..2 {
        c.start_flanneld(i).expect("start flanneld");
        c.wait_ready(i, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(c.node_subnet(0).as_deref(), Some(OLD_SUBNET));
    let rules = sh(&c, 0, &["iptables-nft-save"]);
    assert!(
        !rules.contains("FLANNEL-POSTRTG") && !rules.contains("FLANNEL-FWD"),
        "flannel's chains are still there:\n{rules}"
    );
    let log = c.flanneld_log(0);
    assert!(
        log.contains("iptables-nft nat FLANNEL-POSTRTG")
            && log.contains("iptables-nft filter FLANNEL-FWD")
            && log.contains("ip flannel-ipv4"),
        "the removals are not logged:\n{log}"
    );
    assert!(
        !c.node_exec(0, &["nft", "list", "table", "ip", "flannel-ipv4"])
            .status
            .success()
    );

    // The old pod is reachable from a pod on node 2.
    let far = c.add_pod(1, "far").expect("ADD on node 2");
    assert!(
        c.ping_within(&far, old_pod.ip, Duration::from_secs(5)),
        "the flannel-era pod {} is unreachable",
        old_pod.ip
    );

    // Our plugin with the stock conflist: a clear refusal, and no second bridge.
    let refused = c.add_pod(0, "new");
    let err = refused.expect_err("ADD must refuse a second bridge for the gateway");
    assert!(
        err.contains("already on bridge \\\"cni0\\\"") || err.contains("already on bridge"),
        "{err}"
    );
    assert!(
        err.contains("\\\"bridge\\\": \\\"cni0\\\"") || err.contains("cni0"),
        "{err}"
    );
    assert!(
        !c.node_exec(0, &["ip", "link", "show", "cbr0"])
            .status
            .success(),
        "a cbr0 was left behind"
    );

    // With the README's one-line change, run as written on a copy of the config, new pods
    // join cni0 beside the old one.
    let conflist = c.workdir().join("10-flannel.conf");
    std::fs::write(&conflist, c.cni_conf(0).to_string()).unwrap();
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &readme_block("migrate-conflist")])
        .env("CONFLIST", &conflist)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&conflist).unwrap()).unwrap();
    assert_eq!(conf["delegate"]["bridge"], "cni0", "{conf}");
    let bin = c.cni_binary().to_path_buf();
    let new_pod = c
        .add_pod_with(0, "new2", &conf, &bin)
        .expect("ADD with bridge cni0");
    assert_ne!(new_pod.ip, old_pod.ip);
    assert!(
        new_pod.ip.to_string().starts_with("10.244.77."),
        "{}",
        new_pod.ip
    );
    for dst in [old_pod.ip, new_pod.ip] {
        assert!(
            c.ping_within(&far, dst, Duration::from_secs(5)),
            "{dst} unreachable from node 2"
        );
    }
    assert!(c.ping_within(&new_pod, old_pod.ip, Duration::from_secs(5)));
}
