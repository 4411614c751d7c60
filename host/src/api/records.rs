//! Records, look-up, tokenize and detokenize.

use super::auth::{Action, Principal, authorize};
use super::error::ApiError;
use super::extract::{Json, QueryParams};
use super::{AppState, created};
use crate::vault::Redaction;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordIn {
    fields: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InsertBody {
    records: Vec<RecordIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupBody {
    column: String,
    values: Vec<Value>,
    #[serde(default)]
    redaction: Option<String>,
    #[serde(default)]
    columns: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeBody {
    table: String,
    column: String,
    values: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeBody {
    tokens: Vec<String>,
    #[serde(default)]
    redaction: Option<String>,
}

fn redaction(level: Option<&str>) -> Result<Redaction, ApiError> {
    match level {
        None => Ok(Redaction::Default),
        Some(text) => Redaction::parse(text).ok_or_else(|| {
            ApiError::invalid("`redaction` must be one of plain, masked, redacted, default")
        }),
    }
}

pub async fn insert(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((vault, table)): Path<(String, String)>,
    Json(body): Json<InsertBody>,
) -> Result<Response, ApiError> {
    authorize(&p, Action::InsertRecords, Some(&vault))?;
    let records = body.records.into_iter().map(|r| r.fields).collect();
    let inserted = s.vault.insert_records(&vault, &table, records).await?;
    Ok(created(json!({"records": inserted})))
}

pub async fn read(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((vault, table, id)): Path<(String, String, String)>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    authorize(&p, Action::ReadRecord, Some(&vault))?;
    let q = query.only(&["redaction", "columns"])?;
    let level = redaction(q.get("redaction").map(String::as_str))?;
    let columns = q.get("columns").map(|c| {
        c.split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    });
    let view = s
        .vault
        .read_record(&vault, &table, &id, level, columns)
        .await?;
    Ok(axum::Json(view).into_response())
}

pub async fn lookup(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((vault, table)): Path<(String, String)>,
    Json(body): Json<LookupBody>,
) -> Result<Response, ApiError> {
    authorize(&p, Action::LookupRecords, Some(&vault))?;
    let level = redaction(body.redaction.as_deref())?;
    let records = s
        .vault
        .lookup(
            &vault,
            &table,
            &body.column,
            &body.values,
            level,
            body.columns,
        )
        .await?;
    Ok(axum::Json(json!({"records": records})).into_response())
}

pub async fn update(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((vault, table, id)): Path<(String, String, String)>,
    Json(body): Json<RecordIn>,
) -> Result<Response, ApiError> {
    authorize(&p, Action::UpdateRecord, Some(&vault))?;
    let updated = s
        .vault
        .update_record(&vault, &table, &id, body.fields)
        .await?;
    Ok(axum::Json(updated).into_response())
}

pub async fn delete(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((vault, table, id)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    authorize(&p, Action::DeleteRecord, Some(&vault))?;
    s.vault.delete_record(&vault, &table, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn tokenize(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(vault): Path<String>,
    Json(body): Json<TokenizeBody>,
) -> Result<Response, ApiError> {
    authorize(&p, Action::Tokenize, Some(&vault))?;
    let tokens = s
        .vault
        .tokenize(&vault, &body.table, &body.column, body.values)
        .await?;
    Ok(axum::Json(json!({"tokens": tokens})).into_response())
}

pub async fn detokenize(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(vault): Path<String>,
    Json(body): Json<DetokenizeBody>,
) -> Result<Response, ApiError> {
    authorize(&p, Action::Detokenize, Some(&vault))?;
    let level = redaction(body.redaction.as_deref())?;
    let results = s.vault.detokenize(&vault, body.tokens, level).await?;
    Ok(axum::Json(json!({"results": results})).into_response())
}
