//! [`MasqTable`]: the CNI plugin's per-network masquerade set (`ipMasq`) as a trait, so ADD's
//! rollback and DEL can be tested against the recording twin.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::nft::{NftError, PodMasq};

/// One network's set of masqueraded pod addresses ([`PodMasq`] documents the rules).
pub trait MasqTable {
    /// Masquerades `pod`'s egress, commenting the entry `container_id/ifname`.
    fn add(&self, pod: IpNetwork, container_id: &str, ifname: &str) -> Result<(), NftError>;
    /// Stops masquerading `ip` (idempotent).
    fn remove(&self, ip: IpAddr) -> Result<(), NftError>;
    /// Every entry with its comment.
    fn elements(&self) -> Result<Vec<(IpAddr, String)>, NftError>;
    /// Whether `ip` is masqueraded.
    fn contains(&self, ip: IpAddr) -> Result<bool, NftError> {
        Ok(self.elements()?.iter().any(|(e, _)| *e == ip))
    }
}

impl MasqTable for PodMasq {
    fn add(&self, pod: IpNetwork, container_id: &str, ifname: &str) -> Result<(), NftError> {
        PodMasq::add(self, pod, container_id, ifname)
    }
    fn remove(&self, ip: IpAddr) -> Result<(), NftError> {
        PodMasq::remove(self, ip)
    }
    fn elements(&self) -> Result<Vec<(IpAddr, String)>, NftError> {
        PodMasq::elements(self)
    }
    fn contains(&self, ip: IpAddr) -> Result<bool, NftError> {
        PodMasq::contains(self, ip)
    }
}
