//! The runs report (`/v1/reports/runs`): what agent runs cost, and what a
//! successful one costs, folded from the ledger. Pure: entries in (in
//! ledger order), figures out; the admin API reads the ledger and formats.
//!
//! A run lasts from its first step (STEP) or call booked with `RUN <run>`
//! (a RESERVE's hold, committed in time or late, or a SPEND) to its end
//! (RUN.END, with or without an OUTCOME, or the run timeout), as the
//! state's runs do; its scope is the first one a step or call named. A
//! hold committed after its run ended still counts for that run; a run id
//! used again after its end is a new run. A run with no call and no
//! outcome (a loop-guard run that never said how it ended) reports
//! nothing and is left out; one that ended with an OUTCOME counts even
//! without calls (a task that failed before spending is still a failed
//! task). Runs not ended yet are counted apart (`open`), not in the
//! per-run figures.

use std::collections::BTreeMap;

use super::{scope, Entry, EntryKind, Map, RunOutcome};

/// How the report groups runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunGroup {
    /// By the scope of the run's first call, cut to `level` segments.
    Scope { level: usize },
    /// By model: a run counts in the group of every model it called, with
    /// that model's part of its usage.
    Model,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunQuery {
    pub group: RunGroup,
    /// Only runs whose scope is at or below this one.
    pub scope: Option<String>,
    /// Only runs that ended in `[from, to)` (ms since the epoch).
    pub from: Option<u64>,
    pub to: Option<u64>,
}

/// Usage booked for a run on one model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub calls: u64,
    pub tokens: u64,
    /// nano-USD
    pub cost: u64,
}

impl Usage {
    fn add(&mut self, o: &Usage) {
        self.calls = self.calls.saturating_add(o.calls);
        self.tokens = self.tokens.saturating_add(o.tokens);
        self.cost = self.cost.saturating_add(o.cost);
    }
}

/// One group's runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    pub key: String,
    pub runs: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Ended without an OUTCOME (RUN.END without one, or timed out).
    pub unreported: u64,
    /// Of every run in the group.
    pub usage: Usage,
    /// Of the successful runs only.
    pub success_usage: Usage,
}

/// Several books' answers to one runs query as one (a cluster's nodes:
/// a run is counted where it ended, as each node's ledger has it): groups
/// of the same key summed, sorted as one answer is, totals and open runs
/// summed.
pub fn merge(parts: Vec<RunSummary>) -> RunSummary {
    let mut groups: BTreeMap<String, RunStats> = BTreeMap::new();
    let mut out = RunSummary {
        groups: Vec::new(),
        total: RunStats::default(),
        open: 0,
    };
    for part in parts {
        out.total.merge(&part.total);
        out.open = out.open.saturating_add(part.open);
        for g in part.groups {
            let kept = groups.entry(g.key.clone()).or_insert_with(|| RunStats {
                key: g.key.clone(),
                ..RunStats::default()
            });
            kept.merge(&g);
        }
    }
    out.groups = groups.into_values().collect();
    out.groups
        .sort_by(|a, b| b.usage.cost.cmp(&a.usage.cost).then(a.key.cmp(&b.key)));
    out
}

impl RunStats {
    /// Adds another group's figures (its key is not looked at).
    fn merge(&mut self, o: &RunStats) {
        self.runs = self.runs.saturating_add(o.runs);
        self.succeeded = self.succeeded.saturating_add(o.succeeded);
        self.failed = self.failed.saturating_add(o.failed);
        self.unreported = self.unreported.saturating_add(o.unreported);
        self.usage.add(&o.usage);
        self.success_usage.add(&o.success_usage);
    }

    fn add(&mut self, outcome: Option<RunOutcome>, u: &Usage) {
        self.runs += 1;
        match outcome {
            Some(RunOutcome::Success) => {
                self.succeeded += 1;
                self.success_usage.add(u);
            }
            Some(RunOutcome::Failure) => self.failed += 1,
            None => self.unreported += 1,
        }
        self.usage.add(u);
    }

    /// succeeded / (succeeded + failed), in parts per million; None when
    /// no run reported an outcome.
    pub fn success_rate_ppm(&self) -> Option<u64> {
        let reported = self.succeeded + self.failed;
        (reported > 0).then(|| ratio(self.succeeded as u128 * 1_000_000, reported))
    }

    /// All the group's usage over its runs: (cost, tokens) per run.
    pub fn per_run(&self) -> Option<(u64, u64)> {
        per(&self.usage, self.runs)
    }

    /// What the successful runs used, on average.
    pub fn per_successful_run(&self) -> Option<(u64, u64)> {
        per(&self.success_usage, self.succeeded)
    }

    /// All the group's usage, failed runs' included, over its successes:
    /// what each success really cost.
    pub fn per_success(&self) -> Option<(u64, u64)> {
        per(&self.usage, self.succeeded)
    }
}

/// `n / d`, rounded to the nearest.
fn ratio(n: u128, d: u64) -> u64 {
    let d = d as u128;
    ((n + d / 2) / d).min(u64::MAX as u128) as u64
}

fn per(u: &Usage, n: u64) -> Option<(u64, u64)> {
    (n > 0).then(|| (ratio(u.cost as u128, n), ratio(u.tokens as u128, n)))
}

/// The report over every group, largest cost first, and the runs still
/// open at the end of the ledger (within the scope filter).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub groups: Vec<RunStats>,
    pub total: RunStats,
    pub open: u64,
}

#[derive(Debug)]
struct Tally {
    scope: Option<String>,
    ended: Option<(u64, Option<RunOutcome>)>,
    by_model: BTreeMap<String, Usage>,
}

/// The fold: feed it the ledger in order, then `finish`.
#[derive(Debug)]
pub struct RunReport {
    query: RunQuery,
    tallies: Vec<Tally>,
    /// Run id → its tally, while the run is open.
    open: Map<String, usize>,
    /// Open holds of runs: hold id → (tally, model).
    holds: Map<String, (usize, String)>,
}

impl RunReport {
    pub fn new(query: RunQuery) -> RunReport {
        RunReport {
            query,
            tallies: Vec::new(),
            open: Map::default(),
            holds: Map::default(),
        }
    }

    /// The run's open tally, begun if new; it keeps its first scope.
    fn tally(&mut self, run: &str, scope: Option<&str>) -> usize {
        let i = match self.open.get(run) {
            Some(&i) => i,
            None => {
                self.tallies.push(Tally {
                    scope: None,
                    ended: None,
                    by_model: BTreeMap::new(),
                });
                self.open.insert(run.to_string(), self.tallies.len() - 1);
                self.tallies.len() - 1
            }
        };
        let t = &mut self.tallies[i];
        if t.scope.is_none() {
            t.scope = scope.map(str::to_string);
        }
        i
    }

    fn book(&mut self, tally: usize, model: &str, tokens: u64, cost: u64) {
        let u = self.tallies[tally]
            .by_model
            .entry(model.to_string())
            .or_default();
        u.add(&Usage {
            calls: 1,
            tokens,
            cost,
        });
    }

    pub fn add(&mut self, e: &Entry) {
        match &e.kind {
            EntryKind::Hold {
                id,
                scope,
                model,
                run: Some(run),
                ..
            } => {
                let t = self.tally(run, Some(scope));
                self.holds.insert(id.clone(), (t, model.clone()));
            }
            // A hold without a run under an id a run's hold had (the id
            // used again once the server forgot it): not that run's.
            EntryKind::Hold { id, run: None, .. } => {
                self.holds.remove(id);
            }
            EntryKind::Commit {
                id, usage, cost, ..
            } => {
                if let Some((t, model)) = self.holds.remove(id) {
                    let tokens = usage.input.saturating_add(usage.output);
                    self.book(t, &model, tokens, *cost);
                }
            }
            // An expired hold may still be committed (late): it stays.
            EntryKind::Release { id } => {
                self.holds.remove(id);
            }
            EntryKind::Step { run, scope, .. } | EntryKind::StepDenied { run, scope } => {
                self.tally(run, scope.as_deref());
            }
            EntryKind::Spend {
                scope,
                model,
                usage,
                cost,
                run: Some(run),
                ..
            } => {
                let t = self.tally(run, Some(scope));
                let tokens = usage.input.saturating_add(usage.output);
                self.book(t, model, tokens, *cost);
            }
            EntryKind::RunEnd { run, outcome } => {
                if let Some(t) = self.open.remove(run) {
                    self.tallies[t].ended = Some((e.ts, *outcome));
                }
            }
            _ => {}
        }
    }

    /// Holds of runs the fold still remembers (open, or expired and so
    /// still committable late): its memory, besides one tally per run.
    pub fn remembered_holds(&self) -> usize {
        self.holds.len()
    }

    pub fn finish(self) -> RunSummary {
        let q = &self.query;
        let in_scope = |t: &Tally| match (&q.scope, &t.scope) {
            (None, _) => true,
            (Some(p), Some(s)) => scope::is_within(s, p),
            (Some(_), None) => false,
        };
        let mut groups: BTreeMap<String, RunStats> = BTreeMap::new();
        let mut summary = RunSummary::default();
        for t in self.tallies.iter().filter(|t| in_scope(t)) {
            let Some((at, outcome)) = t.ended else {
                summary.open += 1;
                continue;
            };
            // A run with no call counts only if it said how it ended.
            if t.by_model.is_empty() && outcome.is_none() {
                continue;
            }
            if q.from.is_some_and(|f| at < f) || q.to.is_some_and(|to| at >= to) {
                continue;
            }
            let mut all = Usage::default();
            for u in t.by_model.values() {
                all.add(u);
            }
            summary.total.add(outcome, &all);
            let mut add = |key: String, u: &Usage| {
                let g = groups.entry(key.clone()).or_default();
                g.key = key;
                g.add(outcome, u);
            };
            match q.group {
                RunGroup::Scope { level } => {
                    let key = match &t.scope {
                        Some(s) => scope::top(s, level).to_string(),
                        None => String::new(),
                    };
                    add(key, &all);
                }
                RunGroup::Model if t.by_model.is_empty() => add(String::new(), &all),
                RunGroup::Model => {
                    for (model, u) in &t.by_model {
                        add(model.clone(), u);
                    }
                }
            }
        }
        summary.groups = groups.into_values().collect();
        summary
            .groups
            .sort_by(|a, b| b.usage.cost.cmp(&a.usage.cost).then(a.key.cmp(&b.key)));
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::limit::Dims;
    use crate::state::price::Usage as Tokens;

    #[test]
    fn merged_summaries_sum_every_figure_by_key() {
        let u = |calls, tokens, cost| Usage {
            calls,
            tokens,
            cost,
        };
        let stats = |key: &str, runs, ok, bad, none, usage, success| RunStats {
            key: key.to_string(),
            runs,
            succeeded: ok,
            failed: bad,
            unreported: none,
            usage,
            success_usage: success,
        };
        let a = RunSummary {
            groups: vec![stats("org:a", 2, 1, 1, 0, u(4, 40, 400), u(2, 20, 200))],
            total: stats("", 2, 1, 1, 0, u(4, 40, 400), u(2, 20, 200)),
            open: 1,
        };
        let b = RunSummary {
            groups: vec![
                stats("org:b", 1, 0, 0, 1, u(9, 90, 900), u(0, 0, 0)),
                stats("org:a", 1, 1, 0, 0, u(1, 10, 100), u(1, 10, 100)),
            ],
            total: stats("", 2, 1, 0, 1, u(10, 100, 1000), u(1, 10, 100)),
            open: 2,
        };
        let m = merge(vec![a, b]);
        assert_eq!(m.open, 3);
        assert_eq!(
            m.total,
            stats("", 4, 2, 1, 1, u(14, 140, 1400), u(3, 30, 300))
        );
        assert_eq!(
            m.groups,
            vec![
                stats("org:b", 1, 0, 0, 1, u(9, 90, 900), u(0, 0, 0)),
                stats("org:a", 3, 2, 1, 0, u(5, 50, 500), u(3, 30, 300)),
            ]
        );
    }

    fn e(seq: u64, kind: EntryKind) -> Entry {
        Entry {
            seq,
            ts: seq * 1000,
            kind,
        }
    }

    fn hold(id: &str, scope: &str, model: &str, run: Option<&str>) -> EntryKind {
        EntryKind::Hold {
            id: id.into(),
            scope: scope.into(),
            model: model.into(),
            input: 10,
            output: 10,
            ttl_ms: None,
            amounts: Dims::call(10, 10, 100),
            expires_at: u64::MAX,
            run: run.map(str::to_string),
        }
    }

    fn commit(id: &str, tokens: u64, cost: u64) -> EntryKind {
        EntryKind::Commit {
            id: id.into(),
            usage: Tokens {
                input: tokens,
                ..Default::default()
            },
            cost,
            late: false,
        }
    }

    fn end(run: &str, outcome: Option<RunOutcome>) -> EntryKind {
        EntryKind::RunEnd {
            run: run.into(),
            outcome,
        }
    }

    fn report(entries: &[EntryKind], query: RunQuery) -> RunSummary {
        let mut r = RunReport::new(query);
        for (i, k) in entries.iter().enumerate() {
            r.add(&e(i as u64 + 1, k.clone()));
        }
        r.finish()
    }

    fn by(group: RunGroup) -> RunQuery {
        RunQuery {
            group,
            scope: None,
            from: None,
            to: None,
        }
    }

    #[test]
    fn a_success_costs_what_every_run_spent_over_the_successes() {
        let ledger = [
            hold("h1", "org:a/agent:1", "gpt-4o", Some("r1")),
            hold("h2", "org:a/agent:1", "gpt-4o-mini", Some("r1")),
            hold("h3", "org:a/agent:2", "gpt-4o", Some("r2")),
            hold("plain", "org:a/agent:2", "gpt-4o", None),
            commit("h1", 100, 1_000),
            commit("plain", 999, 9_999),
            EntryKind::Release { id: "h2".into() },
            end("r1", Some(RunOutcome::Success)),
            // r2's hold is committed after r2 ended: still r2's.
            end("r2", Some(RunOutcome::Failure)),
            commit("h3", 50, 3_000),
            // r1 again is a new run, still open at the end.
            hold("h4", "org:a/agent:1", "gpt-4o", Some("r1")),
            // Steps only, no outcome: not a run of this report.
            EntryKind::Step {
                run: "s".into(),
                scope: Some("org:a".into()),
                sig: 1,
            },
            end("s", None),
            // An expired hold committed late still counts for its run.
            hold("h5", "org:z", "gpt-4o", Some("late")),
            EntryKind::Expire { id: "h5".into() },
            end("late", Some(RunOutcome::Success)),
            commit("h5", 1, 1),
        ];
        // Committed and released holds are forgotten; the open one (h4)
        // is remembered.
        let mut r = RunReport::new(by(RunGroup::Model));
        for (i, k) in ledger.iter().enumerate() {
            r.add(&e(i as u64 + 1, k.clone()));
        }
        assert_eq!(r.remembered_holds(), 1);
        let s = report(&ledger, by(RunGroup::Scope { level: 1 }));
        assert_eq!(s.open, 1);
        assert_eq!(s.groups.len(), 2);
        assert_eq!(
            (s.groups[1].key.as_str(), s.groups[1].usage.cost),
            ("org:z", 1)
        );
        let g = &s.groups[0];
        assert_eq!(g.key, "org:a");
        assert_eq!((g.runs, g.succeeded, g.failed, g.unreported), (2, 1, 1, 0));
        assert_eq!(
            g.usage,
            Usage {
                calls: 2,
                tokens: 150,
                cost: 4_000
            }
        );
        assert_eq!(g.success_rate_ppm(), Some(500_000));
        assert_eq!(g.per_run(), Some((2_000, 75)));
        assert_eq!(g.per_successful_run(), Some((1_000, 100)));
        assert_eq!(g.per_success(), Some((4_000, 150)));
        assert_eq!(s.total.runs, 3);

        // By model: r1 used gpt-4o only (its mini hold was released).
        let s = report(&ledger, by(RunGroup::Model));
        let keys: Vec<_> = s.groups.iter().map(|g| (g.key.as_str(), g.runs)).collect();
        assert_eq!(keys, vec![("gpt-4o", 3)]);

        // Scope and time filters: r2 ended at 9 s.
        let mut q = by(RunGroup::Scope { level: 2 });
        q.scope = Some("org:a/agent:2".into());
        let s = report(&ledger, q.clone());
        assert_eq!((s.total.runs, s.total.failed, s.open), (1, 1, 0));
        q.from = Some(9_001);
        assert_eq!(report(&ledger, q).total.runs, 0);
    }

    #[test]
    fn a_run_that_ends_with_an_outcome_and_no_call_still_counts() {
        let ledger = [
            EntryKind::StepDenied {
                run: "quick".into(),
                scope: None,
            },
            end("quick", Some(RunOutcome::Failure)),
            EntryKind::Spend {
                id: None,
                scope: "org:b".into(),
                model: "m".into(),
                usage: Tokens {
                    input: 5,
                    output: 5,
                    ..Default::default()
                },
                cost: 7,
                run: Some("slow".into()),
            },
            end("slow", None),
        ];
        let s = report(&ledger, by(RunGroup::Model));
        let got: Vec<_> = (s.groups.iter())
            .map(|g| (g.key.as_str(), g.runs, g.failed, g.unreported, g.usage.cost))
            .collect();
        assert_eq!(got, vec![("m", 1, 0, 1, 7), ("", 1, 1, 0, 0)]);
        assert_eq!(s.total.success_rate_ppm(), Some(0));
        assert_eq!(s.total.per_success(), None);
        // A run with no scope is outside every scope filter.
        let mut q = by(RunGroup::Scope { level: 1 });
        q.scope = Some("org:b".into());
        assert_eq!(report(&ledger, q).total.runs, 1);
    }
}
