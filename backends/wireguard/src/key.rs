//! The node's WireGuard private key, kept where flannel keeps it.
//!
//! flannel reads `/run/flannel/wgkey` (or `$WIREGUARD_KEY_FILE`) and creates it on first
//! start, so the public key in the lease, and every peer's configuration of us, survives a
//! restart of the daemon. The file holds the standard base64 of the 32 key bytes, as
//! `wg genkey` writes it, and a file written by either implementation is read by the other.
//!
//! Unlike flannel (which creates the file with the umask's mode, then chmods it, then writes
//! it, so a crash can leave an empty file that stops every later start), the key is written to
//! a temporary file created with mode 0600, synced, and renamed into place: the file either
//! does not exist or holds a whole key.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use boringtun::x25519::{PublicKey, StaticSecret};

use crate::config::{decode_key, encode_key};

/// flannel's key file.
pub const DEFAULT_KEY_FILE: &str = "/run/flannel/wgkey";
/// The environment variable flannel reads for another path.
pub const KEY_FILE_ENV: &str = "WIREGUARD_KEY_FILE";

/// The key file to use: `$WIREGUARD_KEY_FILE`, else [`DEFAULT_KEY_FILE`].
pub fn key_file_path() -> PathBuf {
    std::env::var_os(KEY_FILE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KEY_FILE))
}

/// What went wrong with the key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading, creating or renaming failed.
    #[error("wireguard key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file exists but holds no key.
    #[error(
        "wireguard key file {path}: {reason} (it must hold a base64 key as `wg genkey` prints; remove it to have a new key made, which every peer then learns from our lease)"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The node's key pair.
#[derive(Clone)]
pub struct NodeKey {
    /// The private key.
    pub private: StaticSecret,
    /// Its public key (published in the lease's `BackendData.PublicKey`).
    pub public: PublicKey,
    /// Whether it was made by this call (first start on this node).
    pub created: bool,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey")
            .field("public", &encode_key(self.public.as_bytes()))
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// Clamps 32 random bytes into a Curve25519 private key, as `wg genkey` does.
pub fn clamp(mut key: [u8; 32]) -> [u8; 32] {
    key[0] &= 248;
    key[31] &= 127;
    key[31] |= 64;
    key
}

/// Fills `b` from the kernel's random source (`getrandom(2)`).
fn fill_random(b: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < b.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `b`.
        let n = unsafe { libc::getrandom(b[filled..].as_mut_ptr().cast(), b.len() - filled, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

fn random_key() -> io::Result<[u8; 32]> {
    let mut b = [0u8; 32];
    fill_random(&mut b)?;
    Ok(clamp(b))
}

/// A random number (for receiver indices).
pub(crate) fn random_u32() -> io::Result<u32> {
    let mut b = [0u8; 4];
    fill_random(&mut b)?;
    Ok(u32::from_ne_bytes(b))
}

/// Loads the key from `path`, or makes one and stores it there (mode 0600, written whole).
pub fn load_or_create(path: &Path) -> Result<NodeKey, KeyError> {
    let io_err = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let (bytes, created) = match fs::read_to_string(path) {
        Ok(text) => {
            let key = decode_key(&text).map_err(|reason| KeyError::Invalid {
                path: path.to_path_buf(),
                reason,
            })?;
            // An older file (flannel's 0400, or a copy made with a loose umask) keeps its
            // content; only a mode readable by others is tightened.
            if let Ok(meta) = fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o600));
            }
            (key, false)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = random_key().map_err(io_err)?;
            write_atomically(path, encode_key(&key).as_bytes()).map_err(io_err)?;
            (key, true)
        }
        Err(e) => return Err(io_err(e)),
    };
    let private = StaticSecret::from(bytes);
    let public = PublicKey::from(&private);
    Ok(NodeKey {
        private,
        public,
        created,
    })
}

fn write_atomically(path: &Path, content: &[u8]) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = dir {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_mode_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/wgkey");
        let first = load_or_create(&path).unwrap();
        assert!(first.created);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 44, "base64 of 32 bytes, no newline: {text:?}");
        let again = load_or_create(&path).unwrap();
        assert!(!again.created);
        assert_eq!(again.public.as_bytes(), first.public.as_bytes());
        assert_eq!(again.private.to_bytes(), first.private.to_bytes());
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left");
    }

    #[test]
    fn a_wg_genkey_file_is_read_and_a_broken_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wgkey");
        let key = clamp([0x42; 32]);
        fs::write(&path, format!("{}\n", encode_key(&key))).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let k = load_or_create(&path).unwrap();
        assert_eq!(k.private.to_bytes(), key);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600,
            "tightened"
        );
        fs::write(&path, "").unwrap();
        let e = load_or_create(&path).unwrap_err();
        assert!(matches!(e, KeyError::Invalid { .. }), "{e}");
        assert!(e.to_string().contains("wgkey"), "{e}");
    }

    #[test]
    fn generated_keys_are_clamped_and_distinct() {
        let a = random_key().unwrap();
        let b = random_key().unwrap();
        assert_ne!(a, b);
        assert_eq!(a[0] & 7, 0);
        assert_eq!(a[31] & 0xc0, 0x40);
    }
}
