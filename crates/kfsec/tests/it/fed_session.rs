//! Gatekeeper sessions re-checked at the IdP (`session.revalidateFederated`): the session keeps
//! the login's refresh token server-side and redeems it when a request arrives after the
//! interval; a refusal ends the session before that request is served.
//!
//! The federated case runs against a second kfsec as the upstream OP (`fed_oidc`'s
//! federation: an `oidc` connector `corp`). The local-path tests re-check local users' sessions
//! too (the test-only `revalidate_all_sessions`), so the gatekeeper, the IdP's refresh grant and
//! the session store run without an upstream; "removed" there is a managed user deleted from
//! the store without ending their sessions.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kfsec_server::admin::{AdminRequest, AdminResponse};
use kfsec_server::config::{Env, Overrides, parse, validate};
use kfsec_types::{Clock, ManualClock, SystemClock};

use crate::fed_oidc::{FED_USER, federation_with};
use crate::harness::*;

struct NoEnv;
impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

const CAROL: &str = "carol@example.org";
const CAROL_PASSWORD: &str = "carol's long passphrase";

/// kfsec with a route `/app/` to an echo upstream, a manual clock, sessions re-checked every
/// minute — every session, local ones included.
async fn start() -> Kfsec {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let upstream = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "apiVersion: kfsec/v1\nsession:\n  revalidateFederated: 1m\nroutes:\n- prefix: /app/\n  upstream: http://{upstream}\n"
    );
    let o = Overrides {
        data_dir: Some(dir.path().to_path_buf()),
        https_addr: Some("127.0.0.1:0".into()),
        admin_addr: Some("127.0.0.1:0".into()),
        webhook_addr: Some("127.0.0.1:0".into()),
    };
    let mut cfg = validate(parse(Path::new("t.yaml"), &yaml).unwrap(), &o, &NoEnv).unwrap();
    cfg.federation.revalidate_all_sessions = true;
    let clock = ManualClock::new(SystemClock.now());
    let running = kfsec_server::start_with(cfg, clock.clone(), Arc::new(kfsec_pki::OsRng))
        .await
        .unwrap();
    let base = format!("https://localhost:{}", running.https_addr.port());
    let k = Kfsec {
        running,
        base,
        _dir: dir,
        upstream,
        clock: Some(clock),
    };
    k.running
        .idp
        .users()
        .add(
            &kfsec_pki::OsRng,
            CAROL,
            Some("carol".into()),
            vec!["team-c".into()],
            CAROL_PASSWORD,
        )
        .await
        .unwrap();
    k
}

/// The user the echo upstream was told about, or the redirect target when not signed in.
async fn who(b: &mut Browser, path: &str) -> Result<String, String> {
    let r = b.get(path).await;
    if r.status().is_redirection() {
        return Err(location(&r).to_owned());
    }
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    Ok(v["headers"]["kubeflow-userid"].as_str().unwrap_or_default().to_owned())
}

async fn session_records(k: &Kfsec) -> usize {
    kfsec_store::list_all(k.running.store.as_ref(), "/kfsec/sessions/")
        .await
        .unwrap()
        .items
        .len()
}

/// A user removed at the IdP keeps their session until the next re-check, which ends it: the
/// request that finds it due goes to login, and the session record is gone. A user still there
/// passes every re-check (their refresh token rotating each time).
#[tokio::test]
async fn a_user_removed_at_the_idp_loses_the_session_at_the_next_recheck() {
    let k = start().await;
    let clock = k.clock.clone().unwrap();
    let mut carol = k.client();
    let (r, _) = carol.login("/app/x", CAROL, CAROL_PASSWORD).await;
    assert_eq!(r.status(), 200);
    assert_eq!(who(&mut carol, "/app/x").await.unwrap(), CAROL);
    // The refresh token stays server-side: the cookie is the session id and its MAC only.
    let cookie = carol.cookies.get("authservice_session").unwrap().clone();
    assert_eq!(cookie.split('.').count(), 2, "{cookie}");

    // Re-checked and still valid, twice (the second time with the rotated token).
    for _ in 0..2 {
        clock.advance(Duration::from_secs(61));
        assert_eq!(who(&mut carol, "/app/x").await.unwrap(), CAROL);
    }

    // Removed at the IdP (the user record only: nothing ends the sessions directly).
    k.running.idp.users().delete(CAROL).await.unwrap();
    clock.advance(Duration::from_secs(30));
    assert_eq!(
        who(&mut carol, "/app/x").await.unwrap(),
        CAROL,
        "not due yet: the session goes on until its next re-check"
    );
    clock.advance(Duration::from_secs(31));
    let to = who(&mut carol, "/app/x").await.unwrap_err();
    assert!(to.starts_with("/dex/auth?"), "a browser goes back to login: {to}");
    assert_eq!(session_records(&k).await, 0);
    // And stays out (the cookie names a session that no longer exists).
    assert!(who(&mut carol, "/app/x").await.is_err());
}

/// Revalidation off (`0s`): a removed user keeps the session until it expires.
#[tokio::test]
async fn with_revalidation_off_nothing_is_rechecked() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let k = Kfsec::start_with_clock("session:\n  revalidateFederated: 0s\n").await;
    let clock = k.clock.clone().unwrap();
    k.running
        .idp
        .users()
        .add(&kfsec_pki::OsRng, CAROL, None, vec![], CAROL_PASSWORD)
        .await
        .unwrap();
    let mut carol = k.client();
    // No refresh token is asked for: nothing would use it.
    let to = who(&mut carol, "/app/x").await.unwrap_err();
    assert_eq!(
        query_param(&to, "scope").as_deref(),
        Some("openid profile email groups")
    );
    let (r, _) = carol.login("/app/x", CAROL, CAROL_PASSWORD).await;
    assert_eq!(r.status(), 200);
    k.running.idp.users().delete(CAROL).await.unwrap();
    clock.advance(Duration::from_secs(3600));
    assert_eq!(who(&mut carol, "/app/x").await.unwrap(), CAROL);
}

/// A user signed in through an upstream identity provider (browser → chooser → `corp` → the
/// upstream kfsec's form → /dex/callback → the gatekeeper) is re-checked there every 15 minutes
/// (the default): while the user exists the session goes on; once deleted upstream the session
/// lasts only until its next re-check, which ends it and sends the browser to login.
#[tokio::test]
async fn a_federated_user_deleted_upstream_loses_the_session_at_the_next_recheck() {
    let f = federation_with(true).await;
    let clock = f.down.clock.clone().unwrap();
    let (mut down, mut up) = (f.down.client(), f.up.client());
    let (_, visited) = f.walk(&mut down, &mut up, "/app/x").await;
    let chooser = visited.last().unwrap().clone();
    let (last, visited) = f
        .walk(&mut down, &mut up, &format!("{chooser}&connector_id=corp"))
        .await;
    assert_eq!(last.status(), 200, "{visited:#?}");
    assert_eq!(who(&mut down, "/app/x").await.unwrap(), FED_USER);

    // Due and still there upstream: re-checked (the upstream's refresh grant) and kept.
    clock.advance(Duration::from_secs(15 * 60));
    assert_eq!(who(&mut down, "/app/x").await.unwrap(), FED_USER);

    let del = AdminRequest::UserDelete { email: FED_USER.into() };
    let deleted = kfsec_server::admin::call(f.up._dir.path(), &del)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(deleted, AdminResponse::Ok));
    clock.advance(Duration::from_secs(14 * 60));
    assert_eq!(
        who(&mut down, "/app/x").await.unwrap(),
        FED_USER,
        "not due yet: the session goes on until its next re-check"
    );
    clock.advance(Duration::from_secs(60));
    let to = who(&mut down, "/app/x").await.unwrap_err();
    assert!(to.starts_with("/dex/auth?"), "a browser goes back to login: {to}");
    assert_eq!(session_records(&f.down).await, 0);
    f.down.running.shutdown().await;
    f.up.running.shutdown().await;
}
