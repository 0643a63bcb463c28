//! Rules of the house that a grep can check (issue 12): every SQLSTATE a client may get is named in
//! `protocol::sqlstate`, so `src/` holds no SQLSTATE literal outside that module (and outside tests).

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
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut offenders = Vec::new();
    for file in &files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name == "tests.rs" || name.ends_with("_tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read");
        for literal in sqlstate_literals(&code_outside_tests(&text)) {
            offenders.push(format!("{}: \"{literal}\"", file.display()));
        }
    }
    assert!(files.len() > 50, "src/ was read: {} files", files.len());
    assert!(
        offenders.is_empty(),
        "name these SQLSTATEs in protocol::sqlstate:\n{}",
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
