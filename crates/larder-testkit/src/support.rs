//! Support shared by the tests and the self-contained benches (`larder bench`): Larder's own
//! processes (a command whose first stdout line announces its URL, killed on drop), the
//! Prometheus text they serve, percent-encoding for paths, and free ports.
//!
//! Errors are [`SupportError`] so that the benches can report them; tests `expect` them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum SupportError {
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("{what} printed {line:?}, not its address{log}")]
    NoAddress {
        what: String,
        line: String,
        log: String,
    },
    #[error("{what} exited with {status}{log}")]
    Exited {
        what: String,
        status: std::process::ExitStatus,
        log: String,
    },
    #[error("{what} did not become ready within {within:?}{log}")]
    NotReady {
        what: String,
        within: Duration,
        log: String,
    },
    #[error("no free port: {0}")]
    NoPort(std::io::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{url} is not an event stream: {status} {content_type}")]
    NotEvents {
        url: String,
        status: reqwest::StatusCode,
        content_type: String,
    },
}

/// A child process, SIGKILLed and reaped on drop (also when a test panics).
pub struct Proc {
    child: Child,
    /// Its base URL (`http://127.0.0.1:PORT`).
    pub url: String,
    /// Where its stderr goes, when it was given a log file.
    pub log: Option<PathBuf>,
    what: String,
}

impl Proc {
    /// Start `command` (whose stderr should already be set) and read its first stdout line,
    /// which ends with its URL (`larder mock-llm` and `larder worker` announce themselves so).
    /// The rest of stdout is drained so the child never blocks on a full pipe.
    pub fn announcing(
        mut command: Command,
        what: &str,
        log: Option<PathBuf>,
    ) -> Result<Proc, SupportError> {
        let mut child =
            command
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|source| SupportError::Spawn {
                    what: what.to_owned(),
                    source,
                })?;
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            let mut reader = BufReader::new(stdout);
            // A read error leaves the line empty, which is reported below.
            let _ = reader.read_line(&mut line);
            std::thread::spawn(move || for _ in reader.lines() {});
        }
        let mut proc = Proc {
            child,
            url: String::new(),
            log,
            what: what.to_owned(),
        };
        match line.trim().rsplit(' ').next() {
            Some(url) if url.starts_with("http://") => {
                proc.url = url.to_owned();
                Ok(proc)
            }
            _ => Err(SupportError::NoAddress {
                what: what.to_owned(),
                line,
                log: proc.log_text(),
            }),
        }
    }

    /// Start `command`, which serves on `url`, and wait until its `/readyz` answers 200.
    pub async fn ready(
        mut command: Command,
        what: &str,
        url: String,
        log: Option<PathBuf>,
        within: Duration,
    ) -> Result<Proc, SupportError> {
        let child = command.spawn().map_err(|source| SupportError::Spawn {
            what: what.to_owned(),
            source,
        })?;
        let mut proc = Proc {
            child,
            url,
            log,
            what: what.to_owned(),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = proc.child.try_wait() {
                return Err(SupportError::Exited {
                    what: proc.what.clone(),
                    status,
                    log: proc.log_text(),
                });
            }
            if let Ok(resp) = client.get(format!("{}/readyz", proc.url)).send().await {
                if resp.status().is_success() {
                    return Ok(proc);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(SupportError::NotReady {
            what: proc.what.clone(),
            within,
            log: proc.log_text(),
        })
    }

    /// SIGKILL it now and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its log so far (empty without a log file), led by a separator for error messages.
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|log| std::fs::read_to_string(log).ok())
            .map(|text| format!("; {} log:\n{text}", self.what))
            .unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `larder serve --config DIR/larder.toml --listen 127.0.0.1:PORT --grpc-listen off`, with
/// `config` written to that file, on a free port, once its `/readyz` answers. `larder` is the
/// binary's command with its environment and output already set (its stderr going to `log`).
pub async fn serve_config(
    mut larder: Command,
    dir: &Path,
    config: &str,
    log: Option<PathBuf>,
) -> Result<Proc, SupportError> {
    let path = dir.join("larder.toml");
    std::fs::write(&path, config).map_err(|source| SupportError::Write {
        path: path.clone(),
        source,
    })?;
    let port = free_port()?;
    larder
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--grpc-listen",
            "off",
        ])
        .stdin(Stdio::null());
    Proc::ready(
        larder,
        "serve",
        format!("http://127.0.0.1:{port}"),
        log,
        Duration::from_secs(30),
    )
    .await
}

/// A free loopback port (bound and released; the OS does not hand it out again at once).
pub fn free_port() -> Result<u16, SupportError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(SupportError::NoPort)
}

/// Percent-encode everything but RFC 3986 unreserved characters (a path segment, a password).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The Prometheus text page at `{url}/metrics`.
pub async fn metrics_text(client: &reqwest::Client, url: &str) -> Result<String, SupportError> {
    let url = format!("{url}/metrics");
    let http = |source| SupportError::Http {
        url: url.clone(),
        source,
    };
    client
        .get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(http)?
        .text()
        .await
        .map_err(http)
}

/// Sum of the samples of metric `name` (exactly that name, not a longer one sharing its
/// prefix) in a Prometheus text page, over the label sets that contain `label` (`""`: all).
pub fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && l.contains(label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A Server-Sent Events client over a real HTTP response (`GET /v1/events`): the stream's
/// `(event name, data)` pairs, one per blank-line-ended block.
pub struct Sse {
    response: reqwest::Response,
    buffer: String,
    parsed: std::collections::VecDeque<(String, String)>,
}

impl Sse {
    /// `GET url` as an event stream; fails unless it answers 200 `text/event-stream`.
    pub async fn open(client: &reqwest::Client, url: &str) -> Result<Sse, SupportError> {
        let response = client
            .get(url)
            .send()
            .await
            .map_err(|source| SupportError::Http {
                url: url.to_owned(),
                source,
            })?;
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if response.status() != 200 || content_type != "text/event-stream" {
            return Err(SupportError::NotEvents {
                url: url.to_owned(),
                status: response.status(),
                content_type,
            });
        }
        Ok(Sse {
            response,
            buffer: String::new(),
            parsed: Default::default(),
        })
    }

    /// The next event, waiting at most `within` for it; `None` when the stream ended or no
    /// event came that long.
    pub async fn next(&mut self, within: std::time::Duration) -> Option<(String, String)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(event) = self.parsed.pop_front() {
                return Some(event);
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut name, mut data) = ("message".to_owned(), Vec::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    }
                }
                if !data.is_empty() {
                    self.parsed.push_back((name, data.join("\n")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_only_unreserved_characters() {
        assert_eq!(percent_encode("abc-_.~XYZ09"), "abc-_.~XYZ09");
        assert_eq!(percent_encode("p w@:/%é"), "p%20w%40%3A%2F%25%C3%A9");
        assert_eq!(percent_encode("이사"), "%EC%9D%B4%EC%82%AC");
    }

    #[test]
    fn metric_sums_match_the_exact_name_and_the_label() {
        let text = "# TYPE x counter\n\
            larder_jobs_total{stage=\"rank\"} 2\n\
            larder_jobs_total{stage=\"filter\"} 3\n\
            larder_jobs_total_extra{stage=\"rank\"} 100\n\
            larder_jobs 7\n";
        assert_eq!(metric_sum(text, "larder_jobs_total", ""), 5.0);
        assert_eq!(metric_sum(text, "larder_jobs_total", "stage=\"rank\""), 2.0);
        assert_eq!(metric_sum(text, "larder_jobs", ""), 7.0);
    }
}
