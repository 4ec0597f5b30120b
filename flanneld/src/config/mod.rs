//! # config — flanneld's command line, flag for flag with Go flannel (etcd mode)
//!
//! Existing deployments pass flannel's flags from systemd units, DaemonSets and scripts, so the
//! names, defaults and environment fallbacks are kept: every flag can also be given as
//! `FLANNELD_<FLAG_IN_UPPER_SNAKE_CASE>` (Go's `flagutil.SetFlagsFromEnv`), e.g.
//! `FLANNELD_ETCD_ENDPOINTS`, `FLANNELD_IFACE`, `FLANNELD_IP_MASQ`. Go's `flag` package also
//! accepts a single dash (`-etcd-endpoints=...`) and `--bool-flag=false`; [`Opts::parse_args`]
//! rewrites the single-dash form of our long flags before clap sees it, and boolean flags take
//! an optional `=value`.
//!
//! Two flags are ours, not flannel's, because users asked flannel for them for years:
//! `--subnet-lease-ttl` (flannel hard-codes 24 h, issues #875/#954) and
//! `--release-lease-on-shutdown` (flannel never deletes its lease, which is what makes
//! restarts hitless but leaks subnets when nodes are retired).
//!
//! Every flag of flannel's `main.go` (v0.28) is accepted, with Go's flag syntax: one or two
//! dashes, `=value` or a separate value (booleans only `-flag` or `-flag=false`), and a flag
//! given twice keeps the last value (list flags such as `--iface` accumulate). What applies
//! to etcd mode is implemented (`--ip-masq-fully-random-disable`, `-v` mapped onto the log
//! level, `--ip-blackhole-route`); Kubernetes mode is not: `--kube-subnet-mgr` (or `FLANNELD_KUBE_SUBNET_MGR=true`)
//! makes flanneld exit with a message saying so, and the other kube-mode and klog flags are
//! accepted and ignored so that existing units and DaemonSets start.
//!
//! The flag definitions live here; Go's flag syntax (the single-dash rewrite, durations) in
//! `go_syntax`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use clap::builder::BoolishValueParser;

mod go_syntax;

pub use go_syntax::parse_duration;
use go_syntax::parse_duration_arg;

/// Default etcd endpoints (flannel's).
pub const DEFAULT_ETCD_ENDPOINTS: &str = "http://127.0.0.1:4001,http://127.0.0.1:2379";
/// Default etcd key prefix (flannel's).
pub const DEFAULT_ETCD_PREFIX: &str = "/coreos.com/network";
/// Default subnet file (flannel's).
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// Default subnet lease TTL (flannel's fixed value).
pub const DEFAULT_SUBNET_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Shortest subnet lease TTL we accept: etcd rounds shorter TTLs up anyway.
pub const MIN_SUBNET_LEASE_TTL: Duration = Duration::from_secs(5);

/// flanneld's options. Field docs are the `--help` text.
#[derive(Debug, Clone, Parser, PartialEq)]
#[command(
    name = "flanneld",
    version,
    args_override_self = true,
    about = "flannel-compatible overlay network daemon (etcd mode)",
    long_about = "flannel-compatible overlay network daemon (etcd mode).\n\n\
                  Every flag can also be set through the environment as FLANNELD_<FLAG>, \
                  e.g. FLANNELD_ETCD_ENDPOINTS or FLANNELD_IP_MASQ=true."
)]
pub struct Opts {
    /// How to reach etcd (`--etcd-*`), shared with `flannelctl`.
    #[command(flatten)]
    pub etcd: EtcdFlags,

    /// Interface to use (IP or name) for inter-host communication. Can be given several
    /// times (or comma-separated); the first one that matches wins.
    #[arg(long, env = "FLANNELD_IFACE", value_delimiter = ',', action = clap::ArgAction::Append)]
    pub iface: Vec<String>,

    /// Regex expression to match the first interface to use (IP or name) for inter-host
    /// communication. Can be given several times. Checked only when no --iface matched.
    #[arg(long, env = "FLANNELD_IFACE_REGEX", action = clap::ArgAction::Append)]
    pub iface_regex: Vec<String>,

    /// Detect the interface to use as the one with the route to this IP (checked last).
    #[arg(long, env = "FLANNELD_IFACE_CAN_REACH")]
    pub iface_can_reach: Option<IpAddr>,

    /// IP accessible by other nodes for inter-host communication (default: the interface's).
    #[arg(long, env = "FLANNELD_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,

    /// IPv6 accessible by other nodes for inter-host communication (dual stack).
    #[arg(long, env = "FLANNELD_PUBLIC_IPV6")]
    pub public_ipv6: Option<Ipv6Addr>,

    /// Set up IP masquerade rules for traffic leaving the flannel network.
    #[arg(long, env = "FLANNELD_IP_MASQ", default_value = "false", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub ip_masq: bool,

    /// Filename where the env variables (subnet, MTU, ...) will be written to. Also read at
    /// start-up to prefer the subnet this node had before.
    #[arg(long, env = "FLANNELD_SUBNET_FILE", default_value = DEFAULT_SUBNET_FILE)]
    pub subnet_file: PathBuf,

    /// Subnet lease renewal margin, in minutes: renew this long before the lease would
    /// expire (1..1439). With a TTL shorter than the margin, renew every third of the TTL.
    #[arg(long, env = "FLANNELD_SUBNET_LEASE_RENEW_MARGIN", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..1440))]
    pub subnet_lease_renew_margin: u32,

    /// (flannel-rs) Time to live of this node's subnet lease in etcd, e.g. "24h", "90m",
    /// "90s" or "1h30m". flannel hard-codes 24h. A node that is down longer than this loses
    /// its subnet; while up, the lease is renewed before it expires. Minimum 5s.
    #[arg(long, env = "FLANNELD_SUBNET_LEASE_TTL", default_value = "24h", value_parser = parse_duration_arg)]
    pub subnet_lease_ttl: Duration,

    /// (flannel-rs) Delete this node's subnet lease when flanneld stops on SIGTERM/SIGINT.
    /// Off by default, like flannel: keeping the lease makes restarts hitless (same subnet,
    /// no route churn on peers). Turn it on for nodes that are being retired, so their
    /// subnet returns to the pool at once. Reservations are never deleted.
    #[arg(long, env = "FLANNELD_RELEASE_LEASE_ON_SHUTDOWN", default_value = "false",
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub release_lease_on_shutdown: bool,

    /// The IP address on which to listen for health checks.
    #[arg(long, env = "FLANNELD_HEALTHZ_IP", default_value = "0.0.0.0")]
    pub healthz_ip: IpAddr,

    /// The port on which to listen for health checks (0 disables the endpoint).
    #[arg(long, env = "FLANNELD_HEALTHZ_PORT", default_value_t = 0)]
    pub healthz_port: u16,

    /// Add default accept rules to the FORWARD chain for the flannel network.
    #[arg(long, env = "FLANNELD_IPTABLES_FORWARD_RULES", default_value = "true",
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub iptables_forward_rules: bool,

    /// Resync period for iptables rules, in seconds.
    #[arg(long, env = "FLANNELD_IPTABLES_RESYNC", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub iptables_resync: u64,

    /// Masquerade without fully randomised source ports (drops `fully-random`).
    #[arg(long, env = "FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE", default_value = "false",
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub ip_masq_fully_random_disable: bool,

    /// Keep a blackhole route for this node's subnet, re-added every --iptables-resync
    /// seconds: addresses of the subnet that no pod holds are dropped here instead of
    /// following the default route. Installed with a high metric, so the bridge's route wins
    /// while the bridge exists.
    #[arg(long, env = "FLANNELD_IP_BLACKHOLE_ROUTE", default_value = "false",
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub ip_blackhole_route: bool,

    /// Directory of the wireguard backend's UAPI socket (`<dir>/flannel-wg.sock`) when the
    /// kernel has no WireGuard module and flanneld is the device: `wg show flannel-wg` reads
    /// it. Empty: no socket. (flannel has no such flag: its backend needs the module. The key
    /// file is flannel's: `WIREGUARD_KEY_FILE`, default /run/flannel/wgkey.)
    #[arg(long, env = "FLANNELD_WIREGUARD_SOCKET_DIR", default_value = flannel_wireguard::uapi::DEFAULT_SOCKET_DIR)]
    pub wireguard_socket_dir: std::path::PathBuf,

    /// Log verbosity, as klog's `-v` in flannel: when FLANNELD_LOG and RUST_LOG are unset,
    /// 0-2 log at info, 3-5 at debug, 6 and more at trace.
    #[arg(long = "v", env = "FLANNELD_V", value_name = "LEVEL")]
    pub verbosity: Option<u8>,

    /// flannel's Kubernetes subnet manager. This build runs the etcd subnet manager only:
    /// with this flag (or FLANNELD_KUBE_SUBNET_MGR=true) flanneld exits with a message.
    #[arg(long, env = "FLANNELD_KUBE_SUBNET_MGR", default_value = "false",
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub kube_subnet_mgr: bool,

    /// (flannel-rs) Remove what flanneld created on this node — vxlan/TUN devices, routes
    /// with protocol 150, the nftables table, our iptables FORWARD rules, the subnet file —
    /// and exit. The etcd lease is kept. Run with flanneld stopped.
    #[arg(long, default_value = "false", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub cleanup: bool,

    /// flannel's flags for Kubernetes mode and klog, accepted and ignored (see
    /// [`IGNORED_FLAGS`]).
    #[command(flatten)]
    pub ignored: IgnoredFlags,
}

/// flannel flags that have no meaning in etcd mode or for our logger. They are parsed (so
/// existing command lines work) and reported once at start-up when given.
#[derive(Debug, Clone, Default, clap::Args, PartialEq)]
pub struct IgnoredFlags {
    #[arg(long, env = "FLANNELD_KUBE_API_URL", hide = true)]
    kube_api_url: Option<String>,
    #[arg(long, env = "FLANNELD_KUBECONFIG_FILE", hide = true)]
    kubeconfig_file: Option<String>,
    #[arg(long, env = "FLANNELD_KUBE_ANNOTATION_PREFIX", hide = true)]
    kube_annotation_prefix: Option<String>,
    #[arg(long, env = "FLANNELD_NET_CONFIG_PATH", hide = true)]
    net_config_path: Option<String>,
    #[arg(long, env = "FLANNELD_SET_NODE_NETWORK_UNAVAILABLE", hide = true, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    set_node_network_unavailable: Option<String>,
    #[arg(long, env = "FLANNELD_USE_MULTI_CLUSTER_CIDR", hide = true, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    use_multi_cluster_cidr: Option<String>,
    #[arg(long, env = "FLANNELD_CHARON_EXECUTABLE_PATH", hide = true)]
    charon_executable_path: Option<String>,
    #[arg(long, env = "FLANNELD_CHARON_VICIURL", hide = true)]
    charon_viciurl: Option<String>,
    #[arg(long = "vmodule", hide = true)]
    vmodule: Option<String>,
    #[arg(long = "log_backtrace_at", hide = true)]
    log_backtrace_at: Option<String>,
    #[arg(long = "log_dir", hide = true)]
    log_dir: Option<String>,
    #[arg(long = "log_file", hide = true)]
    log_file: Option<String>,
    #[arg(long = "log_file_max_size", hide = true)]
    log_file_max_size: Option<String>,
    #[arg(long = "stderrthreshold", hide = true)]
    stderrthreshold: Option<String>,
    #[arg(long = "logtostderr", hide = true, num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    logtostderr: Option<String>,
    #[arg(long = "alsologtostderr", hide = true, num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    alsologtostderr: Option<String>,
    #[arg(long = "skip_headers", hide = true, num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    skip_headers: Option<String>,
    #[arg(long = "skip_log_headers", hide = true, num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    skip_log_headers: Option<String>,
    #[arg(long = "add_dir_header", hide = true, num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    add_dir_header: Option<String>,
    #[arg(long = "one_output", hide = true, num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    one_output: Option<String>,
}

/// The names of [`IgnoredFlags`], as flannel spells them.
pub const IGNORED_FLAGS: &[&str] = &[
    "kube-api-url",
    "kubeconfig-file",
    "kube-annotation-prefix",
    "net-config-path",
    "set-node-network-unavailable",
    "use-multi-cluster-cidr",
    "charon-executable-path",
    "charon-viciurl",
    "vmodule",
    "log_backtrace_at",
    "log_dir",
    "log_file",
    "log_file_max_size",
    "stderrthreshold",
    "logtostderr",
    "alsologtostderr",
    "skip_headers",
    "skip_log_headers",
    "add_dir_header",
    "one_output",
];

impl IgnoredFlags {
    /// The ignored flags that were given, as `name=value`.
    pub fn given(&self) -> Vec<String> {
        let all = [
            &self.kube_api_url,
            &self.kubeconfig_file,
            &self.kube_annotation_prefix,
            &self.net_config_path,
            &self.set_node_network_unavailable,
            &self.use_multi_cluster_cidr,
            &self.charon_executable_path,
            &self.charon_viciurl,
            &self.vmodule,
            &self.log_backtrace_at,
            &self.log_dir,
            &self.log_file,
            &self.log_file_max_size,
            &self.stderrthreshold,
            &self.logtostderr,
            &self.alsologtostderr,
            &self.skip_headers,
            &self.skip_log_headers,
            &self.add_dir_header,
            &self.one_output,
        ];
        IGNORED_FLAGS
            .iter()
            .zip(all)
            .filter_map(|(name, v)| v.as_ref().map(|v| format!("{name}={v}")))
            .collect()
    }
}

/// The message for `--kube-subnet-mgr`.
pub const KUBE_SUBNET_MGR_UNSUPPORTED: &str = "--kube-subnet-mgr (FLANNELD_KUBE_SUBNET_MGR) is \
     set, but this flanneld runs the etcd subnet manager only: remove the flag and give \
     --etcd-endpoints (the Kubernetes subnet manager is not implemented)";

/// flannel's `--etcd-*` flags (and their `FLANNELD_ETCD_*` variables): flanneld's and
/// `flannelctl`'s, so both reach the same etcd the same way.
#[derive(Debug, Clone, clap::Args, PartialEq)]
pub struct EtcdFlags {
    /// A comma-separated list of etcd endpoints.
    #[arg(
        long,
        env = "FLANNELD_ETCD_ENDPOINTS",
        default_value = DEFAULT_ETCD_ENDPOINTS,
        value_delimiter = ','
    )]
    pub etcd_endpoints: Vec<String>,

    /// etcd prefix: the network config is read from <prefix>/config, leases live under
    /// <prefix>/subnets/.
    #[arg(long, env = "FLANNELD_ETCD_PREFIX", default_value = DEFAULT_ETCD_PREFIX)]
    pub etcd_prefix: String,

    /// SSL key file used to secure etcd communication.
    #[arg(long, env = "FLANNELD_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,

    /// SSL certification file used to secure etcd communication.
    #[arg(long, env = "FLANNELD_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,

    /// SSL Certificate Authority file used to secure etcd communication.
    #[arg(long, env = "FLANNELD_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,

    /// Username for BasicAuth to etcd.
    #[arg(long, env = "FLANNELD_ETCD_USERNAME")]
    pub etcd_username: Option<String>,

    /// Password for BasicAuth to etcd.
    #[arg(long, env = "FLANNELD_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
}

impl EtcdFlags {
    /// The etcd client settings these flags describe.
    pub fn config(&self) -> crate::subnet::EtcdConfig {
        crate::subnet::EtcdConfig {
            endpoints: self.etcd_endpoints.clone(),
            prefix: self.etcd_prefix.clone(),
            username: self.etcd_username.clone(),
            password: self.etcd_password.clone(),
            ca_file: self.etcd_cafile.clone(),
            cert_file: self.etcd_certfile.clone(),
            key_file: self.etcd_keyfile.clone(),
            ..crate::subnet::EtcdConfig::default()
        }
    }
}

impl Opts {
    /// The tracing filter `-v` stands for (see [`Opts::verbosity`]).
    pub fn log_filter_from_verbosity(&self) -> Option<&'static str> {
        self.verbosity.map(|v| match v {
            0..=2 => "info",
            3..=5 => "debug",
            _ => "trace",
        })
    }

    /// The renewal margin as a duration.
    pub fn renew_margin(&self) -> Duration {
        Duration::from_secs(u64::from(self.subnet_lease_renew_margin) * 60)
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Opts, clap::Error> {
        let mut v = vec!["flanneld"];
        v.extend_from_slice(args);
        Opts::parse_args(v)
    }

    /// Runs `f` with no FLANNELD_* variables in the environment of this process.
    /// Tests in this module do not set any, so reading is enough to be safe.
    fn assert_clean_env() {
        for (k, _) in std::env::vars() {
            assert!(!k.starts_with("FLANNELD_"), "test environment has {k} set");
        }
    }

    /// Every flag of flannel's main.go (v0.28) and klog, as units and DaemonSets pass them.
    #[test]
    fn every_flannel_flag_parses_with_go_syntax() {
        assert_clean_env();
        let all = [
            "-etcd-endpoints=http://10.0.0.1:2379",
            "--etcd-prefix",
            "/x/network",
            "-etcd-keyfile=/k.pem",
            "-etcd-certfile",
            "/c.pem",
            "--etcd-cafile=/ca.pem",
            "-etcd-username=flannel",
            "-etcd-password=pw",
            "-iface=eth0",
            "--iface",
            "eth1",
            "-iface-regex=^en",
            "-iface-can-reach=198.18.0.1",
            "-subnet-file=/run/flannel/subnet.env",
            "-public-ip=198.18.0.5",
            "-public-ipv6=fd00::5",
            "-subnet-lease-renew-margin=30",
            "-ip-masq",
            "--ip-masq-fully-random-disable",
            "-iptables-resync=10",
            "-iptables-forward-rules=false",
            "--ip-blackhole-route",
            "-healthz-ip=127.0.0.1",
            "-healthz-port=9100",
            "--net-config-path=/etc/kube-flannel/net-conf.json",
            "-kube-api-url=https://10.0.0.1:6443",
            "-kubeconfig-file",
            "/etc/kubeconfig",
            "-kube-annotation-prefix=flannel.alpha.coreos.com",
            "-set-node-network-unavailable=false",
            "-use-multi-cluster-cidr",
            "-charon-executable-path=/usr/lib/ipsec/charon",
            "-charon-viciurl=unix:///var/run/charon.vici",
            "-v=2",
            "-vmodule=main=4",
            "-log_backtrace_at=main.go:1",
            "-logtostderr",
            "-alsologtostderr=false",
            "-stderrthreshold=2",
            "-log_dir=/tmp",
            "-log_file=/tmp/f.log",
            "-log_file_max_size=100",
            "-skip_headers",
            "-skip_log_headers",
            "-add_dir_header",
            "-one_output",
        ];
        let o = parse(&all).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.etcd.etcd_prefix, "/x/network");
        assert_eq!(o.etcd.etcd_certfile, Some(PathBuf::from("/c.pem")));
        assert_eq!(o.iface, vec!["eth0", "eth1"]);
        assert!(o.ip_masq && o.ip_masq_fully_random_disable && o.ip_blackhole_route);
        assert!(!o.iptables_forward_rules);
        assert_eq!(o.iptables_resync, 10);
        assert_eq!(o.verbosity, Some(2));
        assert!(!o.kube_subnet_mgr);
        let ignored = o.ignored.given();
        assert_eq!(ignored.len(), IGNORED_FLAGS.len(), "{ignored:?}");
        assert!(ignored.contains(&"kubeconfig-file=/etc/kubeconfig".to_string()));
    }

    #[test]
    fn repeated_flags_keep_the_last_value_and_v_maps_to_a_level() {
        assert_clean_env();
        let o = parse(&[
            "--etcd-prefix=/a",
            "-etcd-prefix=/b",
            "--v",
            "4",
            "-v=7",
            "--ip-masq=false",
            "-ip-masq",
        ])
        .unwrap();
        assert_eq!(o.etcd.etcd_prefix, "/b");
        assert_eq!(o.verbosity, Some(7));
        assert_eq!(o.log_filter_from_verbosity(), Some("trace"));
        assert!(o.ip_masq);
        for (v, want) in [("0", "info"), ("2", "info"), ("3", "debug"), ("5", "debug")] {
            let o = parse(&["-v", v]).unwrap();
            assert_eq!(o.log_filter_from_verbosity(), Some(want), "-v {v}");
        }
        assert_eq!(parse(&[]).unwrap().log_filter_from_verbosity(), None);
    }

    #[test]
    fn kube_subnet_mgr_is_recognised_for_its_clear_refusal() {
        assert_clean_env();
        assert!(parse(&["--kube-subnet-mgr"]).unwrap().kube_subnet_mgr);
        assert!(parse(&["-kube-subnet-mgr=true"]).unwrap().kube_subnet_mgr);
        assert!(KUBE_SUBNET_MGR_UNSUPPORTED.contains("etcd subnet manager only"));
        assert!(parse(&["--no-such-flag"]).is_err());
    }

    #[test]
    fn defaults_match_flannel() {
        assert_clean_env();
        let o = parse(&[]).unwrap();
        assert_eq!(
            o.etcd.etcd_endpoints,
            vec!["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
        );
        assert_eq!(o.etcd.etcd_prefix, "/coreos.com/network");
        assert_eq!(o.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(o.subnet_lease_renew_margin, 60);
        assert_eq!(o.renew_margin(), Duration::from_secs(3600));
        assert_eq!(o.healthz_ip, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(o.healthz_port, 0);
        assert!(o.iptables_forward_rules);
        assert_eq!(o.iptables_resync, 5);
        assert!(!o.ip_masq);
        assert!(o.iface.is_empty() && o.iface_regex.is_empty());
        assert_eq!(o.iface_can_reach, None);
        assert_eq!(o.public_ip, None);
        assert_eq!(o.subnet_lease_ttl, Duration::from_secs(86_400));
        assert!(!o.release_lease_on_shutdown);
        assert_eq!(o.etcd.etcd_keyfile, None);
        assert_eq!(o.etcd.etcd_username, None);
    }

    #[test]
    fn flags_parse_in_go_and_gnu_styles() {
        let o = parse(&[
            "-etcd-endpoints=http://198.18.0.1:2379",
            "--etcd-prefix",
            "/x/network",
            "--iface",
            "eth1",
            "-iface=198.18.0.5",
            "--iface=eth2,eth3",
            "--iface-regex",
            "^ens",
            "--iface-can-reach=198.18.0.1",
            "--public-ip",
            "198.18.0.7",
            "--ip-masq",
            "--iptables-forward-rules=false",
            "--subnet-lease-renew-margin=1",
            "--subnet-lease-ttl=1h30m",
            "--release-lease-on-shutdown",
            "--healthz-port=8285",
        ])
        .unwrap();
        assert_eq!(o.etcd.etcd_endpoints, vec!["http://198.18.0.1:2379"]);
        assert_eq!(o.etcd.etcd_prefix, "/x/network");
        assert_eq!(o.iface, vec!["eth1", "198.18.0.5", "eth2", "eth3"]);
        assert_eq!(o.iface_regex, vec!["^ens"]);
        assert_eq!(o.iface_can_reach, Some("198.18.0.1".parse().unwrap()));
        assert_eq!(o.public_ip, Some(Ipv4Addr::new(198, 18, 0, 7)));
        assert!(o.ip_masq);
        assert!(!o.iptables_forward_rules);
        assert_eq!(o.subnet_lease_renew_margin, 1);
        assert_eq!(o.subnet_lease_ttl, Duration::from_secs(5400));
        assert!(o.release_lease_on_shutdown);
        assert_eq!(o.healthz_port, 8285);
    }

    #[test]
    fn invalid_values_are_rejected() {
        for args in [
            &["--subnet-lease-renew-margin=0"][..],
            &["--subnet-lease-renew-margin=1440"],
            &["--subnet-lease-ttl=2s"],
            &["--subnet-lease-ttl=24x"],
            &["--public-ip=not-an-ip"],
            &["--ip-masq=maybe"],
            &["--iptables-resync=0"],
            &["--v=high"],
        ] {
            assert!(parse(args).is_err(), "{args:?} should fail");
        }
    }

    #[test]
    fn every_flag_has_its_flanneld_env_var() {
        let cmd = Opts::command();
        let mut n = 0;
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            // klog's flags are not flannel's (no FLANNELD_ variable); `--cleanup` is a command,
            // not a setting, and must not be switched on by a leftover environment file.
            let klog = long.contains('_')
                || [
                    "vmodule",
                    "stderrthreshold",
                    "logtostderr",
                    "alsologtostderr",
                ]
                .contains(&long);
            if long == "help" || long == "version" || long == "cleanup" || klog {
                continue;
            }
            let want = format!("FLANNELD_{}", long.to_uppercase().replace('-', "_"));
            let got = arg.get_env().and_then(|e| e.to_str()).map(str::to_string);
            assert_eq!(got.as_deref(), Some(want.as_str()), "--{long}");
            n += 1;
        }
        assert!(n >= 20, "only {n} flags found");
    }

    #[test]
    fn durations() {
        let ok = [
            ("24h", 86_400),
            ("90s", 90),
            ("90m", 5_400),
            ("1h30m", 5_400),
            ("2d", 172_800),
            ("120", 120),
        ];
        for (s, secs) in ok {
            assert_eq!(parse_duration(s), Ok(Duration::from_secs(secs)), "{s}");
        }
        for s in ["", "h", "10x", "5ms", "1h30", "99999999999999999999h"] {
            assert!(parse_duration(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn help_documents_our_own_flags() {
        let help = Opts::command().render_long_help().to_string();
        assert!(help.contains("--subnet-lease-ttl"));
        assert!(help.contains("--release-lease-on-shutdown"));
        assert!(help.contains("hitless"));
    }
}
