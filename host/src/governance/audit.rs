//! The tamper-evident audit log.
//!
//! Each request that reaches `/v1` fills an [`Event`] while it runs (through [`note`]); when the
//! handler is done the event is appended by one writer task, which batches concurrent events
//! into one insert and chains them: `hash = HMAC(chain key, prev_hash || event)`. The request
//! waits for its event to be written; if that fails, the request fails (no unaudited access).
//!
//! The end of the chain is anchored too: `audit_head` holds the last sequence number and hash
//! with an HMAC under the chain key, moved in the same statement as each batch. Cutting events
//! off the end leaves the head ahead of the last event: `verify` reports the first missing
//! one, and the writer goes on after the head, so the gap stays in the chain for good. A head
//! that is missing or does not verify is tampering with the log itself: the server does not
//! start, and a running writer refuses to append (requests get 503 `audit_unavailable`).
//!
//! INVARIANT: an event holds ids, names, counts and policy ids, never a value or a secret.
//! INVARIANT: no event's content can fail a batch: names that fail the name rule are stored
//! as [`INVALID_NAME`], and every other text is cut to [`MAX_TEXT`] bytes without NUL, which
//! PostgreSQL refuses in `text`.

use super::GovError;
use crate::crypto::{Key, constant_time_eq, keyed_hash};
use crate::vault::schema::valid_name;
use chrono::{DateTime, SecondsFormat, Utc};
use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Record ids kept in one event; beyond that only the count.
const MAX_RECORD_IDS: usize = 100;
/// Events written in one insert.
const MAX_BATCH: usize = 512;
/// Stands in for a vault, table or column name that fails the name rule: such a name cannot
/// exist, and the raw text (it may hold a NUL, or be huge) is not stored.
pub const INVALID_NAME: &str = "(invalid name)";
/// The longest text an event keeps in any other field, in bytes.
const MAX_TEXT: usize = 256;

/// One audit event. Field order is the canonical order the chain hashes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub seq: i64,
    pub at: String,
    pub request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    pub action: String,
    pub method: String,
    pub route: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vault: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// `allow`, `deny`, or `partial` (some columns or tokens withheld).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counts: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// For connection calls: `<name>@<version>/<route>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    pub status: u16,
    pub outcome: String,
}

impl Event {
    /// Adds a record id (up to [`MAX_RECORD_IDS`]) and counts it.
    pub fn record(&mut self, id: impl ToString) {
        let id = id.to_string();
        if self.records.contains(&id) {
            return;
        }
        *self.counts.entry("records".into()).or_default() += 1;
        if self.records.len() < MAX_RECORD_IDS {
            self.records.push(id);
        }
    }

    pub fn column(&mut self, name: &str) {
        if !self.columns.iter().any(|c| c == name) {
            self.columns.push(name.to_string());
        }
    }

    pub fn count(&mut self, what: &str, n: u64) {
        *self.counts.entry(what.into()).or_default() += n;
    }

    /// Merges the policies and decision of one authorization.
    pub fn decided(&mut self, allowed: bool, policies: &[String]) {
        for p in policies {
            if !self.policies.contains(p) {
                self.policies.push(p.clone());
            }
        }
        let d = match (self.decision.as_deref(), allowed) {
            (None, true) => "allow",
            (None, false) => "deny",
            (Some("allow"), true) => "allow",
            (Some("deny"), false) => "deny",
            _ => "partial",
        };
        self.decision = Some(d.to_string());
    }

    /// Makes every text of the event storable (see the module's invariant).
    fn make_safe(&mut self) {
        for name in [&mut self.vault, &mut self.table].into_iter().flatten() {
            if !valid_name(name) {
                *name = INVALID_NAME.to_string();
            }
        }
        for name in &mut self.columns {
            if !valid_name(name) {
                *name = INVALID_NAME.to_string();
            }
        }
        for text in [
            &mut self.request_id,
            &mut self.action,
            &mut self.method,
            &mut self.route,
            &mut self.outcome,
        ] {
            safe_text(text);
        }
        for text in [
            &mut self.principal,
            &mut self.key_id,
            &mut self.purpose,
            &mut self.decision,
            &mut self.function,
            &mut self.connection,
        ]
        .into_iter()
        .flatten()
        {
            safe_text(text);
        }
        self.records.iter_mut().for_each(safe_text);
        self.policies.iter_mut().for_each(safe_text);
        if self.counts.keys().any(|k| needs_cleaning(k)) {
            self.counts = std::mem::take(&mut self.counts)
                .into_iter()
                .map(|(mut k, n)| {
                    safe_text(&mut k);
                    (k, n)
                })
                .collect();
        }
    }
}

fn needs_cleaning(text: &str) -> bool {
    text.len() > MAX_TEXT || text.contains('\0')
}

/// Cuts `text` to [`MAX_TEXT`] bytes (on a character boundary) and replaces NUL with U+FFFD.
fn safe_text(text: &mut String) {
    if !needs_cleaning(text) {
        return;
    }
    let mut out = String::with_capacity(text.len().min(MAX_TEXT));
    for c in text.chars() {
        let c = if c == '\0' { '\u{fffd}' } else { c };
        if out.len() + c.len_utf8() > MAX_TEXT {
            break;
        }
        out.push(c);
    }
    *text = out;
}

tokio::task_local! {
    static CURRENT: Arc<Mutex<Event>>;
}

/// Runs `fut` with `event` as the current request's audit event.
pub async fn scope<F: std::future::Future>(event: Arc<Mutex<Event>>, fut: F) -> F::Output {
    CURRENT.scope(event, fut).await
}

/// The current request's audit event, to carry into work done on another thread.
pub fn current() -> Option<Arc<Mutex<Event>>> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Adds to the current request's audit event (no-op outside a request).
pub fn note(f: impl FnOnce(&mut Event)) {
    let _ = CURRENT.try_with(|e| {
        if let Ok(mut e) = e.lock() {
            f(&mut e);
        }
    });
}

struct Pending {
    event: Event,
    done: oneshot::Sender<Result<i64, ()>>,
}

/// The handle requests append through.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Pending>,
    pool: Pool,
    key: Arc<Key>,
    /// How long `append` waits for its event to be stored.
    timeout: std::time::Duration,
}

/// The first event that does not verify.
#[derive(Debug, Serialize)]
pub struct Broken {
    pub seq: i64,
    pub reason: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Verification {
    pub ok: bool,
    pub events: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_broken: Option<Broken>,
}

/// Filters of `GET /v1/audit`.
#[derive(Debug, Default)]
pub struct Filter {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub principal: Option<String>,
    pub action: Option<String>,
    pub vault: Option<String>,
    pub after: Option<i64>,
    pub limit: i64,
}

fn chain_hash(key: &Key, prev: &[u8], event: &str) -> [u8; 32] {
    keyed_hash(key, &[b"audit-chain", prev, event.as_bytes()])
}

/// The MAC of the chain's head: its last sequence number and hash.
fn head_mac(key: &Key, seq: i64, hash: &[u8]) -> [u8; 32] {
    keyed_hash(key, &[b"audit-head", &seq.to_be_bytes(), hash])
}

/// The stored head, as read.
struct Head {
    seq: i64,
    hash: Vec<u8>,
    mac: Vec<u8>,
}

impl Head {
    fn signed_by(&self, key: &Key) -> bool {
        constant_time_eq(&head_mac(key, self.seq, &self.hash), &self.mac)
    }
}

async fn read_head(client: &deadpool_postgres::Object) -> Result<Option<Head>, GovError> {
    let row = client
        .query_opt(
            &client
                .prepare_cached("SELECT seq, hash, mac FROM audit_head")
                .await?,
            &[],
        )
        .await?;
    Ok(row.map(|r| Head {
        seq: r.get(0),
        hash: r.get(1),
        mac: r.get(2),
    }))
}

impl AuditLog {
    /// Checks the chain's head, adopting one no server has signed yet, and starts the writer
    /// task. `append` waits at most `timeout` for its event.
    ///
    /// Fails when the head is missing or its MAC does not verify. A head ahead of the last
    /// event (the log's end was cut off) is logged as an error, and the chain goes on after the
    /// head: the missing events stay a gap that `verify` reports.
    pub async fn start(
        pool: Pool,
        key: Key,
        new_chain: bool,
        timeout: std::time::Duration,
    ) -> Result<AuditLog, GovError> {
        let adopted = adopt_unsigned_head(&pool, &key, new_chain).await?;
        tail(&pool, &key).await?;
        let (tx, rx) = mpsc::channel(4096);
        let key = Arc::new(key);
        tokio::spawn(writer(pool.clone(), key.clone(), rx));
        let log = AuditLog {
            tx,
            pool,
            key,
            timeout,
        };
        if let Some(seq) = adopted {
            let mut event = Event {
                request_id: "startup".into(),
                action: "adopt_audit_head".into(),
                route: "startup".into(),
                outcome: "ok".into(),
                ..Event::default()
            };
            event.count("head_seq", seq.unsigned_abs());
            log.append(event).await?;
        }
        Ok(log)
    }

    /// Appends an event and waits until it is stored. Returns its sequence number.
    ///
    /// An error when the event could not be stored, or was not stored within the timeout (the
    /// database stalled): the request is then answered 503 instead of its result. A timed-out
    /// event already in the writer's queue is still stored, in order, once the database moves
    /// again; one that timed out waiting for room in the queue is dropped. Either way its answer
    /// was withheld: the log may hold an event for a withheld answer, never an answer without
    /// its event.
    pub async fn append(&self, event: Event) -> Result<i64, GovError> {
        let (done, wait) = oneshot::channel();
        let stored = async {
            self.tx
                .send(Pending { event, done })
                .await
                .map_err(|_| GovError::Audit)?;
            wait.await
                .map_err(|_| GovError::Audit)?
                .map_err(|_| GovError::Audit)
        };
        tokio::time::timeout(self.timeout, stored)
            .await
            .map_err(|_| GovError::AuditTimeout)?
    }

    /// `GET /v1/audit`.
    pub async fn query(&self, f: &Filter) -> Result<Vec<serde_json::Value>, GovError> {
        let mut client = self.pool.get().await?;
        // Planned for the filters given, not generically (the pool's default): a generic plan
        // cannot use the principal or time index behind `$n IS NULL OR …`, and walked the
        // whole log in `seq` order (3 million events: 640 ms for a rare principal, 0.3 ms
        // planned for it).
        let tx = client.transaction().await?;
        tx.batch_execute("SET LOCAL plan_cache_mode = force_custom_plan")
            .await?;
        let rows = tx
            .query(
                &tx.prepare_cached("SELECT event FROM audit_events
                 WHERE ($1::timestamptz IS NULL OR at >= $1) AND ($2::timestamptz IS NULL OR at < $2)
                   AND ($3::text IS NULL OR principal = $3) AND ($4::text IS NULL OR action = $4)
                   AND ($5::text IS NULL OR vault = $5) AND ($6::bigint IS NULL OR seq > $6)
                 ORDER BY seq LIMIT $7").await?,
                &[&f.since, &f.until, &f.principal, &f.action, &f.vault, &f.after, &f.limit],
            )
            .await?;
        tx.commit().await?;
        Ok(rows
            .iter()
            .filter_map(|r| serde_json::from_str(r.get::<_, &str>(0)).ok())
            .collect())
    }

    /// `GET /v1/audit/verify`: walks the chain from the start, up to its signed head.
    pub async fn verify(&self) -> Result<Verification, GovError> {
        let client = self.pool.get().await?;
        // Read first: every event up to it is committed (they move in one statement), and
        // events written meanwhile only add to the walk.
        let head = read_head(&client).await?;
        let mut prev = vec![0u8; 32];
        let mut expected_seq = 1i64;
        let mut events = 0u64;
        loop {
            let rows = client
                .query(
                    &client.prepare_cached("SELECT seq, event, prev_hash, hash, at, principal, action, vault FROM audit_events WHERE seq >= $1 ORDER BY seq LIMIT 5000").await?,
                    &[&expected_seq],
                )
                .await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let seq: i64 = row.get(0);
                let text: &str = row.get(1);
                let stored_prev: &[u8] = row.get(2);
                let hash: &[u8] = row.get(3);
                let parsed = serde_json::from_str::<Event>(text).ok();
                // The columns that searches filter on are copies of the content: a copy changed
                // by hand would hide an event from a search while the chain still held.
                let columns_match = parsed.as_ref().is_some_and(|e| {
                    let at: chrono::DateTime<Utc> = row.get(4);
                    at.to_rfc3339_opts(SecondsFormat::Micros, true) == e.at
                        && row.get::<_, Option<&str>>(5) == e.principal.as_deref()
                        && row.get::<_, &str>(6) == e.action
                        && row.get::<_, Option<&str>>(7) == e.vault.as_deref()
                });
                let broken = |reason| Broken { seq, reason };
                let problem = if seq != expected_seq {
                    Some(Broken {
                        seq: expected_seq,
                        reason: "missing event (sequence gap)",
                    })
                } else if stored_prev != prev.as_slice() {
                    Some(broken("does not link to the previous event"))
                } else if chain_hash(&self.key, &prev, text).as_slice() != hash {
                    Some(broken("hash does not match its content"))
                } else if parsed.as_ref().map(|e| e.seq) != Some(seq) {
                    Some(broken("content names another sequence number"))
                } else if !columns_match {
                    Some(broken("its searchable columns differ from its content"))
                } else if head
                    .as_ref()
                    .is_some_and(|h| h.seq == seq && h.hash != hash)
                {
                    Some(broken("does not match the signed head of the log"))
                } else {
                    None
                };
                if let Some(first_broken) = problem {
                    return Ok(Verification {
                        ok: false,
                        events,
                        first_broken: Some(first_broken),
                    });
                }
                prev = hash.to_vec();
                expected_seq += 1;
                events += 1;
            }
        }
        let problem = match &head {
            None => Some(Broken {
                seq: expected_seq,
                reason: "the signed head of the log is missing",
            }),
            Some(h) if !h.signed_by(&self.key) => Some(Broken {
                seq: h.seq,
                reason: "the head of the log is not signed by this server",
            }),
            Some(h) if h.seq >= expected_seq => Some(Broken {
                seq: expected_seq,
                reason: "missing event (the log ends before its signed head)",
            }),
            Some(_) => None,
        };
        Ok(Verification {
            ok: problem.is_none(),
            events,
            first_broken: problem,
        })
    }
}

/// Signs a head no server has signed yet (migration 0008 writes one without the chain key, at
/// the end of the log as it was), if it is still at the end of the log. Returns its sequence
/// number when the log was not empty, for the caller to record the adoption in the chain.
/// Signs a head no server has signed yet, at the log's end. Silently only for the empty log
/// of a chain whose key this start created (a new installation); otherwise, an empty log
/// included, it is logged and returned for an `adopt_audit_head` event: a wiped log with its
/// head reset to zero is not taken in unnoticed.
async fn adopt_unsigned_head(
    pool: &Pool,
    key: &Key,
    new_chain: bool,
) -> Result<Option<i64>, GovError> {
    let client = pool.get().await?;
    let Some(head) = read_head(&client).await? else {
        return Ok(None);
    };
    if !head.mac.is_empty() {
        return Ok(None);
    }
    let last = last_event(&client).await?;
    if last.as_ref().map_or(0, |(seq, _)| *seq) != head.seq
        || last.as_ref().is_some_and(|(_, hash)| *hash != head.hash)
    {
        tracing::error!(
            head_seq = head.seq,
            "the audit log's unsigned head is not at the end of the log; not adopting it"
        );
        return Err(GovError::Audit);
    }
    let mac = head_mac(key, head.seq, &head.hash).to_vec();
    let n = client
        .execute(
            "UPDATE audit_head SET mac = $1 WHERE seq = $2 AND mac = ''",
            &[&mac, &head.seq],
        )
        .await?;
    if n == 0 || (head.seq == 0 && new_chain) {
        return Ok(None);
    }
    tracing::warn!(
        head_seq = head.seq,
        "the audit log's head was not signed (first start after upgrading, or an operator reset it): it is signed now, at the log's current end"
    );
    Ok(Some(head.seq))
}

async fn last_event(
    client: &deadpool_postgres::Object,
) -> Result<Option<(i64, Vec<u8>)>, GovError> {
    let row = client
        .query_opt(
            &client
                .prepare_cached("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
                .await?,
            &[],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// Where the chain goes on: its signed head (the last sequence number and hash).
///
/// An error when the head is missing or not signed by this server. A head ahead of the last
/// event means the end of the log was cut off: logged, and the chain goes on after the head.
async fn tail(pool: &Pool, key: &Key) -> Result<(i64, Vec<u8>), GovError> {
    let client = pool.get().await?;
    let Some(head) = read_head(&client).await? else {
        tracing::error!("the audit log's signed head is missing; refusing to append");
        return Err(GovError::Audit);
    };
    if !head.signed_by(key) {
        tracing::error!(
            head_seq = head.seq,
            "the audit log's head is not signed by this server; refusing to append"
        );
        return Err(GovError::Audit);
    }
    let last = last_event(&client).await?.map_or(0, |(seq, _)| seq);
    if last < head.seq {
        tracing::error!(
            last_seq = last,
            head_seq = head.seq,
            "audit events are missing from the end of the log (it ends before its signed head); the chain goes on after the head and GET /v1/audit/verify reports the gap"
        );
    } else if last > head.seq {
        tracing::error!(
            last_seq = last,
            head_seq = head.seq,
            "the audit log holds events after its signed head; refusing to append"
        );
        return Err(GovError::Audit);
    }
    Ok((head.seq, head.hash))
}

async fn writer(pool: Pool, key: Arc<Key>, mut rx: mpsc::Receiver<Pending>) {
    let mut state: Option<(i64, Vec<u8>)> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let result = write_batch(&pool, &key, &mut state, &mut batch).await;
        crate::metrics::audit_batch(batch.len(), result.is_ok(), started.elapsed());
        if let Err(e) = &result {
            tracing::error!(error = %e, events = batch.len(), "could not write audit events");
            // Re-read the tail next time: the failed batch may or may not have landed.
            state = None;
        }
        for p in batch {
            let answer = match &result {
                Ok(()) => Ok(p.event.seq),
                Err(_) => Err(()),
            };
            let _ = p.done.send(answer);
        }
    }
}

async fn write_batch(
    pool: &Pool,
    key: &Key,
    state: &mut Option<(i64, Vec<u8>)>,
    batch: &mut [Pending],
) -> Result<(), GovError> {
    let (mut seq, mut prev) = match state.take() {
        Some(s) => s,
        None => tail(pool, key).await?,
    };
    let head_before = seq;
    let now = Utc::now();
    let mut seqs = Vec::with_capacity(batch.len());
    let mut texts = Vec::with_capacity(batch.len());
    let mut prevs = Vec::with_capacity(batch.len());
    let mut hashes = Vec::with_capacity(batch.len());
    let mut ats = Vec::with_capacity(batch.len());
    let mut principals = Vec::with_capacity(batch.len());
    let mut actions = Vec::with_capacity(batch.len());
    let mut vaults = Vec::with_capacity(batch.len());
    for p in batch.iter_mut() {
        seq += 1;
        p.event.make_safe();
        p.event.seq = seq;
        p.event.at = now.to_rfc3339_opts(SecondsFormat::Micros, true);
        let text = serde_json::to_string(&p.event).map_err(|_| GovError::Audit)?;
        let hash = chain_hash(key, &prev, &text).to_vec();
        seqs.push(seq);
        prevs.push(std::mem::replace(&mut prev, hash.clone()));
        hashes.push(hash);
        texts.push(text);
        ats.push(now);
        principals.push(p.event.principal.clone());
        actions.push(p.event.action.clone());
        vaults.push(p.event.vault.clone());
    }
    let mac = head_mac(key, seq, &prev).to_vec();
    let client = pool.get().await?;
    // One statement: the head moves from where this writer left it, with the events, or
    // neither happens (another writer, or a hand on the table, moved it).
    let stored = client
        .execute(
            &client.prepare_cached("WITH head AS (
                 UPDATE audit_head SET seq = $9, hash = $10, mac = $11 WHERE seq = $12 RETURNING 1)
             INSERT INTO audit_events (seq, event, prev_hash, hash, at, principal, action, vault)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::bytea[], $4::bytea[], $5::timestamptz[], $6::text[], $7::text[], $8::text[])
             WHERE EXISTS (SELECT 1 FROM head)").await?,
            &[&seqs, &texts, &prevs, &hashes, &ats, &principals, &actions, &vaults, &seq, &prev, &mac, &head_before],
        )
        .await?;
    if stored != batch.len() as u64 {
        tracing::error!(
            head_seq = head_before,
            "the audit log's head moved under the writer; the batch was not stored"
        );
        return Err(GovError::Audit);
    }
    *state = Some((seq, prev));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_merge() {
        let mut e = Event::default();
        e.decided(true, &["a".into()]);
        assert_eq!(e.decision.as_deref(), Some("allow"));
        e.decided(true, &["a".into(), "b".into()]);
        assert_eq!(e.policies, vec!["a", "b"]);
        e.decided(false, &[]);
        assert_eq!(e.decision.as_deref(), Some("partial"));
    }

    #[test]
    fn record_ids_are_capped_but_counted() {
        let mut e = Event::default();
        for i in 0..150 {
            e.record(i);
        }
        assert_eq!(e.records.len(), MAX_RECORD_IDS);
        assert_eq!(e.counts["records"], 150);
    }

    #[test]
    fn no_content_can_fail_a_batch() {
        let mut e = Event {
            vault: Some("a\0b".into()),
            table: Some("x".repeat(300)),
            columns: vec!["ok".into(), "Bad".into()],
            action: "GET \0".into(),
            principal: Some("é".repeat(200)),
            policies: vec!["p\0".into()],
            ..Event::default()
        };
        e.make_safe();
        assert_eq!(e.vault.as_deref(), Some(INVALID_NAME));
        assert_eq!(e.table.as_deref(), Some(INVALID_NAME));
        assert_eq!(e.columns, vec!["ok", INVALID_NAME]);
        assert_eq!(e.action, "GET \u{fffd}");
        assert_eq!(e.policies, vec!["p\u{fffd}"]);
        let principal = e.principal.unwrap_or_default();
        assert!(principal.len() <= MAX_TEXT && principal.chars().all(|c| c == 'é'));
        let mut fine = Event {
            vault: Some("payments".into()),
            action: "read".into(),
            ..Event::default()
        };
        let before = fine.clone();
        fine.make_safe();
        assert_eq!(fine, before);
    }

    #[test]
    fn the_head_mac_binds_seq_and_hash() {
        let key = Key::generate();
        let head = Head {
            seq: 7,
            hash: vec![1; 32],
            mac: head_mac(&key, 7, &[1; 32]).to_vec(),
        };
        assert!(head.signed_by(&key));
        assert!(!head.signed_by(&Key::generate()));
        let moved = Head { seq: 8, ..head };
        assert!(!moved.signed_by(&key));
    }

    #[test]
    fn the_chain_depends_on_every_byte() {
        let key = Key::generate();
        let a = chain_hash(&key, &[0; 32], "{\"seq\":1}");
        assert_ne!(a, chain_hash(&key, &[0; 32], "{\"seq\":2}"));
        assert_ne!(a, chain_hash(&key, &[1; 32], "{\"seq\":1}"));
        assert_ne!(a, chain_hash(&Key::generate(), &[0; 32], "{\"seq\":1}"));
    }
}
