//! KFP's list options: `page_size` (default 20, max 200, negative rejected), `sort_by` (`"f"`,
//! `"f asc"`, `"f desc"`), `filter` (JSON predicates, `op` or `operation`, names or numbers) and
//! the opaque `next_page_token`.
//!
//! Invariants: a page token is base64url JSON plus an HMAC-SHA256 tag under a key kept in the
//! store, bound to the listing it came from (kind and scope), so a forged, altered or foreign
//! token is InvalidArgument; every malformed input is InvalidArgument, never a panic; a token
//! carries its sort and filter, which win over the request's (as in KFP).

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{KfpError, KfpResult};
use crate::json;

/// Default page size.
pub const DEFAULT_PAGE_SIZE: usize = 20;
/// Largest page size.
pub const MAX_PAGE_SIZE: usize = 200;

/// A sortable / filterable field value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FieldValue {
    /// Integers and times (seconds).
    Int(i64),
    /// Strings and enums.
    Str(String),
}

/// Something a list can sort and filter: it maps an API field name to a value.
pub trait Listable {
    /// Its id (the tie breaker).
    fn list_id(&self) -> &str;
    /// The value of API field `key` (v1 and v2 spellings), `None` for an unknown field.
    fn value(&self, key: &str) -> Option<FieldValue>;
    /// Whether `key` is a field of this type.
    fn knows(key: &str) -> bool
    where
        Self: Sized;
}

/// The list parameters of a request.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    /// `page_size`.
    pub page_size: i64,
    /// `page_token`.
    pub page_token: String,
    /// `sort_by`.
    pub sort_by: String,
    /// `filter`.
    pub filter: String,
}

impl ListRequest {
    /// From query pairs.
    pub fn from_query(q: &[(String, String)]) -> KfpResult<Self> {
        let get = |k: &str| {
            q.iter()
                .find(|(a, _)| a == k || *a == json::camel(k))
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let ps = get("page_size");
        let page_size = if ps.is_empty() {
            0
        } else {
            ps.parse::<i64>()
                .map_err(|_| KfpError::InvalidInput(format!("Invalid page size: {ps:?}")))?
        };
        Ok(Self {
            page_size,
            page_token: get("page_token"),
            sort_by: get("sort_by"),
            filter: get("filter"),
        })
    }
}

/// One page.
#[derive(Debug)]
pub struct Page<T> {
    /// Items in order.
    pub items: Vec<T>,
    /// How many items match the filter in total.
    pub total: usize,
    /// The token of the next page; empty on the last page.
    pub next: String,
}

/// Filter operations (KFP's enum numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    In,
    Substring,
}

const OP_NAMES: &[&str] = &[
    "UNKNOWN",
    "EQUALS",
    "NOT_EQUALS",
    "GREATER_THAN",
    "UNKNOWN_4",
    "GREATER_THAN_EQUALS",
    "LESS_THAN",
    "LESS_THAN_EQUALS",
    "IN",
    "IS_SUBSTRING",
];

#[derive(Debug, Clone)]
enum Operand {
    One(FieldValue),
    Many(Vec<FieldValue>),
}

#[derive(Debug, Clone)]
struct Predicate {
    key: String,
    op: Op,
    operand: Operand,
}

fn bad_filter(msg: impl std::fmt::Display) -> KfpError {
    KfpError::InvalidInput(format!("Invalid filter: {msg}"))
}

/// Normalizes enum spellings so v1 and v2 values compare equal (`STORAGESTATE_ARCHIVED` →
/// `ARCHIVED`).
pub fn normalize_enum(s: &str) -> String {
    s.strip_prefix("STORAGESTATE_")
        .or_else(|| s.strip_prefix("STORAGE_STATE_"))
        .unwrap_or(s)
        .to_owned()
}

fn parse_filter(raw: &str) -> KfpResult<Vec<Predicate>> {
    if raw.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = match serde_json::from_str(raw) {
        Ok(v) => v,
        // The SDKs URL-encode the JSON; tolerate one more level of encoding.
        Err(_) => {
            let decoded: String = url::form_urlencoded::parse(format!("f={raw}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            serde_json::from_str(&decoded).map_err(bad_filter)?
        }
    };
    if !v.is_object() {
        return Err(bad_filter("the filter must be a JSON object"));
    }
    let preds = match json::field(&v, "predicates") {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(bad_filter("predicates must be a list")),
    };
    let mut out = Vec::with_capacity(preds.len());
    for p in preds {
        if !p.is_object() {
            return Err(bad_filter("a predicate must be an object"));
        }
        let key = json::string(p, "key")?;
        if key.is_empty() {
            return Err(bad_filter("a predicate needs a key"));
        }
        let op_v = json::field(p, "op")
            .or_else(|| json::field(p, "operation"))
            .ok_or_else(|| bad_filter(format!("predicate on {key:?} has no operation")))?;
        let op = match json::enum_name(op_v, OP_NAMES, "filter operation")?.as_str() {
            "EQUALS" => Op::Eq,
            "NOT_EQUALS" => Op::Ne,
            "GREATER_THAN" => Op::Gt,
            "GREATER_THAN_EQUALS" => Op::Ge,
            "LESS_THAN" => Op::Lt,
            "LESS_THAN_EQUALS" => Op::Le,
            "IN" => Op::In,
            "IS_SUBSTRING" => Op::Substring,
            other => return Err(bad_filter(format!("unsupported operation {other}"))),
        };
        let operand = operand_of(p, &key)?;
        match (&operand, op) {
            (Operand::Many(_), Op::In) | (Operand::One(_), Op::Eq | Op::Ne | Op::Gt | Op::Ge | Op::Lt | Op::Le) => {}
            (Operand::One(FieldValue::Str(_)), Op::Substring) => {}
            (Operand::One(_), Op::In) => return Err(bad_filter("IN needs a list of values")),
            (Operand::Many(_), _) => return Err(bad_filter("a list of values needs the IN operation")),
            (Operand::One(FieldValue::Int(_)), Op::Substring) => {
                return Err(bad_filter("IS_SUBSTRING needs a string value"));
            }
        }
        out.push(Predicate { key, op, operand });
    }
    Ok(out)
}

/// Parses a list request's `filter` as every list endpoint does and returns how many predicates
/// it holds; a malformed filter is the InvalidArgument the endpoint answers. (The `kfp_filter`
/// fuzz target's entry point; field names are checked later, against the listed type.)
pub fn check_filter(raw: &str) -> KfpResult<usize> {
    parse_filter(raw).map(|p| p.len())
}

fn operand_of(p: &Value, key: &str) -> KfpResult<Operand> {
    if let Some(s) = json::field(p, "string_value") {
        let s = s.as_str().ok_or_else(|| bad_filter("string_value must be a string"))?;
        return Ok(Operand::One(FieldValue::Str(s.to_owned())));
    }
    if json::field(p, "int_value").is_some() {
        return Ok(Operand::One(FieldValue::Int(json::int64(p, "int_value")?)));
    }
    if json::field(p, "long_value").is_some() {
        return Ok(Operand::One(FieldValue::Int(json::int64(p, "long_value")?)));
    }
    if let Some(t) = json::field(p, "timestamp_value") {
        let secs = t
            .as_str()
            .and_then(kfsec_types::time::parse_rfc3339)
            .ok_or_else(|| bad_filter("timestamp_value must be an RFC 3339 time"))?;
        return Ok(Operand::One(FieldValue::Int(secs)));
    }
    for (k, ints) in [("string_values", false), ("int_values", true), ("long_values", true)] {
        if let Some(list) = json::field(p, k) {
            let vals = json::field(list, "values")
                .and_then(Value::as_array)
                .ok_or_else(|| bad_filter(format!("{k} must be {{\"values\": [...]}}")))?;
            let mut out = Vec::with_capacity(vals.len());
            for v in vals {
                out.push(match (ints, v) {
                    (false, Value::String(s)) => FieldValue::Str(s.clone()),
                    (true, Value::Number(n)) => FieldValue::Int(n.as_i64().ok_or_else(|| bad_filter("bad integer"))?),
                    (true, Value::String(s)) => FieldValue::Int(s.parse().map_err(|_| bad_filter("bad integer"))?),
                    _ => return Err(bad_filter(format!("bad value in {k}"))),
                });
            }
            return Ok(Operand::Many(out));
        }
    }
    Err(bad_filter(format!("predicate on {key:?} has no value")))
}

fn compare(field: &FieldValue, op: Op, operand: &Operand) -> bool {
    let norm = |v: &FieldValue| match v {
        FieldValue::Str(s) => FieldValue::Str(normalize_enum(s)),
        other => other.clone(),
    };
    let f = norm(field);
    match operand {
        Operand::Many(vals) => vals.iter().any(|v| norm(v) == f),
        Operand::One(v) => {
            let v = norm(v);
            // A string operand on a numeric field (e.g. created_at) may be a number or a time.
            let v = match (&f, v) {
                (FieldValue::Int(_), FieldValue::Str(s)) => {
                    match s.parse::<i64>().ok().or_else(|| kfsec_types::time::parse_rfc3339(&s)) {
                        Some(n) => FieldValue::Int(n),
                        None => return false,
                    }
                }
                (FieldValue::Str(_), FieldValue::Int(n)) => FieldValue::Str(n.to_string()),
                (_, v) => v,
            };
            match op {
                Op::Eq => f == v,
                Op::Ne => f != v,
                Op::Gt => f > v,
                Op::Ge => f >= v,
                Op::Lt => f < v,
                Op::Le => f <= v,
                Op::Substring => match (&f, &v) {
                    (FieldValue::Str(a), FieldValue::Str(b)) => a.contains(b.as_str()),
                    _ => false,
                },
                Op::In => false,
            }
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Token {
    /// Kind and scope of the listing.
    l: String,
    /// Sort key.
    s: String,
    /// Descending.
    d: bool,
    /// Filter (raw JSON).
    f: String,
    /// Last sort value.
    v: FieldValue,
    /// Last id.
    i: String,
}

fn parse_sort(sort_by: &str) -> KfpResult<(String, bool)> {
    let parts: Vec<&str> = sort_by.split_whitespace().collect();
    match parts.as_slice() {
        [] => Ok(("created_at".to_owned(), false)),
        [f] => Ok(((*f).to_owned(), false)),
        [f, d] if d.eq_ignore_ascii_case("asc") => Ok(((*f).to_owned(), false)),
        [f, d] if d.eq_ignore_ascii_case("desc") => Ok(((*f).to_owned(), true)),
        _ => Err(KfpError::InvalidInput(format!(
            "Received invalid sort by format {sort_by:?}. Supported format: \"field_name\", \"field_name desc\", or \"field_name asc\""
        ))),
    }
}

/// Signs and checks page tokens.
pub struct Paginator {
    key: hmac::Key,
}

impl std::fmt::Debug for Paginator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Paginator")
    }
}

fn bad_token() -> KfpError {
    KfpError::InvalidInput("Invalid page token: it is malformed or belongs to another listing".into())
}

impl Paginator {
    /// With a 32-byte secret.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    fn encode(&self, t: &Token) -> KfpResult<String> {
        let body = serde_json::to_vec(t).map_err(|e| KfpError::Internal(e.to_string()))?;
        let tag = hmac::sign(&self.key, &body);
        let short = tag.as_ref().get(..16).unwrap_or_default();
        Ok(format!("{}.{}", B64.encode(&body), B64.encode(short)))
    }

    fn decode(&self, s: &str, listing: &str) -> KfpResult<Token> {
        let (body, tag) = s.split_once('.').ok_or_else(bad_token)?;
        let body = B64.decode(body).map_err(|_| bad_token())?;
        let tag = B64.decode(tag).map_err(|_| bad_token())?;
        let full = hmac::sign(&self.key, &body);
        let want = full.as_ref().get(..16).unwrap_or_default();
        if tag.len() != want.len() || !constant_eq(&tag, want) {
            return Err(bad_token());
        }
        let t: Token = serde_json::from_slice(&body).map_err(|_| bad_token())?;
        if t.l != listing {
            return Err(bad_token());
        }
        Ok(t)
    }

    /// Filters, sorts and pages `items` of the listing `listing` (kind and scope).
    pub fn page<T: Listable>(&self, mut items: Vec<T>, req: &ListRequest, listing: &str) -> KfpResult<Page<T>> {
        if req.page_size < 0 {
            return Err(KfpError::InvalidInput(format!(
                "The page size should be greater than 0. Got {:?}",
                req.page_size.to_string()
            )));
        }
        let size = match usize::try_from(req.page_size).unwrap_or(MAX_PAGE_SIZE) {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let token = if req.page_token.is_empty() {
            None
        } else {
            Some(self.decode(&req.page_token, listing)?)
        };
        let (sort_key, desc, filter_raw) = match &token {
            Some(t) => (t.s.clone(), t.d, t.f.clone()),
            None => {
                let (k, d) = parse_sort(&req.sort_by)?;
                (k, d, req.filter.clone())
            }
        };
        let preds = parse_filter(&filter_raw)?;
        if !T::knows(&sort_key) {
            return Err(KfpError::InvalidInput(format!("Invalid sorting field: {sort_key:?}")));
        }
        for p in &preds {
            if !T::knows(&p.key) {
                return Err(bad_filter(format!("unknown field {:?}", p.key)));
            }
        }
        items.retain(|it| {
            preds
                .iter()
                .all(|p| it.value(&p.key).is_some_and(|f| compare(&f, p.op, &p.operand)))
        });
        let keyed = |it: &T| {
            (
                it.value(&sort_key).unwrap_or(FieldValue::Int(0)),
                it.list_id().to_owned(),
            )
        };
        let mut with_keys: Vec<((FieldValue, String), T)> = items.into_iter().map(|it| (keyed(&it), it)).collect();
        with_keys.sort_by(|a, b| if desc { b.0.cmp(&a.0) } else { a.0.cmp(&b.0) });
        let total = with_keys.len();
        let start = match &token {
            None => 0,
            Some(t) => {
                let last = (t.v.clone(), t.i.clone());
                with_keys
                    .iter()
                    .position(|(k, _)| if desc { *k < last } else { *k > last })
                    .unwrap_or(total)
            }
        };
        let mut rest: Vec<((FieldValue, String), T)> = with_keys.into_iter().skip(start).collect();
        let more = rest.len() > size;
        rest.truncate(size);
        let next = match (more, rest.last()) {
            (true, Some(((v, i), _))) => self.encode(&Token {
                l: listing.to_owned(),
                s: sort_key,
                d: desc,
                f: filter_raw,
                v: v.clone(),
                i: i.clone(),
            })?,
            _ => String::new(),
        };
        Ok(Page {
            items: rest.into_iter().map(|(_, t)| t).collect(),
            total,
            next,
        })
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone)]
    struct Item {
        id: String,
        name: String,
        at: i64,
        state: String,
    }

    impl Listable for Item {
        fn list_id(&self) -> &str {
            &self.id
        }
        fn value(&self, key: &str) -> Option<FieldValue> {
            match key {
                "id" => Some(FieldValue::Str(self.id.clone())),
                "name" | "display_name" => Some(FieldValue::Str(self.name.clone())),
                "created_at" => Some(FieldValue::Int(self.at)),
                "storage_state" => Some(FieldValue::Str(self.state.clone())),
                _ => None,
            }
        }
        fn knows(key: &str) -> bool {
            ["id", "name", "display_name", "created_at", "storage_state"].contains(&key)
        }
    }

    fn items(n: usize) -> Vec<Item> {
        (0..n)
            .map(|i| Item {
                id: format!("id-{i:03}"),
                name: format!("name-{}", (n - i) % 7),
                at: i64::try_from(i / 2).unwrap(),
                state: if i % 3 == 0 {
                    "ARCHIVED".into()
                } else {
                    "AVAILABLE".into()
                },
            })
            .collect()
    }

    fn req(size: i64, sort: &str, filter: &str) -> ListRequest {
        ListRequest {
            page_size: size,
            page_token: String::new(),
            sort_by: sort.into(),
            filter: filter.into(),
        }
    }

    fn walk(p: &Paginator, all: &[Item], r: ListRequest) -> Vec<String> {
        let mut out = Vec::new();
        let mut r = r;
        loop {
            let page = p.page(all.to_vec(), &r, "x/ns").unwrap();
            out.extend(page.items.iter().map(|i| i.id.clone()));
            if page.next.is_empty() {
                break;
            }
            r.page_token = page.next;
            r.sort_by = "garbage that the token overrides".into();
        }
        out
    }

    #[test]
    fn pages_cover_everything_once_in_order() {
        let p = Paginator::new(b"k");
        let all = items(45);
        let ids = walk(&p, &all, req(7, "", ""));
        let mut want: Vec<String> = all.iter().map(|i| i.id.clone()).collect();
        assert_eq!(ids, want);
        let ids = walk(&p, &all, req(4, "created_at desc", ""));
        want.reverse();
        assert_eq!(ids, want);
        let by_name = walk(&p, &all, req(5, "name", ""));
        assert_eq!(by_name.len(), 45);
        let mut sorted = all.clone();
        sorted.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        assert_eq!(by_name, sorted.iter().map(|i| i.id.clone()).collect::<Vec<_>>());
    }

    #[test]
    fn defaults_and_limits() {
        let p = Paginator::new(b"k");
        let page = p.page(items(300), &req(0, "", ""), "x").unwrap();
        assert_eq!(page.items.len(), 20);
        assert_eq!(page.total, 300);
        let page = p.page(items(300), &req(1000, "", ""), "x").unwrap();
        assert_eq!(page.items.len(), 200);
        assert!(p.page(items(3), &req(-1, "", ""), "x").is_err());
        let page = p.page(items(3), &req(10, "", ""), "x").unwrap();
        assert!(page.next.is_empty());
    }

    #[test]
    fn filters_in_both_spellings() {
        let p = Paginator::new(b"k");
        let f1 = r#"{"predicates":[{"key":"storage_state","op":"NOT_EQUALS","string_value":"STORAGESTATE_ARCHIVED"}]}"#;
        let f2 = r#"{"predicates":[{"key":"storage_state","operation":2,"stringValue":"ARCHIVED"}]}"#;
        let a = p.page(items(30), &req(100, "", f1), "x").unwrap();
        let b = p.page(items(30), &req(100, "", f2), "x").unwrap();
        assert_eq!(a.total, 20);
        assert_eq!(b.total, 20);
        let f3 = r#"{"predicates":[{"key":"name","op":1,"stringValue":"name-3"}]}"#;
        let c = p.page(items(30), &req(100, "", f3), "x").unwrap();
        assert!(c.items.iter().all(|i| i.name == "name-3") && c.total > 0);
        let f4 = r#"{"predicates":[{"key":"created_at","operation":"GREATER_THAN_EQUALS","int_value":10}]}"#;
        assert_eq!(p.page(items(30), &req(100, "", f4), "x").unwrap().total, 10);
        let f5 =
            r#"{"predicates":[{"key":"id","operation":"IN","string_values":{"values":["id-001","id-002","nope"]}}]}"#;
        assert_eq!(p.page(items(30), &req(100, "", f5), "x").unwrap().total, 2);
        let f6 = r#"{"predicates":[{"key":"name","operation":"IS_SUBSTRING","string_value":"me-1"}]}"#;
        assert!(p.page(items(30), &req(100, "", f6), "x").unwrap().total > 0);
        let f7 = "%7B%22predicates%22%3A%5B%5D%7D";
        assert_eq!(p.page(items(30), &req(100, "", f7), "x").unwrap().total, 30);
    }

    #[test]
    fn bad_input_is_invalid_argument() {
        let p = Paginator::new(b"k");
        for f in [
            "{",
            "[]",
            r#"{"predicates":{}}"#,
            r#"{"predicates":[{"key":"name"}]}"#,
            r#"{"predicates":[{"key":"name","op":"EQUALS"}]}"#,
            r#"{"predicates":[{"key":"name","op":"WHATEVER","string_value":"x"}]}"#,
            r#"{"predicates":[{"key":"name","op":42,"string_value":"x"}]}"#,
            r#"{"predicates":[{"key":"nope","op":"EQUALS","string_value":"x"}]}"#,
            r#"{"predicates":[{"key":"name","op":"IN","string_value":"x"}]}"#,
            r#"{"predicates":[{"key":"created_at","op":"EQUALS","timestamp_value":"yesterday"}]}"#,
        ] {
            let e = p.page(items(3), &req(10, "", f), "x").unwrap_err();
            assert_eq!(e.code(), 3, "{f}: {e}");
        }
        for s in ["name up", "a b c", "nope"] {
            assert_eq!(p.page(items(3), &req(10, s, ""), "x").unwrap_err().code(), 3, "{s}");
        }
        let mut r = req(2, "", "");
        let page = p.page(items(5), &r, "x").unwrap();
        for t in [
            "garbage".to_owned(),
            "a.b".to_owned(),
            format!("{}x", page.next),
            page.next.replace('.', ""),
        ] {
            r.page_token = t.clone();
            assert_eq!(p.page(items(5), &r, "x").unwrap_err().code(), 3, "{t}");
        }
        // a token from another listing or another key is refused
        r.page_token = page.next.clone();
        assert_eq!(p.page(items(5), &r, "y").unwrap_err().code(), 3);
        assert_eq!(Paginator::new(b"other").page(items(5), &r, "x").unwrap_err().code(), 3);
        // a tampered body with the old tag is refused
        let (body, tag) = page.next.split_once('.').unwrap();
        let mut raw = B64.decode(body).unwrap();
        let text = String::from_utf8(raw.clone()).unwrap().replace("id-001", "id-000");
        raw = text.into_bytes();
        r.page_token = format!("{}.{tag}", B64.encode(raw));
        assert_eq!(p.page(items(5), &r, "x").unwrap_err().code(), 3);
    }
}
