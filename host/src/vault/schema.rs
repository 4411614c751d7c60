//! Vault schemas: what a caller submits, how defaults resolve, and the templates.

use crate::tokens::{FpeFormat, Tokenization};
use crate::types::{DataType, Mask};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Detail;

/// A redaction level asked for on a read or detokenize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Redaction {
    Plain,
    Masked,
    Redacted,
    /// The column's own default level (governance later caps it by policy).
    Default,
}

impl Redaction {
    pub fn parse(s: &str) -> Option<Redaction> {
        match s {
            "plain" => Some(Redaction::Plain),
            "masked" => Some(Redaction::Masked),
            "redacted" => Some(Redaction::Redacted),
            "default" => Some(Redaction::Default),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Redaction::Plain => "plain",
            Redaction::Masked => "masked",
            Redaction::Redacted => "redacted",
            Redaction::Default => "default",
        }
    }
}

/// `POST /v1/vaults`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewVault {
    pub name: String,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub tables: Vec<NewTable>,
}

/// A table in a new vault, or `POST /v1/vaults/{vault}/tables`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTable {
    pub name: String,
    #[serde(default)]
    pub columns: Vec<NewColumn>,
}

/// A column as submitted; [`resolve_column`] fills in the defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    #[serde(default)]
    pub tokenization: Option<String>,
    #[serde(default)]
    pub token_group: Option<String>,
    #[serde(default)]
    pub unique: bool,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub policy_attribute: bool,
    #[serde(default)]
    pub mask: Option<String>,
    #[serde(default)]
    pub redaction: Option<String>,
}

/// A column with every default resolved: stored as JSON and echoed to callers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Column {
    #[serde(skip)]
    pub id: Uuid,
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: DataType,
    pub tokenization: Tokenization,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub token_group: Option<String>,
    pub unique: bool,
    pub required: bool,
    pub policy_attribute: bool,
    #[serde(with = "mask_text")]
    pub mask: Mask,
    /// The level `redaction=default` gives for this column.
    pub redaction: Redaction,
}

impl Column {
    /// Whether values get a blind index (look-up by value).
    pub fn indexed(&self) -> bool {
        self.unique || self.tokenization.is_deterministic()
    }

    /// The key scope of deterministic tokens: the token group, else the column itself.
    pub fn token_scope(&self) -> String {
        match &self.token_group {
            Some(group) => format!("group:{group}"),
            None => format!("column:{}", self.id),
        }
    }
}

mod mask_text {
    use crate::types::Mask;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mask: &Mask, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(mask)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Mask, D::Error> {
        let text = String::deserialize(d)?;
        Mask::parse(&text).ok_or_else(|| serde::de::Error::custom("unknown mask"))
    }
}

/// Which format-preserving format a type has, if any.
pub fn fpe_format(data_type: DataType) -> Option<FpeFormat> {
    match data_type {
        DataType::CardNumber => Some(FpeFormat::Card),
        DataType::Phone => Some(FpeFormat::Phone),
        DataType::Ssn => Some(FpeFormat::Ssn),
        DataType::Email => Some(FpeFormat::Email),
        DataType::BankAccount => Some(FpeFormat::Digits),
        _ => None,
    }
}

/// `^[a-z][a-z0-9_-]{0,62}$`: names of vaults, tables, columns and token groups.
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

fn tokenization(s: &str) -> Option<Tokenization> {
    match s {
        "random" => Some(Tokenization::Random),
        "deterministic" => Some(Tokenization::Deterministic),
        "format_preserving" => Some(Tokenization::FormatPreserving),
        "deterministic_format_preserving" => Some(Tokenization::DeterministicFormatPreserving),
        "none" => Some(Tokenization::None),
        _ => None,
    }
}

/// Resolves one submitted column; problems are pushed to `errors` under `at`.
pub fn resolve_column(new: &NewColumn, at: &str, errors: &mut Vec<Detail>) -> Option<Column> {
    let before = errors.len();
    let mut fail =
        |field: &str, reason: String| errors.push(Detail::field(format!("{at}.{field}"), reason));
    if !valid_name(&new.name) {
        fail("name", "must match ^[a-z][a-z0-9_-]{0,62}$".into());
    }
    let data_type = DataType::parse(&new.data_type);
    if data_type.is_none() {
        fail("type", "is not a known column type".into());
    }
    let mode = match new.tokenization.as_deref() {
        None => Some(Tokenization::Random),
        Some(s) => {
            let mode = tokenization(s);
            if mode.is_none() {
                fail("tokenization", "must be one of random, deterministic, format_preserving, deterministic_format_preserving, none".into());
            }
            mode
        }
    };
    if let (Some(t), Some(m)) = (data_type, mode)
        && m.is_format_preserving()
        && fpe_format(t).is_none()
    {
        fail(
            "tokenization",
            format!(
                "type `{}` cannot be format-preserved (supported: card_number, phone, ssn, email, bank_account)",
                t.as_str()
            ),
        );
    }
    if data_type == Some(DataType::File) {
        if mode.is_some_and(|m| !matches!(m, Tokenization::Random | Tokenization::None)) {
            fail(
                "tokenization",
                "file columns take random tokens (or none)".into(),
            );
        }
        if new.unique {
            fail("unique", "file columns cannot be unique".into());
        }
        if new.policy_attribute {
            fail(
                "policy_attribute",
                "file columns cannot be policy attributes".into(),
            );
        }
    }
    if let Some(group) = &new.token_group {
        if !valid_name(group) {
            fail("token_group", "must match ^[a-z][a-z0-9_-]{0,62}$".into());
        }
        if !mode.is_some_and(Tokenization::is_deterministic) {
            fail(
                "token_group",
                "is only allowed on deterministic columns".into(),
            );
        }
    }
    let mask = match (&new.mask, data_type) {
        (Some(text), _) => {
            let mask = Mask::parse(text);
            match (mask, data_type) {
                (None, _) => fail(
                    "mask",
                    "is not a known mask (full, keep_last:N, keep_first:N with N 0..8, email, initials)"
                        .into(),
                ),
                (Some(m), Some(t)) => {
                    if let Err(reason) = t.allows_mask(m) {
                        fail("mask", reason.into());
                    }
                }
                (Some(_), None) => {}
            }
            mask
        }
        (None, Some(t)) => Some(t.default_mask()),
        (None, None) => None,
    };
    let redaction = match (&new.redaction, data_type) {
        (Some(text), _) => match Redaction::parse(text) {
            Some(Redaction::Default) | None => {
                fail("redaction", "must be one of plain, masked, redacted".into());
                None
            }
            level => level,
        },
        (None, Some(t)) if t.is_privacy_type() => Some(Redaction::Masked),
        (None, Some(_)) => Some(Redaction::Plain),
        (None, None) => None,
    };
    if errors.len() > before {
        return None;
    }
    Some(Column {
        id: Uuid::new_v4(),
        name: new.name.clone(),
        data_type: data_type?,
        tokenization: mode?,
        token_group: new.token_group.clone(),
        unique: new.unique,
        required: new.required,
        policy_attribute: new.policy_attribute,
        mask: mask?,
        redaction: redaction?,
    })
}

/// Resolves a table's columns, checking names are unique. `at` is e.g. `tables[0]`.
pub fn resolve_table(new: &NewTable, at: &str, errors: &mut Vec<Detail>) -> Vec<Column> {
    if !valid_name(&new.name) {
        errors.push(Detail::field(
            format!("{at}.name"),
            "must match ^[a-z][a-z0-9_-]{0,62}$",
        ));
    }
    if new.columns.is_empty() {
        errors.push(Detail::field(
            format!("{at}.columns"),
            "a table needs at least one column",
        ));
    }
    if new.columns.len() > 500 {
        errors.push(Detail::field(
            format!("{at}.columns"),
            "a table has at most 500 columns",
        ));
    }
    let mut columns: Vec<Column> = Vec::new();
    for (i, c) in new.columns.iter().enumerate() {
        let here = format!("{at}.columns[{i}]");
        if new.columns[..i].iter().any(|o| o.name == c.name) {
            errors.push(Detail::field(
                format!("{here}.name"),
                format!("column `{}` appears twice", c.name),
            ));
            continue;
        }
        if let Some(col) = resolve_column(c, &here, errors) {
            columns.push(col);
        }
    }
    columns
}

/// The tables a template creates.
pub fn template(name: &str) -> Option<Vec<NewTable>> {
    let col = |name: &str, ty: &str, tok: Option<&str>, unique: bool| NewColumn {
        name: name.into(),
        data_type: ty.into(),
        tokenization: tok.map(Into::into),
        token_group: None,
        unique,
        required: false,
        policy_attribute: false,
        mask: None,
        redaction: None,
    };
    let tables = match name {
        "pii" => vec![NewTable {
            name: "people".into(),
            columns: vec![
                col("name", "name", None, false),
                col("email", "email", Some("deterministic"), true),
                col("phone", "phone", Some("deterministic"), false),
                col("date_of_birth", "date_of_birth", None, false),
                col("ssn", "ssn", Some("format_preserving"), false),
                col("address", "address", None, false),
                col("postal_code", "postal_code", None, false),
            ],
        }],
        "pci" => vec![NewTable {
            name: "cards".into(),
            columns: vec![
                col("cardholder_name", "name", None, false),
                col(
                    "card_number",
                    "card_number",
                    Some("format_preserving"),
                    false,
                ),
                col("card_expiry", "card_expiry", None, false),
                col("billing_postal_code", "postal_code", None, false),
            ],
        }],
        "healthcare" => vec![NewTable {
            name: "patients".into(),
            columns: vec![
                col(
                    "medical_record_number",
                    "string",
                    Some("deterministic"),
                    true,
                ),
                col("name", "name", None, false),
                col("date_of_birth", "date_of_birth", None, false),
                col("ssn", "ssn", Some("format_preserving"), false),
                col("email", "email", Some("deterministic"), false),
                col("phone", "phone", None, false),
                col("address", "address", None, false),
                col("insurance_id", "string", Some("deterministic"), false),
                col("diagnosis", "json", None, false),
            ],
        }],
        _ => return None,
    };
    Some(tables)
}
