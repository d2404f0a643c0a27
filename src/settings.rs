//! The one settings type shared by the CLI, the TOML file and the library builder.
//!
//! Precedence: command-line flags override the TOML file, which overrides the `DEFAULT_*`
//! constants below. Everything is validated once, in [`Settings::validate`], so the rest of
//! the program can trust what it is handed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// First worker port; worker `i` listens on `DEFAULT_WORKER_PORT + i`.
pub const DEFAULT_WORKER_PORT: u16 = 8000;
/// Proxy port for plain HTTP.
pub const DEFAULT_PROXY_PORT: u16 = 80;
/// Address the proxy binds: every IPv4 interface.
pub const DEFAULT_BIND: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
/// Proxy port for HTTPS (`--tls-cert` given).
pub const DEFAULT_TLS_PROXY_PORT: u16 = 443;
/// Least time between start and the proxy accepting connections (seed: `delay: 1000`).
pub const DEFAULT_DELAY: Duration = Duration::ZERO;
/// Session cookie that keys stickiness unless `--session-key` says otherwise.
pub const DEFAULT_SESSION_COOKIE: &str = "connect.sid";
/// Sliding lifetime of a remembered session key (seed: `session.ttl`, 1 h).
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(3600);
/// Longest a request waits for the shared table (`--shared-table-timeout`).
pub const DEFAULT_SHARED_TABLE_TIMEOUT: Duration = Duration::from_millis(50);
/// How often `--upstream-dns` names are resolved again.
pub const DEFAULT_DNS_INTERVAL: Duration = Duration::from_secs(5);
/// Slots reserved for workers `--upstream-dns` names list.
pub const DEFAULT_DNS_MAX_WORKERS: usize = 64;
/// Cap on remembered session keys.
pub const DEFAULT_SESSION_MAX: usize = 1_000_000;
/// Name of the affinity cookie the proxy sets.
pub const DEFAULT_AFFINITY_COOKIE: &str = "sticky.worker";
/// How long a starting worker may take before its port accepts connections.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long in-flight requests may run on after a stop signal.
pub const DEFAULT_GRACE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a worker has between SIGTERM and SIGKILL.
pub const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Interval between active health checks of a worker.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Timeout of one health check.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Consecutive passed checks that bring a worker back.
pub const DEFAULT_HEALTH_RISE: u32 = 2;
/// Consecutive failed checks that take a worker out.
pub const DEFAULT_HEALTH_FALL: u32 = 3;
/// How long a request bound to a restarting worker may wait for it (`--on-worker-down hold`).
pub const DEFAULT_HOLD_TIMEOUT: Duration = Duration::from_secs(2);
/// What happens to a request whose pinned worker is down.
pub const DEFAULT_ON_WORKER_DOWN: WorkerDownPolicy = WorkerDownPolicy::Redispatch;
/// How many requests may wait for restarting workers at once.
pub const DEFAULT_HOLD_QUEUE: usize = 1024;
/// How long a replaced worker may finish its requests and WebSockets during a reload.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// `--drain-idle`: a session idle this long counts as ended during a session drain.
pub const DEFAULT_DRAIN_IDLE: Duration = Duration::from_secs(180);
/// Upstream TCP connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a worker may take to send response headers.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client may take to send a request head (slowloris guard).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client's request body may pause before it is answered 408.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest request head accepted.
pub const DEFAULT_MAX_HEADER_SIZE: usize = 64 * 1024;
/// Most client connections open at once; more wait in the kernel's accept queue.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Most requests one worker may have unanswered; more are shed with 503 (0: no bound).
/// As many as the default client connections: far above what a healthy worker holds (long
/// polls included, and an h2load run of 64 connections x 100 streams on one session, which
/// 4096 did shed), it bounds the queue of a worker that stopped keeping up (HTTP/2 would
/// otherwise allow 16384 connections x 256 streams), it does not throttle a normal one.
pub const DEFAULT_MAX_PENDING: usize = 16_384;
/// A WebSocket with no traffic either way for this long is closed.
pub const DEFAULT_WS_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Environment variable holding the affinity-cookie secret.
pub const SECRET_ENV: &str = "STICKY_CLUSTER_SECRET";

/// Where a request's session key is read from; the first source present wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A cookie, by name (`cookie:connect.sid`).
    Cookie(String),
    /// A request header, by name (`header:x-session`).
    Header(http::HeaderName),
    /// A query-string parameter, by name (`query:token`).
    Query(String),
    /// The client's IP address (`ip`), like nginx's `ip_hash`.
    Ip,
    /// No key at all (`none`): plain round-robin with no stickiness of any kind.
    None,
}

impl FromStr for KeySource {
    type Err = SettingsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SettingsError::BadKeySource {
            value: s.to_string(),
        };
        match s.split_once(':') {
            None if s == "ip" => Ok(Self::Ip),
            None if s == "none" => Ok(Self::None),
            Some(("cookie", name)) if valid_token(name) => Ok(Self::Cookie(name.to_string())),
            Some(("query", name)) if !name.is_empty() => Ok(Self::Query(name.to_string())),
            Some(("header", name)) => http::HeaderName::from_bytes(name.as_bytes())
                .map(Self::Header)
                .map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cookie(n) => write!(f, "cookie:{n}"),
            Self::Header(n) => write!(f, "header:{n}"),
            Self::Query(n) => write!(f, "query:{n}"),
            Self::Ip => f.write_str("ip"),
            Self::None => f.write_str("none"),
        }
    }
}

/// A cookie name is an RFC 6265 token: visible ASCII without separators.
fn valid_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// What happens to a request whose pinned worker is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerDownPolicy {
    /// Send it to a live worker at once and re-pin the key there.
    Redispatch,
    /// Wait (bounded) for the worker to come back, then redispatch.
    Hold,
}

impl Default for WorkerDownPolicy {
    fn default() -> Self {
        DEFAULT_ON_WORKER_DOWN
    }
}

impl fmt::Display for WorkerDownPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Redispatch => "redispatch",
            Self::Hold => "hold",
        })
    }
}

impl FromStr for WorkerDownPolicy {
    type Err = SettingsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "redispatch" => Ok(Self::Redispatch),
            "hold" => Ok(Self::Hold),
            _ => Err(SettingsError::BadWorkerDown {
                value: s.to_string(),
            }),
        }
    }
}

/// Parses `HOST:PORT` (a name is resolved once, at start) into an address.
///
/// # Errors
/// [`SettingsError::BadUpstream`] naming the value.
pub fn parse_upstream(value: &str) -> Result<SocketAddr, SettingsError> {
    use std::net::ToSocketAddrs;
    let bad = |why: String| SettingsError::BadUpstream {
        value: value.to_string(),
        why,
    };
    if !value.contains(':') {
        return Err(bad("no port".into()));
    }
    value
        .to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("the name resolves to no address".into()))
}

/// A name whose addresses are workers (`--upstream-dns NAME:PORT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsName {
    /// The name, resolved by the system's resolver (hosts file, DNS with its search list).
    pub host: String,
    /// The workers' port.
    pub port: u16,
}

impl std::fmt::Display for DnsName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl std::str::FromStr for DnsName {
    type Err = SettingsError;

    fn from_str(value: &str) -> Result<Self, SettingsError> {
        let bad = |why| SettingsError::BadUpstreamDns {
            value: value.to_string(),
            why,
        };
        let (host, port) = value.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let name = host.strip_suffix('.').unwrap_or(host);
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(bad("the name is not a DNS name"));
        }
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }
}

/// Everything that was wrong with the settings, each message naming the value and a fix.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// `--admin` on a non-loopback address without a token.
    #[error("--admin {addr} is not a loopback address: give --admin-token TOKEN (or STICKY_CLUSTER_ADMIN_TOKEN), or bind it to 127.0.0.1")]
    AdminNeedsToken {
        /// The address.
        addr: SocketAddr,
    },
    /// `--admin` on the proxy's own port.
    #[error("--admin {addr} is the proxy's own address: pick another port for the admin listener")]
    AdminOnProxyPort {
        /// The address.
        addr: SocketAddr,
    },
    /// A `--shared-table` that is not a Redis URL.
    #[error("invalid --shared-table {url:?}: {reason} (expected redis://HOST:PORT[/DB] or rediss://HOST:PORT[/DB])")]
    BadSharedTable {
        /// The URL, password hidden.
        url: String,
        /// Why.
        reason: String,
    },
    /// A duration without a known unit.
    #[error("invalid duration {value:?} for {field}: write a number with a unit, e.g. 1500ms, 30s, 5m or 1h")]
    BadDuration {
        /// The flag or key it was given for.
        field: &'static str,
        /// What was given.
        value: String,
    },
    /// A `--session-key` that is not one of the known forms.
    #[error("invalid session key source {value:?}: expected cookie:NAME, header:NAME, query:NAME, ip or none")]
    BadKeySource {
        /// What was given.
        value: String,
    },
    /// `--workers 0`.
    #[error("--workers must be at least 1 (got 0)")]
    NoWorkers,
    /// Worker ports that would run past 65535.
    #[error("--worker-port {first} with {workers} workers needs ports up to {last} (one per worker), past 65535: lower --worker-port or --workers")]
    WorkerPortsOutOfRange {
        /// First worker port.
        first: u16,
        /// Number of workers.
        workers: usize,
        /// Last port that would be needed.
        last: u32,
    },
    /// The proxy port falls inside the worker port range.
    #[error("--proxy-port {proxy} collides with the worker ports {first}-{last}: pick a proxy port outside that range")]
    PortCollision {
        /// Proxy port.
        proxy: u16,
        /// First worker port.
        first: u16,
        /// Last worker port.
        last: u32,
    },
    /// A session cookie or affinity cookie name that cannot be a cookie name.
    #[error("invalid cookie name {value:?} for {field}: use letters, digits and .-_ only")]
    BadCookieName {
        /// The flag or key.
        field: &'static str,
        /// What was given.
        value: String,
    },
    /// `--session-max 0`.
    #[error("--session-max must be at least 1 (got 0)")]
    NoSessions,
    /// `--threads 0`.
    #[error("--threads must be at least 1 (got 0)")]
    NoThreads,
    /// An `--upstream-dns` that is not `NAME:PORT`.
    #[error("invalid --upstream-dns {value:?}: {why}; expected NAME:PORT, e.g. workers.app.svc.cluster.local:3000")]
    BadUpstreamDns {
        /// What was given.
        value: String,
        /// Why it is not a name and port.
        why: &'static str,
    },
    /// `--dns-interval 0`.
    #[error("--dns-interval must be longer than 0 (e.g. 5s)")]
    NoDnsInterval,
    /// `--body-timeout 0`: every streamed upload would be a 408.
    #[error("--body-timeout must be longer than 0 (e.g. 60s)")]
    NoBodyTimeout,
    /// `--dns-max-workers` of 0, or more slots than a worker id can number.
    #[error("--dns-max-workers {value} is out of range: give 1 to 65535 minus the other workers")]
    BadDnsMaxWorkers {
        /// What was given.
        value: usize,
    },
    /// An `--upstream` that is not `HOST:PORT`.
    #[error("invalid --upstream {value:?}: {why}; expected HOST:PORT, e.g. 10.0.0.5:8000")]
    BadUpstream {
        /// What was given.
        value: String,
        /// Why it failed.
        why: String,
    },
    /// An `--on-worker-down` that is not a known policy.
    #[error("invalid --on-worker-down {value:?}: expected redispatch or hold")]
    BadWorkerDown {
        /// What was given.
        value: String,
    },
    /// Only one of `--tls-cert` and `--tls-key`.
    #[error("--tls-cert and --tls-key go together: give both (PEM files) or neither")]
    TlsHalf,
    /// `--worker-tls` without a way to check the workers' certificate, or both ways.
    #[error("--worker-tls needs exactly one of --worker-cert FILE (the certificate the workers serve) and --worker-tls-no-verify")]
    WorkerTlsCheck,
    /// `--worker-cert` or `--worker-tls-no-verify` without `--worker-tls`.
    #[error("--worker-cert and --worker-tls-no-verify only apply with --worker-tls: add --worker-tls if the workers serve HTTPS")]
    WorkerTlsOff,
    /// `--worker-tls` with an HTTP health check, which speaks plain HTTP.
    #[error("--health-path checks speak plain HTTP and cannot reach --worker-tls workers: leave --health-path out (TCP checks)")]
    WorkerTlsHealthPath,
    /// Health rise/fall counts of 0.
    #[error("--health-rise and --health-fall must be at least 1")]
    BadHealthCounts,
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for our keys.
    #[error("invalid config file {path}{location}: {message}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// ` line N, column M` where known, else empty.
        location: String,
        /// What the TOML parser said, including the key.
        message: String,
    },
}

/// Parses `1500ms`, `30s`, `5m`, `1h`, `2d`; a bare number is refused as ambiguous.
pub fn parse_duration(field: &'static str, value: &str) -> Result<Duration, SettingsError> {
    let bad = || SettingsError::BadDuration {
        field,
        value: value.to_string(),
    };
    let text = value.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err(bad()),
    };
    let secs = number * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Writes a duration the way [`parse_duration`] reads it, in the largest unit that divides it
/// (`0s`, `1500ms`, `30s`, `5m`, `1h`): how `--help` shows the defaults.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    let secs = d.as_secs();
    if ms % 1000 != 0 {
        format!("{ms}ms")
    } else if secs != 0 && secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs != 0 && secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// The validated settings of one cluster: proxy, router and supervisor read only this.
///
/// More fields may come in any release, so outside this crate a `Settings` is made with
/// [`Settings::default`] and then changed field by field (or through the `Cluster` setters).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Settings {
    /// Number of worker processes.
    pub workers: usize,
    /// First worker port; worker `i` listens on `worker_port + i`.
    pub worker_port: u16,
    /// Port the proxy listens on; `None` means 80, or 443 with TLS (see [`Settings::proxy_port`]).
    pub proxy_port: Option<u16>,
    /// Address the proxy binds (`0.0.0.0`, `::`, `127.0.0.1`, ...).
    pub bind: IpAddr,
    /// Restart workers that exit.
    pub respawn: bool,
    /// Proxy WebSocket and other HTTP/1.1 upgrades.
    pub websocket: bool,
    /// Least time before the proxy starts accepting.
    pub delay: Duration,
    /// Log debug detail.
    pub debug: bool,
    /// Name of the application's session cookie (learned from Set-Cookie).
    pub session_cookie: String,
    /// Ordered key sources; empty means the default `cookie:<session_cookie>`.
    pub session_keys: Vec<KeySource>,
    /// Sliding lifetime of a remembered key.
    pub session_ttl: Duration,
    /// Cap on remembered keys.
    pub session_max: usize,
    /// Affinity cookie name, or `None` when turned off.
    pub affinity_cookie: Option<String>,
    /// Secret keying the affinity cookie; `None` means use (or create) `secret_file`.
    pub affinity_secret: Option<String>,
    /// Where a generated affinity secret is kept across restarts.
    pub secret_file: PathBuf,
    /// `--shared-table`: the Redis URL of the session table shared with other proxies.
    pub shared_table: Option<String>,
    /// Longest a request waits for the shared table.
    pub shared_table_timeout: Duration,
    /// How long a worker may take to accept connections.
    pub ready_timeout: Duration,
    /// How long in-flight requests may finish after a stop signal.
    pub grace_timeout: Duration,
    /// Time between SIGTERM and SIGKILL for a worker.
    pub kill_timeout: Duration,
    /// Proxy runtime threads.
    pub threads: usize,
    /// Shell command that receives every worker message as a JSON line on its stdin.
    pub on_message: Option<String>,
    /// Workers this process does not start; routed exactly like spawned ones.
    pub upstreams: Vec<SocketAddr>,
    /// Names whose addresses are workers, resolved again every `dns_interval`.
    pub upstream_dns: Vec<DnsName>,
    /// Time between two resolutions of the `upstream_dns` names.
    pub dns_interval: Duration,
    /// Most workers the `upstream_dns` names may list together (slots reserved at start).
    pub dns_max_workers: usize,
    /// HTTP path for active health checks (2xx/3xx passes); `None` checks a TCP connect.
    pub health_path: Option<String>,
    /// Interval between health checks.
    pub health_interval: Duration,
    /// Timeout of one health check.
    pub health_timeout: Duration,
    /// Consecutive passes that bring a worker back.
    pub health_rise: u32,
    /// Consecutive failures that take a worker out.
    pub health_fall: u32,
    /// What happens to requests pinned to a worker that is down.
    pub on_worker_down: WorkerDownPolicy,
    /// Longest wait of a held request.
    pub hold_timeout: Duration,
    /// How long a replaced worker may finish its requests during a reload.
    pub drain_timeout: Duration,
    /// `--drain-sessions`: a replaced worker keeps serving its sessions until they end.
    pub drain_sessions: bool,
    /// `--drain-idle`: during a session drain, a session idle this long has ended.
    pub drain_idle: Duration,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Upstream response-header timeout.
    pub response_timeout: Duration,
    /// Client request-head timeout.
    pub header_timeout: Duration,
    /// Longest pause in a client's request body.
    pub body_timeout: Duration,
    /// Largest client request head, in bytes.
    pub max_header_size: usize,
    /// Most concurrent client connections.
    pub max_connections: usize,
    /// Most requests one worker may have unanswered (0: no bound).
    pub max_pending: usize,
    /// Idle timeout of a WebSocket tunnel.
    pub ws_idle_timeout: Duration,
    /// PEM certificate chain: with `tls_key`, the proxy speaks HTTPS (h2 and http/1.1).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// A plain-HTTP port that redirects to HTTPS.
    pub http_redirect_port: Option<u16>,
    /// The admin listener (`/metrics`, `/status`, the dashboard, the controls); `None`: off.
    pub admin: Option<SocketAddr>,
    /// The bearer token the admin listener requires (needed off loopback).
    pub admin_token: Option<String>,
    /// One line per request to this file, or `-` for stdout; `None`: no access log.
    pub access_log: Option<PathBuf>,
    /// The workers serve HTTPS: the proxy connects to them with TLS.
    pub worker_tls: bool,
    /// With `worker_tls`: the workers' leaf certificate must be one in this PEM file.
    pub worker_cert: Option<PathBuf>,
    /// With `worker_tls`: accept any worker certificate.
    pub worker_tls_no_verify: bool,
    /// Only these clients may enter (addresses, CIDR blocks, ranges); empty: everyone.
    pub allow: Vec<String>,
    /// These clients are refused.
    pub deny: Vec<String>,
    /// Front proxies whose X-Forwarded-For is believed.
    pub trust_proxy: Vec<String>,
    /// Forward client header names containing `_` (dropped by default, as nginx does).
    pub allow_underscore_headers: bool,
    /// The worker command; empty runs the built-in demo worker (re-executing this binary).
    pub command: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            workers: cores,
            worker_port: DEFAULT_WORKER_PORT,
            proxy_port: None,
            bind: DEFAULT_BIND,
            respawn: true,
            websocket: true,
            delay: DEFAULT_DELAY,
            debug: false,
            session_cookie: DEFAULT_SESSION_COOKIE.to_string(),
            session_keys: Vec::new(),
            session_ttl: DEFAULT_SESSION_TTL,
            session_max: DEFAULT_SESSION_MAX,
            affinity_cookie: Some(DEFAULT_AFFINITY_COOKIE.to_string()),
            affinity_secret: None,
            secret_file: default_secret_file(),
            shared_table: None,
            shared_table_timeout: DEFAULT_SHARED_TABLE_TIMEOUT,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            grace_timeout: DEFAULT_GRACE_TIMEOUT,
            kill_timeout: DEFAULT_KILL_TIMEOUT,
            threads: cores,
            on_message: None,
            upstreams: Vec::new(),
            upstream_dns: Vec::new(),
            dns_interval: DEFAULT_DNS_INTERVAL,
            dns_max_workers: DEFAULT_DNS_MAX_WORKERS,
            health_path: None,
            health_interval: DEFAULT_HEALTH_INTERVAL,
            health_timeout: DEFAULT_HEALTH_TIMEOUT,
            health_rise: DEFAULT_HEALTH_RISE,
            health_fall: DEFAULT_HEALTH_FALL,
            on_worker_down: DEFAULT_ON_WORKER_DOWN,
            hold_timeout: DEFAULT_HOLD_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            drain_sessions: false,
            drain_idle: DEFAULT_DRAIN_IDLE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_header_size: DEFAULT_MAX_HEADER_SIZE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_pending: DEFAULT_MAX_PENDING,
            ws_idle_timeout: DEFAULT_WS_IDLE_TIMEOUT,
            tls_cert: None,
            tls_key: None,
            http_redirect_port: None,
            admin: None,
            admin_token: None,
            access_log: None,
            worker_tls: false,
            worker_cert: None,
            worker_tls_no_verify: false,
            allow: Vec::new(),
            deny: Vec::new(),
            trust_proxy: Vec::new(),
            allow_underscore_headers: false,
            command: Vec::new(),
        }
    }
}

/// `$XDG_STATE_HOME/sticky-cluster/affinity.key`, else `~/.local/state/...`, else the cwd.
fn default_secret_file() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("sticky-cluster").join("affinity.key")
}

impl Settings {
    /// The key sources in force: the configured ones, or `cookie:<session_cookie>`.
    pub fn key_sources(&self) -> Vec<KeySource> {
        if self.session_keys.is_empty() {
            vec![KeySource::Cookie(self.session_cookie.clone())]
        } else {
            self.session_keys.clone()
        }
    }

    /// True when `--session-key none` turned stickiness off altogether.
    pub fn sticky(&self) -> bool {
        !self.session_keys.contains(&KeySource::None)
    }

    /// Number of worker processes to start: none when upstreams are given without a
    /// command, else `workers`.
    pub fn spawned_workers(&self) -> usize {
        let elsewhere = !self.upstreams.is_empty() || !self.upstream_dns.is_empty();
        if elsewhere && self.command.is_empty() {
            0
        } else {
            self.workers
        }
    }

    /// Number of worker slots: spawned workers, upstreams, then the discovered ones.
    pub fn slots(&self) -> usize {
        self.spawned_workers() + self.upstreams.len() + self.discovered_slots()
    }

    /// Slots reserved for the workers `--upstream-dns` finds (none without it).
    pub fn discovered_slots(&self) -> usize {
        if self.upstream_dns.is_empty() {
            0
        } else {
            self.dns_max_workers
        }
    }

    /// Address of spawned worker `index` (workers listen on loopback).
    pub fn worker_addr(&self, index: usize) -> SocketAddr {
        // validate() guarantees worker_port + workers - 1 fits in u16.
        let port = u16::try_from(usize::from(self.worker_port) + index).unwrap_or(u16::MAX);
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    /// The preferred spare address of spawned worker `index` (`W+N+index`), where its
    /// replacement listens during a rolling restart if that port is free (else on any free
    /// loopback port); `None` past 65535. Not required at start.
    pub fn spare_addr(&self, index: usize) -> Option<SocketAddr> {
        let port = usize::from(self.worker_port) + self.spawned_workers() + index;
        u16::try_from(port)
            .ok()
            .map(|port| SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    }

    /// Address the proxy listens on.
    pub fn proxy_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.proxy_port())
    }

    /// The proxy port in force: the configured one, else 443 with TLS and 80 without.
    pub fn proxy_port(&self) -> u16 {
        self.proxy_port.unwrap_or(if self.tls_cert.is_some() {
            DEFAULT_TLS_PROXY_PORT
        } else {
            DEFAULT_PROXY_PORT
        })
    }

    /// How workers are reached over TLS, when they are (`--worker-tls`).
    pub fn worker_tls_mode(&self) -> Option<crate::worker_tls::WorkerTls> {
        use crate::worker_tls::WorkerTls;
        if !self.worker_tls {
            return None;
        }
        Some(match &self.worker_cert {
            Some(path) => WorkerTls::Pinned(path.clone()),
            None => WorkerTls::NoVerify,
        })
    }

    fn validate_worker_tls(&self) -> Result<(), SettingsError> {
        let checks =
            usize::from(self.worker_cert.is_some()) + usize::from(self.worker_tls_no_verify);
        match (self.worker_tls, checks) {
            (false, 0) => Ok(()),
            (false, _) => Err(SettingsError::WorkerTlsOff),
            (true, 1) if self.health_path.is_some() => Err(SettingsError::WorkerTlsHealthPath),
            (true, 1) => Ok(()),
            (true, _) => Err(SettingsError::WorkerTlsCheck),
        }
    }

    /// `--upstream-dns` needs room for a worker and a positive interval, and all slots
    /// must be numbered by a `u16`.
    fn validate_dns(&self) -> Result<(), SettingsError> {
        if self.upstream_dns.is_empty() {
            return Ok(());
        }
        if self.dns_interval.is_zero() {
            return Err(SettingsError::NoDnsInterval);
        }
        let slots = self.spawned_workers() + self.upstreams.len() + self.dns_max_workers;
        if self.dns_max_workers == 0 || slots > usize::from(u16::MAX) {
            return Err(SettingsError::BadDnsMaxWorkers {
                value: self.dns_max_workers,
            });
        }
        Ok(())
    }

    /// The admin listener: never on the proxy's address, and off loopback only with a token.
    fn validate_admin(&self) -> Result<(), SettingsError> {
        let Some(addr) = self.admin else {
            return Ok(());
        };
        let proxy = self.proxy_addr();
        let overlaps =
            addr.ip() == proxy.ip() || addr.ip().is_unspecified() || proxy.ip().is_unspecified();
        if addr.port() == proxy.port() && overlaps {
            return Err(SettingsError::AdminOnProxyPort { addr });
        }
        if !addr.ip().is_loopback() && self.admin_token.as_deref().is_none_or(str::is_empty) {
            return Err(SettingsError::AdminNeedsToken { addr });
        }
        Ok(())
    }

    /// Checks every cross-field rule once.
    ///
    /// # Errors
    /// The first rule broken, as a [`SettingsError`] naming the flag and a fix.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.workers == 0 {
            return Err(SettingsError::NoWorkers);
        }
        if self.session_max == 0 {
            return Err(SettingsError::NoSessions);
        }
        if self.threads == 0 {
            return Err(SettingsError::NoThreads);
        }
        if self.body_timeout.is_zero() {
            return Err(SettingsError::NoBodyTimeout);
        }
        self.validate_dns()?;
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(SettingsError::TlsHalf);
        }
        self.validate_worker_tls()?;
        if self.health_rise == 0 || self.health_fall == 0 {
            return Err(SettingsError::BadHealthCounts);
        }
        let first = self.worker_port;
        // Only the spawned workers' own ports are required; their spares are taken where
        // free at each rolling restart.
        let spawned = self.spawned_workers().max(1);
        let last = u32::from(first) + spawned.min(usize::from(u16::MAX) + 1) as u32 - 1;
        if last > u32::from(u16::MAX) {
            return Err(SettingsError::WorkerPortsOutOfRange {
                first,
                workers: self.workers,
                last,
            });
        }
        let proxy = u32::from(self.proxy_port());
        if proxy >= u32::from(first) && proxy <= last {
            return Err(SettingsError::PortCollision {
                proxy: self.proxy_port(),
                first,
                last,
            });
        }
        self.validate_admin()?;
        if !valid_token(&self.session_cookie) {
            return Err(SettingsError::BadCookieName {
                field: "--session-cookie",
                value: self.session_cookie.clone(),
            });
        }
        if let Some(name) = &self.affinity_cookie {
            if !valid_token(name) {
                return Err(SettingsError::BadCookieName {
                    field: "--affinity-cookie",
                    value: name.clone(),
                });
            }
        }
        Ok(())
    }
}

/// The TOML file: the same settings as the long flags, in kebab-case, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileSettings {
    /// `--workers`.
    pub workers: Option<usize>,
    /// `--worker-port`.
    pub worker_port: Option<u16>,
    /// `--proxy-port`.
    pub proxy_port: Option<u16>,
    /// `--bind`.
    pub bind: Option<IpAddr>,
    /// Inverse of `--no-respawn`.
    pub respawn: Option<bool>,
    /// Inverse of `--no-websocket`.
    pub websocket: Option<bool>,
    /// `--delay`.
    pub delay: Option<String>,
    /// `--debug`.
    pub debug: Option<bool>,
    /// `--session-cookie`.
    pub session_cookie: Option<String>,
    /// `--session-key`, in order.
    pub session_key: Option<Vec<String>>,
    /// `--session-ttl`.
    pub session_ttl: Option<String>,
    /// `--session-max`.
    pub session_max: Option<usize>,
    /// `--affinity-cookie`.
    pub affinity_cookie: Option<String>,
    /// Inverse of `--no-affinity-cookie`.
    pub affinity: Option<bool>,
    /// `--affinity-secret`.
    pub affinity_secret: Option<String>,
    /// `--secret-file`.
    pub secret_file: Option<PathBuf>,
    /// `--shared-table`.
    pub shared_table: Option<String>,
    /// `--shared-table-timeout`.
    pub shared_table_timeout: Option<String>,
    /// `--ready-timeout`.
    pub ready_timeout: Option<String>,
    /// `--grace-timeout`.
    pub grace_timeout: Option<String>,
    /// `--kill-timeout`.
    pub kill_timeout: Option<String>,
    /// `--threads`.
    pub threads: Option<usize>,
    /// `--on-message`.
    pub on_message: Option<String>,
    /// `--upstream`, in order.
    pub upstream: Option<Vec<String>>,
    /// `--upstream-dns`, in order.
    pub upstream_dns: Option<Vec<String>>,
    /// `--dns-interval`.
    pub dns_interval: Option<String>,
    /// `--dns-max-workers`.
    pub dns_max_workers: Option<usize>,
    /// `--health-path`.
    pub health_path: Option<String>,
    /// `--health-interval`.
    pub health_interval: Option<String>,
    /// `--health-timeout`.
    pub health_timeout: Option<String>,
    /// `--health-rise`.
    pub health_rise: Option<u32>,
    /// `--health-fall`.
    pub health_fall: Option<u32>,
    /// `--on-worker-down`.
    pub on_worker_down: Option<WorkerDownPolicy>,
    /// `--hold-timeout`.
    pub hold_timeout: Option<String>,
    /// `--drain-timeout`.
    pub drain_timeout: Option<String>,
    /// `--drain-sessions`.
    pub drain_sessions: Option<bool>,
    /// `--drain-idle`.
    pub drain_idle: Option<String>,
    /// `--connect-timeout`.
    pub connect_timeout: Option<String>,
    /// `--response-timeout`.
    pub response_timeout: Option<String>,
    /// `--header-timeout`.
    pub header_timeout: Option<String>,
    /// `--body-timeout`.
    pub body_timeout: Option<String>,
    /// `--max-header-size`.
    pub max_header_size: Option<usize>,
    /// `--max-connections`.
    pub max_connections: Option<usize>,
    /// `--max-pending`.
    pub max_pending: Option<usize>,
    /// `--ws-idle-timeout`.
    pub ws_idle_timeout: Option<String>,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--http-redirect-port`.
    pub http_redirect_port: Option<u16>,
    /// `--admin`.
    pub admin: Option<SocketAddr>,
    /// `--admin-token`.
    pub admin_token: Option<String>,
    /// `--access-log`.
    pub access_log: Option<PathBuf>,
    /// `--worker-tls`.
    pub worker_tls: Option<bool>,
    /// `--worker-cert`.
    pub worker_cert: Option<PathBuf>,
    /// `--worker-tls-no-verify`.
    pub worker_tls_no_verify: Option<bool>,
    /// `--allow`, a list.
    pub allow: Option<Vec<String>>,
    /// `--deny`, a list.
    pub deny: Option<Vec<String>>,
    /// `--trust-proxy`, a list.
    pub trust_proxy: Option<Vec<String>>,
    /// `--allow-underscore-headers`.
    pub allow_underscore_headers: Option<bool>,
    /// The worker command and its arguments.
    pub command: Option<Vec<String>>,
}

impl FileSettings {
    /// Reads and parses a TOML file.
    ///
    /// # Errors
    /// [`SettingsError::ReadFile`] or [`SettingsError::ParseFile`] naming the file, line and key.
    pub fn load(path: &std::path::Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e: toml::de::Error| {
            let location = e
                .span()
                .map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                    let column = before.len() - line_start + 1;
                    let key = text[line_start..]
                        .lines()
                        .next()
                        .and_then(|l| l.split_once('='))
                        .map(|(k, _)| format!(", key {}", k.trim()))
                        .unwrap_or_default();
                    format!(" line {line}, column {column}{key}")
                })
                .unwrap_or_default();
            SettingsError::ParseFile {
                path: path.to_path_buf(),
                location,
                message: e.message().split_whitespace().collect::<Vec<_>>().join(" "),
            }
        })
    }

    /// Lays this file's values over `settings`.
    ///
    /// # Errors
    /// A bad duration or key source, naming the key.
    pub fn apply(self, s: &mut Settings) -> Result<(), SettingsError> {
        set(&mut s.workers, self.workers);
        set(&mut s.worker_port, self.worker_port);
        if self.proxy_port.is_some() {
            s.proxy_port = self.proxy_port;
        }
        set(&mut s.bind, self.bind);
        set(&mut s.respawn, self.respawn);
        set(&mut s.websocket, self.websocket);
        set(&mut s.debug, self.debug);
        set(&mut s.session_cookie, self.session_cookie);
        set(&mut s.session_max, self.session_max);
        set(&mut s.threads, self.threads);
        set(&mut s.secret_file, self.secret_file);
        if let Some(url) = self.shared_table {
            crate::redis_url::check_url(&url).map_err(|reason| SettingsError::BadSharedTable {
                url: crate::redis_url::redact(&url),
                reason,
            })?;
            s.shared_table = Some(url);
        }
        set(&mut s.command, self.command);
        if self.on_message.is_some() {
            s.on_message = self.on_message;
        }
        if let Some(list) = self.upstream {
            s.upstreams = list
                .iter()
                .map(|u| parse_upstream(u))
                .collect::<Result<_, _>>()?;
        }
        if let Some(list) = self.upstream_dns {
            s.upstream_dns = list.iter().map(|n| n.parse()).collect::<Result<_, _>>()?;
        }
        set_duration(&mut s.dns_interval, "dns-interval", self.dns_interval)?;
        set(&mut s.dns_max_workers, self.dns_max_workers);
        if self.health_path.is_some() {
            s.health_path = self.health_path;
        }
        set(&mut s.health_rise, self.health_rise);
        set(&mut s.health_fall, self.health_fall);
        set(&mut s.on_worker_down, self.on_worker_down);
        set(&mut s.max_header_size, self.max_header_size);
        set(&mut s.max_connections, self.max_connections);
        set(&mut s.max_pending, self.max_pending);
        set_duration(
            &mut s.health_interval,
            "health-interval",
            self.health_interval,
        )?;
        set_duration(&mut s.health_timeout, "health-timeout", self.health_timeout)?;
        set_duration(&mut s.hold_timeout, "hold-timeout", self.hold_timeout)?;
        set_duration(&mut s.drain_timeout, "drain-timeout", self.drain_timeout)?;
        set(&mut s.drain_sessions, self.drain_sessions);
        set_duration(&mut s.drain_idle, "drain-idle", self.drain_idle)?;
        set_duration(
            &mut s.connect_timeout,
            "connect-timeout",
            self.connect_timeout,
        )?;
        set_duration(
            &mut s.response_timeout,
            "response-timeout",
            self.response_timeout,
        )?;
        set_duration(&mut s.header_timeout, "header-timeout", self.header_timeout)?;
        set_duration(&mut s.body_timeout, "body-timeout", self.body_timeout)?;
        set_duration(
            &mut s.ws_idle_timeout,
            "ws-idle-timeout",
            self.ws_idle_timeout,
        )?;
        if self.tls_cert.is_some() {
            s.tls_cert = self.tls_cert;
        }
        if self.tls_key.is_some() {
            s.tls_key = self.tls_key;
        }
        if self.http_redirect_port.is_some() {
            s.http_redirect_port = self.http_redirect_port;
        }
        if self.admin.is_some() {
            s.admin = self.admin;
        }
        if self.admin_token.is_some() {
            s.admin_token = self.admin_token;
        }
        if self.access_log.is_some() {
            s.access_log = self.access_log;
        }
        set(&mut s.worker_tls, self.worker_tls);
        if self.worker_cert.is_some() {
            s.worker_cert = self.worker_cert;
        }
        set(&mut s.worker_tls_no_verify, self.worker_tls_no_verify);
        set(&mut s.allow, self.allow);
        set(&mut s.deny, self.deny);
        set(&mut s.trust_proxy, self.trust_proxy);
        set(
            &mut s.allow_underscore_headers,
            self.allow_underscore_headers,
        );
        if let Some(keys) = self.session_key {
            s.session_keys = keys.iter().map(|k| k.parse()).collect::<Result<_, _>>()?;
        }
        if let Some(name) = self.affinity_cookie {
            s.affinity_cookie = Some(name);
        }
        if self.affinity == Some(false) {
            s.affinity_cookie = None;
        }
        if self.affinity_secret.is_some() {
            s.affinity_secret = self.affinity_secret;
        }
        set_duration(&mut s.delay, "delay", self.delay)?;
        set_duration(&mut s.session_ttl, "session-ttl", self.session_ttl)?;
        set_duration(
            &mut s.shared_table_timeout,
            "shared-table-timeout",
            self.shared_table_timeout,
        )?;
        set_duration(&mut s.ready_timeout, "ready-timeout", self.ready_timeout)?;
        set_duration(&mut s.grace_timeout, "grace-timeout", self.grace_timeout)?;
        set_duration(&mut s.kill_timeout, "kill-timeout", self.kill_timeout)?;
        Ok(())
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

fn set_duration(
    slot: &mut Duration,
    field: &'static str,
    value: Option<String>,
) -> Result<(), SettingsError> {
    if let Some(v) = value {
        *slot = parse_duration(field, &v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(
            parse_duration("x", "1500ms").ok(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_duration("x", "30s").ok(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_duration("x", "1h").ok(),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            parse_duration("x", "1.5s").ok(),
            Some(Duration::from_millis(1500))
        );
        for bad in ["", "10", "ms", "1x", "-1s", "1e400s"] {
            assert!(parse_duration("x", bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn durations_are_written_as_they_are_read() {
        for (ms, text) in [
            (0, "0s"),
            (1500, "1500ms"),
            (30_000, "30s"),
            (300_000, "5m"),
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration("x", text).ok(), Some(d));
        }
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
    }

    #[test]
    fn key_sources_parse() {
        assert_eq!(
            "cookie:connect.sid".parse::<KeySource>().ok(),
            Some(KeySource::Cookie("connect.sid".into()))
        );
        assert_eq!("ip".parse::<KeySource>().ok(), Some(KeySource::Ip));
        assert!(matches!(
            "header:X-Session".parse::<KeySource>(),
            Ok(KeySource::Header(_))
        ));
        for bad in [
            "cookie:",
            "cookie:a;b",
            "header:bad header",
            "host",
            "query:",
        ] {
            assert!(bad.parse::<KeySource>().is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn example_config_parses_with_every_key() {
        let path = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/sticky-cluster.toml"
        ));
        let mut s = Settings::default();
        FileSettings::load(path)
            .and_then(|f| f.apply(&mut s))
            .expect("example config is valid");
        assert_eq!(s.workers, 4);
        assert_eq!(s.proxy_port(), 8080);
        assert_eq!(s.command, vec!["node", "app.js"]);
        assert!(s.validate().is_ok());
    }

    #[test]
    fn worker_tls_keys_are_read_from_toml() {
        let dir = std::env::temp_dir().join(format!("sticky-worker-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "worker-tls = true\nworker-cert = \"/etc/w.pem\"\n").unwrap();
        let mut s = Settings::default();
        FileSettings::load(&path).unwrap().apply(&mut s).unwrap();
        assert!(s.validate().is_ok());
        assert_eq!(
            s.worker_tls_mode(),
            Some(crate::worker_tls::WorkerTls::Pinned("/etc/w.pem".into()))
        );
        std::fs::write(&path, "worker-tls-no-verify = true\n").unwrap();
        let mut s = Settings::default();
        FileSettings::load(&path).unwrap().apply(&mut s).unwrap();
        assert!(matches!(s.validate(), Err(SettingsError::WorkerTlsOff)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn validation_catches_port_ranges() {
        let mut s = Settings {
            workers: 4,
            worker_port: 65533,
            ..Settings::default()
        };
        assert!(matches!(
            s.validate(),
            Err(SettingsError::WorkerPortsOutOfRange { last: 65536, .. })
        ));
        s.worker_port = 65532;
        assert!(s.validate().is_ok(), "the spares are not required");
        assert_eq!(s.spare_addr(0), None, "no preferred spare past 65535");
        s.worker_port = 8000;
        s.proxy_port = Some(8002);
        assert!(matches!(
            s.validate(),
            Err(SettingsError::PortCollision { .. })
        ));
        s.proxy_port = Some(8080);
        assert!(s.validate().is_ok());
    }
}
