//! The IP filter with real client addresses: clients connect from different loopback
//! addresses (127.0.0.1, .2, .3), allowed and refused by `--allow`/`--deny`, and a spoofed
//! X-Forwarded-For only counts from a `--trust-proxy` peer.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::time::Duration;

use common::{Response, TestCluster};

/// One request from local address `from` (any 127.x.y.z works on Linux loopback).
fn from(c: &TestCluster, from: [u8; 4], headers: &[(&str, &str)]) -> Response {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let proxy = c.proxy;
    let stream = runtime.block_on(async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((from, 0))).unwrap();
        socket.connect(proxy).await.unwrap().into_std().unwrap()
    });
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut s = stream;
    let mut head = String::from("GET /whoami HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    common::read_response(&mut BufReader::new(s)).unwrap()
}

#[test]
fn allow_mode_lets_in_only_the_listed_clients() {
    // The seed's example: ipfilter(['127.0.0.1', ['192.168.0.1', '192.168.0.200']], {mode: 'allow'})
    let c = TestCluster::demo(
        1,
        &[
            "--allow",
            "127.0.0.1",
            "--allow",
            "192.168.0.1-192.168.0.200",
            "--debug",
        ],
    );
    assert_eq!(from(&c, [127, 0, 0, 1], &[]).status, 200);
    let refused = from(&c, [127, 0, 0, 2], &[]);
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["error"], "forbidden");
    c.wait_log("refused by the IP filter", Duration::from_secs(5));
}

#[test]
fn deny_mode_refuses_the_listed_clients_cidr_and_range() {
    let c = TestCluster::demo(
        1,
        &["--deny", "127.0.0.2/32", "--deny", "127.0.0.5-127.0.0.9"],
    );
    assert_eq!(from(&c, [127, 0, 0, 1], &[]).status, 200);
    assert_eq!(from(&c, [127, 0, 0, 2], &[]).status, 403);
    assert_eq!(from(&c, [127, 0, 0, 3], &[]).status, 200);
    assert_eq!(from(&c, [127, 0, 0, 7], &[]).status, 403);
}

#[test]
fn a_spoofed_forwarded_for_never_gets_through() {
    let c = TestCluster::demo(1, &["--allow", "127.0.0.1"]);
    let spoof = [("X-Forwarded-For", "127.0.0.1")];
    assert_eq!(
        from(&c, [127, 0, 0, 2], &spoof).status,
        403,
        "untrusted peer: header ignored"
    );
}

#[test]
fn a_trusted_front_proxy_names_the_client() {
    let c = TestCluster::demo(
        1,
        &[
            "--allow",
            "10.1.0.0/16",
            "--trust-proxy",
            "127.0.0.3/32",
            "--session-key",
            "ip",
            "--no-affinity-cookie",
        ],
    );
    // From the trusted proxy: the rightmost untrusted hop is the client.
    let ok = from(
        &c,
        [127, 0, 0, 3],
        &[("X-Forwarded-For", "203.0.113.9, 10.1.2.3")],
    );
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.json()["forwarded_for"],
        "203.0.113.9, 10.1.2.3, 127.0.0.3"
    );
    let refused = from(
        &c,
        [127, 0, 0, 3],
        &[("X-Forwarded-For", "10.1.2.3, 203.0.113.9")],
    );
    assert_eq!(
        refused.status, 403,
        "the hop next to the trusted proxy decides"
    );
    // The same header from an untrusted peer counts for nothing.
    assert_eq!(
        from(&c, [127, 0, 0, 4], &[("X-Forwarded-For", "10.1.2.3")]).status,
        403
    );
}

#[test]
fn refused_websocket_upgrades_get_403_and_a_closed_connection() {
    let c = TestCluster::demo(1, &["--deny", "127.0.0.2"]);
    let r = from(
        &c,
        [127, 0, 0, 2],
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
    );
    assert_eq!(r.status, 403);
    assert_eq!(r.header("connection"), Some("close"));
}

/// A bad rule is the first thing said, before anything is bound: here the proxy port is
/// taken too, and the answer is still the rule (exit 2), not the port (exit 1).
#[test]
fn bad_rules_are_refused_with_the_rule_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    for (flag, rule) in [
        ("--allow", "10.0.0.0/33"),
        ("--deny", "localhost"),
        ("--trust-proxy", "1.2.3.4-1.2.3.1"),
    ] {
        let (err, last) = common::exit_code_2(
            &["--bind", "127.0.0.1", "--proxy-port", &port, flag, rule],
            Duration::from_secs(20),
        );
        assert!(
            last.starts_with("sticky-cluster: error:") && last.contains(rule),
            "{err}"
        );
    }
}
