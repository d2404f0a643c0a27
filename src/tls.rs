//! TLS termination settings for the proxy: the rustls [`ServerConfig`] built from PEM files
//! (`--tls-cert`, `--tls-key`; express-sticky-cluster's `ssl.secure` + `ssl.certs`), and
//! [`TlsReloader`], which swaps in renewed files without a restart.
//!
//! Owns reading and checking the files: the certificate file holds a chain (leaf first), the
//! key file a PKCS#8, PKCS#1 (RSA) or SEC1 (EC) key, and the key must belong to the leaf.
//! Every error names the file and says what to do. An expired (or not yet valid) certificate
//! still loads, with a warning: refusing to start would turn a late renewal into an outage.
//! The ring provider is passed in explicitly; nothing depends on a process-wide default.

use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::server::ServerSessionMemoryCache;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{InconsistentKeys, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The ALPN protocols the proxy offers, in order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Largest certificate or key file we read; real ones are a few KiB.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// The shortest poll interval [`watch_files`] accepts, so a zero never spins.
const MIN_POLL: Duration = Duration::from_millis(10);

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file is missing or unreadable.
    #[error(
        "cannot read {what} file {path}: {source}; check the path and that this user may read it"
    )]
    Read {
        /// `"certificate"` or `"private key"`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is far larger than any certificate or key.
    #[error("{what} file {path} is larger than 1 MiB: point the path at the PEM file itself")]
    TooLarge {
        /// `"certificate"` or `"private key"`.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A PEM section is broken (bad base64, no END line).
    #[error("malformed PEM in {path}: {detail}; re-export the file")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        detail: String,
    },
    /// The certificate file holds no `CERTIFICATE` section.
    #[error("no PEM certificate found in {path}: expected \"-----BEGIN CERTIFICATE-----\" sections, leaf first{hint}")]
    NoCertificate {
        /// The file.
        path: PathBuf,
        /// Empty, or `": ..."` with a likely cause.
        hint: &'static str,
    },
    /// A `CERTIFICATE` section does not hold an X.509 certificate.
    #[error("invalid certificate in {path}: {detail}; re-export the chain as PEM, leaf first")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        detail: String,
    },
    /// The key file holds no private key section.
    #[error("no private key found in {path}: expected \"-----BEGIN PRIVATE KEY-----\", \"-----BEGIN RSA PRIVATE KEY-----\" or \"-----BEGIN EC PRIVATE KEY-----\"{hint}")]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
        /// Empty, or `": ..."` with a likely cause.
        hint: &'static str,
    },
    /// The key is of a type (or curve, or size) rustls with ring cannot sign with, or is
    /// corrupt.
    #[error("unsupported or corrupt {format} private key in {path}: use an RSA (2048 to 8192 bits), ECDSA P-256/P-384 or Ed25519 key")]
    UnsupportedKey {
        /// The file.
        path: PathBuf,
        /// `"PKCS#8"`, `"PKCS#1 RSA"` or `"SEC1 EC"`.
        format: &'static str,
    },
    /// The key belongs to none of the certificates.
    #[error("private key {key} does not match certificate {cert}: use the key the certificate was issued for")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The key belongs to a certificate that is not the first in the file.
    #[error("private key {key} matches certificate {position} in {cert}, not the first: put the server (leaf) certificate first, then its intermediates")]
    LeafNotFirst {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// 1-based position of the matching certificate.
        position: usize,
    },
    /// rustls refused the configuration (not expected with the ring provider).
    #[error("cannot build a TLS configuration from {cert}: {detail}")]
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// What rustls said.
        detail: String,
    },
}

/// Loads a rustls [`ServerConfig`] from PEM files, using the ring provider explicitly.
///
/// `cert` holds the certificate chain, leaf first; `key` holds a PKCS#8, PKCS#1 (RSA) or
/// SEC1 (EC) private key, which must belong to the leaf. ALPN offers `h2`, then `http/1.1`.
/// An expired or not yet valid leaf is logged with `tracing::warn!` and still loaded.
///
/// # Errors
/// A [`TlsError`] naming the file: unreadable, no certificate, no key, unsupported key,
/// key not matching the certificate.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let chain = read_chain(cert)?;
    let key_der = read_key(key)?;
    let format = key_format(&key_der);
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|_| TlsError::UnsupportedKey {
            path: key.to_owned(),
            format,
        })?;

    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // `Unknown`: the key cannot tell its public half; rustls accepts that too.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(mismatch(&certified, cert, key))
        }
        Err(e) => {
            return Err(TlsError::BadCertificate {
                path: cert.to_owned(),
                detail: e.to_string(),
            })
        }
    }
    if let Some(leaf) = certified.cert.first() {
        warn_if_out_of_date(cert, leaf);
    }

    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config {
            cert: cert.to_owned(),
            detail: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    if let Some(ticketer) = ticketer() {
        config.ticketer = ticketer;
    }
    Ok(config)
}

/// Sessions kept for resumption by clients without tickets (TLS 1.2 session ids); rustls
/// keeps 256 by default, too few for a proxy's clients.
const SESSION_CACHE: usize = 8192;

/// The session-ticket key set of this process, one for every certificate reload so a reload
/// does not end resumption (keys rotate every six hours, the previous one still accepted).
/// `None` (logged once) when no key could be made: resumption then uses the cache alone.
fn ticketer() -> Option<Arc<dyn rustls::server::ProducesTickets>> {
    static TICKETER: std::sync::OnceLock<Option<Arc<dyn rustls::server::ProducesTickets>>> =
        std::sync::OnceLock::new();
    TICKETER
        .get_or_init(|| {
            rustls::crypto::ring::Ticketer::new()
                .inspect_err(|e| tracing::warn!(error = %e, "no TLS session tickets: clients resume from the session cache only"))
                .ok()
        })
        .clone()
}

/// The error for a key that does not belong to the leaf: names the certificate it does
/// belong to when that one is further down the file.
fn mismatch(certified: &CertifiedKey, cert: &Path, key: &Path) -> TlsError {
    let belongs_to = certified.cert.iter().skip(1).position(|other| {
        CertifiedKey::new(vec![other.clone()], Arc::clone(&certified.key))
            .keys_match()
            .is_ok()
    });
    match belongs_to {
        Some(index) => TlsError::LeafNotFirst {
            cert: cert.to_owned(),
            key: key.to_owned(),
            position: index + 2,
        },
        None => TlsError::KeyMismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
        },
    }
}

/// Reads a whole PEM file, refusing anything over [`MAX_FILE_BYTES`].
fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    let read_error = |source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(TlsError::TooLarge {
            what,
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// The certificate chain in `path`, leaf first; never empty.
pub(crate) fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(path, "certificate")?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(path, &e))?;
    if chain.is_empty() {
        let hint = if bytes.iter().all(u8::is_ascii_whitespace) {
            ": the file is empty"
        } else if PrivateKeyDer::from_pem_slice(&bytes).is_ok() {
            ": it holds a private key; are the certificate and key paths swapped?"
        } else if !contains(&bytes, b"-----BEGIN ") {
            ": it is not PEM; convert a DER certificate with `openssl x509 -inform der -in FILE -out cert.pem`"
        } else {
            ""
        };
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
            hint,
        });
    }
    Ok(chain)
}

/// The first private key in `path`.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file(path, "private key")?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => {
            let hint = if bytes.iter().all(u8::is_ascii_whitespace) {
                ": the file is empty"
            } else if contains(&bytes, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") {
                ": the key is encrypted; decrypt it with `openssl pkey -in FILE -out key.pem`"
            } else if CertificateDer::from_pem_slice(&bytes).is_ok() {
                ": it holds a certificate; are the certificate and key paths swapped?"
            } else if !contains(&bytes, b"-----BEGIN ") {
                ": it is not PEM; convert a DER key with `openssl pkey -inform der -in FILE -out key.pem`"
            } else {
                ""
            };
            Err(TlsError::NoPrivateKey {
                path: path.to_owned(),
                hint,
            })
        }
        Err(e) => Err(bad_pem(path, &e)),
    }
}

fn bad_pem(path: &Path, error: &pem::Error) -> TlsError {
    TlsError::BadPem {
        path: path.to_owned(),
        detail: error.to_string(),
    }
}

fn key_format(key: &PrivateKeyDer<'_>) -> &'static str {
    match key {
        PrivateKeyDer::Pkcs8(_) => "PKCS#8",
        PrivateKeyDer::Pkcs1(_) => "PKCS#1 RSA",
        PrivateKeyDer::Sec1(_) => "SEC1 EC",
        _ => "unknown",
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Warns when the leaf is expired or not valid yet; serving it beats serving nothing.
fn warn_if_out_of_date(path: &Path, leaf: &CertificateDer<'_>) {
    let Some(validity) = validity(leaf) else {
        tracing::debug!(cert = %path.display(), "cannot read the certificate's validity dates");
        return;
    };
    let Ok(now) = SystemTime::now().duration_since(UNIX_EPOCH) else {
        return;
    };
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    if validity.not_after.unix_seconds() < now {
        tracing::warn!(
            cert = %path.display(),
            not_after = %validity.not_after,
            "TLS certificate has expired; serving it anyway, but clients will refuse it: renew it"
        );
    } else if validity.not_before.unix_seconds() > now {
        tracing::warn!(
            cert = %path.display(),
            not_before = %validity.not_before,
            not_after = %validity.not_after,
            "TLS certificate is not valid yet; serving it anyway: check the system clock"
        );
    }
}

/// A reloadable TLS acceptor: the current configuration, swapped only for one that loads.
///
/// Cheap to share behind an `Arc`: [`acceptor`](Self::acceptor) clones an `Arc`; the locks
/// are std locks held only for a swap or a clone, never across an `.await`.
#[derive(Debug)]
pub struct TlsReloader {
    cert: PathBuf,
    key: PathBuf,
    /// The last configuration that loaded.
    current: RwLock<Arc<ServerConfig>>,
    /// The files' stamps at the last load attempt. Held for the whole of a reload, so
    /// concurrent reloads cannot swap in an older read last.
    seen: Mutex<Stamps>,
}

/// What [`TlsReloader::files_changed`] compares: modification time and length per file,
/// `None` when the file could not be stat'ed.
type Stamps = [Option<(Option<SystemTime>, u64)>; 2];

impl TlsReloader {
    /// Loads the certificate chain and key (see [`load_server_config`]).
    ///
    /// # Errors
    /// The [`TlsError`] of the first load: the proxy should not start without a certificate.
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<Self, TlsError> {
        let seen = stamps(&cert, &key);
        let config = load_server_config(&cert, &key)?;
        Ok(Self {
            cert,
            key,
            current: RwLock::new(Arc::new(config)),
            seen: Mutex::new(seen),
        })
    }

    /// Re-reads both files and swaps in the new configuration if it loads; otherwise keeps
    /// serving the old one. Either way, [`files_changed`](Self::files_changed) is false
    /// afterwards until the files change again.
    ///
    /// # Errors
    /// The [`TlsError`] of the new files; the caller logs it.
    pub fn reload(&self) -> Result<(), TlsError> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        // Stamp before reading, so a write during the read shows up as a change next time.
        *seen = stamps(&self.cert, &self.key);
        let config = load_server_config(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
        Ok(())
    }

    /// An acceptor for the current configuration; connections accepted with it keep that
    /// configuration even after a reload.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config())
    }

    /// True when either file's modification time or length changed since the last
    /// (attempted) load; used by a poll loop to reload on file change.
    pub fn files_changed(&self) -> bool {
        let seen = *self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen != stamps(&self.cert, &self.key)
    }

    /// The current configuration.
    fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }
}

fn stamps(cert: &Path, key: &Path) -> Stamps {
    let stamp = |path: &Path| {
        std::fs::metadata(path)
            .ok()
            .map(|meta| (meta.modified().ok(), meta.len()))
    };
    [stamp(cert), stamp(key)]
}

/// Checks [`TlsReloader::files_changed`] every `every` (at least 10 ms) and reloads when
/// they did, logging success with `info` and failure with `warn` (the old certificate stays),
/// until `stop` resolves. Run it in its own task: `tokio::spawn(watch_files(r, every, stop))`.
/// The file checks and reads run on the blocking pool.
pub async fn watch_files(
    reloader: Arc<TlsReloader>,
    every: Duration,
    stop: impl Future<Output = ()>,
) {
    let every = every.max(MIN_POLL);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(every) => {}
        }
        let r = Arc::clone(&reloader);
        let outcome = tokio::task::spawn_blocking(move || r.files_changed().then(|| r.reload()));
        match outcome.await {
            Ok(None) => {}
            Ok(Some(Ok(()))) => tracing::info!(
                cert = %reloader.cert.display(),
                key = %reloader.key.display(),
                "reloaded the TLS certificate"
            ),
            Ok(Some(Err(e))) => tracing::warn!(
                error = %e,
                "cannot reload the TLS certificate; keeping the previous one"
            ),
            Err(e) => tracing::warn!(error = %e, "TLS certificate check failed"),
        }
    }
}

// A minimal DER walker for the leaf's validity dates. Everything is bounds-checked and
// returns None on anything unexpected; webpki has already parsed the leaf by then.

const TAG_INTEGER: u8 = 0x02;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_UTC_TIME: u8 = 0x17;
const TAG_GENERALIZED_TIME: u8 = 0x18;
/// `[0] EXPLICIT Version` in a TBSCertificate.
const TAG_VERSION: u8 = 0xa0;

/// A certificate's notBefore and notAfter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Validity {
    not_before: CertTime,
    not_after: CertTime,
}

/// A UTC date and time from a certificate, to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct CertTime {
    year: u16,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

/// Splits one DER element off `input`: `(tag, contents, rest)`. Only single-byte tags and
/// definite lengths of up to four bytes, which is all a certificate's outer layers use.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let bytes = rest.get(..count)?;
        let len = bytes.iter().try_fold(0usize, |len, &b| {
            len.checked_mul(256)?.checked_add(usize::from(b))
        })?;
        (len, rest.get(count..)?)
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

/// Like [`der_element`], but only an element tagged `tag`: `(contents, rest)`.
fn der_expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, contents, rest) = der_element(input)?;
    (found == tag).then_some((contents, rest))
}

/// Certificate → TBSCertificate → (version, serial, signature, issuer) → validity.
fn validity(cert_der: &[u8]) -> Option<Validity> {
    let (cert, _) = der_expect(cert_der, TAG_SEQUENCE)?;
    let (tbs, _) = der_expect(cert, TAG_SEQUENCE)?;
    let (tag, _, mut rest) = der_element(tbs)?;
    match tag {
        TAG_VERSION => rest = der_expect(rest, TAG_INTEGER)?.1,
        TAG_INTEGER => {}
        _ => return None,
    }
    let (_signature, rest) = der_expect(rest, TAG_SEQUENCE)?;
    let (_issuer, rest) = der_expect(rest, TAG_SEQUENCE)?;
    let (dates, _) = der_expect(rest, TAG_SEQUENCE)?;
    let (tag, not_before, rest) = der_element(dates)?;
    let not_before = CertTime::parse(tag, not_before)?;
    let (tag, not_after, _) = der_element(rest)?;
    let not_after = CertTime::parse(tag, not_after)?;
    Some(Validity {
        not_before,
        not_after,
    })
}

impl CertTime {
    /// Parses UTCTime `YYMMDDHHMMSSZ` (years 1950-2049) or GeneralizedTime
    /// `YYYYMMDDHHMMSSZ`, the two forms RFC 5280 allows.
    fn parse(tag: u8, text: &[u8]) -> Option<Self> {
        let (year, rest) = match (tag, text.len()) {
            (TAG_UTC_TIME, 13) => {
                let yy = u16::from(two_digits(text, 0)?);
                (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text.get(2..)?)
            }
            (TAG_GENERALIZED_TIME, 15) => {
                let century = u16::from(two_digits(text, 0)?);
                (
                    century * 100 + u16::from(two_digits(text, 2)?),
                    text.get(4..)?,
                )
            }
            _ => return None,
        };
        if rest.get(10) != Some(&b'Z') {
            return None;
        }
        let time = Self {
            year,
            month: two_digits(rest, 0)?,
            day: two_digits(rest, 2)?,
            hour: two_digits(rest, 4)?,
            minute: two_digits(rest, 6)?,
            second: two_digits(rest, 8)?,
        };
        let valid = (1..=12).contains(&time.month)
            && time.day >= 1
            && time.day <= days_in_month(time.year, time.month)
            && time.hour < 24
            && time.minute < 60
            && time.second < 60;
        valid.then_some(time)
    }

    /// Seconds since 1970-01-01T00:00:00Z.
    fn unix_seconds(self) -> i64 {
        // Howard Hinnant's days_from_civil, with March as the first month of the year.
        let year = i64::from(self.year) - i64::from(self.month <= 2);
        let era = year.div_euclid(400);
        let year_of_era = year - era * 400;
        let month_from_march = (i64::from(self.month) + 9) % 12;
        let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(self.day) - 1;
        let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
        let days = era * 146_097 + day_of_era - 719_468;
        days * 86_400
            + i64::from(self.hour) * 3_600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

impl fmt::Display for CertTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

fn two_digits(text: &[u8], at: usize) -> Option<u8> {
    match text.get(at..at.checked_add(2)?)? {
        [a, b] if a.is_ascii_digit() && b.is_ascii_digit() => Some((a - b'0') * 10 + (b - b'0')),
        _ => None,
    }
}

fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use proptest::prelude::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    use rustls::{ClientConfig, RootCertStore};
    use rustls_pki_types::ServerName;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A fresh PKCS#8 key from `openssl genpkey` (ring, and so rcgen, cannot generate RSA
    /// or P-521 keys). Made at test time so no private key is kept in the repository.
    fn openssl_key(args: &[&str]) -> String {
        let out = std::process::Command::new("openssl")
            .arg("genpkey")
            .args(args)
            .output()
            .expect("openssl must be installed for the TLS tests (CI installs it)");
        assert!(out.status.success(), "openssl genpkey {args:?} failed");
        String::from_utf8(out.stdout).expect("PEM is ASCII")
    }

    fn test_rsa_2048() -> String {
        openssl_key(&["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
    }

    fn test_p521() -> String {
        openssl_key(&["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"])
    }

    const TAG_OCTET_STRING: u8 = 0x04;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "sticky-cluster-tls-{test}-{}-{n}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A test CA that issues `localhost` server certificates.
    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    impl Ca {
        fn new() -> Self {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "sticky-cluster test CA");
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
            let cert = params.self_signed(&key).unwrap();
            Self { cert, key }
        }

        fn issue(&self, key: &KeyPair, name: &str) -> rcgen::Certificate {
            self.issue_with(key, name, |_| {})
        }

        fn issue_with(
            &self,
            key: &KeyPair,
            name: &str,
            edit: impl FnOnce(&mut CertificateParams),
        ) -> rcgen::Certificate {
            let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            edit(&mut params);
            params.signed_by(key, &self.cert, &self.key).unwrap()
        }

        /// The PEM file contents of `leaf` followed by this CA.
        fn chain_pem(&self, leaf: &rcgen::Certificate) -> String {
            format!("{}{}", leaf.pem(), self.cert.pem())
        }
    }

    fn pem(label: &str, der: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = String::new();
        for chunk in der.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    b64.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
                } else {
                    b64.push('=');
                }
            }
        }
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }

    fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match contents.len() {
            n @ 0..=0x7f => out.push(n as u8),
            n @ 0x80..=0xff => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(contents);
        out
    }

    /// The private key inside a PKCS#8 PrivateKeyInfo (PKCS#1 for RSA, SEC1 for EC), and
    /// the algorithm parameters (the curve OID for EC).
    fn unwrap_pkcs8(pkcs8: &[u8]) -> (&[u8], &[u8]) {
        let (info, _) = der_expect(pkcs8, TAG_SEQUENCE).unwrap();
        let (_version, rest) = der_expect(info, TAG_INTEGER).unwrap();
        let (algorithm, rest) = der_expect(rest, TAG_SEQUENCE).unwrap();
        let (_, _oid, parameters) = der_element(algorithm).unwrap();
        let (inner, _) = der_expect(rest, TAG_OCTET_STRING).unwrap();
        (inner, parameters)
    }

    /// A PKCS#1 `RSA PRIVATE KEY`, as `openssl rsa -traditional` writes it.
    fn pkcs1_pem(key: &KeyPair) -> String {
        let pkcs8 = key.serialize_der();
        pem("RSA PRIVATE KEY", unwrap_pkcs8(&pkcs8).0)
    }

    /// A SEC1 `EC PRIVATE KEY` with the curve in `[0]`, as `openssl ec` writes it.
    fn sec1_pem(key: &KeyPair) -> String {
        let pkcs8 = key.serialize_der();
        let (ec_private_key, curve) = unwrap_pkcs8(&pkcs8);
        let (fields, _) = der_expect(ec_private_key, TAG_SEQUENCE).unwrap();
        let (_, _, after_version) = der_element(fields).unwrap();
        let (_, _, after_secret) = der_element(after_version).unwrap();
        let head = &fields[..fields.len() - after_secret.len()];
        let mut body = head.to_vec();
        body.extend(der(0xa0, curve));
        body.extend_from_slice(after_secret); // [1] publicKey
        pem("EC PRIVATE KEY", &der(TAG_SEQUENCE, &body))
    }

    fn client_config(ca: &Ca, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A real handshake over 127.0.0.1: the chain the server presented and the protocol
    /// it chose.
    async fn handshake(
        acceptor: tokio_rustls::TlsAcceptor,
        ca: &Ca,
        alpn: &[&[u8]],
    ) -> (Vec<CertificateDer<'static>>, Option<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            // The client may already be gone (it only wanted the handshake).
            let _ = tls.shutdown().await;
        });
        let connector = tokio_rustls::TlsConnector::from(client_config(ca, alpn));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        let (_, connection) = tls.get_ref();
        let chain = connection.peer_certificates().unwrap().to_vec();
        let protocol = connection.alpn_protocol().map(<[u8]>::to_vec);
        drop(tls);
        server.await.unwrap();
        (chain, protocol)
    }

    /// One connection through `acceptor` with `client` (its session store kept between
    /// calls), read to the server's close so the session tickets arrive: how it shook hands.
    async fn connect_once(
        acceptor: tokio_rustls::TlsAcceptor,
        client: Arc<ClientConfig>,
    ) -> rustls::HandshakeKind {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            tls.write_all(b"x").await.unwrap();
            tls.shutdown().await.unwrap();
        });
        let connector = tokio_rustls::TlsConnector::from(client);
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let mut got = Vec::new();
        tls.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"x");
        server.await.unwrap();
        tls.get_ref().1.handshake_kind().unwrap()
    }

    #[tokio::test]
    async fn clients_resume_their_session_and_a_reload_keeps_the_ticket_keys() {
        let dir = TempDir::new("resume");
        let ca = Ca::new();
        let key = KeyPair::generate().unwrap();
        let leaf = ca.issue(&key, "leaf");
        let cert_path = dir.write("cert.pem", ca.chain_pem(&leaf));
        let key_path = dir.write("key.pem", key.serialize_pem());
        let acceptor = |config| tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let first = acceptor(load_server_config(&cert_path, &key_path).unwrap());
        let client = client_config(&ca, &[b"http/1.1"]);
        let full = connect_once(first.clone(), client.clone()).await;
        assert_eq!(full, rustls::HandshakeKind::Full);
        let again = connect_once(first, client.clone()).await;
        assert_eq!(again, rustls::HandshakeKind::Resumed);
        // A certificate reload builds a new config: tickets issued before it still resume.
        let reloaded = acceptor(load_server_config(&cert_path, &key_path).unwrap());
        let after = connect_once(reloaded, client).await;
        assert_eq!(after, rustls::HandshakeKind::Resumed);
    }

    /// The leaf certificate a handshake presents.
    async fn presented_leaf(reloader: &TlsReloader, ca: &Ca) -> CertificateDer<'static> {
        let (chain, _) = handshake(reloader.acceptor(), ca, &[b"http/1.1"]).await;
        chain.into_iter().next().unwrap()
    }

    /// What `f` logs, without ANSI colours.
    fn logs_of<T>(f: impl FnOnce() -> T) -> (T, String) {
        #[derive(Clone, Default)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl Write for Capture {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || writer.clone())
            .finish();
        let out = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        (out, text)
    }

    #[tokio::test]
    async fn pkcs8_ecdsa_chain_serves_leaf_and_ca_and_negotiates_h2() {
        let dir = TempDir::new("chain");
        let ca = Ca::new();
        let key = KeyPair::generate().unwrap();
        let leaf = ca.issue(&key, "leaf");
        let cert_path = dir.write("cert.pem", ca.chain_pem(&leaf));
        let key_path = dir.write("key.pem", key.serialize_pem());

        let config = load_server_config(&cert_path, &key_path).unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );

        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (chain, protocol) = handshake(acceptor.clone(), &ca, &[b"h2", b"http/1.1"]).await;
        assert_eq!(chain, [leaf.der().clone(), ca.cert.der().clone()]);
        assert_eq!(protocol.as_deref(), Some(&b"h2"[..]));

        let (_, protocol) = handshake(acceptor.clone(), &ca, &[b"http/1.1"]).await;
        assert_eq!(protocol.as_deref(), Some(&b"http/1.1"[..]));
        let (_, protocol) = handshake(acceptor, &ca, &[]).await;
        assert_eq!(protocol, None);
    }

    #[tokio::test]
    async fn sec1_ec_key_loads_and_serves() {
        let dir = TempDir::new("sec1");
        let ca = Ca::new();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let leaf = ca.issue(&key, "sec1");
        let cert_path = dir.write("cert.pem", leaf.pem());
        let sec1 = sec1_pem(&key);
        assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        let key_path = dir.write("key.pem", sec1);

        let reloader = TlsReloader::new(cert_path, key_path).unwrap();
        assert_eq!(&presented_leaf(&reloader, &ca).await, leaf.der());
    }

    #[tokio::test]
    async fn pkcs1_rsa_key_loads_and_serves() {
        let dir = TempDir::new("pkcs1");
        let ca = Ca::new();
        let key = KeyPair::from_pem(test_rsa_2048().trim()).unwrap();
        let leaf = ca.issue(&key, "rsa");
        let cert_path = dir.write("cert.pem", leaf.pem());
        let pkcs1 = pkcs1_pem(&key);
        assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let key_path = dir.write("key.pem", pkcs1);

        let reloader = TlsReloader::new(cert_path, key_path).unwrap();
        assert_eq!(&presented_leaf(&reloader, &ca).await, leaf.der());
    }

    #[tokio::test]
    async fn ed25519_pkcs8_key_loads_and_serves() {
        let dir = TempDir::new("ed25519");
        let ca = Ca::new();
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let leaf = ca.issue(&key, "ed25519");
        let cert_path = dir.write("cert.pem", leaf.pem());
        let key_path = dir.write("key.pem", key.serialize_pem());

        let reloader = TlsReloader::new(cert_path, key_path).unwrap();
        assert_eq!(&presented_leaf(&reloader, &ca).await, leaf.der());
    }

    #[test]
    fn key_of_another_certificate_is_refused_naming_both_files() {
        let dir = TempDir::new("mismatch");
        let ca = Ca::new();
        let leaf = ca.issue(&KeyPair::generate().unwrap(), "leaf");
        let cert_path = dir.write("cert.pem", leaf.pem());
        let other = KeyPair::generate().unwrap();
        let key_path = dir.write("other-key.pem", other.serialize_pem());

        let error = load_server_config(&cert_path, &key_path).unwrap_err();
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(&*key_path.to_string_lossy()), "{message}");
        assert!(message.contains(&*cert_path.to_string_lossy()), "{message}");
    }

    #[test]
    fn chain_with_the_leaf_last_says_to_put_it_first() {
        let dir = TempDir::new("order");
        let ca = Ca::new();
        let key = KeyPair::generate().unwrap();
        let leaf = ca.issue(&key, "leaf");
        let cert_path = dir.write("cert.pem", format!("{}{}", ca.cert.pem(), leaf.pem()));
        let key_path = dir.write("key.pem", key.serialize_pem());

        let error = load_server_config(&cert_path, &key_path).unwrap_err();
        assert!(
            matches!(error, TlsError::LeafNotFirst { position: 2, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("first"), "{error}");
    }

    #[test]
    fn missing_files_are_named() {
        let dir = TempDir::new("missing");
        let ca = Ca::new();
        let key = KeyPair::generate().unwrap();
        let cert_path = dir.write("cert.pem", ca.issue(&key, "leaf").pem());
        let key_path = dir.write("key.pem", key.serialize_pem());
        let nowhere = dir.0.join("nowhere.pem");

        for (cert, key, what) in [
            (&nowhere, &key_path, "certificate"),
            (&cert_path, &nowhere, "private key"),
        ] {
            let error = load_server_config(cert, key).unwrap_err();
            let TlsError::Read {
                what: found,
                path,
                source,
            } = &error
            else {
                panic!("{error:?}");
            };
            assert_eq!((*found, path), (what, &nowhere));
            assert_eq!(source.kind(), io::ErrorKind::NotFound);
            let message = error.to_string();
            assert!(message.contains(&*nowhere.to_string_lossy()), "{message}");
            assert!(message.contains(what), "{message}");
        }
        // A directory is not a file either.
        let error = load_server_config(&dir.0, &key_path).unwrap_err();
        assert!(matches!(error, TlsError::Read { .. }), "{error:?}");
    }

    #[test]
    fn files_without_the_right_pem_sections_say_what_is_wrong() {
        let dir = TempDir::new("nopem");
        let ca = Ca::new();
        let key = KeyPair::generate().unwrap();
        let leaf = ca.issue(&key, "leaf");
        let cert_path = dir.write("cert.pem", leaf.pem());
        let key_path = dir.write("key.pem", key.serialize_pem());
        let der_path = dir.write("cert.der", leaf.der());
        let empty = dir.write("empty.pem", "");

        // DER (not PEM) data as the certificate.
        let error = load_server_config(&der_path, &key_path).unwrap_err();
        assert!(matches!(error, TlsError::NoCertificate { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(&*der_path.to_string_lossy()), "{message}");
        assert!(message.contains("not PEM"), "{message}");

        // Key and certificate swapped.
        let error = load_server_config(&key_path, &cert_path).unwrap_err();
        assert!(matches!(error, TlsError::NoCertificate { .. }), "{error:?}");
        assert!(error.to_string().contains("swapped"), "{error}");
        let error = load_server_config(&cert_path, &cert_path).unwrap_err();
        let TlsError::NoPrivateKey { path, .. } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(path, &cert_path);
        assert!(error.to_string().contains("swapped"), "{error}");

        // Empty files.
        let error = load_server_config(&empty, &key_path).unwrap_err();
        assert!(matches!(error, TlsError::NoCertificate { .. }), "{error:?}");
        assert!(error.to_string().ends_with("the file is empty"), "{error}");
        let error = load_server_config(&cert_path, &empty).unwrap_err();
        assert!(matches!(error, TlsError::NoPrivateKey { .. }), "{error:?}");
        assert!(error.to_string().ends_with("the file is empty"), "{error}");

        // PEM, but no certificate in it (a certificate signing request).
        let csr = dir.write("csr.pem", pem("CERTIFICATE REQUEST", b"csr"));
        let error = load_server_config(&csr, &key_path).unwrap_err();
        assert!(
            matches!(error, TlsError::NoCertificate { hint: "", .. }),
            "{error:?}"
        );

        // An encrypted key.
        let encrypted = dir.write("encrypted.pem", pem("ENCRYPTED PRIVATE KEY", b"sealed"));
        let error = load_server_config(&cert_path, &encrypted).unwrap_err();
        assert!(matches!(error, TlsError::NoPrivateKey { .. }), "{error:?}");
        assert!(error.to_string().contains("encrypted"), "{error}");
    }

    #[test]
    fn broken_pem_and_broken_certificates_are_refused() {
        let dir = TempDir::new("broken");
        let key = KeyPair::generate().unwrap();
        let key_path = dir.write("key.pem", key.serialize_pem());

        let bad_base64 = dir.write(
            "b64.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let error = load_server_config(&bad_base64, &key_path).unwrap_err();
        let TlsError::BadPem { path, .. } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(path, &bad_base64);

        let no_end = dir.write("noend.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n");
        let error = load_server_config(&no_end, &key_path).unwrap_err();
        assert!(matches!(error, TlsError::BadPem { .. }), "{error:?}");

        let not_x509 = dir.write("garbage.pem", pem("CERTIFICATE", b"not a certificate"));
        let error = load_server_config(&not_x509, &key_path).unwrap_err();
        let TlsError::BadCertificate { path, .. } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(path, &not_x509);
    }

    #[test]
    fn unsupported_keys_are_named() {
        let dir = TempDir::new("unsupported");
        let ca = Ca::new();
        let leaf = ca.issue(&KeyPair::generate().unwrap(), "leaf");
        let cert_path = dir.write("cert.pem", leaf.pem());

        let p521 = dir.write("p521.pem", test_p521().trim());
        let error = load_server_config(&cert_path, &p521).unwrap_err();
        let TlsError::UnsupportedKey { path, format } = &error else {
            panic!("{error:?}");
        };
        assert_eq!((path, *format), (&p521, "PKCS#8"));
        assert!(error.to_string().contains("P-256"), "{error}");

        let junk = dir.write("junk.pem", pem("EC PRIVATE KEY", b"junk"));
        let error = load_server_config(&cert_path, &junk).unwrap_err();
        assert!(
            matches!(
                error,
                TlsError::UnsupportedKey {
                    format: "SEC1 EC",
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn oversized_files_are_refused() {
        let dir = TempDir::new("large");
        let key = KeyPair::generate().unwrap();
        let key_path = dir.write("key.pem", key.serialize_pem());
        let big = dir.write("big.pem", vec![b'A'; (MAX_FILE_BYTES + 1) as usize]);
        let error = load_server_config(&big, &key_path).unwrap_err();
        assert!(matches!(error, TlsError::TooLarge { .. }), "{error:?}");
    }

    #[test]
    fn expired_and_future_certificates_load_with_a_warning() {
        let dir = TempDir::new("expired");
        let ca = Ca::new();
        let key = KeyPair::generate().unwrap();
        let key_path = dir.write("key.pem", key.serialize_pem());

        let expired = ca.issue_with(&key, "expired", |p| {
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        });
        let cert_path = dir.write("expired.pem", expired.pem());
        let (loaded, logs) = logs_of(|| load_server_config(&cert_path, &key_path));
        loaded.unwrap();
        assert!(logs.contains("WARN"), "{logs}");
        assert!(logs.contains("expired"), "{logs}");
        assert!(logs.contains("2020-01-01T00:00:00Z"), "{logs}");
        assert!(logs.contains(&*cert_path.to_string_lossy()), "{logs}");

        let future = ca.issue_with(&key, "future", |p| {
            p.not_before = rcgen::date_time_ymd(2090, 1, 1);
            p.not_after = rcgen::date_time_ymd(2099, 12, 31);
        });
        let cert_path = dir.write("future.pem", future.pem());
        let (loaded, logs) = logs_of(|| load_server_config(&cert_path, &key_path));
        loaded.unwrap();
        assert!(logs.contains("not valid yet"), "{logs}");
        assert!(logs.contains("2099-12-31T00:00:00Z"), "{logs}");

        let current = ca.issue(&key, "current");
        let cert_path = dir.write("current.pem", current.pem());
        let (loaded, logs) = logs_of(|| load_server_config(&cert_path, &key_path));
        loaded.unwrap();
        assert!(!logs.contains("WARN"), "{logs}");
    }

    #[tokio::test]
    async fn reload_swaps_to_the_new_certificate_and_keeps_the_old_on_error() {
        let dir = TempDir::new("reload");
        let ca = Ca::new();
        let first_key = KeyPair::generate().unwrap();
        let first = ca.issue(&first_key, "first");
        let cert_path = dir.write("cert.pem", first.pem());
        let key_path = dir.write("key.pem", first_key.serialize_pem());
        let reloader = TlsReloader::new(cert_path.clone(), key_path.clone()).unwrap();
        assert!(!reloader.files_changed());
        assert_eq!(&presented_leaf(&reloader, &ca).await, first.der());

        // Renewed certificate and key.
        let second_key = KeyPair::generate().unwrap();
        let second = ca.issue(&second_key, "second, renewed");
        std::fs::write(&cert_path, second.pem()).unwrap();
        std::fs::write(&key_path, second_key.serialize_pem()).unwrap();
        assert!(reloader.files_changed());
        reloader.reload().unwrap();
        assert!(!reloader.files_changed());
        assert_eq!(&presented_leaf(&reloader, &ca).await, second.der());

        // A half-written renewal: the new certificate, the old key.
        let third = ca.issue(&KeyPair::generate().unwrap(), "third");
        std::fs::write(&cert_path, third.pem()).unwrap();
        assert!(reloader.files_changed());
        let error = reloader.reload().unwrap_err();
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error:?}");
        assert!(!reloader.files_changed(), "a failed attempt counts as seen");
        assert_eq!(&presented_leaf(&reloader, &ca).await, second.der());

        // Garbage, then a missing file: still the second certificate.
        std::fs::write(&cert_path, "garbage").unwrap();
        assert!(matches!(
            reloader.reload(),
            Err(TlsError::NoCertificate { .. })
        ));
        std::fs::write(&cert_path, second.pem()).unwrap();
        std::fs::remove_file(&key_path).unwrap();
        assert!(reloader.files_changed());
        let error = reloader.reload().unwrap_err();
        assert!(
            matches!(&error, TlsError::Read { path, .. } if path == &key_path),
            "{error:?}"
        );
        assert_eq!(&presented_leaf(&reloader, &ca).await, second.der());
    }

    #[test]
    fn files_changed_detects_a_rewrite_with_the_same_length() {
        let dir = TempDir::new("changed");
        let ca = Ca::new();
        let key = KeyPair::generate().unwrap();
        let leaf_pem = ca.issue(&key, "leaf").pem();
        let cert_path = dir.write("cert.pem", &leaf_pem);
        let key_path = dir.write("key.pem", key.serialize_pem());
        let reloader = TlsReloader::new(cert_path.clone(), key_path).unwrap();
        assert!(!reloader.files_changed());

        // Same bytes, new modification time.
        let file = std::fs::File::options()
            .write(true)
            .open(&cert_path)
            .unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(60))
            .unwrap();
        drop(file);
        assert!(reloader.files_changed());
        reloader.reload().unwrap();
        assert!(!reloader.files_changed());

        // Longer file (the modification time may not have ticked).
        let mut file = std::fs::File::options()
            .append(true)
            .open(&cert_path)
            .unwrap();
        file.write_all(b"\n").unwrap();
        drop(file);
        assert!(reloader.files_changed());
    }

    #[tokio::test]
    async fn watch_files_reloads_on_change_and_stops() {
        let dir = TempDir::new("watch");
        let ca = Ca::new();
        let first_key = KeyPair::generate().unwrap();
        let cert_path = dir.write("cert.pem", ca.issue(&first_key, "first").pem());
        let key_path = dir.write("key.pem", first_key.serialize_pem());
        let reloader = Arc::new(TlsReloader::new(cert_path.clone(), key_path.clone()).unwrap());
        let before = reloader.config();

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let watcher = tokio::spawn(watch_files(
            Arc::clone(&reloader),
            Duration::from_millis(10),
            async move {
                let _ = stop_rx.await;
            },
        ));

        let second_key = KeyPair::generate().unwrap();
        let second = ca.issue(&second_key, "second");
        std::fs::write(&key_path, second_key.serialize_pem()).unwrap();
        std::fs::write(&cert_path, second.pem()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while Arc::ptr_eq(&before, &reloader.config()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no reload within 10s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(&presented_leaf(&reloader, &ca).await, second.der());

        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn validity_reads_utc_and_generalized_times() {
        let ca = Ca::new();
        let key = KeyPair::generate().unwrap();
        let cert = ca.issue_with(&key, "dates", |p| {
            p.not_before = rcgen::date_time_ymd(2019, 2, 28);
            p.not_after = rcgen::date_time_ymd(2051, 3, 1); // GeneralizedTime from 2050 on
        });
        let validity = validity(cert.der()).unwrap();
        assert_eq!(validity.not_before.to_string(), "2019-02-28T00:00:00Z");
        assert_eq!(validity.not_after.to_string(), "2051-03-01T00:00:00Z");
        assert!(validity.not_before < validity.not_after);
    }

    #[test]
    fn cert_time_parses_strictly_and_converts_to_unix_time() {
        let utc = |text: &str| CertTime::parse(TAG_UTC_TIME, text.as_bytes());
        let generalized = |text: &str| CertTime::parse(TAG_GENERALIZED_TIME, text.as_bytes());

        assert_eq!(utc("700101000000Z").unwrap().unix_seconds(), 0);
        assert_eq!(utc("000101000000Z").unwrap().unix_seconds(), 946_684_800);
        assert_eq!(utc("491231235959Z").unwrap().year, 2049);
        assert_eq!(utc("500101000000Z").unwrap().year, 1950);
        assert_eq!(utc("500101000000Z").unwrap().unix_seconds(), -631_152_000);
        assert_eq!(
            generalized("20240229123456Z").unwrap().unix_seconds(),
            1_709_210_096
        );
        assert_eq!(
            generalized("99991231235959Z").unwrap().unix_seconds(),
            253_402_300_799
        );

        for bad in [
            "",
            "7001010000Z",
            "700101000000",
            "700101000000+",
            "701301000000Z",
        ] {
            assert_eq!(utc(bad), None, "{bad}");
        }
        for bad in [
            "20230229000000Z",
            "21000229000000Z",
            "20240431000000Z",
            "20240101240000Z",
            "20240101006000Z",
            "20240101000060Z",
            "2024010100000-Z",
            "700101000000Z",
        ] {
            assert_eq!(generalized(bad), None, "{bad}");
        }
        assert!(generalized("20000229000000Z").is_some());
        assert_eq!(CertTime::parse(TAG_INTEGER, b"700101000000Z"), None);
    }

    #[test]
    fn der_element_refuses_bad_lengths() {
        assert_eq!(der_element(&[]), None);
        assert_eq!(der_element(&[0x30]), None);
        assert_eq!(der_element(&[0x30, 0x02, 0x00]), None);
        assert_eq!(der_element(&[0x30, 0x80, 0x00, 0x00]), None); // indefinite (BER)
        assert_eq!(der_element(&[0x30, 0x85, 1, 0, 0, 0, 0]), None);
        assert_eq!(der_element(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(der_element(&[0x1f, 0x01, 0x00]), None); // multi-byte tag
        assert_eq!(
            der_element(&[0x30, 0x81, 0x01, 0xaa, 0xbb]),
            Some((0x30, &[0xaa][..], &[0xbb][..]))
        );
        assert_eq!(validity(&[0x30, 0x00]), None);
    }

    proptest! {
        #[test]
        fn validity_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = validity(&bytes);
        }

        #[test]
        fn validity_never_panics_on_damaged_certificates(
            cut in 0usize..2000,
            flip_at in 0usize..2000,
            flip in any::<u8>(),
        ) {
            static CERT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
            let cert = CERT.get_or_init(|| {
                let ca = Ca::new();
                ca.issue(&KeyPair::generate().unwrap(), "fuzz").der().to_vec()
            });
            let mut bytes = cert.clone();
            if let Some(byte) = bytes.get_mut(flip_at % cert.len()) {
                *byte ^= flip;
            }
            bytes.truncate(cut % (cert.len() + 1));
            let _ = validity(&bytes);
        }
    }
}
