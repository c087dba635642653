//! Shared server state and the namespace schema cache.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use larder_categories::Categories;
use larder_store::{Invalidation, NamespaceSchema, Store};

use crate::breaker::Breaker;
use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::hot::HotKeys;
use crate::metrics::names;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    pub schemas: Arc<SchemaCache>,
    pub breaker: Arc<Breaker>,
    pub categories: Arc<Categories>,
    /// The most looked-up keys, per namespace.
    pub hot: Arc<HotKeys>,
    /// Turns true when the server starts shutting down: endless answers (the event stream)
    /// end then, so the drain does not wait for them.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        config: Config,
        categories: Arc<Categories>,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        AppState {
            categories,
            stopping,
            hot: Arc::new(HotKeys::default()),
            breaker: Arc::new(Breaker::new(&config.breaker)),
            schemas: Arc::new(SchemaCache::default()),
            config: Arc::new(config),
            store,
        }
    }

    /// The namespace `name` names, and its schema: `name` itself, or the namespace the alias
    /// `name` points at. Resolved once per request, so a request sees one version even while
    /// the alias flips. `400` for a bad name, `404 not_found` when there is no such name.
    pub async fn namespace(&self, name: &str) -> ApiResult<(String, Arc<NamespaceSchema>)> {
        crate::routes::namespaces::check_namespace_name(name)?;
        let schema = self.schema(name).await?;
        if schema.deleting {
            return Err(ApiError::NotFound(format!(
                "namespace {name:?} is being deleted"
            )));
        }
        let Some(target) = &schema.alias else {
            return Ok((name.to_owned(), schema));
        };
        match self.schemas.get(&self.store, target).await? {
            Some(resolved) if resolved.alias.is_none() && !resolved.deleting => {
                Ok((target.clone(), resolved))
            }
            _ => Err(ApiError::NotFound(format!(
                "alias {name:?} points at namespace {target:?}, which does not exist"
            ))),
        }
    }

    /// The schema record stored under `ns` (a namespace's, or an alias's), or `404 not_found`.
    pub async fn schema(&self, ns: &str) -> ApiResult<Arc<NamespaceSchema>> {
        self.schemas
            .get(&self.store, ns)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("namespace {ns:?} does not exist")))
    }
}

/// Every request needs its namespace's schema; reading it from the store each time would add
/// a round trip to every lookup. An entry older than `FRESH` is still answered at once, and
/// re-read in the background (one re-read per namespace at a time), so a schema changed by
/// another server instance is seen within about that time, and a request never waits on the
/// store for a schema it has seen before. When the store is down, the last known schema keeps
/// serving (degraded lookups need it).
#[derive(Default)]
pub struct SchemaCache {
    entries: RwLock<HashMap<String, Entry>>,
}

#[derive(Clone)]
struct Entry {
    schema: Arc<NamespaceSchema>,
    at: Instant,
    refreshing: bool,
}

const FRESH: Duration = Duration::from_secs(2);

impl SchemaCache {
    pub async fn get(
        self: &Arc<Self>,
        store: &Arc<dyn Store>,
        ns: &str,
    ) -> Result<Option<Arc<NamespaceSchema>>, ApiError> {
        if let Some(entry) = self.read().get(ns) {
            if entry.at.elapsed() < FRESH {
                metrics::counter!(names::SCHEMA_CACHE, "result" => "hit").increment(1);
                return Ok(Some(entry.schema.clone()));
            }
        }
        let stale = {
            let mut entries = self.write();
            match entries.get_mut(ns) {
                Some(entry) if entry.at.elapsed() < FRESH => {
                    metrics::counter!(names::SCHEMA_CACHE, "result" => "hit").increment(1);
                    return Ok(Some(entry.schema.clone()));
                }
                Some(entry) => {
                    let start = !entry.refreshing;
                    entry.refreshing = true;
                    Some((entry.schema.clone(), start))
                }
                None => None,
            }
        };
        metrics::counter!(names::SCHEMA_CACHE, "result" => "miss").increment(1);
        match stale {
            Some((schema, start)) => {
                if start {
                    let (cache, store, ns) = (self.clone(), store.clone(), ns.to_owned());
                    tokio::spawn(async move {
                        let _ = cache.reload(store.as_ref(), &ns).await;
                    });
                }
                Ok(Some(schema))
            }
            None => self.reload(store.as_ref(), ns).await,
        }
    }

    /// Read the schema from the store and cache what it says.
    async fn reload(
        &self,
        store: &dyn Store,
        ns: &str,
    ) -> Result<Option<Arc<NamespaceSchema>>, ApiError> {
        match store.get_schema(ns).await {
            Ok(Some(schema)) => Ok(Some(self.put(ns, schema))),
            Ok(None) => {
                self.write().remove(ns);
                Ok(None)
            }
            Err(error) => {
                let mut entries = self.write();
                match entries.get_mut(ns) {
                    Some(entry) => {
                        tracing::debug!(%error, ns, "store down; serving the last known schema");
                        entry.refreshing = false;
                        Ok(Some(entry.schema.clone()))
                    }
                    None => Err(error.into()),
                }
            }
        }
    }

    /// Follow the store's announcements for as long as the server runs: a schema (or alias)
    /// written by any server is dropped here at once, so the next request reads it anew.
    /// Announcements missed while the subscription was down are covered by the entries' 2 s
    /// freshness. Entries are not aged on a reconnect: after a Redis restart that lost the
    /// data, that would take the schemas away from lookups at once (they keep answering, with
    /// every key missing, until the store is restored).
    pub async fn follow(self: Arc<Self>, store: Arc<dyn Store>) {
        loop {
            if let Ok(mut stream) = store.invalidations().await {
                while let Some(invalidation) = stream.next().await {
                    if let Invalidation::Namespace(ns) = invalidation {
                        self.forget(&ns);
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Drop `ns` (a deleted namespace or alias) at once.
    pub fn forget(&self, ns: &str) {
        self.write().remove(ns);
    }

    pub fn put(&self, ns: &str, schema: NamespaceSchema) -> Arc<NamespaceSchema> {
        let schema = Arc::new(schema);
        self.write().insert(
            ns.to_owned(),
            Entry {
                schema: schema.clone(),
                at: Instant::now(),
                refreshing: false,
            },
        );
        schema
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Entry>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Entry>> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }
}
