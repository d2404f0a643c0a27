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
//! # Layout
//! - [`settings`]: the one settings type (defaults, TOML, validation).
//! - [`workers`]: the worker slots both halves share (state, address).
//! - [`routing`]: the pure stickiness rules: key extraction, the sticky table, the affinity
//!   cookie.
//! - `supervisor`: worker processes (spawn, readiness, respawn, stop).
//! - `proxy`: the HTTP/1.1 + HTTP/2 + WebSocket reverse proxy.
//! - `demo`: the built-in demo worker.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod cli;
mod demo;
pub mod health;
pub mod ipc;
pub mod ipfilter;
mod proxy;
pub mod routing;
pub mod settings;
mod shutdown;
mod supervisor;
pub mod tls;
mod worker_tls;
pub mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use demo::serve as demo_worker;
pub use ipc::{Incoming as BusMessage, IpcError, MessageHandler, WorkerBus};
pub use proxy::handshake_sid;
pub use routing::affinity::SecretError;
pub use routing::SessionHash;
pub use settings::{KeySource, Settings, SettingsError};
pub use supervisor::{StartError, WorkerError};
pub use workers::WorkerId;

use routing::affinity::{load_secret, Affinity};
use routing::table::StickyTable;
use routing::Router;
use settings::WorkerDownPolicy;
use supervisor::worker::{ROLE_ENV, ROLE_WORKER};
use supervisor::{FirstStart, Launch, Supervisor, SupervisorConfig};
use workers::WorkerSet;

/// Everything that can stop a cluster from running.
#[derive(Debug, thiserror::Error)]
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
    /// No worker came up at start.
    #[error("no worker started: {0}")]
    NoWorker(#[source] StartError),
    /// The async runtime or signal handlers could not be set up.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// A worker process was started without a valid `PORT` or `WORKER_ID`.
    #[error("invalid worker environment: {0}")]
    WorkerEnv(String),
    /// A TLS certificate or key file is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// An `--allow`, `--deny` or `--trust-proxy` rule is invalid.
    #[error(transparent)]
    IpFilter(#[from] ipfilter::IpFilterError),
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
    /// # Errors
    /// See [`Error`]: bad settings, a taken port, no worker starting, or the worker's error.
    pub fn run<F, Fut, E>(self, worker: F) -> Result<(), Error>
    where
        F: FnOnce(Worker, u16) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if Self::is_worker() {
            return run_worker(worker);
        }
        self.settings.validate()?;
        let launch = match self.settings.command.split_first() {
            Some((program, args)) => Launch::Command {
                program: program.into(),
                args: args.iter().map(Into::into).collect(),
            },
            None => Launch::ReExec {
                exe: std::env::current_exe()
                    .map_err(|e| Error::NoWorker(StartError::Spawn(WorkerError::CurrentExe(e))))?,
                args: std::env::args_os().skip(1).collect(),
            },
        };
        // One thread: a current-thread runtime runs every task where the IO is polled,
        // with no cross-thread wake-ups.
        let runtime = if self.settings.threads == 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(self.settings.threads)
                .enable_all()
                .build()
        }
        .map_err(Error::Runtime)?;
        runtime.block_on(master(self, launch))
    }
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

fn check_worker_ports(settings: &Settings) -> Result<(), Error> {
    for i in 0..settings.spawned_workers() {
        for addr in [settings.worker_addr(i), settings.spare_addr(i)] {
            if let Err(e) = std::net::TcpListener::bind(addr) {
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    return Err(Error::WorkerPortInUse { port: addr.port() });
                }
            }
        }
    }
    Ok(())
}

async fn master(cluster: Cluster, launch: Launch) -> Result<(), Error> {
    let Cluster {
        settings,
        session_hash,
        on_message,
        on_ready,
    } = cluster;
    let filter = ipfilter::IpFilter::new(&settings.allow, &settings.deny)?;
    let trusted = ipfilter::TrustedProxies::new(&settings.trust_proxy)?;
    let tls = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => {
            Some(Arc::new(tls::TlsReloader::new(cert.clone(), key.clone())?))
        }
        _ => None,
    };
    let worker_tls = match settings.worker_tls_mode() {
        Some(mode) => Some(worker_tls::client_config(&mode)?),
        None => None,
    };
    let proxy_addr = settings.proxy_addr();
    let socket = bind_proxy(proxy_addr)?;
    let redirect = match settings.http_redirect_port {
        Some(port) => {
            let addr = SocketAddr::new(settings.bind, port);
            let listener = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std)
                .map_err(|source| Error::RedirectBind { addr, source })?;
            Some(listener)
        }
        None => None,
    };
    check_worker_ports(&settings)?;
    let spawned = settings.spawned_workers();
    let workers = Arc::new(WorkerSet::new(
        (0..spawned).map(|i| (settings.worker_addr(i), settings.spare_addr(i))),
        settings.upstreams.iter().copied(),
    ));
    let affinity = match (&settings.affinity_cookie, settings.sticky()) {
        (Some(name), true) => {
            let secret = load_secret(settings.affinity_secret.as_deref(), &settings.secret_file)?;
            Some(Affinity::new(name, &secret, workers.len(), tls.is_some()))
        }
        _ => None,
    };
    let table = Arc::new(StickyTable::new(settings.session_max, settings.session_ttl));
    let mut router = Router::new(&settings, table.clone(), affinity);
    if let Some(f) = session_hash {
        router = router.with_session_hash(f);
    }
    let router = Arc::new(router);

    let stop = CancellationToken::new();
    let stop_workers = CancellationToken::new();
    let reloads = shutdown::listen(stop.clone()).map_err(Error::Runtime)?;

    let (inbox_tx, inbox_rx) = mpsc::unbounded_channel();
    let bus = ipc::Bus::start(spawned, router.clone(), inbox_tx, stop_workers.clone())?;
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
    let worker_env = (0..spawned)
        .map(|id| {
            let path = bus.socket_path(id as WorkerId).into_os_string();
            vec![(ipc::IPC_ENV.to_string(), path)]
        })
        .collect();
    let proxy_config = proxy::ProxyConfig {
        websocket: settings.websocket,
        debug: settings.debug,
        scheme: if tls.is_some() { "https" } else { "http" },
        hold: (settings.on_worker_down == WorkerDownPolicy::Hold).then_some(settings.hold_timeout),
        hold_queue: settings::DEFAULT_HOLD_QUEUE,
        connect_timeout: settings.connect_timeout,
        response_timeout: settings.response_timeout,
        header_timeout: settings.header_timeout,
        max_header_size: settings.max_header_size,
        max_connections: settings.max_connections,
        ws_idle_timeout: settings.ws_idle_timeout,
        drain_timeout: settings.drain_timeout,
        tls: tls.clone(),
        worker_tls,
        filter: Some(filter),
        trusted: Some(trusted),
    };
    let proxy = Arc::new(proxy::Proxy::new(router, workers.clone(), proxy_config));

    let config = Arc::new(SupervisorConfig {
        launch,
        respawn: settings.respawn,
        ready_timeout: settings.ready_timeout,
        kill_timeout: settings.kill_timeout,
        drain_timeout: settings.drain_timeout,
        close_jitter: settings
            .drain_timeout
            .min(std::time::Duration::from_secs(10)),
        worker_env,
    });
    let (first_tx, mut first_rx) = mpsc::unbounded_channel();
    let supervisor = Supervisor::start(
        config,
        workers.clone(),
        spawned,
        stop_workers.clone(),
        first_tx,
    );
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

    let startup = async {
        let mut ready = 0usize;
        let mut first_error = None;
        for _ in 0..spawned {
            match first_rx.recv().await {
                Some(FirstStart::Ready) => ready += 1,
                Some(FirstStart::Failed(e)) => {
                    first_error.get_or_insert(e);
                }
                None => break,
            }
        }
        (ready, first_error)
    };
    let started = tokio::select! {
        (outcome, _) = async { tokio::join!(startup, tokio::time::sleep(settings.delay)) } => Some(outcome),
        _ = stop.cancelled() => None,
    };
    let Some((ready, first_error)) = started else {
        stop_workers.cancel();
        supervisor.join().await;
        return Ok(());
    };
    if spawned > 0 && ready == 0 {
        stop_workers.cancel();
        supervisor.join().await;
        return Err(Error::NoWorker(first_error.unwrap_or(StartError::Stopping)));
    }
    if let Some(e) = first_error {
        tracing::warn!(ready, workers = spawned, error = %e, "not every worker started; the others serve meanwhile");
    }
    let listener = socket.listen(1024).map_err(|source| Error::ProxyBind {
        addr: proxy_addr,
        source,
    })?;
    tracing::info!(
        "proxy listening on {}://{proxy_addr} for {} workers",
        if tls.is_some() { "https" } else { "http" },
        workers.len()
    );
    if let Some(f) = on_ready {
        f(proxy_addr);
    }
    if let Some(listener) = redirect {
        tokio::spawn(proxy::serve_redirect(
            listener,
            proxy_addr.port(),
            settings.header_timeout,
            stop.clone(),
        ));
    }
    if let Some(tls) = &tls {
        tokio::spawn(tls::watch_files(
            tls.clone(),
            TLS_WATCH_INTERVAL,
            stop_workers.clone().cancelled_owned(),
        ));
    }

    health::start(
        workers.clone(),
        Arc::new(health::HealthConfig {
            path: settings.health_path.clone(),
            interval: settings.health_interval,
            timeout: settings.health_timeout,
            rise: settings.health_rise,
            fall: settings.health_fall,
        }),
        stop_workers.clone(),
    );
    tokio::spawn(routing::table::sweep_forever(
        table,
        stop_workers.clone().cancelled_owned(),
    ));
    let supervisor = Arc::new(supervisor);
    tokio::spawn(handle_reloads(reloads, supervisor.clone(), tls.clone()));

    proxy::serve(proxy, listener, stop.clone(), settings.grace_timeout).await;
    tracing::info!("proxy closed; stopping workers");
    stop_workers.cancel();
    supervisor.join().await;
    tracing::info!("all workers stopped");
    drop(bus);
    Ok(())
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
