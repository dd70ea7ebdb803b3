//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and a strategic merge patch
//! for built-in kinds (lists merged by their Kubernetes merge keys, `$patch`, `$retainKeys`,
//! `$deleteFromPrimitiveList/…` and `$setElementOrder/…` directives).
//!
//! Invariants: patching works on a copy and either yields a whole new object or an error (→ 4xx
//! Status); server-side apply is not a plain patch (it goes through `managed`); nothing here panics on hostile input; time is
//! (near) linear in the object and the patch — list merges, deletions from primitive lists and
//! element orders go through hash indexes, and a JSON patch holds at most
//! [`MAX_JSON_PATCH_OPERATIONS`] operations (the Kubernetes API server's limit; 413 above) whose
//! `copy` operations copy at most [`MAX_JSON_PATCH_COPY_BYTES`] in total (422 above), so a patch
//! cannot grow an object beyond its body plus that budget. Nesting is bounded too: merge patches
//! nest no deeper than the object or the patch; a JSON patch (whose `add`/`copy`/`move` can put
//! a value under a path, doubling the depth per `copy`) is refused (422) once a bound on the
//! depth passes [`MAX_JSON_PATCH_WORKING_DEPTH`] (so no deep value is ever built, cloned or
//! dropped) and when its result nests deeper than [`MAX_PATCHED_DEPTH`] (the store's decoder
//! could not read it back).

use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::{Map, Value};

use crate::lists::merge_key;
use crate::status::ApiError;

/// The most operations of one JSON patch (as the Kubernetes API server).
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// The most bytes the `copy` operations of one JSON patch may copy in total (kube-apiserver's
/// `JSONPatchMaxCopyBytes`).
pub const MAX_JSON_PATCH_COPY_BYTES: usize = 3 * 1024 * 1024;

/// The deepest nesting (objects and arrays) a patched object may have: what `serde_json`, the
/// store's decoder, reads back (its recursion limit is 128).
pub const MAX_PATCHED_DEPTH: usize = 127;

/// The bound on nesting while a JSON patch runs (a big `move` is counted conservatively, so this is
/// looser than [`MAX_PATCHED_DEPTH`]; the result is then measured exactly).
pub const MAX_JSON_PATCH_WORKING_DEPTH: usize = 512;

/// The nesting depth of `v` (a scalar is 0, `{}` and `[]` are 1), without recursion.
pub fn depth(v: &Value) -> usize {
    depth_within(v, usize::MAX).unwrap_or(usize::MAX)
}

/// [`depth`], or `None` when `v` has more than `nodes` values (the walk stops there).
fn depth_within(v: &Value, mut nodes: usize) -> Option<usize> {
    let mut max = 0;
    let mut todo = vec![(v, 0usize)];
    while let Some((v, d)) = todo.pop() {
        nodes = nodes.checked_sub(1)?;
        match v {
            Value::Object(m) => {
                max = max.max(d + 1);
                todo.extend(m.values().map(|c| (c, d + 1)));
            }
            Value::Array(a) => {
                max = max.max(d + 1);
                todo.extend(a.iter().map(|c| (c, d + 1)));
            }
            _ => max = max.max(d),
        }
    }
    Some(max)
}

/// The most values a `move` measures (above, its depth is bounded by the object's).
const MOVE_MEASURE_NODES: usize = 1024;

/// The number of reference tokens of a JSON pointer.
fn segments(p: &str) -> usize {
    p.matches('/').count()
}

/// The length of `v`'s JSON text, counted up to `cap` (more is reported as `cap`): linear in
/// `cap`, not in the value.
fn json_size(v: &Value, cap: usize) -> usize {
    struct Counter(usize, usize);
    impl std::io::Write for Counter {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(b.len());
            if self.0 >= self.1 {
                return Err(std::io::Error::other("over the cap"));
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Counter(0, cap);
    let _ = serde_json::to_writer(&mut c, v);
    c.0.min(cap)
}

/// A hashable identity of a JSON value (its canonical text).
fn identity(v: &Value) -> String {
    v.to_string()
}

/// The patch flavours a client can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/json-patch+json`.
    Json,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml`: server-side apply (see [`crate::managed`]).
    Apply,
}

const ACCEPTED: &str = "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml";

impl PatchType {
    /// From a `Content-Type`; anything else → 415.
    pub fn from_content_type(ct: &str) -> Result<Self, ApiError> {
        let base = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match base.as_str() {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/json-patch+json" => Ok(Self::Json),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/apply-patch+yaml" => Ok(Self::Apply),
            _ => Err(ApiError::UnsupportedMediaType(ACCEPTED.to_owned())),
        }
    }
}

/// Applies `patch` (raw body) to `doc`. `builtin` says whether the kind is a compiled-in
/// Kubernetes kind (strategic merge patch is refused for the others, as for custom resources).
pub fn apply(doc: &Value, kind: PatchType, patch: &[u8], builtin: bool) -> Result<Value, ApiError> {
    let bad = |e: &dyn std::fmt::Display| ApiError::BadRequest(format!("error decoding patch: {e}"));
    match kind {
        // Server-side apply needs the field managers: `ApiServer::apply_in`, not a plain patch.
        PatchType::Apply => Err(ApiError::UnsupportedMediaType(ACCEPTED.to_owned())),
        PatchType::Merge => {
            let p: Value = serde_json::from_slice(patch).map_err(|e| bad(&e))?;
            if !p.is_object() {
                return Err(ApiError::BadRequest("merge patch must be a JSON object".into()));
            }
            let mut out = doc.clone();
            json_patch::merge(&mut out, &p);
            Ok(out)
        }
        PatchType::Json => {
            let p: json_patch::Patch = serde_json::from_slice(patch).map_err(|e| bad(&e))?;
            if p.0.len() > MAX_JSON_PATCH_OPERATIONS {
                return Err(ApiError::TooLargeWith(format!(
                    "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
                    p.0.len()
                )));
            }
            let rejected = |e: &dyn std::fmt::Display| ApiError::Invalid {
                kind: String::new(),
                group: String::new(),
                name: String::new(),
                causes: vec![crate::status::FieldCause {
                    reason: kfsec_types::CauseType::FieldValueInvalid,
                    field: "patch".into(),
                    message: format!("the server rejected our request due to an error in our request: {e}"),
                }],
            };
            let mut out = doc.clone();
            // One operation at a time (on the copy: an error discards it), so every `copy` is
            // charged against the budget before it runs.
            let mut copied = 0;
            // An upper bound on `out`'s depth, raised before each operation that nests a value
            // under a path: exactly for `add`/`replace`/`copy` (the value is in the body or within
            // the copy budget), for `move` exactly when the value is small, else conservatively
            // (measuring a big subtree on every `move` would cost it each time).
            let mut bound = depth(&out);
            let too_deep = || {
                rejected(&format!(
                    "the patched object nests deeper than {MAX_PATCHED_DEPTH} levels"
                ))
            };
            for op in &p.0 {
                use json_patch::PatchOperation as Op;
                let nested = match op {
                    Op::Add(a) => segments(a.path.as_str()) + depth(&a.value),
                    Op::Replace(r) => segments(r.path.as_str()) + depth(&r.value),
                    Op::Copy(c) => {
                        let from = out.pointer(c.from.as_str());
                        copied += from.map_or(0, |v| json_size(v, MAX_JSON_PATCH_COPY_BYTES - copied + 1));
                        if copied > MAX_JSON_PATCH_COPY_BYTES {
                            return Err(rejected(&format!(
                                "Unable to complete the copy, the accumulated size increase of copy is {copied}, exceeding the limit {MAX_JSON_PATCH_COPY_BYTES}"
                            )));
                        }
                        segments(c.path.as_str()) + from.map_or(0, depth)
                    }
                    Op::Move(m) => {
                        let from = out.pointer(m.from.as_str());
                        let measured = from.and_then(|v| depth_within(v, MOVE_MEASURE_NODES));
                        segments(m.path.as_str())
                            + measured.unwrap_or_else(|| bound.saturating_sub(segments(m.from.as_str())))
                    }
                    Op::Remove(_) | Op::Test(_) => 0,
                };
                bound = bound.max(nested);
                if bound > MAX_JSON_PATCH_WORKING_DEPTH {
                    return Err(too_deep());
                }
                json_patch::patch(&mut out, std::slice::from_ref(op)).map_err(|e| rejected(&e))?;
            }
            if bound > MAX_PATCHED_DEPTH && depth(&out) > MAX_PATCHED_DEPTH {
                return Err(too_deep());
            }
            if !out.is_object() {
                return Err(rejected(&"the patched object is not a JSON object"));
            }
            Ok(out)
        }
        PatchType::Strategic => {
            if !builtin {
                return Err(ApiError::UnsupportedMediaType(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml".into(),
                ));
            }
            let p: Value = serde_json::from_slice(patch).map_err(|e| bad(&e))?;
            let Value::Object(p) = p else {
                return Err(ApiError::BadRequest(
                    "strategic merge patch must be a JSON object".into(),
                ));
            };
            let mut out = doc.clone();
            if !out.is_object() {
                out = Value::Object(Map::new());
            }
            if let Value::Object(o) = &mut out {
                strategic_object(o, &p, "")?;
            }
            Ok(out)
        }
    }
}

fn strategic_object(doc: &mut Map<String, Value>, patch: &Map<String, Value>, path: &str) -> Result<(), ApiError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut p = patch.clone();
            p.remove("$patch");
            *doc = p;
            return Ok(());
        }
        Some("delete") => {
            doc.clear();
            return Ok(());
        }
        Some(other) => return Err(ApiError::BadRequest(format!("unknown patch type: {other} at {path}"))),
        None => {}
    }
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(del)) = (doc.get_mut(field), v) {
                let del: HashSet<String> = del.iter().map(identity).collect();
                list.retain(|x| !del.contains(&identity(x)));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            doc.remove(k);
            continue;
        }
        let child = format!("{path}.{k}");
        match (doc.get_mut(k), v) {
            (Some(Value::Object(d)), Value::Object(p)) => strategic_object(d, p, &child)?,
            (Some(Value::Array(d)), Value::Array(p)) => {
                if let Some(key) = merge_key(k).filter(|_| p.iter().all(Value::is_object)) {
                    merge_list(d, p, key, &child)?;
                } else {
                    *d = p.clone();
                }
            }
            (_, Value::Object(p)) => {
                let mut fresh = Map::new();
                strategic_object(&mut fresh, p, &child)?;
                doc.insert(k.clone(), Value::Object(fresh));
            }
            (_, Value::Array(p)) => {
                let kept: Vec<Value> = p
                    .iter()
                    .filter(|e| e.get("$patch").and_then(Value::as_str) != Some("delete"))
                    .map(strip_directives)
                    .collect();
                doc.insert(k.clone(), Value::Array(kept));
            }
            _ => {
                doc.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(Value::Array(keep)) = patch.get("$retainKeys") {
        doc.retain(|k, _| keep.iter().any(|x| x.as_str() == Some(k)));
    }
    let orders: Vec<(&str, &Vec<Value>)> = patch
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("$setElementOrder/")?, v.as_array()?)))
        .collect();
    for (field, order) in orders {
        if let (Some(Value::Array(list)), Some(key)) = (doc.get_mut(field), merge_key(field)) {
            let mut at: HashMap<String, usize> = HashMap::with_capacity(order.len());
            for (i, o) in order.iter().enumerate() {
                if let Some(k) = o.get(key) {
                    at.entry(identity(k)).or_insert(i);
                }
            }
            list.sort_by_cached_key(|e| {
                e.get(key)
                    .and_then(|k| at.get(&identity(k)).copied())
                    .unwrap_or(usize::MAX)
            });
        }
    }
    Ok(())
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// Merges `patch` into `doc` by `key`. Elements are found through an index (key → positions,
/// first first), deletions leave holes that are closed at the end: linear, not quadratic.
fn merge_list(doc: &mut Vec<Value>, patch: &[Value], key: &str, path: &str) -> Result<(), ApiError> {
    let mut slots: Vec<Option<Value>> = std::mem::take(doc).into_iter().map(Some).collect();
    let mut index: HashMap<String, VecDeque<usize>> = HashMap::new();
    for (i, e) in slots.iter().enumerate() {
        if let Some(k) = e.as_ref().and_then(|e| e.get(key)) {
            index.entry(identity(k)).or_default().push_back(i);
        }
    }
    let mut result = Ok(());
    for p in patch {
        let Value::Object(pm) = p else { continue };
        let Some(id) = pm.get(key) else {
            result = Err(ApiError::BadRequest(format!(
                "map: {pm:?} does not contain declared merge key: {key} at {path}"
            )));
            break;
        };
        let id = identity(id);
        let found = index.get(&id).and_then(|q| q.front().copied());
        let delete = pm.get("$patch").and_then(Value::as_str) == Some("delete");
        match (found, delete) {
            (Some(i), true) => {
                if let Some(q) = index.get_mut(&id) {
                    q.pop_front();
                }
                if let Some(slot) = slots.get_mut(i) {
                    *slot = None;
                }
            }
            (None, true) => {}
            (Some(i), false) => {
                if let Some(Some(Value::Object(target))) = slots.get_mut(i)
                    && let Err(e) = strategic_object(target, pm, path)
                {
                    result = Err(e);
                    break;
                }
            }
            (None, false) => {
                index.entry(id).or_default().push_back(slots.len());
                slots.push(Some(strip_directives(p)));
            }
        }
    }
    *doc = slots.into_iter().flatten().collect();
    result
}

#[cfg(test)]
mod tests {

    use super::*;
    use serde_json::json;

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json").unwrap(),
            PatchType::Merge
        );
        assert_eq!(
            PatchType::from_content_type("application/json-patch+json; charset=utf-8").unwrap(),
            PatchType::Json
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml").unwrap(),
            PatchType::Apply
        );
        assert_eq!(PatchType::from_content_type("text/plain").unwrap_err().code(), 415);
    }

    /// A JSON patch whose `copy` operations copy more than the budget in total is refused
    /// (kube-apiserver's `JSONPatchMaxCopyBytes`): a few dozen self-doubling copies of a 2 KB
    /// body would otherwise grow the object to terabytes.
    #[test]
    fn json_patch_copies_are_budgeted() {
        let doc = json!({"data": {"a": "0123456789012345678901234567890123456789"}});
        let doubling: Vec<Value> = (0..40)
            .map(|i| json!({"op": "copy", "from": "/data", "path": format!("/data/x{i}")}))
            .collect();
        let body = serde_json::to_vec(&doubling).unwrap();
        let e = apply(&doc, PatchType::Json, &body, false).unwrap_err();
        assert_eq!(e.code(), 422);
        assert!(
            e.to_status()
                .message
                .contains("the accumulated size increase of copy is"),
            "{}",
            e.to_status().message
        );
        // One big copy over the budget, too.
        let big = json!({"data": {"a": "x".repeat(MAX_JSON_PATCH_COPY_BYTES)}});
        let one = br#"[{"op":"copy","from":"/data/a","path":"/data/b"}]"#;
        assert_eq!(apply(&big, PatchType::Json, one, false).unwrap_err().code(), 422);
        // Copies within the budget work as before.
        let out = apply(
            &doc,
            PatchType::Json,
            &serde_json::to_vec(&doubling[..4]).unwrap(),
            false,
        )
        .unwrap();
        assert_eq!(out["data"]["x3"]["x2"]["x1"]["x0"]["a"], doc["data"]["a"]);
    }

    /// `{"":{"":…}}`, `n` levels deep.
    fn nested(n: usize) -> Value {
        (0..n)
            .fold(json!({}), |v, _| json!({ "": v }))
            .get("")
            .cloned()
            .unwrap_or(json!({}))
    }

    /// A JSON patch cannot nest the object deeper than the store's decoder reads back
    /// (`MAX_PATCHED_DEPTH`): `copy` doubles the depth per operation for a few bytes of pointer
    /// (within the copy budget), which used to build a value hundreds of thousands of levels
    /// deep — a stack overflow when cloned, dropped or stored, and a record no GET or LIST could
    /// read. `add` under a deep path is bounded the same; a result exactly at the limit works and
    /// reads back.
    #[test]
    fn json_patch_nesting_is_bounded() {
        // Doubling: copy /a under its own deepest object, 20 times.
        let doc = json!({"a": {}});
        let mut n = 0usize;
        let mut ops = Vec::new();
        for _ in 0..20 {
            ops.push(json!({"op": "copy", "from": "/a", "path": format!("/a{}", "/".repeat(n + 1))}));
            n = 2 * n + 1;
        }
        let e = apply(&doc, PatchType::Json, &serde_json::to_vec(&ops).unwrap(), false).unwrap_err();
        assert_eq!(e.code(), 422, "{}", e.to_status().message);
        assert!(
            e.to_status().message.contains("nests deeper than"),
            "{}",
            e.to_status().message
        );
        // add: a 100-deep value under a 100-deep path.
        let doc = json!({"a": nested(99)});
        let path = format!("/a{}", "/".repeat(99));
        let body = serde_json::to_vec(&json!([{"op": "add", "path": path, "value": nested(100)}])).unwrap();
        assert_eq!(apply(&doc, PatchType::Json, &body, false).unwrap_err().code(), 422);
        // Exactly the limit: the object, `a`, then 125 more levels.
        let doc = json!({"a": {}});
        let body = serde_json::to_vec(&json!([{"op": "add", "path": "/a/x", "value": nested(MAX_PATCHED_DEPTH - 2)}]))
            .unwrap();
        let out = apply(&doc, PatchType::Json, &body, false).unwrap();
        assert_eq!(depth(&out), MAX_PATCHED_DEPTH);
        let back: Value = serde_json::from_slice(&serde_json::to_vec(&out).unwrap()).unwrap();
        assert_eq!(back, out);
        // move: a 100-deep value under a 100-deep path, and (not refused) a scalar moved down
        // and back a thousand times.
        let doc = json!({"a": nested(100), "b": nested(100)});
        let path = format!("/a{}", "/".repeat(99));
        let body = serde_json::to_vec(&json!([{"op": "move", "from": "/b", "path": path}])).unwrap();
        assert_eq!(apply(&doc, PatchType::Json, &body, false).unwrap_err().code(), 422);
        let doc = json!({"s": 1, "b": {"c": {"d": {}}}});
        let there_and_back: Vec<Value> = (0..1000)
            .flat_map(|_| {
                [
                    json!({"op": "move", "from": "/s", "path": "/b/c/d/s"}),
                    json!({"op": "move", "from": "/b/c/d/s", "path": "/s"}),
                ]
            })
            .collect();
        let out = apply(
            &doc,
            PatchType::Json,
            &serde_json::to_vec(&there_and_back).unwrap(),
            false,
        )
        .unwrap();
        assert_eq!(out, doc);
        // One more level is refused.
        let body = serde_json::to_vec(&json!([{"op": "add", "path": "/a/x/", "value": nested(MAX_PATCHED_DEPTH - 2)}]));
        let doc = json!({"a": {"x": {}}});
        assert_eq!(
            apply(&doc, PatchType::Json, &body.unwrap(), false).unwrap_err().code(),
            422
        );
    }

    /// A JSON patch may replace the root, but the result must still be an object.
    #[test]
    fn json_patch_result_is_an_object() {
        let doc = json!({"a": 1});
        let e = apply(
            &doc,
            PatchType::Json,
            br#"[{"op":"replace","path":"","value":[1]}]"#,
            false,
        )
        .unwrap_err();
        assert_eq!(e.code(), 422);
        let out = apply(
            &doc,
            PatchType::Json,
            br#"[{"op":"replace","path":"","value":{"b":2}}]"#,
            false,
        )
        .unwrap();
        assert_eq!(out, json!({"b": 2}));
    }

    #[test]
    fn merge_and_json_patch() {
        let doc = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        let out = apply(&doc, PatchType::Merge, br#"{"a":{"b":null,"d":3},"l":[9]}"#, false).unwrap();
        assert_eq!(out, json!({"a": {"c": 2, "d": 3}, "l": [9]}));
        let out = apply(
            &doc,
            PatchType::Json,
            br#"[{"op":"add","path":"/l/-","value":3},{"op":"remove","path":"/a/b"}]"#,
            false,
        )
        .unwrap();
        assert_eq!(out, json!({"a": {"c": 2}, "l": [1, 2, 3]}));
        let e = apply(
            &doc,
            PatchType::Json,
            br#"[{"op":"test","path":"/a/b","value":5}]"#,
            false,
        )
        .unwrap_err();
        assert_eq!(e.code(), 422);
        assert_eq!(apply(&doc, PatchType::Json, b"{", false).unwrap_err().code(), 400);
        assert_eq!(apply(&doc, PatchType::Merge, b"[1]", false).unwrap_err().code(), 400);
    }

    #[test]
    fn strategic() {
        let doc = json!({"spec": {"containers": [
            {"name": "a", "image": "x", "env": [{"name": "E", "value": "1"}]},
            {"name": "b", "image": "y"}
        ], "tolerations": [{"key": "k"}]}, "metadata": {"labels": {"x": "1"}}});
        let patch = json!({
            "metadata": {"labels": {"x": null, "y": "2"}},
            "spec": {
                "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
                "containers": [{"name": "a", "image": "z"}, {"name": "b", "$patch": "delete"}, {"name": "c", "image": "w"}],
                "tolerations": [{"key": "q"}]
            }
        });
        let out = apply(&doc, PatchType::Strategic, patch.to_string().as_bytes(), true).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"y": "2"}));
        assert_eq!(out["spec"]["containers"][0]["image"], "z");
        assert_eq!(out["spec"]["containers"][0]["env"][0]["value"], "1");
        assert_eq!(out["spec"]["containers"][1]["name"], "c");
        assert_eq!(out["spec"]["containers"].as_array().unwrap().len(), 2);
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "q"}]));
        assert_eq!(apply(&doc, PatchType::Strategic, b"{}", false).unwrap_err().code(), 415);
        let del = apply(
            &json!({"f": [1, 2, 3]}),
            PatchType::Strategic,
            br#"{"$deleteFromPrimitiveList/f":[2]}"#,
            true,
        )
        .unwrap();
        assert_eq!(del, json!({"f": [1, 3]}));
    }
}
