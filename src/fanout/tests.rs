//! Unit tests of `tenants`.

use super::apply::{line_of, segments};
use super::history::list_tenants;
use super::*;
use std::path::PathBuf;

fn m(version: i32, no_transaction: bool) -> Migration {
    Migration {
        version,
        name: format!("m{version}"),
        path: PathBuf::from(format!("V{version}__m.sql")),
        sql: String::new(),
        checksum: String::new(),
        no_transaction,
        statements: Vec::new(),
    }
}

#[test]
fn no_transaction_files_stand_alone() {
    let files = [m(1, false), m(2, false), m(3, true), m(4, false)];
    let refs: Vec<&Migration> = files.iter().collect();
    let versions: Vec<Vec<i32>> = segments(&refs)
        .iter()
        .map(|s| s.iter().map(|m| m.version).collect())
        .collect();
    assert_eq!(versions, vec![vec![1, 2], vec![3], vec![4]]);
}

#[test]
fn error_positions_become_lines() {
    let sql = "ALTER TABLE a ADD x int;\nALTER TABLE b\n  ADD y int;";
    assert_eq!(line_of(sql, 1), 1);
    assert_eq!(line_of(sql, 26), 2);
    assert_eq!(line_of(sql, 40), 3);
}

#[test]
fn tenant_lists_are_shortened() {
    let slugs: Vec<String> = (0..12).map(|i| format!("t{i}")).collect();
    let refs: Vec<&str> = slugs.iter().map(String::as_str).collect();
    assert_eq!(
        list_tenants(&refs),
        "t0, t1, t2, t3, t4, t5, t6, t7, t8, t9 and 2 more"
    );
}
