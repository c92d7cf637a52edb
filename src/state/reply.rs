//! Replies of the reads (BALANCE, BUDGET.GET, HOLD.GET, PRICE.*, the alert
//! lists) as structured [`Value`]s, built from the state's types. Write
//! commands answer with a typed [`super::outcome::Outcome`] instead.

use super::alerts;
use super::grant::ClusterFigures;
use super::limit::{self, Dim, Dims, Limit};
use super::price::Price;
use super::{Hold, HoldStatus, Node, Value};

pub(in crate::state) fn dims_value(d: &Dims) -> Value {
    Value::Map(vec![
        ("tokens", Value::Int(d.get(Dim::Tokens) as i64)),
        ("input", Value::Int(d.get(Dim::Input) as i64)),
        ("output", Value::Int(d.get(Dim::Output) as i64)),
        ("requests", Value::Int(d.get(Dim::Requests) as i64)),
        ("cost", Value::Money(d.get(Dim::Cost) as i128)),
    ])
}

pub(in crate::state) fn amount_value(dim: Dim, v: i128) -> Value {
    if dim == Dim::Cost {
        Value::Money(v)
    } else {
        Value::Int(v.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
    }
}

/// A limit with its figures: this node's, or in cluster mode (`cluster`
/// Some) the cluster's (Ok), with this node's share beside them and the
/// nodes they count, or this node's with why they are not the cluster's
/// (Err: the store could not be read; a rolling window).
pub(in crate::state) fn limit_value(
    scope: Option<&str>,
    node: &Node,
    l: &Limit,
    now: u64,
    cluster: Option<Result<ClusterFigures, String>>,
) -> Value {
    let dim = l.spec.dim;
    let own_used = l.used(now);
    let own_held = l.held_part(node.held.get(dim));
    let (used, held) = match &cluster {
        Some(Ok(f)) => (f.used, f.held),
        _ => (own_used, own_held),
    };
    let remaining = |used: u64, held: u64| {
        amount_value(dim, l.spec.amount as i128 - used as i128 - held as i128)
    };
    let mut fields = Vec::with_capacity(12);
    if let Some(s) = scope {
        fields.push(("scope", Value::str(s)));
    }
    fields.extend([
        ("dim", Value::str(dim.name())),
        ("window", Value::Str(l.spec.window.describe())),
        ("limit", amount_value(dim, l.spec.amount as i128)),
        ("used", amount_value(dim, used as i128)),
        ("held", amount_value(dim, held as i128)),
        ("remaining", remaining(used, held)),
        (
            "resets_at",
            l.counter
                .resets_at(l.spec.window, now)
                .map_or(Value::Null, |t| Value::Int(t as i64)),
        ),
    ]);
    match cluster {
        None => {}
        Some(Ok(f)) => fields.extend([
            ("covers", Value::str("cluster")),
            (
                "nodes",
                Value::Array(f.nodes.into_iter().map(Value::Str).collect()),
            ),
            (
                "this_node",
                Value::Map(vec![
                    ("used", amount_value(dim, own_used as i128)),
                    ("held", amount_value(dim, own_held as i128)),
                ]),
            ),
        ]),
        Some(Err(why)) => fields.extend([
            ("covers", Value::str("this node")),
            ("why", Value::Str(why)),
        ]),
    }
    Value::Map(fields)
}

pub(in crate::state) fn alert_rules_value(scope: &str, r: &alerts::AlertRules) -> Value {
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

pub(in crate::state) fn alert_value(r: &alerts::AlertRecord) -> Value {
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

pub(in crate::state) fn hold_value(id: &str, h: &Hold) -> Value {
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

pub(in crate::state) fn price_value(model: &str, matched: &str, p: &Price) -> Value {
    let mut f = vec![
        ("model", Value::str(model)),
        ("matched", Value::str(matched)),
    ];
    f.extend(p.describe().into_iter().map(|(k, v)| (k, Value::Str(v))));
    f.push((
        "max_output",
        p.max_output.map_or(Value::Null, |m| Value::Int(m as i64)),
    ));
    Value::Map(f)
}
