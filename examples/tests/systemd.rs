//! flanneld under systemd's `Type=notify`, with the test playing systemd: a datagram socket
//! passed as `NOTIFY_SOCKET`, `WATCHDOG_USEC` set. flanneld starts before the network config
//! exists; it must say why it waits (`STATUS=`), ping the watchdog, and send `READY=1` only
//! once subnet.env is on disk — which is what orders containerd and kubelet after it.

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flannel_examples::cluster::{Backend, Cluster, ClusterSpec, wait_until};

/// Every message received, with whether subnet.env existed when it arrived.
type Received = Arc<Mutex<Vec<(String, bool)>>>;

#[test]
fn ready_only_after_subnet_env_with_status_and_watchdog() {
    if !flannel_examples::cluster::prerequisites("ready_only_after_subnet_env", &[]) {
        return;
    }
    let mut spec = ClusterSpec::new(1, Backend::Vxlan);
    spec.start_daemons = false;
    let mut c = Cluster::start(spec).unwrap_or_else(|e| panic!("cluster start: {e}"));
    let config = c
        .etcd_get("/coreos.com/network/config")
        .expect("network config");
    c.etcdctl(&["del", "/coreos.com/network/config"])
        .expect("del config");

    let sock_path = c.workdir().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let received: Received = Arc::default();
    let subnet_file = c.nodes[0].subnet_file();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (received, stop, subnet_file) = (received.clone(), stop.clone(), subnet_file.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let exists = subnet_file.exists();
                    received.lock().unwrap().push((msg, exists));
                }
            }
        })
    };
    c.start_flanneld_env(
        0,
        &[],
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    )
    .expect("start flanneld");

    // Without a network config: status lines and watchdog pings, never READY.
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || {
            received.lock().unwrap().iter().any(|(m, _)| {
                m.contains("STATUS=waiting for the network config at /coreos.com/network/config")
            })
        }),
        "no STATUS about the missing config: {:?}\n{}",
        received.lock().unwrap(),
        c.flanneld_log(0)
    );
    std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
    {
        let got = received.lock().unwrap();
        assert!(
            !got.iter().any(|(m, _)| m.contains("READY=1")),
            "READY before the config exists: {got:?}"
        );
    }
    assert!(!subnet_file.exists());

    // The config arrives: READY=1 follows, and subnet.env was already there when it came.
    c.etcdctl(&["put", "/coreos.com/network/config", &config])
        .expect("put config");
    assert!(
        wait_until(Duration::from_secs(20), || {
            received
                .lock()
                .unwrap()
                .iter()
                .any(|(m, _)| m.contains("READY=1"))
        }),
        "no READY=1: {:?}\n{}",
        received.lock().unwrap(),
        c.flanneld_log(0)
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    reader.join().unwrap();
    let got = received.lock().unwrap();
    let ready: Vec<&(String, bool)> = got.iter().filter(|(m, _)| m.contains("READY=1")).collect();
    assert_eq!(ready.len(), 1, "{got:?}");
    assert!(
        ready[0].1,
        "READY=1 arrived before subnet.env existed: {got:?}"
    );
    assert!(
        ready[0].0.contains("STATUS=ready: subnet 10.244."),
        "{got:?}"
    );
    let pings = got.iter().filter(|(m, _)| m == "WATCHDOG=1").count();
    assert!(pings >= 5, "only {pings} watchdog pings: {got:?}");
}
