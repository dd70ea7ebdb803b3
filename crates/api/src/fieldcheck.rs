//! Field validation of request bodies against the published schemas (`?fieldValidation=`):
//! `Strict` refuses a body with fields the kind's schema does not declare (400, kube-apiserver's
//! `strict decoding error: unknown field "spec.foo"`), `Warn` (the default) answers with a
//! `Warning` header per field, `Ignore` says nothing.
//!
//! Invariants: the walk follows the body, never the schema, so its cost is bounded by the body
//! (already size-capped) with a depth cap; a schema that declares no properties (a map, an
//! arbitrary object, `x-kubernetes-preserve-unknown-fields`) never reports, so nothing kube-apiserver
//! keeps is refused; at most [`MAX_REPORTED`] fields are reported.

use axum::http::{HeaderValue, header};
use axum::response::Response;
use serde_json::Value;

use crate::openapi::{self, Documents};
use crate::patch::PatchType;
use crate::registry::Resource;
use crate::status::ApiError;

/// The most unknown fields one answer names.
const MAX_REPORTED: usize = 100;
/// Deeper than this the walk stops (bodies are JSON nested at most a few hundred levels).
const MAX_DEPTH: usize = 128;

/// The `fieldValidation` directive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Directive {
    /// Unknown fields are an error.
    Strict,
    /// Unknown fields are warned about.
    Warn,
    /// Unknown fields are dropped silently.
    Ignore,
}

impl Directive {
    /// Parses `?fieldValidation=` (absent or empty: `Warn`, as kube-apiserver).
    pub(crate) fn parse(v: Option<&str>) -> Result<Self, ApiError> {
        match v.unwrap_or("") {
            "" | "Warn" => Ok(Self::Warn),
            "Strict" => Ok(Self::Strict),
            "Ignore" => Ok(Self::Ignore),
            other => Err(ApiError::BadRequest(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Warn\", \"Strict\""
            ))),
        }
    }
}

/// The unknown fields of `body` (a whole object, or a merge / strategic-merge patch of one) for
/// the kind `res` serves, as kube-apiserver names them (`spec.containers[0].foo`). Members
/// starting with `$` (strategic-merge directives) and `null` values (deletions) are skipped.
pub(crate) fn unknown_fields(res: &Resource, body: &Value) -> Result<Vec<String>, ApiError> {
    let docs = openapi::documents()?;
    Ok(unknown_in(docs, res.group, res.version, res.kind, body))
}

fn unknown_in(docs: &Documents, group: &str, version: &str, kind: &str, body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(schema) = docs.kind_schema(group, version, kind) {
        walk(docs, schema, body, String::new(), 0, &mut out);
    }
    out
}

/// The unknown fields of `body` for the kind `kind` at `api_version` (`v1` or `group/version`)
/// by the published schemas, as a `Strict` write reports them; empty for a kind without a schema
/// (for the fuzz targets and tools).
pub fn unknown_fields_of(api_version: &str, kind: &str, body: &Value) -> Vec<String> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    openapi::documents()
        .map(|docs| unknown_in(docs, group, version, kind, body))
        .unwrap_or_default()
}

/// Follows `$ref` and single-`allOf` wrappers to the schema that declares the shape.
fn resolve<'a>(docs: &'a Documents, mut s: &'a Value) -> &'a Value {
    for _ in 0..16 {
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            match docs.def(r) {
                Some(d) => s = d,
                None => return s,
            }
        } else if let Some(Value::Array(all)) = s.get("allOf")
            && let [one] = all.as_slice()
            && s.get("properties").is_none()
        {
            s = one;
        } else {
            return s;
        }
    }
    s
}

fn walk(docs: &Documents, schema: &Value, v: &Value, path: String, depth: usize, out: &mut Vec<String>) {
    if depth > MAX_DEPTH || out.len() >= MAX_REPORTED {
        return;
    }
    let s = resolve(docs, schema);
    match v {
        Value::Object(m) => {
            let open = s
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let props = s.get("properties").and_then(Value::as_object);
            let extra = s.get("additionalProperties").filter(|a| a.is_object());
            for (k, x) in m {
                if k.starts_with('$') || x.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if let Some(sub) = props.and_then(|ps| ps.get(k)) {
                    walk(docs, sub, x, p, depth + 1, out);
                } else if let Some(sub) = extra {
                    walk(docs, sub, x, p, depth + 1, out);
                } else if props.is_some_and(|ps| !ps.is_empty()) && !open && out.len() < MAX_REPORTED {
                    out.push(p);
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = s.get("items").filter(|i| i.is_object()) {
                for (i, x) in a.iter().enumerate() {
                    walk(docs, items, x, format!("{path}[{i}]"), depth + 1, out);
                }
            }
        }
        _ => {}
    }
}

/// Checks a create/update body under `?fieldValidation=`: the 400 for `Strict` (in
/// kube-apiserver's decode-error shape), else the warnings to send (`Warn`) or none (`Ignore`).
pub(crate) fn check(res: &Resource, directive: Option<&str>, body: &Value) -> Result<Vec<String>, ApiError> {
    let d = Directive::parse(directive)?;
    if d == Directive::Ignore {
        return Ok(Vec::new());
    }
    let unknown = unknown_fields(res, body)?;
    if d == Directive::Strict && !unknown.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "{kind} in version {v:?} cannot be handled as a {kind}: strict decoding error: {}",
            describe(&unknown),
            kind = res.kind,
            v = res.version,
        )));
    }
    Ok(unknown)
}

/// [`check`] for a PATCH body: merge and strategic-merge patches are partial objects and are
/// checked as such; JSON patches are not checked (their targets are paths, not fields).
pub(crate) fn check_patch(
    res: &Resource,
    directive: Option<&str>,
    kind: PatchType,
    raw: &[u8],
) -> Result<Vec<String>, ApiError> {
    let d = Directive::parse(directive)?;
    if d == Directive::Ignore || !matches!(kind, PatchType::Merge | PatchType::Strategic) {
        return Ok(Vec::new());
    }
    // An undecodable patch is the patch code's error to report.
    let Ok(body) = serde_json::from_slice::<Value>(raw) else {
        return Ok(Vec::new());
    };
    let unknown = unknown_fields(res, &body)?;
    if d == Directive::Strict && !unknown.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "strict decoding error: {}",
            describe(&unknown)
        )));
    }
    Ok(unknown)
}

/// Adds one `Warning: 299 - "unknown field \"…\""` header per field (at most
/// [`MAX_REPORTED`]; text outside printable ASCII replaced, so any name makes a valid header).
pub(crate) fn with_warnings(mut resp: Response, fields: &[String]) -> Response {
    for f in fields.iter().take(MAX_REPORTED) {
        let text: String = format!("unknown field {f:?}")
            .chars()
            .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
            .collect();
        let quoted = format!("299 - \"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&quoted) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

/// kube-apiserver's text for the unknown fields: `unknown field "a", unknown field "b"`.
pub(crate) fn describe(fields: &[String]) -> String {
    fields
        .iter()
        .map(|f| format!("unknown field {f:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {

    use serde_json::json;

    use super::*;
    use crate::registry;

    fn unknown(api_version: &str, kind: &str, body: Value) -> Vec<String> {
        unknown_fields(registry::find_kind(api_version, kind).unwrap(), &body).unwrap()
    }

    #[test]
    fn builtin_kinds() {
        assert!(unknown("v1", "ConfigMap", json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "labels": {"x": "y"}}, "data": {"k": "v"}})).is_empty());
        assert_eq!(
            unknown(
                "v1",
                "ConfigMap",
                json!({"metadata": {"name": "a", "nmae": "b"}, "spec": {"foo": 1}})
            ),
            vec!["metadata.nmae", "spec"]
        );
        let pod = json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"cpu": "1"}}}, {"name": "d", "imagee": "x"}]}});
        assert_eq!(unknown("v1", "Pod", pod), vec!["spec.containers[1].imagee"]);
        assert!(
            unknown(
                "authentication.k8s.io/v1",
                "TokenReview",
                json!({"spec": {"token": "t", "audiences": ["a"]}})
            )
            .is_empty()
        );
        assert_eq!(
            unknown(
                "authorization.k8s.io/v1",
                "SubjectAccessReview",
                json!({"spec": {"user": "u", "resourceAttributes": {"verb": "get", "resourcee": "x"}}})
            ),
            vec!["spec.resourceAttributes.resourcee"]
        );
        // Strategic-merge directives and deletions are not fields.
        assert!(unknown("v1", "Pod", json!({"spec": {"$setElementOrder/containers": [{"name": "c"}], "containers": [{"name": "c", "$patch": "delete"}], "nodeName": null}})).is_empty());
    }

    #[test]
    fn custom_resources_follow_their_crd() {
        let p = json!({"apiVersion": "kubeflow.org/v1", "kind": "Profile", "metadata": {"name": "p"},
            "spec": {"owner": {"kind": "User", "name": "a@b.c"}, "resourceQuotaSpec": {"hard": {"cpu": "1"}}, "foo": 1}});
        assert_eq!(unknown("kubeflow.org/v1", "Profile", p), vec!["spec.foo"]);
        // Experiment preserves unknown fields; its metadata is still an ObjectMeta.
        assert_eq!(
            unknown(
                "kubeflow.org/v1beta1",
                "Experiment",
                json!({"spec": {"anything": {"x": 1}}, "metadata": {"bogus": 1}})
            ),
            vec!["metadata.bogus"]
        );
        assert!(unknown("kubeflow.org/v1alpha1", "PodDefault", json!({"spec": {"selector": {"matchLabels": {"a": "b"}}, "desc": "d", "env": [{"name": "A", "value": "b"}]}})).is_empty());
    }

    #[test]
    fn hostile_bodies_are_bounded() {
        let mut deep = json!({"x": 1});
        for _ in 0..500 {
            deep = json!({"data": deep});
        }
        assert!(unknown("v1", "ConfigMap", json!({"metadata": {"annotations": deep}})).len() <= MAX_REPORTED);
        let many: serde_json::Map<String, Value> = (0..1000).map(|i| (format!("f{i}"), json!(1))).collect();
        assert_eq!(unknown("v1", "ConfigMap", Value::Object(many)).len(), MAX_REPORTED);
        assert_eq!(
            describe(&["a".into(), "b.c".into()]),
            "unknown field \"a\", unknown field \"b.c\""
        );
        assert!(Directive::parse(Some("strict")).is_err());
        assert_eq!(Directive::parse(None).unwrap(), Directive::Warn);
    }
}
