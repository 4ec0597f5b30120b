//! # DiskStore — the reference on-disk layout
//!
//! `<dataDir>/<network>/` (mode 0755) holds, exactly like the reference host-local plugin:
//!
//! * one file per reserved address, named by the address's text form and containing
//!   `<containerid>\r\n<ifname>` with no trailing newline, created with `O_EXCL` (mode 0600);
//! * `last_reserved_ip.<set index>` holding the text of the last address handed out from
//!   that range set (the round-robin cursor);
//! * an empty `lock` file, held with `flock(LOCK_EX)` for the whole of each operation.
//!
//! The reference (and anything else speaking this format: admins with `rm`, the Go plugin
//! on the same node) may touch the directory between our calls, so nothing is cached across
//! locks. Within one lock the directory is scanned once; each reservation file is read with
//! a plain open/read/close.
//!
//! **Crash consistency.** A runtime may SIGKILL the plugin at any instant. The reference
//! creates the address file and then writes into it, so a kill in between leaves a zero-byte
//! reservation that no DEL can ever match (release is by container ID): the address leaks for
//! good. Here a reservation is written complete to a temporary file (unnamed where possible,
//! see below; else `.reserving.<address>.<pid>`) and then `link(2)`ed to the address name — atomic, and like
//! `O_EXCL` it never overwrites an existing reservation — so an address file is either absent
//! or complete, with the reference's exact bytes. Leftovers are recognised under the lock by
//! the next scan (ADD, DEL, GC) and removed: temporary files (every writer holds the lock, so a
//! temporary file seen under it belongs to a dead process) and zero-byte address files (left
//! by the reference's own non-atomic write, or by earlier versions).

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::fcntl::{Flock, FlockArg, OFlag, openat};
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, linkat, unlinkat};

use super::IpamError;
use super::store::{LockedStore, Store, StoredEntry};

/// Name of the lock file inside the network directory.
pub const LOCK_FILE: &str = "lock";
/// Prefix of the per-range-set round-robin cursor files.
pub const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
/// Prefix of a reservation being written (see the module docs).
pub const RESERVING_PREFIX: &str = ".reserving.";
/// Largest reservation file we read fully (real ones are < 100 bytes).
const MAX_CONTENT: usize = 64 * 1024;

/// A store in one directory, `<dataDir>/<network>`.
#[derive(Clone, Debug)]
pub struct DiskStore {
    dir: PathBuf,
}

fn name_of(ip: IpAddr) -> CString {
    // An address's text never contains NUL.
    CString::new(ip.to_string()).unwrap_or_default()
}

impl DiskStore {
    /// A store rooted at `dir`; nothing is created until the first [`Store::lock`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DiskStore { dir: dir.into() }
    }

    /// The network directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn err(&self, name: &str, e: impl Into<std::io::Error>) -> IpamError {
        IpamError::Io {
            path: if name.is_empty() {
                self.dir.clone()
            } else {
                self.dir.join(name)
            },
            source: e.into(),
        }
    }

    /// Open the directory, then open (creating if missing) and flock its `lock` file.
    /// `Ok(None)` when the directory does not exist.
    fn open_and_lock(&self) -> Result<Option<DiskLock<'_>>, IpamError> {
        let dir = match nix::fcntl::open(
            &self.dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(self.err("", e)),
        };
        // The reference (go-filemutex) creates the lock file O_RDONLY with mode 0750.
        let fd = openat(
            &dir,
            LOCK_FILE,
            OFlag::O_CREAT | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o750),
        )
        .map_err(|e| self.err(LOCK_FILE, e))?;
        let mut file = File::from(fd);
        let lock = loop {
            match Flock::lock(file, FlockArg::LockExclusive) {
                Ok(lock) => break lock,
                Err((f, Errno::EINTR)) => file = f,
                Err((_, e)) => return Err(self.err(LOCK_FILE, e)),
            }
        };
        Ok(Some(DiskLock {
            store: self,
            dir,
            _lock: lock,
            names: HashMap::new(),
        }))
    }
}

/// The locked directory; dropping it unlocks. All file operations are relative to the
/// directory descriptor opened with the lock (`openat`/`unlinkat`), so the path is resolved
/// once per call.
#[derive(Debug)]
pub struct DiskLock<'a> {
    store: &'a DiskStore,
    dir: OwnedFd,
    _lock: Flock<File>,
    /// Actual file names seen by the last scan, for names not in canonical text form.
    names: HashMap<IpAddr, CString>,
}

impl Store for DiskStore {
    type Locked<'a> = DiskLock<'a>;

    fn lock(&self) -> Result<DiskLock<'_>, IpamError> {
        if let Some(lock) = self.open_and_lock()? {
            return Ok(lock);
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&self.dir)
            .map_err(|e| self.err("", e))?;
        self.open_and_lock()?
            .ok_or_else(|| self.err("", Errno::ENOENT))
    }

    fn lock_existing(&self) -> Result<Option<DiskLock<'_>>, IpamError> {
        self.open_and_lock()
    }
}

impl DiskLock<'_> {
    fn err(&self, name: &CStr, e: impl Into<std::io::Error>) -> IpamError {
        self.store.err(&name.to_string_lossy(), e)
    }

    /// Read a small file relative to the directory: one `read` suffices for any real
    /// reservation (a short read from a regular file is end of file); larger files loop.
    fn read_small(&self, name: &CStr) -> Result<Option<Vec<u8>>, IpamError> {
        let fd = match openat(
            &self.dir,
            name,
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(self.err(name, e)),
        };
        let mut f = File::from(fd);
        let mut buf = [0u8; 512];
        let mut out = Vec::new();
        loop {
            match f.read(&mut buf) {
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if n < buf.len() || out.len() > MAX_CONTENT {
                        return Ok(Some(out));
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err(name, e)),
            }
        }
    }

    fn last_name(set: usize) -> CString {
        CString::new(format!("{LAST_RESERVED_PREFIX}{set}")).unwrap_or_default()
    }
}

impl DiskLock<'_> {
    /// The cheap way to an atomic reservation: the content goes into an unnamed file
    /// (`O_TMPFILE`, no directory entry, nothing to leave behind), which is then linked to the
    /// address name — one directory entry, as many as the reference's create. `None` when the
    /// file system or the process cannot do it (no `O_TMPFILE`, no `CAP_DAC_READ_SEARCH` for
    /// linking by descriptor): the caller then uses a named temporary file.
    fn create_unnamed(&self, name: &CStr, content: &str) -> Result<Option<bool>, IpamError> {
        use std::os::fd::AsRawFd;
        let fd = match openat(
            &self.dir,
            c".",
            OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => fd,
            Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => return Ok(None),
            Err(e) => return Err(self.err(name, e)),
        };
        let mut file = File::from(fd);
        file.write_all(content.as_bytes())
            .map_err(|e| self.err(name, e))?;
        crate::fault::point("ipam:written");
        // SAFETY: plain syscall on descriptors we own and a NUL-terminated name.
        let rc = unsafe {
            libc::linkat(
                file.as_raw_fd(),
                c"".as_ptr(),
                self.dir.as_raw_fd(),
                name.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        };
        if rc == 0 {
            crate::fault::point("ipam:linked");
            return Ok(Some(true));
        }
        match Errno::last() {
            Errno::EEXIST => Ok(Some(false)),
            // Linking by descriptor needs CAP_DAC_READ_SEARCH: use a named temporary file.
            Errno::EPERM | Errno::ENOENT => Ok(None),
            e => Err(self.err(name, e)),
        }
    }
}

impl LockedStore for DiskLock<'_> {
    fn content_of(&mut self, ip: IpAddr) -> Result<Option<String>, IpamError> {
        let name = name_of(ip);
        Ok(self
            .read_small(&name)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    fn entries(&mut self) -> Result<Vec<StoredEntry>, IpamError> {
        let mut listing = Dir::openat(
            &self.dir,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.store.err("", e))?;
        let mut out = Vec::new();
        let mut leftovers: Vec<CString> = Vec::new();
        self.names.clear();
        for ent in listing.iter() {
            let ent = ent.map_err(|e| self.store.err("", e))?;
            let name = ent.file_name();
            if name.to_bytes().starts_with(RESERVING_PREFIX.as_bytes()) {
                // A reservation whose writer died before linking it (see the module docs).
                leftovers.push(name.to_owned());
                continue;
            }
            // Only address-named entries are reservations; this skips `.`, `..`, `lock`,
            // `last_reserved_ip.*` and anything else an admin left behind.
            let Some(ip) = name.to_str().ok().and_then(|s| s.parse::<IpAddr>().ok()) else {
                continue;
            };
            if ent.file_type() == Some(Type::Directory) {
                continue;
            }
            // Vanished under our feet (someone ignoring the lock) or unreadable: skipped,
            // as the reference's walk does, so one bad file cannot block every DEL.
            let Ok(Some(bytes)) = self.read_small(name) else {
                continue;
            };
            if bytes.is_empty() {
                // Created but never written (a non-atomic writer killed): not a reservation.
                leftovers.push(name.to_owned());
                continue;
            }
            let content = match String::from_utf8(bytes) {
                Ok(s) => s,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            };
            if name.to_bytes() != ip.to_string().as_bytes() {
                self.names.insert(ip, name.to_owned());
            }
            out.push(StoredEntry { ip, content });
        }
        for name in leftovers {
            // Best effort: a leftover that cannot be removed is still never a reservation.
            let _ = unlinkat(&self.dir, name.as_c_str(), UnlinkatFlags::NoRemoveDir);
        }
        Ok(out)
    }

    /// Writes the reservation under a temporary name, then links it to the address name
    /// (see the module docs): the address file appears complete or not at all.
    fn create(&mut self, ip: IpAddr, content: &str) -> Result<bool, IpamError> {
        let name = name_of(ip);
        if let Some(created) = self.create_unnamed(&name, content)? {
            return Ok(created);
        }
        let tmp = CString::new(format!("{RESERVING_PREFIX}{ip}.{}", std::process::id()))
            .unwrap_or_default();
        let open = || {
            openat(
                &self.dir,
                tmp.as_c_str(),
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
        };
        let fd = match open() {
            Ok(fd) => fd,
            // A dead process with our PID left it: it is ours to replace.
            Err(Errno::EEXIST) => {
                let _ = unlinkat(&self.dir, tmp.as_c_str(), UnlinkatFlags::NoRemoveDir);
                open().map_err(|e| self.err(&tmp, e))?
            }
            Err(e) => return Err(self.err(&tmp, e)),
        };
        let written = File::from(fd).write_all(content.as_bytes());
        let linked = match written {
            Ok(()) => {
                crate::fault::point("ipam:written");
                linkat(
                    &self.dir,
                    tmp.as_c_str(),
                    &self.dir,
                    name.as_c_str(),
                    AtFlags::empty(),
                )
            }
            Err(e) => {
                let _ = unlinkat(&self.dir, tmp.as_c_str(), UnlinkatFlags::NoRemoveDir);
                return Err(self.err(&tmp, e));
            }
        };
        if linked.is_ok() {
            crate::fault::point("ipam:linked");
        }
        let _ = unlinkat(&self.dir, tmp.as_c_str(), UnlinkatFlags::NoRemoveDir);
        match linked {
            Ok(()) => Ok(true),
            Err(Errno::EEXIST) => Ok(false),
            Err(e) => Err(self.err(&name, e)),
        }
    }

    fn remove(&mut self, ip: IpAddr) -> Result<bool, IpamError> {
        let name = self.names.get(&ip).cloned().unwrap_or_else(|| name_of(ip));
        match unlinkat(&self.dir, name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) => {
                self.names.remove(&ip);
                Ok(true)
            }
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(self.err(&name, e)),
        }
    }

    fn last_reserved(&mut self, set: usize) -> Result<Option<IpAddr>, IpamError> {
        let name = Self::last_name(set);
        Ok(self.read_small(&name)?.and_then(|b| {
            std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.trim().parse::<IpAddr>().ok())
        }))
    }

    fn set_last_reserved(&mut self, set: usize, ip: IpAddr) -> Result<(), IpamError> {
        let name = Self::last_name(set);
        // The reference truncates and rewrites (os.WriteFile). Overwriting in place and then
        // trimming to length leaves the same bytes without freeing and reallocating the
        // file's block, which on ext4 costs more than the rest of an allocation. Readers
        // hold the lock, so the intermediate state is never seen.
        let fd = openat(
            &self.dir,
            name.as_c_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map_err(|e| self.err(&name, e))?;
        let text = ip.to_string();
        let f = File::from(fd);
        f.write_all_at(text.as_bytes(), 0)
            .and_then(|()| f.set_len(text.len() as u64))
            .map_err(|e| self.err(&name, e))
    }
}
