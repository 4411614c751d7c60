//! Strongroom: a data privacy vault.
//!
//! The library holds the whole server; `main.rs` only parses the command line and calls
//! [`startup::Application`]. Modules, from the edge inwards:
//! - [`api`]: HTTP routes, extractors and the error shape of the contract (`shared/API.md`);
//! - [`vault`]: schemas, records, tokens and keys: the service the routes call;
//! - [`types`]: privacy data types (validation, normalisation, masks);
//! - [`tokens`]: token formats (random, deterministic, format-preserving with NIST FF1);
//! - [`crypto`]: the master-key ring, envelope encryption and keyed hashes;
//! - [`db`]: the connection pool and migrations; [`pg`]: the PostgreSQL the server runs itself.

pub mod api;
mod cache;
pub mod config;
pub mod connections;
pub mod crypto;
pub mod db;
pub mod functions;
pub mod governance;
pub mod leak;
pub mod metrics;
pub mod pg;
pub mod startup;
pub mod telemetry;
pub mod tokens;
pub mod types;
pub mod vault;
