//! Running the real clients of the tests (psql, pgbench, driver scripts) with a time bound, and reading
//! what they print.

use super::run_program;
use std::time::Duration;

/// [`run_program`] that fails the test after `secs`: a client stuck on a broken relay ends the test rather
/// than hanging it.
pub async fn run_bounded(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
    secs: u64,
) -> (bool, String, String) {
    tokio::time::timeout(
        Duration::from_secs(secs),
        run_program(program, args, env, stdin),
    )
    .await
    .unwrap_or_else(|_| panic!("{program} {args:?} did not finish within {secs} s"))
}

/// A client run, for an assertion message.
pub fn describe_run(what: &str, ok: bool, out: &str, err: &str) -> String {
    format!("{what}: success={ok}\n--- stdout ---\n{out}\n--- stderr ---\n{err}")
}

/// The text after `label` on its line of a report such as pgbench's ("number of failed transactions: 0").
pub fn report_value(out: &str, label: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(label))
        .map(|rest| rest.trim().to_string())
}
