//! The dashboard's "Download kubeconfig" ([`kfsec_profiles::pages::KubeconfigSource`]): a
//! kubeconfig for the signed-in user, written like `kfsec login`'s (`types::kubeconfig`) — the
//! same server URL (the front door's public URL, as in the admin kubeconfig) and, while the front
//! door's certificate comes from kfsec's CA, that CA's current trust bundle (`kfsec login`'s
//! `pki/ca-bundle.crt`); none with a configured (publicly trusted) certificate.
//!
//! Invariants: the token is an ID token of the `kfsec-cli` client (what `kfsec login` gets),
//! minted by the IdP's one path for session tokens (`Idp::id_token_for_session`): the
//! session's user and groups, never more, revoked with the session, expiring at the latest with
//! it; the token is never logged.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use kfsec_idp::{Idp, IdpError, SessionLogin};
use kfsec_profiles::pages::KubeconfigSource;
use kfsec_types::Identity;
use kfsec_types::kubeconfig::BearerKubeconfig;

use crate::trust::Trust;

/// Makes users' kubeconfigs.
pub(crate) struct Kubeconfigs {
    pub(crate) idp: Arc<Idp>,
    /// The front door's URL, no trailing slash.
    pub(crate) server: String,
    /// The live PKI when the front door's certificate is kfsec's own (none: a configured one).
    pub(crate) trust: Option<Arc<Trust>>,
}

#[async_trait::async_trait]
impl KubeconfigSource for Kubeconfigs {
    fn lifetime(&self) -> Duration {
        self.idp.settings().id_token_ttl
    }

    async fn kubeconfig(&self, id: &Identity, login: &SessionLogin, ns: Option<&str>) -> Result<String, IdpError> {
        let token = self
            .idp
            .id_token_for_session(kfsec_gateway::CLI_CLIENT_ID, id, login)
            .await?;
        let ca = self
            .trust
            .as_ref()
            .map(|t| base64::engine::general_purpose::STANDARD.encode(t.cas().trust_bundle_pem()));
        Ok(BearerKubeconfig {
            server: &self.server,
            ca_data: ca.as_deref(),
            namespace: ns,
            token: &token.token,
        }
        .render())
    }
}
