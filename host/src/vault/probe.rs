//! Token probes, coalesced: concurrent small detokenize requests share one statement.
//!
//! A detokenize of one token is mostly fixed cost, and most of it is PostgreSQL's: a statement
//! to bind, plan, start and finish, and a round trip over the socket each way. Under load, many
//! such requests are waiting at the same moment; [`Prober`] gathers what is queued into one
//! `unnest … WITH ORDINALITY` statement and hands each request its own rows. Nothing is held
//! back to wait for company: a worker takes whatever is queued when it is free, so one request
//! on an idle server runs at once, alone.
//!
//! Only the lookup is shared. Each request still checks its own policies, opens its own values
//! and writes its own audit event, so what a caller may see is decided as before. The rows a
//! statement returns are split by position, and every position carries its request's vault.

use crate::db::DbError;
use deadpool_postgres::Pool;
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

/// Requests with at most this many tokens are coalesced; larger ones already amortise the
/// statement and run on their own.
const SMALL: usize = 32;
/// Most tokens in one coalesced statement.
const MAX_TOKENS: usize = 512;
/// Statements in flight at once. A new batch forms while these run.
const WORKERS: usize = 2;
/// Requests that may wait for a worker (senders wait beyond it).
const QUEUE: usize = 4096;

/// Stored values up to this size come back with their hit; larger ones (files) only report
/// their size, and are read with [`sealed_values`] once the caller's policies allow them and
/// the answer has room. So a request for many large values, or one large value many times,
/// cannot make the server hold them before anything has been decided.
pub(super) const INLINE_BYTES: usize = 64 << 10;

/// One token's stored value, found by its hash.
pub(super) struct Hit {
    /// Position of the token in the request.
    pub index: usize,
    pub record: Uuid,
    pub column: Uuid,
    pub key_version: i32,
    /// `None` when the value is larger than [`INLINE_BYTES`].
    pub sealed: Option<Vec<u8>>,
    /// Size of the sealed value in bytes.
    pub size: usize,
}

/// The error of a shared statement: every request in the batch gets the same one.
pub(super) type Shared = Arc<DbError>;

struct Job {
    vault: Uuid,
    hashes: Vec<Vec<u8>>,
    done: oneshot::Sender<Result<Vec<Hit>, Shared>>,
}

/// Finds each token hash's stored value in one vault, coalescing concurrent small requests.
#[derive(Clone)]
pub(super) struct Prober {
    tx: mpsc::Sender<Job>,
    pool: Pool,
}

impl Prober {
    /// Starts the workers (they stop when the last `Prober` is dropped).
    pub fn start(pool: Pool) -> Prober {
        let (tx, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..WORKERS {
            tokio::spawn(worker(pool.clone(), rx.clone()));
        }
        Prober { tx, pool }
    }

    /// The stored value of each of `hashes` in vault `vault`, in no particular order; a hash
    /// with no value has no hit.
    pub async fn probe(&self, vault: Uuid, hashes: Vec<Vec<u8>>) -> Result<Vec<Hit>, Shared> {
        if hashes.len() > SMALL {
            let mut hits = lookup(&self.pool, &[(vault, &hashes)])
                .await
                .map_err(Arc::new)?;
            return Ok(hits.pop().unwrap_or_default());
        }
        let (done, answer) = oneshot::channel();
        let job = Job {
            vault,
            hashes,
            done,
        };
        if self.tx.send(job).await.is_err() {
            return Err(Arc::new(DbError::Stopped));
        }
        answer.await.unwrap_or(Err(Arc::new(DbError::Stopped)))
    }
}

async fn worker(pool: Pool, rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
    loop {
        let batch = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut tokens = first.hashes.len();
            let mut batch = vec![first];
            while tokens < MAX_TOKENS {
                match rx.try_recv() {
                    Ok(job) => {
                        tokens += job.hashes.len();
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            batch
        };
        let asked: Vec<(Uuid, &[Vec<u8>])> = batch
            .iter()
            .map(|j| (j.vault, j.hashes.as_slice()))
            .collect();
        match lookup(&pool, &asked).await {
            Ok(hits) => {
                for (job, hits) in batch.into_iter().zip(hits) {
                    let _ = job.done.send(Ok(hits));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for job in batch {
                    let _ = job.done.send(Err(e.clone()));
                }
            }
        }
    }
}

/// One statement for every `(vault, hashes)` asked; the hits of each, in the same order.
async fn lookup(pool: &Pool, asked: &[(Uuid, &[Vec<u8>])]) -> Result<Vec<Vec<Hit>>, DbError> {
    let mut vaults = Vec::new();
    let mut hashes = Vec::new();
    // Positions are 1-based and ascending; request k owns [start_k, start_k + len_k).
    let mut starts = Vec::with_capacity(asked.len());
    for (vault, hs) in asked {
        starts.push(hashes.len());
        for h in hs.iter() {
            vaults.push(*vault);
            hashes.push(h.as_slice());
        }
    }
    let rows = query(pool, &vaults, &hashes).await?;
    let mut hits: Vec<Vec<Hit>> = asked.iter().map(|_| Vec::new()).collect();
    for row in rows {
        // `try_get`, not `get`: a worker that panicked would not come back.
        let position = usize::try_from(row.try_get::<_, i64>(0)? - 1).unwrap_or(usize::MAX);
        if position >= hashes.len() {
            continue;
        }
        let k = starts.partition_point(|s| *s <= position) - 1;
        hits[k].push(Hit {
            index: position - starts[k],
            record: row.try_get(1)?,
            column: row.try_get(2)?,
            key_version: row.try_get(3)?,
            sealed: row
                .try_get::<_, Option<Vec<u8>>>(4)?
                .filter(|s| s.len() <= INLINE_BYTES),
            size: usize::try_from(row.try_get::<_, i32>(5)?).unwrap_or(usize::MAX),
        });
    }
    Ok(hits)
}

/// One index probe per position, whatever the planner's statistics say. Values over
/// [`INLINE_BYTES`] come back as their size alone (`octet_length` of a stored, TOASTed value
/// reads its header, not the value).
const LOOKUP: &str = "SELECT x.i, rv.record_id, rv.column_id, rv.key_version,
        CASE WHEN rv.size <= 65536 THEN rv.sealed END, rv.size
 FROM unnest($1::uuid[], $2::bytea[]) WITH ORDINALITY AS x(v, h, i)
 CROSS JOIN LATERAL (SELECT record_id, column_id, key_version, sealed,
                            octet_length(sealed) AS size FROM record_values
                     WHERE vault_id = x.v AND token_hash = x.h LIMIT 1) rv";

async fn query(
    pool: &Pool,
    vaults: &[Uuid],
    hashes: &[&[u8]],
) -> Result<Vec<tokio_postgres::Row>, DbError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(LOOKUP).await?;
    Ok(client.query(&stmt, &[&vaults, &hashes]).await?)
}

/// The sealed values (and their key versions) of `(record, column)` pairs in vault `vault`,
/// for the hits [`INLINE_BYTES`] left without one. A value deleted meanwhile is absent.
pub(super) async fn sealed_values(
    pool: &Pool,
    vault: Uuid,
    pairs: &[(Uuid, Uuid)],
) -> Result<std::collections::HashMap<(Uuid, Uuid), (i32, Vec<u8>)>, DbError> {
    let (records, columns): (Vec<Uuid>, Vec<Uuid>) = pairs.iter().copied().unzip();
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT rv.record_id, rv.column_id, rv.key_version, rv.sealed
             FROM unnest($2::uuid[], $3::uuid[]) AS x(r, c)
             JOIN record_values rv ON rv.record_id = x.r AND rv.column_id = x.c AND rv.vault_id = $1",
        )
        .await?;
    let mut out = std::collections::HashMap::with_capacity(pairs.len());
    for row in client.query(&stmt, &[&vault, &records, &columns]).await? {
        out.insert(
            (row.try_get(0)?, row.try_get(1)?),
            (row.try_get(2)?, row.try_get(3)?),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_lookup_returns_values_inline_up_to_inline_bytes() {
        assert!(super::LOOKUP.contains(&format!("rv.size <= {}", super::INLINE_BYTES)));
    }
}
