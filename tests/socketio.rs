//! socket.io v4 (Node, from npm) through the proxy: in-memory workers refuse a request for
//! a session they do not hold ("Session ID unknown"), so every round trip answered proves
//! the proxy kept each engine.io session on its worker, over long-polling and across the
//! WebSocket upgrade, with and without cookies.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{strings, NodeRun, TestCluster};

const WORKERS: usize = 4;
const POLLING: usize = 20;
const UPGRADING: usize = 20;
const ROUND_TRIPS: usize = 6;
/// The client script's own deadline; the test kills it a little later if it hangs anyway.
const CLIENT_DEADLINE: Duration = Duration::from_secs(30);

/// A cluster of socket.io workers, every one of them up.
fn socketio_cluster(extra_args: &[&str]) -> TestCluster {
    let script = common::node_modules().join("socketio-server.js");
    common::node_cluster(&script, WORKERS, extra_args, &[])
}

/// Runs `socketio-clients.js` against the cluster's proxy, bounded in time.
fn run_clients(cluster: &TestCluster, cookies: bool) -> NodeRun {
    NodeRun::run(
        &common::node_modules(),
        "socketio-clients.js",
        &[
            cluster.url(),
            POLLING.to_string(),
            UPGRADING.to_string(),
            if cookies { "on" } else { "off" }.to_string(),
            ROUND_TRIPS.to_string(),
            CLIENT_DEADLINE.as_millis().to_string(),
        ],
        &[],
        CLIENT_DEADLINE + Duration::from_secs(10),
    )
}

/// Every client kept its session: all round trips answered, no error, every upgrade done.
fn assert_all_sessions_kept(cookies: bool) {
    let cluster = socketio_cluster(&[]);
    let run = run_clients(&cluster, cookies);
    let s = run.summary(&cluster);
    let report = || run.report(&cluster);

    let errors = strings(&s["errors"]);
    assert!(
        errors.is_empty(),
        "client errors: {errors:#?}\n{}",
        report()
    );
    assert_eq!(s["sessionIdUnknown"], 0, "{}", report());
    assert_eq!(s["timedOut"], false, "{}", report());
    let expected = (POLLING + UPGRADING) * ROUND_TRIPS;
    assert_eq!(s["expectedRoundTrips"], expected, "{}", report());
    assert_eq!(
        s["roundTrips"],
        expected,
        "every round trip answered\n{}",
        report()
    );
    assert_eq!(s["ok"], POLLING + UPGRADING, "{}", report());
    assert_eq!(s["failed"], 0, "{}", report());
    assert_eq!(s["allUpgraded"], true, "{}", report());
    assert_eq!(s["upgraded"], UPGRADING, "{}", report());
    assert_eq!(
        s["clientsOnSeveralWorkers"],
        0,
        "a session answered by two workers\n{}",
        report()
    );
    assert!(run.status.success(), "{}", report());

    let workers: HashSet<String> = strings(&s["workers"]).into_iter().collect();
    assert!(
        workers.len() >= 3,
        "clients spread over only {workers:?}\n{}",
        report()
    );

    if cookies {
        // The cookie jar works: after the handshake every request carried the affinity
        // cookie, and each worker's clients hold that worker's token (and only theirs).
        assert_eq!(s["acksWithoutCookie"], 0, "{}", report());
        assert_eq!(s["acksWithCookie"], expected, "{}", report());
        let by_worker = s["cookiesByWorker"].as_object().unwrap();
        let mut tokens = HashSet::new();
        for w in &workers {
            let t = strings(&by_worker[w.as_str()]);
            assert_eq!(
                t.len(),
                1,
                "worker {w} seen with tokens {t:?}\n{}",
                report()
            );
            assert_eq!(t[0].len(), 32, "{}", report());
            assert!(
                tokens.insert(t[0].clone()),
                "two workers share a token\n{}",
                report()
            );
        }
    } else {
        assert_eq!(
            s["acksWithCookie"],
            0,
            "a cookie was sent with cookies off\n{}",
            report()
        );
    }

    // The workers agree: none refused a request.
    assert!(
        !cluster.stderr().contains("connection_error"),
        "a worker refused a socket.io request\n{}",
        report()
    );
}

#[test]
fn socketio_sessions_stay_on_their_worker_with_cookies() {
    assert_all_sessions_kept(true);
}

#[test]
fn socketio_sessions_stay_on_their_worker_without_cookies() {
    assert_all_sessions_kept(false);
}

/// The control: with stickiness off (plain round-robin) the same clients break, so the tests
/// above can tell a sticky proxy from one that is not.
#[test]
fn socketio_sessions_break_without_stickiness() {
    let cluster = socketio_cluster(&["--session-key", "none"]);
    let run = run_clients(&cluster, false);
    let s = run.summary(&cluster);
    let report = || run.report(&cluster);
    assert!(s["failed"].as_u64().unwrap() > 0, "{}", report());
    assert!(
        s["sessionIdUnknown"].as_u64().unwrap() > 0,
        "clients saw no \"Session ID unknown\"\n{}",
        report()
    );
    assert!(
        cluster.stderr().contains("message=Session ID unknown"),
        "workers logged no \"Session ID unknown\"\n{}",
        report()
    );
    assert!(!run.status.success(), "{}", report());
}
