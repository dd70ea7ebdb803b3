//! `sealed`: encryption of secret material at rest (`secretsEncryption`), once, at the store
//! seam, so it works over every backend. [`SealedStore`] wraps any [`Store`] and seals the
//! values under a given set of key prefixes with AES-256-GCM (aws-lc-rs); other keys pass
//! through untouched. Keys, revisions, TTLs and watch semantics are the backend's.
//!
//! Envelope of a sealed value (version 1):
//!
//! ```text
//! 0..4    magic  00 'k' 'f' 's'
//! 4       version (1)
//! 5..13   key id: the first 8 bytes of SHA-256 of the 32 key bytes (printed as 16 hex digits,
//!         `base64 -d KEYFILE | sha256sum | cut -c1-16`)
//! 13..25  96-bit nonce, fresh from the injected `Rng` for every write
//! 25..    ciphertext and the 16-byte GCM tag
//! ```
//!
//! The additional authenticated data is bytes 0..13 followed by the store key, so a sealed
//! value moved to another key, or re-labelled with another version or key id, does not open.
//!
//! Invariants: a value under a sealed prefix is written only sealed with the primary key; a
//! value read from under a sealed prefix that is not a well-formed envelope that authenticates
//! under a held key is an error ([`SealError`]), never handed on — plaintext injected by
//! someone with write access to the backend is refused, not trusted; key bytes live in
//! [`Zeroizing`] buffers and never appear in `Debug` output, errors or logs (only key ids do);
//! [`SealedStore::prepare`] (run once at start) refuses a store holding values under a key id
//! this process does not hold, naming it, and seals plaintext only in a store never sealed
//! before (no canary record [`CANARY_KEY`] and no sealed value). What sealing does not cover: a
//! writer to the backend can put back an older sealed value of the same key (the AAD binds the
//! key, not the revision), or delete values.
//!
//! Random 96-bit nonces bound the writes under one key: rotate the key (`previousKeyFiles`) well
//! before 2^32 sealed writes.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::aead;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use kfsec_types::{Clock, Rng};
use zeroize::Zeroizing;

use crate::{KeyValue, ListPage, Revision, Store, StoreError, WatchStream};

/// Length of a key-encryption key in bytes (AES-256).
pub const KEY_LEN: usize = 32;
/// Length of a key id in bytes (16 hex digits when printed).
pub const KEY_ID_LEN: usize = 8;
/// The first bytes of every sealed value.
pub const MAGIC: [u8; 4] = *b"\0kfs";
/// The envelope version this code writes (and the only one it reads).
pub const VERSION: u8 = 1;
const NONCE_LEN: usize = aead::NONCE_LEN;
const TAG_LEN: usize = 16;
/// Magic, version and key id: the bound part of the header.
const LABEL_LEN: usize = MAGIC.len() + 1 + KEY_ID_LEN;
/// The whole header (label and nonce).
pub const HEADER_LEN: usize = LABEL_LEN + NONCE_LEN;
/// The smallest envelope: a header and the tag of an empty plaintext.
pub const MIN_ENVELOPE_LEN: usize = HEADER_LEN + TAG_LEN;
/// The record that says which key the store is sealed with (its value: a sealed constant).
pub const CANARY_KEY: &str = "/kfsec/sealed-check";
const CANARY_TEXT: &[u8] = b"kfsec secretsEncryption canary v1";
/// The largest key file read (a key file is 45 bytes).
const MAX_KEY_FILE: u64 = 4096;
/// Attempts at re-sealing one record that other writers keep changing.
const RESEAL_ATTEMPTS: usize = 8;

/// The id of a key: the first [`KEY_ID_LEN`] bytes of SHA-256 of the key bytes. Shown as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&kfsec_types::hex::encode(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A 256-bit key-encryption key. Its bytes are zeroed on drop and never printed.
#[derive(Clone)]
pub struct SealKey {
    id: KeyId,
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Problems with a key file, each naming the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file cannot be read.
    #[error("{}: {source}", .path.display())]
    Read {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Group or others may read (or write) the file.
    #[error("{} is accessible by group or others (mode {mode:04o}); a key must be private: chmod 600 {}", .path.display(), .path.display())]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not 32 bytes in base64.
    #[error("{}: not a key: {reason} (a key file holds 32 random bytes in base64; make one with: kfsec secrets generate-key FILE)", .path.display())]
    Format {
        /// The key file.
        path: PathBuf,
        /// What is wrong (never the file's content).
        reason: String,
    },
    /// `generate-key` never replaces a key.
    #[error("{} exists; kfsec never overwrites a key (remove it or choose another name)", .path.display())]
    Exists {
        /// The key file.
        path: PathBuf,
    },
    /// Writing a new key file failed.
    #[error("writing {}: {source}", .path.display())]
    Write {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl SealKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let bytes = Zeroizing::new(bytes);
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes.as_ref());
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest.as_ref()[..KEY_ID_LEN]);
        Self { id: KeyId(id), bytes }
    }

    /// A fresh random key.
    pub fn generate(rng: &dyn Rng) -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill(bytes.as_mut());
        Self::from_bytes(*bytes)
    }

    /// The key in base64 text (surrounding whitespace ignored); `Err` says why not, without
    /// repeating the text.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let decoded = Zeroizing::new(
            B64.decode(text.trim())
                .map_err(|_| "the content is not base64".to_owned())?,
        );
        let bytes: [u8; KEY_LEN] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| format!("it decodes to {} bytes, not {KEY_LEN}", decoded.len()))?;
        Ok(Self::from_bytes(bytes))
    }

    /// The key in base64 (what a key file holds).
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(B64.encode(self.bytes.as_ref()))
    }

    /// Reads a key file: private to its owner (no group or other permission bits, as ssh asks
    /// of a private key), 32 bytes in base64.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        use std::os::unix::fs::PermissionsExt;
        let read = |source| KeyFileError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read)?;
        let meta = file.metadata().map_err(read)?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let format = |reason: String| KeyFileError::Format {
            path: path.to_owned(),
            reason,
        };
        if !meta.is_file() {
            return Err(format("it is not a regular file".into()));
        }
        let mut text = Zeroizing::new(String::new());
        file.take(MAX_KEY_FILE + 1)
            .read_to_string(&mut text)
            .map_err(|_| format("it is not base64 text".into()))?;
        if text.len() as u64 > MAX_KEY_FILE {
            return Err(format(format!("it is longer than {MAX_KEY_FILE} bytes")));
        }
        Self::from_base64(&text).map_err(format)
    }

    /// Writes this key to a new file `path`, mode 0600; refuses to replace an existing file.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyFileError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => KeyFileError::Exists { path: path.to_owned() },
                _ => KeyFileError::Write {
                    path: path.to_owned(),
                    source,
                },
            })?;
        let mut text = self.to_base64();
        text.push('\n');
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|source| KeyFileError::Write {
                path: path.to_owned(),
                source,
            })
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    fn aead(&self) -> Result<aead::LessSafeKey, SealError> {
        let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, self.bytes.as_ref()).map_err(|_| SealError::Crypto)?;
        Ok(aead::LessSafeKey::new(unbound))
    }
}

/// Why a byte string is not an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// It does not start with [`MAGIC`] (plaintext).
    #[error("not sealed")]
    NotSealed,
    /// A version this code does not read.
    #[error("envelope version {0} is not supported")]
    UnsupportedVersion(u8),
    /// Shorter than a header and a tag.
    #[error("the envelope is truncated")]
    Truncated,
}

/// A parsed (not yet authenticated) envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The key it claims to be sealed with.
    pub key_id: KeyId,
    /// The nonce.
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext and tag.
    pub sealed: &'a [u8],
    label: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// Splits `bytes` into its parts; checks the magic, version and lengths only.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, EnvelopeError> {
        if !bytes.starts_with(&MAGIC) {
            return Err(EnvelopeError::NotSealed);
        }
        match bytes.get(MAGIC.len()) {
            Some(&VERSION) => {}
            Some(&v) => return Err(EnvelopeError::UnsupportedVersion(v)),
            None => return Err(EnvelopeError::Truncated),
        }
        if bytes.len() < MIN_ENVELOPE_LEN {
            return Err(EnvelopeError::Truncated);
        }
        let (label, rest) = bytes.split_at(LABEL_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&label[MAGIC.len() + 1..]);
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(nonce);
        Ok(Self {
            key_id: KeyId(key_id),
            nonce: n,
            sealed,
            label,
        })
    }

    /// The envelope's bytes again.
    pub fn to_bytes(&self) -> Vec<u8> {
        [self.label, &self.nonce, self.sealed].concat()
    }
}

fn aad(label: &[u8], store_key: &str) -> Vec<u8> {
    [label, store_key.as_bytes()].concat()
}

/// A value that cannot be opened, or a store this process cannot open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// Plaintext under a sealed prefix after sealing was turned on.
    #[error(
        "{key}: the value is not sealed; plaintext under a sealed prefix is refused (secretsEncryption is on: only sealed values are trusted)"
    )]
    Plaintext {
        /// The store key.
        key: String,
    },
    /// A value that starts like an envelope but is not one.
    #[error("{key}: malformed sealed value: {reason}")]
    Malformed {
        /// The store key.
        key: String,
        /// What is wrong.
        reason: EnvelopeError,
    },
    /// Sealed under a key this process does not hold.
    #[error("{key}: sealed with key {id}; this replica has keys {held} (secretsEncryption.keyFile)")]
    UnknownKey {
        /// The store key.
        key: String,
        /// The key id in the envelope.
        id: KeyId,
        /// The ids held, comma-separated.
        held: String,
    },
    /// Does not authenticate (altered, moved from another store key, or corrupt).
    #[error(
        "{key}: the sealed value does not authenticate under key {id} (altered, moved from another key, or corrupt)"
    )]
    Tampered {
        /// The store key.
        key: String,
        /// The key id in the envelope.
        id: KeyId,
    },
    /// At start: the store is sealed with a key this process does not hold.
    #[error("the store is sealed with key {id}; this replica has keys {held} (secretsEncryption.keyFile)")]
    StoreKey {
        /// The key id found.
        id: KeyId,
        /// The ids held, comma-separated.
        held: String,
    },
    /// At start: the store is sealed but no key is configured.
    #[error("the store is sealed with key {id}; this replica has no key (configure secretsEncryption.keyFile)")]
    NotConfigured {
        /// The key id found.
        id: KeyId,
    },
    /// The crypto library failed.
    #[error("sealing failed")]
    Crypto,
}

/// The keys of a process: the primary seals, every key opens (`previousKeyFiles` are
/// decrypt-only, for rotation). Printed as key ids only.
#[derive(Clone)]
pub struct Keyring {
    primary: SealKey,
    previous: Vec<SealKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("primary", &self.primary.id)
            .field("previous", &self.previous.iter().map(|k| k.id).collect::<Vec<_>>())
            .finish()
    }
}

impl Keyring {
    /// `primary` seals; `previous` only open (duplicates of the primary are dropped).
    pub fn new(primary: SealKey, previous: Vec<SealKey>) -> Self {
        let mut prev: Vec<SealKey> = Vec::new();
        for k in previous {
            if k.id != primary.id && prev.iter().all(|p| p.id != k.id) {
                prev.push(k);
            }
        }
        Self {
            primary,
            previous: prev,
        }
    }

    /// The primary key's id.
    pub fn primary_id(&self) -> KeyId {
        self.primary.id
    }

    /// Every key id held, primary first, comma-separated (for messages).
    pub fn held(&self) -> String {
        std::iter::once(&self.primary)
            .chain(&self.previous)
            .map(|k| k.id.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn find(&self, id: KeyId) -> Option<&SealKey> {
        std::iter::once(&self.primary)
            .chain(&self.previous)
            .find(|k| k.id == id)
    }

    /// `plaintext` sealed for `store_key` with the primary key and a fresh nonce.
    pub fn seal(&self, store_key: &str, plaintext: &[u8], rng: &dyn Rng) -> Result<Vec<u8>, SealError> {
        let key = self.primary.aead()?;
        let nonce = kfsec_types::random_array::<NONCE_LEN>(rng);
        let mut out = Vec::with_capacity(MIN_ENVELOPE_LEN + plaintext.len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.primary.id.0);
        let aad = aad(&out, store_key);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        key.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(&aad),
            &mut body,
        )
        .map_err(|_| SealError::Crypto)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The plaintext of `value` stored at `store_key`, and the id of the key that sealed it.
    pub fn open(&self, store_key: &str, value: &[u8]) -> Result<(Vec<u8>, KeyId), SealError> {
        let env = Envelope::parse(value).map_err(|reason| match reason {
            EnvelopeError::NotSealed => SealError::Plaintext { key: store_key.into() },
            reason => SealError::Malformed {
                key: store_key.into(),
                reason,
            },
        })?;
        let key = self.find(env.key_id).ok_or_else(|| SealError::UnknownKey {
            key: store_key.into(),
            id: env.key_id,
            held: self.held(),
        })?;
        let aad = aad(env.label, store_key);
        let mut body = env.sealed.to_vec();
        let len = key
            .aead()?
            .open_in_place(
                aead::Nonce::assume_unique_for_key(env.nonce),
                aead::Aad::from(&aad),
                &mut body,
            )
            .map_err(|_| SealError::Tampered {
                key: store_key.into(),
                id: env.key_id,
            })?
            .len();
        body.truncate(len);
        Ok((body, env.key_id))
    }
}

/// The prefixes and keys, shared with watch forwarders.
struct Sealer {
    prefixes: Vec<String>,
    ring: Keyring,
    rng: Arc<dyn Rng>,
}

impl Sealer {
    fn covers(&self, key: &str) -> bool {
        key == CANARY_KEY || self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// Whether a watch or list of `prefix` can see a sealed key.
    fn overlaps(&self, prefix: &str) -> bool {
        std::iter::once(CANARY_KEY)
            .chain(self.prefixes.iter().map(String::as_str))
            .any(|p| p.starts_with(prefix) || prefix.starts_with(p))
    }

    fn seal(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        if !self.covers(key) {
            return Ok(value);
        }
        // The caller's plaintext buffer is wiped once sealed.
        let value = Zeroizing::new(value);
        Ok(self.ring.seal(key, &value, self.rng.as_ref())?)
    }

    fn open(&self, mut kv: KeyValue) -> Result<KeyValue, StoreError> {
        if self.covers(&kv.key) {
            kv.value = self.ring.open(&kv.key, &kv.value)?.0;
        }
        Ok(kv)
    }
}

/// What [`SealedStore::prepare`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prepared {
    /// No canary existed: sealing was turned on now (plaintext values were sealed).
    pub first_time: bool,
    /// Plaintext values sealed (first time only).
    pub sealed: usize,
    /// Values re-sealed from a previous key under the primary key.
    pub resealed: usize,
}

/// A [`Store`] that seals the values under its prefixes (see the module docs).
pub struct SealedStore {
    inner: Arc<dyn Store>,
    sealer: Arc<Sealer>,
    /// Whether `prepare` may seal plaintext found in a store never sealed (a local store being
    /// switched to sealing); off for shared stores, which are sealed from their first write.
    seal_plaintext: bool,
}

impl fmt::Debug for SealedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedStore")
            .field("prefixes", &self.sealer.prefixes)
            .field("keys", &self.sealer.ring)
            .finish_non_exhaustive()
    }
}

/// At start without `secretsEncryption`: refuses a store that is sealed — it has a canary, or
/// the first value under one of `prefixes` is an envelope — naming the key id.
pub async fn check_unsealed(store: &dyn Store, prefixes: &[&str]) -> Result<(), StoreError> {
    if let Some(kv) = store.get(CANARY_KEY).await? {
        return match Envelope::parse(&kv.value) {
            Ok(env) => Err(SealError::NotConfigured { id: env.key_id }.into()),
            Err(reason) => Err(SealError::Malformed {
                key: CANARY_KEY.into(),
                reason,
            }
            .into()),
        };
    }
    for prefix in prefixes {
        for kv in store.list(prefix, 1, None).await?.items {
            if let Ok(env) = Envelope::parse(&kv.value) {
                return Err(SealError::NotConfigured { id: env.key_id }.into());
            }
        }
    }
    Ok(())
}

impl SealedStore {
    /// Wraps `inner`, sealing the values of keys that start with one of `prefixes` (and
    /// [`CANARY_KEY`]). Does no IO: call [`SealedStore::prepare`] before serving.
    pub fn new(inner: Arc<dyn Store>, prefixes: &[&str], ring: Keyring, rng: Arc<dyn Rng>) -> Self {
        Self {
            inner,
            sealer: Arc::new(Sealer {
                prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
                ring,
                rng,
            }),
            seal_plaintext: true,
        }
    }

    /// For a store that holds only sealed values from its first write (etcd, where
    /// `secretsEncryption` is required): [`SealedStore::prepare`] refuses plaintext under a
    /// sealed prefix even with no canary and no sealed value, so a backend writer who deletes
    /// the canary and every sealed value cannot have injected plaintext sealed and trusted.
    #[must_use]
    pub fn never_seal_plaintext(mut self) -> Self {
        self.seal_plaintext = false;
        self
    }

    /// The start-up check, run before anything reads the store:
    /// - a value under a key id this process does not hold → [`SealError::StoreKey`] naming it;
    /// - a value that does not authenticate → [`SealError::Tampered`];
    /// - plaintext under a sealed prefix: sealed now if the store was never sealed (no canary
    ///   and no sealed value: sealing is being turned on) unless [`SealedStore::never_seal_plaintext`],
    ///   else refused ([`SealError::Plaintext`]);
    /// - nothing is written unless every value passed these checks;
    /// - values (and the canary) under a previous key are re-sealed under the primary key, so
    ///   after one start the previous keys can be dropped;
    /// - finally the canary is written, sealed with the primary key.
    pub async fn prepare(&self, clock: &dyn Clock) -> Result<Prepared, StoreError> {
        let ring = &self.sealer.ring;
        let store_key_error = |e: StoreError| match e {
            StoreError::Sealed(SealError::UnknownKey { id, held, .. }) => SealError::StoreKey { id, held }.into(),
            e => e,
        };
        let canary = self.inner.get(CANARY_KEY).await?;
        let mut done = Prepared {
            first_time: canary.is_none(),
            ..Prepared::default()
        };
        let canary_current = match &canary {
            None => false,
            Some(kv) => {
                let (text, id) = ring
                    .open(CANARY_KEY, &kv.value)
                    .map_err(|e| store_key_error(e.into()))?;
                if text != CANARY_TEXT {
                    return Err(SealError::Tampered {
                        key: CANARY_KEY.into(),
                        id,
                    }
                    .into());
                }
                id == ring.primary_id()
            }
        };
        // Every value is checked before anything is written: a key id not held or a value that
        // does not authenticate stops the start with the store untouched.
        let (mut pending, mut any_sealed, mut plaintext) = (Vec::new(), false, None);
        for prefix in &self.sealer.prefixes {
            for kv in crate::list_all(self.inner.as_ref(), prefix).await?.items {
                match ring.open(&kv.key, &kv.value) {
                    Ok((_, id)) => {
                        any_sealed = true;
                        if id != ring.primary_id() {
                            pending.push(kv);
                        }
                    }
                    Err(SealError::Plaintext { key }) => {
                        plaintext.get_or_insert(key);
                        pending.push(kv);
                    }
                    Err(e) => return Err(store_key_error(e.into())),
                }
            }
        }
        // Plaintext is sealed only in a store that was never sealed: no canary and no sealed
        // value (deleting the canary does not open the door to injected plaintext).
        done.first_time &= !any_sealed;
        if let Some(key) = plaintext
            && !(done.first_time && self.seal_plaintext)
        {
            return Err(SealError::Plaintext { key }.into());
        }
        for kv in pending {
            match self
                .reseal(kv, done.first_time && self.seal_plaintext, clock)
                .await
                .map_err(store_key_error)?
            {
                Resealed::Kept => {}
                Resealed::Sealed => done.sealed += 1,
                Resealed::Rotated => done.resealed += 1,
            }
        }
        if !canary_current {
            let sealed = self.sealer.seal(CANARY_KEY, CANARY_TEXT.to_vec())?;
            self.inner.put(CANARY_KEY, sealed, None).await?;
        }
        Ok(done)
    }

    /// Brings one record under the primary key (see [`SealedStore::prepare`]), retrying when a
    /// concurrent writer changes it.
    async fn reseal(&self, mut kv: KeyValue, first_time: bool, clock: &dyn Clock) -> Result<Resealed, StoreError> {
        let ring = &self.sealer.ring;
        for _ in 0..RESEAL_ATTEMPTS {
            let (plain, outcome) = match ring.open(&kv.key, &kv.value) {
                Ok((_, id)) if id == ring.primary_id() => return Ok(Resealed::Kept),
                Ok((plain, _)) => (Zeroizing::new(plain), Resealed::Rotated),
                Err(SealError::Plaintext { .. }) if first_time => (Zeroizing::new(kv.value.clone()), Resealed::Sealed),
                Err(e) => return Err(e.into()),
            };
            let ttl = kv
                .expires_at
                .map(|at| at.since(clock.now()).max(Duration::from_millis(1)));
            let sealed = self.sealer.seal(&kv.key, plain.to_vec())?;
            match self.inner.update(&kv.key, sealed, Some(kv.mod_revision), ttl).await {
                Ok(_) => return Ok(outcome),
                Err(StoreError::Conflict { .. }) => match self.inner.get(&kv.key).await? {
                    Some(fresh) => kv = fresh,
                    None => return Ok(Resealed::Kept),
                },
                Err(StoreError::NotFound(_)) => return Ok(Resealed::Kept),
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Backend(format!(
            "{} kept changing while it was re-sealed",
            kv.key
        )))
    }

    /// Whether values at `key` are sealed.
    pub fn covers(&self, key: &str) -> bool {
        self.sealer.covers(key)
    }
}

enum Resealed {
    Kept,
    Sealed,
    Rotated,
}

#[async_trait::async_trait]
impl Store for SealedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await?.map(|kv| self.sealer.open(kv)).transpose()
    }

    async fn list(&self, prefix: &str, limit: usize, start_after: Option<&str>) -> Result<ListPage, StoreError> {
        let mut page = self.inner.list(prefix, limit, start_after).await?;
        if self.sealer.overlaps(prefix) {
            page.items = page
                .items
                .into_iter()
                .map(|kv| self.sealer.open(kv))
                .collect::<Result<_, _>>()?;
        }
        Ok(page)
    }

    async fn create(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<Revision, StoreError> {
        self.inner.create(key, self.sealer.seal(key, value)?, ttl).await
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
        ttl: Option<Duration>,
    ) -> Result<Revision, StoreError> {
        self.inner
            .update(key, self.sealer.seal(key, value)?, expected, ttl)
            .await
    }

    async fn put(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<Revision, StoreError> {
        self.inner.put(key, self.sealer.seal(key, value)?, ttl).await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        self.sealer.open(self.inner.delete(key, expected).await?)
    }

    async fn take(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.take(key).await?.map(|kv| self.sealer.open(kv)).transpose()
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let mut inner = self.inner.watch(prefix, after).await?;
        if !self.sealer.overlaps(prefix) {
            return Ok(inner);
        }
        // A small buffer: the backend's own per-watcher buffer absorbs bursts, and a consumer
        // that falls behind still gets the backend's Compacted.
        let (tx, out) = tokio::sync::mpsc::channel(2);
        let sealer = self.sealer.clone();
        tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    item = inner.recv() => item,
                    () = tx.closed() => break,
                };
                let Some(item) = item else { break };
                let item = item.and_then(|mut ev| {
                    ev.kv = sealer.open(ev.kv)?;
                    Ok(ev)
                });
                let last = item.is_err();
                if tx.send(item).await.is_err() || last {
                    break;
                }
            }
        });
        Ok(out)
    }

    fn upkeep(&self) -> Option<&dyn crate::Upkeep> {
        self.inner.upkeep()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::conformance;
    use crate::{EventKind, MemoryStore};
    use kfsec_types::{ManualClock, SequenceRng, UnixTime};

    fn key(n: u8) -> SealKey {
        SealKey::from_bytes([n; KEY_LEN])
    }

    fn ring(n: u8) -> Keyring {
        Keyring::new(key(n), Vec::new())
    }

    struct Fixture {
        raw: Arc<MemoryStore>,
        clock: Arc<ManualClock>,
    }

    fn fixture() -> Fixture {
        let clock = ManualClock::new(UnixTime::from_secs(1_700_000_000));
        Fixture {
            raw: MemoryStore::with_options(clock.clone(), conformance::test_options()),
            clock,
        }
    }

    impl Fixture {
        fn sealed(&self, prefixes: &[&str], ring: Keyring) -> SealedStore {
            SealedStore::new(self.raw.clone(), prefixes, ring, Arc::new(SequenceRng::default()))
        }
    }

    const SECRET: &[u8] = b"-----BEGIN PRIVATE KEY----- hunter2-the-known-secret";

    /// Runs the conformance suite through a wrapper over `raw` sealing `prefix`.
    async fn conformance_sealing<S, F>(raw: Arc<S>, clock: Arc<ManualClock>, prefix: &str, sweep: fn(Arc<S>) -> F)
    where
        S: Store,
        F: std::future::Future<Output = Result<usize, StoreError>> + Send + 'static,
    {
        let sealed = Arc::new(SealedStore::new(
            raw.clone(),
            &[prefix],
            ring(1),
            Arc::new(SequenceRng::default()),
        ));
        sealed.prepare(clock.as_ref()).await.unwrap();
        let h = conformance::Harness {
            store: sealed,
            clock,
            sweep: Box::new(move || Box::pin(sweep(raw.clone()))),
            log_retention: conformance::TEST_LOG_RETENTION,
            watch_channel_capacity: Some(conformance::TEST_WATCH_CAPACITY),
            watch_buffer: conformance::TEST_WATCH_BUFFER,
        };
        conformance::run_all(&h).await;
    }

    #[tokio::test]
    async fn conformance_suite_passes_through_the_wrapper_over_memory() {
        // Everything sealed, and sealed keys beside plain ones.
        for prefix in ["/", "/c/"] {
            let f = fixture();
            conformance_sealing(f.raw, f.clock, prefix, |s| async move { s.sweep_expired().await }).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_suite_passes_through_the_wrapper_over_redb() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(UnixTime::from_secs(1_700_000_000));
        let raw =
            crate::RedbStore::open_with_options(&dir.path().join("s.redb"), clock.clone(), conformance::test_options())
                .unwrap();
        conformance_sealing(raw, clock, "/", |s| async move { s.sweep_expired().await }).await;
    }

    /// Every byte the backend holds or replays, for the scan.
    async fn raw_bytes(raw: &MemoryStore) -> Vec<Vec<u8>> {
        let mut all: Vec<Vec<u8>> = crate::list_all(raw, "")
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|kv| kv.value)
            .collect();
        let mut w = raw.watch("", 0).await.unwrap();
        let end = raw.revision().await.unwrap();
        while let Some(Ok(ev)) = w.recv().await {
            all.push(ev.kv.value);
            if ev.kv.mod_revision >= end {
                break;
            }
        }
        all
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[tokio::test]
    async fn the_backend_never_holds_the_plaintext_and_reads_give_it_back() {
        let f = fixture();
        let s = f.sealed(&["/secret/"], ring(1));
        s.prepare(f.clock.as_ref()).await.unwrap();
        let mut w = s.watch("/secret/", s.revision().await.unwrap()).await.unwrap();
        let r = s.create("/secret/a", SECRET.to_vec(), None).await.unwrap();
        s.update("/secret/a", SECRET.to_vec(), Some(r), Some(Duration::from_secs(60)))
            .await
            .unwrap();
        s.put("/secret/b", SECRET.to_vec(), None).await.unwrap();
        s.put("/plain/c", b"visible".to_vec(), None).await.unwrap();
        assert_eq!(s.get("/secret/a").await.unwrap().unwrap().value, SECRET);
        let page = s.list("/secret/", 0, None).await.unwrap();
        assert!(page.items.iter().all(|kv| kv.value == SECRET));
        for _ in 0..3 {
            let ev = tokio::time::timeout(Duration::from_secs(5), w.recv())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(ev.kv.value, SECRET);
        }
        assert_eq!(s.take("/secret/b").await.unwrap().unwrap().value, SECRET);
        let ev = tokio::time::timeout(Duration::from_secs(5), w.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((ev.kind, ev.kv.value.as_slice()), (EventKind::Delete, SECRET));
        f.clock.advance(Duration::from_secs(61));
        f.raw.sweep_expired().await.unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(5), w.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((ev.kind, ev.kv.key.as_str()), (EventKind::Delete, "/secret/a"));
        assert_eq!(
            ev.kv.value, SECRET,
            "an expiry's Delete event carries the opened last value"
        );
        // The raw store: the unsealed value as written, every sealed one an envelope.
        assert_eq!(f.raw.get("/plain/c").await.unwrap().unwrap().value, b"visible");
        let bytes = raw_bytes(&f.raw).await;
        assert!(bytes.len() > 5);
        for v in &bytes {
            assert!(!contains(v, b"hunter2"), "plaintext in the backend: {v:?}");
        }
    }

    #[tokio::test]
    async fn tampering_is_refused() {
        let f = fixture();
        let s = f.sealed(&["/secret/"], ring(1));
        s.prepare(f.clock.as_ref()).await.unwrap();
        s.put("/secret/a", SECRET.to_vec(), None).await.unwrap();
        s.put("/secret/b", b"other".to_vec(), None).await.unwrap();
        let good = f.raw.get("/secret/a").await.unwrap().unwrap().value;

        // Every single flipped bit anywhere in the envelope.
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            f.raw.put("/secret/a", bad, None).await.unwrap();
            let err = s.get("/secret/a").await.unwrap_err();
            assert!(matches!(err, StoreError::Sealed(_)), "byte {i}: {err}");
        }
        // Moved to another key: does not open there.
        f.raw.put("/secret/b", good.clone(), None).await.unwrap();
        let err = s.get("/secret/b").await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Sealed(SealError::Tampered { key, .. }) if key == "/secret/b"),
            "{err}"
        );
        // Truncated anywhere.
        for n in [0, 3, 4, 5, 12, HEADER_LEN, MIN_ENVELOPE_LEN - 1, good.len() - 1] {
            f.raw.put("/secret/a", good[..n].to_vec(), None).await.unwrap();
            let err = s.get("/secret/a").await.unwrap_err();
            assert!(matches!(err, StoreError::Sealed(_)), "{n} bytes: {err}");
        }
        // Plaintext (an injected signing key) is refused, by get, list, take and watch.
        let before = f.raw.put("/secret/a", SECRET.to_vec(), None).await.unwrap() - 1;
        let err = s.get("/secret/a").await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Sealed(SealError::Plaintext { key }) if key == "/secret/a"),
            "{err}"
        );
        assert!(err.to_string().contains("/secret/a"), "{err}");
        assert!(s.list("/secret/", 0, None).await.is_err());
        assert!(s.list("/", 0, None).await.is_err());
        let mut w = s.watch("/secret/", before).await.unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(5), w.recv()).await.unwrap() {
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    assert!(matches!(e, StoreError::Sealed(_)), "{e}");
                    break;
                }
                None => panic!("the watch ended without the error"),
            }
        }
        assert!(s.take("/secret/a").await.is_err());
        // The original value back in place opens again.
        f.raw.put("/secret/a", good, None).await.unwrap();
        assert_eq!(s.get("/secret/a").await.unwrap().unwrap().value, SECRET);
    }

    #[tokio::test]
    async fn an_unknown_key_id_is_named() {
        let f = fixture();
        let old = f.sealed(&["/secret/"], ring(1));
        old.prepare(f.clock.as_ref()).await.unwrap();
        old.put("/secret/a", SECRET.to_vec(), None).await.unwrap();
        let (id1, id2) = (key(1).id().to_string(), key(2).id().to_string());

        let other = f.sealed(&["/secret/"], ring(2));
        let err = other.get("/secret/a").await.unwrap_err().to_string();
        assert!(err.contains(&id1) && err.contains(&id2), "{err}");
        let err = other.prepare(f.clock.as_ref()).await.unwrap_err().to_string();
        assert_eq!(
            err,
            format!("the store is sealed with key {id1}; this replica has keys {id2} (secretsEncryption.keyFile)")
        );
        // Nothing was changed by the refused start.
        assert_eq!(old.get("/secret/a").await.unwrap().unwrap().value, SECRET);
        // Without a key at all.
        let err = check_unsealed(f.raw.as_ref(), &[]).await.unwrap_err().to_string();
        assert!(err.contains(&id1) && err.contains("secretsEncryption.keyFile"), "{err}");
        // Also without the canary: a sealed value gives it away.
        f.raw.delete(CANARY_KEY, None).await.unwrap();
        check_unsealed(f.raw.as_ref(), &["/other/"]).await.unwrap();
        let err = check_unsealed(f.raw.as_ref(), &["/other/", "/secret/"])
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&id1), "{err}");
        let plain = MemoryStore::new(f.clock.clone());
        plain.put("/secret/a", b"{}".to_vec(), None).await.unwrap();
        check_unsealed(plain.as_ref(), &["/secret/"]).await.unwrap();
    }

    #[tokio::test]
    async fn plaintext_is_sealed_the_first_time_only() {
        let f = fixture();
        f.raw.put("/secret/a", SECRET.to_vec(), None).await.unwrap();
        f.raw
            .put("/secret/ttl", SECRET.to_vec(), Some(Duration::from_secs(100)))
            .await
            .unwrap();
        f.raw.put("/plain/b", b"left alone".to_vec(), None).await.unwrap();
        let s = f.sealed(&["/secret/"], ring(1));
        let done = s.prepare(f.clock.as_ref()).await.unwrap();
        assert_eq!(
            done,
            Prepared {
                first_time: true,
                sealed: 2,
                resealed: 0
            }
        );
        assert!(Envelope::parse(&f.raw.get("/secret/a").await.unwrap().unwrap().value).is_ok());
        assert!(f.raw.get(CANARY_KEY).await.unwrap().is_some());
        let ttl = f.raw.get("/secret/ttl").await.unwrap().unwrap();
        assert_eq!(ttl.expires_at, Some(f.clock.now().add(Duration::from_secs(100))));
        assert_eq!(s.get("/secret/ttl").await.unwrap().unwrap().value, SECRET);
        assert_eq!(f.raw.get("/plain/b").await.unwrap().unwrap().value, b"left alone");

        // Once the canary exists, injected plaintext stops the start, naming the key.
        f.raw.put("/secret/injected", SECRET.to_vec(), None).await.unwrap();
        let err = s.prepare(f.clock.as_ref()).await.unwrap_err().to_string();
        assert!(err.contains("/secret/injected") && err.contains("not sealed"), "{err}");
        assert_eq!(f.raw.get("/secret/injected").await.unwrap().unwrap().value, SECRET);
        // Deleting the canary too does not make it a first start while sealed values exist.
        f.raw.delete(CANARY_KEY, None).await.unwrap();
        let err = s.prepare(f.clock.as_ref()).await.unwrap_err().to_string();
        assert!(err.contains("/secret/injected") && err.contains("not sealed"), "{err}");
        assert_eq!(f.raw.get("/secret/injected").await.unwrap().unwrap().value, SECRET);
        assert!(
            f.raw.get(CANARY_KEY).await.unwrap().is_none(),
            "a refused start writes nothing"
        );
    }

    #[tokio::test]
    async fn a_shared_store_emptied_of_sealed_values_does_not_adopt_injected_plaintext() {
        // Someone with write access to etcd (no key) deletes the canary and every sealed
        // value, then writes a plaintext secret of their own (say a signing key they know).
        let f = fixture();
        let s = f.sealed(&["/secret/"], ring(1)).never_seal_plaintext();
        s.prepare(f.clock.as_ref()).await.unwrap();
        s.put("/secret/a", SECRET.to_vec(), None).await.unwrap();
        f.raw.delete("/secret/a", None).await.unwrap();
        f.raw.delete(CANARY_KEY, None).await.unwrap();
        f.raw
            .put("/secret/injected", b"attacker's key".to_vec(), None)
            .await
            .unwrap();
        let err = s.prepare(f.clock.as_ref()).await.unwrap_err().to_string();
        assert!(err.contains("/secret/injected") && err.contains("not sealed"), "{err}");
        assert_eq!(
            f.raw.get("/secret/injected").await.unwrap().unwrap().value,
            b"attacker's key"
        );
        assert!(s.get("/secret/injected").await.is_err(), "never handed on");
        // An empty shared store still starts (and is marked sealed).
        f.raw.delete("/secret/injected", None).await.unwrap();
        assert!(s.prepare(f.clock.as_ref()).await.unwrap().first_time);
        assert!(f.raw.get(CANARY_KEY).await.unwrap().is_some());
    }

    /// A backend on which another replica writes each key just before this one's first update
    /// of it (the race of two replicas re-sealing at start).
    struct Racing {
        inner: Arc<MemoryStore>,
        other: Keyring,
        raced: parking_lot::Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl crate::forward::Forward for Racing {
        fn inner(&self) -> &dyn Store {
            self.inner.as_ref()
        }
        async fn update(
            &self,
            key: &str,
            value: Vec<u8>,
            expected: Option<Revision>,
            ttl: Option<Duration>,
        ) -> Result<Revision, StoreError> {
            if !self.raced.lock().contains(&key.to_owned()) {
                self.raced.lock().push(key.to_owned());
                let theirs = self
                    .other
                    .seal(key, b"written by the other replica", &SequenceRng::default())?;
                self.inner.put(key, theirs, None).await?;
            }
            self.inner.update(key, value, expected, ttl).await
        }
    }

    #[tokio::test]
    async fn a_concurrent_write_during_the_reseal_is_kept_not_overwritten() {
        let f = fixture();
        let old = f.sealed(&["/secret/"], ring(1));
        old.prepare(f.clock.as_ref()).await.unwrap();
        old.put("/secret/a", SECRET.to_vec(), None).await.unwrap();
        // The other replica already runs with the new key primary.
        let racing = Arc::new(Racing {
            inner: f.raw.clone(),
            other: Keyring::new(key(2), vec![key(1)]),
            raced: parking_lot::Mutex::new(Vec::new()),
        });
        let s = SealedStore::new(
            racing,
            &["/secret/"],
            Keyring::new(key(2), vec![key(1)]),
            Arc::new(SequenceRng::default()),
        );
        let done = s.prepare(f.clock.as_ref()).await.unwrap();
        assert_eq!(
            done.resealed, 0,
            "the value the other replica wrote was already current"
        );
        assert_eq!(
            s.get("/secret/a").await.unwrap().unwrap().value,
            b"written by the other replica"
        );
    }

    #[tokio::test]
    async fn rotation_reseals_under_the_primary_then_the_old_key_can_go() {
        let f = fixture();
        let old = f.sealed(&["/secret/"], ring(1));
        old.prepare(f.clock.as_ref()).await.unwrap();
        for i in 0..7 {
            old.put(&format!("/secret/{i}"), SECRET.to_vec(), None).await.unwrap();
        }
        let (id1, id2) = (key(1).id(), key(2).id());

        let both = f.sealed(&["/secret/"], Keyring::new(key(2), vec![key(1), key(2)]));
        assert_eq!(both.sealer.ring.held(), format!("{id2}, {id1}"));
        // Before the start's re-seal, the old values open with the previous key.
        assert_eq!(both.get("/secret/3").await.unwrap().unwrap().value, SECRET);
        let done = both.prepare(f.clock.as_ref()).await.unwrap();
        assert_eq!(
            done,
            Prepared {
                first_time: false,
                sealed: 0,
                resealed: 7
            }
        );
        for kv in crate::list_all(f.raw.as_ref(), "/").await.unwrap().items {
            assert_eq!(Envelope::parse(&kv.value).unwrap().key_id, id2, "{}", kv.key);
        }
        // A second start has nothing to do.
        assert_eq!(both.prepare(f.clock.as_ref()).await.unwrap().resealed, 0);

        let new = f.sealed(&["/secret/"], ring(2));
        new.prepare(f.clock.as_ref()).await.unwrap();
        assert_eq!(new.get("/secret/6").await.unwrap().unwrap().value, SECRET);
        // And the old key alone no longer opens the store.
        let err = old.prepare(f.clock.as_ref()).await.unwrap_err().to_string();
        assert!(err.contains(&format!("sealed with key {id2}")), "{err}");
    }

    #[test]
    fn key_files_private_32_bytes_base64_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        let k = SealKey::generate(&SequenceRng::default());
        k.write_new(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(SealKey::load(&path).unwrap().id(), k.id());
        let err = k.write_new(&path).unwrap_err().to_string();
        assert!(err.contains("exists") && err.contains("kek"), "{err}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = SealKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600") && err.contains("kek"), "{err}");

        let short = dir.path().join("short");
        for (content, why) in [
            (B64.encode([7u8; 31]), "31 bytes"),
            (B64.encode([7u8; 33]), "33 bytes"),
            ("not base64 at all!".to_owned(), "not base64"),
            (String::new(), "0 bytes"),
        ] {
            let _ = std::fs::remove_file(&short);
            std::fs::write(&short, &content).unwrap();
            std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
            let err = SealKey::load(&short).unwrap_err().to_string();
            assert!(
                err.contains(why) && err.contains("short") && err.contains("generate-key"),
                "{err}"
            );
            assert!(
                content.is_empty() || !err.contains(&content),
                "the content is not echoed: {err}"
            );
        }
        // Surrounding whitespace is fine.
        let _ = std::fs::remove_file(&short);
        std::fs::write(&short, format!("  {}\n\n", B64.encode([9u8; 32]))).unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(SealKey::load(&short).unwrap().id(), key(9).id());
        let err = SealKey::load(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn key_ids_are_the_documented_digest_and_keys_never_print() {
        // `printf '\x01%.0s' {1..32} | sha256sum | cut -c1-16`
        let k = key(1);
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &[1u8; 32]);
        let hex = kfsec_types::hex::encode(&digest.as_ref()[..8]);
        assert_eq!(k.id().to_string(), hex);
        let ring = Keyring::new(k.clone(), vec![key(2)]);
        let b64 = k.to_base64();
        for shown in [format!("{k:?}"), format!("{ring:?}")] {
            assert!(shown.contains(&hex), "{shown}");
            assert!(!shown.contains(b64.as_str()) && !shown.contains("1, 1, 1"), "{shown}");
        }
    }

    #[test]
    fn envelope_parts_round_trip_and_versions_are_checked() {
        let ring = ring(3);
        let v = ring.seal("/k", b"data", &SequenceRng::default()).unwrap();
        let env = Envelope::parse(&v).unwrap();
        assert_eq!(env.key_id, key(3).id());
        assert_eq!(env.to_bytes(), v);
        assert_eq!(v.len(), MIN_ENVELOPE_LEN + 4);
        let mut other = v.clone();
        other[4] = 2;
        assert_eq!(Envelope::parse(&other), Err(EnvelopeError::UnsupportedVersion(2)));
        assert_eq!(Envelope::parse(b"{\"json\":1}"), Err(EnvelopeError::NotSealed));
        assert_eq!(Envelope::parse(&MAGIC), Err(EnvelopeError::Truncated));
        // Two seals of the same value differ (fresh nonces).
        let rng = SequenceRng::default();
        assert_ne!(
            ring.seal("/k", b"data", &rng).unwrap(),
            ring.seal("/k", b"data", &rng).unwrap()
        );
        assert_eq!(ring.open("/k", &v).unwrap().0, b"data");
    }
}
