//! Vaults, tables and columns: creation, listing, deletion, and loading into memory.

use super::keys::{VaultKeys, data_key_context, index_key_context};
use super::schema::{self, Column, NewColumn, NewTable, NewVault};
use super::{Detail, LoadedVault, Table, VaultError, VaultService};
use crate::crypto::{Key, MasterKeyRing};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// A vault as the API shows it: every default resolved.
#[derive(Debug, Serialize)]
pub struct VaultView {
    pub name: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub tables: Vec<TableView>,
}

#[derive(Debug, Serialize)]
pub struct TableView {
    pub name: String,
    pub columns: Vec<Column>,
}

impl From<&LoadedVault> for VaultView {
    fn from(v: &LoadedVault) -> Self {
        VaultView {
            name: v.name.clone(),
            created_at: v.created_at,
            tables: v.tables.iter().map(TableView::from).collect(),
        }
    }
}

impl From<&Table> for TableView {
    fn from(t: &Table) -> Self {
        TableView {
            name: t.name.clone(),
            columns: t.columns.clone(),
        }
    }
}

/// Reads a vault, its schema and its keys; unwraps the keys under the master-key ring.
pub(super) async fn load_vault(
    client: &impl GenericClient,
    ring: &MasterKeyRing,
    name: &str,
) -> Result<LoadedVault, VaultError> {
    let row = client
        .query_opt(
            "SELECT id, created_at, index_key_wrapped, index_key_master_id, active_key_version FROM vaults WHERE name = $1",
            &[&name],
        )
        .await?
        .ok_or_else(|| VaultError::NotFound(format!("vault `{name}`")))?;
    let id: Uuid = row.get(0);
    let index = ring.unwrap_key(row.get(3), row.get(2), &index_key_context(&id))?;
    let active: i32 = row.get(4);
    let mut data = BTreeMap::new();
    for k in client
        .query(
            "SELECT version, wrapped, master_key_id FROM vault_data_keys WHERE vault_id = $1",
            &[&id],
        )
        .await?
    {
        let version: i32 = k.get(0);
        let key = ring.unwrap_key(k.get(2), k.get(1), &data_key_context(&id, version))?;
        data.insert(version, key);
    }
    if !data.contains_key(&active) {
        return Err(VaultError::Integrity);
    }
    let mut tables: Vec<Table> = Vec::new();
    for t in client
        .query(
            "SELECT id, name FROM vault_tables WHERE vault_id = $1 ORDER BY created_at, name",
            &[&id],
        )
        .await?
    {
        tables.push(Table {
            id: t.get(0),
            name: t.get(1),
            columns: Vec::new(),
        });
    }
    let columns = client
        .query(
            "SELECT c.id, c.table_id, c.spec FROM vault_columns c JOIN vault_tables t ON t.id = c.table_id
             WHERE t.vault_id = $1 ORDER BY c.position",
            &[&id],
        )
        .await?;
    for c in columns {
        let table_id: Uuid = c.get(1);
        let mut column: Column = serde_json::from_value(c.get::<_, serde_json::Value>(2))
            .map_err(|_| VaultError::Integrity)?;
        column.id = c.get(0);
        if let Some(t) = tables.iter_mut().find(|t| t.id == table_id) {
            t.columns.push(column);
        }
    }
    let mut by_column = HashMap::new();
    let mut scopes = Vec::new();
    for (ti, t) in tables.iter().enumerate() {
        for (ci, c) in t.columns.iter().enumerate() {
            by_column.insert(c.id, (ti, ci));
            scopes.push(c.token_scope());
        }
    }
    scopes.sort();
    scopes.dedup();
    Ok(LoadedVault {
        id,
        name: name.to_string(),
        created_at: row.get(1),
        keys: VaultKeys::new(&index, data, active, &scopes),
        tables,
        by_column,
    })
}

async fn insert_table(
    tx: &impl GenericClient,
    vault_id: &Uuid,
    name: &str,
    columns: &[Column],
    first_position: i32,
) -> Result<(), VaultError> {
    let table_id = Uuid::new_v4();
    tx.execute(
        "INSERT INTO vault_tables (id, vault_id, name) VALUES ($1, $2, $3)",
        &[&table_id, vault_id, &name],
    )
    .await?;
    for (i, c) in columns.iter().enumerate() {
        insert_column(tx, &table_id, c, first_position + i as i32).await?;
    }
    Ok(())
}

async fn insert_column(
    tx: &impl GenericClient,
    table_id: &Uuid,
    c: &Column,
    position: i32,
) -> Result<(), VaultError> {
    let spec = serde_json::to_value(c).map_err(|_| VaultError::Integrity)?;
    tx.execute(
        "INSERT INTO vault_columns (id, table_id, name, position, spec) VALUES ($1, $2, $3, $4, $5)",
        &[&c.id, table_id, &c.name, &position, &spec],
    )
    .await?;
    Ok(())
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}

/// Token groups must join columns of one type: equal tokens then mean equal values of that type.
fn check_groups<'a>(columns: impl Iterator<Item = &'a Column>, errors: &mut Vec<Detail>) {
    let mut seen: HashMap<&str, &Column> = HashMap::new();
    for c in columns {
        if let Some(g) = &c.token_group {
            match seen.get(g.as_str()) {
                Some(other)
                    if other.data_type != c.data_type || other.tokenization != c.tokenization =>
                {
                    errors.push(Detail::field(
                        format!("token_group `{g}`"),
                        "columns sharing a token group need the same type and tokenization",
                    ));
                }
                _ => {
                    seen.insert(g, c);
                }
            }
        }
    }
}

impl VaultService {
    /// `POST /v1/vaults`.
    pub async fn create_vault(&self, new: NewVault) -> Result<VaultView, VaultError> {
        let mut errors = Vec::new();
        if !schema::valid_name(&new.name) {
            errors.push(Detail::field("name", "must match ^[a-z][a-z0-9_-]{0,62}$"));
        }
        let tables = match (&new.template, new.tables.is_empty()) {
            (Some(_), false) => {
                errors.push(Detail::field(
                    "template",
                    "give either a template or tables, not both",
                ));
                Vec::new()
            }
            (Some(t), true) => schema::template(t).unwrap_or_else(|| {
                errors.push(Detail::field(
                    "template",
                    "must be one of pii, pci, healthcare",
                ));
                Vec::new()
            }),
            (None, _) => new.tables,
        };
        if tables.len() > 100 {
            errors.push(Detail::field("tables", "a vault has at most 100 tables"));
        }
        let mut resolved = Vec::new();
        for (i, t) in tables.iter().enumerate() {
            if tables[..i].iter().any(|o| o.name == t.name) {
                errors.push(Detail::field(
                    format!("tables[{i}].name"),
                    format!("table `{}` appears twice", t.name),
                ));
            }
            resolved.push((
                t.name.clone(),
                schema::resolve_table(t, &format!("tables[{i}]"), &mut errors),
            ));
        }
        check_groups(
            resolved.iter().flat_map(|(_, cols)| cols.iter()),
            &mut errors,
        );
        if !errors.is_empty() {
            return Err(VaultError::invalid(
                "the vault definition is invalid",
                errors,
            ));
        }

        let id = Uuid::new_v4();
        let index = Key::generate();
        let data = Key::generate();
        let (index_mid, index_wrapped) = self.ring.wrap(&index, &index_key_context(&id));
        let (data_mid, data_wrapped) = self.ring.wrap(&data, &data_key_context(&id, 1));
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let created = tx
            .execute(
                "INSERT INTO vaults (id, name, index_key_wrapped, index_key_master_id, active_key_version, reencrypted_version)
                 VALUES ($1, $2, $3, $4, 1, 1)",
                &[&id, &new.name, &index_wrapped, &index_mid],
            )
            .await;
        match created {
            Err(e) if is_unique_violation(&e) => {
                return Err(VaultError::Conflict {
                    message: format!("vault `{}` already exists", new.name),
                    details: vec![],
                });
            }
            other => other?,
        };
        tx.execute(
            "INSERT INTO vault_data_keys (vault_id, version, wrapped, master_key_id) VALUES ($1, 1, $2, $3)",
            &[&id, &data_wrapped, &data_mid],
        )
        .await?;
        for (name, columns) in &resolved {
            insert_table(&tx, &id, name, columns, 0).await?;
        }
        tx.commit().await?;
        drop(client);
        tracing::info!(vault = %id, tables = resolved.len(), "created vault");
        let loaded = self.load(&new.name).await?;
        Ok(VaultView::from(loaded.as_ref()))
    }

    /// `GET /v1/vaults`.
    pub async fn list_vaults(&self) -> Result<Vec<VaultView>, VaultError> {
        let client = self.pool.get().await?;
        let names: Vec<String> = client
            .query("SELECT name FROM vaults ORDER BY name", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        drop(client);
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            match self.load(&name).await {
                Ok(v) => out.push(VaultView::from(v.as_ref())),
                Err(VaultError::NotFound(_)) => {} // deleted meanwhile
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// `GET /v1/vaults/{vault}`.
    pub async fn get_vault(&self, name: &str) -> Result<VaultView, VaultError> {
        Ok(VaultView::from(self.load(name).await?.as_ref()))
    }

    /// `DELETE /v1/vaults/{vault}`: deletes the vault with its wrapped keys (crypto-shred),
    /// schema, records, values, tokens and the grants' references to its records.
    pub async fn delete_vault(&self, name: &str) -> Result<(), VaultError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // The vault row first: this waits for transactions writing into the vault (they hold it
        // FOR KEY SHARE) and makes later ones fail. Records, values and tokens carry no foreign
        // keys (migration 0005), so they are deleted here, before the vault and its keys.
        let Some(row) = tx
            .query_opt("SELECT id FROM vaults WHERE name = $1 FOR UPDATE", &[&name])
            .await?
        else {
            self.invalidate(name);
            return Err(VaultError::NotFound(format!("vault `{name}`")));
        };
        let id: Uuid = row.get(0);
        // Waiting for the vault's writers stays bounded; deleting its data may take long.
        tx.batch_execute(crate::db::UNLIMITED).await?;
        // The records, and with them their values and the grants' references to them (a
        // grant's records in other vaults stay): one statement, one set of record ids.
        tx.execute(
            "WITH gone AS (DELETE FROM records WHERE table_id IN
                             (SELECT id FROM vault_tables WHERE vault_id = $1) RETURNING id),
                  vals AS (DELETE FROM record_values WHERE record_id IN (SELECT id FROM gone)),
                  granted AS (DELETE FROM grant_records WHERE record_id IN (SELECT id FROM gone))
             SELECT count(*) FROM gone",
            &[&id],
        )
        .await?;
        tx.execute("DELETE FROM tokens WHERE vault_id = $1", &[&id])
            .await?;
        tx.execute("DELETE FROM vaults WHERE id = $1", &[&id])
            .await?;
        tx.commit().await?;
        self.invalidate(name);
        tracing::info!(vault = name, "deleted vault and destroyed its keys");
        Ok(())
    }

    /// `POST /v1/vaults/{vault}/tables`.
    pub async fn add_table(&self, vault: &str, new: NewTable) -> Result<TableView, VaultError> {
        let v = self.load(vault).await?;
        let mut errors = Vec::new();
        let columns = schema::resolve_table(&new, "table", &mut errors);
        if v.tables.iter().any(|t| t.name == new.name) {
            return Err(VaultError::Conflict {
                message: format!("table `{}` already exists", new.name),
                details: vec![],
            });
        }
        check_groups(
            v.tables
                .iter()
                .flat_map(|t| t.columns.iter())
                .chain(columns.iter()),
            &mut errors,
        );
        if !errors.is_empty() {
            return Err(VaultError::invalid(
                "the table definition is invalid",
                errors,
            ));
        }
        let client = self.pool.get().await?;
        match insert_table(&client, &v.id, &new.name, &columns, 0).await {
            Err(VaultError::Db(crate::db::DbError::Postgres(e))) if is_unique_violation(&e) => {
                return Err(VaultError::Conflict {
                    message: format!("table `{}` already exists", new.name),
                    details: vec![],
                });
            }
            other => other?,
        }
        self.invalidate(vault);
        Ok(TableView {
            name: new.name,
            columns,
        })
    }

    /// `POST /v1/vaults/{vault}/tables/{table}/columns`.
    pub async fn add_column(
        &self,
        vault: &str,
        table: &str,
        new: NewColumn,
    ) -> Result<Column, VaultError> {
        let v = self.load(vault).await?;
        let t = v.table(table)?;
        let mut errors = Vec::new();
        let column = schema::resolve_column(&new, "column", &mut errors);
        if t.column(&new.name).is_some() {
            return Err(VaultError::Conflict {
                message: format!("column `{}` already exists", new.name),
                details: vec![],
            });
        }
        if let Some(c) = &column {
            check_groups(
                v.tables.iter().flat_map(|t| t.columns.iter()).chain([c]),
                &mut errors,
            );
        }
        let Some(column) = column.filter(|_| errors.is_empty()) else {
            return Err(VaultError::invalid(
                "the column definition is invalid",
                errors,
            ));
        };
        let client = self.pool.get().await?;
        if column.required {
            let has_records = client
                .query_opt(
                    "SELECT 1 FROM records WHERE table_id = $1 LIMIT 1",
                    &[&t.id],
                )
                .await?
                .is_some();
            if has_records {
                return Err(VaultError::invalid(
                    "a required column cannot be added to a table that has records",
                    vec![Detail::field(
                        "column.required",
                        "the table already has records",
                    )],
                ));
            }
        }
        let position: i32 = client
            .query_one(
                "SELECT coalesce(max(position) + 1, 0) FROM vault_columns WHERE table_id = $1",
                &[&t.id],
            )
            .await?
            .get(0);
        match insert_column(&client, &t.id, &column, position).await {
            Err(VaultError::Db(crate::db::DbError::Postgres(e))) if is_unique_violation(&e) => {
                return Err(VaultError::Conflict {
                    message: format!("column `{}` already exists", new.name),
                    details: vec![],
                });
            }
            other => other?,
        }
        self.invalidate(vault);
        Ok(column)
    }
}
