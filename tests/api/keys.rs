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

/// Re-encryption walks every table, is not called done while another transaction holds a value
/// under the old version, and a restart resumes it.
#[tokio::test]
async fn reencryption_waits_for_held_values_and_resumes_after_restart() {
    let mut app = TestApp::spawn().await;
    app.payments_vault().await;
    let (status, body) = app
        .post(
            "/v1/vaults/payments/tables",
            json!({"name": "leads", "columns": [{"name": "phone", "type": "phone"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let customers: Vec<_> = (0..450)
        .map(|i| json!({"fields": {"name": format!("Person {i}"), "ssn": "123-45-6789"}}))
        .collect();
    let leads: Vec<_> = (0..250)
        .map(|i| json!({"fields": {"phone": format!("+1415555{i:04}")}}))
        .collect();
    for (table, records) in [("customers", customers), ("leads", leads)] {
        let (status, body) = app
            .post(
                &format!("/v1/vaults/payments/tables/{table}/records"),
                json!({"records": records}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let db = app.db().await;
    let walked = || async {
        db.query_one(
            "SELECT reencrypted_version FROM vaults WHERE name = 'payments'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, Option<i32>>(0)
    };
    let old_values = || async {
        db.query_one(
            "SELECT count(*) FROM record_values WHERE key_version = 1",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    assert_eq!(walked().await, Some(1));

    // Another transaction holds the two values of one customer in the middle of the walk.
    let held: uuid::Uuid = db
        .query_one("SELECT id FROM records ORDER BY id OFFSET 300 LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    let holder = app.db().await;
    holder.batch_execute("BEGIN").await.unwrap();
    let locked = holder
        .execute(
            "SELECT 1 FROM record_values WHERE record_id = $1 FOR UPDATE",
            &[&held],
        )
        .await
        .unwrap();
    assert_eq!(locked, 2);
    let (status, body) = app.post("/v1/vaults/payments/keys/rotate", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut rest_done = false;
    for _ in 0..200 {
        if old_values().await == 2 {
            rest_done = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(rest_done, "the values nobody holds were not re-encrypted");
    // Walks go on finding the held values; none of them may call the work done.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (_, body) = app.get("/v1/vaults/payments/keys").await;
    assert_eq!(body["reencryption_done"], false, "{body}");
    assert_eq!(body["reencryption_pending"], 2, "{body}");
    assert_eq!(walked().await, Some(1));

    // Stopped (its pool closed, the walk ends), then the values are released.
    app.stop().await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    holder.batch_execute("ROLLBACK").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        old_values().await,
        2,
        "a stopped server went on re-encrypting"
    );

    let app = TestApp::start(
        test_settings(strongroom_tests::temp_dir("strongroom-test-data")),
        app.db_name.clone(),
        app.db.clone(),
        app.data_dir.clone(),
    )
    .await;
    let mut done = false;
    for _ in 0..200 {
        let (_, body) = app.get("/v1/vaults/payments/keys").await;
        if body["reencryption_done"] == true {
            done = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(done, "re-encryption did not resume after the restart");
    assert_eq!(old_values().await, 0);
    for _ in 0..50 {
        if walked().await == Some(2) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(walked().await, Some(2));
    let (status, body) = app
        .get(&format!(
            "/v1/vaults/payments/tables/customers/records/{held}?redaction=plain"
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
