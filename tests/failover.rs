//! Never drop a session: faults under continuous load (kill -9, rolling restart, SIGTERM),
//! the hold policy, health checks, crash loops, limits and hostile input. Load loops are
//! bounded in count and time.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{kill, node_workers, wait_until, Options, TestCluster};

/// What one load client saw.
#[derive(Debug, Default)]
struct Seen {
    ok: usize,
    failed: Vec<String>,
    /// worker of every answer, in order.
    workers: Vec<u64>,
}

/// `clients` keep-alive clients, each with its own session (pinned by a first request),
/// hammering GET /whoami until `stop` (or 20 000 requests each, or 60 s).
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Seen>>,
    pinned: Arc<Mutex<HashMap<usize, u64>>>,
    /// Answers received so far, by all clients.
    answered: Arc<AtomicUsize>,
}

impl Load {
    fn start(proxy: SocketAddr, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let pinned = Arc::new(Mutex::new(HashMap::new()));
        let answered = Arc::new(AtomicUsize::new(0));
        let threads = (0..clients)
            .map(|i| {
                let stop = stop.clone();
                let pinned = pinned.clone();
                let answered = answered.clone();
                std::thread::spawn(move || client(proxy, i, &stop, &pinned, &answered))
            })
            .collect();
        let load = Self {
            stop,
            threads,
            pinned,
            answered,
        };
        wait_until("every client pinned", Duration::from_secs(20), || {
            load.pinned.lock().unwrap().len() == clients
        });
        load
    }

    /// Waits until the clients got `n` more answers (the load runs, before or after a fault).
    fn wait_answers(&self, n: usize) {
        let target = self.answered.load(Ordering::Relaxed) + n;
        wait_until("the load to run", Duration::from_secs(30), || {
            self.answered.load(Ordering::Relaxed) >= target
        });
    }

    /// Stops the load: every client's pinned worker and what it saw; no request may have failed.
    fn finish(self, c: &TestCluster) -> (HashMap<usize, u64>, Vec<Seen>) {
        let pinned = self.pinned.lock().unwrap().clone();
        self.stop.store(true, Ordering::Relaxed);
        let seen: Vec<Seen> = self
            .threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let failed: Vec<_> = seen.iter().flat_map(|s| s.failed.iter()).collect();
        assert!(
            failed.is_empty(),
            "failed requests: {failed:?}\n{}",
            c.logs()
        );
        (pinned, seen)
    }
}

fn client(
    proxy: SocketAddr,
    i: usize,
    stop: &AtomicBool,
    pinned: &Mutex<HashMap<usize, u64>>,
    answered: &AtomicUsize,
) -> Seen {
    let mut seen = Seen::default();
    let first = common::request(proxy, "GET", "/whoami", &[], b"").unwrap();
    let cookie = first.cookie_header();
    let worker = first.json()["worker"].as_u64().unwrap();
    pinned.lock().unwrap().insert(i, worker);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    for _ in 0..20_000 {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            break;
        }
        if conn.is_none() {
            let s = TcpStream::connect(proxy).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            conn = Some((s.try_clone().unwrap(), BufReader::new(s)));
        }
        let Some((s, reader)) = conn.as_mut() else {
            unreachable!()
        };
        let sent = write!(
            s,
            "GET /whoami HTTP/1.1\r\nHost: t\r\nCookie: {cookie}\r\n\r\n"
        );
        let answer = sent
            .map_err(|e| e.to_string())
            .and_then(|_| common::read_response(reader).map_err(|e| e.to_string()));
        answered.fetch_add(1, Ordering::Relaxed);
        match answer {
            Ok(r) if r.status == 200 => {
                seen.ok += 1;
                seen.workers.push(r.json()["worker"].as_u64().unwrap());
                if r.header("connection") == Some("close") {
                    conn = None;
                }
            }
            Ok(r) => {
                seen.failed.push(format!("{} {}", r.status, r.text()));
                conn = None;
            }
            Err(e) => {
                seen.failed.push(e);
                conn = None;
            }
        }
    }
    seen
}

/// Two workers of `tests/node/worker.js` that run `gate` (a shell command) before starting
/// once the returned marker file exists: a test creates it to make later (re)starts fail or
/// slow, whatever wins any race. Every worker is up when this returns.
fn gated_workers(tag: &str, gate: &str, args: &[&str]) -> (TestCluster, std::path::PathBuf) {
    let marker = common::scratch(tag).join("marker");
    let script = format!(
        "if [ -e {} ]; then {gate}; fi; exec node {}",
        marker.display(),
        common::tests_dir().join("node/worker.js").display()
    );
    let c = TestCluster::start(Options {
        workers: 2,
        command: vec!["sh".into(), "-c".into(), script],
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    });
    c.wait_log("2/2 up", Duration::from_secs(30));
    (c, marker)
}

fn pid_of(c: &TestCluster, worker: u64) -> u32 {
    let mut pid = None;
    wait_until(
        "a request to reach the worker",
        Duration::from_secs(20),
        || {
            let (_, json) = c.whoami(&[]);
            if json["worker"].as_u64() == Some(worker) {
                pid = json["pid"].as_u64();
            }
            pid.is_some()
        },
    );
    pid.unwrap() as u32
}

#[test]
fn kill_9_under_load_fails_no_request_and_moves_only_the_victims_sessions() {
    let c = TestCluster::demo(4, &[]);
    let load = Load::start(c.proxy, 20);
    load.wait_answers(200); // the load runs before the fault
    let victim = 2;
    kill("KILL", pid_of(&c, victim));
    c.wait_log("worker back up", Duration::from_secs(20));
    load.wait_answers(200); // and after it
    let (pinned, seen) = load.finish(&c);
    for (i, s) in seen.iter().enumerate() {
        let home = pinned[&i];
        if home != victim {
            assert!(
                s.workers.iter().all(|&w| w == home),
                "client {i} on {home} moved: {:?}",
                s.workers
            );
        } else {
            // Moved once, to one live worker, and stayed there.
            let after: Vec<_> = s.workers.iter().skip_while(|&&w| w == home).collect();
            assert!(
                after.windows(2).all(|w| w[0] == w[1]),
                "client {i} moved twice: {after:?}"
            );
        }
    }
    let total: usize = seen.iter().map(|s| s.ok).sum();
    assert!(total > 200, "the load ran: {total} requests");
    let moved = (0..seen.len())
        .filter(|i| pinned[i] == victim && seen[*i].workers.iter().any(|&w| w != victim))
        .count();
    assert!(moved > 0, "the kill hit clients under load");
}

#[test]
fn rolling_restart_under_load_fails_no_request_and_keeps_every_session_on_its_worker() {
    let c = TestCluster::demo(3, &["--drain-timeout", "5s"]);
    let before: Vec<u32> = (0..3).map(|w| pid_of(&c, w)).collect();
    let load = Load::start(c.proxy, 20);
    load.wait_answers(200);
    c.signal("HUP");
    c.wait_log("rolling restart done", Duration::from_secs(60));
    load.wait_answers(200);
    let (pinned, seen) = load.finish(&c);
    for (i, s) in seen.iter().enumerate() {
        assert!(
            s.workers.iter().all(|&w| w == pinned[&i]),
            "client {i} left worker {}: {:?}",
            pinned[&i],
            s.workers
        );
    }
    let after: Vec<u32> = (0..3).map(|w| pid_of(&c, w)).collect();
    for w in 0..3 {
        assert_ne!(before[w], after[w], "worker {w} was replaced");
        wait_until(
            "the old process to be gone",
            Duration::from_secs(10),
            || !common::alive(before[w]),
        );
    }
    assert_eq!(c.count_log("old worker stopped"), 3);
}

#[test]
fn a_taken_spare_port_neither_stops_the_start_nor_a_rolling_restart() {
    // The test holds W+N, worker 0's preferred spare, for the whole run.
    let c = TestCluster::start(Options {
        workers: 2,
        args: vec!["--drain-timeout".into(), "5s".into()],
        occupy_spare: true,
        ..Default::default()
    });
    let taken = c.occupied[0].local_addr().unwrap().port();
    assert_eq!(taken, c.worker_port + 2);
    let before: Vec<u32> = (0..2).map(|w| pid_of(&c, w)).collect();
    let load = Load::start(c.proxy, 10);
    load.wait_answers(100); // the load runs before the restart
    c.signal("HUP");
    c.wait_log("rolling restart done", Duration::from_secs(60));
    load.wait_answers(100); // and after it
    let (pinned, seen) = load.finish(&c);
    for (i, s) in seen.iter().enumerate() {
        assert!(
            s.workers.iter().all(|&w| w == pinned[&i]),
            "client {i} left worker {}: {:?}",
            pinned[&i],
            s.workers
        );
    }
    assert!(
        seen.iter().map(|s| s.ok).sum::<usize>() > 100,
        "the load ran"
    );
    for (w, &old) in before.iter().enumerate() {
        assert_ne!(old, pid_of(&c, w as u64), "worker {w} was replaced");
    }
    // Worker 0's replacement runs on a port the master found free, not on the taken one.
    let port0 = c
        .stderr()
        .lines()
        .find(|l| l.contains("replacement ready") && l.contains("worker=0"))
        .map(str::to_string);
    let port0 = port0.unwrap_or_else(|| panic!("no replacement of worker 0\n{}", c.logs()));
    assert!(!port0.contains(&format!("port={taken}")), "{port0}");
    assert_eq!(c.get("/whoami", &[]).status, 200);
}

/// A request the old process of a rolling restart was still answering when it was stopped
/// (past `--drain-timeout`) is sent again to its replacement, the same worker: not routed
/// elsewhere, and the worker is not taken out of rotation.
#[test]
fn a_request_cut_by_a_rolling_restart_goes_again_to_the_replacement() {
    let c = node_workers(
        1,
        &["--drain-timeout", "1s", "--kill-timeout", "1s", "--debug"],
        &[],
    );
    let proxy = c.proxy;
    let slow = std::thread::spawn(move || common::request(proxy, "GET", "/slow?ms=6000", &[], b""));
    c.wait_log("uri=/slow", Duration::from_secs(10));
    let old = pid_of(&c, 0);
    c.signal("HUP");
    let r = slow.join().unwrap().unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.text(), c.logs());
    assert_eq!(r.text(), "worker 0 slow");
    assert_ne!(pid_of(&c, 0), old, "the replacement answered");
    let logs = c.logs();
    assert!(!logs.contains("unreachable"), "{logs}");
    assert!(!logs.contains("back in rotation"), "{logs}");
}

#[test]
fn a_replacement_that_fails_to_start_stops_the_reload_and_keeps_the_old_worker() {
    // Workers listen on PORT; the replacement for worker 0 crashes at once (CRASH_WORKER is
    // read at start), and only the replacement sees the marker file.
    let (c, marker) = gated_workers("reload-fail", "exit 9", &[]);
    let old = pid_of(&c, 0);
    std::fs::write(&marker, "").unwrap();
    c.signal("HUP");
    c.wait_log("rolling restart stopped", Duration::from_secs(30));
    assert_eq!(pid_of(&c, 0), old, "the old worker 0 keeps serving");
    assert!(common::alive(old));
    assert_eq!(c.get("/whoami", &[]).status, 200);
}

#[test]
fn sigterm_lets_in_flight_requests_complete() {
    let mut c = node_workers(2, &["--debug"], &[]);
    let proxy = c.proxy;
    let slow = std::thread::spawn(move || common::request(proxy, "GET", "/slow?ms=1500", &[], b""));
    c.wait_log("uri=/slow", Duration::from_secs(10)); // routed: in flight
    c.signal("TERM");
    let r = slow.join().unwrap().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().ends_with("slow"));
    assert_eq!(c.wait_exit(Duration::from_secs(20)).code(), Some(0));
}

#[test]
fn hold_waits_for_the_restarting_worker_instead_of_moving() {
    // Once the marker exists, a (re)started worker takes 1.5 s before it listens: the
    // request below is sent while its worker is surely down, whoever wins any race.
    let args = ["--on-worker-down", "hold", "--hold-timeout", "10s"];
    let (c, marker) = gated_workers("hold", "sleep 1.5", &args);
    let (first, json) = c.whoami(&[("Cookie", "connect.sid=held")]);
    let home = json["worker"].as_u64().unwrap();
    std::fs::write(&marker, "").unwrap();
    kill("KILL", json["pid"].as_u64().unwrap() as u32);
    c.wait_log("worker died", Duration::from_secs(10));
    let started = Instant::now();
    let (_, again) = c.whoami(&[("Cookie", &first.cookie_header())]);
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "the request waited for the slow respawn: {:?}",
        started.elapsed()
    );
    assert_eq!(
        again["worker"].as_u64(),
        Some(home),
        "held until its worker came back"
    );
    assert_eq!(again["sticky"], "kept");
    assert_ne!(again["pid"], json["pid"], "served by the respawned process");
}

#[test]
fn hold_gives_up_after_the_deadline_and_redispatches() {
    let c = TestCluster::demo(
        2,
        &[
            "--on-worker-down",
            "hold",
            "--hold-timeout",
            "300ms",
            "--no-respawn",
        ],
    );
    let (first, json) = c.whoami(&[]);
    let cookie = first.cookie_header();
    kill("KILL", json["pid"].as_u64().unwrap() as u32);
    c.wait_log("worker died", Duration::from_secs(10));
    let started = Instant::now();
    let (_, again) = c.whoami(&[("Cookie", &cookie)]);
    assert_ne!(again["worker"], json["worker"]);
    assert_eq!(again["sticky"], "moved");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "it waited first"
    );
}

#[test]
fn failing_health_checks_take_a_worker_out_and_passing_ones_bring_it_back() {
    let c = node_workers(
        3,
        &[
            "--health-path",
            "/health",
            "--health-interval",
            "100ms",
            "--health-fall",
            "2",
            "--health-rise",
            "2",
        ],
        &[],
    );
    let sick = 1u16;
    let addr = SocketAddr::from(([127, 0, 0, 1], c.worker_port + sick));
    assert_eq!(
        common::request(addr, "GET", "/sick", &[], b"")
            .unwrap()
            .status,
        200
    );
    c.wait_log("failed its health checks", Duration::from_secs(10));
    for _ in 0..9 {
        assert_ne!(
            c.whoami(&[]).1["worker"],
            u64::from(sick),
            "out of rotation"
        );
    }
    assert_eq!(
        common::request(addr, "GET", "/heal", &[], b"")
            .unwrap()
            .status,
        200
    );
    c.wait_log("passed its health checks", Duration::from_secs(10));
    wait_until(
        "new clients reach it again",
        Duration::from_secs(10),
        || c.whoami(&[]).1["worker"] == u64::from(sick),
    );
}

#[test]
fn crash_loops_back_off_and_are_reported_while_the_others_serve() {
    let c = node_workers(2, &[], &[("CRASH_WORKER", "1")]);
    c.wait_log("crash-looping", Duration::from_secs(30));
    let stderr = c.stderr();
    assert!(
        stderr.contains("delay=1.6s") || stderr.contains("delay=800ms"),
        "back-off grows\n{stderr}"
    );
    for _ in 0..4 {
        assert_eq!(c.whoami(&[]).1["worker"], 0);
    }
}

#[test]
fn every_worker_down_means_503_with_retry_after_not_a_hang() {
    let c = TestCluster::demo(1, &["--no-respawn"]);
    let pid = c.whoami(&[]).1["pid"].as_u64().unwrap() as u32;
    kill("KILL", pid);
    c.wait_log("worker died", Duration::from_secs(10));
    let r = c.get("/whoami", &[]);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["error"], "no_worker");
}

/// A head already longer than `--max-header-size` that never ends: on the direct path it
/// is answered 431 at once; on hyper's path (after a chunked upload handed the connection
/// over) the head deadline still closes it. Both held the connection forever before.
#[test]
fn an_unfinished_oversized_head_is_refused_or_timed_out() {
    use std::io::Read;
    let c = TestCluster::demo(1, &["--header-timeout", "500ms"]);
    let oversized = |s: &mut TcpStream| {
        let mut head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', 70_000));
        s.write_all(&head).unwrap();
    };
    let mut s = TcpStream::connect(c.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    oversized(&mut s);
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let r = common::read_response(&mut reader).unwrap();
    assert_eq!(r.status, 431, "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));

    let mut s = TcpStream::connect(c.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"POST /whoami HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    assert_eq!(common::read_response(&mut reader).unwrap().status, 200);
    oversized(&mut s);
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed by the header timeout"
    );
}

#[test]
fn slow_headers_and_idle_keep_alive_connections_are_closed() {
    use std::io::Read;
    let c = TestCluster::demo(1, &["--header-timeout", "500ms"]);
    // Slowloris: a head that never ends.
    let mut s = TcpStream::connect(c.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed by the header timeout"
    );
    // Silent: connects and never sends a byte.
    let mut s = TcpStream::connect(c.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let _ = s.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "silent connection closed"
    );
    // Idle keep-alive.
    let mut s = TcpStream::connect(c.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    assert_eq!(common::read_response(&mut reader).unwrap().status, 200);
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "idle connection closed"
    );
}

#[test]
fn oversized_heads_get_431() {
    let c = TestCluster::demo(1, &["--max-header-size", "8192"]);
    let big = "a".repeat(16 * 1024);
    let r = common::request(c.proxy, "GET", "/whoami", &[("X-Big", &big)], b"")
        .unwrap_or_else(|e| panic!("no answer to an oversized head: {e}\n{}", c.logs()));
    assert_eq!(r.status, 431, "{}", r.text());
    assert_eq!(c.get("/whoami", &[]).status, 200);
}

#[test]
fn connections_past_the_limit_wait_for_a_free_slot() {
    let c = TestCluster::demo(1, &["--max-connections", "2"]);
    let hold = |_| {
        let mut s = TcpStream::connect(c.proxy).unwrap();
        s.write_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        assert_eq!(common::read_response(&mut r).unwrap().status, 200);
        s
    };
    let held: Vec<TcpStream> = (0..2).map(hold).collect();
    let proxy = c.proxy;
    let third = std::thread::spawn(move || {
        let started = Instant::now();
        let r = common::request(proxy, "GET", "/whoami", &[], b"").unwrap();
        (r.status, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500)); // the time it must wait, not a sync
    assert!(!third.is_finished(), "the third connection waits");
    drop(held);
    let (status, waited) = third.join().unwrap();
    assert_eq!(status, 200);
    assert!(
        waited >= Duration::from_millis(400),
        "it waited for a slot: {waited:?}"
    );
}

#[test]
fn idle_websockets_are_closed() {
    use tungstenite::client::IntoClientRequest;
    let c = TestCluster::demo(1, &["--ws-idle-timeout", "500ms"]);
    let req = format!("ws://{}/ws", c.proxy)
        .into_client_request()
        .unwrap();
    let stream = TcpStream::connect(c.proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (mut ws, _) = tungstenite::client(req, stream).unwrap();
    ws.send(tungstenite::Message::Text("hi".into())).unwrap();
    assert!(ws.read().unwrap().is_text());
    let started = Instant::now();
    let end = loop {
        match ws.read() {
            Ok(m) if m.is_close() => break Ok(()),
            Ok(_) => continue,
            Err(e) => break Err(e),
        }
    };
    // Closed: a close frame or the end of the connection; not the 10 s read timeout.
    match end {
        Ok(()) | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {}
        Err(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        )) => {}
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) => {}
        Err(e) => panic!("not closed by the proxy: {e}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_flood_of_random_sessions_stays_within_session_max() {
    let c = TestCluster::demo(2, &["--session-max", "50", "--no-affinity-cookie"]);
    let (_, first) = c.whoami(&[("Cookie", "connect.sid=the-first")]);
    assert_eq!(first["sticky"], "new");
    assert_eq!(
        c.whoami(&[("Cookie", "connect.sid=the-first")]).1["sticky"],
        "kept"
    );
    let flood = |range: std::ops::Range<usize>| {
        for i in range {
            let cookie = format!("connect.sid=flood-{i}; sticky.worker=garbage{i}");
            let (_, json) = c.whoami(&[("Cookie", &cookie)]);
            assert_eq!(json["sticky"], "new", "flood-{i}");
        }
    };
    // 49 more keys: the table holds 50, the first among them (and looking it up makes it
    // the most recently used).
    flood(0..49);
    assert_eq!(
        c.whoami(&[("Cookie", "connect.sid=the-first")]).1["sticky"],
        "kept",
        "a table of 50 keeps 50 keys"
    );
    // 49 more: it is still among the 50 most recent; 50 more after that evict it.
    flood(49..98);
    assert_eq!(
        c.whoami(&[("Cookie", "connect.sid=the-first")]).1["sticky"],
        "kept",
        "still one of the 50 most recent"
    );
    flood(98..148);
    assert_eq!(
        c.whoami(&[("Cookie", "connect.sid=the-first")]).1["sticky"],
        "new",
        "evicted once 50 newer keys came: the table holds no more than 50"
    );
}

#[test]
fn a_rolling_restart_lets_a_long_request_and_an_open_websocket_finish_on_the_old_worker() {
    use std::io::Read;
    let c = TestCluster::demo(1, &["--drain-timeout", "3s"]);
    let old = pid_of(&c, 0);
    // An open WebSocket, and a request whose body is only half sent.
    let ws_stream = TcpStream::connect(c.proxy).unwrap();
    ws_stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://{}/ws", c.proxy), ws_stream).unwrap();
    ws.send(tungstenite::Message::Text("before".into()))
        .unwrap();
    assert_eq!(ws.read().unwrap().to_text().unwrap(), "worker 0: before");
    // Half of a 4 MiB body: more than any buffer on the way, so the worker is reading it.
    const BODY: usize = 4 << 20;
    let mut long = TcpStream::connect(c.proxy).unwrap();
    long.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        long,
        "POST /whoami HTTP/1.1\r\nHost: t\r\nContent-Length: {BODY}\r\n\r\n"
    )
    .unwrap();
    long.write_all(&vec![b'x'; BODY / 2]).unwrap();
    c.wait_log("worker 0 ready", Duration::from_secs(10));
    c.signal("HUP");
    c.wait_log("replacement ready", Duration::from_secs(20));
    // New requests go to the new process; the old one still has both in flight.
    assert_ne!(c.whoami(&[]).1["pid"].as_u64(), Some(u64::from(old)));
    ws.send(tungstenite::Message::Text("during".into()))
        .unwrap();
    assert_eq!(ws.read().unwrap().to_text().unwrap(), "worker 0: during");
    long.write_all(&vec![b'y'; BODY / 2]).unwrap();
    let r = common::read_response(&mut BufReader::new(long.try_clone().unwrap())).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["pid"].as_u64(),
        Some(u64::from(old)),
        "the old worker answered"
    );
    assert_eq!(r.json()["body_bytes"], BODY, "the whole body reached it");
    // The drain time over, the WebSocket still open is closed and the old process stops.
    c.wait_log("rolling restart done", Duration::from_secs(30));
    let mut rest = Vec::new();
    let closed = loop {
        match ws.read() {
            Ok(m) if m.is_close() => break true,
            Ok(_) => continue,
            // A read timeout is not a close.
            Err(tungstenite::Error::Io(e)) => {
                break !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
            Err(_) => break true,
        }
    };
    assert!(closed, "the old worker's WebSocket was closed");
    let _ = long.read_to_end(&mut rest);
    assert!(!common::alive(old));
}

#[test]
fn a_request_with_a_body_is_not_sent_again_after_its_worker_died() {
    // Two workers that drop the connection of a /die request once they read it whole, as a
    // worker killed in the middle of it would: the request must reach one of them only.
    let (a, b) = (common::EchoWorker::start(), common::EchoWorker::start());
    let c = TestCluster::start(Options {
        workers: 1,
        args: vec![
            "--upstream".into(),
            a.addr.to_string(),
            "--upstream".into(),
            b.addr.to_string(),
        ],
        ..Default::default()
    });
    for (method, path) in [("POST", "/die/post"), ("PUT", "/die/put")] {
        let r = c.request(method, path, &[], b"charge the card once");
        assert_eq!(r.status, 502, "{method}: {}", r.text());
        let seen = a.received(path).len() + b.received(path).len();
        assert_eq!(seen, 1, "{method} {path} reached the workers {seen} times");
    }
    // Both workers still serve.
    assert_eq!(c.get("/alive", &[]).status, 200);
}
