//! The shared picture of the worker slots: the supervisor writes each slot's process state,
//! health checks write its health, and the proxy reads both on every request without a lock.
//!
//! A slot is a fixed index (the worker's `WORKER_ID`). A spawned worker's slot has two
//! addresses, its port and a spare: a rolling restart starts the replacement on the other
//! one and flips `active`, so the old process can drain while the new one already serves.
//! The port of each address is an atomic: the supervisor may move an address that is not
//! active to another free port (when its own was taken), and readers need no lock.
//!
//! Discovered slots (`--upstream-dns`) are reserved at start, vacant: discovery occupies
//! one with an address its DNS answer lists and vacates it when the address leaves the
//! answer; a later address may reuse the slot under a new generation.

mod ip;

use ip::AtomicIp;

use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Index of a worker slot, `0..slots`. For spawned workers it is also the `WORKER_ID`.
pub type WorkerId = u16;

/// Life cycle of one worker slot's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum WorkerState {
    /// Spawned, not yet accepting connections.
    Starting = 0,
    /// Accepting connections: the only state the router picks (when also healthy).
    Up = 1,
    /// Finishing in-flight work before a planned stop; takes no new requests.
    Draining = 2,
    /// Exited.
    Down = 3,
}

impl WorkerState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Starting,
            1 => Self::Up,
            2 => Self::Draining,
            _ => Self::Down,
        }
    }
}

/// What serves a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// A process this supervisor starts.
    Spawned,
    /// An address someone else runs (`--upstream`).
    Upstream,
    /// An address a DNS name lists (`--upstream-dns`); vacant while it lists none here.
    Discovered,
}

/// One slot.
#[derive(Debug)]
pub struct Slot {
    kind: SlotKind,
    /// The IP of both addresses (loopback for spawned workers); only a vacant discovered
    /// slot's changes.
    ip: AtomicIp,
    /// A discovered slot no address occupies.
    vacant: AtomicBool,
    /// The port of each address; only the supervisor changes one, and only while it is not
    /// active.
    ports: [AtomicU16; 2],
    active: AtomicU8,
    state: AtomicU8,
    healthy: AtomicBool,
    pid: AtomicU32,
    restarts: AtomicU32,
    /// Rolling-restart replacements.
    replacements: AtomicU32,
    /// Unix time (seconds) the current process was recorded; 0: none yet.
    started_at: AtomicU64,
    /// How the last process of this slot exited ("exit code 1", "signal 9 (SIGKILL)").
    last_exit: Mutex<Option<String>>,
    /// Drained by an operator: no new sessions; its pinned sessions stay.
    drained: AtomicBool,
    /// Requests and tunnels in flight, per address.
    in_flight: [AtomicUsize; 2],
    /// Cancelled to close the tunnels of one address at the end of a drain.
    tunnels: Mutex<[CancellationToken; 2]>,
    /// Process generation on each address (wrapping): a replacement runs the next one.
    generations: [AtomicU8; 2],
    /// The old process of a rolling restart, still serving the sessions pinned to it
    /// (`--drain-sessions`, hand-off) on the address that is not active.
    retiring: Retiring,
}

/// The retiring (old) process of a slot during a session drain. Not the operator's
/// `drained` flag, which keeps a running worker from getting new sessions.
#[derive(Debug, Default)]
struct Retiring {
    on: AtomicBool,
    pid: AtomicU32,
    /// Milliseconds since the set's epoch of the last request or tunnel on its address.
    active_ms: AtomicU64,
    /// Sessions handed off to the replacement and not yet adopted.
    unadopted: AtomicU32,
    /// Sessions adopted by the replacement.
    adopted: AtomicU32,
    /// The old process said it handed off everything (`handoff-end`).
    handed_off: AtomicBool,
}

/// A slot's retiring process, as the admin and the supervisor see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetiringView {
    /// Its address index.
    pub index: usize,
    /// Its generation.
    pub generation: u8,
    /// Its pid (0: unknown).
    pub pid: u32,
    /// Sessions handed off and not yet adopted.
    pub unadopted: u32,
    /// Sessions adopted by the replacement.
    pub adopted: u32,
    /// It said it handed off everything.
    pub handed_off: bool,
}

/// All worker slots. The set of slots is fixed for the life of the cluster; only their
/// states change.
#[derive(Debug)]
pub struct WorkerSet {
    slots: Box<[Slot]>,
    next: AtomicUsize,
    changed: Notify,
    epoch: std::time::Instant,
}

impl WorkerSet {
    /// Slots for spawned workers (each with its address and spare, on one IP: the spare's
    /// IP is not used), then upstreams.
    pub fn new(
        spawned: impl IntoIterator<Item = (SocketAddr, SocketAddr)>,
        upstreams: impl IntoIterator<Item = SocketAddr>,
    ) -> Self {
        let slots = spawned
            .into_iter()
            .map(|(a, b)| Slot::new(SlotKind::Spawned, [a, b], WorkerState::Starting))
            // Upstreams are assumed up until a health check says otherwise, as in nginx.
            .chain(
                upstreams
                    .into_iter()
                    .map(|a| Slot::new(SlotKind::Upstream, [a, a], WorkerState::Up)),
            )
            .collect();
        Self {
            slots,
            next: AtomicUsize::new(0),
            changed: Notify::new(),
            epoch: std::time::Instant::now(),
        }
    }

    /// The set with `n` vacant discovered slots added after the others.
    pub fn with_discovered(self, n: usize) -> Self {
        let unset = SocketAddr::from(([0, 0, 0, 0], 0));
        let vacant = (0..n).map(|_| {
            let s = Slot::new(SlotKind::Discovered, [unset, unset], WorkerState::Down);
            s.vacant.store(true, Ordering::Relaxed);
            s
        });
        let slots: Vec<Slot> = self.slots.into_vec().into_iter().chain(vacant).collect();
        Self {
            slots: slots.into_boxed_slice(),
            ..self
        }
    }

    fn slot(&self, id: WorkerId) -> Option<&Slot> {
        self.slots.get(usize::from(id))
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when there are no slots.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Spawned or upstream.
    pub fn kind(&self, id: WorkerId) -> Option<SlotKind> {
        self.slot(id).map(|s| s.kind)
    }

    /// The address new requests for a worker go to, and its index (0 or 1).
    pub fn active(&self, id: WorkerId) -> Option<(usize, SocketAddr)> {
        self.slot(id).map(|s| {
            let i = usize::from(s.active.load(Ordering::Acquire) & 1);
            (i, s.addr(i))
        })
    }

    /// Address of a worker for new requests; `None` for an id that is not a slot.
    pub fn addr(&self, id: WorkerId) -> Option<SocketAddr> {
        self.active(id).map(|(_, a)| a)
    }

    /// Both addresses of a slot as they are now (equal for upstreams).
    pub fn addrs(&self, id: WorkerId) -> Option<[SocketAddr; 2]> {
        self.slot(id).map(|s| [s.addr(0), s.addr(1)])
    }

    /// Moves address `index` of `id` to `port` (the supervisor does, before it starts a
    /// process there). Never the active address: requests in flight keep their target.
    pub fn set_port(&self, id: WorkerId, index: usize, port: u16) {
        if let Some(s) = self.slot(id) {
            debug_assert_ne!(usize::from(s.active.load(Ordering::Acquire) & 1), index & 1);
            s.ports[index & 1].store(port, Ordering::Release);
        }
    }

    /// Points new requests for `id` at its address `index`.
    pub fn set_active(&self, id: WorkerId, index: usize) {
        if let Some(s) = self.slot(id) {
            s.active.store((index & 1) as u8, Ordering::Release);
            self.changed.notify_waiters();
        }
    }

    /// Current process state; an unknown id reads as `Down`.
    pub fn state(&self, id: WorkerId) -> WorkerState {
        self.slot(id).map_or(WorkerState::Down, |s| {
            WorkerState::from_u8(s.state.load(Ordering::Acquire))
        })
    }

    /// True when the worker takes new requests: up and healthy.
    pub fn is_up(&self, id: WorkerId) -> bool {
        self.slot(id).is_some_and(|s| {
            s.state.load(Ordering::Acquire) == WorkerState::Up as u8
                && s.healthy.load(Ordering::Acquire)
        })
    }

    /// Sets a worker's process state (a new `Up` process starts healthy) and wakes whoever
    /// waits for a change.
    pub fn set_state(&self, id: WorkerId, state: WorkerState) {
        if let Some(slot) = self.slot(id) {
            if state == WorkerState::Up {
                slot.healthy.store(true, Ordering::Release);
            }
            slot.state.store(state as u8, Ordering::Release);
            self.changed.notify_waiters();
        }
    }

    /// Marks a worker healthy or not; returns the previous value.
    pub fn set_healthy(&self, id: WorkerId, healthy: bool) -> bool {
        let Some(slot) = self.slot(id) else {
            return false;
        };
        let before = slot.healthy.swap(healthy, Ordering::AcqRel);
        if before != healthy {
            self.changed.notify_waiters();
        }
        before
    }

    /// The health flag alone.
    pub fn is_healthy(&self, id: WorkerId) -> bool {
        self.slot(id)
            .is_some_and(|s| s.healthy.load(Ordering::Acquire))
    }

    /// Records the pid of the process now serving a slot (0: none), and when it started.
    pub fn set_pid(&self, id: WorkerId, pid: u32) {
        if let Some(slot) = self.slot(id) {
            slot.pid.store(pid, Ordering::Relaxed);
            if pid != 0 {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                slot.started_at.store(now, Ordering::Relaxed);
            }
        }
    }

    /// Unix time (seconds) the slot's current process was recorded, if any.
    pub fn started_at(&self, id: WorkerId) -> Option<u64> {
        self.slot(id)
            .map(|s| s.started_at.load(Ordering::Relaxed))
            .filter(|&t| t != 0)
    }

    /// Records how a slot's process exited.
    pub fn set_last_exit(&self, id: WorkerId, how: String) {
        if let Some(slot) = self.slot(id) {
            *slot.last_exit.lock().unwrap_or_else(|e| e.into_inner()) = Some(how);
        }
    }

    /// How the slot's last process exited, if one did.
    pub fn last_exit(&self, id: WorkerId) -> Option<String> {
        self.slot(id).and_then(|s| {
            s.last_exit
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        })
    }

    /// Counts one rolling-restart replacement of a slot.
    pub fn count_replacement(&self, id: WorkerId) {
        if let Some(s) = self.slot(id) {
            s.replacements.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Rolling-restart replacements of a slot.
    pub fn replacements(&self, id: WorkerId) -> u32 {
        self.slot(id)
            .map_or(0, |s| s.replacements.load(Ordering::Relaxed))
    }

    /// Restarts after a crash so far.
    pub fn restarts(&self, id: WorkerId) -> u32 {
        self.slot(id)
            .map_or(0, |s| s.restarts.load(Ordering::Relaxed))
    }

    /// Drains a slot (no new sessions go to it; its pinned ones stay) or undrains it; false
    /// for an id that is not a slot.
    pub fn set_drained(&self, id: WorkerId, drained: bool) -> bool {
        let Some(s) = self.slot(id) else {
            return false;
        };
        s.drained.store(drained, Ordering::Relaxed);
        self.changed.notify_waiters();
        true
    }

    /// True when an operator drained the slot.
    pub fn is_drained(&self, id: WorkerId) -> bool {
        self.slot(id)
            .is_some_and(|s| s.drained.load(Ordering::Relaxed))
    }

    /// Requests and tunnels in flight on both addresses of a slot.
    pub fn in_flight_total(&self, id: WorkerId) -> usize {
        self.in_flight(id, 0) + self.in_flight(id, 1)
    }

    /// Pid of the process serving a slot, if any.
    pub fn pid(&self, id: WorkerId) -> Option<u32> {
        self.slot(id)
            .map(|s| s.pid.load(Ordering::Relaxed))
            .filter(|&p| p != 0)
    }

    /// Counts one more restart of a slot and returns the new count.
    pub fn count_restart(&self, id: WorkerId) -> u32 {
        self.slot(id)
            .map_or(0, |s| s.restarts.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// The worker's stable name, the same on every proxy that reaches it: an upstream is
    /// named by its address (`ip:port`), a spawned worker by its slot (`worker-N`). The
    /// shared table and the affinity cookie name workers by it, never by slot index alone.
    pub fn name(&self, id: WorkerId) -> Option<String> {
        let s = self.slot(id)?;
        match s.kind {
            SlotKind::Upstream => Some(s.addr(0).to_string()),
            SlotKind::Discovered if s.vacant.load(Ordering::Acquire) => None,
            SlotKind::Discovered => Some(s.addr(0).to_string()),
            SlotKind::Spawned => Some(format!("worker-{id}")),
        }
    }

    /// What the affinity cookie's token of a worker is made from: an upstream's
    /// [`name`](Self::name) (its address, so proxies listing their upstreams in any order
    /// agree); a spawned worker's slot index, as before names existed (its cookies survive
    /// an upgrade).
    pub fn affinity_label(&self, id: WorkerId) -> Option<String> {
        match self.kind(id)? {
            SlotKind::Upstream | SlotKind::Discovered => self.name(id),
            SlotKind::Spawned => Some(id.to_string()),
        }
    }

    /// The slot whose [`name`](Self::name) is `name`, if any.
    pub fn by_name(&self, name: &str) -> Option<WorkerId> {
        self.ids()
            .find(|&id| self.name(id).as_deref() == Some(name))
    }

    /// True for a discovered slot no address occupies (it serves nothing and is shown
    /// nowhere).
    pub fn is_vacant(&self, id: WorkerId) -> bool {
        self.slot(id)
            .is_some_and(|s| s.vacant.load(Ordering::Acquire))
    }

    /// Ids of the slots that hold a worker: all but the vacant discovered ones (what the
    /// admin listener shows).
    pub fn worker_ids(&self) -> impl Iterator<Item = WorkerId> + '_ {
        self.ids().filter(|&id| !self.is_vacant(id))
    }

    /// Ids of the discovered slots, vacant or not.
    pub fn discovered(&self) -> impl Iterator<Item = WorkerId> + '_ {
        self.ids()
            .filter(|&id| self.kind(id) == Some(SlotKind::Discovered))
    }

    /// Puts `addr` in the vacant discovered slot `id` and takes it into rotation (up and
    /// healthy until a health check says otherwise). An address other than the slot's
    /// last one starts a new generation, so what was pinned to the last one is not
    /// handed to this one. Discovery is the one caller.
    pub fn occupy(&self, id: WorkerId, addr: SocketAddr) {
        let Some(s) = self.slot(id).filter(|s| s.kind == SlotKind::Discovered) else {
            return;
        };
        if s.addr(0) != addr {
            s.ip.store(addr.ip());
            for i in 0..2 {
                s.ports[i].store(addr.port(), Ordering::Release);
                s.generations[i].fetch_add(1, Ordering::AcqRel);
            }
        }
        s.vacant.store(false, Ordering::Release);
        self.set_state(id, WorkerState::Up);
    }

    /// Takes the discovered slot `id` out of rotation for good: requests in flight
    /// finish, new ones go elsewhere, and its sessions move as from a worker that is down.
    pub fn vacate(&self, id: WorkerId) {
        let Some(s) = self.slot(id).filter(|s| s.kind == SlotKind::Discovered) else {
            return;
        };
        s.vacant.store(true, Ordering::Release);
        self.set_state(id, WorkerState::Down);
    }

    /// True unless `id` is a discovered slot that has held another address since a
    /// session was pinned to it under `generation` (that worker is gone).
    #[inline]
    pub fn holds(&self, id: WorkerId, generation: u8) -> bool {
        self.slot(id).is_some_and(|s| {
            s.kind != SlotKind::Discovered || s.generations[0].load(Ordering::Acquire) == generation
        })
    }

    /// Ids of all slots.
    pub fn ids(&self) -> impl Iterator<Item = WorkerId> + '_ {
        (0..self.slots.len()).map(|i| i as WorkerId)
    }

    /// Number of workers that take requests.
    pub fn up_count(&self) -> usize {
        self.ids().filter(|&id| self.is_up(id)).count()
    }

    /// The next worker that takes new sessions, round-robin, passing over drained ones
    /// unless every worker that is up is drained; `None` when none is up.
    pub fn next_up(&self) -> Option<WorkerId> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut drained = None;
        for id in (0..n).map(|i| ((start + i) % n) as WorkerId) {
            if self.is_up(id) {
                if !self.is_drained(id) {
                    return Some(id);
                }
                drained.get_or_insert(id);
            }
        }
        drained
    }

    /// A future that resolves at the next state change of any slot. Create it (and
    /// `enable` it) before checking the state, so no change slips between check and wait.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// The process generation new requests for `id` go to (that of its active address).
    #[inline]
    pub fn generation(&self, id: WorkerId) -> u8 {
        self.slot(id).map_or(0, |s| {
            let active = usize::from(s.active.load(Ordering::Acquire) & 1);
            s.generations[active].load(Ordering::Acquire)
        })
    }

    /// The process generation on address `index` of `id`.
    pub fn generation_at(&self, id: WorkerId, index: usize) -> u8 {
        self.slot(id)
            .map_or(0, |s| s.generations[index & 1].load(Ordering::Acquire))
    }

    /// Records the generation of the process about to start on address `index` of `id`.
    pub fn set_generation(&self, id: WorkerId, index: usize, generation: u8) {
        if let Some(s) = self.slot(id) {
            s.generations[index & 1].store(generation, Ordering::Release);
        }
    }

    /// The address index that serves sessions pinned under `generation` of `id`: the
    /// active one for its generation, the retiring one for the retiring generation while
    /// it serves, `None` for a generation whose process is gone.
    #[inline]
    pub fn index_of(&self, id: WorkerId, generation: u8) -> Option<usize> {
        let s = self.slot(id)?;
        let active = usize::from(s.active.load(Ordering::Acquire) & 1);
        if s.generations[active].load(Ordering::Acquire) == generation {
            return Some(active);
        }
        let old = 1 - active;
        (s.retiring.on.load(Ordering::Acquire)
            && s.generations[old].load(Ordering::Acquire) == generation)
            .then_some(old)
    }

    /// True when the retiring process of `id` serves sessions of `generation`.
    #[inline]
    pub fn retiring_serves(&self, id: WorkerId, generation: u8) -> bool {
        let Some(s) = self.slot(id) else {
            return false;
        };
        // The common case, no session drain: one load.
        if !s.retiring.on.load(Ordering::Acquire) {
            return false;
        }
        let old = 1 - usize::from(s.active.load(Ordering::Acquire) & 1);
        s.generations[old].load(Ordering::Acquire) == generation
            && s.generations[1 - old].load(Ordering::Acquire) != generation
    }

    /// Marks the process on the address that is about to stop being active (or is not
    /// active any more) as retiring: it keeps serving the sessions pinned to its generation.
    pub fn begin_retiring(&self, id: WorkerId, pid: u32) {
        if let Some(s) = self.slot(id) {
            let r = &s.retiring;
            r.pid.store(pid, Ordering::Relaxed);
            r.unadopted.store(0, Ordering::Relaxed);
            r.adopted.store(0, Ordering::Relaxed);
            r.handed_off.store(false, Ordering::Relaxed);
            r.active_ms.store(self.now_ms(), Ordering::Relaxed);
            r.on.store(true, Ordering::Release);
            self.changed.notify_waiters();
        }
    }

    /// The retiring process is gone: its sessions now go to the active process.
    pub fn end_retiring(&self, id: WorkerId) {
        if let Some(s) = self.slot(id) {
            s.retiring.on.store(false, Ordering::Release);
            s.retiring.pid.store(0, Ordering::Relaxed);
            self.changed.notify_waiters();
        }
    }

    /// The retiring process of `id`, if one serves.
    pub fn retiring(&self, id: WorkerId) -> Option<RetiringView> {
        let s = self.slot(id)?;
        let r = &s.retiring;
        if !r.on.load(Ordering::Acquire) {
            return None;
        }
        let index = 1 - usize::from(s.active.load(Ordering::Acquire) & 1);
        Some(RetiringView {
            index,
            generation: s.generations[index].load(Ordering::Acquire),
            pid: r.pid.load(Ordering::Relaxed),
            unadopted: r.unadopted.load(Ordering::Relaxed),
            adopted: r.adopted.load(Ordering::Relaxed),
            handed_off: r.handed_off.load(Ordering::Relaxed),
        })
    }

    /// How long the retiring process of `id` has had nothing to do (no request or tunnel
    /// in flight, none started or ended since).
    pub fn retiring_idle(&self, id: WorkerId) -> std::time::Duration {
        let Some(s) = self.slot(id) else {
            return std::time::Duration::MAX;
        };
        let index = 1 - usize::from(s.active.load(Ordering::Acquire) & 1);
        if s.in_flight[index].load(Ordering::Acquire) > 0 {
            return std::time::Duration::ZERO;
        }
        let last = s.retiring.active_ms.load(Ordering::Relaxed);
        std::time::Duration::from_millis(self.now_ms().saturating_sub(last))
    }

    /// Counts one session handed off by the retiring process of `id`.
    pub fn count_handoff(&self, id: WorkerId) {
        if let Some(s) = self.slot(id) {
            s.retiring.unadopted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one session adopted by the replacement of `id`.
    pub fn count_adopt(&self, id: WorkerId) {
        if let Some(s) = self.slot(id) {
            let r = &s.retiring;
            let _ = r
                .unadopted
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            r.adopted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The retiring process of `id` handed off all its sessions.
    pub fn set_handed_off(&self, id: WorkerId) {
        if let Some(s) = self.slot(id) {
            s.retiring.handed_off.store(true, Ordering::Relaxed);
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Records activity on address `index` of `id` when a retiring process serves there.
    #[inline]
    fn note_activity(&self, s: &Slot, index: usize) {
        if s.retiring.on.load(Ordering::Relaxed)
            && usize::from(s.active.load(Ordering::Relaxed) & 1) != index & 1
        {
            s.retiring.active_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// Requests and tunnels in flight on address `index` of `id`.
    pub fn in_flight(&self, id: WorkerId, index: usize) -> usize {
        self.slot(id)
            .map_or(0, |s| s.in_flight[index & 1].load(Ordering::Acquire))
    }

    /// The token that closes the tunnels on address `index` of `id`.
    pub fn tunnel_token(&self, id: WorkerId, index: usize) -> CancellationToken {
        self.slot(id).map_or_else(CancellationToken::new, |s| {
            s.tunnels.lock().unwrap_or_else(|e| e.into_inner())[index & 1].clone()
        })
    }

    /// Closes the tunnels on address `index` of `id` (each after its own jitter) and arms a
    /// fresh token for the next process on that address.
    pub fn close_tunnels(&self, id: WorkerId, index: usize) {
        if let Some(s) = self.slot(id) {
            let mut tokens = s.tunnels.lock().unwrap_or_else(|e| e.into_inner());
            let old = std::mem::replace(&mut tokens[index & 1], CancellationToken::new());
            old.cancel();
        }
    }
}

impl Slot {
    fn new(kind: SlotKind, [a, b]: [SocketAddr; 2], state: WorkerState) -> Self {
        Self {
            kind,
            ip: AtomicIp::new(a.ip()),
            vacant: AtomicBool::new(false),
            ports: [AtomicU16::new(a.port()), AtomicU16::new(b.port())],
            active: AtomicU8::new(0),
            state: AtomicU8::new(state as u8),
            healthy: AtomicBool::new(true),
            pid: AtomicU32::new(0),
            restarts: AtomicU32::new(0),
            replacements: AtomicU32::new(0),
            started_at: AtomicU64::new(0),
            last_exit: Mutex::new(None),
            drained: AtomicBool::new(false),
            in_flight: [AtomicUsize::new(0), AtomicUsize::new(0)],
            tunnels: Mutex::new([CancellationToken::new(), CancellationToken::new()]),
            generations: [AtomicU8::new(0), AtomicU8::new(0)],
            retiring: Retiring::default(),
        }
    }

    fn addr(&self, index: usize) -> SocketAddr {
        SocketAddr::new(
            self.ip.load(),
            self.ports[index & 1].load(Ordering::Acquire),
        )
    }
}

/// Counts one request (or tunnel) in flight on a worker address until dropped.
#[derive(Debug)]
pub struct InFlight {
    workers: Arc<WorkerSet>,
    id: WorkerId,
    index: usize,
}

impl InFlight {
    /// Starts counting on address `index` of `id`.
    pub fn new(workers: Arc<WorkerSet>, id: WorkerId, index: usize) -> Self {
        if let Some(s) = workers.slot(id) {
            s.in_flight[index & 1].fetch_add(1, Ordering::AcqRel);
            workers.note_activity(s, index);
        }
        Self { workers, id, index }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(s) = self.workers.slot(self.id) {
            s.in_flight[self.index & 1].fetch_sub(1, Ordering::AcqRel);
            self.workers.note_activity(s, self.index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: u16) -> WorkerSet {
        WorkerSet::new(
            (0..n).map(|i| {
                (
                    SocketAddr::from(([127, 0, 0, 1], 9000 + i)),
                    SocketAddr::from(([127, 0, 0, 1], 9100 + i)),
                )
            }),
            [],
        )
    }

    #[test]
    fn names_are_addresses_for_upstreams_and_slots_for_spawned_workers() {
        let up = SocketAddr::from(([127, 0, 0, 1], 7001));
        let w = WorkerSet::new(
            [(
                SocketAddr::from(([127, 0, 0, 1], 9000)),
                SocketAddr::from(([127, 0, 0, 1], 9100)),
            )],
            [up],
        );
        assert_eq!(w.name(0).as_deref(), Some("worker-0"));
        assert_eq!(w.name(1).as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(w.by_name("127.0.0.1:7001"), Some(1));
        assert_eq!(w.by_name("worker-0"), Some(0));
        assert_eq!(w.by_name("127.0.0.1:7002"), None);
    }

    #[test]
    fn round_robin_skips_workers_that_are_not_up_or_unhealthy() {
        let w = set(4);
        assert_eq!(w.next_up(), None, "nothing is up yet");
        for id in w.ids().collect::<Vec<_>>() {
            w.set_state(id, WorkerState::Up);
        }
        w.set_state(1, WorkerState::Down);
        w.set_healthy(3, false);
        let picks: Vec<_> = (0..8).filter_map(|_| w.next_up()).collect();
        assert!(picks.iter().all(|&p| p == 0 || p == 2), "{picks:?}");
        assert!(picks.contains(&0) && picks.contains(&2), "{picks:?}");
        w.set_state(3, WorkerState::Up);
        assert!(w.is_up(3), "a new Up process starts healthy");
    }

    #[test]
    fn active_address_flips_and_in_flight_counts() {
        let w = Arc::new(set(1));
        assert_eq!(w.addr(0).map(|a| a.port()), Some(9000));
        w.set_active(0, 1);
        assert_eq!(w.active(0).map(|(i, a)| (i, a.port())), Some((1, 9100)));
        let guard = InFlight::new(w.clone(), 0, 1);
        assert_eq!(w.in_flight(0, 1), 1);
        drop(guard);
        assert_eq!(w.in_flight(0, 1), 0);
        let t = w.tunnel_token(0, 1);
        w.close_tunnels(0, 1);
        assert!(t.is_cancelled());
        assert!(
            !w.tunnel_token(0, 1).is_cancelled(),
            "fresh token for the next process"
        );
    }

    #[test]
    fn a_spare_moves_to_another_port() {
        let w = set(1);
        w.set_port(0, 1, 41000);
        assert_eq!(w.addrs(0).map(|a| a.map(|a| a.port())), Some([9000, 41000]));
        w.set_active(0, 1);
        assert_eq!(w.addr(0).map(|a| a.port()), Some(41000));
    }

    #[test]
    fn drained_workers_get_no_new_sessions_unless_all_are_drained() {
        let w = set(3);
        for id in 0..3 {
            w.set_state(id, WorkerState::Up);
        }
        assert!(w.set_drained(1, true));
        let picks: Vec<_> = (0..6).filter_map(|_| w.next_up()).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        w.set_drained(0, true);
        w.set_drained(2, true);
        assert!(w.next_up().is_some(), "all drained: still served");
        w.set_drained(1, false);
        assert_eq!(w.next_up(), Some(1));
        assert!(!w.set_drained(7, true), "no such slot");
    }

    #[test]
    fn a_retiring_generation_keeps_its_address_until_it_ends() {
        let w = Arc::new(set(1));
        w.set_state(0, WorkerState::Up);
        w.set_generation(0, 1, 1);
        w.set_active(0, 1);
        assert_eq!(w.index_of(0, 1), Some(1), "new generation: active address");
        assert_eq!(w.index_of(0, 0), None, "old generation not retiring: gone");
        w.begin_retiring(0, 42);
        assert_eq!(w.index_of(0, 0), Some(0), "old generation: old address");
        assert!(w.retiring_serves(0, 0) && !w.retiring_serves(0, 1));
        let busy = InFlight::new(w.clone(), 0, 0);
        assert_eq!(w.retiring_idle(0), std::time::Duration::ZERO);
        drop(busy);
        w.count_handoff(0);
        w.count_handoff(0);
        w.count_adopt(0);
        let view = w
            .retiring(0)
            .map(|r| (r.index, r.pid, r.unadopted, r.adopted));
        assert_eq!(view, Some((0, 42, 1, 1)));
        w.end_retiring(0);
        assert_eq!(w.index_of(0, 0), None);
        assert_eq!(w.retiring(0), None);
    }

    #[test]
    fn upstreams_start_up() {
        let w = WorkerSet::new([], [SocketAddr::from(([127, 0, 0, 1], 1))]);
        assert!(w.is_up(0));
        assert_eq!(w.kind(0), Some(SlotKind::Upstream));
    }

    #[test]
    fn a_discovered_slot_is_vacant_until_occupied_and_a_new_address_is_a_new_generation() {
        let w = WorkerSet::new([], [SocketAddr::from(([127, 0, 0, 1], 1))]).with_discovered(2);
        assert_eq!(w.discovered().collect::<Vec<_>>(), vec![1, 2]);
        assert!(w.is_vacant(1) && !w.is_up(1) && w.name(1).is_none());
        assert_eq!(w.worker_ids().collect::<Vec<_>>(), vec![0]);

        let a: SocketAddr = "[::1]:3000".parse().unwrap();
        let b: SocketAddr = "10.0.0.7:3000".parse().unwrap();
        w.occupy(1, a);
        assert!(w.is_up(1) && !w.is_vacant(1));
        assert_eq!(w.addr(1), Some(a));
        assert_eq!(w.name(1).as_deref(), Some("[::1]:3000"));
        assert_eq!(w.by_name("[::1]:3000"), Some(1));
        let pinned = w.generation(1);
        assert!(w.holds(1, pinned));

        w.vacate(1);
        assert!(!w.is_up(1) && w.name(1).is_none() && w.by_name("[::1]:3000").is_none());
        w.occupy(1, a);
        assert!(
            w.holds(1, pinned),
            "the same address back is the same worker"
        );

        w.vacate(1);
        w.occupy(1, b);
        assert_eq!(w.addrs(1), Some([b, b]));
        assert!(
            !w.holds(1, pinned),
            "another address in the slot is another worker"
        );
        assert!(w.holds(0, 99), "only discovered slots change hands");
    }
}
