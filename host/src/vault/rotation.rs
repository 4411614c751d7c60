//! Background re-encryption after a data-key rotation.
//!
//! One task per vault walks the values sealed under older key versions in small batches
//! (`FOR UPDATE SKIP LOCKED`, so it never blocks writers for long) and re-seals them under the
//! active version. Progress is visible in `GET /v1/vaults/{vault}/keys`. After a restart the
//! server resumes unfinished work.

use super::VaultError;
use super::keys::value_aad;
use super::records::open_value;
use super::store::load_vault;
use crate::crypto::{MasterKeyRing, seal};
use deadpool_postgres::Pool;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

const BATCH: i64 = 500;

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
            match result {
                Ok(n) => tracing::info!(vault = %vault, reencrypted = n, "re-encryption finished"),
                Err(e) => {
                    tracing::warn!(vault = %vault, error = %e, "re-encryption stopped; it resumes at the next start or rotation")
                }
            }
        });
    }

    /// Resumes every vault with values under an old key version.
    pub fn resume_all(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            let Ok(client) = me.pool.get().await else {
                return;
            };
            let Ok(rows) = client
                .query(
                    "SELECT v.id FROM vaults v WHERE EXISTS
                     (SELECT 1 FROM record_values rv WHERE rv.vault_id = v.id AND rv.key_version < v.active_key_version)",
                    &[],
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

    async fn run(&self, vault: Uuid) -> Result<u64, VaultError> {
        let mut total = 0u64;
        loop {
            // A pool busy with requests makes this background job wait, not stop.
            let mut client = match self.pool.get().await {
                Ok(c) => c,
                Err(deadpool_postgres::PoolError::Timeout(_)) => {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let Some(name) = client
                .query_opt("SELECT name FROM vaults WHERE id = $1", &[&vault])
                .await?
                .map(|r| r.get::<_, String>(0))
            else {
                return Ok(total); // vault deleted
            };
            let v = load_vault(&client, &self.ring, &name).await?;
            let (version, key) = v.keys.active();
            let tx = client.transaction().await?;
            let rows = tx
                .query(
                    "SELECT rv.record_id, rv.column_id, rv.key_version, rv.sealed, r.table_id
                     FROM record_values rv JOIN records r ON r.id = rv.record_id
                     WHERE rv.vault_id = $1 AND rv.key_version < $2
                     LIMIT $3 FOR UPDATE OF rv SKIP LOCKED",
                    &[&vault, &version, &BATCH],
                )
                .await?;
            if rows.is_empty() {
                return Ok(total);
            }
            let (mut rids, mut cids, mut sealed) = (Vec::new(), Vec::new(), Vec::new());
            for row in &rows {
                let (record, column, table): (Uuid, Uuid, Uuid) =
                    (row.get(0), row.get(1), row.get(4));
                let plain = open_value(&v, &table, &column, &record, row.get(2), row.get(3))?;
                sealed.push(seal(
                    key,
                    plain.as_bytes(),
                    &value_aad(&v.id, &table, &column, &record, version),
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
            total += rows.len() as u64;
            tracing::debug!(vault = %vault, reencrypted = total, "re-encryption progress");
        }
    }
}
