//! A pool's `rebalance`: keeping long-lived connections spread by closing,
//! a few at a time, connections of the members that hold more than their
//! share, so that their clients reconnect to the emptier ones.

use serde::Deserialize;
use toml::Spanned;

use super::validate::Checker;

/// Default `rebalance.tolerance`: a member may be 10% off its share.
pub const DEFAULT_TOLERANCE: f64 = 0.10;
/// Default `rebalance.rate`: 10 connections a second per pool.
pub const DEFAULT_REBALANCE_RATE: u32 = 10;
/// How fast connections past `max_connection_lifetime` are closed in a
/// pool without `rebalance` (with it, at its `rate`).
pub const DEFAULT_LIFETIME_RATE: u32 = 10;

/// `rebalance = { tolerance = 0.1, rate = 20 }`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rebalance {
    /// How far off its fair share a member may be before the pool
    /// rebalances: 0.1 lets a member with a share of 1,000 hold 900 to
    /// 1,100 (and always one connection either way). Default 0.10.
    pub tolerance: f64,
    /// Most connections closed a second in the pool, for rebalancing and
    /// for `max_connection_lifetime` together. Default 10.
    pub rate: u32,
}

/// `rebalance` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRebalance {
    pub tolerance: Option<Spanned<f64>>,
    pub rate: Option<Spanned<i64>>,
}

impl Checker<'_> {
    pub(super) fn rebalance(&mut self, key: &str, raw: &RawRebalance) -> Rebalance {
        let tolerance = match &raw.tolerance {
            None => DEFAULT_TOLERANCE,
            Some(value) if (0.01..=1.0).contains(value.get_ref()) => *value.get_ref(),
            Some(value) => {
                self.report(
                    &format!("{key}.tolerance"),
                    Some(value.span()),
                    format!("{} is not a fraction from 0.01 to 1", value.get_ref()),
                    Some(
                        "0.1 lets a member be 10% off its fair share before connections move"
                            .into(),
                    ),
                );
                DEFAULT_TOLERANCE
            }
        };
        let rate = self.integer_or(
            &format!("{key}.rate"),
            raw.rate.as_ref(),
            (1, 10_000, "connections closed a second in this pool"),
            DEFAULT_REBALANCE_RATE as usize,
        ) as u32;
        Rebalance { tolerance, rate }
    }
}
