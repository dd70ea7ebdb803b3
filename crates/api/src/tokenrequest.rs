//! TokenRequest: `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`
//! (`authentication.k8s.io/v1`, what `kubectl create token` sends), answered with a token the
//! server's [`TokenIssuer`] mints — the one `kfsec token create` uses.
//!
//! Invariants: runs only after the caller was authorized for `create` on
//! `serviceaccounts/token` with the account's name in its namespace; the request is validated
//! as kube-apiserver validates it (`expirationSeconds` from 600 to 2^32, default 3600, integers
//! only) before the account is looked up; the account must exist (404 otherwise); a
//! `boundObjectRef` names a Pod running as the account or a Secret of its namespace, which must
//! exist (with the uid given, if any), and the token dies with it; other kinds are refused with
//! kube-apiserver's message; at most 64 audiences, none of them one of the IdP's
//! OAuth2 clients (the issuer refuses those: the token could pass for that client's ID token);
//! the token is returned once, never logged.

use kfsec_types::CauseType;
use kfsec_types::identity::UserInfo;
use serde_json::{Map, Value, json};

use crate::ApiServer;
use crate::hooks::{BoundKindRef, BoundRef, IssueError, TokenGrant};
use crate::objects::{check_type, invalid, not_found};
use crate::registry::{self, Resource, TOKEN_REQUEST};
use crate::status::{ApiError, FieldCause};

/// Kubernetes' default `expirationSeconds` (one hour).
const DEFAULT_SECONDS: i64 = 3600;
/// Kubernetes' shortest token (10 minutes).
const MIN_SECONDS: i64 = 600;
/// Kubernetes' longest request (2^32 seconds); the issuer caps below it.
const MAX_SECONDS: i64 = 1 << 32;
/// kfsec's limit on `spec.audiences` (Kubernetes has none; each is looked up by the issuer).
const MAX_AUDIENCES: usize = 64;

/// A request body member of the wrong JSON type, in the words of kube-apiserver's decoder.
fn wrong_type(field: &str, want: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "TokenRequest in version \"v1\" cannot be handled as a TokenRequest: json: cannot unmarshal {field} of type {want}"
    ))
}

fn invalid_seconds(n: i64, detail: &str) -> ApiError {
    invalid(
        &TOKEN_REQUEST,
        "",
        vec![FieldCause {
            reason: CauseType::FieldValueInvalid,
            field: "spec.expirationSeconds".into(),
            message: format!("Invalid value: {n}: {detail}"),
        }],
    )
}

/// The validated spec.
struct Spec {
    audiences: Vec<String>,
    seconds: i64,
    /// A bindable `boundObjectRef`: kind, name and the uid it asks for (empty: any).
    bound: Option<(BoundKindRef, String, String)>,
}

fn parse_spec(spec: &Map<String, Value>) -> Result<Spec, ApiError> {
    let audiences = match spec.get("audiences") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| wrong_type("TokenRequestSpec.spec.audiences", "string"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(wrong_type("TokenRequestSpec.spec.audiences", "[]string")),
    };
    if audiences.len() > MAX_AUDIENCES {
        return Err(invalid(
            &TOKEN_REQUEST,
            "",
            vec![FieldCause {
                reason: CauseType::FieldValueTooMany,
                field: "spec.audiences".into(),
                message: format!("Too many: {}: must have at most {MAX_AUDIENCES} items", audiences.len()),
            }],
        ));
    }
    let seconds = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_SECONDS,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| wrong_type("TokenRequestSpec.spec.expirationSeconds", "int64"))?,
    };
    if seconds < MIN_SECONDS {
        return Err(invalid_seconds(
            seconds,
            "may not specify a duration less than 10 minutes",
        ));
    }
    if seconds > MAX_SECONDS {
        return Err(invalid_seconds(
            seconds,
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let bound = match spec.get("boundObjectRef") {
        None | Some(Value::Null) => None,
        Some(Value::Object(r)) => {
            let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("");
            // `schema.FromAPIVersionAndKind(...)`: a group only when the version has one.
            let (group, version) = match s("apiVersion").split('/').collect::<Vec<_>>().as_slice() {
                [v] => ("", *v),
                [g, v] => (*g, *v),
                _ => ("", ""),
            };
            let kind = match (group, s("kind")) {
                ("", "Pod") => BoundKindRef::Pod,
                ("", "Secret") => BoundKindRef::Secret,
                (_, k) => {
                    return Err(ApiError::BadRequest(format!(
                        "cannot bind token to object of type {group}/{version}, Kind={k}"
                    )));
                }
            };
            Some((kind, s("name").to_owned(), s("uid").to_owned()))
        }
        Some(_) => {
            return Err(wrong_type(
                "TokenRequestSpec.spec.boundObjectRef",
                "v1.BoundObjectReference",
            ));
        }
    };
    Ok(Spec {
        audiences,
        seconds,
        bound,
    })
}

impl ApiServer {
    /// The object a token for account `account` is bound to, as kube-apiserver checks it: it
    /// exists in `ns` (404), a Pod runs as the account (400), and a given uid is its uid (409).
    async fn bound_object(
        &self,
        ns: &str,
        account: &str,
        kind: BoundKindRef,
        name: String,
        want_uid: &str,
    ) -> Result<BoundRef, ApiError> {
        let (plural, kind_name) = match kind {
            BoundKindRef::Pod => ("pods", "Pod"),
            BoundKindRef::Secret => ("secrets", "Secret"),
        };
        let res = registry::find("", "v1", plural).ok_or(ApiError::NoRoute)?;
        let obj = self.get_in(res, ns, &name).await?;
        if kind == BoundKindRef::Pod {
            let runs_as = obj
                .pointer("/spec/serviceAccountName")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or("default");
            if runs_as != account {
                return Err(ApiError::BadRequest(format!(
                    "cannot bind token for serviceaccount {account:?} to pod running with different serviceaccount name."
                )));
            }
        }
        let uid = obj
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if !want_uid.is_empty() && want_uid != uid {
            return Err(ApiError::Conflict {
                qualified: kind_name.to_owned(),
                group: String::new(),
                kind: kind_name.to_owned(),
                name,
                detail: format!(
                    "the UID in the bound object reference ({want_uid}) does not match the UID in record. The object might have been deleted and then recreated"
                ),
            });
        }
        Ok(BoundRef { kind, name, uid })
    }

    /// Answers a TokenRequest for service account `name` (of type `accounts`) in `ns`; the
    /// object to send back with 201.
    pub(crate) async fn token_request(
        &self,
        accounts: &'static Resource,
        ns: &str,
        name: &str,
        caller: &UserInfo,
        body: Value,
    ) -> Result<Value, ApiError> {
        let mut obj = check_type(&TOKEN_REQUEST, body)?;
        let body_ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("");
        if !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            ));
        }
        let spec = match obj.get("spec") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err(wrong_type("TokenRequest.spec", "v1.TokenRequestSpec")),
        };
        let want = parse_spec(&spec)?;
        self.get_in(accounts, ns, name).await?;
        let bound = match want.bound {
            None => None,
            Some((kind, bname, buid)) => Some(self.bound_object(ns, name, kind, bname, &buid).await?),
        };
        let grant = TokenGrant {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            audiences: want.audiences,
            lifetime: std::time::Duration::from_secs(want.seconds.unsigned_abs()),
            bound,
        };
        let issued = self.issuer.issue(&grant).await.map_err(|e| match e {
            IssueError::NoAccount => not_found(accounts, name),
            IssueError::Audience(a) => invalid(
                &TOKEN_REQUEST,
                "",
                vec![FieldCause::invalid(
                    "spec.audiences",
                    &a,
                    "names an OAuth2 client of this issuer (the token could pass for its ID token)",
                )],
            ),
            IssueError::Unsupported => ApiError::NoRoute,
            IssueError::Failed(cause) => ApiError::Internal(format!("issuing a service-account token: {cause}")),
        })?;
        let expires = kfsec_types::UnixTime::from_secs(issued.expires_at).to_rfc3339();
        let mut out_spec = spec;
        out_spec.insert("audiences".into(), json!(issued.audiences));
        out_spec.insert(
            "expirationSeconds".into(),
            json!(issued.expires_at.saturating_sub(issued.issued_at)),
        );
        out_spec.entry("boundObjectRef").or_insert(Value::Null);
        if let Some(o) = obj.as_object_mut() {
            o.insert("spec".into(), Value::Object(out_spec));
            o.insert(
                "status".into(),
                json!({"token": issued.token, "expirationTimestamp": expires}),
            );
            if let Some(Value::Object(m)) = o.get_mut("metadata") {
                m.insert("namespace".into(), json!(ns));
                m.entry("creationTimestamp").or_insert(Value::Null);
            }
        }
        tracing::info!(target: "audit", user = %caller.username, namespace = ns, account = name, audiences = ?issued.audiences, "service-account token issued through TokenRequest");
        Ok(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Value) -> Result<Spec, ApiError> {
        parse_spec(v.as_object().unwrap())
    }

    fn message(e: &ApiError) -> String {
        e.to_status().message
    }

    #[test]
    fn defaults_and_bounds_are_kube_apiservers() {
        let s = spec(json!({})).unwrap();
        assert_eq!((s.audiences.len(), s.seconds), (0, 3600));
        let s = spec(json!({"audiences": ["a", "b"], "expirationSeconds": 600, "boundObjectRef": null})).unwrap();
        assert_eq!((s.audiences, s.seconds), (vec!["a".to_owned(), "b".to_owned()], 600));
        assert_eq!(
            spec(json!({"expirationSeconds": 4_294_967_296_i64})).unwrap().seconds,
            1 << 32
        );

        let e = spec(json!({"expirationSeconds": 60})).err().unwrap();
        assert_eq!(e.code(), 422);
        assert_eq!(
            message(&e),
            "TokenRequest.authentication.k8s.io \"\" is invalid: spec.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes"
        );
        for n in [-1_i64, 0, 599, i64::MIN] {
            assert_eq!(spec(json!({"expirationSeconds": n})).err().unwrap().code(), 422, "{n}");
        }
        let e = spec(json!({"expirationSeconds": 4_294_967_297_i64})).err().unwrap();
        assert!(
            message(&e).ends_with("Invalid value: 4294967297: may not specify a duration larger than 2^32 seconds")
        );
    }

    #[test]
    fn audiences_are_capped() {
        let many: Vec<String> = (0..=MAX_AUDIENCES).map(|i| format!("a{i}")).collect();
        let e = spec(json!({"audiences": many})).err().unwrap();
        assert_eq!(e.code(), 422);
        assert!(
            message(&e).ends_with("spec.audiences: Too many: 65: must have at most 64 items"),
            "{}",
            message(&e)
        );
        assert!(spec(json!({"audiences": many[..MAX_AUDIENCES]})).is_ok());
    }

    /// Every wrong JSON type a hostile client can send is a 400, never a default.
    #[test]
    fn wrong_types_are_refused() {
        for bad in [
            json!({"expirationSeconds": "3600"}),
            json!({"expirationSeconds": 3600.5}),
            json!({"expirationSeconds": 1e30}),
            json!({"expirationSeconds": u64::MAX}),
            json!({"expirationSeconds": true}),
            json!({"audiences": "kfsec"}),
            json!({"audiences": [1]}),
            json!({"audiences": [null]}),
            json!({"boundObjectRef": "Pod"}),
        ] {
            let e = spec(bad.clone()).err().unwrap();
            assert_eq!(e.code(), 400, "{bad}: {}", message(&e));
        }
    }

    #[test]
    fn bound_objects_pods_and_secrets_only() {
        let b = spec(json!({"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p", "uid": "u"}}))
            .unwrap()
            .bound;
        assert_eq!(b, Some((BoundKindRef::Pod, "p".to_owned(), "u".to_owned())));
        let b = spec(json!({"boundObjectRef": {"kind": "Secret", "apiVersion": "v1", "name": "s"}}))
            .unwrap()
            .bound;
        assert_eq!(b, Some((BoundKindRef::Secret, "s".to_owned(), String::new())));
        for (r, text) in [
            (
                json!({"kind": "Node", "apiVersion": "v1", "name": "n"}),
                "/v1, Kind=Node",
            ),
            (
                json!({"kind": "Secret", "apiVersion": "apps/v1"}),
                "apps/v1, Kind=Secret",
            ),
            (
                json!({"kind": "Deployment", "apiVersion": "apps/v1"}),
                "apps/v1, Kind=Deployment",
            ),
            (json!({"kind": "X", "apiVersion": "a/b/c"}), "/, Kind=X"),
            (json!({}), "/, Kind="),
        ] {
            let e = spec(json!({"boundObjectRef": r})).err().unwrap();
            assert_eq!(
                (e.code(), message(&e)),
                (400, format!("cannot bind token to object of type {text}"))
            );
        }
    }
}
