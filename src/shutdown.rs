//! Signals: SIGINT, SIGTERM and SIGQUIT stop the cluster through one cancellation token;
//! SIGHUP is caught (so it never kills the supervisor) and handed to the caller.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Installs the handlers. Returns a receiver that yields once per SIGHUP.
///
/// # Errors
/// When a handler cannot be installed.
pub fn listen(stop: CancellationToken) -> std::io::Result<mpsc::UnboundedReceiver<()>> {
    let (reload_tx, reload_rx) = mpsc::unbounded_channel();
    listen_with(stop, reload_tx)?;
    Ok(reload_rx)
}

/// Like [`listen`], sending each SIGHUP on `reload_tx` (which others may send on too: the
/// admin listener's `POST /reload`).
///
/// # Errors
/// When a handler cannot be installed.
pub fn listen_with(
    stop: CancellationToken,
    reload_tx: mpsc::UnboundedSender<()>,
) -> std::io::Result<()> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
                _ = quit.recv() => "SIGQUIT",
                _ = hup.recv() => {
                    let _ = reload_tx.send(());
                    continue;
                }
                _ = stop.cancelled() => return,
            };
            // Cancel before logging: the log line must never stand between a signal and
            // the stop it asks for.
            let again = stop.is_cancelled();
            stop.cancel();
            if again {
                tracing::warn!(signal = name, "second stop signal; still shutting down");
            } else {
                tracing::info!(signal = name, "shutting down");
            }
        }
    });
    Ok(())
}
