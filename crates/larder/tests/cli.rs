//! The command-line contract scripts rely on: bad flags and config values exit 2 with one
//! clear line naming the flag; `serve` answers and drains on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `larder args` with `env` added to a copy of this environment that has no `LARDER_*`.
fn larder(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_larder"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LARDER_") {
            command.env_remove(name);
        }
    }
    command.args(args).envs(env.iter().copied());
    command.output().expect("run larder")
}

fn one_line_error(args: &[&str], mentions: &str) {
    one_line_error_with(args, &[], mentions);
}

fn one_line_error_with(args: &[&str], env: &[(&str, &str)], mentions: &str) {
    let out = larder(args, env);
    assert_eq!(out.status.code(), Some(2), "{args:?} exits 2");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line for {args:?}: {stderr}"
    );
    assert!(
        stderr.contains(mentions),
        "{args:?} names {mentions}: {stderr}"
    );
}

#[test]
fn bad_flags_and_values_exit_2_with_one_line() {
    one_line_error(&["serve", "--listen", "not-an-address"], "--listen");
    one_line_error(&["serve", "--store", "mysql://db"], "--store");
    one_line_error(&["serve", "--no-such-flag"], "--no-such-flag");
    one_line_error(
        &["serve", "--config", "/nonexistent/larder.toml"],
        "--config",
    );
    one_line_error(&["serve", "--listen", "0.0.0.0:0"], "--listen");
    one_line_error(&["serve", "--grpc-listen", "nowhere"], "--grpc-listen");
    one_line_error(&["serve", "--grpc-listen", "0.0.0.0:7879"], "--grpc-listen");
    one_line_error(&["serve", "--db", "mysql://db"], "--db");
    one_line_error(&["worker", "--stage", "nope"], "--stage");
    // A worker must name the server's main DB rather than fall back to a local file.
    one_line_error(&["worker", "--stage", "rank"], "--db");
    one_line_error(&["mock-llm", "--rate-429", "2"], "--rate-429");
    one_line_error(&["inspect", "--namespace", "Not Valid"], "--namespace");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("larder.toml");
    std::fs::write(&config, "[limits]\nmax_lookup_keys = -3\n").expect("write");
    one_line_error(
        &["serve", "--config", config.to_str().expect("utf-8")],
        "max_lookup_keys",
    );
    // Variables under a config key are read and checked: a bad value and an unknown nested
    // key both stop the command.
    let dump = ["inspect", "--namespace", "x"];
    one_line_error_with(
        &dump,
        &[("LARDER_LIMITS__MAX_LOOKUP_KEYS", "-3")],
        "max_lookup_keys",
    );
    one_line_error_with(
        &dump,
        &[("LARDER_LIMITS__NO_SUCH_LIMIT", "3")],
        "no_such_limit",
    );
}

#[test]
fn serve_help_documents_every_flag() {
    let out = larder(&["serve", "--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--listen",
        "--store",
        "--data-dir",
        "--ephemeral",
        "LARDER_",
    ] {
        assert!(help.contains(flag), "help mentions {flag}");
    }
}

#[test]
fn serve_answers_then_drains_on_sigterm() {
    let port = larder_testkit::support::free_port().expect("free port");
    let mut child = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args([
            "serve",
            "--ephemeral",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        // A `LARDER_*` variable that names no config key (a script's own) is not Larder's:
        // serve warns about it and starts.
        .env("LARDER_SCRIPT_BIN", "/usr/bin/true")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut warned = false;
    loop {
        let line = lines
            .next()
            .expect("serve logs before exiting")
            .expect("utf-8 log");
        warned |= line.contains("WARN") && line.contains("LARDER_SCRIPT_BIN");
        if line.contains("larder listening") {
            assert!(
                warned,
                "serve names the ignored LARDER_SCRIPT_BIN before listening"
            );
            break;
        }
        assert!(Instant::now() < deadline, "serve did not start");
    }
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    use std::io::{Read, Write};
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("{\"status\":\"ok\"}"));

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exit = child.wait().expect("wait");
    assert_eq!(exit.code(), Some(0), "graceful exit on SIGTERM");
}
