//! `function-bench`: the cost of running functions in the sandbox.
//!
//! 1. Invocation overhead of a trivial transform: instantiate, call, drop.
//! 2. `date-split` on a 1 KiB JSON body in the sandbox, and the same transform compiled natively.
//! 3. Sustained invocations per second with 16 concurrent callers.
//! 4. Upload-to-ready (compile + pre-instantiate) of each example, and ready from the disk cache.
//!
//! Builds the guest components first (`cargo build --release --target wasm32-wasip2` in
//! `functions-examples/`). Run: `cargo build --release -p strongroom-bench && target/release/function-bench`

mod common;

use anyhow::{Result, anyhow, bail};
use common::{guests, percentile};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use strongroom::functions::sandbox::{self, Hook, HttpMessage, Sandbox};
use strongroom::functions::{Detokenized, FunctionHost, HostFuture, Limits, load_cached};
use strongroom::vault::Redaction;

/// The `date-split` example's transform, compiled natively for the comparison (the same source
/// files the component is built from; the example crate itself is a Wasm-only `cdylib`).
#[path = "../../functions-examples/date-split/src/date.rs"]
mod date;
#[path = "../../functions-examples/date-split/src/split.rs"]
mod split;

/// The sandbox without a vault: these transforms do not call it.
struct NoVault;

impl FunctionHost for NoVault {
    fn detokenize(self: Arc<Self>, _: Vec<String>, _: Redaction) -> HostFuture<Detokenized> {
        Box::pin(async { Err("forbidden".into()) })
    }
    fn tokenize(
        self: Arc<Self>,
        _: String,
        _: String,
        _: String,
        _: Vec<String>,
    ) -> HostFuture<Result<Vec<String>, String>> {
        Box::pin(async { Err("forbidden".into()) })
    }
    fn read_file(
        self: Arc<Self>,
        _: String,
        _: String,
        _: String,
        _: String,
    ) -> HostFuture<Result<strongroom::types::file::FileValue, String>> {
        Box::pin(async { Err("forbidden".into()) })
    }
}

fn limits() -> Limits {
    Limits {
        memory_mib: 64,
        timeout_ms: 1000,
        max_log_bytes: 64 << 10,
        max_output_bytes: 8 << 20,
    }
}

/// A JSON body of about 1 KiB with a date of birth to split.
fn kib_body() -> Vec<u8> {
    let mut v = serde_json::json!({"date_of_birth": "1990-05-17", "name": "Ada Lovelace"});
    for i in 0..24 {
        v[format!("field_{i:02}")] = serde_json::json!("x".repeat(24));
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

fn message(body: Vec<u8>) -> HttpMessage {
    HttpMessage {
        method: "POST".into(),
        url: "https://kyc.example/v1/check".into(),
        status: None,
        headers: vec![("content-type".into(), "application/json".into())],
        body,
    }
}

async fn time_runs(
    sb: &Sandbox,
    pre: &sandbox::TransformPre<sandbox::State>,
    body: &[u8],
    n: usize,
) -> Result<Vec<Duration>> {
    let host: Arc<dyn FunctionHost> = Arc::new(NoVault);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let o = sandbox::run(
            pre,
            &sb.engine,
            &limits(),
            host.clone(),
            Hook::Request,
            message(body.to_vec()),
        )
        .await;
        out.push(t.elapsed());
        if let Err(f) = o.result {
            bail!("invocation failed: {}", f.message);
        }
    }
    out.sort();
    Ok(out)
}

fn native_date_split(body: &[u8]) -> Result<Vec<u8>> {
    let fields = split::parse_fields(None).map_err(|_| anyhow!("fields"))?;
    let mut v: serde_json::Value = serde_json::from_slice(body)?;
    split::split_dates(&mut v, &fields, |_| {
        Err(strongroom_guest::FunctionError::Forbidden(
            "no vault".into(),
        ))
    })
    .map_err(|_| anyhow!("split"))?;
    Ok(serde_json::to_vec(&v)?)
}

fn ready_times(sb: &Sandbox, dir: &Path, name: &str, cache: &Path) -> Result<(Duration, Duration)> {
    let bytes = std::fs::read(dir.join(format!("{name}.wasm")))?;
    let t = Instant::now();
    let c = wasmtime::component::Component::new(&sb.engine, &bytes)?;
    sb.prepare(&c)?;
    let cold = t.elapsed();
    let path = cache.join(format!("{name}.cwasm"));
    std::fs::write(&path, c.serialize()?)?;
    let t = Instant::now();
    let c = load_cached(&sb.engine, &std::fs::read(&path)?)?;
    sb.prepare(&c)?;
    Ok((cold, t.elapsed()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let dir = guests()?;
    let sb = Sandbox::new()?;
    println!(
        "strongroom function-bench ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let load = |name: &str| -> Result<_> {
        let bytes = std::fs::read(dir.join(format!("{name}.wasm")))?;
        let c = wasmtime::component::Component::new(&sb.engine, &bytes)?;
        Ok(sb.prepare(&c)?)
    };
    let trivial = load("hostile_trivial")?;
    let split = load("date_split")?;
    let small = b"{\"x\":1}".to_vec();
    time_runs(&sb, &trivial, &small, 200).await?; // warm up
    let t = time_runs(&sb, &trivial, &small, 5000).await?;
    println!(
        "trivial transform (instantiate, call, drop):   p50 {:>7.1} µs  p99 {:>7.1} µs   (goal p50 <= 50 µs)",
        percentile(&t, 0.5).as_secs_f64() * 1e6,
        percentile(&t, 0.99).as_secs_f64() * 1e6
    );
    let body = kib_body();
    let wasm = time_runs(&sb, &split, &body, 5000).await?;
    let mut native = Vec::with_capacity(5000);
    for _ in 0..5000 {
        let t = Instant::now();
        let out = native_date_split(&body)?;
        native.push(t.elapsed());
        std::hint::black_box(out);
    }
    native.sort();
    let (w, n) = (percentile(&wasm, 0.5), percentile(&native, 0.5));
    println!(
        "date-split, {} B JSON body, in the sandbox:   p50 {:>7.1} µs  p99 {:>7.1} µs   (goal p50 <= 100 µs)",
        body.len(),
        w.as_secs_f64() * 1e6,
        percentile(&wasm, 0.99).as_secs_f64() * 1e6
    );
    println!(
        "  the same transform compiled natively:       p50 {:>7.1} µs   ratio sandbox/native {:.1}x",
        n.as_secs_f64() * 1e6,
        w.as_secs_f64() / n.as_secs_f64().max(1e-9)
    );

    // 16 concurrent callers for 3 seconds (tasks on the runtime's workers: calls are async).
    let sb = Arc::new(sb);
    let trivial = Arc::new(trivial);
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (sb, pre, count, stop) = (sb.clone(), trivial.clone(), count.clone(), stop.clone());
            tokio::spawn(async move {
                let host: Arc<dyn FunctionHost> = Arc::new(NoVault);
                while !stop.load(Ordering::Relaxed) {
                    let o = sandbox::run(
                        &pre,
                        &sb.engine,
                        &limits(),
                        host.clone(),
                        Hook::Request,
                        message(b"{}".to_vec()),
                    )
                    .await;
                    if o.result.is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "sustained, 16 concurrent callers:              {:>9.0} invocations/s   (goal >= 5000)",
        count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
    );

    let cache =
        std::env::temp_dir().join(format!("strongroom-function-bench-{}", std::process::id()));
    std::fs::create_dir_all(&cache)?;
    for name in ["date_split", "payment_reshape", "file_extract"] {
        let (cold, warm) = ready_times(&sb, &dir, name, &cache)?;
        println!(
            "upload-to-ready {name:<16} compile {:>7.1} ms   from the disk cache {:>6.2} ms",
            cold.as_secs_f64() * 1e3,
            warm.as_secs_f64() * 1e3
        );
    }
    std::fs::remove_dir_all(&cache)?;
    Ok(())
}
