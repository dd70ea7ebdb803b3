//! BER as a directory sends it, checked without recursion before the LDAP library's recursive
//! reader sees it: where one LDAP message ends, and whether it is fit to parse.
//!
//! Invariants: a value accepted here reads the same in the library's reader (`lber`: a one-byte
//! tag, then a short or long-form length) — with definite lengths of at most four octets
//! (RFC 4511 §5.1 forbids indefinite ones), every value inside the one containing it, and at
//! most [`MAX_DEPTH`] constructed values deep, so the library's recursion over it is bounded
//! (a deeply nested answer used to overflow the stack and abort the process); a message is at
//! most [`MAX_MESSAGE`] bytes, so a directory cannot make kfsec buffer without bound; a message
//! has RFC 4511's `LDAPMessage` shape (message ID, an application-class operation, optional
//! controls) and a response's `LDAPResult` and controls have theirs, which the library otherwise
//! meets with a panic. (What the library still panics on — an answer of the wrong kind for its
//! message ID — ends that connection's task or that login's, never the process.)

/// The deepest nesting of constructed values accepted (an LDAP message needs 5).
pub const MAX_DEPTH: usize = 16;

/// The largest LDAP message accepted from a directory, in bytes.
pub const MAX_MESSAGE: usize = 16 << 20;

/// Why bytes from a directory are not an acceptable BER value or LDAP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BerError {
    /// A length in the indefinite form.
    #[error("an indefinite length (LDAP allows only definite ones)")]
    Indefinite,
    /// A long-form length of more than four octets.
    #[error("a length of more than four octets")]
    LengthTooLong,
    /// A value longer than [`MAX_MESSAGE`].
    #[error("a value of {0} bytes (at most {MAX_MESSAGE} are read)")]
    TooLarge(usize),
    /// Constructed values nested deeper than [`MAX_DEPTH`].
    #[error("values nested more than {MAX_DEPTH} deep")]
    TooDeep,
    /// A value that runs past the end of the one containing it.
    #[error("a value runs past the end of the one containing it")]
    Overrun,
    /// A well-formed value that is not an `LDAPMessage`.
    #[error("not an LDAP message (SEQUENCE of message ID, operation and optional controls)")]
    NotMessage,
}

/// The header of the value at `pos`: its tag byte, where its content starts and how long it
/// is. `Ok(None)`: `b` ends inside the header.
fn header(b: &[u8], pos: usize) -> Result<Option<(u8, usize, usize)>, BerError> {
    let (Some(&tag), Some(&first)) = (b.get(pos), b.get(pos + 1)) else {
        return Ok(None);
    };
    let start = pos + 2;
    if first < 0x80 {
        return Ok(Some((tag, start, usize::from(first))));
    }
    let octets = usize::from(first & 0x7f);
    match octets {
        0 => Err(BerError::Indefinite),
        5.. => Err(BerError::LengthTooLong),
        _ => Ok(b.get(start..start + octets).map(|len| {
            let len = len.iter().fold(0usize, |acc, &o| acc << 8 | usize::from(o));
            (tag, start + octets, len)
        })),
    }
}

/// Checks that `b`, exactly one value, nests at most [`MAX_DEPTH`] deep with every value
/// inside its container.
fn check_nesting(b: &[u8]) -> Result<(), BerError> {
    // The end of each open constructed value, outermost first (the first entry is `b`'s end).
    let mut ends = Vec::with_capacity(MAX_DEPTH + 1);
    ends.push(b.len());
    let mut pos = 0;
    while let Some(&end) = ends.last() {
        if pos == end {
            ends.pop();
            continue;
        }
        let (tag, start, len) = header(&b[..end], pos)?.ok_or(BerError::Overrun)?;
        let value_end = start.checked_add(len).filter(|&e| e <= end).ok_or(BerError::Overrun)?;
        if tag & 0x20 != 0 {
            if ends.len() > MAX_DEPTH {
                return Err(BerError::TooDeep);
            }
            ends.push(value_end);
            pos = start;
        } else {
            pos = value_end;
        }
    }
    Ok(())
}

/// The length of the first value of `b` once all of it is there (`Ok(None)` until then),
/// checked as the module says.
pub fn value_len(b: &[u8]) -> Result<Option<usize>, BerError> {
    let Some((_, start, len)) = header(b, 0)? else {
        return Ok(None);
    };
    let total = start + len;
    if total > MAX_MESSAGE {
        return Err(BerError::TooLarge(total));
    }
    if b.len() < total {
        return Ok(None);
    }
    check_nesting(&b[..total])?;
    Ok(Some(total))
}

/// A value as its tag byte and its content.
pub(super) type Value<'a> = (u8, &'a [u8]);

/// The values directly inside `content` (the content of a value [`value_len`] accepted).
pub(super) fn children(mut content: &[u8]) -> impl Iterator<Item = Value<'_>> {
    std::iter::from_fn(move || {
        let (tag, start, len) = header(content, 0).ok()??;
        let value = content.get(start..start + len)?;
        content = &content[start + len..];
        Some((tag, value))
    })
}

/// The length of the first LDAP message in `b` once all of it is there (`Ok(None)` until
/// then), checked as the module says.
pub fn message_len(b: &[u8]) -> Result<Option<usize>, BerError> {
    let Some(total) = value_len(b)? else {
        return Ok(None);
    };
    message_parts(&b[..total]).ok_or(BerError::NotMessage)?;
    Ok(Some(total))
}

/// The message ID's content and the operation (tag byte and content) of an LDAP message, if
/// `message` (one value [`value_len`] accepted) has `LDAPMessage`'s shape: a SEQUENCE of an
/// INTEGER, an application-class operation — a response carrying an `LDAPResult` starts with
/// one (ENUMERATED code, UTF-8 matched DN and diagnostic) — and optionally controls (`[0]`,
/// each a SEQUENCE of a UTF-8 type, an optional one-byte BOOLEAN and an optional value) or
/// Active Directory's misplaced `[10]` response name.
pub(super) fn message_parts(message: &[u8]) -> Option<(&[u8], Value<'_>)> {
    let (0x30, start, len) = header(message, 0).ok()?? else {
        return None;
    };
    let mut parts = children(message.get(start..start + len)?);
    let (0x02, id) = parts.next()? else { return None };
    let op = parts.next().filter(|(tag, _)| tag & 0xc0 == 0x40)?;
    if RESULT_OPS.contains(&op.0) && !ldap_result(op.1) {
        return None;
    }
    match (parts.next(), parts.next()) {
        (None, _) | (Some((0x8a | 0xaa, _)), None) => Some((id, op)),
        (Some((0xa0, controls)), None) if children(controls).all(control) => Some((id, op)),
        _ => None,
    }
}

/// The responses whose content starts with an `LDAPResult` (RFC 4511 §4.2.2–4.12): Bind,
/// SearchResultDone, Modify, Add, Del, ModifyDN, Compare, Extended.
const RESULT_OPS: [u8; 8] = [0x61, 0x65, 0x67, 0x69, 0x6b, 0x6d, 0x6f, 0x78];

/// Whether `content` starts as `LDAPResult` does.
fn ldap_result(content: &[u8]) -> bool {
    let mut fields = children(content);
    matches!(
        (fields.next(), fields.next(), fields.next()),
        (Some((0x0a, _)), Some((0x04, dn)), Some((0x04, text)))
            if std::str::from_utf8(dn).is_ok() && std::str::from_utf8(text).is_ok()
    )
}

/// Whether `value` is a `Control`.
fn control(value: Value<'_>) -> bool {
    let (0x30, content) = value else { return false };
    let fields: Vec<Value<'_>> = children(content).collect();
    let utf8 = |v: &[u8]| std::str::from_utf8(v).is_ok();
    match fields.as_slice() {
        [(0x04, kind)] | [(0x04, kind), (0x04, _)] => utf8(kind),
        [(0x04, kind), (0x01, [_])] | [(0x04, kind), (0x01, [_]), (0x04, _)] => utf8(kind),
        _ => false,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// One value: `tag`, a minimal definite length, `body`.
    pub(in crate::connector::ldap) fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match body.len() {
            n @ 0..=127 => out.push(n as u8),
            n => {
                let octets = n.to_be_bytes();
                let skip = octets.iter().take_while(|&&o| o == 0).count();
                out.push(0x80 | (octets.len() - skip) as u8);
                out.extend_from_slice(&octets[skip..]);
            }
        }
        out.extend_from_slice(body);
        out
    }

    /// A BindResponse (success) with message ID 1.
    fn bind_ok() -> Vec<u8> {
        let op = tlv(0x61, &[tlv(0x0a, &[0]), tlv(0x04, b""), tlv(0x04, b"")].concat());
        tlv(0x30, &[tlv(0x02, &[1]), op].concat())
    }

    /// `depth` SEQUENCEs, one inside the other (each with a four-octet length).
    pub(in crate::connector::ldap) fn nested(depth: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(6 * depth);
        for level in 1..=depth {
            out.extend_from_slice(&[0x30, 0x84]);
            out.extend_from_slice(&(6 * (depth - level) as u32).to_be_bytes());
        }
        out
    }

    #[test]
    fn a_message_is_framed_whatever_the_reads_cut() {
        let one = bind_ok();
        let two = [one.clone(), one.clone()].concat();
        for cut in 0..one.len() {
            assert_eq!(message_len(&two[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(message_len(&two), Ok(Some(one.len())));
        assert_eq!(
            message_parts(&one).map(|(id, (tag, _))| (id, tag)),
            Some((&[1u8][..], 0x61))
        );
        // A long-form length (as some directories send for short values too).
        let long = [&[0x30, 0x82, 0x00, one.len() as u8 - 2][..], &one[2..]].concat();
        assert_eq!(message_len(&long), Ok(Some(long.len())));
    }

    #[test]
    fn nesting_is_bounded_without_recursion() {
        assert!(value_len(&nested(MAX_DEPTH)).unwrap().is_some());
        assert_eq!(value_len(&nested(MAX_DEPTH + 1)), Err(BerError::TooDeep));
        // Deep enough to overflow any stack if read recursively.
        assert_eq!(value_len(&nested(200_000)), Err(BerError::TooDeep));
        let deep_op = tlv(0x30, &[tlv(0x02, &[1]), tlv(0x64, &nested(MAX_DEPTH))].concat());
        assert_eq!(message_len(&deep_op), Err(BerError::TooDeep));
    }

    #[test]
    fn lengths_the_library_would_misread_are_refused() {
        assert_eq!(message_len(&[0x30, 0x80, 0, 0]), Err(BerError::Indefinite));
        assert_eq!(
            message_len(&[0x30, 0x89, 1, 0, 0, 0, 0, 0, 0, 0, 5]),
            Err(BerError::LengthTooLong)
        );
        // A child longer than its parent: the library would wait for bytes forever.
        let overrun = [0x30, 0x05, 0x02, 0x01, 0x01, 0x61, 0x10];
        assert_eq!(message_len(&overrun), Err(BerError::Overrun));
        // A child whose header is cut by its parent's end.
        assert_eq!(
            message_len(&[0x30, 0x04, 0x02, 0x01, 0x01, 0x61]),
            Err(BerError::Overrun)
        );
    }

    #[test]
    fn huge_messages_are_refused_from_their_header() {
        let header = [0x30, 0x84, 0x01, 0x00, 0x00, 0x01];
        assert_eq!(message_len(&header), Err(BerError::TooLarge(6 + 0x0100_0001)));
        let at_limit = [0x30, 0x84, 0x00, 0xff, 0xff, 0xfa];
        assert_eq!(message_len(&at_limit), Ok(None));
    }

    #[test]
    fn only_ldap_messages_pass() {
        let op = tlv(0x61, &[tlv(0x0a, &[0]), tlv(0x04, b""), tlv(0x04, b"")].concat());
        let id = tlv(0x02, &[1]);
        let controls = tlv(
            0xa0,
            &[
                tlv(0x30, &tlv(0x04, b"1.2.3")),
                tlv(
                    0x30,
                    &[tlv(0x04, b"1.2.4"), tlv(0x01, b"\xff"), tlv(0x04, b"\x30\x00")].concat(),
                ),
                tlv(0x30, &[tlv(0x04, b"1.2.5"), tlv(0x04, b"")].concat()),
            ]
            .concat(),
        );
        let ok = [
            [id.clone(), op.clone()].concat(),
            [id.clone(), op.clone(), controls.clone()].concat(),
            [id.clone(), op.clone(), tlv(0x8a, b"1.3.6.1.4.1.1466.20036")].concat(),
        ];
        for body in ok {
            let m = tlv(0x30, &body);
            assert_eq!(message_len(&m), Ok(Some(m.len())));
        }
        let bad_control = |c: Vec<u8>| tlv(0x30, &[id.clone(), op.clone(), tlv(0xa0, &c)].concat());
        let bad = [
            bad_control(tlv(0x04, b"")),
            bad_control(tlv(0x30, b"")),
            bad_control(tlv(0x30, &tlv(0x04, b"\xff"))),
            bad_control(tlv(0x30, &[tlv(0x04, b"1.2"), tlv(0x01, b"")].concat())),
            bad_control(tlv(0x30, &[tlv(0x04, b"1.2"), tlv(0x02, b"\x01")].concat())),
            bad_control(tlv(
                0x30,
                &[tlv(0x04, b"1.2"), tlv(0x01, b"\x01"), tlv(0x24, b"")].concat(),
            )),
            tlv(0x30, &[id.clone(), tlv(0x61, b"")].concat()),
            tlv(
                0x30,
                &[id.clone(), tlv(0x61, &[tlv(0x0a, &[0]), tlv(0x04, b"")].concat())].concat(),
            ),
            tlv(
                0x30,
                &[
                    id.clone(),
                    tlv(0x65, &[tlv(0x0a, &[0]), tlv(0x04, b""), tlv(0x04, b"\xc3")].concat()),
                ]
                .concat(),
            ),
            tlv(
                0x30,
                &[
                    id.clone(),
                    tlv(0x78, &[tlv(0x02, &[0]), tlv(0x04, b""), tlv(0x04, b"")].concat()),
                ]
                .concat(),
            ),
            tlv(0x30, b""),
            tlv(0x30, &id),
            tlv(0x30, &op),
            tlv(0x31, &[id.clone(), op.clone()].concat()),
            tlv(0x30, &[tlv(0x22, &id), op.clone()].concat()),
            tlv(0x30, &[id.clone(), controls.clone()].concat()),
            tlv(0x30, &[id.clone(), tlv(0x8a, b"x")].concat()),
            tlv(0x30, &[id.clone(), op.clone(), op.clone()].concat()),
            tlv(
                0x30,
                &[id.clone(), op.clone(), controls.clone(), controls.clone()].concat(),
            ),
            tlv(0x04, &[id, op].concat()),
        ];
        for m in bad {
            assert_eq!(message_len(&m), Err(BerError::NotMessage), "{m:02x?}");
        }
    }

    #[test]
    fn accepted_values_read_the_same_in_the_library() {
        let m = [bind_ok(), b"trailing".to_vec()].concat();
        let n = message_len(&m).unwrap().unwrap();
        let (rest, _) = ldap3::asn1::parse_tag(&m[..n]).unwrap();
        assert!(rest.is_empty());
    }
}
