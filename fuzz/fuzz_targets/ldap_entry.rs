//! Arbitrary bytes as an LDAP directory's search result entry (BER), through the `ldap`
//! connector's decoder (kfsec-idp's `connector::ldap::decode_entry_ber`: a nesting check, the
//! LDAP library's BER parser, then kfsec's own panic-free reading of the entry) and its
//! attribute lookups as a login reads them (case-insensitive names, `DN`, binary values refused
//! as text). It never panics; a value read as text is exactly the UTF-8 bytes sent.

#![no_main]

use kfsec_idp::connector::ldap::decode_entry_ber;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(entry) = decode_entry_ber(data) else { return };
    for name in ["uid", "mail", "cn", "DN", "dn", "member"] {
        if let Ok(texts) = entry.texts(name) {
            if let Some(values) = entry.values(name) {
                assert_eq!(texts.len(), values.len());
                for (t, v) in texts.iter().zip(values) {
                    assert_eq!(t.as_bytes(), v.as_slice());
                }
            }
        }
    }
    for (name, _) in &entry.attrs {
        let _ = entry.first_text(name);
    }
});
