//! Property test over the invocation parser: arbitrary env and stdin never panic, and
//! every rejection is one of the spec's error codes for bad input. Parsing has no side
//! effects, so this runs anywhere.

use cni_plugin::skel::{Parsed, parse};
use proptest::prelude::*;

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

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

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
