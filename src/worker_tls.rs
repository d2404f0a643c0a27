//! TLS from the proxy to its workers (`--worker-tls`), for apps whose workers serve HTTPS
//! themselves (express-sticky-cluster's own example does: `https.createServer(...)` in
//! every worker). Workers are on loopback, usually with a self-signed certificate whose
//! name is not an IP address, so the check is a pin: the worker's leaf certificate must be
//! one of those in `--worker-cert` (its signature over the handshake is still verified), or
//! no check at all with `--worker-tls-no-verify`. Plain workers are faster: TLS at the proxy
//! only is what the README recommends.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::tls::{read_chain, TlsError};

/// How the proxy checks a worker's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerTls {
    /// The worker's leaf certificate must be one of those in this PEM file.
    Pinned(PathBuf),
    /// Any certificate is accepted (loopback workers only).
    NoVerify,
}

/// The rustls client configuration for connections to workers (ALPN `http/1.1`).
///
/// # Errors
/// A [`TlsError`] naming the `--worker-cert` file when it cannot be read or holds no
/// certificate.
pub fn client_config(mode: &WorkerTls) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = rustls::crypto::ring::default_provider();
    let pinned = match mode {
        WorkerTls::Pinned(path) => Some(read_chain(path)?),
        WorkerTls::NoVerify => None,
    };
    let verifier = Arc::new(Pins {
        pinned,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config {
            cert: pin_path(mode),
            detail: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn pin_path(mode: &WorkerTls) -> PathBuf {
    match mode {
        WorkerTls::Pinned(path) => path.clone(),
        WorkerTls::NoVerify => PathBuf::from("--worker-tls-no-verify"),
    }
}

/// The server name a worker connection presents: its address (rustls sends no SNI for it).
pub fn server_name(addr: std::net::SocketAddr) -> ServerName<'static> {
    ServerName::IpAddress(addr.ip().into())
}

/// Accepts a worker whose leaf certificate is pinned (or any, with no pins), and checks
/// its handshake signature with the provider's algorithms either way.
#[derive(Debug)]
struct Pins {
    pinned: Option<Vec<CertificateDer<'static>>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pins {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pinned {
            Some(pins) if !pins.iter().any(|p| p.as_ref() == end_entity.as_ref()) => Err(
                rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure),
            ),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
