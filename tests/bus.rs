//! The worker message bus with real Node workers: messages to the supervisor (and
//! `--on-message`), broadcasts between workers, the bind/unbind affinity verbs, and a worker
//! that floods garbage.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{node_workers, request, wait_until, Options, TestCluster};

/// Talks to worker `i` directly, not through the proxy.
fn direct(c: &TestCluster, i: u16, path: &str) -> serde_json::Value {
    let addr = SocketAddr::from(([127, 0, 0, 1], c.worker_port + i));
    let r = request(addr, "GET", path, &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn messages_reach_the_on_message_command_with_the_worker_id() {
    let dir = common::scratch("bus");
    let out = dir.join("messages.jsonl");
    let cmd = format!("cat >> {}", out.display());
    let c = node_workers(2, &["--on-message", &cmd, "--debug"], &[]);
    direct(&c, 1, "/bus/send?msg=hello");
    direct(&c, 0, "/bus/send?msg=world");
    wait_until("both messages piped", Duration::from_secs(10), || {
        std::fs::read_to_string(&out).is_ok_and(|s| s.lines().count() >= 2)
    });
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let hello = lines.iter().find(|m| m["data"]["text"] == "hello").unwrap();
    assert_eq!(hello["worker"], 1);
    let world = lines.iter().find(|m| m["data"]["text"] == "world").unwrap();
    assert_eq!(world["worker"], 0);
    c.wait_log("message from worker", Duration::from_secs(5));
}

#[test]
fn broadcast_reaches_every_other_worker() {
    let c = node_workers(3, &[], &[]);
    direct(&c, 0, "/bus/broadcast?msg=invalidate");
    for i in 1..3 {
        wait_until("broadcast delivered", Duration::from_secs(10), || {
            direct(&c, i, "/bus/inbox")
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["data"]["text"] == "invalidate" && m["from"] == 0)
        });
    }
    assert_eq!(
        direct(&c, 0, "/bus/inbox").as_array().unwrap().len(),
        0,
        "not echoed to the sender"
    );
}

#[test]
fn bind_and_unbind_steer_stickiness() {
    let c = node_workers(3, &["--no-affinity-cookie"], &[]);
    // The key is pinned first; the bind comes from another worker, so only the bind can
    // move it there (not round-robin luck).
    let cookie = ("Cookie", "connect.sid=rotated-session");
    let (_, first) = c.whoami(&[cookie]);
    assert_eq!(first["sticky"], "new");
    let pinned = first["worker"].as_u64().unwrap();
    let binder = (pinned as u16 + 1) % 3;
    direct(&c, binder, "/bus/bind?key=rotated-session");
    wait_until(
        "key bound to the other worker",
        Duration::from_secs(10),
        || c.whoami(&[cookie]).1["worker"] == u64::from(binder),
    );
    for _ in 0..6 {
        assert_eq!(c.whoami(&[cookie]).1["worker"], u64::from(binder));
    }
    direct(&c, binder, "/bus/unbind?key=rotated-session");
    wait_until("key forgotten", Duration::from_secs(10), || {
        c.whoami(&[("Cookie", "connect.sid=rotated-session")]).1["sticky"] == "new"
    });
}

#[test]
fn a_worker_flooding_garbage_is_cut_off_and_the_rest_goes_on() {
    let dir = common::scratch("bus-garbage");
    let out = dir.join("messages.jsonl");
    let cmd = format!("cat >> {}", out.display());
    let c = node_workers(3, &["--on-message", &cmd], &[]);
    direct(&c, 0, "/bus/garbage?n=500&big=1");
    wait_until("worker 0 disconnected", Duration::from_secs(10), || {
        direct(&c, 0, "/bus/send?msg=x")["connected"] == false
    });
    // The other workers' buses are unharmed: a broadcast from 1 reaches 2, and a message
    // from 2 reaches the supervisor.
    direct(&c, 1, "/bus/broadcast?msg=still-here");
    wait_until(
        "the broadcast reached worker 2",
        Duration::from_secs(10),
        || {
            inbox(&c, 2)
                .iter()
                .any(|m| m["data"]["text"] == "still-here" && m["from"] == 1)
        },
    );
    direct(&c, 2, "/bus/send?msg=after-the-flood");
    wait_until("worker 2's message piped", Duration::from_secs(10), || {
        std::fs::read_to_string(&out).is_ok_and(|s| s.contains("after-the-flood"))
    });
    assert!(
        inbox(&c, 0)
            .iter()
            .all(|m| m["data"]["text"] != "still-here"),
        "the cut-off worker gets nothing"
    );
    assert_eq!(c.get("/whoami", &[]).status, 200);
    assert!(!c.stderr().contains("panicked"), "{}", c.logs());
}

/// The bus messages worker `i` received so far.
fn inbox(c: &TestCluster, i: u16) -> Vec<serde_json::Value> {
    let v = direct(c, i, "/bus/inbox");
    v.as_array()
        .unwrap_or_else(|| panic!("the inbox is a JSON array: {v}"))
        .clone()
}

/// A worker with one more bus verb than `tests/node/worker.js`: `GET /send?to=N&msg=X`
/// writes `{"type":"send","to":N,...}`; `GET /inbox` lists what it received.
const SEND_WORKER: &str = r#"
const http = require('http'), net = require('net');
const inbox = [];
const bus = net.connect(process.env.STICKY_CLUSTER_IPC);
let buf = '';
bus.on('data', (d) => {
  buf += d; let i;
  while ((i = buf.indexOf('\n')) >= 0) { inbox.push(JSON.parse(buf.slice(0, i))); buf = buf.slice(i + 1); }
});
http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname === '/send') {
    const to = Number(url.searchParams.get('to'));
    bus.write(JSON.stringify({ type: 'send', to, data: { text: url.searchParams.get('msg') } }) + '\n');
  }
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify(url.pathname === '/inbox' ? inbox : { ok: true }));
}).listen(Number(process.env.PORT), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
"#;

#[test]
fn send_reaches_only_the_worker_named() {
    let c = TestCluster::start(Options {
        workers: 3,
        command: vec!["node".into(), "-e".into(), SEND_WORKER.into()],
        ..Default::default()
    });
    c.wait_log("3/3 up", Duration::from_secs(30));
    direct(&c, 0, "/send?to=2&msg=for-two");
    wait_until(
        "the message reached worker 2",
        Duration::from_secs(10),
        || {
            let got = direct(&c, 2, "/inbox");
            got.as_array().is_some_and(|a| {
                a.iter()
                    .any(|m| m["data"]["text"] == "for-two" && m["from"] == 0)
            })
        },
    );
    // A message that went to 1 or 0 would have been written before the one to 2 arrived.
    for other in [0, 1] {
        assert_eq!(
            direct(&c, other, "/inbox"),
            serde_json::json!([]),
            "worker {other} got nothing"
        );
    }
}
