//! Commands the state machine understands and the replies it gives, in a
//! structured form both front ends (RESP, HTTP) translate to their own bytes.

use super::access::Access;
use super::alerts::AlertRules;
use super::commands::{self, CommandSpec};
use super::entry::RunOutcome;
use super::error::ErrorCode;
use super::limit::LimitSpec;
use super::price::Usage;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReserveArgs {
    pub hold: String,
    pub scope: String,
    pub model: String,
    pub input: u64,
    /// How many output tokens to hold.
    pub output: OutputAsk,
    /// As the client gave it; None means the default TTL.
    pub ttl_ms: Option<u64>,
    /// Models to try, in order, when `model`'s hold does not fit
    /// (`FALLBACK m2,m3`): the first that fits is granted.
    pub fallback: Vec<String>,
    /// The agent run the call belongs to (`RUN`), for cost per run.
    pub run: Option<String>,
}

impl ReserveArgs {
    /// A RESERVE with the default TTL, no FALLBACK and no RUN.
    pub fn new(
        hold: impl Into<String>,
        scope: impl Into<String>,
        model: impl Into<String>,
        input: u64,
        output: impl Into<OutputAsk>,
    ) -> ReserveArgs {
        ReserveArgs {
            hold: hold.into(),
            scope: scope.into(),
            model: model.into(),
            input,
            output: output.into(),
            ttl_ms: None,
            fallback: Vec::new(),
            run: None,
        }
    }

    /// The models a RESERVE tries, in order.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.model.as_str()).chain(self.fallback.iter().map(String::as_str))
    }
}

/// How a RESERVE sizes its hold's output tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputAsk {
    /// `OUTPUT <n>` (the call's max_tokens): n, clamped to the model's
    /// maximum output.
    Tokens(u64),
    /// No OUTPUT: the model's maximum output, or the server's default
    /// output (`--default-output`) when the price table does not know it.
    Max,
    /// `OUTPUT AUTO`: as `Max`, or less: the most the scope's limits still
    /// have room for, when that is smaller (at least 1).
    Auto,
}

/// `OUTPUT <n>`.
impl From<u64> for OutputAsk {
    fn from(n: u64) -> OutputAsk {
        OutputAsk::Tokens(n)
    }
}

/// How the output tokens a hold took were chosen (`output_from` in the
/// reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFrom {
    /// OUTPUT as given.
    Given,
    /// OUTPUT was above the model's maximum output: clamped to it.
    Clamped,
    /// No OUTPUT: the model's maximum output.
    Model,
    /// No OUTPUT, no maximum known: `--default-output`.
    Default,
    /// OUTPUT AUTO: the room left by the limits, below the maximum.
    Room,
}

impl OutputFrom {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFrom::Given => "given",
            OutputFrom::Clamped => "clamped",
            OutputFrom::Model => "model",
            OutputFrom::Default => "default",
            OutputFrom::Room => "room",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    BudgetSet {
        scope: String,
        limits: Vec<LimitSpec>,
    },
    BudgetGet {
        scope: String,
    },
    BudgetDel {
        scope: String,
    },
    BudgetList {
        prefix: Option<String>,
    },
    Reserve(ReserveArgs),
    Commit {
        hold: String,
        usage: Usage,
    },
    Release {
        hold: String,
    },
    HoldGet {
        hold: String,
    },
    /// Burn-rate forecast of a scope's calendar limits (admin API).
    Forecast {
        scope: String,
    },
    /// Open holds at or below a scope, oldest first (admin API).
    HoldList {
        prefix: Option<String>,
        limit: usize,
    },
    Spend {
        scope: String,
        model: String,
        usage: Usage,
        id: Option<String>,
        /// The agent run the call belongs to (`RUN`).
        run: Option<String>,
    },
    Balance {
        scope: String,
    },
    /// USD per million tokens as nano-USD; `cached` and `cache_write`
    /// default to `input` (no discount assumed).
    PriceSet {
        model: String,
        input: u64,
        output: u64,
        cached: Option<u64>,
        cache_write: Option<u64>,
        /// The model's maximum output tokens; None keeps what is known.
        max_output: Option<u64>,
    },
    PriceGet {
        model: String,
    },
    PriceList,
    /// One step of an agent run (the loop guard); None: the defaults.
    Step {
        run: String,
        signature: Vec<u8>,
        scope: Option<String>,
        max: Option<u64>,
        repeats: Option<u64>,
        window: Option<u64>,
    },
    RunEnd {
        run: String,
        outcome: Option<RunOutcome>,
    },
    /// A cache hit that saved `cost` nano-USD for `scope` (CACHE.GET … SCOPE).
    CacheSaved {
        scope: String,
        cost: u64,
    },
    /// Sets (Some) or removes (None) a scope's alert rules (admin API).
    AlertRulesSet {
        scope: String,
        rules: Option<AlertRules>,
    },
    /// Every scope's alert rules at or below a prefix (admin API).
    AlertRulesList {
        prefix: Option<String>,
    },
    /// Fired alerts with an id above `after`, oldest first (admin API and
    /// the webhook dispatcher).
    AlertList {
        after: u64,
        limit: usize,
        undelivered: bool,
        prefix: Option<String>,
    },
    /// Settled usage by top-level scope and model (for `/metrics`).
    SpendSeries,
    /// The webhook dispatcher delivered alert `id`.
    AlertDelivered {
        id: u64,
    },
}

impl Command {
    /// The command's name: its row in the command table.
    pub fn name(&self) -> &'static str {
        match self {
            Command::BudgetSet { .. } => "budget.set",
            Command::BudgetGet { .. } => "budget.get",
            Command::BudgetDel { .. } => "budget.del",
            Command::BudgetList { .. } => "budget.list",
            Command::Reserve(_) => "reserve",
            Command::Commit { .. } => "commit",
            Command::Release { .. } => "release",
            Command::HoldGet { .. } => "hold.get",
            Command::Forecast { .. } => "forecast",
            Command::HoldList { .. } => "hold.list",
            Command::Spend { .. } => "spend",
            Command::Balance { .. } => "balance",
            Command::PriceSet { .. } => "price.set",
            Command::PriceGet { .. } => "price.get",
            Command::PriceList => "price.list",
            Command::Step { .. } => "step",
            Command::RunEnd { .. } => "run.end",
            Command::CacheSaved { .. } => "cache.saved",
            Command::AlertRulesSet { .. } => "alert.rules.set",
            Command::AlertRulesList { .. } => "alert.rules.list",
            Command::AlertList { .. } => "alert.list",
            Command::SpendSeries => "spend.series",
            Command::AlertDelivered { .. } => "alert.delivered",
        }
    }

    /// Its row in the command table.
    pub fn spec(&self) -> &'static CommandSpec {
        commands::spec(self.name()).expect("every command has a row in the table")
    }

    /// Commands that never write the ledger (apart from hold expiries any
    /// command may cause): they are still answered while writes fail.
    pub fn is_read(&self) -> bool {
        !self.spec().write
    }

    /// The command with the hold, spend and run ids it names moved into
    /// `access`'s keyspace; None when it names none (or `access` is not a
    /// tenant's).
    pub fn qualified(&self, access: &Access) -> Option<Command> {
        access.tenant()?;
        let mut c = self.clone();
        match &mut c {
            Command::Reserve(a) => {
                a.hold = access.qualify(&a.hold);
                a.run = a.run.as_deref().map(|r| access.qualify(r));
            }
            Command::Commit { hold, .. }
            | Command::Release { hold }
            | Command::HoldGet { hold } => *hold = access.qualify(hold),
            Command::Spend { id, run, .. } if id.is_some() || run.is_some() => {
                *id = id.as_deref().map(|i| access.qualify(i));
                *run = run.as_deref().map(|r| access.qualify(r));
            }
            Command::Step { run, .. } | Command::RunEnd { run, .. } => *run = access.qualify(run),
            _ => return None,
        }
        Some(c)
    }

    /// The scopes a command touches (for access checks in front ends).
    pub fn scope(&self) -> Option<&str> {
        match self {
            Command::BudgetSet { scope, .. }
            | Command::BudgetGet { scope }
            | Command::BudgetDel { scope }
            | Command::Spend { scope, .. }
            | Command::Balance { scope }
            | Command::Forecast { scope }
            | Command::CacheSaved { scope, .. }
            | Command::AlertRulesSet { scope, .. } => Some(scope),
            Command::Reserve(a) => Some(&a.scope),
            Command::Step {
                scope: Some(scope), ..
            }
            | Command::HoldList {
                prefix: Some(scope),
                ..
            } => Some(scope),
            _ => None,
        }
    }
}

/// A reply, structured. Maps keep their field order; money stays integer
/// nano-USD until a front end formats it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Ok,
    /// A simple status line (`+PONG`).
    Status(&'static str),
    Null,
    Int(i64),
    /// RESP3 `#t`/`#f`; `:1`/`:0` in RESP2; JSON true/false.
    Bool(bool),
    Str(String),
    /// Arbitrary bytes (ECHO of binary data).
    Bulk(Vec<u8>),
    /// nano-USD, signed (a remaining balance can be negative after an overrun)
    Money(i128),
    Array(Vec<Value>),
    Map(Vec<(&'static str, Value)>),
    /// A refusal: its code (the first word of a RESP error line, an HTTP
    /// status) and message.
    Error {
        code: ErrorCode,
        msg: String,
    },
}

impl Value {
    pub fn err(code: ErrorCode, msg: impl Into<String>) -> Value {
        Value::Error {
            code,
            msg: msg.into(),
        }
    }
    pub fn str(s: impl Into<String>) -> Value {
        Value::Str(s.into())
    }
    pub fn is_error(&self) -> bool {
        matches!(self, Value::Error { .. })
    }
    /// Takes `access`'s tenant key off the ids a reply names (its `hold`,
    /// `id` and `run` fields, and an error's message), so a tenant sees its
    /// ids as it gave them.
    pub fn unqualify(&mut self, access: &Access) {
        let Some(tenant) = access.tenant() else {
            return;
        };
        match self {
            Value::Map(fields) => {
                for (k, v) in fields {
                    if let ("hold" | "id" | "run", Value::Str(s)) = (*k, &mut *v) {
                        if let Some(bare) = s.strip_prefix(tenant) {
                            *s = bare.to_string();
                        }
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| v.unqualify(access)),
            Value::Error { msg, .. } => *msg = msg.replace(tenant, ""),
            _ => {}
        }
    }

    /// The value of a field of a map reply.
    pub fn field(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Map(fields) => fields.iter().find(|(k, _)| *k == name).map(|(_, v)| v),
            _ => None,
        }
    }
}
