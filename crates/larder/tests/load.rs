//! `larder load` as a user runs it: real files (Parquet written with the arrow writer, NPY
//! bytes as numpy writes them, JSONL, safetensors), the real binary, a real `redis-server`.
//! Every loaded vector is compared byte for byte with what the upsert API would store, and
//! bad rows are reported with their row numbers.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use arrow_array::builder::{
    FixedSizeListBuilder, Float32Builder, Float64Builder, ListBuilder, StringBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use larder_store::codec::{self, Dtype};
use larder_store::{Backup, FieldSpec, NamespaceSchema, Store, StoreOptions};
use larder_testkit::RedisServer;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn larder_load(file: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_larder"))
        .arg("load")
        .arg(file)
        .args(args)
        .env_remove("LARDER_STORE")
        .env_remove("LARDER_BACKUP")
        .output()
        .expect("run larder load");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The counts in `loaded N entities in S s (R entities/s), rejected M`.
fn report(run: &Run) -> (u64, u64) {
    let line = run.stdout.trim_end().lines().last().unwrap_or_default();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert!(
        line.starts_with("loaded ")
            && line.contains(" entities in ")
            && line.contains(" entities/s), rejected "),
        "final line: {line:?} (stderr {})",
        run.stderr
    );
    (
        words[1].parse().expect("loaded"),
        words[words.len() - 1].parse().expect("rejected"),
    )
}

async fn namespace(redis: &RedisServer) -> Arc<dyn Store> {
    let store = larder_store::open_raw(
        &redis.url().parse().expect("store URL"),
        &StoreOptions::default(),
    )
    .await
    .expect("store");
    let schema = NamespaceSchema {
        fields: BTreeMap::from([
            (
                "clip".to_owned(),
                FieldSpec {
                    dim: 8,
                    dtype: Dtype::F16,
                },
            ),
            (
                "text".to_owned(),
                FieldSpec {
                    dim: 4,
                    dtype: Dtype::F32,
                },
            ),
        ]),
        ttl_seconds: None,
        fallback: BTreeMap::new(),
        max_entity_bytes: None,
        max_fields: None,
        alias: None,
        deleting: false,
    };
    store.put_schema("emb", &schema).await.expect("schema");
    store
}

fn clip(row: usize) -> Vec<f32> {
    (0..8).map(|i| (row * 8 + i) as f32 / 1000.0).collect()
}

fn text(row: usize) -> Vec<f32> {
    (0..4).map(|i| -((row * 4 + i) as f32) / 7.0).collect()
}

/// The field as the store holds it, or None.
async fn stored(store: &dyn Store, key: &str, field: &str) -> Option<Vec<u8>> {
    store
        .get_entity("emb", key)
        .await
        .expect("get")?
        .into_iter()
        .find(|(n, _)| n == field)
        .map(|(_, v)| v)
}

fn encoded(dtype: Dtype, values: &[f32]) -> Vec<u8> {
    codec::encode(dtype, values.len(), values).expect("encode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_loads_and_rejects_bad_rows_by_number() {
    let redis = RedisServer::start();
    let store = namespace(&redis).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("emb.parquet");
    let rows = 5000;
    let mut keys = StringBuilder::new();
    let mut clips = ListBuilder::new(Float32Builder::new());
    let mut texts = FixedSizeListBuilder::new(Float64Builder::new(), 4);
    for row in 0..rows {
        match row {
            11 => keys.append_null(),
            13 => keys.append_value("k".repeat(513)),
            _ => keys.append_value(format!("item:{row}")),
        }
        let mut c = clip(row);
        match row {
            3 => c.pop().map(drop).unwrap_or_default(),
            7 => c[2] = f32::NAN,
            _ => {}
        }
        clips.values().append_slice(&c);
        clips.append(true);
        for v in text(row) {
            texts.values().append_value(f64::from(v));
        }
        // Row 20 has no text vector: only clip is stored.
        texts.append(row != 20);
    }
    let batch = RecordBatch::try_from_iter([
        ("key", Arc::new(keys.finish()) as ArrayRef),
        ("clip", Arc::new(clips.finish()) as ArrayRef),
        ("text", Arc::new(texts.finish()) as ArrayRef),
    ])
    .expect("batch");
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&file).expect("create"),
        batch.schema(),
        None,
    )
    .expect("writer");
    // Several row groups and record batches.
    for start in (0..rows).step_by(1500) {
        writer
            .write(&batch.slice(start, 1500.min(rows - start)))
            .expect("write");
    }
    writer.close().expect("close");

    let run = larder_load(&file, &["--namespace", "emb", "--store", &redis.url()]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(report(&run), (rows as u64 - 4, 4));
    for row in [3, 7, 11, 13] {
        assert!(
            run.stderr.contains(&format!("row {row}: ")),
            "row {row} reported: {}",
            run.stderr
        );
    }
    assert!(
        run.stderr.contains("expected 8 values, got 7"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("not finite"), "{}", run.stderr);
    for row in [0, 20, 1499, 1500, 4999] {
        let key = format!("item:{row}");
        assert_eq!(
            stored(store.as_ref(), &key, "clip").await,
            Some(encoded(Dtype::F16, &clip(row)))
        );
        let expected_text = (row != 20).then(|| encoded(Dtype::F32, &text(row)));
        assert_eq!(stored(store.as_ref(), &key, "text").await, expected_text);
    }
    assert!(stored(store.as_ref(), "item:3", "clip").await.is_none());
    assert_eq!(
        store.count_entities("emb").await.expect("count"),
        rows as u64 - 4
    );
}

fn npy(path: &Path, descr: &str, rows: usize, dim: usize, data: &[u8]) {
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    std::fs::write(path, out).expect("write npy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npy_loads_one_field_with_or_without_a_keys_file() {
    let redis = RedisServer::start();
    let store = namespace(&redis).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // f32 rows for `text`, keys from a file; row 2 has an infinity.
    let f32_file = dir.path().join("text.npy");
    let mut data = Vec::new();
    for row in 0..50 {
        let mut v = text(row);
        if row == 2 {
            v[0] = f32::INFINITY;
        }
        v.iter()
            .for_each(|x| data.extend_from_slice(&x.to_le_bytes()));
    }
    npy(&f32_file, "<f4", 50, 4, &data);
    let keys = dir.path().join("keys.txt");
    std::fs::write(
        &keys,
        (0..50).map(|i| format!("doc-{i}\n")).collect::<String>(),
    )
    .expect("keys");
    let run = larder_load(
        &f32_file,
        &[
            "--namespace",
            "emb",
            "--store",
            &redis.url(),
            "--field",
            "text",
            "--keys",
            keys.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(report(&run), (49, 1));
    assert!(run.stderr.contains("row 2: "), "{}", run.stderr);
    assert_eq!(
        stored(store.as_ref(), "doc-7", "text").await,
        Some(encoded(Dtype::F32, &text(7)))
    );

    // f16 rows for `clip`, keys row:N.
    let f16_file = dir.path().join("clip.npy");
    let mut data = Vec::new();
    for row in 0..30 {
        for x in clip(row) {
            data.extend_from_slice(&half::f16::from_f32(x).to_le_bytes());
        }
    }
    npy(&f16_file, "<f2", 30, 8, &data);
    let run = larder_load(
        &f16_file,
        &[
            "--namespace",
            "emb",
            "--store",
            &redis.url(),
            "--field",
            "clip",
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(report(&run), (30, 0));
    assert_eq!(
        stored(store.as_ref(), "row:29", "clip").await,
        Some(encoded(Dtype::F16, &clip(29)))
    );

    // `larder inspect` sees what was loaded: 49 doc-N plus 30 row:N entities.
    let inspect = std::process::Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["inspect", "--namespace", "emb", "--store", &redis.url()])
        .output()
        .expect("run larder inspect");
    assert_eq!(
        inspect.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&inspect.stdout).expect("JSON");
    assert_eq!(stats["entity_count"], 79, "{stats}");
    assert_eq!(stats["primaries"][0]["entities"], 79, "{stats}");
    assert!(
        stats["bytes_per_entity"]["max"].as_u64() > Some(16),
        "{stats}"
    );

    // A keys file that does not match the rows, and a missing --field, fail before writing.
    std::fs::write(&keys, "only-one\n").expect("keys");
    let run = larder_load(
        &f32_file,
        &[
            "--namespace",
            "emb",
            "--store",
            &redis.url(),
            "--field",
            "text",
            "--keys",
            keys.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("--keys")
            && run.stderr.contains("1 keys")
            && run.stderr.contains("50 rows"),
        "{}",
        run.stderr
    );
    let run = larder_load(&f32_file, &["--namespace", "emb", "--store", &redis.url()]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("--field"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_skips_or_aborts_at_bad_rows() {
    let redis = RedisServer::start();
    let store = namespace(&redis).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("emb.jsonl");
    let mut lines = String::new();
    for row in 0..3000 {
        let line = match row {
            5 => "{not json".to_owned(),
            8 => r#"{"key": "x", "fields": {"nope": [1, 2]}}"#.to_owned(),
            1500 => r#"{"key": "y", "fields": {"text": [1, 2, 3]}}"#.to_owned(),
            _ => serde_json::json!({"key": format!("j:{row}"), "fields": {"text": text(row)}})
                .to_string(),
        };
        lines.push_str(&line);
        lines.push('\n');
    }
    std::fs::write(&file, lines).expect("write");

    let run = larder_load(
        &file,
        &[
            "--namespace",
            "emb",
            "--store",
            &redis.url(),
            "--on-error",
            "abort",
        ],
    );
    assert_eq!(run.code, Some(1), "abort exits 1: {}", run.stderr);
    assert!(run.stderr.contains("aborted at row 5"), "{}", run.stderr);
    let (loaded, _) = report(&run);
    assert_eq!(
        loaded, 0,
        "nothing was written from the batch that held the bad row"
    );
    assert!(
        stored(store.as_ref(), "j:6", "text").await.is_none(),
        "nothing after the bad row"
    );

    let run = larder_load(&file, &["--namespace", "emb", "--store", &redis.url()]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(report(&run), (2997, 3));
    for row in [5, 8, 1500] {
        assert!(
            run.stderr.contains(&format!("row {row}: ")),
            "{}",
            run.stderr
        );
    }
    assert!(run.stderr.contains("no field \"nope\""), "{}", run.stderr);
    assert_eq!(
        stored(store.as_ref(), "j:2999", "text").await,
        Some(encoded(Dtype::F32, &text(2999)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safetensors_loads_every_field_and_honours_present() {
    let redis = RedisServer::start();
    let store = namespace(&redis).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = 40;
    let clip_bytes: Vec<u8> = (0..rows)
        .flat_map(clip)
        .flat_map(|x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    let text_bytes: Vec<u8> = (0..rows)
        .flat_map(text)
        .flat_map(f32::to_le_bytes)
        .collect();
    // Row 3 has no text (as Larder's own lookup answer marks absent rows).
    let present: Vec<u8> = (0..rows).map(|r| u8::from(r != 3)).collect();
    let tensors = [
        (
            "clip",
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::F16,
                vec![rows, 8],
                &clip_bytes,
            )
            .expect("view"),
        ),
        (
            "text",
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                vec![rows, 4],
                &text_bytes,
            )
            .expect("view"),
        ),
        (
            "text.present",
            safetensors::tensor::TensorView::new(safetensors::Dtype::U8, vec![rows], &present)
                .expect("view"),
        ),
    ];
    let file = dir.path().join("emb.safetensors");
    std::fs::write(
        &file,
        safetensors::serialize(tensors, None).expect("serialize"),
    )
    .expect("write");
    let keys = dir.path().join("keys.txt");
    std::fs::write(
        &keys,
        (0..rows).map(|i| format!("s:{i}\n")).collect::<String>(),
    )
    .expect("keys");
    let run = larder_load(
        &file,
        &[
            "--namespace",
            "emb",
            "--store",
            &redis.url(),
            "--keys",
            keys.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(report(&run), (40, 0));
    assert_eq!(
        stored(store.as_ref(), "s:39", "clip").await,
        Some(encoded(Dtype::F16, &clip(39)))
    );
    assert_eq!(
        stored(store.as_ref(), "s:39", "text").await,
        Some(encoded(Dtype::F32, &text(39)))
    );
    assert!(stored(store.as_ref(), "s:3", "text").await.is_none());
    assert!(stored(store.as_ref(), "s:3", "clip").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_go_to_the_backup_too_and_bad_setups_fail_clearly() {
    let redis = RedisServer::start();
    namespace(&redis).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("emb.jsonl");
    let lines: String = (0..250)
        .map(|row| {
            serde_json::json!({"key": format!("b:{row}"), "fields": {"text": text(row)}})
                .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(&file, lines).expect("write");
    let backup = format!("sqlite://{}", dir.path().join("backup.db").display());
    let run = larder_load(
        &file,
        &[
            "--namespace",
            "emb",
            "--store",
            &redis.url(),
            "--backup",
            &backup,
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(report(&run), (250, 0));
    let held = Backup::connect(&backup.parse().expect("backup URL"))
        .await
        .expect("backup")
        .count(Some("emb"))
        .await
        .expect("count");
    assert_eq!(held, 250, "the backup holds every loaded entity");
    let schemas = Backup::connect(&backup.parse().expect("backup URL"))
        .await
        .expect("backup")
        .schemas(Some("emb"))
        .await
        .expect("schemas");
    assert_eq!(
        schemas.len(),
        1,
        "and the namespace's schema, which predates the backup"
    );

    let run = larder_load(&file, &["--namespace", "nope", "--store", &redis.url()]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("does not exist"), "{}", run.stderr);
    let csv = dir.path().join("emb.csv");
    std::fs::write(&csv, "key,x\n").expect("write");
    let run = larder_load(&csv, &["--namespace", "emb", "--store", &redis.url()]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("unknown format"), "{}", run.stderr);
    let run = larder_load(&file, &["--namespace", "Bad Name", "--store", &redis.url()]);
    assert_eq!(run.code, Some(2));
}
