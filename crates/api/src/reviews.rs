//! The create-only review types: SelfSubjectAccessReview, SubjectAccessReview,
//! LocalSubjectAccessReview, SelfSubjectRulesReview (authorization.k8s.io/v1), TokenReview and
//! SelfSubjectReview (authentication.k8s.io/v1).
//!
//! Invariants: reviews never write to the store; a SelfSubject* review always evaluates the
//! caller's own (possibly impersonated) identity, never one named in the body (a
//! SelfSubjectReview answers a fresh object: nothing of the body is echoed); creating a review
//! is itself authorized like any other create before any of this runs.

use kfsec_types::identity::UserInfo;
use serde_json::{Map, Value, json};

use crate::ApiServer;
use crate::authorize::{Attributes, ResourceAttributes, attributes_for};
use crate::objects::check_type;
use crate::registry::{Resource, Review};
use crate::status::{ApiError, FieldCause};

fn invalid(res: &Resource, causes: Vec<FieldCause>) -> ApiError {
    ApiError::Invalid {
        kind: res.kind.to_owned(),
        group: res.group.to_owned(),
        name: String::new(),
        causes,
    }
}

fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The attributes a review spec asks about, for `user`.
fn spec_attributes(res: &Resource, spec: &Value, user: &UserInfo) -> Result<Attributes, ApiError> {
    let ra = spec.get("resourceAttributes").filter(|v| !v.is_null());
    let na = spec.get("nonResourceAttributes").filter(|v| !v.is_null());
    match (ra, na) {
        (Some(r), None) => Ok(attributes_for(
            user,
            ResourceAttributes {
                verb: text(r, "verb").to_owned(),
                api_group: text(r, "group").to_owned(),
                resource: text(r, "resource").to_owned(),
                subresource: text(r, "subresource").to_owned(),
                namespace: text(r, "namespace").to_owned(),
                name: text(r, "name").to_owned(),
            },
        )),
        (None, Some(n)) => Ok(Attributes::non_resource(
            &user.username,
            user.groups.clone(),
            text(n, "verb"),
            text(n, "path"),
        )),
        _ => Err(invalid(
            res,
            vec![FieldCause::invalid(
                "spec.resourceAttributes",
                "",
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )],
        )),
    }
}

impl ApiServer {
    /// Evaluates a review body; returns the object to send back with 201.
    pub(crate) async fn review(
        &self,
        res: &'static Resource,
        kind: Review,
        ns: &str,
        caller: &UserInfo,
        body: Value,
    ) -> Result<Value, ApiError> {
        let mut obj = check_type(res, body)?;
        if kind == Review::SelfSubject {
            return Ok(self.self_subject_review(res, caller));
        }
        let body_ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("");
        if res.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            ));
        }
        let spec = obj.get("spec").cloned().unwrap_or_else(|| json!({}));
        if !spec.is_object() {
            return Err(ApiError::BadRequest("spec must be a JSON object".into()));
        }
        let status = match kind {
            Review::SelfSubjectAccess => self.access_status(&spec_attributes(res, &spec, caller)?),
            Review::SubjectAccess | Review::LocalSubjectAccess => {
                let user = UserInfo {
                    username: text(&spec, "user").to_owned(),
                    uid: text(&spec, "uid").to_owned(),
                    groups: string_list(spec.get("groups")),
                    extra: Default::default(),
                };
                if user.username.is_empty() && user.groups.is_empty() {
                    return Err(invalid(
                        res,
                        vec![FieldCause::invalid(
                            "spec.user",
                            "",
                            "at least one of user or group must be specified",
                        )],
                    ));
                }
                if kind == Review::LocalSubjectAccess {
                    if spec.get("nonResourceAttributes").is_some_and(|v| !v.is_null()) {
                        return Err(invalid(
                            res,
                            vec![FieldCause::invalid(
                                "spec.nonResourceAttributes",
                                "",
                                "disallowed on this kind of request",
                            )],
                        ));
                    }
                    let want = spec
                        .pointer("/resourceAttributes/namespace")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    if want != ns {
                        return Err(ApiError::BadRequest(format!(
                            "spec.resourceAttributes.namespace must match namespace: {ns}"
                        )));
                    }
                }
                self.access_status(&spec_attributes(res, &spec, &user)?)
            }
            Review::SelfSubjectRules => {
                let rns = text(&spec, "namespace");
                let rules = self.authz.rules_for(caller, rns);
                let mut s = json!({
                    "resourceRules": rules.resource_rules,
                    "nonResourceRules": rules.non_resource_rules,
                    "incomplete": rules.incomplete,
                });
                if !rules.evaluation_error.is_empty()
                    && let Some(o) = s.as_object_mut()
                {
                    o.insert("evaluationError".into(), json!(rules.evaluation_error));
                }
                s
            }
            Review::SelfSubject => Value::Null,
            Review::Token => {
                let token = text(&spec, "token");
                if token.is_empty() {
                    return Err(invalid(res, vec![FieldCause::required("spec.token", "")]));
                }
                let audiences = string_list(spec.get("audiences"));
                let r = self.tokens.review(token, &audiences).await;
                let mut s = Map::new();
                s.insert("authenticated".into(), json!(r.authenticated));
                if let Some(u) = r.user.filter(|_| r.authenticated) {
                    s.insert("user".into(), serde_json::to_value(u).unwrap_or_default());
                }
                if !r.audiences.is_empty() {
                    s.insert("audiences".into(), json!(r.audiences));
                }
                if !r.error.is_empty() {
                    s.insert("error".into(), json!(r.error));
                }
                Value::Object(s)
            }
        };
        if let Some(o) = obj.as_object_mut() {
            if kind == Review::Token
                && let Some(Value::Object(spec)) = o.get_mut("spec")
            {
                // Never echo the bearer token back.
                spec.remove("token");
            }
            o.insert("status".into(), status);
            if let Some(Value::Object(m)) = o.get_mut("metadata") {
                m.entry("creationTimestamp").or_insert(Value::Null);
            }
        }
        Ok(obj)
    }

    /// `kubectl auth whoami`: the caller as the API sees it (after impersonation), in a new
    /// object stamped now, as kube-apiserver answers.
    fn self_subject_review(&self, res: &Resource, caller: &UserInfo) -> Value {
        let now = self.clock.now().to_rfc3339();
        json!({
            "kind": res.kind,
            "apiVersion": res.api_version(),
            "metadata": {"creationTimestamp": now},
            "status": {"userInfo": caller},
        })
    }

    fn access_status(&self, attrs: &Attributes) -> Value {
        match self.authz.authorize(attrs) {
            crate::authorize::Decision::Allow { reason } if reason.is_empty() => json!({"allowed": true}),
            crate::authorize::Decision::Allow { reason } => json!({"allowed": true, "reason": reason}),
            crate::authorize::Decision::NoOpinion => json!({"allowed": false}),
        }
    }
}
