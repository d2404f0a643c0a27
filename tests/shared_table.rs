//! Several proxies in front of the same three workers (`--upstream`, listed in opposite
//! orders so their slot indexes differ): sessions learnt on one proxy stay on their worker
//! through the other when they share a real `redis-server` (`--shared-table`); Redis going
//! down fails no request and keeps locally known sessions; Redis back shares new sessions
//! again; and a header key is placed alike by proxies that share nothing (rendezvous).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_ports, wait_until, Options, TestCluster, Upstream};

const SECRET: &str = "shared-table-test-secret-0123456789";

/// A `redis-server` started by the test on a loopback port, killed (by pid) on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
    password: Option<&'static str>,
}

impl Redis {
    fn start(port: u16) -> Self {
        Self::start_with(port, None)
    }

    /// A server that requires `password` (`requirepass`) when it is `Some`.
    fn start_with(port: u16, password: Option<&'static str>) -> Self {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"]);
        if let Some(p) = password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        let redis = Self {
            child: Some(child),
            port,
            password,
        };
        wait_until("redis to answer PING", Duration::from_secs(10), || {
            redis.try_cmd(&["PING"]).is_ok_and(|r| r == "+PONG")
        });
        redis
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let port = self.port;
        wait_until("redis's port to close", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_err()
        });
    }

    /// One command in RESP; the first line of the answer.
    fn try_cmd(&self, args: &[&str]) -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut reader = BufReader::new(s.try_clone()?);
        let mut line = String::new();
        if let Some(p) = self.password {
            s.write_all(resp(&["AUTH", p]).as_bytes())?;
            reader.read_line(&mut line)?;
            assert_eq!(line.trim_end(), "+OK", "AUTH");
            line.clear();
        }
        s.write_all(resp(args).as_bytes())?;
        reader.read_line(&mut line)?;
        Ok(line.trim_end().to_string())
    }

    /// Waits until the proxies published session `id` (its key is in Redis).
    fn wait_key(&self, id: &str) {
        let key = redis_key(id);
        wait_until(&format!("{id} in Redis"), Duration::from_secs(10), || {
            self.try_cmd(&["EXISTS", &key]).is_ok_and(|r| r == ":1")
        });
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// The name the proxies give session `id` in Redis: a keyed hash, never the id in clear.
/// One command in RESP.
fn resp(args: &[&str]) -> String {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    req
}

fn redis_key(id: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag = ring::hmac::sign(&key, id.as_bytes());
    let hex: String = tag.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sticky-cluster:{hex}")
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn three_workers() -> Vec<Upstream> {
    let ports = free_ports(3);
    let first = ports.first;
    drop(ports);
    (0..3).map(|i| Upstream::start(i, first + i)).collect()
}

/// A proxy over `workers` in the given order, with `extra` flags.
fn proxy(workers: &[&Upstream], extra: &[String]) -> TestCluster {
    let mut args = vec!["--affinity-secret".to_string(), SECRET.to_string()];
    for w in workers {
        args.push("--upstream".into());
        args.push(w.arg());
    }
    args.extend(extra.iter().cloned());
    TestCluster::start(Options {
        workers: 1,
        args,
        ..Default::default()
    })
}

/// Proxy A over the workers in order, proxy B over them reversed.
fn two_proxies(workers: &[Upstream], extra: &[String]) -> (TestCluster, TestCluster) {
    let forward: Vec<&Upstream> = workers.iter().collect();
    let backward: Vec<&Upstream> = workers.iter().rev().collect();
    (proxy(&forward, extra), proxy(&backward, extra))
}

fn shared_flags(redis: &Redis) -> Vec<String> {
    vec![
        "--no-affinity-cookie".into(),
        "--shared-table".into(),
        redis.url(),
    ]
}

/// The worker serving session `id` through `proxy`.
fn worker_of(proxy: &TestCluster, id: &str) -> u64 {
    let cookie = format!("connect.sid={id}");
    let (r, json) = proxy.whoami(&[("Cookie", &cookie)]);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), proxy.logs());
    json["worker"].as_u64().expect("a worker id")
}

/// `/metrics` of an admin listener.
fn metrics(admin: u16) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", admin)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn a_session_learnt_from_set_cookie_on_one_proxy_stays_on_its_worker_through_the_other() {
    let ports = free_ports(1);
    let port = ports.first;
    drop(ports);
    let redis = Redis::start(port);
    let workers = three_workers();
    let (a, b) = two_proxies(&workers, &shared_flags(&redis));
    let ids: Vec<String> = (0..12).map(|i| format!("u{i}")).collect();
    let on_a: Vec<u64> = ids.iter().map(|id| a.login(id)).collect();
    assert!(
        on_a.iter().any(|&w| w != on_a[0]),
        "logins spread: {on_a:?}"
    );
    ids.iter().for_each(|id| redis.wait_key(id));
    for (id, &worker) in ids.iter().zip(&on_a) {
        assert_eq!(worker_of(&b, id), worker, "{id} through B\n{}", b.logs());
        assert_eq!(worker_of(&a, id), worker, "{id} through A");
    }
    // Over HTTP/2 too (B's direct h2 exchange hands a key new to B to the path that asks
    // Redis): a session B has not seen yet is still found.
    let late = "h2-late";
    let worker = a.login(late);
    redis.wait_key(late);
    let cookie = format!("connect.sid={late}");
    let (status, _, body) =
        common::h2_request(b.proxy, "GET", "/whoami", &[("cookie", &cookie)], b"");
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        json["worker"].as_u64(),
        Some(worker),
        "{late} over h2 through B"
    );
    // And the other way round: learnt on B, kept through A.
    let more: Vec<String> = (0..6).map(|i| format!("v{i}")).collect();
    let on_b: Vec<u64> = more.iter().map(|id| b.login(id)).collect();
    more.iter().for_each(|id| redis.wait_key(id));
    for (id, &worker) in more.iter().zip(&on_b) {
        assert_eq!(worker_of(&a, id), worker, "{id} through A");
    }
}

#[test]
fn a_new_key_is_claimed_by_the_first_proxy_and_the_other_adopts_its_worker() {
    let ports = free_ports(1);
    let port = ports.first;
    drop(ports);
    let redis = Redis::start(port);
    let workers = three_workers();
    // A does not know the third worker, so rendezvous alone would disagree on about a
    // third of the keys: B must adopt what A claimed.
    let flags = shared_flags(&redis);
    let a = proxy(&[&workers[0], &workers[1]], &flags);
    let b = proxy(&[&workers[2], &workers[1], &workers[0]], &flags);
    for i in 0..15 {
        let id = format!("race{i}");
        let first = worker_of(&a, &id);
        redis.wait_key(&id);
        assert_eq!(worker_of(&b, &id), first, "{id}\n{}", b.logs());
    }
}

#[test]
fn redis_down_fails_no_request_and_keeps_local_sessions_then_back_shares_again() {
    let ports = free_ports(3);
    let (redis_port, admin_a, admin_b) = (ports.first, ports.first + 1, ports.first + 2);
    drop(ports);
    let mut redis = Redis::start(redis_port);
    let workers = three_workers();
    let forward: Vec<&Upstream> = workers.iter().collect();
    let backward: Vec<&Upstream> = workers.iter().rev().collect();
    let with_admin = |port: u16| {
        let mut f = shared_flags(&redis);
        f.extend(["--admin".into(), format!("127.0.0.1:{port}")]);
        f
    };
    let a = proxy(&forward, &with_admin(admin_a));
    let b = proxy(&backward, &with_admin(admin_b));
    let ids: Vec<String> = (0..9).map(|i| format!("s{i}")).collect();
    let pinned: Vec<u64> = ids.iter().map(|id| a.login(id)).collect();
    ids.iter().for_each(|id| redis.wait_key(id));
    for (id, &w) in ids.iter().zip(&pinned) {
        assert_eq!(worker_of(&b, id), w, "{id} known to B before Redis goes");
    }

    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut served = 0;
    for round in 0..40 {
        assert!(Instant::now() < deadline, "the load is bounded in time");
        for (id, &w) in ids.iter().zip(&pinned) {
            let proxy = if round % 2 == 0 { &a } else { &b };
            assert_eq!(worker_of(proxy, id), w, "{id} kept while Redis is down");
            served += 1;
        }
        // New sessions are served too (each proxy on its own).
        let fresh = format!("down{round}");
        worker_of(&a, &fresh);
        worker_of(&b, &fresh);
        served += 2;
    }
    assert_eq!(served, 40 * (ids.len() + 2));
    let down = "sticky_cluster_shared_table_up 0";
    wait_until("A to report Redis down", Duration::from_secs(10), || {
        metrics(admin_a).contains(down)
    });

    let mut redis = Redis::start(redis_port);
    let up = "sticky_cluster_shared_table_up 1";
    wait_until("A and B to reconnect", Duration::from_secs(30), || {
        metrics(admin_a).contains(up) && metrics(admin_b).contains(up)
    });
    let after: Vec<String> = (0..9).map(|i| format!("back{i}")).collect();
    let on_a: Vec<u64> = after.iter().map(|id| a.login(id)).collect();
    after.iter().for_each(|id| redis.wait_key(id));
    for (id, &w) in after.iter().zip(&on_a) {
        assert_eq!(
            worker_of(&b, id),
            w,
            "{id} shared again after Redis came back"
        );
    }
    redis.kill();
}

#[test]
fn a_header_key_is_placed_alike_by_proxies_that_share_nothing() {
    let workers = three_workers();
    let flags: Vec<String> = ["--session-key", "header:X-User", "--no-affinity-cookie"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (a, b) = two_proxies(&workers, &flags);
    let mut seen = std::collections::HashSet::new();
    for i in 0..15 {
        let user = format!("user-{i}");
        let on_a = a.whoami(&[("X-User", &user)]).1["worker"].as_u64();
        let on_b = b.whoami(&[("X-User", &user)]).1["worker"].as_u64();
        assert_eq!(on_a, on_b, "{user}");
        seen.insert(on_a);
    }
    assert!(seen.len() >= 2, "users spread over the workers: {seen:?}");
}

/// Three socket.io workers (`tests/node/socketio-server.js`) as upstreams.
fn socketio_workers() -> Vec<Upstream> {
    let dir = common::node_modules();
    let ports = free_ports(3);
    let first = ports.first;
    drop(ports);
    (0..3u16)
        .map(|i| {
            let port = first + i;
            let child = Command::new("node")
                .arg(dir.join("socketio-server.js"))
                .env("PORT", port.to_string())
                .env("WORKER_ID", i.to_string())
                .env_remove("STICKY_CLUSTER_IPC")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("node starts");
            wait_until(
                "the socket.io worker to listen",
                Duration::from_secs(20),
                || TcpStream::connect(("127.0.0.1", port)).is_ok(),
            );
            Upstream { child, port }
        })
        .collect()
}

/// Cookie-less polling clients alternating between the proxies: every round trip answered.
fn alternate(a: &TestCluster, b: &TestCluster) -> common::NodeRun {
    common::NodeRun::run(
        &common::node_modules(),
        "socketio-alternate.js",
        &[a.url(), b.url(), "8".into(), "5".into(), "20000".into()],
        &[],
        Duration::from_secs(30),
    )
}

#[test]
fn a_cookieless_socketio_client_alternating_between_proxies_stays_connected() {
    let ports = free_ports(1);
    let port = ports.first;
    drop(ports);
    let redis = Redis::start(port);
    let workers = socketio_workers();
    let (a, b) = two_proxies(&workers, &shared_flags(&redis));
    let run = alternate(&a, &b);
    assert!(run.status.success(), "{}\n{}", run.report(&a), b.logs());
    let summary = run.summary(&a);
    assert_eq!(summary["roundTrips"], 40, "{}", run.report(&a));
    assert!(
        summary["forwarded"]["b"].as_u64() > Some(8),
        "B took requests"
    );
}

#[test]
fn a_bad_shared_table_url_is_a_one_line_usage_error() {
    let (_, last) = common::exit_code_2(
        &[
            "--upstream",
            "127.0.0.1:9",
            "--shared-table",
            "http://user:hunter2@db:1",
        ],
        Duration::from_secs(10),
    );
    assert!(
        last.contains("--shared-table") && last.contains("redis://"),
        "{last}"
    );
    assert!(
        !last.contains("hunter2"),
        "the password stays out of messages: {last}"
    );
}

#[test]
fn a_bus_bind_is_published_with_the_session_ttl_and_an_unbind_deletes_it() {
    let ports = free_ports(1);
    let port = ports.first;
    drop(ports);
    let redis = Redis::start(port);
    let url = redis.url();
    let c = common::node_workers(
        2,
        &[
            "--shared-table",
            &url,
            "--affinity-secret",
            SECRET,
            "--session-ttl",
            "10m",
        ],
        &[],
    );
    let (r, json) = c.whoami(&[]);
    assert_eq!(r.status, 200);
    let worker = json["worker"].as_u64().expect("a worker id");
    let cookie = r.cookie_header();
    let bound = c.get("/bus/bind?key=bus-key-1", &[("Cookie", &cookie)]);
    assert_eq!(bound.status, 200, "{}", bound.text());
    redis.wait_key("bus-key-1");
    let key = redis_key("bus-key-1");
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("redis");
    s.write_all(format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).as_bytes())
        .expect("GET");
    let mut reader = BufReader::new(s);
    let (mut len, mut value) = (String::new(), String::new());
    reader.read_line(&mut len).expect("length");
    reader.read_line(&mut value).expect("value");
    assert_eq!(
        value.trim_end(),
        format!("worker-{worker}"),
        "named, not indexed"
    );
    let ttl: u64 = redis
        .try_cmd(&["PTTL", &key])
        .expect("PTTL")
        .trim_start_matches(':')
        .parse()
        .expect("a number");
    assert!(
        (590_000..=600_000).contains(&ttl),
        "the session TTL: {ttl} ms"
    );
    let unbound = c.get("/bus/unbind?key=bus-key-1", &[("Cookie", &cookie)]);
    assert_eq!(unbound.status, 200);
    wait_until(
        "the unbound key to leave Redis",
        Duration::from_secs(10),
        || redis.try_cmd(&["EXISTS", &key]).is_ok_and(|r| r == ":0"),
    );
}

#[test]
fn an_affinity_cookie_from_one_proxy_is_honoured_by_another_that_lists_the_workers_otherwise() {
    let workers = three_workers();
    let (a, b) = two_proxies(&workers, &[]);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3 {
        // No session key: the affinity cookie alone pins the client.
        let (r, json) = a.whoami(&[]);
        let on_a = json["worker"].as_u64().expect("a worker id");
        seen.insert(on_a);
        let set = r
            .header("set-cookie")
            .unwrap_or_else(|| panic!("proxy A sets the affinity cookie: {}", a.logs()));
        let cookie = set.split(';').next().expect("name=value").to_string();
        let (_, json) = b.whoami(&[("Cookie", &cookie)]);
        assert_eq!(json["worker"].as_u64(), Some(on_a), "{cookie} through B");
        assert_eq!(json["sticky"], "kept", "{json}");
    }
    assert!(
        seen.len() >= 2,
        "round-robin on A reached several workers: {seen:?}"
    );
}

#[test]
fn the_password_from_the_environment_opens_a_redis_that_requires_one() {
    let ports = free_ports(1);
    let port = ports.first;
    drop(ports);
    let redis = Redis::start_with(port, Some("table-password-0123"));
    let workers = three_workers();
    let with_password = |order: Vec<&Upstream>| {
        let mut args = vec!["--affinity-secret".to_string(), SECRET.to_string()];
        for w in order {
            args.extend(["--upstream".to_string(), w.arg()]);
        }
        args.extend(shared_flags(&redis));
        TestCluster::start(Options {
            workers: 1,
            args,
            env: vec![(
                "STICKY_CLUSTER_REDIS_PASSWORD".into(),
                "table-password-0123".into(),
            )],
            ..Default::default()
        })
    };
    let a = with_password(workers.iter().collect());
    let b = with_password(workers.iter().rev().collect());
    let ids: Vec<String> = (0..6).map(|i| format!("p{i}")).collect();
    let on_a: Vec<u64> = ids.iter().map(|id| a.login(id)).collect();
    ids.iter().for_each(|id| redis.wait_key(id));
    for (id, &worker) in ids.iter().zip(&on_a) {
        assert_eq!(worker_of(&b, id), worker, "{id} through B\n{}", b.logs());
    }
}

/// A TCP relay to Redis that can be frozen: once frozen it forwards nothing either way
/// (Redis hung, its connections open). Its threads end with the test process.
struct Relay {
    port: u16,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    fn start(to: u16) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let port = listener.local_addr().expect("an address").port();
        let frozen = std::sync::Arc::new(AtomicBool::new(false));
        let flag = frozen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().take(64).flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    ),
                    (server, client),
                ] {
                    let flag = flag.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        while let Ok(n @ 1..) = from.read(&mut buf) {
                            if !flag.load(Ordering::Relaxed) && to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
            }
        });
        Self { port, frozen }
    }

    fn freeze(&self) {
        self.frozen
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn a_redis_that_stops_answering_delays_a_new_session_by_the_timeout_at_most() {
    let ports = free_ports(2);
    let (redis_port, admin) = (ports.first, ports.first + 1);
    drop(ports);
    let redis = Redis::start(redis_port);
    let relay = Relay::start(redis_port);
    let workers = three_workers();
    let flags: Vec<String> = [
        "--no-affinity-cookie".to_string(),
        "--shared-table".into(),
        format!("redis://127.0.0.1:{}", relay.port),
        "--shared-table-timeout".into(),
        "300ms".into(),
        "--admin".into(),
        format!("127.0.0.1:{admin}"),
    ]
    .into();
    let a = proxy(&workers.iter().collect::<Vec<_>>(), &flags);
    wait_until("the proxy to reach Redis", Duration::from_secs(10), || {
        metrics(admin).contains("sticky_cluster_shared_table_up 1")
    });
    worker_of(&a, "before");
    redis.wait_key("before");
    relay.freeze();
    for i in 0..3 {
        let started = Instant::now();
        // A session cookie this proxy never saw: it asks Redis before placing it.
        let id = format!("hung{i}");
        let worker = worker_of(&a, &id);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a new key waited {:?} for a Redis that stopped answering (timeout 300ms)",
            started.elapsed()
        );
        assert_eq!(worker_of(&a, &id), worker, "{id} kept locally");
    }
    let timed_out = metrics(admin)
        .lines()
        .find(|l| l.starts_with("sticky_cluster_shared_table_lookups_total{result=\"timeout\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        timed_out >= 1,
        "the first lookup after the freeze timed out\n{}",
        metrics(admin)
    );
}
