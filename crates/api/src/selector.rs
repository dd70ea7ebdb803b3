//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`, `>`, `<`) and field selectors
//! (`metadata.name`, `metadata.namespace` and a few per-kind fields) for list and watch.
//!
//! Invariants: parsing is total (bad input is an error, never a panic); an empty selector matches
//! everything; `!=` and `notin` match objects lacking the key, as in Kubernetes. Both selectors
//! render (`Display`) in the syntax they parse, and parsing a rendered selector gives it back
//! (the `label_selector` / `field_selector` fuzz targets check that): field-selector values
//! carry Kubernetes' escapes (`\\`, `\,`, `\=`), and an unescaped `=` in a value is refused as
//! Kubernetes refuses it.

use kfsec_types::validation::{is_label_value, is_qualified_name};
use serde_json::Value;

/// A selector parse error (→ 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
    Gt(i64),
    Lt(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A parsed `?labelSelector=` query (`a=b,c in (d)`): the query syntax, distinct from the
/// `metav1.LabelSelector` objects carry (`kfsec_types::meta::LabelSelector`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelQuery(Vec<Requirement>);

/// Splits on commas outside parentheses.
fn split_top(s: &str) -> Result<Vec<&str>, SelectorError> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(SelectorError(format!(
                        "unable to parse requirement: unexpected ')' in {s:?}"
                    )));
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(SelectorError(format!(
            "unable to parse requirement: unclosed '(' in {s:?}"
        )));
    }
    out.push(&s[start..]);
    Ok(out)
}

fn check_key(k: &str) -> Result<String, SelectorError> {
    if is_qualified_name(k) {
        Ok(k.to_owned())
    } else {
        Err(SelectorError(format!(
            "unable to parse requirement: invalid label key {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        )))
    }
}

fn check_value(v: &str) -> Result<String, SelectorError> {
    if is_label_value(v) {
        Ok(v.to_owned())
    } else {
        Err(SelectorError(format!(
            "unable to parse requirement: invalid label value: {v:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        )))
    }
}

fn parse_set(rest: &str) -> Result<Vec<String>, SelectorError> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            SelectorError(format!(
                "unable to parse requirement: expected a (value, …) set, found {rest:?}"
            ))
        })?;
    let vals: Result<Vec<String>, _> = inner
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(check_value)
        .collect();
    vals
}

/// `key` then a whitespace-separated word operator (`in`, `notin`)?
fn word_op<'a>(req: &'a str, word: &str) -> Option<(&'a str, &'a str)> {
    let idx = req.find('(')?;
    let head = req[..idx].trim_end();
    let key = head.strip_suffix(word)?;
    if key.is_empty() || !key.ends_with(char::is_whitespace) {
        return None;
    }
    Some((key.trim(), &req[idx..]))
}

fn parse_requirement(raw: &str) -> Result<Requirement, SelectorError> {
    let req = raw.trim();
    if req.is_empty() {
        return Err(SelectorError(
            "unable to parse requirement: found '', expected: identifier".into(),
        ));
    }
    if let Some(k) = req.strip_prefix('!') {
        return Ok(Requirement {
            key: check_key(k.trim())?,
            op: Op::NotExists,
        });
    }
    if let Some((k, set)) = word_op(req, "notin") {
        return Ok(Requirement {
            key: check_key(k)?,
            op: Op::NotIn(parse_set(set)?),
        });
    }
    if let Some((k, set)) = word_op(req, "in") {
        return Ok(Requirement {
            key: check_key(k)?,
            op: Op::In(parse_set(set)?),
        });
    }
    for (sym, which) in [("!=", 0u8), ("==", 1), ("=", 1), (">", 2), ("<", 3)] {
        if let Some((k, v)) = req.split_once(sym) {
            let key = check_key(k.trim())?;
            let v = v.trim();
            let op = match which {
                0 => Op::NotEq(check_value(v)?),
                1 => Op::Eq(check_value(v)?),
                _ => {
                    let n: i64 = v.parse().map_err(|_| {
                        SelectorError(format!(
                            "unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer: {v:?}"
                        ))
                    })?;
                    if which == 2 { Op::Gt(n) } else { Op::Lt(n) }
                }
            };
            return Ok(Requirement { key, op });
        }
    }
    Ok(Requirement {
        key: check_key(req)?,
        op: Op::Exists,
    })
}

impl LabelQuery {
    /// Parses Kubernetes' label-selector syntax.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        split_top(s)?
            .into_iter()
            .map(parse_requirement)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// True if there are no requirements.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Matches `labels` (a JSON object of strings, or absent).
    pub fn matches(&self, labels: Option<&Value>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match &r.op {
            Op::Eq(v) => get(&r.key) == Some(v.as_str()),
            Op::NotEq(v) => get(&r.key) != Some(v.as_str()),
            Op::In(vs) => get(&r.key).is_some_and(|x| vs.iter().any(|v| v == x)),
            Op::NotIn(vs) => get(&r.key).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Op::Exists => get(&r.key).is_some(),
            Op::NotExists => get(&r.key).is_none(),
            Op::Gt(n) => get(&r.key).and_then(|x| x.parse::<i64>().ok()).is_some_and(|x| x > *n),
            Op::Lt(n) => get(&r.key).and_then(|x| x.parse::<i64>().ok()).is_some_and(|x| x < *n),
        })
    }

    /// Matches an object's `metadata.labels`.
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.matches(obj.pointer("/metadata/labels"))
    }
}

/// The selector in the syntax [`LabelQuery::parse`] reads (`a=b,c!=d,e in (f,g),!h,i>1`).
impl std::fmt::Display for LabelQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let k = &r.key;
            match &r.op {
                Op::Eq(v) => write!(f, "{k}={v}")?,
                Op::NotEq(v) => write!(f, "{k}!={v}")?,
                Op::In(vs) => write!(f, "{k} in ({})", vs.join(","))?,
                Op::NotIn(vs) => write!(f, "{k} notin ({})", vs.join(","))?,
                Op::Exists => write!(f, "{k}")?,
                Op::NotExists => write!(f, "!{k}")?,
                Op::Gt(n) => write!(f, "{k}>{n}")?,
                Op::Lt(n) => write!(f, "{k}<{n}")?,
            }
        }
        Ok(())
    }
}

/// A parsed field selector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

/// Field paths served beyond `metadata.name` / `metadata.namespace`, per kind.
fn extra_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pod" => &[
            "spec.nodeName",
            "spec.serviceAccountName",
            "status.phase",
            "spec.restartPolicy",
        ],
        "Secret" => &["type"],
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "source",
            "type",
        ],
        "Namespace" => &["status.phase"],
        _ => &[],
    }
}

/// Splits a field selector into terms at commas not escaped by `\`.
fn split_field_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            ',' => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// `key`, equality and raw value of a term, split at the first operator (`!=`, `==`, `=`).
fn split_field_term(term: &str) -> Option<(&str, bool, &str)> {
    term.char_indices().find_map(|(i, _)| {
        let rest = &term[i..];
        if let Some(v) = rest.strip_prefix("!=") {
            Some((&term[..i], false, v))
        } else if let Some(v) = rest.strip_prefix("==") {
            Some((&term[..i], true, v))
        } else {
            rest.strip_prefix('=').map(|v| (&term[..i], true, v))
        }
    })
}

/// Kubernetes' field-value unescaping: `\\`, `\,`, `\=` stand for the character; any other
/// escape, and an unescaped `,` or `=`, is an error.
fn unescape_field_value(v: &str) -> Result<String, SelectorError> {
    let mut out = String::with_capacity(v.len());
    let mut escaped = false;
    for c in v.chars() {
        match c {
            '\\' | ',' | '=' if escaped => {
                out.push(c);
                escaped = false;
            }
            _ if escaped => {
                return Err(SelectorError(format!("invalid escape sequence: \\{c}")));
            }
            '\\' => escaped = true,
            ',' | '=' => {
                return Err(SelectorError(format!(
                    "invalid field selector value: unescaped {c:?} in {v:?}"
                )));
            }
            c => out.push(c),
        }
    }
    if escaped {
        return Err(SelectorError("invalid escape sequence: trailing \\".into()));
    }
    Ok(out)
}

impl FieldSelector {
    /// Parses `a=b,c!=d` for `kind`; unsupported fields are an error, as in Kubernetes. Values
    /// may escape `\`, `,` and `=` with a backslash.
    pub fn parse(s: &str, kind: &str) -> Result<Self, SelectorError> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        let mut out = Vec::new();
        for part in split_field_terms(s) {
            let part = part.trim();
            let Some((k, eq, v)) = split_field_term(part) else {
                return Err(SelectorError(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            let k = k.trim();
            if k != "metadata.name" && k != "metadata.namespace" && !extra_fields(kind).contains(&k) {
                return Err(SelectorError(format!("field label not supported: {k}")));
            }
            out.push((k.to_owned(), eq, unescape_field_value(v.trim())?));
        }
        Ok(Self(out))
    }

    /// `metadata.name=<name>` for a request on one object: `name` as it is, not parsed (an RBAC
    /// object's name may hold `=`, `,` or `\\`).
    pub fn for_name(name: &str) -> Self {
        Self(vec![("metadata.name".to_owned(), true, name.to_owned())])
    }

    /// The name this selector pins with `metadata.name=`, if any.
    pub fn pinned_name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, eq, _)| *eq && k == "metadata.name")
            .map(|(_, _, v)| v.as_str())
    }

    /// Matches `obj`.
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(k, eq, v)| {
            let pointer = format!("/{}", k.replace('.', "/"));
            let actual = match obj.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (actual == *v) == *eq
        })
    }
}

/// The selector in the syntax [`FieldSelector::parse`] reads, values escaped.
impl std::fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (k, eq, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(k)?;
            f.write_str(if *eq { "=" } else { "!=" })?;
            for c in v.chars() {
                if matches!(c, '\\' | ',' | '=') {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use serde_json::json;

    fn m(sel: &str, labels: Value) -> bool {
        LabelQuery::parse(sel).unwrap().matches(Some(&labels))
    }

    #[test]
    fn label_ops() {
        let l = json!({"app": "web", "tier": "fe", "n": "5"});
        assert!(m("", l.clone()));
        assert!(m("app=web", l.clone()));
        assert!(m("app==web,tier=fe", l.clone()));
        assert!(!m("app!=web", l.clone()));
        assert!(m("missing!=x", l.clone()));
        assert!(m("app in (web, db)", l.clone()));
        assert!(!m("app notin (web,db)", l.clone()));
        assert!(m("missing notin (a)", l.clone()));
        assert!(m("app", l.clone()));
        assert!(m("!missing", l.clone()));
        assert!(!m("! app", l.clone()));
        assert!(m("n>4,n<6", l.clone()));
        assert!(m(" app in (web) , tier ", l.clone()));
        assert!(m("kubernetes.io/metadata.name notin (x)", l));
    }

    #[test]
    fn label_errors() {
        for bad in [
            "app=(",
            "a b=c",
            "app in web",
            "app=we b",
            "-a",
            "app in (a",
            "n>x",
            ",",
        ] {
            assert!(LabelQuery::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fields() {
        let obj = json!({"metadata": {"name": "a", "namespace": "ns"}, "status": {"phase": "Running"}});
        let f = FieldSelector::parse("metadata.name=a", "ConfigMap").unwrap();
        assert!(f.matches(&obj));
        assert_eq!(f.pinned_name(), Some("a"));
        assert!(
            !FieldSelector::parse("metadata.namespace!=ns", "Pod")
                .unwrap()
                .matches(&obj)
        );
        assert!(
            FieldSelector::parse("status.phase==Running", "Pod")
                .unwrap()
                .matches(&obj)
        );
        assert!(FieldSelector::parse("status.phase=Running", "ConfigMap").is_err());
        assert!(FieldSelector::parse("garbage", "Pod").is_err());
    }

    /// Rendering then parsing gives the same selector (the fuzz targets' fixed point).
    #[test]
    fn selectors_render_as_they_parse() {
        for s in [
            "",
            "app=web",
            "app==web,tier!=fe",
            " app in (web, db) , tier ",
            "x notin (),!y,n>-4,n<6,k=",
            "example.com/a in (b),in,notin notin (in)",
        ] {
            let sel = LabelQuery::parse(s).unwrap();
            let text = sel.to_string();
            assert_eq!(LabelQuery::parse(&text).unwrap(), sel, "{s:?} -> {text:?}");
        }
        assert_eq!(
            LabelQuery::parse("a == b, c in (d,e)").unwrap().to_string(),
            "a=b,c in (d,e)"
        );
        for s in [
            "metadata.name=a",
            "metadata.namespace!=ns,metadata.name==b",
            r"metadata.name=a\,b\=c\\d",
            "metadata.name=",
        ] {
            let sel = FieldSelector::parse(s, "Pod").unwrap();
            let text = sel.to_string();
            assert_eq!(FieldSelector::parse(&text, "Pod").unwrap(), sel, "{s:?} -> {text:?}");
        }
    }

    /// Field-selector values follow Kubernetes: `\`-escapes for `\`, `,` and `=`; an unescaped
    /// `=` in a value is refused (it was taken into the value, so `metadata.name= =x` selected
    /// the name `=x` and rendered as `metadata.name==x`, which selects `x`).
    #[test]
    fn field_values_escape_like_kubernetes() {
        let f = FieldSelector::parse(r"metadata.name=a\,b,metadata.namespace=n\=s\\", "Pod").unwrap();
        assert_eq!(f.pinned_name(), Some("a,b"));
        assert!(f.matches(&json!({"metadata": {"name": "a,b", "namespace": "n=s\\"}})));
        assert_eq!(f.to_string(), r"metadata.name=a\,b,metadata.namespace=n\=s\\");
        for bad in [
            "metadata.name= =x",
            "metadata.name===x",
            "metadata.name=a!=b",
            "metadata.name=a=b",
            r"metadata.name=a\x",
            r"metadata.name=a\",
        ] {
            assert!(FieldSelector::parse(bad, "Pod").is_err(), "{bad}");
        }
        // A request on one object pins its name as it is, whatever it holds.
        let f = FieldSelector::for_name(r"a=b,c\d");
        assert_eq!(f.pinned_name(), Some(r"a=b,c\d"));
        assert!(f.matches(&json!({"metadata": {"name": r"a=b,c\d"}})));
        assert_eq!(FieldSelector::parse(&f.to_string(), "Role").unwrap(), f);
        // The first operator wins, as in Kubernetes.
        let f = FieldSelector::parse("metadata.name!=a", "Pod").unwrap();
        assert!(!f.matches(&json!({"metadata": {"name": "a"}})));
    }
}
