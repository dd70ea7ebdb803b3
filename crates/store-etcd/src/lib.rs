//! kfsec-store-etcd: the etcd (v3 API) backend of kfsec's storage contract
//! ([`kfsec_store::Store`]), for running several kfsec replicas on one shared store.
//!
//! Mapping: store revisions are etcd revisions (a record's `mod_revision`, a list's header
//! revision); `create` is a transaction on `create_revision == 0`, every other write and `take`
//! a transaction on the `mod_revision` just read (retried while etcd reports a concurrent
//! change, so an unconditional write never clobbers blindly and `expected` conflicts are exact);
//! each such transaction also puts a *receipt* — an empty key named by 16 random bytes from the
//! injected [`Rng`], in the reserved range `prefix + "/\0receipt/"`, leased for a minute — so
//! that after an ambiguous answer (the connection broke during a member's death or a leader
//! election) one read of the receipt and the key at one revision says exactly what happened:
//! receipt there → it applied (at the receipt's `mod_revision`); absent and the key unchanged →
//! it did not yet, so it is sent again with the same receipt (at most one attempt can apply);
//! absent and the key moved on → it never will, and the usual rules apply to what is there
//! (`take` → `Ok(None)`: another caller holds the record; `delete` → NotFound / Conflict; CAS →
//! Conflict). So a single-use `take` goes to exactly one caller and a CAS never has two
//! winners, also when a competitor wrote the same bytes. Receipts are never listed, watched,
//! swept or decoded: every store range starts after the reserved keys, and the store keys `/`
//! and `/\0…` are refused. `list` pages key ranges (`start_after` + `"\0"` up to the prefix end) at one revision; `watch`
//! replays from `after + 1` with previous values and reports etcd's compaction as
//! [`StoreError::Compacted`] (`oldest` = the compaction revision − 1). Values are stored in the
//! small framed envelope of [`envelope`] (version, absolute expiry, create-revision mode).
//!
//! TTLs: a record's absolute expiry lives in its envelope and every read enforces it against the
//! injected [`Clock`] — etcd leases are only the clean-up (granted for ⌈ttl⌉ + `lease_grace`
//! seconds, at least etcd's 2 s minimum), because lease TTLs are a minimum and are reset by every
//! etcd leader change. [`EtcdStore::sweep_expired`] deletes expired records promptly (one
//! revision and one Delete event each, like the other backends); the leader replica runs it and
//! [`EtcdStore::compact`] on a schedule.
//!
//! Security invariants: every key read or written is `prefix + key` with `key` starting with `/`
//! (prefix `/kfsec` → `/kfsec/<key>`; receipts are `/kfsec/\0receipt/<hex>`), so nothing
//! outside the configured prefix is ever written, listed or watched, and a key that does not
//! start with `/` is refused; a value under the prefix that is not a valid envelope is a
//! [`StoreError::Backend`], never a panic; the etcd password never appears in `Debug` output or
//! logs; connection errors name the endpoint.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, PutOptions, TlsOptions,
    Txn, TxnOp, TxnOpResponse,
};
use kfsec_store::{EventKind, KeyValue, ListPage, Revision, Store, StoreError, Upkeep, WatchEvent, WatchStream};
use kfsec_types::{Clock, Rng, UnixTime, random_array};

pub mod envelope;
mod lease;
mod retry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_ambiguous;
#[cfg(test)]
mod tests_leader;

use envelope::CreateRevision;
use retry::Sent;

/// How to reach etcd and where kfsec's keys live there.
#[derive(Clone)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members, e.g. `http://127.0.0.1:2379` (`https://` with [`EtcdConfig::tls`]).
    pub endpoints: Vec<String>,
    /// The key prefix every kfsec key is stored under, e.g. `/kfsec` (a trailing `/` is ignored;
    /// `/` alone is refused: kfsec never owns the whole keyspace).
    pub prefix: String,
    /// TLS to the members (required for `https://` endpoints).
    pub tls: Option<EtcdTls>,
    /// etcd user name (with [`EtcdConfig::password`]); none = etcd auth off.
    pub username: Option<String>,
    /// etcd password of [`EtcdConfig::username`]; never logged, never in `Debug` output.
    pub password: Option<String>,
    /// Timeout of connecting to one member. Default 5 s.
    pub connect_timeout: Duration,
    /// Timeout of one request (the stream of a watch excepted). A store operation retries
    /// through a dead member or a leader election for at most twice this, then fails: the
    /// default 4 s answers within 8 s when etcd is down.
    pub request_timeout: Duration,
    /// Seconds added to a TTL record's lease beyond its stored expiry, so that the lease (the
    /// clean-up) never fires before the stored expiry even with clock skew between replicas and
    /// etcd. Default 5 s.
    pub lease_grace: Duration,
    /// Capacity of each watcher's stream. Default 256.
    pub watch_buffer: usize,
}

impl EtcdConfig {
    /// A configuration with the defaults above for `endpoints` and `prefix`.
    pub fn new(endpoints: Vec<String>, prefix: impl Into<String>) -> Self {
        Self {
            endpoints,
            prefix: prefix.into(),
            tls: None,
            username: None,
            password: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(4),
            lease_grace: Duration::from_secs(5),
            watch_buffer: 256,
        }
    }
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("lease_grace", &self.lease_grace)
            .field("watch_buffer", &self.watch_buffer)
            .finish()
    }
}

/// PEM files for TLS to etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    /// The CA that signed the members' serving certificates (required).
    pub ca_file: Option<PathBuf>,
    /// Client certificate (with [`EtcdTls::key_file`]) for etcd's client-certificate auth.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key.
    pub key_file: Option<PathBuf>,
}

/// Why the etcd store could not be set up, or a maintenance call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    /// The configuration is unusable (says which field).
    #[error("etcd store configuration: {0}")]
    Config(String),
    /// A TLS file could not be read.
    #[error("etcd TLS file {path}: {source}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// One endpoint is unusable (bad URL, TLS, authentication).
    #[error("etcd endpoint {endpoint}: {source}")]
    Endpoint {
        /// The endpoint as configured.
        endpoint: String,
        /// The cause.
        #[source]
        source: etcd_client::Error,
    },
    /// No endpoint answered; each endpoint with its failure.
    #[error("no etcd endpoint reachable: {}", .0.iter().map(|(e, c)| format!("{e}: {c}")).collect::<Vec<_>>().join("; "))]
    Unreachable(Vec<(String, String)>),
    /// A request to the cluster failed.
    #[error("etcd: {0}")]
    Request(#[source] etcd_client::Error),
    /// A request did not finish within the request timeout.
    #[error("etcd: no answer within {0:?}")]
    Timeout(Duration),
}

/// Which history [`EtcdStore::compact`] discards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compaction {
    /// Keep the latest this many revisions.
    KeepRevisions(u64),
    /// Discard history before this revision (it stays readable).
    BeforeRevision(Revision),
}

/// The etcd store (cheap to clone: one shared gRPC channel to all endpoints).
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    /// The normalised prefix, without a trailing `/` (e.g. `/kfsec`).
    root: String,
    clock: Arc<dyn Clock>,
    /// The source of receipt names.
    rng: Arc<dyn Rng>,
    lease_grace: Duration,
    request_timeout: Duration,
    watch_buffer: usize,
    endpoints: usize,
    leases: Arc<lease::Leases>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn normalise_prefix(prefix: &str) -> Result<String, EtcdError> {
    let root = prefix.trim_end_matches('/');
    if !prefix.starts_with('/') || root.is_empty() || root.chars().any(char::is_control) {
        return Err(EtcdError::Config(format!(
            "prefix {prefix:?} must be an absolute key path such as /kfsec (not / itself, no control characters)"
        )));
    }
    Ok(root.to_owned())
}

fn read_pem(path: &PathBuf) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|source| EtcdError::TlsFile {
        path: path.clone(),
        source,
    })
}

fn connect_options(config: &EtcdConfig) -> Result<ConnectOptions, EtcdError> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(config.connect_timeout)
        .with_timeout(config.request_timeout)
        // A dead member's connection is noticed within seconds, also under an idle watch.
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .with_keep_alive_while_idle(true)
        // A member cut off from the leader fails requests instead of serving stale reads.
        .with_require_leader(true);
    match (&config.username, &config.password) {
        (Some(u), Some(p)) => opts = opts.with_user(u.clone(), p.clone()).with_auto_token_refresh(true),
        (None, None) => {}
        _ => return Err(EtcdError::Config("username and password go together".into())),
    }
    if let Some(tls) = &config.tls {
        let Some(ca) = &tls.ca_file else {
            return Err(EtcdError::Config("tls needs caFile".into()));
        };
        let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(read_pem(ca)?));
        match (&tls.cert_file, &tls.key_file) {
            (Some(c), Some(k)) => t = t.identity(Identity::from_pem(read_pem(c)?, read_pem(k)?)),
            (None, None) => {}
            _ => return Err(EtcdError::Config("tls certFile and keyFile go together".into())),
        }
        opts = opts.with_tls(t);
    }
    Ok(opts)
}

fn check_endpoint(endpoint: &str, tls: bool) -> Result<(), EtcdError> {
    let bad = |why: &str| EtcdError::Config(format!("endpoint {endpoint:?}: {why}"));
    if let Some(rest) = endpoint.strip_prefix("https://") {
        if !tls {
            return Err(bad("https:// needs tls (caFile)"));
        }
        if rest.is_empty() {
            return Err(bad("no host"));
        }
    } else if let Some(rest) = endpoint.strip_prefix("http://") {
        if tls {
            return Err(bad("tls is configured: use https://"));
        }
        if rest.is_empty() {
            return Err(bad("no host"));
        }
    } else {
        return Err(bad("must start with http:// or https://"));
    }
    Ok(())
}

/// Connects to the cluster and checks that at least one endpoint answers a quorum read (an
/// endpoint that does not is logged, naming it, and used again once it recovers). `clock` is
/// the time TTL expiry is judged by; `rng` names each write's receipt (see the crate docs), so
/// it must give different bytes in every process sharing the cluster (a secure random source).
pub async fn connect(config: &EtcdConfig, clock: Arc<dyn Clock>, rng: Arc<dyn Rng>) -> Result<EtcdStore, EtcdError> {
    let root = normalise_prefix(&config.prefix)?;
    if config.endpoints.is_empty() {
        return Err(EtcdError::Config("no endpoints".into()));
    }
    for e in &config.endpoints {
        check_endpoint(e, config.tls.is_some())?;
    }
    let opts = connect_options(config)?;
    let budget = config.connect_timeout.saturating_add(config.request_timeout);
    let mut failures = Vec::new();
    for endpoint in &config.endpoints {
        let probe = async {
            let mut c = Client::connect([endpoint.as_str()], Some(opts.clone()))
                .await
                .map_err(|e| e.to_string())?;
            c.get(format!("{root}/"), Some(GetOptions::new().with_count_only()))
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(budget, probe).await {
            Ok(Ok(_)) => {}
            Ok(Err(cause)) => failures.push((endpoint.clone(), cause)),
            Err(_) => failures.push((endpoint.clone(), format!("no answer within {budget:?}"))),
        }
    }
    if failures.len() == config.endpoints.len() {
        return Err(EtcdError::Unreachable(failures));
    }
    for (endpoint, cause) in &failures {
        tracing::warn!(endpoint = %endpoint, cause = %cause, "etcd endpoint not reachable at startup; using the others");
    }
    let client = Client::connect(&config.endpoints, Some(opts))
        .await
        .map_err(|source| EtcdError::Endpoint {
            endpoint: config.endpoints.join(","),
            source,
        })?;
    Ok(EtcdStore {
        client,
        root,
        clock,
        rng,
        lease_grace: config.lease_grace,
        request_timeout: config.request_timeout,
        watch_buffer: config.watch_buffer.max(1),
        endpoints: config.endpoints.len(),
        leases: Arc::default(),
    })
}

fn to_rev(r: i64) -> Result<Revision, StoreError> {
    Revision::try_from(r).map_err(|_| StoreError::Backend(format!("etcd: negative revision {r}")))
}

fn to_i64(r: Revision) -> Result<i64, StoreError> {
    i64::try_from(r).map_err(|_| StoreError::Backend(format!("revision {r} out of etcd's range")))
}

/// Whether an etcd error says the revision asked for has been compacted.
fn is_compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("required revision has been compacted"))
}

/// `now + ttl`, rounded up to whole milliseconds (as the other backends do).
fn expiry(now: UnixTime, ttl: Duration) -> UnixTime {
    let t = now.add(ttl);
    let ms = t.as_millis();
    if UnixTime::from_millis(ms) < t {
        UnixTime::from_millis(ms.saturating_add(1))
    } else {
        UnixTime::from_millis(ms)
    }
}

fn is_live(kv: &KeyValue, now: UnixTime) -> bool {
    kv.expires_at.is_none_or(|at| now < at)
}

/// The first key after every key starting with `key` (etcd's prefix range end).
fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Store keys starting with this, and the key `/` itself, are refused: their etcd keys are
/// kfsec's own — `prefix + "/"` is the revision probe, `prefix + "/\0receipt/…"` the receipts —
/// and no range the store lists, watches or sweeps includes them.
const RESERVED: &str = "/\0";

/// How long a receipt stays readable (its lease, plus `lease_grace`): far longer than an
/// operation spends resolving an ambiguous answer (a few request timeouts).
const RECEIPT_TTL: Duration = Duration::from_secs(60);

/// One store operation's receipt: a key unique to the operation (random name), put with a
/// short lease by the same etcd transaction as the operation's write or delete. After an
/// ambiguous answer it tells exactly whether the transaction applied: present → it did (its
/// `mod_revision` is the transaction's revision); absent while the record is unchanged → not
/// yet (send it again, with the same receipt, so at most one attempt applies); absent while
/// the record has moved on → never (the compare can no longer hold).
struct Receipt {
    key: String,
    lease: i64,
}

/// What a transaction carrying a [`Receipt`] did.
enum Outcome {
    /// It applied (this attempt or an earlier, ambiguous one), at this etcd revision.
    Applied(i64),
    /// It did not apply: its compare failed; the key holds this now.
    NotApplied(Option<etcd_client::KeyValue>),
    /// Its answer was lost and it has not applied; the key holds this now.
    Unknown(Option<etcd_client::KeyValue>, StoreError),
}

/// Whether a transaction failed because a lease it names is gone from etcd.
fn lease_lost(e: &StoreError) -> bool {
    matches!(e, StoreError::Backend(m) if m.contains("requested lease not found"))
}

/// What a write requires of the record it replaces.
#[derive(Clone, Copy)]
enum Want {
    Create,
    Update(Option<Revision>),
    Put,
}

/// A raw etcd record under the prefix: its etcd revisions and the decoded record.
struct Current {
    etcd_create: i64,
    etcd_mod: i64,
    kv: KeyValue,
}

impl EtcdStore {
    /// The etcd key of store key `key`.
    fn ekey(&self, key: &str) -> Result<String, StoreError> {
        if !key.starts_with('/') {
            return Err(StoreError::Backend(format!("store key {key:?} must start with /")));
        }
        if key == "/" || key.starts_with(RESERVED) {
            return Err(StoreError::Backend(format!("store key {key:?} is reserved")));
        }
        Ok(format!("{}{key}", self.root))
    }

    /// A fresh receipt: a key of the reserved range no other operation uses, with a lease of
    /// [`RECEIPT_TTL`].
    async fn receipt(&self) -> Result<Receipt, StoreError> {
        let nonce: [u8; 16] = random_array(self.rng.as_ref());
        let mut key = format!("{}{RESERVED}receipt/", self.root);
        kfsec_types::hex::push(&mut key, &nonce);
        Ok(Receipt {
            key,
            lease: self.grant(RECEIPT_TTL).await?,
        })
    }

    /// The etcd key of store key `/`: reads that want only the revision (`count_only`) go there,
    /// inside the prefix, so an etcd role limited to the prefix may make them.
    fn probe_key(&self) -> String {
        format!("{}/", self.root)
    }

    /// The etcd key range of store prefix `prefix`; `None` if no store key can match it.
    /// It never includes the reserved keys (the probe key and the receipts).
    fn erange(&self, prefix: &str) -> Option<(Vec<u8>, Vec<u8>)> {
        let (lo, hi) = match prefix {
            // Every store key: past `prefix + "/"` and the receipts (`prefix + "/\0…"`).
            "" | "/" => (
                format!("{}/\u{1}", self.root),
                prefix_end(format!("{}/", self.root).as_bytes()),
            ),
            p if p.starts_with(RESERVED) => return None,
            p if p.starts_with('/') => {
                let lo = format!("{}{p}", self.root);
                let hi = prefix_end(lo.as_bytes());
                (lo, hi)
            }
            _ => return None,
        };
        Some((lo.into_bytes(), hi))
    }

    /// Decodes an etcd record under the prefix.
    fn decode(&self, kv: &etcd_client::KeyValue) -> Result<Current, StoreError> {
        let ekey = std::str::from_utf8(kv.key()).map_err(|_| {
            StoreError::Backend(format!(
                "etcd key {:?} under the prefix is not UTF-8",
                String::from_utf8_lossy(kv.key())
            ))
        })?;
        let key = ekey
            .strip_prefix(self.root.as_str())
            .filter(|k| k.starts_with('/'))
            .ok_or_else(|| StoreError::Backend(format!("etcd key {ekey:?} outside the prefix")))?;
        let env = envelope::decode(kv.value()).map_err(|e| {
            tracing::warn!(key = %ekey, error = %e, "etcd value under the kfsec prefix is not a kfsec record");
            StoreError::Backend(format!("corrupt value at etcd key {ekey:?}: {e}"))
        })?;
        let mod_revision = to_rev(kv.mod_revision())?;
        let create_revision = match env.create {
            CreateRevision::Etcd => to_rev(kv.create_revision())?,
            CreateRevision::ThisWrite => mod_revision,
            CreateRevision::Explicit(r) if r <= mod_revision => r,
            CreateRevision::Explicit(r) => {
                return Err(StoreError::Backend(format!(
                    "corrupt value at etcd key {ekey:?}: create revision {r} after {mod_revision}"
                )));
            }
        };
        Ok(Current {
            etcd_create: kv.create_revision(),
            etcd_mod: kv.mod_revision(),
            kv: KeyValue {
                key: key.to_owned(),
                value: env.payload.to_vec(),
                create_revision,
                mod_revision,
                expires_at: env.expires_at,
            },
        })
    }

    /// The raw etcd record at `ekey` (a quorum read, retried through transient failures).
    async fn read_raw(&self, ekey: &str) -> Result<Option<etcd_client::KeyValue>, StoreError> {
        let resp = self
            .read_retry(|| {
                let mut kv = self.client.kv_client();
                async move { kv.get(ekey, None).await }
            })
            .await?;
        Ok(resp.kvs().first().cloned())
    }

    async fn read(&self, ekey: &str) -> Result<Option<Current>, StoreError> {
        self.read_raw(ekey).await?.map(|kv| self.decode(&kv)).transpose()
    }

    fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision, StoreError> {
        to_rev(
            header
                .ok_or_else(|| StoreError::Backend("etcd: answer without a header".into()))?
                .revision(),
        )
    }

    /// A lease for a record with `ttl`: a shared one of its TTL class, or a new one (see
    /// [`lease`]).
    async fn grant(&self, ttl: Duration) -> Result<i64, StoreError> {
        let secs = ttl.saturating_add(self.lease_grace).as_secs_f64().ceil().max(2.0);
        // Saturating float → int conversion; etcd caps lease TTLs itself.
        #[allow(clippy::cast_possible_truncation)]
        let base = secs.min(1e15) as i64;
        if let Some(id) = self.leases.reuse(base) {
            return Ok(id);
        }
        let (secs, window) = lease::plan(base);
        // Repeating a grant is harmless: an unused lease just expires.
        let resp = self
            .read_retry(|| {
                let mut lease = self.client.lease_client();
                async move { lease.grant(secs, None).await }
            })
            .await?;
        self.leases
            .granted(base, resp.id(), window, tokio::time::Instant::now());
        Ok(resp.id())
    }

    /// Sends `txn`, again only while it certainly did not reach etcd ([`Sent::Unknown`] after
    /// an ambiguous failure).
    async fn send_txn(&self, txn: Txn) -> Result<Sent<etcd_client::TxnResponse>, StoreError> {
        self.write_once(|| {
            let mut kv = self.client.kv_client();
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await
    }

    /// Runs `op` on `ekey` if `compare` holds, putting `receipt` in the same transaction, and
    /// settles an ambiguous answer with the receipt (see [`Receipt`]): a quorum read of the
    /// receipt and the key at one revision. Fails only when etcd cannot be read either.
    /// `resent`: an earlier attempt of this operation had an ambiguous answer (only then can a
    /// failed compare be that attempt's doing).
    async fn commit(
        &self,
        ekey: &str,
        compare: Compare,
        op: TxnOp,
        receipt: &Receipt,
        resent: bool,
    ) -> Result<Outcome, StoreError> {
        let stamp = TxnOp::put(
            receipt.key.as_str(),
            Vec::new(),
            Some(PutOptions::new().with_lease(receipt.lease)),
        );
        let txn = Txn::new()
            .when([compare])
            .and_then([op, stamp])
            .or_else([TxnOp::get(ekey, None), TxnOp::get(receipt.key.as_str(), None)]);
        match self.send_txn(txn).await? {
            Sent::Done(resp) if resp.succeeded() => Ok(Outcome::Applied(
                resp.header()
                    .ok_or_else(|| StoreError::Backend("etcd: answer without a header".into()))?
                    .revision(),
            )),
            Sent::Done(resp) => {
                // The compare failed; the receipt is there if an earlier, ambiguous attempt
                // of this operation applied.
                let [now, stamped] = Self::two_gets(&resp)?;
                Ok(match stamped {
                    Some(r) if resent => Outcome::Applied(r.mod_revision()),
                    _ => Outcome::NotApplied(now),
                })
            }
            Sent::Unknown(cause) => {
                let resp = self
                    .read_retry(|| {
                        let mut kv = self.client.kv_client();
                        // Only reads: a linearizable read of both keys at one revision.
                        let look =
                            Txn::new().and_then([TxnOp::get(ekey, None), TxnOp::get(receipt.key.as_str(), None)]);
                        async move { kv.txn(look).await }
                    })
                    .await?;
                let [now, stamped] = Self::two_gets(&resp)?;
                // The key is not logged: some store keys hold a code.
                tracing::info!(error = %cause, applied = stamped.is_some(), "ambiguous etcd answer settled by its receipt");
                Ok(match stamped {
                    Some(r) => Outcome::Applied(r.mod_revision()),
                    None => Outcome::Unknown(now, cause),
                })
            }
        }
    }

    /// The first record of each of a transaction answer's two reads.
    fn two_gets(resp: &etcd_client::TxnResponse) -> Result<[Option<etcd_client::KeyValue>; 2], StoreError> {
        let mut gets = resp.op_responses().into_iter().filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().first().cloned()),
            _ => None,
        });
        match (gets.next(), gets.next()) {
            (Some(a), Some(b)) => Ok([a, b]),
            _ => Err(StoreError::Backend("etcd: transaction answer without its reads".into())),
        }
    }

    /// A lease was gone from etcd (revoked by an operator, a restore): never share `ids` again
    /// and grant fresh ones — the record's (for `ttl`) and the receipt's.
    async fn regrant(
        &self,
        ids: [Option<i64>; 2],
        ttl: Option<Duration>,
        receipt: &mut Receipt,
    ) -> Result<Option<i64>, StoreError> {
        for id in ids.into_iter().flatten() {
            self.leases.forget(id);
        }
        receipt.lease = self.grant(RECEIPT_TTL).await?;
        match ttl {
            Some(d) => Ok(Some(self.grant(d).await?)),
            None => Ok(None),
        }
    }

    async fn write(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
        want: Want,
    ) -> Result<Revision, StoreError> {
        let ekey = self.ekey(key)?;
        let now = self.clock.now();
        let expires_at = ttl.map(|d| expiry(now, d));
        let mut lease = match ttl {
            Some(d) => Some(self.grant(d).await?),
            None => None,
        };
        let mut receipt = self.receipt().await?;
        let mut regranted = false;
        let mut current = match want {
            // Optimistic: a create usually finds nothing.
            Want::Create => None,
            _ => self.read(&ekey).await?,
        };
        let mut ambiguous = 0;
        loop {
            let live = current.as_ref().filter(|c| is_live(&c.kv, now));
            match (want, live) {
                (Want::Create, Some(_)) => return Err(StoreError::AlreadyExists(key.to_owned())),
                (Want::Update(_), None) => return Err(StoreError::NotFound(key.to_owned())),
                (Want::Update(Some(e)), Some(c)) if c.kv.mod_revision != e => {
                    return Err(StoreError::Conflict {
                        key: key.to_owned(),
                        expected: e,
                        found: c.kv.mod_revision,
                    });
                }
                _ => {}
            }
            let (compare, create) = match (&current, live) {
                (None, _) => (
                    Compare::create_revision(ekey.as_str(), CompareOp::Equal, 0),
                    CreateRevision::Etcd,
                ),
                (Some(c), None) => (
                    Compare::mod_revision(ekey.as_str(), CompareOp::Equal, c.etcd_mod),
                    CreateRevision::ThisWrite,
                ),
                (Some(c), Some(_)) => (
                    Compare::mod_revision(ekey.as_str(), CompareOp::Equal, c.etcd_mod),
                    if i64::try_from(c.kv.create_revision).ok() == Some(c.etcd_create) {
                        CreateRevision::Etcd
                    } else {
                        CreateRevision::Explicit(c.kv.create_revision)
                    },
                ),
            };
            let body = envelope::encode(expires_at, create, &value);
            let opts = lease.map(|id| PutOptions::new().with_lease(id));
            let op = TxnOp::put(ekey.as_str(), body, opts);
            let outcome = match self.commit(&ekey, compare, op, &receipt, ambiguous > 0).await {
                Err(e) if lease_lost(&e) && !regranted => {
                    regranted = true;
                    lease = self.regrant([lease, Some(receipt.lease)], ttl, &mut receipt).await?;
                    continue;
                }
                other => other?,
            };
            // Not applied: the loop applies the usual rules to what the key holds now (an
            // unchanged key after an ambiguous answer → the same transaction again).
            current = match outcome {
                Outcome::Applied(rev) => return to_rev(rev),
                Outcome::NotApplied(now) => now,
                Outcome::Unknown(now, cause) => {
                    ambiguous += 1;
                    if ambiguous > 3 {
                        return Err(cause);
                    }
                    now
                }
            }
            .map(|kv| self.decode(&kv))
            .transpose()?;
        }
    }

    /// Deletes the live record at `key` if `expected` matches; `Ok(None)` if there is none.
    /// Exact across ambiguous answers (the [`Receipt`] says whether the delete was this call's),
    /// so a single-use record taken by two callers at once goes to exactly one of them.
    async fn remove(&self, key: &str, expected: Option<Revision>) -> Result<Option<KeyValue>, StoreError> {
        let ekey = self.ekey(key)?;
        let now = self.clock.now();
        let mut current = self.read(&ekey).await?;
        if !current.as_ref().is_some_and(|c| is_live(&c.kv, now)) {
            return Ok(None);
        }
        let mut receipt = self.receipt().await?;
        let mut regranted = false;
        let mut ambiguous = 0;
        loop {
            let Some(c) = current.filter(|c| is_live(&c.kv, now)) else {
                return Ok(None);
            };
            if let Some(e) = expected.filter(|e| *e != c.kv.mod_revision) {
                return Err(StoreError::Conflict {
                    key: key.to_owned(),
                    expected: e,
                    found: c.kv.mod_revision,
                });
            }
            let compare = Compare::mod_revision(ekey.as_str(), CompareOp::Equal, c.etcd_mod);
            let op = TxnOp::delete(ekey.as_str(), None);
            let outcome = match self.commit(&ekey, compare, op, &receipt, ambiguous > 0).await {
                Err(e) if lease_lost(&e) && !regranted => {
                    regranted = true;
                    self.regrant([Some(receipt.lease), None], None, &mut receipt).await?;
                    current = Some(c);
                    continue;
                }
                other => other?,
            };
            // Applied → the record deleted is `c`: an attempt is sent again only while the
            // key is unchanged, or once the receipt has shown that no earlier one can apply.
            current = match outcome {
                Outcome::Applied(rev) => {
                    let mut deleted = c.kv;
                    deleted.mod_revision = to_rev(rev)?;
                    return Ok(Some(deleted));
                }
                Outcome::NotApplied(now) => now,
                Outcome::Unknown(now, cause) => {
                    ambiguous += 1;
                    if ambiguous > 3 {
                        return Err(cause);
                    }
                    now
                }
            }
            .map(|kv| self.decode(&kv))
            .transpose()?;
        }
    }

    /// Deletes every record whose stored expiry has passed (one revision and one Delete event
    /// each); returns how many. Reads the whole prefix page by page, so run it on one replica
    /// (the leader) at a modest interval, or sweep only the prefixes that hold TTL records with
    /// [`EtcdStore::sweep_expired_under`]; leases clean up behind it anyway. A value under the
    /// prefix that is not a kfsec record is logged and left alone.
    pub async fn sweep_expired(&self) -> Result<usize, StoreError> {
        self.sweep_expired_under("").await
    }

    /// [`EtcdStore::sweep_expired`] for the store keys under `prefix` only.
    pub async fn sweep_expired_under(&self, prefix: &str) -> Result<usize, StoreError> {
        let Some((lo, hi)) = self.erange(prefix) else {
            return Ok(0);
        };
        let now = self.clock.now();
        let mut cursor = lo;
        let mut swept = 0;
        loop {
            let resp = self
                .read_retry(|| {
                    let mut kv = self.client.kv_client();
                    let opts = GetOptions::new().with_range(hi.clone()).with_limit(500);
                    let from = cursor.clone();
                    async move { kv.get(from, Some(opts)).await }
                })
                .await?;
            for raw in resp.kvs() {
                let Ok(c) = self.decode(raw) else { continue };
                if is_live(&c.kv, now) {
                    continue;
                }
                let ekey = raw.key().to_vec();
                let txn = Txn::new()
                    .when([Compare::mod_revision(ekey.clone(), CompareOp::Equal, c.etcd_mod)])
                    .and_then([TxnOp::delete(ekey, None)]);
                // An ambiguous answer is left to the next sweep (or the lease).
                if let Sent::Done(r) = self.send_txn(txn).await?
                    && r.succeeded()
                {
                    swept += 1;
                }
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    cursor = last.key().to_vec();
                    cursor.push(0);
                }
                _ => return Ok(swept),
            }
        }
    }

    /// Discards etcd history (the whole cluster's, as etcd compaction is global): watches and
    /// reads older than the compaction revision fail with `Compacted` afterwards. Returns the
    /// revision compacted at, `None` when there was nothing to compact; compacting at an
    /// already-compacted revision is not an error. Run it on one replica on a schedule.
    pub async fn compact(&self, what: Compaction) -> Result<Option<Revision>, EtcdError> {
        let at = match what {
            Compaction::BeforeRevision(r) => r,
            Compaction::KeepRevisions(n) => {
                let current = self.health().await?;
                current.saturating_sub(n)
            }
        };
        if at == 0 {
            return Ok(None);
        }
        let at_i64 = i64::try_from(at).map_err(|_| EtcdError::Config(format!("revision {at} out of range")))?;
        let mut kv = self.client.kv_client();
        match tokio::time::timeout(self.request_timeout.saturating_mul(2), kv.compact(at_i64, None)).await {
            Ok(Ok(_)) => Ok(Some(at)),
            Ok(Err(e)) if is_compacted(&e) => Ok(Some(at)),
            Ok(Err(e)) => Err(EtcdError::Request(e)),
            Err(_) => Err(EtcdError::Timeout(self.request_timeout.saturating_mul(2))),
        }
    }

    /// A quorum read through any reachable member: `Ok(current revision)` when the cluster has
    /// a leader and answers within the request timeout (for `/readyz`).
    pub async fn health(&self) -> Result<Revision, EtcdError> {
        let timeout = self.request_timeout.saturating_mul(2);
        // A refused connection (a dead member) is instant and says nothing about the cluster:
        // try the next endpoint. Anything else is the answer.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut kv = self.client.kv_client();
            let read = kv.get(self.probe_key(), Some(GetOptions::new().with_count_only()));
            match tokio::time::timeout(timeout, read).await {
                Err(_) => return Err(EtcdError::Timeout(timeout)),
                Ok(Ok(resp)) => {
                    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
                    return Ok(Revision::try_from(rev).unwrap_or(0));
                }
                Ok(Err(e)) if retry::classify(&e) == retry::Failure::NotSent && attempts < 2 * self.endpoints + 2 => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(Err(e)) => return Err(EtcdError::Request(e)),
            }
        }
    }

    /// The raw etcd client (for tests and for the leader election that shares this connection).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The normalised key prefix (e.g. `/kfsec`).
    pub fn prefix(&self) -> &str {
        &self.root
    }

    /// Whether etcd still has the history of revision `at` (not compacted away).
    async fn readable_at(&self, at: Revision) -> Result<bool, StoreError> {
        let at = to_i64(at)?;
        self.read_retry(|| {
            let mut kv = self.client.kv_client();
            let opts = GetOptions::new().with_count_only().with_revision(at);
            async move {
                match kv.get(self.probe_key(), Some(opts)).await {
                    Ok(_) => Ok(true),
                    Err(e) if is_compacted(&e) => Ok(false),
                    Err(e) => Err(e),
                }
            }
        })
        .await
    }

    /// The smallest revision readable in etcd's history at or after `from` (≤ `to`), found by
    /// bisection over history reads (compaction is rare, so is this).
    async fn oldest_readable(&self, from: Revision, to: Revision) -> Result<Revision, StoreError> {
        let (mut lo, mut hi) = (from, to);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.readable_at(mid).await? {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    async fn list_once(
        &self,
        prefix: &str,
        limit: usize,
        start_after: Option<&str>,
    ) -> Result<ListPage, etcd_client::Error> {
        let mut kv = self.client.kv_client();
        let Some((lo, hi)) = self.erange(prefix) else {
            let resp = kv
                .get(self.probe_key(), Some(GetOptions::new().with_count_only()))
                .await?;
            return Ok(ListPage {
                items: Vec::new(),
                revision: resp.header().map(|h| h.revision()).unwrap_or(0).try_into().unwrap_or(0),
                continue_key: None,
            });
        };
        let mut cursor = match start_after {
            Some(s) if s >= prefix => {
                let mut c = format!("{}{s}", self.root).into_bytes();
                c.push(0);
                c.max(lo)
            }
            _ => lo,
        };
        let mut items: Vec<KeyValue> = Vec::new();
        let mut revision: Option<i64> = None;
        let now = self.clock.now();
        loop {
            let mut opts = GetOptions::new().with_range(hi.clone());
            if cursor >= hi {
                // Past the range: only the revision is wanted.
                opts = GetOptions::new().with_count_only();
                cursor = self.probe_key().into_bytes();
            } else if limit != 0 {
                let want = limit.saturating_add(1).saturating_sub(items.len());
                opts = opts.with_limit(i64::try_from(want.max(1)).unwrap_or(i64::MAX));
            }
            if let Some(r) = revision {
                opts = opts.with_revision(r);
            }
            let resp = kv.get(cursor.clone(), Some(opts)).await?;
            let rev = *revision.get_or_insert(resp.header().map(|h| h.revision()).unwrap_or(0));
            for raw in resp.kvs() {
                let c = self
                    .decode(raw)
                    .map_err(|e| etcd_client::Error::InvalidArgs(e.to_string()))?;
                if !is_live(&c.kv, now) {
                    continue;
                }
                items.push(c.kv);
                if limit != 0 && items.len() > limit {
                    items.truncate(limit);
                    let continue_key = items.last().map(|k| k.key.clone());
                    return Ok(ListPage {
                        items,
                        revision: rev.try_into().unwrap_or(0),
                        continue_key,
                    });
                }
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    cursor = last.key().to_vec();
                    cursor.push(0);
                }
                _ => {
                    return Ok(ListPage {
                        items,
                        revision: rev.try_into().unwrap_or(0),
                        continue_key: None,
                    });
                }
            }
        }
    }
}

mod watch;

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let now = self.clock.now();
        Ok(self
            .read(&self.ekey(key)?)
            .await?
            .map(|c| c.kv)
            .filter(|kv| is_live(kv, now)))
    }

    async fn list(&self, prefix: &str, limit: usize, start_after: Option<&str>) -> Result<ListPage, StoreError> {
        // A page spans several etcd reads at one revision; a compaction in between restarts it.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.read_retry(|| self.list_once(prefix, limit, start_after)).await {
                Err(StoreError::Backend(m)) if attempts < 3 && m.contains("compacted") => continue,
                other => return other,
            }
        }
    }

    async fn create(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<Revision, StoreError> {
        self.write(key, value, ttl, Want::Create).await
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
        ttl: Option<Duration>,
    ) -> Result<Revision, StoreError> {
        self.write(key, value, ttl, Want::Update(expected)).await
    }

    async fn put(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<Revision, StoreError> {
        self.write(key, value, ttl, Want::Put).await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        self.remove(key, expected)
            .await?
            .ok_or_else(|| StoreError::NotFound(key.to_owned()))
    }

    async fn take(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.remove(key, None).await
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        let resp = self
            .read_retry(|| {
                let mut kv = self.client.kv_client();
                async move {
                    kv.get(self.probe_key(), Some(GetOptions::new().with_count_only()))
                        .await
                }
            })
            .await?;
        Self::header_revision(resp.header())
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        watch::start(self, prefix, after).await
    }

    fn upkeep(&self) -> Option<&dyn Upkeep> {
        Some(self)
    }
}

/// The leader's chores on the shared cluster: [`EtcdStore::sweep_expired`] and
/// [`EtcdStore::compact`] (see [`kfsec_store::leader`]).
#[async_trait::async_trait]
impl Upkeep for EtcdStore {
    async fn sweep(&self) -> Result<usize, StoreError> {
        self.sweep_expired().await
    }

    async fn compact_before(&self, revision: Revision) -> Result<(), StoreError> {
        self.compact(Compaction::BeforeRevision(revision))
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Backend(e.to_string()))
    }
}

/// Events of one etcd watch response, mapped to the contract.
fn map_event(store: &EtcdStore, ev: &etcd_client::Event) -> Result<WatchEvent, StoreError> {
    let kv = ev
        .kv()
        .ok_or_else(|| StoreError::Backend("etcd: watch event without a key".into()))?;
    let rev = to_rev(kv.mod_revision())?;
    match ev.event_type() {
        EventType::Put => Ok(WatchEvent {
            kind: EventKind::Put,
            kv: store.decode(kv)?.kv,
        }),
        EventType::Delete => {
            let mut last = match ev.prev_kv() {
                Some(prev) => store.decode(prev)?.kv,
                // The previous value was compacted away: the key and the revision still tell
                // a follower what went.
                None => KeyValue {
                    key: String::from_utf8_lossy(kv.key())
                        .strip_prefix(store.root.as_str())
                        .unwrap_or_default()
                        .to_owned(),
                    value: Vec::new(),
                    create_revision: 0,
                    mod_revision: rev,
                    expires_at: None,
                },
            };
            last.mod_revision = rev;
            Ok(WatchEvent {
                kind: EventKind::Delete,
                kv: last,
            })
        }
    }
}
