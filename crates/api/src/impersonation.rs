//! User impersonation (`Impersonate-User`, `Impersonate-Group`, `Impersonate-Uid`,
//! `Impersonate-Extra-*`), as the Kubernetes API server's impersonation filter does it.
//!
//! Invariants: without impersonation headers the caller is the authenticated identity; with
//! them, every requested attribute (user or service account, each group, the uid, each extra
//! value) must be allowed for the *real* caller with verb `impersonate`, or the whole request is
//! refused with 403 before anything else runs. Groups/uid/extra without a user are a 400.

use axum::http::HeaderMap;
use kfsec_types::Identity;
use kfsec_types::identity::{UserInfo, parse_service_account_username};

use crate::ApiServer;
use crate::authorize::Attributes;
use crate::route::percent_decode;
use crate::status::ApiError;

const AUTHN: &str = "authentication.k8s.io";

fn values(headers: &HeaderMap, name: &str) -> Result<Vec<String>, ApiError> {
    headers
        .get_all(name)
        .iter()
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| ApiError::BadRequest(format!("invalid {name} header")))
        })
        .collect()
}

impl ApiServer {
    /// The user a request acts as: the authenticated identity, or whom it may impersonate.
    pub(crate) fn effective_user(&self, identity: &Identity, headers: &HeaderMap) -> Result<UserInfo, ApiError> {
        let real = UserInfo::from(identity);
        let users = values(headers, "impersonate-user")?;
        let groups = values(headers, "impersonate-group")?;
        let uids = values(headers, "impersonate-uid")?;
        let mut extra: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
        for (name, v) in headers {
            if let Some(key) = name.as_str().strip_prefix("impersonate-extra-") {
                let v = v
                    .to_str()
                    .map_err(|_| ApiError::BadRequest(format!("invalid {name} header")))?;
                extra
                    .entry(percent_decode(key, false).to_ascii_lowercase())
                    .or_default()
                    .push(v.to_owned());
            }
        }
        if users.is_empty() {
            if !groups.is_empty() || !uids.is_empty() || !extra.is_empty() {
                return Err(ApiError::BadRequest(format!(
                    "requested {:?} without impersonating a user",
                    groups.iter().chain(uids.iter()).collect::<Vec<_>>()
                )));
            }
            return Ok(real);
        }
        if users.len() > 1 || uids.len() > 1 {
            return Err(ApiError::BadRequest(
                "only one Impersonate-User and Impersonate-Uid may be given".into(),
            ));
        }
        let user = users.into_iter().next().unwrap_or_default();
        let check = |a: Attributes| -> Result<(), ApiError> {
            if self.authz.authorize(&a).is_allowed() {
                Ok(())
            } else {
                Err(ApiError::forbidden(&a))
            }
        };
        let rg = real.groups.clone();
        let who = real.username.as_str();
        match parse_service_account_username(&user) {
            Some((ns, name)) => {
                check(Attributes::resource(who, rg.clone(), "impersonate", "", "serviceaccounts", ns).with_name(name))?
            }
            None => check(Attributes::resource(who, rg.clone(), "impersonate", "", "users", "").with_name(&user))?,
        }
        for g in &groups {
            check(Attributes::resource(who, rg.clone(), "impersonate", "", "groups", "").with_name(g))?;
        }
        let uid = uids.into_iter().next().unwrap_or_default();
        if !uid.is_empty() {
            check(Attributes::resource(who, rg.clone(), "impersonate", AUTHN, "uids", "").with_name(&uid))?;
        }
        for (k, vs) in &extra {
            for v in vs {
                check(
                    Attributes::resource(who, rg.clone(), "impersonate", AUTHN, "userextras", "")
                        .with_subresource(k)
                        .with_name(v),
                )?;
            }
        }
        let mut out = UserInfo::authenticated(user, &groups);
        out.uid = uid;
        out.extra = extra;
        tracing::debug!(real = %real.username, as_user = %out.username, "impersonation");
        Ok(out)
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn decode_extra_keys() {
        assert_eq!(percent_decode("scopes%2Fa", false), "scopes/a");
        assert_eq!(percent_decode("plain", false), "plain");
        assert_eq!(percent_decode("bad%zz", false), "bad%zz");
        assert_eq!(percent_decode("end%2", false), "end%2");
    }
}
