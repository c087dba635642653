//! # larder-url
//!
//! Every URL Larder's configuration names, parsed in exactly this one module: the store
//! ([`StoreUrl`]), the pipeline broker ([`BrokerUrl`]), and SQL databases ([`DbUrl`]: the main
//! DB and the backup). The crates that connect take these typed values, so no other code looks
//! at a scheme. Each type reads from and writes to its string form with serde, so config files,
//! `LARDER_*` variables and flags are checked when the config is loaded.

use std::fmt;
use std::str::FromStr;

/// A URL that does not name anything Larder can connect to; the message says what was
/// expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UrlError(pub String);

/// Where entities and views live: `embedded`, or a Redis.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum StoreUrl {
    /// The embedded store (a redb file in the data dir, or memory).
    Embedded,
    Redis(RedisUrl),
}

/// A Redis server or cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisUrl {
    /// `redis://[user:pass@]host:port[/db]` or `rediss://…`, as redis-rs reads it.
    Single(String),
    /// `redis-cluster://[user:pass@]host:port,host:port,…[/suffix]` or `rediss-cluster://…`.
    Cluster(ClusterUrl),
}

/// A Redis Cluster's seed nodes and how to reach any node of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterUrl {
    /// `rediss-cluster://`: TLS to every node.
    pub tls: bool,
    /// `user:pass@` (with the `@`), or empty.
    pub auth: String,
    /// `host:port` of each seed, in the order given.
    pub hosts: Vec<String>,
    /// Anything after the host list (`/#insecure`), applied to every node.
    pub suffix: String,
}

impl ClusterUrl {
    /// `redis` or `rediss`: the scheme of one node's URL.
    pub fn node_scheme(&self) -> &'static str {
        if self.tls {
            "rediss"
        } else {
            "redis"
        }
    }

    /// The URL of the node at `host_port` (`redis://[auth@]host:port[suffix]`).
    pub fn node(&self, host_port: &str) -> String {
        format!(
            "{}://{}{host_port}{}",
            self.node_scheme(),
            self.auth,
            self.suffix
        )
    }

    /// Each seed's own URL.
    pub fn seeds(&self) -> Vec<String> {
        self.hosts.iter().map(|h| self.node(h)).collect()
    }
}

/// Where pipeline jobs are queued (`pipeline.broker`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum BrokerUrl {
    /// In-process channels on the embedded store, Redis Streams on a Redis store.
    Auto,
    /// In-process channels.
    Memory,
    /// Redis Streams on the store's Redis.
    StoreRedis,
    /// Redis Streams on this Redis.
    Redis(RedisUrl),
}

/// A SQL database: the main DB of categories, or the backup of entities.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DbUrl {
    /// `postgres://…` or `postgresql://…`, as sqlx reads it.
    Postgres(String),
    /// `sqlite://PATH` (or `sqlite:PATH`), with sqlx's options after a `?`.
    SqliteFile(String),
    /// `sqlite::memory:`: one pool's private database, gone with the process.
    SqliteMemory,
}

impl DbUrl {
    /// `postgres` or `sqlite`.
    pub fn kind(&self) -> &'static str {
        match self {
            DbUrl::Postgres(_) => "postgres",
            DbUrl::SqliteFile(_) | DbUrl::SqliteMemory => "sqlite",
        }
    }

    /// The file path of a SQLite file URL (without sqlx's `?options`).
    pub fn sqlite_path(&self) -> Option<&str> {
        let DbUrl::SqliteFile(url) = self else {
            return None;
        };
        let rest = url.strip_prefix("sqlite:")?;
        let path = rest.strip_prefix("//").unwrap_or(rest);
        Some(path.split_once('?').map_or(path, |(path, _)| path))
    }

    /// The SQLite file at `path`.
    pub fn sqlite_file(path: &std::path::Path) -> DbUrl {
        DbUrl::SqliteFile(format!("sqlite://{}", path.display()))
    }
}

impl FromStr for RedisUrl {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<RedisUrl, UrlError> {
        let expected = || {
            UrlError(format!(
                "expected redis://host:port, rediss://…, redis-cluster://host:port,host:port or rediss-cluster://…, got {url:?}"
            ))
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(expected());
        };
        let tls = match scheme {
            "redis" | "rediss" => return Ok(RedisUrl::Single(url.to_owned())),
            "redis-cluster" => false,
            "rediss-cluster" => true,
            _ => return Err(expected()),
        };
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((auth, hosts)) => (format!("{auth}@"), hosts),
            None => (String::new(), rest),
        };
        let (hosts, suffix) = match hosts.find('/') {
            Some(i) => (&hosts[..i], &hosts[i..]),
            None => (hosts, ""),
        };
        let hosts: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect();
        if hosts.is_empty() {
            return Err(UrlError(format!(
                "{url:?} names no seed nodes: expected {scheme}://host:port,host:port"
            )));
        }
        Ok(RedisUrl::Cluster(ClusterUrl {
            tls,
            auth,
            hosts,
            suffix: if suffix == "/" { "" } else { suffix }.to_owned(),
        }))
    }
}

impl FromStr for ClusterUrl {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<ClusterUrl, UrlError> {
        match url.parse()? {
            RedisUrl::Cluster(cluster) => Ok(cluster),
            RedisUrl::Single(_) => Err(UrlError(format!(
                "expected redis-cluster://host:port,host:port or rediss-cluster://…, got {url:?}"
            ))),
        }
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisUrl::Single(url) => f.write_str(url),
            RedisUrl::Cluster(c) => write!(
                f,
                "{}-cluster://{}{}{}",
                c.node_scheme(),
                c.auth,
                c.hosts.join(","),
                c.suffix
            ),
        }
    }
}

impl FromStr for StoreUrl {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<StoreUrl, UrlError> {
        if url == "embedded" {
            return Ok(StoreUrl::Embedded);
        }
        url.parse().map(StoreUrl::Redis).map_err(|_| {
            UrlError(format!(
                "expected embedded, redis://host:port, rediss://…, redis-cluster://host:port,host:port or rediss-cluster://…, got {url:?}"
            ))
        })
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Embedded => f.write_str("embedded"),
            StoreUrl::Redis(url) => url.fmt(f),
        }
    }
}

impl FromStr for BrokerUrl {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<BrokerUrl, UrlError> {
        match url {
            "auto" => Ok(BrokerUrl::Auto),
            "memory" => Ok(BrokerUrl::Memory),
            "redis" => Ok(BrokerUrl::StoreRedis),
            url => url.parse().map(BrokerUrl::Redis).map_err(|_| {
                UrlError(format!(
                    "expected auto, memory, redis (the store's) or a redis://, rediss://, redis-cluster:// URL, got {url:?}"
                ))
            }),
        }
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerUrl::Auto => f.write_str("auto"),
            BrokerUrl::Memory => f.write_str("memory"),
            BrokerUrl::StoreRedis => f.write_str("redis"),
            BrokerUrl::Redis(url) => url.fmt(f),
        }
    }
}

impl FromStr for DbUrl {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<DbUrl, UrlError> {
        let expected = || {
            UrlError(format!(
                "expected sqlite://FILE, sqlite::memory: or postgres://user@host:port/db, got {url:?}"
            ))
        };
        let Some((scheme, rest)) = url.split_once(':') else {
            return Err(expected());
        };
        match scheme {
            "postgres" | "postgresql" if rest.starts_with("//") => {
                Ok(DbUrl::Postgres(url.to_owned()))
            }
            "sqlite" => {
                let path = rest.strip_prefix("//").unwrap_or(rest);
                if path.starts_with(":memory:") || path.contains("mode=memory") {
                    Ok(DbUrl::SqliteMemory)
                } else if path.is_empty() || path.starts_with('?') {
                    Err(UrlError(format!("{url:?}: sqlite URL without a file path")))
                } else {
                    Ok(DbUrl::SqliteFile(url.to_owned()))
                }
            }
            _ => Err(expected()),
        }
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbUrl::Postgres(url) | DbUrl::SqliteFile(url) => f.write_str(url),
            DbUrl::SqliteMemory => f.write_str("sqlite::memory:"),
        }
    }
}

macro_rules! string_forms {
    ($($ty:ty),*) => {$(
        impl TryFrom<String> for $ty {
            type Error = UrlError;
            fn try_from(s: String) -> Result<Self, UrlError> {
                s.parse()
            }
        }
        impl From<$ty> for String {
            fn from(url: $ty) -> String {
                url.to_string()
            }
        }
    )*};
}
string_forms!(StoreUrl, BrokerUrl, DbUrl);

/// serde for an optional URL whose absence is written as an empty string, as in
/// `backup = ""` and `LARDER_DB=` (`#[serde(with = "larder_url::empty_is_none")]`).
pub mod empty_is_none {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(
        value: &Option<T>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serializer.collect_str(value),
            None => serializer.serialize_str(""),
        }
    }

    pub fn deserialize<'de, T, D>(deserializer: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(deserializer)?;
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_and_print_back() {
        for url in [
            "embedded",
            "redis://127.0.0.1:6379",
            "rediss://user:pass@host:6380/2",
            "redis-cluster://10.0.0.1:7000,10.0.0.2:7000",
            "rediss-cluster://:pw@h1:1,h2:2/#insecure",
        ] {
            let parsed: StoreUrl = url.parse().expect(url);
            assert_eq!(parsed.to_string(), url);
        }
        for bad in ["mysql://x", "redis-cluster://", "", "redis:/x"] {
            assert!(bad.parse::<StoreUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cluster_urls_give_each_seed_its_own_url() {
        let url: RedisUrl = "rediss-cluster://u:p@h1:1,h2:2/#insecure"
            .parse()
            .expect("parses");
        let RedisUrl::Cluster(cluster) = url else {
            panic!("a cluster URL");
        };
        assert_eq!(
            cluster.seeds(),
            ["rediss://u:p@h1:1/#insecure", "rediss://u:p@h2:2/#insecure"]
        );
        assert_eq!(cluster.node("h3:3"), "rediss://u:p@h3:3/#insecure");
        let plain: RedisUrl = "redis-cluster://h1:1,h2:2/".parse().expect("parses");
        assert!(
            matches!(plain, RedisUrl::Cluster(c) if c.seeds() == ["redis://h1:1", "redis://h2:2"])
        );
    }

    #[test]
    fn db_urls_tell_their_kind() {
        assert_eq!("sqlite::memory:".parse::<DbUrl>(), Ok(DbUrl::SqliteMemory));
        assert_eq!(
            "sqlite://file::memory:?cache=shared&mode=memory".parse::<DbUrl>(),
            Ok(DbUrl::SqliteMemory)
        );
        let file: DbUrl = "sqlite://./larder-data/larder.db?mode=rwc"
            .parse()
            .expect("parses");
        assert_eq!(file.sqlite_path(), Some("./larder-data/larder.db"));
        assert!(matches!(
            "postgresql://postgres@127.0.0.1/x".parse::<DbUrl>(),
            Ok(DbUrl::Postgres(_))
        ));
        for bad in ["mysql://db", "sqlite://", "postgres:x", "nothing"] {
            assert!(bad.parse::<DbUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn broker_urls_and_serde_forms() {
        assert_eq!("auto".parse::<BrokerUrl>(), Ok(BrokerUrl::Auto));
        assert_eq!("redis".parse::<BrokerUrl>(), Ok(BrokerUrl::StoreRedis));
        assert!(matches!(
            "redis://h:1".parse::<BrokerUrl>(),
            Ok(BrokerUrl::Redis(RedisUrl::Single(_)))
        ));
        assert!("kafka://x".parse::<BrokerUrl>().is_err());
        let store: StoreUrl = serde_json::from_str("\"redis://h:1\"").expect("reads");
        assert_eq!(
            serde_json::to_string(&store).expect("writes"),
            "\"redis://h:1\""
        );
        assert!(serde_json::from_str::<StoreUrl>("\"nope\"").is_err());
    }
}
