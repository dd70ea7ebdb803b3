//! Codes, tokens and their checks: ID/access token claims (Dex's claim set), single-use
//! authorization codes with PKCE, rotating refresh tokens with a reuse window, and ID token
//! verification for relying parties inside the process (the gatekeeper, bearer auth).
//!
//! Invariants: a code is redeemed at most once (`Store::take`), by the client it was issued to,
//! with the same redirect URI and a matching PKCE verifier; token checks cover signature, `iss`,
//! `aud`, `exp` and (for the gatekeeper) `nonce`.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use kfsec_store::StoreError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::secret::{ct_eq, random_token, sha256_b64, sha256_hex};
use crate::{Client, Idp, IdpError, OAuthError, User};

pub(crate) const CODE_PREFIX: &str = "/kfsec/idp/codes/";
const REFRESH_PREFIX: &str = "/kfsec/idp/refresh/";
/// Codes live at most this long.
pub(crate) const CODE_TTL: Duration = Duration::from_secs(600);

/// The claims of kfsec's ID and access tokens (Dex's set).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Subject (Dex's encoding of user id + connector).
    pub sub: String,
    /// Audience: serialized as a string when single, as Dex does.
    #[serde(serialize_with = "ser_aud", deserialize_with = "de_aud")]
    pub aud: Vec<String>,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// The client's nonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Access token hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_hash: Option<String>,
    /// Email (scope `email`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Always true for local users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
    /// Groups (scope `groups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// Name (scope `profile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Preferred user name (scope `profile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
}

fn ser_aud<S: Serializer>(aud: &[String], s: S) -> Result<S::Ok, S::Error> {
    match aud {
        [one] => s.serialize_str(one),
        many => many.serialize(s),
    }
}

fn de_aud<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Aud::deserialize(d)? {
        Aud::One(a) => vec![a],
        Aud::Many(v) => v,
    })
}

/// The `/token` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    /// Access token (a signed JWT, as Dex issues).
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Refresh token when `offline_access` was granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The ID token.
    pub id_token: String,
}

/// What a user granted a client: enough to mint tokens again on refresh.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Grant {
    pub client_id: String,
    pub scopes: Vec<String>,
    #[serde(default)]
    pub nonce: Option<String>,
    pub email: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CodeRecord {
    pub grant: Grant,
    pub redirect_uri: String,
    #[serde(default)]
    pub code_challenge: Option<String>,
    #[serde(default)]
    pub code_challenge_method: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RefreshRecord {
    grant: Grant,
    created_at: u64,
    /// The successor, kept only for the reuse interval after rotation.
    #[serde(default)]
    replaced_by: Option<String>,
}

/// Why a presented token was refused (all answered as 401; detail is logged).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// Signature/format problem.
    #[error(transparent)]
    Jwt(#[from] crate::jwt::JwtError),
    /// Wrong issuer.
    #[error("wrong issuer")]
    Issuer,
    /// Wrong audience.
    #[error("wrong audience")]
    Audience,
    /// Expired.
    #[error("token expired")]
    Expired,
    /// Nonce mismatch.
    #[error("nonce mismatch")]
    Nonce,
    /// No email claim.
    #[error("token carries no email")]
    NoEmail,
}

/// Dex's `sub`: base64url (no padding) of a protobuf `{1: user_id, 2: connector_id}`.
pub fn dex_subject(user_id: &str, connector_id: &str) -> String {
    let mut buf = Vec::with_capacity(user_id.len() + connector_id.len() + 6);
    for (tag, s) in [(0x0a_u8, user_id), (0x12, connector_id)] {
        buf.push(tag);
        let mut n = s.len();
        loop {
            let b = u8::try_from(n & 0x7f).unwrap_or(0);
            n >>= 7;
            if n == 0 {
                buf.push(b);
                break;
            }
            buf.push(b | 0x80);
        }
        buf.extend_from_slice(s.as_bytes());
    }
    B64.encode(buf)
}

impl Idp {
    fn claims_for(&self, grant: &Grant, user: &User, aud: &str) -> Claims {
        let now = self.clock.now();
        let has = |s: &str| grant.scopes.iter().any(|x| x == s);
        Claims {
            iss: self.settings.issuer.clone(),
            sub: dex_subject(&user.user_id, "local"),
            aud: vec![aud.to_owned()],
            exp: now.add(self.settings.id_token_ttl).as_secs(),
            iat: now.as_secs(),
            nonce: grant.nonce.clone().filter(|n| !n.is_empty()),
            at_hash: None,
            email: has("email").then(|| user.email.clone()),
            email_verified: has("email").then_some(true),
            groups: has("groups").then(|| user.groups.clone()),
            name: has("profile").then(|| user.username.clone()),
            preferred_username: has("profile").then(|| user.username.clone()),
        }
    }

    /// Mints the access and ID tokens (and a refresh token if `refresh` is given).
    fn mint(&self, grant: &Grant, user: &User, refresh: Option<String>) -> Result<TokenResponse, IdpError> {
        let keys = self.keys.keys();
        let mut claims = self.claims_for(grant, user, &grant.client_id);
        let access_token = keys.signing.sign(&claims)?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, access_token.as_bytes());
        claims.at_hash = Some(B64.encode(digest.as_ref().get(..16).unwrap_or_default()));
        let id_token = keys.signing.sign(&claims)?;
        Ok(TokenResponse {
            access_token,
            token_type: "bearer".into(),
            expires_in: self.settings.id_token_ttl.as_secs(),
            refresh_token: refresh,
            id_token,
        })
    }

    async fn new_refresh(&self, grant: &Grant, created_at: u64) -> Result<Option<String>, IdpError> {
        if !grant.scopes.iter().any(|s| s == "offline_access") {
            return Ok(None);
        }
        let token = random_token(self.rng.as_ref());
        let rec = RefreshRecord {
            grant: grant.clone(),
            created_at,
            replaced_by: None,
        };
        let ttl = self.refresh_ttl(created_at);
        self.store
            .create(
                &format!("{REFRESH_PREFIX}{}", sha256_hex(token.as_bytes())),
                serde_json::to_vec(&rec)?,
                Some(ttl),
            )
            .await?;
        Ok(Some(token))
    }

    fn refresh_ttl(&self, created_at: u64) -> Duration {
        let p = &self.settings.refresh;
        let age = Duration::from_secs(self.clock.now().as_secs().saturating_sub(created_at));
        p.idle.min(p.absolute.saturating_sub(age)).max(Duration::from_secs(1))
    }

    /// Redeems an authorization code for `client` (already authenticated by the caller).
    pub async fn redeem_code(
        &self,
        client: &Client,
        code: &str,
        redirect_uri: &str,
        verifier: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        if code.is_empty() || code.len() > 128 {
            return Err(OAuthError::invalid_request("Required param: code."));
        }
        let Some(kv) = self
            .store
            .take(&format!("{CODE_PREFIX}{}", sha256_hex(code.as_bytes())))
            .await
            .map_err(IdpError::from)?
        else {
            return Err(OAuthError::invalid_grant("Invalid or expired code parameter."));
        };
        let rec: CodeRecord = serde_json::from_slice(&kv.value).map_err(IdpError::from)?;
        if rec.grant.client_id != client.id {
            return Err(OAuthError::invalid_grant("Invalid or expired code parameter."));
        }
        if rec.redirect_uri != redirect_uri {
            return Err(OAuthError::invalid_request(
                "redirect_uri did not match URI from initial request.",
            ));
        }
        match (&rec.code_challenge, verifier) {
            (None, None) => {}
            (None, Some(_)) => {
                return Err(OAuthError::invalid_request(
                    "No PKCE flow started. Cannot check code_verifier.",
                ));
            }
            (Some(_), None) => {
                return Err(OAuthError::invalid_grant(
                    "Expecting parameter code_verifier in PKCE flow.",
                ));
            }
            (Some(challenge), Some(v)) => {
                let computed = match rec.code_challenge_method.as_deref() {
                    Some("S256") => sha256_b64(v.as_bytes()),
                    _ => v.to_owned(),
                };
                if !ct_eq(computed.as_bytes(), challenge.as_bytes()) {
                    return Err(OAuthError::invalid_grant("Invalid code_verifier."));
                }
            }
        }
        let user = self
            .users
            .find(&rec.grant.email)
            .await?
            .ok_or_else(|| OAuthError::invalid_grant("The user no longer exists."))?;
        let refresh = self.new_refresh(&rec.grant, self.clock.now().as_secs()).await?;
        Ok(self.mint(&rec.grant, &user, refresh)?)
    }

    /// Exchanges a refresh token (rotating it) for `client`.
    pub async fn refresh(&self, client: &Client, token: &str) -> Result<TokenResponse, OAuthError> {
        let key = format!("{REFRESH_PREFIX}{}", sha256_hex(token.as_bytes()));
        for _ in 0..3 {
            let Some(kv) = self.store.get(&key).await.map_err(IdpError::from)? else {
                return Err(OAuthError::invalid_grant(
                    "Refresh token is invalid or has already been claimed by another client.",
                ));
            };
            let mut rec: RefreshRecord = serde_json::from_slice(&kv.value).map_err(IdpError::from)?;
            if rec.grant.client_id != client.id {
                return Err(OAuthError::invalid_grant(
                    "Refresh token is invalid or has already been claimed by another client.",
                ));
            }
            let user = self
                .users
                .find(&rec.grant.email)
                .await?
                .ok_or_else(|| OAuthError::invalid_grant("The user no longer exists."))?;
            if let Some(next) = rec.replaced_by {
                // Inside the reuse window (the record expires when it closes): answer with the
                // successor so parallel requests of one client do not log the user out.
                return Ok(self.mint(&rec.grant, &user, Some(next))?);
            }
            let Some(next) = self.new_refresh(&rec.grant, rec.created_at).await? else {
                return Err(OAuthError::invalid_grant(
                    "Refresh token was not issued for offline access.",
                ));
            };
            rec.replaced_by = Some(next.clone());
            let body = serde_json::to_vec(&rec).map_err(IdpError::from)?;
            match self
                .store
                .update(
                    &key,
                    body,
                    Some(kv.mod_revision),
                    Some(self.settings.refresh.reuse_interval),
                )
                .await
            {
                Ok(_) => return Ok(self.mint(&rec.grant, &user, Some(next))?),
                Err(StoreError::Conflict { .. }) => {
                    // A parallel refresh won; drop ours and answer with theirs.
                    let _ = self
                        .store
                        .delete(&format!("{REFRESH_PREFIX}{}", sha256_hex(next.as_bytes())), None)
                        .await;
                }
                Err(StoreError::NotFound(_)) => break,
                Err(e) => return Err(IdpError::from(e).into()),
            }
        }
        Err(OAuthError::invalid_grant(
            "Refresh token is invalid or has already been claimed by another client.",
        ))
    }

    /// Issues a code for a logged-in user and returns the redirect target.
    pub(crate) async fn issue_code(&self, rec: CodeRecord, state: &str) -> Result<String, IdpError> {
        let code = random_token(self.rng.as_ref());
        let redirect = append_query(&rec.redirect_uri, &[("code", &code), ("state", state)]);
        self.store
            .create(
                &format!("{CODE_PREFIX}{}", sha256_hex(code.as_bytes())),
                serde_json::to_vec(&rec)?,
                Some(CODE_TTL),
            )
            .await?;
        Ok(redirect)
    }

    /// Verifies one of our tokens. `audience`: `Some(id)` requires that client id; `None`
    /// accepts any registered client. `nonce`: required value, if any.
    pub async fn verify_token(
        &self,
        token: &str,
        audience: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<Claims, VerifyError> {
        let keys = self.keys.keys();
        let claims: Claims = crate::jwt::verify(token, keys.verifying())?;
        if claims.iss != self.settings.issuer {
            return Err(VerifyError::Issuer);
        }
        if self.clock.now().as_secs() >= claims.exp {
            return Err(VerifyError::Expired);
        }
        match audience {
            Some(a) if !claims.aud.iter().any(|x| x == a) => return Err(VerifyError::Audience),
            Some(_) => {}
            None => {
                let mut known = false;
                for a in &claims.aud {
                    if matches!(self.clients.get(a).await, Ok(Some(_))) {
                        known = true;
                        break;
                    }
                }
                if !known {
                    return Err(VerifyError::Audience);
                }
            }
        }
        if let Some(n) = nonce
            && !claims
                .nonce
                .as_deref()
                .is_some_and(|c| ct_eq(c.as_bytes(), n.as_bytes()))
        {
            return Err(VerifyError::Nonce);
        }
        Ok(claims)
    }
}

/// Appends query parameters to a (possibly relative) URI.
pub(crate) fn append_query(uri: &str, params: &[(&str, &str)]) -> String {
    let mut out = uri.to_owned();
    let mut sep = if uri.contains('?') { '&' } else { '?' };
    for (k, v) in params {
        out.push(sep);
        out.extend(url::form_urlencoded::byte_serialize(k.as_bytes()));
        out.push('=');
        out.extend(url::form_urlencoded::byte_serialize(v.as_bytes()));
        sep = '&';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dex_sub_matches_dex_encoding() {
        // Dex's docs example: user id "Cg..." for static user 08a8684b-db88-4b73-90a9-3cd1661f5466.
        assert_eq!(
            dex_subject("08a8684b-db88-4b73-90a9-3cd1661f5466", "local"),
            "CiQwOGE4Njg0Yi1kYjg4LTRiNzMtOTBhOS0zY2QxNjYxZjU0NjYSBWxvY2Fs"
        );
        assert_eq!(
            append_query("/cb", &[("code", "a b"), ("state", "x&y")]),
            "/cb?code=a+b&state=x%26y"
        );
        assert_eq!(append_query("/cb?x=1", &[("code", "c")]), "/cb?x=1&code=c");
    }
}
