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

/// One token's stored value, found by its hash.
pub(super) struct Hit {
    /// Position of the token in the request.
    pub index: usize,
    pub record: Uuid,
    pub column: Uuid,
    pub key_version: i32,
    pub sealed: Vec<u8>,
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
            sealed: row.try_get(4)?,
        });
    }
    Ok(hits)
}

async fn query(
    pool: &Pool,
    vaults: &[Uuid],
    hashes: &[&[u8]],
) -> Result<Vec<tokio_postgres::Row>, DbError> {
    let client = pool.get().await?;
    // One index probe per position, whatever the planner's statistics say.
    let stmt = client
        .prepare_cached(
            "SELECT x.i, rv.record_id, rv.column_id, rv.key_version, rv.sealed
             FROM unnest($1::uuid[], $2::bytea[]) WITH ORDINALITY AS x(v, h, i)
             CROSS JOIN LATERAL (SELECT record_id, column_id, key_version, sealed FROM record_values
                                 WHERE vault_id = x.v AND token_hash = x.h LIMIT 1) rv",
        )
        .await?;
    Ok(client.query(&stmt, &[&vaults, &hashes]).await?)
}
