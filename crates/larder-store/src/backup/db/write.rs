//! Writes to the backup: the dual write, pending marks, compare-and-clear.

use sqlx::Row;

use super::{down, text_key, Db, Versioned, Written};
use crate::{EntityWrite, Result, StoreError};

impl Db {
    /// Merge every entity's fields, set its expiry, bump its version: one transaction.
    /// Answers per entity, in the order given. `entities` must not repeat a key.
    pub(crate) async fn upsert(
        &self,
        ns: &str,
        expires_at_ms: Option<i64>,
        entities: &[EntityWrite],
        slots: &[i32],
        now_ms: i64,
    ) -> Result<Vec<Written>> {
        match self {
            Db::Postgres(pool) => {
                let keys: Vec<&[u8]> = entities.iter().map(|e| e.key.as_bytes()).collect();
                let mut f_keys: Vec<&[u8]> = Vec::new();
                let mut f_names: Vec<&str> = Vec::new();
                let mut f_values: Vec<&[u8]> = Vec::new();
                for e in entities {
                    for (name, value) in &e.fields {
                        f_keys.push(e.key.as_bytes());
                        f_names.push(name);
                        f_values.push(value);
                    }
                }
                let mut tx = pool.begin().await.map_err(down)?;
                let rows = sqlx::query(
                    "INSERT INTO larder_backup_entities AS e
                        (ns, key, version, expires_at_ms, deleted, pending, slot, updated_at_ms)
                     SELECT $1, u.key, 1, $2, FALSE, FALSE, u.slot, $3
                     FROM UNNEST($4::bytea[], $5::int[]) AS u(key, slot)
                     ON CONFLICT (ns, key) DO UPDATE SET version = e.version + 1,
                        expires_at_ms = EXCLUDED.expires_at_ms, deleted = FALSE,
                        updated_at_ms = EXCLUDED.updated_at_ms
                     RETURNING key, version, pending",
                )
                .bind(ns)
                .bind(expires_at_ms)
                .bind(now_ms)
                .bind(&keys)
                .bind(slots)
                .fetch_all(&mut *tx)
                .await
                .map_err(down)?;
                sqlx::query(
                    "INSERT INTO larder_backup_fields AS f (ns, key, field, value)
                     SELECT $1, u.key, u.field, u.value
                     FROM UNNEST($2::bytea[], $3::text[], $4::bytea[]) AS u(key, field, value)
                     ON CONFLICT (ns, key, field) DO UPDATE SET value = EXCLUDED.value",
                )
                .bind(ns)
                .bind(&f_keys)
                .bind(&f_names)
                .bind(&f_values)
                .execute(&mut *tx)
                .await
                .map_err(down)?;
                tx.commit().await.map_err(down)?;
                // RETURNING has no defined order: put the rows back in request order.
                let mut by_key = std::collections::HashMap::with_capacity(rows.len());
                for row in rows {
                    let key: Vec<u8> = row.try_get(0).map_err(down)?;
                    let written = Written {
                        version: row.try_get(1).map_err(down)?,
                        pending: row.try_get(2).map_err(down)?,
                    };
                    by_key.insert(key, written);
                }
                entities
                    .iter()
                    .map(|e| {
                        by_key.get(e.key.as_bytes()).copied().ok_or_else(|| {
                            StoreError::BackupUnavailable(format!(
                                "the backup did not answer for key {:?}",
                                e.key
                            ))
                        })
                    })
                    .collect()
            }
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await.map_err(down)?;
                let mut out = Vec::with_capacity(entities.len());
                for (e, slot) in entities.iter().zip(slots) {
                    let row = sqlx::query(
                        "INSERT INTO larder_backup_entities AS e
                            (ns, key, version, expires_at_ms, deleted, pending, slot, updated_at_ms)
                         VALUES ($1, $2, 1, $3, FALSE, FALSE, $4, $5)
                         ON CONFLICT (ns, key) DO UPDATE SET version = e.version + 1,
                            expires_at_ms = excluded.expires_at_ms, deleted = FALSE,
                            updated_at_ms = excluded.updated_at_ms
                         RETURNING version, pending",
                    )
                    .bind(ns)
                    .bind(e.key.as_bytes())
                    .bind(expires_at_ms)
                    .bind(slot)
                    .bind(now_ms)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(down)?;
                    out.push(Written {
                        version: row.try_get(0).map_err(down)?,
                        pending: row.try_get(1).map_err(down)?,
                    });
                    for (name, value) in &e.fields {
                        sqlx::query(
                            "INSERT INTO larder_backup_fields (ns, key, field, value)
                             VALUES ($1, $2, $3, $4)
                             ON CONFLICT (ns, key, field) DO UPDATE SET value = excluded.value",
                        )
                        .bind(ns)
                        .bind(e.key.as_bytes())
                        .bind(name)
                        .bind(value.as_slice())
                        .execute(&mut *tx)
                        .await
                        .map_err(down)?;
                    }
                }
                tx.commit().await.map_err(down)?;
                Ok(out)
            }
        }
    }

    /// Tombstone the entity and drop its fields.
    pub(crate) async fn delete(
        &self,
        ns: &str,
        key: &str,
        slot: i32,
        now_ms: i64,
    ) -> Result<Written> {
        both!(self, |pool| {
            let mut tx = pool.begin().await.map_err(down)?;
            let row = sqlx::query(
                "INSERT INTO larder_backup_entities AS e
                    (ns, key, version, expires_at_ms, deleted, pending, slot, updated_at_ms)
                 VALUES ($1, $2, 1, NULL, TRUE, FALSE, $3, $4)
                 ON CONFLICT (ns, key) DO UPDATE SET version = e.version + 1,
                    expires_at_ms = NULL, deleted = TRUE, updated_at_ms = excluded.updated_at_ms
                 RETURNING version, pending",
            )
            .bind(ns)
            .bind(key.as_bytes())
            .bind(slot)
            .bind(now_ms)
            .fetch_one(&mut *tx)
            .await
            .map_err(down)?;
            sqlx::query("DELETE FROM larder_backup_fields WHERE ns = $1 AND key = $2")
                .bind(ns)
                .bind(key.as_bytes())
                .execute(&mut *tx)
                .await
                .map_err(down)?;
            tx.commit().await.map_err(down)?;
            Ok(Written {
                version: row.try_get(0).map_err(down)?,
                pending: row.try_get(1).map_err(down)?,
            })
        })
    }

    /// Store a namespace schema (JSON).
    pub(crate) async fn put_schema(&self, ns: &str, json: &str, now_ms: i64) -> Result<Written> {
        both!(self, |pool| {
            let row = sqlx::query(
                "INSERT INTO larder_backup_schemas AS s (ns, schema, version, pending, updated_at_ms)
                 VALUES ($1, $2, 1, FALSE, $3)
                 ON CONFLICT (ns) DO UPDATE SET schema = excluded.schema,
                    version = s.version + 1, updated_at_ms = excluded.updated_at_ms
                 RETURNING version, pending",
            )
            .bind(ns)
            .bind(json)
            .bind(now_ms)
            .fetch_one(pool)
            .await
            .map_err(down)?;
            Ok(Written {
                version: row.try_get(0).map_err(down)?,
                pending: row.try_get(1).map_err(down)?,
            })
        })
    }

    /// Drop one field of every entity of `ns`.
    pub(crate) async fn drop_field(&self, ns: &str, field: &str) -> Result<()> {
        both!(self, |pool| sqlx::query(
            "DELETE FROM larder_backup_fields WHERE ns = $1 AND field = $2"
        )
        .bind(ns)
        .bind(field)
        .execute(pool)
        .await
        .map(drop)
        .map_err(down))
    }

    /// Forget namespace `ns` whole: its schema, entities and fields, in one transaction.
    pub(crate) async fn delete_namespace(&self, ns: &str) -> Result<()> {
        both!(self, |pool| {
            let mut tx = pool.begin().await.map_err(down)?;
            for table in [
                "larder_backup_fields",
                "larder_backup_entities",
                "larder_backup_schemas",
            ] {
                sqlx::query(&format!("DELETE FROM {table} WHERE ns = $1"))
                    .bind(ns)
                    .execute(&mut *tx)
                    .await
                    .map_err(down)?;
            }
            tx.commit().await.map_err(down)
        })
    }

    /// Mark keys as waiting for replay (their Redis write failed or may have been overtaken).
    pub(crate) async fn mark_pending(&self, ns: &str, keys: &[&str]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        match self {
            Db::Postgres(pool) => {
                let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
                sqlx::query(
                    "UPDATE larder_backup_entities SET pending = TRUE
                     WHERE ns = $1 AND key = ANY($2::bytea[])",
                )
                .bind(ns)
                .bind(&keys)
                .execute(pool)
                .await
                .map_err(down)?;
            }
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await.map_err(down)?;
                for key in keys {
                    sqlx::query(
                        "UPDATE larder_backup_entities SET pending = TRUE
                         WHERE ns = $1 AND key = $2",
                    )
                    .bind(ns)
                    .bind(key.as_bytes())
                    .execute(&mut *tx)
                    .await
                    .map_err(down)?;
                }
                tx.commit().await.map_err(down)?;
            }
        }
        Ok(())
    }

    /// Mark a schema as waiting for replay.
    pub(crate) async fn mark_schema_pending(&self, ns: &str) -> Result<()> {
        both!(self, |pool| sqlx::query(
            "UPDATE larder_backup_schemas SET pending = TRUE WHERE ns = $1"
        )
        .bind(ns)
        .execute(pool)
        .await
        .map(drop)
        .map_err(down))
    }

    /// Mark every entity written since `since_ms` in the given slot ranges as waiting for
    /// replay (a primary failed over: its last writes may not have reached the replica).
    pub(crate) async fn mark_recent_pending(
        &self,
        since_ms: i64,
        slots: &[(u16, u16)],
    ) -> Result<u64> {
        both!(self, |pool| {
            let mut tx = pool.begin().await.map_err(down)?;
            let mut marked = 0;
            for (start, end) in slots {
                marked += sqlx::query(
                    "UPDATE larder_backup_entities SET pending = TRUE
                     WHERE updated_at_ms >= $1 AND slot BETWEEN $2 AND $3 AND NOT pending",
                )
                .bind(since_ms)
                .bind(i32::from(*start))
                .bind(i32::from(*end))
                .execute(&mut *tx)
                .await
                .map_err(down)?
                .rows_affected();
            }
            tx.commit().await.map_err(down)?;
            Ok(marked)
        })
    }

    /// Of the given keys, those whose version moved past the one given: another write
    /// committed after this one, and may have reached Redis before it.
    pub(crate) async fn overtaken(&self, ns: &str, written: &[(&str, i64)]) -> Result<Vec<String>> {
        if written.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Db::Postgres(pool) => {
                let keys: Vec<&[u8]> = written.iter().map(|(k, _)| k.as_bytes()).collect();
                let versions: Vec<i64> = written.iter().map(|(_, v)| *v).collect();
                let rows = sqlx::query(
                    "SELECT e.key FROM larder_backup_entities e
                     JOIN UNNEST($2::bytea[], $3::bigint[]) AS u(key, version)
                       ON e.key = u.key AND e.version > u.version
                     WHERE e.ns = $1",
                )
                .bind(ns)
                .bind(&keys)
                .bind(&versions)
                .fetch_all(pool)
                .await
                .map_err(down)?;
                rows.into_iter()
                    .map(|r| text_key(ns, r.try_get(0).map_err(down)?))
                    .collect()
            }
            Db::Sqlite(pool) => {
                let mut conn = pool.acquire().await.map_err(down)?;
                let mut out = Vec::new();
                for (key, version) in written {
                    let newer = sqlx::query(
                        "SELECT 1 FROM larder_backup_entities
                         WHERE ns = $1 AND key = $2 AND version > $3",
                    )
                    .bind(ns)
                    .bind(key.as_bytes())
                    .bind(version)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(down)?;
                    if newer.is_some() {
                        out.push((*key).to_owned());
                    }
                }
                Ok(out)
            }
        }
    }

    /// Clear the pending mark of keys still at the version that was replayed (a write that
    /// committed since keeps its key pending).
    pub(crate) async fn clear_pending(&self, done: &[Versioned]) -> Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        match self {
            Db::Postgres(pool) => {
                let ns: Vec<&str> = done.iter().map(|d| d.ns.as_str()).collect();
                let keys: Vec<&[u8]> = done.iter().map(|d| d.key.as_bytes()).collect();
                let versions: Vec<i64> = done.iter().map(|d| d.version).collect();
                sqlx::query(
                    "UPDATE larder_backup_entities AS e SET pending = FALSE
                     FROM UNNEST($1::text[], $2::bytea[], $3::bigint[]) AS u(ns, key, version)
                     WHERE e.ns = u.ns AND e.key = u.key AND e.version = u.version",
                )
                .bind(&ns)
                .bind(&keys)
                .bind(&versions)
                .execute(pool)
                .await
                .map_err(down)?;
            }
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await.map_err(down)?;
                for d in done {
                    sqlx::query(
                        "UPDATE larder_backup_entities SET pending = FALSE
                         WHERE ns = $1 AND key = $2 AND version = $3",
                    )
                    .bind(&d.ns)
                    .bind(d.key.as_bytes())
                    .bind(d.version)
                    .execute(&mut *tx)
                    .await
                    .map_err(down)?;
                }
                tx.commit().await.map_err(down)?;
            }
        }
        Ok(())
    }

    pub(crate) async fn clear_schema_pending(&self, ns: &str, version: i64) -> Result<()> {
        both!(self, |pool| sqlx::query(
            "UPDATE larder_backup_schemas SET pending = FALSE WHERE ns = $1 AND version = $2"
        )
        .bind(ns)
        .bind(version)
        .execute(pool)
        .await
        .map(drop)
        .map_err(down))
    }
}
