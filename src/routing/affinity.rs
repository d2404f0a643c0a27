//! The affinity cookie: an opaque token per worker that the proxy can verify.
//!
//! Token of worker `i` = first 16 bytes of HMAC-SHA256(secret, "sticky-cluster/affinity/v1/" +
//! label), in hex, where the label is the slot index of a spawned worker and the address of
//! an upstream. Tokens are computed once at start (a discovered worker's when discovery
//! gives its slot an address), so verifying a request decodes 32 hex digits and costs a
//! constant-time compare of two words per worker, and no hashing. Without the secret a client can neither
//! read a worker index out of the cookie nor forge one to probe a chosen worker, and because
//! the secret survives restarts (config, environment, or a file written once) a proxy restart
//! does not move anyone.

use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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
#[derive(Debug)]
pub struct Affinity {
    name: String,
    key: hmac::Key,
    attrs: &'static str,
    /// Each slot's token, raw; all zeros: the slot has none (a vacant discovered slot).
    tokens: Box<[Token]>,
    /// The `Set-Cookie` value of each slot labelled at start (`None`: labelled later, its
    /// value is built when asked).
    fixed: Vec<Option<HeaderValue>>,
}

/// A raw token as two words, so a discovered slot's token can change under readers.
#[derive(Debug, Default)]
struct Token([AtomicU64; 2]);

impl Token {
    #[inline]
    fn words(&self) -> [u64; 2] {
        [
            self.0[0].load(Ordering::Acquire),
            self.0[1].load(Ordering::Acquire),
        ]
    }
}

impl Affinity {
    /// Tokens for `workers` workers, each labelled by its index, under `secret`; `secure`
    /// adds the `Secure` attribute.
    pub fn new(name: &str, secret: &[u8], workers: usize, secure: bool) -> Self {
        Self::labelled(
            name,
            secret,
            (0..workers).map(|i| Some(i.to_string())),
            secure,
        )
    }

    /// Tokens for workers labelled `labels` (slot `i` is `labels[i]`; `None`: no token
    /// until [`relabel`](Self::relabel)): a label that names a worker the same way on every
    /// proxy (an upstream's address) gives a token every proxy with the same secret
    /// verifies, whatever the order of its worker list.
    pub fn labelled(
        name: &str,
        secret: &[u8],
        labels: impl IntoIterator<Item = Option<String>>,
        secure: bool,
    ) -> Self {
        let attrs = if secure {
            "; Path=/; HttpOnly; SameSite=Lax; Secure"
        } else {
            "; Path=/; HttpOnly; SameSite=Lax"
        };
        let mut a = Self {
            name: name.to_string(),
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            attrs,
            tokens: Box::default(),
            fixed: Vec::new(),
        };
        let labels: Vec<Option<String>> = labels.into_iter().collect();
        a.tokens = labels.iter().map(|_| Token::default()).collect();
        for (i, label) in labels.iter().enumerate() {
            a.store(i, label.as_deref());
        }
        a.fixed = (0..labels.len())
            .map(|i| labels[i].as_ref().and_then(|_| a.build_cookie(i)))
            .collect();
        a
    }

    /// Gives slot `worker`, which had no label at start, the token of `label` (`None`: no
    /// token; its cookies stop verifying). Discovery calls it when a slot's address changes.
    pub fn relabel(&self, worker: WorkerId, label: Option<&str>) {
        let i = usize::from(worker);
        debug_assert!(self.fixed.get(i).is_none_or(Option::is_none));
        if self.fixed.get(i).is_some_and(Option::is_some) {
            return;
        }
        self.store(i, label);
    }

    fn store(&self, i: usize, label: Option<&str>) {
        let Some(token) = self.tokens.get(i) else {
            return;
        };
        let words = label.map_or([0, 0], |label| {
            let tag = hmac::sign(
                &self.key,
                format!("sticky-cluster/affinity/v1/{label}").as_bytes(),
            );
            let raw = &tag.as_ref()[..TOKEN_BYTES];
            let word = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
            [word(&raw[..8]), word(&raw[8..])]
        });
        // A reader between the two stores sees a mix no client holds: no match.
        token.0[0].store(words[0], Ordering::Release);
        token.0[1].store(words[1], Ordering::Release);
    }

    /// The cookie's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The worker a cookie value names, if it is a valid token.
    pub fn verify(&self, value: &[u8]) -> Option<WorkerId> {
        let value: &[u8; TOKEN_LEN] = value.try_into().ok()?;
        let words = unhex(value)?;
        let mut found = None;
        for (i, token) in self.tokens.iter().enumerate() {
            let [a, b] = token.words();
            if ((a ^ words[0]) | (b ^ words[1])) == 0 && (a | b) != 0 {
                found = Some(i as WorkerId);
            }
        }
        found
    }

    /// The `Set-Cookie` value that pins a client to `worker`: made at start for the
    /// slots labelled then, built here for a discovered slot.
    #[inline]
    pub fn set_cookie(&self, worker: WorkerId) -> Option<Cow<'_, HeaderValue>> {
        match self.fixed.get(usize::from(worker))? {
            Some(value) => Some(Cow::Borrowed(value)),
            None => self.build_cookie(usize::from(worker)).map(Cow::Owned),
        }
    }

    fn build_cookie(&self, i: usize) -> Option<HeaderValue> {
        let token = self.hex_token(i)?;
        let text = format!(
            "{}={}{}",
            self.name,
            String::from_utf8_lossy(&token),
            self.attrs
        );
        // The name was validated as a cookie token and the value is hex.
        HeaderValue::from_str(&text).ok()
    }

    fn hex_token(&self, i: usize) -> Option<[u8; TOKEN_LEN]> {
        let [a, b] = self.tokens.get(i)?.words();
        if a | b == 0 {
            return None;
        }
        let mut raw = [0u8; TOKEN_BYTES];
        raw[..8].copy_from_slice(&a.to_be_bytes());
        raw[8..].copy_from_slice(&b.to_be_bytes());
        Some(hex(&raw))
    }

    /// The token of a worker, in hex (for tests and tools).
    pub fn token(&self, worker: WorkerId) -> Option<String> {
        self.hex_token(usize::from(worker))
            .map(|t| String::from_utf8_lossy(&t).into_owned())
    }
}

/// The two words of a lowercase hex token; `None` for any other byte.
fn unhex(value: &[u8; TOKEN_LEN]) -> Option<[u64; 2]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(u64::from(c - b'0')),
        b'a'..=b'f' => Some(u64::from(c - b'a' + 10)),
        _ => None,
    };
    let mut words = [0u64; 2];
    for (i, &c) in value.iter().enumerate() {
        let w = &mut words[i / 16];
        *w = (*w << 4) | digit(c)?;
    }
    Some(words)
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
        let cookie = a.set_cookie(1).expect("cookie");
        let v = cookie.to_str().expect("ascii");
        assert!(v.starts_with("aff="), "{v}");
        assert!(v.contains("HttpOnly") && v.contains("SameSite=Lax") && v.contains("Secure"));
        assert!(a.set_cookie(2).is_none());
    }

    #[test]
    fn a_relabelled_slot_gets_the_token_of_its_new_label_and_the_old_one_stops_verifying() {
        let secret = b"0123456789abcdef-secret";
        let a = Affinity::labelled("aff", secret, [Some("0".to_string()), None], false);
        assert!(a.token(1).is_none() && a.set_cookie(1).is_none());
        a.relabel(1, Some("[::1]:3000"));
        let first = a.token(1).expect("a token");
        assert_eq!(a.verify(first.as_bytes()), Some(1));
        let listed = Affinity::labelled("aff", secret, [Some("[::1]:3000".to_string())], false);
        assert_eq!(
            listed.token(0).as_deref(),
            Some(first.as_str()),
            "labels, not slots"
        );
        let cookie = a.set_cookie(1).expect("built");
        assert_eq!(
            cookie.to_str().unwrap(),
            format!("aff={first}; Path=/; HttpOnly; SameSite=Lax")
        );
        a.relabel(1, Some("10.0.0.7:3000"));
        assert_eq!(a.verify(first.as_bytes()), None);
        a.relabel(1, None);
        assert!(a.token(1).is_none());
        assert_eq!(
            a.verify(&[b'0'; 32]),
            None,
            "an empty slot matches no all-zero token"
        );
        assert_eq!(a.verify(first.to_uppercase().as_bytes()), None);
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
