//! `--upstream`: workers this process does not start are routed, kept sticky, health-checked
//! and failed over exactly like spawned ones.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{wait_until, Options, TestCluster, Upstream};

#[test]
fn upstreams_are_routed_sticky_health_checked_and_failed_over() {
    let ports = common::free_ports(2);
    let (pa, pb) = (ports.first, ports.first + 1);
    drop(ports);
    let a = Upstream::start(0, pa);
    let b = Upstream::start(1, pb);
    let c = TestCluster::start(Options {
        workers: 1,
        args: [
            "--upstream",
            &format!("127.0.0.1:{pa}"),
            "--upstream",
            &format!("localhost:{pb}"),
            "--health-interval",
            "100ms",
            "--health-rise",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ..Default::default()
    });
    assert!(
        !c.stderr().contains("starting workers"),
        "nothing spawned\n{}",
        c.logs()
    );
    // Spread and sticky.
    let mut clients = Vec::new();
    for _ in 0..6 {
        let (r, json) = c.whoami(&[]);
        clients.push((r.cookie_header(), json["worker"].as_u64().unwrap()));
    }
    assert!(clients.iter().any(|(_, w)| *w == 0) && clients.iter().any(|(_, w)| *w == 1));
    for (cookie, worker) in &clients {
        assert_eq!(
            c.whoami(&[("Cookie", cookie)]).1["worker"].as_u64(),
            Some(*worker)
        );
    }
    // Upstream 0 goes away: its clients are served by 1 without an error.
    drop(a);
    for (cookie, _) in &clients {
        let r = c.get("/whoami", &[("Cookie", cookie)]);
        assert_eq!(r.status, 200, "{}\n{}", r.text(), c.logs());
        assert_eq!(r.json()["worker"], 1);
    }
    // Back: the health checks put it in rotation again and it takes new clients.
    let _a = Upstream::start(0, pa);
    wait_until(
        "upstream 0 back in rotation",
        Duration::from_secs(10),
        || c.whoami(&[]).1["worker"] == 0,
    );
    // Upstream 1 (named by host name) kept its own clients through all of it.
    for (cookie, worker) in clients.iter().filter(|(_, w)| *w == 1) {
        assert_eq!(
            c.whoami(&[("Cookie", cookie)]).1["worker"].as_u64(),
            Some(*worker)
        );
    }
    drop(b);
}

/// Refused before anything is bound: the proxy port is taken too, and the answer is still
/// the upstream (exit 2), not the port (exit 1).
#[test]
fn bad_upstreams_are_refused() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    for bad in ["nohost", "127.0.0.1:notaport", "no-such-host.invalid:80"] {
        let (err, last) = common::exit_code_2(
            &[
                "--bind",
                "127.0.0.1",
                "--proxy-port",
                &port,
                "--upstream",
                bad,
            ],
            Duration::from_secs(30),
        );
        assert!(last.contains("--upstream") && last.contains(bad), "{err}");
    }
}
