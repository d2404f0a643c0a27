//! What the proxy adds to a worker's response (the affinity cookie, `X-Sticky-Worker`) and
//! what it learns from one (session cookies set by the worker), for every front.

use std::borrow::Cow;

use http::header::{self, HeaderName, HeaderValue};
use http::HeaderMap;

use super::Proxy;
use crate::routing::table::Pin;
use crate::routing::Decision;
use crate::workers::WorkerId;

static X_STICKY_WORKER: HeaderName = HeaderName::from_static("x-sticky-worker");

/// The fields the proxy adds to one response.
#[derive(Debug, Clone)]
pub struct Decorations<'p> {
    /// `Set-Cookie` of the affinity cookie, when the client lacks a valid one.
    set_cookie: Option<Cow<'p, HeaderValue>>,
    /// `X-Sticky-Worker` (with `--debug`).
    worker: Option<WorkerId>,
}

impl Decorations<'_> {
    /// Nothing to add (interim answers).
    pub const NONE: Decorations<'static> = Decorations {
        set_cookie: None,
        worker: None,
    };

    /// True for a worker's field the proxy replaces with its own (`X-Sticky-Worker` under
    /// `--debug`): the front leaves it out.
    #[inline]
    pub fn replaces(&self, name: &[u8]) -> bool {
        self.worker.is_some() && name.eq_ignore_ascii_case(X_STICKY_WORKER.as_str().as_bytes())
    }

    /// Calls `field(name, value)` for each field to add.
    #[inline]
    pub fn each(&self, mut field: impl FnMut(&[u8], &[u8])) {
        if let Some(cookie) = &self.set_cookie {
            field(b"set-cookie", cookie.as_bytes());
        }
        if let Some(worker) = self.worker {
            let mut digits = [0u8; 5];
            field(b"x-sticky-worker", decimal(worker, &mut digits));
        }
    }

    /// Adds the fields to a header map (the worker's own `X-Sticky-Worker` replaced).
    pub fn apply(&self, headers: &mut HeaderMap) {
        if let Some(cookie) = &self.set_cookie {
            headers.append(header::SET_COOKIE, cookie.clone().into_owned());
        }
        if let Some(worker) = self.worker {
            headers.insert(X_STICKY_WORKER.clone(), HeaderValue::from(worker));
        }
    }
}

/// `n` in decimal, written into `buf`.
#[inline]
fn decimal(mut n: u16, buf: &mut [u8; 5]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

impl Proxy {
    /// What to add to the response of a request routed by `decision`.
    #[inline]
    pub fn decorations(&self, decision: &Decision) -> Decorations<'_> {
        let set_cookie = decision
            .set_affinity
            .then(|| self.router.affinity())
            .flatten()
            .and_then(|a| a.set_cookie(decision.worker));
        Decorations {
            set_cookie,
            worker: self.debug.then_some(decision.worker),
        }
    }

    /// Learns from one `Set-Cookie` value of `worker`'s response: a session cookie it set is
    /// remembered on it.
    #[inline]
    pub fn learn_set_cookie(&self, value: &[u8], pin: Pin) {
        let now = self.router.table().now();
        self.router.learn_set_cookie(value, pin, now);
    }

    /// Learns from every `Set-Cookie` of a response head held as a header map.
    pub fn learn_response(&self, headers: &HeaderMap, pin: Pin) {
        let now = self.router.table().now();
        self.router.learn_from_response(headers, pin, now);
    }
}

#[cfg(test)]
mod tests {
    use super::decimal;

    #[test]
    fn worker_numbers_in_decimal() {
        let mut buf = [0u8; 5];
        for n in [0u16, 7, 10, 99, 1234, u16::MAX] {
            assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes());
        }
    }
}
