//! `--upstream-dns NAME:PORT`: every address the system resolver gives for NAME (hosts
//! file, then DNS with its search list; a Kubernetes headless Service lists its ready pods)
//! is a worker on PORT. The names are resolved again every `--dns-interval`; an address
//! that appears takes a vacant discovered slot, one that is missing from two successful
//! answers in a row leaves its slot. A failed resolution changes nothing: the workers last
//! listed keep serving until an answer says otherwise.
//!
//! A worker is named by its address, so its affinity cookie and its shared-table entries
//! are the same on every proxy that discovers it, and adding or removing one moves only the
//! sessions of the one removed.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::routing::Router;
use crate::settings::DnsName;
use crate::workers::{WorkerId, WorkerSet};

/// Successful answers in a row an address must be missing from before its worker leaves:
/// one answer that misses it (a resolver's truncated or rotated list) moves nobody.
const MISSES_TO_LEAVE: u8 = 2;

/// Longest the first resolution may hold the proxy's start.
const FIRST_ROUND_BOUND: Duration = Duration::from_secs(5);

/// The names, what each last resolved to, and the slots their addresses hold.
pub struct Discovery {
    names: Vec<DnsName>,
    workers: Arc<WorkerSet>,
    router: Arc<Router>,
    /// Each name's last successful answer.
    listed: Vec<Option<HashSet<SocketAddr>>>,
    /// Successful rounds in a row each occupied address was missing from.
    misses: HashMap<SocketAddr, u8>,
    /// Addresses already reported as finding no vacant slot (said once).
    no_room: HashSet<SocketAddr>,
    /// Names whose last resolution failed (a failure is said once, a recovery too).
    failing: Vec<bool>,
}

impl Discovery {
    /// Discovery of `names` into the discovered slots of `workers`.
    pub fn new(names: Vec<DnsName>, workers: Arc<WorkerSet>, router: Arc<Router>) -> Self {
        let n = names.len();
        Self {
            names,
            workers,
            router,
            listed: vec![None; n],
            misses: HashMap::new(),
            no_room: HashSet::new(),
            failing: vec![false; n],
        }
    }

    /// Resolves once now (at most a few seconds, so the first requests find workers),
    /// then again every `interval` until `stop`.
    pub async fn start(mut self, interval: Duration, stop: CancellationToken) {
        if tokio::time::timeout(FIRST_ROUND_BOUND, self.round())
            .await
            .is_err()
        {
            tracing::warn!(
                "--upstream-dns: the first resolution took over {FIRST_ROUND_BOUND:?}; serving meanwhile, workers join as the names resolve"
            );
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => self.round().await,
                    () = stop.cancelled() => return,
                }
            }
        });
    }

    /// Resolves every name and brings the slots in line with the answers.
    pub async fn round(&mut self) {
        for i in 0..self.names.len() {
            let answer = resolve(&self.names[i]).await;
            self.record(i, answer);
        }
        let wanted: HashSet<SocketAddr> = self.listed.iter().flatten().flatten().copied().collect();
        self.leave(&wanted);
        self.join(&wanted);
    }

    fn record(&mut self, i: usize, answer: std::io::Result<HashSet<SocketAddr>>) {
        let name = &self.names[i];
        match answer {
            Ok(addrs) => {
                if std::mem::replace(&mut self.failing[i], false) {
                    tracing::info!(%name, workers = addrs.len(), "--upstream-dns name resolves again");
                }
                self.listed[i] = Some(addrs);
            }
            Err(e) => {
                if !std::mem::replace(&mut self.failing[i], true) {
                    tracing::warn!(%name, error = %e, "--upstream-dns name does not resolve; its workers last listed keep serving");
                }
            }
        }
    }

    /// Vacates the slots of addresses missing from enough answers in a row.
    fn leave(&mut self, wanted: &HashSet<SocketAddr>) {
        for (id, addr) in self.occupied() {
            if wanted.contains(&addr) {
                self.misses.remove(&addr);
                continue;
            }
            let misses = self.misses.entry(addr).or_insert(0);
            *misses += 1;
            if *misses >= MISSES_TO_LEAVE {
                self.misses.remove(&addr);
                self.workers.vacate(id);
                if let Some(a) = self.router.affinity() {
                    a.relabel(id, None);
                }
                tracing::info!(worker = id, %addr, "worker left the --upstream-dns answer; its sessions move to the others");
            }
        }
    }

    /// Gives each new address a vacant slot: the one it held last if still vacant, else
    /// one never used, else any.
    fn join(&mut self, wanted: &HashSet<SocketAddr>) {
        let held: HashSet<SocketAddr> = self.occupied().into_iter().map(|(_, a)| a).collect();
        let mut new: Vec<SocketAddr> = wanted.difference(&held).copied().collect();
        new.sort_unstable();
        for addr in new {
            let Some(id) = self.vacant_slot_for(addr) else {
                if self.no_room.insert(addr) {
                    tracing::warn!(%addr, max = self.workers.discovered().count(), "--upstream-dns lists more workers than --dns-max-workers; this one gets no requests");
                }
                continue;
            };
            self.no_room.remove(&addr);
            if let Some(a) = self.router.affinity() {
                // The token first: the slot may be chosen for a new session at once.
                a.relabel(id, Some(&addr.to_string()));
            }
            self.workers.occupy(id, addr);
            tracing::info!(worker = id, %addr, "worker joined from the --upstream-dns answer");
        }
    }

    fn vacant_slot_for(&self, addr: SocketAddr) -> Option<WorkerId> {
        let vacant: Vec<WorkerId> = self
            .workers
            .discovered()
            .filter(|&id| self.workers.is_vacant(id))
            .collect();
        let last = |id: &&WorkerId| self.workers.addr(**id);
        vacant
            .iter()
            .find(|id| last(id) == Some(addr))
            .or_else(|| {
                vacant
                    .iter()
                    .find(|id| last(id).is_none_or(|a| a.port() == 0))
            })
            .or_else(|| vacant.first())
            .copied()
    }

    /// The discovered slots an address holds, with it.
    fn occupied(&self) -> Vec<(WorkerId, SocketAddr)> {
        let w = &self.workers;
        w.discovered()
            .filter(|&id| !w.is_vacant(id))
            .filter_map(|id| w.addr(id).map(|a| (id, a)))
            .collect()
    }
}

/// Every address `name` resolves to now, on its port.
async fn resolve(name: &DnsName) -> std::io::Result<HashSet<SocketAddr>> {
    let addrs = tokio::net::lookup_host((name.host.as_str(), name.port)).await?;
    Ok(addrs.collect())
}
