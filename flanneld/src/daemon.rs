//! # daemon — all the wiring, in the order a node comes up
//!
//! 1. **Store.** Connect to etcd (retrying with backoff; a node that boots before etcd just
//!    waits), then read `<prefix>/config`. While the key is absent we log a wait-and-retry
//!    message; an invalid config names the bad key and is re-read until fixed.
//! 2. **Interface.** Pick the external interface in flannel's order ([`crate::iface`]).
//! 3. **Backend.** Create or adopt the backend's device, one per enabled address family
//!    ([`crate::overlays::NodeOverlays`]); its `BackendData` (VNI, a VTEP MAC that is stable
//!    across restarts) goes into the lease (IPv6: `BackendV6Data`).
//! 4. **Lease.** Acquire in flannel's order — our public IP's lease, then the subnet recorded
//!    in subnet.env, then a random free one ([`crate::subnet::SubnetManager`]).
//! 5. **Local state.** Own subnet on the backend, a first reconcile against the first lease
//!    snapshot (this is where stale routes from a previous run disappear), masquerade and
//!    forward rules, then — and only then — subnet.env, atomically, and `/readyz` turns 200.
//! 6. **Steady state.** One loop owns the kernel: it applies lease snapshots and events from the
//!    watch, own-lease re-acquisitions from the keeper, netlink change notifications (a deleted
//!    route or device is put back within a debounce interval), and a periodic full reconcile
//!    (every 10 s, stretched for very large clusters so it costs at most 0.2 % of the time;
//!    see [`crate::overlays::periodic_interval`]),
//!    re-checking the nftables table every `--iptables-resync` seconds.
//! 7. **Shutdown.** SIGTERM/SIGINT stop the tasks; the lease and the kernel state stay, so a
//!    restart is hitless. `--release-lease-on-shutdown` deletes the lease first.
//!
//! Unlike flannel, nothing here exits because etcd is down or our lease vanished: the data
//! plane keeps forwarding with the last known state and the tasks retry.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use backends::kernel::netlink::{IpFamily, MonitorGroup, Netlink};
use backends::masq::{MasqSpec, NodeMasq};
use ipam::lease::{Lease, LeaseAttrs, LeaseWatcher, NO_IPV4_SUBNET, SubnetId};
use ipam::subnet_env::SubnetEnv;
use ipnetwork::IpNetwork;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::Opts;
use crate::healthz::Health;
use crate::iface::{self, IfaceSelector};
use crate::network_config::NetworkConfig;
use crate::overlays::NodeOverlays;
use crate::shutdown::Shutdown;
use crate::subnet::manager::log_store_error;
use crate::subnet::{
    EtcdLeaseStore, LeaseStore, ManagerConfig, ManagerError, OwnLeaseEvent, StoreError,
    StoreMetrics, SubnetManager, WatchUpdate,
};

/// Netlink change notifications within this window cause one reconcile.
pub const MONITOR_DEBOUNCE: Duration = Duration::from_millis(50);
/// Delay between attempts while etcd is unreachable or the config is absent/invalid.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Runs flanneld until SIGTERM/SIGINT.
pub async fn run(opts: Opts) -> Result<()> {
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone())?;
    run_until(opts, cancel).await
}

/// Runs flanneld until `cancel` fires (the testable entry point).
pub async fn run_until(opts: Opts, cancel: CancellationToken) -> Result<()> {
    if opts.kube_subnet_mgr {
        bail!("{}", crate::config::KUBE_SUBNET_MGR_UNSUPPORTED);
    }
    let ignored = opts.ignored.given();
    if !ignored.is_empty() {
        tracing::warn!(flags = %ignored.join(" "),
            "ignoring flannel flags that have no effect in etcd mode");
    }

    let store_metrics = Arc::new(StoreMetrics::default());
    let notifier = crate::notify::Notifier::from_env().map(Arc::new);
    if let Some(n) = &notifier {
        crate::notify::spawn_watchdog(n.clone(), cancel.clone());
    }
    let health = Arc::new(Health::new(store_metrics.clone()).with_notifier(notifier.clone()));
    if opts.healthz_port != 0 {
        let addr = SocketAddr::new(opts.healthz_ip, opts.healthz_port);
        let listener = crate::healthz::bind(addr)
            .await
            .with_context(|| format!("--healthz-ip/--healthz-port: cannot listen on {addr}"))?;
        tracing::info!(%addr, "serving /healthz and /readyz");
        tokio::spawn(crate::healthz::serve(
            listener,
            health.clone(),
            cancel.clone(),
        ));
    }

    // A failure only an operator can fix (a certificate, a password) re-creates the client,
    // so that fixed files are read again; the retry delay carries over.
    let mut delay = RETRY_MIN;
    let (store, network) = loop {
        let Some(store) = connect_store(&opts, &health, &mut delay, &cancel).await? else {
            return Ok(());
        };
        match wait_for_network_config(&store, &health, &mut delay, &cancel).await {
            ConfigWait::Loaded(network) => break (Arc::new(store), network),
            ConfigWait::Reconnect => continue,
            ConfigWait::Cancelled => return Ok(()),
        }
    };
    tracing::info!(
        network = %network.describe(),
        backend = network.backend.type_name(),
        "network config loaded"
    );

    let nl = Netlink::new().context("open netlink socket")?;
    let selector = IfaceSelector {
        ifaces: opts.iface.clone(),
        regexes: opts.iface_regex.clone(),
        can_reach: opts.iface_can_reach,
        public_ip: opts.public_ip,
        public_ipv6: opts.public_ipv6,
        ipv4: network.ipv4.is_some(),
        ipv6: network.ipv6.is_some(),
    };
    let ext = iface::select(&nl, &selector)
        .await
        .context("choose the external interface")?;
    tracing::info!(
        iface = %ext.name, addr = ?ext.iface_addr, public_ip = ?ext.public_ip,
        addr6 = ?ext.iface_addr6, public_ipv6 = ?ext.public_ipv6, mtu = ext.mtu,
        "using external interface"
    );

    for family in [IpFamily::V4, IpFamily::V6] {
        if crate::backend::families(&network).contains(&family) {
            continue;
        }
        for what in crate::cleanup::retire_family(&nl, family).await {
            tracing::info!(?family, removed = %what,
                "address family no longer enabled: removed what an earlier run left");
        }
    }
    let wireguard = flannel_wireguard::WireguardPaths {
        key_file: flannel_wireguard::key::key_file_path(),
        socket_dir: (!opts.wireguard_socket_dir.as_os_str().is_empty())
            .then(|| opts.wireguard_socket_dir.clone()),
        force_userspace: false,
    };
    let mut overlays = NodeOverlays::new(&nl, &network, &ext, &wireguard)
        .await
        .context("set up the backend")?;
    health.set_backend_metrics(overlays.metrics_fn());

    let previous = match SubnetEnv::load(&opts.subnet_file) {
        Ok(env) => previous_subnets(&env),
        Err(e) if e.is_not_found() => None,
        Err(e) => {
            tracing::warn!(file = %opts.subnet_file.display(), error = %e,
                "ignoring an unreadable subnet file");
            None
        }
    };
    let attrs = overlays.lease_attrs(&ext);

    let manager = Arc::new(
        SubnetManager::new(
            store.clone(),
            network.clone(),
            ManagerConfig::new(opts.subnet_lease_ttl, opts.renew_margin()),
        )
        .with_metrics(store_metrics.clone()),
    );
    let acquire_started = std::time::Instant::now();
    health.waiting_for("acquiring a subnet lease");
    let Some(mut own) = acquire_with_retry(&manager, &attrs, previous, &health, &cancel).await
    else {
        return Ok(());
    };
    tracing::info!(
        key = %own.key(),
        leased = own.leased,
        took_ms = %format!("{:.1}", acquire_started.elapsed().as_secs_f64() * 1e3),
        "acquired subnet lease"
    );

    // Steady-state producers.
    let (watch_tx, mut watch_rx) = mpsc::channel::<WatchUpdate>(64);
    let (own_tx, mut own_rx) = mpsc::channel::<OwnLeaseEvent>(8);
    {
        let manager = manager.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move { manager.run_watch(watch_tx, cancel).await });
    }
    {
        let manager = manager.clone();
        let cancel = cancel.clone();
        let lease = own.clone();
        tokio::spawn(async move { manager.run_lease_keeper(lease, own_tx, cancel).await });
    }
    // Opened on this thread, hence in the daemon's own namespace, like `nl`.
    let mut monitor =
        Netlink::monitor(&MonitorGroup::ALL).context("subscribe to netlink changes")?;

    // First snapshot (bounded wait: with etcd gone we still come up from the kernel state).
    let mut watcher = LeaseWatcher::new(Some(own.id()));
    match tokio::time::timeout(Duration::from_secs(5), watch_rx.recv()).await {
        Ok(Some(update)) => {
            apply_update(&mut watcher, update, &mut Vec::new());
        }
        _ => tracing::warn!("no lease snapshot yet; starting with no peers"),
    }
    overlays.set_own(&own);
    overlays.set_peers(&watcher);
    overlays.reconcile().await;

    remove_flannel_leftovers().await;
    // One nftables table per family (`ip flannel-rs`, `ip6 flannel-rs`).
    let mut masqs: Vec<NodeMasq> = own_subnets(&network, &own)
        .iter()
        .map(|(net, _)| NodeMasq::for_family(IpFamily::of(net.ip())))
        .collect();
    let masq_specs = |own: &Lease| -> Vec<MasqSpec> {
        own_subnets(&network, own)
            .into_iter()
            .map(|(network, subnet)| MasqSpec {
                network,
                subnet,
                masquerade: opts.ip_masq,
                forward: opts.iptables_forward_rules,
                fully_random: !opts.ip_masq_fully_random_disable,
            })
            .collect()
    };
    for (masq, spec) in masqs.iter_mut().zip(masq_specs(&own)) {
        ensure_masq(masq, spec)
            .await
            .context("install masquerade/forward rules")?;
    }
    if opts.ip_blackhole_route {
        ensure_blackholes(&nl, &network, &own).await;
    }
    write_subnet_env(&opts, &network, &own, overlays.mtu())?;
    health.set_ready(&format!(
        "ready: subnet {} written to {}",
        own.key(),
        opts.subnet_file.display()
    ));
    tracing::info!(file = %opts.subnet_file.display(), "ready: subnet file written");

    let mut masq_tick = tokio::time::interval(Duration::from_secs(opts.iptables_resync));
    masq_tick.reset();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(update) = watch_rx.recv() => {
                // Incremental events cost only their peers' entries; a snapshot (start,
                // compaction, restore) or a failed single-peer write costs a full reconcile.
                let mut events = Vec::new();
                let mut full = apply_update(&mut watcher, update, &mut events);
                // Drain whatever else is queued: one pass per burst.
                while let Ok(more) = watch_rx.try_recv() {
                    full |= apply_update(&mut watcher, more, &mut events);
                }
                if full || !overlays.apply_events(&events).await {
                    overlays.set_peers(&watcher);
                    overlays.reconcile().await;
                }
            }
            Some(event) = own_rx.recv() => match event {
                OwnLeaseEvent::Lost(_) => {
                    health.set_not_ready(format!("own lease {} lost; re-acquiring", own.key()));
                    tracing::warn!(key = %own.key(), "own lease lost; re-acquiring");
                }
                OwnLeaseEvent::Reacquired(lease) => {
                    let moved = lease.id() != own.id();
                    own = lease;
                    tracing::info!(key = %own.key(), moved, "own lease re-acquired");
                    if moved {
                        watcher.set_own(Some(own.id()));
                        overlays.set_own(&own);
                        overlays.set_peers(&watcher);
                        overlays.reconcile().await;
                    }
                    for (masq, spec) in masqs.iter_mut().zip(masq_specs(&own)) {
                        if let Err(e) = ensure_masq(masq, spec).await {
                            tracing::error!(error = %e, "masquerade rules");
                        }
                    }
                    if opts.ip_blackhole_route {
                        ensure_blackholes(&nl, &network, &own).await;
                    }
                    if let Err(e) = write_subnet_env(&opts, &network, &own, overlays.mtu()) {
                        tracing::error!(error = %e, "writing the subnet file");
                    }
                    health.set_ready(&format!("ready: subnet {}", own.key()));
                }
            },
            Some(change) = monitor.recv() => {
                // Debounce: a device deletion produces a burst of link/route/neigh messages.
                let mut relevant = overlays.is_relevant(&change);
                tokio::time::sleep(MONITOR_DEBOUNCE).await;
                while let Ok(more) = monitor.try_recv() {
                    relevant |= overlays.is_relevant(&more);
                }
                if relevant {
                    overlays.reconcile().await;
                }
            }
            _ = tokio::time::sleep_until(overlays.next_periodic_pass()) => {
                overlays.reconcile().await;
            }
            _ = masq_tick.tick() => {
                for (masq, spec) in masqs.iter_mut().zip(masq_specs(&own)) {
                    if let Err(e) = ensure_masq(masq, spec).await {
                        tracing::error!(error = %e, "re-checking masquerade rules");
                    }
                }
                if opts.ip_blackhole_route {
                    ensure_blackholes(&nl, &network, &own).await;
                }
            }
        }
    }

    if opts.release_lease_on_shutdown && own.leased {
        match manager.release(&own).await {
            Ok(_) => tracing::info!(key = %own.key(), "released own lease on shutdown"),
            Err(e) => tracing::warn!(error = %e, "could not release own lease"),
        }
    }
    if let Some(n) = &notifier {
        n.stopping();
    }
    tracing::info!("shutting down; kernel state and lease kept");
    Ok(())
}

fn spawn_signal_handler(cancel: CancellationToken) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        cancel.cancel();
    });
    Ok(())
}

/// Connects to etcd, retrying with backoff until it works or `cancel` fires. Settings that
/// no retry can fix (a malformed endpoint, a password without user) end the daemon; a TLS
/// file that is missing or expired, a wrong password or an unreachable etcd are logged as
/// one line naming the cause and retried (a file may be provisioned or rotated later).
async fn connect_store(
    opts: &Opts,
    health: &Health,
    delay: &mut Duration,
    cancel: &CancellationToken,
) -> Result<Option<EtcdLeaseStore>> {
    let cfg = opts.etcd.config();
    let tls = cfg
        .endpoints
        .iter()
        .any(|e| e.trim().to_ascii_lowercase().starts_with("https://"));
    tracing::info!(endpoints = %cfg.endpoints.join(","), tls,
        client_cert = cfg.cert_file.is_some(), user = ?cfg.username, "connecting to etcd");
    loop {
        match EtcdLeaseStore::connect_with_metrics(cfg.clone(), health.store_metrics().clone())
            .await
        {
            Ok(store) => return Ok(Some(store)),
            Err(StoreError::Config(what)) => bail!("etcd: {what}"),
            Err(e) => {
                health.waiting_for(format!("waiting for etcd: {e}"));
                log_store_error(&e, *delay, "connecting to etcd");
            }
        }
        if Shutdown::from(cancel.clone()).sleep(*delay).await {
            return Ok(None);
        }
        *delay = Backoff::grow(*delay, RETRY_MAX);
    }
}

/// How [`wait_for_network_config`] ended.
enum ConfigWait {
    Loaded(NetworkConfig),
    /// A failure only an operator can fix: connect again (re-reading the TLS files).
    Reconnect,
    Cancelled,
}

async fn wait_for_network_config<S: LeaseStore>(
    store: &S,
    health: &Health,
    delay: &mut Duration,
    cancel: &CancellationToken,
) -> ConfigWait {
    loop {
        let mut reconnect = false;
        match store.network_config().await {
            Ok(Some(json)) => match NetworkConfig::parse(&json) {
                Ok(cfg) => {
                    *delay = RETRY_MIN;
                    return ConfigWait::Loaded(cfg);
                }
                Err(e) => {
                    health.waiting_for(format!("invalid network config: {e}"));
                    tracing::error!(key = %store.config_location(), error = %e,
                        "invalid network config; fix it, re-reading in {delay:?}")
                }
            },
            Ok(None) => {
                health.waiting_for(format!(
                    "waiting for the network config at {}",
                    store.config_location()
                ));
                tracing::warn!(key = %store.config_location(),
                    "network config not found; waiting for it, retrying in {delay:?}")
            }
            Err(e) => {
                health.waiting_for(format!("waiting for etcd: {e}"));
                log_store_error(&e, *delay, "reading the network config");
                reconnect = e.needs_operator();
            }
        }
        if Shutdown::from(cancel.clone()).sleep(*delay).await {
            return ConfigWait::Cancelled;
        }
        *delay = Backoff::grow(*delay, RETRY_MAX);
        if reconnect {
            return ConfigWait::Reconnect;
        }
    }
}

/// The subnets recorded in subnet.env (flannel's "previous subnet"), as a lease identity.
fn previous_subnets(env: &SubnetEnv) -> Option<SubnetId> {
    let v4 = env.subnet_network();
    let v6 = env.ipv6_subnet_network();
    (v4.is_some() || v6.is_some()).then(|| (v4.unwrap_or(NO_IPV4_SUBNET), v6))
}

/// Per enabled family: (cluster network, our subnet of it).
fn own_subnets(network: &NetworkConfig, own: &Lease) -> Vec<(IpNetwork, IpNetwork)> {
    let v4 = network
        .ipv4
        .as_ref()
        .zip(own.ipv4_subnet())
        .map(|(p, s)| (IpNetwork::V4(p.network), IpNetwork::V4(s)));
    let v6 = network
        .ipv6
        .as_ref()
        .zip(own.ipv6_subnet)
        .map(|(p, s)| (IpNetwork::V6(p.network), IpNetwork::V6(s)));
    v4.into_iter().chain(v6).collect()
}

async fn acquire_with_retry<S: LeaseStore>(
    manager: &SubnetManager<S>,
    attrs: &LeaseAttrs,
    previous: Option<SubnetId>,
    health: &Health,
    cancel: &CancellationToken,
) -> Option<Lease> {
    let mut delay = RETRY_MIN;
    loop {
        match manager.acquire(attrs, previous).await {
            Ok(lease) => return Some(lease),
            Err(e @ ManagerError::Exhausted { .. }) => {
                health.waiting_for(format!("acquiring a subnet lease: {e}"));
                tracing::error!(error = %e, "no free subnet; retrying in {delay:?}")
            }
            Err(ManagerError::Store(e)) => {
                health.waiting_for(format!("acquiring a subnet lease: {e}"));
                log_store_error(&e, delay, "acquiring a subnet lease");
            }
            Err(e) => {
                health.waiting_for(format!("acquiring a subnet lease: {e}"));
                tracing::warn!(error = %e, "acquiring a subnet lease; retrying in {delay:?}")
            }
        }
        if Shutdown::from(cancel.clone()).sleep(delay).await {
            return None;
        }
        delay = Backoff::grow(delay, RETRY_MAX);
    }
}

/// Feeds `update` to the watcher; the resulting changes go to `changes`. Returns whether
/// the update was a snapshot (which the overlays take as a whole, with a full reconcile).
fn apply_update(
    watcher: &mut LeaseWatcher,
    update: WatchUpdate,
    changes: &mut Vec<ipam::lease::LeaseEvent>,
) -> bool {
    match update {
        WatchUpdate::Snapshot(leases) => {
            let diff = watcher.reset(&leases);
            for c in &diff {
                tracing::info!(%c, "lease change (resync)");
            }
            changes.extend(diff);
            true
        }
        WatchUpdate::Events(events) => {
            let diff = watcher.update(&events);
            for c in &diff {
                tracing::info!(%c, "lease change");
            }
            changes.extend(diff);
            false
        }
    }
}

/// `--ip-blackhole-route` for each of our subnets.
async fn ensure_blackholes(nl: &Netlink, network: &NetworkConfig, own: &Lease) {
    for (_, subnet) in own_subnets(network, own) {
        ensure_blackhole(nl, subnet).await;
    }
}

/// `--ip-blackhole-route`: `blackhole <subnet> proto 150` present (re-added every resync
/// period, like flannel), and no blackhole of ours for another subnet of that family (after
/// a move).
async fn ensure_blackhole(nl: &Netlink, subnet: IpNetwork) {
    use backends::overlay::ROUTE_PROTOCOL;
    let want = subnet;
    let have = match nl.blackhole_routes(IpFamily::of(subnet.ip())).await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "listing blackhole routes");
            return;
        }
    };
    for (dst, proto) in &have {
        if *proto == ROUTE_PROTOCOL
            && *dst != want
            && let Err(e) = nl.del_blackhole_route(*dst).await
        {
            tracing::warn!(error = %e, %dst, "removing a stale blackhole route");
        }
    }
    if !have.iter().any(|(d, p)| *d == want && *p == ROUTE_PROTOCOL) {
        match nl.replace_blackhole_route(want, ROUTE_PROTOCOL).await {
            Ok(()) => tracing::info!(%subnet, "blackhole route for this node's subnet installed"),
            Err(e) => tracing::error!(error = %e, %subnet, "installing the blackhole route"),
        }
    }
}

/// A node that ran flannel keeps its `FLANNEL-POSTRTG`/`FLANNEL-FWD` chains (or its
/// `flannel-ipv4`/`-ipv6` nftables tables): their masquerade rules would double up with ours
/// and outlive any change of network. Remove them once at start-up and say so. The bridge
/// plugin's per-pod `CNI-*` chains belong to running pods and go with their DEL.
async fn remove_flannel_leftovers() {
    let result = tokio::task::spawn_blocking(|| {
        (
            backends::kernel::iptables::remove_flannel_chains(),
            backends::masq::remove_flannel_tables(),
        )
    })
    .await;
    let Ok((chains, tables)) = result else {
        return;
    };
    match chains {
        Ok(removed) => {
            for what in removed {
                tracing::info!(removed = %what, "removed flannel's iptables chain and its jumps");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not remove flannel's iptables chains"),
    }
    match tables {
        Ok(removed) => {
            for what in removed {
                tracing::info!(removed = %what, "removed flannel's nftables table");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not remove flannel's nftables tables"),
    }
}

async fn ensure_masq(masq: &mut NodeMasq, spec: MasqSpec) -> Result<()> {
    if spec.is_empty() && masq.spec().is_none() {
        return Ok(());
    }
    // nft and iptables are child processes: keep them off the async worker.
    let mut owned = std::mem::take(masq);
    let (owned, result, forward, family) = tokio::task::spawn_blocking(move || {
        let r = owned.ensure(spec);
        // The operator's iptables FORWARD chain may drop what our table accepts.
        let f = spec
            .forward
            .then(|| backends::kernel::iptables::ForwardRules::ensure(spec.network));
        let family = spec.family();
        (owned, r, f, family)
    })
    .await
    .context("masquerade task panicked")?;
    *masq = owned;
    match forward {
        Some(Ok(outcomes)) => {
            for (flavor, outcome) in outcomes {
                if outcome == backends::kernel::iptables::FlavorOutcome::Installed {
                    tracing::info!(
                        iptables = flavor.binary(family),
                        chain = backends::kernel::iptables::FWD_CHAIN,
                        "pod network accepted in the host's filter FORWARD chain (first rule)"
                    );
                }
            }
        }
        Some(Err(e)) => tracing::error!(error = %e,
            "cannot accept pod traffic in the host's iptables FORWARD chain; a DROP policy \
             there drops pod traffic"),
        None => {}
    }
    match result? {
        backends::masq::EnsureOutcome::Installed => {
            tracing::info!(
                masquerade = spec.masquerade,
                forward = spec.forward,
                ?family,
                "nftables table installed"
            )
        }
        backends::masq::EnsureOutcome::Unchanged => {}
    }
    Ok(())
}

/// Writes subnet.env (flannel's format: `FLANNEL_SUBNET` is the first host of the lease; the
/// IPv4 keys only when IPv4 is enabled, the IPv6 keys only when IPv6 is).
fn write_subnet_env(opts: &Opts, network: &NetworkConfig, own: &Lease, mtu: u32) -> Result<()> {
    write_env_file(
        &opts.subnet_file,
        &subnet_env(network, own, mtu, opts.ip_masq),
    )
}

/// The subnet.env of `own` in `network`.
pub fn subnet_env(network: &NetworkConfig, own: &Lease, mtu: u32, ipmasq: bool) -> SubnetEnv {
    let v4 = network.ipv4.as_ref().zip(own.ipv4_subnet());
    let v6 = network.ipv6.as_ref().zip(own.ipv6_subnet);
    SubnetEnv {
        networks: v4.iter().map(|(p, _)| p.network).collect(),
        subnet: v4.map(|(_, s)| ipam::net::with_first_host(s)),
        ipv6_networks: v6.iter().map(|(p, _)| p.network).collect(),
        ipv6_subnet: v6.map(|(_, s)| ipam::net::with_first_host_v6(s)),
        mtu,
        ipmasq,
    }
}

fn write_env_file(path: &Path, env: &SubnetEnv) -> Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--subnet-file: create {}", dir.display()))?;
    }
    env.write_atomic(path)
        .with_context(|| format!("--subnet-file: write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(v4: &str, v6: Option<&str>) -> Lease {
        Lease::new(
            v4.parse().unwrap(),
            v6.map(|s| s.parse().unwrap()),
            LeaseAttrs::new(std::net::Ipv4Addr::UNSPECIFIED, "vxlan"),
        )
    }

    /// flannel's `WriteSubnetFile` for the same input (its `Documentation/configuration.md`
    /// dual-stack example; the IPv6-only form drops the IPv4 keys).
    #[test]
    fn subnet_env_is_flannels_bytes_for_dual_stack_and_ipv6_only() {
        let dual = NetworkConfig::parse(
            r#"{"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"2001:cafe:42::/56","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let own = lease("10.42.0.0/24", Some("2001:cafe:42::/64"));
        assert_eq!(
            subnet_env(&dual, &own, 1450, true).render(),
            "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\n\
             FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        let v6_only = NetworkConfig::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let own = lease("0.0.0.0/0", Some("fc00:0:0:1::/64"));
        assert_eq!(
            subnet_env(&v6_only, &own, 1450, true).render(),
            "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        // Read back, it names the previous subnets for the next acquire.
        let env = SubnetEnv::parse(&subnet_env(&v6_only, &own, 1450, true).render()).unwrap();
        assert_eq!(
            previous_subnets(&env),
            Some((NO_IPV4_SUBNET, Some("fc00:0:0:1::/64".parse().unwrap())))
        );
    }
}
