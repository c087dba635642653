//! Schemathesis (from PyPI) checks the OpenAPI document this build serves against this build's
//! answers: `not_a_server_error`, `status_code_conformance`, `content_type_conformance` and
//! `response_schema_conformance`, with a write token, a read token and none
//! (`scripts/test-openapi` starts the server and runs it). The seed is fixed so a failure here
//! replays; run the script by hand for fresh random cases.

use std::path::Path;
use std::process::Command;

#[test]
fn schemathesis_finds_the_served_document_faithful() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(root.join("scripts/test-openapi"))
        .arg(env!("CARGO_BIN_EXE_larder"))
        .env(
            "LARDER_PY_VENV",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("venv-schemathesis"),
        )
        .env("LARDER_ST_SEED", "20261203")
        .env_remove("LARDER_ST_SCHEMA")
        .output()
        .expect("run scripts/test-openapi");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
