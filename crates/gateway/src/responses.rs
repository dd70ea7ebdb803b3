//! The one place the front door routes its own refusals (400 bad path, 401, 403 cross-site,
//! 404, 502 upstream) to a renderer: the renderer of the mounted surface that owns the path
//! (handed over by the composition as a [`Mount`]), or an HTML page for browsers and proxied
//! routes. The gateway knows no surface's paths or wire format; surfaces render in their own
//! crates (`api::status`, `kfp::error`, KFAM in `profiles`).
//!
//! Invariants: every refusal is a [`Refusal`] (client-facing text only) and leaves with
//! `Cache-Control: no-store`; a 401 carries `WWW-Authenticate`.

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kfsec_idp::authn::Surface;
use kfsec_types::{Refusal, RefusalKind};

/// How a surface writes a refusal in its protocol's format.
pub type RenderRefusal = Arc<dyn Fn(&Refusal) -> Response + Send + Sync>;

/// A surface mounted on the front door, as the gateway sees it: the paths it owns, the
/// audience policy for its service-account tokens, and its refusal renderer.
#[derive(Clone)]
pub struct Mount {
    /// Its name in metrics (`route` and `surface` labels): `api`, `kfp`, `kfam`, `dashboard`.
    pub name: &'static str,
    /// Owned paths: an entry ending in `/` owns every path under it, any other entry that exact
    /// path. The most specific entry of all mounts wins (exact, then the longest prefix).
    pub paths: Vec<&'static str>,
    /// The surface its credentials are checked for.
    pub surface: Surface<'static>,
    /// Its refusal renderer.
    pub render: RenderRefusal,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount")
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

impl Mount {
    /// How specifically this mount owns `path`: `None` if not at all, longer (exact highest) wins.
    fn specificity(&self, path: &str) -> Option<usize> {
        self.paths
            .iter()
            .filter_map(|p| {
                if p.ends_with('/') {
                    path.starts_with(p).then_some(p.len())
                } else {
                    (path == *p).then_some(usize::MAX)
                }
            })
            .max()
    }
}

/// The mounted surfaces.
#[derive(Debug, Clone, Default)]
pub struct Mounts {
    mounts: Vec<Mount>,
    /// The second bytes of the owned paths (after their `/`), as a bit set: a path whose second
    /// byte is not among them is nobody's (most proxied paths), found without a look at each.
    second: [u64; 4],
    /// Whether an owned path is shorter than two bytes (`/`): then every path is looked at.
    short: bool,
}

impl Mounts {
    /// The surfaces in `mounts`.
    pub fn new(mounts: Vec<Mount>) -> Self {
        let mut second = [0u64; 4];
        let mut short = false;
        for p in mounts.iter().flat_map(|m| &m.paths) {
            match p.as_bytes().get(1) {
                Some(&b) => second[usize::from(b >> 6)] |= 1 << (b & 63),
                None => short = true,
            }
        }
        Self { mounts, second, short }
    }

    /// The mount that owns `path`, if any.
    pub fn owner(&self, path: &str) -> Option<&Mount> {
        // (an entry owns only paths that start with it: a path of two or more bytes, only by
        // an entry of as many, with the same second byte)
        if !self.short {
            let b = *path.as_bytes().get(1)?;
            if self.second[usize::from(b >> 6)] & (1 << (b & 63)) == 0 {
                return None;
            }
        }
        self.mounts
            .iter()
            .filter_map(|m| m.specificity(path).map(|s| (s, m)))
            .max_by_key(|(s, _)| *s)
            .map(|(_, m)| m)
    }

    /// The surface whose credential rules apply to `path`.
    pub fn surface(&self, path: &str) -> Surface<'static> {
        self.owner(path).map_or(Surface::Gateway, |m| m.surface)
    }

    /// `refusal` in the format `path`'s clients understand: its mount's renderer, else an HTML
    /// page.
    pub fn refuse(&self, path: &str, refusal: &Refusal) -> Response {
        let mut resp = match self.owner(path) {
            Some(m) => (m.render)(refusal),
            None => html_refusal(refusal),
        };
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if refusal.kind == RefusalKind::Unauthenticated {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"kfsec\""),
            );
        }
        resp
    }

    /// A refusal of `kind` with `message` (see [`Mounts::refuse`]).
    pub fn error(&self, path: &str, kind: RefusalKind, message: &str) -> Response {
        self.refuse(path, &Refusal::new(kind, message))
    }

    /// 401 for a request without valid credentials.
    pub fn unauthenticated(&self, path: &str) -> Response {
        self.error(path, RefusalKind::Unauthenticated, "Unauthorized")
    }
}

/// A redirect with no body.
pub fn redirect(status: StatusCode, location: &str) -> Response {
    let mut resp = status.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// An HTML error page.
pub fn html_error(status: StatusCode, title: &str, message: &str) -> Response {
    kfsec_idp::error_page(status, title, message)
}

/// The browser family's rendering of a refusal: an HTML page titled with the status phrase.
pub fn html_refusal(r: &Refusal) -> Response {
    let status = StatusCode::from_u16(r.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    html_error(status, r.kind.phrase(), &r.text())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(paths: &[&'static str], surface: Surface<'static>, tag: &'static str) -> Mount {
        Mount {
            name: tag,
            paths: paths.to_vec(),
            surface,
            render: Arc::new(move |r: &Refusal| {
                let status = StatusCode::from_u16(r.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                (status, format!("{tag}:{}", r.text())).into_response()
            }),
        }
    }

    fn mounts() -> Mounts {
        Mounts::new(vec![
            mount(&["/api", "/api/", "/apis", "/apis/"], Surface::Gateway, "k8s"),
            mount(
                &["/pipeline/apis/", "/apis/v1beta1/workflows"],
                Surface::Pipelines,
                "kfp",
            ),
        ])
    }

    async fn text(r: Response) -> String {
        let b = axum::body::to_bytes(r.into_body(), usize::MAX).await.unwrap();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_most_specific_mount_renders_and_browsers_get_html() {
        let m = mounts();
        for (path, want) in [
            ("/api", "k8s:"),
            ("/apis/v1beta1/workflows", "kfp:"),
            ("/apis/v1beta1/workflowsx", "k8s:"),
            ("/apis/kubeflow.org/v1/profiles", "k8s:"),
            ("/pipeline/apis/v1beta1/runs", "kfp:"),
            ("/apix", "<!doctype html>"),
            ("/", "<!doctype html>"),
        ] {
            let r = m.error(path, RefusalKind::Forbidden, "no");
            assert_eq!(r.status(), StatusCode::FORBIDDEN);
            assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store", "{path}");
            assert!(text(r).await.starts_with(want), "{path}");
        }
        assert!(matches!(m.surface("/apis/v1beta1/workflows"), Surface::Pipelines));
        assert!(matches!(m.surface("/apis/v1beta1/x"), Surface::Gateway));
        assert!(matches!(m.surface("/jupyter/"), Surface::Gateway));
        let r = m.unauthenticated("/api/v1/pods");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer realm=\"kfsec\"");
        assert_eq!(text(r).await, "k8s:Unauthorized");
    }

    #[test]
    fn the_owner_found_by_the_second_byte_is_the_one_every_entry_names() {
        let scan = |m: &Mounts, path: &str| {
            m.mounts
                .iter()
                .filter_map(|mt| mt.specificity(path).map(|s| (s, mt.name)))
                .max_by_key(|(s, _)| *s)
                .map(|(_, n)| n)
        };
        let rooted = Mounts::new(vec![
            mount(&["/"], Surface::Gateway, "root"),
            mount(&["/api/"], Surface::Gateway, "k8s"),
        ]);
        for m in [mounts(), rooted, Mounts::default()] {
            for path in [
                "",
                "/",
                "/a",
                "/api",
                "/api/",
                "/api/v1",
                "/apis",
                "/apix",
                "/p",
                "/pipeline/apis/x",
                "/pipeline",
                "/jupyter/",
                "/\u{e9}",
                "//api/",
                "api/",
            ] {
                assert_eq!(m.owner(path).map(|mt| mt.name), scan(&m, path), "{path}");
            }
        }
    }
}
