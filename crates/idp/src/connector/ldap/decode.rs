//! Search result entries (RFC 4511 §4.5.2 `SearchResultEntry`) read from the directory's answer,
//! and attribute lookup as Dex does it.
//!
//! Invariants: decoding never panics (the LDAP library's own `SearchEntry::construct` does on
//! malformed answers, so it is not used); a value that is not UTF-8 is never turned into text
//! (a lossy conversion could make two users' ids equal); attribute names match
//! case-insensitively, and `DN` names the entry's DN when the entry has no such attribute.

use ldap3::asn1::{PL, StructureTag, TagClass};

use super::ber;

/// One directory entry: its DN and its attributes (values as sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's distinguished name.
    pub dn: String,
    /// Attribute descriptions and their values, in the order sent.
    pub attrs: Vec<(String, Vec<Vec<u8>>)>,
}

impl Entry {
    /// The values of `name` (case-insensitive), if the entry has that attribute.
    pub fn values(&self, name: &str) -> Option<&[Vec<u8>]> {
        self.attrs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The values of `name` as text; `DN` (any case) is the entry's DN unless the entry has an
    /// attribute of that name. Err: a value is not UTF-8.
    pub fn texts(&self, name: &str) -> Result<Vec<String>, String> {
        match self.values(name) {
            Some(values) => values
                .iter()
                .map(|v| {
                    String::from_utf8(v.clone()).map_err(|_| {
                        format!(
                            "attribute {name:?} of entry {:?} is binary, not text: it cannot be a user id, email, name or group",
                            self.dn
                        )
                    })
                })
                .collect(),
            None if name.eq_ignore_ascii_case("dn") => Ok(vec![self.dn.clone()]),
            None => Ok(Vec::new()),
        }
    }

    /// The first value of `name` as text (see [`Entry::texts`]).
    pub fn first_text(&self, name: &str) -> Result<Option<String>, String> {
        Ok(self.texts(name)?.into_iter().next())
    }
}

fn octets(tag: StructureTag, what: &str) -> Result<Vec<u8>, String> {
    match tag.payload {
        PL::P(bytes) => Ok(bytes),
        PL::C(_) => Err(format!("{what}: expected an octet string")),
    }
}

fn items(tag: StructureTag, what: &str) -> Result<Vec<StructureTag>, String> {
    match tag.payload {
        PL::C(items) => Ok(items),
        PL::P(_) => Err(format!("{what}: expected a sequence")),
    }
}

fn text(bytes: Vec<u8>, what: &str) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|_| format!("{what}: not UTF-8"))
}

/// Reads a `SearchResultEntry` from the library's BER tree.
pub fn decode_entry(tag: StructureTag) -> Result<Entry, String> {
    if tag.class != TagClass::Application || tag.id != 4 {
        return Err(format!("not a search result entry (tag {:?} {})", tag.class, tag.id));
    }
    let mut parts = items(tag, "entry")?.into_iter();
    let dn = text(
        octets(parts.next().ok_or("entry without a DN")?, "entry DN")?,
        "entry DN",
    )?;
    let list = items(parts.next().ok_or("entry without attributes")?, "attributes")?;
    let mut attrs = Vec::with_capacity(list.len());
    for attr in list {
        let mut fields = items(attr, "attribute")?.into_iter();
        let name = text(
            octets(fields.next().ok_or("attribute without a type")?, "attribute type")?,
            "attribute type",
        )?;
        let values = items(fields.next().ok_or("attribute without values")?, "attribute values")?
            .into_iter()
            .map(|v| octets(v, "attribute value"))
            .collect::<Result<Vec<_>, _>>()?;
        attrs.push((name, values));
    }
    Ok(Entry { dn, attrs })
}

/// Reads a `SearchResultEntry` from BER bytes (the fuzz target's entry point, and tests').
/// The bytes are checked as [`super::ber`] checks a directory's messages before they are parsed.
pub fn decode_entry_ber(bytes: &[u8]) -> Result<Entry, String> {
    let len = match ber::value_len(bytes) {
        Ok(Some(len)) => len,
        Ok(None) => return Err("not well-formed BER: cut short".into()),
        Err(e) => return Err(format!("not well-formed BER: {e}")),
    };
    let (_, tag) = ldap3::asn1::parse_tag(&bytes[..len]).map_err(|_| "not well-formed BER".to_owned())?;
    decode_entry(tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::ldap::ber::tests::tlv;

    fn entry(dn: &str, attrs: &[(&str, &[&[u8]])]) -> Vec<u8> {
        let mut list = Vec::new();
        for (name, values) in attrs {
            let vals: Vec<u8> = values.iter().flat_map(|v| tlv(0x04, v)).collect();
            let mut a = tlv(0x04, name.as_bytes());
            a.extend(tlv(0x31, &vals));
            list.extend(tlv(0x30, &a));
        }
        let mut body = tlv(0x04, dn.as_bytes());
        body.extend(tlv(0x30, &list));
        tlv(0x64, &body)
    }

    #[test]
    fn entries_decode_and_attributes_match_as_dex_reads_them() {
        let bytes = entry(
            "uid=jürgen,ou=people,dc=example,dc=org",
            &[
                ("uid", &[b"j\xc3\xbcrgen"]),
                ("mail", &[b"juergen@example.org"]),
                ("memberOf", &[b"cn=a", b"cn=b"]),
                ("jpegPhoto", &[b"\xff\xd8\xff"]),
            ],
        );
        let e = decode_entry_ber(&bytes).unwrap();
        assert_eq!(e.dn, "uid=jürgen,ou=people,dc=example,dc=org");
        assert_eq!(e.first_text("UID").unwrap().as_deref(), Some("jürgen"));
        assert_eq!(e.texts("memberof").unwrap(), vec!["cn=a".to_owned(), "cn=b".to_owned()]);
        assert_eq!(e.texts("DN").unwrap(), vec![e.dn.clone()]);
        assert_eq!(e.texts("dn").unwrap(), vec![e.dn.clone()]);
        assert_eq!(e.texts("cn").unwrap(), Vec::<String>::new());
        // Binary values never become text.
        assert!(e.texts("jpegPhoto").unwrap_err().contains("binary"));
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        let good = entry("cn=x", &[("cn", &[b"x"])]);
        for cut in 0..good.len() {
            let _ = decode_entry_ber(&good[..cut]);
        }
        for bad in [
            vec![],
            vec![0x64, 0x00],
            vec![0x64, 0x02, 0x04, 0x00],
            vec![0x64, 0x04, 0x04, 0x00, 0x04, 0x00],
            vec![0x64, 0x06, 0x04, 0x00, 0x30, 0x02, 0x04, 0x00],
            vec![0x64, 0x06, 0x04, 0x00, 0x30, 0x02, 0x30, 0x00],
            vec![0x30, 0x00],
            vec![0x64, 0x89, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            vec![0x64, 0x84, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert!(decode_entry_ber(&bad).is_err(), "{bad:?}");
        }
        // Deep nesting is refused before the (recursive) BER parser sees it.
        let mut deep = vec![0x04, 0x00];
        for _ in 0..2_000 {
            let len = deep.len();
            let mut outer = vec![0x30, 0x84];
            outer.extend_from_slice(&(len as u32).to_be_bytes());
            outer.extend(deep);
            deep = outer;
        }
        assert_eq!(
            decode_entry_ber(&deep).unwrap_err(),
            "not well-formed BER: values nested more than 16 deep"
        );
    }
}
