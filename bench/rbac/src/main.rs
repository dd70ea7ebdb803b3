//! kfsec-authz vs cedar-policy vs casbin: the same Kubeflow RBAC policy (10,000 profiles, an owner
//! and 3 contributors each, Kubeflow's default ClusterRoles), the same fixed sample of requests
//! (half allowed, half denied), agreement checked, then single-threaded decisions/s for each.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hint::black_box;
use std::str::FromStr;
use std::time::{Duration, Instant};

use casbin::{CoreApi, DefaultModel, Enforcer, MemoryAdapter, MgmtApi};
use cedar_policy::{
    Authorizer as CedarAuthorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, PolicySet, Request, RestrictedExpression,
};
use kfsec_authz::{Attributes, Authorizer, kubeflow_default_cluster_roles};
use kfsec_types::rbac::{PolicyRule, RoleBinding, RoleRef, Subject};

/// Profiles unless `RBAC_BENCH_PROFILES` says otherwise.
const DEFAULT_PROFILES: usize = 10_000;
const CONTRIBUTORS: usize = 3;
const SAMPLE: usize = 10_000;
const WARMUP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(2);
const LEVELS: [&str; 3] = ["admin", "edit", "view"];
const VERBS: [&str; 4] = ["get", "list", "create", "delete"];
const RESOURCES: [(&str, &str); 10] = [
    ("pipelines.kubeflow.org", "experiments"),
    ("pipelines.kubeflow.org", "runs"),
    ("pipelines.kubeflow.org", "pipelines"),
    ("kubeflow.org", "notebooks"),
    ("kubeflow.org", "experiments"),
    ("serving.kserve.io", "inferenceservices"),
    ("", "pods"),
    ("", "secrets"),
    ("", "persistentvolumeclaims"),
    ("rbac.authorization.k8s.io", "rolebindings"),
];

type Error = Box<dyn std::error::Error>;

/// splitmix64: a fixed, dependency-free PRNG so every run uses the same policy and sample.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn user(i: usize) -> String {
    format!("user{i}@example.com")
}

fn namespace(i: usize) -> String {
    format!("profile-{i}")
}

/// `(user, namespace, level)` for every binding.
struct Policy {
    profiles: usize,
    bindings: Vec<(usize, usize, &'static str)>,
    members: Vec<Vec<usize>>,
}

fn policy(rng: &mut Rng, profiles: usize) -> Policy {
    let mut bindings = Vec::with_capacity(profiles * (1 + CONTRIBUTORS));
    let mut members = vec![Vec::new(); profiles];
    for (ns, members) in members.iter_mut().enumerate() {
        bindings.push((ns, ns, "admin"));
        members.push(ns);
        let mut chosen = BTreeSet::new();
        while chosen.len() < CONTRIBUTORS {
            let u = rng.below(profiles);
            if u != ns {
                chosen.insert(u);
            }
        }
        for u in chosen {
            let level = if rng.below(2) == 0 { "edit" } else { "view" };
            bindings.push((u, ns, level));
            members.push(u);
        }
    }
    Policy {
        profiles,
        bindings,
        members,
    }
}

#[derive(Clone, Copy)]
struct Query {
    user: usize,
    ns: usize,
    resource: usize,
    verb: usize,
}

fn attrs(q: &Query) -> Attributes {
    let (group, resource) = RESOURCES[q.resource];
    Attributes::resource(
        user(q.user),
        vec!["system:authenticated".to_owned()],
        VERBS[q.verb],
        group,
        resource,
        namespace(q.ns),
    )
}

// ---------------------------------------------------------------- kfsec

fn build_kfsec(policy: &Policy) -> Result<Authorizer, Error> {
    let role_bindings = policy
        .bindings
        .iter()
        .map(|&(u, ns, level)| {
            let name = if level == "admin" {
                "namespaceAdmin".to_owned()
            } else {
                format!("user-{u}-clusterrole-{level}")
            };
            RoleBinding::new(
                namespace(ns),
                name,
                RoleRef::cluster_role(format!("kubeflow-{level}")),
                vec![Subject::user(user(u))],
            )
        })
        .collect();
    Ok(Authorizer::from_objects(
        vec![],
        kubeflow_default_cluster_roles(),
        role_bindings,
        vec![],
    )?)
}

/// The aggregated rules of kubeflow-admin/edit/view, as kfsec resolved them.
fn level_rules(authz: &Authorizer) -> HashMap<&'static str, Vec<PolicyRule>> {
    let index = authz.read();
    LEVELS
        .iter()
        .map(|level| {
            let rules = index
                .cluster_role_rules(&format!("kubeflow-{level}"))
                .map(<[PolicyRule]>::to_vec)
                .unwrap_or_default();
            (*level, rules)
        })
        .collect()
}

/// Rules the other encodings can express for nameless resource requests.
fn encodable(rule: &PolicyRule) -> bool {
    rule.resource_names.is_empty() && !rule.resources.is_empty()
}

// ---------------------------------------------------------------- cedar

fn uid(kind: &str, id: &str) -> Result<EntityUid, Error> {
    Ok(EntityUid::from_type_name_and_id(
        EntityTypeName::from_str(kind)?,
        EntityId::new(id),
    ))
}

/// `(context.FIELD == "a" || context.FIELD == "b")`: equality chains evaluate faster in Cedar
/// than `["a", "b"].contains(..)`, which builds a set per evaluation.
fn cedar_any_of(field: &str, items: &[String]) -> String {
    let terms: Vec<String> = items.iter().map(|s| format!("context.{field} == {s:?}")).collect();
    format!("({})", terms.join(" || "))
}

/// One policy per rule, at the lowest level holding it (admin ⊃ edit ⊃ view through role nesting).
fn cedar_policies(levels: &HashMap<&'static str, Vec<PolicyRule>>) -> Result<PolicySet, Error> {
    let mut text = String::new();
    let mut placed: HashSet<&PolicyRule> = HashSet::new();
    for level in ["view", "edit", "admin"] {
        for rule in levels[level].iter().filter(|r| encodable(r)) {
            if !placed.insert(rule) {
                continue;
            }
            assert!(
                !rule.api_groups.iter().chain(&rule.resources).any(|s| s.contains('*')),
                "wildcard groups/resources are not encoded: {rule:?}"
            );
            // Verbs as an equality chain in the condition: measured faster than an `action in [..]`
            // scope, whose set Cedar rebuilds on every evaluation.
            let verbs = if rule.verbs.iter().any(|v| v == "*") {
                "true".to_owned()
            } else {
                let terms: Vec<String> = rule.verbs.iter().map(|v| format!("action == Action::{v:?}")).collect();
                format!("({})", terms.join(" || "))
            };
            text.push_str(&format!(
                "permit(principal, action, resource) when {{ {} && {} && {verbs} && principal in resource.{level} }};\n",
                cedar_any_of("apiGroup", &rule.api_groups),
                cedar_any_of("resource", &rule.resources),
            ));
        }
    }
    Ok(text.parse()?)
}

fn cedar_entities(policy: &Policy) -> Result<Entities, Error> {
    let mut entities = Vec::new();
    for ns in 0..policy.profiles {
        let name = namespace(ns);
        let role = |level: &str| uid("Role", &format!("{name}/{level}"));
        entities.push(Entity::new_no_attrs(role("view")?, HashSet::new()));
        entities.push(Entity::new_no_attrs(role("edit")?, HashSet::from([role("view")?])));
        entities.push(Entity::new_no_attrs(role("admin")?, HashSet::from([role("edit")?])));
        let attrs: HashMap<String, RestrictedExpression> = LEVELS
            .iter()
            .map(|level| Ok(((*level).to_owned(), RestrictedExpression::new_entity_uid(role(level)?))))
            .collect::<Result<_, Error>>()?;
        entities.push(Entity::new(uid("Namespace", &name)?, attrs, HashSet::new())?);
    }
    let mut parents: HashMap<usize, HashSet<EntityUid>> = HashMap::new();
    for &(u, ns, level) in &policy.bindings {
        parents
            .entry(u)
            .or_default()
            .insert(uid("Role", &format!("{}/{level}", namespace(ns)))?);
    }
    for (u, parents) in parents {
        entities.push(Entity::new_no_attrs(uid("User", &user(u))?, parents));
    }
    Ok(Entities::from_entities(entities, None)?)
}

fn cedar_request(q: &Query) -> Result<Request, Error> {
    let (group, resource) = RESOURCES[q.resource];
    let context = Context::from_pairs([
        (
            "apiGroup".to_owned(),
            RestrictedExpression::new_string(group.to_owned()),
        ),
        (
            "resource".to_owned(),
            RestrictedExpression::new_string(resource.to_owned()),
        ),
        ("name".to_owned(), RestrictedExpression::new_string(String::new())),
    ])?;
    Ok(Request::new(
        uid("User", &user(q.user))?,
        uid("Action", VERBS[q.verb])?,
        uid("Namespace", &namespace(q.ns))?,
        context,
        None,
    )?)
}

// ---------------------------------------------------------------- casbin

const CASBIN_MODEL: &str = r#"
[request_definition]
r = sub, dom, obj, act

[policy_definition]
p = sub, obj, act

[role_definition]
g = _, _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = r.obj == p.obj && (r.act == p.act || p.act == "*") && g(r.sub, p.sub, r.dom)
"#;

async fn build_casbin(policy: &Policy, levels: &HashMap<&'static str, Vec<PolicyRule>>) -> Result<Enforcer, Error> {
    let model = DefaultModel::from_str(CASBIN_MODEL).await?;
    let mut enforcer = Enforcer::new(model, MemoryAdapter::default()).await?;
    let mut lines = BTreeSet::new();
    for level in LEVELS {
        for rule in levels[level].iter().filter(|r| encodable(r)) {
            for group in &rule.api_groups {
                for resource in &rule.resources {
                    for verb in &rule.verbs {
                        lines.insert(vec![
                            format!("kubeflow-{level}"),
                            format!("{group}/{resource}"),
                            verb.clone(),
                        ]);
                    }
                }
            }
        }
    }
    let p_lines = lines.len();
    enforcer.add_policies(lines.into_iter().collect()).await?;
    let grouping: Vec<Vec<String>> = policy
        .bindings
        .iter()
        .map(|&(u, ns, level)| vec![user(u), format!("kubeflow-{level}"), namespace(ns)])
        .collect();
    enforcer.add_grouping_policies(grouping).await?;
    println!("casbin: {p_lines} p lines, {} g lines", policy.bindings.len());
    Ok(enforcer)
}

fn casbin_args(q: &Query) -> (String, String, String, String) {
    let (group, resource) = RESOURCES[q.resource];
    (
        user(q.user),
        namespace(q.ns),
        format!("{group}/{resource}"),
        VERBS[q.verb].to_owned(),
    )
}

// ---------------------------------------------------------------- measurement

/// Single-threaded decisions per second of `decide` over the sample (warm-up, then timed).
fn measure(name: &str, n: usize, mut decide: impl FnMut(usize) -> bool) -> f64 {
    let run = |budget: Duration, decide: &mut dyn FnMut(usize) -> bool| {
        let start = Instant::now();
        let mut count = 0usize;
        let mut allowed = 0usize;
        loop {
            for _ in 0..16 {
                allowed += usize::from(black_box(decide(count % n)));
                count += 1;
            }
            let elapsed = start.elapsed();
            if elapsed >= budget {
                black_box(allowed);
                return count as f64 / elapsed.as_secs_f64();
            }
        }
    };
    run(WARMUP, &mut decide);
    let rate = run(MEASURE, &mut decide);
    println!("{name:<22} {rate:>14.0} decisions/s  ({:>9.1} ns/decision)", 1e9 / rate);
    rate
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let mut rng = Rng(0x6b66_7365_6372_6261);
    let profiles = std::env::var("RBAC_BENCH_PROFILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_PROFILES);
    let policy = policy(&mut rng, profiles);
    println!(
        "policy: {profiles} profiles x (1 owner + {CONTRIBUTORS} contributors) = {} RoleBindings",
        policy.bindings.len()
    );

    let t = Instant::now();
    let kfsec = build_kfsec(&policy)?;
    println!("kfsec: built in {:?} ({:?})", t.elapsed(), kfsec.stats());
    let levels = level_rules(&kfsec);

    let t = Instant::now();
    let cedar_set = cedar_policies(&levels)?;
    let cedar_entities = cedar_entities(&policy)?;
    println!(
        "cedar: built in {:?} ({} policies)",
        t.elapsed(),
        cedar_set.policies().count()
    );
    let cedar = CedarAuthorizer::new();

    let t = Instant::now();
    let casbin = build_casbin(&policy, &levels).await?;
    println!("casbin: built in {:?}", t.elapsed());

    // The sample: half allowed, half denied (by kfsec), shuffled.
    let (mut allowed, mut denied) = (Vec::new(), Vec::new());
    while allowed.len() < SAMPLE / 2 || denied.len() < SAMPLE / 2 {
        let ns = rng.below(profiles);
        let user = if rng.below(10) < 7 {
            policy.members[ns][rng.below(policy.members[ns].len())]
        } else {
            rng.below(profiles)
        };
        let q = Query {
            user,
            ns,
            resource: rng.below(RESOURCES.len()),
            verb: rng.below(VERBS.len()),
        };
        let bucket = if kfsec.allows(&attrs(&q)) {
            &mut allowed
        } else {
            &mut denied
        };
        if bucket.len() < SAMPLE / 2 {
            bucket.push(q);
        }
    }
    let mut sample: Vec<Query> = allowed.into_iter().chain(denied).collect();
    for i in (1..sample.len()).rev() {
        sample.swap(i, rng.below(i + 1));
    }

    let kfsec_attrs: Vec<Attributes> = sample.iter().map(attrs).collect();
    let cedar_requests: Vec<Request> = sample.iter().map(cedar_request).collect::<Result<_, _>>()?;
    let casbin_requests: Vec<(String, String, String, String)> = sample.iter().map(casbin_args).collect();

    // Agreement.
    let mut agree = 0;
    let mut shown = 0;
    for i in 0..sample.len() {
        let k = kfsec.authorize(&kfsec_attrs[i]).is_allowed();
        let c = cedar
            .is_authorized(&cedar_requests[i], &cedar_set, &cedar_entities)
            .decision()
            == CedarDecision::Allow;
        let b = casbin.enforce(casbin_requests[i].clone())?;
        if k == c && k == b {
            agree += 1;
        } else if shown < 5 {
            shown += 1;
            println!("DISAGREE kfsec={k} cedar={c} casbin={b}: {:?}", casbin_requests[i]);
        }
    }
    let allowed = kfsec_attrs.iter().filter(|a| kfsec.allows(a)).count();
    println!(
        "agreement: {agree}/{} decisions identical across kfsec, cedar, casbin ({allowed} allowed, {} denied)",
        sample.len(),
        sample.len() - allowed
    );

    println!(
        "\nsingle-threaded, {} distinct requests, warm-up {WARMUP:?}, measured {MEASURE:?}:",
        sample.len()
    );
    let n = sample.len();
    // RBAC_BENCH_ONLY=kfsec|cedar|casbin times one engine (for profiling); ratios need all three.
    let only = std::env::var("RBAC_BENCH_ONLY").unwrap_or_default();
    let enabled = |engine: &str| only.is_empty() || only == engine;
    let mut kfsec_rate = f64::NAN;
    let mut kfsec_bool = f64::NAN;
    if enabled("kfsec") {
        kfsec_rate = measure("kfsec authorize", n, |i| kfsec.authorize(&kfsec_attrs[i]).is_allowed());
        kfsec_bool = measure("kfsec allows", n, |i| kfsec.allows(&kfsec_attrs[i]));
    }
    let mut cedar_rate = f64::NAN;
    if enabled("cedar") {
        cedar_rate = measure("cedar is_authorized", n, |i| {
            cedar
                .is_authorized(&cedar_requests[i], &cedar_set, &cedar_entities)
                .decision()
                == CedarDecision::Allow
        });
    }
    let mut casbin_rate = f64::NAN;
    if enabled("casbin") {
        casbin_rate = measure("casbin enforce", n, |i| {
            let (u, d, o, a) = &casbin_requests[i];
            casbin
                .enforce((u.as_str(), d.as_str(), o.as_str(), a.as_str()))
                .unwrap_or(false)
        });
    }
    println!(
        "\nkfsec/cedar  = {:.1}x   (allows: {:.1}x)",
        kfsec_rate / cedar_rate,
        kfsec_bool / cedar_rate
    );
    println!(
        "kfsec/casbin = {:.1}x   (allows: {:.1}x)",
        kfsec_rate / casbin_rate,
        kfsec_bool / casbin_rate
    );
    if agree != sample.len() {
        return Err("engines disagree".into());
    }
    Ok(())
}
