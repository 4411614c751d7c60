use crate::luhn;
use reqwest::StatusCode;
use serde_json::{Value, json};
use strongroom_tests::{TestApp, assert_error};

const RECORDS: &str = "/v1/vaults/payments/tables/customers/records";

fn ada() -> Value {
    json!({"name": "Ada Lovelace", "email": "Ada@Example.com", "card_number": "4111 1111 1111 1111",
           "ssn": "123-45-6789", "dob": "1990-05-17", "region": "CA"})
}

async fn insert(app: &TestApp, fields: Value) -> Value {
    let (status, body) = app
        .post(RECORDS, json!({"records": [{"fields": fields}]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["records"][0].clone()
}

#[tokio::test]
async fn insert_returns_tokens_and_reads_back_at_each_level() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let rec = insert(&app, ada()).await;
    let id = rec["id"].as_str().unwrap();
    let tokens = rec["tokens"].as_object().unwrap();
    for col in ["name", "email", "card_number", "ssn", "dob", "region"] {
        assert!(tokens.contains_key(col), "{col}: {rec}");
    }
    let card = tokens["card_number"].as_str().unwrap();
    assert_eq!(card.len(), 16);
    assert!(
        card.ends_with("1111") && luhn(card) && card != "4111111111111111",
        "{card}"
    );

    let (status, plain) = app.get(&format!("{RECORDS}/{id}?redaction=plain")).await;
    assert_eq!(status, StatusCode::OK, "{plain}");
    assert_eq!(plain["id"], id);
    assert_eq!(plain["fields"]["email"], "ada@example.com");
    // the card guardrail: never a plaintext card number to a service account, even the admin
    assert!(plain["fields"].get("card_number").is_none(), "{plain}");
    assert_eq!(plain["withheld"], json!(["card_number"]));
    assert_eq!(plain["fields"]["ssn"], "123-45-6789");
    assert_eq!(plain["fields"]["name"], "Ada Lovelace");

    let (_, masked) = app.get(&format!("{RECORDS}/{id}?redaction=masked")).await;
    assert_eq!(masked["fields"]["card_number"], "XXXXXXXXXXXX1111");
    assert_eq!(masked["fields"]["ssn"], "XXX-XX-6789");
    assert_eq!(masked["fields"]["email"], "a***@example.com");

    let (_, redacted) = app.get(&format!("{RECORDS}/{id}?redaction=redacted")).await;
    assert_eq!(redacted["fields"]["ssn"], "*REDACTED*");

    // default: the most revealing level allowed (admin-all; cards capped by the guardrail)
    let (_, default) = app.get(&format!("{RECORDS}/{id}")).await;
    assert_eq!(default["fields"]["card_number"], "XXXXXXXXXXXX1111");
    assert_eq!(default["fields"]["ssn"], "123-45-6789");
    assert_eq!(default["fields"]["region"], "CA");

    let (_, some) = app
        .get(&format!(
            "{RECORDS}/{id}?redaction=plain&columns=email,region"
        ))
        .await;
    assert_eq!(some["fields"].as_object().unwrap().len(), 2, "{some}");
    let (status, body) = app.get(&format!("{RECORDS}/{id}?columns=nope")).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, body) = app
        .get(&format!("{RECORDS}/{id}?redaction=everything"))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn batch_is_all_or_nothing() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let mut records: Vec<Value> = (0..5)
        .map(|i| json!({"fields": {"name": format!("Person {i}"), "email": format!("p{i}@example.com")}}))
        .collect();
    records[3] = json!({"fields": {"name": "Bad Card", "card_number": "4111111111111112"}});
    let (status, body) = app.post(RECORDS, json!({"records": records})).await;
    let err = assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(err["details"][0]["record"], 3, "{body}");
    assert_eq!(err["details"][0]["field"], "card_number", "{body}");
    assert!(!body.to_string().contains("4111111111111112"));
    assert_eq!(app.count("records").await, 0);
    assert_eq!(app.count("record_values").await, 0);
    assert_eq!(app.count("tokens").await, 0);
}

#[tokio::test]
async fn unique_columns_are_enforced_without_plaintext() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    insert(&app, json!({"email": "ada@example.com"})).await;
    // equal after normalisation
    let (status, body) = app
        .post(
            RECORDS,
            json!({"records": [{"fields": {"email": "ADA@example.com"}}]}),
        )
        .await;
    let err = assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert_eq!(err["details"][0]["field"], "email");
    // duplicates inside one batch
    let (status, body) = app
        .post(RECORDS, json!({"records": [{"fields": {"email": "x@example.com"}}, {"fields": {"email": "x@example.com"}}]}))
        .await;
    let err = assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert_eq!(err["details"][0]["record"], 1);
    assert_eq!(app.count("records").await, 1);
}

/// Concurrent batches holding the same unique value: the unique index decides between those
/// that pass the pre-check together. Exactly one wins; every other one gets 409 and leaves
/// nothing behind.
#[tokio::test]
async fn concurrent_inserts_of_a_unique_value_conflict_cleanly() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let attempt = |i: usize| {
        let mut records: Vec<Value> = (0..50)
            .map(|j| json!({"fields": {"email": format!("batch{i}-{j}@example.com")}}))
            .collect();
        records.push(json!({"fields": {"email": "race@example.com", "name": "Racer"}}));
        app.post(RECORDS, json!({ "records": records }))
    };
    let (a, b, c, d, e, f, g, h) = tokio::join!(
        attempt(0),
        attempt(1),
        attempt(2),
        attempt(3),
        attempt(4),
        attempt(5),
        attempt(6),
        attempt(7)
    );
    let results = [a, b, c, d, e, f, g, h];
    let mut won = 0;
    for (status, body) in &results {
        if *status == StatusCode::CREATED {
            won += 1;
        } else {
            assert_error(*status, body, StatusCode::CONFLICT, "conflict");
            assert!(!body.to_string().contains("race@example.com"), "{body}");
        }
    }
    assert_eq!(won, 1, "{results:?}");
    assert_eq!(app.count("records").await, 51);
    assert_eq!(app.count("record_values").await, 52);
}

/// PostgreSQL giving a transaction up for a concurrent one (a deadlock, a serialization
/// failure) answers 409 `conflict`, which the client may retry, not a 500. (A trigger raises the
/// real errors from PostgreSQL: two requests that deadlock on cue are not to be had.)
#[tokio::test]
async fn a_transaction_given_up_for_a_concurrent_one_is_a_conflict_to_retry() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let db = app.db().await;
    for code in ["40P01", "40001"] {
        db.batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION sr_test_give_up() RETURNS trigger LANGUAGE plpgsql
                 AS $$ BEGIN RAISE EXCEPTION 'given up' USING ERRCODE = '{code}'; END $$;
             DROP TRIGGER IF EXISTS sr_test_give_up ON records;
             CREATE TRIGGER sr_test_give_up BEFORE INSERT ON records
                 FOR EACH ROW EXECUTE FUNCTION sr_test_give_up()"
        ))
        .await
        .unwrap();
        let (status, body) = app
            .post(RECORDS, json!({"records": [{"fields": ada()}]}))
            .await;
        let error = assert_error(status, &body, StatusCode::CONFLICT, "conflict");
        assert!(
            error["message"].as_str().unwrap().contains("retry"),
            "{code}: {body}"
        );
    }
    db.batch_execute("DROP TRIGGER sr_test_give_up ON records")
        .await
        .unwrap();
    insert(&app, ada()).await;
}

/// A write whose vault was loaded before a data-key rotation committed does not seal under the
/// old version (where the rotation's walk may already have passed it, and left it for good): it
/// is answered 409 to be sent again, and the retry seals under the new version. (The rotation
/// that commits while the server holds the vault is played by the database: a version made by
/// a real rotation is set back, the server restarted, then the version set forward again.)
#[tokio::test]
async fn a_write_under_a_data_key_rotated_meanwhile_is_refused_to_retry() {
    let mut app = TestApp::spawn().await;
    app.payments_vault().await;
    let (status, body) = app.post("/v1/vaults/payments/keys/rotate", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let db = app.db().await;
    db.batch_execute(
        "UPDATE vaults SET active_key_version = 1, reencrypted_version = 1 WHERE name = 'payments'",
    )
    .await
    .unwrap();
    let app = app.restart_with(|_| {}).await;
    let id = insert(&app, ada()).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let versions = |id: &str| {
        let (db, id) = (&db, uuid::Uuid::parse_str(id).unwrap());
        async move {
            db.query(
                "SELECT DISTINCT key_version FROM record_values WHERE record_id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, i32>(0))
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(versions(&id).await, vec![1]);
    // The rotation commits; the server still holds version 1 as the active one.
    db.batch_execute("UPDATE vaults SET active_key_version = 2 WHERE name = 'payments'")
        .await
        .unwrap();
    let late = json!({"records": [{"fields": {"email": "late@example.com"}}]});
    let (status, body) = app.post(RECORDS, late.clone()).await;
    let error = assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert!(
        error["message"].as_str().unwrap().contains("retry"),
        "{body}"
    );
    let (status, body) = app.post(RECORDS, late).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let late = body["records"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(versions(&late).await, vec![2]);
    // An update is checked too (the version set back this time: any difference is refused).
    db.batch_execute("UPDATE vaults SET active_key_version = 1 WHERE name = 'payments'")
        .await
        .unwrap();
    let ssn = json!({"fields": {"ssn": "512-78-3456"}});
    let (status, body) = app.patch(&format!("{RECORDS}/{id}"), ssn.clone()).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, body) = app.patch(&format!("{RECORDS}/{id}"), ssn).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(app.count("records").await, 2);
}

#[tokio::test]
async fn lookup_by_value() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let rec = insert(&app, ada()).await;
    insert(
        &app,
        json!({"name": "Grace Hopper", "email": "grace@example.com"}),
    )
    .await;
    let (status, body) = app
        .post(&format!("{RECORDS}/lookup"), json!({"column": "email", "values": ["ADA@example.com", "nobody@example.com"], "redaction": "masked"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let found = body["records"].as_array().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["id"], rec["id"]);
    assert_eq!(found[0]["fields"]["card_number"], "XXXXXXXXXXXX1111");
    let (status, body) = app
        .post(
            &format!("{RECORDS}/lookup"),
            json!({"column": "ssn", "values": ["123-45-6789"]}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, body) = app
        .post(
            &format!("{RECORDS}/lookup"),
            json!({"column": "email", "values": ["not-an-email"]}),
        )
        .await;
    let err = assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(err["details"][0]["index"], 0);
}

#[tokio::test]
async fn update_changes_values_and_retires_old_tokens() {
    // Plaintext cards are checked here, so the guardrail is lifted (operator setting).
    let app = TestApp::spawn_with(|s| s.allow_plaintext_cards = true).await;
    app.payments_vault().await;
    let rec = insert(&app, ada()).await;
    let id = rec["id"].as_str().unwrap();
    let old_card = rec["tokens"]["card_number"].as_str().unwrap().to_string();
    let (status, body) = app
        .patch(
            &format!("{RECORDS}/{id}"),
            json!({"fields": {"card_number": "5555555555554444", "region": null}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new_card = body["tokens"]["card_number"].as_str().unwrap().to_string();
    assert!(new_card.ends_with("4444"));
    let (_, read) = app.get(&format!("{RECORDS}/{id}?redaction=plain")).await;
    assert_eq!(read["fields"]["card_number"], "5555555555554444");
    assert!(read["fields"].get("region").is_none(), "{read}");
    let (_, det) = app
        .post(
            "/v1/vaults/payments/detokenize",
            json!({"tokens": [old_card, new_card], "redaction": "plain"}),
        )
        .await;
    assert_eq!(det["results"][0]["error"]["code"], "not_found", "{det}");
    assert_eq!(det["results"][1]["value"], "5555555555554444", "{det}");
    let (status, body) = app
        .patch(
            &format!("{RECORDS}/{id}"),
            json!({"fields": {"card_number": "1234"}}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, body) = app
        .patch(
            "/v1/vaults/payments/tables/customers/records/00000000-0000-4000-8000-000000000000",
            json!({"fields": {"name": "X"}}),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn delete_destroys_values_and_kills_tokens() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let rec = insert(&app, ada()).await;
    let id = rec["id"].as_str().unwrap();
    let tokens: Vec<Value> = rec["tokens"]
        .as_object()
        .unwrap()
        .values()
        .cloned()
        .collect();
    let (status, _) = app.delete(&format!("{RECORDS}/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app.get(&format!("{RECORDS}/{id}")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (_, det) = app
        .post("/v1/vaults/payments/detokenize", json!({"tokens": tokens}))
        .await;
    for r in det["results"].as_array().unwrap() {
        assert_eq!(r["error"]["code"], "not_found", "{det}");
    }
    assert_eq!(app.count("record_values").await, 0);
    assert_eq!(app.count("tokens").await, 0);
    let (status, body) = app.delete(&format!("{RECORDS}/{id}")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn deterministic_token_lives_while_another_record_holds_the_value() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .post(
            "/v1/vaults",
            json!({"name": "crm", "tables": [{"name": "leads", "columns": [
            {"name": "email", "type": "email", "tokenization": "deterministic"}]}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let path = "/v1/vaults/crm/tables/leads/records";
    let (_, body) = app
        .post(path, json!({"records": [{"fields": {"email": "same@example.com"}}, {"fields": {"email": "SAME@example.com"}}]}))
        .await;
    let (a, b) = (&body["records"][0], &body["records"][1]);
    assert_eq!(a["tokens"]["email"], b["tokens"]["email"]);
    // Not reserved in `tokens`: the token lives in the two values that hold it.
    assert_eq!(app.count("tokens").await, 0);
    let token = a["tokens"]["email"].clone();
    app.delete(&format!("{path}/{}", a["id"].as_str().unwrap()))
        .await;
    let (_, det) = app
        .post(
            "/v1/vaults/crm/detokenize",
            json!({"tokens": [token], "redaction": "plain"}),
        )
        .await;
    assert_eq!(det["results"][0]["value"], "same@example.com", "{det}");
    app.delete(&format!("{path}/{}", b["id"].as_str().unwrap()))
        .await;
    let (_, det) = app
        .post("/v1/vaults/crm/detokenize", json!({"tokens": [token]}))
        .await;
    assert_eq!(det["results"][0]["error"]["code"], "not_found", "{det}");
}

#[tokio::test]
async fn tokenize_endpoint() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let rec = insert(&app, ada()).await;
    let (status, body) = app
        .post("/v1/vaults/payments/tokenize", json!({"table": "customers", "column": "email", "values": ["ada@example.com", "new@example.com"]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["tokens"][0], rec["tokens"]["email"],
        "existing value keeps its token"
    );
    let (_, again) = app
        .post(
            "/v1/vaults/payments/tokenize",
            json!({"table": "customers", "column": "email", "values": ["new@example.com"]}),
        )
        .await;
    assert_eq!(again["tokens"][0], body["tokens"][1]);
    let (_, r1) = app
        .post(
            "/v1/vaults/payments/tokenize",
            json!({"table": "customers", "column": "ssn", "values": ["512-78-3456"]}),
        )
        .await;
    let (_, r2) = app
        .post(
            "/v1/vaults/payments/tokenize",
            json!({"table": "customers", "column": "ssn", "values": ["512-78-3456"]}),
        )
        .await;
    assert_ne!(r1["tokens"][0], r2["tokens"][0], "random tokens differ");
    let (_, det) = app
        .post(
            "/v1/vaults/payments/detokenize",
            json!({"tokens": [r1["tokens"][0], body["tokens"][1]], "redaction": "plain"}),
        )
        .await;
    assert_eq!(det["results"][0]["value"], "512-78-3456", "{det}");
    assert_eq!(det["results"][1]["value"], "new@example.com", "{det}");
    let (status, body) = app
        .post(
            "/v1/vaults/payments/tokenize",
            json!({"table": "customers", "column": "ssn", "values": ["000-12-3456"]}),
        )
        .await;
    let err = assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(err["details"][0]["index"], 0);
}

/// A plain detokenize as the admin, as a future that can run on its own task.
fn detokenize_task(
    app: &TestApp,
    vault: &str,
    tokens: Value,
) -> impl std::future::Future<Output = (StatusCode, Value)> + Send + 'static {
    let client = app.client.clone();
    let url = format!("{}/v1/vaults/{vault}/detokenize", app.base);
    async move {
        let resp = client
            .post(url)
            .bearer_auth(strongroom_tests::ADMIN_KEY)
            .json(&json!({"tokens": tokens, "redaction": "plain"}))
            .send()
            .await
            .expect("send");
        let status = resp.status();
        (status, resp.json().await.expect("json"))
    }
}

/// Concurrent small detokenize requests share one database statement when they queue up
/// together (`vault/probe.rs`). Each must still get exactly its own tokens' values, in its own
/// order, and only from its own vault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_small_detokenizes_each_get_their_own_values() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let mut clinic = strongroom_tests::payments_schema();
    clinic["name"] = json!("clinic");
    let (status, body) = app.post("/v1/vaults", clinic).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // name tokens of 20 people in each vault
    let mut people: Vec<Vec<(String, String)>> = Vec::new();
    for vault in ["payments", "clinic"] {
        let records: Vec<Value> = (0..20)
            .map(|i| json!({"fields": {"name": format!("{vault} person {i}")}}))
            .collect();
        let (status, body) = app
            .post(
                &format!("/v1/vaults/{vault}/tables/customers/records"),
                json!({ "records": records }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        people.push(
            body["records"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let token = r["tokens"]["name"].as_str().unwrap().to_string();
                    (token, format!("{vault} person {i}"))
                })
                .collect(),
        );
    }
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..240usize {
        let (v, other) = (n % 2, 1 - n % 2);
        let vault = ["payments", "clinic"][v];
        let mine = &people[v];
        // two of this vault's tokens (one twice), one of the other vault's, one unknown
        let a = mine[n % 20].clone();
        let b = mine[(n / 2 + 7) % 20].clone();
        let foreign = people[other][n % 20].0.clone();
        let tokens = json!([a.0, foreign, b.0, "tok_unknown", a.0]);
        let want = json!([a.1, null, b.1, null, a.1]);
        let call = detokenize_task(&app, vault, tokens);
        calls.spawn(async move {
            let (status, body) = call.await;
            (n, status, body, want)
        });
    }
    let mut answered = 0;
    while let Some(done) = calls.join_next().await {
        let (n, status, body, want) = done.expect("task");
        assert_eq!(status, StatusCode::OK, "call {n}: {body}");
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), 5, "call {n}: {body}");
        for (i, (got, want)) in results.iter().zip(want.as_array().unwrap()).enumerate() {
            if want.is_null() {
                assert_eq!(
                    got["error"]["code"], "not_found",
                    "call {n} item {i}: {body}"
                );
            } else {
                assert_eq!(&got["value"], want, "call {n} item {i}: {body}");
            }
        }
        answered += 1;
    }
    assert_eq!(answered, 240);
}

/// A shared lookup statement that stalls is cancelled by the statement timeout, and every
/// request that was waiting on it is answered 503, not 500; once the database answers again,
/// so does detokenize.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_shared_lookup_answers_every_waiting_request_503() {
    let app = TestApp::spawn_with(|s| s.statement_timeout_ms = 400).await;
    app.payments_vault().await;
    let rec = insert(&app, ada()).await;
    let token = rec["tokens"]["ssn"].as_str().unwrap().to_string();
    let db = app.db().await;
    db.batch_execute("BEGIN; LOCK TABLE record_values IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..6 {
        calls.spawn(detokenize_task(&app, "payments", json!([token])));
    }
    let answers = tokio::time::timeout(std::time::Duration::from_secs(10), calls.join_all())
        .await
        .expect("no answers within 10 s: the statement was not cancelled");
    let waited = started.elapsed();
    for (status, body) in &answers {
        assert_error(
            *status,
            body,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
        );
        assert!(!body.to_string().contains("6789"), "{body}");
    }
    assert!(
        waited >= std::time::Duration::from_millis(350)
            && waited < std::time::Duration::from_secs(5),
        "answered after {waited:?}"
    );
    db.batch_execute("ROLLBACK").await.unwrap();
    let (status, body) = app
        .post(
            "/v1/vaults/payments/detokenize",
            json!({"tokens": [token], "redaction": "plain"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["value"], "123-45-6789");
}

#[tokio::test]
async fn detokenize_keeps_order_and_reports_unknown_tokens() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let rec = insert(&app, ada()).await;
    let t = &rec["tokens"];
    let (status, body) = app
        .post("/v1/vaults/payments/detokenize", json!({"tokens": [t["ssn"], "tok_doesnotexist", t["email"], t["card_number"]], "redaction": "masked"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let r = body["results"].as_array().unwrap();
    assert_eq!(r.len(), 4);
    assert_eq!(r[0]["token"], t["ssn"]);
    assert_eq!(r[0]["value"], "XXX-XX-6789");
    assert_eq!(r[0]["table"], "customers");
    assert_eq!(r[0]["column"], "ssn");
    assert_eq!(r[0]["redaction"], "masked");
    assert_eq!(r[1]["error"]["code"], "not_found");
    assert_eq!(r[2]["value"], "a***@example.com");
    assert_eq!(r[3]["value"], "XXXXXXXXXXXX1111");
    let (_, body) = app
        .post(
            "/v1/vaults/payments/detokenize",
            json!({"tokens": [t["region"], t["ssn"]], "redaction": "default"}),
        )
        .await;
    assert_eq!(body["results"][0]["redaction"], "plain");
    assert_eq!(
        body["results"][1]["redaction"], "plain",
        "admin-all allows plain SSNs"
    );
    let (_, body) = app
        .post(
            "/v1/vaults/payments/detokenize",
            json!({"tokens": [t["dob"]], "redaction": "redacted"}),
        )
        .await;
    assert_eq!(body["results"][0]["value"], "*REDACTED*");
    let many: Vec<String> = (0..1001).map(|i| format!("tok_{i}")).collect();
    let (status, body) = app
        .post("/v1/vaults/payments/detokenize", json!({"tokens": many}))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
}

/// The answer-size cap of detokenize holds for values small enough to be read with their tokens
/// (under 64 KiB), and counts what JSON escaping adds to them.
#[tokio::test]
async fn detokenize_refuses_answers_past_its_size_limit_made_of_small_values() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .post(
            "/v1/vaults",
            json!({"name": "notes", "tables": [{"name": "n", "columns": [{"name": "text", "type": "string"}]}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let insert = |text: String| {
        let app = &app;
        async move {
            let (status, body) = app
                .post(
                    "/v1/vaults/notes/tables/n/records",
                    json!({"records": [{"fields": {"text": text}}]}),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            body["records"][0]["tokens"]["text"].clone()
        }
    };
    let detokenize = |token: &Value, copies: usize| {
        let body = json!({"tokens": vec![token.clone(); copies], "redaction": "plain"});
        let app = &app;
        async move { app.post("/v1/vaults/notes/detokenize", body).await }
    };
    // 65,000 bytes each: read with their tokens, not as large values.
    let letters = "a".repeat(65_000);
    let controls = "\u{1}".repeat(65_000);
    let letters_token = insert(letters.clone()).await;
    let controls_token = insert(controls.clone()).await;

    // A hundred copies of the letters come to 6.5 MB; a thousand to 65 MB, past 48 MiB.
    let (status, body) = detokenize(&letters_token, 100).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["results"][99]["value"].as_str(),
        Some(letters.as_str())
    );
    let (status, body) = detokenize(&letters_token, 1000).await;
    // (The status first: a wrong answer would be 65 MB to print.)
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );

    // A control character is six bytes of JSON (`\u0001`): fifty copies come to 19.5 MB of
    // answer; two hundred, 13 MB stored, to 78 MB of answer.
    let (status, body) = detokenize(&controls_token, 50).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["results"][49]["value"].as_str(),
        Some(controls.as_str())
    );
    let (status, body) = detokenize(&controls_token, 200).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    // Neither message holds the value.
    assert!(!body.to_string().contains("aaaa") && !body.to_string().contains("\\u0001"));
}

#[tokio::test]
async fn lookup_reports_only_records_whose_matched_column_the_caller_may_read() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    // Neither record has a `dob`: a look-up asking only for it reveals no field either way.
    let (status, body) = app
        .post(
            RECORDS,
            json!({"records": [
                {"fields": {"email": "ca@example.com", "region": "CA"}},
                {"fields": {"email": "ny@example.com", "region": "NY"}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let ca = body["records"][0]["id"].clone();
    let key = app.service_account("support", &["support"]).await;
    let (status, body) = app
        .policies(
            r#"
@id("support-lookup")
permit(principal in Strongroom::Role::"support", action == Strongroom::Action::"lookup",
       resource == Strongroom::Column::"payments/customers/email");
@id("support-email-ca")
permit(principal in Strongroom::Role::"support", action == Strongroom::Action::"read",
       resource == Strongroom::Column::"payments/customers/email")
when { context.redaction == "masked" && context.record.hasTag("region") && context.record.getTag("region") == "CA" };
"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let lookup = |email: &str, columns: Value| {
        let (key, app) = (key.clone(), &app);
        let body = json!({"column": "email", "values": [email], "columns": columns});
        async move {
            app.call_with(
                &key,
                None,
                reqwest::Method::POST,
                &format!("{RECORDS}/lookup"),
                Some(body),
            )
            .await
        }
    };
    // The caller may read the CA record's email (masked): it is reported, with nothing in it.
    let (status, body) = lookup("ca@example.com", json!(["dob"])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["records"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["records"][0]["id"], ca);
    // It may read nothing of the NY record: not even that it exists.
    let (status, body) = lookup("ny@example.com", json!(["dob"])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["records"], json!([]), "{body}");
    let (status, body) = lookup("ny@example.com", Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["records"], json!([]), "{body}");
    // An empty list of columns is a mistake, not a way to ask for ids alone.
    let (status, body) = lookup("ny@example.com", json!([])).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, body) = app
        .get(&format!("{RECORDS}/{}?columns=", ca.as_str().unwrap()))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn errors_list_at_most_a_hundred_details() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let fields: serde_json::Map<String, Value> = (0..150)
        .map(|i| (format!("no_such_column_{i}"), json!("x")))
        .collect();
    let (status, body) = app
        .post(RECORDS, json!({"records": [{"fields": fields}]}))
        .await;
    let error = assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let details = error["details"].as_array().unwrap();
    assert_eq!(details.len(), 101, "{body}");
    assert_eq!(details[100]["reason"], "and 50 more problems like these");
    assert_eq!(app.count("records").await, 0);
}

#[tokio::test]
async fn unique_conflicts_list_at_most_a_hundred_details() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    insert(&app, json!({"email": "held@example.com"})).await;
    // 150 records with one value of a unique column: the first clashes with the stored record,
    // each later one with it and with the first record of the batch too.
    let records: Vec<Value> = (0..150)
        .map(|_| json!({"fields": {"email": "held@example.com"}}))
        .collect();
    let (status, body) = app.post(RECORDS, json!({"records": records})).await;
    let error = assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let details = error["details"].as_array().unwrap();
    assert_eq!(details.len(), 101, "{body}");
    assert_eq!(details[0]["record"], 0, "{body}");
    assert_eq!(details[99]["record"], 50, "{body}");
    assert_eq!(details[100]["reason"], "and 199 more problems like these");
    assert!(!body.to_string().contains("held@"), "{body}");
    assert_eq!(app.count("records").await, 1);
}
