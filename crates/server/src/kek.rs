//! The data directory's key-encryption key, `<data-dir>/kek`: on a single node (the embedded redb
//! store) without `secretsEncryption`, secret material is still sealed at rest, under a key kfsec
//! creates at its first start.
//!
//! Invariants: the file is created only by `kfsec serve` (never by an admin command), only when
//! the store holds no sealed value already (a store sealed with another key is refused naming
//! that key, never given a new one), with `create_new` and mode 0600, 32 bytes from the injected
//! `Rng`; it is read with the same checks as a `secretsEncryption` key file (owner-only mode,
//! exact length); an explicit `secretsEncryption` always wins and etcd never uses it (it needs
//! the same key on every replica, so it must be configured).

use std::path::{Path, PathBuf};

use kfsec_store::Store;
use kfsec_store::sealed::{Keyring, SealKey, check_unsealed};
use kfsec_types::Rng;

use crate::ServerError;
use crate::config::ConfigError;

/// The key file's name inside the data directory.
pub const FILE_NAME: &str = "kek";

/// `<data-dir>/kek`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

fn key_error(e: impl std::fmt::Display) -> ServerError {
    ServerError::Config(ConfigError::Invalid(format!("the data directory's key: {e}")))
}

/// The keyring of the data directory's key: loaded when the file exists; when it does not and
/// `create` holds (the server's start), created — unless the store is sealed already, which is
/// refused as a store without a key is. `None`: no key (an admin command on an unsealed store).
pub async fn keyring(
    store: &dyn Store,
    data_dir: &Path,
    prefixes: &[&str],
    create: bool,
    rng: &dyn Rng,
) -> Result<Option<Keyring>, ServerError> {
    let file = path(data_dir);
    if file.exists() {
        let key = SealKey::load(&file).map_err(key_error)?;
        return Ok(Some(Keyring::new(key, Vec::new())));
    }
    if !create {
        return Ok(None);
    }
    // A store sealed before (with a configured key since removed): refused, naming its key.
    check_unsealed(store, prefixes).await?;
    let key = SealKey::generate(rng);
    key.write_new(&file).map_err(key_error)?;
    tracing::info!(key_id = %key.id(), file = %file.display(), "created the data directory's key-encryption key (mode 0600): secrets in the store are sealed with it; back it up with the store, which cannot be read without it");
    Ok(Some(Keyring::new(key, Vec::new())))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use kfsec_store::MemoryStore;
    use kfsec_types::{ManualClock, SequenceRng, UnixTime};

    use super::*;

    #[tokio::test]
    async fn created_once_private_and_reused_and_never_over_a_sealed_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = MemoryStore::new(ManualClock::new(UnixTime::from_secs(1)));
        let rng = SequenceRng::default();
        let prefixes = ["/kfsec/idp/"];
        assert!(
            keyring(store.as_ref(), dir.path(), &prefixes, false, &rng)
                .await
                .unwrap()
                .is_none(),
            "an admin command creates no key"
        );
        assert!(!path(dir.path()).exists());
        let first = keyring(store.as_ref(), dir.path(), &prefixes, true, &rng)
            .await
            .unwrap()
            .unwrap();
        let mode = std::fs::metadata(path(dir.path())).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = keyring(store.as_ref(), dir.path(), &prefixes, false, &rng)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.primary_id(), again.primary_id(), "the same key next time");

        // A store sealed with a key that is gone: refused, no new key.
        let other = tempfile::tempdir().unwrap();
        let sealed =
            kfsec_store::sealed::SealedStore::new(store.clone(), &prefixes, first, Arc::new(SequenceRng::default()));
        sealed.prepare(&kfsec_types::SystemClock).await.unwrap();
        let err = keyring(store.as_ref(), other.path(), &prefixes, true, &rng)
            .await
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&again.primary_id().to_string()), "{err}");
        assert!(!path(other.path()).exists());
    }
}
