//! CNI spec versions: which ones we speak and how results differ between them.
//!
//! We accept configs for 0.3.0 through 1.1.0 and print every result in the version the
//! caller asked for. Older spec versions (0.1.0 / 0.2.0) used a different result shape
//! (`ip4`/`ip6`) that no flannel deployment has emitted for years, so they are refused
//! with code 1 instead of being half-supported.

use crate::error::{CniError, DECODE_FAILURE, INCOMPATIBLE_VERSION};

/// Every version we accept, oldest first (the VERSION reply lists them in this order).
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest version we speak.
pub const LATEST: &str = "1.1.0";

/// A parsed `major.minor.patch` spec version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpecVersion(pub u32, pub u32, pub u32);

impl SpecVersion {
    /// Parses "1.0.0"; anything else is a decoding failure (code 6).
    pub fn parse(text: &str) -> Result<Self, CniError> {
        let bad = || {
            CniError::new(
                DECODE_FAILURE,
                format!("invalid cniVersion {text:?}: expected MAJOR.MINOR.PATCH"),
            )
        };
        let mut parts = text.split('.');
        let mut next = || -> Result<u32, CniError> {
            let p = parts.next().ok_or_else(bad)?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 9 {
                return Err(bad());
            }
            p.parse().map_err(|_| bad())
        };
        let v = SpecVersion(next()?, next()?, next()?);
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(v)
    }

    /// True from 1.0.0 on, where `ips[].version` disappeared from results.
    pub fn is_1x(self) -> bool {
        self.0 >= 1
    }

    /// True from 1.1.0 on (GC, STATUS, extra result fields).
    pub fn at_least_1_1(self) -> bool {
        self >= SpecVersion(1, 1, 0)
    }

    /// True from 0.4.0 on (CHECK exists).
    pub fn has_check(self) -> bool {
        self >= SpecVersion(0, 4, 0)
    }
}

/// Validates a config's `cniVersion` and returns it parsed.
///
/// A malformed string is code 6; a well-formed but unsupported one is code 1.
pub fn check_supported(text: &str) -> Result<SpecVersion, CniError> {
    let v = SpecVersion::parse(text)?;
    if SUPPORTED.contains(&text) {
        Ok(v)
    } else {
        Err(CniError::new(
            INCOMPATIBLE_VERSION,
            format!("incompatible CNI versions: config is {text:?}, plugin supports {SUPPORTED:?}"),
        ))
    }
}

/// The VERSION reply: echoes the caller's version when it is one we speak.
pub fn version_reply(requested: Option<&str>) -> String {
    let current = requested
        .filter(|v| SUPPORTED.contains(v))
        .unwrap_or(LATEST);
    serde_json::json!({ "cniVersion": current, "supportedVersions": SUPPORTED }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders_versions() {
        assert!(SpecVersion::parse("0.3.1").unwrap() < SpecVersion::parse("0.4.0").unwrap());
        assert!(SpecVersion::parse("1.1.0").unwrap().at_least_1_1());
        assert!(!SpecVersion::parse("1.0.0").unwrap().at_least_1_1());
        assert!(SpecVersion::parse("0.4.0").unwrap().has_check());
        assert!(!SpecVersion::parse("0.3.1").unwrap().has_check());
    }

    #[test]
    fn malformed_versions_are_decode_errors() {
        for bad in [
            "", "1", "1.0", "1.0.0.0", "a.b.c", "1.-1.0", "01x.0.0", " 1.0.0",
        ] {
            assert_eq!(
                SpecVersion::parse(bad).unwrap_err().code,
                DECODE_FAILURE,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn unsupported_versions_are_code_1() {
        for v in ["0.1.0", "0.2.0", "9.9.9", "1.2.0"] {
            assert_eq!(
                check_supported(v).unwrap_err().code,
                INCOMPATIBLE_VERSION,
                "{v}"
            );
        }
        for v in SUPPORTED {
            check_supported(v).unwrap();
        }
    }

    #[test]
    fn version_reply_lists_everything() {
        let v: serde_json::Value = serde_json::from_str(&version_reply(Some("0.4.0"))).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["supportedVersions"].as_array().unwrap().len(),
            SUPPORTED.len()
        );
        let v: serde_json::Value = serde_json::from_str(&version_reply(Some("7.0.0"))).unwrap();
        assert_eq!(v["cniVersion"], LATEST);
    }
}
