//! The protobuf encoding of a swagger 2.0 document in gnostic's `openapi.v2.Document` schema
//! (`application/com.github.proto-openapi.spec.v2.v1.0+protobuf`), the only form in which
//! client-go's `OpenAPISchema()` — kubectl's client-side validation and apply — reads `/openapi/v2`.
//!
//! Invariants: an encoder only (kfsec never parses this format); input is kfsec's own document,
//! built from static data; vendor extensions, defaults, enums and examples travel as gnostic's
//! `Any{yaml}` holding the value's JSON text (JSON is YAML). Field numbers follow gnostic's
//! `OpenAPIv2.proto`.

use serde_json::{Map, Value};

/// A protobuf message being written.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire));
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }
    fn msg(&mut self, field: u32, m: Msg) {
        self.bytes(field, &m.0);
    }
    fn boolean(&mut self, field: u32, b: bool) {
        if b {
            self.key(field, 0);
            self.varint(1);
        }
    }
    fn int(&mut self, field: u32, i: i64) {
        if i != 0 {
            self.key(field, 0);
            self.varint(u64::from_ne_bytes(i.to_ne_bytes()));
        }
    }
    fn double(&mut self, field: u32, d: f64) {
        if d != 0.0 {
            self.key(field, 1);
            self.0.extend_from_slice(&d.to_le_bytes());
        }
    }
    fn str_of(&mut self, field: u32, m: &Map<String, Value>, k: &str) {
        if let Some(Value::String(s)) = m.get(k) {
            self.string(field, s);
        }
    }
    fn strings_of(&mut self, field: u32, m: &Map<String, Value>, k: &str) {
        if let Some(Value::Array(a)) = m.get(k) {
            for s in a.iter().filter_map(Value::as_str) {
                self.bytes(field, s.as_bytes());
            }
        }
    }
    fn bool_of(&mut self, field: u32, m: &Map<String, Value>, k: &str) {
        self.boolean(field, m.get(k).and_then(Value::as_bool).unwrap_or(false));
    }
    fn int_of(&mut self, field: u32, m: &Map<String, Value>, k: &str) {
        if let Some(i) = m.get(k).and_then(Value::as_i64) {
            self.int(field, i);
        }
    }
    fn double_of(&mut self, field: u32, m: &Map<String, Value>, k: &str) {
        if let Some(d) = m.get(k).and_then(Value::as_f64) {
            self.double(field, d);
        }
    }
    /// `Any{yaml}` of a JSON value.
    fn any(&mut self, field: u32, v: &Value) {
        let mut a = Msg::default();
        a.string(2, &format!("{v}\n"));
        self.msg(field, a);
    }
    /// `repeated NamedAny vendor_extension` from the `x-…` members.
    fn extensions(&mut self, field: u32, m: &Map<String, Value>) {
        for (k, v) in m.iter().filter(|(k, _)| k.starts_with("x-")) {
            let mut n = Msg::default();
            n.string(1, k);
            n.any(2, v);
            self.msg(field, n);
        }
    }
}

fn obj(v: &Value) -> &Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    v.as_object().unwrap_or_else(|| EMPTY.get_or_init(Map::new))
}

/// Encodes a swagger 2.0 document (`info`, `paths`, `definitions` — what kfsec publishes).
#[cfg(test)]
pub(crate) fn document(doc: &Value) -> Vec<u8> {
    let defs = doc
        .get("definitions")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(n, s)| (n.as_str(), s.clone())).collect::<Vec<_>>())
        .unwrap_or_default();
    document_parts(doc, defs.into_iter())
}

/// [`document`] from its head (`swagger`, `info`, `paths`) and its definitions one by one (so no
/// JSON value of every definition need exist at once).
pub(crate) fn document_parts<'a>(doc: &Value, defs: impl Iterator<Item = (&'a str, Value)>) -> Vec<u8> {
    let d = obj(doc);
    let mut m = Msg::default();
    m.str_of(1, d, "swagger");
    if let Some(i) = d.get("info") {
        let i = obj(i);
        let mut info = Msg::default();
        info.str_of(1, i, "title");
        info.str_of(2, i, "version");
        info.str_of(3, i, "description");
        m.msg(2, info);
    }
    if let Some(p) = d.get("paths") {
        let mut paths = Msg::default();
        for (name, item) in obj(p) {
            let mut n = Msg::default();
            n.string(1, name);
            n.msg(2, path_item(obj(item)));
            paths.msg(2, n);
        }
        m.msg(8, paths);
    }
    let mut out = Msg::default();
    for (name, s) in defs {
        out.msg(1, named_schema(name, &s));
    }
    m.msg(9, out);
    m.extensions(16, d);
    m.0
}

fn path_item(p: &Map<String, Value>) -> Msg {
    let mut m = Msg::default();
    for (field, method) in [
        (2, "get"),
        (3, "put"),
        (4, "post"),
        (5, "delete"),
        (6, "options"),
        (7, "head"),
        (8, "patch"),
    ] {
        if let Some(op) = p.get(method) {
            m.msg(field, operation(obj(op)));
        }
    }
    if let Some(Value::Array(ps)) = p.get("parameters") {
        for x in ps {
            m.msg(9, parameters_item(obj(x)));
        }
    }
    m.extensions(10, p);
    m
}

fn operation(o: &Map<String, Value>) -> Msg {
    let mut m = Msg::default();
    m.strings_of(1, o, "tags");
    m.str_of(2, o, "summary");
    m.str_of(3, o, "description");
    m.str_of(5, o, "operationId");
    m.strings_of(6, o, "produces");
    m.strings_of(7, o, "consumes");
    if let Some(Value::Array(ps)) = o.get("parameters") {
        for x in ps {
            m.msg(8, parameters_item(obj(x)));
        }
    }
    if let Some(r) = o.get("responses") {
        let mut rs = Msg::default();
        for (code, resp) in obj(r) {
            let resp = obj(resp);
            let mut r = Msg::default();
            r.str_of(1, resp, "description");
            if let Some(s) = resp.get("schema") {
                let mut item = Msg::default();
                item.msg(1, schema(obj(s)));
                r.msg(2, item);
            }
            r.extensions(5, resp);
            let mut value = Msg::default();
            value.msg(1, r);
            let mut named = Msg::default();
            named.string(1, code);
            named.msg(2, value);
            rs.msg(1, named);
        }
        m.msg(9, rs);
    }
    m.strings_of(10, o, "schemes");
    m.bool_of(11, o, "deprecated");
    m.extensions(13, o);
    m
}

fn parameters_item(p: &Map<String, Value>) -> Msg {
    let mut item = Msg::default();
    if let Some(Value::String(r)) = p.get("$ref") {
        let mut j = Msg::default();
        j.string(1, r);
        item.msg(2, j);
        return item;
    }
    let mut param = Msg::default();
    match p.get("in").and_then(Value::as_str).unwrap_or("") {
        "body" => {
            let mut b = Msg::default();
            b.str_of(1, p, "description");
            b.str_of(2, p, "name");
            b.str_of(3, p, "in");
            b.bool_of(4, p, "required");
            if let Some(s) = p.get("schema") {
                b.msg(5, schema(obj(s)));
            }
            b.extensions(6, p);
            param.msg(1, b);
        }
        other => {
            // Header (1), form data (2), query (3), path (4) sub-schemas share their first
            // fields; query and form data have `allow_empty_value` at 5 and shift the rest by one.
            let (which, shift) = match other {
                "header" => (1, 0),
                "formData" => (2, 1),
                "path" => (4, 0),
                _ => (3, 1),
            };
            let mut s = Msg::default();
            s.bool_of(1, p, "required");
            s.str_of(2, p, "in");
            s.str_of(3, p, "description");
            s.str_of(4, p, "name");
            if shift == 1 {
                s.bool_of(5, p, "allowEmptyValue");
            }
            s.str_of(5 + shift, p, "type");
            s.str_of(6 + shift, p, "format");
            s.str_of(8 + shift, p, "collectionFormat");
            s.bool_of(19 + shift, p, "uniqueItems");
            s.extensions(22 + shift, p);
            let mut nb = Msg::default();
            nb.msg(which, s);
            param.msg(2, nb);
        }
    }
    item.msg(1, param);
    item
}

fn named_schema(name: &str, s: &Value) -> Msg {
    let mut n = Msg::default();
    n.string(1, name);
    n.msg(2, schema(obj(s)));
    n
}

fn schema(s: &Map<String, Value>) -> Msg {
    let mut m = Msg::default();
    m.str_of(1, s, "$ref");
    m.str_of(2, s, "format");
    m.str_of(3, s, "title");
    m.str_of(4, s, "description");
    if let Some(d) = s.get("default") {
        m.any(5, d);
    }
    m.double_of(6, s, "multipleOf");
    m.double_of(7, s, "maximum");
    m.bool_of(8, s, "exclusiveMaximum");
    m.double_of(9, s, "minimum");
    m.bool_of(10, s, "exclusiveMinimum");
    m.int_of(11, s, "maxLength");
    m.int_of(12, s, "minLength");
    m.str_of(13, s, "pattern");
    m.int_of(14, s, "maxItems");
    m.int_of(15, s, "minItems");
    m.bool_of(16, s, "uniqueItems");
    m.int_of(17, s, "maxProperties");
    m.int_of(18, s, "minProperties");
    m.strings_of(19, s, "required");
    if let Some(Value::Array(e)) = s.get("enum") {
        for v in e {
            m.any(20, v);
        }
    }
    match s.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            let mut a = Msg::default();
            a.key(2, 0);
            a.varint(u64::from(*b));
            m.msg(21, a);
        }
        Some(v @ Value::Object(_)) => {
            let mut a = Msg::default();
            a.msg(1, schema(obj(v)));
            m.msg(21, a);
        }
        _ => {}
    }
    match s.get("type") {
        Some(Value::String(t)) => {
            let mut ty = Msg::default();
            ty.string(1, t);
            m.msg(22, ty);
        }
        Some(Value::Array(ts)) => {
            let mut ty = Msg::default();
            for t in ts.iter().filter_map(Value::as_str) {
                ty.bytes(1, t.as_bytes());
            }
            m.msg(22, ty);
        }
        _ => {}
    }
    match s.get("items") {
        Some(v @ Value::Object(_)) => {
            let mut it = Msg::default();
            it.msg(1, schema(obj(v)));
            m.msg(23, it);
        }
        Some(Value::Array(a)) => {
            let mut it = Msg::default();
            for v in a {
                it.msg(1, schema(obj(v)));
            }
            m.msg(23, it);
        }
        _ => {}
    }
    if let Some(Value::Array(a)) = s.get("allOf") {
        for v in a {
            m.msg(24, schema(obj(v)));
        }
    }
    if let Some(p) = s.get("properties") {
        let mut props = Msg::default();
        for (name, v) in obj(p) {
            props.msg(1, named_schema(name, v));
        }
        m.msg(25, props);
    }
    m.str_of(26, s, "discriminator");
    m.bool_of(27, s, "readOnly");
    if let Some(e) = s.get("example") {
        m.any(30, e);
    }
    m.extensions(31, s);
    m
}

#[cfg(test)]
mod tests {

    use serde_json::json;

    use super::*;

    /// A minimal protobuf reader for the test: (field, wire, payload) of one message level.
    fn fields(mut b: &[u8]) -> Vec<(u64, u8, Vec<u8>)> {
        fn varint(b: &mut &[u8]) -> u64 {
            let mut v = 0u64;
            let mut s = 0;
            loop {
                let x = b[0];
                *b = &b[1..];
                v |= u64::from(x & 0x7f) << s;
                s += 7;
                if x < 0x80 {
                    return v;
                }
            }
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let k = varint(&mut b);
            let wire = (k & 7) as u8;
            let payload = match wire {
                0 => varint(&mut b).to_le_bytes().to_vec(),
                1 => {
                    let p = b[..8].to_vec();
                    b = &b[8..];
                    p
                }
                2 => {
                    let n = varint(&mut b) as usize;
                    let p = b[..n].to_vec();
                    b = &b[n..];
                    p
                }
                w => panic!("wire {w}"),
            };
            out.push((k >> 3, wire, payload));
        }
        out
    }

    #[test]
    fn encodes_gnostic_fields() {
        let doc = json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": "v"},
            "paths": {"/api/v1/namespaces/{name}": {"patch": {
                "operationId": "patchCoreV1Namespace",
                "parameters": [{"name": "dryRun", "in": "query", "type": "string", "uniqueItems": true}],
                "x-kubernetes-group-version-kind": {"group": "", "kind": "Namespace", "version": "v1"},
            }}},
            "definitions": {"io.k8s.api.core.v1.Namespace": {
                "type": "object", "required": ["a"],
                "properties": {"a": {"type": "string"}, "m": {"type": "object", "additionalProperties": {"type": "string"}}},
            }},
        });
        let top = fields(&document(&doc));
        assert_eq!(top[0], (1, 2, b"2.0".to_vec()));
        let paths = &top.iter().find(|f| f.0 == 8).unwrap().2;
        let named = fields(&fields(paths)[0].2);
        assert_eq!(named[0].2, b"/api/v1/namespaces/{name}");
        let item = fields(&named[1].2);
        assert_eq!(item[0].0, 8, "patch");
        let op = fields(&item[0].2);
        assert!(op.iter().any(|f| f.0 == 5 && f.2 == b"patchCoreV1Namespace"));
        let ext = fields(&op.iter().find(|f| f.0 == 13).unwrap().2);
        assert_eq!(ext[0].2, b"x-kubernetes-group-version-kind");
        let any = fields(&ext[1].2);
        assert_eq!(any[0].0, 2);
        let yaml: Value = serde_json::from_slice(&any[0].2).unwrap();
        assert_eq!(yaml["kind"], "Namespace");
        let param = fields(&op.iter().find(|f| f.0 == 8).unwrap().2);
        let non_body = fields(&fields(&param[0].2)[0].2);
        assert_eq!(non_body[0].0, 3, "query parameter");
        let q = fields(&non_body[0].2);
        assert!(q.iter().any(|f| f.0 == 4 && f.2 == b"dryRun"));
        assert!(q.iter().any(|f| f.0 == 6 && f.2 == b"string"));
        let defs = fields(&top.iter().find(|f| f.0 == 9).unwrap().2);
        let ns = fields(&defs[0].2);
        let s = fields(&ns[1].2);
        assert!(s.iter().any(|f| f.0 == 19 && f.2 == b"a"));
        let ty = fields(&s.iter().find(|f| f.0 == 22).unwrap().2);
        assert_eq!(ty[0].2, b"object");
        let props = fields(&s.iter().find(|f| f.0 == 25).unwrap().2);
        assert_eq!(props.len(), 2);
    }
}
