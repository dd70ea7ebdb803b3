//! `purge`: what a namespace's key reached in the store goes with the namespace — every object,
//! every version and delete marker, under each rule that names `<ns>` ([`Policy::owned`]) — so
//! a later namespace of the same name, perhaps another user's, gets a key to empty prefixes.
//!
//! Invariants: only what the policy gives the namespace alone is touched (shared prefixes
//! never are; a listing that names a key outside the prefix asked for stops the purge before
//! anything of that batch is deleted); each prefix is listed from its start again after every batch until a listing is
//! empty, so an object written meanwhile goes too; an `Error` in a DeleteObjects answer, or an
//! entry still listed after its deletion, is a failure, never a loop; a store without
//! ListObjectVersions (`NotImplemented`) is listed with ListObjectsV2; answers are read up to
//! the listing cap.

use std::collections::HashSet;

use bytes::Bytes;
use http::{HeaderMap, Method};

use crate::gateway::{delete_body_headers, read_capped};
use crate::listing::{self, DeleteObject, DeleteRequest, Listed, ListingError, MAX_LISTING_BYTES};
use crate::policy::Policy;
use crate::sigv4::uri_encode;
use crate::upstream::{Upstream, UpstreamError, UpstreamRequest, empty, full};

/// Entries listed, and deleted, at once (S3's limit for both).
const BATCH: usize = 1000;
/// The most batches one purge of a prefix takes (a store that never runs dry — a workload still
/// writing, or one listing new versions each time — ends in an error; the namespace stays and
/// its delete, retried, goes on from there).
const MAX_BATCHES: usize = 1000;

/// Why a namespace's objects could not all be deleted.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    /// The store could not be reached, or the request not built.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The store refused a request.
    #[error("the store answered {what} in {bucket} with {status} {code}")]
    Refused {
        /// The request.
        what: &'static str,
        /// The bucket.
        bucket: String,
        /// The HTTP status.
        status: u16,
        /// S3's error code, when the answer had one.
        code: String,
    },
    /// The answer was not the S3 document expected.
    #[error("the store's answer to {what} is not S3's")]
    Answer {
        /// The request.
        what: &'static str,
        /// Why.
        #[source]
        source: ListingError,
    },
    /// The store kept an object it was asked to delete.
    #[error("the store did not delete {key:?} in {bucket}: {code}")]
    NotDeleted {
        /// The bucket.
        bucket: String,
        /// The object's key.
        key: String,
        /// S3's error code, or why kfsec thinks so.
        code: String,
    },
    /// An answer could not be read.
    #[error("reading the store's answer: {0}")]
    Body(String),
    /// More than [`MAX_BATCHES`] batches, and the prefix is not empty yet.
    #[error("{bucket}/{prefix} still lists objects after {MAX_BATCHES} batches; delete again to go on")]
    TooMany {
        /// The bucket.
        bucket: String,
        /// The prefix.
        prefix: String,
    },
}

/// Deletes every object (every version) the policy gives `ns` alone; returns how many entries
/// went.
pub async fn purge_namespace(upstream: &Upstream, policy: &Policy, ns: &str) -> Result<usize, PurgeError> {
    let mut deleted = 0;
    for (bucket, prefix) in policy.owned(ns) {
        // Unfinished uploads first: completed later, one would be an object again.
        deleted += abort_uploads(upstream, &bucket, &prefix).await?;
        deleted += purge_prefix(upstream, &bucket, &prefix).await?;
    }
    Ok(deleted)
}

/// One exchange: the status and the whole (capped) answer.
async fn call(
    upstream: &Upstream,
    method: Method,
    bucket: &str,
    query: String,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(u16, Bytes), PurgeError> {
    let req = UpstreamRequest {
        method,
        bucket: Some(bucket.to_owned()),
        key: None,
        query,
        headers,
        body: if body.is_empty() { empty() } else { full(body) },
    };
    let resp = upstream.send(req).await?;
    let status = resp.status().as_u16();
    let body = read_capped(resp.into_body(), MAX_LISTING_BYTES)
        .await
        .map_err(|e| PurgeError::Body(e.to_string()))?;
    Ok((status, body))
}

/// One page of a listing (`query`) of `bucket`; `None` when the store does not implement it.
async fn list_page(
    upstream: &Upstream,
    bucket: &str,
    query: String,
    what: &'static str,
) -> Result<Option<Vec<Listed>>, PurgeError> {
    let (status, body) = call(upstream, Method::GET, bucket, query, HeaderMap::new(), Bytes::new()).await?;
    if !(200..300).contains(&status) {
        let code = listing::error_code(&body).unwrap_or_default();
        if status == 501 || code == "NotImplemented" {
            return Ok(None);
        }
        return Err(PurgeError::Refused {
            what,
            bucket: bucket.to_owned(),
            status,
            code,
        });
    }
    let (listed, _) = listing::entries(&body).map_err(|source| PurgeError::Answer { what, source })?;
    Ok(Some(listed))
}

/// Deletes everything under `prefix` in `bucket`, a batch at a time.
async fn purge_prefix(upstream: &Upstream, bucket: &str, prefix: &str) -> Result<usize, PurgeError> {
    let mut encoded = String::new();
    uri_encode(&mut encoded, prefix.as_bytes(), false);
    let mut versions = true;
    let mut deleted = 0;
    let mut last: HashSet<Listed> = HashSet::new();
    for _ in 0..MAX_BATCHES {
        let query = if versions {
            format!("max-keys={BATCH}&prefix={encoded}&versions=")
        } else {
            format!("list-type=2&max-keys={BATCH}&prefix={encoded}")
        };
        let Some(listed) = list_page(upstream, bucket, query, "a listing").await? else {
            if versions {
                versions = false;
                continue;
            }
            return Err(PurgeError::Refused {
                what: "ListObjectsV2",
                bucket: bucket.to_owned(),
                status: 501,
                code: "NotImplemented".into(),
            });
        };
        if listed.is_empty() {
            return Ok(deleted);
        }
        // Only what lies under the prefix is deleted, whatever else the store lists.
        if let Some(stray) = listed.iter().find(|l| !l.key.starts_with(prefix)) {
            return Err(PurgeError::NotDeleted {
                bucket: bucket.to_owned(),
                key: stray.key.clone(),
                code: format!("listed for prefix {prefix:?}; nothing outside it is deleted"),
            });
        }
        if let Some(kept) = listed.iter().find(|l| last.contains(*l)) {
            // A store without versions that lists each object as version `null` and ignores
            // it on delete: once more without versions. (A real version kept is an error: a
            // delete without one would only add a delete marker, the version staying readable.)
            let unversioned = |l: &Listed| l.version.as_deref().is_none_or(|v| v == "null");
            if versions && listed.iter().all(unversioned) {
                versions = false;
                last.clear();
                continue;
            }
            return Err(PurgeError::NotDeleted {
                bucket: bucket.to_owned(),
                key: kept.key.clone(),
                code: "still listed after its deletion".into(),
            });
        }
        delete_batch(upstream, bucket, &listed).await?;
        deleted += listed.len();
        last = listed.into_iter().collect();
    }
    Err(PurgeError::TooMany {
        bucket: bucket.to_owned(),
        prefix: prefix.to_owned(),
    })
}

/// Aborts every unfinished multipart upload under `prefix` in `bucket` (a store without
/// ListMultipartUploads has none to abort).
async fn abort_uploads(upstream: &Upstream, bucket: &str, prefix: &str) -> Result<usize, PurgeError> {
    let mut encoded = String::new();
    uri_encode(&mut encoded, prefix.as_bytes(), false);
    let mut aborted = 0;
    let mut last: HashSet<Listed> = HashSet::new();
    for _ in 0..MAX_BATCHES {
        let query = format!("max-uploads={BATCH}&prefix={encoded}&uploads=");
        let Some(listed) = list_page(upstream, bucket, query, "ListMultipartUploads").await? else {
            return Ok(aborted);
        };
        if listed.is_empty() {
            return Ok(aborted);
        }
        if let Some(kept) = listed.iter().find(|l| !l.key.starts_with(prefix) || last.contains(*l)) {
            return Err(PurgeError::NotDeleted {
                bucket: bucket.to_owned(),
                key: kept.key.clone(),
                code: "an upload outside the prefix, or still listed after its abort".into(),
            });
        }
        for l in &listed {
            let mut query = String::from("uploadId=");
            uri_encode(&mut query, l.upload.as_deref().unwrap_or_default().as_bytes(), false);
            let req = UpstreamRequest {
                method: Method::DELETE,
                bucket: Some(bucket.to_owned()),
                key: Some(l.key.clone()),
                query,
                headers: HeaderMap::new(),
                body: empty(),
            };
            let resp = upstream.send(req).await?;
            let status = resp.status().as_u16();
            let body = read_capped(resp.into_body(), MAX_LISTING_BYTES)
                .await
                .map_err(|e| PurgeError::Body(e.to_string()))?;
            let code = listing::error_code(&body).unwrap_or_default();
            if !(200..300).contains(&status) && code != "NoSuchUpload" {
                return Err(PurgeError::Refused {
                    what: "AbortMultipartUpload",
                    bucket: bucket.to_owned(),
                    status,
                    code,
                });
            }
            aborted += 1;
        }
        last = listed.into_iter().collect();
    }
    Err(PurgeError::TooMany {
        bucket: bucket.to_owned(),
        prefix: prefix.to_owned(),
    })
}

/// DeleteObjects (quiet) of `listed`.
async fn delete_batch(upstream: &Upstream, bucket: &str, listed: &[Listed]) -> Result<(), PurgeError> {
    let doc = DeleteRequest {
        quiet: Some(true),
        objects: listed
            .iter()
            .map(|l| DeleteObject {
                key: l.key.clone(),
                fields: l.version.iter().map(|v| ("VersionId", v.clone())).collect(),
            })
            .collect(),
    }
    .to_xml();
    let mut headers = HeaderMap::new();
    delete_body_headers(&mut headers, &doc);
    let (status, body) = call(upstream, Method::POST, bucket, "delete=".into(), headers, doc.into()).await?;
    if !(200..300).contains(&status) {
        return Err(PurgeError::Refused {
            what: "DeleteObjects",
            bucket: bucket.to_owned(),
            status,
            code: listing::error_code(&body).unwrap_or_default(),
        });
    }
    let errors = listing::delete_errors(&body).map_err(|source| PurgeError::Answer {
        what: "DeleteObjects",
        source,
    })?;
    match errors.into_iter().next() {
        Some((key, code)) => Err(PurgeError::NotDeleted {
            bucket: bucket.to_owned(),
            key,
            code,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    use axum::extract::{Path, RawQuery, State};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use zeroize::Zeroizing;

    use super::*;
    use crate::upstream::UpstreamConfig;

    /// An S3-shaped store: (key, version) entries in one bucket.
    #[derive(Default)]
    struct Store {
        objects: Mutex<BTreeSet<(String, String)>>,
        /// Answers ListObjectVersions with NotImplemented.
        no_versions: bool,
        /// Says it deleted, deletes nothing.
        sticky: bool,
        /// Keys it refuses to delete (AccessDenied).
        protected: Vec<String>,
        /// Lists every key, whatever the prefix.
        ignores_prefix: bool,
        /// Unfinished uploads: (key, upload id).
        uploads: Mutex<BTreeSet<(String, String)>>,
    }

    fn escape(s: &str) -> String {
        s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
    }

    async fn list(
        State(st): State<Arc<Store>>,
        Path(_bucket): Path<String>,
        RawQuery(q): RawQuery,
    ) -> impl IntoResponse {
        let q = q.unwrap_or_default();
        let params: Vec<(String, String)> = url::form_urlencoded::parse(q.as_bytes()).into_owned().collect();
        let get = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        if get("uploads").is_some() {
            let prefix = get("prefix").unwrap_or_default();
            let uploads = st.uploads.lock().unwrap();
            let mut out = String::from("<ListMultipartUploadsResult>");
            for (k, u) in uploads.iter().filter(|(k, _)| k.starts_with(&prefix)) {
                out.push_str(&format!(
                    "<Upload><Key>{}</Key><UploadId>{u}</UploadId></Upload>",
                    escape(k)
                ));
            }
            out.push_str("</ListMultipartUploadsResult>");
            return (StatusCode::OK, out);
        }
        let versions = get("versions").is_some();
        if versions && st.no_versions {
            return (
                StatusCode::NOT_IMPLEMENTED,
                "<Error><Code>NotImplemented</Code></Error>".to_owned(),
            );
        }
        let prefix = get("prefix").unwrap_or_default();
        let max: usize = get("max-keys").and_then(|m| m.parse().ok()).unwrap_or(1000);
        let objects = st.objects.lock().unwrap();
        let found: Vec<&(String, String)> = objects
            .iter()
            .filter(|(k, _)| st.ignores_prefix || k.starts_with(&prefix))
            .collect();
        let truncated = found.len() > max;
        let mut out = String::from(if versions {
            "<ListVersionsResult>"
        } else {
            "<ListBucketResult>"
        });
        out.push_str(&format!("<IsTruncated>{truncated}</IsTruncated>"));
        for (k, v) in found.into_iter().take(max) {
            if versions {
                out.push_str(&format!(
                    "<Version><Key>{}</Key><VersionId>{v}</VersionId></Version>",
                    escape(k)
                ));
            } else {
                out.push_str(&format!("<Contents><Key>{}</Key></Contents>", escape(k)));
            }
        }
        out.push_str(if versions {
            "</ListVersionsResult>"
        } else {
            "</ListBucketResult>"
        });
        (StatusCode::OK, out)
    }

    async fn delete(State(st): State<Arc<Store>>, body: Bytes) -> impl IntoResponse {
        let req = listing::delete_request(&body).unwrap();
        assert_eq!(req.quiet, Some(true));
        let mut out = String::from("<DeleteResult>");
        let mut objects = st.objects.lock().unwrap();
        for o in &req.objects {
            if st.protected.contains(&o.key) {
                out.push_str(&format!(
                    "<Error><Key>{}</Key><Code>AccessDenied</Code></Error>",
                    escape(&o.key)
                ));
                continue;
            }
            if st.sticky {
                continue;
            }
            match o.fields.iter().find(|(f, _)| *f == "VersionId") {
                Some((_, v)) => {
                    objects.remove(&(o.key.clone(), v.clone()));
                }
                None => objects.retain(|(k, _)| *k != o.key),
            }
        }
        out.push_str("</DeleteResult>");
        out
    }

    async fn abort(
        State(st): State<Arc<Store>>,
        Path((_bucket, key)): Path<(String, String)>,
        RawQuery(q): RawQuery,
    ) -> StatusCode {
        let q = q.unwrap_or_default();
        let id = url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "uploadId")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        st.uploads.lock().unwrap().remove(&(key, id));
        StatusCode::NO_CONTENT
    }

    async fn serve(store: Store) -> (Upstream, Arc<Store>) {
        let store = Arc::new(store);
        let app = axum::Router::new()
            .route("/{bucket}/{*key}", axum::routing::delete(abort))
            .route("/{bucket}", axum::routing::get(list).post(delete))
            .with_state(store.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = url::Url::parse(&format!("http://{}", l.local_addr().unwrap())).unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        let cfg = UpstreamConfig {
            endpoint,
            region: "us-east-1".into(),
            access_key: "AK".into(),
            secret_key: Zeroizing::new("SK".into()),
            ca_pem: None,
        };
        (Upstream::new(cfg, Arc::new(kfsec_types::SystemClock)).unwrap(), store)
    }

    fn seeded(no_versions: bool) -> Store {
        let mut objects = BTreeSet::new();
        for i in 0..2_500 {
            objects.insert((format!("private-artifacts/team/run/{i:05}"), "v1".to_owned()));
        }
        objects.insert(("private-artifacts/team/run/00000".into(), "v2".into()));
        objects.insert(("private/team/odd & <key>".into(), "v1".into()));
        for keep in [
            "private-artifacts/team-b/x",
            "private/teams/x",
            "shared/x",
            "artifacts/team/x",
        ] {
            objects.insert((keep.into(), "v1".into()));
        }
        let uploads = [
            ("private-artifacts/team/big.bin", "u1"),
            ("private/team/odd & <key>", "u+2/="),
            ("private-artifacts/team-b/other.bin", "u3"),
        ]
        .map(|(k, u)| (k.to_owned(), u.to_owned()));
        Store {
            objects: Mutex::new(objects),
            no_versions,
            uploads: Mutex::new(uploads.into_iter().collect()),
            ..Store::default()
        }
    }

    fn left(store: &Store) -> Vec<String> {
        store.objects.lock().unwrap().iter().map(|(k, _)| k.clone()).collect()
    }

    #[tokio::test]
    async fn every_object_and_version_of_the_namespace_goes_and_nothing_else() {
        let policy = Policy::seaweedfs_default("mlpipeline");
        for no_versions in [false, true] {
            let (up, store) = serve(seeded(no_versions)).await;
            let n = purge_namespace(&up, &policy, "team").await.unwrap();
            assert!(n >= 2_504, "{n}");
            let uploads: Vec<String> = store.uploads.lock().unwrap().iter().map(|(k, _)| k.clone()).collect();
            assert_eq!(uploads, ["private-artifacts/team-b/other.bin"]);
            assert_eq!(
                left(&store),
                [
                    "artifacts/team/x",
                    "private-artifacts/team-b/x",
                    "private/teams/x",
                    "shared/x"
                ],
                "ListObjectVersions unsupported: {no_versions}"
            );
            // Again: nothing to do.
            assert_eq!(purge_namespace(&up, &policy, "team").await.unwrap(), 0);
        }
    }

    #[tokio::test]
    async fn a_listing_beyond_the_prefix_deletes_nothing_of_it() {
        let policy = Policy::seaweedfs_default("mlpipeline");
        let (up, store) = serve(Store {
            ignores_prefix: true,
            ..seeded(false)
        })
        .await;
        let before = left(&store);
        match purge_namespace(&up, &policy, "team").await {
            Err(PurgeError::NotDeleted { key, .. }) => assert_eq!(key, "artifacts/team/x"),
            other => panic!("{other:?}"),
        }
        assert_eq!(left(&store), before);
    }

    #[tokio::test]
    async fn a_store_that_keeps_objects_is_an_error_not_a_loop() {
        let policy = Policy::seaweedfs_default("mlpipeline");
        let (up, _) = serve(Store {
            protected: vec!["private/team/odd & <key>".into()],
            ..seeded(false)
        })
        .await;
        match purge_namespace(&up, &policy, "team").await {
            Err(PurgeError::NotDeleted { key, code, .. }) => {
                assert_eq!(
                    (key.as_str(), code.as_str()),
                    ("private/team/odd & <key>", "AccessDenied")
                )
            }
            other => panic!("{other:?}"),
        }
        let (up, _) = serve(Store {
            sticky: true,
            ..seeded(false)
        })
        .await;
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            purge_namespace(&up, &policy, "team"),
        )
        .await;
        assert!(matches!(r, Ok(Err(PurgeError::NotDeleted { .. }))), "{r:?}");
    }
}
