//! The CNI calling convention: environment + stdin in, one JSON object out.
//!
//! [`run`] is the whole plugin as a function of its inputs, so tests can drive it without
//! spawning a process. It validates in the same order as the reference Go `skel`: the
//! command and its required variables first (code 4), then stdin (5 on I/O, 6 on bad JSON),
//! the config version (6 malformed, 1 unsupported), the container id and interface name
//! (4), and finally the config itself (7). Nothing is touched before all of that passed.
//! Success prints the result (ADD, VERSION) or nothing; failure prints the error object on
//! stdout and exits 1. Diagnostics go to stderr only.

use std::io::Read;
use std::path::PathBuf;

use crate::conf::{CniArgs, NetConf, is_valid_ifname, is_valid_network_name};
use crate::error::{CniError, CniResult, DECODE_FAILURE, INVALID_ENV, IO_FAILURE};
use crate::version::{self, SpecVersion};

/// The CNI verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container (idempotent).
    Del,
    /// Verify an attachment.
    Check,
    /// Report supported versions.
    Version,
    /// Release resources of attachments that no longer exist.
    Gc,
    /// Report readiness.
    Status,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => return None,
        })
    }
}

/// One validated invocation.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The verb.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for GC/STATUS).
    pub container_id: String,
    /// `CNI_NETNS`, None when empty or unset.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (empty for GC/STATUS).
    pub ifname: String,
    /// `CNI_ARGS`.
    pub cni_args: CniArgs,
    /// `CNI_PATH` entries.
    pub cni_path: Vec<PathBuf>,
    /// The config's `cniVersion` as given.
    pub version: String,
    /// The config's `cniVersion` parsed.
    pub spec: SpecVersion,
    /// The decoded config.
    pub conf: NetConf,
}

/// What the process should print and return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Text for stdout (may be empty).
    pub stdout: String,
    /// Exit status.
    pub exit_code: i32,
}

/// What parsing decided: answer VERSION directly, or act on an invocation.
#[derive(Debug, Clone)]
pub enum Parsed {
    /// The VERSION reply, ready to print.
    Version(String),
    /// A validated invocation of another verb.
    Invocation(Box<Invocation>),
}

/// Runs the plugin for `env` (a variable lookup) and `stdin`.
pub fn run(env: &dyn Fn(&str) -> Option<String>, stdin: &mut dyn Read) -> Outcome {
    let mut version_for_errors = version::LATEST.to_string();
    let result = parse(env, stdin, &mut version_for_errors).and_then(|p| match p {
        Parsed::Version(reply) => Ok(reply),
        Parsed::Invocation(inv) => crate::dispatch(&inv),
    });
    match result {
        Ok(stdout) => Outcome {
            stdout,
            exit_code: 0,
        },
        Err(e) => Outcome {
            stdout: e.to_json(&version_for_errors),
            exit_code: 1,
        },
    }
}

/// Validates env and stdin without side effects. `err_version` is set to the config's
/// version as soon as it is known, so errors can echo it.
pub fn parse(
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    err_version: &mut String,
) -> CniResult<Parsed> {
    let command_text = env("CNI_COMMAND").unwrap_or_default();
    let command = Command::parse(&command_text).ok_or_else(|| {
        if command_text.is_empty() {
            CniError::new(INVALID_ENV, "required env variables [CNI_COMMAND] missing")
        } else {
            CniError::new(INVALID_ENV, format!("unknown CNI_COMMAND {command_text:?}"))
        }
    })?;

    if command == Command::Version {
        let mut buf = Vec::new();
        let _ = stdin.read_to_end(&mut buf);
        let requested = serde_json::from_slice::<serde_json::Value>(&buf)
            .ok()
            .and_then(|v| {
                v.get("cniVersion")
                    .and_then(|s| s.as_str())
                    .map(str::to_string)
            });
        return Ok(Parsed::Version(version::version_reply(
            requested.as_deref(),
        )));
    }

    let required: &[&str] = match command {
        Command::Add | Command::Check => {
            &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
        }
        Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
        Command::Gc | Command::Status => &["CNI_PATH"],
        Command::Version => &[],
    };
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|k| env(k).is_none_or(|v| v.is_empty()))
        .collect();
    if !missing.is_empty() {
        return Err(CniError::new(
            INVALID_ENV,
            format!("required env variables [{}] missing", missing.join(",")),
        ));
    }

    let mut buf = Vec::new();
    stdin
        .read_to_end(&mut buf)
        .map_err(|e| CniError::new(IO_FAILURE, format!("error reading from stdin: {e}")))?;
    let value: serde_json::Value = serde_json::from_slice(&buf).map_err(|e| {
        CniError::new(
            DECODE_FAILURE,
            format!("error decoding network config from stdin: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(CniError::new(
            DECODE_FAILURE,
            "network config on stdin must be a JSON object",
        ));
    }
    let version_text = match value.get("cniVersion") {
        Some(serde_json::Value::String(s)) => s.clone(),
        None => {
            return Err(CniError::new(
                crate::error::INCOMPATIBLE_VERSION,
                format!(
                    "network config has no \"cniVersion\"; plugin supports {:?}",
                    version::SUPPORTED
                ),
            ));
        }
        Some(_) => {
            return Err(CniError::new(
                DECODE_FAILURE,
                "\"cniVersion\" must be a string",
            ));
        }
    };
    let spec = version::check_supported(&version_text)?;
    *err_version = version_text.clone();
    if matches!(command, Command::Gc | Command::Status) && !spec.at_least_1_1() {
        return Err(CniError::new(
            crate::error::INCOMPATIBLE_VERSION,
            format!("{command_text} needs cniVersion 1.1.0 or later, config is {version_text:?}"),
        ));
    }
    if command == Command::Check && !spec.has_check() {
        return Err(CniError::new(
            crate::error::INCOMPATIBLE_VERSION,
            format!("CHECK needs cniVersion 0.4.0 or later, config is {version_text:?}"),
        ));
    }

    let container_id = env("CNI_CONTAINERID").unwrap_or_default();
    let ifname = env("CNI_IFNAME").unwrap_or_default();
    if matches!(command, Command::Add | Command::Del | Command::Check) {
        if !is_valid_network_name(&container_id) {
            return Err(CniError::new(
                INVALID_ENV,
                format!(
                    "invalid CNI_CONTAINERID {container_id:?}: it must start with a letter or digit, then letters, digits, '_', '.' or '-'"
                ),
            ));
        }
        if !is_valid_ifname(&ifname) {
            return Err(CniError::new(
                INVALID_ENV,
                format!(
                    "invalid CNI_IFNAME {ifname:?}: 1-15 bytes, no '/', ':' or whitespace, not '.' or '..'"
                ),
            ));
        }
    }
    let cni_args = CniArgs::parse(&env("CNI_ARGS").unwrap_or_default())?;
    let conf = NetConf::from_value(&value)?;
    let netns = env("CNI_NETNS")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);
    let cni_path = env("CNI_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect();
    let inv = Invocation {
        command,
        container_id,
        netns,
        ifname,
        cni_args,
        cni_path,
        version: version_text,
        spec,
        conf,
    };
    Ok(Parsed::Invocation(Box::new(inv)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn go(vars: &[(&str, &str)], stdin: &str) -> Outcome {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        run(&|k| map.get(k).cloned(), &mut stdin.as_bytes())
    }

    fn code(o: &Outcome) -> u64 {
        assert_eq!(o.exit_code, 1, "{}", o.stdout);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        v["code"].as_u64().unwrap()
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"cbr0","type":"flannel","subnetFile":"/nonexistent/subnet.env"}"#;
    const ENV: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc"),
        ("CNI_NETNS", "/nonexistent/netns"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/nonexistent"),
    ];

    fn with(over: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = ENV
            .iter()
            .copied()
            .filter(|(k, _)| !over.iter().any(|(o, _)| o == k))
            .collect();
        v.extend(over.iter().copied().filter(|(_, val)| *val != "<unset>"));
        v
    }

    #[test]
    fn version_needs_no_other_env() {
        let o = go(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.3.1"}"#);
        assert_eq!(o.exit_code, 0);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(v["cniVersion"], "0.3.1");
        let o = go(&[("CNI_COMMAND", "VERSION")], "");
        assert_eq!(o.exit_code, 0);
    }

    #[test]
    fn missing_env_is_code_4_listing_names() {
        let o = go(&[("CNI_COMMAND", "ADD"), ("CNI_PATH", "/x")], CONF);
        assert_eq!(code(&o), 4);
        assert!(
            o.stdout.contains("CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME"),
            "{}",
            o.stdout
        );
        assert_eq!(code(&go(&[], CONF)), 4);
        assert_eq!(code(&go(&[("CNI_COMMAND", "FROB")], CONF)), 4);
        // DEL does not need CNI_NETNS but needs the rest
        assert_eq!(
            code(&go(
                &with(&[("CNI_COMMAND", "DEL"), ("CNI_IFNAME", "<unset>")]),
                CONF
            )),
            4
        );
    }

    #[test]
    fn bad_container_id_and_ifname_are_code_4() {
        for (k, v) in [
            ("CNI_CONTAINERID", "-abc"),
            ("CNI_CONTAINERID", "a/b"),
            ("CNI_CONTAINERID", "a b"),
            ("CNI_IFNAME", "a234567890123456"),
            ("CNI_IFNAME", "eth:0"),
            ("CNI_IFNAME", ".."),
            ("CNI_IFNAME", "e th"),
        ] {
            let o = go(&with(&[(k, v)]), CONF);
            assert_eq!(code(&o), 4, "{k}={v}");
        }
    }

    #[test]
    fn bad_json_is_code_6_and_bad_versions_code_1_or_6() {
        assert_eq!(code(&go(ENV, "{not json")), 6);
        assert_eq!(code(&go(ENV, "[1,2]")), 6);
        assert_eq!(code(&go(ENV, r#"{"cniVersion":"9.9.9","name":"n"}"#)), 1);
        assert_eq!(code(&go(ENV, r#"{"cniVersion":"0.2.0","name":"n"}"#)), 1);
        assert_eq!(code(&go(ENV, r#"{"name":"n"}"#)), 1);
        assert_eq!(code(&go(ENV, r#"{"cniVersion":"one","name":"n"}"#)), 6);
        assert_eq!(code(&go(ENV, r#"{"cniVersion":1,"name":"n"}"#)), 6);
    }

    #[test]
    fn invalid_config_is_code_7() {
        assert_eq!(code(&go(ENV, r#"{"cniVersion":"1.0.0","name":"../x"}"#)), 7);
        assert_eq!(
            code(&go(
                ENV,
                r#"{"cniVersion":"1.0.0","name":"n","delegate":{"mtu":-1}}"#
            )),
            7
        );
    }

    #[test]
    fn gc_status_need_1_1_and_check_needs_0_4() {
        assert_eq!(
            code(&go(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")], CONF)),
            1
        );
        assert_eq!(
            code(&go(&[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/x")], CONF)),
            1
        );
        let c031 = CONF.replace("1.0.0", "0.3.1");
        assert_eq!(code(&go(&with(&[("CNI_COMMAND", "CHECK")]), &c031)), 1);
    }

    #[test]
    fn add_without_subnet_env_is_code_11_naming_the_path() {
        let o = go(ENV, CONF);
        assert_eq!(code(&o), 11);
        assert!(o.stdout.contains("/nonexistent/subnet.env"), "{}", o.stdout);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(
            v["cniVersion"], "1.0.0",
            "errors echo the requested version"
        );
    }

    #[test]
    fn status_without_subnet_env_is_code_50() {
        let c = CONF.replace("1.0.0", "1.1.0");
        assert_eq!(
            code(&go(&[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/x")], &c)),
            50
        );
    }
}
