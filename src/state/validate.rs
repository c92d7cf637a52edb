//! The bounds a command's own arguments must meet ([`super::bounds`]),
//! checked before anything is decided: ids, model names, token counts,
//! money, limit amounts and prices. Rules that need the state (a scope's
//! limits, a hold's status, counter headroom) are the families' own.

use super::bounds::{
    check_id, check_model, check_tokens, check_usd, MAX_LIMIT_AMOUNT, MAX_PRICE, MAX_RUN_STEPS,
};
use super::command::Command;
use super::limit::Dim;
use super::price::Usage;

fn check_usage(u: &Usage) -> Result<(), String> {
    check_tokens(u.input, "INPUT")?;
    check_tokens(u.output, "OUTPUT")?;
    check_tokens(u.cached, "CACHED")?;
    check_tokens(u.cache_write, "CACHEWRITE")?;
    u.check()
}

/// Checks every bounded argument of `cmd`; the error is the message of an
/// `ERR` reply.
pub fn check(cmd: &Command) -> Result<(), String> {
    match cmd {
        Command::Reserve(a) => {
            check_id(&a.hold, "hold id")?;
            check_model(&a.model)?;
            check_tokens(a.input, "INPUT")?;
            check_tokens(a.output, "OUTPUT")
        }
        Command::Commit { hold, usage } => {
            check_id(hold, "hold id")?;
            check_usage(usage)
        }
        Command::Release { hold } | Command::HoldGet { hold } => check_id(hold, "hold id"),
        Command::Spend {
            model, usage, id, ..
        } => {
            if let Some(id) = id {
                check_id(id, "spend id")?;
            }
            check_model(model)?;
            check_usage(usage)
        }
        Command::BudgetSet { limits, .. } => {
            for l in limits {
                if l.dim == Dim::Cost {
                    check_usd(l.amount, "a COST limit")?;
                } else if l.amount > MAX_LIMIT_AMOUNT {
                    return Err(format!(
                        "a {} limit must be at most {MAX_LIMIT_AMOUNT}",
                        l.dim.name()
                    ));
                }
            }
            Ok(())
        }
        Command::PriceSet {
            model,
            input,
            output,
            cached,
            cache_write,
        } => {
            check_model(model)?;
            let prices = [Some(*input), Some(*output), *cached, *cache_write];
            if prices.into_iter().flatten().any(|p| p > MAX_PRICE) {
                return Err("a price must be at most $1000000 per million tokens".into());
            }
            Ok(())
        }
        Command::PriceGet { model } => check_model(model),
        Command::Step { run, max, .. } => {
            check_id(run, "run id")?;
            if max.is_some_and(|m| m > MAX_RUN_STEPS) {
                return Err(format!("MAX must be at most {MAX_RUN_STEPS}"));
            }
            Ok(())
        }
        Command::RunEnd { run } => check_id(run, "run id"),
        Command::CacheSaved { cost, .. } => check_usd(*cost, "COST"),
        Command::BudgetGet { .. }
        | Command::BudgetDel { .. }
        | Command::BudgetList { .. }
        | Command::Forecast { .. }
        | Command::HoldList { .. }
        | Command::Balance { .. }
        | Command::PriceList
        | Command::AlertRulesSet { .. }
        | Command::AlertRulesList { .. }
        | Command::AlertList { .. }
        | Command::SpendSeries
        | Command::AlertDelivered { .. } => Ok(()),
    }
}
