//! Command-line flags, laid over the TOML file (`--config`) and the defaults.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::settings::{
    format_duration, FileSettings, KeySource, Settings, SettingsError, DEFAULT_AFFINITY_COOKIE,
    DEFAULT_BIND, DEFAULT_BODY_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DELAY,
    DEFAULT_DNS_INTERVAL, DEFAULT_DNS_MAX_WORKERS, DEFAULT_DRAIN_IDLE, DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_GRACE_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_HEALTH_FALL, DEFAULT_HEALTH_INTERVAL,
    DEFAULT_HEALTH_RISE, DEFAULT_HEALTH_TIMEOUT, DEFAULT_HOLD_TIMEOUT, DEFAULT_KILL_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_SIZE, DEFAULT_MAX_PENDING, DEFAULT_ON_WORKER_DOWN,
    DEFAULT_PROXY_PORT, DEFAULT_READY_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT, DEFAULT_SESSION_COOKIE,
    DEFAULT_SESSION_MAX, DEFAULT_SESSION_TTL, DEFAULT_SHARED_TABLE_TIMEOUT, DEFAULT_TLS_PROXY_PORT,
    DEFAULT_WORKER_PORT, DEFAULT_WS_IDLE_TIMEOUT,
};

/// A flag's help line ending in `[default: VALUE]`, the value taken from the code's
/// `DEFAULT_*` constants so that `--help` cannot drift from them.
fn with_default(text: &str, value: impl std::fmt::Display) -> String {
    format!("{text} [default: {value}]")
}

/// Runs N copies of a web app and a sticky-session reverse proxy in front of them.
#[derive(Debug, Parser)]
#[command(
    name = "sticky-cluster",
    version,
    about,
    // A flag given twice keeps its last value, so wrappers can append overrides.
    args_override_self = true,
    after_help = "Without COMMAND, a built-in demo worker is run. Each worker gets PORT and WORKER_ID in its environment.\nExample: sticky-cluster --workers 4 --proxy-port 8080 -- node app.js\nA running instance (with --admin): sticky-cluster status | reload | drain N | undrain N | session KEY"
)]
struct Args {
    /// Number of worker processes [default: CPU count]
    #[arg(short = 'w', long)]
    workers: Option<usize>,
    #[arg(long, value_name = "W", help = with_default("First worker port; worker i listens on W+i (its rolling-restart replacement on W+N+i if free, else any free port)", DEFAULT_WORKER_PORT))]
    worker_port: Option<u16>,
    #[arg(short = 'p', long, value_name = "P", help = with_default("Port the proxy listens on", format!("{DEFAULT_PROXY_PORT}, or {DEFAULT_TLS_PROXY_PORT} with --tls-cert")))]
    proxy_port: Option<u16>,
    #[arg(long, value_name = "ADDR", help = with_default("Address the proxy binds, IPv4 or IPv6", DEFAULT_BIND))]
    bind: Option<IpAddr>,
    /// Do not restart workers that exit
    #[arg(long)]
    no_respawn: bool,
    /// Refuse WebSocket (and other HTTP/1.1 upgrade) requests
    #[arg(long)]
    no_websocket: bool,
    #[arg(long, value_name = "DURATION", help = with_default("Least time before the proxy accepts connections", format_duration(DEFAULT_DELAY)))]
    delay: Option<String>,
    /// Log routing decisions and other debug detail
    #[arg(long)]
    debug: bool,
    #[arg(long, value_name = "NAME", help = with_default("The application's session cookie", DEFAULT_SESSION_COOKIE))]
    session_cookie: Option<String>,
    /// Where the session key is read, in order: cookie:NAME, header:NAME, query:NAME, ip, none
    /// [default: cookie:<session cookie>]
    #[arg(long = "session-key", value_name = "SOURCE")]
    session_keys: Vec<String>,
    #[arg(long, value_name = "DURATION", help = with_default("Remembered keys expire this long after their last use", format_duration(DEFAULT_SESSION_TTL)))]
    session_ttl: Option<String>,
    #[arg(long, value_name = "N", help = with_default("Cap on remembered keys; the least recently used go first", DEFAULT_SESSION_MAX))]
    session_max: Option<usize>,
    #[arg(long, value_name = "NAME", help = with_default("Name of the proxy's affinity cookie", DEFAULT_AFFINITY_COOKIE))]
    affinity_cookie: Option<String>,
    /// Do not set or read the affinity cookie
    #[arg(long)]
    no_affinity_cookie: bool,
    /// Secret that signs the affinity cookie [default: generated once, kept in --secret-file]
    #[arg(
        long,
        value_name = "SECRET",
        env = "STICKY_CLUSTER_SECRET",
        hide_env_values = true
    )]
    affinity_secret: Option<String>,
    /// File that keeps the generated affinity secret
    /// [default: $XDG_STATE_HOME/sticky-cluster/affinity.key]
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Share the session table with other proxies through Redis: redis://HOST:PORT[/DB] or
    /// rediss://... (password in the URL or STICKY_CLUSTER_REDIS_PASSWORD)
    #[arg(long, value_name = "URL")]
    shared_table: Option<String>,
    #[arg(long, value_name = "DURATION", help = with_default("Longest a request waits for Redis on a key new to this proxy", format_duration(DEFAULT_SHARED_TABLE_TIMEOUT)))]
    shared_table_timeout: Option<String>,
    #[arg(long, value_name = "DURATION", help = with_default("How long a worker may take to accept connections", format_duration(DEFAULT_READY_TIMEOUT)))]
    ready_timeout: Option<String>,
    #[arg(long, value_name = "DURATION", help = with_default("How long in-flight requests may finish after SIGTERM", format_duration(DEFAULT_GRACE_TIMEOUT)))]
    grace_timeout: Option<String>,
    #[arg(long, value_name = "DURATION", help = with_default("Time a worker gets between SIGTERM and SIGKILL", format_duration(DEFAULT_KILL_TIMEOUT)))]
    kill_timeout: Option<String>,
    /// Proxy runtime threads [default: CPU count]
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Shell command that gets every worker message as a JSON line on its stdin
    #[arg(long, value_name = "COMMAND")]
    on_message: Option<String>,
    /// A worker this process does not start (repeatable); with no COMMAND, nothing is spawned
    #[arg(long = "upstream", value_name = "HOST:PORT")]
    upstreams: Vec<String>,
    /// A name whose every address (A/AAAA, hosts file) is a worker on PORT, resolved again
    /// and again (repeatable; a Kubernetes headless Service); with no COMMAND, nothing is spawned
    #[arg(long = "upstream-dns", value_name = "NAME:PORT")]
    upstream_dns: Vec<String>,
    #[arg(long, value_name = "DURATION", help = with_default("Time between two resolutions of the --upstream-dns names", format_duration(DEFAULT_DNS_INTERVAL)))]
    dns_interval: Option<String>,
    #[arg(long, value_name = "N", help = with_default("Most workers the --upstream-dns names may list together", DEFAULT_DNS_MAX_WORKERS))]
    dns_max_workers: Option<usize>,
    /// HTTP path for active health checks (2xx/3xx passes) [default: a TCP connect]
    #[arg(long, value_name = "PATH")]
    health_path: Option<String>,
    #[arg(long, value_name = "DURATION", help = with_default("Interval between health checks", format_duration(DEFAULT_HEALTH_INTERVAL)))]
    health_interval: Option<String>,
    #[arg(long, value_name = "DURATION", help = with_default("Timeout of one health check", format_duration(DEFAULT_HEALTH_TIMEOUT)))]
    health_timeout: Option<String>,
    #[arg(long, value_name = "N", help = with_default("Consecutive passed checks that bring a worker back", DEFAULT_HEALTH_RISE))]
    health_rise: Option<u32>,
    #[arg(long, value_name = "N", help = with_default("Consecutive failed checks that take a worker out", DEFAULT_HEALTH_FALL))]
    health_fall: Option<u32>,
    #[arg(long, value_name = "POLICY", help = with_default("Requests pinned to a down worker: redispatch, or hold until it is back", DEFAULT_ON_WORKER_DOWN))]
    on_worker_down: Option<String>,
    #[arg(long, value_name = "DURATION", help = with_default("Longest wait of a held request before it is redispatched", format_duration(DEFAULT_HOLD_TIMEOUT)))]
    hold_timeout: Option<String>,
    #[arg(long, value_name = "DURATION", help = with_default("How long a replaced worker may finish requests and WebSockets in a reload", format_duration(DEFAULT_DRAIN_TIMEOUT)))]
    drain_timeout: Option<String>,
    #[arg(
        long,
        help = "In a reload, the old process keeps serving the sessions pinned to it until they end (or are handed off); new sessions go to the replacement"
    )]
    drain_sessions: bool,
    #[arg(long, value_name = "DURATION", help = with_default("With --drain-sessions: a session idle this long has ended (the old process stops when all have, or at --drain-timeout)", format_duration(DEFAULT_DRAIN_IDLE)))]
    drain_idle: Option<String>,
    #[arg(long, value_name = "DURATION", help = with_default("Upstream connect timeout", format_duration(DEFAULT_CONNECT_TIMEOUT)))]
    connect_timeout: Option<String>,
    #[arg(long, value_name = "DURATION", help = with_default("How long a worker may take to send response headers, counted from the last piece of the request body it took (not while the body waits for the client)", format_duration(DEFAULT_RESPONSE_TIMEOUT)))]
    response_timeout: Option<String>,
    #[arg(long, value_name = "DURATION", help = with_default("How long a client may take to send a request head, and the longest keep-alive idle wait", format_duration(DEFAULT_HEADER_TIMEOUT)))]
    header_timeout: Option<String>,
    #[arg(long, value_name = "DURATION", help = with_default("How long a client's request body may pause before it is answered 408 (a worker that reads slowly does not count)", format_duration(DEFAULT_BODY_TIMEOUT)))]
    body_timeout: Option<String>,
    #[arg(long, value_name = "BYTES", help = with_default("Largest request head in bytes", DEFAULT_MAX_HEADER_SIZE))]
    max_header_size: Option<usize>,
    #[arg(long, value_name = "N", help = with_default("Most client connections at once; more wait to be accepted", DEFAULT_MAX_CONNECTIONS))]
    max_connections: Option<usize>,
    #[arg(long, value_name = "N", help = with_default("Most requests one worker may have unanswered; more get 503 with Retry-After (0: no bound)", DEFAULT_MAX_PENDING))]
    max_pending: Option<usize>,
    #[arg(long, value_name = "DURATION", help = with_default("A WebSocket idle both ways for this long is closed", format_duration(DEFAULT_WS_IDLE_TIMEOUT)))]
    ws_idle_timeout: Option<String>,
    #[arg(long, value_name = "FILE", help = format!("PEM certificate (chain) file: the proxy speaks HTTPS, h2 and http/1.1 [default port: {DEFAULT_TLS_PROXY_PORT}]"))]
    tls_cert: Option<PathBuf>,
    /// PEM private key file (PKCS#8, PKCS#1 RSA or SEC1 EC)
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Also listen on this port for plain HTTP and redirect it to HTTPS
    #[arg(long, value_name = "PORT")]
    http_redirect_port: Option<u16>,
    /// The workers serve HTTPS themselves: connect to them with TLS (slower than plain workers)
    #[arg(long)]
    worker_tls: bool,
    /// With --worker-tls: PEM file of the certificate the workers serve (the leaf must match)
    #[arg(long, value_name = "FILE")]
    worker_cert: Option<PathBuf>,
    /// With --worker-tls: accept any certificate from the workers
    #[arg(long)]
    worker_tls_no_verify: bool,
    /// Only these clients may enter (repeatable): 10.0.0.1, 10.0.0.0/8, 10.0.0.1-10.0.0.9, IPv6 too
    #[arg(long, value_name = "RULE")]
    allow: Vec<String>,
    /// Refuse these clients (repeatable), same forms as --allow
    #[arg(long, value_name = "RULE")]
    deny: Vec<String>,
    /// Front proxies (CIDR, repeatable) whose X-Forwarded-For names the client and whose X-Forwarded-Proto and X-Forwarded-Host reach the worker
    #[arg(long, value_name = "CIDR")]
    trust_proxy: Vec<String>,
    /// Serve /metrics, /status, the dashboard and the controls on this address (e.g. 127.0.0.1:9100)
    #[arg(long, value_name = "ADDR")]
    admin: Option<std::net::SocketAddr>,
    /// Bearer token the admin listener requires (needed when --admin is not loopback)
    #[arg(
        long,
        value_name = "TOKEN",
        env = "STICKY_CLUSTER_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
    /// One line per request (time, client, method, path, status, worker, decision, duration) to FILE, or - for stdout
    #[arg(long, value_name = "FILE")]
    access_log: Option<PathBuf>,
    /// Forward client header names containing '_' (by default they are dropped, as nginx does)
    #[arg(long)]
    allow_underscore_headers: bool,
    /// TOML file with the same settings (kebab-case keys); flags override it
    #[arg(short = 'c', long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The worker command and its arguments
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// The words that make the command line a control command for a running instance.
pub const CONTROL_WORDS: [&str; 5] = ["status", "reload", "drain", "undrain", "session"];

/// `sticky-cluster status|reload|drain N|undrain N|session KEY`: steer a running instance
/// through its admin listener.
#[derive(Debug, Parser)]
#[command(
    name = "sticky-cluster",
    version,
    about = "Steer a running sticky-cluster through its --admin listener"
)]
pub struct Control {
    /// The instance's admin address [default: read from the runtime file of its proxy port]
    #[arg(long, value_name = "ADDR", global = true)]
    pub admin: Option<std::net::SocketAddr>,
    /// The admin listener's bearer token
    #[arg(
        long,
        value_name = "TOKEN",
        env = "STICKY_CLUSTER_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub admin_token: Option<String>,
    /// The instance's proxy port, to find its runtime file
    #[arg(short = 'p', long, value_name = "P", global = true)]
    proxy_port: Option<u16>,
    /// The instance's --secret-file, when it had one and XDG_RUNTIME_DIR is unset
    #[arg(long, value_name = "FILE", global = true)]
    secret_file: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: ControlCommand,
}

/// A control command.
#[derive(Debug, clap::Subcommand)]
pub enum ControlCommand {
    /// Print the workers as a table
    Status,
    /// Replace the workers one by one (as SIGHUP)
    Reload,
    /// Send no new sessions to a worker; its sessions stay
    Drain {
        /// The worker id
        worker: u16,
    },
    /// Send new sessions to a drained worker again
    Undrain {
        /// The worker id
        worker: u16,
    },
    /// Which worker holds a session key
    Session {
        /// The key (a cookie value, header value, or client IP)
        key: String,
    },
}

impl Control {
    /// The proxy port whose runtime file is read.
    pub fn proxy_port(&self) -> u16 {
        self.proxy_port.unwrap_or(DEFAULT_PROXY_PORT)
    }

    /// The secret file whose directory holds the runtime file without `XDG_RUNTIME_DIR`.
    pub fn secret_file(&self) -> PathBuf {
        self.secret_file
            .clone()
            .unwrap_or_else(|| Settings::default().secret_file)
    }
}

/// A control command line (`sticky-cluster status ...`), or `None` when `args` asks to run
/// a cluster.
pub fn control<I, T>(args: I) -> Option<Result<Control, clap::Error>>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let word = args.get(1)?.to_str()?;
    CONTROL_WORDS
        .contains(&word)
        .then(|| Control::try_parse_from(args))
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Parsed {
    /// Run with these settings.
    Run(Box<Settings>),
    /// `--help`, `--version` or a usage error: clap's own text and exit code.
    Clap(clap::Error),
}

/// Parses `args` (with the program name first) into validated settings.
///
/// # Errors
/// A bad value, file or combination, as a [`SettingsError`].
pub fn parse<I, T>(args: I) -> Result<Parsed, SettingsError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    parse_onto(Settings::default(), args)
}

/// Like [`parse`], over `base` instead of the defaults: a library app's own defaults come
/// first, then the config file, then the flags.
///
/// # Errors
/// As [`parse`].
pub fn parse_onto<I, T>(base: Settings, args: I) -> Result<Parsed, SettingsError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => return Ok(Parsed::Clap(e)),
    };
    let mut settings = base;
    if let Some(path) = &args.config {
        FileSettings::load(path)?.apply(&mut settings)?;
    }
    args.apply(&mut settings)?;
    settings.validate()?;
    Ok(Parsed::Run(Box::new(settings)))
}

/// A clap usage error as one line (its first), without the usage block and tips; `--help`
/// and `--version` text in full.
pub fn one_line(e: &clap::Error) -> String {
    let text = e.to_string();
    if !e.use_stderr() {
        return text;
    }
    let first = text.lines().next().unwrap_or("invalid arguments");
    format!("{}; see --help", first.trim_start_matches("error: ").trim())
}

impl Args {
    fn apply(self, s: &mut Settings) -> Result<(), SettingsError> {
        let flags = FileSettings {
            workers: self.workers,
            worker_port: self.worker_port,
            proxy_port: self.proxy_port,
            bind: self.bind,
            respawn: self.no_respawn.then_some(false),
            websocket: self.no_websocket.then_some(false),
            delay: self.delay,
            debug: self.debug.then_some(true),
            session_cookie: self.session_cookie,
            session_key: None,
            session_ttl: self.session_ttl,
            session_max: self.session_max,
            affinity_cookie: self.affinity_cookie,
            affinity: self.no_affinity_cookie.then_some(false),
            affinity_secret: self.affinity_secret,
            secret_file: self.secret_file,
            shared_table: self.shared_table,
            shared_table_timeout: self.shared_table_timeout,
            ready_timeout: self.ready_timeout,
            grace_timeout: self.grace_timeout,
            kill_timeout: self.kill_timeout,
            threads: self.threads,
            on_message: self.on_message,
            upstream: (!self.upstreams.is_empty()).then_some(self.upstreams),
            upstream_dns: (!self.upstream_dns.is_empty()).then_some(self.upstream_dns),
            dns_interval: self.dns_interval,
            dns_max_workers: self.dns_max_workers,
            health_path: self.health_path,
            health_interval: self.health_interval,
            health_timeout: self.health_timeout,
            health_rise: self.health_rise,
            health_fall: self.health_fall,
            on_worker_down: self.on_worker_down.map(|v| v.parse()).transpose()?,
            hold_timeout: self.hold_timeout,
            drain_timeout: self.drain_timeout,
            drain_sessions: self.drain_sessions.then_some(true),
            drain_idle: self.drain_idle,
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            max_header_size: self.max_header_size,
            max_connections: self.max_connections,
            max_pending: self.max_pending,
            ws_idle_timeout: self.ws_idle_timeout,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            http_redirect_port: self.http_redirect_port,
            admin: self.admin,
            admin_token: self.admin_token,
            access_log: self.access_log,
            worker_tls: self.worker_tls.then_some(true),
            worker_cert: self.worker_cert,
            worker_tls_no_verify: self.worker_tls_no_verify.then_some(true),
            allow: (!self.allow.is_empty()).then_some(self.allow),
            deny: (!self.deny.is_empty()).then_some(self.deny),
            trust_proxy: (!self.trust_proxy.is_empty()).then_some(self.trust_proxy),
            allow_underscore_headers: self.allow_underscore_headers.then_some(true),
            command: (!self.command.is_empty()).then_some(self.command),
        };
        flags.apply(s)?;
        if !self.session_keys.is_empty() {
            s.session_keys = self
                .session_keys
                .iter()
                .map(|k| k.parse::<KeySource>())
                .collect::<Result<_, _>>()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Settings, String> {
        match parse(std::iter::once("sticky-cluster").chain(args.iter().copied())) {
            Ok(Parsed::Run(s)) => Ok(*s),
            Ok(Parsed::Clap(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn flags_and_command() {
        let s = run(&[
            "-w",
            "3",
            "--proxy-port",
            "9000",
            "--session-key",
            "header:x-s",
            "--session-key",
            "ip",
            "--",
            "node",
            "app.js",
        ])
        .expect("valid");
        assert_eq!(s.workers, 3);
        assert_eq!(s.proxy_port(), 9000);
        assert_eq!(s.command, vec!["node", "app.js"]);
        assert_eq!(s.session_keys.len(), 2);
        assert_eq!(s.session_keys[1], KeySource::Ip);
    }

    #[test]
    fn control_words_are_commands_and_the_rest_runs_a_cluster() {
        let parse =
            |args: &[&str]| control(std::iter::once("sticky-cluster").chain(args.iter().copied()));
        assert!(parse(&["--workers", "2", "--", "status"]).is_none());
        assert!(parse(&[]).is_none());
        let c = parse(&["drain", "3", "--admin", "127.0.0.1:9100"])
            .expect("a control command")
            .expect("valid");
        assert!(matches!(c.command, ControlCommand::Drain { worker: 3 }));
        assert_eq!(c.admin, Some("127.0.0.1:9100".parse().unwrap()));
        assert!(parse(&["drain"]).expect("a control command").is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(run(&["--workers", "0"]).unwrap_err().contains("at least 1"));
        assert!(run(&["--delay", "10"]).unwrap_err().contains("unit"));
        assert!(run(&["--bogus"]).is_err());
    }
}
