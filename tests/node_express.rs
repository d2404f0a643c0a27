//! The seed project's own usage example (Express 4, express-session's default MemoryStore,
//! passport, socket.io 4 with a session check), `examples/node-express/app.js`, behind the
//! proxy: a session lives in the one worker that logged its user in, so a page answered 200
//! and a socket.io connection accepted prove that every request of that user reached that
//! worker. The control runs the same clients with stickiness off and must see them fail.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{Options, TestCluster};
use serde_json::Value;

const WORKERS: usize = 4;
const USERS: usize = 20;
const PAGES: usize = 10;
/// The client script's own deadline; the test kills it a little later if it hangs anyway.
const CLIENT_DEADLINE: Duration = Duration::from_secs(30);

/// `examples/node-express`, with its `node_modules` installed (`npm ci` once, under a lock
/// file, as `common::node_modules` does for `tests/node`).
fn example_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node-express");
    let lock = dir.join(".npm-install.lock");
    let mut guard = None;
    for _ in 0..6000 {
        if let Ok(f) = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            guard = Some(f);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(guard.is_some(), "could not take {}", lock.display());
    let ok = dir.join("node_modules/.package-lock.json").exists() || {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status();
        matches!(status, Ok(s) if s.success())
    };
    let _ = std::fs::remove_file(&lock);
    assert!(ok, "npm ci in {} failed", dir.display());
    dir
}

/// Four workers of the example app, every one of them up.
fn express_cluster(extra_args: &[&str]) -> TestCluster {
    let app = example_dir().join("app.js");
    let cluster = TestCluster::start(Options {
        workers: WORKERS,
        args: extra_args.iter().map(|s| s.to_string()).collect(),
        command: vec!["node".into(), app.display().to_string()],
        ..Default::default()
    });
    cluster.wait_log(&format!("{WORKERS}/{WORKERS} up"), Duration::from_secs(30));
    cluster
}

/// What one run of `express-clients.js` printed.
struct ClientRun {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl ClientRun {
    /// The JSON summary (the last line of stdout).
    fn summary(&self, cluster: &TestCluster) -> Value {
        let line = self.stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("no JSON summary ({e})\n{}", self.report(cluster)))
    }

    fn report(&self, cluster: &TestCluster) -> String {
        format!(
            "client script: {} after {:?}\n--- client stdout ---\n{}\n--- client stderr ---\n{}\n--- cluster ---\n{}",
            self.status,
            self.elapsed,
            self.stdout,
            self.stderr,
            cluster.logs()
        )
    }
}

/// Runs the client script against the cluster's proxy, bounded in time.
fn run_clients(cluster: &TestCluster) -> ClientRun {
    let node = common::node_modules();
    let dir = common::scratch("express-clients");
    let started = Instant::now();
    let mut child = Command::new("node")
        .arg(node.join("express-clients.js"))
        .args([
            format!("http://{}", cluster.proxy),
            USERS.to_string(),
            PAGES.to_string(),
            CLIENT_DEADLINE.as_millis().to_string(),
        ])
        .current_dir(&node)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node: {e}"));
    let deadline = started + CLIENT_DEADLINE + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    ClientRun {
        status,
        stdout: std::fs::read_to_string(dir.join("stdout")).unwrap_or_default(),
        stderr: std::fs::read_to_string(dir.join("stderr")).unwrap_or_default(),
        elapsed: started.elapsed(),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn count(s: &Value, key: &str) -> u64 {
    s[key]
        .as_u64()
        .unwrap_or_else(|| panic!("summary has no count {key:?}: {s}"))
}

/// Every user stays logged in on every page and every socket.io connection, polling and
/// WebSocket, because each of its requests reaches the worker holding its session.
#[test]
fn express_sessions_stay_on_their_worker() {
    let cluster = express_cluster(&[]);
    let run = run_clients(&cluster);
    let s = run.summary(&cluster);
    let report = || run.report(&cluster);

    let errors = strings(&s["errors"]);
    assert!(
        errors.is_empty(),
        "client errors: {errors:#?}\n{}",
        report()
    );
    assert_eq!(s["timedOut"], false, "{}", report());
    assert_eq!(count(&s, "loginsOk"), USERS as u64, "{}", report());
    assert_eq!(
        count(&s, "pages401"),
        0,
        "a page lost its session\n{}",
        report()
    );
    assert_eq!(count(&s, "pagesOther"), 0, "{}", report());
    assert_eq!(count(&s, "pagesOk"), (USERS * PAGES) as u64, "{}", report());
    assert_eq!(count(&s, "socketsFailed"), 0, "{}", report());
    assert_eq!(count(&s, "socketsOk"), (USERS * 2) as u64, "{}", report());
    assert_eq!(count(&s, "upgraded"), USERS as u64, "{}", report());
    assert_eq!(count(&s, "echoesOk"), (USERS * 4) as u64, "{}", report());
    assert_eq!(
        count(&s, "usersOnSeveralWorkers"),
        0,
        "a user answered by two workers\n{}",
        report()
    );
    assert_eq!(count(&s, "usersWithoutAffinityCookie"), 0, "{}", report());

    // The app, not the network, turned the anonymous clients away.
    assert_eq!(s["anonPage"], 401, "{}", report());
    assert_eq!(count(&s, "anonSocketsAccepted"), 0, "{}", report());
    assert_eq!(count(&s, "anonSocketsRefused"), 2, "{}", report());
    let reasons = strings(&s["anonRefusals"]);
    assert!(
        reasons.iter().all(|r| r == "unauthorized"),
        "anonymous sockets refused for {reasons:?}\n{}",
        report()
    );

    let workers: HashSet<String> = strings(&s["workers"]).into_iter().collect();
    assert!(
        workers.len() >= 3,
        "users spread over only {workers:?}\n{}",
        report()
    );
    assert!(run.status.success(), "{}", report());
}

/// The control: with stickiness off (plain round-robin) the same users are logged out on
/// most pages and their sockets are refused or broken, so the test above can tell.
#[test]
fn express_sessions_break_without_stickiness() {
    let cluster = express_cluster(&["--session-key", "none"]);
    let run = run_clients(&cluster);
    let s = run.summary(&cluster);
    let report = || run.report(&cluster);

    // Logging in works anywhere; keeping the session is what fails.
    assert_eq!(count(&s, "loginsOk"), USERS as u64, "{}", report());
    assert!(
        count(&s, "pages401") > 0,
        "no page lost its session\n{}",
        report()
    );
    assert!(
        count(&s, "socketsFailed") > 0,
        "no socket.io connection failed\n{}",
        report()
    );
    assert!(!run.status.success(), "{}", report());
}
