//! Test support: IdP values built as the server builds them, several over one store standing
//! for replicas. Test-only; holds no secrets of its own (the user's hash is of a test password).

use std::sync::Arc;
use std::time::Duration;

use kfsec_store::Store;
use kfsec_types::ManualClock;

use crate::lockout::LockoutPolicy;
use crate::{Branding, Client, ClientAuth, Idp, IdpSettings, RefreshPolicy, User};

/// The static user.
pub(crate) const USER: &str = "alice@example.com";
/// The refresh reuse interval (Dex's default).
pub(crate) const REUSE: Duration = Duration::from_secs(3);

/// Settings with one static user and one public client, [`client`].
pub(crate) fn settings() -> IdpSettings {
    IdpSettings {
        issuer: "https://kf.example.com/dex".into(),
        id_token_ttl: Duration::from_secs(600),
        signing_key_rotation: Duration::from_secs(6 * 3600),
        auth_request_ttl: Duration::from_secs(600),
        refresh: RefreshPolicy {
            reuse_interval: REUSE,
            idle: Duration::from_secs(3600),
            absolute: Duration::from_secs(24 * 3600),
        },
        skip_approval: true,
        static_users: vec![User {
            email: USER.into(),
            username: "alice".into(),
            user_id: "1".into(),
            hash: "$2y$12$99qz3xSNm5CHLxYv7OXd4.sTbzXEjUxzy6oDsZF10Rm5hM.WhqXPa".into(),
            groups: vec![],
        }],
        static_clients: vec![client()],
        builtin_clients: vec![],
        lockout: LockoutPolicy::default(),
        bearer_audiences: vec![],
        connectors: vec![crate::connector::Connector::local()],
        always_show_login_screen: false,
        password_connector: None,
        branding: Branding::default(),
    }
}

/// The public client `rp`.
pub(crate) fn client() -> Client {
    Client {
        id: "rp".into(),
        name: "RP".into(),
        redirect_uris: vec!["https://rp.example/cb".into()],
        auth: ClientAuth::Public,
    }
}

/// An IdP over `store` (one replica).
pub(crate) async fn idp(settings: IdpSettings, store: Arc<dyn Store>, clock: Arc<ManualClock>) -> Arc<Idp> {
    Idp::new(
        settings,
        store,
        clock,
        Arc::new(kfsec_pki::OsRng),
        &mut prometheus_client::registry::Registry::default(),
        Arc::new(crate::serviceaccount::NoServiceAccounts),
    )
    .await
    .unwrap_or_else(|e| panic!("IdP: {e}"))
}
