//! CNI errors: the spec's error object printed on stdout with a non-zero exit.
//!
//! Every failure that leaves the plugin is a [`CniError`] carrying one of the spec's
//! well-known codes, so a runtime can tell "your config is wrong" (7) from "try again
//! later" (11) without parsing prose. Codes below 100 are the spec's; 999 is the
//! generic code the reference Go plugins use for operational failures, kept for
//! compatibility with tooling that expects it.

use serde::Serialize;

/// Incompatible CNI version (the config asks for a version we do not speak).
pub const INCOMPATIBLE_VERSION: u32 = 1;
/// Unsupported field in the network configuration.
pub const UNSUPPORTED_FIELD: u32 = 2;
/// Container unknown or does not exist.
pub const UNKNOWN_CONTAINER: u32 = 3;
/// Invalid or missing environment variables.
pub const INVALID_ENV: u32 = 4;
/// I/O failure (e.g. reading stdin).
pub const IO_FAILURE: u32 = 5;
/// Failure to decode content (bad JSON).
pub const DECODE_FAILURE: u32 = 6;
/// Invalid network configuration.
pub const INVALID_CONFIG: u32 = 7;
/// Transient condition: try again later.
pub const TRY_AGAIN_LATER: u32 = 11;
/// STATUS: the plugin is not available to serve ADD requests.
pub const NOT_AVAILABLE: u32 = 50;
/// Generic operational failure (the reference plugins' "internal" code).
pub const INTERNAL: u32 = 999;

/// An error in the CNI wire format: `{"cniVersion", "code", "msg", "details"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("CNI error {code}: {msg}")]
pub struct CniError {
    /// The spec's error code.
    pub code: u32,
    /// One-line description naming the problem.
    pub msg: String,
    /// Optional longer explanation.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// An error with `code` and message `msg`.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds the longer explanation.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Shorthand for an invalid-config (7) error.
    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(INVALID_CONFIG, msg)
    }

    /// Shorthand for a generic operational (999) error.
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(INTERNAL, msg)
    }

    /// Renders the error object for `cni_version` (the version the caller asked for).
    pub fn to_json(&self, cni_version: &str) -> String {
        let mut obj = serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            obj["details"] = serde_json::Value::String(self.details.clone());
        }
        obj.to_string()
    }
}

/// Result alias used by every command.
pub type CniResult<T> = Result<T, CniError>;
