//! Cluster mode's grant lines (`state/grant.rs`): what the cluster agent
//! records when the store confirms a grant, the lowering of a line before
//! room is given back, and each line's use. Called by the agent through the
//! engine (`EngineHandle::decide_with`), not by clients: no command names
//! them.

use crate::state::grant::{GrantLine, GrantUse};
use crate::state::*;

impl State {
    /// What `line` covers of the node's usage and open holds of its limit
    /// at `now`, what the open holds take of it, and the limit's amount;
    /// None when the scope no longer has the limit.
    fn taken(&self, now: u64, line: &GrantLine) -> Option<(u64, u64, u64)> {
        let node = self.nodes.get(&line.scope)?;
        let (dim, window) = (line.spec.dim, line.spec.window);
        let l = (node.limits.iter()).find(|l| l.spec.dim == dim && l.spec.window == window)?;
        let taken = l.taken_between(now, node.held.get(dim), line.period, line.end());
        Some((taken, l.held_part(node.held.get(dim)), l.spec.amount))
    }

    /// Every global limit this node has a line of, or needs one for (its
    /// scopes' limits now), with its use. Lines of limits a scope no longer
    /// has are listed with amount 0; a rolling line whose period ended is
    /// listed (`ended`) while the store still counts room it did not use.
    pub fn grant_uses(&self, now: u64) -> Vec<GrantUse> {
        let Some(rules) = self.config.cluster else {
            return Vec::new();
        };
        let mut out: BTreeMap<String, GrantUse> = BTreeMap::new();
        for (scope, node) in self.nodes.iter() {
            for l in &node.limits {
                let Some((key, period)) = grant::key(scope, &l.spec, now) else {
                    continue;
                };
                let line = self.grants.get(&key).cloned().unwrap_or(GrantLine {
                    scope: scope.clone(),
                    spec: l.spec,
                    period,
                    epoch: 0,
                    base: 0,
                    granted: 0,
                    reported: 0,
                    u_max: 0,
                });
                out.insert(key, self.grant_use(now, line, rules));
            }
        }
        for (key, line) in &self.grants {
            let listed = !line.ended(now) || line.returnable(now);
            if !out.contains_key(key) && listed {
                out.insert(key.clone(), self.grant_use(now, line.clone(), rules));
            }
        }
        out.into_values().collect()
    }

    fn grant_use(&self, now: u64, line: GrantLine, rules: grant::ClusterRules) -> GrantUse {
        let (taken, held, amount) = self.taken(now, &line).unwrap_or((0, 0, 0));
        let used = taken.saturating_sub(line.base);
        GrantUse {
            used,
            held: held.min(used),
            amount,
            u_max: rules.u_max(amount),
            ended: line.ended(now),
            line,
        }
    }

    /// Cluster mode: after usage was booked on `scope` outside the RESERVE
    /// rules (SPEND, a COMMIT past its hold or after it expired), notes in
    /// `overdrawn` every calendar or TOTAL line of the scope and its
    /// ancestors whose use it took past either rule: past the grant (a
    /// line never joined has none, so all its use is past it), or past
    /// what the store has seen plus the unreported allowance (a reclaim
    /// would charge less than was used), with `booked`, the amounts booked
    /// outside the rules. The agent charges what is past the grant to the
    /// shared pool (`cluster::escrow::Node::absorb`; past the limit by
    /// `booked` at most) and reports the rest, so no node is granted room
    /// that was spent here. A rolling
    /// window's room is charged per grant period when it is taken, and is
    /// not charged after the fact (docs/CLUSTER.md).
    pub(in crate::state) fn note_overdrawn(&mut self, now: u64, scope: &str, booked: &Dims) {
        if self.config.cluster.is_none() {
            return;
        }
        for s in chain(scope) {
            let Some(node) = self.nodes.get(s) else {
                continue;
            };
            for l in node.limits.iter().filter(|l| !l.is_rolling()) {
                let Some((key, _)) = grant::key(s, &l.spec, now) else {
                    continue;
                };
                let line = self.grants.get(&key);
                let (base, granted, seen) = line.map_or((0, 0, 0), |g| {
                    (g.base, g.granted, g.reported.saturating_add(g.u_max))
                });
                let taken = l.taken_between(now, node.held.get(l.spec.dim), 0, 0);
                let used = taken.saturating_sub(base);
                if used > granted || used > seen {
                    let b = self.overdrawn.entry(key).or_default();
                    *b = b.saturating_add(booked.get(l.spec.dim));
                }
            }
        }
    }

    /// The keys of the calendar and TOTAL lines whose cluster figures `cmd`
    /// shows (BALANCE: the scope's and its ancestors' limits; BUDGET.GET:
    /// the scope's), for the engine to read from the store first. Empty on
    /// a single node and for every other command.
    pub fn view_keys(&self, now: u64, cmd: &Command) -> Vec<String> {
        if self.config.cluster.is_none() {
            return Vec::new();
        }
        let scopes: Vec<&str> = match cmd {
            Command::Balance { scope } => chain(scope).collect(),
            Command::BudgetGet { scope } => vec![scope.as_str()],
            _ => return Vec::new(),
        };
        let mut keys = Vec::new();
        for s in scopes {
            let Some(node) = self.nodes.get(s) else {
                continue;
            };
            for l in node.limits.iter().filter(|l| !l.is_rolling()) {
                keys.extend(grant::key(s, &l.spec, now).map(|(k, _)| k));
            }
        }
        keys
    }

    /// Cluster mode: a limit's figures across the cluster, from the view
    /// the engine read for this command (`cluster_view`); Err with why a
    /// reply shows this node's own figures instead. None on a single node.
    pub(in crate::state) fn cluster_figures(
        &self,
        now: u64,
        scope: &str,
        node: &Node,
        l: &Limit,
    ) -> Option<Result<grant::ClusterFigures, String>> {
        self.config.cluster?;
        if l.is_rolling() {
            return Some(Err(
                "a rolling window is shared as room charged to its periods, \
                 not as reported use: these are this node's figures"
                    .into(),
            ));
        }
        let view = match self.cluster_view.as_ref() {
            None => return Some(Err("the cluster's figures were not read".into())),
            Some(Err(e)) => return Some(Err(format!("the cluster store could not be read: {e}"))),
            Some(Ok(v)) => v,
        };
        let (key, _) = grant::key(scope, &l.spec, now)?;
        let (used, held) = (l.used(now), l.held_part(node.held.get(l.spec.dim)));
        let base = self.grants.get(&key).map_or(0, |g| g.base);
        // No pool yet: no node has charged any of it, this one's use is all.
        let pool = view.get(&key).cloned().unwrap_or_default();
        Some(Ok(pool.figures(used, held, base)))
    }

    /// Records a line the store confirmed.
    pub fn grant_confirm(&mut self, now: u64, line: GrantLine, out: &mut Vec<Entry>) {
        self.emit(now, EntryKind::Grant(line), out);
    }

    /// Lowers the line `key` to what the node has used (or reported, if
    /// more) plus `keep`, before the rest is given back to the store; the
    /// lowered line, or None when there is nothing to give back. From here
    /// on the node cannot use what it is about to give.
    pub fn grant_lower(
        &mut self,
        now: u64,
        key: &str,
        keep: u64,
        out: &mut Vec<Entry>,
    ) -> Option<GrantLine> {
        let rules = self.config.cluster?;
        let line = self.grants.get(key)?.clone();
        let u = self.grant_use(now, line, rules);
        let floor = u.used.max(u.line.reported).saturating_add(keep);
        if u.line.granted <= floor {
            return None;
        }
        let lowered = GrantLine {
            granted: floor,
            ..u.line
        };
        self.emit(now, EntryKind::Grant(lowered.clone()), out);
        Some(lowered)
    }
}

#[cfg(test)]
mod tests {
    use crate::state::grant::{ClusterRules, GrantLine};
    use crate::state::limit::{Blocker, Dim, LimitSpec, Period, Window, Zone};
    use crate::state::outcome::Denied;
    use crate::state::*;

    const DAY: u64 = 86_400_000;

    fn node() -> State {
        let mut st = State::new(Config {
            cluster: Some(ClusterRules::default()),
            ..Config::default()
        });
        let mut out = Vec::new();
        let budget = Command::BudgetSet {
            scope: "org:a".into(),
            limits: vec![
                LimitSpec {
                    dim: Dim::Tokens,
                    window: Window::Total,
                    amount: 1_000,
                },
                LimitSpec {
                    dim: Dim::Requests,
                    window: Window::Calendar(Period::Day, Zone::UTC),
                    amount: 100,
                },
            ],
        };
        st.apply(DAY, &budget, &mut out);
        st
    }

    fn reserve(st: &mut State, now: u64, id: &str, tokens: u64) -> Outcome {
        let r = Command::Reserve(ReserveArgs::new(id, "org:a/agent:x", "gpt-4o", tokens, 0));
        st.decide(now, &r, None, &mut Vec::new())
    }

    fn line(st: &State, now: u64, dim: Dim) -> GrantLine {
        let u = st.grant_uses(now);
        u.into_iter()
            .find(|u| u.line.spec.dim == dim)
            .unwrap_or_else(|| panic!("no {dim:?} line"))
            .line
    }

    fn confirm(st: &mut State, now: u64, dim: Dim, granted: u64, reported: u64) {
        let u_max = (st.grant_uses(now).into_iter())
            .find(|u| u.line.spec.dim == dim)
            .unwrap()
            .u_max;
        let l = GrantLine {
            epoch: 1,
            granted,
            reported,
            u_max,
            ..line(st, now, dim)
        };
        st.grant_confirm(now, l, &mut Vec::new());
    }

    fn denied(o: Outcome) -> Denied {
        match o {
            Outcome::Denied(d) => d,
            other => panic!("not denied: {other:?}"),
        }
    }

    #[test]
    fn a_node_reserves_only_within_its_grant_and_its_unreported_allowance() {
        let mut st = node();
        let now = DAY + 1;
        // No grant yet: short of all of it, on the first global limit.
        let d = denied(reserve(&mut st, now, "h1", 300));
        assert_eq!(
            (d.reason, d.short_by, d.retry_after),
            (Blocker::Grant, 300, Some(0))
        );
        assert_eq!(d.limit.dim, Dim::Tokens);
        confirm(&mut st, now, Dim::Tokens, 500, 0);
        confirm(&mut st, now, Dim::Requests, 10, 0);
        // u_max is 1,000 / 20 = 50: 300 unreported is too much.
        let d = denied(reserve(&mut st, now, "h1", 300));
        assert_eq!((d.reason, d.short_by), (Blocker::Unreported, 250));
        assert_eq!(d.remaining, 50, "what the unreported allowance has left");
        // Reported ahead of use, it fits; the next does not fit the grant.
        confirm(&mut st, now, Dim::Tokens, 500, 250);
        assert!(matches!(
            reserve(&mut st, now, "h1", 300),
            Outcome::Granted(_)
        ));
        let d = denied(reserve(&mut st, now, "h2", 201));
        assert_eq!(
            (d.reason, d.short_by, d.remaining),
            (Blocker::Grant, 1, 200)
        );
        // A limit that is itself full is named before a short grant.
        confirm(&mut st, now, Dim::Tokens, 1_000, 1_000);
        let d = denied(reserve(&mut st, now, "h3", 701));
        assert_eq!(d.reason, Blocker::Held);
    }

    #[test]
    fn the_uses_are_each_global_limits_use_beyond_its_base() {
        let mut st = node();
        let now = DAY + 1;
        confirm(&mut st, now, Dim::Tokens, 500, 100);
        confirm(&mut st, now, Dim::Requests, 10, 0);
        assert!(matches!(
            reserve(&mut st, now, "h1", 40),
            Outcome::Granted(_)
        ));
        let uses = st.grant_uses(now);
        assert_eq!(uses.len(), 2, "{uses:?}");
        let tokens = uses
            .iter()
            .find(|u| u.line.spec.dim == Dim::Tokens)
            .unwrap();
        assert_eq!((tokens.used, tokens.amount, tokens.u_max), (40, 1_000, 50));
        let requests = uses
            .iter()
            .find(|u| u.line.spec.dim == Dim::Requests)
            .unwrap();
        assert_eq!((requests.used, requests.u_max), (1, 5));
        // A base (use an earlier grant accounted for) comes off.
        let l = GrantLine {
            base: 30,
            ..tokens.line.clone()
        };
        st.grant_confirm(now, l, &mut Vec::new());
        let u = st.grant_uses(now);
        assert_eq!(
            u.iter()
                .find(|u| u.line.spec.dim == Dim::Tokens)
                .unwrap()
                .used,
            10
        );
        // A single node has no global limits.
        assert!(State::new(Config::default()).grant_uses(now).is_empty());
    }

    #[test]
    fn lowering_keeps_what_is_used_or_reported_and_gives_nothing_twice() {
        let mut st = node();
        let now = DAY + 1;
        confirm(&mut st, now, Dim::Tokens, 500, 45);
        confirm(&mut st, now, Dim::Requests, 10, 0);
        assert!(matches!(
            reserve(&mut st, now, "h1", 40),
            Outcome::Granted(_)
        ));
        let key = line(&st, now, Dim::Tokens).key();
        let mut out = Vec::new();
        // Reported 45 is more than the 40 used: the line keeps 45 + 5.
        let l = st.grant_lower(now, &key, 5, &mut out).unwrap();
        assert_eq!((l.granted, l.reported), (50, 45));
        assert_eq!(out.len(), 1, "one entry");
        assert_eq!(st.grant_lower(now, &key, 5, &mut out), None);
        assert_eq!(st.grant_lower(now, &key, 10, &mut out), None);
        assert_eq!(st.grant_lower(now, "no such key", 0, &mut out), None);
        // The node now holds 50: 11 more does not fit.
        let d = denied(reserve(&mut st, now, "h2", 11));
        assert_eq!((d.reason, d.remaining), (Blocker::Grant, 10));
    }

    #[test]
    fn a_periods_line_ends_with_the_period() {
        let mut st = node();
        let now = DAY + 1;
        confirm(&mut st, now, Dim::Tokens, 500, 100);
        confirm(&mut st, now, Dim::Requests, 10, 0);
        assert_eq!(st.grants.len(), 2);
        // The next day: a new period is a new pool; yesterday's line goes
        // with the next line written.
        let tomorrow = 2 * DAY + 1;
        let d = denied(reserve(&mut st, tomorrow, "h1", 1));
        assert_eq!((d.limit.dim, d.reason), (Dim::Requests, Blocker::Grant));
        confirm(&mut st, tomorrow, Dim::Requests, 10, 0);
        assert_eq!(
            st.grants.len(),
            2,
            "the TOTAL line and today's: {:?}",
            st.grants.keys()
        );
        assert!(st.grants.values().all(|l| !l.ended(tomorrow)));
        assert!(matches!(
            reserve(&mut st, tomorrow, "h1", 1),
            Outcome::Granted(_)
        ));
    }

    #[test]
    fn a_rolling_window_is_granted_by_period_and_each_line_counts_its_period_only() {
        let mut st = State::new(Config {
            cluster: Some(ClusterRules::default()),
            ..Config::default()
        });
        let budget = Command::BudgetSet {
            scope: "org:a".into(),
            limits: vec![LimitSpec {
                dim: Dim::Requests,
                window: Window::Rolling(60_000),
                amount: 10,
            }],
        };
        st.apply(DAY, &budget, &mut Vec::new());
        let span = crate::state::grant::rolling_span(60_000);
        assert_eq!(span, 10_000, "a sixth of a minute");
        let now = DAY + 1;
        let d = denied(reserve(&mut st, now, "h0", 1));
        assert_eq!((d.reason, d.short_by, d.remaining), (Blocker::Grant, 1, 0));
        let set = |st: &mut State, now: u64, granted: u64| {
            let u = (st.grant_uses(now).into_iter()).find(|u| !u.ended).unwrap();
            assert_eq!(u.line.period, now - now % span);
            let l = GrantLine {
                epoch: 1,
                granted,
                ..u.line
            };
            st.grant_confirm(now, l, &mut Vec::new());
        };
        // Rule 2 does not apply: nothing reported, no allowance, still room.
        set(&mut st, now, 3);
        for h in ["h1", "h2", "h3"] {
            assert!(matches!(reserve(&mut st, now, h, 1), Outcome::Granted(_)));
        }
        let d = denied(reserve(&mut st, now, "h4", 1));
        assert_eq!((d.reason, d.short_by, d.remaining), (Blocker::Grant, 1, 0));
        // The next period is a line of its own, which counts only its own
        // use; the window still counts the last period's.
        let later = DAY + span + 1;
        let d = denied(reserve(&mut st, later, "h4", 1));
        assert_eq!((d.reason, d.short_by), (Blocker::Grant, 1));
        let uses = st.grant_uses(later);
        let old = uses.iter().find(|u| u.ended).expect("the ended line");
        assert_eq!((old.line.period, old.used, old.line.granted), (DAY, 3, 3));
        // The store's answer to a take of the last period, arriving after
        // that period ended: recorded, so its unused room can go back.
        let late = GrantLine {
            granted: 5,
            ..old.line.clone()
        };
        st.grant_confirm(later, late, &mut Vec::new());
        set(&mut st, later, 20);
        // The new line's entry leaves the ended one listed while the store
        // counts its room.
        let uses = st.grant_uses(later);
        let old = uses.iter().find(|u| u.ended).expect("the ended line");
        assert_eq!((old.line.period, old.used, old.line.granted), (DAY, 3, 5));
        for i in 0..7 {
            let h = format!("n{i}");
            assert!(matches!(
                reserve(&mut st, later, &h, 1),
                Outcome::Granted(_)
            ));
        }
        // Room on the line, none in the window: the limit names itself.
        let d = denied(reserve(&mut st, later, "n7", 1));
        assert_eq!(d.reason, Blocker::Used, "{d:?}");
        let new = (st.grant_uses(later).into_iter())
            .find(|u| !u.ended)
            .unwrap();
        assert_eq!((new.used, new.line.granted), (7, 20));
        // An ended line is listed while the store counts its room: until a
        // window after its period.
        let old_line = old.line.clone();
        assert!(old_line.returnable(DAY + span + 60_000 - 1));
        assert!(!old_line.returnable(DAY + span + 60_000));
        assert!(!old_line.returnable(DAY + span - 1), "not ended yet");
        // A window after its period it is no longer listed, and the next
        // line written drops it.
        let gone = DAY + span + 60_000;
        assert!(st.grant_uses(gone).iter().all(|u| u.line.period != DAY));
        set(&mut st, gone, 1);
        assert!(!st.grants.values().any(|l| l.period == DAY));
        assert!(st.grants.values().any(|l| l.period == DAY + span));
    }

    #[test]
    fn a_partition_allowance_is_used_only_cut_off_and_only_on_a_granted_line() {
        let mut st = State::new(Config {
            cluster: Some(ClusterRules {
                partition_allowance_ppm: 10_000,
                ..ClusterRules::default()
            }),
            ..Config::default()
        });
        let budget = Command::BudgetSet {
            scope: "org:a".into(),
            limits: vec![LimitSpec {
                dim: Dim::Tokens,
                window: Window::Total,
                amount: 1_000,
            }],
        };
        st.apply(DAY, &budget, &mut Vec::new());
        let now = DAY + 1;
        // Cut off without a line, or with one the store granted nothing
        // (as after registering while the pool was exhausted): no allowance.
        st.cut_off = true;
        let d = denied(reserve(&mut st, now, "h0", 1));
        assert_eq!(d.reason, Blocker::Grant);
        confirm(&mut st, now, Dim::Tokens, 0, 0);
        let d = denied(reserve(&mut st, now, "h0", 1));
        assert_eq!(d.reason, Blocker::Grant);
        st.cut_off = false;
        confirm(&mut st, now, Dim::Tokens, 100, 100);
        assert!(matches!(
            reserve(&mut st, now, "h1", 100),
            Outcome::Granted(_)
        ));
        // Reaching the store: the grant is the grant.
        let d = denied(reserve(&mut st, now, "h2", 1));
        assert_eq!((d.reason, d.short_by), (Blocker::Grant, 1));
        // Cut off: 1 % of the limit (10) more, no further.
        st.cut_off = true;
        assert!(matches!(
            reserve(&mut st, now, "h2", 10),
            Outcome::Granted(_)
        ));
        let d = denied(reserve(&mut st, now, "h3", 1));
        assert_eq!((d.reason, d.short_by), (Blocker::Grant, 1));
    }

    #[test]
    fn each_line_counts_its_own_limits_use_and_lines_outlive_their_limit() {
        let mut st = node();
        let mut out = Vec::new();
        // Two token limits on one scope: the day's and the total's use part
        // the next day.
        let both = Command::BudgetSet {
            scope: "org:a".into(),
            limits: vec![
                LimitSpec {
                    dim: Dim::Tokens,
                    window: Window::Calendar(Period::Day, Zone::UTC),
                    amount: 1_000,
                },
                LimitSpec {
                    dim: Dim::Tokens,
                    window: Window::Total,
                    amount: 5_000,
                },
            ],
        };
        st.apply(DAY + 1, &both, &mut out);
        let now = DAY + 2;
        for u in st.grant_uses(now) {
            let l = GrantLine {
                epoch: 1,
                granted: 1_000,
                reported: 1_000,
                ..u.line
            };
            st.grant_confirm(now, l, &mut out);
        }
        assert!(matches!(
            reserve(&mut st, now, "h1", 300),
            Outcome::Granted(_)
        ));
        let commit = Command::Commit {
            hold: "h1".into(),
            usage: price::Usage {
                input: 300,
                ..price::Usage::default()
            },
        };
        st.apply(now, &commit, &mut out);
        let tomorrow = 2 * DAY + 1;
        let used = |st: &State, window: Window| {
            (st.grant_uses(tomorrow).into_iter())
                .find(|u| u.line.spec.window == window)
                .map(|u| u.used)
        };
        assert_eq!(used(&st, Window::Total), Some(300));
        assert_eq!(used(&st, Window::Calendar(Period::Day, Zone::UTC)), Some(0));
        // The total limit removed: its line is still listed (amount 0), so
        // the agent can report and give its room back; yesterday's day line
        // is not (its period ended), today's is.
        let day_only = Command::BudgetSet {
            scope: "org:a".into(),
            limits: vec![LimitSpec {
                dim: Dim::Tokens,
                window: Window::Calendar(Period::Day, Zone::UTC),
                amount: 1_000,
            }],
        };
        st.apply(tomorrow, &day_only, &mut out);
        let uses = st.grant_uses(tomorrow);
        let total = uses
            .iter()
            .find(|u| u.line.spec.window == Window::Total)
            .unwrap();
        assert_eq!((total.amount, total.line.granted), (0, 1_000));
        assert_eq!(uses.len(), 2, "{uses:?}");
        assert!(uses.iter().all(|u| !u.line.ended(tomorrow)));
        assert!(
            st.grants.values().any(|l| l.ended(tomorrow)),
            "yesterday's line is kept until the next entry"
        );
    }

    fn spend(st: &mut State, now: u64, tokens: u64) -> Outcome {
        let cmd = Command::Spend {
            run: None,
            id: None,
            scope: "org:a/agent:y".into(),
            model: "gpt-4o".into(),
            usage: crate::state::price::Usage {
                input: tokens,
                ..Default::default()
            },
        };
        st.decide(now, &cmd, None, &mut Vec::new())
    }

    fn commit(st: &mut State, now: u64, id: &str, tokens: u64) -> Outcome {
        let cmd = Command::Commit {
            hold: id.into(),
            usage: crate::state::price::Usage {
                input: tokens,
                ..Default::default()
            },
        };
        st.decide(now, &cmd, None, &mut Vec::new())
    }

    #[test]
    fn usage_booked_past_a_rule_notes_its_lines_with_what_was_booked() {
        let mut st = node();
        let now = DAY + 1;
        let tokens_key = line(&st, now, Dim::Tokens).key();
        let requests_key = line(&st, now, Dim::Requests).key();
        // Lines never joined: all their use is past the grant.
        assert!(matches!(spend(&mut st, now, 30), Outcome::Spent(_)));
        let noted = std::mem::take(&mut st.overdrawn);
        assert_eq!(noted.get(&tokens_key), Some(&30), "{noted:?}");
        assert_eq!(noted.get(&requests_key), Some(&1));
        // Within the grant and the unreported allowance (50): nothing.
        confirm(&mut st, now, Dim::Tokens, 500, 30);
        confirm(&mut st, now, Dim::Requests, 10, 1);
        assert!(matches!(spend(&mut st, now, 50), Outcome::Spent(_)));
        assert!(st.overdrawn.is_empty(), "{:?}", st.overdrawn);
        // One token past reported + u_max (30 + 50): noted to report.
        assert!(matches!(spend(&mut st, now, 1), Outcome::Spent(_)));
        let noted = std::mem::take(&mut st.overdrawn);
        assert_eq!(noted.get(&tokens_key), Some(&1), "{noted:?}");
        assert!(!noted.contains_key(&requests_key), "3 of 10, 1 + 5 seen");
        // A COMMIT as held is within the rules; past its hold, the excess.
        confirm(&mut st, now, Dim::Tokens, 500, 81);
        assert!(matches!(
            reserve(&mut st, now, "h1", 40),
            Outcome::Granted(_)
        ));
        assert!(matches!(
            commit(&mut st, now, "h1", 40),
            Outcome::Committed(_)
        ));
        assert!(st.overdrawn.is_empty(), "{:?}", st.overdrawn);
        confirm(&mut st, now, Dim::Tokens, 500, 121);
        assert!(matches!(
            reserve(&mut st, now, "h2", 40),
            Outcome::Granted(_)
        ));
        assert!(matches!(
            commit(&mut st, now, "h2", 440),
            Outcome::Committed(_)
        ));
        let noted = std::mem::take(&mut st.overdrawn);
        assert_eq!(noted.get(&tokens_key), Some(&400), "{noted:?}");
        // Noted amounts add up until the node takes them.
        assert!(matches!(spend(&mut st, now, 5), Outcome::Spent(_)));
        assert!(matches!(spend(&mut st, now, 7), Outcome::Spent(_)));
        assert_eq!(st.overdrawn.get(&tokens_key), Some(&12));
        // A single node notes nothing.
        let mut single = State::new(Config::default());
        assert!(matches!(spend(&mut single, now, 30), Outcome::Spent(_)));
        assert!(single.overdrawn.is_empty());
    }

    #[test]
    fn a_commit_after_its_hold_expired_notes_all_it_used() {
        let mut st = node();
        let now = DAY + 1;
        confirm(&mut st, now, Dim::Tokens, 500, 0);
        confirm(&mut st, now, Dim::Requests, 10, 0);
        let key = line(&st, now, Dim::Tokens).key();
        let r = Command::Reserve(ReserveArgs {
            ttl_ms: Some(1_000),
            ..ReserveArgs::new("h1", "org:a/agent:x", "gpt-4o", 40, 0)
        });
        assert!(matches!(
            st.decide(now, &r, None, &mut Vec::new()),
            Outcome::Granted(_)
        ));
        st.overdrawn.clear();
        // Expired, its room given back; then committed, late, with 60:
        // past the allowance of unreported use (50).
        let late = now + 2_000;
        let Outcome::Committed(c) = commit(&mut st, late, "h1", 60) else {
            panic!("committed")
        };
        assert!(c.late);
        assert_eq!(st.overdrawn.get(&key), Some(&60), "{:?}", st.overdrawn);
    }

    #[test]
    fn a_threshold_on_a_global_limit_fires_on_the_clusters_use() {
        use crate::state::alerts::AlertRules;
        use crate::state::grant::PoolView;
        let mut st = node();
        let now = DAY + 1;
        assert!(st.alert_keys(now).is_empty(), "no rules yet");
        let rules = Command::AlertRulesSet {
            scope: "org:a".into(),
            rules: Some(AlertRules {
                thresholds: vec![50],
                ..AlertRules::default()
            }),
        };
        st.apply(now, &rules, &mut Vec::new());
        let tokens_key = line(&st, now, Dim::Tokens).key();
        let keys = st.alert_keys(now);
        assert_eq!(keys.len(), 2, "both global lines: {keys:?}");
        assert!(keys.contains(&tokens_key));
        // 200 of 1,000 here: under 50 % on this node's own use.
        confirm(&mut st, now, Dim::Tokens, 300, 0);
        assert!(matches!(spend(&mut st, now, 200), Outcome::Spent(_)));
        let fired = |st: &State| {
            st.alerts
                .log
                .iter()
                .filter(|r| r.event.rule == "threshold")
                .count()
        };
        assert_eq!(fired(&st), 0);
        // The others have reported 250: 450 in all, still under.
        let view = |others| PoolView {
            others_taken: others,
            nodes: vec!["n1".into(), "n2".into()],
            ..PoolView::default()
        };
        let mut out = Vec::new();
        st.alerts_seen(now, [(tokens_key.clone(), view(250))].into(), &mut out);
        assert!(out.is_empty(), "{out:?}");
        // 350 elsewhere: 550 of 1,000 across the cluster.
        st.alerts_seen(now, [(tokens_key.clone(), view(350))].into(), &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        let EntryKind::Alert(ev) = &out[0].kind else {
            panic!("{out:?}")
        };
        assert_eq!(ev.observed, 550);
        assert_eq!(ev.bound, 500);
        // Once a period, however often the view comes.
        let mut again = Vec::new();
        st.alerts_seen(now, [(tokens_key.clone(), view(400))].into(), &mut again);
        assert!(again.is_empty());
        assert_eq!(fired(&st), 1);
        // A single node has no global lines to watch.
        let mut single = State::new(Config::default());
        single.apply(now, &rules, &mut Vec::new());
        assert!(single.alert_keys(now).is_empty());
    }

    #[test]
    fn a_balance_in_cluster_mode_shows_the_clusters_figures_beside_this_nodes() {
        use crate::state::grant::PoolView;
        let mut st = node();
        let now = DAY + 1;
        let balance = Command::Balance {
            scope: "org:a/agent:y".into(),
        };
        let keys = st.view_keys(now, &balance);
        let tokens_key = line(&st, now, Dim::Tokens).key();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(keys.contains(&tokens_key));
        assert!(st
            .view_keys(now, &Command::BudgetList { prefix: None })
            .is_empty());
        // BUDGET.GET: the scope's own limits only.
        let get = |scope: &str| Command::BudgetGet {
            scope: scope.into(),
        };
        assert_eq!(st.view_keys(now, &get("org:a")), keys);
        assert!(st.view_keys(now, &get("org:a/agent:y")).is_empty());
        assert!(State::new(Config::default())
            .view_keys(now, &balance)
            .is_empty());
        // This node: 100 used beyond a base of 40 (an earlier grant's use,
        // which the pool's closed figure counts), 30 held.
        confirm(&mut st, now, Dim::Tokens, 500, 0);
        confirm(&mut st, now, Dim::Requests, 10, 0);
        let l = GrantLine {
            base: 40,
            ..st.grants[&tokens_key].clone()
        };
        st.grant_confirm(now, l, &mut Vec::new());
        assert!(matches!(spend(&mut st, now, 140), Outcome::Spent(_)));
        confirm(&mut st, now, Dim::Tokens, 500, 100);
        assert!(matches!(
            reserve(&mut st, now, "h1", 30),
            Outcome::Granted(_)
        ));
        let view = PoolView {
            closed: 1_000,
            others_taken: 300,
            others_held: 50,
            nodes: vec!["n1".into(), "n2".into()],
            mine_reclaimed: false,
        };
        st.cluster_view = Some(Ok([(tokens_key.clone(), view.clone())].into()));
        let v = st.decide(now, &balance, None, &mut Vec::new());
        let text = format!("{:?}", Value::from(v));
        // used: 1,000 closed + 250 of the others' + 100 here; held: 50 + 30.
        for want in [
            "(\"used\", Int(1350))",
            "(\"held\", Int(80))",
            "(\"remaining\", Int(-430))",
            "(\"covers\", Str(\"cluster\"))",
            "(\"this_node\", Map([(\"used\", Int(140)), (\"held\", Int(30))]))",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
        // Its grant reclaimed: the pool's presumed charge stands for it.
        let f = PoolView {
            mine_reclaimed: true,
            ..view.clone()
        }
        .figures(140, 30, 40);
        assert_eq!((f.used, f.held), (1_250, 50));
        // The store unread: this node's figures, and why.
        st.cluster_view = Some(Err("down".into()));
        let text = format!(
            "{:?}",
            Value::from(st.decide(now, &balance, None, &mut Vec::new()))
        );
        assert!(text.contains("(\"covers\", Str(\"this node\"))"), "{text}");
        assert!(text.contains("could not be read: down"), "{text}");
        // A single node's reply has none of these fields.
        let mut single = State::new(Config::default());
        single.apply(
            DAY,
            &Command::BudgetSet {
                scope: "org:a".into(),
                limits: st.nodes["org:a"].limits.iter().map(|l| l.spec).collect(),
            },
            &mut Vec::new(),
        );
        let text = format!("{:?}", single.apply(now, &balance, &mut Vec::new()));
        assert!(!text.contains("covers"), "{text}");
    }

    #[test]
    fn past_the_grant_alone_is_noted_and_exactly_the_grant_is_not() {
        let mut st = node();
        let now = DAY + 1;
        let key = line(&st, now, Dim::Tokens).key();
        // Granted 200, reported 190: the unreported allowance (50) reaches
        // 240, past the grant.
        confirm(&mut st, now, Dim::Tokens, 200, 190);
        confirm(&mut st, now, Dim::Requests, 10, 0);
        assert!(matches!(spend(&mut st, now, 200), Outcome::Spent(_)));
        assert!(
            st.overdrawn.is_empty(),
            "exactly the grant: {:?}",
            st.overdrawn
        );
        assert!(matches!(spend(&mut st, now, 10), Outcome::Spent(_)));
        assert_eq!(st.overdrawn.get(&key), Some(&10), "past the grant only");
        // The line stays past its grant until the agent charges it; a
        // COMMIT as held books nothing outside the rules: no note.
        st.overdrawn.clear();
        confirm(&mut st, now, Dim::Tokens, 300, 280);
        assert!(matches!(
            reserve(&mut st, now, "h1", 40),
            Outcome::Granted(_)
        ));
        // (Its grant lowered under its use, as a store's figure may be.)
        confirm(&mut st, now, Dim::Tokens, 240, 240);
        assert!(matches!(
            commit(&mut st, now, "h1", 40),
            Outcome::Committed(_)
        ));
        assert!(st.overdrawn.is_empty(), "{:?}", st.overdrawn);
    }
}
