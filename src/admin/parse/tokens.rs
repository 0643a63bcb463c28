//! The tokens of an admin command's text (bare words, quoted names, `;`; `--` comments skipped), and the
//! cursor a statement's parser walks them with.

use super::SyntaxError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Token {
    Word(String),
    Quoted(String),
    Semicolon,
}

pub(super) fn tokenize(text: &str) -> Result<Vec<Token>, SyntaxError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == ';' {
            chars.next();
            tokens.push(Token::Semicolon);
        } else if c == '-' && text_starts_comment(&mut chars.clone()) {
            // `-- comment` to the end of the line.
            for c in chars.by_ref() {
                if c == '\n' {
                    break;
                }
            }
        } else if c == '\'' || c == '"' {
            let quote = c;
            chars.next();
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some(q) if q == quote => {
                        if chars.peek() == Some(&quote) {
                            chars.next();
                            value.push(quote);
                        } else {
                            break;
                        }
                    }
                    Some(other) => value.push(other),
                    None => {
                        return Err(SyntaxError {
                            message: format!("unterminated quoted string starting with {quote}"),
                            hint: format!("close it with {quote}"),
                        })
                    }
                }
            }
            tokens.push(Token::Quoted(value));
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == ';' || c == '\'' || c == '"' {
                    break;
                }
                word.push(c);
                chars.next();
            }
            tokens.push(Token::Word(word));
        }
    }
    Ok(tokens)
}

fn text_starts_comment(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> bool {
    chars.next() == Some('-') && chars.next() == Some('-')
}

pub(super) struct Cursor<'a> {
    pub(super) tokens: &'a [Token],
    pub(super) pos: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn keyword(&mut self, word: &str) -> bool {
        match self.tokens.get(self.pos) {
            Some(Token::Word(w)) if w.eq_ignore_ascii_case(word) => {
                self.pos += 1;
                true
            }
            _ => false,
        }
    }
    pub(super) fn keywords(&mut self, words: &[&str]) -> bool {
        let start = self.pos;
        if words.iter().all(|w| self.keyword(w)) {
            true
        } else {
            self.pos = start;
            false
        }
    }
    /// A name: a bare word or a quoted string.
    pub(super) fn name(&mut self) -> Option<String> {
        match self.tokens.get(self.pos) {
            Some(Token::Word(w)) | Some(Token::Quoted(w)) => {
                self.pos += 1;
                Some(w.clone())
            }
            _ => None,
        }
    }
    pub(super) fn done(&self) -> bool {
        self.pos >= self.tokens.len()
    }
    /// The remaining tokens' text, words and quoted strings joined by spaces; consumes them.
    pub(super) fn rest_text(&mut self) -> String {
        let text: Vec<&str> = self.tokens[self.pos.min(self.tokens.len())..]
            .iter()
            .map(|t| match t {
                Token::Word(w) | Token::Quoted(w) => w.as_str(),
                Token::Semicolon => ";",
            })
            .collect();
        self.pos = self.tokens.len();
        text.join(" ")
    }
}
