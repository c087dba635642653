//! Each part of the app on its own, for commands that need only some of them (`restore` and
//! `load` need no main DB or broker). Every error names what could not be opened.

use std::sync::Arc;

use larder_db::Db;
use larder_store::{Backup, Store};

use crate::{AppError, Config};

/// The store `config.store` names, dual-writing to `config.backup` when one is configured.
pub async fn store(config: &Config) -> Result<Arc<dyn Store>, AppError> {
    larder_store::open(&config.store, &config.store_options())
        .await
        .map_err(store_error(config))
}

/// The store alone: no backup, no metering (`restore` writes what came from the backup).
pub async fn raw_store(config: &Config) -> Result<Arc<dyn Store>, AppError> {
    larder_store::open_raw(&config.store, &config.store_options())
        .await
        .map_err(store_error(config))
}

fn store_error(config: &Config) -> impl FnOnce(larder_store::StoreError) -> AppError + '_ {
    |source| AppError::Store {
        store: config.store.to_string(),
        source,
    }
}

/// The backup `config.backup` names, if any.
pub async fn backup(config: &Config) -> Result<Option<Backup>, AppError> {
    let Some(url) = &config.backup else {
        return Ok(None);
    };
    Backup::connect(url)
        .await
        .map(Some)
        .map_err(|source| AppError::Backup {
            backup: url.to_string(),
            source,
        })
}

/// The main DB `config.db` names, or its default.
pub async fn db(config: &Config) -> Result<Db, AppError> {
    let url = config.db_url();
    Db::connect(&url).await.map_err(|source| AppError::Db {
        db: url.to_string(),
        source,
    })
}
