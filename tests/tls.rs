//! HTTPS with certificates made at test time: HTTP/1.1 and HTTP/2 (ALPN) stay sticky, secure
//! WebSocket works, the certificate is reloaded on change, a redirect port points at HTTPS,
//! and bad files or bad handshakes never take the proxy down.
#![allow(clippy::unwrap_used, clippy::result_large_err)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{exit_code_2, wait_until, Options, TestCluster};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};

struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new() -> Self {
        let dir = common::scratch("pki");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "sticky-cluster test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        Self { dir, ca, ca_key }
    }

    /// Writes a leaf for localhost/127.0.0.1 (+ the CA) and its key; returns the paths.
    fn leaf(&self, name: &str, cn: &str) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let cert_path = self.dir.join(format!("{name}.crt"));
        let key_path = self.dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), self.ca.pem())).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

fn tls_cluster(pki: &Pki, cert: &Path, key: &Path, workers: usize, extra: &[&str]) -> TestCluster {
    let mut args = vec![
        "--tls-cert".to_string(),
        cert.display().to_string(),
        "--tls-key".to_string(),
        key.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let _ = pki;
    TestCluster::start(Options {
        workers,
        args,
        ..Default::default()
    })
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A blocking TLS connection to the proxy.
fn connect(pki: &Pki, addr: SocketAddr, alpn: &[&[u8]]) -> TlsStream {
    let conn = rustls::ClientConnection::new(
        pki.client_config(alpn),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    stream.flush().unwrap();
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    stream
}

fn https_whoami(pki: &Pki, addr: SocketAddr, cookie: &str) -> common::Response {
    let mut s = connect(pki, addr, &[b"http/1.1"]);
    write!(
        s,
        "GET /whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nCookie: {cookie}\r\n\r\n"
    )
    .unwrap();
    let mut reader = std::io::BufReader::new(s);
    common::read_response(&mut reader).unwrap()
}

fn peer_cn(pki: &Pki, addr: SocketAddr) -> String {
    let s = connect(pki, addr, &[b"http/1.1"]);
    let certs: Vec<CertificateDer> = s.conn.peer_certificates().unwrap().to_vec();
    let leaf = certs[0].as_ref();
    // The CN is the only place our test names appear in the leaf: find which one.
    ["first-cert", "second-cert"]
        .into_iter()
        .find(|cn| leaf.windows(cn.len()).any(|w| w == cn.as_bytes()))
        .unwrap_or("unknown")
        .to_string()
}

#[test]
fn https_requests_are_sticky_and_forwarded_as_https() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("leaf", "first-cert");
    let c = tls_cluster(&pki, &cert, &key, 3, &[]);
    let first = https_whoami(&pki, c.proxy, "");
    assert_eq!(first.status, 200, "{}", c.logs());
    let json = first.json();
    assert_eq!(json["forwarded_proto"], "https");
    let affinity = first
        .all("set-cookie")
        .into_iter()
        .find(|v| v.starts_with("sticky.worker="))
        .unwrap()
        .to_string();
    assert!(affinity.contains("Secure"), "{affinity}");
    let cookie = first.cookie_header();
    for _ in 0..6 {
        let r = https_whoami(&pki, c.proxy, &cookie);
        assert_eq!(r.json()["worker"], json["worker"]);
    }
}

#[test]
fn http2_streams_are_sticky_per_request() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("leaf", "first-cert");
    let c = tls_cluster(&pki, &cert, &key, 3, &[]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = pki.client_config(&[b"h2"]);
    let addr = c.proxy;
    runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "ALPN chose h2"
        );
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let get = |cookie: Option<String>| {
            let mut b = http::Request::get("https://localhost/whoami");
            if let Some(c) = cookie {
                b = b.header("cookie", c);
            }
            b.body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap()
        };
        use http_body_util::BodyExt;
        // Several clients' requests multiplexed on one h2 connection, each routed by its own cookie.
        let mut pins = Vec::new();
        for _ in 0..3 {
            send.ready().await.unwrap();
            let resp = send.send_request(get(None)).await.unwrap();
            assert_eq!(resp.version(), http::Version::HTTP_2);
            let cookies: Vec<String> = resp
                .headers()
                .get_all("set-cookie")
                .iter()
                .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_string))
                .collect();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            pins.push((cookies.join("; "), json["worker"].clone()));
        }
        let mut streams = Vec::new();
        for (cookie, worker) in pins.iter().cycle().take(12) {
            send.ready().await.unwrap();
            let fut = send.send_request(get(Some(cookie.clone())));
            streams.push((fut, worker.clone()));
        }
        for (fut, worker) in streams {
            let resp = fut.await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["worker"], worker);
        }
    });
}

#[test]
fn secure_websocket_works() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("leaf", "first-cert");
    let c = tls_cluster(&pki, &cert, &key, 2, &[]);
    let stream = connect(&pki, c.proxy, &[b"http/1.1"]);
    let (mut ws, _) = tungstenite::client("wss://localhost/ws", stream).unwrap();
    ws.send(tungstenite::Message::Text("over tls".into()))
        .unwrap();
    let reply = ws.read().unwrap();
    assert!(
        reply.to_text().unwrap().ends_with(": over tls"),
        "{reply:?}"
    );
}

#[test]
fn certificate_is_reloaded_on_change_and_a_bad_file_keeps_the_old_one() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("live", "first-cert");
    let c = tls_cluster(&pki, &cert, &key, 1, &[]);
    assert_eq!(peer_cn(&pki, c.proxy), "first-cert");
    // A broken certificate file: the old certificate keeps serving, and the log says why.
    std::fs::write(&cert, "not a certificate").unwrap();
    c.wait_log("keeping the previous one", Duration::from_secs(15));
    assert_eq!(peer_cn(&pki, c.proxy), "first-cert");
    // A renewed pair, written in place: picked up without a restart.
    let (new_cert, new_key) = pki.leaf("renewed", "second-cert");
    std::fs::copy(&new_key, &key).unwrap();
    std::fs::copy(&new_cert, &cert).unwrap();
    wait_until(
        "the renewed certificate to serve",
        Duration::from_secs(15),
        || peer_cn(&pki, c.proxy) == "second-cert",
    );
    assert_eq!(https_whoami(&pki, c.proxy, "").status, 200);
}

#[test]
fn sighup_reloads_the_certificate_too() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("live", "first-cert");
    let c = tls_cluster(&pki, &cert, &key, 1, &[]);
    let (new_cert, new_key) = pki.leaf("renewed", "second-cert");
    std::fs::copy(&new_key, &key).unwrap();
    std::fs::copy(&new_cert, &cert).unwrap();
    c.signal("HUP");
    c.wait_log("TLS certificate reloaded", Duration::from_secs(10));
    assert_eq!(peer_cn(&pki, c.proxy), "second-cert");
}

#[test]
fn plain_http_and_broken_handshakes_do_not_take_the_proxy_down() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("leaf", "first-cert");
    let c = tls_cluster(&pki, &cert, &key, 1, &[]);
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"\x16\x03\x01\x00\x05hello",
        b"",
    ] {
        let mut s = TcpStream::connect(c.proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(junk);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    // A client that does not trust our CA fails its handshake; the next one is fine.
    let untrusting = Pki::new();
    let conn = rustls::ClientConnection::new(
        untrusting.client_config(&[]),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut stream = rustls::StreamOwned::new(conn, TcpStream::connect(c.proxy).unwrap());
    assert!(stream
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .and_then(|_| stream.flush())
        .is_err());
    assert_eq!(https_whoami(&pki, c.proxy, "").status, 200);
}

#[test]
fn redirect_port_points_plain_http_at_https() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("leaf", "first-cert");
    let ports = common::free_ports(1);
    let redirect = ports.first;
    drop(ports);
    let c = tls_cluster(
        &pki,
        &cert,
        &key,
        1,
        &[
            "--http-redirect-port",
            &redirect.to_string(),
            "--header-timeout",
            "500ms",
        ],
    );
    let r = common::request(
        SocketAddr::from(([127, 0, 0, 1], redirect)),
        "GET",
        "/some/page?x=1",
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://127.0.0.1:{}/some/page?x=1", c.proxy.port()).as_str()),
        "same host, the HTTPS port"
    );
    // A client that never finishes its head is cut off there too.
    let mut slow =
        std::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], redirect))).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::io::Write::write_all(&mut slow, b"GET / HTTP/1.1\r\nX-Slow: ").unwrap();
    let started = std::time::Instant::now();
    let _ = std::io::Read::read_to_end(&mut slow, &mut Vec::new());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed by the head deadline"
    );
}

#[test]
fn bad_tls_files_are_one_line_errors_naming_the_file() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("leaf", "first-cert");
    let (_, other_key) = pki.leaf("other", "first-cert");
    let garbage = pki.dir.join("garbage.pem");
    std::fs::write(&garbage, "hello").unwrap();
    let missing = pki.dir.join("missing.pem");
    let cases: Vec<(PathBuf, PathBuf, &str)> = vec![
        (missing.clone(), key.clone(), "missing.pem"),
        (garbage.clone(), key.clone(), "garbage.pem"),
        (cert.clone(), garbage.clone(), "garbage.pem"),
        (cert.clone(), other_key.clone(), "other.key"),
    ];
    for (c, k, needle) in cases {
        let (err, last) = exit_code_2(
            &[
                "--proxy-port",
                "18443",
                "--tls-cert",
                c.to_str().unwrap(),
                "--tls-key",
                k.to_str().unwrap(),
            ],
            Duration::from_secs(20),
        );
        assert!(
            last.starts_with("sticky-cluster: error:") && last.contains(needle),
            "{err}"
        );
    }
    let (err, _) = exit_code_2(
        &["--tls-cert", cert.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert!(err.contains("--tls-key"), "{err}");
}

#[test]
fn wss_websockets_stay_on_the_session_worker() {
    use tungstenite::client::IntoClientRequest;
    let pki = Pki::new();
    let (cert, key) = pki.leaf("leaf", "first-cert");
    let c = tls_cluster(&pki, &cert, &key, 3, &["--no-affinity-cookie"]);
    let mut workers = std::collections::HashSet::new();
    for session in 0..6 {
        let cookie = format!("connect.sid=wss-{session}");
        let home = https_whoami(&pki, c.proxy, &cookie).json()["worker"].clone();
        workers.insert(home.to_string());
        for round in 0..2 {
            let mut req = "wss://localhost/ws".into_client_request().unwrap();
            req.headers_mut().insert("cookie", cookie.parse().unwrap());
            let stream = connect(&pki, c.proxy, &[b"http/1.1"]);
            let (mut ws, _) = tungstenite::client(req, stream).unwrap();
            ws.send(tungstenite::Message::Text("hi".into())).unwrap();
            let reply = ws.read().unwrap();
            assert_eq!(
                reply.to_text().unwrap(),
                format!("worker {home}: hi"),
                "session {session}, WebSocket {round}"
            );
        }
    }
    assert!(workers.len() > 1, "the sessions were spread: {workers:?}");
}

#[test]
fn a_reload_with_a_key_that_does_not_match_keeps_the_old_pair() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("live", "first-cert");
    let c = tls_cluster(&pki, &cert, &key, 1, &[]);
    assert_eq!(peer_cn(&pki, c.proxy), "first-cert");
    // A new certificate beside the old key: a pair that does not match.
    let (new_cert, _) = pki.leaf("renewed", "second-cert");
    std::fs::copy(&new_cert, &cert).unwrap();
    c.signal("HUP");
    c.wait_log("TLS files not reloaded", Duration::from_secs(10));
    assert!(
        !c.stderr().contains("TLS certificate reloaded"),
        "{}",
        c.logs()
    );
    assert_eq!(peer_cn(&pki, c.proxy), "first-cert");
    assert_eq!(https_whoami(&pki, c.proxy, "").status, 200);
}

#[test]
fn the_default_proxy_port_is_443_with_tls_and_80_without() {
    // Seen without binding either port: a worker range over the default proxy port is
    // refused, naming the port in force.
    let pki = Pki::new();
    let (cert, key) = pki.leaf("leaf", "first-cert");
    let tls = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let (err, _) = exit_code_2(
        &[&tls[..], &["--worker-port", "443", "-w", "1"]].concat(),
        Duration::from_secs(20),
    );
    assert!(err.contains("--proxy-port 443 collides"), "{err}");
    let (err, _) = exit_code_2(&["--worker-port", "80", "-w", "1"], Duration::from_secs(20));
    assert!(err.contains("--proxy-port 80 collides"), "{err}");
}
