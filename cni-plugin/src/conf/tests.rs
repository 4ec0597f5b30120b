//! Netconf parsing and planning.

use super::*;
use ipam::subnet_env::SubnetEnv;
use ipnetwork::IpNetwork;
use std::net::IpAddr;

fn env() -> SubnetEnv {
    SubnetEnv::parse("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").unwrap()
}

fn conf(v: serde_json::Value) -> CniResult<NetConf> {
    NetConf::from_value(&v)
}

#[test]
fn stock_flannel_conflist_entry_gets_flannel_defaults() {
    let c = conf(
        serde_json::json!({"name":"cbr0","cniVersion":"0.3.1","type":"flannel",
        "delegate":{"hairpinMode":true,"isDefaultGateway":true}}),
    )
    .unwrap();
    let p = c.plan(&env(), &CniArgs::default()).unwrap();
    assert_eq!(p.bridge, "cbr0");
    assert_eq!(p.mtu, Some(1450));
    assert!(p.hairpin && p.is_gateway && p.is_default_gateway);
    assert!(
        !p.enable_dad,
        "DAD is off unless asked for, as with the reference"
    );
    assert!(
        !p.pod_ipv6_link_local,
        "IPv6 is off on IPv4-only pods unless asked for"
    );
    assert!(!p.ip_masq, "ipMasq is the inverse of FLANNEL_IPMASQ=true");
    assert_eq!(
        p.routes,
        vec![RouteEntry::new("10.244.0.0/16".parse().unwrap(), None)]
    );
    match &p.ipam {
        IpamPlan::HostLocal {
            data_dir,
            range_sets,
        } => {
            assert_eq!(data_dir, &PathBuf::from(DEFAULT_IPAM_DATA_DIR));
            assert_eq!(range_sets.len(), 1);
            assert_eq!(
                range_sets[0].ranges[0].subnet,
                "10.244.1.0/24".parse::<IpNetwork>().unwrap()
            );
            assert_eq!(
                range_sets[0].ranges[0].gateway,
                "10.244.1.1".parse::<IpAddr>().unwrap()
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(c.subnet_file(), PathBuf::from(DEFAULT_SUBNET_FILE));
}

#[test]
fn delegate_options_override_defaults() {
    let c = conf(serde_json::json!({"name":"n","cniVersion":"1.0.0","delegate":{"bridge":"br9","mtu":1400,
        "isGateway":false,"ipMasq":true,"forceAddress":true,"promiscMode":true,"enabledad":true,"podIPv6LinkLocal":true},
        "ipam":{"dataDir":"/tmp/x","routes":[{"dst":"192.0.2.0/24"}],
                "ranges":[[{"subnet":"10.244.1.0/24","rangeStart":"10.244.1.10","rangeEnd":"10.244.1.20"}]]}})).unwrap();
    let p = c.plan(&env(), &CniArgs::default()).unwrap();
    assert_eq!(p.bridge, "br9");
    assert_eq!(p.mtu, Some(1400));
    assert!(!p.is_gateway && p.ip_masq && p.force_address && p.promisc && p.enable_dad);
    assert!(p.pod_ipv6_link_local);
    assert_eq!(p.routes.len(), 2, "configured route + cluster network");
    let IpamPlan::HostLocal {
        data_dir,
        range_sets,
    } = &p.ipam
    else {
        panic!()
    };
    assert_eq!(data_dir, &PathBuf::from("/tmp/x"));
    assert_eq!(
        range_sets[0].ranges[0].start,
        "10.244.1.10".parse::<IpAddr>().unwrap()
    );
}

#[test]
fn dual_stack_subnet_env_gives_two_range_sets() {
    let e = SubnetEnv::parse("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n").unwrap();
    let c = conf(serde_json::json!({"name":"n","cniVersion":"1.0.0"})).unwrap();
    let p = c.plan(&e, &CniArgs::default()).unwrap();
    let IpamPlan::HostLocal { range_sets, .. } = &p.ipam else {
        panic!()
    };
    assert_eq!(range_sets.len(), 2);
    assert_eq!(p.routes.len(), 2);
    assert!(p.ip_masq);
}

#[test]
fn forbidden_and_bad_keys_are_code_7_naming_the_key() {
    for (v, needle) in [
        (
            serde_json::json!({"name":"n","delegate":{"name":"x"}}),
            "name",
        ),
        (
            serde_json::json!({"name":"n","delegate":{"ipam":{}}}),
            "ipam",
        ),
        (
            serde_json::json!({"name":"n","delegate":{"type":5}}),
            "delegate.type",
        ),
        (
            serde_json::json!({"name":"n","delegate":{"mtu":"big"}}),
            "delegate.mtu",
        ),
        (
            serde_json::json!({"name":"n","delegate":{"hairpinMode":true,"promiscMode":true}}),
            "promiscMode",
        ),
        (serde_json::json!({"name":"../../etc"}), "network name"),
        (serde_json::json!({"name":""}), "network name"),
        (
            serde_json::json!({"name":"n","ipam":{"routes":[{"dst":"nope"}]}}),
            "ipam.routes",
        ),
    ] {
        let e = conf(v.clone()).unwrap_err();
        assert_eq!(e.code, crate::error::INVALID_CONFIG, "{v}");
        assert!(e.msg.contains(needle), "{v}: {}", e.msg);
    }
    let e = conf(serde_json::json!({"name":"n","delegate":{"type":"ipvlan"}})).unwrap_err();
    assert_eq!(e.code, crate::error::UNSUPPORTED_FIELD);
}

#[test]
fn unknown_keys_are_ignored() {
    conf(serde_json::json!({"name":"n","whatever":{"x":1},"delegate":{"vlan":0,"foo":"bar"},"ipam":{"resolvConf":"/x"}})).unwrap();
}

#[test]
fn requested_ip_and_mac_sources_in_precedence_order() {
    let c = conf(serde_json::json!({"name":"n","runtimeConfig":{"ips":["10.244.1.7/24"],"mac":"02:00:00:00:00:07"},
        "args":{"cni":{"ips":["10.244.1.8"],"mac":"02:00:00:00:00:08"}}})).unwrap();
    let a = CniArgs::parse("IgnoreUnknown=1;IP=10.244.1.9;MAC=02:00:00:00:00:09").unwrap();
    let p = c.plan(&env(), &a).unwrap();
    assert_eq!(
        p.requested_ips,
        vec!["10.244.1.7".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(p.mac, Some([2, 0, 0, 0, 0, 7]));
    let c = conf(serde_json::json!({"name":"n"})).unwrap();
    let p = c.plan(&env(), &a).unwrap();
    assert_eq!(
        p.requested_ips,
        vec!["10.244.1.9".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(p.mac, Some([2, 0, 0, 0, 0, 9]));
    assert!(
        c.plan(&env(), &CniArgs::parse("IP=bogus").unwrap())
            .is_err()
    );
}

#[test]
fn delegated_ipam_keeps_user_keys() {
    let c = conf(serde_json::json!({"name":"n","ipam":{"type":"static","foo":1}})).unwrap();
    let p = c.plan(&env(), &CniArgs::default()).unwrap();
    let IpamPlan::Delegated { plugin, config } = &p.ipam else {
        panic!()
    };
    assert_eq!(plugin, "static");
    assert_eq!(config["foo"], 1);
    assert_eq!(config["ranges"][0][0]["subnet"], "10.244.1.0/24");
    assert_eq!(config["routes"][0]["dst"], "10.244.0.0/16");
}

#[test]
fn name_and_ifname_rules() {
    assert!(is_valid_network_name("cbr0"));
    assert!(is_valid_network_name("a.b-c_d"));
    for bad in ["", ".", "..", "-a", "a/b", "a b", "é"] {
        assert!(!is_valid_network_name(bad), "{bad:?}");
    }
    assert!(is_valid_ifname("eth0"));
    assert!(is_valid_ifname("a23456789012345"));
    for bad in [
        "",
        ".",
        "..",
        "a234567890123456",
        "a/b",
        "a:b",
        "a b",
        "a\tb",
    ] {
        assert!(!is_valid_ifname(bad), "{bad:?}");
    }
}

#[test]
fn cni_args_parsing() {
    let a = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.244.1.5").unwrap();
    assert_eq!(a.get("IP"), Some("10.244.1.5"));
    assert_eq!(a.get("K8S_POD_NAME"), Some("x"));
    assert_eq!(
        CniArgs::parse("novalue").unwrap_err().code,
        crate::error::INVALID_ENV
    );
    assert!(CniArgs::parse("").unwrap().0.is_empty());
}
