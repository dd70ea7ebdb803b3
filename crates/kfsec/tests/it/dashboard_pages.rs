//! kfsec's own dashboard pages (issue 13 point 2) through the front door with real sessions:
//! the owner sees the workspace as owner and adds a viewer through the form, the viewer sees it
//! as viewer with no controls and a forged POST changes nothing, removal shows on the next
//! load, forms need the session's token and a same-site Origin, outsiders cannot tell a hidden
//! workspace from a missing one, registration creates a workspace, cluster admins list them
//! all, hostile names come back escaped, and "Download kubeconfig" gives real kubectl the user.

use crate::dashboard_api::{ADMIN, OUTSIDER, PW, VIEWER, session, setup};
use crate::harness::*;
use crate::rbac::Kubectl;

const PAGE: &str = "/workspaces/user1/contributors";

const CONFIG: &str = "registrationFlow: true\n";

async fn page(b: &mut Browser, path: &str) -> (u16, String) {
    let r = b.get(path).await;
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The CSRF token of the first form on `html`.
fn token(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no token: {html}"));
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// POSTs a form with extra headers; returns the status, the Location and the body.
async fn post(b: &mut Browser, path: &str, form: &[(&str, &str)], headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut req = b.http.post(b.url(path)).form(form);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = b.send(req).await;
    let status = r.status().as_u16();
    let loc = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, loc, r.text().await.unwrap())
}

fn row(ns: &str, role: &str) -> String {
    format!("{ns}</a></td><td class=\"role\">{role}</td>")
}

fn contributor(user: &str, role: &str) -> String {
    format!("<td class=\"user\">{user}</td><td class=\"role\">{role}</td>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspaces_and_contributors_in_the_browser() {
    let (k, _kc) = setup(CONFIG).await;
    let mut owner = session(&k, USER, PASSWORD).await;
    let mut viewer = session(&k, VIEWER, PW).await;
    let mut outsider = session(&k, OUTSIDER, PW).await;
    let mut admin = session(&k, ADMIN, PW).await;

    // Home: the workspace as owner, the selector, the configured links with {ns}, a logout link.
    let (s, home) = page(&mut owner, "/").await;
    assert_eq!(s, 200, "{home}");
    assert!(home.contains(&row("user1", "owner")), "{home}");
    assert!(
        home.contains("<option value=\"user1\" selected>user1</option>"),
        "{home}"
    );
    assert!(home.contains("<label for=\"ns\">"), "{home}");
    assert!(home.contains("href=\"/pipeline/#/runs\""), "{home}");
    assert!(home.contains("href=\"/oauth2/sign_out\""), "{home}");
    assert!(home.contains("href=\"/workspaces/user1/contributors\""), "{home}");
    assert!(!home.contains("<script"), "{home}");
    // The pages' strict policy: no script at all, forms to this origin only, no framing.
    let r = owner.get(PAGE).await;
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(
        csp.starts_with("default-src 'none';") && !csp.contains("script-src"),
        "{csp}"
    );
    assert!(
        csp.contains("form-action 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(r.headers()["cache-control"], "no-store");
    // ?ns= of a workspace not the caller's is not honoured (and not echoed).
    let (_, other) = page(&mut owner, "/?ns=kube-system").await;
    assert!(!other.contains("kube-system"), "{other}");

    // The contributors page: controls for the owner, a token bound to the session.
    let (s, html) = page(&mut owner, PAGE).await;
    assert_eq!(s, 200, "{html}");
    assert!(html.contains("id=\"add-contributor\""), "{html}");
    assert!(html.contains("<label for=\"contributor\">") && html.contains("<label for=\"role\">"));
    let t = token(&html);
    let add = |t: &str| {
        vec![
            ("csrf", t.to_owned()),
            ("action", "add".to_owned()),
            ("contributor", VIEWER.to_owned()),
            ("role", "view".to_owned()),
        ]
    };
    // Forged posts: no token, a wrong token, another session's token, a cross-site Origin.
    let viewer_token = token(&page(&mut viewer, "/register").await.1);
    for (form, headers) in [
        (add("")[1..].to_vec(), vec![]),
        (add("AAAA"), vec![]),
        (add(&viewer_token), vec![]),
        (add(&t), vec![("origin", "https://evil.example")]),
        (add(&t), vec![("sec-fetch-site", "cross-site")]),
    ] {
        let form: Vec<(&str, &str)> = form.iter().map(|(a, b)| (*a, b.as_str())).collect();
        let (s, _, body) = post(&mut owner, PAGE, &form, &headers).await;
        assert_eq!(s, 403, "{form:?} {headers:?}: {body}");
        assert!(
            !page(&mut owner, PAGE).await.1.contains(VIEWER),
            "{form:?} changed something"
        );
    }

    // The owner adds the viewer: 303 back to the page, which lists them as viewer.
    let (s, loc, body) = post(
        &mut owner,
        PAGE,
        &[
            ("csrf", &t),
            ("action", "add"),
            ("contributor", VIEWER),
            ("role", "view"),
        ],
        &[("origin", &k.base)],
    )
    .await;
    assert_eq!((s, loc.as_str()), (303, PAGE), "{body}");
    let (_, html) = page(&mut owner, PAGE).await;
    assert!(html.contains(&contributor(VIEWER, "viewer")), "{html}");
    assert!(html.contains(&format!("aria-label=\"Remove {VIEWER}\"")), "{html}");

    // The viewer: the workspace as viewer, no controls, and even a valid token of theirs changes
    // nothing (KFAM's owner check).
    let (_, home) = page(&mut viewer, "/").await;
    assert!(home.contains(&row("user1", "viewer")), "{home}");
    let (s, html) = page(&mut viewer, PAGE).await;
    assert_eq!(s, 200, "{html}");
    assert!(html.contains(&contributor(VIEWER, "viewer")), "{html}");
    assert!(!html.contains("<form") && !html.contains("name=\"csrf\""), "{html}");
    let (s, _, body) = post(
        &mut viewer,
        PAGE,
        &[
            ("csrf", &viewer_token),
            ("action", "add"),
            ("contributor", OUTSIDER),
            ("role", "edit"),
        ],
        &[],
    )
    .await;
    assert_eq!(s, 403, "{body}");
    let (s, _, _) = post(&mut viewer, PAGE, &[("action", "remove"), ("contributor", VIEWER)], &[]).await;
    assert_eq!(s, 403);
    assert!(!page(&mut owner, PAGE).await.1.contains(OUTSIDER));

    // An outsider cannot tell a hidden workspace from a missing one.
    let (s1, hidden) = page(&mut outsider, PAGE).await;
    let (s2, missing) = page(&mut outsider, "/workspaces/no-such-ws/contributors").await;
    assert_eq!((s1, s2), (404, 404));
    assert_eq!(hidden, missing);
    let out_token = token(&page(&mut outsider, "/register").await.1);
    let (s, _, body) = post(
        &mut outsider,
        PAGE,
        &[
            ("csrf", &out_token),
            ("action", "add"),
            ("contributor", OUTSIDER),
            ("role", "edit"),
        ],
        &[],
    )
    .await;
    assert_eq!((s, body.as_str()), (404, missing.as_str()));

    // Hostile input is escaped: a contributor name with markup, a hostile ?ns=.
    let hostile = "<script>alert(1)</script>@evil.org";
    let (s, _, body) = post(
        &mut owner,
        PAGE,
        &[
            ("csrf", &t),
            ("action", "add"),
            ("contributor", hostile),
            ("role", "edit"),
        ],
        &[],
    )
    .await;
    assert!(!body.contains("<script"), "{s}: {body}");
    let (_, html) = page(&mut owner, PAGE).await;
    assert!(!html.contains("<script"), "{html}");
    let (_, home) = page(&mut owner, "/?ns=%3Cscript%3E").await;
    assert!(!home.contains("<script"), "{home}");

    // The owner removes the viewer; the viewer's next page load no longer shows the workspace.
    let (s, loc, _) = post(
        &mut owner,
        PAGE,
        &[("csrf", &t), ("action", "remove"), ("contributor", VIEWER)],
        &[],
    )
    .await;
    assert_eq!((s, loc.as_str()), (303, PAGE));
    let (_, home) = page(&mut viewer, "/").await;
    assert!(!home.contains("user1"), "{home}");
    assert_eq!(page(&mut viewer, PAGE).await.0, 404);

    // Cluster admins: every workspace with owner and contributor count; others are refused.
    let (s, html) = page(&mut admin, "/admin/profiles").await;
    assert_eq!(s, 200, "{html}");
    assert!(
        html.contains(&format!("user1</a></td><td class=\"owner\">{USER}</td>")),
        "{html}"
    );
    assert!(page(&mut admin, "/").await.1.contains("href=\"/admin/profiles\""));
    let (s, html) = page(&mut admin, PAGE).await;
    assert!(s == 200 && html.contains("id=\"add-contributor\""), "{html}");
    assert_eq!(page(&mut outsider, "/admin/profiles").await.0, 403);

    // Registration: the outsider owns nothing, so home offers it; the form creates the workspace.
    let (_, home) = page(&mut outsider, "/").await;
    assert!(home.contains("href=\"/register\""), "{home}");
    let (s, html) = page(&mut outsider, "/register").await;
    assert_eq!(s, 200);
    assert!(html.contains("value=\"outsider\""), "{html}");
    let (s, _, _) = post(&mut outsider, "/register", &[("namespace", "outsider-ws")], &[]).await;
    assert_eq!(s, 403, "no token");
    let (s, loc, body) = post(
        &mut outsider,
        "/register",
        &[("csrf", &out_token), ("namespace", "outsider-ws")],
        &[],
    )
    .await;
    assert_eq!((s, loc.as_str()), (303, "/?ns=outsider-ws"), "{body}");
    let (_, home) = page(&mut outsider, "/?ns=outsider-ws").await;
    assert!(home.contains(&row("outsider-ws", "owner")), "{home}");
    assert!(!home.contains("href=\"/register\""), "{home}");
    assert_eq!(location(&outsider.get("/register").await), "/");
    // A bad name is refused with the dashboard's message, escaped.
    let (s, _, body) = post(
        &mut outsider,
        "/register",
        &[("csrf", &out_token), ("namespace", "<b>Bad</b>")],
        &[],
    )
    .await;
    assert!(s == 400 || s == 403, "{s}: {body}");
    assert!(!body.contains("<b>Bad"), "{body}");
}

/// "Download kubeconfig" (issue 13 point 2): the home page's form gives the signed-in user a
/// kubeconfig that real kubectl uses as them — `kfsec login`'s server URL and CA, the selected
/// workspace as namespace (only one of theirs), an ID token of `kfsec-cli` that ends with the
/// session at the latest and is revoked by "Log out everywhere"; forged posts get 403 and no
/// token, a caller without a session gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_kubeconfig_gives_kubectl_the_users_identity() {
    let (k, _kc) = setup(&format!("{CONFIG}session:\n  ttl: 10m\n")).await;
    let mut owner = session(&k, USER, PASSWORD).await;
    let (s, home) = page(&mut owner, "/?ns=user1").await;
    assert_eq!(s, 200, "{home}");
    assert!(
        home.contains("<form method=\"post\" action=\"/kubeconfig\" id=\"kubeconfig\">"),
        "{home}"
    );
    assert!(
        home.contains("<button type=\"submit\" id=\"download-kubeconfig\" aria-describedby=\"kubeconfig-validity\">Download kubeconfig</button>"),
        "{home}"
    );
    assert!(
        home.contains("<input type=\"hidden\" name=\"ns\" value=\"user1\">"),
        "{home}"
    );
    assert!(home.contains("valid for 24 hours, never past this session"), "{home}");
    let t = token(&home);

    // Forged posts: no token, a wrong one, a cross-site Origin or fetch: 403, an HTML page.
    let other_port = format!("{}1", k.base);
    let other_scheme = k.base.replacen("https://", "http://", 1);
    let form = |t: &str| vec![("csrf", t.to_owned()), ("ns", "user1".to_owned())];
    for (form, headers) in [
        (form("")[1..].to_vec(), vec![]),
        (form("AAAA"), vec![]),
        (form(&t), vec![("origin", "https://evil.example")]),
        (form(&t), vec![("sec-fetch-site", "cross-site")]),
        (form(&t), vec![("sec-fetch-site", "same-site")]),
        (form(&t), vec![("origin", "null")]),
        (form(&t), vec![("origin", other_port.as_str())]),
        (form(&t), vec![("origin", other_scheme.as_str())]),
        // A script on this origin (a proxied app's page: a notebook, an HTML artifact) reading
        // the answer with fetch/XHR, or loading it into a frame it can read: no token for it.
        (
            form(&t),
            vec![
                ("sec-fetch-site", "same-origin"),
                ("sec-fetch-mode", "cors"),
                ("sec-fetch-dest", "empty"),
                ("origin", k.base.as_str()),
            ],
        ),
        (
            form(&t),
            vec![("sec-fetch-mode", "same-origin"), ("sec-fetch-dest", "empty")],
        ),
        (
            form(&t),
            vec![("sec-fetch-mode", "navigate"), ("sec-fetch-dest", "iframe")],
        ),
    ] {
        let form: Vec<(&str, &str)> = form.iter().map(|(a, b)| (*a, b.as_str())).collect();
        let r = {
            let mut req = owner.http.post(owner.url("/kubeconfig")).form(&form);
            for (k, v) in &headers {
                req = req.header(*k, *v);
            }
            owner.send(req).await
        };
        assert_eq!(r.status(), 403, "{form:?} {headers:?}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
        assert!(r.headers().get("content-disposition").is_none());
        let body = r.text().await.unwrap();
        assert!(!body.contains("token:") && !body.contains("apiVersion"), "{body}");
    }
    // No session: no kubeconfig (the front door's 401); a GET goes back to the home page.
    let mut stranger = k.client();
    let r = stranger
        .post_form("/kubeconfig", &[("csrf", &t), ("ns", "user1")])
        .await;
    assert_eq!(r.status(), 401);
    assert!(!r.text().await.unwrap().contains("apiVersion"));
    assert_eq!(location(&owner.get("/kubeconfig").await), "/");

    // The download: a namespace not the caller's falls back to their workspace.
    let req = owner
        .http
        .post(owner.url("/kubeconfig"))
        .header("origin", &k.base)
        .form(&[("csrf", t.as_str()), ("ns", "kube-system")]);
    let r = owner.send(req).await;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "application/yaml");
    assert_eq!(
        h["content-disposition"],
        "attachment; filename=\"kubeconfig-test-user1-example-org.yaml\""
    );
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let yaml = r.text().await.unwrap();
    assert!(!yaml.contains("kube-system"), "{yaml}");
    // What a browser sends for the button (a top-level form navigation) is a download too.
    let req = owner
        .http
        .post(owner.url("/kubeconfig"))
        .header("origin", &k.base)
        .header("sec-fetch-site", "same-origin")
        .header("sec-fetch-mode", "navigate")
        .header("sec-fetch-dest", "document")
        .header("sec-fetch-user", "?1")
        .form(&[("csrf", t.as_str()), ("ns", "user1")]);
    let r = owner.send(req).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("    namespace: \"user1\"\n"));
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("kubeconfig-test-user1-example-org.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let user = Kubectl::with_kubeconfig(&path);

    // kubectl reads it: kfsec login's server URL and CA bundle, the workspace as namespace.
    let (code, out, err) = user.run(&["config", "view", "--raw", "-o", "json"], None).await;
    assert_eq!(code, 0, "{err}");
    let cfg: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cfg["current-context"], "kfsec");
    let cluster = &cfg["clusters"][0]["cluster"];
    assert_eq!(cluster["server"], k.running.public_url.as_str());
    let ca = std::fs::read(k._dir.path().join("pki/ca-bundle.crt")).unwrap();
    assert_eq!(
        cluster["certificate-authority-data"],
        base64_standard(&ca),
        "kfsec login's default CA bundle"
    );
    assert_eq!(cfg["contexts"][0]["context"]["namespace"], "user1");
    let jwt = cfg["users"][0]["user"]["token"].as_str().unwrap().to_owned();
    let claims = jwt_claims(&jwt);
    assert_eq!(claims["aud"], "kfsec-cli");
    assert_eq!(claims["email"], USER);
    // The session's subject (what `kfsec login` would get for the user), and its login time.
    let u = k.running.idp.users().find(USER).await.unwrap().unwrap();
    assert_eq!(claims["sub"], kfsec_idp::dex_subject(&u.user_id, "local"));
    assert!(claims["kfsec_iat_ms"].as_u64().unwrap() <= claims["iat"].as_u64().unwrap() * 1000 + 999);
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert!(
        lifetime <= 600 && lifetime > 500,
        "capped by the 10m session: {lifetime}"
    );

    // Real kubectl as the user: whoami names them and their groups; the namespace is theirs.
    let (code, out, err) = user.run(&["auth", "whoami", "-o", "json"], None).await;
    assert_eq!(code, 0, "{err}");
    let who: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], USER);
    assert_eq!(
        who["status"]["userInfo"]["groups"],
        serde_json::json!(["team-a", "system:authenticated"])
    );
    let (code, out, err) = user.run(&["get", "pods"], None).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("No resources found in user1 namespace."), "{err}");
    let (code, _, err) = user.run(&["get", "pods", "-n", "kube-system"], None).await;
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("User \"{USER}\" cannot list resource \"pods\"")),
        "{err}"
    );
    // The token is not in the log-able parts of the answer.
    assert!(!format!("{h:?}").contains(&jwt));

    // A caller by bearer token (this very token), with the form token the page gives it: no
    // browser session, so no token minted from one (400) — a token cannot renew itself.
    let bearer = jwt.clone();
    let http = http_client(&k.running.ca_pem);
    let r = http
        .get(format!("{}/?ns=user1", k.base))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    let bearer_form_token = token(&r.text().await.unwrap());
    let r = http
        .post(format!("{}/kubeconfig", k.base))
        .bearer_auth(&bearer)
        .form(&[("csrf", bearer_form_token.as_str()), ("ns", "user1")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("content-disposition").is_none());
    assert!(!r.text().await.unwrap().contains("apiVersion"));
    // "Log out everywhere" revokes it at once.
    let req = owner
        .http
        .post(owner.url("/authservice/logout-all"))
        .header("origin", &k.base);
    let r = owner.send(req).await;
    assert!(r.status().is_success() || r.status().is_redirection(), "{}", r.status());
    let (code, _, err) = user.run(&["auth", "whoami"], None).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("Unauthorized") || err.contains("You must be logged in"),
        "{err}"
    );
}

fn base64_standard(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
