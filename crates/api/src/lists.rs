//! The one table of how the lists of the served kinds merge: the merge keys of the strategic
//! merge patch (`patchMergeKey`) and the list types of server-side apply (`listType` map with
//! `listMapKeys`, set, or atomic), by field name as in the Kubernetes Go structs.
//!
//! Invariants: a list not named here is atomic (replaced whole, owned as one field) — the safe
//! default; both patch flavours read this table, so they never disagree on a list's identity.

/// How server-side apply treats a list field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListType {
    /// Replaced and owned as a whole.
    Atomic,
    /// Items identified by these fields (the first is required in every item).
    Map(&'static [&'static str]),
    /// Items are scalars identified by their value.
    Set,
}

/// `(field, list map keys)`: the first key is also the strategic merge patch's merge key.
const KEYED: &[(&str, &[&str])] = &[
    ("containers", &["name"]),
    ("initContainers", &["name"]),
    ("ephemeralContainers", &["name"]),
    ("volumes", &["name"]),
    ("env", &["name"]),
    ("imagePullSecrets", &["name"]),
    ("secrets", &["name"]),
    ("resourceClaims", &["name"]),
    ("schedulingGates", &["name"]),
    ("readinessGates", &["conditionType"]),
    ("hostAliases", &["ip"]),
    ("volumeMounts", &["mountPath"]),
    ("volumeDevices", &["devicePath"]),
    ("ports", &["containerPort", "protocol"]),
    ("conditions", &["type"]),
    ("ownerReferences", &["uid"]),
];

/// Lists of scalars merged as sets.
const SETS: &[&str] = &["finalizers"];

/// The strategic merge patch's merge key of a list field.
pub(crate) fn merge_key(field: &str) -> Option<&'static str> {
    KEYED
        .iter()
        .find(|(f, _)| *f == field)
        .and_then(|(_, keys)| keys.first().copied())
}

/// Server-side apply's type of the list field `field`.
pub(crate) fn list_type(field: &str) -> ListType {
    if let Some((_, keys)) = KEYED.iter().find(|(f, _)| *f == field) {
        ListType::Map(keys)
    } else if SETS.contains(&field) {
        ListType::Set
    } else {
        ListType::Atomic
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        assert_eq!(merge_key("containers"), Some("name"));
        assert_eq!(merge_key("ports"), Some("containerPort"));
        assert_eq!(merge_key("subjects"), None);
        assert_eq!(list_type("ports"), ListType::Map(&["containerPort", "protocol"]));
        assert_eq!(list_type("finalizers"), ListType::Set);
        assert_eq!(list_type("rules"), ListType::Atomic);
    }
}
