//! The database: a connection pool and the migrations in `migrations/`, applied at start.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

/// Migrations, in order. Each runs once, in its own transaction; applied versions are recorded
/// in `schema_migrations`, so running them again is a no-op.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "vault_core",
        include_str!("../../../migrations/0001_vault_core.sql"),
    ),
    (
        2,
        "governance",
        include_str!("../../../migrations/0002_governance.sql"),
    ),
    (
        3,
        "functions",
        include_str!("../../../migrations/0003_functions.sql"),
    ),
    (
        4,
        "connections",
        include_str!("../../../migrations/0004_connections.sql"),
    ),
    (
        5,
        "write_path",
        include_str!("../../../migrations/0005_write_path.sql"),
    ),
    (
        6,
        "opaque_tokens",
        include_str!("../../../migrations/0006_opaque_tokens.sql"),
    ),
    (
        7,
        "rotation_walk",
        include_str!("../../../migrations/0007_rotation_walk.sql"),
    ),
    (
        8,
        "governance_hardening",
        include_str!("../../../migrations/0008_governance_hardening.sql"),
    ),
    (
        9,
        "function_artifacts",
        include_str!("../../../migrations/0009_function_artifacts.sql"),
    ),
];

/// Arbitrary constant for the advisory lock that serialises concurrent migrators.
const MIGRATION_LOCK: i64 = 0x5354_524f_4e47;

/// A database failure. Its text comes from PostgreSQL and never holds parameters (values are
/// always sent as bind parameters, which PostgreSQL does not echo in errors we surface).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database unavailable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("could not create the connection pool: {0}")]
    Build(#[from] deadpool_postgres::BuildError),
    /// A statement that served several requests failed; each of them holds the same error.
    #[error(transparent)]
    Shared(std::sync::Arc<DbError>),
    /// A worker that runs statements for requests has stopped (the server is shutting down).
    #[error("the database worker has stopped")]
    Stopped,
}

impl DbError {
    /// Whether the database is down, out of connections or too slow (answered 503), rather
    /// than refusing a statement; with the sentence to answer.
    pub fn unavailable(&self) -> Option<&'static str> {
        match self {
            DbError::Pool(_) | DbError::Stopped => Some("the database is unavailable; try again"),
            DbError::Postgres(e) if timed_out(e) => {
                Some("the database did not answer in time; try again")
            }
            DbError::Postgres(e) if connection_lost(e) => {
                Some("the database is unavailable; try again")
            }
            DbError::Shared(e) => e.unavailable(),
            _ => None,
        }
    }

    /// Whether PostgreSQL gave the statement's transaction up for a concurrent one that changed
    /// the same rows (a deadlock, or a serialization failure): nothing was written, and the same
    /// request sent again can succeed (answered 409). The client's doing, or its neighbours',
    /// not a server fault.
    pub fn concurrent_change(&self) -> bool {
        match self {
            DbError::Postgres(e) => retryable(e.code()),
            DbError::Shared(e) => e.concurrent_change(),
            _ => false,
        }
    }
}

fn retryable(code: Option<&tokio_postgres::error::SqlState>) -> bool {
    use tokio_postgres::error::SqlState;
    code.is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

/// A pool over `config` with `size` connections. Waiting for a free connection, and opening
/// a new one, each give up after `wait` (`PoolError::Timeout`, answered 503): a database that
/// hangs, or a pool held by slow requests, does not hold every request forever. Once it has
/// its connection, one statement may run for `statement` (PostgreSQL's `statement_timeout`,
/// lock waits included; answered 503 too, see [`timed_out`]). Work that may rightly take
/// longer lifts it for its own transaction with [`UNLIMITED`].
///
/// Statements are prepared once per connection (`prepare_cached`) and planned generically:
/// every hot query is written as index probes (`unnest` + `LATERAL`), so a generic plan is as
/// good as a custom one, and re-planning on each execution was most of the database's work.
pub fn pool(
    mut config: tokio_postgres::Config,
    size: usize,
    wait: std::time::Duration,
    statement: std::time::Duration,
) -> Result<Pool, DbError> {
    let ours = format!(
        "-c plan_cache_mode=force_generic_plan -c statement_timeout={}",
        statement.as_millis()
    );
    let options = match config.get_options() {
        Some(o) if !o.is_empty() => format!("{o} {ours}"),
        _ => ours,
    };
    config.options(&options);
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(wait))
        .create_timeout(Some(wait))
        .build()?)
}

/// Lifts the statement timeout for the rest of the current transaction: for work that may
/// rightly run long (migrations, deleting a vault's data), and only after its lock waits.
pub const UNLIMITED: &str = "SET LOCAL statement_timeout = 0";

/// Whether `e` is PostgreSQL cancelling a statement that ran past the statement timeout.
fn timed_out(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
}

/// Whether `e` is the connection failing rather than PostgreSQL refusing a statement.
fn connection_lost(e: &tokio_postgres::Error) -> bool {
    e.is_closed() || e.as_db_error().is_none()
}

/// Applies every migration not yet applied.
pub async fn migrate(pool: &Pool) -> Result<usize, DbError> {
    let mut client = pool.get().await?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    let tx = client.transaction().await?;
    tx.batch_execute(UNLIMITED).await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let mut applied = 0;
    for (version, name, sql) in MIGRATIONS {
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await?
            .is_some();
        if done {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        tracing::info!(version, name, "applied migration");
        applied += 1;
    }
    tx.commit().await?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlocks_and_serialization_failures_are_retryable_other_states_are_not() {
        assert!(retryable(Some(
            &tokio_postgres::error::SqlState::from_code("40P01")
        )));
        assert!(retryable(Some(
            &tokio_postgres::error::SqlState::from_code("40001")
        )));
        for other in ["23505", "57014", "40002", "XX000", "08006"] {
            assert!(
                !retryable(Some(&tokio_postgres::error::SqlState::from_code(other))),
                "{other}"
            );
        }
        assert!(!retryable(None));
        assert!(!DbError::Stopped.concurrent_change());
    }
}
