//! # cni-plugin — flannel's CNI chain in one native process
//!
//! flannel's own plugin is a meta-plugin: it reads `/run/flannel/subnet.env`, renders a
//! config for the reference `bridge` plugin and execs it, which in turn execs `host-local`.
//! Three processes, two Go runtimes, and a scratch file per container. This crate does the
//! same job in one process with netlink only:
//!
//! 1. [`skel`] validates the invocation (env, stdin, version, names) before touching
//!    anything, and maps every failure to the spec's error codes ([`error`]).
//! 2. [`conf`] turns flannel's netconf plus subnet.env into a [`conf::PodNetwork`] plan with
//!    flannel's defaults (bridge `cbr0`, gateway = first host, `ipMasq` = !FLANNEL_IPMASQ).
//! 3. [`add`] allocates from host-local in-process (byte-compatible store, so a node can
//!    switch from the reference plugins and keep every reservation), ensures the bridge,
//!    creates the veth pair in one netlink request with the container end born inside the
//!    pod's namespace, configures the pod, announces it with a gratuitous ARP, and rolls
//!    everything back if any step fails.
//! 4. [`del`] is idempotent and never needs subnet.env or the pod's namespace; [`check`],
//!    [`gc`] and [`status`] implement the 0.4.0 and 1.1.0 verbs.
//!
//! Results are printed in the version the caller asked for ([`result`], [`version`]).

pub mod add;
pub mod check;
pub mod conf;
pub mod context;
pub mod del;
pub mod error;
pub mod gc;
pub mod ipam_exec;
pub mod names;
pub mod result;
pub mod skel;
pub mod status;
pub mod version;

use backends::kernel::LazyNetlink;
use context::Context;
use error::{CniError, CniResult};
use skel::{Command, Invocation};

/// Runs a validated invocation on a single-threaded runtime and returns stdout text.
pub fn dispatch(inv: &Invocation) -> CniResult<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::internal(format!("cannot start async runtime: {e}")))?;
    rt.block_on(async {
        // The node's kernel, its netlink socket opened by the first call that needs one (a
        // DEL usually needs none).
        let ctx = Context::new(inv, LazyNetlink::new());
        match inv.command {
            Command::Add => {
                let out = add::add(&ctx).await?;
                Ok(out.render(&inv.version, inv.spec).to_string())
            }
            Command::Del => del::del(&ctx).await.map(|()| String::new()),
            Command::Check => check::check(&ctx).await.map(|()| String::new()),
            Command::Gc => gc::gc(&ctx).await.map(|()| String::new()),
            Command::Status => status::status(&ctx).map(|()| String::new()),
            Command::Version => Ok(version::version_reply(Some(&inv.version))),
        }
    })
}

/// Maps a netlink failure to a CNI error naming the step that failed.
pub(crate) fn netlink_err(
    step: &str,
) -> impl Fn(backends::kernel::netlink::NetlinkError) -> CniError + '_ {
    move |e| CniError::internal(format!("{step}: {e}"))
}

/// Maps an IPAM failure to a CNI error (config problems are code 7, the rest 999).
pub(crate) fn ipam_err(e: ipam::host_local::IpamError) -> CniError {
    use ipam::host_local::IpamError;
    match e {
        IpamError::InvalidConfig(_) | IpamError::InvalidNetworkName(_) => {
            CniError::config(e.to_string())
        }
        other => CniError::internal(other.to_string()),
    }
}
