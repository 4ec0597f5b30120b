//! [`NetlinkError`]: kernel refusals mapped to typed errors whose messages name the `ip`
//! command that would have failed the same way.

use std::io;

use netlink_packet_core::ErrorMessage;

/// Result of a netlink operation.
pub type Result<T> = std::result::Result<T, NetlinkError>;

/// What went wrong talking to the kernel. Every message starts with the operation, written like
/// the `ip` command that would have failed the same way.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The object, or something it refers to, does not exist (`ENODEV`, `ENOENT`, `ESRCH`).
    #[error("{0}")]
    NotFound(String),
    /// The object already exists (`EEXIST`).
    #[error("{0}")]
    Exists(String),
    /// Any other kernel refusal.
    #[error("{op}: {msg}")]
    Kernel {
        /// The operation, e.g. `ip link add cni0 type bridge`.
        op: String,
        /// The positive errno value.
        errno: i32,
        /// The kernel's error text.
        msg: String,
    },
    /// Not a kernel error: bad input, socket trouble, an unexpected reply.
    #[error("{0}")]
    Other(String),
}

impl NetlinkError {
    /// The errno behind this error, when it came from the kernel.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Exists(_) => Some(libc::EEXIST),
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    pub(super) fn from_errno(op: &str, errno: i32) -> NetlinkError {
        let msg = io::Error::from_raw_os_error(errno).to_string();
        match errno {
            libc::EEXIST => NetlinkError::Exists(format!("{op}: {msg}")),
            libc::ENODEV | libc::ENOENT | libc::ESRCH => {
                NetlinkError::NotFound(format!("{op}: {msg}"))
            }
            _ => NetlinkError::Kernel {
                op: op.to_string(),
                errno,
                msg,
            },
        }
    }

    pub(super) fn from_message(op: &str, e: &ErrorMessage) -> NetlinkError {
        NetlinkError::from_errno(op, -e.raw_code())
    }

    pub(super) fn other(op: &str, e: impl std::fmt::Display) -> NetlinkError {
        NetlinkError::Other(format!("{op}: {e}"))
    }
}
