//! Object metadata rules: name and label validation (Kubernetes' exact messages), RFC 3339
//! timestamps, uids and `generateName` suffixes.
//!
//! Invariants: a name that passes [`validate_name`] never contains `/` or `%`, so store keys built
//! from it cannot escape their prefix; labels and annotations must be string maps.

use kfsec_types::validation::{dns1123_label_errors, dns1123_subdomain_errors, is_label_value, is_qualified_name};
use kfsec_types::{Rng, random_array};
use serde_json::Value;

use crate::registry::NameRule;
use crate::status::FieldCause;

/// Problems with an object name under `rule` (empty = valid).
pub fn validate_name(rule: NameRule, name: &str) -> Vec<FieldCause> {
    let field = "metadata.name";
    match rule {
        NameRule::Subdomain => dns1123_subdomain_errors(name)
            .iter()
            .map(|m| FieldCause::invalid(field, name, m))
            .collect(),
        NameRule::Label => dns1123_label_errors(name)
            .iter()
            .map(|m| FieldCause::invalid(field, name, m))
            .collect(),
        NameRule::PathSegment => {
            if name == "." || name == ".." {
                vec![FieldCause::invalid(field, name, &format!("may not be '{name}'"))]
            } else if let Some(bad) = ["/", "%"].into_iter().find(|b| name.contains(b)) {
                vec![FieldCause::invalid(field, name, &format!("may not contain '{bad}'"))]
            } else {
                Vec::new()
            }
        }
    }
}

/// Problems with `metadata.labels` / `metadata.annotations`.
pub fn validate_maps(meta: &serde_json::Map<String, Value>) -> Vec<FieldCause> {
    let mut out = Vec::new();
    if let Some(labels) = meta.get("labels").filter(|v| !v.is_null()) {
        match labels.as_object() {
            None => out.push(FieldCause::invalid("metadata.labels", "", "must be a map of strings")),
            Some(m) => {
                for (k, v) in m {
                    if !is_qualified_name(k) {
                        out.push(FieldCause::invalid("metadata.labels", k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
                    }
                    match v.as_str() {
                        Some(s) if is_label_value(s) => {}
                        Some(s) => out.push(FieldCause::invalid("metadata.labels", s, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")),
                        None => out.push(FieldCause::invalid("metadata.labels", k, "label values must be strings")),
                    }
                }
            }
        }
    }
    if let Some(ann) = meta.get("annotations").filter(|v| !v.is_null()) {
        match ann.as_object() {
            None => out.push(FieldCause::invalid(
                "metadata.annotations",
                "",
                "must be a map of strings",
            )),
            Some(m) => {
                let mut total = 0usize;
                for (k, v) in m {
                    if !is_qualified_name(&k.to_ascii_lowercase()) {
                        out.push(FieldCause::invalid("metadata.annotations", k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
                    }
                    match v.as_str() {
                        Some(s) => total += k.len() + s.len(),
                        None => out.push(FieldCause::invalid(
                            "metadata.annotations",
                            k,
                            "annotation values must be strings",
                        )),
                    }
                }
                if total > 256 * 1024 {
                    out.push(FieldCause {
                        reason: kfsec_types::CauseType::FieldValueTooLong,
                        field: "metadata.annotations".into(),
                        message: "Too long: must have at most 262144 bytes".into(),
                    });
                }
            }
        }
    }
    if let Some(f) = meta.get("finalizers").filter(|v| !v.is_null()) {
        let ok = f
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x.as_str().is_some_and(is_qualified_name)));
        if !ok {
            out.push(FieldCause::invalid(
                "metadata.finalizers",
                "",
                "must be a list of qualified names",
            ));
        }
    }
    out
}

/// Kubernetes' `HumanDuration` (as printed in the AGE column).
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    if s < 2 * 60 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        let rem = s % 60;
        return if rem == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{rem}s")
        };
    }
    if m < 3 * 60 {
        return format!("{m}m");
    }
    let h = s / 3600;
    if h < 8 {
        let rem = m % 60;
        return if rem == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{rem}m")
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        let d = h / 24;
        let rem = h % 24;
        return if rem == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{rem}h")
        };
    }
    if h < 24 * 365 * 2 {
        return format!("{}d", h / 24);
    }
    if h < 24 * 365 * 8 {
        let y = h / (24 * 365);
        let d = (h / 24) % 365;
        return if d == 0 { format!("{y}y") } else { format!("{y}y{d}d") };
    }
    format!("{}y", h / (24 * 365))
}

/// A random RFC 4122 version-4 uid.
pub fn new_uid(rng: &dyn Rng) -> String {
    let mut b: [u8; 16] = random_array(rng);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = kfsec_types::hex::encode(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The 5-character suffix of `generateName` (Kubernetes' alphabet without vowels and
/// look-alikes).
pub fn name_suffix(rng: &dyn Rng) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes: [u8; 5] = random_array(rng);
    bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn names() {
        assert!(validate_name(NameRule::Subdomain, "a.b-c").is_empty());
        assert!(!validate_name(NameRule::Subdomain, "A").is_empty());
        assert!(!validate_name(NameRule::Subdomain, "-a").is_empty());
        assert!(!validate_name(NameRule::Subdomain, "a/b").is_empty());
        assert!(!validate_name(NameRule::Label, "a.b").is_empty());
        assert!(validate_name(NameRule::Label, "kubeflow-user").is_empty());
        assert!(validate_name(NameRule::PathSegment, "system:aggregate-to-edit").is_empty());
        assert!(!validate_name(NameRule::PathSegment, "a/b").is_empty());
        assert!(!validate_name(NameRule::PathSegment, "..").is_empty());
        assert!(!validate_name(NameRule::Label, &"a".repeat(64)).is_empty());
        let c = validate_name(NameRule::Subdomain, "Bad_Name");
        assert_eq!(
            c[0].message,
            "Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        );
        let c = validate_name(NameRule::Label, "a.b");
        assert_eq!(
            c[0].message,
            "Invalid value: \"a.b\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
        );
    }

    #[test]
    fn labels() {
        assert!(is_qualified_name("app.kubernetes.io/part-of"));
        assert!(is_qualified_name("app"));
        assert!(!is_qualified_name("-app"));
        assert!(!is_qualified_name("a/b/c"));
        // As apimachinery: the prefix is a DNS subdomain, whose labels have no length limit of their own.
        assert!(is_qualified_name(&format!("{}.example.com/a", "a".repeat(64))));
        assert!(is_label_value(""));
        assert!(!is_label_value("a b"));
        let meta = serde_json::json!({"labels": {"a": 1}}).as_object().cloned().unwrap();
        assert_eq!(validate_maps(&meta).len(), 1);
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86_400), "3d");
        assert_eq!(human_duration(400 * 86_400), "400d");
    }

    struct Seq(std::sync::atomic::AtomicU8);
    impl Rng for Seq {
        fn fill(&self, buf: &mut [u8]) {
            for b in buf {
                *b = self.0.fetch_add(37, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    #[test]
    fn uids_and_suffixes() {
        let r = Seq(std::sync::atomic::AtomicU8::new(1));
        let u = new_uid(&r);
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        let s = name_suffix(&r);
        assert_eq!(s.len(), 5);
        assert!(kfsec_types::validation::is_dns1123_label(&s));
    }
}
