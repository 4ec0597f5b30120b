//! STATUS (CNI 1.1): can this node serve ADD right now?
//!
//! Not if subnet.env is missing or unparsable (flanneld has no lease yet), nor if every
//! address range is exhausted; both answer code 50 with the reason. A delegated IPAM
//! plugin is asked too, as the spec requires.

use ipam::host_local::HostLocal;
use ipam::subnet_env::SubnetEnv;

use crate::conf::{CniArgs, IpamPlan};
use crate::error::{CniError, CniResult, NOT_AVAILABLE};
use crate::ipam_exec;
use backends::kernel::Kernel;

use crate::context::Context;

/// Runs STATUS.
pub fn status<K: Kernel>(ctx: &Context<'_, K>) -> CniResult<()> {
    let inv = ctx.inv;
    let path = inv.conf.subnet_file();
    let env = SubnetEnv::load(&path).map_err(|e| {
        CniError::new(
            NOT_AVAILABLE,
            format!("subnet file {} is not usable: {e}", path.display()),
        )
    })?;
    let plan = inv.conf.plan(&env, &CniArgs::default()).map_err(|e| {
        CniError::new(
            NOT_AVAILABLE,
            format!("network config is not usable: {}", e.msg),
        )
    })?;
    match &plan.ipam {
        IpamPlan::HostLocal {
            data_dir,
            range_sets,
        } => {
            let store = HostLocal::open(data_dir, &plan.name)
                .map_err(|e| CniError::new(NOT_AVAILABLE, format!("host-local store: {e}")))?;
            for (i, set) in range_sets.iter().enumerate() {
                let free = store
                    .free_count(set)
                    .map_err(|e| CniError::new(NOT_AVAILABLE, format!("host-local store: {e}")))?;
                if free == 0 {
                    return Err(CniError::new(
                        NOT_AVAILABLE,
                        format!(
                            "address range set {i} ({}) is exhausted",
                            set.ranges
                                .first()
                                .map(|r| r.subnet.to_string())
                                .unwrap_or_default()
                        ),
                    ));
                }
            }
            Ok(())
        }
        IpamPlan::Delegated { plugin, config } => {
            ipam_exec::exec(inv, plugin, "STATUS", config, None).map(|_| ())
        }
    }
}
