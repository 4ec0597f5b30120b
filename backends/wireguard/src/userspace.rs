//! The userspace path as a whole: the persistent TUN device, the UDP socket, the device
//! threads ([`crate::device`]), the peer snapshot they read and the UAPI socket for `wg`.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use backends::kernel::netns::NetNs;
use boringtun::noise::rate_limiter::RateLimiter;
use flannel_udp::datapath::Offloads;
use flannel_udp::table::Shared;
use flannel_udp::tun::{Tun, UdpSocket};
use ipnetwork::IpNetwork;

use crate::device::{Counters, Device, HANDSHAKE_RATE_LIMIT};
use crate::key::NodeKey;
use crate::peers::{Identity, PeerSpec, PeerTable};
use crate::uapi::{InterfaceInfo, UapiServer};

/// The TUN transmit queue length (the kernel default of 500 drops TCP bursts).
const TUN_TXQUEUELEN: i32 = 1000;

/// How to create the userspace device.
#[derive(Clone, Debug)]
pub struct UserspaceSetup {
    /// Device name (`flannel-wg`).
    pub name: String,
    /// `<iface_addr>:<ListenPort>` (IPv6: `[<iface_addr6>]:<ListenPortV6>`).
    pub local: SocketAddr,
    /// Directory of the UAPI socket (`/var/run/wireguard`); `None`: no socket.
    pub socket_dir: Option<PathBuf>,
    /// `PSK`.
    pub psk: Option<[u8; 32]>,
    /// `PersistentKeepaliveInterval`.
    pub keepalive: u16,
}

/// The running userspace device.
#[derive(Debug)]
pub struct UserspaceDevice {
    setup: UserspaceSetup,
    ns: Option<NetNs>,
    identity: Identity,
    device: Option<Device>,
    uapi: Option<UapiServer>,
    peers: Arc<Shared<PeerTable>>,
    counters: Arc<Counters>,
    specs: Vec<PeerSpec>,
    own: Option<IpNetwork>,
    next_slot: u32,
}

fn open_fds(setup: &UserspaceSetup) -> io::Result<(Tun, UdpSocket)> {
    // Offloads (TSO super-packets, coalesced writes) are IPv4's; flannel-wg-v6 is plain.
    let tun = Tun::open(&setup.name, setup.local.is_ipv4())?;
    // Kept across restarts of the daemon: see the crate docs ("Restarts").
    tun.set_persist(true)?;
    let sock = UdpSocket::bind(setup.local, true)?;
    if let Err(e) = sock.set_txqueuelen(tun.name(), TUN_TXQUEUELEN) {
        tracing::debug!(error = %e, "could not raise the TUN txqueuelen");
    }
    if setup.local.is_ipv4() {
        let key = format!("net/ipv4/conf/{}/accept_local", tun.name());
        if let Err(e) = backends::kernel::sysctl::write(&key, "1") {
            tracing::debug!(error = %e, "ICMP unreachable errors may be dropped by the kernel");
        }
    }
    Ok((tun, sock))
}

impl UserspaceDevice {
    /// Attaches to (or creates) the persistent TUN device, binds the socket (in `ns`, or the
    /// calling thread's namespace) and starts the threads and the UAPI socket.
    pub fn start(
        setup: UserspaceSetup,
        key: &NodeKey,
        ns: Option<&NetNs>,
    ) -> io::Result<UserspaceDevice> {
        let identity = Identity {
            rate_limiter: Arc::new(RateLimiter::new(&key.public, HANDSHAKE_RATE_LIMIT)),
            private: key.private.clone(),
            public: key.public,
            psk: setup.psk,
            keepalive: setup.keepalive,
        };
        let mut d = UserspaceDevice {
            ns: ns.map(NetNs::try_clone).transpose()?,
            setup,
            identity,
            device: None,
            uapi: None,
            peers: Arc::new(Shared::new(PeerTable::default())),
            counters: Arc::new(Counters::default()),
            specs: Vec::new(),
            own: None,
            // Receiver indices others cannot guess (slot << 8 | session).
            next_slot: crate::key::random_u32()? & 0x00ff_ffff,
        };
        d.open_and_run()?;
        if let Some(dir) = &d.setup.socket_dir {
            let info = InterfaceInfo {
                private_key: d.identity.private.to_bytes(),
                listen_port: d.setup.local.port(),
                psk: d.setup.psk,
                keepalive: d.setup.keepalive,
            };
            d.uapi = Some(UapiServer::start(
                dir,
                &d.setup.name,
                info,
                d.peers.clone(),
            )?);
        }
        Ok(d)
    }

    fn open_and_run(&mut self) -> io::Result<()> {
        let (tun, sock) = match &self.ns {
            Some(ns) => {
                let setup = self.setup.clone();
                ns.run(move || open_fds(&setup))??
            }
            None => open_fds(&self.setup)?,
        };
        let dev = Device::start(
            tun,
            sock,
            self.peers.clone(),
            self.identity.clone(),
            self.counters.clone(),
        )?;
        let o = dev.offloads();
        tracing::info!(device = %self.setup.name, local = %self.setup.local,
            tun_vnet_hdr = o.tun_vnet_hdr, udp_gso = o.udp_gso, udp_gro = o.udp_gro,
            "wireguard userspace device running");
        self.device = Some(dev);
        Ok(())
    }

    /// Stops the threads and attaches again (the device vanished: it is created anew). Peer
    /// sessions are kept.
    pub fn restart(&mut self) -> io::Result<()> {
        if let Some(mut d) = self.device.take() {
            d.stop();
        }
        self.open_and_run()
    }

    /// Whether the threads run.
    pub fn is_running(&self) -> bool {
        self.device.as_ref().is_some_and(Device::is_running)
    }

    /// The offloads in use.
    pub fn offloads(&self) -> Option<Offloads> {
        self.device.as_ref().map(Device::offloads)
    }

    /// The UAPI socket's path, if served.
    pub fn socket_path(&self) -> Option<PathBuf> {
        self.uapi.as_ref().map(|u| u.path().to_path_buf())
    }

    /// This node's subnet.
    pub fn set_own_subnet(&mut self, own: Option<IpNetwork>) {
        self.own = own;
        self.publish();
    }

    /// Replaces the peers.
    pub fn set_peers(&mut self, specs: Vec<PeerSpec>) {
        self.specs = specs;
        self.publish();
    }

    fn publish(&mut self) {
        let previous = self.peers.load();
        let mut t = PeerTable::build(&previous, &self.specs, &self.identity, &mut self.next_slot);
        t.own = self.own;
        self.peers.store(t);
    }

    /// The live counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// The current peers.
    pub fn peers(&self) -> Arc<PeerTable> {
        self.peers.load()
    }

    /// Prometheus text: the device counters, and per peer its handshakes, rekeys, bytes,
    /// allowed-IPs drops and the age of its last handshake.
    pub fn metrics_fn(&self) -> Box<dyn Fn() -> String + Send + Sync> {
        let counters = self.counters.clone();
        let peers = self.peers.clone();
        let name = self.setup.name.clone();
        Box::new(move || {
            let mut s = counters.render();
            let table = peers.load();
            s.push_str(&format!(
                "# HELP flannel_wireguard_peers Peers configured on the device.\n# TYPE flannel_wireguard_peers gauge\nflannel_wireguard_peers{{device=\"{name}\"}} {}\n",
                table.len()
            ));
            let mut age = String::from(
                "# HELP flannel_wireguard_peer_last_handshake_seconds Seconds since the peer's current session was made (absent: none yet).\n# TYPE flannel_wireguard_peer_last_handshake_seconds gauge\n",
            );
            let mut bytes = String::from(
                "# HELP flannel_wireguard_peer_bytes_total Inner bytes exchanged with the peer.\n# TYPE flannel_wireguard_peer_bytes_total counter\n",
            );
            let mut hs = String::from(
                "# HELP flannel_wireguard_peer_handshakes_total Handshakes completed with the peer.\n# TYPE flannel_wireguard_peer_handshakes_total counter\n",
            );
            let mut rk = String::from(
                "# HELP flannel_wireguard_peer_rekeys_total Rekey initiations sent to the peer.\n# TYPE flannel_wireguard_peer_rekeys_total counter\n",
            );
            let mut drops = String::from(
                "# HELP flannel_wireguard_peer_rx_dropped_allowed_ips_total Packets from the peer dropped: inner source outside its allowed IPs.\n# TYPE flannel_wireguard_peer_rx_dropped_allowed_ips_total counter\n",
            );
            use std::sync::atomic::Ordering::Relaxed;
            for (p, allowed) in table.iter() {
                let key = crate::config::encode_key(&p.public_key);
                let subnet = allowed.first().map(|n| n.to_string()).unwrap_or_default();
                let l = format!("public_key=\"{key}\",subnet=\"{subnet}\"");
                let (since, tx, rx, _, _) = p.lock().stats();
                if let Some(d) = since {
                    age.push_str(&format!(
                        "flannel_wireguard_peer_last_handshake_seconds{{{l}}} {:.3}\n",
                        d.as_secs_f64()
                    ));
                }
                bytes.push_str(&format!(
                    "flannel_wireguard_peer_bytes_total{{{l},direction=\"tx\"}} {tx}\nflannel_wireguard_peer_bytes_total{{{l},direction=\"rx\"}} {rx}\n"
                ));
                hs.push_str(&format!(
                    "flannel_wireguard_peer_handshakes_total{{{l}}} {}\n",
                    p.counters.handshakes.load(Relaxed)
                ));
                rk.push_str(&format!(
                    "flannel_wireguard_peer_rekeys_total{{{l}}} {}\n",
                    p.counters.rekeys.load(Relaxed)
                ));
                drops.push_str(&format!(
                    "flannel_wireguard_peer_rx_dropped_allowed_ips_total{{{l}}} {}\n",
                    p.counters.rx_dropped_allowed_ips.load(Relaxed)
                ));
            }
            for part in [age, bytes, hs, rk, drops] {
                s.push_str(&part);
            }
            s
        })
    }
}
