//! Bad input gets the right 4xx in the contract's shape, stores nothing, and echoes no value.

use reqwest::{Method, StatusCode};
use serde_json::json;
use strongroom_tests::{TestApp, assert_error};

const RECORDS: &str = "/v1/vaults/payments/tables/customers/records";

#[tokio::test]
async fn authentication_is_required() {
    let app = TestApp::spawn().await;
    let (status, body) = app.call_as(None, Method::GET, "/v1/vaults", None).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
    let (status, body) = app
        .call_as(
            Some("wrong-key-wrong-key-wrong-key-wrong-key"),
            Method::GET,
            "/v1/vaults",
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
    let (status, body) = app.call_as(None, Method::GET, "/healthz", None).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, body) = app.call_as(None, Method::GET, "/readyz", None).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ready"))
    );
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = TestApp::spawn().await;
    let resp = app
        .client
        .get(format!("{}/healthz", app.base))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    let resp = app
        .client
        .get(format!("{}/v1/vaults/nope", app.base))
        .bearer_auth(strongroom_tests::ADMIN_KEY)
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["request_id"], id);
}

#[tokio::test]
async fn malformed_bodies() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let (status, body) = app
        .raw(
            Method::POST,
            RECORDS,
            "application/json",
            b"{\"records\": [".to_vec(),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_json");
    let (status, body) = app
        .raw(Method::POST, RECORDS, "text/plain", b"{}".to_vec())
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let (status, body) = app
        .post(
            RECORDS,
            json!({"records": [{"fields": {"name": "A"}, "extra": 1}]}),
        )
        .await;
    let err = assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(err["message"].as_str().unwrap().contains("extra"), "{body}");
    let (status, body) = app
        .post(RECORDS, json!({"records": "4111111111111111"}))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(!body.to_string().contains("4111111111111111"), "{body}");
    let (status, body) = app.post(RECORDS, json!({"records": []})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn invalid_values_are_named_not_echoed() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let secrets = [
        "4111111111111112",
        "666-12-3456",
        "not-an-email@",
        "2999-01-01",
    ];
    let (status, body) = app
        .post(RECORDS, json!({"records": [{"fields": {"card_number": secrets[0], "ssn": secrets[1], "email": secrets[2], "dob": secrets[3], "region": 12, "nope": "x"}}]}))
        .await;
    let err = assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let mut fields: Vec<&str> = err["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        ["card_number", "dob", "email", "nope", "region", "ssn"],
        "{body}"
    );
    let text = body.to_string();
    for s in secrets {
        assert!(!text.contains(s), "{s} echoed: {text}");
    }
    let n = app.count("records").await;
    assert_eq!(n, 0);
}

#[tokio::test]
async fn too_many_records_and_oversized_bodies() {
    let app = TestApp::spawn_with(|s| s.max_body_bytes = 256 * 1024).await;
    app.payments_vault().await;
    let records: Vec<_> = (0..1001)
        .map(|_| json!({"fields": {"region": "CA"}}))
        .collect();
    let (status, body) = app.post(RECORDS, json!({"records": records})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    // the configured limit...
    let big = "x".repeat(300 * 1024);
    let (status, body) = app
        .post(
            "/v1/vaults/payments/detokenize",
            json!({"tokens": [big], "redaction": "masked"}),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    // ...and the one of record writes, which may carry a 16 MiB file as base64
    let huge = "x".repeat(24 << 20);
    let (status, body) = app
        .post(RECORDS, json!({"records": [{"fields": {"region": huge}}]}))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    let n = app.count("records").await;
    assert_eq!(n, 0);
}

#[tokio::test]
async fn unknown_things_are_not_found() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    for path in [
        "/v1/vaults/nope",
        "/v1/vaults/payments/tables/nope/records/00000000-0000-4000-8000-000000000000",
        "/v1/vaults/payments/tables/customers/records/not-a-uuid",
        "/v1/vaults/payments/tables/customers/records/00000000-0000-4000-8000-000000000000",
        "/v1/no/such/endpoint",
    ] {
        let (status, body) = app.get(path).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    }
    let (status, body) = app
        .post("/v1/vaults/nope/detokenize", json!({"tokens": ["x"]}))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = app
        .post(
            "/v1/vaults/payments/tokenize",
            json!({"table": "customers", "column": "nope", "values": ["x"]}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, body) = app.call(Method::PUT, "/v1/vaults", None).await;
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

/// Unknown `/v1` paths and methods go through authentication and the audit log like every
/// other `/v1` request: 401 without a key, 404 or 405 with one, and an event either way.
#[tokio::test]
async fn unknown_endpoints_need_a_key_and_are_audited() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .call_as(None, Method::GET, "/v1/no/such/endpoint", None)
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
    let (status, body) = app.call_as(None, Method::PUT, "/v1/vaults", None).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
    // with a key: 404 and 405 as before (`unknown_things_are_not_found`), now audited
    let (status, _) = app.get("/v1/no/such/endpoint").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.call(Method::PUT, "/v1/vaults", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    // outside /v1, nothing changes
    let (status, body) = app.call_as(None, Method::GET, "/nope", None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    let (_, page) = app.get("/v1/audit?limit=1000").await;
    let events = page["events"].as_array().unwrap();
    let seen = |status: u64, method: &str| {
        events
            .iter()
            .any(|e| e["status"] == status && e["method"] == method)
    };
    assert!(seen(401, "GET") && seen(401, "PUT"), "{page}");
    assert!(seen(404, "GET") && seen(405, "PUT"), "{page}");
    // One event per request: a 405 is not authenticated and audited twice.
    let mut ids: Vec<_> = events.iter().map(|e| e["request_id"].to_string()).collect();
    ids.sort();
    let all = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), all, "a request was audited twice: {page}");
    let unknown = events
        .iter()
        .find(|e| e["status"] == 404)
        .unwrap_or_else(|| panic!("{page}"));
    assert_eq!(unknown["principal"], "admin", "{unknown}");
    assert_eq!(unknown["route"], "unknown", "{unknown}");
    let (_, ok) = app.get("/v1/audit/verify").await;
    assert_eq!(ok["ok"], true, "{ok}");
}

/// An unknown function is 404 `not_found`, not 200 `null`.
#[tokio::test]
async fn an_unknown_function_is_not_found() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get("/v1/functions/nope").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}
