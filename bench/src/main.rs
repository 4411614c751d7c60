//! `vault-bench`: starts a release `strongroom` server (its own PostgreSQL, in a temp data
//! directory) as a separate process and measures it over HTTP from this process.
//!
//! Run: `cargo build --release -p strongroom -p strongroom-bench && target/release/vault-bench`
//! Options (environment): `BENCH_RECORDS` (default 100000), `BENCH_CONCURRENCY` (default 4),
//! `BENCH_SINGLE` (single-token requests per client, default 500; after 50 to warm up),
//! `BENCH_RATES` (offered requests/s of the paced single-token phases, default
//! `1000,2000,3000`), `BENCH_PACED_SECS` (length of each paced phase, default 4).

mod common;

use anyhow::{Result, bail};
use common::{ADMIN, Caller, CpuTimes, connect_pg, env_or, paced, percentile, rates, start_server};
use hyper::StatusCode;
use hyper::body::Bytes;
use rand::Rng;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;

fn luhn_complete(prefix: &str) -> String {
    let digits: Vec<u32> = prefix.chars().filter_map(|c| c.to_digit(10)).collect();
    let mut sum = 0;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut d = *d;
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    format!("{prefix}{}", (10 - sum % 10) % 10)
}

fn record(i: usize) -> Value {
    let mut rng = rand::thread_rng();
    let card = luhn_complete(&format!(
        "4{:014}",
        rng.gen_range(0..100_000_000_000_000u64)
    ));
    json!({"fields": {
        "name": format!("Customer Number {i}"),
        "email": format!("customer{i}@example.com"),
        "card": card,
        "ssn": format!("{:03}-{:02}-{:04}", rng.gen_range(1..=665), rng.gen_range(1..=99), rng.gen_range(1..=9999)),
        "dob": format!("19{:02}-{:02}-{:02}", rng.gen_range(30..=99), rng.gen_range(1..=12), rng.gen_range(1..=28)),
    }})
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> Result<Value> {
    let resp = client
        .post(url)
        .bearer_auth(ADMIN)
        .json(body)
        .send()
        .await?;
    let status = resp.status();
    let json: Value = resp.json().await?;
    if !status.is_success() {
        bail!("{url}: {status}: {json}");
    }
    Ok(json)
}

/// `BENCH_EXPLAIN=1`: the plans of the hot queries, on the data just inserted (to see what bounds).
async fn explain(pg: &tokio_postgres::Client) -> Result<()> {
    let vault: uuid::Uuid = pg.query_one("SELECT id FROM vaults", &[]).await?.get(0);
    let hashes: Vec<Vec<u8>> = pg
        .query("SELECT token_hash FROM record_values WHERE token_hash IS NOT NULL ORDER BY random() LIMIT 1000", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let ids: Vec<uuid::Uuid> = pg
        .query("SELECT id FROM records ORDER BY random() LIMIT 1000", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let cols: Vec<uuid::Uuid> = vec![];
    for (label, sql) in [(
        "detokenize",
        "EXPLAIN ANALYZE SELECT DISTINCT ON (token_hash) token_hash, record_id, column_id, key_version, sealed FROM record_values WHERE vault_id = $1 AND token_hash = ANY($2)",
    )] {
        println!("-- {label}");
        for row in pg.query(sql, &[&vault, &hashes]).await? {
            println!("{}", row.get::<_, String>(0));
        }
    }
    println!("-- row facts");
    for row in pg
        .query(
            "EXPLAIN ANALYZE SELECT r.id, r.consents, rv.column_id, rv.key_version, rv.sealed
             FROM records r LEFT JOIN record_values rv ON rv.record_id = r.id AND rv.column_id = ANY($2)
             WHERE r.id = ANY($1) AND r.vault_id = $3",
            &[&ids, &cols, &vault],
        )
        .await?
    {
        println!("{}", row.get::<_, String>(0));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let total: usize = env_or("BENCH_RECORDS", 100_000);
    let conc: usize = env_or("BENCH_CONCURRENCY", 4);
    let batches = total / 1000;
    let server = start_server(&[]).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let base = server.base.clone();
    let pid = server.child.id();
    post(
        &client,
        &format!("{base}/v1/vaults"),
        &json!({"name": "bench", "tables": [{"name": "customers", "columns": [
        {"name": "name", "type": "name"},
        {"name": "email", "type": "email", "tokenization": "deterministic"},
        {"name": "card", "type": "card_number", "tokenization": "format_preserving"},
        {"name": "ssn", "type": "ssn"},
        {"name": "dob", "type": "date_of_birth"}]}]}),
    )
    .await?;

    // Pre-build bodies so the load generator's own work is not measured.
    let bodies: Vec<Value> = (0..batches)
        .map(|b| json!({"records": (0..1000).map(|i| record(b * 1000 + i)).collect::<Vec<_>>()}))
        .collect();
    let bodies = Arc::new(bodies);
    let url = format!("{base}/v1/vaults/bench/tables/customers/records");
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cpu = CpuTimes::now(pid);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (client, url, bodies, next) =
            (client.clone(), url.clone(), bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut tokens = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= bodies.len() {
                    return Ok::<_, anyhow::Error>(tokens);
                }
                let out = post(&client, &url, &bodies[i]).await?;
                for r in out["records"].as_array().into_iter().flatten() {
                    for t in r["tokens"].as_object().into_iter().flatten() {
                        tokens.push(t.1.as_str().unwrap_or_default().to_string());
                    }
                }
            }
        }));
    }
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.extend(t.await??);
    }
    let insert_secs = started.elapsed().as_secs_f64();
    let insert_rate = (batches * 1000) as f64 / insert_secs;
    let insert_cpu = CpuTimes::now(pid).per_unit_since(&cpu, batches * 1000, "record");

    // Baseline: the same rows, plain, straight into the same PostgreSQL, same batches and concurrency.
    let setup = connect_pg(&server.dir).await?;
    setup
        .batch_execute("CREATE TABLE bench_plain (id uuid PRIMARY KEY, name text, email text, card text, ssn text, dob text, created_at timestamptz DEFAULT now())")
        .await?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cpu = CpuTimes::now(pid);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (bodies, next, dir) = (bodies.clone(), next.clone(), server.dir.clone());
        tasks.push(tokio::spawn(async move {
            let pg = connect_pg(&dir).await?;
            let stmt = pg
                .prepare("INSERT INTO bench_plain (id, name, email, card, ssn, dob) SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])")
                .await?;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= bodies.len() {
                    return Ok::<_, anyhow::Error>(());
                }
                let recs = bodies[i]["records"].as_array().cloned().unwrap_or_default();
                let col = |k: &str| recs.iter().map(|r| r["fields"][k].as_str().unwrap_or_default().to_string()).collect::<Vec<_>>();
                let ids: Vec<uuid::Uuid> = recs.iter().map(|_| uuid::Uuid::new_v4()).collect();
                pg.execute(&stmt, &[&ids, &col("name"), &col("email"), &col("card"), &col("ssn"), &col("dob")]).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let plain_rate = (batches * 1000) as f64 / started.elapsed().as_secs_f64();
    let plain_cpu = CpuTimes::now(pid).per_unit_since(&cpu, batches * 1000, "row");
    if std::env::var("BENCH_EXPLAIN").is_ok() {
        explain(&setup).await?;
    }
    // The insert phases leave their pages dirty in the page cache. If the kernel writes them
    // back during the read phases (dirty pages expire after 30 s), each answer there waits for
    // its audit commit's `fdatasync` behind that write-back: in one run the server's request log
    // showed all 32 requests in flight finishing together, 100-550 ms late, 15-31 s after the
    // load began. So they are written back before the reads are measured. (Stalls from other
    // tenants of a shared disk remain, and show in the tails.)
    tokio::task::spawn_blocking(|| std::process::Command::new("sync").status()).await??;

    // Detokenize in batches of 1000.
    let det_url = format!("{base}/v1/vaults/bench/detokenize");
    let chunks: Vec<Vec<String>> = tokens
        .chunks(1000)
        .take(200)
        .map(<[String]>::to_vec)
        .collect();
    let n_tokens: usize = chunks.iter().map(Vec::len).sum();
    let chunks = Arc::new(chunks);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cpu = CpuTimes::now(pid);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (client, url, chunks, next) = (
            client.clone(),
            det_url.clone(),
            chunks.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= chunks.len() {
                    return Ok::<_, anyhow::Error>(());
                }
                post(
                    &client,
                    &url,
                    &json!({"tokens": chunks[i], "redaction": "plain"}),
                )
                .await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let det_rate = n_tokens as f64 / started.elapsed().as_secs_f64();
    let det_cpu = CpuTimes::now(pid).per_unit_since(&cpu, n_tokens, "token");

    // Single-token detokenize, 32 concurrent clients: a warm-up round (each pool connection
    // prepares its statements), then the measured round.
    let per_client: usize = env_or("BENCH_SINGLE", 500);
    let tokens = Arc::new(tokens);
    // Each client is one keep-alive connection (`Caller`, the cheapest load generator we have);
    // bodies are built before their requests are timed.
    let mut callers = Vec::new();
    for _ in 0..32 {
        callers.push(Caller::connect(&base).await?);
    }
    let det_path = "/v1/vaults/bench/detokenize";
    let single_round = |callers: Vec<Caller>, per_client: usize| {
        let mut tasks = Vec::new();
        for (c, mut caller) in callers.into_iter().enumerate() {
            let bodies: Vec<_> = (0..per_client)
                .map(|i| {
                    let token = &tokens[(c * 7919 + i * 104_729) % tokens.len()];
                    Bytes::from(json!({"tokens": [token], "redaction": "masked"}).to_string())
                })
                .collect();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_client);
                for body in bodies {
                    let t0 = Instant::now();
                    let (status, answer) = caller.post(det_path, body).await?;
                    lat.push(t0.elapsed());
                    if status != StatusCode::OK {
                        bail!("{det_path}: {status}: {}", String::from_utf8_lossy(&answer));
                    }
                }
                Ok::<_, anyhow::Error>((caller, lat))
            }));
        }
        tasks
    };
    let mut warm = Vec::new();
    for t in single_round(callers, 50) {
        warm.push(t.await??.0);
    }
    let cpu = CpuTimes::now(pid);
    let started = Instant::now();
    let (mut lat, mut callers) = (Vec::new(), Vec::new());
    for t in single_round(warm, per_client) {
        let (caller, l) = t.await??;
        callers.push(caller);
        lat.extend(l);
    }
    let single_rate = lat.len() as f64 / started.elapsed().as_secs_f64();
    let single_cpu = CpuTimes::now(pid).per_unit_since(&cpu, lat.len(), "request");
    lat.sort();

    // The same requests open-loop: the 32 clients together offer a fixed rate (`common::paced`).
    // The closed loop above measures saturation, where p50 is the queue (32 ÷ throughput).
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..4096)
            .map(|i| {
                let token = &tokens[(i * 104_729) % tokens.len()];
                Bytes::from(json!({"tokens": [token], "redaction": "masked"}).to_string())
            })
            .collect(),
    );
    let secs: f64 = env_or("BENCH_PACED_SECS", 4.0);
    let mut paced_rows = Vec::new();
    for rate in rates("BENCH_RATES", &[1000.0, 2000.0, 3000.0]) {
        let (back, lat) = paced(
            callers,
            det_path,
            &bodies,
            rate,
            (rate * secs) as usize,
            false,
        )
        .await?;
        callers = back;
        paced_rows.push((rate, lat));
    }

    println!(
        "strongroom vault-bench ({total} records, {conc} concurrent batch requests, {} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "bulk insert (5 columns, batches of 1000):   {insert_rate:>10.0} records/s   (goal >= 20000)"
    );
    println!("    {insert_cpu}");
    println!("plain PostgreSQL insert, same rows/batches:  {plain_rate:>10.0} rows/s");
    println!("    {plain_cpu}");
    println!(
        "ratio vault / plain:                         {:>10.2}        (goal >= 0.5)",
        insert_rate / plain_rate
    );
    println!(
        "detokenize (batches of 1000, plain):         {det_rate:>10.0} tokens/s    (goal >= 100000)"
    );
    println!("    {det_cpu}");
    println!(
        "single-token detokenize, 32 clients:        p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({single_rate:.0} req/s; goal p99 < 5 ms)",
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!("    {single_cpu}");
    for (rate, lat) in paced_rows {
        println!(
            "  paced, 32 clients offering {rate:>5.0} req/s:    p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (goal p99 < 5 ms)",
            percentile(&lat, 0.50).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3,
            lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3
        );
    }
    drop(setup);
    drop(server);
    Ok(())
}
