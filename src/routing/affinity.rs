//! The affinity cookie: an opaque token per worker that the proxy can verify.
//!
//! Token of worker `i` = first 16 bytes of HMAC-SHA256(secret, "sticky-cluster/affinity/v1/" +
//! i), in hex. Tokens are computed once at start, so verifying a request costs a few
//! constant-time 32-byte compares and no hashing. Without the secret a client can neither
//! read a worker index out of the cookie nor forge one to probe a chosen worker, and because
//! the secret survives restarts (config, environment, or a file written once) a proxy restart
//! does not move anyone.

use std::io::Write;
use std::path::{Path, PathBuf};

use http::HeaderValue;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::workers::WorkerId;

const TOKEN_BYTES: usize = 16;
const TOKEN_LEN: usize = TOKEN_BYTES * 2;

/// Why the affinity secret could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The secret file exists but cannot be read, or cannot be created.
    #[error("cannot use affinity secret file {path}: {source}; set --affinity-secret (or STICKY_CLUSTER_SECRET) or point --secret-file at a writable place")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The secret file is empty or the configured secret is too short.
    #[error("affinity secret from {origin} is shorter than 16 bytes: use a longer one")]
    TooShort {
        /// Where it came from.
        origin: String,
    },
    /// No randomness for a new secret.
    #[error("cannot generate an affinity secret: the system random source failed")]
    Random,
}

/// The per-worker tokens and the `Set-Cookie` values that carry them.
#[derive(Debug, Clone)]
pub struct Affinity {
    name: String,
    tokens: Vec<[u8; TOKEN_LEN]>,
    set_cookie: Vec<HeaderValue>,
}

impl Affinity {
    /// Tokens for `workers` workers, each labelled by its index, under `secret`; `secure`
    /// adds the `Secure` attribute.
    pub fn new(name: &str, secret: &[u8], workers: usize, secure: bool) -> Self {
        let labels: Vec<String> = (0..workers).map(|i| i.to_string()).collect();
        Self::labelled(name, secret, &labels, secure)
    }

    /// Tokens for workers labelled `labels` (slot `i` is `labels[i]`): a label that names a
    /// worker the same way on every proxy (an upstream's address) gives a token every proxy
    /// with the same secret verifies, whatever the order of its worker list.
    pub fn labelled(name: &str, secret: &[u8], labels: &[String], secure: bool) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let tokens: Vec<[u8; TOKEN_LEN]> = labels
            .iter()
            .map(|label| {
                let tag = hmac::sign(
                    &key,
                    format!("sticky-cluster/affinity/v1/{label}").as_bytes(),
                );
                hex(&tag.as_ref()[..TOKEN_BYTES])
            })
            .collect();
        let attrs = if secure {
            "; Path=/; HttpOnly; SameSite=Lax; Secure"
        } else {
            "; Path=/; HttpOnly; SameSite=Lax"
        };
        let set_cookie = tokens
            .iter()
            .map(|t| {
                let text = format!("{name}={}{attrs}", String::from_utf8_lossy(t));
                // The name was validated as a cookie token and the value is hex.
                HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
            })
            .collect();
        Self {
            name: name.to_string(),
            tokens,
            set_cookie,
        }
    }

    /// The cookie's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The worker a cookie value names, if it is a valid token.
    pub fn verify(&self, value: &[u8]) -> Option<WorkerId> {
        let value: &[u8; TOKEN_LEN] = value.try_into().ok()?;
        let mut found = None;
        for (i, token) in self.tokens.iter().enumerate() {
            if constant_time_eq(token, value) {
                found = Some(i as WorkerId);
            }
        }
        found
    }

    /// The `Set-Cookie` value that pins a client to `worker`.
    pub fn set_cookie(&self, worker: WorkerId) -> Option<&HeaderValue> {
        self.set_cookie.get(usize::from(worker))
    }

    /// The raw token of a worker (for tests and tools).
    pub fn token(&self, worker: WorkerId) -> Option<&str> {
        self.tokens
            .get(usize::from(worker))
            .and_then(|t| std::str::from_utf8(t).ok())
    }
}

fn constant_time_eq(a: &[u8; TOKEN_LEN], b: &[u8; TOKEN_LEN]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex<const N: usize>(bytes: &[u8]) -> [u8; N] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'0'; N];
    for (i, b) in bytes.iter().take(N / 2).enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 15)];
    }
    out
}

/// The secret: the configured one, else the one kept in `file`, else a new one written there.
///
/// # Errors
/// A secret that is too short, or a file that cannot be read or created.
pub fn load_secret(configured: Option<&str>, file: &Path) -> Result<Vec<u8>, SecretError> {
    if let Some(s) = configured {
        if s.len() < 16 {
            return Err(SecretError::TooShort {
                origin: "--affinity-secret / STICKY_CLUSTER_SECRET".into(),
            });
        }
        return Ok(s.as_bytes().to_vec());
    }
    let file_err = |source| SecretError::File {
        path: file.to_path_buf(),
        source,
    };
    match std::fs::read(file) {
        Ok(bytes) => {
            let trimmed = bytes.trim_ascii().to_vec();
            if trimmed.len() < 16 {
                return Err(SecretError::TooShort {
                    origin: file.display().to_string(),
                });
            }
            return Ok(trimmed);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(file_err(e)),
    }
    let mut raw = [0u8; 32];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| SecretError::Random)?;
    let secret: [u8; 64] = hex(&raw);
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .create(dir)
            .map_err(file_err)?;
    }
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
    {
        Ok(mut f) => {
            f.write_all(&secret).map_err(file_err)?;
            Ok(secret.to_vec())
        }
        // Another process created it first: use theirs, so both agree.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_secret(None, file),
        Err(e) => Err(file_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_forgeries_do_not() {
        let a = Affinity::new("sticky.worker", b"0123456789abcdef-secret", 4, false);
        for w in 0..4 {
            let token = a.token(w).expect("token").to_string();
            assert_eq!(a.verify(token.as_bytes()), Some(w));
            assert!(!token.contains(&format!("{w}")) || token.len() == 32);
        }
        assert_eq!(a.verify(b"0"), None);
        assert_eq!(a.verify(b"1"), None);
        assert_eq!(a.verify(&[b'a'; 32]), None);
        let other = Affinity::new("sticky.worker", b"another-secret-0123456", 4, false);
        let foreign = other.token(1).expect("token").to_string();
        assert_eq!(
            a.verify(foreign.as_bytes()),
            None,
            "a different secret's token"
        );
    }

    #[test]
    fn set_cookie_carries_the_attributes() {
        let a = Affinity::new("aff", b"0123456789abcdef", 2, true);
        let v = a.set_cookie(1).expect("cookie").to_str().expect("ascii");
        assert!(v.starts_with("aff="), "{v}");
        assert!(v.contains("HttpOnly") && v.contains("SameSite=Lax") && v.contains("Secure"));
        assert!(a.set_cookie(2).is_none());
    }

    #[test]
    fn secret_file_is_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("sc-secret-{}", std::process::id()));
        let file = dir.join("nested/affinity.key");
        let first = load_secret(None, &file).expect("created");
        let second = load_secret(None, &file).expect("read back");
        assert_eq!(first, second);
        assert!(load_secret(Some("short"), &file).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
