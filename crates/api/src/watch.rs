//! `?watch=true`: a newline-delimited stream of `{"type": ADDED|MODIFIED|DELETED|ERROR,
//! "object": …}` events fed by `Store::watch`, optionally preceded by the current state.
//!
//! Invariants: only objects under the authorized prefix (one namespace, or all) are ever sent;
//! with a selector, an object leaving it is sent as DELETED and one entering it as ADDED; the
//! stream ends at `timeoutSeconds` (capped), when the client goes away (the store watcher is
//! dropped with the body), or after an ERROR event (410 Expired when the revision is compacted);
//! the request is re-authorized when the watch subscribes to RBAC changes (before the initial
//! list), again before anything is streamed, and whenever RBAC changes (checked before every
//! line); once its caller has lost the right the stream sends an ERROR event with the 403
//! Status and ends — nothing is streamed after a revocation became visible to the authorizer.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use kfsec_store::{EventKind, Revision, StoreError, WatchStream};
use serde_json::{Value, json};

use crate::ApiServer;
use crate::authorize::Attributes;
use crate::objects::{ListQuery, decode};
use crate::registry::Resource;
use crate::status::ApiError;
use crate::table::{self, Format, Include};

/// What to watch.
pub(crate) struct WatchParams {
    pub res: &'static Resource,
    pub namespace: Option<String>,
    pub query: ListQuery,
    /// `None` (or 0): start with the current state as ADDED events.
    pub from: Option<Revision>,
    pub timeout: Duration,
    pub format: Format,
    pub include: Include,
    /// The authorized request, asked again whenever RBAC changes.
    pub attrs: Attributes,
}

struct State {
    api: Arc<ApiServer>,
    p: WatchParams,
    rx: Option<WatchStream>,
    pending: VecDeque<Value>,
    known: HashSet<String>,
    filtering: bool,
    deadline: tokio::time::Instant,
    done: bool,
    changes: Option<tokio::sync::watch::Receiver<u64>>,
}

impl State {
    fn wrap(&self, kind: &str, obj: Value) -> Value {
        let object = match self.p.format {
            Format::Objects => obj,
            Format::Table(v) => {
                let now = i64::try_from(self.api.clock.now().as_secs()).unwrap_or(i64::MAX);
                let rv = obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
                table::table(
                    self.p.res.kind,
                    &[obj],
                    v,
                    self.p.include,
                    now,
                    json!({"resourceVersion": rv}),
                )
            }
        };
        json!({"type": kind, "object": object})
    }

    /// Asks the authorizer again whether the watch is still allowed; once it is not, whatever
    /// is pending is dropped and the stream ends with the 403 ERROR event.
    fn recheck(&mut self) -> bool {
        if self.api.authz.authorize(&self.p.attrs).is_allowed() {
            return true;
        }
        self.done = true;
        self.rx = None;
        self.pending.clear();
        self.pending
            .push_back(error_event(&ApiError::forbidden(&self.p.attrs), self.api.rng.as_ref()));
        false
    }

    /// Loads the current state (queued as ADDED events unless the watch starts at a revision;
    /// with a selector, the matching keys are remembered) and returns the revision to watch from.
    async fn initial_state(&mut self) -> Result<Revision, ApiError> {
        let p = &self.p;
        let from = p.from.filter(|r| *r > 0);
        if let Some(rev) = from.filter(|_| !self.filtering) {
            return Ok(rev);
        }
        let q = ListQuery {
            limit: 0,
            continue_token: None,
            ..p.query.clone()
        };
        let list = self.api.list_in(p.res, p.namespace.as_deref(), &q).await?;
        for o in list.items {
            self.known
                .insert(p.res.key(crate::objects::namespace_of(&o), crate::objects::name_of(&o)));
            if from.is_none() {
                let v = self.wrap("ADDED", o);
                self.pending.push_back(v);
            }
        }
        Ok(from.unwrap_or(list.revision))
    }

    fn matches(&self, obj: &Value) -> bool {
        self.p.query.labels.matches_object(obj) && self.p.query.fields.matches(obj)
    }

    fn convert(&mut self, ev: kfsec_store::WatchEvent) -> Option<Value> {
        let obj = match decode(self.p.res, &ev.kv) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "watch: undecodable record skipped");
                return None;
            }
        };
        let key = ev.kv.key;
        let hit = self.matches(&obj);
        let kind = match ev.kind {
            EventKind::Put if !self.filtering => {
                if ev.kv.create_revision == ev.kv.mod_revision {
                    "ADDED"
                } else {
                    "MODIFIED"
                }
            }
            EventKind::Put if hit => {
                if self.known.insert(key) {
                    "ADDED"
                } else {
                    "MODIFIED"
                }
            }
            EventKind::Put => {
                if self.known.remove(&key) {
                    "DELETED"
                } else {
                    return None;
                }
            }
            EventKind::Delete => {
                let was = self.known.remove(&key);
                if self.filtering && !was && !hit {
                    return None;
                }
                "DELETED"
            }
        };
        Some(self.wrap(kind, obj))
    }
}

fn line(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

fn error_event(e: &ApiError, rng: &dyn kfsec_types::Rng) -> Value {
    json!({"type": "ERROR", "object": crate::status::status_of(e, rng)})
}

impl ApiServer {
    /// Starts a watch and returns the streaming response.
    pub(crate) async fn watch(self: &Arc<Self>, p: WatchParams) -> Result<Response, ApiError> {
        let prefix = p.res.list_prefix(p.namespace.as_deref());
        let filtering = !p.query.labels.is_empty() || p.query.fields != Default::default();
        let mut st = State {
            // Subscribed before anything else: every RBAC change from here on is seen.
            changes: self.authz.changes(),
            api: Arc::clone(self),
            deadline: tokio::time::Instant::now() + p.timeout,
            p,
            rx: None,
            pending: VecDeque::new(),
            known: HashSet::new(),
            filtering,
            done: false,
        };
        // A revocation between the handler's check and the subscription announced nothing to
        // this watch: ask again now, and again after the initial list (which the caller can make
        // slow), before anything is streamed.
        if st.recheck() {
            let start = st.initial_state().await?;
            if st.recheck() {
                match self.store.watch(&prefix, start).await {
                    Ok(rx) => st.rx = Some(rx),
                    Err(e @ StoreError::Compacted { .. }) => {
                        st.pending.push_back(error_event(&ApiError::from(e), self.rng.as_ref()));
                        st.done = true;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let stream = futures_util::stream::unfold(st, |mut st| async move {
            loop {
                // An RBAC change while the initial state is still being sent is acted on first.
                if let Some(c) = st
                    .changes
                    .as_mut()
                    .filter(|c| !st.done && c.has_changed().unwrap_or(false))
                {
                    c.mark_unchanged();
                    st.recheck();
                }
                if let Some(v) = st.pending.pop_front() {
                    return Some((Ok::<_, Infallible>(line(&v)), st));
                }
                if st.done {
                    return None;
                }
                let deadline = st.deadline;
                let rx = st.rx.as_mut()?;
                let changes = &mut st.changes;
                let changed = async {
                    match changes.as_mut() {
                        Some(c) => c.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                };
                let next = tokio::select! {
                    // RBAC changes first: a revocation ends the stream before anything else is sent.
                    biased;
                    alive = changed => {
                        if !alive {
                            st.changes = None;
                        } else {
                            st.recheck();
                        }
                        continue;
                    }
                    ev = rx.recv() => ev,
                    () = tokio::time::sleep_until(deadline) => return None,
                };
                match next {
                    None => return None,
                    Some(Ok(ev)) => {
                        if let Some(v) = st.convert(ev) {
                            return Some((Ok(line(&v)), st));
                        }
                    }
                    Some(Err(e)) => {
                        st.done = true;
                        st.rx = None;
                        let event = error_event(&ApiError::from(e), st.api.rng.as_ref());
                        return Some((Ok(line(&event)), st));
                    }
                }
            }
        });
        let mut resp = Response::new(Body::from_stream(stream));
        *resp.status_mut() = StatusCode::OK;
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
        Ok(resp)
    }
}
