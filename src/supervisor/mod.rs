//! The supervisor: one task per worker slot that starts the process, waits until its port
//! accepts connections, publishes its state in the [`WorkerSet`], and respawns it with a
//! growing back-off when it dies. It owns processes and nothing about HTTP.

pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::workers::{WorkerId, WorkerSet, WorkerState};
pub use worker::{Launch, WorkerError};

/// A worker that ran at least this long is healthy again: its back-off starts over.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const READY_POLL: Duration = Duration::from_millis(20);

/// What the supervisor needs to know.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// How workers are started.
    pub launch: Launch,
    /// Respawn workers that exit.
    pub respawn: bool,
    /// How long a starting worker may take to accept connections.
    pub ready_timeout: Duration,
    /// Time between SIGTERM and SIGKILL.
    pub kill_timeout: Duration,
    /// Extra environment per worker slot (the message bus socket, say).
    pub worker_env: Vec<Vec<(String, std::ffi::OsString)>>,
}

/// How the first start of a slot went.
#[derive(Debug)]
pub enum FirstStart {
    /// The worker accepts connections.
    Ready,
    /// It could not be started, exited, or never became ready.
    Failed(StartError),
}

/// Why a worker did not come up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The process could not be started at all.
    #[error(transparent)]
    Spawn(#[from] WorkerError),
    /// The process exited before its port accepted connections.
    #[error("worker {id} exited ({status}) before listening on port {port}")]
    Exited {
        /// Worker id.
        id: WorkerId,
        /// Its port.
        port: u16,
        /// How it ended.
        status: String,
    },
    /// The port did not accept connections in time.
    #[error("worker {id} did not listen on port {port} within {timeout:?}: does the app listen on process.env.PORT?")]
    NotReady {
        /// Worker id.
        id: WorkerId,
        /// Its port.
        port: u16,
        /// The timeout.
        timeout: Duration,
    },
}

/// Runs every slot until `stop` fires; each slot reports its first start on `first`.
pub fn start(
    config: Arc<SupervisorConfig>,
    workers: Arc<WorkerSet>,
    stop: CancellationToken,
    first: mpsc::UnboundedSender<FirstStart>,
) -> JoinSet<()> {
    let mut set = JoinSet::new();
    for id in workers.ids() {
        set.spawn(run_slot(
            id,
            config.clone(),
            workers.clone(),
            stop.clone(),
            first.clone(),
        ));
    }
    set
}

async fn run_slot(
    id: WorkerId,
    config: Arc<SupervisorConfig>,
    workers: Arc<WorkerSet>,
    stop: CancellationToken,
    first: mpsc::UnboundedSender<FirstStart>,
) {
    let Some(addr) = workers.addr(id) else { return };
    let total = workers.len();
    let mut reported = false;
    let mut crashes: u32 = 0;
    loop {
        workers.set_state(id, WorkerState::Starting);
        let started = Instant::now();
        let env = config
            .worker_env
            .get(usize::from(id))
            .map_or(&[][..], Vec::as_slice);
        let outcome = match config.launch.spawn(id, addr.port(), env) {
            Ok(child) => {
                run_once(
                    id,
                    total,
                    addr,
                    child,
                    &config,
                    &workers,
                    &stop,
                    &first,
                    &mut reported,
                )
                .await
            }
            // At first start the master reports this once, as the cluster's error.
            Err(e) if !reported => {
                let _ = first.send(FirstStart::Failed(StartError::Spawn(e)));
                return;
            }
            Err(e) => {
                tracing::error!(worker = id, error = %e, "worker could not be started");
                Exit::Failed(StartError::Spawn(e))
            }
        };
        workers.set_state(id, WorkerState::Down);
        workers.set_pid(id, 0);
        let failure = match outcome {
            Exit::Stopped => return,
            Exit::Failed(e) => e,
        };
        if !reported {
            reported = true;
            let _ = first.send(FirstStart::Failed(failure));
        }
        if !config.respawn || stop.is_cancelled() {
            return;
        }
        crashes = if started.elapsed() >= STABLE_AFTER {
            1
        } else {
            crashes + 1
        };
        let delay = backoff(crashes);
        let restarts = workers.count_restart(id);
        if crashes > 3 {
            tracing::warn!(
                worker = id,
                crashes,
                ?delay,
                "worker keeps crashing; backing off"
            );
        }
        tracing::info!(worker = id, ?delay, restarts, "restarting worker");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
    }
}

enum Exit {
    /// Stopped on purpose.
    Stopped,
    /// Ended on its own (or never came up).
    Failed(StartError),
}

#[allow(clippy::too_many_arguments)]
async fn run_once(
    id: WorkerId,
    total: usize,
    addr: SocketAddr,
    mut child: Child,
    config: &SupervisorConfig,
    workers: &WorkerSet,
    stop: &CancellationToken,
    first: &mpsc::UnboundedSender<FirstStart>,
    reported: &mut bool,
) -> Exit {
    let pid = child.id().unwrap_or(0);
    workers.set_pid(id, pid);
    let port = addr.port();
    tokio::select! {
        ready = wait_ready(addr, config.ready_timeout) => {
            if !ready {
                let e = StartError::NotReady { id, port, timeout: config.ready_timeout };
                tracing::error!(worker = id, error = %e, "worker not ready");
                worker::stop(&mut child, config.kill_timeout).await;
                return Exit::Failed(e);
            }
        }
        status = child.wait() => {
            let status = status.map_or_else(|e| e.to_string(), |s| worker::describe_exit(&s));
            let e = StartError::Exited { id, port, status };
            tracing::error!(worker = id, error = %e, "worker died while starting");
            return Exit::Failed(e);
        }
        _ = stop.cancelled() => {
            worker::stop(&mut child, config.kill_timeout).await;
            return Exit::Stopped;
        }
    }
    workers.set_state(id, WorkerState::Up);
    if *reported {
        tracing::info!(worker = id, port, pid, "worker back up");
    } else {
        *reported = true;
        tracing::info!(
            "worker {id} ready on :{port} (pid {pid}), {}/{total} up",
            workers.up_count()
        );
        let _ = first.send(FirstStart::Ready);
    }
    tokio::select! {
        status = child.wait() => {
            workers.set_state(id, WorkerState::Down);
            let status = status.map_or_else(|e| e.to_string(), |s| worker::describe_exit(&s));
            tracing::warn!(worker = id, pid, %status, "worker died");
            Exit::Failed(StartError::Exited { id, port, status })
        }
        _ = stop.cancelled() => {
            workers.set_state(id, WorkerState::Draining);
            let status = worker::stop(&mut child, config.kill_timeout).await;
            tracing::debug!(worker = id, pid, status = ?status.map(|s| worker::describe_exit(&s)), "worker stopped");
            Exit::Stopped
        }
    }
}

/// Polls `addr` until it accepts a TCP connection; false after `timeout`.
pub async fn wait_ready(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await
        {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// 100 ms, 200 ms, 400 ms, ... capped at 30 s, for the `n`th crash in a row.
fn backoff(n: u32) -> Duration {
    let factor = 1u32 << n.saturating_sub(1).min(16);
    (BACKOFF_FIRST * factor).min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(40), Duration::from_secs(30));
    }
}
