//! # overlays — one [`Overlay`] per enabled address family, driven as one
//!
//! flannel runs its IPv4 and IPv6 halves side by side: a dual-stack vxlan node has
//! `flannel.<VNI>` and `flannel-v6.<VNI>`, a dual-stack host-gw node IPv4 and IPv6 routes. Here
//! each half is its own [`Overlay`] (its own driver on its family's view of the external
//! interface, owning only its family's routes), and [`NodeOverlays`] hands each the matching
//! half of the own lease and of every peer lease. The daemon's loop talks to this type only.

use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{Context, Result};
use backends::kernel::netlink::{Change, IpFamily, Netlink};
use backends::overlay::Overlay;
use ipam::lease::{Lease, LeaseAttrs, LeaseEvent, LeaseWatcher};
use ipnetwork::IpNetwork;

use crate::backend::{backend_driver, external, families, peer_of, peers, subnet_of};
use crate::iface::SelectedInterface;
use crate::network_config::NetworkConfig;

/// The node's overlays, IPv4 first.
#[derive(Debug)]
pub struct NodeOverlays {
    overlays: Vec<Overlay>,
    /// When the last full reconcile ended and how long it took (for the periodic pass).
    last_pass: (Instant, Duration),
}

/// The shortest interval between periodic full reconciles (flannel's `routeCheck` runs every
/// 10 s for host-gw).
pub const PERIODIC_PASS_MIN: Duration = Duration::from_secs(10);
/// The longest: drift nobody told us about (a lost notification) is repaired within this.
pub const PERIODIC_PASS_MAX: Duration = Duration::from_secs(60);
/// A periodic pass may take at most 1/this of the time: a pass over 10,000 peers (three
/// kernel dumps, ~50 ms) then runs every 25 s instead of every 10 s, so holding a large
/// cluster costs ~2 ms of CPU per second rather than 5. Changes that arrive as netlink
/// notifications are repaired at once regardless.
pub const PERIODIC_PASS_SHARE: u32 = 500;

/// The interval after a full pass that took `pass`.
pub fn periodic_interval(pass: Duration) -> Duration {
    (pass * PERIODIC_PASS_SHARE).clamp(PERIODIC_PASS_MIN, PERIODIC_PASS_MAX)
}

impl NodeOverlays {
    /// Creates (or adopts) every enabled family's backend device on `ext`.
    pub async fn new(
        nl: &Netlink,
        network: &NetworkConfig,
        ext: &SelectedInterface,
        wireguard: &flannel_wireguard::WireguardPaths,
    ) -> Result<NodeOverlays> {
        let mut overlays = Vec::new();
        for family in families(network) {
            let view = external(ext, family)
                .with_context(|| format!("interface {} has no {family:?} address", ext.name))?;
            let driver = backend_driver(network, &view, wireguard)
                .with_context(|| format!("set up the {family:?} backend"))?;
            tracing::info!(backend = driver.kind(), ?family, device = ?driver.device().map(|d| d.name().to_string()),
                "backend driver chosen");
            let overlay = Overlay::new(nl.clone(), driver, view)
                .await
                .with_context(|| format!("set up the {family:?} backend"))?;
            overlays.push(overlay);
        }
        Ok(NodeOverlays {
            overlays,
            last_pass: (Instant::now(), Duration::ZERO),
        })
    }

    /// When the next periodic full reconcile is due: [`periodic_interval`] after the last full
    /// reconcile of any cause.
    pub fn next_periodic_pass(&self) -> Instant {
        let (ended, took) = self.last_pass;
        ended + periodic_interval(took)
    }

    /// The overlays, IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = &Overlay> {
        self.overlays.iter()
    }

    fn of(&self, family: IpFamily) -> Option<&Overlay> {
        self.overlays.iter().find(|o| o.family() == family)
    }

    /// The lease's `BackendType`.
    pub fn backend_type(&self) -> &'static str {
        self.overlays.first().map_or("", |o| o.backend_type())
    }

    /// The pods' MTU: the smallest of the families' (an IPv6 underlay costs 20 bytes more).
    pub fn mtu(&self) -> u32 {
        self.overlays.iter().map(Overlay::mtu).min().unwrap_or(1500)
    }

    /// Our lease's attributes: `PublicIP` (`0.0.0.0` in an IPv6-only network, as flannel
    /// writes it), `PublicIPv6`, and each family's `BackendData`.
    pub fn lease_attrs(&self, ext: &SelectedInterface) -> LeaseAttrs {
        let public_ip = ext.public_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let mut attrs = LeaseAttrs::new(public_ip, self.backend_type());
        if let Some(v4) = self.of(IpFamily::V4) {
            attrs.backend_data = v4.backend_data().map(Into::into);
        }
        if let Some(v6) = self.of(IpFamily::V6) {
            attrs.public_ipv6 = ext.public_ipv6;
            attrs.backend_v6_data = v6.backend_data().map(Into::into);
        }
        attrs
    }

    /// Hands each overlay its half of our own lease.
    pub fn set_own(&mut self, own: &Lease) {
        for o in &mut self.overlays {
            let subnet = match o.family() {
                IpFamily::V4 => own.ipv4_subnet().map(IpNetwork::V4),
                IpFamily::V6 => own.ipv6_subnet.map(IpNetwork::V6),
            };
            if let Some(s) = subnet {
                o.set_own_subnet(s);
            }
        }
    }

    /// Hands each overlay its half of every peer lease.
    pub fn set_peers(&mut self, watcher: &LeaseWatcher) {
        let backend_type = self.backend_type();
        for o in &mut self.overlays {
            o.set_peers(peers(watcher, backend_type, o.family()));
        }
    }

    /// Applies lease changes one peer at a time ([`Overlay::upsert_peer`],
    /// [`Overlay::remove_peer`]): a change costs that peer's kernel entries, not a dump of
    /// every table. `false` when some change could not be applied that way: the caller
    /// then sets the full peer list and reconciles.
    pub async fn apply_events(&mut self, events: &[LeaseEvent]) -> bool {
        let backend_type = self.backend_type();
        for o in &mut self.overlays {
            let family = o.family();
            for event in events {
                let result = match event {
                    LeaseEvent::Added(lease) => match peer_of(lease, backend_type, family) {
                        Some(peer) => o.upsert_peer(peer).await,
                        None => match subnet_of(lease, family) {
                            Some(s) => o.remove_peer(s).await,
                            None => continue,
                        },
                    },
                    LeaseEvent::Removed(lease) => match subnet_of(lease, family) {
                        Some(s) => o.remove_peer(s).await,
                        None => continue,
                    },
                };
                match result {
                    Ok(report) => {
                        for e in &report.errors {
                            tracing::warn!(?family, error = %e, "peer not programmed");
                        }
                        if report.changed() {
                            tracing::debug!(?family, ?report, "peer programmed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(?family, error = %e,
                            "single-peer update failed; reconciling everything");
                        o.sync_driver_peers();
                        return false;
                    }
                }
            }
            o.sync_driver_peers();
        }
        true
    }

    /// Whether `change` may concern any overlay.
    pub fn is_relevant(&self, change: &Change) -> bool {
        self.overlays.iter().any(|o| o.is_relevant(change))
    }

    /// Reconciles every overlay, logging what each did.
    pub async fn reconcile(&mut self) {
        let started = Instant::now();
        self.reconcile_all().await;
        self.last_pass = (Instant::now(), started.elapsed());
        crate::heap::release_free_heap();
    }

    async fn reconcile_all(&mut self) {
        for o in &mut self.overlays {
            let family = o.family();
            match o.reconcile().await {
                Ok(report) => {
                    for e in &report.errors {
                        tracing::warn!(?family, error = %e, "peer not programmed");
                    }
                    if report.changed() {
                        tracing::info!(?family, ?report, "kernel state reconciled");
                    } else {
                        tracing::debug!(?family, ?report, "kernel state already as desired");
                    }
                }
                Err(e) => tracing::error!(?family, error = %e,
                    "reconcile failed; retrying on the next trigger"),
            }
        }
    }

    /// One renderer for every overlay's counters (`flannel_backend_info` once).
    pub fn metrics_fn(&self) -> Box<dyn Fn() -> String + Send + Sync> {
        let renderers: Vec<_> = self.overlays.iter().map(Overlay::metrics_fn).collect();
        Box::new(move || {
            let mut seen = std::collections::HashSet::new();
            renderers
                .iter()
                .flat_map(|r| r().lines().map(str::to_string).collect::<Vec<_>>())
                .filter(|l| seen.insert(l.clone()))
                .map(|l| l + "\n")
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_periodic_pass_stretches_with_its_own_cost() {
        let ms = Duration::from_millis;
        // Small clusters: flannel's 10 s.
        assert_eq!(periodic_interval(Duration::ZERO), PERIODIC_PASS_MIN);
        assert_eq!(periodic_interval(ms(5)), PERIODIC_PASS_MIN);
        assert_eq!(periodic_interval(ms(20)), PERIODIC_PASS_MIN);
        // 10,000 peers (~50 ms a pass): every 25 s.
        assert_eq!(periodic_interval(ms(50)), Duration::from_secs(25));
        // Never longer than a minute.
        assert_eq!(periodic_interval(Duration::from_secs(1)), PERIODIC_PASS_MAX);
    }
}
