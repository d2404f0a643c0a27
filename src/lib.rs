//! sticky-cluster: run N copies of a web app and keep every client on the same copy.
//!
//! One program is master and worker at once, as with express-sticky-cluster: in the master,
//! [`Cluster::run`] starts the workers (re-executing the current executable, or running a
//! command) and a sticky reverse proxy in front of them; in a worker, it calls your closure
//! with the worker's identity and port.
//!
//! ```no_run
//! use sticky_cluster::{Cluster, Worker};
//!
//! // A plain `fn main`, not `#[tokio::main]`: `run` starts its own runtime (see its docs).
//! fn main() -> Result<(), sticky_cluster::Error> {
//!     Cluster::from_args()?.run(|worker: Worker, port: u16| async move {
//!         let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
//!         // serve your app on `listener` until `worker.shutdown_signal()` resolves
//!         # let _ = (listener, worker);
//!         Ok::<(), std::io::Error>(())
//!     })
//! }
//! ```
//!
//! # The API
//! [`Cluster`] (settings, hooks, [`Cluster::run`]), [`Worker`] (what a worker is handed),
//! [`WorkerBus`] (messages between workers and the master), [`Settings`] and [`KeySource`],
//! and [`Error`] with the error types it wraps. Everything else is internal; tests,
//! benches and the fuzz crate reach it through a hidden `internal` module that is not part
//! of the API and may change in any release.
//!
//! # Layout
//! - `settings`: the one settings type (defaults, TOML, validation); `cli`: the flags.
//! - `workers`: the worker slots both halves share (state, addresses).
//! - `routing`: the pure stickiness rules: key extraction, the sticky table, the affinity
//!   cookie.
//! - `supervisor`: worker processes (spawn, readiness, respawn, rolling restart, stop).
//! - `proxy`: the HTTP/1.1 + HTTP/2 + WebSocket reverse proxy.
//! - `ipc`: the message bus; `health`: active health checks; `tls`, `ipfilter`.
//! - `demo`: the built-in demo worker.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod access_log;
mod admin;
mod cli;
mod demo;
mod discovery;
mod health;
mod ipc;
mod ipfilter;
mod metrics;
mod proxy;
mod redis_url;
mod routing;
#[cfg(feature = "tower-sessions")]
pub mod sessions;
mod settings;
mod shared_table;
mod shutdown;
mod supervisor;
mod tls;
mod worker_tls;
mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use demo::serve as demo_worker;
pub use ipc::{HandoffEvent, Incoming as BusMessage, IpcError, MessageHandler, WorkerBus};
pub use ipfilter::IpFilterError;
pub use routing::affinity::SecretError;
pub use routing::SessionHash;
pub use settings::{KeySource, Settings, SettingsError, WorkerDownPolicy};
pub use supervisor::{StartError, WorkerError};
pub use tls::TlsError;
pub use workers::WorkerId;

use routing::affinity::{load_secret, Affinity};
use routing::table::StickyTable;
use routing::Router;
use shared_table::SharedTable;
use supervisor::worker::{ROLE_ENV, ROLE_WORKER};
use supervisor::{FirstStart, Launch, Spare, Supervisor, SupervisorConfig};
use workers::WorkerSet;

/// Not part of the API: what the crate's own tests, benches, fuzz targets and binary use.
/// It may change in any release.
#[doc(hidden)]
pub mod internal {
    /// The admin listener and its command-line client.
    pub mod admin {
        pub use crate::admin::{client, runtime};
    }
    /// The flags.
    pub mod cli {
        pub use crate::cli::*;
    }
    /// Health checks.
    pub mod health {
        pub use crate::health::*;
    }
    /// The message bus.
    pub mod ipc {
        pub use crate::ipc::*;
    }
    /// Client IP rules.
    pub mod ipfilter {
        pub use crate::ipfilter::*;
    }
    /// The counters behind `/metrics`.
    pub mod metrics {
        pub use crate::metrics::*;
    }
    /// Stickiness rules.
    pub mod routing {
        pub use crate::routing::*;
    }
    /// Settings, defaults and their parsers.
    pub mod settings {
        pub use crate::settings::*;
    }
    /// Certificates.
    pub mod tls {
        pub use crate::tls::*;
    }
    /// Worker slots.
    pub mod workers {
        pub use crate::workers::*;
    }
    pub use crate::proxy::handshake_sid;
    /// The proxy's own codecs (HTTP/1 heads, chunked bodies, the framing watch, HTTP/2
    /// frames, HPACK), for the fuzz targets.
    pub mod codec {
        pub use crate::proxy::codec::*;
    }
}

/// Everything that can stop a cluster from running. More variants may come in any release.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The settings are invalid.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The command line could not be parsed (or asked for `--help`/`--version`).
    #[error("{}", cli::one_line(.0))]
    Usage(clap::Error),
    /// The affinity secret could not be loaded or created.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// `--shared-table` is not a usable Redis URL.
    #[error(transparent)]
    SharedTable(#[from] shared_table::SharedTableError),
    /// The proxy port is taken.
    #[error("proxy port {addr} is already in use: stop the program using it or pick another --proxy-port")]
    ProxyPortInUse {
        /// The address.
        addr: SocketAddr,
    },
    /// The proxy port needs privileges we lack.
    #[error("binding {addr} needs root or CAP_NET_BIND_SERVICE: run with those or pick a --proxy-port above 1023")]
    ProxyPortDenied {
        /// The address.
        addr: SocketAddr,
    },
    /// The proxy address cannot be bound for another reason.
    #[error("cannot listen on {addr}: {source}")]
    ProxyBind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A worker port is taken before any worker started.
    #[error("worker port {port} is already in use: stop the program using it or pick another --worker-port")]
    WorkerPortInUse {
        /// The port.
        port: u16,
    },
    /// Not even a free loopback port could be held as a worker's spare.
    #[error("cannot hold a spare loopback port for rolling restarts: {0}")]
    SparePort(std::io::Error),
    /// The `--access-log` file cannot be opened.
    #[error("cannot open the access log {path}: {source}")]
    AccessLog {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The `--admin` address cannot be bound.
    #[error("cannot listen on {addr} for --admin: {source}")]
    AdminBind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// No worker came up at start.
    #[error("no worker started: {0}")]
    NoWorker(#[source] StartError),
    /// [`Cluster::run`] was called where a tokio runtime already runs.
    #[error("Cluster::run was called inside a tokio runtime (under #[tokio::main]?): it starts its own runtime and must be called from a plain fn main, before any runtime or thread is started")]
    InsideRuntime,
    /// The async runtime or signal handlers could not be set up.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// A worker process was started without a valid `PORT` or `WORKER_ID`.
    #[error("invalid worker environment: {0}")]
    WorkerEnv(String),
    /// A TLS certificate or key file is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// An `--allow`, `--deny` or `--trust-proxy` rule is invalid.
    #[error(transparent)]
    IpFilter(#[from] IpFilterError),
    /// The HTTP redirect port cannot be bound.
    #[error("cannot listen on {addr} for --http-redirect-port: {source}")]
    RedirectBind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The worker message bus could not be set up.
    #[error(transparent)]
    Ipc(#[from] IpcError),
    /// The worker closure returned an error.
    #[error("worker failed: {0}")]
    Worker(Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// The process exit code this error calls for: 0 for `--help`/`--version`, 2 for bad
    /// usage or settings, 1 otherwise (the binary's documented codes).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(e) if !e.use_stderr() => 0,
            Error::Usage(_) | Error::Settings(_) | Error::Tls(_) | Error::IpFilter(_) => 2,
            _ => 1,
        }
    }
}

/// The identity of a worker process, handed to the worker closure.
#[derive(Debug, Clone)]
pub struct Worker {
    id: WorkerId,
    port: u16,
    shutdown: CancellationToken,
    bus: Option<WorkerBus>,
}

impl Worker {
    /// The worker's index, `0..workers` (its `WORKER_ID`).
    pub fn id(&self) -> WorkerId {
        self.id
    }

    /// The port this worker must listen on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// This process's id.
    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    /// Resolves when the supervisor asks this worker to stop (SIGTERM or SIGINT, also during
    /// a rolling restart): pass it to `axum::serve(..).with_graceful_shutdown(..)`.
    pub fn shutdown_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        self.shutdown.clone().cancelled_owned()
    }

    pub(crate) fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The message bus to the supervisor and the other workers (`None` when the worker was
    /// not started by a sticky-cluster master).
    pub fn bus(&self) -> Option<&WorkerBus> {
        self.bus.as_ref()
    }
}

/// A sticky cluster: its settings and hooks, and [`Cluster::run`]. Every setter consumes and
/// returns the cluster, so settings read from the command line can be amended in code:
/// `Cluster::from_args()?.on_message(...).run(...)`.
#[derive(Clone)]
pub struct Cluster {
    settings: Settings,
    session_hash: Option<SessionHash>,
    on_message: Option<MessageHandler>,
    on_ready: Option<ReadyHandler>,
}

/// Called in the master once the proxy accepts connections, with its address.
pub type ReadyHandler = Arc<dyn Fn(SocketAddr) + Send + Sync>;

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("settings", &self.settings)
            .field("session_hash", &self.session_hash.is_some())
            .field("on_message", &self.on_message.is_some())
            .field("on_ready", &self.on_ready.is_some())
            .finish()
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty => |$s:ident, $v:ident| $body:expr;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, $v: $ty) -> Self {
                let $s = &mut self.settings;
                $body;
                self
            }
        )*
    };
}

impl Cluster {
    /// A cluster with these settings (validated by [`Cluster::run`]).
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            session_hash: None,
            on_message: None,
            on_ready: None,
        }
    }

    /// A cluster with the defaults, to be configured with the setters.
    pub fn builder() -> Self {
        Self::new(Settings::default())
    }

    /// A cluster configured by the process's command line, exactly like the
    /// `sticky-cluster` binary (flags, `--config FILE`, defaults).
    ///
    /// # Errors
    /// [`Error::Usage`] for bad flags or `--help`, [`Error::Settings`] for bad values.
    pub fn from_args() -> Result<Self, Error> {
        Self::from_args_iter(std::env::args_os())
    }

    /// Like [`Cluster::from_args`], from the given arguments (program name first).
    ///
    /// # Errors
    /// As [`Cluster::from_args`].
    pub fn from_args_iter<I, T>(args: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::builder().with_args_iter(args)
    }

    /// Lays the process's command line (and its `--config` file) over the settings made so
    /// far, so the app's own defaults come first and the user's flags win:
    /// `Cluster::builder().workers(4).proxy_port(8080).with_args()?`.
    ///
    /// # Errors
    /// As [`Cluster::from_args`].
    pub fn with_args(self) -> Result<Self, Error> {
        self.with_args_iter(std::env::args_os())
    }

    /// Like [`Cluster::with_args`], from the given arguments (program name first).
    ///
    /// ```
    /// use sticky_cluster::Cluster;
    ///
    /// let cluster = Cluster::builder()
    ///     .workers(4)
    ///     .proxy_port(8080)
    ///     .with_args_iter(["my-app", "--proxy-port", "9090"])?;
    /// assert_eq!(cluster.settings().workers, 4, "the app's default stands");
    /// assert_eq!(cluster.settings().proxy_port(), 9090, "the flag wins");
    /// # Ok::<(), sticky_cluster::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Cluster::from_args`].
    pub fn with_args_iter<I, T>(mut self, args: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        if Self::is_worker() {
            // A worker takes its identity from the environment, never from flags.
            return Ok(self);
        }
        match cli::parse_onto(self.settings.clone(), args)? {
            cli::Parsed::Run(settings) => {
                self.settings = *settings;
                Ok(self)
            }
            cli::Parsed::Clap(e) => Err(Error::Usage(e)),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The settings, to change any of them.
    pub fn settings_mut(&mut self) -> &mut Settings {
        &mut self.settings
    }

    setters! {
        /// Number of worker processes.
        workers: usize => |s, v| s.workers = v;
        /// First worker port; worker `i` listens on `port + i`.
        worker_port: u16 => |s, v| s.worker_port = v;
        /// Port the proxy listens on.
        proxy_port: u16 => |s, v| s.proxy_port = Some(v);
        /// Address the proxy binds.
        bind: std::net::IpAddr => |s, v| s.bind = v;
        /// Restart workers that exit.
        respawn: bool => |s, v| s.respawn = v;
        /// Proxy WebSocket upgrades.
        websocket: bool => |s, v| s.websocket = v;
        /// Least time before the proxy accepts connections.
        delay: std::time::Duration => |s, v| s.delay = v;
        /// Log routing decisions.
        debug: bool => |s, v| s.debug = v;
        /// The application's session cookie.
        session_cookie: impl Into<String> => |s, v| s.session_cookie = v.into();
        /// Adds a key source (`cookie:NAME`, `header:NAME`, `query:NAME`, `ip`, `none`).
        session_key: KeySource => |s, v| s.session_keys.push(v);
        /// Sliding lifetime of a remembered key.
        session_ttl: std::time::Duration => |s, v| s.session_ttl = v;
        /// Cap on remembered keys.
        session_max: usize => |s, v| s.session_max = v;
        /// The affinity cookie's name, or `None` to turn it off.
        affinity_cookie: Option<String> => |s, v| s.affinity_cookie = v;
        /// Proxy runtime threads.
        threads: usize => |s, v| s.threads = v;
    }

    /// A custom session-key function (seed: `session.hash` as a function), consulted before
    /// the configured key sources; `None` from it falls through to them.
    ///
    /// It is handed the whole parsed request head, which the proxy's fast paths (the direct
    /// HTTP/1.1 path and the HTTP/2 direct exchange) never build: **with a session hash,
    /// every request takes hyper's general path**, which costs more per request. Prefer
    /// [`KeySource`]s (`cookie:`, `header:`, `query:`, `ip`) where they can say the same.
    pub fn session_hash<F>(mut self, f: F) -> Self
    where
        F: Fn(&http::request::Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.session_hash = Some(Arc::new(f));
        self
    }

    /// Called in the master for every message a worker sends to the supervisor (seed:
    /// `workerListener`). Keep it quick: it runs on the bus task.
    pub fn on_message<F>(mut self, f: F) -> Self
    where
        F: Fn(WorkerId, &serde_json::Value) + Send + Sync + 'static,
    {
        self.on_message = Some(Arc::new(f));
        self
    }

    /// Called in the master once the proxy accepts connections, with the address it listens
    /// on (print your URL here).
    pub fn on_ready<F>(mut self, f: F) -> Self
    where
        F: Fn(SocketAddr) + Send + Sync + 'static,
    {
        self.on_ready = Some(Arc::new(f));
        self
    }

    /// True in a process that the master started as a worker.
    pub fn is_worker() -> bool {
        std::env::var_os(ROLE_ENV).is_some_and(|v| v == ROLE_WORKER)
    }

    /// Runs the cluster. In the master: validates the settings, starts the workers and the
    /// proxy, and returns when a stop signal has been handled. In a worker: calls `worker`
    /// with its identity and port and returns what it returns.
    ///
    /// # How it runs
    /// - It **starts its own tokio runtime** (with [`Settings::threads`] threads in the
    ///   master, one in a worker) and blocks on it. Call it from a plain `fn main`, not under
    ///   `#[tokio::main]` or from async code: inside a runtime it returns
    ///   [`Error::InsideRuntime`].
    /// - Without a command ([`Settings::command`] empty) the master **re-executes the
    ///   current program** (`std::env::current_exe()`, same arguments) once per worker, with
    ///   an environment variable that makes `run` take the worker branch there. So
    ///   everything `main` does before `run` happens again in every worker.
    /// - Before calling `run`, `main` must therefore not: start a tokio runtime; start
    ///   threads that must survive (the master's work happens inside `run`, and workers are
    ///   new processes); bind ports (each worker would bind them again, and the proxy and
    ///   worker ports must be free); or do slow or one-off work that workers must not
    ///   repeat. Parsing arguments and building the [`Cluster`] is fine.
    ///
    /// # Errors
    /// See [`Error`]: bad settings, a taken port, no worker starting, a call inside a
    /// runtime, or the worker's error.
    pub fn run<F, Fut, E>(self, worker: F) -> Result<(), Error>
    where
        F: FnOnce(Worker, u16) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::InsideRuntime);
        }
        if Self::is_worker() {
            return run_worker(worker);
        }
        self.settings.validate()?;
        let launch = self.launch()?;
        master_runtime(self.settings.threads)?.block_on(master(self, launch))
    }

    /// How the workers are started: the configured command, or this program again.
    fn launch(&self) -> Result<Launch, Error> {
        Ok(match self.settings.command.split_first() {
            Some((program, args)) => Launch::Command {
                program: program.into(),
                args: args.iter().map(Into::into).collect(),
            },
            None => Launch::ReExec {
                exe: std::env::current_exe()
                    .map_err(|e| Error::NoWorker(StartError::Spawn(WorkerError::CurrentExe(e))))?,
                args: std::env::args_os().skip(1).collect(),
            },
        })
    }
}

/// The master's runtime. One thread: a current-thread runtime runs every task where the IO
/// is polled, with no cross-thread wake-ups.
fn master_runtime(threads: usize) -> Result<tokio::runtime::Runtime, Error> {
    if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .map_err(Error::Runtime)
}

fn run_worker<F, Fut, E>(worker: F) -> Result<(), Error>
where
    F: FnOnce(Worker, u16) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<u16>().ok())
            .ok_or_else(|| Error::WorkerEnv(format!("{name} is missing or not a number")))
    };
    let (id, port) = (env("WORKER_ID")?, env("PORT")?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let _reloads = shutdown::listen(shutdown.clone()).map_err(Error::Runtime)?;
        let bus = match std::env::var_os(ipc::IPC_ENV) {
            Some(path) => Some(
                WorkerBus::connect(std::path::Path::new(&path))
                    .await
                    .map_err(|e| Error::WorkerEnv(format!("cannot reach the message bus: {e}")))?,
            ),
            None => None,
        };
        let handle = Worker {
            id,
            port,
            shutdown,
            bus,
        };
        worker(handle, port)
            .await
            .map_err(|e| Error::Worker(e.into()))
    })
}

/// Binds the proxy address without listening yet, so a taken port fails before any worker
/// is started.
fn bind_proxy(addr: SocketAddr) -> Result<TcpSocket, Error> {
    let map = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::AddrInUse => Error::ProxyPortInUse { addr },
        std::io::ErrorKind::PermissionDenied => Error::ProxyPortDenied { addr },
        _ => Error::ProxyBind { addr, source },
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(map)?;
    socket.set_reuseaddr(true).map_err(map)?;
    socket.bind(addr).map_err(map)?;
    Ok(socket)
}

/// Checks that the worker ports `W..W+N-1` are free (the only ports required at start).
fn check_worker_ports(settings: &Settings) -> Result<(), Error> {
    for i in 0..settings.spawned_workers() {
        let addr = settings.worker_addr(i);
        if let Err(e) = std::net::TcpListener::bind(addr) {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                return Err(Error::WorkerPortInUse { port: addr.port() });
            }
        }
    }
    Ok(())
}

/// Holds a spare address per spawned worker for its first rolling restart: `W+N+i` where
/// free, else any free loopback port.
fn hold_spares(settings: &Settings) -> Result<Vec<(SocketAddr, Spare)>, Error> {
    (0..settings.spawned_workers())
        .map(|i| {
            let spare = Spare::hold(settings.spare_addr(i)).map_err(Error::SparePort)?;
            Ok((spare.addr().map_err(Error::SparePort)?, spare))
        })
        .collect()
}

/// The master: binds what it must before any worker starts, builds the shared parts, starts
/// the workers, serves once they are up, and stops the workers after the proxy closed.
async fn master(cluster: Cluster, launch: Launch) -> Result<(), Error> {
    let Cluster {
        settings,
        session_hash,
        on_message,
        on_ready,
    } = cluster;
    let tls = load_tls(&settings)?;
    // Built before anything is bound: a bad rule or worker CA is the first thing said.
    let config = proxy_config(&settings, tls.clone())?;
    let socket = bind_proxy(settings.proxy_addr())?;
    let redirect = bind_redirect(&settings)?;
    let admin_listener = settings
        .admin
        .map(|addr| admin::bind(addr).map_err(|source| Error::AdminBind { addr, source }))
        .transpose()?;
    check_worker_ports(&settings)?;
    if let Some(path) = &settings.access_log {
        access_log::open(path).map_err(|source| Error::AccessLog {
            path: path.clone(),
            source,
        })?;
    }
    let (workers, spares) = worker_set(&settings)?;
    metrics::init(workers.len());
    let stop = CancellationToken::new();
    let (router, table, shared) = router(&settings, &workers, tls.is_some(), session_hash, &stop)?;
    let stop_workers = CancellationToken::new();
    let (reload_tx, reloads) = mpsc::unbounded_channel();
    shutdown::listen_with(stop.clone(), reload_tx.clone()).map_err(Error::Runtime)?;
    let bus = start_bus(
        &settings,
        router.clone(),
        &workers,
        on_message,
        &stop_workers,
    )?;
    if !settings.upstream_dns.is_empty() {
        let discovery = discovery::Discovery::new(
            settings.upstream_dns.clone(),
            workers.clone(),
            router.clone(),
        );
        discovery
            .start(settings.dns_interval, stop_workers.clone())
            .await;
    }
    let config = proxy::ProxyConfig { shared, ..config };
    let proxy = Arc::new(proxy::Proxy::new(router, workers.clone(), config));
    let (first_tx, first_rx) = mpsc::unbounded_channel();
    let supervisor = Supervisor::start(
        supervisor_config(&settings, launch, &bus),
        workers.clone(),
        spares,
        stop_workers.clone(),
        first_tx,
    );
    log_start(&settings);
    let started = tokio::select! {
        outcome = first_starts(first_rx, settings.spawned_workers(), settings.delay) => Some(outcome),
        _ = stop.cancelled() => None,
    };
    if let Err(e) = check_started(&settings, started) {
        stop_workers.cancel();
        supervisor.join().await;
        return e.map_or(Ok(()), Err);
    }
    let listener = listen(socket, settings.proxy_addr())?;
    tracing::info!(
        "proxy listening on {}://{} for {} workers",
        if tls.is_some() { "https" } else { "http" },
        settings.proxy_addr(),
        workers.len()
    );
    if let Some(f) = on_ready {
        f(settings.proxy_addr());
    }
    let _runtime_file = admin_listener.map(|listener| {
        start_admin(
            &settings,
            listener,
            &workers,
            &table,
            reload_tx,
            &stop_workers,
        )
    });
    let supervisor = Arc::new(supervisor);
    let background = Background {
        settings: &settings,
        workers,
        table,
        tls,
        stop: &stop,
        stop_workers: &stop_workers,
    };
    background.spawn(redirect, reloads, supervisor.clone());
    proxy::serve(proxy, listener, stop.clone(), settings.grace_timeout).await;
    tracing::info!("proxy closed; stopping workers");
    stop_workers.cancel();
    supervisor.join().await;
    tracing::info!("all workers stopped");
    drop(bus);
    Ok(())
}

/// Serves the admin listener until the workers stop, and writes the runtime file that
/// `sticky-cluster status` reads (removed when the returned guard drops).
fn start_admin(
    settings: &Settings,
    listener: std::net::TcpListener,
    workers: &Arc<WorkerSet>,
    table: &Arc<StickyTable>,
    reload: mpsc::UnboundedSender<()>,
    stop: &CancellationToken,
) -> Option<admin::runtime::RuntimeFile> {
    let addr = listener.local_addr().ok()?;
    let state = admin::Admin {
        workers: workers.clone(),
        table: table.clone(),
        reload,
        token: settings.admin_token.clone().filter(|t| !t.is_empty()),
        settings: settings.clone(),
        started: std::time::Instant::now(),
        started_at: std::time::SystemTime::now(),
    };
    tokio::spawn(admin::serve(listener, Arc::new(state), stop.clone()));
    tracing::info!("admin listening on http://{addr} (/metrics, /status, dashboard at /)");
    let path = admin::runtime::path(settings.proxy_port(), &settings.secret_file);
    admin::runtime::RuntimeFile::write(path, addr, settings.proxy_port())
}

/// The certificate and key, when TLS is configured.
fn load_tls(settings: &Settings) -> Result<Option<Arc<tls::TlsReloader>>, Error> {
    match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => Ok(Some(Arc::new(tls::TlsReloader::new(
            cert.clone(),
            key.clone(),
        )?))),
        _ => Ok(None),
    }
}

/// The `--http-redirect-port` listener, bound before any worker starts.
fn bind_redirect(settings: &Settings) -> Result<Option<tokio::net::TcpListener>, Error> {
    let Some(port) = settings.http_redirect_port else {
        return Ok(None);
    };
    let addr = SocketAddr::new(settings.bind, port);
    std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std)
        .map(Some)
        .map_err(|source| Error::RedirectBind { addr, source })
}

/// The worker slots (spawned workers with their spares held, then upstreams).
fn worker_set(settings: &Settings) -> Result<(Arc<WorkerSet>, Vec<Spare>), Error> {
    let (spare_addrs, spares): (Vec<_>, Vec<_>) = hold_spares(settings)?.into_iter().unzip();
    let workers = WorkerSet::new(
        (0..spare_addrs.len()).map(|i| (settings.worker_addr(i), spare_addrs[i])),
        settings.upstreams.iter().copied(),
    )
    .with_discovered(settings.discovered_slots());
    Ok((Arc::new(workers), spares))
}

/// The router, its local table, and the shared table when on.
type Routing = (Arc<Router>, Arc<StickyTable>, Option<Arc<SharedTable>>);

/// The router over a fresh sticky table, with the affinity cookie unless turned off, and
/// the table shared through Redis when `--shared-table` is on.
fn router(
    settings: &Settings,
    workers: &Arc<WorkerSet>,
    https: bool,
    session_hash: Option<SessionHash>,
    stop: &CancellationToken,
) -> Result<Routing, Error> {
    let wants_secret = settings.sticky()
        && (settings.affinity_cookie.is_some() || settings.shared_table.is_some());
    let secret = if wants_secret {
        Some(load_secret(
            settings.affinity_secret.as_deref(),
            &settings.secret_file,
        )?)
    } else {
        None
    };
    let affinity = match (&settings.affinity_cookie, &secret) {
        (Some(name), Some(secret)) => {
            let labels = workers.ids().map(|id| workers.affinity_label(id));
            Some(Affinity::labelled(name, secret, labels, https))
        }
        _ => None,
    };
    let table = Arc::new(StickyTable::new(settings.session_max, settings.session_ttl));
    let mut router = Router::new(settings, table.clone(), affinity);
    if let Some(f) = session_hash {
        router = router.with_session_hash(f);
    }
    let shared = match (&settings.shared_table, &secret) {
        (Some(url), Some(secret)) => {
            if settings.affinity_secret.is_none() {
                tracing::warn!(
                    "--shared-table with the secret of --secret-file: every proxy sharing the table needs the same secret (give them all --affinity-secret or STICKY_CLUSTER_SECRET)"
                );
            }
            let config = shared_table::SharedConfig {
                url: url.clone(),
                password: std::env::var("STICKY_CLUSTER_REDIS_PASSWORD").ok(),
                timeout: settings.shared_table_timeout,
                ttl: settings.session_ttl,
            };
            let shared = SharedTable::start(&config, secret, workers.clone(), stop.clone())?;
            router = router.with_shared(shared.clone());
            Some(shared)
        }
        _ => None,
    };
    Ok((Arc::new(router), table, shared))
}

/// The message bus, and the task that hands worker messages to `--on-message` and the hook.
fn start_bus(
    settings: &Settings,
    router: Arc<Router>,
    workers: &Arc<WorkerSet>,
    on_message: Option<MessageHandler>,
    stop_workers: &CancellationToken,
) -> Result<Arc<ipc::Bus>, Error> {
    let (inbox_tx, inbox_rx) = mpsc::unbounded_channel();
    let bus = ipc::Bus::start(
        settings.spawned_workers(),
        workers.clone(),
        router,
        inbox_tx,
        stop_workers.clone(),
    )?;
    tokio::spawn(ipc::announce_workers(
        bus.clone(),
        workers.clone(),
        stop_workers.clone(),
    ));
    tokio::spawn(ipc::pipe_to_command(
        settings.on_message.clone().unwrap_or_default(),
        inbox_rx,
        on_message,
    ));
    Ok(bus)
}

fn proxy_config(
    settings: &Settings,
    tls: Option<Arc<tls::TlsReloader>>,
) -> Result<proxy::ProxyConfig, Error> {
    Ok(proxy::ProxyConfig {
        websocket: settings.websocket,
        debug: settings.debug,
        scheme: if tls.is_some() { "https" } else { "http" },
        hold: (settings.on_worker_down == WorkerDownPolicy::Hold).then_some(settings.hold_timeout),
        hold_queue: settings::DEFAULT_HOLD_QUEUE,
        connect_timeout: settings.connect_timeout,
        response_timeout: settings.response_timeout,
        header_timeout: settings.header_timeout,
        body_timeout: settings.body_timeout,
        max_header_size: settings.max_header_size,
        max_connections: settings.max_connections,
        max_pending: settings.max_pending,
        ws_idle_timeout: settings.ws_idle_timeout,
        drain_timeout: settings.drain_timeout,
        tls,
        worker_tls: match settings.worker_tls_mode() {
            Some(mode) => Some(worker_tls::client_config(&mode)?),
            None => None,
        },
        filter: Some(ipfilter::IpFilter::new(&settings.allow, &settings.deny)?),
        shared: None,
        trusted: Some(ipfilter::TrustedProxies::new(&settings.trust_proxy)?),
        underscores: if settings.allow_underscore_headers {
            proxy::Underscores::Keep
        } else {
            proxy::Underscores::Drop
        },
    })
}

fn supervisor_config(
    settings: &Settings,
    launch: Launch,
    bus: &Arc<ipc::Bus>,
) -> Arc<SupervisorConfig> {
    let env = |id: usize, index: usize| {
        let path = bus.socket_path_at(id as WorkerId, index).into_os_string();
        vec![(ipc::IPC_ENV.to_string(), path)]
    };
    let worker_env = (0..settings.spawned_workers())
        .map(|id| [env(id, 0), env(id, 1)])
        .collect();
    Arc::new(SupervisorConfig {
        launch,
        respawn: settings.respawn,
        ready_timeout: settings.ready_timeout,
        kill_timeout: settings.kill_timeout,
        drain_timeout: settings.drain_timeout,
        close_jitter: settings
            .drain_timeout
            .min(std::time::Duration::from_secs(10)),
        worker_env,
        drain_sessions: settings.drain_sessions,
        drain_idle: settings.drain_idle,
        bus: Some(bus.clone()),
    })
}

fn log_start(settings: &Settings) {
    let spawned = settings.spawned_workers();
    if spawned > 0 {
        tracing::info!(
            workers = spawned,
            first_port = settings.worker_port,
            "starting workers"
        );
    }
    if !settings.upstreams.is_empty() {
        tracing::info!(upstreams = ?settings.upstreams, "routing to upstream workers too");
    }
    for name in &settings.upstream_dns {
        tracing::info!(%name, every = ?settings.dns_interval, "workers from the addresses of a name");
    }
}

/// How many of the `spawned` workers came up, and the first error, once every one reported
/// and at least `delay` passed.
async fn first_starts(
    mut first: mpsc::UnboundedReceiver<FirstStart>,
    spawned: usize,
    delay: std::time::Duration,
) -> (usize, Option<StartError>) {
    let reports = async {
        let mut ready = 0usize;
        let mut first_error = None;
        for _ in 0..spawned {
            match first.recv().await {
                Some(FirstStart::Ready) => ready += 1,
                Some(FirstStart::Failed(e)) => {
                    first_error.get_or_insert(e);
                }
                None => break,
            }
        }
        (ready, first_error)
    };
    let (outcome, ()) = tokio::join!(reports, tokio::time::sleep(delay));
    outcome
}

/// `Ok` when the proxy may serve; `Err(None)` when a stop signal came first, `Err(Some(e))`
/// when no worker came up.
fn check_started(
    settings: &Settings,
    started: Option<(usize, Option<StartError>)>,
) -> Result<(), Option<Error>> {
    let Some((ready, first_error)) = started else {
        return Err(None);
    };
    let spawned = settings.spawned_workers();
    if spawned > 0 && ready == 0 {
        return Err(Some(Error::NoWorker(
            first_error.unwrap_or(StartError::Stopping),
        )));
    }
    if let Some(e) = first_error {
        tracing::warn!(ready, workers = spawned, error = %e, "not every worker started; the others serve meanwhile");
    }
    Ok(())
}

fn listen(socket: TcpSocket, addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    socket
        .listen(1024)
        .map_err(|source| Error::ProxyBind { addr, source })
}

/// What runs beside the proxy once it serves: the redirect listener, the TLS file watch,
/// health checks, the sticky table's sweep and the SIGHUP handler.
struct Background<'a> {
    settings: &'a Settings,
    workers: Arc<WorkerSet>,
    table: Arc<StickyTable>,
    tls: Option<Arc<tls::TlsReloader>>,
    stop: &'a CancellationToken,
    stop_workers: &'a CancellationToken,
}

impl Background<'_> {
    fn spawn(
        self,
        redirect: Option<tokio::net::TcpListener>,
        reloads: mpsc::UnboundedReceiver<()>,
        supervisor: Arc<Supervisor>,
    ) {
        let settings = self.settings;
        if let Some(listener) = redirect {
            tokio::spawn(proxy::serve_redirect(
                listener,
                settings.proxy_port(),
                settings.header_timeout,
                self.stop.clone(),
            ));
        }
        if let Some(tls) = &self.tls {
            tokio::spawn(tls::watch_files(
                tls.clone(),
                TLS_WATCH_INTERVAL,
                self.stop_workers.clone().cancelled_owned(),
            ));
        }
        health::start(
            self.workers,
            Arc::new(health::HealthConfig {
                path: settings.health_path.clone(),
                interval: settings.health_interval,
                timeout: settings.health_timeout,
                rise: settings.health_rise,
                fall: settings.health_fall,
            }),
            self.stop_workers.clone(),
        );
        tokio::spawn(routing::table::sweep_forever(
            self.table,
            self.stop_workers.clone().cancelled_owned(),
        ));
        tokio::spawn(handle_reloads(reloads, supervisor, self.tls));
    }
}

/// How often the TLS files are checked for a change.
const TLS_WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// SIGHUP: re-read the TLS files, then replace the workers one by one; SIGHUPs that arrive
/// during a restart are folded into it.
async fn handle_reloads(
    mut reloads: mpsc::UnboundedReceiver<()>,
    supervisor: Arc<Supervisor>,
    tls: Option<Arc<tls::TlsReloader>>,
) {
    while reloads.recv().await.is_some() {
        if let Some(tls) = &tls {
            match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(e) => {
                    tracing::warn!(error = %e, "SIGHUP: TLS files not reloaded; the old certificate keeps serving")
                }
            }
        }
        tracing::info!("SIGHUP: rolling restart of the workers");
        match supervisor.rolling_restart().await {
            Ok(n) => tracing::info!(replaced = n, "rolling restart done"),
            Err((id, why)) => tracing::error!(
                worker = id,
                error = %why,
                "rolling restart stopped; that worker and the ones after it keep their old processes"
            ),
        }
        // SIGHUPs that arrived during the restart are folded into the one just done.
        while reloads.try_recv().is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn run_inside_a_runtime_is_an_error_not_a_panic() {
        let outcome = Cluster::builder()
            .workers(1)
            .run(|_, _| async { Ok::<(), std::io::Error>(()) });
        assert!(matches!(outcome, Err(Error::InsideRuntime)), "{outcome:?}");
        let message = Error::InsideRuntime.to_string();
        assert!(message.contains("#[tokio::main]") && message.contains("fn main"));
    }
}
