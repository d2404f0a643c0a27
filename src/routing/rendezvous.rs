//! Rendezvous (highest-random-weight) placement of a session key over the workers' stable
//! names: every proxy that sees the same live workers places a key it has never seen on the
//! same worker, without talking to the others. Removing a worker moves only its own keys;
//! adding one takes a fair share of new keys and moves nothing else.
//!
//! The hash is fixed (FNV-1a, then a 64-bit finalizer), never seeded per process, so every
//! proxy and every release computes the same placement.

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::workers::{WorkerId, WorkerSet};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// A stable 64-bit hash of `bytes`, continued from `state`.
fn fnv(state: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(state, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// Mixes the bits of `h` (the murmur3 finalizer), so close inputs score far apart.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The hash of a session key, for [`score`].
pub fn key_hash(key: &[u8]) -> u64 {
    mix(fnv(FNV_OFFSET, key))
}

/// The hash of a worker's name, for [`score`].
pub fn name_hash(name: &str) -> u64 {
    mix(fnv(FNV_OFFSET, name.as_bytes()) ^ 0x9e37_79b9_7f4a_7c15)
}

/// The weight of a key on a worker, from their hashes.
pub fn score(key: u64, name: u64) -> u64 {
    mix(key ^ name)
}

/// The candidate (id, name hash) with the highest score for `key`; ties go to the smaller
/// name hash, so the order of `candidates` never matters.
fn best(key: u64, candidates: impl IntoIterator<Item = (WorkerId, u64)>) -> Option<WorkerId> {
    candidates
        .into_iter()
        .map(|(id, name)| (score(key, name), std::cmp::Reverse(name), id))
        .max()
        .map(|(_, _, id)| id)
}

/// The candidate (id, name) with the highest score for `key`.
pub fn place_among<'a>(
    key: &[u8],
    candidates: impl IntoIterator<Item = (WorkerId, &'a str)>,
) -> Option<WorkerId> {
    let k = key_hash(key);
    best(k, candidates.into_iter().map(|(id, n)| (id, name_hash(n))))
}

/// The name hash of each slot, computed once per pair of addresses (a name only changes
/// with them), so placing a key formats no name.
#[derive(Debug, Default)]
pub struct NameCache {
    slots: Mutex<Vec<Named>>,
}

/// A slot's addresses when its name was hashed, and the hash.
type Named = Option<([SocketAddr; 2], u64)>;

impl NameCache {
    fn hashes(&self, workers: &WorkerSet) -> MutexGuard<'_, Vec<Named>> {
        let mut cache = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        cache.resize(workers.len(), None);
        for id in workers.ids() {
            let Some(addrs) = workers.addrs(id) else {
                continue;
            };
            let slot = &mut cache[usize::from(id)];
            if slot.is_none_or(|(a, _)| a != addrs) {
                *slot = workers.name(id).map(|n| (addrs, name_hash(&n)));
            }
        }
        cache
    }
}

/// The live worker for a key no proxy has pinned yet: among the workers that are up and
/// take new sessions (drained ones only when every worker that is up is drained).
pub fn place(key: &[u8], workers: &WorkerSet, names: &NameCache) -> Option<WorkerId> {
    let k = key_hash(key);
    let cache = names.hashes(workers);
    let up = || {
        workers
            .ids()
            .filter(|&id| workers.is_up(id))
            .filter_map(|id| cache[usize::from(id)].map(|(_, h)| (id, h)))
    };
    best(k, up().filter(|&(id, _)| !workers.is_drained(id))).or_else(|| best(k, up()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:3000")).collect()
    }

    fn place_by_name(key: &[u8], names: &[String]) -> String {
        let id = place_among(
            key,
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (i as WorkerId, n.as_str())),
        )
        .expect("a worker");
        names[usize::from(id)].clone()
    }

    #[test]
    fn placement_is_stable_and_ignores_the_order_of_the_list() {
        let forward = names(5);
        let mut backward = forward.clone();
        backward.reverse();
        for k in 0..500 {
            let key = format!("user-{k}");
            let a = place_by_name(key.as_bytes(), &forward);
            assert_eq!(a, place_by_name(key.as_bytes(), &forward), "stable");
            assert_eq!(a, place_by_name(key.as_bytes(), &backward), "order-free");
        }
    }

    #[test]
    fn the_score_is_fixed_across_processes() {
        // Pinned values: a change here re-places every session of a running fleet.
        assert_eq!(fnv(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        let pinned = score(key_hash(b"alice"), name_hash("10.0.0.1:3000"));
        assert_eq!(pinned, 0xaef3_ab85_8f9d_a1ca, "{pinned:#x}");
    }

    #[test]
    fn removing_a_worker_moves_only_its_keys() {
        let all = names(5);
        let fewer: Vec<String> = all
            .iter()
            .filter(|n| n.as_str() != all[2])
            .cloned()
            .collect();
        let mut moved = 0;
        for k in 0..2000 {
            let key = format!("user-{k}");
            let before = place_by_name(key.as_bytes(), &all);
            let after = place_by_name(key.as_bytes(), &fewer);
            if before == all[2] {
                moved += 1;
            } else {
                assert_eq!(before, after, "{key} moved off a worker that stayed");
            }
        }
        assert!((250..550).contains(&moved), "about a fifth moved: {moved}");
    }

    #[test]
    fn adding_a_worker_takes_keys_only_for_itself() {
        let all = names(5);
        let more: Vec<String> = names(6);
        for k in 0..2000 {
            let key = format!("user-{k}");
            let after = place_by_name(key.as_bytes(), &more);
            if after != more[5] {
                assert_eq!(place_by_name(key.as_bytes(), &all), after);
            }
        }
    }

    #[test]
    fn the_cached_placement_is_the_placement_by_name() {
        use crate::workers::WorkerState;
        let addr = |p: u16| SocketAddr::from(([10, 0, 0, 1], p));
        let workers = WorkerSet::new([], (0..4).map(|i| addr(3000 + i)));
        workers
            .ids()
            .for_each(|id| workers.set_state(id, WorkerState::Up));
        let names: Vec<String> = workers.ids().filter_map(|id| workers.name(id)).collect();
        let cache = NameCache::default();
        for k in 0..200 {
            let key = format!("k{k}");
            let by_name = place_by_name(key.as_bytes(), &names);
            let placed = place(key.as_bytes(), &workers, &cache).expect("a worker");
            assert_eq!(workers.name(placed), Some(by_name));
        }
        // A worker that goes down takes no new key; drained ones only when all are.
        workers.set_state(1, WorkerState::Down);
        workers.set_drained(2, true);
        for k in 0..50 {
            let w = place(format!("k{k}").as_bytes(), &workers, &cache).expect("a worker");
            assert!(w == 0 || w == 3, "{w}");
        }
    }

    #[test]
    fn keys_spread_over_every_worker() {
        let all = names(4);
        let mut counts = [0usize; 4];
        for k in 0..4000 {
            let w = place_by_name(format!("k{k}").as_bytes(), &all);
            counts[all.iter().position(|n| *n == w).expect("listed")] += 1;
        }
        assert!(
            counts.iter().all(|&c| (700..1300).contains(&c)),
            "{counts:?}"
        );
    }
}
