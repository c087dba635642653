//! Real Python clients for tests that check Larder as its users call it (grpcio, numpy,
//! safetensors from PyPI): one virtualenv per set of packages, made once under the target
//! directory and reused by later runs.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `python` of a virtualenv in `dir` (e.g. `env!("CARGO_TARGET_TMPDIR")/venv-grpc`)
/// holding `packages` (pip requirement strings), creating it when missing. Needs `python3`
/// with the venv module and PyPI. Panics, with pip's output, when it cannot be made: a test
/// that needs a real client must not pass without one.
pub fn venv(dir: &Path, packages: &[&str]) -> PathBuf {
    let python = dir.join("bin").join("python");
    let stamp = dir.join("larder-packages.txt");
    let wanted = packages.join("\n");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
        return python;
    }
    let run = |command: &mut Command, what: &str| {
        let out = command
            .output()
            .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
        assert!(
            out.status.success(),
            "{what} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        Command::new("python3").args(["-m", "venv"]).arg(dir),
        "python3 -m venv",
    );
    run(
        Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(packages),
        "pip install",
    );
    std::fs::write(&stamp, wanted).unwrap_or_else(|e| panic!("write {}: {e}", stamp.display()));
    python
}
