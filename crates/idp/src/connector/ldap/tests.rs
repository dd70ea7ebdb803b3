use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use super::settings::Matcher;
use super::*;

fn ctx() -> OpenContext {
    OpenContext::new("https://kf.example.com/dex", Duration::from_secs(10))
}

fn base() -> serde_json::Value {
    json!({
        "host": "ldap.example.org",
        "bindDN": "cn=kfsec,dc=example,dc=org",
        "bindPW": "s3cret-bind-pw",
        "userSearch": {
            "baseDN": "ou=people,dc=example,dc=org",
            "filter": "(objectClass=person)",
            "username": "uid",
            "idAttr": "uid",
            "emailAttr": "mail",
            "nameAttr": "cn",
        },
        "groupSearch": {
            "baseDN": "ou=groups,dc=example,dc=org",
            "filter": "(objectClass=groupOfNames)",
            "userMatchers": [{"userAttr": "DN", "groupAttr": "member"}],
            "nameAttr": "cn",
        },
    })
}

fn with(mut v: serde_json::Value, path: &[&str], value: serde_json::Value) -> serde_json::Value {
    let mut at = &mut v;
    for p in &path[..path.len() - 1] {
        at = &mut at[*p];
    }
    at[path[path.len() - 1]] = value;
    v
}

fn problems(v: serde_json::Value) -> Vec<ConfigProblem> {
    match settings("ldap", v, &ctx()) {
        Ok(_) => Vec::new(),
        Err(p) => p,
    }
}

fn fields(v: serde_json::Value) -> Vec<String> {
    problems(v).into_iter().map(|p| p.field).collect()
}

#[test]
fn defaults_are_dexs() {
    let s = settings("ldap", base(), &ctx()).unwrap();
    assert_eq!(s.url.as_str(), "ldaps://ldap.example.org:636");
    assert_eq!(s.host, "ldap.example.org");
    assert!(s.tls.is_some() && !s.start_tls);
    assert_eq!(s.prompt, "Username");
    assert_eq!(s.timeout, Duration::from_secs(10));
    assert!(matches!(s.user.scope, Scope::Subtree));
    let g = s.groups.unwrap();
    assert_eq!(
        g.matchers,
        vec![Matcher {
            user_attr: "DN".into(),
            group_attr: "member".into(),
            recursion_group_attr: String::new()
        }]
    );

    // insecureNoSSL: plain LDAP on 389. startTLS: ldap:// then StartTLS, on 636 as Dex's code
    // does when no port is given.
    let s = settings("ldap", with(base(), &["insecureNoSSL"], json!(true)), &ctx()).unwrap();
    assert_eq!(s.url.as_str(), "ldap://ldap.example.org:389");
    assert!(s.tls.is_none());
    let s = settings("ldap", with(base(), &["startTLS"], json!(true)), &ctx()).unwrap();
    assert_eq!(s.url.as_str(), "ldap://ldap.example.org:636");
    assert!(s.start_tls && s.tls.is_some());
    let s = settings("ldap", with(base(), &["host"], json!("10.1.2.3:10636")), &ctx()).unwrap();
    assert_eq!(s.url.as_str(), "ldaps://10.1.2.3:10636");
    assert_eq!(s.host, "10.1.2.3");
    let v = with(base(), &["host"], json!("[::1]:10389"));
    let s = settings("ldap", with(v, &["insecureNoSSL"], json!(true)), &ctx()).unwrap();
    assert_eq!(s.url.as_str(), "ldap://[::1]:10389");
    assert_eq!(s.host, "::1");
    // (The LDAP library would give rustls "[::1]" as the server name: refused at startup.)
    assert_eq!(
        fields(with(base(), &["host"], json!("[::1]:10636"))),
        vec!["host".to_owned()]
    );

    let v = with(base(), &["usernamePrompt"], json!("Corporate ID"));
    let v = with(v, &["timeout"], json!("2s"));
    let v = with(v, &["userSearch", "scope"], json!("one"));
    let s = settings("ldap", v, &ctx()).unwrap();
    assert_eq!(s.prompt, "Corporate ID");
    assert_eq!(s.timeout, Duration::from_secs(2));
    assert!(matches!(s.user.scope, Scope::OneLevel));
}

#[test]
fn yaml_nulls_are_go_zero_values() {
    let v = with(base(), &["userSearch", "filter"], serde_json::Value::Null);
    let v = with(v, &["rootCA"], serde_json::Value::Null);
    let s = settings("ldap", v, &ctx()).unwrap();
    assert_eq!(s.user.filter, "");
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let v = json!({
        "hots": "x",
        "bindDn": "cn=x",
        "kerberos": {"enabled": true},
        "userSearch": {"baseDn": "x", "scope": "base", "emailSufix": "x"},
        "groupSearch": {"baseDN": "ou=g", "userMatchers": [{"userAttr": "uid", "groupattr": "memberUid"}]},
        "timeout": "0s",
    });
    let p = problems(v);
    let f: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
    for want in [
        "hots",
        "bindDn",
        "kerberos",
        "userSearch.baseDn",
        "userSearch.emailSufix",
        "groupSearch.userMatchers[0].groupattr",
        "host",
        "userSearch.baseDN",
        "userSearch.username",
        "userSearch.scope",
        "userSearch.idAttr",
        "userSearch.emailAttr",
        "groupSearch.nameAttr",
        "groupSearch.userMatchers[0].groupAttr",
        "timeout",
    ] {
        assert!(f.contains(&want), "{want} missing from {p:#?}");
    }
    let hint = p.iter().find(|p| p.field == "bindDn").unwrap();
    assert!(hint.message.contains("\"bindDN\""), "{hint:?}");
    let hint = p.iter().find(|p| p.field == "kerberos").unwrap();
    assert!(hint.message.contains("does not implement"), "{hint:?}");
}

#[test]
fn settings_that_would_break_every_login_are_refused() {
    // Dex: emailSuffix makes the email <nameAttr>@suffix; without nameAttr everyone is "@suffix".
    let v = with(base(), &["userSearch", "emailSuffix"], json!("example.org"));
    let v = with(v, &["userSearch", "nameAttr"], json!(""));
    assert!(fields(v).contains(&"userSearch.emailSuffix".to_owned()));
    // emailSuffix replaces emailAttr.
    let v = with(base(), &["userSearch", "emailSuffix"], json!("example.org"));
    let v = with(v, &["userSearch", "emailAttr"], json!(""));
    assert!(fields(v).is_empty());
    // A bind DN with an empty password (an unset $VAR) or the other way round.
    assert_eq!(fields(with(base(), &["bindPW"], json!(""))), vec!["bindPW".to_owned()]);
    assert_eq!(fields(with(base(), &["bindDN"], json!(""))), vec!["bindDN".to_owned()]);
    // Both empty: an anonymous bind, as Dex.
    let v = with(with(base(), &["bindPW"], json!("")), &["bindDN"], json!(""));
    assert!(fields(v).is_empty());
    // Filters that do not parse.
    assert_eq!(
        fields(with(base(), &["userSearch", "filter"], json!("objectClass=person"))),
        vec!["userSearch.filter".to_owned()]
    );
    assert_eq!(
        fields(with(base(), &["groupSearch", "filter"], json!("(objectClass=group"))),
        vec!["groupSearch.userMatchers[0].groupAttr".to_owned()]
    );
    // Half a client identity.
    assert_eq!(
        fields(with(base(), &["clientCert"], json!("/etc/x.pem"))),
        vec!["clientKey".to_owned()]
    );
    assert_eq!(
        fields(with(base(), &["rootCA"], json!("/nonexistent/ca.pem"))),
        vec!["rootCA".to_owned()]
    );
    assert_eq!(
        fields(with(base(), &["rootCAData"], json!("not base64!"))),
        vec!["rootCAData".to_owned()]
    );
    assert_eq!(
        fields(with(base(), &["rootCAData"], json!(STANDARD.encode("no pem here")))),
        vec!["rootCAData".to_owned()]
    );
    assert_eq!(
        fields(with(base(), &["host"], json!("ldaps://ldap.example.org"))),
        vec!["host".to_owned()]
    );
    assert_eq!(
        fields(with(base(), &["userSearch", "username"], json!(7))),
        vec!["userSearch.username".to_owned()]
    );
}

#[test]
fn legacy_group_fields_and_matchers_as_dex() {
    // The deprecated flat pair is one matcher.
    let mut v = base();
    v["groupSearch"] = json!({
        "baseDN": "ou=groups,dc=example,dc=org",
        "userAttr": "uid",
        "groupAttr": "memberUid",
        "recursionGroupAttr": "member",
        "nameAttr": "cn",
    });
    let s = settings("ldap", v.clone(), &ctx()).unwrap();
    assert_eq!(
        s.groups.unwrap().matchers,
        vec![Matcher {
            user_attr: "uid".into(),
            group_attr: "memberUid".into(),
            recursion_group_attr: "member".into()
        }]
    );
    // userMatchers win over it.
    v["groupSearch"]["userMatchers"] = json!([
        {"userAttr": "DN", "groupAttr": "member"},
        {"userAttr": "uid", "groupAttr": "memberUid"},
    ]);
    let s = settings("ldap", v, &ctx()).unwrap();
    let m = s.groups.unwrap().matchers;
    assert_eq!(m.len(), 2);
    assert_eq!(m[1].group_attr, "memberUid");
    // No baseDN: no groups.
    let s = settings("ldap", with(base(), &["groupSearch", "baseDN"], json!("")), &ctx()).unwrap();
    assert!(s.groups.is_none());
    // Active Directory's in-chain matching rule is a valid groupAttr.
    let v = with(
        base(),
        &["groupSearch", "userMatchers"],
        json!([{"userAttr": "DN", "groupAttr": "member:1.2.840.113556.1.4.1941:"}]),
    );
    assert!(fields(v).is_empty());
}

#[test]
fn the_user_name_is_escaped_once() {
    let s = settings("ldap", base(), &ctx()).unwrap();
    assert_eq!(user_filter(&s.user, "alice"), "(&(objectClass=person)(uid=alice))");
    // RFC 4515: ( ) * \ NUL escaped; UTF-8 as is (Dex's double escape breaks these).
    assert_eq!(
        user_filter(&s.user, "jür(gen)*\\\0"),
        "(&(objectClass=person)(uid=jür\\28gen\\29\\2a\\5c\\00))"
    );
    assert_eq!(
        user_filter(&s.user, "admin)(uid=*"),
        "(&(objectClass=person)(uid=admin\\29\\28uid=\\2a))"
    );
    // Every escaped name still parses as one equality filter.
    for name in ["a", "jürgen", "x)(|(uid=*", "\\2a", "*", "\0", "((((", "é\u{1F600}"] {
        assert!(ldap3::parse_filter(user_filter(&s.user, name)).is_ok(), "{name:?}");
    }
    // A list of attributes is OR-combined (Dex master), without a filter too.
    let v = with(base(), &["userSearch", "username"], json!(["uid", "mail"]));
    let v = with(v, &["userSearch", "filter"], json!(""));
    let s = settings("ldap", v, &ctx()).unwrap();
    assert_eq!(user_filter(&s.user, "a*"), "(|(uid=a\\2a)(mail=a\\2a))");
    let g = s.groups.unwrap();
    assert_eq!(
        group_filter(&g, "member", "uid=a\\,b (x),dc=org"),
        "(&(objectClass=groupOfNames)(member=uid=a\\5c,b \\28x\\29,dc=org))"
    );
}

#[test]
fn debug_output_hides_the_bind_password() {
    let c = build("ldap", base(), &ctx()).unwrap();
    let shown = format!("{c:?}");
    assert!(shown.contains("ldap.example.org"), "{shown}");
    assert!(!shown.contains("s3cret-bind-pw"), "{shown}");
}

#[tokio::test]
async fn an_empty_password_never_reaches_the_directory() {
    // A listener that counts connections: none may arrive.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    let server = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(s);
        }
    });
    let v = with(base(), &["host"], json!(format!("127.0.0.1:{port}")));
    let c = build("ldap", v, &ctx()).unwrap();
    let scopes = Scopes {
        offline_access: true,
        groups: true,
    };
    assert!(c.login(scopes, "alice", "").await.unwrap().is_none());
    assert!(c.login(scopes, "", "pw").await.unwrap().is_none());
    assert!(
        c.login(scopes, &"a".repeat(MAX_USERNAME + 1), "pw")
            .await
            .unwrap()
            .is_none()
    );
    // The same connector does reach the listener with a password (and fails: it is not LDAP).
    assert!(c.login(scopes, "alice", "pw").await.is_err());
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    server.abort();
}

/// A directory on 127.0.0.1 that answers the first request of each connection with `answer`,
/// then holds the connection open until kfsec closes it.
async fn one_answer_directory(answer: Vec<u8>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while ber::message_len(&buf).unwrap().is_none() {
                    if s.read_buf(&mut buf).await.unwrap() == 0 {
                        return;
                    }
                }
                let _ = s.write_all(&answer).await;
                let mut sink = [0u8; 1024];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    port
}

/// A message with ID 1 and operation `tag` whose content is `body`.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    use super::ber::tests::tlv;
    tlv(0x30, &[tlv(0x02, &[1]), tlv(tag, body)].concat())
}

/// An LDAPResult's content: `code`, empty matched DN and diagnostic.
fn result(code: u8) -> Vec<u8> {
    use super::ber::tests::tlv;
    [tlv(0x0a, &[code]), tlv(0x04, b""), tlv(0x04, b"")].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_answers_end_the_login_not_the_process() {
    let scopes = Scopes {
        offline_access: true,
        groups: true,
    };
    let plain = |port: u16| {
        let v = with(base(), &["host"], json!(format!("127.0.0.1:{port}")));
        build("ldap", with(v, &["insecureNoSSL"], json!(true)), &ctx()).unwrap()
    };
    // A bind answer nested deep enough to overflow the LDAP library's recursive reader (it
    // used to abort the whole process), one that announces 2 GiB, and one that is not an
    // LDAP message (the library panics on it).
    let hostile = [
        message(0x61, &super::ber::tests::nested(100_000)),
        vec![0x30, 0x84, 0x7f, 0xff, 0xff, 0xff],
        super::ber::tests::tlv(0x30, &super::ber::tests::tlv(0x02, &[1])),
    ];
    for answer in hostile {
        let c = plain(one_answer_directory(answer).await);
        match c.login(scopes, "alice", "pw").await {
            Err(ConnectorError::Unreachable(why)) => assert!(why.contains("127.0.0.1"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
    // A well-formed answer passes through: the directory refused the service account.
    let c = plain(one_answer_directory(message(0x61, &result(49))).await);
    match c.login(scopes, "alice", "pw").await {
        Err(ConnectorError::Misconfigured(why)) => assert!(why.contains("invalid credentials"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_tls_answers_are_read_by_kfsec() {
    let scopes = Scopes {
        offline_access: true,
        groups: true,
    };
    let start_tls = |port: u16| {
        let v = with(base(), &["host"], json!(format!("127.0.0.1:{port}")));
        let v = with(v, &["startTLS"], json!(true));
        build("ldap", with(v, &["insecureSkipVerify"], json!(true)), &ctx()).unwrap()
    };
    let cases = [
        // Bytes injected after a successful answer, to be read as if they came over TLS.
        (
            [message(0x78, &result(0)), message(0x61, &result(0))].concat(),
            "after the answer to StartTLS",
        ),
        (message(0x78, &result(2)), "StartTLS was refused: result 2"),
        (message(0x61, &result(0)), "not an ExtendedResponse"),
        (message(0x78, &super::ber::tests::nested(1_000)), "nested more than"),
    ];
    for (answer, expected) in cases {
        let c = start_tls(one_answer_directory(answer).await);
        match c.login(scopes, "alice", "pw").await {
            Err(ConnectorError::Unreachable(why)) => assert!(why.contains(expected), "{why}"),
            other => panic!("{expected}: {other:?}"),
        }
    }
}
