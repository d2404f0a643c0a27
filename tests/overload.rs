//! Load past capacity is shed, not queued: a worker with `--max-pending` requests unanswered
//! gets no more; the excess is answered `503` with `Retry-After` at once, by every front
//! (the direct HTTP/1.1 path, hyper's path for uploads, HTTP/2), the proxy's connections to
//! the worker stay at the bound, and the admitted requests succeed.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{established_on, free_ports, h2_request, node_workers, request, wait_until, Response};

/// The bound of the test.
const MAX_PENDING: usize = 4;

/// Requests the worker holds: the bound.
const HOLDERS: usize = MAX_PENDING;

/// Concurrent requests sent past the bound.
const BURST: usize = 40;

fn held(worker: SocketAddr) -> usize {
    request(worker, "GET", "/held", &[], b"")
        .map(|r| r.text().trim().parse().unwrap_or(usize::MAX))
        .unwrap_or(usize::MAX)
}

/// `r` is the proxy's overload answer: 503, `Retry-After: 1`, `{"error":"overloaded"}`.
fn assert_shed(what: &str, status: u16, retry_after: Option<&str>, body: &[u8]) {
    assert_eq!(status, 503, "{what}: {}", String::from_utf8_lossy(body));
    assert_eq!(retry_after, Some("1"), "{what}: Retry-After");
    let json: serde_json::Value = serde_json::from_slice(body).expect("a JSON answer");
    assert_eq!(json["error"], "overloaded", "{what}: {json}");
}

fn assert_shed_h1(what: &str, r: &Response) {
    assert_shed(what, r.status, r.header("retry-after"), r.text().as_bytes());
}

fn metric(admin: SocketAddr, line_start: &str) -> f64 {
    let text = request(admin, "GET", "/metrics", &[], b"")
        .expect("metrics")
        .text();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
}

#[test]
fn requests_past_max_pending_get_503_with_retry_after_and_the_admitted_succeed() {
    let mut ports = free_ports(1);
    let admin = SocketAddr::from(([127, 0, 0, 1], ports.first));
    ports.release();
    let c = node_workers(
        1,
        &[
            "--max-pending",
            &MAX_PENDING.to_string(),
            "--admin",
            &admin.to_string(),
            // No TCP health probes to count among the worker's connections.
            "--health-interval",
            "1h",
        ],
        &[],
    );
    let worker = SocketAddr::from(([127, 0, 0, 1], c.worker_port));
    let proxy = c.proxy;

    // The bound is reached: the worker holds as many requests as it may have unanswered.
    let holders: Vec<_> = (0..HOLDERS)
        .map(|_| std::thread::spawn(move || request(proxy, "GET", "/hold", &[], b"")))
        .collect();
    wait_until(
        "the worker to hold the bound",
        Duration::from_secs(20),
        || held(worker) == HOLDERS,
    );

    // Past it, every front sheds: the direct path, hyper's path (a body), HTTP/2.
    let r = request(proxy, "GET", "/whoami", &[], b"").expect("h1 GET answered");
    assert_shed_h1("h1 GET", &r);
    let r = request(proxy, "POST", "/whoami", &[], b"a body").expect("h1 POST answered");
    assert_shed_h1("h1 POST with a body", &r);
    let (status, headers, body) = h2_request(proxy, "GET", "/whoami", &[], b"");
    let retry = headers.get("retry-after").and_then(|v| v.to_str().ok());
    assert_shed("h2 GET", status, retry, &body);
    let (status, headers, body) = h2_request(proxy, "POST", "/whoami", &[], b"a body");
    let retry = headers.get("retry-after").and_then(|v| v.to_str().ok());
    assert_shed("h2 POST with a body", status, retry, &body);

    // A concurrent burst past the bound: all of it shed at once, no new worker connection.
    let burst: Vec<_> = (0..BURST)
        .map(|_| std::thread::spawn(move || request(proxy, "GET", "/whoami", &[], b"")))
        .collect();
    for r in burst {
        let r = r.join().unwrap().expect("a burst request answered");
        assert_shed_h1("burst GET", &r);
    }
    assert_eq!(
        established_on(c.worker_port),
        HOLDERS,
        "the proxy's connections to the worker stay at the bound"
    );
    assert_eq!(held(worker), HOLDERS, "nothing more reached the worker");
    assert_eq!(
        metric(admin, "sticky_cluster_refused_total{reason=\"overloaded\"}"),
        (4 + BURST) as f64
    );

    // The admitted requests succeed, and the worker takes requests again.
    request(worker, "GET", "/release", &[], b"").expect("release");
    for h in holders {
        let r = h.join().unwrap().expect("an admitted request answered");
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().ends_with("held"), "{}", r.text());
    }
    let r = request(proxy, "GET", "/whoami", &[], b"").expect("answered");
    assert_eq!(r.status, 200, "{}", r.text());
}
