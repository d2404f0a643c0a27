//! The retiring process of a session drain (`--drain-sessions`): after a rolling restart
//! flipped a slot to its replacement, the old process keeps serving the sessions pinned to
//! its generation (the router sends them to its address), is told `{"type":"drain"}` on the
//! bus so a cooperating app can hand its sessions off, and is stopped at the first of:
//! - it handed everything off (`handoff-end`), every hand-off was adopted, and nothing is in
//!   flight on it;
//! - none of its sessions was active for `--drain-idle` (requests and open tunnels count);
//! - `--drain-timeout` passed;
//! - the slot is replaced again (a second SIGHUP) or the cluster stops.
//!
//! If it dies on its own, its sessions move to the replacement (`X-Sticky: moved`).

use std::sync::Arc;
use std::time::Duration;

use tokio::process::Child;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{wait_until, worker, SupervisorConfig};
use crate::workers::{WorkerId, WorkerSet};

/// How often the stop conditions are checked.
const CHECK: Duration = Duration::from_millis(100);

/// A running session drain.
#[derive(Debug)]
pub struct Handle {
    task: JoinHandle<()>,
    hurry: CancellationToken,
}

impl Handle {
    /// Ends the drain now (the old process finishes what is in flight, then stops) and
    /// waits until it stopped.
    pub async fn finish(self) {
        self.hurry.cancel();
        let _ = self.task.await;
    }
}

/// What a session drain needs.
#[derive(Debug)]
pub struct Retire {
    /// The slot.
    pub id: WorkerId,
    /// The old process's address.
    pub index: usize,
    /// Its pid.
    pub pid: u32,
    /// The supervisor's settings.
    pub config: Arc<SupervisorConfig>,
    /// The slots.
    pub workers: Arc<WorkerSet>,
    /// The cluster's stop.
    pub stop: CancellationToken,
}

/// Why a retiring process stops.
#[derive(Debug, Clone, Copy)]
enum Why {
    HandedOff,
    Idle,
    Timeout,
    Hurried,
    Stopping,
}

impl Retire {
    /// Runs the drain of `child` in its own task.
    pub fn spawn(self, child: Child) -> Handle {
        let hurry = CancellationToken::new();
        let task = tokio::spawn(self.run(child, hurry.clone()));
        Handle { task, hurry }
    }

    async fn run(self, mut child: Child, hurry: CancellationToken) {
        let (id, pid) = (self.id, self.pid);
        let started = tokio::time::Instant::now();
        let deadline = started + self.config.drain_timeout;
        let mut asked = false;
        let why = loop {
            if !asked && started.elapsed() < self.config.ready_timeout {
                asked = self.ask_for_handoff();
            }
            tokio::select! {
                status = child.wait() => {
                    let status = status.map_or_else(|e| e.to_string(), |s| worker::describe_exit(&s));
                    self.workers.end_retiring(id);
                    tracing::warn!(worker = id, pid, %status, "retiring worker died; its sessions move to the replacement");
                    return;
                }
                _ = self.stop.cancelled() => break Why::Stopping,
                _ = hurry.cancelled() => break Why::Hurried,
                _ = tokio::time::sleep(CHECK) => {}
            }
            if let Some(why) = self.done(deadline) {
                break why;
            }
        };
        let view = self.workers.retiring(id);
        self.workers.end_retiring(id);
        tracing::info!(
            worker = id,
            pid,
            reason = ?why,
            adopted = view.map_or(0, |v| v.adopted),
            "retiring worker stops; its remaining sessions go to the replacement"
        );
        self.finish_in_flight().await;
        let status = worker::stop(&mut child, self.config.kill_timeout).await;
        tracing::info!(
            worker = id,
            pid,
            status = ?status.map(|s| worker::describe_exit(&s)),
            "retiring worker stopped"
        );
    }

    /// Tells the old process to hand its sessions off once both it and the replacement are
    /// on the bus (the replacement receives the hand-offs); true once asked. Tried at every
    /// check for at most the ready timeout: an app that never connects is not asked, and
    /// its drain goes on without hand-off.
    fn ask_for_handoff(&self) -> bool {
        let Some(bus) = &self.config.bus else {
            return true;
        };
        let (id, old) = (self.id, self.index);
        if !(bus.connected(id, old) && bus.connected(id, 1 - old)) {
            return false;
        }
        if bus.drain(id, old) {
            tracing::debug!(
                worker = id,
                pid = self.pid,
                "asked the retiring worker to hand off its sessions"
            );
        }
        true
    }

    /// The reason to stop now, if there is one.
    fn done(&self, deadline: tokio::time::Instant) -> Option<Why> {
        let id = self.id;
        let view = self.workers.retiring(id)?;
        let idle = self.workers.in_flight(id, self.index) == 0;
        if view.handed_off && view.unadopted == 0 && idle {
            return Some(Why::HandedOff);
        }
        if self.workers.retiring_idle(id) >= self.config.drain_idle {
            return Some(Why::Idle);
        }
        (tokio::time::Instant::now() >= deadline).then_some(Why::Timeout)
    }

    /// Lets requests already sent to the old process finish (bounded), then closes its
    /// tunnels, each after a random delay.
    async fn finish_in_flight(&self) {
        let (id, index) = (self.id, self.index);
        let idle = |w: &WorkerSet| w.in_flight(id, index) == 0;
        let grace = self.config.close_jitter + Duration::from_secs(1);
        if wait_until(&self.workers, grace, &CancellationToken::new(), idle).await {
            return;
        }
        self.workers.close_tunnels(id, index);
        wait_until(&self.workers, grace, &CancellationToken::new(), idle).await;
    }
}
