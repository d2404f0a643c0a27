//! The routing rules, end to end: the real binary, real worker processes, real sockets.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;

use common::{node_workers, Options, TestCluster};

fn worker_of(json: &serde_json::Value) -> u64 {
    json["worker"].as_u64().unwrap()
}

#[test]
fn rule4_keyless_clients_are_spread_and_get_a_verifiable_affinity_cookie() {
    let c = TestCluster::demo(3, &[]);
    let mut seen = HashSet::new();
    for _ in 0..9 {
        let (r, json) = c.whoami(&[]);
        seen.insert(worker_of(&json));
        let set = r.set_cookies();
        let affinity = set.get("sticky.worker").expect("affinity cookie set");
        assert_eq!(
            affinity.len(),
            32,
            "opaque token, not a raw index: {affinity}"
        );
        let raw = r
            .all("set-cookie")
            .into_iter()
            .find(|c| c.starts_with("sticky.worker="))
            .unwrap();
        assert!(
            raw.contains("HttpOnly") && raw.contains("Path=/") && raw.contains("SameSite=Lax"),
            "{raw}"
        );
    }
    assert_eq!(
        seen.len(),
        3,
        "cookie-less clients spread over every worker: {seen:?}"
    );
}

#[test]
fn rule2_and_rule4_a_client_with_cookies_stays_on_its_worker() {
    let c = TestCluster::demo(4, &[]);
    for _ in 0..8 {
        let (first, json) = c.whoami(&[]);
        let worker = worker_of(&json);
        assert_eq!(json["sticky"], "new");
        let cookies = first.cookie_header();
        for _ in 0..5 {
            let (r, json) = c.whoami(&[("Cookie", &cookies)]);
            assert_eq!(worker_of(&json), worker);
            assert_eq!(json["sticky"], "kept");
            assert!(r.all("set-cookie").is_empty(), "nothing to set again");
        }
    }
}

#[test]
fn rule3_session_cookie_set_by_a_worker_is_learned() {
    // With the affinity cookie off, only the learned Set-Cookie can keep the client.
    let c = TestCluster::demo(4, &["--no-affinity-cookie"]);
    for _ in 0..12 {
        let (first, json) = c.whoami(&[]);
        let worker = worker_of(&json);
        let set = first.set_cookies();
        assert!(!set.contains_key("sticky.worker"));
        let sid = set
            .get("connect.sid")
            .expect("demo worker sets connect.sid");
        let cookie = format!("connect.sid={sid}");
        for _ in 0..4 {
            let (_, json) = c.whoami(&[("Cookie", &cookie)]);
            assert_eq!(
                worker_of(&json),
                worker,
                "the very next request lands on the creator"
            );
        }
    }
}

#[test]
fn rule3_works_for_command_workers_that_log_in() {
    let c = node_workers(3, &["--no-affinity-cookie"], &[]);
    for user in 0..9 {
        let login = c.get(&format!("/login?id=user{user}"), &[]);
        assert_eq!(login.status, 200);
        let worker: u64 = login.text().rsplit(' ').next().unwrap().parse().unwrap();
        let cookie = format!("connect.sid=user{user}");
        for _ in 0..3 {
            let (_, json) = c.whoami(&[("Cookie", &cookie)]);
            assert_eq!(worker_of(&json), worker);
        }
    }
    assert!(
        c.stdout().contains("[worker 0] worker 0 listening"),
        "{}",
        c.logs()
    );
}

#[test]
fn rule4_affinity_cookie_survives_a_proxy_restart() {
    let secret_dir = common::scratch("secret");
    let opts = || Options {
        workers: 4,
        secret_dir: Some(secret_dir.clone()),
        ..Default::default()
    };
    let mut pins = Vec::new();
    {
        let c = TestCluster::start(opts());
        for _ in 0..4 {
            let (r, json) = c.whoami(&[]);
            let token = r.set_cookies()["sticky.worker"].clone();
            pins.push((token, worker_of(&json)));
        }
    }
    let c = TestCluster::start(opts());
    for (token, worker) in &pins {
        let cookie = format!("sticky.worker={token}; connect.sid=fresh-{token}");
        let (r, json) = c.whoami(&[("Cookie", &cookie)]);
        assert_eq!(worker_of(&json), *worker, "same worker after the restart");
        assert_eq!(json["sticky"], "kept");
        assert!(!r.set_cookies().contains_key("sticky.worker"));
    }
}

#[test]
fn rule4_forged_affinity_cookies_are_ignored_and_replaced() {
    let c = TestCluster::demo(2, &[]);
    for forged in [
        "0",
        "1",
        "00000000000000000000000000000000",
        "%00%ff",
        "\"x\"",
    ] {
        let cookie = format!("sticky.worker={forged}");
        let (r, json) = c.whoami(&[("Cookie", &cookie)]);
        assert_eq!(json["sticky"], "new", "{forged}");
        assert!(
            r.set_cookies().contains_key("sticky.worker"),
            "replaced: {forged}"
        );
    }
}

#[test]
fn other_key_sources_header_query_ip() {
    let c = TestCluster::demo(
        3,
        &[
            "--session-key",
            "header:x-session",
            "--session-key",
            "query:token",
            "--no-affinity-cookie",
        ],
    );
    let (_, first) = c.whoami(&[("X-Session", "abc")]);
    for _ in 0..5 {
        let (_, json) = c.whoami(&[("X-Session", "abc")]);
        assert_eq!(worker_of(&json), worker_of(&first));
    }
    let q = c.get("/whoami?token=t1", &[]).json();
    for _ in 0..5 {
        assert_eq!(
            worker_of(&c.get("/whoami?token=t1", &[]).json()),
            worker_of(&q)
        );
    }
    drop(c);
    let c = TestCluster::demo(3, &["--session-key", "ip", "--no-affinity-cookie"]);
    let (_, first) = c.whoami(&[]);
    for _ in 0..5 {
        assert_eq!(
            worker_of(&c.whoami(&[]).1),
            worker_of(&first),
            "one client IP, one worker"
        );
    }
}

#[test]
fn session_key_none_is_plain_round_robin() {
    let c = TestCluster::demo(2, &["--session-key", "none"]);
    let (first, _) = c.whoami(&[]);
    assert!(!first.set_cookies().contains_key("sticky.worker"));
    let cookie = first.cookie_header();
    let seen: HashSet<_> = (0..4)
        .map(|_| worker_of(&c.whoami(&[("Cookie", &cookie)]).1))
        .collect();
    assert_eq!(seen.len(), 2, "no stickiness at all");
}

#[test]
fn rule6_forwarding_headers() {
    let c = TestCluster::demo(1, &[]);
    let (_, json) = c.whoami(&[("X-Forwarded-For", "203.0.113.7")]);
    assert_eq!(json["forwarded_for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(json["forwarded_proto"], "http");
    assert_eq!(json["host"], c.proxy.to_string(), "Host kept");
    assert_eq!(json["forwarded_host"], c.proxy.to_string());
}

#[test]
fn rule6_headers_named_in_connection_do_not_reach_the_worker() {
    let echo = common::EchoWorker::start();
    let c = TestCluster::start(Options {
        workers: 1,
        args: vec!["--upstream".into(), echo.addr.to_string()],
        ..Default::default()
    });
    let r = c.get(
        "/drop",
        &[
            ("Connection", "keep-alive, x-drop"),
            ("X-Drop", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("X-Keep", "kept"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // The worker's answer is the head it received.
    let head = r.text().to_ascii_lowercase();
    assert!(head.starts_with("get /drop "), "{head}");
    assert!(head.contains("\r\nx-keep: kept\r\n"), "{head}");
    for gone in ["x-drop", "secret", "keep-alive"] {
        assert!(!head.contains(gone), "{gone:?} reached the worker:\n{head}");
    }
    assert_eq!(echo.received("/drop").len(), 1);
}

#[test]
fn rule6_bodies_stream_both_ways_and_keep_alive_is_reused() {
    use std::io::{BufReader, Write};
    let c = TestCluster::demo(2, &[]);
    let mut s = std::net::TcpStream::connect(c.proxy).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let body = vec![b'x'; 256 * 1024];
    for i in 0..5 {
        write!(
            s,
            "POST /whoami HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(&body).unwrap();
        let r = common::read_response(&mut reader).unwrap();
        assert_eq!(r.status, 200, "request {i} on one keep-alive connection");
        assert_eq!(r.json()["method"], "POST");
        assert_eq!(r.json()["body_bytes"], body.len() as u64);
    }
}

#[test]
fn rule6_unreachable_worker_gives_502_json() {
    let c = node_workers(1, &[], &[]);
    assert_eq!(c.get("/close", &[]).status, 200);
    common::wait_until(
        "worker to stop listening",
        std::time::Duration::from_secs(10),
        || std::net::TcpStream::connect(("127.0.0.1", c.worker_port)).is_err(),
    );
    let r = c.get("/whoami", &[]);
    assert_eq!(r.status, 502, "{}", r.text());
    let json = r.json();
    assert_eq!(json["error"], "proxy_error");
    assert!(
        json["reason"].as_str().unwrap().contains("worker 0"),
        "{json}"
    );
}
