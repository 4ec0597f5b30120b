//! The `Backend` section of a `"Type": "wireguard"` network config, read as flannel reads it
//! (`pkg/backend/wireguard/wireguard.go`, `RegisterNetwork`): same keys, same defaults, same
//! units, but every bad value is refused with a message naming the key where flannel would
//! truncate a port, accept a negative keepalive or hand the kernel an MTU below 80.

use backends::overlay::section::{Section, SectionError};
use base64::Engine;

/// flannel's default `ListenPort`.
pub const DEFAULT_LISTEN_PORT: u16 = 51820;
/// flannel's default `ListenPortV6` (the `flannel-wg-v6` device of `Mode: separate`).
pub const DEFAULT_LISTEN_PORT_V6: u16 = 51821;

/// flannel's `Mode`: which devices carry which family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// One device per family: `flannel-wg` (IPv4, `ListenPort`) and `flannel-wg-v6` (IPv6,
    /// `ListenPortV6`). flannel's default.
    #[default]
    Separate,
    /// One device `flannel-wg` for both families; the underlay family is chosen per peer.
    Auto,
    /// One device `flannel-wg`, IPv4 underlay.
    Ipv4,
    /// One device `flannel-wg`, IPv6 underlay.
    Ipv6,
}

impl Mode {
    /// flannel's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Separate => "separate",
            Mode::Auto => "auto",
            Mode::Ipv4 => "ipv4",
            Mode::Ipv6 => "ipv6",
        }
    }
}

/// wireguard backend options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireguardConfig {
    /// `ListenPort` (default 51820): the UDP port of `flannel-wg`, published in the lease.
    pub listen_port: u16,
    /// `ListenPortV6` (default 51821).
    pub listen_port_v6: u16,
    /// `MTU`: the underlay MTU to subtract the 80 bytes of overhead from; default the external
    /// interface's.
    pub mtu: Option<u32>,
    /// `PSK`: a pre-shared key (base64, as `wg genpsk` prints it), the same for every peer.
    pub psk: Option<[u8; 32]>,
    /// `PersistentKeepaliveInterval` in seconds; 0 = off.
    pub persistent_keepalive: u16,
    /// `Mode`.
    pub mode: Mode,
}

impl Default for WireguardConfig {
    fn default() -> Self {
        WireguardConfig {
            listen_port: DEFAULT_LISTEN_PORT,
            listen_port_v6: DEFAULT_LISTEN_PORT_V6,
            mtu: None,
            psk: None,
            persistent_keepalive: 0,
            mode: Mode::Separate,
        }
    }
}

/// Decodes a WireGuard key (standard base64 of 32 bytes; surrounding whitespace and a
/// trailing newline, as `wg genkey` writes, are accepted).
pub fn decode_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("decodes to {} bytes, a key has 32", bytes.len()))
}

/// Encodes a key as `wg` prints it.
pub fn encode_key(key: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

impl WireguardConfig {
    /// Reads the `Backend` section.
    pub fn parse(b: &Section<'_>) -> Result<WireguardConfig, SectionError> {
        let mode = match b.string("Mode")? {
            None => Mode::Separate,
            Some(m) => match m.to_ascii_lowercase().as_str() {
                "separate" => Mode::Separate,
                "auto" => Mode::Auto,
                "ipv4" => Mode::Ipv4,
                "ipv6" => Mode::Ipv6,
                _ => {
                    return Err(b.invalid(
                        "Mode",
                        format!("{m:?} is not a mode (separate, auto, ipv4, ipv6)"),
                    ));
                }
            },
        };
        let psk = match b.string("PSK")? {
            None | Some("") => None,
            Some(s) => Some(decode_key(s).map_err(|e| b.invalid("PSK", e))?),
        };
        let mtu = match b.uint("MTU", u64::from(u32::MAX))? {
            None | Some(0) => None,
            Some(m) => Some(m as u32),
        };
        Ok(WireguardConfig {
            listen_port: b.port("ListenPort", DEFAULT_LISTEN_PORT)?,
            listen_port_v6: b.port("ListenPortV6", DEFAULT_LISTEN_PORT_V6)?,
            mtu,
            psk,
            persistent_keepalive: b
                .uint("PersistentKeepaliveInterval", u64::from(u16::MAX))?
                .unwrap_or(0) as u16,
            mode,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<WireguardConfig, SectionError> {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        WireguardConfig::parse(&Section::new(v.as_object().unwrap(), "Backend."))
    }

    #[test]
    fn flannel_defaults_and_documented_example() {
        assert_eq!(
            parse(r#"{"Type":"wireguard"}"#).unwrap(),
            WireguardConfig::default()
        );
        // flannel's dist/wireguard example (keys in any case, as Go's encoding/json).
        let c = parse(
            r#"{"Type":"wireguard","ListenPort":51820,"PSK":"H0Ad2y0RLk4Tfn+eO4EtNqUYJ5vGJl5n0cMg7QGlYbM=","persistentkeepaliveinterval":300}"#,
        )
        .unwrap();
        assert_eq!(c.persistent_keepalive, 300);
        assert!(c.psk.is_some());
        assert_eq!(c.mode, Mode::Separate);
        let c =
            parse(r#"{"ListenPort":4000,"ListenPortV6":4001,"MTU":9000,"Mode":"auto"}"#).unwrap();
        assert_eq!(
            (c.listen_port, c.listen_port_v6, c.mtu, c.mode),
            (4000, 4001, Some(9000), Mode::Auto)
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        for (json, key) in [
            (r#"{"ListenPort":70000}"#, "Backend.ListenPort"),
            (r#"{"ListenPortV6":-1}"#, "Backend.ListenPortV6"),
            (r#"{"PSK":"short"}"#, "Backend.PSK"),
            (r#"{"PSK":"aGVsbG8="}"#, "Backend.PSK"),
            (
                r#"{"PersistentKeepaliveInterval":"25s"}"#,
                "Backend.PersistentKeepaliveInterval",
            ),
            (
                r#"{"PersistentKeepaliveInterval":-5}"#,
                "Backend.PersistentKeepaliveInterval",
            ),
            (r#"{"Mode":"both"}"#, "Backend.Mode"),
            (r#"{"MTU":"big"}"#, "Backend.MTU"),
        ] {
            let e = parse(json).expect_err(json);
            assert_eq!(e.key, key, "{json}: {e}");
        }
    }

    #[test]
    fn keys_round_trip_and_tolerate_a_newline() {
        let k = [7u8; 32];
        let text = encode_key(&k);
        assert_eq!(decode_key(&text).unwrap(), k);
        assert_eq!(decode_key(&format!("{text}\n")).unwrap(), k);
        assert!(decode_key("").is_err());
    }
}
