//! Safe wrappers over the `vault` interface the host grants.

use std::fmt;

use crate::{File, FunctionError, Redaction};

#[cfg(target_arch = "wasm32")]
use crate::bindings::strongroom::function::vault as backend;
#[cfg(not(target_arch = "wasm32"))]
use crate::testing as backend;

/// An error code returned by the host for a vault call, such as `forbidden`,
/// `not-found` or `quota-exceeded` (optionally followed by `: detail`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultError(String);

impl VaultError {
    /// Wraps a host error code.
    pub fn new(code: impl Into<String>) -> Self {
        Self(code.into())
    }

    /// The error code, without any `: detail` suffix.
    pub fn code(&self) -> &str {
        self.0
            .split_once(':')
            .map_or(self.0.as_str(), |(code, _)| code)
            .trim()
    }

    /// The full text the host returned.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vault error: {}", self.0)
    }
}

impl std::error::Error for VaultError {}

/// Lets hooks use `?` on vault calls: `forbidden` becomes
/// [`FunctionError::Forbidden`], `not-found` and `invalid-*` become
/// [`FunctionError::BadRequest`], anything else [`FunctionError::Internal`].
impl From<VaultError> for FunctionError {
    fn from(err: VaultError) -> Self {
        let text = err.to_string();
        match err.code() {
            "forbidden" => FunctionError::Forbidden(text),
            code if code == "not-found" || code.starts_with("invalid") => {
                FunctionError::BadRequest(text)
            }
            _ => FunctionError::Internal(text),
        }
    }
}

/// Detokenizes `tokens` at the given redaction level.
///
/// Allowed only in [`Function::on_request`](crate::Function::on_request),
/// only for tokens that occur in the message being transformed and only for
/// columns granted to the function.
///
/// # Errors
///
/// The outer error fails the whole call (e.g. `forbidden` when called from
/// `on-response`); otherwise there is one result per token, in order.
pub fn detokenize(
    tokens: &[&str],
    level: Redaction,
) -> Result<Vec<Result<String, VaultError>>, VaultError> {
    let tokens: Vec<String> = tokens.iter().map(|&token| token.to_owned()).collect();
    let values = backend::detokenize(&tokens, level).map_err(VaultError)?;
    Ok(values
        .into_iter()
        .map(|value| value.map_err(VaultError))
        .collect())
}

/// Detokenizes a single token; see [`detokenize`].
///
/// # Errors
///
/// The call's error or the token's own error.
pub fn detokenize_one(token: &str, level: Redaction) -> Result<String, VaultError> {
    detokenize(&[token], level)?
        .into_iter()
        .next()
        .unwrap_or_else(|| Err(VaultError::new("internal: host returned no value")))
}

/// Stores `values` in a granted `vault.table.column` and returns their
/// tokens, one per value, in order.
///
/// # Errors
///
/// The host's error code, e.g. `forbidden` if the column is not granted.
pub fn tokenize(
    vault: &str,
    table: &str,
    column: &str,
    values: &[&str],
) -> Result<Vec<String>, VaultError> {
    let values: Vec<String> = values.iter().map(|&value| value.to_owned()).collect();
    backend::tokenize(vault, table, column, &values).map_err(VaultError)
}

/// Reads the file stored in file column `column` of record `record`.
///
/// # Errors
///
/// The host's error code, e.g. `forbidden` or `not-found`.
pub fn read_file(vault: &str, table: &str, record: &str, column: &str) -> Result<File, VaultError> {
    backend::read_file(vault, table, record, column).map_err(VaultError)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_map_to_function_errors() {
        let forbidden = FunctionError::from(VaultError::new("forbidden: column not granted"));
        assert!(matches!(forbidden, FunctionError::Forbidden(_)));
        let missing = FunctionError::from(VaultError::new("not-found"));
        assert!(matches!(missing, FunctionError::BadRequest(_)));
        let other = FunctionError::from(VaultError::new("quota-exceeded"));
        assert!(matches!(other, FunctionError::Internal(_)));
        assert_eq!(VaultError::new("forbidden: x").code(), "forbidden");
    }
}
