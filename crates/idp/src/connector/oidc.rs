//! Dex's `oidc` connector: logs users in through an upstream OpenID Connect provider (Keycloak,
//! Cognito, Entra ID, Okta, another kfsec) with the authorization code flow, and re-checks them
//! there on refresh. Every Dex field with Dex's meaning and defaults, plus `timeout`.
//!
//! Invariants: the upstream is found by discovery (fetched on first use, cached, fetched again
//! after a failure — a dead upstream never stops kfsec) and its `issuer` must be the configured
//! one (or `issuerAlias`); each login carries `state`, a fresh `nonce` and PKCE when the upstream
//! supports it; an ID token is accepted only after [`super::jwks::verify`] (signature with an
//! algorithm pinned by the key, `iss`, `aud`, `exp`/`iat`, `nonce`); userinfo claims are used only
//! when their `sub` is the ID token's; a refresh that the upstream refuses (`invalid_grant`) is
//! [`ConnectorError::Revoked`]; every method ends within the connector's timeout. The client
//! secret and upstream tokens are never logged and never in `Debug`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use parking_lot::RwLock;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use kfsec_types::{Clock, Rng, UnixTime};

use super::config::{ConfigProblem, OpenContext, parse, unknown_keys};
use super::jwks::{self, Expect, KeySet, TokenError};
use super::upstream::{Answer, TlsSettings, Upstream};
use super::{CallbackConnector, ConnectorError, ConnectorKind, LoginRedirect, Scopes, UpstreamIdentity};

/// After an ID token names a key the cached set lacks, the key set is fetched again at most
/// this often (a rotated key is picked up; a stream of bogus `kid`s cannot make kfsec hammer
/// the upstream).
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// Hosts whose token endpoints refuse HTTP Basic client authentication (Dex's list).
const BROKEN_BASIC_AUTH: [&str; 2] = ["okta.com", "oktapreview.com"];

/// Dex's text for the removed `hostedDomains` option.
const HOSTED_DOMAINS_REMOVED: &str =
    "support for the Hosted domains option had been deprecated and removed, consider switching to the Google connector";

/// How much of an upstream's free-text error description is kept (it goes to the log only).
const MAX_DESCRIPTION: usize = 200;

fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize, Default)]
struct Overrides {
    #[serde(default, rename = "tokenURL", deserialize_with = "nullable")]
    token_url: String,
    #[serde(default, rename = "authURL", deserialize_with = "nullable")]
    auth_url: String,
    #[serde(default, rename = "jwksURL", deserialize_with = "nullable")]
    jwks_url: String,
    #[serde(default, rename = "userInfoURL", deserialize_with = "nullable")]
    user_info_url: String,
    #[serde(default, rename = "deviceAuthURL", deserialize_with = "nullable")]
    device_auth_url: String,
    #[serde(default, rename = "endSessionURL", deserialize_with = "nullable")]
    end_session_url: String,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

#[derive(Deserialize, Default)]
struct ClaimMapping {
    #[serde(default, rename = "preferred_username", deserialize_with = "nullable")]
    preferred_username: String,
    #[serde(default, deserialize_with = "nullable")]
    email: String,
    #[serde(default, deserialize_with = "nullable")]
    groups: String,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

#[derive(Deserialize, Default, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct NewGroupFromClaims {
    #[serde(default, deserialize_with = "nullable")]
    claims: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    delimiter: String,
    #[serde(default, deserialize_with = "nullable")]
    clear_delimiter: bool,
    #[serde(default, deserialize_with = "nullable")]
    prefix: String,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

#[derive(Deserialize, Default)]
struct FilterGroupClaims {
    #[serde(default, rename = "groupsFilter", deserialize_with = "nullable")]
    groups_filter: String,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

#[derive(Deserialize, Default)]
struct ModifyGroupNames {
    #[serde(default, deserialize_with = "nullable")]
    prefix: String,
    #[serde(default, deserialize_with = "nullable")]
    suffix: String,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

#[derive(Deserialize, Default)]
struct ClaimModifications {
    #[serde(default, rename = "newGroupFromClaims", deserialize_with = "nullable")]
    new_group_from_claims: Vec<NewGroupFromClaims>,
    #[serde(default, rename = "filterGroupClaims", deserialize_with = "nullable")]
    filter_group_claims: FilterGroupClaims,
    #[serde(default, rename = "modifyGroupNames", deserialize_with = "nullable")]
    modify_group_names: ModifyGroupNames,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

/// Dex's `oidc` config, key for key.
#[derive(Deserialize)]
struct Config {
    #[serde(default, deserialize_with = "nullable")]
    issuer: String,
    #[serde(default, rename = "issuerAlias", deserialize_with = "nullable")]
    issuer_alias: String,
    #[serde(default, rename = "clientID", deserialize_with = "nullable")]
    client_id: String,
    #[serde(default, rename = "clientSecret", deserialize_with = "nullable")]
    client_secret: String,
    #[serde(default, rename = "redirectURI", deserialize_with = "nullable")]
    redirect_uri: String,
    #[serde(default, rename = "providerDiscoveryOverrides", deserialize_with = "nullable")]
    overrides: Overrides,
    #[serde(default, rename = "basicAuthUnsupported")]
    basic_auth_unsupported: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    scopes: Vec<String>,
    #[serde(default, rename = "hostedDomains", deserialize_with = "nullable")]
    hosted_domains: Vec<String>,
    #[serde(default, rename = "rootCAs", deserialize_with = "nullable")]
    root_cas: Vec<String>,
    #[serde(default, rename = "insecureSkipVerify", deserialize_with = "nullable")]
    insecure_skip_verify: bool,
    #[serde(default, rename = "insecureSkipEmailVerified", deserialize_with = "nullable")]
    insecure_skip_email_verified: bool,
    #[serde(default, rename = "insecureEnableGroups", deserialize_with = "nullable")]
    insecure_enable_groups: bool,
    #[serde(default, rename = "allowedGroups", deserialize_with = "nullable")]
    allowed_groups: Vec<String>,
    #[serde(default, rename = "acrValues", deserialize_with = "nullable")]
    acr_values: Vec<String>,
    #[serde(default, rename = "getUserInfo", deserialize_with = "nullable")]
    get_user_info: bool,
    #[serde(default, rename = "userIDKey", deserialize_with = "nullable")]
    user_id_key: String,
    #[serde(default, rename = "userNameKey", deserialize_with = "nullable")]
    user_name_key: String,
    #[serde(default, rename = "promptType")]
    prompt_type: Option<String>,
    #[serde(default, rename = "pkceChallenge", deserialize_with = "nullable")]
    pkce_challenge: String,
    #[serde(default, rename = "overrideClaimMapping", deserialize_with = "nullable")]
    override_claim_mapping: bool,
    #[serde(default, rename = "claimMapping", deserialize_with = "nullable")]
    claim_mapping: ClaimMapping,
    #[serde(default, rename = "claimModifications", deserialize_with = "nullable")]
    claim_modifications: ClaimModifications,
    #[serde(default, deserialize_with = "kfsec_types::config::opt_duration")]
    timeout: Option<Duration>,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

/// Every key of the config, by level, as Dex spells it (Go's JSON decoder, which Dex uses,
/// also accepts them in any letter case: [`fold_case`] does the same).
const TOP_KEYS: &[&str] = &[
    "issuer",
    "issuerAlias",
    "clientID",
    "clientSecret",
    "redirectURI",
    "providerDiscoveryOverrides",
    "basicAuthUnsupported",
    "scopes",
    "hostedDomains",
    "rootCAs",
    "insecureSkipVerify",
    "insecureSkipEmailVerified",
    "insecureEnableGroups",
    "allowedGroups",
    "acrValues",
    "getUserInfo",
    "userIDKey",
    "userNameKey",
    "promptType",
    "pkceChallenge",
    "overrideClaimMapping",
    "claimMapping",
    "claimModifications",
    "timeout",
];
const OVERRIDE_KEYS: &[&str] = &[
    "tokenURL",
    "authURL",
    "jwksURL",
    "userInfoURL",
    "deviceAuthURL",
    "endSessionURL",
];
const MAPPING_KEYS: &[&str] = &["preferred_username", "email", "groups"];
const MODIFICATION_KEYS: &[&str] = &["newGroupFromClaims", "filterGroupClaims", "modifyGroupNames"];
const NEW_GROUP_KEYS: &[&str] = &["claims", "delimiter", "clearDelimiter", "prefix"];

/// Hints for keys people write that are not Dex's.
const HINTS: [(&str, &str); 12] = [
    (
        "jwksUri",
        "use providerDiscoveryOverrides.jwksURL (the keys are found by discovery otherwise)",
    ),
    ("jwksURL", "use providerDiscoveryOverrides.jwksURL"),
    ("jwks_uri", "use providerDiscoveryOverrides.jwksURL"),
    ("tokenURL", "use providerDiscoveryOverrides.tokenURL"),
    ("authURL", "use providerDiscoveryOverrides.authURL"),
    ("userInfoURL", "use providerDiscoveryOverrides.userInfoURL"),
    ("claimMutations", "Dex's key is claimModifications"),
    ("groupsKey", "use claimMapping.groups"),
    ("emailKey", "use claimMapping.email"),
    ("preferredUsernameKey", "use claimMapping.preferred_username"),
    ("rootCA", "the oidc connector's key is rootCAs (a list)"),
    ("redirectURL", "Dex's key is redirectURI"),
];

/// Renames keys of `map` that equal one of `known` but for letter case, as Go's JSON decoder
/// matches them (an exact spelling wins; two spellings of one key are a problem).
fn fold_case(map: &mut Map<String, Value>, known: &[&str], prefix: &str, problems: &mut Vec<ConfigProblem>) {
    let keys: Vec<String> = map.keys().cloned().collect();
    for k in keys {
        if known.contains(&k.as_str()) {
            continue;
        }
        if let Some(real) = known.iter().find(|r| r.eq_ignore_ascii_case(&k)) {
            if map.contains_key(*real) {
                problems.push(ConfigProblem::new(
                    format!("{prefix}{k}"),
                    format!("{real} is set twice (as {real} and as {k})"),
                ));
                map.remove(&k);
            } else if let Some(v) = map.remove(&k) {
                map.insert((*real).to_owned(), v);
            }
        }
    }
}

fn fold_config(config: &mut Value, problems: &mut Vec<ConfigProblem>) {
    let Some(top) = config.as_object_mut() else { return };
    fold_case(top, TOP_KEYS, "", problems);
    let nested: [(&str, &[&str]); 3] = [
        ("providerDiscoveryOverrides", OVERRIDE_KEYS),
        ("claimMapping", MAPPING_KEYS),
        ("claimModifications", MODIFICATION_KEYS),
    ];
    for (key, known) in nested {
        if let Some(Value::Object(m)) = top.get_mut(key) {
            fold_case(m, known, &format!("{key}."), problems);
        }
    }
    if let Some(Value::Object(mods)) = top.get_mut("claimModifications") {
        for (key, known) in [
            ("filterGroupClaims", &["groupsFilter"][..]),
            ("modifyGroupNames", &["prefix", "suffix"][..]),
        ] {
            if let Some(Value::Object(m)) = mods.get_mut(key) {
                fold_case(m, known, &format!("claimModifications.{key}."), problems);
            }
        }
        if let Some(Value::Array(list)) = mods.get_mut("newGroupFromClaims") {
            for (i, item) in list.iter_mut().enumerate() {
                if let Some(m) = item.as_object_mut() {
                    fold_case(
                        m,
                        NEW_GROUP_KEYS,
                        &format!("claimModifications.newGroupFromClaims[{i}]."),
                        problems,
                    );
                }
            }
        }
    }
}

/// PKCE methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pkce {
    S256,
    Plain,
}

impl Pkce {
    fn name(self) -> &'static str {
        match self {
            Self::S256 => "S256",
            Self::Plain => "plain",
        }
    }
}

/// What discovery (and the overrides) say about the upstream.
#[derive(Debug, Clone)]
struct Provider {
    auth_url: String,
    token_url: String,
    jwks_url: String,
    userinfo_url: Option<String>,
    pkce: Option<Pkce>,
    algs: Option<Vec<String>>,
    basic_auth: bool,
}

#[derive(Deserialize)]
struct Discovery {
    #[serde(default)]
    issuer: String,
    #[serde(default)]
    authorization_endpoint: String,
    #[serde(default)]
    token_endpoint: String,
    #[serde(default)]
    jwks_uri: String,
    #[serde(default)]
    userinfo_endpoint: Option<String>,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    id_token_signing_alg_values_supported: Option<Vec<String>>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

#[derive(Default)]
struct KeyCache {
    set: Option<Arc<KeySet>>,
    fetched_at: Option<UnixTime>,
}

/// The settings that turn claims into an identity.
#[derive(Debug, Clone)]
struct Mapping {
    email_scope: bool,
    skip_email_verified: bool,
    enable_groups: bool,
    allowed_groups: Vec<String>,
    user_id_key: String,
    user_name_key: String,
    override_mapping: bool,
    preferred_username_key: String,
    email_key: String,
    groups_key: String,
    new_groups: Vec<NewGroupFromClaims>,
    groups_filter: Option<regex::Regex>,
    groups_prefix: String,
    groups_suffix: String,
}

/// An upstream OpenID Connect provider.
pub struct OidcConnector {
    id: String,
    issuer: String,
    expected_issuer: String,
    client_id: String,
    client_secret: String,
    redirect_uri: String,
    overrides: Overrides,
    basic_auth_unsupported: Option<bool>,
    scopes: Vec<String>,
    acr_values: Vec<String>,
    get_user_info: bool,
    prompt: String,
    pkce: Option<Pkce>,
    mapping: Mapping,
    http: Upstream,
    timeout: Duration,
    clock: Arc<dyn Clock>,
    provider: RwLock<Option<Arc<Provider>>>,
    /// One discovery at a time: concurrent logins wait for it rather than each asking.
    discovering: tokio::sync::Mutex<()>,
    /// When discovery last failed (Unix ms) and why: logins within [`DISCOVERY_RETRY`] are
    /// answered from it, so a dead upstream is not asked once per login attempt.
    discovery_failed: RwLock<Option<(u64, String)>>,
    keys: RwLock<KeyCache>,
}

impl std::fmt::Debug for OidcConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcConnector")
            .field("id", &self.id)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

fn check_url(field: &str, value: &str, problems: &mut Vec<ConfigProblem>) {
    match url::Url::parse(value) {
        Ok(u) if u.scheme() == "https" || u.scheme() == "http" => {}
        Ok(u) => problems.push(ConfigProblem::new(
            field,
            format!("{value:?} is not an http(s) URL (scheme {:?})", u.scheme()),
        )),
        Err(e) => problems.push(ConfigProblem::new(field, format!("{value:?} is not a URL: {e}"))),
    }
}

/// Builds the `oidc` connector `id` from its Dex config (env already expanded). Each problem
/// names its field; nothing is fetched here (discovery happens at the first login).
pub fn open(id: &str, config: Value, ctx: &OpenContext) -> Result<ConnectorKind, Vec<ConfigProblem>> {
    open_connector(id, config, ctx).map(|c| ConnectorKind::Callback(Arc::new(c)))
}

/// Like [`open`], returning the connector itself.
pub fn open_connector(id: &str, mut config: Value, ctx: &OpenContext) -> Result<OidcConnector, Vec<ConfigProblem>> {
    let mut problems = Vec::new();
    fold_config(&mut config, &mut problems);
    let c: Config = parse(config)?;
    problems.extend(unknown_keys("oidc", "", &c.extra, &HINTS));
    problems.extend(unknown_keys(
        "oidc",
        "providerDiscoveryOverrides.",
        &c.overrides.extra,
        &[],
    ));
    problems.extend(unknown_keys("oidc", "claimMapping.", &c.claim_mapping.extra, &[]));
    let mods = &c.claim_modifications;
    problems.extend(unknown_keys("oidc", "claimModifications.", &mods.extra, &[]));
    problems.extend(unknown_keys(
        "oidc",
        "claimModifications.filterGroupClaims.",
        &mods.filter_group_claims.extra,
        &[],
    ));
    problems.extend(unknown_keys(
        "oidc",
        "claimModifications.modifyGroupNames.",
        &mods.modify_group_names.extra,
        &[],
    ));
    for (i, g) in mods.new_group_from_claims.iter().enumerate() {
        problems.extend(unknown_keys(
            "oidc",
            &format!("claimModifications.newGroupFromClaims[{i}]."),
            &g.extra,
            &[],
        ));
    }

    if !c.hosted_domains.is_empty() {
        problems.push(ConfigProblem::new("hostedDomains", HOSTED_DOMAINS_REMOVED));
    }
    if c.issuer.is_empty() {
        problems.push(ConfigProblem::new(
            "issuer",
            "required: the upstream's issuer URL (discovery is read from <issuer>/.well-known/openid-configuration)",
        ));
    } else {
        check_url("issuer", &c.issuer, &mut problems);
    }
    if c.client_id.is_empty() {
        problems.push(ConfigProblem::new(
            "clientID",
            "required: the client id registered at the upstream",
        ));
    }
    let expected = ctx.callback();
    if c.redirect_uri != expected {
        problems.push(ConfigProblem::new(
            "redirectURI",
            format!(
                "must be {expected:?} (kfsec's issuer + /callback, registered at the upstream as this client's redirect URI){}",
                if c.redirect_uri.is_empty() { String::new() } else { format!("; it is {:?}", c.redirect_uri) }
            ),
        ));
    }
    let o = &c.overrides;
    for (field, value) in [
        ("tokenURL", &o.token_url),
        ("authURL", &o.auth_url),
        ("jwksURL", &o.jwks_url),
        ("userInfoURL", &o.user_info_url),
        ("deviceAuthURL", &o.device_auth_url),
        ("endSessionURL", &o.end_session_url),
    ] {
        if !value.is_empty() {
            check_url(&format!("providerDiscoveryOverrides.{field}"), value, &mut problems);
        }
    }
    if !c.allowed_groups.is_empty() && !c.insecure_enable_groups {
        problems.push(ConfigProblem::new(
            "allowedGroups",
            "needs insecureEnableGroups: true (groups are read from the upstream only then; Dex would silently ignore allowedGroups and let everyone in)",
        ));
    }
    let pkce = match c.pkce_challenge.as_str() {
        "" => None,
        "S256" => Some(Pkce::S256),
        "plain" => Some(Pkce::Plain),
        other => {
            problems.push(ConfigProblem::new(
                "pkceChallenge",
                format!("{other:?} is not a PKCE method: use S256 or plain, or leave it out to use what the upstream supports"),
            ));
            None
        }
    };
    let groups_filter = match mods.filter_group_claims.groups_filter.as_str() {
        "" => None,
        re => {
            match regex::RegexBuilder::new(re).size_limit(1 << 20).build() {
                Ok(r) => Some(r),
                Err(e) => {
                    problems.push(ConfigProblem::new(
                    "claimModifications.filterGroupClaims.groupsFilter",
                    format!("not a valid regular expression (Dex would ignore it with a warning and keep every group): {e}"),
                ));
                    None
                }
            }
        }
    };
    let timeout = c.timeout.unwrap_or(ctx.default_timeout);
    if timeout.is_zero() {
        problems.push(ConfigProblem::new("timeout", "must be more than 0s"));
    }
    let http = match Upstream::new(
        &TlsSettings {
            root_cas: c.root_cas.clone(),
            insecure_skip_verify: c.insecure_skip_verify,
        },
        timeout,
    ) {
        Ok(h) => Some(h),
        Err(e) => {
            problems.push(ConfigProblem::new("rootCAs", e));
            None
        }
    };
    let Some(http) = http else { return Err(problems) };
    if !problems.is_empty() {
        return Err(problems);
    }

    let mut scopes = vec!["openid".to_owned()];
    let configured = if c.scopes.is_empty() {
        vec!["profile".to_owned(), "email".to_owned()]
    } else {
        c.scopes.clone()
    };
    for s in configured {
        if !scopes.contains(&s) {
            scopes.push(s);
        }
    }
    // Startup lines, as Dex logs them (and what Dex does not say).
    if o.token_url.len()
        + o.auth_url.len()
        + o.jwks_url.len()
        + o.user_info_url.len()
        + o.device_auth_url.len()
        + o.end_session_url.len()
        > 0
    {
        tracing::warn!(
            connector_id = id,
            "overrides for connector are set, this can be a vulnerability when not properly configured"
        );
    }
    if !o.device_auth_url.is_empty() || !o.end_session_url.is_empty() {
        tracing::info!(
            connector_id = id,
            "providerDiscoveryOverrides.deviceAuthURL and endSessionURL are accepted but unused: kfsec runs no device flow and no logout at the upstream"
        );
    }
    if c.insecure_skip_verify {
        tracing::warn!(
            connector_id = id,
            "insecureSkipVerify: TLS certificates of the upstream identity provider are not verified"
        );
    }
    if !scopes.iter().any(|s| s == "offline_access") {
        tracing::warn!(
            connector_id = id,
            "scopes lack offline_access: Entra ID, Okta and Auth0 then give no refresh token (Keycloak, Cognito and Google give one anyway); a login without one cannot be re-checked upstream, so its refreshes fail and its gatekeeper session ends at the next re-check"
        );
    }
    let mapping = Mapping {
        email_scope: scopes.iter().any(|s| s == "email"),
        skip_email_verified: c.insecure_skip_email_verified,
        enable_groups: c.insecure_enable_groups,
        allowed_groups: c.allowed_groups,
        user_id_key: c.user_id_key,
        user_name_key: if c.user_name_key.is_empty() {
            "name".into()
        } else {
            c.user_name_key
        },
        override_mapping: c.override_claim_mapping,
        preferred_username_key: c.claim_mapping.preferred_username,
        email_key: c.claim_mapping.email,
        groups_key: c.claim_mapping.groups,
        new_groups: c.claim_modifications.new_group_from_claims,
        groups_filter,
        groups_prefix: c.claim_modifications.modify_group_names.prefix,
        groups_suffix: c.claim_modifications.modify_group_names.suffix,
    };
    Ok(OidcConnector {
        id: id.to_owned(),
        expected_issuer: if c.issuer_alias.is_empty() {
            c.issuer.clone()
        } else {
            c.issuer_alias
        },
        issuer: c.issuer,
        client_id: c.client_id,
        client_secret: c.client_secret,
        redirect_uri: c.redirect_uri,
        overrides: c.overrides,
        basic_auth_unsupported: c.basic_auth_unsupported,
        scopes,
        acr_values: {
            if !c.acr_values.is_empty() {
                tracing::info!(
                    connector = id,
                    "oidc connector: acrValues {:?} are required of every login's ID token (its acr claim), not only asked for; an upstream that sends no acr refuses every login",
                    c.acr_values
                );
            }
            c.acr_values
        },
        get_user_info: c.get_user_info,
        prompt: c.prompt_type.unwrap_or_else(|| "consent".into()),
        pkce,
        mapping,
        http,
        timeout,
        clock: ctx.clock.clone(),
        provider: RwLock::new(None),
        discovering: tokio::sync::Mutex::new(()),
        discovery_failed: RwLock::new(None),
        keys: RwLock::new(KeyCache::default()),
    })
}

/// How long a failed discovery is answered from memory before the upstream is asked again.
const DISCOVERY_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

fn truncate(s: &str) -> String {
    let mut out: String = s.chars().take(MAX_DESCRIPTION).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// An OAuth2 error answer (`{"error": …, "error_description": …}`).
#[derive(Deserialize)]
struct OAuthErrorBody {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// A token endpoint's success answer.
#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    id_token: Option<String>,
}

#[derive(Deserialize)]
struct Pending {
    nonce: String,
    #[serde(default)]
    verifier: Option<String>,
}

/// Which grant produced the tokens.
enum Grant<'a> {
    Code {
        nonce: &'a str,
    },
    Refresh {
        previous: &'a UpstreamIdentity,
        refresh_token: &'a str,
    },
}

impl OidcConnector {
    /// The upstream's endpoints: discovered once, then cached. Discovery runs once at a time;
    /// after a failure, calls within [`DISCOVERY_RETRY`] fail at once with it, and the next one
    /// after that tries again.
    async fn provider(&self) -> Result<Arc<Provider>, ConnectorError> {
        if let Some(p) = self.provider.read().clone() {
            return Ok(p);
        }
        let recent_failure = || {
            let now = self.clock.now().as_millis();
            self.discovery_failed
                .read()
                .as_ref()
                .filter(|(at, _)| now.saturating_sub(*at) < DISCOVERY_RETRY.as_millis() as u64)
                .map(|(_, why)| ConnectorError::Unreachable(format!("discovery failed recently: {why}")))
        };
        if let Some(e) = recent_failure() {
            return Err(e);
        }
        let _one = self.discovering.lock().await;
        if let Some(p) = self.provider.read().clone() {
            return Ok(p);
        }
        if let Some(e) = recent_failure() {
            return Err(e);
        }
        match self.discover().await {
            Ok(p) => {
                *self.discovery_failed.write() = None;
                Ok(p)
            }
            Err(e) => {
                *self.discovery_failed.write() = Some((self.clock.now().as_millis(), e.to_string()));
                Err(e)
            }
        }
    }

    /// Fetches and checks the upstream's discovery document, and caches what it says.
    async fn discover(&self) -> Result<Arc<Provider>, ConnectorError> {
        let url = format!("{}/.well-known/openid-configuration", self.issuer.trim_end_matches('/'));
        let answer = self.http.get(&url, None).await?;
        if !answer.ok() {
            return Err(ConnectorError::Upstream(format!(
                "discovery {url}: status {}",
                answer.status
            )));
        }
        let d: Discovery = answer.json("discovery")?;
        if d.issuer != self.expected_issuer {
            return Err(ConnectorError::Misconfigured(format!(
                "the upstream's discovery says its issuer is {:?}, not {:?}{}",
                truncate(&d.issuer),
                self.expected_issuer,
                if self.expected_issuer == self.issuer {
                    " (set issuerAlias if the upstream really names itself differently)"
                } else {
                    " (issuerAlias)"
                }
            )));
        }
        let pick = |over: &str, found: String, what: &str| -> Result<String, ConnectorError> {
            let u = if over.is_empty() { found } else { over.to_owned() };
            match url::Url::parse(&u) {
                Ok(p) if p.scheme() == "https" || p.scheme() == "http" => Ok(u),
                _ => Err(ConnectorError::Upstream(format!(
                    "discovery: {what} {:?} is not an http(s) URL",
                    truncate(&u)
                ))),
            }
        };
        let o = &self.overrides;
        let userinfo = if o.user_info_url.is_empty() {
            d.userinfo_endpoint.filter(|u| !u.is_empty())
        } else {
            Some(o.user_info_url.clone())
        };
        let userinfo = userinfo.map(|u| pick("", u, "userinfo_endpoint")).transpose()?;
        let methods = d.code_challenge_methods_supported.unwrap_or_default();
        let pkce = match self.pkce {
            Some(p) => {
                if !methods.iter().any(|m| m == p.name()) {
                    tracing::warn!(connector_id = %self.id, method = p.name(), "provided PKCEChallenge method not supported by the connector");
                }
                Some(p)
            }
            None if methods.iter().any(|m| m == "S256") => Some(Pkce::S256),
            None if methods.iter().any(|m| m == "plain") => Some(Pkce::Plain),
            None => None,
        };
        let basic_auth = uses_basic_auth(
            self.basic_auth_unsupported,
            &self.issuer,
            d.token_endpoint_auth_methods_supported.as_deref(),
        );
        let p = Arc::new(Provider {
            auth_url: pick(&o.auth_url, d.authorization_endpoint, "authorization_endpoint")?,
            token_url: pick(&o.token_url, d.token_endpoint, "token_endpoint")?,
            jwks_url: pick(&o.jwks_url, d.jwks_uri, "jwks_uri")?,
            userinfo_url: userinfo,
            pkce,
            algs: d.id_token_signing_alg_values_supported.filter(|a| !a.is_empty()),
            basic_auth,
        });
        *self.provider.write() = Some(p.clone());
        Ok(p)
    }

    /// The key set that may hold `kid`: the cached one, or a fresh one when the cache lacks the
    /// key and was not fetched within [`JWKS_REFETCH_INTERVAL`].
    async fn keys(&self, provider: &Provider, kid: Option<&str>) -> Result<Arc<KeySet>, ConnectorError> {
        let now = self.clock.now();
        {
            let cache = self.keys.read();
            if let Some(set) = &cache.set {
                let has = kid.is_none_or(|k| set.has_kid(k));
                let recent = cache.fetched_at.is_some_and(|t| now.since(t) < JWKS_REFETCH_INTERVAL);
                if has || recent {
                    return Ok(set.clone());
                }
            }
        }
        let answer = self.http.get(&provider.jwks_url, None).await?;
        if !answer.ok() {
            return Err(ConnectorError::Upstream(format!(
                "JWKS {}: status {}",
                provider.jwks_url, answer.status
            )));
        }
        let set = Arc::new(KeySet::parse(&answer.body).map_err(|e| ConnectorError::Upstream(format!("JWKS: {e}")))?);
        let mut cache = self.keys.write();
        cache.set = Some(set.clone());
        cache.fetched_at = Some(now);
        Ok(set)
    }

    async fn verify_id_token(
        &self,
        provider: &Provider,
        token: &str,
        nonce: Option<&str>,
    ) -> Result<Map<String, Value>, ConnectorError> {
        let expect = Expect {
            issuer: &self.expected_issuer,
            client_id: &self.client_id,
            now: self.clock.now().as_secs(),
            algs: provider.algs.as_deref(),
            nonce,
        };
        let refused = |e: TokenError| ConnectorError::Upstream(format!("ID token refused: {e}"));
        let hint = jwks::key_hint(token, &expect).map_err(refused)?;
        let keys = self.keys(provider, hint.kid.as_deref()).await?;
        jwks::verify(token, &keys, &expect).map(|v| v.claims).map_err(refused)
    }

    async fn userinfo(
        &self,
        provider: &Provider,
        access_token: Option<&str>,
    ) -> Result<Map<String, Value>, ConnectorError> {
        let Some(url) = &provider.userinfo_url else {
            return Err(ConnectorError::Misconfigured(
                "getUserInfo is set but the upstream publishes no userinfo_endpoint (set providerDiscoveryOverrides.userInfoURL)".into(),
            ));
        };
        let Some(at) = access_token.filter(|t| !t.is_empty()) else {
            return Err(ConnectorError::Upstream(
                "the token answer has no access_token for the userinfo call".into(),
            ));
        };
        let answer = self.http.get(url, Some(at)).await?;
        if !answer.ok() {
            return Err(ConnectorError::Upstream(format!("userinfo: status {}", answer.status)));
        }
        if answer.body.starts_with(b"ey") {
            return Err(ConnectorError::Upstream(
                "userinfo answered with a signed JWT, which kfsec does not read: configure the upstream to answer JSON"
                    .into(),
            ));
        }
        answer.json("userinfo")
    }

    /// Sends a token request and reads the answer, mapping OAuth2 errors.
    async fn token_request(
        &self,
        provider: &Provider,
        form: &[(&str, &str)],
        refresh: bool,
    ) -> Result<TokenAnswer, ConnectorError> {
        let answer = self
            .http
            .post_form(
                &provider.token_url,
                form,
                Some((&self.client_id, &self.client_secret, provider.basic_auth)),
            )
            .await?;
        if answer.ok() {
            return answer.json("token answer");
        }
        Err(token_error(&answer, refresh))
    }

    /// Turns a token answer into an identity: verified ID token claims, replaced by userinfo's
    /// when `getUserInfo` is on, then Dex's claim mapping.
    async fn identity(
        &self,
        provider: &Provider,
        tokens: TokenAnswer,
        grant: Grant<'_>,
    ) -> Result<UpstreamIdentity, ConnectorError> {
        let nonce = match &grant {
            Grant::Code { nonce } => Some(*nonce),
            Grant::Refresh { .. } => None,
        };
        let id_claims = match tokens.id_token.as_deref() {
            Some(t) => Some(self.verify_id_token(provider, t, nonce).await?),
            None if matches!(grant, Grant::Code { .. }) => {
                return Err(ConnectorError::Upstream(
                    "no id_token in the token answer (is openid among the client's scopes upstream?)".into(),
                ));
            }
            None if !self.get_user_info => {
                return Err(ConnectorError::Upstream(
                    "the upstream returned no id_token on refresh; set getUserInfo: true so kfsec reads the user from userinfo".into(),
                ));
            }
            None => None,
        };
        // Asked for an authentication context (`acrValues`): the login's ID token must name one
        // of them (OpenID Connect Core §3.1.3.7 step 12). The parameter rides in the browser's
        // redirect, where the user can remove it; only the token's `acr` says what was done.
        if let (Grant::Code { .. }, Some(id)) = (&grant, &id_claims)
            && !self.acr_values.is_empty()
        {
            let acr = id.get("acr").and_then(Value::as_str);
            if !acr.is_some_and(|a| self.acr_values.iter().any(|w| w == a)) {
                return Err(ConnectorError::Denied(format!(
                    "the identity provider authenticated with acr {:?}, not one of acrValues {:?}",
                    acr.unwrap_or("(none)").chars().take(64).collect::<String>(),
                    self.acr_values
                )));
            }
        }
        let mut claims = id_claims.clone().unwrap_or_default();
        if self.get_user_info {
            let info = self.userinfo(provider, tokens.access_token.as_deref()).await?;
            let info_sub = info.get("sub").and_then(Value::as_str);
            let expected_sub = match (&id_claims, &grant) {
                (Some(c), _) => c.get("sub").and_then(Value::as_str).map(str::to_owned),
                (None, Grant::Refresh { previous, .. })
                    if self.mapping.user_id_key.is_empty() && !previous.user_id.is_empty() =>
                {
                    Some(previous.user_id.clone())
                }
                (None, _) => None,
            };
            if info_sub.is_none() || (expected_sub.is_some() && info_sub != expected_sub.as_deref()) {
                return Err(ConnectorError::Upstream("userinfo's sub is not the ID token's".into()));
            }
            // As Dex decodes userinfo into the same map: its claims win.
            claims.extend(info);
        }
        let refresh_token = match (&tokens.refresh_token, &grant) {
            (Some(rt), _) if !rt.is_empty() => Some(rt.clone()),
            (_, Grant::Refresh { refresh_token, .. }) => Some((*refresh_token).to_owned()),
            _ => None,
        };
        let mut identity = derive(&self.mapping, &claims)?;
        identity.connector_data = refresh_token.map(|rt| serde_json::json!({ "refreshToken": rt }));
        if let Grant::Refresh { previous, .. } = grant
            && !previous.user_id.is_empty()
            && previous.user_id != identity.user_id
        {
            // (not an outage: the chain is not this user's any more, as microsoft says too)
            return Err(ConnectorError::Revoked("the refresh answer is for another user".into()));
        }
        Ok(identity)
    }
}

/// Whether the client secret goes in HTTP Basic: `basicAuthUnsupported` when set; otherwise
/// not for Dex's known-broken hosts (Okta) nor for an upstream whose discovery offers only
/// `client_secret_post`.
fn uses_basic_auth(unsupported: Option<bool>, issuer: &str, methods: Option<&[String]>) -> bool {
    if let Some(u) = unsupported {
        return !u;
    }
    let host = url::Url::parse(issuer)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    let broken = BROKEN_BASIC_AUTH
        .iter()
        .any(|h| host == *h || host.ends_with(&format!(".{h}")));
    let post_only = methods
        .is_some_and(|m| m.iter().any(|x| x == "client_secret_post") && !m.iter().any(|x| x == "client_secret_basic"));
    !(broken || post_only)
}

fn token_error(answer: &Answer, refresh: bool) -> ConnectorError {
    let Ok(e) = answer.json::<OAuthErrorBody>("token error") else {
        return ConnectorError::Upstream(format!("token endpoint: status {}", answer.status));
    };
    let detail = match &e.error_description {
        Some(d) => format!("{}: {}", truncate(&e.error), truncate(d)),
        None => truncate(&e.error),
    };
    match e.error.as_str() {
        "invalid_grant" if refresh => ConnectorError::Revoked(detail),
        "invalid_grant" => ConnectorError::BadCallback(format!("the upstream refused the code: {detail}")),
        "invalid_client" | "unauthorized_client" => ConnectorError::Misconfigured(format!(
            "the upstream refused the client (clientID/clientSecret, basicAuthUnsupported): {detail}"
        )),
        _ => ConnectorError::Upstream(format!("token endpoint: {detail}")),
    }
}

/// Dex's `email_verified`, also as Cognito sends it (the strings `"true"`/`"false"`).
fn bool_claim(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

fn str_claim<'c>(claims: &'c Map<String, Value>, key: &str) -> Option<&'c str> {
    claims.get(key).and_then(Value::as_str)
}

/// Dex's `createIdentity`: claims → identity (without `connector_data`).
fn derive(m: &Mapping, claims: &Map<String, Value>) -> Result<UpstreamIdentity, ConnectorError> {
    let sub = str_claim(claims, "sub").ok_or_else(|| ConnectorError::Upstream("missing \"sub\" claim".into()))?;
    let name = str_claim(claims, &m.user_name_key).ok_or_else(|| {
        ConnectorError::Misconfigured(format!(
            "missing {:?} claim (set userNameKey to a claim the upstream sends, e.g. email)",
            m.user_name_key
        ))
    })?;
    let mapped = |standard: &str, key: &str| -> (Option<String>, String) {
        let found = str_claim(claims, standard);
        if (found.is_none() || m.override_mapping) && !key.is_empty() {
            (str_claim(claims, key).map(str::to_owned), key.to_owned())
        } else {
            (found.map(str::to_owned), standard.to_owned())
        }
    };
    let preferred_username = mapped("preferred_username", &m.preferred_username_key)
        .0
        .unwrap_or_default();
    let (email, email_key) = mapped("email", &m.email_key);
    if email.is_none() && m.email_scope {
        return Err(ConnectorError::Misconfigured(format!(
            "missing email claim, not found {email_key:?} key (map another claim with claimMapping.email)"
        )));
    }
    let email_verified = match bool_claim(claims.get("email_verified")) {
        Some(v) => v,
        None if m.skip_email_verified => true,
        None if m.email_scope => {
            return Err(ConnectorError::Misconfigured(
                "missing \"email_verified\" claim (set insecureSkipEmailVerified: true if the upstream does not send it)".into(),
            ));
        }
        None => false,
    };
    let mut groups = Vec::new();
    if m.enable_groups {
        let keep = |g: &str| m.groups_filter.as_ref().is_none_or(|re| re.is_match(g));
        let array = |k: &str| claims.get(k).and_then(Value::as_array);
        let mut key = "groups";
        let mut list = array(key);
        if (list.is_none() || m.override_mapping) && !m.groups_key.is_empty() {
            key = &m.groups_key;
            list = array(key);
        }
        if let Some(g) = str_claim(claims, key)
            && keep(g)
        {
            groups.push(g.to_owned());
        }
        for v in list.into_iter().flatten() {
            let g = match v {
                Value::String(s) => s.as_str(),
                Value::Object(o) => match o.get("name").and_then(Value::as_str) {
                    Some(n) => n,
                    None => continue,
                },
                _ => return Err(ConnectorError::Upstream(format!("malformed {key:?} claim"))),
            };
            if keep(g) {
                groups.push(g.to_owned());
            }
        }
        if !m.allowed_groups.is_empty() {
            groups.retain(|g| m.allowed_groups.contains(g));
            if groups.is_empty() {
                return Err(ConnectorError::NotInAllowedGroups);
            }
        }
    }
    if !m.groups_prefix.is_empty() || !m.groups_suffix.is_empty() {
        for g in &mut groups {
            *g = format!("{}{g}{}", m.groups_prefix, m.groups_suffix);
        }
    }
    for n in &m.new_groups {
        let mut segments = vec![n.prefix.clone()];
        for c in &n.claims {
            if let Some(v) = str_claim(claims, c) {
                segments.push(if n.clear_delimiter {
                    v.replace(&n.delimiter, "")
                } else {
                    v.to_owned()
                });
            }
        }
        if segments.len() > 1 {
            groups.push(segments.join(&n.delimiter));
        }
    }
    let user_id = if m.user_id_key.is_empty() {
        sub.to_owned()
    } else {
        str_claim(claims, &m.user_id_key)
            .ok_or_else(|| {
                ConnectorError::Misconfigured(format!("oidc: not found {} claim (userIDKey)", m.user_id_key))
            })?
            .to_owned()
    };
    Ok(UpstreamIdentity {
        user_id,
        username: name.to_owned(),
        preferred_username,
        email: email.unwrap_or_default(),
        email_verified,
        groups,
        connector_data: None,
    })
}

fn denied(query: &HashMap<String, String>, error: &str) -> ConnectorError {
    let detail = match query.get("error_description") {
        Some(d) if !d.is_empty() => format!("{}: {}", truncate(error), truncate(d)),
        _ => truncate(error),
    };
    match error {
        "invalid_request"
        | "unauthorized_client"
        | "unsupported_response_type"
        | "invalid_scope"
        | "invalid_client" => {
            ConnectorError::Misconfigured(format!("the upstream refused the authorization request: {detail}"))
        }
        "server_error" | "temporarily_unavailable" => ConnectorError::Upstream(detail),
        _ => ConnectorError::Denied(detail),
    }
}

#[async_trait]
impl CallbackConnector for OidcConnector {
    async fn login_url(
        &self,
        scopes: Scopes,
        callback: &str,
        state: &str,
        rng: &dyn Rng,
    ) -> Result<LoginRedirect, ConnectorError> {
        super::check_callback(&self.redirect_uri, callback)?;
        let provider = super::within(self.timeout, self.provider()).await?;
        let mut url = url::Url::parse(&provider.auth_url)
            .map_err(|e| ConnectorError::Upstream(format!("authorization_endpoint: {e}")))?;
        let nonce = crate::secret::random_token(rng);
        let mut pending = serde_json::json!({ "nonce": nonce });
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("client_id", &self.client_id)
                .append_pair("redirect_uri", &self.redirect_uri)
                .append_pair("response_type", "code")
                .append_pair("scope", &self.scopes.join(" "))
                .append_pair("state", state)
                .append_pair("nonce", &nonce);
            if !self.acr_values.is_empty() {
                q.append_pair("acr_values", &self.acr_values.join(" "));
            }
            if scopes.offline_access {
                q.append_pair("access_type", "offline");
                if !self.prompt.is_empty() {
                    q.append_pair("prompt", &self.prompt);
                }
            }
            if let Some(method) = provider.pkce {
                let verifier = crate::secret::random_token(rng);
                let challenge = match method {
                    Pkce::S256 => B64.encode(aws_lc_rs::digest::digest(
                        &aws_lc_rs::digest::SHA256,
                        verifier.as_bytes(),
                    )),
                    Pkce::Plain => verifier.clone(),
                };
                q.append_pair("code_challenge", &challenge)
                    .append_pair("code_challenge_method", method.name());
                pending["verifier"] = verifier.into();
            }
        }
        Ok(LoginRedirect {
            url: url.into(),
            pending,
        })
    }

    async fn callback(
        &self,
        _scopes: Scopes,
        callback: &str,
        pending: &Value,
        query: &HashMap<String, String>,
    ) -> Result<UpstreamIdentity, ConnectorError> {
        super::check_callback(&self.redirect_uri, callback)?;
        if let Some(e) = query.get("error") {
            return Err(denied(query, e));
        }
        // RFC 9207: an upstream that names itself must be the one this login went to.
        if let Some(iss) = query.get("iss")
            && *iss != self.expected_issuer
        {
            return Err(ConnectorError::BadCallback(format!(
                "the answer names issuer {:?}",
                truncate(iss)
            )));
        }
        let code = query
            .get("code")
            .filter(|c| !c.is_empty())
            .ok_or_else(|| ConnectorError::BadCallback("no code".into()))?;
        let pending: Pending = serde_json::from_value(pending.clone())
            .map_err(|_| ConnectorError::BadCallback("no pending login state".into()))?;
        super::within(self.timeout, async {
            let provider = self.provider().await?;
            let mut form = vec![
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", self.redirect_uri.as_str()),
            ];
            if let Some(v) = &pending.verifier {
                form.push(("code_verifier", v.as_str()));
            }
            let tokens = self.token_request(&provider, &form, false).await?;
            self.identity(&provider, tokens, Grant::Code { nonce: &pending.nonce })
                .await
        })
        .await
    }

    async fn refresh(&self, _scopes: Scopes, identity: &UpstreamIdentity) -> Result<UpstreamIdentity, ConnectorError> {
        let Some(rt) = identity
            .connector_data
            .as_ref()
            .and_then(|d| d.get("refreshToken"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        else {
            tracing::warn!(
                connector_id = %self.id,
                "no upstream refresh token for this login (add offline_access to the connector's scopes): the user must log in again"
            );
            return Err(ConnectorError::Revoked("no upstream refresh token".into()));
        };
        super::within(self.timeout, async {
            let provider = self.provider().await?;
            let tokens = self
                .token_request(
                    &provider,
                    &[("grant_type", "refresh_token"), ("refresh_token", rt)],
                    true,
                )
                .await?;
            self.identity(
                &provider,
                tokens,
                Grant::Refresh {
                    previous: identity,
                    refresh_token: rt,
                },
            )
            .await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> OpenContext {
        OpenContext::new("https://kf.example.com/dex", Duration::from_secs(10))
    }

    fn base() -> Value {
        serde_json::json!({
            "issuer": "https://op.example.com",
            "clientID": "kf",
            "clientSecret": "s3cret",
            "redirectURI": "https://kf.example.com/dex/callback",
        })
    }

    fn problems(extra: Value) -> Vec<ConfigProblem> {
        let mut c = base();
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        open_connector("up", c, &ctx()).err().unwrap_or_default()
    }

    fn fields(p: &[ConfigProblem]) -> Vec<&str> {
        p.iter().map(|p| p.field.as_str()).collect()
    }

    #[test]
    fn a_minimal_config_opens_with_dex_defaults() {
        let c = open_connector("up", base(), &ctx()).unwrap();
        assert_eq!(c.scopes, ["openid", "profile", "email"]);
        assert_eq!(c.prompt, "consent");
        assert_eq!(c.mapping.user_name_key, "name");
        assert!(c.mapping.email_scope && !c.mapping.enable_groups);
        assert_eq!(c.timeout, Duration::from_secs(10));
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        // Scopes replace the default; openid comes first once.
        let mut cfg = base();
        cfg["scopes"] = serde_json::json!(["openid", "email", "offline_access"]);
        cfg["timeout"] = "3s".into();
        let c = open_connector("up", cfg, &ctx()).unwrap();
        assert_eq!(c.scopes, ["openid", "email", "offline_access"]);
        assert_eq!(c.timeout, Duration::from_secs(3));
    }

    #[test]
    fn config_problems_are_all_reported_with_their_paths() {
        let p = problems(serde_json::json!({
            "redirectURI": "https://other.example.com/dex/callback",
            "hostedDomains": ["example.com"],
            "allowedGroups": ["admins"],
            "pkceChallenge": "S512",
            "jwksUri": "https://op.example.com/keys",
            "providerDiscoveryOverrides": {"tokenURL": "ftp://x", "jwksUrl": "https://op.example.com/k", "bogus": 1},
            "claimModifications": {"filterGroupClaims": {"groupsFilter": "(unclosed"}},
            "claimMapping": {"name": "x"},
        }));
        assert_eq!(
            fields(&p),
            [
                "jwksUri",
                "providerDiscoveryOverrides.bogus",
                "claimMapping.name",
                "hostedDomains",
                "redirectURI",
                "providerDiscoveryOverrides.tokenURL",
                "allowedGroups",
                "pkceChallenge",
                "claimModifications.filterGroupClaims.groupsFilter",
            ],
            "{p:#?}"
        );
        let msg = |f: &str| p.iter().find(|x| x.field == f).unwrap().message.clone();
        assert!(msg("redirectURI").contains("\"https://kf.example.com/dex/callback\""));
        assert_eq!(msg("hostedDomains"), HOSTED_DOMAINS_REMOVED);
        assert!(msg("jwksUri").contains("providerDiscoveryOverrides.jwksURL"));
        assert!(msg("allowedGroups").contains("insecureEnableGroups"));
        let p = problems(serde_json::json!({"issuer": "", "clientID": null, "rootCAs": ["/nonexistent/ca.pem"]}));
        assert_eq!(fields(&p), ["issuer", "clientID", "rootCAs"], "{p:#?}");
        // Wrong types name the field.
        let p = problems(serde_json::json!({"scopes": "email"}));
        assert_eq!(fields(&p), ["scopes"], "{p:#?}");
    }

    #[test]
    fn keys_match_in_any_case_as_go_decodes_them() {
        let mut c = base();
        let secret = c.as_object_mut().unwrap().remove("clientID").unwrap();
        c["clientId"] = secret;
        c["claimmapping"] = serde_json::json!({"Email": "mail"});
        let conn = open_connector("up", c, &ctx()).unwrap();
        assert_eq!(conn.client_id, "kf");
        assert_eq!(conn.mapping.email_key, "mail");
        let p = problems(serde_json::json!({"clientid": "other"}));
        assert_eq!(fields(&p), ["clientid"]);
    }

    /// kubeflow/manifests' Keycloak guide (common/dex/README.md), after $VAR expansion: its
    /// `jwksUri` is not a Dex key (Dex ignores it silently); kfsec names the one to use.
    #[test]
    fn the_kubeflow_keycloak_guide_config_is_refused_only_for_its_jwks_uri() {
        let guide = serde_json::json!({
            "issuer": "https://keycloak.example.com/realms/kubeflow",
            "jwksUri": "https://keycloak.example.com/realms/kubeflow/protocol/openid-connect/certs",
            "clientID": "kubeflow-oidc-authservice",
            "clientSecret": "s3cret",
            "redirectURI": "https://kf.example.com/dex/callback",
            "insecureSkipVerify": true,
            "insecureSkipEmailVerified": true,
            "userNameKey": "email",
            "scopes": ["openid", "profile", "email", "offline_access"],
        });
        let p = open_connector("keycloak", guide.clone(), &ctx()).unwrap_err();
        assert_eq!(fields(&p), ["jwksUri"]);
        assert!(p[0].message.contains("providerDiscoveryOverrides.jwksURL"), "{p:?}");
        let mut fixed = guide;
        let jwks = fixed.as_object_mut().unwrap().remove("jwksUri").unwrap();
        fixed["providerDiscoveryOverrides"] = serde_json::json!({ "jwksURL": jwks });
        let c = open_connector("keycloak", fixed, &ctx()).unwrap();
        assert_eq!(c.scopes, ["openid", "profile", "email", "offline_access"]);
        assert_eq!(c.mapping.user_name_key, "email");
    }

    #[test]
    fn client_authentication_follows_dex_and_discovery() {
        let m = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(uses_basic_auth(None, "https://op.example.com", None));
        assert!(!uses_basic_auth(None, "https://dev-1.okta.com/oauth2/default", None));
        assert!(!uses_basic_auth(None, "https://x.oktapreview.com", None));
        assert!(uses_basic_auth(None, "https://notokta.com", None));
        assert!(uses_basic_auth(Some(false), "https://dev-1.okta.com", None));
        assert!(!uses_basic_auth(Some(true), "https://op.example.com", None));
        let post = m(&["client_secret_post"]);
        assert!(!uses_basic_auth(None, "https://op.example.com", Some(&post)));
        let both = m(&["client_secret_post", "client_secret_basic"]);
        assert!(uses_basic_auth(None, "https://op.example.com", Some(&both)));
    }

    fn mapping() -> Mapping {
        let c = open_connector("up", base(), &ctx()).unwrap();
        c.mapping
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn claims_become_an_identity_as_dex_maps_them() {
        let mut m = mapping();
        let c = claims(
            serde_json::json!({"sub": "u1", "name": "Ann", "email": "ann@example.com",
            "email_verified": "true", "preferred_username": "ann", "groups": ["a", {"name": "b"}, {"id": 3}]}),
        );
        let id = derive(&m, &c).unwrap();
        assert_eq!(
            (id.user_id.as_str(), id.username.as_str(), id.email.as_str()),
            ("u1", "Ann", "ann@example.com")
        );
        assert!(id.email_verified);
        assert!(id.groups.is_empty(), "groups only with insecureEnableGroups");
        m.enable_groups = true;
        assert_eq!(derive(&m, &c).unwrap().groups, ["a", "b"]);
        // Cognito: no name, string email_verified, cognito:groups.
        m.user_name_key = "cognito:username".into();
        m.groups_key = "cognito:groups".into();
        let cog = claims(
            serde_json::json!({"sub": "c1", "cognito:username": "bob", "email": "bob@example.com",
            "email_verified": "false", "cognito:groups": ["admins", "dev"]}),
        );
        let id = derive(&m, &cog).unwrap();
        assert_eq!((id.username.as_str(), id.email_verified), ("bob", false));
        assert_eq!(id.groups, ["admins", "dev"]);
        // A single string group; a malformed groups claim.
        let one = claims(
            serde_json::json!({"sub": "c1", "cognito:username": "bob", "email": "b@x", "email_verified": true, "cognito:groups": "solo"}),
        );
        assert_eq!(derive(&m, &one).unwrap().groups, ["solo"]);
        let bad = claims(
            serde_json::json!({"sub": "c1", "cognito:username": "bob", "email": "b@x", "email_verified": true, "groups": [1]}),
        );
        assert!(matches!(derive(&m, &bad), Err(ConnectorError::Upstream(e)) if e.contains("malformed")));
        // Missing pieces.
        let no_name = claims(serde_json::json!({"sub": "c1", "email": "b@x", "email_verified": true}));
        assert!(
            matches!(derive(&m, &no_name), Err(ConnectorError::Misconfigured(e)) if e.contains("cognito:username"))
        );
        let no_ev = claims(serde_json::json!({"sub": "c1", "cognito:username": "b", "email": "b@x"}));
        assert!(matches!(derive(&m, &no_ev), Err(ConnectorError::Misconfigured(e)) if e.contains("email_verified")));
        m.skip_email_verified = true;
        assert!(derive(&m, &no_ev).unwrap().email_verified);
        let no_email = claims(serde_json::json!({"sub": "c1", "cognito:username": "b", "mail": "m@x"}));
        assert!(matches!(derive(&m, &no_email), Err(ConnectorError::Misconfigured(e)) if e.contains("\"email\"")));
        m.email_key = "mail".into();
        assert_eq!(derive(&m, &no_email).unwrap().email, "m@x");
        m.user_id_key = "oid".into();
        assert!(matches!(derive(&m, &no_email), Err(ConnectorError::Misconfigured(e)) if e.contains("oid")));
    }

    #[test]
    fn mapping_override_filters_prefixes_and_new_groups_apply_in_dex_order() {
        let mut m = mapping();
        m.enable_groups = true;
        m.email_key = "mail".into();
        let c = claims(
            serde_json::json!({"sub": "u", "name": "n", "email": "e@x", "mail": "m@x", "email_verified": true,
            "groups": ["kf-admins", "kf-users", "other"], "roles": ["r1"], "org": "acme", "team": "ml|ops"}),
        );
        assert_eq!(
            derive(&m, &c).unwrap().email,
            "e@x",
            "mapping only fills a missing claim"
        );
        m.override_mapping = true;
        assert_eq!(derive(&m, &c).unwrap().email, "m@x");
        m.override_mapping = false;
        m.groups_filter = Some(regex::Regex::new("^kf-").unwrap());
        m.allowed_groups = vec!["kf-users".into(), "other".into()];
        m.groups_prefix = "up:".into();
        m.groups_suffix = "!".into();
        m.new_groups = vec![NewGroupFromClaims {
            claims: vec!["org".into(), "team".into(), "missing".into()],
            delimiter: "|".into(),
            clear_delimiter: true,
            prefix: "org".into(),
            extra: BTreeMap::new(),
        }];
        // filter (kf-*) → allowed (kf-users) → prefix/suffix → new group.
        assert_eq!(derive(&m, &c).unwrap().groups, ["up:kf-users!", "org|acme|mlops"]);
        m.allowed_groups = vec!["other".into()];
        assert!(matches!(derive(&m, &c), Err(ConnectorError::NotInAllowedGroups)));
    }
}
