//! The decide functions, one file per command family: each validates its
//! commands against the state, checks the limits, emits ledger entries
//! (none for reads, idempotent replays and refusals) and builds its reply.
//! `State::decide` (state/mod.rs) dispatches to them; `apply_entry`
//! (state/evolve.rs) applies what they emit.

mod alert;
mod budget;
pub(in crate::state) use budget::budget_check;
mod grant;
mod hold;
mod price;
mod report;
mod run;
mod spend;
