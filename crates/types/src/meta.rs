//! Kubernetes object metadata and label selectors: `metav1.ObjectMeta` and `metav1.LabelSelector`
//! (with `LabelSelectorRequirement`), the one copy every kfsec crate uses.
//!
//! Invariants: field names and omission rules follow the Kubernetes JSON exactly (camelCase,
//! empty strings, maps and lists omitted); `null` is accepted wherever Go may write one for a nil
//! slice or map; metadata fields not modelled here are kept in [`ObjectMeta::extra`], so an object
//! round-trips unchanged; an empty selector matches everything and an invalid one matches nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// A copy of `v` without `null` object members, at any depth (JSON `null` decodes to a Go zero
/// value, so Kubernetes never keeps one).
pub fn strip_nulls(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

/// Deserializes `null` as the type's default (Go writes nil slices and maps as `null`).
pub(crate) fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `metav1.ObjectMeta`: the fields kfsec reads are typed; every other field is kept in `extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Object name.
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Namespace; empty for cluster-scoped objects.
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Labels.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    /// The store revision that last wrote the object.
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    /// Unique id.
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// RFC 3339 creation time; Kubernetes writes `null` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// Every other metadata field (ownerReferences, finalizers, generation, managedFields, …).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ObjectMeta {
    /// Metadata with a name only (cluster-scoped objects).
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Metadata with a namespace and a name.
    pub fn namespaced(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            ..Self::default()
        }
    }

    /// `ownerReferences` (kept in [`ObjectMeta::extra`]), decoded; an entry that does not
    /// decode is skipped (it can name no owner kfsec acts for).
    pub fn owner_references(&self) -> Vec<OwnerReference> {
        self.extra
            .get("ownerReferences")
            .and_then(serde_json::Value::as_array)
            .map(|refs| {
                refs.iter()
                    .filter_map(|r| OwnerReference::deserialize(r).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Replaces `ownerReferences` (none: the member is removed).
    pub fn set_owner_references(&mut self, refs: &[OwnerReference]) {
        match serde_json::to_value(refs) {
            Ok(v) if !refs.is_empty() => {
                self.extra.insert("ownerReferences".to_owned(), v);
            }
            _ => {
                self.extra.remove("ownerReferences");
            }
        }
    }
}

/// `metav1.OwnerReference`: the object that owns this one (deleting it deletes this one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    /// The owner's `apiVersion`.
    #[serde(default, deserialize_with = "null_default")]
    pub api_version: String,
    /// The owner's kind.
    #[serde(default, deserialize_with = "null_default")]
    pub kind: String,
    /// The owner's name.
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    /// The owner's uid.
    #[serde(default, deserialize_with = "null_default")]
    pub uid: String,
    /// Whether the owner is the managing controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
    /// Whether the owner's deletion waits for this object's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_owner_deletion: Option<bool>,
}

/// `metav1.LabelSelector`: `matchLabels` and `matchExpressions`, all of which must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Exact `key: value` requirements.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

impl LabelSelector {
    /// A selector requiring the single label `key=value`.
    pub fn match_label(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            match_labels: BTreeMap::from([(key.into(), value.into())]),
            match_expressions: Vec::new(),
        }
    }

    /// A selector from `matchLabels` only.
    pub fn from_labels<K, V>(labels: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            match_labels: labels.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            match_expressions: Vec::new(),
        }
    }

    /// True when both lists are empty (the selector matches everything).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether the selector is well formed: `In`/`NotIn` need values, `Exists`/`DoesNotExist` take
    /// none, and no other operator exists. Kubernetes refuses to use an invalid selector.
    pub fn is_valid(&self) -> bool {
        self.match_expressions.iter().all(LabelSelectorRequirement::is_valid)
    }

    /// Whether `labels` satisfy every requirement. An empty selector matches everything; an invalid
    /// one matches nothing.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.is_valid()
            && self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

/// One set-based requirement: `key` `operator` `values`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    /// Label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist` (kept as text so unknown operators round-trip).
    pub operator: String,
    /// Values for `In`/`NotIn`.
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl LabelSelectorRequirement {
    /// Whether the requirement is well formed: `In`/`NotIn` need values, `Exists`/`DoesNotExist`
    /// take none, and no other operator exists.
    pub fn is_valid(&self) -> bool {
        match self.operator.as_str() {
            "In" | "NotIn" => !self.values.is_empty(),
            "Exists" | "DoesNotExist" => self.values.is_empty(),
            _ => false,
        }
    }

    /// Whether `labels` satisfy this requirement (an unknown operator matches nothing).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_value(labels.get(&self.key).map(String::as_str))
    }

    /// Whether a label set in which the requirement's key has `value` (`None`: absent)
    /// satisfies it (an unknown operator matches nothing).
    pub fn matches_value(&self, value: Option<&str>) -> bool {
        let listed = |v: &str| self.values.iter().any(|x| x == v);
        match self.operator.as_str() {
            "In" => value.is_some_and(listed),
            // NotIn also matches when the key is absent, as in Kubernetes.
            "NotIn" => value.is_none_or(|v| !listed(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn object_meta_keeps_unknown_fields_and_accepts_null() {
        let input = json!({
            "name": "a", "namespace": "ns", "labels": null, "annotations": {"x": "y"},
            "resourceVersion": "7", "uid": "u", "creationTimestamp": "2024-01-01T00:00:00Z",
            "generation": 3, "ownerReferences": [{"kind": "Profile", "name": "a"}]
        });
        let meta: ObjectMeta = serde_json::from_value(input).unwrap();
        assert!(meta.labels.is_empty());
        assert_eq!(meta.extra["generation"], 3);
        let out = serde_json::to_value(&meta).unwrap();
        assert_eq!(
            out,
            json!({
                "name": "a", "namespace": "ns", "annotations": {"x": "y"},
                "resourceVersion": "7", "uid": "u", "creationTimestamp": "2024-01-01T00:00:00Z",
                "generation": 3, "ownerReferences": [{"kind": "Profile", "name": "a"}]
            })
        );
    }

    #[test]
    fn label_selector_operators() {
        let labels = BTreeMap::from([("a".to_owned(), "1".to_owned()), ("b".to_owned(), "2".to_owned())]);
        let req = |key: &str, op: &str, values: &[&str]| LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: values.iter().map(|v| (*v).to_owned()).collect(),
            }],
        };
        assert!(LabelSelector::default().matches(&labels));
        assert!(LabelSelector::match_label("a", "1").matches(&labels));
        assert!(!LabelSelector::match_label("a", "2").matches(&labels));
        assert!(req("a", "In", &["1", "3"]).matches(&labels));
        assert!(!req("a", "In", &["3"]).matches(&labels));
        assert!(!req("z", "In", &["1"]).matches(&labels));
        assert!(req("a", "NotIn", &["3"]).matches(&labels));
        assert!(req("z", "NotIn", &["3"]).matches(&labels));
        assert!(!req("a", "NotIn", &["1"]).matches(&labels));
        assert!(req("b", "Exists", &[]).matches(&labels));
        assert!(!req("z", "Exists", &[]).matches(&labels));
        assert!(req("z", "DoesNotExist", &[]).matches(&labels));
        assert!(!req("a", "DoesNotExist", &[]).matches(&labels));
        // Invalid selectors match nothing.
        assert!(!req("a", "In", &[]).matches(&labels));
        assert!(!req("a", "Exists", &["1"]).matches(&labels));
        assert!(!req("a", "Gt", &["0"]).matches(&labels));
    }
}
