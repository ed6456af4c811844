//! Official Python SDKs as clients: a script in `tests/python` run with the app's address
//! and key, from the virtual environment that `scripts/test` prepares (`.venv`), or the
//! interpreter named by `TOLLGATE_PYTHON`.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use super::TestApp;

fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("TOLLGATE_PYTHON") {
        return python.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "the SDK tests need Python with the SDKs of tests/python/requirements.txt: run scripts/test (it creates .venv) or set TOLLGATE_PYTHON"
    );
    venv
}

/// Runs `tests/python/{script}` against `app` and parses the JSON it prints.
pub async fn run(script: &str, app: &TestApp) -> Value {
    run_with(script, vec![app.addr.to_string(), app.key.clone()]).await
}

/// Runs `tests/python/{script}` with `args` and parses the JSON it prints.
pub async fn run_with(script: &str, args: Vec<String>) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(&script)
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "Python script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
