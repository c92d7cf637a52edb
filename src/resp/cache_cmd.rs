//! CACHE.SET / GET / DEL / STATS and the semantic cache's CACHE.VSET / VGET /
//! VDEL / VCONFIG: parsed here and run against the cache on the connection's
//! side (sled reads and writes, no budget rules). A hit with SCOPE also books
//! its COST as savings, which is a ledger entry and so goes through the
//! engine (`Command::CacheSaved`).

use std::time::{SystemTime, UNIX_EPOCH};

use super::cmd::{self, Args};
use crate::state::bounds;
use crate::state::money::parse_usd;
use crate::state::{Access, Command, ErrorCode, Value};
use crate::store::cache::{check_namespace, Cache};
use crate::store::vcache::{check_dimension, fp32_blob};

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

/// A cache hit's reply: with SCOPE and a COST, once the engine has booked
/// the savings (the exact and the semantic cache alike).
fn found(reply: Value, cost: u64, scope: Option<String>) -> Outcome {
    match scope {
        Some(scope) if cost > 0 => Outcome::HitSaved(reply, Command::CacheSaved { scope, cost }),
        _ => Outcome::Reply(reply),
    }
}

/// An entry's `TTL <ms>`, `COST <usd>` and (semantic entries) `KEY <text>`.
struct EntryOptions<'a> {
    ttl: Option<u64>,
    cost: u64,
    key: Option<&'a [u8]>,
}

fn entry_options<'a>(
    name: &str,
    options: &'a Args<'_>,
    key_allowed: bool,
) -> Result<EntryOptions<'a>, Value> {
    if !options.len().is_multiple_of(2) {
        return Err(cmd::syntax(name));
    }
    let mut o = EntryOptions {
        ttl: None,
        cost: 0,
        key: None,
    };
    for pair in options.chunks(2) {
        if pair[0].eq_ignore_ascii_case(b"TTL") && o.ttl.is_none() {
            o.ttl = Some(cmd::uint(&pair[1], "TTL")?);
        } else if pair[0].eq_ignore_ascii_case(b"COST") {
            o.cost = parse_usd(&text(&pair[1], "COST")?).map_err(err)?;
            bounds::check_usd(o.cost, "COST").map_err(err)?;
        } else if key_allowed && pair[0].eq_ignore_ascii_case(b"KEY") && o.key.is_none() {
            o.key = Some(&*pair[1]);
        } else {
            return Err(cmd::syntax(name));
        }
    }
    Ok(o)
}

/// The options of CACHE.VGET (`scope_allowed`) and CACHE.VCONFIG, each at
/// most once, parsed only: the semantic cache checks their ranges.
#[derive(Default)]
struct SemanticOptions {
    threshold: Option<f32>,
    ef: Option<u64>,
    scope: Option<String>,
}

fn semantic_options(
    name: &str,
    options: &Args<'_>,
    scope_allowed: bool,
) -> Result<SemanticOptions, Value> {
    if !options.len().is_multiple_of(2) {
        return Err(cmd::syntax(name));
    }
    let mut o = SemanticOptions::default();
    for pair in options.chunks(2) {
        if pair[0].eq_ignore_ascii_case(b"THRESHOLD") && o.threshold.is_none() {
            o.threshold = Some(float(&pair[1], "THRESHOLD")?);
        } else if pair[0].eq_ignore_ascii_case(b"EF") && o.ef.is_none() {
            o.ef = Some(cmd::uint(&pair[1], "EF")?);
        } else if scope_allowed && pair[0].eq_ignore_ascii_case(b"SCOPE") && o.scope.is_none() {
            o.scope = Some(text(&pair[1], "scope")?);
        } else {
            return Err(cmd::syntax(name));
        }
    }
    Ok(o)
}

fn float(arg: &[u8], what: &str) -> Result<f32, Value> {
    let t = text(arg, what)?;
    match t.trim().parse::<f32>() {
        Ok(f) if f.is_finite() => Ok(f),
        _ => Err(err(format!("{what} must be a number"))),
    }
}

/// `FP32 <blob>` or `VALUES <n> <v1> … <vn>` at the front of `args`: the
/// vector and what follows it.
fn vector_arg<'a, 'b>(name: &str, args: &'b Args<'a>) -> Result<(Vec<f32>, &'b Args<'a>), Value> {
    match args {
        [form, blob, rest @ ..] if form.eq_ignore_ascii_case(b"FP32") => {
            Ok((fp32_blob(blob).map_err(err)?, rest))
        }
        [form, n, rest @ ..] if form.eq_ignore_ascii_case(b"VALUES") => {
            let n = cmd::uint(n, "VALUES count")? as usize;
            check_dimension(n).map_err(err)?;
            if rest.len() < n {
                return Err(err(format!("VALUES {n} needs {n} numbers")));
            }
            let v = rest[..n]
                .iter()
                .map(|x| float(x, "a vector component"))
                .collect::<Result<Vec<f32>, Value>>()?;
            Ok((v, &rest[n..]))
        }
        _ => Err(cmd::syntax(name)),
    }
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
            let o = entry_options(name, &args[3..], false)?;
            cache
                .set(&ns, &args[1], &args[2], o.ttl, o.cost, now_ms())
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
                Some(hit) => Ok(found(Value::Bulk(hit.value), hit.cost, scope)),
            }
        }
        "cache.del" => {
            if args.len() != 2 {
                return Err(cmd::syntax(name));
            }
            let ns = namespace(&args[0], access)?;
            reply(Value::Int(cache.del(&ns, &args[1]).map_err(err)? as i64))
        }
        "cache.stats" => reply(match (args.len(), access.and_then(Access::tenant)) {
            (0, None) => cache.stats_reply(None),
            (0, Some(tenant)) => cache.stats_reply_prefixed(tenant),
            (1, _) => cache.stats_reply(Some(&namespace(&args[0], access)?)),
            _ => return Err(cmd::syntax(name)),
        }),
        "cache.vset" => {
            let ns = namespace(args.first().ok_or_else(|| cmd::syntax(name))?, access)?;
            let (vector, rest) = vector_arg(name, &args[1..])?;
            let (value, options) = rest.split_first().ok_or_else(|| cmd::syntax(name))?;
            let o = entry_options(name, options, true)?;
            let id = cache
                .semantic()
                .set(&ns, &vector, value, o.ttl, o.cost, o.key, now_ms())
                .map_err(err)?;
            reply(Value::Int(id as i64))
        }
        "cache.vget" => {
            let ns = namespace(args.first().ok_or_else(|| cmd::syntax(name))?, access)?;
            let (vector, options) = vector_arg(name, &args[1..])?;
            let o = semantic_options(name, options, true)?;
            let Some(hit) = cache
                .semantic()
                .get(&ns, &vector, o.threshold, o.ef, now_ms())
                .map_err(err)?
            else {
                return reply(Value::Null);
            };
            let entry = Value::Map(vec![
                ("value", Value::Bulk(hit.value)),
                ("score", Value::Str(format!("{:.6}", hit.score))),
                ("key", hit.key.map_or(Value::Null, Value::Bulk)),
                ("id", Value::Int(hit.id as i64)),
            ]);
            Ok(found(entry, hit.cost, o.scope))
        }
        "cache.vdel" => {
            if args.len() != 2 {
                return Err(cmd::syntax(name));
            }
            let ns = namespace(&args[0], access)?;
            let id = cmd::uint(&args[1], "id")?;
            reply(Value::Int(
                cache.semantic().del(&ns, id).map_err(err)? as i64
            ))
        }
        "cache.vconfig" => {
            let ns = namespace(args.first().ok_or_else(|| cmd::syntax(name))?, access)?;
            let options = &args[1..];
            if options.is_empty() {
                let c = cache.semantic().config(&ns);
                return reply(Value::Map(vec![
                    ("threshold", Value::Str(format!("{}", c.threshold))),
                    ("dimension", Value::Int(i64::from(c.dimension))),
                    ("ef", Value::Int(c.ef_search() as i64)),
                ]));
            }
            let o = semantic_options(name, options, false)?;
            cache
                .semantic()
                .configure(&ns, o.threshold, o.ef)
                .map_err(err)?;
            reply(Value::Ok)
        }
        _ => Err(cmd::syntax(name)),
    }
}
