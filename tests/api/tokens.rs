//! Token properties, through the API.

use crate::luhn;
use reqwest::StatusCode;
use serde_json::{Value, json};
use strongroom_tests::{TestApp, test_settings};

fn schema() -> Value {
    json!({"name": "t", "tables": [
        {"name": "a", "columns": [
            {"name": "email", "type": "email", "tokenization": "deterministic", "token_group": "emails"},
            {"name": "email2", "type": "email", "tokenization": "deterministic"},
            {"name": "card", "type": "card_number", "tokenization": "deterministic_format_preserving"},
            {"name": "rcard", "type": "card_number", "tokenization": "format_preserving"},
            {"name": "phone", "type": "phone", "tokenization": "format_preserving"},
            {"name": "ssn", "type": "ssn", "tokenization": "format_preserving"},
            {"name": "mail", "type": "email", "tokenization": "format_preserving"},
            {"name": "note", "type": "string"},
            {"name": "secret", "type": "string", "tokenization": "none"}]},
        {"name": "b", "columns": [
            {"name": "email", "type": "email", "tokenization": "deterministic", "token_group": "emails"}]}
    ]})
}

async fn insert(app: &TestApp, table: &str, fields: Value) -> Value {
    let (status, body) = app
        .post(
            &format!("/v1/vaults/t/tables/{table}/records"),
            json!({"records": [{"fields": fields}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["records"][0]["tokens"].clone()
}

#[tokio::test]
async fn deterministic_tokens_properties() {
    let mut app = TestApp::spawn().await;
    let (status, body) = app.post("/v1/vaults", schema()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let t1 = insert(&app, "a", json!({"email": "Ann@Example.com", "email2": "ann@example.com", "card": "4111111111111111"})).await;
    let t2 = insert(&app, "a", json!({"email": "ann@example.com", "email2": "ANN@example.com", "card": "4111 1111 1111 1111"})).await;
    let tb = insert(&app, "b", json!({"email": "ann@example.com"})).await;
    assert_eq!(
        t1["email"], t2["email"],
        "equal normalised values, equal tokens"
    );
    assert_eq!(t1["email2"], t2["email2"]);
    assert_ne!(t1["email"], t1["email2"], "columns outside a group differ");
    assert_eq!(t1["email"], tb["email"], "a token group spans tables");
    assert_eq!(t1["card"], t2["card"]);
    let card = t1["card"].as_str().unwrap();
    assert!(
        card.len() == 16 && card.ends_with("1111") && luhn(card) && card != "4111111111111111",
        "{card}"
    );
    assert!(t1.get("secret").is_none());

    // stable across a data-key rotation ...
    let (status, _) = app.post("/v1/vaults/t/keys/rotate", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let t3 = insert(
        &app,
        "a",
        json!({"email2": "ann@example.com", "card": "4111111111111111"}),
    )
    .await;
    assert_eq!(t3["email2"], t1["email2"]);
    assert_eq!(t3["card"], t1["card"]);

    // ... and across a restart
    app.stop().await;
    let data_dir = strongroom_tests::temp_dir("strongroom-test-data");
    let app2 = TestApp::start(
        test_settings(data_dir.clone()),
        app.db_name.clone(),
        app.db.clone(),
        data_dir,
    )
    .await;
    let t4 = insert(
        &app2,
        "a",
        json!({"email2": "ann@example.com", "card": "4111111111111111"}),
    )
    .await;
    assert_eq!(t4["email2"], t1["email2"]);
    assert_eq!(t4["card"], t1["card"]);
}

#[tokio::test]
async fn format_preserving_tokens_keep_their_shape() {
    let app = TestApp::spawn().await;
    app.post("/v1/vaults", schema()).await;
    let mut seen = std::collections::HashSet::new();
    for i in 0..20 {
        let t = insert(
            &app,
            "a",
            json!({
            "rcard": "5555555555554444", "phone": "+44 20 7946 0958", "ssn": "123-45-6789",
            "mail": format!("jane.doe{i}@example.org"), "note": "hello"}),
        )
        .await;
        let card = t["rcard"].as_str().unwrap();
        assert!(
            card.len() == 16 && card.ends_with("4444") && luhn(card) && card != "5555555555554444",
            "{card}"
        );
        let phone = t["phone"].as_str().unwrap();
        assert!(
            phone.starts_with("+44")
                && phone.len() == "+442079460958".len()
                && phone != "+442079460958",
            "{phone}"
        );
        assert!(phone[1..].chars().all(|c| c.is_ascii_digit()), "{phone}");
        let ssn = t["ssn"].as_str().unwrap();
        let b = ssn.as_bytes();
        assert!(
            ssn.len() == 11 && b[3] == b'-' && b[6] == b'-' && ssn != "123-45-6789",
            "{ssn}"
        );
        let mail = t["mail"].as_str().unwrap();
        assert!(
            mail.ends_with("@example.org") && mail != format!("jane.doe{i}@example.org"),
            "{mail}"
        );
        let note = t["note"].as_str().unwrap();
        assert!(note.starts_with("tok_") && note.len() == 30, "{note}");
        assert!(
            note[4..]
                .chars()
                .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c)),
            "{note}"
        );
        for tok in t.as_object().unwrap().values() {
            assert!(
                seen.insert(tok.as_str().unwrap().to_string()),
                "token reused: {tok}"
            );
        }
    }
}

/// A tokenize request that repeats a value of a deterministic column (as sent, or only once
/// normalised) stores it once and answers its one token at every position: on a unique column
/// it used to store a record per repeat and refuse the request as a conflict with itself.
#[tokio::test]
async fn tokenize_answers_a_repeated_deterministic_value_its_one_token() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let (status, body) = app.post("/v1/vaults", schema()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let tokenize = |vault: &str, table: &str, column: &str, values: Value| {
        let (path, body) = (
            format!("/v1/vaults/{vault}/tokenize"),
            json!({"table": table, "column": column, "values": values}),
        );
        let app = &app;
        async move {
            let (status, body) = app.post(&path, body).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["tokens"].as_array().unwrap().clone()
        }
    };
    let values = json!(["a@x.com", "A@X.com", "b@x.com", "a@x.com"]);
    // `payments/customers/email` is unique and deterministic.
    let first = tokenize("payments", "customers", "email", values.clone()).await;
    assert_eq!(first.len(), 4);
    assert_eq!(first[0], first[1]);
    assert_eq!(first[0], first[3]);
    assert_ne!(first[0], first[2]);
    assert_eq!(app.count("records").await, 2);
    // Again, now that both are held: the same tokens, no new record.
    let again = tokenize("payments", "customers", "email", values.clone()).await;
    assert_eq!(again, first);
    assert_eq!(app.count("records").await, 2);
    // A held value and a new one, each repeated.
    let mixed = tokenize(
        "payments",
        "customers",
        "email",
        json!(["c@x.com", "b@x.com", "C@x.com", "b@x.com"]),
    )
    .await;
    assert_eq!(mixed[1], first[2]);
    assert_eq!(mixed[3], first[2]);
    assert_eq!(mixed[0], mixed[2]);
    assert_eq!(app.count("records").await, 3);
    // Deterministic but not unique (`t/a/email2`): one record per value all the same.
    let plain = tokenize("t", "a", "email2", values).await;
    assert_eq!(plain[0], plain[1]);
    assert_eq!(plain[0], plain[3]);
    assert_eq!(app.count("records").await, 5);
    let (status, body) = app
        .post(
            "/v1/vaults/payments/detokenize",
            json!({"tokens": [first[1], first[2], mixed[2]], "redaction": "plain"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["value"], "a@x.com");
    assert_eq!(body["results"][1]["value"], "b@x.com");
    assert_eq!(body["results"][2]["value"], "c@x.com");
}

/// A deterministic format-preserving token that had to take a later attempt (its first was
/// another value's) stays the value's token after that other value is gone and its first
/// attempt is free again: for a new record of the value, and for `tokenize`, which answered a
/// token that no record holds. (The other value is played by a row in `tokens`: two values
/// whose tokens meet are not to be found on cue.)
#[tokio::test]
async fn a_deterministic_format_preserving_token_stays_when_its_first_attempt_frees() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .post(
            "/v1/vaults",
            json!({"name": "bank", "tables": [{"name": "a", "columns": [
                {"name": "acct", "type": "bank_account", "tokenization": "deterministic_format_preserving"}]}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let records = "/v1/vaults/bank/tables/a/records";
    let add = || async {
        let (status, body) = app
            .post(
                records,
                json!({"records": [{"fields": {"acct": "0001234567"}}]}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["records"][0]["id"].as_str().unwrap().to_string(),
            body["records"][0]["tokens"]["acct"].clone(),
        )
    };
    let db = app.db().await;
    // The first attempt's token, then its row once the record is gone.
    let (id, first) = add().await;
    let row = db
        .query_one("SELECT vault_id, token_hash FROM tokens", &[])
        .await
        .unwrap();
    let (vault, hash): (uuid::Uuid, Vec<u8>) = (row.get(0), row.get(1));
    let (status, _) = app.delete(&format!("{records}/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(app.count("tokens").await, 0);
    // Another value holds the first attempt's token: the value takes its second.
    db.execute(
        "INSERT INTO tokens (vault_id, token_hash, binding) VALUES ($1, $2, '\\x00')",
        &[&vault, &hash],
    )
    .await
    .unwrap();
    let (_, second) = add().await;
    assert_ne!(second, first);
    // The other value goes; the first attempt is free again.
    db.execute("DELETE FROM tokens WHERE binding = '\\x00'", &[])
        .await
        .unwrap();
    let (status, body) = app
        .post(
            "/v1/vaults/bank/tokenize",
            json!({"table": "a", "column": "acct", "values": ["0001234567"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tokens"][0], second, "tokenize answers the held token");
    let (_, third) = add().await;
    assert_eq!(third, second, "a new record of the value gets its token");
    let (status, body) = app
        .post(
            "/v1/vaults/bank/detokenize",
            json!({"tokens": [second], "redaction": "plain"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["value"], "0001234567", "{body}");
}
