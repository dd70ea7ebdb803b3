//! Server-side printing: `meta.k8s.io` `Table` responses (what `kubectl get` asks for with
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), with per-kind columns.
//!
//! Invariants: a Table only ever carries what the caller was already authorized to read (it is
//! built from the same objects a plain list would return); unknown kinds get Name and Age.

use serde_json::{Value, json};

use crate::meta::human_duration;
use kfsec_types::time::parse_rfc3339;

/// What the client asked to receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The objects themselves.
    Objects,
    /// A `meta.k8s.io` Table at this version (`v1` or `v1beta1`).
    Table(&'static str),
}

/// How much of each object a Table row carries (`?includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    /// No object.
    None,
    /// `PartialObjectMetadata` (the default).
    Metadata,
    /// The full object.
    Object,
}

impl Include {
    /// From the query parameter.
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("None") => Self::None,
            Some("Object") => Self::Object,
            _ => Self::Metadata,
        }
    }
}

/// Parses `Accept`: Table if any offered media type asks for one.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else { return Format::Objects };
    for range in accept.split(',') {
        let params: Vec<(String, String)> = range
            .split(';')
            .skip(1)
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let get = |k: &str| params.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.as_str());
        if get("as") == Some("Table") && get("g") == Some("meta.k8s.io") {
            match get("v") {
                Some("v1") => return Format::Table("v1"),
                Some("v1beta1") => return Format::Table("v1beta1"),
                _ => {}
            }
        }
    }
    Format::Objects
}

type Cell = fn(&Value, i64) -> Value;

fn s(v: Option<&Value>) -> Value {
    Value::String(v.and_then(Value::as_str).unwrap_or("").to_owned())
}

fn count(v: Option<&Value>) -> Value {
    let n = match v {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    };
    json!(n)
}

fn age(o: &Value, now: i64) -> Value {
    match o
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(parse_rfc3339)
    {
        Some(t) => Value::String(human_duration(now - t)),
        None => Value::String("<unknown>".into()),
    }
}

fn columns(kind: &str) -> Vec<(&'static str, &'static str, Cell)> {
    let name: (&str, &str, Cell) = ("Name", "string", |o, _| s(o.pointer("/metadata/name")));
    let age_col: (&str, &str, Cell) = ("Age", "string", age);
    let mut cols = vec![name];
    match kind {
        "Namespace" => cols.push(("Status", "string", |o, _| s(o.pointer("/status/phase")))),
        "ConfigMap" => cols.push(("Data", "integer", |o, _| {
            let n = count(o.get("data")).as_u64().unwrap_or(0) + count(o.get("binaryData")).as_u64().unwrap_or(0);
            json!(n)
        })),
        "Secret" => {
            cols.push(("Type", "string", |o, _| s(o.get("type"))));
            cols.push(("Data", "integer", |o, _| count(o.get("data"))));
        }
        "ServiceAccount" => cols.push(("Secrets", "integer", |o, _| count(o.get("secrets")))),
        "Pod" => {
            cols.push(("Ready", "string", |o, _| {
                let total = o
                    .pointer("/spec/containers")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                let ready = o
                    .pointer("/status/containerStatuses")
                    .and_then(Value::as_array)
                    .map_or(0, |a| {
                        a.iter().filter(|c| c.get("ready") == Some(&Value::Bool(true))).count()
                    });
                Value::String(format!("{ready}/{total}"))
            }));
            cols.push(("Status", "string", |o, _| {
                let p = o.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending");
                Value::String(p.to_owned())
            }));
            cols.push(("Restarts", "string", |o, _| {
                let n: i64 = o
                    .pointer("/status/containerStatuses")
                    .and_then(Value::as_array)
                    .map_or(0, |a| {
                        a.iter()
                            .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
                            .sum()
                    });
                Value::String(n.to_string())
            }));
        }
        "RoleBinding" | "ClusterRoleBinding" => cols.push(("Role", "string", |o, _| {
            let k = o.pointer("/roleRef/kind").and_then(Value::as_str).unwrap_or("");
            let n = o.pointer("/roleRef/name").and_then(Value::as_str).unwrap_or("");
            Value::String(format!("{k}/{n}"))
        })),
        "Event" => {
            cols.push(("Type", "string", |o, _| s(o.get("type"))));
            cols.push(("Reason", "string", |o, _| s(o.get("reason"))));
            cols.push(("Message", "string", |o, _| s(o.get("message"))));
        }
        _ => {}
    }
    cols.push(age_col);
    cols
}

fn row_object(o: &Value, include: Include, version: &str) -> Option<Value> {
    match include {
        Include::None => None,
        Include::Object => Some(o.clone()),
        Include::Metadata => Some(json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": format!("meta.k8s.io/{version}"),
            "metadata": o.get("metadata").cloned().unwrap_or_else(|| json!({})),
        })),
    }
}

/// A Table of `items` of `kind`; `now` in seconds since the epoch (for the Age column).
pub fn table(kind: &str, items: &[Value], version: &str, include: Include, now: i64, list_meta: Value) -> Value {
    let cols = columns(kind);
    let defs: Vec<Value> = cols
        .iter()
        .map(|(n, t, _)| {
            let format = if *n == "Name" { "name" } else { "" };
            json!({"name": n, "type": t, "format": format, "description": "", "priority": 0})
        })
        .collect();
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let cells: Vec<Value> = cols.iter().map(|(_, _, f)| f(o, now)).collect();
            let mut row = json!({"cells": cells});
            if let (Some(obj), Some(m)) = (row_object(o, include, version), row.as_object_mut()) {
                m.insert("object".into(), obj);
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": list_meta,
        "columnDefinitions": defs,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn accept_negotiation() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(negotiate(Some(kubectl)), Format::Table("v1"));
        assert_eq!(negotiate(Some("application/json")), Format::Objects);
        assert_eq!(negotiate(None), Format::Objects);
        assert_eq!(
            negotiate(Some("application/json;as=Table;v=v1beta1;g=meta.k8s.io")),
            Format::Table("v1beta1")
        );
    }

    #[test]
    fn configmap_table() {
        let cm = json!({"metadata": {"name": "c", "creationTimestamp": "1970-01-01T00:00:00Z", "resourceVersion": "3"}, "data": {"a": "b"}});
        let t = table(
            "ConfigMap",
            &[cm],
            "v1",
            Include::Metadata,
            90,
            json!({"resourceVersion": "3"}),
        );
        assert_eq!(t["rows"][0]["cells"], json!(["c", 1, "90s"]));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["columnDefinitions"][0]["format"], "name");
        assert_eq!(t["metadata"]["resourceVersion"], "3");
    }
}
