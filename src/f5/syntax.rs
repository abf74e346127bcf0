//! The shape both F5 configuration syntaxes share: statements of words,
//! each ended by a newline or carrying a `{ ... }` block of statements.
//! bigpipe (`pool p { members ... }`) and tmsh (`ltm pool /Common/p { ...
//! }`, in blocks or on one line) differ only in their words, which the
//! readers interpret.
//!
//! A hand-written lexer and a recursive-descent parser: comments (`#` to
//! the end of the line), double-quoted strings with `\` escapes, braces in
//! any layout. Template placeholders (`<node1 IP address>`, `{{ vs_addr }}`,
//! `${vs_addr}`) are read as one word and marked, but only a placeholder
//! where vipgate needs a value stops the import: an iRule's `<` or an HTML
//! page in a profile is just text. Errors carry line and column; nothing
//! here panics, and nesting is bounded so a hostile file cannot exhaust the
//! stack.
//!
//! A file whose last block is never closed is read again as if a `}` stood
//! before each later line that starts a top-level object at column 1 (a
//! hand-edited export missing one brace), and the reader says so.

use std::fmt;

/// Deepest `{` nesting accepted (real files use a handful).
const MAX_DEPTH: usize = 64;

/// Words that start a top-level object at column 1, for brace recovery.
const TOP_LEVEL: [&str; 24] = [
    "ltm",
    "net",
    "sys",
    "gtm",
    "apm",
    "asm",
    "security",
    "auth",
    "cm",
    "pem",
    "wom",
    "ilx",
    "analytics",
    "pool",
    "virtual",
    "monitor",
    "node",
    "profile",
    "snatpool",
    "rule",
    "vlan",
    "self",
    "route",
    "partition",
];

/// A position in a file, 1-based; `file` counts the files of one import
/// from 0 (most imports have one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub file: u16,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One word of a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    pub at: Position,
    /// Written in double quotes (so `{` or spaces inside are text).
    pub quoted: bool,
    /// Holds a template placeholder (`<...>`, `{{ ... }}`, `${...}`).
    pub template: bool,
}

/// Words up to a newline, and the block that may follow them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub words: Vec<Word>,
    pub block: Option<Vec<Statement>>,
    pub at: Position,
}

impl Statement {
    /// The text of word `index` ("" past the end).
    pub fn word(&self, index: usize) -> &str {
        self.words.get(index).map_or("", |w| w.text.as_str())
    }

    /// The statements of the block (none without one).
    pub fn children(&self) -> &[Statement] {
        self.block.as_deref().unwrap_or(&[])
    }
}

/// Why a file could not be read as statements.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {message}")]
pub struct SyntaxError {
    pub at: Position,
    pub message: String,
}

/// A file read as statements, and the braces that had to be assumed.
#[derive(Debug)]
pub struct Parsed {
    pub statements: Vec<Statement>,
    /// `(where the missing `}` was assumed, the block it closes)`.
    pub assumed_braces: Vec<(Position, Position)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(Word),
    Open(Position),
    Close(Position),
    Newline,
}

struct Lexer {
    chars: Vec<char>,
    file: u16,
    index: usize,
    line: usize,
    column: usize,
}

impl Lexer {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.index).copied()
    }

    fn position(&self) -> Position {
        Position {
            file: self.file,
            line: self.line,
            column: self.column,
        }
    }

    fn bump(&mut self) -> Option<char> {
        let next = self.peek()?;
        self.index += 1;
        if next == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(next)
    }

    /// The length of a template placeholder starting here, if one does
    /// (at most [`MAX_PLACEHOLDER`] characters):
    /// `<words>`, `{{ name }}` or `${name}`, on one line.
    fn template_length(&self) -> Option<usize> {
        let rest = &self.chars[self.index..];
        if !matches!(rest.first(), Some('<' | '{' | '$')) {
            return None;
        }
        // A placeholder is short: looking no further than this keeps the
        // lexer linear on a long line of `<`.
        let window = &rest[..rest.len().min(MAX_PLACEHOLDER)];
        let line_end = window
            .iter()
            .position(|&c| c == '\n')
            .unwrap_or(window.len());
        let line = &window[..line_end];
        let (opening, closing, allowed): (usize, &[char], fn(char) -> bool) = match line {
            ['<', ..] => (1, &['>'], |c| {
                !matches!(c, '{' | '}' | '"' | ';' | '#' | '<')
            }),
            ['{', '{', ..] => (2, &['}', '}'], |c| {
                c.is_alphanumeric() || matches!(c, '_' | '.' | ' ' | '|' | ':' | '-')
            }),
            ['$', '{', ..] => (2, &['}'], |c| {
                c.is_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
            }),
            _ => return None,
        };
        let inner_end = (opening..line.len()).find(|&at| line[at..].starts_with(closing))?;
        let inner = &line[opening..inner_end];
        (inner.iter().all(|&c| allowed(c)) && inner.iter().any(|c| c.is_alphanumeric()))
            .then_some(inner_end + closing.len())
    }

    fn quoted(&mut self, at: Position) -> Result<Word, SyntaxError> {
        self.bump();
        let mut text = String::new();
        loop {
            match self.bump() {
                None => {
                    return Err(SyntaxError {
                        at,
                        message: "this quoted string is never closed".into(),
                    })
                }
                Some('"') => break,
                Some('\\') => match self.bump() {
                    // F5 escapes are kept as written (`\r\n` in a monitor's
                    // send string stays two characters each); only an
                    // escaped quote or backslash is unescaped.
                    Some(escaped @ ('"' | '\\')) => text.push(escaped),
                    Some(other) => {
                        text.push('\\');
                        text.push(other);
                    }
                    None => {}
                },
                Some(other) => text.push(other),
            }
        }
        Ok(Word {
            text,
            at,
            quoted: true,
            template: false,
        })
    }

    fn bare(&mut self, at: Position) -> Word {
        let mut text = String::new();
        let mut template = false;
        while let Some(c) = self.peek() {
            if let Some(length) = self.template_length() {
                template = true;
                for _ in 0..length {
                    text.extend(self.bump());
                }
                continue;
            }
            // `lex` starts a word only on a character that belongs to it,
            // so every word makes progress.
            if c.is_whitespace() || matches!(c, '{' | '}' | '"' | ';' | '#') {
                break;
            }
            text.push(c);
            self.bump();
        }
        Word {
            text,
            at,
            quoted: false,
            template,
        }
    }
}

/// The longest template placeholder recognised, in characters.
const MAX_PLACEHOLDER: usize = 200;

fn lex(text: &str, file: u16) -> Result<Vec<Token>, SyntaxError> {
    let mut lexer = Lexer {
        chars: text.chars().collect(),
        file,
        index: 0,
        line: 1,
        column: 1,
    };
    let mut tokens = Vec::new();
    while let Some(c) = lexer.peek() {
        let at = lexer.position();
        match c {
            '\n' | ';' => {
                lexer.bump();
                tokens.push(Token::Newline);
            }
            '\\' if matches!(lexer.chars.get(lexer.index + 1), Some('\n' | '\r')) => {
                // A line continuation joins the next line to this one.
                lexer.bump();
                if lexer.peek() == Some('\r') {
                    lexer.bump();
                }
                if lexer.peek() == Some('\n') {
                    lexer.bump();
                }
            }
            c if c.is_whitespace() => {
                lexer.bump();
            }
            '#' => {
                while lexer.peek().is_some_and(|c| c != '\n') {
                    lexer.bump();
                }
            }
            '{' | '$' if lexer.template_length().is_some() => {
                tokens.push(Token::Word(lexer.bare(at)));
            }
            '{' => {
                lexer.bump();
                tokens.push(Token::Open(at));
            }
            '}' => {
                lexer.bump();
                tokens.push(Token::Close(at));
            }
            '"' => tokens.push(Token::Word(lexer.quoted(at)?)),
            _ => tokens.push(Token::Word(lexer.bare(at))),
        }
    }
    Ok(tokens)
}

/// Reads a whole file into its top-level statements.
#[cfg(test)]
pub fn parse(text: &str) -> Result<Parsed, SyntaxError> {
    parse_file(text, 0)
}

/// Reads a whole file, number `file` of an import (0 for the first),
/// into its top-level statements.
pub fn parse_file(text: &str, file: u16) -> Result<Parsed, SyntaxError> {
    let tokens = lex(text, file)?;
    let error = match block(&tokens, &mut 0, 0, None) {
        Ok(statements) => {
            return Ok(Parsed {
                statements,
                assumed_braces: Vec::new(),
            })
        }
        Err(error) => error,
    };
    // Only a block left open at the end is worth a second reading.
    if !error.message.ends_with("is never closed") || !error.message.contains('{') {
        return Err(error);
    }
    let (tokens, assumed_braces) = close_before_top_level(&tokens);
    if assumed_braces.is_empty() {
        return Err(error);
    }
    match block(&tokens, &mut 0, 0, None) {
        Ok(statements) => Ok(Parsed {
            statements,
            assumed_braces,
        }),
        Err(_) => Err(error),
    }
}

/// The tokens with a `}` inserted before every column-1 top-level word
/// met inside a block, as many as that block depth needs.
fn close_before_top_level(tokens: &[Token]) -> (Vec<Token>, Vec<(Position, Position)>) {
    let mut out = Vec::with_capacity(tokens.len());
    let mut open: Vec<Position> = Vec::new();
    let mut assumed = Vec::new();
    let mut line_start = true;
    for token in tokens {
        match token {
            Token::Word(word)
                if line_start
                    && !open.is_empty()
                    && word.at.column == 1
                    && !word.quoted
                    && TOP_LEVEL.contains(&word.text.as_str()) =>
            {
                while let Some(opened) = open.pop() {
                    assumed.push((word.at, opened));
                    out.push(Token::Close(word.at));
                }
            }
            Token::Open(at) => open.push(*at),
            Token::Close(_) => {
                open.pop();
            }
            _ => {}
        }
        line_start = matches!(token, Token::Newline);
        out.push(token.clone());
    }
    (out, assumed)
}

/// Statements until the end (top level) or the `}` closing the block
/// opened at `opened`.
fn block(
    tokens: &[Token],
    position: &mut usize,
    depth: usize,
    opened: Option<Position>,
) -> Result<Vec<Statement>, SyntaxError> {
    let mut statements = Vec::new();
    let mut words: Vec<Word> = Vec::new();
    let finish = |words: &mut Vec<Word>, statements: &mut Vec<Statement>, block| {
        if let Some(first) = words.first() {
            let at = first.at;
            statements.push(Statement {
                words: std::mem::take(words),
                block,
                at,
            });
        } else if let Some(block) = block {
            // A bare `{ ... }` (as in `members { { ... } }`): keep it.
            statements.push(Statement {
                words: Vec::new(),
                at: block
                    .first()
                    .map_or_else(Position::default, |s: &Statement| s.at),
                block: Some(block),
            });
        }
    };
    while let Some(token) = tokens.get(*position) {
        *position += 1;
        match token {
            Token::Word(word) => words.push(word.clone()),
            Token::Newline => finish(&mut words, &mut statements, None),
            Token::Open(at) => {
                if depth >= MAX_DEPTH {
                    return Err(SyntaxError {
                        at: *at,
                        message: format!("blocks nest deeper than {MAX_DEPTH} levels"),
                    });
                }
                let inner = block(tokens, position, depth + 1, Some(*at))?;
                finish(&mut words, &mut statements, Some(inner));
            }
            Token::Close(at) => {
                if opened.is_none() {
                    return Err(SyntaxError {
                        at: *at,
                        message: "this `}` closes nothing".into(),
                    });
                }
                finish(&mut words, &mut statements, None);
                return Ok(statements);
            }
        }
    }
    if let Some(at) = opened {
        return Err(SyntaxError {
            at,
            message: "this `{` is never closed".into(),
        });
    }
    finish(&mut words, &mut statements, None);
    Ok(statements)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(statement: &Statement) -> Vec<&str> {
        statement.words.iter().map(|w| w.text.as_str()).collect()
    }

    fn top(text: &str) -> Vec<Statement> {
        parse(text).unwrap().statements
    }

    #[test]
    fn statements_blocks_comments_and_quotes() {
        let text = "# a comment\nltm pool /Common/p {\n  members { /Common/10.0.0.1:80 { address 10.0.0.1 } }\n  description \"two words # not a comment\"\n}\nprofiles tcp {}\n";
        let top = top(text);
        assert_eq!(top.len(), 2);
        assert_eq!(words(&top[0]), ["ltm", "pool", "/Common/p"]);
        assert_eq!(
            top[0].at,
            Position {
                line: 2,
                column: 1,
                file: 0
            }
        );
        let inner = top[0].children();
        assert_eq!(words(&inner[0]), ["members"]);
        assert_eq!(words(&inner[0].children()[0]), ["/Common/10.0.0.1:80"]);
        assert_eq!(
            words(&inner[0].children()[0].children()[0]),
            ["address", "10.0.0.1"]
        );
        assert_eq!(
            words(&inner[1]),
            ["description", "two words # not a comment"]
        );
        assert_eq!(top[1].children().len(), 0);
        assert!(top[1].block.is_some());
    }

    #[test]
    fn placeholders_of_every_template_style_are_one_marked_word() {
        let top = top("node <node1 IP address> {\n}\n  <node2 IP address>:9070\n  destination {{ vs_addr }}:80 ${vs_port}\n");
        assert_eq!(words(&top[0]), ["node", "<node1 IP address>"]);
        assert!(top[0].words[1].template);
        assert_eq!(words(&top[1]), ["<node2 IP address>:9070"]);
        assert_eq!(
            words(&top[2]),
            ["destination", "{{ vs_addr }}:80", "${vs_port}"]
        );
        assert!(top[2].words[1].template && top[2].words[2].template);
        assert!(!top[2].words[0].template);
    }

    #[test]
    fn comparisons_and_html_are_text_not_structure() {
        // An iRule's `<` and `<=`, and Tcl braces, stay as they are.
        let rule = "ltm rule r {\nwhen HTTP_REQUEST {\n  if { [HTTP::header Content-Length] < 1000 } { pool a }\n  for { set i 0 } { $i <= 5 } { incr i } { }\n}\n}\n";
        let top = top(rule);
        assert_eq!(top.len(), 1);
        let body = &top[0].children()[0];
        assert_eq!(words(body), ["when", "HTTP_REQUEST"]);
        assert!(body.children()[0].words.iter().all(|w| !w.template));
        let html = top_words("data <html><head><title></title></head></html>\n");
        assert_eq!(html, ["data", "<html><head><title></title></head></html>"]);
    }

    fn top_words(text: &str) -> Vec<String> {
        top(text)[0].words.iter().map(|w| w.text.clone()).collect()
    }

    #[test]
    fn unbalanced_braces_and_quotes_say_where() {
        let error = parse("pool p {\n  members\n").unwrap_err();
        assert_eq!(error.to_string(), "1:8: this `{` is never closed");
        let error = parse("pool p {\n}\n}\n").unwrap_err();
        assert_eq!(error.to_string(), "3:1: this `}` closes nothing");
        let error = parse("monitor m {\n send \"GET /\n").unwrap_err();
        assert_eq!(
            error.at,
            Position {
                line: 2,
                column: 7,
                file: 0
            }
        );
        let deep = "{".repeat(100) + &"}".repeat(100);
        assert!(parse(&deep).unwrap_err().message.contains("nest deeper"));
    }

    #[test]
    fn a_missing_brace_before_the_next_object_is_assumed_and_reported() {
        let text = "pool a {\n   member 10.0.0.1:80\n\npool b {\n   member 10.0.0.2:80\n}\n";
        let parsed = parse(text).unwrap();
        assert_eq!(parsed.statements.len(), 2);
        assert_eq!(words(&parsed.statements[1]), ["pool", "b"]);
        assert_eq!(
            parsed.assumed_braces,
            vec![(
                Position {
                    line: 4,
                    column: 1,
                    file: 0
                },
                Position {
                    line: 1,
                    column: 8,
                    file: 0
                }
            )]
        );
    }
}
