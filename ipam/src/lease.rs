//! # lease — a node's claim on a subnet, as flannel stores it
//!
//! In etcd mode every node owns one key `<prefix>/subnets/<subnet>` whose value describes how
//! to reach the pods behind that subnet. Both halves are a wire format shared with the Go
//! flanneld, so a mixed cluster (or a node switching implementations) must read and write them
//! byte for byte:
//!
//! * the **key** is the subnet with `/` replaced by `-` — `10.244.1.0-24` — and, for dual
//!   stack, `&` plus the IPv6 subnet — `10.244.1.0-24&fc00::-64` ([`subnet_key`],
//!   [`parse_subnet_key`]);
//! * the **value** is the JSON of Go's `LeaseAttrs` struct ([`LeaseAttrs`]): `PublicIP` always,
//!   `PublicIPv6` always (`null` when absent), then `BackendType`, `BackendData` and
//!   `BackendV6Data` only when non-empty, in that order, with no whitespace. Go's
//!   `encoding/json` matches object keys case-insensitively when decoding, so we do too.
//!
//! A [`Lease`] is that key/value pair plus what the store knows about its lifetime. Keys
//! written without an etcd lease are *reservations* (an operator pinned the subnet to a node):
//! [`Lease::leased`] is false for them and nothing in this workspace ever attaches a TTL to
//! them — unlike Go flanneld under etcd v3 (flannel issue #1329).
//!
//! [`LeaseWatcher`] is the pure half of watching other nodes: it remembers the leases it has
//! seen and turns either a full snapshot (after a start or a compaction) or a batch of
//! incremental events into [`LeaseEvent`] diffs for the backend, never mentioning the node's
//! own subnet. Unlike flannel's `LeaseWatcher.Reset`, a snapshot re-emits `Added` for a subnet
//! whose attributes changed (a new VTEP MAC, a new public IP), so peers' kernel state follows.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::SystemTime;

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::de::{self, Deserializer};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Errors from parsing lease keys and values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseError {
    /// A subnet key did not have the form `a.b.c.d-len[&v6addr-len]`.
    #[error("invalid subnet key {key:?}: {reason}")]
    InvalidKey {
        /// The offending key (last path component).
        key: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A lease value was not valid `LeaseAttrs` JSON.
    #[error("invalid lease value: field {field}: {reason}")]
    InvalidValue {
        /// The JSON field that was wrong (`PublicIP`, `BackendData`, ... or `<value>`).
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },
}

/// Identity of a lease: its IPv4 subnet and, in dual-stack networks, its IPv6 subnet.
///
/// This is exactly what the etcd key encodes.
pub type SubnetId = (Ipv4Network, Option<Ipv6Network>);

/// The value stored under a subnet key: how other nodes reach this node's pods.
///
/// Serialization is byte-compatible with Go flannel's `lease.LeaseAttrs`:
/// `{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:00"}}`.
/// `BackendData` is re-serialized by serde_json, whose maps are ordered by key; that matches
/// Go's field order for every backend flannel-rs ships (vxlan's `VNI` < `VtepMAC`).
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseAttrs {
    /// The node's public (underlay) IPv4 address: VXLAN remote / host-gw next hop.
    pub public_ip: Ipv4Addr,
    /// The node's public IPv6 address in dual-stack networks.
    pub public_ipv6: Option<Ipv6Addr>,
    /// Backend type string (`vxlan`, `host-gw`, ...); empty for flannel's udp backend.
    pub backend_type: String,
    /// Backend specific data (vxlan: `{"VNI":1,"VtepMAC":".."}`), if any.
    pub backend_data: Option<BackendData>,
    /// Backend specific data for the IPv6 side, if any.
    pub backend_v6_data: Option<BackendData>,
}

/// A lease's `BackendData` (or `BackendV6Data`): any JSON value, kept as its compact text
/// (object keys sorted, as serde_json writes maps) and shared by every clone. A node holds
/// one per peer lease, and the watcher, the events and each overlay's peer list all refer to
/// it: 10,000 vxlan leases cost ~0.6 MB this way, where parsed maps (a B-tree node of eleven
/// slots each) cost ~7 MB per copy.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BackendData(Arc<str>);

impl BackendData {
    /// The data as a JSON value (parsed on each call).
    pub fn value(&self) -> Value {
        // The text was written by serde_json from a Value, so it parses back.
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }

    /// The member `key` of a JSON object (exact match), if the data is one and has it.
    pub fn get(&self, key: &str) -> Option<Value> {
        match self.value() {
            Value::Object(mut map) => map.remove(key),
            _ => None,
        }
    }

    /// The compact JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<Value> for BackendData {
    fn from(value: Value) -> Self {
        BackendData::from(&value)
    }
}

impl From<&Value> for BackendData {
    fn from(value: &Value) -> Self {
        BackendData(Arc::from(value.to_string()))
    }
}

impl PartialEq<Value> for BackendData {
    fn eq(&self, other: &Value) -> bool {
        self.value() == *other
    }
}

impl fmt::Debug for BackendData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for BackendData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for BackendData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value().serialize(serializer)
    }
}

impl LeaseAttrs {
    /// Attributes with only a public IPv4 address and a backend type.
    pub fn new(public_ip: Ipv4Addr, backend_type: impl Into<String>) -> Self {
        Self {
            public_ip,
            public_ipv6: None,
            backend_type: backend_type.into(),
            backend_data: None,
            backend_v6_data: None,
        }
    }

    /// Renders the etcd value: compact JSON, byte-compatible with Go flannel.
    pub fn to_json(&self) -> String {
        // Serializing plain strings and serde_json::Values into a String cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    /// Parses an etcd value, matching keys case-insensitively like Go's `encoding/json`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, LeaseError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| LeaseError::InvalidValue {
            field: "<value>",
            reason: e.to_string(),
        })?;
        Self::from_value(&value)
    }

    fn from_value(value: &Value) -> Result<Self, LeaseError> {
        let Value::Object(map) = value else {
            return Err(LeaseError::InvalidValue {
                field: "<value>",
                reason: "not a JSON object".into(),
            });
        };
        let get = |name: &str| lookup_ci(map, name);
        let public_ip = match get("PublicIP") {
            Some(Value::String(s)) => s.parse().map_err(|e| LeaseError::InvalidValue {
                field: "PublicIP",
                reason: format!("{s:?}: {e}"),
            })?,
            Some(other) => {
                return Err(LeaseError::InvalidValue {
                    field: "PublicIP",
                    reason: format!("expected a string, got {other}"),
                });
            }
            None => {
                return Err(LeaseError::InvalidValue {
                    field: "PublicIP",
                    reason: "missing".into(),
                });
            }
        };
        let public_ipv6 = match get("PublicIPv6") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.parse().map_err(|e| LeaseError::InvalidValue {
                field: "PublicIPv6",
                reason: format!("{s:?}: {e}"),
            })?),
            Some(other) => {
                return Err(LeaseError::InvalidValue {
                    field: "PublicIPv6",
                    reason: format!("expected a string or null, got {other}"),
                });
            }
        };
        let backend_type = match get("BackendType") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(LeaseError::InvalidValue {
                    field: "BackendType",
                    reason: format!("expected a string, got {other}"),
                });
            }
        };
        let raw = |name: &str| match get(name) {
            None | Some(Value::Null) => None,
            Some(v) => Some(BackendData::from(v)),
        };
        Ok(Self {
            public_ip,
            public_ipv6,
            backend_type,
            backend_data: raw("BackendData"),
            backend_v6_data: raw("BackendV6Data"),
        })
    }
}

/// Looks a key up the way Go's `encoding/json` does: an exact match wins, otherwise the first
/// ASCII case-insensitive match.
pub fn lookup_ci<'a>(map: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.get(name).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

impl Serialize for LeaseAttrs {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("PublicIP", &self.public_ip.to_string())?;
        map.serialize_entry("PublicIPv6", &self.public_ipv6.map(|ip| ip.to_string()))?;
        if !self.backend_type.is_empty() {
            map.serialize_entry("BackendType", &self.backend_type)?;
        }
        if let Some(data) = &self.backend_data {
            map.serialize_entry("BackendData", data)?;
        }
        if let Some(data) = &self.backend_v6_data {
            map.serialize_entry("BackendV6Data", data)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for LeaseAttrs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Self::from_value(&value).map_err(de::Error::custom)
    }
}

/// One subnet key with its attributes and what the store knows about its lifetime.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// The node's IPv4 pod subnet (e.g. `10.244.1.0/24`); in IPv6-only networks flannel's
    /// empty subnet `0.0.0.0/0` ([`NO_IPV4_SUBNET`], see [`Lease::ipv4_subnet`]).
    pub subnet: Ipv4Network,
    /// The node's IPv6 pod subnet in dual-stack networks.
    pub ipv6_subnet: Option<Ipv6Network>,
    /// The value: public address and backend data.
    pub attrs: LeaseAttrs,
    /// `true` when the key is attached to a store TTL lease (an etcd lease); `false` for a
    /// *reservation*, a key an operator wrote without a lease, which never expires.
    pub leased: bool,
    /// The store's handle of the TTL lease (the etcd lease ID) when `leased`.
    pub lease_id: Option<i64>,
    /// When the key expires, if known. Only leases this node granted or renewed carry it:
    /// listing other nodes' leases deliberately costs no per-key TTL lookup.
    pub expiration: Option<SystemTime>,
}

impl Lease {
    /// A lease value not (yet) bound to a store TTL lease.
    pub fn new(subnet: Ipv4Network, ipv6_subnet: Option<Ipv6Network>, attrs: LeaseAttrs) -> Self {
        Self {
            subnet,
            ipv6_subnet,
            attrs,
            leased: false,
            lease_id: None,
            expiration: None,
        }
    }

    /// The IPv4 subnet, `None` for an IPv6-only lease.
    pub fn ipv4_subnet(&self) -> Option<Ipv4Network> {
        (self.subnet.prefix() > 0).then_some(self.subnet)
    }

    /// The key's identity: `(subnet, ipv6_subnet)`.
    pub fn id(&self) -> SubnetId {
        (self.subnet, self.ipv6_subnet)
    }

    /// The key's last path component, e.g. `10.244.1.0-24` (see [`subnet_key`]).
    pub fn key(&self) -> String {
        subnet_key(&self.subnet, self.ipv6_subnet.as_ref())
    }
}

/// The IPv4 half of an IPv6-only lease: Go's zero `ip.IP4Net`, which flannel writes into the
/// key as `0.0.0.0-0` (`0.0.0.0-0&fd00:10:244:1::-64`) and into `PublicIP` as `"0.0.0.0"`.
pub const NO_IPV4_SUBNET: Ipv4Network = match Ipv4Network::new_checked(Ipv4Addr::UNSPECIFIED, 0) {
    Some(n) => n,
    None => panic!("0.0.0.0/0 is a valid network"),
};

/// Formats the last component of a subnet key: `10.244.1.0-24` or `10.244.1.0-24&fc00::-64`
/// (Go `MakeSubnetKey`).
pub fn subnet_key(subnet: &Ipv4Network, ipv6_subnet: Option<&Ipv6Network>) -> String {
    let mut key = format!("{}-{}", subnet.ip(), subnet.prefix());
    if let Some(v6) = ipv6_subnet {
        key.push_str(&format!("&{}-{}", v6.ip(), v6.prefix()));
    }
    key
}

/// Parses the last component of a subnet key (Go `ParseSubnetKey`).
///
/// A full etcd path is accepted too: everything up to the last `/` is ignored. The address is
/// kept as written (a key with host bits set still names the subnet it overlaps).
pub fn parse_subnet_key(key: &str) -> Result<SubnetId, LeaseError> {
    let base = key.rsplit('/').next().unwrap_or(key);
    let bad = |reason: &str| LeaseError::InvalidKey {
        key: base.to_string(),
        reason: reason.to_string(),
    };
    let (v4, v6) = match base.split_once('&') {
        Some((a, b)) => (a, Some(b)),
        None => (base, None),
    };
    let (addr, len) = v4
        .rsplit_once('-')
        .ok_or_else(|| bad("missing '-<prefix length>'"))?;
    if addr.split('.').count() != 4 {
        return Err(bad("IPv4 part is not a dotted quad"));
    }
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad("bad IPv4 address"))?;
    let len: u8 = parse_len(len).ok_or_else(|| bad("bad IPv4 prefix length"))?;
    let subnet = Ipv4Network::new(addr, len).map_err(|_| bad("IPv4 prefix length > 32"))?;
    let ipv6_subnet = match v6 {
        None => None,
        Some(v6) => {
            let (addr, len) = v6
                .rsplit_once('-')
                .ok_or_else(|| bad("missing '-<prefix length>' after the IPv6 address"))?;
            if addr.is_empty()
                || !addr
                    .chars()
                    .all(|c| c.is_ascii_digit() || matches!(c, 'a'..='f' | ':'))
            {
                return Err(bad("IPv6 part must be lower-case hex and ':'"));
            }
            let addr: Ipv6Addr = addr.parse().map_err(|_| bad("bad IPv6 address"))?;
            let len = parse_len(len).ok_or_else(|| bad("bad IPv6 prefix length"))?;
            Some(Ipv6Network::new(addr, len).map_err(|_| bad("IPv6 prefix length > 128"))?)
        }
    };
    Ok((subnet, ipv6_subnet))
}

fn parse_len(s: &str) -> Option<u8> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A change to the set of *other* nodes' leases, as consumed by the backends.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseEvent {
    /// A subnet appeared, or its attributes changed: (re)program the route to it.
    Added(Lease),
    /// A subnet disappeared: remove the route to it. Carries the last known attributes.
    Removed(Lease),
}

impl LeaseEvent {
    /// The lease the event is about.
    pub fn lease(&self) -> &Lease {
        match self {
            LeaseEvent::Added(l) | LeaseEvent::Removed(l) => l,
        }
    }
}

impl fmt::Display for LeaseEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseEvent::Added(l) => write!(f, "added {} ({})", l.key(), l.attrs.public_ip),
            LeaseEvent::Removed(l) => write!(f, "removed {} ({})", l.key(), l.attrs.public_ip),
        }
    }
}

/// Turns snapshots and incremental events into diffs of other nodes' leases.
///
/// Pure state machine: the caller feeds it whatever the store produced and forwards the
/// returned events to the backend. The node's own subnet is never reported; it is compared
/// by IPv4 subnet as flannel does, or by IPv6 subnet in an IPv6-only network ([`same_node`]).
#[derive(Debug, Default, Clone)]
pub struct LeaseWatcher {
    own: Option<SubnetId>,
    leases: BTreeMap<SubnetId, Lease>,
}

/// Whether two lease identities name the same node's subnet: equal IPv4 subnets, or, for
/// IPv6-only leases (whose IPv4 half is flannel's empty `0.0.0.0/0`), equal IPv6 subnets.
pub fn same_node(a: &SubnetId, b: &SubnetId) -> bool {
    if a.0.prefix() > 0 || b.0.prefix() > 0 {
        a.0 == b.0
    } else {
        a.1 == b.1
    }
}

impl LeaseWatcher {
    /// A watcher that knows no leases yet and filters out `own`.
    pub fn new(own: Option<SubnetId>) -> Self {
        Self {
            own,
            leases: BTreeMap::new(),
        }
    }

    /// The subnet currently filtered out as the node's own.
    pub fn own(&self) -> Option<SubnetId> {
        self.own
    }

    /// Changes the node's own subnet (after a re-acquire). If the new own subnet was known as
    /// a peer, it is forgotten and reported `Removed`, so no route to ourselves lingers.
    pub fn set_own(&mut self, own: Option<SubnetId>) -> Vec<LeaseEvent> {
        self.own = own;
        let Some(own) = own else { return Vec::new() };
        let gone: Vec<SubnetId> = self
            .leases
            .keys()
            .filter(|id| same_node(id, &own))
            .copied()
            .collect();
        gone.into_iter()
            .filter_map(|id| self.leases.remove(&id))
            .map(LeaseEvent::Removed)
            .collect()
    }

    /// The leases currently known (never the own one), ordered by subnet.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// The known lease with this identity, if any.
    pub fn get(&self, id: &SubnetId) -> Option<&Lease> {
        self.leases.get(id)
    }

    fn is_own(&self, lease: &Lease) -> bool {
        self.own.is_some_and(|own| same_node(&own, &lease.id()))
    }

    /// Replaces the known state with a full snapshot and returns the difference:
    /// `Removed` for subnets that vanished, `Added` for new subnets **and** for known subnets
    /// whose attributes changed. Removals come first.
    pub fn reset(&mut self, snapshot: &[Lease]) -> Vec<LeaseEvent> {
        let mut next: BTreeMap<SubnetId, Lease> = BTreeMap::new();
        for lease in snapshot.iter().filter(|l| !self.is_own(l)) {
            next.insert(lease.id(), lease.clone());
        }
        let mut events = Vec::new();
        for (id, old) in &self.leases {
            if !next.contains_key(id) {
                events.push(LeaseEvent::Removed(old.clone()));
            }
        }
        for (id, new) in &next {
            match self.leases.get(id) {
                Some(old) if old.attrs == new.attrs => {}
                _ => events.push(LeaseEvent::Added(new.clone())),
            }
        }
        self.leases = next;
        events
    }

    /// Applies incremental events and returns what the backend must do.
    ///
    /// `Added` for a known subnet with unchanged attributes (a renewal) only refreshes the
    /// stored lease and is not re-emitted. `Removed` reports the last attributes known for the
    /// subnet, falling back to the event's own lease when the subnet was unknown.
    pub fn update(&mut self, events: &[LeaseEvent]) -> Vec<LeaseEvent> {
        let mut out = Vec::new();
        for event in events {
            let lease = event.lease();
            if self.is_own(lease) {
                continue;
            }
            match event {
                LeaseEvent::Added(lease) => {
                    let changed = self
                        .leases
                        .get(&lease.id())
                        .is_none_or(|old| old.attrs != lease.attrs);
                    self.leases.insert(lease.id(), lease.clone());
                    if changed {
                        out.push(LeaseEvent::Added(lease.clone()));
                    }
                }
                LeaseEvent::Removed(lease) => {
                    let known = self.leases.remove(&lease.id());
                    out.push(LeaseEvent::Removed(known.unwrap_or_else(|| lease.clone())));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn net4(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn lease(subnet: &str, ip: &str) -> Lease {
        Lease::new(
            net4(subnet),
            None,
            LeaseAttrs::new(ip.parse().unwrap(), "vxlan"),
        )
    }

    #[test]
    fn attrs_json_matches_flannel_documented_example() {
        // Documentation/reservations.md in flannel-io/flannel.
        let doc = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
        let attrs = LeaseAttrs::from_json(doc.as_bytes()).unwrap();
        assert_eq!(attrs.public_ip, Ipv4Addr::new(192, 168, 64, 3));
        assert_eq!(attrs.public_ipv6, None);
        assert_eq!(attrs.backend_type, "vxlan");
        assert_eq!(
            attrs.backend_data.as_ref().map(|d| d.value()),
            Some(json!({"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"}))
        );
        assert_eq!(attrs.to_json(), doc);
    }

    #[test]
    fn attrs_json_built_from_parts_is_byte_exact() {
        let mut attrs = LeaseAttrs::new(Ipv4Addr::new(198, 18, 0, 1), "vxlan");
        // Insert VtepMAC first: the output order must not depend on insertion order.
        let mut data = serde_json::Map::new();
        data.insert("VtepMAC".into(), json!("0a:58:0a:f4:01:00"));
        data.insert("VNI".into(), json!(1));
        attrs.backend_data = Some(Value::Object(data).into());
        assert_eq!(
            attrs.to_json(),
            r#"{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:00"}}"#
        );
    }

    /// The dual-stack and IPv6-only values flannel's vxlan backend writes (`newSubnetAttrs`:
    /// `PublicIP` is Go's zero `ip.IP4` in an IPv6-only network, `BackendData` only with an
    /// IPv4 device), and the fuzz seed of `pkg/subnet/etcd/fuzz_test.go`.
    #[test]
    fn dual_stack_and_ipv6_only_values_are_flannels_bytes() {
        let mut dual = LeaseAttrs::new(Ipv4Addr::new(192, 168, 1, 10), "vxlan");
        dual.public_ipv6 = Some("fd00::10".parse().unwrap());
        dual.backend_data = Some(json!({"VNI": 1, "VtepMAC": "aa:aa:aa:aa:aa:aa"}).into());
        dual.backend_v6_data = Some(json!({"VNI": 1, "VtepMAC": "bb:bb:bb:bb:bb:bb"}).into());
        assert_eq!(
            dual.to_json(),
            r#"{"PublicIP":"192.168.1.10","PublicIPv6":"fd00::10","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:aa:aa:aa:aa:aa"},"BackendV6Data":{"VNI":1,"VtepMAC":"bb:bb:bb:bb:bb:bb"}}"#
        );
        let mut v6_only = LeaseAttrs::new(Ipv4Addr::UNSPECIFIED, "vxlan");
        v6_only.public_ipv6 = Some("fd00::10".parse().unwrap());
        v6_only.backend_v6_data = dual.backend_v6_data.clone();
        assert_eq!(
            v6_only.to_json(),
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::10","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"bb:bb:bb:bb:bb:bb"}}"#
        );
        let seed = r#"{"PublicIP":"192.168.0.1","PublicIPv6":"fc00::1"}"#;
        let parsed = LeaseAttrs::from_json(seed.as_bytes()).unwrap();
        assert_eq!(parsed.public_ipv6, Some("fc00::1".parse().unwrap()));
        assert_eq!(parsed.to_json(), seed);
        let (v4, v6) = parse_subnet_key("10.5.1.0-24&fc00::-64").unwrap();
        assert_eq!(subnet_key(&v4, v6.as_ref()), "10.5.1.0-24&fc00::-64");
        let l = Lease::new(NO_IPV4_SUBNET, v6, v6_only);
        assert_eq!(
            (l.key().as_str(), l.ipv4_subnet()),
            ("0.0.0.0-0&fc00::-64", None)
        );
    }

    #[test]
    fn attrs_json_omits_empty_backend_fields_and_keeps_ipv6() {
        let mut attrs = LeaseAttrs::new(Ipv4Addr::new(198, 18, 0, 2), "");
        assert_eq!(
            attrs.to_json(),
            r#"{"PublicIP":"198.18.0.2","PublicIPv6":null}"#
        );
        attrs.public_ipv6 = Some("fd00::2".parse().unwrap());
        attrs.backend_type = "host-gw".into();
        attrs.backend_v6_data = Some(json!({"VNI": 1}).into());
        assert_eq!(
            attrs.to_json(),
            r#"{"PublicIP":"198.18.0.2","PublicIPv6":"fd00::2","BackendType":"host-gw","BackendV6Data":{"VNI":1}}"#
        );
        assert_eq!(
            LeaseAttrs::from_json(attrs.to_json().as_bytes()).unwrap(),
            attrs
        );
    }

    #[test]
    fn backend_data_is_compact_shared_text() {
        let doc = r#"{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{ "VtepMAC" : "0a:00:00:00:00:01", "VNI" : 1 }}"#;
        let attrs = LeaseAttrs::from_json(doc.as_bytes()).unwrap();
        let data = attrs.backend_data.clone().unwrap();
        // Compact, keys sorted (how serde_json writes a map, and Go's field order).
        assert_eq!(data.as_str(), r#"{"VNI":1,"VtepMAC":"0a:00:00:00:00:01"}"#);
        assert_eq!(data.get("VtepMAC"), Some(json!("0a:00:00:00:00:01")));
        assert_eq!(data.get("vtepmac"), None);
        assert_eq!(data, json!({"VNI": 1, "VtepMAC": "0a:00:00:00:00:01"}));
        // Clones share the text.
        let again = attrs.clone().backend_data.unwrap();
        assert!(std::ptr::eq(data.as_str(), again.as_str()));
        // Not an object: kept as it is.
        let odd = BackendData::from(json!([1, "x"]));
        assert_eq!(odd.as_str(), r#"[1,"x"]"#);
        assert_eq!(odd.get("VNI"), None);
    }

    #[test]
    fn attrs_parse_keys_case_insensitively() {
        let v = r#"{"publicip":"198.18.0.3","PUBLICIPV6":"fd00::3","backendtype":"vxlan","backenddata":{"vni":2}}"#;
        let attrs = LeaseAttrs::from_json(v.as_bytes()).unwrap();
        assert_eq!(attrs.public_ip, Ipv4Addr::new(198, 18, 0, 3));
        assert_eq!(attrs.public_ipv6, Some("fd00::3".parse().unwrap()));
        assert_eq!(attrs.backend_type, "vxlan");
        assert_eq!(
            attrs.backend_data.map(|d| d.value()),
            Some(json!({"vni": 2}))
        );
        // Exact match wins over a case-insensitive one.
        let v = r#"{"publicip":"198.18.0.9","PublicIP":"198.18.0.4"}"#;
        assert_eq!(
            LeaseAttrs::from_json(v.as_bytes()).unwrap().public_ip,
            Ipv4Addr::new(198, 18, 0, 4)
        );
    }

    #[test]
    fn attrs_errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            (r#"{"PublicIPv6":null}"#, "PublicIP"),
            (r#"{"PublicIP":"nope"}"#, "PublicIP"),
            (r#"{"PublicIP":5}"#, "PublicIP"),
            (
                r#"{"PublicIP":"198.18.0.1","PublicIPv6":"x"}"#,
                "PublicIPv6",
            ),
            (
                r#"{"PublicIP":"198.18.0.1","BackendType":1}"#,
                "BackendType",
            ),
            (r#"[1]"#, "<value>"),
            (r#"{"#, "<value>"),
        ];
        for (input, field) in cases {
            match LeaseAttrs::from_json(input.as_bytes()) {
                Err(LeaseError::InvalidValue { field: f, .. }) => assert_eq!(f, *field, "{input}"),
                other => panic!("{input}: expected an error on {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn subnet_key_round_trips() {
        for key in [
            "10.244.1.0-24",
            "10.0.0.0-8",
            "198.18.250.16-28",
            "10.244.1.0-24&fc00::-64",
            "10.244.1.0-24&fc00:1:2:3::-64",
            // IPv6-only, as flannel's MakeSubnetKey writes it (zero IP4Net).
            "0.0.0.0-0&fd00:10:244:1::-64",
        ] {
            let (v4, v6) = parse_subnet_key(key).unwrap();
            assert_eq!(subnet_key(&v4, v6.as_ref()), key);
        }
        let (v4, v6) =
            parse_subnet_key("/coreos.com/network/subnets/10.5.34.0-24&fc00::-64").unwrap();
        assert_eq!(v4, net4("10.5.34.0/24"));
        assert_eq!(v6, Some("fc00::/64".parse().unwrap()));
        let l = Lease::new(v4, v6, LeaseAttrs::new(Ipv4Addr::LOCALHOST, ""));
        assert_eq!(l.key(), "10.5.34.0-24&fc00::-64");
    }

    #[test]
    fn subnet_key_rejects_garbage() {
        for key in [
            "",
            "10.244.1.0",
            "10.244.1.0/24",
            "10.244.1-24",
            "10.244.1.0-33",
            "10.244.1.0-",
            "10.244.1.0-2x",
            "300.1.1.0-24",
            "10.244.1.0-24&",
            "10.244.1.0-24&fc00::",
            "10.244.1.0-24&FC00::-64",
            "10.244.1.0-24&fc00::-129",
            "10.244.1.0-24&zz::-64",
        ] {
            assert!(parse_subnet_key(key).is_err(), "{key:?} should be rejected");
        }
    }

    #[test]
    fn watcher_reset_diffs_and_reemits_changed_attrs() {
        let mut w = LeaseWatcher::new(Some((net4("10.244.1.0/24"), None)));
        let a = lease("10.244.2.0/24", "198.18.0.2");
        let b = lease("10.244.3.0/24", "198.18.0.3");
        let own = lease("10.244.1.0/24", "198.18.0.1");
        let ev = w.reset(&[own.clone(), a.clone(), b.clone()]);
        assert_eq!(
            ev,
            vec![LeaseEvent::Added(a.clone()), LeaseEvent::Added(b.clone())]
        );
        // Same snapshot again: nothing to do.
        assert!(w.reset(&[own.clone(), a.clone(), b.clone()]).is_empty());
        // b's VTEP MAC changed, a vanished, c is new.
        let mut b2 = b.clone();
        b2.attrs.backend_data = Some(json!({"VNI":1,"VtepMAC":"0a:00:00:00:00:03"}).into());
        let c = lease("10.244.4.0/24", "198.18.0.4");
        let ev = w.reset(&[b2.clone(), c.clone()]);
        assert_eq!(
            ev,
            vec![
                LeaseEvent::Removed(a),
                LeaseEvent::Added(b2),
                LeaseEvent::Added(c)
            ]
        );
        assert_eq!(w.leases().count(), 2);
    }

    #[test]
    fn watcher_update_filters_own_and_dedups_renewals() {
        let mut w = LeaseWatcher::new(Some((net4("10.244.1.0/24"), None)));
        let a = lease("10.244.2.0/24", "198.18.0.2");
        let own = lease("10.244.1.0/24", "198.18.0.1");
        let ev = w.update(&[LeaseEvent::Added(own.clone()), LeaseEvent::Added(a.clone())]);
        assert_eq!(ev, vec![LeaseEvent::Added(a.clone())]);
        // A renewal (same attrs, new lease id) is not re-emitted but is remembered.
        let mut renewed = a.clone();
        renewed.leased = true;
        renewed.lease_id = Some(7);
        assert!(w.update(&[LeaseEvent::Added(renewed.clone())]).is_empty());
        assert_eq!(w.get(&a.id()), Some(&renewed));
        // A changed public IP is.
        let mut moved = a.clone();
        moved.attrs.public_ip = Ipv4Addr::new(198, 18, 0, 22);
        assert_eq!(
            w.update(&[LeaseEvent::Added(moved.clone())]),
            vec![LeaseEvent::Added(moved.clone())]
        );
        // Removed carries the remembered attrs even when the event has none useful.
        let bare = lease("10.244.2.0/24", "0.0.0.0");
        assert_eq!(
            w.update(&[LeaseEvent::Removed(bare), LeaseEvent::Removed(own)]),
            vec![LeaseEvent::Removed(moved)]
        );
        assert_eq!(w.leases().count(), 0);
    }

    #[test]
    fn watcher_set_own_forgets_new_own_subnet() {
        let mut w = LeaseWatcher::new(None);
        let a = lease("10.244.2.0/24", "198.18.0.2");
        w.reset(std::slice::from_ref(&a));
        assert_eq!(
            w.set_own(Some((net4("10.244.2.0/24"), None))),
            vec![LeaseEvent::Removed(a)]
        );
        assert_eq!(w.own(), Some((net4("10.244.2.0/24"), None)));
        assert!(w.set_own(None).is_empty());
    }
}
