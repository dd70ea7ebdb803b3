//! The audit log's JSON writer for [`Event`]: the same bytes `serde_json::to_writer` gives
//! (field order, omission rules, escapes — a test holds it to that on arbitrary events), written
//! without serde's per-field machinery and with a string escaper that copies runs of plain text
//! sixteen bytes at a time. One event is serialized per audited request, on the request's
//! thread: this is the hot part of auditing.
//!
//! Security invariant: every string is escaped exactly as JSON requires (quote, backslash and
//! every control character), so no field a client controls (`requestURI`, `userAgent`, names)
//! can end a string, add a member or break the line. The members a thread's previous Event
//! shared with the next (who called, the annotations) are copied from that Event's spelling
//! only when their values are equal, compared in full: a memo can miss, never put one caller's
//! members in another's line.

use std::borrow::Cow;
use std::collections::BTreeMap;

use kfsec_types::identity::UserInfo;
use kfsec_types::same;

use crate::event::{Event, Level, ObjectRef, ResponseStatus, Stage};

/// Whether JSON needs `b` escaped inside a string.
#[inline]
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Appends `s` as a JSON string (serde_json's escapes: `\"`, `\\`, `\b`, `\f`, `\n`, `\r`,
/// `\t`, `\u00xx` for the other control characters; everything else as is).
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Most strings need no escape at all: one branch-free pass tells, then one copy.
    if !bytes.iter().fold(false, |any, &b| any | needs_escape(b)) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut run = 0;
    let mut chunks = bytes.chunks_exact(16);
    let mut at = 0;
    for chunk in &mut chunks {
        // No early exit, so this compiles to a few vector compares per chunk.
        if chunk.iter().fold(false, |any, &b| any | needs_escape(b)) {
            for (i, &b) in chunk.iter().enumerate() {
                if needs_escape(b) {
                    out.extend_from_slice(&bytes[run..at + i]);
                    escape(out, b);
                    run = at + i + 1;
                }
            }
        }
        at += 16;
    }
    for (i, &b) in chunks.remainder().iter().enumerate() {
        if needs_escape(b) {
            out.extend_from_slice(&bytes[run..at + i]);
            escape(out, b);
            run = at + i + 1;
        }
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

fn escape(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        _ => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 0xf)],
        ]),
    }
}

/// Writes `{`, then members through `f`, then `}`; `f` gets a [`Members`] that places commas.
fn object(out: &mut Vec<u8>, f: impl FnOnce(&mut Members<'_>)) {
    out.push(b'{');
    let mut m = Members { out, first: true };
    f(&mut m);
    out.push(b'}');
}

struct Members<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Members<'_> {
    /// Starts member `key` (a literal that needs no escaping).
    fn key(&mut self, key: &str) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    /// Members spelled before (by [`write_members`]'s memo), after a comma unless first.
    fn spelled(&mut self, members: &[u8]) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.extend_from_slice(members);
    }

    /// Where the next member will start (after its comma).
    fn next_start(&self) -> usize {
        self.out.len() + usize::from(!self.first)
    }

    fn str(&mut self, key: &str, value: &str) {
        write_str(self.key(key), value);
    }

    fn opt_str(&mut self, key: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.str(key, v);
        }
    }

    fn raw(&mut self, key: &str, value: &[u8]) {
        self.key(key).extend_from_slice(value);
    }

    fn strings(&mut self, key: &str, values: &[String]) {
        let out = self.key(key);
        out.push(b'[');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, v);
        }
        out.push(b']');
    }

    fn value(&mut self, key: &str, value: &serde_json::Value) {
        let out = self.key(key);
        // A Value always serializes (its map keys are strings).
        if serde_json::to_writer(&mut *out, value).is_err() {
            out.extend_from_slice(b"null");
        }
    }
}

fn level(l: Level) -> &'static [u8] {
    match l {
        Level::None => b"\"None\"",
        Level::Metadata => b"\"Metadata\"",
        Level::Request => b"\"Request\"",
        Level::RequestResponse => b"\"RequestResponse\"",
    }
}

fn stage(s: Stage) -> &'static [u8] {
    match s {
        Stage::RequestReceived => b"\"RequestReceived\"",
        Stage::ResponseStarted => b"\"ResponseStarted\"",
        Stage::ResponseComplete => b"\"ResponseComplete\"",
        Stage::Panic => b"\"Panic\"",
    }
}

fn user(out: &mut Vec<u8>, u: &UserInfo) {
    object(out, |m| {
        m.str("username", &u.username);
        if !u.uid.is_empty() {
            m.str("uid", &u.uid);
        }
        if !u.groups.is_empty() {
            m.strings("groups", &u.groups);
        }
        if !u.extra.is_empty() {
            let out = m.key("extra");
            object(out, |m| {
                for (k, v) in &u.extra {
                    let _ = m.key_escaped(k);
                    m.strings_after_key(v);
                }
            });
        }
    });
}

impl Members<'_> {
    /// Starts a member whose key needs escaping (a map's key).
    fn key_escaped(&mut self, key: &str) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        write_str(self.out, key);
        self.out.push(b':');
        self.out
    }

    /// A string array as the value of the member just started.
    fn strings_after_key(&mut self, values: &[String]) {
        self.out.push(b'[');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            write_str(self.out, v);
        }
        self.out.push(b']');
    }

    fn string_map(&mut self, key: &str, map: Annotations<'_>) {
        let out = self.key(key);
        object(out, |m| {
            for (k, v) in map.iter() {
                write_str(m.key_escaped(k), v);
            }
        });
    }
}

fn object_ref(out: &mut Vec<u8>, o: &ObjectRef) {
    object(out, |m| {
        m.opt_str("resource", o.resource.as_deref());
        m.opt_str("namespace", o.namespace.as_deref());
        m.opt_str("name", o.name.as_deref());
        m.opt_str("uid", o.uid.as_deref());
        m.opt_str("apiGroup", o.api_group.as_deref());
        m.opt_str("apiVersion", o.api_version.as_deref());
        m.opt_str("resourceVersion", o.resource_version.as_deref());
        m.opt_str("subresource", o.subresource.as_deref());
    });
}

fn response_status(out: &mut Vec<u8>, s: &ResponseStatus) {
    object(out, |m| {
        m.opt_str("status", s.status.as_deref());
        m.opt_str("message", s.message.as_deref());
        m.opt_str("reason", s.reason.as_deref());
        let mut digits = [0u8; 20];
        m.raw("code", decimal(u64::from(s.code), &mut digits));
    });
}

/// The decimal digits of `n`, written at the end of `buf`.
pub(crate) fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// An [`Event`] by reference: what the request path serializes straight from its own state,
/// without building (and then freeing) an owned Event.
#[derive(Debug, Clone, Copy)]
pub struct EventView<'a> {
    /// `kind` (`Event`).
    pub kind: &'a str,
    /// `apiVersion` (`audit.k8s.io/v1`).
    pub api_version: &'a str,
    /// `level`.
    pub level: Level,
    /// `auditID`.
    pub audit_id: &'a str,
    /// `stage`.
    pub stage: Stage,
    /// `requestURI`.
    pub request_uri: &'a str,
    /// `verb`.
    pub verb: &'a str,
    /// `user`.
    pub user: &'a UserInfo,
    /// `impersonatedUser`.
    pub impersonated_user: Option<&'a UserInfo>,
    /// `sourceIPs`.
    pub source_ips: &'a [String],
    /// `userAgent`.
    pub user_agent: Option<&'a str>,
    /// `objectRef`.
    pub object_ref: Option<&'a ObjectRef>,
    /// `responseStatus`.
    pub response_status: Option<&'a ResponseStatus>,
    /// `requestObject`.
    pub request_object: Option<&'a serde_json::Value>,
    /// `responseObject`.
    pub response_object: Option<&'a serde_json::Value>,
    /// `requestReceivedTimestamp`.
    pub request_received_timestamp: &'a str,
    /// `stageTimestamp`.
    pub stage_timestamp: &'a str,
    /// `annotations`.
    pub annotations: Annotations<'a>,
}

/// An annotation's value on the request path: a fixed text, one shared by many requests (a
/// route's decision reason, built once), or a request's own.
#[derive(Debug, Clone)]
pub enum Text {
    /// Fixed in the code.
    Static(&'static str),
    /// Shared (one reference count per request, no copy).
    Shared(std::sync::Arc<str>),
    /// The request's own.
    Owned(String),
}

/// Texts are equal when they read the same, however they are held.
impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Text {}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Self::Static(s) => s,
            Self::Shared(s) => s,
            Self::Owned(s) => s,
        }
    }
}

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Self {
        Self::Static(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Self::Owned(s)
    }
}

impl From<std::sync::Arc<str>> for Text {
    fn from(s: std::sync::Arc<str>) -> Self {
        Self::Shared(s)
    }
}

impl From<Cow<'static, str>> for Text {
    fn from(s: Cow<'static, str>) -> Self {
        match s {
            Cow::Borrowed(s) => Self::Static(s),
            Cow::Owned(s) => Self::Owned(s),
        }
    }
}

/// The request path's annotations: keys are the code's own names, values most often too. A
/// request has a few: they are kept sorted by key in one small vector, whose first two live in
/// the request's context itself (no allocation for a proxied request's decision and reason).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticAnnotations(smallvec::SmallVec<[(Cow<'static, str>, Text); 2]>);

impl StaticAnnotations {
    /// None.
    pub const fn new() -> Self {
        Self(smallvec::SmallVec::new_const())
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(key))
    }

    /// Sets `key` to `value` (the last value wins).
    pub fn insert(&mut self, key: Cow<'static, str>, value: impl Into<Text>) {
        match self.find(&key) {
            Ok(i) => self.0[i].1 = value.into(),
            Err(i) => self.0.insert(i, (key, value.into())),
        }
    }

    /// Sets `key` to `value` unless it is set.
    pub fn insert_default<T: Into<Text>>(&mut self, key: Cow<'static, str>, value: impl FnOnce() -> T) {
        if let Err(i) = self.find(&key) {
            self.0.insert(i, (key, value().into()));
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.find(key).ok().map(|i| &*self.0[i].1)
    }

    /// `(key, value)` in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<V: Into<Text>> FromIterator<(Cow<'static, str>, V)> for StaticAnnotations {
    fn from_iter<I: IntoIterator<Item = (Cow<'static, str>, V)>>(iter: I) -> Self {
        let mut a = Self::new();
        for (k, v) in iter {
            a.insert(k, v);
        }
        a
    }
}

/// An Event's annotations by reference: an owned Event's, or a request's own (which need not
/// allocate a name or a fixed value per request). Either iterates in key order.
#[derive(Debug, Clone, Copy)]
pub enum Annotations<'a> {
    /// An owned [`Event`]'s.
    Owned(&'a BTreeMap<String, String>),
    /// A request's.
    Static(&'a StaticAnnotations),
}

impl<'a> Annotations<'a> {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        match self {
            Self::Owned(m) => m.is_empty(),
            Self::Static(m) => m.is_empty(),
        }
    }

    /// Whether `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        match self {
            Self::Owned(m) => m.contains_key(key),
            Self::Static(m) => m.get(key).is_some(),
        }
    }

    /// `(key, value)` in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let (owned, fixed) = match *self {
            Self::Owned(m) => (Some(m.iter().map(|(k, v)| (k.as_str(), v.as_str()))), None),
            Self::Static(m) => (None, Some(m.iter())),
        };
        owned.into_iter().flatten().chain(fixed.into_iter().flatten())
    }

    /// An owned copy.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
    }
}

impl<'a> EventView<'a> {
    /// A view of `e`.
    pub fn of(e: &'a Event) -> Self {
        Self {
            kind: &e.kind,
            api_version: &e.api_version,
            level: e.level,
            audit_id: &e.audit_id,
            stage: e.stage,
            request_uri: &e.request_uri,
            verb: &e.verb,
            user: &e.user,
            impersonated_user: e.impersonated_user.as_ref(),
            source_ips: &e.source_ips,
            user_agent: e.user_agent.as_deref(),
            object_ref: e.object_ref.as_ref(),
            response_status: e.response_status.as_ref(),
            request_object: e.request_object.as_ref(),
            response_object: e.response_object.as_ref(),
            request_received_timestamp: &e.request_received_timestamp,
            stage_timestamp: &e.stage_timestamp,
            annotations: Annotations::Owned(&e.annotations),
        }
    }

    /// The owned Event (for backends that keep events: the webhook's batches, tests' sinks).
    pub fn to_event(&self) -> Event {
        Event {
            kind: self.kind.to_owned(),
            api_version: self.api_version.to_owned(),
            level: self.level,
            audit_id: self.audit_id.to_owned(),
            stage: self.stage,
            request_uri: self.request_uri.to_owned(),
            verb: self.verb.to_owned(),
            user: self.user.clone(),
            impersonated_user: self.impersonated_user.cloned(),
            source_ips: self.source_ips.to_vec(),
            user_agent: self.user_agent.map(str::to_owned),
            object_ref: self.object_ref.cloned(),
            response_status: self.response_status.cloned(),
            request_object: self.request_object.cloned(),
            response_object: self.response_object.cloned(),
            request_received_timestamp: self.request_received_timestamp.to_owned(),
            stage_timestamp: self.stage_timestamp.to_owned(),
            annotations: self.annotations.to_map(),
        }
    }
}

/// Appends `event` as one JSON object, byte for byte what `serde_json::to_writer` writes.
pub fn write_event(out: &mut Vec<u8>, event: &Event) {
    write_view(out, &EventView::of(event));
}

/// An Event's `kind` and `apiVersion` as every audit Event has them.
const KIND: &str = "Event";
const API_VERSION: &str = "audit.k8s.io/v1";
/// Their members, spelled once.
const KIND_AND_API_VERSION: &[u8] = b"\"kind\":\"Event\",\"apiVersion\":\"audit.k8s.io/v1\"";

/// The longest run of members a memo keeps (a caller with thousands of groups is spelled each
/// time rather than held by every thread).
const MEMO_MAX: usize = 4096;

/// The caller's members (`verb` through `userAgent`) of the last Event this thread wrote, and
/// their spelling.
struct CallerMemo {
    verb: String,
    user: UserInfo,
    impersonated: Option<UserInfo>,
    source_ips: Vec<String>,
    user_agent: Option<String>,
    /// Empty: nothing remembered.
    spelled: Vec<u8>,
}

impl CallerMemo {
    const fn new() -> Self {
        Self {
            verb: String::new(),
            user: empty_user(),
            impersonated: None,
            source_ips: Vec::new(),
            user_agent: None,
            spelled: Vec::new(),
        }
    }
}

impl<'a> Remembers<&EventView<'a>> for CallerMemo {
    fn spelled(&self) -> &[u8] {
        &self.spelled
    }

    /// Whether `e`'s caller reads exactly as the remembered one (every field compared).
    fn matches(&self, e: &EventView<'a>) -> bool {
        !self.spelled.is_empty()
            && same::str(&self.verb, e.verb)
            && self.user.same_as(e.user)
            && match (&self.impersonated, e.impersonated_user) {
                (Some(mine), Some(theirs)) => mine.same_as(theirs),
                (mine, theirs) => mine.is_none() && theirs.is_none(),
            }
            && same::strs(&self.source_ips, e.source_ips)
            && same::opt_str(self.user_agent.as_deref(), e.user_agent)
    }

    /// Remembers `e`'s caller and its `spelled` members, reusing the memo's buffers.
    fn remember(&mut self, e: &EventView<'a>, spelled: &[u8]) {
        self.spelled.clear();
        if spelled.len() > MEMO_MAX {
            return;
        }
        e.verb.clone_into(&mut self.verb);
        copy_user(&mut self.user, e.user);
        match (&mut self.impersonated, e.impersonated_user) {
            (Some(mine), Some(theirs)) => copy_user(mine, theirs),
            (mine, theirs) => *mine = theirs.cloned(),
        }
        e.source_ips.clone_into(&mut self.source_ips);
        match (&mut self.user_agent, e.user_agent) {
            (Some(mine), Some(theirs)) => theirs.clone_into(mine),
            (mine, theirs) => *mine = theirs.map(str::to_owned),
        }
        self.spelled.extend_from_slice(spelled);
    }

    /// Writes `e`'s caller members (`verb` through `userAgent`).
    fn spell(m: &mut Members<'_>, e: &EventView<'a>) {
        m.str("verb", e.verb);
        user(m.key("user"), e.user);
        if let Some(u) = e.impersonated_user {
            user(m.key("impersonatedUser"), u);
        }
        if !e.source_ips.is_empty() {
            m.strings("sourceIPs", e.source_ips);
        }
        m.opt_str("userAgent", e.user_agent);
    }
}

/// The annotations of the last annotated Event this thread wrote, and their spelling.
struct AnnotationsMemo {
    pairs: Vec<(String, String)>,
    /// Empty: nothing remembered.
    spelled: Vec<u8>,
}

impl<'a> Remembers<Annotations<'a>> for AnnotationsMemo {
    fn spelled(&self) -> &[u8] {
        &self.spelled
    }

    fn matches(&self, a: Annotations<'a>) -> bool {
        if self.spelled.is_empty() {
            return false;
        }
        let mut theirs = a.iter();
        self.pairs.iter().all(|(k, v)| {
            theirs
                .next()
                .is_some_and(|(k2, v2)| same::str(k, k2) && same::str(v, v2))
        }) && theirs.next().is_none()
    }

    fn remember(&mut self, a: Annotations<'a>, spelled: &[u8]) {
        self.spelled.clear();
        if spelled.len() > MEMO_MAX {
            return;
        }
        let mut n = 0;
        for (k, v) in a.iter() {
            match self.pairs.get_mut(n) {
                Some((mk, mv)) => {
                    k.clone_into(mk);
                    v.clone_into(mv);
                }
                None => self.pairs.push((k.to_owned(), v.to_owned())),
            }
            n += 1;
        }
        self.pairs.truncate(n);
        self.spelled.extend_from_slice(spelled);
    }

    fn spell(m: &mut Members<'_>, a: Annotations<'a>) {
        m.string_map("annotations", a);
    }
}

/// A memo of the members an Event wrote for a key (its caller, its annotations): the key as
/// remembered and the members' spelling.
trait Remembers<K: Copy> {
    /// The remembered spelling (empty: nothing remembered).
    fn spelled(&self) -> &[u8];
    /// Whether `key` reads exactly as the remembered one.
    fn matches(&self, key: K) -> bool;
    /// Remembers `key` and the `spelled` members written for it.
    fn remember(&mut self, key: K, spelled: &[u8]);
    /// Writes `key`'s members.
    fn spell(m: &mut Members<'_>, key: K);

    /// Writes `key`'s members: copied from the memo when its key reads the same, otherwise
    /// spelled and remembered.
    fn write(&mut self, m: &mut Members<'_>, key: K) {
        if self.matches(key) {
            m.spelled(self.spelled());
            return;
        }
        let start = m.next_start();
        Self::spell(m, key);
        self.remember(key, &m.out[start..]);
    }
}

/// A thread's memos of the last Event it wrote.
struct Memo {
    caller: CallerMemo,
    annotations: AnnotationsMemo,
}

impl Memo {
    const fn new() -> Self {
        Self {
            caller: CallerMemo::new(),
            annotations: AnnotationsMemo {
                pairs: Vec::new(),
                spelled: Vec::new(),
            },
        }
    }
}

thread_local! {
    static MEMO: std::cell::RefCell<Memo> = const { std::cell::RefCell::new(Memo::new()) };
}

const fn empty_user() -> UserInfo {
    UserInfo {
        username: String::new(),
        uid: String::new(),
        groups: Vec::new(),
        extra: BTreeMap::new(),
    }
}

/// `dst = src`, in `dst`'s buffers.
fn copy_user(dst: &mut UserInfo, src: &UserInfo) {
    src.username.clone_into(&mut dst.username);
    src.uid.clone_into(&mut dst.uid);
    src.groups.clone_into(&mut dst.groups);
    dst.extra.clone_from(&src.extra);
}

/// Appends the viewed event as one JSON object ([`write_event`]'s bytes). Without the thread's
/// memos (while its storage is torn down, at thread exit) every member is spelled.
pub fn write_view(out: &mut Vec<u8>, e: &EventView<'_>) {
    let with_memo = MEMO.try_with(|memo| match memo.try_borrow_mut() {
        Ok(mut memo) => {
            write_members(out, e, &mut memo);
            true
        }
        Err(_) => false,
    });
    if with_memo != Ok(true) {
        write_members(out, e, &mut Memo::new());
    }
}

/// [`write_view`] with the thread's memos.
fn write_members(out: &mut Vec<u8>, e: &EventView<'_>, memo: &mut Memo) {
    object(out, |m| {
        if e.kind == KIND && e.api_version == API_VERSION {
            m.spelled(KIND_AND_API_VERSION);
        } else {
            m.str("kind", e.kind);
            m.str("apiVersion", e.api_version);
        }
        m.raw("level", level(e.level));
        m.str("auditID", e.audit_id);
        m.raw("stage", stage(e.stage));
        m.str("requestURI", e.request_uri);
        memo.caller.write(m, e);
        if let Some(o) = e.object_ref {
            object_ref(m.key("objectRef"), o);
        }
        if let Some(s) = e.response_status {
            response_status(m.key("responseStatus"), s);
        }
        if let Some(v) = e.request_object {
            m.value("requestObject", v);
        }
        if let Some(v) = e.response_object {
            m.value("responseObject", v);
        }
        m.str("requestReceivedTimestamp", e.request_received_timestamp);
        m.str("stageTimestamp", e.stage_timestamp);
        if !e.annotations.is_empty() {
            memo.annotations.write(m, e.annotations);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(s: &str, extra: bool) -> Event {
        let mut e = crate::chain::tests::event(7);
        e.request_uri = format!("/api?q={s}");
        e.user_agent = Some(s.to_owned());
        e.user.username = s.to_owned();
        e.user.groups = vec![s.to_owned(), "system:authenticated".into()];
        e.annotations.insert(format!("k{s}"), s.to_owned());
        if extra {
            e.user.uid = s.to_owned();
            e.user.extra.insert(s.to_owned(), vec![s.to_owned(), String::new()]);
            e.impersonated_user = Some(e.user.clone());
            e.source_ips = vec!["10.0.0.1".into(), "127.0.0.1".into()];
            e.object_ref = Some(ObjectRef {
                resource: Some("pods".into()),
                namespace: Some(s.to_owned()),
                name: Some(s.to_owned()),
                uid: Some("u".into()),
                api_group: Some("apps".into()),
                api_version: Some("v1".into()),
                resource_version: Some("9".into()),
                subresource: Some("status".into()),
            });
            e.response_status = Some(ResponseStatus {
                status: Some("Failure".into()),
                message: Some(s.to_owned()),
                reason: Some("Forbidden".into()),
                code: 403,
            });
            e.request_object = Some(serde_json::json!({ "s": s, "n": [1, 2.5, null, true] }));
            e.response_object = Some(serde_json::json!(s));
            e.level = Level::RequestResponse;
            e.stage = Stage::Panic;
        } else {
            e.annotations.clear();
            e.response_status = Some(ResponseStatus {
                code: 0,
                ..ResponseStatus::default()
            });
        }
        e
    }

    fn same(e: &Event) {
        let mut mine = Vec::new();
        write_event(&mut mine, e);
        let theirs = serde_json::to_vec(e).unwrap_or_default();
        assert_eq!(String::from_utf8_lossy(&mine), String::from_utf8_lossy(&theirs));
        assert_eq!(&EventView::of(e).to_event(), e);
    }

    #[test]
    fn every_escape_and_every_optional_field_match_serde_json() {
        let all_controls: String = (0u8..0x20).map(char::from).collect();
        for s in [
            "",
            "plain",
            "a\"b\\c",
            &all_controls,
            "\u{7f}é😀\u{2028}",
            "sixteen-bytes-ok",
            "sixteen-bytes-o\"",
            "\"fifteen-bytes-ok",
            &"x\n".repeat(40),
        ] {
            same(&event(s, true));
            same(&event(s, false));
        }
        for code in [0, 7, 10, 200, 403, 65535] {
            let mut e = event("x", true);
            if let Some(s) = e.response_status.as_mut() {
                s.code = code;
            }
            same(&e);
        }
    }

    #[test]
    fn a_requests_own_annotations_are_written_as_an_owned_events() {
        let e = event("x\"y", true);
        let fixed: StaticAnnotations = [
            (Cow::Borrowed("b/static"), Cow::Owned("v\n".to_owned())),
            (Cow::Owned("a/owned".to_owned()), Cow::Borrowed("w")),
        ]
        .into_iter()
        .collect();
        let mut owned = e.clone();
        owned.annotations = Annotations::Static(&fixed).to_map();
        let mut view = EventView::of(&e);
        view.annotations = Annotations::Static(&fixed);
        let (mut mine, mut theirs) = (Vec::new(), Vec::new());
        write_view(&mut mine, &view);
        write_event(&mut theirs, &owned);
        assert_eq!(String::from_utf8_lossy(&mine), String::from_utf8_lossy(&theirs));
        assert_eq!(view.to_event(), owned);
        assert!(view.annotations.contains_key("a/owned") && !view.annotations.contains_key("a"));
        let keys: Vec<_> = view.annotations.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a/owned", "b/static"], "in key order");
    }

    #[test]
    fn texts_are_equal_when_they_read_the_same() {
        let shared: std::sync::Arc<str> = "a".into();
        assert_eq!(Text::Static("a"), Text::Owned("a".to_owned()));
        assert_eq!(Text::Shared(shared), Text::Static("a"));
        assert_ne!(Text::Static("a"), Text::Static("b"));
    }

    #[test]
    fn a_requests_annotations_keep_key_order_and_the_last_value() {
        let mut a = StaticAnnotations::new();
        for (k, v) in [("m", "1"), ("z", "2"), ("a", "3"), ("m", "4"), ("b/x", "5")] {
            a.insert(Cow::Borrowed(k), Cow::Borrowed(v));
        }
        a.insert_default(Cow::Borrowed("z"), || Cow::Borrowed("ignored"));
        a.insert_default(Cow::Borrowed("c"), || Cow::Borrowed("6"));
        let all: Vec<_> = a.iter().collect();
        assert_eq!(all, [("a", "3"), ("b/x", "5"), ("c", "6"), ("m", "4"), ("z", "2")]);
        assert_eq!((a.get("m"), a.get("q")), (Some("4"), None));
    }

    /// Events that differ from `event("x", true)` in one field the memos key on, each.
    fn one_field_apart() -> Vec<Event> {
        let base = event("x", true);
        let with = |f: &dyn Fn(&mut Event)| {
            let mut e = base.clone();
            f(&mut e);
            e
        };
        vec![
            base.clone(),
            with(&|e| e.verb = "list".into()),
            with(&|e| e.user.username.push('y')),
            with(&|e| e.user.uid.clear()),
            with(&|e| e.user.groups.push("g".into())),
            with(&|e| e.user.groups.reverse()),
            with(&|e| e.user.groups.clear()),
            with(&|e| e.user.extra.clear()),
            with(&|e| {
                e.user.extra.insert("x".into(), vec!["other".into()]);
            }),
            with(&|e| e.impersonated_user = None),
            with(&|e| {
                if let Some(u) = e.impersonated_user.as_mut() {
                    u.username = "z".into();
                }
            }),
            with(&|e| {
                e.source_ips.pop();
            }),
            with(&|e| e.source_ips.clear()),
            with(&|e| e.user_agent = None),
            with(&|e| e.user_agent = Some("x ".into())),
            with(&|e| e.annotations.clear()),
            with(&|e| {
                e.annotations.insert("kx".into(), "y".into());
            }),
            with(&|e| {
                e.annotations.insert("a".into(), "x".into());
            }),
            with(&|e| {
                e.annotations = [("ky".to_owned(), "x".to_owned())].into();
            }),
            with(&|e| e.kind = "Other".into()),
            with(&|e| e.api_version = "audit.k8s.io/v1beta1".into()),
            // Longer than a memo keeps.
            with(&|e| e.user.groups = (0..400).map(|i| format!("group-{i}")).collect()),
            with(&|e| e.annotations = (0..400).map(|i| (format!("k{i}"), "v".repeat(20))).collect()),
        ]
    }

    #[test]
    fn without_the_threads_memo_every_member_is_spelled() {
        let e = event("x", true);
        same(&e);
        MEMO.with(|m| {
            let _held = m.borrow_mut();
            same(&e);
            same(&event("y", false));
        });
    }

    #[test]
    fn a_caller_or_annotations_one_field_apart_are_never_spelled_from_the_memo() {
        let all = one_field_apart();
        for a in &all {
            for b in &all {
                // The first remembers its caller and annotations; the second must not reuse them
                // unless they are equal (then the bytes are the same either way).
                same(a);
                same(b);
                same(b);
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_strings_match_serde_json(s in any::<String>(), extra in any::<bool>()) {
            same(&event(&s, extra));
        }

        /// Runs of events drawn from a few callers and annotation sets (so the memos often hit,
        /// and often miss by one field) are each written as serde_json writes them.
        #[test]
        fn runs_of_similar_events_match_serde_json(
            picks in prop::collection::vec(
                ((0..3usize, 0..3usize), (0..3usize, 0..3usize, 0..3usize), (0..3usize, any::<bool>())),
                1..24,
            )
        ) {
            const TEXTS: [&str; 3] = ["a", "a\"", "b"];
            for ((user, verb), (agent, key, note), (ips, impersonated)) in picks {
                let mut e = event(TEXTS[user], false);
                e.verb = ["get", "list", "get "][verb].to_owned();
                e.user_agent = (agent > 0).then(|| TEXTS[agent].to_owned());
                e.annotations.insert(TEXTS[key].to_owned(), TEXTS[note].to_owned());
                e.source_ips = (0..ips).map(|i| format!("10.0.0.{i}")).collect();
                e.impersonated_user = impersonated.then(|| e.user.clone());
                same(&e);
            }
        }
    }
}
