//! Non-Rust drivers the tests run: whether one is installed, failing under CI when it is not.

use super::repo_path;

/// Whether this run is CI (`CI` set, not "0" or "false"): a missing driver then fails the test.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Whether `program args` (a probe such as `python3 -c "import psycopg"`) succeeds. When it does not, the
/// test fails under CI (a missing install step) and is skipped elsewhere, saying why.
pub fn require(program: &str, args: &[&str], install: &str) -> bool {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(repo_path("tests/clients/node"))
        .output();
    let why = match out {
        Ok(out) if out.status.success() => return true,
        Ok(out) => format!(
            "{program} {args:?} failed ({install}): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("cannot run {program} ({install}): {e}"),
    };
    if under_ci() {
        panic!("{why}");
    }
    eprintln!("SKIPPED: {why} (this test fails instead under CI=true)");
    false
}

pub fn require_psycopg() -> bool {
    require(
        "python3",
        &["-c", "import psycopg"],
        "pip install \"psycopg[binary]\"",
    )
}

pub fn require_node_postgres() -> bool {
    require(
        "node",
        &["-e", "require('pg')"],
        "npm ci in tests/clients/node",
    )
}
