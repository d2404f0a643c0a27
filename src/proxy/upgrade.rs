//! WebSocket (and any HTTP/1.1 Upgrade) pass-through: once the worker has answered 101, the
//! two upgraded connections are spliced until either side closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::workers::WorkerId;

/// Spawns the task that joins the client's and the worker's upgraded connections.
pub fn spawn_tunnel(client: OnUpgrade, upstream: OnUpgrade, worker: WorkerId) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(worker, error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => tracing::debug!(worker, up, down, "tunnel closed"),
            Err(e) => tracing::debug!(worker, error = %e, "tunnel ended"),
        }
    });
}
