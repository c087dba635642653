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

/// Runs `script` (a Selenium check of the operator page, which imports `chromium.py` beside
/// it) with `args` in a virtualenv under `tmp` holding Selenium, against Debian's headless
/// Chromium, and returns its output. Panics when Chromium, its WebDriver or the virtualenv is
/// missing: a browser test must not pass without a browser.
pub fn chromium_check(tmp: &Path, script: &Path, args: &[&str]) -> std::process::Output {
    for binary in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            Path::new(binary).exists(),
            "{binary} is missing: scripts/test installs Debian's chromium and chromium-driver"
        );
    }
    let python = venv(&tmp.join("venv-ui"), &["selenium==4.27.1"]);
    Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()))
}
