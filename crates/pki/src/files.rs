//! Atomic file writes for key and certificate material.
//!
//! Invariants: a private key file is created with mode 0600 from its first byte (never widened
//! afterwards), written to a fresh temp file in the target's directory (`O_EXCL`, so no symlink
//! or pre-existing file is followed), fsynced, renamed over the target and the directory fsynced.
//! Readers see either the old or the new contents, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use kfsec_types::Rng;

use crate::error::PkiError;
use crate::rng::OsRng;

/// Atomically writes `contents` to `path` with mode 0600. Use it for every private key.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    write_atomic(path, contents, 0o600)
}

/// Atomically writes a public file (certificates) with mode 0644 (subject to umask).
pub fn write_public_file(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    write_atomic(path, contents, 0o644)
}

fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(name) = path.file_name() else {
        return Err(PkiError::InvalidRequest(format!("{} has no file name", path.display())));
    };
    let mut suffix = [0u8; 8];
    OsRng.fill(&mut suffix);
    let suffix = kfsec_types::hex::encode(&suffix);
    let tmp = dir.join(format!(".{}.{suffix}.tmp", name.to_string_lossy()));

    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| PkiError::io(&tmp, e))?;
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    drop(file);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(PkiError::io(&tmp, e));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(PkiError::io(path, e));
    }
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PkiError::io(&dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_file_is_0600_and_replaced_atomically() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("k.pem");
        // A pre-existing world-readable file is replaced by a 0600 one.
        fs::write(&path, b"old")?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        write_private_file(&path, b"secret")?;
        assert_eq!(fs::read(&path)?, b"secret");
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        // No temp files are left behind.
        assert_eq!(fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }
}
