//! The chat example (`examples/chat.rs`: axum + tower-sessions' in-memory store +
//! socketioxide, with sticky-cluster as master and worker in one program), run as a real
//! cluster of 2 workers on free loopback ports: its HTTP contract, sessions that never leave
//! their worker, socket.io that refuses clients without a login, chat messages that cross
//! workers over the message bus (Node socket.io clients), and a real browser (Debian's
//! chromium driven by playwright-core) that logs in with the form and chats.
//!
//! The example's binary is built by `cargo test` (as every example is) into
//! `target/debug/examples/chat`; `cargo test --test chat` alone does not build it, so this
//! test fails, saying so, when it is missing or older than its sources.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{NodeRun, Options, Response, TestCluster};
use serde_json::Value;

const WORKERS: usize = 2;
/// The Node scripts' own deadline; the test stops them a little later if they hang anyway.
const CLIENT_DEADLINE: Duration = Duration::from_secs(30);
const BROWSER_DEADLINE: Duration = Duration::from_secs(50);

/// The example's binary, next to the `sticky-cluster` binary cargo built for this test.
fn example_bin() -> PathBuf {
    let bin = Path::new(common::BIN)
        .parent()
        .unwrap()
        .join("examples")
        .join("chat");
    let rebuild = "a plain `cargo test` builds every example; `cargo test --test chat` alone \
                   does not: run `cargo build --example chat` first";
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| {
            panic!(
                "the chat example is not built ({} is missing: {e}); {rebuild}",
                bin.display()
            )
        });
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut sources = vec![root.join("chat.rs")];
    sources.extend(
        std::fs::read_dir(root.join("chat"))
            .unwrap()
            .map(|e| e.unwrap().path()),
    );
    for src in sources {
        let changed = std::fs::metadata(&src)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        assert!(
            changed <= built,
            "{} is older than {}; {rebuild}",
            bin.display(),
            src.display()
        );
    }
    bin
}

/// The chat example running as a cluster of `WORKERS`; stopped on drop.
fn chat_cluster() -> TestCluster {
    let c = TestCluster::start(Options {
        program: example_bin(),
        workers: WORKERS,
        wait_ready: false,
        ..Default::default()
    });
    // The proxy listens once every worker answered (or failed); insist on all of them.
    c.wait_log(&format!("{WORKERS}/{WORKERS} up"), Duration::from_secs(30));
    c.wait_log("proxy listening", Duration::from_secs(30));
    c
}

/// One request with an optional `Cookie` header and an optional urlencoded form body.
fn send(c: &TestCluster, method: &str, path: &str, cookie: Option<&str>, form: &str) -> Response {
    let mut headers = Vec::new();
    if let Some(cookie) = cookie {
        headers.push(("Cookie", cookie));
    }
    if !form.is_empty() {
        headers.push(("Content-Type", "application/x-www-form-urlencoded"));
    }
    c.request(method, path, &headers, form.as_bytes())
}

/// `GET /me` with a session: `(user, worker)`.
fn me(c: &TestCluster, cookie: &str) -> (String, u64) {
    let r = send(c, "GET", "/me", Some(cookie), "");
    assert_eq!(r.status, 200, "GET /me: {}\n{}", r.text(), c.logs());
    let me = r.json();
    let user = me["user"].as_str().unwrap_or_default().to_string();
    let worker = me["worker"]
        .as_u64()
        .unwrap_or_else(|| panic!("no worker in {me}"));
    (user, worker)
}

/// Logs in through `POST /login` as a fresh client (no cookies).
fn login(c: &TestCluster, name: &str) -> User {
    let r = send(
        c,
        "POST",
        "/login",
        None,
        &format!("username={name}&password=any+thing"),
    );
    assert_eq!(r.status, 303, "POST /login: {}\n{}", r.text(), c.logs());
    assert_eq!(r.header("location"), Some("/chat"));
    let set_cookie = r
        .all("set-cookie")
        .into_iter()
        .find(|v| v.starts_with("connect.sid="))
        .unwrap_or_else(|| panic!("no connect.sid cookie: {:?}", r.headers));
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    let session = format!("connect.sid={}", r.set_cookies()["connect.sid"]);
    // Everything a browser would send back: the session and the proxy's affinity cookie.
    let jar = r.cookie_header();
    let (user, worker) = me(c, &jar);
    assert_eq!(user, name);
    // The worker told the master through the bus; the library's `on_message` logged it.
    c.wait_log(
        &format!("chat: {name:?} logged in on worker {worker}"),
        Duration::from_secs(10),
    );
    User {
        name: name.to_string(),
        session,
        jar,
        worker,
    }
}

/// Alice, and Bob logged in until he is on another worker than hers.
fn two_users_on_two_workers(c: &TestCluster) -> (User, User) {
    let alice = login(c, "alice");
    for _ in 0..8 {
        let bob = login(c, "bob");
        if bob.worker != alice.worker {
            return (alice, bob);
        }
    }
    panic!(
        "bob never landed on another worker than alice's ({})\n{}",
        alice.worker,
        c.logs()
    );
}

/// A logged-in client.
struct User {
    name: String,
    /// `connect.sid=...` alone.
    session: String,
    /// Every cookie the login set, as a `Cookie` header.
    jar: String,
    worker: u64,
}

/// The run's JSON summary; panics with the whole report if the script failed.
fn passed(run: &NodeRun, c: &TestCluster) -> Value {
    let s = run.summary(c);
    assert!(
        run.status.success() && s["ok"] == true,
        "the script failed: {}\n{}",
        s["errors"],
        run.report(c)
    );
    s
}

/// True if `received` (a list of `chat` payloads) holds exactly this message.
fn has_message(received: &Value, user: &str, text: &Value, worker: u64) -> bool {
    received.as_array().is_some_and(|list| {
        list.iter()
            .any(|m| m["user"] == user && m["text"] == *text && m["worker"] == worker)
    })
}

#[test]
fn login_pages_and_sessions_stay_on_their_worker() {
    let c = chat_cluster();
    assert!(
        c.stdout().contains(&format!("chat: open {}/", c.url())),
        "the example prints its URL\n{}",
        c.logs()
    );

    // Without a session.
    let r = send(&c, "GET", "/me", None, "");
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "not logged in");
    let r = send(&c, "GET", "/chat", None, "");
    assert_eq!(r.status, 303, "the chat page needs a session");
    assert_eq!(r.header("location"), Some("/"));
    let r = send(&c, "GET", "/", None, "");
    assert_eq!(r.status, 200);
    let page = r.text();
    assert!(
        page.contains(r#"action="/login""#) && page.contains(r#"name="username""#),
        "{page}"
    );
    let r = send(&c, "POST", "/login", None, "username=+&password=x");
    assert_eq!(r.status, 400, "a blank name is refused: {}", r.text());

    // Log in: the session cookie is the proxy's default session cookie.
    let alice = login(&c, "alice");

    // 10 pages with every cookie, then 10 with the session cookie alone (the proxy learned
    // it from the login's Set-Cookie): never another worker, never a lost session.
    for cookie in [&alice.jar, &alice.session] {
        for i in 0..10 {
            let (user, worker) = me(&c, cookie);
            assert_eq!(
                (user.as_str(), worker),
                (alice.name.as_str(), alice.worker),
                "page {i} with {cookie}\n{}",
                c.logs()
            );
        }
    }
    // The chat page names the user and the worker that served it.
    let r = send(&c, "GET", "/chat", Some(&alice.jar), "");
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.text();
    assert!(page.contains(r#"<b id="user">alice</b>"#), "{page}");
    assert!(
        page.contains(&format!(r#"<span id="worker">{}</span>"#, alice.worker)),
        "{page}"
    );
    // A logged-in visitor of the login page is sent on to the chat.
    let r = send(&c, "GET", "/", Some(&alice.jar), "");
    assert_eq!((r.status, r.header("location")), (303, Some("/chat")));

    // Log out: the session is gone.
    let r = send(&c, "POST", "/logout", Some(&alice.jar), "");
    assert_eq!((r.status, r.header("location")), (303, Some("/")));
    assert_eq!(send(&c, "GET", "/me", Some(&alice.jar), "").status, 401);
}

#[test]
fn socketio_needs_a_login_and_chat_crosses_workers() {
    let node = common::node_modules();
    let c = chat_cluster();
    let (alice, bob) = two_users_on_two_workers(&c);
    let run = NodeRun::run(
        &node,
        "chat-clients.js",
        &[
            c.url(),
            alice.jar.clone(),
            bob.jar.clone(),
            CLIENT_DEADLINE.as_millis().to_string(),
        ],
        &[],
        CLIENT_DEADLINE + Duration::from_secs(10),
    );
    let s = passed(&run, &c);
    let report = || run.report(&c);

    let refused = s["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 2, "{}", report());
    for r in refused {
        assert_eq!(r["refused"], true, "{r}\n{}", report());
        assert!(
            r["message"]
                .as_str()
                .unwrap_or_default()
                .contains("not logged in"),
            "{r}\n{}",
            report()
        );
    }
    for (client, user) in [("a", &alice), ("b", &bob)] {
        let cl = &s["clients"][client];
        assert_eq!(
            cl["connected"],
            true,
            "{} connected\n{}",
            user.name,
            report()
        );
        assert_eq!(cl["transport"], "websocket", "{}\n{}", user.name, report());
        // Alice's message reached Bob on the other worker and came back to her, and Bob's
        // answer went the other way; each names the worker its sender's socket is on.
        for (sender, text, worker) in [("alice", "a", alice.worker), ("bob", "b", bob.worker)] {
            assert!(
                has_message(&cl["received"], sender, &s["texts"][text], worker),
                "{} got {sender}'s message from worker {worker}\n{}",
                user.name,
                report()
            );
        }
    }
}

#[test]
fn a_browser_logs_in_and_chats_across_workers() {
    let c = chat_cluster();
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap();
    let screenshot = target.join("chat-browser.png");
    let _ = std::fs::remove_file(&screenshot);
    let run = common::browser_run(
        "chat-browser",
        "chat-browser.js",
        &[
            c.url(),
            screenshot.display().to_string(),
            BROWSER_DEADLINE.as_millis().to_string(),
        ],
        BROWSER_DEADLINE,
    );
    let s = passed(&run, &c);
    let report = || run.report(&c);
    let (a, b) = (&s["a"], &s["b"]);
    assert_ne!(a["worker"], b["worker"], "{}", report());
    for u in [a, b] {
        assert_eq!(u["transport"], "websocket", "{}", report());
        assert_eq!(u["me"]["worker"], u["worker"], "{}", report());
    }
    let lines: Vec<&str> = s["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        lines,
        [
            format!(
                "alice (worker {}): {}",
                a["worker"],
                s["texts"]["a"].as_str().unwrap()
            ),
            format!(
                "bob (worker {}): {}",
                b["worker"],
                s["texts"]["b"].as_str().unwrap()
            ),
        ],
        "{}",
        report()
    );
    let png = std::fs::read(&screenshot)
        .unwrap_or_else(|e| panic!("no screenshot {}: {e}\n{}", screenshot.display(), report()));
    assert!(
        png.starts_with(b"\x89PNG"),
        "{} is a PNG",
        screenshot.display()
    );
    eprintln!("screenshot: {}", screenshot.display());
}
