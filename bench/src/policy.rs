//! `policy-bench`: the cost of authorization.
//!
//! 1. One Cedar decision against a set of 100 policies (entities built once), and the same with
//!    the per-decision entity store built as the gate builds it.
//! 2. Detokenize in batches of 1000 through the vault service, in process, on the server's own
//!    PostgreSQL: with the Cedar gate (per-token decisions, memoised per column and record facts,
//!    and per policy set across requests) once warm and once with a new policy set before every
//!    batch, and with authorization off, in the same run, and the ratios.
//!
//! Run: `cargo build --release -p strongroom-bench && target/release/policy-bench`

use anyhow::{Context, Result, anyhow};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use strongroom::config::Settings;
use strongroom::governance::accounts::Caller;
use strongroom::governance::engine::{EntityStore, Facts, Kind, PolicyEngine, action, uid};
use strongroom::startup::Application;
use strongroom::vault::access::OpenGate;
use strongroom::vault::{NewRecord, NewTable, NewVault, Redaction};

const ADMIN: &str = "bench-admin-key-0123456789abcdefghijklmnop";

/// 100 policies in the shape teams write: per role, per column, with row and purpose conditions.
fn hundred_policies() -> String {
    let mut src = String::from(
        "@id(\"admin-all\")\npermit (principal in Strongroom::Role::\"admin\", action, resource);\n",
    );
    for i in 0..99 {
        let col = ["name", "email", "card", "ssn", "region"][i % 5];
        src.push_str(&format!(
            "@id(\"p{i}\")\npermit (principal in Strongroom::Role::\"team{i}\", action == Strongroom::Action::\"detokenize\", resource == Strongroom::Column::\"bench/customers/{col}\")\n  when {{ context.redaction != \"plain\" && context.record.hasTag(\"region\") && context.record.getTag(\"region\") == \"R{}\" && context.purpose == \"support\" }};\n",
            i % 50
        ));
    }
    src
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len().saturating_sub(1)) as f64 * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

fn decisions() -> Result<()> {
    let engine = PolicyEngine::compile(&hundred_policies(), 1)
        .map_err(|p| anyhow!("policies do not validate: {p:?}"))?;
    let attrs = BTreeMap::from([("team".to_string(), "x".to_string())]);
    let rec_attrs = BTreeMap::from([("region".to_string(), "R7".to_string())]);
    let build = || {
        let mut store = EntityStore::default();
        let p = store.service_account("agent", &["team57".to_string()], &attrs);
        let c = store.column("bench", "customers", "card", "card_number");
        let r = store.record("bench", "customers", "facts", &rec_attrs, &[]);
        (p, c, r, store.build())
    };
    let (p, c, r, entities) = build();
    let roles = [uid(Kind::Role, "team57")];
    let whole = {
        let mut t = Vec::with_capacity(2000);
        for _ in 0..2000 {
            let s = Instant::now();
            engine.decide(
                &p,
                &action("detokenize"),
                &c,
                Facts {
                    purpose: "support",
                    granted: Some(false),
                    record: Some(r.clone()),
                    redaction: Some("masked"),
                }
                .context(),
                &entities,
            );
            t.push(s.elapsed());
        }
        t.sort();
        percentile(&t, 0.5)
    };
    let detok = action("detokenize");
    let facts = |r| Facts {
        purpose: "support",
        granted: Some(false),
        record: Some(r),
        redaction: Some("masked"),
    };
    let n = 20_000;
    let mut alone = Vec::with_capacity(n);
    let mut with_entities = Vec::with_capacity(n);
    let mut allowed = 0;
    for _ in 0..n {
        let t = Instant::now();
        let v = engine.decide_as(
            &p,
            &roles,
            &detok,
            &c,
            facts(r.clone()).context(),
            &entities,
        );
        alone.push(t.elapsed());
        allowed += usize::from(v.allowed);
        let t = Instant::now();
        let (p2, c2, r2, e2) = build();
        let v = engine.decide_as(&p2, &roles, &detok, &c2, facts(r2).context(), &e2);
        with_entities.push(t.elapsed());
        allowed += usize::from(v.allowed);
    }
    alone.sort();
    with_entities.sort();
    println!(
        "Cedar decision, 100 policies:                 p50 {:>6.1} µs  p99 {:>6.1} µs   (goal p50 < 50 µs)",
        percentile(&alone, 0.5).as_secs_f64() * 1e6,
        percentile(&alone, 0.99).as_secs_f64() * 1e6
    );
    println!(
        "  without slicing (all 100 evaluated):         p50 {:>6.1} µs",
        whole.as_secs_f64() * 1e6
    );
    println!(
        "  including building the request's entities:  p50 {:>6.1} µs  p99 {:>6.1} µs   ({allowed} of {} allowed)",
        percentile(&with_entities, 0.5).as_secs_f64() * 1e6,
        percentile(&with_entities, 0.99).as_secs_f64() * 1e6,
        2 * n
    );
    Ok(())
}

async fn detokenize() -> Result<()> {
    let dir = std::env::temp_dir().join(format!(
        "strongroom-policy-bench-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let mut settings = Settings::from_lookup(|_| None)?;
    settings.data_dir = dir.clone();
    settings.listen = "127.0.0.1:0".parse()?;
    settings.admin_key = Some(ADMIN.to_string().into());
    let app = Application::build(settings).await?;
    let (vault, gov) = (app.vault().clone(), app.governance().clone());
    let table: NewTable = serde_json::from_value(json!({"name": "customers", "columns": [
        {"name": "name", "type": "name"},
        {"name": "email", "type": "email"},
        {"name": "card", "type": "card_number"},
        {"name": "ssn", "type": "ssn"},
        {"name": "region", "type": "string", "policy_attribute": true}]}))?;
    vault
        .create_vault(NewVault {
            name: "bench".into(),
            tables: vec![table],
            template: None,
        })
        .await?;
    let mut tokens = Vec::new();
    for b in 0..20 {
        let records = (0..1000)
            .map(|i| {
                let n = b * 1000 + i;
                let mut fields = Map::new();
                fields.insert("name".into(), json!(format!("Customer {n}")));
                fields.insert("email".into(), json!(format!("c{n}@example.com")));
                fields.insert(
                    "ssn".into(),
                    json!(format!(
                        "{:03}-{:02}-{:04}",
                        100 + n % 500,
                        1 + n % 98,
                        1 + n % 9998
                    )),
                );
                fields.insert("region".into(), Value::from(format!("R{}", n % 50)));
                NewRecord {
                    fields,
                    consents: vec![],
                }
            })
            .collect();
        for r in vault
            .insert_records("bench", "customers", records, &OpenGate)
            .await?
        {
            tokens.extend(r.tokens.into_values());
        }
    }
    // Written as an admin (admin-all in the set keeps the author able to write policies).
    let author = Caller::principal("bench", "admin", "bench".into());
    gov.put_policies(&hundred_policies(), &author)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    // A caller whose roles match five of the policies (one column and region each).
    let roles = (0..5).map(|i| format!("team{i}")).collect();
    let (_, key) = gov
        .accounts
        .create("agent", roles, BTreeMap::new(), None)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let caller = gov
        .accounts
        .authenticate(&key.secret)
        .await
        .map_err(|e| anyhow!("{e}"))?
        .map_err(|_| anyhow!("the bench key was refused"))?;
    let batches: Vec<Vec<String>> = tokens.chunks(1000).map(<[String]>::to_vec).collect();
    let rate = |label: &str, secs: f64| {
        let r = (batches.len() * 1000) as f64 / secs;
        println!("{label:<46} {r:>10.0} tokens/s");
        r
    };
    // Warm both paths (statement caches, vault cache).
    vault
        .detokenize("bench", batches[0].clone(), Redaction::Masked, &OpenGate)
        .await?;
    let t = Instant::now();
    for b in &batches {
        vault
            .detokenize("bench", b.clone(), Redaction::Masked, &OpenGate)
            .await?;
    }
    let off = rate(
        "detokenize, batches of 1000, authorization off:",
        t.elapsed().as_secs_f64(),
    );
    // Decisions are memoised per policy set across requests: once warm, the batches repeat
    // decisions already taken. Cold: a new policy set (the same source) before every batch,
    // outside the timing, so every batch decides afresh.
    let mut warm = Duration::ZERO;
    let mut cold = Duration::ZERO;
    for (phase, total) in [("warm", &mut warm), ("cold", &mut cold)] {
        for b in &batches {
            if phase == "cold" {
                gov.put_policies(&hundred_policies(), &author)
                    .await
                    .map_err(|e| anyhow!("{e}"))?;
            }
            let gate = gov.gate(&caller, "support");
            let t = Instant::now();
            let results = vault
                .detokenize("bench", b.clone(), Redaction::Masked, &gate)
                .await?;
            *total += t.elapsed();
            if results.len() != b.len() {
                return Err(anyhow!("lost results"));
            }
        }
    }
    let on_warm = rate(
        "  with per-token checks, memoised decisions:",
        warm.as_secs_f64(),
    );
    let on = rate(
        "  with per-token checks, new policies per batch:",
        cold.as_secs_f64(),
    );
    println!(
        "  ratio on / off: {:.2} memoised, {:.2} new policy set per batch   (goal >= 50000 tokens/s with checks)",
        on_warm / off,
        on / off
    );
    // Serving for no time at all, then the orderly stop (PostgreSQL included).
    app.run_until(async {}).await?;
    std::fs::remove_dir_all(&dir).context("clean up")?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    println!(
        "strongroom policy-bench ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    decisions()?;
    detokenize().await
}
