//! Service accounts, policies, grants and the audit log.

use super::AppState;
use super::auth::{Action, Principal, authorize};
use super::created;
use super::error::ApiError;
use super::extract::{Body, Json, QueryParams};
use crate::governance::audit::{self, Filter};
use crate::governance::{CheckRequest, GrantRecord};
use crate::vault::schema::valid_name;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Router};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;

/// The governance routes (under `/v1`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/service-accounts", post(create_account).get(list_accounts))
        .route(
            "/service-accounts/{id}",
            get(get_account).delete(delete_account),
        )
        .route("/service-accounts/{id}/keys", post(add_key))
        .route("/service-accounts/{id}/keys/{key_id}", delete(revoke_key))
        .route("/policies", get(get_policies).put(put_policies))
        .route("/policies/versions", get(policy_versions))
        .route("/policies/check", post(check))
        .route("/grants", post(create_grant))
        .route("/grants/{id}", delete(revoke_grant))
        .route("/audit", get(audit_events))
        .route("/audit/verify", get(verify_audit))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    name: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    key_expires_in_seconds: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NewKeyBody {
    #[serde(default)]
    expires_in_seconds: Option<u64>,
}

fn check_expiry(seconds: Option<u64>) -> Result<(), ApiError> {
    match seconds {
        Some(s) if s == 0 || s > 10 * 365 * 24 * 3600 => Err(ApiError::invalid(
            "a key's expiry must be between 1 second and 10 years",
        )),
        _ => Ok(()),
    }
}

async fn create_account(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Json(body): Json<NewAccount>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ManageServiceAccounts, None)?;
    check_expiry(body.key_expires_in_seconds)?;
    let (view, key) = s
        .gov
        .accounts
        .create(
            &body.name,
            body.roles,
            body.attributes,
            body.key_expires_in_seconds,
        )
        .await?;
    audit::note(|e| e.count("keys_created", 1));
    let mut out = serde_json::to_value(&view).unwrap_or_default();
    out["api_key"] = json!(key.secret.as_str());
    out["key_id"] = json!(key.id);
    Ok(created(out))
}

async fn list_accounts(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ManageServiceAccounts, None)?;
    let accounts = s.gov.accounts.list(None).await?;
    Ok(axum::Json(json!({"service_accounts": accounts})).into_response())
}

async fn get_account(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ManageServiceAccounts, None)?;
    let mut accounts = s.gov.accounts.list(Some(&id)).await?;
    let account = accounts
        .pop()
        .ok_or_else(|| ApiError::not_found("service account"))?;
    Ok(axum::Json(account).into_response())
}

async fn delete_account(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorize(&s, &p, Action::ManageServiceAccounts, None)?;
    s.gov.accounts.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn add_key(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ManageServiceAccounts, None)?;
    let body: NewKeyBody = if body.is_empty() {
        NewKeyBody::default()
    } else {
        super::extract::parse_json(&body)?
    };
    check_expiry(body.expires_in_seconds)?;
    let (key, info) = s.gov.accounts.add_key(&id, body.expires_in_seconds).await?;
    let mut out = serde_json::to_value(&info).unwrap_or_default();
    out["api_key"] = json!(key.secret.as_str());
    out["key_id"] = json!(key.id);
    Ok(created(out))
}

async fn revoke_key(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((id, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    authorize(&s, &p, Action::ManageServiceAccounts, None)?;
    s.gov.accounts.revoke_key(&id, &key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_policies(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ReadPolicies, None)?;
    let engine = s.gov.engine();
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
            (
                header::HeaderName::from_static("x-strongroom-policy-version"),
                engine.version.to_string(),
            ),
        ],
        engine.source.clone(),
    )
        .into_response())
}

async fn put_policies(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::WritePolicies, None)?;
    let is_text = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with("text/plain"));
    if !is_text {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the policy set as `text/plain` Cedar source",
        ));
    }
    let source = std::str::from_utf8(&body)
        .map_err(|_| ApiError::invalid("the policy set is not UTF-8 text"))?;
    let version = s.gov.put_policies(source, &p.caller).await?;
    let ids = s.gov.engine().policy_ids();
    audit::note(|e| e.count("policies", ids.len() as u64));
    Ok(axum::Json(json!({"version": version, "policies": ids})).into_response())
}

async fn policy_versions(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ReadPolicies, None)?;
    let versions = s.gov.policy_versions().await?;
    Ok(axum::Json(json!({"versions": versions})).into_response())
}

async fn check(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Json(body): Json<CheckRequest>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::CheckPolicies, None)?;
    let verdict = s.gov.check(body).await?;
    Ok(axum::Json(json!({
        "decision": if verdict.allowed { "allow" } else { "deny" },
        "policies": verdict.policies,
        "errors": verdict.errors,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGrant {
    principal: String,
    records: Vec<GrantRecord>,
    expires_in_seconds: u64,
}

async fn create_grant(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Json(body): Json<NewGrant>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ManageGrants, None)?;
    let (id, expires_at) = s
        .gov
        .create_grant(
            &body.principal,
            &body.records,
            body.expires_in_seconds,
            &p.caller.account.name,
        )
        .await?;
    audit::note(|e| {
        for r in &body.records {
            e.record(&r.id);
        }
    });
    Ok(created(json!({"id": id, "expires_at": expires_at})))
}

async fn revoke_grant(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorize(&s, &p, Action::ManageGrants, None)?;
    s.gov.revoke_grant(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn time_param(
    q: &std::collections::HashMap<String, String>,
    name: &str,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    q.get(name)
        .map(|v| {
            chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|_| ApiError::invalid(format!("`{name}` must be an RFC 3339 time")))
        })
        .transpose()
}

async fn audit_events(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ReadAudit, None)?;
    let q = query.only(&[
        "since",
        "until",
        "principal",
        "action",
        "vault",
        "limit",
        "cursor",
    ])?;
    let limit = match q.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| ApiError::invalid("`limit` must be 1 to 1000"))?,
    };
    let after = match q.get("cursor") {
        None => None,
        Some(c) => Some(
            c.parse::<i64>()
                .ok()
                .filter(|c| *c >= 0)
                .ok_or_else(|| ApiError::invalid("`cursor` is not a cursor this API returned"))?,
        ),
    };
    // Filters that cannot match a stored event are refused here, without the database (a NUL
    // in a parameter is an error there, not a miss).
    if let Some(p) = q.get("principal") {
        let name = p.strip_prefix("connection:").unwrap_or(p);
        if !valid_name(name) {
            return Err(ApiError::invalid(
                "`principal` must be an account name (^[a-z][a-z0-9_-]{0,62}$) or `connection:<name>`",
            ));
        }
    }
    if q.get("vault").is_some_and(|v| !valid_name(v)) {
        return Err(ApiError::invalid(
            "`vault` must be a vault name (^[a-z][a-z0-9_-]{0,62}$)",
        ));
    }
    if q.get("action")
        .is_some_and(|a| a.is_empty() || a.len() > 256 || a.chars().any(char::is_control))
    {
        return Err(ApiError::invalid(
            "`action` must be an action name (1 to 256 characters, no control characters)",
        ));
    }
    let filter = Filter {
        since: time_param(&q, "since")?,
        until: time_param(&q, "until")?,
        principal: q.get("principal").cloned(),
        action: q.get("action").cloned(),
        vault: q.get("vault").cloned(),
        after,
        limit,
    };
    let events = s.gov.audit.query(&filter).await?;
    let next = (events.len() as i64 == limit)
        .then(|| events.last().and_then(|e| e["seq"].as_i64()))
        .flatten()
        .map(|seq| seq.to_string());
    Ok(axum::Json(json!({"events": events, "next_cursor": next})).into_response())
}

async fn verify_audit(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ReadAudit, None)?;
    let report = s.gov.audit.verify().await?;
    Ok(axum::Json(report).into_response())
}
