//! `/status`: the settings that matter, uptime, and one entry per worker slot.

use serde_json::{json, Value};

use super::Admin;
use crate::metrics::counters;
use crate::workers::{SlotKind, WorkerState};
use std::sync::atomic::Ordering;

/// The status document.
pub fn status(admin: &Admin) -> Value {
    let s = &admin.settings;
    let w = &admin.workers;
    let sessions = admin.table.count_by_worker(w.len());
    let workers: Vec<Value> = w
        .ids()
        .map(|id| {
            let c = counters().worker(id);
            let sum = |f: fn(&crate::metrics::WorkerCounters) -> u64| c.map_or(0, f);
            json!({
                "id": id,
                "kind": match w.kind(id) { Some(SlotKind::Upstream) => "upstream", _ => "spawned" },
                "pid": w.pid(id),
                "port": w.addr(id).map(|a| a.port()),
                "address": w.addr(id).map(|a| a.to_string()),
                "state": state_name(w.state(id)),
                "healthy": w.is_healthy(id),
                "drained": w.is_drained(id),
                "sessions": sessions.get(usize::from(id)).copied().unwrap_or(0),
                "in_flight": w.in_flight_total(id),
                "restarts": w.restarts(id),
                "replacements": w.replacements(id),
                "started_at": w.started_at(id),
                "last_exit": w.last_exit(id),
                "requests": sum(|c| c.codes.iter().map(|n| n.load(Ordering::Relaxed)).sum()),
                "errors": sum(|c| c.errors.iter().map(|n| n.load(Ordering::Relaxed)).sum::<u64>()
                    + c.codes[4].load(Ordering::Relaxed)),
            })
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_seconds": admin.started.elapsed().as_secs_f64(),
        "started_at": admin.started_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "settings": {
            "proxy": s.proxy_addr().to_string(),
            "tls": s.tls_cert.is_some(),
            "workers": s.spawned_workers(),
            "upstreams": s.upstreams.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "session_keys": s.session_keys.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "session_cookie": s.session_cookie,
            "session_ttl_seconds": s.session_ttl.as_secs(),
            "session_max": s.session_max,
            "affinity_cookie": s.affinity_cookie,
            "on_worker_down": s.on_worker_down.to_string(),
            "websocket": s.websocket,
            "respawn": s.respawn,
            "max_connections": s.max_connections,
            "max_pending": s.max_pending,
            "threads": s.threads,
        },
        "sessions": admin.table.len(),
        "workers": workers,
    })
}

/// A state's name in `/status`.
pub fn state_name(state: WorkerState) -> &'static str {
    match state {
        WorkerState::Starting => "starting",
        WorkerState::Up => "up",
        WorkerState::Draining => "draining",
        WorkerState::Down => "down",
    }
}
