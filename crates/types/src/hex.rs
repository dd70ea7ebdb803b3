//! Lower-case hex encoding, the one spelling of digests, random ids and key fingerprints across
//! kfsec (store keys, audit chain hashes, UUIDs). Table-driven: no formatting machinery on hot
//! paths (the session lookup hashes every request's cookie). No secrets are interpreted here.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends the lower-case hex of `bytes` to `out` (a stack buffer per 64 bytes, then one
/// ASCII check: no allocation, no `char` push per digit).
pub fn push(out: &mut String, bytes: &[u8]) {
    let mut buf = [0u8; 128];
    for chunk in bytes.chunks(64) {
        for (i, &b) in chunk.iter().enumerate() {
            buf[2 * i] = DIGITS[usize::from(b >> 4)];
            buf[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
        }
        out.push_str(std::str::from_utf8(&buf[..2 * chunk.len()]).unwrap_or_default());
    }
}

/// The lower-case hex of `bytes` (bytes first, then one ASCII check: cheaper than a `char` push
/// per digit).
pub fn encode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.extend_from_slice(&[DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0x0f)]]);
    }
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_every_byte_as_two_lower_case_digits() {
        assert_eq!(encode(&[]), "");
        assert_eq!(encode(&[0x00, 0x0f, 0xa0, 0xff, 0x5c]), "000fa0ff5c");
        let all: Vec<u8> = (0..=255).collect();
        let expected: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(encode(&all), expected);
        let mut pushed = String::from("x");
        push(&mut pushed, &all);
        assert_eq!(pushed, format!("x{expected}"));
    }
}
