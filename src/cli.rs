//! Command-line flags, laid over the TOML file (`--config`) and the defaults.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::settings::{FileSettings, KeySource, Settings, SettingsError};

/// Runs N copies of a web app and a sticky-session reverse proxy in front of them.
#[derive(Debug, Parser)]
#[command(
    name = "sticky-cluster",
    version,
    about,
    // A flag given twice keeps its last value, so wrappers can append overrides.
    args_override_self = true,
    after_help = "Without COMMAND, a built-in demo worker is run. Each worker gets PORT and WORKER_ID in its environment.\nExample: sticky-cluster --workers 4 --proxy-port 8080 -- node app.js"
)]
struct Args {
    /// Number of worker processes [default: CPU count]
    #[arg(short = 'w', long)]
    workers: Option<usize>,
    /// First worker port; worker i listens on W+i (W+N+i after a rolling restart) [default: 8000]
    #[arg(long, value_name = "W")]
    worker_port: Option<u16>,
    /// Port the proxy listens on [default: 80, or 443 with --tls-cert]
    #[arg(short = 'p', long, value_name = "P")]
    proxy_port: Option<u16>,
    /// Address the proxy binds, IPv4 or IPv6 [default: 0.0.0.0]
    #[arg(long, value_name = "ADDR")]
    bind: Option<IpAddr>,
    /// Do not restart workers that exit
    #[arg(long)]
    no_respawn: bool,
    /// Refuse WebSocket (and other HTTP/1.1 upgrade) requests
    #[arg(long)]
    no_websocket: bool,
    /// Least time before the proxy accepts connections [default: 1s]
    #[arg(long, value_name = "DURATION")]
    delay: Option<String>,
    /// Log routing decisions and other debug detail
    #[arg(long)]
    debug: bool,
    /// The application's session cookie [default: connect.sid]
    #[arg(long, value_name = "NAME")]
    session_cookie: Option<String>,
    /// Where the session key is read, in order: cookie:NAME, header:NAME, query:NAME, ip, none
    /// [default: cookie:<session cookie>]
    #[arg(long = "session-key", value_name = "SOURCE")]
    session_keys: Vec<String>,
    /// Remembered keys expire this long after their last use [default: 1h]
    #[arg(long, value_name = "DURATION")]
    session_ttl: Option<String>,
    /// Cap on remembered keys; the least recently used go first [default: 1000000]
    #[arg(long, value_name = "N")]
    session_max: Option<usize>,
    /// Name of the proxy's affinity cookie [default: sticky.worker]
    #[arg(long, value_name = "NAME")]
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
    /// How long a worker may take to accept connections [default: 30s]
    #[arg(long, value_name = "DURATION")]
    ready_timeout: Option<String>,
    /// How long in-flight requests may finish after SIGTERM [default: 10s]
    #[arg(long, value_name = "DURATION")]
    grace_timeout: Option<String>,
    /// Time a worker gets between SIGTERM and SIGKILL [default: 5s]
    #[arg(long, value_name = "DURATION")]
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
    /// HTTP path for active health checks (2xx/3xx passes) [default: a TCP connect]
    #[arg(long, value_name = "PATH")]
    health_path: Option<String>,
    /// Interval between health checks [default: 2s]
    #[arg(long, value_name = "DURATION")]
    health_interval: Option<String>,
    /// Timeout of one health check [default: 1s]
    #[arg(long, value_name = "DURATION")]
    health_timeout: Option<String>,
    /// Consecutive passed checks that bring a worker back [default: 2]
    #[arg(long, value_name = "N")]
    health_rise: Option<u32>,
    /// Consecutive failed checks that take a worker out [default: 3]
    #[arg(long, value_name = "N")]
    health_fall: Option<u32>,
    /// Requests pinned to a down worker: redispatch, or hold until it is back [default: redispatch]
    #[arg(long, value_name = "POLICY")]
    on_worker_down: Option<String>,
    /// Longest wait of a held request before it is redispatched [default: 2s]
    #[arg(long, value_name = "DURATION")]
    hold_timeout: Option<String>,
    /// How long a replaced worker may finish requests and WebSockets in a reload [default: 30s]
    #[arg(long, value_name = "DURATION")]
    drain_timeout: Option<String>,
    /// Upstream connect timeout [default: 5s]
    #[arg(long, value_name = "DURATION")]
    connect_timeout: Option<String>,
    /// How long a worker may take to send response headers [default: 60s]
    #[arg(long, value_name = "DURATION")]
    response_timeout: Option<String>,
    /// How long a client may take to send a request head, and the longest keep-alive idle wait [default: 10s]
    #[arg(long, value_name = "DURATION")]
    header_timeout: Option<String>,
    /// Largest request head in bytes [default: 65536]
    #[arg(long, value_name = "BYTES")]
    max_header_size: Option<usize>,
    /// Most client connections at once; more wait to be accepted [default: 16384]
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// A WebSocket idle both ways for this long is closed [default: 1h]
    #[arg(long, value_name = "DURATION")]
    ws_idle_timeout: Option<String>,
    /// PEM certificate (chain) file: the proxy speaks HTTPS, h2 and http/1.1 [default port: 443]
    #[arg(long, value_name = "FILE")]
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
    /// Front proxies (CIDR, repeatable) whose X-Forwarded-For names the client
    #[arg(long, value_name = "CIDR")]
    trust_proxy: Vec<String>,
    /// TOML file with the same settings (kebab-case keys); flags override it
    #[arg(short = 'c', long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The worker command and its arguments
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
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
            ready_timeout: self.ready_timeout,
            grace_timeout: self.grace_timeout,
            kill_timeout: self.kill_timeout,
            threads: self.threads,
            on_message: self.on_message,
            upstream: (!self.upstreams.is_empty()).then_some(self.upstreams),
            health_path: self.health_path,
            health_interval: self.health_interval,
            health_timeout: self.health_timeout,
            health_rise: self.health_rise,
            health_fall: self.health_fall,
            on_worker_down: self.on_worker_down.map(|v| v.parse()).transpose()?,
            hold_timeout: self.hold_timeout,
            drain_timeout: self.drain_timeout,
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
            header_timeout: self.header_timeout,
            max_header_size: self.max_header_size,
            max_connections: self.max_connections,
            ws_idle_timeout: self.ws_idle_timeout,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            http_redirect_port: self.http_redirect_port,
            worker_tls: self.worker_tls.then_some(true),
            worker_cert: self.worker_cert,
            worker_tls_no_verify: self.worker_tls_no_verify.then_some(true),
            allow: (!self.allow.is_empty()).then_some(self.allow),
            deny: (!self.deny.is_empty()).then_some(self.deny),
            trust_proxy: (!self.trust_proxy.is_empty()).then_some(self.trust_proxy),
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
    fn bad_values_are_refused() {
        assert!(run(&["--workers", "0"]).unwrap_err().contains("at least 1"));
        assert!(run(&["--delay", "10"]).unwrap_err().contains("unit"));
        assert!(run(&["--bogus"]).is_err());
    }
}
