//! Supervisor rules with real processes: respawn, failover while a worker is down, clean
//! stop with no process left behind, COMMAND mode.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{alive, kill, wait_until, Options, TestCluster};

/// Pins one client per worker; returns worker id -> (cookie header, pid).
fn pin_clients(c: &TestCluster) -> HashMap<u64, (String, u64)> {
    let mut pins = HashMap::new();
    for _ in 0..(c.workers * 3) {
        let (r, json) = c.whoami(&[]);
        pins.entry(json["worker"].as_u64().unwrap())
            .or_insert((r.cookie_header(), json["pid"].as_u64().unwrap()));
    }
    assert_eq!(pins.len(), c.workers, "every worker got a client");
    pins
}

#[test]
fn killed_worker_is_respawned_and_its_clients_are_served_meanwhile() {
    let c = TestCluster::demo(3, &[]);
    let pins = pin_clients(&c);
    let (victim_cookie, victim_pid) = pins[&1].clone();
    kill("KILL", victim_pid as u32);
    c.wait_log("worker died", Duration::from_secs(10));
    // Meanwhile (and after), the victim's client is answered: by a live worker while 1 is down.
    let (_, json) = c.whoami(&[("Cookie", &victim_cookie)]);
    let moved_to = json["worker"].as_u64().unwrap();
    assert!(json["pid"].as_u64().unwrap() != victim_pid);
    // The others never notice.
    for (w, (cookie, pid)) in &pins {
        if *w != 1 {
            let (_, json) = c.whoami(&[("Cookie", cookie)]);
            assert_eq!(json["worker"].as_u64().unwrap(), *w);
            assert_eq!(json["pid"].as_u64().unwrap(), *pid);
        }
    }
    c.wait_log("worker back up", Duration::from_secs(20));
    let stderr = c.stderr();
    assert!(
        stderr.contains("signal 9 (SIGKILL)"),
        "the log says how it died\n{stderr}"
    );
    // A client moved once stays where it went, even when 1 is back.
    if moved_to != 1 {
        for _ in 0..3 {
            let (_, json) = c.whoami(&[("Cookie", &victim_cookie)]);
            assert_eq!(json["worker"].as_u64().unwrap(), moved_to);
        }
    }
    // The respawned worker 1 is on the same port and takes new clients.
    wait_until(
        "new clients reach worker 1 again",
        Duration::from_secs(10),
        || c.whoami(&[]).1["worker"] == 1,
    );
}

#[test]
fn no_respawn_leaves_a_dead_worker_down_and_routes_around_it() {
    let c = TestCluster::demo(2, &["--no-respawn"]);
    let pins = pin_clients(&c);
    kill("KILL", pins[&0].1 as u32);
    c.wait_log("worker died", Duration::from_secs(10));
    for _ in 0..6 {
        assert_eq!(c.whoami(&[]).1["worker"], 1, "only worker 1 is left");
    }
    let (_, json) = c.whoami(&[("Cookie", &pins[&0].0)]);
    assert_eq!(json["worker"], 1);
    assert_eq!(json["sticky"], "moved", "the app is told affinity broke");
    assert!(!c.stderr().contains("restarting worker"));
}

#[test]
fn sigterm_stops_everything_and_leaves_no_process_behind() {
    let mut c = TestCluster::demo(3, &[]);
    let pids: Vec<u32> = pin_clients(&c).values().map(|(_, p)| *p as u32).collect();
    assert!(pids.iter().all(|&p| alive(p)));
    c.signal("TERM");
    let status = c.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", c.logs());
    for pid in pids {
        wait_until("worker to be gone", Duration::from_secs(5), || !alive(pid));
    }
    assert!(c.stderr().contains("all workers stopped"));
}

#[test]
fn sigint_and_sigquit_stop_too() {
    for sig in ["INT", "QUIT"] {
        let mut c = TestCluster::demo(1, &[]);
        let pid = c.whoami(&[]).1["pid"].as_u64().unwrap() as u32;
        c.signal(sig);
        assert_eq!(
            c.wait_exit(Duration::from_secs(20)).code(),
            Some(0),
            "{sig}"
        );
        wait_until("worker to be gone", Duration::from_secs(5), || !alive(pid));
    }
}

#[test]
fn sighup_does_not_kill_the_supervisor() {
    let c = TestCluster::demo(1, &[]);
    c.signal("HUP");
    c.wait_log("SIGHUP", Duration::from_secs(5));
    assert_eq!(c.get("/whoami", &[]).status, 200);
}

#[test]
fn killed_supervisor_takes_its_workers_with_it() {
    let mut c = TestCluster::demo(2, &[]);
    let pids: Vec<u32> = pin_clients(&c).values().map(|(_, p)| *p as u32).collect();
    kill("KILL", c.pid());
    c.wait_exit(Duration::from_secs(5));
    for pid in pids {
        wait_until("orphan worker to die", Duration::from_secs(5), || {
            !alive(pid)
        });
    }
}

#[test]
fn command_workers_get_port_and_id_and_prefixed_output() {
    let c = common::node_workers(2, &[], &[]);
    for i in 0..2 {
        c.wait_log(
            &format!("worker {i} ready on :{}", c.worker_port + i),
            Duration::from_secs(5),
        );
    }
    let out = c.stdout();
    assert!(
        out.contains(&format!(
            "[worker 1] worker 1 listening on {}",
            c.worker_port + 1
        )),
        "{out}"
    );
    // A worker that exits on its own is reported with its code and comes back.
    let pins = pin_clients(&c);
    let r = c.get("/exit", &[("Cookie", &pins[&0].0)]);
    assert_eq!(r.status, 200);
    c.wait_log("exit code 3", Duration::from_secs(10));
    c.wait_log("worker back up", Duration::from_secs(20));
}

#[test]
fn workers_that_never_listen_are_reported_and_the_cluster_does_not_start() {
    let mut c = TestCluster::start(Options {
        workers: 2,
        command: vec!["sleep".into(), "30".into()],
        args: vec![
            "--ready-timeout".into(),
            "500ms".into(),
            "--no-respawn".into(),
        ],
        wait_ready: false,
        ..Default::default()
    });
    let status = c.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1));
    let stderr = c.stderr();
    assert!(stderr.contains("did not listen on port"), "{stderr}");
    assert!(
        stderr.contains("process.env.PORT"),
        "says what to check: {stderr}"
    );
}
