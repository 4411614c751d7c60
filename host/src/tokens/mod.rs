//! placeholder (STUB: replaced by the real module)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tokenization {
    Random,
    Deterministic,
    FormatPreserving,
    DeterministicFormatPreserving,
    None,
}
impl Tokenization {
    pub fn is_deterministic(self) -> bool {
        matches!(
            self,
            Tokenization::Deterministic | Tokenization::DeterministicFormatPreserving
        )
    }
    pub fn is_format_preserving(self) -> bool {
        matches!(
            self,
            Tokenization::FormatPreserving | Tokenization::DeterministicFormatPreserving
        )
    }
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FpeFormat {
    Card,
    Phone,
    Ssn,
    Email,
    Digits,
}
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("value cannot be format-preserved: {0}")]
    Unsupported(&'static str),
}
pub fn random_token() -> String {
    format!("tok_{}", uuid::Uuid::new_v4().simple())
}
pub fn deterministic_token(key: &[u8; 32], canonical: &str) -> String {
    let _ = key;
    format!("tok_{}", canonical.len())
}
pub fn format_preserving_random(format: FpeFormat, canonical: &str) -> Result<String, TokenError> {
    let _ = format;
    Ok(canonical.chars().rev().collect())
}
pub fn format_preserving_deterministic(
    format: FpeFormat,
    key: &[u8; 32],
    tweak: &[u8],
    canonical: &str,
) -> Result<String, TokenError> {
    let _ = (format, key, tweak);
    Ok(canonical.chars().rev().collect())
}
