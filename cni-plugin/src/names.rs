//! Stable names derived from an attachment.
//!
//! The host end of a pod's veth is named `veth` + 8 hex digits of a hash of
//! (container id, ifname). Being a pure function of the attachment, DEL can find and
//! delete it without entering the pod's namespace (which may already be gone), and an
//! operator can tell which pod a host interface belongs to.

/// The host-side veth name for an attachment, e.g. `veth1a2b3c4d` (12 bytes, < IFNAMSIZ).
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // Each part is followed by a 0xff byte, so ("ab","c") and ("a","bc") differ.
    let bytes = [container_id.as_bytes(), ifname.as_bytes()]
        .into_iter()
        .flat_map(|part| part.iter().copied().chain([0xff]));
    let h = ipam::net::fnv1a64(bytes);
    format!("veth{:08x}", (h ^ (h >> 32)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_short_and_distinct() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_eq!(a.len(), 12);
        assert!(a.starts_with("veth"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(host_veth_name("ab", "ceth0"), host_veth_name("abc", "eth0"));
        let names: std::collections::HashSet<_> = (0..10_000)
            .map(|i| host_veth_name(&format!("pod{i}"), "eth0"))
            .collect();
        assert_eq!(names.len(), 10_000);
    }
}
