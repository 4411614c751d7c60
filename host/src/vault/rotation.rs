//! Background re-encryption after a data-key rotation.
//!
//! One task per vault walks its tables in record-id order, in small batches, and re-seals the
//! values sealed under older key versions under the active one (`FOR UPDATE SKIP LOCKED`, so it
//! never blocks writers for long). It walks again until a walk finds no older value, then
//! records that in `vaults.reencrypted_version`. Progress is visible in
//! `GET /v1/vaults/{vault}/keys`. After a restart the server resumes the vaults whose walk did
//! not finish.

use super::keys::value_aad;
use super::records::open_value;
use super::store::load_vault;
use super::{LoadedVault, VaultError};
use crate::crypto::{MasterKeyRing, seal};
use deadpool_postgres::Pool;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// Records per batch (each holds at most one value per column).
const BATCH: i64 = 200;
/// Bytes of older values per batch. A batch holds each value three times (sealed, opened,
/// re-sealed), so with files (up to 16 MiB each) a batch of 200 records could need gigabytes;
/// it stops at the record that crosses this, and always takes at least one.
const BATCH_BYTES: i64 = 16 << 20;

/// How many of `ids` (in walk order) one batch takes: records up to and including the one whose
/// older values bring the total past `budget`. `old` gives the older values' bytes of the
/// records that have any.
fn batch_len(ids: &[Uuid], old: &std::collections::HashMap<Uuid, i64>, budget: i64) -> usize {
    let mut bytes = 0i64;
    for (i, id) in ids.iter().enumerate() {
        bytes = bytes.saturating_add(old.get(id).copied().unwrap_or(0));
        if bytes >= budget {
            return i + 1;
        }
    }
    ids.len()
}

#[derive(Clone)]
pub(super) struct Worker {
    pool: Pool,
    ring: Arc<MasterKeyRing>,
    running: Arc<Mutex<HashSet<Uuid>>>,
}

impl Worker {
    pub fn new(pool: Pool, ring: Arc<MasterKeyRing>) -> Worker {
        Worker {
            pool,
            ring,
            running: Arc::default(),
        }
    }

    /// Starts re-encrypting `vault` unless a task already does.
    pub fn start(&self, vault: Uuid) {
        let fresh = self
            .running
            .lock()
            .map(|mut r| r.insert(vault))
            .unwrap_or(false);
        if !fresh {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let result = me.run(vault).await;
            if let Ok(mut r) = me.running.lock() {
                r.remove(&vault);
            }
            // A rotation that came after the last walk but before the line above found this
            // task still running, so it did not start another: check once more.
            if result.is_ok() {
                me.resume(Some(vault));
            }
            match result {
                Ok(n) => tracing::info!(vault = %vault, reencrypted = n, "re-encryption finished"),
                Err(e) => {
                    tracing::warn!(vault = %vault, error = %e, "re-encryption stopped; it resumes at the next start or rotation")
                }
            }
        });
    }

    /// Resumes every vault whose last complete walk was under an older key version (or never
    /// ran: vaults from before migration 0007).
    pub fn resume_all(&self) {
        self.resume(None);
    }

    /// Starts a walk for each vault (`only` that one, if given) that needs one.
    fn resume(&self, only: Option<Uuid>) {
        let me = self.clone();
        tokio::spawn(async move {
            let Ok(client) = me.pool.get().await else {
                return;
            };
            let Ok(rows) = client
                .query(
                    "SELECT id FROM vaults WHERE reencrypted_version IS DISTINCT FROM active_key_version
                     AND ($1::uuid IS NULL OR id = $1)",
                    &[&only],
                )
                .await
            else {
                return;
            };
            for row in rows {
                me.start(row.get(0));
            }
        });
    }

    /// A pool connection; a pool busy with requests makes this background job wait, not stop.
    async fn client(&self) -> Result<deadpool_postgres::Object, VaultError> {
        loop {
            match self.pool.get().await {
                Ok(c) => return Ok(c),
                Err(deadpool_postgres::PoolError::Timeout(_)) => {
                    tokio::time::sleep(Duration::from_secs(1)).await
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The vault as it is now, or `None` once it is deleted.
    async fn load(
        &self,
        client: &deadpool_postgres::Object,
        vault: Uuid,
    ) -> Result<Option<LoadedVault>, VaultError> {
        let Some(row) = client
            .query_opt("SELECT name FROM vaults WHERE id = $1", &[&vault])
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(load_vault(client, &self.ring, row.get(0)).await?))
    }

    /// Walks every table of `vault` in record-id order, re-sealing values under older key
    /// versions, until a walk finds none; then records the version in
    /// `vaults.reencrypted_version`. A walk that began before another rotation does not count.
    async fn run(&self, vault: Uuid) -> Result<u64, VaultError> {
        let mut total = 0u64;
        loop {
            let client = self.client().await?;
            let Some(v) = self.load(&client, vault).await? else {
                return Ok(total); // vault deleted
            };
            drop(client);
            let walk_version = v.keys.active_version;
            let (mut seen, mut resealed) = (0u64, 0u64);
            for table in v.tables.iter().map(|t| t.id) {
                let mut after = Uuid::nil();
                loop {
                    let mut client = self.client().await?;
                    let Some(v) = self.load(&client, vault).await? else {
                        return Ok(total);
                    };
                    let Some(batch) = self.batch(&mut client, &v, &table, after).await? else {
                        break; // end of the table
                    };
                    after = batch.last;
                    seen += batch.old;
                    resealed += batch.resealed;
                    total += batch.resealed;
                }
            }
            tracing::debug!(vault = %vault, reencrypted = total, "re-encryption walk finished");
            if seen == 0 {
                let client = self.client().await?;
                let marked = client
                    .execute(
                        "UPDATE vaults SET reencrypted_version = $2 WHERE id = $1 AND active_key_version = $2",
                        &[&vault, &walk_version],
                    )
                    .await?;
                if marked == 1 {
                    return Ok(total);
                }
                // Rotated again during the walk (or deleted: the next load says so).
            } else if resealed == 0 {
                // Every old value was locked by a writer (which re-seals it under the active
                // version) or by a transaction that may roll back: look again shortly.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Re-seals the older values of the next `BATCH` records of `table` after `after`. `None`
    /// at the end of the table.
    async fn batch(
        &self,
        client: &mut deadpool_postgres::Object,
        v: &LoadedVault,
        table: &Uuid,
        after: Uuid,
    ) -> Result<Option<Batch>, VaultError> {
        let (version, key) = v.keys.active();
        let tx = client.transaction().await?;
        let mut ids: Vec<Uuid> = tx
            .query(
                "SELECT id FROM records WHERE table_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                &[table, &after, &BATCH],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if ids.is_empty() {
            return Ok(None);
        }
        // Per record: its values under older versions, and their bytes (read from each value's
        // header, not the value).
        let mut counts = std::collections::HashMap::new();
        let mut bytes = std::collections::HashMap::new();
        for row in tx
            .query(
                "SELECT record_id, count(*), sum(octet_length(sealed))::bigint FROM record_values
                 WHERE record_id = ANY($1) AND key_version < $2 GROUP BY record_id",
                &[&ids, &version],
            )
            .await?
        {
            counts.insert(row.get::<_, Uuid>(0), row.get::<_, i64>(1));
            bytes.insert(row.get::<_, Uuid>(0), row.get::<_, i64>(2));
        }
        ids.truncate(batch_len(&ids, &bytes, BATCH_BYTES));
        let Some(&last) = ids.last() else {
            return Ok(None);
        };
        let old: i64 = ids.iter().filter_map(|id| counts.get(id)).sum();
        if old == 0 {
            return Ok(Some(Batch {
                last,
                old: 0,
                resealed: 0,
            }));
        }
        // SKIP LOCKED: a value a writer holds is re-sealed by that writer, or seen by the next walk.
        let rows = tx
            .query(
                "SELECT record_id, column_id, key_version, sealed FROM record_values
                 WHERE record_id = ANY($1) AND key_version < $2 FOR UPDATE SKIP LOCKED",
                &[&ids, &version],
            )
            .await?;
        let (mut rids, mut cids, mut sealed) = (Vec::new(), Vec::new(), Vec::new());
        for row in &rows {
            let (record, column): (Uuid, Uuid) = (row.get(0), row.get(1));
            let plain = open_value(v, table, &column, &record, row.get(2), row.get(3))?;
            sealed.push(seal(
                key,
                plain.as_bytes(),
                &value_aad(&v.id, table, &column, &record, version),
            ));
            rids.push(record);
            cids.push(column);
        }
        tx.execute(
            "UPDATE record_values rv SET sealed = x.s, key_version = $4
             FROM unnest($1::uuid[], $2::uuid[], $3::bytea[]) AS x(r, c, s)
             WHERE rv.record_id = x.r AND rv.column_id = x.c",
            &[&rids, &cids, &sealed, &version],
        )
        .await?;
        tx.commit().await?;
        tracing::debug!(vault = %v.id, resealed = rows.len(), "re-encryption progress");
        Ok(Some(Batch {
            last,
            old: old as u64,
            resealed: rows.len() as u64,
        }))
    }
}

/// One batch of a walk: the last record id it covered, the values it found under older
/// versions, and how many of them it re-sealed.
struct Batch {
    last: Uuid,
    old: u64,
    resealed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_stops_at_the_record_that_crosses_its_bytes_and_takes_at_least_one() {
        let ids: Vec<Uuid> = (0..5u128).map(Uuid::from_u128).collect();
        let old = |sizes: &[(usize, i64)]| {
            sizes
                .iter()
                .map(|(i, b)| (ids[*i], *b))
                .collect::<std::collections::HashMap<_, _>>()
        };
        // Small values: the whole list.
        assert_eq!(batch_len(&ids, &old(&[(0, 10), (3, 10)]), 100), 5);
        // Records without older values cost nothing; the third brings it to the budget.
        assert_eq!(batch_len(&ids, &old(&[(0, 40), (2, 60), (4, 1)]), 100), 3);
        // One record larger than the budget is a batch of its own.
        assert_eq!(batch_len(&ids, &old(&[(0, 500), (1, 1)]), 100), 1);
        assert_eq!(batch_len(&ids, &old(&[]), 100), 5);
    }
}
