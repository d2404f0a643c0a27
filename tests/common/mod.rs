//! Test harness: the real binary, real worker processes, free loopback ports, a tiny
//! blocking HTTP/1.1 client, and a `TestCluster` that stops everything it started on drop.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_sticky-cluster");

/// A fresh scratch directory under the target dir, unique per call.
pub fn scratch(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A run of `n` consecutive free loopback ports, held bound until `release`.
pub struct Ports {
    pub first: u16,
    held: Vec<TcpListener>,
}

impl Ports {
    pub fn release(&mut self) {
        self.held.clear();
    }
}

/// Finds `n` consecutive free ports (proxy port + worker ports, say).
pub fn free_ports(n: usize) -> Ports {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed =
        (std::process::id() * 7919 + NEXT.fetch_add(1, Ordering::Relaxed) * 104_729) % 12_000;
    for attempt in 0..2000u32 {
        // Below the kernel's ephemeral range (32768+), so a readiness probe can never
        // connect to itself through TCP simultaneous open.
        let first = 20_000 + ((seed + attempt * 37) % 12_000) as u16;
        let held: Result<Vec<_>, _> = (0..n as u16)
            .map(|i| TcpListener::bind(("127.0.0.1", first + i)))
            .collect();
        if let Ok(held) = held {
            return Ports { first, held };
        }
    }
    panic!("no run of {n} free ports");
}

/// Options for one cluster.
pub struct Options {
    /// The program to run: `sticky-cluster` itself, or a program built on the library.
    pub program: PathBuf,
    pub workers: usize,
    pub args: Vec<String>,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub secret_dir: Option<PathBuf>,
    pub wait_ready: bool,
    /// Keep the preferred spare port of worker 0 (`W+N`) taken by a listener of the test.
    pub occupy_spare: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            program: PathBuf::from(BIN),
            workers: 2,
            args: Vec::new(),
            command: Vec::new(),
            env: Vec::new(),
            secret_dir: None,
            wait_ready: true,
            occupy_spare: false,
        }
    }
}

/// A running `sticky-cluster` process with its workers; stopped on drop.
pub struct TestCluster {
    pub child: Option<Child>,
    pub proxy: SocketAddr,
    pub worker_port: u16,
    pub workers: usize,
    pub dir: PathBuf,
    pub cmdline: String,
    /// Listeners the test holds while the cluster runs (see [`Options::occupy_spare`]).
    pub occupied: Vec<TcpListener>,
}

impl TestCluster {
    pub fn start(opts: Options) -> Self {
        // Ports are free when picked, but another test may take one before the binary
        // binds it: the binary then says so and exits, and the cluster starts again.
        for _ in 0..3 {
            let mut cluster = Self::spawn(&opts);
            if !opts.wait_ready {
                return cluster;
            }
            match cluster.try_wait_listening(Duration::from_secs(60)) {
                Ok(()) => return cluster,
                Err(why) if cluster.stderr().contains("already in use") => {
                    eprintln!("retrying on other ports: {why}");
                    let _ = cluster.child.take().map(|mut c| c.wait());
                }
                Err(why) => panic!("{why}\n{}", cluster.logs()),
            }
        }
        panic!("no run of free ports stayed free for the proxy");
    }

    fn spawn(opts: &Options) -> Self {
        // The proxy, then a port and a spare (for rolling restarts) per worker.
        let mut ports = free_ports(1 + 2 * opts.workers);
        let proxy_port = ports.first;
        let worker_port = ports.first + 1;
        let dir = scratch("cluster");
        let secret_dir = opts.secret_dir.clone().unwrap_or_else(|| dir.clone());
        let mut args: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--proxy-port".into(),
            proxy_port.to_string(),
            "--worker-port".into(),
            worker_port.to_string(),
            "--workers".into(),
            opts.workers.to_string(),
            "--delay".into(),
            "0s".into(),
            "--secret-file".into(),
            secret_dir.join("affinity.key").display().to_string(),
        ];
        args.extend(opts.args.iter().cloned());
        if !opts.command.is_empty() {
            args.push("--".into());
            args.extend(opts.command.iter().cloned());
        }
        let mut cmd = Command::new(&opts.program);
        cmd.args(&args)
            .env_remove("STICKY_CLUSTER_SECRET")
            .env_remove("STICKY_CLUSTER_ROLE")
            .env_remove("STICKY_CLUSTER_LOG")
            .env_remove("STICKY_CLUSTER_IPC")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        ports.release();
        let occupied = if opts.occupy_spare {
            let spare = worker_port + opts.workers as u16;
            vec![TcpListener::bind(("127.0.0.1", spare)).unwrap()]
        } else {
            Vec::new()
        };
        let cmdline = format!("{} {}", opts.program.display(), args.join(" "));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmdline}: {e}"));
        Self {
            child: Some(child),
            proxy: SocketAddr::from(([127, 0, 0, 1], proxy_port)),
            worker_port,
            workers: opts.workers,
            dir,
            cmdline,
            occupied,
        }
    }

    /// Starts the built-in demo worker cluster with extra flags.
    pub fn demo(workers: usize, args: &[&str]) -> Self {
        Self::start(Options {
            workers,
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    }

    /// The proxy's URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.proxy)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn wait_listening(&self, timeout: Duration) {
        if let Err(why) = self.try_wait_listening(timeout) {
            panic!("{why}\n{}", self.logs());
        }
    }

    /// Until the proxy accepts connections. For our own binary, until it has also said so:
    /// a connection alone could reach another test's listener on a port taken meanwhile.
    fn try_wait_listening(&self, timeout: Duration) -> Result<(), String> {
        let own_binary = self.cmdline.starts_with(BIN);
        let deadline = Instant::now() + timeout;
        loop {
            let said = !own_binary || self.stderr().contains("proxy listening on");
            if said && TcpStream::connect(self.proxy).is_ok() {
                return Ok(());
            }
            if self.has_exited() {
                return Err("the proxy exited before listening".into());
            }
            if Instant::now() > deadline {
                return Err("proxy never listened".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True once the process has ended (a zombie not yet reaped counts).
    fn has_exited(&self) -> bool {
        // `try_wait` needs `&mut self`; /proc says the same without it.
        let Some(child) = self.child.as_ref() else {
            return true;
        };
        match std::fs::read_to_string(format!("/proc/{}/stat", child.id())) {
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(_) => true,
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        format!(
            "command: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.stdout(),
            self.stderr()
        )
    }

    /// Waits until the log contains `needle` (the supervisor reports its state changes).
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.stderr().contains(needle) {
            if !alive(self.pid()) && !self.stderr().contains(needle) {
                panic!("exited before the log said {needle:?}\n{}", self.logs());
            }
            if Instant::now() > deadline {
                panic!("log never said {needle:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn count_log(&self, needle: &str) -> usize {
        self.stderr().matches(needle).count()
    }

    pub fn signal(&self, sig: &str) {
        kill(sig, self.pid());
    }

    /// Waits for the supervisor to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "sticky-cluster did not exit within {timeout:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One request to the proxy; panics (with the logs) if it gets no response.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        request(self.proxy, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} failed: {e}\n{}", self.logs()))
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.request("GET", path, headers, b"")
    }

    /// Logs session `id` in (`/login?id=ID` of `tests/node/worker.js`, which sets
    /// `connect.sid=ID`): the worker that answered.
    pub fn login(&self, id: &str) -> u64 {
        let r = self.get(&format!("/login?id={id}"), &[]);
        assert_eq!(r.status, 200, "{}\n{}", r.text(), self.logs());
        let text = r.text();
        text.trim_start_matches("logged in on worker ")
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("a worker id in {text:?}"))
    }

    /// GET /whoami as JSON.
    pub fn whoami(&self, headers: &[(&str, &str)]) -> (Response, serde_json::Value) {
        let r = self.get("/whoami", headers);
        assert_eq!(r.status, 200, "{}\n{}", r.text(), self.logs());
        let json = serde_json::from_slice(&r.body).unwrap();
        (r, json)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop(child, Duration::from_secs(15));
        }
    }
}

/// `workers` copies of `node SCRIPT` behind the proxy, every one of them up.
pub fn node_cluster(
    script: &Path,
    workers: usize,
    extra_args: &[&str],
    env: &[(&str, &str)],
) -> TestCluster {
    let c = TestCluster::start(Options {
        workers,
        command: vec!["node".into(), script.display().to_string()],
        args: extra_args.iter().map(|s| s.to_string()).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    });
    c.wait_log(&format!("{workers}/{workers} up"), Duration::from_secs(30));
    c
}

/// `n` copies of the plain Node worker `tests/node/worker.js`, every one of them up.
pub fn node_workers(n: usize, extra_args: &[&str], env: &[(&str, &str)]) -> TestCluster {
    node_cluster(&tests_dir().join("node/worker.js"), n, extra_args, env)
}

/// Sends `kill -SIG` to `pid`; true if `kill` succeeded.
fn send_signal(sig: &str, pid: u32) -> bool {
    Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// Sends signal `sig` (`TERM`, `KILL`, `HUP`, ...) to `pid`, which must exist.
pub fn kill(sig: &str, pid: u32) {
    assert!(send_signal(sig, pid), "kill -{sig} {pid} failed");
}

/// SIGTERM to the child's PID, SIGKILL if it is still there after `grace`; always reaped.
pub fn stop(mut child: Child, grace: Duration) -> ExitStatus {
    if let Ok(Some(status)) = child.try_wait() {
        return status;
    }
    send_signal("TERM", child.id());
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().unwrap()
}

/// True while a process with this pid exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits until `cond` holds, at most `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// `name=value` pairs of every Set-Cookie.
    pub fn set_cookies(&self) -> HashMap<String, String> {
        self.all("set-cookie")
            .into_iter()
            .filter_map(|c| {
                let first = c.split(';').next()?;
                let (k, v) = first.split_once('=')?;
                Some((k.trim().to_string(), v.trim().to_string()))
            })
            .collect()
    }

    /// Every Set-Cookie's `name=value`, as one `Cookie` header to send back.
    pub fn cookie_header(&self) -> String {
        self.set_cookies()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// One request on a new connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    raw_request(addr, &raw)
}

/// Sends raw bytes, reads until the server closes, parses one response.
pub fn raw_request(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(raw)?;
    let mut reader = BufReader::new(s);
    read_response(&mut reader)
}

/// Reads one response (Content-Length, chunked, or until close).
pub fn read_response(reader: &mut impl BufRead) -> std::io::Result<Response> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').ok_or_else(|| bad("bad header"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if status == 101 || status == 204 || status == 304 {
        return Ok(resp);
    }
    if let Some(len) = resp
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        resp.body = vec![0; len];
        reader.read_exact(&mut resp.body)?;
    } else if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim(), 16).map_err(|_| bad("bad chunk"))?;
            if size == 0 {
                // Trailer fields (kept with the headers), then the empty line.
                loop {
                    line.clear();
                    reader.read_line(&mut line)?;
                    match line.trim_end().split_once(':') {
                        Some((k, v)) => resp.headers.push((k.trim().into(), v.trim().into())),
                        None => break,
                    }
                }
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            resp.body.extend_from_slice(&chunk[..size]);
        }
    } else {
        reader.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

/// Runs the binary to completion with `args` (no cluster expected to start).
pub fn run_to_exit(args: &[&str], timeout: Duration) -> (ExitStatus, String, String) {
    let dir = scratch("run");
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("STICKY_CLUSTER_SECRET")
        .env_remove("STICKY_CLUSTER_ROLE")
        .env("XDG_STATE_HOME", &dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{args:?} did not exit within {timeout:?}\nstderr: {}",
                std::fs::read_to_string(dir.join("stderr")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = std::fs::read_to_string(dir.join("stdout")).unwrap_or_default();
    let err = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    (status, out, err)
}

/// Runs the binary with `args`, which must exit with code 2 (a usage error); returns its
/// stderr and that stderr's last line.
pub fn exit_code_2(args: &[&str], timeout: Duration) -> (String, String) {
    let (status, _, err) = run_to_exit(args, timeout);
    assert_eq!(status.code(), Some(2), "{args:?}\n{err}");
    let last = err.lines().last().unwrap_or("").to_string();
    (err, last)
}

/// Path of a file under `tests/`.
pub fn tests_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests"))
}

/// Runs `npm ci` in `dir` unless its `node_modules` is installed, once, under a lock file.
pub fn npm_ci(dir: &Path) -> PathBuf {
    let lock = dir.join(".npm-install.lock");
    let deadline = Instant::now() + Duration::from_secs(300);
    let guard = loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(f) => break f,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("could not take {}: {e}", lock.display()),
        }
    };
    let ok = dir.join("node_modules/.package-lock.json").exists() || {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir)
            .status();
        matches!(status, Ok(s) if s.success())
    };
    drop(guard);
    let _ = std::fs::remove_file(&lock);
    assert!(ok, "npm ci in {} failed", dir.display());
    dir.to_path_buf()
}

/// `tests/node`, with its `node_modules` installed.
pub fn node_modules() -> PathBuf {
    npm_ci(&tests_dir().join("node"))
}

/// What one run of a Node script printed.
pub struct NodeRun {
    pub script: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Debian's Chromium (`CHROMIUM` overrides), which must be installed (`.ci/run` does).
pub fn chromium() -> PathBuf {
    let chromium = std::env::var_os("CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        chromium.exists(),
        "chromium is not installed ({} is missing): run `apt-get install -y chromium` \
         (CI installs it)",
        chromium.display()
    );
    chromium
}

/// Runs the playwright-core script `script` of `tests/browser` with `args`, driving
/// [`chromium`]; its profile and caches go to a scratch directory named after `tag`. The
/// script's own deadline is its last argument; it is stopped 10 s after `deadline`.
pub fn browser_run(tag: &str, script: &str, args: &[String], deadline: Duration) -> NodeRun {
    let chromium = chromium();
    let browser = npm_ci(&tests_dir().join("browser"));
    let tmp = scratch(tag);
    let env: [(&str, &Path); 4] = [
        ("TMPDIR", &tmp),
        ("XDG_CONFIG_HOME", &tmp),
        ("XDG_CACHE_HOME", &tmp),
        ("CHROMIUM", &chromium),
    ];
    NodeRun::run(
        &browser,
        script,
        args,
        &env,
        deadline + Duration::from_secs(10),
    )
}

impl NodeRun {
    /// Runs `node SCRIPT ARGS` in `dir` with `env`, stopped by PID past `deadline`.
    pub fn run(
        dir: &Path,
        script: &str,
        args: &[String],
        env: &[(&str, &Path)],
        deadline: Duration,
    ) -> Self {
        let out = scratch("node-run");
        let started = Instant::now();
        let mut cmd = Command::new("node");
        cmd.arg(dir.join(script))
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(out.join("stdout")).unwrap())
            .stderr(std::fs::File::create(out.join("stderr")).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node (is Node.js installed?): {e}"));
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > deadline {
                // SIGTERM first: playwright then closes the browser it launched.
                break stop(child, Duration::from_secs(5));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            script: script.to_string(),
            status,
            stdout: std::fs::read_to_string(out.join("stdout")).unwrap_or_default(),
            stderr: std::fs::read_to_string(out.join("stderr")).unwrap_or_default(),
            elapsed: started.elapsed(),
        }
    }

    /// The script's exit, output and the cluster's logs, for a failed assertion.
    pub fn report(&self, cluster: &TestCluster) -> String {
        format!(
            "node {}: {} after {:?}\n--- node stdout ---\n{}\n--- node stderr ---\n{}\n--- cluster ---\n{}",
            self.script,
            self.status,
            self.elapsed,
            self.stdout,
            self.stderr,
            cluster.logs()
        )
    }

    /// The JSON summary (the last line of stdout).
    pub fn summary(&self, cluster: &TestCluster) -> serde_json::Value {
        let line = self.stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("no JSON summary ({e})\n{}", self.report(cluster)))
    }
}

/// The items of a JSON array as strings (non-strings as JSON text); empty if not an array.
pub fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A Node worker (`tests/node/worker.js`) started by a test itself, as an `--upstream`; killed
/// on drop.
pub struct Upstream {
    pub child: Child,
    pub port: u16,
}

impl Upstream {
    /// Worker `id` on `port`, listening when this returns.
    pub fn start(id: u16, port: u16) -> Self {
        Self::start_on(id, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// Worker `id` on `addr` (a loopback address), listening when this returns.
    pub fn start_on(id: u16, addr: SocketAddr) -> Self {
        let port = addr.port();
        let child = Command::new("node")
            .arg(tests_dir().join("node/worker.js"))
            .env("HOST", addr.ip().to_string())
            .env("PORT", port.to_string())
            .env("WORKER_ID", id.to_string())
            .env_remove("STICKY_CLUSTER_IPC")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("node starts");
        wait_until("the upstream to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(addr).is_ok()
        });
        Self { child, port }
    }

    /// `--upstream 127.0.0.1:PORT`.
    pub fn arg(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the worker and waits until its port refuses connections.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        wait_until(
            "the upstream's port to close",
            Duration::from_secs(10),
            || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err(),
        );
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/2 request with prior knowledge on a connection of its own: status, headers,
/// body.
pub fn h2_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, http::HeaderMap, bytes::Bytes) {
    use http_body_util::{BodyExt, Full};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut send, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req
            .body(Full::new(bytes::Bytes::copy_from_slice(body)))
            .expect("request");
        let resp = send.send_request(req).await.expect("h2 response");
        let (head, body) = resp.into_parts();
        let body = body.collect().await.expect("h2 body").to_bytes();
        (head.status.as_u16(), head.headers, body)
    })
}

/// A worker written in the test: it answers every request with the request head it got, as
/// text, so a test sees byte for byte what reached a worker; it keeps every head it got. A
/// request whose path starts with `/die` is read whole and then its connection is dropped
/// without an answer, as a worker killed in the middle of it would.
pub struct EchoWorker {
    pub addr: SocketAddr,
    pub heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl EchoWorker {
    pub fn start() -> Self {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, st) = (heads.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let h = h.clone();
                        std::thread::spawn(move || echo_connection(s, &h));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { addr, heads, stop }
    }

    /// The heads received so far whose request line contains `needle`.
    pub fn received(&self, needle: &str) -> Vec<String> {
        self.heads
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.lines().next().is_some_and(|l| l.contains(needle)))
            .cloned()
            .collect()
    }
}

impl Drop for EchoWorker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn echo_connection(s: TcpStream, heads: &std::sync::Mutex<Vec<String>>) {
    use std::io::Read;
    s.set_nonblocking(false).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut out = s;
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        heads.lock().unwrap().push(head.clone());
        if head
            .split_whitespace()
            .nth(1)
            .is_some_and(|p| p.starts_with("/die"))
        {
            return;
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{head}",
            head.len()
        );
        if out.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// How many established TCP connections have `port` as their local port on loopback (from
/// /proc/net/tcp): e.g. 0 once a worker has closed every connection it accepted.
pub fn established_on(port: u16) -> usize {
    let local = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .map(|table| {
            table
                .lines()
                .skip(1)
                .filter(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    cols.len() > 3 && cols[1].ends_with(&local) && cols[3] == "01"
                })
                .count()
        })
        .sum()
}
