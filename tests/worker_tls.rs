//! `--worker-tls`: workers that serve HTTPS themselves (as express-sticky-cluster's own
//! example does) are reached over TLS, their certificate pinned by `--worker-cert`.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::TestCluster;

/// A self-signed certificate for localhost and its key, written under a scratch dir.
fn self_signed(name: &str) -> (PathBuf, PathBuf) {
    let dir = common::scratch(name);
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.join("worker.crt"), dir.join("worker.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// Two HTTPS Node workers behind the proxy, which pins `pinned`.
fn https_workers(served: &(PathBuf, PathBuf), pinned: &Path) -> TestCluster {
    let pinned = pinned.display().to_string();
    let (cert, key) = (
        served.0.display().to_string(),
        served.1.display().to_string(),
    );
    common::node_workers(
        2,
        &["--worker-tls", "--worker-cert", &pinned],
        &[("TLS_CERT", &cert), ("TLS_KEY", &key)],
    )
}

#[test]
fn https_workers_are_reached_over_tls_and_stay_sticky() {
    let served = self_signed("worker-tls-ok");
    let cluster = https_workers(&served, &served.0);

    let login = cluster.get("/login?id=alice", &[]);
    assert_eq!(login.status, 200, "{}", cluster.logs());
    let cookies = login.cookie_header();
    let (_, first) = cluster.whoami(&[("cookie", &cookies)]);
    assert_eq!(
        first["tls"], true,
        "the worker saw a plain request: {first}"
    );
    assert_eq!(first["session"], "alice");
    for _ in 0..10 {
        let (_, again) = cluster.whoami(&[("cookie", &cookies)]);
        assert_eq!(again["worker"], first["worker"], "{again}");
        assert_eq!(again["sticky"], "kept", "{again}");
    }
    // A request with a body takes the pooled hyper client, over TLS too.
    let upload = cluster.request(
        "POST",
        "/upload",
        &[("cookie", &cookies), ("content-type", "text/plain")],
        &vec![b'x'; 200_000],
    );
    assert_eq!(upload.status, 200, "{}", cluster.logs());
    assert_eq!(upload.text(), format!("worker {}", first["worker"]));
}

#[test]
fn a_worker_certificate_that_is_not_pinned_is_refused() {
    let served = self_signed("worker-tls-served");
    let other = self_signed("worker-tls-other");
    let cluster = https_workers(&served, &other.0);

    let r = cluster.get("/whoami", &[]);
    assert_eq!(r.status, 502, "{}", r.text());
    let reason = r.json()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("TLS handshake failed"), "{reason}");
    // A certificate that is not the pinned one is a configuration error, not a dead worker:
    // nobody is taken out of rotation (the next request is refused the same way, not 503).
    let again = cluster.get("/whoami", &[]);
    assert_eq!(again.status, 502, "{}", again.text());
    assert!(
        !cluster.logs().contains("unreachable"),
        "{}",
        cluster.logs()
    );
}

#[test]
fn worker_tls_settings_are_checked_at_start() {
    let served = self_signed("worker-tls-flags");
    let cert = served.0.display().to_string();
    let t = Duration::from_secs(10);
    let (_, line) = common::exit_code_2(&["--worker-tls"], t);
    assert!(
        line.contains("--worker-tls needs exactly one of --worker-cert"),
        "{line}"
    );
    let (_, line) = common::exit_code_2(&["--worker-cert", &cert], t);
    assert!(line.contains("only apply with --worker-tls"), "{line}");
    let (_, line) = common::exit_code_2(
        &[
            "--worker-tls",
            "--worker-cert",
            &cert,
            "--worker-tls-no-verify",
        ],
        t,
    );
    assert!(line.contains("exactly one of"), "{line}");
    let (_, line) = common::exit_code_2(
        &[
            "--worker-tls",
            "--worker-tls-no-verify",
            "--health-path",
            "/h",
        ],
        t,
    );
    assert!(line.contains("--health-path"), "{line}");
    let missing = "/nonexistent/worker.crt";
    let (_, line) = common::exit_code_2(&["--worker-tls", "--worker-cert", missing], t);
    assert!(line.contains(missing), "{line}");
}
