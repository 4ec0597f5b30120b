//! Members — one etcd client at a time, for one member, kept until it fails.
//!
//! etcd-client's own multi-endpoint client balances every request over all `--etcd-endpoints`
//! through tonic's balanced channel, which keeps choosing a member whose lazy connect failed
//! (tonic's `Reconnect` reports it ready and hands back the stored error on the next call;
//! etcdv3/etcd-client#39): with one member of three down, a node could fail every request
//! for as long as the member stayed down. What this module does instead (the pinned
//! endpoint of etcd's Go client up to v3.3): talk to one member (a client built for that endpoint alone), stay with it
//! while it answers, and move to the next endpoint in the list when a request to it fails
//! for a reason that is the member's (refused, reset, timed out, no leader, its TLS). The
//! client of the failed member is dropped, so coming back to it later connects afresh.
//!
//! **Watches use a client of their own** that asks etcd to require a leader (etcd's
//! `hasleader` metadata, `clientv3.WithRequireLeader` in Go): a member cut off from the
//! majority ends such a watch with "no leader" (after about three election timeouts)
//! instead of keeping it open and silent while the rest of the cluster moves on, and the
//! store moves to the next member. Other requests go without it, so that serializable
//! reads still answer from any member during an election.
//!
//! **TLS files are read again for each new connection**, so certificates rotated on disk
//! (a renewed client certificate, a new CA) take effect at the first member failure after
//! the rotation — a member that rejects the old certificate is such a failure — without a
//! restart. A connection that is up keeps the certificate it was opened with; etcd does not
//! check it again. Files that cannot be read or fail the checks (`TlsFiles::load`) are
//! reported and the last good ones stay in use.
//!
//! Each pick carries a *generation*; [`Members::failed`] moves on only if the failed pick
//! is still the current one, so that requests failing together on the same member move the
//! store one member further, not several.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{Client, ConnectOptions};

use crate::subnet::etcd_tls::{LoadedTls, TlsFiles, TlsMaterial};

/// The member in use: its index in the endpoint list and its clients, once connected.
struct Current {
    index: usize,
    generation: u64,
    client: Option<Client>,
    /// The same member with require-leader, for watches.
    watch_client: Option<Client>,
    /// When a move was last worth a warning, and how many moves went to the debug log since.
    last_warning: Option<Instant>,
    quiet_moves: u64,
}

/// At most one warning per this long about moving between members: while etcd is down every
/// retry walks the whole endpoint list.
const MOVE_WARNING_INTERVAL: Duration = Duration::from_secs(30);

/// A move to the next member ([`Members::failed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Moved {
    /// The endpoint given up.
    pub from: String,
    /// The endpoint in use now.
    pub to: String,
    /// Whether to log this move as a warning (else at debug level), and if so how many
    /// moves were logged at debug level since the last warning.
    pub warn: Option<u64>,
}

impl Current {
    fn slot(&mut self, purpose: Purpose) -> &mut Option<Client> {
        match purpose {
            Purpose::Requests => &mut self.client,
            Purpose::Watch => &mut self.watch_client,
        }
    }
}

/// What a client is for (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// Unary requests and the lease keep-alive stream.
    Requests,
    /// Watches: etcd ends them when the member loses its leader.
    Watch,
}

/// A member's client, and the generation to report if a request to it fails.
pub(super) struct Pick {
    pub client: Client,
    pub generation: u64,
}

/// Where TLS settings come from: the files, and what was last read from them successfully.
pub(super) struct TlsSource {
    files: TlsFiles,
    last_good: Mutex<LoadedTls>,
}

impl TlsSource {
    /// `loaded` is what `files` held at start.
    pub fn new(files: TlsFiles, loaded: LoadedTls) -> Self {
        Self {
            files,
            last_good: Mutex::new(loaded),
        }
    }

    /// Reads the files again; keeps (and returns) the last good settings if they fail.
    fn reload(&self) -> LoadedTls {
        let mut last_good = self.last_good.lock().expect("tls lock");
        match self.files.load(SystemTime::now()) {
            Ok(fresh) => {
                if fresh.material != last_good.material {
                    tracing::info!("etcd TLS files changed; new connections use them");
                    *last_good = fresh;
                }
            }
            Err(e) => tracing::warn!(
                error = %e,
                "cannot use the etcd TLS files as they are now; new connections keep the ones \
                 read before"
            ),
        }
        last_good.clone()
    }
}

/// The endpoint list and the member in use (see the module docs).
pub(super) struct Members {
    endpoints: Vec<String>,
    /// Everything but TLS, which comes from `tls` at each connection.
    options: ConnectOptions,
    tls: Option<TlsSource>,
    current: Mutex<Current>,
}

impl Members {
    /// Starts at endpoint `first`; nothing is connected yet.
    pub fn new(
        endpoints: Vec<String>,
        first: usize,
        options: ConnectOptions,
        tls: Option<TlsSource>,
    ) -> Self {
        assert!(first < endpoints.len(), "checked by the caller");
        Self {
            endpoints,
            options,
            tls,
            current: Mutex::new(Current {
                index: first,
                generation: 0,
                client: None,
                watch_client: None,
                last_warning: None,
                quiet_moves: 0,
            }),
        }
    }

    /// How many endpoints there are (the most members one request may try).
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// The TLS files' contents in use for new connections (`None` over http).
    pub fn tls_material(&self) -> Option<TlsMaterial> {
        let tls = self.tls.as_ref()?;
        Some(tls.last_good.lock().expect("tls lock").material.clone())
    }

    /// The generation of the member in use.
    pub fn generation(&self) -> u64 {
        self.current.lock().expect("members lock").generation
    }

    /// The endpoint in use, for log lines.
    pub fn endpoint_in_use(&self) -> String {
        let current = self.current.lock().expect("members lock");
        self.endpoints[current.index].clone()
    }

    /// The client of the member in use, connecting it first if needed. Without a user name
    /// connecting is lazy (no I/O); with one, etcd-client authenticates here, and a failure
    /// comes back with the generation to pass to [`failed`](Self::failed).
    pub async fn pick(&self, purpose: Purpose) -> Result<Pick, (u64, etcd_client::Error)> {
        let (index, generation) = {
            let mut current = self.current.lock().expect("members lock");
            let generation = current.generation;
            if let Some(client) = current.slot(purpose) {
                return Ok(Pick {
                    client: client.clone(),
                    generation,
                });
            }
            (current.index, generation)
        };
        let endpoint = [self.endpoints[index].as_str()];
        let mut options = match &self.tls {
            Some(tls) => self.options.clone().with_tls(tls.reload().options),
            None => self.options.clone(),
        };
        if purpose == Purpose::Watch {
            options = options.with_require_leader(true);
        }
        let client = Client::connect(endpoint, Some(options))
            .await
            .map_err(|e| (generation, e))?;
        let mut current = self.current.lock().expect("members lock");
        if current.generation == generation {
            let slot = current.slot(purpose);
            if slot.is_none() {
                *slot = Some(client.clone());
            }
        }
        Ok(Pick { client, generation })
    }

    /// A request to the member picked in `generation` failed because of that member: use
    /// the next endpoint from now on (the same one again when there is only one, with a
    /// fresh connection). Returns the move, or `None` when another request had already
    /// moved on.
    pub fn failed(&self, generation: u64) -> Option<Moved> {
        let mut current = self.current.lock().expect("members lock");
        if current.generation != generation {
            return None;
        }
        let from = current.index;
        current.index = (from + 1) % self.endpoints.len();
        current.generation += 1;
        current.client = None;
        current.watch_client = None;
        let now = Instant::now();
        let warn = match current.last_warning {
            Some(at) if now.duration_since(at) < MOVE_WARNING_INTERVAL => {
                current.quiet_moves += 1;
                None
            }
            _ => {
                current.last_warning = Some(now);
                Some(std::mem::take(&mut current.quiet_moves))
            }
        };
        Some(Moved {
            from: self.endpoints[from].clone(),
            to: self.endpoints[current.index].clone(),
            warn,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Members {
        let endpoints = (0..n)
            .map(|i| format!("http://198.18.0.{}:2379", 201 + i))
            .collect();
        Members::new(endpoints, 0, ConnectOptions::new(), None)
    }

    #[tokio::test]
    async fn a_pick_is_kept_until_it_fails() {
        let m = members(3);
        let a = m
            .pick(Purpose::Requests)
            .await
            .expect("lazy connect")
            .generation;
        let b = m
            .pick(Purpose::Requests)
            .await
            .expect("same client")
            .generation;
        assert_eq!(a, b);
        assert_eq!(m.endpoint_in_use(), "http://198.18.0.201:2379");
    }

    #[tokio::test]
    async fn a_failure_moves_on_once_and_wraps_around() {
        let m = members(3);
        let first = m.pick(Purpose::Requests).await.unwrap().generation;
        assert_eq!(
            m.failed(first),
            Some(Moved {
                from: "http://198.18.0.201:2379".to_string(),
                to: "http://198.18.0.202:2379".to_string(),
                warn: Some(0),
            })
        );
        // A second request that failed on the same member does not skip a member.
        assert_eq!(m.failed(first), None);
        assert_eq!(m.endpoint_in_use(), "http://198.18.0.202:2379");
        let second = m.pick(Purpose::Requests).await.unwrap().generation;
        assert_ne!(first, second);
        // Moves within the warning interval go to the debug log, counted for the next
        // warning.
        assert_eq!(m.failed(second).and_then(|moved| moved.warn), None);
        let third = m.pick(Purpose::Requests).await.unwrap().generation;
        assert_eq!(m.failed(third).and_then(|moved| moved.warn), None);
        assert_eq!(m.endpoint_in_use(), "http://198.18.0.201:2379");
        assert_eq!(m.current.lock().unwrap().quiet_moves, 2);
    }

    #[tokio::test]
    async fn one_endpoint_is_reconnected_after_a_failure() {
        let m = members(1);
        let first = m.pick(Purpose::Requests).await.unwrap().generation;
        assert!(m.failed(first).is_some());
        assert_eq!(m.endpoint_in_use(), "http://198.18.0.201:2379");
        assert_ne!(m.pick(Purpose::Requests).await.unwrap().generation, first);
    }
}
