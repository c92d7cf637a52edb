//! spendb's own commands: arguments → [`Command`]. Only syntax lives here
//! (which words, which numbers); every rule is the state machine's.

use std::borrow::Cow;

use crate::state::commands::{self, CommandSpec};
use crate::state::limit::{parse_count, LimitSpec};
use crate::state::money::parse_usd;
use crate::state::price::Usage;
use crate::state::{Command, ErrorCode, OutputAsk, ReserveArgs, RunOutcome, Value};

pub type Args<'a> = [Cow<'a, [u8]>];

pub fn syntax(cmd: &str) -> Value {
    let usage = commands::spec(cmd).map_or("", |c| c.syntax);
    Value::err(
        ErrorCode::Err,
        format!("syntax: {} {usage}", cmd.to_ascii_uppercase()),
    )
}

pub fn text(arg: &[u8], what: &str) -> Result<String, Value> {
    String::from_utf8(arg.to_vec())
        .map_err(|_| Value::err(ErrorCode::Err, format!("{what} is not valid UTF-8")))
}

pub fn uint(arg: &[u8], what: &str) -> Result<u64, Value> {
    parse_count(std::str::from_utf8(arg).unwrap_or("?"), what)
        .map_err(|e| Value::err(ErrorCode::Err, e))
}

fn usd(arg: &[u8], what: &str) -> Result<u64, Value> {
    parse_usd(std::str::from_utf8(arg).unwrap_or("?"))
        .map_err(|e| Value::err(ErrorCode::Err, format!("{what}: {e}")))
}

/// Keyword options: `KEY value` pairs from `allowed`; unknown or repeated
/// keywords are syntax errors. Returns values by position in `allowed`.
/// `FALLBACK m2,m3`: model names, comma-separated, none empty.
fn fallback_models(v: &[u8]) -> Result<Vec<String>, Value> {
    let text = std::str::from_utf8(v)
        .map_err(|_| Value::err(ErrorCode::Err, "FALLBACK must be UTF-8 model names"))?;
    let models: Vec<String> = text.split(',').map(str::to_string).collect();
    if models.iter().any(String::is_empty) {
        return Err(Value::err(
            ErrorCode::Err,
            "syntax: FALLBACK takes model names separated by commas (m2,m3)",
        ));
    }
    Ok(models)
}

fn options<'a>(
    cmd: &str,
    args: &'a Args<'a>,
    allowed: &[&str],
) -> Result<Vec<Option<&'a [u8]>>, Value> {
    let mut out = vec![None; allowed.len()];
    if !args.len().is_multiple_of(2) {
        return Err(syntax(cmd));
    }
    for pair in args.chunks(2) {
        // Compared without allocating: this runs for every option of every
        // request.
        let Some(i) = allowed
            .iter()
            .position(|a| a.as_bytes().eq_ignore_ascii_case(&pair[0]))
        else {
            let key = String::from_utf8_lossy(&pair[0]).to_ascii_uppercase();
            return Err(Value::err(
                ErrorCode::Err,
                format!(
                    "syntax: unknown option '{key}' for {}",
                    cmd.to_ascii_uppercase()
                ),
            ));
        };
        if out[i].is_some() {
            return Err(Value::err(
                ErrorCode::Err,
                format!("syntax: {} given twice", allowed[i]),
            ));
        }
        out[i] = Some(&pair[1][..]);
    }
    Ok(out)
}

fn usage(cmd: &str, opts: &[Option<&[u8]>]) -> Result<Usage, Value> {
    let (Some(i), Some(o)) = (opts[0], opts[1]) else {
        return Err(syntax(cmd));
    };
    Ok(Usage {
        input: uint(i, "INPUT")?,
        output: uint(o, "OUTPUT")?,
        cached: opts[2].map(|v| uint(v, "CACHED")).transpose()?.unwrap_or(0),
        cache_write: opts[3]
            .map(|v| uint(v, "CACHEWRITE"))
            .transpose()?
            .unwrap_or(0),
    })
}

/// spendb's own RESP command of this (lower-case) name: answered by the
/// engine, the cache or the token counter (the connection answers the
/// Redis connection commands itself).
pub fn spendb_command(name: &str) -> Option<&'static CommandSpec> {
    commands::spec(name).filter(|c| c.is_resp())
}

/// Parses an engine command; `name` is lower-case, `args` excludes it.
pub fn parse(name: &str, args: &Args) -> Result<Command, Value> {
    let arity = spendb_command(name).map_or(0, |c| c.arity);
    let n = args.len() as i64 + 1;
    if (arity > 0 && n != arity) || (arity < 0 && n < -arity) {
        return Err(syntax(name));
    }
    let arg = |i: usize, what: &str| text(&args[i], what);
    Ok(match name {
        "budget.set" => {
            let scope = arg(0, "scope")?;
            // Each limit: <dim> <amount> PER|ROLLING <spec> [TZ <zone>].
            let word = |b: &[u8]| std::str::from_utf8(b).unwrap_or("?").to_string();
            let mut rest = &args[1..];
            let mut limits = Vec::new();
            while !rest.is_empty() {
                let [dim, amount, kind, spec, tail @ ..] = rest else {
                    return Err(syntax(name));
                };
                let kind = word(kind);
                if !kind.eq_ignore_ascii_case("PER") && !kind.eq_ignore_ascii_case("ROLLING") {
                    return Err(syntax(name));
                }
                let (tz, tail) = match tail {
                    [t, zone, tail @ ..] if t.eq_ignore_ascii_case(b"TZ") => {
                        (Some(word(zone)), tail)
                    }
                    _ => (None, tail),
                };
                let spec = LimitSpec::from_words_in(
                    &word(dim),
                    &word(amount),
                    &kind,
                    &word(spec),
                    tz.as_deref(),
                )
                .map_err(|e| Value::err(ErrorCode::Err, e))?;
                limits.push(spec);
                rest = tail;
            }
            Command::BudgetSet { scope, limits }
        }
        "budget.get" => Command::BudgetGet {
            scope: arg(0, "scope")?,
        },
        "budget.del" => Command::BudgetDel {
            scope: arg(0, "scope")?,
        },
        "budget.list" => match args.len() {
            0 => Command::BudgetList { prefix: None },
            1 => Command::BudgetList {
                prefix: Some(arg(0, "prefix")?),
            },
            _ => return Err(syntax(name)),
        },
        "reserve" => {
            // TEXT <prompt> was replaced by INPUT <count> before (count.rs).
            let o = options(
                name,
                &args[3..],
                &["INPUT", "OUTPUT", "TTL", "FALLBACK", "RUN"],
            )?;
            let Some(input) = o[0] else {
                return Err(syntax(name));
            };
            Command::Reserve(ReserveArgs {
                hold: arg(0, "hold id")?,
                scope: arg(1, "scope")?,
                model: arg(2, "model")?,
                input: uint(input, "INPUT")?,
                output: match o[1] {
                    None => OutputAsk::Max,
                    Some(v) if v.eq_ignore_ascii_case(b"AUTO") => OutputAsk::Auto,
                    Some(v) => OutputAsk::Tokens(uint(v, "OUTPUT")?),
                },
                ttl_ms: o[2].map(|v| uint(v, "TTL")).transpose()?,
                fallback: match o[3] {
                    None => Vec::new(),
                    Some(v) => fallback_models(v)?,
                },
                run: o[4].map(|v| text(v, "RUN")).transpose()?,
            })
        }
        "commit" => {
            let o = options(
                name,
                &args[1..],
                &["INPUT", "OUTPUT", "CACHED", "CACHEWRITE"],
            )?;
            Command::Commit {
                hold: arg(0, "hold id")?,
                usage: usage(name, &o)?,
            }
        }
        "release" => Command::Release {
            hold: arg(0, "hold id")?,
        },
        "step" => {
            let o = options(name, &args[2..], &["SCOPE", "MAX", "REPEATS", "WINDOW"])?;
            let n = |i: usize, what: &str| o[i].map(|v| uint(v, what)).transpose();
            Command::Step {
                run: arg(0, "run id")?,
                signature: args[1].to_vec(),
                scope: o[0].map(|v| text(v, "scope")).transpose()?,
                max: n(1, "MAX")?,
                repeats: n(2, "REPEATS")?,
                window: n(3, "WINDOW")?,
            }
        }
        "run.end" => {
            let o = options(name, &args[1..], &["OUTCOME"])?;
            let outcome = match o[0] {
                None => None,
                Some(v) => Some(RunOutcome::parse(&String::from_utf8_lossy(v)).ok_or_else(
                    || Value::err(ErrorCode::Err, "OUTCOME must be success or failure"),
                )?),
            };
            Command::RunEnd {
                run: arg(0, "run id")?,
                outcome,
            }
        }
        "hold.get" => Command::HoldGet {
            hold: arg(0, "hold id")?,
        },
        "spend" => {
            let o = options(
                name,
                &args[2..],
                &["INPUT", "OUTPUT", "CACHED", "CACHEWRITE", "ID", "RUN"],
            )?;
            Command::Spend {
                scope: arg(0, "scope")?,
                model: arg(1, "model")?,
                usage: usage(name, &o)?,
                id: o[4].map(|v| text(v, "ID")).transpose()?,
                run: o[5].map(|v| text(v, "RUN")).transpose()?,
            }
        }
        "balance" => Command::Balance {
            scope: arg(0, "scope")?,
        },
        "price.set" => {
            let o = options(
                name,
                &args[1..],
                &["INPUT", "OUTPUT", "CACHED", "CACHEWRITE", "MAXOUTPUT"],
            )?;
            let (Some(i), Some(out)) = (o[0], o[1]) else {
                return Err(syntax(name));
            };
            Command::PriceSet {
                model: arg(0, "model")?,
                input: usd(i, "INPUT")?,
                output: usd(out, "OUTPUT")?,
                cached: o[2].map(|v| usd(v, "CACHED")).transpose()?,
                cache_write: o[3].map(|v| usd(v, "CACHEWRITE")).transpose()?,
                max_output: o[4].map(|v| uint(v, "MAXOUTPUT")).transpose()?,
            }
        }
        "price.get" => Command::PriceGet {
            model: arg(0, "model")?,
        },
        "price.list" => Command::PriceList,
        _ => {
            return Err(Value::err(
                ErrorCode::Err,
                format!("unknown command '{name}'"),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::limit::{Dim, Window};

    fn p(line: &str) -> Result<Command, Value> {
        let words: Vec<Cow<[u8]>> = line
            .split(' ')
            .map(|w| Cow::Owned(w.as_bytes().to_vec()))
            .collect();
        parse(
            &std::str::from_utf8(&words[0]).unwrap().to_ascii_lowercase(),
            &words[1..],
        )
    }

    #[test]
    fn parses_budget_set() {
        let c = p("BUDGET.SET org:a TOKENS 1000 PER DAY COST 2.5 ROLLING 1h").unwrap();
        let Command::BudgetSet { limits, .. } = c else {
            panic!()
        };
        assert_eq!(
            limits[1],
            LimitSpec {
                dim: Dim::Cost,
                window: Window::Rolling(3_600_000),
                amount: 2_500_000_000
            }
        );
        assert!(p("BUDGET.SET org:a TOKENS 1000 PER YEAR").is_err());
        assert!(p("BUDGET.SET org:a BOGUS 1 PER DAY").is_err());
        assert!(p("BUDGET.SET org:a TOKENS -1 PER DAY").is_err());
        assert!(p("BUDGET.SET org:a TOKENS 1 PER").is_err());
    }

    #[test]
    fn parses_reserve_and_commit() {
        let c = p("RESERVE h1 org:a gpt-4o INPUT 10 OUTPUT 20 TTL 5000").unwrap();
        assert_eq!(
            c,
            Command::Reserve(ReserveArgs {
                ttl_ms: Some(5000),
                ..ReserveArgs::new("h1", "org:a", "gpt-4o", 10, OutputAsk::Tokens(20))
            })
        );
        assert!(p("RESERVE h1 org:a gpt-4o OUTPUT 20").is_err());
        assert!(p("RESERVE h1 org:a gpt-4o INPUT 1 INPUT 2").is_err());
        assert!(p("RESERVE h1 org:a gpt-4o INPUT x").is_err());
        assert!(p("COMMIT h1 INPUT 1").is_err());
        assert!(p("COMMIT h1 INPUT 1 OUTPUT 2 CACHED 1").is_ok());
        assert!(p("COMMIT h1 INPUT 1 OUTPUT 2 FOO 1").is_err());
    }
}
