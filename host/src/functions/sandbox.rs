//! The sandbox: one wasmtime engine, a store per invocation, limits enforced by the host.
//!
//! - Wall clock: calls are async. A ticker advances the epoch every millisecond; at each tick a
//!   running guest yields to the runtime, and traps (`interrupt`) once its deadline has passed.
//!   A timeout around the whole call bounds the time spent blocked in host calls (a WASI sleep,
//!   a vault query): when it fires, the call's future is dropped, which stops the guest and
//!   frees its instance.
//! - Memory and tables: a [`ResourceLimiter`](wasmtime::ResourceLimiter) from the manifest, inside
//!   the pooling allocator's hard caps.
//! - Log and output: stdout/stderr go to capped in-memory pipes; `log` lines are capped; the
//!   returned message is measured before it is accepted.
//! - No ambient authority: no preopened directories, no environment, no network. Components
//!   that import anything outside [`ALLOWED_IMPORTS`] are refused at upload.
//! - Threads, GC and component-model async are not compiled in (the host side is async; the
//!   guest sees ordinary blocking calls).

use super::{FunctionHost, Limits, LogLine};
use crate::vault::Redaction;
use sha2::Digest;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use zeroize::Zeroizing;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "transform",
    imports: { default: async },
    exports: { default: async },
});

use self::strongroom::function::types::Redaction as WitRedaction;
pub use exports::strongroom::function::hooks::{FunctionError, HttpMessage};

/// Most log lines of one invocation (`log` calls and stdout/stderr lines); the rest are dropped
/// and counted.
const MAX_LOG_LINES: usize = 1000;
/// Most vault calls (detokenize, tokenize, read-file) of one invocation, and most bytes they
/// may reveal together; past either, calls fail with `quota-exceeded`.
const MAX_HOST_CALLS: u32 = 1000;
const MAX_REVEALED_BYTES: usize = 32 << 20;

/// The hard ceiling of any function's linear memory (the pooling allocator's slot size).
pub const MAX_MEMORY_MIB: u64 = 256;
/// Components instantiated at the same time.
pub const POOL_INSTANCES: u32 = 64;
/// Per component: core instances, memories and tables. A Rust `wasm32-wasip2` component (all
/// of `functions-examples/`) has three core modules (its own and the two shims `wit-component`
/// adds), one memory and two tables; toolchains that link several modules get room for more.
/// With these maxima, [`POOL_INSTANCES`] components fit the pool's totals at once, so no
/// component can take another's slots.
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
const MEMORIES_PER_COMPONENT: u32 = 2;
const TABLES_PER_COMPONENT: u32 = 4;

/// Interfaces a component may import (by prefix; versions vary). WASI I/O, CLI plumbing,
/// random and clocks are what a Rust `std` guest links; stdio goes to the capped log.
pub const ALLOWED_IMPORTS: &[&str] = &[
    "strongroom:function/",
    "wasi:io/",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-",
    "wasi:random/",
    "wasi:clocks/",
];

/// The engine and the linker every function shares.
pub struct Sandbox {
    pub engine: Engine,
    linker: Linker<State>,
}

impl Sandbox {
    pub fn new() -> wasmtime::Result<Sandbox> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(POOL_INSTANCES)
            .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MEMORIES_PER_COMPONENT)
            .max_tables_per_component(TABLES_PER_COMPONENT)
            .total_core_instances(POOL_INSTANCES * CORE_INSTANCES_PER_COMPONENT)
            .total_memories(POOL_INSTANCES * MEMORIES_PER_COMPONENT)
            .total_tables(POOL_INSTANCES * TABLES_PER_COMPONENT)
            .total_stacks(POOL_INSTANCES)
            .max_memory_size((MAX_MEMORY_MIB << 20) as usize)
            .table_elements(MAX_TABLE_ELEMENTS)
            // INVARIANT: nothing a function saw survives into the next invocation.
            .linear_memory_keep_resident(0);
        // Calls run on fibers (async host calls); the `threads`, `gc` and
        // `component-model-async` features are not compiled in (see Cargo.toml).
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            // INVARIANT: a fiber's stack is zeroed before the next invocation uses it.
            .async_stack_zeroing(true)
            .wasm_backtrace_max_frames(std::num::NonZeroUsize::new(32))
            .max_wasm_stack(512 << 10)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Transform::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        // The epoch ticker: 1 tick per millisecond.
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("strongroom-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(Duration::from_millis(1));
                }
            })?;
        Ok(Sandbox { engine, linker })
    }

    /// Pre-instantiates a compiled component: checks its imports can be satisfied and it
    /// exports the `hooks` interface with the right types.
    pub fn prepare(&self, component: &Component) -> wasmtime::Result<TransformPre<State>> {
        TransformPre::new(self.linker.instantiate_pre(component)?)
    }

    /// The interfaces a component imports and exports.
    pub fn interfaces(&self, component: &Component) -> (Vec<String>, Vec<String>) {
        let ty = component.component_type();
        let imports = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let exports = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        (imports, exports)
    }
}

/// Per-invocation state: WASI plumbing, limits, the log, and the capability context.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: Limiter,
    stdout: CappedPipe,
    stderr: CappedPipe,
    pub log: Vec<LogLine>,
    log_bytes: usize,
    /// Lines past the log's limits, counted in a last line.
    dropped_log_lines: u64,
    /// Vault calls made so far, and the bytes revealed by them (see [`MAX_HOST_CALLS`]).
    host_calls: u32,
    revealed_bytes: usize,
    max_log_bytes: usize,
    host: Arc<dyn FunctionHost>,
    /// The text of the message being transformed: detokenize only accepts tokens found in it.
    message_text: String,
    response_hook: bool,
    /// Every plaintext revealed during this invocation, as bytes (the egress guard checks
    /// the output), each once.
    pub revealed: Vec<Zeroizing<Vec<u8>>>,
    /// The SHA-256 of each of [`State::revealed`]: a value revealed again is not added again.
    revealed_seen: std::collections::HashSet<[u8; 32]>,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl State {
    fn push_log(&mut self, level: &'static str, message: &str) {
        if self.log_bytes >= self.max_log_bytes || self.log.len() >= MAX_LOG_LINES {
            self.dropped_log_lines += 1;
            return;
        }
        let room = self.max_log_bytes - self.log_bytes;
        let mut text: String = message.chars().take(2048).collect();
        if text.len() > room {
            let mut cut = room;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        // An empty line costs a byte, so empty lines cannot flood the log either.
        self.log_bytes += text.len().max(1);
        self.log.push(LogLine {
            level,
            message: text,
        });
    }

    /// Counts a vault call; refuses it past the invocation's quota.
    fn host_call(&mut self) -> Result<(), String> {
        self.host_calls += 1;
        if self.host_calls > MAX_HOST_CALLS || self.revealed_bytes >= MAX_REVEALED_BYTES {
            return Err(format!(
                "quota-exceeded: at most {MAX_HOST_CALLS} vault calls and {MAX_REVEALED_BYTES} revealed bytes per invocation"
            ));
        }
        Ok(())
    }

    /// Notes a detokenized value for the egress guard; a `file` value (JSON with
    /// `content_base64`) also by its content.
    fn reveal_value(&mut self, value: Zeroizing<String>) {
        // The egress guard searches each value once, however often it was revealed.
        if !self
            .revealed_seen
            .insert(sha2::Sha256::digest(value.as_bytes()).into())
        {
            self.revealed_bytes += value.len();
            return;
        }
        if value.starts_with('{')
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&value)
            && let Some(b64) = v.get("content_base64").and_then(|c| c.as_str())
            && let Ok(content) =
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64)
        {
            let content = Zeroizing::new(content);
            self.reveal_file(&content);
        }
        self.revealed_bytes += value.len();
        self.revealed
            .push(Zeroizing::new(value.as_bytes().to_vec()));
    }

    /// Notes a file's content for the egress guard, as the guest is likely to pass it on: the
    /// bytes themselves and base64.
    fn reveal_file(&mut self, data: &[u8]) {
        self.revealed_bytes += data.len();
        if !self.revealed_seen.insert(sha2::Sha256::digest(data).into()) {
            return;
        }
        self.revealed.push(Zeroizing::new(
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, data).into_bytes(),
        ));
        self.revealed.push(Zeroizing::new(data.to_vec()));
    }
}

impl self::strongroom::function::types::Host for State {}

impl self::strongroom::function::log::Host for State {
    async fn log(&mut self, level: self::strongroom::function::log::Level, message: String) {
        use self::strongroom::function::log::Level;
        let level = match level {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        self.push_log(level, &message);
    }
}

impl self::strongroom::function::vault::Host for State {
    async fn detokenize(
        &mut self,
        tokens: Vec<String>,
        level: WitRedaction,
    ) -> Result<Vec<Result<String, String>>, String> {
        if self.response_hook {
            return Err("forbidden: detokenize is not available in on-response".into());
        }
        self.host_call()?;
        if tokens.len() > 1000 {
            return Err("too-large: at most 1000 tokens per call".into());
        }
        // INVARIANT: a function reveals only tokens present in the message it transforms.
        if tokens
            .iter()
            .any(|t| t.is_empty() || !self.message_text.contains(t.as_str()))
        {
            return Err("forbidden: a token does not appear in the message".into());
        }
        let level = match level {
            WitRedaction::Plain => Redaction::Plain,
            WitRedaction::Masked => Redaction::Masked,
            WitRedaction::Redacted => Redaction::Redacted,
        };
        let results = self.host.clone().detokenize(tokens, level).await?;
        // The quota holds for what this call would reveal too, not only for the calls after it.
        let answer: usize = results
            .iter()
            .map(|r| r.as_ref().map_or(0, |v| v.len()))
            .sum();
        if self.revealed_bytes.saturating_add(answer) > MAX_REVEALED_BYTES {
            return Err(format!(
                "quota-exceeded: at most {MAX_REVEALED_BYTES} revealed bytes per invocation"
            ));
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.map(|value| {
                    let out = value.as_str().to_string();
                    self.reveal_value(value);
                    out
                })
            })
            .collect())
    }

    async fn tokenize(
        &mut self,
        vault: String,
        table: String,
        column: String,
        values: Vec<String>,
    ) -> Result<Vec<String>, String> {
        self.host_call()?;
        self.host
            .clone()
            .tokenize(vault, table, column, values)
            .await
    }

    async fn read_file(
        &mut self,
        vault: String,
        table: String,
        record: String,
        column: String,
    ) -> Result<self::strongroom::function::vault::File, String> {
        if self.response_hook {
            return Err("forbidden: read-file is not available in on-response".into());
        }
        self.host_call()?;
        // INVARIANT: as for tokens, a function reads only records its message refers to.
        if record.is_empty() || !self.message_text.contains(record.as_str()) {
            return Err("forbidden: the record does not appear in the message".into());
        }
        let mut file = self
            .host
            .clone()
            .read_file(vault, table, record, column)
            .await?;
        if self.revealed_bytes + file.data.len() > MAX_REVEALED_BYTES {
            self.revealed_bytes = MAX_REVEALED_BYTES;
            return Err(format!(
                "quota-exceeded: at most {MAX_REVEALED_BYTES} revealed bytes per invocation"
            ));
        }
        self.reveal_file(&file.data);
        // Moved into the guest's call, not copied.
        Ok(self::strongroom::function::vault::File {
            data: std::mem::take(&mut *file.data),
            name: file.name,
            media_type: file.media_type,
        })
    }
}

/// stdout or stderr: keeps the first `capacity` bytes and drops the rest (counting the lines
/// dropped), so a chatty guest is not failed for it.
#[derive(Clone)]
struct CappedPipe {
    capacity: usize,
    buffer: Arc<std::sync::Mutex<(Vec<u8>, u64)>>,
}

impl CappedPipe {
    fn new(capacity: usize) -> CappedPipe {
        CappedPipe {
            capacity,
            buffer: Arc::default(),
        }
    }

    fn contents(&self) -> Vec<u8> {
        self.buffer.lock().map(|b| b.0.clone()).unwrap_or_default()
    }

    fn dropped_lines(&self) -> u64 {
        self.buffer.lock().map(|b| b.1).unwrap_or_default()
    }
}

impl wasmtime_wasi::cli::IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for CappedPipe {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let Ok(mut b) = self.buffer.lock() {
            let room = self.capacity.saturating_sub(b.0.len());
            let (kept, dropped) = data.split_at(data.len().min(room));
            b.0.extend_from_slice(kept);
            b.1 += dropped.iter().filter(|&&c| c == b'\n').count() as u64;
        }
        std::task::Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// What went wrong in an invocation, for the caller. Never host internals.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Failure {
    /// `trap`, `function_error`, `limit`, `egress_blocked`.
    pub kind: &'static str,
    /// For traps: `interrupt` (deadline), `stack_overflow`, `memory_out_of_bounds`,
    /// `unreachable` (a panic), …; for limits: which one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trap: Option<String>,
    pub message: String,
    /// The guest's function names on the trap's stack, innermost first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<String>,
}

/// The outcome of one hook call.
pub struct Outcome {
    pub result: Result<HttpMessage, Failure>,
    pub log: Vec<LogLine>,
    pub revealed: Vec<Zeroizing<Vec<u8>>>,
}

fn trap_failure(e: &wasmtime::Error, limits_hit: bool) -> Failure {
    let functions: Vec<String> = e
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .map(|bt| {
            bt.frames()
                .iter()
                .map(|f| match f.func_name() {
                    Some(name) => name.to_string(),
                    None => format!("<function {}>", f.func_index()),
                })
                .take(16)
                .collect()
        })
        .unwrap_or_default();
    if let Some(wasmtime::Trap::Interrupt) = e.downcast_ref::<wasmtime::Trap>() {
        return deadline_failure(functions);
    }
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        let name = match trap {
            wasmtime::Trap::StackOverflow => "stack_overflow",
            wasmtime::Trap::MemoryOutOfBounds => "memory_out_of_bounds",
            wasmtime::Trap::UnreachableCodeReached => "unreachable",
            wasmtime::Trap::IntegerDivisionByZero => "integer_division_by_zero",
            wasmtime::Trap::TableOutOfBounds => "table_out_of_bounds",
            wasmtime::Trap::IndirectCallToNull => "indirect_call_to_null",
            wasmtime::Trap::AllocationTooLarge => "allocation_too_large",
            _ => "other",
        };
        let message = match name {
            "unreachable" if limits_hit => {
                "the function ran out of memory (limit reached)".to_string()
            }
            "unreachable" => "the function panicked or reached unreachable code".to_string(),
            "stack_overflow" => "the function overflowed its stack".to_string(),
            other => format!("the function trapped: {other}"),
        };
        let trap = if name == "unreachable" && limits_hit {
            "memory_limit"
        } else {
            name
        };
        return Failure {
            kind: "trap",
            trap: Some(trap.to_string()),
            message,
            functions,
        };
    }
    Failure {
        kind: if limits_hit { "limit" } else { "trap" },
        trap: limits_hit.then(|| "memory_limit".to_string()),
        message: if limits_hit {
            "the function exceeded its memory limit".to_string()
        } else {
            "the function failed".to_string()
        },
        functions,
    }
}

/// Which hook to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Request,
    Response,
}

fn message_text(m: &HttpMessage) -> String {
    let mut s = String::with_capacity(m.url.len() + m.body.len() + 64);
    s.push_str(&m.url);
    for (k, v) in &m.headers {
        s.push('\n');
        s.push_str(k);
        s.push(':');
        s.push_str(v);
    }
    s.push('\n');
    s.push_str(&String::from_utf8_lossy(&m.body));
    s
}

pub fn message_size(m: &HttpMessage) -> usize {
    m.method.len()
        + m.url.len()
        + m.body.len()
        + m.headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

/// How long past its deadline a guest blocked in a host call is given before its call is
/// dropped (a guest running wasm code traps at the deadline itself, with its stack).
const DEADLINE_GRACE: Duration = Duration::from_millis(20);

/// The failure of a guest stopped at its deadline.
fn deadline_failure(functions: Vec<String>) -> Failure {
    Failure {
        kind: "trap",
        trap: Some("interrupt".into()),
        message: "the function ran past its deadline".into(),
        functions,
    }
}

/// Runs one hook in a fresh store, within the function's deadline (time blocked in host calls
/// included).
pub async fn run(
    pre: &TransformPre<State>,
    engine: &Engine,
    limits: &Limits,
    host: Arc<dyn FunctionHost>,
    hook: Hook,
    message: HttpMessage,
) -> Outcome {
    let stdout = CappedPipe::new(limits.max_log_bytes);
    let stderr = CappedPipe::new(limits.max_log_bytes);
    let wasi = WasiCtxBuilder::new()
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    let state = State {
        wasi,
        table: ResourceTable::new(),
        limits: Limiter::new((limits.memory_mib << 20) as usize),
        stdout,
        stderr,
        log: Vec::new(),
        log_bytes: 0,
        dropped_log_lines: 0,
        host_calls: 0,
        revealed_bytes: 0,
        max_log_bytes: limits.max_log_bytes,
        host,
        message_text: message_text(&message),
        response_hook: hook == Hook::Response,
        revealed: Vec::new(),
        revealed_seen: std::collections::HashSet::new(),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limits);
    let deadline = Instant::now() + Duration::from_millis(limits.timeout_ms.max(1));
    // Every tick: past the deadline, trap; before it, let the runtime's other tasks run.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        Ok(if Instant::now() >= deadline {
            UpdateDeadline::Interrupt
        } else {
            UpdateDeadline::Yield(1)
        })
    });
    let call = async {
        let bindings = pre.instantiate_async(&mut store).await?;
        let hooks = bindings.strongroom_function_hooks();
        match hook {
            Hook::Request => hooks.call_on_request(&mut store, &message).await,
            Hook::Response => hooks.call_on_response(&mut store, &message).await,
        }
    };
    // Dropping the call (its deadline passed while it waited in a host call) stops the guest.
    let result = tokio::time::timeout_at((deadline + DEADLINE_GRACE).into(), call).await;
    let memory_limit_hit = store.data().limits.denied;
    let result = match result {
        Err(_) => Err(deadline_failure(vec![])),
        Ok(Err(e)) => Err(trap_failure(&e, memory_limit_hit)),
        Ok(Ok(Err(fe))) => Err(Failure {
            kind: "function_error",
            trap: None,
            message: match fe {
                FunctionError::BadRequest(m) => format!("bad request: {m}"),
                FunctionError::Forbidden(m) => format!("forbidden: {m}"),
                FunctionError::Internal(m) => format!("internal: {m}"),
            },
            functions: vec![],
        }),
        Ok(Ok(Ok(out))) if message_size(&out) > limits.max_output_bytes => Err(Failure {
            kind: "limit",
            trap: Some("output_limit".into()),
            message: format!(
                "the function returned {} bytes; its limit is {}",
                message_size(&out),
                limits.max_output_bytes
            ),
            functions: vec![],
        }),
        Ok(Ok(Ok(out))) => Ok(out),
    };
    let mut state = store.into_data();
    for (level, pipe) in [
        ("stdout", state.stdout.clone()),
        ("stderr", state.stderr.clone()),
    ] {
        let bytes = pipe.contents();
        state.dropped_log_lines += pipe.dropped_lines();
        for line in String::from_utf8_lossy(&bytes).lines() {
            state.push_log(level, line);
        }
    }
    if state.dropped_log_lines > 0 {
        state.log.push(LogLine {
            level: "warn",
            message: format!(
                "{} more log lines were dropped (the log's limits were reached)",
                state.dropped_log_lines
            ),
        });
    }
    Outcome {
        result,
        log: std::mem::take(&mut state.log),
        revealed: std::mem::take(&mut state.revealed),
    }
}

/// The manifest's memory limit over all the store's linear memories together (a component
/// may define several), remembering whether it refused a growth (a Rust guest then aborts,
/// which shows as an `unreachable` trap: we report it as the memory limit). Table elements are
/// counted the same way.
struct Limiter {
    memory_bytes: usize,
    memory_used: usize,
    table_elements_used: usize,
    denied: bool,
}

/// Most table elements a function may have (all its tables together).
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl Limiter {
    fn new(memory_bytes: usize) -> Limiter {
        Limiter {
            memory_bytes,
            memory_used: 0,
            table_elements_used: 0,
            denied: false,
        }
    }
}

/// The new total when one of several growing things goes from `current` to `desired`, if it
/// stays within `max`.
fn grown(used: usize, current: usize, desired: usize, max: usize) -> Option<usize> {
    let total = used.saturating_sub(current).saturating_add(desired);
    (total <= max).then_some(total)
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        match grown(self.memory_used, current, desired, self.memory_bytes) {
            Some(total) => {
                self.memory_used = total;
                Ok(true)
            }
            None => {
                self.denied = true;
                Ok(false)
            }
        }
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        match grown(
            self.table_elements_used,
            current,
            desired,
            MAX_TABLE_ELEMENTS,
        ) {
            Some(total) => {
                self.table_elements_used = total;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// Checks a component's imports against [`ALLOWED_IMPORTS`]; returns the refused ones.
pub fn forbidden_imports(imports: &[String]) -> Vec<String> {
    imports
        .iter()
        .filter(|i| !ALLOWED_IMPORTS.iter().any(|p| i.starts_with(p)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The memory limit is the function's, not each memory's: a component with several
    /// memories gets the manifest's bytes in all of them together.
    #[test]
    fn the_memory_limit_bounds_all_memories_together() {
        let mib = 1 << 20;
        let mut l = Limiter::new(64 * mib);
        assert!(l.memory_growing(0, 40 * mib, None).unwrap(), "first memory");
        assert!(
            !l.memory_growing(0, 40 * mib, None).unwrap(),
            "a second one past the sum"
        );
        assert!(l.denied);
        assert!(
            l.memory_growing(0, 20 * mib, None).unwrap(),
            "within the sum"
        );
        assert!(
            !l.memory_growing(20 * mib, 30 * mib, None).unwrap(),
            "its growth past it"
        );
        assert!(
            l.memory_growing(40 * mib, 44 * mib, None).unwrap(),
            "to exactly the limit"
        );
        assert!(!l.memory_growing(0, 1, None).unwrap(), "nothing left");
        let mut l = Limiter::new(mib);
        for _ in 0..4 {
            assert!(l.table_growing(0, MAX_TABLE_ELEMENTS / 4, None).unwrap());
        }
        assert!(
            !l.table_growing(0, 1, None).unwrap(),
            "tables share their cap too"
        );
    }
}
