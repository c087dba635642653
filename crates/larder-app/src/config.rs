//! Server configuration: one TOML file, then `LARDER_*` environment variables, then CLI flags
//! (later wins). Nested keys use `__` in the environment: `LARDER_LIMITS__MAX_LOOKUP_KEYS`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
pub use larder_categories::CategoriesConfig;
pub use larder_pipeline::PipelineConfig;
pub use larder_url::{DbUrl, StoreUrl};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Address of the gRPC API (`larder.v1.Embeddings`); empty turns it off.
    #[serde(with = "larder_url::empty_is_none")]
    pub grpc_listen: Option<SocketAddr>,
    /// `embedded`, `redis://…`, `rediss://…`, `redis-cluster://h:p,h:p`, `rediss-cluster://…`.
    pub store: StoreUrl,
    /// Where the embedded store keeps its file.
    pub data_dir: PathBuf,
    /// Keep the embedded store in memory only.
    pub ephemeral: bool,
    /// Allow binding a non-loopback address with no auth tokens configured.
    pub allow_unauthenticated: bool,
    /// Multiplexed connections to each Redis node.
    pub redis_connections: usize,
    /// `grouped` (one pipeline per primary) or `per-command` (concurrent single commands).
    pub cluster_batch: larder_store::redis_backend::ClusterBatch,
    pub limits: Limits,
    pub auth: Auth,
    pub timeouts: Timeouts,
    pub breaker: BreakerConfig,
    /// The durable backup of every entity write: `postgres://…` or `sqlite://FILE`. Empty:
    /// off. With one, a write is acknowledged once it is in the backup and either in the store
    /// or queued for replay, and `larder restore` can rebuild the store from it.
    #[serde(with = "larder_url::empty_is_none")]
    pub backup: Option<DbUrl>,
    /// How writes Redis did not take are replayed from the backup.
    pub replay: Replay,
    /// The main DB of categories, items, evaluations and feedback: `sqlite://FILE`,
    /// `sqlite::memory:` or `postgres://…`. Empty: `sqlite://{data_dir}/larder.db`, or memory
    /// with `ephemeral`.
    #[serde(with = "larder_url::empty_is_none")]
    pub db: Option<DbUrl>,
    /// Providers and stages of the pre-generation pipeline.
    pub pipeline: PipelineConfig,
    /// The in-process near cache of vectors in front of Redis; off when absent.
    pub near_cache: Option<NearCache>,
    /// Who may create categories, and how many (`max`, `auto_register`, `new_per_minute`), and
    /// similar-category reuse (`reuse_provider`, `reuse_threshold`).
    pub categories: CategoriesConfig,
}

/// `near_cache = { max_bytes = N, ttl_ms = N }`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NearCache {
    /// Bytes of cached keys and vectors, at most.
    pub max_bytes: u64,
    /// Longest an entry is served without asking Redis (never past the entity's own TTL).
    pub ttl_ms: u64,
}

impl Default for NearCache {
    fn default() -> Self {
        NearCache {
            max_bytes: 256 * 1024 * 1024,
            ttl_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_lookup_keys: usize,
    pub max_upsert_entities: usize,
}

/// Bearer tokens. With none configured, `/v1` is open (and the server binds loopback only
/// unless `allow_unauthenticated` is set).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Tokens that may read and write.
    pub write_tokens: Vec<String>,
    /// Tokens that may only read (GET and batch lookup).
    pub read_tokens: Vec<String>,
}

impl Auth {
    /// Whether requests must carry a token.
    pub fn is_on(&self) -> bool {
        !(self.write_tokens.is_empty() && self.read_tokens.is_empty())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Redis connect timeout.
    pub connect_ms: u64,
    /// Redis per-command response timeout.
    pub response_ms: u64,
    /// A batch lookup that takes longer answers degraded (fallback vectors).
    pub lookup_ms: u64,
    /// How long graceful shutdown waits for in-flight requests.
    pub shutdown_ms: u64,
}

/// The dual write to the backup and its replay.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Replay {
    /// How long a write waits for Redis before it is queued for replay instead.
    pub write_timeout_ms: u64,
    /// After a primary failed over, its slots' writes from this long before the failure are
    /// written again (Redis replicates asynchronously).
    pub failover_window_ms: u64,
    /// Keys replayed per round.
    pub batch: usize,
}

impl Default for Replay {
    fn default() -> Self {
        let d = larder_store::BackedOptions::default();
        Replay {
            write_timeout_ms: d.write_timeout.as_millis() as u64,
            failover_window_ms: d.failover_window.as_millis() as u64,
            batch: d.replay_batch,
        }
    }
}

/// Circuit breaker in front of the store's lookup path.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before one trial call is let through.
    pub open_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            grpc_listen: Some(SocketAddr::from(([127, 0, 0, 1], 7879))),
            store: StoreUrl::Embedded,
            data_dir: PathBuf::from("./larder-data"),
            ephemeral: false,
            allow_unauthenticated: false,
            redis_connections: 8,
            cluster_batch: Default::default(),
            limits: Limits::default(),
            auth: Auth::default(),
            timeouts: Timeouts::default(),
            breaker: BreakerConfig::default(),
            backup: None,
            replay: Replay::default(),
            db: None,
            pipeline: Default::default(),
            near_cache: None,
            categories: CategoriesConfig::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 16 * 1024 * 1024,
            max_lookup_keys: 1000,
            max_upsert_entities: 1000,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: 1000,
            response_ms: 1000,
            lookup_ms: 500,
            shutdown_ms: 10_000,
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_ms: 2000,
        }
    }
}

/// Values given on the command line; `None` means "not given".
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// An address, or empty for off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
}

/// The `LARDER_*` environment variables that configure Larder: those whose first segment
/// (before `__`) names a top-level key of [`Config`]. Any other `LARDER_*` variable (a script's
/// `LARDER_BIN`, say) is not Larder's configuration: it is skipped with a warning naming it,
/// rather than refused as an unknown key and stopping the server. Variables under a known key
/// are still read and checked, so `LARDER_LIMITS__NO_SUCH_LIMIT` is still an error.
fn larder_env() -> Env {
    let known = top_level_keys();
    let skipped = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter_map(|name| {
            let key = name.strip_prefix("LARDER_")?;
            (!known.contains(&first_segment(key))).then_some(name)
        });
    for name in skipped {
        tracing::warn!(
            variable = %name,
            "ignoring environment variable {name}: it names no config key (known: {})",
            known.join(", ")
        );
    }
    Env::prefixed("LARDER_")
        .filter(move |key| known.contains(&first_segment(key.as_str())))
        .split("__")
}

/// `limits` for `LIMITS__MAX_LOOKUP_KEYS`, lowercased as figment reads environment keys.
fn first_segment(key: &str) -> String {
    key.split("__")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// The top-level keys of [`Config`], read from its own serialization so they cannot drift
/// from the struct. Optional sections are filled in first, as `None` serializes to nothing.
fn top_level_keys() -> Vec<String> {
    let full = Config {
        near_cache: Some(NearCache::default()),
        ..Config::default()
    };
    match figment::value::Value::serialize(full) {
        Ok(figment::value::Value::Dict(_, dict)) => dict.into_keys().collect(),
        // Config is a struct of named fields: it always serializes to a dict.
        _ => Vec::new(),
    }
}

/// A config error, already phrased for a one-line message on stderr.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Defaults, then `file` (if given), then `LARDER_*`, then `overrides`.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError(format!(
                    "--config: file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file(file));
        }
        let config: Config = figment
            .merge(larder_env())
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| ConfigError(describe(e)))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if matches!(self.backup, Some(DbUrl::SqliteMemory)) {
            return Err(ConfigError(
                "--backup: an in-memory SQLite backup would be lost with the process; expected postgres://user@host:port/db or sqlite://FILE".into(),
            ));
        }
        if self.replay.write_timeout_ms == 0 || self.replay.batch == 0 {
            return Err(ConfigError(
                "replay: write_timeout_ms and batch must be at least 1".into(),
            ));
        }
        if let Some(near) = &self.near_cache {
            if near.max_bytes == 0 || near.ttl_ms == 0 {
                return Err(ConfigError(
                    "near_cache: max_bytes and ttl_ms must be at least 1 (leave near_cache out to turn it off)".into(),
                ));
            }
        }
        let l = &self.limits;
        if l.max_body_bytes == 0 || l.max_lookup_keys == 0 || l.max_upsert_entities == 0 {
            return Err(ConfigError("limits: every limit must be at least 1".into()));
        }
        if self.categories.max == 0 {
            return Err(ConfigError("categories.max: must be at least 1".into()));
        }
        let reuse = &self.categories;
        if !(reuse.reuse_threshold.is_finite() && (-1.0..=1.0).contains(&reuse.reuse_threshold)) {
            return Err(ConfigError(format!(
                "categories.reuse_threshold: a cosine is in -1..=1, got {}",
                reuse.reuse_threshold
            )));
        }
        if !reuse.reuse_provider.is_empty()
            && !self
                .pipeline
                .providers
                .iter()
                .any(|p| p.name == reuse.reuse_provider)
        {
            return Err(ConfigError(format!(
                "categories.reuse_provider: no [[pipeline.providers]] is named {:?}",
                reuse.reuse_provider
            )));
        }
        let tokens = self.auth.write_tokens.iter().chain(&self.auth.read_tokens);
        if tokens
            .into_iter()
            .any(|t| t.trim().is_empty() || t.trim() != t)
        {
            return Err(ConfigError(
                "auth: a token must not be empty or start or end with whitespace".into(),
            ));
        }
        let no_tokens = !self.auth.is_on();
        if no_tokens && !self.listen.ip().is_loopback() && !self.allow_unauthenticated {
            return Err(ConfigError(format!(
                "--listen: {} is not a loopback address and no auth tokens are configured; set auth.write_tokens or allow_unauthenticated = true",
                self.listen
            )));
        }
        if let Some(grpc) = self.grpc_listen {
            if no_tokens && !grpc.ip().is_loopback() && !self.allow_unauthenticated {
                return Err(ConfigError(format!(
                    "--grpc-listen: {grpc} is not a loopback address and no auth tokens are configured; set auth.write_tokens or allow_unauthenticated = true"
                )));
            }
        }
        Ok(())
    }

    /// The main DB `db` names, or its default.
    pub fn db_url(&self) -> DbUrl {
        match &self.db {
            Some(db) => db.clone(),
            None if self.ephemeral => DbUrl::SqliteMemory,
            None => DbUrl::sqlite_file(&self.data_dir.join("larder.db")),
        }
    }

    pub fn store_options(&self) -> larder_store::StoreOptions {
        larder_store::StoreOptions {
            data_dir: self.data_dir.clone(),
            ephemeral: self.ephemeral,
            connect_timeout: Duration::from_millis(self.timeouts.connect_ms),
            response_timeout: Duration::from_millis(self.timeouts.response_ms),
            connections: self.redis_connections.max(1),
            cluster_batch: self.cluster_batch,
            backup: self.backup.clone(),
            backed: larder_store::BackedOptions {
                write_timeout: Duration::from_millis(self.replay.write_timeout_ms),
                failover_window: Duration::from_millis(self.replay.failover_window_ms),
                replay_batch: self.replay.batch,
            },
            near_cache: self
                .near_cache
                .as_ref()
                .map(|near| larder_store::near::NearCacheOptions {
                    max_bytes: near.max_bytes,
                    ttl: Duration::from_millis(near.ttl_ms),
                }),
        }
    }
}

/// figment's errors name the key and what was wrong; put them on one line with the flag name.
fn describe(error: figment::Error) -> String {
    let key = error.path.join(".");
    let flag = match key.as_str() {
        "listen" => "--listen".to_owned(),
        "grpc_listen" => "--grpc-listen".to_owned(),
        "store" => "--store".to_owned(),
        "data_dir" => "--data-dir".to_owned(),
        "db" => "--db".to_owned(),
        "backup" => "--backup".to_owned(),
        "" => "config".to_owned(),
        other => other.to_owned(),
    };
    let message = error.to_string().replace('\n', " ");
    format!("{flag}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_keys_are_matched_on_the_first_segment_against_every_top_level_key() {
        let known = top_level_keys();
        for key in [
            "listen",
            "store",
            "limits",
            "near_cache",
            "categories",
            "pipeline",
            "db",
        ] {
            assert!(
                known.iter().any(|k| k == key),
                "{key} missing from {known:?}"
            );
        }
        assert!(!known.iter().any(|k| k == "bin"), "{known:?}");
        assert_eq!(first_segment("LIMITS__MAX_LOOKUP_KEYS"), "limits");
        assert_eq!(first_segment("NEAR_CACHE__TTL_MS"), "near_cache");
        assert_eq!(first_segment("BIN"), "bin");
        assert!(!known.contains(&first_segment("SCRIPT_BIN")));
    }

    #[test]
    fn later_sources_win_and_bad_values_name_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("larder.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nstore = \"redis://127.0.0.1:1\"\n[limits]\nmax_lookup_keys = 5\n",
        )
        .expect("write config");
        let config = Config::load(
            Some(&file),
            Overrides {
                listen: Some(SocketAddr::from(([127, 0, 0, 1], 9100))),
                ..Overrides::default()
            },
        )
        .expect("valid config");
        assert_eq!(config.listen.port(), 9100);
        assert_eq!(config.store.to_string(), "redis://127.0.0.1:1");
        assert_eq!(config.limits.max_lookup_keys, 5);

        std::fs::write(&file, "[limits]\nmax_lookup_keys = \"many\"\n").expect("write");
        let error = Config::load(Some(&file), Overrides::default()).expect_err("bad type");
        assert!(error.0.contains("max_lookup_keys"), "{}", error.0);

        let error = Config::load(
            None,
            Overrides {
                store: Some("mysql://x".into()),
                ..Overrides::default()
            },
        )
        .expect_err("bad store");
        assert!(error.0.starts_with("--store:"), "{}", error.0);

        let error = Config::load(
            None,
            Overrides {
                listen: Some(SocketAddr::from(([0, 0, 0, 0], 7878))),
                ..Overrides::default()
            },
        )
        .expect_err("public bind without tokens");
        assert!(error.0.starts_with("--listen:"), "{}", error.0);
    }

    #[test]
    fn reuse_needs_a_known_provider_and_a_cosine_threshold() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("larder.toml");
        let load = |toml: &str| {
            std::fs::write(&file, toml).expect("write");
            Config::load(Some(&file), Overrides::default())
        };
        let config = load("[categories]\nreuse_provider = \"sim-judge\"\n").expect("valid");
        assert_eq!(config.categories.reuse_provider, "sim-judge");
        assert_eq!(
            config.categories.reuse_threshold,
            larder_categories::reuse::DEFAULT_THRESHOLD
        );
        let error = load("[categories]\nreuse_provider = \"nobody\"\n").expect_err("unknown");
        assert!(
            error.0.starts_with("categories.reuse_provider:"),
            "{}",
            error.0
        );
        let error = load("[categories]\nreuse_threshold = 1.5\n").expect_err("not a cosine");
        assert!(
            error.0.starts_with("categories.reuse_threshold:"),
            "{}",
            error.0
        );
    }
}
