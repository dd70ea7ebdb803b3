//! The Kubernetes admission vocabulary (`admission.k8s.io/v1` and `v1beta1`): [`Operation`],
//! [`GroupVersionKind`], [`GroupVersionResource`], and the AdmissionReview wire types
//! ([`AdmissionReview`], [`AdmissionRequest`], [`AdmissionResponse`]) — the one copy the API's
//! in-process admission, the webhooks and the webhook listener share. The requesting user is the
//! one [`UserInfo`] of [`crate::identity`].
//!
//! Invariants: pure data, no IO; field names follow the Kubernetes JSON exactly; `null` is read as
//! empty wherever Go may write one; the response types serialise their members in sorted order
//! (the order kfsec has always sent), and a response member that is `None` is omitted.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::identity::UserInfo;
use crate::meta::null_default;

/// `admission.k8s.io/v1`.
pub const ADMISSION_V1: &str = "admission.k8s.io/v1";
/// `admission.k8s.io/v1beta1`.
pub const ADMISSION_V1BETA1: &str = "admission.k8s.io/v1beta1";

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

/// `metav1.GroupVersionKind`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupVersionKind {
    /// API group (`""` for core).
    #[serde(default, deserialize_with = "null_default")]
    pub group: String,
    /// Version.
    #[serde(default, deserialize_with = "null_default")]
    pub version: String,
    /// Kind.
    #[serde(default, deserialize_with = "null_default")]
    pub kind: String,
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

/// `metav1.GroupVersionResource`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupVersionResource {
    /// API group (`""` for core).
    #[serde(default, deserialize_with = "null_default")]
    pub group: String,
    /// Version.
    #[serde(default, deserialize_with = "null_default")]
    pub version: String,
    /// Plural resource name.
    #[serde(default, deserialize_with = "null_default")]
    pub resource: String,
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

/// `AdmissionReview.request`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    /// Identifies this admission call; echoed in the response.
    pub uid: String,
    /// The kind of the object.
    #[serde(default, deserialize_with = "null_default")]
    pub kind: GroupVersionKind,
    /// The resource being admitted.
    #[serde(default, deserialize_with = "null_default")]
    pub resource: GroupVersionResource,
    /// The subresource (`""` for the main resource).
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "String::is_empty")]
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
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    /// Namespace (`""` for cluster-scoped).
    #[serde(default, deserialize_with = "null_default")]
    pub namespace: String,
    /// CREATE, UPDATE, DELETE or CONNECT.
    pub operation: Operation,
    /// The requesting user.
    #[serde(default, deserialize_with = "null_default")]
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

    /// The old object's labels (`metadata.labels`), if any.
    pub fn old_object_labels(&self) -> Option<&Map<String, Value>> {
        self.old_object.as_ref().and_then(labels_of)
    }
}

fn labels_of(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata")?.get("labels")?.as_object()
}

/// The `status` of a denied [`AdmissionResponse`] (the members of `metav1.Status` webhooks send).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionStatus {
    /// HTTP code.
    pub code: u16,
    /// Human-readable reason.
    #[serde(default, deserialize_with = "null_default")]
    pub message: String,
    /// Kubernetes' reason for `code` (`Forbidden`, …), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `Failure`.
    #[serde(default, deserialize_with = "null_default")]
    pub status: String,
}

/// `AdmissionReview.response`. Members are declared in sorted order: that is the wire order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    /// Whether the request is admitted.
    pub allowed: bool,
    /// Base64 of a JSON Patch array (mutating webhooks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// `JSONPatch` when `patch` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// Why the request was denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<AdmissionStatus>,
    /// The request's uid.
    #[serde(default, deserialize_with = "null_default")]
    pub uid: String,
}

/// The `AdmissionReview` envelope: a request (to a webhook) or a response (from one). Members
/// are declared in sorted order: that is the wire order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    /// `admission.k8s.io/v1` or `admission.k8s.io/v1beta1`.
    #[serde(default, deserialize_with = "null_default")]
    pub api_version: String,
    /// `AdmissionReview`.
    #[serde(default, deserialize_with = "null_default")]
    pub kind: String,
    /// The request, when sent to a webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<AdmissionRequest>,
    /// The response, when sent back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<AdmissionResponse>,
}

impl AdmissionReview {
    /// The response envelope for a request that came in as `api_version`.
    pub fn response(api_version: &str, response: AdmissionResponse) -> Self {
        Self {
            api_version: api_version.to_owned(),
            kind: "AdmissionReview".to_owned(),
            request: None,
            response: Some(response),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_reads_nulls_and_round_trips() {
        let r: AdmissionRequest = serde_json::from_value(json!({
            "uid": "1", "kind": null, "resource": {"group": null, "version": "v1", "resource": "pods"},
            "name": null, "namespace": "ns", "operation": "UPDATE",
            "userInfo": {"username": "u", "groups": null},
            "object": {"metadata": {"labels": {"a": "b"}}}, "oldObject": {"metadata": {}}
        }))
        .unwrap();
        assert_eq!(r.operation, Operation::Update);
        assert_eq!(r.resource, GroupVersionResource::new("", "v1", "pods"));
        assert_eq!(r.user_info.username, "u");
        assert_eq!(r.object_labels().unwrap()["a"], "b");
        assert!(r.old_object_labels().is_none());
        let back: AdmissionRequest = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn response_members_in_sorted_order() {
        let review = AdmissionReview::response(
            ADMISSION_V1,
            AdmissionResponse {
                uid: "u".into(),
                allowed: false,
                status: Some(AdmissionStatus {
                    status: "Failure".into(),
                    code: 403,
                    reason: Some("Forbidden".into()),
                    message: "no".into(),
                }),
                ..AdmissionResponse::default()
            },
        );
        let direct = serde_json::to_string(&review).unwrap();
        let sorted = serde_json::to_string(&serde_json::to_value(&review).unwrap()).unwrap();
        assert_eq!(direct, sorted);
        assert_eq!(
            direct,
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"allowed":false,"status":{"code":403,"message":"no","reason":"Forbidden","status":"Failure"},"uid":"u"}}"#
        );
    }
}
