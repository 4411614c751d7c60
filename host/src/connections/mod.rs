//! Connections: the gateway between backends, the vault and third parties.
//!
//! An outbound connection detokenizes chosen fields of a backend's request before forwarding it
//! to a third party and tokenizes chosen fields of the reply; an inbound connection tokenizes
//! what a client sends before it reaches the upstream. Modules:
//! - [`config`]: what a connection's configuration says, and its checks that need no database;
//! - [`service`]: versions, validation against vaults, functions and secrets, the secret store,
//!   inbound keys, and the compiled form (routes, selectors, HTTP client) the gateway runs;
//! - [`gateway`]: one call, outbound or inbound, from the caller to the upstream and back;
//! - [`locations`]: where values live in an HTTP message (JSON paths, form fields, headers,
//!   query parameters) and how to read them all at once and write replacements back;
//! - [`egress`]: which upstream URLs and addresses the proxy may reach (SSRF guard), enforced
//!   at connection time by a DNS resolver for the HTTP client.
//!
//! INVARIANT: plaintext revealed during a call goes only to the upstream; the gateway checks
//! that none of it is in what returns to the caller.

pub mod config;
pub mod egress;
pub mod gateway;
pub mod locations;
pub mod service;

pub use service::{ConnectionService, TrustedProxies};

use crate::functions::FunctionService;
use crate::governance::Governance;
use crate::vault::{VaultError, VaultService};
use std::sync::Arc;

/// The services a connection call uses.
#[derive(Clone)]
pub struct Deps {
    pub vault: VaultService,
    pub gov: Arc<Governance>,
    pub functions: Arc<FunctionService>,
}

/// What can go wrong in a connection request; the API maps it to the contract's error shape.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// Configuration and data errors: invalid (400), not found, conflict, forbidden.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// A call's own failures, with their status and code (`invalid_token`, `upstream_error`,
    /// `upstream_timeout`, `egress_blocked`, `function_error`, `rate_limited`, …).
    #[error("{message}")]
    Upstream {
        status: http::StatusCode,
        code: &'static str,
        message: String,
    },
    /// Bugs and broken storage: logged, answered generically.
    #[error("{0}")]
    Internal(String),
}

impl From<tokio_postgres::Error> for ConnError {
    fn from(e: tokio_postgres::Error) -> Self {
        ConnError::Vault(e.into())
    }
}

impl From<deadpool_postgres::PoolError> for ConnError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        ConnError::Vault(e.into())
    }
}

impl ConnError {
    pub(crate) fn call(
        status: http::StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        ConnError::Upstream {
            status,
            code,
            message: message.into(),
        }
    }
}
