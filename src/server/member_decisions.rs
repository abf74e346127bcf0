//! Where the operator's member decisions (`state_file`) meet the running
//! server: which state the configuration gives each member address, the
//! decided states set on a snapshot's members before it serves, and what
//! an admin action answers.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::Snapshot;
use crate::config::{AdminState, Plan};
use crate::state_file::Decisions;

/// What an admin action changed.
#[derive(Debug)]
pub struct MemberChange {
    pub address: SocketAddr,
    /// Whether the decision was saved to `settings.state_file` (always
    /// `Ok` without one); why not otherwise. It holds either way.
    pub saved: Result<(), String>,
}

/// The operator's decisions as `/status` shows them.
#[derive(Debug, serde::Serialize)]
pub struct DecisionsStatus {
    /// `settings.state_file`, if set.
    pub state_file: Option<String>,
    /// Why decisions are not being saved there, if they are not.
    pub problem: Option<String>,
    /// Each member address an operator changed, with what the
    /// configuration says and when (milliseconds since the Unix epoch).
    pub members: Vec<DecisionStatus>,
}

#[derive(Debug, serde::Serialize)]
pub struct DecisionStatus {
    pub member: String,
    pub state: AdminState,
    pub configured: AdminState,
    pub changed_at_ms: u64,
}

impl DecisionsStatus {
    pub(super) fn of(decisions: &Decisions) -> DecisionsStatus {
        DecisionsStatus {
            state_file: decisions.file().map(|path| path.display().to_string()),
            problem: decisions.problem().map(str::to_string),
            members: decisions
                .members()
                .iter()
                .map(|(address, decision)| DecisionStatus {
                    member: address.to_string(),
                    state: decision.state,
                    configured: decision.configured,
                    changed_at_ms: decision.changed_at_ms,
                })
                .collect(),
        }
    }
}

/// The admin state the configuration gives each member address. An address
/// listed in several pools shares one state: the last pool's entry says it,
/// as when the snapshot is built.
pub(super) fn configured_states(plan: &Plan) -> BTreeMap<SocketAddr, AdminState> {
    plan.pools
        .values()
        .flat_map(|pool| &pool.members)
        .map(|member| (member.address, member.admin))
        .collect()
}

/// Sets every member of `snapshot` to its state: the operator's decision
/// while it holds, the configuration's otherwise. Done before the snapshot
/// serves (at start) or is swapped in (at a reload).
pub(super) fn apply_decisions(snapshot: &Snapshot, decisions: &mut Decisions) {
    for (address, state) in decisions.states(&configured_states(snapshot.plan())) {
        if let Some(member) = snapshot.member(&address) {
            member.set_admin_state(state);
        }
    }
}
