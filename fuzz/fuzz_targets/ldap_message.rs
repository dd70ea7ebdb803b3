//! Arbitrary bytes as a directory's answers, through the `ldap` connector's framing check
//! (kfsec-idp's `connector::ldap::message_len`, which every byte from a directory passes before
//! the LDAP library's recursive BER reader sees it). It never panics, never recurses, and a
//! message it accepts is within the limits, parses in the library's reader as exactly those
//! bytes, and is framed the same whatever the reads cut.

#![no_main]

use kfsec_idp::connector::ldap::{MAX_MESSAGE, message_len};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(Some(len)) = message_len(data) else { return };
    assert!(len <= data.len() && len <= MAX_MESSAGE);
    let (rest, _) = ldap3::asn1::parse_tag(&data[..len]).expect("an accepted message parses");
    assert!(rest.is_empty(), "the library reads the message's bytes exactly");
    assert_eq!(message_len(&data[..len]), Ok(Some(len)));
    assert_eq!(message_len(&data[..len / 2]), Ok(None));
});
