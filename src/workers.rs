//! The shared picture of the worker slots: the supervisor (and health checks) write each
//! slot's state, the proxy reads it on every request without taking a lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Index of a worker slot, `0..workers`. It is also the worker's `WORKER_ID`.
pub type WorkerId = u16;

/// Life cycle of one worker slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum WorkerState {
    /// Spawned, not yet accepting connections.
    Starting = 0,
    /// Accepting connections: the only state the router picks.
    Up = 1,
    /// Finishing in-flight work before a planned stop; takes no new requests.
    Draining = 2,
    /// Exited or unreachable.
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

/// One slot: a fixed address and an atomically updated state.
#[derive(Debug)]
pub struct Slot {
    addr: SocketAddr,
    state: AtomicU8,
    pid: AtomicU32,
    restarts: AtomicU32,
}

/// All worker slots. The set of slots is fixed for the life of the cluster; only their
/// states change.
#[derive(Debug)]
pub struct WorkerSet {
    slots: Box<[Slot]>,
    next: AtomicUsize,
    changed: Notify,
}

impl WorkerSet {
    /// Slots for the given worker addresses, all `Starting`.
    pub fn new(addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        let slots = addrs
            .into_iter()
            .map(|addr| Slot {
                addr,
                state: AtomicU8::new(WorkerState::Starting as u8),
                pid: AtomicU32::new(0),
                restarts: AtomicU32::new(0),
            })
            .collect();
        Self {
            slots,
            next: AtomicUsize::new(0),
            changed: Notify::new(),
        }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when there are no slots.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Address of a worker; `None` for an id that is not a slot.
    pub fn addr(&self, id: WorkerId) -> Option<SocketAddr> {
        self.slots.get(usize::from(id)).map(|s| s.addr)
    }

    /// Current state; an unknown id reads as `Down`.
    pub fn state(&self, id: WorkerId) -> WorkerState {
        self.slots
            .get(usize::from(id))
            .map_or(WorkerState::Down, |s| {
                WorkerState::from_u8(s.state.load(Ordering::Acquire))
            })
    }

    /// True when the worker takes new requests.
    pub fn is_up(&self, id: WorkerId) -> bool {
        self.state(id) == WorkerState::Up
    }

    /// Sets a worker's state and wakes whoever waits for a change.
    pub fn set_state(&self, id: WorkerId, state: WorkerState) {
        if let Some(slot) = self.slots.get(usize::from(id)) {
            slot.state.store(state as u8, Ordering::Release);
            self.changed.notify_waiters();
        }
    }

    /// Records the pid of the process now serving a slot (0: none).
    pub fn set_pid(&self, id: WorkerId, pid: u32) {
        if let Some(slot) = self.slots.get(usize::from(id)) {
            slot.pid.store(pid, Ordering::Relaxed);
        }
    }

    /// Pid of the process serving a slot, if any.
    pub fn pid(&self, id: WorkerId) -> Option<u32> {
        self.slots
            .get(usize::from(id))
            .map(|s| s.pid.load(Ordering::Relaxed))
            .filter(|&p| p != 0)
    }

    /// Counts one more restart of a slot and returns the new count.
    pub fn count_restart(&self, id: WorkerId) -> u32 {
        self.slots
            .get(usize::from(id))
            .map_or(0, |s| s.restarts.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Ids of all slots.
    pub fn ids(&self) -> impl Iterator<Item = WorkerId> + '_ {
        (0..self.slots.len()).map(|i| i as WorkerId)
    }

    /// Number of workers that are `Up`.
    pub fn up_count(&self) -> usize {
        self.ids().filter(|&id| self.is_up(id)).count()
    }

    /// The next `Up` worker in round-robin order, or `None` when none is up.
    pub fn next_up(&self) -> Option<WorkerId> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| ((start + i) % n) as WorkerId)
            .find(|&id| self.is_up(id))
    }

    /// Resolves at the next state change of any slot.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: u16) -> WorkerSet {
        WorkerSet::new((0..n).map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i))))
    }

    #[test]
    fn round_robin_skips_workers_that_are_not_up() {
        let w = set(3);
        assert_eq!(w.next_up(), None, "nothing is up yet");
        for id in w.ids().collect::<Vec<_>>() {
            w.set_state(id, WorkerState::Up);
        }
        w.set_state(1, WorkerState::Down);
        let picks: Vec<_> = (0..6).filter_map(|_| w.next_up()).collect();
        assert!(picks.iter().all(|&p| p != 1), "{picks:?}");
        assert!(picks.contains(&0) && picks.contains(&2), "{picks:?}");
    }
}
