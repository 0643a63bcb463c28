//! Rules of the house that a grep can check (issue 12):
//! - every SQLSTATE a client may get is named in `error::sqlstate`, so `src/` holds no SQLSTATE literal
//!   outside that module (and outside tests);
//! - every error pgtenant writes to a client comes from a `UserFacing` value (`Refusal` for pgtenant's own,
//!   the error types of the layers below for theirs), so what a client is told is in one list,
//!   `src/user_facing.rs`: `PgError::fatal` and `PgError::error` appear only there and in `src/error.rs`;
//! - no import cycle among the library's top-level modules: each names only modules below it, so a module
//!   can be read (and tested) with what it stands on and nothing above;
//! - no source file outside tests over 600 lines (in `src/` and in each crate under `crates/`): a module with
//!   several jobs is a folder, a file per job.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every source file of `src/` that is not a test file (`tests.rs`, `*_tests.rs`): its path below `src/` and
/// its text, sorted by path.
fn library_sources() -> Vec<(PathBuf, String)> {
    let sources = sources_under("src");
    assert!(sources.len() > 50, "src/ was read: {} files", sources.len());
    sources
}

/// The non-test Rust files below `dir` (relative to the repository) with their text, paths relative to `dir`.
fn sources_under(dir: &str) -> Vec<(PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let sources: Vec<(PathBuf, String)> = files
        .iter()
        .filter(|f| {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name != "tests.rs" && !name.ends_with("_tests.rs")
        })
        .map(|f| {
            let rel = f.strip_prefix(&src).expect("under src").to_path_buf();
            (rel, std::fs::read_to_string(f).expect("read"))
        })
        .collect();
    sources
}

/// The source folders of the workspace's own crates: `src/` and each `crates/<name>/src/`.
fn workspace_source_dirs() -> Vec<String> {
    let mut dirs = vec!["src".to_string()];
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates");
    for entry in std::fs::read_dir(&crates).expect("crates/").flatten() {
        if entry.path().join("src").is_dir() {
            dirs.push(format!(
                "crates/{}/src",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    dirs.sort();
    assert!(dirs.len() > 1, "crates/ was read: {dirs:?}");
    dirs
}

/// The code of a file before its inline test module (`#[cfg(test)] mod tests { … }`, last in a file in this
/// crate), with the `pub mod sqlstate { … }` block left out.
fn code_outside_tests(text: &str) -> String {
    let code = text
        .split("#[cfg(test)]\nmod tests {")
        .next()
        .unwrap_or_default();
    match code.find("pub mod sqlstate {") {
        Some(start) => {
            let end = code[start..]
                .find("\n}")
                .map_or(code.len(), |e| start + e + 2);
            format!("{}{}", &code[..start], &code[end..])
        }
        None => code.to_string(),
    }
}

/// `"XXXXX"` literals shaped like an SQLSTATE: five characters, digits and capitals, a digit first, at
/// least one capital or a class other than the all-digit numbers a config default might be.
fn sqlstate_literals(code: &str) -> Vec<String> {
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    for (i, _) in code.match_indices('"') {
        let Some(candidate) = bytes.get(i + 1..i + 6) else {
            continue;
        };
        if bytes.get(i + 6) != Some(&b'"') || (i > 0 && bytes[i - 1] == b'"') {
            continue;
        }
        // A letter first only in the classes that have one (XX internal error, P0 PL/pgSQL, F0, HV): SQL
        // keywords such as "PAUSE" or "BEGIN" are not SQLSTATEs.
        let letter_class = [b"XX", b"P0", b"F0", b"HV"]
            .iter()
            .any(|c| c.as_slice() == &candidate[..2]);
        let shaped = (candidate[0].is_ascii_digit() || letter_class)
            && candidate
                .iter()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase());
        // Five plain digits are an SQLSTATE only in the classes pgtenant uses ("08006", "53300", …): a
        // leading 0 or a known class; numbers such as "30000" are not.
        let all_digits = candidate.iter().all(u8::is_ascii_digit);
        let class = &candidate[..2];
        let sqlstate_class = [
            b"00", b"01", b"08", b"22", b"25", b"28", b"3D", b"42", b"53", b"55", b"57", b"58",
        ]
        .iter()
        .any(|c| c.as_slice() == class);
        if shaped && (!all_digits || sqlstate_class) {
            found.push(String::from_utf8_lossy(candidate).into_owned());
        }
    }
    found
}

#[test]
fn no_sqlstate_literal_outside_the_sqlstate_module() {
    let mut offenders = Vec::new();
    for (file, text) in library_sources() {
        for literal in sqlstate_literals(&code_outside_tests(&text)) {
            offenders.push(format!("src/{}: \"{literal}\"", file.display()));
        }
    }
    assert!(
        offenders.is_empty(),
        "name these SQLSTATEs in error::sqlstate:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_literal_finder_finds_what_it_should() {
    assert_eq!(
        sqlstate_literals(
            r#"PgError::error("42P05", x); f("57P01"); g("08006"); n("30000"); s("hello")"#
        ),
        ["42P05", "57P01", "08006"]
    );
    assert_eq!(
        code_outside_tests(
            "a\npub mod sqlstate {\n    pub const X: &str = \"28P01\";\n}\nb\n#[cfg(test)]\nmod tests {\nc"
        ),
        "a\n\nb\n"
    );
}

/// The top-level modules `code` names: `crate::x…` paths and the first names of `crate::{x…, y…}` groups.
/// Comment lines are left out (a doc link names a module without depending on it).
fn modules_named(code: &str) -> BTreeSet<String> {
    let code: String = code
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut named = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        if i > 0 && code[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue; // `pgtenant::crate::` does not occur; `mycrate::` is not ours
        }
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut part_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => part_start = true,
                    c if part_start && !c.is_whitespace() => {
                        part_start = false;
                        let name = ident(&group[j..]);
                        if !name.is_empty() && name != "self" {
                            named.insert(name);
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                named.insert(name);
            }
        }
    }
    named
}

/// A cycle through `start` in `graph`, as the modules along it, if there is one.
fn cycle_through(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(at) = queue.pop_front() {
        for next in graph.get(at).into_iter().flatten() {
            if next == start {
                let mut path = vec![at.to_string()];
                let mut back = at;
                while back != start {
                    back = came_from[back];
                    path.push(back.to_string());
                }
                path.reverse();
                path.push(start.to_string());
                return Some(path);
            }
            if !came_from.contains_key(next.as_str()) && next != start {
                came_from.insert(next, at);
                queue.push_back(next);
            }
        }
    }
    None
}

#[test]
fn no_import_cycle_among_the_top_level_modules() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, text) in library_sources() {
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or_default()
            .trim_end_matches(".rs")
            .to_string();
        // The binary (main.rs and the modules it declares) and the crate root are not modules of the library.
        if matches!(top.as_str(), "lib" | "main" | "cli") {
            continue;
        }
        let named = modules_named(&code_outside_tests(&text));
        let edges = graph.entry(top.clone()).or_default();
        edges.extend(named.into_iter().filter(|m| *m != top));
    }
    assert!(graph.len() > 30, "src/ was read: {} modules", graph.len());
    let cycles: BTreeSet<Vec<String>> = graph
        .keys()
        .filter_map(|m| cycle_through(&graph, m))
        .map(|mut c| {
            // One rotation per cycle: starting at its smallest name.
            c.pop();
            let at = c
                .iter()
                .enumerate()
                .min_by_key(|(_, m)| *m)
                .map_or(0, |(i, _)| i);
            c.rotate_left(at);
            c.push(c[0].clone());
            c
        })
        .collect();
    assert!(
        cycles.is_empty(),
        "modules that import each other (move what both need below both):\n{}",
        cycles
            .iter()
            .map(|c| c.join(" -> "))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_module_finder_and_the_cycle_finder_find_what_they_should() {
    let named = modules_named(
        "use crate::a::X;\nuse crate::{b::{Y, Z}, c, self};\n/// see [`crate::d`]\nlet x = crate::e::f(mycrate::g);",
    );
    assert_eq!(
        named,
        BTreeSet::from(["a", "b", "c", "e"].map(String::from))
    );
    let graph: BTreeMap<String, BTreeSet<String>> =
        [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]
            .into_iter()
            .map(|(from, to)| (from.to_string(), BTreeSet::from([to.to_string()])))
            .collect();
    assert_eq!(
        cycle_through(&graph, "b"),
        Some(["b", "c", "a", "b"].map(String::from).to_vec())
    );
    assert_eq!(cycle_through(&graph, "d"), None);
}

#[test]
fn no_source_file_outside_tests_over_600_lines() {
    let long: Vec<String> = workspace_source_dirs()
        .into_iter()
        .flat_map(|dir| {
            sources_under(&dir)
                .into_iter()
                .filter_map(move |(file, text)| {
                    let lines = text.lines().count();
                    (lines > 600).then(|| format!("{dir}/{}: {lines} lines", file.display()))
                })
        })
        .collect();
    assert!(
        long.is_empty(),
        "split these into a folder with a file per job:\n{}",
        long.join("\n")
    );
}

#[test]
fn errors_for_clients_are_built_only_by_the_allowlist() {
    let mut offenders = Vec::new();
    for (rel, text) in library_sources() {
        if matches!(rel.to_str(), Some("error.rs" | "user_facing.rs")) {
            continue;
        }
        let code = code_outside_tests(&text);
        for (number, line) in code.lines().enumerate() {
            if line.contains("PgError::fatal(") || line.contains("PgError::error(") {
                offenders.push(format!(
                    "src/{}:{}: {}",
                    rel.display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "name the case (a Refusal variant, or the error's own UserFacing) instead:\n{}",
        offenders.join("\n")
    );
}
