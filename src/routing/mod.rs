//! Where every stickiness rule lives. Pure: no sockets, no clock of its own (the caller
//! hands in the tick), so each rule is a unit test.
//!
//! Order of decision: a key the table knows whose worker is up -> that worker; else a
//! valid affinity cookie naming a live worker -> that worker; else the next live worker,
//! round-robin. The key, when there is one, is then remembered on the chosen worker.

pub mod affinity;
pub mod key;
pub mod rendezvous;
pub mod table;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::SET_COOKIE;
use http::request::Parts;
use http::{HeaderMap, HeaderValue};

use crate::metrics::Learned;
use crate::settings::{KeySource, Settings};
use crate::workers::{WorkerId, WorkerSet};
use affinity::Affinity;
use table::{KeyHash, Pin, StickyTable, Tick};

/// How the chosen worker relates to the client's earlier requests; forwarded to the app
/// as `X-Sticky` so it knows when to rebuild session state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Same worker as before (table or affinity cookie).
    Kept,
    /// First time seen: nothing pinned the client yet.
    New,
    /// The client was pinned to a worker that is not up, and was moved.
    Moved,
}

impl Outcome {
    /// The `X-Sticky` header value.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Outcome::Kept => "kept",
            Outcome::New => "new",
            Outcome::Moved => "moved",
        })
    }
}

impl From<Outcome> for crate::metrics::Routed {
    #[inline]
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::New => crate::metrics::Routed::New,
            Outcome::Kept => crate::metrics::Routed::Kept,
            Outcome::Moved => crate::metrics::Routed::Moved,
        }
    }
}

/// Where one request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The worker to forward to (it was `Up` when chosen).
    pub worker: WorkerId,
    /// Kept, new or moved.
    pub outcome: Outcome,
    /// The response must (re)set the affinity cookie to `worker`.
    pub set_affinity: bool,
    /// `worker` is not up: wait for it to come back (`--on-worker-down hold`) before
    /// sending, and route again (without holding) if it does not come back in time.
    pub wait: bool,
    /// The worker's process generation that serves the request: the active one, or the
    /// retiring one for a session pinned to it during a session drain.
    pub generation: u8,
}

impl Decision {
    /// Where keys learned from this request's response are pinned.
    pub fn pin(&self) -> Pin {
        Pin {
            worker: self.worker,
            generation: self.generation,
        }
    }
}

/// A custom session-key function (seed: `session.hash` as a function), consulted before the
/// configured key sources.
pub type SessionHash = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// Where the router tells a table shared with other proxies what it learnt (`--shared-table`).
/// Implementations must not block or do I/O on the caller: they hand the work to a task.
pub trait SharedSink: Send + Sync + std::fmt::Debug {
    /// `key` (local hash `hash`) is on `worker` as of `now`: publish it. `refresh` is true for
    /// a key that was only used (the sink may skip it when it published the key recently).
    fn publish(&self, hash: KeyHash, key: &[u8], worker: WorkerId, now: Tick, refresh: bool);
    /// `key` is gone (a worker's `unbind`): delete it from the shared table.
    fn forget(&self, key: &[u8]);
}

/// A request whose key this proxy's table does not know, stopped before it was placed
/// ([`Router::route_known`]): a shared table must be asked first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalMiss;

/// What a request showed before it was placed.
struct Seen<'k> {
    key: Option<&'k [u8]>,
    placed: bool,
    hash: Option<KeyHash>,
    cookie_worker: Option<WorkerId>,
    pinned_elsewhere: bool,
}

/// The routing rules and the state they remember.
pub struct Router {
    custom: Option<SessionHash>,
    sources: Vec<KeySource>,
    sticky: bool,
    learn_cookies: Vec<String>,
    table: Arc<StickyTable>,
    affinity: Option<Affinity>,
    /// `--drain-sessions`: a session whose process generation is gone is told it moved.
    drain_sessions: bool,
    shared: Option<Arc<dyn SharedSink>>,
    names: rendezvous::NameCache,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("custom", &self.custom.is_some())
            .field("sources", &self.sources)
            .field("sticky", &self.sticky)
            .field("keys", &self.table.len())
            .finish()
    }
}

impl Router {
    /// A router for `settings`, remembering keys in `table`; `affinity` is `None` when the
    /// affinity cookie is off.
    pub fn new(settings: &Settings, table: Arc<StickyTable>, affinity: Option<Affinity>) -> Self {
        let sources = settings.key_sources();
        let sticky = settings.sticky();
        let learn_cookies = sources
            .iter()
            .filter_map(|s| match s {
                KeySource::Cookie(name) => Some(name.clone()),
                _ => None,
            })
            .collect();
        Self {
            custom: None,
            sources,
            sticky,
            learn_cookies,
            table,
            affinity: affinity.filter(|_| sticky),
            drain_sessions: settings.drain_sessions,
            shared: None,
            names: rendezvous::NameCache::default(),
        }
    }

    /// Publishes every learnt key to `sink` too (`--shared-table`).
    pub fn with_shared(mut self, sink: Arc<dyn SharedSink>) -> Self {
        self.shared = Some(sink);
        self
    }

    /// The session key of a request, if any: engine.io's `sid`, then the custom function,
    /// then the configured sources.
    pub fn key_bytes<'h>(&self, head: &'h Parts, peer: IpAddr) -> Option<Cow<'h, [u8]>> {
        self.key_of(head, peer).map(|(k, _)| k)
    }

    /// The session key, and whether a key new to this proxy is placed by rendezvous: true
    /// for keys no response teaches (headers, query, address, a custom function); a session
    /// cookie or an engine.io `sid` is named by the worker that made it, so a new one goes
    /// round-robin and is learnt from the response.
    fn key_of<'h>(&self, head: &'h Parts, peer: IpAddr) -> Option<(Cow<'h, [u8]>, bool)> {
        if !self.sticky {
            return None;
        }
        if let Some(sid) = key::engineio_sid(&head.uri) {
            return Some((sid, false));
        }
        if let Some(k) = self.custom.as_ref().and_then(|f| f(head)) {
            return Some((Cow::Owned(k.into_bytes()), true));
        }
        let (k, source) = key::extract_from(&self.sources, &head.headers, &head.uri, peer)?;
        let placed = !matches!(source, Some(KeySource::Cookie(_)) | None);
        let bytes = match k {
            key::Key::Bytes(b) => b,
            key::Key::Ip(IpAddr::V4(v4)) => Cow::Owned(v4.octets().to_vec()),
            key::Key::Ip(IpAddr::V6(v6)) => Cow::Owned(v6.octets().to_vec()),
        };
        Some((bytes, placed))
    }

    /// Pins `key` on `worker`, which another proxy chose first (the shared table said so):
    /// the decision keeps the client there and sets the affinity cookie to it.
    pub fn adopt(&self, key: &[u8], worker: WorkerId, workers: &WorkerSet, now: Tick) -> Decision {
        let d = Decision {
            worker,
            outcome: Outcome::Kept,
            set_affinity: self.affinity.is_some(),
            wait: false,
            generation: workers.generation(worker),
        };
        self.table.insert_pin(self.table.hash(key), d.pin(), now);
        d
    }

    /// Consults `f` for a session key before the configured sources.
    pub fn with_session_hash(mut self, f: SessionHash) -> Self {
        self.custom = Some(f);
        self
    }

    /// The table behind this router.
    pub fn table(&self) -> &Arc<StickyTable> {
        &self.table
    }

    /// The affinity cookie, when on.
    pub fn affinity(&self) -> Option<&Affinity> {
        self.affinity.as_ref()
    }

    /// True unless `--session-key none` turned stickiness off.
    pub fn sticky(&self) -> bool {
        self.sticky
    }

    /// Chooses the worker for a request; `None` when no worker is up.
    pub fn route(
        &self,
        head: &Parts,
        peer: IpAddr,
        workers: &WorkerSet,
        now: Tick,
        hold: bool,
    ) -> Option<Decision> {
        self.decide(head, peer, workers, now, hold, false)
            .unwrap_or(None)
    }

    /// As [`route`](Self::route), but a request whose key this proxy's table does not
    /// know is not placed: [`LocalMiss`] says the shared table must be asked first. One
    /// key extraction and one table look-up either way.
    pub fn route_known(
        &self,
        head: &Parts,
        peer: IpAddr,
        workers: &WorkerSet,
        now: Tick,
        hold: bool,
    ) -> Result<Option<Decision>, LocalMiss> {
        self.decide(head, peer, workers, now, hold, true)
    }

    fn decide(
        &self,
        head: &Parts,
        peer: IpAddr,
        workers: &WorkerSet,
        now: Tick,
        hold: bool,
        stop_at_miss: bool,
    ) -> Result<Option<Decision>, LocalMiss> {
        if !self.sticky {
            return Ok(workers.next_up().map(|worker| Decision {
                worker,
                outcome: Outcome::New,
                set_affinity: false,
                wait: false,
                generation: workers.generation(worker),
            }));
        }
        let (key, placed) = match self.key_of(head, peer) {
            Some((k, placed)) => (Some(k), placed),
            None => (None, false),
        };
        let hash = key.as_deref().map(|k| self.table.hash(k));
        let cookie_worker = self
            .affinity
            .as_ref()
            .and_then(|a| key::cookie(&head.headers, a.name()).and_then(|v| a.verify(v)));
        let mut pinned_elsewhere = false;
        if let (Some(h), Some(k)) = (hash, &key) {
            match self.table.get_pin(h, now) {
                Some(pin) => match self.pinned(h, k, pin, cookie_worker, workers, now, hold) {
                    Some(d) => return Ok(Some(d)),
                    None => pinned_elsewhere = true,
                },
                None if stop_at_miss => return Err(LocalMiss),
                None => {}
            }
        }
        let seen = Seen {
            key: key.as_deref(),
            placed,
            hash,
            cookie_worker,
            pinned_elsewhere,
        };
        Ok(self.place(seen, workers, now, hold))
    }

    /// A key the table pins: its decision, or `None` when its worker is down and the
    /// client must be placed again (moved).
    #[allow(clippy::too_many_arguments)]
    fn pinned(
        &self,
        h: KeyHash,
        k: &[u8],
        pin: Pin,
        cookie_worker: Option<WorkerId>,
        workers: &WorkerSet,
        now: Tick,
        hold: bool,
    ) -> Option<Decision> {
        let w = pin.worker;
        if !workers.holds(w, pin.generation) {
            // A discovered slot now names another address: the pinned worker left.
            return None;
        }
        if workers.retiring_serves(w, pin.generation) {
            let d = self.decided(w, Outcome::Kept, cookie_worker, workers);
            return Some(Decision {
                generation: pin.generation,
                ..d
            });
        }
        if workers.is_up(w) {
            if let Some(sink) = &self.shared {
                sink.publish(h, k, w, now, true);
            }
            return Some(self.kept(h, pin, cookie_worker, workers, now));
        }
        hold.then(|| Decision {
            wait: true,
            ..self.decided(w, Outcome::Kept, cookie_worker, workers)
        })
    }

    /// Places a request the table did not settle: a valid affinity cookie's worker, else
    /// rendezvous for keys no response names, else round-robin; the key is then pinned.
    fn place(
        &self,
        seen: Seen<'_>,
        workers: &WorkerSet,
        now: Tick,
        hold: bool,
    ) -> Option<Decision> {
        let Seen {
            key,
            placed,
            hash,
            cookie_worker,
            pinned_elsewhere,
        } = seen;
        if let Some(w) = cookie_worker.filter(|&w| hold && !workers.is_up(w)) {
            return Some(Decision {
                wait: true,
                ..self.decided(w, Outcome::Kept, cookie_worker, workers)
            });
        }
        let (worker, outcome) = match cookie_worker {
            Some(w) if workers.is_up(w) => {
                let outcome = if pinned_elsewhere {
                    Outcome::Moved
                } else {
                    Outcome::Kept
                };
                (w, outcome)
            }
            stale => {
                let w = match key {
                    Some(k) if placed => rendezvous::place(k, workers, &self.names)?,
                    _ => workers.next_up()?,
                };
                let outcome = if pinned_elsewhere || stale.is_some() {
                    Outcome::Moved
                } else {
                    Outcome::New
                };
                (w, outcome)
            }
        };
        let d = self.decided(worker, outcome, cookie_worker, workers);
        if let (Some(h), Some(k)) = (hash, key) {
            self.table.insert_pin(h, d.pin(), now);
            // A key new to this proxy is claimed by the caller (the shared table may know
            // better); a key moved off a down worker is published as moved.
            if let (Some(sink), true) = (&self.shared, pinned_elsewhere) {
                sink.publish(h, k, worker, now, false);
            }
        }
        Some(d)
    }

    /// A key pinned to a worker that is up: kept on its process generation, or, when that
    /// process is gone (replaced), re-pinned to the current one; with `--drain-sessions`
    /// the client is then told it moved (the process that held its session is gone).
    fn kept(
        &self,
        hash: table::KeyHash,
        pin: Pin,
        cookie: Option<WorkerId>,
        workers: &WorkerSet,
        now: Tick,
    ) -> Decision {
        let d = self.decided(pin.worker, Outcome::Kept, cookie, workers);
        if d.generation == pin.generation {
            return d;
        }
        self.table.insert_pin(hash, d.pin(), now);
        if self.drain_sessions {
            return Decision {
                outcome: Outcome::Moved,
                ..d
            };
        }
        d
    }

    /// Routes a request again after the worker of `failed` could not serve it (and was
    /// taken out of rotation): the same rules, and the outcome says the client moved, so the
    /// app knows to rebuild its session; a client that was never served stays new. The
    /// decision made here is the one the request carries from now on. `None` when no worker
    /// is up.
    pub fn reroute(
        &self,
        head: &Parts,
        peer: IpAddr,
        workers: &WorkerSet,
        now: Tick,
        failed: Decision,
    ) -> Option<Decision> {
        let d = self.route(head, peer, workers, now, false)?;
        let outcome = match failed.outcome {
            _ if d.worker == failed.worker => d.outcome,
            Outcome::New => Outcome::New,
            Outcome::Kept | Outcome::Moved => Outcome::Moved,
        };
        Some(Decision { outcome, ..d })
    }

    fn decided(
        &self,
        worker: WorkerId,
        outcome: Outcome,
        cookie: Option<WorkerId>,
        workers: &WorkerSet,
    ) -> Decision {
        Decision {
            worker,
            outcome,
            set_affinity: self.affinity.is_some() && cookie != Some(worker),
            wait: false,
            generation: workers.generation(worker),
        }
    }

    /// Learns from a worker's response: every session cookie it sets is remembered on it,
    /// so the very next request carrying that cookie lands on the worker that made it.
    pub fn learn_from_response(&self, headers: &HeaderMap, pin: Pin, now: Tick) {
        if !self.sticky || self.learn_cookies.is_empty() {
            return;
        }
        for value in headers.get_all(SET_COOKIE) {
            self.learn_set_cookie(value.as_bytes(), pin, now);
        }
    }

    /// Learns from one `Set-Cookie` value of a worker's response (see
    /// [`Router::learn_from_response`]).
    pub fn learn_set_cookie(&self, value: &[u8], pin: Pin, now: Tick) {
        if !self.sticky {
            return;
        }
        for name in &self.learn_cookies {
            if let Some(v) = key::set_cookie_value(value, name) {
                crate::metrics::learned(crate::metrics::Learned::SetCookie);
                self.remember(v, pin, now);
            }
        }
    }

    /// The headers a key source reads (`--session-key header:NAME`).
    pub fn key_headers(&self) -> impl Iterator<Item = &http::HeaderName> {
        self.sources.iter().filter_map(|s| match s {
            KeySource::Header(name) => Some(name),
            _ => None,
        })
    }

    /// True when a custom session-key function reads the whole request head.
    pub fn has_custom_hash(&self) -> bool {
        self.custom.is_some()
    }

    /// Remembers a key found elsewhere (an engine.io handshake reply, a worker's `bind`).
    pub fn learn_key(&self, key: &[u8], pin: Pin, now: Tick, from: Learned) {
        if self.sticky {
            crate::metrics::learned(from);
            self.remember(key, pin, now);
        }
    }

    /// Pins a learnt key locally and publishes it.
    fn remember(&self, key: &[u8], pin: Pin, now: Tick) {
        let h = self.table.hash(key);
        self.table.learn_pin(h, pin, now);
        if let Some(sink) = &self.shared {
            sink.publish(h, key, pin.worker, now, false);
        }
    }

    /// Forgets a key (a worker's `unbind`).
    pub fn forget_key(&self, key: &[u8]) {
        self.table.remove(self.table.hash(key));
        if let Some(sink) = &self.shared {
            sink.forget(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workers::WorkerState;
    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::Duration;

    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn setup(n: u16, f: impl FnOnce(&mut Settings)) -> (Router, WorkerSet) {
        let mut s = Settings::default();
        f(&mut s);
        let table = Arc::new(StickyTable::new(s.session_max, s.session_ttl));
        let affinity = s
            .affinity_cookie
            .as_ref()
            .map(|name| Affinity::new(name, b"test-secret-0123456789", usize::from(n), false));
        let addr = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
        let workers = WorkerSet::new((0..n).map(|i| (addr(9000 + i), addr(9100 + i))), []);
        for i in 0..n {
            workers.set_state(i, WorkerState::Up);
        }
        (Router::new(&s, table, affinity), workers)
    }

    fn req(cookie: Option<&str>) -> Parts {
        let mut b = http::Request::builder().uri("/");
        if let Some(c) = cookie {
            b = b.header(http::header::COOKIE, c);
        }
        b.body(()).expect("request").into_parts().0
    }

    #[test]
    fn a_session_of_a_discovered_worker_whose_slot_now_holds_another_address_moves() {
        let s = Settings {
            affinity_cookie: None,
            ..Settings::default()
        };
        let table = Arc::new(StickyTable::new(s.session_max, s.session_ttl));
        let r = Router::new(&s, table, None);
        let w = WorkerSet::new([], []).with_discovered(2);
        let a: SocketAddr = "10.0.0.1:3000".parse().unwrap();
        w.occupy(0, a);
        let h = req(Some("connect.sid=abc"));
        let first = r.route(&h, PEER, &w, 0, false).expect("a worker");
        assert_eq!(first.worker, 0);
        // The worker leaves and, before the session comes back, another address takes its
        // slot: the session must not be handed to it as if nothing happened.
        w.vacate(0);
        w.occupy(0, "10.0.0.2:3000".parse().unwrap());
        w.occupy(1, "10.0.0.3:3000".parse().unwrap());
        let next = r.route(&h, PEER, &w, 1, false).expect("a worker");
        assert_eq!(next.outcome, Outcome::Moved);
        let after = r.route(&h, PEER, &w, 2, false).expect("a worker");
        assert_eq!((after.worker, after.outcome), (next.worker, Outcome::Kept));
    }

    #[test]
    fn rule2_known_key_goes_to_its_worker() {
        let (r, w) = setup(4, |_| {});
        let h = req(Some("connect.sid=abc"));
        let first = r.route(&h, PEER, &w, 0, false).expect("a worker");
        assert_eq!(first.outcome, Outcome::New);
        for t in 1..20 {
            let d = r.route(&h, PEER, &w, t, false).expect("a worker");
            assert_eq!(d.worker, first.worker);
            assert_eq!(d.outcome, Outcome::Kept);
        }
    }

    #[test]
    fn a_reroute_after_a_failure_is_a_move_and_the_next_request_is_kept() {
        let (r, w) = setup(3, |s| s.affinity_cookie = None);
        let h = req(Some("connect.sid=abc"));
        let first = r.route(&h, PEER, &w, 0, false).expect("a worker");
        let kept = r.route(&h, PEER, &w, 1, false).expect("a worker");
        assert_eq!(kept.outcome, Outcome::Kept);
        w.set_healthy(kept.worker, false);
        let moved = r.reroute(&h, PEER, &w, 2, kept).expect("a worker");
        assert_ne!(moved.worker, first.worker);
        assert_eq!(moved.outcome, Outcome::Moved);
        let after = r.route(&h, PEER, &w, 3, false).expect("a worker");
        assert_eq!((after.worker, after.outcome), (moved.worker, Outcome::Kept));
        // A client never served before stays new on its second worker.
        let fresh = req(Some("connect.sid=fresh"));
        let new = r.route(&fresh, PEER, &w, 4, false).expect("a worker");
        assert_eq!(new.outcome, Outcome::New);
        w.set_healthy(new.worker, false);
        let again = r.reroute(&fresh, PEER, &w, 5, new).expect("a worker");
        assert_ne!(again.worker, new.worker);
        assert_eq!(again.outcome, Outcome::New);
    }

    #[test]
    fn rule2_keys_expire_after_ttl_of_disuse() {
        let (r, w) = setup(4, |s| s.session_ttl = Duration::from_secs(1));
        let h = req(Some("connect.sid=abc"));
        let first = r.route(&h, PEER, &w, 0, false).expect("a worker").worker;
        assert_eq!(r.table().len(), 1);
        assert_eq!(r.table().sweep(11), None, "10 ticks = 1 s later it is gone");
        assert_eq!(r.table().len(), 0);
        let _ = first;
    }

    #[test]
    fn rule3_learns_session_cookie_from_set_cookie() {
        let (r, w) = setup(4, |_| {});
        let mut resp = HeaderMap::new();
        resp.append(
            SET_COOKIE,
            HeaderValue::from_static("connect.sid=s%3Anew; Path=/; HttpOnly"),
        );
        r.learn_from_response(&resp, Pin::worker(2), 0);
        for t in 0..8 {
            let d = r
                .route(&req(Some("connect.sid=s%3Anew")), PEER, &w, t, false)
                .expect("a worker");
            assert_eq!(d.worker, 2, "the worker that created the session");
        }
    }

    #[test]
    fn a_session_drain_keeps_old_keys_on_the_retiring_generation_and_moves_them_after() {
        for drain_sessions in [true, false] {
            let (r, w) = setup(1, |s| s.drain_sessions = drain_sessions);
            let old = req(Some("connect.sid=old"));
            let first = r.route(&old, PEER, &w, 0, false).expect("a worker");
            assert_eq!(first.generation, 0);
            // A rolling restart: generation 1 on address 1, the old process retires.
            w.set_generation(0, 1, 1);
            w.set_active(0, 1);
            w.begin_retiring(0, 7);
            let d = r.route(&old, PEER, &w, 1, false).expect("a worker");
            assert_eq!(
                (d.generation, d.outcome),
                (0, Outcome::Kept),
                "old key, old process"
            );
            let new = r.route(&req(Some("connect.sid=new")), PEER, &w, 1, false);
            assert_eq!(
                new.map(|d| d.generation),
                Some(1),
                "a new key goes to the replacement"
            );
            // A key the old process sets meanwhile is pinned to it.
            r.learn_set_cookie(b"connect.sid=rotated", first.pin(), 2);
            let rotated = r.route(&req(Some("connect.sid=rotated")), PEER, &w, 2, false);
            assert_eq!(rotated.map(|d| d.generation), Some(0));
            // Adopted by the replacement, then the old process answers a request that was in
            // flight and sets the same cookie again: the adoption stands.
            r.learn_key(
                b"rotated",
                Pin {
                    worker: 0,
                    generation: 1,
                },
                2,
                Learned::Bus,
            );
            r.learn_set_cookie(b"connect.sid=rotated", first.pin(), 2);
            let adopted = r.route(&req(Some("connect.sid=rotated")), PEER, &w, 2, false);
            assert_eq!(
                adopted.map(|d| d.generation),
                Some(1),
                "an adoption is not undone"
            );
            // The old process is gone: its keys move to the replacement, told so with
            // --drain-sessions, and are re-pinned there.
            w.end_retiring(0);
            let d = r.route(&old, PEER, &w, 3, false).expect("a worker");
            let told = if drain_sessions {
                Outcome::Moved
            } else {
                Outcome::Kept
            };
            assert_eq!((d.generation, d.outcome), (1, told));
            let again = r.route(&old, PEER, &w, 4, false).expect("a worker");
            assert_eq!((again.generation, again.outcome), (1, Outcome::Kept));
        }
    }

    #[test]
    fn rule4_keyless_clients_are_spread_and_get_an_affinity_cookie() {
        let (r, w) = setup(4, |_| {});
        let picks: Vec<_> = (0..8)
            .map(|t| r.route(&req(None), PEER, &w, t, false).expect("a worker"))
            .collect();
        let distinct: std::collections::HashSet<_> = picks.iter().map(|d| d.worker).collect();
        assert_eq!(distinct.len(), 4, "round-robin over all four workers");
        assert!(picks.iter().all(|d| d.set_affinity));
    }

    #[test]
    fn rule4_valid_affinity_cookie_routes_and_teaches_the_key() {
        let (r, w) = setup(4, |_| {});
        let token = r
            .affinity()
            .expect("on")
            .token(3)
            .expect("token")
            .to_string();
        let h = req(Some(&format!("sticky.worker={token}; connect.sid=k1")));
        let d = r.route(&h, PEER, &w, 0, false).expect("a worker");
        assert_eq!(
            (d.worker, d.outcome, d.set_affinity),
            (3, Outcome::Kept, false)
        );
        let key_only = req(Some("connect.sid=k1"));
        assert_eq!(
            r.route(&key_only, PEER, &w, 1, false).map(|d| d.worker),
            Some(3)
        );
    }

    #[test]
    fn rule4_forged_affinity_cookie_is_ignored() {
        let (r, w) = setup(4, |_| {});
        for forged in ["0", "3", "ffffffffffffffffffffffffffffffff", "x;y"] {
            let h = req(Some(&format!("sticky.worker={forged}")));
            let d = r.route(&h, PEER, &w, 0, false).expect("a worker");
            assert!(d.set_affinity, "a forged cookie is replaced");
            assert_eq!(d.outcome, Outcome::New);
        }
    }

    #[test]
    fn table_beats_affinity_cookie() {
        let (r, w) = setup(4, |_| {});
        r.learn_key(b"k", Pin::worker(1), 0, Learned::Bus);
        let token = r
            .affinity()
            .expect("on")
            .token(3)
            .expect("token")
            .to_string();
        let h = req(Some(&format!("sticky.worker={token}; connect.sid=k")));
        let d = r.route(&h, PEER, &w, 0, false).expect("a worker");
        assert_eq!((d.worker, d.set_affinity), (1, true));
    }

    #[test]
    fn rule5_down_worker_is_never_chosen_and_its_keys_move_once() {
        let (r, w) = setup(3, |_| {});
        r.learn_key(b"k", Pin::worker(1), 0, Learned::Bus);
        w.set_state(1, WorkerState::Down);
        let h = req(Some("connect.sid=k"));
        let moved = r.route(&h, PEER, &w, 1, false).expect("a worker");
        assert_ne!(moved.worker, 1);
        assert_eq!(moved.outcome, Outcome::Moved);
        w.set_state(1, WorkerState::Up);
        for t in 2..10 {
            let d = r.route(&h, PEER, &w, t, false).expect("a worker");
            assert_eq!(d.worker, moved.worker, "no second move when 1 is back");
            assert_eq!(d.outcome, Outcome::Kept);
        }
        let newcomers: std::collections::HashSet<_> = (0..6)
            .filter_map(|t| r.route(&req(None), PEER, &w, t, false))
            .map(|d| d.worker)
            .collect();
        assert!(newcomers.contains(&1), "a respawned worker takes new keys");
    }

    #[test]
    fn hold_waits_for_the_pinned_worker_instead_of_moving() {
        let (r, w) = setup(2, |_| {});
        r.learn_key(b"k", Pin::worker(1), 0, Learned::Bus);
        w.set_state(1, WorkerState::Starting);
        let h = req(Some("connect.sid=k"));
        let held = r.route(&h, PEER, &w, 1, true).expect("a decision");
        assert_eq!((held.worker, held.wait), (1, true));
        let moved = r.route(&h, PEER, &w, 2, false).expect("a worker");
        assert_eq!(
            (moved.worker, moved.outcome, moved.wait),
            (0, Outcome::Moved, false)
        );
    }

    #[test]
    fn custom_session_hash_comes_before_the_sources() {
        let (r, w) = setup(3, |_| {});
        let r = r.with_session_hash(Arc::new(|p: &Parts| {
            p.headers
                .get("x-tenant")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        }));
        let mut h = req(Some("connect.sid=a"));
        h.headers
            .insert("x-tenant", HeaderValue::from_static("acme"));
        let first = r.route(&h, PEER, &w, 0, false).expect("a worker").worker;
        let mut other_cookie = req(Some("connect.sid=b"));
        other_cookie
            .headers
            .insert("x-tenant", HeaderValue::from_static("acme"));
        assert_eq!(
            r.route(&other_cookie, PEER, &w, 1, false).map(|d| d.worker),
            Some(first)
        );
    }

    #[test]
    fn affinity_cookie_to_a_dead_worker_moves() {
        let (r, w) = setup(2, |_| {});
        let token = r
            .affinity()
            .expect("on")
            .token(0)
            .expect("token")
            .to_string();
        w.set_state(0, WorkerState::Down);
        let h = req(Some(&format!("sticky.worker={token}")));
        let d = r.route(&h, PEER, &w, 0, false).expect("a worker");
        assert_eq!(
            (d.worker, d.outcome, d.set_affinity),
            (1, Outcome::Moved, true)
        );
    }

    #[test]
    fn no_worker_up_means_no_decision() {
        let (r, w) = setup(2, |_| {});
        w.set_state(0, WorkerState::Down);
        w.set_state(1, WorkerState::Starting);
        assert_eq!(r.route(&req(None), PEER, &w, 0, false), None);
    }

    #[test]
    fn session_key_none_is_plain_round_robin() {
        let (r, w) = setup(2, |s| s.session_keys = vec![KeySource::None]);
        let h = req(Some("connect.sid=k"));
        let picks: Vec<_> = (0..4)
            .filter_map(|t| r.route(&h, PEER, &w, t, false))
            .map(|d| d.worker)
            .collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
        assert!(r.affinity().is_none());
    }

    #[test]
    fn ip_source_pins_by_client_address() {
        let (r, w) = setup(4, |s| s.session_keys = vec![KeySource::Ip]);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        let first = r
            .route(&req(None), a, &w, 0, false)
            .expect("a worker")
            .worker;
        let again = r
            .route(&req(None), mapped, &w, 1, false)
            .expect("a worker")
            .worker;
        assert_eq!(first, again);
    }
}
