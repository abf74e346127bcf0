//! The operator's decisions about members (enable, disable, force offline,
//! through the admin endpoint or the status page), kept so that they
//! outlive the process: in memory always, and in `settings.state_file`
//! when one is set.
//!
//! Only what an operator changed is recorded, with the state the
//! configuration gave the member when the change was made. At every load
//! (start, reload) a record holds while the configuration still says what
//! it said then; an edited `state` in the configuration is the newer
//! decision and wins, and the record goes. Records of members no longer
//! in the configuration go too. So a member's `state` in the file is its
//! state until an operator changes it, and the last decision wins. A
//! change back to the configuration's state is kept as a record too: it
//! is what tells a peer that the member was enabled again.
//!
//! The nodes of a pair share their decisions (`[admin] peers`, in
//! `admin::peers`): [`Decisions::merge`] takes another node's records,
//! the later decision about each member winning (ties go to the more
//! restrictive state, so every node settles on the same one).
//!
//! The file is written whole and atomically (a temporary file beside it,
//! fsync, rename, fsync of the folder): a crash leaves the old file or the
//! new one, never half of one. A file that cannot be read or parsed is left
//! as it is: vipgate says so, starts from the configuration, keeps later
//! decisions in memory only, and does not write over it until it can be
//! read again (at a reload).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::AdminState;

/// The file format's version; a file of another version is refused.
const VERSION: u32 = 1;

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot read the state file {path}: {error} (hint: check its permissions; vipgate leaves it as it is and starts from the configuration)")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the state file {path} is not one vipgate wrote: {error} (hint: move it aside to start from the configuration, or repair it; vipgate does not write over it)")]
    Parse { path: PathBuf, error: String },
    #[error("cannot write the state file {path}: {error} (hint: the folder must exist and be writable by vipgate; the package uses /var/lib/vipgate)")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// One operator decision about a member address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// What the operator set.
    pub state: AdminState,
    /// What the configuration said when the operator set it.
    pub configured: AdminState,
    /// When the change was made, in milliseconds since the Unix epoch (a
    /// decision made here is always later than the one it replaces).
    pub changed_at_ms: u64,
}

/// The decisions as the file holds them, and as peers exchange them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionSet {
    /// The format's version (1).
    pub version: u32,
    pub members: BTreeMap<SocketAddr, Decision>,
}

impl DecisionSet {
    /// Refuses a set of another format version than this vipgate's.
    fn check_version(&self) -> Result<(), String> {
        if self.version == VERSION {
            return Ok(());
        }
        Err(format!(
            "version {} (this vipgate reads version {VERSION})",
            self.version
        ))
    }
}

/// The decisions in force, and where they are kept.
#[derive(Debug, Default)]
pub struct Decisions {
    members: BTreeMap<SocketAddr, Decision>,
    file: Option<PathBuf>,
    /// Why the file is not being written, when it is not: it could not be
    /// read (so writing would lose what it holds), or a write failed.
    problem: Option<String>,
    /// The file could not be read: never write over it.
    unreadable: bool,
}

impl Decisions {
    /// The decisions kept in `file` (none without one). A file that does
    /// not exist yet holds none; one that cannot be read or parsed is
    /// logged, left alone, and holds none.
    pub fn open(file: Option<&Path>) -> Decisions {
        let mut decisions = Decisions::default();
        decisions.use_file(file);
        decisions
    }

    /// Reads `file` again (at a reload; it may be another path now). What
    /// it holds is merged with the decisions in memory, the later decision
    /// about each member winning (a decision a failed write kept only in
    /// memory is not lost), and the file brought up to date; if it cannot
    /// be read, those in memory stay and the file is left alone.
    pub fn use_file(&mut self, file: Option<&Path>) {
        self.file = file.map(Path::to_path_buf);
        self.problem = None;
        self.unreadable = false;
        let Some(path) = file else {
            return;
        };
        match read(path) {
            Ok(members) => {
                self.take_later(&members);
                // Memory held a later decision than the file (a write
                // that failed): the file catches up.
                if self.members != members {
                    let _ = self.save();
                }
            }
            Err(error) => {
                tracing::error!(%error, "member decisions are not restored");
                self.problem = Some(error.to_string());
                self.unreadable = true;
            }
        }
    }

    /// The admin state of each member of the configuration, given the state
    /// the configuration gives it (`configured`): the operator's decision
    /// while the configuration still says what it said then, else the
    /// configuration's. Drops the records that no longer hold.
    pub fn states(
        &mut self,
        configured: &BTreeMap<SocketAddr, AdminState>,
    ) -> Vec<(SocketAddr, AdminState)> {
        let before = self.members.len();
        self.members
            .retain(|address, decision| configured.get(address) == Some(&decision.configured));
        if self.members.len() != before {
            let _ = self.save();
        }
        configured
            .iter()
            .map(|(address, state)| {
                let decided = self.members.get(address).map(|d| d.state);
                (*address, decided.unwrap_or(*state))
            })
            .collect()
    }

    /// Records that an operator set `address` to `state` (the
    /// configuration says `configured`) at `now_ms` (milliseconds since
    /// the Unix epoch), and saves it. Stamped later than the decision it
    /// replaces, even one a peer made a moment ago by a clock slightly
    /// ahead: the operator's latest word here wins.
    pub fn decide(
        &mut self,
        address: SocketAddr,
        state: AdminState,
        configured: AdminState,
        now_ms: u64,
    ) -> Result<(), StateFileError> {
        let after = self
            .members
            .get(&address)
            .map_or(0, |previous| previous.changed_at_ms + 1);
        self.members.insert(
            address,
            Decision {
                state,
                configured,
                changed_at_ms: now_ms.max(after),
            },
        );
        self.save()
    }

    /// Takes another node's decisions: for each member, the later one wins
    /// (on the same millisecond, the more restrictive state). Returns the
    /// members whose decision changed here, and saves them.
    pub fn merge(&mut self, incoming: &BTreeMap<SocketAddr, Decision>) -> Vec<SocketAddr> {
        let changed = self.take_later(incoming);
        if !changed.is_empty() {
            let _ = self.save();
        }
        changed
    }

    /// The decisions of `incoming` that are later than ours, taken in
    /// memory; the members they change.
    fn take_later(&mut self, incoming: &BTreeMap<SocketAddr, Decision>) -> Vec<SocketAddr> {
        let mut changed = Vec::new();
        for (address, theirs) in incoming {
            let later = self.members.get(address).is_none_or(|ours| {
                (theirs.changed_at_ms, theirs.state as u8) > (ours.changed_at_ms, ours.state as u8)
            });
            if later {
                self.members.insert(*address, *theirs);
                changed.push(*address);
            }
        }
        changed
    }

    /// The decisions in force.
    pub fn members(&self) -> &BTreeMap<SocketAddr, Decision> {
        &self.members
    }

    /// The decisions in force, to send to a peer.
    pub fn to_share(&self) -> DecisionSet {
        DecisionSet {
            version: VERSION,
            members: self.members.clone(),
        }
    }

    /// [`merge`](Self::merge) of a peer's set; a set of another version
    /// is refused.
    pub fn merge_set(&mut self, set: &DecisionSet) -> Result<Vec<SocketAddr>, String> {
        set.check_version()?;
        Ok(self.merge(&set.members))
    }

    /// The state file, if one is set.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Why decisions are not being saved, if they are not.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// Writes the decisions to the file (when there is one and it may be
    /// written over).
    fn save(&mut self) -> Result<(), StateFileError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        if self.unreadable {
            return Err(StateFileError::Write {
                path: path.clone(),
                error: std::io::Error::other(
                    "it could not be read at start, so it is left as it was",
                ),
            });
        }
        let result = write(path, &self.members);
        self.problem = result.as_ref().err().map(ToString::to_string);
        result
    }
}

/// Checks, for `vipgate check`, that the state file can be read when it
/// exists. A folder that does not exist (yet: systemd's `StateDirectory=`
/// makes it as the service starts) is a warning, returned.
pub fn check(path: &Path) -> Result<Option<String>, StateFileError> {
    read(path)?;
    let folder = folder_of(path);
    Ok((!folder.is_dir()).then(|| {
        format!(
            "settings.state_file: the folder {} does not exist; until it does, member decisions are not saved",
            folder.display()
        )
    }))
}

fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// The decisions in `path`; none when it does not exist.
fn read(path: &Path) -> Result<BTreeMap<SocketAddr, Decision>, StateFileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(error) => {
            return Err(StateFileError::Read {
                path: path.to_path_buf(),
                error,
            })
        }
    };
    let parse_error = |error: String| StateFileError::Parse {
        path: path.to_path_buf(),
        error,
    };
    let content: DecisionSet =
        serde_json::from_str(&text).map_err(|error| parse_error(error.to_string()))?;
    content.check_version().map_err(parse_error)?;
    Ok(content.members)
}

/// Writes `members` to `path` atomically: a temporary file beside it,
/// fsync, rename over it, fsync of the folder.
fn write(path: &Path, members: &BTreeMap<SocketAddr, Decision>) -> Result<(), StateFileError> {
    let failed = |error| StateFileError::Write {
        path: path.to_path_buf(),
        error,
    };
    let content = DecisionSet {
        version: VERSION,
        members: members.clone(),
    };
    let mut text = serde_json::to_string_pretty(&content)
        .map_err(|error| failed(std::io::Error::other(error)))?;
    text.push('\n');
    let folder = folder_of(path);
    let name = path
        .file_name()
        .map_or_else(|| "state".into(), |n| n.to_string_lossy().into_owned());
    let temporary = folder.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        std::fs::File::open(folder)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written.map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vipgate-state-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("state.json")
    }

    fn address(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn configured(members: &[(&str, AdminState)]) -> BTreeMap<SocketAddr, AdminState> {
        members.iter().map(|(a, s)| (address(a), *s)).collect()
    }

    #[test]
    fn a_decision_is_saved_and_read_back() {
        let path = temp_path("saved");
        let mut decisions = Decisions::open(Some(&path));
        let member = address("10.0.0.12:9070");
        decisions
            .decide(
                member,
                AdminState::Disabled,
                AdminState::Enabled,
                1_700_000_000,
            )
            .unwrap();
        let mut again = Decisions::open(Some(&path));
        assert_eq!(again.problem(), None);
        let config = configured(&[
            ("10.0.0.11:9070", AdminState::Enabled),
            ("10.0.0.12:9070", AdminState::Enabled),
        ]);
        assert_eq!(
            again.states(&config),
            vec![
                (address("10.0.0.11:9070"), AdminState::Enabled),
                (member, AdminState::Disabled)
            ]
        );
        // Back to what the configuration says: recorded, so that a peer
        // learns the member was enabled again.
        again
            .decide(
                member,
                AdminState::Enabled,
                AdminState::Enabled,
                1_700_000_001,
            )
            .unwrap();
        let mut reread = Decisions::open(Some(&path));
        assert_eq!(reread.members()[&member].state, AdminState::Enabled);
        assert_eq!(reread.states(&config)[1], (member, AdminState::Enabled));
    }

    #[test]
    fn an_edited_configuration_wins_and_absent_members_are_forgotten() {
        let path = temp_path("edited");
        let mut decisions = Decisions::open(Some(&path));
        decisions
            .decide(
                address("10.0.0.11:1"),
                AdminState::ForcedOffline,
                AdminState::Enabled,
                1,
            )
            .unwrap();
        decisions
            .decide(
                address("10.0.0.12:1"),
                AdminState::Disabled,
                AdminState::Enabled,
                1,
            )
            .unwrap();
        decisions
            .decide(
                address("10.0.0.13:1"),
                AdminState::Disabled,
                AdminState::Enabled,
                1,
            )
            .unwrap();
        // .11 was set to disabled in the file since; .13 left it.
        let config = configured(&[
            ("10.0.0.11:1", AdminState::Disabled),
            ("10.0.0.12:1", AdminState::Enabled),
        ]);
        let states = Decisions::open(Some(&path)).states(&config);
        assert_eq!(
            states,
            vec![
                (address("10.0.0.11:1"), AdminState::Disabled),
                (address("10.0.0.12:1"), AdminState::Disabled)
            ]
        );
        let kept: Vec<SocketAddr> = Decisions::open(Some(&path))
            .members()
            .keys()
            .copied()
            .collect();
        assert_eq!(
            kept,
            vec![address("10.0.0.12:1")],
            "stale records are dropped from the file"
        );
    }

    #[test]
    fn a_corrupt_file_is_reported_left_alone_and_not_written_over() {
        let path = temp_path("corrupt");
        std::fs::write(&path, "{ not json").unwrap();
        let mut decisions = Decisions::open(Some(&path));
        let problem = decisions.problem().unwrap().to_string();
        assert!(problem.contains("is not one vipgate wrote"), "{problem}");
        let config = configured(&[("10.0.0.11:1", AdminState::Enabled)]);
        assert_eq!(
            decisions.states(&config),
            vec![(address("10.0.0.11:1"), AdminState::Enabled)]
        );
        let refused = decisions
            .decide(
                address("10.0.0.11:1"),
                AdminState::Disabled,
                AdminState::Enabled,
                1,
            )
            .unwrap_err();
        assert!(refused.to_string().contains("left as it was"), "{refused}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{ not json");
        // The decision holds in memory all the same.
        assert_eq!(
            decisions.states(&config),
            vec![(address("10.0.0.11:1"), AdminState::Disabled)]
        );
        assert!(check(&path).is_err());
    }

    #[test]
    fn another_version_is_refused_and_a_missing_folder_is_found_by_check() {
        let path = temp_path("version");
        std::fs::write(&path, "{\"version\": 2, \"members\": {}}").unwrap();
        let error = check(&path).unwrap_err().to_string();
        assert!(
            error.contains("version 2 (this vipgate reads version 1)"),
            "{error}"
        );
        let nowhere = path.with_file_name("no-such-folder").join("state.json");
        let warning = check(&nowhere).unwrap().unwrap();
        assert!(warning.contains("does not exist"), "{warning}");
        assert_eq!(
            check(&path.with_file_name("fresh.json")).unwrap(),
            None,
            "a file not written yet"
        );
    }

    #[test]
    fn a_write_replaces_the_file_whole_and_leaves_no_temporary() {
        let path = temp_path("atomic");
        let mut decisions = Decisions::open(Some(&path));
        for port in 1..=20u16 {
            decisions
                .decide(
                    SocketAddr::from(([10, 0, 0, 11], port)),
                    AdminState::Disabled,
                    AdminState::Enabled,
                    u64::from(port),
                )
                .unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let content: DecisionSet = serde_json::from_str(&text).unwrap();
        assert_eq!(content.members.len(), 20);
        let entries = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(entries, 1, "only the state file is left");
    }

    #[test]
    fn merging_keeps_the_later_decision_and_ties_go_to_the_more_restrictive() {
        let member = address("10.0.0.12:9070");
        let decision = |state, changed_at_ms| Decision {
            state,
            configured: AdminState::Enabled,
            changed_at_ms,
        };
        let mut ours = Decisions::open(None);
        ours.decide(member, AdminState::Disabled, AdminState::Enabled, 100)
            .unwrap();
        let older = BTreeMap::from([(member, decision(AdminState::Enabled, 99))]);
        assert!(ours.merge(&older).is_empty());
        assert_eq!(ours.members()[&member].state, AdminState::Disabled);
        let tie = BTreeMap::from([(member, decision(AdminState::ForcedOffline, 100))]);
        assert_eq!(ours.merge(&tie), vec![member]);
        let tie_back = BTreeMap::from([(member, decision(AdminState::Disabled, 100))]);
        assert!(
            ours.merge(&tie_back).is_empty(),
            "both nodes settle on forced-offline"
        );
        let later = BTreeMap::from([
            (member, decision(AdminState::Enabled, 101)),
            (address("10.0.0.13:1"), decision(AdminState::Disabled, 5)),
        ]);
        assert_eq!(ours.merge(&later).len(), 2);
        assert_eq!(ours.members()[&member].state, AdminState::Enabled);
    }

    #[test]
    fn a_decision_only_in_memory_survives_reading_the_file_again() {
        let path = temp_path("reread");
        let member = address("10.0.0.12:9070");
        let mut decisions = Decisions::open(Some(&path));
        decisions
            .decide(member, AdminState::Disabled, AdminState::Enabled, 100)
            .unwrap();
        // A write that did not happen (the file still holds the older
        // decision): reading the file again keeps the later one, and
        // writes it.
        decisions.members.insert(
            member,
            Decision {
                state: AdminState::ForcedOffline,
                configured: AdminState::Enabled,
                changed_at_ms: 200,
            },
        );
        decisions.use_file(Some(&path));
        assert_eq!(
            decisions.members()[&member].state,
            AdminState::ForcedOffline
        );
        assert_eq!(
            Decisions::open(Some(&path)).members()[&member].state,
            AdminState::ForcedOffline
        );
    }
}
