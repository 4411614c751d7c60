//! Vaults, schemas and keys.

use super::auth::{Action, Principal, authorize};
use super::error::ApiError;
use super::extract::Json;
use super::{AppState, created};
use crate::governance::Target;
use crate::vault::{NewColumn, NewTable, NewVault};
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

pub async fn create(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Json(new): Json<NewVault>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::CreateVault, Some(&new.name))?;
    Ok(created(s.vault.create_vault(new).await?))
}

/// `GET /v1/vaults`: every vault's name and creation time (`list_vaults`), and the schema
/// (`tables`) only of the vaults the caller may `read_vault`: listing names is what
/// `list_vaults` grants, and a schema is what `GET /v1/vaults/{vault}` guards. The audit
/// decision is `partial` when some schemas were left out.
pub async fn list(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ListVaults, None)?;
    let vaults: Vec<serde_json::Value> = s
        .vault
        .list_vaults()
        .await?
        .into_iter()
        .map(|v| {
            let readable = s
                .gov
                .decide_admin(
                    &p.caller,
                    Action::ReadVault.name(),
                    Target::Vault(&v.name),
                    &p.purpose,
                )
                .allowed;
            if readable {
                serde_json::to_value(&v).unwrap_or_default()
            } else {
                json!({"name": v.name, "created_at": v.created_at})
            }
        })
        .collect();
    Ok(axum::Json(json!({ "vaults": vaults })).into_response())
}

pub async fn get(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(vault): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ReadVault, Some(&vault))?;
    Ok(axum::Json(s.vault.get_vault(&vault).await?).into_response())
}

pub async fn delete(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(vault): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorize(&s, &p, Action::DeleteVault, Some(&vault))?;
    s.vault.delete_vault(&vault).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn add_table(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(vault): Path<String>,
    Json(new): Json<NewTable>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::AlterSchema, Some(&vault))?;
    Ok(created(s.vault.add_table(&vault, new).await?))
}

pub async fn add_column(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((vault, table)): Path<(String, String)>,
    Json(new): Json<NewColumn>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::AlterSchema, Some(&vault))?;
    Ok(created(s.vault.add_column(&vault, &table, new).await?))
}

pub async fn keys(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(vault): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ReadKeys, Some(&vault))?;
    Ok(axum::Json(s.vault.keys(&vault).await?).into_response())
}

pub async fn rotate_keys(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(vault): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::RotateKeys, Some(&vault))?;
    Ok(axum::Json(s.vault.rotate_data_key(&vault).await?).into_response())
}

pub async fn rotate_master(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::RotateMasterKey, None)?;
    let (active, rewrapped) = s.vault.rotate_master_key().await?;
    Ok(
        axum::Json(json!({"active_master_key": active, "rewrapped_keys": rewrapped}))
            .into_response(),
    )
}
