//! A single standalone `redis-server`.

use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;

use crate::ports::pick_ports;
use crate::process::{try_cli, LaunchError, Node, CLI_TIMEOUT};

/// Attempts with fresh ports before giving up on port clashes.
const START_ATTEMPTS: usize = 20;
/// How long `restart` keeps retrying while the old port is still held.
const RESTART_PATIENCE: Duration = Duration::from_secs(10);

/// A real `redis-server` on a free loopback port with its own temp dir (`--save ""`, no AOF).
///
/// The process is SIGKILLed and reaped on drop (also when the test panics), then the temp dir is
/// removed. Its stdout/stderr go to `redis.log` in [`RedisServer::dir`].
pub struct RedisServer {
    // Field order matters: the node (process) is dropped before its directory.
    node: Node,
    dir: TempDir,
    tls_port: Option<u16>,
}

impl RedisServer {
    /// Start a server without a password. Panics with a clear message if `redis-server` is
    /// missing or does not answer PONG within 10 s.
    pub fn start() -> RedisServer {
        Self::start_inner(None)
    }

    /// Start a server with `--requirepass password`.
    pub fn start_with_password(password: &str) -> RedisServer {
        Self::start_inner(Some(password))
    }

    /// A server that also listens for TLS on a second port, with a self-signed certificate
    /// made by the `openssl` command. [`RedisServer::tls_url`] names that port.
    pub fn start_tls() -> RedisServer {
        Self::start_inner_with(None, true)
    }

    /// `rediss://127.0.0.1:TLS_PORT/#insecure` (the certificate is self-signed, so clients are
    /// told not to verify it). Panics when the server was not started with [`Self::start_tls`].
    pub fn tls_url(&self) -> String {
        let port = self
            .tls_port
            .expect("larder-testkit: tls_url needs RedisServer::start_tls");
        format!("rediss://127.0.0.1:{port}/#insecure")
    }

    fn start_inner(password: Option<&str>) -> RedisServer {
        Self::start_inner_with(password, false)
    }

    fn start_inner_with(password: Option<&str>, tls: bool) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("larder-redis-")
            .tempdir()
            .expect("larder-testkit: create a temp dir for redis-server");
        if tls {
            make_certificate(dir.path());
        }
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let ports = pick_ports(if tls { 2 } else { 1 });
            let port = ports[0];
            let tls_port = ports.get(1).copied();
            let tls_port_arg = tls_port.map(|p| p.to_string()).unwrap_or_default();
            let extra: Vec<&str> = if tls {
                vec![
                    "--tls-port",
                    &tls_port_arg,
                    "--tls-cert-file",
                    "cert.pem",
                    "--tls-key-file",
                    "key.pem",
                    "--tls-ca-cert-file",
                    "cert.pem",
                    "--tls-auth-clients",
                    "no",
                ]
            } else {
                Vec::new()
            };
            let mut node = Node::new(port, dir.path(), &extra, password);
            match node.start() {
                Ok(()) => {
                    return RedisServer {
                        node,
                        dir,
                        tls_port,
                    }
                }
                Err(LaunchError::PortInUse(msg)) => last = msg,
                Err(LaunchError::Failed(msg)) => panic!("larder-testkit: {msg}"),
            }
        }
        panic!("larder-testkit: redis-server hit a port clash {START_ATTEMPTS} times; last: {last}")
    }

    /// The TCP port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.node.port
    }

    /// `redis://127.0.0.1:PORT`, or `redis://:PASSWORD@127.0.0.1:PORT` with a password
    /// (percent-encoded where needed, e.g. a space becomes `%20`).
    pub fn url(&self) -> String {
        match self.node.password() {
            Some(pw) => format!(
                "redis://:{}@127.0.0.1:{}",
                crate::support::percent_encode(pw),
                self.port()
            ),
            None => format!("redis://127.0.0.1:{}", self.port()),
        }
    }

    /// The password given to [`RedisServer::start_with_password`], if any.
    pub fn password(&self) -> Option<&str> {
        self.node.password()
    }

    /// The server's working directory (holds `redis.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the process is running (false after [`RedisServer::stop`]).
    pub fn is_running(&self) -> bool {
        self.node.is_running()
    }

    /// SIGKILL the process and wait for it. All data is lost (`--save ""`).
    pub fn stop(&mut self) {
        self.node.kill();
    }

    /// Start again on the same port (killing the current process first if it still runs),
    /// retrying for up to 10 s while the port is held, then wait for PONG.
    pub fn restart(&mut self) {
        self.node.kill();
        self.node.restart_same_port(RESTART_PATIENCE);
    }

    /// `redis-cli -p PORT [-a pw --no-auth-warning] ARGS…`; trimmed stdout.
    /// Panics (with stderr) if redis-cli exits non-zero, e.g. when the server is down.
    /// Note that redis-cli exits 0 on error *replies* (they are printed on stdout).
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|e| panic!("larder-testkit: {e}"))
    }

    /// Like [`RedisServer::cli`] but returns the failure instead of panicking.
    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        try_cli(self.port(), self.password(), args, CLI_TIMEOUT)
    }

    /// `INFO commandstats` call count of `command` on this server (works with a password).
    pub fn command_calls(&self, command: &str) -> u64 {
        crate::checked_command_calls(self.port(), &self.cli(&["info", "commandstats"]), command)
    }

    /// The last `lines` lines of this server's log since its latest (re)start.
    pub fn log_tail(&self, lines: usize) -> String {
        self.node.log_tail(lines)
    }
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port())
            .field("password", &self.password().map(|_| "***"))
            .field("running", &self.is_running())
            .field("dir", &self.dir())
            .finish()
    }
}

/// A self-signed certificate for 127.0.0.1 in `dir/cert.pem` and `dir/key.pem`.
fn make_certificate(dir: &Path) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes"])
        .args(["-keyout", "key.pem", "-out", "cert.pem", "-days", "2"])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .output()
        .expect("larder-testkit: run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "larder-testkit: openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Instant;

    #[test]
    fn a_foreign_server_on_the_port_is_a_port_clash_not_a_false_pong() {
        let other = RedisServer::start();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut node = Node::new(other.port(), dir.path(), &[], None);
        match node.start() {
            Err(LaunchError::PortInUse(msg)) => assert!(msg.contains("Address already in use")),
            Err(LaunchError::Failed(msg)) => panic!("expected a port clash, got: {msg}"),
            Ok(()) => panic!("took the PONG of another server for ours"),
        }
        assert!(!node.is_running());
    }

    #[test]
    fn restart_waits_for_a_held_port() {
        let mut redis = RedisServer::start();
        let port = redis.port();
        redis.stop();
        let squatter = TcpListener::bind(("127.0.0.1", port)).expect("squat on the port");
        let t = Instant::now();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            drop(squatter);
        });
        redis.restart();
        assert!(t.elapsed() >= Duration::from_millis(1400));
        assert_eq!(redis.port(), port);
        assert_eq!(redis.cli(&["ping"]), "PONG");
        release.join().expect("release thread");
    }
}
