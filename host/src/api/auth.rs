//! Who is calling, may they do this, and the audit event of every `/v1` request.
//!
//! [`audited`] wraps each request in an audit event and refuses to answer if the event cannot
//! be stored. [`authenticate`] verifies the API key and the stated purpose. Handlers call
//! [`authorize`] with their [`Action`]: administrative actions are decided there by Cedar; data
//! actions are decided per column and record by the request's [`CedarGate`].

use super::error::ApiError;
use super::{AppState, request_id};
use crate::governance::accounts::{Caller, Refused};
use crate::governance::audit::{self, Event};
use crate::governance::gate::CedarGate;
use crate::governance::{Target, valid_purpose};
use crate::vault::schema::valid_name;
use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::{Arc, Mutex};

/// The header a caller states its purpose in.
pub const PURPOSE_HEADER: &str = "x-strongroom-purpose";

/// The authenticated caller and its stated purpose, stored in the request's extensions.
#[derive(Debug, Clone)]
pub struct Principal {
    pub caller: Caller,
    /// `""` when no purpose was stated.
    pub purpose: String,
}

impl Principal {
    /// The data gate for this request.
    pub fn gate(&self, s: &AppState) -> CedarGate {
        s.gov.gate(&self.caller, &self.purpose)
    }
}

/// What a request does, as policies and the audit log name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    CreateVault,
    ListVaults,
    ReadVault,
    DeleteVault,
    AlterSchema,
    InsertRecords,
    ReadRecord,
    LookupRecords,
    UpdateRecord,
    DeleteRecord,
    Tokenize,
    Detokenize,
    ReadKeys,
    RotateKeys,
    RotateMasterKey,
    ManageServiceAccounts,
    ReadPolicies,
    WritePolicies,
    CheckPolicies,
    ManageGrants,
    ReadAudit,
    ManageFunctions,
    InvokeFunction,
    ManageConnections,
    ManageSecrets,
    /// On a connection: checked by [`authorize_call`].
    CallConnection,
}

impl Action {
    /// The Cedar action id.
    pub fn name(self) -> &'static str {
        match self {
            Action::CreateVault => "create_vault",
            Action::ListVaults => "list_vaults",
            Action::ReadVault => "read_vault",
            Action::DeleteVault => "delete_vault",
            Action::AlterSchema => "alter_schema",
            Action::InsertRecords => "insert",
            Action::ReadRecord => "read",
            Action::LookupRecords => "lookup",
            Action::UpdateRecord => "update",
            Action::DeleteRecord => "delete",
            Action::Tokenize => "tokenize",
            Action::Detokenize => "detokenize",
            Action::ReadKeys => "read_keys",
            Action::RotateKeys => "rotate_keys",
            Action::RotateMasterKey => "rotate_master_key",
            Action::ManageServiceAccounts => "manage_service_accounts",
            Action::ReadPolicies => "read_policies",
            Action::WritePolicies => "write_policies",
            Action::CheckPolicies => "check_policies",
            Action::ManageGrants => "manage_grants",
            Action::ReadAudit => "read_audit",
            Action::ManageFunctions => "manage_functions",
            Action::InvokeFunction => "invoke_function",
            Action::ManageConnections => "manage_connections",
            Action::ManageSecrets => "manage_secrets",
            Action::CallConnection => "call_connection",
        }
    }

    /// Whether the action is decided per column and record (by the gate) rather than here.
    fn is_data(self) -> bool {
        matches!(
            self,
            Action::InsertRecords
                | Action::ReadRecord
                | Action::LookupRecords
                | Action::UpdateRecord
                | Action::DeleteRecord
                | Action::Tokenize
                | Action::Detokenize
        )
    }

    fn on_vault(self) -> bool {
        matches!(
            self,
            Action::ReadVault
                | Action::DeleteVault
                | Action::AlterSchema
                | Action::ReadKeys
                | Action::RotateKeys
        )
    }
}

/// Names the action (and vault, table) in the audit event; decides administrative actions.
pub fn authorize(
    s: &AppState,
    p: &Principal,
    action: Action,
    vault: Option<&str>,
) -> Result<(), ApiError> {
    audit::note(|e| {
        e.action = action.name().to_string();
        e.vault = vault.map(str::to_string);
    });
    if action.is_data() {
        return Ok(());
    }
    let target = match (action.on_vault(), vault) {
        (true, Some(v)) => Target::Vault(v),
        _ => Target::System,
    };
    let verdict = s
        .gov
        .decide_admin(&p.caller, action.name(), target, &p.purpose);
    if verdict.allowed {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the caller's policies do not allow `{}`", action.name()),
        ))
    }
}

/// Decides whether the caller may call `connection` through the gateway.
pub fn authorize_call(s: &AppState, p: &Principal, connection: &str) -> Result<(), ApiError> {
    audit::note(|e| e.action = Action::CallConnection.name().to_string());
    let verdict = s.gov.decide_admin(
        &p.caller,
        Action::CallConnection.name(),
        Target::Connection(connection),
        &p.purpose,
    );
    if verdict.allowed {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the caller's policies do not allow calling this connection",
        ))
    }
}

/// Notes the table a data request works on.
pub fn note_table(table: &str) {
    audit::note(|e| e.table = Some(table.to_string()));
}

/// Middleware: requires `Authorization: Bearer <key>` and a well-formed purpose, if any.
pub async fn authenticate(
    State(s): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = crate::governance::accounts::bearer(req.headers())
        .filter(|k| !k.is_empty() && k.len() <= 512)
        .ok_or_else(ApiError::unauthenticated)?;
    let caller = match s.gov.accounts.authenticate(presented).await? {
        Ok(caller) => caller,
        Err(Refused::Unknown) => return Err(ApiError::unauthenticated()),
        Err(Refused::Expired) => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "this API key has expired",
            ));
        }
        Err(Refused::Revoked) => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "this API key was revoked",
            ));
        }
    };
    audit::note(|e| {
        e.principal = Some(caller.account.name.clone());
        e.key_id = Some(caller.key_id.clone());
    });
    let purpose = match req.headers().get(PURPOSE_HEADER) {
        None => String::new(),
        Some(v) => match v.to_str().map(str::trim) {
            Ok(p) if valid_purpose(p) => p.to_string(),
            _ => {
                return Err(ApiError::invalid(format!(
                    "`{PURPOSE_HEADER}` must match ^[a-z][a-z0-9_-]{{0,62}}$"
                )));
            }
        },
    };
    if !purpose.is_empty() {
        audit::note(|e| e.purpose = Some(purpose.clone()));
    }
    req.extensions_mut().insert(Principal { caller, purpose });
    Ok(next.run(req).await)
}

/// What a path parameter must look like to name anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParamRule {
    /// API.md's name rule, `^[a-z][a-z0-9_-]{0,62}$`.
    Name,
    /// An id (a UUID, a key id, or an account name): 1 to 64 ASCII letters, digits, `_`, `-`.
    Id,
    /// Passed on as it is (the path a gateway call forwards).
    Free,
}

/// What the parameter `param` of `route` names (for its 404) and the rule it must follow.
fn param_rule(route: &str, param: &str) -> (&'static str, ParamRule) {
    let under = |prefix: &str| route.starts_with(prefix);
    match param {
        "vault" => ("vault", ParamRule::Name),
        "table" => ("table", ParamRule::Name),
        "column" => ("column", ParamRule::Name),
        "connection" => ("connection", ParamRule::Name),
        "name" if under("/v1/functions/") => ("function", ParamRule::Name),
        "name" if under("/v1/connections/") => ("connection", ParamRule::Name),
        "name" if under("/v1/secrets/") => ("secret", ParamRule::Name),
        "name" => ("resource", ParamRule::Name),
        "id" if under("/v1/service-accounts/") => ("service account", ParamRule::Id),
        "id" if under("/v1/grants/") => ("grant", ParamRule::Id),
        "id" if under("/v1/vaults/") => ("record", ParamRule::Id),
        "key_id" => ("key", ParamRule::Id),
        "path" => ("", ParamRule::Free),
        _ => ("resource", ParamRule::Id),
    }
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Middleware (inside authentication): a path parameter that cannot name anything (a NUL
/// byte, a name outside the name rule, an id of the wrong shape) is answered here, without
/// touching the database, and never reaches the audit event: 404, or 400 for `PUT
/// /v1/secrets/{name}`, which creates what it names. The event names the route, not the raw
/// path.
pub async fn path_names(
    matched: Option<MatchedPath>,
    params: Result<RawPathParams, RawPathParamsRejection>,
    req: Request,
    next: Next,
) -> Response {
    let Ok(params) = params else {
        return ApiError::invalid("the path is not valid UTF-8 percent-encoding").into_response();
    };
    let route = matched.as_ref().map_or("", MatchedPath::as_str);
    for (param, value) in &params {
        let (what, rule) = param_rule(route, param);
        let ok = match rule {
            ParamRule::Name => valid_name(value),
            ParamRule::Id => valid_id(value),
            ParamRule::Free => true,
        };
        if ok {
            continue;
        }
        if req.method() == http::Method::PUT && route == "/v1/secrets/{name}" {
            return ApiError::invalid(format!(
                "the {what} name in the path must match ^[a-z][a-z0-9_-]{{0,62}}$"
            ))
            .into_response();
        }
        return ApiError::not_found(what).into_response();
    }
    next.run(req).await
}

/// Middleware: every `/v1` request appends an audit event, and is answered only once it has.
pub async fn audited(
    State(s): State<AppState>,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let method = crate::metrics::method_label(req.method()).to_string();
    let matched_any = matched.is_some();
    let route = matched.map_or_else(|| "unknown".to_string(), |m| m.as_str().to_string());
    let event = Arc::new(Mutex::new(Event {
        request_id: request_id(),
        method: method.clone(),
        route: route.clone(),
        ..Event::default()
    }));
    let response = audit::scope(event.clone(), next.run(req)).await;
    let mut event = match event.lock() {
        Ok(mut e) => std::mem::take(&mut *e),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    let status = response.status();
    event.status = status.as_u16();
    event.outcome = match status.as_u16() {
        200..=299 => "ok",
        401 => "unauthenticated",
        403 => "denied",
        400..=499 => "rejected",
        _ => "error",
    }
    .to_string();
    if event.action.is_empty() {
        event.action = format!("{method} {route}");
    }
    let appended = s.gov.audit.append(event).await;
    let label = crate::metrics::MatchedRoute(if matched_any {
        route
    } else {
        crate::metrics::UNMATCHED.to_string()
    });
    let mut response = match appended {
        Ok(_) => response,
        Err(e) => {
            tracing::error!(request_id = %request_id(), error = %e, "audit append failed; answer withheld");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "the request could not be audited, so its result is withheld; try again",
            )
            .into_response()
        }
    };
    response.extensions_mut().insert(label);
    response
}
