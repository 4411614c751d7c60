//! The error shape of the contract:
//! `{"error": {"code", "message", "request_id", "details"}}`.
//!
//! INVARIANT: messages and details name fields, columns and indexes only. Internal failures are
//! logged with the request id and answered with a generic message.

use super::request_id;
use crate::governance::GovError;
use crate::vault::{Detail, VaultError};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered to the client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Vec<Detail>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn with_details(mut self, details: Vec<Detail>) -> ApiError {
        self.details = details;
        self
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn unauthenticated() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "a valid API key is required: send `Authorization: Bearer <key>`",
        )
    }

    pub fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to complete the request",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "request_id": request_id(),
                "details": self.details,
            }
        });
        (self.status, Json(body)).into_response()
    }
}

impl From<GovError> for ApiError {
    fn from(e: GovError) -> Self {
        match e {
            GovError::Invalid(message) => ApiError::invalid(message),
            GovError::NotFound(what) => ApiError::not_found(&what),
            GovError::Conflict(message) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            GovError::Forbidden(message) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
            }
            GovError::Policies(problems) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_policy",
                "the policy set does not validate; nothing changed",
            )
            .with_details(
                problems
                    .into_iter()
                    .map(|p| Detail {
                        field: None,
                        policy: p.policy,
                        line: p.line,
                        column: p.column,
                        ..Detail::field("", p.reason)
                    })
                    .collect(),
            ),
            GovError::Db(e) => ApiError::from(VaultError::Db(e)),
            other => {
                tracing::error!(request_id = %request_id(), error = %other, "request failed");
                ApiError::internal()
            }
        }
    }
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::NotFound(what) => ApiError::not_found(&what),
            VaultError::Invalid { message, details } => {
                ApiError::invalid(message).with_details(details)
            }
            VaultError::Forbidden { message, details } => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).with_details(details)
            }
            VaultError::Conflict { message, details } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", message).with_details(details)
            }
            VaultError::TooLarge(message) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
            }
            // Every attempt drew a token another value holds: the column's format leaves too
            // few tokens for the values stored. A state of the vault, not a server fault.
            VaultError::TokenSpace => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "no unused token was found for a value: the column's token format leaves too few tokens for the values it holds",
            ),
            VaultError::Db(e) if e.concurrent_change() => {
                tracing::warn!(request_id = %request_id(), error = %e, "transaction given up for a concurrent one");
                ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    "a concurrent request changed the same data; retry",
                )
            }
            VaultError::Db(e) => match e.unavailable() {
                Some(sentence) => {
                    tracing::error!(request_id = %request_id(), error = %e, "database unavailable");
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", sentence)
                }
                None => {
                    tracing::error!(request_id = %request_id(), error = %e, "request failed");
                    ApiError::internal()
                }
            },
            other => {
                tracing::error!(request_id = %request_id(), error = %other, "request failed");
                ApiError::internal()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_used_up_token_space_is_a_conflict_not_a_server_fault() {
        let e = ApiError::from(VaultError::TokenSpace);
        assert_eq!(e.status, StatusCode::CONFLICT);
        assert_eq!(e.code, "conflict");
    }
}
