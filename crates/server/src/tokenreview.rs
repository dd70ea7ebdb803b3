//! TokenReview for `authentication.k8s.io/v1`: answered by the front door's own
//! [`kfsec_idp::Authenticator`], so a token is accepted here exactly when the front door accepts
//! it, with the same identity (service accounts with their groups).
//!
//! Invariants: a service-account token is valid only for an audience the review names (default:
//! `kfsec` and the issuer, the API's own) and only while its account exists with the same uid;
//! an ID token only for a client of the bearer audience list (and, when the review names
//! audiences, one of those); revoked credentials are refused.

use kfsec_api::{TokenReviewStatus, TokenReviewer};
use kfsec_idp::{Authenticator, Surface};
use kfsec_types::identity::UserInfo;

/// The reviewer.
pub struct Reviewer {
    /// The authenticator of the front door.
    pub authn: Authenticator,
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
        match self.authn.bearer(token, Surface::Review(audiences)).await {
            Ok(a) => TokenReviewStatus {
                authenticated: true,
                user: Some(UserInfo::from(&a.identity)),
                audiences: a.audiences,
                error: String::new(),
            },
            Err(e) => refused(&e.to_string()),
        }
    }
}
