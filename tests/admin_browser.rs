//! The admin dashboard in a real browser (Debian's chromium, driven by playwright-core):
//! served by the binary alone, live while traffic flows, and its controls (behind a
//! confirmation) drain, undrain and reload. The screenshot is kept in the target directory
//! (`target/admin-dashboard.png`).

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;

const BROWSER_DEADLINE: Duration = Duration::from_secs(80);

#[test]
fn the_dashboard_shows_the_workers_and_its_controls_work() {
    let mut port = free_ports(1);
    let admin = SocketAddr::from(([127, 0, 0, 1], port.first));
    port.release();
    let cluster = TestCluster::demo(
        3,
        &["--admin", &admin.to_string(), "--health-interval", "1h"],
    );
    wait_until("the admin listener", Duration::from_secs(10), || {
        std::net::TcpStream::connect(admin).is_ok()
    });
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap();
    let screenshot = target.join("admin-dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let run = browser_run(
        "admin-browser",
        "admin-browser.js",
        &[
            format!("http://{admin}"),
            cluster.url(),
            "3".into(),
            screenshot.display().to_string(),
            BROWSER_DEADLINE.as_millis().to_string(),
        ],
        BROWSER_DEADLINE,
    );
    let s = run.summary(&cluster);
    assert!(
        run.status.success() && s["ok"] == true,
        "the script failed: {}\n{}",
        s["errors"],
        run.report(&cluster)
    );
    assert_eq!(s["requests"], 200, "{}", run.report(&cluster));
    assert_eq!(s["requestsShown"], 200, "{}", run.report(&cluster));
    assert_eq!(s["external"], serde_json::json!([]), "no CDN");
    let png = std::fs::read(&screenshot).expect("the screenshot was saved");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    assert!(
        cluster.stderr().contains("admin: worker drained")
            || cluster.stderr().contains("drained=true"),
        "{}",
        cluster.logs()
    );
}
