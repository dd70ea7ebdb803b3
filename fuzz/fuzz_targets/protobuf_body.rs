//! Arbitrary bytes as a Kubernetes protobuf request body (`k8s\0` + `runtime.Unknown`) through
//! kfsec-api's decoder (`proto::decode_body`), with and without the magic: it never panics;
//! decoding is deterministic; a decoded body is a JSON object whose `kind` is the envelope's
//! (a kind the decoder supports) and which survives JSON serialisation unchanged; its size is
//! bounded by a small multiple of the input's (no amplification); every `ObjectMeta` time in it is
//! an RFC 3339 time kfsec itself reads back; an unknown envelope field
//! appended to a decodable body changes nothing (unknown fields are skipped); and a decoded body
//! has no field its kind's published OpenAPI schema lacks (`fieldcheck`, what `Strict` field
//! validation refuses). The input read as JSON goes through the unknown-field walk too: it
//! never panics, reports at most 100 fields, each (unless cut at 512 bytes) under a member the
//! body has.

#![no_main]

use kfsec_api::proto::{ProtoError, decode_body};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const KINDS: &[&str] = &[
    "Namespace",
    "ConfigMap",
    "Secret",
    "ServiceAccount",
    "ResourceQuota",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "SelfSubjectAccessReview",
    "SubjectAccessReview",
    "LocalSubjectAccessReview",
    "SelfSubjectRulesReview",
    "TokenReview",
    "SelfSubjectReview",
    "TokenRequest",
    "DeleteOptions",
];

/// Every time in an `ObjectMeta` (the object under a `metadata` key: its `creationTimestamp`
/// and `deletionTimestamp`, the decoder's `Time` fields) is a string `kfsec_types::time` parses.
/// Only there: a label, annotation or data key may end in `Timestamp` and hold any string.
fn timestamps_parse(v: &Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(meta)) = m.get("metadata") {
                for k in ["creationTimestamp", "deletionTimestamp"] {
                    if let Some(x) = meta.get(k) {
                        let t = x.as_str().expect("a timestamp is a string");
                        assert!(kfsec_types::time::parse_rfc3339(t).is_some(), "{k}: {t:?}");
                    }
                }
            }
            m.values().for_each(timestamps_parse);
        }
        Value::Array(a) => a.iter().for_each(timestamps_parse),
        _ => {}
    }
}

fn check(body: &[u8]) {
    let out = decode_body(body);
    assert_eq!(out, decode_body(body), "not deterministic");
    let v = match out {
        Ok(v) => v,
        Err(ProtoError::Malformed(_)) => return,
        Err(ProtoError::Unsupported(k)) => {
            assert!(!KINDS.contains(&k.as_str()), "supported kind {k:?} refused");
            return;
        }
    };
    assert!(body.starts_with(b"k8s\0"));
    let kind = v["kind"].as_str().expect("kind is a string");
    assert!(KINDS.contains(&kind), "kind {kind:?}");
    assert!(v.get("apiVersion").is_none_or(Value::is_string), "{v}");
    timestamps_parse(&v);
    let text = serde_json::to_string(&v).expect("serialises");
    assert_eq!(serde_json::from_str::<Value>(&text).expect("parses"), v);
    assert!(
        text.len() <= 32 * body.len() + 256,
        "{} bytes of JSON from {} bytes",
        text.len(),
        body.len()
    );
    if let Some(api) = v.get("apiVersion").and_then(Value::as_str) {
        let unknown = kfsec_api::fieldcheck::unknown_fields_of(api, kind, &v);
        assert!(unknown.is_empty(), "decoded fields the schema lacks: {unknown:?}");
    }
    // Field 15, varint 1: unknown to runtime.Unknown.
    let mut more = body.to_vec();
    more.extend_from_slice(&[15 << 3, 1]);
    assert_eq!(
        decode_body(&more),
        Ok(v),
        "an unknown envelope field changed the result"
    );
}

/// The unknown-field walk over arbitrary JSON, as a Pod and as a Profile (built-in and CRD schemas).
fn check_fields(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    for (api, kind) in [("v1", "Pod"), ("kubeflow.org/v1", "Profile")] {
        let unknown = kfsec_api::fieldcheck::unknown_fields_of(api, kind, &v);
        assert!(unknown.len() <= 100, "{} fields reported", unknown.len());
        let members: Vec<&String> = v.as_object().map(|m| m.keys().collect()).unwrap_or_default();
        // A name past 512 bytes is cut (ending in `…`); the others are whole.
        for f in unknown.iter().filter(|f| !f.ends_with('…')) {
            let under = |k: &&String| {
                f == *k || f.strip_prefix(k.as_str()).is_some_and(|r| r.starts_with(['.', '[']))
            };
            assert!(members.iter().any(under), "{f:?} is not under a member of the body");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check_fields(data);
    check(data);
    let mut with_magic = b"k8s\0".to_vec();
    with_magic.extend_from_slice(data);
    check(&with_magic);
});
