//! Delegating to another IPAM plugin binary, exactly as the reference plugins do.
//!
//! When `ipam.type` is not `host-local`, the named binary is looked up in `CNI_PATH` and
//! run with the same environment (only `CNI_COMMAND` may differ) and a config holding
//! `cniVersion`, `name` and our rendered `ipam` object on stdin. Its result is parsed in
//! whatever version it printed; its error object is passed through with its own code.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};

use crate::error::{CniError, CniResult, INVALID_CONFIG};
use crate::result::CniOutput;
use crate::skel::Invocation;

/// Finds `plugin` in the `CNI_PATH` directories.
pub fn find_plugin(inv: &Invocation, plugin: &str) -> CniResult<PathBuf> {
    if plugin.is_empty() || plugin.contains('/') {
        return Err(CniError::config(format!("invalid ipam.type {plugin:?}")));
    }
    inv.cni_path
        .iter()
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                INVALID_CONFIG,
                format!(
                    "failed to find IPAM plugin {plugin:?} in CNI_PATH {:?}",
                    inv.cni_path
                ),
            )
        })
}

/// Runs the delegate with `command` (`ADD`, `DEL`, `CHECK`, `GC`, `STATUS`) and returns stdout.
pub fn exec(
    inv: &Invocation,
    plugin: &str,
    command: &str,
    ipam: &serde_json::Value,
    extra: Option<(&str, serde_json::Value)>,
) -> CniResult<String> {
    let path = find_plugin(inv, plugin)?;
    let mut conf = serde_json::json!({
        "cniVersion": inv.version,
        "name": inv.conf.network_name(),
        "ipam": ipam,
    });
    if let Some((k, v)) = extra {
        conf[k] = v;
    }
    let mut cmd = Process::new(&path);
    cmd.env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // Killed with us: a delegated ADD must not reserve after our DEL ran.
    backends::kernel::child::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| {
        CniError::internal(format!("cannot run IPAM plugin {}: {e}", path.display()))
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(conf.to_string().as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::internal(format!("IPAM plugin {} failed: {e}", path.display())))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let parsed: Option<serde_json::Value> = serde_json::from_str(&stdout).ok();
    let code = parsed
        .as_ref()
        .and_then(|v| v["code"].as_u64())
        .unwrap_or(999) as u32;
    let msg = parsed
        .as_ref()
        .and_then(|v| v["msg"].as_str().map(str::to_string))
        .unwrap_or_else(|| stdout.trim().to_string());
    Err(CniError::new(
        code,
        format!("IPAM plugin {plugin} {command}: {msg}"),
    ))
}

/// ADD through the delegate; returns its (abbreviated) result.
pub fn add(inv: &Invocation, plugin: &str, ipam: &serde_json::Value) -> CniResult<CniOutput> {
    let text = exec(inv, plugin, "ADD", ipam, None)?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        CniError::internal(format!(
            "IPAM plugin {plugin} printed an undecodable result: {e}"
        ))
    })?;
    CniOutput::parse(&value)
        .map_err(|e| CniError::internal(format!("IPAM plugin {plugin} result: {e}")))
}
