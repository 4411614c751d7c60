//! Column data types: validation, normalisation and masks.
//!
//! Every submitted value goes through [`DataType::normalize`], which either returns the value's
//! canonical text (what is encrypted, blind-indexed and tokenized) or an [`InvalidValue`] whose
//! reason is a fixed sentence: a reason never contains any part of the submitted value, so errors
//! can be logged and returned without leaking it.

mod checks;
pub mod file;
mod mask;

pub use mask::Mask;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde_json::Value;

/// What a masked boolean, JSON value or fully masked integer reads, whatever it holds.
pub const MASKED: &str = "XXXX";

/// Longest accepted `string`, `address` or `json` value, in bytes of canonical text.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// A column's type.
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
    File,
}

/// Why a value was refused. The reason never quotes the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct InvalidValue {
    pub reason: &'static str,
}

fn invalid<T>(reason: &'static str) -> Result<T, InvalidValue> {
    Err(InvalidValue { reason })
}

const ALL: [DataType; 21] = [
    DataType::String,
    DataType::Integer,
    DataType::Boolean,
    DataType::Date,
    DataType::Datetime,
    DataType::Json,
    DataType::Name,
    DataType::Email,
    DataType::Phone,
    DataType::CardNumber,
    DataType::CardExpiry,
    DataType::Ssn,
    DataType::Iban,
    DataType::UsRoutingNumber,
    DataType::BankAccount,
    DataType::DateOfBirth,
    DataType::Address,
    DataType::PostalCode,
    DataType::IpAddress,
    DataType::Passport,
    DataType::File,
];

impl DataType {
    /// Every type, in the order API.md lists them.
    pub fn all() -> &'static [DataType] {
        &ALL
    }

    /// Parses the API name (`card_number`, …).
    pub fn parse(s: &str) -> Option<DataType> {
        ALL.iter().copied().find(|t| t.as_str() == s)
    }

    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::String => "string",
            DataType::Integer => "integer",
            DataType::Boolean => "boolean",
            DataType::Date => "date",
            DataType::Datetime => "datetime",
            DataType::Json => "json",
            DataType::Name => "name",
            DataType::Email => "email",
            DataType::Phone => "phone",
            DataType::CardNumber => "card_number",
            DataType::CardExpiry => "card_expiry",
            DataType::Ssn => "ssn",
            DataType::Iban => "iban",
            DataType::UsRoutingNumber => "us_routing_number",
            DataType::BankAccount => "bank_account",
            DataType::DateOfBirth => "date_of_birth",
            DataType::Address => "address",
            DataType::PostalCode => "postal_code",
            DataType::IpAddress => "ip_address",
            DataType::Passport => "passport",
            DataType::File => "file",
        }
    }

    /// Privacy types are masked by default; generic types are shown plain by default.
    pub fn is_privacy_type(self) -> bool {
        !matches!(
            self,
            DataType::String
                | DataType::Integer
                | DataType::Boolean
                | DataType::Date
                | DataType::Datetime
                | DataType::Json
        )
    }

    /// Validates a submitted JSON value and returns its canonical text.
    pub fn normalize(self, input: &Value) -> Result<String, InvalidValue> {
        match self {
            DataType::Integer => return integer(input),
            DataType::Boolean => {
                return match input {
                    Value::Bool(b) => Ok(b.to_string()),
                    _ => invalid("expected a boolean"),
                };
            }
            DataType::File => return file::normalize(input),
            DataType::Json => {
                let text = input.to_string();
                if text.len() > MAX_TEXT_BYTES {
                    return invalid("is longer than 65536 bytes");
                }
                return Ok(text);
            }
            _ => {}
        }
        let Value::String(s) = input else {
            return invalid("expected a string");
        };
        match self {
            DataType::String => {
                if s.len() > MAX_TEXT_BYTES {
                    return invalid("is longer than 65536 bytes");
                }
                if s.contains('\0') {
                    return invalid("contains a NUL character");
                }
                Ok(s.clone())
            }
            DataType::Date => date(s).map(|d| d.format("%Y-%m-%d").to_string()),
            DataType::Datetime => datetime(s),
            DataType::Name => name(s),
            DataType::Email => checks::email(s),
            DataType::Phone => checks::phone(s),
            DataType::CardNumber => checks::card_number(s),
            DataType::CardExpiry => checks::card_expiry(s),
            DataType::Ssn => checks::ssn(s),
            DataType::Iban => checks::iban(s),
            DataType::UsRoutingNumber => checks::routing_number(s),
            DataType::BankAccount => checks::bank_account(s),
            DataType::DateOfBirth => date_of_birth(s, Utc::now().date_naive()),
            DataType::Address => address(s),
            DataType::PostalCode => checks::postal_code(s),
            DataType::IpAddress => s
                .trim()
                .parse::<std::net::IpAddr>()
                .map(|ip| ip.to_string())
                .or_else(|_| invalid("is not an IPv4 or IPv6 address")),
            DataType::Passport => checks::passport(s),
            DataType::Integer | DataType::Boolean | DataType::Json | DataType::File => {
                invalid("expected a string")
            }
        }
    }

    /// The JSON a canonical value is returned as (numbers and booleans keep their JSON type).
    pub fn to_json(self, canonical: &str) -> Value {
        match self {
            DataType::Integer => canonical
                .parse::<i64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::String(canonical.to_string())),
            DataType::Boolean => Value::Bool(canonical == "true"),
            DataType::Json => serde_json::from_str(canonical)
                .unwrap_or_else(|_| Value::String(canonical.to_string())),
            DataType::File => file::to_json(canonical),
            _ => Value::String(canonical.to_string()),
        }
    }

    /// The mask `redaction=masked` applies when a column does not set its own.
    ///
    /// (Booleans, JSON and fully masked integers show [`MASKED`] whatever their value.)
    pub fn default_mask(self) -> Mask {
        match self {
            DataType::CardNumber
            | DataType::Ssn
            | DataType::Phone
            | DataType::Iban
            | DataType::UsRoutingNumber
            | DataType::BankAccount => Mask::KeepLast(4),
            DataType::Passport => Mask::KeepLast(2),
            DataType::PostalCode => Mask::KeepFirst(2),
            DataType::Email => Mask::Email,
            DataType::Name => Mask::Initials,
            DataType::String
            | DataType::Integer
            | DataType::Boolean
            | DataType::Date
            | DataType::Datetime
            | DataType::Json
            | DataType::CardExpiry
            | DataType::DateOfBirth
            | DataType::Address
            | DataType::IpAddress
            | DataType::File => Mask::Full,
        }
    }

    /// What `redaction=masked` shows of a canonical value under `mask`.
    ///
    /// Letter-and-digit masks keep a value's length and shape. That is their purpose for text
    /// (`XXX-XX-6789`), but it would give away a boolean (`XXXX` is true, `XXXXX` false), a
    /// number's sign and size, and a JSON document's structure; those mask to one constant.
    pub fn mask(self, mask: Mask, canonical: &str) -> String {
        match (self, mask) {
            (DataType::Boolean | DataType::Json, _) | (DataType::Integer, Mask::Full) => {
                MASKED.to_string()
            }
            _ => mask.apply(canonical),
        }
    }

    /// Whether a column of this type may use `mask`. Card numbers never show more than the
    /// last four digits, whatever a schema asks for.
    pub fn allows_mask(self, mask: Mask) -> Result<(), &'static str> {
        match (self, mask) {
            (DataType::CardNumber, Mask::Full) => Ok(()),
            (DataType::CardNumber, Mask::KeepLast(n)) if n <= 4 => Ok(()),
            (DataType::CardNumber, _) => {
                Err("card numbers may show at most their last four digits (full or keep_last:0..4)")
            }
            (DataType::Boolean | DataType::Json, Mask::Full) => Ok(()),
            (DataType::Boolean, _) => Err("boolean columns can only be masked in full"),
            (DataType::Json, _) => Err("json columns can only be masked in full"),
            (DataType::File, Mask::Full) => Ok(()),
            (DataType::File, _) => {
                Err("file columns are masked as a summary (media type and size); use full")
            }
            (DataType::Email, _) | (_, Mask::Initials) | (_, Mask::KeepFirst(_)) => Ok(()),
            (_, Mask::Email) => Err("the email mask applies only to email columns"),
            _ => Ok(()),
        }
    }
}

fn integer(input: &Value) -> Result<String, InvalidValue> {
    match input {
        Value::Number(n) => match n.as_i64() {
            Some(i) => Ok(i.to_string()),
            None => invalid("expected a whole number between -2^63 and 2^63-1"),
        },
        Value::String(s) => match s.trim().parse::<i64>() {
            Ok(i) => Ok(i.to_string()),
            Err(_) => invalid("expected a whole number between -2^63 and 2^63-1"),
        },
        _ => invalid("expected a whole number"),
    }
}

fn date(s: &str) -> Result<NaiveDate, InvalidValue> {
    let s = s.trim();
    if s.len() != 10 {
        return invalid("expected a date as YYYY-MM-DD");
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").or_else(|_| invalid("is not a real date (YYYY-MM-DD)"))
}

fn datetime(s: &str) -> Result<String, InvalidValue> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|d| {
            d.with_timezone(&Utc)
                .to_rfc3339_opts(SecondsFormat::AutoSi, true)
        })
        .or_else(|_| invalid("expected an RFC 3339 date-time with an offset"))
}

fn date_of_birth(s: &str, today: NaiveDate) -> Result<String, InvalidValue> {
    let d = date(s)?;
    if d > today {
        return invalid("a date of birth cannot be in the future");
    }
    if today.years_since(d).is_some_and(|years| years > 150) {
        return invalid("a date of birth more than 150 years ago is not plausible");
    }
    Ok(d.format("%Y-%m-%d").to_string())
}

/// Collapses runs of whitespace into one space and trims.
fn collapse_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn name(s: &str) -> Result<String, InvalidValue> {
    if s.chars().any(|c| c.is_control() && !c.is_whitespace()) {
        return invalid("a name cannot contain control characters");
    }
    let n = collapse_whitespace(s);
    if n.is_empty() {
        return invalid("a name cannot be empty");
    }
    if n.chars().count() > 300 {
        return invalid("a name is at most 300 characters");
    }
    if !n.chars().any(char::is_alphabetic) {
        return invalid("a name needs at least one letter");
    }
    Ok(n)
}

fn address(s: &str) -> Result<String, InvalidValue> {
    if s.chars().any(|c| c.is_control() && c != '\n') {
        return invalid("an address cannot contain control characters other than line breaks");
    }
    let lines: Vec<String> = s
        .lines()
        .map(collapse_whitespace)
        .filter(|l| !l.is_empty())
        .collect();
    let a = lines.join("\n");
    if a.is_empty() {
        return invalid("an address cannot be empty");
    }
    if a.len() > 4096 {
        return invalid("an address is at most 4096 bytes");
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(t: DataType, v: Value) -> String {
        match t.normalize(&v) {
            Ok(s) => s,
            Err(e) => panic!("{} refused {v}: {e}", t.as_str()),
        }
    }

    fn bad(t: DataType, v: Value) -> &'static str {
        match t.normalize(&v) {
            Ok(s) => panic!("{} accepted {v} as {s}", t.as_str()),
            Err(e) => e.reason,
        }
    }

    #[test]
    fn names_round_trip() {
        for t in DataType::all() {
            assert_eq!(DataType::parse(t.as_str()), Some(*t));
            let via_serde: DataType =
                serde_json::from_value(json!(t.as_str())).unwrap_or(DataType::String);
            assert_eq!(via_serde, *t);
        }
        assert_eq!(DataType::parse("credit_card"), None);
    }

    #[test]
    fn generic_types() {
        assert_eq!(ok(DataType::Integer, json!(42)), "42");
        assert_eq!(ok(DataType::Integer, json!("-7")), "-7");
        bad(DataType::Integer, json!(1.5));
        bad(DataType::Integer, json!(true));
        assert_eq!(ok(DataType::Boolean, json!(false)), "false");
        bad(DataType::Boolean, json!("yes"));
        assert_eq!(DataType::Integer.to_json("42"), json!(42));
        assert_eq!(DataType::Boolean.to_json("true"), json!(true));
        let j = ok(DataType::Json, json!({"a": [1, 2]}));
        assert_eq!(DataType::Json.to_json(&j), json!({"a": [1, 2]}));
        assert_eq!(ok(DataType::Date, json!("2024-02-29")), "2024-02-29");
        bad(DataType::Date, json!("2023-02-29"));
        bad(DataType::Date, json!("2023-2-3"));
        assert_eq!(
            ok(DataType::Datetime, json!("2024-05-01T10:00:00+02:00")),
            "2024-05-01T08:00:00Z"
        );
        bad(DataType::Datetime, json!("2024-05-01 10:00"));
        bad(DataType::String, json!(12));
        bad(DataType::String, json!("a\0b"));
    }

    /// Each `good` input normalises to its expected text; each `bad` input is refused.
    fn check(t: DataType, good: &[(&str, &str)], refused: &[&str]) {
        for (input, expected) in good {
            assert_eq!(ok(t, json!(input)), *expected, "{}", t.as_str());
        }
        for input in refused {
            bad(t, json!(input));
        }
    }

    #[test]
    fn card_numbers() {
        let good = [
            ("4111 1111-1111 1111", "4111111111111111"),
            ("378282246310005", "378282246310005"),
        ];
        // Luhn, too short, 20 digits, a letter
        let refused = [
            "4111111111111112",
            "41111111111",
            "41111111111111111111",
            "4111x11111111111",
        ];
        check(DataType::CardNumber, &good, &refused);
        bad(DataType::CardNumber, json!(4111111111111111u64));
    }

    #[test]
    fn ssns() {
        let good = [("123-45-6789", "123-45-6789"), ("123456789", "123-45-6789")];
        let refused = [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "123-00-4567",
            "123-45-0000",
            "078-05-1120",
            "12-345-6789",
            "123-45-678",
        ];
        check(DataType::Ssn, &good, &refused);
    }

    #[test]
    fn phones_are_e164() {
        let good = [
            ("+1 (415) 555-0123", "+14155550123"),
            ("+44 20 7946 0958", "+442079460958"),
        ];
        // no country code, leading 0, 16 digits, letters
        let refused = [
            "415-555-0123",
            "+0123456789",
            "+1234567890123456",
            "+1415555abcd",
        ];
        check(DataType::Phone, &good, &refused);
    }

    #[test]
    fn emails() {
        let good = [
            (" Ada.Lovelace@Example.COM ", "ada.lovelace@example.com"),
            ("a+tag@mail.example.co.uk", "a+tag@mail.example.co.uk"),
        ];
        let refused = [
            "ada",
            "ada@",
            "@example.com",
            "a@b",
            "a..b@example.com",
            "a@-x.com",
            "a b@example.com",
            "a@example.c0m",
        ];
        check(DataType::Email, &good, &refused);
    }

    #[test]
    fn ibans_and_bank_numbers() {
        let good = [
            ("gb82 west 1234 5698 7654 32", "GB82WEST12345698765432"),
            ("DE89370400440532013000", "DE89370400440532013000"),
        ];
        // mod 97, wrong length for GB
        let refused = ["GB82WEST12345698765433", "GB82WEST1234569876543"];
        check(DataType::Iban, &good, &refused);
        // The shortest and longest countries, one added lately, and check digits at both ends
        // of 02..=98.
        let good = [
            ("NO93 8601 1117 947", "NO9386011117947"),
            (
                "LC55HEMM000100010012001200023015",
                "LC55HEMM000100010012001200023015",
            ),
            (
                "HN88CABF00000000000250005469",
                "HN88CABF00000000000250005469",
            ),
            ("DE02370400440000000024", "DE02370400440000000024"),
            ("DE97370400440000000060", "DE97370400440000000060"),
            ("DE98370400440000000042", "DE98370400440000000042"),
        ];
        let refused = [
            // pass mod 97, but no country issues them
            "ZZ721234567890123",
            "US281234567890123456",
            // pass mod 97, but not at their country's length (NO has 15, DE 22)
            "NO8586011117947000",
            "DE5137040044053201300",
            // pass mod 97 with check digits 99, 00, 01: aliases of the good 02, 97, 98 above
            "DE99370400440000000024",
            "DE00370400440000000060",
            "DE01370400440000000042",
        ];
        check(DataType::Iban, &good, &refused);
        let good = [("011000015", "011000015"), ("121000358", "121000358")];
        // checksum, unassigned prefix
        check(
            DataType::UsRoutingNumber,
            &good,
            &["011000016", "991000013"],
        );
        check(
            DataType::BankAccount,
            &[("0001-2345 678", "00012345678")],
            &["12"],
        );
    }

    #[test]
    fn dates_of_birth() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap_or_default();
        assert_eq!(date_of_birth("1990-01-31", today), Ok("1990-01-31".into()));
        assert_eq!(date_of_birth("2026-11-23", today), Ok("2026-11-23".into()));
        assert!(date_of_birth("2026-11-24", today).is_err());
        assert!(date_of_birth("1990-02-30", today).is_err());
        assert!(date_of_birth("1850-01-01", today).is_err());
        bad(DataType::DateOfBirth, json!("2999-01-01"));
    }

    #[test]
    fn other_privacy_types() {
        assert_eq!(
            ok(DataType::Name, json!("  Ada   King\tLovelace ")),
            "Ada King Lovelace"
        );
        bad(DataType::Name, json!("   "));
        bad(DataType::Name, json!("12345"));
        assert_eq!(ok(DataType::CardExpiry, json!("4/29")), "04/2029");
        assert_eq!(ok(DataType::CardExpiry, json!("12/2031")), "12/2031");
        bad(DataType::CardExpiry, json!("13/29"));
        assert_eq!(ok(DataType::PostalCode, json!("sw1a 1aa")), "SW1A 1AA");
        assert_eq!(ok(DataType::PostalCode, json!("94105-1234")), "94105-1234");
        bad(DataType::PostalCode, json!("9"));
        assert_eq!(ok(DataType::IpAddress, json!("2001:DB8::1")), "2001:db8::1");
        bad(DataType::IpAddress, json!("300.1.1.1"));
        assert_eq!(ok(DataType::Passport, json!("x1234567")), "X1234567");
        bad(DataType::Passport, json!("12-34"));
        assert_eq!(
            ok(DataType::Address, json!(" 1 Main  St \n\n Springfield ")),
            "1 Main St\nSpringfield"
        );
    }

    #[test]
    fn reasons_never_quote_the_value() {
        let secret = "4111111111111112";
        for t in DataType::all() {
            if let Err(e) = t.normalize(&json!(secret)) {
                assert!(!e.reason.contains(secret));
                assert!(!e.to_string().contains("4111"));
            }
        }
    }

    #[test]
    fn masks_do_not_give_away_booleans_numbers_or_json_structure() {
        let masked = |t: DataType, mask: Mask, v: Value| t.mask(mask, &ok(t, v));
        let b = DataType::Boolean;
        assert_eq!(
            masked(b, b.default_mask(), json!(true)),
            masked(b, b.default_mask(), json!(false))
        );
        let i = DataType::Integer;
        assert_eq!(
            masked(i, Mask::Full, json!(7)),
            masked(i, Mask::Full, json!(-123456))
        );
        // A keep mask on an integer is the schema's choice, and shows what it says.
        assert_eq!(masked(i, Mask::KeepLast(2), json!(123456)), "XXXX56");
        let j = DataType::Json;
        assert_eq!(
            masked(j, Mask::Full, json!({"a": true})),
            masked(j, Mask::Full, json!({"bb": [null, false]}))
        );
        assert!(b.allows_mask(Mask::KeepFirst(2)).is_err());
        assert!(j.allows_mask(Mask::KeepLast(1)).is_err());
        assert!(b.allows_mask(Mask::Full).is_ok());
        // Text keeps its shape, as before.
        let s = DataType::Ssn;
        assert_eq!(
            masked(s, s.default_mask(), json!("123-45-6789")),
            "XXX-XX-6789"
        );
    }

    #[test]
    fn default_masks() {
        let m = |t: DataType, v: &str| t.default_mask().apply(&ok(t, json!(v)));
        assert_eq!(
            m(DataType::CardNumber, "4111111111111111"),
            "XXXXXXXXXXXX1111"
        );
        assert_eq!(m(DataType::Ssn, "123-45-6789"), "XXX-XX-6789");
        assert_eq!(m(DataType::Email, "jane@example.com"), "j***@example.com");
        assert_eq!(m(DataType::Phone, "+14155550123"), "+XXXXXXX0123");
        assert_eq!(m(DataType::Name, "Ada Lovelace"), "A*** L***");
        assert_eq!(m(DataType::DateOfBirth, "1990-01-31"), "XXXX-XX-XX");
        assert_eq!(m(DataType::PostalCode, "94105"), "94XXX");
        for t in DataType::all() {
            assert!(t.allows_mask(t.default_mask()).is_ok(), "{}", t.as_str());
        }
    }

    #[test]
    fn card_masks_never_show_more_than_last_four() {
        assert!(DataType::CardNumber.allows_mask(Mask::KeepLast(4)).is_ok());
        assert!(DataType::CardNumber.allows_mask(Mask::KeepLast(6)).is_err());
        assert!(
            DataType::CardNumber
                .allows_mask(Mask::KeepFirst(6))
                .is_err()
        );
        assert!(DataType::CardNumber.allows_mask(Mask::Initials).is_err());
        assert!(DataType::Ssn.allows_mask(Mask::Email).is_err());
    }
}
