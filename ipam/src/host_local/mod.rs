//! # host_local — the reference host-local IPAM, byte-compatible on disk
//!
//! The CNI reference plugin `host-local` is the de-facto pod address allocator for flannel:
//! the flannel CNI plugin hands bridge an `ipam` section of `{"type":"host-local","ranges":
//! [[{"subnet":"<FLANNEL_SUBNET>"}]]}`. Its on-disk state is an API in its own right
//! (admins `rm` files in it, boot scripts wipe it, other tools read it), so this module keeps
//! it byte for byte: see [`DiskStore`] for the layout. A node can switch between the Go
//! binary and this crate in either direction without losing or duplicating a reservation.
//!
//! ## Shape
//!
//! * [`range`]: config entries ([`RangeConfig`]) validated into [`Range`] / [`RangeSet`]
//!   with the reference's defaults and error texts.
//! * [`allocator`]: [`RangeIter`], the round-robin candidate order.
//! * [`store`]: the [`Store`] trait — a directory of tiny files under one lock — with
//!   [`DiskStore`] (the real thing) and [`MemoryStore`] (its in-memory twin).
//! * [`HostLocal`]: the policy — allocate / release / lookup / GC / free count — written
//!   once against the trait.
//!
//! ## Semantics worth knowing
//!
//! * A reservation file holds `<containerid>\r\n<ifname>`; files written before ifname
//!   support hold only `<containerid>` ("legacy"). Contents are compared after trimming
//!   surrounding whitespace, like the reference's `strings.TrimSpace`.
//! * Each call takes the lock once and scans the directory once; allocation then picks the
//!   first free candidate in [`RangeIter`] order without touching the disk for addresses
//!   the scan already showed as taken, and claims it with `O_EXCL`.
//! * Allocation over several range sets (IPv4 + IPv6) is all-or-nothing: on any failure the
//!   files created by the call are removed before the error is returned.
//! * Differences from the reference, all deliberate: the duplicate (id, ifname) check also
//!   applies when an address is requested explicitly; release removes legacy id-only files
//!   even when new-format files matched too (the reference only falls back to them, and so
//!   leaks them in single-range-set configs); the network and IPv4 broadcast addresses are
//!   never allocated even when an explicit `rangeStart`/`rangeEnd` includes them; GC and
//!   free counts exist (the reference has neither).

pub mod allocator;
pub mod disk;
pub mod memory;
pub mod range;
pub mod store;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;

pub use allocator::RangeIter;
pub use disk::DiskStore;
pub use memory::{MemoryState, MemoryStore};
pub use range::{Range, RangeConfig, RangeSet, validate_range_sets};
pub use store::{LockedStore, Store, StoredEntry};

/// Default `dataDir` of the reference plugin.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// Separator between container id and ifname inside a reservation file.
pub const LINE_BREAK: &str = "\r\n";

/// Everything that can go wrong in host-local IPAM.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The range configuration is invalid (reference wording).
    #[error("{0}")]
    InvalidConfig(String),
    /// The network name cannot be used as a directory name.
    #[error(
        "invalid network name {0:?}: must be 1-255 bytes, not \".\" or \"..\", without '/' or NUL"
    )]
    InvalidNetworkName(String),
    /// The (id, ifname) already holds an address in this range set.
    #[error("{ip} has been allocated to {id}, duplicate allocation is not allowed")]
    Duplicate {
        /// The address already held.
        ip: IpAddr,
        /// The container id.
        id: String,
        /// The interface name.
        ifname: String,
    },
    /// Every address of the range set is taken.
    #[error("no IP addresses available in range set: {range}")]
    Exhausted {
        /// The set, as `start-end[,start-end...]`.
        range: String,
    },
    /// A requested address is already reserved (or is the network/broadcast address).
    #[error("requested IP address {0} is not available")]
    RequestedUnavailable(IpAddr),
    /// A requested address is in none of the range sets.
    #[error("requested IP address {0} is not in any configured range")]
    RequestedOutOfRange(IpAddr),
    /// A requested address is its range's gateway.
    #[error("requested ip {0} is subnet's gateway")]
    RequestedGateway(IpAddr),
    /// Two addresses were requested from the same range set; this one could not be served.
    #[error("failed to allocate all requested IPs: {0}")]
    RequestedNotAllocated(IpAddr),
    /// A filesystem operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// One address handed out by [`HostLocal::allocate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// The address with its range's prefix length, e.g. `10.244.1.2/24`.
    pub address: IpNetwork,
    /// The range's gateway.
    pub gateway: IpAddr,
}

/// A reservation as found in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The reserved address.
    pub ip: IpAddr,
    /// The owning container id.
    pub container_id: String,
    /// The owning interface; `None` for a legacy id-only file.
    pub ifname: Option<String>,
}

impl Reservation {
    fn from_entry(e: &StoredEntry) -> Reservation {
        let content = e.content.trim();
        match content.split_once(LINE_BREAK) {
            Some((id, ifname)) => Reservation {
                ip: e.ip,
                container_id: id.to_string(),
                ifname: Some(ifname.to_string()),
            },
            None => Reservation {
                ip: e.ip,
                container_id: content.to_string(),
                ifname: None,
            },
        }
    }
}

/// How a file's trimmed content relates to an (id, ifname).
struct OwnerMatch {
    full: String,
    legacy: String,
}

impl OwnerMatch {
    fn new(id: &str, ifname: &str) -> Self {
        let id = id.trim();
        OwnerMatch {
            full: format!("{id}{LINE_BREAK}{ifname}"),
            legacy: id.to_string(),
        }
    }

    fn matches(&self, content: &str) -> bool {
        let c = content.trim();
        // An empty id would otherwise "own" every empty file.
        c == self.full || (!self.legacy.is_empty() && c == self.legacy)
    }
}

/// The host-local allocator over a [`Store`].
#[derive(Debug)]
pub struct HostLocal<S: Store = DiskStore> {
    store: S,
}

/// Reject names that are not a single safe path component.
fn validate_network_name(network: &str) -> Result<(), IpamError> {
    if network.is_empty()
        || network == "."
        || network == ".."
        || network.contains('/')
        || network.contains('\0')
        || network.len() > 255
    {
        return Err(IpamError::InvalidNetworkName(network.to_string()));
    }
    Ok(())
}

impl HostLocal<DiskStore> {
    /// The allocator for `<data_dir>/<network>`; creates nothing (the directory appears,
    /// mode 0755, on the first [`allocate`](Self::allocate)).
    ///
    /// Rejects a network name that is empty, `.`, `..`, contains `/` or NUL, or is longer
    /// than 255 bytes with [`IpamError::InvalidNetworkName`].
    pub fn open(data_dir: &Path, network: &str) -> Result<Self, IpamError> {
        validate_network_name(network)?;
        Ok(HostLocal {
            store: DiskStore::new(data_dir.join(network)),
        })
    }

    /// The network directory, `<data_dir>/<network>`.
    pub fn dir(&self) -> &Path {
        self.store.dir()
    }
}

impl<S: Store> HostLocal<S> {
    /// An allocator over any store (e.g. [`MemoryStore`] in tests).
    pub fn with_store(store: S) -> Self {
        HostLocal { store }
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Allocate one address per range set for (`id`, `ifname`), under the lock,
    /// all-or-nothing.
    ///
    /// `requested` are addresses the runtime asked for (`CNI_ARGS IP=`, `runtimeConfig.ips`):
    /// each must fall in one of the sets ([`IpamError::RequestedOutOfRange`]), at most one per
    /// set ([`IpamError::RequestedNotAllocated`]), not be a gateway
    /// ([`IpamError::RequestedGateway`]) and be free ([`IpamError::RequestedUnavailable`]).
    /// Sets without a requested address get the next free one in round-robin order
    /// ([`IpamError::Exhausted`] when none is left). If (`id`, `ifname`) — or a legacy
    /// id-only file of `id` — already holds an address in a set, that is
    /// [`IpamError::Duplicate`]. An empty `id`, an empty `sets` or overlapping sets are
    /// [`IpamError::InvalidConfig`].
    pub fn allocate(
        &self,
        id: &str,
        ifname: &str,
        sets: &[RangeSet],
        requested: &[IpAddr],
    ) -> Result<Vec<Allocation>, IpamError> {
        self.allocate_inner(id, ifname, sets, requested, true)
    }

    /// [`HostLocal::allocate`] for a caller that has already established that (`id`,
    /// `ifname`) holds no reservation — the CNI plugin knows it from the attachment's host
    /// interface being absent — so the existing reservation files are neither read nor
    /// listed: candidates are claimed with `O_EXCL` in round-robin order from
    /// `last_reserved_ip`, which costs a few syscalls instead of three per existing
    /// reservation (the reference host-local reads every file on every ADD). The on-disk
    /// result is identical; only the [`IpamError::Duplicate`] check is skipped.
    pub fn allocate_unclaimed(
        &self,
        id: &str,
        ifname: &str,
        sets: &[RangeSet],
        requested: &[IpAddr],
    ) -> Result<Vec<Allocation>, IpamError> {
        self.allocate_inner(id, ifname, sets, requested, false)
    }

    fn allocate_inner(
        &self,
        id: &str,
        ifname: &str,
        sets: &[RangeSet],
        requested: &[IpAddr],
        check_duplicates: bool,
    ) -> Result<Vec<Allocation>, IpamError> {
        if id.trim().is_empty() {
            return Err(IpamError::InvalidConfig(
                "container id must not be empty".into(),
            ));
        }
        if sets.is_empty() {
            return Err(IpamError::InvalidConfig("no IP ranges specified".into()));
        }
        validate_range_sets(sets)?;
        // Which requested address belongs to which set; validated before touching anything.
        let mut wanted: Vec<Option<IpAddr>> = vec![None; sets.len()];
        let mut seen = HashSet::new();
        for ip in requested.iter().map(|ip| ip.to_canonical()) {
            if !seen.insert(ip) {
                continue;
            }
            match sets.iter().position(|s| s.contains(ip)) {
                None => return Err(IpamError::RequestedOutOfRange(ip)),
                Some(i) if wanted[i].is_some() => {
                    return Err(IpamError::RequestedNotAllocated(ip));
                }
                Some(i) => wanted[i] = Some(ip),
            }
        }

        let mut guard = self.store.lock()?;
        let entries = if check_duplicates {
            guard.entries()?
        } else {
            Vec::new()
        };
        let owner = OwnerMatch::new(id, ifname);
        let mut taken: HashSet<IpAddr> = entries.iter().map(|e| e.ip).collect();
        let content = owner.full.clone();

        let mut created: Vec<IpAddr> = Vec::with_capacity(sets.len());
        let result = (|| {
            let mut out = Vec::with_capacity(sets.len());
            for (idx, set) in sets.iter().enumerate() {
                if let Some(e) = entries
                    .iter()
                    .find(|e| owner.matches(&e.content) && set.contains(e.ip))
                {
                    return Err(IpamError::Duplicate {
                        ip: e.ip,
                        id: id.trim().to_string(),
                        ifname: ifname.to_string(),
                    });
                }
                let (range, ip) = match wanted[idx] {
                    Some(ip) => {
                        let range = set
                            .range_for(ip)
                            .ok_or(IpamError::RequestedOutOfRange(ip))?;
                        if ip == range.gateway {
                            return Err(IpamError::RequestedGateway(ip));
                        }
                        if !range.is_allocatable(ip)
                            || taken.contains(&ip)
                            || !guard.create(ip, &content)?
                        {
                            return Err(IpamError::RequestedUnavailable(ip));
                        }
                        (range, ip)
                    }
                    None => {
                        let last = guard.last_reserved(idx)?;
                        let mut found = None;
                        for (ri, ip) in RangeIter::new(set, last) {
                            if taken.contains(&ip) {
                                continue;
                            }
                            if guard.create(ip, &content)? {
                                found = Some((&set.ranges[ri], ip));
                                break;
                            }
                            // Created behind our back by a writer ignoring the lock.
                            taken.insert(ip);
                        }
                        found.ok_or_else(|| IpamError::Exhausted {
                            range: set.to_string(),
                        })?
                    }
                };
                created.push(ip);
                taken.insert(ip);
                guard.set_last_reserved(idx, ip)?;
                let address = IpNetwork::new(ip, range.prefix())
                    .map_err(|e| IpamError::InvalidConfig(e.to_string()))?;
                out.push(Allocation {
                    address,
                    gateway: range.gateway,
                });
            }
            Ok(out)
        })();

        if result.is_err() {
            for ip in &created {
                // Best effort: the original error is the one worth reporting.
                let _ = guard.remove(*ip);
            }
        }
        result
    }

    /// Release exactly `ips`, each only if its file still names (`id`, `ifname`): the undo of
    /// one [`HostLocal::allocate_unclaimed`], which must not touch another invocation's
    /// reservation for the same owner. Reads only those files. Returns the released ones.
    pub fn release_addresses(
        &self,
        id: &str,
        ifname: &str,
        ips: &[IpAddr],
    ) -> Result<Vec<IpAddr>, IpamError> {
        let Some(mut guard) = self.store.lock_existing()? else {
            return Ok(Vec::new());
        };
        let owner = OwnerMatch::new(id, ifname);
        let mut released = Vec::new();
        for ip in ips {
            if guard
                .content_of(*ip)?
                .is_some_and(|content| owner.matches(&content))
                && guard.remove(*ip)?
            {
                released.push(*ip);
            }
        }
        Ok(released)
    }

    /// Release every address held by (`id`, `ifname`), plus legacy files holding only
    /// `id`. A missing directory or no match is success (`Ok(vec![])`). Returns the
    /// released addresses, sorted. A file that cannot be removed does not stop the others;
    /// the first such error is returned after all were tried.
    pub fn release(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        let Some(mut guard) = self.store.lock_existing()? else {
            return Ok(Vec::new());
        };
        let owner = OwnerMatch::new(id, ifname);
        let mut released = Vec::new();
        let mut first_err = None;
        for e in guard.entries()? {
            if !owner.matches(&e.content) {
                continue;
            }
            // Keep going after a failure: release as much as possible, then report.
            match guard.remove(e.ip) {
                Ok(true) => released.push(e.ip),
                Ok(false) => {}
                Err(err) => {
                    first_err.get_or_insert(err);
                }
            }
        }
        if let Some(err) = first_err {
            return Err(err);
        }
        released.sort();
        Ok(released)
    }

    /// The addresses [`release`](Self::release) would free, without changing anything.
    pub fn lookup(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        let Some(mut guard) = self.store.lock_existing()? else {
            return Ok(Vec::new());
        };
        let owner = OwnerMatch::new(id, ifname);
        let mut ips: Vec<IpAddr> = guard
            .entries()?
            .into_iter()
            .filter(|e| owner.matches(&e.content))
            .map(|e| e.ip)
            .collect();
        ips.sort();
        Ok(ips)
    }

    /// Every reservation, sorted by address (`lock`, `last_reserved_ip.*` and names that
    /// are not addresses are skipped).
    pub fn reservations(&self) -> Result<Vec<Reservation>, IpamError> {
        let Some(mut guard) = self.store.lock_existing()? else {
            return Ok(Vec::new());
        };
        let mut out: Vec<Reservation> = guard
            .entries()?
            .iter()
            .map(Reservation::from_entry)
            .collect();
        out.sort_by_key(|r| r.ip);
        Ok(out)
    }

    /// CNI GC: release every reservation for which `keep` returns false, under one lock.
    /// Returns what was released, sorted by address.
    pub fn gc(&self, keep: &dyn Fn(&Reservation) -> bool) -> Result<Vec<Reservation>, IpamError> {
        let Some(mut guard) = self.store.lock_existing()? else {
            return Ok(Vec::new());
        };
        let mut released = Vec::new();
        for e in guard.entries()? {
            let r = Reservation::from_entry(&e);
            if !keep(&r) && guard.remove(e.ip)? {
                released.push(r);
            }
        }
        released.sort_by_key(|r| r.ip);
        Ok(released)
    }

    /// Number of addresses still free in `set` (for CNI STATUS); 0 means exhausted.
    pub fn free_count(&self, set: &RangeSet) -> Result<u128, IpamError> {
        let total = set.size();
        let Some(mut guard) = self.store.lock_existing()? else {
            return Ok(total);
        };
        let used = guard
            .entries()?
            .iter()
            .filter(|e| set.ranges.iter().any(|r| r.is_allocatable(e.ip)))
            .count() as u128;
        Ok(total.saturating_sub(used))
    }
}

#[cfg(test)]
mod tests;
