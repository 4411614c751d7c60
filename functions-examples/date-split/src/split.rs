//! The JSON rewrite: replaces date fields with their parts.
//!
//! Pure code: the vault lookup is passed in as a closure so the rewrite is
//! unit-tested natively.

use serde_json::{Map, Value};
use strongroom_guest::FunctionError;

use crate::date::{DateParts, parse_iso};

/// Request header naming the fields to split: comma-separated paths such as
/// `$.date_of_birth, $.patient.dob`.
pub const FIELD_HEADER: &str = "x-date-split-field";

/// The field split when the request names none.
pub const DEFAULT_FIELD: &str = "$.date_of_birth";

/// A field path: object keys from the root of the JSON body.
pub type FieldPath = Vec<String>;

/// Parses the comma-separated field paths of [`FIELD_HEADER`]
/// (`$.a.b`, `a.b` and `$.a` are accepted), or [`DEFAULT_FIELD`] if absent.
///
/// # Errors
///
/// [`FunctionError::BadRequest`] for an empty path or array syntax.
pub fn parse_fields(header: Option<&str>) -> Result<Vec<FieldPath>, FunctionError> {
    header
        .unwrap_or(DEFAULT_FIELD)
        .split(',')
        .map(|path| {
            let path = path.trim();
            let keys = path.strip_prefix("$.").unwrap_or(path);
            let keys: FieldPath = keys.split('.').map(str::to_owned).collect();
            if keys
                .iter()
                .any(|key| key.is_empty() || key.contains(['[', ']', '$', '*']))
            {
                return Err(FunctionError::BadRequest(format!(
                    "{FIELD_HEADER}: `{path}` is not a path of object keys like `$.a.b`"
                )));
            }
            Ok(keys)
        })
        .collect()
}

/// Replaces each field at `paths` in `body` by `{field}_day`,
/// `{field}_month`, `{field}_year` (numbers) and, for a datetime,
/// `{field}_time` (a string).
///
/// A field holding an ISO date is used as-is; any other string is taken for
/// a token and passed to `detokenize`. Missing or `null` fields are left
/// alone. Returns how many fields were split.
///
/// # Errors
///
/// [`FunctionError::BadRequest`] when a field is not a string or its value
/// is not an ISO date; any error `detokenize` returns. Error texts name the
/// field, never its value.
pub fn split_dates(
    body: &mut Value,
    paths: &[FieldPath],
    mut detokenize: impl FnMut(&str) -> Result<String, FunctionError>,
) -> Result<usize, FunctionError> {
    let mut split = 0;
    for path in paths {
        let Some((name, parents)) = path.split_last() else {
            continue;
        };
        let Some(object) = parents
            .iter()
            .try_fold(&mut *body, |value, key| value.get_mut(key))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        let raw = match object.get(name) {
            None | Some(Value::Null) => continue,
            Some(Value::String(raw)) => raw.clone(),
            Some(_) => {
                return Err(FunctionError::BadRequest(format!(
                    "`{}` must be a string holding a date or a token",
                    path.join(".")
                )));
            }
        };
        let parts = match parse_iso(&raw) {
            Ok(parts) => parts,
            Err(_) => parse_iso(&detokenize(&raw)?).map_err(|err| {
                FunctionError::BadRequest(format!(
                    "`{}` is not an ISO 8601 date: {err}",
                    path.join(".")
                ))
            })?,
        };
        object.remove(name);
        insert_parts(object, name, parts);
        split += 1;
    }
    Ok(split)
}

fn insert_parts(object: &mut Map<String, Value>, name: &str, parts: DateParts) {
    object.insert(format!("{name}_day"), parts.day.into());
    object.insert(format!("{name}_month"), parts.month.into());
    object.insert(format!("{name}_year"), parts.year.into());
    if let Some(time) = parts.time {
        object.insert(format!("{name}_time"), time.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn no_vault(_: &str) -> Result<String, FunctionError> {
        Err(FunctionError::Internal("vault not expected".into()))
    }

    #[test]
    fn parses_field_lists() {
        assert_eq!(
            parse_fields(None).ok(),
            Some(vec![vec!["date_of_birth".to_owned()]])
        );
        assert_eq!(
            parse_fields(Some("$.a.b, c")).ok(),
            Some(vec![
                vec!["a".to_owned(), "b".to_owned()],
                vec!["c".to_owned()]
            ])
        );
        assert!(parse_fields(Some("$.a[0]")).is_err());
        assert!(parse_fields(Some("$.a,,b")).is_err());
    }

    #[test]
    fn splits_a_plain_date() {
        let mut body = json!({"name": "Ada", "date_of_birth": "1990-05-17"});
        let fields = parse_fields(None).unwrap_or_default();
        assert_eq!(split_dates(&mut body, &fields, no_vault).ok(), Some(1));
        assert_eq!(
            body,
            json!({"name": "Ada", "date_of_birth_day": 17, "date_of_birth_month": 5, "date_of_birth_year": 1990})
        );
    }

    #[test]
    fn detokenizes_nested_datetimes() {
        let mut body = json!({"patient": {"seen_at": "tok_1"}});
        let fields = parse_fields(Some("$.patient.seen_at")).unwrap_or_default();
        let vault = |token: &str| {
            assert_eq!(token, "tok_1");
            Ok("2024-01-31T08:15:00Z".to_owned())
        };
        assert_eq!(split_dates(&mut body, &fields, vault).ok(), Some(1));
        assert_eq!(
            body,
            json!({"patient": {"seen_at_day": 31, "seen_at_month": 1, "seen_at_year": 2024, "seen_at_time": "08:15:00Z"}})
        );
    }

    #[test]
    fn leaves_missing_fields_and_rejects_bad_values() {
        let fields = parse_fields(None).unwrap_or_default();
        let mut body = json!({"other": 1, "date_of_birth": null});
        assert_eq!(split_dates(&mut body, &fields, no_vault).ok(), Some(0));
        assert_eq!(body, json!({"other": 1, "date_of_birth": null}));

        let mut body = json!({"date_of_birth": 19900517});
        assert!(matches!(
            split_dates(&mut body, &fields, no_vault),
            Err(FunctionError::BadRequest(_))
        ));

        let mut body = json!({"date_of_birth": "tok_1"});
        let result = split_dates(&mut body, &fields, |_| Ok("17/05/1990".to_owned()));
        match result {
            Err(FunctionError::BadRequest(text)) => assert!(!text.contains("17/05")),
            other => panic!("expected a bad request, got {other:?}"),
        }
    }
}
