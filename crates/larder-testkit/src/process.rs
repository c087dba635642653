//! Running `redis-cli` with a timeout and supervising one `redis-server` process.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long `start`/`restart` wait for PONG.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit for one `redis-cli` invocation.
pub(crate) const CLI_TIMEOUT: Duration = Duration::from_secs(60);
const LOG_MARKER: &str = "=== larder-testkit: starting redis-server";
const INSTALL_HINT: &str =
    "install it (Debian/Ubuntu: `apt-get install -y redis-server redis-tools`) \
     or point LARDER_REDIS_SERVER / LARDER_REDIS_CLI at the binaries";

/// The `redis-server` binary: `$LARDER_REDIS_SERVER` or `redis-server` from PATH.
pub(crate) fn server_bin() -> String {
    std::env::var("LARDER_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

/// The `redis-cli` binary: `$LARDER_REDIS_CLI` or `redis-cli` from PATH.
pub(crate) fn cli_bin() -> String {
    std::env::var("LARDER_REDIS_CLI").unwrap_or_else(|_| "redis-cli".to_owned())
}

/// Finished command.
pub(crate) struct Output {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

fn spawn_reader<R: Read + Send + 'static>(r: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            // A read error just truncates the captured output.
            let _ = r.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Run `program args…`, killing it after `timeout`.
pub(crate) fn run(program: &str, args: &[String], timeout: Duration) -> Result<Output, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                format!("`{program}` not found: {INSTALL_HINT}")
            } else {
                format!("could not run `{program}`: {e}")
            }
        })?;
    let out = spawn_reader(child.stdout.take());
    let err = spawn_reader(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`{program} {}` did not finish within {timeout:?}",
                    args.join(" ")
                ));
            }
            Ok(None) => {
                thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("waiting for `{program}` failed: {e}")),
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// `redis-cli -h 127.0.0.1 -p PORT [-a PW --no-auth-warning]`.
pub(crate) fn cli_prefix(port: u16, password: Option<&str>) -> Vec<String> {
    let mut v = vec![
        "-h".to_owned(),
        "127.0.0.1".to_owned(),
        "-p".to_owned(),
        port.to_string(),
    ];
    if let Some(pw) = password {
        v.extend([
            "-a".to_owned(),
            pw.to_owned(),
            "--no-auth-warning".to_owned(),
        ]);
    }
    v
}

/// Run redis-cli against `port`; trimmed stdout on exit code 0, otherwise a description with stderr.
pub(crate) fn try_cli(
    port: u16,
    password: Option<&str>,
    args: &[&str],
    timeout: Duration,
) -> Result<String, String> {
    let mut full = cli_prefix(port, password);
    full.extend(args.iter().map(|s| (*s).to_owned()));
    let out = run(&cli_bin(), &full, timeout)?;
    if out.status.success() {
        Ok(out.stdout.trim().to_owned())
    } else {
        Err(format!(
            "`redis-cli -p {port} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            out.stderr.trim(),
            out.stdout.trim()
        ))
    }
}

/// Why a node did not come up.
pub(crate) enum LaunchError {
    /// Port (or bus port) taken by someone else: pick another port / try again later.
    PortInUse(String),
    /// Anything else: not worth retrying.
    Failed(String),
}

impl LaunchError {
    pub(crate) fn message(&self) -> &str {
        match self {
            LaunchError::PortInUse(m) | LaunchError::Failed(m) => m,
        }
    }
}

/// One `redis-server` process with fixed port, directory and arguments; killed on drop.
pub(crate) struct Node {
    pub(crate) port: u16,
    dir: PathBuf,
    log: PathBuf,
    extra: Vec<String>,
    password: Option<String>,
    child: Option<Child>,
}

impl Node {
    pub(crate) fn new(port: u16, dir: &Path, extra: &[&str], password: Option<&str>) -> Node {
        Node {
            port,
            dir: dir.to_path_buf(),
            log: dir.join("redis.log"),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            password: password.map(str::to_owned),
            child: None,
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Whether the process is alive: started, and neither exited nor killed (also by someone
    /// else, e.g. `larder bench failover` killing a primary by pid; a dead child that nobody
    /// reaped yet is a zombie, state `Z` in `/proc/PID/stat`).
    pub(crate) fn is_running(&self) -> bool {
        self.child.as_ref().is_some_and(|c| {
            match std::fs::read_to_string(format!("/proc/{}/stat", c.id())) {
                // `pid (comm) S …`: the state follows the last ')'.
                Ok(stat) => stat
                    .rsplit_once(')')
                    .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
                Err(_) => false,
            }
        })
    }

    /// Spawn the process (does not wait for it).
    pub(crate) fn launch(&mut self) -> Result<(), LaunchError> {
        self.kill();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| LaunchError::Failed(format!("open {}: {e}", self.log.display())))?;
        let _ = writeln!(log, "{LOG_MARKER} on port {} ===", self.port);
        let log_err = log
            .try_clone()
            .map_err(|e| LaunchError::Failed(format!("dup log handle: {e}")))?;
        let port = self.port.to_string();
        let dir = self.dir.to_string_lossy().into_owned();
        let mut args: Vec<&str> = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir,
            "--daemonize",
            "no",
        ];
        args.extend(self.extra.iter().map(String::as_str));
        if let Some(pw) = &self.password {
            args.extend(["--requirepass", pw.as_str()]);
        }
        let bin = server_bin();
        let child = Command::new(&bin)
            .args(&args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|e| {
                LaunchError::Failed(if e.kind() == ErrorKind::NotFound {
                    format!("`{bin}` not found: {INSTALL_HINT}")
                } else {
                    format!("could not start `{bin}`: {e}")
                })
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// Poll `redis-cli ping` until PONG from *our* process (checked via `INFO server` pid, since a
    /// foreign server may own the port if ours lost the bind race). Kills the child on failure.
    pub(crate) fn wait_ready(&mut self, timeout: Duration) -> Result<(), LaunchError> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(child) = self.child.as_mut() else {
                return Err(LaunchError::Failed(
                    "redis-server is not running".to_owned(),
                ));
            };
            let pid = child.id();
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                let tail = self.log_tail(30);
                let msg = format!(
                    "redis-server on port {} exited early ({status}); log {}:\n{tail}",
                    self.port,
                    self.log.display()
                );
                return Err(if tail.contains("Address already in use") {
                    LaunchError::PortInUse(msg)
                } else {
                    LaunchError::Failed(msg)
                });
            }
            let pw = self.password.as_deref();
            let t = Duration::from_secs(2);
            if try_cli(self.port, pw, &["ping"], t).is_ok_and(|s| s == "PONG") {
                let info = try_cli(self.port, pw, &["info", "server"], t).unwrap_or_default();
                if info
                    .lines()
                    .any(|l| l.trim() == format!("process_id:{pid}"))
                {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(LaunchError::Failed(format!(
                    "redis-server on port {} did not answer PONG within {timeout:?}; log {}:\n{}",
                    self.port,
                    self.log.display(),
                    self.log_tail(30)
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Launch and wait for PONG.
    pub(crate) fn start(&mut self) -> Result<(), LaunchError> {
        self.launch()?;
        self.wait_ready(READY_TIMEOUT)
    }

    /// Start on the same port, retrying for `patience` while the port is held by someone else.
    /// Panics with the log tail on failure.
    pub(crate) fn restart_same_port(&mut self, patience: Duration) {
        let deadline = Instant::now() + patience;
        loop {
            match self.start() {
                Ok(()) => return,
                Err(LaunchError::PortInUse(_)) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!(
                    "larder-testkit: could not restart redis-server on port {}: {}",
                    self.port,
                    e.message()
                ),
            }
        }
    }

    /// SIGKILL and reap the process, if running.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last `n` lines the server logged since its latest (re)start.
    pub(crate) fn log_tail(&self, n: usize) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        let since = text.rfind(LOG_MARKER).map_or(&text[..], |i| &text[i..]);
        let lines: Vec<&str> = since.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}
