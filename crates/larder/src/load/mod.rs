//! `larder load FILE --namespace N`: re-inject embeddings from outside into the store (and
//! the backup, when one is configured), e.g. after losing data no backup held, or to fill a
//! new namespace from a training pipeline's output.
//!
//! A source per format reads the file on a thread of its own, row by row, never the whole
//! file at once (Parquet in record batches, the others streamed), and hands each row to the
//! [`Sink`]. The sink validates it as the upsert API does (key, known field, dimension,
//! finite values), encodes it to the stored dtype and sends batches to the writers, which
//! keep several `Store::upsert` calls in flight (on a cluster each is one pipeline per
//! primary). A bad row is reported on stderr with its 0-based row number; `skip` goes on,
//! `abort` stops before anything more is written.
//!
//! - `parquet.rs`: a key column and one `list<float>` / `fixed_size_list<float>` column per field;
//! - `npy.rs`: a 2-D f32/f16 array for one field; keys from `--keys`, else `row:N`;
//! - `jsonl.rs`: one upsert entity per line;
//! - `safetensors.rs`: one 2-D tensor per field; keys as for NPY.

mod jsonl;
mod keys;
mod npy;
mod parquet;
mod safetensors;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, ValueEnum};
use futures::stream::{FuturesUnordered, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use larder_app::{Config, Overrides};
use larder_store::schema::valid_key;
use larder_store::{codec, EntityWrite, FieldSpec, NamespaceSchema, Store, StoreError};

/// Entities per `Store::upsert` call.
const BATCH: usize = 2000;
/// Upsert calls in flight at once.
const IN_FLIGHT: usize = 4;

#[derive(Args)]
pub struct LoadArgs {
    /// The file to load: .parquet, .npy, .jsonl or .safetensors (format from the extension).
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The namespace to load into (it must exist).
    #[arg(long, value_name = "N")]
    namespace: String,
    /// The TOML config file `larder serve` reads (store, backup, timeouts).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The store to write [env: LARDER_STORE] [default: embedded]
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Also write the backup: postgres://… | sqlite://FILE [env: LARDER_BACKUP]
    #[arg(long, value_name = "URL")]
    backup: Option<String>,
    /// Data directory of the embedded store [env: LARDER_DATA_DIR]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The field an NPY file holds (default: the namespace's only field); for Parquet and
    /// safetensors, load only this field.
    #[arg(long, value_name = "F")]
    field: Option<String>,
    /// Parquet: the column holding the entity keys.
    #[arg(long, value_name = "K", default_value = "key")]
    key_column: String,
    /// NPY and safetensors: one key per line, in row order (default: row:0, row:1, …).
    #[arg(long, value_name = "KEYS.txt")]
    keys: Option<PathBuf>,
    /// What a bad row does: skip it (reported on stderr) or abort the load.
    #[arg(long, value_enum, default_value_t = OnError::Skip)]
    on_error: OnError,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnError {
    Skip,
    Abort,
}

/// Why a load stopped early.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read as the format its extension names, or does not fit the
    /// namespace (exit 1 before writing anything).
    #[error("{0}")]
    File(String),
    /// A bad row with `--on-error abort`.
    #[error("aborted at row {row}: {reason}")]
    Aborted { row: u64, reason: String },
    /// The store (or the backup) refused a write.
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
    /// The store or the backup could not be opened.
    #[error(transparent)]
    Open(#[from] larder_app::AppError),
}

impl LoadError {
    pub(crate) fn file(what: impl std::fmt::Display) -> LoadError {
        LoadError::File(what.to_string())
    }
}

/// A file format: reads its rows into the sink.
pub(crate) trait Source: Send {
    /// Rows in the file, when the format says (for the progress bar).
    fn rows(&self) -> Option<u64>;
    /// Read every row into `sink`.
    fn read(&mut self, sink: &mut Sink) -> Result<(), LoadError>;
}

/// Validates and encodes rows, and hands full batches to the writers.
pub(crate) struct Sink {
    schema: NamespaceSchema,
    on_error: OnError,
    batch: Vec<EntityWrite>,
    tx: tokio::sync::mpsc::Sender<Vec<EntityWrite>>,
    bar: ProgressBar,
    rejected: u64,
}

impl Sink {
    /// The schema of the field named `name`.
    pub(crate) fn spec(&self, name: &str) -> Option<FieldSpec> {
        self.schema.fields.get(name).copied()
    }

    /// Every field name of the namespace, for messages.
    pub(crate) fn field_names(&self) -> String {
        self.schema
            .fields
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// One row: validate, encode, and queue it.
    pub(crate) fn row(
        &mut self,
        row: u64,
        key: &str,
        fields: &[(&str, &[f32])],
    ) -> Result<(), LoadError> {
        match self.encode(key, fields) {
            Ok(entity) => {
                self.batch.push(entity);
                if self.batch.len() >= BATCH {
                    self.flush()?;
                }
                Ok(())
            }
            Err(reason) => self.bad(row, reason),
        }
    }

    fn encode(&self, key: &str, fields: &[(&str, &[f32])]) -> Result<EntityWrite, String> {
        if !valid_key(key) {
            return Err(format!(
                "entity keys must be 1..=512 bytes of UTF-8, got {} bytes",
                key.len()
            ));
        }
        if fields.is_empty() {
            return Err(format!("{key:?} has no fields"));
        }
        let fields = fields
            .iter()
            .map(|(name, values)| {
                let spec = self.spec(name).ok_or_else(|| {
                    format!(
                        "the namespace has no field {name:?} (fields: {})",
                        self.field_names()
                    )
                })?;
                codec::encode(spec.dtype, spec.dim, values)
                    .map(|bytes| ((*name).to_owned(), bytes))
                    .map_err(|e| format!("field {name:?}: {e}"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        self.schema
            .check_entity(key, fields.iter().map(|(n, v)| (n.as_str(), v.len())))?;
        Ok(EntityWrite {
            key: key.to_owned(),
            fields,
        })
    }

    /// A row that cannot be loaded.
    pub(crate) fn bad(
        &mut self,
        row: u64,
        reason: impl std::fmt::Display,
    ) -> Result<(), LoadError> {
        let reason = reason.to_string();
        if self.on_error == OnError::Abort {
            return Err(LoadError::Aborted { row, reason });
        }
        self.rejected += 1;
        self.bar.suspend(|| eprintln!("row {row}: {reason}"));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), LoadError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        // The writers stop taking batches only when the store failed; they report why.
        self.tx
            .blocking_send(batch)
            .map_err(|_| LoadError::File("the writers stopped".into()))
    }
}

/// Open the source for `file` by its extension.
fn open_source(args: &LoadArgs, schema: &NamespaceSchema) -> Result<Box<dyn Source>, LoadError> {
    let ext = args
        .file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let keys = || keys::Keys::open(args.keys.as_deref());
    Ok(match ext.as_str() {
        "parquet" => Box::new(parquet::ParquetSource::open(
            &args.file,
            &args.key_column,
            args.field.as_deref(),
            schema,
        )?),
        "npy" => {
            let field = match &args.field {
                Some(f) => f.clone(),
                None if schema.fields.len() == 1 => {
                    schema.fields.keys().next().cloned().unwrap_or_default()
                }
                None => {
                    return Err(LoadError::file(format!(
                        "--field: an NPY file holds one field; name it (the namespace has {})",
                        schema.fields.keys().cloned().collect::<Vec<_>>().join(", ")
                    )))
                }
            };
            Box::new(npy::NpySource::open(&args.file, field, keys()?)?)
        }
        "jsonl" => Box::new(jsonl::JsonlSource::open(&args.file)?),
        "safetensors" => Box::new(safetensors::SafetensorsSource::open(
            &args.file,
            args.field.as_deref(),
            schema,
            keys()?,
        )?),
        other => {
            return Err(LoadError::file(format!(
                "{}: unknown format {other:?}; expected .parquet, .npy, .jsonl or .safetensors",
                args.file.display()
            )))
        }
    })
}

pub async fn run(args: LoadArgs) -> i32 {
    let overrides = Overrides {
        store: args.store.clone(),
        data_dir: args.data_dir.clone(),
        backup: args.backup.clone(),
        ..Overrides::default()
    };
    let config = match crate::load_config(args.config.as_deref(), overrides) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if !larder_store::schema::valid_namespace(&args.namespace) {
        eprintln!(
            "error: --namespace: {:?} must match ^[a-z0-9][a-z0-9_-]{{0,63}}$",
            args.namespace
        );
        return 2;
    }
    if !args.file.exists() {
        eprintln!("error: FILE: {} does not exist", args.file.display());
        return 2;
    }
    match load(&config, &args).await {
        Ok(report) => {
            println!("{report}");
            0
        }
        Err((error, report)) => {
            eprintln!("error: {error}");
            if let Some(report) = report {
                println!("{report}");
            }
            1
        }
    }
}

/// What a load did.
struct Report {
    loaded: u64,
    rejected: u64,
    seconds: f64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "loaded {} entities in {:.1} s ({:.0} entities/s), rejected {}",
            self.loaded,
            self.seconds,
            self.loaded as f64 / self.seconds.max(1e-9),
            self.rejected
        )
    }
}

async fn load(config: &Config, args: &LoadArgs) -> Result<Report, (LoadError, Option<Report>)> {
    let fail = |e: LoadError| (e, None);
    let store = larder_app::open::store(config)
        .await
        .map_err(|e| fail(e.into()))?;
    let schema = store
        .get_schema(&args.namespace)
        .await
        .map_err(|e| fail(e.into()))?
        .ok_or_else(|| {
            fail(LoadError::file(format!(
                "--namespace: {:?} does not exist; create it first (PUT /v1/namespaces/{})",
                args.namespace, args.namespace
            )))
        })?;
    if config.backup.is_some() {
        // The backup must hold the schema too, or a restore would bring back entities of a
        // namespace it does not know (the namespace may predate the backup).
        store
            .put_schema(&args.namespace, &schema)
            .await
            .map_err(|e| fail(e.into()))?;
    }
    let mut source = open_source(args, &schema).map_err(fail)?;
    let bar = match source.rows() {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} rows, {per_sec}, eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {pos} rows, {per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    let start = Instant::now();
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<EntityWrite>>(IN_FLIGHT);
    let mut sink = Sink {
        schema,
        on_error: args.on_error,
        batch: Vec::with_capacity(BATCH),
        tx,
        bar: bar.clone(),
        rejected: 0,
    };
    // The source reads on a blocking thread; the writers run here.
    let reader = tokio::task::spawn_blocking(move || {
        let out = source.read(&mut sink).and_then(|()| sink.flush());
        (out, sink.rejected)
    });
    let written = write_all(store, &args.namespace, rx, &bar).await;
    let (read, rejected) = reader
        .await
        .unwrap_or_else(|e| (Err(LoadError::file(format!("the reader failed: {e}"))), 0));
    bar.finish_and_clear();
    let report = |loaded| Report {
        loaded,
        rejected,
        seconds: start.elapsed().as_secs_f64(),
    };
    match (written, read) {
        (Err((error, loaded)), _) => Err((error.into(), Some(report(loaded)))),
        (Ok(loaded), Err(error)) => Err((error, Some(report(loaded)))),
        (Ok(loaded), Ok(())) => Ok(report(loaded)),
    }
}

/// Upsert batches as they come, `IN_FLIGHT` at a time; stops at the first store error.
async fn write_all(
    store: Arc<dyn Store>,
    ns: &str,
    mut rx: tokio::sync::mpsc::Receiver<Vec<EntityWrite>>,
    bar: &ProgressBar,
) -> Result<u64, (StoreError, u64)> {
    let ttl = store
        .get_schema(ns)
        .await
        .map_err(|e| (e, 0))?
        .and_then(|s| s.ttl_seconds);
    let mut writing = FuturesUnordered::new();
    let mut loaded = 0u64;
    let mut open = true;
    while open || !writing.is_empty() {
        tokio::select! {
            batch = rx.recv(), if open && writing.len() < IN_FLIGHT => match batch {
                Some(batch) => {
                    let n = batch.len() as u64;
                    let store = store.clone();
                    writing.push(async move { store.upsert(ns, ttl, batch).await.map(|()| n) });
                }
                None => open = false,
            },
            Some(done) = writing.next(), if !writing.is_empty() => match done {
                Ok(n) => {
                    loaded += n;
                    bar.inc(n);
                }
                // Dropping `rx` stops the reader at its next batch.
                Err(error) => return Err((error, loaded)),
            },
        }
    }
    Ok(loaded)
}

/// Little-endian element types the array formats carry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Element {
    F32,
    F16,
    Bf16,
}

impl Element {
    pub(crate) fn size(self) -> usize {
        match self {
            Element::F32 => 4,
            Element::F16 | Element::Bf16 => 2,
        }
    }

    /// Decode `raw` (`out.len()` elements) into `out`.
    pub(crate) fn decode(self, raw: &[u8], out: &mut [f32]) {
        match self {
            Element::F32 => {
                for (v, c) in out.iter_mut().zip(raw.chunks_exact(4)) {
                    *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Element::F16 => {
                for (v, c) in out.iter_mut().zip(raw.chunks_exact(2)) {
                    *v = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            Element::Bf16 => {
                for (v, c) in out.iter_mut().zip(raw.chunks_exact(2)) {
                    *v = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
        }
    }
}

/// Check that a file's declared row count and a keys file agree.
pub(crate) fn check_key_count(keys: &keys::Keys, rows: u64, file: &Path) -> Result<(), LoadError> {
    match keys.count() {
        Some(n) if n != rows => Err(LoadError::file(format!(
            "--keys: {} has {n} keys but {} has {rows} rows",
            keys.path_display(),
            file.display()
        ))),
        _ => Ok(()),
    }
}
