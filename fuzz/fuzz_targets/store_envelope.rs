//! Arbitrary bytes as a value read from under the etcd store's prefix (kfsec-store-etcd's
//! `envelope`: version, flags, optional expiry, optional create revision, payload) — a foreign
//! or corrupt value must give an error, never a panic. An envelope that decodes re-encodes to
//! exactly its input (one encoding per record), and the target's own encoding of the input as a
//! payload, in every create-revision mode with and without an expiry, decodes back to it.

#![no_main]

#[path = "../../crates/store-etcd/src/envelope.rs"]
#[allow(dead_code)]
mod envelope;

use envelope::{CreateRevision, Envelope, decode, encode};
use kfsec_types::UnixTime;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = decode(data) {
        assert_eq!(encode(env.expires_at, env.create, env.payload), data, "re-encodes to its bytes");
    }
    let n = data.iter().fold(0u64, |a, b| a.rotate_left(8) ^ u64::from(*b));
    for create in [CreateRevision::Etcd, CreateRevision::ThisWrite, CreateRevision::Explicit(n)] {
        for expires_at in [None, Some(UnixTime::from_millis(n))] {
            let enc = encode(expires_at, create, data);
            assert_eq!(
                decode(&enc),
                Ok(Envelope {
                    expires_at,
                    create,
                    payload: data
                })
            );
        }
    }
});
