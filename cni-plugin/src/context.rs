//! [`Context`]: what every verb receives — the validated invocation (the reference skel's
//! `CmdArgs`) and the kernel of the node's namespace it acts on.
//!
//! The plugin binary builds it with the real kernel ([`backends::kernel::netlink::Netlink`]);
//! unit tests build it with the recording twin, so ADD's rollback and DEL's teardown run
//! without root.

use backends::kernel::Kernel;

use crate::skel::Invocation;

/// One CNI invocation and the kernel it acts on.
pub struct Context<'a, K: Kernel> {
    /// The validated invocation.
    pub inv: &'a Invocation,
    /// The node's namespace (where the bridge and the host ends live).
    pub host: K,
}

impl<'a, K: Kernel> Context<'a, K> {
    /// A context for `inv` acting through `host`.
    pub fn new(inv: &'a Invocation, host: K) -> Context<'a, K> {
        Context { inv, host }
    }
}
