//! The one writer of a user's kubeconfig with a bearer token (`kfsec login` and the dashboard's
//! "Download kubeconfig"): cluster `kfsec` (the front door's URL and, when its certificate is
//! from kfsec's CA, that CA bundle), user `kfsec-user` (the token), context `kfsec` (optionally
//! with a namespace), current.
//!
//! Invariant: every value is written as a quoted scalar (JSON string syntax, which YAML reads
//! as a double-quoted scalar), so no value can add keys or documents to the file.

/// What a bearer-token kubeconfig holds. Its Debug output hides the token.
#[derive(Clone)]
pub struct BearerKubeconfig<'a> {
    /// The front door, e.g. `https://localhost:8443` (no trailing slash).
    pub server: &'a str,
    /// `certificate-authority-data`: the base64 of the CA bundle a client must trust, when the
    /// server's certificate is not publicly trusted.
    pub ca_data: Option<&'a str>,
    /// The context's namespace, if any.
    pub namespace: Option<&'a str>,
    /// The bearer token (a secret).
    pub token: &'a str,
}

impl std::fmt::Debug for BearerKubeconfig<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerKubeconfig")
            .field("server", &self.server)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// A YAML scalar: `s` quoted.
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

impl BearerKubeconfig<'_> {
    /// The kubeconfig's YAML text.
    pub fn render(&self) -> String {
        let mut cluster = format!("    server: {}\n", quoted(self.server));
        if let Some(ca) = self.ca_data {
            cluster.push_str(&format!("    certificate-authority-data: {}\n", quoted(ca)));
        }
        let namespace = self
            .namespace
            .map(|ns| format!("    namespace: {}\n", quoted(ns)))
            .unwrap_or_default();
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kfsec\n  cluster:\n{cluster}users:\n- name: kfsec-user\n  user:\n    token: {token}\ncontexts:\n- name: kfsec\n  context:\n    cluster: kfsec\n    user: kfsec-user\n{namespace}current-context: kfsec\n",
            token = quoted(self.token),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_and_optional_parts_left_out() {
        let text = BearerKubeconfig {
            server: "https://kf.example:8443",
            ca_data: Some("Q0E="),
            namespace: Some("team-a"),
            token: "a.b.c",
        }
        .render();
        assert!(text.contains("    server: \"https://kf.example:8443\"\n"), "{text}");
        assert!(text.contains("    certificate-authority-data: \"Q0E=\"\n"), "{text}");
        assert!(text.contains("    token: \"a.b.c\"\n"), "{text}");
        assert!(
            text.contains("    namespace: \"team-a\"\ncurrent-context: kfsec\n"),
            "{text}"
        );
        let hostile = "x\"\n  evil: true\n---\n";
        let text = BearerKubeconfig {
            server: "https://kf.example",
            ca_data: None,
            namespace: Some(hostile),
            token: hostile,
        }
        .render();
        assert!(
            !text.contains("certificate-authority-data") && !text.contains("\n  evil"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 17, "{text}");
        let no_ns = BearerKubeconfig {
            server: "https://kf.example",
            ca_data: None,
            namespace: None,
            token: "t",
        };
        assert!(!no_ns.render().contains("namespace:"));
        assert!(!format!("{no_ns:?}").contains("token"));
    }
}
