//! `larder restore`: rebuild the store (standalone Redis or a cluster) from the backup, e.g.
//! after a `FLUSHALL` or after losing a primary together with its replica. Schemas first, then
//! every live entity, pipelined per node with several batches in flight; a progress bar on a
//! terminal, and one final line on stdout.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use larder_app::{open, AppError, Config, Overrides};
use larder_store::schema::valid_namespace;

#[derive(Args)]
pub struct RestoreArgs {
    /// The TOML config file `larder serve` reads (store, backup, timeouts).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The store to rebuild [env: LARDER_STORE] [default: embedded]
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// The backup to read: postgres://… | sqlite://FILE [env: LARDER_BACKUP]
    #[arg(long, value_name = "URL")]
    backup: Option<String>,
    /// Only this namespace (default: every namespace in the backup).
    #[arg(long, value_name = "N")]
    namespace: Option<String>,
    /// Data directory of the embedded store [env: LARDER_DATA_DIR]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

pub async fn run(args: RestoreArgs) -> i32 {
    let overrides = Overrides {
        store: args.store,
        data_dir: args.data_dir,
        backup: args.backup,
        ..Overrides::default()
    };
    let config = match crate::load_config(args.config.as_deref(), overrides) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if config.backup.is_none() {
        eprintln!("error: --backup: restore reads the backup; give --backup URL, LARDER_BACKUP or backup in the config file");
        return 2;
    }
    if let Some(ns) = &args.namespace {
        if !valid_namespace(ns) {
            eprintln!("error: --namespace: {ns:?} must match ^[a-z0-9][a-z0-9_-]{{0,63}}$");
            return 2;
        }
    }
    match restore(&config, args.namespace.as_deref()).await {
        Ok((n, seconds)) => {
            println!(
                "restored {n} entities in {seconds:.1} s ({:.0} entities/s)",
                n as f64 / seconds.max(1e-9)
            );
            0
        }
        Err(error) => {
            eprintln!("error: {error}");
            1
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum RestoreError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Store(#[from] larder_store::StoreError),
    #[error("--backup: restore reads the backup; none is configured")]
    NoBackup,
}

async fn restore(config: &Config, ns: Option<&str>) -> Result<(u64, f64), RestoreError> {
    // The store alone: what is restored comes from the backup and must not be written back.
    let store = open::raw_store(config).await?;
    let backup = open::backup(config).await?.ok_or(RestoreError::NoBackup)?;
    let total = backup.count(ns).await?;
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} entities, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let restored =
        larder_store::backup::restore(&backup, store.as_ref(), ns, |n| bar.set_position(n)).await;
    bar.finish_and_clear();
    Ok((restored?, start.elapsed().as_secs_f64()))
}
