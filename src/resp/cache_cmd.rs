//! CACHE.SET / GET / DEL / STATS: parsed here and run against the cache on
//! the connection's side (sled reads and writes, no budget rules). A hit
//! with SCOPE also books its COST as savings, which is a ledger entry and so
//! goes through the engine (`Command::CacheSaved`).

use std::time::{SystemTime, UNIX_EPOCH};

use super::cmd::{self, Args};
use crate::state::bounds;
use crate::state::money::parse_usd;
use crate::state::{Access, Command, ErrorCode, Value};
use crate::store::cache::{check_namespace, Cache};

/// What a cache command produced.
pub enum Outcome {
    Reply(Value),
    /// Reply with the value once the engine has booked the savings (or with
    /// the engine's error, e.g. NOPERM for the scope).
    HitSaved(Value, Command),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn text(arg: &[u8], what: &str) -> Result<String, Value> {
    cmd::text(arg, what)
}

fn err(msg: String) -> Value {
    Value::err(ErrorCode::Err, msg)
}

/// Runs a cache command for a caller with `access`: a tenant's namespaces
/// are qualified with its tenant key (`state::access`), so it reaches only
/// its own entries and statistics.
pub fn run(cache: &Cache, name: &str, args: &Args, access: Option<&Access>) -> Outcome {
    match run_inner(cache, name, args, access) {
        Ok(o) => o,
        Err(e) => Outcome::Reply(e),
    }
}

/// The namespace argument, checked as the client named it, then in the
/// caller's keyspace.
fn namespace(arg: &[u8], access: Option<&Access>) -> Result<String, Value> {
    let ns = text(arg, "namespace")?;
    check_namespace(&ns).map_err(err)?;
    Ok(match access {
        Some(a) => a.qualify(&ns),
        None => ns,
    })
}

fn run_inner(
    cache: &Cache,
    name: &str,
    args: &Args,
    access: Option<&Access>,
) -> Result<Outcome, Value> {
    let reply = |v| Ok(Outcome::Reply(v));
    match name {
        "cache.set" => {
            if args.len() < 3 || !(args.len() - 3).is_multiple_of(2) {
                return Err(cmd::syntax(name));
            }
            let ns = namespace(&args[0], access)?;
            let (mut ttl, mut cost) = (None, 0u64);
            for pair in args[3..].chunks(2) {
                if pair[0].eq_ignore_ascii_case(b"TTL") && ttl.is_none() {
                    ttl = Some(cmd::uint(&pair[1], "TTL")?);
                } else if pair[0].eq_ignore_ascii_case(b"COST") {
                    let t = text(&pair[1], "COST")?;
                    cost = parse_usd(&t).map_err(err)?;
                    bounds::check_usd(cost, "COST").map_err(err)?;
                } else {
                    return Err(cmd::syntax(name));
                }
            }
            cache
                .set(&ns, &args[1], &args[2], ttl, cost, now_ms())
                .map_err(err)?;
            reply(Value::Ok)
        }
        "cache.get" => {
            let scope = match args.len() {
                2 => None,
                4 if args[2].eq_ignore_ascii_case(b"SCOPE") => Some(text(&args[3], "scope")?),
                _ => return Err(cmd::syntax(name)),
            };
            let ns = namespace(&args[0], access)?;
            match cache.get(&ns, &args[1], now_ms()).map_err(err)? {
                None => reply(Value::Null),
                Some(hit) => match scope {
                    Some(scope) if hit.cost > 0 => Ok(Outcome::HitSaved(
                        Value::Bulk(hit.value),
                        Command::CacheSaved {
                            scope,
                            cost: hit.cost,
                        },
                    )),
                    _ => reply(Value::Bulk(hit.value)),
                },
            }
        }
        "cache.del" => {
            if args.len() != 2 {
                return Err(cmd::syntax(name));
            }
            let ns = namespace(&args[0], access)?;
            reply(Value::Int(cache.del(&ns, &args[1]).map_err(err)? as i64))
        }
        "cache.stats" => {
            let s = match (args.len(), access.and_then(Access::tenant)) {
                (0, None) => cache.stats(None),
                (0, Some(tenant)) => cache.stats_prefixed(tenant),
                (1, _) => cache.stats(Some(&namespace(&args[0], access)?)),
                _ => return Err(cmd::syntax(name)),
            };
            reply(s.reply())
        }
        _ => Err(cmd::syntax(name)),
    }
}
