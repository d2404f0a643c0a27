//! Rule 7: WebSocket through the proxy, sticky, both directions, until either side closes.
#![allow(clippy::unwrap_used, clippy::result_large_err)]

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::TestCluster;
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

type Ws = tungstenite::WebSocket<TcpStream>;

fn connect(c: &TestCluster, cookie: Option<&str>) -> Result<Ws, tungstenite::Error> {
    let mut req = format!("ws://{}/ws", c.proxy)
        .into_client_request()
        .unwrap();
    if let Some(cookie) = cookie {
        req.headers_mut().insert("cookie", cookie.parse().unwrap());
    }
    let stream = TcpStream::connect(c.proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    tungstenite::client(req, stream)
        .map(|(ws, _)| ws)
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => tungstenite::Error::ConnectionClosed,
        })
}

fn echo(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::Text(text.into())).unwrap();
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn websocket_is_sticky_and_echoes_both_ways() {
    let c = TestCluster::demo(3, &[]);
    for _ in 0..6 {
        let (r, json) = c.whoami(&[]);
        let worker = json["worker"].as_u64().unwrap();
        let mut ws = connect(&c, Some(&r.cookie_header())).unwrap();
        for i in 0..20 {
            assert_eq!(
                echo(&mut ws, &format!("m{i}")),
                format!("worker {worker}: m{i}")
            );
        }
        let big = "x".repeat(200_000);
        assert_eq!(
            echo(&mut ws, &big).len(),
            big.len() + format!("worker {worker}: ").len()
        );
        ws.close(None).unwrap();
        // The close handshake completes through the tunnel.
        loop {
            match ws.read() {
                Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => break,
                Ok(_) => continue,
                Err(e) => panic!("close failed: {e}"),
            }
        }
    }
    // Plain HTTP still works after tunnels came and went.
    assert_eq!(c.get("/whoami", &[]).status, 200);
}

#[test]
fn many_concurrent_websockets_stay_on_their_workers() {
    let c = TestCluster::demo(2, &[]);
    let mut clients: Vec<(u64, Ws)> = (0..40)
        .map(|_| {
            let (r, json) = c.whoami(&[]);
            (
                json["worker"].as_u64().unwrap(),
                connect(&c, Some(&r.cookie_header())).unwrap(),
            )
        })
        .collect();
    for round in 0..3 {
        for (worker, ws) in clients.iter_mut() {
            let reply = echo(ws, &format!("r{round}"));
            assert_eq!(reply, format!("worker {worker}: r{round}"));
        }
    }
}

#[test]
fn no_websocket_refuses_upgrades() {
    let c = TestCluster::demo(1, &["--no-websocket"]);
    match connect(&c, None) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("upgrade must be refused"),
    }
    assert_eq!(c.get("/whoami", &[]).status, 200);
}

#[test]
fn an_idle_websocket_outlives_the_head_timeout() {
    // The head deadline guards HTTP/1 request heads; once upgraded, only --ws-idle-timeout
    // applies. Sleeping is the point here: the tunnel must stay quiet past the deadline.
    let c = TestCluster::demo(1, &["--header-timeout", "300ms"]);
    // Quiet from the start (no frame yet), and again after a message.
    let mut ws = connect(&c, None).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    assert!(echo(&mut ws, "first").ends_with("first"), "{}", c.logs());
    std::thread::sleep(Duration::from_millis(1200));
    assert!(echo(&mut ws, "second").ends_with("second"), "{}", c.logs());
}
