//! The AdmissionReview wire format (`admission.k8s.io/v1` and `v1beta1`): parsing requests,
//! encoding responses, and [`review`], which runs one webhook over one HTTP body.
//!
//! Invariants: a body that is not a well-formed AdmissionReview is an error (never a panic, never a
//! guessed response); every response echoes the request's apiVersion, `kind: AdmissionReview` and
//! `uid`; a patch is always sent as `patchType: JSONPatch` with the base64 of a JSON Patch array;
//! a denial always carries `allowed: false` and a `status` with code and message.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value, json};

use crate::webhook::{AdmissionOutcome, Context, Webhook};

/// `admission.k8s.io/v1`.
pub const ADMISSION_V1: &str = "admission.k8s.io/v1";
/// `admission.k8s.io/v1beta1`.
pub const ADMISSION_V1BETA1: &str = "admission.k8s.io/v1beta1";

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

/// The admission operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Operation {
    /// `CREATE`.
    #[default]
    Create,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
    /// `CONNECT`.
    Connect,
}

impl Operation {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "CREATE",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
        }
    }
}

fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `metav1.GroupVersionKind`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupVersionKind {
    /// API group (`""` for core).
    #[serde(default, deserialize_with = "nullable")]
    pub group: String,
    /// Version.
    #[serde(default, deserialize_with = "nullable")]
    pub version: String,
    /// Kind.
    #[serde(default, deserialize_with = "nullable")]
    pub kind: String,
}

/// `metav1.GroupVersionResource`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupVersionResource {
    /// API group (`""` for core).
    #[serde(default, deserialize_with = "nullable")]
    pub group: String,
    /// Version.
    #[serde(default, deserialize_with = "nullable")]
    pub version: String,
    /// Plural resource name.
    #[serde(default, deserialize_with = "nullable")]
    pub resource: String,
}

impl GroupVersionKind {
    /// Builds one.
    pub fn new(group: &str, version: &str, kind: &str) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
        }
    }
}

impl GroupVersionResource {
    /// Builds one.
    pub fn new(group: &str, version: &str, resource: &str) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            resource: resource.into(),
        }
    }
}

/// `authentication.k8s.io/v1 UserInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// User name.
    #[serde(default, deserialize_with = "nullable")]
    pub username: String,
    /// User uid.
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Groups.
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Extra attributes.
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

/// `AdmissionReview.request`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    /// Identifies this admission call; echoed in the response.
    pub uid: String,
    /// The kind of the object.
    #[serde(default, deserialize_with = "nullable")]
    pub kind: GroupVersionKind,
    /// The resource being admitted.
    #[serde(default, deserialize_with = "nullable")]
    pub resource: GroupVersionResource,
    /// The subresource (`""` for the main resource).
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "String::is_empty")]
    pub sub_resource: String,
    /// The kind of the original request (before conversion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_kind: Option<GroupVersionKind>,
    /// The resource of the original request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_resource: Option<GroupVersionResource>,
    /// The subresource of the original request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_sub_resource: Option<String>,
    /// Object name (may be empty on create with `generateName`).
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    /// Namespace (`""` for cluster-scoped).
    #[serde(default, deserialize_with = "nullable")]
    pub namespace: String,
    /// CREATE, UPDATE, DELETE or CONNECT.
    pub operation: Operation,
    /// The requesting user.
    #[serde(default, deserialize_with = "nullable")]
    pub user_info: UserInfo,
    /// The object as it would be stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<Value>,
    /// The existing object (UPDATE, DELETE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_object: Option<Value>,
    /// True for dry-run requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    /// Operation options (CreateOptions, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Value>,
}

impl AdmissionRequest {
    /// A request for an in-process admission of `object` (uid empty, no user; set
    /// `user_info`, `old_object` and `dry_run` as needed).
    pub fn for_object(
        operation: Operation,
        gvk: GroupVersionKind,
        resource: GroupVersionResource,
        namespace: &str,
        name: &str,
        object: Value,
    ) -> Self {
        Self {
            request_kind: Some(gvk.clone()),
            request_resource: Some(resource.clone()),
            kind: gvk,
            resource,
            namespace: namespace.into(),
            name: name.into(),
            operation,
            object: Some(object),
            ..Self::default()
        }
    }

    /// The object's labels (`metadata.labels`), if any.
    pub fn object_labels(&self) -> Option<&Map<String, Value>> {
        self.object.as_ref().and_then(labels_of)
    }
}

pub(crate) fn labels_of(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata")?.get("labels")?.as_object()
}

/// A parsed AdmissionReview: the version it came in and its request.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionReview {
    /// `admission.k8s.io/v1` or `admission.k8s.io/v1beta1`, echoed in the response.
    pub api_version: String,
    /// The request.
    pub request: AdmissionRequest,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    #[serde(default, deserialize_with = "nullable")]
    api_version: String,
    #[serde(default, deserialize_with = "nullable")]
    kind: String,
    #[serde(default)]
    request: Option<AdmissionRequest>,
}

/// Parses an AdmissionReview request body.
pub fn parse_review(body: &[u8]) -> Result<AdmissionReview, ReviewError> {
    // Parsed into a `Value` first so the whole body is checked, including members nobody reads.
    let value: Value = serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(e.to_string()))?;
    if !value.is_object() {
        return Err(ReviewError::Malformed("expected a JSON object".into()));
    }
    let env: Envelope = serde_path_to_error::deserialize(value).map_err(|e| {
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
    Ok(AdmissionReview {
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
pub fn response_value(uid: &str, outcome: &AdmissionOutcome) -> Value {
    match outcome {
        AdmissionOutcome::Allow => json!({"uid": uid, "allowed": true}),
        AdmissionOutcome::Patch(patch) => {
            let raw = serde_json::to_vec(patch).unwrap_or_else(|_| b"[]".to_vec());
            json!({
                "uid": uid,
                "allowed": true,
                "patchType": "JSONPatch",
                "patch": base64::engine::general_purpose::STANDARD.encode(raw),
            })
        }
        AdmissionOutcome::Deny { code, message } => {
            let mut status = Map::new();
            status.insert("status".into(), Value::from("Failure"));
            status.insert("code".into(), Value::from(*code));
            if let Some(reason) = reason_for(*code) {
                status.insert("reason".into(), Value::from(reason));
            }
            status.insert("message".into(), Value::from(message.as_str()));
            json!({"uid": uid, "allowed": false, "status": status})
        }
    }
}

/// Encodes the response AdmissionReview for a request that came in as `api_version`.
pub fn encode_response(api_version: &str, uid: &str, outcome: &AdmissionOutcome) -> Vec<u8> {
    let body = json!({
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "response": response_value(uid, outcome),
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Runs `webhook` over an already parsed review and encodes the response.
pub fn review_parsed(review: &AdmissionReview, webhook: &dyn Webhook, ctx: &Context) -> Vec<u8> {
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
    fn deny_has_status() {
        let v = response_value("u", &AdmissionOutcome::deny(403, "no"));
        assert_eq!(
            v,
            json!({"uid": "u", "allowed": false, "status": {"status": "Failure", "code": 403, "reason": "Forbidden", "message": "no"}})
        );
    }
}
