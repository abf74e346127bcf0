//! `vipgate import-f5`: a BIG-IP configuration (bigpipe of v4 to v10, or
//! tmsh `bigip.conf` of v11 and later, in blocks or one line per object)
//! turned into a vipgate configuration, with a report of what changed and
//! what was not carried over.
//!
//! - `syntax`: lexer and parser into statements, with line and column;
//! - `words`: names, addresses, service-name ports, template placeholders,
//!   and statements split into attributes;
//! - `model` (with `monitors`, `pools`, `virtuals`, `profiles`): the F5
//!   objects as written;
//! - `convert`: what vipgate will do, leaving out with a note whatever it
//!   cannot carry over; `names`: the vipgate name of each object;
//! - `emit`: the TOML; `report`: the notes, grouped.
//!
//! The result always passes `vipgate check` but for the files it names
//! (certificates, the cookie secret) that the operator still has to export:
//! `import` validates it before returning it.

mod convert;
mod emit;
mod model;
mod monitors;
mod names;
mod pools;
mod profiles;
mod report;
mod syntax;
mod virtuals;
mod words;

use std::fmt;

pub use emit::SECRET_FILE;
pub use report::{Note, NoteKind, Report, Summary};
pub use syntax::{Position, SyntaxError};

/// A converted file.
#[derive(Debug)]
pub struct Imported {
    /// The vipgate configuration.
    pub toml: String,
    /// What was converted, changed and left out.
    pub report: Report,
}

/// Why a file gave no configuration.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{source_name}:{error}")]
    Syntax {
        source_name: String,
        error: SyntaxError,
    },
    /// Template placeholders (`<node1 IP address>`, `__VS_ADDR__`) where
    /// vipgate needs values.
    #[error("{}", Placeholders { source_name, notes })]
    Placeholders {
        source_name: String,
        notes: Vec<Note>,
    },
    /// No virtual server could be converted; the report says why.
    #[error("no virtual server of {} could be converted, so there is nothing to run:\n{report}", report.source_name)]
    NothingUsable { report: Report },
    /// The conversion produced a configuration vipgate refuses: a bug in
    /// the importer.
    #[error("the converted configuration is not valid, which is a bug in vipgate import-f5 (please report it with the file): {error}")]
    Invalid { error: crate::config::ConfigError },
}

struct Placeholders<'a> {
    source_name: &'a str,
    notes: &'a [Note],
}

impl fmt::Display for Placeholders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is a template: {} placeholder{} to fill in before it can be converted:",
            self.source_name,
            self.notes.len(),
            if self.notes.len() == 1 { "" } else { "s" }
        )?;
        for note in self.notes {
            write!(f, "\n  {}:{note}", self.source_name)?;
        }
        Ok(())
    }
}

/// A file's bytes as text: UTF-8, or else Latin-1 (BIG-IP exports keep
/// descriptions in whatever the operator typed), which every byte is.
pub fn decode(bytes: &[u8]) -> (String, bool) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_string(), false),
        Err(_) => (bytes.iter().map(|&b| char::from(b)).collect(), true),
    }
}

/// Converts the F5 configuration in `bytes` (named `source_name` in
/// messages and in the output's header).
pub fn import_bytes(bytes: &[u8], source_name: &str) -> Result<Imported, ImportError> {
    let (text, latin1) = decode(bytes);
    let mut imported = import(&text, source_name);
    if latin1 {
        let note = Note {
            at: Position::default(),
            kind: NoteKind::Detail,
            message: "the file is not UTF-8; it was read as Latin-1".into(),
        };
        match &mut imported {
            Ok(Imported { report, .. }) | Err(ImportError::NothingUsable { report }) => {
                report.notes.insert(0, note)
            }
            Err(_) => {}
        }
    }
    imported
}

/// Converts the F5 configuration `text` (named `source_name` in messages
/// and in the output's header).
pub fn import(text: &str, source_name: &str) -> Result<Imported, ImportError> {
    let parsed = syntax::parse(text).map_err(|error| ImportError::Syntax {
        source_name: source_name.to_string(),
        error,
    })?;
    let mut model = model::Model::read(&parsed.statements);
    for (at, opened) in &parsed.assumed_braces {
        model.detail(
            *at,
            format!("the block opened at {opened} is never closed; it is read as ending before this line (a `}}` is missing)"),
        );
    }
    if !model.templates.is_empty() {
        let mut notes = std::mem::take(&mut model.templates);
        notes.sort_by_key(|note| note.at);
        notes.dedup();
        return Err(ImportError::Placeholders {
            source_name: source_name.to_string(),
            notes,
        });
    }
    let output = convert::Converter::run(&mut model);
    let (toml, summary) = emit::emit(&output, source_name);
    let mut notes = std::mem::take(&mut model.notes);
    notes.sort_by_key(|note| note.at);
    let report = Report {
        source_name: source_name.to_string(),
        summary,
        notes,
    };
    if summary.virtuals == 0 {
        return Err(ImportError::NothingUsable { report });
    }
    crate::config::parse(&toml, source_name).map_err(|error| ImportError::Invalid { error })?;
    Ok(Imported { toml, report })
}
