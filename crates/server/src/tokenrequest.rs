//! TokenRequest's issuer ([`kfsec_api::TokenIssuer`]): the API's `serviceaccounts/{name}/token`
//! mints through [`kfsec_idp::Idp::token_for_account`], the same path as `kfsec token create`,
//! so its tokens are accepted exactly where those are (the front door, TokenReview, Pipelines
//! with `pipelines.kubeflow.org`).
//!
//! Invariant: a failure to issue keeps its cause for the API's log (answered as a generic 500
//! with an incident id), never in the response; the token itself is never logged.

use std::sync::Arc;

use kfsec_api::{BoundKindRef, IssueError, IssuedToken, TokenGrant, TokenIssuer};
use kfsec_idp::serviceaccount::{BoundKind, BoundObject};
use kfsec_idp::{Idp, IdpError};

/// Issues TokenRequest tokens with the IdP's keys.
pub(crate) struct Issuer(pub(crate) Arc<Idp>);

#[async_trait::async_trait]
impl TokenIssuer for Issuer {
    async fn issue(&self, grant: &TokenGrant) -> Result<IssuedToken, IssueError> {
        if let Some(a) = self
            .0
            .client_audience(&grant.audiences)
            .await
            .map_err(|e| IssueError::Failed(Box::new(e)))?
        {
            return Err(IssueError::Audience(a));
        }
        match self
            .0
            .token_for_account(
                &grant.namespace,
                &grant.name,
                grant.audiences.clone(),
                grant.lifetime,
                grant.bound.as_ref().map(|b| BoundObject {
                    kind: match b.kind {
                        BoundKindRef::Pod => BoundKind::Pod,
                        BoundKindRef::Secret => BoundKind::Secret,
                    },
                    name: b.name.clone(),
                    uid: b.uid.clone(),
                }),
            )
            .await
        {
            Ok(t) => Ok(IssuedToken {
                token: t.token,
                audiences: t.audiences,
                issued_at: t.issued_at,
                expires_at: t.expires_at,
            }),
            Err(IdpError::NotFound(_)) => Err(IssueError::NoAccount),
            Err(e) => Err(IssueError::Failed(Box::new(e))),
        }
    }
}
