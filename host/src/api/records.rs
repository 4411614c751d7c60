//! Records, look-up, tokenize and detokenize.

use super::auth::{Action, Principal, authorize, note_table};
use super::error::ApiError;
use super::extract::{Json, QueryParams};
use super::{AppState, created};
use crate::governance::audit;
use crate::vault::{MAX_BATCH, NewRecord, Redaction};
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};

/// A JSON array of at most [`MAX_BATCH`] items, refused as it is read: a body of up to 23 MiB
/// holding `[{}, {}, …]` would otherwise become millions of records (over a gigabyte) before
/// the batch limit is checked.
fn at_most_a_batch<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Bounded<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "an array of at most {MAX_BATCH} items")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_BATCH));
            while let Some(item) = seq.next_element()? {
                if out.len() == MAX_BATCH {
                    return Err(serde::de::Error::invalid_length(MAX_BATCH + 1, &self));
                }
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Bounded(std::marker::PhantomData))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordIn {
    #[serde(default)]
    fields: Map<String, Value>,
    /// Purposes the record's owner consented to (replaces the stored list on update).
    #[serde(default)]
    consents: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InsertBody {
    #[serde(deserialize_with = "at_most_a_batch")]
    records: Vec<RecordIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupBody {
    column: String,
    #[serde(deserialize_with = "at_most_a_batch")]
    values: Vec<Value>,
    #[serde(default)]
    redaction: Option<String>,
    #[serde(default)]
    columns: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeBody {
    table: String,
    column: String,
    #[serde(deserialize_with = "at_most_a_batch")]
    values: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeBody {
    #[serde(deserialize_with = "at_most_a_batch")]
    tokens: Vec<String>,
    #[serde(default)]
    redaction: Option<String>,
}

fn redaction(level: Option<&str>) -> Result<Redaction, ApiError> {
    match level {
        None => Ok(Redaction::Default),
        Some(text) => Redaction::parse(text).ok_or_else(|| {
            ApiError::invalid("`redaction` must be one of plain, masked, redacted, default")
        }),
    }
}

pub async fn insert(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((vault, table)): Path<(String, String)>,
    Json(body): Json<InsertBody>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::InsertRecords, Some(&vault))?;
    note_table(&table);
    let records = body
        .records
        .into_iter()
        .map(|r| NewRecord {
            fields: r.fields,
            consents: r.consents.unwrap_or_default(),
        })
        .collect();
    let inserted = s
        .vault
        .insert_records(&vault, &table, records, &p.gate(&s))
        .await?;
    audit::note(|e| {
        for r in &inserted {
            e.record(r.id);
        }
    });
    Ok(created(json!({"records": inserted})))
}

pub async fn read(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((vault, table, id)): Path<(String, String, String)>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ReadRecord, Some(&vault))?;
    note_table(&table);
    let q = query.only(&["redaction", "columns"])?;
    let level = redaction(q.get("redaction").map(String::as_str))?;
    let columns = q.get("columns").map(|c| {
        c.split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    });
    let view = s
        .vault
        .read_record(&vault, &table, &id, level, columns, &p.gate(&s))
        .await?;
    Ok(axum::Json(view).into_response())
}

pub async fn lookup(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((vault, table)): Path<(String, String)>,
    Json(body): Json<LookupBody>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::LookupRecords, Some(&vault))?;
    note_table(&table);
    let level = redaction(body.redaction.as_deref())?;
    let records = s
        .vault
        .lookup(
            &vault,
            &table,
            &body.column,
            &body.values,
            level,
            body.columns,
            &p.gate(&s),
        )
        .await?;
    Ok(axum::Json(json!({"records": records})).into_response())
}

pub async fn update(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((vault, table, id)): Path<(String, String, String)>,
    Json(body): Json<RecordIn>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::UpdateRecord, Some(&vault))?;
    note_table(&table);
    let updated = s
        .vault
        .update_record(&vault, &table, &id, body.fields, body.consents, &p.gate(&s))
        .await?;
    Ok(axum::Json(updated).into_response())
}

pub async fn delete(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((vault, table, id)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    authorize(&s, &p, Action::DeleteRecord, Some(&vault))?;
    note_table(&table);
    s.vault
        .delete_record(&vault, &table, &id, &p.gate(&s))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn tokenize(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(vault): Path<String>,
    Json(body): Json<TokenizeBody>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::Tokenize, Some(&vault))?;
    note_table(&body.table);
    let tokens = s
        .vault
        .tokenize(&vault, &body.table, &body.column, body.values, &p.gate(&s))
        .await?;
    Ok(axum::Json(json!({"tokens": tokens})).into_response())
}

pub async fn detokenize(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(vault): Path<String>,
    Json(body): Json<DetokenizeBody>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::Detokenize, Some(&vault))?;
    let level = redaction(body.redaction.as_deref())?;
    let results = s
        .vault
        .detokenize(&vault, body.tokens, level, &p.gate(&s))
        .await?;
    Ok(axum::Json(json!({"results": results})).into_response())
}
