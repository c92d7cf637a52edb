//! The pure state machine: scopes, limits, windows, holds, prices, runs,
//! alerts and the ledger entries that change them. No I/O, no clock reads,
//! no threads, no randomness, no serde: time is an argument. Every business
//! rule of spendb lives here (docs/ARCHITECTURE.md, "Architecture
//! invariants").
//!
//! Two functions carry it all:
//! - [`State::decide`] decides (this file): it checks the command's bounds
//!   (`validate.rs`), puts a tenant's ids in its keyspace (`access.rs`),
//!   refuses scopes outside the caller's, and hands the command to its family
//!   (`family/`), which emits ledger entries (or none: reads, replays,
//!   denials) and returns a typed [`Outcome`];
//! - [`State::apply_entry`] evolves (`evolve.rs`): the only code that changes
//!   balances, used both for entries just emitted and for entries replayed
//!   from the ledger, so a replay rebuilds exactly the state that was live.

pub mod access;
pub mod alerts;
pub mod bounds;
pub mod command;
pub mod commands;
pub mod cow;
pub mod entry;
pub mod error;
pub mod grant;
pub mod holds;
pub mod limit;
pub mod money;
pub mod price;
pub mod rollup;
pub mod run_report;
pub mod runs;
pub mod scope;
pub mod spend_report;
mod validate;

mod audit;
mod evolve;
mod family;
pub mod outcome;
mod reply;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// The state's hash maps: aHash rather than SipHash because hashing was 3 %
/// of the engine's time under load, with fixed keys ([`FixedHasher`]).
pub type Map<K, V> = std::collections::HashMap<K, V, FixedHasher>;

/// aHash with fixed keys. The state machine reads no randomness, so the
/// same commands build the same tables in every process. (Until issue #13
/// the keys were random per process against hash flooding; keys are chosen
/// by authenticated clients of a sidecar, and no order the state exposes —
/// snapshots, replies — follows the hash order.)
#[derive(Clone, Copy, Debug, Default)]
pub struct FixedHasher;

static FIXED_KEYS: ahash::RandomState = ahash::RandomState::with_seeds(
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
);

impl std::hash::BuildHasher for FixedHasher {
    type Hasher = ahash::AHasher;
    fn build_hasher(&self) -> ahash::AHasher {
        FIXED_KEYS.build_hasher()
    }
}

pub use access::Access;
pub use audit::Digest;
pub use command::{Command, OutputAsk, OutputFrom, ReserveArgs, Value};
pub use entry::{Entry, EntryKind, RunOutcome};
pub use error::ErrorCode;
pub use holds::{Hold, HoldTable};
use limit::{Counter, Dim, Dims, Limit, LimitSpec};
pub use outcome::Outcome;
use price::{Price, Usage};
use reply::*;
use scope::chain;

pub const MAX_LIMITS_PER_SCOPE: usize = 16;
pub use bounds::MAX_MODEL_LEN;

/// Settings of the rules (not recorded in the ledger: they shape decisions,
/// never how an entry is applied).
#[derive(Clone, Debug)]
pub struct Config {
    pub default_ttl_ms: u64,
    /// Output tokens a RESERVE without OUTPUT holds when the model's
    /// maximum output is not known (`--default-output`).
    pub default_output: u64,
    pub max_ttl_ms: u64,
    /// How long a settled hold or an ID'd spend is remembered, so a retried
    /// RESERVE / COMMIT / SPEND gets its first answer back.
    pub id_retention_ms: u64,
    /// Price used for models the table does not know; None → NOPRICE.
    pub default_price: Option<Price>,
    /// A run that has not stepped for this long is forgotten.
    pub run_timeout_ms: u64,
    /// The loop guard's defaults when STEP gives no MAX / REPEATS / WINDOW.
    pub loop_max_steps: u64,
    pub loop_repeats: u64,
    pub loop_window: u64,
    /// Cluster mode (`spendb serve --etcd`): calendar and TOTAL limits are
    /// global, and a RESERVE also keeps within this node's grants
    /// (`grant.rs`). None on a single node.
    pub cluster: Option<grant::ClusterRules>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            default_ttl_ms: 10 * 60_000,
            default_output: 4096,
            max_ttl_ms: 24 * 3_600_000,
            id_retention_ms: 10 * 60_000,
            default_price: None,
            run_timeout_ms: 3_600_000,
            loop_max_steps: runs::DEFAULT_MAX_STEPS,
            loop_repeats: runs::DEFAULT_REPEATS,
            loop_window: runs::DEFAULT_WINDOW,
            cluster: None,
        }
    }
}

/// What one scope carries: its own limits, and what is attributed to it and
/// everything below it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    pub limits: Vec<Limit>,
    /// Sum of the open holds at or below this scope, per dimension.
    pub held: Dims,
    /// All-time settled usage at or below this scope.
    pub spent: Dims,
    pub open_holds: u64,
    /// Steps the loop guard denied in runs at or below this scope.
    pub loop_denials: u64,
    /// Nano-USD cache hits saved at or below this scope.
    pub saved: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settlement {
    pub usage: Usage,
    pub cost: u64,
    pub late: bool,
    pub at: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldStatus {
    Open,
    Committed(Settlement),
    Released { at: u64 },
    Expired { at: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpendRecord {
    pub scope: String,
    pub model: String,
    pub usage: Usage,
    pub cost: u64,
    pub at: u64,
}

#[derive(Clone, Debug, Default)]
pub struct State {
    pub config: Config,
    /// Sequence number the next entry gets.
    pub next_seq: u64,
    /// Timestamp of the last entry applied.
    pub last_ts: u64,
    pub nodes: Map<String, Node>,
    /// Every hold known (open, and settled ones within the retention), with
    /// the open holds' expiry order.
    pub holds: HoldTable,
    pub spends: Map<String, SpendRecord>,
    spends_seen: VecDeque<(u64, String)>,
    pub prices: Map<String, Price>,
    /// Agent runs under the loop guard.
    pub runs: runs::Runs,
    /// Alert rules per scope, and the alerts fired.
    pub alerts: alerts::Alerts,
    /// Settled usage by top-level scope and model, for `/metrics`.
    pub series: SpendSeries,
    /// Cluster mode: this node's grants of the global limits, by key.
    pub grants: BTreeMap<String, grant::GrantLine>,
    /// Cluster mode: the node cannot reach the store now, so RESERVE may
    /// use its partition allowance (`grant::ClusterRules`). An input, like
    /// the clock: set by the node, never in the ledger or a snapshot.
    pub cut_off: bool,
    /// Cluster mode: the lines (keys) that usage booked outside the
    /// RESERVE rules (SPEND, a COMMIT past its hold or after it expired)
    /// took past their grant since the node last took this set: the engine
    /// has the agent charge them to the shared pool before it answers. An
    /// output for the node, like `cut_off` is an input: never in the
    /// ledger or a snapshot.
    /// By line, the usage booked outside the rules that took it past
    /// them (what may be charged past the limit).
    pub overdrawn: BTreeMap<String, u64>,
    /// Cluster mode: what the store says of the global limits a BALANCE or
    /// BUDGET.GET shows (`grant::PoolView`), set by the engine for that one
    /// command; None otherwise. An input, like the clock.
    pub cluster_view: Option<grant::ClusterView>,
    /// Cluster mode: the pools of the global lines that alert thresholds
    /// watch, as the node last read them (`alerts_seen`). An input, like
    /// the clock: never in the ledger or a snapshot.
    pub cluster_seen: BTreeMap<String, grant::PoolView>,
}

/// Settled usage per top-level scope and model, with a bounded number of
/// each (the rest are counted under `_other`), so `/metrics` has at most
/// (MAX_SERIES_SCOPES + 1) × (MAX_SERIES_MODELS + 1) series per metric.
#[derive(Clone, Debug, Default)]
pub struct SpendSeries {
    pub by_scope: BTreeMap<String, BTreeMap<String, SeriesTotals>>,
}

pub const MAX_SERIES_SCOPES: usize = 50;
pub const MAX_SERIES_MODELS: usize = 20;
pub const OTHER_SERIES: &str = "_other";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeriesTotals {
    pub requests: u64,
    pub tokens: u64,
    /// nano-USD
    pub cost: u64,
}

impl SpendSeries {
    fn add(&mut self, scope: &str, model: &str, tokens: u64, cost: u64) {
        let top = scope.split('/').next().unwrap_or(scope);
        let top = if self.by_scope.contains_key(top) || self.by_scope.len() < MAX_SERIES_SCOPES {
            top
        } else {
            OTHER_SERIES
        };
        let models = match self.by_scope.get_mut(top) {
            Some(m) => m,
            None => self.by_scope.entry(top.to_string()).or_default(),
        };
        let model = if models.contains_key(model) || models.len() < MAX_SERIES_MODELS {
            model
        } else {
            OTHER_SERIES
        };
        let t = match models.get_mut(model) {
            Some(t) => t,
            None => models.entry(model.to_string()).or_default(),
        };
        t.requests += 1;
        t.tokens = t.tokens.saturating_add(tokens);
        t.cost = t.cost.saturating_add(cost);
    }
}

/// Why a RESERVE was denied: the most binding limit.
struct Denial {
    scope: String,
    spec: LimitSpec,
    remaining: i128,
    held: u64,
    blocker: limit::Blocker,
    retry_after: Option<u64>,
    /// How much more room would let it through.
    short_by: u64,
}

/// Whether a scope is inside the caller's (lists show only those).
type Visible<'a> = &'a dyn Fn(&str) -> bool;

/// A refusal for bad syntax or a value out of bounds (`ERR`).
fn refuse(msg: impl Into<String>) -> Outcome {
    Outcome::refused(ErrorCode::Err, msg)
}

fn syntax(msg: impl Into<String>) -> Value {
    Value::err(ErrorCode::Err, msg)
}

impl State {
    /// A fresh state with the shipped price table.
    pub fn new(config: Config) -> State {
        State {
            config,
            next_seq: 1,
            prices: price::default_prices(),
            ..Default::default()
        }
    }

    /// Applies one command at time `now`: returns the reply and appends the
    /// entries it caused (expiries that fell due first, then its own).
    pub fn apply(&mut self, now: u64, cmd: &Command, out: &mut Vec<Entry>) -> Value {
        self.decide(now, cmd, None, out).into()
    }

    /// `apply` for a caller limited to some scopes (see [`State::decide`]).
    pub fn apply_as(
        &mut self,
        now: u64,
        cmd: &Command,
        access: Option<&Access>,
        out: &mut Vec<Entry>,
    ) -> Value {
        self.decide(now, cmd, access, out).into()
    }

    /// Whether a definition (BUDGET.SET / DEL, PRICE.SET) would be refused
    /// whatever the state holds: its bounds, the caller's scopes, the
    /// budget's own checks. Cluster mode checks this before it writes the
    /// definition to the global store.
    pub fn check_definition(
        cmd: &Command,
        access: Option<&Access>,
    ) -> Result<(), (ErrorCode, String)> {
        let syntax = |e: String| (ErrorCode::Err, e);
        validate::check(cmd).map_err(syntax)?;
        if let (Some(a), Some(scope)) = (access, cmd.scope()) {
            if !a.allows(scope) {
                return Err((
                    ErrorCode::NoPerm,
                    format!("scope {scope} is outside this user's scopes"),
                ));
            }
        }
        if let Command::BudgetSet { scope, limits } = cmd {
            family::budget_check(scope, limits).map_err(syntax)?;
        }
        Ok(())
    }

    /// Decides one command at time `now` for a caller with `access` (None:
    /// every scope): returns what it did and appends the entries it caused
    /// (expiries that fell due first, then its own). A tenant's ids are
    /// qualified with its tenant key first (`state::access`); a command
    /// naming a scope outside its prefixes is refused, a hold or run outside
    /// them is as if it did not exist, and lists show only what lies inside.
    pub fn decide(
        &mut self,
        now: u64,
        cmd: &Command,
        access: Option<&Access>,
        out: &mut Vec<Entry>,
    ) -> Outcome {
        if let Err(e) = validate::check(cmd) {
            return refuse(e);
        }
        let Some(a) = access else {
            return self.dispatch(now, cmd, None, out);
        };
        match cmd.qualified(a) {
            Some(q) => {
                let mut o = self.decide_within(now, &q, a, out);
                o.unqualify(a);
                o
            }
            None => self.decide_within(now, cmd, a, out),
        }
    }

    /// `decide` for a caller with `access`, after its ids were qualified.
    fn decide_within(
        &mut self,
        now: u64,
        cmd: &Command,
        a: &Access,
        out: &mut Vec<Entry>,
    ) -> Outcome {
        if let Some(scope) = cmd.scope() {
            if !a.allows(scope) {
                return Outcome::refused(
                    ErrorCode::NoPerm,
                    format!("scope {scope} is outside this user's scopes"),
                );
            }
        }
        if let Command::Commit { hold, .. }
        | Command::Release { hold }
        | Command::HoldGet { hold } = cmd
        {
            if self.holds.get(hold).is_some_and(|h| !a.allows(&h.scope)) {
                return Outcome::refused(ErrorCode::Unknown, format!("hold {hold}"));
            }
        }
        let run = match cmd {
            Command::RunEnd { run, .. } | Command::Step { run, .. } => Some(run),
            Command::Reserve(ReserveArgs { run, .. }) | Command::Spend { run, .. } => run.as_ref(),
            _ => None,
        };
        if let Some(run) = run {
            let scope = self.runs.get(run).and_then(|r| r.scope.as_deref());
            if scope.is_some_and(|s| !a.allows(s)) {
                return Outcome::refused(ErrorCode::Unknown, format!("run {run}"));
            }
        }
        self.dispatch(now, cmd, Some(a), out)
    }

    /// Expires what fell due, then hands the command to its family
    /// (`state/family/`). Reads answer with their reply value; lists show
    /// only what lies inside `access`'s scopes.
    fn dispatch(
        &mut self,
        now: u64,
        cmd: &Command,
        access: Option<&Access>,
        out: &mut Vec<Entry>,
    ) -> Outcome {
        let visible = |scope: &str| access.is_none_or(|a| a.allows(scope));
        let now = now.max(self.last_ts);
        self.expire_due(now, out);
        match cmd {
            Command::BudgetSet { scope, limits } => self.budget_set(now, scope, limits, out).into(),
            Command::BudgetGet { scope } => self.budget_get(now, scope).into(),
            Command::BudgetDel { scope } => self.budget_del(now, scope, out).into(),
            Command::BudgetList { prefix } => self.budget_list(prefix.as_deref(), &visible).into(),
            Command::Balance { scope } => self.balance(now, scope).into(),
            Command::Forecast { scope } => self.forecast(now, scope).into(),
            Command::Reserve(a) => self.reserve(now, a, out),
            Command::Commit { hold, usage } => self.commit(now, hold, usage, out),
            Command::Release { hold } => self.release(now, hold, out),
            Command::HoldGet { hold } => self.hold_get(hold).into(),
            Command::HoldList { prefix, limit } => {
                self.hold_list(prefix.as_deref(), *limit, &visible).into()
            }
            Command::Spend {
                scope,
                model,
                usage,
                id,
                run,
            } => self.spend(now, scope, model, usage, (id, run), out),
            Command::CacheSaved { scope, cost } => self.cache_saved(now, scope, *cost, out),
            Command::PriceSet {
                model,
                input,
                output,
                cached,
                cache_write,
                max_output,
            } => {
                let price = Price::new(*input, *output, *cached, *cache_write);
                self.price_set(now, model, price, *max_output, out)
            }
            Command::PriceGet { model } => self.price_get(model).into(),
            Command::PriceList => self.price_list().into(),
            Command::Step {
                run,
                signature,
                scope,
                max,
                repeats,
                window,
            } => self.step(
                now,
                run,
                signature,
                scope.as_deref(),
                (*max, *repeats, *window),
                out,
            ),
            Command::RunEnd { run, outcome } => self.run_end(now, run, *outcome, out),
            Command::SpendSeries => self.spend_series().into(),
            Command::AlertRulesSet { scope, rules } => {
                self.alert_rules_set(now, scope, rules, out).into()
            }
            Command::AlertRulesList { prefix } => {
                self.alert_rules_list(prefix.as_deref(), &visible).into()
            }
            Command::AlertList {
                after,
                limit,
                undelivered,
                prefix,
            } => self
                .alert_list(*after, *limit, *undelivered, prefix.as_deref(), &visible)
                .into(),
            Command::AlertDelivered { id } => self.alert_delivered(now, *id, out),
        }
    }

    /// ID'd spends in the order they were booked, (time, id): what the
    /// retention forgets first (for the snapshot format).
    pub fn spends_seen(&self) -> &VecDeque<(u64, String)> {
        &self.spends_seen
    }

    /// Restores the order of ID'd spends (loading a snapshot).
    pub fn set_spends_seen(&mut self, seen: VecDeque<(u64, String)>) {
        self.spends_seen = seen;
    }

    /// Housekeeping on the clock: expires due holds and forgets settled
    /// holds and spend ids older than the retention.
    pub fn tick(&mut self, now: u64, out: &mut Vec<Entry>) {
        let now = now.max(self.last_ts);
        self.expire_due(now, out);
        self.forget_old(now);
        let cutoff = now.saturating_sub(self.config.run_timeout_ms);
        for run in self.runs.idle_before(cutoff) {
            self.emit(now, EntryKind::RunEnd { run, outcome: None }, out);
        }
    }

    /// When the next open hold expires, for the engine's timer.
    pub fn next_expiry(&self) -> Option<u64> {
        self.holds.next_expiry()
    }

    pub fn open_hold_count(&self) -> usize {
        self.holds.open_count()
    }

    /// Records a snapshot holds (scopes, holds, remembered spend ids,
    /// prices): what writing one costs, in proportion.
    pub fn records(&self) -> usize {
        self.nodes.len()
            + self.holds.len()
            + self.spends.len()
            + self.prices.len()
            + self.runs.len()
            + self.alerts.len()
    }

    fn emit(&mut self, now: u64, kind: EntryKind, out: &mut Vec<Entry>) {
        let e = Entry {
            seq: self.next_seq,
            ts: now,
            kind,
        };
        self.apply_entry(&e);
        out.push(e);
    }

    fn expire_due(&mut self, now: u64, out: &mut Vec<Entry>) {
        while let Some(id) = self.holds.due(now) {
            self.emit(now, EntryKind::Expire { id }, out);
        }
    }

    fn forget_old(&mut self, now: u64) {
        let keep_after = now.saturating_sub(self.config.id_retention_ms);
        self.holds.forget_ended(keep_after);
        while let Some((t, _)) = self.spends_seen.front() {
            if *t > keep_after {
                break;
            }
            let (_, id) = self.spends_seen.pop_front().unwrap();
            self.spends.remove(&id);
        }
    }

    /// A hold the caller knows exists (an entry or a check just named it).
    fn hold(&self, id: &str) -> Hold {
        self.holds.get(id).expect("a known hold")
    }

    /// Whether adding `add` (and `saved` nano-USD of savings) to the scope
    /// and every ancestor keeps each counter at or below
    /// [`bounds::MAX_COUNTER`]. `held + spent` bounds every counter of a
    /// node (a limit's usage is part of `spent`), so checking it is enough.
    fn headroom(&self, scope: &str, add: &Dims, saved: u64) -> Result<(), String> {
        let max = bounds::MAX_COUNTER as u128;
        for s in chain(scope) {
            let Some(n) = self.nodes.get(s) else {
                continue;
            };
            for d in Dim::ALL {
                let total = n.held.get(d) as u128 + n.spent.get(d) as u128 + add.get(d) as u128;
                if total > max {
                    return Err(format!(
                        "this would take {s}'s {} past the counter maximum {max}",
                        d.name()
                    ));
                }
            }
            if n.saved as u128 + saved as u128 > max {
                return Err(format!(
                    "this would take {s}'s saved past the counter maximum {max}"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_count_every_part_a_snapshot_writes() {
        // The snapshot cadence grows with `records`: each part counts.
        let mut st = State::new(Config::default());
        let mut out = Vec::new();
        let now = 1_795_305_600_000;
        let base = st.records();
        assert_eq!(base, st.prices.len(), "a new state holds only its prices");
        let rules = alerts::AlertRules {
            thresholds: vec![50],
            ..Default::default()
        };
        for scope in ["org:a", "org:b"] {
            let set = Command::AlertRulesSet {
                scope: scope.into(),
                rules: Some(rules.clone()),
            };
            st.apply(now, &set, &mut out);
        }
        assert_eq!(st.records(), base + st.nodes.len() + 2);
        let spend = Command::Spend {
            run: None,
            scope: "org:c".into(),
            model: "gpt-4o".into(),
            usage: Usage {
                input: 1,
                ..Usage::default()
            },
            id: Some("s1".into()),
        };
        st.apply(now, &spend, &mut out);
        assert_eq!(st.records(), base + st.nodes.len() + 2 + 1);
    }

    #[test]
    fn the_next_expiry_is_the_earliest_open_hold_and_a_scope_takes_at_most_16_limits() {
        use limit::{LimitSpec, Window};
        let mut st = State::new(Config::default());
        let mut out = Vec::new();
        let now = 1_795_305_600_000;
        assert_eq!(st.next_expiry(), None);
        for (id, ttl) in [("late", 9_000), ("soon", 2_000), ("mid", 5_000)] {
            let r = Command::Reserve(ReserveArgs {
                ttl_ms: Some(ttl),
                ..ReserveArgs::new(id, "org:a", "gpt-4o", 1, OutputAsk::Tokens(0))
            });
            st.apply(now, &r, &mut out);
        }
        assert_eq!(st.next_expiry(), Some(now + 2_000));
        // Cleaned lazily: after a release the time may be a stale earlier
        // one (the committer then wakes early), never a later one.
        st.apply(
            now + 1,
            &Command::Release {
                hold: "soon".into(),
            },
            &mut out,
        );
        assert!(st.next_expiry().is_some_and(|t| t <= now + 5_000));

        let limits = |n: usize| Command::BudgetSet {
            scope: "org:a".into(),
            limits: (0..n as u64)
                .map(|i| LimitSpec {
                    dim: Dim::Tokens,
                    window: Window::Rolling(1_000 + i),
                    amount: 10,
                })
                .collect(),
        };
        assert_eq!(
            st.apply(now, &limits(MAX_LIMITS_PER_SCOPE), &mut out),
            Value::Ok
        );
        let v = st.apply(now, &limits(MAX_LIMITS_PER_SCOPE + 1), &mut out);
        assert!(
            matches!(&v, Value::Error { msg, .. } if msg.contains("at most 16 limits")),
            "{v:?}"
        );
    }

    #[test]
    fn spend_series_are_bounded() {
        let mut s = SpendSeries::default();
        for i in 0..MAX_SERIES_SCOPES + 10 {
            s.add(&format!("org:{i}/team:t"), "m", 10, 1);
        }
        for i in 0..MAX_SERIES_MODELS + 5 {
            s.add("org:0", &format!("model-{i}"), 1, 1);
        }
        assert_eq!(s.by_scope.len(), MAX_SERIES_SCOPES + 1);
        let other = &s.by_scope[OTHER_SERIES]["m"];
        assert_eq!((other.requests, other.tokens), (10, 100));
        let org0 = &s.by_scope["org:0"];
        assert_eq!(org0.len(), MAX_SERIES_MODELS + 1);
        // "m" was first, then 19 more fit; 6 overflowed.
        assert_eq!(org0[OTHER_SERIES].requests, 6);
    }
}
