//! The shape both F5 configuration syntaxes share: statements of words,
//! each ended by a newline or carrying a `{ ... }` block of statements.
//! bigpipe (`pool p { members ... }`) and tmsh (`ltm pool /Common/p {
//! ... }`) differ only in their words, which `convert` reads.
//!
//! A hand-written lexer and a recursive-descent parser: comments (`#` to
//! the end of the line), double-quoted strings with `\` escapes, braces in
//! any layout, and deployment-guide placeholders (`<node1 IP address>`) as
//! one word. Errors carry line and column; nothing here panics, and nesting
//! is bounded so a hostile file cannot exhaust the stack.

use std::fmt;

/// Deepest `{` nesting accepted (real files use a handful).
const MAX_DEPTH: usize = 64;

/// A position in the file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
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
    /// A `<...>` placeholder left from a template.
    pub placeholder: bool,
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

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(Word),
    Open(Position),
    Close(Position),
    Newline,
}

fn lex(text: &str) -> Result<Vec<Token>, SyntaxError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let (mut line, mut column) = (1usize, 1usize);
    // Advances over one character, keeping the position.
    macro_rules! bump {
        () => {{
            let next = chars.next();
            if next == Some('\n') {
                line += 1;
                column = 1;
            } else if next.is_some() {
                column += 1;
            }
            next
        }};
    }
    while let Some(&c) = chars.peek() {
        let at = Position { line, column };
        match c {
            '\n' => {
                bump!();
                tokens.push(Token::Newline);
            }
            ';' => {
                bump!();
                tokens.push(Token::Newline);
            }
            c if c.is_whitespace() => {
                bump!();
            }
            '\\' => {
                // A line continuation joins the next line to this one.
                bump!();
                if chars.peek() == Some(&'\n') {
                    bump!();
                } else if chars.peek() == Some(&'\r') {
                    bump!();
                    if chars.peek() == Some(&'\n') {
                        bump!();
                    }
                }
            }
            '#' => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    bump!();
                }
            }
            '{' => {
                bump!();
                tokens.push(Token::Open(at));
            }
            '}' => {
                bump!();
                tokens.push(Token::Close(at));
            }
            '"' => {
                bump!();
                let mut text = String::new();
                loop {
                    match bump!() {
                        None => {
                            return Err(SyntaxError {
                                at,
                                message: "this quoted string is never closed".into(),
                            })
                        }
                        Some('"') => break,
                        Some('\\') => match bump!() {
                            // F5 escapes are kept as written (`\r\n` in a
                            // monitor's send string stays two characters
                            // each); only an escaped quote or backslash is
                            // unescaped.
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
                tokens.push(Token::Word(Word {
                    text,
                    at,
                    quoted: true,
                    placeholder: false,
                }));
            }
            _ => {
                let mut text = String::new();
                let mut placeholder = false;
                while let Some(&c) = chars.peek() {
                    if c == '<' {
                        // A template placeholder runs to its `>` on the
                        // same line, spaces included.
                        placeholder = true;
                        while let Some(&c) = chars.peek() {
                            if c == '\n' {
                                break;
                            }
                            text.push(c);
                            bump!();
                            if c == '>' {
                                break;
                            }
                        }
                        continue;
                    }
                    if c.is_whitespace() || matches!(c, '{' | '}' | '"' | ';' | '#') {
                        break;
                    }
                    text.push(c);
                    bump!();
                }
                tokens.push(Token::Word(Word {
                    text,
                    at,
                    quoted: false,
                    placeholder,
                }));
            }
        }
    }
    Ok(tokens)
}

/// Reads a whole file into its top-level statements.
pub fn parse(text: &str) -> Result<Vec<Statement>, SyntaxError> {
    let tokens = lex(text)?;
    let mut position = 0;
    let statements = block(&tokens, &mut position, 0, None)?;
    Ok(statements)
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
                    .map_or(Position { line: 0, column: 0 }, |s: &Statement| s.at),
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

    #[test]
    fn statements_blocks_comments_and_quotes() {
        let text = "# a comment\nltm pool /Common/p {\n  members { /Common/10.0.0.1:80 { address 10.0.0.1 } }\n  description \"two words # not a comment\"\n}\nprofiles tcp {}\n";
        let top = parse(text).unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(words(&top[0]), ["ltm", "pool", "/Common/p"]);
        assert_eq!(top[0].at, Position { line: 2, column: 1 });
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
    fn placeholders_are_one_word() {
        let top = parse("node <node1 IP address> {\n}\n  <node2 IP address>:9070\n").unwrap();
        assert_eq!(words(&top[0]), ["node", "<node1 IP address>"]);
        assert!(top[0].words[1].placeholder);
        assert_eq!(words(&top[1]), ["<node2 IP address>:9070"]);
    }

    #[test]
    fn unbalanced_braces_and_quotes_say_where() {
        let error = parse("pool p {\n  members\n").unwrap_err();
        assert_eq!(error.to_string(), "1:8: this `{` is never closed");
        let error = parse("pool p {\n}\n}\n").unwrap_err();
        assert_eq!(error.to_string(), "3:1: this `}` closes nothing");
        let error = parse("monitor m {\n send \"GET /\n").unwrap_err();
        assert_eq!(error.at, Position { line: 2, column: 7 });
        let deep = "{".repeat(100) + &"}".repeat(100);
        assert!(parse(&deep).unwrap_err().message.contains("nest deeper"));
    }
}
