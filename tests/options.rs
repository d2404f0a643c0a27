//! The options that other files do not exercise: IPv6 bind, custom cookie names, the
//! affinity secret from the environment, timeouts, --delay, --threads, --debug, --session-ttl.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Options, TestCluster};

fn opts(workers: usize, args: &[&str]) -> Options {
    Options {
        workers,
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn bind_ipv6_loopback() {
    // The later --bind overrides the harness's 127.0.0.1.
    let c = TestCluster::start(Options {
        wait_ready: false,
        ..opts(1, &["--bind", "::1"])
    });
    let addr: SocketAddr = format!("[::1]:{}", c.proxy.port()).parse().unwrap();
    common::wait_until("the proxy on ::1", Duration::from_secs(30), || {
        TcpStream::connect(addr).is_ok()
    });
    let r = common::request(addr, "GET", "/whoami", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["forwarded_for"], "::1");
    assert!(TcpStream::connect(c.proxy).is_err(), "not on 127.0.0.1");
}

#[test]
fn custom_session_and_affinity_cookie_names() {
    let c = TestCluster::start(opts(
        2,
        &[
            "--session-cookie",
            "sid",
            "--affinity-cookie",
            "pin",
            "--debug",
        ],
    ));
    let (r, json) = c.whoami(&[]);
    let set = r.set_cookies();
    assert!(
        set.contains_key("pin") && !set.contains_key("sticky.worker"),
        "{set:?}"
    );
    assert_eq!(
        r.header("x-sticky-worker"),
        Some(json["worker"].to_string().as_str()),
        "--debug"
    );
    // The session cookie `sid` is a key: a fresh one is pinned where it first went.
    let (_, first) = c.whoami(&[("Cookie", "sid=abc")]);
    for _ in 0..4 {
        assert_eq!(
            c.whoami(&[("Cookie", "sid=abc")]).1["worker"],
            first["worker"]
        );
    }
}

#[test]
fn affinity_secret_from_the_environment_is_shared_by_two_proxies() {
    let token = |dir: &str| {
        let c = TestCluster::start(Options {
            env: vec![(
                "STICKY_CLUSTER_SECRET".into(),
                "a shared secret of enough bytes".into(),
            )],
            secret_dir: Some(common::scratch(dir)),
            ..opts(2, &[])
        });
        let (r, json) = c.whoami(&[]);
        (
            r.set_cookies()["sticky.worker"].clone(),
            json["worker"].clone(),
        )
    };
    let (t1, w1) = token("secret-a");
    let (t2, w2) = token("secret-b");
    assert_eq!(w1, w2, "round-robin starts at worker 0 in both");
    assert_eq!(t1, t2, "same secret, same token, different secret files");
}

#[test]
fn response_timeout_gives_504() {
    let script = common::tests_dir().join("node/worker.js");
    let c = TestCluster::start(Options {
        command: vec!["node".into(), script.display().to_string()],
        ..opts(1, &["--response-timeout", "300ms"])
    });
    c.wait_log("1/1 up", Duration::from_secs(30));
    let r = c.get("/slow?ms=3000", &[]);
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"], "gateway_timeout");
    assert_eq!(c.get("/whoami", &[]).status, 200);
}

/// Seconds since midnight of the first log line containing `needle` (the log's UTC stamp).
fn logged_at(c: &TestCluster, needle: &str) -> f64 {
    let stderr = c.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in the log\n{}", c.logs()));
    let time = line
        .split_whitespace()
        .next()
        .and_then(|stamp| stamp.split_once('T'))
        .map(|(_, t)| t.trim_end_matches('Z'))
        .unwrap_or_else(|| panic!("no time stamp in {line:?}"));
    let parts: Vec<f64> = time.split(':').map(|p| p.parse().unwrap()).collect();
    parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
}

#[test]
fn delay_holds_the_proxy_port_closed_until_it_passes() {
    let c = TestCluster::start(Options {
        wait_ready: false,
        ..opts(1, &["--delay", "1500ms"])
    });
    c.wait_listening(Duration::from_secs(30));
    // From the log's own clock, whatever the speed of this machine: the worker was up
    // first, and the proxy listened only once the delay had passed since the start.
    let start = logged_at(&c, "starting workers");
    let up = logged_at(&c, "1/1 up");
    let listening = logged_at(&c, "proxy listening on");
    assert!(
        up < listening,
        "the worker was up before the proxy listened"
    );
    assert!(
        listening - start >= 1.5,
        "listened {:.3} s after the start, not after the 1.5 s delay\n{}",
        listening - start,
        c.logs()
    );
}

/// The names of the threads of process `pid`.
fn threads(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| {
            let comm = t.unwrap().path().join("comm");
            std::fs::read_to_string(comm).unwrap().trim().to_string()
        })
        .collect()
}

#[test]
fn threads_sets_the_proxy_runtime_threads_and_one_means_one() {
    let c = TestCluster::start(opts(2, &["--threads", "1"]));
    for _ in 0..10 {
        assert_eq!(c.get("/whoami", &[]).status, 200);
    }
    assert_eq!(threads(c.pid()).len(), 1, "{:?}", threads(c.pid()));
    drop(c);
    // The count is observed, not assumed: three runtime threads beside the main one.
    let c = TestCluster::start(opts(2, &["--threads", "3"]));
    assert_eq!(c.get("/whoami", &[]).status, 200);
    let names = threads(c.pid());
    assert_eq!(
        names.iter().filter(|n| n.starts_with("tokio")).count(),
        3,
        "{names:?}"
    );
}

#[test]
fn session_ttl_forgets_idle_keys() {
    let c = TestCluster::start(opts(2, &["--session-ttl", "1s", "--no-affinity-cookie"]));
    assert_eq!(c.whoami(&[("Cookie", "connect.sid=k")]).1["sticky"], "new");
    assert_eq!(c.whoami(&[("Cookie", "connect.sid=k")]).1["sticky"], "kept");
    std::thread::sleep(Duration::from_millis(1300)); // the TTL itself is what is tested
    assert_eq!(
        c.whoami(&[("Cookie", "connect.sid=k")]).1["sticky"],
        "new",
        "forgotten"
    );
}

#[test]
fn kill_timeout_kills_a_worker_that_ignores_sigterm() {
    // `trap '' TERM` is inherited across exec: python's http.server then ignores SIGTERM.
    let mut c = TestCluster::start(Options {
        command: vec![
            "sh".into(),
            "-c".into(),
            "trap '' TERM; exec python3 -m http.server \"$PORT\" --bind 127.0.0.1".into(),
        ],
        ..opts(1, &["--kill-timeout", "500ms"])
    });
    assert_eq!(c.get("/", &[]).status, 200);
    let started = Instant::now();
    c.signal("TERM");
    assert_eq!(c.wait_exit(Duration::from_secs(20)).code(), Some(0));
    assert!(
        c.stderr().contains("ignored SIGTERM; sending SIGKILL"),
        "{}",
        c.logs()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn grace_timeout_bounds_the_wait_for_in_flight_requests() {
    let script = common::tests_dir().join("node/worker.js");
    let mut c = TestCluster::start(Options {
        command: vec!["node".into(), script.display().to_string()],
        ..opts(1, &["--grace-timeout", "500ms", "--debug"])
    });
    c.wait_log("1/1 up", Duration::from_secs(30));
    let proxy = c.proxy;
    let slow = std::thread::spawn(move || common::request(proxy, "GET", "/slow?ms=8000", &[], b""));
    c.wait_log("uri=/slow", Duration::from_secs(10)); // routed: in flight
    let started = Instant::now();
    c.signal("TERM");
    assert_eq!(c.wait_exit(Duration::from_secs(20)).code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "did not wait for the 8 s request"
    );
    assert!(c.stderr().contains("grace time over"));
    let _ = slow.join();
}

/// The `[default: ...]` of every flag line in `--help`, by flag name.
fn help_defaults() -> std::collections::BTreeMap<String, String> {
    let out = std::process::Command::new(common::BIN)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "--help exits 0");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut found = std::collections::BTreeMap::new();
    let mut flag = None;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        // A flag's line starts with `-x, --name` or `--name`; its help may run onto more lines.
        let name = match words.as_slice() {
            [short, long, ..] if short.len() == 3 && short.ends_with(',') => Some(long),
            [long, ..] => Some(long),
            [] => None,
        };
        if let Some(name) = name.filter(|w| w.starts_with("--")) {
            flag = Some(name.trim_end_matches(',').to_string());
        }
        if let (Some(flag), Some(start)) = (&flag, line.find("[default: ")) {
            let rest = &line[start + "[default: ".len()..];
            let value = &rest[..rest.find(']').expect("a closed [default: ...]")];
            found.insert(flag.clone(), value.to_string());
        }
    }
    found
}

#[test]
fn help_shows_the_defaults_of_the_code() {
    use sticky_cluster::internal::settings::*;
    let shown = help_defaults();
    let duration = |flag: &str| {
        parse_duration("--help", &shown[flag])
            .unwrap_or_else(|e| panic!("{flag} shows {:?}: {e}", shown[flag]))
    };
    let number = |flag: &str| -> u64 {
        shown[flag]
            .parse()
            .unwrap_or_else(|e| panic!("{flag} shows {:?}: {e}", shown[flag]))
    };
    for (flag, want) in [
        ("--delay", DEFAULT_DELAY),
        ("--session-ttl", DEFAULT_SESSION_TTL),
        ("--ready-timeout", DEFAULT_READY_TIMEOUT),
        ("--grace-timeout", DEFAULT_GRACE_TIMEOUT),
        ("--kill-timeout", DEFAULT_KILL_TIMEOUT),
        ("--health-interval", DEFAULT_HEALTH_INTERVAL),
        ("--health-timeout", DEFAULT_HEALTH_TIMEOUT),
        ("--hold-timeout", DEFAULT_HOLD_TIMEOUT),
        ("--drain-timeout", DEFAULT_DRAIN_TIMEOUT),
        ("--drain-idle", DEFAULT_DRAIN_IDLE),
        ("--connect-timeout", DEFAULT_CONNECT_TIMEOUT),
        ("--response-timeout", DEFAULT_RESPONSE_TIMEOUT),
        ("--header-timeout", DEFAULT_HEADER_TIMEOUT),
        ("--body-timeout", DEFAULT_BODY_TIMEOUT),
        ("--ws-idle-timeout", DEFAULT_WS_IDLE_TIMEOUT),
        ("--shared-table-timeout", DEFAULT_SHARED_TABLE_TIMEOUT),
        ("--dns-interval", DEFAULT_DNS_INTERVAL),
    ] {
        assert_eq!(duration(flag), want, "{flag}");
    }
    for (flag, want) in [
        ("--worker-port", u64::from(DEFAULT_WORKER_PORT)),
        ("--session-max", DEFAULT_SESSION_MAX as u64),
        ("--health-rise", u64::from(DEFAULT_HEALTH_RISE)),
        ("--health-fall", u64::from(DEFAULT_HEALTH_FALL)),
        ("--max-header-size", DEFAULT_MAX_HEADER_SIZE as u64),
        ("--max-connections", DEFAULT_MAX_CONNECTIONS as u64),
        ("--max-pending", DEFAULT_MAX_PENDING as u64),
        ("--dns-max-workers", DEFAULT_DNS_MAX_WORKERS as u64),
    ] {
        assert_eq!(number(flag), want, "{flag}");
    }
    let ports = format!("{DEFAULT_PROXY_PORT}, or {DEFAULT_TLS_PROXY_PORT} with --tls-cert");
    for (flag, want) in [
        ("--proxy-port", ports),
        ("--bind", DEFAULT_BIND.to_string()),
        ("--session-cookie", DEFAULT_SESSION_COOKIE.to_string()),
        ("--affinity-cookie", DEFAULT_AFFINITY_COOKIE.to_string()),
        ("--on-worker-down", DEFAULT_ON_WORKER_DOWN.to_string()),
        // Computed or described rather than a constant.
        ("--workers", "CPU count".to_string()),
        ("--threads", "CPU count".to_string()),
        ("--session-key", "cookie:<session cookie>".to_string()),
        ("--health-path", "a TCP connect".to_string()),
        (
            "--affinity-secret",
            "generated once, kept in --secret-file".to_string(),
        ),
        (
            "--secret-file",
            "$XDG_STATE_HOME/sticky-cluster/affinity.key".to_string(),
        ),
    ] {
        assert_eq!(shown[flag], want, "{flag}");
    }
    // Every default shown is checked above: a new flag with a default needs a line here.
    assert_eq!(shown.len(), 17 + 8 + 11, "{shown:#?}");
}
