//! The npm package (`npm/`), as a Node user gets it: `npm/build.sh` packs the binary cargo
//! built into the tarballs of `@sticky-cluster/node` and this machine's platform package, and
//! npm installs them into an empty directory with no cargo or rustc on PATH. Then, from that
//! install: the seed's own example (`examples/seed`, HTTPS workers reached with
//! `--worker-tls`) through `require('@sticky-cluster/node')`; `npx sticky-cluster`; the
//! launcher's signals and exit; the one-line errors; and the socket.io adapter across workers
//! with the official client.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{alive, free_ports, scratch, strings, wait_until, NodeRun, BIN};
use serde_json::Value;

/// The seed example's files, copied as they are into the install directory.
const SEED_FILES: &[&str] = &[
    "bin/www",
    "worker.js",
    "socket.io.js",
    "passport.js",
    "package.json",
    "package-lock.json",
];
const CLIENT_DEADLINE: Duration = Duration::from_secs(40);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// PATH holding only the directories of `node` and `npm` plus /usr/bin and /bin, none of
/// which may hold cargo or rustc: the install must not need a Rust toolchain.
fn node_only_path() -> String {
    let find = |exe: &str| -> PathBuf {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join(exe))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{exe} is not on PATH: install Node.js and npm"))
    };
    let mut dirs: Vec<PathBuf> = vec![
        find("node").parent().unwrap().into(),
        find("npm").parent().unwrap().into(),
    ];
    dirs.extend([PathBuf::from("/usr/bin"), PathBuf::from("/bin")]);
    dirs.dedup();
    for dir in &dirs {
        for tool in ["cargo", "rustc", "rustup"] {
            assert!(
                !dir.join(tool).exists(),
                "{} holds {tool}: the install test needs a PATH without Rust",
                dir.display()
            );
        }
    }
    std::env::join_paths(dirs).unwrap().into_string().unwrap()
}

fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Packs and installs once per test run; returns the install directory.
fn installed() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let path = node_only_path();
        let packed = run_ok(
            Command::new("bash")
                .arg(repo().join("npm/build.sh"))
                .args(["--binary", BIN])
                .env("PATH", &path)
                .env_remove("STICKY_CLUSTER_BINARY"),
            "bash npm/build.sh --binary BIN",
        );
        let tarballs: Vec<String> = String::from_utf8(packed.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(
            tarballs.len(),
            2,
            "build.sh names two tarballs: {tarballs:?}"
        );
        let dir = scratch("npm-install");
        for file in SEED_FILES {
            let to = dir.join(file);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(repo().join("examples/seed").join(file), &to).unwrap();
        }
        for file in ["sio-adapter-worker.js", "plain-app.js", "seed-api-app.js"] {
            std::fs::copy(common::tests_dir().join("node").join(file), dir.join(file)).unwrap();
        }
        // The example reads ./cert/def-secured.{key,crt}: a throwaway self-signed pair.
        std::fs::create_dir_all(dir.join("cert")).unwrap();
        run_ok(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args([
                    "-keyout",
                    "cert/def-secured.key",
                    "-out",
                    "cert/def-secured.crt",
                ])
                .args(["-subj", "/CN=localhost", "-addext"])
                .arg("subjectAltName=DNS:localhost,IP:127.0.0.1")
                .current_dir(&dir),
            "openssl (apt-get install openssl)",
        );
        run_ok(
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
                .args(&tarballs)
                .current_dir(&dir)
                .env("PATH", &path),
            "npm install of the packed tarballs",
        );
        dir
    })
}

/// A process started from the install dir with a node-only PATH, output to files.
struct Proc {
    child: Option<Child>,
    dir: PathBuf,
}

impl Proc {
    fn spawn(program: &str, args: &[&str], env: &[(&str, String)]) -> Self {
        Self::spawn_in(installed(), program, args, env)
    }

    fn spawn_in(cwd: &Path, program: &str, args: &[&str], env: &[(&str, String)]) -> Self {
        let dir = scratch("npm-proc");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(cwd)
            .env("PATH", node_only_path())
            .env("XDG_STATE_HOME", &dir)
            .env("NO_COLOR", "1")
            .env_remove("STICKY_CLUSTER_BINARY")
            .env_remove("STICKY_CLUSTER_IPC")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        Self {
            child: Some(child),
            dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn out(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    fn logs(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.out("stdout"),
            self.out("stderr")
        )
    }

    fn wait_stderr(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.out("stderr").contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within {timeout:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit within {timeout:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let tree = descendants(child.id());
            common::stop(child, Duration::from_secs(10));
            for pid in tree {
                if alive(pid) {
                    common::kill("KILL", pid);
                }
            }
        }
    }
}

/// Starts `start(proxy_port)` on `n` free ports and waits for "proxy listening" in its
/// `stream`; when another process took one of the ports meanwhile, starts again on others.
fn on_free_ports(n: usize, stream: &str, start: impl Fn(u16) -> Proc) -> (Proc, u16) {
    for _ in 0..3 {
        let mut ports = free_ports(n);
        let proxy = ports.first;
        ports.release();
        let mut p = start(proxy);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if p.out(stream).contains("proxy listening") {
                return (p, proxy);
            }
            let exited = p.child.as_mut().unwrap().try_wait().unwrap().is_some();
            if exited || Instant::now() > deadline {
                assert!(
                    p.logs().contains("already in use"),
                    "no \"proxy listening\"\n{}",
                    p.logs()
                );
                eprintln!("a port was taken; starting again on others");
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("three runs of free ports were taken before the proxy bound them");
}

/// Every process below `root` now (children, grandchildren, ...).
fn descendants(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        if let Some(ppid) = rest.split(' ').nth(1).and_then(|p| p.parse().ok()) {
            parents.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

fn assert_all_gone(pids: &[u32], logs: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| alive(p)) {
        if Instant::now() > deadline {
            let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
            for &pid in &left {
                common::kill("KILL", pid);
            }
            panic!("processes left behind: {left:?}\n{}", logs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The seed's example, started as its README says (`node bin/www`), with the ports moved off
/// 443/8000 through the package's environment overrides.
fn start_seed(cwd: &Path) -> (Proc, u16) {
    on_free_ports(1 + 2 * cpu_count(), "stderr", |proxy| {
        Proc::spawn_in(
            cwd,
            "node",
            &["bin/www"],
            &[
                ("STICKY_CLUSTER_PROXY_PORT", proxy.to_string()),
                ("STICKY_CLUSTER_WORKER_PORT", (proxy + 1).to_string()),
            ],
        )
    })
}

/// Login, `/me` sticky, socket.io behind the seed's passport.socketio check (polling, then
/// WebSocket), a worker killed with SIGKILL and respawned; SIGTERM to the master leaves no
/// process.
/// A Node script's run against the seed example, and the seed's logs, for a failed assertion.
fn seed_report(run: &NodeRun, seed: &Proc) -> String {
    format!(
        "node {}: {}\n{}\n{}\n--- seed ---\n{}",
        run.script,
        run.status,
        run.stdout,
        run.stderr,
        seed.logs()
    )
}

/// The JSON summary a Node script prints as its last line.
fn summary(run: &NodeRun, report: &dyn Fn() -> String) -> Value {
    serde_json::from_str(run.stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no JSON summary ({e})\n{}", report()))
}

#[test]
fn seed_example_runs_through_the_package() {
    let (mut seed, proxy) = start_seed(installed());
    let s = seed_clients_keep_their_sessions(&seed, proxy);
    let report = || format!("{s}\n--- seed ---\n{}", seed.logs());

    let killed = &s["killed"];
    assert_ne!(killed["newPid"], Value::Null, "{}", report());
    assert_ne!(killed["newPid"], killed["pid"], "{}", report());
    assert_eq!(killed["failedDuringRespawn"], 0, "{}", report());
    let back = format!("worker back up worker={}", killed["worker"]);
    seed.wait_stderr(&back, Duration::from_secs(20));

    let tree = descendants(seed.pid());
    assert!(tree.len() > cpu_count(), "binary + workers: {tree:?}");
    // The key reached the binary as a private file, not on its command line.
    let args: Vec<String> = std::fs::read_to_string(format!("/proc/{}/cmdline", tree[0]))
        .unwrap()
        .split('\0')
        .map(str::to_string)
        .collect();
    let flag = |name: &str| {
        let i = args.iter().position(|a| a == name);
        i.map(|i| args[i + 1].clone())
            .unwrap_or_else(|| panic!("no {name} in {args:?}"))
    };
    let key = PathBuf::from(flag("--tls-key"));
    assert_eq!(flag("--worker-cert"), flag("--tls-cert"), "{args:?}");
    assert!(args.iter().any(|a| a == "--worker-tls"), "{args:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key), 0o600, "{}", key.display());
    assert_eq!(mode(key.parent().unwrap()), 0o700, "{}", key.display());
    assert!(!args.iter().any(|a| a.contains("PRIVATE KEY")), "{args:?}");
    common::kill("TERM", seed.pid());
    let status = seed.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", seed.logs());
    assert_all_gone(&tree, || seed.logs());
    assert!(
        !key.parent().unwrap().exists(),
        "the private directory was removed"
    );
}

/// Runs `seed-clients.js` against the seed example and checks that every user stayed on the
/// worker that logged it in: `/me`, and its socket.io connection (polling, then WebSocket)
/// through the passport.socketio check. Returns the summary.
fn seed_clients_keep_their_sessions(seed: &Proc, proxy: u16) -> Value {
    let users = 2 * cpu_count();
    let run = NodeRun::run(
        &common::node_modules(),
        "seed-clients.js",
        &[
            format!("https://127.0.0.1:{proxy}"),
            users.to_string(),
            CLIENT_DEADLINE.as_millis().to_string(),
        ],
        &[],
        CLIENT_DEADLINE + Duration::from_secs(10),
    );
    let report = || seed_report(&run, seed);
    let s = summary(&run, &report);
    assert!(strings(&s["errors"]).is_empty(), "{}", report());
    assert_eq!(s["timedOut"], false, "{}", report());
    let list = s["users"].as_array().unwrap();
    assert_eq!(list.len(), users, "{}", report());
    let mut workers = HashSet::new();
    for u in list {
        workers.insert(u["worker"].as_u64().unwrap());
        for k in 0..5 {
            assert_eq!(u["meStatuses"][k], 200, "{}", report());
            assert_eq!(
                u["meWorkers"][k],
                u["worker"],
                "/me left its worker\n{}",
                report()
            );
            assert_eq!(u["mePids"][k], u["pid"], "{}", report());
        }
        assert_eq!(u["upgraded"], true, "{}", report());
        // The socket (after its polling handshake and upgrade) reached the session's worker.
        let line = format!(
            "[worker {}] join {}",
            u["worker"],
            u["token"].as_str().unwrap()
        );
        wait_until(&line, Duration::from_secs(5), || {
            seed.out("stdout").contains(&line)
        });
    }
    assert_eq!(workers.len(), cpu_count().min(users), "{}", report());
    s
}

/// `npx sticky-cluster --workers 2 -- node app.js` serves through the installed binary, and
/// SIGTERM to npx stops the launcher, the binary and every worker (npx does not pass the
/// signal on: the launcher sees that its parent is gone).
#[test]
fn npx_sticky_cluster_serves_and_sigterm_leaves_nothing() {
    let (mut npx, proxy) = on_free_ports(5, "stderr", |proxy| {
        let (p, w) = (proxy.to_string(), (proxy + 1).to_string());
        let args = [
            "sticky-cluster",
            "--workers",
            "2",
            "--bind",
            "127.0.0.1",
            "--proxy-port",
            &p,
            "--worker-port",
            &w,
            "--delay",
            "0s",
            "--",
            "node",
            "plain-app.js",
        ];
        Proc::spawn("npx", &args, &[])
    });
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], proxy));
    let mut seen = HashSet::new();
    for _ in 0..4 {
        let r = common::request(addr, "GET", "/", &[], b"").unwrap();
        assert_eq!(r.status, 200, "{}", npx.logs());
        seen.insert(r.text());
    }
    assert_eq!(seen.len(), 2, "both workers answer: {seen:?}");

    let tree = descendants(npx.pid());
    assert!(tree.len() >= 4, "launcher, binary, 2 workers: {tree:?}");
    common::kill("TERM", npx.pid());
    npx.wait_exit(Duration::from_secs(20));
    assert_all_gone(&tree, || npx.logs());
}

/// The launcher ends as the binary ends: its exit code after a SIGTERM it forwarded, and the
/// binary's own death by SIGKILL re-raised.
#[test]
fn launcher_mirrors_the_binary_exit() {
    use std::os::unix::process::ExitStatusExt;
    for (signal_to, expect_signal) in [("launcher", None), ("binary", Some(9))] {
        let (mut launcher, _) = on_free_ports(3, "stderr", |proxy| {
            let (p, w) = (proxy.to_string(), (proxy + 1).to_string());
            Proc::spawn(
                "node",
                &[
                    "node_modules/.bin/sticky-cluster",
                    "--workers",
                    "1",
                    "--bind",
                    "127.0.0.1",
                    "--proxy-port",
                    &p,
                    "--worker-port",
                    &w,
                    "--delay",
                    "0s",
                ],
                &[],
            )
        });
        let tree = descendants(launcher.pid());
        if signal_to == "launcher" {
            common::kill("TERM", launcher.pid());
        } else {
            common::kill("KILL", tree[0]);
        }
        let status = launcher.wait_exit(Duration::from_secs(20));
        match expect_signal {
            None => assert_eq!(status.code(), Some(0), "{}", launcher.logs()),
            Some(sig) => assert_eq!(status.signal(), Some(sig), "{}", launcher.logs()),
        }
        assert_all_gone(&tree, || launcher.logs());
    }
}

/// The seed API's master side: `workerListener` gets `process.send` messages from every
/// worker (and the bus carries worker-to-worker pings, and reconnects after a cut), `logger` gets the binary's log lines,
/// and the private directory (the listener socket) is gone after SIGTERM.
#[test]
fn seed_api_brings_messages_and_logs_to_the_master() {
    let (mut app, _) = on_free_ports(5, "stdout", |proxy| {
        Proc::spawn(
            "node",
            &["seed-api-app.js"],
            &[
                ("STICKY_CLUSTER_PROXY_PORT", proxy.to_string()),
                ("STICKY_CLUSTER_WORKER_PORT", (proxy + 1).to_string()),
            ],
        )
    });
    let stdout_has = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !app.out("stdout").contains(needle) {
            assert!(Instant::now() < deadline, "no {needle:?}\n{}", app.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    stdout_has("LOGGER info proxy listening on http://0.0.0.0:");
    for id in 0..2 {
        stdout_has(&format!("LISTENER {id} {{\"hello\":{id},\"pid\":"));
        stdout_has(&format!("LISTENER {id} {{\"reconnected\":{id}}}"));
        let other = 1 - id;
        stdout_has(&format!(
            "LISTENER {id} {{\"heardPingFrom\":{other},\"me\":{id}}}"
        ));
    }
    let binary = descendants(app.pid())[0];
    let cmdline = std::fs::read_to_string(format!("/proc/{binary}/cmdline")).unwrap();
    let socket = cmdline
        .split(['\0', ' ', '\''])
        .find(|a| a.ends_with("/messages.sock"))
        .unwrap_or_else(|| panic!("no listener socket in {cmdline:?}"))
        .to_string();
    let private = Path::new(&socket).parent().unwrap().to_path_buf();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&private).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{}", private.display());
    common::kill("TERM", app.pid());
    assert_eq!(
        app.wait_exit(Duration::from_secs(20)).code(),
        Some(0),
        "{}",
        app.logs()
    );
    assert!(!private.exists(), "{} left behind", private.display());
}

fn node_eval(code: &str) -> (Option<i32>, String) {
    let out = Command::new("node")
        .args(["-e", code])
        .current_dir(installed())
        .env("PATH", node_only_path())
        .env_remove("STICKY_CLUSTER_BINARY")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// No platform package, and seed options the Rust proxy cannot run: one line each, non-zero.
#[test]
fn missing_binary_and_js_only_options_are_one_line_errors() {
    let alone = scratch("npm-no-platform");
    let copy = Command::new("cp")
        .arg("-R")
        .arg(installed().join("node_modules/@sticky-cluster/node"))
        .arg(&alone)
        .status()
        .unwrap();
    assert!(copy.success());
    let out = Command::new("node")
        .arg(alone.join("node/bin/sticky-cluster.js"))
        .arg("--version")
        .env_remove("STICKY_CLUSTER_BINARY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("@sticky-cluster/"),
        "names the platform package: {err}"
    );
    assert!(err.contains("STICKY_CLUSTER_BINARY"), "{err}");

    let cases = [
        ("ipfilter: function () {}", "ipfilter"),
        ("session: { hash: function () {} }", "'header:NAME'"),
        ("ssl: { secure: true, certs: {} }", "ssl.certs.key"),
        ("workers: -1", "workers"),
        ("proxy_port: 'x'", "proxy_port"),
    ];
    for (option, needle) in cases {
        let code = format!("require('@sticky-cluster/node')({{ {option} }}, function () {{}})");
        let (status, err) = node_eval(&code);
        assert_eq!(status, Some(2), "{option}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{option}: {err}");
        assert!(err.contains(needle), "{option}: {err}");
    }
}

/// The adapter with the official socket.io client: clients on every worker; io.emit (binary
/// included), rooms, fetchSockets, serverSideEmit acks, disconnectSockets across workers; a
/// worker killed while a serverSideEmit waits for it is forgotten at once.
#[test]
fn socketio_adapter_works_across_workers() {
    const WORKERS: usize = 3;
    const CLIENTS: usize = 6;
    let binary = installed().join("node_modules/@sticky-cluster/linux-x64-gnu/bin/sticky-cluster");
    let cluster = common::TestCluster::start(common::Options {
        program: if binary.exists() {
            binary
        } else {
            PathBuf::from(BIN)
        },
        workers: WORKERS,
        command: vec![
            "node".into(),
            installed()
                .join("sio-adapter-worker.js")
                .display()
                .to_string(),
        ],
        ..Default::default()
    });
    let run = NodeRun::run(
        &common::node_modules(),
        "sio-adapter-clients.js",
        &[
            cluster.url(),
            CLIENTS.to_string(),
            WORKERS.to_string(),
            CLIENT_DEADLINE.as_millis().to_string(),
        ],
        &[],
        CLIENT_DEADLINE + Duration::from_secs(10),
    );
    let s = run.summary(&cluster);
    let report = || run.report(&cluster);
    assert!(strings(&s["errors"]).is_empty(), "{}", report());
    assert_eq!(
        s["allGot"],
        CLIENTS,
        "io.emit reached every client\n{}",
        report()
    );
    assert_eq!(
        s["binaryOk"],
        CLIENTS,
        "binary payload intact\n{}",
        report()
    );
    assert_eq!(s["roomGot"], serde_json::json!([0, 1, 2]), "{}", report());
    assert_eq!(
        s["count"].as_array().map(Vec::len),
        Some(CLIENTS),
        "fetchSockets counts every socket\n{}",
        report()
    );
    let asker = s["workers"][0].as_u64().unwrap();
    let expected: Vec<u64> = (0..WORKERS as u64).filter(|&w| w != asker).collect();
    let mut others: Vec<u64> = s["askAll"]["replies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    others.sort_unstable();
    assert_eq!(others, expected, "every other worker acked\n{}", report());
    assert_eq!(s["askAll"]["error"], Value::Null, "{}", report());
    let kicked = s["kicked"].as_array().unwrap();
    assert_eq!(kicked.len(), CLIENTS / 2, "{}", report());
    assert!(
        kicked.iter().all(|k| k["reason"] == "io server disconnect"),
        "{}",
        report()
    );

    let killed = &s["killed"];
    assert_eq!(killed["answer"]["error"], Value::Null, "{}", report());
    assert_eq!(
        killed["answer"]["replies"].as_array().map(Vec::len),
        Some(WORKERS - 2),
        "the live third worker answered\n{}",
        report()
    );
    assert!(
        killed["msAfterKill"].as_u64().unwrap() < 2000,
        "the dead worker was forgotten at once, not after the adapter's 5 s timeout\n{}",
        report()
    );
}

/// Chromium (playwright-core) on the seed's example through the package: its socket.io client
/// starts with long-polling, upgrades to WebSocket, and stays on the worker holding its session.
#[test]
fn a_browser_polls_upgrades_and_stays_on_its_worker() {
    const DEADLINE: Duration = Duration::from_secs(45);
    let (seed, proxy) = start_seed(installed());
    let token = format!("browser-{}", std::process::id());
    let run = common::browser_run(
        "seed-browser",
        "seed-browser.js",
        &[
            format!("https://127.0.0.1:{proxy}"),
            token.clone(),
            DEADLINE.as_millis().to_string(),
        ],
        DEADLINE,
    );
    let report = || seed_report(&run, &seed);
    let s = summary(&run, &report);
    assert!(strings(&s["errors"]).is_empty(), "{}", report());
    assert_eq!(s["login"]["status"], 200, "{}", report());
    assert_eq!(s["first"], "polling", "{}", report());
    assert_eq!(s["after"], "websocket", "{}", report());
    assert!(s["polls"].as_u64().unwrap() >= 2, "{}", report());
    assert!(
        strings(&s["websockets"])
            .iter()
            .any(|u| u.contains("/socket.io/?") && u.contains("transport=websocket")),
        "{}",
        report()
    );
    assert_eq!(s["me"]["status"], 200, "{}", report());
    assert_eq!(s["me"]["worker"], s["login"]["worker"], "{}", report());
    assert_eq!(s["ok"], true, "{}", report());
    // The WebSocket, after the upgrade, reached the worker that holds the session.
    let line = format!("[worker {}] join {token}", s["login"]["worker"]);
    wait_until(&line, Duration::from_secs(5), || {
        seed.out("stdout").contains(&line)
    });
}

/// The TypeScript declarations (main package, bus, socket.io adapter) accept the README's
/// uses and refuse what the package refuses (`tests/types/check.ts`, `tsc --noEmit`).
#[test]
fn typescript_declarations_check() {
    let dir = common::npm_ci(&common::tests_dir().join("types"));
    let tsc = dir.join("node_modules/typescript/bin/tsc");
    let out = Command::new("node")
        .arg(&tsc)
        .args(["-p", "."])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tsc found errors:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The README's faster setup: the seed example with TLS at the proxy only (`http.createServer`,
/// `ssl.workers: 'plain'`, express trusting the loopback proxy for its secure cookie) keeps
/// every session and socket on its worker, and the proxy no longer speaks TLS to the workers.
#[test]
fn seed_example_with_tls_at_the_proxy_only() {
    let dir = installed().join("plain");
    let files = [
        "bin/www",
        "worker.js",
        "socket.io.js",
        "passport.js",
        "cert/def-secured.key",
        "cert/def-secured.crt",
    ];
    for file in files {
        std::fs::create_dir_all(dir.join(file).parent().unwrap()).unwrap();
        std::fs::copy(installed().join(file), dir.join(file)).unwrap();
    }
    let edit = |file: &str, from: &str, to: &str| {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches(from).count(), 1, "{file}: {from:?}");
        std::fs::write(&path, text.replace(from, to)).unwrap();
    };
    edit(
        "bin/www",
        "https.createServer(optionsHTTPs, app)",
        "require('http').createServer(app)",
    );
    edit(
        "bin/www",
        "certs: optionsHTTPs\n",
        "certs: optionsHTTPs, workers: 'plain'\n",
    );
    edit(
        "worker.js",
        "var app = express();\n",
        "var app = express();\napp.set('trust proxy', 'loopback');\n",
    );
    let (seed, proxy) = start_seed(&dir);
    let binary = descendants(seed.pid())[0];
    let cmdline = std::fs::read_to_string(format!("/proc/{binary}/cmdline")).unwrap();
    assert!(cmdline.contains("--tls-cert"), "{cmdline:?}");
    assert!(!cmdline.contains("--worker-tls"), "{cmdline:?}");
    seed_clients_keep_their_sessions(&seed, proxy);
}

/// The packed manifests: the main package pins every platform package to its own version
/// (Cargo's), has no install script, and the installed platform package says where it runs.
#[test]
fn packed_manifests_pin_the_platforms_and_run_nothing_at_install() {
    let read = |pkg: &str| -> Value {
        let path = installed()
            .join("node_modules/@sticky-cluster")
            .join(pkg)
            .join("package.json");
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    };
    let main = read("node");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(main["version"], version);
    let pins = main["optionalDependencies"].as_object().unwrap();
    let names: Vec<&str> = pins.keys().map(String::as_str).collect();
    assert_eq!(names.len(), 6, "six platform packages: {names:?}");
    for platform in [
        "linux-x64-gnu",
        "linux-arm64-gnu",
        "linux-x64-musl",
        "darwin-arm64",
        "darwin-x64",
        "win32-x64",
    ] {
        assert_eq!(
            pins[&format!("@sticky-cluster/{platform}")],
            version,
            "{platform}"
        );
    }
    for hook in ["preinstall", "install", "postinstall", "prepare"] {
        assert!(main["scripts"][hook].is_null(), "an install script: {hook}");
    }
    assert_eq!(main["bin"]["sticky-cluster"], "bin/sticky-cluster.js");
    let platform = pins
        .keys()
        .map(|k| k.trim_start_matches("@sticky-cluster/"))
        .find(|p| {
            installed()
                .join("node_modules/@sticky-cluster")
                .join(p)
                .exists()
        })
        .expect("this machine's platform package is installed");
    let manifest = read(platform);
    assert_eq!(manifest["version"], version);
    // npm's names: darwin for macOS, win32 for Windows, linux.
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        "windows" => "win32",
        other => other,
    };
    assert_eq!(manifest["os"], serde_json::json!([os]));
    assert!(
        manifest["cpu"].as_array().is_some_and(|c| c.len() == 1),
        "{manifest}"
    );
    if os == "linux" {
        assert!(
            manifest["libc"].as_array().is_some_and(|c| c.len() == 1),
            "{manifest}"
        );
    }
    assert!(manifest["scripts"].is_null(), "{manifest}");
}
