//! Functions: user-supplied Wasm components that transform messages, run in the sandbox.
//!
//! Upload validates before it accepts: a real component, under the size limit, importing only
//! allowed interfaces, implementing the `transform` world of `wit/`, with grants that name
//! existing columns. The version is the component's sha256. Compiled code is cached on disk,
//! keyed by version and engine, so a restart does not recompile. Each invocation gets a fresh
//! store; the pre-instantiated component is shared.

pub mod sandbox;

use crate::governance::accounts::Caller;
use crate::governance::gate::CedarGate;
use crate::governance::{Governance, audit};
use crate::vault::access::{DataAction, Gate, RowFacts};
use crate::vault::schema::valid_name;
use crate::vault::{Column, LoadedVault, Redaction, Table, VaultService};
use deadpool_postgres::Pool;
use sandbox::{Failure, Hook, HttpMessage, Sandbox, State, TransformPre};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use uuid::Uuid;
use wasmtime::component::Component;
use zeroize::Zeroizing;

/// Largest accepted component.
pub const MAX_COMPONENT_BYTES: usize = 16 << 20;

/// One line a function logged (stdout, stderr or the `log` import), capped.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub level: &'static str,
    pub message: String,
}

/// A function's limits, resolved from its manifest.
#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    pub memory_mib: u64,
    pub timeout_ms: u64,
    pub max_log_bytes: usize,
    pub max_output_bytes: usize,
}

/// What a function may detokenize.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub vault: String,
    pub table: String,
    pub columns: Vec<String>,
    /// The most revealing level granted: `plain`, `masked` or `redacted`.
    pub redaction: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestLimits {
    pub memory_mib: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub max_log_bytes: Option<usize>,
    pub max_output_bytes: Option<usize>,
}

/// The manifest uploaded with a component.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub grants: Vec<Grant>,
    #[serde(default)]
    pub limits: ManifestLimits,
}

impl Manifest {
    fn limits(&self) -> Limits {
        Limits {
            memory_mib: self.limits.memory_mib.unwrap_or(64),
            timeout_ms: self.limits.timeout_ms.unwrap_or(250),
            max_log_bytes: self.limits.max_log_bytes.unwrap_or(64 << 10),
            max_output_bytes: self.limits.max_output_bytes.unwrap_or(8 << 20),
        }
    }

    fn check(&self) -> Result<(), String> {
        if !valid_name(&self.name) {
            return Err("`name` must match ^[a-z][a-z0-9_-]{0,62}$".into());
        }
        let l = &self.limits;
        if l.memory_mib
            .is_some_and(|m| m == 0 || m > sandbox::MAX_MEMORY_MIB)
        {
            return Err(format!(
                "`limits.memory_mib` must be 1 to {}",
                sandbox::MAX_MEMORY_MIB
            ));
        }
        if l.timeout_ms.is_some_and(|t| t == 0 || t > 10_000) {
            return Err("`limits.timeout_ms` must be 1 to 10000".into());
        }
        if l.max_log_bytes.is_some_and(|b| b > 1 << 20) {
            return Err("`limits.max_log_bytes` is at most 1048576".into());
        }
        if l.max_output_bytes.is_some_and(|b| b == 0 || b > 16 << 20) {
            return Err("`limits.max_output_bytes` must be 1 to 16777216".into());
        }
        // PostgreSQL refuses NUL in text: it would be a 500 for what the client sent.
        if self.description.len() > 1000
            || self
                .description
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\t'))
        {
            return Err(
                "`description` is at most 1000 bytes, without control characters other than newlines and tabs"
                    .into(),
            );
        }
        for (i, g) in self.grants.iter().enumerate() {
            if !valid_name(&g.vault) || !valid_name(&g.table) {
                return Err(format!(
                    "`grants[{i}]` must name a vault and a table (^[a-z][a-z0-9_-]{{0,62}}$)"
                ));
            }
            if let Some(c) = g.columns.iter().position(|c| !valid_name(c)) {
                return Err(format!(
                    "`grants[{i}].columns[{c}]` must match ^[a-z][a-z0-9_-]{{0,62}}$"
                ));
            }
            if Redaction::parse(&g.redaction).is_none_or(|r| r == Redaction::Default) {
                return Err(format!(
                    "`grants[{i}].redaction` must be plain, masked or redacted"
                ));
            }
            if g.columns.is_empty() {
                return Err(format!("`grants[{i}].columns` is empty"));
            }
        }
        Ok(())
    }
}

/// What can go wrong managing functions.
#[derive(Debug, thiserror::Error)]
pub enum FunctionsError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Answered as every database failure is (`VaultError::Db`): 503 when the database is
    /// down, did not answer in time or had no free connection.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    /// Every sandbox instance stayed busy for [`POOL_WAIT`] (answered 503 `unavailable`).
    #[error("every function instance is busy; try again")]
    Unavailable,
    #[error("{0}")]
    Internal(String),
}

/// How long an invocation waits for a free sandbox instance.
const POOL_WAIT: Duration = Duration::from_secs(1);

impl From<tokio_postgres::Error> for FunctionsError {
    fn from(e: tokio_postgres::Error) -> Self {
        FunctionsError::Db(e.into())
    }
}

impl From<deadpool_postgres::PoolError> for FunctionsError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        FunctionsError::Db(e.into())
    }
}

/// A function version, ready to run.
struct Loaded {
    name: String,
    version: String,
    pre: TransformPre<State>,
    manifest: Manifest,
    limits: Limits,
}

/// A stored version as the API shows it.
#[derive(Debug, Serialize)]
pub struct VersionView {
    pub name: String,
    pub version: String,
    pub imports: serde_json::Value,
    pub exports: serde_json::Value,
    pub size_bytes: i32,
    pub manifest: serde_json::Value,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// The answer of an invocation.
#[derive(Debug, Serialize)]
pub struct Invocation {
    pub name: String,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<MessageView>,
    pub logs: Vec<LogLine>,
    pub duration_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
}

/// The outcome of a function on a connection's path.
/// (`run` has named the function's version in the request's audit event.)
pub struct Transformed {
    pub result: Result<HttpMessage, Failure>,
    /// Every plaintext the function revealed (a file's bytes need not be text).
    pub revealed: Vec<Zeroizing<Vec<u8>>>,
    pub duration_us: u64,
}

/// An HTTP message in JSON: the body as UTF-8 text when it is, else base64.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageView {
    pub method: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

impl MessageView {
    pub fn into_message(self) -> Result<HttpMessage, String> {
        use base64::Engine;
        let body = match (self.body, self.body_base64) {
            (Some(_), Some(_)) => return Err("give `body` or `body_base64`, not both".into()),
            (Some(text), None) => text.into_bytes(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| "`body_base64` is not base64".to_string())?,
            (None, None) => Vec::new(),
        };
        Ok(HttpMessage {
            method: self.method,
            url: self.url,
            status: self.status,
            headers: self.headers,
            body,
        })
    }

    pub fn from_message(m: HttpMessage) -> MessageView {
        use base64::Engine;
        let (body, body_base64) = match String::from_utf8(m.body) {
            Ok(text) => (Some(text), None),
            Err(e) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(e.into_bytes())),
            ),
        };
        MessageView {
            method: m.method,
            url: m.url,
            status: m.status,
            headers: m.headers,
            body,
            body_base64,
        }
    }
}

/// What a host call of a running function returns (the call is awaited inside the guest's
/// invocation, so dropping the invocation at its deadline also stops the call).
pub type HostFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// What `vault.detokenize` answers a guest: each token's value or its error code, or an error
/// for the whole call.
pub type Detokenized = Result<Vec<Result<Zeroizing<String>, String>>, String>;

/// A compiled component, ready to instantiate, and the sha256 of an artifact written to the
/// cache for it (if one was).
type Compiled = (Component, TransformPre<State>, Option<Vec<u8>>);

/// Runs a host call's work as a task of its own, on the runtime's stack rather than the
/// guest's fiber (whose stack is small: Cedar's evaluation, which watches its stack, would
/// fail there), and stops it when the call is dropped (the guest's deadline passed).
fn off_fiber<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, String>> + Send + 'static,
) -> HostFuture<Result<T, String>> {
    struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);
    impl<T> Drop for AbortOnDrop<T> {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut task = AbortOnDrop(tokio::spawn(work));
    Box::pin(async move {
        (&mut task.0)
            .await
            .unwrap_or_else(|_| Err("internal: the vault call failed".into()))
    })
}

/// The capabilities a running function reaches the vault through.
pub trait FunctionHost: Send + Sync {
    fn detokenize(
        self: Arc<Self>,
        tokens: Vec<String>,
        level: Redaction,
    ) -> HostFuture<Detokenized>;
    fn tokenize(
        self: Arc<Self>,
        vault: String,
        table: String,
        column: String,
        values: Vec<String>,
    ) -> HostFuture<Result<Vec<String>, String>>;
    /// Reads a file from a file column of one record, at plain.
    fn read_file(
        self: Arc<Self>,
        vault: String,
        table: String,
        record: String,
        column: String,
    ) -> HostFuture<Result<crate::types::file::FileValue, String>>;
}

/// Checks the manifest's grants before Cedar: the column is granted at (at least) this level.
/// In a test run (`invoke`), whose output returns to the caller, the caller must also be
/// allowed the same reveal at the same level: a caller only sees what is derived from values
/// it could read itself.
struct GrantGate {
    grants: Vec<Grant>,
    cedar: CedarGate,
    invoker: Option<CedarGate>,
}

fn rank(level: Redaction) -> u8 {
    match level {
        Redaction::Plain => 3,
        Redaction::Masked => 2,
        Redaction::Redacted => 1,
        Redaction::Default => 0,
    }
}

/// The most revealing level the manifest's grants give on a column, if any.
fn granted_level(grants: &[Grant], vault: &str, table: &str, column: &str) -> Option<Redaction> {
    grants
        .iter()
        .filter(|g| g.vault == vault && g.table == table && g.columns.iter().any(|c| c == column))
        .filter_map(|g| Redaction::parse(&g.redaction))
        .max_by_key(|l| rank(*l))
}

impl Gate for GrantGate {
    fn reveal(
        &self,
        action: DataAction,
        vault: &LoadedVault,
        table: &Table,
        column: &Column,
        row: &RowFacts,
        requested: Redaction,
    ) -> Option<Redaction> {
        let granted = granted_level(&self.grants, &vault.name, &table.name, &column.name)?;
        let level = match requested {
            Redaction::Default => granted,
            l if rank(l) <= rank(granted) => l,
            _ => return None,
        };
        let level = self
            .cedar
            .reveal(action, vault, table, column, row, level)?;
        match &self.invoker {
            Some(caller) => {
                (caller.reveal(action, vault, table, column, row, level)? == level).then_some(level)
            }
            None => Some(level),
        }
    }

    fn allows(
        &self,
        action: DataAction,
        vault: &LoadedVault,
        table: &Table,
        column: Option<&Column>,
        row: Option<&RowFacts>,
    ) -> bool {
        self.cedar.allows(action, vault, table, column, row)
            && self
                .invoker
                .as_ref()
                .is_none_or(|c| c.allows(action, vault, table, column, row))
    }

    fn prepare(&self, vault: &LoadedVault, rows: &HashMap<Uuid, RowFacts>) {
        self.cedar.prepare(vault, rows);
        if let Some(c) = &self.invoker {
            c.prepare(vault, rows);
        }
    }

    /// The function's (none: grants are issued to service accounts). A caller's own grants
    /// thus do not count in a test run either.
    fn grantee(&self) -> Option<&str> {
        self.cedar.grantee()
    }
}

/// The vault as one invocation of one function sees it.
struct VaultAccess {
    vault: VaultService,
    gov: Arc<Governance>,
    caller: Caller,
    /// Who asked for a test run (`invoke`): every reveal must be allowed to them too.
    invoker: Option<Caller>,
    grants: Vec<Grant>,
    purpose: String,
    event: Option<Arc<Mutex<audit::Event>>>,
}

impl VaultAccess {
    fn gate(&self) -> GrantGate {
        GrantGate {
            grants: self.grants.clone(),
            cedar: CedarGate::for_function(
                self.gov.engine(),
                self.caller.clone(),
                self.purpose.clone(),
            ),
            invoker: self
                .invoker
                .as_ref()
                .map(|c| self.gov.gate(c, &self.purpose)),
        }
    }

    /// Runs `fut` inside the request's audit event, so the decisions are recorded.
    async fn scoped<F: std::future::Future>(&self, fut: F) -> F::Output {
        match &self.event {
            Some(e) => audit::scope(e.clone(), fut).await,
            None => fut.await,
        }
    }

    async fn detokenize(
        &self,
        tokens: Vec<String>,
        level: Redaction,
    ) -> Result<Vec<Result<Zeroizing<String>, String>>, String> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let mut vaults: Vec<&str> = self.grants.iter().map(|g| g.vault.as_str()).collect();
        vaults.dedup();
        let mut out: Vec<Result<Zeroizing<String>, String>> = tokens
            .iter()
            .map(|_| Err("not-found".to_string()))
            .collect();
        let gate = self.gate();
        for vault in vaults {
            let results = self
                .scoped(self.vault.detokenize_plain(vault, &tokens, level, &gate))
                .await
                .map_err(|_| "internal: the vault could not answer".to_string())?;
            for (slot, r) in out.iter_mut().zip(results) {
                if slot.is_err() {
                    match r {
                        Ok(v) => *slot = Ok(v),
                        Err(code) if code == "forbidden" => *slot = Err(code),
                        Err(_) => {}
                    }
                }
            }
        }
        let n = out.iter().filter(|r| r.is_ok()).count() as u64;
        if let Some(e) = &self.event
            && let Ok(mut e) = e.lock()
        {
            e.count("revealed_in_function", n);
        }
        Ok(out)
    }

    async fn tokenize(
        &self,
        vault: &str,
        table: &str,
        column: &str,
        values: Vec<String>,
    ) -> Result<Vec<String>, String> {
        // As for reveals, the manifest must grant the column (at any level) first.
        if granted_level(&self.grants, vault, table, column).is_none() {
            return Err("forbidden".into());
        }
        let values = values.into_iter().map(serde_json::Value::String).collect();
        let gate = self.gate();
        self.scoped(self.vault.tokenize(vault, table, column, values, &gate))
            .await
            .map_err(|e| match e {
                crate::vault::VaultError::Forbidden { .. } => "forbidden".to_string(),
                crate::vault::VaultError::NotFound(_) => "not-found".to_string(),
                crate::vault::VaultError::Invalid { .. } => "invalid-value".to_string(),
                _ => "internal".to_string(),
            })
    }

    async fn read_file(
        &self,
        vault: &str,
        table: &str,
        record: &str,
        column: &str,
    ) -> Result<crate::types::file::FileValue, String> {
        // The manifest must grant the column at plain before the vault is asked at all.
        if granted_level(&self.grants, vault, table, column) != Some(Redaction::Plain) {
            return Err("forbidden".into());
        }
        let gate = self.gate();
        let file = self
            .scoped(self.vault.read_file(vault, table, record, column, &gate))
            .await
            .map_err(|e| match e {
                crate::vault::VaultError::Forbidden { .. } => "forbidden".to_string(),
                crate::vault::VaultError::NotFound(_) => "not-found".to_string(),
                crate::vault::VaultError::Invalid { .. } => "invalid".to_string(),
                _ => "internal".to_string(),
            })?;
        if let Some(e) = &self.event
            && let Ok(mut e) = e.lock()
        {
            if let Ok(id) = uuid::Uuid::parse_str(record) {
                e.record(id);
            }
            e.count("files_read_in_function", 1);
        }
        Ok(file)
    }
}

impl FunctionHost for VaultAccess {
    fn detokenize(
        self: Arc<Self>,
        tokens: Vec<String>,
        level: Redaction,
    ) -> HostFuture<Detokenized> {
        off_fiber(async move { VaultAccess::detokenize(&self, tokens, level).await })
    }

    fn tokenize(
        self: Arc<Self>,
        vault: String,
        table: String,
        column: String,
        values: Vec<String>,
    ) -> HostFuture<Result<Vec<String>, String>> {
        off_fiber(
            async move { VaultAccess::tokenize(&self, &vault, &table, &column, values).await },
        )
    }

    fn read_file(
        self: Arc<Self>,
        vault: String,
        table: String,
        record: String,
        column: String,
    ) -> HostFuture<Result<crate::types::file::FileValue, String>> {
        off_fiber(
            async move { VaultAccess::read_file(&self, &vault, &table, &record, &column).await },
        )
    }
}

/// Functions: storage, compilation cache and invocation.
pub struct FunctionService {
    pool: Pool,
    sandbox: Arc<Sandbox>,
    cache_dir: PathBuf,
    engine_key: String,
    loaded: RwLock<HashMap<String, Arc<Loaded>>>,
    invocations: Mutex<HashMap<String, u64>>,
    /// Active version per function name: this process is the only writer of `functions`.
    active_versions: RwLock<HashMap<String, String>>,
    /// Bumped whenever an active version changes, so a read racing a change is not cached.
    active_generation: std::sync::atomic::AtomicU64,
    /// One permit per instance slot of the sandbox's pool.
    instances: tokio::sync::Semaphore,
    vault: VaultService,
    gov: Arc<Governance>,
}

fn sha256_version(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl FunctionService {
    pub fn new(
        pool: Pool,
        data_dir: &std::path::Path,
        vault: VaultService,
        gov: Arc<Governance>,
    ) -> Result<FunctionService, FunctionsError> {
        let sandbox = Sandbox::new().map_err(|e| FunctionsError::Internal(e.to_string()))?;
        let cache_dir = data_dir.join("functions-cache");
        // INVARIANT: the cache (native code) is the server's alone: mode 0700, made so even
        // where an older server created it with the default mode.
        {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&cache_dir)
                .and_then(|()| {
                    std::fs::set_permissions(&cache_dir, std::fs::Permissions::from_mode(0o700))
                })
                .map_err(|e| FunctionsError::Internal(format!("cannot create the cache: {e}")))?;
        }
        let engine_key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            sandbox.engine.precompile_compatibility_hash().hash(&mut h);
            format!("{:016x}", h.finish())
        };
        Ok(FunctionService {
            pool,
            sandbox: Arc::new(sandbox),
            cache_dir,
            engine_key,
            loaded: RwLock::default(),
            invocations: Mutex::default(),
            active_versions: RwLock::default(),
            active_generation: std::sync::atomic::AtomicU64::new(0),
            instances: tokio::sync::Semaphore::new(sandbox::POOL_INSTANCES as usize),
            vault,
            gov,
        })
    }

    fn cache_path(&self, version: &str) -> PathBuf {
        let hex = version.trim_start_matches("sha256:");
        self.cache_dir
            .join(format!("{hex}-{}.cwasm", self.engine_key))
    }

    /// Compiles (or loads from the disk cache) and pre-instantiates. The cached artifact is
    /// used only if its sha256 is the one recorded when this server wrote it (`function_artifacts`);
    /// otherwise the component is compiled again and the new artifact's hash recorded.
    async fn compiled(
        self: &Arc<Self>,
        version: &str,
        bytes: Vec<u8>,
    ) -> Result<(Component, TransformPre<State>), FunctionsError> {
        let recorded: Option<Vec<u8>> = self
            .pool
            .get()
            .await?
            .query_opt(
                "SELECT sha256 FROM function_artifacts WHERE version = $1 AND engine = $2",
                &[&version, &self.engine_key],
            )
            .await?
            .map(|r| r.get(0));
        let this = self.clone();
        let v2 = version.to_string();
        let (component, pre, written) =
            tokio::task::spawn_blocking(move || this.compile(&v2, &bytes, recorded.as_deref()))
                .await
                .map_err(|_| FunctionsError::Internal("compilation failed".into()))??;
        if let Some(sha256) = written {
            self.pool
                .get()
                .await?
                .execute(
                    "INSERT INTO function_artifacts (version, engine, sha256) VALUES ($1, $2, $3)
                     ON CONFLICT (version, engine) DO UPDATE SET sha256 = EXCLUDED.sha256, created_at = now()",
                    &[&version, &self.engine_key, &sha256],
                )
                .await?;
        }
        Ok((component, pre))
    }

    /// The blocking part of [`compiled`](Self::compiled): also answers the sha256 of an
    /// artifact it wrote to the cache.
    fn compile(
        &self,
        version: &str,
        bytes: &[u8],
        recorded: Option<&[u8]>,
    ) -> Result<Compiled, FunctionsError> {
        let path = self.cache_path(version);
        let cached = recorded.and_then(|expected| {
            let artifact = std::fs::read(&path).ok()?;
            (Sha256::digest(&artifact).as_slice() == expected)
                .then(|| load_cached(&self.sandbox.engine, &artifact).ok())
                .flatten()
        });
        let mut written = None;
        let component = match cached {
            Some(c) => c,
            None => {
                let c = Component::new(&self.sandbox.engine, bytes).map_err(|e| {
                    FunctionsError::Invalid(format!(
                        "not a valid WebAssembly component: {}",
                        first_line(&e)
                    ))
                })?;
                if let Ok(serialized) = c.serialize() {
                    let tmp = path.with_extension("tmp");
                    let _ = std::fs::remove_file(&tmp);
                    let stored = {
                        use std::io::Write;
                        use std::os::unix::fs::OpenOptionsExt;
                        std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o600)
                            .open(&tmp)
                            .and_then(|mut f| f.write_all(&serialized))
                            .and_then(|()| std::fs::rename(&tmp, &path))
                    };
                    if stored.is_ok() {
                        written = Some(Sha256::digest(&serialized).to_vec());
                    }
                }
                c
            }
        };
        let (imports, _) = self.sandbox.interfaces(&component);
        let refused = sandbox::forbidden_imports(&imports);
        if !refused.is_empty() {
            let _ = std::fs::remove_file(&path);
            return Err(FunctionsError::Invalid(format!(
                "the component imports interfaces functions may not use: {}",
                refused.join(", ")
            )));
        }
        let pre = self.sandbox.prepare(&component).map_err(|e| {
            FunctionsError::Invalid(format!(
                "the component does not implement the strongroom:function/transform world: {}",
                first_line(&e)
            ))
        })?;
        Ok((component, pre, written))
    }

    /// `POST /v1/functions` (`existing: None`) or `POST /v1/functions/{name}/versions`.
    pub async fn upload(
        self: &Arc<Self>,
        manifest: Manifest,
        bytes: Vec<u8>,
        existing: Option<&str>,
    ) -> Result<VersionView, FunctionsError> {
        manifest.check().map_err(FunctionsError::Invalid)?;
        if let Some(name) = existing
            && name != manifest.name
        {
            return Err(FunctionsError::Invalid(format!(
                "the manifest names `{}`, the path `{name}`",
                manifest.name
            )));
        }
        if bytes.is_empty() || bytes.len() > MAX_COMPONENT_BYTES {
            return Err(FunctionsError::Invalid(format!(
                "the component must be 1 to {MAX_COMPONENT_BYTES} bytes"
            )));
        }
        for (i, g) in manifest.grants.iter().enumerate() {
            let v = self.vault.load(&g.vault).await.map_err(|_| {
                FunctionsError::Invalid(format!("`grants[{i}].vault`: no vault `{}`", g.vault))
            })?;
            let t = v.table(&g.table).map_err(|_| {
                FunctionsError::Invalid(format!("`grants[{i}].table`: no table `{}`", g.table))
            })?;
            if let Some(c) = g.columns.iter().find(|c| t.column(c).is_none()) {
                return Err(FunctionsError::Invalid(format!(
                    "`grants[{i}].columns`: no column `{c}` in `{}`",
                    g.table
                )));
            }
        }
        let version = sha256_version(&bytes);
        let (component, pre) = self.compiled(&version, bytes.clone()).await?;
        let (imports, exports) = self.sandbox.interfaces(&component);
        let manifest_json = serde_json::to_value(&manifest).unwrap_or_default();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let exists = tx
            .query_opt(
                "SELECT 1 FROM functions WHERE name = $1 FOR UPDATE",
                &[&manifest.name],
            )
            .await?
            .is_some();
        match (existing, exists) {
            (None, true) => {
                return Err(FunctionsError::Conflict(format!(
                    "function `{}` exists; upload a new version with POST /v1/functions/{}/versions",
                    manifest.name, manifest.name
                )));
            }
            (Some(name), false) => {
                return Err(FunctionsError::NotFound(format!("function `{name}`")));
            }
            (None, false) => {
                tx.execute(
                    "INSERT INTO functions (name, active_version) VALUES ($1, $2)",
                    &[&manifest.name, &version],
                )
                .await?;
            }
            // A new version of an existing function becomes active (roll back with activate).
            (Some(_), true) => {
                tx.execute(
                    "UPDATE functions SET active_version = $2, updated_at = now() WHERE name = $1",
                    &[&manifest.name, &version],
                )
                .await?;
            }
        }
        // A version is immutable: the same component again with the same manifest is the same
        // version; with another manifest it would silently change the grants and limits of a
        // version that may be running.
        let stored = tx
            .query_opt(
                "SELECT manifest, created_at FROM function_versions WHERE name = $1 AND version = $2",
                &[&manifest.name, &version],
            )
            .await?;
        let created_at: chrono::DateTime<chrono::Utc> = match stored {
            Some(row) if row.get::<_, serde_json::Value>(0) != manifest_json => {
                return Err(FunctionsError::Conflict(format!(
                    "version {version} of function `{}` exists with another manifest; a version never changes: keep its manifest, or upload a changed component",
                    manifest.name
                )));
            }
            Some(row) => row.get(1),
            None => tx
                .query_one(
                    "INSERT INTO function_versions (name, version, component, manifest, imports, exports, size_bytes)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     RETURNING created_at",
                    &[
                        &manifest.name,
                        &version,
                        &bytes,
                        &manifest_json,
                        &serde_json::json!(imports),
                        &serde_json::json!(exports),
                        &(bytes.len() as i32),
                    ],
                )
                .await?
                .get(0),
        };
        tx.commit().await?;
        let loaded = Arc::new(Loaded {
            name: manifest.name.clone(),
            version: version.clone(),
            pre,
            limits: manifest.limits(),
            manifest: manifest.clone(),
        });
        if let Ok(mut l) = self.loaded.write() {
            l.insert(format!("{}@{version}", manifest.name), loaded);
        }
        self.forget_active(&manifest.name);
        Ok(VersionView {
            name: manifest.name,
            version,
            imports: serde_json::json!(imports),
            exports: serde_json::json!(exports),
            size_bytes: bytes.len() as i32,
            manifest: manifest_json,
            created_at,
        })
    }

    /// The active version of `name`, loaded (from memory, the disk cache, or compiled).
    async fn active(self: &Arc<Self>, name: &str) -> Result<Arc<Loaded>, FunctionsError> {
        let cached = self
            .active_versions
            .read()
            .ok()
            .and_then(|a| a.get(name).cloned());
        if let Some(version) = &cached
            && let Some(hit) = self
                .loaded
                .read()
                .ok()
                .and_then(|l| l.get(&format!("{name}@{version}")).cloned())
        {
            return Ok(hit);
        }
        let generation = self
            .active_generation
            .load(std::sync::atomic::Ordering::SeqCst);
        let client = self.pool.get().await?;
        let version: String = client
            .query_opt(
                "SELECT active_version FROM functions WHERE name = $1",
                &[&name],
            )
            .await?
            .ok_or_else(|| FunctionsError::NotFound(format!("function `{name}`")))?
            .get(0);
        if let Ok(mut a) = self.active_versions.write()
            && self
                .active_generation
                .load(std::sync::atomic::Ordering::SeqCst)
                == generation
        {
            a.insert(name.to_string(), version.clone());
        }
        let key = format!("{name}@{version}");
        if let Some(hit) = self.loaded.read().ok().and_then(|l| l.get(&key).cloned()) {
            return Ok(hit);
        }
        let row = client
            .query_one(
                "SELECT component, manifest FROM function_versions WHERE name = $1 AND version = $2",
                &[&name, &version],
            )
            .await?;
        drop(client);
        let bytes: Vec<u8> = row.get(0);
        let manifest: Manifest = serde_json::from_value(row.get(1))
            .map_err(|_| FunctionsError::Internal("a stored manifest does not parse".into()))?;
        let (_, pre) = self.compiled(&version, bytes).await?;
        let loaded = Arc::new(Loaded {
            name: name.to_string(),
            version,
            pre,
            limits: manifest.limits(),
            manifest,
        });
        if let Ok(mut l) = self.loaded.write() {
            l.insert(key, loaded.clone());
        }
        Ok(loaded)
    }

    /// Runs the active version of `name` on `message` in a fresh sandbox.
    async fn run(
        self: &Arc<Self>,
        name: &str,
        hook: Hook,
        message: HttpMessage,
        invoker: Option<&Caller>,
        purpose: &str,
    ) -> Result<(Arc<Loaded>, sandbox::Outcome, u64), FunctionsError> {
        let loaded = self.active(name).await?;
        audit::note(|e| {
            e.function = Some(format!("{}@{}", loaded.name, loaded.version));
        });
        let access = Arc::new(VaultAccess {
            vault: self.vault.clone(),
            gov: self.gov.clone(),
            caller: Caller::principal(&loaded.name, "function", loaded.version.clone()),
            invoker: invoker.cloned(),
            grants: loaded.manifest.grants.clone(),
            purpose: purpose.to_string(),
            event: audit::current(),
        });
        // A free instance, or 503 after a short wait: the pool has one per permit.
        let _permit = tokio::time::timeout(POOL_WAIT, self.instances.acquire())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(FunctionsError::Unavailable)?;
        let started = Instant::now();
        let outcome = sandbox::run(
            &loaded.pre,
            &self.sandbox.engine,
            &loaded.limits,
            access,
            hook,
            message,
        )
        .await;
        let duration_us = started.elapsed().as_micros() as u64;
        if let Ok(mut c) = self.invocations.lock() {
            *c.entry(name.to_string()).or_default() += 1;
        }
        Ok((loaded, outcome, duration_us))
    }

    /// A function on a connection's path: its output goes on (to the third party from
    /// `on-request`, towards the caller from `on-response`, where the gateway's own egress check
    /// covers it). `revealed` holds what the function revealed, for that check.
    pub async fn transform(
        self: &Arc<Self>,
        name: &str,
        hook: Hook,
        message: HttpMessage,
        purpose: &str,
    ) -> Result<Transformed, FunctionsError> {
        let (_, outcome, duration_us) = self.run(name, hook, message, None, purpose).await?;
        Ok(Transformed {
            result: outcome.result,
            revealed: outcome.revealed,
            duration_us,
        })
    }

    /// `POST /v1/functions/{name}/invoke`: a test run whose result returns to `caller`, so
    /// the function reveals only what `caller` may read too, and nothing it revealed may be in
    /// the result.
    pub async fn invoke(
        self: &Arc<Self>,
        name: &str,
        hook: Hook,
        message: HttpMessage,
        caller: &Caller,
        purpose: &str,
    ) -> Result<Invocation, FunctionsError> {
        let (loaded, outcome, duration_us) =
            self.run(name, hook, message, Some(caller), purpose).await?;
        let (message, error) = match outcome.result {
            Ok(out) => match egress_leak(&out, &outcome.revealed) {
                false => (Some(MessageView::from_message(out)), None),
                true => {
                    audit::note(|e| e.count("egress_blocked", 1));
                    (
                        None,
                        Some(Failure {
                            kind: "egress_blocked",
                            trap: None,
                            message: "the function's output holds a value it revealed (detokenized or read from a file); plaintext may not return to the caller".into(),
                            functions: vec![],
                        }),
                    )
                }
            },
            Err(f) => (None, Some(shown_failure(f, &outcome.revealed))),
        };
        // The log returns to the caller too: a line holding a revealed value is withheld.
        let logs = outcome
            .log
            .into_iter()
            .map(
                |line| match crate::leak::reveals(&line.message, &outcome.revealed) {
                    false => line,
                    true => LogLine {
                        level: line.level,
                        message: "(withheld: the line holds a value the function revealed)".into(),
                    },
                },
            )
            .collect();
        Ok(Invocation {
            name: loaded.name.clone(),
            version: loaded.version.clone(),
            message,
            logs,
            duration_us,
            error,
        })
    }

    /// `GET /v1/functions` and `GET /v1/functions/{name}`.
    pub async fn list(&self, only: Option<&str>) -> Result<Vec<serde_json::Value>, FunctionsError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT f.name, f.active_version, v.version, v.size_bytes, v.imports, v.exports, v.manifest, v.created_at
                 FROM functions f JOIN function_versions v ON v.name = f.name
                 WHERE $1::text IS NULL OR f.name = $1 ORDER BY f.name, v.created_at",
                &[&only],
            )
            .await?;
        let counts = self
            .invocations
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        let mut out: Vec<serde_json::Value> = Vec::new();
        for row in rows {
            let name: String = row.get(0);
            if out.last().is_none_or(|f| f["name"] != name.as_str()) {
                out.push(serde_json::json!({
                    "name": name,
                    "active_version": row.get::<_, String>(1),
                    "invocations": counts.get(&name).copied().unwrap_or(0),
                    "versions": [],
                }));
            }
            if let Some(f) = out.last_mut()
                && let Some(list) = f["versions"].as_array_mut()
            {
                list.push(serde_json::json!({
                    "version": row.get::<_, String>(2),
                    "size_bytes": row.get::<_, i32>(3),
                    "imports": row.get::<_, serde_json::Value>(4),
                    "exports": row.get::<_, serde_json::Value>(5),
                    "manifest": row.get::<_, serde_json::Value>(6),
                    "created_at": row.get::<_, chrono::DateTime<chrono::Utc>>(7),
                }));
            }
        }
        if only.is_some() && out.is_empty() {
            return Err(FunctionsError::NotFound("function".into()));
        }
        Ok(out)
    }

    /// `POST /v1/functions/{name}/activate`.
    pub async fn activate(&self, name: &str, version: &str) -> Result<(), FunctionsError> {
        let hex = version.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(FunctionsError::Invalid(
                "`version` must be a version this server gave, `sha256:` and 64 lowercase hex digits".into(),
            ));
        }
        let client = self.pool.get().await?;
        let n = client
            .execute(
                "UPDATE functions SET active_version = $2, updated_at = now()
                 WHERE name = $1 AND EXISTS (SELECT 1 FROM function_versions WHERE name = $1 AND version = $2)",
                &[&name, &version],
            )
            .await?;
        if n == 0 {
            return Err(FunctionsError::NotFound(format!(
                "function `{name}` at that version"
            )));
        }
        self.forget_active(name);
        Ok(())
    }

    fn forget_active(&self, name: &str) {
        if let Ok(mut a) = self.active_versions.write() {
            self.active_generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            a.remove(name);
        }
    }

    /// `DELETE /v1/functions/{name}`: every version, and their cached code.
    pub async fn delete(&self, name: &str) -> Result<(), FunctionsError> {
        let client = self.pool.get().await?;
        let versions: Vec<String> = client
            .query(
                "SELECT version FROM function_versions WHERE name = $1",
                &[&name],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let n = client
            .execute("DELETE FROM functions WHERE name = $1", &[&name])
            .await?;
        if n == 0 {
            return Err(FunctionsError::NotFound(format!("function `{name}`")));
        }
        if let Ok(mut l) = self.loaded.write() {
            l.retain(|k, _| !k.starts_with(&format!("{name}@")));
        }
        self.forget_active(name);
        for v in &versions {
            let _ = std::fs::remove_file(self.cache_path(v));
        }
        // Their recorded hashes go with the files (a function sharing a version compiles again).
        client
            .execute(
                "DELETE FROM function_artifacts WHERE version = ANY($1)",
                &[&versions],
            )
            .await?;
        Ok(())
    }
}

/// A failure as a test run's caller sees it: the text of an `internal` error is never shown
/// (the WIT promises so), nor a guest's text holding a value it revealed.
fn shown_failure(mut f: Failure, revealed: &[Zeroizing<Vec<u8>>]) -> Failure {
    if f.kind == "function_error"
        && (f.message.starts_with("internal") || crate::leak::reveals(&f.message, revealed))
    {
        f.message = match f.message.split(':').next() {
            Some(kind @ ("bad request" | "forbidden" | "internal")) => {
                format!("{kind}: (the function's text is not shown)")
            }
            _ => "the function failed (its text is not shown)".into(),
        };
    }
    f
}

fn first_line(e: &wasmtime::Error) -> String {
    let text = format!("{e:#}");
    text.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}

/// Whether any value revealed during the invocation appears in what it returns (its method,
/// URL, headers and raw body), as it is or escaped or percent-encoded
/// ([`crate::leak::reveals`]).
pub fn egress_leak(out: &HttpMessage, revealed: &[Zeroizing<Vec<u8>>]) -> bool {
    let mut bytes = Zeroizing::new(out.method.as_bytes().to_vec());
    bytes.push(b'\n');
    bytes.extend_from_slice(out.url.as_bytes());
    for (k, v) in &out.headers {
        bytes.push(b'\n');
        bytes.extend_from_slice(k.as_bytes());
        bytes.push(b':');
        bytes.extend_from_slice(v.as_bytes());
    }
    bytes.push(b'\n');
    bytes.extend_from_slice(&out.body);
    crate::leak::reveals(bytes.as_slice(), revealed)
}

/// Loads a compiled component from the cache.
#[allow(unsafe_code)]
pub fn load_cached(engine: &wasmtime::Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `artifact` was read from the server's own cache directory (mode 0700, files 0600)
    // and hashes to the sha256 this server recorded in the database when it wrote the file
    // with `Component::serialize` of this engine configuration (the name carries the engine's
    // compatibility hash): a file swapped or altered on disk is not loaded. wasmtime also checks
    // the header and refuses an incompatible artifact.
    unsafe { Component::deserialize(engine, artifact) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revealed_value_anywhere_in_the_output_is_a_leak() {
        let value = "4111111111111111";
        let revealed = [Zeroizing::new(value.as_bytes().to_vec())];
        let clean = HttpMessage {
            method: "POST".into(),
            url: "https://kyc.example/v1/check".into(),
            status: None,
            headers: vec![("content-type".into(), "application/json".into())],
            body: b"{}".to_vec(),
        };
        assert!(!egress_leak(&clean, &revealed));
        let mut leaks = Vec::new();
        let mut m = clean.clone();
        m.method = format!("X{value}");
        leaks.push(m);
        let mut m = clean.clone();
        m.url = format!("https://kyc.example/v1/check?c={value}");
        leaks.push(m);
        let mut m = clean.clone();
        m.headers.push(("x-card".into(), value.into()));
        leaks.push(m);
        let mut m = clean.clone();
        m.body = format!("{{\"card\":\"{value}\"}}").into_bytes();
        leaks.push(m);
        for m in leaks {
            assert!(egress_leak(&m, &revealed), "{} {}", m.method, m.url);
        }
    }
}
