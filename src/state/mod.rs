//! The pure state machine: scopes, limits, windows, holds, prices and the
//! ledger entries that change them. No I/O, no clock reads, no randomness:
//! time is an argument. Every business rule of spendb lives here.
//!
//! Two functions carry it all:
//! - [`State::apply`] decides: it reads the state, validates a command and
//!   emits ledger entries (or none: reads, replays, denials);
//! - [`State::apply_entry`] evolves: the only code that changes balances, used
//!   both for entries just emitted and for entries replayed from the ledger, so
//!   a replay rebuilds exactly the state that was live.

pub mod access;
pub mod alerts;
pub mod bounds;
pub mod command;
pub mod commands;
pub mod cow;
pub mod entry;
pub mod error;
pub mod holds;
pub mod limit;
pub mod money;
pub mod price;
pub mod runs;
pub mod scope;
mod validate;

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

use serde::{Deserialize, Serialize};

pub use access::Access;
pub use command::{Command, ReserveArgs, Value};
pub use entry::{Entry, EntryKind};
pub use error::ErrorCode;
pub use holds::{Hold, HoldTable};
use limit::{Counter, Dim, Dims, Limit, LimitSpec};
use price::{Price, Usage};
use scope::chain;

pub const MAX_LIMITS_PER_SCOPE: usize = 16;
pub use bounds::MAX_MODEL_LEN;

/// Settings of the rules (not recorded in the ledger: they shape decisions,
/// never how an entry is applied).
#[derive(Clone, Debug)]
pub struct Config {
    pub default_ttl_ms: u64,
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            default_ttl_ms: 10 * 60_000,
            max_ttl_ms: 24 * 3_600_000,
            id_retention_ms: 10 * 60_000,
            default_price: None,
            run_timeout_ms: 3_600_000,
            loop_max_steps: runs::DEFAULT_MAX_STEPS,
            loop_repeats: runs::DEFAULT_REPEATS,
            loop_window: runs::DEFAULT_WINDOW,
        }
    }
}

/// What one scope carries: its own limits, and what is attributed to it and
/// everything below it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub limits: Vec<Limit>,
    /// Sum of the open holds at or below this scope, per dimension.
    pub held: Dims,
    /// All-time settled usage at or below this scope.
    pub spent: Dims,
    pub open_holds: u64,
    /// Steps the loop guard denied in runs at or below this scope.
    #[serde(default)]
    pub loop_denials: u64,
    /// Nano-USD cache hits saved at or below this scope.
    #[serde(default)]
    pub saved: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    pub usage: Usage,
    pub cost: u64,
    pub late: bool,
    pub at: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldStatus {
    Open,
    Committed(Settlement),
    Released { at: u64 },
    Expired { at: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendRecord {
    pub scope: String,
    pub model: String,
    pub usage: Usage,
    pub cost: u64,
    pub at: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    #[serde(skip)]
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
}

/// Settled usage per top-level scope and model, with a bounded number of
/// each (the rest are counted under `_other`), so `/metrics` has at most
/// (MAX_SERIES_SCOPES + 1) × (MAX_SERIES_MODELS + 1) series per metric.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SpendSeries {
    pub by_scope: BTreeMap<String, BTreeMap<String, SeriesTotals>>,
}

pub const MAX_SERIES_SCOPES: usize = 50;
pub const MAX_SERIES_MODELS: usize = 20;
pub const OTHER_SERIES: &str = "_other";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    retry_after: Option<u64>,
}

fn amount_value(dim: Dim, v: i128) -> Value {
    if dim == Dim::Cost {
        Value::Money(v)
    } else {
        Value::Int(v.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
    }
}

fn dims_value(d: &Dims) -> Value {
    Value::Map(vec![
        ("tokens", Value::Int(d.get(Dim::Tokens) as i64)),
        ("input", Value::Int(d.get(Dim::Input) as i64)),
        ("output", Value::Int(d.get(Dim::Output) as i64)),
        ("requests", Value::Int(d.get(Dim::Requests) as i64)),
        ("cost", Value::Money(d.get(Dim::Cost) as i128)),
    ])
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

    // ----- deciding -------------------------------------------------------

    /// Applies one command at time `now`: returns the reply and appends the
    /// entries it caused (expiries that fell due first, then its own).
    pub fn apply(&mut self, now: u64, cmd: &Command, out: &mut Vec<Entry>) -> Value {
        self.apply_as(now, cmd, None, out)
    }

    /// `apply` for a caller limited to some scopes: a command naming a scope
    /// outside them is refused, a hold outside them is as if it did not
    /// exist, and BUDGET.LIST shows only what lies inside them.
    pub fn apply_as(
        &mut self,
        now: u64,
        cmd: &Command,
        access: Option<&Access>,
        out: &mut Vec<Entry>,
    ) -> Value {
        if let Err(e) = validate::check(cmd) {
            return syntax(e);
        }
        if let Some(q) = access.and_then(|a| cmd.qualified(a)) {
            let a = access.expect("qualified for a tenant");
            let mut v = self.apply_checked(now, &q, a, out);
            v.unqualify(a);
            return v;
        }
        match access {
            Some(a) => self.apply_checked(now, cmd, a, out),
            None => self.apply_unchecked(now, cmd, out),
        }
    }

    /// `apply` for a caller with `access`, after its ids were qualified.
    fn apply_checked(
        &mut self,
        now: u64,
        cmd: &Command,
        a: &Access,
        out: &mut Vec<Entry>,
    ) -> Value {
        if let Some(scope) = cmd.scope() {
            if !a.allows(scope) {
                return Value::err(
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
                return Value::err(ErrorCode::Unknown, format!("hold {hold}"));
            }
        }
        if let Command::RunEnd { run } | Command::Step { run, .. } = cmd {
            let scope = self.runs.get(run).and_then(|r| r.scope.as_deref());
            if scope.is_some_and(|s| !a.allows(s)) {
                return Value::err(ErrorCode::Unknown, format!("run {run}"));
            }
        }
        let listing = matches!(
            cmd,
            Command::BudgetList { .. }
                | Command::HoldList { .. }
                | Command::AlertRulesList { .. }
                | Command::AlertList { .. }
        );
        let reply = self.apply_unchecked(now, cmd, out);
        match reply {
            // Lists show only what lies inside the caller's scopes: scope
            // names (BUDGET.LIST) or items with a `scope` field.
            Value::Array(all) if listing => Value::Array(
                all.into_iter()
                    .filter(|v| match v {
                        Value::Str(s) => a.allows(s),
                        _ => matches!(v.field("scope"), Some(Value::Str(s)) if a.allows(s)),
                    })
                    .collect(),
            ),
            reply => reply,
        }
    }

    fn apply_unchecked(&mut self, now: u64, cmd: &Command, out: &mut Vec<Entry>) -> Value {
        let now = now.max(self.last_ts);
        self.expire_due(now, out);
        match cmd {
            Command::BudgetSet { scope, limits } => self.budget_set(now, scope, limits, out),
            Command::BudgetGet { scope } => self.budget_get(now, scope),
            Command::BudgetDel { scope } => self.budget_del(now, scope, out),
            Command::BudgetList { prefix } => self.budget_list(prefix.as_deref()),
            Command::Reserve(a) => self.reserve(now, a, out),
            Command::Commit { hold, usage } => self.commit(now, hold, usage, out),
            Command::Release { hold } => self.release(now, hold, out),
            Command::Forecast { scope } => self.forecast(now, scope),
            Command::HoldList { prefix, limit } => {
                let mut open: Vec<(&str, Hold)> = self
                    .holds
                    .iter()
                    .filter(|(_, h)| {
                        h.status == HoldStatus::Open
                            && prefix
                                .as_deref()
                                .is_none_or(|p| scope::is_within(&h.scope, p))
                    })
                    .collect();
                open.sort_by(|a, b| (a.1.created_at, a.0).cmp(&(b.1.created_at, b.0)));
                Value::Array(
                    open.into_iter()
                        .take(*limit)
                        .map(|(id, h)| hold_value(id, &h))
                        .collect(),
                )
            }
            Command::HoldGet { hold } => match self.holds.get(hold) {
                Some(h) => hold_value(hold, &h),
                None => Value::err(ErrorCode::Unknown, format!("hold {hold}")),
            },
            Command::Spend {
                scope,
                model,
                usage,
                id,
            } => self.spend(now, scope, model, usage, id, out),
            Command::Balance { scope } => self.balance(now, scope),
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
            Command::CacheSaved { scope, cost } => {
                if let Err(e) = scope::validate_scope(scope) {
                    return syntax(e);
                }
                if let Err(e) = self.headroom(scope, &Dims::default(), *cost) {
                    return syntax(e);
                }
                self.emit(
                    now,
                    EntryKind::Saved {
                        scope: scope.clone(),
                        cost: *cost,
                    },
                    out,
                );
                Value::Ok
            }
            Command::RunEnd { run } => match self.runs.get(run) {
                Some(r) => {
                    let steps = r.steps;
                    self.emit(now, EntryKind::RunEnd { run: run.clone() }, out);
                    Value::Map(vec![
                        ("status", Value::str("ended")),
                        ("run", Value::str(run.as_str())),
                        ("steps", Value::Int(steps as i64)),
                    ])
                }
                None => Value::err(ErrorCode::Unknown, format!("run {run}")),
            },
            Command::PriceSet {
                model,
                input,
                output,
                cached,
                cache_write,
            } => {
                let price = Price::new(*input, *output, *cached, *cache_write);
                let kind = EntryKind::PriceSet {
                    model: model.to_ascii_lowercase(),
                    price,
                };
                self.emit(now, kind, out);
                Value::Ok
            }
            Command::PriceGet { model } => self.price_get(model),
            Command::SpendSeries => Value::Array(
                self.series
                    .by_scope
                    .iter()
                    .flat_map(|(scope, models)| {
                        models.iter().map(move |(model, t)| {
                            Value::Map(vec![
                                ("scope", Value::str(scope.as_str())),
                                ("model", Value::str(model.as_str())),
                                ("requests", Value::Int(t.requests as i64)),
                                ("tokens", Value::Int(t.tokens as i64)),
                                ("cost", Value::Money(t.cost as i128)),
                            ])
                        })
                    })
                    .collect(),
            ),
            Command::AlertRulesSet { scope, rules } => self.alert_rules_set(now, scope, rules, out),
            Command::AlertRulesList { prefix } => Value::Array(
                self.alerts
                    .scopes
                    .iter()
                    .filter(|(s, _)| prefix.as_deref().is_none_or(|p| scope::is_within(s, p)))
                    .map(|(s, a)| alert_rules_value(s, &a.rules))
                    .collect(),
            ),
            Command::AlertList {
                after,
                limit,
                undelivered,
                prefix,
            } => Value::Array(
                self.alerts
                    .log
                    .iter()
                    .filter(|r| {
                        r.id > *after
                            && (!undelivered || r.delivered_at.is_none())
                            && prefix
                                .as_deref()
                                .is_none_or(|p| scope::is_within(&r.event.scope, p))
                    })
                    .take(*limit)
                    .map(alert_value)
                    .collect(),
            ),
            Command::AlertDelivered { id } => match self.alerts.record(*id) {
                None => Value::err(ErrorCode::Unknown, format!("alert {id}")),
                Some(r) if r.delivered_at.is_some() => Value::Ok,
                Some(_) => {
                    self.emit(now, EntryKind::AlertDelivered { id: *id }, out);
                    Value::Ok
                }
            },
            Command::PriceList => {
                let sorted: BTreeMap<_, _> = self.prices.iter().collect();
                Value::Array(
                    sorted
                        .into_iter()
                        .map(|(m, p)| price_value(m, m, p))
                        .collect(),
                )
            }
        }
    }

    /// Housekeeping on the clock: expires due holds and forgets settled
    /// holds and spend ids older than the retention.
    pub fn tick(&mut self, now: u64, out: &mut Vec<Entry>) {
        let now = now.max(self.last_ts);
        self.expire_due(now, out);
        self.forget_old(now);
        let cutoff = now.saturating_sub(self.config.run_timeout_ms);
        for run in self.runs.idle_before(cutoff) {
            self.emit(now, EntryKind::RunEnd { run }, out);
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

    fn budget_set(
        &mut self,
        now: u64,
        scope: &str,
        limits: &[LimitSpec],
        out: &mut Vec<Entry>,
    ) -> Value {
        if let Err(e) = scope::validate_scope(scope) {
            return syntax(e);
        }
        if limits.is_empty() {
            return syntax("BUDGET.SET needs at least one limit");
        }
        if limits.len() > MAX_LIMITS_PER_SCOPE {
            return syntax(format!("at most {MAX_LIMITS_PER_SCOPE} limits per scope"));
        }
        for (i, l) in limits.iter().enumerate() {
            if limits[..i]
                .iter()
                .any(|o| o.dim == l.dim && o.window == l.window)
            {
                return syntax(format!(
                    "limit {} {} is given twice",
                    l.dim.name(),
                    l.window.describe()
                ));
            }
        }
        self.emit(
            now,
            EntryKind::BudgetSet {
                scope: scope.to_string(),
                limits: limits.to_vec(),
            },
            out,
        );
        Value::Ok
    }

    fn budget_del(&mut self, now: u64, scope: &str, out: &mut Vec<Entry>) -> Value {
        match self.nodes.get(scope) {
            Some(n) if !n.limits.is_empty() => {
                self.emit(
                    now,
                    EntryKind::BudgetDel {
                        scope: scope.to_string(),
                    },
                    out,
                );
                Value::Int(1)
            }
            _ => Value::Int(0),
        }
    }

    fn budget_get(&self, now: u64, scope: &str) -> Value {
        match self.nodes.get(scope) {
            Some(n) if !n.limits.is_empty() => Value::Map(vec![
                ("scope", Value::str(scope)),
                (
                    "limits",
                    Value::Array(
                        n.limits
                            .iter()
                            .map(|l| limit_value(None, n, l, now))
                            .collect(),
                    ),
                ),
            ]),
            _ => Value::err(ErrorCode::Unknown, format!("budget {scope}")),
        }
    }

    fn budget_list(&self, prefix: Option<&str>) -> Value {
        let mut scopes: Vec<&String> = self
            .nodes
            .iter()
            .filter(|(s, n)| !n.limits.is_empty() && prefix.is_none_or(|p| scope::is_within(s, p)))
            .map(|(s, _)| s)
            .collect();
        scopes.sort();
        Value::Array(scopes.into_iter().map(|s| Value::str(s.clone())).collect())
    }

    fn balance(&self, now: u64, scope: &str) -> Value {
        if let Err(e) = scope::validate_scope(scope) {
            return syntax(e);
        }
        let empty = Node::default();
        let n = self.nodes.get(scope).unwrap_or(&empty);
        let mut limits = Vec::new();
        for s in chain(scope) {
            if let Some(node) = self.nodes.get(s) {
                limits.extend(
                    node.limits
                        .iter()
                        .map(|l| limit_value(Some(s), node, l, now)),
                );
            }
        }
        Value::Map(vec![
            ("scope", Value::str(scope)),
            ("spent", dims_value(&n.spent)),
            ("held", dims_value(&n.held)),
            ("open_holds", Value::Int(n.open_holds as i64)),
            ("loop_denials", Value::Int(n.loop_denials as i64)),
            ("saved", Value::Money(n.saved as i128)),
            ("limits", Value::Array(limits)),
        ])
    }

    fn step(
        &mut self,
        now: u64,
        run: &str,
        signature: &[u8],
        scope: Option<&str>,
        (max, repeats, window): (Option<u64>, Option<u64>, Option<u64>),
        out: &mut Vec<Entry>,
    ) -> Value {
        if let Some(s) = scope {
            if let Err(e) = scope::validate_scope(s) {
                return syntax(e);
            }
        }
        let max = max.unwrap_or(self.config.loop_max_steps);
        let repeats = repeats.unwrap_or(self.config.loop_repeats);
        let window = window.unwrap_or(self.config.loop_window);
        if max == 0 || repeats < 2 || window < repeats || window > runs::MAX_WINDOW {
            return syntax(format!(
                "MAX must be at least 1, REPEATS at least 2, and WINDOW from REPEATS to {}",
                runs::MAX_WINDOW
            ));
        }
        let sig = runs::signature_digest(signature);
        let (steps, seen) = match self.runs.get(run) {
            Some(r) => (r.steps, r.repeats(sig, window)),
            None => (0, 1),
        };
        let reason = if steps >= max {
            Some("max_steps")
        } else if seen >= repeats {
            Some("repeated")
        } else {
            None
        };
        let scope_owned = scope.map(str::to_string);
        let mut fields = vec![("run", Value::str(run))];
        match reason {
            Some(reason) => {
                self.emit(
                    now,
                    EntryKind::StepDenied {
                        run: run.to_string(),
                        scope: scope_owned,
                    },
                    out,
                );
                if let Some(s) = scope {
                    self.check_alerts(now, s, out);
                }
                fields.insert(0, ("status", Value::str("denied")));
                fields.push(("reason", Value::str(reason)));
                fields.push(("steps", Value::Int(steps as i64)));
            }
            None => {
                self.emit(
                    now,
                    EntryKind::Step {
                        run: run.to_string(),
                        scope: scope_owned,
                        sig,
                    },
                    out,
                );
                fields.insert(0, ("status", Value::str("ok")));
                fields.push(("steps", Value::Int(steps as i64 + 1)));
                fields.push(("remaining", Value::Int((max - steps - 1) as i64)));
            }
        }
        fields.push(("repeats", Value::Int(seen as i64)));
        Value::Map(fields)
    }

    /// For each calendar limit on the scope: the recent burn rate (usage
    /// over the last [`limit::recent_window_ms`] of the period's kind), the
    /// usage projected at the period's end at that rate, and when the limit
    /// runs out at that rate (None if it does not within the period).
    /// Rolling and TOTAL limits have no period end and are listed without a
    /// projection.
    fn forecast(&self, now: u64, scope: &str) -> Value {
        if let Err(e) = scope::validate_scope(scope) {
            return syntax(e);
        }
        let Some(node) = self.nodes.get(scope).filter(|n| !n.limits.is_empty()) else {
            return Value::err(ErrorCode::Unknown, format!("budget {scope}"));
        };
        let items = node
            .limits
            .iter()
            .map(|l| {
                let dim = l.spec.dim;
                let (used, held) = (l.used(now) as u128, node.held.get(dim) as u128);
                let mut f = vec![
                    ("dim", Value::str(dim.name())),
                    ("window", Value::Str(l.spec.window.describe())),
                    ("limit", amount_value(dim, l.spec.amount as i128)),
                    ("used", amount_value(dim, used as i128)),
                    ("held", amount_value(dim, held as i128)),
                ];
                let Some(b) = l.burn(now, held as u64) else {
                    f.extend([("projected", Value::Null), ("exhausted_at", Value::Null)]);
                    return Value::Map(f);
                };
                f.extend([
                    ("period_end", Value::Int(b.period_end as i64)),
                    ("recent", amount_value(dim, b.recent as i128)),
                    ("rate_window_ms", Value::Int(b.rate_window_ms as i64)),
                    ("projected", amount_value(dim, b.projected as i128)),
                    (
                        "exhausted_at",
                        b.exhausted_at.map_or(Value::Null, |t| Value::Int(t as i64)),
                    ),
                ]);
                Value::Map(f)
            })
            .collect();
        Value::Map(vec![
            ("scope", Value::str(scope)),
            ("limits", Value::Array(items)),
        ])
    }

    fn price_of(&self, model: &str) -> Option<Price> {
        price::lookup(&self.prices, self.config.default_price.as_ref(), model).copied()
    }

    fn price_get(&self, model: &str) -> Value {
        for c in price::family_candidates(model) {
            if let Some(p) = self.prices.get(&c) {
                return price_value(model, &c, p);
            }
        }
        match &self.config.default_price {
            Some(p) => price_value(model, "default", p),
            None => Value::err(ErrorCode::NoPrice, format!("model {model}")),
        }
    }

    fn reserve(&mut self, now: u64, a: &ReserveArgs, out: &mut Vec<Entry>) -> Value {
        if let Some(h) = self.holds.get(&a.hold) {
            let same = *h.scope == *a.scope
                && *h.model == *a.model
                && h.input == a.input
                && h.output == a.output
                && h.ttl_ms == a.ttl_ms;
            return if same {
                granted_value(&a.hold, &h)
            } else {
                Value::err(
                    ErrorCode::Exists,
                    format!("hold {} was reserved with other arguments", a.hold),
                )
            };
        }
        if let Err(e) = scope::validate_scope(&a.scope) {
            return syntax(e);
        }
        let ttl = a.ttl_ms.unwrap_or(self.config.default_ttl_ms);
        if ttl == 0 || ttl > self.config.max_ttl_ms {
            return syntax(format!(
                "TTL must be between 1 and {} ms",
                self.config.max_ttl_ms
            ));
        }
        let Some(price) = self.price_of(&a.model) else {
            return Value::err(ErrorCode::NoPrice, format!("model {}", a.model));
        };
        let cost = price.max_cost(a.input, a.output);
        if let Err(e) = bounds::check_usd(cost, "the most this call can cost") {
            return syntax(e);
        }
        let amounts = Dims::call(a.input, a.output, cost);
        if let Err(e) = self.headroom(&a.scope, &amounts, 0) {
            return syntax(e);
        }

        if let Some(d) = self.check(now, &a.scope, &amounts) {
            return Value::Map(vec![
                ("status", Value::str("denied")),
                ("hold", Value::str(a.hold.clone())),
                ("scope", Value::str(d.scope)),
                (
                    "limit",
                    Value::Str(format!(
                        "{} {}",
                        d.spec.dim.name(),
                        d.spec.window.describe()
                    )),
                ),
                ("remaining", amount_value(d.spec.dim, d.remaining)),
                (
                    "retry_after_ms",
                    Value::Int(d.retry_after.map_or(-1, |t| t as i64)),
                ),
                ("tokens", Value::Int(amounts.get(Dim::Tokens) as i64)),
                ("cost", Value::Money(cost as i128)),
            ]);
        }
        let kind = EntryKind::Hold {
            id: a.hold.clone(),
            scope: a.scope.clone(),
            model: a.model.clone(),
            input: a.input,
            output: a.output,
            ttl_ms: a.ttl_ms,
            amounts,
            expires_at: now.saturating_add(ttl),
        };
        self.emit(now, kind, out);
        granted_value(&a.hold, &self.hold(&a.hold))
    }

    /// Checks `amounts` against every limit on the scope and its ancestors.
    /// None if all fit; otherwise the most binding limit (waiting cannot help
    /// beats the longest wait).
    fn check(&self, now: u64, scope: &str, amounts: &Dims) -> Option<Denial> {
        let mut worst: Option<Denial> = None;
        for s in chain(scope) {
            let Some(node) = self.nodes.get(s) else {
                continue;
            };
            for l in &node.limits {
                let dim = l.spec.dim;
                let (amt, held, used) = (amounts.get(dim), node.held.get(dim), l.used(now));
                if (used as u128) + (held as u128) + (amt as u128) <= l.spec.amount as u128 {
                    continue;
                }
                let d = Denial {
                    scope: s.to_string(),
                    spec: l.spec,
                    remaining: l.spec.amount as i128 - used as i128 - held as i128,
                    retry_after: l.retry_after(now, held, amt),
                };
                let worse = match (&worst, d.retry_after) {
                    (None, _) => true,
                    (Some(w), None) => w.retry_after.is_some(),
                    (Some(w), Some(t)) => w.retry_after.is_some_and(|wt| t > wt),
                };
                if worse {
                    worst = Some(d);
                }
            }
        }
        worst
    }

    fn commit(&mut self, now: u64, id: &str, usage: &Usage, out: &mut Vec<Entry>) -> Value {
        if let Err(e) = usage.check() {
            return syntax(e);
        }
        let Some(h) = self.holds.get(id) else {
            return Value::err(ErrorCode::Unknown, format!("hold {id}"));
        };
        let late = match &h.status {
            HoldStatus::Committed(s) => {
                return if s.usage == *usage {
                    committed_value(id, &h, s)
                } else {
                    Value::err(
                        ErrorCode::Exists,
                        format!("hold {id} was committed with other arguments"),
                    )
                };
            }
            HoldStatus::Released { .. } => {
                return Value::err(ErrorCode::State, format!("hold {id} was released"));
            }
            HoldStatus::Open => false,
            HoldStatus::Expired { .. } => true,
        };
        // The price a hold was made at may have changed since; an unknown
        // price now (deleted default) falls back to the hold's own estimate.
        let cost = match self.price_of(&h.model) {
            Some(p) => p.cost(usage),
            None => h.amounts.get(Dim::Cost),
        };
        if let Err(e) = bounds::check_usd(cost, "the cost of this call") {
            return syntax(e);
        }
        let actual = Dims::call(usage.input, usage.output, cost);
        if let Err(e) = self.headroom(&h.scope, &actual, 0) {
            return syntax(e);
        }
        self.emit(
            now,
            EntryKind::Commit {
                id: id.to_string(),
                usage: *usage,
                cost,
                late,
            },
            out,
        );
        let h = self.hold(id);
        self.check_alerts(now, &h.scope, out);
        match &h.status {
            HoldStatus::Committed(s) => committed_value(id, &h, s),
            _ => unreachable!("commit entry settles the hold"),
        }
    }

    fn release(&mut self, now: u64, id: &str, out: &mut Vec<Entry>) -> Value {
        let Some(h) = self.holds.get(id) else {
            return Value::err(ErrorCode::Unknown, format!("hold {id}"));
        };
        match h.status {
            HoldStatus::Open => {
                self.emit(now, EntryKind::Release { id: id.to_string() }, out);
                release_value(id, &self.hold(id))
            }
            HoldStatus::Released { .. } | HoldStatus::Expired { .. } => release_value(id, &h),
            HoldStatus::Committed(_) => {
                Value::err(ErrorCode::State, format!("hold {id} was committed"))
            }
        }
    }

    fn spend(
        &mut self,
        now: u64,
        scope: &str,
        model: &str,
        usage: &Usage,
        id: &Option<String>,
        out: &mut Vec<Entry>,
    ) -> Value {
        if let Err(e) = usage.check() {
            return syntax(e);
        }
        if let Some(id) = id {
            if let Some(r) = self.spends.get(id) {
                return if r.scope == scope && r.model == model && r.usage == *usage {
                    spend_value(Some(id), r.usage, r.cost)
                } else {
                    Value::err(
                        ErrorCode::Exists,
                        format!("spend {id} was recorded with other arguments"),
                    )
                };
            }
        }
        if let Err(e) = scope::validate_scope(scope) {
            return syntax(e);
        }
        let Some(price) = self.price_of(model) else {
            return Value::err(ErrorCode::NoPrice, format!("model {model}"));
        };
        let cost = price.cost(usage);
        if let Err(e) = bounds::check_usd(cost, "the cost of this call") {
            return syntax(e);
        }
        let actual = Dims::call(usage.input, usage.output, cost);
        if let Err(e) = self.headroom(scope, &actual, 0) {
            return syntax(e);
        }
        let kind = EntryKind::Spend {
            id: id.clone(),
            scope: scope.to_string(),
            model: model.to_string(),
            usage: *usage,
            cost,
        };
        self.emit(now, kind, out);
        self.check_alerts(now, scope, out);
        spend_value(id.as_deref(), *usage, cost)
    }

    // ----- evolving -------------------------------------------------------

    /// Applies one ledger entry. The only place balances change.
    pub fn apply_entry(&mut self, e: &Entry) {
        assert_eq!(
            e.seq, self.next_seq,
            "ledger entries apply in order without gaps"
        );
        let ts = e.ts;
        match &e.kind {
            EntryKind::BudgetSet { scope, limits } => {
                let node = self.nodes.entry(scope.clone()).or_default();
                let mut old = std::mem::take(&mut node.limits);
                node.limits = limits
                    .iter()
                    .map(|spec| {
                        // A limit that stays (same dimension and window) keeps its usage.
                        let counter = match old
                            .iter()
                            .position(|l| l.spec.dim == spec.dim && l.spec.window == spec.window)
                        {
                            Some(i) => old.swap_remove(i).counter,
                            None => Counter::new(spec.window, ts),
                        };
                        Limit {
                            spec: *spec,
                            counter,
                        }
                    })
                    .collect();
            }
            EntryKind::BudgetDel { scope } => {
                if let Some(n) = self.nodes.get_mut(scope) {
                    n.limits.clear();
                }
            }
            EntryKind::Hold {
                id,
                scope,
                model,
                input,
                output,
                ttl_ms,
                amounts,
                expires_at,
            } => {
                for s in chain(scope) {
                    let n = self.node_mut(s);
                    n.held.add(amounts);
                    n.open_holds += 1;
                }
                let hold = Hold {
                    scope: scope.as_str().into(),
                    model: model.as_str().into(),
                    input: *input,
                    output: *output,
                    ttl_ms: *ttl_ms,
                    amounts: *amounts,
                    created_at: ts,
                    expires_at: *expires_at,
                    status: HoldStatus::Open,
                };
                self.holds.insert(id, hold);
            }
            EntryKind::Commit {
                id,
                usage,
                cost,
                late,
            } => {
                let h = self.hold(id);
                let (held, model) = (h.amounts, h.model);
                let (scope, was_open) = self.end_hold(id);
                assert_eq!(
                    was_open, !late,
                    "a commit is late exactly when its hold had ended"
                );
                let actual = Dims::call(usage.input, usage.output, *cost);
                self.charge(&scope, ts, &actual);
                self.series.add(
                    &scope,
                    &model,
                    usage.input.saturating_add(usage.output),
                    *cost,
                );
                if !self.alerts.is_empty() {
                    let overrun = actual.get(Dim::Cost) > held.get(Dim::Cost)
                        || actual.get(Dim::Tokens) > held.get(Dim::Tokens);
                    self.alert_inputs(&scope, ts, &actual, overrun);
                }
                let settled = HoldStatus::Committed(Settlement {
                    usage: *usage,
                    cost: *cost,
                    late: *late,
                    at: ts,
                });
                self.holds.set_status(id, settled);
            }
            EntryKind::Release { id } | EntryKind::Expire { id } => {
                let (_, was_open) = self.end_hold(id);
                assert!(was_open, "only an open hold is released or expires");
                let ended = match e.kind {
                    EntryKind::Release { .. } => HoldStatus::Released { at: ts },
                    _ => HoldStatus::Expired { at: ts },
                };
                self.holds.set_status(id, ended);
            }
            EntryKind::Spend {
                id,
                scope,
                model,
                usage,
                cost,
            } => {
                let actual = Dims::call(usage.input, usage.output, *cost);
                self.charge(scope, ts, &actual);
                self.series.add(
                    scope,
                    model,
                    usage.input.saturating_add(usage.output),
                    *cost,
                );
                if !self.alerts.is_empty() {
                    self.alert_inputs(scope, ts, &actual, false);
                }
                if let Some(id) = id {
                    let r = SpendRecord {
                        scope: scope.clone(),
                        model: model.clone(),
                        usage: *usage,
                        cost: *cost,
                        at: ts,
                    };
                    self.spends.insert(id.clone(), r);
                    self.spends_seen.push_back((ts, id.clone()));
                }
            }
            EntryKind::PriceSet { model, price } => {
                self.prices.insert(model.clone(), *price);
            }
            EntryKind::Step { run, scope, sig } => {
                self.runs.step(run, scope.as_deref(), *sig, ts);
            }
            EntryKind::StepDenied { run, scope } => {
                self.runs.denied(run, scope.as_deref(), ts);
                if let Some(scope) = scope {
                    for s in chain(scope) {
                        self.node_mut(s).loop_denials += 1;
                    }
                    if !self.alerts.is_empty() {
                        self.alert_inputs(scope, ts, &Dims::default(), true);
                    }
                }
            }
            EntryKind::RunEnd { run } => {
                self.runs.end(run);
            }
            EntryKind::Saved { scope, cost } => {
                for s in chain(scope) {
                    let n = self.node_mut(s);
                    n.saved = n.saved.saturating_add(*cost);
                }
            }
            EntryKind::AlertRules { scope, rules } => match rules {
                Some(rules) => {
                    let mut fresh = alerts::ScopeAlerts::new(rules.clone(), ts);
                    if let Some(old) = self.alerts.scopes.remove(scope) {
                        // What fired this period stays fired when rules change.
                        fresh.fired = old.fired;
                    }
                    self.alerts.scopes.insert(scope.clone(), fresh);
                }
                None => {
                    self.alerts.scopes.remove(scope);
                }
            },
            EntryKind::Alert(ev) => self.alerts.fired(e.seq, ts, ev),
            EntryKind::AlertDelivered { id } => self.alerts.delivered(*id, ts),
        }
        self.next_seq = e.seq + 1;
        self.last_ts = self.last_ts.max(ts);
    }

    /// Feeds the spike and runaway rules of the scope and its ancestors.
    fn alert_inputs(&mut self, scope: &str, ts: u64, usage: &Dims, event: bool) {
        for s in chain(scope) {
            if let Some(a) = self.alerts.scopes.get_mut(s) {
                a.record_usage(ts, usage);
                if event {
                    a.record_event(ts);
                }
            }
        }
    }

    /// Checks the alert rules of `scope` and its ancestors after a change
    /// there, and records what fires.
    fn check_alerts(&mut self, now: u64, scope: &str, out: &mut Vec<Entry>) {
        if self.alerts.is_empty() {
            return;
        }
        let mut fired = Vec::new();
        for s in chain(scope) {
            let Some(a) = self.alerts.scopes.get(s) else {
                continue;
            };
            if let Some(n) = self.nodes.get(s) {
                a.check_limits(s, &n.limits, now, &mut fired);
            }
            a.check_spike(s, now, &mut fired);
            a.check_runaway(s, now, &mut fired);
        }
        for ev in fired {
            self.emit(now, EntryKind::Alert(ev), out);
        }
    }

    fn alert_rules_set(
        &mut self,
        now: u64,
        scope: &str,
        rules: &Option<alerts::AlertRules>,
        out: &mut Vec<Entry>,
    ) -> Value {
        if let Err(e) = scope::validate_scope(scope) {
            return syntax(e);
        }
        let rules = match rules.clone().map(alerts::AlertRules::validate).transpose() {
            Ok(r) => r,
            Err(e) => return syntax(e),
        };
        if rules.is_none() && !self.alerts.scopes.contains_key(scope) {
            return Value::err(ErrorCode::Unknown, format!("alert rules on {scope}"));
        }
        let value = rules.as_ref().map(|r| alert_rules_value(scope, r));
        self.emit(
            now,
            EntryKind::AlertRules {
                scope: scope.to_string(),
                rules,
            },
            out,
        );
        // Usage already past a threshold fires now, not at the next commit.
        self.check_alerts(now, scope, out);
        value.unwrap_or(Value::Ok)
    }

    fn node_mut(&mut self, scope: &str) -> &mut Node {
        if !self.nodes.contains_key(scope) {
            self.nodes.insert(scope.to_string(), Node::default());
        }
        self.nodes.get_mut(scope).unwrap()
    }

    /// Takes an open hold's amounts off every level it held on. Returns the
    /// hold's scope and whether it was open.
    fn end_hold(&mut self, id: &str) -> (Arc<str>, bool) {
        let h = self.hold(id);
        if h.status != HoldStatus::Open {
            return (h.scope, false);
        }
        for s in chain(&h.scope) {
            let n = self.node_mut(s);
            n.held.sub(&h.amounts);
            n.open_holds -= 1;
        }
        (h.scope, true)
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

    /// Books settled usage on the scope and every ancestor, and into every
    /// limit on them.
    fn charge(&mut self, scope: &str, ts: u64, actual: &Dims) {
        for s in chain(scope) {
            let n = self.node_mut(s);
            n.spent.add(actual);
            for l in &mut n.limits {
                l.counter.charge(l.spec.window, ts, actual.get(l.spec.dim));
            }
        }
    }

    // ----- auditing -------------------------------------------------------

    /// A canonical view of everything balances depend on, for comparing a
    /// live or snapshotted state with one rebuilt from the ledger. Leaves out
    /// what only serves idempotent replies (settled holds, spend ids), whose
    /// forgetting depends on when housekeeping ran.
    pub fn digest(&self) -> Digest {
        Digest {
            next_seq: self.next_seq,
            nodes: self
                .nodes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            open_holds: self
                .holds
                .iter()
                .filter(|(_, h)| h.status == HoldStatus::Open)
                .map(|(k, h)| (k.to_string(), h))
                .collect(),
            prices: self.prices.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            runs: self
                .runs
                .runs
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            alerts: self.alerts.clone(),
        }
    }

    /// Checks the internal invariants: every scope's held equals the sum of
    /// the open holds at or below it, and the expiry index matches the open
    /// holds. Returns a description of the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.holds.check_expiry_index()?;
        let mut held: BTreeMap<String, (Dims, u64)> = BTreeMap::new();
        for (_, h) in self.holds.iter() {
            if h.status != HoldStatus::Open {
                continue;
            }
            for s in chain(&h.scope) {
                let e = held.entry(s.to_string()).or_default();
                e.0.add(&h.amounts);
                e.1 += 1;
            }
        }
        for (s, n) in &self.nodes {
            let (want, count) = held.get(s.as_str()).copied().unwrap_or_default();
            if n.held != want || n.open_holds != count {
                return Err(format!(
                    "scope {s}: held {:?}/{} but open holds sum to {:?}/{}",
                    n.held, n.open_holds, want, count
                ));
            }
        }
        Ok(())
    }
}

/// See [`State::digest`].
#[derive(Debug, PartialEq, Eq)]
pub struct Digest {
    pub next_seq: u64,
    pub nodes: BTreeMap<String, Node>,
    pub open_holds: BTreeMap<String, Hold>,
    pub prices: BTreeMap<String, Price>,
    pub runs: BTreeMap<String, runs::Run>,
    pub alerts: alerts::Alerts,
}

impl Digest {
    /// The first difference between two digests, described for a person.
    pub fn diff(&self, other: &Digest) -> Option<String> {
        if self.next_seq != other.next_seq {
            return Some(format!(
                "ledger position: {} vs {}",
                self.next_seq - 1,
                other.next_seq - 1
            ));
        }
        for (k, v) in &self.nodes {
            match other.nodes.get(k) {
                None => return Some(format!("scope {k}: missing on the other side")),
                Some(o) if o != v => return Some(format!("scope {k}: {v:?} vs {o:?}")),
                _ => {}
            }
        }
        if let Some(k) = other.nodes.keys().find(|k| !self.nodes.contains_key(*k)) {
            return Some(format!("scope {k}: missing on this side"));
        }
        for (k, v) in &self.open_holds {
            if other.open_holds.get(k) != Some(v) {
                return Some(format!(
                    "open hold {k}: {v:?} vs {:?}",
                    other.open_holds.get(k)
                ));
            }
        }
        if let Some(k) = other
            .open_holds
            .keys()
            .find(|k| !self.open_holds.contains_key(*k))
        {
            return Some(format!("open hold {k}: missing on this side"));
        }
        if self.prices != other.prices {
            return Some("price tables differ".into());
        }
        if self.runs != other.runs {
            let k = self
                .runs
                .keys()
                .chain(other.runs.keys())
                .find(|k| self.runs.get(*k) != other.runs.get(*k));
            return Some(format!("run {}: differs", k.map_or("?", |k| k.as_str())));
        }
        if self.alerts != other.alerts {
            return Some("alert rules or fired alerts differ".into());
        }
        None
    }
}

fn limit_value(scope: Option<&str>, node: &Node, l: &Limit, now: u64) -> Value {
    let dim = l.spec.dim;
    let used = l.used(now);
    let held = node.held.get(dim);
    let mut fields = Vec::with_capacity(8);
    if let Some(s) = scope {
        fields.push(("scope", Value::str(s)));
    }
    fields.extend([
        ("dim", Value::str(dim.name())),
        ("window", Value::Str(l.spec.window.describe())),
        ("limit", amount_value(dim, l.spec.amount as i128)),
        ("used", amount_value(dim, used as i128)),
        ("held", amount_value(dim, held as i128)),
        (
            "remaining",
            amount_value(dim, l.spec.amount as i128 - used as i128 - held as i128),
        ),
        (
            "resets_at",
            l.counter
                .resets_at(l.spec.window, now)
                .map_or(Value::Null, |t| Value::Int(t as i64)),
        ),
    ]);
    Value::Map(fields)
}

fn granted_value(id: &str, h: &Hold) -> Value {
    Value::Map(vec![
        ("status", Value::str("granted")),
        ("hold", Value::str(id)),
        ("tokens", Value::Int(h.amounts.get(Dim::Tokens) as i64)),
        ("cost", Value::Money(h.amounts.get(Dim::Cost) as i128)),
        ("expires_at", Value::Int(h.expires_at as i64)),
    ])
}

fn committed_value(id: &str, h: &Hold, s: &Settlement) -> Value {
    let tokens = s.usage.input + s.usage.output;
    let (held_tokens, held_cost) = (h.amounts.get(Dim::Tokens), h.amounts.get(Dim::Cost));
    let (released, released_tokens) = if s.late {
        (0, 0)
    } else {
        (
            held_cost.saturating_sub(s.cost),
            held_tokens.saturating_sub(tokens),
        )
    };
    Value::Map(vec![
        ("status", Value::str("committed")),
        ("hold", Value::str(id)),
        ("tokens", Value::Int(tokens as i64)),
        ("cost", Value::Money(s.cost as i128)),
        ("released", Value::Money(released as i128)),
        ("released_tokens", Value::Int(released_tokens as i64)),
        (
            "overrun",
            Value::Money(s.cost.saturating_sub(held_cost) as i128),
        ),
        (
            "overrun_tokens",
            Value::Int(tokens.saturating_sub(held_tokens) as i64),
        ),
        ("late", Value::Int(s.late as i64)),
    ])
}

fn alert_rules_value(scope: &str, r: &alerts::AlertRules) -> Value {
    let spike = r.spike.map_or(Value::Null, |s| {
        Value::Map(vec![
            ("dim", Value::str(s.dim.name())),
            ("factor", Value::Int(s.factor as i64)),
            ("window", Value::Str(limit::format_duration_ms(s.window_ms))),
            ("min", amount_value(s.dim, s.min as i128)),
        ])
    });
    let runaway = r.runaway.map_or(Value::Null, |x| {
        Value::Map(vec![
            ("events", Value::Int(x.events as i64)),
            ("window", Value::Str(limit::format_duration_ms(x.window_ms))),
        ])
    });
    Value::Map(vec![
        ("scope", Value::str(scope)),
        (
            "thresholds",
            Value::Array(r.thresholds.iter().map(|&t| Value::Int(t as i64)).collect()),
        ),
        ("forecast", Value::Bool(r.forecast)),
        ("spike", spike),
        ("runaway", runaway),
        ("webhook", r.webhook.clone().map_or(Value::Null, Value::Str)),
    ])
}

fn alert_value(r: &alerts::AlertRecord) -> Value {
    let e = &r.event;
    let amount = |v: u64| match e.dim {
        Some(d) => amount_value(d, v as i128),
        None => Value::Int(v as i64),
    };
    Value::Map(vec![
        ("id", Value::Int(r.id as i64)),
        ("at", Value::Int(r.at as i64)),
        ("scope", Value::str(e.scope.as_str())),
        ("rule", Value::str(e.rule.as_str())),
        ("key", Value::str(e.key.as_str())),
        ("dim", e.dim.map_or(Value::Null, |d| Value::str(d.name()))),
        ("period", Value::Int(e.period as i64)),
        ("observed", amount(e.observed)),
        ("bound", amount(e.bound)),
        ("message", Value::str(e.message.as_str())),
        ("webhook", e.webhook.clone().map_or(Value::Null, Value::Str)),
        (
            "delivered_at",
            r.delivered_at.map_or(Value::Null, |t| Value::Int(t as i64)),
        ),
    ])
}

fn release_value(id: &str, h: &Hold) -> Value {
    let (status, released) = match h.status {
        HoldStatus::Released { .. } => ("released", h.amounts),
        _ => ("expired", Dims::default()),
    };
    Value::Map(vec![
        ("status", Value::str(status)),
        ("hold", Value::str(id)),
        ("released", Value::Money(released.get(Dim::Cost) as i128)),
        (
            "released_tokens",
            Value::Int(released.get(Dim::Tokens) as i64),
        ),
    ])
}

fn spend_value(id: Option<&str>, usage: Usage, cost: u64) -> Value {
    Value::Map(vec![
        ("status", Value::str("spent")),
        ("id", id.map_or(Value::Null, Value::str)),
        ("tokens", Value::Int((usage.input + usage.output) as i64)),
        ("cost", Value::Money(cost as i128)),
    ])
}

fn hold_value(id: &str, h: &Hold) -> Value {
    let status = match h.status {
        HoldStatus::Open => "open",
        HoldStatus::Committed(_) => "committed",
        HoldStatus::Released { .. } => "released",
        HoldStatus::Expired { .. } => "expired",
    };
    let mut f = vec![
        ("hold", Value::str(id)),
        ("status", Value::str(status)),
        ("scope", Value::str(&*h.scope)),
        ("model", Value::str(&*h.model)),
        ("input", Value::Int(h.input as i64)),
        ("output", Value::Int(h.output as i64)),
        ("tokens", Value::Int(h.amounts.get(Dim::Tokens) as i64)),
        ("cost", Value::Money(h.amounts.get(Dim::Cost) as i128)),
        ("created_at", Value::Int(h.created_at as i64)),
        ("expires_at", Value::Int(h.expires_at as i64)),
        (
            "ended_at",
            h.ended_at().map_or(Value::Null, |t| Value::Int(t as i64)),
        ),
    ];
    if let HoldStatus::Committed(s) = &h.status {
        f.push((
            "actual_tokens",
            Value::Int((s.usage.input + s.usage.output) as i64),
        ));
        f.push(("actual_cost", Value::Money(s.cost as i128)));
        f.push(("late", Value::Int(s.late as i64)));
    }
    Value::Map(f)
}

fn price_value(model: &str, matched: &str, p: &Price) -> Value {
    let mut f = vec![
        ("model", Value::str(model)),
        ("matched", Value::str(matched)),
    ];
    f.extend(p.describe().into_iter().map(|(k, v)| (k, Value::Str(v))));
    Value::Map(f)
}

#[cfg(test)]
mod forecast_tests {
    use super::*;
    use crate::state::limit::{LimitSpec, Period, Window};

    #[test]
    fn the_recent_rate_projects_the_end_and_the_exhaustion_time() {
        let mut st = State::new(Config::default());
        let mut out = Vec::new();
        let day = limit::period_start(Period::Day, 1_795_305_600_123);
        let hour = 3_600_000;
        let set = Command::BudgetSet {
            scope: "org:f".into(),
            limits: vec![LimitSpec {
                dim: Dim::Tokens,
                window: Window::Calendar(Period::Day),
                amount: 5000,
            }],
        };
        st.apply(day, &set, &mut out);
        let spend = |input| Command::Spend {
            scope: "org:f".into(),
            model: "gpt-4o".into(),
            usage: price::Usage {
                input,
                output: 0,
                cached: 0,
                cache_write: 0,
            },
            id: None,
        };
        // 300 early in the day, then 590 within the last two hours: the
        // rate follows the recent pace, not the day's average.
        st.apply(day + hour, &spend(300), &mut out);
        st.apply(day + 5 * hour, &spend(590), &mut out);
        let now = day + 6 * hour;
        let forecast = |st: &mut State, now| {
            let cmd = Command::Forecast {
                scope: "org:f".into(),
            };
            let v = st.apply(now, &cmd, &mut Vec::new());
            let Value::Array(limits) = v.field("limits").unwrap().clone() else {
                panic!("{v:?}")
            };
            limits[0].clone()
        };
        let l = forecast(&mut st, now);
        // The 2 h window is 60 buckets of 2 min; at a bucket boundary the
        // live ones cover 59 × 2 min = 7,080,000 ms. 590 in that is one token
        // per 12 s: 5400 more in the 18 h left, 6290 in all.
        assert_eq!(l.field("recent"), Some(&Value::Int(590)));
        assert_eq!(l.field("rate_window_ms"), Some(&Value::Int(7_080_000)));
        assert_eq!(l.field("projected"), Some(&Value::Int(6290)));
        // The 4110 left last 4110 × 12 s.
        assert_eq!(
            l.field("exhausted_at"),
            Some(&Value::Int((now + 4110 * 12_000) as i64))
        );
        assert_eq!(
            l.field("period_end"),
            Some(&Value::Int((day + 24 * hour) as i64))
        );
        // Two quiet hours later the recent rate is nil: no more spend
        // projected, and the limit does not run out.
        let l = forecast(&mut st, now + 2 * hour);
        assert_eq!(l.field("projected"), Some(&Value::Int(890)));
        assert_eq!(l.field("exhausted_at"), Some(&Value::Null));
        let none = Command::Forecast {
            scope: "org:none".into(),
        };
        assert!(st.apply(now, &none, &mut out).is_error());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
