//! A fresh PostgreSQL database per test.
//!
//! Machines of this project's kind run a PostgreSQL server on 127.0.0.1:5432 with trust auth for
//! user `postgres`; when it answers, [`PostgresDb::start`] creates a database
//! `larder_test_<random>` there and drops it (`WITH (FORCE)`, so open pools do not block it) on
//! drop. Otherwise it runs a private throwaway server: `initdb` + `pg_ctl start` in a temp dir on a
//! free port, stopped (`-m immediate`) on drop. `initdb` refuses to run as root, so as root both
//! run under `runuser -u postgres` in a directory owned by `postgres`.
//!
//! Binaries come from `$LARDER_PG_BIN_DIR`, else the newest `/usr/lib/postgresql/*/bin`, else
//! PATH. Everything is synchronous std code, like the rest of this crate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use crate::ports::pick_ports;
use crate::process::run;

/// The shared local server's port.
const LOCAL_PORT: u16 = 5432;
/// Limit for one `psql` call (CREATE/DROP DATABASE included).
const PSQL_TIMEOUT: Duration = Duration::from_secs(60);
/// Limit for `initdb` and `pg_ctl start`/`stop`.
const PG_CTL_TIMEOUT: Duration = Duration::from_secs(90);
/// Attempts with fresh ports when a private server loses a port race.
const START_ATTEMPTS: usize = 10;
const INSTALL_HINT: &str = "install PostgreSQL (Debian/Ubuntu: `apt-get install -y postgresql`) \
     or point LARDER_PG_BIN_DIR at its bin directory";

/// A fresh, empty database (UTF-8, `C` locale); dropped — or its private server stopped — on drop.
pub struct PostgresDb {
    name: String,
    port: u16,
    // Dropped after the database (field order): the private server, if one was started.
    server: Option<PrivateServer>,
}

impl PostgresDb {
    /// A fresh database `larder_test_<random>`: on the local server at 127.0.0.1:5432 when it
    /// answers, otherwise on a private throwaway server. Panics with a clear message if neither
    /// works.
    pub fn start() -> PostgresDb {
        Self::start_on(!local_server_answers())
    }

    /// Like [`PostgresDb::start`], but always on a private throwaway server, even when the local
    /// one answers (to test that path, or to get a server of one's own).
    pub fn start_private() -> PostgresDb {
        Self::start_on(true)
    }

    fn start_on(private: bool) -> PostgresDb {
        let name = format!("larder_test_{:016x}", crate::ports::random_u64());
        let (port, server) = if private {
            let server = PrivateServer::start();
            (server.port, Some(server))
        } else {
            (LOCAL_PORT, None)
        };
        let create =
            format!("CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C'");
        if let Err(e) = psql(port, "postgres", &create) {
            panic!("larder-testkit: could not create database {name} on port {port}: {e}");
        }
        PostgresDb { name, port, server }
    }

    /// `postgres://postgres@127.0.0.1:PORT/DBNAME`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, self.name)
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether this database lives on a private server started for it.
    pub fn is_private(&self) -> bool {
        self.server.is_some()
    }

    /// Stop the private server at once (`pg_ctl stop -m immediate`, like a crash), to test
    /// what happens while the database is down. Panics on the shared local server.
    pub fn stop_server(&self) {
        let server = self
            .server
            .as_ref()
            .expect("larder-testkit: stop_server needs PostgresDb::start_private");
        server
            .stop()
            .unwrap_or_else(|e| panic!("larder-testkit: {e}"));
    }

    /// Start the private server again after [`PostgresDb::stop_server`], same port and data.
    pub fn start_server(&self) {
        let server = self
            .server
            .as_ref()
            .expect("larder-testkit: start_server needs PostgresDb::start_private");
        server
            .start_again()
            .unwrap_or_else(|e| panic!("larder-testkit: {e}"));
    }

    /// The database name (`larder_test_<random hex>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Run `sql` in this database with `psql` (unaligned, tuples only); trimmed stdout.
    /// Panics (with stderr) when psql fails.
    pub fn psql(&self, sql: &str) -> String {
        psql(self.port, &self.name, sql)
            .unwrap_or_else(|e| panic!("larder-testkit: psql on {}: {e}", self.name))
    }
}

impl Drop for PostgresDb {
    fn drop(&mut self) {
        // A private server is thrown away whole; on the shared server the database must go.
        if self.server.is_none() {
            let drop = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
            if let Err(e) = psql(self.port, "postgres", &drop) {
                eprintln!("larder-testkit: could not drop database {}: {e}", self.name);
            }
        }
    }
}

impl std::fmt::Debug for PostgresDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresDb")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("private_server", &self.server.is_some())
            .finish()
    }
}

/// True when [`PostgresDb::start`] can work: the local server answers, or `initdb`, `pg_ctl` and
/// `psql` can be found (plus `runuser` when running as root).
pub fn postgres_available() -> bool {
    if local_server_answers() {
        return true;
    }
    let tools = ["initdb", "pg_ctl", "psql"]
        .iter()
        .all(|t| tool(t).is_some());
    tools && (!is_root() || find_in_path("runuser").is_some())
}

/// A throwaway `postgres` server in its own temp dir; stopped on drop.
struct PrivateServer {
    port: u16,
    data: PathBuf,
    log: PathBuf,
    opts: String,
    // Removed after the server is stopped (field order).
    _dir: TempDir,
}

impl PrivateServer {
    fn start() -> PrivateServer {
        let initdb = tool("initdb").unwrap_or_else(|| {
            panic!(
                "larder-testkit: no PostgreSQL on 127.0.0.1:5432 and no `initdb`: {INSTALL_HINT}"
            )
        });
        let dir = tempfile::Builder::new()
            .prefix("larder-pg-")
            .tempdir()
            .expect("larder-testkit: create a temp dir for postgres");
        if is_root() {
            // initdb and postgres refuse root; the directory must belong to the user they run as.
            let path = dir.path().to_string_lossy().into_owned();
            let out = run(
                "chown",
                &strings(&["postgres:postgres", &path]),
                PSQL_TIMEOUT,
            )
            .unwrap_or_else(|e| panic!("larder-testkit: chown {path}: {e}"));
            assert!(
                out.status.success(),
                "larder-testkit: chown postgres {path} failed (is there a `postgres` user?): {}",
                out.stderr.trim()
            );
        }
        let data = dir.path().join("data");
        let data_arg = data.to_string_lossy().into_owned();
        let out = as_postgres(
            &initdb,
            &[
                "-D",
                &data_arg,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
            ],
        );
        assert!(
            out.status.success(),
            "larder-testkit: initdb failed: {}{}",
            out.stdout.trim(),
            out.stderr.trim()
        );
        let pg_ctl = tool("pg_ctl")
            .unwrap_or_else(|| panic!("larder-testkit: `pg_ctl` not found: {INSTALL_HINT}"));
        let log = dir.path().join("postgres.log");
        let log_arg = log.to_string_lossy().into_owned();
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = pick_ports(1)[0];
            // pg_ctl hands -o to a shell, hence the quotes around the socket directory.
            let opts = format!(
                "-p {port} -k '{}' -c listen_addresses=127.0.0.1 -c fsync=off",
                dir.path().display()
            );
            let out = as_postgres(
                &pg_ctl,
                &[
                    "-D", &data_arg, "-l", &log_arg, "-w", "-t", "60", "-o", &opts, "start",
                ],
            );
            if out.status.success() {
                return PrivateServer {
                    port,
                    data,
                    log,
                    opts,
                    _dir: dir,
                };
            }
            let log_text = std::fs::read_to_string(&log).unwrap_or_default();
            last = format!("{}{}\n{log_text}", out.stdout.trim(), out.stderr.trim());
            if !log_text.contains("Address already in use") {
                break;
            }
            // Lost a port race: truncate the log so the next attempt's check sees only its own.
            let _ = std::fs::write(&log, "");
        }
        panic!("larder-testkit: could not start a private postgres server: {last}");
    }
}

impl PrivateServer {
    /// `pg_ctl stop -m immediate`: the server is gone at once, as after a crash.
    fn stop(&self) -> Result<(), String> {
        let pg_ctl = tool("pg_ctl").ok_or("`pg_ctl` not found")?;
        let data = self.data.to_string_lossy().into_owned();
        let out = as_postgres(&pg_ctl, &["-D", &data, "-m", "immediate", "-w", "stop"]);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl stop on port {} failed: {}",
                self.port,
                out.stderr.trim()
            ))
        }
    }

    /// Start it again on the same port and data.
    fn start_again(&self) -> Result<(), String> {
        let pg_ctl = tool("pg_ctl").ok_or("`pg_ctl` not found")?;
        let data = self.data.to_string_lossy().into_owned();
        let log = self.log.to_string_lossy().into_owned();
        let out = as_postgres(
            &pg_ctl,
            &[
                "-D", &data, "-l", &log, "-w", "-t", "60", "-o", &self.opts, "start",
            ],
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start on port {} failed: {}{}",
                self.port,
                out.stdout.trim(),
                out.stderr.trim()
            ))
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("larder-testkit: {e}");
        }
    }
}

/// `psql` against `dbname` on 127.0.0.1:`port` as `postgres`; trimmed stdout, or what went wrong.
fn psql(port: u16, dbname: &str, sql: &str) -> Result<String, String> {
    let bin = tool("psql").ok_or_else(|| format!("`psql` not found: {INSTALL_HINT}"))?;
    let conninfo =
        format!("host=127.0.0.1 port={port} user=postgres dbname={dbname} connect_timeout=5");
    let args = strings(&[
        "-X",
        "-A",
        "-t",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        &conninfo,
        "-c",
        sql,
    ]);
    let out = run(&bin.to_string_lossy(), &args, PSQL_TIMEOUT)?;
    if out.status.success() {
        Ok(out.stdout.trim().to_owned())
    } else {
        Err(format!(
            "psql failed ({}): {}",
            out.status,
            out.stderr.trim()
        ))
    }
}

/// Whether the shared server on 127.0.0.1:5432 accepts `postgres` without a password.
fn local_server_answers() -> bool {
    psql(LOCAL_PORT, "postgres", "SELECT 1").is_ok_and(|s| s == "1")
}

/// Run `bin args…` as the `postgres` user when we are root (via runuser), else as ourselves.
fn as_postgres(bin: &Path, args: &[&str]) -> crate::process::Output {
    let bin = bin.to_string_lossy().into_owned();
    let (program, full) = if is_root() {
        let runuser = find_in_path("runuser")
            .unwrap_or_else(|| panic!("larder-testkit: running as root but `runuser` is missing"));
        let mut full = strings(&["-u", "postgres", "--", &bin]);
        full.extend(strings(args));
        (runuser.to_string_lossy().into_owned(), full)
    } else {
        (bin, strings(args))
    };
    run(&program, &full, PG_CTL_TIMEOUT)
        .unwrap_or_else(|e| panic!("larder-testkit: {program}: {e}"))
}

fn is_root() -> bool {
    run("id", &strings(&["-u"]), Duration::from_secs(10))
        .is_ok_and(|o| o.status.success() && o.stdout.trim() == "0")
}

/// A PostgreSQL program: `$LARDER_PG_BIN_DIR/NAME`, else the newest `/usr/lib/postgresql/N/bin`,
/// else PATH.
fn tool(name: &str) -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("LARDER_PG_BIN_DIR") {
        let path = Path::new(&dir).join(name);
        return path.is_file().then_some(path);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin").join(name)))
        })
        .filter(|(_, p)| p.is_file())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, p)| p)
        .or_else(|| find_in_path(name))
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}
