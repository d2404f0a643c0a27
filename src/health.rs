//! Active health checks: each slot's current address is probed every interval (a TCP
//! connect, or `GET --health-path` expecting 2xx/3xx) with hysteresis, as HAProxy does: a
//! healthy worker goes out after `fall` failures in a row, an unhealthy one comes back after
//! `rise` passes in a row. The proxy marks a worker unhealthy at once when a connect fails
//! (passive health); only these checks bring it back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::workers::{WorkerId, WorkerSet, WorkerState};

/// How workers are checked.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// HTTP path to GET; `None` for a TCP connect.
    pub path: Option<String>,
    /// Time between checks.
    pub interval: Duration,
    /// Timeout of one check.
    pub timeout: Duration,
    /// Passes in a row that bring a worker back.
    pub rise: u32,
    /// Failures in a row that take a worker out.
    pub fall: u32,
}

/// Checks every slot until `stop` fires.
pub fn start(workers: Arc<WorkerSet>, config: Arc<HealthConfig>, stop: CancellationToken) {
    for id in workers.ids() {
        tokio::spawn(check_slot(
            id,
            workers.clone(),
            config.clone(),
            stop.clone(),
        ));
    }
}

async fn check_slot(
    id: WorkerId,
    workers: Arc<WorkerSet>,
    config: Arc<HealthConfig>,
    stop: CancellationToken,
) {
    let (mut passes, mut failures) = (0u32, 0u32);
    // Spread the slots' checks over the interval instead of probing all at once.
    let offset = config.interval * u32::from(id) / (workers.len().max(1) as u32);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if workers.state(id) != WorkerState::Up {
            // The supervisor owns starting and stopping; a new process starts healthy.
            passes = 0;
            failures = 0;
            continue;
        }
        let Some(addr) = workers.addr(id) else { return };
        let result = probe(addr, config.path.as_deref(), config.timeout).await;
        let healthy = workers.is_healthy(id);
        match result {
            Ok(()) => {
                failures = 0;
                passes = passes.saturating_add(1);
                if !healthy && passes >= config.rise {
                    workers.set_healthy(id, true);
                    tracing::info!(
                        worker = id,
                        passes,
                        "worker passed its health checks; back in rotation"
                    );
                }
            }
            Err(why) => {
                passes = 0;
                failures = failures.saturating_add(1);
                if healthy && failures >= config.fall {
                    workers.set_healthy(id, false);
                    tracing::warn!(worker = id, %addr, failures, error = %why, "worker failed its health checks; out of rotation");
                } else {
                    tracing::debug!(worker = id, %addr, error = %why, "health check failed");
                }
            }
        }
    }
}

/// One check: a TCP connect, or an HTTP GET of `path` that must answer 2xx or 3xx.
///
/// # Errors
/// What failed, for the log.
pub async fn probe(addr: SocketAddr, path: Option<&str>, timeout: Duration) -> Result<(), String> {
    let check = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let Some(path) = path else { return Ok(()) };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: sticky-cluster-health\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut head = [0u8; 16];
        let mut got = 0;
        while got < 12 {
            let n = stream
                .read(&mut head[got..])
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("closed before a status line".to_string());
            }
            got += n;
        }
        // "HTTP/1.1 200 " -> the status code sits at bytes 9..12.
        match &head[9..12] {
            [b'2' | b'3', ..] => Ok(()),
            code => Err(format!("status {}", String::from_utf8_lossy(code))),
        }
    };
    tokio::time::timeout(timeout, check)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}
