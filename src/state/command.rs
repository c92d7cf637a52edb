//! Commands the state machine understands and the replies it gives, in a
//! structured form both front ends (RESP, HTTP) translate to their own bytes.

use super::alerts::AlertRules;
use super::limit::LimitSpec;
use super::price::Usage;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReserveArgs {
    pub hold: String,
    pub scope: String,
    pub model: String,
    pub input: u64,
    /// Cap on output tokens (max_tokens); 0 when not given.
    pub output: u64,
    /// As the client gave it; None means the default TTL.
    pub ttl_ms: Option<u64>,
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
    /// Commands that never write the ledger (apart from hold expiries any
    /// command may cause): they are still answered while writes fail.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Command::BudgetGet { .. }
                | Command::BudgetList { .. }
                | Command::HoldGet { .. }
                | Command::Forecast { .. }
                | Command::HoldList { .. }
                | Command::Balance { .. }
                | Command::PriceGet { .. }
                | Command::PriceList
                | Command::AlertRulesList { .. }
                | Command::AlertList { .. }
                | Command::SpendSeries
        )
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
    /// `code` is the first word of the error line (ERR, EXISTS, UNKNOWN, …).
    Error {
        code: &'static str,
        msg: String,
    },
}

impl Value {
    pub fn err(code: &'static str, msg: impl Into<String>) -> Value {
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
    /// The value of a field of a map reply.
    pub fn field(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Map(fields) => fields.iter().find(|(k, _)| *k == name).map(|(_, v)| v),
            _ => None,
        }
    }
}
