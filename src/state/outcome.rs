//! Typed outcomes: what a command did, as data. The engine hands them to
//! the front ends, which count them in the metrics (`metrics.rs` reads these
//! fields, never a formatted reply) and convert each once, at the edge, to
//! the structured reply [`Value`] they encode as RESP or JSON.

use super::access::Access;
use super::error::ErrorCode;
use super::limit::{Blocker, Dim, LimitSpec};
use super::reply::amount_value;
use super::{Hold, HoldStatus, OutputFrom, RunOutcome, Settlement, Value};

/// A RESERVE granted (or replayed: the same hold again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Granted {
    pub hold: String,
    /// The model granted (the first that fitted, with FALLBACK).
    pub model: String,
    pub tokens: u64,
    /// Output tokens held, and how they were chosen.
    pub output: u64,
    pub output_from: OutputFrom,
    /// nano-USD held.
    pub cost: u64,
    pub expires_at: u64,
}

/// A RESERVE denied: the most binding limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    pub hold: String,
    /// The model tried last (with FALLBACK: every one was denied).
    pub model: String,
    /// The scope whose limit denied it.
    pub scope: String,
    pub limit: LimitSpec,
    /// What is left of the limit (negative past an overrun).
    pub remaining: i128,
    /// What open holds take of a calendar or TOTAL limit (0 for a rolling
    /// limit, whose window counts them as usage).
    pub held: u64,
    /// What keeps the request out: usage, open holds, or the limit itself.
    pub reason: Blocker,
    /// When waiting lets it through; None: waiting cannot help.
    pub retry_after: Option<u64>,
    /// What the request asked for.
    pub tokens: u64,
    pub cost: u64,
    /// How much more room of the limit would let it through (not in the
    /// reply: cluster mode asks its store for this much).
    pub short_by: u64,
}

/// A COMMIT (or its replay).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub hold: String,
    pub tokens: u64,
    pub cost: u64,
    /// Held but not used: back in the budget (0 for a late commit).
    pub released: u64,
    pub released_tokens: u64,
    /// Used beyond what was held.
    pub overrun: u64,
    pub overrun_tokens: u64,
    /// The hold had expired: charged, nothing released.
    pub late: bool,
}

/// A RELEASE: the hold is released (or had expired).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Released {
    pub hold: String,
    pub expired: bool,
    pub released: u64,
    pub released_tokens: u64,
}

/// A SPEND.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spent {
    pub id: Option<String>,
    pub tokens: u64,
    pub cost: u64,
}

/// A STEP of the loop guard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stepped {
    pub run: String,
    /// Why it was denied (`max_steps`, `repeated`); None: allowed.
    pub denied: Option<&'static str>,
    /// Steps of the run so far (this one included when allowed).
    pub steps: u64,
    /// Steps left before MAX (allowed steps only).
    pub remaining: u64,
    /// Times this signature was seen within the window.
    pub repeats: u64,
}

/// What a command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done, nothing to report (`OK`).
    Done,
    Granted(Granted),
    Denied(Denied),
    Committed(Committed),
    Released(Released),
    Spent(Spent),
    Stepped(Stepped),
    RunEnded {
        run: String,
        steps: u64,
        /// As the client reported it (`OUTCOME`), if it did.
        outcome: Option<RunOutcome>,
    },
    /// A read's reply (already structured).
    Reply(Value),
    /// Refused: nothing changed.
    Refused {
        code: ErrorCode,
        msg: String,
    },
}

impl Outcome {
    pub fn refused(code: ErrorCode, msg: impl Into<String>) -> Outcome {
        Outcome::Refused {
            code,
            msg: msg.into(),
        }
    }

    pub fn is_refused(&self) -> bool {
        matches!(self, Outcome::Refused { .. })
    }

    /// A RESERVE's grant of hold `id` (new or replayed).
    pub fn granted(id: &str, h: &Hold, output_from: OutputFrom) -> Outcome {
        Outcome::Granted(Granted {
            hold: id.to_string(),
            model: h.model.to_string(),
            tokens: h.amounts.get(Dim::Tokens),
            output: h.output,
            output_from,
            cost: h.amounts.get(Dim::Cost),
            expires_at: h.expires_at,
        })
    }

    /// A COMMIT of hold `id` that settled it as `s`.
    pub fn committed(id: &str, h: &Hold, s: &Settlement) -> Outcome {
        let tokens = s.usage.input.saturating_add(s.usage.output);
        let (held_tokens, held_cost) = (h.amounts.get(Dim::Tokens), h.amounts.get(Dim::Cost));
        let (released, released_tokens) = if s.late {
            (0, 0)
        } else {
            (
                held_cost.saturating_sub(s.cost),
                held_tokens.saturating_sub(tokens),
            )
        };
        Outcome::Committed(Committed {
            hold: id.to_string(),
            tokens,
            cost: s.cost,
            released,
            released_tokens,
            overrun: s.cost.saturating_sub(held_cost),
            overrun_tokens: tokens.saturating_sub(held_tokens),
            late: s.late,
        })
    }

    /// A RELEASE of hold `id`, which is released or expired now.
    pub fn released(id: &str, h: &Hold) -> Outcome {
        let expired = !matches!(h.status, HoldStatus::Released { .. });
        let (cost, tokens) = if expired {
            (0, 0)
        } else {
            (h.amounts.get(Dim::Cost), h.amounts.get(Dim::Tokens))
        };
        Outcome::Released(Released {
            hold: id.to_string(),
            expired,
            released: cost,
            released_tokens: tokens,
        })
    }

    /// Takes `access`'s tenant key off the ids it names (see
    /// `state::access`), so a tenant sees its ids as it gave them.
    pub fn unqualify(&mut self, access: &Access) {
        let Some(tenant) = access.tenant() else {
            return;
        };
        let strip = |s: &mut String| {
            if let Some(bare) = s.strip_prefix(tenant) {
                *s = bare.to_string();
            }
        };
        match self {
            Outcome::Granted(g) => strip(&mut g.hold),
            Outcome::Denied(d) => strip(&mut d.hold),
            Outcome::Committed(c) => strip(&mut c.hold),
            Outcome::Released(r) => strip(&mut r.hold),
            Outcome::Spent(Spent { id: Some(id), .. }) => strip(id),
            Outcome::Stepped(s) => strip(&mut s.run),
            Outcome::RunEnded { run, .. } => strip(run),
            Outcome::Reply(v) => v.unqualify(access),
            Outcome::Refused { msg, .. } => *msg = msg.replace(tenant, ""),
            Outcome::Done | Outcome::Spent(_) => {}
        }
    }
}

/// Reads and the front ends' own replies arrive as values: an error is a
/// refusal, `OK` is done, anything else a read's reply.
impl From<Value> for Outcome {
    fn from(v: Value) -> Outcome {
        match v {
            Value::Error { code, msg } => Outcome::Refused { code, msg },
            Value::Ok => Outcome::Done,
            v => Outcome::Reply(v),
        }
    }
}

fn int(n: u64) -> Value {
    Value::Int(n.min(i64::MAX as u64) as i64)
}

fn money(n: u64) -> Value {
    Value::Money(n as i128)
}

/// The one conversion of an outcome to its reply (field names and order are
/// the protocol's: docs/PROTOCOL.md).
impl From<Outcome> for Value {
    fn from(o: Outcome) -> Value {
        match o {
            Outcome::Done => Value::Ok,
            Outcome::Granted(g) => Value::Map(vec![
                ("status", Value::str("granted")),
                ("hold", Value::Str(g.hold)),
                ("model", Value::Str(g.model)),
                ("tokens", int(g.tokens)),
                ("output", int(g.output)),
                ("output_from", Value::str(g.output_from.as_str())),
                ("cost", money(g.cost)),
                ("expires_at", int(g.expires_at)),
            ]),
            Outcome::Denied(d) => Value::Map(vec![
                ("status", Value::str("denied")),
                ("hold", Value::Str(d.hold)),
                ("model", Value::Str(d.model)),
                ("scope", Value::Str(d.scope)),
                (
                    "limit",
                    Value::Str(format!(
                        "{} {}",
                        d.limit.dim.name(),
                        d.limit.window.describe()
                    )),
                ),
                ("remaining", amount_value(d.limit.dim, d.remaining)),
                ("held", amount_value(d.limit.dim, d.held as i128)),
                ("reason", Value::str(d.reason.as_str())),
                (
                    "retry_after_ms",
                    Value::Int(d.retry_after.map_or(-1, |t| t.min(i64::MAX as u64) as i64)),
                ),
                ("tokens", int(d.tokens)),
                ("cost", money(d.cost)),
            ]),
            Outcome::Committed(c) => Value::Map(vec![
                ("status", Value::str("committed")),
                ("hold", Value::Str(c.hold)),
                ("tokens", int(c.tokens)),
                ("cost", money(c.cost)),
                ("released", money(c.released)),
                ("released_tokens", int(c.released_tokens)),
                ("overrun", money(c.overrun)),
                ("overrun_tokens", int(c.overrun_tokens)),
                ("late", Value::Int(c.late as i64)),
            ]),
            Outcome::Released(r) => Value::Map(vec![
                (
                    "status",
                    Value::str(if r.expired { "expired" } else { "released" }),
                ),
                ("hold", Value::Str(r.hold)),
                ("released", money(r.released)),
                ("released_tokens", int(r.released_tokens)),
            ]),
            Outcome::Spent(s) => Value::Map(vec![
                ("status", Value::str("spent")),
                ("id", s.id.map_or(Value::Null, Value::Str)),
                ("tokens", int(s.tokens)),
                ("cost", money(s.cost)),
            ]),
            Outcome::Stepped(s) => {
                let mut f = vec![
                    (
                        "status",
                        Value::str(if s.denied.is_some() { "denied" } else { "ok" }),
                    ),
                    ("run", Value::Str(s.run)),
                ];
                match s.denied {
                    Some(reason) => {
                        f.push(("reason", Value::str(reason)));
                        f.push(("steps", int(s.steps)));
                    }
                    None => {
                        f.push(("steps", int(s.steps)));
                        f.push(("remaining", int(s.remaining)));
                    }
                }
                f.push(("repeats", int(s.repeats)));
                Value::Map(f)
            }
            Outcome::RunEnded {
                run,
                steps,
                outcome,
            } => Value::Map(vec![
                ("status", Value::str("ended")),
                ("run", Value::Str(run)),
                ("steps", int(steps)),
                (
                    "outcome",
                    outcome.map_or(Value::Null, |o| Value::str(o.as_str())),
                ),
            ]),
            Outcome::Reply(v) => v,
            Outcome::Refused { code, msg } => Value::Error { code, msg },
        }
    }
}
