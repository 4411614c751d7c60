//! The sandbox: one wasmtime engine, a store per invocation, limits enforced by the host.
//!
//! - Wall clock: epoch interruption. A ticker advances the epoch every millisecond; a store's
//!   deadline is its timeout in ticks. An outer timeout on the awaiting side bounds the rest.
//! - Memory and tables: a [`ResourceLimiter`](wasmtime::ResourceLimiter) from the manifest, inside
//!   the pooling allocator's hard caps.
//! - Log and output: stdout/stderr go to capped in-memory pipes; `log` lines are capped; the
//!   returned message is measured before it is accepted.
//! - No ambient authority: no preopened directories, no environment, no network. Components
//!   that import anything outside [`ALLOWED_IMPORTS`] are refused at upload.
//! - Threads, GC and component-model async are not compiled in.

use super::{FunctionHost, Limits, LogLine};
use crate::vault::Redaction;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use zeroize::Zeroizing;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "transform",
});

use self::strongroom::function::types::Redaction as WitRedaction;
pub use exports::strongroom::function::hooks::{FunctionError, HttpMessage};

/// The hard ceiling of any function's linear memory (the pooling allocator's slot size).
pub const MAX_MEMORY_MIB: u64 = 256;
/// Components instantiated at the same time.
const POOL_INSTANCES: u32 = 64;

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
            .total_core_instances(POOL_INSTANCES * 4)
            .total_memories(POOL_INSTANCES * 2)
            .total_tables(POOL_INSTANCES * 4)
            .max_memory_size((MAX_MEMORY_MIB << 20) as usize)
            .table_elements(MAX_TABLE_ELEMENTS)
            // INVARIANT: nothing a function saw survives into the next invocation.
            .linear_memory_keep_resident(0);
        // Calls are synchronous (no fibers, so no async stacks to zero); the `threads`, `gc`
        // and `component-model-async` features are not compiled in (see Cargo.toml).
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .wasm_backtrace_max_frames(std::num::NonZeroUsize::new(32))
            .max_wasm_stack(512 << 10)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
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
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    pub log: Vec<LogLine>,
    log_bytes: usize,
    max_log_bytes: usize,
    host: Arc<dyn FunctionHost>,
    /// The text of the message being transformed: detokenize only accepts tokens found in it.
    message_text: String,
    response_hook: bool,
    /// Every plaintext revealed during this invocation (the egress guard checks the output).
    pub revealed: Vec<Zeroizing<String>>,
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
        if self.log_bytes >= self.max_log_bytes {
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
        self.log_bytes += text.len();
        self.log.push(LogLine {
            level,
            message: text,
        });
    }
}

impl self::strongroom::function::types::Host for State {}

impl self::strongroom::function::log::Host for State {
    fn log(&mut self, level: self::strongroom::function::log::Level, message: String) {
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
    fn detokenize(
        &mut self,
        tokens: Vec<String>,
        level: WitRedaction,
    ) -> Result<Vec<Result<String, String>>, String> {
        if self.response_hook {
            return Err("forbidden: detokenize is not available in on-response".into());
        }
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
        let results = self.host.detokenize(tokens, level)?;
        Ok(results
            .into_iter()
            .map(|r| {
                r.map(|value| {
                    let out = value.as_str().to_string();
                    self.revealed.push(value);
                    out
                })
            })
            .collect())
    }

    fn tokenize(
        &mut self,
        vault: String,
        table: String,
        column: String,
        values: Vec<String>,
    ) -> Result<Vec<String>, String> {
        self.host.tokenize(&vault, &table, &column, values)
    }

    fn read_file(
        &mut self,
        vault: String,
        table: String,
        record: String,
        column: String,
    ) -> Result<self::strongroom::function::vault::File, String> {
        if self.response_hook {
            return Err("forbidden: read-file is not available in on-response".into());
        }
        // INVARIANT: as for tokens, a function reads only records its message refers to.
        if record.is_empty() || !self.message_text.contains(record.as_str()) {
            return Err("forbidden: the record does not appear in the message".into());
        }
        let mut file = self.host.read_file(&vault, &table, &record, &column)?;
        // The egress guard looks for the content as the guest is likely to pass it on: base64,
        // and the bytes themselves when they are text.
        self.revealed.push(Zeroizing::new(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            file.data.as_slice(),
        )));
        if let Ok(text) = std::str::from_utf8(&file.data) {
            self.revealed.push(Zeroizing::new(text.to_string()));
        }
        // Moved into the guest's call, not copied.
        Ok(self::strongroom::function::vault::File {
            data: std::mem::take(&mut *file.data),
            name: file.name,
            media_type: file.media_type,
        })
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
    pub revealed: Vec<Zeroizing<String>>,
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
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        let name = match trap {
            wasmtime::Trap::Interrupt => "interrupt",
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
            "interrupt" => "the function ran past its deadline".to_string(),
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

/// Runs one hook in a fresh store (blocking: call from a blocking thread).
pub fn run(
    pre: &TransformPre<State>,
    engine: &Engine,
    limits: &Limits,
    host: Arc<dyn FunctionHost>,
    hook: Hook,
    message: HttpMessage,
) -> Outcome {
    let stdout = MemoryOutputPipe::new(limits.max_log_bytes);
    let stderr = MemoryOutputPipe::new(limits.max_log_bytes);
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
        limits: Limiter {
            memory_bytes: (limits.memory_mib << 20) as usize,
            denied: false,
        },
        stdout,
        stderr,
        log: Vec::new(),
        log_bytes: 0,
        max_log_bytes: limits.max_log_bytes,
        host,
        message_text: message_text(&message),
        response_hook: hook == Hook::Response,
        revealed: Vec::new(),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limits);
    store.set_epoch_deadline(limits.timeout_ms.max(1));
    store.epoch_deadline_trap();
    let result = pre.instantiate(&mut store).and_then(|bindings| {
        let hooks = bindings.strongroom_function_hooks();
        match hook {
            Hook::Request => hooks.call_on_request(&mut store, &message),
            Hook::Response => hooks.call_on_response(&mut store, &message),
        }
    });
    let memory_limit_hit = store.data().limits.denied;
    let result = match result {
        Err(e) => Err(trap_failure(&e, memory_limit_hit)),
        Ok(Err(fe)) => Err(Failure {
            kind: "function_error",
            trap: None,
            message: match fe {
                FunctionError::BadRequest(m) => format!("bad request: {m}"),
                FunctionError::Forbidden(m) => format!("forbidden: {m}"),
                FunctionError::Internal(m) => format!("internal: {m}"),
            },
            functions: vec![],
        }),
        Ok(Ok(out)) if message_size(&out) > limits.max_output_bytes => Err(Failure {
            kind: "limit",
            trap: Some("output_limit".into()),
            message: format!(
                "the function returned {} bytes; its limit is {}",
                message_size(&out),
                limits.max_output_bytes
            ),
            functions: vec![],
        }),
        Ok(Ok(out)) => Ok(out),
    };
    let mut state = store.into_data();
    for (level, pipe) in [
        ("stdout", state.stdout.clone()),
        ("stderr", state.stderr.clone()),
    ] {
        let bytes = pipe.contents();
        for line in String::from_utf8_lossy(&bytes).lines() {
            state.push_log(level, line);
        }
    }
    Outcome {
        result,
        log: std::mem::take(&mut state.log),
        revealed: std::mem::take(&mut state.revealed),
    }
}

/// The manifest's memory limit, remembering whether it refused a growth (a Rust guest then
/// aborts, which shows as an `unreachable` trap: we report it as the memory limit).
struct Limiter {
    memory_bytes: usize,
    denied: bool,
}

/// Most table elements a function may have.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = desired <= self.memory_bytes;
        self.denied |= !ok;
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
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
