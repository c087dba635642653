//! The embedded backend: a redb file in the data directory (or redb's in-memory backend for
//! `--ephemeral`). It mirrors the Redis layout: one record per entity holding its fields, an
//! expiry time standing in for the Redis TTL, one record per namespace schema, and one record
//! per category serving view. New views are announced through an in-process broadcast channel:
//! an embedded store has one process as its only writer, so there is nobody else to tell.
//!
//! redb is chosen over sled (unmaintained) and fjall (LSM: better for write-heavy loads,
//! while Larder's embedded mode is read-heavy) for its small footprint and ACID commits.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::stream::BoxStream;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::invalidation::Announcer;
use crate::{
    EntityState, EntityWrite, Invalidation, NamespaceSchema, Result, Row, Store, StoreError,
};

const SCHEMAS: TableDefinition<&str, &[u8]> = TableDefinition::new("schemas");
/// Key: `ns \0 key`; namespace names never contain NUL, so `ns \0` is a unique prefix.
const ENTITIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entities");
/// Key: category name; value: the serving view, opaque bytes.
const VIEWS: TableDefinition<&str, &[u8]> = TableDefinition::new("views");

pub struct EmbeddedStore {
    db: Arc<Database>,
    announcer: Announcer,
}

impl EmbeddedStore {
    /// Open (or create) `dir/larder.redb`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Config(format!("cannot create data dir {}: {e}", dir.display()))
        })?;
        let db = Database::create(dir.join("larder.redb"))?;
        Self::init(db)
    }

    /// A store that lives in memory only and is gone when dropped.
    pub fn in_memory() -> Result<Self> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?;
        Self::init(db)
    }

    fn init(db: Database) -> Result<Self> {
        // Create every table up front (also in files written by older versions) so that read
        // transactions never meet a missing table.
        let tx = db.begin_write()?;
        tx.open_table(SCHEMAS)?;
        tx.open_table(ENTITIES)?;
        tx.open_table(VIEWS)?;
        tx.commit()?;
        Ok(EmbeddedStore {
            db: Arc::new(db),
            announcer: Announcer::new(),
        })
    }

    /// Run a write transaction off the async runtime: commits fsync, which may take ms.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_write()?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("embedded write task failed: {e}")))?
    }
}

fn entity_key(ns: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(ns.len() + 1 + key.len());
    out.extend_from_slice(ns.as_bytes());
    out.push(0);
    out.extend_from_slice(key.as_bytes());
    out
}

/// `[ns\0, ns\x01)`: every entity of a namespace.
fn namespace_range(ns: &str) -> (Vec<u8>, Vec<u8>) {
    let mut start = ns.as_bytes().to_vec();
    start.push(0);
    let mut end = ns.as_bytes().to_vec();
    end.push(1);
    (start, end)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One entity record: `[expires_at_ms u64 LE, 0 = never]` then per field
/// `[name_len u8][name][value_len u32 LE][value]`.
#[derive(Debug, Default)]
struct Record {
    expires_at_ms: u64,
    fields: Vec<(String, Vec<u8>)>,
}

impl Record {
    fn live(&self, now: u64) -> bool {
        self.expires_at_ms == 0 || self.expires_at_ms > now
    }

    fn encode(&self) -> Vec<u8> {
        let size: usize = self.fields.iter().map(|(n, v)| 5 + n.len() + v.len()).sum();
        let mut out = Vec::with_capacity(8 + size);
        out.extend_from_slice(&self.expires_at_ms.to_le_bytes());
        for (name, value) in &self.fields {
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Record> {
        let corrupt = || StoreError::Corrupt {
            key: "embedded entity".into(),
            reason: "truncated record".into(),
        };
        let (head, mut rest) = bytes.split_at_checked(8).ok_or_else(corrupt)?;
        let expires_at_ms = u64::from_le_bytes(head.try_into().map_err(|_| corrupt())?);
        let mut fields = Vec::new();
        while let Some((&len, tail)) = rest.split_first() {
            let (name, tail) = tail.split_at_checked(len as usize).ok_or_else(corrupt)?;
            let (vlen, tail) = tail.split_at_checked(4).ok_or_else(corrupt)?;
            let vlen = u32::from_le_bytes(vlen.try_into().map_err(|_| corrupt())?) as usize;
            let (value, tail) = tail.split_at_checked(vlen).ok_or_else(corrupt)?;
            let name = std::str::from_utf8(name).map_err(|_| corrupt())?;
            fields.push((name.to_owned(), value.to_vec()));
            rest = tail;
        }
        Ok(Record {
            expires_at_ms,
            fields,
        })
    }

    fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Read one live record inside a transaction.
fn read_live(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    key: &[u8],
    now: u64,
) -> Result<Option<Record>> {
    match table.get(key)? {
        Some(value) => {
            let record = Record::decode(value.value())?;
            Ok(record.live(now).then_some(record))
        }
        None => Ok(None),
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> Result<()> {
        let tx = self.db.begin_read()?;
        tx.open_table(SCHEMAS)?;
        Ok(())
    }

    async fn put_schema(&self, ns: &str, schema: &NamespaceSchema) -> Result<()> {
        let json = serde_json::to_vec(schema)
            .map_err(|e| StoreError::Unavailable(format!("cannot encode schema: {e}")))?;
        let ns = ns.to_owned();
        self.write(move |tx| {
            tx.open_table(SCHEMAS)?
                .insert(ns.as_str(), json.as_slice())?;
            Ok(())
        })
        .await
    }

    async fn get_schema(&self, ns: &str) -> Result<Option<NamespaceSchema>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(SCHEMAS)?;
        let Some(value) = table.get(ns)? else {
            return Ok(None);
        };
        serde_json::from_slice(value.value())
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: format!("schema {ns}"),
                reason: e.to_string(),
            })
    }

    async fn list_namespaces(&self) -> Result<Vec<String>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(SCHEMAS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (name, _) = entry?;
            out.push(name.value().to_owned());
        }
        Ok(out)
    }

    async fn upsert(
        &self,
        ns: &str,
        ttl_seconds: Option<u64>,
        entities: Vec<EntityWrite>,
    ) -> Result<()> {
        let ns = ns.to_owned();
        self.write(move |tx| {
            let mut table = tx.open_table(ENTITIES)?;
            let now = now_ms();
            for entity in entities {
                let key = entity_key(&ns, &entity.key);
                let mut record = read_live(&table, &key, now)?.unwrap_or_default();
                for (name, value) in entity.fields {
                    match record.fields.iter_mut().find(|(n, _)| *n == name) {
                        Some(slot) => slot.1 = value,
                        None => record.fields.push((name, value)),
                    }
                }
                record.expires_at_ms =
                    ttl_seconds.map_or(0, |t| now.saturating_add(t.saturating_mul(1000)));
                table.insert(key.as_slice(), record.encode().as_slice())?;
            }
            Ok(())
        })
        .await
    }

    async fn get_entity(&self, ns: &str, key: &str) -> Result<Option<Vec<(String, Vec<u8>)>>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(ENTITIES)?;
        Ok(read_live(&table, &entity_key(ns, key), now_ms())?
            .filter(|r| !r.fields.is_empty())
            .map(|r| r.fields))
    }

    async fn delete_entity(&self, ns: &str, key: &str) -> Result<()> {
        let key = entity_key(ns, key);
        self.write(move |tx| {
            tx.open_table(ENTITIES)?.remove(key.as_slice())?;
            Ok(())
        })
        .await
    }

    // Reads run inline on the async worker rather than in spawn_blocking: a redb read of a
    // batch is a few microseconds of B-tree walks with no I/O wait once pages are cached, and
    // a thread hop would cost more than the read itself.
    async fn lookup(&self, ns: &str, keys: &[String], fields: &[String]) -> Result<Vec<Row>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(ENTITIES)?;
        let now = now_ms();
        let mut rows = Vec::with_capacity(keys.len());
        for key in keys {
            let row = read_live(&table, &entity_key(ns, key), now)?
                .filter(|r| !r.fields.is_empty())
                .map(|r| {
                    fields
                        .iter()
                        .map(|f| r.field(f).map(bytes::Bytes::copy_from_slice))
                        .collect()
                });
            rows.push(row);
        }
        Ok(rows)
    }

    async fn drop_field(&self, ns: &str, field: &str) -> Result<u64> {
        let (start, end) = namespace_range(ns);
        let field = field.to_owned();
        self.write(move |tx| {
            let mut table = tx.open_table(ENTITIES)?;
            let mut changed = Vec::new();
            for entry in table.range(start.as_slice()..end.as_slice())? {
                let (key, value) = entry?;
                let mut record = Record::decode(value.value())?;
                let before = record.fields.len();
                record.fields.retain(|(n, _)| *n != field);
                if record.fields.len() != before {
                    changed.push((key.value().to_vec(), record));
                }
            }
            let count = changed.len() as u64;
            for (key, record) in changed {
                if record.fields.is_empty() {
                    // Like Redis, a hash with no fields left no longer exists.
                    table.remove(key.as_slice())?;
                } else {
                    table.insert(key.as_slice(), record.encode().as_slice())?;
                }
            }
            Ok(count)
        })
        .await
    }

    async fn delete_namespace(&self, ns: &str) -> Result<u64> {
        let (start, end) = namespace_range(ns);
        let name = ns.to_owned();
        self.write(move |tx| {
            tx.open_table(SCHEMAS)?.remove(name.as_str())?;
            let mut table = tx.open_table(ENTITIES)?;
            let keys: Vec<Vec<u8>> = table
                .range(start.as_slice()..end.as_slice())?
                .map(|entry| entry.map(|(key, _)| key.value().to_vec()))
                .collect::<std::result::Result<_, _>>()?;
            for key in &keys {
                table.remove(key.as_slice())?;
            }
            Ok(keys.len() as u64)
        })
        .await
    }

    /// Sizes are the stored record's bytes (key, expiry, field names and values).
    async fn stats(&self, ns: &str) -> Result<crate::stats::NamespaceStats> {
        let (start, end) = namespace_range(ns);
        let tx = self.db.begin_read()?;
        let table = tx.open_table(ENTITIES)?;
        let now = now_ms();
        let mut sizes = Vec::new();
        for entry in table.range(start.as_slice()..end.as_slice())? {
            let (key, value) = entry?;
            if !Record::decode(value.value())?.live(now) {
                continue;
            }
            let name = String::from_utf8_lossy(&key.value()[start.len()..]).into_owned();
            sizes.push((name, (key.value().len() + value.value().len()) as u64));
        }
        let entities = sizes.len() as u64;
        let sample = crate::stats::sample_indices(sizes.len())
            .map(|i| sizes[i].clone())
            .collect();
        Ok(crate::stats::summarize(
            vec![crate::stats::NodeShare {
                node: "embedded".into(),
                entities,
            }],
            sample,
        ))
    }

    async fn count_entities(&self, ns: &str) -> Result<u64> {
        let (start, end) = namespace_range(ns);
        let tx = self.db.begin_read()?;
        let table = tx.open_table(ENTITIES)?;
        let now = now_ms();
        let mut count = 0;
        for entry in table.range(start.as_slice()..end.as_slice())? {
            let (_, value) = entry?;
            if Record::decode(value.value())?.live(now) {
                count += 1;
            }
        }
        Ok(count)
    }

    async fn put_states(&self, ns: &str, states: Vec<EntityState>) -> Result<()> {
        let ns = ns.to_owned();
        self.write(move |tx| {
            let mut table = tx.open_table(ENTITIES)?;
            let now = now_ms();
            for state in states {
                let key = entity_key(&ns, &state.key);
                let expired = state.expires_at_ms.is_some_and(|at| at <= now);
                if state.deleted || state.fields.is_empty() || expired {
                    table.remove(key.as_slice())?;
                    continue;
                }
                let mut record = read_live(&table, &key, now)?.unwrap_or_default();
                for (name, value) in state.fields {
                    match record.fields.iter_mut().find(|(n, _)| *n == name) {
                        Some(slot) => slot.1 = value,
                        None => record.fields.push((name, value)),
                    }
                }
                record.expires_at_ms = state.expires_at_ms.unwrap_or(0);
                table.insert(key.as_slice(), record.encode().as_slice())?;
            }
            Ok(())
        })
        .await
    }

    async fn put_view(&self, category: &str, view: &[u8]) -> Result<()> {
        let name = category.to_owned();
        let view = view.to_vec();
        self.write(move |tx| {
            tx.open_table(VIEWS)?
                .insert(name.as_str(), view.as_slice())?;
            Ok(())
        })
        .await?;
        // Only after the commit, so that a listener that re-reads the view gets the new one.
        self.announcer
            .announce(Invalidation::Category(category.to_owned()));
        Ok(())
    }

    async fn get_view(&self, category: &str) -> Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(VIEWS)?;
        Ok(table.get(category)?.map(|value| value.value().to_vec()))
    }

    async fn invalidations(&self) -> Result<BoxStream<'static, Invalidation>> {
        Ok(self.announcer.listen())
    }
}
