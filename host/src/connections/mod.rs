//! Connections: the gateway between backends, the vault and third parties.
//!
//! An outbound connection detokenizes chosen fields of a backend's request before forwarding it
//! to a third party and tokenizes chosen fields of the reply; an inbound connection tokenizes
//! what a client sends before it reaches the upstream. This module holds the pure parts of that
//! proxy, free of the database and the HTTP server:
//! - [`locations`]: where values live in an HTTP message (JSON paths, form fields, headers,
//!   query parameters) and how to read them all at once and write replacements back;
//! - [`egress`]: which upstream URLs and addresses the proxy may reach (SSRF guard), enforced
//!   at connection time by a DNS resolver for the HTTP client.

pub mod egress;
pub mod locations;
