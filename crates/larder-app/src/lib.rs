//! # larder-app
//!
//! The one place Larder is assembled. [`Config`] is read once into typed values (the URLs are
//! [`larder_url`] types, so no scheme is looked at anywhere else), and every command builds
//! what it needs here: `serve` and `worker` an [`App`] (store with its backup, main DB,
//! broker, the category domain, and the stages), `rebuild` an [`App`] too, `restore` and `load`
//! the store and backup alone through [`open`].
//!
//! # Layout
//! - [`config`]: the TOML file, `LARDER_*` variables and flags, merged and checked.
//! - [`open`]: each part on its own (store, raw store, backup, main DB).
//! - this file: [`App`], the parts together, and the stages built on them.

pub mod budget;
pub mod config;
pub mod open;

use std::sync::Arc;

use larder_broker::Broker;
use larder_categories::{Admission, Categories, Generations, Reuse};
use larder_db::Db;
use larder_pipeline::runner::PipelineHost;
use larder_pipeline::{Deps, Stage, StageError, StageKind};
use larder_store::Store;

pub use config::{Config, ConfigError, Overrides};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot open store {store}: {source}")]
    Store {
        store: String,
        source: larder_store::StoreError,
    },
    #[error("cannot open the backup {backup}: {source}")]
    Backup {
        backup: String,
        source: larder_store::StoreError,
    },
    #[error("cannot open the main DB {db}: {source}")]
    Db {
        db: String,
        source: larder_db::DbError,
    },
    #[error("cannot open the pipeline broker: {0}")]
    Broker(#[from] larder_broker::BrokerError),
    #[error("pipeline: {0}")]
    Pipeline(#[from] StageError),
}

/// The assembled application: what `serve` serves and what `worker` and `rebuild` run on.
pub struct App {
    pub config: Config,
    /// The store, dual-writing to the backup when one is configured.
    pub store: Arc<dyn Store>,
    /// The main DB (serving's pool; in-process stages open their own).
    pub db: Db,
    pub broker: Arc<dyn Broker>,
    pub categories: Arc<Categories>,
}

impl App {
    /// Open the store (with its backup), the main DB and the broker, and build the category
    /// domain on them.
    pub async fn open(config: Config) -> Result<App, AppError> {
        let store = open::store(&config).await?;
        let db = open::db(&config).await?;
        let broker = larder_pipeline::open_broker(&config.pipeline, &config.store).await?;
        let categories = Categories::new(
            db.clone(),
            store.clone(),
            generations(&db, &broker, &config),
            config.pipeline.rank.ranking(),
            Admission::new(&config.categories, config.auth.is_on()),
            reuse(&config, &db)?,
        );
        Ok(App {
            config,
            store,
            db,
            broker,
            categories,
        })
    }

    /// The stages `kinds`, built on this app's parts.
    pub fn stages(&self, kinds: &[StageKind]) -> Result<Vec<Arc<dyn Stage>>, AppError> {
        let deps = deps(
            &self.config,
            self.db.clone(),
            self.store.clone(),
            &self.broker,
            kinds,
        )?;
        Ok(larder_pipeline::runner::build_stages(
            &self.config.pipeline,
            &deps,
            kinds,
        )?)
    }

    /// Start what `serve` runs beside the HTTP server: the stages listed in `pipeline.stages`
    /// on their own thread and runtime (with their own DB pool, so serving's connections never
    /// wait on the low-priority pipeline thread), the category domain's background tasks, and
    /// the example categories on an empty DB.
    pub async fn start_pipeline(&self) -> Result<Running, AppError> {
        let pipeline = &self.config.pipeline;
        let all_stages = pipeline
            .working_stages()
            .iter()
            .all(|s| pipeline.stages.contains(s));
        if self.broker.kind() == "memory" && !all_stages {
            return Err(AppError::Pipeline(StageError::Config(
                "pipeline.stages: with the in-memory broker every stage must run in this process (no worker can reach its queue); list generate, filter, evaluate and rank (and embed when pipeline.embed is on), or use a Redis store or pipeline.broker".into(),
            )));
        }
        let host = if pipeline.stages.is_empty() {
            None
        } else {
            let (config, store, broker) =
                (self.config.clone(), self.store.clone(), self.broker.clone());
            // An in-memory SQLite DB exists only inside its one pool, so that one is shared.
            let shared_db = self.db.clone();
            let build = move || async move {
                let db = match config.db_url() {
                    larder_url::DbUrl::SqliteMemory => shared_db,
                    url => Db::connect(&url).await?,
                };
                let kinds = &config.pipeline.stages;
                let deps = deps(&config, db, store, &broker, kinds).map_err(|e| match e {
                    AppError::Pipeline(e) => e,
                    other => StageError::Config(other.to_string()),
                })?;
                larder_pipeline::runner::build_stages(
                    &config.pipeline,
                    &deps,
                    &config.pipeline.stages,
                )
            };
            Some(
                PipelineHost::spawn(
                    build,
                    self.broker.clone(),
                    pipeline.heartbeat(),
                    pipeline.idle_priority,
                )
                .await?,
            )
        };
        self.categories.seed(&pipeline.seed_categories).await;
        let mut tasks = vec![
            tokio::spawn(self.categories.clone().follow_announcements()),
            tokio::spawn(self.categories.clone().rank_dirty()),
        ];
        if self.broker.kind() != "memory" {
            // Stages may run in other processes: stream theirs on `GET /v1/events` too, and
            // hand this process's to other `serve`s.
            tasks.push(larder_pipeline::events::relay_out(self.broker.clone()));
            tasks.push(larder_pipeline::events::relay_in(self.broker.clone()));
        }
        tracing::info!(db = self.db.kind(), broker = self.broker.kind(), stages = ?pipeline.stages, "pipeline ready");
        Ok(Running { host, tasks })
    }
}

/// What [`App::start_pipeline`] started; [`Running::stop`] ends it.
pub struct Running {
    host: Option<PipelineHost>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(host) = self.host {
            // Joining the pipeline thread blocks: do it off the async runtime.
            let _ = tokio::task::spawn_blocking(move || host.stop()).await;
        }
    }
}

/// Similar-category reuse on the provider `categories.reuse_provider` names, if any.
fn reuse(config: &Config, db: &Db) -> Result<Option<Reuse>, AppError> {
    let name = &config.categories.reuse_provider;
    if name.is_empty() {
        return Ok(None);
    }
    let provider = config
        .pipeline
        .providers
        .iter()
        .find(|p| &p.name == name)
        .ok_or_else(|| {
            StageError::Config(format!(
                "categories.reuse_provider: no [[pipeline.providers]] is named {name:?}"
            ))
        })?;
    let provider = larder_providers::build_with(provider, &budget::DbLedger::shared(db))
        .map_err(|e| StageError::Config(format!("categories.reuse_provider {name:?}: {e}")))?;
    Ok(Some(Reuse::new(
        provider,
        config.categories.reuse_threshold,
    )))
}

/// Generation claims on `db`, queued on `broker`.
fn generations(db: &Db, broker: &Arc<dyn Broker>, config: &Config) -> Generations {
    Generations::new(
        db.clone(),
        Arc::new(larder_pipeline::Queue::new(broker.clone())),
        config.pipeline.generation_cooldown_ms,
    )
}

/// What the stages `kinds` need, on `db`: the shared text rules, generation claims, and the
/// providers when one of them calls a model (so `rebuild`, which only ranks, needs no API keys).
fn deps(
    config: &Config,
    db: Db,
    store: Arc<dyn Store>,
    broker: &Arc<dyn Broker>,
    kinds: &[StageKind],
) -> Result<Deps, AppError> {
    let calls_models = kinds.iter().any(|k| {
        matches!(
            k,
            StageKind::Generate | StageKind::Evaluate | StageKind::Embed
        )
    });
    let providers = if calls_models {
        larder_pipeline::runner::build_providers(
            &config.pipeline.providers,
            &budget::DbLedger::shared(&db),
        )?
    } else {
        Default::default()
    };
    Ok(Deps {
        generations: generations(&db, broker, config),
        db,
        store,
        providers,
        text: config.pipeline.text,
    })
}
