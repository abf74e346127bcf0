//! `vipgate import-f5`: a BIG-IP configuration (bigpipe style, as in the
//! deployment guide's sample, or tmsh `ltm ...` style of v11+) turned into
//! a vipgate configuration, with a note for every statement that could not
//! be carried over.
//!
//! - `syntax`: lexer and recursive-descent parser into statements;
//! - `convert`: statements -> a model of monitors, nodes, pools, virtuals,
//!   SNAT pools and profiles, noting what vipgate lacks;
//! - `virtuals`: pools, members, virtuals and SNAT pools in particular;
//! - `emit`: the model as vipgate TOML that passes `vipgate check`.

mod convert;
mod emit;
mod syntax;
mod virtuals;

use std::fmt;

pub use convert::Note;
pub use syntax::{Position, SyntaxError};

/// A converted file.
#[derive(Debug)]
pub struct Imported {
    /// The vipgate configuration.
    pub toml: String,
    /// What was not carried over, and why, in file order.
    pub notes: Vec<Note>,
}

/// Why a file could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{source_name}:{error}")]
    Syntax {
        source_name: String,
        error: SyntaxError,
    },
    /// Template placeholders (`<node1 IP address>`) where values belong.
    #[error("{}", Placeholders { source_name, notes })]
    Placeholders {
        source_name: String,
        notes: Vec<Note>,
    },
}

struct Placeholders<'a> {
    source_name: &'a str,
    notes: &'a [Note],
}

impl fmt::Display for Placeholders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} has {} placeholder{} to fill in before it can be converted:",
            self.source_name,
            self.notes.len(),
            if self.notes.len() == 1 { "" } else { "s" }
        )?;
        for note in self.notes {
            write!(f, "\n  {}:{}: {}", self.source_name, note.at, note.message)?;
        }
        Ok(())
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.at.line == 0 {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.at, self.message)
        }
    }
}

/// Converts the F5 configuration `text` (named `source_name` in messages
/// and in the output's header).
pub fn import(text: &str, source_name: &str) -> Result<Imported, ImportError> {
    let statements = syntax::parse(text).map_err(|error| ImportError::Syntax {
        source_name: source_name.to_string(),
        error,
    })?;
    let model = convert::Model::read(&statements);
    if !model.errors.is_empty() {
        return Err(ImportError::Placeholders {
            source_name: source_name.to_string(),
            notes: model.errors,
        });
    }
    let (toml, mut notes) = emit::emit(&model, source_name);
    notes.extend(model.notes.iter().cloned());
    notes.sort_by_key(|note| note.at);
    Ok(Imported { toml, notes })
}
