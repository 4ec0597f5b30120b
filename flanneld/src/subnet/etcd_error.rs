//! # etcd_error — what went wrong talking to etcd, in one line an operator can act on
//!
//! etcd-client reports failures as a gRPC status or a transport error whose useful part (a
//! rustls verdict, a refused connection, etcd's own message) sits several `source()` levels
//! down. [`classify`] walks that chain once and files the error under an [`EtcdErrorKind`];
//! [`EtcdContext::explain`] turns the kind into a sentence that names the flag, file or
//! endpoint to fix, followed by the raw chain in brackets for the search engine. The kinds
//! are also the `kind` label of `flannel_etcd_request_errors_total` on `/metrics`.

use std::fmt;
use std::path::PathBuf;

/// The cause of an etcd failure (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EtcdErrorKind {
    /// No member answered: connection refused, reset, no route, DNS.
    Unreachable,
    /// A request got no answer within the request timeout.
    Timeout,
    /// The server's certificate is not signed by a trusted CA.
    TlsUnknownCa,
    /// The server's certificate does not carry the endpoint's host name or IP.
    TlsServerName,
    /// The server's certificate has expired (or is not valid yet).
    TlsServerCertExpired,
    /// The server refused our client certificate (unknown CA, expired, missing).
    TlsClientRejected,
    /// A TLS file is missing, unreadable or malformed.
    TlsFile,
    /// Our client certificate is past its notAfter (checked locally).
    TlsClientCertExpired,
    /// Another TLS failure (e.g. `http://` against a TLS-only member).
    TlsOther,
    /// Wrong user name or password, or auth not enabled.
    AuthFailed,
    /// The user's roles do not allow this key.
    PermissionDenied,
    /// The TTL lease does not exist (expired, revoked).
    LeaseNotFound,
    /// The requested revision was compacted.
    Compacted,
    /// The requested revision is ahead of the store (restored from a snapshot).
    FutureRevision,
    /// Anything else.
    Other,
}

impl EtcdErrorKind {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Timeout => "timeout",
            Self::TlsUnknownCa => "tls_unknown_ca",
            Self::TlsServerName => "tls_server_name",
            Self::TlsServerCertExpired => "tls_server_cert_expired",
            Self::TlsClientRejected => "tls_client_rejected",
            Self::TlsFile => "tls_file",
            Self::TlsClientCertExpired => "tls_client_cert_expired",
            Self::TlsOther => "tls_other",
            Self::AuthFailed => "auth_failed",
            Self::PermissionDenied => "permission_denied",
            Self::LeaseNotFound => "lease_not_found",
            Self::Compacted => "compacted",
            Self::FutureRevision => "future_revision",
            Self::Other => "other",
        }
    }

    /// Whether retrying cannot help until an operator changes something (a certificate, a
    /// password, a role): logged as an error rather than a warning.
    pub fn needs_operator(self) -> bool {
        matches!(
            self,
            Self::TlsUnknownCa
                | Self::TlsServerName
                | Self::TlsServerCertExpired
                | Self::TlsClientRejected
                | Self::TlsFile
                | Self::TlsClientCertExpired
                | Self::TlsOther
                | Self::AuthFailed
                | Self::PermissionDenied
        )
    }
}

impl fmt::Display for EtcdErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The error and all its sources, joined with `: ` (tonic's `Status` shows only its own
/// message in `Display`, so its source is appended too), without repeated segments.
pub fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// Files an etcd-client error under a kind (see the module docs).
pub fn classify(e: &etcd_client::Error) -> EtcdErrorKind {
    classify_text(&chain_text(e))
}

/// [`classify`] on the text of an error chain.
pub fn classify_text(text: &str) -> EtcdErrorKind {
    let t = text.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| t.contains(n));
    if has(&["invalid peer certificate"]) {
        if has(&["unknownissuer", "unknown issuer", "unknown_ca", "unknownca"]) {
            return EtcdErrorKind::TlsUnknownCa;
        }
        if has(&["notvalidforname", "not valid for name"]) {
            return EtcdErrorKind::TlsServerName;
        }
        if has(&["expired", "notvalidyet", "not valid yet"]) {
            return EtcdErrorKind::TlsServerCertExpired;
        }
        return EtcdErrorKind::TlsOther;
    }
    if has(&[
        "received fatal alert",
        "certificate required",
        "certificaterequired",
    ]) {
        return EtcdErrorKind::TlsClientRejected;
    }
    if has(&[
        "authentication failed",
        "invalid user id or password",
        "authentication is not enabled",
        "user name is empty",
        "user name not found",
    ]) {
        return EtcdErrorKind::AuthFailed;
    }
    if has(&["permission denied", "permissiondenied"]) {
        return EtcdErrorKind::PermissionDenied;
    }
    if has(&["lease not found"]) {
        return EtcdErrorKind::LeaseNotFound;
    }
    if has(&["required revision has been compacted"]) {
        return EtcdErrorKind::Compacted;
    }
    if has(&["required revision is a future revision"]) {
        return EtcdErrorKind::FutureRevision;
    }
    // A member that died mid-stream: its TLS session ends without close_notify. That is an
    // outage, not a TLS misconfiguration.
    if has(&["close_notify", "unexpectedeof", "unexpected eof"]) {
        return EtcdErrorKind::Unreachable;
    }
    if has(&[
        "handshake",
        "corrupt message",
        "invalidcontenttype",
        "invalid content type",
        "tls alert",
    ]) {
        return EtcdErrorKind::TlsOther;
    }
    if has(&[
        "connection refused",
        "connect error",
        "connection reset",
        "broken pipe",
        "no route to host",
        "network is unreachable",
        "unavailable",
        "transport error",
        "dns error",
        "failed to lookup",
        "connection closed",
        "deadline",
        "timed out",
        "no leader",
    ]) {
        return EtcdErrorKind::Unreachable;
    }
    EtcdErrorKind::Other
}

/// What the messages name: the endpoints and the flags in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdContext {
    /// `--etcd-endpoints`, comma-joined.
    pub endpoints: String,
    /// `--etcd-cafile`.
    pub ca_file: Option<PathBuf>,
    /// `--etcd-certfile`.
    pub cert_file: Option<PathBuf>,
    /// `--etcd-username`.
    pub username: Option<String>,
    /// `--etcd-prefix`.
    pub prefix: String,
}

impl EtcdContext {
    /// One sentence: the cause, what to check, and the raw error chain in brackets.
    pub fn explain(&self, kind: EtcdErrorKind, raw: &str) -> String {
        let eps = &self.endpoints;
        let ca = match &self.ca_file {
            Some(p) => format!("a CA in --etcd-cafile {}", p.display()),
            None => "a system root CA (no --etcd-cafile given)".to_string(),
        };
        let user = self.username.as_deref().unwrap_or("");
        let what = match kind {
            EtcdErrorKind::Unreachable => format!("no etcd member answered at {eps}"),
            EtcdErrorKind::Timeout => format!("etcd at {eps} did not answer in time"),
            EtcdErrorKind::TlsUnknownCa => {
                format!("TLS: the server certificate of {eps} is not signed by {ca}")
            }
            EtcdErrorKind::TlsServerName => format!(
                "TLS: the server certificate of {eps} does not name the host or IP of the \
                 endpoint (it must be in the certificate's subjectAltName)"
            ),
            EtcdErrorKind::TlsServerCertExpired => {
                format!("TLS: the server certificate of {eps} has expired or is not valid yet")
            }
            EtcdErrorKind::TlsClientRejected => match &self.cert_file {
                Some(c) => format!(
                    "TLS: etcd at {eps} rejected the client certificate --etcd-certfile {} \
                     (not signed by a CA etcd trusts in its --trusted-ca-file, or expired)",
                    c.display()
                ),
                None => format!(
                    "TLS: etcd at {eps} requires a client certificate; give --etcd-certfile \
                     and --etcd-keyfile"
                ),
            },
            EtcdErrorKind::TlsFile | EtcdErrorKind::TlsClientCertExpired => {
                format!("TLS files for {eps}")
            }
            EtcdErrorKind::TlsOther => format!(
                "TLS with {eps} failed (an http:// endpoint for a TLS member, or the reverse?)"
            ),
            EtcdErrorKind::AuthFailed => format!(
                "etcd at {eps} refused user {user:?}: wrong --etcd-username/--etcd-password \
                 (FLANNELD_ETCD_PASSWORD), or auth is not enabled"
            ),
            EtcdErrorKind::PermissionDenied => format!(
                "etcd user {user:?} may not read/write {}: grant it a role with readwrite \
                 on that prefix (etcdctl role grant-permission ROLE --prefix=true readwrite {}/)",
                self.prefix, self.prefix
            ),
            EtcdErrorKind::LeaseNotFound => "the TTL lease no longer exists".to_string(),
            EtcdErrorKind::Compacted => "the requested revision was compacted".to_string(),
            EtcdErrorKind::FutureRevision => {
                "the requested revision is ahead of etcd (restored from a snapshot?)".to_string()
            }
            EtcdErrorKind::Other => format!("etcd at {eps}"),
        };
        format!("{what} [{raw}]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_and_etcd_messages_are_classified() {
        use EtcdErrorKind::*;
        let cases = [
            (
                "status: Unavailable, message: \"error trying to connect: invalid peer certificate: UnknownIssuer\"",
                TlsUnknownCa,
            ),
            (
                "invalid peer certificate: certificate not valid for name \"198.18.0.9\"; certificate is only valid for IpAddress(198.18.0.201)",
                TlsServerName,
            ),
            ("invalid peer certificate: NotValidForName", TlsServerName),
            (
                "invalid peer certificate: certificate expired: verification time 1, but certificate is not valid after 0",
                TlsServerCertExpired,
            ),
            (
                "transport error: received fatal alert: BadCertificate",
                TlsClientRejected,
            ),
            ("received fatal alert: UnknownCA", TlsClientRejected),
            (
                "status: InvalidArgument, message: \"etcdserver: authentication failed, invalid user ID or password\"",
                AuthFailed,
            ),
            (
                "status: PermissionDenied, message: \"etcdserver: permission denied\"",
                PermissionDenied,
            ),
            ("etcdserver: requested lease not found", LeaseNotFound),
            ("mvcc: required revision has been compacted", Compacted),
            (
                "etcdserver: mvcc: required revision is a future revision",
                FutureRevision,
            ),
            (
                "transport error: tcp connect error: Connection refused (os error 111)",
                Unreachable,
            ),
            (
                "h2 protocol error: error reading a body from connection: peer closed connection without sending TLS close_notify",
                Unreachable,
            ),
            ("something else entirely", Other),
        ];
        for (text, want) in cases {
            assert_eq!(classify_text(text), want, "{text}");
        }
    }

    #[test]
    fn explanations_name_the_file_user_and_endpoints() {
        let ctx = EtcdContext {
            endpoints: "https://198.18.0.201:2379".into(),
            ca_file: Some("/etc/flannel/ca.pem".into()),
            cert_file: Some("/etc/flannel/client.pem".into()),
            username: Some("flannel".into()),
            prefix: "/coreos.com/network".into(),
        };
        let m = ctx.explain(EtcdErrorKind::TlsUnknownCa, "raw");
        assert!(m.contains("--etcd-cafile /etc/flannel/ca.pem"), "{m}");
        assert!(m.contains("https://198.18.0.201:2379"), "{m}");
        assert!(m.ends_with("[raw]"), "{m}");
        let m = ctx.explain(EtcdErrorKind::TlsClientRejected, "raw");
        assert!(m.contains("--etcd-certfile /etc/flannel/client.pem"), "{m}");
        let m = ctx.explain(EtcdErrorKind::PermissionDenied, "raw");
        assert!(
            m.contains("\"flannel\"") && m.contains("/coreos.com/network/"),
            "{m}"
        );
        assert!(EtcdErrorKind::AuthFailed.needs_operator());
        assert!(!EtcdErrorKind::Unreachable.needs_operator());
    }
}
