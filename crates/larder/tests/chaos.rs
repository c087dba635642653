//! The "done means", run as a user runs it: `larder serve` on a real 3x2 cluster with
//! the backup on PostgreSQL, and `larder bench failover` SIGKILLing a primary under 4 writers
//! and 4 readers. Every run asserts: no acknowledged write lost, no write refused, no read
//! error, no request over the lookup timeout plus 100 ms, and a non-degraded read within 5 s
//! of the cluster reporting ok. `FAILOVER_RUNS` runs (default 1; `scripts/chaos-failover`
//! loops the same by hand).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use larder_testkit::{PostgresDb, RedisCluster};
use serde_json::Value;

/// A process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const LOOKUP_MS: f64 = 500.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_through_the_server_with_a_backup() {
    // A private server, which the testkit runs with fsync=off: on the shared one a COMMIT once
    // stalled 1.27 s behind the VM disk's writeback (sqlx logged it as a slow statement), and
    // the write waiting on it with it. What is under test is Larder's write path and replay,
    // not this machine's disk; `scripts/chaos-failover` runs the same on a durable server.
    let pg = PostgresDb::start_private();
    let mut cluster = RedisCluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = larder_testkit::ports::pick_ports(1)[0];
    let log = dir.path().join("serve.log");
    let base = format!("http://127.0.0.1:{port}");
    let _serve = Proc(
        Command::new(env!("CARGO_BIN_EXE_larder"))
            .args(["serve", "--store", &cluster.url(), "--backup", &pg.url()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--grpc-listen", "off"])
            .arg("--data-dir")
            .arg(dir.path())
            .env_remove("LARDER_STORE")
            .env_remove("LARDER_BACKUP")
            .env_remove("LARDER_DB")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start larder serve"),
    );
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            Instant::now() < deadline,
            "larder serve did not become ready: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let runs: usize = std::env::var("FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    for run in 0..runs {
        let out = tokio::task::spawn_blocking({
            let (base, seeds) = (base.clone(), cluster.seeds().join(","));
            move || {
                Command::new(env!("CARGO_BIN_EXE_larder"))
                    .args(["bench", "failover", "--url", &base, "--cluster", &seeds])
                    .args(["--duration", "16", "--kill-after", "4", "--json"])
                    .output()
                    .expect("run larder bench failover")
            }
        })
        .await
        .expect("bench task");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "bench failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("run {run}:\n{stdout}");
        let r: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
            .expect("the last line is JSON");
        assert!(
            r["acknowledged"].as_u64().unwrap_or(0) > 100,
            "writes went on: {r}"
        );
        assert_eq!(r["lost"], 0, "no acknowledged write lost: {r}");
        assert_eq!(r["refused"], 0, "no write refused: {r}");
        assert_eq!(r["read_errors"], 0, "no read error: {r}");
        assert_eq!(r["backlog_left"], 0, "the replay drained: {r}");
        for slowest in ["slowest_read_ms", "slowest_write_ms"] {
            let ms = r[slowest].as_f64().unwrap_or(f64::MAX);
            let warnings: String = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("WARN"))
                .map(|l| format!("{l}\n"))
                .collect();
            assert!(
                ms <= LOOKUP_MS + 100.0,
                "{slowest} {ms} ms: {r}\nserver warnings:\n{warnings}"
            );
        }
        let recovery = r["recovery_s"]
            .as_f64()
            .expect("the cluster recovered and reads answered");
        assert!(recovery <= 5.0, "non-degraded reads within 5 s of ok: {r}");
        // Bring the killed node back (it rejoins as a replica) for the next run.
        for p in cluster.ports() {
            if !cluster.is_running(p) {
                tokio::task::block_in_place(|| cluster.restart_node(p));
            }
        }
        assert!(
            tokio::task::block_in_place(|| cluster.wait_healthy(Duration::from_secs(30))),
            "cluster whole again"
        );
    }
}
