//! Kind-specific defaulting and validation applied on every write: Namespace labels and phase,
//! Secret `stringData` and immutable `type`, RoleBinding/ClusterRoleBinding `roleRef` rules; and
//! the generation rule.
//!
//! Invariants: `kubernetes.io/metadata.name` always equals a Namespace's name; a binding's
//! `roleRef` is valid and never changes after creation.

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::objects::{invalid, meta_mut, name_of};
use crate::registry::Resource;
use crate::status::{ApiError, FieldCause};

/// Fields after which a difference bumps `metadata.generation`.
pub(crate) fn spec_changed(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("metadata");
            o.remove("status");
        }
        v
    };
    strip(a) != strip(b)
}

/// Kubernetes' checks of a Role's or ClusterRole's `rules` (`ValidatePolicyRule`): every rule
/// names verbs; a rule of non-resource URLs names no API group, resource or resource name, and
/// only a ClusterRole has one; a resource rule names API groups and resources. A rule mixing
/// resources and URLs would otherwise grant resources that the escalation check, which reads it
/// as a URL rule, never compared with the writer's own permissions.
pub(crate) fn policy_rule_causes(rules: Option<&Value>, namespaced: bool) -> Vec<FieldCause> {
    let list = |rule: &Value, key: &str| -> Vec<String> {
        rule.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    // Go's rendering of a []string value, as the API server's messages show it.
    let go = |v: &[String]| {
        format!(
            "[]string{{{}}}",
            v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ")
        )
    };
    let invalid = |field: String, value: &[String], detail: &str| FieldCause {
        reason: kfsec_types::CauseType::FieldValueInvalid,
        field,
        message: format!("Invalid value: {}: {detail}", go(value)),
    };
    let mut causes = Vec::new();
    for (i, rule) in rules.and_then(Value::as_array).into_iter().flatten().enumerate() {
        let at = |key: &str| format!("rules[{i}].{key}");
        if list(rule, "verbs").is_empty() {
            causes.push(FieldCause::required(
                at("verbs"),
                "verbs must contain at least one value",
            ));
        }
        let urls = list(rule, "nonResourceURLs");
        if !urls.is_empty() {
            if namespaced {
                causes.push(invalid(
                    at("nonResourceURLs"),
                    &urls,
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if ["apiGroups", "resources", "resourceNames"]
                .iter()
                .any(|k| !list(rule, k).is_empty())
            {
                causes.push(invalid(
                    at("nonResourceURLs"),
                    &urls,
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if list(rule, "apiGroups").is_empty() {
            causes.push(FieldCause::required(
                at("apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if list(rule, "resources").is_empty() {
            causes.push(FieldCause::required(
                at("resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
    causes
}

/// Kind-specific defaulting and validation run on every write.
pub(crate) fn prepare_kind(res: &Resource, obj: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
    let name = name_of(obj).to_owned();
    match (res.group, res.kind) {
        ("", "Namespace") => {
            let m = meta_mut(obj)?;
            let labels = m.entry("labels").or_insert_with(|| Value::Object(Map::new()));
            if let Some(l) = labels.as_object_mut() {
                l.insert("kubernetes.io/metadata.name".into(), Value::String(name.clone()));
            }
            if let Some(o) = obj.as_object_mut() {
                let status = o.entry("status").or_insert_with(|| json!({}));
                if let Some(s) = status.as_object_mut() {
                    s.entry("phase").or_insert_with(|| Value::String("Active".into()));
                }
            }
        }
        ("", "Secret") => {
            if let Some(o) = obj.as_object_mut() {
                if let Some(sd) = o.remove("stringData") {
                    let Value::Object(sd) = sd else {
                        return Err(invalid(
                            res,
                            &name,
                            vec![FieldCause::invalid("stringData", "", "must be a map of strings")],
                        ));
                    };
                    let data = o.entry("data").or_insert_with(|| json!({}));
                    if let Some(d) = data.as_object_mut() {
                        for (k, v) in sd {
                            let s = v.as_str().unwrap_or_default();
                            let enc = base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
                            d.insert(k, Value::String(enc));
                        }
                    }
                }
                o.entry("type").or_insert_with(|| Value::String("Opaque".into()));
                if let (Some(old), Some(new)) = (old.and_then(|o| o.get("type")), o.get("type"))
                    && old != new
                {
                    return Err(invalid(
                        res,
                        &name,
                        vec![FieldCause::invalid(
                            "type",
                            new.as_str().unwrap_or(""),
                            "field is immutable",
                        )],
                    ));
                }
            }
        }
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole") => {
            let causes = policy_rule_causes(obj.get("rules"), res.kind == "Role");
            if !causes.is_empty() {
                return Err(invalid(res, &name, causes));
            }
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            let rr = obj.get("roleRef");
            let kind = rr.and_then(|r| r.get("kind")).and_then(Value::as_str).unwrap_or("");
            let rname = rr.and_then(|r| r.get("name")).and_then(Value::as_str).unwrap_or("");
            let mut causes = Vec::new();
            let kinds: &[&str] = if res.kind == "RoleBinding" {
                &["Role", "ClusterRole"]
            } else {
                &["ClusterRole"]
            };
            if !kinds.contains(&kind) {
                causes.push(FieldCause {
                    reason: kfsec_types::CauseType::FieldValueNotSupported,
                    field: "roleRef.kind".into(),
                    message: format!(
                        "Unsupported value: {kind:?}: supported values: {}",
                        kinds.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ")
                    ),
                });
            }
            if rname.is_empty() {
                causes.push(FieldCause::required("roleRef.name", ""));
            }
            if let Some(old) = old
                && old.get("roleRef") != obj.get("roleRef")
            {
                causes.push(FieldCause::invalid("roleRef", rname, "cannot change roleRef"));
            }
            if !causes.is_empty() {
                return Err(invalid(res, &name, causes));
            }
        }
        _ => {}
    }
    Ok(())
}
