//! Shared server state and the namespace schema cache.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use larder_store::{NamespaceSchema, Store};

use crate::breaker::Breaker;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::metrics::names;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    pub schemas: Arc<SchemaCache>,
    pub breaker: Arc<Breaker>,
    pub catalog: Arc<Catalog>,
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, config: Config, catalog: Arc<Catalog>) -> Self {
        AppState {
            catalog,
            breaker: Arc::new(Breaker::new(&config.breaker)),
            schemas: Arc::new(SchemaCache::default()),
            config: Arc::new(config),
            store,
        }
    }

    pub fn catalog(&self) -> ApiResult<&Arc<Catalog>> {
        Ok(&self.catalog)
    }

    /// The namespace's schema, or `404 not_found`.
    pub async fn schema(&self, ns: &str) -> ApiResult<Arc<NamespaceSchema>> {
        self.schemas
            .get(self.store.as_ref(), ns)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("namespace {ns:?} does not exist")))
    }
}

/// Every request needs its namespace's schema; reading it from the store each time would add
/// a round trip to every lookup. Entries are re-read after `FRESH`, so a schema changed by
/// another server instance is seen within that time. When the store is down, the last known
/// schema keeps serving (degraded lookups need it).
#[derive(Default)]
pub struct SchemaCache {
    entries: RwLock<HashMap<String, (Arc<NamespaceSchema>, Instant)>>,
}

const FRESH: Duration = Duration::from_secs(2);

impl SchemaCache {
    pub async fn get(
        &self,
        store: &dyn Store,
        ns: &str,
    ) -> Result<Option<Arc<NamespaceSchema>>, ApiError> {
        let cached = self.read().get(ns).cloned();
        if let Some((schema, at)) = &cached {
            if at.elapsed() < FRESH {
                metrics::counter!(names::SCHEMA_CACHE, "result" => "hit").increment(1);
                return Ok(Some(schema.clone()));
            }
        }
        metrics::counter!(names::SCHEMA_CACHE, "result" => "miss").increment(1);
        match store.get_schema(ns).await {
            Ok(Some(schema)) => Ok(Some(self.put(ns, schema))),
            Ok(None) => {
                self.write().remove(ns);
                Ok(None)
            }
            Err(error) => match cached {
                Some((schema, _)) => {
                    tracing::debug!(%error, ns, "store down; serving the last known schema");
                    Ok(Some(schema))
                }
                None => Err(error.into()),
            },
        }
    }

    pub fn put(&self, ns: &str, schema: NamespaceSchema) -> Arc<NamespaceSchema> {
        let schema = Arc::new(schema);
        self.write()
            .insert(ns.to_owned(), (schema.clone(), Instant::now()));
        schema
    }

    fn read(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<String, (Arc<NamespaceSchema>, Instant)>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<String, (Arc<NamespaceSchema>, Instant)>> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }
}
