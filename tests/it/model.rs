//! Model-based property test of the state machine. Random sequences of budget
//! sets and deletes, reserves, commits, releases, spends, price changes and
//! clock advances over a small tree of scopes run against `State` and against
//! a reference model that keeps every charge in a log and recomputes each
//! figure from scratch. Every reply and every balance must agree, and after
//! every step:
//! - held = the sum of the open holds at or below each scope, per dimension;
//! - a calendar or TOTAL limit's used = the sum of the settled amounts in
//!   its window, and open holds count on top (`used + held`);
//! - a rolling limit's used counts each request when it was made: an open
//!   hold's amounts at its reservation time; a settled one's actual usage
//!   there while that time is still in the window (the unused part came
//!   back at once), or, settled after it rolled off, only its overrun, at
//!   the settlement; an expired hold gives its amounts back if it expired
//!   while still in the window;
//! - no grant takes a limit past its amount;
//! - a denial names a limit that really is exceeded, says why (`reason`:
//!   the limit itself, usage, or open holds) and its retry_after_ms is
//!   exact: the request fits at that moment and not a millisecond before,
//!   if nothing else happens (open holds expiring at their time; a rolling
//!   window's holds left open).
//!
//! At the end, replaying the emitted ledger into a fresh state, and a
//! snapshot round trip, both give the same state.

use std::collections::{BTreeMap, HashMap};

use chrono::{Datelike, TimeZone};
use chrono_tz::Tz;
use proptest::prelude::*;
use spendb::state::limit::{Dim, LimitSpec, Period, Window, Zone, ROLLING_BUCKETS};
use spendb::state::price::{Price, Usage};
use spendb::state::run_report::{RunGroup, RunQuery, RunReport};
use spendb::state::{Command, Config, Entry, OutputAsk, ReserveArgs, RunOutcome, State, Value};
use spendb::store::recovery::{decode_snapshot, encode_snapshot};

const T0: u64 = 1_795_305_600_000; // 2026-11-22T00:00:00Z
/// Where a run's clock starts: an ordinary day, or an hour or so before a
/// daylight-saving change of one of the zones above (its hour and day
/// advances then cross local days of 23 and 25 hours).
const STARTS: &[u64] = &[
    T0,
    1_805_014_800_000, // 2027-03-14T09:00:00Z, Los Angeles springs forward at 10:00Z
    1_825_574_400_000, // 2027-11-07T08:00:00Z, Los Angeles falls back at 09:00Z
    1_806_804_000_000, // 2027-04-04T02:00:00Z, Santiago falls back at 03:00Z
    1_820_113_200_000, // 2027-09-05T03:00:00Z, Santiago skips its midnight at 04:00Z
    1_804_996_800_000, // 2027-03-14T04:00:00Z, Havana skips its midnight at 05:00Z
    1_825_556_400_000, // 2027-11-07T03:00:00Z, Havana's midnight happens twice (04:00Z, 05:00Z)
    1_806_483_600_000, // 2027-03-31T09:00:00Z, April begins in Chatham at 10:15Z
];
const SCOPES: &[&str] = &["a", "a/b", "a/b/c", "a/d", "e"];
const MODELS: &[&str] = &[
    "gpt-4o",
    "gpt-4o-mini-2024-07-18",
    "claude-sonnet-4",
    "mystery",
];
const LOS_ANGELES: Zone = Zone::from_tz(Tz::America__Los_Angeles);
/// Skips its midnight when it springs forward, repeats 23:00 when it falls back.
const SANTIAGO: Zone = Zone::from_tz(Tz::America__Santiago);
/// Skips its midnight in March, has two in November.
const HAVANA: Zone = Zone::from_tz(Tz::America__Havana);
/// +13:45 / +12:45.
const CHATHAM: Zone = Zone::from_tz(Tz::Pacific__Chatham);
const WINDOWS: &[Window] = &[
    Window::Calendar(Period::Minute, Zone::UTC),
    Window::Calendar(Period::Hour, Zone::UTC),
    Window::Calendar(Period::Day, Zone::UTC),
    Window::Calendar(Period::Day, LOS_ANGELES),
    Window::Calendar(Period::Day, SANTIAGO),
    Window::Calendar(Period::Week, LOS_ANGELES),
    Window::Calendar(Period::Day, HAVANA),
    Window::Calendar(Period::Month, CHATHAM),
    Window::Total,
    Window::Rolling(2_000),
    Window::Rolling(10_000),
    Window::Rolling(1_000),
];

#[derive(Clone, Debug)]
enum Op {
    BudgetSet(usize, Vec<(Dim, usize, u64)>),
    BudgetDel(usize),
    Reserve {
        hold: usize,
        scope: usize,
        model: usize,
        /// FALLBACK models, in order.
        fallback: Vec<usize>,
        input: u64,
        output: OutputAsk,
        ttl: Option<u64>,
        /// RUN run{n}
        run: Option<usize>,
    },
    Commit {
        hold: usize,
        usage: Usage,
    },
    Release(usize),
    Spend {
        scope: usize,
        model: usize,
        usage: Usage,
        id: Option<usize>,
        run: Option<usize>,
    },
    PriceSet(usize, u64, u64, Option<u64>),
    Advance(u64),
    /// STEP run sig [SCOPE scope] [MAX max]
    Step {
        run: usize,
        sig: usize,
        scope: Option<usize>,
        max: Option<u64>,
    },
    RunEnd(usize, Option<RunOutcome>),
    /// The last RESERVE again, as it was sent (an idempotent replay).
    ReserveAgain,
}

fn usage() -> impl Strategy<Value = Usage> {
    (0u64..600, 0u64..600, 0u64..3).prop_map(|(input, output, split)| Usage {
        input,
        output,
        cached: if split == 1 { input / 2 } else { 0 },
        cache_write: if split == 2 { input / 3 } else { 0 },
    })
}

fn op() -> impl Strategy<Value = Op> {
    let dim = prop::sample::select(Dim::ALL.to_vec());
    let limit = (
        dim,
        0..WINDOWS.len(),
        prop_oneof![1u64..3, 300u64..3000, 2_000_000u64..40_000_000],
    );
    prop_oneof![
        2 => (0..SCOPES.len(), prop::collection::vec(limit, 1..4)).prop_map(|(s, l)| Op::BudgetSet(s, l)),
        1 => (0..SCOPES.len()).prop_map(Op::BudgetDel),
        8 => (0usize..10, 0..SCOPES.len(), (0..MODELS.len(), prop_oneof![3 => Just(vec![]), 1 => prop::collection::vec(0..MODELS.len(), 1..3)]), 0u64..300,
              prop_oneof![6 => (0u64..300).prop_map(OutputAsk::Tokens), 1 => (4_000u64..20_000).prop_map(OutputAsk::Tokens),
                          1 => Just(OutputAsk::Max), 2 => Just(OutputAsk::Auto)],
              prop::option::of(prop::sample::select(vec![1u64, 500, 3_000, 60_000, 90_000_000])), prop::option::of(0usize..3))
            .prop_map(|(hold, scope, (model, fallback), input, output, ttl, run)| Op::Reserve { hold, scope, model, fallback, input, output, ttl, run }),
        5 => (0usize..10, usage()).prop_map(|(hold, usage)| Op::Commit { hold, usage }),
        2 => (0usize..10).prop_map(Op::Release),
        2 => (0..SCOPES.len(), 0..MODELS.len(), usage(), prop::option::of(0usize..4), prop::option::of(0usize..3))
            .prop_map(|(scope, model, usage, id, run)| Op::Spend { scope, model, usage, id, run }),
        1 => (0..3usize, 0u64..20_000_000_000, 0u64..80_000_000_000, prop::option::of(1u64..5_000))
            .prop_map(|(m, i, o, max)| Op::PriceSet(m, i, o, max)),
        5 => prop_oneof![0u64..50, 0u64..3_000, Just(60_000u64), Just(3_600_000u64), Just(86_400_000u64)].prop_map(Op::Advance),
        4 => (0usize..3, 0usize..4, prop::option::of(0..SCOPES.len()), prop::option::of(1u64..6))
            .prop_map(|(run, sig, scope, max)| Op::Step { run, sig, scope, max }),
        2 => (0usize..3, prop::option::of(prop_oneof![Just(RunOutcome::Success), Just(RunOutcome::Failure)]))
            .prop_map(|(run, outcome)| Op::RunEnd(run, outcome)),
        2 => Just(Op::ReserveAgain),
    ]
}

// ----- the reference model ------------------------------------------------

/// Which calendar period `ms` falls in, named by the local date (a minute or
/// hour by its number since the epoch): the reference never computes where
/// a period starts, only whether two instants share one.
fn period_key(p: Period, z: Zone, ms: u64) -> (i32, u32) {
    let tz: Tz = z.name().parse().unwrap();
    let date = tz.timestamp_millis_opt(ms as i64).unwrap().date_naive();
    match p {
        Period::Minute => ((ms / 60_000) as i32, 0),
        Period::Hour => ((ms / 3_600_000) as i32, 0),
        Period::Day => (date.year(), date.ordinal()),
        Period::Week => (date.iso_week().year(), date.iso_week().week()),
        Period::Month => (date.year(), date.month()),
    }
}

/// When the calendar period holding `now` ends: the first millisecond in
/// another period (found by bisection over the next 32 days).
fn next_period(p: Period, z: Zone, now: u64) -> u64 {
    let key = period_key(p, z, now);
    let (mut lo, mut hi) = (now, now + 32 * 86_400_000);
    while lo + 1 < hi {
        let mid = lo + (hi - lo) / 2;
        if period_key(p, z, mid) == key {
            lo = mid
        } else {
            hi = mid
        }
    }
    hi
}

#[derive(Clone, Debug, PartialEq)]
enum RStatus {
    Open,
    Committed { usage: Usage, cost: u64, late: bool },
    Released,
    Expired { at: u64 },
}

#[derive(Clone, Debug)]
struct RHold {
    scope: String,
    model: String,
    input: u64,
    output: u64,
    ttl: Option<u64>,
    amounts: [u64; 5],
    made: u64,
    expires_at: u64,
    status: RStatus,
    /// The run instance it was reserved in (`RUN`).
    run: Option<usize>,
}

/// (scope of its first step or call, steps, signatures of allowed steps,
/// last activity, its index in `run_log`)
type RunEntry = (Option<String>, u64, Vec<usize>, u64, usize);

/// A run from its first step or call to its end: what the runs report
/// folds from the ledger, kept here from the commands themselves.
#[derive(Clone, Debug, Default)]
struct RRun {
    scope: Option<String>,
    ended: Option<(u64, Option<RunOutcome>)>,
    /// (model, tokens, cost) of each call booked.
    calls: Vec<(String, u64, u64)>,
}

#[derive(Default)]
struct Reference {
    /// scope → limits with the index of the step that started counting them.
    budgets: BTreeMap<String, Vec<(LimitSpec, u64)>>,
    /// Settled usage: (scope, ts, step, amounts)
    charges: Vec<(String, u64, u64, [u64; 5])>,
    /// What rolling windows of each length count besides open holds:
    /// (window ms, scope, ts, step, amounts).
    rolling: Vec<(u64, String, u64, u64, [u64; 5])>,
    holds: HashMap<String, RHold>,
    spends: HashMap<String, (String, String, Usage, u64)>,
    prices: HashMap<String, Price>,
    /// run → (scope of its first step or call, steps, signatures of
    /// allowed steps, last activity, its index in `run_log`)
    runs: BTreeMap<String, RunEntry>,
    run_log: Vec<RRun>,
    loop_denials: HashMap<String, u64>,
}

fn within(scope: &str, prefix: &str) -> bool {
    scope == prefix || scope.starts_with(&format!("{prefix}/"))
}

fn ancestors(scope: &str) -> Vec<String> {
    let parts: Vec<&str> = scope.split('/').collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("/"))
        .collect()
}

fn call(input: u64, output: u64, cost: u64) -> [u64; 5] {
    [input + output, input, output, 1, cost]
}

impl Reference {
    /// A step or call of a run at `now`: the run begins if new, keeps its
    /// first scope, and is active now. Its index in `run_log`.
    fn touch_run(&mut self, run: &str, scope: Option<&str>, now: u64) -> usize {
        if !self.runs.contains_key(run) {
            self.run_log.push(RRun::default());
            let i = self.run_log.len() - 1;
            self.runs
                .insert(run.to_string(), (None, 0, Vec::new(), now, i));
        }
        let r = self.runs.get_mut(run).unwrap();
        if r.0.is_none() {
            r.0 = scope.map(str::to_string);
        }
        r.3 = now;
        let log = &mut self.run_log[r.4];
        if log.scope.is_none() {
            log.scope = scope.map(str::to_string);
        }
        r.4
    }

    /// The run ends (RUN.END or the timeout): its steps, if it was known.
    fn end_run(&mut self, run: &str, now: u64, outcome: Option<RunOutcome>) -> Option<u64> {
        let r = self.runs.remove(run)?;
        self.run_log[r.4].ended = Some((now, outcome));
        Some(r.1)
    }

    /// The runs report as this model sees it: per group key, (runs,
    /// succeeded, failed, unreported, calls, tokens, cost), and the open
    /// runs (see `state::run_report`'s doc for the rules).
    fn runs_report(&self, q: &RunQuery) -> (BTreeMap<String, [u64; 7]>, u64) {
        let mut groups: BTreeMap<String, [u64; 7]> = BTreeMap::new();
        let mut open = 0;
        for r in &self.run_log {
            let inside = match (&q.scope, &r.scope) {
                (None, _) => true,
                (Some(p), Some(s)) => within(s, p),
                (Some(_), None) => false,
            };
            if !inside {
                continue;
            }
            let Some((at, outcome)) = r.ended else {
                open += 1;
                continue;
            };
            if (r.calls.is_empty() && outcome.is_none())
                || q.from.is_some_and(|f| at < f)
                || q.to.is_some_and(|t| at >= t)
            {
                continue;
            }
            let mut parts: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
            for (model, tokens, cost) in &r.calls {
                let key = match q.group {
                    RunGroup::Model => model.clone(),
                    RunGroup::Scope { level } => r.scope.as_deref().map_or(String::new(), |s| {
                        s.split('/').take(level).collect::<Vec<_>>().join("/")
                    }),
                };
                let p = parts.entry(key).or_default();
                (p.0, p.1, p.2) = (p.0 + 1, p.1 + tokens, p.2 + cost);
            }
            if parts.is_empty() {
                let key = match q.group {
                    RunGroup::Scope { level } => r.scope.as_deref().map_or(String::new(), |s| {
                        s.split('/').take(level).collect::<Vec<_>>().join("/")
                    }),
                    RunGroup::Model => String::new(),
                };
                parts.insert(key, (0, 0, 0));
            }
            for (key, (calls, tokens, cost)) in parts {
                let g = groups.entry(key).or_default();
                g[0] += 1;
                match outcome {
                    Some(RunOutcome::Success) => g[1] += 1,
                    Some(RunOutcome::Failure) => g[2] += 1,
                    None => g[3] += 1,
                }
                g[4] += calls;
                g[5] += tokens;
                g[6] += cost;
            }
        }
        (groups, open)
    }

    fn price(&self, model: &str) -> Option<Price> {
        let family = match model {
            "gpt-4o-mini-2024-07-18" => "gpt-4o-mini",
            m => m,
        };
        self.prices
            .get(model)
            .or_else(|| self.prices.get(family))
            .copied()
    }

    fn cost(p: &Price, u: &Usage) -> u64 {
        let plain = (u.input - u.cached - u.cache_write) as u128;
        let t = plain * p.input as u128
            + u.cached as u128 * p.cached as u128
            + u.cache_write as u128 * p.cache_write as u128
            + u.output as u128 * p.output as u128;
        t.div_ceil(1_000_000) as u64
    }

    fn in_window(w: Window, charge_ts: u64, now: u64) -> bool {
        match w {
            Window::Calendar(p, z) => period_key(p, z, charge_ts) == period_key(p, z, now),
            Window::Total => true,
            Window::Rolling(ms) => {
                let width = ms.div_ceil(ROLLING_BUCKETS).max(1);
                let n = ms.div_ceil(width);
                charge_ts / width + n > now / width
            }
        }
    }

    fn used(&self, scope: &str, spec: &LimitSpec, since_step: u64, now: u64) -> u64 {
        if let Window::Rolling(ms) = spec.window {
            let settled: u64 = (self.rolling.iter())
                .filter(|(w, s, ts, step, _)| {
                    *w == ms
                        && within(s, scope)
                        && *step > since_step
                        && Self::in_window(spec.window, *ts, now)
                })
                .map(|(.., a)| a[spec.dim.index()])
                .sum();
            let open: u64 = (self.holds.values())
                .filter(|h| {
                    h.status == RStatus::Open
                        && within(&h.scope, scope)
                        && Self::in_window(spec.window, h.made, now)
                })
                .map(|h| h.amounts[spec.dim.index()])
                .sum();
            return settled + open;
        }
        self.charges
            .iter()
            .filter(|(s, ts, step, _)| {
                within(s, scope) && *step > since_step && Self::in_window(spec.window, *ts, now)
            })
            .map(|(_, _, _, a)| a[spec.dim.index()])
            .sum()
    }

    fn expire(&mut self, now: u64, step: u64) {
        let due: Vec<String> = (self.holds.iter())
            .filter(|(_, h)| h.status == RStatus::Open && h.expires_at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let h = self.holds[&id].clone();
            self.settle_rolling(&h, step, now, [0; 5]);
            self.holds.get_mut(&id).unwrap().status = RStatus::Expired { at: now };
        }
    }

    fn held(&self, scope: &str) -> [u64; 5] {
        let mut out = [0; 5];
        for h in self
            .holds
            .values()
            .filter(|h| h.status == RStatus::Open && within(&h.scope, scope))
        {
            for (o, a) in out.iter_mut().zip(h.amounts) {
                *o += a;
            }
        }
        out
    }

    fn spent(&self, scope: &str) -> [u64; 5] {
        let mut out = [0; 5];
        for (_, _, _, a) in self.charges.iter().filter(|(s, ..)| within(s, scope)) {
            for (o, x) in out.iter_mut().zip(a) {
                *o += x;
            }
        }
        out
    }

    /// What open holds add to a limit: their amounts for calendar and TOTAL
    /// limits; nothing for rolling ones (their windows count them).
    fn held_part(&self, scope: &str, spec: &LimitSpec) -> u64 {
        match spec.window {
            Window::Rolling(_) => 0,
            _ => self.held(scope)[spec.dim.index()],
        }
    }

    /// Whether `amount` fits a limit at `now`.
    fn fits(&self, lscope: &str, spec: &LimitSpec, since: u64, now: u64, amount: u64) -> bool {
        self.used(lscope, spec, since, now) + self.held_part(lscope, spec) + amount <= spec.amount
    }

    /// Whether `amount` fits a limit at a later time `at` if nothing else
    /// happens: holds due by then have expired (a calendar or TOTAL limit
    /// has their amounts back; a rolling window is taken as it is).
    fn fits_at(&self, lscope: &str, spec: &LimitSpec, since: u64, at: u64, amount: u64) -> bool {
        let held: u64 = match spec.window {
            Window::Rolling(_) => 0,
            _ => (self.holds.values())
                .filter(|h| {
                    h.status == RStatus::Open && within(&h.scope, lscope) && h.expires_at > at
                })
                .map(|h| h.amounts[spec.dim.index()])
                .sum(),
        };
        self.used(lscope, spec, since, at) + held + amount <= spec.amount
    }

    /// Whether `amounts` fit every limit of the given dimensions on the
    /// scope and its ancestors.
    fn fits_all(&self, scope: &str, amounts: &[u64; 5], now: u64, dims: &[Dim]) -> bool {
        ancestors(scope).iter().all(|s| {
            (self.budgets.get(s).into_iter().flatten())
                .filter(|(spec, _)| dims.contains(&spec.dim))
                .all(|(spec, since)| self.fits(s, spec, *since, now, amounts[spec.dim.index()]))
        })
    }

    /// OUTPUT AUTO's room: the most output tokens (up to `max`) a call of
    /// `input` tokens at `p` fits in the limits that output counts in,
    /// found by trying (the state computes it).
    fn output_room(&self, scope: &str, input: u64, p: &Price, max: u64, now: u64) -> u64 {
        let fits = |o: u64| {
            let u = Usage {
                input,
                output: o,
                ..Default::default()
            };
            let a = call(input, o, Self::cost(p, &u));
            self.fits_all(scope, &a, now, &[Dim::Tokens, Dim::Output, Dim::Cost])
        };
        if !fits(0) {
            return 0;
        }
        let (mut lo, mut hi) = (0, max);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(mid) {
                lo = mid
            } else {
                hi = mid - 1
            }
        }
        lo
    }

    /// How a hold's output was chosen (`output_from`).
    fn output_from(
        &self,
        ask: OutputAsk,
        output: u64,
        max: Option<u64>,
        c: &Config,
    ) -> &'static str {
        let chosen = if max.is_some() { "model" } else { "default" };
        match ask {
            OutputAsk::Tokens(n) if n > output => "clamped",
            OutputAsk::Tokens(_) => "given",
            OutputAsk::Max => chosen,
            OutputAsk::Auto if output < max.unwrap_or(c.default_output) => "room",
            OutputAsk::Auto => chosen,
        }
    }

    /// Whether waiting can never let `amount` through a limit.
    fn never_fits(
        &self,
        lscope: &str,
        spec: &LimitSpec,
        since: u64,
        now: u64,
        amount: u64,
    ) -> bool {
        amount > spec.amount
            || (spec.window == Window::Total
                && self.used(lscope, spec, since, now) + amount > spec.amount)
    }

    /// A hold settles at `now` (step `step`) having used `actual` (zero:
    /// released or expired): what each rolling window length counts of it
    /// from now on (see the module's doc).
    fn settle_rolling(&mut self, h: &RHold, step: u64, now: u64, actual: [u64; 5]) {
        for w in WINDOWS {
            let Window::Rolling(ms) = *w else { continue };
            if Self::in_window(*w, h.made, now) {
                self.rolling
                    .push((ms, h.scope.clone(), h.made, step, actual));
            } else {
                let counted = match h.status {
                    RStatus::Expired { at } if Self::in_window(*w, h.made, at) => [0; 5],
                    _ => h.amounts,
                };
                let extra: Vec<u64> = (0..5)
                    .map(|d| actual[d].saturating_sub(counted[d]))
                    .collect();
                self.rolling
                    .push((ms, h.scope.clone(), now, step, extra.try_into().unwrap()));
            }
        }
    }
}

fn int(v: &Value, f: &str) -> i64 {
    match v.field(f) {
        Some(Value::Int(n)) => *n,
        other => panic!("field {f} of {v:?} is {other:?}"),
    }
}
fn money(v: &Value, f: &str) -> i128 {
    match v.field(f) {
        Some(Value::Money(n)) => *n,
        other => panic!("field {f} of {v:?} is {other:?}"),
    }
}
fn status(v: &Value) -> String {
    match v {
        Value::Error { code, .. } => format!("error:{code}"),
        _ => match v.field("status") {
            Some(Value::Str(s)) => s.clone(),
            _ => "other".into(),
        },
    }
}

fn run(start: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let config = Config {
        id_retention_ms: u64::MAX / 4,
        ..Config::default()
    };
    let mut st = State::new(config.clone());
    let mut rf = Reference {
        prices: st.prices.clone().into_iter().collect(),
        ..Default::default()
    };
    let mut now = start + 12_345;
    let mut ledger: Vec<Entry> = Vec::new();
    let mut last_reserve: Option<Command> = None;

    for (step, op) in ops.into_iter().enumerate() {
        let step = step as u64 + 1;
        rf.expire(now, step);
        let cmd = match &op {
            Op::BudgetSet(s, limits) => {
                let mut specs: Vec<LimitSpec> = Vec::new();
                for (dim, w, amount) in limits {
                    let spec = LimitSpec {
                        dim: *dim,
                        window: WINDOWS[*w],
                        amount: *amount,
                    };
                    if !specs
                        .iter()
                        .any(|o| o.dim == spec.dim && o.window == spec.window)
                    {
                        specs.push(spec);
                    }
                }
                Command::BudgetSet {
                    scope: SCOPES[*s].into(),
                    limits: specs,
                }
            }
            Op::BudgetDel(s) => Command::BudgetDel {
                scope: SCOPES[*s].into(),
            },
            Op::Reserve {
                hold,
                scope,
                model,
                fallback,
                input,
                output,
                ttl,
                run,
            } => Command::Reserve(ReserveArgs {
                ttl_ms: *ttl,
                fallback: fallback.iter().map(|m| MODELS[*m].to_string()).collect(),
                run: run.map(|r| format!("run{r}")),
                ..ReserveArgs::new(
                    format!("h{hold}"),
                    SCOPES[*scope],
                    MODELS[*model],
                    *input,
                    *output,
                )
            }),
            Op::Commit { hold, usage } => Command::Commit {
                hold: format!("h{hold}"),
                usage: *usage,
            },
            Op::Release(h) => Command::Release {
                hold: format!("h{h}"),
            },
            Op::Spend {
                scope,
                model,
                usage,
                id,
                run,
            } => Command::Spend {
                scope: SCOPES[*scope].into(),
                model: MODELS[*model].into(),
                usage: *usage,
                id: id.map(|i| format!("s{i}")),
                run: run.map(|r| format!("run{r}")),
            },
            Op::PriceSet(m, i, o, max) => Command::PriceSet {
                model: MODELS[*m].into(),
                input: *i,
                output: *o,
                cached: Some(*i / 10),
                cache_write: None,
                max_output: *max,
            },
            Op::Advance(ms) => {
                now += ms;
                rf.expire(now, step);
                // Runs idle since before now - timeout are forgotten by tick.
                let cutoff = now.saturating_sub(config.run_timeout_ms);
                let idle: Vec<String> = (rf.runs.iter())
                    .filter(|(_, r)| r.3 < cutoff)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in idle {
                    rf.end_run(&id, now, None);
                }
                st.tick(now, &mut ledger);
                check_balances(&st, &rf, now)?;
                continue;
            }
            Op::Step {
                run,
                sig,
                scope,
                max,
            } => Command::Step {
                run: format!("run{run}"),
                signature: format!("tool-{sig}").into_bytes(),
                scope: scope.map(|s| SCOPES[s].to_string()),
                max: *max,
                repeats: None,
                window: None,
            },
            Op::RunEnd(run, outcome) => Command::RunEnd {
                run: format!("run{run}"),
                outcome: *outcome,
            },
            Op::ReserveAgain => match &last_reserve {
                Some(c) => c.clone(),
                None => continue,
            },
        };
        if let Command::Reserve(_) = &cmd {
            last_reserve = Some(cmd.clone());
        }
        let reply = st.apply(now, &cmd, &mut ledger);
        let got = status(&reply);

        // The reference decides the same command.
        match &cmd {
            Command::BudgetSet { scope, limits } => {
                let old = rf.budgets.remove(scope).unwrap_or_default();
                let new = limits
                    .iter()
                    .map(|spec| {
                        let since = old
                            .iter()
                            .find(|(o, _)| o.dim == spec.dim && o.window == spec.window)
                            .map_or(step, |(_, s)| *s);
                        (*spec, since)
                    })
                    .collect();
                rf.budgets.insert(scope.clone(), new);
                prop_assert_eq!(reply, Value::Ok);
            }
            Command::BudgetDel { scope } => {
                let existed = rf.budgets.remove(scope).is_some();
                prop_assert_eq!(reply, Value::Int(existed as i64));
            }
            Command::Reserve(a) => {
                if let Some(h) = rf.holds.get(&a.hold) {
                    // The output the server chose matches any replay; a
                    // given one matches itself or what it was clamped to.
                    let max = rf.price(&h.model).and_then(|p| p.max_output);
                    let same_output = match a.output {
                        OutputAsk::Tokens(n) => {
                            n == h.output || (n > h.output && max.is_some_and(|m| m <= h.output))
                        }
                        _ => true,
                    };
                    let same = h.scope == a.scope
                        && a.models().any(|m| m == h.model)
                        && h.input == a.input
                        && same_output
                        && h.ttl == a.ttl_ms;
                    if same {
                        prop_assert_eq!(&got, "granted");
                        prop_assert_eq!(int(&reply, "expires_at") as u64, h.expires_at);
                        prop_assert_eq!(money(&reply, "cost") as u64, h.amounts[4]);
                        prop_assert_eq!(int(&reply, "output") as u64, h.output);
                        let from = rf.output_from(a.output, h.output, max, &config);
                        prop_assert_eq!(reply.field("output_from"), Some(&Value::str(from)));
                    } else {
                        prop_assert_eq!(&got, "error:EXISTS");
                    }
                } else if a.ttl_ms.is_some_and(|t| t > config.max_ttl_ms) {
                    prop_assert_eq!(&got, "error:ERR");
                } else if a.models().all(|m| rf.price(m).is_some()) {
                    // The first model, in order, whose hold fits is granted; when
                    // none does, the denial is the last one's.
                    let mut chosen = None;
                    for model in a.models() {
                        let p = rf.price(model).unwrap();
                        // A hold reserves all input at the full input price plus
                        // the output it holds: as given (at most the model's
                        // maximum), the maximum (or the default), or with AUTO
                        // the most the limits have room for (at least 1).
                        let max = p.max_output.unwrap_or(config.default_output);
                        let output = match a.output {
                            OutputAsk::Tokens(n) => p.max_output.map_or(n, |m| n.min(m)),
                            OutputAsk::Max => max,
                            OutputAsk::Auto => {
                                rf.output_room(&a.scope, a.input, &p, max, now).max(1)
                            }
                        };
                        let hold_amounts = |output: u64| {
                            let u = Usage {
                                input: a.input,
                                output,
                                ..Default::default()
                            };
                            call(a.input, output, Reference::cost(&p, &u))
                        };
                        let amounts = hold_amounts(output);
                        let cost = amounts[4];
                        if a.output == OutputAsk::Auto && output > 1 {
                            // The room is the most: one more token would not fit.
                            let more = hold_amounts(output + 1);
                            let fits_more = output < max
                                && rf.fits_all(
                                    &a.scope,
                                    &more,
                                    now,
                                    &[Dim::Tokens, Dim::Output, Dim::Cost],
                                );
                            prop_assert!(!fits_more, "AUTO held {output} with room for more");
                        }
                        let mut violated = Vec::new();
                        for s in ancestors(&a.scope) {
                            for (spec, since) in rf.budgets.get(&s).into_iter().flatten() {
                                if !rf.fits(&s, spec, *since, now, amounts[spec.dim.index()]) {
                                    violated.push((s.clone(), *spec, *since));
                                }
                            }
                        }
                        let fits = violated.is_empty();
                        chosen = Some((model.to_string(), p, output, amounts, cost, violated));
                        if fits {
                            break;
                        }
                    }
                    let (model, p, output, amounts, cost, violated) = chosen.unwrap();
                    prop_assert_eq!(reply.field("model"), Some(&Value::str(&model)));
                    if violated.is_empty() {
                        prop_assert_eq!(&got, "granted", "reply {:?}", reply);
                        prop_assert_eq!(money(&reply, "cost") as u64, cost);
                        prop_assert_eq!(int(&reply, "output") as u64, output);
                        let from = rf.output_from(a.output, output, p.max_output, &config);
                        prop_assert_eq!(reply.field("output_from"), Some(&Value::str(from)));
                        let expires_at = now + a.ttl_ms.unwrap_or(config.default_ttl_ms);
                        prop_assert_eq!(int(&reply, "expires_at") as u64, expires_at);
                        let run = a.run.as_ref().map(|r| rf.touch_run(r, Some(&a.scope), now));
                        rf.holds.insert(
                            a.hold.clone(),
                            RHold {
                                scope: a.scope.clone(),
                                model: model.clone(),
                                input: a.input,
                                output,
                                ttl: a.ttl_ms,
                                amounts,
                                made: now,
                                expires_at,
                                status: RStatus::Open,
                                run,
                            },
                        );
                        // No grant takes a limit past its amount.
                        for s in ancestors(&a.scope) {
                            for (spec, since) in rf.budgets.get(&s).into_iter().flatten() {
                                prop_assert!(
                                    rf.fits(&s, spec, *since, now, 0),
                                    "grant overspent {s} {spec:?}"
                                );
                            }
                        }
                    } else {
                        prop_assert_eq!(&got, "denied", "reply {:?}", reply);
                        // The limit named is one that is exceeded.
                        let named_scope = match reply.field("scope") {
                            Some(Value::Str(s)) => s.clone(),
                            _ => unreachable!(),
                        };
                        let named = violated.iter().find(|(s, spec, _)| {
                            *s == named_scope
                                && reply.field("limit")
                                    == Some(&Value::Str(format!(
                                        "{} {}",
                                        spec.dim.name(),
                                        spec.window.describe()
                                    )))
                        });
                        prop_assert!(
                            named.is_some(),
                            "denial names a limit that is not exceeded: {:?}",
                            reply
                        );
                        let (s, spec, since) = named.unwrap().clone();
                        let amt = amounts[spec.dim.index()];
                        let retry = int(&reply, "retry_after_ms");
                        let held = rf.held_part(&s, &spec);
                        prop_assert_eq!(
                            reply.field("held"),
                            Some(&if spec.dim == Dim::Cost {
                                Value::Money(held as i128)
                            } else {
                                Value::Int(held as i64)
                            })
                        );
                        // Why: the limit itself, open holds, or usage.
                        let used = rf.used(&s, &spec, since, now);
                        let why = if rf.never_fits(&s, &spec, since, now, amt) {
                            "limit"
                        } else if held > 0 && used + amt <= spec.amount {
                            "held"
                        } else {
                            "used"
                        };
                        prop_assert_eq!(reply.field("reason"), Some(&Value::str(why)));
                        if retry >= 0 {
                            let at = now + retry as u64;
                            prop_assert!(
                                rf.fits_at(&s, &spec, since, at, amt),
                                "still does not fit after retry_after {retry}"
                            );
                            if retry > 0 {
                                prop_assert!(
                                    !rf.fits_at(&s, &spec, since, at - 1, amt),
                                    "retry_after {retry} is not the earliest"
                                );
                            }
                            // And every other violated limit needs no longer a wait.
                            for (s2, spec2, since2) in &violated {
                                let a2 = amounts[spec2.dim.index()];
                                prop_assert!(
                                    !rf.never_fits(s2, spec2, *since2, now, a2),
                                    "named a waitable limit while {s2} {spec2:?} can never fit"
                                );
                                prop_assert!(
                                    rf.fits_at(s2, spec2, *since2, at, a2),
                                    "{s2} {spec2:?} not free at retry time"
                                );
                            }
                        } else {
                            prop_assert_eq!(retry, -1);
                            prop_assert!(rf.never_fits(&s, &spec, since, now, amt));
                        }
                    }
                } else {
                    prop_assert_eq!(&got, "error:NOPRICE");
                }
            }
            Command::Commit { hold, usage } => {
                let valid = usage.cached + usage.cache_write <= usage.input;
                match rf.holds.get(hold).cloned() {
                    _ if !valid => prop_assert_eq!(&got, "error:ERR"),
                    None => prop_assert_eq!(&got, "error:UNKNOWN"),
                    Some(h) => match &h.status {
                        RStatus::Committed {
                            usage: u,
                            cost,
                            late,
                        } => {
                            if u == usage {
                                prop_assert_eq!(&got, "committed");
                                prop_assert_eq!(money(&reply, "cost") as u64, *cost);
                                prop_assert_eq!(int(&reply, "late") == 1, *late);
                            } else {
                                prop_assert_eq!(&got, "error:EXISTS");
                            }
                        }
                        RStatus::Released => prop_assert_eq!(&got, "error:STATE"),
                        RStatus::Open | RStatus::Expired { .. } => {
                            let late = h.status != RStatus::Open;
                            let cost = Reference::cost(&rf.price(&h.model).unwrap(), usage);
                            prop_assert_eq!(&got, "committed");
                            prop_assert_eq!(money(&reply, "cost") as u64, cost);
                            prop_assert_eq!(int(&reply, "late") == 1, late);
                            prop_assert_eq!(
                                money(&reply, "overrun") as u64,
                                cost.saturating_sub(h.amounts[4])
                            );
                            let released = if late {
                                0
                            } else {
                                h.amounts[4].saturating_sub(cost)
                            };
                            prop_assert_eq!(money(&reply, "released") as u64, released);
                            let actual = call(usage.input, usage.output, cost);
                            rf.charges.push((h.scope.clone(), now, step, actual));
                            rf.settle_rolling(&h, step, now, actual);
                            if let Some(r) = h.run {
                                rf.run_log[r].calls.push((h.model.clone(), actual[0], cost));
                            }
                            rf.holds.get_mut(hold).unwrap().status = RStatus::Committed {
                                usage: *usage,
                                cost,
                                late,
                            };
                        }
                    },
                }
            }
            Command::Release { hold } => match rf.holds.get(hold).map(|h| h.status.clone()) {
                None => prop_assert_eq!(&got, "error:UNKNOWN"),
                Some(RStatus::Committed { .. }) => prop_assert_eq!(&got, "error:STATE"),
                Some(RStatus::Expired { .. }) => prop_assert_eq!(&got, "expired"),
                Some(RStatus::Released) => prop_assert_eq!(&got, "released"),
                Some(RStatus::Open) => {
                    prop_assert_eq!(&got, "released");
                    let h = rf.holds[hold].clone();
                    rf.settle_rolling(&h, step, now, [0; 5]);
                    rf.holds.get_mut(hold).unwrap().status = RStatus::Released;
                }
            },
            Command::Spend {
                scope,
                model,
                usage,
                id,
                run,
            } => {
                let valid = usage.cached + usage.cache_write <= usage.input;
                let prior = id.as_ref().and_then(|i| rf.spends.get(i)).cloned();
                if !valid {
                    prop_assert_eq!(&got, "error:ERR");
                } else if let Some((s, m, u, cost)) = prior {
                    if s == *scope && m == *model && u == *usage {
                        prop_assert_eq!(&got, "spent");
                        prop_assert_eq!(money(&reply, "cost") as u64, cost);
                    } else {
                        prop_assert_eq!(&got, "error:EXISTS");
                    }
                } else if let Some(p) = rf.price(model) {
                    let cost = Reference::cost(&p, usage);
                    prop_assert_eq!(&got, "spent");
                    prop_assert_eq!(money(&reply, "cost") as u64, cost);
                    let actual = call(usage.input, usage.output, cost);
                    rf.charges.push((scope.clone(), now, step, actual));
                    for w in WINDOWS {
                        if let Window::Rolling(ms) = *w {
                            rf.rolling.push((ms, scope.clone(), now, step, actual));
                        }
                    }
                    if let Some(i) = id {
                        rf.spends
                            .insert(i.clone(), (scope.clone(), model.clone(), *usage, cost));
                    }
                    if let Some(r) = run {
                        let r = rf.touch_run(r, Some(scope), now);
                        rf.run_log[r].calls.push((model.clone(), actual[0], cost));
                    }
                } else {
                    prop_assert_eq!(&got, "error:NOPRICE");
                }
            }
            Command::PriceSet {
                model,
                input,
                output,
                cached,
                cache_write,
                max_output,
            } => {
                prop_assert_eq!(reply, Value::Ok);
                // Without a maximum output, the one known for the model stays.
                let known = rf.price(model).and_then(|p| p.max_output);
                let price = Price {
                    input: *input,
                    output: *output,
                    cached: cached.unwrap_or(*input),
                    cache_write: cache_write.unwrap_or(*input),
                    max_output: max_output.or(known),
                };
                rf.prices.insert(model.clone(), price);
            }
            Command::Step {
                run,
                signature,
                scope,
                max,
                ..
            } => {
                let sig = signature[5] as usize; // "tool-N"
                let max = max.unwrap_or(100);
                let (steps, seen) = match rf.runs.get(run) {
                    Some(r) => (
                        r.1,
                        1 + r.2.iter().rev().take(4).filter(|&&x| x == sig).count() as u64,
                    ),
                    None => (0, 1),
                };
                let reason = if steps >= max {
                    Some("max_steps")
                } else if seen >= 3 {
                    Some("repeated")
                } else {
                    None
                };
                rf.touch_run(run, scope.as_deref(), now);
                let r = rf.runs.get_mut(run).unwrap();
                match reason {
                    Some(why) => {
                        prop_assert_eq!(got, "denied");
                        prop_assert_eq!(reply.field("reason"), Some(&Value::str(why)));
                        if let Some(s) = scope {
                            for a in ancestors(s) {
                                *rf.loop_denials.entry(a).or_default() += 1;
                            }
                        }
                    }
                    None => {
                        prop_assert_eq!(got, "ok");
                        r.1 += 1;
                        r.2.push(sig);
                        prop_assert_eq!(reply.field("steps"), Some(&Value::Int(r.1 as i64)));
                    }
                }
                prop_assert_eq!(reply.field("repeats"), Some(&Value::Int(seen as i64)));
            }
            Command::RunEnd { run, outcome } => match rf.end_run(run, now, *outcome) {
                Some(steps) => {
                    prop_assert_eq!(reply.field("steps"), Some(&Value::Int(steps as i64)));
                    let said = outcome.map_or(Value::Null, |o| Value::str(o.as_str()));
                    prop_assert_eq!(reply.field("outcome"), Some(&said));
                }
                None => prop_assert_eq!(got, "error:UNKNOWN"),
            },
            _ => unreachable!(),
        }
        check_balances(&st, &rf, now)?;
    }

    // Replaying the ledger rebuilds the same state; so does a snapshot.
    let mut replayed = State::new(config.clone());
    for (i, e) in ledger.iter().enumerate() {
        prop_assert_eq!(e.seq, i as u64 + 1);
        replayed.apply_entry(e);
    }
    prop_assert_eq!(replayed.digest().diff(&st.digest()), None);

    // The runs report, folded from the ledger, is what this model saw of
    // the runs: by model, by scope, under a scope, from a time.
    let middle = ledger.get(ledger.len() / 2).map_or(0, |e| e.ts);
    for q in [
        RunQuery {
            group: RunGroup::Model,
            scope: None,
            from: None,
            to: None,
        },
        RunQuery {
            group: RunGroup::Scope { level: 1 },
            scope: None,
            from: None,
            to: None,
        },
        RunQuery {
            group: RunGroup::Scope { level: 2 },
            scope: Some("a/b".into()),
            from: None,
            to: None,
        },
        RunQuery {
            group: RunGroup::Scope { level: 3 },
            scope: None,
            from: Some(middle),
            to: Some(now),
        },
    ] {
        let mut report = RunReport::new(q.clone());
        ledger.iter().for_each(|e| report.add(e));
        let got = report.finish();
        let (want, open) = rf.runs_report(&q);
        prop_assert_eq!(got.open, open, "open runs, {:?}", q);
        let got_groups: BTreeMap<String, [u64; 7]> = (got.groups.iter())
            .map(|g| {
                let u = g.usage;
                (
                    g.key.clone(),
                    [
                        g.runs,
                        g.succeeded,
                        g.failed,
                        g.unreported,
                        u.calls,
                        u.tokens,
                        u.cost,
                    ],
                )
            })
            .collect();
        prop_assert_eq!(&got_groups, &want, "{:?}", q);
        // Largest cost first.
        prop_assert!(got
            .groups
            .windows(2)
            .all(|w| w[0].usage.cost >= w[1].usage.cost));
        for g in &got.groups {
            let per_success = (g.succeeded > 0).then(|| {
                (
                    (g.usage.cost + g.succeeded / 2) / g.succeeded,
                    (g.usage.tokens + g.succeeded / 2) / g.succeeded,
                )
            });
            prop_assert_eq!(g.per_success(), per_success);
        }
    }
    let snap = decode_snapshot(st.next_seq - 1, &encode_snapshot(&st), &config).unwrap();
    prop_assert_eq!(snap.digest().diff(&st.digest()), None);
    check_rollups(&ledger)?;
    Ok(())
}

/// The rollups (issue #29) answer every report as the full folds do, for
/// whole-hour ranges: folded at once, and folded in two parts with a
/// persist-and-load between them (a restart resuming at its seq).
fn check_rollups(ledger: &[Entry]) -> Result<(), TestCaseError> {
    use spendb::state::rollup::{Rollup, HOUR_MS};
    use spendb::state::spend_report::{SpendGroup, SpendQuery, SpendReport};
    use spendb::store::format::rollup::{decode_rollup, encode_rollup};
    let mut whole = Rollup::new();
    ledger.iter().for_each(|e| whole.add(e));
    let cut = ledger.len() / 3;
    let mut first = Rollup::new();
    ledger[..cut].iter().for_each(|e| first.add(e));
    let mut resumed = decode_rollup(&encode_rollup(&first)).map_err(TestCaseError::fail)?;
    prop_assert_eq!(
        &resumed,
        &first,
        "a rollup persisted and loaded is the same"
    );
    ledger[cut..].iter().for_each(|e| resumed.add(e));
    prop_assert_eq!(&resumed, &whole, "resumed at seq {}", cut);
    let hour = |ts: u64| ts / HOUR_MS * HOUR_MS;
    let (first_ts, last_ts) = (
        ledger.first().map_or(0, |e| e.ts),
        ledger.last().map_or(0, |e| e.ts),
    );
    let middle = ledger.get(ledger.len() / 2).map_or(0, |e| e.ts);
    let ranges = [
        (None, None),
        (Some(hour(middle)), None),
        (Some(hour(first_ts)), Some(hour(middle) + HOUR_MS)),
        (None, Some(hour(last_ts))),
    ];
    let filters = [
        None,
        Some("a"),
        Some("a/b"),
        Some("a/b/c"),
        Some("e"),
        Some("x"),
    ];
    for (from, to) in ranges {
        for scope in filters {
            let scope = scope.map(str::to_string);
            let mut groups = vec![SpendGroup::Model, SpendGroup::Day, SpendGroup::Hour];
            groups.extend((1..=4).map(|level| SpendGroup::Scope { level }));
            for group in groups {
                let q = SpendQuery {
                    group,
                    scope: scope.clone(),
                    from,
                    to,
                };
                let mut full = SpendReport::new(q.clone());
                ledger.iter().for_each(|e| full.add(e));
                prop_assert_eq!(whole.spend(&q), full.finish(), "{:?}", q);
            }
            let mut groups = vec![RunGroup::Model];
            groups.extend((1..=4).map(|level| RunGroup::Scope { level }));
            for group in groups {
                let q = RunQuery {
                    group,
                    scope: scope.clone(),
                    from,
                    to,
                };
                let mut full = RunReport::new(q.clone());
                ledger.iter().for_each(|e| full.add(e));
                prop_assert_eq!(whole.runs(&q), full.finish(), "{:?}", q);
            }
        }
    }
    Ok(())
}

fn check_balances(st: &State, rf: &Reference, now: u64) -> Result<(), TestCaseError> {
    st.check_invariants().map_err(TestCaseError::fail)?;
    for s in SCOPES {
        let node = st.nodes.get(*s).cloned().unwrap_or_default();
        prop_assert_eq!(node.held.0, rf.held(s), "held at {}", s);
        prop_assert_eq!(node.spent.0, rf.spent(s), "spent at {}", s);
        prop_assert_eq!(
            node.loop_denials,
            rf.loop_denials.get(*s).copied().unwrap_or(0),
            "loop denials at {}",
            s
        );
        let want: Vec<_> = rf.budgets.get(*s).cloned().unwrap_or_default();
        prop_assert_eq!(node.limits.len(), want.len(), "limits at {}", s);
        for (l, (spec, since)) in node.limits.iter().zip(&want) {
            prop_assert_eq!(&l.spec, spec);
            if let Window::Calendar(p, z) = spec.window {
                prop_assert_eq!(
                    l.counter.resets_at(spec.window, now),
                    Some(next_period(p, z, now)),
                    "resets_at of {:?} at {}",
                    spec,
                    now
                );
            }
            prop_assert_eq!(
                l.used(now),
                rf.used(s, spec, *since, now),
                "used of {:?} at {}",
                spec,
                s
            );
        }
    }
    Ok(())
}

proptest! {
    // PROPTEST_CASES=<n> runs more (CI runs the default).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(300),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]
    #[test]
    fn state_machine_matches_reference(start in prop::sample::select(STARTS), ops in prop::collection::vec(op(), 1..80)) {
        run(start, ops)?;
    }
}
