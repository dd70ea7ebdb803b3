//! Service-account tokens, shaped like Kubernetes' bound tokens: signed by the IdP's keys,
//! `sub: system:serviceaccount:<ns>:<name>`, audience-bound, with the account's uid so a
//! deleted (or re-created) account's tokens stop working.
//!
//! Invariants: a token is accepted only for an audience it names; verification shares the
//! ID-token key set and algorithm pinning; the caller must check the account still exists with
//! the token's uid (the store is the source of truth, not the token); [`Idp::token_for_account`]
//! never issues a token whose audience is one of this issuer's OAuth2 clients (it could pass for
//! that client's ID token). The accounts are the
//! Kubernetes-style API's objects: the IdP reads them only through [`ServiceAccountLookup`],
//! which the server wires to `kfsec-api` (the IdP does not know how they are stored).

use std::time::Duration;

use kfsec_types::identity::{service_account_groups, service_account_username};
use serde::{Deserialize, Serialize};

use crate::tokens::VerifyError;
use crate::{Idp, IdpError};

/// The shortest service-account token kfsec issues (Kubernetes' minimum, 10 minutes).
pub const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(600);
/// The longest: a longer request is capped to it, as kube-apiserver caps with
/// `--service-account-max-token-expiration`.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(48 * 3600);

/// A token issued for an existing account by [`Idp::token_for_account`].
#[derive(Clone, PartialEq, Eq)]
pub struct AccountToken {
    /// The signed token (a secret: never logged, redacted in `Debug`).
    pub token: String,
    /// Its audiences.
    pub audiences: Vec<String>,
    /// Issued at (seconds since the epoch).
    pub issued_at: u64,
    /// Expires at (seconds since the epoch).
    pub expires_at: u64,
}

impl std::fmt::Debug for AccountToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountToken")
            .field("token", &"<redacted>")
            .field("audiences", &self.audiences)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The kinds of object a token can be bound to (TokenRequest's `boundObjectRef`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundKind {
    /// A core `Pod`.
    Pod,
    /// A core `Secret`.
    Secret,
}

/// The object a token is bound to: it works only while that object exists with this uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundObject {
    /// Its kind.
    pub kind: BoundKind,
    /// Its name (in the account's namespace).
    pub name: String,
    /// Its uid.
    pub uid: String,
}

/// Where the IdP learns whether a service account exists, and its uid.
#[async_trait::async_trait]
pub trait ServiceAccountLookup: Send + Sync + 'static {
    /// The uid of the service account `name` in `namespace`; `None` if there is no such account.
    async fn uid(&self, namespace: &str, name: &str) -> Result<Option<String>, LookupError>;
    /// The uid of the `kind` object `name` in `namespace` (a bound token's object); `None` if
    /// there is none. The default knows none, so bound tokens are refused.
    async fn object_uid(&self, _kind: BoundKind, _namespace: &str, _name: &str) -> Result<Option<String>, LookupError> {
        Ok(None)
    }
}

/// Why a [`ServiceAccountLookup`] could not answer (its cause kept for the log).
#[derive(Debug, thiserror::Error)]
#[error("service account lookup: {0}")]
pub struct LookupError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// A [`ServiceAccountLookup`] that knows no account (no Kubernetes-style API): every
/// service-account token is refused.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoServiceAccounts;

#[async_trait::async_trait]
impl ServiceAccountLookup for NoServiceAccounts {
    async fn uid(&self, _namespace: &str, _name: &str) -> Result<Option<String>, LookupError> {
        Ok(None)
    }
}

/// The `kubernetes.io` claim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KubernetesClaim {
    /// Namespace of the account.
    pub namespace: String,
    /// The account.
    pub serviceaccount: AccountRef,
    /// The pod the token is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<AccountRef>,
    /// The secret the token is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<AccountRef>,
}

impl KubernetesClaim {
    /// The objects the token is bound to (none, or the one kfsec binds).
    pub fn bound(&self) -> impl Iterator<Item = (BoundKind, &AccountRef)> {
        [(BoundKind::Pod, &self.pod), (BoundKind::Secret, &self.secret)]
            .into_iter()
            .filter_map(|(k, r)| r.as_ref().map(|r| (k, r)))
    }
}

/// A reference to an object (a service account, or a token's bound object): name and uid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccountRef {
    /// Name.
    pub name: String,
    /// Uid of the account object.
    pub uid: String,
}

/// Claims of a service-account token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceAccountClaims {
    /// Issuer.
    pub iss: String,
    /// `system:serviceaccount:<ns>:<name>`.
    pub sub: String,
    /// Audiences.
    pub aud: Vec<String>,
    /// Expiry.
    pub exp: u64,
    /// Issued at.
    pub iat: u64,
    /// Not before.
    pub nbf: u64,
    /// Kubernetes' claim.
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaim,
}

impl ServiceAccountClaims {
    /// The Kubernetes user name.
    pub fn username(&self) -> &str {
        &self.sub
    }
    /// The Kubernetes groups of a service account.
    pub fn groups(&self) -> Vec<String> {
        service_account_groups(&self.kubernetes.namespace)
    }
}

impl Idp {
    /// Issues a token for the service account `namespace/name`, for `kfsec token create` and
    /// TokenRequest alike: the account must exist (`NotFound` otherwise) and its uid goes into
    /// the token, so the token dies with the account; no audiences means kfsec's own API
    /// ([`crate::authn::SERVICE_ACCOUNT_AUDIENCE`]); the lifetime is capped at
    /// [`MAX_TOKEN_LIFETIME`] (the caller refuses or raises one below [`MIN_TOKEN_LIFETIME`]).
    ///
    /// With `bound`, the token also names that object (Kubernetes' `kubernetes.io.pod` /
    /// `.secret`) and works only while it exists with that uid.
    pub async fn token_for_account(
        &self,
        namespace: &str,
        name: &str,
        audiences: Vec<String>,
        lifetime: Duration,
        bound: Option<BoundObject>,
    ) -> Result<AccountToken, IdpError> {
        let uid = self
            .service_accounts()
            .uid(namespace, name)
            .await
            .map_err(|e| IdpError::Internal(e.to_string()))?
            .ok_or_else(|| IdpError::NotFound(format!("serviceaccounts \"{name}\" in namespace \"{namespace}\"")))?;
        let audiences = if audiences.is_empty() {
            vec![crate::authn::SERVICE_ACCOUNT_AUDIENCE.to_owned()]
        } else {
            audiences
        };
        if let Some(a) = self.client_audience(&audiences).await? {
            return Err(IdpError::Invalid(format!(
                "audience {a:?} is an OAuth2 client of this issuer: a service-account token for it could pass for one of its ID tokens"
            )));
        }
        let (token, claims) = self.sign_account_token(
            bound,
            namespace,
            name,
            &uid,
            audiences,
            lifetime.min(MAX_TOKEN_LIFETIME),
        )?;
        Ok(AccountToken {
            token,
            audiences: claims.aud,
            issued_at: claims.iat,
            expires_at: claims.exp,
        })
    }

    /// The first of `audiences` that is an OAuth2 client id of this issuer, if any. No
    /// service-account token is issued for one: it carries this issuer and is signed with the
    /// ID-token keys, so that client could take it for one of its ID tokens.
    pub async fn client_audience(&self, audiences: &[String]) -> Result<Option<String>, IdpError> {
        for a in audiences {
            if self.clients.get(a).await?.is_some() {
                return Ok(Some(a.clone()));
            }
        }
        Ok(None)
    }

    /// Signs a token for service account `namespace/name` (uid `uid`).
    pub fn issue_service_account_token(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        audiences: Vec<String>,
        lifetime: Duration,
    ) -> Result<String, IdpError> {
        Ok(self
            .sign_account_token(None, namespace, name, uid, audiences, lifetime)?
            .0)
    }

    fn sign_account_token(
        &self,
        bound: Option<BoundObject>,
        namespace: &str,
        name: &str,
        uid: &str,
        audiences: Vec<String>,
        lifetime: Duration,
    ) -> Result<(String, ServiceAccountClaims), IdpError> {
        if audiences.is_empty() {
            return Err(IdpError::Invalid("at least one audience is required".into()));
        }
        let now = self.clock.now();
        let mut claims = ServiceAccountClaims {
            iss: self.settings.issuer.clone(),
            sub: service_account_username(namespace, name),
            aud: audiences,
            exp: now.add(lifetime).as_secs(),
            iat: now.as_secs(),
            nbf: now.as_secs(),
            kubernetes: KubernetesClaim {
                namespace: namespace.into(),
                serviceaccount: AccountRef {
                    name: name.into(),
                    uid: uid.into(),
                },
                pod: None,
                secret: None,
            },
        };
        if let Some(b) = bound {
            let r = Some(AccountRef {
                name: b.name,
                uid: b.uid,
            });
            match b.kind {
                BoundKind::Pod => claims.kubernetes.pod = r,
                BoundKind::Secret => claims.kubernetes.secret = r,
            }
        }
        let token = self.keys.keys().signing.sign(&claims)?;
        Ok((token, claims))
    }

    /// Verifies a service-account token for one of `audiences`.
    pub fn verify_service_account_token(
        &self,
        token: &str,
        audiences: &[&str],
    ) -> Result<ServiceAccountClaims, VerifyError> {
        let keys = self.keys.keys();
        let claims: ServiceAccountClaims = crate::jwt::verify(token, keys.verifying())?;
        self.check_service_account_claims(claims, audiences)
    }

    /// Checks verified service-account claims: `iss`, times, one of `audiences`, and that the
    /// subject names the account of the `kubernetes.io` claim.
    pub(crate) fn check_service_account_claims(
        &self,
        claims: ServiceAccountClaims,
        audiences: &[&str],
    ) -> Result<ServiceAccountClaims, VerifyError> {
        if claims.iss != self.settings.issuer {
            return Err(VerifyError::Issuer);
        }
        self.check_times(claims.exp, Some(claims.nbf), claims.iat)?;
        if !claims.aud.iter().any(|a| audiences.contains(&a.as_str())) {
            return Err(VerifyError::Audience);
        }
        let expected = service_account_username(&claims.kubernetes.namespace, &claims.kubernetes.serviceaccount.name);
        if claims.sub != expected {
            return Err(VerifyError::Jwt(crate::jwt::JwtError::Malformed));
        }
        Ok(claims)
    }
}
