//! The `ldap` connector (Dex's `connector/ldap`): a user name and password checked against an
//! LDAP directory — service bind, search for the user, bind as the found entry — with the
//! entry's attributes as the identity and groups found by `groupSearch.userMatchers`.
//!
//! Invariants: an empty password is refused without contacting the directory (an empty
//! password is an unauthenticated bind, which servers accept); the user name is escaped exactly
//! once (RFC 4515), so non-ASCII names and `( ) * \` NUL match themselves and nothing else;
//! more than one matching entry is [`ConnectorError::Ambiguous`], never a guess; the user's bind
//! runs on a fresh connection that is closed afterwards, so a pooled connection is only ever
//! bound as the service account; connecting, binding and each search are bounded by the
//! connector's `timeout`, a login waits at most that long for one of the pool's few
//! connections, and a whole login or refresh (with its group searches, nested ones too) ends
//! within `timeout`, so a slow or dead directory gives an answer in bounded time; answers are decoded
//! without panicking, and the library's own panics on malformed answers end in
//! [`ConnectorError::Upstream`] (each exchange runs in its own task); the bind password never
//! appears in logs or `Debug` output; TLS is verified unless `insecureSkipVerify` is set, and
//! plain LDAP (`insecureNoSSL`) is warned about at startup.

mod ber;
mod decode;
mod pool;
mod relay;
mod settings;

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use ldap3::{LdapError, Scope};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::config::{ConfigProblem, OpenContext};
use super::{ConnectorError, ConnectorKind, PasswordConnector, Scopes, UpstreamIdentity};

pub use ber::{BerError, MAX_DEPTH, MAX_MESSAGE, message_len};
pub use decode::{Entry, decode_entry, decode_entry_ber};
use pool::Pool;
use settings::{GroupSearch, Settings, group_filter, settings, user_filter};

/// How many service-bound connections a connector keeps (and uses at once).
pub const POOL_SIZE: usize = 4;
/// How many user binds (each on its own short-lived connection) may run at once.
pub const MAX_USER_BINDS: usize = 16;
/// The longest user name sent to the directory (longer ones are wrong credentials).
pub const MAX_USERNAME: usize = 1024;
/// The most groups a user gets (more are dropped, with a warning).
pub const MAX_GROUPS: usize = 1000;
/// The deepest `recursionGroupAttr` nesting followed.
pub const MAX_GROUP_DEPTH: usize = 32;

// ---------------------------------------------------------------------------------------------
// The connector.

/// An `ldap` connector.
#[derive(Clone)]
pub struct LdapConnector {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LdapConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapConnector")
            .field("settings", &self.inner.s)
            .finish_non_exhaustive()
    }
}

struct Inner {
    s: Settings,
    pool: Pool,
}

/// Builds the connector of one Dex `ldap` entry (its `config`, env-expanded).
pub fn open(id: &str, config: serde_json::Value, ctx: &OpenContext) -> Result<ConnectorKind, Vec<ConfigProblem>> {
    Ok(ConnectorKind::Password(Arc::new(build(id, config, ctx)?)))
}

/// Like [`open`], returning the concrete connector.
pub fn build(id: &str, config: serde_json::Value, ctx: &OpenContext) -> Result<LdapConnector, Vec<ConfigProblem>> {
    let s = settings(id, config, ctx)?;
    Ok(LdapConnector {
        inner: Arc::new(Inner {
            pool: Pool::new(POOL_SIZE, MAX_USER_BINDS),
            s,
        }),
    })
}

/// What the connector keeps with each refresh token.
#[derive(serde::Serialize, Deserialize)]
struct RefreshData {
    dn: String,
    username: String,
}

/// The outcome of a user search.
enum Found {
    None,
    One(Box<Entry>),
    Many(usize),
}

/// Cuts a directory's diagnostic text for a log line.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(200).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// Maps a library error to a connector error, and says whether the connection is gone (worth
/// one retry on a fresh connection when it came from the pool).
fn failure(host: &str, e: LdapError) -> (ConnectorError, bool) {
    match e {
        LdapError::Timeout { .. } => (ConnectorError::Timeout, false),
        LdapError::LdapResult { result } => (
            ConnectorError::Unreachable(format!("{host}: result {}: {}", result.rc, clip(&result.text))),
            false,
        ),
        LdapError::Io { source } => (ConnectorError::Unreachable(format!("{host}: {source}")), true),
        LdapError::FilterParsing => (
            ConnectorError::Misconfigured(format!("{host}: a search filter does not parse")),
            false,
        ),
        other => (
            ConnectorError::Unreachable(format!("{host}: connection lost: {other}")),
            true,
        ),
    }
}

impl Inner {
    fn base_error(&self, what: &str, r: &ldap3::LdapResult) -> ConnectorError {
        ConnectorError::Upstream(format!("{}: {what}: result {}: {}", self.s.host, r.rc, clip(&r.text)))
    }

    /// One search on a service-bound connection from the pool; a connection that turns out to
    /// be closed (the server's idle timeout) is replaced once. At most `cap` entries are read.
    async fn search(
        &self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
        cap: usize,
    ) -> Result<pool::Searched, ConnectorError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut lease = self.pool.service(&self.s).await?;
            tracing::debug!(connector = %self.s.id, base, filter, "ldap search");
            let run = pool::search(lease.ldap(), &self.s.host, base, scope, filter, attrs, cap);
            match tokio::time::timeout(self.s.timeout, run).await {
                Err(_) => return Err(ConnectorError::Timeout),
                Ok(Ok(found)) => {
                    if !found.more {
                        lease.release();
                    }
                    return Ok(found);
                }
                Ok(Err((err, lost))) => {
                    if lost && lease.reused() && attempt == 1 {
                        tracing::debug!(connector = %self.s.id, "pooled ldap connection was closed; retrying on a new one");
                        continue;
                    }
                    return Err(err);
                }
            }
        }
    }

    fn user_attrs(&self) -> Vec<&str> {
        let u = &self.s.user;
        let mut attrs: Vec<&str> = vec![u.id_attr.as_str(), u.email_attr.as_str()];
        if let Some(g) = &self.s.groups {
            attrs.extend(g.matchers.iter().map(|m| m.user_attr.as_str()));
        }
        attrs.push(&u.name_attr);
        attrs.push(&u.preferred_username_attr);
        let mut seen = HashSet::new();
        attrs.retain(|a| !a.is_empty() && seen.insert(a.to_ascii_lowercase()));
        attrs
    }

    async fn find_user(&self, username: &str) -> Result<Found, ConnectorError> {
        let u = &self.s.user;
        let filter = user_filter(u, username);
        let attrs = self.user_attrs();
        let found = self.search(&u.base_dn, u.scope, &filter, &attrs, 2).await?;
        let (mut entries, more) = (found.entries, found.more);
        match found.rc {
            0 => {}
            // sizeLimitExceeded: the server stopped early, so the name is not known to be unique.
            4 if !entries.is_empty() => return Ok(Found::Many(entries.len())),
            32 => {
                return Err(ConnectorError::Misconfigured(format!(
                    "userSearch.baseDN {:?} does not exist on {}",
                    u.base_dn, self.s.host
                )));
            }
            rc => {
                return Err(ConnectorError::Upstream(format!(
                    "{}: user search failed with result {rc}",
                    self.s.host
                )));
            }
        }
        if more || entries.len() > 1 {
            return Ok(Found::Many(entries.len()));
        }
        match entries.pop() {
            None => Ok(Found::None),
            Some(e) if e.dn.is_empty() => Err(ConnectorError::Upstream(format!(
                "{}: the user search returned an entry without a DN",
                self.s.host
            ))),
            Some(e) => Ok(Found::One(Box::new(e))),
        }
    }

    /// Binds as `dn` on a fresh connection. `Ok(false)`: wrong password (49) or a constraint
    /// (19: locked, expired), as Dex reads them.
    async fn bind_as(&self, dn: &str, password: &str) -> Result<bool, ConnectorError> {
        let mut conn = self.pool.user(&self.s).await?;
        let bind = conn.ldap().simple_bind(dn, password);
        let result = match tokio::time::timeout(self.s.timeout, bind).await {
            Err(_) => return Err(ConnectorError::Timeout),
            Ok(Err(e)) => return Err(failure(&self.s.host, e).0),
            Ok(Ok(r)) => r,
        };
        conn.close().await;
        match result.rc {
            0 => Ok(true),
            49 | 19 => {
                tracing::info!(connector = %self.s.id, dn, rc = result.rc, "ldap: the directory refused the user's password");
                Ok(false)
            }
            _ => Err(self.base_error(&format!("bind as {dn:?}"), &result)),
        }
    }

    fn identity(&self, e: &Entry) -> Result<UpstreamIdentity, ConnectorError> {
        let u = &self.s.user;
        let mut missing = Vec::new();
        let mut get = |attr: &str| -> Result<String, ConnectorError> {
            match e.first_text(attr).map_err(ConnectorError::Misconfigured)? {
                Some(v) if !v.is_empty() => Ok(v),
                _ => {
                    missing.push(attr.to_owned());
                    Ok(String::new())
                }
            }
        };
        let user_id = get(&u.id_attr)?;
        let username = if u.name_attr.is_empty() {
            String::new()
        } else {
            get(&u.name_attr)?
        };
        let preferred_username = if u.preferred_username_attr.is_empty() {
            String::new()
        } else {
            get(&u.preferred_username_attr)?
        };
        let email = if u.email_suffix.is_empty() {
            get(&u.email_attr)?
        } else {
            format!("{username}@{}", u.email_suffix)
        };
        if !missing.is_empty() {
            return Err(ConnectorError::Misconfigured(format!(
                "entry {:?} lacks the required attribute(s) {missing:?}",
                e.dn
            )));
        }
        Ok(UpstreamIdentity {
            user_id,
            username,
            preferred_username,
            email,
            email_verified: true,
            groups: Vec::new(),
            connector_data: None,
        })
    }

    async fn group_query(&self, g: &GroupSearch, attr: &str, value: &str) -> Result<Vec<Entry>, ConnectorError> {
        let filter = group_filter(g, attr, value);
        let found = self
            .search(&g.base_dn, g.scope, &filter, &[g.name_attr.as_str()], MAX_GROUPS)
            .await?;
        let more = found.more || found.rc == 4;
        match found.rc {
            // sizeLimitExceeded (Active Directory's MaxPageSize): the groups sent are kept.
            0 | 4 => {}
            // Dex: a missing base is no groups.
            32 => {
                tracing::info!(connector = %self.s.id, filter, "ldap: group search base does not exist: no groups");
                return Ok(Vec::new());
            }
            rc => {
                return Err(ConnectorError::Upstream(format!(
                    "{}: group search failed with result {rc}",
                    self.s.host
                )));
            }
        }
        if more {
            tracing::warn!(connector = %self.s.id, filter, "ldap: more groups match than were read ({} kept)", found.entries.len());
        }
        Ok(found.entries)
    }

    fn group_name(&self, g: &GroupSearch, e: &Entry) -> Result<String, ConnectorError> {
        match e.first_text(&g.name_attr).map_err(ConnectorError::Misconfigured)? {
            Some(n) if !n.is_empty() => Ok(n),
            _ => Err(ConnectorError::Misconfigured(format!(
                "group entry {:?} lacks the attribute {:?} (groupSearch.nameAttr)",
                e.dn, g.name_attr
            ))),
        }
    }

    /// Dex's `groups`: for each matcher, for each value of the user's `userAttr`, the groups
    /// whose `groupAttr` holds it; with `recursionGroupAttr`, their parents too (by DN), until
    /// no new group appears. Names de-duplicated, in order found.
    async fn groups(&self, user: &Entry) -> Result<Vec<String>, ConnectorError> {
        let Some(g) = &self.s.groups else {
            return Ok(Vec::new());
        };
        let mut names: Vec<String> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for m in &g.matchers {
            let values = user.texts(&m.user_attr).map_err(ConnectorError::Misconfigured)?;
            let mut level: Vec<Entry> = Vec::new();
            for v in &values {
                level.extend(self.group_query(g, &m.group_attr, v).await?);
            }
            let mut depth = 0;
            while !level.is_empty() {
                let mut next = Vec::new();
                for group in &level {
                    let name = self.group_name(g, group)?;
                    if !seen.insert(name.clone()) {
                        continue;
                    }
                    if names.len() >= MAX_GROUPS {
                        tracing::warn!(connector = %self.s.id, dn = %user.dn, "ldap: user is in more than {MAX_GROUPS} groups; the rest are dropped");
                        return Ok(names);
                    }
                    names.push(name);
                    if !m.recursion_group_attr.is_empty() {
                        next.extend(self.group_query(g, &m.recursion_group_attr, &group.dn).await?);
                    }
                }
                depth += 1;
                if depth > MAX_GROUP_DEPTH && !next.is_empty() {
                    tracing::warn!(connector = %self.s.id, dn = %user.dn, "ldap: groups nested deeper than {MAX_GROUP_DEPTH}; deeper parents are dropped");
                    break;
                }
                level = next;
            }
        }
        Ok(names)
    }

    async fn login(
        &self,
        scopes: Scopes,
        username: &str,
        password: &str,
    ) -> Result<Option<UpstreamIdentity>, ConnectorError> {
        let entry = match self.find_user(username).await? {
            Found::None => {
                tracing::info!(connector = %self.s.id, username, "ldap: no entry matches the user name");
                return Ok(None);
            }
            Found::Many(n) => {
                tracing::warn!(
                    connector = %self.s.id,
                    username,
                    "ldap: the user name matches {}{n} entries under {:?}: refusing the login (fix the directory or userSearch.filter)",
                    if n >= 2 { "at least " } else { "" },
                    self.s.user.base_dn
                );
                return Err(ConnectorError::Ambiguous(username.to_owned()));
            }
            Found::One(e) => e,
        };
        if !self.bind_as(&entry.dn, password).await? {
            return Ok(None);
        }
        let mut ident = self.identity(&entry)?;
        if scopes.groups {
            ident.groups = self.groups(&entry).await?;
        }
        let data = RefreshData {
            dn: entry.dn.clone(),
            username: username.to_owned(),
        };
        ident.connector_data = serde_json::to_value(&data).ok();
        Ok(Some(ident))
    }

    async fn refresh(&self, scopes: Scopes, identity: &UpstreamIdentity) -> Result<UpstreamIdentity, ConnectorError> {
        let data: RefreshData = identity
            .connector_data
            .clone()
            .and_then(|v| serde_json::from_value(v).ok())
            // Not a statement about the user: only this refresh chain ends.
            .ok_or_else(|| ConnectorError::Misconfigured("the refresh token carries no LDAP refresh data".into()))?;
        let entry = match self.find_user(&data.username).await? {
            Found::None => return Err(ConnectorError::Revoked(format!("user not found {:?}", data.username))),
            // Not a statement about the user either (someone else's entry may be the new one):
            // this chain ends, the user's other credentials do not.
            Found::Many(_) => return Err(ConnectorError::Ambiguous(data.username)),
            Found::One(e) => e,
        };
        if !entry.dn.eq_ignore_ascii_case(&data.dn) {
            return Err(ConnectorError::Revoked(format!(
                "refresh for username {:?} expected DN {:?} got {:?}",
                data.username, data.dn, entry.dn
            )));
        }
        let mut ident = self.identity(&entry)?;
        if !identity.user_id.is_empty() && ident.user_id != identity.user_id {
            return Err(ConnectorError::Revoked(format!(
                "the entry {:?} has a new {} (the account was replaced)",
                entry.dn, self.s.user.id_attr
            )));
        }
        if scopes.groups {
            ident.groups = self.groups(&entry).await?;
        }
        ident.connector_data = identity.connector_data.clone();
        Ok(ident)
    }
}

/// Runs `work` in its own task, so a panic inside the LDAP library (it panics on some malformed
/// answers) becomes an error, not a dead request.
async fn contained<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, ConnectorError>> + Send + 'static,
) -> Result<T, ConnectorError> {
    match tokio::spawn(work).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("ldap: the exchange with the directory failed: {e}");
            Err(ConnectorError::Upstream(
                "the directory's answer could not be decoded".into(),
            ))
        }
    }
}

#[async_trait]
impl PasswordConnector for LdapConnector {
    fn prompt(&self) -> &str {
        &self.inner.s.prompt
    }

    async fn login(
        &self,
        scopes: Scopes,
        username: &str,
        password: &str,
    ) -> Result<Option<UpstreamIdentity>, ConnectorError> {
        // An empty password would be an unauthenticated bind, which directories accept.
        if password.is_empty() || username.is_empty() || username.len() > MAX_USERNAME {
            return Ok(None);
        }
        let inner = self.inner.clone();
        let username = username.to_owned();
        let password = Zeroizing::new(password.to_owned());
        let timeout = inner.s.timeout;
        contained(super::within(timeout, async move {
            inner.login(scopes, &username, &password).await
        }))
        .await
    }

    async fn refresh(&self, scopes: Scopes, identity: &UpstreamIdentity) -> Result<UpstreamIdentity, ConnectorError> {
        let inner = self.inner.clone();
        let identity = identity.clone();
        let timeout = inner.s.timeout;
        contained(super::within(
            timeout,
            async move { inner.refresh(scopes, &identity).await },
        ))
        .await
    }
}

#[cfg(test)]
mod tests;
