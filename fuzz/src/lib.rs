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
pub const TARGETS: [&str; 4] = [
    "key_extraction",
    "affinity_cookie",
    "ip_filter",
    "engineio_handshake",
];

/// Runs target `name` on `data`; `false` for an unknown name.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "key_extraction" => key_extraction(data),
        "affinity_cookie" => affinity_cookie(data),
        "ip_filter" => ip_filter(data),
        "engineio_handshake" => engineio_handshake(data),
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
                router.learn_from_response(&response, d.worker, now);
                let _ = d.outcome.header_value();
                if let Some(a) = router.affinity() {
                    let _ = a.set_cookie(d.worker);
                }
            }
        }
        assert!(router.table().len() <= router.table().capacity());
    }
    if let Some(s) = &sid {
        router.learn_key(s, 0, 31, sticky_cluster::internal::metrics::Learned::EngineIo);
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
