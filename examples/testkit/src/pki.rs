//! # pki — certificates made at test time with the `openssl` command
//!
//! Production etcd runs with TLS and client certificates, so the tests do too. [`Pki`] keeps a
//! temporary directory of CAs and leaf certificates, all ECDSA P-256 in PEM (keys in PKCS#8,
//! mode 0600), valid for two days — or already expired, for the expiry tests. Nothing is
//! written outside that directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// A certificate and its key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    /// The PEM certificate.
    pub cert: PathBuf,
    /// The PEM private key (0600).
    pub key: PathBuf,
}

/// A directory of test CAs and certificates (see the module docs).
#[derive(Debug)]
pub struct Pki {
    dir: TempDir,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("running openssl (apt-get install openssl): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Pki {
    /// An empty directory.
    pub fn new() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("flannel-rs-pki-")
            .tempdir()
            .map_err(|e| format!("pki tempdir: {e}"))?;
        Ok(Self { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Creates a self-signed CA `name` (`<name>.pem`, `<name>.key`); returns its certificate.
    pub fn ca(&self, name: &str) -> Result<PathBuf, String> {
        let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
        openssl(
            self.dir(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &pem,
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
            ],
        )?;
        restrict(&self.dir().join(&key))?;
        Ok(self.dir().join(pem))
    }

    /// A certificate `name` signed by CA `ca`, with the given subjectAltNames (`IP:1.2.3.4`,
    /// `DNS:localhost`) and usages for both server and client (etcd members use one
    /// certificate for both), valid for `days` (negative: already expired).
    pub fn leaf(&self, ca: &str, name: &str, sans: &[&str], days: i32) -> Result<CertPair, String> {
        let (pem, key, csr, ext) = (
            format!("{name}.pem"),
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.ext"),
        );
        openssl(
            self.dir(),
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        )?;
        let mut extensions = String::from(
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth,clientAuth\n",
        );
        if !sans.is_empty() {
            extensions.push_str(&format!("subjectAltName={}\n", sans.join(",")));
        }
        std::fs::write(self.dir().join(&ext), extensions).map_err(|e| e.to_string())?;
        openssl(
            self.dir(),
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                &days.to_string(),
                "-extfile",
                &ext,
            ],
        )?;
        restrict(&self.dir().join(&key))?;
        Ok(CertPair {
            cert: self.dir().join(pem),
            key: self.dir().join(key),
        })
    }
}

fn restrict(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod 600 {}: {e}", path.display()))
}
