//! Service accounts and API keys.
//!
//! A key reads `sr_<key id>_<secret>`. The id is public: logs and audit events name it. The
//! secret is stored only as HMAC-SHA256 under the server's key-hashing key and compared in
//! constant time. The bootstrap admin key (any string of 32+ characters) is the key `bootstrap`
//! of the `admin` service account.

use super::GovError;
use crate::crypto::{Key, constant_time_eq, keyed_hash};
use crate::vault::schema::valid_name;
use base64::Engine;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use rand::RngCore;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;
use zeroize::Zeroizing;

/// The key id of the bootstrap admin key.
pub const BOOTSTRAP_KEY_ID: &str = "bootstrap";
/// The name of the bootstrap admin account.
pub const ADMIN_ACCOUNT: &str = "admin";
/// How long a looked-up key is trusted before it is read again (revocations made through this
/// server take effect at once; this bounds the delay for changes made by another instance).
const CACHE_TTL: Duration = Duration::from_secs(5);

/// Looked-up keys by id. `generation` moves with every revocation or deletion, so a look-up
/// that read its row before one (and would put a key back that was just taken out) does not
/// store what it read.
#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, Arc<CachedKey>>,
    generation: u64,
}

/// A service account, as policies see it.
#[derive(Debug, Clone, Serialize)]
pub struct Account {
    pub id: Uuid,
    pub name: String,
    pub roles: Vec<String>,
    pub attributes: BTreeMap<String, String>,
}

/// An authenticated caller: the account and the key it used.
#[derive(Debug, Clone)]
pub struct Caller {
    pub account: Arc<Account>,
    pub key_id: String,
}

impl Caller {
    /// A principal that is not a stored account (a function, a connection): its name, its one
    /// role, and what stands in for the key id (its version).
    pub fn principal(name: &str, role: &str, key_id: String) -> Caller {
        Caller {
            account: Arc::new(Account {
                id: Uuid::nil(),
                name: name.to_string(),
                roles: vec![role.to_string()],
                attributes: BTreeMap::new(),
            }),
            key_id,
        }
    }
}

/// A key's public description.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// An account with its keys.
#[derive(Debug, Clone, Serialize)]
pub struct AccountView {
    #[serde(flatten)]
    pub account: Account,
    pub keys: Vec<KeyInfo>,
    pub created_at: DateTime<Utc>,
}

/// Why a presented key was refused. Deliberately coarse towards the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Unknown,
    Expired,
    Revoked,
}

struct CachedKey {
    account: Arc<Account>,
    hash: [u8; 32],
    expires_at: Option<DateTime<Utc>>,
    revoked: bool,
    fetched: Instant,
}

/// Service accounts and key verification.
pub struct Accounts {
    pool: Pool,
    hash_key: Key,
    cache: Mutex<KeyCache>,
}

/// A freshly generated key: shown once.
pub struct NewKey {
    pub id: String,
    pub secret: Zeroizing<String>,
}

fn generate_key() -> NewKey {
    let mut id = [0u8; 8];
    let mut secret = Zeroizing::new([0u8; 32]);
    rand::thread_rng().fill_bytes(&mut id);
    rand::thread_rng().fill_bytes(secret.as_mut());
    let id = hex::encode(id);
    let secret_text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret.as_ref());
    NewKey {
        secret: Zeroizing::new(format!("sr_{id}_{secret_text}")),
        id,
    }
}

/// The key in `Authorization: Bearer <key>`, if the header is there and says so.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme name is case-insensitive (RFC 9110, section 11.1).
        .and_then(|v| match v.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => Some(rest),
            _ => None,
        })
        .map(str::trim)
}

/// Splits `sr_<id>_<secret>` into the id and the secret.
fn parse_key(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix("sr_")?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty())
        .then_some((id, secret))
}

fn check_attributes(attributes: &BTreeMap<String, String>) -> Result<(), GovError> {
    if attributes.len() > 32 {
        return Err(GovError::invalid("`attributes` holds at most 32 entries"));
    }
    for (k, v) in attributes {
        if !valid_name(k) {
            return Err(GovError::invalid(format!(
                "attribute name `{k}` must match ^[a-z][a-z0-9_-]{{0,62}}$"
            )));
        }
        if v.len() > 256 {
            return Err(GovError::invalid(format!(
                "attribute `{k}` is longer than 256 bytes"
            )));
        }
        // PostgreSQL refuses NUL in `jsonb`; no tag needs a control character.
        if v.chars().any(char::is_control) {
            return Err(GovError::invalid(format!(
                "attribute `{k}` holds a control character"
            )));
        }
    }
    Ok(())
}

/// Roles the server gives its own principals: every function is a member of `function`, every
/// connection of `connection`. An account given one would be allowed whatever policies allow
/// them.
const RESERVED_ROLES: &[&str] = &["function", "connection"];

fn check_roles(roles: &[String]) -> Result<(), GovError> {
    if roles.len() > 16 {
        return Err(GovError::invalid("an account has at most 16 roles"));
    }
    if let Some(r) = roles.iter().find(|r| RESERVED_ROLES.contains(&r.as_str())) {
        return Err(GovError::invalid(format!(
            "role `{r}` is reserved: functions and connections are its members"
        )));
    }
    match roles.iter().find(|r| !valid_name(r)) {
        Some(r) => Err(GovError::invalid(format!(
            "role `{r}` must match ^[a-z][a-z0-9_-]{{0,62}}$"
        ))),
        None => Ok(()),
    }
}

impl Accounts {
    pub fn new(pool: Pool, hash_key: Key) -> Accounts {
        Accounts {
            pool,
            hash_key,
            cache: Mutex::default(),
        }
    }

    fn hash(&self, secret: &str) -> [u8; 32] {
        keyed_hash(&self.hash_key, &[b"api-key", secret.as_bytes()])
    }

    /// A fresh key for something other than an account (an inbound connection), and the keyed
    /// hash to store for it.
    pub fn mint(&self) -> (NewKey, [u8; 32]) {
        let key = generate_key();
        let digest = parse_key(&key.secret).map_or([0u8; 32], |(_, secret)| self.hash(secret));
        (key, digest)
    }

    /// Splits a presented `sr_<id>_<secret>` key: its id and the keyed hash of its secret, to
    /// compare (in constant time) with the stored one.
    pub fn digest(&self, presented: &str) -> Option<(String, [u8; 32])> {
        parse_key(presented).map(|(id, secret)| (id.to_string(), self.hash(secret)))
    }

    /// Makes sure the `admin` account exists and `admin_key` is its bootstrap key.
    ///
    /// A revoked bootstrap key stays revoked while the configured key is the same one (a
    /// restart must not undo revoking a leaked key); a different configured key replaces it.
    pub async fn ensure_bootstrap(&self, admin_key: &str) -> Result<(), GovError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let id = match tx
            .query_opt(
                &tx.prepare_cached(
                    "SELECT id FROM service_accounts WHERE name = $1 AND deleted_at IS NULL",
                )
                .await?,
                &[&ADMIN_ACCOUNT],
            )
            .await?
        {
            Some(row) => row.get::<_, Uuid>(0),
            None => {
                let id = Uuid::new_v4();
                tx.execute(
                    &tx.prepare_cached(
                        "INSERT INTO service_accounts (id, name, roles) VALUES ($1, $2, $3)",
                    )
                    .await?,
                    &[&id, &ADMIN_ACCOUNT, &vec!["admin".to_string()]],
                )
                .await?;
                id
            }
        };
        let hash = self.hash(admin_key);
        let stored = tx
            .query_opt(
                &tx.prepare_cached(
                    "SELECT secret_hash, revoked_at IS NOT NULL FROM api_keys WHERE id = $1 FOR UPDATE",
                )
                .await?,
                &[&BOOTSTRAP_KEY_ID],
            )
            .await?;
        match stored {
            Some(row) if constant_time_eq(row.get::<_, &[u8]>(0), &hash) => {
                if row.get::<_, bool>(1) {
                    tracing::warn!(
                        "the configured admin key (key `bootstrap` of account `admin`) was revoked and stays revoked; configure a new STRONGROOM_ADMIN_KEY to replace it"
                    );
                }
            }
            Some(_) => {
                tx.execute(
                    &tx.prepare_cached("UPDATE api_keys SET secret_hash = $2, account_id = $3, revoked_at = NULL, expires_at = NULL, created_at = now() WHERE id = $1").await?,
                    &[&BOOTSTRAP_KEY_ID, &hash.as_slice(), &id],
                )
                .await?;
            }
            None => {
                tx.execute(
                    &tx.prepare_cached(
                        "INSERT INTO api_keys (id, account_id, secret_hash) VALUES ($1, $2, $3)",
                    )
                    .await?,
                    &[&BOOTSTRAP_KEY_ID, &id, &hash.as_slice()],
                )
                .await?;
            }
        }
        tx.commit().await?;
        self.forget(BOOTSTRAP_KEY_ID);
        Ok(())
    }

    fn forget(&self, key_id: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.keys.remove(key_id);
            cache.generation += 1;
        }
    }

    fn forget_account(&self, account: &Uuid) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.keys.retain(|_, k| k.account.id != *account);
            cache.generation += 1;
        }
    }

    async fn lookup_key(&self, key_id: &str) -> Result<Option<Arc<CachedKey>>, GovError> {
        let generation = match self.cache.lock() {
            Ok(c) => {
                if let Some(hit) = c
                    .keys
                    .get(key_id)
                    .filter(|k| k.fetched.elapsed() < CACHE_TTL)
                {
                    return Ok(Some(hit.clone()));
                }
                Some(c.generation)
            }
            Err(_) => None,
        };
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &client.prepare_cached("SELECT k.secret_hash, k.expires_at, k.revoked_at IS NOT NULL OR a.deleted_at IS NOT NULL,
                        a.id, a.name, a.roles, a.attributes
                 FROM api_keys k JOIN service_accounts a ON a.id = k.account_id WHERE k.id = $1").await?,
                &[&key_id],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let stored: Vec<u8> = row.get(0);
        let attributes: serde_json::Value = row.get(6);
        let cached = Arc::new(CachedKey {
            hash: stored.try_into().unwrap_or([0u8; 32]),
            expires_at: row.get(1),
            revoked: row.get(2),
            account: Arc::new(Account {
                id: row.get(3),
                name: row.get(4),
                roles: row.get(5),
                attributes: serde_json::from_value(attributes).unwrap_or_default(),
            }),
            fetched: Instant::now(),
        });
        if let Ok(mut cache) = self.cache.lock()
            && Some(cache.generation) == generation
        {
            cache.keys.insert(key_id.to_string(), cached.clone());
        }
        Ok(Some(cached))
    }

    /// Verifies a presented key.
    pub async fn authenticate(&self, presented: &str) -> Result<Result<Caller, Refused>, GovError> {
        let (key_id, secret) = parse_key(presented).unwrap_or((BOOTSTRAP_KEY_ID, presented));
        // Hash before looking up, so an unknown id costs the same as a wrong secret.
        let digest = self.hash(secret);
        let Some(key) = self.lookup_key(key_id).await? else {
            return Ok(Err(Refused::Unknown));
        };
        // INVARIANT: the secret is compared in constant time, as a keyed hash.
        if !constant_time_eq(&digest, &key.hash) {
            return Ok(Err(Refused::Unknown));
        }
        if key.revoked {
            return Ok(Err(Refused::Revoked));
        }
        if key.expires_at.is_some_and(|at| at <= Utc::now()) {
            return Ok(Err(Refused::Expired));
        }
        Ok(Ok(Caller {
            account: key.account.clone(),
            key_id: key_id.to_string(),
        }))
    }

    async fn insert_key(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        account: &Uuid,
        expires_in: Option<u64>,
    ) -> Result<(NewKey, KeyInfo), GovError> {
        let key = generate_key();
        // The secret may itself contain `_`: split exactly as authentication does.
        let secret = parse_key(&key.secret).map_or("", |(_, s)| s);
        let hash = self.hash(secret).to_vec();
        let expires_at = expires_in.map(|s| Utc::now() + chrono::Duration::seconds(s as i64));
        let row = client
            .query_one(
                &client.prepare_cached("INSERT INTO api_keys (id, account_id, secret_hash, expires_at) VALUES ($1, $2, $3, $4) RETURNING created_at").await?,
                &[&key.id, account, &hash, &expires_at],
            )
            .await?;
        let info = KeyInfo {
            id: key.id.clone(),
            created_at: row.get(0),
            expires_at,
            revoked_at: None,
        };
        Ok((key, info))
    }

    /// `POST /v1/service-accounts`.
    pub async fn create(
        &self,
        name: &str,
        roles: Vec<String>,
        attributes: BTreeMap<String, String>,
        expires_in: Option<u64>,
    ) -> Result<(AccountView, NewKey), GovError> {
        if !valid_name(name) {
            return Err(GovError::invalid(
                "`name` must match ^[a-z][a-z0-9_-]{0,62}$",
            ));
        }
        check_roles(&roles)?;
        check_attributes(&attributes)?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let id = Uuid::new_v4();
        let attrs = serde_json::to_value(&attributes).unwrap_or_default();
        let row = tx
            .query_opt(
                &tx.prepare_cached("INSERT INTO service_accounts (id, name, roles, attributes) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) WHERE deleted_at IS NULL DO NOTHING RETURNING created_at").await?,
                &[&id, &name, &roles, &attrs],
            )
            .await?
            .ok_or_else(|| {
                GovError::Conflict(format!("service account `{name}` already exists"))
            })?;
        let (key, info) = self.insert_key(&tx, &id, expires_in).await?;
        tx.commit().await?;
        let view = AccountView {
            account: Account {
                id,
                name: name.to_string(),
                roles,
                attributes,
            },
            keys: vec![info],
            created_at: row.get(0),
        };
        Ok((view, key))
    }

    async fn resolve(&self, id_or_name: &str) -> Result<Uuid, GovError> {
        let client = self.pool.get().await?;
        let by_id = Uuid::parse_str(id_or_name).ok();
        client
            .query_opt(
                &client.prepare_cached("SELECT id FROM service_accounts WHERE (id = $1 OR name = $2) AND deleted_at IS NULL").await?,
                &[&by_id, &id_or_name],
            )
            .await?
            .map(|r| r.get(0))
            .ok_or_else(|| GovError::NotFound("service account".into()))
    }

    /// `GET /v1/service-accounts` (and one account by id or name).
    pub async fn list(&self, only: Option<&str>) -> Result<Vec<AccountView>, GovError> {
        let only = match only {
            Some(x) => Some(self.resolve(x).await?),
            None => None,
        };
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &client.prepare_cached("SELECT a.id, a.name, a.roles, a.attributes, a.created_at, k.id, k.created_at, k.expires_at, k.revoked_at
                 FROM service_accounts a LEFT JOIN api_keys k ON k.account_id = a.id
                 WHERE a.deleted_at IS NULL AND ($1::uuid IS NULL OR a.id = $1)
                 ORDER BY a.name, k.created_at").await?,
                &[&only],
            )
            .await?;
        let mut out: Vec<AccountView> = Vec::new();
        for row in rows {
            let id: Uuid = row.get(0);
            if out.last().is_none_or(|a| a.account.id != id) {
                let attributes: serde_json::Value = row.get(3);
                out.push(AccountView {
                    account: Account {
                        id,
                        name: row.get(1),
                        roles: row.get(2),
                        attributes: serde_json::from_value(attributes).unwrap_or_default(),
                    },
                    keys: vec![],
                    created_at: row.get(4),
                });
            }
            if let (Some(key_id), Some(view)) = (row.get::<_, Option<String>>(5), out.last_mut()) {
                view.keys.push(KeyInfo {
                    id: key_id,
                    created_at: row.get(6),
                    expires_at: row.get(7),
                    revoked_at: row.get(8),
                });
            }
        }
        Ok(out)
    }

    /// `DELETE /v1/service-accounts/{id}`: the account and all its keys stop working, and
    /// its grants end (its name may be given to a new account, which must not inherit them).
    pub async fn delete(&self, id_or_name: &str) -> Result<(), GovError> {
        let id = self.resolve(id_or_name).await?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                &tx.prepare_cached("UPDATE service_accounts SET deleted_at = now() WHERE id = $1 AND name <> $2 AND deleted_at IS NULL RETURNING name").await?,
                &[&id, &ADMIN_ACCOUNT],
            )
            .await?;
        let Some(row) = row else {
            return Err(if self.resolve(id_or_name).await? == id {
                GovError::Conflict("the bootstrap `admin` account cannot be deleted".into())
            } else {
                GovError::NotFound("service account".into())
            });
        };
        let name: String = row.get(0);
        tx.execute(
            &tx.prepare_cached("UPDATE api_keys SET revoked_at = now() WHERE account_id = $1 AND revoked_at IS NULL").await?,
            &[&id],
        )
        .await?;
        tx.execute(
            &tx.prepare_cached(
                "UPDATE grants SET revoked_at = now() WHERE principal = $1 AND revoked_at IS NULL",
            )
            .await?,
            &[&name],
        )
        .await?;
        tx.commit().await?;
        self.forget_account(&id);
        Ok(())
    }

    /// `POST /v1/service-accounts/{id}/keys`: another key, for rotation without downtime.
    pub async fn add_key(
        &self,
        id_or_name: &str,
        expires_in: Option<u64>,
    ) -> Result<(NewKey, KeyInfo), GovError> {
        let id = self.resolve(id_or_name).await?;
        let client = self.pool.get().await?;
        self.insert_key(&client, &id, expires_in).await
    }

    /// `DELETE /v1/service-accounts/{id}/keys/{key_id}`.
    pub async fn revoke_key(&self, id_or_name: &str, key_id: &str) -> Result<(), GovError> {
        let id = self.resolve(id_or_name).await?;
        let client = self.pool.get().await?;
        let n = client
            .execute(
                &client.prepare_cached("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND account_id = $2 AND revoked_at IS NULL").await?,
                &[&key_id, &id],
            )
            .await?;
        self.forget(key_id);
        if n == 0 {
            return Err(GovError::NotFound("key".into()));
        }
        Ok(())
    }

    /// The account named `name`, for the dry-run endpoint and grants.
    pub async fn by_name(&self, name: &str) -> Result<Option<Account>, GovError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &client.prepare_cached("SELECT id, name, roles, attributes FROM service_accounts WHERE name = $1 AND deleted_at IS NULL").await?,
                &[&name],
            )
            .await?;
        Ok(row.map(|row| {
            let attributes: serde_json::Value = row.get(3);
            Account {
                id: row.get(0),
                name: row.get(1),
                roles: row.get(2),
                attributes: serde_json::from_value(attributes).unwrap_or_default(),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_their_id() {
        let k = generate_key();
        assert!(k.secret.starts_with(&format!("sr_{}_", k.id)));
        let (id, secret) = parse_key(&k.secret).unwrap_or_default();
        assert_eq!(id, k.id);
        assert_eq!(secret.len(), 43);
        assert_ne!(generate_key().secret, k.secret);
        assert_eq!(parse_key("sr_nothex_secret"), None);
        assert_eq!(parse_key("a-bootstrap-key-of-32-characters-or-more"), None);
    }
}
