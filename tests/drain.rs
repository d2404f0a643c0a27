//! Rolling restarts that log nobody out (issue 18): the seed's session stack (express,
//! express-session's MemoryStore, passport; `tests/node/session-app.js`) behind the real
//! binary, users logged in before a SIGHUP, a bounded load of their requests during the roll,
//! and what they see afterwards in each of the three modes:
//! - today's (no flag): the replacement has an empty store: logged out;
//! - `--drain-sessions`: the old process keeps serving them while they stay active, and
//!   stops once they were idle for `--drain-idle`;
//! - hand-off (`--drain-sessions` + the `@sticky-cluster/node/session` wrapper): their
//!   sessions move to the replacement and the old process exits at once.
//!
//! The same for the Rust chat example (`examples/chat.rs`: tower-sessions' MemoryStore in a
//! `sticky_cluster::sessions::HandoffStore`), whose binary a plain `cargo test` builds.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Options, TestCluster};
use serde_json::Value;

const WORKERS: usize = 2;
const USERS: usize = 6;
/// The load during a roll: at most this many requests, for at most this long.
const LOAD_MAX: usize = 3000;
const LOAD_TIME: Duration = Duration::from_secs(40);

/// The cluster of session-app workers with `args`, store wrapped for hand-off when `handoff`.
fn cluster(args: &[&str], handoff: bool) -> TestCluster {
    let seed = common::npm_ci(&common::tests_dir().join("../examples/seed"));
    let script = common::tests_dir().join("node/session-app.js");
    let c = TestCluster::start(Options {
        workers: WORKERS,
        command: vec!["node".into(), script.display().to_string()],
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![
            (
                "NODE_PATH".into(),
                seed.join("node_modules").display().to_string(),
            ),
            ("HANDOFF".into(), if handoff { "1" } else { "0" }.into()),
        ],
        ..Default::default()
    });
    c.wait_log(&format!("{WORKERS}/{WORKERS} up"), Duration::from_secs(30));
    c
}

/// A logged-in user: the cookie to send and the pid that logged them in.
#[derive(Debug, Clone)]
struct User {
    cookie: String,
    pid: u64,
}

fn log_in(c: &TestCluster, name: &str) -> User {
    let body = format!("username={name}&password=x");
    let r = c.request(
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "login of {name}: {}\n{}", r.text(), c.logs());
    let cookie = r.cookie_header();
    assert!(cookie.contains("connect.sid="), "{cookie}");
    let me = me(c, &cookie);
    assert_eq!(me.0, 200, "{name} is logged in: {}", me.1);
    User {
        cookie,
        pid: me.1["pid"].as_u64().unwrap(),
    }
}

/// GET /me: status and body.
fn me(c: &TestCluster, cookie: &str) -> (u16, Value) {
    let r = c.get("/me", &[("Cookie", cookie)]);
    (r.status, r.json())
}

/// Requests of every user in turn until stopped (bounded in count and time); returns the
/// failures: transport errors and every status other than 200.
fn load(c: &TestCluster, users: &[User], stop: Arc<AtomicBool>) -> JoinHandle<Vec<String>> {
    let proxy = c.proxy;
    let users = users.to_vec();
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut failures = Vec::new();
        for i in 0..LOAD_MAX {
            if stop.load(Ordering::Relaxed) || started.elapsed() > LOAD_TIME {
                break;
            }
            let u = &users[i % users.len()];
            match common::request(proxy, "GET", "/me", &[("Cookie", &u.cookie)], b"") {
                Ok(r) if r.status == 200 => {}
                Ok(r) => failures.push(format!("{} {}", r.status, r.text())),
                Err(e) => failures.push(e.to_string()),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        failures
    })
}

fn log_in_all(c: &TestCluster) -> Vec<User> {
    let users: Vec<User> = (0..USERS).map(|i| log_in(c, &format!("user{i}"))).collect();
    let mut pids: Vec<u64> = users.iter().map(|u| u.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), WORKERS, "users spread over both workers");
    users
}

/// `/status` and `/metrics` show each worker's retiring process, its pid and the live
/// sessions pinned to it (the users it logged in, all active).
fn shows_the_retiring_processes(c: &TestCluster, admin: std::net::SocketAddr, users: &[User]) {
    let get = |path: &str| {
        let r = common::request(admin, "GET", path, &[], b"").unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r
    };
    let status = get("/status").json();
    let metrics = get("/metrics").text();
    for worker in status["workers"].as_array().unwrap() {
        let retiring = &worker["retiring"];
        let pid = retiring["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("{worker}\n{}", c.logs()));
        let held = users.iter().filter(|u| u.pid == pid).count();
        assert_eq!(
            held,
            USERS / WORKERS,
            "the old pid {pid} logged users in: {worker}"
        );
        assert_eq!(
            retiring["live_sessions"].as_u64(),
            Some(held as u64),
            "{worker}"
        );
        assert_ne!(
            worker["pid"].as_u64(),
            Some(pid),
            "the current pid is the replacement's"
        );
        let sample = format!(
            "sticky_cluster_worker_retiring_sessions{{worker=\"{}\",pid=\"{pid}\"}} {held}",
            worker["id"]
        );
        assert!(metrics.contains(&sample), "{sample} in\n{metrics}");
    }
    let addr = admin.to_string();
    let (code, table, err) =
        common::run_to_exit(&["status", "--admin", &addr], Duration::from_secs(10));
    assert_eq!(code.code(), Some(0), "{err}");
    let shown = format!("retiring: {} sessions", USERS / WORKERS);
    assert_eq!(table.matches(&shown).count(), WORKERS, "{table}");
}

/// Waits until the old process of every worker stopped.
fn wait_old_stopped(c: &TestCluster, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while c.count_log("retiring worker stopped") < WORKERS {
        assert!(
            Instant::now() < deadline,
            "old processes still run\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive(pid: u64) -> bool {
    common::alive(pid as u32)
}

#[test]
fn handoff_keeps_users_logged_in_and_the_old_processes_exit_at_once() {
    let c = cluster(&["--drain-sessions", "--drain-timeout", "60s"], true);
    let users = log_in_all(&c);
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(&c, &users, stop.clone());
    let rolled = Instant::now();
    c.signal("HUP");
    c.wait_log("rolling restart done", Duration::from_secs(30));
    wait_old_stopped(&c, Duration::from_secs(30));
    let took = rolled.elapsed();
    stop.store(true, Ordering::Relaxed);
    let failures = loader.join().unwrap();
    assert!(failures.is_empty(), "{failures:?}\n{}", c.logs());
    assert_eq!(c.count_log("reason=HandedOff"), WORKERS, "{}", c.logs());
    assert!(
        took < Duration::from_secs(20),
        "old processes exit once their sessions are adopted, not at the drain time ({took:?})"
    );
    for u in &users {
        assert!(!alive(u.pid), "old process {} is gone", u.pid);
        let (status, body) = me(&c, &u.cookie);
        assert_eq!(status, 200, "still logged in on the replacement: {body}");
        assert_ne!(body["pid"].as_u64(), Some(u.pid), "{body}");
        assert_eq!(
            body["sticky"], "kept",
            "adopted sessions are re-pinned: {body}"
        );
    }
}

#[test]
fn drain_sessions_keeps_active_users_on_the_old_process_until_idle() {
    let mut ports = common::free_ports(1);
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], ports.first));
    ports.release();
    let admin_arg = admin.to_string();
    let c = cluster(
        &[
            "--drain-sessions",
            "--drain-idle",
            "2s",
            "--drain-timeout",
            "60s",
            "--admin",
            &admin_arg,
        ],
        false,
    );
    let users = log_in_all(&c);
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(&c, &users, stop.clone());
    c.signal("HUP");
    c.wait_log("rolling restart done", Duration::from_secs(30));
    // Active for longer than --drain-idle after the roll: still served by the old processes.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.count_log("retiring worker stopped"), 0, "{}", c.logs());
    for u in &users {
        let (status, body) = me(&c, &u.cookie);
        assert_eq!(status, 200, "logged in while active: {body}");
        assert_eq!(
            body["pid"].as_u64(),
            Some(u.pid),
            "served by its old process: {body}"
        );
    }
    shows_the_retiring_processes(&c, admin, &users);
    let newcomer = log_in(&c, "newcomer");
    assert!(
        users.iter().all(|u| u.pid != newcomer.pid),
        "new sessions go to the replacements"
    );
    stop.store(true, Ordering::Relaxed);
    let failures = loader.join().unwrap();
    assert!(failures.is_empty(), "{failures:?}\n{}", c.logs());
    // Idle now: the old processes stop after --drain-idle.
    wait_old_stopped(&c, Duration::from_secs(15));
    assert_eq!(c.count_log("reason=Idle"), WORKERS, "{}", c.logs());
    for u in &users {
        assert!(!alive(u.pid), "old process {} is gone", u.pid);
        let (status, body) = me(&c, &u.cookie);
        assert_eq!(status, 401, "its session ended with its process: {body}");
        assert_eq!(body["sticky"], "moved", "the app is told: {body}");
    }
}

#[test]
fn without_drain_sessions_a_roll_logs_everyone_out() {
    let c = cluster(&[], true);
    let users = log_in_all(&c);
    c.signal("HUP");
    c.wait_log("rolling restart done", Duration::from_secs(30));
    for u in &users {
        let (status, body) = me(&c, &u.cookie);
        assert_eq!(
            status, 401,
            "today's roll: a fresh process, an empty store: {body}"
        );
        assert_ne!(body["pid"].as_u64(), Some(u.pid), "{body}");
    }
}

/// `(old_pid, new_pid)` of every replacement logged so far.
fn replacements(c: &TestCluster) -> Vec<(u64, u64)> {
    let field = |line: &str, name: &str| -> Option<u64> {
        let rest = line.split(&format!(" {name}=")).nth(1)?;
        rest.split(' ').next()?.parse().ok()
    };
    c.stderr()
        .lines()
        .filter(|l| l.contains("the old worker retires"))
        .filter_map(|l| Some((field(l, "old_pid")?, field(l, "new_pid")?)))
        .collect()
}

/// A session-draining cluster (no hand-off, sessions idle for a minute before they end)
/// with every user logged in, just after a rolling restart: each slot has a retiring
/// process.
fn rolled_while_draining() -> (TestCluster, Vec<User>) {
    let c = cluster(
        &[
            "--drain-sessions",
            "--drain-idle",
            "60s",
            "--drain-timeout",
            "60s",
        ],
        false,
    );
    let users = log_in_all(&c);
    c.signal("HUP");
    c.wait_log("rolling restart done", Duration::from_secs(30));
    (c, users)
}

#[test]
fn crashes_during_a_drain_move_only_what_they_must_and_sigterm_stops_both_generations() {
    let (mut c, users) = rolled_while_draining();
    let pairs = replacements(&c);
    assert_eq!(pairs.len(), WORKERS, "{}", c.logs());
    // The new process of the first slot crashes: it is restarted, and the old one keeps
    // serving its sessions meanwhile.
    let (old_a, new_a) = pairs[0];
    common::kill("KILL", new_a as u32);
    c.wait_log("worker back up", Duration::from_secs(20));
    for u in users.iter().filter(|u| u.pid == old_a) {
        let (status, body) = me(&c, &u.cookie);
        assert_eq!(status, 200, "the old process still serves: {body}");
        assert_eq!(body["pid"].as_u64(), Some(old_a), "{body}");
    }
    // The old process of the second slot crashes: its sessions move to the replacement.
    let (old_b, new_b) = pairs[1];
    common::kill("KILL", old_b as u32);
    c.wait_log("retiring worker died", Duration::from_secs(10));
    for u in users.iter().filter(|u| u.pid == old_b) {
        let (status, body) = me(&c, &u.cookie);
        assert_eq!(status, 401, "the session died with its process: {body}");
        assert_eq!(body["pid"].as_u64(), Some(new_b), "{body}");
        assert_eq!(body["sticky"], "moved", "{body}");
    }
    // SIGTERM during the drain stops both generations and exits 0.
    let running: Vec<u32> = replacements(&c)
        .iter()
        .flat_map(|&(o, n)| [o as u32, n as u32])
        .filter(|&p| common::alive(p))
        .collect();
    assert!(running.contains(&(old_a as u32)), "{running:?}");
    c.signal("TERM");
    let status = c.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", c.logs());
    for p in running {
        assert!(!common::alive(p), "pid {p} stopped\n{}", c.logs());
    }
}

#[test]
fn a_second_sighup_ends_the_running_drain_before_replacing_again() {
    let (c, users) = rolled_while_draining();
    let first = replacements(&c);
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(&c, &users, stop.clone());
    c.signal("HUP");
    common::wait_until("second roll", Duration::from_secs(30), || {
        c.count_log("rolling restart done") == 2
    });
    stop.store(true, Ordering::Relaxed);
    let failures = loader.join().unwrap();
    // The first generation's sessions lose their process: they are logged out (moved),
    // but no request fails.
    let transport: Vec<_> = failures.iter().filter(|f| !f.starts_with("401")).collect();
    assert!(transport.is_empty(), "{transport:?}\n{}", c.logs());
    assert_eq!(c.count_log("reason=Hurried"), WORKERS, "{}", c.logs());
    for (old, _) in first {
        assert!(!common::alive(old as u32), "first generation {old} stopped");
    }
    let second = replacements(&c);
    assert_eq!(second.len(), 2 * WORKERS);
    for &(old, new) in &second[WORKERS..] {
        assert!(common::alive(old as u32), "second generation {old} retires");
        assert!(common::alive(new as u32), "third generation {new} serves");
    }
}

/// The chat example running as a cluster of `WORKERS` with `args`.
fn chat_cluster(args: &[&str]) -> TestCluster {
    let bin = std::path::Path::new(common::BIN)
        .parent()
        .unwrap()
        .join("examples/chat");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --example chat` (a plain `cargo test` does)",
        bin.display()
    );
    let c = TestCluster::start(Options {
        program: bin,
        workers: WORKERS,
        args: args.iter().map(|s| s.to_string()).collect(),
        wait_ready: false,
        ..Default::default()
    });
    c.wait_log(&format!("{WORKERS}/{WORKERS} up"), Duration::from_secs(30));
    c.wait_log("proxy listening", Duration::from_secs(30));
    c
}

/// Logs `name` in to the chat example (`303` to `/chat` with the session cookie).
fn chat_log_in(c: &TestCluster, name: &str) -> User {
    let body = format!("username={name}&password=x");
    let r = c.request(
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 303, "login of {name}: {}\n{}", r.text(), c.logs());
    let cookie = r.cookie_header();
    assert!(cookie.contains("connect.sid="), "{cookie}");
    let (status, body) = me(c, &cookie);
    assert_eq!(status, 200, "{name} is logged in: {body}");
    User {
        cookie,
        pid: body["pid"].as_u64().unwrap(),
    }
}

fn chat_users(c: &TestCluster) -> Vec<User> {
    let users: Vec<User> = (0..USERS)
        .map(|i| chat_log_in(c, &format!("user{i}")))
        .collect();
    let mut pids: Vec<u64> = users.iter().map(|u| u.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), WORKERS, "users spread over both workers");
    users
}

#[test]
fn chat_example_hands_its_sessions_off_and_nobody_is_logged_out() {
    let c = chat_cluster(&["--drain-sessions", "--drain-timeout", "60s"]);
    let users = chat_users(&c);
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(&c, &users, stop.clone());
    c.signal("HUP");
    c.wait_log("rolling restart done", Duration::from_secs(30));
    wait_old_stopped(&c, Duration::from_secs(30));
    stop.store(true, Ordering::Relaxed);
    let failures = loader.join().unwrap();
    assert!(failures.is_empty(), "{failures:?}\n{}", c.logs());
    assert_eq!(c.count_log("reason=HandedOff"), WORKERS, "{}", c.logs());
    for u in &users {
        assert!(!alive(u.pid), "old process {} is gone", u.pid);
        let (status, body) = me(&c, &u.cookie);
        assert_eq!(status, 200, "still logged in on the replacement: {body}");
        assert_ne!(body["pid"].as_u64(), Some(u.pid), "{body}");
    }
}

#[test]
fn chat_example_without_drain_sessions_logs_everyone_out() {
    let c = chat_cluster(&[]);
    let users = chat_users(&c);
    c.signal("HUP");
    c.wait_log("rolling restart done", Duration::from_secs(30));
    for u in &users {
        let (status, body) = me(&c, &u.cookie);
        assert_eq!(status, 401, "a fresh process, an empty store: {body}");
    }
}
