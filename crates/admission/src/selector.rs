//! Admission's side of label selectors (the one `kfsec_types::meta::LabelSelector`): decoding
//! from JSON as Kubernetes' decoder does, the validation done by `LabelSelectorAsSelector` (with
//! apimachinery's error text) into a compiled [`Selector`], and matching against label sets.
//!
//! Invariants: an empty selector matches everything, exactly as upstream; a selector that fails
//! validation never matches anything — callers get the error instead; matching is a pure function
//! of the selector and the labels.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kfsec_types::meta::{LabelSelector, LabelSelectorRequirement};
use kfsec_types::validation::{label_value_errors, qualified_name_errors};
use serde_json::{Map, Value};

use crate::gofmt::{self, BadValue, FieldError};

/// A validated selector, ready to match: its requirements (`matchLabels` entries as `In` with one
/// value), matched with the shared `LabelSelectorRequirement` semantics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    reqs: Vec<LabelSelectorRequirement>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// Decodes a `metav1.LabelSelector` as Kubernetes' decoder accepts it: `null` or absent members
/// are empty and a `null` label value is `""`. Errors describe a type mismatch.
pub fn decode(v: &Value) -> Result<LabelSelector, String> {
    let obj = match v {
        Value::Null => return Ok(LabelSelector::default()),
        Value::Object(o) => o,
        _ => return Err("selector: expected an object".into()),
    };
    let mut out = LabelSelector::default();
    match obj.get("matchLabels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                match v {
                    Value::String(s) => {
                        out.match_labels.insert(k.clone(), s.clone());
                    }
                    Value::Null => {
                        out.match_labels.insert(k.clone(), String::new());
                    }
                    _ => return Err(format!("selector.matchLabels.{k}: expected a string")),
                }
            }
        }
        Some(_) => return Err("selector.matchLabels: expected an object".into()),
    }
    match obj.get("matchExpressions") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let Value::Object(e) = item else {
                    return Err(format!("selector.matchExpressions[{i}]: expected an object"));
                };
                let key = str_member(e, "key").map_err(|m| format!("selector.matchExpressions[{i}].{m}"))?;
                let operator = str_member(e, "operator").map_err(|m| format!("selector.matchExpressions[{i}].{m}"))?;
                let values = match e.get("values") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(vs)) => {
                        let mut out = Vec::with_capacity(vs.len());
                        for v in vs {
                            match v {
                                Value::String(s) => out.push(s.clone()),
                                _ => {
                                    return Err(format!("selector.matchExpressions[{i}].values: expected strings"));
                                }
                            }
                        }
                        out
                    }
                    Some(_) => return Err(format!("selector.matchExpressions[{i}].values: expected an array")),
                };
                out.match_expressions
                    .push(LabelSelectorRequirement { key, operator, values });
            }
        }
        Some(_) => return Err("selector.matchExpressions: expected an array".into()),
    }
    Ok(out)
}

/// Go's `%v` of the selector struct value, e.g. `{map[app:x] [{tier In [a b]}]}`.
pub fn go_v(selector: &LabelSelector) -> String {
    let mut out = String::from("{map[");
    for (i, (k, v)) in selector.match_labels.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let _ = write!(out, "{k}:{v}");
    }
    out.push_str("] [");
    for (i, e) in selector.match_expressions.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let _ = write!(out, "{{{} {} [{}]}}", e.key, e.operator, e.values.join(" "));
    }
    out.push_str("]}");
    out
}

fn str_member(obj: &Map<String, Value>, name: &str) -> Result<String, String> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("{name}: expected a string")),
    }
}

impl Selector {
    /// `metav1.LabelSelectorAsSelector`: validates keys, values and operators. The error is
    /// apimachinery's text (map entries are checked in key order, where Go's order is random).
    pub fn compile(selector: &LabelSelector) -> Result<Self, String> {
        let mut reqs = Vec::with_capacity(selector.match_labels.len() + selector.match_expressions.len());
        for (k, v) in &selector.match_labels {
            check_requirement(k, Op::In, std::slice::from_ref(v), true)?;
            reqs.push(LabelSelectorRequirement {
                key: k.clone(),
                operator: "In".to_owned(),
                values: vec![v.clone()],
            });
        }
        for e in &selector.match_expressions {
            let op = match e.operator.as_str() {
                "In" => Op::In,
                "NotIn" => Op::NotIn,
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                other => {
                    return Err(format!(
                        "{} is not a valid label selector operator",
                        gofmt::quote(other)
                    ));
                }
            };
            check_requirement(&e.key, op, &e.values, false)?;
            reqs.push(e.clone());
        }
        Ok(Selector { reqs })
    }

    /// A label key every matching label set must have (the first `In` requirement's), if any.
    pub(crate) fn required_key(&self) -> Option<&str> {
        self.reqs.iter().find(|r| r.operator == "In").map(|r| r.key.as_str())
    }

    /// Matches a label set given as a lookup function.
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.reqs.iter().all(|r| r.matches_value(get(&r.key)))
    }

    /// Matches labels held as a JSON object (non-string values count as absent).
    pub fn matches_json(&self, labels: Option<&Map<String, Value>>) -> bool {
        self.matches_with(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str))
    }

    /// Matches a label map.
    pub fn matches_map(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }
}

/// `labels.NewRequirement` validation; `equals` marks a `matchLabels` entry (one value).
fn check_requirement(key: &str, op: Op, values: &[String], equals: bool) -> Result<(), String> {
    let mut errs = Vec::new();
    let key_errs = qualified_name_errors(key);
    if !key_errs.is_empty() {
        errs.push(FieldError::Invalid {
            path: "key".into(),
            value: BadValue::Str(key.to_string()),
            detail: key_errs.join("; "),
        });
    }
    let vals = || {
        if values.is_empty() {
            "[]string(nil)".to_string()
        } else {
            gofmt::sharp_v_strings(values)
        }
    };
    if equals {
        if values.len() != 1 {
            errs.push(FieldError::Invalid {
                path: "values".into(),
                value: BadValue::Raw(vals()),
                detail: "exact-match compatibility requires one single value".into(),
            });
        }
    } else {
        match op {
            Op::In | Op::NotIn if values.is_empty() => errs.push(FieldError::Invalid {
                path: "values".into(),
                value: BadValue::Raw(vals()),
                detail: "for 'in', 'notin' operators, values set can't be empty".into(),
            }),
            Op::Exists | Op::DoesNotExist if !values.is_empty() => errs.push(FieldError::Invalid {
                path: "values".into(),
                value: BadValue::Raw(vals()),
                detail: "values set must be empty for exists and does not exist".into(),
            }),
            _ => {}
        }
    }
    for (i, v) in values.iter().enumerate() {
        let v_errs = label_value_errors(v);
        if !v_errs.is_empty() {
            errs.push(FieldError::Invalid {
                path: format!("values[{i}]"),
                value: BadValue::Str(v.clone()),
                detail: v_errs.join("; "),
            });
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(gofmt::field_errors(&errs))
    }
}

#[cfg(test)]
mod tests {

    use serde_json::json;

    use super::*;

    fn sel(v: Value) -> Selector {
        Selector::compile(&decode(&v).unwrap()).unwrap()
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(sel(json!({})).matches_json(None));
        assert!(sel(Value::Null).matches_json(Some(&Map::new())));
    }

    #[test]
    fn match_labels_and_expressions() {
        let s = sel(json!({
            "matchLabels": {"app": "nb"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "gpu", "operator": "NotIn", "values": ["no"]},
                {"key": "team", "operator": "Exists"},
                {"key": "skip", "operator": "DoesNotExist"}
            ]
        }));
        let l = json!({"app": "nb", "tier": "b", "team": "x"});
        assert!(s.matches_json(l.as_object()));
        let l = json!({"app": "nb", "tier": "b", "team": "x", "gpu": "no"});
        assert!(!s.matches_json(l.as_object()));
        let l = json!({"app": "nb", "tier": "c", "team": "x"});
        assert!(!s.matches_json(l.as_object()));
        let l = json!({"app": "nb", "tier": "a", "team": "x", "skip": ""});
        assert!(!s.matches_json(l.as_object()));
    }

    #[test]
    fn invalid_operator_and_values() {
        let s = decode(&json!({"matchExpressions": [{"key": "a", "operator": "Foo"}]})).unwrap();
        assert_eq!(
            Selector::compile(&s).unwrap_err(),
            "\"Foo\" is not a valid label selector operator"
        );
        assert_eq!(go_v(&s), "{map[] [{a Foo []}]}");
        let s = decode(&json!({"matchExpressions": [{"key": "a", "operator": "In"}]})).unwrap();
        assert_eq!(
            Selector::compile(&s).unwrap_err(),
            "values: Invalid value: []string(nil): for 'in', 'notin' operators, values set can't be empty"
        );
        let s = decode(&json!({"matchLabels": {"bad key": "v"}})).unwrap();
        assert!(
            Selector::compile(&s)
                .unwrap_err()
                .starts_with("key: Invalid value: \"bad key\": name part must consist of")
        );
    }
}
