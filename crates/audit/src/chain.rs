//! The hash chain and signed checkpoints that make the audit log tamper-evident, and their
//! verifier.
//!
//! Every line is a complete `audit.k8s.io/v1` Event carrying annotations
//! `kfsec.io/chain-seq` (a global sequence number, continuing across rotated files and restarts)
//! and, as the last member of its annotations (the Event's last field), `kfsec.io/chain-hash` =
//! hex SHA-256(previous line's hash ‖ `\n` ‖ the line's exact bytes without that member): the
//! hash covers every byte kfsec wrote, so no re-spelling of the JSON (other number forms,
//! escapes, key order, whitespace) verifies, and sealing costs one serialization and one digest
//! per event. The first line of each
//! file also carries `kfsec.io/chain-prev` (the previous line's hash), so a file whose
//! predecessors were rotated away still verifies from its first line. Every N lines or T seconds
//! a checkpoint Event (`identity.kfsec.io` `auditcheckpoints`, verb `checkpoint`) signs the
//! sequence number and hash of the line before it with the dedicated Ed25519 audit key.
//!
//! Security invariants: the verifier trusts nothing in a line before its hash is checked; a
//! checkpoint is accepted only with a valid signature by a key the operator supplied; the first
//! bad line is located (file and line number) and classified (modified, deleted, inserted,
//! reordered, truncated tail). Limits, said plainly: deleting the newest lines after the last
//! checkpoint, or whole files, is only detectable against an off-box copy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use base64::Engine as _;
use kfsec_types::hex::encode as hex;
use kfsec_types::{Rng, UnixTime};
use serde_json::Value;

use crate::event::{Event, IDENTITY_GROUP, Level, ObjectRef, ResponseStatus, Stage};

/// What every chain annotation's key starts with.
const CHAIN_PREFIX: &str = "kfsec.io/chain-";
/// Annotation: the line's global sequence number (decimal).
pub const SEQ: &str = "kfsec.io/chain-seq";
/// Annotation: the line's chain hash (hex SHA-256).
pub const HASH: &str = "kfsec.io/chain-hash";
/// Annotation on a file's first line: the hash of the line before it (in the previous file).
pub const PREV: &str = "kfsec.io/chain-prev";
/// Checkpoint annotation: the sequence number signed (the line before the checkpoint).
pub const CP_SEQ: &str = "kfsec.io/checkpoint-seq";
/// Checkpoint annotation: the chain hash signed.
pub const CP_HEAD: &str = "kfsec.io/checkpoint-head";
/// Checkpoint annotation: the id of the signing key.
pub const CP_KEY: &str = "kfsec.io/checkpoint-key";
/// Checkpoint annotation: base64 Ed25519 signature of [`checkpoint_message`].
pub const CP_SIG: &str = "kfsec.io/checkpoint-signature";
/// The resource of checkpoint events (group [`IDENTITY_GROUP`]).
pub const CHECKPOINT_RESOURCE: &str = "auditcheckpoints";
/// The resource of the audit log's own events (recovery after a crash).
pub const LOG_RESOURCE: &str = "auditlogs";
/// The hash before the first line of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How a sealed line ends: its hash as the last annotation, closing the annotations and the
/// Event (`,"kfsec.io/chain-hash":"<64 hex>"}}`).
const HASH_OPEN: &[u8] = b",\"kfsec.io/chain-hash\":\"";
const HASH_CLOSE: &[u8] = b"\"}}";
const HASH_HEX_LEN: usize = 64;

/// SHA-256(`prev` ‖ `\n` ‖ `parts`…).
fn link_digest(prev: &str, parts: &[&[u8]]) -> aws_lc_rs::digest::Digest {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(prev.as_bytes());
    ctx.update(b"\n");
    for p in parts {
        ctx.update(p);
    }
    ctx.finish()
}

/// hex SHA-256(`prev` ‖ `\n` ‖ `parts`…).
fn digest_link(prev: &str, parts: &[&[u8]]) -> String {
    hex(link_digest(prev, parts).as_ref())
}

/// The chain hash of a sealed `line` that follows a line with hash `prev`: the digest of the
/// line's exact bytes with its trailing `kfsec.io/chain-hash` member removed. `None` when the
/// line does not end with that member (not as kfsec seals lines: modified).
pub fn link_hash(prev: &str, line: &[u8]) -> Option<String> {
    let tail = HASH_OPEN.len() + HASH_HEX_LEN + HASH_CLOSE.len();
    let body_len = line.len().checked_sub(tail)?;
    let (body, t) = line.split_at(body_len);
    let digits = t.get(HASH_OPEN.len()..HASH_OPEN.len() + HASH_HEX_LEN)?;
    let well_formed = t.starts_with(HASH_OPEN)
        && t.ends_with(HASH_CLOSE)
        && digits.iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
    well_formed.then(|| digest_link(prev, &[body, b"}}"]))
}

/// What a checkpoint signs.
pub fn checkpoint_message(seq: u64, head: &str) -> Vec<u8> {
    format!("kfsec.io/audit-checkpoint/v1\n{seq}\n{head}\n").into_bytes()
}

/// Errors of the chain writer and the key files.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// An event that does not serialize (cannot happen with [`Event`]).
    #[error("serializing an audit event: {0}")]
    Json(#[from] serde_json::Error),
    /// A key file.
    #[error("audit key {path}: {message}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// IO on a key file.
    #[error("audit key {path}: {source}")]
    KeyIo {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The position of a chain: the last line's sequence number and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Sequence number of the last line (0 before the first).
    pub seq: u64,
    /// Its hash ([`GENESIS`] before the first).
    pub hash: String,
}

impl Default for Head {
    fn default() -> Self {
        Self {
            seq: 0,
            hash: GENESIS.to_owned(),
        }
    }
}

/// An Event serialized as a line's body, before sealing: the JSON object without the chain's
/// own annotations (any an Event carried are removed). Producing it is the expensive part of a
/// line (done on the thread that recorded the event); sealing it only appends to the bytes and
/// hashes them.
#[derive(Debug, Clone)]
pub struct Encoded {
    bytes: Vec<u8>,
    /// Whether the body ends in a non-empty `annotations` object (`…"}}`), or has none (`…"}`).
    annotated: bool,
}

impl Encoded {
    /// Serializes `event` (without `kfsec.io/chain-*` annotations).
    pub fn new(event: Event) -> Result<Self, ChainError> {
        Self::of_view(&crate::encode::EventView::of(&event))
    }

    /// Serializes the viewed event (without `kfsec.io/chain-*` annotations).
    pub fn of_view(view: &crate::encode::EventView<'_>) -> Result<Self, ChainError> {
        let mut bytes = Vec::with_capacity(1024);
        let annotated = encode_into(&mut bytes, view)?;
        Ok(Self { bytes, annotated })
    }

    /// The body, to seal.
    pub fn body(&self) -> Body<'_> {
        Body {
            bytes: &self.bytes,
            annotated: self.annotated,
        }
    }
}

/// A serialized body by reference (an [`Encoded`]'s, or one staged in a buffer with others by
/// [`encode_into`]).
#[derive(Debug, Clone, Copy)]
pub struct Body<'a> {
    bytes: &'a [u8],
    annotated: bool,
}

impl<'a> Body<'a> {
    /// The body [`encode_into`] appended as `bytes`, returning `annotated`. Only this crate
    /// makes one: sealing relies on how an encoded body ends.
    pub(crate) fn staged(bytes: &'a [u8], annotated: bool) -> Self {
        Self { bytes, annotated }
    }

    /// The most bytes its sealed line can take (the body, the chain's annotations at their
    /// longest: `kfsec.io/chain-prev`, a 20-digit sequence number, the hash).
    pub fn sealed_len_max(&self) -> usize {
        const ANNOTATIONS: usize = ",\"annotations\":{".len();
        const PREV_MEMBER: usize = "\"kfsec.io/chain-prev\":\"\",".len() + HASH_HEX_LEN;
        const SEQ_MEMBER: usize = "\"kfsec.io/chain-seq\":\"\"".len() + 20;
        self.bytes.len() + ANNOTATIONS + PREV_MEMBER + SEQ_MEMBER + HASH_OPEN.len() + HASH_HEX_LEN + HASH_CLOSE.len()
    }
}

/// Appends the viewed event to `out` as a line's body (without `kfsec.io/chain-*`
/// annotations) and returns whether it ends in annotations; on an error `out` is as it was.
pub fn encode_into(out: &mut Vec<u8>, view: &crate::encode::EventView<'_>) -> Result<bool, ChainError> {
    let reserved = [SEQ, HASH, PREV];
    let stripped;
    let mut view = *view;
    // (Every reserved key starts with the chain's prefix: one look at each key.)
    if view
        .annotations
        .iter()
        .any(|(k, _)| kfsec_types::same::starts_with(k, CHAIN_PREFIX))
    {
        stripped = view
            .annotations
            .iter()
            .filter(|(k, _)| !reserved.contains(k))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect::<BTreeMap<_, _>>();
        view.annotations = crate::encode::Annotations::Owned(&stripped);
    }
    let annotated = !view.annotations.is_empty();
    let start = out.len();
    crate::encode::write_view(out, &view);
    // `annotations` is the Event's last field (omitted when empty) and `stageTimestamp`, a
    // string, the one before it: the body ends with the annotations' last value and two
    // braces, or with that timestamp and one.
    let body = &out[start..];
    let end: &[u8] = if annotated { b"\"}}" } else { b"\"}" };
    if !body.ends_with(end) || (!annotated && body.ends_with(b"}}")) {
        out.truncate(start);
        return Err(ChainError::Json(serde::ser::Error::custom(
            "an Event's serialization does not end with its annotations or its stage timestamp",
        )));
    }
    Ok(annotated)
}

impl Head {
    /// Seals `event` as the next line: adds the chain annotations (and `kfsec.io/chain-prev`
    /// when `first_in_file`), advances the head and returns the JSON line (no newline).
    pub fn seal(&mut self, event: Event, first_in_file: bool) -> Result<String, ChainError> {
        let mut line = Vec::new();
        self.seal_into(Encoded::new(event)?.body(), first_in_file, &mut line);
        String::from_utf8(line).map_err(|e| ChainError::Json(serde::ser::Error::custom(e)))
    }

    /// Appends `body` sealed as the next line to `out` (no newline): the chain annotations go
    /// last in its annotations (`kfsec.io/chain-prev` when `first_in_file`, then
    /// `kfsec.io/chain-seq`), the hash of those bytes after them. Advances the head. The line is
    /// at most [`Body::sealed_len_max`] bytes.
    pub fn seal_into(&mut self, body: Body<'_>, first_in_file: bool, out: &mut Vec<u8>) {
        let seq = self.seq + 1;
        let start = out.len();
        let b = body.bytes;
        if body.annotated {
            out.extend_from_slice(&b[..b.len() - 2]);
            out.push(b',');
        } else {
            out.extend_from_slice(&b[..b.len() - 1]);
            out.extend_from_slice(b",\"annotations\":{");
        }
        if first_in_file {
            out.extend_from_slice(b"\"kfsec.io/chain-prev\":\"");
            out.extend_from_slice(self.hash.as_bytes());
            out.extend_from_slice(b"\",");
        }
        out.extend_from_slice(b"\"kfsec.io/chain-seq\":\"");
        let mut digits = [0u8; 20];
        out.extend_from_slice(crate::encode::decimal(seq, &mut digits));
        out.extend_from_slice(b"\"}}");
        let digest = link_digest(&self.hash, &[&out[start..]]);
        self.hash.clear();
        kfsec_types::hex::push(&mut self.hash, digest.as_ref());
        out.truncate(out.len() - 2);
        out.extend_from_slice(HASH_OPEN);
        out.extend_from_slice(self.hash.as_bytes());
        out.extend_from_slice(HASH_CLOSE);
        self.seq = seq;
    }

    /// The head after `line` (a sealed line read back), if it carries the chain annotations.
    pub fn of_line(line: &[u8]) -> Option<Self> {
        let v: Value = serde_json::from_slice(line).ok()?;
        let a = v.get("annotations")?;
        Some(Self {
            seq: a.get(SEQ)?.as_str()?.parse().ok()?,
            hash: a.get(HASH)?.as_str()?.to_owned(),
        })
    }
}

pub use crate::request::new_audit_id;

/// An event of the audit log about itself (`identity.kfsec.io`, `resource`, `verb`), by
/// kfsec (`system:kfsec`).
pub fn log_event(
    resource: &str,
    verb: &str,
    now: UnixTime,
    rng: &dyn Rng,
    annotations: BTreeMap<String, String>,
) -> Event {
    let t = now.to_rfc3339_micros();
    Event {
        kind: "Event".into(),
        api_version: "audit.k8s.io/v1".into(),
        level: Level::Metadata,
        audit_id: new_audit_id(rng),
        stage: Stage::ResponseComplete,
        request_uri: String::new(),
        verb: verb.into(),
        user: kfsec_types::identity::UserInfo {
            username: "system:kfsec".into(),
            ..Default::default()
        },
        impersonated_user: None,
        source_ips: Vec::new(),
        user_agent: None,
        object_ref: Some(ObjectRef {
            resource: Some(resource.into()),
            api_group: Some(IDENTITY_GROUP.into()),
            api_version: Some("v1".into()),
            ..Default::default()
        }),
        response_status: Some(ResponseStatus {
            code: 200,
            ..Default::default()
        }),
        request_object: None,
        response_object: None,
        request_received_timestamp: t.clone(),
        stage_timestamp: t,
        annotations,
    }
}

/// The dedicated audit signing key (Ed25519). Never in `Debug` output.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    id: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The id of an Ed25519 public key: the first 16 hex digits of its SHA-256.
pub fn key_id(public: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public).as_ref())[..16].to_owned()
}

const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// A public key as PEM (`PUBLIC KEY`, SubjectPublicKeyInfo), as `openssl pkey -pubin` reads it.
pub fn public_pem(public: &[u8]) -> String {
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(public);
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    )
}

/// Reads an Ed25519 public key from PEM (`PUBLIC KEY`).
pub fn parse_public_pem(text: &str) -> Option<Vec<u8>> {
    let body: String = text
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "-----BEGIN PUBLIC KEY-----")
        .skip(1)
        .take_while(|l| *l != "-----END PUBLIC KEY-----")
        .collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body).ok()?;
    let key = der.strip_prefix(&SPKI_PREFIX[..])?;
    (key.len() == 32).then(|| key.to_vec())
}

impl SigningKey {
    /// A new key from 32 bytes of `rng`.
    pub fn generate(rng: &dyn Rng) -> Result<Self, ChainError> {
        let mut seed = [0u8; 32];
        rng.fill(&mut seed);
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|e| ChainError::Key {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        seed.fill(0);
        Ok(Self::from_pair(pair))
    }

    fn from_pair(pair: Ed25519KeyPair) -> Self {
        let id = key_id(pair.public_key().as_ref());
        Self { pair, id }
    }

    /// The key's id ([`key_id`] of its public key).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The raw public key.
    pub fn public(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }

    /// Loads `dir/signing-key.pk8`, or creates it (mode 0600) with `dir/audit.pub` next to it.
    /// The public key file is rewritten if missing.
    pub fn load_or_create(dir: &Path, rng: &dyn Rng) -> Result<Self, ChainError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ChainError::KeyIo { path, source }
        };
        let key_path = dir.join("signing-key.pk8");
        let pub_path = dir.join("audit.pub");
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let key = match std::fs::read(&key_path) {
            Ok(der) => {
                let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|e| ChainError::Key {
                    path: key_path.clone(),
                    message: format!("not an Ed25519 PKCS#8 key ({e})"),
                })?;
                Self::from_pair(pair)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate(rng)?;
                let der = key.pair.to_pkcs8().map_err(|e| ChainError::Key {
                    path: key_path.clone(),
                    message: e.to_string(),
                })?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&key_path)
                    .map_err(io(&key_path))?;
                f.write_all(der.as_ref()).map_err(io(&key_path))?;
                f.sync_all().map_err(io(&key_path))?;
                key
            }
            Err(e) => return Err(io(&key_path)(e)),
        };
        let pem = public_pem(&key.public());
        if std::fs::read_to_string(&pub_path).ok().as_deref() != Some(pem.as_str()) {
            let tmp = dir.join("audit.pub.tmp");
            std::fs::write(&tmp, &pem).map_err(io(&tmp))?;
            std::fs::rename(&tmp, &pub_path).map_err(io(&pub_path))?;
        }
        Ok(key)
    }

    /// A checkpoint event signing `head` (the last line written).
    pub fn checkpoint(&self, head: &Head, now: UnixTime, rng: &dyn Rng) -> Event {
        let sig = self.sign(&checkpoint_message(head.seq, &head.hash));
        let annotations = BTreeMap::from([
            (CP_SEQ.to_owned(), head.seq.to_string()),
            (CP_HEAD.to_owned(), head.hash.clone()),
            (CP_KEY.to_owned(), self.id.clone()),
            (CP_SIG.to_owned(), base64::engine::general_purpose::STANDARD.encode(sig)),
        ]);
        log_event(CHECKPOINT_RESOURCE, "checkpoint", now, rng, annotations)
    }
}

/// Where verification stopped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The file.
    pub file: String,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong, for a person.
    pub reason: String,
    /// The class: `modified`, `deleted`, `inserted`, `reordered`, `truncated`, `signature`,
    /// `unknown-key`, `malformed`.
    pub kind: &'static str,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.reason)
    }
}

/// What an intact chain held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Lines that are not checkpoints.
    pub events: u64,
    /// Checkpoints (all with valid signatures).
    pub checkpoints: u64,
    /// Ids of the keys that signed them.
    pub keys: Vec<String>,
    /// Lines after the last checkpoint (chained, not yet signed).
    pub unsigned_tail: u64,
    /// First and last sequence numbers seen.
    pub seqs: Option<(u64, u64)>,
    /// Files read.
    pub files: usize,
}

/// Verifies a chain, line by line, across files in order. Feed it with [`Verifier::line`]
/// (complete lines, without newline), then [`Verifier::finish`].
pub struct Verifier<'k> {
    keys: &'k [Vec<u8>],
    key_ids: Vec<String>,
    head: Option<Head>,
    /// The head before the last line (to tell which of two equal-seq lines was inserted).
    before: Option<Head>,
    report: Report,
}

/// A JSON value parsed with duplicate object keys refused: readers disagree on which one counts
/// (serde_json and jq keep the last, others the first), so such a line could hash as one event
/// and read as another. kfsec never writes one.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON without duplicate keys")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = a.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(k) = a.next_key::<String>()? {
            let Strict(v) = a.next_value()?;
            if out.contains_key(&k) {
                return Err(serde::de::Error::custom("duplicate key"));
            }
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

fn fail(file: &str, line: usize, kind: &'static str, reason: impl Into<String>) -> Failure {
    Failure {
        file: file.to_owned(),
        line,
        reason: reason.into(),
        kind,
    }
}

fn annotation<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get("annotations")?.get(key)?.as_str()
}

impl<'k> Verifier<'k> {
    /// A verifier trusting checkpoints signed by one of `keys` (raw Ed25519 public keys).
    pub fn new(keys: &'k [Vec<u8>]) -> Self {
        Self {
            keys,
            key_ids: keys.iter().map(|k| key_id(k)).collect(),
            head: None,
            before: None,
            report: Report::default(),
        }
    }

    /// The sequence number a line claims, if it has one (cheap check for classification).
    pub fn seq_of(line: &[u8]) -> Option<u64> {
        let v: Value = serde_json::from_slice(line).ok()?;
        annotation(&v, SEQ)?.parse().ok()
    }

    /// Checks one complete line (line number `n` of `file`). On a sequence gap `later_has`
    /// answers whether a sequence number appears later in the input (reordered vs deleted).
    pub fn line(
        &mut self,
        file: &str,
        n: usize,
        line: &[u8],
        later_has: &mut dyn FnMut(u64) -> bool,
    ) -> Result<(), Failure> {
        let bad = |kind, reason: String| Err(fail(file, n, kind, reason));
        if line.iter().all(u8::is_ascii_whitespace) {
            return bad("inserted", "empty line (inserted)".into());
        }
        let Ok(Strict(v)) = serde_json::from_slice::<Strict>(line) else {
            return bad(
                "modified",
                "not a JSON object: the line was modified or inserted".into(),
            );
        };
        let (Some(seq), Some(hash)) = (annotation(&v, SEQ), annotation(&v, HASH)) else {
            return bad(
                "inserted",
                "no chain annotations: a line inserted (not written by kfsec)".into(),
            );
        };
        let Ok(seq) = seq.parse::<u64>() else {
            return bad("modified", format!("chain sequence {seq:?} is not a number: modified"));
        };
        let prev_claim = annotation(&v, PREV);
        if let Some(head) = &self.head {
            let expected = head.seq + 1;
            if seq < expected {
                if seq == head.seq && hash == head.hash {
                    return bad(
                        "inserted",
                        format!("a copy of the line before (sequence {seq} repeated): inserted"),
                    );
                }
                // A line whose hash chains to the head before the previous line: the previous
                // line is the one that does not belong.
                let prev_line_inserted = self
                    .before
                    .as_ref()
                    .is_some_and(|b| b.seq + 1 == seq && link_hash(&b.hash, line).as_deref() == Some(hash));
                if prev_line_inserted {
                    return Err(fail(
                        file,
                        n.saturating_sub(1),
                        "inserted",
                        format!(
                            "inserted line (sequence {} repeated; the next line chains to the one before it)",
                            head.seq
                        ),
                    ));
                }
                return bad(
                    if seq == head.seq { "inserted" } else { "reordered" },
                    format!("sequence {seq} after {}: a line inserted or moved here", head.seq),
                );
            }
            if seq > expected {
                let missing = if seq - expected == 1 {
                    format!("sequence {expected}")
                } else {
                    format!("sequences {expected}..{}", seq - 1)
                };
                return if later_has(expected) {
                    bad(
                        "reordered",
                        format!("out of order: {missing} comes later (lines reordered)"),
                    )
                } else {
                    bad("deleted", format!("{missing} missing before this line (deleted)"))
                };
            }
            if prev_claim.is_some_and(|p| p != head.hash) {
                return bad(
                    "modified",
                    "kfsec.io/chain-prev does not match the line before: modified".into(),
                );
            }
            if link_hash(&head.hash, line).as_deref() != Some(hash) {
                return bad("modified", "hash mismatch: the line was modified".into());
            }
        } else {
            // kfsec starts every file with `kfsec.io/chain-prev`: without it only the chain's
            // very first line (sequence 1, after GENESIS) can be checked.
            let prev = match prev_claim {
                Some(p) => p.to_owned(),
                None if seq == 1 => GENESIS.to_owned(),
                None => {
                    return bad(
                        "modified",
                        format!(
                            "the first line (sequence {seq}) has no kfsec.io/chain-prev: modified, or not the start of a file"
                        ),
                    );
                }
            };
            if link_hash(&prev, line).as_deref() != Some(hash) {
                return bad("modified", "hash mismatch: the line was modified".into());
            }
            // The line before, as this line claims it: a checkpoint here must sign exactly it
            // (else any old signed checkpoint could head a forged file).
            self.head = Some(Head {
                seq: seq.saturating_sub(1),
                hash: prev,
            });
        }
        let is_checkpoint = v
            .get("objectRef")
            .is_some_and(|o| o.get("resource").and_then(Value::as_str) == Some(CHECKPOINT_RESOURCE))
            && v.get("verb").and_then(Value::as_str) == Some("checkpoint");
        if is_checkpoint {
            self.checkpoint(file, n, &v)?;
        } else {
            self.report.events += 1;
            self.report.unsigned_tail += 1;
        }
        let new = Head {
            seq,
            hash: hash.to_owned(),
        };
        self.before = self.head.replace(new);
        self.report.seqs = Some(match self.report.seqs {
            None => (seq, seq),
            Some((first, _)) => (first, seq),
        });
        Ok(())
    }

    fn checkpoint(&mut self, file: &str, n: usize, v: &Value) -> Result<(), Failure> {
        let bad = |kind, reason: &str| Err(fail(file, n, kind, reason));
        let (Some(cp_seq), Some(cp_head), Some(key), Some(sig)) = (
            annotation(v, CP_SEQ),
            annotation(v, CP_HEAD),
            annotation(v, CP_KEY),
            annotation(v, CP_SIG),
        ) else {
            return bad("signature", "checkpoint without its signature annotations");
        };
        let Some(i) = self.key_ids.iter().position(|k| k == key) else {
            return Err(fail(
                file,
                n,
                "unknown-key",
                format!("checkpoint signed by unknown key {key} (pass its public key with --key)"),
            ));
        };
        let Ok(cp_seq) = cp_seq.parse::<u64>() else {
            return bad("signature", "checkpoint sequence is not a number");
        };
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(sig) else {
            return bad("signature", "checkpoint signature is not base64");
        };
        let Some(pk) = self.keys.get(i) else {
            return bad("unknown-key", "checkpoint key missing");
        };
        if UnparsedPublicKey::new(&ED25519, pk)
            .verify(&checkpoint_message(cp_seq, cp_head), &sig)
            .is_err()
        {
            return bad("signature", "bad checkpoint signature");
        }
        if let Some(head) = &self.head
            && (head.seq != cp_seq || head.hash != cp_head)
        {
            return bad(
                "modified",
                "the checkpoint signs another chain head: lines before it were rewritten",
            );
        }
        self.report.checkpoints += 1;
        self.report.unsigned_tail = 0;
        if !self.report.keys.iter().any(|k| k == key) {
            self.report.keys.push(key.to_owned());
        }
        Ok(())
    }

    /// The report of an intact input.
    pub fn finish(self) -> Report {
        self.report
    }

    /// Events verified so far.
    pub fn events(&self) -> u64 {
        self.report.events + self.report.checkpoints
    }
}

/// Verifies in-memory files `(name, bytes)` in order (the CLI streams files; this is for tests
/// and the fuzz target). A last line without newline in the last file is a truncated tail.
pub fn verify_bytes(files: &[(&str, &[u8])], keys: &[Vec<u8>]) -> Result<Report, Failure> {
    let mut v = Verifier::new(keys);
    let lines: Vec<(usize, usize, &[u8], bool)> = files
        .iter()
        .enumerate()
        .flat_map(|(fi, (_, data))| {
            let mut out = Vec::new();
            let mut rest: &[u8] = data;
            let mut n = 0;
            while !rest.is_empty() {
                n += 1;
                match rest.iter().position(|b| *b == b'\n') {
                    Some(p) => {
                        out.push((fi, n, &rest[..p], true));
                        rest = &rest[p + 1..];
                    }
                    None => {
                        out.push((fi, n, rest, false));
                        rest = &[];
                    }
                }
            }
            out
        })
        .collect();
    for (i, (fi, n, line, complete)) in lines.iter().enumerate() {
        let name = files.get(*fi).map_or("", |f| f.0);
        if !complete {
            let last = i + 1 == lines.len();
            return Err(fail(
                name,
                *n,
                if last { "truncated" } else { "malformed" },
                if last {
                    format!(
                        "truncated tail: the last line is incomplete (the write was cut, e.g. kill -9); the {} lines before it are intact",
                        v.events()
                    )
                } else {
                    "incomplete line in the middle of the chain".to_owned()
                },
            ));
        }
        let mut later = |seq: u64| {
            lines[i + 1..]
                .iter()
                .any(|(_, _, l, _)| Verifier::seq_of(l) == Some(seq))
        };
        v.line(name, *n, line, &mut later)?;
    }
    let mut r = v.finish();
    r.files = files.len();
    Ok(r)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kfsec_types::SequenceRng;

    pub(crate) fn event(i: u64) -> Event {
        let mut e = log_event(
            "configmaps",
            "create",
            UnixTime::from_secs(1_796_504_400 + i),
            &SequenceRng::default(),
            BTreeMap::new(),
        );
        e.object_ref = Some(ObjectRef {
            resource: Some("configmaps".into()),
            namespace: Some("team-a".into()),
            name: Some(format!("cm-{i}")),
            ..Default::default()
        });
        e.request_object = Some(serde_json::json!({"data": {"k": i, "f": 1.5, "z": [1, "two"]}}));
        e
    }

    #[test]
    fn an_events_own_chain_annotations_are_dropped_and_its_other_ones_kept() {
        let mut head = Head::default();
        let _ = head.seal(event(0), true).unwrap_or_else(|e| panic!("{e}"));
        let mut e = event(1);
        for (k, v) in [
            (SEQ, "999"),
            (HASH, "ff"),
            (PREV, "forged"),
            ("kfsec.io/chain-other", "kept"),
            ("a/b", "c"),
        ] {
            e.annotations.insert(k.to_owned(), v.to_owned());
        }
        let prev = head.hash.clone();
        let line = head.seal(e, false).unwrap_or_else(|err| panic!("{err}"));
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|err| panic!("{err}"));
        let a = &v["annotations"];
        assert_eq!(
            (a[SEQ].as_str(), a[HASH].as_str()),
            (Some("2"), Some(head.hash.as_str()))
        );
        assert!(a.get(PREV).is_none(), "{line}");
        assert_eq!(
            (a["kfsec.io/chain-other"].as_str(), a["a/b"].as_str()),
            (Some("kept"), Some("c"))
        );
        assert_eq!(link_hash(&prev, line.as_bytes()).as_deref(), Some(head.hash.as_str()));
        assert_eq!(line.matches(SEQ).count(), 1, "{line}");
    }

    /// 10 events with a checkpoint after every 4 lines: lines 1-4 events, 5 checkpoint, …
    fn log(key: &SigningKey) -> Vec<String> {
        let mut head = Head::default();
        let mut out = Vec::new();
        for i in 0..10 {
            out.push(head.seal(event(i), out.is_empty()).unwrap_or_else(|e| panic!("{e}")));
            if out.len() % 5 == 4 {
                let cp = key.checkpoint(&head, UnixTime::from_secs(1_796_504_500), &SequenceRng::default());
                out.push(head.seal(cp, false).unwrap_or_else(|e| panic!("{e}")));
            }
        }
        out
    }

    fn bytes(lines: &[String]) -> Vec<u8> {
        lines.iter().flat_map(|l| format!("{l}\n").into_bytes()).collect()
    }

    fn check(lines: &[String], keys: &[Vec<u8>]) -> Result<Report, Failure> {
        verify_bytes(&[("audit.log", &bytes(lines))], keys)
    }

    fn key() -> SigningKey {
        SigningKey::generate(&SequenceRng::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn an_intact_log_verifies_with_its_checkpoints() {
        let k = key();
        let lines = log(&k);
        assert_eq!(lines.len(), 12);
        let r = check(&lines, &[k.public()]).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!((r.events, r.checkpoints, r.unsigned_tail), (10, 2, 2));
        assert_eq!(r.keys, vec![k.id().to_owned()]);
        assert_eq!(r.seqs, Some((1, 12)));
        // Every line is an audit.k8s.io/v1 Event Kubernetes' types read.
        for l in &lines {
            let e: Event = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!((e.kind.as_str(), e.api_version.as_str()), ("Event", "audit.k8s.io/v1"));
        }
    }

    #[test]
    fn each_kind_of_tampering_is_located() {
        let k = key();
        let keys = [k.public()];
        let lines = log(&k);
        let at = |l: &[String]| check(l, &keys).err().map(|f| (f.line, f.kind)).unwrap_or((0, "intact"));

        let mut modified = lines.clone();
        modified[2] = modified[2].replace("cm-2", "cm-X");
        assert_eq!(at(&modified), (3, "modified"));

        // Modified and its own hash recomputed: the next line no longer chains.
        let mut rehashed = lines.clone();
        let mut v: Value = serde_json::from_str(&rehashed[2]).unwrap_or_else(|e| panic!("{e}"));
        v["objectRef"]["name"] = "cm-X".into();
        let mut before = Head::of_line(lines[1].as_bytes()).unwrap_or_else(|| panic!());
        let e: Event = serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"));
        rehashed[2] = before.seal(e, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(at(&rehashed), (4, "modified"));

        let mut deleted = lines.clone();
        deleted.remove(6);
        assert_eq!(at(&deleted), (7, "deleted"));

        let mut swapped = lines.clone();
        swapped.swap(6, 7);
        assert_eq!(at(&swapped), (7, "reordered"));

        let mut moved = lines.clone();
        let l = moved.remove(1);
        moved.insert(8, l);
        assert_eq!(at(&moved), (2, "reordered"));

        let mut foreign = lines.clone();
        foreign.insert(
            3,
            r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","verb":"get"}"#.into(),
        );
        assert_eq!(at(&foreign), (4, "inserted"));

        let mut duplicate = lines.clone();
        duplicate.insert(3, lines[2].clone());
        assert_eq!(at(&duplicate), (4, "inserted"));

        // A forged line chained properly after line 3: the real line 4 repeats its sequence.
        let mut forged = lines.clone();
        let mut h3 = Head::of_line(lines[2].as_bytes()).unwrap_or_else(|| panic!());
        forged.insert(3, h3.seal(event(99), false).unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(at(&forged), (4, "inserted"));

        let mut empty = lines.clone();
        empty.insert(5, String::new());
        assert_eq!(at(&empty), (6, "inserted"));

        // The whole chain rewritten from line 2 on (hashes recomputed): the checkpoint's
        // signature names another head.
        let mut rewritten: Vec<String> = vec![lines[0].clone()];
        let mut head = Head::of_line(lines[0].as_bytes()).unwrap_or_else(|| panic!());
        for l in &lines[1..] {
            let mut e: Event = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}"));
            if let Some(o) = e.object_ref.as_mut().filter(|o| o.name.as_deref() == Some("cm-2")) {
                o.name = Some("cm-X".into());
            }
            rewritten.push(head.seal(e, false).unwrap_or_else(|e| panic!("{e}")));
        }
        assert_eq!(at(&rewritten), (5, "modified"));

        // Truncated tail.
        let mut cut = bytes(&lines);
        cut.truncate(cut.len() - 20);
        let f = verify_bytes(&[("audit.log", &cut)], &keys)
            .err()
            .unwrap_or_else(|| panic!());
        assert_eq!((f.line, f.kind), (12, "truncated"));
        assert!(f.to_string().starts_with("audit.log:12: truncated tail"), "{f}");
    }

    #[test]
    fn checkpoints_need_the_right_key_and_a_valid_signature() {
        let k = key();
        let lines = log(&k);
        let other = SigningKey::generate(&kfsec_types::SequenceRng::default());
        let _ = other;
        let mut rng_other = [0u8; 32];
        rng_other[0] = 1;
        struct Fixed([u8; 32]);
        impl Rng for Fixed {
            fn fill(&self, buf: &mut [u8]) {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = self.0[i % 32];
                }
            }
        }
        let stranger = SigningKey::generate(&Fixed(rng_other)).unwrap_or_else(|e| panic!("{e}"));
        let f = check(&lines, &[stranger.public()]).err().unwrap_or_else(|| panic!());
        assert_eq!((f.line, f.kind), (5, "unknown-key"));
        // A checkpoint whose signature was replaced (and its hash recomputed).
        let mut bad = lines.clone();
        let mut v: Value = serde_json::from_str(&bad[4]).unwrap_or_else(|e| panic!("{e}"));
        let sig = v["annotations"][CP_SIG].as_str().unwrap_or_default().to_owned();
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(sig)
            .unwrap_or_default();
        raw[0] ^= 1;
        v["annotations"][CP_SIG] = base64::engine::general_purpose::STANDARD.encode(raw).into();
        let mut before = Head::of_line(lines[3].as_bytes()).unwrap_or_else(|| panic!());
        let e: Event = serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"));
        bad[4] = before.seal(e, false).unwrap_or_else(|e| panic!("{e}"));
        let f = check(&bad, &[k.public()]).err().unwrap_or_else(|| panic!());
        assert_eq!((f.line, f.kind), (5, "signature"));
        // The public key round-trips through its PEM file form.
        assert_eq!(parse_public_pem(&public_pem(&k.public())), Some(k.public()));
    }

    #[test]
    fn a_file_starting_mid_chain_verifies_from_its_prev_annotation() {
        let k = key();
        let mut head = Head::default();
        let a: Vec<String> = (0..3)
            .map(|i| head.seal(event(i), i == 0).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let b: Vec<String> = (3..6)
            .map(|i| head.seal(event(i), i == 3).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let r = verify_bytes(&[("b.log", &bytes(&b))], &[k.public()]).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(r.seqs, Some((4, 6)));
        let r = verify_bytes(&[("a.log", &bytes(&a)), ("b.log", &bytes(&b))], &[k.public()])
            .unwrap_or_else(|f| panic!("{f}"));
        assert_eq!((r.events, r.files), (6, 2));
        let mut b2 = b.clone();
        b2[0] = b2[0].replace("cm-3", "cm-Y");
        let f = verify_bytes(&[("b.log", &bytes(&b2))], &[])
            .err()
            .unwrap_or_else(|| panic!());
        assert_eq!((f.file.as_str(), f.line, f.kind), ("b.log", 1, "modified"));
        // The first line's chain-prev removed (to hide a change to it): refused.
        let mut b3 = b.clone();
        let mut v: Value = serde_json::from_str(&b3[0]).unwrap_or_else(|e| panic!("{e}"));
        if let Some(a) = v["annotations"].as_object_mut() {
            a.remove(PREV);
        }
        v["objectRef"]["name"] = "cm-Z".into();
        b3[0] = v.to_string();
        let f = verify_bytes(&[("b.log", &bytes(&b3))], &[])
            .err()
            .unwrap_or_else(|| panic!());
        assert_eq!((f.line, f.kind), (1, "modified"));
        // Files given in the wrong order.
        let f = verify_bytes(&[("b.log", &bytes(&b)), ("a.log", &bytes(&a))], &[])
            .err()
            .unwrap_or_else(|| panic!());
        assert_eq!((f.file.as_str(), f.line), ("a.log", 1));
    }

    #[test]
    fn a_replayed_checkpoint_heading_a_forged_file_is_not_counted_as_signed() {
        let k = key();
        let lines = log(&k);
        // An attacker rewrites the file: the old signed checkpoint (line 5, signing sequence 4)
        // re-sealed as the first line of a fresh chain, then forged events chained to it.
        let cp: Event = serde_json::from_str(&lines[4]).unwrap_or_else(|e| panic!("{e}"));
        for first_seq in [0u64, 4] {
            let mut head = Head {
                seq: first_seq,
                hash: "ab".repeat(32),
            };
            let mut forged = vec![head.seal(cp.clone(), true).unwrap_or_else(|e| panic!("{e}"))];
            for i in 100..103 {
                forged.push(head.seal(event(i), false).unwrap_or_else(|e| panic!("{e}")));
            }
            let f = check(&forged, &[k.public()]).err();
            assert_eq!(
                f.map(|f| (f.line, f.kind)),
                Some((1, "modified")),
                "a checkpoint must sign the line before it, also on a file's first line"
            );
        }
        // The genuine file starting at the checkpoint (rotated there) still verifies.
        let mut head = Head::of_line(lines[3].as_bytes()).unwrap_or_else(|| panic!());
        let mut tail = vec![head.seal(cp, true).unwrap_or_else(|e| panic!("{e}"))];
        tail.push(head.seal(event(5), false).unwrap_or_else(|e| panic!("{e}")));
        let r = check(&tail, &[k.public()]).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!((r.checkpoints, r.events), (1, 1));
    }

    #[test]
    fn a_line_re_spelled_as_equivalent_json_is_modified() {
        // The hash covers the bytes kfsec wrote: JSON that reads the same to a parser (other
        // number forms, escapes, whitespace, key order) is still a change.
        let k = key();
        let lines = log(&k);
        for (from, to) in [
            ("\"verb\":\"create\"", "\"verb\": \"create\""),
            ("cm-2", "cm\\u002d2"),
            (
                "\"kind\":\"Event\",\"apiVersion\":\"audit.k8s.io/v1\"",
                "\"apiVersion\":\"audit.k8s.io/v1\",\"kind\":\"Event\"",
            ),
        ] {
            let mut l = lines.clone();
            assert!(l[2].contains(from), "{from} not in {}", l[2]);
            l[2] = l[2].replacen(from, to, 1);
            let v: Value = serde_json::from_str(&l[2]).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                v,
                serde_json::from_str::<Value>(&lines[2]).unwrap_or_else(|e| panic!("{e}"))
            );
            let f = check(&l, &[k.public()]).err();
            assert_eq!(f.map(|f| (f.line, f.kind)), Some((3, "modified")), "{to}");
        }
    }

    #[test]
    fn a_duplicate_key_that_readers_disagree_on_is_refused() {
        let k = key();
        let lines = log(&k);
        // A first `user` inserted before kfsec's: serde_json, jq and Python keep the last one (the
        // hash still matches), a first-wins reader sees mallory.
        let mut dup = lines.clone();
        dup[2] = dup[2].replacen('{', r#"{"user":{"username":"mallory"},"#, 1);
        assert!(dup[2].contains("mallory"));
        let f = check(&dup, &[k.public()]).err();
        assert_eq!(f.map(|f| (f.line, f.kind)), Some((3, "modified")));
        // Nested too.
        let mut nested = lines.clone();
        nested[2] = nested[2].replacen(r#""annotations":{"#, r#""annotations":{"kfsec.io/chain-seq":"9","#, 1);
        let f = check(&nested, &[k.public()]).err();
        assert_eq!(f.map(|f| (f.line, f.kind)), Some((3, "modified")));
    }

    #[test]
    fn micro_time_and_audit_ids() {
        assert_eq!(
            UnixTime::from_millis(1_796_504_400_123).to_rfc3339_micros(),
            "2026-12-05T21:00:00.123000Z"
        );
        let id = new_audit_id(&SequenceRng::default());
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
    }
}
