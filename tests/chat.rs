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

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{request, Response};
use serde_json::Value;

const WORKERS: usize = 2;
/// The Node scripts' own deadline; the test stops them a little later if they hang anyway.
const CLIENT_DEADLINE: Duration = Duration::from_secs(30);
const BROWSER_DEADLINE: Duration = Duration::from_secs(50);
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

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

/// The chat example running as a cluster; stopped (SIGTERM to its PID, then SIGKILL) on drop.
struct ChatCluster {
    child: Option<Child>,
    proxy: SocketAddr,
    dir: PathBuf,
    cmdline: String,
}

impl ChatCluster {
    fn start() -> Self {
        let bin = example_bin();
        // The proxy, the workers, and their spare ports for rolling restarts.
        let mut ports = common::free_ports(1 + 2 * WORKERS);
        let proxy_port = ports.first;
        let dir = common::scratch("chat");
        let args: Vec<String> = vec![
            "--workers".into(),
            WORKERS.to_string(),
            "--proxy-port".into(),
            proxy_port.to_string(),
            "--worker-port".into(),
            (proxy_port + 1).to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--delay".into(),
            "0s".into(),
            "--secret-file".into(),
            dir.join("affinity.key").display().to_string(),
        ];
        let mut cmd = Command::new(&bin);
        cmd.args(&args)
            .env_remove("STICKY_CLUSTER_SECRET")
            .env_remove("STICKY_CLUSTER_ROLE")
            .env_remove("STICKY_CLUSTER_LOG")
            .env_remove("STICKY_CLUSTER_IPC")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap());
        ports.release();
        let cmdline = format!("{} {}", bin.display(), args.join(" "));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmdline}: {e}"));
        let cluster = Self {
            child: Some(child),
            proxy: SocketAddr::from(([127, 0, 0, 1], proxy_port)),
            dir,
            cmdline,
        };
        // The proxy listens once every worker answered (or failed); insist on all of them.
        cluster.wait_log(&format!("{WORKERS}/{WORKERS} up"), Duration::from_secs(30));
        cluster.wait_log("proxy listening", Duration::from_secs(30));
        cluster
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    fn logs(&self) -> String {
        format!(
            "command: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.read("stdout"),
            self.read("stderr")
        )
    }

    fn wait_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.read("stderr").contains(needle) {
            if self.child.as_ref().is_some_and(|c| !common::alive(c.id())) {
                panic!("the chat example exited early\n{}", self.logs());
            }
            if Instant::now() > deadline {
                panic!("the log never said {needle:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.proxy)
    }

    fn request(&self, method: &str, path: &str, cookie: Option<&str>, form: &str) -> Response {
        let mut headers = Vec::new();
        if let Some(c) = cookie {
            headers.push(("Cookie", c));
        }
        if !form.is_empty() {
            headers.push(("Content-Type", "application/x-www-form-urlencoded"));
        }
        request(self.proxy, method, path, &headers, form.as_bytes())
            .unwrap_or_else(|e| panic!("{method} {path} failed: {e}\n{}", self.logs()))
    }

    /// `GET /me` with a session: `(user, worker)`.
    fn me(&self, cookie: &str) -> (String, u64) {
        let r = self.request("GET", "/me", Some(cookie), "");
        assert_eq!(r.status, 200, "GET /me: {}\n{}", r.text(), self.logs());
        let me = r.json();
        let user = me["user"].as_str().unwrap_or_default().to_string();
        let worker = me["worker"]
            .as_u64()
            .unwrap_or_else(|| panic!("no worker in {me}"));
        (user, worker)
    }

    /// Logs in through `POST /login` as a fresh client (no cookies).
    fn login(&self, name: &str) -> User {
        let r = self.request(
            "POST",
            "/login",
            None,
            &format!("username={name}&password=any+thing"),
        );
        assert_eq!(r.status, 303, "POST /login: {}\n{}", r.text(), self.logs());
        assert_eq!(r.header("location"), Some("/chat"));
        let set_cookie = r
            .all("set-cookie")
            .into_iter()
            .find(|v| v.starts_with("connect.sid="))
            .unwrap_or_else(|| panic!("no connect.sid cookie: {:?}", r.headers));
        assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
        let cookies = r.set_cookies();
        let session = format!("connect.sid={}", cookies["connect.sid"]);
        // Everything a browser would send back: the session and the proxy's affinity cookie.
        let jar = cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let (user, worker) = self.me(&jar);
        assert_eq!(user, name);
        User {
            name: name.to_string(),
            session,
            jar,
            worker,
        }
    }

    /// Alice, and Bob logged in until he is on another worker than hers.
    fn two_users_on_two_workers(&self) -> (User, User) {
        let alice = self.login("alice");
        for _ in 0..8 {
            let bob = self.login("bob");
            if bob.worker != alice.worker {
                return (alice, bob);
            }
        }
        panic!(
            "bob never landed on another worker than alice's ({})\n{}",
            alice.worker,
            self.logs()
        );
    }
}

impl Drop for ChatCluster {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop(child, Duration::from_secs(15));
        }
    }
}

/// SIGTERM to the child's PID, SIGKILL if it is still there after `grace`; always reaped.
fn stop(mut child: Child, grace: Duration) -> ExitStatus {
    if let Ok(Some(status)) = child.try_wait() {
        return status;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().unwrap()
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

/// What one run of a Node script printed.
struct NodeRun {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl NodeRun {
    /// Runs `node SCRIPT ARGS` in `dir`, stopped by PID past `deadline`.
    fn run(
        dir: &Path,
        script: &str,
        args: &[String],
        env: &[(&str, &Path)],
        deadline: Duration,
    ) -> Self {
        let out = common::scratch("chat-node");
        let started = Instant::now();
        let mut cmd = Command::new("node");
        cmd.arg(dir.join(script))
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(out.join("stdout")).unwrap())
            .stderr(std::fs::File::create(out.join("stderr")).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node (is Node.js installed?): {e}"));
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > deadline {
                // SIGTERM first: playwright then closes the browser it launched.
                break stop(child, Duration::from_secs(5));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            status,
            stdout: std::fs::read_to_string(out.join("stdout")).unwrap_or_default(),
            stderr: std::fs::read_to_string(out.join("stderr")).unwrap_or_default(),
            elapsed: started.elapsed(),
        }
    }

    fn report(&self, cluster: &ChatCluster) -> String {
        format!(
            "node: {} after {:?}\n--- node stdout ---\n{}\n--- node stderr ---\n{}\n--- cluster ---\n{}",
            self.status,
            self.elapsed,
            self.stdout,
            self.stderr,
            cluster.logs()
        )
    }

    /// The JSON summary (the last line of stdout); panics with the whole report if the run
    /// failed.
    fn summary(&self, cluster: &ChatCluster) -> Value {
        let line = self.stdout.lines().last().unwrap_or_default();
        let s: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("no JSON summary ({e})\n{}", self.report(cluster)));
        assert!(
            self.status.success() && s["ok"] == true,
            "the script failed: {}\n{}",
            s["errors"],
            self.report(cluster)
        );
        s
    }
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
    let c = ChatCluster::start();
    assert!(
        c.read("stdout")
            .contains(&format!("chat: open {}/", c.url())),
        "the example prints its URL\n{}",
        c.logs()
    );

    // Without a session.
    let r = c.request("GET", "/me", None, "");
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "not logged in");
    let r = c.request("GET", "/chat", None, "");
    assert_eq!(r.status, 303, "the chat page needs a session");
    assert_eq!(r.header("location"), Some("/"));
    let r = c.request("GET", "/", None, "");
    assert_eq!(r.status, 200);
    let page = r.text();
    assert!(
        page.contains(r#"action="/login""#) && page.contains(r#"name="username""#),
        "{page}"
    );
    let r = c.request("POST", "/login", None, "username=+&password=x");
    assert_eq!(r.status, 400, "a blank name is refused: {}", r.text());

    // Log in: the session cookie is the proxy's default session cookie.
    let alice = c.login("alice");

    // 10 pages with every cookie, then 10 with the session cookie alone (the proxy learned
    // it from the login's Set-Cookie): never another worker, never a lost session.
    for cookie in [&alice.jar, &alice.session] {
        for i in 0..10 {
            let (user, worker) = c.me(cookie);
            assert_eq!(
                (user.as_str(), worker),
                (alice.name.as_str(), alice.worker),
                "page {i} with {cookie}\n{}",
                c.logs()
            );
        }
    }
    // The chat page names the user and the worker that served it.
    let r = c.request("GET", "/chat", Some(&alice.jar), "");
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.text();
    assert!(page.contains(r#"<b id="user">alice</b>"#), "{page}");
    assert!(
        page.contains(&format!(r#"<span id="worker">{}</span>"#, alice.worker)),
        "{page}"
    );
    // A logged-in visitor of the login page is sent on to the chat.
    let r = c.request("GET", "/", Some(&alice.jar), "");
    assert_eq!((r.status, r.header("location")), (303, Some("/chat")));

    // Log out: the session is gone.
    let r = c.request("POST", "/logout", Some(&alice.jar), "");
    assert_eq!((r.status, r.header("location")), (303, Some("/")));
    assert_eq!(c.request("GET", "/me", Some(&alice.jar), "").status, 401);
}

#[test]
fn socketio_needs_a_login_and_chat_crosses_workers() {
    let node = common::node_modules();
    let c = ChatCluster::start();
    let (alice, bob) = c.two_users_on_two_workers();
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
    let s = run.summary(&c);
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
        assert!(
            has_message(&cl["received"], "alice", &s["texts"]["a"], alice.worker),
            "{} got alice's message from worker {}\n{}",
            user.name,
            alice.worker,
            report()
        );
        assert!(
            has_message(&cl["received"], "bob", &s["texts"]["b"], bob.worker),
            "{} got bob's message from worker {}\n{}",
            user.name,
            bob.worker,
            report()
        );
    }
}

/// `tests/browser/node_modules` (playwright-core), installed once with `npm ci` under a lock.
fn browser_modules() -> PathBuf {
    let dir = common::tests_dir().join("browser");
    let lock = dir.join(".npm-install.lock");
    let deadline = Instant::now() + Duration::from_secs(300);
    let guard = loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(f) => break f,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("could not take {}: {e}", lock.display()),
        }
    };
    let ok = dir.join("node_modules/.package-lock.json").exists() || {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status();
        matches!(status, Ok(s) if s.success())
    };
    drop(guard);
    let _ = std::fs::remove_file(&lock);
    assert!(ok, "npm ci in {} failed", dir.display());
    dir
}

#[test]
fn a_browser_logs_in_and_chats_across_workers() {
    let chromium =
        std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from(DEFAULT_CHROMIUM), PathBuf::from);
    assert!(
        chromium.exists(),
        "chromium is not installed ({} is missing): run `apt-get install -y chromium` \
         (CI installs it)",
        chromium.display()
    );
    let browser = browser_modules();
    let c = ChatCluster::start();
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap();
    let screenshot = target.join("chat-browser.png");
    let _ = std::fs::remove_file(&screenshot);
    // Playwright makes the browser's fresh --user-data-dir in TMPDIR; keep it (and
    // chromium's caches) in a scratch directory.
    let tmp = common::scratch("chat-browser");
    let run = NodeRun::run(
        &browser,
        "chat-browser.js",
        &[
            c.url(),
            screenshot.display().to_string(),
            BROWSER_DEADLINE.as_millis().to_string(),
        ],
        &[
            ("TMPDIR", &tmp),
            ("XDG_CONFIG_HOME", &tmp),
            ("XDG_CACHE_HOME", &tmp),
            ("CHROMIUM", &chromium),
        ],
        BROWSER_DEADLINE + Duration::from_secs(10),
    );
    let s = run.summary(&c);
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
