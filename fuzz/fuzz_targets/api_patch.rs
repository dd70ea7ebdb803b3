//! Arbitrary bytes as a PATCH through kfsec-api's `patch::apply`: the first byte picks the patch
//! type (JSON patch, JSON merge patch, strategic merge patch, server-side apply) and whether the
//! kind is built in; the rest is the stored object (JSON, up to the first NUL byte) and the raw
//! patch body — or, with bit 3 of the first byte set and a JSON patch, a program of 4-byte
//! operations (op, path, path repeat, value/from) turned into a JSON patch body, so that
//! deep paths, deep values and self-copies are a few mutations away. It never panics; a result is a JSON object that reads back through `serde_json`
//! (the store's decoder); its size is bounded by the object's plus the patch's plus the copy
//! budget; it nests no deeper than the object or the patch (merge patches) or
//! `MAX_PATCHED_DEPTH` (JSON patch); an empty merge patch or JSON patch is the identity, and a
//! merge patch applied twice is applied once. Server-side apply is not a plain patch (415; the
//! `server_side_apply` target fuzzes it).

#![no_main]

use kfsec_api::PatchType;
use kfsec_api::patch::{self, MAX_JSON_PATCH_COPY_BYTES, MAX_PATCHED_DEPTH};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The most generated operations: enough to double a value past the depth limit (and a few KB
/// past the copy budget), few enough that budget-sized objects do not eat the run.
const MAX_OPS: usize = 16;

/// Path segments the generated operations use ("" keys nest cheaply; "-" appends).
const SEGS: [&str; 5] = ["a", "", "0", "-", "x"];

/// `{"":{"":…}}`, `n` levels deep.
fn nested(n: usize) -> Value {
    (0..n).fold(Value::Null, |v, _| serde_json::json!({ "": v }))
}

fn pointer(head: u8, reps: u8) -> String {
    if head == 255 {
        return String::new();
    }
    let rep = SEGS[usize::from(head / 5) % SEGS.len()];
    let mut p = format!("/{}", SEGS[usize::from(head) % SEGS.len()]);
    for _ in 0..reps {
        p.push('/');
        p.push_str(rep);
    }
    p
}

/// A JSON patch body from 4-byte operations.
fn program(bytes: &[u8]) -> Vec<u8> {
    let ops: Vec<Value> = bytes
        .chunks_exact(4)
        .take(MAX_OPS)
        .map(|c| {
            let path = pointer(c[1], c[2]);
            let from = pointer(c[3] % 5, c[3] / 5);
            let value = match c[3] % 6 {
                0 => serde_json::json!({}),
                1 => serde_json::json!([]),
                2 => serde_json::json!(1),
                3 => serde_json::json!("s"),
                4 => Value::Null,
                _ => nested(usize::from(c[3]).min(125)),
            };
            match c[0] % 6 {
                0 => serde_json::json!({"op": "add", "path": path, "value": value}),
                1 => serde_json::json!({"op": "remove", "path": path}),
                2 => serde_json::json!({"op": "replace", "path": path, "value": value}),
                3 => serde_json::json!({"op": "move", "from": from, "path": path}),
                4 => serde_json::json!({"op": "copy", "from": from, "path": path}),
                _ => serde_json::json!({"op": "test", "path": path, "value": value}),
            }
        })
        .collect();
    serde_json::to_vec(&ops).unwrap_or_default()
}

fn size(v: &Value) -> usize {
    serde_json::to_vec(v).map_or(0, |b| b.len())
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let (doc, body) = match rest.iter().position(|b| *b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&b"{}"[..], rest),
    };
    // The stored object: what the store hands back (an object its decoder read).
    let Ok(doc @ Value::Object(_)) = serde_json::from_slice::<Value>(doc) else {
        return;
    };
    let kind = [
        PatchType::Json,
        PatchType::Merge,
        PatchType::Strategic,
        PatchType::Apply,
    ][usize::from(sel & 3)];
    let builtin = sel & 4 != 0;
    let generated;
    let body = if sel & 8 != 0 && kind == PatchType::Json {
        generated = program(body);
        &generated[..]
    } else {
        body
    };

    // Identities, whatever the body.
    assert_eq!(
        patch::apply(&doc, PatchType::Merge, b"{}", builtin).ok().as_ref(),
        Some(&doc),
        "empty merge patch"
    );
    assert_eq!(
        patch::apply(&doc, PatchType::Json, b"[]", builtin).ok().as_ref(),
        Some(&doc),
        "empty JSON patch"
    );
    if builtin {
        assert_eq!(
            patch::apply(&doc, PatchType::Strategic, b"{}", true).ok().as_ref(),
            Some(&doc),
            "empty SMP"
        );
    }

    let result = patch::apply(&doc, kind, body, builtin);
    let out = match result {
        Ok(out) => out,
        Err(e) => {
            let code = e.code();
            assert!((400..500).contains(&code), "a bad patch is a 4xx, got {code}");
            if kind == PatchType::Apply {
                assert_eq!(code, 415);
            }
            return;
        }
    };
    assert!(kind != PatchType::Apply, "apply is not a plain patch");
    assert!(out.is_object(), "the result is an object");
    let Ok(parsed) = serde_json::from_slice::<Value>(body) else {
        panic!("a patch that does not parse was applied")
    };
    // Size: nothing but the patch's values and the copy budget can add to the object.
    let budget = if kind == PatchType::Json {
        MAX_JSON_PATCH_COPY_BYTES
    } else {
        0
    };
    let bound = size(&doc) + size(&parsed) + budget;
    assert!(
        size(&out) <= bound,
        "the result grew to {} bytes (bound {bound})",
        size(&out)
    );
    // Depth: merges nest no deeper than their inputs; a JSON patch no deeper than the store reads.
    let d = patch::depth(&out);
    match kind {
        PatchType::Json => assert!(d <= MAX_PATCHED_DEPTH.max(patch::depth(&doc)), "depth {d}"),
        _ => assert!(d <= patch::depth(&doc).max(patch::depth(&parsed)), "depth {d}"),
    }
    // The store can read the result back.
    let text = serde_json::to_vec(&out).expect("serialize");
    assert!(serde_json::from_slice::<Value>(&text).is_ok(), "the result reads back");
    // A merge patch is idempotent (RFC 7386).
    if kind == PatchType::Merge {
        let twice = patch::apply(&out, kind, body, builtin).expect("re-applying a merge patch");
        assert_eq!(twice, out, "merge patch applied twice differs");
    }
});
