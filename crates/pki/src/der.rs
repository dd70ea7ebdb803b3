//! Minimal DER reading/writing and PEM encoding, just enough to build a multi-valued subject name
//! (rcgen keeps one value per attribute type; Kubernetes needs one `O` per group).
//!
//! Invariants: the reader only accepts definite, minimally bounded lengths within the input and
//! never indexes out of bounds; all outputs are re-parsed by x509-parser before use.

use base64::Engine as _;

use crate::error::PkiError;

pub(crate) const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_OID: u8 = 0x06;
const TAG_UTF8STRING: u8 = 0x0c;
pub(crate) const TAG_BIT_STRING: u8 = 0x03;

/// id-at-commonName (2.5.4.3), encoded.
pub(crate) const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
/// id-at-organizationName (2.5.4.10), encoded.
pub(crate) const OID_ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0a];

fn bad(msg: &str) -> PkiError {
    PkiError::X509(format!("malformed DER: {msg}"))
}

/// One TLV at the start of `input`: (tag, header length, total length).
pub(crate) fn read_tlv(input: &[u8]) -> Result<(u8, usize, usize), PkiError> {
    let (&tag, rest) = input.split_first().ok_or_else(|| bad("empty"))?;
    let (&first, rest) = rest.split_first().ok_or_else(|| bad("no length"))?;
    let (len, len_bytes) = if first < 0x80 {
        (usize::from(first), 0usize)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err(bad("unsupported length"));
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, n)
    };
    let header = 2 + len_bytes;
    let total = header.checked_add(len).ok_or_else(|| bad("length overflow"))?;
    if total > input.len() {
        return Err(bad("truncated"));
    }
    Ok((tag, header, total))
}

/// Encodes one TLV.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        // Short form: fits in 7 bits by the branch condition.
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        let significant = &bytes[skip..];
        // Long form: at most size_of::<usize>() length octets.
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(content);
    out
}

fn rdn(oid: &[u8], value: &str) -> Vec<u8> {
    let mut atv = tlv(TAG_OID, oid);
    atv.extend(tlv(TAG_UTF8STRING, value.as_bytes()));
    tlv(TAG_SET, &tlv(TAG_SEQUENCE, &atv))
}

/// `Name` with one RDN per organization (in order) followed by the common name, as Go's
/// `pkix.Name` orders them.
pub(crate) fn subject_name(organizations: &[String], common_name: &str) -> Vec<u8> {
    let mut rdns = Vec::new();
    for o in organizations {
        rdns.extend(rdn(OID_ORGANIZATION, o));
    }
    rdns.extend(rdn(OID_COMMON_NAME, common_name));
    tlv(TAG_SEQUENCE, &rdns)
}

/// Splits the contents of a constructed TLV into its elements' byte ranges.
pub(crate) fn elements(content: &[u8]) -> Result<Vec<std::ops::Range<usize>>, PkiError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < content.len() {
        let (_, _, total) = read_tlv(&content[pos..])?;
        out.push(pos..pos + total);
        pos += total;
    }
    Ok(out)
}

/// PEM-encodes `der` under `label` with 64-column lines.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlv_lengths_round_trip() -> Result<(), PkiError> {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let enc = tlv(0x04, &vec![7u8; len]);
            let (tag, header, total) = read_tlv(&enc)?;
            assert_eq!((tag, total), (0x04, enc.len()));
            assert_eq!(total - header, len);
        }
        assert!(read_tlv(&[0x30, 0x05, 0x00]).is_err());
        assert!(read_tlv(&[0x30, 0x80]).is_err());
        Ok(())
    }
}
