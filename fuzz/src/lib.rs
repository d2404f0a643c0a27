//! Fuzz target bodies for sticky-cluster, shared by the libFuzzer targets
//! (`fuzz_targets/*.rs`, nightly + cargo-fuzz) and the stable replay runner
//! (`examples/replay.rs`).
//!
//! Every target takes arbitrary bytes and must never panic. Inputs are split into
//! newline-separated fields, so seeds are readable text and libFuzzer's mutations (and its
//! dictionaries, `dict/*.dict`) keep their structure. Besides "does not panic", each target
//! checks a few documented properties with `assert!`; an assertion failure is a finding too.

#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, COOKIE, SET_COOKIE};
use http::{HeaderMap, Method, Uri};

use sticky_cluster::internal::ipfilter::{IpFilter, TrustedProxies};
use sticky_cluster::internal::routing::affinity::Affinity;
use sticky_cluster::internal::routing::key::{self, Key};
use sticky_cluster::internal::routing::table::StickyTable;
use sticky_cluster::internal::routing::Router;
use sticky_cluster::internal::workers::{WorkerSet, WorkerState};
use sticky_cluster::{KeySource, Settings};

/// The names of the targets, for the replay runner.
pub const TARGETS: [&str; 9] = [
    "key_extraction",
    "affinity_cookie",
    "ip_filter",
    "engineio_handshake",
    "h1_request_head",
    "h1_response_head",
    "chunked",
    "h2_frames",
    "hpack_decode",
];

/// Runs target `name` on `data`; `false` for an unknown name.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "key_extraction" => key_extraction(data),
        "affinity_cookie" => affinity_cookie(data),
        "ip_filter" => ip_filter(data),
        "engineio_handshake" => engineio_handshake(data),
        "h1_request_head" => h1_request_head(data),
        "h1_response_head" => h1_response_head(data),
        "chunked" => chunked(data),
        "h2_frames" => h2_frames(data),
        "hpack_decode" => hpack_decode(data),
        _ => return false,
    }
    true
}

fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&b| b == b'\n')
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An address from text if it parses, else from the bytes themselves (4 or 16 of them).
fn ip_from(b: &[u8]) -> IpAddr {
    if let Some(ip) = std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return ip;
    }
    match b.len() {
        0..=4 => {
            let mut o = [0u8; 4];
            o[..b.len()].copy_from_slice(b);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        _ => {
            let mut o = [0u8; 16];
            let n = b.len().min(16);
            o[..n].copy_from_slice(&b[..n]);
            IpAddr::V6(Ipv6Addr::from(o))
        }
    }
}

/// Base settings, built once (`Settings::default` reads the CPU count).
fn base_settings() -> &'static Settings {
    static S: OnceLock<Settings> = OnceLock::new();
    S.get_or_init(Settings::default)
}

fn is_subslice(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    inner.is_empty() || (i >= o && i + inner.len() <= o + outer.len())
}

/// (a) Key extraction and the whole routing decision over a fuzzed request head.
///
/// Input, one field per line:
/// 1. the method (`GET`; anything `Method::from_bytes` refuses is GET),
/// 2. the request target (`/socket.io/?EIO=4&sid=x`; anything `Uri` refuses is `/`),
/// 3. key sources, space-separated, as for `--session-key` (`cookie:connect.sid ip`);
///    unparsable ones are skipped,
/// 4. the peer address (text, else raw bytes),
/// 5. a control byte: bit i set = worker i up (3 workers), bit 3 = hold, bit 4 = affinity
///    cookie off, bit 5 = a custom session-hash function, bits 6-7 = table cap 1/2/8/64,
/// 6. and on: request headers `Name: value` (a line without a colon is a `Cookie` value);
///    a line starting with `<` is a response header (`<Set-Cookie: connect.sid=x`) or, when
///    it has no colon, a response body chunk for the engine.io handshake sniffer.
pub fn key_extraction(data: &[u8]) {
    let mut it = lines(data);
    let method = it
        .next()
        .and_then(|m| Method::from_bytes(m).ok())
        .unwrap_or(Method::GET);
    let uri_bytes = it.next().unwrap_or(b"/");
    let uri = Uri::try_from(uri_bytes).unwrap_or_else(|_| Uri::from_static("/"));
    let sources: Vec<KeySource> = it
        .next()
        .map(|l| {
            text(l)
                .split(' ')
                .filter_map(|s| KeySource::from_str(s).ok())
                .collect()
        })
        .unwrap_or_default();
    let peer = ip_from(it.next().unwrap_or(b""));
    let control = it.next().and_then(|c| c.first().copied()).unwrap_or(0b111);

    let mut headers = HeaderMap::new();
    let mut response = HeaderMap::new();
    let mut bodies: Vec<&[u8]> = Vec::new();
    for line in it.take(64) {
        let (is_response, line) = match line.strip_prefix(b"<") {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(c) => match HeaderName::from_bytes(&line[..c]) {
                Ok(n) => (n, line[c + 1..].trim_ascii_start()),
                Err(_) => continue,
            },
            None if is_response => {
                bodies.push(line);
                continue;
            }
            None => (COOKIE, line),
        };
        let target = if is_response {
            &mut response
        } else {
            &mut headers
        };
        if let Ok(v) = HeaderValue::from_bytes(value) {
            target.append(name, v);
        }
    }

    let mut builder = http::Request::builder().method(method);
    builder = builder.uri(uri.clone());
    let Ok(req) = builder.body(()) else { return };
    let (mut parts, ()) = req.into_parts();
    parts.headers = headers;
    let (headers, uri) = (&parts.headers, &parts.uri);

    // --- key.rs, piece by piece ---
    let sid = key::engineio_sid(uri);
    if sid.is_some() {
        assert!(
            key::is_engineio(uri),
            "a sid is only read from engine.io requests"
        );
        assert!(
            !key::is_engineio_handshake(uri),
            "a request with a sid is no handshake"
        );
    }
    if let Some(s) = &sid {
        assert!(!s.is_empty(), "an empty sid is no sid");
    }
    let all_cookies: Vec<(&[u8], &[u8])> = key::cookies(headers).collect();
    for (name, value) in &all_cookies {
        assert!(!name.contains(&b';') && !value.contains(&b';'));
        if let Ok(name) = std::str::from_utf8(name) {
            let found = key::cookie(headers, name);
            if let Some(v) = found {
                assert!(!v.is_empty());
            }
        }
        let _ = key::query_param(uri, &text(name));
    }
    let probe_names = ["connect.sid", "sticky.worker", "sid", "EIO", "t", ""];
    for name in probe_names {
        let _ = key::cookie(headers, name);
        if let Some(v) = key::query_param(uri, name) {
            assert!(!v.is_empty());
            assert!(v.len() <= uri.query().map_or(0, str::len));
        }
    }
    let every_source = [
        KeySource::Cookie("connect.sid".into()),
        KeySource::Header(HeaderName::from_static("x-session")),
        KeySource::Header(COOKIE),
        KeySource::Query("token".into()),
        KeySource::Ip,
        KeySource::None,
    ];
    for source in sources.iter().chain(&every_source) {
        let one = std::slice::from_ref(source);
        let got = key::extract(one, headers, uri, peer);
        match (&sid, &got) {
            (Some(s), Some(Key::Bytes(b))) => assert_eq!(s, b, "the sid comes first"),
            (Some(_), other) => panic!("engine.io sid present but extract gave {other:?}"),
            (None, _) => {}
        }
        if sid.is_none() {
            match source {
                KeySource::Ip => {
                    assert_eq!(got, Some(Key::Ip(key::canonical_ip(peer))));
                }
                KeySource::None => assert_eq!(got, None),
                KeySource::Cookie(name) => {
                    let want = key::cookie(headers, name);
                    assert_eq!(got.as_ref().map(Key::hash_input).as_deref(), want);
                }
                _ => {}
            }
        }
        if let Some(k) = &got {
            let input = k.hash_input();
            if let Key::Bytes(_) = k {
                assert!(!input.is_empty(), "an empty value is no key");
            }
        }
    }
    let _ = key::extract(&sources, headers, uri, peer);
    let _ = key::extract(&every_source, headers, uri, peer);
    let canon = key::canonical_ip(peer);
    if let IpAddr::V6(v6) = canon {
        assert!(
            v6.to_ipv4_mapped().is_none(),
            "canonical form is never mapped"
        );
    }

    // Set-Cookie parsing and the engine.io handshake sniffer, over every response line.
    for value in response.get_all(SET_COOKIE) {
        for name in probe_names {
            if let Some(v) = key::set_cookie_value(value.as_bytes(), name) {
                assert!(!v.is_empty());
                assert!(is_subslice(value.as_bytes(), v));
            }
        }
    }
    for chunk in bodies.iter().copied().chain([data, uri_bytes]) {
        if let Some(s) = sticky_cluster::internal::handshake_sid(chunk) {
            assert!(!s.is_empty() && !s.contains(&b'"'));
            assert!(is_subslice(chunk, s));
        }
        let _ = key::set_cookie_value(chunk, "connect.sid");
    }

    // --- the full decision (routing/mod.rs) over the same head ---
    let mut settings = base_settings().clone();
    settings.session_keys = sources;
    settings.session_max = [1, 2, 8, 64][usize::from(control >> 6)];
    settings.session_ttl = Duration::from_secs(1);
    if control & 0x10 != 0 {
        settings.affinity_cookie = None;
    }
    const N: u16 = 3;
    let table = Arc::new(StickyTable::new(settings.session_max, settings.session_ttl));
    let affinity = settings
        .affinity_cookie
        .as_deref()
        .map(|name| Affinity::new(name, b"fuzz-secret-0123456789", usize::from(N), false));
    let mut router = Router::new(&settings, table, affinity);
    if control & 0x20 != 0 {
        router = router.with_session_hash(Arc::new(|p: &http::request::Parts| {
            p.headers
                .get("x-tenant")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        }));
    }
    let addr = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
    let workers = WorkerSet::new((0..N).map(|i| (addr(9000 + i), addr(9100 + i))), []);
    for i in 0..N {
        if control & (1 << i) != 0 {
            workers.set_state(i, WorkerState::Up);
        }
    }
    let hold = control & 0x08 != 0;
    let any_up = workers.up_count() > 0;
    let custom = control & 0x20 != 0;
    // Whether the router finds a key in this request, and so must keep it where it put it.
    let keyed = router.sticky()
        && (sid.is_some()
            || (custom && parts.headers.contains_key("x-tenant"))
            || key::extract(&settings.key_sources(), &parts.headers, &parts.uri, peer).is_some());
    // Learning other keys from the response may evict ours from a small table.
    let roomy = settings.session_max >= 64 && response.get_all(SET_COOKIE).iter().count() < 16;
    let mut last: Option<(u32, u16)> = None;
    for now in [0u32, 1, 5, 9, 10, 11, 30] {
        let d = router.route(&parts, peer, &workers, now, hold);
        match d {
            None => assert!(!any_up, "a worker is up but no decision"),
            Some(d) => {
                assert!(usize::from(d.worker) < usize::from(N));
                if !d.wait {
                    assert!(workers.is_up(d.worker), "routed to a worker that is not up");
                } else {
                    assert!(hold, "wait without hold");
                }
                // A keyed request routed again within the TTL, its worker still up, stays put.
                if let Some((then, prev)) = last {
                    if keyed && roomy && !d.wait && now - then < 10 {
                        assert_eq!(d.worker, prev, "a keyed request moved at tick {now}");
                    }
                }
                last = (!d.wait).then_some((now, d.worker));
                router.learn_from_response(&response, d.pin(), now);
                let _ = d.outcome.header_value();
                if let Some(a) = router.affinity() {
                    let _ = a.set_cookie(d.worker);
                }
            }
        }
        assert!(router.table().len() <= router.table().capacity());
    }
    if let Some(s) = &sid {
        router.learn_key(s, sticky_cluster::internal::routing::table::Pin::worker(0), 31, sticky_cluster::internal::metrics::Learned::EngineIo);
        router.forget_key(s);
    }
    let _ = router.table().sweep(1000);
    assert!(router.table().is_empty() || router.table().len() <= settings.session_max);
}

/// (b) The affinity cookie: verifying arbitrary values, and finding it in an arbitrary
/// `Cookie` header.
///
/// Input: line 1 the cookie name, line 2 the secret, line 3 a control byte (low 4 bits:
/// worker count 0-15; bit 4: Secure), then every further line is a `Cookie` header value
/// (and is also verified as a raw cookie value).
pub fn affinity_cookie(data: &[u8]) {
    let mut it = lines(data);
    let name_bytes = it.next().unwrap_or(b"sticky.worker");
    let name = text(name_bytes);
    let secret = it.next().unwrap_or(b"");
    let control = it.next().and_then(|c| c.first().copied()).unwrap_or(4);
    let n = usize::from(control & 0x0f);
    let a = Affinity::new(&name, secret, n, control & 0x10 != 0);
    assert_eq!(a.name(), name);

    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    let mut tokens = Vec::with_capacity(n);
    for w in 0..n as u16 {
        let t = a.token(w).expect("a token per worker").to_string();
        assert_eq!(t.len(), 32);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a.verify(t.as_bytes()), Some(w), "own token verifies");
        let sc = a.set_cookie(w).expect("a Set-Cookie per worker");
        if valid_name {
            assert_eq!(
                key::set_cookie_value(sc.as_bytes(), &name),
                Some(t.as_bytes()),
                "Set-Cookie carries the token"
            );
            // The cookie a browser sends back is found and verified.
            let mut h = HeaderMap::new();
            let back = format!("{name}={t}");
            h.append(COOKIE, HeaderValue::from_str(&back).expect("ascii"));
            assert_eq!(key::cookie(&h, &name).and_then(|v| a.verify(v)), Some(w));
        }
        tokens.push(t);
    }
    assert!(a.token(n as u16).is_none() && a.set_cookie(n as u16).is_none());

    let mut headers = HeaderMap::new();
    for line in it.take(32) {
        let got = a.verify(line);
        match got {
            Some(w) => assert_eq!(tokens[usize::from(w)].as_bytes(), line),
            None => assert!(!tokens.iter().any(|t| t.as_bytes() == line)),
        }
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(COOKIE, v);
        }
    }
    for (cname, value) in key::cookies(&headers) {
        let got = a.verify(value);
        if let Some(w) = got {
            assert_eq!(tokens[usize::from(w)].as_bytes(), value);
        }
        let _ = cname;
    }
    if let Some(v) = key::cookie(&headers, &name) {
        if let Some(w) = a.verify(v) {
            assert!(usize::from(w) < n);
        }
    }
}

/// (c) The IP filter and the trusted-proxy walk over arbitrary rules and `X-Forwarded-For`.
///
/// Input: line 1 the peer (text, else raw bytes); then lines starting with `+` are allow
/// rules, `-` deny rules, `T` trusted-proxy rules, `?` addresses to look up, `@` durations
/// for `parse_duration`; every other line is an `X-Forwarded-For` value (arbitrary bytes).
pub fn ip_filter(data: &[u8]) {
    let mut it = lines(data);
    let peer = ip_from(it.next().unwrap_or(b""));
    let (mut allow, mut deny, mut trusted) = (Vec::new(), Vec::new(), Vec::new());
    let mut queries = vec![peer];
    let mut xff: Vec<&[u8]> = Vec::new();
    for line in it.take(64) {
        match line.first() {
            Some(b'+') => allow.push(text(&line[1..])),
            Some(b'-') => deny.push(text(&line[1..])),
            Some(b'T') => trusted.push(text(&line[1..])),
            Some(b'?') => queries.push(ip_from(&line[1..])),
            Some(b'@') => {
                let _ =
                    sticky_cluster::internal::settings::parse_duration("fuzz", &text(&line[1..]));
            }
            _ => xff.push(line),
        }
    }
    for rule in allow.iter().chain(&deny).chain(&trusted) {
        // Each rule on its own, so an early bad rule does not hide the later ones.
        let _ = IpFilter::new(std::slice::from_ref(rule), &[]);
    }
    if let Ok(f) = IpFilter::new(&allow, &deny) {
        assert_eq!(f.is_empty(), allow.is_empty() && deny.is_empty());
        for &q in &queries {
            let p = f.permits(q);
            if f.is_empty() {
                assert!(p);
            }
            let other = match q {
                IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(q, IpAddr::V4),
            };
            assert_eq!(p, f.permits(other), "mapped and plain agree for {q}");
        }
        // Deny-only: the same rules as allow-mode's complement.
        if !allow.is_empty() {
            if let Ok(d) = IpFilter::new(&[], &allow) {
                if let Ok(a) = IpFilter::new(&allow, &[]) {
                    for &q in &queries {
                        assert_eq!(a.permits(q), !d.permits(q), "allow/deny complement {q}");
                    }
                }
            }
        }
    }
    if let Ok(t) = TrustedProxies::new(&trusted) {
        let got = t.client_ip(peer, xff.iter().copied());
        let canon = peer.to_canonical();
        if let IpAddr::V6(v6) = got {
            assert!(
                v6.to_ipv4_mapped().is_none(),
                "client_ip is canonical: {got}"
            );
        }
        if !t.is_trusted(canon) {
            assert_eq!(got, canon, "an untrusted peer's X-Forwarded-For is ignored");
        }
        if trusted.is_empty() {
            assert!(t.is_empty());
            assert_eq!(got, canon);
        }
        // Splitting the same hops across headers differently changes nothing.
        let joined: Vec<u8> = xff.join(&b","[..]);
        let again = t.client_ip(peer, std::iter::once(&joined[..]));
        assert_eq!(got, again, "one header or many");
    }
}

/// (d) The engine.io handshake sniffer against well-formed open packets: whatever the sid
/// (any length, base64id alphabet) and the other fields, `handshake_sid` must find the sid
/// in the first polling reply, framed as EIO 4 (`0{...}`, packets joined by `\x1e`) or EIO 3
/// (`<length>:0{...}`, packets each prefixed by their length), as the README promises.
///
/// Input: byte 0 is a control byte (bit 0: EIO 3; bit 1: "websocket" upgrade; bit 2: a
/// socket.io connect packet follows in the same payload; bit 3: EIO 4's `maxPayload`), bytes
/// 1-4 the ping interval and timeout (as two u16), the rest the sid (bytes outside
/// `[A-Za-z0-9_-]` are dropped; at most 200 kept; empty means `x`).
pub fn engineio_handshake(data: &[u8]) {
    let control = data.first().copied().unwrap_or(0);
    let num = |i: usize| {
        u16::from_le_bytes([
            data.get(i).copied().unwrap_or(0),
            data.get(i + 1).copied().unwrap_or(0),
        ])
    };
    let (interval, timeout) = (u32::from(num(1)) * 10, u32::from(num(3)) * 10);
    let mut sid: String = data
        .iter()
        .skip(5)
        .filter(|b| b.is_ascii_alphanumeric() || **b == b'_' || **b == b'-')
        .take(200)
        .map(|&b| char::from(b))
        .collect();
    if sid.is_empty() {
        sid.push('x');
    }
    let upgrades = if control & 2 != 0 {
        r#"["websocket"]"#
    } else {
        "[]"
    };
    let eio3 = control & 1 != 0;
    let mut open = format!(
        r#"0{{"sid":"{sid}","upgrades":{upgrades},"pingInterval":{interval},"pingTimeout":{timeout}"#
    );
    if !eio3 && control & 8 != 0 {
        open.push_str(r#","maxPayload":1000000"#);
    }
    open.push('}');
    let payload = if eio3 {
        let mut p = format!("{}:{open}", open.len());
        if control & 4 != 0 {
            p.push_str("2:40");
        }
        p
    } else {
        let mut p = open;
        if control & 4 != 0 {
            p.push_str("\x1e40");
        }
        p
    };
    assert_eq!(
        sticky_cluster::internal::handshake_sid(payload.as_bytes()),
        Some(sid.as_bytes()),
        "handshake_sid missed the sid of {payload:?}"
    );
}

// --- the proxy's own codecs -------------------------------------------------------------

use sticky_cluster::internal::codec::{
    self, h2 as h2codec, Chunks, Found, Framing, Parse, RequestHead, ResponseHead, Role, Scanner,
    MAX_HEADERS,
};

fn in_buffer(range: &std::ops::Range<usize>, len: usize) {
    assert!(
        range.start <= range.end && range.end <= len,
        "range {range:?} outside a head of {len} bytes"
    );
}

/// (e) The direct path's request head parser, against httparse (which it wraps: the target
/// checks what the wrapper adds).
///
/// Input: the bytes a client sent. Properties: the same verdict as httparse (complete with
/// the same length, partial, or invalid); every range inside the head and equal to what
/// httparse saw; the roles are the classifier's; a head the direct path takes has exactly
/// one valid `Host`, a small body, HTTP/1.1 and an origin-form target; parsing again into
/// the same value gives the same answer.
pub fn h1_request_head(data: &[u8]) {
    let mut head = RequestHead::default();
    let ours = head.parse(data);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let theirs = req.parse(data);
    match (ours, theirs) {
        (Parse::Complete(n), Ok(httparse::Status::Complete(m))) => {
            assert_eq!(n, m, "head length");
            in_buffer(&head.method, n);
            in_buffer(&head.target, n);
            assert_eq!(
                &data[head.method.clone()],
                req.method.unwrap_or("").as_bytes()
            );
            assert_eq!(
                &data[head.target.clone()],
                req.path.unwrap_or("").as_bytes()
            );
            assert_eq!(head.fields.len(), req.headers.len(), "field count");
            let mut hosts = 0;
            for (f, h) in head.fields.iter().zip(req.headers.iter()) {
                in_buffer(&f.name, n);
                in_buffer(&f.value, n);
                assert_eq!(&data[f.name.clone()], h.name.as_bytes());
                assert_eq!(&data[f.value.clone()], h.value);
                let classified = codec::upstream_role(h.name.as_bytes());
                let hop = classified == Role::HopByHop;
                // A head the direct path writes drops every hop-by-hop field (one it does not
                // take goes to hyper, whose rewrite drops them).
                if hop && head.direct {
                    assert_eq!(f.role, Role::HopByHop, "{}", h.name);
                }
                hosts += usize::from(h.name.eq_ignore_ascii_case("host"));
            }
            if let Some(host) = &head.host {
                in_buffer(host, n);
            }
            if head.direct {
                assert_eq!(req.version, Some(1));
                assert!(req.path.is_some_and(|p| p.starts_with('/')));
                assert_eq!(hosts, 1, "the direct path takes one Host");
                let host = head.host.clone().expect("a direct head has a Host");
                assert!(
                    codec::valid_host(&data[host]),
                    "the direct path takes valid hosts"
                );
                assert!(head.content_length <= 64 * 1024);
            }
            let mut again = RequestHead::default();
            again.parse(b"GET /other HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\n");
            assert_eq!(again.parse(data), ours, "a reused head parses alike");
            assert_eq!(again.fields.len(), head.fields.len());
        }
        (Parse::Partial, Ok(httparse::Status::Partial)) | (Parse::Invalid, Err(_)) => {}
        (ours, theirs) => panic!("parser {ours:?}, httparse {theirs:?}"),
    }
    let _ = codec::valid_host(data);
}

/// (f) The raw client's response head parser, against httparse.
///
/// Input: one control byte (bit 0: the request was a HEAD), then the worker's bytes.
/// Properties: httparse's verdict (ours may refuse more: several different
/// `Content-Length`s, a status line too short to rewrite); the same length and status;
/// ranges inside the head; no body for HEAD, 1xx, 204, 304; a connection is kept only
/// when the body's end is known.
pub fn h1_response_head(data: &[u8]) {
    let Some((&control, buf)) = data.split_first() else {
        return;
    };
    let head_request = control & 1 == 1;
    let mut head = ResponseHead::default();
    let ours = head.parse(buf, head_request);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let theirs = resp.parse(buf);
    match (ours, theirs) {
        (Parse::Complete(n), Ok(httparse::Status::Complete(m))) => {
            assert_eq!(n, m, "head length");
            assert_eq!(Some(head.status), resp.code);
            in_buffer(&head.status_line, n);
            assert!(buf[head.status_line.clone()].starts_with(head.status.to_string().as_bytes()));
            assert_eq!(head.fields.len(), resp.headers.len());
            for (f, h) in head.fields.iter().zip(resp.headers.iter()) {
                in_buffer(&f.name, n);
                in_buffer(&f.value, n);
                assert_eq!(&buf[f.name.clone()], h.name.as_bytes());
            }
            let bodyless = head_request || head.status < 200 || matches!(head.status, 204 | 304);
            if bodyless {
                assert_eq!(head.framing, Framing::Empty);
            }
            if head.framing == Framing::UntilClose {
                assert!(
                    !head.keep_alive,
                    "kept alive with a body that ends at close"
                );
            }
        }
        (Parse::Invalid, Ok(httparse::Status::Complete(_)))
        | (Parse::Partial, Ok(httparse::Status::Partial))
        | (Parse::Invalid, Err(_)) => {}
        (ours, theirs) => panic!("parser {ours:?}, httparse {theirs:?}"),
    }
}

/// Where `chunks` says the body ends when fed `data` in pieces cut at `cuts`.
fn chunk_end(data: &[u8], cuts: &[usize]) -> Result<Option<usize>, codec::Malformed> {
    let mut c = Chunks::default();
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&data.len())) {
        let cut = cut.clamp(at, data.len());
        if let Some(n) = c.feed(&data[at..cut])? {
            return Ok(Some(at + n));
        }
        at = cut;
    }
    Ok(None)
}

/// (g) The chunked follower (`http1::chunked`, the one chunked parser) and the framing
/// watch that uses it.
///
/// Input: one byte that picks where reads split, then a byte stream. Properties: where a
/// body ends (or that it is malformed) does not depend on how reads split it; decoding
/// yields data ranges inside each piece and never past the body's end; a body built from
/// the input's own bytes (sizes in upper or lower case hex, with extensions) decodes back
/// to them and ends exactly at its end; the framing watch finds the same refusal whole and
/// split, at the same absolute offset.
pub fn chunked(data: &[u8]) {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let len = stream.len();
    let cuts: Vec<usize> = (1..4)
        .map(|k| (usize::from(split) * k * 7) % (len + 1))
        .collect();
    let mut sorted = cuts.clone();
    sorted.sort_unstable();
    let whole = chunk_end(stream, &[]);
    assert_eq!(chunk_end(stream, &sorted), whole, "split at {sorted:?}");
    if let Ok(Some(n)) = whole {
        assert!(n <= len);
    }
    // Decoding: data ranges inside what was given, in order.
    let mut c = Chunks::default();
    let mut at = 0;
    let mut decoded = 0usize;
    while at < len {
        let Ok(step) = c.decode(&stream[at..]) else {
            break;
        };
        assert!(step.consumed <= len - at);
        assert!(step.data.start <= step.data.end && step.data.end <= step.consumed);
        decoded += step.data.len();
        at += step.consumed;
        if step.done {
            assert_eq!(whole, Ok(Some(at)), "decode and feed agree on the end");
            break;
        }
        if step.consumed == 0 {
            break;
        }
    }
    assert!(decoded <= len);

    // Round trip: the input's bytes as chunks of sizes taken from the split byte.
    let mut body = Vec::new();
    let mut pieces = Vec::new();
    let mut rest = stream;
    let mut size = usize::from(split % 61) + 1;
    while !rest.is_empty() {
        let take = size.min(rest.len());
        pieces.push(&rest[..take]);
        rest = &rest[take..];
        size = size * 3 % 97 + 1;
    }
    for (i, p) in pieces.iter().enumerate() {
        let hex = if i % 2 == 0 {
            format!("{:x}", p.len())
        } else {
            format!("{:X}", p.len())
        };
        body.extend_from_slice(hex.as_bytes());
        if split & 0x80 != 0 {
            body.extend_from_slice(b";ext=\"v\"");
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(p);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\nx-t: 1\r\n\r\n");
    let mut c = Chunks::default();
    let (mut at, mut out) = (0, Vec::new());
    loop {
        let step = c.decode(&body[at..]).expect("a well-formed body");
        out.extend_from_slice(&body[at..][step.data.clone()]);
        at += step.consumed;
        if step.done {
            break;
        }
        assert!(at < body.len(), "the body ended without its last chunk");
    }
    assert_eq!(at, body.len(), "ends where it was built to");
    assert_eq!(out, stream, "decodes back to the data");

    // The framing watch: the same finding whole and split in two.
    let cut = cuts[0];
    let found = |s: &mut Scanner, bytes: &[u8], base: usize| {
        s.feed(bytes).map(|f| match f {
            Found::Request(n, why) => (0, n as usize, why as u8),
            Found::Stream(off) => (1, base + off, 0),
        })
    };
    let whole = found(&mut Scanner::default(), stream, 0);
    let mut s = Scanner::default();
    let first = found(&mut s, &stream[..cut], 0);
    let split = first.or_else(|| found(&mut s, &stream[cut..], cut));
    assert_eq!(split, whole, "the watch split at {cut}");
    if let Some((1, off, _)) = whole {
        assert!(off <= len);
    }
    // With a head limit (the cut, so that some heads are over it): the same finding too.
    let limit = cut.max(1);
    let whole = found(&mut Scanner::new(limit), stream, 0);
    let mut s = Scanner::new(limit);
    let first = found(&mut s, &stream[..cut], 0);
    let split = first.or_else(|| found(&mut s, &stream[cut..], cut));
    assert_eq!(split, whole, "the watch with a {limit}-byte head limit split at {cut}");
}

/// (h) HTTP/2 frames as the front reads them: frame headers, padding, header blocks split
/// over HEADERS and CONTINUATION, decoded (HPACK) and checked as a request or trailers.
///
/// Input: a client's bytes after the preface. Properties: a frame header reads back what
/// was written; an unpadded payload is a part of the payload; decoding and checking a
/// block never panics, and a request that passes has the pseudo-headers RFC 9113 asks for.
pub fn h2_frames(data: &[u8]) {
    let mut buf = data;
    let mut decoder = h2codec::Decoder::default();
    let mut block: Option<(u32, Vec<u8>)> = None;
    let mut frames = 0;
    while let Some(head) = h2codec::Head::parse(buf) {
        frames += 1;
        if frames > 256 {
            break;
        }
        let written = [
            (head.len >> 16) as u8,
            (head.len >> 8) as u8,
            head.len as u8,
            head.kind,
            head.flags,
        ];
        assert_eq!(&buf[..5], &written[..], "a frame header reads back");
        assert!(head.stream < 1 << 31);
        let Some(payload) = buf.get(9..9 + head.len) else {
            break;
        };
        buf = &buf[9 + head.len..];
        let payload = bytes::Bytes::copy_from_slice(payload);
        let kind = head.kind;
        if kind != 0x1 && kind != 0x9 {
            if kind == 0x0 {
                if let Some(data) = h2codec::unpad(head, payload.clone()) {
                    assert!(data.len() < payload.len() || payload.len() == data.len());
                }
            }
            continue;
        }
        let fragment = if kind == 0x1 {
            let Some(mut b) = h2codec::unpad(head, payload.clone()) else {
                continue;
            };
            assert!(b.len() <= payload.len());
            if head.has(0x20) {
                if b.len() < 5 {
                    continue;
                }
                b = b.slice(5..);
            }
            block = Some((head.stream, Vec::new()));
            b
        } else {
            payload
        };
        let Some((_, pending)) = block.as_mut() else {
            continue;
        };
        pending.extend_from_slice(&fragment);
        if pending.len() > 1 << 16 {
            break;
        }
        if head.has(0x4) {
            let Some((_, whole)) = block.take() else {
                continue;
            };
            let mut fields = h2codec::Fields::new(16 * 1024);
            let whole = bytes::Bytes::from(whole);
            if decoder.decode(&whole, |n, v| fields.add(n, v)).is_err() {
                // A compression error ends the connection: the table can no longer be
                // followed.
                return;
            }
            if head.stream % 2 == 1 {
                let _ = fields.head();
            } else {
                let _ = fields.into_trailers();
            }
        }
    }
}

/// (i) The HPACK decoder, against the `hpack` crate's.
///
/// Input: header blocks, each one length byte and that many bytes, decoded in order on one
/// connection (the dynamic table carries over). Properties: never panics; a value sent as
/// a plain literal is the bytes sent; where both decoders accept a block they give the same
/// fields, in order (the tables then agree too); decoding stops at the first error, as the
/// connection would.
pub fn hpack_decode(data: &[u8]) {
    let mut ours = h2codec::Decoder::default();
    let mut theirs = hpack::Decoder::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let block = bytes::Bytes::copy_from_slice(&tail[..len]);
        rest = &tail[len..];
        let mut got = Vec::new();
        let ok = ours
            .decode(&block, |n, v| got.push((n.as_bytes().to_vec(), v.to_vec())))
            .is_ok();
        if !ok {
            // Refused (as the connection would be): nothing more to compare. The reference
            // is only asked about blocks ours accepts; it panics on some malformed ones
            // (a size update whose integer overruns the block).
            return;
        }
        // Its panics are not ours (under the stable runner; libFuzzer aborts on any).
        let reference =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| theirs.decode(&block).ok()));
        let Ok(reference) = reference else {
            return;
        };
        match (ok, reference) {
            (true, Some(mut want)) => {
                // hpack 0.3's static table names entry 15 `accept-`; RFC 7541 Appendix A
                // says `accept-charset`. (A name of the block's own spelled `accept-`
                // cannot be told apart: such an input ends the comparison.)
                if got.iter().any(|(n, _)| n == b"accept-") {
                    return;
                }
                for (name, _) in &mut want {
                    if name == b"accept-" {
                        *name = b"accept-charset".to_vec();
                    }
                }
                assert_eq!(got, want, "fields of block {block:?}");
            }
            // One refused what the other took: their tables may differ from here on.
            _ => return,
        }
    }
}
