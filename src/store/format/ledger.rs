//! Ledger entry format, version 1: what every ledger record holds (bincode
//! 2 of [`EntryV1`], inside the CRC frame of `store::frame`), and, as JSON,
//! what `/v1/ledger` and `spendb ledger export` print: the kind's fields
//! by these names, plus `kind`, `seq` and `ts`.
//!
//! The types borrow from the state's entry when writing (no copy on the
//! committer's path) and own their data when reading. Variant order and
//! field order are the format: never reorder them; add a version instead.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::state::alerts::{AlertEvent, AlertRules, RunawayRule, SpikeRule};
use crate::state::grant::GrantLine;
use crate::state::limit::{Dim, Dims, LimitSpec, Period, Window, Zone};
use crate::state::price::{Price, Usage};
use crate::state::{Entry, EntryKind, RunOutcome};

type Text<'a> = Cow<'a, str>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryV1<'a> {
    pub seq: u64,
    pub ts: u64,
    pub kind: KindV1<'a>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KindV1<'a> {
    BudgetSet {
        scope: Text<'a>,
        limits: Cow<'a, [LimitSpecV1]>,
    },
    BudgetDel {
        scope: Text<'a>,
    },
    Hold {
        id: Text<'a>,
        scope: Text<'a>,
        model: Text<'a>,
        input: u64,
        output: u64,
        ttl_ms: Option<u64>,
        amounts: DimsV1,
        expires_at: u64,
    },
    Commit {
        id: Text<'a>,
        usage: UsageV1,
        cost: u64,
        late: bool,
    },
    Release {
        id: Text<'a>,
    },
    Expire {
        id: Text<'a>,
    },
    Spend {
        id: Option<Text<'a>>,
        scope: Text<'a>,
        model: Text<'a>,
        usage: UsageV1,
        cost: u64,
    },
    PriceSet {
        model: Text<'a>,
        price: PriceV1,
    },
    Step {
        run: Text<'a>,
        scope: Option<Text<'a>>,
        sig: u64,
    },
    StepDenied {
        run: Text<'a>,
        scope: Option<Text<'a>>,
    },
    RunEnd {
        run: Text<'a>,
    },
    Saved {
        scope: Text<'a>,
        cost: u64,
    },
    AlertRules {
        scope: Text<'a>,
        rules: Option<AlertRulesV1<'a>>,
    },
    Alert(AlertEventV1<'a>),
    AlertDelivered {
        id: u64,
    },
    /// A price with the model's maximum output tokens (issue #14); one
    /// without is still written as `PriceSet`. Its JSON view is a
    /// `price_set` with a `max_output` field.
    PriceSetMax {
        model: Text<'a>,
        price: PriceV1,
        max_output: u64,
    },
    /// A hold of a call in an agent run (`RESERVE … RUN`); one without a
    /// run is still written as `Hold`. Its JSON view is a `hold` with a
    /// `run` field.
    HoldInRun {
        id: Text<'a>,
        scope: Text<'a>,
        model: Text<'a>,
        input: u64,
        output: u64,
        ttl_ms: Option<u64>,
        amounts: DimsV1,
        expires_at: u64,
        run: Text<'a>,
    },
    /// A spend in an agent run (`SPEND … RUN`); JSON: a `spend` with `run`.
    SpendInRun {
        id: Option<Text<'a>>,
        scope: Text<'a>,
        model: Text<'a>,
        usage: UsageV1,
        cost: u64,
        run: Text<'a>,
    },
    /// RUN.END with an OUTCOME; without one (or at the run timeout) it is
    /// still `RunEnd`. JSON: a `run_end` with `outcome`.
    RunEndOutcome {
        run: Text<'a>,
        outcome: RunOutcomeV1,
    },
    /// Cluster mode: this node's grant of a global limit (issue #15).
    Grant(GrantLineV1<'a>),
}

/// A cluster node's grant line (`state::grant::GrantLine`): the ledger's
/// `grant` entry, and the lines of a layout 5 snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantLineV1<'a> {
    pub scope: Text<'a>,
    pub limit: LimitSpecV1,
    pub period: u64,
    pub epoch: u64,
    pub base: u64,
    pub granted: u64,
    pub reported: u64,
    pub u_max: u64,
}

impl<'a> From<&'a GrantLine> for GrantLineV1<'a> {
    fn from(g: &'a GrantLine) -> GrantLineV1<'a> {
        GrantLineV1 {
            scope: Cow::Borrowed(&g.scope),
            limit: g.spec.into(),
            period: g.period,
            epoch: g.epoch,
            base: g.base,
            granted: g.granted,
            reported: g.reported,
            u_max: g.u_max,
        }
    }
}

impl From<GrantLineV1<'_>> for GrantLine {
    fn from(g: GrantLineV1<'_>) -> GrantLine {
        GrantLine {
            scope: g.scope.into_owned(),
            spec: g.limit.into(),
            period: g.period,
            epoch: g.epoch,
            base: g.base,
            granted: g.granted,
            reported: g.reported,
            u_max: g.u_max,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcomeV1 {
    Success,
    Failure,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DimV1 {
    Tokens,
    Input,
    Output,
    Requests,
    Cost,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeriodV1 {
    Minute,
    Hour,
    Day,
    Week,
    Month,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowV1 {
    /// In UTC.
    Calendar(PeriodV1),
    Total,
    Rolling(u64),
    /// A day, week or month in a time zone (`TZ`), added after the first
    /// release: older files never hold it.
    Zoned(PeriodV1, ZoneV1),
}

/// A time zone by its tz database name; a name this build does not know
/// makes the record undecodable rather than silently UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZoneV1(pub Zone);

impl Serialize for ZoneV1 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.name())
    }
}

impl<'de> Deserialize<'de> for ZoneV1 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ZoneV1, D::Error> {
        let name = Text::deserialize(d)?;
        Zone::parse(&name)
            .map(ZoneV1)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitSpecV1 {
    pub dim: DimV1,
    pub window: WindowV1,
    pub amount: u64,
}

/// Tokens, input, output, requests, cost (nano-USD), in that order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DimsV1(pub [u64; 5]);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageV1 {
    pub input: u64,
    pub output: u64,
    pub cached: u64,
    pub cache_write: u64,
}

/// nano-USD per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceV1 {
    pub input: u64,
    pub output: u64,
    pub cached: u64,
    pub cache_write: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRulesV1<'a> {
    pub thresholds: Cow<'a, [u32]>,
    pub forecast: bool,
    pub spike: Option<SpikeRuleV1>,
    pub runaway: Option<RunawayRuleV1>,
    pub webhook: Option<Text<'a>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpikeRuleV1 {
    pub dim: DimV1,
    pub factor: u32,
    pub window_ms: u64,
    pub min: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunawayRuleV1 {
    pub events: u32,
    pub window_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertEventV1<'a> {
    pub scope: Text<'a>,
    pub rule: Text<'a>,
    pub key: Text<'a>,
    pub period: u64,
    pub dim: Option<DimV1>,
    pub observed: u64,
    pub bound: u64,
    pub message: Text<'a>,
    pub webhook: Option<Text<'a>>,
}

// ----- the state's types → the format (borrowing) --------------------------

fn text(s: &str) -> Text<'_> {
    Cow::Borrowed(s)
}

fn opt(s: &Option<String>) -> Option<Text<'_>> {
    s.as_deref().map(Cow::Borrowed)
}

impl From<Dim> for DimV1 {
    fn from(d: Dim) -> DimV1 {
        match d {
            Dim::Tokens => DimV1::Tokens,
            Dim::Input => DimV1::Input,
            Dim::Output => DimV1::Output,
            Dim::Requests => DimV1::Requests,
            Dim::Cost => DimV1::Cost,
        }
    }
}

impl From<Period> for PeriodV1 {
    fn from(p: Period) -> PeriodV1 {
        match p {
            Period::Minute => PeriodV1::Minute,
            Period::Hour => PeriodV1::Hour,
            Period::Day => PeriodV1::Day,
            Period::Week => PeriodV1::Week,
            Period::Month => PeriodV1::Month,
        }
    }
}

impl From<PeriodV1> for Period {
    fn from(p: PeriodV1) -> Period {
        match p {
            PeriodV1::Minute => Period::Minute,
            PeriodV1::Hour => Period::Hour,
            PeriodV1::Day => Period::Day,
            PeriodV1::Week => Period::Week,
            PeriodV1::Month => Period::Month,
        }
    }
}

impl From<Window> for WindowV1 {
    fn from(w: Window) -> WindowV1 {
        match w {
            Window::Calendar(p, z) if z.is_utc() => WindowV1::Calendar(p.into()),
            Window::Calendar(p, z) => WindowV1::Zoned(p.into(), ZoneV1(z)),
            Window::Total => WindowV1::Total,
            Window::Rolling(ms) => WindowV1::Rolling(ms),
        }
    }
}

impl From<LimitSpec> for LimitSpecV1 {
    fn from(l: LimitSpec) -> LimitSpecV1 {
        LimitSpecV1 {
            dim: l.dim.into(),
            window: l.window.into(),
            amount: l.amount,
        }
    }
}

impl From<Usage> for UsageV1 {
    fn from(u: Usage) -> UsageV1 {
        UsageV1 {
            input: u.input,
            output: u.output,
            cached: u.cached,
            cache_write: u.cache_write,
        }
    }
}

impl From<Price> for PriceV1 {
    fn from(p: Price) -> PriceV1 {
        PriceV1 {
            input: p.input,
            output: p.output,
            cached: p.cached,
            cache_write: p.cache_write,
        }
    }
}

impl<'a> From<&'a AlertRules> for AlertRulesV1<'a> {
    fn from(r: &'a AlertRules) -> AlertRulesV1<'a> {
        AlertRulesV1 {
            thresholds: Cow::Borrowed(&r.thresholds),
            forecast: r.forecast,
            spike: r.spike.map(|s| SpikeRuleV1 {
                dim: s.dim.into(),
                factor: s.factor,
                window_ms: s.window_ms,
                min: s.min,
            }),
            runaway: r.runaway.map(|x| RunawayRuleV1 {
                events: x.events,
                window_ms: x.window_ms,
            }),
            webhook: opt(&r.webhook),
        }
    }
}

impl<'a> From<&'a AlertEvent> for AlertEventV1<'a> {
    fn from(e: &'a AlertEvent) -> AlertEventV1<'a> {
        AlertEventV1 {
            scope: text(&e.scope),
            rule: text(&e.rule),
            key: text(&e.key),
            period: e.period,
            dim: e.dim.map(DimV1::from),
            observed: e.observed,
            bound: e.bound,
            message: text(&e.message),
            webhook: opt(&e.webhook),
        }
    }
}

impl<'a> From<&'a Entry> for EntryV1<'a> {
    fn from(e: &'a Entry) -> EntryV1<'a> {
        let kind = match &e.kind {
            EntryKind::BudgetSet { scope, limits } => KindV1::BudgetSet {
                scope: text(scope),
                limits: Cow::Owned(limits.iter().map(|&l| l.into()).collect()),
            },
            EntryKind::BudgetDel { scope } => KindV1::BudgetDel { scope: text(scope) },
            EntryKind::Hold {
                id,
                scope,
                model,
                input,
                output,
                ttl_ms,
                amounts,
                expires_at,
                run: None,
            } => KindV1::Hold {
                id: text(id),
                scope: text(scope),
                model: text(model),
                input: *input,
                output: *output,
                ttl_ms: *ttl_ms,
                amounts: DimsV1(amounts.0),
                expires_at: *expires_at,
            },
            EntryKind::Hold {
                id,
                scope,
                model,
                input,
                output,
                ttl_ms,
                amounts,
                expires_at,
                run: Some(run),
            } => KindV1::HoldInRun {
                id: text(id),
                scope: text(scope),
                model: text(model),
                input: *input,
                output: *output,
                ttl_ms: *ttl_ms,
                amounts: DimsV1(amounts.0),
                expires_at: *expires_at,
                run: text(run),
            },
            EntryKind::Commit {
                id,
                usage,
                cost,
                late,
            } => KindV1::Commit {
                id: text(id),
                usage: (*usage).into(),
                cost: *cost,
                late: *late,
            },
            EntryKind::Release { id } => KindV1::Release { id: text(id) },
            EntryKind::Expire { id } => KindV1::Expire { id: text(id) },
            EntryKind::Spend {
                id,
                scope,
                model,
                usage,
                cost,
                run: None,
            } => KindV1::Spend {
                id: opt(id),
                scope: text(scope),
                model: text(model),
                usage: (*usage).into(),
                cost: *cost,
            },
            EntryKind::Spend {
                id,
                scope,
                model,
                usage,
                cost,
                run: Some(run),
            } => KindV1::SpendInRun {
                id: opt(id),
                scope: text(scope),
                model: text(model),
                usage: (*usage).into(),
                cost: *cost,
                run: text(run),
            },
            EntryKind::PriceSet { model, price } => match price.max_output {
                None => KindV1::PriceSet {
                    model: text(model),
                    price: (*price).into(),
                },
                Some(max_output) => KindV1::PriceSetMax {
                    model: text(model),
                    price: (*price).into(),
                    max_output,
                },
            },
            EntryKind::Step { run, scope, sig } => KindV1::Step {
                run: text(run),
                scope: opt(scope),
                sig: *sig,
            },
            EntryKind::StepDenied { run, scope } => KindV1::StepDenied {
                run: text(run),
                scope: opt(scope),
            },
            EntryKind::RunEnd { run, outcome } => match outcome {
                None => KindV1::RunEnd { run: text(run) },
                Some(o) => KindV1::RunEndOutcome {
                    run: text(run),
                    outcome: match o {
                        RunOutcome::Success => RunOutcomeV1::Success,
                        RunOutcome::Failure => RunOutcomeV1::Failure,
                    },
                },
            },
            EntryKind::Saved { scope, cost } => KindV1::Saved {
                scope: text(scope),
                cost: *cost,
            },
            EntryKind::AlertRules { scope, rules } => KindV1::AlertRules {
                scope: text(scope),
                rules: rules.as_ref().map(AlertRulesV1::from),
            },
            EntryKind::Alert(ev) => KindV1::Alert(ev.into()),
            EntryKind::AlertDelivered { id } => KindV1::AlertDelivered { id: *id },
            EntryKind::Grant(g) => KindV1::Grant(g.into()),
        };
        EntryV1 {
            seq: e.seq,
            ts: e.ts,
            kind,
        }
    }
}

// ----- the format → the state's types (owning) -----------------------------

impl From<DimV1> for Dim {
    fn from(d: DimV1) -> Dim {
        match d {
            DimV1::Tokens => Dim::Tokens,
            DimV1::Input => Dim::Input,
            DimV1::Output => Dim::Output,
            DimV1::Requests => Dim::Requests,
            DimV1::Cost => Dim::Cost,
        }
    }
}

impl From<WindowV1> for Window {
    fn from(w: WindowV1) -> Window {
        match w {
            WindowV1::Calendar(p) => Window::Calendar(p.into(), Zone::UTC),
            WindowV1::Zoned(p, z) => Window::Calendar(p.into(), z.0),
            WindowV1::Total => Window::Total,
            WindowV1::Rolling(ms) => Window::Rolling(ms),
        }
    }
}

impl From<LimitSpecV1> for LimitSpec {
    fn from(l: LimitSpecV1) -> LimitSpec {
        LimitSpec {
            dim: l.dim.into(),
            window: l.window.into(),
            amount: l.amount,
        }
    }
}

impl From<UsageV1> for Usage {
    fn from(u: UsageV1) -> Usage {
        Usage {
            input: u.input,
            output: u.output,
            cached: u.cached,
            cache_write: u.cache_write,
        }
    }
}

impl From<PriceV1> for Price {
    fn from(p: PriceV1) -> Price {
        Price {
            input: p.input,
            output: p.output,
            cached: p.cached,
            cache_write: p.cache_write,
            max_output: None,
        }
    }
}

fn owned(t: Text) -> String {
    t.into_owned()
}

impl From<AlertRulesV1<'_>> for AlertRules {
    fn from(r: AlertRulesV1) -> AlertRules {
        AlertRules {
            thresholds: r.thresholds.into_owned(),
            forecast: r.forecast,
            spike: r.spike.map(|s| SpikeRule {
                dim: s.dim.into(),
                factor: s.factor,
                window_ms: s.window_ms,
                min: s.min,
            }),
            runaway: r.runaway.map(|x| RunawayRule {
                events: x.events,
                window_ms: x.window_ms,
            }),
            webhook: r.webhook.map(owned),
        }
    }
}

impl From<AlertEventV1<'_>> for AlertEvent {
    fn from(e: AlertEventV1) -> AlertEvent {
        AlertEvent {
            scope: owned(e.scope),
            rule: owned(e.rule),
            key: owned(e.key),
            period: e.period,
            dim: e.dim.map(Dim::from),
            observed: e.observed,
            bound: e.bound,
            message: owned(e.message),
            webhook: e.webhook.map(owned),
        }
    }
}

impl From<EntryV1<'_>> for Entry {
    fn from(e: EntryV1) -> Entry {
        let kind = match e.kind {
            KindV1::BudgetSet { scope, limits } => EntryKind::BudgetSet {
                scope: owned(scope),
                limits: limits.iter().map(|&l| l.into()).collect(),
            },
            KindV1::BudgetDel { scope } => EntryKind::BudgetDel {
                scope: owned(scope),
            },
            KindV1::Hold {
                id,
                scope,
                model,
                input,
                output,
                ttl_ms,
                amounts,
                expires_at,
            } => EntryKind::Hold {
                id: owned(id),
                scope: owned(scope),
                model: owned(model),
                input,
                output,
                ttl_ms,
                amounts: Dims(amounts.0),
                expires_at,
                run: None,
            },
            KindV1::HoldInRun {
                id,
                scope,
                model,
                input,
                output,
                ttl_ms,
                amounts,
                expires_at,
                run,
            } => EntryKind::Hold {
                id: owned(id),
                scope: owned(scope),
                model: owned(model),
                input,
                output,
                ttl_ms,
                amounts: Dims(amounts.0),
                expires_at,
                run: Some(owned(run)),
            },
            KindV1::Commit {
                id,
                usage,
                cost,
                late,
            } => EntryKind::Commit {
                id: owned(id),
                usage: usage.into(),
                cost,
                late,
            },
            KindV1::Release { id } => EntryKind::Release { id: owned(id) },
            KindV1::Expire { id } => EntryKind::Expire { id: owned(id) },
            KindV1::Spend {
                id,
                scope,
                model,
                usage,
                cost,
            } => EntryKind::Spend {
                id: id.map(owned),
                scope: owned(scope),
                model: owned(model),
                usage: usage.into(),
                cost,
                run: None,
            },
            KindV1::SpendInRun {
                id,
                scope,
                model,
                usage,
                cost,
                run,
            } => EntryKind::Spend {
                id: id.map(owned),
                scope: owned(scope),
                model: owned(model),
                usage: usage.into(),
                cost,
                run: Some(owned(run)),
            },
            KindV1::PriceSet { model, price } => EntryKind::PriceSet {
                model: owned(model),
                price: price.into(),
            },
            KindV1::PriceSetMax {
                model,
                price,
                max_output,
            } => EntryKind::PriceSet {
                model: owned(model),
                price: Price::from(price).with_max_output(Some(max_output)),
            },
            KindV1::Step { run, scope, sig } => EntryKind::Step {
                run: owned(run),
                scope: scope.map(owned),
                sig,
            },
            KindV1::StepDenied { run, scope } => EntryKind::StepDenied {
                run: owned(run),
                scope: scope.map(owned),
            },
            KindV1::RunEnd { run } => EntryKind::RunEnd {
                run: owned(run),
                outcome: None,
            },
            KindV1::RunEndOutcome { run, outcome } => EntryKind::RunEnd {
                run: owned(run),
                outcome: Some(match outcome {
                    RunOutcomeV1::Success => RunOutcome::Success,
                    RunOutcomeV1::Failure => RunOutcome::Failure,
                }),
            },
            KindV1::Saved { scope, cost } => EntryKind::Saved {
                scope: owned(scope),
                cost,
            },
            KindV1::AlertRules { scope, rules } => EntryKind::AlertRules {
                scope: owned(scope),
                rules: rules.map(AlertRules::from),
            },
            KindV1::Alert(ev) => EntryKind::Alert(ev.into()),
            KindV1::AlertDelivered { id } => EntryKind::AlertDelivered { id },
            KindV1::Grant(g) => EntryKind::Grant(g.into()),
        };
        Entry {
            seq: e.seq,
            ts: e.ts,
            kind,
        }
    }
}

impl KindV1<'_> {
    /// The kind's name in the JSON view.
    pub fn name(&self) -> &'static str {
        match self {
            KindV1::BudgetSet { .. } => "budget_set",
            KindV1::BudgetDel { .. } => "budget_del",
            KindV1::Hold { .. } | KindV1::HoldInRun { .. } => "hold",
            KindV1::Commit { .. } => "commit",
            KindV1::Release { .. } => "release",
            KindV1::Expire { .. } => "expire",
            KindV1::Spend { .. } | KindV1::SpendInRun { .. } => "spend",
            KindV1::PriceSet { .. } | KindV1::PriceSetMax { .. } => "price_set",
            KindV1::Step { .. } => "step",
            KindV1::StepDenied { .. } => "step_denied",
            KindV1::RunEnd { .. } | KindV1::RunEndOutcome { .. } => "run_end",
            KindV1::Saved { .. } => "saved",
            KindV1::AlertRules { .. } => "alert_rules",
            KindV1::Alert(_) => "alert",
            KindV1::AlertDelivered { .. } => "alert_delivered",
            KindV1::Grant(_) => "grant",
        }
    }
}

/// A ledger entry as JSON (`/v1/ledger`, `spendb ledger export`): `seq`,
/// `ts`, `kind` and the kind's fields by their format names (amounts in
/// nano-USD), keys sorted.
pub fn entry_json(e: &Entry) -> serde_json::Value {
    let v1 = EntryV1::from(e);
    let mut fields = match serde_json::to_value(&v1.kind) {
        // Struct variants serialize as {"Name": {fields}}, the alert as
        // {"Alert": {fields}}: the inner object is the entry's fields.
        Ok(serde_json::Value::Object(mut m)) => match m.values_mut().next() {
            Some(serde_json::Value::Object(inner)) => std::mem::take(inner),
            _ => serde_json::Map::new(),
        },
        _ => serde_json::Map::new(),
    };
    fields.insert("kind".into(), v1.kind.name().into());
    fields.insert("seq".into(), e.seq.into());
    fields.insert("ts".into(), e.ts.into());
    serde_json::Value::Object(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::frame;

    fn round_trip(e: &Entry) -> Entry {
        let bytes = frame::encode(&EntryV1::from(e));
        let back: EntryV1 = frame::decode(&bytes).unwrap();
        back.into()
    }

    #[test]
    fn a_price_with_a_maximum_output_is_its_own_kind_and_reads_back() {
        let price = Price::new(1, 2, None, None);
        let plain = Entry {
            seq: 1,
            ts: 5,
            kind: EntryKind::PriceSet {
                model: "m".into(),
                price,
            },
        };
        let capped = Entry {
            seq: 2,
            ts: 6,
            kind: EntryKind::PriceSet {
                model: "m".into(),
                price: price.with_max_output(Some(300)),
            },
        };
        // Without a maximum the entry is written as before (same bytes).
        assert!(matches!(
            EntryV1::from(&plain).kind,
            KindV1::PriceSet { .. }
        ));
        assert!(matches!(
            EntryV1::from(&capped).kind,
            KindV1::PriceSetMax { .. }
        ));
        assert_eq!(round_trip(&plain), plain);
        assert_eq!(round_trip(&capped), capped);
        let json = entry_json(&capped);
        assert_eq!(json["kind"], "price_set");
        assert_eq!(json["max_output"], 300);
        assert!(entry_json(&plain).get("max_output").is_none());
    }

    #[test]
    fn a_zoned_limit_is_its_own_window_and_an_unknown_zone_does_not_read_as_utc() {
        use crate::state::limit::Period;
        let day = LimitSpec::from_words("TOKENS", "10", "PER", "DAY").unwrap();
        let havana = day.in_zone("America/Havana").unwrap();
        let e = Entry {
            seq: 1,
            ts: 5,
            kind: EntryKind::BudgetSet {
                scope: "org:a".into(),
                limits: vec![day, havana],
            },
        };
        let KindV1::BudgetSet { limits, .. } = EntryV1::from(&e).kind else {
            unreachable!()
        };
        // UTC limits are written as before (same bytes as older releases).
        assert_eq!(limits[0].window, WindowV1::Calendar(PeriodV1::Day));
        assert!(matches!(
            limits[1].window,
            WindowV1::Zoned(PeriodV1::Day, _)
        ));
        assert_eq!(round_trip(&e), e);
        assert!(matches!(
            Window::from(limits[1].window),
            Window::Calendar(Period::Day, z) if z.name() == "America/Havana"
        ));
        // A zone this build does not know (here, a name mangled in place,
        // CRC refreshed) fails to decode rather than reading as UTC.
        let mut bytes = frame::encode(&EntryV1::from(&e));
        let at = bytes.windows(6).position(|w| w == b"Havana").unwrap();
        bytes[at..at + 6].copy_from_slice(b"Havanx");
        let crc = crc32fast::hash(&bytes[4..]);
        bytes[..4].copy_from_slice(&crc.to_le_bytes());
        let err = frame::decode::<EntryV1>(&bytes).unwrap_err();
        assert!(err.contains("unknown time zone"), "{err}");
    }

    #[test]
    fn calls_in_a_run_and_a_run_outcome_are_their_own_kinds_and_read_back() {
        let hold = |run: Option<&str>| EntryKind::Hold {
            id: "h".into(),
            scope: "org:a".into(),
            model: "m".into(),
            input: 1,
            output: 2,
            ttl_ms: Some(5),
            amounts: Dims::call(1, 2, 3),
            expires_at: 9,
            run: run.map(str::to_string),
        };
        let spend = |run: Option<&str>| EntryKind::Spend {
            id: Some("s".into()),
            scope: "org:a".into(),
            model: "m".into(),
            usage: Usage {
                input: 4,
                output: 5,
                ..Default::default()
            },
            cost: 6,
            run: run.map(str::to_string),
        };
        let end = |outcome| EntryKind::RunEnd {
            run: "r".into(),
            outcome,
        };
        let cases = [
            (hold(None), "Hold"),
            (hold(Some("r")), "HoldInRun"),
            (spend(None), "Spend"),
            (spend(Some("r")), "SpendInRun"),
            (end(None), "RunEnd"),
            (end(Some(RunOutcome::Success)), "RunEndOutcome"),
            (end(Some(RunOutcome::Failure)), "RunEndOutcome"),
        ];
        for (i, (kind, variant)) in cases.into_iter().enumerate() {
            let e = Entry {
                seq: i as u64 + 1,
                ts: 7,
                kind,
            };
            // Without a run or an outcome, the bytes are those of before.
            let v1 = EntryV1::from(&e);
            let written = serde_json::to_value(&v1.kind).unwrap();
            assert!(written.get(variant).is_some(), "{written}");
            assert_eq!(round_trip(&e), e);
        }
        let json = entry_json(&Entry {
            seq: 1,
            ts: 7,
            kind: end(Some(RunOutcome::Failure)),
        });
        assert_eq!(
            (json["kind"].as_str(), json["outcome"].as_str()),
            (Some("run_end"), Some("failure"))
        );
        let json = entry_json(&Entry {
            seq: 1,
            ts: 7,
            kind: hold(Some("r")),
        });
        assert_eq!(
            (json["kind"].as_str(), json["run"].as_str()),
            (Some("hold"), Some("r"))
        );
    }

    #[test]
    fn a_grant_line_reads_back_and_shows_its_figures_in_json() {
        let line = GrantLine {
            scope: "org:a/team:b".into(),
            spec: LimitSpec {
                dim: Dim::Cost,
                window: Window::Calendar(Period::Day, Zone::parse("Europe/Berlin").unwrap()),
                amount: 5_000_000_000,
            },
            period: 1_796_166_000_000,
            epoch: 3,
            base: 10,
            granted: 400,
            reported: 250,
            u_max: 50,
        };
        let e = Entry {
            seq: 1,
            ts: 7,
            kind: EntryKind::Grant(line.clone()),
        };
        assert_eq!(round_trip(&e), e);
        let json = entry_json(&e);
        assert_eq!(json["kind"], "grant");
        assert_eq!(
            (&json["scope"], &json["granted"], &json["u_max"]),
            (
                &serde_json::json!("org:a/team:b"),
                &serde_json::json!(400),
                &serde_json::json!(50)
            )
        );
    }
}
