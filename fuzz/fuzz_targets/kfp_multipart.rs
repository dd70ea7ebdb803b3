//! Arbitrary bytes as a KFP pipeline upload: the first line is the multipart boundary, the rest
//! the body. The parser never panics, answers in linear time (no quadratic rescans: libFuzzer's
//! slow-unit detection would flag them), and a file it finds is a slice of the body no larger
//! than the body; a well-formed body built around the found file parses back to the same file.

#![no_main]

use kfsec_kfp::multipart::{MAX_BOUNDARY, file, header_param};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (boundary, body) = match data.iter().position(|&c| c == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let boundary = String::from_utf8_lossy(boundary);
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let Ok(up) = file(&content_type, body, "uploadfile") else {
        return;
    };
    assert!(up.bytes.len() <= body.len());
    // The boundary the parser used (quotes and spaces removed).
    let effective = header_param(&content_type, "boundary").expect("a parsed body had a boundary");
    assert!(!effective.is_empty() && effective.len() <= MAX_BOUNDARY);
    // Round trip: the same file in a clean body (when its content cannot hold the delimiter).
    let delim = format!("--{effective}");
    if up.bytes.windows(delim.len()).any(|w| w == delim.as_bytes())
        || effective.contains(|c: char| c.is_control() || c == '"' || c == ';')
        || up.filename.contains(|c: char| c.is_control() || c == '"' || c == ';')
    {
        return;
    }
    let mut clean = format!(
        "{delim}\r\nContent-Disposition: form-data; name=\"uploadfile\"; filename=\"{}\"\r\n\r\n",
        up.filename
    )
    .into_bytes();
    clean.extend_from_slice(&up.bytes);
    clean.extend_from_slice(format!("\r\n{delim}--\r\n").as_bytes());
    let again = file(&content_type, &clean, "uploadfile").expect("a clean body parses");
    assert_eq!(again, up);
});
