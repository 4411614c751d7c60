//! Logging into the vault's function log.
//!
//! Lines are attributed to the function and the request by the host, which
//! truncates and rate-limits them. Never log detokenized values.

pub use crate::bindings::strongroom::function::log::Level;

/// Writes one line at `level`.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::strongroom::function::log::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::log(level, message);
}

/// Writes one line at [`Level::Debug`].
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Writes one line at [`Level::Info`].
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Writes one line at [`Level::Warn`].
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Writes one line at [`Level::Error`].
pub fn error(message: &str) {
    log(Level::Error, message);
}
