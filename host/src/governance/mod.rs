//! Governance: service accounts and API keys, Cedar policies (versioned, validated, swapped in
//! at once), time-bound grants, and the tamper-evident audit log.

pub mod accounts;
pub mod audit;
pub mod engine;
pub mod gate;

use crate::crypto::{Key, KeyRingError, MasterKeyRing};
use crate::db::DbError;
use crate::vault::schema::valid_name;
use accounts::{Accounts, Caller};
use audit::AuditLog;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use engine::{
    EntityStore, Facts, Kind, MemoKeyBuilder, PolicyEngine, PolicyProblem, Verdict, action, uid,
};
use gate::CedarGate;
use serde::Serialize;
use std::sync::{Arc, RwLock};
use uuid::Uuid;

/// What can go wrong in governance. The API maps each to a status and code.
#[derive(Debug, thiserror::Error)]
pub enum GovError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("the policy set is invalid")]
    Policies(Vec<PolicyProblem>),
    #[error("the audit event could not be written")]
    Audit,
    #[error("the audit event was not stored in time")]
    AuditTimeout,
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Keys(#[from] KeyRingError),
}

impl GovError {
    pub fn invalid(message: impl Into<String>) -> GovError {
        GovError::Invalid(message.into())
    }
}

impl From<tokio_postgres::Error> for GovError {
    fn from(e: tokio_postgres::Error) -> Self {
        GovError::Db(DbError::Postgres(e))
    }
}

impl From<deadpool_postgres::PoolError> for GovError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        GovError::Db(DbError::Pool(e))
    }
}

/// A stored version of the policy set.
#[derive(Debug, Serialize)]
pub struct PolicyVersion {
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub active: bool,
}

/// A record a grant covers.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRecord {
    pub vault: String,
    pub table: String,
    pub id: String,
}

/// The server's governance state.
pub struct Governance {
    pool: Pool,
    pub accounts: Accounts,
    pub audit: AuditLog,
    engine: RwLock<Arc<PolicyEngine>>,
    /// Whether plaintext card numbers are withheld from service accounts (the default).
    card_guardrail: bool,
}

fn server_key_context(name: &str) -> Vec<u8> {
    [b"strongroom server key:".as_slice(), name.as_bytes()].concat()
}

/// Loads the server key `name`, generating and storing it (wrapped) on first use.
pub(crate) async fn server_key(
    pool: &Pool,
    ring: &MasterKeyRing,
    name: &str,
) -> Result<Key, GovError> {
    Ok(server_key_new(pool, ring, name).await?.0)
}

/// [`server_key`], and whether this call generated it.
async fn server_key_new(
    pool: &Pool,
    ring: &MasterKeyRing,
    name: &str,
) -> Result<(Key, bool), GovError> {
    let client = pool.get().await?;
    let ctx = server_key_context(name);
    let fresh = Key::generate();
    let (mid, wrapped) = ring.wrap(&fresh, &ctx);
    let created = client
        .execute(
            "INSERT INTO server_keys (name, wrapped, master_key_id) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
            &[&name, &wrapped, &mid],
        )
        .await?;
    let row = client
        .query_one(
            "SELECT wrapped, master_key_id FROM server_keys WHERE name = $1",
            &[&name],
        )
        .await?;
    Ok((ring.unwrap_key(row.get(1), row.get(0), &ctx)?, created == 1))
}

/// Re-wraps the server keys under the active master key (part of master-key rotation).
pub async fn rewrap_server_keys(
    tx: &impl deadpool_postgres::GenericClient,
    ring: &MasterKeyRing,
) -> Result<u64, KeyRingError> {
    let rows = tx
        .query(
            "SELECT name, wrapped, master_key_id FROM server_keys FOR UPDATE",
            &[],
        )
        .await
        .map_err(|_| KeyRingError::Unwrap("server keys".into()))?;
    let mut n = 0;
    for row in rows {
        let name: String = row.get(0);
        let ctx = server_key_context(&name);
        let key = ring.unwrap_key(row.get(2), row.get(1), &ctx)?;
        let (mid, wrapped) = ring.wrap(&key, &ctx);
        tx.execute(
            "UPDATE server_keys SET wrapped = $2, master_key_id = $3 WHERE name = $1",
            &[&name, &wrapped, &mid],
        )
        .await
        .map_err(|_| KeyRingError::Unwrap("server keys".into()))?;
        n += 1;
    }
    Ok(n)
}

/// What an admin action applies to.
pub enum Target<'a> {
    System,
    Vault(&'a str),
    Connection(&'a str),
}

impl Governance {
    /// Loads keys and the active policy set (installing the defaults on first start), and makes
    /// `admin_key` the bootstrap admin's key. Fails if the stored policies do not validate.
    pub async fn start(
        pool: Pool,
        ring: &MasterKeyRing,
        admin_key: &str,
        card_guardrail: bool,
        audit_timeout: std::time::Duration,
    ) -> Result<Governance, GovError> {
        let hash_key = server_key(&pool, ring, "api-key-hash").await?;
        let (audit_key, new_chain) = server_key_new(&pool, ring, "audit-chain").await?;
        let client = pool.get().await?;
        let row = client
            .query_opt(
                "SELECT version, source FROM policy_sets ORDER BY version DESC LIMIT 1",
                &[],
            )
            .await?;
        let (version, source) = match row {
            Some(r) => (r.get::<_, i64>(0), r.get::<_, String>(1)),
            None => {
                let r = client
                    .query_one(
                        "INSERT INTO policy_sets (source, created_by) VALUES ($1, 'defaults') RETURNING version",
                        &[&engine::DEFAULT_POLICIES],
                    )
                    .await?;
                (r.get(0), engine::DEFAULT_POLICIES.to_string())
            }
        };
        drop(client);
        let engine = PolicyEngine::compile(&source, version).map_err(GovError::Policies)?;
        let accounts = Accounts::new(pool.clone(), hash_key);
        accounts.ensure_bootstrap(admin_key).await?;
        if !card_guardrail {
            tracing::warn!(
                "the card guardrail is OFF (STRONGROOM_ALLOW_PLAINTEXT_CARDS): service accounts may receive plaintext card numbers if policies allow"
            );
        }
        Ok(Governance {
            audit: AuditLog::start(pool.clone(), audit_key, new_chain, audit_timeout).await?,
            pool,
            accounts,
            engine: RwLock::new(Arc::new(engine)),
            card_guardrail,
        })
    }

    /// The active policy set.
    pub fn engine(&self) -> Arc<PolicyEngine> {
        match self.engine.read() {
            Ok(e) => e.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// `PUT /v1/policies`: validates, stores a new version and activates it at once.
    /// Refuses a set that would leave `by` unable to write policies: an empty or mistaken set
    /// must not lock every administrator out of a running vault.
    pub async fn put_policies(&self, source: &str, by: &Caller) -> Result<i64, GovError> {
        if source.contains('\0') {
            // PostgreSQL cannot store it in `text`; Cedar source never needs it.
            return Err(GovError::invalid("the policy set holds a NUL character"));
        }
        let candidate = PolicyEngine::compile(source, 0).map_err(GovError::Policies)?;
        if !Self::may_write_policies(&candidate, by) {
            return Err(GovError::invalid(
                "this policy set would not let you write policies any more (it would lock you out); keep a policy that permits you `write_policies`, such as admin-all",
            ));
        }
        let by = by.account.name.as_str();
        let client = self.pool.get().await?;
        let version: i64 = client
            .query_one(
                "INSERT INTO policy_sets (source, created_by) VALUES ($1, $2) RETURNING version",
                &[&source, &by],
            )
            .await?
            .get(0);
        let engine = Arc::new(PolicyEngine::compile(source, version).map_err(GovError::Policies)?);
        // Concurrent writes finish in any order: the newest stored version is the active one,
        // as it will be after a restart.
        let mut active = match self.engine.write() {
            Ok(e) => e,
            Err(poisoned) => poisoned.into_inner(),
        };
        if active.version < version {
            *active = engine;
        }
        Ok(version)
    }

    /// Every stored version, newest first.
    pub async fn policy_versions(&self) -> Result<Vec<PolicyVersion>, GovError> {
        let active = self.engine().version;
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT version, created_at, created_by FROM policy_sets ORDER BY version DESC LIMIT 100",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| PolicyVersion {
                version: r.get(0),
                created_at: r.get(1),
                created_by: r.get(2),
                active: r.get::<_, i64>(0) == active,
            })
            .collect())
    }

    /// The data gate for one request.
    pub fn gate(&self, caller: &Caller, purpose: &str) -> CedarGate {
        CedarGate::new(
            self.engine(),
            caller.clone(),
            purpose.to_string(),
            self.card_guardrail,
        )
    }

    /// Decides an administrative action; notes the decision in the audit event. The verdict
    /// depends only on the caller's account, the action, the target and the purpose, so the
    /// engine memoises it (connection calls decide this on every call).
    pub fn decide_admin(
        &self,
        caller: &Caller,
        action_name: &'static str,
        target: Target<'_>,
        purpose: &str,
    ) -> Verdict {
        let a = &caller.account;
        let engine = self.engine();
        let key = MemoKeyBuilder::new("admin")
            .principal(Kind::ServiceAccount, &a.name, "", &a.roles, &a.attributes)
            .field(action_name)
            .field(match target {
                Target::System => "system",
                Target::Vault(_) => "vault",
                Target::Connection(_) => "connection",
            })
            .field(match target {
                Target::System => "",
                Target::Vault(name) | Target::Connection(name) => name,
            })
            .field(purpose)
            .finish();
        let verdict = engine.memoised(key, || {
            let mut store = EntityStore::default();
            let principal = store.service_account(&a.name, &a.roles, &a.attributes);
            let resource = match target {
                Target::System => store.system(),
                Target::Vault(v) => store.vault(v),
                Target::Connection(c) => store.connection(c),
            };
            let facts = Facts {
                purpose,
                granted: None,
                record: None,
                redaction: None,
            };
            let roles: Vec<_> = a.roles.iter().map(|r| uid(Kind::Role, r)).collect();
            engine.decide_as(
                &principal,
                &roles,
                &action(action_name),
                &resource,
                facts.context(),
                &store.build(),
            )
        });
        audit::note(|e| e.decided(verdict.allowed, &verdict.policies));
        verdict
    }

    /// Whether `engine` would let `caller` write policies (without a purpose).
    fn may_write_policies(engine: &PolicyEngine, caller: &Caller) -> bool {
        let mut store = EntityStore::default();
        let a = &caller.account;
        let principal = store.service_account(&a.name, &a.roles, &a.attributes);
        let resource = store.system();
        let facts = Facts {
            purpose: "",
            granted: None,
            record: None,
            redaction: None,
        };
        let roles: Vec<_> = a.roles.iter().map(|r| uid(Kind::Role, r)).collect();
        engine
            .decide_as(
                &principal,
                &roles,
                &action("write_policies"),
                &resource,
                facts.context(),
                &store.build(),
            )
            .allowed
    }

    /// `POST /v1/policies/check`: a dry run of one decision with caller-supplied facts.
    pub async fn check(&self, req: CheckRequest) -> Result<Verdict, GovError> {
        let mut store = EntityStore::default();
        // A name outside the name rule names no account: answered without the database.
        let account = if valid_name(&req.principal) {
            self.accounts.by_name(&req.principal).await?
        } else {
            None
        };
        let principal = match account {
            Some(a) => store.service_account(&a.name, &a.roles, &a.attributes),
            None if valid_name(&req.principal) => {
                return Err(GovError::NotFound(format!("principal `{}`", req.principal)));
            }
            None => return Err(GovError::NotFound("principal".into())),
        };
        let resource = match (
            &req.resource.vault,
            &req.resource.table,
            &req.resource.column,
        ) {
            (None, None, None) => store.system(),
            (Some(v), None, None) => store.vault(v),
            (Some(v), Some(t), Some(c)) => {
                store.column(v, t, c, req.resource.r#type.as_deref().unwrap_or("string"))
            }
            (Some(v), Some(t), None) if req.record.is_some() => {
                uid(Kind::Table, &format!("{v}/{t}"))
            }
            _ => {
                return Err(GovError::invalid(
                    "`resource` names the system ({}), a vault ({\"vault\"}) or a column ({\"vault\", \"table\", \"column\"})",
                ));
            }
        };
        let record = match (&req.record, &req.resource.vault, &req.resource.table) {
            (Some(r), Some(v), Some(t)) => {
                Some(store.record(v, t, "dry-run", &r.attributes, &r.consents))
            }
            (Some(_), _, _) => {
                return Err(GovError::invalid(
                    "`record` needs a resource with a vault and a table",
                ));
            }
            (None, _, _) => None,
        };
        let resource = if req.resource.column.is_none() {
            record.clone().unwrap_or(resource)
        } else {
            resource
        };
        if !req
            .action
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_')
        {
            return Err(GovError::invalid("`action` is not a known action"));
        }
        let entities = store.build_checked().map_err(GovError::Invalid)?;
        let purpose = req.context.purpose.clone().unwrap_or_default();
        let facts = Facts {
            purpose: &purpose,
            granted: req.context.granted,
            record: if req.resource.column.is_some() {
                record
            } else {
                None
            },
            redaction: req.context.redaction.as_deref(),
        };
        let verdict = self.engine().decide(
            &principal,
            &action(&req.action),
            &resource,
            facts.context(),
            &entities,
        );
        Ok(verdict)
    }

    /// `POST /v1/grants`: `principal` may access `records` until the grant expires.
    pub async fn create_grant(
        &self,
        principal: &str,
        records: &[GrantRecord],
        expires_in_seconds: u64,
        by: &str,
    ) -> Result<(Uuid, DateTime<Utc>), GovError> {
        if !valid_name(principal) {
            return Err(GovError::invalid(
                "`principal` must be a service account name (^[a-z][a-z0-9_-]{0,62}$)",
            ));
        }
        if self.accounts.by_name(principal).await?.is_none() {
            return Err(GovError::invalid(format!(
                "`principal`: no service account is named `{principal}`"
            )));
        }
        if records.is_empty() || records.len() > 1000 {
            return Err(GovError::invalid("`records` must hold 1 to 1000 records"));
        }
        // Names outside the name rule and ids that are not UUIDs name nothing: refused here,
        // without the database (which would refuse a NUL with an error, not a miss).
        if let Some(i) = records.iter().position(|r| {
            !valid_name(&r.vault) || !valid_name(&r.table) || Uuid::parse_str(&r.id).is_err()
        }) {
            return Err(GovError::invalid(format!(
                "`records[{i}]` does not name a record of an existing vault and table"
            )));
        }
        if expires_in_seconds == 0 || expires_in_seconds > 90 * 24 * 3600 {
            return Err(GovError::invalid(
                "`expires_in_seconds` must be between 1 and 7776000 (90 days)",
            ));
        }
        let mut client = self.pool.get().await?;
        let mut record_ids = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            let id = Uuid::parse_str(&r.id).ok();
            let found = client
                .query_opt(
                    "SELECT r.id FROM records r JOIN vault_tables t ON t.id = r.table_id JOIN vaults v ON v.id = r.vault_id
                     WHERE v.name = $1 AND t.name = $2 AND r.id = $3",
                    &[&r.vault, &r.table, &id],
                )
                .await?;
            match found {
                Some(row) => record_ids.push(row.get::<_, Uuid>(0)),
                None => {
                    return Err(GovError::invalid(format!(
                        "`records[{i}]` does not name a record of an existing vault and table"
                    )));
                }
            }
        }
        let id = Uuid::new_v4();
        let expires_at = Utc::now() + chrono::Duration::seconds(expires_in_seconds as i64);
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO grants (id, principal, created_by, expires_at) VALUES ($1, $2, $3, $4)",
            &[&id, &principal, &by, &expires_at],
        )
        .await?;
        tx.execute(
            "INSERT INTO grant_records (grant_id, record_id) SELECT $1, unnest($2::uuid[]) ON CONFLICT DO NOTHING",
            &[&id, &record_ids],
        )
        .await?;
        tx.commit().await?;
        Ok((id, expires_at))
    }

    /// `DELETE /v1/grants/{id}`.
    pub async fn revoke_grant(&self, id: &str) -> Result<(), GovError> {
        let id = Uuid::parse_str(id).map_err(|_| GovError::NotFound("grant".into()))?;
        let client = self.pool.get().await?;
        let n = client
            .execute(
                "UPDATE grants SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
                &[&id],
            )
            .await?;
        if n == 0 {
            return Err(GovError::NotFound("grant".into()));
        }
        Ok(())
    }
}

/// A purpose from `x-strongroom-purpose`: empty, or `^[a-z][a-z0-9_-]{0,62}$`.
pub fn valid_purpose(purpose: &str) -> bool {
    purpose.is_empty() || valid_name(purpose)
}

/// The body of `POST /v1/policies/check`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// A service account name.
    pub principal: String,
    pub action: String,
    #[serde(default)]
    pub resource: CheckResource,
    #[serde(default)]
    pub context: CheckContext,
    /// The record's facts, for row-level rules.
    #[serde(default)]
    pub record: Option<CheckRecord>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckResource {
    pub vault: Option<String>,
    pub table: Option<String>,
    pub column: Option<String>,
    pub r#type: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckContext {
    pub purpose: Option<String>,
    pub redaction: Option<String>,
    pub granted: Option<bool>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckRecord {
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub consents: Vec<String>,
}
