//! The IdP's service-account lookup ([`kfsec_idp::serviceaccount::ServiceAccountLookup`])
//! answered from the Kubernetes-style API's objects: the IdP does not depend on the API, and
//! only the API knows how its objects are stored.
//!
//! Invariant: an account that cannot be read (store failure, undecodable record) is an error,
//! which refuses the token, never an answer.

use kfsec_api::{ApiServer, Objects};
use kfsec_idp::serviceaccount::{BoundKind, LookupError, ServiceAccountLookup};

/// Service accounts as stored by the API.
pub(crate) struct ServiceAccounts(pub(crate) Objects);

#[async_trait::async_trait]
impl ServiceAccountLookup for ServiceAccounts {
    async fn uid(&self, namespace: &str, name: &str) -> Result<Option<String>, LookupError> {
        let res = ApiServer::resource("", "v1", "serviceaccounts")
            .ok_or_else(|| LookupError("serviceaccounts are not served".into()))?;
        let sa = self
            .0
            .get(res, namespace, name)
            .await
            .map_err(|e| LookupError(Box::new(e)))?;
        Ok(sa.map(|sa| sa["metadata"]["uid"].as_str().unwrap_or_default().to_owned()))
    }

    async fn object_uid(&self, kind: BoundKind, namespace: &str, name: &str) -> Result<Option<String>, LookupError> {
        let plural = match kind {
            BoundKind::Pod => "pods",
            BoundKind::Secret => "secrets",
        };
        let res = ApiServer::resource("", "v1", plural)
            .ok_or_else(|| LookupError(format!("{plural} are not served").into()))?;
        let o = self
            .0
            .get(res, namespace, name)
            .await
            .map_err(|e| LookupError(Box::new(e)))?;
        Ok(o.map(|o| o["metadata"]["uid"].as_str().unwrap_or_default().to_owned()))
    }
}
