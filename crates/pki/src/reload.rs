//! Hot-reloadable serving certificate: a `ResolvesServerCert` whose certificate can be swapped
//! (explicitly or by polling files) without restarting listeners.
//!
//! Invariants: a new pair is fully validated (PEM, key loads, key matches leaf, leaf parses)
//! before the swap; on any error the previous pair keeps being served; the swap is atomic for
//! readers; handshakes consult the resolver each time, so only new connections see a new
//! certificate and established ones are untouched; key material never appears in `Debug`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use kfsec_types::UnixTime;
use parking_lot::RwLock;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::error::PkiError;
use crate::tls::load_certified_key;
use crate::x509::{CertInfo, parse_cert_der};

struct Current {
    key: Arc<CertifiedKey>,
    info: CertInfo,
}

/// Told of each change of watched certificate files ([`ReloadingResolver::watch_files_notify`]):
/// `Ok` once the new pair serves, `Err` once per failing state of the files.
pub type OnFileChange = Box<dyn Fn(Result<(), &PkiError>) + Send + Sync>;

/// A certificate resolver whose certificate can be replaced at runtime.
pub struct ReloadingResolver {
    current: RwLock<Arc<Current>>,
}

impl fmt::Debug for ReloadingResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cur = self.current.read().clone();
        f.debug_struct("ReloadingResolver")
            .field("subject", &cur.info.subject)
            .field("serial", &cur.info.serial_hex)
            .field("not_after", &cur.info.not_after)
            .finish_non_exhaustive()
    }
}

fn validate(cert_pem: &str, key_pem: &str) -> Result<Current, PkiError> {
    let key = load_certified_key(cert_pem, key_pem)?;
    let leaf = key.end_entity_cert()?;
    let info = parse_cert_der(leaf)?;
    Ok(Current {
        key: Arc::new(key),
        info,
    })
}

impl ReloadingResolver {
    /// A resolver serving `cert_pem` (leaf first, optionally followed by intermediates/CA) with
    /// `key_pem`.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Arc<Self>, PkiError> {
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(validate(cert_pem, key_pem)?)),
        }))
    }

    /// A resolver serving the PEM files at `cert` and `key`.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Arc<Self>, PkiError> {
        let (cert_pem, key_pem) = read_pair(cert, key)?;
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// Validates the new pair and swaps it in; on error the current pair stays.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), PkiError> {
        let next = Arc::new(validate(cert_pem, key_pem)?);
        tracing::info!(
            subject = %next.info.subject,
            serial = %next.info.serial_hex,
            not_after = next.info.not_after.as_secs(),
            "serving certificate replaced"
        );
        *self.current.write() = next;
        Ok(())
    }

    /// The pair currently served.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().key.clone()
    }

    /// Facts about the leaf currently served.
    pub fn info(&self) -> CertInfo {
        self.current.read().info.clone()
    }

    /// End of validity of the leaf currently served (for auto-renewal).
    pub fn not_after(&self) -> UnixTime {
        self.current.read().info.not_after
    }

    /// Polls `cert` and `key` (mtime, length, inode) every `interval` and reloads on change.
    /// Errors (unreadable files, half-written or mismatched pairs) are logged and retried on the
    /// next tick while the old certificate keeps being served. The task ends when the resolver
    /// is dropped. Must be called within a tokio runtime.
    pub fn watch_files(
        self: &Arc<Self>,
        cert: PathBuf,
        key: PathBuf,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        self.watch_files_notify(cert, key, interval, Box::new(|_| {}))
    }

    /// [`ReloadingResolver::watch_files`], telling `on_change` of each change of the files:
    /// `Ok` once the new pair serves, `Err` once per failing state of the files.
    pub fn watch_files_notify(
        self: &Arc<Self>,
        cert: PathBuf,
        key: PathBuf,
        interval: Duration,
        on_change: OnFileChange,
    ) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The resolver was presumably built from these files: start from their current state.
            let mut loaded = fingerprint(&cert, &key).await.ok();
            let mut failed: Option<Fingerprint> = None;
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(this) = weak.upgrade() else {
                    return;
                };
                let fp = match fingerprint(&cert, &key).await {
                    Ok(fp) => fp,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot stat serving certificate files");
                        continue;
                    }
                };
                if loaded.as_ref() == Some(&fp) {
                    continue;
                }
                let result = match read_pair_async(&cert, &key).await {
                    Ok((c, k)) => this.replace(&c, &k),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => {
                        loaded = Some(fp);
                        failed = None;
                        on_change(Ok(()));
                    }
                    Err(e) => {
                        if failed.as_ref() != Some(&fp) {
                            tracing::error!(
                                cert = %cert.display(),
                                key = %key.display(),
                                error = %e,
                                "reloading serving certificate failed; keeping the current one"
                            );
                            on_change(Err(&e));
                            failed = Some(fp);
                        }
                    }
                }
            }
        })
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    dev: u64,
    ino: u64,
}

type Fingerprint = (FileStamp, FileStamp);

async fn stamp(path: &Path) -> Result<FileStamp, PkiError> {
    use std::os::unix::fs::MetadataExt;
    let md = tokio::fs::metadata(path).await.map_err(|e| PkiError::io(path, e))?;
    Ok(FileStamp {
        modified: md.modified().ok(),
        len: md.len(),
        dev: md.dev(),
        ino: md.ino(),
    })
}

async fn fingerprint(cert: &Path, key: &Path) -> Result<Fingerprint, PkiError> {
    Ok((stamp(cert).await?, stamp(key).await?))
}

fn read_pair(cert: &Path, key: &Path) -> Result<(String, String), PkiError> {
    let c = std::fs::read_to_string(cert).map_err(|e| PkiError::io(cert, e))?;
    let k = std::fs::read_to_string(key).map_err(|e| PkiError::io(key, e))?;
    Ok((c, k))
}

async fn read_pair_async(cert: &Path, key: &Path) -> Result<(String, String), PkiError> {
    let c = tokio::fs::read_to_string(cert)
        .await
        .map_err(|e| PkiError::io(cert, e))?;
    let k = tokio::fs::read_to_string(key).await.map_err(|e| PkiError::io(key, e))?;
    Ok((c, k))
}
