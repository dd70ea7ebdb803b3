//! Request-path and query parsing: Kubernetes' URL layout (`/api/v1/…`, `/apis/{g}/{v}/…`,
//! `namespaces/{ns}/…`, subresources) mapped onto the registry.
//!
//! Invariants: every path segment is percent-decoded exactly once and an empty or `/`-bearing
//! segment never reaches a store key; a path naming anything not in the registry, or a
//! namespaced type at a cluster path with a name (or the reverse), is a 404.

use crate::registry::{self, Resource};
use crate::status::ApiError;

/// A resource request target.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub res: &'static Resource,
    /// The namespace from the path (`namespaces/{ns}/…`).
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// What a path addresses.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    Version,
    Api,
    Apis,
    ApiGroup(String),
    ResourceList { group: String, version: String },
    OpenApiV3Root,
    OpenApiV3(String),
    OpenApiV2,
    Resource(Target),
}

/// Percent-decodes `s` (`+` as space when `plus` is set); invalid escapes stay as they are.
pub(crate) fn percent_decode(s: &str, plus: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%'
            && let Some(v) = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if plus && c == b'+' { b' ' } else { c });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a request path.
pub(crate) fn parse(path: &str) -> Result<Route, ApiError> {
    let mut segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| percent_decode(s, false))
        .collect();
    if segs.len() > 1 && segs.last().is_some_and(String::is_empty) {
        segs.pop();
    }
    if segs.iter().any(|s| s.is_empty() || s.contains('/')) {
        return Err(ApiError::NoRoute);
    }
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (group, version, rest) = match s.as_slice() {
        ["version"] => return Ok(Route::Version),
        ["openapi", "v2"] => return Ok(Route::OpenApiV2),
        ["openapi", "v3"] => return Ok(Route::OpenApiV3Root),
        ["openapi", "v3", rest @ ..] => return Ok(Route::OpenApiV3(rest.join("/"))),
        ["api"] => return Ok(Route::Api),
        ["apis"] => return Ok(Route::Apis),
        ["apis", g] => return Ok(Route::ApiGroup((*g).to_owned())),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::NoRoute),
    };
    if !registry::serves_group_version(group, version) {
        return Err(ApiError::NoRoute);
    }
    if rest.is_empty() {
        return Ok(Route::ResourceList {
            group: group.to_owned(),
            version: version.to_owned(),
        });
    }
    let (namespace, rest) = match rest {
        ["namespaces", ns, next, tail @ ..] if !(group.is_empty() && matches!(*next, "status" | "finalize")) => {
            let mut r = vec![*next];
            r.extend_from_slice(tail);
            (Some((*ns).to_owned()), r)
        }
        other => (None, other.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [p] => (*p, None, None),
        [p, n] => (*p, Some((*n).to_owned()), None),
        [p, n, sub] => (*p, Some((*n).to_owned()), Some((*sub).to_owned())),
        _ => return Err(ApiError::NoRoute),
    };
    let res = registry::find(group, version, plural).ok_or(ApiError::NoRoute)?;
    if namespace.is_some() && !res.namespaced {
        return Err(ApiError::NoRoute);
    }
    if namespace.is_none() && res.namespaced && name.is_some() {
        return Err(ApiError::NoRoute);
    }
    if let Some(sub) = &sub
        && res.subresource(sub).is_none()
    {
        return Err(ApiError::NoRoute);
    }
    Ok(Route::Resource(Target {
        res,
        namespace,
        name,
        subresource: sub,
    }))
}

/// Decoded query parameters. A repeated parameter counts by its first value, as
/// kube-apiserver's parameter decoding (`url.Values` through apimachinery's conversions) reads
/// it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(q: Option<&str>) -> Self {
        Self(
            q.unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k, true), percent_decode(v, true))
                })
                .collect(),
        )
    }

    pub(crate) fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(qk, _)| qk == k).map(|(_, v)| v.as_str())
    }

    /// A boolean parameter (`watch`, …), the one reading of every boolean kfsec accepts, as
    /// apimachinery's `Convert_Slice_string_To_bool`: absent, `0` or `false` in any case is
    /// false; any other value, the empty one included, is true (`watch=true`, `True`, `1`, `t`,
    /// `watch=` all start a watch, and no value is refused).
    pub(crate) fn flag(&self, k: &str) -> bool {
        match self.get(k) {
            None => false,
            Some(v) => !(v == "0" || v.eq_ignore_ascii_case("false")),
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn target(p: &str) -> Target {
        match parse(p).unwrap() {
            Route::Resource(t) => t,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn paths() {
        let t = target("/api/v1/namespaces/x/pods/p");
        assert_eq!(
            (t.res.plural, t.namespace.as_deref(), t.name.as_deref()),
            ("pods", Some("x"), Some("p"))
        );
        let t = target("/api/v1/pods");
        assert_eq!((t.res.plural, t.namespace, t.name), ("pods", None, None));
        let t = target("/api/v1/namespaces/x");
        assert_eq!(
            (t.res.plural, t.namespace, t.name.as_deref()),
            ("namespaces", None, Some("x"))
        );
        let t = target("/api/v1/namespaces/x/status");
        assert_eq!(
            (t.res.plural, t.name.as_deref(), t.subresource.as_deref()),
            ("namespaces", Some("x"), Some("status"))
        );
        let t = target("/apis/kubeflow.org/v1/profiles/p");
        assert_eq!((t.res.plural, t.name.as_deref()), ("profiles", Some("p")));
        let t = target("/apis/rbac.authorization.k8s.io/v1/clusterroles/system%3Aaggregate");
        assert_eq!(t.name.as_deref(), Some("system:aggregate"));
        let t = target("/apis/authorization.k8s.io/v1/namespaces/x/localsubjectaccessreviews");
        assert_eq!(t.namespace.as_deref(), Some("x"));
        assert!(matches!(parse("/api").unwrap(), Route::Api));
        assert!(matches!(parse("/api/v1").unwrap(), Route::ResourceList { .. }));
        assert!(matches!(parse("/apis/kubeflow.org").unwrap(), Route::ApiGroup(_)));
        assert!(
            matches!(parse("/openapi/v3/apis/kubeflow.org/v1").unwrap(), Route::OpenApiV3(p) if p == "apis/kubeflow.org/v1")
        );
    }

    #[test]
    fn not_found_paths() {
        for p in [
            "/api/v2",
            "/api/v1/widgets",
            "/api/v1/pods/p",
            "/apis/kubeflow.org/v1/namespaces/x/profiles",
            "/api/v1/namespaces/x/configmaps/c/status",
            "/api/v1/namespaces/x/pods/p/log",
            "/api/v1/namespaces/x/pods/a%2Fb",
            "/api/v1/namespaces//pods",
            "/api/v1/namespaces/x/pods/p/status/extra",
            "/nope",
        ] {
            assert!(parse(p).is_err(), "{p}");
        }
    }

    #[test]
    fn queries() {
        let q = Query::parse(Some("labelSelector=app%3Dweb%2Ctier+in+(a)&watch=1&limit=5&limit=6"));
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert!(q.flag("watch"));
        assert_eq!(q.get("limit"), Some("5"));
        assert_eq!(q.get("nope"), None);
    }

    /// Every spelling a client sends: Go's `strconv.FormatBool` (`true`), Python's `str(True)`
    /// (`True`), `1`, `t`, `TRUE`, the bare key — true; absent, `0`, `false` in any case — false.
    #[test]
    fn boolean_parameters_read_as_kube_apiserver_reads_them() {
        for v in ["true", "True", "TRUE", "1", "t", "T", "yes", "", "on"] {
            let q = Query::parse(Some(&format!("watch={v}")));
            assert!(q.flag("watch"), "watch={v}");
        }
        assert!(Query::parse(Some("watch")).flag("watch"));
        for v in ["0", "false", "False", "FALSE", "fAlSe"] {
            let q = Query::parse(Some(&format!("watch={v}")));
            assert!(!q.flag("watch"), "watch={v}");
        }
        assert!(!Query::parse(None).flag("watch"));
        assert!(!Query::parse(Some("watchx=1")).flag("watch"));
        // The first of repeated values counts.
        assert!(!Query::parse(Some("watch=false&watch=true")).flag("watch"));
        assert!(Query::parse(Some("watch=True&watch=0")).flag("watch"));
    }
}
