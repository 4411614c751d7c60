//! The vault service: schemas, records, tokens and keys, over PostgreSQL.
//!
//! Routes call [`VaultService`]; it validates, encrypts, tokenizes and stores. Schemas and
//! unwrapped vault keys are cached in memory per vault ([`LoadedVault`]) and dropped (zeroized)
//! whenever the vault's schema or keys change.

pub mod access;
mod detokenize;
mod keys;
mod probe;
mod records;
mod rotation;
pub mod schema;
mod store;

pub use detokenize::DetokenizeResult;
pub use keys::{KeyVersionInfo, KeysReport};
pub use records::{InsertedRecord, NewRecord, RecordView};
pub use schema::{Column, NewColumn, NewTable, NewVault, Redaction};

use crate::cache::VersionCache;
use crate::crypto::{KeyRingError, MasterKeyRing};
use crate::db::DbError;
use deadpool_postgres::Pool;
use keys::VaultKeys;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

/// Most records in one insert, and most tokens in one detokenize.
pub const MAX_BATCH: usize = 1000;

/// One problem with a request, pointing at where it is. `reason` never holds a submitted value.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Detail {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For policy problems: the policy id and the position in the submitted text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    pub reason: String,
}

impl Detail {
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> Detail {
        Detail {
            record: None,
            index: None,
            field: Some(field.into()),
            policy: None,
            line: None,
            column: None,
            reason: reason.into(),
        }
    }

    pub fn record(record: usize, field: impl Into<String>, reason: impl Into<String>) -> Detail {
        Detail {
            record: Some(record),
            ..Detail::field(field, reason)
        }
    }

    pub fn index(index: usize, reason: impl Into<String>) -> Detail {
        Detail {
            index: Some(index),
            field: None,
            ..Detail::field("", reason)
        }
    }
}

/// What can go wrong in the vault service. The API maps each variant to a status and code.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{message}")]
    Invalid {
        message: String,
        details: Vec<Detail>,
    },
    #[error("{message}")]
    Conflict {
        message: String,
        details: Vec<Detail>,
    },
    /// The caller's policies do not allow this; `details` names the columns.
    #[error("{message}")]
    Forbidden {
        message: String,
        details: Vec<Detail>,
    },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Keys(#[from] KeyRingError),
    /// A stored ciphertext failed to open: tampering, or a bug. Never a client's fault.
    #[error("a stored value failed its integrity check")]
    Integrity,
    #[error("could not allocate a unique token after several attempts")]
    TokenSpace,
    /// The answer would be larger than the server sends in one response (413).
    #[error("{0}")]
    TooLarge(String),
}

/// Most details one error lists; the rest are counted in a last one. A body of up to 23 MiB
/// could otherwise be answered with a list of problems several times its size.
pub const MAX_DETAILS: usize = 100;

/// Details gathered one problem at a time, up to [`MAX_DETAILS`]: past it a problem is counted,
/// not described (a detail is not even built), and a last detail says how many more there were.
#[derive(Debug, Default)]
pub struct Details {
    listed: Vec<Detail>,
    more: usize,
}

impl Details {
    /// Adds the detail `make` builds, or counts it once the list is full.
    pub fn push_with(&mut self, make: impl FnOnce() -> Detail) {
        if self.listed.len() < MAX_DETAILS {
            self.listed.push(make());
        } else {
            self.more += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.listed.is_empty()
    }

    /// The listed details, then the count of the rest.
    pub fn into_vec(self) -> Vec<Detail> {
        let mut details = self.listed;
        if self.more > 0 {
            details.push(more_like_these(self.more));
        }
        details
    }

    /// A 400 `invalid_request` with these details.
    pub fn invalid(self, message: impl Into<String>) -> VaultError {
        VaultError::Invalid {
            message: message.into(),
            details: self.into_vec(),
        }
    }
}

fn more_like_these(more: usize) -> Detail {
    Detail {
        reason: format!("and {more} more problems like these"),
        ..Detail::default()
    }
}

impl VaultError {
    pub fn invalid(message: impl Into<String>, mut details: Vec<Detail>) -> VaultError {
        if details.len() > MAX_DETAILS {
            let more = details.len() - MAX_DETAILS;
            details.truncate(MAX_DETAILS);
            details.push(more_like_these(more));
        }
        VaultError::Invalid {
            message: message.into(),
            details,
        }
    }
}

impl From<tokio_postgres::Error> for VaultError {
    fn from(e: tokio_postgres::Error) -> Self {
        VaultError::Db(DbError::Postgres(e))
    }
}

impl From<deadpool_postgres::PoolError> for VaultError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        VaultError::Db(DbError::Pool(e))
    }
}

/// A table of a loaded vault.
#[derive(Debug)]
pub struct Table {
    pub id: Uuid,
    pub name: String,
    pub columns: Vec<Column>,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// A vault's schema and unwrapped keys, cached in memory.
#[derive(Debug)]
pub struct LoadedVault {
    pub id: Uuid,
    pub name: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub tables: Vec<Table>,
    keys: VaultKeys,
    /// column id -> (table index, column index)
    by_column: HashMap<Uuid, (usize, usize)>,
}

impl LoadedVault {
    pub fn table(&self, name: &str) -> Result<&Table, VaultError> {
        self.tables
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| VaultError::NotFound(format!("table `{name}`")))
    }

    pub fn column_by_id(&self, id: &Uuid) -> Option<(&Table, &Column)> {
        let (t, c) = *self.by_column.get(id)?;
        let table = &self.tables[t];
        Some((table, &table.columns[c]))
    }
}

/// The vault service. Cheap to clone.
#[derive(Clone)]
pub struct VaultService {
    pool: Pool,
    ring: Arc<MasterKeyRing>,
    /// Loaded vaults (a schema change, key rotation or delete forgets the name).
    cache: Arc<VersionCache<Arc<LoadedVault>>>,
    rotation: rotation::Worker,
    prober: probe::Prober,
}

impl VaultService {
    pub fn new(pool: Pool, ring: Arc<MasterKeyRing>) -> VaultService {
        VaultService {
            rotation: rotation::Worker::new(pool.clone(), ring.clone()),
            prober: probe::Prober::start(pool.clone()),
            pool,
            ring,
            cache: Arc::default(),
        }
    }

    /// The pool, for health checks.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Checks at start that every stored key opens under the configured master keys, and
    /// resumes any unfinished background re-encryption.
    pub async fn check_keys_and_resume(&self) -> Result<(), VaultError> {
        let client = self.pool.get().await?;
        let rows = client.query("SELECT name FROM vaults", &[]).await?;
        drop(client);
        for row in rows {
            let name: String = row.get(0);
            self.load(&name).await?;
        }
        self.rotation.resume_all();
        Ok(())
    }

    /// The loaded vault `name` (from the cache, else the database).
    pub async fn load(&self, name: &str) -> Result<Arc<LoadedVault>, VaultError> {
        let generation = match self.cache.get(name) {
            Ok(v) => return Ok(v),
            Err(generation) => generation,
        };
        let client = self.pool.get().await?;
        let loaded = Arc::new(store::load_vault(&client, &self.ring, name).await?);
        self.cache.insert(name, loaded.clone(), generation);
        Ok(loaded)
    }

    /// Drops a vault from the cache (after its schema or keys changed).
    fn invalidate(&self, name: &str) {
        self.cache.forget(name);
    }

    fn invalidate_all(&self) {
        self.cache.forget_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_stop_at_their_limit_and_count_the_rest() {
        let mut built = 0;
        let mut details = Details::default();
        for i in 0..MAX_DETAILS + 7 {
            details.push_with(|| {
                built += 1;
                Detail::index(i, "bad")
            });
        }
        assert_eq!(built, MAX_DETAILS, "a detail past the limit is not built");
        let VaultError::Invalid { details, .. } = details.invalid("bad") else {
            panic!("not invalid");
        };
        assert_eq!(details.len(), MAX_DETAILS + 1);
        assert_eq!(details[MAX_DETAILS - 1].index, Some(MAX_DETAILS - 1));
        assert_eq!(
            details[MAX_DETAILS].reason,
            "and 7 more problems like these"
        );
        let mut few = Details::default();
        few.push_with(|| Detail::index(0, "bad"));
        assert_eq!(few.into_vec().len(), 1);
    }
}
