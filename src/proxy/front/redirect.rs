//! The plain-HTTP port that redirects to HTTPS (`--http-redirect-port`).

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::proxy::exchange::body::ProxyBody;
use crate::proxy::io::framing::FramingWatch;

/// Answers plain HTTP on `listener` with a permanent redirect to the HTTPS proxy port; a
/// client gets `header_timeout` to send its request head, as on the proxy port.
pub async fn serve_redirect(
    listener: TcpListener,
    https_port: u16,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let service = service_fn(
            move |req: http::Request<hyper::body::Incoming>| async move {
                Ok::<_, std::convert::Infallible>(redirect_to_https(&req, https_port))
            },
        );
        tokio::spawn(async move {
            // Only the head deadline: hyper's own buffer bounds a head here, and nothing
            // is forwarded.
            let io = FramingWatch::new(stream, Arc::default(), header_timeout, usize::MAX);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), service)
                .await;
        });
    }
}

fn redirect_to_https<B>(req: &http::Request<B>, https_port: u16) -> http::Response<ProxyBody> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or("localhost");
    // Drop the plain port; keep an IPv6 literal's brackets.
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{host}{port}{path}");
    let mut resp = http::Response::new(ProxyBody::empty());
    *resp.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = http::HeaderValue::from_str(&location) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    resp
}
