//! Tests for [`PostgresDb`] against real PostgreSQL servers: the shared local one when it
//! answers, and a private throwaway one.

use std::net::TcpStream;

use larder_testkit::{postgres_available, PostgresDb};

#[test]
fn postgres_is_available() {
    assert!(
        postgres_available(),
        "no PostgreSQL: apt-get install -y postgresql (or start one on 127.0.0.1:5432)"
    );
}

/// Whether a database of that name exists, asked through `via` (another database on the same
/// server).
fn exists(via: &PostgresDb, name: &str) -> bool {
    via.psql(&format!(
        "SELECT COUNT(*) FROM pg_database WHERE datname = '{name}'"
    )) == "1"
}

#[test]
fn fresh_database_is_usable_and_dropped() {
    let pg = PostgresDb::start();
    assert!(pg.name().starts_with("larder_test_"), "{}", pg.name());
    assert_eq!(
        pg.url(),
        format!("postgres://postgres@127.0.0.1:{}/{}", pg.port(), pg.name())
    );
    assert_eq!(pg.psql("SELECT current_database()"), pg.name());
    assert_eq!(pg.psql("SHOW server_encoding"), "UTF8");
    pg.psql("CREATE TABLE t (name TEXT); INSERT INTO t VALUES ('이사 준비')");
    assert_eq!(pg.psql("SELECT name FROM t"), "이사 준비");

    let other = PostgresDb::start();
    assert_ne!(other.name(), pg.name());
    assert_eq!(
        other.psql("SELECT COUNT(*) FROM pg_tables WHERE tablename = 't'"),
        "0"
    );
    if !pg.is_private() && !other.is_private() {
        // Same shared server: dropping one removes exactly that database.
        let name = pg.name().to_owned();
        assert!(exists(&other, &name));
        drop(pg);
        assert!(!exists(&other, &name));
        assert!(exists(&other, other.name()));
    }
}

#[test]
fn private_server_runs_and_stops_on_drop() {
    let pg = PostgresDb::start_private();
    assert!(pg.is_private());
    assert_ne!(pg.port(), 5432);
    assert_eq!(pg.psql("SELECT 40 + 2"), "42");
    let port = pg.port();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    drop(pg);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "private server still listening on {port} after drop"
    );
}
