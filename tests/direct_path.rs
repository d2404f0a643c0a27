//! The direct HTTP/1.1 path (src/proxy/h1) against a real Node worker that answers with
//! every response framing: chunked with trailers, fixed length, none (HEAD), until close,
//! 1xx before the answer; pipelined requests; a hand-over to hyper in the middle of a
//! connection; stale pooled worker connections; the rewritten heads both ways.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{node_cluster, read_response, tests_dir, Response, TestCluster};

fn framing_workers(n: usize, env: &[(&str, &str)]) -> TestCluster {
    node_cluster(&tests_dir().join("node/framing-worker.js"), n, &[], env)
}

/// One client connection, requests written raw, responses read one by one.
struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(c: &TestCluster) -> Self {
        let s = TcpStream::connect(c.proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Self {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    fn send(&mut self, raw: &str) {
        self.writer.write_all(raw.as_bytes()).unwrap();
    }

    fn get(&mut self, path: &str) -> Response {
        self.send(&format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
        self.response()
    }

    fn response(&mut self) -> Response {
        read_response(&mut self.reader).unwrap()
    }

    /// A 1xx head: its status line and headers (it has no body).
    fn interim(&mut self) -> (String, Vec<String>) {
        let mut status = String::new();
        self.reader.read_line(&mut status).unwrap();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            if line.trim_end().is_empty() {
                return (status.trim_end().to_string(), headers);
            }
            headers.push(line.trim_end().to_lowercase());
        }
    }

    /// True when the proxy closed the connection (nothing more to read).
    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(
            std::io::Read::read_to_end(&mut self.reader, &mut rest),
            Ok(0)
        )
    }
}

#[test]
fn one_connection_passes_every_response_framing_through() {
    let c = framing_workers(1, &[]);
    let mut client = Client::connect(&c);

    let chunked = client.get("/chunked?n=200");
    assert_eq!(chunked.status, 200);
    assert_eq!(chunked.header("transfer-encoding"), Some("chunked"));
    let want: String = (0..200)
        .map(|i| format!("{i}:{};", "x".repeat(i % 7)))
        .collect();
    assert_eq!(chunked.text(), want);
    assert_eq!(chunked.header("x-done"), Some("yes"), "the trailer");

    client.send("GET /hints HTTP/1.1\r\nHost: t\r\n\r\n");
    let (status, headers) = client.interim();
    assert!(status.starts_with("HTTP/1.1 103"), "{status}");
    assert!(
        headers.iter().any(|h| h.starts_with("link:")),
        "{headers:?}"
    );
    let after = client.response();
    assert_eq!(
        (after.status, after.text()),
        (200, "after hints from worker 0".into())
    );

    client.send("HEAD /echo HTTP/1.1\r\nHost: t\r\n\r\n");
    let (status, headers) = client.interim();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(headers.iter().any(|h| h.starts_with("content-length:")));

    // Three requests in one write come back in order.
    client.send(
        "GET /echo?1 HTTP/1.1\r\nHost: t\r\n\r\nPOST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhelloGET /echo?3 HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let methods: Vec<(String, u64)> = (0..3)
        .map(|_| {
            let j = client.response().json();
            (
                j["method"].as_str().unwrap().to_string(),
                j["body_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        methods,
        [("GET".into(), 0), ("POST".into(), 5), ("GET".into(), 0)]
    );

    // A chunked upload is hyper's: the connection is handed over and goes on.
    client.send(
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    assert_eq!(client.response().json()["body_bytes"], 3);
    assert_eq!(client.get("/echo").status, 200);

    let eof = client.get("/eof");
    assert_eq!(eof.header("x-framing"), Some("eof"));
    assert_eq!(eof.text(), "until close from worker 0");
}

/// The proxy closes after a `Connection: close` request while the client is still sending
/// (pipelined requests behind it): it half-closes and reads on until the client closes
/// (RFC 9112 9.6), so the answer is not lost to a reset.
#[test]
fn a_closing_answer_reaches_a_client_that_is_still_sending() {
    let c = framing_workers(1, &[]);
    let mut client = Client::connect(&c);
    let mut bytes = b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec();
    while bytes.len() < 1 << 20 {
        bytes.extend_from_slice(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    let mut writer = client.writer.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&bytes));
    let r = client.response();
    assert_eq!(r.status, 200);
    sender
        .join()
        .unwrap()
        .expect("the proxy read what the client sent");
    client
        .writer
        .shutdown(std::net::Shutdown::Write)
        .expect("not reset by the proxy");
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut client.reader, &mut rest).expect("a clean end, not a reset");
    assert!(rest.is_empty(), "one answer, then the end");
}

#[test]
fn an_until_close_response_closes_the_client_connection_after_it() {
    let c = framing_workers(1, &[]);
    let mut client = Client::connect(&c);
    assert_eq!(client.get("/echo").status, 200, "direct path first");
    client.send("GET /eof HTTP/1.1\r\nHost: t\r\n\r\n");
    let (status, headers) = client.interim();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(
        headers.contains(&"connection: close".to_string()),
        "{headers:?}"
    );
    let mut body = String::new();
    std::io::Read::read_to_string(&mut client.reader, &mut body).unwrap();
    assert_eq!(body, "until close from worker 0");
    assert!(client.closed());
}

#[test]
fn heads_are_rewritten_both_ways() {
    let c = framing_workers(1, &[]);
    let mut client = Client::connect(&c);
    client.send(
        "GET /echo HTTP/1.1\r\nHost: example.test\r\nConnection: keep-alive\r\nKeep-Alive: timeout=9\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\nX-Sticky: spoofed\r\nX-Forwarded-For: 10.9.9.9\r\nX-Forwarded-Proto: ftp\r\nX-Forwarded-Host: evil\r\nX-Custom: kept\r\n\r\n",
    );
    let echo = client.response().json();
    let h = &echo["headers"];
    for gone in ["keep-alive", "te", "proxy-authorization"] {
        assert!(h.get(gone).is_none(), "{gone} reached the worker: {h}");
    }
    assert_eq!(h["x-forwarded-for"], "10.9.9.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "example.test");
    assert_eq!(h["host"], "example.test");
    assert_eq!(h["x-sticky"], "new");
    assert_eq!(h["x-custom"], "kept");

    let hop = client.get("/hop");
    assert_eq!(hop.text(), "hop");
    assert_eq!(hop.header("x-public"), Some("2"));
    for gone in ["x-secret", "keep-alive", "connection"] {
        assert!(hop.header(gone).is_none(), "{gone} reached the client");
    }
    // `Connection: close` from the client: answered, then closed.
    client.send("GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let last = client.response();
    assert_eq!(last.header("connection"), Some("close"));
    assert!(client.closed());
}

#[test]
fn worker_connections_closed_while_pooled_are_not_errors() {
    // The worker closes a keep-alive connection 50 ms after answering on it, as an idle
    // timeout would; the proxy must notice the pooled connection went away instead of
    // sending a POST (which it may not resend) into it.
    let c = framing_workers(1, &[]);
    let mut client = Client::connect(&c);
    for round in 0..3 {
        assert_eq!(client.get("/then-close").text(), "closing soon");
        // Until the worker has closed its side (nothing established on its port).
        common::wait_until("the worker's close", Duration::from_secs(10), || {
            common::established_on(c.worker_port) == 0
        });
        client.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi");
        let r = client.response();
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
    }
}

#[test]
fn an_error_answer_to_head_has_no_body_and_the_connection_goes_on() {
    let c = common::node_workers(1, &["--response-timeout", "300ms"], &[]);
    let mut client = Client::connect(&c);
    client.send("HEAD /slow?ms=2000 HTTP/1.1\r\nHost: t\r\n\r\n");
    let (status, headers) = client.interim();
    assert!(status.starts_with("HTTP/1.1 504"), "{status}");
    assert!(headers.iter().any(|h| h.starts_with("content-length: ")));
    // Were a body sent after the HEAD answer, it would be read as this response's start.
    let next = client.get("/whoami");
    assert_eq!(next.status, 200);
    assert_eq!(next.json()["worker"], 0);
}

#[test]
fn http2_requests_reach_workers_over_plain_sockets_with_every_framing() {
    // HTTP/2 (prior knowledge, plain TCP) is hyper's; its bodyless requests are sent on the
    // direct path's pooled sockets, the chunked framing taken off for HTTP/2.
    let c = framing_workers(2, &[]);
    let addr = c.proxy;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        use http_body_util::BodyExt;
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let mut call = async |method: &str, path: &str| {
            let req = http::Request::builder()
                .method(method)
                .uri(format!("http://{addr}{path}"))
                .header("cookie", "connect.sid=h2-session")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            send.ready().await.unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.version(), http::Version::HTTP_2);
            let (mut head, body) = resp.into_parts();
            let collected = body.collect().await.unwrap();
            // Trailers, if any, with the head's fields (their names do not clash here).
            if let Some(trailers) = collected.trailers() {
                head.headers.extend(trailers.clone());
            }
            let body = collected.to_bytes();
            (head, String::from_utf8(body.to_vec()).unwrap())
        };
        let (head, body) = call("GET", "/chunked?n=300").await;
        assert_eq!(head.headers["x-done"], "yes", "the worker's trailer");
        let want: String = (0..300)
            .map(|i| format!("{i}:{};", "x".repeat(i % 7)))
            .collect();
        assert_eq!(body, want);
        assert!(head.headers.get("transfer-encoding").is_none());

        let (_, echo) = call("GET", "/echo").await;
        let echo: serde_json::Value = serde_json::from_str(&echo).unwrap();
        let worker = echo["worker"].clone();
        assert_eq!(echo["headers"]["x-forwarded-proto"], "http");
        for _ in 0..5 {
            let (_, again) = call("GET", "/echo").await;
            let again: serde_json::Value = serde_json::from_str(&again).unwrap();
            assert_eq!(again["worker"], worker, "sticky on connect.sid");
        }
        let (_, post) = call("POST", "/echo").await;
        let post: serde_json::Value = serde_json::from_str(&post).unwrap();
        assert_eq!(post["method"], "POST");
        assert_eq!(post["headers"]["content-length"], "0");

        let (head, body) = call("HEAD", "/echo").await;
        assert!(head.headers.contains_key("content-length"));
        assert_eq!(body, "");

        let (head, body) = call("GET", "/hop").await;
        assert_eq!(body, "hop");
        assert!(head.headers.get("x-secret").is_none());
        assert_eq!(head.headers["x-public"], "2");

        let (head, body) = call("GET", "/eof").await;
        assert_eq!(head.headers["x-framing"], "eof");
        assert!(body.starts_with("until close from worker"), "{body}");
    });
}

/// The worker's `/big` pattern: 8 KiB of `0-9a-z` repeated.
fn big_pattern(len: usize) -> Vec<u8> {
    let unit = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let block: Vec<u8> = unit.iter().cycle().take(8192).copied().collect();
    block.iter().cycle().take(len).copied().collect()
}

#[test]
fn large_bodies_pass_byte_for_byte_both_ways_on_one_connection() {
    let c = framing_workers(1, &[]);
    let mut client = Client::connect(&c);
    // Twice on one connection: the worker connection whose buffer grew for the first body
    // goes back to the pool and carries the second.
    for kb in [5 * 1024, 3 * 1024 + 5] {
        let r = client.get(&format!("/big?kb={kb}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), kb * 1024, "the whole body");
        assert!(r.body == big_pattern(kb * 1024), "the body byte for byte");
    }
    let body: Vec<u8> = (0..(5usize << 20)).map(|i| (i % 251) as u8).collect();
    let sha = ring::digest::digest(&ring::digest::SHA256, &body);
    let hex: String = sha.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    client.writer.write_all(head.as_bytes()).unwrap();
    client.writer.write_all(&body).unwrap();
    let r = client.response();
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["body_bytes"], body.len());
    assert_eq!(echo["body_sha256"], hex.as_str());
    assert_eq!(client.get("/hits?path=/big").text(), "2");
}
