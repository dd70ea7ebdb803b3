//! `listing`: filters an upstream listing (ListObjects V1/V2, ListObjectVersions,
//! ListMultipartUploads) down to the entries a key may see, when the listed prefix is broader
//! than what the policy allows (`policy::ListScope::Filter`); a listing inside an allowed prefix
//! is passed through untouched and never comes here.
//!
//! Choice: the answer is read whole (at most [`MAX_LISTING_BYTES`] — a page holds at most
//! `max-keys` ≤ 1000 entries, so a real page is far smaller) and re-emitted with only the
//! visible `Contents`/`Version`/`DeleteMarker`/`Upload` entries (by `Key`) and `CommonPrefixes`
//! (by `Prefix`), and `KeyCount` recounted. Rewriting the request instead cannot express
//! "these four prefixes" in one S3 listing. `IsTruncated` and the rest are kept, so a client
//! pages on as usual; a page may come back short or empty. The paging markers (`NextMarker`,
//! `NextContinuationToken`, `NextKeyMarker`, and the echoed `Marker`, `ContinuationToken`,
//! `KeyMarker`, `StartAfter`, and the upload-id and version-id markers) name whatever key the
//! upstream stopped at — possibly another namespace's — so they are sealed ([`MarkerSeal`]:
//! AES-256-GCM, bound to the namespace and bucket, the plaintext padded to a fixed size so a
//! sealed marker's length says nothing about the key) and opened again when the client pages on.
//! A filtered listing takes no client-chosen marker (only a sealed one, or none): a chosen
//! `start-after` would let the client bisect the hidden keys by watching where a page starts.
//!
//! Invariants: an entry whose key cannot be read is dropped (fail closed); an answer that is
//! not a well-formed listing is an error, never passed on; memory is bounded by the cap; no
//! paging marker of a filtered listing leaves in clear, and every sealed marker of a marker
//! that fits [`MARKER_PAD`] has the same length.

/// The largest listing answer read (bytes).
pub const MAX_LISTING_BYTES: usize = 16 << 20;

/// Why a listing answer could not be filtered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListingError {
    /// Larger than [`MAX_LISTING_BYTES`].
    #[error("listing answer larger than {MAX_LISTING_BYTES} bytes")]
    TooLarge,
    /// Not the XML of a listing.
    #[error("listing answer is not a listing: {0}")]
    Malformed(&'static str),
}

/// Paging markers sealed in a filtered listing.
pub const MARKERS: [&str; 11] = [
    "NextMarker",
    "NextContinuationToken",
    "NextKeyMarker",
    "NextUploadIdMarker",
    "NextVersionIdMarker",
    "Marker",
    "ContinuationToken",
    "KeyMarker",
    "UploadIdMarker",
    "VersionIdMarker",
    "StartAfter",
];

/// Query parameters that carry a sealed marker back; in a filtered listing they are empty or
/// sealed, never chosen by the client.
pub const MARKER_PARAMS: [&str; 6] = [
    "marker",
    "continuation-token",
    "key-marker",
    "start-after",
    "upload-id-marker",
    "version-id-marker",
];

/// Whether a filtered listing may use `delimiter`: none or `/` only. Policy prefixes end in
/// `/`, so with `/` a common prefix is a whole segment path: shown only when it is allowed or
/// leads to an allowed prefix. Another delimiter (say `-`) would roll other namespaces' keys
/// into partial names such as `private-artifacts/team` and show them.
pub fn filtered_delimiter_ok(delimiter: &str) -> bool {
    delimiter.is_empty() || delimiter == "/"
}

/// Sealed plaintexts are padded to a multiple of this many bytes (S3 keys are at most 1024
/// bytes; an upstream continuation token encoding one fits too), so every real marker seals
/// to the same length.
pub const MARKER_PAD: usize = 2048;

/// The prefix of a sealed marker.
pub const SEALED_PREFIX: &str = "kfsec1.";

/// Seals paging markers of filtered listings (AES-256-GCM; the scope — the namespace and bucket,
/// see [`marker_scope`] — is the associated data, so one namespace's marker does not open for
/// another, and a client cannot make one: it has no key).
pub struct MarkerSeal {
    key: aws_lc_rs::aead::LessSafeKey,
}

impl std::fmt::Debug for MarkerSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MarkerSeal")
    }
}

impl MarkerSeal {
    /// A seal keyed by HMAC-SHA256(`secret`, a fixed label): replicas configured with the same
    /// secret open each other's markers.
    pub fn new(secret: &[u8]) -> Self {
        use aws_lc_rs::{aead, hmac};
        let k = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let tag = hmac::sign(&k, b"kfsec s3 listing markers v1");
        // A 32-byte key always builds an AES-256 key.
        let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, tag.as_ref()).unwrap_or_else(|_| unreachable_key());
        Self {
            key: aead::LessSafeKey::new(unbound),
        }
    }

    /// `marker` sealed for `namespace` (a scope), with a nonce from `rng`; padded to a multiple
    /// of [`MARKER_PAD`] bytes (empty when over 64 KiB).
    pub fn seal(&self, namespace: &str, marker: &str, rng: &dyn kfsec_types::Rng) -> String {
        use aws_lc_rs::aead;
        use base64::Engine as _;
        let mut nonce = [0u8; aead::NONCE_LEN];
        rng.fill(&mut nonce);
        let Some(mut buf) = pad(marker.as_bytes()) else {
            return String::new();
        };
        let sealed = self.key.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(namespace.as_bytes()),
            &mut buf,
        );
        if sealed.is_err() {
            return String::new();
        }
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        format!(
            "{SEALED_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
        )
    }

    /// The marker inside `token` when it was sealed for `namespace`.
    pub fn open(&self, namespace: &str, token: &str) -> Option<String> {
        use aws_lc_rs::aead;
        use base64::Engine as _;
        let raw = token.strip_prefix(SEALED_PREFIX)?;
        if raw.len() > 16384 {
            return None;
        }
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(raw).ok()?;
        if bytes.len() < aead::NONCE_LEN {
            return None;
        }
        let mut ct = bytes.split_off(aead::NONCE_LEN);
        let nonce = aead::Nonce::try_assume_unique_for_key(&bytes).ok()?;
        let plain = self
            .key
            .open_in_place(nonce, aead::Aad::from(namespace.as_bytes()), &mut ct)
            .ok()?;
        String::from_utf8(unpad(plain)?.to_vec()).ok()
    }
}

/// `marker` as a 2-byte big-endian length, the bytes, and zeros up to a multiple of
/// [`MARKER_PAD`].
fn pad(marker: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(marker.len()).ok()?;
    let total = (marker.len() + 2).div_ceil(MARKER_PAD) * MARKER_PAD;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(marker);
    out.resize(total, 0);
    Some(out)
}

/// The sealing scope of a listing's markers: the namespace and the bucket.
pub fn marker_scope(namespace: &str, bucket: &str) -> String {
    format!("{namespace}\n{bucket}")
}

/// The marker inside a [`pad`]ded plaintext.
fn unpad(plain: &[u8]) -> Option<&[u8]> {
    let (len, rest) = plain.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    let (marker, zeros) = (rest.get(..len)?, rest.get(len..)?);
    zeros.iter().all(|b| *b == 0).then_some(marker)
}

#[allow(clippy::panic)]
fn unreachable_key() -> aws_lc_rs::aead::UnboundKey {
    panic!("AES-256-GCM rejected a 32-byte key")
}

/// Entry elements filtered by their `<Key>`.
const KEYED: [&str; 4] = ["Contents", "Version", "DeleteMarker", "Upload"];

/// One element: its name, and its byte range in the document.
struct Element<'a> {
    name: &'a str,
    start: usize,
    end: usize,
}

fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')
}

/// The tag at `at` (`<name …>`, `</name>` or `<name/>`): (name, closing, self-closing, end).
fn tag(doc: &[u8], at: usize) -> Result<(&str, bool, bool, usize), ListingError> {
    let bad = ListingError::Malformed("tag");
    let close = doc.get(at + 1) == Some(&b'/');
    let name_start = at + 1 + usize::from(close);
    let mut i = name_start;
    while doc.get(i).is_some_and(|b| is_name_byte(*b)) {
        i += 1;
    }
    if i == name_start {
        return Err(bad);
    }
    let name = std::str::from_utf8(&doc[name_start..i]).map_err(|_| bad)?;
    let gt = find(doc, i, b">").ok_or(ListingError::Malformed("unclosed tag"))?;
    let self_closing = !close && gt > 0 && doc[gt - 1] == b'/';
    Ok((name, close, self_closing, gt + 1))
}

/// Skips the prolog (`<?xml …?>`, comments, whitespace) and returns the root element's name and
/// the offset after its start tag.
fn root(doc: &[u8]) -> Result<(&str, usize, usize), ListingError> {
    match root_element(doc)? {
        (name, start, end, false) => Ok((name, start, end)),
        _ => Err(ListingError::Malformed("root")),
    }
}

/// Like [`root`], also for an empty root element (`<Name/>`, the last item `true`).
fn root_element(doc: &[u8]) -> Result<(&str, usize, usize, bool), ListingError> {
    let mut i = 0;
    loop {
        while doc.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        if doc[i..].starts_with(b"<?") {
            i = find(doc, i, b"?>").ok_or(ListingError::Malformed("prolog"))? + 2;
        } else if doc[i..].starts_with(b"<!--") {
            i = find(doc, i, b"-->").ok_or(ListingError::Malformed("comment"))? + 3;
        } else if doc.get(i) == Some(&b'<') {
            let (name, close, self_closing, end) = tag(doc, i)?;
            if close {
                return Err(ListingError::Malformed("root"));
            }
            return Ok((name, i, end, self_closing));
        } else {
            return Err(ListingError::Malformed("no root element"));
        }
    }
}

/// The root's child elements, and the offset of the root's end tag.
fn children(doc: &[u8], mut i: usize) -> Result<(Vec<Element<'_>>, usize), ListingError> {
    let mut out = Vec::new();
    loop {
        let lt = find(doc, i, b"<").ok_or(ListingError::Malformed("unterminated root"))?;
        if doc[lt..].starts_with(b"<!--") {
            i = find(doc, lt, b"-->").ok_or(ListingError::Malformed("comment"))? + 3;
            continue;
        }
        if doc[lt..].starts_with(b"<![CDATA[") || doc[lt..].starts_with(b"<!") || doc[lt..].starts_with(b"<?") {
            return Err(ListingError::Malformed("markup a listing does not use"));
        }
        let (name, close, self_closing, end) = tag(doc, lt)?;
        if close {
            return Ok((out, lt));
        }
        if self_closing {
            out.push(Element { name, start: lt, end });
            i = end;
            continue;
        }
        // Find the matching end tag, counting nested elements.
        let mut depth = 1usize;
        let mut j = end;
        while depth > 0 {
            let lt2 = find(doc, j, b"<").ok_or(ListingError::Malformed("unterminated element"))?;
            if doc[lt2..].starts_with(b"<!") || doc[lt2..].starts_with(b"<?") {
                return Err(ListingError::Malformed("markup a listing does not use"));
            }
            let (_, c, sc, e) = tag(doc, lt2)?;
            if c {
                depth -= 1;
            } else if !sc {
                depth += 1;
                if depth > 8 {
                    return Err(ListingError::Malformed("nested too deep"));
                }
            }
            j = e;
        }
        out.push(Element {
            name,
            start: lt,
            end: j,
        });
        i = j;
    }
}

/// The unescaped text of the first `<name>…</name>` inside `elem`.
fn child_text(elem: &[u8], name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let s = find(elem, 0, open.as_bytes())? + open.len();
    let e = find(elem, s, format!("</{name}>").as_bytes())?;
    unescape(std::str::from_utf8(&elem[s..e]).ok()?)
}

/// XML text with the five named entities and numeric references resolved; `None` when malformed.
pub fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let semi = rest[amp..].find(';')? + amp;
        let ent = &rest[amp + 1..semi];
        let c = match ent {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let n = if let Some(hex) = ent.strip_prefix("#x").or_else(|| ent.strip_prefix("#X")) {
                    u32::from_str_radix(hex, 16).ok()?
                } else {
                    ent.strip_prefix('#')?.parse().ok()?
                };
                char::from_u32(n)?
            }
        };
        out.push(c);
        rest = &rest[semi + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// Filters a listing document: keeps the entries `key_visible` / `prefix_visible` accept and
/// recounts `KeyCount`.
pub fn filter(
    doc: &[u8],
    key_visible: impl Fn(&str) -> bool,
    prefix_visible: impl Fn(&str) -> bool,
    seal: impl Fn(&str) -> String,
) -> Result<Vec<u8>, ListingError> {
    if doc.len() > MAX_LISTING_BYTES {
        return Err(ListingError::TooLarge);
    }
    let (root_name, _, after_root) = root(doc)?;
    if !matches!(
        root_name,
        "ListBucketResult" | "ListVersionsResult" | "ListMultipartUploadsResult"
    ) {
        return Err(ListingError::Malformed("not a listing"));
    }
    let (elems, root_end) = children(doc, after_root)?;
    let mut keep = Vec::with_capacity(elems.len());
    let mut kept_entries = 0usize;
    // The last entry of the unfiltered page, where a V1 client must page on from.
    let mut last: Option<String> = None;
    let mut later = |name: Option<String>| {
        if let Some(n) = name
            && last.as_ref().is_none_or(|l| n > *l)
        {
            last = Some(n);
        }
    };
    for e in &elems {
        let body = &doc[e.start..e.end];
        let k = if KEYED.contains(&e.name) {
            let key = child_text(body, "Key");
            let visible = key.as_deref().is_some_and(&key_visible);
            if e.name == "Contents" {
                later(key);
            }
            visible
        } else if e.name == "CommonPrefixes" {
            let prefix = child_text(body, "Prefix");
            let visible = prefix.as_deref().is_some_and(&prefix_visible);
            later(prefix);
            visible
        } else {
            true
        };
        if k && (KEYED.contains(&e.name) || e.name == "CommonPrefixes") {
            kept_entries += 1;
        }
        keep.push(k);
    }
    let mut out = Vec::with_capacity(doc.len());
    out.extend_from_slice(&doc[..after_root]);
    let mut pos = after_root;
    for (e, k) in elems.iter().zip(keep) {
        out.extend_from_slice(&doc[pos..e.start]);
        if e.name == "KeyCount" {
            out.extend_from_slice(format!("<KeyCount>{kept_entries}</KeyCount>").as_bytes());
        } else if MARKERS.contains(&e.name) {
            match child_text(&doc[e.start..e.end], e.name) {
                Some(v) if v.is_empty() => out.extend_from_slice(&doc[e.start..e.end]),
                // Sealed text is base64url with a dot prefix: nothing to escape.
                Some(v) => out.extend_from_slice(format!("<{0}>{1}</{0}>", e.name, seal(&v)).as_bytes()),
                // A marker that does not decode is dropped, never passed on in clear.
                None => {}
            }
        } else if k {
            out.extend_from_slice(&doc[e.start..e.end]);
        }
        pos = e.end;
    }
    // ListObjects V1 without a delimiter carries no NextMarker: clients page on from the last
    // key they got, which filtering may have removed (an empty page would stop them or send
    // them back). Give them the sealed last key of the unfiltered page instead.
    let has = |name: &str| elems.iter().any(|e| e.name == name);
    let truncated = elems
        .iter()
        .find(|e| e.name == "IsTruncated")
        .and_then(|e| child_text(&doc[e.start..e.end], "IsTruncated"))
        .is_some_and(|v| v == "true");
    if root_name == "ListBucketResult"
        && truncated
        && !has("NextMarker")
        && !has("NextContinuationToken")
        && !has("KeyCount")
        && let Some(last) = &last
    {
        out.extend_from_slice(format!("<NextMarker>{}</NextMarker>", seal(last)).as_bytes());
    }
    out.extend_from_slice(&doc[pos..root_end]);
    out.extend_from_slice(&doc[root_end..]);
    Ok(out)
}

/// The largest DeleteObjects body read (S3 allows 1000 keys of at most 1024 bytes each).
pub const MAX_DELETE_BYTES: usize = 2 << 20;

/// The most objects one DeleteObjects names (S3's limit).
pub const MAX_DELETE_OBJECTS: usize = 1000;

/// The children an `Object` of a DeleteObjects body may carry (flat, text only, once each).
const DELETE_OBJECT_FIELDS: [&str; 5] = ["Key", "VersionId", "ETag", "LastModifiedTime", "Size"];

/// A DeleteObjects body as the gateway checked it: re-serialized ([`DeleteRequest::to_xml`])
/// and sent upstream instead of the client's bytes, so the store deletes exactly what was
/// authorized whatever its XML parser makes of duplicates, nesting or namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteRequest {
    /// `<Quiet>`, when given.
    pub quiet: Option<bool>,
    /// Each `Object`: its fields in [`DELETE_OBJECT_FIELDS`] order, `Key` first and always set.
    pub objects: Vec<DeleteObject>,
}

/// One `Object` of a DeleteObjects body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteObject {
    /// `Key`.
    pub key: String,
    /// The other fields given (`VersionId`, `ETag`, `LastModifiedTime`, `Size`), by name.
    pub fields: Vec<(&'static str, String)>,
}

/// A token of the strict Delete reader.
enum Tok<'a> {
    Open(&'a str, bool),
    Close(&'a str),
    Text(&'a str),
}

/// Reads the next token at `i`: only plain start/end tags (the root's `xmlns` aside, no
/// attributes), text, no comments, CDATA, DOCTYPE or processing instructions.
fn delete_token(s: &str, i: usize, root: bool) -> Result<Option<(Tok<'_>, usize)>, ListingError> {
    let bad = || ListingError::Malformed("not a plain Delete document");
    let rest = &s[i..];
    if rest.is_empty() {
        return Ok(None);
    }
    if !rest.starts_with('<') {
        let end = rest.find('<').map_or(s.len(), |p| i + p);
        return Ok(Some((Tok::Text(&s[i..end]), end)));
    }
    let gt = rest.find('>').ok_or_else(bad)?;
    let inner = &rest[1..gt];
    let end = i + gt + 1;
    if let Some(name) = inner.strip_prefix('/') {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad());
        }
        return Ok(Some((Tok::Close(name), end)));
    }
    let (inner, self_closing) = match inner.strip_suffix('/') {
        Some(x) => (x, true),
        None => (inner, false),
    };
    let (name, attrs) = inner
        .split_once(|c: char| c.is_ascii_whitespace())
        .map_or((inner, ""), |(n, a)| (n, a.trim()));
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(bad());
    }
    if !attrs.is_empty() {
        // Only the root's default namespace: `xmlns="…"` (no prefixes, nothing else).
        let ok = root
            && attrs
                .strip_prefix("xmlns")
                .map(|a| a.trim_start())
                .and_then(|a| a.strip_prefix('='))
                .map(str::trim_start)
                .is_some_and(|v| {
                    let q = v.chars().next();
                    matches!(q, Some('"' | '\''))
                        && v.len() >= 2
                        && v.ends_with(q.unwrap_or('"'))
                        && !v[1..v.len() - 1].contains(['"', '\'', '<', '&'])
                });
        if !ok {
            return Err(bad());
        }
    }
    Ok(Some((Tok::Open(name, self_closing), end)))
}

/// A DeleteObjects body, read strictly: `<Delete>` holding `Object`s and at most one `Quiet`;
/// each `Object` holding exactly one `Key` and at most one each of `VersionId`, `ETag`,
/// `LastModifiedTime`, `Size`, as flat text; no prefixed names, attributes (the root's
/// `xmlns` aside), comments, CDATA or DOCTYPE; 1 to [`MAX_DELETE_OBJECTS`] objects. Anything
/// else is an error (S3 `MalformedXML`).
pub fn delete_request(doc: &[u8]) -> Result<DeleteRequest, ListingError> {
    if doc.len() > MAX_DELETE_BYTES {
        return Err(ListingError::TooLarge);
    }
    let bad = |why: &'static str| ListingError::Malformed(why);
    let s = std::str::from_utf8(doc).map_err(|_| bad("not UTF-8"))?;
    let s = s.strip_prefix('\u{feff}').unwrap_or(s).trim_start();
    // An XML declaration, then the root.
    let mut i = 0;
    if s.starts_with("<?xml") {
        let end = s.find("?>").ok_or(bad("prolog"))?;
        if s[1..end].contains('<') {
            return Err(bad("prolog"));
        }
        i = end + 2;
    }
    let ws = |t: &str| t.bytes().all(|b| b.is_ascii_whitespace());
    let next = |i: &mut usize, root: bool| -> Result<Option<Tok<'_>>, ListingError> {
        let t = delete_token(s, *i, root)?;
        Ok(t.map(|(t, e)| {
            *i = e;
            t
        }))
    };
    // Whitespace, then the root.
    loop {
        match next(&mut i, true)? {
            Some(Tok::Text(t)) if ws(t) => {}
            Some(Tok::Open("Delete", false)) => break,
            _ => return Err(bad("not a Delete document")),
        }
    }
    // Reads the text of a leaf element whose start tag was just read (empty when self-closing).
    let leaf = |i: &mut usize, name: &str, self_closing: bool| -> Result<String, ListingError> {
        if self_closing {
            return Ok(String::new());
        }
        let mut text = "";
        let mut t = delete_token(s, *i, false)?.ok_or(bad("unterminated element"))?;
        if let (Tok::Text(x), e) = t {
            text = x;
            *i = e;
            t = delete_token(s, *i, false)?.ok_or(bad("unterminated element"))?;
        }
        match t {
            (Tok::Close(n), e) if n == name => {
                *i = e;
                unescape(text).ok_or(bad("bad character reference"))
            }
            _ => Err(bad("element with children where text belongs")),
        }
    };
    let mut out = DeleteRequest::default();
    loop {
        match next(&mut i, false)?.ok_or(bad("unterminated Delete"))? {
            Tok::Text(t) if ws(t) => {}
            Tok::Close("Delete") => break,
            Tok::Open("Quiet", sc) if out.quiet.is_none() => {
                let v = leaf(&mut i, "Quiet", sc)?;
                out.quiet = Some(match v.trim() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("Quiet is not true or false")),
                });
            }
            Tok::Open("Object", false) => {
                if out.objects.len() == MAX_DELETE_OBJECTS {
                    return Err(bad("more than 1000 objects"));
                }
                let mut key: Option<String> = None;
                let mut fields: Vec<(&'static str, String)> = Vec::new();
                loop {
                    match next(&mut i, false)?.ok_or(bad("unterminated Object"))? {
                        Tok::Text(t) if ws(t) => {}
                        Tok::Close("Object") => break,
                        Tok::Open(name, sc) => {
                            let field = DELETE_OBJECT_FIELDS
                                .iter()
                                .find(|f| **f == name)
                                .ok_or(bad("unexpected element in Object"))?;
                            let v = leaf(&mut i, field, sc)?;
                            if *field == "Key" {
                                if key.replace(v).is_some() {
                                    return Err(bad("Object with more than one Key"));
                                }
                            } else if fields.iter().any(|(f, _)| f == field) {
                                return Err(bad("repeated element in Object"));
                            } else {
                                fields.push((field, v));
                            }
                        }
                        _ => return Err(bad("unexpected content in Object")),
                    }
                }
                let key = key.filter(|k| !k.is_empty()).ok_or(bad("Object without a Key"))?;
                fields.sort_by_key(|(f, _)| DELETE_OBJECT_FIELDS.iter().position(|x| x == f));
                out.objects.push(DeleteObject { key, fields });
            }
            _ => return Err(bad("unexpected element in Delete")),
        }
    }
    // Only whitespace after the root.
    while let Some(t) = next(&mut i, false)? {
        match t {
            Tok::Text(t) if ws(t) => {}
            _ => return Err(bad("content after the Delete element")),
        }
    }
    if out.objects.is_empty() {
        return Err(bad("no Object"));
    }
    Ok(out)
}

/// `s` as XML text: markup characters, quotes and every control or whitespace character but
/// the space as character references (so no parser's newline or whitespace handling changes it).
fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() || (c.is_whitespace() && c != ' ') => {
                out.push_str(&format!("&#x{:X};", u32::from(c)));
            }
            c => out.push(c),
        }
    }
}

impl DeleteRequest {
    /// The keys named, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.objects.iter().map(|o| o.key.as_str())
    }

    /// The canonical document sent upstream.
    pub fn to_xml(&self) -> Vec<u8> {
        let mut out = String::from(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">",
        );
        if let Some(q) = self.quiet {
            out.push_str(if q {
                "<Quiet>true</Quiet>"
            } else {
                "<Quiet>false</Quiet>"
            });
        }
        for o in &self.objects {
            out.push_str("<Object><Key>");
            escape_into(&mut out, &o.key);
            out.push_str("</Key>");
            for (f, v) in &o.fields {
                out.push('<');
                out.push_str(f);
                out.push('>');
                escape_into(&mut out, v);
                out.push_str("</");
                out.push_str(f);
                out.push('>');
            }
            out.push_str("</Object>");
        }
        out.push_str("</Delete>");
        out.into_bytes()
    }
}

/// One entry of a listing to delete: its key, and its version when the listing names one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Listed {
    /// `Key`.
    pub key: String,
    /// `VersionId` (ListObjectVersions); `None` in a ListObjectsV2 page.
    pub version: Option<String>,
    /// `UploadId` (ListMultipartUploads).
    pub upload: Option<String>,
}

/// The entries of a ListObjectVersions (`Version`, `DeleteMarker`), ListObjectsV2 (`Contents`)
/// or ListMultipartUploads (`Upload`) answer, and whether it was cut short (`IsTruncated`).
pub fn entries(doc: &[u8]) -> Result<(Vec<Listed>, bool), ListingError> {
    if doc.len() > MAX_LISTING_BYTES {
        return Err(ListingError::TooLarge);
    }
    let (name, _, after) = root(doc)?;
    if !matches!(
        name,
        "ListVersionsResult" | "ListBucketResult" | "ListMultipartUploadsResult"
    ) {
        return Err(ListingError::Malformed("not a listing of objects, versions or uploads"));
    }
    let (elems, _) = children(doc, after)?;
    let mut out = Vec::new();
    let mut truncated = false;
    for e in elems {
        let body = &doc[e.start..e.end];
        match e.name {
            "Version" | "DeleteMarker" | "Contents" | "Upload" => {
                let key = child_text(body, "Key").ok_or(ListingError::Malformed("an entry without a Key"))?;
                let version = child_text(body, "VersionId");
                let upload = child_text(body, "UploadId");
                if e.name == "Upload" && upload.is_none() {
                    return Err(ListingError::Malformed("an upload without an UploadId"));
                }
                out.push(Listed { key, version, upload });
            }
            "IsTruncated" => truncated = child_text(body, "IsTruncated").as_deref() == Some("true"),
            _ => {}
        }
    }
    Ok((out, truncated))
}

/// The `Code` of an S3 error answer (`<Error><Code>…</Code>…</Error>`).
pub fn error_code(doc: &[u8]) -> Option<String> {
    child_text(doc.get(..doc.len().min(64 * 1024))?, "Code")
}

/// The errors of a DeleteObjects answer (`DeleteResult`): each `Error`'s key and code.
pub fn delete_errors(doc: &[u8]) -> Result<Vec<(String, String)>, ListingError> {
    if doc.len() > MAX_LISTING_BYTES {
        return Err(ListingError::TooLarge);
    }
    let (name, _, after, empty) = root_element(doc)?;
    if name != "DeleteResult" {
        return Err(ListingError::Malformed("not a DeleteResult"));
    }
    if empty {
        return Ok(Vec::new());
    }
    let (elems, _) = children(doc, after)?;
    Ok(elems
        .iter()
        .filter(|e| e.name == "Error")
        .map(|e| {
            let body = &doc[e.start..e.end];
            (
                child_text(body, "Key").unwrap_or_default(),
                child_text(body, "Code").unwrap_or_default(),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>mlpipeline</Name><Prefix></Prefix><MaxKeys>1000</MaxKeys><KeyCount>5</KeyCount><Delimiter>/</Delimiter><IsTruncated>true</IsTruncated><NextContinuationToken>private/team-b/x</NextContinuationToken><Contents><Key>a&amp;b</Key><ETag>&quot;x&quot;</ETag><Owner><ID>o</ID></Owner><Size>1</Size></Contents><Contents><Key>private/team-b/x</Key><Size>2</Size></Contents><Contents><Key>private/team-a/y</Key><Size>3</Size></Contents><CommonPrefixes><Prefix>private/</Prefix></CommonPrefixes><CommonPrefixes><Prefix>other/</Prefix></CommonPrefixes></ListBucketResult>"#;

    #[test]
    fn only_visible_entries_remain_and_keycount_is_recounted() {
        let out = filter(
            V2.as_bytes(),
            |k| k.starts_with("private/team-a/") || k == "a&b",
            |p| p == "private/",
            |m| format!("sealed({})", m.len()),
        )
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("<Key>a&amp;b</Key>"), "{out}");
        assert!(out.contains("private/team-a/y"));
        assert!(!out.contains("team-b"), "{out}");
        assert!(!out.contains("other/"));
        assert!(out.contains("<Prefix>private/</Prefix>"));
        assert!(out.contains("<KeyCount>3</KeyCount>"), "{out}");
        assert!(out.starts_with("<?xml") && out.ends_with("</ListBucketResult>"));
        assert!(out.contains("<Owner><ID>o</ID></Owner>"));
        assert!(
            out.contains("<NextContinuationToken>sealed(16)</NextContinuationToken>"),
            "{out}"
        );
    }

    #[test]
    fn sealed_markers_are_padded_so_their_length_says_nothing() {
        let seal = MarkerSeal::new(b"upstream secret");
        let rng = kfsec_types::SequenceRng::default();
        let scope = marker_scope("team-a", "mlpipeline");
        let long = "k".repeat(1024);
        let long_utf8 = "é".repeat(512);
        let markers = ["", "a", "private-artifacts/team-b/x", long.as_str(), long_utf8.as_str()];
        let sealed: Vec<String> = markers.iter().map(|m| seal.seal(&scope, m, &rng)).collect();
        for (m, t) in markers.iter().zip(&sealed) {
            assert_eq!(t.len(), sealed[0].len(), "{m:?}");
            assert_eq!(seal.open(&scope, t).as_deref(), Some(*m));
        }
        // Bound to namespace and bucket.
        assert_eq!(seal.open(&marker_scope("team-b", "mlpipeline"), &sealed[2]), None);
        assert_eq!(seal.open(&marker_scope("team-a", "other"), &sealed[2]), None);
        // A client cannot craft one: flipping any byte fails the tag.
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&sealed[2][SEALED_PREFIX.len()..])
            .unwrap();
        for i in [0, 12, 13, raw.len() - 1] {
            let mut r = raw.clone();
            r[i] ^= 1;
            let t = format!(
                "{SEALED_PREFIX}{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&r)
            );
            assert_eq!(seal.open(&scope, &t), None, "byte {i}");
        }
        // Unpadding is strict.
        assert_eq!(unpad(&[0, 1, b'a', 0]), Some(&b"a"[..]));
        assert_eq!(unpad(&[0, 1, b'a', 1]), None);
        assert_eq!(unpad(&[0, 9, b'a']), None);
        assert_eq!(unpad(&[0]), None);
    }

    #[test]
    fn upload_and_version_id_markers_are_sealed_and_only_slash_delimits() {
        let doc = "<ListMultipartUploadsResult><Bucket>b</Bucket><KeyMarker>private-artifacts/team-b/k</KeyMarker><UploadIdMarker>UPLOAD-ID-OF-B</UploadIdMarker><NextKeyMarker>private-artifacts/team-b/k</NextKeyMarker><NextUploadIdMarker>UPLOAD-ID-OF-B</NextUploadIdMarker><IsTruncated>true</IsTruncated></ListMultipartUploadsResult>";
        let out = String::from_utf8(filter(doc.as_bytes(), |_| false, |_| false, |_| "S".to_owned()).unwrap()).unwrap();
        assert!(!out.contains("team-b") && !out.contains("UPLOAD-ID"), "{out}");
        assert!(out.contains("<NextUploadIdMarker>S</NextUploadIdMarker>"), "{out}");
        let doc = "<ListVersionsResult><VersionIdMarker>v1</VersionIdMarker><NextKeyMarker>x</NextKeyMarker><NextVersionIdMarker>v-of-b</NextVersionIdMarker></ListVersionsResult>";
        let out = String::from_utf8(filter(doc.as_bytes(), |_| false, |_| false, |_| "S".to_owned()).unwrap()).unwrap();
        assert_eq!(
            out,
            "<ListVersionsResult><VersionIdMarker>S</VersionIdMarker><NextKeyMarker>S</NextKeyMarker><NextVersionIdMarker>S</NextVersionIdMarker></ListVersionsResult>"
        );
        for p in ["upload-id-marker", "version-id-marker", "start-after", "key-marker"] {
            assert!(MARKER_PARAMS.contains(&p));
        }
        assert!(filtered_delimiter_ok("") && filtered_delimiter_ok("/"));
        for d in ["-", "t", "//", "a/", " /"] {
            assert!(!filtered_delimiter_ok(d), "{d}");
        }
    }

    #[test]
    fn sealed_markers_open_only_for_their_namespace() {
        let seal = MarkerSeal::new(b"upstream secret");
        let rng = kfsec_types::SequenceRng::default();
        let t = seal.seal("team-a", "private-artifacts/team-b/run", &rng);
        assert!(t.starts_with(SEALED_PREFIX) && !t.contains("team-b"), "{t}");
        assert_eq!(seal.open("team-a", &t).as_deref(), Some("private-artifacts/team-b/run"));
        assert_eq!(seal.open("team-b", &t), None);
        assert_eq!(MarkerSeal::new(b"other").open("team-a", &t), None);
        let mut bad = t.clone();
        bad.push('A');
        assert_eq!(seal.open("team-a", &bad), None);
        assert_eq!(seal.open("team-a", "kfsec1.!!"), None);
        assert_eq!(seal.open("team-a", "plain"), None);
    }

    #[test]
    fn uploads_and_versions_are_filtered_by_key() {
        let doc = "<ListMultipartUploadsResult><Bucket>b</Bucket><Upload><Key>x/1</Key><UploadId>u</UploadId></Upload><Upload><Key>y/1</Key></Upload></ListMultipartUploadsResult>";
        let out = String::from_utf8(filter(doc.as_bytes(), |k| k.starts_with("x/"), |_| false, str::to_owned).unwrap())
            .unwrap();
        assert!(out.contains("x/1") && !out.contains("y/1"), "{out}");
        let doc = "<ListVersionsResult><Version><Key>y</Key></Version><DeleteMarker><Key>y</Key></DeleteMarker><Version><Key>x</Key></Version></ListVersionsResult>";
        let out = String::from_utf8(filter(doc.as_bytes(), |k| k == "x", |_| false, str::to_owned).unwrap()).unwrap();
        assert_eq!(
            out,
            "<ListVersionsResult><Version><Key>x</Key></Version></ListVersionsResult>"
        );
    }

    #[test]
    fn hostile_or_broken_answers_are_errors_not_passed_on() {
        for doc in [
            "",
            "<Error><Code>x</Code></Error>",
            "<ListBucketResult><Contents><Key>a</Key>",
            "<ListBucketResult><Contents><![CDATA[<Key>x</Key>]]></Contents></ListBucketResult>",
            "<ListBucketResult><a><a><a><a><a><a><a><a><a><a></a></a></a></a></a></a></a></a></a></a></ListBucketResult>",
            "garbage",
        ] {
            assert!(
                filter(doc.as_bytes(), |_| true, |_| true, str::to_owned).is_err(),
                "{doc}"
            );
        }
        // An entry whose key cannot be decoded is dropped.
        let doc = "<ListBucketResult><Contents><Key>&bogus;</Key></Contents></ListBucketResult>";
        let out = filter(doc.as_bytes(), |_| true, |_| true, str::to_owned).unwrap();
        assert_eq!(out, b"<ListBucketResult></ListBucketResult>");
        assert_eq!(unescape("&#x41;&#66;&lt;").as_deref(), Some("AB<"));
    }

    #[test]
    fn delete_documents_name_their_keys_or_fail() {
        let doc = b"<?xml version=\"1.0\"?><Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Quiet>true</Quiet><Object><Key>a/1</Key></Object><Object><Key>b&amp;2</Key><VersionId>v</VersionId></Object></Delete>";
        let d = delete_request(doc).unwrap();
        assert_eq!(d.keys().collect::<Vec<_>>(), ["a/1", "b&2"]);
        assert_eq!(d.quiet, Some(true));
        for bad in [
            &b"<Delete><Object><VersionId>v</VersionId></Object></Delete>"[..],
            b"<Delete><Other/></Delete>",
            b"<NotDelete/>",
            b"<Delete><Object><Key>x</Key>",
            b"<Delete></Delete>",
            b"<Delete><Object><Key></Key></Object></Delete>",
        ] {
            assert!(delete_request(bad).is_err());
        }
    }

    /// Finding 1 of the security review: the store must not delete a key the gateway did not
    /// check, whatever its XML parser does with duplicates, nesting or prefixes.
    #[test]
    fn delete_documents_with_ambiguous_keys_are_refused() {
        for bad in [
            // Go's encoding/xml keeps the last of repeated elements.
            "<Delete><Object><Key>private-artifacts/team-a/x</Key><Key>private-artifacts/team-b/victim</Key></Object></Delete>",
            // A Key nested in an unknown element.
            "<Delete><Object><Foo><Key>private-artifacts/team-a/x</Key></Foo><Key>private-artifacts/team-b/victim</Key></Object></Delete>",
            "<Delete><Object><Key>private-artifacts/team-b/victim</Key><Foo><Key>private-artifacts/team-a/x</Key></Foo></Object></Delete>",
            // Namespace-prefixed names (local name Key for a namespace-aware parser).
            "<Delete><Object><Key>private-artifacts/team-a/x</Key><s3:Key xmlns:s3=\"http://s3.amazonaws.com/doc/2006-03-01/\">private-artifacts/team-b/victim</s3:Key></Object></Delete>",
            "<Delete xmlns:s3=\"x\"><s3:Object><Key>a</Key></s3:Object></Delete>",
            // Attributes, comments, CDATA, DOCTYPE, Key with children, text around elements.
            "<Delete><Object><Key xmlns=\"x\">a</Key></Object></Delete>",
            "<Delete><Object><Key>a<!-- c --></Key></Object></Delete>",
            "<Delete><Object><Key><![CDATA[a]]></Key></Object></Delete>",
            "<!DOCTYPE d [<!ENTITY e \"b\">]><Delete><Object><Key>&e;</Key></Object></Delete>",
            "<Delete><Object><Key>a<b/></Key></Object></Delete>",
            "<Delete><Object>junk<Key>a</Key></Object></Delete>",
            "<Delete><Object><Key>a</Key><VersionId>1</VersionId><VersionId>2</VersionId></Object></Delete>",
            "<Delete><Quiet>true</Quiet><Quiet>false</Quiet><Object><Key>a</Key></Object></Delete>",
            "<Delete><Quiet>yes</Quiet><Object><Key>a</Key></Object></Delete>",
            "<Delete><Object><Key>a</Key></Object></Delete><Delete><Object><Key>b</Key></Object></Delete>",
        ] {
            assert!(delete_request(bad.as_bytes()).is_err(), "{bad}");
        }
        let many = format!("<Delete>{}</Delete>", "<Object><Key>a</Key></Object>".repeat(1001));
        assert!(delete_request(many.as_bytes()).is_err());
    }

    #[test]
    fn delete_documents_are_reserialized_canonically() {
        let doc = "<Delete xmlns='http://s3.amazonaws.com/doc/2006-03-01/'>\n <Object>\n  <VersionId>v&lt;1</VersionId><Key>a&amp;b\r\n&#x9;&quot;c</Key>\n </Object><Object><Key>x</Key><ETag/></Object>\n</Delete>\n";
        let d = delete_request(doc.as_bytes()).unwrap();
        assert_eq!(d.objects[0].key, "a&b\r\n\t\"c");
        let out = String::from_utf8(d.to_xml()).unwrap();
        assert_eq!(
            out,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Object><Key>a&amp;b&#xD;&#xA;&#x9;&quot;c</Key><VersionId>v&lt;1</VersionId></Object><Object><Key>x</Key><ETag></ETag></Object></Delete>"
        );
        // The canonical form reads back to the same list.
        assert_eq!(delete_request(out.as_bytes()).unwrap(), d);
    }

    #[test]
    fn a_truncated_v1_page_gets_a_sealed_next_marker() {
        let doc = "<ListBucketResult><Name>b</Name><Marker></Marker><MaxKeys>2</MaxKeys><IsTruncated>true</IsTruncated><Contents><Key>a/1</Key></Contents><Contents><Key>b/9</Key></Contents></ListBucketResult>";
        let out = filter(
            doc.as_bytes(),
            |k| k.starts_with("a/"),
            |_| false,
            |m| format!("S[{m}]"),
        )
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains("<NextMarker>S[b/9]</NextMarker>") && !out.contains("<Key>b/9"),
            "{out}"
        );
        // Not when the page is complete, nor for V2 (KeyCount) answers.
        let done = doc.replace("<IsTruncated>true", "<IsTruncated>false");
        let out = String::from_utf8(filter(done.as_bytes(), |_| true, |_| true, str::to_owned).unwrap()).unwrap();
        assert!(!out.contains("NextMarker"), "{out}");
        let v2 = doc.replace("<MaxKeys>", "<KeyCount>2</KeyCount><MaxKeys>");
        let out = String::from_utf8(filter(v2.as_bytes(), |_| true, |_| true, str::to_owned).unwrap()).unwrap();
        assert!(!out.contains("NextMarker"), "{out}");
    }

    #[test]
    fn listed_entries_and_delete_errors_are_read() {
        let versions = br#"<?xml version="1.0"?><ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><IsTruncated>true</IsTruncated><Version><Key>a&amp;b</Key><VersionId>v1</VersionId><IsLatest>true</IsLatest><Owner><ID>o</ID></Owner></Version><DeleteMarker><Key>c</Key><VersionId>v2</VersionId></DeleteMarker></ListVersionsResult>"#;
        let (listed, truncated) = entries(versions).unwrap();
        assert!(truncated);
        assert_eq!(
            listed,
            [
                Listed {
                    key: "a&b".into(),
                    version: Some("v1".into()),
                    upload: None,
                },
                Listed {
                    key: "c".into(),
                    version: Some("v2".into()),
                    upload: None,
                },
            ]
        );
        let (listed, truncated) = entries(V2.as_bytes()).unwrap();
        assert!(truncated);
        assert_eq!(listed.len(), 3);
        assert!(listed.iter().all(|l| l.version.is_none()));
        let uploads = b"<ListMultipartUploadsResult><Bucket>b</Bucket><Upload><Key>k</Key><UploadId>u1</UploadId></Upload></ListMultipartUploadsResult>";
        assert_eq!(entries(uploads).unwrap().0[0].upload.as_deref(), Some("u1"));
        assert!(
            entries(b"<ListMultipartUploadsResult><Upload><Key>k</Key></Upload></ListMultipartUploadsResult>").is_err()
        );
        assert!(entries(b"<Error><Code>AccessDenied</Code></Error>").is_err());
        assert!(entries(b"<ListBucketResult><Contents><Size>1</Size></Contents></ListBucketResult>").is_err());
        let result = b"<DeleteResult><Deleted><Key>x</Key></Deleted><Error><Key>y &amp; z</Key><Code>AccessDenied</Code></Error></DeleteResult>";
        assert_eq!(
            delete_errors(result).unwrap(),
            [("y & z".to_owned(), "AccessDenied".to_owned())]
        );
        assert_eq!(delete_errors(b"<DeleteResult/>").unwrap(), []);
        assert!(delete_errors(versions).is_err());
        assert_eq!(
            error_code(b"<Error><Code>NotImplemented</Code></Error>").as_deref(),
            Some("NotImplemented")
        );
    }
}
