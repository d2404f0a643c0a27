//! WebSocket (and any HTTP/1.1 Upgrade) pass-through: once the worker has answered 101, the
//! two upgraded connections are spliced until either side closes, the tunnel has been idle
//! both ways for `--ws-idle-timeout`, or its worker is being replaced and its drain time is
//! over (then it closes after a random delay, so thousands of clients do not all reconnect
//! in the same instant).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use super::splice::{splice, Tracked};
use crate::metrics::{Open, Protocol};
use crate::workers::{InFlight, WorkerId};

/// How a tunnel ends besides either side closing.
#[derive(Debug, Clone)]
pub struct TunnelLimits {
    /// Closed after this long with no bytes either way.
    pub idle: Duration,
    /// Cancelled when the worker's drain time is over.
    pub drain: CancellationToken,
    /// Upper bound of the random delay before a drained tunnel closes.
    pub jitter: Duration,
}

/// Spawns the task that joins the client's and the worker's upgraded connections.
pub fn spawn_tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    worker: WorkerId,
    limits: TunnelLimits,
    in_flight: InFlight,
) {
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(worker, error = %e, "upgrade did not complete");
                return;
            }
        };
        let _open = Open::new(Protocol::WebSocket);
        let activity = Arc::new(AtomicU64::new(0));
        let mut client = Tracked::new(TokioIo::new(client), activity.clone());
        let mut upstream = Tracked::new(TokioIo::new(upstream), activity.clone());
        let copy = splice(&mut client, &mut upstream);
        let idle = idle_for(limits.idle, &activity);
        let drained = async {
            limits.drain.cancelled().await;
            tokio::time::sleep(jittered(limits.jitter)).await;
        };
        tokio::select! {
            result = copy => match result {
                Ok((up, down)) => tracing::debug!(worker, up, down, "tunnel closed"),
                Err(e) => tracing::debug!(worker, error = %e, "tunnel ended"),
            },
            _ = idle => tracing::debug!(worker, idle = ?limits.idle, "idle tunnel closed"),
            _ = drained => tracing::debug!(worker, "tunnel closed: its worker was replaced"),
        }
    });
}

/// Looks at a tunnel's activity count this many times per `--ws-idle-timeout`.
const IDLE_CHECKS: u32 = 8;

/// Resolves once `activity` has not moved for `idle` (to within an eighth of it more):
/// counted reads and writes instead of a clock read on each, which showed in the profile
/// of a WebSocket message storm (`bench/ws.sh PERF_RECORD=1`).
async fn idle_for(idle: Duration, activity: &AtomicU64) {
    let step = idle / IDLE_CHECKS;
    let mut seen = activity.load(Ordering::Relaxed);
    let mut quiet = 0;
    while quiet < IDLE_CHECKS {
        tokio::time::sleep(step).await;
        let now = activity.load(Ordering::Relaxed);
        quiet = if now == seen { quiet + 1 } else { 0 };
        seen = now;
    }
}

/// A random duration in `[0, max)`.
fn jittered(max: Duration) -> Duration {
    let mut raw = [0u8; 4];
    if max.is_zero()
        || ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw).is_err()
    {
        return Duration::ZERO;
    }
    max.mul_f64(f64::from(u32::from_le_bytes(raw)) / (f64::from(u32::MAX) + 1.0))
}

#[cfg(test)]
mod tests {
    use super::{idle_for, jittered};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_is_idle_after_the_timeout_without_activity_and_not_before() {
        let idle = Duration::from_secs(80);
        let quiet = AtomicU64::new(0);
        let start = Instant::now();
        idle_for(idle, &quiet).await;
        let took = start.elapsed();
        assert!(took >= idle && took <= idle + idle / 8, "{took:?}");

        let busy = AtomicU64::new(0);
        let start = Instant::now();
        let watch = idle_for(idle, &busy);
        let work = async {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_secs(10)).await;
                busy.fetch_add(1, Ordering::Relaxed);
            }
        };
        tokio::pin!(watch);
        tokio::select! {
            () = &mut watch => panic!("closed while bytes moved"),
            () = work => {}
        }
        watch.await;
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(200) + idle, "{took:?}");
        assert!(
            took <= Duration::from_secs(200) + idle + idle / 8,
            "{took:?}"
        );
    }

    #[test]
    fn jitter_stays_in_range_and_varies() {
        let max = Duration::from_secs(10);
        let picks: Vec<_> = (0..50).map(|_| jittered(max)).collect();
        assert!(picks.iter().all(|d| *d < max));
        assert!(picks.iter().any(|d| *d != picks[0]), "random, not constant");
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }
}
