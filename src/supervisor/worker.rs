//! One worker process: how it is launched, how its output is prefixed, how it is stopped.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::workers::WorkerId;

/// Environment variable that marks a re-executed process as worker `WORKER_ID`.
pub const ROLE_ENV: &str = "STICKY_CLUSTER_ROLE";
/// The value of [`ROLE_ENV`] in a worker.
pub const ROLE_WORKER: &str = "worker";

/// How worker processes are started.
#[derive(Debug, Clone)]
pub enum Launch {
    /// Run this program with these arguments (the CLI's `-- COMMAND ARGS...`).
    Command {
        /// Program, looked up on `PATH`.
        program: OsString,
        /// Its arguments.
        args: Vec<OsString>,
    },
    /// Re-execute the current executable, with the same arguments, in worker role.
    ReExec {
        /// The executable.
        exe: PathBuf,
        /// The arguments the master got.
        args: Vec<OsString>,
    },
}

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The program does not exist.
    #[error("worker command {program:?} not found: check the COMMAND after -- (is it on PATH?)")]
    NotFound {
        /// The program.
        program: String,
    },
    /// Any other spawn failure.
    #[error("could not start worker {id} ({program:?}): {source}")]
    Spawn {
        /// Worker id.
        id: WorkerId,
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The current executable cannot be found for re-exec.
    #[error("could not find the current executable to start workers: {0}")]
    CurrentExe(std::io::Error),
}

impl Launch {
    /// The program's name, for messages.
    pub fn program(&self) -> String {
        match self {
            Launch::Command { program, .. } => program.to_string_lossy().into_owned(),
            Launch::ReExec { exe, .. } => exe.display().to_string(),
        }
    }

    /// Starts worker `id` on `port`: env `PORT` and `WORKER_ID`, own process group, output
    /// piped through a `[worker N]` prefix, killed with the supervisor if it dies.
    ///
    /// # Errors
    /// [`WorkerError::NotFound`] or [`WorkerError::Spawn`].
    pub fn spawn(
        &self,
        id: WorkerId,
        port: u16,
        extra_env: &[(String, OsString)],
    ) -> Result<Child, WorkerError> {
        let mut cmd = match self {
            Launch::Command { program, args } => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
            Launch::ReExec { exe, args } => {
                let mut c = Command::new(exe);
                c.args(args).env(ROLE_ENV, ROLE_WORKER);
                c
            }
        };
        cmd.env("PORT", port.to_string())
            .env("WORKER_ID", id.to_string())
            .envs(extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Own group: a terminal's Ctrl-C reaches the supervisor only, which then stops
            // workers in order; and a stop reaches the worker's own children too.
            .process_group(0);
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                WorkerError::NotFound {
                    program: self.program(),
                }
            } else {
                WorkerError::Spawn {
                    id,
                    program: self.program(),
                    source,
                }
            }
        })?;
        if let Some(out) = child.stdout.take() {
            tokio::spawn(forward_lines(out, id, false));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(forward_lines(err, id, true));
        }
        Ok(child)
    }
}

/// Asks the kernel to SIGTERM the worker if the supervisor dies without stopping it (even by
/// SIGKILL), so no worker is ever orphaned.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
        });
    }
}

/// Copies a worker's output to ours line by line, each line prefixed with the worker id.
async fn forward_lines(stream: impl AsyncRead + Unpin, id: WorkerId, is_err: bool) {
    use std::io::Write;
    let mut reader = BufReader::new(stream);
    let prefix = format!("[worker {id}] ");
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if line.last() != Some(&b'\n') {
                    line.push(b'\n');
                }
                // A closed stdout of ours must not stop the worker: ignore write errors.
                let _ = if is_err {
                    let mut e = std::io::stderr().lock();
                    e.write_all(prefix.as_bytes())
                        .and_then(|_| e.write_all(&line))
                } else {
                    let mut o = std::io::stdout().lock();
                    o.write_all(prefix.as_bytes())
                        .and_then(|_| o.write_all(&line))
                        .and_then(|_| o.flush())
                };
            }
        }
    }
}

/// Stops a worker: SIGTERM to its process group, then SIGKILL after `timeout`.
pub async fn stop(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let pid = child.id()?;
    let group = Pid::from_raw(pid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => {
            // Stragglers the worker started (a shell's children) go with it.
            let _ = killpg(group, Signal::SIGKILL);
            status.ok()
        }
        Err(_) => {
            tracing::warn!(pid, ?timeout, "worker ignored SIGTERM; sending SIGKILL");
            let _ = killpg(group, Signal::SIGKILL);
            child.wait().await.ok()
        }
    }
}

/// "exit code 1", "signal 9 (SIGKILL)" and the like.
pub fn describe_exit(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("exit code {code}")
    } else if let Some(sig) = status.signal() {
        match Signal::try_from(sig) {
            Ok(s) => format!("signal {sig} ({})", s.as_str()),
            Err(_) => format!("signal {sig}"),
        }
    } else {
        "unknown status".into()
    }
}
