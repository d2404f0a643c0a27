//! `--shared-table redis://...`: the session table several proxies share through Redis.
//!
//! The in-memory [`StickyTable`](crate::routing::table::StickyTable) stays in front as the
//! local cache: a request whose key it knows never waits for Redis. A key new to this proxy
//! is claimed once (`SET NX` then `GET`, pipelined, bounded by `--shared-table-timeout`):
//! the first proxy's worker wins and the others adopt it. Learnt keys, refreshes (at most
//! once per key per [`REFRESH`]) and deletes go through a bounded queue to one background
//! task that pipelines them; a full queue drops the write and counts it.
//!
//! Redis down: lookups answer "unknown" at once (the request routes on the local table,
//! the affinity cookie and rendezvous placement), writes wait in a bounded set and are
//! re-published when Redis answers again; each change of state is logged once.
//!
//! Keys in Redis are `sticky-cluster:` + HMAC-SHA256(secret, session key), truncated: no
//! session id is stored in clear, and every proxy sharing the secret computes the same.
//! Values are workers' stable names ([`WorkerSet::name`]), never slot indexes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::IntoConnectionInfo;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, Lookup};
use crate::redis_url::redact;
use crate::routing::table::{self, KeyHash, Tick};
use crate::routing::SharedSink;
use crate::workers::{WorkerId, WorkerSet};

/// Prefix of every key this program writes.
const PREFIX: &str = "sticky-cluster:";
/// A used key is re-published at most this often (sliding TTL without a write per request).
const REFRESH: Duration = Duration::from_secs(5);
/// Slots of the "published recently" filter (a power of two).
const RECENT_SLOTS: usize = 1 << 16;
/// Writes queued between the request path and the publisher.
const QUEUE: usize = 8192;
/// Most writes pipelined at once.
const BATCH: usize = 512;
/// Most writes kept while Redis is down (the rest are dropped and counted).
const PENDING_MAX: usize = 100_000;
/// How often Redis is pinged to notice it going down or coming back.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Bound on a background write or ping.
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the shared table could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SharedTableError {
    /// The URL does not parse.
    #[error("invalid --shared-table {url:?}: {reason} (expected redis://HOST:PORT[/DB] or rediss://...)")]
    BadUrl {
        /// The URL as given, password removed.
        url: String,
        /// Why.
        reason: String,
    },
}

/// One write for Redis.
#[derive(Debug)]
enum Write {
    /// The key is on the named worker.
    Set { key: String, worker: String },
    /// The key is gone.
    Del { key: String },
}

impl Write {
    fn key(&self) -> &str {
        match self {
            Write::Set { key, .. } | Write::Del { key } => key,
        }
    }
}

/// What the shared table says about a key new to this proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This proxy's choice was stored (or another proxy chose the same worker).
    Ours,
    /// Another proxy placed the key on this worker first.
    Theirs(WorkerId),
    /// No usable answer (timeout, error, a worker this proxy does not have).
    Unknown,
}

/// The handle every proxy part shares: lookups on the request path, writes to the queue.
pub struct SharedTable {
    conn: ConnectionManager,
    hmac: ring::hmac::Key,
    workers: Arc<WorkerSet>,
    ttl_ms: u64,
    timeout: Duration,
    /// Per slot: the high 32 bits of a key's local hash and the tick it was last published.
    recent: Box<[AtomicU64]>,
    queue: mpsc::Sender<Write>,
    up: Arc<AtomicBool>,
}

impl std::fmt::Debug for SharedTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTable")
            .field("timeout", &self.timeout)
            .field("up", &self.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// How to reach Redis and how to behave.
#[derive(Debug, Clone)]
pub struct SharedConfig {
    /// `redis://HOST:PORT[/DB]` or `rediss://...`.
    pub url: String,
    /// Password when the URL has none (`STICKY_CLUSTER_REDIS_PASSWORD`).
    pub password: Option<String>,
    /// Bound on a lookup on the request path.
    pub timeout: Duration,
    /// Sliding lifetime of a key (the session TTL).
    pub ttl: Duration,
}

impl SharedTable {
    /// Connects lazily to Redis and starts the publisher; `secret` keys the names of keys.
    ///
    /// # Errors
    /// The URL does not parse.
    pub fn start(
        config: &SharedConfig,
        secret: &[u8],
        workers: Arc<WorkerSet>,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, SharedTableError> {
        let bad = |reason: String| SharedTableError::BadUrl {
            url: redact(&config.url),
            reason,
        };
        let mut info = config
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| bad(e.to_string()))?;
        if let (Some(p), None) = (&config.password, info.redis_settings().password()) {
            let settings = info.redis_settings().clone().set_password(p);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).map_err(|e| bad(e.to_string()))?;
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(BACKGROUND_TIMEOUT))
            .set_response_timeout(Some(BACKGROUND_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|e| bad(e.to_string()))?;
        let (queue, rx) = mpsc::channel(QUEUE);
        let table = Arc::new(Self {
            conn: conn.clone(),
            hmac: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
            workers,
            ttl_ms: u64::try_from(config.ttl.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            timeout: config.timeout,
            recent: (0..RECENT_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            queue,
            up: Arc::new(AtomicBool::new(false)),
        });
        metrics::shared_up(false);
        let publisher = Publisher {
            conn,
            ttl_ms: table.ttl_ms,
            up: table.up.clone(),
            pending: HashMap::new(),
            known: false,
        };
        tokio::spawn(publisher.run(rx, stop));
        Ok(table)
    }

    /// The Redis key of a session key.
    pub fn redis_key(&self, key: &[u8]) -> String {
        let tag = ring::hmac::sign(&self.hmac, key);
        let mut out = String::with_capacity(PREFIX.len() + 32);
        out.push_str(PREFIX);
        for b in &tag.as_ref()[..16] {
            let _ = write!(out, "{b:02x}");
        }
        out
    }

    /// Claims `key` for `worker` unless another proxy placed it first; bounded by the
    /// timeout, and never an error: on trouble the answer is [`Claim::Unknown`] and the
    /// claim is queued for later.
    pub async fn claim(&self, key: &[u8], worker: WorkerId) -> Claim {
        let Some(name) = self.workers.name(worker) else {
            return Claim::Unknown;
        };
        let rkey = self.redis_key(key);
        if !self.up.load(Ordering::Relaxed) {
            metrics::shared_lookup(Lookup::Error);
            self.enqueue(Write::Set {
                key: rkey,
                worker: name,
            });
            return Claim::Unknown;
        }
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&rkey)
            .arg(&name)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl_ms)
            .ignore()
            .cmd("GET")
            .arg(&rkey);
        let mut conn = self.conn.clone();
        let answer = tokio::time::timeout(
            self.timeout,
            pipe.query_async::<(Option<String>,)>(&mut conn),
        )
        .await;
        let winner = match answer {
            Ok(Ok((Some(winner),))) => winner,
            Ok(Ok((None,))) | Ok(Err(_)) | Err(_) => {
                let result = if answer.is_err() {
                    Lookup::Timeout
                } else {
                    Lookup::Error
                };
                metrics::shared_lookup(result);
                self.enqueue(Write::Set {
                    key: rkey,
                    worker: name,
                });
                return Claim::Unknown;
            }
        };
        if winner == name {
            metrics::shared_lookup(Lookup::Miss);
            return Claim::Ours;
        }
        metrics::shared_lookup(Lookup::Hit);
        match self.workers.by_name(&winner) {
            Some(w) if self.workers.is_up(w) => Claim::Theirs(w),
            // A worker this proxy lacks or that is down: ours replaces it.
            _ => {
                self.enqueue(Write::Set {
                    key: rkey,
                    worker: name,
                });
                Claim::Unknown
            }
        }
    }

    /// True when `hash` was published less than [`REFRESH`] ago (and marks it published now
    /// otherwise).
    fn recently(&self, hash: KeyHash, now: Tick) -> bool {
        let slot = &self.recent[(hash as usize) & (RECENT_SLOTS - 1)];
        let tag = hash & !0xffff_ffff;
        let entry = slot.load(Ordering::Relaxed);
        let last = (entry & 0xffff_ffff) as Tick;
        let refresh = table::ticks(REFRESH);
        if entry & !0xffff_ffff == tag && entry != 0 && now.wrapping_sub(last) < refresh {
            return true;
        }
        slot.store(tag | u64::from(now), Ordering::Relaxed);
        false
    }

    fn enqueue(&self, write: Write) {
        if self.queue.try_send(write).is_err() {
            metrics::shared_dropped();
        }
    }
}

impl SharedSink for SharedTable {
    fn publish(&self, hash: KeyHash, key: &[u8], worker: WorkerId, now: Tick, refresh: bool) {
        if self.recently(hash, now) && refresh {
            return;
        }
        if let Some(name) = self.workers.name(worker) {
            self.enqueue(Write::Set {
                key: self.redis_key(key),
                worker: name,
            });
        }
    }

    fn forget(&self, key: &[u8]) {
        self.enqueue(Write::Del {
            key: self.redis_key(key),
        });
    }
}

/// The background task: pipelines queued writes, keeps those Redis could not take, and
/// watches Redis come and go.
struct Publisher {
    conn: ConnectionManager,
    ttl_ms: u64,
    up: Arc<AtomicBool>,
    /// Writes waiting for Redis, the newest per key.
    pending: HashMap<String, Write>,
    /// The state was logged at least once.
    known: bool,
}

impl Publisher {
    async fn run(mut self, mut rx: mpsc::Receiver<Write>, stop: CancellationToken) {
        self.probe().await;
        let mut probe = tokio::time::interval(PROBE_EVERY);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                n = rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        return;
                    }
                    self.write(std::mem::take(&mut batch)).await;
                }
                _ = probe.tick() => self.probe().await,
            }
        }
    }

    /// Pings Redis; on the way back up, re-publishes what waited.
    async fn probe(&mut self) {
        let mut conn = self.conn.clone();
        let ping = tokio::time::timeout(
            BACKGROUND_TIMEOUT,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await;
        match ping {
            Ok(Ok(_)) => {
                self.set_up(true, None);
                if !self.pending.is_empty() {
                    let waiting: Vec<Write> = self.pending.drain().map(|(_, w)| w).collect();
                    tracing::info!(writes = waiting.len(), "shared table: re-publishing");
                    for chunk in waiting.chunks(BATCH) {
                        self.write(chunk.iter().map(clone_write).collect()).await;
                    }
                }
            }
            Ok(Err(e)) => self.set_up(false, Some(e.to_string())),
            Err(_) => self.set_up(false, Some("no answer".to_string())),
        }
    }

    async fn write(&mut self, batch: Vec<Write>) {
        if batch.is_empty() {
            return;
        }
        if !self.up.load(Ordering::Relaxed) {
            self.keep(batch);
            return;
        }
        let mut pipe = redis::pipe();
        for w in &batch {
            match w {
                Write::Set { key, worker } => pipe
                    .cmd("SET")
                    .arg(key)
                    .arg(worker)
                    .arg("PX")
                    .arg(self.ttl_ms),
                Write::Del { key } => pipe.cmd("DEL").arg(key),
            }
            .ignore();
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(BACKGROUND_TIMEOUT, pipe.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => metrics::shared_published(batch.len() as u64),
            Ok(Err(e)) => {
                self.set_up(false, Some(e.to_string()));
                self.keep(batch);
            }
            Err(_) => {
                self.set_up(false, Some("no answer".to_string()));
                self.keep(batch);
            }
        }
    }

    /// Keeps writes for when Redis is back (the newest per key), dropping past the cap.
    fn keep(&mut self, batch: Vec<Write>) {
        for w in batch {
            if self.pending.len() >= PENDING_MAX && !self.pending.contains_key(w.key()) {
                metrics::shared_dropped();
                continue;
            }
            self.pending.insert(w.key().to_string(), w);
        }
    }

    /// Records Redis's state, logging each change once.
    fn set_up(&mut self, up: bool, error: Option<String>) {
        let was = self.up.swap(up, Ordering::Relaxed);
        metrics::shared_up(up);
        if was == up && self.known {
            return;
        }
        self.known = true;
        if up {
            tracing::info!("shared table: Redis answers; sessions are shared");
        } else {
            tracing::warn!(
                error = error.as_deref().unwrap_or(""),
                "shared table: Redis does not answer; serving from the local table, will retry"
            );
        }
    }
}

fn clone_write(w: &Write) -> Write {
    match w {
        Write::Set { key, worker } => Write::Set {
            key: key.clone(),
            worker: worker.clone(),
        },
        Write::Del { key } => Write::Del { key: key.clone() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table whose queue the test reads, on workers named `10.0.0.1:300N`.
    fn table() -> (SharedTable, mpsc::Receiver<Write>) {
        let addr = |p: u16| std::net::SocketAddr::from(([10, 0, 0, 1], p));
        let workers = Arc::new(WorkerSet::new([], (0..3).map(|i| addr(3000 + i))));
        let client = redis::Client::open("redis://127.0.0.1:1").expect("a url");
        let conn = ConnectionManager::new_lazy_with_config(
            client,
            redis::aio::ConnectionManagerConfig::new(),
        )
        .expect("lazy");
        let (queue, rx) = mpsc::channel(16);
        let table = SharedTable {
            conn,
            hmac: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"test-secret-0123456789"),
            workers,
            ttl_ms: 1000,
            timeout: Duration::from_millis(10),
            recent: (0..RECENT_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            queue,
            up: Arc::new(AtomicBool::new(false)),
        };
        (table, rx)
    }

    fn drain(rx: &mut mpsc::Receiver<Write>) -> Vec<Write> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[tokio::test]
    async fn a_used_key_is_refreshed_at_most_once_per_interval_and_a_learnt_one_always() {
        let (t, mut rx) = table();
        let (hash, key) = (0x1234_5678_9abc_def0, b"sid-1".as_slice());
        let refresh = table::ticks(REFRESH);
        t.publish(hash, key, 1, 100, true);
        for tick in 101..100 + refresh {
            t.publish(hash, key, 1, tick, true);
        }
        let sent = drain(&mut rx);
        assert_eq!(sent.len(), 1, "one refresh per interval");
        assert!(matches!(&sent[0], Write::Set { worker, .. } if worker == "10.0.0.1:3001"));
        t.publish(hash, key, 1, 100 + refresh, true);
        assert_eq!(drain(&mut rx).len(), 1, "due again after the interval");
        t.publish(hash, key, 2, 100 + refresh + 1, false);
        assert_eq!(drain(&mut rx).len(), 1, "a learnt key is always published");
        t.forget(key);
        assert!(matches!(drain(&mut rx).as_slice(), [Write::Del { .. }]));
    }

    #[tokio::test]
    async fn keys_are_keyed_hashes_never_the_session_id() {
        let (t, _rx) = table();
        let k = t.redis_key(b"s%3Asecret-session");
        assert!(
            k.starts_with("sticky-cluster:") && k.len() == PREFIX.len() + 32,
            "{k}"
        );
        assert!(!k.contains("secret"), "{k}");
        assert_eq!(k, t.redis_key(b"s%3Asecret-session"), "stable");
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let (t, _rx) = table();
        let before = metrics::shared().dropped.load(Ordering::Relaxed);
        for i in 0..20u64 {
            t.publish(i << 32, format!("k{i}").as_bytes(), 0, 1, false);
        }
        let dropped = metrics::shared().dropped.load(Ordering::Relaxed) - before;
        assert_eq!(dropped, 4, "16 queued, 4 dropped");
    }
}
