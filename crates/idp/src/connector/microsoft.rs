//! The `microsoft` connector (Entra ID, Dex v2.45.1's `connector/microsoft`): the code flow
//! against `{apiURL}/{tenant}/oauth2/v2.0/`, the user from Graph `/me` (email =
//! `userPrincipalName`), groups from `getMemberGroups` + `getByIds`, and refresh through the
//! upstream refresh token.
//!
//! Invariants: the user is whoever Graph `/me` says the access token belongs to; a login or
//! refresh ends within the connector's `timeout` (the whole exchange, every Graph page
//! included); Graph pages are followed only on Graph's own origin (the access token never goes
//! anywhere else) and at most [`MAX_PAGES`] of them; group names are looked up in batches of
//! at most [`BATCH`] ids, as Graph requires; `groups:` with a tenant whose groups cannot be read
//! (`common`, `consumers`, `organizations`) is refused (Dex would let everyone in); the client
//! secret and the upstream tokens are never logged.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};

use kfsec_types::{Clock, Rng, UnixTime};

use super::config::{ConfigProblem, OpenContext, parse, unknown_keys};
use super::upstream::{Answer, TlsSettings, Upstream};
use super::{CallbackConnector, ConnectorError, ConnectorKind, LoginRedirect, Scopes, UpstreamIdentity};

/// Graph pages followed in one login (`getMemberGroups` and `getByIds` together).
pub const MAX_PAGES: usize = 64;
/// Group ids a user may have (Graph's own cap for `getMemberGroups` is 11,000).
pub const MAX_GROUPS: usize = 11_000;
/// Ids per `getByIds` request (Graph refuses more).
pub const BATCH: usize = 1000;
/// The largest Graph page read: `getByIds` answers with full objects (`$select` is not
/// available there), 1–2 KB per group and more with long membership rules, so a batch of
/// [`BATCH`] groups is well above the 1 MiB other upstream answers are held to.
pub const MAX_GRAPH_PAGE: usize = 8 * 1024 * 1024;

const SCOPE_USER: &str = "user.read";
const SCOPE_GROUPS: &str = "directory.read.all";
const SCOPE_OFFLINE: &str = "offline_access";
/// Tenants that are not one directory: Graph groups cannot be read for them.
const MULTI_TENANTS: [&str; 3] = ["common", "consumers", "organizations"];

/// How group ids become group names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
enum GroupNameFormat {
    /// Display names (`getByIds`).
    #[default]
    Name,
    /// Object ids as Graph returns them.
    Id,
}

/// Which Graph field becomes `preferred_username` (Dex master's `preferredUsernameField`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum PreferredUsername {
    #[serde(rename = "name")]
    Name,
    #[serde(rename = "email")]
    Email,
    #[serde(rename = "mailNickname")]
    MailNickname,
    #[serde(rename = "onPremisesSamAccountName")]
    OnPremisesSamAccountName,
}

/// Dex's `microsoft` config, as Dex spells it, plus kfsec's `timeout`.
#[derive(Deserialize)]
struct Config {
    #[serde(rename = "clientID", default)]
    client_id: String,
    #[serde(rename = "clientSecret", default)]
    client_secret: String,
    /// Dex master: a file holding a federated credential (a JWT, e.g. AKS workload identity's
    /// `AZURE_FEDERATED_TOKEN_FILE`), read at each token request, instead of a secret.
    #[serde(rename = "clientAssertion", default)]
    client_assertion: String,
    #[serde(rename = "redirectURI", default)]
    redirect_uri: String,
    #[serde(default)]
    tenant: String,
    #[serde(rename = "onlySecurityGroups", default)]
    only_security_groups: bool,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(rename = "groupNameFormat", default)]
    group_name_format: Option<GroupNameFormat>,
    #[serde(rename = "useGroupsAsWhitelist", default)]
    use_groups_as_whitelist: bool,
    #[serde(rename = "emailToLowercase", default)]
    email_to_lowercase: bool,
    #[serde(rename = "apiURL", default)]
    api_url: String,
    #[serde(rename = "graphURL", default)]
    graph_url: String,
    #[serde(rename = "promptType", default)]
    prompt_type: String,
    #[serde(rename = "domainHint", default)]
    domain_hint: String,
    #[serde(default)]
    scopes: Vec<String>,
    /// Dex master: kfsec always looks names up in batches, so both values are accepted.
    #[serde(rename = "batchGroupLookups", default)]
    batch_group_lookups: Option<bool>,
    #[serde(rename = "preferredUsernameField", default)]
    preferred_username_field: Option<PreferredUsername>,
    /// kfsec: the bound on a whole login or refresh (Go duration).
    #[serde(default, deserialize_with = "kfsec_types::config::opt_duration")]
    timeout: Option<Duration>,
    #[serde(flatten)]
    extra: BTreeMap<String, serde_json::Value>,
}

const HINTS: [(&str, &str); 3] = [
    (
        "issuer",
        "the microsoft connector has no issuer: set tenant (and apiURL only for a sovereign cloud)",
    ),
    (
        "rootCAs",
        "the microsoft connector always verifies Microsoft's certificates against the system roots",
    ),
    (
        "insecureSkipVerify",
        "the microsoft connector always verifies Microsoft's certificates",
    ),
];

/// Builds the `microsoft` connector `id` from its Dex `config`.
pub fn open(id: &str, config: serde_json::Value, ctx: &OpenContext) -> Result<ConnectorKind, Vec<ConfigProblem>> {
    Ok(ConnectorKind::Callback(Arc::new(build(id, config, ctx)?)))
}

fn build(id: &str, config: serde_json::Value, ctx: &OpenContext) -> Result<Microsoft, Vec<ConfigProblem>> {
    let c: Config = parse(config)?;
    let mut problems = unknown_keys("microsoft", "", &c.extra, &HINTS);
    let mut need = |field: &str, value: &str| {
        if value.trim().is_empty() {
            problems.push(ConfigProblem::new(field, "required"));
        }
    };
    need("clientID", &c.client_id);
    let credential = match (c.client_secret.is_empty(), c.client_assertion.is_empty()) {
        (false, true) => Some(Credential::Secret(Hidden(c.client_secret))),
        (true, false) => match read_assertion(&c.client_assertion) {
            Ok(_) => Some(Credential::Assertion(c.client_assertion)),
            Err(e) => {
                problems.push(ConfigProblem::new("clientAssertion", e));
                None
            }
        },
        (true, true) => {
            problems.push(ConfigProblem::new(
                "clientSecret",
                "required (or clientAssertion: a file with a federated credential)",
            ));
            None
        }
        (false, false) => {
            problems.push(ConfigProblem::new(
                "clientAssertion",
                "set clientSecret or clientAssertion, not both (Dex would use the assertion and ignore the secret)",
            ));
            None
        }
    };
    let expected = ctx.callback();
    if c.redirect_uri != expected {
        problems.push(ConfigProblem::new(
            "redirectURI",
            format!(
                "must be {expected:?} (the issuer followed by /callback), and registered so in the app registration; it is {:?}",
                c.redirect_uri
            ),
        ));
    }
    // Unset, Dex means `common`: every Microsoft account in the world (any organization's and
    // every personal one) may log in. Kept for Dex configs (Charmed Kubeflow's guide leaves it
    // out), and said at start as a warning.
    let tenant = if c.tenant.is_empty() {
        "common".to_owned()
    } else {
        c.tenant.clone()
    };
    if c.tenant.is_empty() {
        tracing::warn!(
            connector = id,
            "microsoft connector: tenant unset, so Dex's default common applies: every Microsoft account (any organization's, any personal one) can log in; set tenant to your tenant id to let in only your directory"
        );
    }
    if !tenant
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        problems.push(ConfigProblem::new(
            "tenant",
            "must be a tenant id (a GUID), a verified domain, or common, consumers or organizations",
        ));
    }
    let org_tenant = !MULTI_TENANTS.contains(&tenant.as_str());
    if !org_tenant && !c.groups.is_empty() {
        problems.push(ConfigProblem::new(
            "groups",
            format!(
                "group membership can only be read for one directory, not for tenant {tenant:?}: set tenant to your directory's tenant id (Dex would skip the check and let every user in)"
            ),
        ));
    }
    let api_url = base_url("apiURL", &c.api_url, "https://login.microsoftonline.com", &mut problems);
    let graph_url = base_url("graphURL", &c.graph_url, "https://graph.microsoft.com", &mut problems);
    if c.timeout == Some(Duration::ZERO) {
        problems.push(ConfigProblem::new("timeout", "must be longer than 0s"));
    }
    let timeout = c.timeout.unwrap_or(ctx.default_timeout);
    let upstream = match Upstream::new(&TlsSettings::default(), timeout) {
        Ok(u) => Some(u),
        Err(e) => {
            problems.push(ConfigProblem::new("", e));
            None
        }
    };
    let (Some(upstream), Some(api_url), Some(graph_url), Some(credential), true) =
        (upstream, api_url, graph_url, credential, problems.is_empty())
    else {
        return Err(problems);
    };

    if !org_tenant {
        tracing::warn!(
            connector = id,
            tenant = %tenant,
            "microsoft connector: tenant {tenant:?} is not one directory, so groups are never read from Graph for its users (Dex skips them silently); set tenant to your tenant id to get groups"
        );
    }
    if c.use_groups_as_whitelist && c.groups.is_empty() {
        tracing::warn!(
            connector = id,
            "microsoft connector: useGroupsAsWhitelist without groups emits no groups at all (as in Dex)"
        );
    }
    if c.batch_group_lookups == Some(false) {
        tracing::info!(
            connector = id,
            "microsoft connector: batchGroupLookups: false is not needed — kfsec always looks group names up in batches of {BATCH}, so users in more groups can log in"
        );
    }
    let graph_origin = url::Url::parse(&graph_url).map(|u| u.origin()).ok();
    Ok(Microsoft {
        id: id.to_owned(),
        client_id: c.client_id,
        credential,
        redirect_uri: c.redirect_uri,
        auth_url: format!("{api_url}/{tenant}/oauth2/v2.0/authorize"),
        token_url: format!("{api_url}/{tenant}/oauth2/v2.0/token"),
        graph_url,
        graph_origin,
        org_tenant,
        only_security_groups: c.only_security_groups,
        groups: c.groups,
        group_name_format: c.group_name_format.unwrap_or_default(),
        use_groups_as_whitelist: c.use_groups_as_whitelist,
        email_to_lowercase: c.email_to_lowercase,
        prompt_type: c.prompt_type,
        domain_hint: c.domain_hint,
        scopes: c.scopes,
        preferred_username: c.preferred_username_field,
        upstream,
        timeout,
        clock: ctx.clock.clone(),
    })
}

/// `value` (or `default` when empty) as an http(s) base URL without a trailing slash.
fn base_url(field: &str, value: &str, default: &str, problems: &mut Vec<ConfigProblem>) -> Option<String> {
    let s = if value.is_empty() { default } else { value }.trim_end_matches('/');
    match url::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "https" | "http") && u.host().is_some() && u.query().is_none() => {
            if u.scheme() == "http" && !matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]")) {
                tracing::warn!(field, url = s, "microsoft connector: plain http to a non-loopback host");
            }
            Some(s.to_owned())
        }
        _ => {
            problems.push(ConfigProblem::new(field, format!("{s:?} is not an http(s) URL")));
            None
        }
    }
}

/// The connector.
struct Microsoft {
    id: String,
    client_id: String,
    credential: Credential,
    redirect_uri: String,
    auth_url: String,
    token_url: String,
    graph_url: String,
    graph_origin: Option<url::Origin>,
    org_tenant: bool,
    only_security_groups: bool,
    groups: Vec<String>,
    group_name_format: GroupNameFormat,
    use_groups_as_whitelist: bool,
    email_to_lowercase: bool,
    prompt_type: String,
    domain_hint: String,
    scopes: Vec<String>,
    preferred_username: Option<PreferredUsername>,
    upstream: Upstream,
    timeout: Duration,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Microsoft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Microsoft")
            .field("id", &self.id)
            .field("client_id", &self.client_id)
            .field("credential", &self.credential)
            .field("token_url", &self.token_url)
            .field("graph_url", &self.graph_url)
            .field("groups", &self.groups)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// How the client proves itself to the token endpoint.
#[derive(Debug)]
enum Credential {
    /// `clientSecret` (sent in the form body).
    Secret(Hidden),
    /// `clientAssertion`: a file whose content is sent as a JWT bearer client assertion.
    Assertion(String),
}

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The largest client assertion file read.
const MAX_ASSERTION: usize = 64 * 1024;

/// Reads the `clientAssertion` file now (at startup, to report a wrong path).
fn read_assertion(path: &str) -> Result<String, String> {
    std::fs::read(path)
        .map_err(|e| unreadable(path, &e))
        .and_then(|b| assertion_text(path, b))
}

fn unreadable(path: &str, e: &std::io::Error) -> String {
    format!("cannot read the client assertion file {path:?}: {e}")
}

/// The assertion in `bytes` (trimmed), refused if empty, huge or not text.
fn assertion_text(path: &str, bytes: Vec<u8>) -> Result<String, String> {
    if bytes.len() > MAX_ASSERTION {
        return Err(format!(
            "client assertion file {path:?} is larger than {MAX_ASSERTION} bytes"
        ));
    }
    let text = String::from_utf8(bytes).map_err(|_| format!("client assertion file {path:?} is not text"))?;
    let text = text.trim();
    if text.is_empty() || text.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!("client assertion file {path:?} does not hold one token"));
    }
    Ok(text.to_owned())
}

/// A secret whose `Debug` shows nothing.
struct Hidden(String);

impl std::fmt::Debug for Hidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<hidden>")
    }
}

/// What the connector keeps to refresh a user (Dex's `connectorData`, same JSON).
#[derive(Serialize, Deserialize)]
struct ConnectorData {
    #[serde(rename = "accessToken", default)]
    access_token: String,
    #[serde(rename = "refreshToken", default)]
    refresh_token: String,
    /// RFC 3339; Go's zero time when unknown.
    #[serde(default)]
    expiry: String,
}

/// Go's zero `time.Time`, which Dex writes when a token has no expiry.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// The upstream's token answer.
#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<ExpiresIn>,
}

/// `expires_in` is a number from the v2.0 endpoint and a string from v1.0 (Go's oauth2 takes both).
#[derive(Deserialize)]
#[serde(untagged)]
enum ExpiresIn {
    Number(u64),
    Text(String),
}

/// An OAuth2 error answer.
#[derive(Deserialize, Default)]
struct OAuthErrorAnswer {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Graph's error shape: `{"error":{"code":…,"message":…}}`.
#[derive(Deserialize)]
struct GraphErrorAnswer {
    error: GraphError,
}

#[derive(Deserialize)]
struct GraphError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// Graph `/me`.
#[derive(Deserialize)]
struct Me {
    #[serde(default)]
    id: String,
    #[serde(rename = "displayName", default)]
    display_name: Option<String>,
    #[serde(rename = "userPrincipalName", default)]
    user_principal_name: Option<String>,
    #[serde(rename = "mailNickname", default)]
    mail_nickname: Option<String>,
    #[serde(rename = "onPremisesSamAccountName", default)]
    on_premises_sam_account_name: Option<String>,
}

/// One page of a Graph collection.
#[derive(Deserialize)]
struct Page<T> {
    #[serde(default = "Vec::new")]
    value: Vec<T>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
}

/// A directory object from `getByIds`.
#[derive(Deserialize)]
struct DirectoryObject {
    #[serde(default)]
    id: String,
    #[serde(rename = "displayName", default)]
    display_name: Option<String>,
}

/// Which exchange a token request belongs to (its `invalid_grant` means different things).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Login,
    Refresh,
}

/// Longest upstream-supplied text kept in an error (it is logged).
const MAX_ERROR_TEXT: usize = 300;

fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(MAX_ERROR_TEXT).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

impl Microsoft {
    fn groups_required(&self, groups_scope: bool) -> bool {
        self.org_tenant && (groups_scope || !self.groups.is_empty())
    }

    /// The scopes asked of Microsoft (Dex's rule: `scopes` or `user.read`, then
    /// `directory.read.all` when groups are read, `offline_access` when the client asked).
    fn upstream_scopes(&self, scopes: Scopes) -> String {
        let mut list: Vec<&str> = if self.scopes.is_empty() {
            vec![SCOPE_USER]
        } else {
            self.scopes.iter().map(String::as_str).collect()
        };
        if self.groups_required(scopes.groups) {
            list.push(SCOPE_GROUPS);
        }
        if scopes.offline_access {
            list.push(SCOPE_OFFLINE);
        }
        let mut seen = Vec::<String>::new();
        list.retain(|s| {
            let lower = s.to_ascii_lowercase();
            let fresh = !seen.contains(&lower);
            seen.push(lower);
            fresh
        });
        list.join(" ")
    }

    /// A token request (`grant` pairs plus the client's credentials and scopes).
    async fn token(
        &self,
        grant: &[(&str, &str)],
        scopes: Scopes,
        phase: Phase,
    ) -> Result<ConnectorData, ConnectorError> {
        let scope = self.upstream_scopes(scopes);
        let mut form = grant.to_vec();
        form.push(("scope", &scope));
        let assertion;
        let client = match &self.credential {
            Credential::Secret(secret) => Some((self.client_id.as_str(), secret.0.as_str(), false)),
            Credential::Assertion(path) => {
                assertion = tokio::fs::read(path)
                    .await
                    .map_err(|e| unreadable(path, &e))
                    .and_then(|b| assertion_text(path, b))
                    .map_err(ConnectorError::Misconfigured)?;
                form.push(("client_id", &self.client_id));
                form.push(("client_assertion_type", ASSERTION_TYPE));
                form.push(("client_assertion", &assertion));
                None
            }
        };
        let answer = self.upstream.post_form(&self.token_url, &form, client).await?;
        if !answer.ok() {
            let e: OAuthErrorAnswer = serde_json::from_slice(&answer.body).unwrap_or_default();
            let detail = format!(
                "token endpoint: HTTP {}: {}: {}",
                answer.status,
                clip(&e.error),
                clip(&e.error_description)
            );
            tracing::warn!(connector = %self.id, "microsoft: {detail}");
            return Err(match (phase, e.error.as_str()) {
                (Phase::Login, "invalid_grant") => ConnectorError::BadCallback(detail),
                (Phase::Refresh, "invalid_grant" | "interaction_required") => ConnectorError::Revoked(detail),
                _ => ConnectorError::Upstream(detail),
            });
        }
        let t: TokenAnswer = answer.json("token endpoint")?;
        if t.access_token.is_empty() {
            return Err(ConnectorError::Upstream("token endpoint: no access_token".into()));
        }
        let secs = match t.expires_in {
            Some(ExpiresIn::Number(n)) => Some(n),
            Some(ExpiresIn::Text(s)) => s.trim().parse().ok(),
            None => None,
        };
        Ok(ConnectorData {
            access_token: t.access_token,
            refresh_token: t.refresh_token.unwrap_or_default(),
            expiry: secs.map_or_else(
                || GO_ZERO_TIME.to_owned(),
                |s| self.clock.now().add(Duration::from_secs(s)).to_rfc3339(),
            ),
        })
    }

    /// Graph's error answer as a [`ConnectorError`] (`code: message`), logged.
    fn graph_failure(&self, what: &str, answer: &Answer) -> ConnectorError {
        let detail = match serde_json::from_slice::<GraphErrorAnswer>(&answer.body) {
            Ok(g) => format!("{what}: {}: {}", clip(&g.error.code), clip(&g.error.message)),
            Err(_) => format!("{what}: HTTP {} without a Graph error", answer.status),
        };
        tracing::warn!(connector = %self.id, status = answer.status, "microsoft: {detail}");
        ConnectorError::Upstream(detail)
    }

    /// Graph `/me`. On refresh, a user Graph no longer knows (404) is revoked.
    async fn me(&self, token: &str, phase: Phase) -> Result<Me, ConnectorError> {
        let mut select = String::from("id,displayName,userPrincipalName");
        match self.preferred_username {
            Some(PreferredUsername::MailNickname) => select.push_str(",mailNickname"),
            Some(PreferredUsername::OnPremisesSamAccountName) => select.push_str(",onPremisesSamAccountName"),
            _ => {}
        }
        let url = format!("{}/v1.0/me?$select={select}", self.graph_url);
        let answer = self.upstream.get(&url, Some(token)).await?;
        if answer.status == 404 && phase == Phase::Refresh {
            let e = self.graph_failure("get user", &answer);
            return Err(ConnectorError::Revoked(e.to_string()));
        }
        if answer.status != 200 {
            return Err(self.graph_failure("get user", &answer));
        }
        let me: Me = answer.json("Graph /me")?;
        if me.id.is_empty() {
            return Err(ConnectorError::Upstream("Graph /me: no id".into()));
        }
        if me.user_principal_name.as_deref().unwrap_or("").is_empty() {
            return Err(ConnectorError::Upstream("Graph /me: no userPrincipalName".into()));
        }
        Ok(me)
    }

    /// Whether `link` may be followed with the access token (Graph's own origin only).
    fn next_page(&self, link: Option<String>, pages: &mut usize) -> Result<Option<String>, ConnectorError> {
        let Some(link) = link.filter(|l| !l.is_empty()) else {
            return Ok(None);
        };
        let same_origin = url::Url::parse(&link)
            .ok()
            .is_some_and(|u| Some(u.origin()) == self.graph_origin);
        if !same_origin {
            return Err(ConnectorError::Upstream(format!(
                "Graph sent a next page outside {}: {}",
                self.graph_url,
                clip(&link)
            )));
        }
        *pages += 1;
        if *pages > MAX_PAGES {
            return Err(ConnectorError::Upstream(format!(
                "Graph sent more than {MAX_PAGES} pages"
            )));
        }
        Ok(Some(link))
    }

    /// `POST url` with `body`, following `@odata.nextLink` pages.
    async fn collect<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        token: &str,
        url: String,
        body: &serde_json::Value,
        pages: &mut usize,
        out: &mut Vec<T>,
    ) -> Result<(), ConnectorError> {
        let mut next = Some(url);
        while let Some(url) = next {
            let req = self
                .upstream
                .client()
                .post(&url)
                .header(reqwest::header::ACCEPT, "application/json")
                .bearer_auth(token)
                .json(body);
            let answer = self.upstream.send_capped(req, MAX_GRAPH_PAGE).await?;
            if answer.status != 200 {
                return Err(self.graph_failure(what, &answer));
            }
            let page: Page<T> = answer.json(what)?;
            out.extend(page.value);
            if out.len() > MAX_GROUPS {
                return Err(ConnectorError::Upstream(format!(
                    "{what}: more than {MAX_GROUPS} groups"
                )));
            }
            next = self.next_page(page.next_link, pages)?;
        }
        Ok(())
    }

    /// The user's groups (ids or names), checked against and trimmed to `groups:`.
    async fn groups(&self, token: &str, user_id: &str) -> Result<Vec<String>, ConnectorError> {
        let mut pages = 0;
        let mut ids: Vec<String> = Vec::new();
        let body = serde_json::json!({ "securityEnabledOnly": self.only_security_groups });
        let url = format!("{}/v1.0/me/getMemberGroups", self.graph_url);
        self.collect("get groups", token, url, &body, &mut pages, &mut ids)
            .await?;
        let mut seen = std::collections::HashSet::new();
        ids.retain(|id| seen.insert(id.clone()));
        let groups = match self.group_name_format {
            GroupNameFormat::Id => ids,
            GroupNameFormat::Name => self.group_names(token, &ids, &mut pages).await?,
        };
        if !self.groups.is_empty() && !groups.iter().any(|g| self.groups.contains(g)) {
            tracing::info!(connector = %self.id, user_id, "microsoft: user is in none of the required groups");
            return Err(ConnectorError::NotInAllowedGroups);
        }
        if self.use_groups_as_whitelist {
            return Ok(groups.into_iter().filter(|g| self.groups.contains(g)).collect());
        }
        Ok(groups)
    }

    /// Names of the group `ids` (in their order), [`BATCH`] ids per request.
    async fn group_names(&self, token: &str, ids: &[String], pages: &mut usize) -> Result<Vec<String>, ConnectorError> {
        let url = format!("{}/v1.0/directoryObjects/getByIds", self.graph_url);
        let mut names: HashMap<String, String> = HashMap::with_capacity(ids.len());
        for batch in ids.chunks(BATCH) {
            let body = serde_json::json!({ "ids": batch, "types": ["group"] });
            let mut objects: Vec<DirectoryObject> = Vec::new();
            self.collect("get group names", token, url.clone(), &body, pages, &mut objects)
                .await?;
            for o in objects {
                if let Some(name) = o.display_name.filter(|n| !n.is_empty()) {
                    names.insert(o.id, name);
                }
            }
        }
        Ok(ids.iter().filter_map(|id| names.remove(id)).collect())
    }

    /// The identity Graph gives for `tokens` (and the groups, when needed).
    async fn identity(
        &self,
        scopes: Scopes,
        tokens: ConnectorData,
        phase: Phase,
    ) -> Result<UpstreamIdentity, ConnectorError> {
        let me = self.me(&tokens.access_token, phase).await?;
        let upn = me.user_principal_name.unwrap_or_default();
        let email = if self.email_to_lowercase {
            upn.to_lowercase()
        } else {
            upn
        };
        let username = me.display_name.unwrap_or_default();
        let preferred_username = match self.preferred_username {
            None => String::new(),
            Some(PreferredUsername::Name) => username.clone(),
            Some(PreferredUsername::Email) => email.clone(),
            Some(PreferredUsername::MailNickname) => me.mail_nickname.unwrap_or_default(),
            Some(PreferredUsername::OnPremisesSamAccountName) => me.on_premises_sam_account_name.unwrap_or_default(),
        };
        let groups = if self.groups_required(scopes.groups) {
            self.groups(&tokens.access_token, &me.id).await?
        } else {
            Vec::new()
        };
        let connector_data = serde_json::to_value(&tokens)
            .map_err(|e| ConnectorError::Upstream(format!("cannot keep the upstream token: {e}")))?;
        Ok(UpstreamIdentity {
            user_id: me.id,
            username,
            preferred_username,
            email,
            email_verified: true,
            groups,
            connector_data: Some(connector_data),
        })
    }

    /// Whether the stored access token is still good for a while.
    fn fresh(&self, data: &ConnectorData) -> bool {
        const SKEW: Duration = Duration::from_secs(30);
        match kfsec_types::time::parse_rfc3339(&data.expiry) {
            // Go's zero time (or anything before 1970): no expiry known; Go's oauth2 then trusts it.
            Some(secs) if secs <= 0 => true,
            Some(secs) => {
                let expiry = UnixTime::from_secs(u64::try_from(secs).unwrap_or(0));
                self.clock.now().add(SKEW) < expiry
            }
            None => false,
        }
    }
}

#[async_trait]
impl CallbackConnector for Microsoft {
    async fn login_url(
        &self,
        scopes: Scopes,
        callback: &str,
        state: &str,
        rng: &dyn Rng,
    ) -> Result<LoginRedirect, ConnectorError> {
        super::check_callback(&self.redirect_uri, callback)?;
        let verifier = crate::secret::random_token(rng);
        let challenge = B64.encode(digest(&SHA256, verifier.as_bytes()));
        let mut url = url::Url::parse(&self.auth_url)
            .map_err(|e| ConnectorError::Misconfigured(format!("authorize URL: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("client_id", &self.client_id)
                .append_pair("redirect_uri", &self.redirect_uri)
                .append_pair("response_type", "code")
                .append_pair("scope", &self.upstream_scopes(scopes))
                .append_pair("state", state)
                .append_pair("code_challenge", &challenge)
                .append_pair("code_challenge_method", "S256");
            if !self.prompt_type.is_empty() {
                q.append_pair("prompt", &self.prompt_type);
            }
            if !self.domain_hint.is_empty() {
                q.append_pair("domain_hint", &self.domain_hint);
            }
        }
        Ok(LoginRedirect {
            url: url.into(),
            pending: serde_json::json!({ "codeVerifier": verifier }),
        })
    }

    async fn callback(
        &self,
        scopes: Scopes,
        callback: &str,
        pending: &serde_json::Value,
        query: &HashMap<String, String>,
    ) -> Result<UpstreamIdentity, ConnectorError> {
        super::check_callback(&self.redirect_uri, callback)?;
        if let Some(error) = query.get("error") {
            let description = query.get("error_description").map_or("", String::as_str);
            let detail = format!("{}: {}", clip(error), clip(description));
            tracing::warn!(connector = %self.id, "microsoft: the login came back with {detail}");
            return Err(match error.as_str() {
                "access_denied" | "consent_required" | "interaction_required" | "login_required" => {
                    ConnectorError::Denied(detail)
                }
                _ => ConnectorError::Upstream(detail),
            });
        }
        let code = query
            .get("code")
            .filter(|c| !c.is_empty())
            .ok_or_else(|| ConnectorError::BadCallback("no code".into()))?;
        let verifier = pending
            .get("codeVerifier")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| ConnectorError::BadCallback("no PKCE verifier kept for this login".into()))?;
        super::within(self.timeout, async {
            let grant = [
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", self.redirect_uri.as_str()),
                ("code_verifier", verifier),
            ];
            let tokens = self.token(&grant, scopes, Phase::Login).await?;
            self.identity(scopes, tokens, Phase::Login).await
        })
        .await
    }

    async fn refresh(&self, scopes: Scopes, identity: &UpstreamIdentity) -> Result<UpstreamIdentity, ConnectorError> {
        let data: ConnectorData = identity
            .connector_data
            .clone()
            .ok_or_else(|| ConnectorError::Revoked("no upstream token kept for this login".into()))
            .and_then(|v| {
                serde_json::from_value(v)
                    .map_err(|e| ConnectorError::Revoked(format!("unreadable upstream token record: {e}")))
            })?;
        super::within(self.timeout, async {
            // With a refresh token, always ask Microsoft: a disabled or deleted account, a revoked
            // session or a password reset then ends access now, not when the access token expires.
            let tokens = if !data.refresh_token.is_empty() {
                let grant = [("grant_type", "refresh_token"), ("refresh_token", data.refresh_token.as_str())];
                let mut fresh = self.token(&grant, scopes, Phase::Refresh).await?;
                if fresh.refresh_token.is_empty() {
                    fresh.refresh_token.clone_from(&data.refresh_token);
                }
                fresh
            } else if self.fresh(&data) {
                data
            } else {
                return Err(ConnectorError::Revoked(
                    "the upstream access token expired and Microsoft gave no refresh token (the client did not ask for offline_access)".into(),
                ));
            };
            let refreshed = match self.identity(scopes, tokens, Phase::Refresh).await {
                // Removed from every allowed group since the login: they may no longer log in.
                Err(ConnectorError::NotInAllowedGroups) => {
                    return Err(ConnectorError::Revoked(
                        "no longer a member of any of the required groups".into(),
                    ));
                }
                other => other?,
            };
            if refreshed.user_id != identity.user_id {
                return Err(ConnectorError::Revoked(format!(
                    "Graph /me now names user {:?}, not {:?}",
                    refreshed.user_id, identity.user_id
                )));
            }
            Ok(refreshed)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kfsec_types::SequenceRng;

    const ISSUER: &str = "https://kf.example.com/dex";

    fn ctx() -> OpenContext {
        OpenContext::new(ISSUER, Duration::from_secs(10))
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "clientID": "app",
            "clientSecret": "s3cret",
            "redirectURI": "https://kf.example.com/dex/callback",
        })
    }

    fn with(extra: serde_json::Value) -> serde_json::Value {
        let mut v = base();
        if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                m.insert(k.clone(), x.clone());
            }
        }
        v
    }

    fn problems(config: serde_json::Value) -> Vec<ConfigProblem> {
        match open("entra", config, &ctx()) {
            Ok(_) => Vec::new(),
            Err(p) => p,
        }
    }

    fn login_url(config: serde_json::Value, scopes: Scopes) -> url::Url {
        let Ok(ConnectorKind::Callback(c)) = open("entra", config, &ctx()) else {
            panic!("not a callback connector");
        };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let r = rt
            .block_on(c.login_url(
                scopes,
                "https://kf.example.com/dex/callback",
                "st",
                &SequenceRng::default(),
            ))
            .unwrap();
        url::Url::parse(&r.url).unwrap()
    }

    fn param(u: &url::Url, k: &str) -> Option<String> {
        u.query_pairs().find(|(n, _)| n == k).map(|(_, v)| v.into_owned())
    }

    #[test]
    fn every_dex_field_is_accepted() {
        let p = problems(with(serde_json::json!({
            "tenant": "3f2c1d7e-0000-4000-8000-000000000001",
            "onlySecurityGroups": true,
            "groups": ["admins"],
            "groupNameFormat": "id",
            "useGroupsAsWhitelist": true,
            "emailToLowercase": true,
            "apiURL": "https://login.microsoftonline.us/",
            "graphURL": "https://graph.microsoft.us",
            "promptType": "select_account",
            "domainHint": "example.com",
            "scopes": ["User.Read"],
            "batchGroupLookups": true,
            "preferredUsernameField": "mailNickname",
            "timeout": "5s",
        })));
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn mistakes_are_all_reported_with_their_paths() {
        let p = problems(serde_json::json!({
            "redirectURI": "https://kf.example.com/oauth2/callback",
            "tenant": "common",
            "groups": ["admins"],
            "clientAssertion": "/nonexistent/azure-identity-token",
            "apiURL": "ftp://x",
        }));
        let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        for f in ["clientID", "redirectURI", "groups", "clientAssertion", "apiURL"] {
            assert!(fields.contains(&f), "{f} missing in {p:?}");
        }
        let redirect = p.iter().find(|p| p.field == "redirectURI").unwrap();
        assert!(
            redirect.message.contains("\"https://kf.example.com/dex/callback\""),
            "{redirect:?}"
        );
        let assertion = p.iter().find(|p| p.field == "clientAssertion").unwrap();
        assert!(
            assertion.message.contains("/nonexistent/azure-identity-token"),
            "{assertion:?}"
        );
        // Secrets never appear in problems.
        assert!(!format!("{p:?}").contains("s3cret"));
    }

    #[test]
    fn bad_values_are_refused() {
        for (extra, field) in [
            (serde_json::json!({"groupNameFormat": "mail"}), "groupNameFormat"),
            (
                serde_json::json!({"preferredUsernameField": "upn"}),
                "preferredUsernameField",
            ),
            (serde_json::json!({"tenant": "../x?y"}), "tenant"),
            (
                serde_json::json!({"clientAssertion": "/etc/hostname"}),
                "clientAssertion",
            ),
            (serde_json::json!({"clientSecret": ""}), "clientSecret"),
            (serde_json::json!({"timeout": "0s"}), "timeout"),
            (serde_json::json!({"timeout": "soon"}), "timeout"),
            (
                serde_json::json!({"groups": ["a"], "tenant": "organizations"}),
                "groups",
            ),
        ] {
            let p = problems(with(extra.clone()));
            assert!(p.iter().any(|p| p.field == field), "{extra}: {p:?}");
        }
    }

    #[test]
    fn scopes_follow_dex_and_ask_for_groups_only_when_read() {
        let org = serde_json::json!({"tenant": "contoso.onmicrosoft.com"});
        let u = login_url(with(org.clone()), Scopes::default());
        assert_eq!(param(&u, "scope").unwrap(), "user.read");
        assert!(
            u.as_str()
                .starts_with("https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize?")
        );
        let u = login_url(
            with(org),
            Scopes {
                groups: true,
                offline_access: true,
            },
        );
        assert_eq!(
            param(&u, "scope").unwrap(),
            "user.read directory.read.all offline_access"
        );
        // tenant common: no groups, so no directory.read.all.
        let u = login_url(
            base(),
            Scopes {
                groups: true,
                offline_access: false,
            },
        );
        assert_eq!(param(&u, "scope").unwrap(), "user.read");
        assert!(u.path().starts_with("/common/"));
        // Configured scopes replace user.read; duplicates are dropped.
        let u = login_url(
            with(
                serde_json::json!({"scopes": ["User.Read", "offline_access"], "promptType": "login", "domainHint": "example.com"}),
            ),
            Scopes {
                groups: false,
                offline_access: true,
            },
        );
        assert_eq!(param(&u, "scope").unwrap(), "User.Read offline_access");
        assert_eq!(param(&u, "prompt").unwrap(), "login");
        assert_eq!(param(&u, "domain_hint").unwrap(), "example.com");
        assert_eq!(param(&u, "code_challenge_method").unwrap(), "S256");
        assert_eq!(param(&u, "state").unwrap(), "st");
    }

    #[test]
    fn connector_data_reads_dex_records_and_expiry_uses_the_clock() {
        let clock = kfsec_types::ManualClock::new(UnixTime::from_secs(1_796_464_000));
        let mut ctx = ctx();
        ctx.clock = clock.clone();
        let m = build("entra", base(), &ctx).unwrap();
        // Go writes nanoseconds and offsets: 11:00+01:00 is 10:00Z (1_796_464_800).
        let d: ConnectorData = serde_json::from_value(serde_json::json!({
            "accessToken": "a", "refreshToken": "r", "expiry": "2026-12-05T11:00:00.123456789+01:00"
        }))
        .unwrap();
        assert!(m.fresh(&d));
        clock.advance(Duration::from_secs(790));
        assert!(!m.fresh(&d), "within the skew: refresh");
        // Go's zero time: no expiry known.
        let d = ConnectorData {
            expiry: GO_ZERO_TIME.into(),
            ..d
        };
        assert!(m.fresh(&d));
        assert!(!m.fresh(&ConnectorData {
            expiry: "garbage".into(),
            ..d
        }));
        // Debug output never carries the secret.
        assert!(!format!("{m:?}").contains("s3cret"));
    }
}
