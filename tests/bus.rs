//! The worker message bus with real Node workers: messages to the supervisor (and
//! `--on-message`), broadcasts between workers, the bind/unbind affinity verbs, and a worker
//! that floods garbage.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{node_workers, request, wait_until, TestCluster};

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
    direct(&c, 2, "/bus/bind?key=rotated-session");
    wait_until("key bound to worker 2", Duration::from_secs(10), || {
        (0..6).all(|_| c.whoami(&[("Cookie", "connect.sid=rotated-session")]).1["worker"] == 2)
    });
    direct(&c, 2, "/bus/unbind?key=rotated-session");
    wait_until("key forgotten", Duration::from_secs(10), || {
        c.whoami(&[("Cookie", "connect.sid=rotated-session")]).1["sticky"] == "new"
    });
}

#[test]
fn a_worker_flooding_garbage_is_cut_off_and_the_rest_goes_on() {
    let c = node_workers(2, &["--on-message", "cat > /dev/null"], &[]);
    direct(&c, 0, "/bus/garbage?n=500&big=1");
    wait_until("worker 0 disconnected", Duration::from_secs(10), || {
        direct(&c, 0, "/bus/inbox").as_array().is_some()
            && direct(&c, 0, "/bus/send?msg=x")["connected"] == false
    });
    // The supervisor and the other worker's bus are unharmed.
    direct(&c, 1, "/bus/broadcast?msg=still-here");
    assert_eq!(c.get("/whoami", &[]).status, 200);
    assert!(!c.stderr().contains("panicked"), "{}", c.logs());
}
