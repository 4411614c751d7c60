//! Functions: upload (multipart), versions, activation, deletion and test runs.

use super::AppState;
use super::auth::{Action, Principal, authorize};
use super::created;
use super::error::ApiError;
use super::extract::{Form, Json, multipart_error};
use crate::functions::sandbox::Hook;
use crate::functions::{FunctionsError, Manifest, MessageView};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use serde::Deserialize;
use serde_json::json;

/// The function routes (under `/v1`), with a body limit that fits a component.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/functions", post(upload).get(list))
        .route("/functions/{name}", axum::routing::get(get).delete(delete))
        .route("/functions/{name}/versions", post(upload_version))
        .route("/functions/{name}/activate", post(activate))
        .route("/functions/{name}/invoke", post(invoke))
        .layer(DefaultBodyLimit::max(
            crate::functions::MAX_COMPONENT_BYTES + (1 << 20),
        ))
}

impl From<FunctionsError> for ApiError {
    fn from(e: FunctionsError) -> Self {
        match e {
            FunctionsError::Invalid(m) => ApiError::invalid(m),
            FunctionsError::NotFound(what) => ApiError::not_found(&what),
            FunctionsError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            FunctionsError::Db(e) => crate::vault::VaultError::Db(e).into(),
            e @ FunctionsError::Unavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
            FunctionsError::Internal(m) => {
                tracing::error!(request_id = %super::request_id(), error = %m, "function request failed");
                ApiError::internal()
            }
        }
    }
}

/// Reads the `manifest` (JSON) and `component` (bytes) parts.
async fn parts(Form(mut form): Form) -> Result<(Manifest, Vec<u8>), ApiError> {
    let (mut manifest, mut component) = (None, None);
    loop {
        let field = form
            .next_field()
            .await
            .map_err(|e| multipart_error(&e, "the multipart/form-data body"))?;
        let Some(field) = field else { break };
        match field.name() {
            Some("manifest") => {
                let bytes = field
                    .bytes()
                    .await
                    .map_err(|e| multipart_error(&e, "the `manifest` part"))?;
                manifest = Some(super::extract::parse_json::<Manifest>(&bytes)?);
            }
            Some("component") => {
                let bytes = field
                    .bytes()
                    .await
                    .map_err(|e| multipart_error(&e, "the `component` part"))?;
                component = Some(bytes.to_vec());
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "unexpected part `{}`: send `manifest` and `component`",
                    other.unwrap_or("")
                )));
            }
        }
    }
    match (manifest, component) {
        (Some(m), Some(c)) => Ok((m, c)),
        _ => Err(ApiError::invalid(
            "send a `manifest` part (JSON) and a `component` part (application/wasm)",
        )),
    }
}

async fn upload(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    form: Form,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ManageFunctions, None)?;
    let (manifest, bytes) = parts(form).await?;
    let view = s.functions.upload(manifest, bytes, None).await?;
    Ok(created(view))
}

async fn upload_version(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    form: Form,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ManageFunctions, None)?;
    let (manifest, bytes) = parts(form).await?;
    let view = s.functions.upload(manifest, bytes, Some(&name)).await?;
    Ok(created(view))
}

async fn list(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ManageFunctions, None)?;
    Ok(axum::Json(json!({"functions": s.functions.list(None).await?})).into_response())
}

async fn get(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ManageFunctions, None)?;
    let mut list = s.functions.list(Some(&name)).await?;
    Ok(axum::Json(list.pop().unwrap_or_default()).into_response())
}

async fn delete(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorize(&s, &p, Action::ManageFunctions, None)?;
    s.functions.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivateBody {
    version: String,
}

async fn activate(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    Json(body): Json<ActivateBody>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ManageFunctions, None)?;
    s.functions.activate(&name, &body.version).await?;
    Ok(axum::Json(json!({"name": name, "active_version": body.version})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvokeBody {
    /// `request` (default) or `response`.
    #[serde(default)]
    hook: Option<String>,
    message: MessageView,
}

async fn invoke(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    Json(body): Json<InvokeBody>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::InvokeFunction, None)?;
    let hook = match body.hook.as_deref() {
        None | Some("request") => Hook::Request,
        Some("response") => Hook::Response,
        Some(_) => return Err(ApiError::invalid("`hook` must be `request` or `response`")),
    };
    let message = body.message.into_message().map_err(ApiError::invalid)?;
    let result = s
        .functions
        .invoke(&name, hook, message, &p.caller, &p.purpose)
        .await?;
    Ok(axum::Json(result).into_response())
}
