//! Ledger entries: every change to a balance, numbered and timestamped.
//! The state is derived from them (`State::apply_entry`), so the ledger alone
//! rebuilds every figure.

use super::alerts::{AlertEvent, AlertRules};
use super::grant::GrantLine;
use super::limit::{Dims, LimitSpec};
use super::price::{Price, Usage};

/// Not serializable: the ledger's format is `store::format::ledger`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Position in the ledger, from 1, without gaps.
    pub seq: u64,
    /// Server time in ms since the Unix epoch, assigned by the engine.
    pub ts: u64,
    pub kind: EntryKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    BudgetSet {
        scope: String,
        limits: Vec<LimitSpec>,
    },
    BudgetDel {
        scope: String,
    },
    Hold {
        id: String,
        scope: String,
        model: String,
        input: u64,
        output: u64,
        ttl_ms: Option<u64>,
        /// What is held in each dimension (cost at the price of the moment).
        amounts: Dims,
        expires_at: u64,
        /// The agent run the call belongs to (`RUN`).
        run: Option<String>,
    },
    /// `cost` is recorded, not recomputed, so a later price change never
    /// alters history.
    Commit {
        id: String,
        usage: Usage,
        cost: u64,
        late: bool,
    },
    Release {
        id: String,
    },
    Expire {
        id: String,
    },
    Spend {
        id: Option<String>,
        scope: String,
        model: String,
        usage: Usage,
        cost: u64,
        /// The agent run the call belongs to (`RUN`).
        run: Option<String>,
    },
    PriceSet {
        model: String,
        price: Price,
    },
    /// An allowed step of an agent run; `sig` is the signature's digest.
    Step {
        run: String,
        scope: Option<String>,
        sig: u64,
    },
    /// A step the loop guard refused (counted per scope).
    StepDenied {
        run: String,
        scope: Option<String>,
    },
    /// A run ended (RUN.END, with the outcome its client reported) or was
    /// forgotten after the run timeout (no outcome).
    RunEnd {
        run: String,
        outcome: Option<RunOutcome>,
    },
    /// Money a cache hit saved for a scope (and its ancestors).
    Saved {
        scope: String,
        cost: u64,
    },
    /// A scope's alert rules set (Some) or removed (None).
    AlertRules {
        scope: String,
        rules: Option<AlertRules>,
    },
    /// An alert rule fired; the entry's seq is the alert's id.
    Alert(AlertEvent),
    /// The alert with this id was delivered to its webhook.
    AlertDelivered {
        id: u64,
    },
    /// Cluster mode: this node's grant of a global limit, as the store
    /// confirmed it (or lowered before a give-back); replaces the line with
    /// its key. Lines of periods that ended by the entry's time are dropped.
    Grant(GrantLine),
}

/// How an agent run ended, as its client says (`RUN.END … OUTCOME`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RunOutcome {
    Success,
    Failure,
}

impl RunOutcome {
    pub fn parse(s: &str) -> Option<RunOutcome> {
        match s.to_ascii_lowercase().as_str() {
            "success" => Some(RunOutcome::Success),
            "failure" => Some(RunOutcome::Failure),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Success => "success",
            RunOutcome::Failure => "failure",
        }
    }
}

impl EntryKind {
    pub fn name(&self) -> &'static str {
        match self {
            EntryKind::BudgetSet { .. } => "budget_set",
            EntryKind::BudgetDel { .. } => "budget_del",
            EntryKind::Hold { .. } => "hold",
            EntryKind::Commit { .. } => "commit",
            EntryKind::Release { .. } => "release",
            EntryKind::Expire { .. } => "expire",
            EntryKind::Spend { .. } => "spend",
            EntryKind::PriceSet { .. } => "price_set",
            EntryKind::Step { .. } => "step",
            EntryKind::StepDenied { .. } => "step_denied",
            EntryKind::RunEnd { .. } => "run_end",
            EntryKind::Grant(_) => "grant",
            EntryKind::Saved { .. } => "saved",
            EntryKind::AlertRules { .. } => "alert_rules",
            EntryKind::Alert(_) => "alert",
            EntryKind::AlertDelivered { .. } => "alert_delivered",
        }
    }
}
