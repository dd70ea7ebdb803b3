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
use std::collections::BTreeMap;

use serde_json::Value;

use crate::openapi::{self, DEF, Gvk};
use crate::patch::PatchType;
use crate::registry::Resource;
use crate::status::ApiError;

/// The most unknown fields one answer names.
const MAX_REPORTED: usize = 100;
/// Deeper than this the walk stops (bodies are JSON nested at most a few hundred levels).
const MAX_DEPTH: usize = 128;
/// The longest field name reported (longer ones are cut, ending in `…`).
const MAX_FIELD_BYTES: usize = 512;
/// The most `Warning` header bytes one answer carries (kube-apiserver's budget is 4 KiB too).
const MAX_WARNING_BYTES: usize = 4096;

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
    Ok(unknown_in(&docs.shapes, res.group, res.version, res.kind, body))
}

fn unknown_in(shapes: &Shapes, group: &str, version: &str, kind: &str, body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(i) = shapes
        .kinds
        .get(&(group.to_owned(), version.to_owned(), kind.to_owned()))
    {
        walk(shapes, *i, body, &mut Vec::new(), &mut out);
    }
    out
}

/// The unknown fields of `body` for the kind `kind` at `api_version` (`v1` or `group/version`)
/// by the published schemas, as a `Strict` write reports them; empty for a kind without a schema
/// (for the fuzz targets and tools).
pub fn unknown_fields_of(api_version: &str, kind: &str, body: &Value) -> Vec<String> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    openapi::documents()
        .map(|docs| unknown_in(&docs.shapes, group, version, kind, body))
        .unwrap_or_default()
}

/// One schema node, reduced to what the walk reads.
#[derive(Debug, Clone, Default)]
struct Node {
    /// Declared properties, sorted by name.
    props: Box<[(Box<str>, u32)]>,
    /// `additionalProperties` (a schema).
    extra: Option<u32>,
    /// `items` (a schema).
    items: Option<u32>,
    /// `x-kubernetes-preserve-unknown-fields: true`.
    open: bool,
}

impl Node {
    fn prop(&self, name: &str) -> Option<u32> {
        self.props
            .binary_search_by(|(k, _)| (**k).cmp(name))
            .ok()
            .and_then(|i| self.props.get(i))
            .map(|(_, n)| *n)
    }
}

/// The served kinds' schemas as a compact graph (`$ref`s and single-`allOf` wrappers resolved
/// to their target node), built once with the OpenAPI documents.
#[derive(Debug, Default)]
pub(crate) struct Shapes {
    nodes: Vec<Node>,
    kinds: BTreeMap<Gvk, u32>,
}

impl Shapes {
    /// Compiles the canonical definitions (refs `#/definitions/…`).
    pub(crate) fn compile(defs: &BTreeMap<String, Value>, kinds: &BTreeMap<Gvk, String>) -> Self {
        let mut c = Compiler {
            defs,
            done: BTreeMap::new(),
            nodes: Vec::new(),
        };
        let kinds = kinds
            .iter()
            .filter_map(|(gvk, name)| c.def(name).map(|i| (gvk.clone(), i)))
            .collect();
        Self { nodes: c.nodes, kinds }
    }

    fn node(&self, i: u32) -> Option<&Node> {
        self.nodes.get(usize::try_from(i).ok()?)
    }
}

struct Compiler<'a> {
    defs: &'a BTreeMap<String, Value>,
    done: BTreeMap<&'a str, u32>,
    nodes: Vec<Node>,
}

impl<'a> Compiler<'a> {
    fn push(&mut self, n: Node) -> u32 {
        self.nodes.push(n);
        u32::try_from(self.nodes.len() - 1).unwrap_or(u32::MAX)
    }

    /// The node of a definition (a placeholder is reserved first, so cycles end).
    fn def(&mut self, name: &str) -> Option<u32> {
        let (key, body) = self.defs.get_key_value(name)?;
        if let Some(i) = self.done.get(key.as_str()) {
            return Some(*i);
        }
        let i = self.push(Node::default());
        self.done.insert(key.as_str(), i);
        let n = self.compile(body);
        let node = self.nodes.get(usize::try_from(n).ok()?).cloned().unwrap_or_default();
        if let Some(slot) = self.nodes.get_mut(usize::try_from(i).ok()?) {
            *slot = node;
        }
        Some(i)
    }

    fn compile(&mut self, v: &'a Value) -> u32 {
        if let Some(r) = v.get("$ref").and_then(Value::as_str)
            && let Some(i) = r.strip_prefix(DEF).and_then(|n| self.def(n))
        {
            return i;
        }
        if let Some(Value::Array(all)) = v.get("allOf")
            && let [one] = all.as_slice()
            && v.get("properties").is_none()
        {
            return self.compile(one);
        }
        let mut props: Vec<(Box<str>, u32)> = v
            .get("properties")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, s)| (k.as_str().into(), self.compile(s))).collect())
            .unwrap_or_default();
        props.sort_by(|a, b| a.0.cmp(&b.0));
        let extra = v
            .get("additionalProperties")
            .filter(|a| a.is_object())
            .map(|a| self.compile(a));
        let items = v.get("items").filter(|i| i.is_object()).map(|i| self.compile(i));
        let open = v
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        self.push(Node {
            props: props.into(),
            extra,
            items,
            open,
        })
    }
}

/// One step of the path to a field: a member or an array index.
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// The field's name as kube-apiserver writes it (`spec.containers[0].foo`), cut to
/// [`MAX_FIELD_BYTES`] with `…` (a hostile body's keys stay out of answers' sizes).
fn field_name(segs: &[Seg<'_>]) -> String {
    let mut out = String::new();
    for s in segs {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
        if out.len() > MAX_FIELD_BYTES {
            break;
        }
    }
    if out.len() > MAX_FIELD_BYTES {
        let mut cut = MAX_FIELD_BYTES;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// Walks `v` against node `node`; the path is kept as segments and only written out for a
/// reported field, so the walk's cost stays linear in the body.
fn walk<'a>(shapes: &Shapes, node: u32, v: &'a Value, segs: &mut Vec<Seg<'a>>, out: &mut Vec<String>) {
    if segs.len() > MAX_DEPTH || out.len() >= MAX_REPORTED {
        return;
    }
    let Some(n) = shapes.node(node) else {
        return;
    };
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k.starts_with('$') || x.is_null() {
                    continue;
                }
                segs.push(Seg::Key(k));
                if let Some(sub) = n.prop(k).or(n.extra) {
                    walk(shapes, sub, x, segs, out);
                } else if !n.props.is_empty() && !n.open && out.len() < MAX_REPORTED {
                    out.push(field_name(segs));
                }
                segs.pop();
            }
        }
        Value::Array(a) => {
            if let Some(items) = n.items {
                for (i, x) in a.iter().enumerate() {
                    segs.push(Seg::Index(i));
                    walk(shapes, items, x, segs, out);
                    segs.pop();
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
    let mut budget = MAX_WARNING_BYTES;
    for f in fields.iter().take(MAX_REPORTED) {
        let text: String = format!("unknown field {f:?}")
            .chars()
            .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
            .collect();
        let quoted = format!("299 - \"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""));
        if quoted.len() > budget {
            break;
        }
        budget -= quoted.len();
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
        // Long unknown names are cut (answers stay small whatever the body's keys).
        let long = "k".repeat(1 << 16);
        let body: serde_json::Map<String, Value> = (0..200).map(|i| (format!("{i}{long}"), json!(1))).collect();
        let u = unknown("v1", "Pod", Value::Object(body));
        assert_eq!(u.len(), MAX_REPORTED);
        assert!(
            u.iter()
                .all(|f| f.ends_with('…') && f.len() == MAX_FIELD_BYTES + '…'.len_utf8())
        );
        let cut = field_name(&[Seg::Key("spec"), Seg::Index(3), Seg::Key(&long)]);
        assert!(cut.starts_with("spec[3].kkk") && cut.ends_with('…'));
        let many: Vec<String> = (0..100).map(|i| format!("{i}{}", "x".repeat(200))).collect();
        let r = with_warnings(Response::default(), &many);
        let bytes: usize = r.headers().get_all(header::WARNING).iter().map(|v| v.len()).sum();
        assert!(bytes <= MAX_WARNING_BYTES && bytes > 3000, "{bytes}");
        assert!(Directive::parse(Some("strict")).is_err());
        assert_eq!(Directive::parse(None).unwrap(), Directive::Warn);
    }
}
