//! Splits a migration file into its statements, so each runs on its own: an error then names the line it
//! happened on (PostgreSQL reports positions only for parse errors), and a no-transaction file may hold
//! several `CREATE INDEX CONCURRENTLY` (a multi-statement query runs in an implicit transaction).
//!
//! Knows what can hide a `;`: quoted strings ('…', E'…' with backslash escapes), quoted identifiers,
//! dollar-quoted bodies ($$…$$, $tag$…$tag$), line and (nested) block comments. `BEGIN ATOMIC … END`
//! bodies of SQL-standard functions are kept whole too.

/// One statement and the 1-based line of the file it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub line: usize,
    pub sql: String,
}

/// The statements of `sql`, without empty ones (only whitespace or comments).
pub fn split(sql: &str) -> Vec<Statement> {
    let chars: Vec<char> = sql.chars().collect();
    let mut statements = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut line = 1;
    let mut start_line = 1;
    let mut atomic_depth = 0usize;
    let mut word = String::new();
    let mut previous_word = String::new();
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_alphanumeric() || c == '_' {
            word.push(c.to_ascii_uppercase());
        } else if !word.is_empty() {
            // BEGIN ATOMIC opens a body whose statements end with `;` until the matching END.
            if previous_word == "BEGIN" && word == "ATOMIC" {
                atomic_depth += 1;
            } else if word == "END" && atomic_depth > 0 {
                atomic_depth -= 1;
            }
            previous_word = std::mem::take(&mut word);
        }
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            '-' if next == Some('-') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if next == Some('*') => {
                let mut depth = 0;
                while i < chars.len() {
                    if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        if chars[i] == '\n' {
                            line += 1;
                        }
                        i += 1;
                    }
                }
            }
            '\'' | '"' => {
                let escapes = c == '\''
                    && i > 0
                    && matches!(chars[i - 1], 'E' | 'e')
                    && !is_word_char(chars.get(i.wrapping_sub(2)));
                i += 1;
                while i < chars.len() {
                    if escapes && chars[i] == '\\' {
                        i += 2;
                        continue;
                    }
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    if chars[i] == c {
                        if chars.get(i + 1) == Some(&c) {
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    i += 1;
                }
            }
            '$' if !is_word_char(if i > 0 { chars.get(i - 1) } else { None }) => {
                // $tag$ … $tag$ (tag: letters, digits, underscores, not starting with a digit).
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                let valid_tag = j < chars.len()
                    && chars[j] == '$'
                    && !chars.get(i + 1).is_some_and(|c| c.is_ascii_digit());
                if !valid_tag {
                    i += 1;
                    continue;
                }
                let tag: Vec<char> = chars[i..=j].to_vec();
                i = j + 1;
                while i < chars.len() {
                    if chars[i] == '$' && chars[i..].starts_with(&tag) {
                        i += tag.len();
                        break;
                    }
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
            ';' if atomic_depth == 0 => {
                push(&mut statements, &chars[start..=i], start_line);
                i += 1;
                start = i;
                start_line = line;
            }
            _ => i += 1,
        }
    }
    if start < chars.len() {
        push(&mut statements, &chars[start..], start_line);
    }
    statements
}

/// Byte offset just past the (possibly nested) block comment `text` starts with.
fn block_comment_end(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0;
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] == b'/' && bytes[i + 1] == b'*' {
            depth += 1;
            i += 2;
        } else if bytes[i] == b'*' && bytes[i + 1] == b'/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return Some(i);
            }
        } else {
            i += 1;
        }
    }
    None
}

fn is_word_char(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// Adds a statement unless it holds only whitespace and comments; its line is that of its first token.
fn push(statements: &mut Vec<Statement>, chars: &[char], mut line: usize) {
    let text: String = chars.iter().collect();
    // Skip leading whitespace and comments to find where the statement really starts.
    let mut rest = text.as_str();
    loop {
        let trimmed = rest.trim_start();
        line += rest[..rest.len() - trimmed.len()].matches('\n').count();
        rest = trimmed;
        if let Some(after) = rest.strip_prefix("--") {
            match after.find('\n') {
                Some(end) => {
                    rest = &after[end..];
                }
                None => return,
            }
        } else if rest.starts_with("/*") {
            match block_comment_end(rest) {
                Some(end) => {
                    line += rest[..end].matches('\n').count();
                    rest = &rest[end..];
                }
                None => return,
            }
        } else {
            break;
        }
    }
    let body = rest.trim_end();
    if body.is_empty() || body == ";" {
        return;
    }
    statements.push(Statement {
        line,
        sql: body.to_string(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqls(text: &str) -> Vec<(usize, String)> {
        split(text).into_iter().map(|s| (s.line, s.sql)).collect()
    }

    #[test]
    fn splits_on_semicolons_outside_quotes_and_comments() {
        let text = "-- header\nCREATE TABLE a (x text DEFAULT ';');\n\nINSERT INTO a VALUES ('it''s; fine'), (E'\\';x');\n/* a; comment /* nested; */ */\nSELECT \"we;ird\" FROM a;";
        assert_eq!(
            sqls(text),
            vec![
                (2, "CREATE TABLE a (x text DEFAULT ';');".to_string()),
                (
                    4,
                    "INSERT INTO a VALUES ('it''s; fine'), (E'\\';x');".to_string()
                ),
                (6, "SELECT \"we;ird\" FROM a;".to_string()),
            ]
        );
    }

    #[test]
    fn dollar_quoted_bodies_stay_whole() {
        let text = "CREATE FUNCTION f() RETURNS int AS $body$ BEGIN RETURN 1; END $body$ LANGUAGE plpgsql;\nDO $$ BEGIN PERFORM 1; END $$;\nSELECT $1::int";
        let got = sqls(text);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].1.ends_with("LANGUAGE plpgsql;"));
        assert_eq!(got[1], (2, "DO $$ BEGIN PERFORM 1; END $$;".to_string()));
        assert_eq!(got[2], (3, "SELECT $1::int".to_string()));
    }

    #[test]
    fn begin_atomic_bodies_stay_whole() {
        let text = "CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;\nSELECT 3;";
        let got = sqls(text);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[1], (2, "SELECT 3;".to_string()));
    }

    #[test]
    fn comment_only_and_empty_parts_are_dropped() {
        assert!(split("  -- nothing\n ; ;\n/* none */").is_empty());
        assert_eq!(sqls("\n\n  SELECT 1").len(), 1);
        assert_eq!(sqls("\n\n  SELECT 1")[0].0, 3);
    }
}
