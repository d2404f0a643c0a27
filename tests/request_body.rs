//! Request bodies in time: an upload that keeps coming is answered however long it takes
//! (`--response-timeout` counts from its last byte), and one that pauses longer than
//! `--body-timeout` is the client's fault: 408, the connection closed, the worker kept in
//! rotation. Over the direct path (a small `Content-Length` body, read whole first) and
//! hyper's (chunked, or a `Content-Length` past the direct path's limit).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{read_response, TestCluster};

const T: Duration = Duration::from_secs(20);

fn connect(c: &TestCluster) -> TcpStream {
    let s = TcpStream::connect(c.proxy).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s
}

/// A chunked upload of 10 pieces, 150 ms apart, with a 500 ms response timeout: before, the
/// timeout ran from the head, so the worker "sent no response headers within 500ms" (504)
/// while the client was still uploading.
#[test]
fn a_steady_upload_longer_than_the_response_timeout_is_answered() {
    let c = TestCluster::demo(1, &["--response-timeout", "500ms"]);
    let mut s = connect(&c);
    s.write_all(
        b"POST /whoami HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
          Connection: close\r\n\r\n",
    )
    .unwrap();
    let piece = vec![b'u'; 1024];
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(150));
        s.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
            .unwrap();
        s.write_all(&piece).unwrap();
        s.write_all(b"\r\n").unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let r = read_response(&mut BufReader::new(s)).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body_bytes"], 10 * 1024, "{}", r.text());
}

/// Sends `head` and the first `sent` bytes of its body, then nothing: the answer, and
/// whether the proxy then closed the connection.
fn stall(c: &TestCluster, head: &str, sent: &[u8]) -> (u16, String, bool) {
    let mut s = connect(c);
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(sent).unwrap();
    let mut reader = BufReader::new(s);
    let r = read_response(&mut reader).unwrap();
    let mut rest = Vec::new();
    let closed = reader.read_to_end(&mut rest).is_ok() && rest.is_empty();
    (r.status, r.text(), closed)
}

#[test]
fn a_stalled_request_body_is_a_408_on_every_path_and_the_worker_stays() {
    let c = TestCluster::demo(1, &["--body-timeout", "500ms"]);
    let cases = [
        (
            "direct path, Content-Length",
            "POST /whoami HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".to_string(),
            &b"0123456789"[..],
        ),
        (
            "hyper's path, chunked",
            "POST /whoami HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_string(),
            &b"a\r\n0123456789\r\n"[..],
        ),
        (
            "hyper's path, a long Content-Length",
            "POST /whoami HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n".to_string(),
            &b"0123456789"[..],
        ),
    ];
    for (path, head, sent) in cases {
        let (status, body, closed) = stall(&c, &head, sent);
        assert_eq!(status, 408, "{path}: {body}");
        assert!(body.contains("request_timeout"), "{path}: {body}");
        assert!(body.contains("--body-timeout"), "{path}: {body}");
        assert!(closed, "{path}: the connection stayed open");
    }
    // The client's fault: the worker is still in rotation, and nothing was logged against
    // it.
    assert_eq!(c.get("/whoami", &[]).status, 200, "{}", c.logs());
    assert!(!c.stderr().contains("worker 0 failed"), "{}", c.logs());
}

/// A worker that reads nothing of an upload for three times the body timeout is not the
/// client's pause: the client is blocked on a full socket, not silent, and gets its answer.
#[test]
fn a_worker_that_reads_slowly_is_not_a_stalled_client() {
    let c = common::node_workers(1, &["--body-timeout", "500ms"], &[]);
    let body = vec![b'b'; 32 << 20];
    let mut s = connect(&c);
    let head = format!(
        "POST /slow-read?ms=1500 HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    let r = read_response(&mut BufReader::new(s)).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), body.len().to_string());
}

/// The response timeout still runs once the body has arrived, trailers or not: a worker
/// that answers after 3 s is a 504 at 500 ms. (With trailers it was not: hyper polls a body
/// no more after its trailers, and the watch had not learnt its end.)
#[test]
fn the_response_timeout_runs_from_the_end_of_the_body_with_or_without_trailers() {
    let c = common::node_workers(1, &["--response-timeout", "500ms"], &[]);
    let bodies = [
        ("no trailers", "3\r\nabc\r\n0\r\n\r\n"),
        ("trailers", "3\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n"),
    ];
    for (what, body) in bodies {
        let mut s = connect(&c);
        let raw = format!(
            "POST /slow?ms=3000 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
             Trailer: x-sum\r\nConnection: close\r\n\r\n{body}"
        );
        s.write_all(raw.as_bytes()).unwrap();
        let r = read_response(&mut BufReader::new(s)).unwrap();
        assert_eq!(r.status, 504, "{what}: {}", r.text());
        assert_eq!(r.json()["error"], "gateway_timeout", "{what}");
    }
}

/// A worker that stops taking an upload (it reads nothing of it) is answered 504 after the
/// response timeout: the body has not moved for that long, and the client is not to blame.
/// Its connection to the worker ends there, so the client's does too, not when the worker
/// answers a minute later (before, both waited for the worker).
#[test]
fn a_worker_that_stops_taking_an_upload_is_a_504_and_lets_go() {
    let c = common::node_workers(1, &["--response-timeout", "500ms"], &[]);
    let body = vec![b'b'; 32 << 20];
    let mut s = connect(&c);
    let head = format!(
        "POST /slow?ms=60000 HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut writer = s.try_clone().unwrap();
    // The upload blocks once every buffer on the way is full; it fails when the proxy
    // closes the connection.
    let started = std::time::Instant::now();
    let uploading = std::thread::spawn(move || writer.write_all(&body).is_ok());
    let r = read_response(&mut BufReader::new(s)).unwrap();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(!uploading.join().unwrap(), "the whole upload was taken");
    let held = started.elapsed();
    assert!(
        held < Duration::from_secs(30),
        "the client was held {held:?}"
    );
}
