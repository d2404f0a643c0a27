//! Reading a session key out of a request head, in place: cookies, headers and query
//! parameters are borrowed from the request, never copied (except a percent-encoded value,
//! which is decoded once).

use std::borrow::Cow;
use std::net::IpAddr;

use http::header::COOKIE;
use http::{HeaderMap, Uri};

use crate::settings::KeySource;

/// A session key borrowed from the request (or the peer address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key<'a> {
    /// Bytes of a cookie, header or query value.
    Bytes(Cow<'a, [u8]>),
    /// The client address.
    Ip(IpAddr),
}

impl Key<'_> {
    /// The bytes the sticky table hashes.
    pub fn hash_input(&self) -> Cow<'_, [u8]> {
        match self {
            Key::Bytes(b) => Cow::Borrowed(b.as_ref()),
            Key::Ip(IpAddr::V4(v4)) => Cow::Owned(v4.octets().to_vec()),
            Key::Ip(IpAddr::V6(v6)) => Cow::Owned(v6.octets().to_vec()),
        }
    }
}

/// Every `name=value` pair of every `Cookie` header, in order.
pub fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .filter_map(cookie_pair)
}

/// One `name=value` of a `Cookie` header: both trimmed, the value's quotes stripped;
/// `None` without `=`.
#[inline]
fn cookie_pair(pair: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = memchr::memchr(b'=', pair)?;
    Some((
        pair[..eq].trim_ascii(),
        strip_quotes(pair[eq + 1..].trim_ascii()),
    ))
}

/// The value of the first cookie called `name`, if present and non-empty: [`cookies`]
/// and a search, written as one loop (it runs twice per request: the session key and the
/// affinity cookie).
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    let name = name.as_bytes();
    for header in headers.get_all(COOKIE) {
        for pair in header.as_bytes().split(|&b| b == b';') {
            match cookie_pair(pair) {
                Some((n, value)) if n == name => return (!value.is_empty()).then_some(value),
                _ => {}
            }
        }
    }
    None
}

fn strip_quotes(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

/// The value of query parameter `name`, percent-decoded, if present and non-empty.
pub fn query_param<'u>(uri: &'u Uri, name: &str) -> Option<Cow<'u, [u8]>> {
    let query = uri.query()?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .filter(|v| !v.is_empty())
        .map(percent_decode)
}

fn percent_decode(v: &str) -> Cow<'_, [u8]> {
    if !v.contains(['%', '+']) {
        return Cow::Borrowed(v.as_bytes());
    }
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The engine.io session id of a socket.io request (`?EIO=4&transport=...&sid=X`).
pub fn engineio_sid(uri: &Uri) -> Option<Cow<'_, [u8]>> {
    if !is_engineio(uri) {
        return None;
    }
    query_param(uri, "sid")
}

/// True for an engine.io request (its query names the protocol version).
pub fn is_engineio(uri: &Uri) -> bool {
    uri.query()
        .is_some_and(|q| q.split('&').any(|p| p.starts_with("EIO=")))
}

/// True for an engine.io polling handshake: its reply carries the new session id.
pub fn is_engineio_handshake(uri: &Uri) -> bool {
    is_engineio(uri) && query_param(uri, "sid").is_none()
}

/// The first key the configured sources find; engine.io's `sid` comes before them all,
/// because that session lives in exactly one process.
pub fn extract<'a>(
    sources: &[KeySource],
    headers: &'a HeaderMap,
    uri: &'a Uri,
    peer: IpAddr,
) -> Option<Key<'a>> {
    extract_from(sources, headers, uri, peer).map(|(k, _)| k)
}

/// [`extract`], and the source that found the key (`None` for engine.io's `sid`).
pub fn extract_from<'a, 's>(
    sources: &'s [KeySource],
    headers: &'a HeaderMap,
    uri: &'a Uri,
    peer: IpAddr,
) -> Option<(Key<'a>, Option<&'s KeySource>)> {
    if let Some(sid) = engineio_sid(uri) {
        return Some((Key::Bytes(sid), None));
    }
    sources.iter().find_map(|source| {
        let key = match source {
            KeySource::Cookie(name) => cookie(headers, name).map(|v| Key::Bytes(Cow::Borrowed(v))),
            KeySource::Header(name) => headers
                .get(name)
                .map(|v| v.as_bytes())
                .filter(|v| !v.is_empty())
                .map(|v| Key::Bytes(Cow::Borrowed(v))),
            KeySource::Query(name) => query_param(uri, name).map(Key::Bytes),
            KeySource::Ip => Some(Key::Ip(canonical_ip(peer))),
            KeySource::None => None,
        };
        key.map(|k| (k, Some(source)))
    })
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) as their IPv4 form.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The value a `Set-Cookie` header gives cookie `name`, if it sets that cookie to a
/// non-empty value.
pub fn set_cookie_value<'h>(set_cookie: &'h [u8], name: &str) -> Option<&'h [u8]> {
    let first = set_cookie.split(|&b| b == b';').next()?;
    let eq = first.iter().position(|&b| b == b'=')?;
    if first[..eq].trim_ascii() != name.as_bytes() {
        return None;
    }
    Some(strip_quotes(first[eq + 1..].trim_ascii())).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 2, 3));

    #[test]
    fn cookie_source_reads_the_named_cookie_from_any_cookie_header() {
        let h = headers(&[
            ("cookie", "a=1; b=2"),
            ("cookie", "connect.sid=\"s%3Aabc\""),
        ]);
        let uri: Uri = "/".parse().expect("uri");
        let key = extract(&[KeySource::Cookie("connect.sid".into())], &h, &uri, PEER);
        assert_eq!(key, Some(Key::Bytes(Cow::Borrowed(b"s%3Aabc"))));
        assert_eq!(cookie(&h, "b"), Some(&b"2"[..]));
        assert_eq!(cookie(&h, "c"), None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]
        /// The one-loop search finds what the pair iterator finds, on headers made of the
        /// bytes that matter (separators, spaces, quotes) and short names.
        #[test]
        fn cookie_finds_what_the_pair_iterator_finds(
            values in proptest::collection::vec("[ab;= \"\t]{0,12}", 1..3),
            name in "[ab]{0,2}",
        ) {
            let pairs: Vec<(&str, &str)> = values.iter().map(|v| ("cookie", v.as_str())).collect();
            let h = headers(&pairs);
            let expected = cookies(&h)
                .find(|(n, _)| *n == name.as_bytes())
                .map(|(_, v)| v)
                .filter(|v| !v.is_empty());
            proptest::prop_assert_eq!(cookie(&h, &name), expected);
        }
    }

    #[test]
    fn first_present_source_wins() {
        let h = headers(&[("x-s", "H")]);
        let uri: Uri = "/?t=Q".parse().expect("uri");
        let sources = [
            KeySource::Cookie("connect.sid".into()),
            KeySource::Query("t".into()),
            KeySource::Header(http::HeaderName::from_static("x-s")),
        ];
        assert_eq!(
            extract(&sources, &h, &uri, PEER),
            Some(Key::Bytes(Cow::Borrowed(b"Q")))
        );
        let none = [KeySource::Cookie("x".into()), KeySource::Ip];
        assert_eq!(extract(&none, &h, &uri, PEER), Some(Key::Ip(PEER)));
        assert_eq!(extract(&[KeySource::None], &h, &uri, PEER), None);
    }

    #[test]
    fn engineio_sid_comes_first_and_has_no_fixed_length() {
        let h = headers(&[("cookie", "connect.sid=abc")]);
        let sources = [KeySource::Cookie("connect.sid".into())];
        for sid in ["AbCdEfGhIjKlMnOp", "AbCdEfGhIjKlMnOpQrSt", "x"] {
            let uri: Uri = format!("/socket.io/?EIO=4&transport=polling&sid={sid}")
                .parse()
                .expect("uri");
            assert_eq!(
                extract(&sources, &h, &uri, PEER),
                Some(Key::Bytes(Cow::Owned(sid.as_bytes().to_vec())))
            );
            assert!(!is_engineio_handshake(&uri));
        }
        let handshake: Uri = "/socket.io/?EIO=4&transport=polling&t=x"
            .parse()
            .expect("uri");
        assert!(is_engineio_handshake(&handshake));
        let not_eio: Uri = "/?sid=zzz".parse().expect("uri");
        assert_eq!(engineio_sid(&not_eio), None);
    }

    #[test]
    fn query_values_are_percent_decoded() {
        let uri: Uri = "/?k=a%2Fb+c%zz%4".parse().expect("uri");
        assert_eq!(query_param(&uri, "k").as_deref(), Some(&b"a/b c%zz%4"[..]));
    }

    #[test]
    fn mapped_ipv6_is_ipv4() {
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().expect("ip");
        assert_eq!(canonical_ip(mapped), PEER);
    }

    #[test]
    fn set_cookie_names_must_match() {
        let sc = b"connect.sid=s%3Axyz; Path=/; HttpOnly";
        assert_eq!(set_cookie_value(sc, "connect.sid"), Some(&b"s%3Axyz"[..]));
        assert_eq!(set_cookie_value(sc, "other"), None);
        assert_eq!(
            set_cookie_value(b"connect.sid=; Max-Age=0", "connect.sid"),
            None
        );
    }
}
