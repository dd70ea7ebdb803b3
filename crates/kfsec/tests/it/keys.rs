//! Signing-key rotation: the next key is published before it signs, retired keys stay
//! published until the tokens they signed have expired.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::harness::*;

async fn kids(raw: &reqwest::Client, issuer: &str) -> BTreeSet<String> {
    let jwks: serde_json::Value = raw
        .get(format!("{issuer}/keys"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn signing_keys_rotate_with_prepublication_and_retirement() {
    let k = Kfsec::start_with_clock("expiry:\n  signingKeys: 1h\n  idTokens: 30m\n").await;
    let clock = k.clock.clone().unwrap();
    let raw = http_client(&k.running.ca_pem);
    let iss = k.running.issuer.clone();
    let idp = k.running.idp.clone();

    let before = idp.keys().keys();
    let (a, b) = (before.signing.kid().to_owned(), before.next.kid.clone());
    assert_eq!(
        kids(&raw, &iss).await,
        BTreeSet::from([a.clone(), b.clone()]),
        "next key published before use"
    );
    let token = before.signing.sign(&test_claims(&k, &iss, "kfsec-cli", 7200)).unwrap();

    // not yet due: nothing changes
    assert!(!idp.keys().tick().await.unwrap());
    clock.advance(Duration::from_secs(3601));
    assert!(idp.keys().tick().await.unwrap(), "rotation due after signingKeys");
    let after = idp.keys().keys();
    assert_eq!(after.signing.kid(), b, "the pre-published key signs next");
    let published = kids(&raw, &iss).await;
    assert!(
        published.contains(&a),
        "retired key stays published while its tokens live"
    );
    assert!(published.contains(&after.next.kid));
    assert_eq!(published.len(), 3);
    let r = raw
        .get(format!("{}/app/x", k.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "tokens from the retired key still verify");

    // once every token it signed has expired (idTokens = 30m), the old key goes
    clock.advance(Duration::from_secs(31 * 60));
    idp.keys().tick().await.unwrap();
    assert!(!kids(&raw, &iss).await.contains(&a));
    let r = raw
        .get(format!("{}/app/x", k.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    k.running.shutdown().await;
}
