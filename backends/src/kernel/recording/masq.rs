//! The nftables masquerade set of the recording kernel.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::RecordingKernel;
use crate::kernel::masq_table::MasqTable;
use crate::kernel::nft::NftError;

/// The masquerade set of one network in a [`RecordingKernel`].
#[derive(Clone, Debug)]
pub struct RecordingMasq {
    pub(super) kernel: RecordingKernel,
    pub(super) network: String,
}

impl RecordingMasq {
    fn nft_call(&self, what: String) -> std::result::Result<(), NftError> {
        self.kernel.call(what).map_err(|e| NftError::Output {
            action: "recorded".into(),
            reason: e.to_string(),
        })
    }
}

impl MasqTable for RecordingMasq {
    fn add(
        &self,
        pod: IpNetwork,
        container_id: &str,
        ifname: &str,
    ) -> std::result::Result<(), NftError> {
        self.nft_call(format!("masq_add {} {}", self.network, pod.ip()))?;
        self.kernel
            .world()
            .masq
            .entry(self.network.clone())
            .or_default()
            .insert(pod.ip(), format!("{container_id}/{ifname}"));
        Ok(())
    }

    fn remove(&self, ip: IpAddr) -> std::result::Result<(), NftError> {
        self.nft_call(format!("masq_remove {} {ip}", self.network))?;
        if let Some(set) = self.kernel.world().masq.get_mut(&self.network) {
            set.remove(&ip);
        }
        Ok(())
    }

    fn elements(&self) -> std::result::Result<Vec<(IpAddr, String)>, NftError> {
        self.nft_call(format!("masq_elements {}", self.network))?;
        Ok(self
            .kernel
            .masq_entries(&self.network)
            .into_iter()
            .collect())
    }
}
