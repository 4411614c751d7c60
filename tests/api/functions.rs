//! Functions through the real API: real components built from `functions-examples/`, real
//! wasmtime, real vault.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use strongroom_tests::{TestApp, assert_error, guest};

/// Deny by default applies to functions too: these tests let functions detokenize (their
/// manifests' grants still narrow it down to columns and levels).
const FUNCTIONS_MAY_DETOKENIZE: &str = "@id(\"functions-detokenize\")\npermit (principal is Strongroom::Function, action == Strongroom::Action::\"detokenize\", resource);";

async fn vault_with_dob(app: &TestApp) -> (String, String) {
    let (status, body) = app.policies(FUNCTIONS_MAY_DETOKENIZE).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let record = vault_with_record(
        app,
        json!({"name": "kyc", "tables": [{"name": "people", "columns": [
            {"name": "dob", "type": "date_of_birth"},
            {"name": "card", "type": "card_number", "tokenization": "format_preserving"}]}]}),
        json!({"dob": "1990-01-31", "card": "4111111111111111"}),
    )
    .await;
    let t = &record["tokens"];
    (
        t["dob"].as_str().unwrap().into(),
        t["card"].as_str().unwrap().into(),
    )
}

/// Creates the vault `schema` (one table) and stores one record of `fields` in it; returns the
/// stored record as the API answered it (`id`, `tokens`).
async fn vault_with_record(app: &TestApp, schema: Value, fields: Value) -> Value {
    let (status, body) = app.post("/v1/vaults", schema.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let path = format!(
        "/v1/vaults/{}/tables/{}/records",
        schema["name"].as_str().unwrap(),
        schema["tables"][0]["name"].as_str().unwrap()
    );
    let (status, body) = app
        .post(&path, json!({"records": [{"fields": fields}]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["records"][0].clone()
}

fn manifest(name: &str, grants: Value, limits: Value) -> Value {
    json!({"name": name, "description": "test", "grants": grants, "limits": limits})
}

/// Uploads `component` as `name`, granted plain reveals of `columns` of `kyc/people`.
async fn upload_granted(app: &TestApp, name: &str, columns: &[&str], component: &str) -> Value {
    upload_granted_with(app, name, columns, component, json!({})).await
}

/// [`upload_granted`] with the manifest's `limits`.
async fn upload_granted_with(
    app: &TestApp,
    name: &str,
    columns: &[&str],
    component: &str,
    limits: Value,
) -> Value {
    let grant =
        json!([{"vault": "kyc", "table": "people", "columns": columns, "redaction": "plain"}]);
    let (status, up) = app
        .upload_function(manifest(name, grant, limits), guest(component), None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{up}");
    up
}

/// The function ran and answered `forbidden`: the host refused what it asked for.
fn assert_refused(out: &Value) {
    assert_eq!(out["error"]["kind"], "function_error", "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("forbidden")),
        "{out}"
    );
}

async fn invoke(app: &TestApp, name: &str, body: Value) -> Value {
    let (status, out) = app
        .post(
            &format!("/v1/functions/{name}/invoke"),
            json!({"message": {
            "method": "POST", "url": "https://kyc.example/v1/check",
            "headers": [["content-type", "application/json"]], "body": body.to_string()}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    out
}

#[tokio::test]
async fn date_split_detokenizes_inside_the_sandbox_only_what_it_was_granted() {
    let app = TestApp::spawn().await;
    let (dob, _) = vault_with_dob(&app).await;
    let up = upload_granted_with(
        &app,
        "date-split",
        &["dob"],
        "date_split",
        json!({"memory_mib": 32, "timeout_ms": 500}),
    )
    .await;
    assert!(up["version"].as_str().unwrap().starts_with("sha256:"));
    assert!(
        up["imports"]
            .to_string()
            .contains("strongroom:function/vault"),
        "{up}"
    );
    assert!(
        up["exports"]
            .to_string()
            .contains("strongroom:function/hooks"),
        "{up}"
    );

    let out = invoke(
        &app,
        "date-split",
        json!({"name": "Ada", "date_of_birth": dob}),
    )
    .await;
    assert!(out.get("error").is_none(), "{out}");
    let body: Value = serde_json::from_str(out["message"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["date_of_birth_day"], 31, "{body}");
    assert_eq!(body["date_of_birth_month"], 1);
    assert_eq!(body["date_of_birth_year"], 1990);
    assert!(body.get("date_of_birth").is_none());
    assert!(out["duration_us"].as_u64().is_some());

    // audited with the function's name and version, never the value
    let (_, audit) = app.get("/v1/audit?action=invoke_function").await;
    let event = &audit["events"][0];
    assert_eq!(
        event["function"],
        format!("date-split@{}", up["version"].as_str().unwrap())
    );
    assert_eq!(event["counts"]["revealed_in_function"], 1, "{event}");
    assert!(!audit.to_string().contains("1990-01-31"));

    // a column outside the grant is not revealed (the function answers forbidden)
    upload_granted(&app, "date-split-2", &["card"], "date_split").await;
    let out = invoke(&app, "date-split-2", json!({"date_of_birth": dob})).await;
    assert_refused(&out);

    // and Cedar has the last word: a forbid on functions stops the granted one too
    let (status, body) = app
        .policies(&format!("{FUNCTIONS_MAY_DETOKENIZE}\n@id(\"no-functions\")\nforbid (principal is Strongroom::Function, action == Strongroom::Action::\"detokenize\", resource);"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let out = invoke(&app, "date-split", json!({"date_of_birth": dob})).await;
    assert_refused(&out);
}

/// Grants are issued to service accounts: a function that shares an account's name does not
/// inherit the records granted to that account.
#[tokio::test]
async fn a_function_named_like_a_service_account_does_not_share_its_grants() {
    let app = TestApp::spawn().await;
    vault_with_dob(&app).await;
    let (status, body) = app
        .policies("@id(\"granted-only\")\npermit (principal, action == Strongroom::Action::\"detokenize\", resource) when { context.granted };")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app
        .post(
            "/v1/vaults/kyc/tables/people/records",
            json!({"records": [{"fields": {"dob": "1985-06-15"}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["records"][0]["id"].as_str().unwrap().to_string();
    let dob = body["records"][0]["tokens"]["dob"]
        .as_str()
        .unwrap()
        .to_string();
    app.service_account("twin", &["support"]).await;
    let (status, g) = app
        .post(
            "/v1/grants",
            json!({"principal": "twin", "expires_in_seconds": 600,
                   "records": [{"vault": "kyc", "table": "people", "id": id}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{g}");
    upload_granted(&app, "twin", &["dob"], "date_split").await;
    let out = invoke(&app, "twin", json!({"date_of_birth": dob})).await;
    assert_refused(&out);
}

fn charge(card: &str) -> Value {
    json!({"amount": 1000, "currency": "usd",
        "card": {"number": card, "exp_month": 12, "exp_year": 2030, "cvc": "123"}})
}

/// A test run reveals only what its caller may read: with the card guardrail on, not even the
/// admin reads a card number in plain, so neither does the function it invokes.
#[tokio::test]
async fn the_card_guardrail_holds_in_a_test_run() {
    let app = TestApp::spawn().await;
    let (_, card) = vault_with_dob(&app).await;
    upload_granted(&app, "stripe-reshape", &["card"], "payment_reshape").await;
    let out = invoke(&app, "stripe-reshape", charge(&card)).await;
    assert_refused(&out);
    assert!(!out.to_string().contains("4111111111111111"));
}

#[tokio::test]
async fn plaintext_never_returns_to_the_caller() {
    let app = TestApp::spawn_with(|s| s.allow_plaintext_cards = true).await;
    let (_, card) = vault_with_dob(&app).await;
    upload_granted(&app, "stripe-reshape", &["card"], "payment_reshape").await;
    let out = invoke(&app, "stripe-reshape", charge(&card)).await;
    // the reshaped request holds the card number: fine for the processor, not for this caller
    assert_eq!(out["error"]["kind"], "egress_blocked", "{out}");
    assert!(out.get("message").is_none());
    assert!(!out.to_string().contains("4111111111111111"));
    let (_, audit) = app.get("/v1/audit?action=invoke_function").await;
    assert_eq!(audit["events"][0]["counts"]["egress_blocked"], 1, "{audit}");
}

#[tokio::test]
async fn upload_refuses_what_is_not_a_proper_function() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .upload_function(
            manifest("garbage", json!([]), json!({})),
            b"\0asm garbage, not a component".to_vec(),
            None,
        )
        .await;
    let err = assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("not a valid WebAssembly component")
    );
    let (status, body) = app
        .upload_function(
            manifest("sneaky", json!([]), json!({})),
            guest("hostile_forbidden_import"),
            None,
        )
        .await;
    let err = assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        err["message"].as_str().unwrap().contains("wasi:sockets"),
        "{err}"
    );
    let bad_grant =
        json!([{"vault": "nope", "table": "x", "columns": ["y"], "redaction": "plain"}]);
    for m in [
        manifest("Bad Name", json!([]), json!({})),
        manifest("t", bad_grant, json!({})),
        manifest("t", json!([]), json!({"memory_mib": 100000})),
        // A NUL reached PostgreSQL and was a 500.
        json!({"name": "t", "description": "a\u{0}b", "grants": [], "limits": {}}),
        manifest(
            "t",
            json!([{"vault": "v\u{0}", "table": "x", "columns": ["y"], "redaction": "plain"}]),
            json!({}),
        ),
        manifest(
            "t",
            json!([{"vault": "v", "table": "x", "columns": ["y\u{0}"], "redaction": "plain"}]),
            json!({}),
        ),
    ] {
        let (status, body) = app.upload_function(m, guest("hostile_trivial"), None).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let (_, list) = app.get("/v1/functions").await;
    assert_eq!(list["functions"], json!([]), "nothing was stored");
}

#[tokio::test]
async fn versions_activate_roll_back_and_survive_a_restart() {
    let mut app = TestApp::spawn().await;
    let echo = |component: &'static str, existing: Option<&'static str>| {
        let app = &app;
        async move {
            app.upload_function(
                manifest("echo", json!([]), json!({})),
                guest(component),
                existing,
            )
            .await
        }
    };
    let (status, first) = echo("hostile_trivial", None).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, body) = echo("hostile_trivial", None).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, second) = echo("hostile_panic", Some("echo")).await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    let out = invoke(&app, "echo", json!({"x": 1})).await;
    assert_eq!(
        out["error"]["trap"], "unreachable",
        "the new version is active: {out}"
    );
    let (status, _) = app
        .post(
            "/v1/functions/echo/activate",
            json!({"version": first["version"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let out = invoke(&app, "echo", json!({"x": 1})).await;
    assert_eq!(out["message"]["body"], "{\"x\":1}", "{out}");
    let (_, f) = app.get("/v1/functions/echo").await;
    assert_eq!(f["versions"].as_array().unwrap().len(), 2);
    assert_eq!(f["active_version"], first["version"]);
    assert_eq!(f["invocations"], 2);
    let (status, _) = app
        .post(
            "/v1/functions/echo/activate",
            json!({"version": format!("sha256:{}", "0".repeat(64))}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Not a version at all (a NUL reached PostgreSQL and was a 500): 400.
    for bad in ["sha256:00", "\u{0}", "SHA256:x"] {
        let (status, body) = app
            .post("/v1/functions/echo/activate", json!({"version": bad}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {body}");
    }

    // a restart loads the compiled code from the disk cache
    let cached = std::fs::read_dir(app.data_dir.join("functions-cache"))
        .unwrap()
        .count();
    assert!(cached >= 2, "{cached} cached artifacts");
    let mut again = app.restart_with(|_| {}).await;
    let out = invoke(&again, "echo", json!({"y": 2})).await;
    assert_eq!(out["message"]["body"], "{\"y\":2}", "{out}");
    let (status, _) = again.delete("/v1/functions/echo").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        again.count("function_artifacts").await,
        0,
        "its hashes went too"
    );
    let (status, _) = again
        .post(
            "/v1/functions/echo/invoke",
            json!({"message": {"method": "GET", "url": "/"}}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    again.stop().await;
}

#[tokio::test]
async fn hostile_components_are_contained() {
    let app = TestApp::spawn().await;
    let up = |name: &'static str, component: &'static str, limits: Value| {
        let app = &app;
        async move {
            let (status, body) = app
                .upload_function(manifest(name, json!([]), limits), guest(component), None)
                .await;
            assert_eq!(status, StatusCode::CREATED, "{name}: {body}");
        }
    };
    up("spin", "hostile_infinite_loop", json!({"timeout_ms": 200})).await;
    up("bomb", "hostile_memory_bomb", json!({"memory_mib": 16})).await;
    up("deep", "hostile_deep_recursion", json!({})).await;
    up("boom", "hostile_panic", json!({})).await;
    up(
        "flood",
        "hostile_huge_output",
        json!({"memory_mib": 128, "max_output_bytes": 1048576, "timeout_ms": 2000}),
    )
    .await;
    up("ok", "hostile_trivial", json!({})).await;

    // the infinite loop is stopped at its deadline while others are served
    let started = Instant::now();
    let spin = invoke(&app, "spin", json!({}));
    let others = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t = Instant::now();
        let out = invoke(&app, "ok", json!({"still": "served"})).await;
        let (status, _) = app.get("/v1/vaults").await;
        assert_eq!(status, StatusCode::OK);
        (out, t.elapsed())
    };
    let (spun, (ok, ok_took)) = tokio::join!(spin, others);
    assert_eq!(spun["error"]["kind"], "trap", "{spun}");
    assert_eq!(spun["error"]["trap"], "interrupt", "{spun}");
    assert!(
        started.elapsed() < Duration::from_millis(200 + 1500),
        "{:?}",
        started.elapsed()
    );
    assert!(ok.get("error").is_none(), "{ok}");
    assert!(ok_took < Duration::from_millis(1000), "{ok_took:?}");

    let bomb = invoke(&app, "bomb", json!({})).await;
    assert_eq!(bomb["error"]["trap"], "memory_limit", "{bomb}");
    let deep = invoke(&app, "deep", json!({})).await;
    // a Rust guest's shadow stack lives in linear memory: its overflow is an out-of-bounds access
    let trap = deep["error"]["trap"].as_str().unwrap_or_default();
    assert!(
        ["stack_overflow", "memory_out_of_bounds"].contains(&trap),
        "{deep}"
    );
    let boom = invoke(&app, "boom", json!({})).await;
    assert_eq!(boom["error"]["trap"], "unreachable", "{boom}");
    let names = boom["error"]["functions"].to_string();
    assert!(
        names.contains("on_request") || names.contains("panic"),
        "guest function names: {boom}"
    );
    assert!(!names.contains("strongroom::"), "no host internals: {boom}");
    let flood = invoke(&app, "flood", json!({})).await;
    assert_eq!(flood["error"]["trap"], "output_limit", "{flood}");
    // and the sandbox still works afterwards
    let ok = invoke(&app, "ok", json!({"after": true})).await;
    assert_eq!(ok["message"]["body"], "{\"after\":true}", "{ok}");
}

/// A vault with a stored contract, for `file-extract`; returns the record id.
async fn vault_with_contract(app: &TestApp) -> String {
    vault_with_file(
        app,
        "contract.pdf",
        "application/pdf",
        "JVBERi0xLjcgY29udHJhY3Q=",
    )
    .await
}

/// The vault `legal` with one file (column `contracts.pdf`) in one record; returns its id.
async fn vault_with_file(
    app: &TestApp,
    name: &str,
    media_type: &str,
    content_base64: &str,
) -> String {
    let record = vault_with_record(
        app,
        json!({"name": "legal", "tables": [{"name": "contracts", "columns": [
            {"name": "pdf", "type": "file"}]}]}),
        json!({"pdf": {"name": name, "media_type": media_type, "content_base64": content_base64}}),
    )
    .await;
    record["id"].as_str().unwrap().to_string()
}

fn envelope_request(record: &str) -> Value {
    json!({"document": {"vault": "legal", "table": "contracts", "record": record, "column": "pdf"},
           "signer": {"name": "Ada", "email": "ada@example.test"}, "subject": "Please sign"})
}

#[tokio::test]
async fn file_extract_reads_only_granted_files_of_the_message_at_hand() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .policies(
            FUNCTIONS_MAY_DETOKENIZE
                .replace(
                    "action == Strongroom::Action::\"detokenize\"",
                    "action in [Strongroom::Action::\"detokenize\", Strongroom::Action::\"read\"]",
                )
                .as_str(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let record = vault_with_contract(&app).await;
    let grant =
        json!([{"vault": "legal", "table": "contracts", "columns": ["pdf"], "redaction": "plain"}]);
    let (status, up) = app
        .upload_function(
            manifest("file-extract", grant, json!({"memory_mib": 64})),
            guest("file_extract"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{up}");

    // The envelope holds the document: fine for the e-signature API, never for this caller.
    // (The connection tests see it arrive upstream.)
    let out = invoke(&app, "file-extract", envelope_request(&record)).await;
    assert_eq!(out["error"]["kind"], "egress_blocked", "{out}");
    assert!(!out.to_string().contains("JVBERi0xLjcgY29udHJhY3Q="));
    assert!(
        out["logs"]
            .to_string()
            .contains("attached 17 bytes of application/pdf"),
        "{out}"
    );
    let (_, audit) = app.get("/v1/audit?action=invoke_function").await;
    let event = &audit["events"][0];
    assert_eq!(event["counts"]["files_read_in_function"], 1, "{event}");
    assert!(event["records"].to_string().contains(&record), "{event}");

    // without the column in its grant, the function is refused before the vault is asked
    let (status, _) = app
        .upload_function(
            manifest("file-extract-ungranted", json!([]), json!({})),
            guest("file_extract"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let out = invoke(&app, "file-extract-ungranted", envelope_request(&record)).await;
    assert_refused(&out);
}

#[tokio::test]
async fn the_response_hook_cannot_reveal_anything() {
    let app = TestApp::spawn().await;
    let (dob, _) = vault_with_dob(&app).await;
    let record = vault_with_contract(&app).await;
    let grant = json!([
        {"vault": "kyc", "table": "people", "columns": ["dob"], "redaction": "plain"},
        {"vault": "legal", "table": "contracts", "columns": ["pdf"], "redaction": "plain"}]);
    let (status, up) = app
        .upload_function(
            manifest("reveal", grant, json!({})),
            guest("hostile_response_reveal"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{up}");
    for body in [
        json!({"token": dob}),
        json!({"file": {"vault": "legal", "table": "contracts", "record": record, "column": "pdf"}}),
    ] {
        let (status, out) = app
            .post(
                "/v1/functions/reveal/invoke",
                json!({"hook": "response", "message": {
                "method": "POST", "url": "https://kyc.example/v1/check", "status": 200,
                "headers": [["content-type", "application/json"]], "body": body.to_string()}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{out}");
        assert_eq!(out["error"]["kind"], "function_error", "{out}");
        assert!(
            out["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not available in on-response"),
            "{out}"
        );
        assert!(!out.to_string().contains("1990-01-31"), "{out}");
    }
}

/// Function management answers 503 `unavailable`, as the rest of the API does, when a
/// database statement times out: here a new version waits for the function's row, which
/// another transaction holds. Once the row is free, the same upload goes through.
#[tokio::test]
async fn a_stalled_statement_is_answered_503() {
    let app = TestApp::spawn_with(|s| s.statement_timeout_ms = 400).await;
    let (status, up) = app
        .upload_function(
            manifest("held", json!([]), json!({})),
            guest("hostile_trivial"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{up}");
    let db = app.db().await;
    db.batch_execute("BEGIN; SELECT 1 FROM functions WHERE name = 'held' FOR UPDATE")
        .await
        .unwrap();
    let new_version = || {
        app.upload_function(
            manifest("held", json!([]), json!({})),
            guest("date_split"),
            Some("held"),
        )
    };
    let started = Instant::now();
    let (status, body) = new_version().await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        started.elapsed()
    );
    db.batch_execute("COMMIT").await.unwrap();
    let (status, body) = new_version().await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// Starts a test run of `name` on its own task (so many can be in flight); the task answers
/// the status, the body and how long the run took.
fn invoke_spawned(
    app: &TestApp,
    name: &str,
    headers: Value,
) -> tokio::task::JoinHandle<(StatusCode, Value, Duration)> {
    let (client, url) = (
        app.client.clone(),
        format!("{}/v1/functions/{name}/invoke", app.base),
    );
    tokio::spawn(async move {
        let started = Instant::now();
        let resp = client
            .post(url)
            .bearer_auth(strongroom_tests::ADMIN_KEY)
            .json(
                &json!({"message": {"method": "POST", "url": "https://x.example/",
                "headers": headers, "body": "{}"}}),
            )
            .send()
            .await
            .expect("request");
        let status = resp.status();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body, started.elapsed())
    })
}

/// Uploads `sleeper` (hostile_sleep, with `timeout_ms`) and `ok` (hostile_trivial).
async fn sleeper_and_trivial(app: &TestApp, timeout_ms: u64) {
    for (name, component, limits) in [
        (
            "sleeper",
            "hostile_sleep",
            json!({"timeout_ms": timeout_ms}),
        ),
        ("ok", "hostile_trivial", json!({})),
    ] {
        let (status, body) = app
            .upload_function(manifest(name, json!([]), limits), guest(component), None)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}

/// A guest blocked in a host call (here WASI's clock: `std::thread::sleep`) runs no wasm code,
/// so the epoch never stops it: the function's deadline bounds the whole call all the same.
/// More sleepers than the sandbox has instances each get the timeout, every instance comes
/// back, and other functions are served meanwhile.
#[tokio::test]
async fn a_guest_asleep_in_a_host_call_is_stopped_at_its_deadline() {
    let app = TestApp::spawn().await;
    sleeper_and_trivial(&app, 200).await;
    let started = Instant::now();
    let sleepers: Vec<_> = (0..70)
        .map(|_| invoke_spawned(&app, "sleeper", json!([])))
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let ok = invoke(&app, "ok", json!({"still": "served"})).await;
    assert!(ok.get("error").is_none(), "{ok}");
    for s in sleepers {
        let (status, out, took) = s.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{out}");
        assert_eq!(out["error"]["kind"], "trap", "{out}");
        assert_eq!(out["error"]["trap"], "interrupt", "{out}");
        assert!(
            took < Duration::from_millis(1500),
            "answered after {took:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // every instance is free again: as many runs as the pool holds go through at once
    let again: Vec<_> = (0..64)
        .map(|_| invoke_spawned(&app, "ok", json!([])))
        .collect();
    for a in again {
        let (status, out, _) = a.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{out}");
        assert!(out.get("error").is_none(), "{out}");
    }
}

/// When every sandbox instance is busy, a test run waits a little and is then answered 503
/// `unavailable` (not a trap, not a 502).
#[tokio::test]
async fn every_instance_busy_is_answered_503() {
    let app = TestApp::spawn().await;
    sleeper_and_trivial(&app, 4000).await;
    let sleepers: Vec<_> = (0..64)
        .map(|_| invoke_spawned(&app, "sleeper", json!([["x-sleep-ms", "3500"]])))
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (status, body, took) = invoke_spawned(&app, "ok", json!([])).await.unwrap();
    let err = assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    assert!(err["message"].as_str().unwrap().contains("busy"), "{err}");
    assert!(took < Duration::from_millis(2000), "{took:?}");
    for s in sleepers {
        let (status, out, _) = s.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{out}");
        assert!(out.get("error").is_none(), "{out}");
    }
    let ok = invoke(&app, "ok", json!({"after": true})).await;
    assert!(ok.get("error").is_none(), "{ok}");
}

/// A test run answers its caller, so each reveal the function makes must be allowed to the
/// caller too: a caller who may invoke functions but not detokenize gets nothing derived from
/// the plaintext (the function is refused inside the sandbox); once allowed, it does.
#[tokio::test]
async fn a_test_run_reveals_only_what_its_caller_may_read() {
    let app = TestApp::spawn().await;
    let (dob, _) = vault_with_dob(&app).await;
    let key = app.service_account("tester", &["support"]).await;
    let may_invoke = "@id(\"tester-invokes\")\npermit (principal == Strongroom::ServiceAccount::\"tester\", action == Strongroom::Action::\"invoke_function\", resource);";
    let (status, body) = app
        .policies(&format!("{FUNCTIONS_MAY_DETOKENIZE}\n{may_invoke}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    upload_granted(&app, "date-split", &["dob"], "date_split").await;
    let run = |key: String| {
        let app = &app;
        let dob = dob.clone();
        async move {
            app.call_as(
                Some(&key),
                reqwest::Method::POST,
                "/v1/functions/date-split/invoke",
                Some(
                    json!({"message": {"method": "POST", "url": "https://kyc.example/v1/check",
                    "headers": [["content-type", "application/json"]],
                    "body": json!({"date_of_birth": dob}).to_string()}}),
                ),
            )
            .await
        }
    };
    let (status, out) = run(key.clone()).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_refused(&out);
    let text = out.to_string();
    for part in ["1990", "date_of_birth_day", "date_of_birth_year"] {
        assert!(!text.contains(part), "{part}: {out}");
    }
    // the admin may read it: the same run gives it the parts
    let (status, out) = run(strongroom_tests::ADMIN_KEY.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert!(out["message"]["body"].to_string().contains("1990"), "{out}");
    // and so does the tester once policies let it detokenize the column itself
    let (status, body) = app
        .policies(&format!(
            "{FUNCTIONS_MAY_DETOKENIZE}\n{may_invoke}\n@id(\"tester-reads\")\npermit (principal == Strongroom::ServiceAccount::\"tester\", action == Strongroom::Action::\"detokenize\", resource);"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, out) = run(key).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert!(out["message"]["body"].to_string().contains("1990"), "{out}");
}

/// A file that is not text, returned raw as the body, is caught too: the egress check
/// compares bytes with bytes.
#[tokio::test]
async fn raw_file_bytes_do_not_return_to_the_caller() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .policies("@id(\"functions-read\")\npermit (principal is Strongroom::Function, action == Strongroom::Action::\"read\", resource);")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    use base64::Engine;
    let bytes: Vec<u8> = (0..64u8)
        .map(|i| 0x80 | i)
        .chain([0xff, 0xfe, 0, 1])
        .collect();
    assert!(std::str::from_utf8(&bytes).is_err());
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let record = vault_with_file(&app, "scan.bin", "application/octet-stream", &b64).await;
    let grant =
        json!([{"vault": "legal", "table": "contracts", "columns": ["pdf"], "redaction": "plain"}]);
    let (status, up) = app
        .upload_function(
            manifest("raw", grant, json!({})),
            guest("hostile_raw_file"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{up}");
    let out = invoke(
        &app,
        "raw",
        json!({"vault": "legal", "table": "contracts", "record": record, "column": "pdf"}),
    )
    .await;
    assert_eq!(out["error"]["kind"], "egress_blocked", "{out}");
    assert!(out.get("message").is_none(), "{out}");
    assert!(!out.to_string().contains(&b64), "{out}");
}

/// A revealed value handed back percent-encoded or JSON-escaped is caught as well: the egress
/// check of a test run decodes what it searches, as the gateway's does.
#[tokio::test]
async fn encoded_values_do_not_return_to_the_caller() {
    let app = TestApp::spawn().await;
    let (status, body) = app.policies(FUNCTIONS_MAY_DETOKENIZE).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let record = vault_with_record(
        &app,
        json!({"name": "kyc", "tables": [{"name": "people", "columns": [
            {"name": "email", "type": "email"}]}]}),
        json!({"email": "grace.hopper@navy.example"}),
    )
    .await;
    let token = record["tokens"]["email"].as_str().unwrap().to_string();
    upload_granted(&app, "encoded", &["email"], "hostile_encoded_reveal").await;
    for encode in ["percent", "json"] {
        let out = invoke(&app, "encoded", json!({"token": token, "encode": encode})).await;
        assert_eq!(out["error"]["kind"], "egress_blocked", "{encode}: {out}");
        assert!(out.get("message").is_none(), "{encode}: {out}");
        let text = out.to_string().to_lowercase();
        assert!(!text.contains("%67%72%61"), "{encode}: {out}");
        assert!(!text.contains("\\u0067"), "{encode}: {out}");
    }
}

/// Nothing of one invocation is in the memory of the next: a guest that plants a value in its
/// heap and in a page it grows finds its own copies, and the invocations after it find none.
#[tokio::test]
async fn an_invocation_finds_nothing_an_earlier_one_left_in_memory() {
    let app = TestApp::spawn().await;
    let (status, up) = app
        .upload_function(
            manifest("residue", json!([]), json!({})),
            guest("hostile_residue"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{up}");
    let found = |out: Value| -> u64 {
        let body: Value = serde_json::from_str(out["message"]["body"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{e}: {out}"));
        body["found"].as_u64().unwrap()
    };
    let secret = format!("residue-{}", uuid::Uuid::new_v4().simple());
    let planted = found(invoke(&app, "residue", json!({"plant": secret})).await);
    assert!(planted >= 65, "the scan saw {planted} of its own 65 copies");
    let reversed: String = secret.chars().rev().collect();
    for _ in 0..3 {
        let left = found(invoke(&app, "residue", json!({"seek": reversed})).await);
        assert_eq!(left, 0, "an invocation found an earlier one's value");
    }
}

/// `vault.tokenize` stores only into a column the manifest grants, whatever Cedar allows.
#[tokio::test]
async fn tokenize_needs_a_granted_column() {
    let app = TestApp::spawn().await;
    vault_with_dob(&app).await;
    let (status, body) = app
        .policies("@id(\"functions-tokenize\")\npermit (principal is Strongroom::Function, action == Strongroom::Action::\"tokenize\", resource);")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    upload_granted(&app, "store", &["dob"], "hostile_tokenize_anywhere").await;
    let into = |column: &str, value: &str| json!({"vault": "kyc", "table": "people", "column": column, "value": value});
    let out = invoke(&app, "store", into("dob", "1991-02-03")).await;
    assert!(out.get("error").is_none(), "{out}");
    assert!(
        out["message"]["body"].to_string().contains("token"),
        "{out}"
    );
    let out = invoke(&app, "store", into("card", "4012888888881881")).await;
    assert_refused(&out);
}

/// A version never changes: the same component with the same manifest is the same version
/// again; with another manifest it is refused, and the stored one keeps its grants and limits.
#[tokio::test]
async fn a_stored_version_cannot_change_its_manifest() {
    let app = TestApp::spawn().await;
    let m = |limits: Value| manifest("echo", json!([]), limits);
    let (status, first) = app
        .upload_function(
            m(json!({"timeout_ms": 300})),
            guest("hostile_trivial"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, again) = app
        .upload_function(
            m(json!({"timeout_ms": 300})),
            guest("hostile_trivial"),
            Some("echo"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["version"], first["version"]);
    assert_eq!(again["created_at"], first["created_at"]);
    let (status, body) = app
        .upload_function(
            m(json!({"timeout_ms": 9000})),
            guest("hostile_trivial"),
            Some("echo"),
        )
        .await;
    let err = assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("another manifest"),
        "{err}"
    );
    let (_, f) = app.get("/v1/functions/echo").await;
    assert_eq!(f["versions"].as_array().unwrap().len(), 1, "{f}");
    assert_eq!(
        f["versions"][0]["manifest"]["limits"]["timeout_ms"], 300,
        "{f}"
    );
}

/// What a guest can count up is capped: log lines (empty ones too) are cut at 1,000 and the
/// rest counted, stdout past the log's limit is dropped without failing the guest, and vault
/// calls past the invocation's quota fail with `quota-exceeded`.
#[tokio::test]
async fn log_lines_output_and_vault_calls_are_capped() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .upload_function(
            manifest("greedy", json!([]), json!({"timeout_ms": 5000})),
            guest("hostile_greedy"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let out = invoke(&app, "greedy", json!({})).await;
    assert!(out.get("error").is_none(), "{out}");
    let reply: Value = serde_json::from_str(out["message"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(reply["calls"], 1000, "{reply}");
    assert_eq!(reply["error"], "quota-exceeded", "{reply}");
    let logs = out["logs"].as_array().unwrap();
    assert!(logs.len() <= 1001, "{} lines", logs.len());
    let last = logs.last().unwrap()["message"].as_str().unwrap();
    assert!(last.contains("log lines were dropped"), "{last}");
}

/// The revealed-bytes quota holds for a single call too: one `detokenize` whose values together
/// pass it is refused (`quota-exceeded`), not answered and counted afterwards. (Before, a call
/// just under it took minutes: the guard searched every log line for each copy.)
#[tokio::test]
async fn one_vault_call_cannot_reveal_past_the_quota() {
    let app = TestApp::spawn().await;
    let (status, body) = app.policies(FUNCTIONS_MAY_DETOKENIZE).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // 1,000 copies of a 34,000-byte value: 34 MB, past the 32 MiB quota.
    let record = vault_with_record(
        &app,
        json!({"name": "kyc", "tables": [{"name": "people", "columns": [
            {"name": "note", "type": "string"}]}]}),
        json!({"note": "n".repeat(34_000)}),
    )
    .await;
    let token = record["tokens"]["note"].as_str().unwrap().to_string();
    let limits = json!({"timeout_ms": 5000, "memory_mib": 128});
    upload_granted_with(&app, "greedy", &["note"], "hostile_greedy", limits).await;
    let bulk = |out: Value| {
        assert!(out.get("error").is_none(), "{out}");
        let reply: Value = serde_json::from_str(out["message"]["body"].as_str().unwrap()).unwrap();
        reply["bulk"].clone()
    };
    // Under the quota the values are answered (and the guard checks each distinct value once:
    // the 1,000 log lines after it are not each searched for 900 copies).
    let out = invoke(&app, "greedy", json!({"tokens": vec![token.clone(); 900]})).await;
    assert_eq!(bulk(out), "revealed 900");
    let out = invoke(&app, "greedy", json!({"tokens": vec![token; 1000]})).await;
    assert_eq!(bulk(out), "quota-exceeded");
}

/// The compiled-code cache is the server's alone (0700), and a cached artifact is loaded only
/// if it is the one the server wrote for that component: another function's artifact copied
/// over it (valid code for this engine) is ignored and the component compiled again.
#[tokio::test]
async fn a_swapped_cache_artifact_is_not_loaded() {
    use std::os::unix::fs::PermissionsExt;
    let mut app = TestApp::spawn().await;
    let mut versions = Vec::new();
    for (name, component) in [("echo", "hostile_trivial"), ("boom", "hostile_panic")] {
        let (status, up) = app
            .upload_function(manifest(name, json!([]), json!({})), guest(component), None)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{up}");
        versions.push(
            up["version"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:")
                .to_string(),
        );
    }
    let cache = app.data_dir.join("functions-cache");
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    let artifact = |hex: &str| {
        std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(hex))
            .unwrap_or_else(|| panic!("no artifact for {hex}"))
    };
    let (echo, boom) = (artifact(&versions[0]), artifact(&versions[1]));
    app.stop().await;
    std::fs::copy(&boom, &echo).unwrap();
    let mut again = app.start_again(|_| {}).await;
    let out = invoke(&again, "echo", json!({"y": 2})).await;
    assert!(
        out.get("error").is_none(),
        "the panicking code was loaded: {out}"
    );
    assert_eq!(out["message"]["body"], "{\"y\":2}", "{out}");
    again.stop().await;
}
