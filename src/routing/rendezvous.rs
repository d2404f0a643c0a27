//! Rendezvous (highest-random-weight) placement of a session key over the workers' stable
//! names: every proxy that sees the same live workers places a key it has never seen on the
//! same worker, without talking to the others. Removing a worker moves only its own keys;
//! adding one takes a fair share of new keys and moves nothing else.
//!
//! The hash is fixed (FNV-1a, then a 64-bit finalizer), never seeded per process, so every
//! proxy and every release computes the same placement.

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

/// The weight of `key` on the worker named `name`.
pub fn score(key: &[u8], name: &str) -> u64 {
    let h = fnv(FNV_OFFSET, key);
    mix(fnv(h ^ 0xff, name.as_bytes()))
}

/// The candidate (id, name) with the highest score for `key`; ties go to the smaller name,
/// so the order of `candidates` never matters.
pub fn place_among<'a>(
    key: &[u8],
    candidates: impl IntoIterator<Item = (WorkerId, &'a str)>,
) -> Option<WorkerId> {
    candidates
        .into_iter()
        .map(|(id, name)| (score(key, name), std::cmp::Reverse(name), id))
        .max()
        .map(|(_, _, id)| id)
}

/// The live worker for a key no proxy has pinned yet: among the workers that are up and
/// take new sessions (drained ones only when every worker that is up is drained).
pub fn place(key: &[u8], workers: &WorkerSet) -> Option<WorkerId> {
    let named: Vec<(WorkerId, String)> = workers
        .ids()
        .filter(|&id| workers.is_up(id))
        .filter_map(|id| workers.name(id).map(|n| (id, n)))
        .collect();
    let open = named.iter().filter(|(id, _)| !workers.is_drained(*id));
    place_among(key, open.map(|(id, n)| (*id, n.as_str())))
        .or_else(|| place_among(key, named.iter().map(|(id, n)| (*id, n.as_str()))))
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
        assert_eq!(
            score(b"alice", "10.0.0.1:3000"),
            score(b"alice", "10.0.0.1:3000")
        );
        assert_eq!(fnv(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
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
