//! The built-in demo worker, run when no COMMAND is given: a page naming the worker that
//! served it, a `connect.sid` cookie on the first visit, `/whoami` as JSON (what tests read),
//! and a WebSocket echo on any path.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::Worker;

/// Serves the demo app on `127.0.0.1:port` until the worker is told to stop.
///
/// # Errors
/// When the port cannot be bound.
pub async fn serve(worker: Worker, port: u16) -> std::io::Result<()> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let id = worker.id();
    let shutdown = worker.shutdown_token();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
            _ = shutdown.cancelled() => return Ok(()),
        };
        let service = service_fn(move |req| answer(req, id));
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(mut req: Request<Incoming>, id: u16) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                echo(ws, id).await;
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        return Ok(resp);
    }
    let session = crate::routing::key::cookie(req.headers(), "connect.sid")
        .map(|v| String::from_utf8_lossy(v).into_owned());
    let pid = std::process::id();
    let body_bytes = body_length(req.body_mut()).await;
    let text = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (body, content_type) = if req.uri().path() == "/whoami" {
        let json = serde_json::json!({
            "worker": id,
            "pid": pid,
            "session": session,
            "sticky": text("x-sticky"),
            "forwarded_for": text("x-forwarded-for"),
            "forwarded_proto": text("x-forwarded-proto"),
            "forwarded_host": text("x-forwarded-host"),
            "host": text("host"),
            "method": req.method().as_str(),
            "path": req.uri().to_string(),
            "body_bytes": body_bytes,
        });
        (json.to_string(), "application/json")
    } else {
        (
            page(id, pid, session.as_deref()),
            "text/html; charset=utf-8",
        )
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if session.is_none() {
        let mut raw = [0u8; 12];
        if SystemRandom::new().fill(&mut raw).is_ok() {
            let sid: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            if let Ok(v) = HeaderValue::from_str(&format!("connect.sid={sid}; Path=/; HttpOnly")) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
        }
    }
    Ok(resp)
}

/// Reads a request body to its end, frame by frame, and counts its bytes.
async fn body_length(body: &mut Incoming) -> u64 {
    use http_body_util::BodyExt;
    let mut n = 0;
    while let Some(Ok(frame)) = body.frame().await {
        n += frame.data_ref().map_or(0, |d| d.len() as u64);
    }
    n
}

async fn echo<S>(mut ws: WebSocketStream<S>, id: u16)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::Message;
    while let Some(Ok(msg)) = ws.next().await {
        let reply = match msg {
            Message::Text(t) => Message::Text(format!("worker {id}: {t}")),
            Message::Binary(b) => Message::Binary(b),
            // Reading on after a Close lets tungstenite send the reply and end cleanly.
            Message::Close(_) => continue,
            _ => continue,
        };
        if ws.send(reply).await.is_err() {
            break;
        }
    }
}

fn page(id: u16, pid: u32, session: Option<&str>) -> String {
    let session = match session {
        Some(s) => format!("your session <code>{}</code>", html_escape(s)),
        None => "a new session (reload: you will stay on this worker)".to_string(),
    };
    format!(
        r#"<!doctype html><meta charset="utf-8"><title>sticky-cluster demo</title>
<style>body{{font:16px system-ui;margin:3em auto;max-width:40em}}code{{background:#eee;padding:0 .3em}}</style>
<h1>Served by worker {id}</h1>
<p>Process {pid}, {session}.</p>
<p>Reload the page: the same worker answers every time. Open a private window to be sent to another one.</p>
<p>WebSocket echo: <input id="m" value="hello"> <button onclick="s.send(m.value)">send</button> <span id="o"></span></p>
<script>
const s = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
s.onmessage = e => {{ o.textContent = e.data; }};
</script>
"#
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
