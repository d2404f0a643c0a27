//! Which headers a worker sees, in one place: the client's fields sorted by
//! [`upstream_role`] (hop-by-hop ones dropped, the proxy's own replaced), then the proxy's
//! fields (`X-Forwarded-For` appended to, `X-Forwarded-Proto`, `X-Forwarded-Host`,
//! `X-Sticky`, and `content-length: 0` where a bodyless method usually has a body); a
//! `--trust-proxy` front's own `X-Forwarded-Proto` and `X-Forwarded-Host` pass, and so do
//! the forwarding fields the proxy does not set ([`Role::FrontOnly`]) from it alone. Names
//! with an underscore are dropped unless `--allow-underscore-headers` ([`Underscores`]).
//! [`RequestWriter`] writes them as HTTP/1.1 bytes (the direct paths and the raw client);
//! [`rewrite_map`] applies the same rules to a header map (hyper's client).

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::proxy::http1::head::{is_hop_by_hop, upstream_role, Role, Underscores};
use crate::proxy::http1::push_header;
use crate::routing::Outcome;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_STICKY: HeaderName = HeaderName::from_static("x-sticky");

/// What the proxy tells a worker about a request.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded<'a> {
    /// The client's address, as an `X-Forwarded-For` value.
    pub client: &'a [u8],
    /// `http` or `https`.
    pub scheme: &'static str,
    /// How the request was routed (`X-Sticky`).
    pub sticky: Outcome,
    /// The peer is a `--trust-proxy` front: its `X-Forwarded-Proto` and `X-Forwarded-Host`
    /// say how the client reached it (`https` where it ended TLS) and are passed on.
    pub trusted_front: bool,
}

/// A request head for a worker, written field by field into one buffer.
#[derive(Debug)]
pub struct RequestWriter<'w, 'a> {
    w: &'w mut Vec<u8>,
    /// The client's `X-Forwarded-For` lines, in order (a list allocates only for a second
    /// line; RFC 9110 5.3: several lines mean their values joined).
    prior_for: Option<&'a [u8]>,
    more_for: Vec<&'a [u8]>,
    /// The client's `X-Forwarded-Proto` and `X-Forwarded-Host` (the last line of each: a
    /// front that appends its own line rather than replacing the client's is read right),
    /// used only when the peer is a trusted front.
    prior_proto: Option<&'a [u8]>,
    prior_host: Option<&'a [u8]>,
    /// The client's other forwarding fields ([`Role::FrontOnly`]), written only when the
    /// peer is a trusted front (a list that allocates only when there are any).
    front_only: Vec<(&'a [u8], &'a [u8])>,
    host: Option<&'a [u8]>,
    has_length: bool,
    usually_has_body: bool,
    underscores: Underscores,
}

impl<'w, 'a> RequestWriter<'w, 'a> {
    /// Starts `METHOD target HTTP/1.1` in `w` (cleared first); `underscores` says what
    /// becomes of client fields whose name has an `_`.
    #[inline]
    pub fn start(
        w: &'w mut Vec<u8>,
        method: &[u8],
        target: &[u8],
        underscores: Underscores,
    ) -> Self {
        w.clear();
        w.extend_from_slice(method);
        w.push(b' ');
        w.extend_from_slice(target);
        w.extend_from_slice(b" HTTP/1.1\r\n");
        Self {
            w,
            prior_for: None,
            more_for: Vec::new(),
            prior_proto: None,
            prior_host: None,
            front_only: Vec::new(),
            host: None,
            has_length: false,
            usually_has_body: matches!(method, b"POST" | b"PUT" | b"PATCH"),
            underscores,
        }
    }

    /// The `Host` (from an HTTP/2 `:authority`, or the field); the first one counts.
    #[inline]
    pub fn host(&mut self, value: &'a [u8]) {
        if self.host.is_none() {
            self.host = Some(value);
            push_header(self.w, b"host", value);
        }
    }

    /// One field of the client's head: written, remembered or dropped by its role.
    #[inline]
    pub fn field(&mut self, name: &'a [u8], value: &'a [u8]) {
        self.classified(name, value, upstream_role(name));
    }

    /// One field whose role the caller's parser already knows (it is
    /// [`upstream_role`]`(name)`).
    #[inline]
    pub fn classified(&mut self, name: &'a [u8], value: &'a [u8], role: Role) {
        match role {
            // The proxy's own names and the framing ones have no `_`: only kept names can
            // carry one.
            Role::Keep if self.underscores.drops(name) => dropped_underscore(name),
            Role::Keep => {
                // Only asked where it matters: most requests are GETs.
                self.has_length |=
                    self.usually_has_body && name.eq_ignore_ascii_case(b"content-length");
                push_header(self.w, name, value);
            }
            Role::Replaced if name.eq_ignore_ascii_case(b"host") => self.host(value),
            Role::Replaced if name.eq_ignore_ascii_case(b"x-forwarded-for") => {
                match self.prior_for {
                    None => self.prior_for = Some(value),
                    Some(_) => self.more_for.push(value),
                }
            }
            Role::Replaced if name.eq_ignore_ascii_case(b"x-forwarded-proto") => {
                self.prior_proto = Some(value);
            }
            Role::Replaced if name.eq_ignore_ascii_case(b"x-forwarded-host") => {
                self.prior_host = Some(value);
            }
            Role::FrontOnly => self.front_only.push((name, value)),
            Role::Replaced | Role::HopByHop | Role::Dropped => {}
        }
    }

    /// The proxy's own fields and the end of the head.
    #[inline]
    pub fn finish(self, fwd: &Forwarded<'_>) {
        let w = self.w;
        if self.usually_has_body && !self.has_length {
            // As browsers and curl do (a worker may wait for a body otherwise).
            push_header(w, b"content-length", b"0");
        }
        w.extend_from_slice(b"x-forwarded-for: ");
        for prior in self.prior_for.iter().chain(&self.more_for) {
            push_hops(w, prior);
        }
        w.extend_from_slice(fwd.client);
        w.extend_from_slice(b"\r\n");
        if fwd.trusted_front {
            for (name, value) in &self.front_only {
                push_header(w, name, value);
            }
        }
        // A trusted front's word, unless empty (it says nothing: the proxy's own is written).
        let front = |said: Option<&'a [u8]>| said.filter(|v| fwd.trusted_front && !v.is_empty());
        let proto = front(self.prior_proto).unwrap_or(fwd.scheme.as_bytes());
        push_header(w, b"x-forwarded-proto", proto);
        // Workers speak HTTP/1.1 and always get a Host (an HTTP/1.0 client may send none).
        let host = self.host.unwrap_or(b"localhost");
        if self.host.is_none() {
            push_header(w, b"host", host);
        }
        push_header(
            w,
            b"x-forwarded-host",
            front(self.prior_host).unwrap_or(host),
        );
        push_header(w, b"x-sticky", fwd.sticky.header_value().as_bytes());
        w.extend_from_slice(b"\r\n");
    }
}

/// One client `X-Forwarded-For` value, then `, ` (nothing for an empty value).
fn push_hops(w: &mut Vec<u8>, value: &[u8]) {
    if !value.is_empty() {
        w.extend_from_slice(value);
        w.extend_from_slice(b", ");
    }
}

fn dropped_underscore(name: &[u8]) {
    tracing::debug!(
        name = %String::from_utf8_lossy(name),
        "client header with an underscore in its name dropped (--allow-underscore-headers keeps it)"
    );
}

/// The same rules on a header map, for hyper's client: hop-by-hop fields (and those
/// `Connection` names) removed, the client's copies of the proxy's fields replaced, names
/// with `_` dropped by `underscores`. With `upgrade`, `Upgrade` and `Connection: upgrade`
/// stay.
pub fn rewrite_map(
    headers: &mut HeaderMap,
    fwd: &Forwarded<'_>,
    upgrade: bool,
    underscores: Underscores,
) {
    strip_underscores(headers, underscores);
    let kept_upgrade = if upgrade {
        headers.remove(header::UPGRADE)
    } else {
        None
    };
    strip_hop_by_hop(headers);
    if let Some(u) = kept_upgrade {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if !headers.contains_key(header::HOST) {
        headers.insert(header::HOST, HeaderValue::from_static("localhost"));
    }
    let mut joined = Vec::new();
    for prior in headers.get_all(&X_FORWARDED_FOR) {
        push_hops(&mut joined, prior.as_bytes());
    }
    joined.extend_from_slice(fwd.client);
    let value = HeaderValue::from_maybe_shared(Bytes::from(joined)).ok();
    if let Some(value) = value {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    if !fwd.trusted_front {
        strip_front_only(headers);
    }
    let front = |headers: &HeaderMap, name| {
        let last = headers.get_all(name).iter().next_back();
        last.filter(|v| fwd.trusted_front && !v.is_empty()).cloned()
    };
    let proto = front(headers, &X_FORWARDED_PROTO);
    let proto = proto.unwrap_or(HeaderValue::from_static(fwd.scheme));
    headers.insert(X_FORWARDED_PROTO.clone(), proto);
    let host = front(headers, &X_FORWARDED_HOST).or_else(|| headers.get(header::HOST).cloned());
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    set_sticky(headers, fwd.sticky);
}

/// Removes the fields whose name `underscores` drops. One pass over the names first: most
/// heads carry none.
pub fn strip_underscores(headers: &mut HeaderMap, underscores: Underscores) {
    let drops = |n: &HeaderName| underscores.drops(n.as_str().as_bytes());
    if !headers.keys().any(drops) {
        return;
    }
    let named: Vec<HeaderName> = headers.keys().filter(|n| drops(n)).cloned().collect();
    for name in named {
        dropped_underscore(name.as_str().as_bytes());
        headers.remove(name);
    }
}

/// Removes the forwarding fields only a trusted front may send ([`Role::FrontOnly`]). One
/// pass over the names first: most heads carry none.
fn strip_front_only(headers: &mut HeaderMap) {
    let front_only = |n: &HeaderName| upstream_role(n.as_str().as_bytes()) == Role::FrontOnly;
    if !headers.keys().any(front_only) {
        return;
    }
    let named: Vec<HeaderName> = headers.keys().filter(|n| front_only(n)).cloned().collect();
    for name in named {
        headers.remove(name);
    }
}

/// `X-Sticky` for the route a request takes (again, when it is resent elsewhere).
pub fn set_sticky(headers: &mut HeaderMap, sticky: Outcome) {
    headers.insert(X_STICKY.clone(), sticky.header_value());
}

/// Removes the hop-by-hop fields of RFC 9110 section 7.6.1, including those `Connection`
/// names. One pass over the (few) names present first: most heads carry none.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(|n| is_hop_by_hop(n.as_str().as_bytes())) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case(b"close"))
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n.as_str().as_bytes()))
        .cloned()
        .collect();
    for name in hop {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(trusted_front: bool) -> Forwarded<'static> {
        Forwarded {
            client: b"10.0.0.9",
            scheme: "https",
            sticky: Outcome::Moved,
            trusted_front,
        }
    }

    /// Both encodings give the worker the same fields, from a trusted front or not.
    #[test]
    fn the_writer_and_the_map_agree() {
        for trusted_front in [false, true] {
            let text = writer_and_map(&fwd(trusted_front));
            let (proto, host) = match trusted_front {
                false => ("https", "example.com"),
                true => ("http", "front.example"),
            };
            assert!(
                text.contains(&format!("\r\nx-forwarded-proto: {proto}\r\n")),
                "{text}"
            );
            assert!(
                text.contains(&format!("\r\nx-forwarded-host: {host}\r\n")),
                "{text}"
            );
            // The forwarding fields the proxy does not set: a trusted front's only.
            for field in [
                "\r\nforwarded: ",
                "\r\nx-real-ip: ",
                "\r\nx-forwarded-ssl: ",
            ] {
                assert_eq!(text.contains(field), trusted_front, "{field:?} in {text}");
            }
        }
    }

    /// The head the writer makes of a client's head, after checking that the header map
    /// rewrite gives the same fields.
    fn writer_and_map(fwd: &Forwarded<'_>) -> String {
        let client: &[(&str, &str)] = &[
            ("host", "example.com"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "gopher"),
            ("x-forwarded-host", "forged.example"),
            ("x-forwarded-host", "front.example"),
            ("x-forwarded-proto", "http"),
            ("forwarded", "for=6.6.6.6;proto=https"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-ssl", "on"),
            ("x-sticky", "kept"),
            ("te", "trailers"),
            ("cookie", "a=b"),
            ("x-forwarded-for", ""),
            ("x-forwarded-for", "5.6.7.8, 9.9.9.9"),
            ("x_forwarded_for", "6.6.6.6"),
            ("content_length", "9"),
        ];
        let mut w = Vec::new();
        let mut writer = RequestWriter::start(&mut w, b"POST", b"/x", Underscores::Drop);
        for (n, v) in client {
            // The direct paths never see `Connection` naming another field (hyper's path
            // takes those); the map rewrite must drop it.
            if *n != "x-secret" {
                writer.field(n.as_bytes(), v.as_bytes());
            }
        }
        writer.finish(fwd);
        let text = String::from_utf8(w).unwrap();
        let mut map = HeaderMap::new();
        for (n, v) in client {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        rewrite_map(&mut map, fwd, false, Underscores::Drop);
        let mut from_map: Vec<String> = map
            .iter()
            .map(|(n, v)| format!("{}: {}", n, v.to_str().unwrap()))
            .collect();
        from_map.push("content-length: 0".into());
        let mut from_writer: Vec<String> = text
            .lines()
            .skip(1)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        from_map.sort();
        from_writer.sort();
        assert_eq!(from_writer, from_map);
        assert!(text.starts_with("POST /x HTTP/1.1\r\n"));
        assert!(
            text.contains("\r\nx-forwarded-for: 1.2.3.4, 5.6.7.8, 9.9.9.9, 10.0.0.9\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nx-sticky: moved\r\n"), "{text}");
        assert!(!text.contains('_'), "{text}");
        assert!(text.ends_with("\r\n\r\n"));
        text
    }

    #[test]
    fn a_request_without_host_gets_one() {
        let mut w = Vec::new();
        RequestWriter::start(&mut w, b"GET", b"/", Underscores::Drop).finish(&fwd(false));
        let text = String::from_utf8(w).unwrap();
        assert!(text.contains("\r\nhost: localhost\r\n"), "{text}");
        assert!(
            text.contains("\r\nx-forwarded-host: localhost\r\n"),
            "{text}"
        );
        assert!(!text.contains("content-length"), "{text}");
    }
}
