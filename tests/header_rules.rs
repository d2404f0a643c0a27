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
    heads_with(c, echo, tag, UNDERSCORED)
}

/// Sends `sent` to `/{tag}-{front}` over every front; returns the heads the worker got,
/// one per front.
fn heads_with(c: &TestCluster, echo: &EchoWorker, tag: &str, sent: &[(&str, &str)]) -> Vec<String> {
    let fields: String = sent.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
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
    let (status, _, _) = h2_request(c.proxy, "GET", &format!("/{tag}-h2"), sent, b"");
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

/// Several `X-Forwarded-For` lines mean their values joined (RFC 9110 5.3), as HAProxy's
/// `option forwardfor` sends them: the worker gets one line with all of them, then the
/// peer. Only the first line was kept before (the real client's address was lost).
#[test]
fn repeated_x_forwarded_for_lines_are_joined_on_every_front() {
    let echo = EchoWorker::start();
    let c = cluster(&echo, &[]);
    let sent = [
        ("X-Forwarded-For", "6.6.6.1"),
        ("X-Forwarded-For", "3.3.3.3"),
    ];
    for head in heads_with(&c, &echo, "xff", &sent) {
        let lines: Vec<&str> = head
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("x-forwarded-for:"))
            .collect();
        assert_eq!(
            lines,
            ["x-forwarded-for: 6.6.6.1, 3.3.3.3, 127.0.0.1"],
            "{head}"
        );
    }
}

/// An absolute-form target's authority replaces the `Host` (RFC 9112 3.2.2): the worker
/// gets the path and the target's host, not the client's other `Host`. One whose authority
/// is not host[:port] is a 400 and reaches nobody.
#[test]
fn an_absolute_target_names_the_host_the_worker_sees() {
    let echo = EchoWorker::start();
    let c = cluster(&echo, &[]);
    let raw = b"GET http://good.example:8080/abs?q=1 HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n";
    let r = raw_request(c.proxy, raw).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let got = echo.received("/abs?q=1");
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("GET /abs?q=1 HTTP/1.1\r\n"),
        "{}",
        got[0]
    );
    assert!(got[0].contains("host: good.example:8080\r\n"), "{}", got[0]);
    assert!(!got[0].contains("other.example"), "{}", got[0]);
    let userinfo =
        b"GET http://u@good.example/ui HTTP/1.1\r\nHost: good.example\r\nConnection: close\r\n\r\n";
    let r = raw_request(c.proxy, userinfo).unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(echo.received("/ui").is_empty());
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

/// RFC 9112 3.2 over HTTP/1.1, on the direct path's candidates and on hyper's path (a
/// `Connection` token hands a request over): exactly 400, and the worker gets nothing.
#[test]
fn a_missing_repeated_or_malformed_host_is_a_400_and_nothing_is_forwarded() {
    let echo = EchoWorker::start();
    let c = cluster(&echo, &[]);
    let cases = [
        ("two", "Host: a\r\nHost: b\r\n"),
        ("none", ""),
        ("userinfo", "Host: u@evil.com x\r\n"),
        ("empty", "Host: \r\n"),
        ("conn", "Host: a\r\nConnection: host\r\n"),
        ("badport", "Host: a:8o\r\n"),
    ];
    for (tag, fields) in cases {
        for via in ["direct", "hyper"] {
            let extra = if via == "hyper" {
                "Connection: x-other\r\n"
            } else {
                ""
            };
            let raw = format!("GET /host-{tag}-{via} HTTP/1.1\r\n{fields}{extra}\r\n");
            let r = raw_request(c.proxy, raw.as_bytes()).unwrap();
            assert_eq!(r.status, 400, "{raw:?}: {}", r.text());
            assert_eq!(r.json()["error"], "bad_request", "{raw:?}");
            assert!(r.text().contains("Host"), "{raw:?}: {}", r.text());
        }
    }
    // Good hosts pass, on both paths; HTTP/1.0 may send none.
    for (tag, host) in [("name", "example.com:8080"), ("v6", "[::1]:80")] {
        for extra in ["", "Connection: x-other\r\n"] {
            let raw = format!("GET /host-ok-{tag} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n");
            let r = raw_request(c.proxy, raw.as_bytes()).unwrap();
            assert_eq!(r.status, 200, "{raw:?}: {}", r.text());
        }
    }
    let r = raw_request(c.proxy, b"GET /host-ok-http10 HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let heads = echo.heads.lock().unwrap().clone();
    let leaked: Vec<&String> = heads.iter().filter(|h| !h.contains("/host-ok-")).collect();
    assert!(leaked.is_empty(), "forwarded: {leaked:?}");
    assert_eq!(heads.len(), 5, "{heads:?}");
}

/// A `--trust-proxy` front that ended TLS says so in `X-Forwarded-Proto` (and names the
/// host it was asked for in `X-Forwarded-Host`): the worker gets its values, so an express
/// app behind it still sees `req.secure` and sets its `secure` session cookie. A front that
/// appends its line to a client's forged one is read by its own, the last. Anyone else's
/// are replaced by what the proxy saw. Both were replaced before, trusted or not. The
/// forwarding fields the proxy does not set (`Forwarded`, `X-Real-IP`, other
/// `X-Forwarded-*`) pass from a trusted front only: they reached the worker from anyone.
#[test]
fn a_trusted_front_says_how_the_client_came_and_others_cannot() {
    let echo = EchoWorker::start();
    let sent = [
        ("X-Forwarded-Proto", "gopher"),
        ("X-Forwarded-Host", "forged.example"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "app.example"),
        ("Forwarded", "for=6.6.6.6;proto=https;host=evil.example"),
        ("X-Real-IP", "6.6.6.6"),
        ("X-Forwarded-Ssl", "on"),
        ("X-Forwarded-Port", "443"),
    ];
    // What only a trusted front may say (Rack reads `Forwarded` and `X-Forwarded-Ssl`
    // before anything else, and many apps `X-Real-IP`).
    let front_only = [
        "forwarded:",
        "x-real-ip:",
        "x-forwarded-ssl:",
        "x-forwarded-port:",
    ];
    let forwarded = |head: &str, name: &str| -> Vec<String> {
        head.lines()
            .filter(|l| l.to_ascii_lowercase().starts_with(name))
            .map(str::to_string)
            .collect()
    };
    let trusting = cluster(&echo, &["--trust-proxy", "127.0.0.1"]);
    for head in heads_with(&trusting, &echo, "trusted", &sent) {
        let proto = forwarded(&head, "x-forwarded-proto:");
        assert_eq!(proto, ["x-forwarded-proto: https"], "{head}");
        let host = forwarded(&head, "x-forwarded-host:");
        assert_eq!(host, ["x-forwarded-host: app.example"], "{head}");
        for name in front_only {
            assert_eq!(forwarded(&head, name).len(), 1, "{name} {head}");
        }
    }
    drop(trusting);
    let doubting = cluster(&echo, &["--trust-proxy", "10.0.0.0/8"]);
    for head in heads_with(&doubting, &echo, "doubted", &sent) {
        let proto = forwarded(&head, "x-forwarded-proto:");
        assert_eq!(proto, ["x-forwarded-proto: http"], "{head}");
        // The Host the client sent (HTTP/2's helper sends its :authority).
        let sent_host = forwarded(&head, "host:")
            .concat()
            .replacen("host", "x-forwarded-host", 1);
        let host = forwarded(&head, "x-forwarded-host:");
        assert_eq!(host, [sent_host], "{head}");
        for name in front_only {
            assert_eq!(forwarded(&head, name), Vec::<String>::new(), "{head}");
        }
    }
}
