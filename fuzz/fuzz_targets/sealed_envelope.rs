//! Arbitrary bytes as a value read from under a sealed prefix (kfsec-store's `sealed`, the
//! envelope of `secretsEncryption`). The parser and `Keyring::open` never panic; an envelope that
//! parses re-encodes to exactly its input; the fuzzer's bytes never open (a forged envelope —
//! the seeds are envelopes of the right key made for another store key, so mutations reach the
//! tag check); the target's own seal of the input opens back to it at its store key only, and
//! not after a one-byte change or a truncation at a point the input picks.

#![no_main]

use std::sync::OnceLock;

use kfsec_store::sealed::{Envelope, Keyring, SealKey};
use kfsec_types::SequenceRng;
use libfuzzer_sys::fuzz_target;

fn ring() -> &'static Keyring {
    static RING: OnceLock<Keyring> = OnceLock::new();
    RING.get_or_init(|| Keyring::new(SealKey::from_bytes([7; 32]), vec![SealKey::from_bytes([8; 32])]))
}

fuzz_target!(|data: &[u8]| {
    let ring = ring();
    if let Ok(env) = Envelope::parse(data) {
        assert_eq!(env.to_bytes(), data, "an envelope re-encodes to its bytes");
    }
    assert!(ring.open("/kfsec/idp/keys", data).is_err(), "forged bytes opened");

    let sealed = ring
        .seal("/kfsec/idp/keys", data, &SequenceRng::default())
        .expect("sealing works");
    let (plain, id) = ring.open("/kfsec/idp/keys", &sealed).expect("a sealed value opens");
    assert_eq!((plain.as_slice(), id), (data, SealKey::from_bytes([7; 32]).id()));
    assert!(ring.open("/kfsec/idp/keys2", &sealed).is_err(), "moved to another key");
    let pick = |i: usize| data.get(i).map_or(0, |&b| usize::from(b));
    let mut changed = sealed.clone();
    let at = (pick(0) * 256 + pick(1)) % sealed.len();
    changed[at] ^= u8::try_from(pick(2) % 255 + 1).unwrap_or(1);
    assert!(ring.open("/kfsec/idp/keys", &changed).is_err(), "byte {at} changed");
    let cut = (pick(3) * 256 + pick(4)) % sealed.len();
    assert!(ring.open("/kfsec/idp/keys", &sealed[..cut]).is_err(), "cut at {cut}");
});
