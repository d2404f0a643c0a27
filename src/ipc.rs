//! The worker message bus: one Unix socket per worker slot (its path in the worker's
//! `STICKY_CLUSTER_IPC`), carrying newline-delimited JSON both ways.
//!
//! Worker -> supervisor lines:
//! - `{"type":"message","data":...}`: for the supervisor (logged at debug, piped to
//!   `--on-message`, handed to the library's `on_message`).
//! - `{"type":"broadcast","data":...}`: delivered to every other worker.
//! - `{"type":"send","to":N,"data":...}`: delivered to worker N.
//! - `{"type":"bind","key":"..."}` / `{"type":"unbind","key":"..."}`: pin a session key to
//!   this worker (after login rotated the session id) or forget it (logout).
//!
//! - `{"type":"watch"}`: from now on, also send this connection the worker notices below.
//! - Session hand-off (rolling restart with `--drain-sessions`, see the README's bus
//!   section): `{"type":"handoff","key":K,"data":...}` and `{"type":"handoff-end"}` from the
//!   retiring process, `{"type":"adopt","key":K}` from its replacement.
//!
//! Supervisor -> worker lines: `{"type":"message","from":N,"data":...}`, and, to connections
//! that sent `watch`, `{"type":"worker","id":N,"state":"down"|"up"}` when another worker's
//! process exits or comes (back) up, so a worker-side cluster layer (the npm package's
//! socket.io adapter) forgets a dead peer at once. During a session drain: `{"type":"drain"}`
//! to the retiring process, `{"type":"handoff","key":K,"data":...,"from":N}` to its
//! replacement, `{"type":"adopted","key":K}` back to the retiring process.
//!
//! A worker is identified by the socket it connected to (the directory is 0700), never by
//! what it claims: each slot has one socket per address (`worker-N.sock` for address 0,
//! `worker-N.1.sock` for address 1), so the old and the new process of a rolling restart
//! are told apart. Lines over [`MAX_LINE`] or a run of garbage disconnect it; a flood is
//! throttled to [`RATE_PER_SEC`] lines per second. Nothing a worker sends can stop the bus.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::routing::table::Pin;
use crate::routing::Router;
use crate::workers::{WorkerId, WorkerSet, WorkerState};

/// Environment variable naming the worker's socket.
pub const IPC_ENV: &str = "STICKY_CLUSTER_IPC";
/// Longest accepted line, in bytes.
pub const MAX_LINE: usize = 64 * 1024;
/// Lines per second a worker may send before it is throttled.
pub const RATE_PER_SEC: u32 = 2000;
/// Garbage lines in a row after which a worker is disconnected.
const MAX_GARBAGE: u32 = 20;
/// Messages queued for one worker before the oldest are dropped.
const QUEUE: usize = 1024;
/// How every worker notice line starts; only connections that sent `watch` get them.
const WORKER_NOTICE: &str = "{\"type\":\"worker\",";

/// A message a worker sent to the supervisor.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Sender.
    pub worker: WorkerId,
    /// The `data` it sent.
    pub data: Value,
}

/// Why the bus could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot create the worker message bus socket {path}: {source}")]
pub struct IpcError {
    /// The path.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// The supervisor's side of the bus.
#[derive(Debug)]
pub struct Bus {
    dir: PathBuf,
    /// Per slot, one outbox per address (the process running there).
    outboxes: Vec<[broadcast::Sender<Arc<str>>; 2]>,
    workers: Arc<WorkerSet>,
}

/// Which connection a line came from: a slot and the address its process runs on.
#[derive(Debug, Clone, Copy)]
struct Sender {
    id: WorkerId,
    index: usize,
}

impl Bus {
    /// Binds one socket per worker in a fresh private directory and serves them until
    /// `stop`. Messages for the supervisor go to `inbox`; bind/unbind go to `router`.
    ///
    /// # Errors
    /// When the directory or a socket cannot be created.
    pub fn start(
        workers: usize,
        set: Arc<WorkerSet>,
        router: Arc<Router>,
        inbox: mpsc::UnboundedSender<Incoming>,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, IpcError> {
        let dir = private_dir().map_err(|source| IpcError {
            path: std::env::temp_dir(),
            source,
        })?;
        let outboxes: Vec<_> = (0..workers)
            .map(|_| [broadcast::channel(QUEUE).0, broadcast::channel(QUEUE).0])
            .collect();
        let bus = Arc::new(Self {
            dir,
            outboxes,
            workers: set,
        });
        for id in 0..workers {
            for index in 0..2 {
                let from = Sender {
                    id: id as WorkerId,
                    index,
                };
                let path = bus.socket_path_at(from.id, index);
                let listener = UnixListener::bind(&path).map_err(|source| IpcError {
                    path: path.clone(),
                    source,
                })?;
                tokio::spawn(accept_loop(
                    from,
                    listener,
                    bus.clone(),
                    router.clone(),
                    inbox.clone(),
                    stop.clone(),
                ));
            }
        }
        Ok(bus)
    }

    /// The socket path of worker `id`'s address 0 (what its `STICKY_CLUSTER_IPC` holds).
    pub fn socket_path(&self, id: WorkerId) -> PathBuf {
        self.socket_path_at(id, 0)
    }

    /// The socket path for the process on address `index` of worker `id`.
    pub fn socket_path_at(&self, id: WorkerId, index: usize) -> PathBuf {
        match index {
            0 => self.dir.join(format!("worker-{id}.sock")),
            _ => self.dir.join(format!("worker-{id}.1.sock")),
        }
    }

    /// Queues `line` for both processes of slot `to` (old and new during a rolling restart).
    fn to_slot(&self, to: usize, line: &Arc<str>) {
        if let Some(outboxes) = self.outboxes.get(to) {
            for outbox in outboxes {
                let _ = outbox.send(line.clone());
            }
        }
    }

    /// Queues `line` for the process on address `index` of slot `to`; false when no
    /// process is connected there.
    fn to_process(&self, to: WorkerId, index: usize, line: String) -> bool {
        self.outboxes
            .get(usize::from(to))
            .is_some_and(|o| o[index & 1].send(Arc::from(line)).is_ok())
    }

    /// True when the process on address `index` of worker `id` is connected to the bus.
    pub fn connected(&self, id: WorkerId, index: usize) -> bool {
        self.outboxes
            .get(usize::from(id))
            .is_some_and(|o| o[index & 1].receiver_count() > 0)
    }

    /// Tells the process on address `index` of worker `id` that it is retiring:
    /// `{"type":"drain"}`. False when it is not connected to the bus.
    pub fn drain(&self, id: WorkerId, index: usize) -> bool {
        self.to_process(id, index, json!({"type": "drain"}).to_string())
    }

    /// Sends `data` to worker `to` (from the supervisor when `from` is `None`).
    pub fn send(&self, to: WorkerId, from: Option<WorkerId>, data: &Value) {
        let line = json!({"type": "message", "from": from, "data": data}).to_string();
        self.to_slot(usize::from(to), &Arc::from(line));
    }

    /// Sends `data` to every worker except `from`.
    pub fn broadcast(&self, from: Option<WorkerId>, data: &Value) {
        let line: Arc<str> =
            Arc::from(json!({"type": "message", "from": from, "data": data}).to_string());
        for id in 0..self.outboxes.len() {
            if from != Some(id as WorkerId) {
                self.to_slot(id, &line);
            }
        }
    }
}

impl Bus {
    /// Tells every worker except `id` that worker `id` went down or came up.
    pub fn announce(&self, id: WorkerId, up: bool) {
        let state = if up { "up" } else { "down" };
        let line: Arc<str> = Arc::from(format!(
            "{WORKER_NOTICE}\"id\":{id},\"state\":\"{state}\"}}"
        ));
        for other in 0..self.outboxes.len() {
            if other != usize::from(id) {
                self.to_slot(other, &line);
            }
        }
    }
}

/// Announces on the bus every change of a spawned worker between up and down (exited) until
/// `stop`; a worker that is only draining or failing health checks still runs and is not
/// announced.
pub async fn announce_workers(bus: Arc<Bus>, workers: Arc<WorkerSet>, stop: CancellationToken) {
    let spawned = bus.outboxes.len();
    let state = |id: usize| workers.state(id as WorkerId);
    let mut up: Vec<bool> = (0..spawned)
        .map(|id| state(id) == WorkerState::Up)
        .collect();
    loop {
        let changed = workers.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        for (id, was_up) in up.iter_mut().enumerate() {
            let now = state(id);
            if !*was_up && now == WorkerState::Up {
                *was_up = true;
                bus.announce(id as WorkerId, true);
            } else if *was_up && now == WorkerState::Down {
                *was_up = false;
                bus.announce(id as WorkerId, false);
            }
        }
        tokio::select! {
            () = &mut changed => {}
            () = stop.cancelled() => return,
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn private_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let mut raw = [0u8; 6];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
        .map_err(|_| std::io::Error::other("no randomness"))?;
    let tag: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let dir = base.join(format!("sticky-cluster-{}-{tag}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

async fn accept_loop(
    from: Sender,
    listener: UnixListener,
    bus: Arc<Bus>,
    router: Arc<Router>,
    inbox: mpsc::UnboundedSender<Incoming>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(worker = from.id, error = %e, "bus accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let outbox = bus.outboxes[usize::from(from.id)][from.index].subscribe();
        tokio::spawn(serve_worker(
            from,
            stream,
            outbox,
            bus.clone(),
            router.clone(),
            inbox.clone(),
            stop.clone(),
        ));
    }
}

async fn serve_worker(
    from: Sender,
    stream: UnixStream,
    mut outbox: broadcast::Receiver<Arc<str>>,
    bus: Arc<Bus>,
    router: Arc<Router>,
    inbox: mpsc::UnboundedSender<Incoming>,
    stop: CancellationToken,
) {
    let id = from.id;
    let (read, mut write) = stream.into_split();
    let watch = Arc::new(AtomicBool::new(false));
    let watching = watch.clone();
    let writer = tokio::spawn(async move {
        loop {
            match outbox.recv().await {
                Ok(line)
                    if line.starts_with(WORKER_NOTICE) && !watching.load(Ordering::Relaxed) => {}
                Ok(line) => {
                    if write.write_all(line.as_bytes()).await.is_err()
                        || write.write_all(b"\n").await.is_err()
                    {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        worker = id,
                        dropped = n,
                        "worker reads its bus too slowly; messages dropped"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let mut reader = BufReader::new(read);
    let mut line = Vec::with_capacity(256);
    let mut garbage = 0u32;
    let mut bucket = TokenBucket::new(RATE_PER_SEC);
    loop {
        line.clear();
        let n = tokio::select! {
            n = read_line_limited(&mut reader, &mut line) => n,
            _ = stop.cancelled() => break,
        };
        match n {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(worker = id, error = %e, "worker disconnected from the bus");
                break;
            }
        }
        if let Some(wait) = bucket.take() {
            tracing::debug!(worker = id, "bus flood; throttling");
            tokio::time::sleep(wait).await;
        }
        match handle_line(from, &line, &bus, &router, &inbox, &watch) {
            Ok(()) => garbage = 0,
            Err(why) => {
                garbage += 1;
                tracing::debug!(worker = id, why, "bad bus line");
                if garbage >= MAX_GARBAGE {
                    tracing::warn!(
                        worker = id,
                        "worker sent only garbage on the bus; disconnected"
                    );
                    break;
                }
            }
        }
    }
    writer.abort();
}

/// Reads one line; errors out (disconnecting the worker) past [`MAX_LINE`].
async fn read_line_limited(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    line: &mut Vec<u8>,
) -> std::io::Result<usize> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(line.len());
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if line.len() + take > MAX_LINE {
            return Err(std::io::Error::other(format!(
                "line longer than {MAX_LINE} bytes"
            )));
        }
        line.extend_from_slice(&available[..take]);
        reader.consume(take);
        if done {
            return Ok(line.len());
        }
    }
}

fn handle_line(
    from: Sender,
    line: &[u8],
    bus: &Bus,
    router: &Router,
    inbox: &mpsc::UnboundedSender<Incoming>,
    watch: &AtomicBool,
) -> Result<(), &'static str> {
    let trimmed = line.trim_ascii();
    if trimmed.is_empty() {
        return Ok(());
    }
    let msg: Value = serde_json::from_slice(trimmed).map_err(|_| "not JSON")?;
    let kind = msg.get("type").and_then(Value::as_str).ok_or("no type")?;
    let data = msg.get("data").cloned().unwrap_or(Value::Null);
    let id = from.id;
    match kind {
        "message" => {
            tracing::debug!(worker = id, %data, "message from worker");
            let _ = inbox.send(Incoming { worker: id, data });
        }
        "broadcast" => bus.broadcast(Some(id), &data),
        "send" => {
            let to = msg
                .get("to")
                .and_then(Value::as_u64)
                .and_then(|t| WorkerId::try_from(t).ok())
                .ok_or("send needs a numeric \"to\"")?;
            bus.send(to, Some(id), &data);
        }
        "bind" | "unbind" => {
            let key = msg
                .get("key")
                .and_then(Value::as_str)
                .filter(|k| !k.is_empty())
                .ok_or("bind/unbind need a \"key\" string")?;
            if kind == "bind" {
                router.learn_key(
                    key.as_bytes(),
                    bus.pin_of(from),
                    router.table().now(),
                    crate::metrics::Learned::Bus,
                );
            } else {
                router.forget_key(key.as_bytes());
            }
            tracing::debug!(worker = id, kind, "session key {kind}");
        }
        "watch" => watch.store(true, Ordering::Relaxed),
        "handoff" | "handoff-end" | "adopt" => {
            return handoff::handle(from, kind, &msg, bus, router)
        }
        _ => return Err("unknown type"),
    }
    Ok(())
}

impl Bus {
    /// Where a key bound by the process behind `from` is pinned.
    fn pin_of(&self, from: Sender) -> Pin {
        Pin {
            worker: from.id,
            generation: self.workers.generation_at(from.id, from.index),
        }
    }
}

/// Session hand-off between the retiring process of a slot and its replacement.
mod handoff {
    use super::{json, Bus, Router, Sender, Value};

    /// Handles `handoff`, `handoff-end` (from the retiring process) and `adopt` (from the
    /// process on the active address).
    pub(super) fn handle(
        from: Sender,
        kind: &str,
        msg: &Value,
        bus: &Bus,
        router: &Router,
    ) -> Result<(), &'static str> {
        let id = from.id;
        let retiring = bus.workers.retiring(id).map(|r| r.index);
        let key = || {
            msg.get("key")
                .and_then(Value::as_str)
                .filter(|k| !k.is_empty())
                .ok_or("handoff/adopt need a \"key\" string")
        };
        match kind {
            "handoff" if retiring == Some(from.index) => {
                let key = key()?;
                let data = msg.get("data").cloned().unwrap_or(Value::Null);
                let line = json!({"type": "handoff", "key": key, "data": data, "from": id});
                if bus.to_process(id, 1 - from.index, line.to_string()) {
                    bus.workers.count_handoff(id);
                } else {
                    tracing::warn!(
                        worker = id,
                        "hand-off dropped: the replacement is not on the bus"
                    );
                }
            }
            "handoff-end" if retiring == Some(from.index) => {
                bus.workers.set_handed_off(id);
                tracing::info!(worker = id, "retiring worker handed off its sessions");
            }
            "adopt" if retiring.is_some_and(|r| r != from.index) => {
                let key = key()?;
                let now = router.table().now();
                router.learn_key(
                    key.as_bytes(),
                    bus.pin_of(from),
                    now,
                    crate::metrics::Learned::Bus,
                );
                bus.workers.count_adopt(id);
                let line = json!({"type": "adopted", "key": key});
                bus.to_process(id, 1 - from.index, line.to_string());
            }
            _ => return Err("hand-off outside a session drain"),
        }
        Ok(())
    }
}

struct TokenBucket {
    rate: u32,
    tokens: f64,
    last: tokio::time::Instant,
}

impl TokenBucket {
    fn new(rate: u32) -> Self {
        Self {
            rate,
            tokens: f64::from(rate),
            last: tokio::time::Instant::now(),
        }
    }

    /// Takes a token; returns how long to wait when there is none.
    fn take(&mut self) -> Option<Duration> {
        let now = tokio::time::Instant::now();
        let rate = f64::from(self.rate);
        self.tokens = (self.tokens + (now - self.last).as_secs_f64() * rate).min(rate);
        self.last = now;
        self.tokens -= 1.0;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / rate))
    }
}

/// Called in the master for every message a worker sends to the supervisor.
pub type MessageHandler = Arc<dyn Fn(WorkerId, &Value) + Send + Sync>;

/// Pipes every incoming message to `--on-message COMMAND`'s stdin as a JSON line
/// `{"worker":N,"data":...}`, (re)starting the command when it is not running.
pub async fn pipe_to_command(
    command: String,
    mut inbox: mpsc::UnboundedReceiver<Incoming>,
    also: Option<MessageHandler>,
) {
    let mut child: Option<(tokio::process::Child, tokio::process::ChildStdin)> = None;
    while let Some(msg) = inbox.recv().await {
        if let Some(f) = &also {
            f(msg.worker, &msg.data);
        }
        if command.is_empty() {
            continue;
        }
        let line = format!("{}\n", json!({"worker": msg.worker, "data": msg.data}));
        for _attempt in 0..2 {
            if child.is_none() {
                child = spawn_listener(&command);
            }
            let Some((_, stdin)) = child.as_mut() else {
                break;
            };
            if stdin.write_all(line.as_bytes()).await.is_ok() {
                break;
            }
            tracing::warn!(command, "--on-message command is gone; restarting it");
            child = None;
        }
    }
}

fn spawn_listener(command: &str) -> Option<(tokio::process::Child, tokio::process::ChildStdin)> {
    let mut c = tokio::process::Command::new("sh");
    c.arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::piped())
        .kill_on_drop(true);
    match c.spawn() {
        Ok(mut child) => {
            let stdin = child.stdin.take()?;
            Some((child, stdin))
        }
        Err(e) => {
            tracing::warn!(command, error = %e, "cannot start --on-message command");
            None
        }
    }
}

/// A session hand-off line for this worker (see the README's bus section).
#[derive(Debug, Clone, PartialEq)]
pub enum HandoffEvent {
    /// This process is retiring: hand its sessions off.
    Drain,
    /// A session handed off by the retiring process of this slot.
    Handoff {
        /// The session key the proxy pins.
        key: String,
        /// The session, as the retiring process sent it.
        data: Value,
    },
    /// The replacement adopted `key`: this retiring process may forget it.
    Adopted {
        /// The session key.
        key: String,
    },
}

impl HandoffEvent {
    fn parse(msg: &Value) -> Option<Self> {
        let key = || msg.get("key").and_then(Value::as_str).map(str::to_string);
        match msg.get("type").and_then(Value::as_str)? {
            "drain" => Some(Self::Drain),
            "handoff" => Some(Self::Handoff {
                key: key()?,
                data: msg.get("data").cloned().unwrap_or(Value::Null),
            }),
            "adopted" => Some(Self::Adopted { key: key()? }),
            _ => None,
        }
    }
}

type Shared<T> = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<T>>>;

/// A worker's end of the bus (library mode).
#[derive(Debug, Clone)]
pub struct WorkerBus {
    out: mpsc::UnboundedSender<String>,
    incoming: Shared<Incoming>,
    handoffs: Shared<HandoffEvent>,
}

impl WorkerBus {
    /// Connects to the socket in `path`.
    ///
    /// # Errors
    /// When the socket cannot be reached.
    pub async fn connect(path: &Path) -> std::io::Result<Self> {
        let stream = UnixStream::connect(path).await?;
        let (read, mut write) = stream.into_split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(line) = out_rx.recv().await {
                if write.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let (handoff_tx, handoff_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(msg) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if let Some(event) = HandoffEvent::parse(&msg) {
                    let _ = handoff_tx.send(event);
                    continue;
                }
                if msg.get("type").and_then(Value::as_str) != Some("message") {
                    continue;
                }
                let from = msg
                    .get("from")
                    .and_then(Value::as_u64)
                    .and_then(|f| WorkerId::try_from(f).ok());
                let data = msg.get("data").cloned().unwrap_or(Value::Null);
                // `from` is None for the supervisor; u16::MAX stands for it.
                let worker = from.unwrap_or(WorkerId::MAX);
                if in_tx.send(Incoming { worker, data }).is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            out,
            incoming: Arc::new(tokio::sync::Mutex::new(in_rx)),
            handoffs: Arc::new(tokio::sync::Mutex::new(handoff_rx)),
        })
    }

    fn push(&self, msg: Value) {
        let _ = self.out.send(format!("{msg}\n"));
    }

    /// Sends `data` to the supervisor.
    pub fn send(&self, data: Value) {
        self.push(json!({"type": "message", "data": data}));
    }

    /// Sends `data` to every other worker.
    pub fn broadcast(&self, data: Value) {
        self.push(json!({"type": "broadcast", "data": data}));
    }

    /// Sends `data` to worker `to`.
    pub fn send_to(&self, to: WorkerId, data: Value) {
        self.push(json!({"type": "send", "to": to, "data": data}));
    }

    /// Pins session key `key` to this worker.
    pub fn bind(&self, key: &str) {
        self.push(json!({"type": "bind", "key": key}));
    }

    /// Forgets session key `key`.
    pub fn unbind(&self, key: &str) {
        self.push(json!({"type": "unbind", "key": key}));
    }

    /// Session hand-off, retiring side: hands session `key` and its `data` over.
    pub fn handoff(&self, key: &str, data: Value) {
        self.push(json!({"type": "handoff", "key": key, "data": data}));
    }

    /// Session hand-off, retiring side: every session was handed off.
    pub fn handoff_end(&self) {
        self.push(json!({"type": "handoff-end"}));
    }

    /// Session hand-off, replacement side: session `key` is stored here now; re-pin it.
    pub fn adopt(&self, key: &str) {
        self.push(json!({"type": "adopt", "key": key}));
    }

    /// The next session hand-off line for this worker; `None` once the bus closed.
    pub async fn recv_handoff(&self) -> Option<HandoffEvent> {
        self.handoffs.lock().await.recv().await
    }

    /// The next message from another worker or the supervisor; `None` once the bus closed.
    pub async fn recv(&self) -> Option<Incoming> {
        self.incoming.lock().await.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_throttles_floods() {
        let mut b = TokenBucket::new(10);
        let waits = (0..15).filter_map(|_| b.take()).count();
        assert!(waits >= 4, "past the burst, takes must wait ({waits})");
    }
}
