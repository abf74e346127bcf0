//! Whether a pool's long-lived connections are spread as they should be,
//! and which member should give one up: pure arithmetic over counts, so
//! it is tested apart from sockets and clocks.
//!
//! A member's fair share is the pool's connections split by weight: its
//! `ratio` times how far along its slow ramp it is, among the members that
//! take new connections (up, enabled, in the priority group in use). A
//! member limited by `connection_limit` is never given a share above its
//! limit; what it cannot take is split among the others ("water
//! filling"). Members that take no new connections (down, disabled,
//! offline, draining) are left out: their connections stay, or follow
//! their own drain.

/// One member as the judgement sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Its connections in this pool (not counting those asked to leave).
    pub connections: usize,
    /// Its weight: ratio x slow-ramp fraction; 0 for a member in a
    /// priority group not in use. `None`: it takes no new connections and
    /// is left out.
    pub weight: Option<f64>,
    /// Its `connection_limit`, if any.
    pub limit: Option<usize>,
}

/// The judgement of one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// Each member's fair share (0 for those left out).
    pub shares: Vec<f64>,
    /// Some member is off its share by more than the tolerance.
    pub uneven: bool,
    /// Members at or above their share (only meaningful while uneven):
    /// new clients go elsewhere meanwhile.
    pub at_or_over: Vec<bool>,
    /// Members by how far above their share they are, most first, among
    /// those at least one connection above it: where moves come from.
    pub sources: Vec<usize>,
    /// The member furthest below its share (where a moved client should
    /// land), if any is below it.
    pub emptiest: Option<usize>,
}

/// Judges `loads` with `tolerance` (0.1: 10% either way, and always one
/// connection).
pub fn judge(loads: &[Load], tolerance: f64) -> Judgement {
    let shares = shares(loads);
    let band = |share: f64| (share * tolerance).max(1.0);
    let mut uneven = false;
    let mut at_or_over = vec![false; loads.len()];
    let mut sources = Vec::new();
    let mut emptiest: Option<(f64, usize)> = None;
    for (index, load) in loads.iter().enumerate() {
        if load.weight.is_none() {
            continue;
        }
        let share = shares[index];
        let held = load.connections as f64;
        uneven |= (held - share).abs() > band(share);
        at_or_over[index] = held >= share;
        if held - share >= 1.0 {
            sources.push(index);
        }
        let room = share - held;
        if room > 0.0 && emptiest.is_none_or(|(most, _)| room > most) {
            emptiest = Some((room, index));
        }
    }
    sources.sort_by(|&a, &b| {
        let over = |i: usize| loads[i].connections as f64 - shares[i];
        over(b).total_cmp(&over(a))
    });
    Judgement {
        shares,
        uneven,
        at_or_over,
        sources,
        emptiest: emptiest.map(|(_, index)| index),
    }
}

/// The fair shares: the connections of the members taking part split by
/// weight, no member above its limit.
fn shares(loads: &[Load]) -> Vec<f64> {
    let mut shares = vec![0.0; loads.len()];
    let mut remaining: f64 = loads
        .iter()
        .filter(|load| load.weight.is_some())
        .map(|load| load.connections as f64)
        .sum();
    let mut open: Vec<usize> = (0..loads.len())
        .filter(|&i| loads[i].weight.is_some_and(|w| w > 0.0))
        .collect();
    // Each round caps the members whose share passes their limit and
    // splits the rest again; at most one round per member.
    while !open.is_empty() && remaining > 0.0 {
        let total_weight: f64 = open.iter().map(|&i| loads[i].weight.unwrap_or(0.0)).sum();
        let capped: Vec<usize> = open
            .iter()
            .copied()
            .filter(|&i| {
                let share = remaining * loads[i].weight.unwrap_or(0.0) / total_weight;
                loads[i].limit.is_some_and(|limit| share > limit as f64)
            })
            .collect();
        if capped.is_empty() {
            for &i in &open {
                shares[i] = remaining * loads[i].weight.unwrap_or(0.0) / total_weight;
            }
            break;
        }
        for &i in &capped {
            let limit = loads[i].limit.unwrap_or(0) as f64;
            shares[i] = limit;
            remaining -= limit;
        }
        open.retain(|i| !capped.contains(i));
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(connections: usize) -> Load {
        Load {
            connections,
            weight: Some(1.0),
            limit: None,
        }
    }

    #[test]
    fn a_member_back_from_down_is_uneven_and_the_fullest_give_way() {
        let judgement = judge(&[member(1500), member(1500), member(0)], 0.1);
        assert_eq!(judgement.shares, vec![1000.0; 3]);
        assert!(judgement.uneven);
        assert_eq!(judgement.sources, vec![0, 1]);
        assert_eq!(judgement.emptiest, Some(2));
        assert_eq!(judgement.at_or_over, vec![true, true, false]);
    }

    #[test]
    fn within_the_tolerance_is_even() {
        let judgement = judge(&[member(1090), member(1000), member(910)], 0.1);
        assert!(!judgement.uneven);
        let judgement = judge(&[member(1120), member(1000), member(880)], 0.1);
        assert!(judgement.uneven);
        assert_eq!(judgement.sources[0], 0);
    }

    #[test]
    fn small_pools_do_not_chase_a_connection_back_and_forth() {
        // Shares of 3.33: one connection off is within the band.
        assert!(!judge(&[member(4), member(3), member(3)], 0.1).uneven);
        assert!(judge(&[member(6), member(2), member(2)], 0.1).uneven);
    }

    #[test]
    fn ratios_and_the_slow_ramp_weigh_the_shares() {
        let weighted = Load {
            weight: Some(2.0),
            ..member(1000)
        };
        let ramping = Load {
            weight: Some(0.5),
            ..member(0)
        };
        let judgement = judge(&[weighted, member(1000), ramping], 0.1);
        // 2,000 connections over weights 2, 1 and 0.5.
        let unit = 2000.0 / 3.5;
        assert_eq!(judgement.shares, vec![2.0 * unit, unit, 0.5 * unit]);
        assert_eq!(judgement.emptiest, Some(2));
    }

    #[test]
    fn members_out_of_rotation_keep_their_connections_and_take_none() {
        let disabled = Load {
            weight: None,
            ..member(700)
        };
        let judgement = judge(&[disabled, member(500), member(500)], 0.1);
        assert_eq!(judgement.shares, vec![0.0, 500.0, 500.0]);
        assert!(!judgement.uneven);
        // A member of a priority group not in use holds a share of none.
        let standby = Load {
            weight: Some(0.0),
            ..member(300)
        };
        let judgement = judge(&[standby, member(500), member(500)], 0.1);
        assert_eq!(judgement.shares, vec![0.0, 650.0, 650.0]);
        assert_eq!(judgement.sources, vec![0]);
    }

    #[test]
    fn a_connection_limit_caps_a_share_and_the_rest_is_split() {
        let limited = Load {
            limit: Some(500),
            ..member(0)
        };
        let judgement = judge(&[member(1500), member(1500), limited], 0.1);
        assert_eq!(judgement.shares, vec![1250.0, 1250.0, 500.0]);
        assert_eq!(judgement.sources, vec![0, 1]);
        assert_eq!(judgement.emptiest, Some(2));
    }

    #[test]
    fn an_empty_pool_is_even() {
        let judgement = judge(&[member(0), member(0)], 0.1);
        assert!(!judgement.uneven);
        assert!(judgement.sources.is_empty());
        assert_eq!(judge(&[], 0.1).emptiest, None);
    }
}
