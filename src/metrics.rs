//! The counters the admin listener shows: process-wide relaxed atomics, bumped where each
//! thing is decided (once), read at scrape time. The per-request path gets an atomic add
//! and nothing else: no lock, no allocation.
//!
//! Per-worker counters live in a table sized once by [`init`] (the master does, before it
//! serves); before that, and for an id past its end, a bump is a no-op. Worker state,
//! restarts and in-flight counts are not counted here: [`crate::workers::WorkerSet`] already
//! holds them.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::workers::WorkerId;

/// Upper bounds (seconds) of the worker response-time histogram; `+Inf` follows.
pub const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The bounds in microseconds, for the bump.
const BUCKET_MICROS: [u64; 12] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    10_000_000,
];

/// A routing decision, as `sticky_cluster_routing_total{decision}` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// No earlier worker.
    New,
    /// The earlier worker.
    Kept,
    /// Moved off a worker that was down or failed.
    Moved,
    /// Waited for a restarting pinned worker that came back (`--on-worker-down hold`).
    Held,
}

impl Routed {
    /// The label values, in index order.
    pub const LABELS: [&'static str; 4] = ["new", "kept", "moved", "held"];
}

/// Where a session key was learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// A worker's `Set-Cookie` of the session cookie.
    SetCookie,
    /// An engine.io handshake reply's `sid`.
    EngineIo,
    /// A worker's `bind` message on the bus.
    Bus,
}

impl Learned {
    /// The label values, in index order.
    pub const LABELS: [&'static str; 3] = ["set_cookie", "engineio", "bus"];
}

/// Why a request was refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `--allow` / `--deny`.
    IpFilter,
    /// `--max-connections` reached: the accept loop waited.
    Limit,
    /// A request the proxy would not pass on (smuggling-prone framing, a bad head).
    BadRequest,
    /// Shed: its worker had `--max-pending` requests unanswered (answered 503).
    Overloaded,
    /// Its body paused longer than `--body-timeout` (answered 408).
    BodyTimeout,
}

impl Refused {
    /// The label values, in index order.
    pub const LABELS: [&'static str; 5] = [
        "ip_filter",
        "limit",
        "bad_request",
        "overloaded",
        "body_timeout",
    ];
}

/// What a client connection speaks (`sticky_cluster_connections{protocol}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2.
    Http2,
    /// A WebSocket (or other upgrade) tunnel.
    WebSocket,
}

impl Protocol {
    /// The label values, in index order.
    pub const LABELS: [&'static str; 3] = ["http1", "http2", "websocket"];
}

/// Why a worker did not answer (`sticky_cluster_upstream_errors_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// Connection refused or connect timeout.
    Unreachable,
    /// The connection broke before a response.
    Broken,
    /// An invalid response.
    Invalid,
    /// No response head in time.
    Timeout,
}

impl UpstreamError {
    /// The label values, in index order.
    pub const LABELS: [&'static str; 4] = ["unreachable", "broken", "invalid", "timeout"];
}

/// The counters of one worker slot.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Responses by status class, 1xx..5xx.
    pub codes: [AtomicU64; 5],
    /// Response times per bucket (not cumulative); the last is `+Inf`.
    pub buckets: [AtomicU64; 13],
    /// Sum of response times, microseconds.
    pub micros: AtomicU64,
    /// Upstream errors by [`UpstreamError`].
    pub errors: [AtomicU64; 4],
    /// Requests sent again after a failure on this worker, by [`Resent`].
    pub resends: [AtomicU64; 2],
}

/// Where a request went after a failure, as `sticky_cluster_resends_total{to}` names it
/// (HAProxy's retries and redispatches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resent {
    /// Again to the same worker (a new connection, or its replacement's address).
    Same,
    /// To another worker: routed again, a move.
    Other,
}

impl Resent {
    /// The label values, in index order.
    pub const LABELS: [&'static str; 2] = ["same", "other"];
}

/// Process-wide counters (one cluster per process).
#[derive(Debug)]
pub struct Counters {
    /// By [`Routed`].
    pub routing: [AtomicU64; 4],
    /// By [`Learned`].
    pub learned: [AtomicU64; 3],
    /// Keys the sticky table dropped because it was full.
    pub evicted: AtomicU64,
    /// By [`Refused`].
    pub refused: [AtomicU64; 5],
    /// Open connections by [`Protocol`].
    pub connections: [AtomicI64; 3],
    /// Completed TLS handshakes.
    pub tls_handshakes: AtomicU64,
    /// Failed or timed-out TLS handshakes.
    pub tls_failures: AtomicU64,
    workers: OnceLock<Box<[WorkerCounters]>>,
}

static COUNTERS: Counters = Counters {
    routing: [const { AtomicU64::new(0) }; 4],
    learned: [const { AtomicU64::new(0) }; 3],
    evicted: AtomicU64::new(0),
    refused: [const { AtomicU64::new(0) }; 5],
    connections: [const { AtomicI64::new(0) }; 3],
    tls_handshakes: AtomicU64::new(0),
    tls_failures: AtomicU64::new(0),
    workers: OnceLock::new(),
};

/// The counters, to read.
pub fn counters() -> &'static Counters {
    &COUNTERS
}

/// Sizes the per-worker table for `slots` workers (the first call wins).
pub fn init(slots: usize) {
    let _ = COUNTERS
        .workers
        .set((0..slots).map(|_| WorkerCounters::default()).collect());
}

impl Counters {
    /// The counters of `id`, when [`init`] covered it.
    #[inline]
    pub fn worker(&self, id: WorkerId) -> Option<&WorkerCounters> {
        self.workers.get()?.get(usize::from(id))
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// One routing decision.
#[inline]
pub fn routed(r: Routed) {
    bump(&COUNTERS.routing[r as usize]);
}

/// One session key learnt.
#[inline]
pub fn learned(l: Learned) {
    bump(&COUNTERS.learned[l as usize]);
}

/// One key evicted from a full sticky table.
#[inline]
pub fn evicted() {
    bump(&COUNTERS.evicted);
}

/// One refusal.
#[inline]
pub fn refused(r: Refused) {
    bump(&COUNTERS.refused[r as usize]);
}

/// A TLS handshake's outcome.
pub fn tls_handshake(ok: bool) {
    bump(if ok {
        &COUNTERS.tls_handshakes
    } else {
        &COUNTERS.tls_failures
    });
}

/// A worker's final response head: its status and how long it took from the send.
#[inline]
pub fn response(id: WorkerId, status: u16, took: Duration) {
    let Some(w) = COUNTERS.worker(id) else {
        return;
    };
    let class = usize::from(status / 100).clamp(1, 5) - 1;
    bump(&w.codes[class]);
    let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    let bucket = BUCKET_MICROS
        .iter()
        .position(|&b| micros <= b)
        .unwrap_or(BUCKET_MICROS.len());
    bump(&w.buckets[bucket]);
    w.micros.fetch_add(micros, Ordering::Relaxed);
}

/// A worker that did not answer.
#[inline]
pub fn upstream_error(id: WorkerId, e: UpstreamError) {
    if let Some(w) = COUNTERS.worker(id) {
        bump(&w.errors[e as usize]);
    }
}

/// One request sent again after a failure on `id`.
#[inline]
pub fn resent(id: WorkerId, to: Resent) {
    if let Some(w) = COUNTERS.worker(id) {
        bump(&w.resends[to as usize]);
    }
}

/// Counts one open connection of `protocol` until dropped.
#[derive(Debug)]
pub struct Open(Protocol);

impl Open {
    /// Starts counting.
    #[inline]
    pub fn new(p: Protocol) -> Self {
        COUNTERS.connections[p as usize].fetch_add(1, Ordering::Relaxed);
        Self(p)
    }
}

impl Drop for Open {
    #[inline]
    fn drop(&mut self) {
        COUNTERS.connections[self.0 as usize].fetch_sub(1, Ordering::Relaxed);
    }
}

/// The result of asking the shared table (`--shared-table`) about a key this proxy did not
/// know, as `sticky_cluster_shared_table_lookups_total{result}` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Another proxy had placed the key: this one adopted its worker.
    Hit,
    /// Nobody had: this proxy's choice was claimed.
    Miss,
    /// Redis did not answer within `--shared-table-timeout`.
    Timeout,
    /// Redis is down or answered an error.
    Error,
}

impl Lookup {
    /// The label values, in index order.
    pub const LABELS: [&'static str; 4] = ["hit", "miss", "timeout", "error"];
}

/// The shared table's counters; all zero (and not rendered) without `--shared-table`.
#[derive(Debug)]
pub struct SharedCounters {
    /// A shared table is configured.
    pub on: AtomicBool,
    /// Redis answers (1) or not (0).
    pub up: AtomicBool,
    /// Lookups by [`Lookup`].
    pub lookups: [AtomicU64; 4],
    /// Writes (sets and deletes) Redis acknowledged.
    pub publishes: AtomicU64,
    /// Writes dropped: the queue to Redis was full, or too many waited while it was down.
    pub dropped: AtomicU64,
}

static SHARED: SharedCounters = SharedCounters {
    on: AtomicBool::new(false),
    up: AtomicBool::new(false),
    lookups: [const { AtomicU64::new(0) }; 4],
    publishes: AtomicU64::new(0),
    dropped: AtomicU64::new(0),
};

/// The shared table's counters.
pub fn shared() -> &'static SharedCounters {
    &SHARED
}

/// One lookup in the shared table.
#[inline]
pub fn shared_lookup(l: Lookup) {
    SHARED.on.store(true, Ordering::Relaxed);
    bump(&SHARED.lookups[l as usize]);
}

/// `n` writes acknowledged by Redis.
pub fn shared_published(n: u64) {
    SHARED.publishes.fetch_add(n, Ordering::Relaxed);
}

/// One write dropped.
pub fn shared_dropped() {
    bump(&SHARED.dropped);
}

/// Redis answers or not.
pub fn shared_up(up: bool) {
    SHARED.on.store(true, Ordering::Relaxed);
    SHARED.up.store(up, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_lands_in_its_class_and_bucket() {
        init(2);
        let w = counters().worker(1).expect("initialised");
        let before = w.codes[1].load(Ordering::Relaxed);
        let bucket = w.buckets[3].load(Ordering::Relaxed);
        response(1, 204, Duration::from_millis(7));
        assert_eq!(w.codes[1].load(Ordering::Relaxed), before + 1);
        assert_eq!(
            w.buckets[3].load(Ordering::Relaxed),
            bucket + 1,
            "7 ms <= 10 ms"
        );
        response(9, 200, Duration::ZERO); // past the table: ignored, no panic
    }
}
