//! Discovery documents: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/{g}`, `/apis/{g}/{v}`
//! (legacy, non-aggregated JSON). The OpenAPI documents are `openapi`'s.
//!
//! Invariants: everything here is derived from the static registry only; no stored data is
//! ever reachable from a discovery path.

use serde_json::{Map, Value, json};

use crate::registry::{self, Resource};

/// `/version`: kube-apiserver's shape, with the build's commit, tree state and date.
pub fn version(git_version: &str, build: &kfsec_types::BuildInfo) -> Value {
    let (major, minor) =
        git_version
            .trim_start_matches('v')
            .split('.')
            .take(2)
            .fold((String::new(), String::new()), |(a, b), p| {
                if a.is_empty() {
                    (p.to_owned(), b)
                } else {
                    (a, p.to_owned())
                }
            });
    json!({
        "major": major,
        "minor": minor,
        "gitVersion": git_version,
        "gitCommit": build.commit,
        "gitTreeState": build.tree_state,
        "buildDate": build.build_date_rfc3339(),
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else if std::env::consts::ARCH == "aarch64" { "arm64" } else { std::env::consts::ARCH }),
    })
}

/// `/api`.
pub fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

fn group_json(name: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    let preferred = vs.first().cloned().unwrap_or(Value::Null);
    json!({"name": name, "versions": vs, "preferredVersion": preferred})
}

/// `/apis`.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = registry::groups().iter().map(|(g, vs)| group_json(g, vs)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/{group}`; `None` if the group is not served.
pub fn api_group(group: &str) -> Option<Value> {
    registry::groups().iter().find(|(g, _)| *g == group).map(|(g, vs)| {
        let mut v = group_json(g, vs);
        if let Some(o) = v.as_object_mut() {
            o.insert("kind".into(), json!("APIGroup"));
            o.insert("apiVersion".into(), json!("v1"));
        }
        v
    })
}

fn resource_json(r: &Resource) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(r.plural));
    m.insert("singularName".into(), json!(r.singular));
    m.insert("namespaced".into(), json!(r.namespaced));
    m.insert("kind".into(), json!(r.kind));
    m.insert("verbs".into(), json!(r.verbs));
    if !r.short_names.is_empty() {
        m.insert("shortNames".into(), json!(r.short_names));
    }
    if !r.categories.is_empty() {
        m.insert("categories".into(), json!(r.categories));
    }
    Value::Object(m)
}

/// `/api/v1` or `/apis/{g}/{v}`; `None` if not served.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    if !registry::serves_group_version(group, version) {
        return None;
    }
    let mut resources = Vec::new();
    for r in registry::in_group_version(group, version) {
        resources.push(resource_json(r));
        if r.has_status() {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if let Some(sub) = r.subresource("token") {
            resources.push(json!({
                "name": format!("{}/token", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "group": sub.group,
                "version": sub.version,
                "kind": sub.kind,
                "verbs": sub.verbs,
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn documents() {
        let build = kfsec_types::BuildInfo {
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            tree_state: "dirty".into(),
            build_date: 1_796_479_360,
            ..Default::default()
        };
        let v = version("v1.32.0-kfsec", &build);
        assert_eq!(v["gitCommit"], "0123456789abcdef0123456789abcdef01234567");
        assert_eq!(v["gitTreeState"], "dirty");
        assert_eq!(v["buildDate"], "2026-12-05T14:02:40Z");
        assert_eq!(v["major"], "1");
        assert_eq!(v["minor"], "32");
        let core = resource_list("", "v1").unwrap();
        let names: Vec<&str> = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"namespaces") && names.contains(&"pods/status") && names.contains(&"configmaps"));
        assert!(resource_list("", "v2").is_none());
        let kf = resource_list("kubeflow.org", "v1alpha1").unwrap();
        assert_eq!(kf["groupVersion"], "kubeflow.org/v1alpha1");
        let groups = api_group_list();
        let kfg = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == "kubeflow.org")
            .unwrap();
        assert_eq!(kfg["preferredVersion"]["version"], "v1");
        assert!(api_group("nope").is_none());
        assert_eq!(api_group("kubeflow.org").unwrap()["kind"], "APIGroup");
    }
}
