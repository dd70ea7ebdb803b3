//! v1beta1 resource references (`resource_references` in bodies, `resource_reference_key.*` in
//! list queries) and their rendering.
//!
//! Invariants: types and relationships are accepted by name or number and anything else is
//! InvalidArgument; a reference never decides authorization by itself — handlers resolve it to
//! a stored object and check that object's namespace.

use serde_json::{Value, json};

use crate::error::{KfpError, KfpResult};
use crate::json;

const TYPES: &[&str] = &[
    "UNKNOWN_RESOURCE_TYPE",
    "EXPERIMENT",
    "JOB",
    "PIPELINE",
    "PIPELINE_VERSION",
    "NAMESPACE",
];
const RELATIONSHIPS: &[&str] = &["UNKNOWN_RELATIONSHIP", "OWNER", "CREATOR"];

/// One reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ref {
    /// `EXPERIMENT`, `NAMESPACE`, …
    pub kind: String,
    /// The referenced id (or namespace name).
    pub id: String,
    /// `OWNER`, `CREATOR`, …
    pub relationship: String,
}

/// Parses `resource_references` of a v1 body.
pub fn parse(body: &Value) -> KfpResult<Vec<Ref>> {
    let Some(list) = json::field(body, "resource_references") else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| KfpError::InvalidInput("resource_references must be a list".into()))?;
    let mut out = Vec::with_capacity(list.len());
    for r in list {
        let key =
            json::field(r, "key").ok_or_else(|| KfpError::InvalidInput("A resource reference needs a key".into()))?;
        let kind = match json::field(key, "type") {
            Some(t) => json::enum_name(t, TYPES, "resource type")?,
            None => TYPES[0].to_owned(),
        };
        let relationship = match json::field(r, "relationship") {
            Some(t) => json::enum_name(t, RELATIONSHIPS, "relationship")?,
            None => RELATIONSHIPS[0].to_owned(),
        };
        out.push(Ref {
            kind,
            id: json::string(key, "id")?,
            relationship,
        });
    }
    Ok(out)
}

/// The id of the first reference of `kind`.
pub fn find<'a>(refs: &'a [Ref], kind: &str) -> Option<&'a str> {
    refs.iter().find(|r| r.kind == kind).map(|r| r.id.as_str())
}

/// `resource_reference_key.type` / `.id` of a v1 list query (`resource_key.*` for versions).
pub fn query_key(q: &[(String, String)], prefix: &str) -> KfpResult<Option<(String, String)>> {
    let get = |k: &str| {
        q.iter()
            .find(|(a, _)| a == &format!("{prefix}.{k}"))
            .map(|(_, v)| v.clone())
    };
    match (get("type"), get("id")) {
        (None, None) => Ok(None),
        (t, id) => {
            let t = json::enum_name(&Value::String(t.unwrap_or_else(|| "0".into())), TYPES, "resource type")?;
            Ok(Some((t, id.unwrap_or_default())))
        }
    }
}

/// `{key:{type,id}, relationship}` (and `name` when known).
pub fn render(kind: &str, id: &str, name: &str, relationship: &str) -> Value {
    let mut v = json!({"key": {"type": kind, "id": id}, "relationship": relationship});
    if !name.is_empty()
        && let Some(m) = v.as_object_mut()
    {
        m.insert("name".into(), Value::String(name.to_owned()));
    }
    v
}
