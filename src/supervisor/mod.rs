//! The supervisor: one task per spawned worker slot that starts the process, waits until
//! its port accepts connections, publishes its state in the [`WorkerSet`], respawns it with
//! a growing back-off when it dies, and replaces it without downtime on request (rolling
//! restart). It owns processes and nothing about HTTP.
//!
//! Rolling restart of one slot: start the replacement on the slot's other address (each
//! slot has a port and a spare, held free by a [`Spare`] until then), wait until it accepts
//! connections, point new requests at it, let the old process finish its requests and
//! WebSockets (bounded by the drain time; tunnels still open then are closed with jittered
//! delays), then stop the old process and hold its address as the next spare.
//!
//! With `--drain-sessions` the old process retires instead (see [`retire`]): it keeps
//! serving the sessions pinned to its generation, may hand them off over the bus, and is
//! stopped once they have ended, were adopted, or at the drain time.

pub mod retire;
pub mod spare;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::workers::{WorkerId, WorkerSet, WorkerState};
pub use spare::Spare;
pub use worker::{Launch, WorkerError};

/// A worker that ran at least this long is healthy again: its back-off starts over.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const READY_POLL: Duration = Duration::from_millis(20);
/// Crashes in a row after which a worker is reported as crash-looping.
const CRASH_LOOP: u32 = 5;

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
    /// How long a replaced worker may finish its requests.
    pub drain_timeout: Duration,
    /// Upper bound of the jittered close of a replaced worker's WebSockets.
    pub close_jitter: Duration,
    /// Extra environment per worker slot and address (the message bus socket, say).
    pub worker_env: Vec<[Vec<(String, std::ffi::OsString)>; 2]>,
    /// `--drain-sessions`: a replaced process retires (keeps its sessions) instead of
    /// draining its in-flight requests only.
    pub drain_sessions: bool,
    /// `--drain-idle`: a retiring process whose sessions were all idle this long stops.
    pub drain_idle: Duration,
    /// The bus, to tell a retiring process to hand its sessions off.
    pub bus: Option<Arc<crate::ipc::Bus>>,
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
    /// The cluster is stopping.
    #[error("stopping")]
    Stopping,
}

/// A request to replace a slot's process; answered once the old one is gone (or kept).
#[derive(Debug)]
pub struct Replace {
    /// `Ok(())` when replaced; the reason when the old process was kept.
    pub done: oneshot::Sender<Result<(), String>>,
}

/// The running slots.
#[derive(Debug)]
pub struct Supervisor {
    tasks: tokio::sync::Mutex<JoinSet<()>>,
    replace: Vec<mpsc::Sender<Replace>>,
}

impl Supervisor {
    /// Starts every spawned slot (one per held spare, whose address is the slot's spare in
    /// `workers`) until `stop` fires; each reports its first start on `first`.
    pub fn start(
        config: Arc<SupervisorConfig>,
        workers: Arc<WorkerSet>,
        spares: Vec<Spare>,
        stop: CancellationToken,
        first: mpsc::UnboundedSender<FirstStart>,
    ) -> Self {
        let mut tasks = JoinSet::new();
        let mut replace = Vec::with_capacity(spares.len());
        for (id, spare) in spares.into_iter().enumerate() {
            let id = id as WorkerId;
            let (tx, rx) = mpsc::channel(1);
            replace.push(tx);
            let slot = SlotTask {
                id,
                config: config.clone(),
                workers: workers.clone(),
                stop: stop.clone(),
                first: first.clone(),
                replace: rx,
                reported: false,
                spare: Some(spare),
                retiring: None,
            };
            tasks.spawn(slot.run());
        }
        Self {
            tasks: tokio::sync::Mutex::new(tasks),
            replace,
        }
    }

    /// Replaces every worker, one at a time; stops at the first one whose replacement fails
    /// to start (that worker keeps its old process). Returns how many were replaced.
    ///
    /// # Errors
    /// The worker and the reason the rolling restart stopped.
    pub async fn rolling_restart(&self) -> Result<usize, (WorkerId, String)> {
        for (i, tx) in self.replace.iter().enumerate() {
            let id = i as WorkerId;
            let (done, answer) = oneshot::channel();
            tx.send(Replace { done })
                .await
                .map_err(|_| (id, "its supervisor task is gone".to_string()))?;
            answer
                .await
                .map_err(|_| (id, "its supervisor task is gone".to_string()))?
                .map_err(|why| (id, why))?;
        }
        Ok(self.replace.len())
    }

    /// Waits until every slot task has stopped its process (after `stop` fired).
    pub async fn join(&self) {
        let mut tasks = self.tasks.lock().await;
        while tasks.join_next().await.is_some() {}
    }
}

struct SlotTask {
    id: WorkerId,
    config: Arc<SupervisorConfig>,
    workers: Arc<WorkerSet>,
    stop: CancellationToken,
    first: mpsc::UnboundedSender<FirstStart>,
    replace: mpsc::Receiver<Replace>,
    reported: bool,
    /// Holds the address that is not active free for the next replacement; `None` while a
    /// process runs there, or when it could not be held.
    spare: Option<Spare>,
    /// The retiring process of a session drain, if one runs.
    retiring: Option<retire::Handle>,
}

enum Exit {
    /// Stopped on purpose.
    Stopped,
    /// Ended on its own (or never came up).
    Failed(StartError),
}

impl SlotTask {
    async fn run(mut self) {
        let id = self.id;
        let mut crashes: u32 = 0;
        loop {
            self.workers.set_state(id, WorkerState::Starting);
            let started = Instant::now();
            let index = self.workers.active(id).map_or(0, |(i, _)| i);
            let outcome = match self.start_process(index).await {
                Ok(child) => self.serve(child).await,
                // At first start the master reports this once, as the cluster's error.
                Err(StartError::Spawn(e)) if !self.reported => {
                    let _ = self.first.send(FirstStart::Failed(StartError::Spawn(e)));
                    return;
                }
                Err(StartError::Stopping) => Exit::Stopped,
                Err(e) => Exit::Failed(e),
            };
            self.workers.set_state(id, WorkerState::Down);
            self.workers.set_pid(id, 0);
            let failure = match outcome {
                Exit::Stopped => {
                    self.finish_retiring().await;
                    return;
                }
                Exit::Failed(e) => e,
            };
            if !self.reported {
                self.reported = true;
                let _ = self.first.send(FirstStart::Failed(failure));
            }
            if !self.config.respawn || self.stop.is_cancelled() {
                return;
            }
            crashes = if started.elapsed() >= STABLE_AFTER {
                1
            } else {
                crashes + 1
            };
            let delay = backoff(crashes);
            let restarts = self.workers.count_restart(id);
            if crashes >= CRASH_LOOP {
                tracing::error!(
                    worker = id,
                    crashes,
                    ?delay,
                    "worker is crash-looping; backing off"
                );
            }
            tracing::info!(worker = id, ?delay, restarts, "restarting worker");
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    _ = self.stop.cancelled() => {
                        self.finish_retiring().await;
                        return;
                    }
                    Some(r) = self.replace.recv() => {
                        let _ = r.done.send(Err(format!("worker {id} is down (restarting in {delay:?})")));
                    }
                }
            }
        }
    }

    /// Starts a process on address `index` of the slot and waits until it listens.
    async fn start_process(&mut self, index: usize) -> Result<Child, StartError> {
        let id = self.id;
        let Some(addr) = self.workers.addrs(id).map(|a| a[index]) else {
            return Err(StartError::Stopping);
        };
        let env = self
            .config
            .worker_env
            .get(usize::from(id))
            .map_or(&[][..], |env| env[index & 1].as_slice());
        let mut child = self.config.launch.spawn(id, addr.port(), env)?;
        let port = addr.port();
        tokio::select! {
            ready = wait_ready(addr, self.config.ready_timeout) => {
                if ready {
                    return Ok(child);
                }
                let e = StartError::NotReady { id, port, timeout: self.config.ready_timeout };
                tracing::error!(worker = id, error = %e, "worker not ready");
                worker::stop(&mut child, self.config.kill_timeout).await;
                Err(e)
            }
            status = child.wait() => {
                let status = status.map_or_else(|e| e.to_string(), |s| worker::describe_exit(&s));
                let e = StartError::Exited { id, port, status };
                tracing::error!(worker = id, error = %e, "worker died while starting");
                Err(e)
            }
            _ = self.stop.cancelled() => {
                worker::stop(&mut child, self.config.kill_timeout).await;
                Err(StartError::Stopping)
            }
        }
    }

    /// Runs an up process until it dies or the cluster stops, replacing it on request.
    async fn serve(&mut self, mut child: Child) -> Exit {
        let id = self.id;
        let mut pid = child.id().unwrap_or(0);
        self.workers.set_pid(id, pid);
        self.workers.set_state(id, WorkerState::Up);
        let port = self.workers.addr(id).map_or(0, |a| a.port());
        let total = self.config.worker_env.len();
        if self.reported {
            tracing::info!(worker = id, port, pid, "worker back up");
        } else {
            self.reported = true;
            tracing::info!(
                "worker {id} ready on :{port} (pid {pid}), {}/{total} up",
                self.workers.up_count().min(total)
            );
            let _ = self.first.send(FirstStart::Ready);
        }
        loop {
            tokio::select! {
                status = child.wait() => {
                    self.workers.set_state(id, WorkerState::Down);
                    let status = status.map_or_else(|e| e.to_string(), |s| worker::describe_exit(&s));
                    self.workers.set_last_exit(id, status.clone());
                    tracing::warn!(worker = id, pid, %status, "worker died");
                    return Exit::Failed(StartError::Exited { id, port, status });
                }
                _ = self.stop.cancelled() => {
                    self.workers.set_state(id, WorkerState::Draining);
                    let status = worker::stop(&mut child, self.config.kill_timeout).await;
                    tracing::debug!(worker = id, pid, status = ?status.map(|s| worker::describe_exit(&s)), "worker stopped");
                    return Exit::Stopped;
                }
                Some(request) = self.replace.recv() => {
                    match self.replace_process(&mut child).await {
                        Ok(new_pid) => {
                            pid = new_pid;
                            let _ = request.done.send(Ok(()));
                        }
                        Err(why) => {
                            let _ = request.done.send(Err(why));
                        }
                    }
                    if self.stop.is_cancelled() {
                        worker::stop(&mut child, self.config.kill_timeout).await;
                        return Exit::Stopped;
                    }
                }
            }
        }
    }

    /// Starts the replacement on the spare address, switches new requests to it, drains
    /// and stops the old process. On failure the old process keeps serving.
    async fn replace_process(&mut self, child: &mut Child) -> Result<u32, String> {
        let id = self.id;
        let old_pid = child.id().unwrap_or(0);
        let Some((old_index, old_addr)) = self.workers.active(id) else {
            return Err("no such worker".into());
        };
        let new_index = 1 - old_index;
        // A session drain still running (a second SIGHUP) ends first: its address is the
        // one the replacement needs.
        self.finish_retiring().await;
        self.free_spare(new_index);
        let generation = self.workers.generation_at(id, old_index).wrapping_add(1);
        self.workers.set_generation(id, new_index, generation);
        let mut replacement = match self.start_process(new_index).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(worker = id, error = %e, "replacement did not start; the old worker keeps serving");
                self.hold_spare(new_index);
                return Err(e.to_string());
            }
        };
        let new_pid = replacement.id().unwrap_or(0);
        self.workers.set_pid(id, new_pid);
        if self.config.drain_sessions {
            // Before the flip, so no request of an old session sees the old generation
            // without its process (it would be moved to the replacement).
            self.workers.begin_retiring(id, old_pid);
        }
        self.workers.set_active(id, new_index);
        let new_port = self.workers.addr(id).map_or(0, |a| a.port());
        if self.config.drain_sessions {
            tracing::info!(
                worker = id,
                old_pid,
                new_pid,
                port = new_port,
                generation,
                "replacement ready; the old worker retires and keeps serving its sessions"
            );
            std::mem::swap(child, &mut replacement);
            self.retiring = Some(self.retire(replacement, old_index, old_pid));
            self.workers.count_replacement(id);
            return Ok(new_pid);
        }
        tracing::info!(
            worker = id,
            old_pid,
            new_pid,
            port = new_port,
            "replacement ready; draining the old worker"
        );
        self.drain(old_index).await;
        let status = worker::stop(child, self.config.kill_timeout).await;
        tracing::info!(
            worker = id,
            old_pid,
            old_port = old_addr.port(),
            status = ?status.map(|s| worker::describe_exit(&s)),
            "old worker stopped"
        );
        std::mem::swap(child, &mut replacement);
        self.hold_spare(old_index);
        self.workers.count_replacement(id);
        Ok(new_pid)
    }

    /// Runs the session drain of the old process `child` on address `index` (marked
    /// retiring before the flip).
    fn retire(&self, child: Child, index: usize, pid: u32) -> retire::Handle {
        retire::Retire {
            id: self.id,
            index,
            pid,
            config: self.config.clone(),
            workers: self.workers.clone(),
            stop: self.stop.clone(),
        }
        .spawn(child)
    }

    /// Ends the session drain of this slot, if one runs, and waits until its old process
    /// stopped.
    async fn finish_retiring(&mut self) {
        if let Some(handle) = self.retiring.take() {
            handle.finish().await;
        }
    }

    /// Frees spare address `index` for the replacement about to start there. When it was
    /// not held (taken after the last restart), it moves to any free loopback port first.
    fn free_spare(&mut self, index: usize) {
        if self.spare.take().is_none() {
            self.hold_spare(index);
            self.spare = None;
        }
    }

    /// Holds address `index` (no process runs there) until the next replacement; if its port
    /// is taken, the address moves to a free one.
    fn hold_spare(&mut self, index: usize) {
        let id = self.id;
        let Some(addr) = self.workers.addrs(id).map(|a| a[index]) else {
            return;
        };
        let spare = Spare::hold(Some(addr)).and_then(|s| Ok((s.addr()?, s)));
        match spare {
            Ok((held, spare)) => {
                if held != addr {
                    tracing::info!(
                        worker = id,
                        taken = addr.port(),
                        spare = held.port(),
                        "spare port taken; using another free port"
                    );
                    self.workers.set_port(id, index, held.port());
                }
                self.spare = Some(spare);
            }
            Err(e) => {
                tracing::warn!(worker = id, port = addr.port(), error = %e, "cannot hold a spare port");
                self.spare = None;
            }
        }
    }

    /// Waits until address `index` has nothing in flight, at most the drain time; then
    /// closes its tunnels (each after a random delay) and waits for them, bounded.
    async fn drain(&self, index: usize) {
        let id = self.id;
        let idle = |workers: &WorkerSet| workers.in_flight(id, index) == 0;
        if wait_until(&self.workers, self.config.drain_timeout, &self.stop, idle).await {
            return;
        }
        let left = self.workers.in_flight(id, index);
        tracing::warn!(worker = id, left, jitter = ?self.config.close_jitter, "drain time over; closing what is left");
        self.workers.close_tunnels(id, index);
        let grace = self.config.close_jitter + Duration::from_secs(1);
        wait_until(&self.workers, grace, &self.stop, idle).await;
    }
}

/// Polls `done` every 20 ms until it holds (true), `timeout` passes or `stop` fires (false).
pub(crate) async fn wait_until(
    workers: &WorkerSet,
    timeout: Duration,
    stop: &CancellationToken,
    done: impl Fn(&WorkerSet) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if done(workers) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline || stop.is_cancelled() {
            return false;
        }
        tokio::time::sleep(READY_POLL).await;
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
