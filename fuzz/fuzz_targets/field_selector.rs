//! Arbitrary text as a `?fieldSelector=` value through kfsec-api's parser
//! (`selector::FieldSelector::parse`), for a kind chosen by the first byte: it never panics; a
//! parsed selector renders (`Display`, values escaped as Kubernetes escapes them) to text that
//! parses back to the same selector, and rendering that again gives the same text; and a
//! selector that pins a name (`metadata.name=`, used to read one key instead of listing) never
//! matches an object of another name.

#![no_main]

use kfsec_api::selector::FieldSelector;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

const KINDS: &[&str] = &["Pod", "Secret", "Event", "Namespace", "ConfigMap"];

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let kind = KINDS[usize::from(k) % KINDS.len()];
    let Ok(input) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(sel) = FieldSelector::parse(input, kind) else {
        return;
    };
    let text = sel.to_string();
    let again = FieldSelector::parse(&text, kind)
        .unwrap_or_else(|e| panic!("{input:?} rendered as {text:?}, which fails: {e}"));
    assert_eq!(again, sel, "{input:?} rendered as {text:?}");
    assert_eq!(again.to_string(), text, "render is not a fixed point for {input:?}");
    if let Some(name) = sel.pinned_name() {
        for other in [format!("{name}x"), String::new(), "x".to_owned()] {
            if other != name {
                let obj =
                    json!({"metadata": {"name": other, "namespace": name}, "type": name, "status": {"phase": name}});
                assert!(!sel.matches(&obj), "{input:?} pins {name:?} but matches {obj}");
            }
        }
    }
    let _ = sel.matches(&json!({"metadata": {"name": 5, "namespace": null}, "spec": []}));
});
