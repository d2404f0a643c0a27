//! A request's header block, checked as it is decoded: pseudo-fields, regular fields,
//! cookie crumbs, and what the exchange needs of them.

use super::*;
use crate::proxy::exchange::admit;

/// What a request is, besides its regular fields.
pub struct RequestHead {
    pub(super) method: Method,
    /// Origin form.
    pub(super) uri: Uri,
    /// `:authority`, or the `host` field.
    pub(super) host: Option<HeaderValue>,
    /// The cookie crumbs joined into one field.
    pub(super) cookie: Option<HeaderValue>,
}

/// The names of the static table's regular entries (15..=61), as header names.
pub(super) static STATIC_NAMES: [HeaderName; 47] = [
    HeaderName::from_static("accept-charset"),
    HeaderName::from_static("accept-encoding"),
    HeaderName::from_static("accept-language"),
    HeaderName::from_static("accept-ranges"),
    HeaderName::from_static("accept"),
    HeaderName::from_static("access-control-allow-origin"),
    HeaderName::from_static("age"),
    HeaderName::from_static("allow"),
    HeaderName::from_static("authorization"),
    HeaderName::from_static("cache-control"),
    HeaderName::from_static("content-disposition"),
    HeaderName::from_static("content-encoding"),
    HeaderName::from_static("content-language"),
    HeaderName::from_static("content-length"),
    HeaderName::from_static("content-location"),
    HeaderName::from_static("content-range"),
    HeaderName::from_static("content-type"),
    HeaderName::from_static("cookie"),
    HeaderName::from_static("date"),
    HeaderName::from_static("etag"),
    HeaderName::from_static("expect"),
    HeaderName::from_static("expires"),
    HeaderName::from_static("from"),
    HeaderName::from_static("host"),
    HeaderName::from_static("if-match"),
    HeaderName::from_static("if-modified-since"),
    HeaderName::from_static("if-none-match"),
    HeaderName::from_static("if-range"),
    HeaderName::from_static("if-unmodified-since"),
    HeaderName::from_static("last-modified"),
    HeaderName::from_static("link"),
    HeaderName::from_static("location"),
    HeaderName::from_static("max-forwards"),
    HeaderName::from_static("proxy-authenticate"),
    HeaderName::from_static("proxy-authorization"),
    HeaderName::from_static("range"),
    HeaderName::from_static("referer"),
    HeaderName::from_static("refresh"),
    HeaderName::from_static("retry-after"),
    HeaderName::from_static("server"),
    HeaderName::from_static("set-cookie"),
    HeaderName::from_static("strict-transport-security"),
    HeaderName::from_static("transfer-encoding"),
    HeaderName::from_static("user-agent"),
    HeaderName::from_static("vary"),
    HeaderName::from_static("via"),
    HeaderName::from_static("www-authenticate"),
];

/// The fields of a request's header block, checked as they are decoded.
pub struct Fields {
    pub(super) method: Option<Bytes>,
    pub(super) scheme: Option<Bytes>,
    pub(super) authority: Option<Bytes>,
    pub(super) path: Option<Bytes>,
    /// The regular fields but `cookie`, in order.
    pub(super) headers: Vec<(HeaderName, HeaderValue)>,
    /// The first cookie crumb, and the rest joined to it (rarely more than one).
    pub(super) cookie: Option<Bytes>,
    pub(super) more_cookies: Option<Vec<u8>>,
    pub(super) content_length: Option<u64>,
    pub(super) regular_seen: bool,
    pub(super) malformed: Option<&'static str>,
    pub(super) size: usize,
    pub(super) max_size: usize,
    pub(super) too_large: bool,
}

impl Fields {
    /// No fields yet; at most `max_size` bytes of them are kept (RFC 9113 field sizes).
    pub fn new(max_size: usize) -> Self {
        Self {
            method: None,
            scheme: None,
            authority: None,
            path: None,
            headers: Vec::with_capacity(16),
            cookie: None,
            more_cookies: None,
            content_length: None,
            regular_seen: false,
            malformed: None,
            size: 0,
            max_size,
            too_large: false,
        }
    }

    pub(super) fn bad(&mut self, why: &'static str) {
        self.malformed.get_or_insert(why);
    }

    /// One decoded field, checked (a malformed one marks the request malformed).
    pub fn add(&mut self, name: Name, value: Bytes) {
        self.size += name.as_bytes().len() + value.len() + 32;
        if self.size > self.max_size {
            // Still decoded (the table must follow), no longer kept.
            self.too_large = true;
            return;
        }
        let header = match name {
            Name::Static(i) if i > hpack::index::STATUS + 6 => {
                STATIC_NAMES[usize::from(i) - 15].clone()
            }
            Name::Static(i) => return self.pseudo(i, value),
            Name::Literal(b) => {
                if let Some(i) = pseudo_index(&b) {
                    return self.pseudo(i, value);
                }
                match HeaderName::from_lowercase(&b) {
                    Ok(n) => n,
                    Err(_) => return self.bad("invalid or uppercase field name"),
                }
            }
        };
        self.regular_seen = true;
        if hpack::is_connection_specific(&header) {
            return self.bad("connection-specific field");
        }
        if matches!(value.first().zip(value.last()), Some((a, z)) if is_space(*a) || is_space(*z)) {
            // RFC 9113 8.2.1: HTTP/1.1 would drop it silently, so the worker would see
            // another value than this stream carried.
            return self.bad("field value with leading or trailing whitespace");
        }
        if header == header::TE && value.as_ref() != b"trailers" {
            return self.bad("te other than trailers");
        }
        if header == header::HOST && self.headers.iter().any(|(n, _)| n == header::HOST) {
            return self.bad("more than one host");
        }
        if header == header::COOKIE {
            // Crumbs are joined back into one field for HTTP/1.1 (RFC 9113, 8.2.3).
            match (&self.cookie, &mut self.more_cookies) {
                (None, _) => self.cookie = Some(value),
                (Some(first), more) => {
                    let joined = more.get_or_insert_with(|| first.to_vec());
                    joined.extend_from_slice(b"; ");
                    joined.extend_from_slice(&value);
                }
            }
            return;
        }
        if header == header::CONTENT_LENGTH {
            let n = std::str::from_utf8(&value)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse().ok());
            match (n, self.content_length) {
                (Some(n), None) => self.content_length = Some(n),
                // The same length again: the worker gets it once.
                (Some(n), Some(m)) if n == m => return,
                _ => return self.bad("invalid content-length"),
            }
        }
        match HeaderValue::from_maybe_shared(value) {
            Ok(v) => self.headers.push((header, v)),
            Err(_) => self.bad("invalid field value"),
        }
    }

    pub(super) fn pseudo(&mut self, index: u8, value: Bytes) {
        if self.regular_seen {
            return self.bad("pseudo-header after a regular field");
        }
        let slot = match index {
            hpack::index::METHOD => &mut self.method,
            hpack::index::SCHEME => &mut self.scheme,
            hpack::index::AUTHORITY => &mut self.authority,
            hpack::index::PATH => &mut self.path,
            _ => return self.bad("unknown pseudo-header"),
        };
        if slot.replace(value).is_some() {
            self.bad("repeated pseudo-header");
        }
    }

    /// The request's method, target, host and cookie, checked (RFC 9113, 8.3.1).
    pub fn head(&mut self) -> Result<RequestHead, &'static str> {
        if let Some(why) = self.malformed {
            return Err(why);
        }
        let method = self.method.take().ok_or("no :method")?;
        let method = Method::from_bytes(&method).map_err(|_| "invalid :method")?;
        let uri = if method == Method::CONNECT {
            // Refused by the forwarding path (this is no forward proxy).
            Uri::from_static("/")
        } else {
            if self.scheme.is_none() {
                return Err("no :scheme");
            }
            let path = self
                .path
                .take()
                .filter(|p| !p.is_empty())
                .ok_or("no :path")?;
            if path[0] != b'/' && &path[..] != b"*" {
                return Err(":path not absolute");
            }
            let uri = Uri::from_maybe_shared(path).map_err(|_| "invalid :path")?;
            if let Some(why) = admit::target_refusal(&method, &uri) {
                return Err(why);
            }
            uri
        };
        let cookie = match self.more_cookies.take() {
            Some(joined) => Some(Bytes::from(joined)),
            None => self.cookie.take(),
        };
        let cookie = cookie
            .map(HeaderValue::from_maybe_shared)
            .transpose()
            .map_err(|_| "invalid cookie")?;
        let host_field = self.headers.iter().position(|(n, _)| n == header::HOST);
        let host = match (self.authority.take(), host_field) {
            (Some(authority), Some(i)) => {
                // Two names for the target must agree.
                if self.headers[i].1.as_bytes() != &authority[..] {
                    return Err("host differs from :authority");
                }
                Some(self.headers.remove(i).1)
            }
            (Some(authority), None) => {
                Some(HeaderValue::from_maybe_shared(authority).map_err(|_| "invalid :authority")?)
            }
            (None, Some(i)) => Some(self.headers.remove(i).1),
            (None, None) => None,
        };
        Ok(RequestHead {
            method,
            uri,
            host,
            cookie,
        })
    }

    /// The request (without a body) for the general path.
    pub(super) fn into_request(self, head: RequestHead) -> Request<()> {
        let mut headers = HeaderMap::with_capacity(self.headers.len() + 6);
        if let Some(host) = head.host {
            headers.insert(header::HOST, host);
        }
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        if let Some(cookie) = head.cookie {
            headers.insert(header::COOKIE, cookie);
        }
        let mut req = Request::new(());
        *req.method_mut() = head.method;
        *req.uri_mut() = head.uri;
        *req.version_mut() = Version::HTTP_2;
        *req.headers_mut() = headers;
        req
    }

    /// The fields as trailers; `None` when they cannot be (pseudo-headers, malformed).
    pub fn into_trailers(self) -> Option<HeaderMap> {
        let pseudo = self.method.is_some()
            || self.scheme.is_some()
            || self.authority.is_some()
            || self.path.is_some();
        if self.malformed.is_some() || pseudo || self.too_large {
            return None;
        }
        let mut trailers = HeaderMap::with_capacity(self.headers.len() + 1);
        for (name, value) in self.headers {
            trailers.append(name, value);
        }
        if let Some(cookie) = self.cookie {
            if let Ok(v) = HeaderValue::from_maybe_shared(cookie) {
                trailers.append(header::COOKIE, v);
            }
        }
        Some(trailers)
    }
}

pub(super) fn pseudo_index(name: &[u8]) -> Option<u8> {
    match name {
        b":authority" => Some(hpack::index::AUTHORITY),
        b":method" => Some(hpack::index::METHOD),
        b":path" => Some(hpack::index::PATH),
        b":scheme" => Some(hpack::index::SCHEME),
        b":status" => Some(hpack::index::STATUS),
        n if n.starts_with(b":") => Some(0),
        _ => None,
    }
}

/// SP or HTAB (RFC 9110 5.6.3's whitespace).
fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_names_are_the_static_tables() {
        for (i, name) in STATIC_NAMES.iter().enumerate() {
            assert_eq!(name.as_str(), hpack::STATIC[i + 14].0, "index {}", i + 15);
        }
    }
}
