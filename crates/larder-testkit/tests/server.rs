//! Tests for [`RedisServer`] and the free functions, against the real redis-server.

use std::net::TcpStream;
use std::thread;

use larder_testkit::{command_calls, parse_command_calls, redis_available, RedisServer};

#[test]
fn redis_binaries_are_available() {
    assert!(
        redis_available(),
        "redis-server/redis-cli missing: apt-get install -y redis-server redis-tools"
    );
}

#[test]
fn start_and_ping() {
    let redis = RedisServer::start();
    assert_ne!(redis.port(), 6379);
    assert_eq!(redis.cli(&["ping"]), "PONG");
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    assert!(redis.dir().join("redis.log").exists());
    let dir = redis.cli(&["config", "get", "dir"]);
    assert!(
        dir.contains(redis.dir().to_str().expect("utf-8 temp dir")),
        "{dir}"
    );
}

#[test]
fn password_is_required() {
    let redis = RedisServer::start_with_password("s3cret pw");
    assert_eq!(redis.password(), Some("s3cret pw"));
    assert_eq!(
        redis.url(),
        format!("redis://:s3cret%20pw@127.0.0.1:{}", redis.port())
    );
    let port = redis.port().to_string();
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port, "ping"])
        .output()
        .expect("run redis-cli");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("NOAUTH"), "unauthenticated ping: {stdout}");
    assert!(!stdout.contains("PONG"));
    assert_eq!(redis.cli(&["ping"]), "PONG");
    redis.cli(&["set", "k", "v"]);
    assert_eq!(redis.command_calls("set"), 1);
    // The password-less free function must not silently read NOAUTH as "0 calls".
    let port = redis.port();
    assert!(std::panic::catch_unwind(|| command_calls(port, "set")).is_err());
}

#[test]
fn stop_and_restart_keep_the_port_and_lose_data() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    assert_eq!(redis.cli(&["set", "k", "v"]), "OK");
    redis.stop();
    assert!(!redis.is_running());
    assert!(redis.try_cli(&["ping"]).is_err());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    redis.restart();
    assert!(redis.is_running());
    assert_eq!(redis.port(), port);
    assert_eq!(redis.cli(&["ping"]), "PONG");
    assert_eq!(
        redis.cli(&["exists", "k"]),
        "0",
        "--save \"\": data is gone"
    );
    // Restart while running bounces the server.
    redis.restart();
    assert_eq!(redis.cli(&["ping"]), "PONG");
}

#[test]
fn command_calls_counts_commands() {
    let redis = RedisServer::start();
    assert_eq!(command_calls(redis.port(), "hmget"), 0);
    for i in 0..3 {
        redis.cli(&["hset", "h", &format!("f{i}"), "x"]);
    }
    redis.cli(&["hmget", "h", "f0", "f1"]);
    assert_eq!(command_calls(redis.port(), "hset"), 3);
    assert_eq!(command_calls(redis.port(), "HMGET"), 1);
}

#[test]
fn parse_command_calls_handles_absent_and_subcommands() {
    let info =
        "# Commandstats\r\ncmdstat_set:calls=12,usec=5,usec_per_call=0.42,rejected_calls=0\r\n\
                cmdstat_cluster|info:calls=7,usec=1\r\n";
    assert_eq!(parse_command_calls(info, "set"), 12);
    assert_eq!(parse_command_calls(info, "cluster|info"), 7);
    assert_eq!(parse_command_calls(info, "get"), 0);
    assert_eq!(parse_command_calls(info, "se"), 0);
}

#[test]
fn drop_kills_the_server() {
    let redis = RedisServer::start();
    let port = redis.port();
    let dir = redis.dir().to_path_buf();
    drop(redis);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(!dir.exists());
}

#[test]
fn drop_kills_the_server_on_panic() {
    let port = std::sync::Mutex::new(0u16);
    let result = std::panic::catch_unwind(|| {
        let redis = RedisServer::start();
        *port.lock().expect("lock") = redis.port();
        panic!("test body fails");
    });
    assert!(result.is_err());
    let port = *port.lock().expect("lock");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn many_servers_in_parallel() {
    let handles: Vec<_> = (0..12)
        .map(|i| {
            thread::spawn(move || {
                let redis = RedisServer::start();
                redis.cli(&["set", "who", &i.to_string()]);
                assert_eq!(redis.cli(&["get", "who"]), i.to_string());
                redis.port()
            })
        })
        .collect();
    let mut ports: Vec<u16> = handles
        .into_iter()
        .map(|h| h.join().expect("server thread"))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 12);
}
