//! # The kernel half of reconcile: observe, then apply a [`Plan`]
//!
//! [`Overlay::reconcile`] reads only what we own (the VXLAN device and what hangs off it, and
//! routes tagged with [`ROUTE_PROTOCOL`]) plus the external interface's connected subnets,
//! hands that to the pure planner and applies the resulting ops in order.
//!
//! An overlay serves one address family, its external interface's: a dual-stack node runs
//! two (`flannel.<VNI>` and `flannel-v6.<VNI>`, or host-gw's IPv4 and IPv6 routes), and each
//! reads and owns only the routes of its own family, so neither deletes the other's.
//!
//! Failure handling: a failing op of one peer stops the remaining ops *of that peer* (a route
//! must not be installed when its neighbour or FDB entry could not be) and is reported in
//! [`ReconcileReport::errors`]; every other peer is still programmed. Only failures that make
//! everything else pointless (the dumps, the device itself) abort the reconcile with `Err`.

use std::collections::HashSet;

use ipnetwork::IpNetwork;

use super::driver::DeviceSpec;
use super::plan::{
    DeviceState, Observed, ObservedNeigh, Op, RouteDev, RouteSpec, desired_state, plan_by_family,
};
use super::{Overlay, OverlayError, ROUTE_PROTOCOL, ReconcileReport};
use crate::kernel::Kernel;
use crate::kernel::netlink::{
    IpFamily, KernelWrite, NetlinkError, Route, VxlanOutcome, nexthop_id_for,
};

/// IPv6 link-local addresses (`fe80::/10`): the kernel gives every IPv6-capable device one,
/// the VXLAN device included; they are the kernel's, not ours to plan.
fn is_link_local(n: &IpNetwork) -> bool {
    match n {
        IpNetwork::V6(v6) => v6.ip().is_unicast_link_local(),
        IpNetwork::V4(_) => false,
    }
}

fn of_family(nets: Vec<IpNetwork>, family: IpFamily) -> Vec<IpNetwork> {
    nets.into_iter()
        .filter(|n| IpFamily::of(n.ip()) == family && !is_link_local(n))
        .collect()
}

impl<K: Kernel> Overlay<K> {
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
        let family = self.ext.family();
        let routes = self.kernel.routes(family).await?;
        let observed = self.observe(&routes).await?;
        // Directly reachable: the interface's prefixes; for IPv6 also the routes without a
        // gateway through it, since an IPv6 host often has a /128 address (DHCPv6) and learns
        // its on-link prefix from a router advertisement, as such a route. (IPv4 keeps the
        // address-prefix rule.)
        let mut ext_nets = of_family(self.kernel.addresses(self.ext.index).await?, family);
        if family == IpFamily::V6 {
            ext_nets.extend(
                routes
                    .iter()
                    .filter(|r| {
                        r.oif == Some(self.ext.index)
                            && r.gateway.is_none()
                            && r.protocol != ROUTE_PROTOCOL
                            && !is_link_local(&r.dst)
                    })
                    .map(|r| r.dst),
            );
        }
        let (mut desired, refused) = desired_state(
            self.driver.as_ref(),
            &self.ext,
            &ext_nets,
            self.own,
            &self.peers,
        );
        report.errors.extend(refused);
        for p in &mut desired.peers {
            self.encode_route(&mut p.route);
        }
        self.ext_nets = ext_nets;
        let plan = plan_by_family(&desired, &observed, family);
        report.kept = plan.kept;

        let mut failed: HashSet<IpNetwork> = HashSet::new();
        for op in &plan.ops {
            if let Some(peer) = op.peer()
                && failed.contains(&peer)
            {
                continue;
            }
            match self.apply(op).await {
                Ok(Some(outcome)) => report.device = Some(outcome),
                Ok(None) if op.is_removal() => report.removed += 1,
                Ok(None) => report.added += 1,
                Err(e) => {
                    if matches!(op, Op::EnsureDevice) {
                        return Err(e);
                    }
                    tracing::warn!(?op, error = %e, "reconcile step failed");
                    match (op.peer(), e) {
                        (Some(subnet), OverlayError::Netlink(source)) => {
                            failed.insert(subnet);
                            report.errors.push(OverlayError::Peer { subnet, source });
                        }
                        (Some(subnet), other) => {
                            failed.insert(subnet);
                            report.errors.push(other);
                        }
                        (None, other) => report.errors.push(other),
                    }
                }
            }
        }
        // What is in the kernel now, for the single-peer updates until the next reconcile
        // (a peer whose ops failed is left out: its next update writes it all).
        let fixed = self.driver.fixed_entries();
        let programmed: Vec<_> = desired
            .peers
            .into_iter()
            .filter(|p| !failed.contains(&p.subnet) && !fixed.contains(p))
            .collect();
        self.programmed.reset(programmed, &fixed);
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

    /// Removes everything this overlay installed: every route of its family with
    /// [`ROUTE_PROTOCOL`] (`ip [-6] route flush proto 150`) and the VXLAN device (`ip link del
    /// flannel.<VNI>`, which takes its neighbours and FDB entries along). Not used at shutdown
    /// (restarts are hitless); for tests and tools. The desired state is kept, so a later
    /// reconcile rebuilds it all.
    pub async fn remove_all(&mut self) -> Result<(), OverlayError> {
        for r in self.kernel.routes(self.ext.family()).await? {
            if r.protocol == ROUTE_PROTOCOL {
                self.kernel.del_route(&r).await?;
            }
        }
        if let Some(DeviceSpec::Vxlan(spec)) = self.driver.device() {
            self.kernel.del_link(&spec.name).await?;
        }
        self.dev_index = None;
        // Nothing is programmed any more: a single-peer update must write everything again.
        self.programmed = Default::default();
        Ok(())
    }

    /// Reads what we own from the kernel.
    async fn observe(&mut self, routes: &[Route]) -> Result<Observed, OverlayError> {
        let mut observed = Observed::empty(DeviceState::Ok);
        self.dev_index = None;
        match self.driver.device() {
            None => {}
            Some(DeviceSpec::Vxlan(spec)) => {
                let dev = self.kernel.vxlan_link(&spec.name).await?;
                observed.device = match &dev {
                    Some(d)
                        if d.link.kind.as_deref() == Some("vxlan") && spec.identity_matches(d) =>
                    {
                        self.dev_index = Some(d.link.index);
                        if d.link.mtu == spec.mtu && d.link.mac == Some(spec.mac) && d.link.admin_up
                        {
                            DeviceState::Ok
                        } else {
                            DeviceState::NeedsFix
                        }
                    }
                    _ => DeviceState::Missing,
                };
            }
            Some(DeviceSpec::Owned {
                name, kind, mtu, ..
            }) => {
                observed.device = match self.kernel.link(name).await? {
                    Some(l) if l.kind.as_deref() == Some(*kind) => {
                        self.dev_index = Some(l.index);
                        if l.mtu == *mtu && l.admin_up {
                            DeviceState::Ok
                        } else {
                            DeviceState::NeedsFix
                        }
                    }
                    _ => DeviceState::Missing,
                };
            }
        }
        let family = self.ext.family();
        if let Some(idx) = self.dev_index {
            observed.addresses = of_family(self.kernel.addresses(idx).await?, family);
            if matches!(self.driver.device(), Some(DeviceSpec::Vxlan(_))) {
                observed.neighs = self
                    .kernel
                    .neighbours(idx)
                    .await?
                    .into_iter()
                    // Ours are unicast of our family; the kernel's own (link-local,
                    // multicast, the other family's) are not ours to plan.
                    .filter(|n| {
                        IpFamily::of(n.ip) == family
                            && !is_link_local(&IpNetwork::from(n.ip))
                            && !n.ip.is_multicast()
                    })
                    .map(|n| ObservedNeigh {
                        ip: n.ip,
                        mac: n.mac,
                        permanent: n.permanent,
                    })
                    .collect();
                observed.fdb = self
                    .kernel
                    .fdb_entries(idx)
                    .await?
                    .into_iter()
                    .map(|e| (e.mac, e.dst))
                    .collect();
            }
        }
        // Routes of our family only (the caller's dump): the other family's belong to the
        // other overlay.
        observed.routes.extend(
            routes
                .iter()
                .filter(|r| r.protocol == ROUTE_PROTOCOL)
                .map(|r| {
                    let dev = match r.oif {
                        Some(o) if Some(o) == self.dev_index => RouteDev::Overlay,
                        Some(o) if o == self.ext.index => RouteDev::External,
                        other => RouteDev::Other(other),
                    };
                    RouteSpec {
                        dst: r.dst,
                        gateway: r.gateway,
                        dev,
                        onlink: r.onlink,
                        via_nexthop: r.nexthop_id.is_some()
                            && r.nexthop_id == nexthop_id_for(&r.dst),
                    }
                }),
        );
        Ok(observed)
    }

    /// Creates, adopts or repairs the overlay device; records its index.
    pub(super) async fn ensure_device(
        &mut self,
        device: &DeviceSpec,
    ) -> Result<VxlanOutcome, OverlayError> {
        match device {
            DeviceSpec::Vxlan(spec) => {
                let (dev, outcome) = self.kernel.ensure_vxlan(spec).await?;
                self.dev_index = Some(dev.link.index);
                Ok(outcome)
            }
            DeviceSpec::Owned {
                name, kind, mtu, ..
            } => {
                let mut outcome = VxlanOutcome::Kept;
                let link = match self.kernel.link(name).await? {
                    Some(l) if l.kind.as_deref() == Some(*kind) => l,
                    _ => {
                        tracing::warn!(device = %name, "overlay device missing; reopening it");
                        self.driver.reopen_device()?;
                        outcome = VxlanOutcome::Created;
                        self.kernel.link(name).await?.ok_or_else(|| {
                            NetlinkError::NotFound(format!("{name}: {kind} device missing"))
                        })?
                    }
                };
                let fixed = |o: VxlanOutcome| {
                    if o == VxlanOutcome::Kept {
                        VxlanOutcome::Fixed
                    } else {
                        o
                    }
                };
                if link.mtu != *mtu {
                    self.kernel.set_mtu(link.index, *mtu).await?;
                    outcome = fixed(outcome);
                }
                if !link.admin_up {
                    self.kernel.set_up(link.index).await?;
                    outcome = fixed(outcome);
                }
                self.dev_index = Some(link.index);
                Ok(outcome)
            }
        }
    }

    fn device_index(&self) -> Result<u32, NetlinkError> {
        self.dev_index.ok_or_else(|| {
            NetlinkError::NotFound(format!(
                "{}: overlay device missing",
                self.device_name().unwrap_or("overlay device")
            ))
        })
    }

    /// How `route` is written in this kernel: through a nexthop object where it can be
    /// ([`RouteSpec::via_nexthop`]).
    pub(super) fn encode_route(&self, route: &mut RouteSpec) {
        route.via_nexthop = self.nexthops && route.wants_nexthop();
    }

    fn kernel_route(&self, r: &RouteSpec) -> Result<Route, NetlinkError> {
        let mut route = Route::new(r.dst).protocol(ROUTE_PROTOCOL);
        if let Some(gw) = r.gateway {
            route = route.via(gw);
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
        if r.via_nexthop
            && let Some(id) = nexthop_id_for(&r.dst)
        {
            route = route.nexthop(id);
        }
        if r.gateway.is_none() {
            // A device route (udp's `<Network> dev flannel0`), as `ip route add` makes it.
            route = route.scope(crate::kernel::netlink::RT_SCOPE_LINK);
        }
        Ok(route)
    }

    /// The kernel write of a per-peer op (neighbour, FDB entry or route); the device and its
    /// addresses are not written in batches.
    pub(super) fn kernel_write(&self, op: &Op) -> Result<KernelWrite, OverlayError> {
        Ok(match op {
            Op::ReplaceNeigh { ip, mac, .. } => KernelWrite::ReplaceNeigh {
                ifindex: self.device_index()?,
                ip: *ip,
                mac: *mac,
            },
            Op::ReplaceFdb { mac, dst, .. } => KernelWrite::ReplaceFdb {
                ifindex: self.device_index()?,
                mac: *mac,
                dst: *dst,
            },
            Op::ReplaceRoute { route, .. } => KernelWrite::ReplaceRoute(self.kernel_route(route)?),
            Op::DelRoute(route) => KernelWrite::DelRoute(self.kernel_route(route)?),
            Op::DelNeigh(ip) => KernelWrite::DelNeigh {
                ifindex: self.device_index()?,
                ip: *ip,
            },
            Op::DelFdb { mac, dst } => KernelWrite::DelFdb {
                ifindex: self.device_index()?,
                mac: *mac,
                dst: *dst,
            },
            Op::EnsureDevice | Op::AddAddress(_) | Op::DelAddress(_) => {
                return Err(OverlayError::Netlink(NetlinkError::Other(format!(
                    "{op:?} is not a per-peer write"
                ))));
            }
        })
    }

    /// Applies one op. Returns the device outcome for [`Op::EnsureDevice`].
    pub(super) async fn apply(&mut self, op: &Op) -> Result<Option<VxlanOutcome>, OverlayError> {
        match op {
            Op::EnsureDevice => {
                let Some(device) = self.driver.device().cloned() else {
                    return Ok(None);
                };
                return self.ensure_device(&device).await.map(Some);
            }
            Op::AddAddress(a) => self.kernel.add_address(self.device_index()?, *a).await?,
            Op::DelAddress(a) => self.kernel.del_address(self.device_index()?, *a).await?,
            // Per-peer entries: the same write a single-peer update batches.
            _ => {
                let write = self.kernel_write(op)?;
                for result in self.kernel.write_batch(std::slice::from_ref(&write)).await {
                    result?;
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
