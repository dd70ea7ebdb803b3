//! Request metrics for the front door: requests by route and status, latency histogram by route,
//! and the authorization decisions every surface reports ([`Decisions`]).
//! Labels are bounded (route families, fixed endpoint names and configured prefixes, numeric
//! status; surfaces and decisions from fixed sets), never raw paths: a hostile client choosing
//! paths cannot grow the series.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;

use crate::sharded::{ShardedCounter, ShardedHistogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub route: Arc<String>,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabel {
    pub route: Arc<String>,
}

/// HTTP metrics (per-worker cells: [`crate::sharded`]).
#[derive(Clone)]
pub(crate) struct HttpMetrics {
    pub requests: Family<RequestLabels, ShardedCounter>,
    pub latency: Family<RouteLabel, ShardedHistogram, fn() -> ShardedHistogram>,
}

impl HttpMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::<RequestLabels, ShardedCounter>::default();
        let latency: Family<RouteLabel, ShardedHistogram, fn() -> ShardedHistogram> =
            Family::new_with_constructor(|| ShardedHistogram::new(exponential_buckets(0.0005, 2.0, 16)));
        registry.register(
            "kfsec_http_requests",
            "Front-door requests by route (surface, endpoint or configured route prefix) and status",
            requests.clone(),
        );
        registry.register(
            "kfsec_http_request_duration_seconds",
            "Front-door request latency by route (surface, endpoint or configured route prefix)",
            latency.clone(),
        );
        Self { requests, latency }
    }

    /// The series of the configured route labelled `route`, looked up once.
    pub fn route_series(&self, route: &Arc<String>) -> RouteSeries {
        RouteSeries {
            label: route.clone(),
            latency: self.latency.get_or_create(&RouteLabel { route: route.clone() }).clone(),
            ok: self
                .requests
                .get_or_create(&RequestLabels {
                    route: route.clone(),
                    code: 200,
                })
                .clone(),
        }
    }

    /// Counts one answer with `code` after `seconds`, of a configured route (its series, made by
    /// [`Self::route_series`], which needs no lookup for a 200) or of a route labelled so.
    pub fn record(&self, route: Result<&RouteSeries, Arc<String>>, code: u16, seconds: f64) {
        let label = match route {
            Ok(s) if code == 200 => {
                s.ok.inc();
                s.latency.observe(seconds);
                return;
            }
            Ok(s) => {
                s.latency.observe(seconds);
                s.label.clone()
            }
            Err(label) => {
                self.latency
                    .get_or_create(&RouteLabel { route: label.clone() })
                    .observe(seconds);
                label
            }
        };
        self.requests.get_or_create(&RequestLabels { route: label, code }).inc();
    }
}

/// One configured route's series (the same as its labels' in the families: clones share them).
pub(crate) struct RouteSeries {
    /// The route's label (its prefix).
    label: Arc<String>,
    latency: ShardedHistogram,
    /// Its `code="200"` requests.
    ok: ShardedCounter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    surface: &'static str,
    decision: &'static str,
}

/// `kfsec_authz_decisions_total{surface,decision}`: one count per authorization decision, by the
/// surface that asked (`api`, `kfp`, `kfam`, `proxy`, `gatekeeper`, `webhook`…) and its outcome
/// (`allow` or `deny`). Cheap to clone; every clone counts into the same family.
#[derive(Clone, Debug, Default)]
pub struct Decisions {
    family: Family<DecisionLabels, ShardedCounter>,
    /// The front door's own series (its allow/deny of a proxied route), looked up once: the
    /// family's lookup takes a lock every core shares.
    proxy: Arc<[std::sync::OnceLock<ShardedCounter>; 2]>,
}

impl Decisions {
    /// A new family, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let d = Self::default();
        registry.register(
            "kfsec_authz_decisions",
            "Authorization decisions by surface (api, kfp, kfam, proxy, gatekeeper, webhook) and decision (allow, deny)",
            d.family.clone(),
        );
        d
    }

    fn series(&self, surface: &'static str, allowed: bool) -> ShardedCounter {
        let decision = if allowed { "allow" } else { "deny" };
        self.family.get_or_create(&DecisionLabels { surface, decision }).clone()
    }

    /// Counts one decision of `surface` (a fixed name, never request data).
    pub fn record(&self, surface: &'static str, allowed: bool) {
        if surface == "proxy" {
            self.proxy[usize::from(allowed)]
                .get_or_init(|| self.series(surface, allowed))
                .inc();
        } else {
            let decision = if allowed { "allow" } else { "deny" };
            self.family.get_or_create(&DecisionLabels { surface, decision }).inc();
        }
    }

    /// The count so far (tests).
    pub fn count(&self, surface: &'static str, decision: &'static str) -> u64 {
        self.family.get_or_create(&DecisionLabels { surface, decision }).get()
    }
}

/// The IdP's endpoints that get a route label of their own (`dex-<name>`), by the first path
/// segment under the issuer path.
const DEX_ENDPOINTS: &[&str] = &[
    ".well-known",
    "auth",
    "token",
    "keys",
    "userinfo",
    "device",
    "callback",
    "approval",
    "static",
    "logout",
];

/// The gatekeeper's endpoints (under `/authservice/` and `/oauth2/`) that get a label of their own.
const GATEKEEPER_ENDPOINTS: &[&str] = &[
    "oidc",
    "logout",
    "logout-all",
    "check",
    "logged_out",
    "start",
    "sign_in",
    "sign_out",
    "auth",
    "userinfo",
    "callback",
];

/// What the route label of a path is decided from.
pub(crate) struct RouteNames<'a> {
    /// The issuer's path (`/dex`), empty when the IdP is mounted elsewhere.
    pub idp_path: &'a str,
    /// Configured routes.
    pub routes: &'a [crate::proxy::Route],
    /// The mounted surface owning the path, if any (`api`, `kfp`, `kfam`, `dashboard`).
    pub mount: Option<&'static str>,
    /// Whether kfsec's own pages own the path.
    pub page: bool,
}

/// The bounded route label of `path`: `dex-<endpoint>`, `authservice-<endpoint>`,
/// `oauth2-<endpoint>`, the mounted surface's name, a configured route's prefix (the longest
/// that matches, as the proxy chooses), `pages`, `home`, or `other`. A configured route's label
/// is given as the route's index (its label and series are made once, at start).
pub(crate) fn route_label(names: &RouteNames<'_>, path: &str) -> Result<usize, String> {
    let first = |rest: &str| rest.split('/').next().unwrap_or_default().to_owned();
    if !names.idp_path.is_empty()
        && let Some(rest) = path.strip_prefix(names.idp_path)
        && (rest.is_empty() || rest.starts_with('/'))
    {
        let seg = first(rest.trim_start_matches('/'));
        return Err(match DEX_ENDPOINTS.contains(&seg.as_str()) {
            true => format!("dex-{}", seg.trim_start_matches('.')),
            false => "dex-other".into(),
        });
    }
    for family in ["authservice", "oauth2"] {
        if let Some(rest) = path.strip_prefix('/').and_then(|p| p.strip_prefix(family))
            && let Some(rest) = rest.strip_prefix('/')
        {
            let seg = first(rest);
            return Err(match GATEKEEPER_ENDPOINTS.contains(&seg.as_str()) {
                true => format!("{family}-{seg}"),
                false => format!("{family}-other"),
            });
        }
    }
    if let Some((i, _)) = names
        .routes
        .iter()
        .enumerate()
        .filter(|(_, r)| r.matches(path))
        .max_by_key(|(_, r)| r.prefix.len())
        && names.mount.is_none()
    {
        return Ok(i);
    }
    if let Some(m) = names.mount {
        return Err(m.into());
    }
    if path == "/" {
        return Err("home".into());
    }
    if names.page {
        return Err("pages".into());
    }
    Err("other".into())
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition, for scrapers that do not ask
/// for OpenMetrics (`curl`, `promtool check metrics`): counters are named with their `_total`
/// in `# HELP`/`# TYPE`, an info family becomes a gauge named `<name>_info`, and the `# UNIT`
/// and `# EOF` lines go. Samples are unchanged.
pub(crate) fn prometheus_text(openmetrics: &str) -> String {
    let mut renamed = std::collections::HashMap::new();
    for line in openmetrics.lines() {
        let mut words = line.strip_prefix("# TYPE ").unwrap_or_default().split(' ');
        if let (Some(name), Some(kind)) = (words.next(), words.next()) {
            match kind {
                "counter" => renamed.insert(name, (format!("{name}_total"), "counter")),
                "info" => renamed.insert(name, (format!("{name}_info"), "gauge")),
                _ => None,
            };
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find(|p| line.starts_with(p));
        match meta {
            Some(prefix) => {
                let rest = &line[prefix.len()..];
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                match renamed.get(name) {
                    Some((new, kind)) if prefix == "# TYPE " => out.push_str(&format!("# TYPE {new} {kind}")),
                    Some((new, _)) => out.push_str(&format!("# HELP {new} {tail}")),
                    None => out.push_str(line),
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_routes_own_series_count_into_the_families() {
        let mut registry = Registry::default();
        let m = HttpMetrics::register(&mut registry);
        let app = Arc::new("/app/".to_owned());
        let series = m.route_series(&app);
        m.record(Ok(&series), 200, 0.001);
        m.record(Ok(&series), 200, 0.001);
        m.record(Ok(&series), 404, 0.001);
        m.record(Err(Arc::new("home".to_owned())), 200, 0.001);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        for want in [
            r#"kfsec_http_requests_total{route="/app/",code="200"} 2"#,
            r#"kfsec_http_requests_total{route="/app/",code="404"} 1"#,
            r#"kfsec_http_requests_total{route="home",code="200"} 1"#,
            r#"kfsec_http_request_duration_seconds_count{route="/app/"} 3"#,
            r#"kfsec_http_request_duration_seconds_count{route="home"} 1"#,
        ] {
            assert!(out.contains(want), "{want} in\n{out}");
        }
    }

    #[test]
    fn the_text_format_names_counters_and_infos_as_their_samples() {
        let mut registry = Registry::default();
        let c = prometheus_client::metrics::counter::Counter::<u64>::default();
        c.inc();
        registry.register("kfsec_x", "An x", c);
        registry.register(
            "kfsec_build",
            "Build",
            prometheus_client::metrics::info::Info::new(vec![("version".to_owned(), "1".to_owned())]),
        );
        let mut om = String::new();
        prometheus_client::encoding::text::encode(&mut om, &registry).unwrap();
        let text = prometheus_text(&om);
        assert_eq!(
            text,
            "# HELP kfsec_x_total An x.\n# TYPE kfsec_x_total counter\nkfsec_x_total 1\n\
             # HELP kfsec_build_info Build.\n# TYPE kfsec_build_info gauge\nkfsec_build_info{version=\"1\"} 1\n",
            "{om}"
        );
    }

    use super::*;

    fn route(prefix: &str) -> crate::proxy::Route {
        crate::proxy::Route::new(prefix, "http://127.0.0.1:1", false, None, None).unwrap()
    }

    #[test]
    fn labels_are_bounded_whatever_the_path() {
        let routes = [route("/jupyter/"), route("/jupyter/lab/")];
        let names = |mount, page| RouteNames {
            idp_path: "/dex",
            routes: &routes,
            mount,
            page,
        };
        let label = |names: &RouteNames<'_>, path: &str| match route_label(names, path) {
            Ok(i) => routes[i].prefix.clone(),
            Err(name) => name,
        };
        let plain = names(None, false);
        for (path, want) in [
            ("/dex/token", "dex-token"),
            ("/dex/auth/local/login", "dex-auth"),
            ("/dex/.well-known/openid-configuration", "dex-well-known"),
            ("/dex/anything-else/x", "dex-other"),
            ("/dex", "dex-other"),
            ("/dexter/token", "other"),
            ("/authservice/check/x", "authservice-check"),
            ("/authservice/oidc/callback", "authservice-oidc"),
            ("/authservice/zzz", "authservice-other"),
            ("/oauth2/auth", "oauth2-auth"),
            ("/oauth2/random-123", "oauth2-other"),
            ("/jupyter/x", "/jupyter/"),
            ("/jupyter/lab/tree", "/jupyter/lab/"),
            ("/", "home"),
            ("/random/abc123", "other"),
        ] {
            assert_eq!(label(&plain, path), want, "{path}");
        }
        assert_eq!(label(&names(Some("kfp"), false), "/pipeline/apis/v2beta1/runs"), "kfp");
        assert_eq!(label(&names(None, true), "/workspaces/a/contributors"), "pages");
        // A proxied route's label is its index: its label and series were made at start.
        assert_eq!(route_label(&plain, "/jupyter/x"), Ok(0));
    }

    #[test]
    fn decisions_count_by_surface_and_outcome() {
        let d = Decisions::default();
        d.record("api", false);
        d.record("api", true);
        d.record("api", false);
        assert_eq!(d.count("api", "deny"), 2);
        assert_eq!(d.count("api", "allow"), 1);
        assert_eq!(d.count("kfp", "allow"), 0);
    }
}
