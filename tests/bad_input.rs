//! Bad input: one clear line and a non-zero exit (never a panic, never a stray worker);
//! malformed client requests get a 4xx and the proxy stays up.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::time::Duration;

use common::{
    free_ports, raw_request, read_response, run_to_exit, EchoWorker, Options, TestCluster,
};

const T: Duration = Duration::from_secs(20);

/// Runs with `args` and checks: exit `code`, one `error:` line on stderr containing every
/// one of `needles`, and no panic text.
fn refused(args: &[&str], code: i32, needles: &[&str]) {
    let (status, _, err) = run_to_exit(args, T);
    assert_eq!(status.code(), Some(code), "{args:?}\n{err}");
    let lines: Vec<_> = err
        .lines()
        .filter(|l| l.contains("sticky-cluster: error:"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one error line for {args:?}:\n{err}"
    );
    assert_eq!(
        err.lines().last(),
        Some(lines[0]),
        "the error is the last word"
    );
    for n in needles {
        assert!(
            lines[0].contains(n),
            "{args:?}: {n:?} missing from {:?}",
            lines[0]
        );
    }
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
}

#[test]
fn unknown_flag() {
    refused(&["--frobnicate"], 2, &["--frobnicate"]);
}

#[test]
fn bad_duration() {
    refused(&["--delay", "10"], 2, &["\"10\"", "delay", "1500ms"]);
    refused(&["--session-ttl", "soon"], 2, &["\"soon\"", "session-ttl"]);
}

#[test]
fn zero_workers_and_bad_numbers() {
    refused(&["--workers", "0"], 2, &["--workers", "at least 1"]);
    refused(&["--workers", "-3"], 2, &["-3"]);
    refused(&["--session-max", "0"], 2, &["--session-max"]);
    refused(
        &["--body-timeout", "0s"],
        2,
        &["--body-timeout", "longer than 0"],
    );
}

#[test]
fn ports_out_of_range() {
    refused(&["--proxy-port", "70000"], 2, &["70000"]);
    refused(
        &[
            "--worker-port",
            "65535",
            "--workers",
            "2",
            "--proxy-port",
            "8080",
        ],
        2,
        &["65535", "--worker-port"],
    );
    refused(
        &[
            "--worker-port",
            "9000",
            "--workers",
            "4",
            "--proxy-port",
            "9002",
        ],
        2,
        &["9002", "collides"],
    );
}

#[test]
fn bad_session_key_and_cookie_names() {
    refused(&["--session-key", "body:x"], 2, &["body:x", "cookie:NAME"]);
    refused(&["--session-cookie", "a;b"], 2, &["a;b"]);
}

/// `refused` for `--bind 127.0.0.1`, the proxy on port `first`, `-w WORKERS` from `first + 1`,
/// then `rest`.
fn refused_on_ports(first: u16, workers: &str, rest: &[&str], code: i32, needles: &[&str]) {
    let proxy = first.to_string();
    let worker_port = (first + 1).to_string();
    let mut args = vec![
        "--bind",
        "127.0.0.1",
        "--proxy-port",
        &proxy,
        "--worker-port",
        &worker_port,
        "-w",
        workers,
    ];
    args.extend_from_slice(rest);
    refused(&args, code, needles);
}

#[test]
fn proxy_port_in_use_starts_no_worker() {
    let ports = free_ports(3);
    let proxy = ports.first.to_string();
    // `ports` still holds the proxy port bound.
    refused_on_ports(
        ports.first,
        "2",
        &[],
        1,
        &[&proxy, "already in use", "--proxy-port"],
    );
    drop(ports);
}

#[test]
fn worker_port_in_use() {
    // Released ports may be taken by a test running beside this one before they are bound
    // again here: then another run of ports.
    let (ports, _hold) = (0..10)
        .find_map(|_| {
            let mut ports = free_ports(3);
            ports.release();
            let hold = std::net::TcpListener::bind(("127.0.0.1", ports.first + 2)).ok()?;
            Some((ports, hold))
        })
        .expect("a free run of ports");
    refused_on_ports(
        ports.first,
        "2",
        &[],
        1,
        &[&(ports.first + 2).to_string(), "--worker-port"],
    );
}

#[test]
fn command_not_found() {
    let ports = free_ports(2);
    let first = ports.first;
    drop(ports);
    refused_on_ports(
        first,
        "1",
        &["--delay", "0s", "--", "no-such-program-xyz"],
        1,
        &["no-such-program-xyz", "not found"],
    );
}

#[test]
fn config_file_errors_name_file_line_and_key() {
    let dir = common::scratch("toml");
    let bad = dir.join("bad.toml");
    std::fs::File::create(&bad)
        .unwrap()
        .write_all(b"workers = 2\nsession-ttl = 5\n")
        .unwrap();
    refused(
        &["--config", bad.to_str().unwrap()],
        2,
        &["bad.toml", "line 2", "session-ttl"],
    );
    let unknown = dir.join("unknown.toml");
    std::fs::write(&unknown, "workers = 2\nprxy-port = 80\n").unwrap();
    refused(
        &["--config", unknown.to_str().unwrap()],
        2,
        &["unknown.toml", "line 2", "prxy-port"],
    );
    let broken = dir.join("broken.toml");
    std::fs::write(&broken, "workers = [\n").unwrap();
    refused(&["--config", broken.to_str().unwrap()], 2, &["broken.toml"]);
    refused(
        &["--config", "/nonexistent/sc.toml"],
        2,
        &["/nonexistent/sc.toml"],
    );
}

#[test]
fn config_file_sets_values_and_flags_override_it() {
    let dir = common::scratch("toml-ok");
    let file = dir.join("sc.toml");
    std::fs::write(
        &file,
        "workers = 3\nsession-key = [\"header:x-user\"]\naffinity = false\nsession-ttl = \"10m\"\n",
    )
    .unwrap();
    let c = TestCluster::start(common::Options {
        workers: 2, // the flag wins over the file's 3
        args: vec!["--config".into(), file.display().to_string()],
        ..Default::default()
    });
    let (r, first) = c.whoami(&[("X-User", "ann")]);
    assert!(
        !r.set_cookies().contains_key("sticky.worker"),
        "affinity = false honoured"
    );
    for _ in 0..4 {
        assert_eq!(c.whoami(&[("X-User", "ann")]).1["worker"], first["worker"]);
    }
    let seen: std::collections::HashSet<_> = (0..6)
        .map(|_| c.whoami(&[]).1["worker"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seen.len(),
        2,
        "two workers (flag), not three (file): {seen:?}"
    );
}

#[test]
fn help_and_version_succeed() {
    let (status, out, _) = run_to_exit(&["--help"], T);
    assert!(status.success());
    for flag in [
        "--workers",
        "--worker-port",
        "--proxy-port",
        "--session-key",
        "--session-ttl",
        "--session-max",
        "--no-respawn",
        "--no-websocket",
        "--delay",
        "--config",
    ] {
        assert!(out.contains(flag), "--help lists {flag}");
    }
    let (status, out, _) = run_to_exit(&["--version"], T);
    assert!(status.success() && out.contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn malformed_requests_get_400_431_or_405_and_the_proxy_stays_up() {
    let c = TestCluster::demo(1, &[]);
    let mut big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 1 << 20));
    big.extend_from_slice(b"\r\n\r\n");
    let cases: &[(&[u8], u16)] = &[
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            400,
        ),
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            405,
        ),
        (b"GET / HTTP/9.9\r\n\r\n", 400),
        // RFC 9112 3.2.3 and 3.2.4: host:port is CONNECT's form, * is OPTIONS's.
        (b"GET evil.example:80 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET a HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (&big, 431),
    ];
    for (raw, status) in cases {
        let shown = String::from_utf8_lossy(&raw[..raw.len().min(60)]).into_owned();
        let r = raw_request(c.proxy, raw).unwrap_or_else(|e| panic!("{e} for {shown:?}"));
        assert_eq!(r.status, *status, "for {shown:?}: {}", r.text());
    }
    assert_eq!(
        c.get("/whoami", &[]).status,
        200,
        "still serving\n{}",
        c.logs()
    );
    assert!(!c.stderr().contains("panicked"));
}

/// A malformed request's 400 (and a too-large head's 431) reaches a client that is still
/// sending behind it: the proxy half-closes and reads on until the client closes (RFC 9112
/// 9.6) rather than close with unread bytes, which the kernel answers with a reset.
#[test]
fn a_refusal_reaches_a_client_that_is_still_sending() {
    let c = TestCluster::demo(1, &[]);
    let mut big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 64 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let cases: &[(&[u8], u16)] = &[
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
        (&big, 431),
    ];
    for (head, status) in cases {
        let mut bytes = head.to_vec();
        while bytes.len() < 1 << 20 {
            bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        }
        let s = std::net::TcpStream::connect(c.proxy).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let mut writer = s.try_clone().unwrap();
        let sender = std::thread::spawn(move || writer.write_all(&bytes));
        let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
        let r = read_response(&mut reader).unwrap();
        assert_eq!(r.status, *status, "{}", r.text());
        sender
            .join()
            .unwrap()
            .expect("the proxy read what the client sent");
        s.shutdown(std::net::Shutdown::Write)
            .expect("not reset by the proxy");
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut rest).expect("a clean end, not a reset");
        assert!(rest.is_empty(), "one answer, then the end");
    }
}

/// Sends `raw` on one connection and reads every response until the proxy closes it.
fn responses_until_close(c: &TestCluster, raw: &[u8]) -> Vec<u16> {
    let mut s = std::net::TcpStream::connect(c.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    std::io::Write::write_all(&mut s, raw).unwrap();
    let mut reader = std::io::BufReader::new(s);
    let mut statuses = Vec::new();
    while !std::io::BufRead::fill_buf(&mut reader).unwrap().is_empty() {
        let r = read_response(&mut reader).unwrap();
        if r.status == 400 {
            assert_eq!(r.header("connection"), Some("close"));
            assert!(r.text().contains("Transfer-Encoding"), "{}", r.text());
        }
        statuses.push(r.status);
    }
    statuses
}

#[test]
fn conflicting_content_length_and_transfer_encoding_are_refused() {
    let c = TestCluster::demo(2, &[]);
    let cl_then_te = b"POST /whoami HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\
        Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /whoami HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(responses_until_close(&c, cl_then_te), [400]);
    let te_then_cl = b"POST /whoami HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\n\
        content-length: 30\r\n\r\n0\r\n\r\n";
    assert_eq!(responses_until_close(&c, te_then_cl), [400]);

    // Pipelined behind clean requests (one with a body that looks like a conflicting head,
    // one chunked), only the conflicting one is refused, and nothing after it is served.
    let fake = "GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let pipelined = format!(
        "GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n\
         POST /whoami HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{fake}\
         POST /whoami HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
         POST /whoami HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
         0\r\n\r\nGET /whoami HTTP/1.1\r\nHost: x\r\n\r\n",
        fake.len()
    );
    assert_eq!(
        responses_until_close(&c, pipelined.as_bytes()),
        [200, 200, 200, 400]
    );
    assert_eq!(c.get("/whoami", &[]).status, 200, "{}", c.logs());
    assert!(!c.stderr().contains("panicked"));
}

/// A transfer coding the proxy does not read is refused with 501 (RFC 9112 6.1, as nginx
/// does) and the connection closed: nothing reaches the worker, not even the request after
/// it. Before, `gzip, chunked` reached the worker as plain chunked with the `gzip` gone.
#[test]
fn transfer_codings_other_than_chunked_get_501_and_reach_no_worker() {
    let echo = EchoWorker::start();
    let c = TestCluster::start(Options {
        workers: 1,
        args: vec!["--upstream".into(), echo.addr.to_string()],
        ..Default::default()
    });
    let codings = [
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked, chunked\r\n",
    ];
    for (i, coding) in codings.iter().enumerate() {
        let raw = format!(
            "POST /coded-{i} HTTP/1.1\r\nHost: x\r\n{coding}\r\n3\r\nabc\r\n0\r\n\r\n\
             GET /after-{i} HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        let answers = answers_until_close(&c, raw.as_bytes());
        assert_eq!(answers.len(), 1, "{coding}: {answers:?}");
        assert_eq!(answers[0].0, 501, "{coding}: {answers:?}");
        assert!(answers[0].1.contains("not_implemented"), "{answers:?}");
        assert_eq!(echo.received(&format!("/coded-{i}")), Vec::<String>::new());
        assert_eq!(echo.received(&format!("/after-{i}")), Vec::<String>::new());
    }
    // Plain chunked still goes through.
    let raw = "POST /plain HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
               Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    assert_eq!(raw_request(c.proxy, raw.as_bytes()).unwrap().status, 200);
    assert_eq!(echo.received("/plain").len(), 1);
}

/// Sends `raw` on one connection; every response until the proxy closes it, as
/// (status, body).
fn answers_until_close(c: &TestCluster, raw: &[u8]) -> Vec<(u16, String)> {
    let mut s = std::net::TcpStream::connect(c.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    std::io::Write::write_all(&mut s, raw).unwrap();
    let mut reader = std::io::BufReader::new(s);
    let mut answers = Vec::new();
    while !std::io::BufRead::fill_buf(&mut reader).unwrap().is_empty() {
        let r = read_response(&mut reader).unwrap();
        answers.push((r.status, r.text()));
    }
    answers
}

/// Issue 13, finding 1: framing the watch cannot follow (a chunk size of 17 hex digits
/// with leading zeros, a `Content-Length` line padded past 64 bytes) is refused with 400 on
/// the spot, so the conflicting request behind it never reaches a worker unwatched; the old
/// binary served both (200, 200).
#[test]
fn framing_the_watch_cannot_follow_is_refused_and_nothing_after_it_is_served() {
    let c = TestCluster::demo(1, &[]);
    let conflicting = "POST /whoami HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
        Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let zeros = format!(
        "POST /whoami HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
         00000000000000003\r\nabc\r\n0\r\n\r\n{conflicting}"
    );
    let answers = answers_until_close(&c, zeros.as_bytes());
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].0, 400, "{answers:?}");
    assert!(answers[0].1.contains("malformed chunked"), "{answers:?}");

    // Behind a chunked request, so that hyper's path (and the watch) reads the padded head.
    let pad = " ".repeat(70);
    let padded = format!(
        "POST /whoami HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
         POST /whoami HTTP/1.1\r\nHost: x\r\nContent-Length:{pad}3\r\n\r\nabc{conflicting}"
    );
    let answers = answers_until_close(&c, padded.as_bytes());
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(statuses, [200, 400], "{answers:?}");
    assert!(
        answers[1].1.contains("unreadable Content-Length"),
        "{answers:?}"
    );
    assert_eq!(c.get("/whoami", &[]).status, 200, "{}", c.logs());
}

/// Malformed client chunking is the client's fault: 400, not a 502 logged as a worker
/// failure.
#[test]
fn malformed_client_chunking_is_a_400_not_an_upstream_failure() {
    let c = TestCluster::demo(1, &[]);
    for bad in ["3\r\nabc\r\nzz\r\n", "3\r\nabcXY\r\n0\r\n\r\n"] {
        let raw =
            format!("POST /whoami HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{bad}");
        let answers = answers_until_close(&c, raw.as_bytes());
        assert_eq!(answers.len(), 1, "{bad:?}: {answers:?}");
        assert_eq!(answers[0].0, 400, "{bad:?}: {answers:?}");
    }
    assert_eq!(c.count_log("upstream request failed"), 0, "{}", c.logs());
    assert_eq!(c.get("/whoami", &[]).status, 200, "{}", c.logs());
}
