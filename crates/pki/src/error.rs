//! The crate's error type. Invariant: no variant carries key material, so errors may be logged.

use std::path::PathBuf;

/// Everything that can go wrong in kfsec-pki.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// A file-system operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// PEM input could not be decoded.
    #[error("invalid PEM ({what}): {detail}")]
    Pem {
        /// What was being decoded ("certificate", "private key", ...).
        what: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// A PEM bundle contained no certificate.
    #[error("no certificate found in {0}")]
    NoCertificate(&'static str),
    /// A certificate could not be parsed as X.509.
    #[error("invalid X.509 certificate: {0}")]
    X509(String),
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls rejected a key, certificate or configuration.
    #[error("TLS error: {0}")]
    Tls(#[from] rustls::Error),
    /// A client-certificate verifier could not be built.
    #[error("TLS client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The private key does not belong to the certificate.
    #[error("private key does not match the certificate's public key")]
    KeyMismatch,
    /// Only one of the CA's two files exists; refusing to overwrite or guess.
    #[error("incomplete CA in {dir}: {present} exists but {missing} does not; restore or remove it")]
    IncompleteCa {
        /// The CA directory.
        dir: PathBuf,
        /// The file that exists.
        present: &'static str,
        /// The file that is missing.
        missing: &'static str,
    },
    /// The CA certificate on disk is unusable (not a CA, expired, unsupported key).
    #[error("unusable CA certificate: {0}")]
    InvalidCa(String),
    /// A CA rotation cannot start (one is in progress) or was asked for wrongly.
    #[error("CA rotation: {0}")]
    Rotation(String),
    /// The caller asked for something invalid (empty name, zero lifetime, ...).
    #[error("invalid certificate request: {0}")]
    InvalidRequest(String),
}

impl PkiError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn pem(what: &'static str, e: impl std::fmt::Display) -> Self {
        Self::Pem {
            what,
            detail: e.to_string(),
        }
    }
}
