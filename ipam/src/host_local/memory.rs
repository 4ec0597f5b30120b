//! # MemoryStore — the in-memory twin of [`super::DiskStore`]
//!
//! Holds the same data the directory would (address ⇒ raw file content, set ⇒ last
//! reserved address) behind a `Mutex` that plays the role of the `flock`. Because the
//! policy lives in [`super::HostLocal`], tests against this store exercise exactly the code
//! that runs against the disk; the raw-content model also lets tests plant legacy
//! (id-only) or whitespace-padded files.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use super::IpamError;
use super::store::{LockedStore, Store, StoredEntry};

/// Everything a [`MemoryStore`] holds, as a plain value (for snapshots and seeding).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryState {
    /// Reservation "files": address ⇒ content.
    pub files: BTreeMap<IpAddr, String>,
    /// `last_reserved_ip.<set>` markers.
    pub last_reserved: BTreeMap<usize, IpAddr>,
}

/// An in-memory store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<MemoryState>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store pre-filled with `state`.
    pub fn with_state(state: MemoryState) -> Self {
        MemoryStore {
            state: Mutex::new(state),
        }
    }

    /// A copy of the current contents.
    pub fn snapshot(&self) -> MemoryState {
        self.guard().clone()
    }

    fn guard(&self) -> MutexGuard<'_, MemoryState> {
        // A panic while holding the lock cannot leave the maps half-updated in a way
        // that matters more than on disk after a crash: keep going.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The locked view of a [`MemoryStore`].
#[derive(Debug)]
pub struct MemoryLock<'a>(MutexGuard<'a, MemoryState>);

impl Store for MemoryStore {
    type Locked<'a> = MemoryLock<'a>;

    fn lock(&self) -> Result<MemoryLock<'_>, IpamError> {
        Ok(MemoryLock(self.guard()))
    }

    fn lock_existing(&self) -> Result<Option<MemoryLock<'_>>, IpamError> {
        Ok(Some(MemoryLock(self.guard())))
    }
}

impl LockedStore for MemoryLock<'_> {
    fn content_of(&mut self, ip: IpAddr) -> Result<Option<String>, IpamError> {
        Ok(self.0.files.get(&ip).cloned())
    }

    fn entries(&mut self) -> Result<Vec<StoredEntry>, IpamError> {
        Ok(self
            .0
            .files
            .iter()
            .map(|(ip, content)| StoredEntry {
                ip: *ip,
                content: content.clone(),
            })
            .collect())
    }

    fn create(&mut self, ip: IpAddr, content: &str) -> Result<bool, IpamError> {
        if self.0.files.contains_key(&ip) {
            return Ok(false);
        }
        self.0.files.insert(ip, content.to_string());
        Ok(true)
    }

    fn remove(&mut self, ip: IpAddr) -> Result<bool, IpamError> {
        Ok(self.0.files.remove(&ip).is_some())
    }

    fn last_reserved(&mut self, set: usize) -> Result<Option<IpAddr>, IpamError> {
        Ok(self.0.last_reserved.get(&set).copied())
    }

    fn set_last_reserved(&mut self, set: usize, ip: IpAddr) -> Result<(), IpamError> {
        self.0.last_reserved.insert(set, ip);
        Ok(())
    }
}
