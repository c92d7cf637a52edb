//! The `/v1` routes: each parses its path, query and body, builds the engine
//! command the Redis side would, and returns the reply as JSON.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::{body, json_of, run, ApiError, Ctx};
use crate::state::limit::LimitSpec;
use crate::state::money::parse_usd;
use crate::state::{Command, ErrorCode};
use crate::store::cache::check_namespace;

pub(super) type Reply = Result<Json<serde_json::Value>, ApiError>;
pub(super) type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

/// A query string, or a JSON 400 naming what is wrong with it.
pub(super) fn query<T>(q: QueryResult<T>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "BADQUERY", e.body_text()))
}

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/v1/budgets", get(list_budgets))
        .route(
            "/v1/budgets/{*scope}",
            get(get_budget).put(put_budget).delete(delete_budget),
        )
        .route("/v1/balances/{*scope}", get(get_balance))
        .route("/v1/holds", get(list_holds))
        .route("/v1/ledger", get(ledger))
        .route("/v1/reports/spend", get(spend_report))
        .route("/v1/reports/runs", get(runs_report))
        .route("/v1/reports/forecast/{*scope}", get(forecast))
        .route("/v1/holds/{id}", get(get_hold))
        .route("/v1/prices", get(list_prices))
        .route("/v1/prices/{model}", axum::routing::put(put_price))
        .route("/v1/cache/stats", get(cache_stats))
        .route("/v1/cluster", get(cluster))
        .route("/v1/archive", get(archive))
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive", body = Object)))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: the admin port opens only after recovery finished, so a
/// response means the ledger is loaded and commands are served;
/// `writable` is false while writes are refused after a failed ledger write.
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "ready", body = Object)))]
pub async fn readyz(State(ctx): State<Ctx>) -> Json<serde_json::Value> {
    let last = ctx
        .engine
        .stats
        .last_seq
        .load(std::sync::atomic::Ordering::Relaxed);
    let writable = !ctx
        .engine
        .stats
        .degraded
        .load(std::sync::atomic::Ordering::Relaxed);
    Json(serde_json::json!({"status": "ready", "ledger_last_seq": last, "writable": writable}))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PrefixQuery {
    /// Only scopes at or below this one.
    prefix: Option<String>,
}

/// Scopes that have limits, sorted.
#[utoipa::path(get, path = "/v1/budgets", params(PrefixQuery), security(("bearer" = [])),
    responses((status = 200, description = "scopes", body = Object), (status = 400, description = "bad query string", body = Object),
        (status = 422, description = "a scope longer than 256 bytes", body = Object)))]
pub async fn list_budgets(State(ctx): State<Ctx>, q: QueryResult<PrefixQuery>) -> Reply {
    let q = query(q)?;
    let Json(v) = run(&ctx, Command::BudgetList { prefix: q.prefix }).await?;
    Ok(Json(serde_json::json!({"scopes": v})))
}

/// A scope's limits with used, held, remaining and resets_at.
#[utoipa::path(get, path = "/v1/budgets/{scope}", params(("scope" = String, Path, description = "e.g. org:acme/team:search")),
    security(("bearer" = [])),
    responses((status = 200, description = "the budget", body = Object), (status = 404, description = "no limits on the scope", body = Object),
        (status = 422, description = "a scope longer than 256 bytes", body = Object)))]
pub async fn get_budget(State(ctx): State<Ctx>, Path(scope): Path<String>) -> Reply {
    run(&ctx, Command::BudgetGet { scope }).await
}

/// One limit: `amount` in the dimension's unit (USD for COST), and exactly
/// one of `per` (MINUTE HOUR DAY WEEK MONTH TOTAL) or `rolling` (e.g. "1m");
/// `tz` (an IANA name, e.g. "America/Los_Angeles") counts a DAY, WEEK or
/// MONTH in that time zone instead of UTC.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitBody {
    /// TOKENS, INPUT, OUTPUT, REQUESTS or COST.
    dim: String,
    /// A decimal string or number, e.g. "1000000" or "12.50".
    #[schema(value_type = String)]
    amount: serde_json::Value,
    per: Option<String>,
    rolling: Option<String>,
    tz: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetBody {
    limits: Vec<LimitBody>,
}

fn amount_text(v: &serde_json::Value) -> Result<String, ApiError> {
    match v {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        _ => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ERR",
            "amount must be a decimal string or a number",
        )),
    }
}

/// Sets a scope's limits, replacing all of them (BUDGET.SET).
#[utoipa::path(put, path = "/v1/budgets/{scope}", params(("scope" = String, Path, description = "e.g. org:acme")),
    request_body = BudgetBody, security(("bearer" = [])),
    responses((status = 200, description = "set", body = Object), (status = 400, description = "malformed JSON", body = Object),
        (status = 422, description = "invalid limits", body = Object)))]
pub async fn put_budget(State(ctx): State<Ctx>, Path(scope): Path<String>, raw: Bytes) -> Reply {
    let b: BudgetBody = body(&raw)?;
    let mut limits = Vec::new();
    for l in &b.limits {
        let (kind, spec) = match (&l.per, &l.rolling) {
            (Some(p), None) => ("PER", p),
            (None, Some(r)) => ("ROLLING", r),
            _ => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "ERR",
                    "each limit needs exactly one of per or rolling",
                ))
            }
        };
        let amount = amount_text(&l.amount)?;
        limits.push(
            LimitSpec::from_words_in(&l.dim, &amount, kind, spec, l.tz.as_deref())
                .map_err(|e| ApiError::refused(ErrorCode::Err, e))?,
        );
    }
    run(&ctx, Command::BudgetSet { scope, limits }).await
}

/// Removes a scope's limits (BUDGET.DEL): `{"deleted": true|false}`.
#[utoipa::path(delete, path = "/v1/budgets/{scope}", params(("scope" = String, Path, description = "e.g. org:acme")),
    security(("bearer" = [])), responses((status = 200, description = "deleted or not", body = Object),
        (status = 422, description = "a scope longer than 256 bytes", body = Object)))]
pub async fn delete_budget(State(ctx): State<Ctx>, Path(scope): Path<String>) -> Reply {
    let Json(v) = run(&ctx, Command::BudgetDel { scope }).await?;
    Ok(Json(
        serde_json::json!({"deleted": v == serde_json::json!(1)}),
    ))
}

/// Spent, held, open holds, savings and every limit on the scope and its
/// ancestors (BALANCE).
#[utoipa::path(get, path = "/v1/balances/{scope}", params(("scope" = String, Path, description = "e.g. org:acme/agent:a")),
    security(("bearer" = [])), responses((status = 200, description = "the balance", body = Object), (status = 422, description = "bad scope", body = Object)))]
pub async fn get_balance(State(ctx): State<Ctx>, Path(scope): Path<String>) -> Reply {
    run(&ctx, Command::Balance { scope }).await
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HoldsQuery {
    /// Only holds at or below this scope.
    scope: Option<String>,
    /// At most this many (default 100, at most 10000).
    #[param(value_type = Option<u32>, nullable = false, minimum = 1, maximum = 10000)]
    limit: Option<String>,
}

/// Open holds, oldest first.
#[utoipa::path(get, path = "/v1/holds", params(HoldsQuery), security(("bearer" = [])),
    responses((status = 200, description = "open holds", body = Object), (status = 400, description = "bad query", body = Object),
        (status = 422, description = "limit out of range", body = Object)))]
pub async fn list_holds(State(ctx): State<Ctx>, q: QueryResult<HoldsQuery>) -> Reply {
    let q = query(q)?;
    let limit = page_limit(&q.limit, 10_000)?;
    let Json(v) = run(
        &ctx,
        Command::HoldList {
            prefix: q.scope,
            limit,
        },
    )
    .await?;
    Ok(Json(serde_json::json!({"holds": v})))
}

/// One hold and its state (HOLD.GET).
#[utoipa::path(get, path = "/v1/holds/{id}", params(("id" = String, Path, description = "the hold id")),
    security(("bearer" = [])), responses((status = 200, description = "the hold", body = Object), (status = 404, description = "unknown hold", body = Object),
        (status = 422, description = "a hold id longer than 64 bytes", body = Object)))]
pub async fn get_hold(State(ctx): State<Ctx>, Path(id): Path<String>) -> Reply {
    run(&ctx, Command::HoldGet { hold: id }).await
}

/// The price table.
#[utoipa::path(get, path = "/v1/prices", security(("bearer" = [])), responses((status = 200, description = "prices", body = Object)))]
pub async fn list_prices(State(ctx): State<Ctx>) -> Reply {
    let Json(v) = run(&ctx, Command::PriceList).await?;
    Ok(Json(serde_json::json!({"prices": v})))
}

/// USD per million tokens, as decimal strings or numbers.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceBody {
    #[schema(value_type = String)]
    input: serde_json::Value,
    #[schema(value_type = String)]
    output: serde_json::Value,
    #[schema(value_type = Option<String>)]
    cached: Option<serde_json::Value>,
    #[schema(value_type = Option<String>)]
    cache_write: Option<serde_json::Value>,
    /// The model's maximum output tokens (a RESERVE without OUTPUT holds
    /// this many); omitted: what is known stays.
    #[schema(minimum = 1, maximum = 1_000_000_000_000u64)]
    max_output: Option<u64>,
}

/// Sets a model's price (PRICE.SET).
#[utoipa::path(put, path = "/v1/prices/{model}", params(("model" = String, Path, description = "e.g. gpt-4o")),
    request_body = PriceBody, security(("bearer" = [])),
    responses((status = 200, description = "set", body = Object), (status = 400, description = "malformed JSON", body = Object),
        (status = 422, description = "invalid price", body = Object)))]
pub async fn put_price(State(ctx): State<Ctx>, Path(model): Path<String>, raw: Bytes) -> Reply {
    let p: PriceBody = body(&raw)?;
    let usd = |v: &serde_json::Value, what: &str| -> Result<u64, ApiError> {
        parse_usd(&amount_text(v)?)
            .map_err(|e| ApiError::refused(ErrorCode::Err, format!("{what}: {e}")))
    };
    let cmd = Command::PriceSet {
        model,
        input: usd(&p.input, "INPUT")?,
        output: usd(&p.output, "OUTPUT")?,
        cached: p.cached.as_ref().map(|c| usd(c, "CACHED")).transpose()?,
        cache_write: p
            .cache_write
            .as_ref()
            .map(|c| usd(c, "CACHEWRITE"))
            .transpose()?,
        max_output: p.max_output,
    };
    run(&ctx, cmd).await
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct NsQuery {
    /// One namespace (default: all summed).
    ns: Option<String>,
}

/// Response cache statistics, exact and semantic (CACHE.STATS).
#[utoipa::path(get, path = "/v1/cache/stats", params(NsQuery), security(("bearer" = [])),
    responses((status = 200, description = "statistics", body = Object), (status = 400, description = "bad query string", body = Object),
        (status = 422, description = "bad namespace", body = Object)))]
pub async fn cache_stats(State(ctx): State<Ctx>, q: QueryResult<NsQuery>) -> Reply {
    let q = query(q)?;
    if let Some(ns) = &q.ns {
        check_namespace(ns).map_err(|e| ApiError::refused(ErrorCode::Err, e))?;
    }
    Ok(Json(json_of(&ctx.cache.stats_reply(q.ns.as_deref()))))
}

/// Cluster mode: this node (its name, epoch, whether it is registered and
/// reaches the store, what its agent did, its grants with their use) and
/// the whole cluster as the store has it (`store`: nodes, pools, grants;
/// `store_error` when it could not be read). 404 on a single node.
#[utoipa::path(get, path = "/v1/cluster", security(("bearer" = [])),
    responses((status = 200, description = "this node and the cluster", body = Object),
        (status = 404, description = "not a cluster node", body = Object)))]
pub async fn cluster(State(ctx): State<Ctx>) -> Reply {
    let Some(node) = &ctx.cluster else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOTCLUSTER",
            "this server is not a cluster node (spendb serve --etcd … --node …)",
        ));
    };
    let mut body = serde_json::json!({ "node": node.view() });
    match node.status().await {
        Ok(st) => body["store"] = serde_json::to_value(st).unwrap_or_default(),
        Err(e) => body["store_error"] = e.into(),
    }
    Ok(Json(body))
}

/// `--archive`: where this node ships its ledger, up to which entry the
/// store confirmed it, the lag (entries, and the age of the oldest entry
/// not shipped), errors. 404 when the ledger is not shipped.
#[utoipa::path(get, path = "/v1/archive", security(("bearer" = [])),
    responses((status = 200, description = "the archive's shipping", body = Object),
        (status = 404, description = "no --archive", body = Object)))]
pub async fn archive(State(ctx): State<Ctx>) -> Reply {
    let Some(shipper) = &ctx.archive else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOARCHIVE",
            "this server does not ship its ledger (spendb serve --archive <url>)",
        ));
    };
    let s = shipper.status();
    Ok(Json(serde_json::json!({
        "url": s.url,
        "durable_seq": s.durable_seq,
        "shipped_seq": s.shipped_seq,
        "lag_entries": s.lag_entries,
        "lag_seconds": s.lag_ms as f64 / 1000.0,
        "lagging": s.lagging,
        "chunks": s.chunks,
        "bytes": s.bytes,
        "errors": s.errors,
        "last_error": s.last_error,
        "removed_segments": s.removed_segments,
        "refused": s.refused,
    })))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LedgerQuery {
    /// Entries after this seq (the previous page's `next_after`; default 0).
    #[param(value_type = Option<i64>, nullable = false, minimum = 0)]
    after: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[param(value_type = Option<u32>, nullable = false, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Only entries whose scope is at or below this one (entries that carry
    /// a scope: budget_set, budget_del, hold, spend, step, step_denied, saved).
    scope: Option<String>,
    /// Only entries of this kind (hold, commit, release, expire, spend,
    /// budget_set, budget_del, price_set, step, step_denied, run_end, saved).
    kind: Option<String>,
    /// Only entries at or after this time (ms since the Unix epoch).
    #[param(value_type = Option<i64>, nullable = false, minimum = 0)]
    from: Option<String>,
    /// Only entries before this time (ms since the Unix epoch).
    #[param(value_type = Option<i64>, nullable = false, minimum = 0)]
    to: Option<String>,
}

pub(super) fn number(v: &Option<String>, what: &str) -> Result<Option<u64>, ApiError> {
    v.as_deref()
        .map(|s| {
            // Whole numbers up to i64::MAX (what the OpenAPI document says).
            s.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .map(|n| n as u64)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "BADQUERY",
                        format!("{what} '{s}' is not a whole number from 0 to 2^63-1"),
                    )
                })
        })
        .transpose()
}

/// A `limit` query parameter: 100 by default, from 1 to `max`.
pub(super) fn page_limit(v: &Option<String>, max: usize) -> Result<usize, ApiError> {
    let limit = number(v, "limit")?.unwrap_or(100) as usize;
    if limit == 0 || limit > max {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ERR",
            format!("limit must be from 1 to {max}"),
        ));
    }
    Ok(limit)
}

fn entry_scope(k: &crate::state::EntryKind) -> Option<&str> {
    use crate::state::EntryKind as K;
    match k {
        K::BudgetSet { scope, .. }
        | K::BudgetDel { scope }
        | K::Hold { scope, .. }
        | K::Spend { scope, .. }
        | K::Saved { scope, .. }
        | K::AlertRules { scope, .. } => Some(scope),
        K::Alert(ev) => Some(&ev.scope),
        K::Step { scope, .. } | K::StepDenied { scope, .. } => scope.as_deref(),
        _ => None,
    }
}

/// A page of the ledger, oldest first: `{"entries": [...], "next_after":
/// <seq to pass as after for the next page, or null at the end>}`. Each
/// entry is `seq`, `ts`, `kind` and its fields (amounts in nano-USD).
#[utoipa::path(get, path = "/v1/ledger", params(LedgerQuery), security(("bearer" = [])),
    responses((status = 200, description = "a page of entries", body = Object), (status = 400, description = "bad query", body = Object),
        (status = 422, description = "limit out of range", body = Object)))]
pub async fn ledger(State(ctx): State<Ctx>, q: QueryResult<LedgerQuery>) -> Reply {
    let q = query(q)?;
    let after = number(&q.after, "after")?.unwrap_or(0);
    let limit = page_limit(&q.limit, 1000)?;
    let (from, to) = (number(&q.from, "from")?, number(&q.to, "to")?);
    let ledger = ctx.ledger.clone();
    let (scope, kind) = (q.scope, q.kind);
    let page = tokio::task::spawn_blocking(move || {
        ledger.page(after, limit, |e| {
            from.is_none_or(|f| e.ts >= f)
                && to.is_none_or(|t| e.ts < t)
                && kind.as_deref().is_none_or(|k| e.kind.name() == k)
                && scope.as_deref().is_none_or(|p| {
                    entry_scope(&e.kind).is_some_and(|s| crate::state::scope::is_within(s, p))
                })
        })
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ERR", e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "IOERR", e.to_string()))?;
    let next_after = (page.len() == limit)
        .then(|| page.last().map(|e| e.seq))
        .flatten();
    let entries: Vec<serde_json::Value> = page.iter().map(super::entry_json).collect();
    Ok(Json(
        serde_json::json!({"entries": entries, "next_after": next_after}),
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// `scope` (default), `model`, `day` or `hour` (UTC).
    group: Option<String>,
    /// With group=scope: how many segments of the scope to keep (default 1:
    /// the top-level scope, e.g. org:acme).
    #[param(value_type = Option<u32>, nullable = false, minimum = 1, maximum = 8)]
    level: Option<String>,
    /// Only spend at or below this scope.
    scope: Option<String>,
    /// Spend at or after this time (ms since the Unix epoch).
    #[param(value_type = Option<i64>, nullable = false, minimum = 0)]
    from: Option<String>,
    /// Spend before this time (ms since the Unix epoch).
    #[param(value_type = Option<i64>, nullable = false, minimum = 0)]
    to: Option<String>,
    /// Only the N largest groups by cost (default all).
    #[param(value_type = Option<u32>, nullable = false, minimum = 1, maximum = 10000)]
    top: Option<String>,
    /// Cluster mode: `this` for this node's books only (default: the
    /// cluster's, every node's merged; the reply's `cluster` says which).
    node: Option<String>,
}

/// How long a report waits for the rollups to fold what was acknowledged
/// (at start-up, a ledger not yet folded).
const ROLLUP_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs `f` on the rollups once they cover every acknowledged entry, on
/// the blocking pool; also the seq they cover.
async fn from_rollups<T: Send + 'static>(
    ctx: &Ctx,
    f: impl FnOnce(&crate::state::rollup::Rollup) -> T + Send + 'static,
) -> Result<(T, u64), ApiError> {
    let rollups = ctx.rollups.clone();
    tokio::task::spawn_blocking(move || rollups.read(ROLLUP_WAIT, |r| (f(r), r.seq)))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ERR", e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "IOERR", e))
}

/// Whether a report covers the cluster: a cluster node, unless the query
/// says `node=this`.
fn whole_cluster(ctx: &Ctx, node: &Option<String>) -> Result<bool, ApiError> {
    match node.as_deref() {
        None => Ok(ctx.cluster.is_some()),
        Some("this") => Ok(false),
        Some(_) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ERR",
            "node must be `this` (or left out: the cluster's books)",
        )),
    }
}

/// The other nodes' answers to a report (issue #29 part 3), read from
/// their books in the archive (`store::archive::books`), and what the
/// merged answer covers: `{"nodes": [{"node", "seq", "source", …}],
/// "missing": [{"node", "why"}], "complete"}`. A node the store lists as
/// live, or with a folder in the archive, that cannot be read is missing,
/// never silently left out.
async fn other_nodes<T: Send + 'static>(
    ctx: &Ctx,
    seq: u64,
    f: impl Fn(&crate::state::rollup::Rollup) -> T + Send + 'static,
) -> (Vec<T>, serde_json::Value) {
    let Some(node) = ctx.cluster.clone() else {
        return (Vec::new(), serde_json::Value::Null);
    };
    let me = node.view().node;
    let (live, live_error) = match node.live_nodes().await {
        Ok(names) => (names, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let books = ctx.books.clone();
    let me2 = me.clone();
    let live2 = live.clone();
    let read = tokio::task::spawn_blocking(move || {
        let mut parts = Vec::new();
        let mut covered = Vec::new();
        let mut missing = Vec::new();
        let Some(books) = books else {
            for n in live2.iter().filter(|n| **n != me2) {
                missing.push(serde_json::json!({"node": n, "why":
                    "this node runs without --archive: the other nodes' books are read from the archive"}));
            }
            return (parts, covered, missing);
        };
        let mut names = match books.nodes() {
            Ok(n) => n,
            Err(e) => {
                missing.push(serde_json::json!({"node": null, "why": e}));
                Vec::new()
            }
        };
        names.extend(live2.iter().cloned());
        names.sort();
        names.dedup();
        for n in names.into_iter().filter(|n| *n != me2) {
            match books.with(&n, |r, cov| (f(r), cov.clone())) {
                Ok((part, cov)) => {
                    parts.push(part);
                    covered.push(serde_json::json!({"node": n, "seq": cov.seq,
                        "source": "archive", "shipped_at": cov.ts, "live": live2.contains(&n)}));
                }
                Err(why) => missing.push(serde_json::json!({"node": n, "why": why})),
            }
        }
        (parts, covered, missing)
    })
    .await;
    let (parts, covered, mut missing) = read.unwrap_or_else(|e| {
        (
            Vec::new(),
            Vec::new(),
            vec![serde_json::json!({"node": null, "why": e.to_string()})],
        )
    });
    if let Some(e) = live_error {
        missing.push(serde_json::json!({"node": null,
            "why": format!("the live nodes could not be read from the store: {e}")}));
    }
    let mut nodes =
        vec![serde_json::json!({"node": me, "seq": seq, "source": "this node", "live": true})];
    nodes.extend(covered);
    let cover = serde_json::json!({
        "nodes": nodes,
        "complete": missing.is_empty(),
        "missing": missing,
    });
    (parts, cover)
}

/// A report's `from` and `to` (ms), rounded down to the hour: the rollups
/// keep hours.
fn whole_hours(ms: Option<u64>) -> Option<u64> {
    use crate::state::rollup::HOUR_MS;
    ms.map(|t| t / HOUR_MS * HOUR_MS)
}

/// Spend over a time range, grouped by scope level, model, UTC day or hour,
/// largest first: `{"groups": [{"key", "cost", "tokens", "requests",
/// "saved"}], "total": {…}, "from", "to", "seq"}` (USD as decimal
/// strings). `from` and `to` are rounded down to the hour (the reply says
/// the range it covers); `seq` is the last ledger entry counted. Answered
/// from the rollups (commits, spends and cache savings by scope, model and
/// hour): its cost is what it returns, not the ledger's length.
#[utoipa::path(get, path = "/v1/reports/spend", params(ReportQuery), security(("bearer" = [])),
    responses((status = 200, description = "spend by group", body = Object), (status = 400, description = "bad query", body = Object),
        (status = 422, description = "bad group or range", body = Object)))]
pub async fn spend_report(State(ctx): State<Ctx>, q: QueryResult<ReportQuery>) -> Reply {
    use crate::state::spend_report::{SpendGroup, SpendQuery, SpendTally};
    let q = query(q)?;
    let group = q.group.as_deref().unwrap_or("scope");
    if !matches!(group, "scope" | "model" | "day" | "hour") {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ERR",
            "group must be scope, model, day or hour",
        ));
    }
    let level = number(&q.level, "level")?.unwrap_or(1) as usize;
    let top = number(&q.top, "top")?.map(|n| n as usize);
    if level == 0 || level > 8 || top.is_some_and(|t| t == 0 || t > 10_000) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ERR",
            "level must be from 1 to 8 and top from 1 to 10000",
        ));
    }
    let query = SpendQuery {
        group: match group {
            "scope" => SpendGroup::Scope { level },
            "model" => SpendGroup::Model,
            "day" => SpendGroup::Day,
            _ => SpendGroup::Hour,
        },
        scope: q.scope.clone(),
        from: whole_hours(number(&q.from, "from")?),
        to: whole_hours(number(&q.to, "to")?),
    };
    let (from, to) = (query.from, query.to);
    let cluster = whole_cluster(&ctx, &q.node)?;
    let mine = query.clone();
    let ((rows, total), seq) = from_rollups(&ctx, move |r| r.spend(&mine)).await?;
    let (rows, total, cover) = match cluster {
        true => {
            let (mut parts, cover) = other_nodes(&ctx, seq, move |r| r.spend(&query)).await;
            parts.push((rows, total));
            let (rows, total) = crate::state::spend_report::merge(parts);
            (rows, total, cover)
        }
        false => (rows, total, serde_json::Value::Null),
    };
    let usd = crate::state::money::format_usd;
    let json = |key: Option<&str>, g: &SpendTally| {
        let mut o = serde_json::json!({"cost": usd(g.cost), "tokens": g.tokens, "requests": g.requests, "saved": usd(g.saved)});
        if let Some(k) = key {
            o["key"] = k.into();
        }
        o
    };
    let shown: Vec<serde_json::Value> = rows
        .iter()
        .take(top.unwrap_or(usize::MAX))
        .map(|(k, g)| json(Some(k), g))
        .collect();
    let mut body = serde_json::json!({"groups": shown, "total": json(None, &total), "from": from, "to": to, "seq": seq});
    if cluster {
        body["cluster"] = cover;
    }
    Ok(Json(body))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// `scope` (default: the scope of each run's first call, cut to
    /// `level` segments) or `model` (a run counts under every model it
    /// called, with that model's part of its usage).
    group: Option<String>,
    /// With group=scope: how many segments of the scope to keep (default 1).
    #[param(value_type = Option<u32>, nullable = false, minimum = 1, maximum = 8)]
    level: Option<String>,
    /// Only runs at or below this scope.
    scope: Option<String>,
    /// Runs that ended at or after this time (ms since the Unix epoch).
    #[param(value_type = Option<i64>, nullable = false, minimum = 0)]
    from: Option<String>,
    /// Runs that ended before this time (ms since the Unix epoch).
    #[param(value_type = Option<i64>, nullable = false, minimum = 0)]
    to: Option<String>,
    /// Cluster mode: `this` for this node's books only (default: the
    /// cluster's; the reply's `cluster` says which nodes it covers).
    node: Option<String>,
}

/// Cost per run and per successful run (`RESERVE` / `SPEND … RUN`,
/// `RUN.END … OUTCOME`): for each group, `runs` ended in the range,
/// `succeeded`, `failed`, `unreported` (ended without an outcome),
/// `success_rate` (succeeded / (succeeded + failed), null with no
/// outcome), `calls`, `tokens`, `cost`, and per run: `cost_per_run`,
/// `cost_per_successful_run` (what the successful runs cost on average),
/// `cost_per_success` (everything spent, failed runs included, over the
/// successes), with the same three for tokens; `total` over all groups, and
/// `open`: runs not ended yet; `from`, `to` (rounded down to the hour) and
/// `seq` (the last ledger entry counted). Answered from the rollups.
#[utoipa::path(get, path = "/v1/reports/runs", params(RunsQuery), security(("bearer" = [])),
    responses((status = 200, description = "runs by group", body = Object), (status = 400, description = "bad query", body = Object),
        (status = 422, description = "bad group or level", body = Object)))]
pub async fn runs_report(State(ctx): State<Ctx>, q: QueryResult<RunsQuery>) -> Reply {
    use crate::state::run_report::{RunGroup, RunQuery, RunStats};
    let q = query(q)?;
    let level = number(&q.level, "level")?.unwrap_or(1) as usize;
    let group = match q.group.as_deref().unwrap_or("scope") {
        _ if !(1..=8).contains(&level) => None,
        "scope" => Some(RunGroup::Scope { level }),
        "model" => Some(RunGroup::Model),
        _ => None,
    };
    let Some(group) = group else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ERR",
            "group must be scope or model, and level from 1 to 8",
        ));
    };
    let query = RunQuery {
        group,
        scope: q.scope.clone(),
        from: whole_hours(number(&q.from, "from")?),
        to: whole_hours(number(&q.to, "to")?),
    };
    let (from, to) = (query.from, query.to);
    let cluster = whole_cluster(&ctx, &q.node)?;
    let mine = query.clone();
    let (summary, seq) = from_rollups(&ctx, move |r| r.runs(&mine)).await?;
    let (summary, cover) = match cluster {
        true => {
            let (mut parts, cover) = other_nodes(&ctx, seq, move |r| r.runs(&query)).await;
            parts.push(summary);
            (crate::state::run_report::merge(parts), cover)
        }
        false => (summary, serde_json::Value::Null),
    };
    let usd = crate::state::money::format_usd;
    // A group's figures (`total` has no key).
    let json = |key: Option<&str>, g: &RunStats| {
        let per = |p: Option<(u64, u64)>| match p {
            Some((cost, tokens)) => (serde_json::json!(usd(cost)), serde_json::json!(tokens)),
            None => (serde_json::Value::Null, serde_json::Value::Null),
        };
        let (cost_per_run, tokens_per_run) = per(g.per_run());
        let (cost_per_successful_run, tokens_per_successful_run) = per(g.per_successful_run());
        let (cost_per_success, tokens_per_success) = per(g.per_success());
        let mut o = serde_json::json!({
            "runs": g.runs, "succeeded": g.succeeded, "failed": g.failed,
            "unreported": g.unreported,
            "success_rate": g.success_rate_ppm().map(|p| p as f64 / 1e6),
            "calls": g.usage.calls, "tokens": g.usage.tokens, "cost": usd(g.usage.cost),
            "cost_per_run": cost_per_run, "tokens_per_run": tokens_per_run,
            "cost_per_successful_run": cost_per_successful_run,
            "tokens_per_successful_run": tokens_per_successful_run,
            "cost_per_success": cost_per_success, "tokens_per_success": tokens_per_success,
        });
        if let Some(k) = key {
            o["key"] = k.into();
        }
        o
    };
    let groups: Vec<serde_json::Value> = (summary.groups.iter())
        .map(|g| json(Some(&g.key), g))
        .collect();
    let total = json(None, &summary.total);
    let mut body = serde_json::json!({"groups": groups, "total": total, "open": summary.open, "from": from, "to": to, "seq": seq});
    if cluster {
        body["cluster"] = cover;
    }
    Ok(Json(body))
}

/// Burn-rate forecast of a scope's calendar limits: for each, the recent
/// rate (`recent` usage over the last `rate_window_ms`: 10 s of a minute,
/// 5 min of an hour, 2 h of a day, 12 h of a week, 2 days of a month), the
/// usage projected at the period's end at that rate, and when the limit runs
/// out at that rate (`exhausted_at`, null if not this period). Until a whole
/// rate window was watched, `projection` is `watching` with `ready_at`, and
/// nothing is projected (`projected`, `exhausted_at` null); then `ready`.
#[utoipa::path(get, path = "/v1/reports/forecast/{scope}", params(("scope" = String, Path, description = "a scope with limits")),
    security(("bearer" = [])),
    responses((status = 200, description = "the forecast", body = Object), (status = 404, description = "no limits on the scope", body = Object),
        (status = 422, description = "bad scope", body = Object)))]
pub async fn forecast(State(ctx): State<Ctx>, Path(scope): Path<String>) -> Reply {
    run(&ctx, Command::Forecast { scope }).await
}
