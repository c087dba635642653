//! `larder rebuild`: recompute every category's serving view from the main DB and write it to
//! the store, e.g. after a Redis was lost or flushed. It runs the rank stage's own computation
//! (one mechanism, so a rebuilt view is exactly what the pipeline would have written), but
//! queues nothing: refills stay the running pipeline's business.

use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use larder_app::{App, AppError, Config, Overrides};
use larder_pipeline::job::RankJob;
use larder_pipeline::{Job, StageKind};

#[derive(Args)]
pub struct RebuildArgs {
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The store to write views to [env: LARDER_STORE] [default: embedded]
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Data directory of the embedded store [env: LARDER_DATA_DIR]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Main DB [env: LARDER_DB] [default: sqlite://<data-dir>/larder.db]
    #[arg(long, value_name = "URL")]
    db: Option<String>,
    /// Only this category (repeatable); default: all.
    #[arg(long, value_name = "NAME")]
    category: Vec<String>,
}

pub async fn run(args: RebuildArgs) -> i32 {
    let overrides = Overrides {
        store: args.store,
        data_dir: args.data_dir,
        db: args.db,
        ..Overrides::default()
    };
    let config = match crate::load_config(args.config.as_deref(), overrides) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match rebuild(config, args.category).await {
        Ok(n) => {
            println!("rebuilt {n} serving views");
            0
        }
        Err(error) => {
            eprintln!("error: {error}");
            1
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum RebuildError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Db(#[from] larder_db::DbError),
    #[error("category {category:?}: {source}")]
    Category {
        category: String,
        source: larder_pipeline::StageError,
    },
}

async fn rebuild(mut config: Config, only: Vec<String>) -> Result<usize, RebuildError> {
    // pool_target 0: no refill claims, which would otherwise hold back the real pipeline.
    config.pipeline.rank.pool_target = 0;
    let app = App::open(config).await?;
    let categories: Vec<String> = if only.is_empty() {
        app.db
            .categories()
            .await?
            .into_iter()
            .map(|c| c.name)
            .collect()
    } else {
        only
    };
    // The rank stage's own computation: a rebuilt view is exactly what the pipeline writes.
    let rank = app
        .stages(&[StageKind::Rank])?
        .pop()
        .ok_or(AppError::Pipeline(larder_pipeline::StageError::Config(
            "no rank stage built".into(),
        )))?;
    let bar = ProgressBar::new(categories.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} categories {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for category in &categories {
        bar.set_message(category.clone());
        rank.process(Job::Rank(RankJob {
            category: category.clone(),
            activate: Vec::new(),
        }))
        .await
        .map_err(|source| RebuildError::Category {
            category: category.clone(),
            source,
        })?;
        bar.inc(1);
    }
    bar.finish_with_message("done");
    Ok(categories.len())
}
