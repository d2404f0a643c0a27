//! Per-request hot path of the sticky proxy, through the crate's public API.
//!
//! What is compared, and why:
//!
//! - `key/*`: reading the session key out of a realistic browser request head
//!   (`routing::key::extract`) for each key source (`cookie:`, `header:`, `query:`, `ip`, an
//!   engine.io `sid`, and a miss that falls through every source). This runs on every
//!   request before anything else, so it must stay in the tens of nanoseconds.
//! - `table_get/*`, `table_insert/*`: the sticky table at 10k and 1M sessions, keys visited
//!   in random order (so the 1M case pays real cache misses, as a busy proxy does). `insert`
//!   is measured both as an update of a known key and as a new key into a full table (LRU
//!   eviction). `table_hash` is the SipHash of a key, paid once per request.
//! - `route/*`: the whole `Router::route` decision (key + table + affinity cookie +
//!   worker liveness) for the cases a proxy sees: a known session, a known session that also
//!   carries the affinity cookie, a never-seen session (insert with eviction), a key-less
//!   client (round-robin), a key-less client with a valid affinity cookie, and socket.io.
//! - `affinity_verify/*`: the affinity cookie check (constant-time compares against the
//!   precomputed tokens) for 2, 16 and 64 workers, valid and forged.
//! - `table_threads/*`: table get/insert throughput with 1 and 2 OS threads over the same
//!   4,000 keys, on the default sharded table (64 shards) and on a one-shard table as the
//!   contrast: with shards, 2 threads should do about twice the work of 1 (elements/s, on
//!   a machine with 2 idle cores); with one shard they serialize on its mutex.
//! - `proxy_equivalents/*`: not crate API. The proxy module is private, so these replicate
//!   with the `http` crate the per-request work `src/proxy/forward.rs` does besides routing
//!   (the retry copy of the head, the X-Forwarded-For string, the URI rebuild, the clock
//!   read), to put a price on each item of the optimization list in `bench/RESULTS.md`.
//!
//! Before criterion runs, a memory check inserts 1,000,000 keys into a table capped at the
//! default `--session-max` (1,000,000) and prints the bytes per entry from
//! `StickyTable::heap_bytes()` and from the process RSS delta (`/proc/self/statm`); the
//! budget is 64 bytes per session. Skip it with `HOT_PATH_SKIP_MEMORY=1`, or by giving a
//! filter that does not match `table_memory`.
//!
//! Run: `cargo bench --bench hot_path` (a few minutes), or e.g.
//! `cargo bench --bench hot_path -- route/` for one group.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri};

use sticky_cluster::internal::routing::affinity::Affinity;
use sticky_cluster::internal::routing::key;
use sticky_cluster::internal::routing::table::{KeyHash, StickyTable};
use sticky_cluster::internal::routing::Router;
use sticky_cluster::internal::workers::WorkerSet;
use sticky_cluster::{KeySource, Settings};

const SECRET: &[u8] = b"bench-secret-0123456789abcdef";
const TTL: Duration = Duration::from_secs(3600);
const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
/// The budget the issue sets for one remembered session.
const BYTES_PER_SESSION_BUDGET: f64 = 64.0;

// ------------------------------------------------------------------------------ helpers

/// xorshift64*: a fast deterministic generator for key hashes and visit orders.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// A session id shaped like express-session's signed `connect.sid` (`s%3A<id>.<sig>`).
fn session_id(i: usize) -> String {
    format!("s%3A{i:032x}.Kq7bJ0x2fQ{i:020}dNn8")
}

/// A realistic browser request head: a dozen headers and a Cookie header with analytics
/// cookies around the session cookie (and optionally the affinity cookie).
fn browser_head(uri: &str, cookie: Option<&str>, extra: &[(&str, &str)]) -> Parts {
    let mut b = Request::builder()
        .method("GET")
        .uri(uri)
        .header("host", "app.example.com")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/124.0.0.0 Safari/537.36",
        )
        .header(
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
        )
        .header("accept-language", "en-US,en;q=0.9,de;q=0.8")
        .header("accept-encoding", "gzip, deflate, br, zstd")
        .header("referer", "https://app.example.com/dashboard?tab=overview")
        .header("sec-fetch-dest", "document")
        .header("sec-fetch-mode", "navigate")
        .header("sec-fetch-site", "same-origin")
        .header("upgrade-insecure-requests", "1")
        .header("connection", "keep-alive");
    if let Some(c) = cookie {
        b = b.header("cookie", c);
    }
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(()).expect("a valid request").into_parts().0
}

/// A Cookie header value with the session cookie after two analytics cookies.
fn cookie_line(sid: &str, affinity: Option<&str>) -> String {
    let aff = affinity.map_or(String::new(), |t| format!("; sticky.worker={t}"));
    format!(
        "_ga=GA1.1.1234567890.1700000000; theme=dark{aff}; connect.sid={sid}; \
         _gid=GA1.2.987654321.1700000000"
    )
}

fn settings(keys: Vec<KeySource>) -> Settings {
    let mut s = Settings::default();
    s.session_keys = keys;
    s
}

fn upstreams(n: u16) -> WorkerSet {
    WorkerSet::new(
        std::iter::empty(),
        (0..n).map(|i| SocketAddr::from((Ipv4Addr::LOCALHOST, 18000 + i))),
    )
}

/// A table capped at `max`, filled with `n` random hashes; returns the hashes it kept.
fn filled_table(max: usize, n: usize, seed: u64) -> (StickyTable, Vec<KeyHash>) {
    let table = StickyTable::new(max, TTL);
    let mut rng = Rng(seed);
    let mut hashes: Vec<KeyHash> = (0..n).map(|_| rng.next()).collect();
    for (i, &h) in hashes.iter().enumerate() {
        table.insert(h, (i % 2) as u16, 1);
    }
    // Per-shard caps evict a few keys of a full table: keep the ones still present, in a
    // random visit order.
    hashes.retain(|&h| table.get(h, 1).is_some());
    shuffle(&mut hashes, &mut rng);
    (table, hashes)
}

fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

// ------------------------------------------------------------------------------ memory

/// Resident set size in bytes, from `/proc/self/statm` (pages) and the page size from the
/// auxiliary vector (`AT_PAGESZ`).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    const AT_PAGESZ: u64 = 6;
    auxv(AT_PAGESZ).unwrap_or(4096)
}

/// A value of the auxiliary vector the kernel handed this process.
fn auxv(key: u64) -> Option<u64> {
    let auxv = std::fs::read("/proc/self/auxv").unwrap_or_default();
    auxv.chunks_exact(16)
        .map(|c| {
            let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8]));
            (word(&c[..8]), word(&c[8..]))
        })
        .find(|&(k, _)| k == key)
        .map(|(_, v)| v)
}

/// CPU time (user + system) of the calling thread, in clock ticks.
fn thread_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let after_comm = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after_comm
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after "pid (comm) ".
    fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0)
}

/// Inserts 1,000,000 keys into a table capped at the default `--session-max` and reports
/// bytes per entry, from the table's own accounting and from the RSS delta.
fn table_memory_check() {
    const KEYS: usize = 1_000_000;
    let before = rss_bytes();
    let table = StickyTable::new(KEYS, TTL);
    let started = Instant::now();
    for i in 0..KEYS as u64 {
        // Real keys: SipHash of a session id, as the proxy stores them.
        let h = table.hash(&i.to_le_bytes());
        table.insert(h, (i % 4) as u16, 1);
    }
    let took = started.elapsed();
    let after = rss_bytes();
    let len = table.len();
    let heap = table.heap_bytes();
    let heap_per = heap as f64 / len as f64;
    println!("table_memory: inserted {KEYS} keys in {took:.2?} into a table capped at {KEYS}");
    println!(
        "table_memory: {len} entries kept ({} evicted by per-shard caps)",
        KEYS - len
    );
    println!("table_memory: heap_bytes() = {heap} B = {heap_per:.1} B/entry");
    let rss_per = match (before, after) {
        (Some(b), Some(a)) => {
            let delta = a.saturating_sub(b);
            let per = delta as f64 / len as f64;
            println!(
                "table_memory: RSS {} -> {} KiB, delta {} KiB = {per:.1} B/entry",
                b / 1024,
                a / 1024,
                delta / 1024
            );
            Some(per)
        }
        _ => {
            println!("table_memory: /proc/self/statm unavailable, no RSS figure");
            None
        }
    };
    let worst = rss_per.map_or(heap_per, |r| r.max(heap_per));
    println!(
        "table_memory: {} (budget {BYTES_PER_SESSION_BUDGET} B/session, worst figure {worst:.1})",
        if worst <= BYTES_PER_SESSION_BUDGET {
            "PASS"
        } else {
            "FAIL"
        }
    );
    drop(black_box(table));
}

// ------------------------------------------------------------------------------ benches

fn bench_key(c: &mut Criterion) {
    let mut g = c.benchmark_group("key");
    let sid = session_id(42);
    let cookie = cookie_line(&sid, None);
    let cookie_src = [KeySource::Cookie("connect.sid".into())];
    let header_src = [KeySource::Header(HeaderName::from_static("x-session"))];
    let query_src = [KeySource::Query("token".into())];
    let miss_src = [
        KeySource::Cookie("connect.sid".into()),
        KeySource::Header(HeaderName::from_static("x-session")),
        KeySource::Query("token".into()),
    ];
    let cases: Vec<(&str, &[KeySource], Parts)> = vec![
        (
            "cookie",
            &cookie_src,
            browser_head("/dashboard?tab=overview", Some(&cookie), &[]),
        ),
        (
            "header",
            &header_src,
            browser_head("/api/items", Some(&cookie), &[("x-session", &sid)]),
        ),
        (
            "query",
            &query_src,
            browser_head(
                &format!("/api/items?page=2&sort=desc&token={sid}&fields=id,name"),
                None,
                &[],
            ),
        ),
        (
            "engineio_sid",
            &cookie_src,
            browser_head(
                "/socket.io/?EIO=4&transport=polling&t=OxZ3kP1&sid=lv_VI97HAXpY6yYWAAAC",
                Some(&cookie),
                &[],
            ),
        ),
        ("ip", &[KeySource::Ip], browser_head("/", None, &[])),
        (
            "miss_all_sources",
            &miss_src,
            browser_head("/api/items?page=2", Some("_ga=GA1.1.1; theme=dark"), &[]),
        ),
    ];
    for (name, sources, head) in &cases {
        g.bench_with_input(BenchmarkId::new("extract", name), head, |b, head| {
            b.iter(|| {
                let k = key::extract(sources, &head.headers, &head.uri, PEER);
                black_box(k.map(|k| k.hash_input().len()))
            })
        });
    }
    g.finish();
}

fn bench_table(c: &mut Criterion) {
    let mut hash = c.benchmark_group("table_hash");
    let table = StickyTable::new(10_000, TTL);
    for sid in ["lv_VI97HAXpY6yYWAAAC", &session_id(7)] {
        hash.bench_with_input(BenchmarkId::new("siphash", sid.len()), sid, |b, sid| {
            b.iter(|| table.hash(black_box(sid.as_bytes())))
        });
    }
    hash.finish();
    drop(table);

    for &n in &[10_000usize, 1_000_000] {
        let (table, hashes) = filled_table(n, n, 0x9E37_79B9_7F4A_7C15 ^ n as u64);
        let mut get = c.benchmark_group("table_get");
        get.bench_function(BenchmarkId::new("hit", n), |b| {
            let mut i = 0usize;
            b.iter(|| {
                i = if i + 1 == hashes.len() { 0 } else { i + 1 };
                table.get(black_box(hashes[i]), 2)
            })
        });
        get.bench_function(BenchmarkId::new("miss", n), |b| {
            let mut rng = Rng(12345);
            b.iter(|| table.get(black_box(rng.next()), 2))
        });
        get.finish();

        let mut ins = c.benchmark_group("table_insert");
        ins.bench_function(BenchmarkId::new("update_known", n), |b| {
            let mut i = 0usize;
            b.iter(|| {
                i = if i + 1 == hashes.len() { 0 } else { i + 1 };
                table.insert(black_box(hashes[i]), 1, 2)
            })
        });
        ins.bench_function(BenchmarkId::new("new_full_evicts_lru", n), |b| {
            let mut rng = Rng(0xDEAD_BEEF);
            b.iter(|| table.insert(black_box(rng.next()), 0, 2))
        });
        ins.finish();
    }
}

fn bench_route(c: &mut Criterion) {
    const SESSIONS: usize = 10_000;
    let workers = upstreams(2);
    let new_router = |keys: Vec<KeySource>, max: usize| {
        let s = settings(keys);
        let table = Arc::new(StickyTable::new(max, TTL));
        let affinity = Affinity::new("sticky.worker", SECRET, workers.len(), false);
        Router::new(&s, table, Some(affinity))
    };
    let router = new_router(Vec::new(), 1_000_000);
    let token = router
        .affinity()
        .and_then(|a| a.token(1))
        .expect("a token")
        .to_string();
    let heads = |f: &dyn Fn(usize) -> Parts, n: usize| (0..n).map(f).collect::<Vec<_>>();
    let known = heads(
        &|i| browser_head("/", Some(&cookie_line(&session_id(i), None)), &[]),
        SESSIONS,
    );
    let known_aff = heads(
        &|i| browser_head("/", Some(&cookie_line(&session_id(i), Some(&token))), &[]),
        SESSIONS,
    );
    let eio = heads(
        &|i| {
            browser_head(
                &format!("/socket.io/?EIO=4&transport=polling&t=OxZ3kP1&sid=sid{i:016}"),
                None,
                &[],
            )
        },
        SESSIONS,
    );
    let keyless = [browser_head("/", Some("_ga=GA1.1.1; theme=dark"), &[])];
    let aff_only = [browser_head(
        "/",
        Some(&format!("_ga=GA1.1.1; theme=dark; sticky.worker={token}")),
        &[],
    )];
    // Learn every known session once, as the first request of each would.
    for h in known.iter().chain(&eio) {
        router.route(h, PEER, &workers, 1, false);
    }

    let mut g = c.benchmark_group("route");
    let mut case = |name: &str, r: &Router, hs: &[Parts]| {
        g.bench_function(BenchmarkId::new("decision", name), |b| {
            let mut i = 0usize;
            b.iter(|| {
                i = if i + 1 == hs.len() { 0 } else { i + 1 };
                r.route(black_box(&hs[i]), PEER, &workers, 2, false)
            })
        });
    };
    case("known_cookie_10k", &router, &known);
    case("known_cookie_plus_affinity_10k", &router, &known_aff);
    case("engineio_sid_10k", &router, &eio);
    case("keyless_round_robin", &router, &keyless);
    case("affinity_cookie_only", &router, &aff_only);
    // A never-seen key each time: 100k distinct sessions cycling through a table capped at
    // 10k, so every one has been evicted before it comes back (miss + insert + eviction).
    let churn_router = new_router(Vec::new(), SESSIONS);
    let churn = heads(
        &|i| browser_head("/", Some(&cookie_line(&session_id(i), None)), &[]),
        10 * SESSIONS,
    );
    case("new_cookie_full_table", &churn_router, &churn);
    let header_router = new_router(
        vec![KeySource::Header(HeaderName::from_static("x-session"))],
        1_000_000,
    );
    let by_header = heads(
        &|i| browser_head("/", None, &[("x-session", &session_id(i))]),
        SESSIONS,
    );
    for h in &by_header {
        header_router.route(h, PEER, &workers, 1, false);
    }
    case("known_header_10k", &header_router, &by_header);
    g.finish();

    // The clock read the proxy adds to every decision (`table.now()` = Instant::now()).
    let mut clock = c.benchmark_group("clock");
    let table = router.table().clone();
    clock.bench_function("table_now", |b| b.iter(|| table.now()));
    clock.finish();
}

fn bench_affinity(c: &mut Criterion) {
    let mut g = c.benchmark_group("affinity_verify");
    for &workers in &[2usize, 16, 64] {
        let a = Affinity::new("sticky.worker", SECRET, workers, false);
        let valid = a
            .token((workers - 1) as u16)
            .expect("a token")
            .as_bytes()
            .to_vec();
        let forged = vec![b'f'; valid.len()];
        g.bench_with_input(BenchmarkId::new("valid", workers), &valid, |b, v| {
            b.iter(|| a.verify(black_box(v)))
        });
        g.bench_with_input(BenchmarkId::new("forged", workers), &forged, |b, v| {
            b.iter(|| a.verify(black_box(v)))
        });
    }
    g.bench_function("wrong_length", |b| {
        let a = Affinity::new("sticky.worker", SECRET, 2, false);
        b.iter(|| a.verify(black_box(b"0")))
    });
    g.finish();
}

/// CPU ticks the worker threads of `table_threads` got, and the wall time they ran (times
/// the thread count), to tell a busy machine from a table that serializes.
static THREAD_CPU_TICKS: AtomicU64 = AtomicU64::new(0);
static THREAD_WALL_NS: AtomicU64 = AtomicU64::new(0);

/// `threads` OS threads each do `iters` operations; returns the wall time of the slowest.
fn run_threads(
    threads: usize,
    iters: u64,
    table: &StickyTable,
    hashes: &[KeyHash],
    insert: bool,
) -> Duration {
    let barrier = Barrier::new(threads + 1);
    let wall = std::thread::scope(|s| {
        for t in 0..threads {
            let barrier = &barrier;
            s.spawn(move || {
                // Each thread walks its own stretch of the keys.
                let mut i = t * hashes.len() / threads;
                barrier.wait();
                let cpu0 = thread_cpu_ticks();
                for _ in 0..iters {
                    i = if i + 1 == hashes.len() { 0 } else { i + 1 };
                    if insert {
                        table.insert(hashes[i], (t & 1) as u16, 2);
                    } else {
                        black_box(table.get(hashes[i], 2));
                    }
                }
                THREAD_CPU_TICKS.fetch_add(thread_cpu_ticks() - cpu0, Ordering::Relaxed);
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    });
    THREAD_WALL_NS.fetch_add(wall.as_nanos() as u64 * threads as u64, Ordering::Relaxed);
    wall
}

fn bench_threads(c: &mut Criterion) {
    // The same 4,000 keys (cache-resident, so memory latency does not blur the picture) in
    // a table sized like the default (1M cap: 64 shards) and in one small enough to get a
    // single shard: the only difference left is how many mutexes the threads share.
    let sharded = filled_table(1_000_000, 4_000, 77);
    let one_shard = filled_table(4_000, 4_000, 78);
    const AT_CLKTCK: u64 = 17;
    let clk_tck = auxv(AT_CLKTCK).unwrap_or(100) as f64;
    let mut g = c.benchmark_group("table_threads");
    for (label, (table, hashes)) in [("64_shards", &sharded), ("1_shard", &one_shard)] {
        for threads in [1usize, 2] {
            for op in ["get", "insert"] {
                // Elements = operations summed over threads: twice the rate at 2 threads
                // means the shards did not serialize them.
                g.throughput(Throughput::Elements(threads as u64));
                let id = BenchmarkId::new(format!("{op}/{label}"), format!("{threads}_threads"));
                THREAD_CPU_TICKS.store(0, Ordering::Relaxed);
                THREAD_WALL_NS.store(0, Ordering::Relaxed);
                g.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        run_threads(threads, iters, table, hashes, op == "insert")
                    })
                });
                let wall = THREAD_WALL_NS.load(Ordering::Relaxed) as f64 / 1e9;
                let cpu = THREAD_CPU_TICKS.load(Ordering::Relaxed) as f64 / clk_tck;
                if wall > 0.5 {
                    // Off-CPU time is waiting for a shard's lock (futex) or for a core that
                    // someone else is using: read a 2-thread figure next to this number.
                    println!(
                        "table_threads/{op}/{label}/{threads}_threads: worker threads were on a CPU \
                         {:.0}% of their wall time",
                        100.0 * cpu / wall
                    );
                }
            }
        }
    }
    g.finish();
}

fn bench_proxy_equivalents(c: &mut Criterion) {
    let mut g = c.benchmark_group("proxy_equivalents");
    let cookie = cookie_line(&session_id(1), None);
    let head = browser_head("/dashboard?tab=overview", Some(&cookie), &[]);
    // copy_head(): method, URI and the whole HeaderMap cloned for a possible retry.
    g.bench_function("copy_head_for_retry", |b| {
        b.iter(|| {
            let h = black_box(&head);
            let mut req = Request::new(());
            *req.method_mut() = h.method.clone();
            *req.uri_mut() = h.uri.clone();
            *req.version_mut() = h.version;
            *req.headers_mut() = h.headers.clone();
            req.into_parts().0
        })
    });
    // append_forwarded_for(): IpAddr::to_string into a fresh Bytes, then a header insert.
    g.bench_function("x_forwarded_for_to_string", |b| {
        let peer = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1), 40000));
        b.iter(|| {
            let v = HeaderValue::from_maybe_shared(bytes::Bytes::from(
                black_box(peer).ip().to_string(),
            ));
            black_box(v.ok())
        })
    });
    g.bench_function("x_forwarded_for_static", |b| {
        // The alternative: one HeaderValue per peer cached (or a stack buffer).
        let cached = HeaderValue::from_static("127.0.0.1");
        b.iter(|| black_box(cached.clone()))
    });
    // rewrite_request(): path_and_query clone + Uri::from_parts with scheme and authority.
    g.bench_function("uri_rebuild", |b| {
        let authority: http::uri::Authority = "127.0.0.1:18000".parse().expect("authority");
        b.iter(|| {
            let uri: &Uri = black_box(&head.uri);
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(http::uri::Scheme::HTTP);
            parts.authority = Some(authority.clone());
            parts.path_and_query = uri.path_and_query().cloned();
            Uri::from_parts(parts).ok()
        })
    });
    // The header edits of rewrite_request(): hop-by-hop removal + 4 inserts on a clone.
    g.bench_function("header_edits", |b| {
        b.iter_batched_ref(
            || head.headers.clone(),
            |h: &mut HeaderMap| {
                h.remove(http::header::CONNECTION);
                for n in [
                    "keep-alive",
                    "proxy-connection",
                    "te",
                    "trailer",
                    "transfer-encoding",
                    "upgrade",
                ] {
                    if h.contains_key(n) {
                        h.remove(n);
                    }
                }
                h.insert("x-forwarded-for", HeaderValue::from_static("127.0.0.1"));
                h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
                if let Some(host) = h.get(http::header::HOST).cloned() {
                    h.insert("x-forwarded-host", host);
                }
                h.insert("x-sticky", HeaderValue::from_static("kept"));
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("instant_now", |b| b.iter(Instant::now));
    g.finish();
}

/// The benchmark filter criterion will see (its first free argument), skipping the values
/// of the options that take one.
fn criterion_filter(args: &[String]) -> Option<&str> {
    const WITH_VALUE: &[&str] = &[
        "--color",
        "-c",
        "--save-baseline",
        "-s",
        "--baseline",
        "-b",
        "--baseline-lenient",
        "--format",
        "--profile-time",
        "--load-baseline",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--plotting-backend",
        "--output-format",
    ];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if WITH_VALUE.contains(&a.as_str()) {
            it.next();
        } else if !a.starts_with('-') {
            return Some(a);
        }
    }
    None
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listing = args.iter().any(|a| a == "--list");
    let skip = std::env::var_os("HOT_PATH_SKIP_MEMORY").is_some()
        || listing
        || criterion_filter(&args).is_some_and(|f| !"table_memory".contains(f));
    if !skip {
        table_memory_check();
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
        .configure_from_args();
    bench_key(&mut c);
    bench_table(&mut c);
    bench_route(&mut c);
    bench_affinity(&mut c);
    bench_threads(&mut c);
    bench_proxy_equivalents(&mut c);
    c.final_summary();
}
