//! Detokenize: tokens back to values at a redaction level, in request order.

use super::access::{DataAction, Gate};
use super::probe::Hit;
use super::records::{open_value, render};
use super::schema::Column;
use super::schema::Redaction;
use super::{Detail, LoadedVault, MAX_BATCH, Table, VaultError, VaultService};
use crate::db::DbError;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// One item of a detokenize answer.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum DetokenizeResult {
    Found {
        token: String,
        value: Value,
        table: String,
        column: String,
        redaction: Redaction,
    },
    Failed {
        token: String,
        error: ItemError,
    },
}

#[derive(Debug, Serialize)]
pub struct ItemError {
    pub code: &'static str,
}

/// Most bytes of values one detokenize answer may carry, as JSON (escaping included), counting a
/// value each time it is asked for (about two 16 MiB files). Beyond it the request is refused
/// (413): before any large value is read when the stored sizes already exceed it, else once the
/// values are open and before the answer is built; files are downloaded one at a time from
/// `…/records/{id}/files/{column}`.
pub const MAX_ANSWER_BYTES: usize = 48 << 20;

/// A distinct token: where it lives and the level its caller may see, or its item error.
type Decided<'v> = Result<(Hit, &'v Table, &'v Column, Redaction), &'static str>;
/// A distinct token's value as the answer shows it, or its item error.
type Rendered<'v> = Result<(Value, &'v Table, &'v Column, Redaction), &'static str>;

/// The answer to a detokenize past [`MAX_ANSWER_BYTES`] (413).
fn too_large() -> VaultError {
    VaultError::TooLarge(format!(
        "the values asked for exceed {} MiB in one answer; detokenize fewer tokens, or download files from `…/records/{{id}}/files/{{column}}`",
        MAX_ANSWER_BYTES >> 20
    ))
}

/// Bytes of a value written as JSON, counted without writing it anywhere.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(bytes.len());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` to a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

impl VaultService {
    /// Reads the values the lookup left out for their size ([`super::probe::INLINE_BYTES`]),
    /// once the caller may see them and the answer has room for every position that asks.
    async fn fetch_large<'v>(
        &self,
        v: &LoadedVault,
        mut decided: Vec<Decided<'v>>,
        slots: &[usize],
    ) -> Result<Vec<Decided<'v>>, VaultError> {
        let large: Vec<(Uuid, Uuid)> = decided
            .iter()
            .filter_map(|d| d.as_ref().ok())
            .filter(|(hit, ..)| hit.sealed.is_none())
            .map(|(hit, ..)| (hit.record, hit.column))
            .collect();
        // A plain value is copied into the answer at each position that asks for it; a masked
        // or redacted one is short whatever its size, but is still read (and held) once when it
        // is large. The stored sizes are a floor of the answer's size (escaping adds to it,
        // counted once the values are open, in `answer_bytes`): checked whether or not any value
        // is large, so that many copies of small values are refused before any is opened.
        let plain_copies = slots
            .iter()
            .filter_map(|s| decided[*s].as_ref().ok())
            .filter(|(.., level)| *level == Redaction::Plain)
            .map(|(hit, ..)| hit.size);
        let read_once = decided
            .iter()
            .filter_map(|d| d.as_ref().ok())
            .filter(|(.., level)| !large.is_empty() && *level != Redaction::Plain)
            .map(|(hit, ..)| hit.size);
        let floor = plain_copies.chain(read_once).fold(0, usize::saturating_add);
        if floor > MAX_ANSWER_BYTES {
            return Err(too_large());
        }
        if large.is_empty() {
            return Ok(decided);
        }
        let mut values = super::probe::sealed_values(&self.pool, v.id, &large).await?;
        for (hit, ..) in decided.iter_mut().filter_map(|d| d.as_mut().ok()) {
            if hit.sealed.is_none()
                && let Some((version, sealed)) = values.remove(&(hit.record, hit.column))
            {
                hit.key_version = version;
                hit.sealed = Some(sealed);
            }
        }
        Ok(decided)
    }

    /// `POST /v1/vaults/{vault}/detokenize`.
    pub async fn detokenize(
        &self,
        vault: &str,
        tokens: Vec<String>,
        level: Redaction,
        gate: &dyn Gate,
    ) -> Result<Vec<DetokenizeResult>, VaultError> {
        if tokens.is_empty() || tokens.len() > MAX_BATCH {
            return Err(VaultError::invalid(
                format!("`tokens` must hold 1 to {MAX_BATCH} tokens"),
                vec![Detail::field(
                    "tokens",
                    format!("has {} items", tokens.len()),
                )],
            ));
        }
        let v = self.load(vault).await?;
        // A token asked for more than once is looked up, decided and opened once.
        let mut distinct: Vec<&str> = Vec::new();
        let mut slot_of: std::collections::HashMap<&str, usize> = Default::default();
        let slots: Vec<usize> = tokens
            .iter()
            .map(|t| {
                *slot_of.entry(t.as_str()).or_insert_with(|| {
                    distinct.push(t.as_str());
                    distinct.len() - 1
                })
            })
            .collect();
        let hashes: Vec<Vec<u8>> = distinct.iter().map(|t| v.keys.hash_token(t)).collect();
        let hits = self
            .prober
            .probe(v.id, hashes)
            .await
            .map_err(|e| VaultError::Db(DbError::Shared(e)))?;
        let mut records: Vec<Uuid> = hits.iter().map(|h| h.record).collect();
        records.sort_unstable();
        records.dedup();
        let mut facts = self.row_facts(&v, &records, gate, true).await?;
        // The record's table is the token's column's (also when the facts were not loaded).
        for hit in &hits {
            if let (Some(f), Some((table, _))) =
                (facts.get_mut(&hit.record), v.column_by_id(&hit.column))
            {
                f.table = table.id;
            }
        }
        let mut found: Vec<Option<Hit>> = distinct.iter().map(|_| None).collect();
        for hit in hits {
            if let Some(slot) = found.get_mut(hit.index) {
                *slot = Some(hit);
            }
        }
        // Each distinct token: where it lives and the level its caller may see, or its error.
        let no_facts = super::access::RowFacts::default();
        let decided: Vec<Decided<'_>> = found
            .into_iter()
            .map(|hit| {
                let hit = hit.ok_or("not_found")?;
                let (table, column) = v.column_by_id(&hit.column).ok_or("not_found")?;
                let row_facts = facts.get(&hit.record).unwrap_or(&no_facts);
                let level = gate
                    .reveal(DataAction::Detokenize, &v, table, column, row_facts, level)
                    .ok_or("forbidden")?;
                Ok((hit, table, column, level))
            })
            .collect();
        let mut decided = self.fetch_large(&v, decided, &slots).await?;
        // Each distinct value once, opened and rendered; then the answer in request order.
        let mut rendered: Vec<Rendered<'_>> = decided
            .iter_mut()
            .map(|d| match d {
                Err(code) => Ok(Err(*code)),
                Ok((hit, table, column, level)) => {
                    let Some(sealed) = hit.sealed.take() else {
                        return Ok(Err("not_found"));
                    };
                    let canonical = open_value(
                        &v,
                        &table.id,
                        &column.id,
                        &hit.record,
                        hit.key_version,
                        &sealed,
                    )?;
                    let (value, level) = render(column, &canonical, *level);
                    Ok(Ok((value, *table, *column, level)))
                }
            })
            .collect::<Result<_, VaultError>>()?;
        // A value asked for more than once is copied for all but its last place, which takes
        // it: a file is not held twice.
        let mut uses = vec![0usize; rendered.len()];
        for &slot in &slots {
            uses[slot] += 1;
        }
        // The answer as it will be written, escaping included (a control character is six bytes
        // of JSON): measured on each distinct value once, before any copy is made.
        let answer = rendered
            .iter()
            .zip(&uses)
            .filter_map(|(r, n)| r.as_ref().ok().map(|(value, ..)| (value, *n)))
            .map(|(value, n)| json_len(value).saturating_mul(n))
            .fold(0, usize::saturating_add);
        if answer > MAX_ANSWER_BYTES {
            return Err(too_large());
        }
        let mut out = Vec::with_capacity(tokens.len());
        for (token, slot) in tokens.into_iter().zip(slots) {
            uses[slot] -= 1;
            let last = uses[slot] == 0;
            out.push(match &mut rendered[slot] {
                Err(code) => DetokenizeResult::Failed {
                    token,
                    error: ItemError { code },
                },
                Ok((value, table, column, level)) => DetokenizeResult::Found {
                    token,
                    value: if last {
                        std::mem::take(value)
                    } else {
                        value.clone()
                    },
                    table: table.name.clone(),
                    column: column.name.clone(),
                    redaction: *level,
                },
            });
        }
        Ok(out)
    }
}

impl VaultService {
    /// Detokenize for the sandbox: each token's value as text at the level the gate allows, or
    /// an error code (`not_found`, `forbidden`). Values live in zeroizing buffers.
    pub async fn detokenize_plain(
        &self,
        vault: &str,
        tokens: &[String],
        level: Redaction,
        gate: &dyn Gate,
    ) -> Result<Vec<Result<zeroize::Zeroizing<String>, String>>, VaultError> {
        let results = self.detokenize(vault, tokens.to_vec(), level, gate).await?;
        Ok(results
            .into_iter()
            .map(|r| match r {
                DetokenizeResult::Found { value, .. } => Ok(zeroize::Zeroizing::new(match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                })),
                DetokenizeResult::Failed { error, .. } => Err(error.code.to_string()),
            })
            .collect())
    }
}
