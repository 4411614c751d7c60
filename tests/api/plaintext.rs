//! No plaintext at rest or in logs: insert known values, then scan a `pg_dump` of the database
//! and everything the servers logged at debug level.

use reqwest::StatusCode;
use serde_json::json;
use strongroom_tests::TestApp;

const VALUES: &[&str] = &[
    "Zebediah Quixote",
    "zebediah.quixote@example.com",
    "4012888888881881",
    "287-65-4321",
    "1984-02-29",
    "Nowhereville",
];

const FILE_NAME: &str = "zebediah-quixote-will.txt";
const FILE_TEXT: &[u8] = b"Zebediah's last will and testament: everything to the cat.";

fn pg_dump_path() -> std::path::PathBuf {
    let bindir = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match bindir {
        Some(dir) if std::path::Path::new(&dir).join("pg_dump").exists() => {
            std::path::Path::new(&dir).join("pg_dump")
        }
        _ => "pg_dump".into(),
    }
}

#[tokio::test]
async fn no_plaintext_in_database_dump_or_logs() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let (status, body) = app
        .post("/v1/vaults/payments/tables/customers/records", json!({"records": [{"fields": {
            "name": VALUES[0], "email": VALUES[1], "card_number": VALUES[2], "ssn": VALUES[3], "dob": VALUES[4], "region": VALUES[5]}}]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["records"][0]["id"].as_str().unwrap().to_string();
    // exercise reads, look-ups, detokenize, updates and a rejected request too
    app.get(&format!(
        "/v1/vaults/payments/tables/customers/records/{id}?redaction=plain"
    ))
    .await;
    app.post(
        "/v1/vaults/payments/tables/customers/records/lookup",
        json!({"column": "email", "values": [VALUES[1]], "redaction": "plain"}),
    )
    .await;
    let tokens: Vec<_> = body["records"][0]["tokens"]
        .as_object()
        .unwrap()
        .values()
        .cloned()
        .collect();
    app.post(
        "/v1/vaults/payments/detokenize",
        json!({"tokens": tokens, "redaction": "plain"}),
    )
    .await;
    app.patch(
        &format!("/v1/vaults/payments/tables/customers/records/{id}"),
        json!({"fields": {"region": VALUES[5]}}),
    )
    .await;
    app.post(
        "/v1/vaults/payments/tables/customers/records",
        json!({"records": [{"fields": {"card_number": "4012888888881882", "name": VALUES[0]}}]}),
    )
    .await;
    app.post("/v1/vaults/payments/keys/rotate", json!({})).await;
    // a file column: neither the content (raw or base64) nor the file name is stored in clear
    let (status, body) = app
        .post(
            "/v1/vaults",
            json!({"name": "legal", "tables": [{"name": "contracts", "columns": [{"name": "pdf", "type": "file"}]}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app
        .post(
            "/v1/vaults/legal/tables/contracts/records",
            json!({"records": [{"fields": {"pdf": {"name": FILE_NAME, "media_type": "text/plain",
                "content_base64": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, FILE_TEXT)}}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let file_id = body["records"][0]["id"].as_str().unwrap().to_string();
    app.get(&format!(
        "/v1/vaults/legal/tables/contracts/records/{file_id}/files/pdf"
    ))
    .await;

    let config = &app.db;
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
    };
    let password = String::from_utf8(config.get_password().unwrap().to_vec()).unwrap();
    let out = std::process::Command::new(pg_dump_path())
        .args([
            "--no-owner",
            "-h",
            &host,
            "-U",
            config.get_user().unwrap(),
            "-d",
            &app.db_name,
        ])
        .env("PGPASSWORD", password)
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(dump.contains("record_values"), "dump looks empty");
    let logs = strongroom_tests::logs().to_lowercase();
    assert!(logs.contains("request"), "no logs captured");
    let file_b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, FILE_TEXT)
        .to_lowercase();
    assert!(
        !dump.contains(&file_b64),
        "file content (base64) found in pg_dump"
    );
    assert!(
        !logs.contains(&file_b64),
        "file content (base64) found in the server log"
    );
    for value in VALUES.iter().chain(
        [
            "4012888888881882",
            "219099999",
            FILE_NAME,
            "zebediah's last will",
        ]
        .iter(),
    ) {
        let v = value.to_lowercase();
        assert!(!dump.contains(&v), "`{value}` found in pg_dump");
        assert!(!logs.contains(&v), "`{value}` found in the server log");
    }
}

/// A value a caller put in a path (API.md forbids it, but one might; a gateway or inbound path
/// is the caller's or a third party's) or in a made-up method is neither logged nor audited:
/// the request log names route templates, and both name standard methods only.
#[tokio::test]
async fn a_value_in_a_path_or_a_method_is_neither_logged_nor_audited() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    // Unique to this test, so no other test's server can have logged it.
    let value = format!("4{:015}", uuid::Uuid::new_v4().as_u128() % 10u128.pow(15));
    for path in [
        format!("/v1/vaults/payments/tables/customers/records/{value}"),
        format!("/v1/vaults/v{value}"),
        format!("/v1/gateway/nope/v1/cards/{value}"),
        format!("/v1/inbound/nope/hooks/{value}"),
        format!("/nowhere/{value}"),
    ] {
        let (status, body) = app.get(&path).await;
        assert!(status.is_client_error(), "{path}: {status} {body}");
    }
    // A vault's name is audited as it was asked for (`v…` above is a valid name): the method
    // carries its own value.
    let other = format!("4{:015}", uuid::Uuid::new_v4().as_u128() % 10u128.pow(15));
    let method = reqwest::Method::from_bytes(format!("X{other}").as_bytes()).unwrap();
    for path in [
        "/v1/vaults/payments",
        "/v1/gateway/nope/v1/cards",
        "/nowhere",
    ] {
        let (status, body) = app.call(method.clone(), path, None).await;
        assert!(status.is_client_error(), "{path}: {status} {body}");
    }
    let logs = strongroom_tests::logs();
    assert!(!logs.contains(&value), "a path's value reached the log");
    assert!(!logs.contains(&other), "a method's value reached the log");
    let (status, audit) = app.get("/v1/audit?limit=1000").await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    assert!(
        audit["events"].as_array().is_some_and(|e| e.len() >= 7),
        "{audit}"
    );
    assert!(
        !audit.to_string().contains(&other),
        "a method's value reached the audit log: {audit}"
    );
    assert!(
        logs.contains(r#"route="/v1/vaults/{vault}/tables/{table}/records/{id}""#)
            || logs.contains("route=/v1/vaults/{vault}/tables/{table}/records/{id}"),
        "the request log names the route template"
    );
}
