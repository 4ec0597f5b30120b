//! Acquire: the decision (which key to take, given the listing, the config and the previous
//! subnet) as a pure function, [`plan`], and the store round trip that carries it out.

use ipam::lease::{Lease, LeaseAttrs, NO_IPV4_SUBNET, SubnetId};
use ipam::subnet_alloc::{MAX_CANDIDATES, pick};

use super::{ManagerError, SubnetManager};
use crate::network_config::NetworkConfig;
use crate::subnet::{CreateOutcome, LeaseStore, Listing, UpdateOutcome};

/// What one acquire round does, decided from one listing (see [`plan`]).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Plan {
    /// (a) A reservation of ours that already carries our attributes: take it as is.
    Take(Lease),
    /// (a) A leased key of ours the current config could not have handed out: delete it
    /// (compare-and-delete), then re-list.
    DeleteStale(Lease),
    /// (a) A key of ours, rewritten with our attributes: compare-and-update (a leased key gets
    /// a fresh TTL lease, a reservation stays one).
    Update(Lease),
    /// (b) the previous subnet, or (c) a random free one: compare-and-create.
    Create(Lease),
}

/// Decides one acquire round, in flannel's order (see the `manager` module docs): (a) a key
/// that carries our public IP (our `PublicIPv6` in an IPv6-only network), reservations
/// first; (b) each half of `previous` when it is in its pool and free; (c) a random free
/// subnet per family, `random(n)` choosing among `n` candidates. No I/O.
pub(super) fn plan(
    network: &NetworkConfig,
    listing: &Listing,
    attrs: &LeaseAttrs,
    previous: Option<SubnetId>,
    random: &mut impl FnMut(usize) -> usize,
) -> Result<Plan, ManagerError> {
    // (a) a key that already carries our public IP; reservations first.
    let ours = |l: &&Lease| {
        if network.ipv4.is_some() {
            l.attrs.public_ip == attrs.public_ip
        } else {
            l.attrs.public_ipv6.is_some() && l.attrs.public_ipv6 == attrs.public_ipv6
        }
    };
    let mut mine: Vec<&Lease> = listing.leases.iter().filter(ours).collect();
    mine.sort_by_key(|l| l.leased);
    for l in mine {
        if !l.leased {
            if !reservation_fits(network, l) {
                tracing::warn!(key = %l.key(), "a reservation carries our public IP but does not fit the network config; ignoring it");
                continue;
            }
            if l.attrs == *attrs {
                return Ok(Plan::Take(l.clone()));
            }
        } else if !lease_fits(network, l) {
            return Ok(Plan::DeleteStale(l.clone()));
        }
        let mut want = l.clone();
        want.attrs = attrs.clone();
        return Ok(Plan::Update(want));
    }

    // (b) the previous subnet, (c) a random free one; per family.
    let v4 = match &network.ipv4 {
        None => NO_IPV4_SUBNET,
        Some(pool) => {
            let taken = listing.taken_v4();
            let prev = previous.map(|p| p.0).filter(|p| {
                pool.contains_subnet(p) && !taken.iter().any(|t| ipam::net::overlaps(*t, *p))
            });
            match prev {
                Some(p) => p,
                None => {
                    let free = pool.free_subnets(&taken, MAX_CANDIDATES);
                    pick(&free, random).ok_or(ManagerError::Exhausted {
                        network: pool.network,
                        subnet_len: pool.subnet_len,
                        min: pool.subnet_min,
                        max: pool.subnet_max,
                        taken: listing.leases.len() + listing.unreadable.len(),
                    })?
                }
            }
        }
    };
    let v6 = match &network.ipv6 {
        None => None,
        Some(p6) => {
            let taken = listing.taken_v6();
            let prev = previous
                .and_then(|p| p.1)
                .filter(|p| p6.contains_subnet(p) && !taken.iter().any(|t| t.overlaps(*p)));
            match prev {
                Some(p) => Some(p),
                None => {
                    let free = p6.free_subnets(&taken, MAX_CANDIDATES);
                    Some(pick(&free, random).ok_or(ManagerError::Ipv6Exhausted {
                        network: p6.network,
                        subnet_len: p6.subnet_len,
                    })?)
                }
            }
        }
    };
    Ok(Plan::Create(Lease::new(v4, v6, attrs.clone())))
}

/// A reservation of ours is honoured if it has the configured shape inside the network
/// (operators may reserve outside `[SubnetMin, SubnetMax]`).
fn reservation_fits(network: &NetworkConfig, l: &Lease) -> bool {
    let v4 = match &network.ipv4 {
        None => l.subnet == NO_IPV4_SUBNET,
        Some(p) => {
            l.subnet.prefix() == p.subnet_len
                && l.subnet.ip() == l.subnet.network()
                && p.network.contains(l.subnet.ip())
        }
    };
    let v6 = match &network.ipv6 {
        None => true,
        Some(p6) => l.ipv6_subnet.is_some_and(|s| {
            s.prefix() == p6.subnet_len && s.ip() == s.network() && p6.network.contains(s.ip())
        }),
    };
    v4 && v6
}

/// A leased key of ours is reused if the current config could have handed it out.
fn lease_fits(network: &NetworkConfig, l: &Lease) -> bool {
    let v6 = match &network.ipv6 {
        None => true,
        Some(p6) => l.ipv6_subnet.is_some_and(|s| p6.contains_subnet(&s)),
    };
    let v4 = match &network.ipv4 {
        None => l.subnet == NO_IPV4_SUBNET,
        Some(p) => p.contains_subnet(&l.subnet),
    };
    v4 && v6
}

impl<S: LeaseStore> SubnetManager<S> {
    /// Acquires a lease for `attrs` (see the module docs for the order). `previous` holds the
    /// subnets recorded in `subnet.env`, if any (IPv4 half [`NO_IPV4_SUBNET`] when unknown).
    pub async fn acquire(
        &self,
        attrs: &LeaseAttrs,
        previous: Option<SubnetId>,
    ) -> Result<Lease, ManagerError> {
        let rounds = self.cfg.race_rounds.max(1);
        for round in 1..=rounds {
            let listing = self.store.list().await?;
            if let Some(lease) = self.try_acquire(&listing, attrs, previous).await? {
                tracing::info!(key = %lease.key(), leased = lease.leased, round, "acquired subnet lease");
                self.metrics.touch_renewal();
                self.set_own(Some(lease.clone()));
                return Ok(lease);
            }
            tracing::info!(
                round,
                "another node changed the subnet we picked; re-listing"
            );
        }
        Err(ManagerError::RaceLost { rounds })
    }

    /// One acquire round on `listing`: [`plan`], then its one write. `Ok(None)`: a compare
    /// failed, re-list and retry.
    async fn try_acquire(
        &self,
        listing: &Listing,
        attrs: &LeaseAttrs,
        previous: Option<SubnetId>,
    ) -> Result<Option<Lease>, ManagerError> {
        let plan = plan(&self.network, listing, attrs, previous, &mut |n| {
            self.random_index(n)
        })?;
        match plan {
            Plan::Take(l) => Ok(Some(l)),
            Plan::DeleteStale(l) => {
                tracing::info!(key = %l.key(), "our previous lease does not fit the network config any more; deleting it");
                self.store.delete(&l).await?;
                Ok(None)
            }
            Plan::Update(want) => match self.store.update(&want, self.cfg.ttl).await? {
                UpdateOutcome::Updated(u) => Ok(Some(u)),
                UpdateOutcome::Conflict(_) => Ok(None),
            },
            Plan::Create(want) => {
                // A dual-stack key names two subnets: another node may have taken either half
                // under another key since the listing, which only a revision guard sees.
                let dual = want.ipv4_subnet().is_some() && want.ipv6_subnet.is_some();
                let outcome = if dual {
                    self.store
                        .create_if_unchanged(&want, self.cfg.ttl, listing.revision)
                        .await?
                } else {
                    self.store.create_if_absent(&want, self.cfg.ttl).await?
                };
                match outcome {
                    CreateOutcome::Created(l) => Ok(Some(l)),
                    CreateOutcome::Exists(_) => Ok(None),
                }
            }
        }
    }
}
