//! `connection-bench`: what the outbound gateway adds to a call, against a local upstream that
//! answers at once.
//!
//! Starts a release `strongroom serve` (its own PostgreSQL, in a temp data directory) as a
//! separate process, allowed to reach `127.0.0.1` over plain http, and an upstream in this
//! process (axum on its own runtime and threads, a fixed small JSON reply). Then, with the same
//! load (32 concurrent callers sharing one keep-alive client, the same request body), measures:
//! 1. the upstream called directly (the baseline);
//! 2. nginx `proxy_pass` to the upstream (keep-alive to the upstream), if nginx is installed;
//! 3. the gateway as a pure proxy: a connection and route with no tokens and no function;
//! 4. the gateway with 5 body fields detokenized (name, email, phone, ssn, date of birth) and a
//!    request function (`hostile_trivial`, which returns the message unchanged).
//!
//! Each is warmed up first, then measured with 32 callers (latency and throughput) and with one
//! caller (latency without queueing). Overheads are p50 differences from the direct calls.
//! Those 32 callers run a closed loop (each sends again as soon as it has its answer), which
//! measures saturation: there p50 is the queue, about 32 ÷ throughput. So each target is then
//! also measured open-loop: the 32 callers together offer a fixed rate (`common::paced`), and
//! the p50 differences at each rate are the latency a call gains at that load.
//!
//! Run: `cargo build --release -p strongroom -p strongroom-bench && target/release/connection-bench`
//! Options (environment): `BENCH_CALLS` (calls per measured phase, default 30000),
//! `BENCH_CONCURRENCY` (default 32), `BENCH_SERIAL_CALLS` (one-caller phase, default 1000),
//! `BENCH_RATES` (offered calls/s of the paced phases, default `500,1000,1500`),
//! `BENCH_PACED_SECS` (length of each paced phase, default 4), `BENCH_NGINX` (the nginx
//! binary, default `/usr/sbin/nginx` or `nginx` on the PATH),
//! `BENCH_SYNC_COMMIT=off` (diagnostic: the server's PostgreSQL stops waiting for the WAL flush
//! at commit, to show what the audit append's commit costs a call), `BENCH_PROFILE=plain|bench`
//! (diagnostic: print the server's pid, then only load that route for 60 s, for `perf record -p`),
//! `BENCH_TRY_PATH=/v1/zzz` (diagnostic: only a paced load on that server path, any answer
//! accepted, at the first of `BENCH_RATES` for `BENCH_PACED_SECS`), `BENCH_TAILS=1`
//! (diagnostic: print each slow paced call with its wall-clock time), `BENCH_SERVER_LOG`.
//! Builds the guest components first (`cargo build --release --target wasm32-wasip2` in
//! `functions-examples/`).

mod common;

use anyhow::{Context, Result, anyhow, bail};
use common::{
    ADMIN, Caller, CpuTimes, Server, connect_pg, env_or, free_port, guests, paced, percentile,
    rates, split_url, start_server,
};
use hyper::StatusCode;
use hyper::body::Bytes;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Records inserted (each gateway call detokenizes one record's 5 tokens, round robin).
const RECORDS: usize = 1000;
/// The 5 tokenized columns, with their types.
const COLUMNS: [(&str, &str); 5] = [
    ("name", "name"),
    ("email", "email"),
    ("phone", "phone"),
    ("ssn", "ssn"),
    ("dob", "date_of_birth"),
];
/// Calls whose body reached the upstream with plaintext in it (a name from the records).
static PLAINTEXT_SEEN: AtomicUsize = AtomicUsize::new(0);
const PLAINTEXT_MARK: &[u8] = b"Customer Number ";

/// What the upstream answers to everything.
const REPLY: &str =
    r#"{"id":"ch_3MmlLrLkdIwHu7ix0snN0B15","object":"charge","status":"succeeded","amount":1999}"#;

/// The upstream: any method and path, the body read and checked for plaintext (counted in
/// [`PLAINTEXT_SEEN`]), [`REPLY`] at once. It runs on
/// its own two-thread runtime so the load generator's runtime does not schedule it.
fn start_upstream() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("upstream")
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("upstream".into())
        .spawn(move || {
            let served = runtime.block_on(async move {
                use axum::serve::ListenerExt;
                let app = axum::Router::new().fallback(|body: axum::body::Bytes| async move {
                    if body
                        .windows(PLAINTEXT_MARK.len())
                        .any(|w| w == PLAINTEXT_MARK)
                    {
                        PLAINTEXT_SEEN.fetch_add(1, Ordering::Relaxed);
                    }
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        REPLY,
                    )
                });
                let listener = tokio::net::TcpListener::from_std(listener)?.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                axum::serve(listener, app).await
            });
            if let Err(e) = served {
                eprintln!("upstream stopped: {e}");
            }
        })?;
    Ok(port)
}

/// nginx in the foreground, with its files in a temp directory; stopped on drop.
struct Nginx {
    child: std::process::Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        common::stop(&mut self.child, &self.dir);
    }
}

fn nginx_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("BENCH_NGINX") {
        return Some(PathBuf::from(p));
    }
    let default = PathBuf::from("/usr/sbin/nginx");
    if default.exists() {
        return Some(default);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nginx"))
            .find(|p| p.exists())
    })
}

/// Starts nginx as a reverse proxy to the upstream, keep-alive on both sides.
async fn start_nginx(bin: &PathBuf, upstream: u16) -> Result<Nginx> {
    let dir = std::env::temp_dir().join(format!(
        "strongroom-bench-nginx-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    // Temp paths for the modules this build has (nginx-light leaves some out).
    let built = std::process::Command::new(bin).arg("-V").output()?;
    let built = String::from_utf8_lossy(&built.stderr).into_owned();
    let d = dir.display();
    let mut temps =
        format!("client_body_temp_path {d}/client_body;\n  proxy_temp_path {d}/proxy;\n");
    for m in ["fastcgi", "uwsgi", "scgi"] {
        if !built.contains(&format!("--without-http_{m}_module")) {
            temps.push_str(&format!("  {m}_temp_path {d}/{m};\n"));
        }
    }
    // Running as root: keep the workers root too (they use the temp directory).
    let user = if is_root() { "user root;\n" } else { "" };
    let conf = format!(
        "{user}worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  {temps}
  upstream bench_upstream {{
    server 127.0.0.1:{upstream};
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://bench_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }}
  }}
}}
"
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let child = std::process::Command::new(bin)
        .arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&conf_path)
        .arg("-g")
        .arg("daemon off;")
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut nginx = Nginx { child, dir, port };
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if let Some(status) = nginx.child.try_wait()? {
            let log = std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
            bail!("nginx exited ({status}): {log}");
        }
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{}/", nginx.port))
            .send()
            .await
            && r.status().is_success()
        {
            return Ok(nginx);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nginx did not answer")
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A JSON call as the admin; the body on success, the status and body as the error otherwise.
async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<&Value>,
) -> Result<Value> {
    let mut req = client.request(method.clone(), url).bearer_auth(ADMIN);
    if let Some(b) = body {
        req = req.json(b);
    }
    answer(&method, url, req.send().await?).await
}

async fn answer(method: &reqwest::Method, url: &str, resp: reqwest::Response) -> Result<Value> {
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("{method} {url}: {status}: {text}");
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// The vault, its records, the function, the policies and both connections.
async fn set_up(
    client: &reqwest::Client,
    base: &str,
    upstream: u16,
    wasm: Vec<u8>,
) -> Result<Vec<Value>> {
    let post = reqwest::Method::POST;
    let columns: Vec<Value> = COLUMNS
        .iter()
        .map(|(name, ty)| json!({"name": name, "type": ty}))
        .collect();
    call(
        client,
        post.clone(),
        &format!("{base}/v1/vaults"),
        Some(&json!({"name": "bench", "tables": [{"name": "customers", "columns": columns}]})),
    )
    .await?;
    let records: Vec<Value> = (0..RECORDS)
        .map(|i| {
            json!({"fields": {
                "name": format!("Customer Number {i}"),
                "email": format!("customer{i}@example.com"),
                "phone": format!("+1415555{:04}", i % 10_000),
                "ssn": format!("{:03}-{:02}-{:04}", 100 + i % 500, 1 + i % 98, 1000 + i % 9000),
                "dob": format!("19{:02}-{:02}-{:02}", 30 + i % 70, 1 + i % 12, 1 + i % 28),
            }})
        })
        .collect();
    let out = call(
        client,
        post.clone(),
        &format!("{base}/v1/vaults/bench/tables/customers/records"),
        Some(&json!({ "records": records })),
    )
    .await?;
    let mut bodies = Vec::with_capacity(RECORDS);
    for r in out["records"].as_array().into_iter().flatten() {
        let mut customer = serde_json::Map::new();
        for (col, _) in COLUMNS {
            let token = r["tokens"][col]
                .as_str()
                .ok_or_else(|| anyhow!("no token for `{col}` in {r}"))?;
            customer.insert(col.to_string(), Value::String(token.to_string()));
        }
        bodies.push(json!({"amount": 1999, "currency": "usd", "customer": customer}));
    }
    if bodies.len() != RECORDS {
        bail!("inserted {} records, expected {RECORDS}", bodies.len());
    }

    // The request function: multipart, a manifest part and a component part.
    let form = reqwest::multipart::Form::new()
        .part(
            "manifest",
            reqwest::multipart::Part::text(
                json!({"name": "trivial", "description": "returns the message unchanged"})
                    .to_string(),
            )
            .mime_str("application/json")?,
        )
        .part(
            "component",
            reqwest::multipart::Part::bytes(wasm).mime_str("application/wasm")?,
        );
    let url = format!("{base}/v1/functions");
    let resp = client
        .post(&url)
        .bearer_auth(ADMIN)
        .multipart(form)
        .send()
        .await?;
    answer(&post, &url, resp).await?;

    // Cedar: the admin may do anything (call_connection included); the connection `bench` may
    // reveal the tokens its route detokenizes.
    let policies = r#"@id("admin-all")
permit (principal in Strongroom::Role::"admin", action, resource);
@id("bench-detokenize")
permit (principal == Strongroom::Connection::"bench", action == Strongroom::Action::"detokenize", resource);
"#;
    let url = format!("{base}/v1/policies");
    let resp = client
        .put(&url)
        .bearer_auth(ADMIN)
        .header("content-type", "text/plain")
        .body(policies)
        .send()
        .await?;
    answer(&reqwest::Method::PUT, &url, resp).await?;

    let upstream_url = format!("http://127.0.0.1:{upstream}");
    let detokenize: Vec<Value> = COLUMNS
        .iter()
        .map(|(col, _)| {
            json!({"location": "body", "path": format!("$.customer.{col}"), "redaction": "plain"})
        })
        .collect();
    call(
        client,
        post.clone(),
        &format!("{base}/v1/connections"),
        Some(&json!({
            "name": "bench", "kind": "outbound", "base_url": upstream_url, "vault": "bench",
            "routes": [{"name": "charge", "method": "POST", "path": "/v1/charges",
                        "request": {"detokenize": detokenize, "function": "trivial"}}]
        })),
    )
    .await?;
    call(
        client,
        post,
        &format!("{base}/v1/connections"),
        Some(&json!({
            "name": "plain", "kind": "outbound", "base_url": upstream_url,
            "routes": [{"name": "all", "method": "*", "path": "/{*rest}"}]
        })),
    )
    .await?;
    Ok(bodies)
}

/// One measured phase: latencies sorted, and calls per second.
struct Phase {
    lat: Vec<Duration>,
    rate: f64,
}

impl Phase {
    fn p50(&self) -> Duration {
        percentile(&self.lat, 0.50)
    }
    fn ms(&self, p: f64) -> f64 {
        percentile(&self.lat, p).as_secs_f64() * 1e3
    }
}

/// `calls` POSTs of the bodies (round robin) to `url` by `conc` callers, each on its own
/// keep-alive connection (`Caller`, opened before the clock starts); every answer must be 200
/// (the first that is not is the error, with its body).
async fn load(url: &str, bodies: &Arc<Vec<Bytes>>, calls: usize, conc: usize) -> Result<Phase> {
    let path = split_url(url)?.1.to_string();
    let mut callers = Vec::with_capacity(conc);
    for _ in 0..conc {
        callers.push(Caller::connect(url).await?);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(conc);
    for mut caller in callers {
        let (path, bodies, next) = (path.clone(), bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(calls / conc + 1);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= calls {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let body = bodies[i % bodies.len()].clone();
                let t0 = Instant::now();
                let (status, reply) = caller
                    .post(&path, body.clone())
                    .await
                    .with_context(|| format!("POST {path}"))?;
                lat.push(t0.elapsed());
                if status != StatusCode::OK {
                    bail!(
                        "POST {path}\nrequest body: {}\nanswer: {status}: {}",
                        String::from_utf8_lossy(&body),
                        String::from_utf8_lossy(&reply)
                    );
                }
            }
        }));
    }
    let mut lat = Vec::with_capacity(calls);
    for t in tasks {
        lat.extend(t.await??);
    }
    let rate = lat.len() as f64 / started.elapsed().as_secs_f64();
    lat.sort();
    Ok(Phase { lat, rate })
}

/// A target measured three ways: warm-up (discarded), `conc` callers, one caller.
struct Measured {
    loaded: Phase,
    serial: Phase,
    /// Every call made, warm-ups included.
    calls: usize,
    /// Where the loaded phase's CPU went (`CpuTimes::per_unit_since`).
    cpu: String,
}

async fn measure(
    url: &str,
    bodies: &Arc<Vec<Bytes>>,
    calls: usize,
    serial_calls: usize,
    conc: usize,
    server: u32,
) -> Result<Measured> {
    let warm = (calls / 10).max(500);
    load(url, bodies, warm, conc).await?;
    let before = CpuTimes::now(server);
    let loaded = load(url, bodies, calls, conc).await?;
    let cpu = CpuTimes::now(server).per_unit_since(&before, calls, "call");
    load(url, bodies, 50, 1).await?;
    let serial = load(url, bodies, serial_calls, 1).await?;
    Ok(Measured {
        loaded,
        serial,
        calls: warm + calls + 50 + serial_calls,
        cpu,
    })
}

fn print_row(label: &str, m: &Measured, conc: usize) {
    println!(
        "{label:<46} {conc} callers: p50 {:>6.2} ms  p99 {:>6.2} ms  {:>7.0} calls/s | 1 caller: p50 {:>5.3} ms  p99 {:>5.3} ms",
        m.loaded.ms(0.50),
        m.loaded.ms(0.99),
        m.loaded.rate,
        m.serial.ms(0.50),
        m.serial.ms(0.99)
    );
    println!("    {conc} callers: {}", m.cpu);
}

fn ms_diff(a: Duration, b: Duration) -> f64 {
    (a.as_secs_f64() - b.as_secs_f64()) * 1e3
}

#[tokio::main]
async fn main() -> Result<()> {
    let calls = env_or("BENCH_CALLS", 30_000);
    let conc = env_or("BENCH_CONCURRENCY", 32).max(1);
    let serial_calls = env_or("BENCH_SERIAL_CALLS", 1000).max(1);
    let wasm = std::fs::read(guests()?.join("hostile_trivial.wasm"))?;

    let upstream = start_upstream()?;
    let mut env = vec![
        ("STRONGROOM_EGRESS_ALLOW_NETWORKS", "127.0.0.1/32"),
        ("STRONGROOM_EGRESS_ALLOW_HTTP_HOSTS", "127.0.0.1"),
    ];
    // Quieter than `start_server`'s default, unless BENCH_SERVER_LOG asks for a filter.
    if std::env::var_os("BENCH_SERVER_LOG").is_none() {
        env.push(("STRONGROOM_LOG", "error"));
    }
    let server: Server = start_server(&env).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(conc + 16)
        .tcp_nodelay(true)
        .build()?;
    let bodies = set_up(&client, &server.base, upstream, wasm).await?;
    let sync_commit_off = std::env::var("BENCH_SYNC_COMMIT").as_deref() == Ok("off");
    if sync_commit_off {
        let pg = connect_pg(&server.dir).await?;
        pg.batch_execute("ALTER SYSTEM SET synchronous_commit = off")
            .await?;
        pg.batch_execute("SELECT pg_reload_conf()").await?;
    }
    let bodies = Arc::new(
        bodies
            .iter()
            .map(|b| serde_json::to_vec(b).map(Bytes::from))
            .collect::<Result<Vec<_>, _>>()?,
    );
    if let Ok(path) = std::env::var("BENCH_TRY_PATH") {
        // Diagnostic: paced load on one server path (any answer), to find which step of a
        // call the tail comes from.
        let mut callers = Vec::with_capacity(conc);
        for _ in 0..conc {
            callers.push(Caller::connect(&server.base).await?);
        }
        let rate = rates("BENCH_RATES", &[1000.0])[0];
        let calls = (rate * env_or("BENCH_PACED_SECS", 4) as f64) as usize;
        let (_, lat) = paced(callers, &path, &bodies, rate, calls, true).await?;
        println!(
            "{path}, {rate} calls/s offered by {conc} callers: p50 {:.2} ms, p99 {:.2} ms",
            percentile(&lat, 0.5).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3
        );
        return Ok(());
    }
    if let Ok(route) = std::env::var("BENCH_PROFILE") {
        println!(
            "server pid {}: loading /v1/gateway/{route} for 60 s",
            server.child.id()
        );
        let url = format!("{}/v1/gateway/{route}/v1/charges", server.base);
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            load(&url, &bodies, 5_000, conc).await?;
        }
        return Ok(());
    }
    let nginx = match nginx_binary() {
        Some(bin) => match start_nginx(&bin, upstream).await {
            Ok(n) => Some(n),
            Err(e) => {
                println!(
                    "nginx: could not start {} ({e:#}); its line is skipped",
                    bin.display()
                );
                None
            }
        },
        None => {
            println!(
                "nginx: not installed (no /usr/sbin/nginx, none on PATH); its line is skipped"
            );
            None
        }
    };

    println!(
        "strongroom connection-bench ({calls} calls per phase, {conc} concurrent callers, {serial_calls} calls with 1 caller, {} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let body_len = bodies.first().map_or(0, Bytes::len);
    println!(
        "request: POST, {body_len} B JSON body; reply: {} B JSON",
        REPLY.len()
    );
    if sync_commit_off {
        println!(
            "BENCH_SYNC_COMMIT=off: the server's PostgreSQL runs with synchronous_commit = off"
        );
    }

    let direct = measure(
        &format!("http://127.0.0.1:{upstream}/v1/charges"),
        &bodies,
        calls,
        serial_calls,
        conc,
        server.child.id(),
    )
    .await?;
    print_row("direct to the upstream", &direct, conc);
    let proxied_nginx = match &nginx {
        Some(n) => {
            let m = measure(
                &format!("http://127.0.0.1:{}/v1/charges", n.port),
                &bodies,
                calls,
                serial_calls,
                conc,
                server.child.id(),
            )
            .await?;
            print_row("nginx proxy_pass", &m, conc);
            Some(m)
        }
        None => None,
    };
    let plain = measure(
        &format!("{}/v1/gateway/plain/v1/charges", server.base),
        &bodies,
        calls,
        serial_calls,
        conc,
        server.child.id(),
    )
    .await?;
    print_row("gateway, pure proxy (no tokens, no function)", &plain, conc);
    let before = PLAINTEXT_SEEN.load(Ordering::Relaxed);
    let full = measure(
        &format!("{}/v1/gateway/bench/v1/charges", server.base),
        &bodies,
        calls,
        serial_calls,
        conc,
        server.child.id(),
    )
    .await?;
    print_row("gateway, 5 detokenized fields + function", &full, conc);
    let seen = PLAINTEXT_SEEN.load(Ordering::Relaxed);
    if before == 0 && seen - before == full.calls {
        println!(
            "check: the upstream got plaintext in all {} calls through the detokenizing route, in none of the others",
            full.calls
        );
    } else {
        println!(
            "CHECK FAILED: the upstream saw plaintext in {before} calls before the detokenizing route and {} of its {} calls",
            seen - before,
            full.calls
        );
    }

    let added = ms_diff(full.loaded.p50(), direct.loaded.p50());
    println!(
        "added p50, gateway 5 fields + function - direct: {added:>6.2} ms with {conc} callers, {:.3} ms with 1 caller   (goal <= 2 ms)",
        ms_diff(full.serial.p50(), direct.serial.p50())
    );
    println!(
        "throughput, gateway 5 fields + function:         {:>6.0} calls/s   (goal >= 2000)",
        full.loaded.rate
    );
    let sr = ms_diff(plain.loaded.p50(), direct.loaded.p50());
    let sr1 = ms_diff(plain.serial.p50(), direct.serial.p50());
    match &proxied_nginx {
        Some(n) => {
            let ng = ms_diff(n.loaded.p50(), direct.loaded.p50());
            let ng1 = ms_diff(n.serial.p50(), direct.serial.p50());
            println!(
                "pure proxy overhead (p50 - direct): strongroom {sr:.2} ms, nginx {ng:.2} ms, ratio {:.2} with {conc} callers   (goal <= 1.5)",
                sr / ng
            );
            println!(
                "                                    strongroom {sr1:.3} ms, nginx {ng1:.3} ms, ratio {:.2} with 1 caller",
                sr1 / ng1
            );
        }
        None => println!(
            "pure proxy overhead (p50 - direct): strongroom {sr:.2} ms with {conc} callers, {sr1:.3} ms with 1 caller; nginx: unavailable, ratio skipped"
        ),
    }

    // Open loop: the same targets at fixed offered rates.
    let secs = env_or("BENCH_PACED_SECS", 4).max(1) as f64;
    let mut targets = vec![("direct", format!("http://127.0.0.1:{upstream}/v1/charges"))];
    if let Some(n) = &nginx {
        targets.push(("nginx", format!("http://127.0.0.1:{}/v1/charges", n.port)));
    }
    targets.push((
        "pure proxy",
        format!("{}/v1/gateway/plain/v1/charges", server.base),
    ));
    targets.push((
        "5 fields + function",
        format!("{}/v1/gateway/bench/v1/charges", server.base),
    ));
    for rate in rates("BENCH_RATES", &[500.0, 1000.0, 1500.0]) {
        let calls = (rate * secs) as usize;
        let mut p50 = Vec::new();
        let mut line = format!("paced {rate:>5.0} calls/s offered by {conc} callers, p50/p99 ms:");
        for (label, url) in &targets {
            let mut callers = Vec::with_capacity(conc);
            for _ in 0..conc {
                callers.push(Caller::connect(url).await?);
            }
            let (_, lat) = paced(callers, split_url(url)?.1, &bodies, rate, calls, false).await?;
            let ms = |p: f64| percentile(&lat, p).as_secs_f64() * 1e3;
            line.push_str(&format!(" {label} {:.2}/{:.2} |", ms(0.50), ms(0.99)));
            p50.push((*label, percentile(&lat, 0.50)));
        }
        println!("{}", line.trim_end_matches(" |"));
        let at = |label: &str| p50.iter().find(|(l, _)| *l == label).map(|(_, d)| *d);
        if let (Some(d), Some(f), Some(p)) =
            (at("direct"), at("5 fields + function"), at("pure proxy"))
        {
            let added = ms_diff(f, d);
            let sr = ms_diff(p, d);
            let ratio = at("nginx").map_or(String::from("nginx unavailable"), |n| {
                format!(
                    "nginx {:.3} ms, ratio {:.1}",
                    ms_diff(n, d),
                    sr / ms_diff(n, d)
                )
            });
            println!(
                "    added p50 (5 fields + function - direct) {added:.2} ms (goal <= 2 ms); pure proxy overhead {sr:.3} ms, {ratio} (goal <= 1.5)"
            );
        }
    }
    drop(nginx);
    drop(server);
    Ok(())
}
