//! # The host-gw driver
//!
//! No device and no encapsulation: per peer only `<peer subnet> via <peer public IP> dev
//! <ext>`, which needs the peer on our layer-2 segment; a peer that is not is refused with
//! [`OverlayError::PeerNotDirectlyReachable`] and nothing is programmed for it. It cannot work
//! behind NAT (peers route to the published address), so a public IP other than the
//! interface's is refused at start.
//!
//! IPv6 is the same driver on the IPv6 view of the external interface: `<peer v6 subnet> via
//! <peer PublicIPv6> dev <ext>`, refused (and logged by the caller) when that address is not
//! inside one of the interface's IPv6 prefixes.

use std::any::Any;

use super::driver::{BackendDriver, DeviceSpec};
use super::plan::PeerEntries;
use super::{ExternalInterface, OverlayError, Peer};

/// host-gw backend options (it has none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostGwConfig {}

/// The host-gw backend on one node.
#[derive(Debug)]
pub struct HostGwDriver {
    iface: String,
    mtu: u32,
}

impl HostGwDriver {
    /// The driver on `ext`; refuses a NATed public IP.
    pub fn new(
        _config: &HostGwConfig,
        ext: &ExternalInterface,
    ) -> Result<HostGwDriver, OverlayError> {
        if ext.public_ip != ext.iface_addr {
            return Err(OverlayError::PublicIpMismatch {
                public_ip: ext.public_ip,
                iface_addr: ext.iface_addr,
                iface: ext.name.clone(),
            });
        }
        Ok(HostGwDriver {
            iface: ext.name.clone(),
            mtu: ext.mtu,
        })
    }
}

impl BackendDriver for HostGwDriver {
    fn kind(&self) -> &'static str {
        "host-gw"
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    fn backend_data(&self) -> Option<serde_json::Value> {
        None
    }

    fn device(&self) -> Option<&DeviceSpec> {
        None
    }

    fn peer_entries(&self, p: &Peer, on_link: bool) -> Result<Option<PeerEntries>, OverlayError> {
        if !on_link {
            return Err(OverlayError::PeerNotDirectlyReachable {
                subnet: p.subnet,
                public_ip: p.public_ip,
                iface: self.iface.clone(),
            });
        }
        Ok(Some(PeerEntries::direct(p)))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
