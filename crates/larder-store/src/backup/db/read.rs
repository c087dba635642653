//! Reads of the backup: what waits for replay, and everything for a restore.

use futures::stream::TryStreamExt;
use sqlx::Row;

use super::{down, text_key, Db, Folder, PendingEntity};
use crate::{EntityState, Result};

impl Db {
    /// Up to `limit` keys waiting for replay, with their current state (one snapshot).
    pub(crate) async fn pending(&self, limit: i64) -> Result<Vec<PendingEntity>> {
        both!(self, |pool| {
            let rows = sqlx::query(
                "SELECT e.ns, e.key, e.version, e.expires_at_ms, e.deleted, f.field, f.value
                 FROM (SELECT ns, key, version, expires_at_ms, deleted
                       FROM larder_backup_entities WHERE pending LIMIT $1) AS e
                 LEFT JOIN larder_backup_fields f ON f.ns = e.ns AND f.key = e.key
                 ORDER BY e.ns, e.key",
            )
            .bind(limit)
            .fetch_all(pool)
            .await
            .map_err(down)?;
            let mut folder = Folder { current: None };
            let mut out = Vec::new();
            for row in rows {
                let ns: String = row.try_get(0).map_err(down)?;
                let key = text_key(&ns, row.try_get(1).map_err(down)?)?;
                let field: Option<String> = row.try_get(5).map_err(down)?;
                let value: Option<Vec<u8>> = row.try_get(6).map_err(down)?;
                let head = (row.try_get(3).map_err(down)?, row.try_get(4).map_err(down)?);
                if let Some((ns, state, version)) = folder.push(
                    ns,
                    key,
                    row.try_get(2).map_err(down)?,
                    head,
                    field.zip(value),
                ) {
                    out.push(PendingEntity { ns, version, state });
                }
            }
            if let Some((ns, state, version)) = folder.current.take() {
                out.push(PendingEntity { ns, version, state });
            }
            Ok(out)
        })
    }

    /// Schemas waiting for replay: `(ns, json, version)`.
    pub(crate) async fn pending_schemas(&self) -> Result<Vec<(String, String, i64)>> {
        both!(self, |pool| {
            let rows =
                sqlx::query("SELECT ns, schema, version FROM larder_backup_schemas WHERE pending")
                    .fetch_all(pool)
                    .await
                    .map_err(down)?;
            rows.into_iter()
                .map(|r| {
                    Ok((
                        r.try_get(0).map_err(down)?,
                        r.try_get(1).map_err(down)?,
                        r.try_get(2).map_err(down)?,
                    ))
                })
                .collect()
        })
    }

    /// Keys and schemas waiting for replay.
    pub(crate) async fn backlog(&self) -> Result<u64> {
        both!(self, |pool| {
            let row = sqlx::query(
                "SELECT (SELECT COUNT(*) FROM larder_backup_entities WHERE pending)
                      + (SELECT COUNT(*) FROM larder_backup_schemas WHERE pending)",
            )
            .fetch_one(pool)
            .await
            .map_err(down)?;
            let n: i64 = row.try_get(0).map_err(down)?;
            Ok(n.max(0) as u64)
        })
    }

    /// Every schema, or `only`'s: `(ns, json)`.
    pub(crate) async fn schemas(&self, only: Option<&str>) -> Result<Vec<(String, String)>> {
        both!(self, |pool| {
            let rows = match only {
                Some(ns) => {
                    sqlx::query("SELECT ns, schema FROM larder_backup_schemas WHERE ns = $1")
                        .bind(ns)
                        .fetch_all(pool)
                        .await
                }
                None => {
                    sqlx::query("SELECT ns, schema FROM larder_backup_schemas ORDER BY ns")
                        .fetch_all(pool)
                        .await
                }
            }
            .map_err(down)?;
            rows.into_iter()
                .map(|r| Ok((r.try_get(0).map_err(down)?, r.try_get(1).map_err(down)?)))
                .collect()
        })
    }

    /// Live entities of every namespace, or `only`'s.
    pub(crate) async fn count_live(&self, only: Option<&str>) -> Result<u64> {
        both!(self, |pool| {
            let row =
                match only {
                    Some(ns) => sqlx::query(
                        "SELECT COUNT(*) FROM larder_backup_entities WHERE NOT deleted AND ns = $1",
                    )
                    .bind(ns)
                    .fetch_one(pool)
                    .await,
                    None => {
                        sqlx::query("SELECT COUNT(*) FROM larder_backup_entities WHERE NOT deleted")
                            .fetch_one(pool)
                            .await
                    }
                }
                .map_err(down)?;
            let n: i64 = row.try_get(0).map_err(down)?;
            Ok(n.max(0) as u64)
        })
    }

    /// Stream every live entity (of `only`, when given) in batches of `batch` entities, read
    /// by a task of its own so that reading the DB overlaps with writing Redis.
    pub(crate) fn live_entities(
        &self,
        only: Option<String>,
        batch: usize,
    ) -> tokio::sync::mpsc::Receiver<Result<Vec<(String, EntityState)>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let db = self.clone();
        tokio::spawn(async move {
            let out = db.send_live(only, batch, &tx).await;
            if let Err(error) = out {
                let _ = tx.send(Err(error)).await;
            }
        });
        rx
    }

    async fn send_live(
        &self,
        only: Option<String>,
        batch: usize,
        tx: &tokio::sync::mpsc::Sender<Result<Vec<(String, EntityState)>>>,
    ) -> Result<()> {
        const ALL: &str = "SELECT e.ns, e.key, e.version, e.expires_at_ms, f.field, f.value
             FROM larder_backup_entities e
             JOIN larder_backup_fields f ON f.ns = e.ns AND f.key = e.key
             WHERE NOT e.deleted ORDER BY e.ns, e.key";
        const ONE: &str = "SELECT e.ns, e.key, e.version, e.expires_at_ms, f.field, f.value
             FROM larder_backup_entities e
             JOIN larder_backup_fields f ON f.ns = e.ns AND f.key = e.key
             WHERE NOT e.deleted AND e.ns = $1 ORDER BY e.ns, e.key";
        both!(self, |pool| {
            let query = match &only {
                Some(ns) => sqlx::query(ONE).bind(ns.clone()),
                None => sqlx::query(ALL),
            };
            let mut rows = query.fetch(pool);
            let mut folder = Folder { current: None };
            let mut out = Vec::with_capacity(batch);
            while let Some(row) = rows.try_next().await.map_err(down)? {
                let ns: String = row.try_get(0).map_err(down)?;
                let key = text_key(&ns, row.try_get(1).map_err(down)?)?;
                let head = (row.try_get(3).map_err(down)?, false);
                let field = (row.try_get(4).map_err(down)?, row.try_get(5).map_err(down)?);
                if let Some((ns, state, _)) =
                    folder.push(ns, key, row.try_get(2).map_err(down)?, head, Some(field))
                {
                    out.push((ns, state));
                    if out.len() >= batch
                        && tx
                            .send(Ok(std::mem::replace(&mut out, Vec::with_capacity(batch))))
                            .await
                            .is_err()
                    {
                        return Ok(());
                    }
                }
            }
            if let Some((ns, state, _)) = folder.current.take() {
                out.push((ns, state));
            }
            if !out.is_empty() {
                let _ = tx.send(Ok(out)).await;
            }
            Ok(())
        })
    }
}
