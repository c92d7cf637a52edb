//! Rollups (issue #29): the spend and runs reports' figures kept as the
//! ledger is written, so a report costs what it returns, not what
//! happened. A pure fold like the reports' own (`spend_report.rs`,
//! `run_report.rs`): entries in, in ledger order; it remembers the last
//! seq it folded, so a rollup persisted at seq N resumes with entry N + 1,
//! and `ledger verify` checks a persisted one against a fold of the whole
//! ledger.
//!
//! **Invariant:** for every query whose time range is whole UTC hours, the
//! rollup's answer equals the full fold's (`SpendReport`, `RunReport`) over
//! the same entries — checked on every ledger the model test generates,
//! and across a persist-and-resume in the middle.
//!
//! Cells are per scope (at every level of its path), UTC hour and model.
//! Each scope keeps two figures: what was booked on exactly it (`here`) and
//! at or below it (`all`), so a report grouped by scope level `L` reads
//! the `all` cells of the level-`L` scopes and the `here` cells of the
//! shallower ones (a scope with fewer segments than `L` is its own group).
//! Spend cells: requests, input, output, cached and cache-write tokens,
//! cost, savings of cache hits, grants (RESERVEs granted; denials are not
//! ledger entries, `/metrics` counts them). Run cells, by the hour a run
//! ended: runs, outcomes, calls, tokens and cost, of all runs and of the
//! successful ones. A COMMIT that lands after its run ended (a hold
//! committed late, or one reserved in the run and settled after RUN.END)
//! takes the run's contribution out of its cells and puts it back with the
//! call, so the figures stay the full fold's.
//!
//! Memory: the cells (scopes × hours × models that had spend), the open
//! holds' scope, model and run, expired holds' for [`LATE_COMMIT_MS`] (a
//! late COMMIT is counted), and the runs still open or with holds out.

use std::collections::{BTreeMap, VecDeque};

use super::price::Usage;
use super::run_report::{RunGroup, RunQuery, RunStats, RunSummary, Usage as RunUsage};
use super::spend_report::{SpendGroup, SpendQuery, SpendTally};
use super::{scope, Entry, EntryKind, Map, RunOutcome};

pub const HOUR_MS: u64 = 3_600_000;

/// How long after a hold expired a late COMMIT of it is still counted.
/// The server refuses an `--id-retention` longer than this (a hold it
/// still remembers can be committed late), so the rollup counts every
/// COMMIT the server accepts.
pub const LATE_COMMIT_MS: u64 = 7 * 24 * HOUR_MS;

/// The model key of a cache hit's savings (no model).
const NO_MODEL: u32 = u32::MAX;
/// The model key of a run's figures over all its models.
const ALL_MODELS: u32 = u32::MAX - 1;

/// The UTC hour of a timestamp (ms), as cells count it.
pub fn hour_of(ts: u64) -> u32 {
    (ts / HOUR_MS).min(u32::MAX as u64 - 1) as u32
}

/// Spend booked in one cell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpendCell {
    pub requests: u64,
    pub input: u64,
    pub output: u64,
    pub cached: u64,
    pub cache_write: u64,
    /// nano-USD
    pub cost: u64,
    /// nano-USD saved by cache hits.
    pub saved: u64,
    /// RESERVEs granted.
    pub grants: u64,
    /// Spend entries booked in it (a report lists a group any fell in,
    /// even one of zero figures; a grant is not spend).
    pub entries: u64,
}

impl SpendCell {
    /// One model call (a COMMIT, a SPEND).
    fn call(usage: &Usage, cost: u64) -> SpendCell {
        SpendCell {
            requests: 1,
            input: usage.input,
            output: usage.output,
            cached: usage.cached,
            cache_write: usage.cache_write,
            cost,
            ..SpendCell::default()
        }
    }

    fn add(&mut self, o: &SpendCell) {
        self.entries = self.entries.saturating_add(o.entries);
        self.requests = self.requests.saturating_add(o.requests);
        self.input = self.input.saturating_add(o.input);
        self.output = self.output.saturating_add(o.output);
        self.cached = self.cached.saturating_add(o.cached);
        self.cache_write = self.cache_write.saturating_add(o.cache_write);
        self.cost = self.cost.saturating_add(o.cost);
        self.saved = self.saved.saturating_add(o.saved);
        self.grants = self.grants.saturating_add(o.grants);
    }

    fn tally(&self) -> SpendTally {
        SpendTally {
            cost: self.cost,
            tokens: self.input.saturating_add(self.output),
            requests: self.requests,
            saved: self.saved,
        }
    }
}

/// Runs that ended in one cell, as `run_report::RunStats` counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunCell {
    pub runs: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub unreported: u64,
    pub usage: RunUsage,
    pub success_usage: RunUsage,
}

impl RunCell {
    fn of(outcome: Option<RunOutcome>, u: &RunUsage) -> RunCell {
        let mut c = RunCell {
            runs: 1,
            usage: *u,
            ..RunCell::default()
        };
        match outcome {
            Some(RunOutcome::Success) => {
                c.succeeded = 1;
                c.success_usage = *u;
            }
            Some(RunOutcome::Failure) => c.failed = 1,
            None => c.unreported = 1,
        }
        c
    }

    /// Adds `o` (or takes it out: a run's contribution being replaced).
    fn apply(&mut self, o: &RunCell, add: bool) {
        let f = |a: &mut u64, b: u64| {
            *a = if add {
                a.wrapping_add(b)
            } else {
                a.wrapping_sub(b)
            }
        };
        f(&mut self.runs, o.runs);
        f(&mut self.succeeded, o.succeeded);
        f(&mut self.failed, o.failed);
        f(&mut self.unreported, o.unreported);
        for (a, b) in [
            (&mut self.usage, &o.usage),
            (&mut self.success_usage, &o.success_usage),
        ] {
            f(&mut a.calls, b.calls);
            f(&mut a.tokens, b.tokens);
            f(&mut a.cost, b.cost);
        }
    }

    fn stats(&self, key: String) -> RunStats {
        RunStats {
            key,
            runs: self.runs,
            succeeded: self.succeeded,
            failed: self.failed,
            unreported: self.unreported,
            usage: self.usage,
            success_usage: self.success_usage,
        }
    }
}

/// A scope's figures: booked on exactly it, and at or below it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pair<T> {
    pub here: T,
    pub all: T,
}

/// What a hold's COMMIT is booked to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldMemo {
    pub scope: u32,
    pub model: u32,
    /// The run it was reserved in (a run number, `RunTally`).
    pub run: Option<u64>,
    /// The seq of its Hold entry (a reused id is another hold).
    pub seq: u64,
}

/// A run still open, or ended with holds still out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunTally {
    /// The scope of its first step or call that named one.
    pub scope: Option<u32>,
    pub by_model: BTreeMap<u32, RunUsage>,
    /// When it ended (its hour) and how.
    pub ended: Option<(u32, Option<RunOutcome>)>,
    /// Its holds not yet committed, released or forgotten.
    pub holds: u32,
}

/// A rollup keyed by names (`Rollup::same_as`).
#[derive(PartialEq, Eq)]
struct Canonical<'a> {
    spend: BTreeMap<(&'a str, u32, &'a str), Pair<SpendCell>>,
    runs: BTreeMap<(&'a str, u32, &'a str), Pair<RunCell>>,
    holds: BTreeMap<&'a str, (&'a str, &'a str, Option<u64>, u64)>,
    expired: Vec<(u64, &'a str, u64)>,
    open: BTreeMap<&'a str, u64>,
    tallies: BTreeMap<u64, CanonicalTally<'a>>,
    next_run: u64,
}

type CanonicalTally<'a> = (
    Option<&'a str>,
    BTreeMap<&'a str, RunUsage>,
    Option<(u32, Option<RunOutcome>)>,
    u32,
);

/// The fold. `Default` is the empty ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollup {
    /// The last seq folded (0: none).
    pub seq: u64,
    /// Interned scopes (every level of every scope booked) and models; the
    /// scope "" stands for a run that never named one.
    pub scopes: Vec<String>,
    pub models: Vec<String>,
    pub(crate) scope_ids: Map<String, u32>,
    pub(crate) model_ids: Map<String, u32>,
    /// By scope id: its parent's (None at the top).
    pub(crate) parents: Vec<Option<u32>>,
    /// By scope id: (hour, model) → figures.
    pub spend: Vec<BTreeMap<(u32, u32), Pair<SpendCell>>>,
    pub runs: Vec<BTreeMap<(u32, u32), Pair<RunCell>>>,
    pub holds: Map<String, HoldMemo>,
    /// Expired holds, oldest first: (when, id, the hold's seq).
    pub expired: VecDeque<(u64, String, u64)>,
    /// Open runs: id → run number.
    pub open: Map<String, u64>,
    pub tallies: Map<u64, RunTally>,
    pub next_run: u64,
}

impl Rollup {
    pub fn new() -> Rollup {
        Rollup::default()
    }

    fn scope_id(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.scope_ids.get(s) {
            return id;
        }
        // Its parent first: a scope's ancestors always have smaller ids.
        let parent = s.rfind('/').map(|i| self.scope_id(&s[..i]));
        let id = self.scopes.len() as u32;
        self.scopes.push(s.to_string());
        self.scope_ids.insert(s.to_string(), id);
        self.parents.push(parent);
        self.spend.push(BTreeMap::new());
        self.runs.push(BTreeMap::new());
        id
    }

    fn model_id(&mut self, m: &str) -> u32 {
        if let Some(&id) = self.model_ids.get(m) {
            return id;
        }
        let id = self.models.len() as u32;
        self.models.push(m.to_string());
        self.model_ids.insert(m.to_string(), id);
        id
    }

    /// Rebuilds the id maps after the tables were loaded (a persisted
    /// rollup: `store::format::rollup`).
    pub fn reindex(&mut self) {
        self.scope_ids = (self.scopes.iter().enumerate())
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
        self.parents = (self.scopes.iter())
            .map(|s| {
                s.rfind('/')
                    .and_then(|i| self.scope_ids.get(&s[..i]).copied())
            })
            .collect();
        self.model_ids = (self.models.iter().enumerate())
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
    }

    /// Whether `other` holds the same figures and memory, whatever ids
    /// each gave its scopes and models (two builds may intern them in
    /// another order): what `ledger verify` compares.
    pub fn same_as(&self, other: &Rollup) -> bool {
        self.seq == other.seq && self.canonical() == other.canonical()
    }

    /// Everything the rollup holds, keyed by names instead of ids.
    fn canonical(&self) -> Canonical<'_> {
        let scope = |id: u32| self.scopes[id as usize].as_str();
        let model = |id: u32| match id {
            NO_MODEL => "\u{0}no model",
            ALL_MODELS => "\u{0}all models",
            m => self.models[m as usize].as_str(),
        };
        let cells = |t: &Vec<BTreeMap<(u32, u32), Pair<SpendCell>>>| {
            let mut out = BTreeMap::new();
            for (id, cells) in t.iter().enumerate() {
                for (&(h, m), p) in cells {
                    out.insert((scope(id as u32), h, model(m)), *p);
                }
            }
            out
        };
        let mut runs = BTreeMap::new();
        for (id, cells) in self.runs.iter().enumerate() {
            for (&(h, m), p) in cells {
                runs.insert((scope(id as u32), h, model(m)), *p);
            }
        }
        Canonical {
            spend: cells(&self.spend),
            runs,
            holds: (self.holds.iter())
                .map(|(id, m)| (id.as_str(), (scope(m.scope), model(m.model), m.run, m.seq)))
                .collect(),
            expired: (self.expired.iter())
                .map(|(t, id, seq)| (*t, id.as_str(), *seq))
                .collect(),
            open: self.open.iter().map(|(id, n)| (id.as_str(), *n)).collect(),
            tallies: (self.tallies.iter())
                .map(|(n, t)| {
                    let by_model = t.by_model.iter().map(|(m, u)| (model(*m), *u)).collect();
                    (*n, (t.scope.map(scope), by_model, t.ended, t.holds))
                })
                .collect(),
            next_run: self.next_run,
        }
    }

    /// Scope `id` and each of its ancestors, the scope first.
    fn chain_ids(&self, id: u32) -> impl Iterator<Item = u32> + '_ {
        std::iter::successors(Some(id), |&i| self.parents[i as usize])
    }

    fn book_spend(&mut self, scope: u32, hour: u32, model: u32, cell: &SpendCell) {
        // A grant is kept, but is not spend: it makes no report group.
        let entries = u64::from(cell.grants == 0);
        let cell = &SpendCell { entries, ..*cell };
        let mut at = Some(scope);
        while let Some(id) = at {
            let p = self.spend[id as usize].entry((hour, model)).or_default();
            if id == scope {
                p.here.add(cell);
            }
            p.all.add(cell);
            at = self.parents[id as usize];
        }
    }

    /// Folds one entry (the next in the ledger).
    pub fn add(&mut self, e: &Entry) {
        debug_assert!(
            e.seq > self.seq,
            "entries in order: {} after {}",
            e.seq,
            self.seq
        );
        self.seq = e.seq;
        let hour = hour_of(e.ts);
        self.forget_expired(e.ts);
        match &e.kind {
            EntryKind::Hold {
                id,
                scope,
                model,
                run,
                ..
            } => {
                let m = self.model_id(model);
                let grant = SpendCell {
                    grants: 1,
                    ..SpendCell::default()
                };
                let sid = self.scope_id(scope);
                self.book_spend(sid, hour, m, &grant);
                let run = run.as_ref().map(|r| {
                    let n = self.tally(r, Some(scope));
                    self.tallies.get_mut(&n).expect("open").holds += 1;
                    n
                });
                let memo = HoldMemo {
                    scope: sid,
                    model: m,
                    run,
                    seq: e.seq,
                };
                if let Some(old) = self.holds.insert(id.clone(), memo) {
                    self.drop_hold(&old);
                }
            }
            EntryKind::Commit {
                id, usage, cost, ..
            } => {
                let Some(memo) = self.holds.remove(id) else {
                    return;
                };
                let cell = SpendCell::call(usage, *cost);
                self.book_spend(memo.scope, hour, memo.model, &cell);
                if let Some(n) = memo.run {
                    let tokens = usage.input.saturating_add(usage.output);
                    self.book_run(n, memo.model, tokens, *cost);
                    self.drop_hold(&memo);
                }
            }
            EntryKind::Release { id } => {
                if let Some(memo) = self.holds.remove(id) {
                    self.drop_hold(&memo);
                }
            }
            EntryKind::Expire { id } => {
                if let Some(memo) = self.holds.get(id) {
                    self.expired.push_back((e.ts, id.clone(), memo.seq));
                }
            }
            EntryKind::Spend {
                scope,
                model,
                usage,
                cost,
                run,
                ..
            } => {
                let m = self.model_id(model);
                let cell = SpendCell::call(usage, *cost);
                let sid = self.scope_id(scope);
                self.book_spend(sid, hour, m, &cell);
                if let Some(r) = run {
                    let n = self.tally(r, Some(scope));
                    let tokens = usage.input.saturating_add(usage.output);
                    self.book_run(n, m, tokens, *cost);
                }
            }
            EntryKind::Saved { scope, cost } => {
                let cell = SpendCell {
                    saved: *cost,
                    ..SpendCell::default()
                };
                let sid = self.scope_id(scope);
                self.book_spend(sid, hour, NO_MODEL, &cell);
            }
            EntryKind::Step { run, scope, .. } | EntryKind::StepDenied { run, scope } => {
                self.tally(run, scope.as_deref());
            }
            EntryKind::RunEnd { run, outcome } => {
                if let Some(n) = self.open.remove(run) {
                    let t = self.tallies.get_mut(&n).expect("open");
                    t.ended = Some((hour, *outcome));
                    self.contribute(n, true);
                    self.release_tally(n);
                }
            }
            _ => {}
        }
    }

    /// Expired holds whose late COMMIT can no longer come: forgotten.
    fn forget_expired(&mut self, now: u64) {
        while let Some((at, _, _)) = self.expired.front() {
            if at.saturating_add(LATE_COMMIT_MS) > now {
                break;
            }
            let (_, id, seq) = self.expired.pop_front().expect("front");
            if self.holds.get(&id).is_some_and(|m| m.seq == seq) {
                let memo = self.holds.remove(&id).expect("present");
                self.drop_hold(&memo);
            }
        }
    }

    /// A hold of a run is settled or forgotten: the run keeps one fewer.
    fn drop_hold(&mut self, memo: &HoldMemo) {
        if let Some(n) = memo.run {
            if let Some(t) = self.tallies.get_mut(&n) {
                t.holds = t.holds.saturating_sub(1);
            }
            self.release_tally(n);
        }
    }

    /// An ended run with no holds out needs no memory.
    fn release_tally(&mut self, n: u64) {
        if self
            .tallies
            .get(&n)
            .is_some_and(|t| t.ended.is_some() && t.holds == 0)
        {
            self.tallies.remove(&n);
        }
    }

    /// The open run `run`'s number, begun if new; it keeps its first scope.
    fn tally(&mut self, run: &str, scope: Option<&str>) -> u64 {
        let n = match self.open.get(run) {
            Some(&n) => n,
            None => {
                let n = self.next_run;
                self.next_run += 1;
                self.open.insert(run.to_string(), n);
                self.tallies.insert(n, RunTally::default());
                n
            }
        };
        if self.tallies[&n].scope.is_none() {
            if let Some(s) = scope {
                let id = self.scope_id(s);
                self.tallies.get_mut(&n).expect("open").scope = Some(id);
            }
        }
        n
    }

    /// A call of run `n` on `model`: an ended run's figures in the cells
    /// are replaced by its figures with the call.
    fn book_run(&mut self, n: u64, model: u32, tokens: u64, cost: u64) {
        let ended = self.tallies.get(&n).is_some_and(|t| t.ended.is_some());
        if ended {
            self.contribute(n, false);
        }
        if let Some(t) = self.tallies.get_mut(&n) {
            let u = t.by_model.entry(model).or_default();
            u.calls = u.calls.saturating_add(1);
            u.tokens = u.tokens.saturating_add(tokens);
            u.cost = u.cost.saturating_add(cost);
        }
        if ended {
            self.contribute(n, true);
        }
    }

    /// Adds (or takes out) ended run `n`'s figures to the cells of its end
    /// hour: under all models, and under each model it called (the
    /// model "" when it called none); a run with no call and no outcome
    /// counts nowhere, as in the full fold.
    fn contribute(&mut self, n: u64, add: bool) {
        let Some(t) = self.tallies.get(&n) else {
            return;
        };
        let Some((hour, outcome)) = t.ended else {
            return;
        };
        if t.by_model.is_empty() && outcome.is_none() {
            return;
        }
        let by_model: Vec<(u32, RunUsage)> = t.by_model.iter().map(|(m, u)| (*m, *u)).collect();
        let scope = t.scope;
        let scope = match scope {
            Some(id) => id,
            None => self.scope_id(""),
        };
        let mut all = RunUsage::default();
        for (_, u) in &by_model {
            all.calls = all.calls.saturating_add(u.calls);
            all.tokens = all.tokens.saturating_add(u.tokens);
            all.cost = all.cost.saturating_add(u.cost);
        }
        let mut cells = vec![(ALL_MODELS, RunCell::of(outcome, &all))];
        if by_model.is_empty() {
            cells.push((self.model_id(""), RunCell::of(outcome, &all)));
        }
        cells.extend(by_model.iter().map(|(m, u)| (*m, RunCell::of(outcome, u))));
        let ids: Vec<u32> = self.chain_ids(scope).collect();
        for id in ids {
            for (m, c) in &cells {
                let p = self.runs[id as usize].entry((hour, *m)).or_default();
                if id == scope {
                    p.here.apply(c, add);
                }
                p.all.apply(c, add);
            }
        }
    }

    /// The scopes a report over `filter` reads, with the group key each
    /// gives at `level` (None: not grouped by scope) and whether its `all`
    /// (else its `here`) figures count: every scope within the filter
    /// whose level is the group level, and the shallower ones for what was
    /// booked on exactly them; without a filter, from the top.
    fn sources(&self, filter: Option<&str>, level: Option<usize>) -> Vec<(u32, String, bool)> {
        let filter = filter
            .map(|p| p.trim_end_matches('/'))
            .filter(|p| !p.is_empty());
        let depth = |s: &str| {
            if s.is_empty() {
                0
            } else {
                s.matches('/').count() + 1
            }
        };
        let Some(level) = level else {
            // Every figure once: the filter's scope, or every top (and the
            // runs that named none).
            return match filter {
                Some(p) => (self.scope_ids.get(p).map(|&id| (id, String::new(), true)))
                    .into_iter()
                    .collect(),
                None => (self.scopes.iter().enumerate())
                    .filter(|(_, s)| depth(s) <= 1)
                    .map(|(i, _)| (i as u32, String::new(), true))
                    .collect(),
            };
        };
        let floor = filter.map_or(0, depth);
        if let Some(p) = filter {
            if level <= floor {
                return (self.scope_ids.get(p))
                    .map(|&id| (id, scope::top(p, level).to_string(), true))
                    .into_iter()
                    .collect();
            }
        }
        (self.scopes.iter().enumerate())
            .filter(|(_, s)| filter.is_none_or(|p| !s.is_empty() && scope::is_within(s, p)))
            .filter_map(|(i, s)| {
                let d = depth(s);
                match d.cmp(&level) {
                    std::cmp::Ordering::Equal => Some((i as u32, s.clone(), true)),
                    std::cmp::Ordering::Less if d >= floor => Some((i as u32, s.clone(), false)),
                    _ => None,
                }
            })
            .collect()
    }

    /// `SpendReport`'s answer for `q`, whose `from` and `to` must be whole
    /// hours (the admin API rounds them down).
    pub fn spend(&self, q: &SpendQuery) -> (Vec<(String, SpendTally)>, SpendTally) {
        let (from, to) = hours(q.from, q.to);
        let level = match q.group {
            SpendGroup::Scope { level } => Some(level),
            _ => None,
        };
        let mut groups: BTreeMap<String, SpendTally> = BTreeMap::new();
        for (id, key, all) in self.sources(q.scope.as_deref(), level) {
            for (&(hour, model), p) in self.spend[id as usize].range((from, 0)..(to, 0)) {
                let cell = if all { &p.all } else { &p.here };
                if cell.entries == 0 {
                    continue;
                }
                let key = match q.group {
                    SpendGroup::Scope { .. } => key.clone(),
                    SpendGroup::Model if model == NO_MODEL => continue,
                    SpendGroup::Model => self.models[model as usize].clone(),
                    SpendGroup::Day => utc(hour, "%Y-%m-%d"),
                    SpendGroup::Hour => utc(hour, "%Y-%m-%dT%H:00Z"),
                };
                groups.entry(key).or_default().add(&cell.tally());
            }
        }
        let mut rows: Vec<(String, SpendTally)> = groups.into_iter().collect();
        rows.sort_by(|a, b| b.1.cost.cmp(&a.1.cost).then_with(|| a.0.cmp(&b.0)));
        let mut total = SpendTally::default();
        for (_, g) in &rows {
            total.add(g);
        }
        (rows, total)
    }

    /// `RunReport`'s answer for `q` (whole hours, as `spend`).
    pub fn runs(&self, q: &RunQuery) -> RunSummary {
        let (from, to) = hours(q.from, q.to);
        let filter = q
            .scope
            .as_deref()
            .map(|p| p.trim_end_matches('/'))
            .filter(|p| !p.is_empty());
        let mut total = RunCell::default();
        for (id, _, _) in self.sources(filter, None) {
            for (_, p) in (self.runs[id as usize].range((from, 0)..(to, 0)))
                .filter(|((_, m), _)| *m == ALL_MODELS)
            {
                total.apply(&p.all, true);
            }
        }
        let mut groups: BTreeMap<String, RunCell> = BTreeMap::new();
        let level = match q.group {
            RunGroup::Scope { level } => Some(level),
            RunGroup::Model => None,
        };
        for (id, key, all) in self.sources(filter, level) {
            for (&(_, model), p) in self.runs[id as usize].range((from, 0)..(to, 0)) {
                let by_scope = level.is_some();
                if by_scope != (model == ALL_MODELS) {
                    continue;
                }
                let key = match by_scope {
                    true => key.clone(),
                    false => self.models[model as usize].clone(),
                };
                let cell = if all { &p.all } else { &p.here };
                // Every run counted here was taken out again.
                if cell.runs == 0 {
                    continue;
                }
                groups.entry(key).or_default().apply(cell, true);
            }
        }
        let mut summary = RunSummary {
            groups: groups.into_iter().map(|(k, c)| c.stats(k)).collect(),
            total: total.stats(String::new()),
            open: 0,
        };
        summary.open = (self.open.values())
            .filter(|n| {
                let s = self.tallies[n]
                    .scope
                    .map(|id| self.scopes[id as usize].as_str());
                match (filter, s) {
                    (None, _) => true,
                    (Some(p), Some(s)) => scope::is_within(s, p),
                    (Some(_), None) => false,
                }
            })
            .count() as u64;
        summary
            .groups
            .sort_by(|a, b| b.usage.cost.cmp(&a.usage.cost).then(a.key.cmp(&b.key)));
        summary
    }
}

/// A query's `[from, to)` in hours (ms rounded down to the hour).
fn hours(from: Option<u64>, to: Option<u64>) -> (u32, u32) {
    let from = from.map_or(0, hour_of);
    let to = to.map_or(u32::MAX, hour_of);
    (from, to.max(from))
}

fn utc(hour: u32, format: &str) -> String {
    chrono::DateTime::from_timestamp_millis((hour as u64 * HOUR_MS) as i64)
        .map_or(String::new(), |t| t.format(format).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spend(seq: u64, scope: &str, input: u64) -> Entry {
        Entry {
            seq,
            ts: seq * 1_000,
            kind: EntryKind::Spend {
                id: None,
                scope: scope.into(),
                model: "m".into(),
                usage: Usage {
                    input,
                    ..Usage::default()
                },
                cost: input,
                run: None,
            },
        }
    }

    #[test]
    fn the_same_figures_under_other_ids_are_the_same_rollup_and_others_are_not() {
        let mut a = Rollup::new();
        a.add(&spend(1, "org:a/team:b", 5));
        a.add(&spend(2, "org:c", 7));
        // The same figures, the scopes interned in another order.
        let mut b = Rollup::new();
        b.scope_id("org:c");
        b.add(&spend(1, "org:a/team:b", 5));
        b.add(&spend(2, "org:c", 7));
        assert_ne!(a.scope_ids, b.scope_ids, "other ids");
        assert!(a.same_as(&b) && b.same_as(&a));
        let mut c = a.clone();
        c.add(&spend(3, "org:c", 0));
        assert!(!a.same_as(&c), "another entry, even of nothing");
        let mut d = b.clone();
        d.seq = 9;
        assert!(!b.same_as(&d), "another seq");
    }

    fn e(seq: u64, ts: u64, kind: EntryKind) -> Entry {
        Entry { seq, ts, kind }
    }

    fn hold(id: &str, run: Option<&str>) -> EntryKind {
        EntryKind::Hold {
            id: id.into(),
            scope: "org:a".into(),
            model: "m".into(),
            input: 1,
            output: 0,
            ttl_ms: None,
            amounts: crate::state::limit::Dims::call(1, 0, 1),
            expires_at: u64::MAX,
            run: run.map(str::to_string),
        }
    }

    fn commit(id: &str) -> EntryKind {
        EntryKind::Commit {
            id: id.into(),
            usage: Usage {
                input: 1,
                ..Usage::default()
            },
            cost: 1,
            late: true,
        }
    }

    /// What the fold remembers is bounded: a run's memory goes with its
    /// end and its last hold, an expired hold's after LATE_COMMIT_MS (a
    /// COMMIT later than that is not counted), and an id used again is
    /// another hold, which the old one's expiry does not forget.
    #[test]
    fn memory_is_released_with_runs_holds_and_old_expiries() {
        let mut r = Rollup::new();
        r.add(&e(1, 1_000, hold("h1", Some("r1"))));
        r.add(&e(2, 1_000, hold("h2", Some("r1"))));
        r.add(&e(
            3,
            1_000,
            EntryKind::RunEnd {
                run: "r1".into(),
                outcome: None,
            },
        ));
        assert_eq!(r.tallies.len(), 1, "two holds out");
        r.add(&e(4, 1_000, EntryKind::Release { id: "h2".into() }));
        assert_eq!(r.tallies.values().next().unwrap().holds, 1);
        r.add(&e(5, 1_000, commit("h1")));
        assert!(
            r.tallies.is_empty() && r.holds.is_empty(),
            "{:?}",
            r.tallies
        );
        // Expired at 2 s: kept until 2 s + LATE_COMMIT_MS.
        r.add(&e(6, 1_000, hold("h3", None)));
        r.add(&e(7, 2_000, EntryKind::Expire { id: "h3".into() }));
        r.add(&e(8, 2_000 + LATE_COMMIT_MS - 1, hold("x", None)));
        assert!(r.holds.contains_key("h3"));
        r.add(&e(9, 2_000 + LATE_COMMIT_MS, hold("y", None)));
        assert!(!r.holds.contains_key("h3"), "forgotten");
        let before = r.spend.clone();
        r.add(&e(10, 2_000 + LATE_COMMIT_MS, commit("h3")));
        assert_eq!(
            r.spend, before,
            "a COMMIT the server would refuse books nothing"
        );
        // An id used again after an expiry: the new hold stays.
        r.add(&e(
            11,
            3 * LATE_COMMIT_MS,
            EntryKind::Expire { id: "x".into() },
        ));
        r.add(&e(12, 3 * LATE_COMMIT_MS, hold("x", None)));
        r.add(&e(13, 5 * LATE_COMMIT_MS, hold("z", None)));
        assert_eq!(r.holds.get("x").map(|m| m.seq), Some(12));
    }

    #[test]
    fn a_cache_hit_books_its_savings_under_no_model() {
        let mut r = Rollup::new();
        r.add(&e(
            1,
            1_000,
            EntryKind::Saved {
                scope: "org:a".into(),
                cost: 9,
            },
        ));
        let cells = &r.spend[r.scope_ids["org:a"] as usize];
        assert_eq!(cells.get(&(0, NO_MODEL)).map(|p| p.here.saved), Some(9));
    }

    #[test]
    fn a_cell_keeps_every_part_of_a_calls_usage() {
        let mut r = Rollup::new();
        let mut e = spend(1, "org:a", 10);
        if let EntryKind::Spend { usage, .. } = &mut e.kind {
            *usage = Usage {
                input: 10,
                output: 4,
                cached: 3,
                cache_write: 2,
            };
        }
        r.add(&e);
        let c = r.spend[r.scope_ids["org:a"] as usize]
            .values()
            .next()
            .unwrap()
            .all;
        assert_eq!(
            (
                c.requests,
                c.input,
                c.output,
                c.cached,
                c.cache_write,
                c.cost
            ),
            (1, 10, 4, 3, 2, 10)
        );
    }

    #[test]
    fn a_scope_is_booked_at_every_level_here_only_on_itself() {
        let mut r = Rollup::new();
        r.add(&spend(1, "org:a/team:b/agent:c", 5));
        let id = |s: &str| r.scope_ids[s] as usize;
        let cell = |s: &str| r.spend[id(s)].values().next().copied().unwrap();
        assert_eq!((cell("org:a").here.cost, cell("org:a").all.cost), (0, 5));
        assert_eq!(cell("org:a/team:b").all.input, 5);
        assert_eq!(cell("org:a/team:b/agent:c").here.cost, 5);
        assert_eq!(r.parents[id("org:a/team:b")], Some(id("org:a") as u32));
        assert_eq!(hour_of(HOUR_MS * 3 + 1), 3);
    }
}
