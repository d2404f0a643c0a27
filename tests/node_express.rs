//! The seed project's own usage example (Express 4, express-session's default MemoryStore,
//! passport, socket.io 4 with a session check), `examples/node-express/app.js`, behind the
//! proxy: a session lives in the one worker that logged its user in, so a page answered 200
//! and a socket.io connection accepted prove that every request of that user reached that
//! worker. The control runs the same clients with stickiness off and must see them fail.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use common::{strings, NodeRun, TestCluster};
use serde_json::Value;

const WORKERS: usize = 4;
const USERS: usize = 20;
const PAGES: usize = 10;
/// The client script's own deadline; the test kills it a little later if it hangs anyway.
const CLIENT_DEADLINE: Duration = Duration::from_secs(30);

/// Four workers of the example app (its `node_modules` installed), every one of them up.
fn express_cluster(extra_args: &[&str]) -> TestCluster {
    let example =
        common::npm_ci(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node-express"));
    common::node_cluster(&example.join("app.js"), WORKERS, extra_args, &[])
}

/// Runs `express-clients.js` against the cluster's proxy, bounded in time.
fn run_clients(cluster: &TestCluster) -> NodeRun {
    NodeRun::run(
        &common::node_modules(),
        "express-clients.js",
        &[
            cluster.url(),
            USERS.to_string(),
            PAGES.to_string(),
            CLIENT_DEADLINE.as_millis().to_string(),
        ],
        &[],
        CLIENT_DEADLINE + Duration::from_secs(10),
    )
}

fn count(s: &Value, key: &str) -> u64 {
    s[key]
        .as_u64()
        .unwrap_or_else(|| panic!("summary has no count {key:?}: {s}"))
}

/// Every user stays logged in on every page and every socket.io connection, polling and
/// WebSocket, because each of its requests reaches the worker holding its session.
#[test]
fn express_sessions_stay_on_their_worker() {
    let cluster = express_cluster(&[]);
    let run = run_clients(&cluster);
    let s = run.summary(&cluster);
    let report = || run.report(&cluster);

    let errors = strings(&s["errors"]);
    assert!(
        errors.is_empty(),
        "client errors: {errors:#?}\n{}",
        report()
    );
    assert_eq!(s["timedOut"], false, "{}", report());
    assert_eq!(count(&s, "loginsOk"), USERS as u64, "{}", report());
    assert_eq!(
        count(&s, "pages401"),
        0,
        "a page lost its session\n{}",
        report()
    );
    assert_eq!(count(&s, "pagesOther"), 0, "{}", report());
    assert_eq!(count(&s, "pagesOk"), (USERS * PAGES) as u64, "{}", report());
    assert_eq!(count(&s, "socketsFailed"), 0, "{}", report());
    assert_eq!(count(&s, "socketsOk"), (USERS * 2) as u64, "{}", report());
    assert_eq!(count(&s, "upgraded"), USERS as u64, "{}", report());
    assert_eq!(count(&s, "echoesOk"), (USERS * 4) as u64, "{}", report());
    assert_eq!(
        count(&s, "usersOnSeveralWorkers"),
        0,
        "a user answered by two workers\n{}",
        report()
    );
    assert_eq!(count(&s, "usersWithoutAffinityCookie"), 0, "{}", report());

    // The app, not the network, turned the anonymous clients away.
    assert_eq!(s["anonPage"], 401, "{}", report());
    assert_eq!(count(&s, "anonSocketsAccepted"), 0, "{}", report());
    assert_eq!(count(&s, "anonSocketsRefused"), 2, "{}", report());
    let reasons = strings(&s["anonRefusals"]);
    assert!(
        reasons.iter().all(|r| r == "unauthorized"),
        "anonymous sockets refused for {reasons:?}\n{}",
        report()
    );

    let workers: HashSet<String> = strings(&s["workers"]).into_iter().collect();
    assert!(
        workers.len() >= 3,
        "users spread over only {workers:?}\n{}",
        report()
    );
    assert!(run.status.success(), "{}", report());
}

/// The control: with stickiness off (plain round-robin) the same users are logged out on
/// most pages and their sockets are refused or broken, so the test above can tell.
#[test]
fn express_sessions_break_without_stickiness() {
    let cluster = express_cluster(&["--session-key", "none"]);
    let run = run_clients(&cluster);
    let s = run.summary(&cluster);
    let report = || run.report(&cluster);

    // Logging in works anywhere; keeping the session is what fails.
    assert_eq!(count(&s, "loginsOk"), USERS as u64, "{}", report());
    assert!(
        count(&s, "pages401") > 0,
        "no page lost its session\n{}",
        report()
    );
    assert!(
        count(&s, "socketsFailed") > 0,
        "no socket.io connection failed\n{}",
        report()
    );
    assert!(!run.status.success(), "{}", report());
}
