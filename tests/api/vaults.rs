use reqwest::StatusCode;
use serde_json::{Value, json};
use strongroom_tests::{TestApp, assert_error};

#[tokio::test]
async fn create_echoes_resolved_schema() {
    let app = TestApp::spawn().await;
    let body = app.payments_vault().await;
    assert_eq!(body["name"], "payments");
    let cols = body["tables"][0]["columns"].as_array().unwrap();
    let col = |n: &str| cols.iter().find(|c| c["name"] == n).unwrap().clone();
    assert_eq!(col("email")["tokenization"], "deterministic");
    assert_eq!(col("email")["unique"], true);
    assert_eq!(col("email")["mask"], "email");
    assert_eq!(col("email")["redaction"], "masked");
    assert_eq!(col("name")["tokenization"], "random");
    assert_eq!(col("card_number")["tokenization"], "format_preserving");
    assert_eq!(col("card_number")["mask"], "keep_last:4");
    assert_eq!(col("region")["redaction"], "plain");
    assert_eq!(col("region")["policy_attribute"], true);

    let (status, got) = app.get("/v1/vaults/payments").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["tables"], body["tables"]);
    let (status, list) = app.get("/v1/vaults").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["vaults"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn templates() {
    let app = TestApp::spawn().await;
    for (name, table) in [
        ("pii", "people"),
        ("pci", "cards"),
        ("healthcare", "patients"),
    ] {
        let (status, body) = app
            .post(
                "/v1/vaults",
                json!({"name": format!("v-{name}"), "template": name}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["tables"][0]["name"], table);
    }
    let (status, body) = app
        .post("/v1/vaults", json!({"name": "x", "template": "nope"}))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn duplicate_names_conflict() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let (status, body) = app
        .post("/v1/vaults", strongroom_tests::payments_schema())
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, body) = app
        .post(
            "/v1/vaults/payments/tables",
            json!({"name": "customers", "columns": [{"name": "a", "type": "string"}]}),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, body) = app
        .post(
            "/v1/vaults/payments/tables/customers/columns",
            json!({"name": "email", "type": "email"}),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
}

#[tokio::test]
async fn add_table_and_column_then_use_them() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let (status, body) = app
        .post(
            "/v1/vaults/payments/tables",
            json!({"name": "orders", "columns": [{"name": "ip", "type": "ip_address"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app
        .post(
            "/v1/vaults/payments/tables/customers/columns",
            json!({"name": "phone", "type": "phone", "tokenization": "format_preserving"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["tokenization"], "format_preserving");
    let (status, body) = app
        .post(
            "/v1/vaults/payments/tables/customers/records",
            json!({"records": [{"fields": {"phone": "+44 20 7946 0958"}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app
        .post(
            "/v1/vaults/payments/tables/orders/records",
            json!({"records": [{"fields": {"ip": "192.168.0.1"}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn schema_errors_name_the_field() {
    let app = TestApp::spawn().await;
    let bad = json!({"name": "v", "tables": [{"name": "t", "columns": [
        {"name": "dob", "type": "date_of_birth", "tokenization": "format_preserving"},
        {"name": "Bad Name", "type": "string"},
        {"name": "x", "type": "no_such_type"},
        {"name": "g", "type": "email", "token_group": "people"}
    ]}]});
    let (status, body) = app.post("/v1/vaults", bad).await;
    let err = assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let fields: Vec<&str> = err["details"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["field"].as_str())
        .collect();
    assert!(
        fields.contains(&"tables[0].columns[0].tokenization"),
        "{fields:?}"
    );
    assert!(fields.contains(&"tables[0].columns[1].name"), "{fields:?}");
    assert!(fields.contains(&"tables[0].columns[2].type"), "{fields:?}");
    assert!(
        fields.contains(&"tables[0].columns[3].token_group"),
        "{fields:?}"
    );
    let (status, _) = app.get("/v1/vaults/v").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app
        .post("/v1/vaults", json!({"name": "Payments!", "tables": []}))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn delete_vault_destroys_keys_and_data() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let mut kept = strongroom_tests::payments_schema();
    kept["name"] = json!("kept");
    let (status, body) = app.post("/v1/vaults", kept).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut kept_id = String::new();
    let mut granted = Vec::new();
    for vault in ["payments", "kept"] {
        let (status, body) = app
            .post(
                &format!("/v1/vaults/{vault}/tables/customers/records"),
                json!({"records": [{"fields": {"name": "Ada Lovelace", "ssn": "123-45-6789", "email": "ada@example.com", "card_number": "4111111111111111"}}]}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        kept_id = body["records"][0]["id"].as_str().unwrap().to_string();
        granted.push(json!({"vault": vault, "table": "customers", "id": kept_id}));
    }
    // One grant names a record of each vault.
    app.service_account("agent-7", &["support-agent"]).await;
    let (status, body) = app
        .post(
            "/v1/grants",
            json!({"principal": "agent-7", "expires_in_seconds": 600, "records": granted}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(app.count("grant_records").await, 2);
    let (status, _) = app.delete("/v1/vaults/payments").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app.get("/v1/vaults/payments").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = app.delete("/v1/vaults/payments").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    // Only the deleted vault's rows are gone: the other vault still reads its record.
    let app = &app;
    let rows = |counts: [i64; 5]| async move {
        for (table, expected) in [
            "vaults",
            "vault_data_keys",
            "records",
            "record_values",
            "tokens",
        ]
        .into_iter()
        .zip(counts)
        {
            assert_eq!(app.count(table).await, expected, "{table}");
        }
    };
    // The kept record: 4 values; 1 reserved token (the format-preserving card; opaque
    // tokens, random or deterministic, are not reserved).
    rows([1, 1, 1, 4, 1]).await;
    assert_eq!(
        app.count("grant_records").await,
        1,
        "the grant keeps the other vault's record"
    );
    let (status, body) = app
        .get(&format!(
            "/v1/vaults/kept/tables/customers/records/{kept_id}?redaction=plain"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["fields"]["name"], "Ada Lovelace");
    // Deleting the record itself drops the grant's reference to it too.
    let (status, _) = app
        .delete(&format!(
            "/v1/vaults/kept/tables/customers/records/{kept_id}"
        ))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(app.count("grant_records").await, 0);
    let (status, _) = app.delete("/v1/vaults/kept").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    rows([0; 5]).await;
}

/// Records, values and tokens have no foreign keys (migration 0005): a vault deleted while
/// batches are being written into it must still leave nothing behind. Each insert either
/// commits before the delete takes the vault (and is deleted with it) or finds no vault.
#[tokio::test]
async fn delete_vault_during_inserts_leaves_nothing_behind() {
    let app = TestApp::spawn().await;
    for round in 0..3u64 {
        app.payments_vault().await;
        let batch = |i: u64| {
            let records: Vec<Value> = (0..50)
                .map(|n| json!({"fields": {"name": format!("Person {round} {i} {n}"), "ssn": "123-45-6789",
                    "email": format!("p{round}-{i}-{n}@example.com")}}))
                .collect();
            app.post(
                "/v1/vaults/payments/tables/customers/records",
                json!({"records": records}),
            )
        };
        let delete = async {
            tokio::time::sleep(std::time::Duration::from_millis(5 * round)).await;
            app.delete("/v1/vaults/payments").await
        };
        let (a, b, c, d, e, f, (deleted, _)) = tokio::join!(
            batch(0),
            batch(1),
            batch(2),
            batch(3),
            batch(4),
            batch(5),
            delete
        );
        assert_eq!(deleted, StatusCode::NO_CONTENT);
        for (status, body) in [a, b, c, d, e, f] {
            assert!(
                status == StatusCode::CREATED || status == StatusCode::NOT_FOUND,
                "{status} {body}"
            );
        }
        for table in ["records", "record_values", "tokens"] {
            assert_eq!(app.count(table).await, 0, "round {round}: {table}");
        }
    }
}

/// A vault loaded while a column was being added must not put the old schema back in the
/// cache: every column added is usable at once, whatever reads ran beside it.
#[tokio::test]
async fn a_column_added_during_reads_is_usable_at_once() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .post(
            "/v1/vaults",
            json!({"name": "busy", "tables": [{"name": "t", "columns": [{"name": "c", "type": "string"}]}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for round in 0..40 {
        // Readers that keep loading the vault into the cache while the column is added.
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (client, base) = (app.client.clone(), app.base.clone());
                tokio::spawn(async move {
                    for _ in 0..6 {
                        let r = client
                            .get(format!("{base}/v1/vaults/busy"))
                            .bearer_auth(strongroom_tests::ADMIN_KEY)
                            .send()
                            .await
                            .expect("read");
                        assert_eq!(r.status(), StatusCode::OK);
                    }
                })
            })
            .collect();
        let column = format!("c{round}");
        let (status, body) = app
            .post(
                "/v1/vaults/busy/tables/t/columns",
                json!({"name": column, "type": "string"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        for r in readers {
            r.await.expect("reader");
        }
        let (status, body) = app
            .post(
                "/v1/vaults/busy/tables/t/records",
                json!({"records": [{"fields": {column.as_str(): "x"}}]}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "round {round}: {body}");
    }
}
