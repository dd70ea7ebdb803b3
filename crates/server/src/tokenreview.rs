//! TokenReview for `authentication.k8s.io/v1`: answered by the front door's own
//! [`kfsec_idp::Authenticator`], so a token is accepted here exactly when the front door accepts
//! it, with the same identity (service accounts with their groups).
//!
//! Invariants: a service-account token is valid only for an audience the review names (default:
//! `kfsec` and the issuer, the API's own) and only while its account exists with the same uid;
//! an ID token only for a client of the bearer audience list (and, when the review names
//! audiences, one of those); revoked credentials are refused.

use kfsec_api::{TokenReviewStatus, TokenReviewer};
use std::sync::Arc;

use kfsec_idp::{Authenticator, Surface, VerifyError};
use kfsec_types::identity::UserInfo;
use kfsec_types::{Failure, Refusal, Rng};

/// The reviewer.
pub struct Reviewer {
    /// The authenticator of the front door.
    pub authn: Authenticator,
    /// Incident ids of failures.
    pub rng: Arc<dyn Rng>,
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
            Err(e) => answer(&e, self.rng.as_ref()),
        }
    }
}

/// The refusal of `e` as the review answers it: the token's fault with its reason; a failure of
/// kfsec to check it (the revocation state unreadable) with a generic text and an incident id,
/// the cause logged under that id.
fn answer(e: &kfsec_idp::Refusal, rng: &dyn Rng) -> TokenReviewStatus {
    if let kfsec_idp::Refusal::Token(VerifyError::Unavailable(_)) = e {
        let r = Refusal::failure(Failure::Storage, rng);
        tracing::error!(incident = %r.incident_id(), error = %e, "TokenReview could not check a token");
        return refused(&r.text());
    }
    refused(&e.to_string())
}

#[cfg(test)]
mod tests {
    use kfsec_idp::Refusal;

    use super::*;

    struct Fixed;
    impl Rng for Fixed {
        fn fill(&self, buf: &mut [u8]) {
            buf.fill(7);
        }
    }

    /// A token that could not be checked because storage failed is refused with a generic text
    /// and an incident id, never the store's text.
    #[test]
    fn a_failure_to_check_is_answered_without_internal_text() {
        let e = Refusal::Token(VerifyError::Unavailable(
            "store: redb: I/O error reading /var/lib/kfsec/kfsec.redb page 7".into(),
        ));
        let st = answer(&e, &Fixed);
        assert!(!st.authenticated);
        for leak in ["redb", "/var/lib", "page 7", "store"] {
            assert!(!st.error.contains(leak), "leaks {leak:?}: {}", st.error);
        }
        assert!(kfsec_types::Incident::quoted_in(&st.error).is_some(), "{}", st.error);
        // A refusal of the token itself keeps its reason.
        assert_eq!(
            answer(&Refusal::Token(VerifyError::Expired), &Fixed).error,
            "token expired"
        );
    }
}
