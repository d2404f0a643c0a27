//! The runtime file: where a running master's admin listener is, so that
//! `sticky-cluster status` finds it from the proxy port alone. It holds no secret.
//!
//! `$XDG_RUNTIME_DIR/sticky-cluster/admin-<proxy port>.json`, or without
//! `XDG_RUNTIME_DIR` the same name next to the `--secret-file`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The runtime file of the master whose proxy listens on `proxy_port`.
pub fn path(proxy_port: u16, secret_file: &Path) -> PathBuf {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("sticky-cluster"),
        None => secret_file
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
    };
    dir.join(format!("admin-{proxy_port}.json"))
}

/// Removes the runtime file when dropped.
#[derive(Debug)]
pub struct RuntimeFile(PathBuf);

impl RuntimeFile {
    /// Writes the file (best effort: a warning when it cannot).
    pub fn write(path: PathBuf, admin: SocketAddr, proxy_port: u16) -> Option<Self> {
        let body = serde_json::json!({
            "admin": admin.to_string(),
            "proxy_port": proxy_port,
            "pid": std::process::id(),
        });
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, body.to_string()));
        match written {
            Ok(()) => Some(Self(path)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the admin runtime file; `sticky-cluster status` will need --admin");
                None
            }
        }
    }
}

impl Drop for RuntimeFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The admin address a runtime file names.
///
/// # Errors
/// The file is missing or unreadable, in words.
pub fn read(path: &Path) -> Result<SocketAddr, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "no running instance found ({}: {e}): is it running with --admin? else pass --admin ADDR",
            path.display()
        )
    })?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a runtime file: {e}", path.display()))?;
    value["admin"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("{} names no admin address", path.display()))
}
