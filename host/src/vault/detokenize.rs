//! Detokenize: tokens back to values at a redaction level, in request order.

use super::access::{DataAction, Gate};
use super::records::{open_value, render};
use super::schema::Redaction;
use super::{Detail, MAX_BATCH, VaultError, VaultService};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
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
        let client = self.pool.get().await?;
        // One index probe per token, whatever the planner's statistics say (a filter over the
        // whole vault is what `token_hash = ANY($2)` got on fresh tables).
        let stmt = client
            .prepare_cached(
                "SELECT x.h, rv.record_id, rv.column_id, rv.key_version, rv.sealed
                 FROM unnest($2::bytea[]) AS x(h)
                 CROSS JOIN LATERAL (SELECT record_id, column_id, key_version, sealed FROM record_values
                                     WHERE vault_id = $1 AND token_hash = x.h LIMIT 1) rv",
            )
            .await?;
        let rows = client.query(&stmt, &[&v.id, &hashes]).await?;
        drop(client);
        let found: HashMap<Vec<u8>, &tokio_postgres::Row> =
            rows.iter().map(|r| (r.get(0), r)).collect();
        let mut records: Vec<Uuid> = rows.iter().map(|r| r.get(1)).collect();
        records.sort_unstable();
        records.dedup();
        let mut facts = self.row_facts(&v, &records, gate, true).await?;
        // The record's table is the token's column's (also when the facts were not loaded).
        for row in &rows {
            if let (Some(f), Some((table, _))) = (
                facts.get_mut(&row.get::<_, Uuid>(1)),
                v.column_by_id(&row.get::<_, Uuid>(2)),
            ) {
                f.table = table.id;
            }
        }
        let no_facts = super::access::RowFacts::default();
        let mut out = Vec::with_capacity(tokens.len());
        for (token, hash) in tokens.into_iter().zip(hashes) {
            let located = found.get(&hash).and_then(|row| {
                let column_id: Uuid = row.get(2);
                v.column_by_id(&column_id).map(|(t, c)| (row, t, c))
            });
            let Some((row, table, column)) = located else {
                out.push(DetokenizeResult::Failed {
                    token,
                    error: ItemError { code: "not_found" },
                });
                continue;
            };
            let record: Uuid = row.get(1);
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
            let canonical = open_value(&v, &table.id, &column.id, &record, row.get(3), row.get(4))?;
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
