use reqwest::StatusCode;
use serde_json::json;
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
    let (status, body) = app
        .post(
            "/v1/vaults/payments/tables/customers/records",
            json!({"records": [{"fields": {"name": "Ada Lovelace"}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = app.delete("/v1/vaults/payments").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app.get("/v1/vaults/payments").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = app.delete("/v1/vaults/payments").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let db = app.db().await;
    for table in [
        "vaults",
        "vault_data_keys",
        "records",
        "record_values",
        "tokens",
    ] {
        let n: i64 = db
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{table}");
    }
}
