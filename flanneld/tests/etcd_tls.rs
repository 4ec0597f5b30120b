//! `EtcdLeaseStore` against a real etcd serving TLS with client-certificate auth, with
//! certificates made at test time by `openssl` ([`flannel_testkit::pki`]): mutual TLS works,
//! and every way it can be misconfigured is reported as its own kind, with a message that
//! names the file or endpoint to fix. Then auth: a user whose role allows only flannel's
//! prefix works, a wrong password and a role on another prefix are clear errors.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Permission, PermissionType};
use flannel_testkit::etcd::{EtcdServer, ServerTls};
use flannel_testkit::pki::{CertPair, Pki};
use flannel_testkit::skip_or_panic;
use flanneld::subnet::{
    CreateOutcome, EtcdConfig, EtcdErrorKind, EtcdLeaseStore, LeaseStore, StoreError,
};
use ipam::lease::{Lease, LeaseAttrs};

const NETWORK: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

struct Fixture {
    pki: Pki,
    ca: PathBuf,
    client: CertPair,
    server: EtcdServer,
}

async fn fixture() -> Option<Fixture> {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        skip_or_panic("openssl not installed");
        return None;
    }
    let pki = Pki::new().unwrap();
    let ca = pki.ca("etcd-ca").unwrap();
    let server_cert = pki.leaf("etcd-ca", "member", &["IP:127.0.0.1"], 2).unwrap();
    let client = pki.leaf("etcd-ca", "flannel-client", &[], 2).unwrap();
    let tls = ServerTls {
        server: server_cert,
        ca: ca.clone(),
        client: client.clone(),
    };
    let server = match EtcdServer::start_tls(tls).await {
        Ok(s) => s,
        Err(e) => {
            if matches!(e, flannel_testkit::etcd::EtcdServerError::NotFound(_)) {
                skip_or_panic(&e.to_string());
                return None;
            }
            panic!("starting etcd with TLS: {e}");
        }
    };
    Some(Fixture {
        pki,
        ca,
        client,
        server,
    })
}

impl Fixture {
    fn config(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: vec![self.server.endpoint()],
            ca_file: Some(self.ca.clone()),
            cert_file: Some(self.client.cert.clone()),
            key_file: Some(self.client.key.clone()),
            request_timeout: Duration::from_secs(5),
            ..EtcdConfig::default()
        }
    }
}

/// The first request's error (connect is lazy without auth), within a bound: a TLS failure
/// must be reported, never hang.
async fn first_error(cfg: EtcdConfig) -> StoreError {
    let started = std::time::Instant::now();
    let result = match EtcdLeaseStore::connect(&cfg).await {
        Err(e) => Err(e),
        Ok(store) => store.network_config().await.map(|_| ()),
    };
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the failure took {:?}",
        started.elapsed()
    );
    match result {
        Err(e) => {
            // What the operator reads (the README quotes these lines).
            eprintln!("operator sees: {e}");
            e
        }
        Ok(()) => panic!("expected a failure with {cfg:?}"),
    }
}

fn kind(e: &StoreError) -> Option<EtcdErrorKind> {
    match e {
        StoreError::Etcd { kind, .. } => Some(*kind),
        _ => None,
    }
}

#[tokio::test]
async fn mutual_tls_works_and_each_misconfiguration_is_named() {
    let Some(fx) = fixture().await else {
        return;
    };

    // The right CA, a client certificate of it: flannel's whole store works.
    let store = EtcdLeaseStore::connect(&fx.config())
        .await
        .expect("connect");
    let mut c = fx.server.client().await.unwrap();
    c.put("/coreos.com/network/config", NETWORK, None)
        .await
        .unwrap();
    assert_eq!(
        store.network_config().await.unwrap().as_deref(),
        Some(NETWORK)
    );
    let attrs = LeaseAttrs::new("198.18.0.1".parse().unwrap(), "vxlan");
    let lease = Lease::new("10.244.1.0/24".parse().unwrap(), None, attrs);
    assert!(matches!(
        store
            .create_if_absent(&lease, Duration::from_secs(30))
            .await
            .unwrap(),
        CreateOutcome::Created(_)
    ));
    assert_eq!(store.list().await.unwrap().leases.len(), 1);
    let pos = store.position().await.unwrap();
    assert!(pos.revision >= 2 && pos.cluster_id != 0, "{pos:?}");

    // The server's certificate is not signed by the CA we were given.
    let rogue_ca = fx.pki.ca("rogue-ca").unwrap();
    let e = first_error(EtcdConfig {
        ca_file: Some(rogue_ca.clone()),
        ..fx.config()
    })
    .await;
    assert_eq!(kind(&e), Some(EtcdErrorKind::TlsUnknownCa), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("--etcd-cafile {}", rogue_ca.display())),
        "{e}"
    );
    assert!(e.to_string().contains(&fx.server.endpoint()), "{e}");

    // The endpoint names a host the server certificate does not carry (it has only the IP).
    let by_name = fx.server.endpoint().replace("127.0.0.1", "localhost");
    let e = first_error(EtcdConfig {
        endpoints: vec![by_name.clone()],
        ..fx.config()
    })
    .await;
    assert_eq!(kind(&e), Some(EtcdErrorKind::TlsServerName), "{e}");
    assert!(e.to_string().contains(&by_name), "{e}");

    // A client certificate from another CA: etcd refuses it.
    let rogue_client = fx.pki.leaf("rogue-ca", "rogue-client", &[], 2).unwrap();
    let e = first_error(EtcdConfig {
        cert_file: Some(rogue_client.cert.clone()),
        key_file: Some(rogue_client.key.clone()),
        ..fx.config()
    })
    .await;
    assert_eq!(kind(&e), Some(EtcdErrorKind::TlsClientRejected), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("--etcd-certfile {}", rogue_client.cert.display())),
        "{e}"
    );

    // No client certificate at all.
    let e = first_error(EtcdConfig {
        cert_file: None,
        key_file: None,
        ..fx.config()
    })
    .await;
    assert_eq!(kind(&e), Some(EtcdErrorKind::TlsClientRejected), "{e}");
    assert!(
        e.to_string().contains("requires a client certificate"),
        "{e}"
    );

    // An expired client certificate is refused before any handshake, with its date.
    let expired = fx.pki.leaf("etcd-ca", "expired-client", &[], -1).unwrap();
    match first_error(EtcdConfig {
        cert_file: Some(expired.cert.clone()),
        key_file: Some(expired.key.clone()),
        ..fx.config()
    })
    .await
    {
        StoreError::TlsFile(f) => {
            assert_eq!(f.kind, "tls_client_cert_expired");
            assert!(f.reason.contains("expired at"), "{f}");
            assert_eq!(f.path, expired.cert);
        }
        other => panic!("expected an expired certificate, got {other}"),
    }

    // A missing key file names the flag and the path.
    let missing = fx.pki.dir().join("no-such.key");
    match first_error(EtcdConfig {
        key_file: Some(missing.clone()),
        ..fx.config()
    })
    .await
    {
        StoreError::TlsFile(f) => {
            assert_eq!(f.flag, "--etcd-keyfile");
            assert_eq!(f.path, missing);
            assert!(f.reason.contains("no such file"), "{f}");
        }
        other => panic!("expected a missing key file, got {other}"),
    }

    // Plain http against the TLS member: an error, not a hang.
    let e = first_error(EtcdConfig {
        endpoints: vec![fx.server.endpoint().replace("https://", "http://")],
        ca_file: None,
        cert_file: None,
        key_file: None,
        ..fx.config()
    })
    .await;
    assert!(
        matches!(
            kind(&e),
            Some(EtcdErrorKind::TlsOther | EtcdErrorKind::Unreachable | EtcdErrorKind::Other)
        ),
        "{e}"
    );
}

#[tokio::test]
async fn auth_with_a_prefix_limited_role_and_a_wrong_password() {
    let Some(fx) = fixture().await else {
        return;
    };
    let mut root = fx.server.client().await.unwrap();
    root.put("/coreos.com/network/config", NETWORK, None)
        .await
        .unwrap();
    root.user_add("root", "root-secret", None).await.unwrap();
    root.user_grant_role("root", "root").await.unwrap();
    root.user_add("flannel", "s3cret", None).await.unwrap();
    root.role_add("flannel-rw").await.unwrap();
    root.role_grant_permission(
        "flannel-rw",
        Permission::new(PermissionType::Readwrite, "/coreos.com/network/").with_prefix(),
    )
    .await
    .unwrap();
    root.user_grant_role("flannel", "flannel-rw").await.unwrap();
    root.user_add("other", "0ther", None).await.unwrap();
    root.role_add("other-rw").await.unwrap();
    root.role_grant_permission(
        "other-rw",
        Permission::new(PermissionType::Readwrite, "/other/").with_prefix(),
    )
    .await
    .unwrap();
    root.user_grant_role("other", "other-rw").await.unwrap();
    root.auth_enable().await.unwrap();

    // The prefix-limited user: config, list, create and keep-alive all work.
    let cfg = EtcdConfig {
        username: Some("flannel".into()),
        password: Some("s3cret".into()),
        ..fx.config()
    };
    let store = EtcdLeaseStore::connect(&cfg)
        .await
        .expect("connect as flannel");
    assert_eq!(
        store.network_config().await.unwrap().as_deref(),
        Some(NETWORK)
    );
    let attrs = LeaseAttrs::new("198.18.0.1".parse().unwrap(), "vxlan");
    let lease = Lease::new("10.244.1.0/24".parse().unwrap(), None, attrs);
    let created = match store
        .create_if_absent(&lease, Duration::from_secs(30))
        .await
        .unwrap()
    {
        CreateOutcome::Created(l) => l,
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        store.keep_alive(created.lease_id.unwrap()).await.unwrap(),
        flanneld::subnet::KeepAliveOutcome::Alive { .. }
    ));
    assert_eq!(store.list().await.unwrap().leases.len(), 1);

    // A wrong password fails at connect, clearly, and never shows the password.
    let e = first_error(EtcdConfig {
        password: Some("wrong-pass".into()),
        ..cfg.clone()
    })
    .await;
    assert_eq!(kind(&e), Some(EtcdErrorKind::AuthFailed), "{e}");
    assert!(e.to_string().contains("\"flannel\""), "{e}");
    assert!(!e.to_string().contains("wrong-pass"), "{e}");

    // A user without a role on flannel's prefix.
    let e = first_error(EtcdConfig {
        username: Some("other".into()),
        password: Some("0ther".into()),
        ..cfg.clone()
    })
    .await;
    assert_eq!(kind(&e), Some(EtcdErrorKind::PermissionDenied), "{e}");
    assert!(e.to_string().contains("/coreos.com/network"), "{e}");
}

#[tokio::test]
async fn certificates_rotated_on_disk_are_used_once_the_member_rejects_the_old_ones() {
    let Some(mut fx) = fixture().await else {
        return;
    };
    // flanneld's own copies of the files, which the operator (here the test) rewrites in
    // place, as cert-manager or a config management run would.
    let dir = fx.pki.dir().join("flanneld-files");
    std::fs::create_dir_all(&dir).unwrap();
    let (ca_file, cert_file, key_file) = (
        dir.join("ca.pem"),
        dir.join("client.pem"),
        dir.join("client-key.pem"),
    );
    let install = |ca: &PathBuf, pair: &CertPair| {
        std::fs::copy(ca, &ca_file).unwrap();
        std::fs::copy(&pair.cert, &cert_file).unwrap();
        std::fs::copy(&pair.key, &key_file).unwrap();
    };
    install(&fx.ca, &fx.client);
    let cfg = EtcdConfig {
        ca_file: Some(ca_file.clone()),
        cert_file: Some(cert_file.clone()),
        key_file: Some(key_file.clone()),
        ..fx.config()
    };
    let store = EtcdLeaseStore::connect(&cfg).await.expect("connect");
    assert_eq!(store.network_config().await.expect("get config"), None);

    // A new CA: the member gets a certificate from it and accepts only its clients; the
    // node's files are replaced while flanneld runs.
    let ca2 = fx.pki.ca("etcd-ca-2").unwrap();
    let server2 = fx
        .pki
        .leaf("etcd-ca-2", "member-2", &["IP:127.0.0.1"], 2)
        .unwrap();
    let client2 = fx
        .pki
        .leaf("etcd-ca-2", "flannel-client-2", &[], 2)
        .unwrap();
    install(&ca2, &client2);
    fx.server
        .restart_with_tls(ServerTls {
            server: server2,
            ca: ca2,
            client: client2,
        })
        .await
        .expect("restart etcd with the new CA");

    // The connection opened with the old files died with the restart; reconnecting with
    // them fails (the member's certificate is from a CA they do not trust), which makes the
    // store open a new connection, and that one reads the files again.
    let mut failures = Vec::new();
    let mut answered = false;
    for _ in 0..4 {
        match store.network_config().await {
            Ok(_) => {
                answered = true;
                break;
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    assert!(
        answered,
        "still failing after the rotation:\n{}",
        failures.join("\n")
    );
    assert!(failures.len() <= 2, "{failures:#?}");
    let lease = Lease::new(
        "10.244.7.0/24".parse().unwrap(),
        None,
        LeaseAttrs::new("198.18.0.7".parse().unwrap(), "vxlan"),
    );
    assert!(matches!(
        store
            .create_if_absent(&lease, Duration::from_secs(60))
            .await
            .expect("a write with the new certificate"),
        CreateOutcome::Created(_)
    ));
}
