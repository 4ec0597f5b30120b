//! # The reservation store
//!
//! Storage is separated from policy, as in the reference (`backend.Store` with a disk and a
//! fake implementation). A store is "a directory of tiny files under one lock": a file per
//! reserved address holding its owner text, plus one `last_reserved_ip.<set>` marker per
//! range set. Everything host-local decides — owner encoding, round-robin, matching on
//! release — lives in [`super::HostLocal`], so [`super::DiskStore`] and
//! [`super::MemoryStore`] cannot disagree on semantics.
//!
//! Every operation needs the lock, and the type system enforces it: the only way to reach
//! the data is through the guard returned by [`Store::lock`], and dropping the guard releases
//! the lock (for the disk store, `flock(LOCK_UN)` by closing the `lock` file).

use std::net::IpAddr;

use super::IpamError;

/// One reservation as stored: the address and the raw owner text (untrimmed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEntry {
    /// The reserved address (the file name).
    pub ip: IpAddr,
    /// The file content, e.g. `"<containerid>\r\n<ifname>"`.
    pub content: String,
}

/// A lockable reservation store.
pub trait Store {
    /// The locked view; dropping it releases the lock.
    type Locked<'a>: LockedStore
    where
        Self: 'a;

    /// Take the exclusive lock (blocking), creating the backing directory if needed.
    fn lock(&self) -> Result<Self::Locked<'_>, IpamError>;

    /// Take the exclusive lock if the store exists; `Ok(None)` when it was never created
    /// (nothing allocated yet), so read-only and release paths create nothing.
    fn lock_existing(&self) -> Result<Option<Self::Locked<'_>>, IpamError>;
}

/// Operations available while holding a store's lock.
pub trait LockedStore {
    /// Every reservation (one directory scan for the disk store), in no particular order.
    fn entries(&mut self) -> Result<Vec<StoredEntry>, IpamError>;

    /// The content of the reservation file for `ip` (its canonical name), `None` if absent.
    fn content_of(&mut self, ip: IpAddr) -> Result<Option<String>, IpamError>;

    /// Create the reservation for `ip` exclusively (`O_EXCL`); `Ok(false)` if it exists.
    fn create(&mut self, ip: IpAddr, content: &str) -> Result<bool, IpamError>;

    /// Delete the reservation for `ip`; `Ok(false)` if there was none.
    fn remove(&mut self, ip: IpAddr) -> Result<bool, IpamError>;

    /// The `last_reserved_ip.<set>` marker; `None` when absent or unparsable.
    fn last_reserved(&mut self, set: usize) -> Result<Option<IpAddr>, IpamError>;

    /// Overwrite the `last_reserved_ip.<set>` marker.
    fn set_last_reserved(&mut self, set: usize, ip: IpAddr) -> Result<(), IpamError>;
}
