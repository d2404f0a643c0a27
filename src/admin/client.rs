//! `sticky-cluster status|reload|drain N|undrain N|session KEY`: talk to a running
//! instance's admin listener (found with `--admin`, or the runtime file of its proxy port),
//! print a table, exit non-zero when it cannot be reached.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use super::runtime;
use crate::cli::{Control, ControlCommand};

/// How long the client waits for the admin listener.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a control command; the exit code (0 done, 1 unreachable or refused).
pub fn run(control: &Control) -> u8 {
    match execute(control) {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e) => {
            eprintln!("sticky-cluster: error: {e}");
            1
        }
    }
}

fn execute(control: &Control) -> Result<String, String> {
    let addr = match control.admin {
        Some(addr) => addr,
        None => runtime::read(&runtime::path(control.proxy_port(), &control.secret_file()))?,
    };
    let token = control.admin_token.as_deref();
    match &control.command {
        ControlCommand::Status => {
            let status = call(addr, token, "GET", "/status")?;
            Ok(table(&status))
        }
        ControlCommand::Reload => {
            call(addr, token, "POST", "/reload")?;
            Ok("rolling restart started\n".to_string())
        }
        ControlCommand::Drain { worker } => {
            call(addr, token, "POST", &format!("/workers/{worker}/drain"))?;
            Ok(format!(
                "worker {worker} drained: no new sessions go to it\n"
            ))
        }
        ControlCommand::Undrain { worker } => {
            call(addr, token, "POST", &format!("/workers/{worker}/undrain"))?;
            Ok(format!("worker {worker} takes new sessions again\n"))
        }
        ControlCommand::Session { key } => {
            let path = format!("/sessions/{}", percent_encode(key));
            let found = call(addr, token, "GET", &path)?;
            Ok(format!("{key}\tworker {}\n", found["worker"]))
        }
    }
}

/// One request to the admin listener; its JSON body when the status is 2xx.
fn call(addr: SocketAddr, token: Option<&str>, method: &str, path: &str) -> Result<Value, String> {
    let unreachable = |e: std::io::Error| format!("cannot reach the admin listener at {addr}: {e}");
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(unreachable)?;
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).map_err(unreachable)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(unreachable)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr} sent no HTTP response"))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{addr} sent no HTTP response"))?;
    if !(200..300).contains(&status) {
        let why = body.trim();
        return Err(match status {
            401 => format!(
                "{addr} refused the token: give --admin-token (or STICKY_CLUSTER_ADMIN_TOKEN)"
            ),
            _ => format!("{addr} answered {status}: {why}"),
        });
    }
    serde_json::from_str(body).map_err(|e| format!("{addr} sent no JSON: {e}"))
}

/// `/status` as a table.
fn table(status: &Value) -> String {
    let mut out = format!(
        "proxy {}  uptime {}  sessions {}\n",
        status["settings"]["proxy"].as_str().unwrap_or("?"),
        duration(status["uptime_seconds"].as_f64().unwrap_or(0.0) as u64),
        status["sessions"],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let rows: Vec<[String; 10]> = status["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            let shown = |v: &Value| match v {
                Value::Null => "-".to_string(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let uptime = w["started_at"]
                .as_u64()
                .filter(|_| w["pid"].is_number())
                .map_or_else(|| "-".to_string(), |t| duration(now.saturating_sub(t)));
            let mut state = if w["drained"] == Value::Bool(true) {
                format!("{} (drained)", shown(&w["state"]))
            } else {
                shown(&w["state"])
            };
            let retiring = &w["retiring"];
            if !retiring.is_null() {
                state.push_str(&format!(
                    " (old pid {} retiring: {} sessions)",
                    shown(&retiring["pid"]),
                    shown(&retiring["live_sessions"])
                ));
            }
            [
                shown(&w["id"]),
                state,
                shown(&w["healthy"]),
                shown(&w["pid"]),
                shown(&w["port"]),
                uptime,
                shown(&w["sessions"]),
                shown(&w["in_flight"]),
                shown(&w["restarts"]),
                shown(&w["last_exit"]),
            ]
        })
        .collect();
    let header = [
        "ID",
        "STATE",
        "HEALTHY",
        "PID",
        "PORT",
        "UPTIME",
        "SESSIONS",
        "IN-FLIGHT",
        "RESTARTS",
        "LAST EXIT",
    ]
    .map(String::from);
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            std::iter::once(&header)
                .chain(&rows)
                .map(|r| r[i].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `1h02m`, `3m05s`, `42s`.
fn duration(secs: u64) -> String {
    match secs {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// A key as a path segment.
fn percent_encode(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
