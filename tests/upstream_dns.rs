//! `--upstream-dns NAME:PORT`: workers that come and go with a name's addresses, under load.
//!
//! The proxy runs in a private mount namespace (`unshare --mount`) where a hosts file of the
//! test's is bind-mounted over `/etc/hosts` and a `hosts: files` nsswitch.conf over the
//! system's, so the system resolver answers from that file alone (no DNS query leaves the
//! machine) and the test changes the answer by rewriting the file in place. The name lists
//! 127.0.0.1 and/or ::1; the two `--upstream-dns` entries (the same name on two ports) make
//! four possible workers, one Node process on each address and port.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_ports, scratch, wait_until, Options, TestCluster, Upstream};

const NAME: &str = "workers.sticky.test";
const SECRET: &str = "upstream-dns-test-secret-0123456789";

/// The four workers: 127.0.0.1 and ::1, each on both ports; worker ids 0..4 in that order.
struct Workers {
    _all: Vec<Upstream>,
    ports: [u16; 2],
}

impl Workers {
    fn start() -> Self {
        let ports = free_ports(2);
        let p = [ports.first, ports.first + 1];
        drop(ports);
        let addrs = [
            SocketAddr::from(([127, 0, 0, 1], p[0])),
            SocketAddr::from(([127, 0, 0, 1], p[1])),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, p[0])),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, p[1])),
        ];
        let all = (0..4)
            .map(|i| Upstream::start_on(i as u16, addrs[i]))
            .collect();
        Self {
            _all: all,
            ports: p,
        }
    }
}

/// The hosts file the proxy's resolver reads, rewritten in place (the bind mount follows
/// the file, not its name).
struct Hosts(PathBuf);

impl Hosts {
    fn new(dir: &Path, ips: &[&str]) -> Self {
        let h = Self(dir.join("hosts"));
        h.set(ips);
        h
    }

    fn set(&self, ips: &[&str]) {
        let text: String = ips.iter().map(|ip| format!("{ip} {NAME}\n")).collect();
        std::fs::write(&self.0, text).expect("hosts file written");
    }
}

/// A proxy over `--upstream-dns NAME:P1 --upstream-dns NAME:P2`, resolved from `hosts`.
fn proxy(dir: &Path, hosts: &Hosts, ports: [u16; 2], extra: &[&str]) -> TestCluster {
    let nsswitch = dir.join("nsswitch.conf");
    std::fs::write(&nsswitch, "hosts: files\n").unwrap();
    let wrapper = dir.join("in-namespace.sh");
    // Root gets a mount namespace of its own; anyone else maps to root in a user namespace.
    let script = format!(
        "#!/bin/sh\nif [ \"$(id -u)\" = 0 ]; then U=; else U=-Ur; fi\n\
         exec unshare $U --mount sh -c 'mount --bind \"$0\" /etc/hosts && mount --bind \"$1\" /etc/nsswitch.conf && shift && exec \"$@\"' '{}' '{}' '{}' \"$@\"\n",
        hosts.0.display(),
        nsswitch.display(),
        env!("CARGO_BIN_EXE_sticky-cluster"),
    );
    std::fs::write(&wrapper, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut args: Vec<String> = vec![
        "--affinity-secret".into(),
        SECRET.into(),
        "--dns-interval".into(),
        "100ms".into(),
    ];
    if !extra.contains(&"--dns-max-workers") {
        args.extend(["--dns-max-workers".into(), "4".into()]);
    }
    for p in ports {
        args.push("--upstream-dns".into());
        args.push(format!("{NAME}:{p}"));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    TestCluster::start(Options {
        program: wrapper,
        workers: 1,
        args,
        ..Default::default()
    })
}

/// The worker (0..4) that answers session `id`, and the proxy's outcome (`X-Sticky`).
fn whoami(proxy: &TestCluster, id: &str) -> (u64, String) {
    let cookie = format!("connect.sid={id}");
    let (_, json) = proxy.whoami(&[("Cookie", &cookie)]);
    let worker = json["worker"].as_u64().expect("a worker id");
    (worker, json["sticky"].as_str().unwrap_or("").to_string())
}

/// Logs in new sessions (`prefix-N`) until one lands on a worker `wanted` accepts; the
/// sessions and their workers.
fn login_until(
    proxy: &TestCluster,
    prefix: &str,
    wanted: impl Fn(u64) -> bool,
) -> Vec<(String, u64)> {
    let mut made = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in 0.. {
        assert!(
            Instant::now() < deadline,
            "no new session reached the wanted workers: {made:?}\n{}",
            proxy.logs()
        );
        let id = format!("{prefix}-{n}");
        let w = proxy.login(&id);
        made.push((id, w));
        if wanted(w) {
            return made;
        }
    }
    unreachable!()
}

/// Requests every session in turn until stopped (at most 60 s), recording each answer.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(String, u64, String)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(proxy: SocketAddr, sessions: Arc<Mutex<Vec<String>>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let ids = sessions.lock().unwrap().clone();
                    for id in ids {
                        let cookie = format!("connect.sid={id}");
                        let r =
                            common::request(proxy, "GET", "/whoami", &[("Cookie", &cookie)], b"")
                                .unwrap_or_else(|e| panic!("request for {id} failed: {e}"));
                        assert_eq!(r.status, 200, "session {id}: {}", r.text());
                        let json = r.json();
                        let worker = json["worker"].as_u64().expect("a worker id");
                        let sticky = json["sticky"].as_str().unwrap_or("").to_string();
                        seen.lock().unwrap().push((id, worker, sticky));
                    }
                }
            })
        };
        Self {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Answers recorded so far.
    fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The worker of the latest answer for session `id`.
    fn last(&self, id: &str) -> Option<u64> {
        let seen = self.seen.lock().unwrap();
        seen.iter().rev().find(|s| s.0 == id).map(|s| s.1)
    }

    /// Stops the load (a failed request fails the test here) and returns every answer.
    fn finish(mut self) -> Vec<(String, u64, String)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("every request under load got a 200");
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// Waits until the load has made `n` more requests.
fn let_load_run(load: &Load, n: usize) {
    let target = load.len() + n;
    wait_until("the load to go on", Duration::from_secs(30), || {
        load.len() >= target
    });
}

#[test]
fn workers_join_and_leave_with_the_names_answer_under_load_and_only_the_leavers_sessions_move() {
    let workers = Workers::start();
    let dir = scratch("upstream-dns");
    let hosts = Hosts::new(&dir, &["127.0.0.1"]);
    let proxy = proxy(&dir, &hosts, workers.ports, &[]);

    // The name lists 127.0.0.1: workers 0 and 1 serve.
    let mut first = login_until(&proxy, "a", |w| w == 1);
    first.extend(login_until(&proxy, "b", |w| w == 0));
    assert!(first.iter().all(|(_, w)| *w < 2), "{first:?}");
    let sessions = Arc::new(Mutex::new(
        first.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
    ));
    let load = Load::start(proxy.proxy, sessions.clone());
    let_load_run(&load, 20);

    // ::1 joins: new sessions reach workers 2 and 3, and nobody moves.
    hosts.set(&["127.0.0.1", "::1"]);
    let joined = login_until(&proxy, "c", |w| w >= 2);
    let on_new: Vec<(String, u64)> = login_until(&proxy, "d", |w| w >= 2)
        .into_iter()
        .chain(joined)
        .filter(|(_, w)| *w >= 2)
        .collect();
    sessions
        .lock()
        .unwrap()
        .extend(on_new.iter().map(|(id, _)| id.clone()));
    let_load_run(&load, 20);
    let before_leave = load.len();

    // 127.0.0.1 leaves: its sessions move to 2 and 3; those already there stay.
    hosts.set(&["::1"]);
    wait_until(
        "the sessions of the workers that left to move",
        Duration::from_secs(20),
        || {
            first
                .iter()
                .all(|(id, _)| load.last(id).is_some_and(|w| w >= 2))
        },
    );
    let_load_run(&load, 40);
    let seen = load.finish();

    let home: HashMap<&str, u64> = first
        .iter()
        .chain(on_new.iter())
        .map(|(id, w)| (id.as_str(), *w))
        .collect();
    for (id, w, sticky) in &seen[..before_leave] {
        assert_eq!(
            home[id.as_str()],
            *w,
            "{id} moved before any worker left ({sticky})"
        );
    }
    for (id, w) in &on_new {
        let answers: Vec<u64> = seen.iter().filter(|s| s.0 == *id).map(|s| s.1).collect();
        assert!(
            answers.iter().all(|a| a == w),
            "{id} on a worker that stayed moved: {answers:?}"
        );
    }
    for (id, _) in &first {
        let after: Vec<&(String, u64, String)> =
            seen[before_leave..].iter().filter(|s| s.0 == *id).collect();
        let moved_to = after.last().expect("answers after the leave").1;
        assert!(moved_to >= 2, "{id} still on a worker that left");
        let first_moved = after.iter().position(|s| s.1 >= 2).expect("moved");
        assert_eq!(
            after[first_moved].2, "moved",
            "{id}: the first request on its new worker says so"
        );
        assert!(
            after[first_moved..].iter().all(|s| s.1 == moved_to),
            "{id} moved twice: {after:?}"
        );
    }
    let logs = proxy.logs();
    assert!(
        logs.contains("worker joined from the --upstream-dns answer"),
        "{logs}"
    );
    assert!(
        logs.contains("worker left the --upstream-dns answer"),
        "{logs}"
    );
}

#[test]
fn addresses_past_dns_max_workers_get_no_requests_until_a_slot_is_vacated() {
    let workers = Workers::start();
    let dir = scratch("upstream-dns-max");
    // Four addresses for two slots: the two 127.0.0.1 ones (ordered first) take them.
    let hosts = Hosts::new(&dir, &["127.0.0.1", "::1"]);
    let proxy = proxy(&dir, &hosts, workers.ports, &["--dns-max-workers", "2"]);
    proxy.wait_log(
        "lists more workers than --dns-max-workers",
        Duration::from_secs(10),
    );
    // Joined is not yet up: new sessions until both slotted workers have answered one.
    let mut answered = std::collections::HashSet::new();
    let mut probe = 0;
    wait_until("both slotted workers up", Duration::from_secs(10), || {
        probe += 1;
        let path = format!("/login?id=ready-{probe}");
        if let Ok(r) = common::request(proxy.proxy, "GET", &path, &[], b"") {
            if r.status == 200 {
                answered.insert(r.text());
            }
        }
        answered.len() == 2
    });
    let placed: Vec<u64> = (0..40).map(|n| proxy.login(&format!("a-{n}"))).collect();
    assert!(
        placed.iter().all(|w| *w < 2),
        "only the two slotted workers serve: {placed:?}"
    );
    assert!(placed.contains(&0) && placed.contains(&1), "{placed:?}");

    // 127.0.0.1 leaves the answer: the ::1 workers take the freed slots.
    hosts.set(&["::1"]);
    let moved = login_until(&proxy, "b", |w| w >= 2);
    assert!(moved.last().is_some_and(|(_, w)| *w >= 2), "{moved:?}");
}

#[test]
fn a_name_that_stops_resolving_keeps_its_workers_until_an_answer_says_otherwise() {
    let workers = Workers::start();
    let dir = scratch("upstream-dns-fail");
    let hosts = Hosts::new(&dir, &["127.0.0.1"]);
    let proxy = proxy(&dir, &hosts, workers.ports, &[]);
    let sessions = login_until(&proxy, "s", |w| w == 1);

    // No entry for the name: resolution fails, and the workers last listed keep serving.
    hosts.set(&[]);
    proxy.wait_log(
        "--upstream-dns name does not resolve",
        Duration::from_secs(10),
    );
    let failures_from = Instant::now();
    while failures_from.elapsed() < Duration::from_millis(600) {
        for (id, w) in &sessions {
            assert_eq!(whoami(&proxy, id).0, *w, "{id} moved while the name failed");
        }
    }
    hosts.set(&["127.0.0.1"]);
    proxy.wait_log(
        "--upstream-dns name resolves again",
        Duration::from_secs(10),
    );
    for (id, w) in &sessions {
        assert_eq!(whoami(&proxy, id), (*w, "kept".to_string()));
    }
}

#[test]
fn a_discovered_workers_affinity_cookie_is_honoured_by_a_proxy_that_lists_it_as_an_upstream() {
    let workers = Workers::start();
    let dir = scratch("upstream-dns-cookie");
    let hosts = Hosts::new(&dir, &["::1"]);
    let discovered = proxy(&dir, &hosts, workers.ports, &[]);
    let r = discovered.get("/whoami", &[]);
    assert_eq!(r.status, 200);
    let worker = r.json()["worker"].as_u64().unwrap();
    let cookie = r.cookie_header();
    assert!(cookie.contains("sticky.worker="), "{cookie}");

    // Another proxy lists the same two workers as --upstream, in the other order.
    let mut args = vec!["--affinity-secret".to_string(), SECRET.to_string()];
    for p in workers.ports.iter().rev() {
        args.push("--upstream".into());
        args.push(format!("[::1]:{p}"));
    }
    let listed = TestCluster::start(Options {
        workers: 1,
        args,
        ..Default::default()
    });
    for _ in 0..6 {
        let (r, json) = listed.whoami(&[("Cookie", &cookie)]);
        assert_eq!(json["worker"].as_u64(), Some(worker), "{}", r.text());
        assert_eq!(json["sticky"], "kept");
    }
}

#[test]
fn bad_upstream_dns_settings_are_one_line_usage_errors() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["--upstream-dns", "workers"],
            "invalid --upstream-dns \"workers\": no port",
        ),
        (
            &["--upstream-dns", "bad name:80"],
            "the name is not a DNS name",
        ),
        (
            &["--upstream-dns", "w.test:80", "--dns-interval", "0s"],
            "--dns-interval must be longer than 0",
        ),
        (
            &["--upstream-dns", "w.test:80", "--dns-max-workers", "0"],
            "--dns-max-workers 0 is out of range",
        ),
    ];
    for (args, expected) in cases {
        let (_, last) = common::exit_code_2(args, Duration::from_secs(10));
        assert!(last.contains(expected), "{args:?}: {last}");
    }
}
