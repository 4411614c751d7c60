//! Records: insert (all or nothing), read, look-up by value, update, delete, tokenize.
//!
//! INVARIANT: a plaintext lives only in memory, in `Zeroizing` buffers, between the request and
//! the cipher. Errors and logs name record indexes and columns, never values.

use super::access::{DataAction, Gate, RowFacts};
use super::keys::value_aad;
use super::schema::{Column, Redaction, fpe_format, valid_name};
use super::{Detail, Details, LoadedVault, MAX_BATCH, Table, VaultError, VaultService};
use crate::crypto::{open, seal};
use crate::tokens::{self, Tokenization};
use crate::types::DataType;
use deadpool_postgres::GenericClient;
use rand::RngCore;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;
use zeroize::Zeroizing;

/// How many times token allocation retries after a collision before giving up.
const TOKEN_ROUNDS: u32 = 8;

/// The result of inserting one record.
#[derive(Debug, Serialize)]
pub struct InsertedRecord {
    pub id: Uuid,
    pub tokens: BTreeMap<String, String>,
}

/// A record as read back at some redaction level. `withheld` names the columns the record
/// holds that the caller may not see.
#[derive(Debug, Serialize)]
pub struct RecordView {
    pub id: Uuid,
    pub fields: Map<String, Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub withheld: Vec<String>,
}

/// A record to insert: its fields and the purposes its owner consented to.
#[derive(Debug, Default)]
pub struct NewRecord {
    pub fields: Map<String, Value>,
    pub consents: Vec<String>,
}

/// Most consented purposes on one record.
const MAX_CONSENTS: usize = 32;

/// Checks purpose names (`^[a-z][a-z0-9_-]{0,62}$`), de-duplicated and sorted.
/// Returns the problem, if any.
pub fn check_consents(consents: &mut Vec<String>, at: &str) -> Option<Detail> {
    if consents.len() > MAX_CONSENTS {
        return Some(Detail::field(
            at,
            format!("at most {MAX_CONSENTS} purposes"),
        ));
    }
    if let Some(bad) = consents.iter().position(|c| !valid_name(c)) {
        return Some(Detail {
            index: Some(bad),
            ..Detail::field(at, "a purpose must match ^[a-z][a-z0-9_-]{0,62}$")
        });
    }
    consents.sort();
    consents.dedup();
    None
}

fn forbidden(action: DataAction, columns: Vec<String>) -> VaultError {
    VaultError::Forbidden {
        message: format!(
            "the caller's policies do not allow `{}` here",
            action.as_str()
        ),
        details: columns
            .into_iter()
            .map(|c| Detail::field(c, "forbidden"))
            .collect(),
    }
}

/// One value on its way into the database.
struct PendingValue<'a> {
    record: usize,
    column: &'a Column,
    canonical: Zeroizing<String>,
    token: Option<PendingToken>,
}

struct PendingToken {
    token: String,
    hash: Vec<u8>,
    binding: Vec<u8>,
    attempt: u32,
}

/// Turns a canonical value into the JSON shown at `level` (`Default` resolves to the column's level).
pub(super) fn render(column: &Column, canonical: &str, level: Redaction) -> (Value, Redaction) {
    let level = match level {
        Redaction::Default => column.redaction,
        other => other,
    };
    let value = match level {
        Redaction::Plain | Redaction::Default => column.data_type.to_json(canonical),
        Redaction::Masked if column.data_type == DataType::File => {
            Value::String(crate::types::file::summary(canonical))
        }
        Redaction::Masked => Value::String(column.data_type.mask(column.mask, canonical)),
        Redaction::Redacted => Value::String("*REDACTED*".to_string()),
    };
    (value, level)
}

/// Opens one stored value.
pub(super) fn open_value(
    v: &LoadedVault,
    table: &Uuid,
    column: &Uuid,
    record: &Uuid,
    version: i32,
    sealed: &[u8],
) -> Result<Zeroizing<String>, VaultError> {
    let key = v.data_key(version)?;
    let bytes = open(
        key,
        sealed,
        &value_aad(&v.id, table, column, record, version),
    )
    .map_err(|_| VaultError::Integrity)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| VaultError::Integrity)?;
    Ok(Zeroizing::new(text.to_string()))
}

fn make_token(
    v: &LoadedVault,
    column: &Column,
    canonical: &str,
    attempt: u32,
) -> Result<Option<PendingToken>, &'static str> {
    let scope = column.token_scope();
    let (token, binding) = match column.tokenization {
        Tokenization::None => return Ok(None),
        // Not reserved in `tokens` (see `allocate_tokens`), so it needs no binding.
        Tokenization::Random => (tokens::random_token(), Vec::new()),
        Tokenization::FormatPreserving => {
            let format = fpe_format(column.data_type).ok_or("cannot be format-preserved")?;
            let token =
                tokens::format_preserving_random(format, canonical).map_err(token_reason)?;
            (token, random_binding())
        }
        // Not reserved either: a keyed 128-bit hash of the value (see `allocate_tokens`).
        Tokenization::Deterministic => {
            let (det, _) = scope_keys(v, &scope)?;
            (
                tokens::deterministic_token(det.expose(), canonical),
                Vec::new(),
            )
        }
        Tokenization::DeterministicFormatPreserving => {
            let format = fpe_format(column.data_type).ok_or("cannot be format-preserved")?;
            let (_, ff1) = scope_keys(v, &scope)?;
            let tweak = [scope.as_bytes(), &attempt.to_be_bytes()].concat();
            let token =
                tokens::format_preserving_deterministic(format, ff1.expose(), &tweak, canonical)
                    .map_err(token_reason)?;
            (token, v.keys.binding(&scope, canonical))
        }
    };
    Ok(Some(PendingToken {
        hash: v.keys.hash_token(&token),
        token,
        binding,
        attempt,
    }))
}

fn scope_keys<'a>(
    v: &'a LoadedVault,
    scope: &str,
) -> Result<&'a (crate::crypto::Key, crate::crypto::Key), &'static str> {
    v.keys.scopes.get(scope).ok_or("has no token key")
}

fn token_reason(e: tokens::TokenError) -> &'static str {
    match e {
        tokens::TokenError::Unsupported(reason) => reason,
    }
}

fn random_binding() -> Vec<u8> {
    let mut b = vec![0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    b
}

/// A token that equals its own value is treated as a collision and regenerated.
fn token_ok(t: &PendingToken, canonical: &str) -> bool {
    t.token != canonical
}

impl VaultService {
    /// Validates and normalises submitted records. Collects every problem before failing.
    fn prepare<'a>(
        &self,
        v: &LoadedVault,
        t: &'a Table,
        records: &[Map<String, Value>],
        enforce_required: bool,
    ) -> Result<Vec<PendingValue<'a>>, VaultError> {
        let mut errors = Details::default();
        let mut out = Vec::new();
        for (i, fields) in records.iter().enumerate() {
            for (name, value) in fields {
                let Some(column) = t.column(name) else {
                    errors.push_with(|| {
                        Detail::record(
                            i,
                            name.clone(),
                            format!("`{name}` is not a column of table `{}`", t.name),
                        )
                    });
                    continue;
                };
                if value.is_null() {
                    continue;
                }
                match column.data_type.normalize(value) {
                    Err(e) => errors.push_with(|| Detail::record(i, name.clone(), e.reason)),
                    Ok(canonical) => {
                        let canonical = Zeroizing::new(canonical);
                        match make_token(v, column, &canonical, 0) {
                            Err(reason) => {
                                errors.push_with(|| Detail::record(i, name.clone(), reason))
                            }
                            Ok(token) => out.push(PendingValue {
                                record: i,
                                column,
                                canonical,
                                token,
                            }),
                        }
                    }
                }
            }
            if enforce_required {
                for c in t.columns.iter().filter(|c| c.required) {
                    if fields.get(&c.name).is_none_or(Value::is_null) {
                        errors.push_with(|| Detail::record(i, c.name.clone(), "is required"));
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors.invalid("one or more records are invalid"))
        }
    }

    /// Refuses values that would break a unique column, within the batch or against stored records.
    async fn check_unique(
        &self,
        client: &impl GenericClient,
        v: &LoadedVault,
        values: &[PendingValue<'_>],
        exclude: Option<&Uuid>,
    ) -> Result<(), VaultError> {
        let mut seen: HashMap<(Uuid, Vec<u8>), usize> = HashMap::new();
        // Each clash as (record, value, the earlier record of the batch it repeats): details
        // are built for the first `MAX_DETAILS` of them only, in record order.
        let mut clashes: Vec<(usize, usize, Option<usize>)> = Vec::new();
        let (mut cols, mut keys, mut idx) = (Vec::new(), Vec::new(), Vec::new());
        for (i, pv) in values.iter().enumerate().filter(|(_, pv)| pv.column.unique) {
            let key = v.keys.blind_index(&pv.column.id, &pv.canonical);
            if let Some(first) = seen.insert((pv.column.id, key.clone()), pv.record) {
                clashes.push((pv.record, i, Some(first)));
            }
            cols.push(pv.column.id);
            keys.push(key);
            idx.push(i);
        }
        if !keys.is_empty() {
            let rows = client
                .query(
                    &client.prepare_cached("SELECT x.i FROM unnest($1::uuid[], $2::bytea[], $3::int[]) AS x(c, k, i)
                     JOIN record_values rv ON rv.column_id = x.c AND rv.unique_key = x.k
                     -- lets the planner use the partial unique index (a join clause alone does not)
                     WHERE rv.unique_key IS NOT NULL AND ($4::uuid IS NULL OR rv.record_id <> $4)").await?,
                    &[
                        &cols,
                        &keys,
                        &idx.iter().map(|i| *i as i32).collect::<Vec<_>>(),
                        &exclude,
                    ],
                )
                .await?;
            for row in rows {
                let i = row.get::<_, i32>(0) as usize;
                clashes.push((values[i].record, i, None));
            }
        }
        if clashes.is_empty() {
            return Ok(());
        }
        clashes.sort_by_key(|(record, ..)| *record);
        let mut details = Details::default();
        for (record, i, first) in clashes {
            details.push_with(|| {
                Detail::record(
                    record,
                    values[i].column.name.clone(),
                    match first {
                        Some(first) => {
                            format!("duplicates the value of record {first} in a unique column")
                        }
                        None => "a record with this value already exists in a unique column".into(),
                    },
                )
            });
        }
        Err(VaultError::Conflict {
            message: "a unique column already holds one of the values".into(),
            details: details.into_vec(),
        })
    }

    /// A deterministic format-preserving value that records already hold keeps the token they
    /// hold. That may be a later attempt than the first (the first was another value's when the
    /// value was first stored), and the first may be free again since: without this the value
    /// would take it, and have two tokens (`tokenize` answered one that no record holds). Each
    /// such value starts at the attempt its scope's records hold.
    async fn resume_attempts(
        &self,
        client: &impl GenericClient,
        v: &LoadedVault,
        values: &mut [PendingValue<'_>],
        pending: &[usize],
    ) -> Result<(), VaultError> {
        let (mut cols, mut blinds, mut idx) = (Vec::new(), Vec::new(), Vec::new());
        for &i in pending {
            let pv = &values[i];
            if pv.column.tokenization != Tokenization::DeterministicFormatPreserving {
                continue;
            }
            let scope = pv.column.token_scope();
            for c in v.tables.iter().flat_map(|t| &t.columns).filter(|c| {
                c.tokenization == Tokenization::DeterministicFormatPreserving
                    && c.token_scope() == scope
            }) {
                cols.push(c.id);
                blinds.push(v.keys.blind_index(&c.id, &pv.canonical));
                idx.push(i as i32);
            }
        }
        if idx.is_empty() {
            return Ok(());
        }
        let mut held: HashMap<usize, HashSet<Vec<u8>>> = HashMap::new();
        for row in client
            .query(
                &client.prepare_cached("SELECT DISTINCT x.i, rv.token_hash FROM unnest($1::uuid[], $2::bytea[], $3::int[]) AS x(c, b, i)
                 JOIN record_values rv ON rv.column_id = x.c AND rv.blind_index = x.b
                 -- lets the planner use the partial index on blind indexes
                 WHERE rv.blind_index IS NOT NULL AND rv.token_hash IS NOT NULL").await?,
                &[&cols, &blinds, &idx],
            )
            .await?
        {
            held.entry(row.get::<_, i32>(0) as usize)
                .or_default()
                .insert(row.get(1));
        }
        for (i, hashes) in held {
            let pv = &mut values[i];
            if pv.token.as_ref().is_none_or(|t| hashes.contains(&t.hash)) {
                continue; // the first attempt is the one held
            }
            for attempt in 1..TOKEN_ROUNDS {
                if let Ok(Some(t)) = make_token(v, pv.column, &pv.canonical, attempt)
                    && hashes.contains(&t.hash)
                {
                    pv.token = Some(t);
                    break;
                }
            }
        }
        Ok(())
    }

    /// Reserves every pending token in `tokens`, regenerating those that collide with a token
    /// bound to another value. A deterministic format-preserving token already bound to the same
    /// value is reused.
    ///
    /// Opaque tokens (`tok_` and 128 bits) are not reserved. A random one is 128 random bits; a
    /// deterministic one is a keyed 128-bit hash of its scope's value, which nobody without the
    /// vault's index key can aim at another token. Any two of them coincide with probability
    /// about n²/2^129 (2^-65 after 2^32 tokens), the bound random UUIDs rely on. Such a token
    /// is found through the values that hold it and dies with the last of them; a deterministic
    /// one is the same for every record holding the value, so it needs no shared row to stay
    /// equal. Reserving them cost a `tokens` row and two more random index descents per value
    /// on every insert. Format-preserving tokens, which can collide in practice (a card keeps its
    /// last four digits), are reserved, and retried on a clash.
    async fn allocate_tokens(
        &self,
        client: &impl GenericClient,
        v: &LoadedVault,
        values: &mut [PendingValue<'_>],
    ) -> Result<(), VaultError> {
        let mut pending: Vec<usize> = (0..values.len())
            .filter(|i| {
                values[*i].token.is_some() && values[*i].column.tokenization.is_format_preserving()
            })
            .collect();
        self.resume_attempts(client, v, values, &pending).await?;
        for _round in 0..TOKEN_ROUNDS {
            if pending.is_empty() {
                return Ok(());
            }
            // In-batch: one hash, one binding; equal tokens from equal values are fine.
            let mut batch: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let mut retry = Vec::new();
            let mut waiting = Vec::new();
            for &i in &pending {
                let pv = &values[i];
                let Some(t) = &pv.token else { continue };
                let clash = !token_ok(t, &pv.canonical)
                    || batch.get(&t.hash).is_some_and(|b| *b != t.binding);
                if clash {
                    retry.push((i, true));
                } else {
                    batch.insert(t.hash.clone(), t.binding.clone());
                    waiting.push(i);
                }
            }
            // Sorted hashes give concurrent batches one lock order.
            let (hashes, bindings): (Vec<Vec<u8>>, Vec<Vec<u8>>) = batch.into_iter().unzip();
            let inserted: HashSet<Vec<u8>> = client
                .query(
                    &client
                        .prepare_cached(
                            "INSERT INTO tokens (vault_id, token_hash, binding)
                     SELECT $1, h, b FROM unnest($2::bytea[], $3::bytea[]) AS x(h, b)
                     ON CONFLICT DO NOTHING RETURNING token_hash",
                        )
                        .await?,
                    &[&v.id, &hashes, &bindings],
                )
                .await?
                .into_iter()
                .map(|r| r.get(0))
                .collect();
            let others: Vec<&Vec<u8>> = hashes.iter().filter(|h| !inserted.contains(*h)).collect();
            let mut existing: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
            if !others.is_empty() {
                // FOR SHARE: a concurrent delete of this token waits until we commit.
                for row in client
                    .query(
                        &client.prepare_cached("SELECT token_hash, binding FROM tokens WHERE vault_id = $1 AND token_hash = ANY($2) FOR SHARE").await?,
                        &[&v.id, &others],
                    )
                    .await?
                {
                    existing.insert(row.get(0), row.get(1));
                }
            }
            for i in waiting {
                let Some(t) = &values[i].token else { continue };
                if inserted.contains(&t.hash) {
                    continue;
                }
                match existing.get(&t.hash) {
                    Some(b) if *b == t.binding => {}
                    Some(_) => retry.push((i, true)),
                    None => retry.push((i, false)),
                }
            }
            for &(i, bump) in &retry {
                let pv = &mut values[i];
                let attempt = pv.token.as_ref().map_or(0, |t| t.attempt);
                // A clash with another value moves to the next attempt (random modes simply draw
                // again); a token deleted meanwhile is tried again as it is.
                let next = if bump { attempt + 1 } else { attempt };
                pv.token = make_token(v, pv.column, &pv.canonical, next)
                    .map_err(|_| VaultError::TokenSpace)?;
            }
            pending = retry.into_iter().map(|(i, _)| i).collect();
        }
        if pending.is_empty() {
            Ok(())
        } else {
            Err(VaultError::TokenSpace)
        }
    }

    /// Seals values and writes them in `tx`: new records' values with `COPY`, which PostgreSQL
    /// writes a page at a time; an update's (`upsert`) with `INSERT … ON CONFLICT`.
    async fn write_values(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        v: &LoadedVault,
        t: &Table,
        record_ids: &[Uuid],
        values: &[PendingValue<'_>],
        upsert: bool,
    ) -> Result<(), VaultError> {
        let (version, key) = v.keys.active();
        let n = values.len();
        let (mut rids, mut cids, mut sealed, mut hashes, mut blinds, mut uniques) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for pv in values {
            let record = record_ids[pv.record];
            let aad = value_aad(&v.id, &t.id, &pv.column.id, &record, version);
            sealed.push(seal(key, pv.canonical.as_bytes(), &aad));
            rids.push(record);
            cids.push(pv.column.id);
            hashes.push(pv.token.as_ref().map(|t| t.hash.clone()));
            let blind = pv
                .column
                .indexed()
                .then(|| v.keys.blind_index(&pv.column.id, &pv.canonical));
            uniques.push(if pv.column.unique {
                blind.clone()
            } else {
                None
            });
            blinds.push(blind);
        }
        let result = if upsert {
            tx.execute(
                "INSERT INTO record_values (record_id, column_id, vault_id, key_version, sealed, token_hash, blind_index, unique_key)
                 SELECT r, c, $7, $8, s, h, b, u FROM unnest($1::uuid[], $2::uuid[], $3::bytea[], $4::bytea[], $5::bytea[], $6::bytea[]) AS x(r, c, s, h, b, u)
                 ON CONFLICT (record_id, column_id) DO UPDATE SET key_version = excluded.key_version, sealed = excluded.sealed,
                   token_hash = excluded.token_hash, blind_index = excluded.blind_index, unique_key = excluded.unique_key",
                &[
                    &rids, &cids, &sealed, &hashes, &blinds, &uniques, &v.id, &version,
                ],
            )
            .await
        } else {
            copy_rows(
                tx,
                "COPY record_values (record_id, column_id, vault_id, key_version, sealed, token_hash, blind_index, unique_key)
                 FROM STDIN (FORMAT binary)",
                &[
                    Type::UUID,
                    Type::UUID,
                    Type::UUID,
                    Type::INT4,
                    Type::BYTEA,
                    Type::BYTEA,
                    Type::BYTEA,
                    Type::BYTEA,
                ],
                (0..n).map(|i| {
                    [
                        &rids[i] as &(dyn ToSql + Sync),
                        &cids[i],
                        &v.id,
                        &version,
                        &sealed[i],
                        &hashes[i],
                        &blinds[i],
                        &uniques[i],
                    ]
                }),
            )
            .await
        };
        match result {
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                Err(VaultError::Conflict {
                    message: "a unique column already holds one of the values".into(),
                    details: vec![],
                })
            }
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    /// `POST …/records`: all or nothing.
    pub async fn insert_records(
        &self,
        vault: &str,
        table: &str,
        records: Vec<NewRecord>,
        gate: &dyn Gate,
    ) -> Result<Vec<InsertedRecord>, VaultError> {
        check_batch(records.len(), "records")?;
        let v = self.load(vault).await?;
        let t = v.table(table)?;
        let (fields, mut consents): (Vec<Map<String, Value>>, Vec<Vec<String>>) =
            records.into_iter().map(|r| (r.fields, r.consents)).unzip();
        let mut errors = Vec::new();
        for (i, c) in consents.iter_mut().enumerate() {
            if let Some(d) = check_consents(c, "consents") {
                errors.push(Detail {
                    record: Some(i),
                    ..d
                });
            }
        }
        if !errors.is_empty() {
            return Err(VaultError::invalid(
                "one or more records are invalid",
                errors,
            ));
        }
        let denied: Vec<String> = t
            .columns
            .iter()
            .filter(|c| fields.iter().any(|f| f.contains_key(&c.name)))
            .filter(|c| !gate.allows(DataAction::Insert, &v, t, Some(c), None))
            .map(|c| c.name.clone())
            .collect();
        if !denied.is_empty() {
            return Err(forbidden(DataAction::Insert, denied));
        }
        let mut values = self.prepare(&v, t, &fields, true)?;
        let ids = new_record_ids(fields.len());
        self.store_new(&v, t, &ids, &consents, &mut values).await?;
        let mut out: Vec<InsertedRecord> = ids
            .iter()
            .map(|id| InsertedRecord {
                id: *id,
                tokens: BTreeMap::new(),
            })
            .collect();
        for pv in values {
            if let Some(tok) = pv.token {
                out[pv.record]
                    .tokens
                    .insert(pv.column.name.clone(), tok.token);
            }
        }
        tracing::debug!(vault = %v.id, table = %t.id, records = out.len(), "inserted records");
        Ok(out)
    }

    async fn store_new(
        &self,
        v: &LoadedVault,
        t: &Table,
        ids: &[Uuid],
        consents: &[Vec<String>],
        values: &mut [PendingValue<'_>],
    ) -> Result<(), VaultError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        self.lock_vault_to_seal(&tx, v).await?;
        self.check_unique(&tx, v, values, None).await?;
        self.allocate_tokens(&tx, v, values).await?;
        if consents.iter().all(Vec::is_empty) {
            copy_rows(
                &tx,
                "COPY records (id, vault_id, table_id) FROM STDIN (FORMAT binary)",
                &[Type::UUID, Type::UUID, Type::UUID],
                ids.iter()
                    .map(|id| [id as &(dyn ToSql + Sync), &v.id, &t.id]),
            )
            .await?;
        } else {
            // One text[] per record, passed as JSON arrays (PostgreSQL has no array of arrays
            // of differing lengths).
            let lists: Vec<Value> = consents.iter().map(|c| Value::from(c.clone())).collect();
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO records (id, vault_id, table_id, consents)
                 SELECT r, $2, $3, ARRAY(SELECT jsonb_array_elements_text(c))
                 FROM unnest($1::uuid[], $4::jsonb[]) AS x(r, c)",
                )
                .await?,
                &[&ids, &v.id, &t.id, &lists],
            )
            .await?;
        }
        self.write_values(&tx, v, t, ids, values, false).await?;
        tx.commit().await?;
        Ok(())
    }

    /// `GET …/records/{id}`.
    pub async fn read_record(
        &self,
        vault: &str,
        table: &str,
        id: &str,
        level: Redaction,
        columns: Option<Vec<String>>,
        gate: &dyn Gate,
    ) -> Result<RecordView, VaultError> {
        let v = self.load(vault).await?;
        let t = v.table(table)?;
        let wanted = wanted_columns(t, columns)?;
        let id = parse_record_id(id)?;
        let mut views = self
            .read_many(
                &v,
                t,
                &[id],
                level,
                wanted.as_ref(),
                gate,
                DataAction::Read,
                None,
            )
            .await?;
        let view = views
            .pop()
            .ok_or_else(|| VaultError::NotFound("record".into()))?;
        if view.fields.is_empty() && !view.withheld.is_empty() {
            return Err(forbidden(DataAction::Read, view.withheld));
        }
        Ok(view)
    }

    /// `GET …/records/{id}/files/{column}` and a function's `read-file`: one stored file,
    /// opened, if the gate reveals that column of that record in plain.
    pub async fn read_file(
        &self,
        vault: &str,
        table: &str,
        id: &str,
        column: &str,
        gate: &dyn Gate,
    ) -> Result<crate::types::file::FileValue, VaultError> {
        let v = self.load(vault).await?;
        let t = v.table(table)?;
        let c = t
            .column(column)
            .ok_or_else(|| VaultError::NotFound(format!("column `{column}`")))?;
        if c.data_type != DataType::File {
            return Err(VaultError::invalid(
                format!("column `{column}` is not a file column"),
                vec![],
            ));
        }
        let id = parse_record_id(id)?;
        let wanted = HashSet::from([c.id]);
        let view = self
            .read_many(
                &v,
                t,
                &[id],
                Redaction::Plain,
                Some(&wanted),
                gate,
                DataAction::Read,
                None,
            )
            .await?
            .pop()
            .ok_or_else(|| VaultError::NotFound("record".into()))?;
        if !view.withheld.is_empty() {
            return Err(forbidden(DataAction::Read, view.withheld));
        }
        // Only a plain reveal carries the content; a lower level is not enough to download.
        let content = view
            .fields
            .get(column)
            .and_then(|f| f.get("content_base64"))
            .and_then(Value::as_str)
            .map(|b64| Zeroizing::new(b64.to_string()));
        let (Some(field), Some(content)) = (view.fields.get(column), content) else {
            return match view.fields.get(column) {
                None => Err(VaultError::NotFound(format!("a file in column `{column}`"))),
                Some(_) => Err(forbidden(DataAction::Read, vec![column.to_string()])),
            };
        };
        let text = |k: &str| {
            field
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let data = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            content.as_bytes(),
        )
        .map_err(|_| VaultError::Integrity)?;
        Ok(crate::types::file::FileValue {
            name: text("name"),
            media_type: text("media_type"),
            data: Zeroizing::new(data),
        })
    }

    /// What row-level policies may know about `ids`: consents, `policy_attribute` values
    /// (decrypted here, never stored in the clear) and grants to the gate's principal.
    /// The facts decisions about `ids` need (`columns_only`: every decision has a column as
    /// its resource, so the facts matter only if the policies read the record's context).
    pub(super) async fn row_facts(
        &self,
        v: &LoadedVault,
        ids: &[Uuid],
        gate: &dyn Gate,
        columns_only: bool,
    ) -> Result<HashMap<Uuid, RowFacts>, VaultError> {
        let mut facts: HashMap<Uuid, RowFacts> = ids
            .iter()
            .map(|id| {
                (
                    *id,
                    RowFacts {
                        id: *id,
                        ..RowFacts::default()
                    },
                )
            })
            .collect();
        if !gate.needs_rows() || ids.is_empty() || (columns_only && !gate.needs_record_context()) {
            return Ok(facts);
        }
        let attribute_columns: Vec<Uuid> = v
            .tables
            .iter()
            .flat_map(|t| t.columns.iter())
            .filter(|c| c.policy_attribute)
            .map(|c| c.id)
            .collect();
        let client = self.pool.get().await?;
        // Index probes per record, robust to stale statistics under the generic plans the pool
        // uses: `LIMIT 1` and `OFFSET 0` keep the planner from flattening the probes into a
        // hash join over the whole table (planned when the table was small, that join stays).
        // `granted` is whether an unexpired grant gives the gate's principal ($4) the record.
        let stmt = client
            .prepare_cached(
                "SELECT r.id, r.consents, rv.column_id, rv.key_version, rv.sealed,
                        r.table_id,
                        $4::text IS NOT NULL AND EXISTS (
                            SELECT 1 FROM (SELECT grant_id FROM grant_records WHERE record_id = r.id OFFSET 0) gr
                            JOIN grants g ON g.id = gr.grant_id
                            WHERE g.principal = $4 AND g.expires_at > now() AND g.revoked_at IS NULL)
                 FROM unnest($1::uuid[]) AS x(id)
                 CROSS JOIN LATERAL (SELECT id, consents, table_id FROM records
                                     WHERE id = x.id AND vault_id = $3 LIMIT 1) r
                 LEFT JOIN LATERAL (SELECT column_id, key_version, sealed FROM record_values
                                    WHERE record_id = r.id AND column_id = ANY($2)) rv ON true",
            )
            .await?;
        let grantee = gate.grantee();
        let rows = client
            .query(&stmt, &[&ids, &attribute_columns, &v.id, &grantee])
            .await?;
        for row in rows {
            let id: Uuid = row.get(0);
            let Some(f) = facts.get_mut(&id) else {
                continue;
            };
            f.consents = row.get(1);
            f.table = row.get(5);
            f.granted = row.get(6);
            let Some(column_id) = row.get::<_, Option<Uuid>>(2) else {
                continue;
            };
            if let Some((table, column)) = v.column_by_id(&column_id) {
                let canonical = open_value(v, &table.id, &column_id, &id, row.get(3), row.get(4))?;
                f.attributes
                    .insert(column.name.clone(), canonical.as_str().to_string());
            }
        }
        gate.prepare(v, &facts);
        Ok(facts)
    }

    #[allow(clippy::too_many_arguments)]
    async fn read_many(
        &self,
        v: &LoadedVault,
        t: &Table,
        ids: &[Uuid],
        level: Redaction,
        wanted: Option<&HashSet<Uuid>>,
        gate: &dyn Gate,
        action: DataAction,
        anchor: Option<&Column>,
    ) -> Result<Vec<RecordView>, VaultError> {
        let facts = self.row_facts(v, ids, gate, false).await?;
        let no_facts = RowFacts::default();
        // With an anchor (the column a look-up matched on), a record is reported only if the
        // caller may read that column of it: otherwise even its id would tell the caller that
        // the record exists and holds the value.
        let hidden: HashSet<Uuid> = match anchor {
            None => HashSet::new(),
            Some(column) => ids
                .iter()
                .filter(|id| {
                    let row_facts = facts.get(id).unwrap_or(&no_facts);
                    // At any level: a caller who may see the value masked knows it is there.
                    gate.reveal(action, v, t, column, row_facts, Redaction::Default)
                        .is_none()
                })
                .copied()
                .collect(),
        };
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT r.id, rv.column_id, rv.key_version, rv.sealed FROM records r
                 LEFT JOIN record_values rv ON rv.record_id = r.id
                      AND ($3::uuid[] IS NULL OR rv.column_id = ANY($3))
                 WHERE r.id = ANY($1) AND r.table_id = $2 ORDER BY r.created_at, r.id",
                    )
                    .await?,
                // Only the wanted columns' ciphertexts leave the database (files are large).
                &[
                    &ids,
                    &t.id,
                    &wanted.map(|w| w.iter().copied().collect::<Vec<Uuid>>()),
                ],
            )
            .await?;
        let mut out: Vec<RecordView> = Vec::new();
        for row in rows {
            let id: Uuid = row.get(0);
            if hidden.contains(&id) {
                continue;
            }
            if out.last().is_none_or(|r| r.id != id) {
                out.push(RecordView {
                    id,
                    fields: Map::new(),
                    withheld: Vec::new(),
                });
            }
            let Some(column_id) = row.get::<_, Option<Uuid>>(1) else {
                continue;
            };
            if wanted.is_some_and(|w| !w.contains(&column_id)) {
                continue;
            }
            let Some(column) = t.columns.iter().find(|c| c.id == column_id) else {
                continue;
            };
            let Some(view) = out.last_mut() else {
                continue;
            };
            let row_facts = facts.get(&id).unwrap_or(&no_facts);
            let Some(level) = gate.reveal(action, v, t, column, row_facts, level) else {
                view.withheld.push(column.name.clone());
                continue;
            };
            let canonical = open_value(v, &t.id, &column_id, &id, row.get(2), row.get(3))?;
            let (value, _) = render(column, &canonical, level);
            view.fields.insert(column.name.clone(), value);
        }
        Ok(out)
    }

    /// `POST …/records/lookup`: records whose `column` holds one of `values`.
    #[allow(clippy::too_many_arguments)] // mirrors the request body's fields
    pub async fn lookup(
        &self,
        vault: &str,
        table: &str,
        column: &str,
        values: &[Value],
        level: Redaction,
        columns: Option<Vec<String>>,
        gate: &dyn Gate,
    ) -> Result<Vec<RecordView>, VaultError> {
        check_batch(values.len(), "values")?;
        let v = self.load(vault).await?;
        let t = v.table(table)?;
        let wanted = wanted_columns(t, columns)?;
        let c = t.column(column).ok_or_else(|| {
            VaultError::invalid(
                "unknown column",
                vec![Detail::field(
                    "column",
                    format!("`{column}` is not a column of table `{table}`"),
                )],
            )
        })?;
        if !c.indexed() {
            return Err(VaultError::invalid(
                "look-up needs a deterministic or unique column",
                vec![Detail::field(
                    "column",
                    format!("`{column}` is neither deterministic nor unique"),
                )],
            ));
        }
        if !gate.allows(DataAction::Lookup, &v, t, Some(c), None) {
            return Err(forbidden(DataAction::Lookup, vec![c.name.clone()]));
        }
        let mut errors = Vec::new();
        let mut blinds = Vec::new();
        for (i, value) in values.iter().enumerate() {
            match c.data_type.normalize(value) {
                Ok(canonical) => blinds.push(v.keys.blind_index(&c.id, &Zeroizing::new(canonical))),
                Err(e) => errors.push(Detail {
                    field: Some("values".into()),
                    ..Detail::index(i, e.reason)
                }),
            }
        }
        if !errors.is_empty() {
            return Err(VaultError::invalid(
                "one or more values are invalid",
                errors,
            ));
        }
        let client = self.pool.get().await?;
        let ids: Vec<Uuid> = client
            .query(
                &client.prepare_cached("SELECT DISTINCT record_id FROM record_values WHERE column_id = $1 AND blind_index = ANY($2)").await?,
                &[&c.id, &blinds],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        drop(client);
        self.read_many(
            &v,
            t,
            &ids,
            level,
            wanted.as_ref(),
            gate,
            DataAction::Read,
            Some(c),
        )
        .await
    }

    /// `PATCH …/records/{id}`: sets (or, with `null`, removes) the given fields.
    pub async fn update_record(
        &self,
        vault: &str,
        table: &str,
        id: &str,
        fields: Map<String, Value>,
        consents: Option<Vec<String>>,
        gate: &dyn Gate,
    ) -> Result<InsertedRecord, VaultError> {
        let v = self.load(vault).await?;
        let t = v.table(table)?;
        let id = parse_record_id(id)?;
        let mut consents = consents;
        if let Some(d) = consents
            .as_mut()
            .and_then(|c| check_consents(c, "consents"))
        {
            return Err(VaultError::invalid("the update is invalid", vec![d]));
        }
        if fields.is_empty() && consents.is_none() {
            return Err(VaultError::invalid(
                "nothing to update",
                vec![Detail::field("fields", "is empty")],
            ));
        }
        let records = [fields];
        let mut values = self.prepare(&v, t, &records, false)?;
        let mut errors = Vec::new();
        let mut cleared = Vec::new();
        for (name, value) in &records[0] {
            if let (true, Some(c)) = (value.is_null(), t.column(name)) {
                if c.required {
                    errors.push(Detail::field(name.clone(), "is required"));
                }
                cleared.push(c.id);
            }
        }
        if !errors.is_empty() {
            return Err(VaultError::invalid("the update is invalid", errors));
        }
        let changed: Vec<Uuid> = values
            .iter()
            .map(|pv| pv.column.id)
            .chain(cleared.iter().copied())
            .collect();
        let facts = self.row_facts(&v, &[id], gate, false).await?;
        let row = facts.get(&id).cloned().unwrap_or_default();
        let mut denied: Vec<String> = t
            .columns
            .iter()
            .filter(|c| changed.contains(&c.id))
            .filter(|c| !gate.allows(DataAction::Update, &v, t, Some(c), Some(&row)))
            .map(|c| c.name.clone())
            .collect();
        if consents.is_some() && !gate.allows(DataAction::Update, &v, t, None, Some(&row)) {
            denied.push("consents".into());
        }
        if !denied.is_empty() {
            return Err(forbidden(DataAction::Update, denied));
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        self.lock_vault_to_seal(&tx, &v).await?;
        tx.query_opt(
            &tx.prepare_cached("SELECT 1 FROM records WHERE id = $1 AND table_id = $2 FOR UPDATE")
                .await?,
            &[&id, &t.id],
        )
        .await?
        .ok_or_else(|| VaultError::NotFound("record".into()))?;
        if let Some(c) = &consents {
            tx.execute(
                &tx.prepare_cached("UPDATE records SET consents = $2 WHERE id = $1")
                    .await?,
                &[&id, c],
            )
            .await?;
        }
        let old: Vec<Vec<u8>> = tx
            .query(
                &tx.prepare_cached("SELECT token_hash FROM record_values WHERE record_id = $1 AND column_id = ANY($2) AND token_hash IS NOT NULL").await?,
                &[&id, &changed],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        self.check_unique(&tx, &v, &values, Some(&id)).await?;
        self.allocate_tokens(&tx, &v, &mut values).await?;
        self.write_values(&tx, &v, t, &[id], &values, true).await?;
        if !cleared.is_empty() {
            tx.execute(
                &tx.prepare_cached(
                    "DELETE FROM record_values WHERE record_id = $1 AND column_id = ANY($2)",
                )
                .await?,
                &[&id, &cleared],
            )
            .await?;
        }
        release_tokens(&tx, &v.id, &old).await?;
        tx.execute(
            &tx.prepare_cached("UPDATE records SET updated_at = now() WHERE id = $1")
                .await?,
            &[&id],
        )
        .await?;
        tx.commit().await?;
        let mut tokens = BTreeMap::new();
        for pv in values {
            if let Some(tok) = pv.token {
                tokens.insert(pv.column.name.clone(), tok.token);
            }
        }
        Ok(InsertedRecord { id, tokens })
    }

    /// `DELETE …/records/{id}`: destroys the values; tokens no other record holds stop resolving;
    /// grants no longer name the record.
    pub async fn delete_record(
        &self,
        vault: &str,
        table: &str,
        id: &str,
        gate: &dyn Gate,
    ) -> Result<(), VaultError> {
        let v = self.load(vault).await?;
        let t = v.table(table)?;
        let id = parse_record_id(id)?;
        let facts = self.row_facts(&v, &[id], gate, false).await?;
        if let Some(row) = facts.get(&id)
            && !gate.allows(DataAction::Delete, &v, t, None, Some(row))
        {
            return Err(forbidden(DataAction::Delete, vec![]));
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.query_opt(
            &tx.prepare_cached("SELECT 1 FROM records WHERE id = $1 AND table_id = $2 FOR UPDATE")
                .await?,
            &[&id, &t.id],
        )
        .await?
        .ok_or_else(|| VaultError::NotFound("record".into()))?;
        let hashes: Vec<Vec<u8>> = tx
            .query(
                &tx.prepare_cached(
                    "DELETE FROM record_values WHERE record_id = $1 RETURNING token_hash",
                )
                .await?,
                &[&id],
            )
            .await?
            .iter()
            .filter_map(|r| r.get::<_, Option<Vec<u8>>>(0))
            .collect();
        tx.execute(
            &tx.prepare_cached("DELETE FROM records WHERE id = $1")
                .await?,
            &[&id],
        )
        .await?;
        tx.execute(
            &tx.prepare_cached("DELETE FROM grant_records WHERE record_id = $1")
                .await?,
            &[&id],
        )
        .await?;
        release_tokens(&tx, &v.id, &hashes).await?;
        tx.commit().await?;
        tracing::debug!(vault = %v.id, table = %t.id, record = %id, "deleted record");
        Ok(())
    }

    /// `POST /v1/vaults/{vault}/tokenize`: one token per value. A deterministic column returns
    /// the existing token for a value it already holds; other values are stored as new records
    /// holding just that column.
    pub async fn tokenize(
        &self,
        vault: &str,
        table: &str,
        column: &str,
        values: Vec<Value>,
        gate: &dyn Gate,
    ) -> Result<Vec<String>, VaultError> {
        check_batch(values.len(), "values")?;
        let v = self.load(vault).await?;
        let t = v.table(table)?;
        let c = t.column(column).ok_or_else(|| {
            VaultError::invalid(
                "unknown column",
                vec![Detail::field(
                    "column",
                    format!("`{column}` is not a column of table `{table}`"),
                )],
            )
        })?;
        if !gate.allows(DataAction::Tokenize, &v, t, Some(c), None) {
            return Err(forbidden(DataAction::Tokenize, vec![c.name.clone()]));
        }
        if c.tokenization == Tokenization::None {
            return Err(VaultError::invalid(
                "the column is not tokenized",
                vec![Detail::field(
                    "column",
                    format!("`{column}` has tokenization none"),
                )],
            ));
        }
        let records: Vec<Map<String, Value>> = values
            .into_iter()
            .map(|value| {
                if value.is_null() {
                    return Err(());
                }
                let mut m = Map::new();
                m.insert(column.to_string(), value);
                Ok(m)
            })
            .collect::<Result<_, _>>()
            .map_err(|_| {
                VaultError::invalid(
                    "values may not be null",
                    vec![Detail::field("values", "contains null")],
                )
            })?;
        let mut prepared = self.prepare(&v, t, &records, false).map_err(|e| match e {
            VaultError::Invalid { message, details } => VaultError::Invalid {
                message,
                details: details
                    .into_iter()
                    .map(|d| Detail {
                        index: d.record,
                        record: None,
                        ..Detail::field("values", d.reason)
                    })
                    .collect(),
            },
            other => other,
        })?;
        // Each position of the answer: its value among those tokenized below.
        let mut position: Vec<usize> = (0..prepared.len()).collect();
        // Deterministic values already held keep their record; the rest become new records.
        let mut held = vec![false; prepared.len()];
        if c.tokenization.is_deterministic() {
            let blinds: Vec<Vec<u8>> = prepared
                .iter()
                .map(|pv| v.keys.blind_index(&c.id, &pv.canonical))
                .collect();
            // A value the request repeats (as normalised: `Ann@x.com` and `ann@x.com` alike) is
            // tokenized once, so it gets one record and one token, not a record per repeat
            // (which a unique column refused as a conflict with itself).
            let mut first: HashMap<&[u8], usize> = HashMap::new();
            let mut keep = vec![false; blinds.len()];
            for (i, b) in blinds.iter().enumerate() {
                let next = first.len();
                position[i] = *first.entry(b.as_slice()).or_insert_with(|| {
                    keep[i] = true;
                    next
                });
            }
            let mut keeps = keep.iter();
            prepared.retain(|_| keeps.next().copied().unwrap_or(false));
            let blinds: Vec<Vec<u8>> = blinds
                .into_iter()
                .zip(&keep)
                .filter_map(|(b, k)| k.then_some(b))
                .collect();
            held = vec![false; prepared.len()];
            let client = self.pool.get().await?;
            let present: HashSet<Vec<u8>> = client
                .query(
                    &client.prepare_cached("SELECT DISTINCT blind_index FROM record_values WHERE column_id = $1 AND blind_index = ANY($2)").await?,
                    &[&c.id, &blinds],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            for (i, b) in blinds.iter().enumerate() {
                held[i] = present.contains(b);
            }
        }
        let mut fresh: Vec<PendingValue> = Vec::new();
        let mut slots: Vec<(bool, usize)> = Vec::new(); // (is fresh, index into fresh or prepared)
        let mut kept: Vec<PendingValue> = Vec::new();
        for (i, mut pv) in prepared.drain(..).enumerate() {
            if held[i] {
                slots.push((false, kept.len()));
                kept.push(pv);
            } else {
                pv.record = fresh.len();
                slots.push((true, fresh.len()));
                fresh.push(pv);
            }
        }
        if !kept.is_empty() {
            // Resolve each held value's existing token (a reserved format-preserving one may be a
            // later attempt after a collision).
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            lock_vault(&tx, &v).await?;
            self.allocate_tokens(&tx, &v, &mut kept).await?;
            tx.commit().await?;
        }
        if !fresh.is_empty() {
            let ids = new_record_ids(fresh.len());
            self.store_new(&v, t, &ids, &[], &mut fresh).await?;
        }
        let mut out = Vec::with_capacity(position.len());
        for at in position {
            let (is_fresh, i) = slots[at];
            let pv = if is_fresh { &fresh[i] } else { &kept[i] };
            out.push(
                pv.token
                    .as_ref()
                    .map(|t| t.token.clone())
                    .ok_or(VaultError::TokenSpace)?,
            );
        }
        Ok(out)
    }
}

/// Record ids are ordered without a clock: a 48-bit sequence, started at a random point when
/// the process starts, then 74 random bits (a version-8 UUID). Consecutive records land at the
/// right edge of their primary-key indexes instead of on a random page each, which on a large
/// table costs a page read and a full-page WAL image per row. Unlike UUIDv7 they do not reveal
/// when a record was created; two ids from one server run show only which came first. Ids stay
/// unique by their random part; a record id is a name, never a credential.
fn new_record_ids(n: usize) -> Vec<Uuid> {
    static NEXT: std::sync::LazyLock<std::sync::atomic::AtomicU64> =
        std::sync::LazyLock::new(|| {
            std::sync::atomic::AtomicU64::new(rand::rngs::OsRng.next_u64())
        });
    let start = NEXT.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    let mut random = vec![0u8; n * 10];
    rand::thread_rng().fill_bytes(&mut random);
    random
        .chunks_exact(10)
        .zip(0u64..)
        .map(|(r, i)| {
            let mut b = [0u8; 16];
            b[..6].copy_from_slice(&start.wrapping_add(i).to_be_bytes()[2..]);
            b[6..].copy_from_slice(r);
            Uuid::new_v8(b)
        })
        .collect()
}

/// Streams `rows` (of `types`) into the binary `COPY … FROM STDIN` `statement` and finishes it.
async fn copy_rows<'a, const N: usize>(
    tx: &deadpool_postgres::Transaction<'_>,
    statement: &str,
    types: &[Type; N],
    rows: impl Iterator<Item = [&'a (dyn ToSql + Sync); N]>,
) -> Result<u64, tokio_postgres::Error> {
    let sink = tx.copy_in(statement).await?;
    let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, types));
    for row in rows {
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await
}

/// Holds the vault row FOR KEY SHARE until the transaction ends: every transaction that writes
/// records, values or tokens takes it first, in place of per-row foreign keys (migration 0005).
/// A vault deleted meanwhile is not found; one being deleted waits for this transaction.
/// Returns the vault's active key version as the lock found it.
async fn lock_vault(tx: &impl GenericClient, v: &LoadedVault) -> Result<i32, VaultError> {
    tx.query_opt(
        &tx.prepare_cached("SELECT active_key_version FROM vaults WHERE id = $1 FOR KEY SHARE")
            .await?,
        &[&v.id],
    )
    .await?
    .map(|row| row.get(0))
    .ok_or_else(|| VaultError::NotFound(format!("vault `{}`", v.name)))
}

impl VaultService {
    /// [`lock_vault`], for a transaction that seals values under `v`'s active key version: that
    /// version must still be the vault's. `v` may have been loaded (or cached) before a rotation
    /// committed; its writes would then land under the old version after the rotation's walk
    /// may have passed them, and stay there with the walk marked done. The lock makes a rotation
    /// wait for the writers that hold it, and a writer that comes after one sees its version.
    /// A stale `v` is dropped from the cache and the request answered 409, to be sent again.
    async fn lock_vault_to_seal(
        &self,
        tx: &impl GenericClient,
        v: &LoadedVault,
    ) -> Result<(), VaultError> {
        let active = lock_vault(tx, v).await?;
        if active != v.keys.active_version {
            self.invalidate(&v.name);
            return Err(VaultError::Conflict {
                message: "the vault's data key was rotated while the request ran; retry".into(),
                details: Vec::new(),
            });
        }
        Ok(())
    }
}

/// Deletes the tokens among `hashes` that no stored value references any more.
async fn release_tokens(
    tx: &impl GenericClient,
    vault: &Uuid,
    hashes: &[Vec<u8>],
) -> Result<(), VaultError> {
    if hashes.is_empty() {
        return Ok(());
    }
    // Lock first, then check in a new statement (a fresh snapshot): an insert that is reusing
    // one of these tokens holds FOR SHARE on it until it commits its values.
    tx.execute(
        &tx.prepare_cached("SELECT 1 FROM tokens WHERE vault_id = $1 AND token_hash = ANY($2) ORDER BY token_hash FOR UPDATE").await?,
        &[vault, &hashes],
    )
    .await?;
    tx.execute(
        &tx.prepare_cached("DELETE FROM tokens t WHERE t.vault_id = $1 AND t.token_hash = ANY($2)
         AND NOT EXISTS (SELECT 1 FROM record_values rv WHERE rv.vault_id = $1 AND rv.token_hash = t.token_hash)").await?,
        &[vault, &hashes],
    )
    .await?;
    Ok(())
}

fn check_batch(n: usize, what: &str) -> Result<(), VaultError> {
    if n == 0 {
        return Err(VaultError::invalid(
            format!("`{what}` is empty"),
            vec![Detail::field(what, "needs at least one item")],
        ));
    }
    if n > MAX_BATCH {
        return Err(VaultError::invalid(
            format!("too many {what}: at most {MAX_BATCH} per request"),
            vec![Detail::field(
                what,
                format!("has {n} items; the limit is {MAX_BATCH}"),
            )],
        ));
    }
    Ok(())
}

pub(super) fn parse_record_id(id: &str) -> Result<Uuid, VaultError> {
    Uuid::parse_str(id).map_err(|_| VaultError::NotFound("record".into()))
}

fn wanted_columns(
    t: &Table,
    columns: Option<Vec<String>>,
) -> Result<Option<HashSet<Uuid>>, VaultError> {
    let Some(names) = columns else {
        return Ok(None);
    };
    if names.is_empty() {
        return Err(VaultError::invalid(
            "`columns` must name at least one column; leave it out for all of them",
            vec![Detail::field("columns", "is empty")],
        ));
    }
    let mut set = HashSet::new();
    let mut errors = Details::default();
    for name in names {
        match t.column(&name) {
            Some(c) => {
                set.insert(c.id);
            }
            None => errors.push_with(|| {
                Detail::field(
                    "columns",
                    format!("`{name}` is not a column of table `{}`", t.name),
                )
            }),
        }
    }
    if errors.is_empty() {
        Ok(Some(set))
    } else {
        Err(errors.invalid("unknown columns"))
    }
}

#[cfg(test)]
mod tests {
    use super::new_record_ids;

    #[test]
    fn record_ids_are_ordered_unique_and_not_timestamps() {
        let a = new_record_ids(1000);
        let b = new_record_ids(3);
        let all: Vec<_> = a.iter().chain(&b).collect();
        // Ascending within and across batches (unless the 48-bit sequence wraps, once in 2^48).
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            all.iter().collect::<std::collections::HashSet<_>>().len(),
            1003
        );
        for id in &all {
            assert_eq!(id.get_version_num(), 8, "{id}");
            assert!(id.get_timestamp().is_none());
        }
        // The random part differs between neighbours.
        assert_ne!(a[0].as_bytes()[6..], a[1].as_bytes()[6..]);
    }
}
