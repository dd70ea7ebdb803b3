//! The one authenticator: every credential kfsec accepts — bearer ID token, service-account
//! token, session, client certificate — becomes an [`Identity`] here or a typed [`Refusal`].
//! The front door (every surface: `/authservice/check`, the Kubernetes-style API, Pipelines,
//! KFAM, proxied routes) and TokenReview call it, so they cannot disagree.
//!
//! Audience policy (the one place it is defined):
//! - **ID tokens** (users) are accepted only for an explicit list of clients, like the Kubernetes
//!   API server's `--oidc-client-id` and oauth2-proxy: the gatekeeper (`kfsec-gatekeeper`), the
//!   CLI (`kfsec-cli`) and the ids in config `bearerAudiences`. Following OIDC Core §3.1.3.7, one
//!   of the token's `aud` entries must be in the list; a token with several audiences must carry
//!   `azp` and that `azp` must be in the list too; an `azp` outside the list is refused even with
//!   one audience. Tokens minted for any other registered client (a third-party relying party)
//!   are refused: the party could otherwise replay its users' tokens here. The header `typ` must
//!   not be `at+jwt` (access tokens are for `/userinfo` only).
//! - **Service-account tokens** are accepted when they name `kfsec` or the issuer (the
//!   Kubernetes API server's default `--api-audiences`) on every surface, and also
//!   `pipelines.kubeflow.org` on Pipelines paths (KFP's `TOKEN_REVIEW_AUDIENCE`). TokenReview
//!   asks for the audiences its request names (default: `kfsec` and the issuer). The account
//!   must still exist with the token's uid, and so must the Pod or Secret a token is bound to.
//! - **Sessions** and **ID tokens** whose login (the password check, not their issue) was at or
//!   before the user's revocation epoch are void (password change, deletion, "log out
//!   everywhere").
//! - **Client certificates** were verified by the TLS listener; they map to their identity.
//!
//! Invariant: a credential that fails is refused, never downgraded to another credential.

use std::sync::Arc;

use kfsec_types::Identity;

use crate::Idp;
use crate::jwt::JwtError;
use crate::revocation::UserKey;
use crate::serviceaccount::ServiceAccountClaims;
use crate::tokens::{Claims, VerifyError};

/// The audience service-account tokens carry for kfsec's own API (`kfsec token create`'s default).
pub const SERVICE_ACCOUNT_AUDIENCE: &str = "kfsec";
/// The audience Kubeflow Pipelines checks (its `TOKEN_REVIEW_AUDIENCE` default).
pub const PIPELINES_AUDIENCE: &str = "pipelines.kubeflow.org";

/// Where a credential is presented: decides which service-account audiences count.
#[derive(Debug, Clone, Copy)]
pub enum Surface<'a> {
    /// The front door: API, KFAM, `/authservice/check`, proxied routes.
    Gateway,
    /// Kubeflow Pipelines paths.
    Pipelines,
    /// A TokenReview naming these audiences (empty: the API's own).
    Review(&'a [String]),
}

/// What kind of credential authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// A bearer ID token of a user.
    IdToken,
    /// A bearer service-account token.
    ServiceAccount,
    /// A session cookie (the only kind a browser sends by itself: CSRF applies).
    Session,
    /// A verified TLS client certificate.
    ClientCertificate,
}

/// A successful authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// Who.
    pub identity: Identity,
    /// The audiences the credential was accepted for (tokens only).
    pub audiences: Vec<String>,
    /// By what.
    pub kind: CredentialKind,
    /// When the credential ends by itself (Unix s): a token's `exp`, a client certificate's
    /// notAfter. `None` for a session (its record says when it ends).
    pub expires_at: Option<u64>,
}

/// Why a credential was refused (answered as 401 / `authenticated: false`; detail is logged).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// The token failed a check.
    #[error(transparent)]
    Token(#[from] VerifyError),
    /// The service account is gone or was re-created.
    #[error("service account no longer exists")]
    AccountGone,
    /// The session was revoked (or its revocation state is unreadable).
    #[error("session revoked")]
    SessionRevoked,
}

/// The authenticator.
#[derive(Clone)]
pub struct Authenticator {
    idp: Arc<Idp>,
    /// Client ids whose ID tokens are accepted.
    bearer_audiences: Arc<[String]>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("bearer_audiences", &self.bearer_audiences)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// The authenticator of `idp`: accepts ID tokens of its built-in clients and of
    /// `settings.bearer_audiences`.
    pub fn new(idp: Arc<Idp>) -> Self {
        let s = idp.settings();
        let mut list: Vec<String> = s.builtin_clients.iter().map(|c| c.id.clone()).collect();
        for a in &s.bearer_audiences {
            if !list.contains(a) {
                list.push(a.clone());
            }
        }
        Self {
            idp,
            bearer_audiences: list.into(),
        }
    }

    /// The client ids whose ID tokens are accepted.
    pub fn bearer_audiences(&self) -> &[String] {
        &self.bearer_audiences
    }

    /// The IdP.
    pub fn idp(&self) -> &Arc<Idp> {
        &self.idp
    }

    /// A bearer token: a service-account token or a user's ID token.
    pub async fn bearer(&self, token: &str, surface: Surface<'_>) -> Result<Authenticated, Refusal> {
        let keys = self.idp.keys().keys();
        let raw: serde_json::Value = crate::jwt::verify(token, keys.verifying()).map_err(VerifyError::from)?;
        if raw.get("kubernetes.io").is_some() {
            let sa: ServiceAccountClaims =
                serde_json::from_value(raw).map_err(|_| VerifyError::Jwt(JwtError::Malformed))?;
            return self.service_account(sa, surface).await;
        }
        let claims: Claims = serde_json::from_value(raw).map_err(|_| VerifyError::Jwt(JwtError::Malformed))?;
        self.id_token(claims, surface).await
    }

    async fn service_account(&self, sa: ServiceAccountClaims, surface: Surface<'_>) -> Result<Authenticated, Refusal> {
        let issuer = self.idp.settings().issuer.as_str();
        let wanted: Vec<&str> = match surface {
            Surface::Gateway => vec![SERVICE_ACCOUNT_AUDIENCE, issuer],
            Surface::Pipelines => vec![SERVICE_ACCOUNT_AUDIENCE, issuer, PIPELINES_AUDIENCE],
            Surface::Review([]) => vec![SERVICE_ACCOUNT_AUDIENCE, issuer],
            Surface::Review(r) => r.iter().map(String::as_str).collect(),
        };
        let sa = self.idp.check_service_account_claims(sa, &wanted)?;
        if !self.account_current(&sa).await {
            return Err(Refusal::AccountGone);
        }
        let audiences = sa
            .aud
            .iter()
            .filter(|a| wanted.contains(&a.as_str()))
            .cloned()
            .collect();
        Ok(Authenticated {
            identity: Identity::new(sa.username(), sa.groups()),
            audiences,
            kind: CredentialKind::ServiceAccount,
            expires_at: Some(sa.exp),
        })
    }

    /// Whether the service account a token names still exists with the token's uid (tokens of
    /// a deleted or re-created account stop working), and so does the object it is bound to, if
    /// any. A lookup that fails refuses the token.
    async fn account_current(&self, sa: &ServiceAccountClaims) -> bool {
        let k = &sa.kubernetes;
        let lookup = self.idp.service_accounts();
        let same = |found: Result<Option<String>, crate::serviceaccount::LookupError>, uid: &str| match found {
            Ok(found) => found.as_deref() == Some(uid),
            Err(e) => {
                tracing::warn!(error = %e, "service account lookup failed; token refused");
                false
            }
        };
        if !same(
            lookup.uid(&k.namespace, &k.serviceaccount.name).await,
            &k.serviceaccount.uid,
        ) {
            return false;
        }
        for (kind, r) in k.bound() {
            if !same(lookup.object_uid(kind, &k.namespace, &r.name).await, &r.uid) {
                return false;
            }
        }
        true
    }

    async fn id_token(&self, claims: Claims, surface: Surface<'_>) -> Result<Authenticated, Refusal> {
        self.idp.check_claims(&claims)?;
        let listed = |a: &str| self.bearer_audiences.iter().any(|x| x == a);
        let mut audiences: Vec<String> = claims.aud.iter().filter(|a| listed(a)).cloned().collect();
        let azp_ok = match &claims.azp {
            Some(azp) => listed(azp),
            None => claims.aud.len() == 1,
        };
        if audiences.is_empty() || !azp_ok {
            return Err(VerifyError::Audience.into());
        }
        if let Surface::Review(wanted) = surface
            && !wanted.is_empty()
        {
            audiences.retain(|a| wanted.contains(a));
            if audiences.is_empty() {
                return Err(VerifyError::Audience.into());
            }
        }
        let Some(email) = claims.email.clone() else {
            return Err(VerifyError::NoEmail.into());
        };
        self.idp.check_not_revoked(&claims).await?;
        Ok(Authenticated {
            identity: Identity::new(email, claims.groups.unwrap_or_default()),
            audiences,
            kind: CredentialKind::IdToken,
            expires_at: Some(claims.exp),
        })
    }

    /// A session the caller looked up: valid unless it began at or before the user's
    /// revocation epoch (`started_ms`: Unix ms). `key` is the user's revocation key
    /// ([`UserKey::of`] the identity's user, kept with the session). An unreadable epoch refuses.
    pub async fn session(&self, identity: Identity, key: &UserKey, started_ms: u64) -> Result<Authenticated, Refusal> {
        debug_assert_eq!(*key, UserKey::of(&identity.user));
        match self.idp.epochs().revoked_key(key, started_ms).await {
            Ok(false) => Ok(Authenticated {
                identity,
                audiences: vec![],
                kind: CredentialKind::Session,
                expires_at: None,
            }),
            Ok(true) => Err(Refusal::SessionRevoked),
            Err(e) => {
                tracing::warn!(error = %e, "revocation state unavailable; session refused");
                Err(Refusal::SessionRevoked)
            }
        }
    }

    /// A client certificate the TLS listener verified, valid until `not_after` (Unix s).
    pub fn client_certificate(&self, identity: Identity, not_after: u64) -> Authenticated {
        Authenticated {
            identity,
            audiences: vec![],
            kind: CredentialKind::ClientCertificate,
            expires_at: Some(not_after),
        }
    }
}
