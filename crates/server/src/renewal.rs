//! Certificate renewal: every certificate kfsec issues to itself (front door, webhook Services)
//! is re-issued by the internal CA when two thirds of its lifetime have passed, written to its
//! files and swapped into its resolver — new handshakes get the new certificate, established
//! connections are untouched.
//!
//! Invariants: a failed renewal keeps serving the current certificate and is retried on the next
//! tick; private keys are written with mode 0600.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kfsec_pki::{CertificateAuthority, IssuedCert, PkiError, ReloadingResolver};
use kfsec_types::Clock;

/// Issues a fresh certificate for one identity.
pub type Issue = Box<dyn Fn(&CertificateAuthority, &dyn Clock) -> Result<IssuedCert, PkiError> + Send + Sync>;

/// A certificate kept fresh.
pub struct Renewable {
    /// For logs.
    pub name: String,
    /// Where it is served from.
    pub resolver: Arc<ReloadingResolver>,
    /// How to issue its successor.
    pub issue: Issue,
    /// Certificate and key files to rewrite.
    pub files: (PathBuf, PathBuf),
    /// The lifetime it is issued with.
    pub lifetime: Duration,
}

/// Whether a certificate issued for `lifetime` and ending at `not_after` is due at `now`: a
/// third of its lifetime or less remains (i.e. two thirds have passed).
pub fn due(not_after: kfsec_types::UnixTime, now: kfsec_types::UnixTime, lifetime: Duration) -> bool {
    not_after.since(now) <= lifetime / 3
}

fn renew(item: &Renewable, ca: &CertificateAuthority, clock: &dyn Clock) -> Result<(), PkiError> {
    let issued = (item.issue)(ca, clock)?;
    let chain = issued.chain_pem(ca);
    // Swap first (validates the pair), then persist for the next start.
    item.resolver.replace(&chain, &issued.key_pem)?;
    let (crt, key) = &item.files;
    std::fs::write(crt, &chain).map_err(|source| PkiError::Io {
        path: crt.clone(),
        source,
    })?;
    kfsec_pki::write_private_file(key, issued.key_pem.as_bytes())?;
    Ok(())
}

/// Checks every `every` and renews what is due, until the task is dropped.
pub fn spawn(
    ca: Arc<CertificateAuthority>,
    clock: Arc<dyn Clock>,
    items: Vec<Renewable>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for item in &items {
                if !due(item.resolver.not_after(), clock.now(), item.lifetime) {
                    continue;
                }
                match renew(item, &ca, clock.as_ref()) {
                    Ok(()) => tracing::info!(cert = %item.name, "renewed certificate"),
                    Err(e) => tracing::warn!(cert = %item.name, error = %e, "certificate renewal failed; retrying"),
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::due;
    use kfsec_types::UnixTime;

    #[test]
    fn due_at_two_thirds() {
        let life = std::time::Duration::from_secs(90);
        let end = UnixTime::from_secs(90);
        assert!(!due(end, UnixTime::from_secs(59), life));
        assert!(due(end, UnixTime::from_secs(60), life));
        assert!(due(end, UnixTime::from_secs(200), life));
    }
}
