//! TokenReview for `authentication.k8s.io/v1`: service-account tokens (audience- and
//! account-bound) and ID tokens from kfsec's IdP, as the front door itself accepts them.
//!
//! Invariants: a service-account token is valid only for an audience it names (default `kfsec`)
//! and only while its account exists with the same uid.

use std::sync::Arc;

use kfsec_api::{TokenReviewStatus, TokenReviewer, UserInfo};
use kfsec_idp::Idp;
use kfsec_store::Store;

/// The reviewer.
pub struct Reviewer {
    /// The IdP whose keys sign tokens.
    pub idp: Arc<Idp>,
    /// Where service accounts live.
    pub store: Arc<dyn Store>,
}

fn refused(error: &str) -> TokenReviewStatus {
    TokenReviewStatus {
        authenticated: false,
        user: None,
        audiences: vec![],
        error: error.into(),
    }
}

#[async_trait::async_trait]
impl TokenReviewer for Reviewer {
    async fn review(&self, token: &str, audiences: &[String]) -> TokenReviewStatus {
        let wanted: Vec<&str> = if audiences.is_empty() {
            vec![kfsec_gateway::SERVICE_ACCOUNT_AUDIENCE]
        } else {
            audiences.iter().map(String::as_str).collect()
        };
        match self.idp.verify_service_account_token(token, &wanted) {
            Ok(sa) => {
                if !kfsec_gateway::service_account_exists(self.store.as_ref(), &sa).await {
                    return refused("service account has been deleted");
                }
                let aud = sa
                    .aud
                    .iter()
                    .filter(|a| wanted.contains(&a.as_str()))
                    .cloned()
                    .collect();
                return TokenReviewStatus {
                    authenticated: true,
                    user: Some(UserInfo::authenticated(sa.username(), &[])),
                    audiences: aud,
                    error: String::new(),
                };
            }
            Err(kfsec_idp::VerifyError::Jwt(kfsec_idp::jwt::JwtError::Malformed)) => {}
            Err(e) => return refused(&e.to_string()),
        }
        match self.idp.verify_token(token, None, None).await {
            Ok(c) => match c.email {
                Some(email) => TokenReviewStatus {
                    authenticated: true,
                    user: Some(UserInfo::authenticated(email, &c.groups.unwrap_or_default())),
                    audiences: c.aud,
                    error: String::new(),
                },
                None => refused("token carries no email"),
            },
            Err(e) => refused(&e.to_string()),
        }
    }
}
