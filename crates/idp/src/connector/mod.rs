//! Upstream identity connectors (Dex's connector layer): the identity a connector vouches for,
//! the two connector shapes (password and redirect/callback), their refusals, and the set of
//! connectors a deployment offers.
//!
//! Invariants: a connector returns an identity only after the upstream proved the user (a bind,
//! a verified ID token); every failure is a [`ConnectorError`] whose status is a 4xx or 502–504,
//! never a 500; secrets in connector state ([`UpstreamIdentity::connector_data`]) are never
//! logged (its `Debug` hides them); every upstream call is bounded by the connector's timeout.

pub mod config;
pub mod jwks;
pub mod ldap;
pub mod microsoft;
pub mod oidc;
pub mod upstream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ::http::StatusCode;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use kfsec_types::Rng;

/// The id of the built-in password database (Dex's `local`).
pub const LOCAL: &str = "local";

/// What an upstream says about a user (Dex's `connector.Identity`).
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpstreamIdentity {
    /// The upstream's stable id of the user (the basis of `sub`).
    pub user_id: String,
    /// Display name (`name`).
    pub username: String,
    /// `preferred_username`.
    #[serde(default)]
    pub preferred_username: String,
    /// Email: the Kubeflow user id.
    pub email: String,
    /// Whether the upstream vouches for the email.
    pub email_verified: bool,
    /// Groups (after the connector's filters).
    #[serde(default)]
    pub groups: Vec<String>,
    /// What the connector needs to refresh this identity (an upstream refresh token, the LDAP
    /// entry's DN). Kept with each refresh token, never shown, never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector_data: Option<serde_json::Value>,
}

impl std::fmt::Debug for UpstreamIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamIdentity")
            .field("user_id", &self.user_id)
            .field("username", &self.username)
            .field("preferred_username", &self.preferred_username)
            .field("email", &self.email)
            .field("email_verified", &self.email_verified)
            .field("groups", &self.groups)
            .field("connector_data", &self.connector_data.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// The scopes of the login that a connector acts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scopes {
    /// `offline_access`: the client wants a refresh token (ask the upstream for one too).
    pub offline_access: bool,
    /// `groups`: the client wants groups (fetch them).
    pub groups: bool,
}

impl Scopes {
    /// The connector-relevant part of a client's scope list.
    pub fn from_list(scopes: &[String]) -> Self {
        let has = |s: &str| scopes.iter().any(|x| x == s);
        Self {
            offline_access: has("offline_access"),
            groups: has("groups"),
        }
    }
}

/// Why a connector could not log a user in or refresh them. Each maps to a page status (never
/// 500) and, on refresh, to an OAuth2 error.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// Wrong user name or password (password connectors).
    #[error("invalid username or password")]
    BadCredentials,
    /// The user is in none of the connector's allowed groups.
    #[error("user is not a member of any of the required groups")]
    NotInAllowedGroups,
    /// More than one directory entry matches the user name.
    #[error("more than one account matches {0:?}")]
    Ambiguous(String),
    /// The upstream says the user may not log in (`error=access_denied`, a disabled account).
    #[error("the identity provider refused the login: {0}")]
    Denied(String),
    /// The callback is not the answer to a login this browser started (missing or bad state,
    /// no code).
    #[error("invalid callback: {0}")]
    BadCallback(String),
    /// On refresh: the user is gone upstream, the upstream grant was revoked, or their entry
    /// changed (the refresh fails with `invalid_grant`).
    #[error("the identity provider no longer accepts this user: {0}")]
    Revoked(String),
    /// The upstream did not answer in time.
    #[error("the identity provider did not answer in time")]
    Timeout,
    /// The upstream could not be reached.
    #[error("the identity provider could not be reached: {0}")]
    Unreachable(String),
    /// The upstream answered, but not as the protocol says (bad token, bad JSON, error status).
    #[error("the identity provider answered badly: {0}")]
    Upstream(String),
    /// The connector is misconfigured in a way only a login shows (e.g. a missing claim).
    #[error("the connector is misconfigured: {0}")]
    Misconfigured(String),
}

impl ConnectorError {
    /// The HTTP status of the page a browser gets: 4xx for what the user or their account
    /// causes, 502/504 for the upstream's failures.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadCredentials => StatusCode::UNAUTHORIZED,
            Self::NotInAllowedGroups | Self::Denied(_) | Self::Revoked(_) => StatusCode::FORBIDDEN,
            Self::Ambiguous(_) => StatusCode::CONFLICT,
            Self::BadCallback(_) => StatusCode::BAD_REQUEST,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Unreachable(_) | Self::Upstream(_) | Self::Misconfigured(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// What the user is told (no upstream internals: those are logged).
    pub fn user_message(&self) -> &'static str {
        match self {
            Self::BadCredentials => "Invalid username and password.",
            Self::NotInAllowedGroups => "You are not a member of any of the required groups to authenticate.",
            Self::Ambiguous(_) => {
                "More than one account matches this user name. Ask your administrator to fix the directory."
            }
            Self::Denied(_) => "The identity provider refused the login.",
            Self::BadCallback(_) => {
                "This login answer does not belong to a login started in this browser. Start again."
            }
            Self::Revoked(_) => "The identity provider no longer accepts this account.",
            Self::Timeout => "The identity provider did not answer in time. Try again later.",
            Self::Unreachable(_) => "The identity provider could not be reached. Try again later.",
            Self::Upstream(_) | Self::Misconfigured(_) => {
                "The identity provider's answer could not be used. Your administrator can find the details in the log."
            }
        }
    }
}

/// A connector with a user name and password form (`ldap`; `local` is built in).
#[async_trait]
pub trait PasswordConnector: Send + Sync {
    /// The form's label for the user name (Dex's `usernamePrompt`; default `Username`).
    fn prompt(&self) -> &str;
    /// Checks `username`/`password` upstream. `Ok(None)`: the credentials are wrong.
    async fn login(
        &self,
        scopes: Scopes,
        username: &str,
        password: &str,
    ) -> Result<Option<UpstreamIdentity>, ConnectorError>;
    /// Re-checks a user logged in earlier (`identity` carries its `connector_data`) and returns
    /// their current identity; [`ConnectorError::Revoked`] when they may no longer log in.
    async fn refresh(&self, scopes: Scopes, identity: &UpstreamIdentity) -> Result<UpstreamIdentity, ConnectorError>;
}

/// Where to send the browser, and what to keep (sealed, in kfsec's `state`) until it returns.
#[derive(Debug, Clone)]
pub struct LoginRedirect {
    /// The upstream's authorization URL with all parameters.
    pub url: String,
    /// Per-login secrets (PKCE verifier, nonce) handed back to [`CallbackConnector::callback`].
    pub pending: serde_json::Value,
}

/// A connector that sends the browser to the upstream and gets it back at `/callback`
/// (`oidc`, `microsoft`).
#[async_trait]
pub trait CallbackConnector: Send + Sync {
    /// Starts a login: `callback` is the issuer's `/callback` URL, `state` the opaque value the
    /// upstream must echo, `rng` the source for PKCE verifiers and nonces.
    async fn login_url(
        &self,
        scopes: Scopes,
        callback: &str,
        state: &str,
        rng: &dyn Rng,
    ) -> Result<LoginRedirect, ConnectorError>;
    /// Finishes a login from the callback's query parameters (`code`, or `error`).
    async fn callback(
        &self,
        scopes: Scopes,
        callback: &str,
        pending: &serde_json::Value,
        query: &HashMap<String, String>,
    ) -> Result<UpstreamIdentity, ConnectorError>;
    /// Re-checks a user logged in earlier (their `connector_data`) upstream and returns their
    /// current identity (a new `connector_data` when the upstream rotated its refresh token).
    async fn refresh(&self, scopes: Scopes, identity: &UpstreamIdentity) -> Result<UpstreamIdentity, ConnectorError>;
}

/// The two connector shapes.
#[derive(Clone)]
pub enum ConnectorKind {
    /// The built-in password database (`enablePasswordDB`).
    Local,
    /// A user name and password checked upstream.
    Password(Arc<dyn PasswordConnector>),
    /// A redirect to the upstream and back.
    Callback(Arc<dyn CallbackConnector>),
}

/// One connector as configured (Dex's `{type, id, name, config}`).
#[derive(Clone)]
pub struct Connector {
    /// Its id (`connector_id=`, the second half of `sub`).
    pub id: String,
    /// Its display name ("Log in with {name}").
    pub name: String,
    /// Its Dex type (`oidc`, `ldap`, `microsoft`, `local`).
    pub type_name: String,
    /// Its implementation.
    pub kind: ConnectorKind,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("type", &self.type_name)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// The built-in password database, as Dex appends it.
    pub fn local() -> Self {
        Self {
            id: LOCAL.into(),
            name: "Email".into(),
            type_name: LOCAL.into(),
            kind: ConnectorKind::Local,
        }
    }
}

/// The longest group name and the most groups kfsec takes from an upstream.
const MAX_GROUP: usize = 256;
const MAX_GROUPS: usize = 1024;

/// The checks every upstream identity passes before kfsec mints anything for it. The email is
/// the Kubeflow user id, so it must be a login name kfsec accepts (never in Kubernetes'
/// `system:` space: an upstream that let a user pick `system:serviceaccount:…` would otherwise
/// impersonate a service account) and verified by the upstream. Groups in a reserved space
/// (`system:masters`, `kfsec:admins`, in any case: [`kfsec_types::identity::is_reserved_group`] —
/// an upstream where users create groups, as Entra ID lets them by default, would otherwise
/// make anyone cluster-admin), with control characters, surrounding spaces (a consumer
/// that trims `a, system:masters` would see the name) or a comma (the groups header's
/// separator: `a,b` would become two groups) are dropped with a warning; so are duplicates and
/// groups beyond [`MAX_GROUPS`].
pub fn admit(mut identity: UpstreamIdentity) -> Result<UpstreamIdentity, ConnectorError> {
    if identity.user_id.is_empty() {
        return Err(ConnectorError::Misconfigured(
            "the upstream identity has no user id".into(),
        ));
    }
    if identity.email.is_empty() {
        return Err(ConnectorError::Misconfigured(
            "the upstream identity has no email (the Kubeflow user id); map one with the connector's email setting"
                .into(),
        ));
    }
    if let Err(e) = crate::users::validate_login_name(&identity.email) {
        return Err(ConnectorError::Denied(format!(
            "unusable email {:?}: {e}",
            identity.email
        )));
    }
    if !identity.email_verified {
        return Err(ConnectorError::Denied(format!(
            "the upstream has not verified the email {:?}",
            identity.email
        )));
    }
    let mut seen = std::collections::HashSet::new();
    let before = identity.groups.len();
    identity.groups.retain(|g| {
        !g.is_empty()
            && g.len() <= MAX_GROUP
            && g.trim() == g
            && !kfsec_types::identity::is_reserved_group(g)
            && !g.contains(',')
            && !g.chars().any(char::is_control)
            && seen.insert(g.clone())
    });
    identity.groups.truncate(MAX_GROUPS);
    if identity.groups.len() != before {
        tracing::warn!(
            user = %identity.email,
            dropped = before - identity.groups.len(),
            "upstream groups dropped (system: and kfsec: names, commas, control characters, duplicates, over-long or too many)"
        );
    }
    Ok(identity)
}

/// Reads Dex's `sub` (base64url of the protobuf `{1: user_id, 2: connector_id}`) back into
/// `(user_id, connector_id)`; `None` if it is not one.
pub fn parse_subject(sub: &str) -> Option<(String, String)> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sub)
        .ok()
        .filter(|r| !r.is_empty())?;
    let mut fields = [String::new(), String::new()];
    let mut rest = raw.as_slice();
    while let Some((&tag, after)) = rest.split_first() {
        let slot = match tag {
            0x0a => 0,
            0x12 => 1,
            _ => return None,
        };
        let (mut len, mut shift, mut i) = (0usize, 0u32, 0usize);
        loop {
            let b = *after.get(i)?;
            len |= usize::from(b & 0x7f).checked_shl(shift)?;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 28 {
                return None;
            }
        }
        let body = after.get(i..i.checked_add(len)?)?;
        fields[slot] = String::from_utf8(body.to_vec()).ok()?;
        rest = &after[i + len..];
    }
    let [user, conn] = fields;
    Some((user, conn))
}

/// Runs a connector's whole exchange (`f`) within its `timeout`.
pub(crate) async fn within<T>(
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T, ConnectorError>>,
) -> Result<T, ConnectorError> {
    tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| ConnectorError::Timeout)?
}

/// A redirect connector's check that kfsec's callback URL is the one registered upstream (its
/// `redirectURI`, checked at startup too): Dex's message when they differ.
pub(crate) fn check_callback(configured: &str, callback: &str) -> Result<(), ConnectorError> {
    if callback == configured {
        Ok(())
    } else {
        Err(ConnectorError::Misconfigured(format!(
            "expected callback URL {callback:?} did not match the URL in the config {configured:?}"
        )))
    }
}

/// How long an upstream call may take unless a connector's `timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(email: &str, groups: &[&str]) -> UpstreamIdentity {
        UpstreamIdentity {
            user_id: "u1".into(),
            username: "U".into(),
            email: email.into(),
            email_verified: true,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..UpstreamIdentity::default()
        }
    }

    #[test]
    fn upstream_identities_cannot_reach_reserved_names_or_split_groups() {
        let ok = admit(ident(
            "ann@example.com",
            &[
                "team-a",
                "system:masters",
                "System:Masters",
                " system:masters",
                "kfsec:admins",
                "KFSEC:ADMINS",
                "kfsec:s3",
                "trailing ",
                "a,b",
                "bad\nname",
                "",
                "team-a",
                "team-b",
                "équipe",
            ],
        ))
        .unwrap();
        assert_eq!(ok.groups, ["team-a", "team-b", "équipe"]);
        for email in [
            "system:serviceaccount:kubeflow:pipeline-runner",
            "system:admin",
            "",
            "a\nb",
        ] {
            assert!(admit(ident(email, &[])).is_err(), "{email:?}");
        }
        let mut unverified = ident("ann@example.com", &[]);
        unverified.email_verified = false;
        assert!(matches!(admit(unverified), Err(ConnectorError::Denied(_))));
        let mut no_id = ident("ann@example.com", &[]);
        no_id.user_id.clear();
        assert!(admit(no_id).is_err());
        let many: Vec<String> = (0..2000).map(|i| format!("g{i}")).collect();
        let mut big = ident("ann@example.com", &[]);
        big.groups = many;
        assert_eq!(admit(big).unwrap().groups.len(), MAX_GROUPS);
    }

    #[test]
    fn subjects_read_back_as_dex_encodes_them() {
        let sub = crate::tokens::dex_subject("08a8684b-db88-4b73-90a9-3cd1661f5466", "local");
        assert_eq!(
            parse_subject(&sub),
            Some(("08a8684b-db88-4b73-90a9-3cd1661f5466".into(), "local".into()))
        );
        let long = "u".repeat(300);
        assert_eq!(
            parse_subject(&crate::tokens::dex_subject(&long, "ldap")),
            Some((long, "ldap".into()))
        );
        assert_eq!(
            parse_subject("Cg4xNTg0MTE4NTY0MTc4NBIFbG9jYWw"),
            Some(("15841185641784".into(), "local".into()))
        );
        for bad in ["", "!!", "CgV4", "GgF4", "Cv____8P"] {
            assert_eq!(parse_subject(bad), None, "{bad}");
        }
    }
}
