//! [`Section`]: typed, case-insensitive access to one JSON object of flannel's network config
//! (`<prefix>/config`), the way Go's `encoding/json` reads it: key names match in any case,
//! `null` counts as absent, and every error names the key (`Backend.VNI: expected a
//! non-negative integer, got "one"`). flanneld reads the top level with it, and each backend
//! driver reads its own `Backend` section.

use ipam::lease::lookup_ci;
use serde_json::{Map, Value};

/// A key of the network config with a value flanneld cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct SectionError {
    /// The key at fault, with its section prefix (`Backend.VNI`).
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

/// One JSON object; `path` prefixes key names in errors (`"Backend."`, or `""` at the top).
#[derive(Clone, Copy, Debug)]
pub struct Section<'a> {
    map: &'a Map<String, Value>,
    path: &'static str,
}

impl<'a> Section<'a> {
    /// The object `map`, whose keys are reported as `<path><key>`.
    pub fn new(map: &'a Map<String, Value>, path: &'static str) -> Section<'a> {
        Section { map, path }
    }

    /// The full name of `key` for messages (`Backend.VNI`).
    pub fn name(&self, key: &str) -> String {
        format!("{}{key}", self.path)
    }

    /// An error about `key`.
    pub fn invalid(&self, key: &str, reason: impl Into<String>) -> SectionError {
        SectionError {
            key: self.name(key),
            reason: reason.into(),
        }
    }

    /// The value, treating JSON `null` like an absent key (as Go does for non-pointers).
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        lookup_ci(self.map, key).filter(|v| !v.is_null())
    }

    /// A boolean, `default` when absent.
    pub fn bool(&self, key: &str, default: bool) -> Result<bool, SectionError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.invalid(key, format!("expected true or false, got {v}"))),
        }
    }

    /// A non-negative integer up to `max`.
    pub fn uint(&self, key: &str, max: u64) -> Result<Option<u64>, SectionError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n <= max => Ok(Some(n)),
                Some(n) => Err(self.invalid(key, format!("{n} is out of range (max {max})"))),
                None => Err(self.invalid(key, format!("expected a non-negative integer, got {v}"))),
            },
        }
    }

    /// A UDP port: 0 or absent mean `default`.
    pub fn port(&self, key: &str, default: u16) -> Result<u16, SectionError> {
        Ok(match self.uint(key, u64::from(u16::MAX))? {
            None | Some(0) => default,
            Some(p) => p as u16,
        })
    }

    /// A string.
    pub fn string(&self, key: &str) -> Result<Option<&'a str>, SectionError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.invalid(key, format!("expected a string, got {v}"))),
        }
    }

    /// A string parsed with `FromStr` (addresses, networks).
    pub fn parsed<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, SectionError>
    where
        T::Err: std::fmt::Display,
    {
        match self.string(key)? {
            None => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|e| self.invalid(key, format!("{s:?}: {e}"))),
        }
    }
}
