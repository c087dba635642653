//! # larder-testkit
//!
//! Test support for Larder (and for its self-contained benches, which share [`support`]):
//! start **real** `redis-server` processes — a standalone
//! server ([`RedisServer`]) or a 3-primary / 3-replica Redis Cluster ([`RedisCluster`]) — on
//! free loopback ports, each with its own temp dir, and kill them (SIGKILL + wait) on drop, also
//! when the test panics.
//!
//! ## Why real binaries
//!
//! By project rule Larder's Redis backends are tested against real Redis, never against a mock:
//! the behaviour that matters (RESP details, `MOVED`/`ASK` redirects, failover, auth errors,
//! `INFO commandstats` counts) is exactly what a mock gets wrong. So this crate shells out to
//! `redis-server` and `redis-cli` from PATH (override with `LARDER_REDIS_SERVER` /
//! `LARDER_REDIS_CLI`). On Debian/Ubuntu: `apt-get install -y redis-server redis-tools`.
//! Use [`redis_available`] to skip gracefully where they are missing.
//!
//! ## Details
//!
//! * Servers run as `redis-server --port P --bind 127.0.0.1 --save "" --appendonly no --dir D
//!   --daemonize no` (cluster nodes add `--cluster-enabled yes --cluster-config-file nodes.conf
//!   --cluster-node-timeout 2000`); stdout/stderr go to `D/redis.log`, whose tail is included in
//!   panic messages.
//! * Ports are random in `10000..20000` (bus ports `+10000`), checked free by binding, never
//!   6379; a start that loses a port race ("Address already in use") retries with new ports, so
//!   tests may run in parallel threads and processes (cargo nextest). Readiness is PONG from
//!   *our* process (`INFO server` `process_id` is checked).
//! * Everything is synchronous std code; call it from `#[tokio::test]` freely (it blocks briefly).
//!
//! ```no_run
//! let redis = larder_testkit::RedisServer::start();
//! assert_eq!(redis.cli(&["ping"]), "PONG");
//! let url = redis.url(); // "redis://127.0.0.1:PORT"
//! # let _ = url;
//! ```

mod cluster;
pub mod ports;
mod postgres;
mod process;
pub mod python;
mod server;
pub mod support;
pub mod topology;

pub use cluster::RedisCluster;
pub use postgres::{postgres_available, PostgresDb};
pub use server::RedisServer;

use std::time::Duration;

/// Calls of `command` counted by `INFO commandstats` on the password-less server at `port`
/// (use [`RedisServer::command_calls`] for one with a password),
/// parsed from `cmdstat_<command>:calls=N,…`; 0 if the command was never called. The command
/// name is case-insensitive; subcommands use Redis' `cluster|info` form. Panics if the server
/// does not answer.
pub fn command_calls(port: u16, command: &str) -> u64 {
    let stats = process::try_cli(port, None, &["info", "commandstats"], process::CLI_TIMEOUT)
        .unwrap_or_else(|e| panic!("larder-testkit: command_calls: {e}"));
    checked_command_calls(port, &stats, command)
}

/// [`parse_command_calls`], panicking when the reply is not `INFO commandstats` (e.g. NOAUTH,
/// which redis-cli prints with exit code 0).
pub(crate) fn checked_command_calls(port: u16, stats: &str, command: &str) -> u64 {
    assert!(
        stats.contains("# Commandstats"),
        "larder-testkit: `INFO commandstats` on port {port} did not answer with stats: {stats}"
    );
    parse_command_calls(stats, command)
}

/// Parse `INFO commandstats` output for the calls of `command` (0 if absent).
pub fn parse_command_calls(info: &str, command: &str) -> u64 {
    let prefix = format!("cmdstat_{}:", command.to_ascii_lowercase());
    info.lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .and_then(|fields| {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// True when both `redis-server` and `redis-cli` can be run (each answers `--version`).
pub fn redis_available() -> bool {
    let ok = |bin: String| {
        process::run(&bin, &["--version".to_owned()], Duration::from_secs(10))
            .is_ok_and(|o| o.status.success())
    };
    ok(process::server_bin()) && ok(process::cli_bin())
}
