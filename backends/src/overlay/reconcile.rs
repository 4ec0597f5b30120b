//! # The kernel half of reconcile: observe, then apply a [`Plan`]
//!
//! [`Overlay::reconcile`] reads only what we own (the VXLAN device and what hangs off it, and
//! routes tagged with [`ROUTE_PROTOCOL`]) plus the external interface's connected subnets,
//! hands that to the pure planner and applies the resulting ops in order.
//!
//! Failure handling: a failing op of one peer stops the remaining ops *of that peer* (a route
//! must not be installed when its neighbour or FDB entry could not be) and is reported in
//! [`ReconcileReport::errors`]; every other peer is still programmed. Only failures that make
//! everything else pointless (the dumps, the device itself) abort the reconcile with `Err`.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::{IpNetwork, Ipv4Network};

use super::plan::{
    DeviceState, Observed, ObservedNeigh, Op, RouteDev, RouteSpec, desired_state, plan,
};
use super::{Overlay, OverlayError, ROUTE_PROTOCOL, ReconcileReport};
use crate::netlink::{IpFamily, Route, VxlanOutcome};

fn v4_nets(nets: Vec<IpNetwork>) -> Vec<Ipv4Network> {
    nets.into_iter()
        .filter_map(|n| match n {
            IpNetwork::V4(v4) => Some(v4),
            IpNetwork::V6(_) => None,
        })
        .collect()
}

fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    }
}

impl Overlay {
    /// Makes the kernel match the desired state (own subnet and peers): creates or repairs the
    /// VXLAN device (udp: the TUN device's MTU and up state, `ip link set flannel0 mtu M up`,
    /// reopening it if it vanished; its `<own>.0/32` address; `ip route replace <Network> dev
    /// flannel0 proto 150`), writes missing or wrong neighbours, FDB entries and routes
    /// (`ip neigh replace`, `bridge fdb replace`, `ip route replace ... proto 150`) and deletes
    /// stale ones of ours. Routes with other protocols are never touched.
    ///
    /// Per-peer failures (including peers refused by policy, such as a host-gw peer that is not
    /// directly reachable) are collected in the report; `Err` only when the kernel state could
    /// not be read or the VXLAN device could not be ensured.
    pub async fn reconcile(&mut self) -> Result<ReconcileReport, OverlayError> {
        let mut report = ReconcileReport::default();
        let observed = self.observe().await?;
        let ext_nets = v4_nets(self.nl.addresses(self.ext.index).await?);
        let (desired, refused) =
            desired_state(&self.cfg, &self.ext, &ext_nets, self.own, &self.peers);
        report.errors.extend(refused);
        let plan = plan(&desired, &observed);
        report.kept = plan.kept;

        let mut failed: HashSet<Ipv4Network> = HashSet::new();
        for op in &plan.ops {
            if let Some(peer) = op.peer()
                && failed.contains(&peer)
            {
                continue;
            }
            #[cfg(feature = "udp")]
            if matches!(op, Op::EnsureDevice) && self.udp.is_some() {
                report.device = Some(self.ensure_tun_link().await?);
                continue;
            }
            match self.apply(op).await {
                Ok(Some(outcome)) => report.device = Some(outcome),
                Ok(None) if op.is_removal() => report.removed += 1,
                Ok(None) => report.added += 1,
                Err(e) => {
                    if matches!(op, Op::EnsureDevice) {
                        return Err(e.into());
                    }
                    tracing::warn!(?op, error = %e, "reconcile step failed");
                    match op.peer() {
                        Some(subnet) => {
                            failed.insert(subnet);
                            report.errors.push(OverlayError::Peer { subnet, source: e });
                        }
                        None => report.errors.push(e.into()),
                    }
                }
            }
        }
        if report.added + report.removed > 0 || !report.errors.is_empty() {
            tracing::info!(
                added = report.added,
                removed = report.removed,
                kept = report.kept,
                errors = report.errors.len(),
                "overlay reconciled"
            );
        }
        Ok(report)
    }

    /// Removes everything this overlay installed: every route with [`ROUTE_PROTOCOL`]
    /// (`ip route flush proto 150`) and the VXLAN device (`ip link del flannel.<VNI>`, which
    /// takes its neighbours and FDB entries along). Not used at shutdown (restarts are hitless);
    /// for tests and tools. The desired state is kept, so a later reconcile rebuilds it all.
    pub async fn remove_all(&mut self) -> Result<(), OverlayError> {
        for r in self.nl.routes(IpFamily::V4).await? {
            if r.protocol == ROUTE_PROTOCOL {
                self.nl.del_route(&r).await?;
            }
        }
        if let Some(spec) = &self.spec {
            self.nl.del_link(&spec.name).await?;
        }
        self.dev_index = None;
        Ok(())
    }

    /// Reads what we own from the kernel.
    async fn observe(&mut self) -> Result<Observed, OverlayError> {
        let mut observed = Observed::empty(DeviceState::Ok);
        self.dev_index = None;
        if let Some(spec) = &self.spec {
            let dev = self.nl.vxlan_link(&spec.name).await?;
            observed.device = match &dev {
                Some(d) if d.link.kind.as_deref() == Some("vxlan") && spec.identity_matches(d) => {
                    self.dev_index = Some(d.link.index);
                    if d.link.mtu == spec.mtu && d.link.mac == Some(spec.mac) && d.link.admin_up {
                        DeviceState::Ok
                    } else {
                        DeviceState::NeedsFix
                    }
                }
                _ => DeviceState::Missing,
            };
            if let Some(idx) = self.dev_index {
                observed.addresses = v4_nets(self.nl.addresses(idx).await?);
                observed.neighs = self
                    .nl
                    .neighbours(idx)
                    .await?
                    .into_iter()
                    .filter_map(|n| {
                        Some(ObservedNeigh {
                            ip: v4(n.ip)?,
                            mac: n.mac,
                            permanent: n.permanent,
                        })
                    })
                    .collect();
                observed.fdb = self
                    .nl
                    .fdb_entries(idx)
                    .await?
                    .into_iter()
                    .map(|e| (e.mac, e.dst.and_then(v4)))
                    .collect();
            }
        }
        #[cfg(feature = "udp")]
        if self.udp.is_some() {
            let mtu = self.mtu();
            observed.device = match self.nl.link(crate::udp::TUN_NAME).await? {
                Some(l) if l.kind.as_deref() == Some("tun") => {
                    self.dev_index = Some(l.index);
                    if l.mtu == mtu && l.admin_up {
                        DeviceState::Ok
                    } else {
                        DeviceState::NeedsFix
                    }
                }
                _ => DeviceState::Missing,
            };
            if let Some(idx) = self.dev_index {
                observed.addresses = v4_nets(self.nl.addresses(idx).await?);
            }
        }
        observed.routes = self
            .nl
            .routes(IpFamily::V4)
            .await?
            .into_iter()
            .filter(|r| r.protocol == ROUTE_PROTOCOL)
            .filter_map(|r| {
                let IpNetwork::V4(dst) = r.dst else {
                    return None;
                };
                let dev = match r.oif {
                    Some(o) if Some(o) == self.dev_index => RouteDev::Overlay,
                    Some(o) if o == self.ext.index => RouteDev::External,
                    other => RouteDev::Other(other),
                };
                Some(RouteSpec {
                    dst,
                    gateway: r.gateway.and_then(v4),
                    dev,
                    onlink: r.onlink,
                })
            })
            .collect();
        Ok(observed)
    }

    fn device_index(&self) -> Result<u32, crate::netlink::NetlinkError> {
        self.dev_index.ok_or_else(|| {
            crate::netlink::NetlinkError::NotFound(format!(
                "{}: vxlan device missing",
                self.device_name().unwrap_or("overlay device")
            ))
        })
    }

    fn kernel_route(&self, r: &RouteSpec) -> Result<Route, crate::netlink::NetlinkError> {
        let mut route = Route::new(IpNetwork::V4(r.dst)).protocol(ROUTE_PROTOCOL);
        if let Some(gw) = r.gateway {
            route = route.via(IpAddr::V4(gw));
        }
        route = match r.dev {
            RouteDev::Overlay => route.dev(self.device_index()?),
            RouteDev::External => route.dev(self.ext.index),
            RouteDev::Other(Some(i)) => route.dev(i),
            RouteDev::Other(None) => route,
        };
        if r.onlink {
            route = route.onlink();
        }
        if r.gateway.is_none() {
            // A device route (udp's `<Network> dev flannel0`), as `ip route add` makes it.
            route = route.scope(crate::netlink::RT_SCOPE_LINK);
        }
        Ok(route)
    }

    /// Applies one op. Returns the device outcome for [`Op::EnsureDevice`].
    async fn apply(
        &mut self,
        op: &Op,
    ) -> Result<Option<VxlanOutcome>, crate::netlink::NetlinkError> {
        match op {
            Op::EnsureDevice => {
                let Some(spec) = &self.spec else {
                    return Ok(None);
                };
                let (dev, outcome) = self.nl.ensure_vxlan(spec).await?;
                self.dev_index = Some(dev.link.index);
                return Ok(Some(outcome));
            }
            Op::AddAddress(a) => {
                self.nl
                    .add_address(self.device_index()?, IpNetwork::V4(*a))
                    .await?
            }
            Op::DelAddress(a) => {
                self.nl
                    .del_address(self.device_index()?, IpNetwork::V4(*a))
                    .await?
            }
            Op::ReplaceNeigh { ip, mac, .. } => {
                self.nl
                    .replace_neigh(self.device_index()?, IpAddr::V4(*ip), *mac)
                    .await?
            }
            Op::ReplaceFdb { mac, dst, .. } => {
                self.nl
                    .replace_fdb(self.device_index()?, *mac, IpAddr::V4(*dst))
                    .await?
            }
            Op::ReplaceRoute { route, .. } => {
                self.nl.replace_route(&self.kernel_route(route)?).await?
            }
            Op::DelRoute(route) => self.nl.del_route(&self.kernel_route(route)?).await?,
            Op::DelNeigh(ip) => {
                self.nl
                    .del_neigh(self.device_index()?, IpAddr::V4(*ip))
                    .await?
            }
            Op::DelFdb { mac, dst } => {
                self.nl
                    .del_fdb(self.device_index()?, *mac, dst.map(IpAddr::V4))
                    .await?
            }
        }
        Ok(None)
    }
}
