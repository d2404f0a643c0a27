//! The admin listener against the real binary and real workers: traffic, a killed worker
//! and a reload, then `/metrics` read with a real Prometheus text parser (the Python
//! `prometheus_client` package) and every number checked against what happened; refusals,
//! evictions and upstream errors; the token; the controls and the command-line client.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A cluster with `--admin` on a free loopback port.
struct Admin {
    cluster: TestCluster,
    addr: SocketAddr,
    /// The cluster's `XDG_RUNTIME_DIR`, where it writes its runtime file.
    runtime_dir: std::path::PathBuf,
}

impl Admin {
    fn start(workers: usize, args: &[&str]) -> Self {
        let mut ports = free_ports(1);
        let addr = SocketAddr::from(([127, 0, 0, 1], ports.first));
        ports.release();
        let mut all = vec!["--admin".to_string(), addr.to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        let runtime_dir = scratch("runtime");
        let cluster = TestCluster::start(Options {
            workers,
            args: all,
            env: vec![("XDG_RUNTIME_DIR".into(), runtime_dir.display().to_string())],
            ..Default::default()
        });
        wait_until("the admin listener", Duration::from_secs(10), || {
            std::net::TcpStream::connect(addr).is_ok()
        });
        Self {
            cluster,
            addr,
            runtime_dir,
        }
    }

    fn call(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        request(self.addr, method, path, headers, b"")
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.cluster.logs()))
    }

    fn status(&self) -> Value {
        let r = self.call("GET", "/status", &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    fn metrics(&self) -> Metrics {
        let r = self.call("GET", "/metrics", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        Metrics::parse(&r.text())
    }
}

/// Samples as the Prometheus parser read them.
struct Metrics {
    types: HashMap<String, String>,
    samples: Vec<(String, HashMap<String, String>, f64)>,
}

impl Metrics {
    fn parse(text: &str) -> Self {
        let mut child = Command::new("python3")
            .arg(tests_dir().join("prometheus/parse.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the Prometheus parser refused /metrics (pip install prometheus_client?): {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let types = v["types"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, t)| (k.clone(), t.as_str().unwrap().to_string()))
            .collect();
        let samples = v["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let labels = s["labels"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, l)| (k.clone(), l.as_str().unwrap().to_string()))
                    .collect();
                (
                    s["name"].as_str().unwrap().to_string(),
                    labels,
                    s["value"].as_f64().unwrap(),
                )
            })
            .collect();
        Self { types, samples }
    }

    /// The one sample `name` with exactly these labels (panics when absent).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: HashMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map(|s| s.2)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    }

    fn worker(&self, name: &str, worker: u16) -> f64 {
        self.get(name, &[("worker", &worker.to_string())])
    }
}

/// What the test saw from the client side.
#[derive(Default, Debug)]
struct Seen {
    by_worker: HashMap<u64, u64>,
    sticky: HashMap<String, u64>,
    cookies: std::collections::HashSet<String>,
}

impl Seen {
    /// One `/whoami`, tallied; returns (worker, connect.sid cookie header to reuse).
    fn whoami(&mut self, cluster: &TestCluster, cookie: Option<&str>) -> (u64, String) {
        let headers: Vec<(&str, &str)> = cookie.map(|c| ("cookie", c)).into_iter().collect();
        let (r, json) = cluster.whoami(&headers);
        let worker = json["worker"].as_u64().unwrap();
        *self.by_worker.entry(worker).or_default() += 1;
        *self
            .sticky
            .entry(json["sticky"].as_str().unwrap().to_string())
            .or_default() += 1;
        if let Some(sid) = r.set_cookies().get("connect.sid") {
            self.cookies.insert(sid.clone());
        }
        let sid = r
            .set_cookies()
            .get("connect.sid")
            .map(|s| format!("connect.sid={s}"))
            .or_else(|| cookie.map(str::to_string))
            .unwrap_or_default();
        (worker, sid)
    }

    fn sticky(&self, outcome: &str) -> f64 {
        self.sticky.get(outcome).copied().unwrap_or(0) as f64
    }

    fn served(&self, worker: u64) -> f64 {
        self.by_worker.get(&worker).copied().unwrap_or(0) as f64
    }
}

#[test]
fn metrics_follow_traffic_a_killed_worker_and_a_reload() {
    let admin = Admin::start(2, &["--health-interval", "1h"]);
    let cluster = &admin.cluster;
    let mut seen = Seen::default();
    // Six new clients, spread by round-robin; each gets a session cookie from its worker.
    let mut pinned: HashMap<u64, String> = HashMap::new();
    for _ in 0..6 {
        let (worker, cookie) = seen.whoami(cluster, None);
        pinned.insert(worker, cookie);
    }
    assert_eq!(pinned.len(), 2, "both workers got new clients");
    // Returning clients stay.
    for _ in 0..3 {
        for w in [0, 1] {
            let (worker, _) = seen.whoami(cluster, Some(&pinned[&w]));
            assert_eq!(worker, w);
        }
    }
    // Worker 1 is killed: its client moves to worker 0, and the supervisor restarts it.
    let pid1 = admin.status()["workers"][1]["pid"].as_u64().unwrap() as u32;
    kill("KILL", pid1);
    let (worker, _) = seen.whoami(cluster, Some(&pinned[&1]));
    assert_eq!(worker, 0, "the client of the killed worker moved");
    wait_until("worker 1 restarted", Duration::from_secs(20), || {
        let s = admin.status();
        s["workers"][1]["state"] == "up" && s["workers"][1]["restarts"] == 1
    });
    let status = admin.status();
    assert!(
        status["workers"][1]["last_exit"]
            .as_str()
            .is_some_and(|e| e.contains("SIGKILL")),
        "{status}"
    );
    // A rolling restart through the admin listener replaces both workers.
    let r = admin.call("POST", "/reload", &[]);
    assert_eq!(r.status, 202, "{}", r.text());
    wait_until("both workers replaced", Duration::from_secs(30), || {
        admin
            .metrics()
            .worker("sticky_cluster_worker_replacements_total", 0)
            == 1.0
            && admin
                .metrics()
                .worker("sticky_cluster_worker_replacements_total", 1)
                == 1.0
    });
    let pids: Vec<_> = admin.status()["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_u64().unwrap())
        .collect();
    assert!(!pids.contains(&u64::from(pid1)));
    // After the reload, pinned clients are still kept (worker 1's moved client on 0).
    seen.whoami(cluster, Some(&pinned[&0]));
    seen.whoami(cluster, Some(&pinned[&1]));
    wait_until("client connections closed", Duration::from_secs(10), || {
        admin
            .metrics()
            .get("sticky_cluster_connections", &[("protocol", "http1")])
            == 0.0
    });

    let m = admin.metrics();
    let errors = |w: u16| -> f64 {
        ["unreachable", "broken", "invalid", "timeout"]
            .iter()
            .map(|r| {
                m.get(
                    "sticky_cluster_upstream_errors_total",
                    &[("worker", &w.to_string()), ("reason", r)],
                )
            })
            .sum()
    };
    for w in [0u16, 1] {
        let served = seen.served(u64::from(w));
        let code = |c: &str| {
            m.get(
                "sticky_cluster_requests_total",
                &[("worker", &w.to_string()), ("code", c)],
            )
        };
        assert_eq!(code("2xx"), served, "worker {w} 2xx");
        for c in ["1xx", "3xx", "4xx", "5xx"] {
            assert_eq!(code(c), 0.0, "worker {w} {c}");
        }
        assert_eq!(
            m.worker("sticky_cluster_request_duration_seconds_count", w),
            served,
            "one duration per response"
        );
        assert_eq!(
            m.get(
                "sticky_cluster_request_duration_seconds_bucket",
                &[("worker", &w.to_string()), ("le", "+Inf")]
            ),
            served
        );
        assert!(m.worker("sticky_cluster_request_duration_seconds_sum", w) > 0.0);
        assert_eq!(m.worker("sticky_cluster_worker_up", w), 1.0);
        assert_eq!(m.worker("sticky_cluster_worker_in_flight", w), 0.0);
        assert_eq!(m.worker("sticky_cluster_worker_replacements_total", w), 1.0);
    }
    assert_eq!(errors(0), 0.0, "worker 0 never failed");
    assert_eq!(m.worker("sticky_cluster_worker_restarts_total", 0), 0.0);
    assert_eq!(m.worker("sticky_cluster_worker_restarts_total", 1), 1.0);
    // Routing: what the workers were told (X-Sticky), plus the decision of each request
    // that failed on the killed worker and was then routed again (kept first, then moved:
    // counted as a resend to another worker). When the supervisor saw the death first, the
    // client was moved at once and nothing was resent.
    let decision = |d: &str| m.get("sticky_cluster_routing_total", &[("decision", d)]);
    let resends =
        |w: &str, to: &str| m.get("sticky_cluster_resends_total", &[("worker", w), ("to", to)]);
    assert_eq!(decision("new"), seen.sticky("new"));
    assert_eq!(seen.sticky("moved"), 1.0, "{seen:?}");
    assert_eq!(decision("moved"), 1.0);
    assert_eq!(
        decision("kept"),
        seen.sticky("kept") + resends("1", "other")
    );
    assert_eq!(resends("0", "other") + resends("0", "same"), 0.0);
    // Every failure on the killed worker was followed by a resend (none reached the
    // client): the request sent as it died, and once more if its port still took a
    // connection while the process was being torn down (sent again to the same worker).
    assert_eq!(errors(1), resends("1", "same") + resends("1", "other"));
    assert!(resends("1", "other") <= 1.0, "{}", resends("1", "other"));
    assert_eq!(decision("held"), 0.0);
    // Sessions: every cookie a worker set was learnt, and the table holds each once.
    let learned = |s: &str| m.get("sticky_cluster_sessions_learned_total", &[("source", s)]);
    assert_eq!(learned("set_cookie"), seen.cookies.len() as f64);
    assert_eq!(learned("engineio"), 0.0);
    assert_eq!(learned("bus"), 0.0);
    assert_eq!(
        m.get("sticky_cluster_sessions", &[]),
        seen.cookies.len() as f64
    );
    assert_eq!(m.get("sticky_cluster_sessions_evicted_total", &[]), 0.0);
    for r in ["ip_filter", "limit", "bad_request"] {
        assert_eq!(m.get("sticky_cluster_refused_total", &[("reason", r)]), 0.0);
    }
    assert!(m.get("process_resident_memory_bytes", &[]) > 1e6);
    assert!(m.get("process_cpu_seconds_total", &[]) > 0.0);
    assert_eq!(
        m.types["sticky_cluster_request_duration_seconds"],
        "histogram"
    );
    assert_eq!(m.types["sticky_cluster_requests"], "counter");
}

#[test]
fn refusals_evictions_and_upstream_errors_are_counted() {
    let mut dead = free_ports(1);
    let dead_addr = format!("127.0.0.1:{}", dead.first);
    dead.release();
    // Two upstreams: a live demo worker (another cluster's) and an address nobody listens
    // on; health checks come too late to notice.
    let live = TestCluster::demo(1, &[]);
    let live_addr = format!("127.0.0.1:{}", live.worker_port);
    // With upstreams and no command, nothing is spawned (`--workers` is not used).
    let admin = Admin::start(
        1,
        &[
            "--upstream",
            &live_addr,
            "--health-interval",
            "1h",
            "--session-max",
            "2",
            "--trust-proxy",
            "127.0.0.1/32",
            "--deny",
            "10.9.9.9",
            "--upstream",
            &dead_addr,
        ],
    );
    let cluster = &admin.cluster;
    for _ in 0..2 {
        let r = cluster.get("/whoami", &[("x-forwarded-for", "10.9.9.9")]);
        assert_eq!(r.status, 403);
    }
    let mut seen = Seen::default();
    for _ in 0..5 {
        seen.whoami(cluster, None);
    }
    let m = admin.metrics();
    assert_eq!(
        m.get("sticky_cluster_refused_total", &[("reason", "ip_filter")]),
        2.0
    );
    assert_eq!(
        m.get(
            "sticky_cluster_upstream_errors_total",
            &[("worker", "1"), ("reason", "unreachable")]
        ),
        1.0,
        "round-robin reached the dead upstream once, then it was out"
    );
    assert_eq!(m.worker("sticky_cluster_worker_up", 1), 0.0);
    assert_eq!(m.worker("sticky_cluster_worker_up", 0), 1.0);
    assert_eq!(
        m.get("sticky_cluster_routing_total", &[("decision", "new")]),
        6.0,
        "five requests, one of them routed twice"
    );
    assert_eq!(
        m.get(
            "sticky_cluster_sessions_learned_total",
            &[("source", "set_cookie")]
        ),
        5.0
    );
    assert_eq!(m.get("sticky_cluster_sessions", &[]), 2.0, "the cap");
    assert_eq!(m.get("sticky_cluster_sessions_evicted_total", &[]), 3.0);
    assert_eq!(seen.served(0), 5.0, "the live upstream served all");
    assert_eq!(
        m.get(
            "sticky_cluster_requests_total",
            &[("worker", "0"), ("code", "2xx")]
        ),
        5.0
    );
}

#[test]
fn admin_off_loopback_needs_a_token() {
    let (_, last) = exit_code_2(
        &["--workers", "1", "--admin", "0.0.0.0:9", "--delay", "0s"],
        Duration::from_secs(20),
    );
    assert!(last.contains("--admin-token"), "{last}");
    let (_, last) = exit_code_2(
        &[
            "--workers",
            "1",
            "--proxy-port",
            "9",
            "--admin",
            "127.0.0.1:9",
        ],
        Duration::from_secs(20),
    );
    assert!(last.contains("proxy's own address"), "{last}");
}

/// Without a token, a request that names the listener by a host name is refused: a web
/// page whose domain was re-pointed at 127.0.0.1 (DNS rebinding) sends its own name, and
/// its Origin then matches its Host. Found by an outside attack; it drained a worker.
#[test]
fn a_rebound_host_name_cannot_steer_or_read_the_admin_listener() {
    let admin = Admin::start(1, &[]);
    let rebound = "rebind.evil.example";
    let drain = format!(
        "POST /workers/0/drain HTTP/1.1\r\nHost: {rebound}\r\nOrigin: http://{rebound}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let r = common::raw_request(admin.addr, drain.as_bytes()).unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    let read = format!("GET /status HTTP/1.1\r\nHost: {rebound}\r\nConnection: close\r\n\r\n");
    let r = common::raw_request(admin.addr, read.as_bytes()).unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(admin.status()["workers"][0]["state"], "up", "not drained");
    let local = "GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let r = common::raw_request(admin.addr, local.as_bytes()).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Admin connections are capped, so slow admin clients cannot take the descriptors the
/// proxy needs: past the cap a connection is closed at once, and the proxy port serves.
#[test]
fn admin_connections_are_capped() {
    use std::io::{Read, Write};
    let admin = Admin::start(1, &[]);
    let held: Vec<_> = (0..64)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(admin.addr).unwrap();
            s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    let mut extra = std::net::TcpStream::connect(admin.addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    extra
        .read_to_end(&mut got)
        .expect("closed at once, not left waiting");
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(admin.cluster.get("/whoami", &[]).status, 200);
    drop(held);
    wait_until(
        "the admin listener serves again",
        Duration::from_secs(10),
        || common::request(admin.addr, "GET", "/status", &[], b"").is_ok_and(|r| r.status == 200),
    );
}

#[test]
fn a_token_is_required_once_set() {
    let admin = Admin::start(1, &["--admin-token", "letmein"]);
    assert_eq!(admin.call("GET", "/metrics", &[]).status, 401);
    assert_eq!(
        admin
            .call("GET", "/status", &[("authorization", "Bearer nope")])
            .status,
        401
    );
    assert_eq!(admin.call("POST", "/reload", &[]).status, 401);
    let r = admin.call("GET", "/status", &[("authorization", "Bearer letmein")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["workers"].as_array().unwrap().len(), 1);
}

/// Runs `sticky-cluster ARGS` (a control command) to its end.
fn control(args: &[&str]) -> (Option<i32>, String, String) {
    let (status, out, err) = run_to_exit(args, Duration::from_secs(30));
    (status.code(), out, err)
}

#[test]
fn drain_status_and_sessions_from_the_command_line() {
    let admin = Admin::start(2, &["--health-interval", "1h"]);
    let cluster = &admin.cluster;
    let addr = admin.addr.to_string();
    let mut seen = Seen::default();
    let mut pinned: HashMap<u64, String> = HashMap::new();
    for _ in 0..4 {
        let (worker, cookie) = seen.whoami(cluster, None);
        pinned.insert(worker, cookie);
    }
    let (code, out, err) = control(&["drain", "1", "--admin", &addr]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("worker 1 drained"), "{out}");
    for _ in 0..6 {
        let (worker, _) = seen.whoami(cluster, None);
        assert_eq!(worker, 0, "no new session goes to a drained worker");
    }
    let (worker, _) = seen.whoami(cluster, Some(&pinned[&1]));
    assert_eq!(worker, 1, "a pinned session stays on the drained worker");
    let (code, out, err) = control(&["status", "--admin", &addr]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("1 ") && l.contains("up (drained)")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("0 ") && l.contains("up ")),
        "{out}"
    );
    // Which worker holds a session key.
    let sid = pinned[&1].trim_start_matches("connect.sid=");
    let r = admin.call("GET", &format!("/sessions/{sid}"), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["worker"], 1);
    assert_eq!(admin.call("GET", "/sessions/unknown-key", &[]).status, 404);
    let (code, out, _) = control(&["session", sid, "--admin", &addr]);
    assert_eq!(code, Some(0));
    assert!(out.contains("worker 1"), "{out}");
    // Undrained, it takes new sessions again.
    let (code, _, err) = control(&["undrain", "1", "--admin", &addr]);
    assert_eq!(code, Some(0), "{err}");
    let workers: std::collections::HashSet<u64> =
        (0..4).map(|_| seen.whoami(cluster, None).0).collect();
    assert!(workers.contains(&1), "{workers:?}");
    assert_eq!(
        admin.call("POST", "/workers/7/drain", &[]).status,
        404,
        "no such worker"
    );
    // The runtime file lets `status` find the instance from its proxy port alone.
    let port = cluster.proxy.port().to_string();
    let (code, out, err) = control_in(&admin.runtime_dir, &["status", "--proxy-port", &port]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("SESSIONS"), "{out}");
}

/// A control command with `XDG_RUNTIME_DIR` set to `runtime_dir`.
fn control_in(runtime_dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("XDG_RUNTIME_DIR", runtime_dir)
        .env_remove("STICKY_CLUSTER_ADMIN_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn control_commands_fail_when_nothing_runs() {
    let mut port = free_ports(1);
    let addr = format!("127.0.0.1:{}", port.first);
    port.release();
    let (code, _, err) = control(&["status", "--admin", &addr]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot reach the admin listener"), "{err}");
    let dir = scratch("no-runtime");
    let (code, _, err) = control_in(&dir, &["reload", "--proxy-port", "1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no running instance found"), "{err}");
    let (code, _, err) = control(&["drain"]);
    assert_eq!(code, Some(2), "{err}");
}

#[test]
fn the_access_log_has_one_line_per_request() {
    let dir = scratch("access-log");
    let file = dir.join("access.log");
    let cluster = TestCluster::demo(
        2,
        &[
            "--access-log",
            &file.display().to_string(),
            "--trust-proxy",
            "127.0.0.1/32",
            "--deny",
            "10.9.9.9",
            "--max-header-size",
            "4096",
            "--body-timeout",
            "300ms",
        ],
    );
    let (r, first) = cluster.whoami(&[]);
    let cookie = format!("connect.sid={}", r.set_cookies()["connect.sid"]);
    let (_, second) = cluster.whoami(&[("cookie", &cookie)]);
    let refused = cluster.get("/secret?a=1", &[("x-forwarded-for", "10.9.9.9")]);
    assert_eq!(refused.status, 403);
    let lines = || -> Vec<String> {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    // The proxy's refusals of requests no worker gets, on both HTTP/1.1 paths: each is
    // answered, then logged with what is known of its request line.
    let refusals: [(&str, &[u8], u16); 8] = [
        ("two Hosts", b"GET /two-hosts HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (
            "a transfer coding",
            b"POST /coded HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
        ),
        ("an unfinished head too large", &[b'x'; 5000], 431),
        (
            "a small body that pauses",
            b"POST /paused HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123",
            408,
        ),
        (
            "a chunked body that pauses",
            b"POST /paused-chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n0123\r\n",
            408,
        ),
        // Heads hyper's parser refuses itself: logged without a request line.
        ("a space in the target", b"GET /sp ace HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (
            "a coding that does not end in chunked",
            b"POST /gz HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            400,
        ),
        (
            "CONNECT",
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            405,
        ),
    ];
    for (n, (what, raw, status)) in refusals.into_iter().enumerate() {
        let mut s = std::net::TcpStream::connect(cluster.proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(raw).unwrap();
        let r = read_response(&mut std::io::BufReader::new(s)).unwrap();
        assert_eq!(r.status, status, "{what}: {}", r.text());
        // A head hyper refuses is logged when its connection ends, which may be after the
        // client has its answer: each line is waited for, so the lines keep this order.
        wait_until(what, Duration::from_secs(10), || lines().len() > 3 + n);
    }
    wait_until("eleven access-log lines", Duration::from_secs(10), || {
        lines().len() >= 11
    });
    let lines = lines();
    assert_eq!(lines.len(), 11, "{lines:?}");
    let fields: Vec<Vec<&str>> = lines.iter().map(|l| l.split(' ').collect()).collect();
    for f in &fields {
        assert_eq!(f.len(), 8, "{f:?}");
        assert!(
            f[0].ends_with('Z') && f[0].contains('T'),
            "RFC 3339 time: {f:?}"
        );
        assert!(f[7].ends_with("ms"), "{f:?}");
    }
    let w1 = first["worker"].to_string();
    let w2 = second["worker"].to_string();
    assert_eq!(
        fields[0][1..7],
        ["127.0.0.1", "GET", "/whoami", "200", w1.as_str(), "new"]
    );
    assert_eq!(
        fields[1][1..7],
        ["127.0.0.1", "GET", "/whoami", "200", w2.as_str(), "kept"]
    );
    assert_eq!(
        fields[2][1..7],
        ["10.9.9.9", "GET", "/secret?a=1", "403", "-", "-"],
        "the proxy's own answer, for the client a trusted proxy named"
    );
    let refused: Vec<&[&str]> = fields[3..].iter().map(|f| &f[1..7]).collect();
    assert_eq!(
        refused,
        [
            ["127.0.0.1", "GET", "/two-hosts", "400", "-", "-"],
            ["127.0.0.1", "POST", "/coded", "501", "-", "-"],
            ["127.0.0.1", "-", "-", "431", "-", "-"],
            ["127.0.0.1", "POST", "/paused", "408", "-", "-"],
            ["127.0.0.1", "POST", "/paused-chunked", "408", "-", "-"],
            ["127.0.0.1", "-", "-", "400", "-", "-"],
            ["127.0.0.1", "-", "-", "400", "-", "-"],
            ["127.0.0.1", "CONNECT", "example.com:443", "405", "-", "-"],
        ]
    );
    // A paused body's line says how long the proxy waited for it (the body timeout, 300ms).
    for f in &fields[6..8] {
        let ms: f64 = f[7].trim_end_matches("ms").parse().unwrap();
        assert!(ms >= 300.0, "{f:?}");
    }
}

#[test]
fn tls_handshakes_and_open_tunnels_are_counted() {
    // TLS: one handshake that completes (curl) and one that fails (plain HTTP on the port).
    let dir = scratch("admin-tls");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let (cert_arg, key_arg) = (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    );
    let admin = Admin::start(
        1,
        &[
            "--tls-cert",
            &cert_arg,
            "--tls-key",
            &key_arg,
            "--health-interval",
            "1h",
        ],
    );
    let url = format!("https://localhost:{}/whoami", admin.cluster.proxy.port());
    let resolve = format!("localhost:{}:127.0.0.1", admin.cluster.proxy.port());
    let out = Command::new("curl")
        .args([
            "-sk",
            "--http1.1",
            "--max-time",
            "10",
            "--resolve",
            &resolve,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ])
        .output()
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    // The harness's readiness probe (a bare connect) was a failed handshake too: count from
    // once it is in.
    let failures = || {
        admin
            .metrics()
            .get("sticky_cluster_tls_handshake_failures_total", &[])
    };
    wait_until(
        "the probe's handshake counted",
        Duration::from_secs(10),
        || failures() == 1.0,
    );
    let plain = request(admin.cluster.proxy, "GET", "/", &[], b"");
    assert!(
        plain.is_err() || plain.is_ok_and(|r| r.status != 200),
        "plain HTTP is no TLS"
    );
    wait_until(
        "the failed handshake counted",
        Duration::from_secs(10),
        || failures() == 2.0,
    );
    let m = admin.metrics();
    assert_eq!(m.get("sticky_cluster_tls_handshakes_total", &[]), 1.0);
    assert_eq!(
        m.get(
            "sticky_cluster_requests_total",
            &[("worker", "0"), ("code", "2xx")]
        ),
        1.0,
        "the one request over TLS"
    );
    drop(admin);

    // WebSocket: an open tunnel counts until it closes.
    let admin = Admin::start(1, &["--health-interval", "1h"]);
    let proxy = admin.cluster.proxy;
    let req =
        tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{proxy}/ws"))
            .unwrap();
    let stream = std::net::TcpStream::connect(proxy).unwrap();
    let (mut ws, _) = tungstenite::client(req, stream).unwrap_or_else(|_| panic!("handshake"));
    let tunnels = || {
        admin
            .metrics()
            .get("sticky_cluster_connections", &[("protocol", "websocket")])
    };
    wait_until("one open tunnel", Duration::from_secs(10), || {
        tunnels() == 1.0
    });
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
    drop(ws);
    wait_until("no open tunnel", Duration::from_secs(10), || {
        tunnels() == 0.0
    });
}

#[test]
fn a_request_held_for_its_restarting_worker_is_counted_held() {
    // As tests/failover.rs does: once the marker exists, a (re)started worker takes 1.5 s
    // before it listens, so the request below surely finds its worker down.
    let dir = scratch("admin-hold");
    let marker = dir.join("slow-start");
    let script = format!(
        "if [ -e {} ]; then sleep 1.5; fi; exec node {}",
        marker.display(),
        tests_dir().join("node/worker.js").display()
    );
    let mut ports = free_ports(1);
    let addr = SocketAddr::from(([127, 0, 0, 1], ports.first));
    ports.release();
    let c = TestCluster::start(Options {
        workers: 2,
        command: vec!["sh".into(), "-c".into(), script],
        args: [
            "--on-worker-down",
            "hold",
            "--hold-timeout",
            "10s",
            "--health-interval",
            "1h",
            "--admin",
            &addr.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ..Default::default()
    });
    c.wait_log("2/2 up", Duration::from_secs(30));
    let (first, json) = c.whoami(&[("Cookie", "connect.sid=held")]);
    let home = json["worker"].as_u64().unwrap() as u16;
    std::fs::write(&marker, "").unwrap();
    kill("KILL", json["pid"].as_u64().unwrap() as u32);
    c.wait_log("worker died", Duration::from_secs(10));
    let (_, again) = c.whoami(&[("Cookie", &first.cookie_header())]);
    assert_eq!(again["worker"].as_u64(), Some(u64::from(home)));
    let text = request(addr, "GET", "/metrics", &[], b"").unwrap().text();
    let m = Metrics::parse(&text);
    let decision = |d: &str| m.get("sticky_cluster_routing_total", &[("decision", d)]);
    assert_eq!(decision("held"), 1.0, "the request that waited");
    assert_eq!(decision("new"), 1.0, "the first request");
    assert_eq!(decision("kept"), 0.0);
    assert_eq!(decision("moved"), 0.0);
    assert_eq!(m.worker("sticky_cluster_worker_restarts_total", home), 1.0);
}
