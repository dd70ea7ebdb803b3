//! Decoding of Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`: the
//! `k8s\0` magic + `runtime.Unknown` envelope) for the built-in kinds kubectl's typed clients
//! send that way (`kubectl create namespace|configmap|secret|serviceaccount|role|…`, `kubectl
//! auth can-i`), into the same JSON the rest of the crate works on. Responses are always JSON.
//!
//! Invariants: schema-driven (unknown fields are skipped, unknown kinds are a 415); nesting is
//! capped; malformed input is an error, never a panic or an unbounded allocation (lengths are
//! checked against the remaining input before slicing).

use base64::Engine as _;
use serde_json::{Map, Value};

/// Why a protobuf body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// Not decodable.
    #[error("the protobuf body could not be decoded: {0}")]
    Malformed(&'static str),
    /// A kind this server cannot read as protobuf.
    #[error("protobuf is not supported for kind {0:?}; send application/json")]
    Unsupported(String),
}

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    Msg(&'static [Field]),
    MapStr,
    MapBytes,
    MapMsg(&'static [Field]),
    Time,
    Quantity,
}

#[derive(Clone, Copy)]
struct Field {
    num: u64,
    name: &'static str,
    kind: Kind,
    repeated: bool,
}

const fn f(num: u64, name: &'static str, kind: Kind) -> Field {
    Field {
        num,
        name,
        kind,
        repeated: false,
    }
}
const fn r(num: u64, name: &'static str, kind: Kind) -> Field {
    Field {
        num,
        name,
        kind,
        repeated: true,
    }
}

use Kind::{Bool, Int, MapBytes, MapMsg, MapStr, Msg, Quantity, Str, Time};

const OWNER_REF: &[Field] = &[
    f(1, "kind", Str),
    f(3, "name", Str),
    f(4, "uid", Str),
    f(5, "apiVersion", Str),
    f(6, "controller", Bool),
    f(7, "blockOwnerDeletion", Bool),
];
const OBJECT_META: &[Field] = &[
    f(1, "name", Str),
    f(2, "generateName", Str),
    f(3, "namespace", Str),
    f(5, "uid", Str),
    f(6, "resourceVersion", Str),
    f(7, "generation", Int),
    f(8, "creationTimestamp", Time),
    f(9, "deletionTimestamp", Time),
    f(10, "deletionGracePeriodSeconds", Int),
    f(11, "labels", MapStr),
    f(12, "annotations", MapStr),
    r(13, "ownerReferences", Msg(OWNER_REF)),
    r(14, "finalizers", Str),
];
const NAMESPACE: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "spec", Msg(&[r(1, "finalizers", Str)])),
    f(3, "status", Msg(&[f(1, "phase", Str)])),
];
const CONFIG_MAP: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "data", MapStr),
    f(3, "binaryData", MapBytes),
    f(4, "immutable", Bool),
];
const SECRET: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "data", MapBytes),
    f(3, "type", Str),
    f(4, "stringData", MapStr),
    f(5, "immutable", Bool),
];
const OBJECT_REF: &[Field] = &[
    f(1, "kind", Str),
    f(2, "namespace", Str),
    f(3, "name", Str),
    f(4, "uid", Str),
    f(5, "apiVersion", Str),
    f(6, "resourceVersion", Str),
    f(7, "fieldPath", Str),
];
const SERVICE_ACCOUNT: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    r(2, "secrets", Msg(OBJECT_REF)),
    r(3, "imagePullSecrets", Msg(&[f(1, "name", Str)])),
    f(4, "automountServiceAccountToken", Bool),
];
const SCOPE_SELECTOR: &[Field] = &[r(
    1,
    "matchExpressions",
    Msg(&[f(1, "scopeName", Str), f(2, "operator", Str), r(3, "values", Str)]),
)];
const RESOURCE_QUOTA: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(
        2,
        "spec",
        Msg(&[
            f(1, "hard", MapMsg(&[f(1, "", Quantity)])),
            r(2, "scopes", Str),
            f(3, "scopeSelector", Msg(SCOPE_SELECTOR)),
        ]),
    ),
];
const POLICY_RULE: &[Field] = &[
    r(1, "verbs", Str),
    r(2, "apiGroups", Str),
    r(3, "resources", Str),
    r(4, "resourceNames", Str),
    r(5, "nonResourceURLs", Str),
];
const LABEL_SELECTOR: &[Field] = &[
    f(1, "matchLabels", MapStr),
    r(
        2,
        "matchExpressions",
        Msg(&[f(1, "key", Str), f(2, "operator", Str), r(3, "values", Str)]),
    ),
];
const ROLE: &[Field] = &[f(1, "metadata", Msg(OBJECT_META)), r(2, "rules", Msg(POLICY_RULE))];
const CLUSTER_ROLE: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    r(2, "rules", Msg(POLICY_RULE)),
    f(
        3,
        "aggregationRule",
        Msg(&[r(1, "clusterRoleSelectors", Msg(LABEL_SELECTOR))]),
    ),
];
const BINDING: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    r(
        2,
        "subjects",
        Msg(&[
            f(1, "kind", Str),
            f(2, "apiGroup", Str),
            f(3, "name", Str),
            f(4, "namespace", Str),
        ]),
    ),
    f(
        3,
        "roleRef",
        Msg(&[f(1, "apiGroup", Str), f(2, "kind", Str), f(3, "name", Str)]),
    ),
];
const RESOURCE_ATTRIBUTES: &[Field] = &[
    f(1, "namespace", Str),
    f(2, "verb", Str),
    f(3, "group", Str),
    f(4, "version", Str),
    f(5, "resource", Str),
    f(6, "subresource", Str),
    f(7, "name", Str),
];
const NON_RESOURCE_ATTRIBUTES: &[Field] = &[f(1, "path", Str), f(2, "verb", Str)];
const SSAR: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(
        2,
        "spec",
        Msg(&[
            f(1, "resourceAttributes", Msg(RESOURCE_ATTRIBUTES)),
            f(2, "nonResourceAttributes", Msg(NON_RESOURCE_ATTRIBUTES)),
        ]),
    ),
];
const SAR: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(
        2,
        "spec",
        Msg(&[
            f(1, "resourceAttributes", Msg(RESOURCE_ATTRIBUTES)),
            f(2, "nonResourceAttributes", Msg(NON_RESOURCE_ATTRIBUTES)),
            f(3, "user", Str),
            r(4, "groups", Str),
            f(5, "extra", MapMsg(&[r(1, "", Str)])),
            f(6, "uid", Str),
        ]),
    ),
];
const SSRR: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "spec", Msg(&[f(1, "namespace", Str)])),
];
const TOKEN_REVIEW: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "spec", Msg(&[f(1, "token", Str), r(2, "audiences", Str)])),
];
const SELF_SUBJECT_REVIEW: &[Field] = &[f(1, "metadata", Msg(OBJECT_META))];
const TOKEN_REQUEST: &[Field] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(
        2,
        "spec",
        Msg(&[
            r(1, "audiences", Str),
            f(
                3,
                "boundObjectRef",
                Msg(&[
                    f(1, "kind", Str),
                    f(2, "apiVersion", Str),
                    f(3, "name", Str),
                    f(4, "uid", Str),
                ]),
            ),
            f(4, "expirationSeconds", Int),
        ]),
    ),
];
const DELETE_OPTIONS: &[Field] = &[
    f(1, "gracePeriodSeconds", Int),
    f(
        2,
        "preconditions",
        Msg(&[f(1, "uid", Str), f(2, "resourceVersion", Str)]),
    ),
    f(3, "orphanDependents", Bool),
    f(4, "propagationPolicy", Str),
    r(5, "dryRun", Str),
];
const TYPE_META: &[Field] = &[f(1, "apiVersion", Str), f(2, "kind", Str)];
const UNKNOWN: &[Field] = &[f(1, "typeMeta", Msg(TYPE_META))];

fn schema_for(kind: &str) -> Option<&'static [Field]> {
    Some(match kind {
        "Namespace" => NAMESPACE,
        "ConfigMap" => CONFIG_MAP,
        "Secret" => SECRET,
        "ServiceAccount" => SERVICE_ACCOUNT,
        "ResourceQuota" => RESOURCE_QUOTA,
        "Role" => ROLE,
        "ClusterRole" => CLUSTER_ROLE,
        "RoleBinding" | "ClusterRoleBinding" => BINDING,
        "SelfSubjectAccessReview" => SSAR,
        "SubjectAccessReview" | "LocalSubjectAccessReview" => SAR,
        "SelfSubjectRulesReview" => SSRR,
        "TokenReview" => TOKEN_REVIEW,
        "SelfSubjectReview" => SELF_SUBJECT_REVIEW,
        "TokenRequest" => TOKEN_REQUEST,
        "DeleteOptions" => DELETE_OPTIONS,
        _ => return None,
    })
}

const MAX_DEPTH: usize = 32;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or(ProtoError::Malformed("truncated varint"))?;
            self.pos += 1;
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(ProtoError::Malformed("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(ProtoError::Malformed("length overflow"))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(ProtoError::Malformed("truncated field"))?;
        self.pos = end;
        Ok(s)
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// Iterates `(field number, value)` of one message.
fn fields(buf: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, ProtoError> {
    let mut r = Reader { buf, pos: 0 };
    let mut out = Vec::new();
    while !r.done() {
        let key = r.varint()?;
        let (num, wt) = (key >> 3, key & 7);
        let w = match wt {
            0 => Wire::Varint(r.varint()?),
            1 => {
                r.take(8)?;
                Wire::Fixed
            }
            2 => {
                let n = usize::try_from(r.varint()?).map_err(|_| ProtoError::Malformed("length overflow"))?;
                Wire::Bytes(r.take(n)?)
            }
            5 => {
                r.take(4)?;
                Wire::Fixed
            }
            _ => return Err(ProtoError::Malformed("unsupported wire type")),
        };
        out.push((num, w));
    }
    Ok(out)
}

fn text(b: &[u8]) -> Result<String, ProtoError> {
    String::from_utf8(b.to_vec()).map_err(|_| ProtoError::Malformed("invalid UTF-8"))
}

/// The last second RFC 3339 can write: 9999-12-31T23:59:59Z.
const MAX_RFC3339_SECS: i64 = 253_402_300_799;

/// A `google.protobuf.Timestamp` as RFC 3339 (seconds; before the epoch reads as the epoch).
/// A time past year 9999 is refused, as Kubernetes cannot write it either.
fn rfc3339_of(b: &[u8]) -> Result<Value, ProtoError> {
    let mut secs = 0i64;
    for (n, w) in fields(b)? {
        if let (1, Wire::Varint(v)) = (n, w) {
            secs = v.cast_signed();
        }
    }
    if secs > MAX_RFC3339_SECS {
        return Err(ProtoError::Malformed("timestamp after year 9999"));
    }
    let t = kfsec_types::UnixTime::from_secs(u64::try_from(secs).unwrap_or(0));
    Ok(Value::String(t.to_rfc3339()))
}

fn map_entry(b: &[u8], depth: usize, value_kind: Kind) -> Result<(String, Value), ProtoError> {
    let mut key = String::new();
    let mut value = Value::Null;
    for (n, w) in fields(b)? {
        match (n, w) {
            (1, Wire::Bytes(k)) => key = text(k)?,
            (2, Wire::Bytes(v)) => {
                value = match value_kind {
                    MapStr => Value::String(text(v)?),
                    MapBytes => Value::String(base64::engine::general_purpose::STANDARD.encode(v)),
                    MapMsg(schema) => unwrap_single(decode(v, schema, depth + 1)?),
                    _ => return Err(ProtoError::Malformed("bad map kind")),
                }
            }
            _ => {}
        }
    }
    if value.is_null() {
        value = match value_kind {
            MapMsg(schema) if schema.first().is_some_and(|fl| fl.repeated) => Value::Array(Vec::new()),
            _ => Value::String(String::new()),
        };
    }
    Ok((key, value))
}

/// Map values whose schema is a single unnamed field (Quantity, ExtraValue) become that field.
fn unwrap_single(mut m: Map<String, Value>) -> Value {
    m.remove("").unwrap_or(Value::Null)
}

fn decode(buf: &[u8], schema: &[Field], depth: usize) -> Result<Map<String, Value>, ProtoError> {
    if depth > MAX_DEPTH {
        return Err(ProtoError::Malformed("nesting too deep"));
    }
    let mut out = Map::new();
    for (num, w) in fields(buf)? {
        let Some(fd) = schema.iter().find(|fd| fd.num == num) else {
            continue;
        };
        let v = match (fd.kind, w) {
            (Str | Quantity, Wire::Bytes(b)) => {
                let s = text(b)?;
                if s.is_empty() && !fd.repeated {
                    continue;
                }
                Value::String(s)
            }
            (Int, Wire::Varint(v)) => {
                if v == 0 {
                    continue;
                }
                Value::from(v.cast_signed())
            }
            (Bool, Wire::Varint(v)) => Value::Bool(v != 0),
            (Msg(s), Wire::Bytes(b)) => Value::Object(decode(b, s, depth + 1)?),
            (Time, Wire::Bytes(b)) => rfc3339_of(b)?,
            (MapStr | MapBytes | MapMsg(_), Wire::Bytes(b)) => {
                let (k, v) = map_entry(b, depth, fd.kind)?;
                let m = out.entry(fd.name).or_insert_with(|| Value::Object(Map::new()));
                if let Some(m) = m.as_object_mut() {
                    m.insert(k, v);
                }
                continue;
            }
            _ => return Err(ProtoError::Malformed("wire type does not match the schema")),
        };
        if fd.repeated {
            let a = out.entry(fd.name).or_insert_with(|| Value::Array(Vec::new()));
            if let Some(a) = a.as_array_mut() {
                a.push(v);
            }
        } else {
            out.insert(fd.name.to_owned(), v);
        }
    }
    Ok(out)
}

/// Decodes a `k8s\0`-prefixed protobuf body into JSON (with `apiVersion` and `kind`).
pub fn decode_body(body: &[u8]) -> Result<Value, ProtoError> {
    let rest = body
        .strip_prefix(b"k8s\0")
        .ok_or(ProtoError::Malformed("missing k8s protobuf magic"))?;
    let env = decode(rest, UNKNOWN, 0)?;
    let api_version = env
        .get("typeMeta")
        .and_then(|t| t.get("apiVersion"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let kind = env
        .get("typeMeta")
        .and_then(|t| t.get("kind"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let raw = fields(rest)?
        .into_iter()
        .find_map(|(n, w)| match (n, w) {
            (2, Wire::Bytes(b)) => Some(b),
            _ => None,
        })
        .unwrap_or(&[]);
    let schema = schema_for(&kind).ok_or_else(|| ProtoError::Unsupported(kind.clone()))?;
    let mut obj = decode(raw, schema, 1)?;
    if !api_version.is_empty() {
        obj.insert("apiVersion".into(), Value::String(api_version));
    }
    obj.insert("kind".into(), Value::String(kind));
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {

    use super::*;
    use serde_json::json;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn bytes(num: u64, b: &[u8], out: &mut Vec<u8>) {
        varint(num << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }
    fn entry(k: &str, v: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        bytes(1, k.as_bytes(), &mut e);
        bytes(2, v, &mut e);
        e
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut tm = Vec::new();
        bytes(1, api_version.as_bytes(), &mut tm);
        bytes(2, kind.as_bytes(), &mut tm);
        let mut u = b"k8s\0".to_vec();
        bytes(1, &tm, &mut u);
        bytes(2, raw, &mut u);
        u
    }

    #[test]
    fn configmap_and_secret() {
        let mut meta = Vec::new();
        bytes(1, b"c1", &mut meta);
        bytes(3, b"", &mut meta);
        bytes(11, &entry("app", b"web"), &mut meta);
        let mut cm = Vec::new();
        bytes(1, &meta, &mut cm);
        bytes(2, &entry("a", b"1"), &mut cm);
        bytes(2, &entry("b", b"2"), &mut cm);
        let v = decode_body(&envelope("v1", "ConfigMap", &cm)).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1", "labels": {"app": "web"}}, "data": {"a": "1", "b": "2"}})
        );
        let mut s = Vec::new();
        bytes(1, &meta, &mut s);
        bytes(2, &entry("k", &[0xff, 0]), &mut s);
        bytes(3, b"Opaque", &mut s);
        let v = decode_body(&envelope("v1", "Secret", &s)).unwrap();
        assert_eq!(v["data"]["k"], "/wA=");
        assert_eq!(v["type"], "Opaque");
    }

    #[test]
    fn ssar_and_errors() {
        let mut ra = Vec::new();
        bytes(1, b"x", &mut ra);
        bytes(2, b"list", &mut ra);
        bytes(5, b"pods", &mut ra);
        let mut spec = Vec::new();
        bytes(1, &ra, &mut spec);
        let mut o = Vec::new();
        bytes(1, b"", &mut o);
        bytes(2, &spec, &mut o);
        let v = decode_body(&envelope("authorization.k8s.io/v1", "SelfSubjectAccessReview", &o)).unwrap();
        assert_eq!(
            v["spec"]["resourceAttributes"],
            json!({"namespace": "x", "verb": "list", "resource": "pods"})
        );
        assert_eq!(
            decode_body(b"nope").unwrap_err(),
            ProtoError::Malformed("missing k8s protobuf magic")
        );
        assert!(matches!(
            decode_body(&envelope("apps/v1", "Deployment", b"")),
            Err(ProtoError::Unsupported(_))
        ));
        let mut bad = envelope("v1", "ConfigMap", b"");
        bad.extend_from_slice(&[0x12, 0xff, 0xff, 0xff, 0x0f]);
        assert!(decode_body(&bad).is_err());
        let mut quota = Vec::new();
        let mut q = Vec::new();
        bytes(1, b"10", &mut q);
        let mut hard = Vec::new();
        bytes(1, &entry("pods", &q), &mut hard);
        bytes(2, &hard, &mut quota);
        let v = decode_body(&envelope("v1", "ResourceQuota", &quota)).unwrap();
        assert_eq!(v["spec"]["hard"]["pods"], "10");
    }

    /// A timestamp is RFC 3339 or refused: past year 9999 it used to decode to
    /// `"11476-08-15T05:20:00Z"`, which no RFC 3339 reader accepts (found by the invariant of
    /// the `protobuf_body` fuzz target).
    /// `kubectl create token` (TokenRequest) and `kubectl auth whoami` (SelfSubjectReview), as
    /// client-go's typed clients send them.
    #[test]
    fn token_request_and_self_subject_review() {
        let mut meta = Vec::new();
        bytes(1, b"robot", &mut meta);
        let mut bound = Vec::new();
        bytes(1, b"Secret", &mut bound);
        bytes(3, b"s", &mut bound);
        let mut spec = Vec::new();
        bytes(1, b"kfsec", &mut spec);
        bytes(1, b"pipelines.kubeflow.org", &mut spec);
        bytes(3, &bound, &mut spec);
        varint(4 << 3, &mut spec);
        varint(600, &mut spec);
        let mut raw = Vec::new();
        bytes(1, &meta, &mut raw);
        bytes(2, &spec, &mut raw);
        let v = decode_body(&envelope("authentication.k8s.io/v1", "TokenRequest", &raw)).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "metadata": {"name": "robot"},
                "spec": {"audiences": ["kfsec", "pipelines.kubeflow.org"], "boundObjectRef": {"kind": "Secret", "name": "s"}, "expirationSeconds": 600}})
        );
        let v = decode_body(&envelope("authentication.k8s.io/v1", "SelfSubjectReview", &[])).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        );
    }

    #[test]
    fn timestamps_stay_rfc3339() {
        let body = |secs: u64| {
            let mut ts = Vec::new();
            varint(1 << 3, &mut ts);
            varint(secs, &mut ts);
            let mut meta = Vec::new();
            bytes(1, b"a", &mut meta);
            bytes(8, &ts, &mut meta);
            let mut cm = Vec::new();
            bytes(1, &meta, &mut cm);
            envelope("v1", "ConfigMap", &cm)
        };
        let v = decode_body(&body(253_402_300_799)).unwrap();
        assert_eq!(v["metadata"]["creationTimestamp"], "9999-12-31T23:59:59Z");
        assert_eq!(
            decode_body(&body(300_000_000_000)).unwrap_err(),
            ProtoError::Malformed("timestamp after year 9999")
        );
        let v = decode_body(&body(u64::MAX)).unwrap();
        assert_eq!(v["metadata"]["creationTimestamp"], "1970-01-01T00:00:00Z");
    }
}
