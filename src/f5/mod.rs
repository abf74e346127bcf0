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
mod redirects;
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
    #[error("{}", Placeholders { source_name, files, notes })]
    Placeholders {
        source_name: String,
        /// The files' names when there were several.
        files: Vec<String>,
        notes: Vec<Note>,
    },
    #[error("{count} files at once is more than import-f5 reads (4,096); import the partitions in groups")]
    TooManyFiles { count: usize },
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
    files: &'a [String],
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
            let file = self
                .files
                .get(usize::from(note.at.file))
                .map_or(self.source_name, String::as_str);
            write!(f, "\n  {file}:{note}")?;
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
    import_files(&[(source_name, bytes)])
}

/// Converts the F5 configuration `text` (named `source_name` in messages
/// and in the output's header).
pub fn import(text: &str, source_name: &str) -> Result<Imported, ImportError> {
    import_files(&[(source_name, text.as_bytes())])
}

/// Most files one import reads.
const MAX_FILES: usize = 4096;

/// Converts several files as one BIG-IP, as it keeps them under /config:
/// `bigip.conf` and `bigip_base.conf` of /Common and each partition's
/// `partitions/NAME/bigip.conf`, so that a virtual in one file finds the
/// profiles, monitors and SNAT pools of /Common in another. Each is
/// `(name in messages, bytes)`; notes say which file they are about.
pub fn import_files(files: &[(&str, &[u8])]) -> Result<Imported, ImportError> {
    let names: Vec<String> = files.iter().map(|(name, _)| name.to_string()).collect();
    let source_name = names.join(" + ");
    if files.len() > MAX_FILES {
        return Err(ImportError::TooManyFiles { count: files.len() });
    }
    let mut statements = Vec::new();
    let mut assumed_braces = Vec::new();
    let mut latin1 = Vec::new();
    for (index, (name, bytes)) in files.iter().enumerate() {
        let file = index as u16;
        let (text, was_latin1) = decode(bytes);
        let parsed = syntax::parse_file(&text, file).map_err(|error| ImportError::Syntax {
            source_name: name.to_string(),
            error,
        })?;
        statements.extend(parsed.statements);
        assumed_braces.extend(parsed.assumed_braces);
        if was_latin1 {
            latin1.push(file);
        }
    }
    let mut model = model::Model::read(&statements);
    for file in latin1 {
        model.detail(
            Position {
                file,
                line: 0,
                column: 0,
            },
            "the file is not UTF-8; it was read as Latin-1",
        );
    }
    for (at, opened) in &assumed_braces {
        model.detail(
            *at,
            format!("the block opened at {opened} is never closed; it is read as ending before this line (a `}}` is missing)"),
        );
    }
    let files_named = if files.len() > 1 { names } else { Vec::new() };
    if !model.templates.is_empty() {
        let mut notes = std::mem::take(&mut model.templates);
        notes.sort_by_key(|note| note.at);
        notes.dedup();
        return Err(ImportError::Placeholders {
            source_name: source_name.clone(),
            files: files_named,
            notes,
        });
    }
    let output = convert::Converter::run(&mut model);
    let (toml, summary) = emit::emit(&output, &source_name);
    let mut notes = std::mem::take(&mut model.notes);
    notes.sort_by_key(|note| note.at);
    let report = Report {
        source_name: source_name.clone(),
        files: files_named,
        summary,
        notes,
    };
    if summary.virtuals == 0 {
        return Err(ImportError::NothingUsable { report });
    }
    crate::config::parse(&toml, &source_name).map_err(|error| ImportError::Invalid { error })?;
    Ok(Imported { toml, report })
}
