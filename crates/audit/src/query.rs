//! `kfsec audit query`: filters over audit lines (user, time, verb, decision, resource,
//! namespace) and the one-line readable form of an event.
//!
//! Security invariant: lines are read as untrusted JSON (a line that does not parse is skipped,
//! never trusted); printing never interprets content (control characters are escaped).

use serde_json::Value;

use crate::chain::CHECKPOINT_RESOURCE;

/// What to keep. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `user.username` equals this (or the impersonated user's does).
    pub user: Option<String>,
    /// Received at or after this time (seconds since the epoch).
    pub since: Option<i64>,
    /// The verb.
    pub verb: Option<String>,
    /// `allow` or `deny`.
    pub decision: Option<Decision>,
    /// `objectRef.resource`, or `resource/subresource`.
    pub resource: Option<String>,
    /// `objectRef.namespace`.
    pub namespace: Option<String>,
}

/// The outcome asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed (annotation `allow`, or no authorization annotation and a code below 400).
    Allow,
    /// Denied (annotation `forbid`, or no authorization annotation and 401/403).
    Deny,
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(x) => cur = x,
            None => return "",
        }
    }
    cur.as_str().unwrap_or_default()
}

fn code(v: &Value) -> Option<u64> {
    v.get("responseStatus")?.get("code")?.as_u64()
}

/// The decision an event records.
pub fn decision_of(v: &Value) -> Option<Decision> {
    match s(v, &["annotations", "authorization.k8s.io/decision"]) {
        "allow" => Some(Decision::Allow),
        "forbid" | "deny" => Some(Decision::Deny),
        _ => match code(v)? {
            401 | 403 => Some(Decision::Deny),
            c if c < 400 => Some(Decision::Allow),
            _ => None,
        },
    }
}

/// Whether the line is a checkpoint (not shown by `query`).
pub fn is_checkpoint(v: &Value) -> bool {
    s(v, &["objectRef", "resource"]) == CHECKPOINT_RESOURCE && s(v, &["verb"]) == "checkpoint"
}

impl Filter {
    /// Whether `v` (one parsed line) passes.
    pub fn matches(&self, v: &Value) -> bool {
        if let Some(u) = &self.user
            && s(v, &["user", "username"]) != u
            && s(v, &["impersonatedUser", "username"]) != u
        {
            return false;
        }
        if let Some(since) = self.since {
            let t = kfsec_types::time::parse_rfc3339(s(v, &["requestReceivedTimestamp"]));
            if t.is_none_or(|t| t < since) {
                return false;
            }
        }
        if self.verb.as_deref().is_some_and(|x| s(v, &["verb"]) != x) {
            return false;
        }
        if self.decision.is_some() && decision_of(v) != self.decision {
            return false;
        }
        if let Some(r) = &self.resource {
            let res = s(v, &["objectRef", "resource"]);
            let sub = s(v, &["objectRef", "subresource"]);
            let full = if sub.is_empty() {
                res.to_owned()
            } else {
                format!("{res}/{sub}")
            };
            if r != res && *r != full {
                return false;
            }
        }
        if self
            .namespace
            .as_deref()
            .is_some_and(|n| s(v, &["objectRef", "namespace"]) != n)
        {
            return false;
        }
        true
    }
}

fn clean(x: &str) -> String {
    x.chars()
        .flat_map(char::escape_debug)
        .collect::<String>()
        .replace(' ', "\\x20")
}

/// One readable line: time, user, verb, resource/namespace/name (or the URI), code, decision.
pub fn summary(v: &Value) -> String {
    let mut target = String::new();
    let res = s(v, &["objectRef", "resource"]);
    if res.is_empty() {
        target.push_str(s(v, &["requestURI"]));
    } else {
        let group = s(v, &["objectRef", "apiGroup"]);
        target.push_str(res);
        if !group.is_empty() {
            target.push('.');
            target.push_str(group);
        }
        let sub = s(v, &["objectRef", "subresource"]);
        if !sub.is_empty() {
            target.push('/');
            target.push_str(sub);
        }
        let ns = s(v, &["objectRef", "namespace"]);
        let name = s(v, &["objectRef", "name"]);
        if !ns.is_empty() {
            target.push_str(" ns=");
            target.push_str(ns);
        }
        if !name.is_empty() {
            target.push_str(" name=");
            target.push_str(name);
        }
    }
    let mut user = s(v, &["user", "username"]).to_owned();
    let imp = s(v, &["impersonatedUser", "username"]);
    if !imp.is_empty() {
        user = format!("{user}(as {imp})");
    }
    let decision = match decision_of(v) {
        Some(Decision::Allow) => "allow",
        Some(Decision::Deny) => "deny",
        None => "-",
    };
    let mut out = format!(
        "{} {} {} {} {} {decision}",
        clean(match s(v, &["requestReceivedTimestamp"]) {
            "" => "-",
            t => t,
        }),
        clean(if user.is_empty() { "-" } else { &user }),
        clean(s(v, &["verb"])),
        clean(if target.is_empty() { "-" } else { &target }).replace("\\x20", " "),
        code(v).map_or_else(|| "-".to_owned(), |c| c.to_string()),
    );
    let reason = s(v, &["annotations", "kfsec.io/reason"]);
    if !reason.is_empty() {
        out.push_str(" reason=");
        out.push_str(&clean(reason));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(user: &str, verb: &str, code: u16, decision: Option<&str>, t: &str) -> Value {
        let mut v = serde_json::json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "verb": verb,
            "user": {"username": user},
            "objectRef": {"resource": "pods", "subresource": "log", "namespace": "team-a", "name": "p\nx"},
            "responseStatus": {"code": code},
            "requestReceivedTimestamp": t,
        });
        if let Some(d) = decision {
            v["annotations"] = serde_json::json!({"authorization.k8s.io/decision": d});
        }
        v
    }

    #[test]
    fn filters_combine_and_decisions_read_the_annotation_first() {
        let a = ev("alice", "get", 200, Some("allow"), "2026-12-05T21:00:00.000001Z");
        let b = ev("bob", "create", 403, Some("forbid"), "2026-12-05T20:00:00.000001Z");
        let c = ev("carol", "login", 401, None, "2026-12-05T21:30:00Z");
        let f = Filter {
            decision: Some(Decision::Deny),
            ..Default::default()
        };
        assert!(!f.matches(&a) && f.matches(&b) && f.matches(&c));
        let since = kfsec_types::time::parse_rfc3339("2026-12-05T20:30:00Z");
        let f = Filter {
            since,
            resource: Some("pods/log".into()),
            namespace: Some("team-a".into()),
            ..Default::default()
        };
        assert!(f.matches(&a) && !f.matches(&b) && f.matches(&c));
        let f = Filter {
            user: Some("alice".into()),
            verb: Some("get".into()),
            resource: Some("pods".into()),
            ..Default::default()
        };
        assert!(f.matches(&a) && !f.matches(&b));
        // A line without a time never passes --since.
        let f = Filter {
            since: Some(0),
            ..Default::default()
        };
        assert!(!f.matches(&serde_json::json!({"verb": "get"})));
    }

    #[test]
    fn the_summary_is_one_escaped_line() {
        let s = summary(&ev("bob", "create", 403, Some("forbid"), "2026-12-05T20:00:00.000001Z"));
        assert_eq!(
            s,
            "2026-12-05T20:00:00.000001Z bob create pods/log ns=team-a name=p\\nx 403 deny"
        );
        assert!(!s.contains('\n'));
        let nonres = serde_json::json!({"verb": "get", "requestURI": "/healthz", "user": {"username": "u"}});
        assert_eq!(summary(&nonres), "- u get /healthz - -");
    }
}
