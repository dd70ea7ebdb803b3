//! The framed envelope every kfsec value is stored in under the etcd prefix, and its decoder.
//! Security invariant: the decoder is total — any byte string (a foreign or corrupt value, a
//! value written by a newer kfsec) decodes to a record or to [`EnvelopeError`], never a panic,
//! and it never allocates more than the input's length.
//!
//! Layout (version 1; integers little-endian):
//!
//! | bytes | field |
//! |-------|-------|
//! | 1     | version = `1` |
//! | 1     | flags: bit 0 = has expiry; bits 1–2 = create-revision mode (0 = etcd's `create_revision`, 1 = this write's `mod_revision`, 2 = explicit); other bits must be 0 |
//! | 8     | expiry, Unix milliseconds (only if bit 0) |
//! | 8     | create revision (only in mode 2) |
//! | rest  | the payload (the store value, opaque) |
//!
//! The create-revision modes exist because etcd keeps a key's `create_revision` when a value is
//! written over it, while the store contract starts a new record (new create revision) when a
//! value is written over an *expired* record that is still in etcd: such a write uses mode 1, and
//! later updates of that record carry the number forward in mode 2.
//!
//! This file depends only on `kfsec_types`, so `fuzz/fuzz_targets/store_envelope.rs` compiles it
//! directly (`#[path]`) without building the etcd client.

use kfsec_types::UnixTime;

/// The envelope version this crate writes and reads.
pub const VERSION: u8 = 1;
const HAS_EXPIRY: u8 = 0b001;
const MODE_SHIFT: u8 = 1;
const MODE_MASK: u8 = 0b110;

/// Where a record's create revision comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateRevision {
    /// etcd's `create_revision` of the key.
    Etcd,
    /// The `mod_revision` of the write that stored this envelope (a new record over an expired one).
    ThisWrite,
    /// This revision (a record that started as [`CreateRevision::ThisWrite`], carried forward).
    Explicit(u64),
}

/// A decoded envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// When the record stops being visible.
    pub expires_at: Option<UnixTime>,
    /// Where the record's create revision comes from.
    pub create: CreateRevision,
    /// The stored value.
    pub payload: &'a [u8],
}

/// Why a stored value is not a kfsec envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Empty, or shorter than its header says.
    Truncated,
    /// A version this build does not read.
    Version(u8),
    /// Reserved flag bits set, or an unknown create-revision mode.
    Flags(u8),
}

// Display by hand (no thiserror): the fuzz target compiles this file on its own.
impl std::fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated => f.write_str("truncated value"),
            Self::Version(v) => write!(f, "unknown envelope version {v}"),
            Self::Flags(b) => write!(f, "unknown envelope flags {b:#04x}"),
        }
    }
}

impl std::error::Error for EnvelopeError {}

/// Encodes `payload` with its expiry and create-revision mode.
pub fn encode(expires_at: Option<UnixTime>, create: CreateRevision, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + 16 + payload.len());
    let mode: u8 = match create {
        CreateRevision::Etcd => 0,
        CreateRevision::ThisWrite => 1,
        CreateRevision::Explicit(_) => 2,
    };
    let flags = (mode << MODE_SHIFT) | if expires_at.is_some() { HAS_EXPIRY } else { 0 };
    out.push(VERSION);
    out.push(flags);
    if let Some(t) = expires_at {
        out.extend_from_slice(&t.as_millis().to_le_bytes());
    }
    if let CreateRevision::Explicit(r) = create {
        out.extend_from_slice(&r.to_le_bytes());
    }
    out.extend_from_slice(payload);
    out
}

fn take_u64(b: &mut &[u8]) -> Result<u64, EnvelopeError> {
    let (head, rest) = b.split_first_chunk::<8>().ok_or(EnvelopeError::Truncated)?;
    *b = rest;
    Ok(u64::from_le_bytes(*head))
}

/// Decodes a stored value.
pub fn decode(value: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    let [version, flags, rest @ ..] = value else {
        return Err(EnvelopeError::Truncated);
    };
    if *version != VERSION {
        return Err(EnvelopeError::Version(*version));
    }
    if flags & !(HAS_EXPIRY | MODE_MASK) != 0 {
        return Err(EnvelopeError::Flags(*flags));
    }
    let mut rest: &[u8] = rest;
    let expires_at = if flags & HAS_EXPIRY != 0 {
        Some(UnixTime::from_millis(take_u64(&mut rest)?))
    } else {
        None
    };
    let create = match (flags & MODE_MASK) >> MODE_SHIFT {
        0 => CreateRevision::Etcd,
        1 => CreateRevision::ThisWrite,
        2 => CreateRevision::Explicit(take_u64(&mut rest)?),
        _ => return Err(EnvelopeError::Flags(*flags)),
    };
    Ok(Envelope {
        expires_at,
        create,
        payload: rest,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips_every_mode() {
        for expires_at in [None, Some(UnixTime::from_millis(1_700_000_000_123))] {
            for create in [
                CreateRevision::Etcd,
                CreateRevision::ThisWrite,
                CreateRevision::Explicit(42),
            ] {
                for payload in [&b""[..], b"{\"a\":1}", &[0u8, 255, 1][..]] {
                    let enc = encode(expires_at, create, payload);
                    assert_eq!(
                        decode(&enc).unwrap(),
                        Envelope {
                            expires_at,
                            create,
                            payload
                        }
                    );
                }
            }
        }
    }

    #[test]
    fn rejects_foreign_and_truncated_values() {
        assert_eq!(decode(b""), Err(EnvelopeError::Truncated));
        assert_eq!(decode(&[1]), Err(EnvelopeError::Truncated));
        assert_eq!(decode(b"{\"json\":true}"), Err(EnvelopeError::Version(b'{')));
        assert_eq!(decode(&[1, 0b1000]), Err(EnvelopeError::Flags(0b1000)));
        assert_eq!(decode(&[1, 0b110]), Err(EnvelopeError::Flags(0b110)));
        assert_eq!(decode(&[1, 1, 0, 0, 0]), Err(EnvelopeError::Truncated));
        assert_eq!(decode(&[1, 4, 9]), Err(EnvelopeError::Truncated));
        // Every prefix of a valid envelope's header is rejected, never misread.
        let enc = encode(Some(UnixTime::from_millis(5)), CreateRevision::Explicit(7), b"");
        for n in 0..enc.len() {
            assert!(decode(&enc[..n]).is_err(), "{n}");
        }
    }
}
