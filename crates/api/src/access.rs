//! [`Objects`]: typed, system-internal read access to the stored Kubernetes-style objects for
//! the components that are not the HTTP API — the RBAC cache, the admission context, the
//! profile controller, the IdP's service-account lookup (through the server). They name a
//! [`Resource`], a namespace and a name, never a store key: the key schema
//! (`/k8s/{group|core}/{plural}/[{ns}/]{name}`) belongs to this crate alone.
//!
//! Invariants: reads are not authorized (callers are the system itself) and return objects as
//! the API serves them (`apiVersion`, `kind`, `metadata.resourceVersion`); a record that does not
//! decode is an error of `get`/`list` and is reported per object by `follow` (its
//! [`StoredObject::decode`] fails), never dropped silently; following re-lists after compaction
//! or a broken watch and says so ([`kfsec_store::Watcher`]).

use std::sync::Arc;

use kfsec_store::follow::Sleep;
use kfsec_store::{Event, KeyValue, Revision, Store, StoreError, Watcher, WatcherConfig};
use kfsec_types::Rng;
use serde_json::Value;

use crate::ObjectList;
use crate::objects::decode;
use crate::registry::Resource;
use crate::status::ApiError;

/// The store prefix under which every object lives.
const ROOT: &str = "/k8s/";

/// Read access to the stored objects (see the module docs).
#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn Store>,
    rng: Arc<dyn Rng>,
    sleep: Option<Arc<dyn Sleep>>,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects").finish_non_exhaustive()
    }
}

impl Objects {
    /// Access to the objects in `store`; `rng` jitters the watchers' backoff.
    pub fn new(store: Arc<dyn Store>, rng: Arc<dyn Rng>) -> Self {
        Self {
            store,
            rng,
            sleep: None,
        }
    }

    /// Waits between failed watch attempts with `sleep` (tests) instead of the tokio timer.
    #[must_use]
    pub fn with_sleep(mut self, sleep: Arc<dyn Sleep>) -> Self {
        self.sleep = Some(sleep);
        self
    }

    /// The store's current revision (every write bumps it).
    pub async fn revision(&self) -> Result<Revision, StoreError> {
        self.store.revision().await
    }

    /// One object, or `None`. `ns` is ignored for cluster-scoped types.
    pub async fn get(&self, res: &Resource, ns: &str, name: &str) -> Result<Option<Value>, ApiError> {
        match self.store.get(&res.key(ns, name)).await? {
            Some(kv) => Ok(Some(decode(res, &kv)?)),
            None => Ok(None),
        }
    }

    /// Every object of `res` (in `ns`, or everywhere for `None`), as of one revision.
    pub async fn list(&self, res: &Resource, ns: Option<&str>) -> Result<ObjectList, ApiError> {
        let all = kfsec_store::list_all(self.store.as_ref(), &res.list_prefix(ns)).await?;
        Ok(ObjectList {
            items: all.items.iter().map(|kv| decode(res, kv)).collect::<Result<_, _>>()?,
            resource_version: all.revision,
        })
    }

    /// Lists every object of `resources`, then follows their changes (until dropped).
    pub fn follow(&self, resources: &[&'static Resource]) -> Follow {
        self.follower(resources, WatcherConfig::new(common_prefix(resources)))
    }

    /// Follows changes to objects of `resources` without listing them, and reports every other
    /// store write as [`ObjectEvent::Progress`], so a cache invalidated by these events can prove
    /// it has seen every write up to a revision (the whole store is watched).
    pub fn follow_changes(&self, resources: &[&'static Resource]) -> Follow {
        let config = WatcherConfig::new(common_prefix(resources)).skip_list().with_progress();
        self.follower(resources, config)
    }

    fn follower(&self, resources: &[&'static Resource], config: WatcherConfig) -> Follow {
        let watcher = match &self.sleep {
            Some(s) => Watcher::with_sleep(self.store.clone(), config, self.rng.clone(), s.clone()),
            None => Watcher::new(self.store.clone(), config, self.rng.clone()),
        };
        Follow {
            watcher,
            resources: resources.iter().map(|&r| (r, r.type_prefix())).collect(),
        }
    }
}

/// The longest prefix, ending in `/`, shared by the resources' type prefixes.
fn common_prefix(resources: &[&'static Resource]) -> String {
    let mut prefixes = resources.iter().map(|r| r.type_prefix());
    let Some(first) = prefixes.next() else {
        return ROOT.to_owned();
    };
    let shared = prefixes.fold(first, |acc, p| {
        let n = acc.bytes().zip(p.bytes()).take_while(|(a, b)| a == b).count();
        acc[..n].to_owned()
    });
    match shared.rfind('/') {
        Some(i) => shared[..=i].to_owned(),
        None => String::new(),
    }
}

/// A stored object as a follower sees it: where it is, and its record (decoded on demand).
#[derive(Debug, Clone)]
pub struct StoredObject {
    /// Its type.
    pub resource: &'static Resource,
    /// Its namespace (`""` for cluster-scoped types).
    pub namespace: String,
    /// Its name.
    pub name: String,
    kv: KeyValue,
}

impl StoredObject {
    /// The store revision that wrote (or, for a deletion, deleted) it.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }

    /// The object as the API serves it; an error if its record does not decode.
    pub fn decode(&self) -> Result<Value, ApiError> {
        decode(self.resource, &self.kv)
    }
}

/// What a [`Follow`] delivers.
#[derive(Debug, Clone)]
pub enum ObjectEvent {
    /// (Re)started: every object of the followed resources at `revision` (none for
    /// [`Objects::follow_changes`]). Replace whatever was built from earlier events.
    Restarted {
        /// The objects.
        objects: Vec<StoredObject>,
        /// The revision they reflect.
        revision: Revision,
    },
    /// Created or replaced.
    Applied(StoredObject),
    /// Deleted (its last value).
    Deleted(StoredObject),
    /// Some other store write, at this revision (changes of resources not followed included).
    Progress(Revision),
}

/// Follows objects of some resources (see [`Objects::follow`]); dropping it stops it.
#[derive(Debug)]
pub struct Follow {
    watcher: Watcher,
    /// The followed resources and their type prefixes.
    resources: Vec<(&'static Resource, String)>,
}

impl Follow {
    /// The next event. An `Err` means the follower lost track (state built from its events may
    /// be stale) until the next [`ObjectEvent::Restarted`], which later calls deliver after a
    /// backoff. Cancel-safe.
    pub async fn next(&mut self) -> Result<ObjectEvent, StoreError> {
        Ok(match self.watcher.next().await? {
            Event::Restarted { items, revision } => ObjectEvent::Restarted {
                objects: items.into_iter().filter_map(|kv| self.locate(kv)).collect(),
                revision,
            },
            Event::Applied(kv) => {
                let rev = kv.mod_revision;
                self.locate(kv).map_or(ObjectEvent::Progress(rev), ObjectEvent::Applied)
            }
            Event::Deleted(kv) => {
                let rev = kv.mod_revision;
                self.locate(kv).map_or(ObjectEvent::Progress(rev), ObjectEvent::Deleted)
            }
            Event::Progress(rev) => ObjectEvent::Progress(rev),
        })
    }

    /// Re-lists after the backoff delay (see [`kfsec_store::Watcher::restart`]).
    pub fn restart(&mut self) {
        self.watcher.restart();
    }

    /// The followed resource, namespace and name a record belongs to, if any.
    fn locate(&self, kv: KeyValue) -> Option<StoredObject> {
        let (resource, namespace, name) = self.resources.iter().find_map(|&(resource, ref prefix)| {
            let rest = kv.key.strip_prefix(prefix.as_str())?;
            let (namespace, name) = if resource.namespaced {
                rest.split_once('/')?
            } else {
                ("", rest)
            };
            (!name.is_empty() && !name.contains('/')).then(|| (resource, namespace.to_owned(), name.to_owned()))
        })?;
        Some(StoredObject {
            resource,
            namespace,
            name,
            kv,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kfsec_types::{ManualClock, UnixTime};
    use serde_json::json;

    use super::*;
    use crate::registry::find;

    fn objects() -> (Arc<dyn Store>, Objects) {
        let store: Arc<dyn Store> = kfsec_store::MemoryStore::new(ManualClock::new(UnixTime::from_secs(1)));
        (
            store.clone(),
            Objects::new(store, Arc::new(kfsec_types::SequenceRng::default())),
        )
    }

    fn res(group: &str, plural: &str) -> &'static Resource {
        find(group, "v1", plural).unwrap()
    }

    async fn put(store: &dyn Store, r: &Resource, ns: &str, name: &str, body: &Value) -> Revision {
        store
            .put(&r.key(ns, name), body.to_string().into_bytes(), None)
            .await
            .unwrap()
    }

    #[test]
    fn followers_watch_the_narrowest_prefix() {
        let rbac = ["roles", "clusterroles", "rolebindings", "clusterrolebindings"]
            .map(|p| res("rbac.authorization.k8s.io", p));
        assert_eq!(common_prefix(&rbac), "/k8s/rbac.authorization.k8s.io/");
        let sa = res("", "serviceaccounts");
        assert_eq!(common_prefix(&[sa]), sa.type_prefix());
        assert_eq!(common_prefix(&[sa, rbac[0]]), ROOT);
        assert_eq!(common_prefix(&[]), ROOT);
    }

    #[tokio::test]
    async fn get_list_and_follow_by_resource() {
        let (store, objects) = objects();
        let sa = res("", "serviceaccounts");
        let ns = res("", "namespaces");
        let cm = res("", "configmaps");
        put(
            store.as_ref(),
            sa,
            "a",
            "x",
            &json!({"metadata": {"name": "x", "namespace": "a", "uid": "u"}}),
        )
        .await;
        put(store.as_ref(), ns, "", "a", &json!({"metadata": {"name": "a"}})).await;
        let got = objects.get(sa, "a", "x").await.unwrap().unwrap();
        assert_eq!(got["metadata"]["uid"], "u");
        assert_eq!(got["kind"], "ServiceAccount");
        assert!(objects.get(sa, "a", "y").await.unwrap().is_none());
        assert_eq!(objects.list(sa, Some("a")).await.unwrap().items.len(), 1);
        assert!(objects.list(sa, Some("b")).await.unwrap().items.is_empty());

        let mut f = objects.follow(&[sa, ns]);
        let Ok(ObjectEvent::Restarted {
            objects: listed,
            revision,
        }) = f.next().await
        else {
            panic!("starts with a list")
        };
        assert_eq!(revision, 2);
        let mut names: Vec<_> = listed
            .iter()
            .map(|o| (o.resource.plural, o.namespace.as_str(), o.name.as_str()))
            .collect();
        names.sort();
        assert_eq!(names, [("namespaces", "", "a"), ("serviceaccounts", "a", "x")]);
        // a configmap is another resource: progress only; a corrupt record is reported, not dropped
        put(store.as_ref(), cm, "a", "c", &json!({})).await;
        store.put(&sa.key("a", "bad"), b"{".to_vec(), None).await.unwrap();
        store.delete(&ns.key("", "a"), None).await.unwrap();
        assert!(matches!(f.next().await, Ok(ObjectEvent::Progress(3))));
        let Ok(ObjectEvent::Applied(bad)) = f.next().await else {
            panic!()
        };
        assert_eq!(
            (bad.namespace.as_str(), bad.name.as_str(), bad.revision()),
            ("a", "bad", 4)
        );
        assert!(bad.decode().is_err());
        assert!(objects.get(sa, "a", "bad").await.is_err());
        assert!(objects.list(sa, None).await.is_err());
        let Ok(ObjectEvent::Deleted(gone)) = f.next().await else {
            panic!()
        };
        assert_eq!((gone.resource.plural, gone.name.as_str()), ("namespaces", "a"));
    }

    #[tokio::test]
    async fn follow_changes_reports_every_write() {
        let (store, objects) = objects();
        let sa = res("", "serviceaccounts");
        put(store.as_ref(), sa, "a", "x", &json!({})).await;
        let mut f = objects.follow_changes(&[sa]);
        let Ok(ObjectEvent::Restarted {
            objects: listed,
            revision: 1,
        }) = f.next().await
        else {
            panic!()
        };
        assert!(listed.is_empty());
        store.put("/kfsec/other", vec![], None).await.unwrap();
        put(store.as_ref(), sa, "a", "y", &json!({})).await;
        assert!(matches!(f.next().await, Ok(ObjectEvent::Progress(2))));
        let next = tokio::time::timeout(Duration::from_secs(5), f.next()).await.unwrap();
        assert!(matches!(next, Ok(ObjectEvent::Applied(o)) if o.name == "y"));
    }
}
