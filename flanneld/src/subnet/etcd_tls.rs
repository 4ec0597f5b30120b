//! # etcd_tls — the files behind `--etcd-cafile`, `--etcd-certfile` and `--etcd-keyfile`
//!
//! etcd-client speaks TLS through tonic on rustls (ring), so the daemon links no OpenSSL.
//! This module turns flannel's three flags into a [`ClientTlsConfig`] and checks the files
//! *before* any handshake, because a handshake failure says little ("bad certificate") while
//! the file says exactly what is wrong:
//!
//! * each file must exist, be readable and hold what its flag promises — at least one PEM
//!   certificate for the CA and the client certificate, one PEM private key for the key;
//!   otherwise the error names the flag, the path and the reason;
//! * a client certificate past its `notAfter` is refused locally with both dates (etcd would
//!   answer with a bare TLS alert);
//! * a key file readable by group or others gets a warning (it stays usable: refusing would
//!   turn a permissions slip into an outage).
//!
//! Without `--etcd-cafile`, `https://` endpoints are verified against the system roots, as Go
//! flannel does. The server name checked is the endpoint's host (name or IP), so the server
//! certificate must carry it in its subjectAltName.
//!
//! Every error is an [`EtcdFileError`] that the daemon logs as one line and retries with
//! backoff: a certificate that is missing at boot (written later by a provisioning agent) or
//! expired (about to be rotated) must not need a restart.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Certificate, Identity, TlsOptions};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS file that cannot be used, with the flag it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} {path}: {reason}")]
pub struct EtcdFileError {
    /// `--etcd-cafile`, `--etcd-certfile` or `--etcd-keyfile`.
    pub flag: &'static str,
    /// The path as given.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
    /// The metric label of the failure (`tls_file`, `tls_client_cert_expired`).
    pub kind: &'static str,
}

impl EtcdFileError {
    fn new(flag: &'static str, path: &Path, reason: impl Into<String>) -> Self {
        Self {
            flag,
            path: path.to_path_buf(),
            reason: reason.into(),
            kind: "tls_file",
        }
    }
}

/// The TLS flags as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--etcd-cafile`.
    pub ca_file: Option<PathBuf>,
    /// `--etcd-certfile`.
    pub cert_file: Option<PathBuf>,
    /// `--etcd-keyfile`.
    pub key_file: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether any TLS flag is set.
    pub fn any(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Reads and checks the files (see the module docs) and builds the client TLS config.
    /// Warnings (a group/world-readable key) go to the log.
    pub fn load(&self, now: SystemTime) -> Result<LoadedTls, EtcdFileError> {
        let mut tls = TlsOptions::new().with_native_roots();
        let mut material = TlsMaterial::default();
        if let Some(ca) = &self.ca_file {
            let pem = read("--etcd-cafile", ca)?;
            let n = CertificateDer::pem_slice_iter(&pem)
                .filter(|c| c.is_ok())
                .count();
            if n == 0 {
                return Err(EtcdFileError::new(
                    "--etcd-cafile",
                    ca,
                    "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                ));
            }
            // Only the given CA: an etcd CA is private, the system roots must not vouch for it.
            tls = TlsOptions::new().ca_certificate(Certificate::from_pem(&pem));
            material.ca_pem = Some(pem);
        }
        match (&self.cert_file, &self.key_file) {
            (None, None) => {}
            (Some(_), None) => {
                return Err(EtcdFileError::new(
                    "--etcd-certfile",
                    self.cert_file.as_deref().unwrap_or(Path::new("")),
                    "given without --etcd-keyfile (the client certificate needs its key)",
                ));
            }
            (None, Some(key)) => {
                return Err(EtcdFileError::new(
                    "--etcd-keyfile",
                    key,
                    "given without --etcd-certfile (the key needs its client certificate)",
                ));
            }
            (Some(cert), Some(key)) => {
                let cert_pem = read("--etcd-certfile", cert)?;
                let first = CertificateDer::pem_slice_iter(&cert_pem)
                    .find_map(Result::ok)
                    .ok_or_else(|| {
                        EtcdFileError::new(
                            "--etcd-certfile",
                            cert,
                            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                        )
                    })?;
                if let Some(not_after) = not_after(first.as_ref())
                    && not_after < now
                {
                    return Err(EtcdFileError {
                        kind: "tls_client_cert_expired",
                        ..EtcdFileError::new(
                            "--etcd-certfile",
                            cert,
                            format!(
                                "the client certificate expired at {} (now {}); renew it",
                                format_utc(not_after),
                                format_utc(now)
                            ),
                        )
                    });
                }
                if let Some(warning) = key_exposure(key) {
                    tracing::warn!("{warning}");
                }
                let key_pem = read("--etcd-keyfile", key)?;
                if PrivateKeyDer::from_pem_slice(&key_pem).is_err() {
                    return Err(EtcdFileError::new(
                        "--etcd-keyfile",
                        key,
                        "holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA or EC)",
                    ));
                }
                tls = tls.identity(Identity::from_pem(&cert_pem, &key_pem));
                material.identity = Some((cert_pem, key_pem));
            }
        }
        Ok(LoadedTls {
            options: tls,
            material,
        })
    }
}

/// The checked files, as etcd-client's options and as bytes for [`probe_handshake`].
#[derive(Debug, Clone)]
pub struct LoadedTls {
    /// For `ConnectOptions::with_tls`.
    pub options: TlsOptions,
    /// The PEM bytes.
    pub material: TlsMaterial,
}

/// PEM bytes of the CA bundle and the client identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsMaterial {
    /// `--etcd-cafile`'s content (system roots when `None`).
    pub ca_pem: Option<Vec<u8>>,
    /// `--etcd-certfile` and `--etcd-keyfile`'s contents.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Connects to `host:port` and completes a TLS handshake with `material`, then waits briefly
/// for the server's verdict on our certificate (with TLS 1.3 a server that rejects the client
/// certificate says so only after the handshake, which gRPC reports as a bare "connection
/// closed"). `Ok` when the server kept the connection open; `Err` with rustls's words
/// otherwise ("received fatal alert: BadCertificate", "invalid peer certificate: ...").
pub async fn probe_handshake(
    host: &str,
    port: u16,
    material: &TlsMaterial,
    timeout: Duration,
) -> Result<(), String> {
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;
    use tokio_rustls::rustls;

    let mut roots = rustls::RootCertStore::empty();
    match &material.ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem).flatten() {
                let _ = roots.add(cert);
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    // The provider etcd-client's channel uses (tonic's `tls-ring`), so the probe negotiates
    // what the real connection negotiates; ring's lack of post-quantum key exchange is why
    // rustls marks it deprecated.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match &material.identity {
        Some((cert_pem, key_pem)) => {
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert_pem).flatten().collect();
            let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host}: {e}"))?;
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| e.to_string())?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        match tokio::time::timeout(timeout / 2, tls.read(&mut byte)).await {
            Err(_) => Ok(()), // still open: the server accepted us and waits for HTTP/2
            Ok(Ok(0)) => Err("the server closed the connection after the handshake".into()),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err("no TLS handshake within the probe timeout".into()))
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, EtcdFileError> {
    std::fs::read(path).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => e.to_string(),
        };
        EtcdFileError::new(flag, path, format!("cannot read it: {why}"))
    })
}

/// The warning for a key file whose mode lets group or others read it.
pub fn key_exposure(key: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(key).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "--etcd-keyfile {}: readable by group or others (mode {mode:04o}); \
             run chmod 600 on it",
            key.display()
        )
    })
}

/// One DER element: (tag, content, rest).
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    Some((tag, content, rest))
}

/// The `notAfter` of an X.509 certificate (RFC 5280 §4.1): Certificate → tbsCertificate →
/// [0] version (optional), serialNumber, signature, issuer, validity { notBefore, notAfter }.
/// `None` when the DER does not have that shape (the check is then skipped).
pub fn not_after(der: &[u8]) -> Option<SystemTime> {
    let (0x30, cert, _) = der_next(der)? else {
        return None;
    };
    let (0x30, tbs, _) = der_next(cert)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after) = der_next(rest)?;
    if tag == 0xa0 {
        rest = after; // explicit version
    }
    for _ in 0..3 {
        let (_, _, after) = der_next(rest)?; // serial, signature algorithm, issuer
        rest = after;
    }
    let (0x30, validity, _) = der_next(rest)? else {
        return None;
    };
    let (_, _, after) = der_next(validity)?; // notBefore
    let (tag, time, _) = der_next(after)?;
    parse_x509_time(tag, time)
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn parse_x509_time(tag: u8, text: &[u8]) -> Option<SystemTime> {
    let s = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if s.len() == 12 => {
            let yy: i64 = s[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &s[2..])
        }
        0x18 if s.len() == 14 => (s[..4].parse().ok()?, &s[4..]),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, hour, min, sec) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec;
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-12-05 02:31:03 UTC`.
pub fn format_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Inverse of days_from_civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x509_times_both_encodings() {
        let utc = parse_x509_time(0x17, b"261205023103Z").unwrap();
        assert_eq!(format_utc(utc), "2026-12-05 02:31:03 UTC");
        let gen_time = parse_x509_time(0x18, b"20500101000000Z").unwrap();
        assert_eq!(format_utc(gen_time), "2050-01-01 00:00:00 UTC");
        assert_eq!(
            format_utc(parse_x509_time(0x17, b"700101000000Z").unwrap()),
            "1970-01-01 00:00:00 UTC"
        );
        assert!(parse_x509_time(0x17, b"2612050231Z").is_none());
        assert!(parse_x509_time(0x04, b"261205023103Z").is_none());
    }

    #[test]
    fn a_group_readable_key_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("client.key");
        std::fs::write(&key, "k").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(key_exposure(&key), None);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let w = key_exposure(&key).unwrap();
        assert!(w.contains("mode 0640") && w.contains("chmod 600"), "{w}");
    }

    #[test]
    fn not_after_rejects_garbage() {
        assert!(not_after(&[]).is_none());
        assert!(not_after(&[0x30, 0x82, 0xff]).is_none());
        assert!(not_after(b"not der at all").is_none());
    }

    #[test]
    fn missing_and_mismatched_files_name_the_flag_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let now = SystemTime::now();
        let e = TlsFiles {
            ca_file: Some(missing.clone()),
            ..TlsFiles::default()
        }
        .load(now)
        .unwrap_err();
        assert_eq!(e.flag, "--etcd-cafile");
        assert!(
            e.to_string()
                .contains("nope.pem: cannot read it: no such file"),
            "{e}"
        );

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello").unwrap();
        let e = TlsFiles {
            ca_file: Some(junk.clone()),
            ..TlsFiles::default()
        }
        .load(now)
        .unwrap_err();
        assert!(e.reason.contains("no PEM certificate"), "{e}");

        let e = TlsFiles {
            cert_file: Some(junk.clone()),
            ..TlsFiles::default()
        }
        .load(now)
        .unwrap_err();
        assert!(e.reason.contains("without --etcd-keyfile"), "{e}");
        let e = TlsFiles {
            key_file: Some(junk),
            ..TlsFiles::default()
        }
        .load(now)
        .unwrap_err();
        assert_eq!(e.flag, "--etcd-keyfile");
    }
}
