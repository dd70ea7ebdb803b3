//! Arbitrary text as a `?labelSelector=` value through kfsec-api's parser
//! (`selector::LabelQuery::parse`): it never panics; a parsed selector renders (`Display`) to
//! text that parses back to the same selector, and rendering that again gives the same text (a
//! fixed point, so a selector handed on — in a watch, a page token — means what was asked);
//! matching any label set never panics.

#![no_main]

use kfsec_api::selector::LabelQuery;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(sel) = LabelQuery::parse(input) else {
        return;
    };
    let text = sel.to_string();
    let again = LabelQuery::parse(&text).unwrap_or_else(|e| panic!("{input:?} rendered as {text:?}, which fails: {e}"));
    assert_eq!(again, sel, "{input:?} rendered as {text:?}");
    assert_eq!(again.to_string(), text, "render is not a fixed point for {input:?}");
    assert_eq!(sel.is_empty(), text.is_empty(), "{input:?} -> {text:?}");
    // Label sets built from the input's own words, so keys and values the selector names occur.
    let words: Vec<&str> = input
        .split(|c: char| !(c.is_ascii_alphanumeric() || "-_./".contains(c)))
        .filter(|w| !w.is_empty())
        .collect();
    let mut labels = serde_json::Map::new();
    for pair in words.chunks(2) {
        labels.insert(pair[0].to_owned(), json!(pair.get(1).copied().unwrap_or("")));
    }
    let labels = serde_json::Value::Object(labels);
    assert_eq!(sel.matches(Some(&labels)), again.matches(Some(&labels)));
    let _ = sel.matches(None);
    let _ = sel.matches(Some(&json!({"a": 1, "b": null})));
});
