//! Who is calling, and may they do this.
//!
//! Today one principal exists: the bootstrap admin. [`authorize`] is the seam where Cedar
//! policies plug in (governance): every handler calls it with the action and the resource.

use super::error::ApiError;
use crate::crypto::constant_time_eq;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The authenticated caller, stored in the request's extensions by [`authenticate`].
#[derive(Debug, Clone)]
pub enum Principal {
    Admin,
}

/// What a request does, as policies will name it.
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
}

/// The admin key, kept only as its SHA-256 digest.
pub struct AdminKey {
    digest: [u8; 32],
}

impl AdminKey {
    pub fn new(key: &str) -> AdminKey {
        AdminKey {
            digest: Sha256::digest(key.as_bytes()).into(),
        }
    }

    /// INVARIANT: compares digests in constant time, so timing reveals nothing of the key.
    fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        constant_time_eq(&digest, &self.digest)
    }
}

/// Middleware: requires `Authorization: Bearer <key>` and records the principal.
pub async fn authenticate(
    State(admin): State<Arc<AdminKey>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match presented {
        Some(key) if admin.matches(key) => {
            req.extensions_mut().insert(Principal::Admin);
            Ok(next.run(req).await)
        }
        _ => Err(ApiError::unauthenticated()),
    }
}

/// Decides whether `principal` may perform `action` on the vault (and table) named.
pub fn authorize(
    principal: &Principal,
    action: Action,
    vault: Option<&str>,
) -> Result<(), ApiError> {
    let _ = (action, vault);
    match principal {
        Principal::Admin => Ok(()),
    }
}
