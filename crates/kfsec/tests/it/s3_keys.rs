//! Per-workspace S3 keys (issue 16, point 1), driven with kubectl and the kfsec CLI: a Profile
//! created through the API gets Kubeflow's Secret `mlpipeline-minio-artifact` with a key the
//! gateway's `KeyLookup` finds, sealed at rest under the data directory's auto-created `kek`; a
//! reconcile that runs again keeps the key (and writes back a deleted Secret); `kfsec s3 rotate`
//! updates the Secret, both keys work during the overlap and only the new one after; deleting the
//! Profile revokes the key within seconds. Without `s3:`, no key is issued.
#![allow(clippy::disallowed_methods)] // times the revocation against real time

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use kfsec_s3::keys::KeyLookup;
use kfsec_types::Clock;

use crate::harness::*;
use crate::rbac::Kubectl;
use crate::secrets_at_rest::stop;

const BIN: &str = env!("CARGO_BIN_EXE_kfsec");

/// An `s3:` section (its upstream never contacted here) with credential files in `dir`.
fn s3_yaml(dir: &std::path::Path) -> String {
    let (ak, sk) = (dir.join("upstream-ak"), dir.join("upstream-sk"));
    std::fs::write(&ak, "upstream-access-key\n").unwrap();
    std::fs::write(&sk, "upstream-secret-key-0123456789\n").unwrap();
    format!(
        "s3:\n  addr: 127.0.0.1:0\n  upstream:\n    endpoint: http://127.0.0.1:9\n    accessKeyFile: {}\n    secretKeyFile: {}\n",
        ak.display(),
        sk.display()
    )
}

fn profile_yaml(name: &str) -> String {
    format!(
        "apiVersion: kubeflow.org/v1\nkind: Profile\nmetadata:\n  name: {name}\nspec:\n  owner:\n    kind: User\n    name: {USER}\n"
    )
}

/// The namespace's artifact Secret as (accesskey, secretkey), if it is there.
async fn artifact_secret(kc: &Kubectl, ns: &str) -> Option<(String, String)> {
    let (code, out, _) = kc
        .run(
            &[
                "get",
                "secret",
                "mlpipeline-minio-artifact",
                "-n",
                ns,
                "-o",
                "jsonpath={.data.accesskey} {.data.secretkey}",
            ],
            None,
        )
        .await;
    let parts: Vec<&str> = out.split_whitespace().collect();
    if code != 0 || parts.len() != 2 {
        return None;
    }
    let decode = |s: &str| String::from_utf8(B64.decode(s).unwrap()).unwrap();
    Some((decode(parts[0]), decode(parts[1])))
}

async fn wait_for_secret(kc: &Kubectl, ns: &str, not: Option<&str>) -> (String, String) {
    for _ in 0..100 {
        if let Some(s) = artifact_secret(kc, ns).await
            && Some(s.0.as_str()) != not
        {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no (new) mlpipeline-minio-artifact Secret in {ns}");
}

fn cli(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_gets_its_own_key_which_rotates_and_dies_with_the_profile() {
    let files = tempfile::tempdir().unwrap();
    let k = Kfsec::start(&s3_yaml(files.path())).await;
    let dir = k._dir.path().to_path_buf();
    let kc = Kubectl::new(&dir);
    let keys = k.running.s3_keys.clone();
    let now = || kfsec_types::SystemClock.now();
    let (code, _, err) = kc
        .run(
            &["apply", "-f", "-"],
            Some(&format!("{}---\n{}", profile_yaml("team-a"), profile_yaml("team-b"))),
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let (ak, sk) = wait_for_secret(&kc, "team-a", None).await;
    let (bk, _) = wait_for_secret(&kc, "team-b", None).await;
    assert_eq!(ak.len(), 20, "{ak}");
    assert!(ak.starts_with("KF") && ak.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()));
    assert!(sk.len() >= 30 && sk.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_ne!(ak, bk, "each workspace its own key");
    let found = keys
        .lookup(&ak, now())
        .await
        .unwrap()
        .expect("the gateway finds the key");
    assert_eq!(found.namespace, "team-a");
    assert_eq!(found.secret.as_str(), sk);
    assert_eq!(keys.lookup(&bk, now()).await.unwrap().unwrap().namespace, "team-b");
    assert!(dir.join("kek").exists(), "the data directory's key was created");

    // A reconcile that runs again keeps the key; a deleted Secret is written back with it.
    let (code, _, err) = kc
        .run(&["delete", "secret", "mlpipeline-minio-artifact", "-n", "team-a"], None)
        .await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = kc.run(&["label", "profile", "team-a", "touched=yes"], None).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(wait_for_secret(&kc, "team-a", None).await, (ak.clone(), sk.clone()));

    // Rotation: the Secret gets the new key; the fingerprint is shown, the secret only when asked.
    let (ok, out, err) = cli(&dir, &["s3", "rotate", "-n", "team-a", "--overlap", "1h"]);
    assert!(ok, "{err}");
    let (new_ak, new_sk) = wait_for_secret(&kc, "team-a", Some(&ak)).await;
    assert!(out.contains(&format!("access key id {new_ak}")), "{out}");
    assert!(out.contains("fingerprint sha256:"), "{out}");
    assert!(
        !out.contains(&new_sk) && !err.contains(&new_sk),
        "no secret printed unasked"
    );
    assert!(
        keys.lookup(&ak, now()).await.unwrap().is_some(),
        "the old key in the overlap"
    );
    assert!(keys.lookup(&new_ak, now()).await.unwrap().is_some());
    let (ok, out, err) = cli(&dir, &["s3", "keys", "-n", "team-a"]);
    assert!(ok, "{err}");
    assert!(out.contains(&ak) && out.contains(&new_ak), "{out}");
    assert!(!out.contains(&sk) && !out.contains(&new_sk), "{out}");
    // No overlap: the previous key ends at once; only the newest works.
    let (ok, out, err) = cli(
        &dir,
        &["s3", "rotate", "-n", "team-a", "--overlap", "0s", "--show-secret"],
    );
    assert!(ok, "{err}");
    let (newest_ak, newest_sk) = wait_for_secret(&kc, "team-a", Some(&new_ak)).await;
    assert!(out.contains(&format!("secret {newest_sk}")), "asked for: {out}");
    assert!(
        eventually(|| {
            let keys = keys.clone();
            let (ak, new_ak) = (ak.clone(), new_ak.clone());
            async move {
                keys.lookup(&ak, now()).await.unwrap().is_none() && keys.lookup(&new_ak, now()).await.unwrap().is_none()
            }
        })
        .await,
        "rotated-out keys end"
    );
    assert!(keys.lookup(&newest_ak, now()).await.unwrap().is_some());
    let (ok, _, err) = cli(&dir, &["s3", "rotate", "-n", "kubeflow"]);
    assert!(!ok && err.contains("no S3 key"), "{err}");

    // Deleting the Profile revokes its key within seconds; the other workspace keeps its own.
    let (code, _, err) = kc.run(&["delete", "profile", "team-a", "--wait=false"], None).await;
    assert_eq!(code, 0, "{err}");
    let t = std::time::Instant::now();
    assert!(
        eventually(|| {
            let keys = keys.clone();
            let id = newest_ak.clone();
            async move { keys.lookup(&id, now()).await.unwrap().is_none() }
        })
        .await,
        "the deleted profile's key still works"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(keys.lookup(&bk, now()).await.unwrap().is_some());

    // Issue, rotation and revocation are audit Events naming ids and fingerprints, never secrets.
    // The revocation's Event is recorded once the store has dropped the key, so a lookup can see
    // the key gone a moment before the Event is in the log: wait for it.
    let revoked = |events: &[serde_json::Value]| {
        events
            .iter()
            .any(|e| e["objectRef"]["resource"] == "s3keys" && e["verb"] == "revoke")
    };
    assert!(
        eventually(|| {
            let k = &k;
            async move { revoked(&crate::audit_events::audit_log(k).await.0) }
        })
        .await,
        "the revocation's audit Event"
    );
    let (events, text) = crate::audit_events::audit_log(&k).await;
    let key_events: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["objectRef"]["resource"] == "s3keys")
        .map(|e| {
            assert_eq!(e["objectRef"]["apiGroup"], "identity.kfsec.io", "{e}");
            (
                e["verb"].as_str().unwrap().to_owned(),
                e["annotations"]["kfsec.io/namespace"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (verb, ns) in [
        ("issue", "team-a"),
        ("issue", "team-b"),
        ("rotate", "team-a"),
        ("revoke", "team-a"),
    ] {
        assert!(
            key_events.contains(&(verb.to_owned(), ns.to_owned())),
            "{verb} {ns} in {key_events:?}"
        );
    }
    assert!(
        events
            .iter()
            .any(|e| e["objectRef"]["name"] == newest_ak.as_str() && e["verb"] == "rotate")
    );
    for secret in [&sk, &new_sk, &newest_sk] {
        assert!(!text.contains(secret.as_str()), "a secret in the audit log");
    }

    // At rest: no secret in the redb file.
    let dir = k.stop().await;
    let file = std::fs::read(dir.path().join("kfsec.redb")).unwrap();
    assert!(
        contains(&file, b"/kfsec/s3/ns/team-b"),
        "the scan reads the store's bytes"
    );
    for secret in [&sk, &new_sk, &newest_sk] {
        assert!(!contains(&file, secret.as_bytes()), "an S3 secret in the clear");
        assert!(
            !contains(&file, B64.encode(secret).as_bytes()),
            "a Secret's data in the clear"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_s3_gateway_no_key_is_issued() {
    let k = Kfsec::start("").await;
    let kc = Kubectl::new(k._dir.path());
    let (code, _, err) = kc.run(&["apply", "-f", "-"], Some(&profile_yaml("team-c"))).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        eventually(|| async {
            kc.run(&["get", "serviceaccount", "default-editor", "-n", "team-c"], None)
                .await
                .0
                == 0
        })
        .await
    );
    assert!(artifact_secret(&kc, "team-c").await.is_none());
    assert!(k.running.s3_keys.list("team-c").await.unwrap().is_empty());
    k.running.shutdown().await;
}

/// The README's path: a first start without `secretsEncryption` seals under `<data-dir>/kek`;
/// a start with `secretsEncryption` re-seals everything under its key file, after which the
/// data directory's key can go; a start with no key at all is then refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_key_seals_by_default_and_gives_way_to_secrets_encryption() {
    let k = Kfsec::start("").await;
    let kek = k._dir.path().join("kek");
    let data_dir_key = kfsec_store::sealed::SealKey::load(&kek).expect("a private key file");
    let admin_password = k.running.bootstrap_password.clone().unwrap();
    let signing = k.running.store.get("/kfsec/idp/keys").await.unwrap().unwrap();
    let dir = stop(k).await;
    let file = std::fs::read(dir.path().join("kfsec.redb")).unwrap();
    assert!(
        !contains(&file, &signing.value),
        "the signing keys are sealed without secretsEncryption"
    );

    let keys = tempfile::tempdir().unwrap();
    let configured = keys.path().join("kek.b64");
    let key = kfsec_store::sealed::SealKey::generate(&kfsec_pki::OsRng);
    key.write_new(&configured).unwrap();
    let sealing = format!("secretsEncryption:\n  keyFile: {}\n", configured.display());
    let k = Kfsec::start_in(dir, &sealing).await;
    let dir = stop(k).await;
    std::fs::remove_file(dir.path().join("kek")).unwrap();
    let k = Kfsec::start_in(dir, &sealing).await;
    let mut admin = k.client();
    let (r, _) = admin
        .login("/app/", kfsec_server::BOOTSTRAP_ADMIN, &admin_password)
        .await;
    assert_eq!(
        r.status(),
        200,
        "the re-sealed password hash opens with the configured key alone"
    );
    let dir = stop(k).await;
    let cfg = kfsec_server::config::validate(
        kfsec_server::config::parse(std::path::Path::new("t.yaml"), "apiVersion: kfsec/v1\n").unwrap(),
        &kfsec_server::config::Overrides {
            data_dir: Some(dir.path().to_path_buf()),
            https_addr: Some("127.0.0.1:0".into()),
            admin_addr: Some("127.0.0.1:0".into()),
            webhook_addr: Some("127.0.0.1:0".into()),
        },
        &NoVars,
    )
    .unwrap();
    let err = match kfsec_server::start_with(
        cfg,
        std::sync::Arc::new(kfsec_types::SystemClock),
        std::sync::Arc::new(kfsec_pki::OsRng),
    )
    .await
    {
        Ok(_) => panic!("started without the key"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&key.id().to_string()), "{err}");
    assert!(
        !dir.path().join("kek").exists(),
        "no new data directory key over a sealed store"
    );
    assert_ne!(data_dir_key.id(), key.id());
}

struct NoVars;
impl kfsec_server::config::Env for NoVars {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}
