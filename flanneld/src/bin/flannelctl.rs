//! `flannelctl`: the subnet leases in etcd, for humans.
//!
//! ```text
//! flannelctl [etcd flags] leases [-o table|json]          list every lease and reservation
//! flannelctl [etcd flags] reserve SUBNET --public-ip IP [--backend-type T]
//! flannelctl [etcd flags] unreserve SUBNET                 delete a reservation (never a lease)
//! flannelctl [etcd flags] release SUBNET                   delete a (dead) node's lease
//! ```
//!
//! The etcd flags are flanneld's (`--etcd-endpoints`, `--etcd-prefix`, `--etcd-cafile`,
//! `--etcd-certfile`, `--etcd-keyfile`, `--etcd-username`, `--etcd-password`) with the same
//! `FLANNELD_*` variables, so `set -a; . /etc/default/flanneld` configures both. A reservation
//! is a subnet key without an etcd lease (flannel's convention): the node whose public IP it
//! names gets that subnet, and it never expires.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use flanneld::subnet::{EtcdLeaseStore, LeaseStore};
use ipam::lease::{Lease, LeaseAttrs, NO_IPV4_SUBNET, subnet_key};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

#[derive(Debug, Parser)]
#[command(
    name = "flannelctl",
    version,
    about = "Inspect and edit flannel subnet leases in etcd"
)]
struct Cli {
    /// flanneld's etcd flags.
    #[command(flatten)]
    etcd: flanneld::config::EtcdFlags,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// List every lease and reservation.
    Leases {
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Output,
    },
    /// Reserve SUBNET for the node with --public-ip (a key without TTL). Dual stack: add
    /// --ipv6-subnet and --public-ipv6; IPv6-only: an IPv6 SUBNET and --public-ipv6.
    Reserve {
        /// e.g. 10.244.9.0/24, or fd00:10:244:9::/64 in an IPv6-only network
        subnet: IpNetwork,
        /// The node's public IP (needed with an IPv4 SUBNET).
        #[arg(long)]
        public_ip: Option<Ipv4Addr>,
        /// The node's IPv6 subnet in a dual-stack network, e.g. fd00:10:244:9::/64.
        #[arg(long)]
        ipv6_subnet: Option<Ipv6Network>,
        /// The node's public IPv6 address (needed with an IPv6 subnet).
        #[arg(long)]
        public_ipv6: Option<Ipv6Addr>,
        /// The backend type the node runs.
        #[arg(long, default_value = "vxlan")]
        backend_type: String,
    },
    /// Delete the reservation of SUBNET (refuses a lease). Either half of a dual-stack key.
    Unreserve {
        /// e.g. 10.244.9.0/24 or fd00:10:244:9::/64
        subnet: IpNetwork,
    },
    /// Delete the lease of SUBNET, e.g. of a node that is gone (refuses a reservation).
    /// Either half of a dual-stack key.
    Release {
        /// e.g. 10.244.9.0/24 or fd00:10:244:9::/64
        subnet: IpNetwork,
    },
}

/// One row of the listing.
#[derive(Debug, serde::Serialize)]
struct Row {
    subnet: String,
    ipv6_subnet: Option<String>,
    public_ip: String,
    /// `PublicIPv6` (dual-stack and IPv6-only leases).
    public_ipv6: Option<String>,
    backend: String,
    /// VTEP MAC (vxlan) or public key (wireguard), if the lease carries one.
    vtep_mac_or_key: Option<String>,
    /// The same from `BackendV6Data`.
    vtep_mac_or_key_v6: Option<String>,
    /// Seconds left on the etcd lease; `null` for a reservation.
    ttl_seconds: Option<i64>,
    kind: &'static str,
    lease_id: Option<String>,
}

fn backend_detail(data: Option<&ipam::lease::BackendData>) -> Option<String> {
    let data = data?.value();
    ["VtepMAC", "PublicKey"]
        .iter()
        .find_map(|k| data.get(k).and_then(|v| v.as_str()).map(str::to_string))
}

async fn rows(store: &EtcdLeaseStore) -> anyhow::Result<Vec<Row>> {
    let listing = store.list().await?;
    let mut client = store.client().await?;
    let mut rows = Vec::new();
    for l in &listing.leases {
        let ttl = match l.lease_id {
            Some(id) if l.leased => Some(
                client
                    .lease_time_to_live(id, None)
                    .await
                    .map(|r| r.ttl())
                    .unwrap_or(-1),
            ),
            _ => None,
        };
        rows.push(Row {
            subnet: l.subnet.to_string(),
            ipv6_subnet: l.ipv6_subnet.map(|s| s.to_string()),
            public_ip: l.attrs.public_ip.to_string(),
            public_ipv6: l.attrs.public_ipv6.map(|a| a.to_string()),
            backend: l.attrs.backend_type.clone(),
            vtep_mac_or_key: backend_detail(l.attrs.backend_data.as_ref()),
            vtep_mac_or_key_v6: backend_detail(l.attrs.backend_v6_data.as_ref()),
            ttl_seconds: ttl,
            kind: if l.leased { "lease" } else { "reservation" },
            lease_id: l.lease_id.map(|id| format!("{id:x}")),
        });
    }
    for (v4, _) in &listing.unreadable {
        rows.push(Row {
            subnet: v4.to_string(),
            ipv6_subnet: None,
            public_ip: "?".into(),
            public_ipv6: None,
            backend: "?".into(),
            vtep_mac_or_key: None,
            vtep_mac_or_key_v6: None,
            ttl_seconds: None,
            kind: "unreadable",
            lease_id: None,
        });
    }
    rows.sort_by_key(|r| {
        r.subnet
            .parse::<Ipv4Network>()
            .map(|n| u32::from(n.network()))
            .unwrap_or(u32::MAX)
    });
    Ok(rows)
}

fn print_table(rows: &[Row]) {
    let header = [
        "SUBNET",
        "PUBLIC-IP",
        "BACKEND",
        "VTEP-MAC/KEY",
        "TTL",
        "KIND",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            // Both families, comma-separated; an IPv6-only lease's IPv4 half (flannel's empty
            // 0.0.0.0/0, PublicIP 0.0.0.0) is left out.
            let both = |v4: &str, v6: Option<&String>, empty: &str| {
                let v4 = (v4 != empty).then(|| v4.to_string());
                let all: Vec<String> = v4.into_iter().chain(v6.cloned()).collect();
                if all.is_empty() {
                    "-".to_string()
                } else {
                    all.join(",")
                }
            };
            [
                both(&r.subnet, r.ipv6_subnet.as_ref(), "0.0.0.0/0"),
                both(&r.public_ip, r.public_ipv6.as_ref(), "0.0.0.0"),
                r.backend.clone(),
                both(
                    r.vtep_mac_or_key.as_deref().unwrap_or(""),
                    r.vtep_mac_or_key_v6.as_ref(),
                    "",
                ),
                r.ttl_seconds
                    .map(|t| format_ttl(Duration::from_secs(t.max(0) as u64)))
                    .unwrap_or_else(|| "-".into()),
                r.kind.to_string(),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cols: [&str; 6]| {
        let mut s = String::new();
        for (i, (c, w)) in cols.iter().zip(width).enumerate() {
            if i + 1 == cols.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header);
    for row in &cells {
        line([&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]]);
    }
}

/// `23h59m`, `5m3s`, `42s`.
fn format_ttl(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec}s"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = cli.etcd.config();
    let store = EtcdLeaseStore::connect(&cfg).await?;
    match cli.command {
        Cmd::Leases { output } => {
            let rows = rows(&store).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                Output::Table => print_table(&rows),
            }
        }
        Cmd::Reserve {
            subnet,
            public_ip,
            ipv6_subnet,
            public_ipv6,
            backend_type,
        } => {
            let (v4, v6) = match subnet {
                IpNetwork::V4(n) => (
                    Ipv4Network::new(n.network(), n.prefix())?,
                    ipv6_subnet
                        .map(|n| Ipv6Network::new(n.network(), n.prefix()))
                        .transpose()?,
                ),
                IpNetwork::V6(n) if ipv6_subnet.is_none() => (
                    NO_IPV4_SUBNET,
                    Some(Ipv6Network::new(n.network(), n.prefix())?),
                ),
                IpNetwork::V6(_) => {
                    anyhow::bail!("--ipv6-subnet goes with an IPv4 SUBNET (dual stack)")
                }
            };
            let public_ip = match (v4 == NO_IPV4_SUBNET, public_ip) {
                (false, Some(ip)) => ip,
                (false, None) => anyhow::bail!("--public-ip is required with an IPv4 subnet"),
                (true, None) => Ipv4Addr::UNSPECIFIED,
                (true, Some(_)) => anyhow::bail!("--public-ip: an IPv6-only reservation has none"),
            };
            if v6.is_some() != public_ipv6.is_some() {
                anyhow::bail!("--public-ipv6 goes with an IPv6 subnet, and is required by one");
            }
            let mut attrs = LeaseAttrs::new(public_ip, backend_type);
            attrs.public_ipv6 = public_ipv6;
            let key = format!("{}{}", store.subnets_prefix(), subnet_key(&v4, v6.as_ref()));
            let mut c = store.client().await?;
            let txn = etcd_client::Txn::new()
                .when([etcd_client::Compare::version(
                    key.as_str(),
                    etcd_client::CompareOp::Equal,
                    0,
                )])
                .and_then([etcd_client::TxnOp::put(key.as_str(), attrs.to_json(), None)]);
            if !c.txn(txn).await?.succeeded() {
                anyhow::bail!("{key} exists already (a lease or a reservation); not overwritten");
            }
            let who: Vec<String> = (v4 != NO_IPV4_SUBNET)
                .then(|| public_ip.to_string())
                .into_iter()
                .chain(public_ipv6.map(|a| a.to_string()))
                .collect();
            let what: Vec<String> = (v4 != NO_IPV4_SUBNET)
                .then(|| v4.to_string())
                .into_iter()
                .chain(v6.map(|n| n.to_string()))
                .collect();
            println!("reserved {} for {}", what.join(","), who.join(","));
        }
        Cmd::Unreserve { subnet } | Cmd::Release { subnet } => {
            let releasing = matches!(cli.command, Cmd::Release { .. });
            // The key may name two subnets (dual stack) or an IPv6 one only: find it by
            // either half.
            let subnet = IpNetwork::new(subnet.network(), subnet.prefix())?;
            let matches: Vec<Lease> = store
                .list()
                .await?
                .leases
                .into_iter()
                .filter(|l| match subnet {
                    IpNetwork::V4(n) => l.ipv4_subnet() == Some(n),
                    IpNetwork::V6(n) => l.ipv6_subnet == Some(n),
                })
                .collect();
            let lease = match matches.as_slice() {
                [] => anyhow::bail!("no key for {subnet} under {}", store.subnets_prefix()),
                [one] => one.clone(),
                many => anyhow::bail!(
                    "{} keys hold {subnet}: {}; delete the right one with etcdctl",
                    many.len(),
                    many.iter().map(Lease::key).collect::<Vec<_>>().join(", ")
                ),
            };
            match (releasing, lease.leased) {
                (true, false) => anyhow::bail!(
                    "{subnet} is a reservation, not a lease; use `flannelctl unreserve`"
                ),
                (false, true) => anyhow::bail!(
                    "{subnet} is a lease of {}, not a reservation; use `flannelctl release`",
                    lease.attrs.public_ip
                ),
                _ => {}
            }
            if !store.delete(&lease).await? {
                anyhow::bail!("{subnet} changed while deleting it; look again");
            }
            let what = if releasing { "released" } else { "unreserved" };
            println!("{what} {subnet} ({}, {})", lease.key(), lease_owner(&lease));
        }
    }
    Ok(())
}

fn lease_owner(l: &Lease) -> String {
    match (l.ipv4_subnet(), l.attrs.public_ipv6) {
        (Some(_), None) => format!("public IP {}", l.attrs.public_ip),
        (Some(_), Some(v6)) => format!("public IPs {},{v6}", l.attrs.public_ip),
        (None, v6) => format!("public IP {}", v6.map_or("-".into(), |a| a.to_string())),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flannelctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flannelctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_formatting() {
        assert_eq!(format_ttl(Duration::from_secs(42)), "42s");
        assert_eq!(format_ttl(Duration::from_secs(303)), "5m3s");
        assert_eq!(format_ttl(Duration::from_secs(86_399)), "23h59m");
    }
}
