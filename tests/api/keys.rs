//! Data-key rotation with background re-encryption; master-key rotation across restarts.

use reqwest::StatusCode;
use serde_json::json;
use strongroom_tests::{TestApp, test_settings};

const K2: &str = "k2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
const K1: &str = "test1:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";

#[tokio::test]
async fn data_key_rotation_reencrypts_in_background() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let records: Vec<_> = (0..1200)
        .map(|i| json!({"fields": {"name": format!("Person {i}"), "ssn": "123-45-6789"}}))
        .collect();
    for chunk in records.chunks(600) {
        let (status, body) = app
            .post(
                "/v1/vaults/payments/tables/customers/records",
                json!({"records": chunk}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, body) = app.get("/v1/vaults/payments/keys").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["active_version"], 1);
    assert_eq!(body["versions"][0]["values"], 2400);

    let (status, body) = app.post("/v1/vaults/payments/keys/rotate", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["active_version"], 2);
    let mut done = false;
    for _ in 0..200 {
        let (_, body) = app.get("/v1/vaults/payments/keys").await;
        if body["reencryption_done"] == true {
            assert_eq!(body["versions"][1]["values"], 2400, "{body}");
            assert_eq!(body["versions"][0]["values"], 0, "{body}");
            done = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(done, "re-encryption did not finish");
    let db = app.db().await;
    let old: i64 = db
        .query_one(
            "SELECT count(*) FROM record_values WHERE key_version = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(old, 0);
    let (_, body) = app
        .post(
            "/v1/vaults/payments/tables/customers/records/lookup",
            json!({"column": "email", "values": ["x@example.com"]}),
        )
        .await;
    assert_eq!(body["records"].as_array().map(Vec::len), Some(0));
    let id: uuid::Uuid = db
        .query_one("SELECT id FROM records LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    let (status, body) = app
        .get(&format!(
            "/v1/vaults/payments/tables/customers/records/{id}?redaction=plain"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["fields"]["ssn"], "123-45-6789");
}

#[tokio::test]
async fn master_key_rotation_survives_restarts() {
    let mut app = TestApp::spawn().await;
    app.payments_vault().await;
    let (_, body) = app
        .post(
            "/v1/vaults/payments/tables/customers/records",
            json!({"records": [{"fields": {"ssn": "123-45-6789"}}]}),
        )
        .await;
    let token = body["records"][0]["tokens"]["ssn"].clone();
    app.stop().await;

    let restart = |ring: &str| {
        let data_dir = strongroom_tests::temp_dir("strongroom-test-data");
        let mut s = test_settings(data_dir.clone());
        s.master_keys = Some(ring.to_string().into());
        (s, data_dir)
    };
    let (s, dir) = restart(&format!("{K2},{K1}"));
    let mut app2 = TestApp::start(s, app.db_name.clone(), app.db.clone(), dir).await;
    let (status, body) = app2.post("/v1/admin/master-keys/rotate", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["active_master_key"], "k2");
    // the vault's index and data keys, and the server's key-hashing, audit-chain and secrets keys
    assert_eq!(body["rewrapped_keys"], 5);
    app2.stop().await;

    let (s, dir) = restart(K2);
    let app3 = TestApp::start(s, app.db_name.clone(), app.db.clone(), dir).await;
    let (_, det) = app3
        .post(
            "/v1/vaults/payments/detokenize",
            json!({"tokens": [token], "redaction": "plain"}),
        )
        .await;
    assert_eq!(det["results"][0]["value"], "123-45-6789", "{det}");

    // A ring without the key the data is wrapped under refuses to start, naming the key id only.
    let (s, _dir) = restart("k9:MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=");
    let err = match strongroom::startup::Application::build_with(s, Some(app.db.clone())).await {
        Ok(_) => panic!("started without the master key"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("`k2`"), "{err}");
    assert!(!err.contains("ICEiIyQl"), "{err}");
}
