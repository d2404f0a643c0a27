//! Which client headers reach a worker (issue 13): names with an underscore are dropped
//! unless `--allow-underscore-headers`, and a request whose `Host` (or HTTP/2
//! `:authority`) is missing, repeated or malformed is answered 400 with nothing forwarded.
//! Every front is tried: the direct HTTP/1.1 path, hyper's path (bodyless and with a
//! body), and HTTP/2 (h2c); the worker echoes the head it got.
#![allow(clippy::unwrap_used)]

mod common;

use common::{h2_request, raw_request, EchoWorker, Options, TestCluster};

fn cluster(echo: &EchoWorker, extra: &[&str]) -> TestCluster {
    let mut args = vec!["--upstream".to_string(), echo.addr.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    TestCluster::start(Options {
        workers: 1,
        args,
        ..Default::default()
    })
}

const UNDERSCORED: &[(&str, &str)] = &[
    ("X_Forwarded_For", "6.6.6.6"),
    ("X_Forwarded_Proto", "gopher"),
    ("X_Forwarded_Host", "evil.example"),
    ("X_Sticky", "forged"),
    ("Transfer_Encoding", "chunked"),
    ("Content_Length", "99"),
    ("x-plain", "kept"),
];

/// Sends the underscored headers to `path` over every front; returns the heads the worker
/// got for it, one per front.
fn heads_over_every_front(c: &TestCluster, echo: &EchoWorker, tag: &str) -> Vec<String> {
    let fields: String = UNDERSCORED
        .iter()
        .map(|(n, v)| format!("{n}: {v}\r\n"))
        .collect();
    let direct =
        format!("GET /{tag}-direct HTTP/1.1\r\nHost: x\r\n{fields}Connection: close\r\n\r\n");
    let hyper_bodyless = format!(
        "GET /{tag}-hyper HTTP/1.1\r\nHost: x\r\n{fields}Connection: close, x-other\r\n\r\n"
    );
    let hyper_upload = format!(
        "POST /{tag}-upload HTTP/1.1\r\nHost: x\r\n{fields}Connection: close\r\n\
         Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    );
    for raw in [direct, hyper_bodyless, hyper_upload] {
        let r = raw_request(c.proxy, raw.as_bytes()).unwrap();
        assert_eq!(r.status, 200, "{raw}: {}", r.text());
    }
    let (status, _, _) = h2_request(c.proxy, "GET", &format!("/{tag}-h2"), UNDERSCORED, b"");
    assert_eq!(status, 200);
    ["direct", "hyper", "upload", "h2"]
        .iter()
        .map(|front| {
            let got = echo.received(&format!("/{tag}-{front}"));
            assert_eq!(got.len(), 1, "{front}: {got:?}");
            got[0].clone()
        })
        .collect()
}

#[test]
fn underscored_header_names_are_dropped_on_every_front() {
    let echo = EchoWorker::start();
    let c = cluster(&echo, &[]);
    for head in heads_over_every_front(&c, &echo, "drop") {
        let names: Vec<&str> = head
            .lines()
            .filter_map(|l| l.split_once(':').map(|(n, _)| n))
            .collect();
        assert!(!names.iter().any(|n| n.contains('_')), "{head}");
        assert!(head.contains("x-plain: kept\r\n"), "{head}");
        assert!(head.contains("x-forwarded-proto: http\r\n"), "{head}");
    }
}

#[test]
fn allow_underscore_headers_forwards_them() {
    let echo = EchoWorker::start();
    let c = cluster(&echo, &["--allow-underscore-headers"]);
    for head in heads_over_every_front(&c, &echo, "keep") {
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("x_sticky: forged\r\n"), "{head}");
        assert!(lower.contains("x_forwarded_for: 6.6.6.6\r\n"), "{head}");
    }
}
