//! What went wrong with a worker, in one vocabulary for every front: which failures take
//! the worker out of rotation, which may be sent again (and where), and what the client is
//! answered when nothing more is tried.

use std::io;
use std::time::Duration;

use http::StatusCode;

use super::answer::Answer;
use crate::workers::WorkerId;

/// Most times one request is sent: the first send, then at most two more after failures
/// (a request caught on a killed worker's stale pooled sockets may break twice before a
/// fresh connection reaches a live worker).
pub const MAX_SENDS: u8 = 3;

/// True for the methods a proxy may send twice (RFC 9110 section 9.2.2).
pub fn idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"PUT" | b"DELETE" | b"OPTIONS" | b"TRACE"
    )
}

/// Why a worker gave no usable answer.
#[derive(Debug)]
pub enum Failure {
    /// No connection could be made (refused, timed out, reset during the TLS handshake):
    /// nothing of the request was sent.
    Unreachable(io::Error),
    /// The worker's TLS certificate was refused (`--worker-cert` pins another): a
    /// configuration error, not a dead worker, so it stays in rotation and the request is
    /// not sent elsewhere.
    Untrusted(io::Error),
    /// The connection broke (or closed) before a single byte of an answer: the request may
    /// have reached the worker.
    Broken(io::Error),
    /// The exchange failed after the request (or part of an answer) went out.
    Failed(String),
    /// The worker's answer cannot be read or passed on.
    Invalid(&'static str),
    /// The worker switched protocols though the request asked for no upgrade.
    UnaskedSwitch,
    /// No response head within `--response-timeout`.
    TimedOut(Duration),
    /// The client went away while an interim answer was passed on: nothing to answer.
    ClientGone,
    /// The client's request body failed while it was streamed to the worker (malformed
    /// chunking, or the client closed the connection): the client's fault, answered 400
    /// (a pause past `--body-timeout` is `admit::body_stalled`'s 408).
    ClientBody(String),
}

/// What may be done with the request after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// Nothing reached the worker: send it to another worker (routed again, a move).
    Elsewhere,
    /// It may have reached the worker, and repeating it is safe: send it once more, on a new
    /// connection (to the same worker unless that one proves unreachable).
    Again,
    /// Answer the client.
    No,
}

/// What a request allows after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Idempotent (RFC 9110 9.2.2) and without a body: may be repeated.
    pub repeatable: bool,
    /// Times it was sent (or tried) so far.
    pub sends: u8,
}

impl Failure {
    /// A connection that could not be opened: a certificate the TLS check refused (rustls
    /// reports it as invalid data) is [`Failure::Untrusted`], anything else
    /// [`Failure::Unreachable`].
    pub fn connecting(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::InvalidData {
            Failure::Untrusted(e)
        } else {
            Failure::Unreachable(e)
        }
    }

    /// The resend table: what may be done with `req` after this failure.
    pub fn resend(&self, req: Request) -> Resend {
        if req.sends >= MAX_SENDS {
            return Resend::No;
        }
        match self {
            Failure::Unreachable(_) => Resend::Elsewhere,
            Failure::Broken(_) if req.repeatable => Resend::Again,
            Failure::Broken(_)
            | Failure::Untrusted(_)
            | Failure::Failed(_)
            | Failure::Invalid(_)
            | Failure::UnaskedSwitch
            | Failure::TimedOut(_)
            | Failure::ClientGone
            | Failure::ClientBody(_) => Resend::No,
        }
    }

    /// Passive health: the worker is taken out of rotation at once (active checks bring it
    /// back).
    pub fn takes_worker_out(&self) -> bool {
        matches!(self, Failure::Unreachable(_))
    }

    /// What the client is answered when nothing more is tried; `None` when the client is
    /// gone.
    pub fn answer(&self, worker: WorkerId) -> Option<Answer> {
        let (status, code) = match self {
            Failure::ClientGone => return None,
            Failure::ClientBody(_) => return Some(Answer::malformed_body()),
            Failure::TimedOut(_) => (StatusCode::GATEWAY_TIMEOUT, "gateway_timeout"),
            _ => (StatusCode::BAD_GATEWAY, "proxy_error"),
        };
        Some(Answer::new(status, code, self.reason(worker)))
    }

    /// The failure in words, for the client's `reason` and the log.
    pub fn reason(&self, worker: WorkerId) -> String {
        match self {
            Failure::Unreachable(e) => format!("worker {worker} unreachable: {e}"),
            Failure::Broken(e) => format!("worker {worker} failed: {e}"),
            Failure::Untrusted(e) => format!("worker {worker} refused: {e}"),
            Failure::Failed(why) => format!("worker {worker} failed: {why}"),
            Failure::Invalid(why) => format!("worker {worker} failed: {why}"),
            Failure::UnaskedSwitch => format!("worker {worker} failed: switched protocols unasked"),
            Failure::TimedOut(limit) => {
                format!("worker {worker} sent no response headers within {limit:?}")
            }
            Failure::ClientGone => "the client went away".to_string(),
            Failure::ClientBody(why) => format!("the client's request body failed: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Failure> {
        let e = || io::Error::from(io::ErrorKind::ConnectionReset);
        vec![
            Failure::Unreachable(e()),
            Failure::Untrusted(io::Error::from(io::ErrorKind::InvalidData)),
            Failure::Broken(e()),
            Failure::Failed("x".into()),
            Failure::Invalid("x"),
            Failure::UnaskedSwitch,
            Failure::TimedOut(Duration::from_secs(1)),
            Failure::ClientGone,
            Failure::ClientBody("x".into()),
        ]
    }

    /// Every row of the resend table, for a repeatable request and one that is not.
    #[test]
    fn resend_table() {
        let expected = [
            // (failure, repeatable, not repeatable)
            (Resend::Elsewhere, Resend::Elsewhere),
            (Resend::No, Resend::No),
            (Resend::Again, Resend::No),
            (Resend::No, Resend::No),
            (Resend::No, Resend::No),
            (Resend::No, Resend::No),
            (Resend::No, Resend::No),
            (Resend::No, Resend::No),
            (Resend::No, Resend::No),
        ];
        for (failure, (repeatable, once)) in all().iter().zip(expected) {
            for sends in 1..MAX_SENDS {
                let r = Request {
                    repeatable: true,
                    sends,
                };
                assert_eq!(failure.resend(r), repeatable, "{failure:?} repeatable");
                let r = Request {
                    repeatable: false,
                    sends,
                };
                assert_eq!(failure.resend(r), once, "{failure:?} not repeatable");
            }
            let spent = Request {
                repeatable: true,
                sends: MAX_SENDS,
            };
            assert_eq!(
                failure.resend(spent),
                Resend::No,
                "{failure:?} out of sends"
            );
        }
    }

    /// Every failure's answer: 504 for a timeout, nothing for a client that left, 400 for the
    /// client's own body, 502 else.
    #[test]
    fn failure_classifier_answers() {
        let statuses: Vec<_> = all()
            .iter()
            .map(|f| f.answer(3).map(|a| (a.status.as_u16(), a.code)))
            .collect();
        assert_eq!(
            statuses,
            vec![
                Some((502, "proxy_error")),
                Some((502, "proxy_error")),
                Some((502, "proxy_error")),
                Some((502, "proxy_error")),
                Some((502, "proxy_error")),
                Some((502, "proxy_error")),
                Some((504, "gateway_timeout")),
                None,
                Some((400, "bad_request")),
            ]
        );
        let takes_out: Vec<_> = all().iter().map(Failure::takes_worker_out).collect();
        assert_eq!(
            takes_out,
            vec![true, false, false, false, false, false, false, false, false]
        );
        let reason = Failure::TimedOut(Duration::from_secs(2)).reason(1);
        assert_eq!(reason, "worker 1 sent no response headers within 2s");
    }
}
