//! Where a request goes: one decision per request, made here and carried along; a resend
//! after a failure reroutes from it, so the move is recorded on the request that moved.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;

use super::Proxy;
use crate::metrics::{self, Routed};
use crate::proxy::upstream::pool::Pool;
use crate::routing::{Decision, LocalMiss};
use crate::shared_table::Claim;
use crate::workers::{InFlight, WorkerId};

/// A routed request: the decision, the client it was made for, and which of the worker's
/// two addresses is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The decision (worker, kept/new/moved, affinity cookie due).
    pub decision: Decision,
    /// The client's address the decision was made for.
    pub client: IpAddr,
    /// The worker's active address slot.
    pub index: usize,
}

/// A routing outcome that needs no waiting.
#[derive(Debug)]
pub enum Routing {
    /// Go.
    Go(Route),
    /// The pinned worker is restarting and `--on-worker-down hold` is on: wait for it.
    Wait(Decision),
    /// No worker is up.
    NoWorker,
    /// The key is new to this proxy and the shared table must be asked: route with
    /// [`Proxy::route`], which awaits it.
    Lookup,
}

impl Route {
    /// The worker.
    #[inline]
    pub fn worker(&self) -> WorkerId {
        self.decision.worker
    }
}

impl Proxy {
    /// Routes a request now, without waiting for a held worker.
    #[inline]
    pub fn route_now(&self, view: &Parts, client: IpAddr) -> Routing {
        let now = self.router.table().now();
        let hold = self.hold.is_some();
        let routed = match self.shared {
            None => Ok(self.router.route(view, client, &self.workers, now, hold)),
            Some(_) => self
                .router
                .route_known(view, client, &self.workers, now, hold),
        };
        match routed {
            Err(LocalMiss) => Routing::Lookup,
            Ok(Some(d)) if d.wait => Routing::Wait(d),
            Ok(Some(d)) => {
                metrics::routed(d.outcome.into());
                self.located(view, d, client)
                    .map_or(Routing::NoWorker, Routing::Go)
            }
            Ok(None) => Routing::NoWorker,
        }
    }

    /// Routes a request; with `--on-worker-down hold`, waits (bounded) for a pinned worker
    /// that is restarting instead of moving its client. `None`: no worker is up.
    pub async fn route(&self, view: &Parts, client: IpAddr) -> Option<Route> {
        match self.route_now(view, client) {
            Routing::Go(route) => Some(route),
            Routing::NoWorker => None,
            // Boxed: holding is rare and its wait would otherwise grow every request's future.
            Routing::Wait(decision) => Box::pin(self.hold_then_route(view, client, decision)).await,
            // Boxed too: only with --shared-table, once per key new to this proxy.
            Routing::Lookup => Box::pin(self.route_shared(view, client)).await,
        }
    }

    /// Routes a request whose key this proxy does not know: chooses as usual, then claims
    /// the key in the shared table; when another proxy placed it first, adopts its worker.
    async fn route_shared(&self, view: &Parts, client: IpAddr) -> Option<Route> {
        let shared = self.shared.as_ref()?;
        let now = self.router.table().now();
        let hold = self.hold.is_some();
        let d = self.router.route(view, client, &self.workers, now, hold)?;
        if d.wait {
            return self.hold_then_route(view, client, d).await;
        }
        let d = match self.router.key_bytes(view, client) {
            Some(key) => match shared.claim(&key, d.worker).await {
                Claim::Theirs(w) => self.router.adopt(&key, w, &self.workers, now),
                Claim::Ours | Claim::Unknown => d,
            },
            None => d,
        };
        metrics::routed(d.outcome.into());
        self.located(view, d, client)
    }

    /// Routes a request again after the worker of `failed` could not serve it: the move is
    /// recorded in the decision the request carries from now on.
    pub fn reroute(&self, view: &Parts, failed: &Route) -> Option<Route> {
        let now = self.router.table().now();
        let d = self
            .router
            .reroute(view, failed.client, &self.workers, now, failed.decision)?;
        metrics::routed(d.outcome.into());
        tracing::debug!(
            from = failed.worker(),
            to = d.worker,
            "sending to another worker"
        );
        self.located(view, d, failed.client)
    }

    /// The pool of the route's address, and the in-flight count the exchange holds.
    #[inline]
    pub fn target(&self, route: &Route) -> (&Arc<Pool>, InFlight) {
        let worker = route.worker();
        let pool = &self.pools[usize::from(worker)][route.index];
        (
            pool,
            InFlight::new(self.workers.clone(), worker, route.index),
        )
    }

    #[inline]
    fn located(&self, view: &Parts, decision: Decision, client: IpAddr) -> Option<Route> {
        // A session pinned to the retiring process of a session drain goes to its address.
        let index = match self.workers.index_of(decision.worker, decision.generation) {
            Some(index) => index,
            None => self.workers.active(decision.worker)?.0,
        };
        if self.debug {
            tracing::debug!(worker = decision.worker, outcome = ?decision.outcome, uri = %view.uri, "route");
        }
        Some(Route {
            decision,
            client,
            index,
        })
    }

    async fn hold_then_route(
        &self,
        view: &Parts,
        client: IpAddr,
        decision: Decision,
    ) -> Option<Route> {
        if self.wait_for(decision.worker).await {
            let decision = Decision {
                wait: false,
                ..decision
            };
            metrics::routed(Routed::Held);
            return self.located(view, decision, client);
        }
        let now = self.router.table().now();
        let d = self.router.route(view, client, &self.workers, now, false)?;
        metrics::routed(d.outcome.into());
        self.located(view, d, client)
    }

    /// Takes a worker out of rotation when its address refuses connections; true when it
    /// is reachable.
    pub async fn check_reachable(&self, worker: WorkerId) -> bool {
        let Some(addr) = self.workers.addr(worker) else {
            return false;
        };
        let probe = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        );
        let reachable = matches!(probe.await, Ok(Ok(_)));
        if !reachable {
            self.workers.set_healthy(worker, false);
        }
        reachable
    }

    /// Waits until `worker` is up, at most the hold time; false when it is not back in time
    /// or too many requests are already waiting.
    async fn wait_for(&self, worker: WorkerId) -> bool {
        let Some(hold) = self.hold else { return false };
        if self.holding.fetch_add(1, Ordering::AcqRel) >= self.hold_queue {
            self.holding.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let deadline = tokio::time::Instant::now() + hold;
        let back = loop {
            let changed = self.workers.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.workers.is_up(worker) {
                break true;
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => break self.workers.is_up(worker),
            }
        };
        self.holding.fetch_sub(1, Ordering::AcqRel);
        back
    }
}
