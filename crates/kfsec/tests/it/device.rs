//! `kfsec login`: the device flow from the real CLI, the browser leg driven here, and the
//! resulting kubeconfig's token used as a bearer token.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kfsec_login_uses_the_device_flow() {
    let k = Kfsec::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, &k.running.ca_pem).unwrap();
    let kubeconfig = dir.path().join("user.kubeconfig");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kfsec"))
        .args(["login", "--server", &k.base, "--ca-file"])
        .arg(&ca)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // "To log in, open <url> and confirm the code <code>"
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .unwrap()
        .to_owned();
    let code = first.rsplit(' ').next().unwrap().to_owned();
    assert!(url.contains("/dex/device?user_code="), "{first}");

    let mut b = k.client();
    let page = b.get(&url).await.text().await.unwrap();
    assert!(page.contains(&code));
    // a wrong code is refused
    assert_eq!(
        b.post_form("/dex/device/auth/verify_code", &[("user_code", "ZZZZ-ZZZZ")])
            .await
            .status(),
        400
    );
    let r = b
        .post_form("/dex/device/auth/verify_code", &[("user_code", &code)])
        .await;
    assert!(r.status().is_redirection());
    let (form, form_url) = b.follow(location(&r)).await;
    assert_eq!(form.status(), 200);
    let next = login_and_approve(&mut b, &form_url).await;
    assert!(next.starts_with("/dex/device/callback?"), "{next}");
    let done = b.get(&next).await;
    assert_eq!(done.status(), 200);
    // the callback is single-use
    assert_eq!(b.get(&next).await.status(), 400);

    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kubeconfig).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let token = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let raw = http_client(&k.running.ca_pem);
    let r = raw
        .get(format!("{}/app/whoami", k.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(seen["headers"]["kubeflow-userid"], USER);
    k.running.shutdown().await;
}
