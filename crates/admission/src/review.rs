//! AdmissionReview handling over the wire types of `kfsec_types::admission`: parsing requests
//! (with the checks the API server's webhook client relies on), encoding responses, and
//! [`review`], which runs one webhook over one HTTP body.
//!
//! Invariants: a body that is not a well-formed AdmissionReview is an error (never a panic, never a
//! guessed response); every response echoes the request's apiVersion, `kind: AdmissionReview` and
//! `uid`; a patch is always sent as `patchType: JSONPatch` with the base64 of a JSON Patch array;
//! a denial always carries `allowed: false` and a `status` with code and message.

use base64::Engine as _;
use kfsec_types::admission::{
    ADMISSION_V1, ADMISSION_V1BETA1, AdmissionRequest, AdmissionResponse, AdmissionReview, AdmissionStatus,
};
use serde_json::Value;

use crate::webhook::{AdmissionOutcome, Context, Webhook};

/// Why a body is not a usable AdmissionReview (the HTTP layer answers 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// Not JSON, or a member has the wrong type.
    #[error("the request body is not a valid AdmissionReview: {0}")]
    Malformed(String),
    /// `apiVersion` is neither `admission.k8s.io/v1` nor `admission.k8s.io/v1beta1`.
    #[error(
        "unsupported AdmissionReview apiVersion {0:?} (expected \"admission.k8s.io/v1\" or \"admission.k8s.io/v1beta1\")"
    )]
    UnsupportedVersion(String),
    /// `kind` is not `AdmissionReview`.
    #[error("expected kind \"AdmissionReview\", got {0:?}")]
    WrongKind(String),
    /// No `request` member.
    #[error("the AdmissionReview has no request")]
    MissingRequest,
}

/// A well-formed AdmissionReview request: the version it came in (echoed in the response) and
/// its request.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedReview {
    /// `admission.k8s.io/v1` or `admission.k8s.io/v1beta1`.
    pub api_version: String,
    /// The request.
    pub request: AdmissionRequest,
}

/// Parses an AdmissionReview request body.
pub fn parse_review(body: &[u8]) -> Result<ParsedReview, ReviewError> {
    // Parsed into a `Value` first so the whole body is checked, including members nobody reads.
    let mut value: Value = serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(e.to_string()))?;
    let Some(members) = value.as_object_mut() else {
        return Err(ReviewError::Malformed("expected a JSON object".into()));
    };
    // A request carries no response; one that does is read as if it did not (as always).
    members.remove("response");
    let env: AdmissionReview = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            ReviewError::Malformed(inner.to_string())
        } else {
            ReviewError::Malformed(format!("{path}: {inner}"))
        }
    })?;
    if env.api_version != ADMISSION_V1 && env.api_version != ADMISSION_V1BETA1 {
        return Err(ReviewError::UnsupportedVersion(env.api_version));
    }
    if env.kind != "AdmissionReview" {
        return Err(ReviewError::WrongKind(env.kind));
    }
    let request = env.request.ok_or(ReviewError::MissingRequest)?;
    Ok(ParsedReview {
        api_version: env.api_version,
        request,
    })
}

/// The HTTP reason phrase Kubernetes uses as `status.reason` for a code.
fn reason_for(code: u16) -> Option<&'static str> {
    Some(match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        413 => "RequestEntityTooLarge",
        410 => "Gone",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => return None,
    })
}

/// The `response` member for an outcome.
pub fn response(uid: &str, outcome: &AdmissionOutcome) -> AdmissionResponse {
    let uid = uid.to_owned();
    match outcome {
        AdmissionOutcome::Allow => AdmissionResponse {
            uid,
            allowed: true,
            ..AdmissionResponse::default()
        },
        AdmissionOutcome::Patch(patch) => {
            let raw = serde_json::to_vec(patch).unwrap_or_else(|_| b"[]".to_vec());
            AdmissionResponse {
                uid,
                allowed: true,
                patch_type: Some("JSONPatch".to_owned()),
                patch: Some(base64::engine::general_purpose::STANDARD.encode(raw)),
                status: None,
            }
        }
        AdmissionOutcome::Deny { code, message } => AdmissionResponse {
            uid,
            allowed: false,
            status: Some(AdmissionStatus {
                status: "Failure".to_owned(),
                code: *code,
                reason: reason_for(*code).map(str::to_owned),
                message: message.clone(),
            }),
            ..AdmissionResponse::default()
        },
    }
}

/// Encodes the response AdmissionReview for a request that came in as `api_version`.
pub fn encode_response(api_version: &str, uid: &str, outcome: &AdmissionOutcome) -> Vec<u8> {
    serde_json::to_vec(&AdmissionReview::response(api_version, response(uid, outcome))).unwrap_or_default()
}

/// Runs `webhook` over an already parsed review and encodes the response.
pub fn review_parsed(review: &ParsedReview, webhook: &dyn Webhook, ctx: &Context) -> Vec<u8> {
    let outcome = crate::webhook::admit_bounded(webhook, &review.request, ctx);
    encode_response(&review.api_version, &review.request.uid, &outcome)
}

/// Parses `body`, runs `webhook`, and returns the response AdmissionReview as JSON bytes.
///
/// Callers that need the namespace to build `ctx` use [`parse_review`] then [`review_parsed`].
pub fn review(body: &[u8], webhook: &dyn Webhook, ctx: &Context) -> Result<Vec<u8>, ReviewError> {
    let parsed = parse_review(body)?;
    Ok(review_parsed(&parsed, webhook, ctx))
}

#[cfg(test)]
mod tests {

    use super::*;
    use serde_json::json;

    #[test]
    fn rejects_garbage() {
        assert!(matches!(parse_review(b""), Err(ReviewError::Malformed(_))));
        assert!(matches!(parse_review(b"[]"), Err(ReviewError::Malformed(_))));
        // Invalid JSON in a member nobody reads is still invalid JSON (found by fuzzing).
        assert!(matches!(
            parse_review(br#"{"x":"\ud800","apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"1","operation":"CREATE"}}"#),
            Err(ReviewError::Malformed(_))
        ));
        assert!(matches!(
            parse_review(br#"{"apiVersion":"v1","kind":"AdmissionReview","request":{"uid":"1","operation":"CREATE"}}"#),
            Err(ReviewError::UnsupportedVersion(_))
        ));
        assert!(matches!(
            parse_review(br#"{"apiVersion":"admission.k8s.io/v1","kind":"Pod"}"#),
            Err(ReviewError::WrongKind(_))
        ));
        assert_eq!(
            parse_review(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#),
            Err(ReviewError::MissingRequest)
        );
        let e = parse_review(
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"1","operation":"EXPLODE"}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("request.operation"), "{e}");
        assert!(matches!(
            parse_review(
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"operation":"CREATE"}}"#
            ),
            Err(ReviewError::Malformed(_))
        ));
        assert!(matches!(
            parse_review(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"1","operation":"CREATE"}} x"#),
            Err(ReviewError::Malformed(_))
        ));
    }

    #[test]
    fn a_response_member_in_a_request_is_ignored() {
        let r = parse_review(
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"1","operation":"CREATE"},"response":7}"#,
        )
        .unwrap();
        assert_eq!(r.request.uid, "1");
    }

    #[test]
    fn deny_has_status() {
        let v = serde_json::to_value(response("u", &AdmissionOutcome::deny(403, "no"))).unwrap();
        assert_eq!(
            v,
            json!({"uid": "u", "allowed": false, "status": {"status": "Failure", "code": 403, "reason": "Forbidden", "message": "no"}})
        );
    }
}
