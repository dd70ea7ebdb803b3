//! Codes, tokens and their checks: ID/access token claims (Dex's claim set), single-use
//! authorization codes with PKCE, rotating refresh tokens with a reuse window, and ID token
//! verification for relying parties inside the process (the gatekeeper, bearer auth).
//!
//! Invariants: a code is redeemed at most once (`Store::take`), by the client it was issued to,
//! with the same redirect URI and a matching PKCE verifier; token checks cover signature, header
//! (`crit`, `typ`), `iss`, `aud`, `exp`, `nbf` and `iat` (60 s leeway), the user's revocation
//! epoch and (for the gatekeeper) `nonce`. Access tokens carry `typ: at+jwt` (RFC 9068) and are
//! accepted only at `/userinfo`, never where an ID token is expected. A refresh token rotates
//! exactly once however many requests race on however many replicas (a claim on its record by
//! compare-and-swap; the upstream of a federated grant is asked once); for the reuse interval
//! (its end kept in the record) the old token answers with the same successor, then it is
//! `invalid_grant`. The successor token itself is in the old record only for that interval, under
//! a prefix sealed at rest ([`crate::SECRET_PREFIXES`]).
//!
//! Reuse is detected (RFC 6749 §4.1.2, RFC 9700 §4.14.2): a redeemed code and a rotated-out
//! refresh token are remembered for [`SPENT_MAX`] (or their chain's life, if shorter) as the
//! hash of what replaced them and the client that spent them, no secret; when that client
//! presents one again — a replayed code, a rotated-out token after its reuse interval, or while
//! its successor has moved on — the refresh chain it led to is revoked (both parties then log
//! in again: the server cannot tell the thief from the client), and the request is
//! `invalid_grant`. Recording is best effort (a store error leaves that reuse undetected).
//!
//! Revocation is held against the time the user's password was checked (`auth_ms`, taken before
//! the check began), never against when something was issued: a code carries it, the ID and
//! access tokens carry it as `kfsec_iat_ms`, the whole refresh chain keeps it, and the
//! gatekeeper's session starts at it. So a login that read the old password hash before a
//! `user passwd` / logout-all cannot produce anything that outlives it, however long it waits
//! (the approval screen) and whatever races the epoch check at redemption. Every token carries
//! its user (`kfsec_user`, whatever its scopes), and a token with `kfsec_iat_ms` but no user is
//! refused. `kfsec_user` is sealed (AES-256-GCM under a key derived from the IdP's stored
//! request key): it names the user to kfsec only, so a client granted no `email` scope does
//! not learn the address from it.

use std::time::Duration;

use aws_lc_rs::aead;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use kfsec_store::StoreError;
use kfsec_types::Identity;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::connector::{ConnectorError, ConnectorKind, LOCAL, Scopes, UpstreamIdentity};
use crate::secret::{ct_eq, random_token, sha256_b64, sha256_hex};
use crate::{Client, Idp, IdpError, OAuthCode, OAuthError, User};

pub(crate) const CODE_PREFIX: &str = "/kfsec/idp/codes/";
pub(crate) const REFRESH_PREFIX: &str = "/kfsec/idp/refresh/";
/// Spent codes and rotated-out refresh tokens: `<sha256>` → [`Spent`].
pub(crate) const SPENT_PREFIX: &str = "/kfsec/idp/spent/";
/// The longest a spent code or token is remembered.
pub(crate) const SPENT_MAX: Duration = Duration::from_secs(3 * 86_400);
/// The most records one revocation of a chain walks.
const MAX_CHAIN: usize = 10_000;
/// Clock skew tolerated for `nbf` and `iat` in the future.
pub(crate) const LEEWAY_SECS: u64 = 60;
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
    /// Authorized party (OIDC Core §2): the client the token was issued to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azp: Option<String>,
    /// Not before, Unix seconds (kfsec does not set it; honoured when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// When the user authenticated (the password check began), Unix milliseconds (kfsec's own
    /// claim; refreshed tokens keep the original login's): held against the user's revocation
    /// epoch, so a login after a revocation in the same second stays valid and one checked
    /// before it never does. Tokens without it count as issued at the start of their `iat`
    /// second.
    #[serde(default, rename = "kfsec_iat_ms", skip_serializing_if = "Option::is_none")]
    pub iat_ms: Option<u64>,
    /// The user (their email, the key of their revocation epoch; kfsec's own claim), sealed so
    /// only kfsec can read it: present whatever the scopes, so a token without `email` is
    /// revoked like any other. Tokens minted before sealing carry the plain email.
    #[serde(default, rename = "kfsec_user", skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
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
    /// The upstream connector and its user id (scope `federated:id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federated_claims: Option<FederatedClaims>,
}

/// Dex's `federated_claims`: which connector vouched for the user, and its id for them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FederatedClaims {
    /// The connector id (`local` for the password database).
    pub connector_id: String,
    /// The connector's user id.
    pub user_id: String,
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
    /// The connector that vouched for the user (`local`: the password database, whose users
    /// are read from the directory at each use).
    #[serde(default = "local_connector")]
    pub connector_id: String,
    /// A federated user's identity as the connector last reported it (without its connector
    /// data, which each code and refresh token keeps for itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<UpstreamIdentity>,
}

fn local_connector() -> String {
    LOCAL.to_owned()
}

/// A code as stored.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CodeRecord {
    pub grant: Grant,
    pub redirect_uri: String,
    #[serde(default)]
    pub code_challenge: Option<String>,
    #[serde(default)]
    pub code_challenge_method: Option<String>,
    /// When the user's password check began, Unix ms: held against the revocation epoch, and
    /// the `kfsec_iat_ms` and refresh-chain origin of everything the code is redeemed for.
    #[serde(default, rename = "issued_ms")]
    pub auth_ms: u64,
    /// The connector's data for this login (an upstream refresh token): handed to the refresh
    /// token the code is redeemed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<serde_json::Value>,
}

/// What a spent code or refresh token was exchanged for.
#[derive(Debug, Serialize, Deserialize)]
struct Spent {
    /// The SHA-256 (hex) of the refresh token it led to: its key under [`REFRESH_PREFIX`].
    next: String,
    /// The client it was issued to: only that client's presenting it again revokes.
    client_id: String,
}

/// Whether `s` is a SHA-256 in lowercase hex (what a spent record may name).
fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[derive(Debug, Serialize, Deserialize)]
struct RefreshRecord {
    grant: Grant,
    created_at: u64,
    /// When the chain started, Unix ms (0 in records from before revocation existed).
    #[serde(default)]
    origin_ms: u64,
    /// The successor, kept only for the reuse interval after rotation.
    #[serde(default)]
    replaced_by: Option<String>,
    /// This token's own upstream credential (connector data): each refresh token keeps its own,
    /// so an upstream that rotates refresh tokens cannot break another client's refresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upstream: Option<serde_json::Value>,
    /// After rotation: until when (Unix ms) the successor answers for this token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reuse_until_ms: Option<u64>,
    /// Until when (Unix ms) a refresh in progress, on any replica, holds the rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rotating_until_ms: Option<u64>,
}

/// How long a refresh may hold a token's rotation (asking its upstream included) before
/// another request may take it over.
const ROTATION_CLAIM: Duration = Duration::from_secs(30);
/// How often a refresh waiting for another one's rotation looks again.
const ROTATION_POLL: Duration = Duration::from_millis(20);

fn invalid_refresh() -> OAuthError {
    OAuthError::invalid_grant("Refresh token is invalid or has already been claimed by another client.")
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
    /// A `kfsec_iat_ms` claim but no user to hold it against.
    #[error("token carries no user to check for revocation")]
    NoUser,
    /// `nbf` in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat` in the future.
    #[error("token issued in the future")]
    IssuedInFuture,
    /// Issued at or before the user's revocation epoch.
    #[error("token revoked")]
    Revoked,
    /// The revocation state could not be read (the token is refused).
    #[error("revocation state unavailable: {0}")]
    Unavailable(String),
}

/// A browser session as the gatekeeper holds it, for [`Idp::id_token_for_session`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLogin {
    /// When the login's password check began, Unix ms (what the session is revoked by).
    pub started_ms: u64,
    /// When the session ends, Unix seconds.
    pub expires_at: u64,
    /// The `sub` of the ID token the session began with (empty for a session from before it
    /// was kept).
    pub subject: String,
}

/// An ID token minted for a session, and when it expires (Unix seconds). Its Debug output hides
/// the token.
#[derive(Clone)]
pub struct SessionToken {
    /// The token (a secret: never logged).
    pub token: String,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
}

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionToken")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
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

/// The AES-256-GCM key that seals `kfsec_user`.
fn user_claim_key(auth_key: &crate::flow::AuthRequestKey) -> Result<aead::LessSafeKey, IdpError> {
    let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, &auth_key.derive("kfsec_user"))
        .map_err(|_| IdpError::Internal("kfsec_user key".into()))?;
    Ok(aead::LessSafeKey::new(unbound))
}

/// `Some` of a non-empty value (Dex leaves empty claims out).
fn nonempty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

impl Idp {
    /// Claims for `user` (who logged in through `grant.connector_id`) who authenticated at
    /// `auth_ms` (Unix ms).
    fn claims_for(&self, grant: &Grant, user: &UpstreamIdentity, aud: &str, auth_ms: u64) -> Result<Claims, IdpError> {
        let now = self.clock.now();
        let has = |s: &str| grant.scopes.iter().any(|x| x == s);
        let preferred = if user.preferred_username.is_empty() {
            &user.username
        } else {
            &user.preferred_username
        };
        Ok(Claims {
            iss: self.settings.issuer.clone(),
            sub: dex_subject(&user.user_id, &grant.connector_id),
            aud: vec![aud.to_owned()],
            exp: now.add(self.settings.id_token_ttl).as_secs(),
            iat: now.as_secs(),
            nonce: grant.nonce.clone().filter(|n| !n.is_empty()),
            at_hash: None,
            azp: None,
            nbf: None,
            iat_ms: Some(auth_ms),
            user: Some(self.seal_user(&user.email)?),
            // As Dex (`omitempty`): a claim is present only when its scope was granted and
            // it has a value; `email_verified` goes with the `email` scope.
            email: has("email").then(|| nonempty(&user.email)).flatten(),
            email_verified: has("email").then_some(user.email_verified),
            groups: has("groups")
                .then(|| (!user.groups.is_empty()).then(|| user.groups.clone()))
                .flatten(),
            name: has("profile").then(|| nonempty(&user.username)).flatten(),
            preferred_username: has("profile").then(|| nonempty(preferred)).flatten(),
            federated_claims: has("federated:id").then(|| FederatedClaims {
                connector_id: grant.connector_id.clone(),
                user_id: user.user_id.clone(),
            }),
        })
    }

    /// `kfsec_user` for `email`: base64url of a fresh 96-bit nonce and the AES-256-GCM sealed
    /// address.
    fn seal_user(&self, email: &str) -> Result<String, IdpError> {
        let key = user_claim_key(&self.auth_key)?;
        let nonce = kfsec_types::random_array::<{ aead::NONCE_LEN }>(self.rng.as_ref());
        let mut sealed = email.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::empty(),
            &mut sealed,
        )
        .map_err(|_| IdpError::Internal("sealing kfsec_user failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(B64.encode(out))
    }

    /// The email a `kfsec_user` names: a sealed one opened, or (tokens minted before sealing) a
    /// plain address, which a base64url value never is. `None` if it does not open.
    fn open_user(&self, value: &str) -> Option<String> {
        if value.contains('@') {
            return Some(value.to_owned());
        }
        let key = user_claim_key(&self.auth_key).ok()?;
        let raw = B64.decode(value).ok()?;
        let (nonce, sealed) = raw.split_at_checked(aead::NONCE_LEN)?;
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let plain = key.open_in_place(nonce, aead::Aad::empty(), &mut sealed).ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }

    /// Mints the access and ID tokens (and a refresh token if `refresh` is given) for `user`
    /// who authenticated at `auth_ms`.
    async fn mint(
        &self,
        grant: &Grant,
        user: &UpstreamIdentity,
        auth_ms: u64,
        refresh: Option<String>,
    ) -> Result<TokenResponse, IdpError> {
        let keys = self.keys.keys();
        let mut claims = self.claims_for(grant, user, &grant.client_id, auth_ms)?;
        let access_token = keys.signing.sign_typed(&claims, Some(crate::jwt::ACCESS_TOKEN_TYP))?;
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

    /// The user a grant is for, now: a local user as the directory has them (gone → the grant
    /// is void), a federated user as the connector last reported them.
    async fn grant_user(&self, grant: &Grant) -> Result<UpstreamIdentity, OAuthError> {
        if let Some(ident) = &grant.identity {
            return Ok(ident.clone());
        }
        let user = self
            .users
            .find(&grant.email)
            .await?
            .ok_or_else(|| OAuthError::invalid_grant("The user no longer exists."))?;
        Ok(local_identity(&user))
    }

    /// A refresh token for `grant` whose chain started at `created_at` (Unix s) from a login at
    /// `origin_ms` (Unix ms), if offline access was granted.
    async fn new_refresh(
        &self,
        grant: &Grant,
        created_at: u64,
        origin_ms: u64,
        upstream: Option<serde_json::Value>,
    ) -> Result<Option<String>, IdpError> {
        if !grant.scopes.iter().any(|s| s == "offline_access") {
            return Ok(None);
        }
        let token = random_token(self.rng.as_ref());
        let rec = RefreshRecord {
            grant: grant.clone(),
            created_at,
            origin_ms,
            replaced_by: None,
            upstream,
            reuse_until_ms: None,
            rotating_until_ms: None,
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
        let code_hash = sha256_hex(code.as_bytes());
        let Some(kv) = self
            .store
            .take(&format!("{CODE_PREFIX}{code_hash}"))
            .await
            .map_err(IdpError::from)?
        else {
            self.spent_again(&code_hash, &client.id, "authorization code").await?;
            return Err(OAuthError::invalid_grant("Invalid or expired code parameter."));
        };
        let rec: CodeRecord = serde_json::from_slice(&kv.value).map_err(IdpError::from)?;
        // Held against the login, not the code's issue: a revocation after the password check
        // voids the code, and (as everything minted below keeps `auth_ms`) a revocation
        // landing after this check voids what is minted.
        if self
            .epochs
            .revoked(&rec.grant.email, rec.auth_ms)
            .await
            .map_err(IdpError::from)?
        {
            return Err(OAuthError::invalid_grant("Invalid or expired code parameter."));
        }
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
        let user = self.grant_user(&rec.grant).await?;
        let now = self.clock.now();
        let refresh = self
            .new_refresh(&rec.grant, now.as_secs(), rec.auth_ms, rec.upstream)
            .await?;
        if let Some(token) = &refresh {
            let ttl = self.refresh_ttl(now.as_secs());
            self.remember_spent(&code_hash, token, &client.id, ttl).await;
        }
        Ok(self.mint(&rec.grant, &user, rec.auth_ms, refresh).await?)
    }

    /// Mints tokens for a user who just proved a password at `/token` (the resource-owner
    /// password grant): `who` authenticated at `auth_ms`.
    pub(crate) async fn mint_for_password(
        &self,
        client: &Client,
        scopes: Vec<String>,
        who: crate::flow::LoggedIn,
        auth_ms: u64,
    ) -> Result<TokenResponse, OAuthError> {
        let (identity, upstream) = match who.identity {
            Some(mut ident) => {
                let data = ident.connector_data.take();
                (Some(ident), data)
            }
            None => (None, None),
        };
        let grant = Grant {
            client_id: client.id.clone(),
            scopes,
            nonce: None,
            email: who.email,
            connector_id: who.connector_id,
            identity,
        };
        let user = self.grant_user(&grant).await?;
        let refresh = self
            .new_refresh(&grant, self.clock.now().as_secs(), auth_ms, upstream)
            .await?;
        Ok(self.mint(&grant, &user, auth_ms, refresh).await?)
    }

    /// Mints an ID token for `client_id` (a built-in client whose ID tokens are bearer
    /// credentials: `kfsec-cli`, as `kfsec login` gets) standing for `identity`'s browser
    /// session `login` (the dashboard's "Download kubeconfig"). It carries exactly the session's
    /// user and groups (never more), scopes `openid email groups`, the session's `sub`, and the
    /// session's login time as `kfsec_iat_ms`: whatever revokes the session (log out everywhere,
    /// a password change, deletion) revokes the token. It expires after the ID-token lifetime,
    /// never after the session.
    pub async fn id_token_for_session(
        &self,
        client_id: &str,
        identity: &Identity,
        login: &SessionLogin,
    ) -> Result<SessionToken, IdpError> {
        if self.clients.get(client_id).await?.is_none() {
            return Err(IdpError::NotFound(format!("client {client_id}")));
        }
        let now = self.clock.now().as_secs();
        if login.expires_at <= now {
            return Err(IdpError::Invalid("the session has ended".into()));
        }
        let subject = if login.subject.is_empty() {
            // A session from before the subject was kept: a local user's `sub` is known.
            match self.users.find(&identity.user).await? {
                Some(user) => dex_subject(&user.user_id, LOCAL),
                None => return Err(IdpError::NotFound("the session's subject".into())),
            }
        } else {
            login.subject.clone()
        };
        let grant = Grant {
            client_id: client_id.to_owned(),
            scopes: ["openid", "email", "groups"].map(str::to_owned).to_vec(),
            nonce: None,
            email: identity.user.clone(),
            connector_id: LOCAL.to_owned(),
            identity: None,
        };
        let user = UpstreamIdentity {
            user_id: String::new(),
            username: String::new(),
            preferred_username: String::new(),
            email: identity.user.clone(),
            email_verified: true,
            groups: identity.groups.clone(),
            connector_data: None,
        };
        let mut claims = self.claims_for(&grant, &user, client_id, login.started_ms)?;
        claims.sub = subject;
        claims.exp = claims.exp.min(login.expires_at);
        let token = self.keys.keys().signing.sign(&claims)?;
        tracing::info!(target: "audit", user = %identity.user, client = %client_id, exp = claims.exp, "ID token issued for a session");
        Ok(SessionToken {
            token,
            expires_at: claims.exp,
        })
    }

    /// Asks the grant's connector about a federated user again (a refresh), returning their
    /// current identity and this login's new connector data. A refusal revokes everything the
    /// user holds (their sessions end at once) and is `invalid_grant`; an upstream outage is
    /// `temporarily_unavailable` (503: the client may retry, nothing is revoked).
    async fn recheck_upstream(
        &self,
        grant: &Grant,
        upstream: Option<serde_json::Value>,
    ) -> Result<(UpstreamIdentity, Option<serde_json::Value>), OAuthError> {
        let Some(known) = &grant.identity else {
            return Err(OAuthError::invalid_grant("The grant has no upstream identity."));
        };
        let Some(connector) = self.settings.connectors.iter().find(|c| c.id == grant.connector_id) else {
            return Err(OAuthError::invalid_grant(
                "The connector of this login no longer exists.",
            ));
        };
        if upstream.is_none() && matches!(connector.kind, ConnectorKind::Callback(_)) {
            // The upstream gave no refresh token at login (its scopes lack `offline_access`):
            // there is nothing to ask it with. This chain ends; nothing is revoked.
            return Err(OAuthError::invalid_grant(
                "The identity provider gave no refresh token for this login; log in again.",
            ));
        }
        let mut current = known.clone();
        current.connector_data = upstream.clone();
        let scopes = Scopes::from_list(&grant.scopes);
        let answer = match &connector.kind {
            ConnectorKind::Password(p) => p.refresh(scopes, &current).await,
            ConnectorKind::Callback(c) => c.refresh(scopes, &current).await,
            ConnectorKind::Local => return Ok((known.clone(), upstream)),
        }
        .and_then(crate::connector::admit);
        match answer {
            Ok(mut fresh) if fresh.email == known.email => {
                // An upstream that did not rotate its credential keeps the old one.
                let data = fresh.connector_data.take().or(upstream);
                Ok((fresh, data))
            }
            Ok(fresh) => {
                // The Kubeflow user is the email: a chain does not move to another user.
                tracing::warn!(target: "audit", user = %grant.email, now = %fresh.email, connector = %connector.id, "the upstream account's email changed; the refresh token ends");
                Err(OAuthError::invalid_grant(
                    "The account's email changed at the identity provider; log in again.",
                ))
            }
            Err(e @ (ConnectorError::Revoked(_) | ConnectorError::NotInAllowedGroups | ConnectorError::Denied(_))) => {
                // The upstream says this user may no longer log in: everything they hold ends
                // now (sessions, ID tokens, other refresh chains — all checked against the
                // epoch at their next use).
                tracing::warn!(target: "audit", user = %grant.email, connector = %connector.id, error = %e, "upstream refused the refresh; the user's credentials are revoked");
                self.epochs
                    .revoke(&grant.email, self.clock.now().as_millis())
                    .await
                    .map_err(IdpError::from)?;
                Err(OAuthError::invalid_grant(
                    "The identity provider no longer accepts this user; log in again.",
                ))
            }
            Err(e @ (ConnectorError::Timeout | ConnectorError::Unreachable(_) | ConnectorError::Upstream(_))) => {
                tracing::warn!(target: "audit", user = %grant.email, connector = %connector.id, error = %e, "upstream unavailable during refresh");
                Err(OAuthError::new(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    OAuthCode::TemporarilyUnavailable,
                    "The identity provider could not be reached; try again later.",
                ))
            }
            Err(e) => {
                // Not a statement about the user (an ambiguous directory entry, a connector
                // setting): this chain ends, nothing else does.
                tracing::warn!(target: "audit", user = %grant.email, connector = %connector.id, error = %e, "refresh refused by the connector");
                Err(OAuthError::invalid_grant(
                    "The login can no longer be refreshed; log in again.",
                ))
            }
        }
    }

    /// Remembers that the code or token whose hash is `hash` was exchanged by `client_id` for
    /// refresh token `next`, for `ttl` (at most [`SPENT_MAX`]). Best effort: what it spent is
    /// already committed, so a store error is logged (that reuse then goes undetected) rather
    /// than failing a request whose answer the client could not use again.
    async fn remember_spent(&self, hash: &str, next: &str, client_id: &str, ttl: Duration) {
        let spent = Spent {
            next: sha256_hex(next.as_bytes()),
            client_id: client_id.to_owned(),
        };
        let Ok(body) = serde_json::to_vec(&spent) else { return };
        let key = format!("{SPENT_PREFIX}{hash}");
        if let Err(e) = self.store.put(&key, body, Some(ttl.min(SPENT_MAX))).await {
            tracing::warn!(error = %e, "a spent code or refresh token was not recorded: its reuse would go undetected");
        }
    }

    /// What the code or token whose hash is `hash` was spent for, if it was and `client_id`
    /// spent it.
    async fn spent(&self, hash: &str, client_id: &str) -> Result<Option<String>, IdpError> {
        let Some(kv) = self.store.get(&format!("{SPENT_PREFIX}{hash}")).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice::<Spent>(&kv.value)
            .ok()
            .filter(|s| s.client_id == client_id && is_sha256_hex(&s.next))
            .map(|s| s.next))
    }

    /// `client_id` presented a code or refresh token whose hash is `hash` that is not (or no
    /// longer) valid: if that client spent it, the chain it led to is revoked and the event
    /// logged.
    async fn spent_again(&self, hash: &str, client_id: &str, what: &str) -> Result<(), IdpError> {
        let Some(next) = self.spent(hash, client_id).await? else {
            return Ok(());
        };
        let _ = self.store.delete(&format!("{SPENT_PREFIX}{hash}"), None).await;
        let revoked = self.revoke_chain(next, client_id).await?;
        tracing::warn!(target: "audit", what, client = client_id, revoked, "a spent {what} was presented again: the refresh tokens it led to are revoked");
        Ok(())
    }

    /// Deletes the refresh token whose hash is `hash` and every successor after it (following
    /// rotated-out records and spent ones, which go too); returns how many tokens were deleted.
    /// Each delete is at the revision read, so a rotation committed meanwhile is followed, not
    /// missed.
    async fn revoke_chain(&self, mut hash: String, client_id: &str) -> Result<usize, IdpError> {
        let mut revoked = 0;
        let mut steps = 0;
        while steps < MAX_CHAIN {
            steps += 1;
            let key = format!("{REFRESH_PREFIX}{hash}");
            let mut next = None;
            if let Some(kv) = self.store.get(&key).await? {
                next = serde_json::from_slice::<RefreshRecord>(&kv.value)
                    .ok()
                    .and_then(|r| r.replaced_by)
                    .map(|t| sha256_hex(t.as_bytes()));
                match self.store.delete(&key, Some(kv.mod_revision)).await {
                    Ok(_) => revoked += 1,
                    // Rotated (or claimed) meanwhile: read it again.
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if next.is_none() {
                next = self.spent(&hash, client_id).await?;
            }
            let _ = self.store.delete(&format!("{SPENT_PREFIX}{hash}"), None).await;
            match next {
                Some(n) if n != hash => hash = n,
                _ => break,
            }
        }
        Ok(revoked)
    }

    /// Deletes one refresh token (a client that will never use it: the gatekeeper's token of a
    /// session that is not re-checked). Unknown tokens are ignored.
    pub async fn revoke_refresh(&self, token: &str) -> Result<(), IdpError> {
        let key = format!("{REFRESH_PREFIX}{}", sha256_hex(token.as_bytes()));
        match self.store.delete(&key, None).await {
            Ok(_) | Err(StoreError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Exchanges a refresh token (rotating it) for `client`.
    ///
    /// Rotation is one compare-and-swap on the token's record, so it happens once however many
    /// requests race on however many replicas: the first to claim the record (`rotating_until_ms`,
    /// written at the revision it read) asks the upstream if the grant is federated, stores the
    /// successor and writes `replaced_by` at the claim's revision; the others wait for that and
    /// answer with the same successor. As Dex's `reuseInterval`: for that interval after its
    /// rotation the old token answers with its successor (no upstream asked, nothing written),
    /// provided the successor is still the current token; after it the old token is
    /// `invalid_grant` and the chain it led to is revoked (reuse detection, RFC 9700 §4.14.2;
    /// Dex revokes nothing for a late reuse).
    pub async fn refresh(&self, client: &Client, token: &str) -> Result<TokenResponse, OAuthError> {
        let key = format!("{REFRESH_PREFIX}{}", sha256_hex(token.as_bytes()));
        // One refresh of a token at a time in this process (the others wait here rather than
        // poll the store); across replicas the record's claim does the same.
        let flight = self.refresh_flights.enter(&key);
        let _one_at_a_time = flight.lock().await;
        let deadline = tokio::time::Instant::now() + ROTATION_CLAIM + ROTATION_CLAIM / 4;
        loop {
            let Some(kv) = self.store.get(&key).await.map_err(IdpError::from)? else {
                self.spent_again(&sha256_hex(token.as_bytes()), &client.id, "refresh token")
                    .await?;
                return Err(invalid_refresh());
            };
            let mut rec: RefreshRecord = serde_json::from_slice(&kv.value).map_err(IdpError::from)?;
            let origin_ms = if rec.origin_ms == 0 {
                rec.created_at.saturating_mul(1000)
            } else {
                rec.origin_ms
            };
            if rec.grant.client_id != client.id
                || self
                    .epochs
                    .revoked(&rec.grant.email, origin_ms)
                    .await
                    .map_err(IdpError::from)?
            {
                return Err(invalid_refresh());
            }
            let now = self.clock.now();
            if let Some(next) = rec.replaced_by.take() {
                return self.reuse(&rec, origin_ms, next, now.as_millis()).await;
            }
            if !rec.grant.scopes.iter().any(|s| s == "offline_access") {
                return Err(OAuthError::invalid_grant(
                    "Refresh token was not issued for offline access.",
                ));
            }
            if rec.rotating_until_ms.is_some_and(|t| now.as_millis() < t) {
                // Another request (on this replica or another) is rotating it: wait for its
                // successor, or for its claim to lapse (a replica that died mid-rotation).
                if tokio::time::Instant::now() >= deadline {
                    return Err(OAuthError::new(
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        OAuthCode::TemporarilyUnavailable,
                        "The refresh token is being refreshed by another request; try again.",
                    ));
                }
                tokio::time::sleep(ROTATION_POLL).await;
                continue;
            }
            // Claim the rotation, keeping the record's expiry.
            let ttl = kv
                .expires_at
                .map_or_else(|| self.refresh_ttl(rec.created_at), |t| t.since(now))
                .max(Duration::from_secs(1));
            rec.rotating_until_ms = Some(now.add(ROTATION_CLAIM).as_millis());
            let body = serde_json::to_vec(&rec).map_err(IdpError::from)?;
            let claimed = match self.store.update(&key, body, Some(kv.mod_revision), Some(ttl)).await {
                Ok(rev) => rev,
                // Another request claimed or rotated it first, or it is gone: look again.
                Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => continue,
                Err(e) => return Err(IdpError::from(e).into()),
            };
            if let Some(answer) = self.rotate(&key, rec, claimed, ttl, origin_ms).await? {
                return Ok(answer);
            }
        }
    }

    /// A rotated-out token inside its reuse interval: its successor, if that is still the
    /// current token (Dex keeps one obsolete token per chain).
    async fn reuse(
        &self,
        rec: &RefreshRecord,
        origin_ms: u64,
        next: String,
        now_ms: u64,
    ) -> Result<TokenResponse, OAuthError> {
        // The interval is held against the record's own end time, not only the store's TTL.
        let within = rec.reuse_until_ms.is_none_or(|t| now_ms < t);
        let successor = self
            .store
            .get(&format!("{REFRESH_PREFIX}{}", sha256_hex(next.as_bytes())))
            .await
            .map_err(IdpError::from)?;
        let current = successor
            .and_then(|kv| serde_json::from_slice::<RefreshRecord>(&kv.value).ok())
            .is_some_and(|s| s.replaced_by.is_none());
        if !(within && current) {
            let revoked = self
                .revoke_chain(sha256_hex(next.as_bytes()), &rec.grant.client_id)
                .await?;
            tracing::warn!(target: "audit", user = %rec.grant.email, client = %rec.grant.client_id, revoked, "a rotated-out refresh token was presented again after its successor was used: its chain is revoked");
            return Err(invalid_refresh());
        }
        let user = self.grant_user(&rec.grant).await?;
        Ok(self.mint(&rec.grant, &user, origin_ms, Some(next)).await?)
    }

    /// Rotates a token this request has claimed (the record at revision `claimed`): asks the
    /// upstream of a federated grant, stores the successor and points the record at it for the
    /// reuse interval. `None`: the claim was lost (it lapsed and another request rotated the
    /// token): look again.
    async fn rotate(
        &self,
        key: &str,
        mut rec: RefreshRecord,
        claimed: kfsec_store::Revision,
        ttl: Duration,
        origin_ms: u64,
    ) -> Result<Option<TokenResponse>, OAuthError> {
        let successor = self.successor(&rec, origin_ms).await;
        let (next_grant, user, next) = match successor {
            Ok(s) => s,
            Err(e) => {
                // Nothing was rotated: give the claim back so the client may try again.
                rec.rotating_until_ms = None;
                if let Ok(body) = serde_json::to_vec(&rec)
                    && let Err(err) = self.store.update(key, body, Some(claimed), Some(ttl)).await
                {
                    tracing::debug!(error = %err, "refresh: the rotation claim was not given back");
                }
                return Err(e);
            }
        };
        let reuse = self.settings.refresh.reuse_interval;
        rec.replaced_by = Some(next.clone());
        rec.reuse_until_ms = Some(self.clock.now().add(reuse).as_millis());
        rec.rotating_until_ms = None;
        rec.grant = next_grant;
        let body = serde_json::to_vec(&rec).map_err(IdpError::from)?;
        match self.store.update(key, body, Some(claimed), Some(reuse)).await {
            Ok(_) => {
                let hash = key.strip_prefix(REFRESH_PREFIX).unwrap_or(key);
                self.remember_spent(hash, &next, &rec.grant.client_id, ttl).await;
                Ok(Some(self.mint(&rec.grant, &user, origin_ms, Some(next)).await?))
            }
            Err(e) => {
                // Ours is not handed out: drop it.
                let _ = self
                    .store
                    .delete(&format!("{REFRESH_PREFIX}{}", sha256_hex(next.as_bytes())), None)
                    .await;
                match e {
                    StoreError::Conflict { .. } => Ok(None),
                    // Revoked (deleted) while we rotated.
                    StoreError::NotFound(_) => Err(invalid_refresh()),
                    e => Err(IdpError::from(e).into()),
                }
            }
        }
    }

    /// The successor of a token: the grant as the upstream reports it now (a federated user is
    /// asked again), its user, and the new token, stored.
    async fn successor(
        &self,
        rec: &RefreshRecord,
        origin_ms: u64,
    ) -> Result<(Grant, UpstreamIdentity, String), OAuthError> {
        let mut next_grant = rec.grant.clone();
        let mut upstream = rec.upstream.clone();
        if rec.grant.identity.is_some() {
            let (fresh, data) = self.recheck_upstream(&rec.grant, rec.upstream.clone()).await?;
            next_grant.email.clone_from(&fresh.email);
            next_grant.identity = Some(fresh);
            upstream = data;
        }
        let user = self.grant_user(&next_grant).await?;
        let Some(next) = self
            .new_refresh(&next_grant, rec.created_at, origin_ms, upstream)
            .await?
        else {
            return Err(OAuthError::invalid_grant(
                "Refresh token was not issued for offline access.",
            ));
        };
        Ok((next_grant, user, next))
    }

    /// Issues a code for a logged-in user (`rec.auth_ms`: when their password check began) and
    /// returns the redirect target.
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

    /// Verifies one of our tokens. `audience`: `Some(id)` requires that client id and an ID
    /// token; `None` (`/userinfo`) accepts the ID or access token of any registered client.
    /// `nonce`: required value, if any. Bearer authentication does not use this: it goes
    /// through [`crate::authn::Authenticator`] and its audience policy.
    pub async fn verify_token(
        &self,
        token: &str,
        audience: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<Claims, VerifyError> {
        let also = audience.is_none().then_some(crate::jwt::ACCESS_TOKEN_TYP);
        let (claims, _) = crate::jwt::verify_with_typ::<Claims>(token, self.keys.keys().verifying(), also)?;
        self.check_claims(&claims)?;
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
        self.check_not_revoked(&claims).await?;
        Ok(claims)
    }

    /// `iss` and the times of verified ID-token claims.
    pub(crate) fn check_claims(&self, claims: &Claims) -> Result<(), VerifyError> {
        if claims.iss != self.settings.issuer {
            return Err(VerifyError::Issuer);
        }
        self.check_times(claims.exp, claims.nbf, claims.iat)
    }

    /// `exp` passed, `nbf` or `iat` more than [`LEEWAY_SECS`] ahead.
    pub(crate) fn check_times(&self, exp: u64, nbf: Option<u64>, iat: u64) -> Result<(), VerifyError> {
        let now = self.clock.now().as_secs();
        if now >= exp {
            return Err(VerifyError::Expired);
        }
        if nbf.is_some_and(|n| n > now.saturating_add(LEEWAY_SECS)) {
            return Err(VerifyError::NotYetValid);
        }
        if iat > now.saturating_add(LEEWAY_SECS) {
            return Err(VerifyError::IssuedInFuture);
        }
        Ok(())
    }

    /// Refuses a token whose login was at or before its user's revocation epoch. The user is
    /// `kfsec_user` (every token kfsec mints has it), else `email`; a token with `kfsec_iat_ms`
    /// but neither is refused.
    pub(crate) async fn check_not_revoked(&self, claims: &Claims) -> Result<(), VerifyError> {
        let user = match &claims.user {
            // A sealed user that does not open is no user.
            Some(sealed) => self.open_user(sealed),
            None => claims.email.clone(),
        };
        let Some(user) = user else {
            return match claims.iat_ms {
                Some(_) => Err(VerifyError::NoUser),
                None => Ok(()),
            };
        };
        let issued_ms = claims.iat_ms.unwrap_or_else(|| claims.iat.saturating_mul(1000));
        match self.epochs.revoked(&user, issued_ms).await {
            Ok(false) => Ok(()),
            Ok(true) => Err(VerifyError::Revoked),
            Err(e) => Err(VerifyError::Unavailable(e.to_string())),
        }
    }

    /// Revokes every session, ID token, code and refresh token of `email` issued up to now
    /// (password change, deletion, "log out everywhere"): moves the user's epoch and deletes
    /// their refresh tokens. Sessions are voided by the epoch; the gateway deletes them too.
    pub async fn revoke_user(&self, email: &str) -> Result<(), IdpError> {
        self.epochs.revoke(email, self.clock.now().as_millis()).await?;
        delete_refresh_tokens(self.store.as_ref(), email).await?;
        tracing::info!(target: "audit", user = %email, "all credentials revoked");
        Ok(())
    }
}

/// Per-key locks that vanish when unused (refreshes of one token run one at a time).
#[derive(Default)]
pub(crate) struct Flights(
    parking_lot::Mutex<std::collections::HashMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>>,
);

impl Flights {
    /// The lock of `key`.
    pub(crate) fn enter(&self, key: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        let mut map = self.0.lock();
        if let Some(lock) = map.get(key).and_then(std::sync::Weak::upgrade) {
            return lock;
        }
        if map.len() >= 1024 {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let lock = std::sync::Arc::new(tokio::sync::Mutex::new(()));
        map.insert(key.to_owned(), std::sync::Arc::downgrade(&lock));
        lock
    }
}

/// A local user as the identity tokens are minted from.
pub(crate) fn local_identity(user: &User) -> UpstreamIdentity {
    UpstreamIdentity {
        user_id: user.user_id.clone(),
        username: user.username.clone(),
        preferred_username: user.username.clone(),
        email: user.email.clone(),
        email_verified: true,
        groups: user.groups.clone(),
        connector_data: None,
    }
}

/// Deletes every refresh token granted to `email` (a scan: rare admin operations only).
pub async fn delete_refresh_tokens(store: &dyn kfsec_store::Store, email: &str) -> Result<usize, StoreError> {
    let mut doomed = Vec::new();
    for kv in kfsec_store::list_all(store, REFRESH_PREFIX).await?.items {
        if serde_json::from_slice::<RefreshRecord>(&kv.value).is_ok_and(|r| r.grant.email.eq_ignore_ascii_case(email)) {
            doomed.push(kv.key);
        }
    }
    for k in &doomed {
        match store.delete(k, None).await {
            Ok(_) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(doomed.len())
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

    mod replicas {
        use std::sync::Arc;
        use std::time::Duration;

        use kfsec_store::{MemoryStore, Store};
        use kfsec_types::{Clock, ManualClock, UnixTime};

        use super::super::*;
        use crate::test_support::{USER, client, settings};

        const REUSE: Duration = crate::test_support::REUSE;

        /// `n` IdP replicas over one store and clock.
        async fn replicas(n: usize) -> (Vec<Arc<Idp>>, Arc<dyn Store>, Arc<ManualClock>) {
            let clock = ManualClock::new(UnixTime::from_secs(1_800_000_000));
            let store: Arc<dyn Store> = MemoryStore::new(clock.clone());
            let mut idps = Vec::new();
            for _ in 0..n {
                idps.push(crate::test_support::idp(settings(), store.clone(), clock.clone()).await);
            }
            (idps, store, clock)
        }

        /// The local user's offline grant to client `rp`.
        fn offline_grant() -> Grant {
            Grant {
                client_id: "rp".into(),
                scopes: vec!["openid".into(), "email".into(), "offline_access".into()],
                nonce: None,
                email: USER.into(),
                connector_id: LOCAL.into(),
                identity: None,
            }
        }

        async fn first_token(idp: &Idp) -> String {
            let now = idp.clock.now();
            idp.new_refresh(&offline_grant(), now.as_secs(), now.as_millis(), None)
                .await
                .unwrap()
                .unwrap()
        }

        /// Sets one field of a token's stored record (what another replica, or a backend
        /// keeping records past their TTL, leaves there), with a long store TTL.
        async fn set_field(store: &Arc<dyn Store>, token: &str, field: &str, value: u64) {
            let key = format!("{REFRESH_PREFIX}{}", sha256_hex(token.as_bytes()));
            let kv = store.get(&key).await.unwrap().unwrap();
            let mut rec: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
            rec[field] = value.into();
            let body = serde_json::to_vec(&rec).unwrap();
            store
                .update(&key, body, None, Some(Duration::from_secs(3600)))
                .await
                .unwrap();
        }

        async fn records(store: &Arc<dyn Store>) -> usize {
            kfsec_store::list_all(store.as_ref(), REFRESH_PREFIX)
                .await
                .unwrap()
                .items
                .len()
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn a_refresh_racing_on_replicas_rotates_once_and_answers_all_alike() {
            let (idps, store, clock) = replicas(2).await;
            for round in 0..20 {
                let token = first_token(&idps[0]).await;
                let before = records(&store).await;
                // Three requests per replica with the same token, at once.
                let mut racing = Vec::new();
                for i in 0..6 {
                    let (idp, token) = (idps[i % 2].clone(), token.clone());
                    racing.push(tokio::spawn(async move { idp.refresh(&client(), &token).await }));
                }
                let mut rotated = Vec::new();
                for r in racing {
                    let answer = r.await.unwrap().unwrap_or_else(|e| panic!("round {round}: {e:?}"));
                    rotated.push(answer.refresh_token.expect("a refresh token"));
                }
                assert!(
                    rotated.iter().all(|t| *t == rotated[0]),
                    "round {round}: one successor for all"
                );
                assert_ne!(rotated[0], token);
                assert_eq!(records(&store).await, before + 1, "round {round}: exactly one rotation");
                // The successor works on either replica.
                let next = idps[1].refresh(&client(), &rotated[0]).await.unwrap();
                assert_ne!(next.refresh_token.as_deref(), Some(rotated[0].as_str()));
                clock.advance(REUSE + Duration::from_secs(1));
            }
        }

        #[tokio::test]
        async fn after_the_reuse_interval_the_old_token_is_invalid_grant_and_revokes_its_chain() {
            let (idps, _store, clock) = replicas(2).await;
            let (a, b) = (&idps[0], &idps[1]);
            let t0 = first_token(a).await;
            let t1 = a.refresh(&client(), &t0).await.unwrap().refresh_token.unwrap();
            // Inside the interval, on the other replica: the same successor.
            clock.advance(Duration::from_secs(2));
            let again = b.refresh(&client(), &t0).await.unwrap();
            assert_eq!(again.refresh_token.as_deref(), Some(t1.as_str()));
            // Moving on: t1 → t2 → t3 (within t2's interval t2 still answers with t3).
            let t2 = b.refresh(&client(), &t1).await.unwrap().refresh_token.unwrap();
            let t3 = a.refresh(&client(), &t2).await.unwrap().refresh_token.unwrap();
            let e = b.refresh(&client(), &t2).await;
            assert_eq!(
                e.unwrap().refresh_token.as_deref(),
                Some(t3.as_str()),
                "t2 within its interval"
            );
            // After the interval t0 is presented again (a thief, or the client that lost the
            // race): refused, and the chain it led to — t3, the current token — is revoked,
            // on every replica.
            clock.advance(Duration::from_secs(10));
            let e = b.refresh(&client(), &t0).await.unwrap_err();
            assert_eq!(e.error, OAuthCode::InvalidGrant);
            for (idp, t) in [(a, &t3), (b, &t3), (a, &t1)] {
                let e = idp.refresh(&client(), t).await.unwrap_err();
                assert_eq!(e.error, OAuthCode::InvalidGrant, "the chain lives on");
            }
        }

        /// A token whose successor has moved on, presented inside its own interval, revokes the
        /// chain as well (Dex keeps one obsolete token; an older one is reuse).
        #[tokio::test]
        async fn a_token_two_rotations_back_revokes_its_chain() {
            let (idps, _store, _clock) = replicas(1).await;
            let idp = &idps[0];
            let t0 = first_token(idp).await;
            let t1 = idp.refresh(&client(), &t0).await.unwrap().refresh_token.unwrap();
            let t2 = idp.refresh(&client(), &t1).await.unwrap().refresh_token.unwrap();
            let e = idp.refresh(&client(), &t0).await.unwrap_err();
            assert_eq!(e.error, OAuthCode::InvalidGrant);
            let e = idp.refresh(&client(), &t2).await.unwrap_err();
            assert_eq!(e.error, OAuthCode::InvalidGrant, "t2 outlived the reuse of t0");
        }

        /// A replayed authorization code is refused and revokes the refresh chain the first
        /// redemption started (RFC 6749 §4.1.2), even after that chain rotated.
        #[tokio::test]
        async fn a_replayed_code_revokes_what_it_was_redeemed_for() {
            let (idps, _store, clock) = replicas(1).await;
            let idp = &idps[0];
            let rec = CodeRecord {
                grant: offline_grant(),
                redirect_uri: "https://rp.example/cb".into(),
                code_challenge: None,
                code_challenge_method: None,
                auth_ms: clock.now().as_millis(),
                upstream: None,
            };
            let redirect = idp.issue_code(rec, "s").await.unwrap();
            let code = url::Url::parse(&redirect)
                .unwrap()
                .query_pairs()
                .find(|(k, _)| k == "code")
                .unwrap()
                .1
                .into_owned();
            let first = idp
                .redeem_code(&client(), &code, "https://rp.example/cb", None)
                .await
                .unwrap();
            let t0 = first.refresh_token.unwrap();
            let t1 = idp.refresh(&client(), &t0).await.unwrap().refresh_token.unwrap();
            clock.advance(Duration::from_secs(60));
            // Presented by another client (anyone may name a public client): refused, and
            // nothing is revoked.
            let other = Client {
                id: "other".into(),
                ..client()
            };
            let e = idp
                .redeem_code(&other, &code, "https://rp.example/cb", None)
                .await
                .unwrap_err();
            assert_eq!(e.error, OAuthCode::InvalidGrant);
            let e = idp.refresh(&other, &t0).await.unwrap_err();
            assert_eq!(e.error, OAuthCode::InvalidGrant);
            let t1 = idp.refresh(&client(), &t1).await.unwrap().refresh_token.unwrap();
            clock.advance(Duration::from_secs(60));
            let e = idp
                .redeem_code(&client(), &code, "https://rp.example/cb", None)
                .await
                .unwrap_err();
            assert_eq!(e.error, OAuthCode::InvalidGrant);
            let e = idp.refresh(&client(), &t1).await.unwrap_err();
            assert_eq!(e.error, OAuthCode::InvalidGrant, "the replay left the chain alive");
            // An unknown code revokes nothing and is refused the same way.
            let e = idp
                .redeem_code(&client(), "never-issued", "https://rp.example/cb", None)
                .await
                .unwrap_err();
            assert_eq!(e.error, OAuthCode::InvalidGrant);
        }

        #[tokio::test]
        async fn the_reuse_end_is_the_records_own_not_the_stores() {
            let (idps, store, _clock) = replicas(1).await;
            let t0 = first_token(&idps[0]).await;
            let _t1 = idps[0].refresh(&client(), &t0).await.unwrap();
            // A backend whose TTL outlives the interval (a lease is a minimum, not an end).
            let ended = idps[0].clock.now().as_millis() - 1;
            set_field(&store, &t0, "reuse_until_ms", ended).await;
            let e = idps[0].refresh(&client(), &t0).await.unwrap_err();
            assert_eq!(e.error, OAuthCode::InvalidGrant);
        }

        #[tokio::test]
        async fn a_replica_that_died_mid_rotation_holds_the_token_only_for_its_claim() {
            let (idps, store, clock) = replicas(1).await;
            let t0 = first_token(&idps[0]).await;
            // Another replica claimed the rotation and died.
            let claim = clock.now().add(ROTATION_CLAIM).as_millis();
            set_field(&store, &t0, "rotating_until_ms", claim).await;
            let idp = idps[0].clone();
            let t = t0.clone();
            let waiting = tokio::spawn(async move { idp.refresh(&client(), &t).await });
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(!waiting.is_finished(), "waits for the claim holder");
            clock.advance(ROTATION_CLAIM);
            let answer = waiting.await.unwrap().unwrap();
            assert!(answer.refresh_token.is_some_and(|t| t != t0), "took the rotation over");
        }

        /// An upstream that rotates its refresh credential and refuses a spent one (as Entra
        /// and most OIDC providers do): a second ask with the old credential would revoke the
        /// user.
        struct Rotating {
            current: parking_lot::Mutex<u32>,
            asked: std::sync::atomic::AtomicUsize,
        }

        #[async_trait::async_trait]
        impl crate::connector::PasswordConnector for Rotating {
            fn prompt(&self) -> &str {
                "Username"
            }
            async fn login(&self, _: Scopes, _: &str, _: &str) -> Result<Option<UpstreamIdentity>, ConnectorError> {
                Ok(None)
            }
            async fn refresh(
                &self,
                _: Scopes,
                identity: &UpstreamIdentity,
            ) -> Result<UpstreamIdentity, ConnectorError> {
                self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                let mut current = self.current.lock();
                if identity.connector_data != Some(serde_json::json!(*current)) {
                    return Err(ConnectorError::Revoked("refresh token already used".into()));
                }
                *current += 1;
                Ok(UpstreamIdentity {
                    connector_data: Some(serde_json::json!(*current)),
                    ..identity.clone()
                })
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn a_federated_refresh_racing_on_replicas_asks_its_upstream_once() {
            let upstream = Arc::new(Rotating {
                current: parking_lot::Mutex::new(0),
                asked: std::sync::atomic::AtomicUsize::new(0),
            });
            let connector = crate::connector::Connector {
                id: "up".into(),
                name: "Upstream".into(),
                type_name: "ldap".into(),
                kind: ConnectorKind::Password(upstream.clone()),
            };
            let clock = ManualClock::new(UnixTime::from_secs(1_800_000_000));
            let store: Arc<dyn Store> = MemoryStore::new(clock.clone());
            let mut idps = Vec::new();
            for _ in 0..2 {
                let mut s = settings();
                s.connectors.push(connector.clone());
                idps.push(crate::test_support::idp(s, store.clone(), clock.clone()).await);
            }
            let identity = UpstreamIdentity {
                user_id: "u-1".into(),
                username: "bob".into(),
                preferred_username: "bob".into(),
                email: "bob@example.com".into(),
                email_verified: true,
                groups: vec![],
                connector_data: None,
            };
            let grant = Grant {
                client_id: "rp".into(),
                scopes: vec!["openid".into(), "offline_access".into()],
                nonce: None,
                email: identity.email.clone(),
                connector_id: "up".into(),
                identity: Some(identity),
            };
            let now = clock.now();
            let token = idps[0]
                .new_refresh(&grant, now.as_secs(), now.as_millis(), Some(serde_json::json!(0)))
                .await
                .unwrap()
                .unwrap();
            let mut racing = Vec::new();
            for i in 0..6 {
                let (idp, token) = (idps[i % 2].clone(), token.clone());
                racing.push(tokio::spawn(async move { idp.refresh(&client(), &token).await }));
            }
            let mut rotated = Vec::new();
            for r in racing {
                rotated.push(r.await.unwrap().unwrap().refresh_token.unwrap());
            }
            assert!(rotated.iter().all(|t| *t == rotated[0]), "one successor for all");
            assert_eq!(
                upstream.asked.load(std::sync::atomic::Ordering::SeqCst),
                1,
                "the upstream asked once"
            );
            // Nothing was revoked: the successor refreshes, with the upstream's new credential.
            let next = idps[1].refresh(&client(), &rotated[0]).await.unwrap();
            assert!(next.refresh_token.is_some());
            assert_eq!(upstream.asked.load(std::sync::atomic::Ordering::SeqCst), 2);
        }
    }
}
