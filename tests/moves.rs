//! A session whose worker died moves, and the app is told so on the very request that
//! moved (`X-Sticky: moved`), then `kept` after, on every front: the direct HTTP/1.1 path,
//! hyper's HTTP/1 path (bodyless and with a body), the HTTP/2 direct exchange and the HTTP/2
//! general path. The proxy learns of the death only from a refused connect: the workers
//! are `--upstream`s the test kills itself, and health checks are too rare to notice.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{Options, TestCluster, Upstream};
use serde_json::Value;

const SESSIONS: usize = 6;

/// Three upstream workers behind the proxy.
fn three_upstreams() -> (Vec<Upstream>, TestCluster) {
    let ports = common::free_ports(3);
    let first = ports.first;
    drop(ports);
    let upstreams: Vec<Upstream> = (0..3).map(|i| Upstream::start(i, first + i)).collect();
    let mut args: Vec<String> = vec!["--health-interval".into(), "1h".into()];
    for u in &upstreams {
        args.extend(["--upstream".to_string(), u.arg()]);
    }
    let cluster = TestCluster::start(Options {
        workers: 1,
        args,
        ..Default::default()
    });
    (upstreams, cluster)
}

/// Six logged-in sessions (`connect.sid` learned from the worker's Set-Cookie), two per
/// worker: (session id, worker).
fn log_in(cluster: &TestCluster) -> Vec<(String, u64)> {
    let mut sessions = Vec::new();
    for i in 0..SESSIONS {
        let id = format!("session-{i}");
        let login = cluster.get(&format!("/login?id={id}"), &[]);
        assert_eq!(login.status, 200, "{}", cluster.logs());
        let cookie = format!("connect.sid={id}");
        let (_, who) = cluster.whoami(&[("cookie", &cookie)]);
        assert_eq!(who["sticky"], "kept", "{who}");
        sessions.push((cookie, who["worker"].as_u64().unwrap()));
    }
    sessions
}

/// Kills the worker of the first session; then every session sends two requests through
/// `request`, which must say `moved` then `kept` for the dead worker's sessions, `kept`
/// twice for the others.
fn kill_one_and_check(request: impl Fn(&TestCluster, &str) -> Value) {
    let (mut upstreams, cluster) = three_upstreams();
    let sessions = log_in(&cluster);
    let dead = sessions[0].1;
    let affected = sessions.iter().filter(|(_, w)| *w == dead).count();
    assert_eq!(affected, SESSIONS / 3, "round-robin gave {sessions:?}");
    upstreams[dead as usize].kill();
    for (cookie, worker) in &sessions {
        let first = request(&cluster, cookie);
        let second = request(&cluster, cookie);
        let logs = || cluster.logs();
        if *worker == dead {
            assert_ne!(first["worker"], dead, "{first}\n{}", logs());
            assert_eq!(
                first["sticky"],
                "moved",
                "first request of {cookie}: {first}\n{}",
                logs()
            );
        } else {
            assert_eq!(first["worker"], *worker, "{first}");
            assert_eq!(first["sticky"], "kept", "{cookie}: {first}");
        }
        assert_eq!(second["worker"], first["worker"], "{second}");
        assert_eq!(
            second["sticky"], "kept",
            "second request of {cookie}: {second}"
        );
    }
}

fn json(status: u16, body: &[u8]) -> Value {
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(body));
    serde_json::from_slice(body).unwrap()
}

/// Sends `raw` on a connection of its own and reads the answer until the worker closes.
fn raw_exchange(cluster: &TestCluster, raw: &str) -> Value {
    let mut s = TcpStream::connect(cluster.proxy).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert_eq!(head.split(' ').nth(1), Some("200"), "{text}");
    // A chunked reply: the JSON is the one chunk.
    let body = body.lines().find(|l| l.starts_with('{')).unwrap_or(body);
    serde_json::from_str(body).unwrap()
}

#[test]
fn http1_direct_path_says_moved_on_the_request_that_moved() {
    kill_one_and_check(|c, cookie| {
        let r = c.get("/whoami", &[("cookie", cookie)]);
        json(r.status, &r.body)
    });
}

#[test]
fn http1_general_path_says_moved_on_the_request_that_moved() {
    // HTTP/1.0 is not the direct path's: hyper's server reads it, a raw exchange sends it.
    kill_one_and_check(|c, cookie| {
        raw_exchange(
            c,
            &format!("GET /whoami HTTP/1.0\r\nHost: x\r\nCookie: {cookie}\r\n\r\n"),
        )
    });
}

#[test]
fn http1_uploads_say_moved_on_the_request_that_moved() {
    // A chunked upload goes through hyper's client.
    kill_one_and_check(|c, cookie| {
        raw_exchange(
            c,
            &format!(
                "POST /whoami HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nConnection: close\r\n\
                 Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
        )
    });
}

#[test]
fn http2_direct_exchange_says_moved_on_the_request_that_moved() {
    kill_one_and_check(|c, cookie| {
        let (status, _, body) =
            common::h2_request(c.proxy, "GET", "/whoami", &[("cookie", cookie)], b"");
        json(status, &body)
    });
}

#[test]
fn http2_general_path_says_moved_on_the_request_that_moved() {
    // A body takes the general path.
    kill_one_and_check(|c, cookie| {
        let (status, _, body) =
            common::h2_request(c.proxy, "POST", "/whoami", &[("cookie", cookie)], b"hello");
        json(status, &body)
    });
}
