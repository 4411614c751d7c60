//! A vault's keys and their rotation.
//!
//! Each vault has an index key and versioned data keys, all wrapped under the master-key ring.
//! - Data keys seal values (AES-256-GCM). Rotation adds a version for new writes; the
//!   background worker re-encrypts older values ([`super::rotation`]).
//! - The index key never rotates, so deterministic tokens and blind indexes stay stable. Every
//!   keyed hash and token key is an HKDF sub-key of it, one per purpose (and per token scope).

use super::{LoadedVault, VaultError, VaultService};
use crate::crypto::{Key, derive, keyed_hash};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// Unwrapped keys of one vault. Every [`Key`] zeroizes when the cache entry drops.
#[derive(Debug)]
pub(super) struct VaultKeys {
    pub active_version: i32,
    pub data: BTreeMap<i32, Key>,
    /// hashes tokens for look-up (`tokens.token_hash`, `record_values.token_hash`)
    pub token_hash: Key,
    /// blind indexes of values (`record_values.blind_index`)
    pub blind: Key,
    /// binds a token to its (scope, value) (`tokens.binding`)
    pub binding: Key,
    /// per token scope: (deterministic token key, FF1 key)
    pub scopes: HashMap<String, (Key, Key)>,
}

impl VaultKeys {
    pub fn new(
        index: &Key,
        data: BTreeMap<i32, Key>,
        active_version: i32,
        scopes: &[String],
    ) -> VaultKeys {
        VaultKeys {
            active_version,
            data,
            token_hash: derive(index, b"token-hash"),
            blind: derive(index, b"blind-index"),
            binding: derive(index, b"token-binding"),
            scopes: scopes
                .iter()
                .map(|s| {
                    let det = derive(index, format!("det-token:{s}").as_bytes());
                    let ff1 = derive(index, format!("ff1:{s}").as_bytes());
                    (s.clone(), (det, ff1))
                })
                .collect(),
        }
    }

    pub fn hash_token(&self, token: &str) -> Vec<u8> {
        keyed_hash(&self.token_hash, &[token.as_bytes()]).to_vec()
    }

    pub fn blind_index(&self, column: &Uuid, canonical: &str) -> Vec<u8> {
        keyed_hash(&self.blind, &[column.as_bytes(), canonical.as_bytes()]).to_vec()
    }

    pub fn binding(&self, scope: &str, canonical: &str) -> Vec<u8> {
        keyed_hash(&self.binding, &[scope.as_bytes(), canonical.as_bytes()]).to_vec()
    }

    pub fn active(&self) -> (i32, &Key) {
        // INVARIANT: load_vault refuses a vault whose active version has no key.
        let key = &self.data[&self.active_version];
        (self.active_version, key)
    }
}

/// Associated data for a sealed value: it opens only at this vault, table, column, record
/// and key version.
pub(super) fn value_aad(
    vault: &Uuid,
    table: &Uuid,
    column: &Uuid,
    record: &Uuid,
    version: i32,
) -> Vec<u8> {
    let mut aad = Vec::with_capacity(4 + 64 + 4);
    aad.extend_from_slice(b"sr1v");
    for id in [vault, table, column, record] {
        aad.extend_from_slice(id.as_bytes());
    }
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

pub(super) fn index_key_context(vault: &Uuid) -> Vec<u8> {
    [b"sr1-index-key".as_slice(), vault.as_bytes()].concat()
}

pub(super) fn data_key_context(vault: &Uuid, version: i32) -> Vec<u8> {
    [
        b"sr1-data-key".as_slice(),
        vault.as_bytes(),
        &version.to_be_bytes(),
    ]
    .concat()
}

/// `GET /v1/vaults/{vault}/keys`.
#[derive(Debug, Serialize)]
pub struct KeysReport {
    pub active_version: i32,
    pub versions: Vec<KeyVersionInfo>,
    /// Values still sealed under an older version than the active one.
    pub reencryption_pending: i64,
    pub reencryption_done: bool,
}

#[derive(Debug, Serialize)]
pub struct KeyVersionInfo {
    pub version: i32,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub master_key_id: String,
    pub active: bool,
    /// Values currently sealed under this version.
    pub values: i64,
}

impl VaultService {
    /// Key versions of a vault and the progress of re-encryption.
    pub async fn keys(&self, vault: &str) -> Result<KeysReport, VaultError> {
        let v = self.load(vault).await?;
        let client = self.pool.get().await?;
        // One pass over the vault's values (there is no key-version index: migration 0007).
        let rows = client
            .query(
                "SELECT k.version, k.created_at, k.master_key_id, coalesce(c.n, 0)
                 FROM vault_data_keys k
                 LEFT JOIN (SELECT key_version, count(*) AS n FROM record_values WHERE vault_id = $1
                            GROUP BY key_version) c ON c.key_version = k.version
                 WHERE k.vault_id = $1 ORDER BY k.version",
                &[&v.id],
            )
            .await?;
        let active = v.keys.active_version;
        let versions: Vec<KeyVersionInfo> = rows
            .iter()
            .map(|r| KeyVersionInfo {
                version: r.get(0),
                created_at: r.get(1),
                master_key_id: r.get(2),
                active: r.get::<_, i32>(0) == active,
                values: r.get(3),
            })
            .collect();
        let pending: i64 = versions
            .iter()
            .filter(|k| k.version < active)
            .map(|k| k.values)
            .sum();
        Ok(KeysReport {
            active_version: active,
            versions,
            reencryption_pending: pending,
            reencryption_done: pending == 0,
        })
    }

    /// Adds a data-key version for new writes and starts re-encrypting older values.
    pub async fn rotate_data_key(&self, vault: &str) -> Result<KeysReport, VaultError> {
        let v = self.load(vault).await?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Lock the vault row so concurrent rotations get consecutive versions.
        let row = tx
            .query_one(
                "SELECT active_key_version FROM vaults WHERE id = $1 FOR UPDATE",
                &[&v.id],
            )
            .await?;
        let version: i32 = row.get::<_, i32>(0) + 1;
        let key = Key::generate();
        let (master_id, wrapped) = self.ring.wrap(&key, &data_key_context(&v.id, version));
        tx.execute(
            "INSERT INTO vault_data_keys (vault_id, version, wrapped, master_key_id) VALUES ($1, $2, $3, $4)",
            &[&v.id, &version, &wrapped, &master_id],
        )
        .await?;
        tx.execute(
            "UPDATE vaults SET active_key_version = $2 WHERE id = $1",
            &[&v.id, &version],
        )
        .await?;
        tx.commit().await?;
        drop(client);
        self.invalidate(vault);
        tracing::info!(vault = %v.id, version, "rotated data key");
        self.rotation.start(v.id);
        self.keys(vault).await
    }

    /// Re-wraps every vault's keys under the active master key.
    pub async fn rotate_master_key(&self) -> Result<(String, u64), VaultError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let mut rewrapped = 0u64;
        let vaults = tx
            .query(
                "SELECT id, index_key_wrapped, index_key_master_id FROM vaults FOR UPDATE",
                &[],
            )
            .await?;
        for row in vaults {
            let id: Uuid = row.get(0);
            let ctx = index_key_context(&id);
            let key = self.ring.unwrap_key(row.get(2), row.get(1), &ctx)?;
            let (mid, wrapped) = self.ring.wrap(&key, &ctx);
            tx.execute(
                "UPDATE vaults SET index_key_wrapped = $2, index_key_master_id = $3 WHERE id = $1",
                &[&id, &wrapped, &mid],
            )
            .await?;
            rewrapped += 1;
        }
        let data_keys = tx
            .query(
                "SELECT vault_id, version, wrapped, master_key_id FROM vault_data_keys FOR UPDATE",
                &[],
            )
            .await?;
        for row in data_keys {
            let (id, version): (Uuid, i32) = (row.get(0), row.get(1));
            let ctx = data_key_context(&id, version);
            let key = self.ring.unwrap_key(row.get(3), row.get(2), &ctx)?;
            let (mid, wrapped) = self.ring.wrap(&key, &ctx);
            tx.execute(
                "UPDATE vault_data_keys SET wrapped = $3, master_key_id = $4 WHERE vault_id = $1 AND version = $2",
                &[&id, &version, &wrapped, &mid],
            )
            .await?;
            rewrapped += 1;
        }
        rewrapped += crate::governance::rewrap_server_keys(&tx, &self.ring).await?;
        tx.commit().await?;
        self.invalidate_all();
        tracing::info!(
            active = self.ring.active_id(),
            rewrapped,
            "re-wrapped vault keys under the active master key"
        );
        Ok((self.ring.active_id().to_string(), rewrapped))
    }
}

impl LoadedVault {
    pub(super) fn data_key(&self, version: i32) -> Result<&Key, VaultError> {
        self.keys.data.get(&version).ok_or(VaultError::Integrity)
    }
}
