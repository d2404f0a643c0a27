//! Property tests of the sticky table and the router, against simple models.
//!
//! - The table in one shard (any cap below 4096 keys) is compared step by step with an exact
//!   model: a map of key -> (worker, last use, recency), least recently used evicted first,
//!   a sliding TTL, and the amortized cleanup of up to two expired keys per insert.
//! - The table with several shards, where per-shard eviction makes the exact contents hard
//!   to predict, is held to invariants that need no model of eviction: the cap, "get only
//!   ever returns the worker last stored for that key, and only within the TTL", and "after a
//!   sweep no expired key is left".
//! - The router, over random requests and random worker up/down flips: never a worker that
//!   is not up, and a key whose worker stays up keeps its worker.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use sticky_cluster::internal::routing::affinity::Affinity;
use sticky_cluster::internal::routing::table::{KeyHash, StickyTable, Tick};
use sticky_cluster::internal::routing::{Outcome, Router};
use sticky_cluster::internal::workers::{WorkerId, WorkerSet, WorkerState};
use sticky_cluster::Settings;

const TICK_MS: u64 = 100;

fn table(cap: usize, ttl_ticks: u32) -> StickyTable {
    StickyTable::new(cap, Duration::from_millis(TICK_MS * u64::from(ttl_ticks)))
}

fn key_bytes(k: u16) -> [u8; 2] {
    k.to_le_bytes()
}

// --- the table in one shard, against an exact model -------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Insert(u16, WorkerId),
    Get(u16),
    Remove(u16),
    Sweep,
    /// Inserts keys `start..start + n` (fills the table, triggers eviction and compaction).
    Bulk(u16, u16, WorkerId),
    /// Time passes (ticks are monotonic).
    Advance(u32),
}

/// key -> (worker, last use, recency stamp), and stamp -> key: the smallest stamp is the LRU
/// list's tail.
#[derive(Debug, Default)]
struct Model {
    entries: HashMap<u16, (WorkerId, Tick, u64)>,
    order: BTreeMap<u64, u16>,
    stamp: u64,
    cap: usize,
    ttl: Tick,
}

impl Model {
    fn expired(&self, last: Tick, now: Tick) -> bool {
        now.saturating_sub(last) >= self.ttl
    }

    fn tail(&self) -> Option<(u16, Tick)> {
        let (_, &k) = self.order.first_key_value()?;
        self.entries.get(&k).map(|&(_, last, _)| (k, last))
    }

    fn forget(&mut self, k: u16) -> Option<WorkerId> {
        let (w, _, stamp) = self.entries.remove(&k)?;
        self.order.remove(&stamp);
        Some(w)
    }

    fn touch(&mut self, k: u16, w: WorkerId, now: Tick) {
        self.forget(k);
        self.stamp += 1;
        self.entries.insert(k, (w, now, self.stamp));
        self.order.insert(self.stamp, k);
    }

    fn insert(&mut self, k: u16, w: WorkerId, now: Tick) {
        for _ in 0..2 {
            match self.tail() {
                Some((t, last)) if self.expired(last, now) => {
                    self.forget(t);
                }
                _ => break,
            }
        }
        if !self.entries.contains_key(&k) {
            while self.entries.len() >= self.cap {
                let Some((t, _)) = self.tail() else { break };
                self.forget(t);
            }
        }
        self.touch(k, w, now);
    }

    fn get(&mut self, k: u16, now: Tick) -> Option<WorkerId> {
        let &(w, last, _) = self.entries.get(&k)?;
        if self.expired(last, now) {
            self.forget(k);
            return None;
        }
        self.touch(k, w, now);
        Some(w)
    }

    fn sweep(&mut self, now: Tick) -> Option<Tick> {
        while let Some((t, last)) = self.tail() {
            if !self.expired(last, now) {
                return Some(last.saturating_add(self.ttl));
            }
            self.forget(t);
        }
        None
    }
}

fn op(keys: u16, workers: WorkerId, ttl: u32) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..keys, 0..workers).prop_map(|(k, w)| Op::Insert(k, w)),
        6 => (0..keys).prop_map(Op::Get),
        1 => (0..keys).prop_map(Op::Remove),
        1 => Just(Op::Sweep),
        1 => (0..keys, 1..keys.max(2), 0..workers).prop_map(|(s, n, w)| Op::Bulk(s, n, w)),
        4 => prop_oneof![3 => 0..=ttl / 2 + 1, 1 => 0..=ttl * 2].prop_map(Op::Advance),
    ]
}

/// Runs `ops` against the table and the model side by side.
fn check_against_model(cap: usize, ttl: u32, ops: &[Op]) -> Result<(), TestCaseError> {
    let t = table(cap, ttl);
    prop_assert_eq!(
        t.capacity(),
        cap,
        "one shard below 4096 keys holds exactly the cap"
    );
    prop_assert_eq!(t.ttl_ticks(), ttl);
    let mut m = Model {
        cap,
        ttl,
        ..Model::default()
    };
    let h = |k: u16| -> KeyHash { t.hash(&key_bytes(k)) };
    let mut now: Tick = 0;
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Insert(k, w) => {
                t.insert(h(k), w, now);
                m.insert(k, w, now);
            }
            Op::Get(k) => {
                prop_assert_eq!(t.get(h(k), now), m.get(k, now), "step {}: {:?}", step, op);
            }
            Op::Remove(k) => {
                let want = m.forget(k);
                prop_assert_eq!(t.remove(h(k)), want, "step {}: {:?}", step, op);
            }
            Op::Sweep => {
                prop_assert_eq!(
                    t.sweep(now),
                    m.sweep(now),
                    "step {}: sweep at {}",
                    step,
                    now
                );
            }
            Op::Bulk(start, n, w) => {
                for k in start..start.saturating_add(n) {
                    t.insert(h(k), w, now);
                    m.insert(k, w, now);
                }
            }
            Op::Advance(d) => now = now.saturating_add(d),
        }
        prop_assert_eq!(
            t.len(),
            m.entries.len(),
            "step {}: len after {:?}",
            step,
            op
        );
        prop_assert!(t.len() <= t.capacity());
    }
    // Everything the model still holds is in the table with the same worker, unless expired.
    let keys: Vec<u16> = m.entries.keys().copied().collect();
    for k in keys {
        prop_assert_eq!(t.get(h(k), now), m.get(k, now), "final get of key {}", k);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    /// Small caps and a small key space: constant eviction, many hits, many expiries.
    #[test]
    fn one_shard_table_is_an_lru_cache_with_sliding_ttl(
        cap in 1usize..24,
        ttl in 1u32..12,
        ops in prop::collection::vec(op(40, 4, 12), 1..200),
    ) {
        check_against_model(cap, ttl, &ops)?;
    }

    /// A cap no workload reaches: exactly a HashMap<key, (worker, last use)> with sliding TTL.
    #[test]
    fn roomy_table_is_a_map_with_sliding_ttl(
        ttl in 1u32..30,
        ops in prop::collection::vec(op(64, 8, 30), 1..200),
    ) {
        // 64 distinct keys at most, so nothing is ever evicted: only expiry removes keys.
        check_against_model(4095, ttl, &ops)?;
    }
}

proptest! {
    // Few cases: each one fills slabs of more than 1024 nodes (so compaction runs).
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn big_one_shard_table_compacts_without_losing_entries(
        cap in 1100usize..4000,
        ttl in 2u32..10,
        ops in prop::collection::vec(
            prop_oneof![
                4 => op(5000, 4, 10),
                2 => (0u16..5000, 1000u16..3000, 0u16..4).prop_map(|(s, n, w)| Op::Bulk(s, n, w)),
                // Long pauses and sweeps: most of a full slab expires at once.
                2 => (0u32..20).prop_map(Op::Advance),
                1 => Just(Op::Sweep),
            ],
            1..60,
        ),
    ) {
        check_against_model(cap, ttl, &ops)?;
    }
}

// --- the table in several shards: invariants without a model of eviction ------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    #[test]
    fn sharded_table_respects_cap_ttl_and_last_writer(
        // 8192.. keys: 2 to 4 shards, each evicting on its own.
        cap in 8192usize..20000,
        ttl in 1u32..8,
        ops in prop::collection::vec(
            prop_oneof![
                4 => op(30000, 6, 8),
                1 => (0u16..30000, 2000u16..8000, 0u16..6).prop_map(|(s, n, w)| Op::Bulk(s, n, w)),
            ],
            1..60,
        ),
    ) {
        let t = table(cap, ttl);
        prop_assert_eq!(t.capacity(), cap);
        let h = |k: u16| -> KeyHash { t.hash(&key_bytes(k)) };
        // key -> (last worker stored, last use); an upper bound: the table may have evicted it.
        let mut may_hold: HashMap<u16, (WorkerId, Tick)> = HashMap::new();
        let mut now: Tick = 0;
        for (step, op) in ops.iter().enumerate() {
            match *op {
                Op::Insert(k, w) => {
                    t.insert(h(k), w, now);
                    may_hold.insert(k, (w, now));
                }
                Op::Bulk(start, n, w) => {
                    for k in start..start.saturating_add(n) {
                        t.insert(h(k), w, now);
                        may_hold.insert(k, (w, now));
                    }
                }
                Op::Get(k) => match t.get(h(k), now) {
                    Some(w) => {
                        let known = may_hold.get(&k).copied();
                        prop_assert!(known.is_some(), "step {}: get({}) invented worker {}", step, k, w);
                        let (want, last) = known.unwrap_or_default();
                        prop_assert_eq!(w, want, "step {}: get({}) is not the last worker stored", step, k);
                        prop_assert!(now - last < ttl, "step {}: get({}) returned an expired entry", step, k);
                        may_hold.insert(k, (w, now));
                    }
                    None => {
                        may_hold.remove(&k);
                    }
                },
                Op::Remove(k) => {
                    let got = t.remove(h(k));
                    if let Some(w) = got {
                        prop_assert_eq!(Some(w), may_hold.get(&k).map(|e| e.0), "step {}: remove({})", step, k);
                    }
                    may_hold.remove(&k);
                }
                Op::Sweep => {
                    let next = t.sweep(now);
                    match next {
                        Some(at) => {
                            prop_assert!(at > now && at <= now + ttl, "step {}: next expiry {} at {}", step, at, now);
                        }
                        None => prop_assert_eq!(t.len(), 0, "step {}: sweep said empty", step),
                    }
                    // No expired key is left: remove() does not look at the clock, so it
                    // finds any expired entry the sweep missed.
                    let expired: Vec<u16> = may_hold
                        .iter()
                        .filter(|(_, &(_, last))| now - last >= ttl)
                        .map(|(&k, _)| k)
                        .collect();
                    for k in expired {
                        prop_assert_eq!(t.remove(h(k)), None, "step {}: key {} expired but survived the sweep", step, k);
                        may_hold.remove(&k);
                    }
                    prop_assert!(t.len() <= may_hold.len());
                }
                Op::Advance(d) => now = now.saturating_add(d),
            }
            prop_assert!(t.len() <= t.capacity(), "step {}: {} keys over the cap {}", step, t.len(), cap);
        }
    }
}

// --- the router ----------------------------------------------------------------------------

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[derive(Debug, Clone)]
enum Req {
    /// A request: session key (an index, or none), affinity cookie (a worker's token, a
    /// forged value, or none), hold.
    Route(Option<u8>, Option<Result<WorkerId, u8>>, bool),
    /// A worker changes state (and health).
    Flip(WorkerId, u8, bool),
    /// The worker's response set `connect.sid=<key>` (the router learns it).
    Learn(u8, WorkerId),
    /// Time passes.
    Advance(u32),
}

fn req_strategy(n: WorkerId, keys: u8) -> impl Strategy<Value = Req> {
    let cookie = prop_oneof![
        3 => Just(None),
        2 => (0..n + 1).prop_map(|w| Some(Ok(w))), // n: a token for no worker of ours
        1 => any::<u8>().prop_map(|f| Some(Err(f))),
    ];
    prop_oneof![
        10 => (prop::option::weighted(0.85, 0..keys), cookie, prop::bool::weighted(0.15))
            .prop_map(|(k, c, hold)| Req::Route(k, c, hold)),
        3 => (0..n, 0u8..4, prop::bool::weighted(0.8)).prop_map(|(w, s, h)| Req::Flip(w, s, h)),
        1 => (0..keys, 0..n).prop_map(|(k, w)| Req::Learn(k, w)),
        2 => (0u32..30).prop_map(Req::Advance),
    ]
}

fn head(key: Option<u8>, cookie: Option<&str>) -> http::request::Parts {
    let mut cookies = Vec::new();
    if let Some(k) = key {
        cookies.push(format!("connect.sid=s{k}"));
    }
    if let Some(c) = cookie {
        cookies.push(format!("sticky.worker={c}"));
    }
    let mut b = http::Request::builder().uri("/");
    if !cookies.is_empty() {
        b = b.header(http::header::COOKIE, cookies.join("; "));
    }
    b.body(()).expect("a valid request").into_parts().0
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    #[test]
    fn router_never_picks_a_worker_that_is_not_up_and_keeps_keys_in_place(
        n in 1u16..6,
        initially_up in prop::collection::vec(any::<bool>(), 6),
        ttl in 5u32..40,
        reqs in prop::collection::vec(req_strategy(6, 12), 1..200),
    ) {
        let mut s = Settings::default();
        s.session_ttl = Duration::from_millis(TICK_MS * u64::from(ttl));
        s.session_max = 10_000; // never evicts: 12 keys
        let table = Arc::new(StickyTable::new(s.session_max, s.session_ttl));
        let affinity = Affinity::new("sticky.worker", b"property-secret-0123456789", usize::from(n), false);
        let tokens: Vec<String> = (0..n)
            .map(|w| affinity.token(w).expect("a token per worker").to_string())
            .collect();
        let router = Router::new(&s, table, Some(affinity));
        let addr = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
        let workers = WorkerSet::new((0..n).map(|i| (addr(9000 + i), addr(9100 + i))), []);
        for i in 0..n {
            if initially_up[usize::from(i)] {
                workers.set_state(i, WorkerState::Up);
            }
        }
        // key -> (worker it was last routed to or learned on, tick of that)
        let mut placed: HashMap<u8, (WorkerId, Tick)> = HashMap::new();
        let mut now: Tick = 0;
        for (step, r) in reqs.iter().enumerate() {
            match *r {
                Req::Flip(w, state, healthy) => {
                    if w < n {
                        let state = [WorkerState::Up, WorkerState::Down, WorkerState::Starting, WorkerState::Draining][usize::from(state)];
                        workers.set_state(w, state);
                        workers.set_healthy(w, healthy);
                    }
                }
                Req::Learn(k, w) => {
                    if w < n {
                        let mut resp = http::HeaderMap::new();
                        resp.append(
                            http::header::SET_COOKIE,
                            http::HeaderValue::from_str(&format!("connect.sid=s{k}; Path=/; HttpOnly"))
                                .expect("ascii"),
                        );
                        router.learn_from_response(&resp, sticky_cluster::internal::routing::table::Pin::worker(w), now);
                        placed.insert(k, (w, now));
                    }
                }
                Req::Advance(d) => now += d,
                Req::Route(key, cookie, hold) => {
                    // The table lookup refreshes a live entry whatever becomes of the request
                    // (no worker up, a wait): the session was seen now.
                    if let Some(k) = key {
                        if let Some(&(w, at)) = placed.get(&k) {
                            if now - at < ttl {
                                placed.insert(k, (w, now));
                            }
                        }
                    }
                    let cookie_text = match cookie {
                        None => None,
                        Some(Ok(w)) if w < n => Some(tokens[usize::from(w)].clone()),
                        Some(Ok(_)) => Some("0".repeat(32)),
                        Some(Err(f)) => Some(format!("{f:02x}")),
                    };
                    let cookie_worker = match cookie {
                        Some(Ok(w)) if w < n => Some(w),
                        _ => None,
                    };
                    let d = router.route(&head(key, cookie_text.as_deref()), PEER, &workers, now, hold);
                    let any_up = workers.up_count() > 0;
                    let Some(d) = d else {
                        prop_assert!(!any_up, "step {}: no decision although a worker is up", step);
                        continue;
                    };
                    prop_assert!(d.worker < n, "step {}: worker {} out of range", step, d.worker);
                    if d.wait {
                        prop_assert!(hold, "step {}: wait without hold", step);
                        prop_assert!(!workers.is_up(d.worker), "step {}: waits for a worker that is up", step);
                        continue;
                    }
                    prop_assert!(
                        workers.is_up(d.worker),
                        "step {}: routed to worker {} in state {:?} (healthy {})",
                        step, d.worker, workers.state(d.worker), workers.is_healthy(d.worker)
                    );
                    prop_assert_eq!(d.set_affinity, cookie_worker != Some(d.worker), "step {}", step);
                    // The key stays where it was put while that worker is up and the entry lives.
                    let pinned = key
                        .and_then(|k| placed.get(&k).copied())
                        .filter(|&(w, at)| workers.is_up(w) && now - at < ttl);
                    if let Some((w, _)) = pinned {
                        prop_assert_eq!(d.worker, w, "step {}: key {:?} moved off a live worker", step, key);
                        prop_assert_eq!(d.outcome, Outcome::Kept, "step {}", step);
                    } else if let Some(w) = cookie_worker.filter(|&w| workers.is_up(w)) {
                        // No live pin: a valid affinity cookie to a live worker decides.
                        prop_assert_eq!(d.worker, w, "step {}: the affinity cookie was ignored", step);
                    } else if key.is_none_or(|k| !placed.contains_key(&k)) && cookie.is_none() {
                        prop_assert_eq!(d.outcome, Outcome::New, "step {}", step);
                    }
                    if let Some(k) = key {
                        placed.insert(k, (d.worker, now));
                    }
                }
            }
        }
    }
}
