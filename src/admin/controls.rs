//! The controls: a rolling restart, draining a worker, and which worker holds a key.

use http::{Response, StatusCode};
use serde_json::json;

use super::{json, Admin, Body};

/// `POST /reload`: the same rolling restart as SIGHUP.
pub fn reload(admin: &Admin) -> Response<Body> {
    if admin.reload.send(()).is_err() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "shutting down: no reload"}),
        );
    }
    tracing::info!("admin: reload requested");
    json(
        StatusCode::ACCEPTED,
        &json!({"reload": "started", "workers": admin.workers.len()}),
    )
}

/// `POST /workers/{id}/drain` and `/undrain`.
pub fn drain(admin: &Admin, id: &str, action: &str) -> Response<Body> {
    let drained = match action {
        "drain" => true,
        "undrain" => false,
        _ => {
            return json(
                StatusCode::NOT_FOUND,
                &json!({"error": "expected drain or undrain"}),
            )
        }
    };
    let Some(worker) = id
        .parse::<u16>()
        .ok()
        .filter(|&w| usize::from(w) < admin.workers.len())
    else {
        return json(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no worker {id:?}: ids are 0..{}", admin.workers.len())}),
        );
    };
    admin.workers.set_drained(worker, drained);
    tracing::info!(
        worker,
        drained,
        "admin: worker {}",
        if drained { "drained" } else { "undrained" }
    );
    json(
        StatusCode::OK,
        &json!({"worker": worker, "drained": drained}),
    )
}

/// `GET /sessions/{key}`: the worker the sticky table holds for a key (percent-decoded;
/// an IP address is also looked up as the `ip` key source stores it).
pub fn session(admin: &Admin, key: &str) -> Response<Body> {
    let key = percent_decode(key);
    let now = admin.table.now();
    let found = admin.table.peek(admin.table.hash(&key), now).or_else(|| {
        let ip: std::net::IpAddr = std::str::from_utf8(&key).ok()?.parse().ok()?;
        let octets = match crate::routing::key::canonical_ip(ip) {
            std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
            std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        admin.table.peek(admin.table.hash(&octets), now)
    });
    let shown = String::from_utf8_lossy(&key);
    match found {
        Some(worker) => json(StatusCode::OK, &json!({"key": shown, "worker": worker})),
        None => json(
            StatusCode::NOT_FOUND,
            &json!({"key": shown, "worker": null}),
        ),
    }
}

/// `%XX` escapes decoded; anything malformed is kept as it is.
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_decoded() {
        assert_eq!(percent_decode("a%2Fb%3d"), b"a/b=");
        assert_eq!(percent_decode("100%"), b"100%");
        assert_eq!(percent_decode("%zz"), b"%zz");
    }
}
