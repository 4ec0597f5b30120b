//! Fuzzing the plugin's input and output surfaces with proptest: arbitrary env and stdin never
//! panic the invocation parser and every rejection is one of the spec's error codes for bad
//! input, as an error JSON; a parsed config planned against arbitrary subnet.env text never
//! panics either; and the result printer renders any result in every version in a form that
//! parses back. Parsing and planning have no side effects, so this runs anywhere.
//!
//! `FUZZ_CASES` sets the number of cases per property (default 2,000). The fuzzing run of
//! issue 18: `FUZZ_CASES=1000000 cargo test --release -p cni-plugin --test parse_props`.

use cni_plugin::skel::{Parsed, parse};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

const INPUT_ERROR_CODES: &[u32] = &[1, 2, 4, 5, 6, 7];

fn env_value() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some(String::new())),
        "[a-zA-Z0-9_.:/ -]{0,20}".prop_map(Some),
        any::<String>().prop_map(Some),
    ]
}

fn command() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(Some("ADD".to_string())),
        Just(Some("DEL".to_string())),
        Just(Some("CHECK".to_string())),
        Just(Some("GC".to_string())),
        Just(Some("STATUS".to_string())),
        Just(Some("VERSION".to_string())),
        env_value(),
    ]
}

/// JSON documents shaped like netconfs, with random values in random places.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        "[a-z0-9./:-]{0,12}".prop_map(serde_json::Value::String),
        prop_oneof![
            Just("0.3.1"),
            Just("1.0.0"),
            Just("1.1.0"),
            Just("10.244.1.0/24"),
            Just("cbr0"),
            Just("../x")
        ]
        .prop_map(|s| serde_json::Value::String(s.into())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("cniVersion".to_string()),
                    Just("name".to_string()),
                    Just("type".to_string()),
                    Just("delegate".to_string()),
                    Just("ipam".to_string()),
                    Just("ranges".to_string()),
                    Just("routes".to_string()),
                    Just("mtu".to_string()),
                    Just("hairpinMode".to_string()),
                    Just("runtimeConfig".to_string()),
                    Just("prevResult".to_string()),
                    Just("subnetFile".to_string()),
                    "[a-zA-Z]{1,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn stdin_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        json_value().prop_map(|v| v.to_string().into_bytes()),
        json_value().prop_map(|mut v| {
            if let Some(o) = v.as_object_mut() {
                o.insert("cniVersion".into(), "1.1.0".into());
                o.insert("name".into(), "cbr0".into());
            }
            v.to_string().into_bytes()
        }),
        prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// subnet.env-shaped text with random values, and random bytes.
fn subnet_env_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        "FLANNEL_NETWORK=[0-9./]{0,18}",
        "FLANNEL_SUBNET=[0-9./]{0,18}",
        "FLANNEL_MTU=[0-9-]{0,6}",
        "FLANNEL_IPMASQ=(true|false|[a-z]{0,5})",
        "FLANNEL_IPV6_NETWORK=[0-9a-f:/]{0,20}",
        "FLANNEL_IPV6_SUBNET=[0-9a-f:/]{0,20}",
        Just("FLANNEL_NETWORK=10.244.0.0/16".to_string()),
        Just("FLANNEL_SUBNET=10.244.1.1/24".to_string()),
        Just("FLANNEL_MTU=1450".to_string()),
        any::<String>(),
    ];
    prop::collection::vec(line, 0..7).prop_map(|l| l.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn planning_any_subnet_env_never_panics(
        delegate in json_value(), ipam in json_value(), runtime in json_value(),
        env_text in subnet_env_text(), args in "[A-Za-z0-9=;_.-]{0,40}",
    ) {
        // A valid skeleton with random delegate, ipam and runtimeConfig sections, so that most
        // cases reach the planner.
        let stdin = serde_json::json!({
            "cniVersion": "1.0.0", "name": "cbr0", "type": "flannel",
            "delegate": delegate, "ipam": ipam, "runtimeConfig": runtime,
        })
        .to_string()
        .into_bytes();
        let vars = [
            ("CNI_COMMAND", Some("ADD".to_string())),
            ("CNI_CONTAINERID", Some("fuzz".to_string())),
            ("CNI_NETNS", Some("/run/netns/fuzz".to_string())),
            ("CNI_IFNAME", Some("eth0".to_string())),
            ("CNI_PATH", Some("/usr/lib/cni".to_string())),
        ];
        let env = |k: &str| vars.iter().find(|(n, _)| *n == k).and_then(|(_, v)| v.clone());
        let mut version = String::new();
        if let Ok(Parsed::Invocation(inv)) = parse(&env, &mut stdin.as_slice(), &mut version)
            && let Ok(subnet_env) = ipam::subnet_env::SubnetEnv::parse(&env_text)
            && let Ok(cni_args) = cni_plugin::conf::CniArgs::parse(&args)
            && let Err(e) = inv.conf.plan(&subnet_env, &cni_args)
        {
            prop_assert!(!e.msg.is_empty());
            let j: serde_json::Value = serde_json::from_str(&e.to_json("1.0.0")).unwrap();
            prop_assert_eq!(j["code"].as_u64(), Some(e.code as u64));
        }
    }

    #[test]
    fn results_render_in_every_version_and_parse_back(
        v4 in prop::collection::vec((any::<[u8; 4]>(), 0u8..=32), 0..3),
        v6 in prop::collection::vec((any::<[u8; 16]>(), 0u8..=128), 0..2),
        mac in any::<[u8; 6]>(),
        name in "[a-z0-9]{1,15}",
    ) {
        let mut ips: Vec<serde_json::Value> = Vec::new();
        for (a, p) in &v4 {
            ips.push(serde_json::json!({"address": format!("{}/{p}", std::net::Ipv4Addr::from(*a)), "interface": 0}));
        }
        for (a, p) in &v6 {
            ips.push(serde_json::json!({"address": format!("{}/{p}", std::net::Ipv6Addr::from(*a)), "interface": 0}));
        }
        let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        let doc = serde_json::json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": name, "mac": mac, "sandbox": "/run/netns/x"}],
            "ips": ips,
            "routes": [{"dst": "0.0.0.0/0"}],
        });
        let out = cni_plugin::result::CniOutput::parse(&doc).map_err(TestCaseError::fail)?;
        for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            let spec = cni_plugin::version::SpecVersion::parse(version).unwrap();
            let rendered = out.render(version, spec);
            prop_assert_eq!(rendered["cniVersion"].as_str(), Some(version));
            let back = cni_plugin::result::CniOutput::parse(&rendered).map_err(TestCaseError::fail)?;
            prop_assert_eq!(back.ips.len(), out.ips.len());
        }
    }

    #[test]
    fn parse_never_panics_and_rejects_with_spec_codes(
        cmd in command(),
        cid in env_value(),
        netns in env_value(),
        ifname in env_value(),
        path in env_value(),
        args in env_value(),
        stdin in stdin_bytes(),
    ) {
        let vars = [
            ("CNI_COMMAND", cmd), ("CNI_CONTAINERID", cid), ("CNI_NETNS", netns),
            ("CNI_IFNAME", ifname), ("CNI_PATH", path), ("CNI_ARGS", args),
        ];
        let env = |k: &str| vars.iter().find(|(n, _)| *n == k).and_then(|(_, v)| v.clone());
        let mut version = String::new();
        match parse(&env, &mut stdin.as_slice(), &mut version) {
            Ok(Parsed::Version(reply)) => {
                let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
                prop_assert!(v["supportedVersions"].is_array());
            }
            Ok(Parsed::Invocation(inv)) => {
                // Anything accepted has a valid id / ifname for the verbs that need them.
                if matches!(inv.command, cni_plugin::skel::Command::Add | cni_plugin::skel::Command::Del | cni_plugin::skel::Command::Check) {
                    prop_assert!(cni_plugin::conf::is_valid_network_name(&inv.container_id));
                    prop_assert!(cni_plugin::conf::is_valid_ifname(&inv.ifname));
                }
                prop_assert!(cni_plugin::conf::is_valid_network_name(inv.conf.network_name()));
            }
            Err(e) => {
                prop_assert!(INPUT_ERROR_CODES.contains(&e.code), "unexpected code {} ({})", e.code, e.msg);
                prop_assert!(!e.msg.is_empty());
                let j: serde_json::Value = serde_json::from_str(&e.to_json("1.0.0")).unwrap();
                prop_assert_eq!(j["code"].as_u64(), Some(e.code as u64));
            }
        }
    }
}
