//! Logging. `STRONGROOM_LOG` takes a tracing filter (default `info`); `STRONGROOM_LOG_FORMAT=json`
//! switches to JSON lines.
//!
//! INVARIANT: no code logs a submitted value, a plaintext, a token, a key or a key secret. Spans
//! carry ids and counts only; request bodies are never logged.

use tracing_subscriber::EnvFilter;

/// The filter for `spec` (a `STRONGROOM_LOG` value). The database driver is capped at `info`
/// unless named: at `debug` it prints statement parameters (ciphertexts and keyed hashes, never
/// plaintexts, but there is no reason to spill them).
pub fn filter(spec: &str) -> EnvFilter {
    let spec = if spec.contains("tokio_postgres") {
        spec.to_string()
    } else {
        format!("{spec},tokio_postgres=info")
    };
    EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info,tokio_postgres=info"))
}

/// Installs the global subscriber writing to standard error. Safe to call more than once.
pub fn init() {
    let filter = filter(&std::env::var("STRONGROOM_LOG").unwrap_or_else(|_| "info".to_string()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let _ = if std::env::var("STRONGROOM_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
