//! JSON in and out as protojson does it: input fields accepted in snake_case or lowerCamelCase,
//! enums as names or numbers, int64 as strings or numbers; output in snake_case with zero values
//! omitted, int64 as strings and times in RFC 3339.
//!
//! Invariants: readers never panic on any JSON shape; a wrongly typed field is an
//! InvalidArgument, never silently coerced to something else.

use serde_json::{Map, Value};

use crate::error::{KfpError, KfpResult};

/// `max_concurrency` → `maxConcurrency`.
pub fn camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut up = false;
    for c in snake.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The field `snake` (or its camelCase spelling) of an object; `None` when absent or null.
pub fn field<'a>(v: &'a Value, snake: &str) -> Option<&'a Value> {
    let o = v.as_object()?;
    o.get(snake).or_else(|| o.get(&camel(snake))).filter(|x| !x.is_null())
}

/// A string field ("" when absent); a non-string is InvalidArgument.
pub fn string(v: &Value, snake: &str) -> KfpResult<String> {
    match field(v, snake) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(KfpError::InvalidInput(format!("Field {snake} must be a string"))),
    }
}

/// An int64 field given as a number or a decimal string (0 when absent).
pub fn int64(v: &Value, snake: &str) -> KfpResult<i64> {
    match field(v, snake) {
        None => Ok(0),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| KfpError::InvalidInput(format!("Field {snake} must be an integer"))),
        Some(Value::String(s)) if s.is_empty() => Ok(0),
        Some(Value::String(s)) => s
            .parse::<i64>()
            .map_err(|_| KfpError::InvalidInput(format!("Field {snake} must be an integer"))),
        Some(_) => Err(KfpError::InvalidInput(format!("Field {snake} must be an integer"))),
    }
}

/// A bool field (false when absent).
pub fn boolean(v: &Value, snake: &str) -> KfpResult<bool> {
    match field(v, snake) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(KfpError::InvalidInput(format!("Field {snake} must be a boolean"))),
    }
}

/// An enum given by name or number; `names[i]` is the name of value `i`.
pub fn enum_name(v: &Value, names: &[&str], what: &str) -> KfpResult<String> {
    match v {
        Value::String(s) => {
            if let Ok(n) = s.parse::<usize>() {
                return names
                    .get(n)
                    .map(|s| (*s).to_owned())
                    .ok_or_else(|| KfpError::InvalidInput(format!("Invalid {what}: {s}")));
            }
            if names.contains(&s.as_str()) {
                Ok(s.clone())
            } else {
                Err(KfpError::InvalidInput(format!("Invalid {what}: {s}")))
            }
        }
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .and_then(|n| names.get(n))
            .map(|s| (*s).to_owned())
            .ok_or_else(|| KfpError::InvalidInput(format!("Invalid {what}: {n}"))),
        _ => Err(KfpError::InvalidInput(format!("Invalid {what}"))),
    }
}

/// Parses a request body as a JSON object (an empty body is `{}`).
pub fn body_object(body: &[u8]) -> KfpResult<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| KfpError::InvalidInput(format!("Failed to parse the request body as JSON: {e}")))?;
    if !v.is_object() {
        return Err(KfpError::InvalidInput("The request body must be a JSON object".into()));
    }
    Ok(v)
}

/// An output object that leaves out zero values, as protojson with `EmitUnpopulated: false`.
#[derive(Debug, Default)]
pub struct Out(Map<String, Value>);

impl Out {
    /// An empty object.
    pub fn new() -> Self {
        Self(Map::new())
    }
    /// A string, unless empty.
    pub fn s(mut self, k: &str, v: &str) -> Self {
        if !v.is_empty() {
            self.0.insert(k.to_owned(), Value::String(v.to_owned()));
        }
        self
    }
    /// An int64 (as a string), unless zero.
    pub fn i64s(mut self, k: &str, v: i64) -> Self {
        if v != 0 {
            self.0.insert(k.to_owned(), Value::String(v.to_string()));
        }
        self
    }
    /// An int32 (as a number), unless zero.
    pub fn i32n(mut self, k: &str, v: usize) -> Self {
        if v != 0 {
            self.0.insert(k.to_owned(), Value::from(v));
        }
        self
    }
    /// A bool, unless false.
    pub fn b(mut self, k: &str, v: bool) -> Self {
        if v {
            self.0.insert(k.to_owned(), Value::Bool(true));
        }
        self
    }
    /// A timestamp (always present: KFP sets every timestamp message, even at the epoch).
    pub fn ts(mut self, k: &str, secs: i64) -> Self {
        self.0
            .insert(k.to_owned(), Value::String(kfsec_types::time::format_rfc3339(secs)));
        self
    }
    /// Any value, unless null, an empty object, array or string.
    pub fn v(mut self, k: &str, v: Value) -> Self {
        let empty = match &v {
            Value::Null => true,
            Value::Object(m) => m.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::String(s) => s.is_empty(),
            _ => false,
        };
        if !empty {
            self.0.insert(k.to_owned(), v);
        }
        self
    }
    /// A message that is set even when all its fields are zero (protojson writes `{}`).
    pub fn msg(mut self, k: &str, v: Value) -> Self {
        self.0.insert(k.to_owned(), v);
        self
    }
    /// Finishes.
    pub fn build(self) -> Value {
        Value::Object(self.0)
    }
}

/// A list response: `{<items_key>: [...], total_size, next_page_token}`, zero values left out.
pub fn list_response(items_key: &str, items: Vec<Value>, total: usize, next: &str) -> Value {
    Out::new()
        .v(items_key, Value::Array(items))
        .i32n("total_size", total)
        .s("next_page_token", next)
        .build()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn readers() {
        let v = json!({"maxConcurrency": "5", "no_catchup": true, "name": 3, "e": 2});
        assert_eq!(int64(&v, "max_concurrency").unwrap(), 5);
        assert!(boolean(&v, "no_catchup").unwrap());
        assert!(string(&v, "name").is_err());
        assert_eq!(string(&v, "missing").unwrap(), "");
        assert_eq!(enum_name(&v["e"], &["A", "B", "C"], "x").unwrap(), "C");
        assert!(enum_name(&json!(7), &["A"], "x").is_err());
        assert!(body_object(b"[1]").is_err());
        assert!(body_object(b"{").is_err());
        assert_eq!(body_object(b" ").unwrap(), json!({}));
    }

    #[test]
    fn empty_list_is_empty_object() {
        assert_eq!(list_response("experiments", vec![], 0, ""), json!({}));
        assert_eq!(
            list_response("runs", vec![json!({"id": "a"})], 1, "t"),
            json!({"runs": [{"id": "a"}], "total_size": 1, "next_page_token": "t"})
        );
    }
}
