//! placeholder (STUB: replaced by the real module)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    String,
    Integer,
    Boolean,
    Date,
    Datetime,
    Json,
    Name,
    Email,
    Phone,
    CardNumber,
    CardExpiry,
    Ssn,
    Iban,
    UsRoutingNumber,
    BankAccount,
    DateOfBirth,
    Address,
    PostalCode,
    IpAddress,
    Passport,
}
impl DataType {
    pub fn parse(s: &str) -> Option<DataType> {
        serde_json::from_value(serde_json::Value::String(s.into())).ok()
    }
    pub fn as_str(self) -> &'static str {
        "string"
    }
    pub fn is_privacy_type(self) -> bool {
        true
    }
    pub fn normalize(self, input: &serde_json::Value) -> Result<String, InvalidValue> {
        input.as_str().map(str::to_string).ok_or(InvalidValue {
            reason: "expected a string",
        })
    }
    pub fn to_json(self, canonical: &str) -> serde_json::Value {
        serde_json::Value::String(canonical.into())
    }
    pub fn default_mask(self) -> Mask {
        Mask::Full
    }
}
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct InvalidValue {
    pub reason: &'static str,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    Full,
}
impl Mask {
    pub fn parse(s: &str) -> Option<Mask> {
        (s == "full").then_some(Mask::Full)
    }
    pub fn apply(self, canonical: &str) -> String {
        "X".repeat(canonical.len())
    }
}
impl std::fmt::Display for Mask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("full")
    }
}
