//! Cluster mode's rules on a node (docs/CLUSTER.md): the room this node was
//! granted of each global limit, and the two rules a RESERVE keeps on top
//! of the limit itself, for every covering limit at once:
//!
//! 1. `use + amount ≤ granted` — never spend room the store did not grant;
//! 2. `use + amount ≤ reported + u_max` — report-or-stall: never hold more
//!    than `u_max` of usage the store has not seen (the agent may report
//!    ahead of use, up to the grant, for a request larger than `u_max`).
//!
//! `use` is this node's usage of the limit (settled, plus its open holds)
//! in the current period, less `base`: what an earlier grant of the same
//! period already accounted for. Lines change only by ledger entries
//! (`EntryKind::Grant`), written when the cluster agent has the store's
//! confirmation (or, to lower a line, before it asks), so a restart with the
//! disk knows its grants.
//!
//! A rolling window is cut into *grant periods* of [`rolling_span`] (a
//! whole number of its sub-buckets, a sixth of the window for a window of a
//! minute or more): a line covers what the window counts in one period,
//! and the store charges the room it grants to that period in full, ageing
//! it out a window after the period ends (`cluster/rolling.rs`). Every use
//! is covered by a charge that leaves the window no sooner than the use
//! does, so the sum of the charges in the window bounds the cluster's use
//! in it; rule 2 does not apply (nothing is charged after the fact).

use super::limit::{period_end, period_start, Dim, LimitSpec, Ring, Window};

/// The sub-buckets in a rolling window's grant period, at least: a
/// shorter period means more refills, a longer one holds room in the
/// window longer than its use.
pub const ROLLING_SPAN_BUCKETS: u64 = 10;
/// A rolling grant period lasts at least this long (ms), so a short window
/// does not send a refill to the store every few milliseconds ...
pub const ROLLING_SPAN_MIN_MS: u64 = 1_000;

/// The length (ms) of a rolling window's grant periods: a whole number of
/// its sub-buckets, at least [`ROLLING_SPAN_BUCKETS`] of them and
/// [`ROLLING_SPAN_MIN_MS`], at most half the window.
pub fn rolling_span(window_ms: u64) -> u64 {
    let width = Ring::width_of(window_ms);
    let buckets = window_ms.div_ceil(width);
    let wanted = ROLLING_SPAN_BUCKETS.max(ROLLING_SPAN_MIN_MS.div_ceil(width));
    width * wanted.min(buckets / 2).max(1)
}

/// What one node holds of one global limit in one period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantLine {
    pub scope: String,
    /// The limit (its amount as when the line was written; the rules read
    /// the scope's current amount).
    pub spec: LimitSpec,
    /// The calendar period's start (ms), 0 for TOTAL.
    pub period: u64,
    /// The node's registration the grant is under.
    pub epoch: u64,
    /// The node's usage in the period an earlier grant accounted for.
    pub base: u64,
    pub granted: u64,
    /// Usage the store has confirmed (the agent may report ahead of use).
    pub reported: u64,
    /// The most unreported usage the grant allows, as declared in the
    /// store (a reclaim charges `reported` plus this, at most `granted`).
    pub u_max: u64,
}

impl GrantLine {
    pub fn key(&self) -> String {
        key_of(&self.scope, self.spec.dim, self.spec.window, self.period)
    }

    /// When the line's period ends (ms; `u64::MAX` for TOTAL).
    pub fn end(&self) -> u64 {
        match self.spec.window {
            Window::Calendar(p, z) => period_end(p, z, self.period),
            Window::Rolling(ms) => self.period.saturating_add(rolling_span(ms)),
            Window::Total => u64::MAX,
        }
    }

    /// Whether the line's period has ended by `now` (TOTAL never ends).
    pub fn ended(&self, now: u64) -> bool {
        self.end() <= now
    }

    pub fn is_rolling(&self) -> bool {
        matches!(self.spec.window, Window::Rolling(_))
    }

    /// A rolling line whose period has ended but whose room the store still
    /// counts in the window: what it did not use can be given back.
    pub fn returnable(&self, now: u64) -> bool {
        match self.spec.window {
            Window::Rolling(ms) => self.ended(now) && self.end().saturating_add(ms) > now,
            _ => false,
        }
    }
}

/// A line with this node's use of it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantUse {
    pub line: GrantLine,
    /// Usage and open holds in the period beyond `line.base`.
    pub used: u64,
    /// Of `used`, what open holds take (0 for a rolling window, whose
    /// window counts them as use).
    pub held: u64,
    /// The limit's amount now (0 if the scope no longer has it).
    pub amount: u64,
    /// The unreported allowance a grant of it should declare (a twentieth
    /// of the amount, `ClusterRules`); the line's own `u_max` is what the
    /// store has.
    pub u_max: u64,
    /// The line's period is over (a rolling line listed for the room it
    /// can give back; no request uses it any more).
    pub ended: bool,
}

/// What the store says of one global limit beyond this node's own use:
/// the use of closed grants (the pool's `consumed` and `presumed`) and the
/// other live nodes' last reports. Read for a BALANCE or BUDGET.GET in
/// cluster mode (an input to the reply, like the clock).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolView {
    /// What closed and reclaimed grants used (or are charged).
    pub closed: u64,
    /// The other live nodes' reported use (settled and held) and, of it,
    /// their open holds.
    pub others_taken: u64,
    pub others_held: u64,
    /// The nodes whose use it counts by report (this node's own grant
    /// included while it is live), by name.
    pub nodes: Vec<String>,
    /// This node's grant was reclaimed: the pool's presumed charge stands
    /// for its use until it registers again.
    pub mine_reclaimed: bool,
}

/// The views of the limits a read needs, by line key, or why the store
/// could not be read.
pub type ClusterView = Result<std::collections::BTreeMap<String, PoolView>, String>;

/// A limit's figures across the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterFigures {
    pub used: u64,
    pub held: u64,
    pub nodes: Vec<String>,
}

impl PoolView {
    /// The cluster's use and holds of the limit, given this node's own use
    /// and holds in the period and the line's `base` (what its earlier
    /// grants used: the pool's `closed` counts it): the pool's closed use,
    /// the other nodes' last reports, and this node's use as of now (its
    /// reported and unreported use alike).
    pub fn figures(&self, own_used: u64, own_held: u64, base: u64) -> ClusterFigures {
        let (own, own_held) = match self.mine_reclaimed {
            true => (0, 0),
            false => (
                own_used.saturating_add(own_held).saturating_sub(base),
                own_held,
            ),
        };
        let taken = self
            .closed
            .saturating_add(self.others_taken)
            .saturating_add(own);
        let held = self.others_held.saturating_add(own_held).min(taken);
        ClusterFigures {
            used: taken - held,
            held,
            nodes: self.nodes.clone(),
        }
    }
}

/// Cluster mode's settings for the rules (None on a single node).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterRules {
    /// `u_max` of a limit is its amount divided by this (at least 1).
    pub u_max_divisor: u64,
    /// `--partition-allowance`, in millionths of a limit: how far past its
    /// grant this node may go while it cannot reach the store (0: never).
    pub partition_allowance_ppm: u64,
}

impl Default for ClusterRules {
    fn default() -> Self {
        ClusterRules {
            u_max_divisor: 20,
            partition_allowance_ppm: 0,
        }
    }
}

/// The most `--partition-allowance` may be: all of a limit.
pub const MAX_PARTITION_ALLOWANCE_PPM: u64 = 1_000_000;

impl ClusterRules {
    pub fn u_max(&self, amount: u64) -> u64 {
        (amount / self.u_max_divisor.max(1)).max(1)
    }

    /// How far past its grant (and its unreported allowance) a node cut off
    /// from the store may use a limit of `amount`: its partition allowance
    /// of the limit, or for a rolling window a share of it per grant period
    /// such that the periods one window overlaps add up to no more.
    pub fn partition_extra(&self, spec: &LimitSpec, amount: u64) -> u64 {
        let ppm = self
            .partition_allowance_ppm
            .min(MAX_PARTITION_ALLOWANCE_PPM);
        let whole = (amount as u128 * ppm as u128 / 1_000_000) as u64;
        match spec.window {
            Window::Rolling(ms) => whole / (ms.div_ceil(rolling_span(ms)) + 1),
            _ => whole,
        }
    }
}

/// The line a scope's limit takes at `now`, and its period's start. (An
/// Option so that a limit may yet stay node-local; every limit is global
/// today.)
pub fn key(scope: &str, spec: &LimitSpec, now: u64) -> Option<(String, u64)> {
    let period = match spec.window {
        Window::Rolling(ms) => now - now % rolling_span(ms),
        Window::Total => 0,
        Window::Calendar(p, z) => period_start(p, z, now),
    };
    Some((key_of(scope, spec.dim, spec.window, period), period))
}

/// `<scope>|<DIM>|<window>|<period start>`, e.g.
/// `org:acme|COST|PER MONTH TZ Europe/Berlin|1798761600000`: a new period is
/// a new pool in the store.
fn key_of(scope: &str, dim: Dim, window: Window, period: u64) -> String {
    format!("{scope}|{}|{}|{period}", dim.name(), window.describe())
}

/// Why a request does not fit a line: what would let it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Short {
    /// More room from the store (`by` more).
    Room { by: u64 },
    /// A report of the usage the store has not seen, reported `by` ahead
    /// of the node's use (a request larger than `u_max` is let through by
    /// reporting it before it is made: a reclaim then charges it).
    Report { by: u64 },
}

/// Checks a request of `amount` against a line (None: no line, no room):
/// `taken` is the node's usage and open holds of the limit in the period;
/// `extra` is what a node cut off from the store may use beyond both rules
/// (`ClusterRules::partition_extra`; 0 while it reaches the store). None
/// if it fits.
pub fn shortfall(line: Option<&GrantLine>, taken: u64, amount: u64, extra: u64) -> Option<Short> {
    let (base, granted, reported, u_max) =
        line.map_or((0, 0, 0, 0), |l| (l.base, l.granted, l.reported, l.u_max));
    let after = (taken.saturating_sub(base) as u128) + amount as u128;
    let room = granted as u128 + extra as u128;
    if after > room {
        return Some(Short::Room {
            by: (after - room).min(u64::MAX as u128) as u64,
        });
    }
    // A rolling window's room is charged in full when granted.
    if line.is_some_and(GrantLine::is_rolling) {
        return None;
    }
    let unreported_room = reported as u128 + u_max as u128 + extra as u128;
    if after > unreported_room {
        return Some(Short::Report {
            by: (after - unreported_room).min(u64::MAX as u128) as u64,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::limit::{Period, Zone};

    fn line(base: u64, granted: u64, reported: u64) -> GrantLine {
        line_u(base, granted, reported, 300)
    }

    fn line_u(base: u64, granted: u64, reported: u64, u_max: u64) -> GrantLine {
        GrantLine {
            scope: "org:a".into(),
            spec: LimitSpec {
                dim: Dim::Tokens,
                window: Window::Total,
                amount: 10_000,
            },
            period: 0,
            epoch: 1,
            base,
            granted,
            reported,
            u_max,
        }
    }

    #[test]
    fn a_request_fits_within_the_grant_and_u_max_of_unreported_use() {
        let l = line(0, 1_000, 400);
        assert_eq!(shortfall(Some(&l), 500, 100, 0), None);
        // Exactly the grant, exactly reported + u_max.
        assert_eq!(shortfall(Some(&l), 600, 100, 0), None);
        assert_eq!(
            shortfall(Some(&l), 700, 1, 0),
            Some(Short::Report { by: 1 })
        );
        let wide = line_u(0, 1_000, 400, 10_000);
        assert_eq!(
            shortfall(Some(&wide), 900, 101, 0),
            Some(Short::Room { by: 1 })
        );
        assert_eq!(shortfall(None, 0, 5, 0), Some(Short::Room { by: 5 }));
        // No declared allowance: every use must be reported first.
        let none = line_u(0, 1_000, 400, 0);
        assert_eq!(
            shortfall(Some(&none), 400, 1, 0),
            Some(Short::Report { by: 1 })
        );
    }

    #[test]
    fn usage_an_earlier_grant_accounted_for_is_not_counted_again() {
        // 400 used under the last grant (closed into the pool's consumed).
        let l = line_u(400, 100, 0, 1_000);
        assert_eq!(shortfall(Some(&l), 400, 100, 0), None);
        assert_eq!(
            shortfall(Some(&l), 450, 100, 0),
            Some(Short::Room { by: 50 })
        );
    }

    #[test]
    fn each_period_is_a_line_of_its_own() {
        let day = LimitSpec {
            dim: Dim::Cost,
            window: Window::Calendar(Period::Day, Zone::UTC),
            amount: 5,
        };
        let (k1, p1) = key("org:a/team:b", &day, 86_400_000 + 5).unwrap();
        assert_eq!(k1, "org:a/team:b|COST|PER DAY|86400000");
        assert_eq!(p1, 86_400_000);
        let (k2, _) = key("org:a/team:b", &day, 2 * 86_400_000).unwrap();
        assert_ne!(k1, k2);
        let mut l = line(0, 0, 0);
        l.scope = "org:a/team:b".into();
        l.spec = day;
        l.period = p1;
        assert_eq!(l.key(), k1);
        assert!(!l.ended(2 * 86_400_000 - 1));
        assert!(l.ended(2 * 86_400_000));
        let rolling = LimitSpec {
            window: Window::Rolling(60_000),
            ..day
        };
        // A rolling window's grant periods: a sixth of the window.
        let (k, p) = key("org:a", &rolling, 25_000).unwrap();
        assert_eq!((k.as_str(), p), ("org:a|COST|ROLLING 1m|20000", 20_000));
        let mut r = line(0, 0, 0);
        r.spec = rolling;
        r.period = p;
        assert_eq!(r.end(), 30_000);
        assert!(!r.ended(29_999) && r.ended(30_000));
        // Only the grant applies: no report is ever asked for.
        r.granted = 5;
        assert_eq!(shortfall(Some(&r), 0, 5, 0), None);
        assert_eq!(shortfall(Some(&r), 1, 5, 0), Some(Short::Room { by: 1 }));
        let total = LimitSpec {
            window: Window::Total,
            ..day
        };
        assert_eq!(
            key("org:a", &total, 99).unwrap().0,
            "org:a|COST|PER TOTAL|0"
        );
    }

    #[test]
    fn a_rolling_grant_period_is_whole_buckets_at_least_a_second_at_most_half_the_window() {
        // A minute: 60 buckets of 1 s, periods of 10.
        assert_eq!(rolling_span(60_000), 10_000);
        // An hour: buckets of a minute, periods of ten minutes.
        assert_eq!(rolling_span(3_600_000), 600_000);
        // Three seconds: buckets of 50 ms, 20 of them make a second.
        assert_eq!(rolling_span(3_000), 1_000);
        // One second: 59 buckets of 17 ms, at most half of them.
        assert_eq!(rolling_span(1_000), 29 * 17);
        // A millisecond: one bucket.
        assert_eq!(rolling_span(1), 1);
    }

    #[test]
    fn a_cut_off_node_may_pass_both_rules_by_its_partition_allowance_only() {
        let l = line_u(0, 1_000, 400, 300);
        // Rule 2 first: 700 unreported + 20 more.
        assert_eq!(
            shortfall(Some(&l), 700, 20, 0),
            Some(Short::Report { by: 20 })
        );
        assert_eq!(shortfall(Some(&l), 700, 20, 20), None);
        assert_eq!(
            shortfall(Some(&l), 700, 21, 20),
            Some(Short::Report { by: 1 })
        );
        // Rule 1: the grant plus the allowance.
        let wide = line_u(0, 1_000, 1_000, 1_000);
        assert_eq!(shortfall(Some(&wide), 1_000, 50, 50), None);
        assert_eq!(
            shortfall(Some(&wide), 1_000, 51, 50),
            Some(Short::Room { by: 1 })
        );
        assert_eq!(shortfall(None, 0, 5, 5), None);
        let r = ClusterRules {
            partition_allowance_ppm: 10_000,
            ..ClusterRules::default()
        };
        let spec = |window| LimitSpec {
            dim: Dim::Tokens,
            window,
            amount: 0,
        };
        // 1 % of the limit; none by default.
        assert_eq!(r.partition_extra(&spec(Window::Total), 100_000), 1_000);
        let none = ClusterRules::default();
        assert_eq!(none.partition_extra(&spec(Window::Total), 100_000), 0);
        // A minute's window overlaps at most 7 periods of 10 s: a seventh each.
        let minute = spec(Window::Rolling(60_000));
        assert_eq!(r.partition_extra(&minute, 70_000), 100);
        // Never more than the whole limit, without overflow.
        let all = ClusterRules {
            partition_allowance_ppm: u64::MAX,
            ..ClusterRules::default()
        };
        assert_eq!(
            all.partition_extra(&spec(Window::Total), u64::MAX),
            u64::MAX
        );
    }

    #[test]
    fn u_max_is_a_share_of_the_limit_and_never_zero() {
        let r = ClusterRules::default();
        assert_eq!(r.u_max(1_000), 50);
        assert_eq!(r.u_max(3), 1);
        let zero = ClusterRules {
            u_max_divisor: 0,
            ..ClusterRules::default()
        };
        assert_eq!(zero.u_max(7), 7);
    }
}
