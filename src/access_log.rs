//! The access log (`--access-log FILE|-`): one line per request, formatted on the request's
//! task and handed to a writer task through a bounded queue, which writes them buffered
//! and flushes whenever the queue runs dry. A full queue drops the line (and counts it)
//! rather than slow a request. Off (the default), a request pays one load and a branch.
//!
//! A line: `TIME CLIENT METHOD PATH STATUS WORKER DECISION DURATION`, e.g.
//! `2026-12-04T22:10:00.123Z 127.0.0.1 GET /cart 200 1 kept 0.412ms`. WORKER is `-` when the
//! proxy answered itself (no worker up, a refusal); DURATION runs to the response head.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use crate::routing::Outcome;
use crate::workers::WorkerId;

/// Lines queued at most before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// The running log.
#[derive(Debug)]
pub struct AccessLog {
    lines: mpsc::Sender<String>,
    dropped: AtomicU64,
}

static LOG: OnceLock<AccessLog> = OnceLock::new();

/// The access log, when one was opened.
#[inline]
pub fn get() -> Option<&'static AccessLog> {
    LOG.get()
}

/// Records an answer of the proxy's own (no worker), given `took` after the request's head
/// arrived, when the log is on.
pub fn own_answer(
    client: IpAddr,
    (method, path): (&[u8], &[u8]),
    status: http::StatusCode,
    took: Duration,
) {
    if let Some(log) = get() {
        log.record(&Entry {
            client,
            method,
            path,
            status: status.as_u16(),
            routed: None,
            took,
        });
    }
}

/// Opens `path` (appending; `-` is stdout) and starts the writer task on the current
/// runtime.
///
/// # Errors
/// The file cannot be opened.
pub fn open(path: &Path) -> std::io::Result<()> {
    let sink: Box<dyn Write + Send> = if path == Path::new("-") {
        Box::new(std::io::stdout())
    } else {
        Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        )
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    let _ = LOG.set(AccessLog {
        lines: tx,
        dropped: AtomicU64::new(0),
    });
    // Blocking writes on a thread of their own: a slow disk never stalls the proxy's tasks.
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || write_lines(rx, sink))?;
    Ok(())
}

fn write_lines(mut rx: mpsc::Receiver<String>, sink: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, sink);
    while let Some(line) = rx.blocking_recv() {
        let _ = out.write_all(line.as_bytes());
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(line.as_bytes());
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

/// One request, as the log records it.
#[derive(Debug)]
pub struct Entry<'a> {
    /// The client's address.
    pub client: IpAddr,
    /// The method.
    pub method: &'a [u8],
    /// The request target.
    pub path: &'a [u8],
    /// The status sent.
    pub status: u16,
    /// The worker that answered, and the routing decision; `None`: the proxy answered.
    pub routed: Option<(WorkerId, Outcome)>,
    /// Time to the response head.
    pub took: Duration,
}

impl AccessLog {
    /// Queues one line; dropped (and counted) when the writer is behind.
    pub fn record(&self, e: &Entry<'_>) {
        let (worker, decision) = match e.routed {
            Some((w, o)) => (w.to_string(), outcome_name(o)),
            None => ("-".to_string(), "-"),
        };
        let line = format!(
            "{} {} {} {} {} {} {} {:.3}ms\n",
            timestamp(SystemTime::now()),
            e.client,
            printable(e.method),
            printable(e.path),
            e.status,
            worker,
            decision,
            e.took.as_secs_f64() * 1000.0,
        );
        if self.lines.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::New => "new",
        Outcome::Kept => "kept",
        Outcome::Moved => "moved",
    }
}

/// Bytes as text with spaces and control characters escaped, so a line stays one line of
/// space-separated fields.
fn printable(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        if c.is_ascii_graphic() {
            s.push(c as char);
        } else {
            s.push_str(&format!("%{c:02X}"));
        }
    }
    s
}

/// RFC 3339 UTC with milliseconds.
fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Year, month, day of a count of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_421_659_123);
        assert_eq!(timestamp(t), "2026-12-04T22:00:59.123Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&timestamp(leap)[..10], "2000-02-29");
    }

    #[test]
    fn fields_stay_one_field() {
        assert_eq!(printable(b"/a b\n"), "/a%20b%0A");
    }
}
