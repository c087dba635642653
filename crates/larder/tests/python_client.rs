//! The Python client (`clients/python`), installed with pip as a user installs it, passes its
//! pytest suite against this build's `larder serve` (`scripts/test-python` does both; the
//! suite starts its own server with auth tokens).

use std::path::Path;
use std::process::Command;

#[test]
fn the_python_client_passes_its_suite_against_a_live_server() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(root.join("scripts/test-python"))
        .arg(env!("CARGO_BIN_EXE_larder"))
        .arg("-q")
        .env(
            "LARDER_PY_VENV",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("venv-client"),
        )
        .output()
        .expect("run scripts/test-python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // pytest's summary: "N passed" with no failures or errors.
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.contains(" passed") && !summary.contains("failed") && !summary.contains("error"),
        "{stdout}"
    );
}
