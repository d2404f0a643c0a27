//! The exchange on a pooled raw connection, for every front that holds a request whole (the
//! direct HTTP/1.1 path, the HTTP/2 direct exchange, the general path's bodyless requests):
//! send it, and after a failure resend it or answer, by the one resend table, rerouting from
//! the decision the request carries.

use std::future::Future;
use std::sync::Arc;

use bytes::Buf;
use tokio::time::Instant;

use super::answer::Answer;
use super::failure::{self, Failure, Resend};
use super::route::Route;
use super::Proxy;
use crate::access_log;
use crate::metrics::{self, Resent, UpstreamError};
use crate::proxy::http1::head::ResponseHead;
use crate::proxy::upstream::client::{read_head, send_request, NoResponse};
use crate::proxy::upstream::pool::{Pool, RawConn};
use crate::workers::InFlight;

/// A request as a front holds it.
pub trait Outbound {
    /// Writes the request for the worker of `route` into `w`, with the one request writer.
    fn write(&self, proxy: &Proxy, route: &Route, w: &mut Vec<u8>);
    /// The method and request target.
    fn request_line(&self) -> (&[u8], &[u8]);
    /// The request carries a body (the general path and the HTTP/2 direct exchange send
    /// only bodyless requests this way).
    fn has_body(&self) -> bool {
        false
    }
    /// Idempotent and without a body: may be repeated after its connection broke.
    fn repeatable(&self) -> bool {
        !self.has_body() && failure::idempotent(self.request_line().0)
    }
    /// A `HEAD` request: its response has no body.
    fn is_head(&self) -> bool {
        self.request_line().0 == b"HEAD"
    }
    /// Routes the request again after the worker of `failed` could not serve it
    /// ([`Proxy::reroute`] with the front's routing view).
    fn reroute(&mut self, proxy: &Proxy, failed: &Route) -> Option<Route>;
    /// An interim (1xx) response head came (`raw`): passed on to the client, or dropped.
    /// `Err` when the client is gone.
    fn interim(&mut self, raw: &[u8], head: &ResponseHead) -> impl Future<Output = Result<(), ()>>;
}

/// A worker's answer: the final response head is at the start of `up.rbuf`.
#[derive(Debug)]
pub struct Reply<'p> {
    /// The route that got the answer (after any move).
    pub route: Route,
    /// The connection, its read buffer holding the head and what came after it.
    pub up: RawConn,
    /// The head's length.
    pub head_len: usize,
    /// The pool the connection goes back to.
    pub pool: &'p Arc<Pool>,
    /// Held until the response body is sent.
    pub in_flight: InFlight,
}

impl Reply<'_> {
    /// Learns from the worker's answer (`head`, parsed from this reply): the session cookies
    /// it set are remembered on it. Every front calls this once per answer.
    pub fn learn(&self, proxy: &Proxy, head: &ResponseHead) {
        for value in head.set_cookies(&self.up.rbuf[..self.head_len]) {
            proxy.learn_set_cookie(value, self.route.decision.pin());
        }
    }
}

/// Sends `out` along `route` and reads the final response head into `head`, resending or
/// rerouting after failures as the resend table allows.
///
/// # Errors
/// The answer for the client when no worker answered (`None`: the client is gone).
pub async fn exchange<'p, O: Outbound>(
    proxy: &'p Proxy,
    mut route: Route,
    out: &mut O,
    head: &mut ResponseHead,
) -> Result<Reply<'p>, Option<Answer>> {
    let mut sends = 0;
    // After a broken connection the request goes again on a fresh one: the pooled ones are
    // likely stale too (a restarted or dying worker).
    let mut fresh = false;
    let started = access_log::get().map(|_| Instant::now());
    loop {
        sends += 1;
        let pending = match proxy.admit_to(&route) {
            Ok(pending) => pending,
            Err(shed) => {
                if let Some(started) = started {
                    log_access(out, &route, shed.status.as_u16(), false, started);
                }
                return Err(Some(shed));
            }
        };
        let (pool, in_flight) = proxy.target(&route);
        let attempted = attempt(proxy, pool, &route, out, head, fresh).await;
        drop(pending);
        let failure = match attempted {
            Ok((up, head_len)) => {
                if let Some(started) = started {
                    log_access(out, &route, head.status, true, started);
                }
                return Ok(Reply {
                    route,
                    up,
                    head_len,
                    pool,
                    in_flight,
                });
            }
            Err(failure) => failure,
        };
        drop(in_flight);
        fresh = matches!(failure, Failure::Broken(_));
        let req = failure::Request {
            repeatable: out.repeatable(),
            sends,
        };
        match proxy
            .after_failure(&route, &failure, req, |failed| out.reroute(proxy, failed))
            .await
        {
            Ok(next) => route = next,
            Err(answer) => {
                if let (Some(started), Some(a)) = (started, &answer) {
                    log_access(out, &route, a.status.as_u16(), false, started);
                }
                return Err(answer);
            }
        }
    }
}

/// One access-log line for a request of the raw exchange (`answered`: by its worker).
#[cold]
fn log_access<O: Outbound>(out: &O, route: &Route, status: u16, answered: bool, started: Instant) {
    if let Some(log) = access_log::get() {
        let (method, path) = out.request_line();
        log.record(&access_log::Entry {
            client: route.client,
            method,
            path,
            status,
            routed: answered.then_some((route.worker(), route.decision.outcome)),
            took: started.elapsed(),
        });
    }
}

/// One send on one connection (a new one when `fresh`): the final head's length, or why
/// there is none.
async fn attempt<O: Outbound>(
    proxy: &Proxy,
    pool: &Pool,
    route: &Route,
    out: &mut O,
    head: &mut ResponseHead,
    fresh: bool,
) -> Result<(RawConn, usize), Failure> {
    let pooled = if fresh { None } else { pool.take_raw() };
    let mut up = match pooled {
        Some(up) => up,
        None => pool.connect_raw().await.map_err(Failure::connecting)?,
    };
    out.write(proxy, route, &mut up.wbuf);
    let timeout = proxy.response_timeout;
    let failure = |e| match e {
        NoResponse::Broken(e) => Failure::Broken(e),
        NoResponse::Invalid(why) => Failure::Invalid(why),
        NoResponse::TimedOut => Failure::TimedOut(timeout),
    };
    let sent = Instant::now();
    up.deadline.as_mut().reset(sent + timeout);
    send_request(&mut up).await.map_err(failure)?;
    let mut interim = false;
    loop {
        let n = match read_head(&mut up, head, out.is_head()).await {
            Ok(n) => n,
            // After an interim answer the worker has seen the request: not to be resent.
            Err(NoResponse::Broken(_)) if interim => {
                return Err(Failure::Invalid("connection closed mid-head"))
            }
            Err(e) => return Err(failure(e)),
        };
        match head.status {
            101 => return Err(Failure::UnaskedSwitch),
            100..=199 => {
                interim = true;
                out.interim(&up.rbuf[..n], head)
                    .await
                    .map_err(|()| Failure::ClientGone)?;
                up.rbuf.advance(n);
            }
            status => {
                metrics::response(route.worker(), status, sent.elapsed());
                return Ok((up, n));
            }
        }
    }
}

impl Proxy {
    /// After `failure` on `route`: the route to send the request on next (the same worker
    /// for a repeatable request whose worker is still reachable, else a reroute), or the
    /// answer for the client. Takes an unreachable worker out of rotation.
    pub async fn after_failure(
        &self,
        route: &Route,
        failure: &Failure,
        req: failure::Request,
        reroute: impl FnOnce(&Route) -> Option<Route>,
    ) -> Result<Route, Option<Answer>> {
        let next = self.next_route(route, failure, req, reroute).await;
        if let Ok(next) = &next {
            let to = if next.worker() == route.worker() {
                Resent::Same
            } else {
                Resent::Other
            };
            metrics::resent(route.worker(), to);
        }
        next
    }

    async fn next_route(
        &self,
        route: &Route,
        failure: &Failure,
        req: failure::Request,
        reroute: impl FnOnce(&Route) -> Option<Route>,
    ) -> Result<Route, Option<Answer>> {
        let worker = route.worker();
        if let Some(e) = upstream_error(failure) {
            metrics::upstream_error(worker, e);
        }
        let resend = failure.resend(req);
        if let Some(moved) = self.replaced(route).filter(|_| resend != Resend::No) {
            // The slot moved to its replacement meanwhile (a rolling restart): the request
            // follows it, and the old address's failure says nothing about the worker.
            tracing::debug!(worker, error = %failure.reason(worker), "sending to the worker's replacement");
            return Ok(moved);
        }
        if failure.takes_worker_out() {
            self.workers.set_healthy(worker, false);
        }
        let give_up = || {
            if !matches!(failure, Failure::ClientGone) {
                tracing::warn!(worker, error = %failure.reason(worker), "upstream request failed");
            }
            failure.answer(worker)
        };
        match resend {
            Resend::No => return Err(give_up()),
            Resend::Again => {
                tracing::debug!(worker, error = %failure.reason(worker), "worker connection broke; sending again");
                // If the worker is gone, it is taken out now and the request moves (the
                // supervisor may not have noticed yet).
                if self.check_reachable(worker).await {
                    return Ok(*route);
                }
            }
            Resend::Elsewhere => {
                tracing::warn!(worker, error = %failure.reason(worker), "upstream request failed; routing again");
            }
        }
        reroute(route).ok_or_else(give_up)
    }

    /// The route to the slot's replacement, when the slot's active address is no longer the
    /// one `route` was sent to.
    fn replaced(&self, route: &Route) -> Option<Route> {
        let (index, _) = self.workers.active(route.worker())?;
        (index != route.index).then_some(Route { index, ..*route })
    }
}

/// The metrics label of a failure; `None` when the client, not the worker, is gone.
fn upstream_error(failure: &Failure) -> Option<UpstreamError> {
    Some(match failure {
        Failure::Unreachable(_) => UpstreamError::Unreachable,
        Failure::Broken(_) | Failure::Failed(_) => UpstreamError::Broken,
        Failure::Invalid(_) | Failure::UnaskedSwitch => UpstreamError::Invalid,
        Failure::TimedOut(_) => UpstreamError::Timeout,
        Failure::Untrusted(_) => UpstreamError::Invalid,
        Failure::ClientGone | Failure::ClientBody(_) => return None,
    })
}
