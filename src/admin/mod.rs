//! The HTTP admin API (axum) on its own port: JSON under `/v1`, health
//! checks, Prometheus `/metrics`, and the OpenAPI document generated from
//! the handlers (utoipa) at `/v1/openapi.json`.
//!
//! Every route translates to the same engine commands the Redis side runs
//! (no rules here); replies are the engine's `Value`s turned into JSON, and
//! engine errors become `{"error": {"code", "message"}}` with an HTTP status
//! (`status_of`). Request bodies are parsed here so that malformed JSON is a
//! 400 and unknown fields or wrong types a 422, never a 500.

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
use crate::state::{Command, Value};
use crate::store::cache::Cache;

/// What every request shares.
pub struct AdminCtx {
    pub engine: EngineHandle,
    pub cache: Arc<Cache>,
    /// Bearer token required on everything but the health checks (None: no
    /// check; only allowed on a loopback address, like the Redis port).
    pub token: Option<String>,
    /// The data dir (the ledger pages are read from its segments).
    pub data_dir: std::path::PathBuf,
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

/// The HTTP status for an engine error code.
pub fn status_of(code: &str) -> StatusCode {
    match code {
        "UNKNOWN" => StatusCode::NOT_FOUND,
        "EXISTS" | "STATE" => StatusCode::CONFLICT,
        "NOPERM" => StatusCode::FORBIDDEN,
        "NOPRICE" | "ERR" => StatusCode::UNPROCESSABLE_ENTITY,
        "TOOBIG" => StatusCode::PAYLOAD_TOO_LARGE,
        "IOERR" | "SHUTDOWN" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
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
        Value::Error { code, msg } => serde_json::json!({"error": {"code": code, "message": msg}}),
    }
}

/// Runs one command on the engine and answers with its reply as JSON.
pub async fn run(ctx: &AdminCtx, cmd: Command) -> Result<Json<serde_json::Value>, ApiError> {
    let v = ctx.engine.execute(vec![cmd]).await.remove(0);
    match &v {
        Value::Error { code, msg } => Err(ApiError::new(status_of(code), code, msg.clone())),
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

async fn require_token(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let Some(want) = &ctx.token else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(want.as_bytes())) {
        next.run(req).await
    } else {
        let mut r = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "NOAUTH",
            "a bearer token is required (Authorization: Bearer <--admin-token>)",
        )
        .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer".parse().expect("valid header"),
        );
        r
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
        routes::forecast,
        routes::get_hold,
        routes::list_prices,
        routes::put_price,
        routes::cache_stats,
        metrics::metrics,
    ),
    components(schemas(routes::BudgetBody, routes::LimitBody, routes::PriceBody)),
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
