//! The proxy's own answers (`{"error":"<code>","reason":"<reason>"}`), made once and
//! written by each front in its own encoding.

use std::borrow::Cow;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::body::ProxyBody;

/// An answer of the proxy's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The `error` code.
    pub code: &'static str,
    /// The `reason`.
    pub reason: Cow<'static, str>,
    /// `Retry-After: 1` (no worker up, or the worker is overloaded).
    pub retry_after: bool,
    /// The connection closes after it (the request cannot be followed safely, or a refused
    /// client asked for an upgrade).
    pub close: bool,
}

impl Answer {
    /// An answer with `status`, `code` and `reason`.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code,
            reason: reason.into(),
            retry_after: false,
            close: false,
        }
    }

    /// No worker is up.
    pub fn no_worker() -> Self {
        Self {
            retry_after: true,
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_worker",
                "no worker is up; retry shortly",
            )
        }
    }

    /// The worker has `--max-pending` requests unanswered: this one is shed, not queued.
    pub fn overloaded() -> Self {
        Self {
            retry_after: true,
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the worker has too many requests unanswered (--max-pending); retry shortly",
            )
        }
    }

    /// For a client that went away: nobody reads it.
    pub fn client_gone() -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "proxy_error",
            "the client went away",
        )
    }

    /// The IP filter refused the client.
    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "your address may not enter",
        )
    }

    /// An upgrade with `--no-websocket`.
    pub fn websocket_off() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "websocket_disabled",
            "WebSocket proxying is off (--no-websocket)",
        )
    }

    /// `CONNECT`: this is no forward proxy.
    pub fn connect_refused() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "bad_request",
            "CONNECT is not supported",
        )
    }

    /// Both `Content-Length` and `Transfer-Encoding` (request smuggling): refused, and the
    /// connection closed, as HAProxy and nginx do.
    pub fn smuggling() -> Self {
        Self {
            close: true,
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "both Content-Length and Transfer-Encoding: send one framing header",
            )
        }
    }

    /// A request head longer than `--max-header-size`: refused, and the connection closed.
    pub fn head_too_large() -> Self {
        Self {
            close: true,
            ..Self::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "header_too_large",
                "request head longer than the proxy's --max-header-size",
            )
        }
    }

    /// A `Content-Length` the proxy cannot read (malformed, repeated with other values, or
    /// padded past any sensible length): refused, and the connection closed.
    pub fn unframeable() -> Self {
        Self {
            close: true,
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "unreadable Content-Length: send one plain decimal length",
            )
        }
    }

    /// A request body that is not valid chunked coding (or one the proxy will not follow,
    /// such as a chunk size padded with zeros): refused, and the connection closed.
    pub fn malformed_body() -> Self {
        Self {
            close: true,
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "malformed chunked request body",
            )
        }
    }

    /// A `Transfer-Encoding` other than `chunked` alone (`admit::coding_refusal`): refused,
    /// and the connection closed.
    pub fn unknown_coding() -> Self {
        Self {
            close: true,
            ..Self::new(
                StatusCode::NOT_IMPLEMENTED,
                "not_implemented",
                "Transfer-Encoding other than chunked: send the body chunked or with a Content-Length",
            )
        }
    }

    /// A request body that paused longer than `--body-timeout` (`limit`): the client's
    /// fault, answered 408, and the connection closed (the rest of the body may still come).
    pub fn body_timeout(limit: std::time::Duration) -> Self {
        Self {
            close: true,
            ..Self::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the request body paused longer than --body-timeout ({limit:?})"),
            )
        }
    }

    /// A request whose `Host` is missing, repeated or malformed (`why` says which).
    pub fn bad_host(why: &'static str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{why}: send exactly one Host (host[:port])"),
        )
    }

    /// A request target no worker should get (`admit::target_refusal`).
    pub fn bad_target(why: &'static str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", why.to_string())
    }

    /// The same answer, closing the connection after it.
    pub fn closing(self) -> Self {
        Self {
            close: true,
            ..self
        }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        error_json(self.code, &self.reason)
    }

    /// As a response (hyper's server, the HTTP/2 front).
    pub fn response(&self) -> Response<ProxyBody> {
        let mut resp = error(self.status, self.code, &self.reason);
        if self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.close {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// As HTTP/1.1 bytes into `out` (the direct path): the head, then the body unless the
    /// request was a `HEAD`.
    pub fn write_h1(&self, out: &mut Vec<u8>, head_request: bool, close: bool) {
        let body = self.body();
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        if self.retry_after {
            out.extend_from_slice(b"retry-after: 1\r\n");
        }
        if close || self.close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_request {
            out.extend_from_slice(body.as_bytes());
        }
    }
}

/// A JSON error response: `{"error":"<code>","reason":"<reason>"}`.
pub fn error(status: StatusCode, code: &str, reason: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::own(error_json(code, reason)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The body of an error of the proxy's own: `{"error":"<code>","reason":"<reason>"}`.
pub fn error_json(code: &str, reason: &str) -> String {
    let mut body = String::with_capacity(32 + code.len() + reason.len());
    body.push_str("{\"error\":\"");
    push_json_escaped(&mut body, code);
    body.push_str("\",\"reason\":\"");
    push_json_escaped(&mut body, reason);
    body.push_str("\"}");
    body
}

fn push_json_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_json() {
        let r = error(StatusCode::BAD_GATEWAY, "proxy_error", "say \"hi\"\n");
        assert_eq!(
            r.body().own_bytes().map(|b| &b[..]),
            Some(&br#"{"error":"proxy_error","reason":"say \"hi\"\u000a"}"#[..])
        );
    }

    #[test]
    fn both_encodings_say_the_same() {
        let a = Answer::no_worker();
        let resp = a.response();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        let mut out = Vec::new();
        a.write_h1(&mut out, false, false);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nretry-after: 1\r\n"), "{text}");
        assert!(text.ends_with(&a.body()), "{text}");
        let mut out = Vec::new();
        Answer::smuggling().write_h1(&mut out, true, false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "HEAD gets no body: {text}");
    }
}
