//! [`CedarGate`]: the vault's [`Gate`] for one API request, deciding with Cedar.
//!
//! Decisions are memoised for the request: by column, level and the record's facts (its
//! attributes, consents and grant), or by the record's id when some policy names a record
//! literally. A batch of a thousand tokens from one column thus costs a handful of decisions.

use super::accounts::Caller;
use super::audit;
use super::engine::{
    EntityStore, Facts, Kind, MemoKey as EngineKey, MemoKeyBuilder, PolicyEngine, Verdict, action,
    uid,
};
use crate::types::DataType;
use crate::vault::access::{DataAction, Gate, RowFacts};
use crate::vault::{Column, LoadedVault, Redaction, Table};
use cedar_policy::{Entities, EntityUid};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// The id audit events cite when the card guardrail withheld a plaintext card number.
pub const CARD_GUARDRAIL: &str = "guardrail:card-plaintext";

#[derive(Hash, PartialEq, Eq)]
struct MemoKey {
    action: DataAction,
    column: Option<Uuid>,
    level: Option<Redaction>,
    record: Option<RecordKey>,
}

#[derive(Hash, PartialEq, Eq, Clone)]
enum RecordKey {
    Id(Uuid),
    /// table, attributes, consents, granted
    Facts(Uuid, BTreeMap<String, String>, Vec<String>, bool),
}

/// What [`Prepared`] is built from, noted by `prepare` and built at the first decision the
/// engine's memo cannot answer (often none: connection calls repeat the same decisions).
struct Plan {
    vault: Uuid,
    vault_name: String,
    /// (table, column, data type) of every column of the vault.
    columns: Vec<(String, String, &'static str)>,
    /// One entry per distinct record key.
    records: Vec<PlannedRecord>,
}

/// A record entity to build: its key, table, entity id, attributes and consents.
struct PlannedRecord {
    key: RecordKey,
    table: String,
    id: String,
    attributes: BTreeMap<String, String>,
    consents: Vec<String>,
}

/// The entities a request's decisions share: the caller, the vault's tables and columns, and
/// one record entity per distinct record key. Built once per request instead of per decision.
struct Prepared {
    vault: Uuid,
    entities: Entities,
    records: HashMap<RecordKey, EntityUid>,
}

/// Decides for one caller, one request.
pub struct CedarGate {
    engine: Arc<PolicyEngine>,
    caller: Caller,
    purpose: String,
    card_guardrail: bool,
    /// `ServiceAccount` for API callers, `Function` inside the sandbox.
    kind: Kind,
    roles: Vec<EntityUid>,
    memo: Mutex<HashMap<MemoKey, Arc<Verdict>>>,
    plan: Mutex<Option<Plan>>,
    prepared: Mutex<Option<Arc<Prepared>>>,
}

impl CedarGate {
    pub fn new(
        engine: Arc<PolicyEngine>,
        caller: Caller,
        purpose: String,
        card_guardrail: bool,
    ) -> CedarGate {
        let roles = caller
            .account
            .roles
            .iter()
            .map(|r| uid(Kind::Role, r))
            .collect();
        CedarGate {
            engine,
            kind: Kind::ServiceAccount,
            roles,
            caller,
            purpose,
            card_guardrail,
            memo: Mutex::default(),
            plan: Mutex::default(),
            prepared: Mutex::default(),
        }
    }

    /// A gate for a function (principal `Function::"<name>"`, role `function`, version in
    /// `caller.key_id`). The card guardrail does not apply: plaintext flows into functions.
    pub fn for_function(engine: Arc<PolicyEngine>, caller: Caller, purpose: String) -> CedarGate {
        let mut gate = CedarGate::new(engine, caller, purpose, false);
        gate.kind = Kind::Function;
        gate.roles = vec![uid(Kind::Role, "function")];
        gate
    }

    /// A gate for a connection (principal `Connection::"<name>"`, role `connection`). The card
    /// guardrail does not apply: plaintext flows into the third party's call.
    pub fn for_connection(engine: Arc<PolicyEngine>, caller: Caller, purpose: String) -> CedarGate {
        let mut gate = CedarGate::new(engine, caller, purpose, false);
        gate.kind = Kind::Connection;
        gate.roles = vec![uid(Kind::Role, "connection")];
        gate
    }

    fn principal(&self, store: &mut EntityStore) -> EntityUid {
        let account = &self.caller.account;
        match self.kind {
            Kind::Function => store.function(&account.name, &self.caller.key_id),
            Kind::Connection => store.connection(&account.name),
            _ => store.service_account(&account.name, &account.roles, &account.attributes),
        }
    }

    fn record_key(&self, row: &RowFacts) -> RecordKey {
        if self.engine.cites_records() {
            RecordKey::Id(row.id)
        } else {
            RecordKey::Facts(
                row.table,
                row.attributes.clone(),
                row.consents.clone(),
                row.granted,
            )
        }
    }

    /// One decision, memoised; notes it in the request's audit event (a denial only when
    /// `note_denial`: trying plain before masked for `default` is not a denial).
    fn decide(&self, q: &Question<'_>, note_denial: bool) -> bool {
        let key = MemoKey {
            action: q.action,
            column: q.column.map(|c| c.id),
            level: q.level,
            record: q.row.map(|r| self.record_key(r)),
        };
        let known = self.memo.lock().ok().and_then(|m| m.get(&key).cloned());
        let verdict = match known {
            Some(v) => v,
            None => {
                let v = Arc::new(
                    self.engine
                        .memoised(self.engine_key(q), || self.evaluate(q)),
                );
                if let Ok(mut m) = self.memo.lock() {
                    m.insert(key, v.clone());
                }
                v
            }
        };
        if verdict.allowed || note_denial {
            audit::note(|e| e.decided(verdict.allowed, &verdict.policies));
        }
        verdict.allowed
    }

    /// Decides with the prepared entities when they cover the question.
    fn evaluate_prepared(&self, q: &Question<'_>) -> Option<Verdict> {
        let prepared = self.prepared()?;
        if prepared.vault != q.vault.id {
            return None;
        }
        let record = match q.row {
            Some(r) => Some(prepared.records.get(&self.record_key(r))?.clone()),
            None => None,
        };
        let (vault, table) = (&q.vault.name, &q.table.name);
        let resource = match (q.column, &record) {
            (Some(c), _) => uid(Kind::Column, &format!("{vault}/{table}/{}", c.name)),
            (None, Some(r)) => r.clone(),
            (None, None) => uid(Kind::Table, &format!("{vault}/{table}")),
        };
        let principal = uid(self.kind, &self.caller.account.name);
        let facts = Facts {
            purpose: &self.purpose,
            granted: q.row.map(|r| r.granted),
            record: if q.action == DataAction::Delete {
                None
            } else {
                record
            },
            redaction: q.level.map(Redaction::as_str),
        };
        Some(self.engine.decide_as(
            &principal,
            &self.roles,
            &action(q.action.as_str()),
            &resource,
            facts.context(),
            &prepared.entities,
        ))
    }

    /// The engine-wide memo key of a data decision: the principal as Cedar sees it, the
    /// action, the column (by id: a re-created column is another key), the level, the
    /// record's facts (and its id when some policy names records) and the purpose.
    fn engine_key(&self, q: &Question<'_>) -> EngineKey {
        let account = &self.caller.account;
        let version = match self.kind {
            Kind::Function => self.caller.key_id.as_str(),
            _ => "",
        };
        let id = |u: &Uuid| u.to_string();
        let mut b = MemoKeyBuilder::new("data")
            .principal(
                self.kind,
                &account.name,
                version,
                &account.roles,
                &account.attributes,
            )
            .field(q.action.as_str())
            .field(&id(&q.vault.id))
            .field(&q.vault.name)
            .field(&id(&q.table.id))
            .field(&q.table.name)
            .field(&q.column.map_or_else(String::new, |c| id(&c.id)))
            .field(q.level.map_or("", Redaction::as_str))
            .field(&self.purpose);
        if let Some(r) = q.row {
            // The record's id counts only when some policy names records.
            let (shared_by, record) = if self.engine.cites_records() {
                ("id", id(&r.id))
            } else {
                ("facts", String::new())
            };
            b = b
                .field(shared_by)
                .field(&record)
                .field(&id(&r.table))
                .fields(r.attributes.keys().map(String::as_str))
                .fields(r.attributes.values().map(String::as_str))
                .fields(r.consents.iter().map(String::as_str))
                .field(if r.granted { "granted" } else { "" });
        }
        b.finish()
    }

    /// The request's shared entities, built from the plan `prepare` noted on first use.
    fn prepared(&self) -> Option<Arc<Prepared>> {
        let mut prepared = self.prepared.lock().ok()?;
        if let Some(p) = prepared.as_ref() {
            return Some(p.clone());
        }
        let plan = self.plan.lock().ok()?.take()?;
        let mut store = EntityStore::default();
        self.principal(&mut store);
        for (table, column, data_type) in &plan.columns {
            store.column(&plan.vault_name, table, column, data_type);
        }
        let mut records = HashMap::new();
        for r in plan.records {
            let record = store.record(
                &plan.vault_name,
                &r.table,
                &r.id,
                &r.attributes,
                &r.consents,
            );
            records.insert(r.key, record);
        }
        let built = Arc::new(Prepared {
            vault: plan.vault,
            entities: store.build(),
            records,
        });
        *prepared = Some(built.clone());
        Some(built)
    }

    fn evaluate(&self, q: &Question<'_>) -> Verdict {
        if let Some(v) = self.evaluate_prepared(q) {
            return v;
        }
        let (vault, table) = (&q.vault.name, &q.table.name);
        let mut store = EntityStore::default();
        let principal = self.principal(&mut store);
        let record = q.row.map(|r| {
            // A stand-in id when records with equal facts share decisions.
            let id = match self.record_key(r) {
                RecordKey::Id(id) => id.to_string(),
                RecordKey::Facts(..) => "facts".to_string(),
            };
            store.record(vault, table, &id, &r.attributes, &r.consents)
        });
        let resource = match q.column {
            Some(c) => store.column(vault, table, &c.name, c.data_type.as_str()),
            None => record
                .clone()
                .unwrap_or_else(|| uid(Kind::Table, &format!("{vault}/{table}"))),
        };
        let facts = Facts {
            purpose: &self.purpose,
            granted: q.row.map(|r| r.granted),
            // `delete` decides on the record itself and has no `context.record`.
            record: if q.action == DataAction::Delete {
                None
            } else {
                record
            },
            redaction: q.level.map(Redaction::as_str),
        };
        let entities = store.build();
        self.engine.decide_as(
            &principal,
            &self.roles,
            &action(q.action.as_str()),
            &resource,
            facts.context(),
            &entities,
        )
    }
}

/// One authorization question.
struct Question<'a> {
    action: DataAction,
    vault: &'a LoadedVault,
    table: &'a Table,
    column: Option<&'a Column>,
    row: Option<&'a RowFacts>,
    level: Option<Redaction>,
}

impl Gate for CedarGate {
    fn prepare(&self, vault: &LoadedVault, rows: &HashMap<Uuid, RowFacts>) {
        let tables: HashMap<Uuid, &Table> = vault.tables.iter().map(|t| (t.id, t)).collect();
        let columns = vault
            .tables
            .iter()
            .flat_map(|t| {
                t.columns
                    .iter()
                    .map(|c| (t.name.clone(), c.name.clone(), c.data_type.as_str()))
            })
            .collect();
        let mut seen = HashSet::new();
        let mut records = Vec::new();
        for row in rows.values() {
            let Some(table) = tables.get(&row.table) else {
                continue;
            };
            let key = self.record_key(row);
            if !seen.insert(key.clone()) {
                continue;
            }
            let id = match &key {
                RecordKey::Id(id) => id.to_string(),
                RecordKey::Facts(..) => format!("facts-{}", records.len()),
            };
            records.push(PlannedRecord {
                key,
                table: table.name.clone(),
                id,
                attributes: row.attributes.clone(),
                consents: row.consents.clone(),
            });
        }
        if let Ok(mut p) = self.plan.lock() {
            *p = Some(Plan {
                vault: vault.id,
                vault_name: vault.name.clone(),
                columns,
                records,
            });
        }
        if let Ok(mut p) = self.prepared.lock() {
            *p = None;
        }
    }

    fn reveal(
        &self,
        action_name: DataAction,
        vault: &LoadedVault,
        table: &Table,
        column: &Column,
        row: &RowFacts,
        requested: Redaction,
    ) -> Option<Redaction> {
        audit::note(|e| {
            e.column(&column.name);
            e.record(row.id);
        });
        let guarded = self.card_guardrail && column.data_type == DataType::CardNumber;
        let levels: &[Redaction] = match requested {
            Redaction::Default => &[Redaction::Plain, Redaction::Masked, Redaction::Redacted],
            Redaction::Plain => &[Redaction::Plain],
            Redaction::Masked => &[Redaction::Masked],
            Redaction::Redacted => &[Redaction::Redacted],
        };
        for (i, level) in levels.iter().enumerate() {
            if *level == Redaction::Plain && guarded {
                if requested == Redaction::Plain {
                    audit::note(|e| e.decided(false, &[CARD_GUARDRAIL.to_string()]));
                }
                continue;
            }
            let q = Question {
                action: action_name,
                vault,
                table,
                column: Some(column),
                row: Some(row),
                level: Some(*level),
            };
            if self.decide(&q, i + 1 == levels.len()) {
                return Some(*level);
            }
        }
        None
    }

    fn allows(
        &self,
        action_name: DataAction,
        vault: &LoadedVault,
        table: &Table,
        column: Option<&Column>,
        row: Option<&RowFacts>,
    ) -> bool {
        audit::note(|e| {
            if let Some(c) = column {
                e.column(&c.name);
            }
            if let Some(r) = row {
                e.record(r.id);
            }
        });
        let q = Question {
            action: action_name,
            vault,
            table,
            column,
            row,
            level: None,
        };
        self.decide(&q, true)
    }

    fn needs_record_context(&self) -> bool {
        self.engine.reads_record_context() || self.engine.cites_records()
    }

    /// Grants are issued to service accounts only: a function or connection that happens to
    /// share an account's name does not inherit its grants.
    fn grantee(&self) -> Option<&str> {
        matches!(self.kind, Kind::ServiceAccount).then_some(self.caller.account.name.as_str())
    }
}
