//! `multipart/form-data` (RFC 7578) parsing of pipeline uploads: finds the one named file part.
//!
//! Invariants: time is linear in the body — the delimiter is searched with Knuth–Morris–Pratt
//! (no rescans, whatever the content), each part's header block is searched only within
//! [`MAX_HEADER_BYTES`], and at most [`MAX_PARTS`] parts are looked at; the boundary is 1–70
//! characters (RFC 2046); the returned file borrows nothing and is never larger than the body;
//! no input panics.

/// The most parts looked at before the body is refused.
pub const MAX_PARTS: usize = 16;
/// The longest header block of one part.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// The longest boundary RFC 2046 allows.
pub const MAX_BOUNDARY: usize = 70;

/// One uploaded file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// The client's file name.
    pub filename: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Why a body is not a usable multipart upload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    /// The content type is not `multipart/form-data`.
    #[error("the request is not multipart/form-data")]
    NotMultipart,
    /// No usable `boundary` parameter.
    #[error("no multipart boundary (1 to {MAX_BOUNDARY} characters)")]
    Boundary,
    /// The body does not follow the multipart syntax.
    #[error("malformed multipart body: {0}")]
    Malformed(&'static str),
    /// More than [`MAX_PARTS`] parts before the wanted one.
    #[error("more than {MAX_PARTS} multipart parts")]
    TooManyParts,
    /// No part with that name.
    #[error("no part named {0:?}")]
    Missing(String),
}

/// A substring finder with a precomputed KMP failure table: O(haystack + needle) per search.
struct Finder<'a> {
    needle: &'a [u8],
    fail: Vec<usize>,
}

impl<'a> Finder<'a> {
    fn new(needle: &'a [u8]) -> Self {
        let mut fail = vec![0usize; needle.len()];
        let mut k = 0usize;
        for i in 1..needle.len() {
            while k > 0 && needle.get(i) != needle.get(k) {
                k = fail.get(k - 1).copied().unwrap_or(0);
            }
            if needle.get(i) == needle.get(k) {
                k += 1;
            }
            if let Some(f) = fail.get_mut(i) {
                *f = k;
            }
        }
        Self { needle, fail }
    }

    /// The first index `>= from` where the needle starts.
    fn find(&self, hay: &[u8], from: usize) -> Option<usize> {
        let m = self.needle.len();
        if m == 0 {
            return None;
        }
        let mut k = 0usize;
        for (i, c) in hay.iter().enumerate().skip(from) {
            while k > 0 && self.needle.get(k) != Some(c) {
                k = self.fail.get(k - 1).copied().unwrap_or(0);
            }
            if self.needle.get(k) == Some(c) {
                k += 1;
            }
            if k == m {
                return Some(i + 1 - m);
            }
        }
        None
    }
}

/// A `; key=value` parameter of a header value (quotes removed).
pub fn header_param(header: &str, name: &str) -> Option<String> {
    for part in header.split(';').skip(1) {
        let Some((k, v)) = part.trim().split_once('=') else {
            continue;
        };
        if k.trim().eq_ignore_ascii_case(name) {
            let v = v.trim();
            let v = v.strip_prefix('"').and_then(|x| x.strip_suffix('"')).unwrap_or(v);
            return Some(v.to_owned());
        }
    }
    None
}

/// The end of a part's header block starting at `start`: (index of the blank line, its length).
fn header_end(body: &[u8], start: usize) -> Option<(usize, usize)> {
    let window = body.get(start..)?;
    let window = window.get(..window.len().min(MAX_HEADER_BYTES + 4)).unwrap_or(window);
    // A part without headers: the blank line comes first.
    if window.starts_with(b"\r\n") {
        return Some((start, 2));
    }
    if window.starts_with(b"\n") {
        return Some((start, 1));
    }
    let mut i = 0usize;
    while let Some(off) = window.get(i..).and_then(|w| w.iter().position(|&c| c == b'\n')) {
        let nl = i + off;
        let rest = window.get(nl + 1..).unwrap_or_default();
        if rest.starts_with(b"\n") {
            return Some((start + nl, 2));
        }
        if rest.starts_with(b"\r\n") && nl > 0 && window.get(nl - 1) == Some(&b'\r') {
            return Some((start + nl - 1, 4));
        }
        i = nl + 1;
    }
    None
}

/// Extracts the part named `field` from a `multipart/form-data` body.
pub fn file(content_type: &str, body: &[u8], field: &str) -> Result<Upload, MultipartError> {
    let mime = content_type.split(';').next().unwrap_or_default().trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return Err(MultipartError::NotMultipart);
    }
    let boundary = header_param(content_type, "boundary")
        .filter(|b| !b.is_empty() && b.len() <= MAX_BOUNDARY)
        .ok_or(MultipartError::Boundary)?;
    let delim = format!("--{boundary}");
    let finder = Finder::new(delim.as_bytes());
    let mut pos = finder
        .find(body, 0)
        .ok_or(MultipartError::Malformed("no multipart part"))?;
    for _ in 0..MAX_PARTS {
        pos += delim.len();
        let rest = body.get(pos..).unwrap_or_default();
        if rest.starts_with(b"--") {
            return Err(MultipartError::Missing(field.to_owned()));
        }
        // The line break after the delimiter.
        let hstart = if rest.starts_with(b"\r\n") {
            pos + 2
        } else if rest.starts_with(b"\n") {
            pos + 1
        } else {
            return Err(MultipartError::Malformed("malformed part delimiter"));
        };
        let (hend, sep) = header_end(body, hstart).ok_or(MultipartError::Malformed("malformed part headers"))?;
        let headers = std::str::from_utf8(body.get(hstart..hend).unwrap_or_default())
            .map_err(|_| MultipartError::Malformed("part headers are not UTF-8"))?;
        let content_start = hend + sep;
        let next = finder
            .find(body, content_start)
            .ok_or(MultipartError::Malformed("unterminated part"))?;
        let before = body.get(content_start..next).unwrap_or_default();
        let content = before
            .strip_suffix(b"\r\n")
            .or_else(|| before.strip_suffix(b"\n"))
            .unwrap_or(before);
        let disposition = headers
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(h, _)| h.trim().eq_ignore_ascii_case("content-disposition"))
            .map(|(_, v)| v.trim())
            .unwrap_or_default();
        if header_param(disposition, "name").as_deref() == Some(field) {
            return Ok(Upload {
                filename: header_param(disposition, "filename").unwrap_or_default(),
                bytes: content.to_vec(),
            });
        }
        pos = next;
    }
    Err(MultipartError::TooManyParts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT: &str = "multipart/form-data; boundary=XyZ";

    #[test]
    fn finds_the_named_part() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nv\r\n--XyZ\r\nContent-Disposition: form-data; name=\"uploadfile\"; filename=\"p.yaml\"\r\nContent-Type: application/octet-stream\r\n\r\nhello\r\nworld\r\n--XyZ--\r\n";
        let u = file(CT, body, "uploadfile").unwrap();
        assert_eq!(u.filename, "p.yaml");
        assert_eq!(u.bytes, b"hello\r\nworld");
        // bare LF line ends, a quoted boundary, an empty part
        let body = b"--XyZ\nContent-Disposition: form-data; name=\"uploadfile\"\n\n\n--XyZ--\n";
        let u = file("multipart/form-data; boundary=\"XyZ\"", body, "uploadfile").unwrap();
        assert!(u.bytes.is_empty());
    }

    #[test]
    fn refuses_bad_bodies() {
        let cases: [(&str, &[u8], MultipartError); 8] = [
            ("application/json", b"--XyZ--", MultipartError::NotMultipart),
            ("multipart/form-data", b"--XyZ--", MultipartError::Boundary),
            (
                "multipart/form-data; boundary=nope",
                b"--XyZ--",
                MultipartError::Malformed("no multipart part"),
            ),
            (
                CT,
                b"--XyZ\r\nContent-Disposition: form-data; name=\"uploadfile\"\r\n\r\nunterminated",
                MultipartError::Malformed("unterminated part"),
            ),
            (CT, b"--XyZ", MultipartError::Malformed("malformed part delimiter")),
            (CT, b"--XyZ--\r\n", MultipartError::Missing("uploadfile".into())),
            (CT, b"", MultipartError::Malformed("no multipart part")),
            (
                CT,
                b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\nno blank line",
                MultipartError::Malformed("malformed part headers"),
            ),
        ];
        for (ct, b, want) in cases {
            assert_eq!(file(ct, b, "uploadfile").unwrap_err(), want, "{ct} {b:?}");
        }
        let long = format!("multipart/form-data; boundary={}", "b".repeat(71));
        assert_eq!(file(&long, b"", "f").unwrap_err(), MultipartError::Boundary);
    }

    #[test]
    fn part_count_and_header_size_are_bounded() {
        let mut body = Vec::new();
        for _ in 0..MAX_PARTS {
            body.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nv\r\n");
        }
        body.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"uploadfile\"\r\n\r\nv\r\n--XyZ--");
        assert_eq!(file(CT, &body, "uploadfile").unwrap_err(), MultipartError::TooManyParts);
        let mut body = b"--XyZ\r\nX-Pad: ".to_vec();
        body.extend(std::iter::repeat_n(b'a', MAX_HEADER_BYTES + 10));
        body.extend_from_slice(b"\r\n\r\nv\r\n--XyZ--");
        assert_eq!(
            file(CT, &body, "uploadfile").unwrap_err(),
            MultipartError::Malformed("malformed part headers")
        );
    }

    #[test]
    fn kmp_matches_naive_search() {
        let hay = b"aabaabaaabaabaaab--x--xy--xyz";
        for needle in [&b"aab"[..], b"aabaaab", b"--xyz", b"b", b"zz", b"aaab"] {
            let f = Finder::new(needle);
            for from in 0..hay.len() {
                let naive = (from..=hay.len().saturating_sub(needle.len()))
                    .find(|&i| hay.get(i..i + needle.len()) == Some(needle));
                assert_eq!(f.find(hay, from), naive, "{needle:?} from {from}");
            }
        }
    }

    #[test]
    fn time_is_linear_in_adversarial_bodies() {
        // Many parts (each header search used to scan the rest of the body) and content full of
        // near-delimiters (each used to cost a boundary-length comparison): count the work.
        let boundary = "x".repeat(69) + "y";
        let ct = format!("multipart/form-data; boundary={boundary}");
        let mut body =
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"uploadfile\"\r\n\r\n").into_bytes();
        let near = format!("\r\n--{}", "x".repeat(69));
        while body.len() < 2_000_000 {
            body.extend_from_slice(near.as_bytes());
        }
        body.extend_from_slice(format!("\r\n--{boundary}--").as_bytes());
        #[allow(clippy::disallowed_methods)] // a linear-time regression measures real elapsed time
        let t = std::time::Instant::now();
        let u = file(&ct, &body, "uploadfile").unwrap();
        assert!(u.bytes.len() > 1_900_000);
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", t.elapsed());
    }
}
