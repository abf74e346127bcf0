//! What `import-f5` tells the operator about a file: the details that
//! change how a converted object behaves, or leave one out, one by one with
//! their line and column; then everything vipgate has no equivalent for,
//! one line per kind with a count and the first places, so a thousand
//! statements of another module do not drown the few that matter.

use std::collections::BTreeMap;
use std::fmt;

use super::syntax::Position;

/// Places listed for a kind of dropped statement before "and N more".
const FIRST_PLACES: usize = 3;

/// One thing said about the source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub at: Position,
    pub kind: NoteKind,
    /// The message of a detail (empty for dropped statements: their group
    /// says it).
    pub message: String,
}

/// How a note is reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoteKind {
    /// A statement or setting vipgate has no equivalent for, grouped by
    /// `group` (`ltm rule`, ``virtual `vlans` ``) with the reason.
    Dropped { group: String, why: String },
    /// Something converted that behaves differently, or an object left
    /// out: listed on its own.
    Detail,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match &self.kind {
            NoteKind::Detail => &self.message,
            NoteKind::Dropped { group, why } => &format!("{group}: {why}"),
        };
        if self.at.line == 0 {
            f.write_str(text)
        } else {
            write!(f, "{}: {text}", self.at)
        }
    }
}

/// How much of the file became vipgate configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub virtuals: usize,
    pub pools: usize,
    pub members: usize,
    pub monitors: usize,
    pub nodes: usize,
    pub snat_pools: usize,
}

/// The notes on one file, ready to print.
#[derive(Debug, Clone)]
pub struct Report {
    pub source_name: String,
    /// The names of the files read, when there were several: each note's
    /// place then says its file. Empty for one file (`source_name`).
    pub files: Vec<String>,
    pub summary: Summary,
    /// Every note, in file order.
    pub notes: Vec<Note>,
}

impl Report {
    /// The details, one by one, in file order.
    pub fn details(&self) -> impl Iterator<Item = &Note> {
        self.notes.iter().filter(|n| n.kind == NoteKind::Detail)
    }

    /// The dropped statements by group: `(group, why, places)`, groups in
    /// the order they first appear.
    pub fn dropped(&self) -> Vec<(&str, &str, Vec<Position>)> {
        let mut order: Vec<&str> = Vec::new();
        let mut groups: BTreeMap<&str, (&str, Vec<Position>)> = BTreeMap::new();
        for note in &self.notes {
            if let NoteKind::Dropped { group, why } = &note.kind {
                let entry = groups.entry(group).or_insert_with(|| {
                    order.push(group);
                    (why, Vec::new())
                });
                entry.1.push(note.at);
            }
        }
        order
            .into_iter()
            .map(|group| {
                let (why, places) = groups.remove(group).unwrap_or_default();
                (group, why, places)
            })
            .collect()
    }
}

impl Report {
    /// The file a position is in.
    fn file_of(&self, at: Position) -> &str {
        self.files
            .get(usize::from(at.file))
            .map_or(self.source_name.as_str(), String::as_str)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = &self.source_name;
        let s = self.summary;
        writeln!(
            f,
            "{source}: converted {} virtual{}, {} pool{} with {} member{}, {} monitor{}, {} node{}, {} SNAT pool{}.",
            s.virtuals,
            plural(s.virtuals),
            s.pools,
            plural(s.pools),
            s.members,
            plural(s.members),
            s.monitors,
            plural(s.monitors),
            s.nodes,
            plural(s.nodes),
            s.snat_pools,
            plural(s.snat_pools),
        )?;
        let details: Vec<&Note> = self.details().collect();
        if !details.is_empty() {
            writeln!(f, "\nChanged or left out ({}; check each):", details.len())?;
            for note in details {
                // A note about the whole file has no line.
                let separator = if note.at.line == 0 { ": " } else { ":" };
                writeln!(f, "  {}{separator}{note}", self.file_of(note.at))?;
            }
        }
        let dropped = self.dropped();
        if !dropped.is_empty() {
            let total: usize = dropped.iter().map(|(_, _, places)| places.len()).sum();
            writeln!(
                f,
                "\nNot carried over ({total} statement{} of {} kind{}; vipgate has no equivalent):",
                plural(total),
                dropped.len(),
                plural(dropped.len())
            )?;
            for (group, why, places) in dropped {
                let several = self.files.len() > 1;
                let first: Vec<String> = places
                    .iter()
                    .take(FIRST_PLACES)
                    .enumerate()
                    .map(|(index, at)| {
                        // One file: its name once, before the first place.
                        if several || index == 0 {
                            format!("{}:{at}", self.file_of(*at))
                        } else {
                            at.to_string()
                        }
                    })
                    .collect();
                let more = places.len().saturating_sub(FIRST_PLACES);
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                writeln!(
                    f,
                    "  {group} ({}): {why}; at {}{more}",
                    places.len(),
                    first.join(", ")
                )?;
            }
        }
        Ok(())
    }
}

fn plural(count: usize) -> &'static str {
    if count == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize) -> Position {
        Position {
            line,
            column: 1,
            file: 0,
        }
    }

    #[test]
    fn details_one_by_one_and_dropped_kinds_counted() {
        let dropped = |line, group: &str| Note {
            at: at(line),
            kind: NoteKind::Dropped {
                group: group.into(),
                why: "no equivalent".into(),
            },
            message: String::new(),
        };
        let mut notes: Vec<Note> = (1..=5).map(|line| dropped(line, "ltm rule")).collect();
        notes.push(dropped(9, "sys"));
        notes.push(Note {
            at: at(7),
            kind: NoteKind::Detail,
            message: "pool p has no members; left out".into(),
        });
        let report = Report {
            source_name: "bigip.conf".into(),
            files: Vec::new(),
            summary: Summary {
                virtuals: 1,
                pools: 1,
                members: 2,
                ..Summary::default()
            },
            notes,
        };
        let text = report.to_string();
        assert!(
            text.starts_with("bigip.conf: converted 1 virtual, 1 pool with 2 members, 0 monitors"),
            "{text}"
        );
        assert!(
            text.contains("\n  bigip.conf:7:1: pool p has no members; left out\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "  ltm rule (5): no equivalent; at bigip.conf:1:1, 2:1, 3:1 and 2 more\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  sys (1): no equivalent; at bigip.conf:9:1\n"),
            "{text}"
        );
        assert!(
            text.contains("Not carried over (6 statements of 2 kinds"),
            "{text}"
        );
    }
}
