//! The bounds a command's own arguments must meet ([`super::bounds`]),
//! checked before anything is decided: ids, model names, token counts,
//! money, limit amounts and prices. Rules that need the state (a scope's
//! limits, a hold's status, counter headroom) are the families' own.

use super::bounds::{
    check_id, check_model, check_tokens, check_usd, MAX_FALLBACKS, MAX_LIMIT_AMOUNT, MAX_PRICE,
    MAX_RUN_STEPS,
};
use super::command::{Command, OutputAsk};
use super::limit::Dim;
use super::price::Usage;
use super::scope::MAX_SCOPE_LEN;

fn check_usage(u: &Usage) -> Result<(), String> {
    check_tokens(u.input, "INPUT")?;
    check_tokens(u.output, "OUTPUT")?;
    check_tokens(u.cached, "CACHED")?;
    check_tokens(u.cache_write, "CACHEWRITE")?;
    u.check()
}

/// A scope or scope prefix is at most [`MAX_SCOPE_LEN`] bytes in every
/// command (the families check the rest of a scope's syntax).
fn check_scope_len(scope: &str) -> Result<(), String> {
    if scope.len() > MAX_SCOPE_LEN {
        return Err(format!("scope is longer than {MAX_SCOPE_LEN} bytes"));
    }
    Ok(())
}

/// Checks every bounded argument of `cmd`; the error is the message of an
/// `ERR` reply.
pub fn check(cmd: &Command) -> Result<(), String> {
    let prefix = match cmd {
        Command::BudgetList { prefix }
        | Command::HoldList { prefix, .. }
        | Command::AlertRulesList { prefix }
        | Command::AlertList { prefix, .. } => prefix.as_deref(),
        _ => cmd.scope(),
    };
    if let Some(scope) = prefix {
        check_scope_len(scope)?;
    }
    if let Command::Step {
        scope: Some(scope), ..
    } = cmd
    {
        check_scope_len(scope)?;
    }
    match cmd {
        Command::Reserve(a) => {
            check_id(&a.hold, "hold id")?;
            if let Some(run) = &a.run {
                check_id(run, "run id")?;
            }
            if a.fallback.len() > MAX_FALLBACKS {
                return Err(format!("FALLBACK takes at most {MAX_FALLBACKS} models"));
            }
            for m in a.models() {
                check_model(m)?;
            }
            check_tokens(a.input, "INPUT")?;
            match a.output {
                OutputAsk::Tokens(n) => check_tokens(n, "OUTPUT"),
                OutputAsk::Max | OutputAsk::Auto => Ok(()),
            }
        }
        Command::Commit { hold, usage } => {
            check_id(hold, "hold id")?;
            check_usage(usage)
        }
        Command::Release { hold } | Command::HoldGet { hold } => check_id(hold, "hold id"),
        Command::Spend {
            model,
            usage,
            id,
            run,
            ..
        } => {
            if let Some(id) = id {
                check_id(id, "spend id")?;
            }
            if let Some(run) = run {
                check_id(run, "run id")?;
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
            max_output,
        } => {
            check_model(model)?;
            if let Some(m) = max_output {
                check_tokens(*m, "MAXOUTPUT")?;
                if *m == 0 {
                    return Err("MAXOUTPUT must be at least 1".into());
                }
            }
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
        Command::RunEnd { run, .. } => check_id(run, "run id"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::bounds::{MAX_ID_LEN, MAX_MODEL_LEN, MAX_TOKENS, MAX_USD};
    use crate::state::limit::{LimitSpec, Window};
    use crate::state::ReserveArgs;

    fn usage(input: u64, output: u64, cached: u64, cache_write: u64) -> Usage {
        Usage {
            input,
            output,
            cached,
            cache_write,
        }
    }

    fn reserve(hold: &str, model: &str, input: u64, output: u64) -> Command {
        Command::Reserve(ReserveArgs::new(
            hold,
            "org:a",
            model,
            input,
            OutputAsk::Tokens(output),
        ))
    }

    #[test]
    fn every_bound_admits_its_maximum_and_refuses_one_more() {
        let id = "h".repeat(MAX_ID_LEN);
        let long_id = "h".repeat(MAX_ID_LEN + 1);
        let model = "m".repeat(MAX_MODEL_LEN);
        let long_model = "m".repeat(MAX_MODEL_LEN + 1);
        assert!(check(&reserve(&id, &model, MAX_TOKENS, MAX_TOKENS)).is_ok());
        for bad in [
            reserve(&long_id, "gpt-4o", 1, 1),
            reserve("h", &long_model, 1, 1),
            reserve("h", "gpt-4o", MAX_TOKENS + 1, 1),
            reserve("h", "gpt-4o", 1, MAX_TOKENS + 1),
        ] {
            assert!(check(&bad).is_err(), "{bad:?}");
        }
        let commit = |u| Command::Commit {
            hold: "h".into(),
            usage: u,
        };
        assert!(check(&commit(usage(
            MAX_TOKENS,
            MAX_TOKENS,
            MAX_TOKENS / 2,
            MAX_TOKENS / 2
        )))
        .is_ok());
        for u in [
            usage(MAX_TOKENS + 1, 0, 0, 0),
            usage(0, MAX_TOKENS + 1, 0, 0),
            usage(MAX_TOKENS, 0, MAX_TOKENS + 1, 0),
            usage(MAX_TOKENS, 0, 0, MAX_TOKENS + 1),
            usage(10, 0, 6, 5), // cached + cache write > input
        ] {
            assert!(check(&commit(u)).is_err(), "{u:?}");
        }
        let spend = |id: Option<&str>, model: &str, u| Command::Spend {
            scope: "org:a".into(),
            model: model.into(),
            usage: u,
            id: id.map(str::to_string),
            run: None,
        };
        assert!(check(&spend(Some(&id), &model, usage(1, 1, 0, 0))).is_ok());
        // A RUN is an id like the others.
        let in_run = |run: &String| Command::Spend {
            scope: "org:a".into(),
            model: "m".into(),
            usage: usage(1, 1, 0, 0),
            id: None,
            run: Some(run.clone()),
        };
        assert!(check(&in_run(&id)).is_ok());
        assert!(check(&in_run(&long_id)).is_err());
        let mut reserve_in_run = ReserveArgs::new("h", "org:a", "m", 1, 1);
        reserve_in_run.run = Some(long_id.clone());
        assert!(check(&Command::Reserve(reserve_in_run.clone())).is_err());
        reserve_in_run.run = Some(id.clone());
        assert!(check(&Command::Reserve(reserve_in_run)).is_ok());
        assert!(check(&spend(Some(&long_id), "m", usage(1, 1, 0, 0))).is_err());
        assert!(check(&spend(None, &long_model, usage(1, 1, 0, 0))).is_err());
        assert!(check(&spend(None, "m", usage(MAX_TOKENS + 1, 1, 0, 0))).is_err());
        for hold in [
            Command::Release {
                hold: long_id.clone(),
            },
            Command::HoldGet {
                hold: long_id.clone(),
            },
        ] {
            assert!(check(&hold).is_err());
        }
        assert!(check(&Command::Release { hold: id.clone() }).is_ok());
        assert!(check(&Command::RunEnd {
            run: long_id.clone(),
            outcome: None,
        })
        .is_err());
        assert!(check(&Command::RunEnd {
            run: id.clone(),
            outcome: Some(crate::state::RunOutcome::Success),
        })
        .is_ok());
        let step = |run: &str, max| Command::Step {
            run: run.into(),
            signature: b"s".to_vec(),
            scope: None,
            max,
            repeats: None,
            window: None,
        };
        assert!(check(&step(&id, Some(MAX_RUN_STEPS))).is_ok());
        assert!(check(&step(&id, Some(MAX_RUN_STEPS + 1))).is_err());
        assert!(check(&step(&long_id, None)).is_err());
        let budget = |dim, amount| Command::BudgetSet {
            scope: "org:a".into(),
            limits: vec![LimitSpec {
                dim,
                window: Window::Total,
                amount,
            }],
        };
        assert!(check(&budget(Dim::Cost, MAX_USD)).is_ok());
        assert!(check(&budget(Dim::Cost, MAX_USD + 1)).is_err());
        for dim in [Dim::Tokens, Dim::Input, Dim::Output, Dim::Requests] {
            assert!(check(&budget(dim, MAX_LIMIT_AMOUNT)).is_ok());
            assert!(
                check(&budget(dim, MAX_LIMIT_AMOUNT + 1)).is_err(),
                "{dim:?}"
            );
        }
        let price = |model: &str, p: [Option<u64>; 4]| Command::PriceSet {
            model: model.into(),
            input: p[0].unwrap_or(0),
            output: p[1].unwrap_or(0),
            cached: p[2],
            cache_write: p[3],
            max_output: None,
        };
        assert!(check(&price(&model, [Some(MAX_PRICE); 4])).is_ok());
        for i in 0..4 {
            let mut p = [None; 4];
            p[i] = Some(MAX_PRICE + 1);
            assert!(check(&price("m", p)).is_err(), "price field {i}");
        }
        assert!(check(&price(&long_model, [None; 4])).is_err());
        assert!(check(&Command::PriceGet {
            model: long_model.clone()
        })
        .is_err());
        assert!(check(&Command::PriceGet { model }).is_ok());
        let saved = |cost| Command::CacheSaved {
            scope: "org:a".into(),
            cost,
        };
        assert!(check(&saved(MAX_USD)).is_ok());
        assert!(check(&saved(MAX_USD + 1)).is_err());
        // Scopes and prefixes, in every command that takes one.
        let scope = "s".repeat(MAX_SCOPE_LEN);
        let long = "s".repeat(MAX_SCOPE_LEN + 1);
        for (ok, s) in [(true, &scope), (false, &long)] {
            let cmds = [
                Command::BudgetGet { scope: s.clone() },
                Command::BudgetList {
                    prefix: Some(s.clone()),
                },
                Command::HoldList {
                    prefix: Some(s.clone()),
                    limit: 1,
                },
                Command::AlertRulesList {
                    prefix: Some(s.clone()),
                },
                Command::AlertList {
                    after: 0,
                    limit: 1,
                    undelivered: false,
                    prefix: Some(s.clone()),
                },
                Command::Balance { scope: s.clone() },
                Command::Step {
                    run: "r".into(),
                    signature: vec![],
                    scope: Some(s.clone()),
                    max: None,
                    repeats: None,
                    window: None,
                },
            ];
            for c in cmds {
                assert_eq!(check(&c).is_ok(), ok, "{c:?}");
            }
        }
    }
}
