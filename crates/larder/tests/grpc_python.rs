//! A Python `grpcio` client, with stubs generated from the proto, reads a lookup from a running
//! `larder serve` as numpy arrays (`tests/python/grpc_lookup.py`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use larder_testkit::support::free_port;

struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_python_grpcio_client_reads_a_lookup_as_numpy_arrays() {
    let python = larder_testkit::python::venv(
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("venv-grpc"),
        &["grpcio", "grpcio-tools", "numpy"],
    );
    let (http, grpc) = (free_port().expect("port"), free_port().expect("port"));
    let dir = tempfile::tempdir().expect("tempdir");
    let _serve = Serve(
        Command::new(env!("CARGO_BIN_EXE_larder"))
            .args(["serve", "--ephemeral"])
            .args(["--listen", &format!("127.0.0.1:{http}")])
            .args(["--grpc-listen", &format!("127.0.0.1:{grpc}")])
            .arg("--data-dir")
            .arg(dir.path())
            .env_remove("LARDER_STORE")
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn larder serve"),
    );
    let base = format!("http://127.0.0.1:{http}");
    let started = Instant::now();
    // The HTTP port accepts once the app is assembled; gRPC is bound before it.
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "serve ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let out = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/grpc_lookup.py"))
        .arg(&base)
        .arg(format!("127.0.0.1:{grpc}"))
        .arg(&proto)
        .arg(dir.path())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok: numpy float32 (4, 768)"), "{stdout}");
}
