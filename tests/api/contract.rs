//! The contract's conventions on every kind of body, and the two documents the server serves
//! without a key: `/metrics` and `/openapi.json`.

use reqwest::StatusCode;
use serde_json::{Value, json};
use strongroom_tests::{ADMIN_KEY, TestApp, assert_error};

/// Sends `body` with `content_type` to `path` as the admin, and asserts the answer is the
/// contract's error `code` with `status`.
async fn refused(
    app: &TestApp,
    (method, path): (reqwest::Method, &str),
    (content_type, body): (&str, Vec<u8>),
    (status, code): (StatusCode, &str),
) {
    let (got, answer) = app.raw(method, path, content_type, body).await;
    assert_error(got, &answer, status, code);
}

const TOO_LARGE: (StatusCode, &str) = (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
const WRONG_TYPE: (StatusCode, &str) =
    (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");

#[tokio::test]
async fn every_body_kind_fails_in_the_error_shape() {
    let app = TestApp::spawn_with(|s| s.max_body_bytes = 64 * 1024).await;
    let big = vec![b'a'; 100 * 1024];

    // Bodies read as raw text or bytes: over the limit is 413 in the contract's shape.
    let put = reqwest::Method::PUT;
    let post = reqwest::Method::POST;
    refused(
        &app,
        (put.clone(), "/v1/policies"),
        ("text/plain", big.clone()),
        TOO_LARGE,
    )
    .await;
    let (status, account) = app
        .post(
            "/v1/service-accounts",
            json!({"name": "checkout", "roles": ["reader"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{account}");
    let keys = format!(
        "/v1/service-accounts/{}/keys",
        account["id"].as_str().expect("id")
    );
    refused(
        &app,
        (post.clone(), &keys),
        ("application/json", big),
        TOO_LARGE,
    )
    .await;

    // Multipart routes: another media type is 415, a body past the route's limit 413.
    refused(
        &app,
        (post, "/v1/functions"),
        ("application/json", b"{}".to_vec()),
        WRONG_TYPE,
    )
    .await;
    app.payments_vault().await;
    refused(
        &app,
        (
            put,
            "/v1/vaults/payments/tables/customers/records/00000000-0000-4000-8000-000000000000/files/photo",
        ),
        ("application/octet-stream", b"GIF89a".to_vec()),
        WRONG_TYPE,
    )
    .await;
    let (status, body) = app
        .upload_function(json!({"name": "big"}), vec![0u8; 18 << 20], None)
        .await;
    assert_error(status, &body, TOO_LARGE.0, TOO_LARGE.1);
    let (_, functions) = app.get("/v1/functions").await;
    assert_eq!(functions["functions"], json!([]), "{functions}");
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = TestApp::spawn().await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let resp = app
            .client
            .get(format!("{}/v1/vaults", app.base))
            .header("authorization", format!("{scheme} {ADMIN_KEY}"))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), StatusCode::OK, "{scheme}");
    }
    let resp = app
        .client
        .get(format!("{}/v1/vaults", app.base))
        .header("authorization", format!("Basic {ADMIN_KEY}"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

/// The value of the sample `name{labels}` in an OpenMetrics text, if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_without_a_key() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let card = "4111111111111111";
    let get = |path: &str| {
        let req = app.client.get(format!("{}{path}", app.base));
        async move { req.send().await.expect("request") }
    };
    // A value in a path (callers must not, but one might): it stays out of every label.
    for _ in 0..3 {
        let (status, _) = app.get(&format!("/v1/vaults/v{card}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (status, _) = app.get(&format!("/nowhere/{card}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let resp = get("/metrics").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        resp.headers()
    );
    let text = resp.text().await.expect("metrics");
    assert!(!text.contains(card), "a path reached a label: {text}");
    let vault_404 =
        r#"strongroom_http_requests_total{method="GET",route="/v1/vaults/{vault}",status="404"}"#;
    let before = sample(&text, vault_404).expect("the vault route's 404s are counted");
    assert!(before >= 3.0, "{text}");
    assert!(
        sample(
            &text,
            r#"strongroom_http_requests_total{method="POST",route="/v1/vaults",status="201"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(text.contains(r#"route="unmatched",status="404""#), "{text}");
    assert!(text.contains("strongroom_audit_events_total "), "{text}");
    assert!(
        text.contains(r#"strongroom_db_pool_connections{state="open"}"#),
        "{text}"
    );
    assert!(
        text.contains("strongroom_http_request_duration_seconds_bucket{"),
        "{text}"
    );

    // The counts move with the requests (other tests' servers share the process's counters,
    // so compare, not equate).
    let (status, _) = app.get("/v1/vaults/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let text = get("/metrics").await.text().await.expect("metrics");
    assert!(
        sample(&text, vault_404).is_some_and(|n| n > before),
        "{text}"
    );
}

#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let app = TestApp::spawn().await;
    let resp = app
        .client
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::OK);
    let doc: Value = resp.json().await.expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    // Every documented operation is routed: called as the admin (with no body, or a made-up
    // name, so nothing changes), each is audited under its own route template. Unknown
    // paths and methods are audited as `unknown`.
    let filled = |template: &str| {
        template
            .split('/')
            .map(|seg| match seg {
                "{id}" | "{key_id}" => "00000000-0000-4000-8000-000000000000",
                s if s.starts_with('{') => "x",
                s => s,
            })
            .collect::<Vec<_>>()
            .join("/")
    };
    let client = &app.client;
    let mut documented = std::collections::BTreeSet::new();
    for (template, item) in paths {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let resp = client
                .request(m, format!("{}{}", app.base, filled(template)))
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
                .expect("request");
            assert_ne!(
                resp.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {template} is documented but not routed"
            );
            if !template.starts_with("/v1/") {
                assert_eq!(resp.status(), StatusCode::OK, "{method} {template}");
                continue;
            }
            documented.insert(format!("{} {template}", method.to_uppercase()));
        }
    }
    assert!(
        documented.len() >= 60,
        "only {} operations",
        documented.len()
    );
    let audited: std::collections::BTreeSet<String> = app
        .db()
        .await
        .query("SELECT event FROM audit_events", &[])
        .await
        .expect("audit events")
        .iter()
        .filter_map(|row| {
            let event: Value = serde_json::from_str(row.get::<_, &str>(0)).ok()?;
            let route = event["route"].as_str()?.replace("{*", "{");
            Some(format!("{} {route}", event["method"].as_str()?))
        })
        .collect();
    let unrouted: Vec<_> = documented.difference(&audited).collect();
    assert!(unrouted.is_empty(), "documented, not routed: {unrouted:?}");
    assert!(
        !audited.iter().any(|op| op.ends_with(" unknown")),
        "{audited:?}"
    );

    // Every route in the router's source is documented.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/src/api");
    let mut routes = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("api sources") {
        let source = std::fs::read_to_string(entry.expect("entry").path()).expect("source");
        for piece in source.split(".route(").skip(1) {
            let Some(literal) = piece.trim_start().strip_prefix('"') else {
                continue;
            };
            let route = literal.split('"').next().unwrap_or_default();
            routes.push(route.replace("{*", "{"));
        }
    }
    assert!(routes.len() >= 40, "{routes:?}");
    for route in routes {
        assert!(
            paths.keys().any(|p| p.ends_with(&route)),
            "the route {route} is not in the OpenAPI document"
        );
    }
}
