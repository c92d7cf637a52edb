//! `/v1/alerts`: the alerts fired, and each scope's alert rules. The rules'
//! JSON is checked here for shape; their values are checked by the state
//! machine (`AlertRules::validate`), like every other rule.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::routes::{number, page_limit, query, QueryResult, Reply};
use super::{body, run, ApiError, Ctx};
use crate::state::alerts::{AlertRules, RunawayRule, SpikeRule};
use crate::state::limit::{parse_duration_ms, Dim};
use crate::state::money::parse_usd;
use crate::state::Command;

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/v1/alerts", get(list_alerts))
        .route("/v1/alerts/rules", get(list_rules))
        .route(
            "/v1/alerts/rules/{*scope}",
            axum::routing::put(put_rules).delete(delete_rules),
        )
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AlertsQuery {
    /// Only alerts with a larger id (ids are ledger positions).
    #[param(value_type = Option<u64>, nullable = false, minimum = 0)]
    after: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[param(value_type = Option<u32>, nullable = false, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Only alerts at or below this scope.
    scope: Option<String>,
    /// `true`: only alerts not delivered to a webhook yet.
    #[param(value_type = Option<bool>, nullable = false)]
    undelivered: Option<String>,
}

fn flag(v: &Option<String>, what: &str) -> Result<bool, ApiError> {
    match v.as_deref() {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(s) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "BADQUERY",
            format!("{what} '{s}' is not true or false"),
        )),
    }
}

/// Fired alerts, oldest first (the newest 1000 are kept): each with its
/// rule, what was observed against what bound, and when it was delivered.
#[utoipa::path(get, path = "/v1/alerts", params(AlertsQuery), security(("bearer" = [])),
    responses((status = 200, description = "alerts", body = Object), (status = 400, description = "bad query", body = Object),
        (status = 422, description = "limit out of range", body = Object)))]
pub async fn list_alerts(State(ctx): State<Ctx>, q: QueryResult<AlertsQuery>) -> Reply {
    let q = query(q)?;
    let cmd = Command::AlertList {
        after: number(&q.after, "after")?.unwrap_or(0),
        limit: page_limit(&q.limit, 1000)?,
        undelivered: flag(&q.undelivered, "undelivered")?,
        prefix: q.scope,
    };
    let Json(v) = run(&ctx, cmd).await?;
    Ok(Json(serde_json::json!({"alerts": v})))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RulesQuery {
    /// Only scopes at or below this one.
    prefix: Option<String>,
}

/// Every scope's alert rules.
#[utoipa::path(get, path = "/v1/alerts/rules", params(RulesQuery), security(("bearer" = [])),
    responses((status = 200, description = "rules per scope", body = Object), (status = 400, description = "bad query", body = Object),
        (status = 422, description = "a scope longer than 256 bytes", body = Object)))]
pub async fn list_rules(State(ctx): State<Ctx>, q: QueryResult<RulesQuery>) -> Reply {
    let q = query(q)?;
    let Json(v) = run(&ctx, Command::AlertRulesList { prefix: q.prefix }).await?;
    Ok(Json(serde_json::json!({"rules": v})))
}

/// Usage of `dim` in the last `window` above `factor` × its average per
/// window over the hour before (and at least `min`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpikeBody {
    /// tokens, input, output, requests or cost
    dim: String,
    #[schema(minimum = 2, maximum = 1000000)]
    factor: u32,
    /// Whole minutes, 1m to 30m (e.g. "5m").
    window: String,
    /// The least usage in the window that counts (USD for cost), default 0.
    #[schema(value_type = Option<String>)]
    min: Option<serde_json::Value>,
}

/// At least `events` loop-guard denials or overrun commits within `window`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunawayBody {
    #[schema(minimum = 1, maximum = 10000)]
    events: u32,
    /// e.g. "10m", up to 24h.
    window: String,
}

/// A scope's alert rules, replacing any before. At least one rule.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RulesBody {
    /// Percentages of each calendar or total limit, e.g. [50, 80, 90, 100].
    #[serde(default)]
    thresholds: Vec<u32>,
    /// Alert when a calendar limit is projected to run out this period.
    #[serde(default)]
    forecast: bool,
    spike: Option<SpikeBody>,
    runaway: Option<RunawayBody>,
    /// Where to POST this scope's alerts (default: the server's --alert-webhook).
    webhook: Option<String>,
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "ERR", msg)
}

fn duration(s: &str, what: &str) -> Result<u64, ApiError> {
    parse_duration_ms(s).map_err(|e| invalid(format!("{what}: {e}")))
}

impl RulesBody {
    fn rules(self) -> Result<AlertRules, ApiError> {
        let spike = match self.spike {
            None => None,
            Some(s) => {
                let dim = Dim::parse(&s.dim).ok_or_else(|| {
                    invalid("spike dim must be tokens, input, output, requests or cost")
                })?;
                let min = match &s.min {
                    None => 0,
                    Some(serde_json::Value::String(t)) if dim == Dim::Cost => {
                        parse_usd(t).map_err(invalid)?
                    }
                    Some(serde_json::Value::Number(n)) if dim == Dim::Cost => {
                        parse_usd(&n.to_string()).map_err(invalid)?
                    }
                    Some(serde_json::Value::Number(n)) => n
                        .as_u64()
                        .ok_or_else(|| invalid("spike min must be a whole number"))?,
                    Some(serde_json::Value::String(t)) => t
                        .parse()
                        .map_err(|_| invalid("spike min must be a whole number"))?,
                    Some(_) => return Err(invalid("spike min must be a number or a string")),
                };
                Some(SpikeRule {
                    dim,
                    factor: s.factor,
                    window_ms: duration(&s.window, "spike window")?,
                    min,
                })
            }
        };
        let runaway = match self.runaway {
            None => None,
            Some(r) => Some(RunawayRule {
                events: r.events,
                window_ms: duration(&r.window, "runaway window")?,
            }),
        };
        Ok(AlertRules {
            thresholds: self.thresholds,
            forecast: self.forecast,
            spike,
            runaway,
            webhook: self.webhook,
        })
    }
}

/// Sets a scope's alert rules (replacing its rules; what already fired this
/// period stays fired). Usage already past a threshold fires at once.
#[utoipa::path(put, path = "/v1/alerts/rules/{scope}", params(("scope" = String, Path, description = "e.g. org:acme")),
    request_body = RulesBody, security(("bearer" = [])),
    responses((status = 200, description = "the rules as stored", body = Object), (status = 400, description = "malformed JSON", body = Object),
        (status = 422, description = "invalid rules", body = Object)))]
pub async fn put_rules(State(ctx): State<Ctx>, Path(scope): Path<String>, raw: Bytes) -> Reply {
    let b: RulesBody = body(&raw)?;
    let rules = Some(b.rules()?);
    run(&ctx, Command::AlertRulesSet { scope, rules }).await
}

/// Removes a scope's alert rules.
#[utoipa::path(delete, path = "/v1/alerts/rules/{scope}", params(("scope" = String, Path, description = "e.g. org:acme")),
    security(("bearer" = [])),
    responses((status = 200, description = "removed", body = Object), (status = 404, description = "no rules on the scope", body = Object),
        (status = 422, description = "bad scope", body = Object)))]
pub async fn delete_rules(State(ctx): State<Ctx>, Path(scope): Path<String>) -> Reply {
    run(&ctx, Command::AlertRulesSet { scope, rules: None }).await
}
