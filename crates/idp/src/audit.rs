//! Identity events of the IdP's requests: each login, token or device-flow request's audit
//! Event (`kfsec_audit::RequestAudit`, opened by the gateway's edge) becomes the identity action
//! it performs — objectRef `{apiGroup: identity.kfsec.io, resource, name}`, the action's verb,
//! `kfsec.io/connector` and `kfsec.io/reason` — and a lockout a failed login starts is its own
//! Event with the same audit id.
//!
//! Security invariants: only account names, connector ids, client ids, grant types and fixed
//! reason texts are recorded — never a password, code, token, cookie or user code; the attempted
//! account is bounded in length.

use kfsec_audit::RequestAudit;
use kfsec_audit::request::{
    CLIENT_ANNOTATION, CONNECTOR_ANNOTATION, GRANT_TYPE_ANNOTATION, OUTCOME_ANNOTATION, REASON_ANNOTATION, identity,
};
use kfsec_types::identity::UserInfo;

/// The longest attempted account name recorded (longer ones are cut, marked with `…`).
const MAX_ACCOUNT: usize = 256;

fn bounded(account: &str) -> String {
    if account.chars().count() <= MAX_ACCOUNT {
        return account.to_owned();
    }
    let mut s: String = account.chars().take(MAX_ACCOUNT).collect();
    s.push('…');
    s
}

/// One login's audit: started with the connector and the attempted account, ended by
/// [`Login::failed`] or [`Login::succeeded`]. Does nothing when auditing is off.
pub(crate) struct Login<'a> {
    audit: Option<&'a RequestAudit>,
    connector: String,
    account: String,
}

impl<'a> Login<'a> {
    /// A login at `connector` for `account` (empty: not known yet, as at an upstream callback).
    pub(crate) fn start(audit: Option<&'a RequestAudit>, connector: &str, account: &str) -> Self {
        let account = bounded(account.trim());
        if let Some(a) = audit {
            a.identity(identity::LOGINS, identity::LOGIN, Some(&account));
            a.annotate(CONNECTOR_ANNOTATION, connector.to_owned());
        }
        Self {
            audit,
            connector: connector.to_owned(),
            account,
        }
    }

    /// The login failed for `reason` (a fixed text: `invalid credentials`, `locked out`…).
    pub(crate) fn failed(&self, reason: &str) {
        if let Some(a) = self.audit {
            a.annotate(OUTCOME_ANNOTATION, "failure");
            a.annotate(REASON_ANNOTATION, reason.to_owned());
        }
    }

    /// The failure just recorded started a lockout of the account: its own `lockout` Event.
    pub(crate) fn locked_out(&self, code: u16) {
        if let Some(a) = self.audit {
            a.side_event(
                identity::LOCKOUTS,
                identity::LOCKOUT,
                Some(&self.account),
                &[
                    (CONNECTOR_ANNOTATION, &self.connector),
                    (REASON_ANNOTATION, "too many failed attempts"),
                ],
                code,
            );
        }
    }

    /// The login succeeded as `email` (with `groups`): the Event's user and objectRef name.
    pub(crate) fn succeeded(&self, email: &str, groups: &[String]) {
        if let Some(a) = self.audit {
            a.annotate(OUTCOME_ANNOTATION, "success");
            a.object_name(email);
            a.set_user(UserInfo::authenticated(email, groups));
        }
    }
}

/// Bounded label of a grant type (`other` for anything unknown: a client's text never lands in
/// the log unbounded).
fn grant_label(grant: &str) -> &'static str {
    match grant {
        "authorization_code" => "authorization_code",
        "refresh_token" => "refresh_token",
        "password" => "password",
        crate::device::GRANT_TYPE => crate::device::GRANT_TYPE,
        _ => "other",
    }
}

/// A token endpoint request: `issue` (authorization code, device code), `refresh`, or the
/// password grant's `login` on `tokens` / `logins`, with the grant type and client.
pub(crate) fn token_request(audit: &RequestAudit, grant: Option<&str>, client_id: Option<&str>) {
    let g = grant.map_or("other", grant_label);
    // Not yet authenticated: as long as the form is.
    let client_id = client_id.map(bounded);
    let client_id = client_id.as_deref();
    match g {
        "refresh_token" => audit.identity(identity::TOKENS, identity::REFRESH, client_id),
        "password" => audit.identity(identity::LOGINS, identity::LOGIN, None),
        _ => audit.identity(identity::TOKENS, identity::ISSUE, client_id),
    }
    audit.annotate(GRANT_TYPE_ANNOTATION, g);
    if let Some(c) = client_id {
        audit.annotate(CLIENT_ANNOTATION, c.to_owned());
    }
}

/// A failed request's reason (an OAuth2 error code or a fixed text), unless one was recorded.
pub(crate) fn failed(audit: Option<&RequestAudit>, reason: &str) {
    if let Some(a) = audit {
        a.annotate_default(OUTCOME_ANNOTATION, "failure");
        a.annotate_default(REASON_ANNOTATION, reason.to_owned());
    }
}

/// The client an action was for.
pub(crate) fn client(audit: Option<&RequestAudit>, client_id: &str) {
    if let Some(a) = audit {
        a.annotate(CLIENT_ANNOTATION, bounded(client_id));
    }
}

/// The token endpoint's client, authenticated: annotated, and (but for the password grant,
/// whose objectRef names the account) the name of the `tokens` objectRef — also when the
/// client authenticated with HTTP Basic and sent no `client_id` field.
pub(crate) fn token_client(audit: Option<&RequestAudit>, grant: Option<&str>, client_id: &str) {
    client(audit, client_id);
    if let Some(a) = audit
        && grant != Some("password")
    {
        a.object_name(&bounded(client_id));
    }
}

/// A device-flow approval (the browser leg's callback): `approve` on `devicecodes`.
pub(crate) fn device_approval(audit: Option<&RequestAudit>) {
    if let Some(a) = audit {
        a.identity(identity::DEVICECODES, identity::APPROVE, None);
    }
}

/// A request that succeeded, unless an outcome was recorded.
pub(crate) fn succeeded(audit: Option<&RequestAudit>) {
    if let Some(a) = audit {
        a.annotate_default(OUTCOME_ANNOTATION, "success");
    }
}

/// A device code issued to `client_id`: `issue` on `devicecodes`.
pub(crate) fn device_code(audit: Option<&RequestAudit>, client_id: &str) {
    if let Some(a) = audit {
        a.identity(identity::DEVICECODES, identity::ISSUE, None);
        a.annotate(CLIENT_ANNOTATION, bounded(client_id));
    }
}

/// The user the tokens of `resp` were issued to: the `email` (else `sub`) and `groups` claims
/// of its ID token, which kfsec just signed (so read without verifying again).
fn token_subject(resp: &crate::TokenResponse) -> Option<UserInfo> {
    use base64::Engine;
    let payload = resp.id_token.split('.').nth(1)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: crate::tokens::Claims = serde_json::from_slice(&raw).ok()?;
    claims_user(&claims)
}

/// A token's subject as an Event's user: its `email` claim (what the front door authenticates
/// an ID token as), else `sub`, with its `groups`.
fn claims_user(claims: &crate::tokens::Claims) -> Option<UserInfo> {
    let name = claims.email.as_deref().unwrap_or(&claims.sub);
    (!name.is_empty()).then(|| UserInfo::authenticated(name, claims.groups.as_deref().unwrap_or_default()))
}

/// `/userinfo` answered for a verified access token: the Event's user is the token's subject
/// (the token itself is never recorded).
pub(crate) fn token_holder(audit: Option<&RequestAudit>, claims: &crate::tokens::Claims) {
    if let Some(a) = audit
        && let Some(user) = claims_user(claims)
    {
        a.set_user(user);
    }
}

/// The approval screen answered (`POST /approval`), before its request is known: `approve` on
/// `tokens` (a client asking for the user's tokens).
pub(crate) fn approval_answered(audit: Option<&RequestAudit>) {
    if let Some(a) = audit {
        a.identity(identity::TOKENS, identity::APPROVE, None);
    }
}

/// The approval screen's request, once loaded: `approve` on `devicecodes` for a device login
/// (the code is never recorded), else on `tokens` named by the client; the user is who logged
/// in and answered.
pub(crate) fn approval_request(audit: Option<&RequestAudit>, device: bool, client_id: &str, user: &str) {
    if let Some(a) = audit {
        let client_id = bounded(client_id);
        if device {
            a.identity(identity::DEVICECODES, identity::APPROVE, None);
        } else {
            a.identity(identity::TOKENS, identity::APPROVE, Some(&client_id));
        }
        a.annotate(CLIENT_ANNOTATION, client_id);
        a.set_user(UserInfo::authenticated(user, &[]));
    }
}

/// The tokens of a token endpoint request were issued: the Event's user is their subject.
pub(crate) fn token_user(audit: Option<&RequestAudit>, resp: &crate::TokenResponse) {
    if let Some(a) = audit
        && let Some(user) = token_subject(resp)
    {
        a.set_user(user);
    }
}

/// The device login was approved by the user the device's tokens are for.
pub(crate) fn device_approved(audit: Option<&RequestAudit>, resp: &crate::TokenResponse) {
    if let Some(a) = audit
        && let Some(user) = token_subject(resp)
    {
        a.annotate(OUTCOME_ANNOTATION, "success");
        a.set_user(user);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kfsec_audit::request::Begin;
    use kfsec_audit::testing::Capture;
    use kfsec_types::{Clock, ManualClock, UnixTime};

    use super::*;

    #[test]
    fn a_hostile_client_id_is_bounded_in_the_event() {
        let cap = Capture::metadata();
        let clock: Arc<dyn Clock> = ManualClock::new(UnixTime::from_secs(1));
        let a = RequestAudit::begin(
            &cap.auditor(),
            &clock,
            Begin {
                audit_id: "a1".into(),
                method: http::Method::POST,
                request_uri: "/dex/token".into(),
                source_ips: vec![].into(),
                user_agent: None,
            },
        )
        .unwrap_or_else(|| panic!("auditing is on"));
        // An unauthenticated token request's client_id: up to the form limit (megabytes).
        let huge = "c".repeat(1 << 20);
        token_request(&a, Some("refresh_token"), Some(&huge));
        a.complete(401);
        let e = cap.events().pop().unwrap_or_else(|| panic!("no event"));
        let line = serde_json::to_string(&e).unwrap_or_default();
        assert!(line.len() < 4096, "the event is {} bytes", line.len());
    }
}
