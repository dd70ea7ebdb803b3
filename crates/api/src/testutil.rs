//! Test fixtures: a rule-table authorizer, a deterministic RNG, a fake identity layer mapping
//! `Authorization: Bearer <user>` to an `Identity`, and a server on 127.0.0.1:0.
//!
//! Invariants: test-only; the identity layer trusts the bearer token blindly by design.

use std::sync::Arc;

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use kfsec_store::MemoryStore;
use kfsec_types::identity::UserInfo;
use kfsec_types::{Identity, ManualClock, UnixTime};

use crate::{ApiServer, Attributes, Authorize, Decision, RequestAttributes, ResourceRule, SubjectRules};

/// One grant: `who` is `user:NAME` or `group:NAME`; `namespace` `None` = everywhere.
#[derive(Debug, Clone)]
pub struct Grant {
    pub who: String,
    pub verbs: Vec<String>,
    pub groups: Vec<String>,
    pub resources: Vec<String>,
    pub names: Vec<String>,
    pub namespace: Option<String>,
}

pub fn grant(who: &str, verbs: &[&str], groups: &[&str], resources: &[&str], namespace: Option<&str>) -> Grant {
    let v = |x: &[&str]| x.iter().map(|s| (*s).to_owned()).collect();
    Grant {
        who: who.into(),
        verbs: v(verbs),
        groups: v(groups),
        resources: v(resources),
        names: Vec::new(),
        namespace: namespace.map(str::to_owned),
    }
}

#[derive(Debug)]
pub struct TableAuthz(pub std::sync::RwLock<Vec<Grant>>, pub tokio::sync::watch::Sender<u64>);

fn applies(g: &Grant, user: &str, groups: &[String]) -> bool {
    match g.who.split_once(':') {
        Some(("user", u)) => u == user,
        Some(("group", x)) => groups.iter().any(|y| y == x),
        _ => false,
    }
}

fn has(list: &[String], v: &str) -> bool {
    list.iter().any(|x| x == "*" || x == v)
}

impl TableAuthz {
    pub fn new(grants: Vec<Grant>) -> Arc<Self> {
        Arc::new(Self(std::sync::RwLock::new(grants), tokio::sync::watch::channel(0).0))
    }

    /// Replaces the grants and tells open watches (like an RBAC change in the store).
    pub fn set(&self, grants: Vec<Grant>) {
        *self.0.write().unwrap() = grants;
        self.1.send_modify(|n| *n += 1);
    }
}

impl Authorize for TableAuthz {
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.1.subscribe())
    }

    fn authorize(&self, a: &Attributes) -> Decision {
        let grants = self.0.read().unwrap();
        if a.groups.iter().any(|g| g == "system:masters") {
            return Decision::Allow {
                reason: "system:masters".into(),
            };
        }
        for g in grants.iter().filter(|g| applies(g, &a.user, &a.groups)) {
            let ok = match &a.request {
                RequestAttributes::Resource(r) => {
                    let res = if r.subresource.is_empty() {
                        r.resource.clone()
                    } else {
                        format!("{}/{}", r.resource, r.subresource)
                    };
                    has(&g.verbs, &r.verb)
                        && has(&g.groups, &r.api_group)
                        && has(&g.resources, &res)
                        && (g.names.is_empty() || has(&g.names, &r.name))
                        && g.namespace.as_deref().is_none_or(|n| n == r.namespace)
                }
                RequestAttributes::NonResource(_) => {
                    g.namespace.is_none() && g.resources.iter().any(|r| r == "nonresource")
                }
            };
            if ok {
                return Decision::Allow {
                    reason: format!("test: allowed by grant to {}", g.who),
                };
            }
        }
        Decision::NoOpinion
    }

    fn rules_for(&self, user: &UserInfo, namespace: &str) -> SubjectRules {
        let grants = self.0.read().unwrap();
        let resource_rules = grants
            .iter()
            .filter(|g| applies(g, &user.username, &user.groups))
            .filter(|g| g.namespace.as_deref().is_none_or(|n| n == namespace))
            .map(|g| ResourceRule {
                verbs: g.verbs.clone(),
                api_groups: g.groups.clone(),
                resources: g.resources.clone(),
                resource_names: g.names.clone(),
            })
            .collect();
        SubjectRules {
            resource_rules,
            ..SubjectRules::default()
        }
    }
}

/// Deterministic, distinct bytes.
pub type CounterRng = kfsec_types::SequenceRng;

/// Test groups per user.
pub fn groups_of(user: &str) -> Vec<String> {
    match user {
        "admin" => vec!["system:masters".into()],
        "alice" => vec!["team-a".into()],
        _ => Vec::new(),
    }
}

async fn fake_identity(mut req: Request, next: Next) -> Response {
    let user = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    if let Some(u) = user {
        let groups = groups_of(&u);
        req.extensions_mut().insert(Identity::new(u, groups));
    }
    next.run(req).await
}

pub struct Fixture {
    pub api: Arc<ApiServer>,
    pub store: Arc<MemoryStore>,
    pub authz: Arc<TableAuthz>,
}

/// The default grants of the tests: everyone may create self-reviews; alice edits in `x`
/// (and may list namespaces and impersonate `bob`); admin is system:masters.
pub fn default_grants() -> Vec<Grant> {
    let mut imp = grant("user:alice", &["impersonate"], &[""], &["users"], None);
    imp.names = vec!["bob".into()];
    vec![
        grant(
            "group:system:authenticated",
            &["create"],
            &["authorization.k8s.io"],
            &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
            None,
        ),
        grant(
            "user:alice",
            &["get", "list", "watch", "create"],
            &[""],
            &["namespaces"],
            None,
        ),
        grant("user:alice", &["*"], &["", "kubeflow.org"], &["*"], Some("x")),
        grant("user:bob", &["get", "list"], &[""], &["configmaps"], Some("x")),
        imp,
    ]
}

pub fn fixture_with(grants: Vec<Grant>) -> Fixture {
    fixture_built(grants, |b| b)
}

/// A fixture whose server `build` finishes (hooks added).
pub fn fixture_built(
    grants: Vec<Grant>,
    build: impl FnOnce(crate::ApiServerBuilder) -> crate::ApiServerBuilder,
) -> Fixture {
    let clock = ManualClock::new(UnixTime::from_secs(1_700_000_000));
    let store = MemoryStore::new(clock.clone());
    let authz = TableAuthz::new(grants);
    let api = build(ApiServer::builder(
        store.clone(),
        authz.clone(),
        clock,
        Arc::new(CounterRng::default()),
    ))
    .build();
    Fixture { api, store, authz }
}

pub fn fixture() -> Fixture {
    fixture_with(default_grants())
}

/// The router with the fake identity layer.
pub fn app(api: &Arc<ApiServer>) -> axum::Router {
    api.router().layer(middleware::from_fn(fake_identity))
}

/// Serves the router on 127.0.0.1:0 for one fixed user (kubectl sends no credentials over plain
/// HTTP, so the listener stands for the user); returns the base URL.
pub async fn serve_as(api: &Arc<ApiServer>, user: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let identity = Identity::new(user, groups_of(user));
    let router = api
        .router()
        .layer(middleware::from_fn(move |mut req: Request, next: Next| {
            let identity = identity.clone();
            async move {
                req.extensions_mut().insert(identity);
                next.run(req).await
            }
        }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}")
}

/// Reads the first `n` watch events of a streaming response as `TYPE name`.
pub async fn watch_events(resp: Response, n: usize) -> Vec<String> {
    use http_body_util::BodyExt as _;
    let mut body = resp.into_body();
    let mut out = Vec::new();
    let mut buf = String::new();
    while out.len() < n {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame())
            .await
            .expect("an event in time")
            .expect("the stream goes on")
            .unwrap();
        if let Ok(d) = frame.into_data() {
            buf.push_str(std::str::from_utf8(&d).unwrap());
            while let Some(i) = buf.find('\n') {
                let line: String = buf.drain(..=i).collect();
                let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
                out.push(format!(
                    "{} {}",
                    v["type"].as_str().unwrap(),
                    v["object"]["metadata"]["name"].as_str().unwrap()
                ));
            }
        }
    }
    out
}
