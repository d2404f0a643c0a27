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
        .worker_ids()
        .map(|id| {
            let c = counters().worker(id);
            let sum = |f: fn(&crate::metrics::WorkerCounters) -> u64| c.map_or(0, f);
            json!({
                "id": id,
                "kind": match w.kind(id) {
                    Some(SlotKind::Upstream) => "upstream",
                    Some(SlotKind::Discovered) => "discovered",
                    _ => "spawned",
                },
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
                "retiring": retiring(admin, id),
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
            "drain_sessions": s.drain_sessions,
            "drain_idle_seconds": s.drain_idle.as_secs_f64(),
            "max_connections": s.max_connections,
            "max_pending": s.max_pending,
            "threads": s.threads,
        },
        "sessions": admin.table.len(),
        "workers": workers,
    })
}

/// The retiring (old) process of a session drain on slot `id`, or null.
fn retiring(admin: &Admin, id: crate::workers::WorkerId) -> Value {
    let Some(r) = admin.workers.retiring(id) else {
        return Value::Null;
    };
    json!({
        "pid": r.pid,
        "generation": r.generation,
        "address": admin.workers.addrs(id).map(|a| a[r.index].to_string()),
        "live_sessions": live_sessions(admin, id).unwrap_or(0),
        "in_flight": admin.workers.in_flight(id, r.index),
        "handed_off": r.handed_off,
        "unadopted": r.unadopted,
        "adopted": r.adopted,
    })
}

/// Sessions pinned to the retiring process of `id` and active within `--drain-idle`.
pub fn live_sessions(admin: &Admin, id: crate::workers::WorkerId) -> Option<usize> {
    let r = admin.workers.retiring(id)?;
    let table = &admin.table;
    let since = std::time::Instant::now()
        .checked_sub(admin.settings.drain_idle)
        .map_or(0, |at| table.tick_at(at));
    let pin = crate::routing::table::Pin {
        worker: id,
        generation: r.generation,
    };
    Some(table.count_live(pin, since))
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
