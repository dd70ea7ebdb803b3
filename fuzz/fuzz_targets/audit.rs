//! The audit log's untrusted inputs: an `audit.k8s.io/v1` Policy file (first byte even) and a
//! log's lines as `kfsec audit verify` and `kfsec audit query` read them (first byte odd; the
//! byte 0xFF splits the input into files). Invariants: no panic; a parsed policy decides for
//! any request without panicking and never records a Secret's body; the verifier's failure,
//! when there is one, names a line that exists.
#![no_main]

use kfsec_audit::policy::{Attributes, Policy, ResourceAttributes};
use kfsec_audit::{Level, chain, query};
use kfsec_types::identity::UserInfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else { return };
        let Ok(p) = Policy::parse(text) else { return };
        let user = UserInfo {
            username: "alice".into(),
            groups: vec!["system:authenticated".into()],
            ..Default::default()
        };
        for (verb, group, resource, sub, ns, path) in [
            ("create", "", "secrets", "", "ns", "/api/v1/namespaces/ns/secrets"),
            ("get", "", "pods", "log", "ns", "/api/v1/namespaces/ns/pods/p/log"),
            ("create", "", "serviceaccounts", "token", "ns", "/x"),
            ("login", "identity.kfsec.io", "logins", "", "", "/dex/auth/local/login"),
            ("update", "apps", "deployments", "scale", "", "/apis/apps/v1/x"),
        ] {
            let r = ResourceAttributes {
                api_group: group,
                resource,
                subresource: sub,
                namespace: ns,
                name: "n",
            };
            let d = p.decide(&Attributes { user: &user, verb, resource: Some(r), path });
            if kfsec_audit::policy::carries_secrets(&r) {
                assert!(d.level <= Level::Metadata);
            }
        }
        let d = p.decide(&Attributes { user: &user, verb: "get", resource: None, path: "/healthz" });
        assert!(d.level <= Level::Metadata);
    } else {
        let parts: Vec<&[u8]> = rest.split(|b| *b == 0xFF).collect();
        let names: Vec<String> = (0..parts.len()).map(|i| format!("f{i}")).collect();
        let files: Vec<(&str, &[u8])> = names.iter().map(String::as_str).zip(parts.iter().copied()).collect();
        if let Err(f) = chain::verify_bytes(&files, &[]) {
            let i = names.iter().position(|n| *n == f.file).unwrap_or(usize::MAX);
            let lines = parts.get(i).map_or(0, |p| p.split(|b| *b == b'\n').count());
            assert!(f.line >= 1 && f.line <= lines.max(1), "{f}");
        }
        let filter = query::Filter { user: Some("alice".into()), since: Some(0), ..Default::default() };
        for line in rest.split(|b| *b == b'\n') {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) {
                let _ = filter.matches(&v);
                let _ = query::summary(&v);
            }
        }
    }
});
