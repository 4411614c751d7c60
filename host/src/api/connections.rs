//! Connections, secrets, and the gateway: `/v1/connections`, `/v1/secrets`,
//! `/v1/gateway/{connection}/{path…}` (service accounts) and `/v1/inbound/{connection}/{path…}`
//! (the connection's own key, or public).

use super::AppState;
use super::auth::{Action, Principal, authorize, authorize_call};
use super::created;
use super::error::ApiError;
use super::extract::Json;
use crate::connections::ConnError;
use crate::connections::config::ConnectionConfig;
use crate::connections::gateway::{Admitted, CallRequest, CallResponse};
use axum::extract::{ConnectInfo, DefaultBodyLimit, OriginalUri, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use axum::{Extension, Router};
use serde::Deserialize;
use std::net::SocketAddr;

/// The most any connection may carry in one body (a connection sets its own, lower, limit).
const MAX_GATEWAY_BODY: usize = 32 << 20;

impl From<ConnError> for ApiError {
    fn from(e: ConnError) -> Self {
        match e {
            ConnError::Vault(e) => e.into(),
            ConnError::Upstream {
                status,
                code,
                message,
            } => ApiError::new(status, code, message),
            ConnError::Internal(m) => {
                tracing::error!(request_id = %super::request_id(), error = %m, "connection request failed");
                ApiError::internal()
            }
        }
    }
}

/// Configuration and secrets (service accounts, under `/v1`), and the outbound gateway.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/connections", post(create).get(list))
        .route(
            "/connections/{name}",
            get(get_one).put(update).delete(delete),
        )
        .route("/connections/{name}/activate", post(activate))
        .route("/connections/{name}/keys", post(add_key))
        .route(
            "/connections/{name}/keys/{key_id}",
            axum::routing::delete(revoke_key),
        )
        .route("/secrets", get(list_secrets))
        .route("/secrets/{name}", put(put_secret).delete(delete_secret))
        .route(
            "/gateway/{connection}",
            any(gateway).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/gateway/{connection}/{*path}",
            any(gateway).layer(DefaultBodyLimit::disable()),
        )
}

/// The inbound gateway (authenticated by the connection itself, not as a service account).
pub fn inbound_routes() -> Router<AppState> {
    Router::new()
        .route("/{connection}", any(inbound))
        .route("/{connection}/{*path}", any(inbound))
        .layer(DefaultBodyLimit::disable())
}

async fn create(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Json(body): Json<ConnectionConfig>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ManageConnections, None)?;
    note_connection(&body.name);
    Ok(created(s.connections.create(body).await?))
}

async fn list(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ManageConnections, None)?;
    Ok(axum::Json(s.connections.list().await?).into_response())
}

async fn get_one(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ManageConnections, None)?;
    Ok(axum::Json(s.connections.get(&name).await?).into_response())
}

async fn update(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    Json(body): Json<ConnectionConfig>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ManageConnections, None)?;
    note_connection(&name);
    Ok(axum::Json(s.connections.update(&name, body).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivateBody {
    version: i32,
}

async fn activate(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    Json(body): Json<ActivateBody>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ManageConnections, None)?;
    note_connection(&name);
    Ok(axum::Json(s.connections.activate(&name, body.version).await?).into_response())
}

async fn delete(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorize(&s, &p, Action::ManageConnections, None)?;
    note_connection(&name);
    s.connections.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn add_key(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ManageConnections, None)?;
    note_connection(&name);
    Ok(created(s.connections.add_key(&name).await?))
}

async fn revoke_key(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((name, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    authorize(&s, &p, Action::ManageConnections, None)?;
    note_connection(&name);
    s.connections.revoke_key(&name, &key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretBody {
    value: String,
}

async fn put_secret(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    Json(body): Json<SecretBody>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ManageSecrets, None)?;
    let value = zeroize::Zeroizing::new(body.value);
    Ok(axum::Json(s.connections.put_secret(&name, &value).await?).into_response())
}

async fn list_secrets(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ManageSecrets, None)?;
    Ok(axum::Json(s.connections.list_secrets().await?).into_response())
}

async fn delete_secret(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorize(&s, &p, Action::ManageSecrets, None)?;
    s.connections.delete_secret(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn note_connection(name: &str) {
    crate::governance::audit::note(|e| e.connection = Some(name.to_string()));
}

/// The path after `{prefix}{connection}`, raw (still percent-encoded), starting with `/`.
fn raw_path(prefix: &str, connection: &str, uri: &axum::http::Uri) -> Result<String, ApiError> {
    let rest = uri
        .path()
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix(connection))
        .ok_or_else(|| ApiError::invalid("the connection name must be written as is"))?;
    Ok(if rest.is_empty() { "/" } else { rest }.to_string())
}

/// The request as the gateway takes it, its body read only now that the call was admitted,
/// and no further than the connection's `max_body_bytes`: a `Content-Length` over it is
/// refused before a byte is read.
async fn call_request(
    raw_path: String,
    uri: &axum::http::Uri,
    (parts, body): (axum::http::request::Parts, axum::body::Body),
    admitted: &Admitted,
) -> Result<CallRequest, ApiError> {
    let limit = admitted.max_body_bytes().min(MAX_GATEWAY_BODY);
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is larger than the connection's max_body_bytes",
        )
    };
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let body = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if over_limit(&e) {
            too_large()
        } else {
            ApiError::invalid("the request body could not be read")
        }
    })?;
    Ok(CallRequest {
        method: parts.method,
        raw_path,
        raw_query: uri.query().map(str::to_string),
        headers: parts.headers,
        // Without a copy when the buffer is not shared.
        body: body.into(),
    })
}

/// Whether reading a body failed because it passed the limit: `to_bytes` fails either so or
/// with the connection's own error (a broken chunked encoding, a client that went away), which
/// is hyper's.
fn over_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<hyper::Error>() {
            return false;
        }
        source = s.source();
    }
    true
}

/// The `{connection}` segment of the gateway routes (the `{*path}` tail is read raw instead).
fn connection_param(params: Vec<(String, String)>) -> String {
    params
        .into_iter()
        .find(|(k, _)| k == "connection")
        .map(|(_, v)| v)
        .unwrap_or_default()
}

fn respond(r: CallResponse) -> Response {
    let mut response = (r.status, r.body).into_response();
    // `into_response` set a content type for bytes; the upstream's headers replace it.
    response
        .headers_mut()
        .remove(axum::http::header::CONTENT_TYPE);
    for (name, value) in r.headers.iter() {
        response.headers_mut().append(name.clone(), value.clone());
    }
    response
}

/// `ANY /v1/gateway/{connection}/{path…}`.
async fn gateway(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    OriginalUri(uri): OriginalUri,
    Path(params): Path<Vec<(String, String)>>,
    req: Request,
) -> Result<Response, ApiError> {
    let connection = connection_param(params);
    note_connection(&connection);
    authorize_call(&s, &p, &connection)?;
    let path = raw_path("/v1/gateway/", &connection, &uri)?;
    let (parts, body) = req.into_parts();
    let admitted = s
        .connections
        .admit_outbound(&connection, &parts.method, &path)
        .await?;
    let call = call_request(path, &uri, (parts, body), &admitted).await?;
    let response = s
        .connections
        .call_outbound(admitted, &p.purpose, call)
        .await?;
    Ok(respond(response))
}

/// `ANY /v1/inbound/{connection}/{path…}`.
async fn inbound(
    State(s): State<AppState>,
    OriginalUri(uri): OriginalUri,
    Path(params): Path<Vec<(String, String)>>,
    req: Request,
) -> Result<Response, ApiError> {
    let connection = connection_param(params);
    note_connection(&connection);
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(std::net::IpAddr::from([127, 0, 0, 1]), |c| c.0.ip());
    let client = s.connections.client(peer, req.headers());
    let path = raw_path("/v1/inbound/", &connection, &uri)?;
    let (parts, body) = req.into_parts();
    let admitted = s
        .connections
        .admit_inbound(&connection, client, &parts.method, &path, &parts.headers)
        .await?;
    let call = call_request(path, &uri, (parts, body), &admitted).await?;
    let response = s.connections.call_inbound(admitted, client, call).await?;
    Ok(respond(response))
}
