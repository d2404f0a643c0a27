//! `/metrics` in the Prometheus text format (version 0.0.4): the counters of
//! `crate::metrics`, and what the worker slots and the sticky table hold right now.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Admin;
use crate::metrics::{
    counters, Learned, Protocol, Refused, Resent, Routed, UpstreamError, WorkerCounters, BUCKETS,
};

/// The whole exposition.
pub fn render(admin: &Admin) -> String {
    let mut out = String::with_capacity(8 * 1024);
    requests(&mut out, admin);
    routing(&mut out, admin);
    workers(&mut out, admin);
    connections(&mut out);
    shared_table(&mut out);
    process(&mut out, admin);
    out
}

/// The shared table's state and traffic, when `--shared-table` is on.
fn shared_table(out: &mut String) {
    let s = crate::metrics::shared();
    if !s.on.load(Ordering::Relaxed) {
        return;
    }
    family(
        out,
        "sticky_cluster_shared_table_up",
        "gauge",
        "1 while Redis (--shared-table) answers.",
    );
    let up = u8::from(s.up.load(Ordering::Relaxed));
    let _ = writeln!(out, "sticky_cluster_shared_table_up {up}");
    family(
        out,
        "sticky_cluster_shared_table_lookups_total",
        "counter",
        "Keys new to this proxy looked up in the shared table, by result.",
    );
    for (label, n) in crate::metrics::Lookup::LABELS.iter().zip(&s.lookups) {
        let _ = writeln!(
            out,
            "sticky_cluster_shared_table_lookups_total{{result=\"{label}\"}} {}",
            get(n)
        );
    }
    for (name, help, n) in [
        (
            "sticky_cluster_shared_table_publishes_total",
            "Writes (learnt keys, refreshes, deletes) Redis acknowledged.",
            &s.publishes,
        ),
        (
            "sticky_cluster_shared_table_dropped_total",
            "Writes dropped: queue full, or too many waiting while Redis was down.",
            &s.dropped,
        ),
    ] {
        family(out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", get(n));
    }
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The per-worker counters, for every slot.
fn per_worker(admin: &Admin) -> impl Iterator<Item = (u16, &'static WorkerCounters)> + '_ {
    admin
        .workers
        .worker_ids()
        .filter_map(|id| counters().worker(id).map(|c| (id, c)))
}

fn requests(out: &mut String, admin: &Admin) {
    family(
        out,
        "sticky_cluster_requests_total",
        "counter",
        "Worker responses by worker and status class.",
    );
    for (id, c) in per_worker(admin) {
        for (i, n) in c.codes.iter().enumerate() {
            let _ = writeln!(
                out,
                "sticky_cluster_requests_total{{worker=\"{id}\",code=\"{}xx\"}} {}",
                i + 1,
                get(n)
            );
        }
    }
    family(
        out,
        "sticky_cluster_request_duration_seconds",
        "histogram",
        "Worker response time: from sending the request to its response head.",
    );
    for (id, c) in per_worker(admin) {
        let mut cumulative = 0;
        for (i, n) in c.buckets.iter().enumerate() {
            cumulative += get(n);
            let le = BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), f64::to_string);
            let _ = writeln!(out, "sticky_cluster_request_duration_seconds_bucket{{worker=\"{id}\",le=\"{le}\"}} {cumulative}");
        }
        let sum = get(&c.micros) as f64 / 1e6;
        let _ = writeln!(
            out,
            "sticky_cluster_request_duration_seconds_sum{{worker=\"{id}\"}} {sum}"
        );
        let _ = writeln!(
            out,
            "sticky_cluster_request_duration_seconds_count{{worker=\"{id}\"}} {cumulative}"
        );
    }
    family(
        out,
        "sticky_cluster_upstream_errors_total",
        "counter",
        "Requests a worker did not answer, by reason.",
    );
    for (id, c) in per_worker(admin) {
        for (reason, n) in UpstreamError::LABELS.iter().zip(&c.errors) {
            let _ = writeln!(
                out,
                "sticky_cluster_upstream_errors_total{{worker=\"{id}\",reason=\"{reason}\"}} {}",
                get(n)
            );
        }
    }
    family(
        out,
        "sticky_cluster_resends_total",
        "counter",
        "Requests sent again after a failure on a worker: to the same worker, or to another.",
    );
    for (id, c) in per_worker(admin) {
        for (to, n) in Resent::LABELS.iter().zip(&c.resends) {
            let _ = writeln!(
                out,
                "sticky_cluster_resends_total{{worker=\"{id}\",to=\"{to}\"}} {}",
                get(n)
            );
        }
    }
}

fn routing(out: &mut String, admin: &Admin) {
    let c = counters();
    family(
        out,
        "sticky_cluster_routing_total",
        "counter",
        "Routing decisions (a resend to another worker is one more).",
    );
    for (label, n) in Routed::LABELS.iter().zip(&c.routing) {
        let _ = writeln!(
            out,
            "sticky_cluster_routing_total{{decision=\"{label}\"}} {}",
            get(n)
        );
    }
    family(
        out,
        "sticky_cluster_sessions",
        "gauge",
        "Keys in the sticky table.",
    );
    let _ = writeln!(out, "sticky_cluster_sessions {}", admin.table.len());
    family(
        out,
        "sticky_cluster_sessions_evicted_total",
        "counter",
        "Keys dropped because the sticky table was full.",
    );
    let _ = writeln!(
        out,
        "sticky_cluster_sessions_evicted_total {}",
        get(&c.evicted)
    );
    family(
        out,
        "sticky_cluster_sessions_learned_total",
        "counter",
        "Keys learnt, by source.",
    );
    for (label, n) in Learned::LABELS.iter().zip(&c.learned) {
        let _ = writeln!(
            out,
            "sticky_cluster_sessions_learned_total{{source=\"{label}\"}} {}",
            get(n)
        );
    }
    family(
        out,
        "sticky_cluster_refused_total",
        "counter",
        "Requests or connections refused, by reason (overloaded: shed at --max-pending).",
    );
    for (label, n) in Refused::LABELS.iter().zip(&c.refused) {
        let _ = writeln!(
            out,
            "sticky_cluster_refused_total{{reason=\"{label}\"}} {}",
            get(n)
        );
    }
}

fn workers(out: &mut String, admin: &Admin) {
    let w = &admin.workers;
    family(
        out,
        "sticky_cluster_worker_up",
        "gauge",
        "1 when the worker takes requests (up and healthy).",
    );
    for id in w.worker_ids() {
        let _ = writeln!(
            out,
            "sticky_cluster_worker_up{{worker=\"{id}\"}} {}",
            u8::from(w.is_up(id))
        );
    }
    family(
        out,
        "sticky_cluster_worker_drained",
        "gauge",
        "1 when an operator drained the worker (no new sessions).",
    );
    for id in w.worker_ids() {
        let _ = writeln!(
            out,
            "sticky_cluster_worker_drained{{worker=\"{id}\"}} {}",
            u8::from(w.is_drained(id))
        );
    }
    family(
        out,
        "sticky_cluster_worker_restarts_total",
        "counter",
        "Restarts after the worker's process exited.",
    );
    for id in w.worker_ids() {
        let _ = writeln!(
            out,
            "sticky_cluster_worker_restarts_total{{worker=\"{id}\"}} {}",
            w.restarts(id)
        );
    }
    family(
        out,
        "sticky_cluster_worker_replacements_total",
        "counter",
        "Processes replaced by a rolling restart (reload).",
    );
    for id in w.worker_ids() {
        let _ = writeln!(
            out,
            "sticky_cluster_worker_replacements_total{{worker=\"{id}\"}} {}",
            w.replacements(id)
        );
    }
    family(
        out,
        "sticky_cluster_worker_in_flight",
        "gauge",
        "Requests and tunnels in flight on the worker.",
    );
    for id in w.worker_ids() {
        let _ = writeln!(
            out,
            "sticky_cluster_worker_in_flight{{worker=\"{id}\"}} {}",
            w.in_flight_total(id)
        );
    }
    retiring(out, admin);
}

/// The retiring processes of session drains: their live sessions, labelled with the pid.
fn retiring(out: &mut String, admin: &Admin) {
    family(
        out,
        "sticky_cluster_worker_retiring_sessions",
        "gauge",
        "Sessions pinned to a worker's retiring (old) process and active within --drain-idle.",
    );
    for id in admin.workers.worker_ids() {
        let (Some(r), Some(live)) = (
            admin.workers.retiring(id),
            super::status::live_sessions(admin, id),
        ) else {
            continue;
        };
        let _ = writeln!(
            out,
            "sticky_cluster_worker_retiring_sessions{{worker=\"{id}\",pid=\"{}\"}} {live}",
            r.pid
        );
    }
}

fn connections(out: &mut String) {
    let c = counters();
    family(
        out,
        "sticky_cluster_connections",
        "gauge",
        "Open client connections by protocol (WebSocket: open tunnels).",
    );
    for (label, n) in Protocol::LABELS.iter().zip(&c.connections) {
        let _ = writeln!(
            out,
            "sticky_cluster_connections{{protocol=\"{label}\"}} {}",
            n.load(Ordering::Relaxed).max(0)
        );
    }
    if let Some(log) = crate::access_log::get() {
        family(
            out,
            "sticky_cluster_access_log_dropped_total",
            "counter",
            "Access-log lines dropped because the writer was behind.",
        );
        let _ = writeln!(
            out,
            "sticky_cluster_access_log_dropped_total {}",
            log.dropped()
        );
    }
    family(
        out,
        "sticky_cluster_tls_handshakes_total",
        "counter",
        "Completed TLS handshakes.",
    );
    let _ = writeln!(
        out,
        "sticky_cluster_tls_handshakes_total {}",
        get(&c.tls_handshakes)
    );
    family(
        out,
        "sticky_cluster_tls_handshake_failures_total",
        "counter",
        "Failed or timed-out TLS handshakes.",
    );
    let _ = writeln!(
        out,
        "sticky_cluster_tls_handshake_failures_total {}",
        get(&c.tls_failures)
    );
}

fn process(out: &mut String, admin: &Admin) {
    if let Some(bytes) = resident_bytes() {
        family(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of the master process.",
        );
        let _ = writeln!(out, "process_resident_memory_bytes {bytes}");
    }
    if let Some(seconds) = cpu_seconds() {
        family(
            out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time of the master process.",
        );
        let _ = writeln!(out, "process_cpu_seconds_total {seconds}");
    }
    let start = admin
        .started_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    family(
        out,
        "process_start_time_seconds",
        "gauge",
        "Start time of the master, in seconds since the epoch.",
    );
    let _ = writeln!(out, "process_start_time_seconds {start}");
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// User plus system CPU time of this process.
fn cpu_seconds() -> Option<f64> {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).ok()?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Some(secs(usage.user_time()) + secs(usage.system_time()))
}
