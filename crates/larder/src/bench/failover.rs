//! `larder bench failover`: a primary of a Redis Cluster is SIGKILLed while writers upsert
//! single entities and readers look up batches through a running `larder serve`; then it
//! checks every acknowledged write and prints what a user of the server saw:
//!
//! - acknowledged, lost and refused writes (lost: Redis holds another value than the last one
//!   acknowledged, once the server's replay backlog is empty);
//! - read errors (any answer but 200) and degraded reads (200 with `degraded: true`);
//! - the slowest request of each kind;
//! - the seconds from the cluster reporting ok (every surviving node says `cluster_state:ok`
//!   and none of them lists the killed node as owning slots) to the first non-degraded read.
//!
//! The victim is a live primary found through the seeds; it is killed by the pid its own
//! `INFO server` reports, so it must run on this machine. `--json` adds one JSON line with
//! the same figures, for scripts and tests.

use super::BenchError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use rand::Rng;
use serde_json::{json, Value};

#[derive(Args)]
pub struct FailoverArgs {
    /// Base URL of the `larder serve` under test.
    #[arg(long, default_value = "http://127.0.0.1:7878")]
    url: String,
    /// The cluster's nodes, host:port,host:port,… (to pick, kill and watch a primary).
    #[arg(long, value_name = "NODES")]
    cluster: String,
    #[arg(long, default_value_t = 4)]
    writers: usize,
    #[arg(long, default_value_t = 4)]
    readers: usize,
    /// Keys per lookup.
    #[arg(long, default_value_t = 50)]
    keys: usize,
    /// Seconds of load in all.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Seconds into the load at which the primary is killed.
    #[arg(long, default_value_t = 10)]
    kill_after: u64,
    #[arg(long, default_value = "chaos")]
    namespace: String,
    #[arg(long, default_value_t = 64)]
    dim: usize,
    /// Also print the figures as one JSON line.
    #[arg(long)]
    json: bool,
}

/// What the load saw.
#[derive(Default)]
struct Seen {
    /// Per key, the last value an upsert of it was acknowledged with.
    acked: HashMap<String, f32>,
    acked_writes: u64,
    refused: u64,
    refusal: Option<String>,
    read_errors: u64,
    read_error: Option<String>,
    reads: u64,
    degraded: u64,
    slowest_read: Duration,
    slowest_write: Duration,
    /// When each good (non-degraded) read finished.
    good_reads: Vec<Instant>,
}

fn node_client(node: &str) -> Result<redis::Client, BenchError> {
    redis::Client::open(format!("redis://{node}"))
        .map_err(|e| BenchError::Failed(format!("--cluster {node}: {e}")))
}

async fn query(node: &str, cmd: &redis::Cmd) -> Result<String, BenchError> {
    let client = node_client(node)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(300)))
        .set_response_timeout(Some(Duration::from_millis(300)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    cmd.query_async::<String>(&mut conn)
        .await
        .map_err(BenchError::from)
}

fn cmd(args: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c
}

/// A live primary that owns slots, and its pid.
async fn pick_victim(nodes: &[String]) -> Result<(String, u32), BenchError> {
    for node in nodes {
        let Ok(view) = query(node, &cmd(&["CLUSTER", "NODES"])).await else {
            continue;
        };
        for line in view.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 8 && f[2].contains("master") && !f[2].contains("fail") {
                let addr = f[1].split('@').next().unwrap_or_default().to_owned();
                let info = query(&addr, &cmd(&["INFO", "server"])).await?;
                let pid = info
                    .lines()
                    .find_map(|l| l.strip_prefix("process_id:"))
                    .and_then(|p| p.trim().parse().ok())
                    .ok_or("INFO server has no process_id")?;
                return Ok((addr, pid));
            }
        }
    }
    Err("no node of --cluster answered CLUSTER NODES with a live primary".into())
}

/// Every surviving node says ok, and none lists `victim` as a primary with slots.
async fn recovered(nodes: &[String], victim: &str) -> bool {
    let mut answered = 0;
    for node in nodes.iter().filter(|n| n.as_str() != victim) {
        let Ok(info) = query(node, &cmd(&["CLUSTER", "INFO"])).await else {
            continue;
        };
        if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
            return false;
        }
        let Ok(view) = query(node, &cmd(&["CLUSTER", "NODES"])).await else {
            return false;
        };
        let victim_owns = view.lines().any(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() > 8
                && f[1].split('@').next() == Some(victim)
                && f[2].contains("master")
                && !f[2].contains("fail")
        });
        if victim_owns {
            return false;
        }
        answered += 1;
    }
    answered > 0
}

fn vector(dim: usize, x: f32) -> Vec<f32> {
    vec![x; dim]
}

pub async fn run(args: FailoverArgs) -> Result<(), BenchError> {
    let nodes: Vec<String> = args.cluster.split(',').map(str::to_owned).collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let base = args.url.trim_end_matches('/').to_owned();
    let ns = args.namespace.clone();
    let put = client
        .put(format!("{base}/v1/namespaces/{ns}"))
        .json(&json!({"fields": {"v": {"dim": args.dim, "dtype": "f32"}}}))
        .send()
        .await
        .map_err(|e| BenchError::Failed(format!("PUT namespace: {e}")))?;
    if !put.status().is_success() {
        return Err(format!("PUT namespace answered {}", put.status()).into());
    }
    let read_keys: Vec<String> = (0..1000).map(|i| format!("r:{i}")).collect();
    for chunk in read_keys.chunks(500) {
        let entities: Vec<Value> = chunk
            .iter()
            .map(|k| json!({"key": k, "fields": {"v": vector(args.dim, 1.0)}}))
            .collect();
        let resp = client
            .post(format!("{base}/v1/namespaces/{ns}/entities"))
            .json(&json!({ "entities": entities }))
            .send()
            .await
            .map_err(|e| BenchError::Failed(format!("preload: {e}")))?;
        if !resp.status().is_success() {
            return Err(format!("preload answered {}", resp.status()).into());
        }
    }

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let (client, base, ns, seen, stop, dim) = (
            client.clone(),
            base.clone(),
            ns.clone(),
            seen.clone(),
            stop.clone(),
            args.dim,
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("w{w}:{}", n % 100);
                let body =
                    json!({"entities": [{"key": key, "fields": {"v": vector(dim, n as f32)}}]});
                let start = Instant::now();
                let out = client
                    .post(format!("{base}/v1/namespaces/{ns}/entities"))
                    .json(&body)
                    .send()
                    .await;
                let took = start.elapsed();
                let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                s.slowest_write = s.slowest_write.max(took);
                match out {
                    Ok(r) if r.status().is_success() => {
                        s.acked_writes += 1;
                        s.acked.insert(key, n as f32);
                    }
                    Ok(r) => {
                        s.refused += 1;
                        s.refusal.get_or_insert(format!("{}", r.status()));
                    }
                    Err(e) => {
                        s.refused += 1;
                        s.refusal.get_or_insert(e.to_string());
                    }
                }
            }
        }));
    }
    for _ in 0..args.readers {
        let (client, base, ns, seen, stop, keys) = (
            client.clone(),
            base.clone(),
            ns.clone(),
            seen.clone(),
            stop.clone(),
            args.keys,
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<String> = {
                    let mut rng = rand::rng();
                    (0..keys)
                        .map(|_| format!("r:{}", rng.random_range(0..1000)))
                        .collect()
                };
                let start = Instant::now();
                let out = client
                    .post(format!("{base}/v1/namespaces/{ns}/lookup"))
                    .json(&json!({"keys": batch, "fields": ["v"]}))
                    .send()
                    .await;
                let body = match out {
                    // The first failure's message is reported, not returned.
                    Ok(r) if r.status().is_success() => {
                        r.json::<Value>().await.map_err(|e| e.to_string())
                    }
                    Ok(r) => Err(r.status().to_string()),
                    Err(e) => Err(e.to_string()),
                };
                let took = start.elapsed();
                let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                s.reads += 1;
                s.slowest_read = s.slowest_read.max(took);
                match body {
                    Ok(body) if body["degraded"] == Value::Bool(true) => s.degraded += 1,
                    Ok(_) => s.good_reads.push(Instant::now()),
                    Err(e) => {
                        s.read_errors += 1;
                        s.read_error.get_or_insert(e);
                    }
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(args.kill_after)).await;
    let (victim, pid) = pick_victim(&nodes).await?;
    let killed_at = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .map_err(|e| BenchError::Failed(format!("kill {pid}: {e}")))?;
    if !status.success() {
        return Err(format!("kill -9 {pid} failed").into());
    }
    eprintln!("killed primary {victim} (pid {pid})");
    let end = killed_at + Duration::from_secs(args.duration.saturating_sub(args.kill_after));
    let mut ok_at = None;
    while Instant::now() < end {
        if ok_at.is_none() && recovered(&nodes, &victim).await {
            ok_at = Some(Instant::now());
            eprintln!(
                "cluster ok {:.1} s after the kill",
                killed_at.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }

    // Wait for the server's replay, then compare what it acknowledged with what Redis holds.
    let drain_start = Instant::now();
    let mut backlog = None;
    while drain_start.elapsed() < Duration::from_secs(60) {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if let Ok(body) = r.json::<Value>().await {
                backlog = body["backup"]["replay_backlog"].as_u64();
                if backlog.unwrap_or(0) == 0 {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
    let keys: Vec<String> = seen.acked.keys().cloned().collect();
    let mut lost = 0u64;
    let mut lost_example = None;
    for chunk in keys.chunks(500) {
        let body: Value = client
            .post(format!("{base}/v1/namespaces/{ns}/lookup"))
            .json(&json!({"keys": chunk, "fields": ["v"]}))
            .send()
            .await
            .map_err(|e| BenchError::Failed(format!("verify: {e}")))?
            .json()
            .await
            .map_err(|e| BenchError::Failed(format!("verify: {e}")))?;
        if body["degraded"] == Value::Bool(true) {
            return Err("verify: the lookup answered degraded".into());
        }
        for (key, row) in chunk
            .iter()
            .zip(body["results"].as_array().into_iter().flatten())
        {
            let got = row["fields"]["v"][0].as_f64().map(|v| v as f32);
            if got != Some(seen.acked[key]) {
                lost += 1;
                lost_example.get_or_insert(format!(
                    "{key}: acknowledged {}, holds {got:?}",
                    seen.acked[key]
                ));
            }
        }
    }
    let recovery = ok_at.map(|ok| {
        seen.good_reads
            .iter()
            .filter(|t| **t >= ok)
            .min()
            .map(|t| t.duration_since(ok).as_secs_f64())
    });
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "victim {victim}: cluster ok {} after the kill",
        match ok_at {
            Some(ok) => format!("{:.1} s", ok.duration_since(killed_at).as_secs_f64()),
            None => "never".into(),
        }
    );
    println!(
        "writes: {} acknowledged, {lost} lost, {} refused{}",
        seen.acked_writes,
        seen.refused,
        seen.refusal
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    if let Some(example) = &lost_example {
        println!("  lost, e.g. {example}");
    }
    println!(
        "reads: {} in all, {} errors, {} degraded{}",
        seen.reads,
        seen.read_errors,
        seen.degraded,
        seen.read_error
            .as_deref()
            .map(|e| format!(" (first error: {e})"))
            .unwrap_or_default()
    );
    println!(
        "slowest request: read {:.0} ms, write {:.0} ms",
        ms(seen.slowest_read),
        ms(seen.slowest_write)
    );
    let recovery_text = match recovery {
        Some(Some(s)) => format!("{s:.2} s"),
        Some(None) => "no non-degraded read after it".into(),
        None => "the cluster never reported ok".into(),
    };
    println!("from cluster ok to the first non-degraded read: {recovery_text}");
    if args.json {
        println!(
            "{}",
            json!({
                "victim": victim,
                "cluster_ok_after_kill_s": ok_at.map(|ok| ok.duration_since(killed_at).as_secs_f64()),
                "acknowledged": seen.acked_writes,
                "lost": lost,
                "refused": seen.refused,
                "reads": seen.reads,
                "read_errors": seen.read_errors,
                "degraded": seen.degraded,
                "slowest_read_ms": ms(seen.slowest_read),
                "slowest_write_ms": ms(seen.slowest_write),
                "recovery_s": recovery.flatten(),
                "backlog_left": backlog,
            })
        );
    }
    Ok(())
}
