//! HTTP/1.1 request and response heads, parsed in place (httparse) into byte ranges of the
//! buffer they came in, and sorted into what the direct path must know: framing, whether
//! the connection stays open, and which headers a proxy drops or replaces.

use std::mem::MaybeUninit;
use std::ops::Range;

/// Most headers one head may carry on the direct path (hyper's limit too): a longer
/// request goes to hyper, a longer response is refused.
pub const MAX_HEADERS: usize = 100;

/// Largest request body the direct path reads whole before forwarding; larger bodies are
/// streamed by hyper.
pub const MAX_DIRECT_BODY: u64 = 64 * 1024;

/// What a header is to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Forwarded as it is.
    Keep,
    /// A hop-by-hop header (RFC 9110 section 7.6.1): not forwarded.
    HopByHop,
    /// Set by the proxy itself (`X-Forwarded-*`, `X-Sticky`): the client's copy is dropped.
    Replaced,
    /// `Content-Length` of a response whose body is chunked: dropped (RFC 9112 6.3).
    Dropped,
    /// A forwarding field the proxy does not set (`Forwarded`, `X-Real-IP`, other
    /// `X-Forwarded-*`): passed on from a `--trust-proxy` front only, dropped from anyone
    /// else, who could claim https or another client address with it.
    FrontOnly,
}

/// One header: where its name and value are, and what it is.
#[derive(Debug, Clone)]
pub struct Field {
    /// The name's bytes in the buffer.
    pub name: Range<usize>,
    /// The value's bytes in the buffer.
    pub value: Range<usize>,
    /// What the proxy does with it.
    pub role: Role,
}

/// How far parsing got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse {
    /// The head is complete and this many bytes long.
    Complete(usize),
    /// More bytes are needed.
    Partial,
    /// Not a head httparse accepts within [`MAX_HEADERS`]: hyper decides what to answer.
    Invalid,
}

/// A request head, as ranges of the buffer it was parsed from.
#[derive(Debug, Default)]
pub struct RequestHead {
    /// The method.
    pub method: Range<usize>,
    /// The request target.
    pub target: Range<usize>,
    /// Every header in order.
    pub fields: Vec<Field>,
    /// The body length (0 without `Content-Length`).
    pub content_length: u64,
    /// The client asked to close the connection after this exchange.
    pub close: bool,
    /// The `Host` value.
    pub host: Option<Range<usize>>,
    /// The first `X-Forwarded-For` value.
    pub forwarded_for: Option<Range<usize>>,
    /// Nothing here needs hyper: HTTP/1.1, origin-form target, no upgrade, no `Expect`,
    /// no `Transfer-Encoding`, a small fixed-length body or none, no extra hop-by-hop
    /// headers named by `Connection`.
    pub direct: bool,
}

impl RequestHead {
    /// Parses the head at the start of `buf`, reusing this value's storage.
    pub fn parse(&mut self, buf: &[u8]) -> Parse {
        let mut headers = uninit_headers();
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(buf, &mut headers) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parse::Partial,
            Err(_) => return Parse::Invalid,
        };
        let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
            return Parse::Invalid;
        };
        let base = buf.as_ptr() as usize;
        let at = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        self.method = at(method.as_bytes());
        self.target = at(target.as_bytes());
        self.fields.clear();
        self.content_length = 0;
        self.close = false;
        self.host = None;
        self.forwarded_for = None;
        // A fragment is no part of a request target; hyper's URI parser drops it.
        self.direct =
            minor == 1 && target.starts_with('/') && !target.contains('#') && method != "CONNECT";
        let mut lengths = 0;
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            let mut role = Role::Keep;
            match classify(name) {
                Name::Connection => {
                    role = Role::HopByHop;
                    for token in tokens(h.value) {
                        if token.eq_ignore_ascii_case(b"close") {
                            self.close = true;
                        } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                            // `upgrade`, or a header it wants dropped: hyper's path does both.
                            self.direct = false;
                        }
                    }
                }
                Name::HopByHop => role = Role::HopByHop,
                Name::TransferEncoding | Name::Upgrade | Name::Expect => self.direct = false,
                Name::ContentLength => {
                    // Repeated (even with one value), hyper merges it: some workers refuse
                    // a duplicate outright.
                    lengths += 1;
                    match parse_length(h.value) {
                        Some(n) if lengths == 1 => self.content_length = n,
                        _ => self.direct = false,
                    }
                }
                Name::Host => {
                    role = Role::Replaced;
                    // Repeated or malformed: hyper's path refuses it (`admit::host_refusal`).
                    if self.host.is_some() || !valid_host(h.value) {
                        self.direct = false;
                    }
                    self.host = Some(at(h.value));
                }
                Name::ForwardedFor => {
                    role = Role::Replaced;
                    if self.forwarded_for.is_none() {
                        self.forwarded_for = Some(at(h.value));
                    }
                }
                Name::ProxySet => role = Role::Replaced,
                Name::FrontOnly => role = Role::FrontOnly,
                Name::SetCookie | Name::Other => {}
            }
            self.fields.push(Field {
                name: at(name),
                value: at(h.value),
                role,
            });
        }
        if self.content_length > MAX_DIRECT_BODY || self.host.is_none() {
            self.direct = false;
        }
        Parse::Complete(len)
    }
}

/// Room for [`MAX_HEADERS`] headers that httparse fills in as it finds them: zeroing
/// 100 slots (3.2 KB) before every head cost more than half of what parsing it did.
#[inline]
fn uninit_headers<'b>() -> [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked: passed through as it is, followed to find its end.
    Chunked,
    /// Until the worker closes the connection.
    #[default]
    UntilClose,
}

/// A response head, as ranges of the buffer it was parsed from.
#[derive(Debug, Default)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// The status code and reason phrase (`200 OK`).
    pub status_line: Range<usize>,
    /// Every header in order.
    pub fields: Vec<Field>,
    /// How the body ends.
    pub framing: Framing,
    /// The worker keeps the connection open after this response.
    pub keep_alive: bool,
    /// It sets a cookie (most responses do not: learning skips them at no cost).
    pub sets_cookie: bool,
}

impl ResponseHead {
    /// Parses the response head at the start of `buf`; `head_request` says the request was
    /// a HEAD (no body whatever the headers say). [`Parse::Invalid`] also for a head whose
    /// framing is unreadable (several different `Content-Length`s).
    pub fn parse(&mut self, buf: &[u8], head_request: bool) -> Parse {
        let mut headers = uninit_headers();
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut headers,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parse::Partial,
            Err(_) => return Parse::Invalid,
        };
        let (Some(minor), Some(status @ 100..)) = (resp.version, resp.code) else {
            return Parse::Invalid;
        };
        let base = buf.as_ptr() as usize;
        let at = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        // "HTTP/1.x " is 9 bytes; the line ends before CR LF (or a bare LF).
        let line_end = memchr::memchr(b'\n', buf).unwrap_or(0);
        let line_end = if line_end > 0 && buf[line_end - 1] == b'\r' {
            line_end - 1
        } else {
            line_end
        };
        if line_end < 12 {
            return Parse::Invalid;
        }
        self.status = status;
        self.status_line = 9..line_end;
        self.fields.clear();
        self.sets_cookie = false;
        let mut keep_alive = minor == 1;
        let mut length: Option<u64> = None;
        let mut chunked = None;
        let mut named_by_connection = false;
        for h in resp.headers.iter() {
            let name = h.name.as_bytes();
            let mut role = Role::Keep;
            match classify(name) {
                Name::Connection => {
                    role = Role::HopByHop;
                    for token in tokens(h.value) {
                        if token.eq_ignore_ascii_case(b"close") {
                            keep_alive = false;
                        } else if token.eq_ignore_ascii_case(b"keep-alive") {
                            keep_alive |= minor == 0;
                        } else {
                            named_by_connection = true;
                        }
                    }
                }
                Name::HopByHop | Name::Upgrade => role = Role::HopByHop,
                Name::TransferEncoding => {
                    // Only the last coding decides whether the body is chunked.
                    let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
                    chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                }
                Name::ContentLength => match (parse_length(h.value), length) {
                    (Some(n), None) => length = Some(n),
                    (Some(n), Some(m)) if n == m => {}
                    _ => return Parse::Invalid,
                },
                Name::SetCookie => self.sets_cookie = true,
                Name::ForwardedFor
                | Name::ProxySet
                | Name::FrontOnly
                | Name::Host
                | Name::Expect
                | Name::Other => {}
            }
            self.fields.push(Field {
                name: at(name),
                value: at(h.value),
                role,
            });
        }
        if named_by_connection {
            self.drop_named_by_connection(buf);
        }
        let framing = if head_request || status < 200 || status == 204 || status == 304 {
            Framing::Empty
        } else {
            match (chunked, length) {
                (Some(true), _) => Framing::Chunked,
                (Some(false), _) | (None, None) => Framing::UntilClose,
                (None, Some(n)) => Framing::Length(n),
            }
        };
        if chunked.is_some() {
            for f in &mut self.fields {
                if classify(&buf[f.name.clone()]) == Name::ContentLength {
                    f.role = Role::Dropped;
                }
            }
        }
        self.keep_alive = keep_alive && framing != Framing::UntilClose;
        self.framing = framing;
        Parse::Complete(len)
    }

    fn drop_named_by_connection(&mut self, buf: &[u8]) {
        let mut named: Vec<Range<usize>> = Vec::new();
        for f in &self.fields {
            if classify(&buf[f.name.clone()]) == Name::Connection {
                for token in tokens(&buf[f.value.clone()]) {
                    let start = token.as_ptr() as usize - buf.as_ptr() as usize;
                    named.push(start..start + token.len());
                }
            }
        }
        for f in &mut self.fields {
            let name = &buf[f.name.clone()];
            // The body passes through as framed: its framing headers stay whatever names them.
            if matches!(classify(name), Name::ContentLength | Name::TransferEncoding) {
                continue;
            }
            if named
                .iter()
                .any(|t| buf[t.clone()].eq_ignore_ascii_case(name))
            {
                f.role = Role::HopByHop;
            }
        }
    }

    /// The values of the `Set-Cookie` headers.
    pub fn set_cookies<'b>(&'b self, buf: &'b [u8]) -> impl Iterator<Item = &'b [u8]> + 'b {
        let fields = if self.sets_cookie {
            &self.fields[..]
        } else {
            &[]
        };
        fields
            .iter()
            .filter(move |f| classify(&buf[f.name.clone()]) == Name::SetCookie)
            .map(move |f| &buf[f.value.clone()])
    }
}

/// True for a `Host` (or `:authority`) value that is `host[:port]` (RFC 9112 3.2, RFC 3986
/// 3.2.2): an IP literal in brackets, or a non-empty reg-name / IPv4 address, then an
/// optional `:` and up to 5 digits. No userinfo (`u@`), no space, not empty.
pub fn valid_host(value: &[u8]) -> bool {
    let rest = match value {
        [b'[', inner @ ..] => {
            let Some(end) = memchr::memchr(b']', inner) else {
                return false;
            };
            let literal = &inner[..end];
            if literal.is_empty()
                || !literal
                    .iter()
                    .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
            {
                return false;
            }
            &inner[end + 1..]
        }
        _ => {
            // One table load per byte: this runs on every request.
            let name = value.iter().take_while(|&&b| reg_name_byte(b)).count();
            if name == 0 {
                return false;
            }
            &value[name..]
        }
    };
    match rest {
        [] => true,
        [b':', port @ ..] => port.len() <= 5 && port.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// unreserved, sub-delims and `%` (RFC 3986 reg-name).
#[inline]
fn reg_name_byte(b: u8) -> bool {
    REG_NAME[usize::from(b)]
}

/// [`reg_name_byte`] as a table: one load per byte of a `Host` (on every request).
static REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
            );
        b += 1;
    }
    t
};

/// What becomes of a client's header whose name contains `_` (`X_Forwarded_For`): many
/// stacks (CGI, WSGI, PHP, some Node middleware) read `_` and `-` as one, so such a name can
/// shadow a header the proxy sets or frames by. Dropped by default, as nginx does
/// (`underscores_in_headers off`); `--allow-underscore-headers` keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Underscores {
    /// Dropped (logged at debug).
    #[default]
    Drop,
    /// Forwarded like any other name.
    Keep,
}

impl Underscores {
    /// True when a field named `name` is dropped by this rule (one byte scan of the name).
    #[inline]
    pub fn drops(self, name: &[u8]) -> bool {
        self == Underscores::Drop && memchr::memchr(b'_', name).is_some()
    }
}

/// What becomes of a request field of an HTTP/2 client on its way to a worker: hop-by-hop
/// fields are dropped, `Host` and those the proxy sets are replaced, the rest kept.
pub fn upstream_role(name: &[u8]) -> Role {
    match classify(name) {
        Name::Connection | Name::HopByHop | Name::TransferEncoding | Name::Upgrade => {
            Role::HopByHop
        }
        Name::Host | Name::ForwardedFor | Name::ProxySet => Role::Replaced,
        Name::FrontOnly => Role::FrontOnly,
        Name::Expect | Name::ContentLength | Name::SetCookie | Name::Other => Role::Keep,
    }
}

/// True for the hop-by-hop headers of RFC 9110 section 7.6.1 (hyper's path keeps its own
/// list as header names; a test checks the two agree).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    matches!(
        classify(name),
        Name::Connection | Name::HopByHop | Name::TransferEncoding | Name::Upgrade
    )
}

/// The header names the proxy treats specially.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Connection,
    HopByHop,
    TransferEncoding,
    Upgrade,
    Expect,
    ContentLength,
    Host,
    ForwardedFor,
    /// `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Sticky`: the proxy sets them.
    ProxySet,
    /// Forwarding fields the proxy does not set (see [`Role::FrontOnly`]).
    FrontOnly,
    SetCookie,
    Other,
}

fn classify(name: &[u8]) -> Name {
    let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
    // By length first: most names are compared with nothing at all.
    match name.len() {
        2 if is(b"te") => Name::HopByHop,
        4 if is(b"host") => Name::Host,
        6 if is(b"expect") => Name::Expect,
        7 if is(b"upgrade") => Name::Upgrade,
        7 if is(b"trailer") => Name::HopByHop,
        8 if is(b"x-sticky") => Name::ProxySet,
        10 if is(b"connection") => Name::Connection,
        10 if is(b"keep-alive") => Name::HopByHop,
        10 if is(b"set-cookie") => Name::SetCookie,
        14 if is(b"content-length") => Name::ContentLength,
        15 if is(b"x-forwarded-for") => Name::ForwardedFor,
        16 if is(b"proxy-connection") => Name::HopByHop,
        16 if is(b"x-forwarded-host") => Name::ProxySet,
        17 if is(b"transfer-encoding") => Name::TransferEncoding,
        17 if is(b"x-forwarded-proto") => Name::ProxySet,
        18 if is(b"proxy-authenticate") => Name::HopByHop,
        19 if is(b"proxy-authorization") => Name::HopByHop,
        9 if is(b"forwarded") || is(b"x-real-ip") => Name::FrontOnly,
        11 if is(b"x-client-ip") => Name::FrontOnly,
        12 if is(b"x-url-scheme") => Name::FrontOnly,
        14 if is(b"true-client-ip") => Name::FrontOnly,
        15 if is(b"front-end-https") => Name::FrontOnly,
        13.. if name[..12].eq_ignore_ascii_case(b"x-forwarded-") => Name::FrontOnly,
        _ => Name::Other,
    }
}

/// The comma-separated tokens of a header value, trimmed, empty ones skipped.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// A `Content-Length` value: digits only, at most 18 of them.
fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        value
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(raw: &str) -> (RequestHead, Parse) {
        let mut head = RequestHead::default();
        let parsed = head.parse(raw.as_bytes());
        (head, parsed)
    }

    #[test]
    fn a_request_for_the_direct_path_is_read_in_place() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nCookie: s=1\r\nX-Forwarded-For: 1.2.3.4\r\nConnection: keep-alive\r\n\r\nrest";
        let (head, parsed) = request(raw);
        assert_eq!(parsed, Parse::Complete(raw.len() - 4));
        assert!(head.direct && !head.close);
        assert_eq!(&raw[head.method.clone()], "GET");
        assert_eq!(&raw[head.target.clone()], "/a?b=1");
        assert_eq!(head.host.clone().map(|r| &raw[r]), Some("x"));
        assert_eq!(head.forwarded_for.clone().map(|r| &raw[r]), Some("1.2.3.4"));
        let roles: Vec<Role> = head.fields.iter().map(|f| f.role).collect();
        assert_eq!(
            roles,
            [Role::Replaced, Role::Keep, Role::Replaced, Role::HopByHop]
        );
    }

    #[test]
    fn what_the_direct_path_leaves_to_hyper() {
        for raw in [
            "GET / HTTP/1.0\r\nHost: x\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /a#frag HTTP/1.1\r\nHost: x\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: x-secret\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n",
        ] {
            let (head, parsed) = request(raw);
            assert!(matches!(parsed, Parse::Complete(_)), "{raw:?}");
            assert!(!head.direct, "{raw:?}");
        }
        assert_eq!(
            request("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").1,
            Parse::Invalid
        );
        assert_eq!(request("GET / HTTP/1.1\r\nHost: x\r\n").1, Parse::Partial);
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(request(&many).1, Parse::Invalid);
    }

    #[test]
    fn a_length_and_close_are_understood_and_a_repeated_length_is_hyper_s() {
        let (head, _) =
            request("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n");
        assert!(head.direct && head.close);
        assert_eq!(head.content_length, 5);
        let (head, _) =
            request("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n");
        assert!(!head.direct);
    }

    fn response(raw: &str, head_request: bool) -> ResponseHead {
        let mut head = ResponseHead::default();
        assert!(matches!(
            head.parse(raw.as_bytes(), head_request),
            Parse::Complete(_)
        ));
        head
    }

    #[test]
    fn response_framing() {
        let r = response("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false);
        assert_eq!((r.framing, r.keep_alive), (Framing::Length(3), true));
        assert_eq!(r.status, 200);
        let r = response("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true);
        assert_eq!(r.framing, Framing::Empty);
        let r = response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
            false,
        );
        assert_eq!(r.framing, Framing::Chunked);
        assert_eq!(r.fields[1].role, Role::Dropped);
        let r = response("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false);
        assert_eq!((r.framing, r.keep_alive), (Framing::UntilClose, false));
        let r = response("HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!(r.framing, Framing::UntilClose);
        for status in ["204 No Content", "304 Not Modified", "103 Early Hints"] {
            let r = response(&format!("HTTP/1.1 {status}\r\n\r\n"), false);
            assert_eq!((r.framing, r.keep_alive), (Framing::Empty, true));
        }
        let r = response("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false);
        assert!(!r.keep_alive);
        let r = response(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(r.keep_alive);
        let r = response(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(!r.keep_alive);
        let mut bad = ResponseHead::default();
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(bad.parse(raw.as_bytes(), false), Parse::Invalid);
        let raw = "HTTP/1.1 000 X\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(bad.parse(raw.as_bytes(), false), Parse::Invalid);
        // A Connection header naming the framing headers does not unframe the body.
        let raw = "HTTP/1.1 200 OK\r\nConnection: Transfer-Encoding, Content-Length\r\nTransfer-Encoding: chunked\r\n\r\n";
        let r = response(raw, false);
        assert_eq!(r.framing, Framing::Chunked);
        assert_eq!(r.fields[1].role, Role::Keep);
    }

    #[test]
    fn response_hop_by_hop_headers_and_status_line() {
        let raw = "HTTP/1.1 404 Not Found\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nSet-Cookie: a=1\r\nX-Other: 2\r\nContent-Length: 0\r\n\r\n";
        let r = response(raw, false);
        assert_eq!(&raw[r.status_line.clone()], "404 Not Found");
        let kept: Vec<&str> = r
            .fields
            .iter()
            .filter(|f| f.role == Role::Keep)
            .map(|f| &raw[f.name.clone()])
            .collect();
        assert_eq!(kept, ["Set-Cookie", "X-Other", "Content-Length"]);
        let cookies: Vec<&[u8]> = r.set_cookies(raw.as_bytes()).collect();
        assert_eq!(cookies, [&b"a=1"[..]]);
        // No reason phrase at all is allowed.
        let raw = "HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n";
        assert_eq!(&raw[response(raw, false).status_line], "200 ");
    }

    mod props {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        const NAMES: [&str; 12] = [
            "Host",
            "Cookie",
            "Connection",
            "Keep-Alive",
            "X-Forwarded-For",
            "Accept",
            "User-Agent",
            "TE",
            "X-Sticky",
            "Content-Type",
            "Proxy-Authorization",
            "X-A",
        ];

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic_and_ranges_stay_inside(
                bytes in vec(any::<u8>(), 0..300),
            ) {
                let mut req = RequestHead::default();
                if let Parse::Complete(n) = req.parse(&bytes) {
                    prop_assert!(n <= bytes.len());
                    for f in &req.fields {
                        prop_assert!(f.name.end <= n && f.value.end <= n);
                    }
                }
                let mut resp = ResponseHead::default();
                if let Parse::Complete(n) = resp.parse(&bytes, false) {
                    prop_assert!(n <= bytes.len() && resp.status_line.end <= n);
                }
            }

            #[test]
            fn every_header_is_found_in_order_with_its_role(
                path in "/[a-z0-9/?=&%.]{0,24}",
                headers in vec((0..NAMES.len(), "[ -~]{0,20}"), 0..10),
                length in proptest::option::of(0u64..100_000),
                tail in vec(any::<u8>(), 0..8),
            ) {
                let mut raw = format!("GET {path} HTTP/1.1\r\nHost: h\r\n");
                for (i, value) in &headers {
                    raw.push_str(&format!("{}: {}\r\n", NAMES[*i], value));
                }
                if let Some(n) = length {
                    raw.push_str(&format!("Content-Length: {n}\r\n"));
                }
                raw.push_str("\r\n");
                let head_len = raw.len();
                let mut bytes = raw.into_bytes();
                bytes.extend_from_slice(&tail);
                let mut req = RequestHead::default();
                prop_assert_eq!(req.parse(&bytes), Parse::Complete(head_len));
                prop_assert_eq!(&bytes[req.target.clone()], path.as_bytes());
                // Values are trimmed by the parser, names are kept as sent.
                let seen: Vec<(&[u8], &[u8])> = req
                    .fields
                    .iter()
                    .skip(1)
                    .take(headers.len())
                    .map(|f| (&bytes[f.name.clone()], &bytes[f.value.clone()]))
                    .collect();
                let sent: Vec<(&[u8], &[u8])> = headers
                    .iter()
                    .map(|(i, v)| (NAMES[*i].as_bytes(), v.trim().as_bytes()))
                    .collect();
                prop_assert_eq!(seen, sent);
                for f in &req.fields {
                    let name = &bytes[f.name.clone()];
                    let expected = match classify(name) {
                        Name::Connection | Name::HopByHop => Role::HopByHop,
                        Name::Host | Name::ForwardedFor | Name::ProxySet => Role::Replaced,
                        Name::FrontOnly => Role::FrontOnly,
                        _ => Role::Keep,
                    };
                    prop_assert_eq!(f.role, expected);
                }
                let extra_host = headers.iter().any(|(i, _)| NAMES[*i] == "Host");
                let odd_connection = headers.iter().any(|(i, v)| {
                    NAMES[*i] == "Connection"
                        && tokens(v.as_bytes()).any(|t| {
                            !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive")
                        })
                });
                let small = length.is_none_or(|n| n <= MAX_DIRECT_BODY);
                prop_assert_eq!(req.direct, !extra_host && !odd_connection && small);
                prop_assert_eq!(req.content_length, length.unwrap_or(0));
            }
        }
    }

    #[test]
    fn hosts_are_host_and_port_only() {
        for good in [
            "example.com",
            "example.com:8080",
            "a",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "my_host.local",
            "xn--bcher-kva.example:",
        ] {
            assert!(valid_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            "u@evil.com x",
            "u@evil.com",
            "a b",
            ":80",
            "a:80:90",
            "a:123456",
            "a:8o",
            "[::1",
            "[]",
            "[::1]x",
            "a/b",
            "a\tb",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }
}
