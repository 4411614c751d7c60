//! The HTTP API (`shared/API.md`): routes, request ids, authentication and errors.

pub mod auth;
mod connections;
pub mod error;
pub mod extract;
mod files;
mod functions;
mod governance;
mod records;
mod vaults;

use crate::connections::ConnectionService;
use crate::functions::FunctionService;
use crate::governance::Governance;
use crate::vault::VaultService;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use error::ApiError;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The current request's id (empty outside a request).
pub fn request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    pub vault: Arc<VaultService>,
    pub gov: Arc<Governance>,
    pub functions: Arc<FunctionService>,
    pub connections: Arc<ConnectionService>,
}

/// The whole router.
pub fn router(
    vault: VaultService,
    gov: Arc<Governance>,
    functions: Arc<FunctionService>,
    connections: Arc<ConnectionService>,
    max_body_bytes: usize,
) -> Router {
    let state = AppState {
        vault: Arc::new(vault),
        gov,
        functions,
        connections,
    };
    // Authentication inside the audit event, for the fallbacks.
    let guarded = (
        middleware::from_fn_with_state(state.clone(), auth::audited),
        middleware::from_fn_with_state(state.clone(), auth::authenticate),
    );
    let v1 = Router::new()
        .route("/vaults", post(vaults::create).get(vaults::list))
        .route("/vaults/{vault}", get(vaults::get).delete(vaults::delete))
        .route("/vaults/{vault}/tables", post(vaults::add_table))
        .route(
            "/vaults/{vault}/tables/{table}/columns",
            post(vaults::add_column),
        )
        // Records may carry files (base64 in JSON): these bodies may be larger.
        .route(
            "/vaults/{vault}/tables/{table}/records",
            post(records::insert).layer(DefaultBodyLimit::max(
                max_body_bytes.max(files::FILE_BODY_BYTES),
            )),
        )
        .route(
            "/vaults/{vault}/tables/{table}/records/lookup",
            post(records::lookup),
        )
        .route(
            "/vaults/{vault}/tables/{table}/records/{id}",
            // `layer` wraps the methods added before it: only the update takes large bodies.
            patch(records::update)
                .layer(DefaultBodyLimit::max(
                    max_body_bytes.max(files::FILE_BODY_BYTES),
                ))
                .get(records::read)
                .delete(records::delete),
        )
        .route("/vaults/{vault}/tokenize", post(records::tokenize))
        .route("/vaults/{vault}/detokenize", post(records::detokenize))
        .route("/vaults/{vault}/keys", get(vaults::keys))
        .route("/vaults/{vault}/keys/rotate", post(vaults::rotate_keys))
        .route("/admin/master-keys/rotate", post(vaults::rotate_master))
        .merge(governance::routes())
        .merge(files::routes())
        .merge(functions::routes())
        .merge(connections::routes())
        // Unknown `/v1` paths and methods are authenticated and audited like the rest: a
        // caller without a key gets 401, not a map of what exists. `route_layer` does not wrap
        // the router's fallback, so it carries the two layers itself; it does wrap each
        // route's own 405 fallback, which therefore carries none (or it would be audited twice).
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found.layer(guarded))
        .route_layer(middleware::from_fn(auth::path_names))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::audited));
    // Inbound calls authenticate with the connection's own key (or none, on public routes),
    // inside the gateway; they are audited like everything else.
    let inbound = connections::inbound_routes()
        .route_layer(middleware::from_fn(auth::path_names))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::audited));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .nest("/v1/inbound", inbound)
        .nest("/v1", v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(request_context))
        .with_state(state)
}

/// `GET /metrics` (no key: counts and durations only, see `crate::metrics`).
async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        crate::metrics::render(state.vault.pool().status()),
    )
        .into_response()
}

/// The OpenAPI document of this API (no key).
const OPENAPI: &str = include_str!("openapi.json");

/// `GET /openapi.json`.
async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let ready = async {
        let client = state.vault.pool().get().await.ok()?;
        client.query_one("SELECT 1", &[]).await.ok()
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), ready).await {
        Ok(Some(_)) => Ok(Json(json!({"status": "ready"}))),
        _ => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the database is not reachable",
        )),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method",
    )
}

/// Request ids (echoed when sane, else generated) and one log line per request: method, route
/// template, status and latency. Never the path as sent, bodies, query strings or headers.
async fn request_context(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string);
    let method = req.method().clone();
    // The path as sent is the caller's: a gateway or inbound path goes on to a third party and
    // may hold anything, and any path may hold a value by mistake. Only its route template
    // (the metrics label) is logged; the audit log names the vault, table and records.
    let unaudited = ["/healthz", "/readyz", "/metrics", "/openapi.json"]
        .into_iter()
        .find(|known| *known == req.uri().path());
    let started = Instant::now();
    let mut response = REQUEST_ID.scope(id.clone(), next.run(req)).await;
    let route = match response
        .extensions_mut()
        .remove::<crate::metrics::MatchedRoute>()
    {
        Some(m) => m.0,
        None => unaudited.unwrap_or(crate::metrics::UNMATCHED).to_string(),
    };
    let (status, took) = (response.status().as_u16(), started.elapsed());
    tracing::info!(
        request_id = %id,
        method = crate::metrics::method_label(&method),
        route = %route,
        status,
        // Rounded to the microsecond: a raw f64 prints up to 17 digits (12.219099999999999),
        // noise that can even spell out a 9-digit value the vault holds.
        ms = (took.as_secs_f64() * 1e6).round() / 1e3,
        "request"
    );
    crate::metrics::request(&method, route, status, took);
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// `StatusCode` with a JSON body, for handlers.
pub(crate) fn created<T: serde::Serialize>(body: T) -> Response {
    (StatusCode::CREATED, Json(body)).into_response()
}
