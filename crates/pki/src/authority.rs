//! The CA set on disk: the signing CA and, during a rotation window, the previous CA that is
//! still trusted. `kfsec cert rotate-ca` replaces the signing CA; until the window ends every
//! trust bundle holds both CAs, and the new CA's certificate cross-signed by the old one is sent
//! after each leaf, so a client that still trusts only the old CA keeps verifying new leaves.
//!
//! Files in the pki directory:
//! - `ca.crt`, `ca.key` (0600): the signing CA;
//! - `ca-bundle.crt`: what clients should trust (signing CA, then the previous one in a window);
//! - `ca-previous.crt`, `ca-cross.crt`, `ca-rotation.json`: the window (previous CA, the signing
//!   CA signed by the previous key, and the window's end).
//!
//! Invariants: a rotation commits by one atomic write of `ca-rotation.pending` (0600: it holds
//! the new key) and is rolled forward from it after a crash, so the CA files never mix two
//! generations; the previous CA's private key is not kept (it signs the cross certificate once,
//! at rotation); one rotation at a time — a new one needs the window to end first.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kfsec_types::{Clock, UnixTime};
use serde::{Deserialize, Serialize};

use crate::ca::{CertificateAuthority, IssuedCert, KeyAlgorithm};
use crate::error::PkiError;
use crate::files::{write_private_file, write_public_file};
use crate::x509::{CertInfo, parse_cert_pem};

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const BUNDLE: &str = "ca-bundle.crt";
const PREVIOUS: &str = "ca-previous.crt";
const CROSS: &str = "ca-cross.crt";
const WINDOW: &str = "ca-rotation.json";
const PENDING: &str = "ca-rotation.pending";

/// The CA a rotation replaced, trusted until the window ends.
#[derive(Debug, Clone)]
pub struct PreviousCa {
    /// Its certificate, PEM.
    pub cert_pem: String,
    /// The signing CA's certificate signed by the previous CA's key, PEM.
    pub cross_pem: String,
    /// When the previous CA stops being trusted.
    pub trusted_until: UnixTime,
    /// Facts about its certificate.
    pub info: CertInfo,
}

/// The signing CA and the previous one during a rotation window.
#[derive(Debug)]
pub struct CaSet {
    current: CertificateAuthority,
    previous: Option<PreviousCa>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Window {
    trusted_until: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Pending {
    cert_pem: String,
    key_pem: String,
    previous_pem: String,
    cross_pem: String,
    trusted_until: u64,
}

fn read_opt(path: &Path) -> Result<Option<String>, PkiError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PkiError::io(path, e)),
    }
}

fn remove(path: &Path) -> Result<(), PkiError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PkiError::io(path, e)),
    }
}

fn join_pem(parts: &[&str]) -> String {
    let mut out = String::new();
    for p in parts {
        out.push_str(p);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

impl CaSet {
    /// Loads the CA set from `dir` (creating a first CA of `alg` if there is none), completing
    /// a rotation a crash interrupted. A window that has ended is left for [`Self::finish`].
    pub fn load_or_create(dir: &Path, alg: KeyAlgorithm, clock: &dyn Clock) -> Result<Self, PkiError> {
        if let Some(text) = read_opt(&dir.join(PENDING))? {
            let pending: Pending = serde_json::from_str(&text)
                .map_err(|e| PkiError::InvalidCa(format!("{PENDING} is unreadable: {e}; restore or remove it")))?;
            apply(dir, &pending)?;
        }
        let current = CertificateAuthority::load_or_create(dir, alg, clock)?;
        let previous = match (
            read_opt(&dir.join(PREVIOUS))?,
            read_opt(&dir.join(CROSS))?,
            read_opt(&dir.join(WINDOW))?,
        ) {
            (Some(cert_pem), Some(cross_pem), Some(window)) => {
                let window: Window = serde_json::from_str(&window)
                    .map_err(|e| PkiError::InvalidCa(format!("{WINDOW} is unreadable: {e}")))?;
                Some(PreviousCa {
                    info: parse_cert_pem(&cert_pem)?,
                    cert_pem,
                    cross_pem,
                    trusted_until: UnixTime::from_secs(window.trusted_until),
                })
            }
            // A finish interrupted half-way: the window is over.
            _ => {
                remove_window_files(dir)?;
                None
            }
        };
        let set = Self { current, previous };
        set.write_bundle(dir)?;
        Ok(set)
    }

    /// The signing CA.
    pub fn current(&self) -> &CertificateAuthority {
        &self.current
    }

    /// The previous CA while a rotation window is open.
    pub fn previous(&self) -> Option<&PreviousCa> {
        self.previous.as_ref()
    }

    /// Whether a rotation window is open but has ended at `now`.
    pub fn window_ended(&self, now: UnixTime) -> bool {
        self.previous.as_ref().is_some_and(|p| now >= p.trusted_until)
    }

    /// What clients should trust (PEM): the signing CA, then the previous one in a window.
    pub fn trust_bundle_pem(&self) -> String {
        match &self.previous {
            Some(p) => join_pem(&[self.current.cert_pem(), &p.cert_pem]),
            None => join_pem(&[self.current.cert_pem()]),
        }
    }

    /// What follows a leaf in a served chain: the cross-signed CA certificate in a window (so
    /// clients of either CA can build a path), otherwise the CA certificate.
    pub fn chain_suffix_pem(&self) -> &str {
        match &self.previous {
            Some(p) => &p.cross_pem,
            None => self.current.cert_pem(),
        }
    }

    /// A leaf issued by the signing CA followed by [`Self::chain_suffix_pem`].
    pub fn chain_pem(&self, leaf: &IssuedCert) -> String {
        join_pem(&[&leaf.cert_pem, self.chain_suffix_pem()])
    }

    /// Whether `chain_pem` (as written by [`Self::chain_pem`]) belongs to this set: its leaf was
    /// issued by the signing CA and the rest is the current suffix.
    pub fn is_current_chain(&self, chain_pem: &str) -> bool {
        chain_pem.ends_with(&join_pem(&[self.chain_suffix_pem()]))
            && parse_cert_pem(chain_pem).is_ok_and(|leaf| leaf.issuer == self.current.info().subject)
    }

    /// Replaces the signing CA with a new one of the same key algorithm; the old CA stays
    /// trusted for `window`. Refused while a window is open.
    pub fn rotate(&self, dir: &Path, window: Duration, clock: &dyn Clock) -> Result<Self, PkiError> {
        if let Some(p) = &self.previous {
            return Err(PkiError::Rotation(format!(
                "one is in progress: {} is trusted until {}; finish it first (kfsec cert rotate-ca --finish)",
                p.info.subject,
                p.trusted_until.to_rfc3339()
            )));
        }
        if window.is_zero() {
            return Err(PkiError::Rotation("the trust window must be positive".into()));
        }
        if !self.current.allows_intermediate() {
            tracing::warn!(
                "the current CA has pathlen:0 (made before CA rotation existed): clients that trust \
                 only it cannot verify the cross-signed chain, from now on; give them ca-bundle.crt"
            );
        }
        // Never past the old CA's own end (the cross certificate cannot outlive it).
        let until = UnixTime::from_secs(clock.now().add(window).min(self.current.not_after()).as_secs());
        let (next, key_pem) =
            CertificateAuthority::generate(self.current.key_algorithm(), self.current.generation() + 1, clock)?;
        let cross_pem = self.current.cross_sign(&next, until, clock)?;
        let pending = Pending {
            cert_pem: next.cert_pem().to_owned(),
            key_pem,
            previous_pem: self.current.cert_pem().to_owned(),
            cross_pem,
            trusted_until: until.as_secs(),
        };
        let text = serde_json::to_vec(&pending).map_err(|e| PkiError::InvalidCa(e.to_string()))?;
        // The commit point: from here on a crash rolls the rotation forward.
        write_private_file(&dir.join(PENDING), &text)?;
        apply(dir, &pending)?;
        tracing::info!(
            previous = %self.current.info().subject,
            current = %next.info().subject,
            trusted_until = until.as_secs(),
            "rotated the internal CA"
        );
        Self::load_or_create(dir, next.key_algorithm(), clock)
    }

    /// Ends the rotation window: the previous CA is no longer trusted. Without a window, the set
    /// is reloaded unchanged.
    pub fn finish(&self, dir: &Path, clock: &dyn Clock) -> Result<Self, PkiError> {
        if let Some(p) = &self.previous {
            tracing::info!(previous = %p.info.subject, "CA rotation window ended; the previous CA is no longer trusted");
            remove_window_files(dir)?;
        }
        Self::load_or_create(dir, self.current.key_algorithm(), clock)
    }

    fn write_bundle(&self, dir: &Path) -> Result<(), PkiError> {
        let path = dir.join(BUNDLE);
        let bundle = self.trust_bundle_pem();
        if read_opt(&path)?.as_deref() != Some(bundle.as_str()) {
            write_public_file(&path, bundle.as_bytes())?;
        }
        Ok(())
    }
}

/// Where the trust bundle lives in a pki directory.
pub fn bundle_path(dir: &Path) -> PathBuf {
    dir.join(BUNDLE)
}

fn remove_window_files(dir: &Path) -> Result<(), PkiError> {
    // The window file first: without it the rest is leftovers.
    for f in [WINDOW, CROSS, PREVIOUS] {
        remove(&dir.join(f))?;
    }
    Ok(())
}

/// Writes a committed rotation's files; idempotent, so a crash anywhere is repaired by running
/// it again. The pending record goes last.
fn apply(dir: &Path, p: &Pending) -> Result<(), PkiError> {
    write_public_file(&dir.join(PREVIOUS), p.previous_pem.as_bytes())?;
    write_public_file(&dir.join(CROSS), p.cross_pem.as_bytes())?;
    let window = serde_json::to_vec(&Window {
        trusted_until: p.trusted_until,
    })
    .map_err(|e| PkiError::InvalidCa(e.to_string()))?;
    write_public_file(&dir.join(WINDOW), &window)?;
    write_private_file(&dir.join(CA_KEY), p.key_pem.as_bytes())?;
    write_public_file(&dir.join(CA_CERT), p.cert_pem.as_bytes())?;
    remove(&dir.join(PENDING))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kfsec_types::ManualClock;

    /// A crash after the commit record was written is rolled forward on the next load.
    #[test]
    fn interrupted_rotation_is_completed_on_load() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let clock = ManualClock::new(UnixTime::from_secs(1_800_000_000));
        let clock = clock.as_ref();
        let set = CaSet::load_or_create(dir.path(), KeyAlgorithm::EcdsaP256, clock)?;
        let (next, key_pem) = CertificateAuthority::generate(KeyAlgorithm::EcdsaP256, 2, clock)?;
        let until = clock.now().add(Duration::from_secs(3600));
        let pending = Pending {
            cert_pem: next.cert_pem().to_owned(),
            key_pem,
            previous_pem: set.current().cert_pem().to_owned(),
            cross_pem: set.current().cross_sign(&next, until, clock)?,
            trusted_until: until.as_secs(),
        };
        write_private_file(&dir.path().join(PENDING), &serde_json::to_vec(&pending)?)?;
        // The crash happened after the new key, before the new certificate.
        write_private_file(&dir.path().join(CA_KEY), pending.key_pem.as_bytes())?;
        let set = CaSet::load_or_create(dir.path(), KeyAlgorithm::EcdsaP256, clock)?;
        assert_eq!(set.current().cert_pem(), next.cert_pem());
        assert_eq!(set.previous().map(|p| p.trusted_until), Some(until));
        assert!(!dir.path().join(PENDING).exists());
        Ok(())
    }
}
