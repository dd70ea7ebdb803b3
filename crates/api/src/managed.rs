//! Field ownership (`metadata.managedFields`) and server-side apply's merge, as Kubernetes'
//! structured-merge-diff: field sets in the FieldsV1 format, the set of an applied
//! configuration, the diff of two objects, the Update and Apply operations with their
//! conflicts, and the pruning of fields an applier stopped applying.
//!
//! Invariants: pure functions of their inputs (time is a parameter); nothing panics on hostile
//! objects or stored entries (a malformed stored entry is dropped, never trusted); user keys
//! are always encoded behind a `f:`/`k:`/`v:` prefix with JSON for keys and values, so a key
//! like `f:x` or `.` cannot forge set structure; recursion is bounded by the decoders' depth
//! limits (JSON 128, YAML 64); lists not in [`crate::lists`] are atomic.

use std::collections::{BTreeMap, BTreeSet};

use kfsec_types::meta::strip_nulls;
use serde_json::{Map, Value, json};

use crate::lists::{ListType, list_type};

/// The most Update entries kept; older ones are merged into `ancient-changes` (as Kubernetes).
const MAX_UPDATE_MANAGERS: usize = 10;
const ANCIENT: &str = "ancient-changes";
const BEFORE_FIRST_APPLY: &str = "before-first-apply";

/// One step of a field path (structured-merge-diff's `PathElement`, in its order).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Elem {
    /// A field of an object: `f:<name>`.
    Field(String),
    /// An item of an associative list, by its keys: `k:<JSON object>`.
    Key(String),
    /// An item of a set list, by its value: `v:<JSON>`.
    Value(String),
    /// An item of a list by position: `i:<n>` (only read, never produced).
    Index(usize),
}

impl Elem {
    fn encode(&self) -> String {
        match self {
            Self::Field(f) => format!("f:{f}"),
            Self::Key(k) => format!("k:{k}"),
            Self::Value(v) => format!("v:{v}"),
            Self::Index(i) => format!("i:{i}"),
        }
    }

    fn decode(s: &str) -> Option<Self> {
        let (tag, rest) = (s.get(..2)?, s.get(2..)?);
        match tag {
            "f:" => Some(Self::Field(rest.to_owned())),
            "k:" => {
                let v: Value = serde_json::from_str(rest).ok()?;
                v.is_object().then(|| Self::Key(v.to_string()))
            }
            "v:" => serde_json::from_str::<Value>(rest)
                .ok()
                .map(|v| Self::Value(v.to_string())),
            "i:" => rest.parse().ok().map(Self::Index),
            _ => None,
        }
    }
}

/// structured-merge-diff's text of a value in a path (`"x"`, `80`, `true`).
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// A path as Kubernetes prints it: `.data.key`, `.spec.containers[name="c"].image`.
pub fn path_text(path: &[Elem]) -> String {
    let mut out = String::new();
    for e in path {
        match e {
            Elem::Field(f) => {
                out.push('.');
                out.push_str(f);
            }
            Elem::Key(k) => {
                let parts: Vec<String> = serde_json::from_str::<Map<String, Value>>(k)
                    .unwrap_or_default()
                    .iter()
                    .map(|(n, v)| format!("{n}={}", value_text(v)))
                    .collect();
                out.push('[');
                out.push_str(&parts.join(","));
                out.push(']');
            }
            Elem::Value(v) => {
                let v: Value = serde_json::from_str(v).unwrap_or(Value::Null);
                out.push_str(&format!("[={}]", value_text(&v)));
            }
            Elem::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// A set of field paths (a trie; `member` = the path to this node is in the set).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    member: bool,
    children: BTreeMap<Elem, FieldSet>,
}

impl FieldSet {
    /// Whether the set holds no path.
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(FieldSet::is_empty)
    }

    /// Adds `path`.
    pub fn insert(&mut self, path: &[Elem]) {
        let mut node = self;
        for e in path {
            node = node.children.entry(e.clone()).or_default();
        }
        node.member = true;
    }

    /// Whether `path` is in the set.
    pub fn contains(&self, path: &[Elem]) -> bool {
        let mut node = self;
        for e in path {
            match node.children.get(e) {
                Some(n) => node = n,
                None => return false,
            }
        }
        node.member
    }

    /// Whether `path` or a path below it is in the set.
    fn covers(&self, path: &[Elem]) -> bool {
        let mut node = self;
        for e in path {
            match node.children.get(e) {
                Some(n) => node = n,
                None => return false,
            }
        }
        !node.is_empty()
    }

    /// Adds every path of `other`.
    pub fn union(&mut self, other: &FieldSet) {
        self.member |= other.member;
        for (e, c) in &other.children {
            self.children.entry(e.clone()).or_default().union(c);
        }
    }

    /// Removes every path of `other`.
    pub fn subtract(&mut self, other: &FieldSet) {
        if other.member {
            self.member = false;
        }
        for (e, c) in &other.children {
            if let Some(mine) = self.children.get_mut(e) {
                mine.subtract(c);
            }
        }
        self.children.retain(|_, c| !c.is_empty());
    }

    /// The paths in both sets.
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && other.member,
            children: BTreeMap::new(),
        };
        for (e, c) in &self.children {
            if let Some(o) = other.children.get(e) {
                let i = c.intersection(o);
                if !i.is_empty() {
                    out.children.insert(e.clone(), i);
                }
            }
        }
        out
    }

    /// Every path, in order.
    pub fn paths(&self) -> Vec<Vec<Elem>> {
        let mut out = Vec::new();
        let mut prefix = Vec::new();
        self.collect(&mut prefix, &mut out);
        out
    }

    fn collect(&self, prefix: &mut Vec<Elem>, out: &mut Vec<Vec<Elem>>) {
        if self.member && !prefix.is_empty() {
            out.push(prefix.clone());
        }
        for (e, c) in &self.children {
            prefix.push(e.clone());
            c.collect(prefix, out);
            prefix.pop();
        }
    }

    /// Drops the subtree at `path`.
    fn remove_subtree(&mut self, path: &[Elem]) {
        let Some((last, parents)) = path.split_last() else {
            *self = FieldSet::default();
            return;
        };
        let mut node = self;
        for e in parents {
            match node.children.get_mut(e) {
                Some(n) => node = n,
                None => return,
            }
        }
        node.children.remove(last);
    }

    /// The FieldsV1 JSON of the set (`{"f:data":{".":{},"f:key":{}}}`).
    pub fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (e, c) in &self.children {
            if !c.is_empty() {
                m.insert(e.encode(), c.to_fields_v1());
            }
        }
        Value::Object(m)
    }

    /// Reads FieldsV1 JSON; `None` if malformed.
    pub fn from_fields_v1(v: &Value) -> Option<FieldSet> {
        let mut root = Self::from_node(v)?;
        root.member = false;
        Some(root)
    }

    fn from_node(v: &Value) -> Option<FieldSet> {
        let m = v.as_object()?;
        let mut out = FieldSet {
            member: m.is_empty(),
            children: BTreeMap::new(),
        };
        for (k, c) in m {
            if k == "." {
                out.member = true;
                continue;
            }
            out.children.insert(Elem::decode(k)?, Self::from_node(c)?);
        }
        Some(out)
    }
}

/// How a list is identified in a given object: its type, degraded to atomic when an item
/// cannot be identified (no key field, not an object, duplicate identities).
fn list_ids(field: &str, items: &[Value]) -> Option<Vec<Elem>> {
    match list_type(field) {
        ListType::Atomic => None,
        ListType::Set => {
            let ids: Vec<Elem> = items.iter().map(|v| Elem::Value(v.to_string())).collect();
            unique(ids)
        }
        ListType::Map(keys) => {
            let mut ids = Vec::with_capacity(items.len());
            for item in items {
                ids.push(Elem::Key(item_key(item, keys)?));
            }
            unique(ids)
        }
    }
}

/// The canonical JSON of an associative list item's keys (the first key is required).
fn item_key(item: &Value, keys: &[&str]) -> Option<String> {
    let o = item.as_object()?;
    let first = keys.first()?;
    let mut k = Map::new();
    k.insert((*first).to_owned(), o.get(*first).filter(|v| !v.is_null())?.clone());
    for key in keys.iter().skip(1) {
        if let Some(v) = o.get(*key).filter(|v| !v.is_null()) {
            k.insert((*key).to_owned(), v.clone());
        }
    }
    Some(Value::Object(k).to_string())
}

fn unique(ids: Vec<Elem>) -> Option<Vec<Elem>> {
    let distinct: BTreeSet<&Elem> = ids.iter().collect();
    (distinct.len() == ids.len()).then_some(ids)
}

/// Why an applied configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// An associative list item without identity, or two items with the same.
    #[error("{path}: {detail}")]
    List {
        /// The list's path.
        path: String,
        /// What is wrong.
        detail: String,
    },
}

/// The set of fields an applied configuration specifies (structured-merge-diff's
/// `ToFieldSet`): leaves, empty objects, atomic lists, and associative/set list items.
pub fn config_set(cfg: &Value) -> Result<FieldSet, ConfigError> {
    let mut set = FieldSet::default();
    let mut path = Vec::new();
    if let Value::Object(m) = cfg {
        object_set(m, &mut path, &mut set)?;
    }
    Ok(set)
}

fn object_set(m: &Map<String, Value>, path: &mut Vec<Elem>, set: &mut FieldSet) -> Result<(), ConfigError> {
    for (k, c) in m {
        path.push(Elem::Field(k.clone()));
        value_set(k, c, path, set)?;
        path.pop();
    }
    Ok(())
}

fn value_set(field: &str, v: &Value, path: &mut Vec<Elem>, set: &mut FieldSet) -> Result<(), ConfigError> {
    match v {
        Value::Object(m) if !m.is_empty() => object_set(m, path, set),
        Value::Array(items) if !items.is_empty() && list_type(field) != ListType::Atomic => {
            let Some(ids) = list_ids(field, items) else {
                let detail = match list_type(field) {
                    ListType::Map(keys) => format!(
                        "associative list with keys {keys:?} has an element without the key field {:?} or duplicate entries",
                        keys.first().copied().unwrap_or_default()
                    ),
                    _ => "duplicate entries in a set list".to_owned(),
                };
                return Err(ConfigError::List {
                    path: path_text(path),
                    detail,
                });
            };
            for (id, item) in ids.into_iter().zip(items) {
                path.push(id);
                set.insert(path);
                if let Value::Object(m) = item {
                    object_set(m, path, set)?;
                }
                path.pop();
            }
            Ok(())
        }
        _ => {
            set.insert(path);
            Ok(())
        }
    }
}

/// What changed between two objects (structured-merge-diff's `Comparison`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Paths only in the new object (with everything below them).
    pub added: FieldSet,
    /// Paths in both whose (leaf or atomic) value differs.
    pub modified: FieldSet,
    /// Paths only in the old object (with everything below them).
    pub removed: FieldSet,
}

impl Comparison {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.modified.is_empty() && self.removed.is_empty()
    }
}

/// Fields the server owns: never in a manager's set (as Kubernetes' `stripMeta`).
fn is_skipped(path: &[Elem], key: &str) -> bool {
    matches!(path, [Elem::Field(m)] if m == "metadata") && matches!(key, "managedFields" | "resourceVersion")
}

/// Compares `old` and `new` (whole objects).
pub fn compare(old: &Value, new: &Value) -> Comparison {
    let mut out = Comparison::default();
    let mut path = Vec::new();
    compare_at("", Some(old), Some(new), &mut path, &mut out);
    out
}

fn compare_at(field: &str, old: Option<&Value>, new: Option<&Value>, path: &mut Vec<Elem>, out: &mut Comparison) {
    match (old, new) {
        (None, None) => {}
        (None, Some(n)) => subtree(field, n, path, &mut out.added, true),
        (Some(o), None) => subtree(field, o, path, &mut out.removed, true),
        (Some(Value::Object(o)), Some(Value::Object(n))) => {
            let keys: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
            for k in keys {
                if is_skipped(path, k) {
                    continue;
                }
                path.push(Elem::Field(k.clone()));
                compare_at(k, o.get(k), n.get(k), path, out);
                path.pop();
            }
        }
        (Some(Value::Array(o)), Some(Value::Array(n))) => match (list_ids(field, o), list_ids(field, n)) {
            (Some(oi), Some(ni)) => {
                let om: BTreeMap<&Elem, &Value> = oi.iter().zip(o).collect();
                let nm: BTreeMap<&Elem, &Value> = ni.iter().zip(n).collect();
                let ids: BTreeSet<&Elem> = om.keys().chain(nm.keys()).copied().collect();
                for id in ids {
                    path.push(id.clone());
                    match (om.get(id), nm.get(id)) {
                        (Some(a), Some(b)) if matches!((a, b), (Value::Object(_), Value::Object(_))) => {
                            compare_at("", Some(a), Some(b), path, out);
                        }
                        (Some(a), Some(b)) => {
                            if a != b {
                                out.modified.insert(path);
                            }
                        }
                        (a, b) => compare_at("", a.copied(), b.copied(), path, out),
                    }
                    path.pop();
                }
            }
            _ => {
                if o != n {
                    out.modified.insert(path);
                }
            }
        },
        (Some(o), Some(n)) => {
            if o != n {
                out.modified.insert(path);
                if o.is_object() || o.is_array() {
                    subtree(field, o, path, &mut out.removed, false);
                }
                if n.is_object() || n.is_array() {
                    subtree(field, n, path, &mut out.added, false);
                }
            }
        }
    }
}

/// Every path at and below `v` (the node itself if `me`).
fn subtree(field: &str, v: &Value, path: &mut Vec<Elem>, set: &mut FieldSet, me: bool) {
    if me && !path.is_empty() {
        set.insert(path);
    }
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                if is_skipped(path, k) {
                    continue;
                }
                path.push(Elem::Field(k.clone()));
                subtree(k, c, path, set, true);
                path.pop();
            }
        }
        Value::Array(items) => {
            if let Some(ids) = list_ids(field, items) {
                for (id, item) in ids.into_iter().zip(items) {
                    path.push(id);
                    subtree("", item, path, set, true);
                    path.pop();
                }
            }
        }
        _ => {}
    }
}

/// Merges an applied configuration into the live object: objects field by field, associative
/// and set lists item by item, everything else replaced; a `null` removes the field.
pub fn merge(live: &Value, cfg: &Value) -> Value {
    merge_at("", live, cfg)
}

fn merge_at(field: &str, live: &Value, cfg: &Value) -> Value {
    match (live, cfg) {
        (Value::Object(l), Value::Object(c)) => {
            let mut out = l.clone();
            for (k, v) in c {
                if v.is_null() {
                    out.remove(k);
                    continue;
                }
                let merged = match l.get(k) {
                    Some(lv) => merge_at(k, lv, v),
                    None => merge_at(k, &Value::Null, v),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(c)) => match (list_ids(field, l), list_ids(field, c)) {
            (Some(li), Some(ci)) => {
                let mut out = l.clone();
                let at: BTreeMap<&Elem, usize> = li.iter().enumerate().map(|(i, e)| (e, i)).collect();
                for (id, item) in ci.iter().zip(c) {
                    match at.get(id).and_then(|i| out.get_mut(*i)) {
                        Some(slot) => *slot = merge_at("", slot, item),
                        None => out.push(merge_at("", &Value::Null, item)),
                    }
                }
                Value::Array(out)
            }
            _ => strip_nulls(cfg),
        },
        _ => strip_nulls(cfg),
    }
}

/// Removes from `v` every node whose path is in `set`, in one walk (linear in `v`).
fn remove_set(v: &mut Value, field: &str, set: &FieldSet) {
    match v {
        Value::Object(m) => {
            for (e, c) in &set.children {
                let Elem::Field(k) = e else { continue };
                if c.member {
                    m.remove(k);
                } else if let Some(x) = m.get_mut(k) {
                    remove_set(x, k, c);
                }
            }
        }
        Value::Array(items) if !set.children.is_empty() => {
            let Some(ids) = list_ids(field, items) else { return };
            let mut keep = Vec::with_capacity(items.len());
            for (id, mut item) in ids.into_iter().zip(std::mem::take(items)) {
                match set.children.get(&id) {
                    Some(c) if c.member => {}
                    Some(c) => {
                        remove_set(&mut item, "", c);
                        keep.push(item);
                    }
                    None => keep.push(item),
                }
            }
            *items = keep;
        }
        _ => {}
    }
}

/// A manager's operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    /// Server-side apply.
    Apply,
    /// Any other write.
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Apply => "Apply",
            Self::Update => "Update",
        }
    }
}

/// One `metadata.managedFields` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The field manager.
    pub manager: String,
    /// Apply or Update.
    pub operation: Operation,
    /// The API version the fields are expressed in.
    pub api_version: String,
    /// `""` or `status`.
    pub subresource: String,
    /// RFC 3339 time of the last change by this manager.
    pub time: String,
    /// The owned fields.
    pub set: FieldSet,
}

impl Entry {
    fn same_manager(&self, other: &Entry) -> bool {
        self.manager == other.manager
            && self.operation == other.operation
            && self.subresource == other.subresource
            && (self.operation == Operation::Apply || self.api_version == other.api_version)
    }

    /// Kubernetes' `printManager`: `"name"`, `"name" using v1`, `… with subresource "status"`.
    pub fn printed(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == Operation::Update {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }
}

/// One stored or requested entry; `None` if malformed.
fn parse_entry(e: &Value) -> Option<Entry> {
    let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let operation = match e.get("operation").and_then(Value::as_str)? {
        "Apply" => Operation::Apply,
        "Update" => Operation::Update,
        _ => return None,
    };
    if e.get("fieldsType")
        .and_then(Value::as_str)
        .is_some_and(|t| t != "FieldsV1")
    {
        return None;
    }
    Some(Entry {
        manager: s("manager"),
        operation,
        api_version: s("apiVersion"),
        subresource: s("subresource"),
        time: s("time"),
        set: FieldSet::from_fields_v1(e.get("fieldsV1")?)?,
    })
}

/// Reads `metadata.managedFields` of `obj` (absent → none; malformed entries are dropped).
pub fn entries_of(obj: &Value) -> Vec<Entry> {
    match obj.pointer("/metadata/managedFields") {
        Some(Value::Array(list)) => list.iter().filter_map(parse_entry).collect(),
        _ => Vec::new(),
    }
}

/// The entries a write starts from, as kube-apiserver's `decodeLiveOrNew`: `[]` or `[{}]` in
/// the written object reset them; entries there that all decode replace the live ones (how
/// `kubectl apply --server-side` migrates client-side-apply ownership); anything else (absent,
/// malformed) keeps the live entries, so clients unaware of them cannot drop them.
pub fn requested_or(live: Vec<Entry>, requested: Option<&Value>) -> Vec<Entry> {
    let Some(Value::Array(list)) = requested else {
        return live;
    };
    let reset = list.is_empty() || matches!(list.as_slice(), [Value::Object(m)] if m.is_empty());
    if reset {
        return Vec::new();
    }
    list.iter().map(parse_entry).collect::<Option<Vec<_>>>().unwrap_or(live)
}

/// The `metadata.managedFields` JSON of `entries`, in Kubernetes' order (Apply first, then by
/// time, manager, version); `None` when empty.
pub fn encode(mut entries: Vec<Entry>) -> Option<Value> {
    entries.retain(|e| !e.set.is_empty());
    if entries.is_empty() {
        return None;
    }
    entries.sort_by(|a, b| {
        (a.operation, &a.time, &a.manager, &a.api_version, &a.subresource).cmp(&(
            b.operation,
            &b.time,
            &b.manager,
            &b.api_version,
            &b.subresource,
        ))
    });
    let list: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut m = Map::new();
            m.insert("manager".into(), json!(e.manager));
            m.insert("operation".into(), json!(e.operation.as_str()));
            m.insert("apiVersion".into(), json!(e.api_version));
            m.insert("time".into(), json!(e.time));
            m.insert("fieldsType".into(), json!("FieldsV1"));
            m.insert("fieldsV1".into(), e.set.to_fields_v1());
            if !e.subresource.is_empty() {
                m.insert("subresource".into(), json!(e.subresource));
            }
            Value::Object(m)
        })
        .collect();
    Some(Value::Array(list))
}

/// Who writes: manager name, API version, subresource, and the resource's shape.
#[derive(Debug, Clone, Copy)]
pub struct Writer<'a> {
    /// The field manager.
    pub manager: &'a str,
    /// The request's API version (`v1`, `kubeflow.org/v1`).
    pub api_version: &'a str,
    /// `""` or `status`.
    pub subresource: &'a str,
    /// The kind has a status subresource (the main resource then owns no `status` field,
    /// and the status subresource owns only `status`).
    pub has_status: bool,
    /// Now, RFC 3339.
    pub now: &'a str,
}

impl Writer<'_> {
    /// Removes the fields a manager of this writer cannot own.
    fn strip(&self, set: &mut FieldSet) {
        let f = |s: &str| Elem::Field(s.to_owned());
        set.remove_subtree(&[f("apiVersion")]);
        set.remove_subtree(&[f("kind")]);
        if let Some(m) = set.children.get_mut(&f("metadata")) {
            m.member = false;
            for k in [
                "name",
                "namespace",
                "creationTimestamp",
                "selfLink",
                "uid",
                "generation",
                "managedFields",
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                m.children.remove(&f(k));
            }
        }
        if self.subresource == "status" {
            set.member = false;
            set.children.retain(|e, _| *e == f("status"));
        } else if self.has_status {
            set.remove_subtree(&[f("status")]);
        }
        set.children.retain(|_, c| !c.is_empty());
    }

    fn entry(&self, operation: Operation) -> Entry {
        Entry {
            manager: self.manager.to_owned(),
            operation,
            api_version: self.api_version.to_owned(),
            subresource: self.subresource.to_owned(),
            time: self.now.to_owned(),
            set: FieldSet::default(),
        }
    }
}

/// Records a non-apply write of `new` over `old` (`{}` for a create) by `w`: the writer gains
/// what it added or changed, every other manager loses it, and removed fields lose their owners.
pub fn update(entries: &[Entry], old: &Value, new: &Value, w: &Writer<'_>) -> Vec<Entry> {
    let mut cmp = compare(old, new);
    // Changes only to server-owned fields (a body without `generation`, say) are no change.
    for set in [&mut cmp.added, &mut cmp.modified, &mut cmp.removed] {
        w.strip(set);
    }
    if cmp.is_empty() {
        return entries.to_vec();
    }
    let mut changed = cmp.added.clone();
    changed.union(&cmp.modified);
    let me = w.entry(Operation::Update);
    let mut out: Vec<Entry> = Vec::with_capacity(entries.len() + 1);
    let mut mine = me.clone();
    for e in entries {
        if e.same_manager(&me) {
            mine.set = e.set.clone();
            continue;
        }
        let mut e = e.clone();
        e.set.subtract(&changed);
        e.set.subtract(&cmp.removed);
        out.push(e);
    }
    mine.set.subtract(&cmp.removed);
    mine.set.union(&changed);
    w.strip(&mut mine.set);
    mine.time = w.now.to_owned();
    out.push(mine);
    out.retain(|e| !e.set.is_empty());
    cap_update_managers(&mut out, w);
    out
}

/// Merges the oldest Update entries beyond [`MAX_UPDATE_MANAGERS`] into `ancient-changes`.
fn cap_update_managers(entries: &mut Vec<Entry>, w: &Writer<'_>) {
    let updates = entries.iter().filter(|e| e.operation == Operation::Update).count();
    if updates <= MAX_UPDATE_MANAGERS {
        return;
    }
    entries.sort_by(|a, b| (a.operation, &a.time).cmp(&(b.operation, &b.time)));
    let excess = updates - MAX_UPDATE_MANAGERS + 1;
    let mut ancient = Entry {
        manager: ANCIENT.to_owned(),
        operation: Operation::Update,
        api_version: w.api_version.to_owned(),
        subresource: String::new(),
        time: w.now.to_owned(),
        set: FieldSet::default(),
    };
    let mut taken = 0;
    entries.retain(|e| {
        if e.operation == Operation::Update && taken < excess {
            taken += 1;
            ancient.set.union(&e.set);
            false
        } else {
            true
        }
    });
    entries.push(ancient);
}

/// One field owned by another manager with a different value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// [`Entry::printed`] of the owner.
    pub manager: String,
    /// The field, as Kubernetes prints paths.
    pub path: String,
}

/// Kubernetes' message for apply conflicts.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [c] = conflicts {
        return format!("Apply failed with 1 conflict: conflict with {}: {}", c.manager, c.path);
    }
    let mut by: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in conflicts {
        by.entry(&c.manager).or_default().push(&c.path);
    }
    let mut lines = Vec::new();
    for (m, paths) in by {
        lines.push(format!("conflicts with {m}:"));
        lines.extend(paths.iter().map(|p| format!("- {p}")));
    }
    format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
}

/// Why an apply failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The configuration is unusable (400).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Fields owned by others with other values, and no force (409).
    #[error("{}", conflict_message(.0))]
    Conflicts(Vec<Conflict>),
}

/// Server-side apply of `cfg` by `w` onto `live` (`None` = the object does not exist yet):
/// the merged object and the new entries. The applier owns exactly the fields of `cfg`; fields
/// it applied before and now omits are removed unless another manager owns them; a change to a
/// field another manager owns is a conflict unless `force` (then the applier takes it).
pub fn apply(
    entries: &[Entry],
    live: Option<&Value>,
    cfg: &Value,
    w: &Writer<'_>,
    force: bool,
) -> Result<(Value, Vec<Entry>), ApplyError> {
    let empty = Value::Object(Map::new());
    let live = live.unwrap_or(&empty);
    let mut entries = entries.to_vec();
    if entries.is_empty() && live != &empty {
        // An object nobody manages yet (written before field management): its fields belong to
        // `before-first-apply`, so a first apply cannot silently overwrite them.
        let seed = Writer {
            manager: BEFORE_FIRST_APPLY,
            ..*w
        };
        entries = update(&[], &empty, live, &seed);
    }
    let mut applied = config_set(cfg)?;
    w.strip(&mut applied);
    let mut merged = merge(live, cfg);
    let me = w.entry(Operation::Apply);
    let last = entries
        .iter()
        .find(|e| e.same_manager(&me))
        .map(|e| e.set.clone())
        .unwrap_or_default();
    let before = entries.clone();
    entries.retain(|e| !e.same_manager(&me));
    let mut all = applied.clone();
    for e in &entries {
        all.union(&e.set);
    }
    let mut doomed = FieldSet::default();
    for p in last.paths() {
        if !all.covers(&p) {
            doomed.insert(&p);
        }
    }
    remove_set(&mut merged, "", &doomed);
    let cmp = compare(live, &merged);
    let mut changed = cmp.added.clone();
    changed.union(&cmp.modified);
    let mut conflicts = Vec::new();
    for e in &mut entries {
        let clash = e.set.intersection(&changed);
        if !clash.is_empty() {
            let who = e.printed();
            conflicts.extend(clash.paths().iter().map(|p| Conflict {
                manager: who.clone(),
                path: path_text(p),
            }));
            e.set.subtract(&clash);
        }
        e.set.subtract(&cmp.removed);
    }
    if !force && !conflicts.is_empty() {
        return Err(ApplyError::Conflicts(conflicts));
    }
    let mut mine = me;
    mine.set = applied;
    let unchanged_set = before.iter().any(|e| e.same_manager(&mine) && e.set == mine.set);
    if cmp.is_empty() && unchanged_set {
        return Ok((live.clone(), before));
    }
    entries.push(mine);
    entries.retain(|e| !e.set.is_empty());
    Ok((merged, entries))
}

/// Why an apply body could not be decoded (the text is the parser's, about the input only).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

/// Decodes an apply body (YAML, of which JSON is a subset) into an object, under the request
/// bodies' YAML budget ([`crate::body::yaml_options`]: aliases cannot grow it beyond the body
/// limit `max`) and nesting at most 64. `strict` refuses duplicate keys
/// (`fieldValidation=Strict`); otherwise the last one wins. An empty body is `{}`.
pub fn decode_config(body: &[u8], strict: bool, max: usize) -> Result<Value, DecodeError> {
    let text = std::str::from_utf8(body).map_err(|_| DecodeError("the body is not UTF-8".into()))?;
    let mut options = crate::body::yaml_options(body.len(), max);
    if let Some(b) = options.budget.as_mut() {
        b.max_depth = 64;
    }
    options.with_snippet = false;
    options.duplicate_keys = if strict {
        serde_saphyr::DuplicateKeyPolicy::Error
    } else {
        serde_saphyr::DuplicateKeyPolicy::LastWins
    };
    let v: Value = serde_saphyr::from_str_with_options(text, options).map_err(|e| DecodeError(e.to_string()))?;
    match v {
        Value::Null => Ok(Value::Object(Map::new())),
        Value::Object(_) => Ok(v),
        _ => Err(DecodeError("the applied configuration must be an object".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w<'a>(manager: &'a str) -> Writer<'a> {
        Writer {
            manager,
            api_version: "v1",
            subresource: "",
            has_status: false,
            now: "2026-01-01T00:00:00Z",
        }
    }

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "n"}, "data": data})
    }

    #[test]
    fn fields_v1_round_trip_and_escaping() {
        let cfg = json!({"metadata": {"labels": {"f:x": "1", ".": "2"}}, "data": {"k:{}": "v"},
            "spec": {"containers": [{"name": "a", "image": "i"}], "finalizers": ["x"]}});
        let set = config_set(&cfg).unwrap();
        let v1 = set.to_fields_v1();
        assert_eq!(v1["f:metadata"]["f:labels"]["f:f:x"], json!({}));
        assert_eq!(v1["f:metadata"]["f:labels"]["f:."], json!({}));
        assert_eq!(v1["f:data"]["f:k:{}"], json!({}));
        assert_eq!(
            v1["f:spec"]["f:containers"]["k:{\"name\":\"a\"}"],
            json!({".": {}, "f:image": {}, "f:name": {}})
        );
        assert_eq!(FieldSet::from_fields_v1(&v1).unwrap(), set);
        assert!(FieldSet::from_fields_v1(&json!({"x:1": {}})).is_none());
        assert!(FieldSet::from_fields_v1(&json!({"k:[1]": {}})).is_none());
        assert!(FieldSet::from_fields_v1(&json!([1])).is_none());
        let paths: Vec<String> = set.paths().iter().map(|p| path_text(p)).collect();
        assert!(
            paths.contains(&".spec.containers[name=\"a\"].image".to_owned()),
            "{paths:?}"
        );
    }

    #[test]
    fn update_records_added_with_self_markers() {
        let new = cm(json!({"a": "1"}));
        let out = update(&[], &json!({}), &new, &w("kubectl-client-side-apply"));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].set.to_fields_v1(), json!({"f:data": {".": {}, "f:a": {}}}));
        assert_eq!(out[0].printed(), "\"kubectl-client-side-apply\" using v1");
        let v = encode(out).unwrap();
        assert_eq!(v[0]["operation"], "Update");
        assert_eq!(v[0]["fieldsType"], "FieldsV1");
    }

    #[test]
    fn server_owned_changes_are_no_change() {
        let old = cm(json!({"a": "1"}));
        let e = update(&[], &json!({}), &old, &w("m"));
        let mut new = old.clone();
        new["metadata"]["generation"] = json!(7);
        new["metadata"]["uid"] = json!("other");
        let later = Writer {
            now: "2027-01-01T00:00:00Z",
            ..w("m")
        };
        assert_eq!(update(&e, &old, &new, &later), e);
    }

    #[test]
    fn apply_owns_prunes_and_conflicts() {
        let (obj, e) = apply(&[], None, &cm(json!({"a": "1", "b": "2"})), &w("ssa"), false).unwrap();
        assert_eq!(obj["data"], json!({"a": "1", "b": "2"}));
        assert_eq!(e[0].set.to_fields_v1(), json!({"f:data": {"f:a": {}, "f:b": {}}}));
        // Same config again: nothing changes.
        let (again, e2) = apply(&e, Some(&obj), &cm(json!({"a": "1", "b": "2"})), &w("ssa"), false).unwrap();
        assert_eq!((&again, &e2), (&obj, &e));
        // b omitted: removed.
        let (obj2, e3) = apply(&e, Some(&obj), &cm(json!({"a": "1"})), &w("ssa"), false).unwrap();
        assert_eq!(obj2["data"], json!({"a": "1"}));
        // Another writer changes a: conflict for the applier, force takes it over.
        let mut edited = obj2.clone();
        edited["data"]["a"] = json!("9");
        let e4 = update(&e3, &obj2, &edited, &w("kubectl-edit"));
        let err = apply(&e4, Some(&edited), &cm(json!({"a": "1"})), &w("ssa"), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using v1: .data.a"
        );
        let (obj5, e5) = apply(&e4, Some(&edited), &cm(json!({"a": "1"})), &w("ssa"), true).unwrap();
        assert_eq!(obj5["data"]["a"], "1");
        assert!(e5.iter().all(|e| e.manager != "kubectl-edit"), "{e5:?}");
        // Same value as another owner: shared, no conflict.
        let shared = apply(&e4, Some(&edited), &cm(json!({"a": "9"})), &w("other"), false).unwrap();
        // (kubectl-edit took .data.a from ssa, whose set became empty and was dropped.)
        assert_eq!(shared.1.len(), 2);
        assert!(
            shared
                .1
                .iter()
                .all(|e| e.set.contains(&[Elem::Field("data".into()), Elem::Field("a".into())]))
        );
    }

    #[test]
    fn omitted_field_owned_by_other_stays() {
        let (obj, e) = apply(&[], None, &cm(json!({"a": "1"})), &w("one"), false).unwrap();
        let (obj, e) = apply(&e, Some(&obj), &cm(json!({"a": "1"})), &w("two"), false).unwrap();
        let (obj, _) = apply(&e, Some(&obj), &cm(json!({})), &w("one"), false).unwrap();
        assert_eq!(obj["data"], json!({"a": "1"}));
    }

    #[test]
    fn many_conflicts_message_and_unmanaged_objects() {
        let live = cm(json!({"a": "1", "b": "2"}));
        let err = apply(&[], Some(&live), &cm(json!({"a": "x", "b": "y"})), &w("ssa"), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 2 conflicts: conflicts with \"before-first-apply\" using v1:\n- .data.a\n- .data.b"
        );
    }

    #[test]
    fn associative_lists_merge_by_key() {
        let pod = |c: Value| json!({"spec": {"containers": c}});
        let (obj, e) = apply(&[], None, &pod(json!([{"name": "a", "image": "1"}])), &w("one"), false).unwrap();
        let (obj, e) = apply(
            &e,
            Some(&obj),
            &pod(json!([{"name": "b", "image": "2"}])),
            &w("two"),
            false,
        )
        .unwrap();
        assert_eq!(obj["spec"]["containers"].as_array().unwrap().len(), 2);
        let (obj, _) = apply(&e, Some(&obj), &pod(json!([])), &w("one"), false).unwrap();
        assert_eq!(obj["spec"]["containers"], json!([{"name": "b", "image": "2"}]));
        let err = config_set(&pod(json!([{"image": "x"}]))).unwrap_err();
        assert!(err.to_string().starts_with(".spec.containers: "), "{err}");
        assert!(config_set(&pod(json!([{"name": "a"}, {"name": "a"}]))).is_err());
    }

    #[test]
    fn stripped_and_status_fields() {
        let mut wr = w("m");
        wr.has_status = true;
        let cfg = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}},
            "spec": {"x": 1}, "status": {"phase": "Running"}});
        let (_, e) = apply(&[], None, &cfg, &wr, false).unwrap();
        assert_eq!(
            e[0].set.to_fields_v1(),
            json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:spec": {"f:x": {}}})
        );
        wr.subresource = "status";
        let (_, e) = apply(&[], None, &cfg, &wr, false).unwrap();
        assert_eq!(e[0].set.to_fields_v1(), json!({"f:status": {"f:phase": {}}}));
    }

    #[test]
    fn decoding_budget() {
        assert_eq!(decode_config(b"", true, 1024).unwrap(), json!({}));
        assert_eq!(
            decode_config(br#"{"a":1,"b":[true]}"#, true, 1024).unwrap(),
            json!({"a": 1, "b": [true]})
        );
        assert!(decode_config(b"a: 1\na: 2\n", true, 1024).is_err());
        assert_eq!(decode_config(b"a: 1\na: 2\n", false, 1024).unwrap(), json!({"a": 2}));
        assert!(decode_config(b"- 1", false, 1024).is_err());
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert!(decode_config(bomb.as_bytes(), false, 1 << 20).is_err());
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(decode_config(format!("a: {deep}").as_bytes(), false, 1 << 20).is_err());
        // A scalar aliased many times may not outgrow the body limit.
        let big = format!("s: &s {}\nl: [{}]\n", "x".repeat(10_000), vec!["*s"; 20].join(", "));
        assert!(decode_config(big.as_bytes(), false, 64 * 1024).is_err());
        let ok = decode_config(big.as_bytes(), false, 2 << 20);
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // A latency measurement: pruning must not be quadratic.
    fn pruning_a_large_list_is_linear() {
        let env: Vec<Value> = (0..20_000)
            .map(|i| json!({"name": format!("E{i}"), "value": "v"}))
            .collect();
        let pod = |env: Vec<Value>| json!({"spec": {"containers": [{"name": "c", "env": env}]}});
        let (obj, e) = apply(&[], None, &pod(env), &w("m"), false).unwrap();
        let started = std::time::Instant::now();
        let (obj, _) = apply(&e, Some(&obj), &pod(Vec::new()), &w("m"), false).unwrap();
        assert_eq!(obj["spec"]["containers"][0]["env"], json!([]));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn update_managers_are_capped() {
        let mut entries = Vec::new();
        let mut obj = cm(json!({}));
        for i in 0..15 {
            let mut next = obj.clone();
            next["data"][format!("k{i}")] = json!("v");
            let name = format!("m{i}");
            let now = format!("2026-01-01T00:00:{i:02}Z");
            let wr = Writer { now: &now, ..w(&name) };
            entries = update(&entries, &obj, &next, &wr);
            obj = next;
        }
        assert!(entries.len() <= MAX_UPDATE_MANAGERS, "{}", entries.len());
        assert!(entries.iter().any(|e| e.manager == ANCIENT));
    }
}
