//! Detokenize: tokens back to values at a redaction level, in request order.

use super::access::{DataAction, Gate};
use super::probe::Hit;
use super::records::{open_value, render};
use super::schema::Redaction;
use super::{Detail, MAX_BATCH, VaultError, VaultService};
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

impl VaultService {
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
        let hashes: Vec<Vec<u8>> = tokens.iter().map(|t| v.keys.hash_token(t)).collect();
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
        let mut found: Vec<Option<Hit>> = tokens.iter().map(|_| None).collect();
        for hit in hits {
            if let Some(slot) = found.get_mut(hit.index) {
                *slot = Some(hit);
            }
        }
        let no_facts = super::access::RowFacts::default();
        let mut out = Vec::with_capacity(tokens.len());
        for (token, hit) in tokens.into_iter().zip(found) {
            let located = hit.and_then(|hit| {
                let (t, c) = v.column_by_id(&hit.column)?;
                Some((hit, t, c))
            });
            let Some((hit, table, column)) = located else {
                out.push(DetokenizeResult::Failed {
                    token,
                    error: ItemError { code: "not_found" },
                });
                continue;
            };
            let record = hit.record;
            let row_facts = facts.get(&record).unwrap_or(&no_facts);
            let Some(level) =
                gate.reveal(DataAction::Detokenize, &v, table, column, row_facts, level)
            else {
                out.push(DetokenizeResult::Failed {
                    token,
                    error: ItemError { code: "forbidden" },
                });
                continue;
            };
            let canonical = open_value(
                &v,
                &table.id,
                &column.id,
                &record,
                hit.key_version,
                &hit.sealed,
            )?;
            let (value, level) = render(column, &canonical, level);
            out.push(DetokenizeResult::Found {
                token,
                value,
                table: table.name.clone(),
                column: column.name.clone(),
                redaction: level,
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
