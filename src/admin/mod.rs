//! The HTTP admin API (axum) on its own port: JSON under `/v1`, health
//! checks, Prometheus `/metrics`, and the OpenAPI document generated from
//! the handlers (utoipa) at `/v1/openapi.json`.
//!
//! Every route translates to the same engine commands the Redis side runs
//! (no rules here); replies are the engine's `Value`s turned into JSON, and
//! engine errors become `{"error": {"code", "message"}}` with an HTTP status
//! (`ErrorCode::http_status`). Request bodies are parsed here so that malformed JSON is a
//! 400 and unknown fields or wrong types a 422, never a 500.

mod alerts;
mod metrics;
mod routes;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;
use utoipa::OpenApi;

use crate::engine::EngineHandle;
use crate::state::money::format_signed_usd;
use crate::state::{Command, ErrorCode, Value};
use crate::store::cache::Cache;

/// What every request shares.
pub struct AdminCtx {
    pub engine: EngineHandle,
    pub cache: Arc<Cache>,
    /// Bearer token required on everything but the health checks (None: no
    /// check; only allowed on a loopback address, like the Redis port).
    pub token: Option<String>,
    /// The Redis side's users (`--requirepass`, `--users`): they may use the
    /// API with HTTP Basic auth, within their rights (see `require_token`).
    pub auth: Arc<crate::auth::Auth>,
    /// The ledger, read-only (ledger pages).
    pub ledger: Arc<crate::store::reader::LedgerReader>,
    /// The reports' rollups (`/v1/reports/spend`, `/v1/reports/runs`).
    pub rollups: Arc<crate::store::rollups::Rollups>,
    /// Cluster mode's agent (None on a single node).
    pub cluster: Option<Arc<crate::node::ClusterNode>>,
    /// The archive's shipper (`--archive`; None: not shipped).
    pub archive: Option<Arc<crate::store::archive::Shipper>>,
    /// Cluster mode with `--archive`: the other nodes' books, read from
    /// the archive for the cluster's reports.
    pub books: Option<Arc<crate::store::archive::ArchiveBooks>>,
}

pub type Ctx = Arc<AdminCtx>;

/// An API error: an HTTP status and a JSON body with a code and message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl ApiError {
    /// A refusal of the engine (or the cache), with the status its code
    /// maps to (`ErrorCode::http_status`).
    pub fn refused(code: ErrorCode, message: impl Into<String>) -> ApiError {
        let status =
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, code.as_str(), message)
    }
}

/// An engine reply as JSON: maps become objects (fields in order), money a
/// decimal USD string, as on the Redis side.
pub fn json_of(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Ok => serde_json::json!({"ok": true}),
        Value::Status(s) => J::String((*s).into()),
        Value::Null => J::Null,
        Value::Int(n) => J::from(*n),
        Value::Bool(b) => J::Bool(*b),
        Value::Str(s) => J::String(s.clone()),
        Value::Bulk(b) => J::String(String::from_utf8_lossy(b).into_owned()),
        Value::Money(n) => J::String(format_signed_usd(*n)),
        Value::Array(items) => J::Array(items.iter().map(json_of).collect()),
        Value::Map(fields) => J::Object(
            fields
                .iter()
                .map(|(k, v)| (k.to_string(), json_of(v)))
                .collect(),
        ),
        Value::Error { code, msg } => {
            serde_json::json!({"error": {"code": code.as_str(), "message": msg}})
        }
    }
}

pub use crate::store::format::ledger::entry_json;

/// Runs one command on the engine and answers with its reply as JSON.
pub async fn run(ctx: &AdminCtx, cmd: Command) -> Result<Json<serde_json::Value>, ApiError> {
    let v = ctx.engine.execute(vec![cmd]).await.remove(0);
    match &v {
        Value::Error { code, msg } => Err(ApiError::refused(*code, msg.clone())),
        _ => Ok(Json(json_of(&v))),
    }
}

/// A JSON body: malformed → 400, unknown fields / wrong types / bad values →
/// 422 (the `deny_unknown_fields` request types make unknown fields errors).
pub fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => ApiError::new(
                StatusCode::BAD_REQUEST,
                "BADJSON",
                format!("malformed JSON: {e}"),
            ),
            Category::Data => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "ERR", e.to_string()),
        }
    })
}

/// Who may call the protected routes:
/// - `Authorization: Bearer <--admin-token>`: everything;
/// - `Authorization: Basic <user:password>` of a user of the Redis side
///   (`default` with `--requirepass`, or one from `--users`): GETs need a
///   read right (`budget.get`, in @read and @admin); a PUT or DELETE of a
///   budget or price needs that command (`budget.set`, `budget.del`,
///   `price.set`), anything else @admin. Users limited to some scopes are
///   refused: the reports and the ledger are not filtered per user, so the
///   Redis port is theirs;
/// - with neither a token nor users configured (loopback only), no check.
async fn require_token(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    if ctx.token.is_none() && !ctx.auth.required() {
        return next.run(req).await;
    }
    let header_value = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if let (Some(want), Some(given)) = (&ctx.token, header_value.strip_prefix("Bearer ")) {
        if bool::from(given.as_bytes().ct_eq(want.as_bytes())) {
            return next.run(req).await;
        }
    }
    if let Some(grant) = header_value
        .strip_prefix("Basic ")
        .and_then(|b| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|raw| {
            let colon = raw.iter().position(|&c| c == b':')?;
            ctx.auth.check(Some(&raw[..colon]), &raw[colon + 1..])
        })
    {
        let needed = needed_right(req.method(), req.uri().path());
        let allowed = match &grant {
            None => true,
            Some(u) => u.access.is_none() && u.may_run(needed),
        };
        if allowed {
            return next.run(req).await;
        }
        let who = grant.as_ref().map_or("default", |u| u.name.as_str());
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "NOPERM",
            format!(
                "user {who} may not {} {} (needs '{needed}' and no scope restriction)",
                req.method(),
                req.uri().path()
            ),
        )
        .into_response();
    }
    let mut r = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "NOAUTH",
        "credentials are required: Authorization: Bearer <--admin-token>, or Basic <user:password>",
    )
    .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        "Bearer, Basic realm=\"spendb\""
            .parse()
            .expect("valid header"),
    );
    r
}

/// The command a user must be allowed to run for a request (see
/// `require_token`): a row of the command table (`state::commands`), or
/// `admin`, which only @admin (`*`) grants.
fn needed_right(method: &axum::http::Method, path: &str) -> &'static str {
    use axum::http::Method;
    let row = |name: &str| {
        crate::state::commands::spec(name)
            .expect("an admin right is a command of the table")
            .name
    };
    match *method {
        Method::GET | Method::HEAD => row("budget.get"),
        Method::PUT if path.starts_with("/v1/budgets/") => row("budget.set"),
        Method::DELETE if path.starts_with("/v1/budgets/") => row("budget.del"),
        Method::PUT if path.starts_with("/v1/prices/") => row("price.set"),
        _ => "admin",
    }
}

#[cfg(test)]
mod rights_tests {
    use super::needed_right;
    use axum::http::Method;

    #[test]
    fn every_right_is_a_command_of_the_table_or_admin() {
        assert_eq!(needed_right(&Method::GET, "/v1/holds"), "budget.get");
        assert_eq!(
            needed_right(&Method::PUT, "/v1/budgets/org:a"),
            "budget.set"
        );
        assert_eq!(
            needed_right(&Method::DELETE, "/v1/budgets/org:a"),
            "budget.del"
        );
        assert_eq!(needed_right(&Method::PUT, "/v1/prices/m"), "price.set");
        assert_eq!(
            needed_right(&Method::PUT, "/v1/alerts/rules/org:a"),
            "admin"
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "spendb admin API",
        description = "Budgets, balances, holds, prices and the response cache of a spendb server. Every route runs the same engine commands as the Redis protocol (docs/PROTOCOL.md).",
        version = "1"
    ),
    paths(
        routes::healthz,
        routes::readyz,
        routes::list_budgets,
        routes::get_budget,
        routes::put_budget,
        routes::delete_budget,
        routes::get_balance,
        routes::list_holds,
        routes::ledger,
        routes::spend_report,
        routes::runs_report,
        routes::forecast,
        routes::get_hold,
        routes::list_prices,
        routes::put_price,
        routes::cache_stats,
        routes::cluster,
        routes::archive,
        alerts::list_alerts,
        alerts::list_rules,
        alerts::put_rules,
        alerts::delete_rules,
        metrics::metrics,
    ),
    components(schemas(routes::BudgetBody, routes::LimitBody, routes::PriceBody, alerts::RulesBody, alerts::SpikeBody, alerts::RunawayBody)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        // Every protected operation can answer 401 (no or wrong token).
        let unauthorized = utoipa::openapi::ResponseBuilder::new()
            .description("no bearer token, or a wrong one (JSON error NOAUTH)")
            .build();
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    op.responses
                        .responses
                        .insert("401".into(), unauthorized.clone().into());
                }
            }
        }
    }
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The dashboard: one page embedded in the binary (no CDN, no build step);
/// its script reads the `/v1` API (asking for the token if one is set).
async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("dashboard.html"))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NOTFOUND", "no such route")
}

/// The admin router.
pub fn router(ctx: Ctx) -> Router {
    let protected = routes::routes()
        .merge(alerts::routes())
        .route("/metrics", get(metrics::metrics))
        .route("/v1/openapi.json", get(openapi))
        .layer(middleware::from_fn_with_state(ctx.clone(), require_token));
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .merge(protected)
        .fallback(not_found)
        .with_state(ctx)
}

/// Serves the admin API until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, ctx: Ctx) {
    if let Err(e) = axum::serve(listener, router(ctx)).await {
        tracing::error!("admin API stopped: {e}");
    }
}
