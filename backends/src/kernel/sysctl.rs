//! # Kernel knobs under `/proc/sys`
//!
//! Keys are written the way they appear below `/proc/sys`, with slashes:
//! `net/ipv4/ip_forward`, `net/ipv4/conf/eth0/arp_notify`, `net/ipv6/conf/all/forwarding`.
//! Dots are *not* translated, because interface names such as `eth0.100` contain them.
//!
//! Everything under `/proc/sys/net` belongs to the network namespace of the **calling thread**
//! (the kernel looks the table up through the opener's namespace), so to change a pod's knob call
//! these functions inside [`crate::kernel::netns::NetNs::run`]. Nothing here caches: each call is one
//! `open` + `read`/`write`, cheap enough for the CNI ADD path.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::path::PathBuf;

/// The root of the sysctl tree.
pub const SYSCTL_ROOT: &str = "/proc/sys";

/// Maps a key to its `/proc/sys` path, rejecting keys that could escape the tree.
fn key_path(key: &str) -> io::Result<PathBuf> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        || key.contains('\0');
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid sysctl key {key:?} (want a relative path like net/ipv4/ip_forward)"),
        ));
    }
    Ok(PathBuf::from(SYSCTL_ROOT).join(key))
}

/// Reads a sysctl (`sysctl -n KEY`), without the trailing newline.
///
/// Errors name the key; [`io::ErrorKind::NotFound`] means the knob does not exist (for example an
/// interface that is not in this namespace).
pub fn read(key: &str) -> io::Result<String> {
    let path = key_path(key)?;
    let mut s = String::new();
    std::fs::File::open(&path)
        .and_then(|mut f| f.read_to_string(&mut s))
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("read sysctl {key} ({}): {e}", path.display()),
            )
        })?;
    Ok(s.trim_end_matches('\n').to_string())
}

/// Writes a sysctl (`sysctl -w KEY=VALUE`) in one `write(2)`.
pub fn write(key: &str, value: &str) -> io::Result<()> {
    let path = key_path(key)?;
    OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("write sysctl {key}={value} ({}): {e}", path.display()),
            )
        })
}

/// Sets a sysctl only if its current value differs (compared after trimming whitespace, so
/// `"1"` matches `"1\n"`). Returns whether it wrote.
///
/// Avoiding the write matters for knobs like `ip_forward`, whose write resets other settings
/// even when the value is unchanged.
pub fn ensure(key: &str, value: &str) -> io::Result<bool> {
    if read(key)?.trim() == value.trim() {
        return Ok(false);
    }
    write(key, value)?;
    Ok(true)
}
