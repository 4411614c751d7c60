//! Connections end to end: a real server, a real third party ([`Upstream`]) on a local port,
//! real HTTP both ways. The third party records what it received, so each test checks what
//! actually crossed the wire: plaintext where the route says, tokens everywhere else.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;
use std::io::{Read, Write};
use std::time::Duration;
use strongroom_tests::upstream::{Reply, Upstream, closed_port};
use strongroom_tests::{ADMIN_KEY, TestApp, assert_error, guest};

// ---- helpers ---------------------------------------------------------------------------------

/// A server that may reach plain-http services on 127.0.0.1 (the test's upstream).
async fn spawn_app() -> TestApp {
    TestApp::spawn_with(|s| {
        s.egress_allow_networks = "127.0.0.1/32".into();
        s.egress_allow_http_hosts = "127.0.0.1".into();
    })
    .await
}

/// What the gateway answered.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The gateway refused to return the reply (502 `egress_blocked`), and `revealed` is not
    /// in what it answered.
    fn assert_blocked(&self, revealed: &str) {
        assert_error(
            self.status,
            &self.json(),
            StatusCode::BAD_GATEWAY,
            "egress_blocked",
        );
        assert!(!self.text().contains(revealed));
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }
}

/// Sends one request to the server (any path, any headers, a raw body with its content type).
async fn send(
    app: &TestApp,
    key: Option<&str>,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, Vec<u8>)>,
) -> Answer {
    let mut req = app.client.request(method, format!("{}{path}", app.base));
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    if let Some((ct, bytes)) = body {
        req = req.header("content-type", ct).body(bytes);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.unwrap().to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

/// A JSON call through the gateway or the inbound door.
async fn send_json(
    app: &TestApp,
    key: Option<&str>,
    method: Method,
    path: &str,
    body: &Value,
) -> Answer {
    send(
        app,
        key,
        method,
        path,
        &[],
        Some(("application/json", body.to_string().into_bytes())),
    )
    .await
}

/// POSTs a form-encoded body to `path` as `key`.
async fn send_form(app: &TestApp, key: &str, path: &str, form: &str) -> Answer {
    send(
        app,
        Some(key),
        Method::POST,
        path,
        &[],
        Some((
            "application/x-www-form-urlencoded",
            form.as_bytes().to_vec(),
        )),
    )
    .await
}

/// Sends a request over a bare TCP socket, so the request target reaches the server exactly
/// as written (an HTTP client would resolve `..` and `%2e%2e` before sending).
async fn raw_http(app: &TestApp, method: &str, target: &str) -> (u16, Value) {
    let addr = app.base.trim_start_matches("http://").to_string();
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let raw = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).unwrap();
        buf
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response to {target}: {text:?}"));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status for {target}: {head}"));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, json)
}

/// Sets the policies (admin-all is kept), asserting they were accepted.
async fn set_policies(app: &TestApp, cedar: &str) {
    let (status, body) = app.policies(cedar).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Stores a secret, asserting it was accepted and is not echoed.
pub(crate) async fn put_secret(app: &TestApp, name: &str, value: &str) {
    let (status, body) = app
        .call(
            Method::PUT,
            &format!("/v1/secrets/{name}"),
            Some(json!({ "value": value })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["name"], name, "{body}");
    assert!(
        !body.to_string().contains(value),
        "a secret is write-only: {body}"
    );
}

async fn create_connection(app: &TestApp, config: Value) -> Value {
    let (status, body) = app.post("/v1/connections", config).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

/// Inserts one record; returns its tokens.
async fn insert(app: &TestApp, vault: &str, table: &str, fields: Value) -> Value {
    let (status, body) = app
        .post(
            &format!("/v1/vaults/{vault}/tables/{table}/records"),
            json!({"records": [{"fields": fields}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["records"][0].clone()
}

fn token(record: &Value, column: &str) -> String {
    record["tokens"][column]
        .as_str()
        .unwrap_or_else(|| panic!("no token for {column}: {record}"))
        .to_string()
}

/// Admin detokenize of one token at `redaction`: the value, or panics with the answer.
async fn detokenize(app: &TestApp, vault: &str, token: &str, redaction: &str) -> String {
    let (status, body) = app
        .post(
            &format!("/v1/vaults/{vault}/detokenize"),
            json!({"tokens": [token], "redaction": redaction}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["results"][0]["value"]
        .as_str()
        .unwrap_or_else(|| panic!("token did not detokenize: {body}"))
        .to_string()
}

/// Audit events of `action`, newest or oldest first as the server lists them.
async fn audit_events(app: &TestApp, action: &str) -> Vec<Value> {
    let (status, body) = app
        .get(&format!("/v1/audit?action={action}&limit=1000"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["events"].as_array().cloned().unwrap_or_default()
}

/// Waits (the audit log is written in the background) for an event of `action` matching `pred`.
async fn wait_for_event(app: &TestApp, action: &str, pred: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..50 {
        if let Some(e) = audit_events(app, action).await.into_iter().find(&pred) {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no matching `{action}` audit event; events: {}",
        Value::Array(audit_events(app, action).await)
    );
}

/// Every row of every table of the test's database, as text: none of `plaintexts` may appear
/// in it (values are stored encrypted; tokens and audit events hold none).
async fn assert_database_has_no_plaintext(app: &TestApp, plaintexts: &[&str]) {
    let db = app.db().await;
    let tables = db
        .query(
            "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) FROM information_schema.tables \
             WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'",
            &[],
        )
        .await
        .unwrap();
    assert!(!tables.is_empty());
    for row in tables {
        let table: String = row.get(0);
        let rows = db
            .query(&format!("SELECT t::text FROM {table} t"), &[])
            .await
            .unwrap();
        for r in rows {
            let text: String = r.get(0);
            for p in plaintexts {
                assert!(
                    !text.contains(p),
                    "{table} holds the plaintext {p:?}: {text}"
                );
            }
        }
    }
}

/// The whole audit log as text: none of `plaintexts` may appear in it.
async fn assert_audit_has_no_plaintext(app: &TestApp, plaintexts: &[&str]) {
    // let the background writer catch up
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = app.get("/v1/audit?limit=1000").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["events"].as_array().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    let text = body.to_string();
    for p in plaintexts {
        assert!(
            !text.contains(p),
            "the audit log holds the plaintext {p:?}: {text}"
        );
    }
}

/// The error's details name `field` (exactly, or as a prefix of a nested field).
fn assert_names_field(body: &Value, field: &str) {
    let details = body["error"]["details"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        details.iter().any(|d| d["field"]
            .as_str()
            .is_some_and(|f| f == field || f.starts_with(&format!("{field}.")))),
        "details should name `{field}`: {body}"
    );
}

/// `POST /v1/connections` refuses `config` with 400 `invalid_request` naming `field`.
async fn assert_refused(app: &TestApp, config: Value, field: &str) {
    let (status, body) = app.post("/v1/connections", config).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert_names_field(&body, field);
}

/// Cedar letting connection `connection` detokenize and tokenize, and role `app` call it.
fn connection_policies(connection: &str) -> String {
    format!(
        r#"@id("{connection}-detok")
permit(principal == Strongroom::Connection::"{connection}", action == Strongroom::Action::"detokenize", resource);
@id("{connection}-tok")
permit(principal == Strongroom::Connection::"{connection}", action == Strongroom::Action::"tokenize", resource);
@id("{connection}-calls")
permit(principal in Strongroom::Role::"app", action == Strongroom::Action::"call_connection", resource == Strongroom::Connection::"{connection}");
"#
    )
}

const FUNCTIONS_MAY_READ: &str = r#"@id("functions-detokenize")
permit(principal is Strongroom::Function, action in [Strongroom::Action::"detokenize", Strongroom::Action::"read"], resource);
"#;

const ADA_CARD: &str = "4242424242424242";
const ADA_EMAIL: &str = "ada@example.test";
const ADA_NAME: &str = "Ada Lovelace";
const GRACE_EMAIL: &str = "grace@example.test";
const GRACE_NAME: &str = "Grace Hopper";
const BILLING_EMAIL: &str = "billing-dept@example.test";

// ---- 1. configuration --------------------------------------------------------------------

fn simple_outbound(name: &str, base_url: &str) -> Value {
    json!({"name": name, "kind": "outbound", "base_url": base_url,
           "routes": [{"name": "ping", "method": "GET", "path": "/ping"}]})
}

#[tokio::test]
async fn outbound_config_is_validated_and_echoed_with_its_version() {
    let upstream = Upstream::start().await;
    let app = spawn_app().await;
    app.payments_vault().await;
    put_secret(&app, "stripe_key", "sk_test_config").await;
    let base = format!("{}/base", upstream.base());

    let good = json!({"name": "stripe", "kind": "outbound", "base_url": base, "vault": "payments",
        "headers": {"authorization": "Bearer {{secret.stripe_key}}"},
        "timeouts": {"connect_ms": 1000, "total_ms": 5000},
        "routes": [{"name": "charge", "method": "POST", "path": "/v1/charges/{id}",
            "request": {"detokenize": [{"location": "body", "path": "$.card.number", "redaction": "plain"},
                                       {"location": "body", "path": "$.items[*].email", "vault": "payments"},
                                       {"location": "header", "path": "x-customer"},
                                       {"location": "query", "path": "name"}]},
            "response": {"tokenize": [{"location": "body", "path": "$.billing.email",
                "vault": "payments", "table": "customers", "column": "email"}]}},
            {"name": "rest", "method": "*", "path": "/files/{*rest}"}]});
    let body = create_connection(&app, good.clone()).await;
    assert_eq!(body["version"], 1, "{body}");
    assert_eq!(body["active_version"], 1, "{body}");
    assert_eq!(body["name"], "stripe");
    assert_eq!(body["kind"], "outbound");
    assert_eq!(body["base_url"], good["base_url"]);
    assert_eq!(
        body["routes"][0]["request"]["detokenize"][0]["path"],
        "$.card.number"
    );
    assert_eq!(
        body["headers"]["authorization"], "Bearer {{secret.stripe_key}}",
        "the secret's name, never its value: {body}"
    );
    assert!(!body.to_string().contains("sk_test_config"), "{body}");
    // the name is taken now
    let (status, taken) = app.post("/v1/connections", good.clone()).await;
    assert_error(status, &taken, StatusCode::CONFLICT, "conflict");
    let (status, list) = app.get("/v1/connections").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(
        list["connections"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );

    // each mistake is refused, naming the field
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        c["name"] = json!("other");
        f(&mut c);
        c
    };
    assert_refused(
        &app,
        with(&|c| c["routes"][0]["request"]["function"] = json!("no-such-function")),
        "routes[0].request.function",
    )
    .await;
    assert_refused(
        &app,
        with(&|c| c["routes"][0]["response"]["function"] = json!("no-such-function")),
        "routes[0].response.function",
    )
    .await;
    assert_refused(
        &app,
        with(&|c| c["routes"][0]["response"]["tokenize"][0]["vault"] = json!("nope")),
        "routes[0].response.tokenize[0].vault",
    )
    .await;
    assert_refused(
        &app,
        with(&|c| c["routes"][0]["response"]["tokenize"][0]["table"] = json!("nope")),
        "routes[0].response.tokenize[0].table",
    )
    .await;
    assert_refused(
        &app,
        with(&|c| c["routes"][0]["response"]["tokenize"][0]["column"] = json!("nope")),
        "routes[0].response.tokenize[0].column",
    )
    .await;
    assert_refused(
        &app,
        with(&|c| c["routes"][0]["request"]["detokenize"][1]["vault"] = json!("nope")),
        "routes[0].request.detokenize[1].vault",
    )
    .await;
    assert_refused(&app, with(&|c| c["vault"] = json!("nope")), "vault").await;
    for bad_path in ["$.card[", "$.card..number", "$.items[x]"] {
        assert_refused(
            &app,
            with(&|c| c["routes"][0]["request"]["detokenize"][0]["path"] = json!(bad_path)),
            "routes[0].request.detokenize[0].path",
        )
        .await;
    }
    assert_refused(
        &app,
        with(&|c| c["routes"][0]["response"]["tokenize"][0]["path"] = json!("$.billing[")),
        "routes[0].response.tokenize[0].path",
    )
    .await;
    for bad_template in [
        "v1/charges",
        "/v1/{bad name}",
        "/v1/{*rest}/more",
        "/v1/../admin",
        "/v1//charges",
    ] {
        assert_refused(
            &app,
            with(&|c| c["routes"][0]["path"] = json!(bad_template)),
            "routes[0].path",
        )
        .await;
    }
    assert_refused(
        &app,
        with(&|c| c["routes"][0]["method"] = json!("FETCH ME")),
        "routes[0].method",
    )
    .await;
    assert_refused(
        &app,
        with(&|c| c["routes"][1]["name"] = json!("charge")),
        "routes[1].name",
    )
    .await;
    assert_refused(&app, with(&|c| c["name"] = json!("Not A Name")), "name").await;
    assert_refused(
        &app,
        with(&|c| c["headers"]["authorization"] = json!("Bearer {{secret.missing_key}}")),
        "headers.authorization",
    )
    .await;
    // a host outside the plain-http allow-list must use https
    assert_refused(
        &app,
        with(&|c| c["base_url"] = json!("http://api.example.com")),
        "base_url",
    )
    .await;
    // metadata, link-local and private addresses are refused, https or not
    for url in [
        "http://169.254.169.254",
        "https://169.254.169.254/latest/meta-data",
        "https://10.0.0.1",
        "https://192.168.1.1",
        "https://[::1]",
        "ftp://127.0.0.1",
    ] {
        assert_refused(&app, with(&|c| c["base_url"] = json!(url)), "base_url").await;
    }

    // unknown fields, top level and nested
    for (config, field) in [
        (with(&|c| c["bse_url"] = json!("x")), "bse_url"),
        (with(&|c| c["routes"][0]["methd"] = json!("GET")), "methd"),
        (
            with(&|c| c["routes"][0]["request"]["detokenize"][0]["redacton"] = json!("plain")),
            "redacton",
        ),
    ] {
        let (status, body) = app.post("/v1/connections", config).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
        assert!(body.to_string().contains(field), "names `{field}`: {body}");
    }

    // nothing was stored by the refusals
    let (_, list) = app.get("/v1/connections").await;
    assert_eq!(
        list["connections"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
    assert_eq!(upstream.count(), 0, "validation never calls the upstream");
}

#[tokio::test]
async fn plain_http_and_loopback_need_the_operators_allow_lists() {
    let upstream = Upstream::start().await;
    let app = TestApp::spawn().await;
    for url in [
        upstream.base(),
        format!("https://127.0.0.1:{}", upstream.port()),
    ] {
        assert_refused(&app, simple_outbound("local", &url), "base_url").await;
    }
    let inbound = json!({"name": "local", "kind": "inbound", "upstream": upstream.base(),
        "routes": [{"name": "in", "method": "POST", "path": "/in"}]});
    assert_refused(&app, inbound, "upstream").await;
    let (_, list) = app.get("/v1/connections").await;
    assert_eq!(list["connections"], json!([]), "{list}");
}

#[tokio::test]
async fn versions_roll_forward_and_back_and_delete_removes_the_connection() {
    let upstream = Upstream::start().await;
    let app = spawn_app().await;
    let v1 = json!({"name": "versioned", "kind": "outbound", "base_url": upstream.base(),
        "headers": {"x-config-version": "one"},
        "routes": [{"name": "ping", "method": "GET", "path": "/ping"}]});
    let mut v2 = v1.clone();
    v2["headers"]["x-config-version"] = json!("two");
    let created = create_connection(&app, v1).await;
    assert_eq!(created["version"], 1);

    let ping = |expected: &'static str| {
        let app = &app;
        let upstream = &upstream;
        async move {
            let a = send(
                app,
                Some(ADMIN_KEY),
                Method::GET,
                "/v1/gateway/versioned/ping",
                &[],
                None,
            )
            .await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.text());
            assert_eq!(
                upstream.last().header("x-config-version"),
                Some(expected),
                "{:?}",
                upstream.last()
            );
        }
    };
    ping("one").await;

    let (status, body) = app
        .call(Method::PUT, "/v1/connections/versioned", Some(v2.clone()))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 2, "{body}");
    assert_eq!(body["active_version"], 2, "{body}");
    ping("two").await;

    let (status, body) = app.get("/v1/connections/versioned").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["active_version"], 2, "{body}");
    assert_eq!(body["headers"]["x-config-version"], "two", "{body}");
    let versions: Vec<i64> = body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions.len(), 2, "{body}");
    assert!(versions.contains(&1) && versions.contains(&2), "{body}");
    assert!(body["versions"][0]["created_at"].is_string(), "{body}");

    // roll back
    let (status, body) = app
        .post("/v1/connections/versioned/activate", json!({"version": 1}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    ping("one").await;
    let (_, body) = app.get("/v1/connections/versioned").await;
    assert_eq!(body["active_version"], 1, "{body}");
    assert_eq!(body["headers"]["x-config-version"], "one", "{body}");
    // and forward again
    let (status, _) = app
        .post("/v1/connections/versioned/activate", json!({"version": 2}))
        .await;
    assert_eq!(status, StatusCode::OK);
    ping("two").await;
    let (status, body) = app
        .post("/v1/connections/versioned/activate", json!({"version": 9}))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    // an update must keep the name, and is validated like a create
    let mut renamed = v2.clone();
    renamed["name"] = json!("other");
    let (status, body) = app
        .call(Method::PUT, "/v1/connections/versioned", Some(renamed))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let mut broken = v2.clone();
    broken["routes"][0]["path"] = json!("no-slash");
    let (status, body) = app
        .call(Method::PUT, "/v1/connections/versioned", Some(broken))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert_names_field(&body, "routes[0].path");
    let (_, body) = app.get("/v1/connections/versioned").await;
    assert_eq!(body["versions"].as_array().map(Vec::len), Some(2), "{body}");

    // delete
    let (status, _) = app.delete("/v1/connections/versioned").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app.get("/v1/connections/versioned").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = app.delete("/v1/connections/versioned").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let before = upstream.count();
    let a = send(
        &app,
        Some(ADMIN_KEY),
        Method::GET,
        "/v1/gateway/versioned/ping",
        &[],
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text());
    assert_eq!(upstream.count(), before);
}

#[tokio::test]
async fn secrets_are_write_only() {
    let app = spawn_app().await;
    put_secret(&app, "api_key", "very-secret-value-1").await;
    put_secret(&app, "api_key", "very-secret-value-2").await;
    let (status, body) = app.get("/v1/secrets").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["secrets"][0]["name"], "api_key", "{body}");
    assert!(body["secrets"][0]["updated_at"].is_string(), "{body}");
    assert!(!body.to_string().contains("very-secret-value"), "{body}");
    let (status, body) = app
        .call(
            Method::PUT,
            "/v1/secrets/Bad_Name",
            Some(json!({"value": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = app.delete("/v1/secrets/api_key").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app.delete("/v1/secrets/api_key").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (_, body) = app.get("/v1/secrets").await;
    assert_eq!(body["secrets"], json!([]), "{body}");
    assert_audit_has_no_plaintext(&app, &["very-secret-value"]).await;
}

// ---- 2. outbound: detokenize in flight --------------------------------------------------------

struct Payments {
    ada: Value,
    grace: Value,
}

async fn payments(app: &TestApp) -> Payments {
    app.payments_vault().await;
    let ada = insert(
        app,
        "payments",
        "customers",
        json!({"name": ADA_NAME, "email": ADA_EMAIL, "card_number": ADA_CARD}),
    )
    .await;
    let grace = insert(
        app,
        "payments",
        "customers",
        json!({"name": GRACE_NAME, "email": GRACE_EMAIL, "card_number": "5555555555554444"}),
    )
    .await;
    Payments { ada, grace }
}

fn stripe_config(base_url: &str) -> Value {
    json!({"name": "stripe", "kind": "outbound", "base_url": base_url, "vault": "payments",
        "headers": {"authorization": "Bearer {{secret.stripe_key}}", "stripe-version": "2024-06-20"},
        "routes": [
            {"name": "charge", "method": "POST", "path": "/v1/charges",
             "request": {"detokenize": [
                {"location": "body", "path": "$.card.number", "redaction": "plain"},
                {"location": "body", "path": "$.customers[*].contact.email", "redaction": "plain"},
                {"location": "header", "path": "x-customer-name", "redaction": "plain"},
                {"location": "query", "path": "customer", "redaction": "plain"}]},
             "response": {"tokenize": [{"location": "body", "path": "$.billing.email",
                "vault": "payments", "table": "customers", "column": "email"}]}},
            {"name": "card-token", "method": "POST", "path": "/v1/tokens",
             "request": {"detokenize": [{"location": "body", "path": "card[number]", "redaction": "plain"}]}},
            {"name": "echo", "method": "POST", "path": "/v1/echo",
             "request": {"detokenize": [{"location": "body", "path": "$.card.number", "redaction": "plain"}]}},
            {"name": "echo-tokenized", "method": "POST", "path": "/v1/echo-tokenized",
             "request": {"detokenize": [{"location": "body", "path": "$.card.number", "redaction": "plain"}]},
             "response": {"tokenize": [{"location": "body", "path": "$.card.number",
                "vault": "payments", "table": "customers", "column": "card_number"}]}}]})
}

#[tokio::test]
async fn outbound_calls_detokenize_in_flight_and_tokenize_the_reply() {
    let upstream = Upstream::start().await;
    upstream.reply_on(
        "/base/v1/charges",
        Reply::json(
            201,
            json!({"id": "ch_1", "status": "succeeded",
                   "billing": {"email": BILLING_EMAIL, "country": "GB"}}),
        )
        .header("x-upstream-request", "req_42"),
    );
    let app = spawn_app().await;
    let p = payments(&app).await;
    put_secret(&app, "stripe_key", "sk_test_4eC39HqLyjWDarjtT1zdp7dc").await;
    set_policies(&app, &connection_policies("stripe")).await;
    create_connection(&app, stripe_config(&format!("{}/base", upstream.base()))).await;
    let checkout = app.service_account("checkout", &["app"]).await;

    let request = json!({"amount": 1000, "currency": "usd",
        "card": {"number": token(&p.ada, "card_number"), "exp_month": 12},
        "customers": [{"contact": {"email": token(&p.ada, "email")}, "role": "payer"},
                      {"contact": {"email": token(&p.grace, "email")}, "role": "cc"}],
        "note": "keep me"});
    let query = format!(
        "/v1/gateway/stripe/v1/charges?customer={}&expand=billing",
        token(&p.grace, "name")
    );
    let a = send(
        &app,
        Some(&checkout),
        Method::POST,
        &query,
        &[
            ("x-customer-name", &token(&p.ada, "name")),
            ("x-strongroom-purpose", "checkout"),
            ("x-trace", "abc"),
        ],
        Some(("application/json", request.to_string().into_bytes())),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());

    // what the third party received: plaintext exactly where the rules say
    assert_eq!(upstream.count(), 1);
    let got = upstream.last();
    assert_eq!(got.method, "POST");
    assert_eq!(got.path(), "/base/v1/charges");
    let q = got.query_pairs();
    assert!(q.contains(&("customer".into(), GRACE_NAME.into())), "{q:?}");
    assert!(q.contains(&("expand".into(), "billing".into())), "{q:?}");
    assert_eq!(got.header("x-customer-name"), Some(ADA_NAME));
    assert_eq!(
        got.header("x-trace"),
        Some("abc"),
        "other headers travel on"
    );
    assert_eq!(
        got.header("authorization"),
        Some("Bearer sk_test_4eC39HqLyjWDarjtT1zdp7dc"),
        "the connection's secret replaces the caller's key"
    );
    assert_eq!(got.header("stripe-version"), Some("2024-06-20"));
    assert_eq!(
        got.header("host"),
        Some(format!("127.0.0.1:{}", upstream.port()).as_str()),
        "the caller's Host is not forwarded"
    );
    assert!(
        !got.headers_text().contains(&checkout),
        "the caller's key never travels: {}",
        got.headers_text()
    );
    assert!(
        got.header("x-strongroom-purpose").is_none(),
        "{}",
        got.headers_text()
    );
    let body = got.json();
    assert_eq!(body["card"]["number"], ADA_CARD, "{body}");
    assert_eq!(body["card"]["exp_month"], 12, "{body}");
    assert_eq!(
        body["customers"][0]["contact"]["email"], ADA_EMAIL,
        "{body}"
    );
    assert_eq!(
        body["customers"][1]["contact"]["email"], GRACE_EMAIL,
        "{body}"
    );
    assert_eq!(body["customers"][1]["role"], "cc", "{body}");
    assert_eq!(body["note"], "keep me");
    assert_eq!(body["amount"], 1000);

    // what the backend got: the reply, its email tokenized into the vault
    assert!(a.headers.contains_key("x-request-id"), "{:?}", a.headers);
    assert_eq!(
        a.headers
            .get("x-upstream-request")
            .and_then(|v| v.to_str().ok()),
        Some("req_42")
    );
    let reply = a.json();
    assert_eq!(reply["id"], "ch_1", "{reply}");
    assert_eq!(reply["billing"]["country"], "GB", "{reply}");
    let email_token = reply["billing"]["email"].as_str().unwrap().to_string();
    assert_ne!(email_token, BILLING_EMAIL);
    assert!(!a.text().contains(BILLING_EMAIL), "{}", a.text());
    assert!(!a.text().contains(ADA_CARD) && !a.text().contains(ADA_EMAIL));
    assert_eq!(
        detokenize(&app, "payments", &email_token, "plain").await,
        BILLING_EMAIL
    );
    // the deterministic column gives the same token for the same value
    let (status, body) = app
        .post(
            "/v1/vaults/payments/tokenize",
            json!({"table": "customers", "column": "email", "values": [BILLING_EMAIL]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tokens"][0], email_token.as_str(), "{body}");

    // a form-encoded body: the field named by the rule
    let form = format!(
        "amount=500&card[number]={}&card[cvc]=123",
        token(&p.ada, "card_number")
    );
    let a = send_form(&app, &checkout, "/v1/gateway/stripe/v1/tokens", &form).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let got = upstream.last();
    assert_eq!(got.path(), "/base/v1/tokens");
    let fields = got.form();
    assert_eq!(
        fields.get("card[number]").map(String::as_str),
        Some(ADA_CARD),
        "{}",
        got.text()
    );
    assert_eq!(fields.get("card[cvc]").map(String::as_str), Some("123"));
    assert_eq!(fields.get("amount").map(String::as_str), Some("500"));

    // a rotated secret is used from the next call on
    put_secret(&app, "stripe_key", "sk_test_rotated_value_2").await;
    let a = send_form(&app, &checkout, "/v1/gateway/stripe/v1/tokens", "amount=1").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(
        upstream.last().header("authorization"),
        Some("Bearer sk_test_rotated_value_2")
    );
    // and a third party echoing the connection's secret does not hand it to the caller
    upstream.reply_on(
        "/base/v1/tokens",
        Reply::json(200, json!({"debug": {"key": "sk_test_rotated_value_2"}})),
    );
    let a = send_form(&app, &checkout, "/v1/gateway/stripe/v1/tokens", "amount=1").await;
    a.assert_blocked("sk_test_rotated_value_2");

    // audited: the connection, the caller, counts, never a value
    let event = wait_for_event(&app, "call_connection", |e| {
        e["connection"] == "stripe@1/charge"
    })
    .await;
    assert_eq!(event["status"], 201, "{event}");
    assert_eq!(event["principal"], "checkout", "{event}");
    assert_eq!(event["counts"]["detokenized"], 5, "{event}");
    assert_eq!(event["counts"]["tokenized"], 1, "{event}");
    assert_eq!(event["counts"]["upstream_status"], 201, "{event}");
    assert!(event["counts"]["upstream_ms"].is_u64(), "{event}");
    assert_audit_has_no_plaintext(
        &app,
        &[
            ADA_CARD,
            ADA_EMAIL,
            GRACE_EMAIL,
            ADA_NAME,
            GRACE_NAME,
            BILLING_EMAIL,
            "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
            "sk_test_rotated_value_2",
        ],
    )
    .await;
    assert_database_has_no_plaintext(
        &app,
        &[
            ADA_CARD,
            ADA_EMAIL,
            BILLING_EMAIL,
            "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
            "sk_test_rotated_value_2",
        ],
    )
    .await;
}

#[tokio::test]
async fn detokenize_rules_honour_their_vault_redaction_and_route_templates() {
    let upstream = Upstream::start().await;
    let app = spawn_app().await;
    let p = payments(&app).await;
    let (status, body) = app
        .post(
            "/v1/vaults",
            json!({"name": "crm", "tables": [{"name": "leads", "columns": [
                {"name": "email", "type": "email"}]}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let lead = insert(&app, "crm", "leads", json!({"email": "lead@example.test"})).await;
    set_policies(&app, &connection_policies("mixed")).await;
    // no default vault: a rule without one searches every vault
    create_connection(
        &app,
        json!({"name": "mixed", "kind": "outbound", "base_url": upstream.base(),
            "routes": [{"name": "customer", "method": "PUT", "path": "/customers/{id}",
                "request": {"detokenize": [
                    {"location": "body", "path": "$.card", "redaction": "masked", "vault": "payments"},
                    {"location": "body", "path": "$.email", "redaction": "plain"},
                    {"location": "body", "path": "$[\"odd key\"]", "redaction": "plain", "vault": "crm"}]}}]}),
    )
    .await;
    let backend = app.service_account("backend", &["app"]).await;
    let call = |path: &'static str, body: Value| {
        let app = &app;
        let backend = &backend;
        async move { send_json(app, Some(backend), Method::PUT, path, &body).await }
    };

    let a = call(
        "/v1/gateway/mixed/customers/cus_1",
        json!({"card": token(&p.ada, "card_number"), "email": token(&lead, "email"),
               "odd key": token(&lead, "email")}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let got = upstream.last();
    assert_eq!(got.path(), "/customers/cus_1");
    let body = got.json();
    assert_eq!(body["email"], "lead@example.test", "{body}");
    assert_eq!(body["odd key"], "lead@example.test", "{body}");
    let masked = body["card"].as_str().unwrap();
    assert!(
        masked.ends_with("4242") && masked != ADA_CARD,
        "masked: {body}"
    );
    assert!(!got.text().contains(ADA_CARD), "{}", got.text());
    // the rule without a vault goes on to the next vault (`crm` is searched first, then
    // `payments`) for a token the first does not hold
    let a = call(
        "/v1/gateway/mixed/customers/cus_1",
        json!({"card": token(&p.ada, "card_number"), "email": token(&p.ada, "email"),
               "odd key": token(&lead, "email")}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let body = upstream.last().json();
    assert_eq!(body["email"], ADA_EMAIL, "{body}");
    assert_eq!(body["odd key"], "lead@example.test", "{body}");

    // a token of another vault is not a token for a rule naming its vault
    let before = upstream.count();
    let a = call(
        "/v1/gateway/mixed/customers/cus_1",
        json!({"card": token(&lead, "email")}),
    )
    .await;
    let answer = a.json();
    let err = assert_error(a.status, &answer, StatusCode::BAD_REQUEST, "invalid_token");
    assert!(
        err["message"].as_str().unwrap().contains("body $.card"),
        "{answer}"
    );
    // the template's parameter is one segment
    for path in [
        "/v1/gateway/mixed/customers",
        "/v1/gateway/mixed/customers/cus_1/extra",
        "/v1/gateway/mixed/customers/",
    ] {
        let a = call(path, json!({})).await;
        assert_error(a.status, &a.json(), StatusCode::NOT_FOUND, "not_found");
    }
    assert_eq!(upstream.count(), before);
    assert_audit_has_no_plaintext(&app, &[ADA_CARD, "lead@example.test"]).await;
}

#[tokio::test]
async fn a_value_that_is_not_a_token_is_refused_and_nothing_is_forwarded() {
    let upstream = Upstream::start().await;
    let app = spawn_app().await;
    let p = payments(&app).await;
    put_secret(&app, "stripe_key", "sk_test_x").await;
    set_policies(&app, &connection_policies("stripe")).await;
    create_connection(&app, stripe_config(&upstream.base())).await;
    let checkout = app.service_account("checkout", &["app"]).await;

    for (body, header, query, location) in [
        (
            json!({"card": {"number": "not-a-token"}}),
            token(&p.ada, "name"),
            token(&p.ada, "name"),
            "body $.card.number",
        ),
        (
            json!({"card": {"number": token(&p.ada, "card_number")},
                   "customers": [{"contact": {"email": token(&p.ada, "email")}}, {"contact": {"email": "eve@example.test"}}]}),
            token(&p.ada, "name"),
            token(&p.ada, "name"),
            "body $.customers[1].contact.email",
        ),
        (
            json!({"card": {"number": token(&p.ada, "card_number")}}),
            "Ada Lovelace".to_string(),
            token(&p.ada, "name"),
            "header x-customer-name",
        ),
        (
            json!({"card": {"number": token(&p.ada, "card_number")}}),
            token(&p.ada, "name"),
            "tok_unknown".to_string(),
            "query customer",
        ),
    ] {
        let a = send(
            &app,
            Some(&checkout),
            Method::POST,
            &format!("/v1/gateway/stripe/v1/charges?customer={query}"),
            &[("x-customer-name", &header)],
            Some(("application/json", body.to_string().into_bytes())),
        )
        .await;
        let answer = a.json();
        let err = assert_error(a.status, &answer, StatusCode::BAD_REQUEST, "invalid_token");
        let message = err["message"].as_str().unwrap().to_string();
        // `[1]` or `[*]`: either names the place
        let (place, path) = location.split_once(' ').unwrap();
        let wildcard = path.replace("[1]", "[*]");
        assert!(
            message.contains(location)
                || message.contains(&format!("{place} {wildcard}"))
                || err["details"].to_string().contains(path),
            "names `{location}`: {answer}"
        );
        assert!(!answer.to_string().contains("not-a-token"), "{answer}");
        assert!(!answer.to_string().contains("eve@example.test"), "{answer}");
        assert_eq!(upstream.count(), 0, "nothing forwarded for {location}");
    }
    // absent locations are skipped
    let a = send_json(
        &app,
        Some(&checkout),
        Method::POST,
        "/v1/gateway/stripe/v1/charges",
        &json!({"amount": 1}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(upstream.last().json(), json!({"amount": 1}));
    assert_audit_has_no_plaintext(&app, &["not-a-token", "eve@example.test", ADA_CARD]).await;
}

#[tokio::test]
async fn callers_need_call_connection_and_the_connection_needs_detokenize() {
    let upstream = Upstream::start().await;
    let app = spawn_app().await;
    let p = payments(&app).await;
    put_secret(&app, "stripe_key", "sk_test_x").await;
    create_connection(&app, stripe_config(&upstream.base())).await;
    let checkout = app.service_account("checkout", &["app"]).await;
    let other = app.service_account("reporting", &["analyst"]).await;
    let body = json!({"card": {"number": token(&p.ada, "card_number")}});

    // the connection may detokenize, only `app` may call it
    set_policies(&app, &connection_policies("stripe")).await;
    let a = send_json(
        &app,
        Some(&other),
        Method::POST,
        "/v1/gateway/stripe/v1/charges",
        &body,
    )
    .await;
    assert_error(a.status, &a.json(), StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(upstream.count(), 0);
    // no key, a wrong key
    let a = send_json(
        &app,
        None,
        Method::POST,
        "/v1/gateway/stripe/v1/charges",
        &body,
    )
    .await;
    assert_error(
        a.status,
        &a.json(),
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    let a = send_json(
        &app,
        Some("sr_wrong"),
        Method::POST,
        "/v1/gateway/stripe/v1/charges",
        &body,
    )
    .await;
    assert_error(
        a.status,
        &a.json(),
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    assert_eq!(upstream.count(), 0);
    // an unknown route, an unknown connection
    let a = send_json(
        &app,
        Some(&checkout),
        Method::POST,
        "/v1/gateway/stripe/v1/refunds",
        &body,
    )
    .await;
    assert_error(a.status, &a.json(), StatusCode::NOT_FOUND, "not_found");
    let a = send_json(
        &app,
        Some(&checkout),
        Method::GET,
        "/v1/gateway/stripe/v1/charges",
        &body,
    )
    .await;
    assert_error(a.status, &a.json(), StatusCode::NOT_FOUND, "not_found");
    assert_eq!(upstream.count(), 0);

    // the caller may call, but the connection may not detokenize the card column
    set_policies(
        &app,
        r#"@id("checkout-calls")
permit(principal in Strongroom::Role::"app", action == Strongroom::Action::"call_connection", resource == Strongroom::Connection::"stripe");"#,
    )
    .await;
    let a = send_json(
        &app,
        Some(&checkout),
        Method::POST,
        "/v1/gateway/stripe/v1/charges",
        &body,
    )
    .await;
    let answer = a.json();
    let err = assert_error(a.status, &answer, StatusCode::FORBIDDEN, "forbidden");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("body $.card.number"),
        "{answer}"
    );
    assert_eq!(upstream.count(), 0, "nothing forwarded");
    let event = wait_for_event(&app, "call_connection", |e| {
        e["status"] == 403 && e["principal"] == "reporting"
    })
    .await;
    assert!(
        event["connection"].to_string().contains("stripe"),
        "{event}"
    );
    let event = wait_for_event(&app, "call_connection", |e| {
        e["status"] == 403 && e["principal"] == "checkout"
    })
    .await;
    assert!(
        event["connection"].to_string().contains("stripe"),
        "{event}"
    );
    assert_audit_has_no_plaintext(&app, &[ADA_CARD]).await;
}

#[tokio::test]
async fn card_numbers_go_upstream_but_never_back_to_the_caller() {
    let upstream = Upstream::start().await;
    upstream.reply_on("/v1/echo", Reply::echo());
    let app = spawn_app().await;
    let p = payments(&app).await;
    put_secret(&app, "stripe_key", "sk_test_x").await;
    set_policies(&app, &connection_policies("stripe")).await;
    create_connection(&app, stripe_config(&upstream.base())).await;
    let checkout = app.service_account("checkout", &["app"]).await;

    let a = send_json(
        &app,
        Some(&checkout),
        Method::POST,
        "/v1/gateway/stripe/v1/echo",
        &json!({"card": {"number": token(&p.ada, "card_number")}, "amount": 5}),
    )
    .await;
    // the guardrail on plaintext cards does not apply to the third party...
    assert_eq!(upstream.count(), 1);
    assert_eq!(upstream.last().json()["card"]["number"], ADA_CARD);
    // ...but the echo would carry it back
    let answer = a.json();
    assert_error(a.status, &answer, StatusCode::BAD_GATEWAY, "egress_blocked");
    assert!(!a.text().contains(ADA_CARD), "{}", a.text());
    assert!(
        !a.headers
            .iter()
            .any(|(_, v)| v.to_str().unwrap_or_default().contains(ADA_CARD)),
        "{:?}",
        a.headers
    );

    // also when the value comes back in a header, in another shape of body or inside base64,
    // and when a compressed reply cannot be inspected (after a reveal it does not pass)
    for reply in [
        Reply::json(200, json!({"ok": true})).header("x-card", ADA_CARD),
        Reply::text(200, &format!("last card used: {ADA_CARD}.")),
        Reply::text(200, "\u{1f}\u{8b} opaque bytes").header("content-encoding", "gzip"),
        // a coding in a second header, or second in a list, is a coding all the same
        Reply::text(200, "\u{1f}\u{8b} opaque bytes")
            .header("content-encoding", "identity")
            .header("content-encoding", "gzip"),
        Reply::text(200, "\u{1f}\u{8b} opaque bytes").header("content-encoding", "identity, gzip"),
        // base64 of a text holding it, the card 5 bytes in (not on a 3-byte boundary)
        Reply::json(
            200,
            json!({"receipt": STANDARD.encode(format!("card={ADA_CARD};amount=5"))}),
        ),
    ] {
        upstream.reply_on("/v1/echo", reply);
        let a = send_json(
            &app,
            Some(&checkout),
            Method::POST,
            "/v1/gateway/stripe/v1/echo",
            &json!({"card": {"number": token(&p.ada, "card_number")}}),
        )
        .await;
        a.assert_blocked(ADA_CARD);
    }

    let event = wait_for_event(&app, "call_connection", |e| e["status"] == 502).await;
    assert!(
        event["connection"].to_string().contains("stripe"),
        "{event}"
    );

    // with a rule tokenizing it, the echoed card comes back as a token of the card column
    upstream.reply_on("/v1/echo-tokenized", Reply::echo());
    let a = send_json(
        &app,
        Some(&checkout),
        Method::POST,
        "/v1/gateway/stripe/v1/echo-tokenized",
        &json!({"card": {"number": token(&p.ada, "card_number")}, "amount": 5}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert!(!a.text().contains(ADA_CARD), "{}", a.text());
    let reply = a.json();
    assert_eq!(reply["amount"], 5, "{reply}");
    let card_token = reply["card"]["number"].as_str().unwrap().to_string();
    let masked = detokenize(&app, "payments", &card_token, "masked").await;
    assert!(masked.ends_with("4242") && masked != ADA_CARD, "{masked}");

    // a reply whose body is encoded (in any of its Content-Encoding headers) cannot be
    // tokenized: it is the upstream's error
    upstream.reply_on(
        "/v1/echo-tokenized",
        Reply::json(200, json!({"card": {"number": ADA_CARD}}))
            .header("content-encoding", "identity")
            .header("content-encoding", "gzip"),
    );
    let a = send_json(
        &app,
        Some(&checkout),
        Method::POST,
        "/v1/gateway/stripe/v1/echo-tokenized",
        &json!({"card": {"number": token(&p.ada, "card_number")}}),
    )
    .await;
    assert_error(
        a.status,
        &a.json(),
        StatusCode::BAD_GATEWAY,
        "upstream_error",
    );
    assert!(!a.text().contains(ADA_CARD), "{}", a.text());
    assert_audit_has_no_plaintext(&app, &[ADA_CARD]).await;
}

// ---- 3. functions on the path ----------------------------------------------------------------

fn manifest(name: &str, grants: Value) -> Value {
    json!({"name": name, "description": "connection test", "grants": grants,
           "limits": {"memory_mib": 64, "timeout_ms": 2000}})
}

async fn upload(app: &TestApp, name: &str, component: &str, grants: Value) -> String {
    let (status, up) = app
        .upload_function(manifest(name, grants), guest(component), None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{up}");
    up["version"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn payment_reshape_sends_the_real_card_form_encoded() {
    let upstream = Upstream::start().await;
    upstream.reply_with(Reply::json(
        200,
        json!({"id": "ch_2", "status": "succeeded"}),
    ));
    let app = spawn_app().await;
    let p = payments(&app).await;
    set_policies(
        &app,
        &format!("{FUNCTIONS_MAY_READ}{}", connection_policies("stripe")),
    )
    .await;
    let version = upload(
        &app,
        "stripe-reshape",
        "payment_reshape",
        json!([{"vault": "payments", "table": "customers", "columns": ["card_number"], "redaction": "plain"}]),
    )
    .await;
    create_connection(
        &app,
        json!({"name": "stripe", "kind": "outbound", "base_url": upstream.base(),
            "routes": [{"name": "charge", "method": "POST", "path": "/v1/charges",
                        "request": {"function": "stripe-reshape"}}]}),
    )
    .await;
    let checkout = app.service_account("checkout", &["app"]).await;

    let a = send_json(
        &app,
        Some(&checkout),
        Method::POST,
        "/v1/gateway/stripe/v1/charges",
        &json!({"amount": 1000, "currency": "USD",
            "card": {"number": token(&p.ada, "card_number"), "exp_month": 12, "exp_year": 2030, "cvc": "123"},
            "description": "Order #42", "metadata": {"order": "42"}}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.json(), json!({"id": "ch_2", "status": "succeeded"}));

    let got = upstream.last();
    assert_eq!(got.path(), "/v1/charges");
    assert!(
        got.header("content-type")
            .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded")),
        "{}",
        got.headers_text()
    );
    let form = got.form();
    assert_eq!(
        form.get("card[number]").map(String::as_str),
        Some(ADA_CARD),
        "{}",
        got.text()
    );
    assert_eq!(form.get("amount").map(String::as_str), Some("1000"));
    assert_eq!(form.get("currency").map(String::as_str), Some("usd"));
    assert_eq!(form.get("card[exp_month]").map(String::as_str), Some("12"));
    assert_eq!(form.get("card[exp_year]").map(String::as_str), Some("2030"));
    assert_eq!(
        form.get("description").map(String::as_str),
        Some("Order #42")
    );
    assert_eq!(form.get("metadata[order]").map(String::as_str), Some("42"));
    assert_eq!(
        got.header("content-length")
            .map(|l| l.parse::<usize>().unwrap()),
        Some(got.body.len()),
        "no stale content-length"
    );

    let event = wait_for_event(&app, "call_connection", |e| {
        e["connection"] == "stripe@1/charge"
    })
    .await;
    assert_eq!(
        event["function"],
        format!("stripe-reshape@{version}"),
        "{event}"
    );
    assert!(
        event["counts"].as_object().is_some_and(|c| !c.is_empty()),
        "{event}"
    );
    assert_eq!(event["counts"]["upstream_status"], 200, "{event}");
    assert_eq!(event["status"], 200, "{event}");
    assert_audit_has_no_plaintext(&app, &[ADA_CARD]).await;
    assert_database_has_no_plaintext(&app, &[ADA_CARD]).await;

    // a function's refusal is the caller's 400
    let a = send_json(
        &app,
        Some(&checkout),
        Method::POST,
        "/v1/gateway/stripe/v1/charges",
        &json!({"amount": -5, "currency": "usd",
            "card": {"number": token(&p.ada, "card_number"), "exp_month": 12, "exp_year": 2030}}),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text());
    assert_eq!(upstream.count(), 1, "a refused request is not forwarded");
    assert!(!a.text().contains(ADA_CARD));
}

/// A response function on a route that detokenizes the query: the call goes through, the
/// plaintext goes upstream only, and the reply comes back through the function. (Which URL the
/// function is shown, the caller's with its tokens, no stored guest reports; the choice is unit
/// tested in the gateway.)
#[tokio::test]
async fn a_response_function_runs_on_a_route_that_detokenizes_the_query() {
    let upstream = Upstream::start().await;
    upstream.reply_with(Reply::json(200, json!({"found": true})));
    let app = spawn_app().await;
    let p = payments(&app).await;
    set_policies(&app, &connection_policies("lookup")).await;
    upload(&app, "pass-through", "hostile_trivial", json!([])).await;
    create_connection(
        &app,
        json!({"name": "lookup", "kind": "outbound", "base_url": upstream.base(), "vault": "payments",
            "routes": [{"name": "find", "method": "GET", "path": "/customers",
                        "request": {"detokenize": [{"location": "query", "path": "email", "redaction": "plain"}]},
                        "response": {"function": "pass-through"}}]}),
    )
    .await;
    let email = token(&p.ada, "email");
    let a = send(
        &app,
        Some(ADMIN_KEY),
        Method::GET,
        &format!("/v1/gateway/lookup/customers?email={email}"),
        &[],
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.json(), json!({"found": true}));
    let got = upstream.last();
    assert!(
        got.query_pairs()
            .contains(&("email".to_string(), ADA_EMAIL.to_string())),
        "{:?}",
        got.query()
    );
    assert!(!a.text().contains(ADA_EMAIL));
}

#[tokio::test]
async fn date_split_reshapes_a_date_of_birth_for_a_kyc_route() {
    let upstream = Upstream::start().await;
    upstream.reply_with(Reply::json(200, json!({"verified": true, "score": 0.98})));
    let app = spawn_app().await;
    app.payments_vault().await;
    let rec = insert(
        &app,
        "payments",
        "customers",
        json!({"name": ADA_NAME, "dob": "1990-05-17"}),
    )
    .await;
    set_policies(
        &app,
        &format!("{FUNCTIONS_MAY_READ}{}", connection_policies("kyc")),
    )
    .await;
    let version = upload(
        &app,
        "date-split",
        "date_split",
        json!([{"vault": "payments", "table": "customers", "columns": ["dob"], "redaction": "plain"}]),
    )
    .await;
    create_connection(
        &app,
        json!({"name": "kyc", "kind": "outbound", "base_url": format!("{}/kyc", upstream.base()),
            "routes": [{"name": "verify", "method": "POST", "path": "/v2/verifications",
                        "request": {"function": "date-split"}}]}),
    )
    .await;
    let backend = app.service_account("onboarding", &["app"]).await;

    let a = send(
        &app,
        Some(&backend),
        Method::POST,
        "/v1/gateway/kyc/v2/verifications",
        &[("x-date-split-field", "$.applicant.dob")],
        Some((
            "application/json",
            json!({"applicant": {"name": "Ada", "dob": token(&rec, "dob")}, "country": "GB"})
                .to_string()
                .into_bytes(),
        )),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.json()["verified"], true);

    let got = upstream.last();
    assert_eq!(got.path(), "/kyc/v2/verifications");
    let body = got.json();
    assert_eq!(body["applicant"]["dob_day"], 17, "{body}");
    assert_eq!(body["applicant"]["dob_month"], 5, "{body}");
    assert_eq!(body["applicant"]["dob_year"], 1990, "{body}");
    assert!(body["applicant"].get("dob").is_none(), "{body}");
    assert_eq!(body["applicant"]["name"], "Ada");
    assert_eq!(body["country"], "GB");
    assert!(
        got.header("x-date-split-field").is_none(),
        "the function removes its header: {}",
        got.headers_text()
    );

    let event = wait_for_event(&app, "call_connection", |e| {
        e["connection"] == "kyc@1/verify"
    })
    .await;
    assert_eq!(
        event["function"],
        format!("date-split@{version}"),
        "{event}"
    );
    assert_audit_has_no_plaintext(&app, &["1990-05-17", ADA_NAME]).await;
}

/// A vault document, the `file-extract` function and an outbound connection `esign` whose
/// route ships the document to `upstream`; returns the server, the record holding `file`, the
/// function's version and a backend's key.
async fn esign_route(upstream: &Upstream, file: &[u8]) -> (TestApp, String, String, String) {
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/v1/vaults",
            json!({"name": "legal", "tables": [{"name": "contracts", "columns": [
                {"name": "pdf", "type": "file"}]}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let rec = insert(
        &app,
        "legal",
        "contracts",
        json!({"pdf": {"name": "contract.pdf", "media_type": "application/pdf",
                       "content_base64": STANDARD.encode(file)}}),
    )
    .await;
    let record = rec["id"].as_str().unwrap().to_string();
    set_policies(
        &app,
        &format!("{FUNCTIONS_MAY_READ}{}", connection_policies("esign")),
    )
    .await;
    let version = upload(
        &app,
        "file-extract",
        "file_extract",
        json!([{"vault": "legal", "table": "contracts", "columns": ["pdf"], "redaction": "plain"}]),
    )
    .await;
    create_connection(
        &app,
        json!({"name": "esign", "kind": "outbound", "base_url": upstream.base(),
            "routes": [{"name": "envelope", "method": "POST", "path": "/envelopes",
                        "request": {"function": "file-extract"}}]}),
    )
    .await;
    let backend = app.service_account("contracts", &["app"]).await;

    (app, record, version, backend)
}

/// Calls `esign_route`'s route as `backend`, for the document in `record`.
async fn send_envelope(app: &TestApp, backend: &str, record: &str) -> Answer {
    send_json(
        app,
        Some(backend),
        Method::POST,
        "/v1/gateway/esign/envelopes",
        &json!({"document": {"vault": "legal", "table": "contracts", "record": record, "column": "pdf"},
                "signer": {"name": "Ada Lovelace", "email": "ada@example.test"},
                "subject": "Please sign"}),
    )
    .await
}

/// An upstream that echoes the request hands the shipped document back base64-encoded: the
/// caller gets 502 `egress_blocked`, never the file, whether the file is text or binary.
#[tokio::test]
async fn an_upstream_echoing_a_shipped_file_is_refused() {
    let binary: Vec<u8> = (0..200u8).map(|i| i.wrapping_mul(151) | 0x80).collect();
    assert!(std::str::from_utf8(&binary).is_err());
    for file in [
        b"%PDF-1.7\n% a text-only contract\n%%EOF\n".to_vec(),
        binary,
    ] {
        let upstream = Upstream::start().await;
        upstream.reply_with(Reply::echo());
        let (app, record, _, backend) = esign_route(&upstream, &file).await;
        let a = send_envelope(&app, &backend, &record).await;
        assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.text());
        assert_eq!(a.json()["error"]["code"], "egress_blocked", "{}", a.text());
        assert!(
            !a.text().contains(&STANDARD.encode(&file)[8..40]),
            "{}",
            a.text()
        );
        // it did go upstream, where it belongs
        assert!(upstream.last().text().contains(&STANDARD.encode(&file)));
    }
}

#[tokio::test]
async fn file_extract_ships_a_vault_document_to_an_e_signature_route() {
    const PDF: &[u8] = b"%PDF-1.7\n% the contract between Ada and the vault\n%%EOF\n";
    let upstream = Upstream::start().await;
    upstream.reply_with(Reply::json(
        201,
        json!({"envelope_id": "env_7", "status": "sent"}),
    ));
    let (app, record, version, backend) = esign_route(&upstream, PDF).await;
    let a = send_envelope(&app, &backend, &record).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    assert_eq!(a.json()["envelope_id"], "env_7");
    assert!(!a.text().contains(&STANDARD.encode(PDF)));

    let got = upstream.last();
    let body = got.json();
    assert_eq!(
        body["documents"][0]["document_base64"],
        STANDARD.encode(PDF),
        "{body}"
    );
    assert_eq!(body["documents"][0]["name"], "contract.pdf", "{body}");
    assert_eq!(
        body["documents"][0]["media_type"], "application/pdf",
        "{body}"
    );
    assert_eq!(body["signer"]["email"], "ada@example.test", "{body}");
    assert_eq!(body["subject"], "Please sign");
    assert!(body.get("document").is_none(), "{body}");

    let event = wait_for_event(&app, "call_connection", |e| {
        e["connection"] == "esign@1/envelope"
    })
    .await;
    assert_eq!(
        event["function"],
        format!("file-extract@{version}"),
        "{event}"
    );
    assert!(
        event["counts"].as_object().is_some_and(|c| !c.is_empty()),
        "{event}"
    );
    assert_audit_has_no_plaintext(&app, &[&STANDARD.encode(PDF), "the contract between"]).await;
    assert_database_has_no_plaintext(&app, &[&STANDARD.encode(PDF), "the contract between"]).await;
}

// ---- 4. inbound ------------------------------------------------------------------------------

const NEO_EMAIL: &str = "neo@example.test";
const NEO_CARD: &str = "4000056655665556";

/// Behind a proxy the operator trusts, a public route counts each client its
/// `X-Forwarded-For` names, and forwards that address; what a client writes further left is not
/// believed. Without the setting the header is the client's own claim and changes nothing.
#[tokio::test]
async fn a_public_route_counts_each_client_behind_a_trusted_proxy() {
    let upstream = Upstream::start().await;
    upstream.reply_on("/app/status", Reply::json(200, json!({"up": true})));
    async fn status(app: &TestApp, xff: &str) -> StatusCode {
        let headers = [("x-forwarded-for", xff)];
        send(
            app,
            None,
            Method::GET,
            "/v1/inbound/hooks/status",
            &headers,
            None,
        )
        .await
        .status
    }
    let public = json!({"name": "hooks", "kind": "inbound",
        "upstream": format!("{}/app", upstream.base()),
        "rate_limit": {"per_minute": 2},
        "routes": [{"name": "status", "method": "GET", "path": "/status", "public": true}]});

    let app = TestApp::spawn_with(|s| {
        s.egress_allow_networks = "127.0.0.1/32".into();
        s.egress_allow_http_hosts = "127.0.0.1".into();
        s.trusted_proxies = "127.0.0.0/8".into();
    })
    .await;
    set_policies(&app, &connection_policies("hooks")).await;
    create_connection(&app, public.clone()).await;
    for _ in 0..2 {
        assert_eq!(status(&app, "198.51.100.7").await, StatusCode::OK);
    }
    assert_eq!(
        upstream.last().header("x-forwarded-for"),
        Some("198.51.100.7")
    );
    assert_eq!(
        status(&app, "198.51.100.7").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another client has its own count, and cannot borrow one by naming another address.
    assert_eq!(status(&app, "203.0.113.9").await, StatusCode::OK);
    assert_eq!(status(&app, "10.9.9.9, 203.0.113.9").await, StatusCode::OK);
    assert_eq!(
        status(&app, "192.0.2.1, 203.0.113.9").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        upstream.last().header("x-forwarded-for"),
        Some("203.0.113.9")
    );

    // Without trusted proxies, every call here comes from 127.0.0.1.
    let app = spawn_app().await;
    set_policies(&app, &connection_policies("hooks")).await;
    create_connection(&app, public).await;
    for _ in 0..2 {
        assert_eq!(status(&app, "198.51.100.7").await, StatusCode::OK);
    }
    assert_eq!(upstream.last().header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(
        status(&app, "203.0.113.9").await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn inbound_requests_are_tokenized_signed_and_forwarded() {
    let upstream = Upstream::start().await;
    upstream.reply_on("/app/signup", Reply::json(201, json!({"welcome": true})));
    let app = spawn_app().await;
    app.payments_vault().await;
    put_secret(&app, "signup_signing", "whsec_test_0123456789").await;
    set_policies(&app, &connection_policies("signup")).await;
    let created = create_connection(
        &app,
        json!({"name": "signup", "kind": "inbound", "upstream": format!("{}/app", upstream.base()),
            "signing_secret": "signup_signing",
            "rate_limit": {"per_minute": 3},
            "routes": [
                {"name": "signup", "method": "POST", "path": "/signup",
                 "request": {"tokenize": [
                    {"location": "body", "path": "$.email", "vault": "payments", "table": "customers", "column": "email"},
                    {"location": "body", "path": "$.card", "vault": "payments", "table": "customers", "column": "card_number"}]}},
                {"name": "status", "method": "GET", "path": "/status", "public": true}]}),
    )
    .await;
    assert_eq!(created["version"], 1, "{created}");
    let key = created["api_key"].as_str().unwrap().to_string();
    assert!(key.starts_with("sr_"), "{created}");
    let (_, again) = app.get("/v1/connections/signup").await;
    assert!(
        !again.to_string().contains(&key),
        "the key is shown once: {again}"
    );

    let body = json!({"email": NEO_EMAIL, "card": NEO_CARD, "plan": "pro"});
    let a = send_json(
        &app,
        Some(&key),
        Method::POST,
        "/v1/inbound/signup/signup",
        &body,
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    assert_eq!(a.json(), json!({"welcome": true}));

    let got = upstream.last();
    assert_eq!(got.path(), "/app/signup");
    assert!(!got.all_text().contains(NEO_EMAIL), "{}", got.all_text());
    assert!(!got.all_text().contains(NEO_CARD), "{}", got.all_text());
    assert!(
        !got.headers_text().contains(&key),
        "the client's key stays here"
    );
    let forwarded = got.json();
    assert_eq!(forwarded["plan"], "pro");
    let email_token = forwarded["email"].as_str().unwrap().to_string();
    let card_token = forwarded["card"].as_str().unwrap().to_string();
    assert_eq!(
        card_token.len(),
        NEO_CARD.len(),
        "format preserving: {card_token}"
    );
    assert!(
        card_token.ends_with("5556") || crate::luhn(&card_token),
        "{card_token}"
    );
    assert_eq!(got.header("x-strongroom-connection"), Some("signup"));
    assert_eq!(
        got.headers
            .iter()
            .filter(|(n, _)| n == "x-strongroom-signature")
            .count(),
        1
    );

    // the signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>
    let signature = got.header("x-strongroom-signature").unwrap().to_string();
    let (t, v1) = signature
        .split_once(',')
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v1=")?)))
        .unwrap_or_else(|| panic!("signature format: {signature}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let t_secs: u64 = t.parse().unwrap();
    assert!(now.abs_diff(t_secs) < 60, "{signature}");
    let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec_test_0123456789").unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&got.body);
    assert_eq!(v1, hex::encode(mac.finalize().into_bytes()), "{signature}");

    // a client cannot forge the gateway's own headers
    let forged = send(
        &app,
        Some(&key),
        Method::POST,
        "/v1/inbound/signup/signup",
        &[
            ("x-strongroom-signature", "t=1,v1=forged"),
            ("x-strongroom-connection", "other"),
        ],
        Some(("application/json", br#"{"plan":"forged"}"#.to_vec())),
    )
    .await;
    assert_eq!(forged.status, StatusCode::CREATED, "{}", forged.text());
    let f = upstream.last();
    assert!(!f.headers_text().contains("forged"), "{}", f.headers_text());
    assert!(!f.headers_text().contains("x-strongroom-connection: other"));
    assert_eq!(f.header("x-strongroom-connection"), Some("signup"));

    // the tokens are the vault's
    assert_eq!(
        detokenize(&app, "payments", &email_token, "plain").await,
        NEO_EMAIL
    );
    let masked = detokenize(&app, "payments", &card_token, "masked").await;
    assert!(
        masked.ends_with("5556") && !masked.contains(NEO_CARD),
        "{masked}"
    );

    // the connection's key is required on private routes
    let before = upstream.count();
    let a = send_json(&app, None, Method::POST, "/v1/inbound/signup/signup", &body).await;
    assert_error(
        a.status,
        &a.json(),
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    let a = send_json(
        &app,
        Some("sr_not_the_key"),
        Method::POST,
        "/v1/inbound/signup/signup",
        &body,
    )
    .await;
    assert_error(
        a.status,
        &a.json(),
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    // and a service account's key (even the admin's) is not the connection's key
    let a = send_json(
        &app,
        Some(ADMIN_KEY),
        Method::POST,
        "/v1/inbound/signup/signup",
        &body,
    )
    .await;
    assert_error(
        a.status,
        &a.json(),
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    assert_eq!(
        upstream.count(),
        before,
        "nothing forwarded without the key"
    );

    // extra keys and their revocation
    let (status, k2) = app.post("/v1/connections/signup/keys", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{k2}");
    let key2 = k2["api_key"].as_str().unwrap().to_string();
    let a = send_json(
        &app,
        Some(&key2),
        Method::POST,
        "/v1/inbound/signup/signup",
        &json!({"plan": "free"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    let (status, _) = app
        .delete(&format!(
            "/v1/connections/signup/keys/{}",
            k2["key_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let a = send_json(
        &app,
        Some(&key2),
        Method::POST,
        "/v1/inbound/signup/signup",
        &json!({"plan": "free"}),
    )
    .await;
    assert_error(
        a.status,
        &a.json(),
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );

    // a public route needs no key, and is rate-limited per client
    for i in 0..3 {
        let a = send(
            &app,
            None,
            Method::GET,
            "/v1/inbound/signup/status",
            &[],
            None,
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "call {i}: {}", a.text());
    }
    let before = upstream.count();
    let a = send(
        &app,
        None,
        Method::GET,
        "/v1/inbound/signup/status",
        &[],
        None,
    )
    .await;
    assert_error(
        a.status,
        &a.json(),
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    );
    assert_eq!(upstream.count(), before);

    let event = wait_for_event(&app, "inbound_connection", |e| {
        e["connection"] == "signup@1/signup" && e["status"] == 201
    })
    .await;
    assert!(
        event["counts"]["tokenized"]
            .as_u64()
            .is_some_and(|n| n >= 2),
        "{event}"
    );
    assert_audit_has_no_plaintext(&app, &[NEO_EMAIL, NEO_CARD, "whsec_test_0123456789"]).await;
    assert_database_has_no_plaintext(&app, &[NEO_EMAIL, NEO_CARD, "whsec_test_0123456789"]).await;
}

#[tokio::test]
async fn inbound_tokenize_needs_the_connections_permission() {
    let upstream = Upstream::start().await;
    let app = spawn_app().await;
    app.payments_vault().await;
    // no policy lets the connection tokenize
    let created = create_connection(
        &app,
        json!({"name": "signup", "kind": "inbound", "upstream": upstream.base(),
            "routes": [{"name": "signup", "method": "POST", "path": "/signup",
                 "request": {"tokenize": [
                    {"location": "body", "path": "$.email", "vault": "payments", "table": "customers", "column": "email"}]}}]}),
    )
    .await;
    let key = created["api_key"].as_str().unwrap().to_string();
    let a = send_json(
        &app,
        Some(&key),
        Method::POST,
        "/v1/inbound/signup/signup",
        &json!({"email": NEO_EMAIL}),
    )
    .await;
    assert_error(a.status, &a.json(), StatusCode::FORBIDDEN, "forbidden");
    assert!(!a.text().contains(NEO_EMAIL));
    assert_eq!(
        upstream.count(),
        0,
        "plaintext is never forwarded untokenized"
    );
    assert_audit_has_no_plaintext(&app, &[NEO_EMAIL]).await;
}

// ---- 5. upstream failures and path tricks ----------------------------------------------------

fn proxy_config(name: &str, base_url: &str, total_ms: u64) -> Value {
    json!({"name": name, "kind": "outbound", "base_url": base_url,
           "timeouts": {"connect_ms": 1000, "total_ms": total_ms},
           "routes": [{"name": "any", "method": "*", "path": "/{*rest}"}]})
}

#[tokio::test]
async fn upstream_failures_become_gateway_errors() {
    let upstream = Upstream::start().await;
    upstream.reply_on(
        "/slow",
        Reply::json(200, json!({"late": true})).delay(Duration::from_secs(5)),
    );
    upstream.reply_on(
        "/v1/charges/ch_missing",
        Reply::json(
            404,
            json!({"error": {"type": "invalid_request_error", "message": "No such charge"}}),
        )
        .header("x-upstream-error", "missing"),
    );
    upstream.reply_on("/boom", Reply::text(500, "upstream exploded"));
    let app = spawn_app().await;
    create_connection(&app, proxy_config("proxy", &upstream.base(), 800)).await;
    create_connection(
        &app,
        proxy_config(
            "closed",
            &format!("http://127.0.0.1:{}", closed_port()),
            800,
        ),
    )
    .await;

    // too slow
    let started = std::time::Instant::now();
    let a = send(
        &app,
        Some(ADMIN_KEY),
        Method::GET,
        "/v1/gateway/proxy/slow",
        &[],
        None,
    )
    .await;
    assert_error(
        a.status,
        &a.json(),
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_timeout",
    );
    assert!(
        started.elapsed() < Duration::from_millis(4000),
        "{:?}",
        started.elapsed()
    );
    // nobody listening
    let a = send(
        &app,
        Some(ADMIN_KEY),
        Method::GET,
        "/v1/gateway/closed/anything",
        &[],
        None,
    )
    .await;
    assert_error(
        a.status,
        &a.json(),
        StatusCode::BAD_GATEWAY,
        "upstream_error",
    );
    // the third party's own errors pass through as they are
    let a = send(
        &app,
        Some(ADMIN_KEY),
        Method::GET,
        "/v1/gateway/proxy/v1/charges/ch_missing",
        &[],
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text());
    assert_eq!(
        a.json(),
        json!({"error": {"type": "invalid_request_error", "message": "No such charge"}})
    );
    assert_eq!(
        a.headers
            .get("x-upstream-error")
            .and_then(|v| v.to_str().ok()),
        Some("missing")
    );
    let a = send(
        &app,
        Some(ADMIN_KEY),
        Method::POST,
        "/v1/gateway/proxy/boom",
        &[],
        Some(("text/plain", b"hi".to_vec())),
    )
    .await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", a.text());
    assert_eq!(a.text(), "upstream exploded");
    assert!(
        a.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/plain")),
        "{:?}",
        a.headers
    );

    // each is audited, with its status
    for (connection, status) in [
        ("proxy", 504),
        ("closed", 502),
        ("proxy", 404),
        ("proxy", 500),
    ] {
        let event = wait_for_event(&app, "call_connection", |e| {
            e["status"] == status && e["connection"].to_string().contains(connection)
        })
        .await;
        assert_eq!(event["principal"], "admin", "{event}");
    }
}

/// A bare TCP third party: answers every request with `answer`, written as is, then closes.
fn raw_upstream(answer: &'static [u8]) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = stream.write_all(answer);
            // Keep a switched (101) connection open a moment, as a real upgrade would.
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    base
}

#[tokio::test]
async fn upstream_statuses_outside_200_to_599_are_502() {
    let app = spawn_app().await;
    for (name, answer) in [
        (
            "switching",
            &b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"[..],
        ),
        (
            "odd",
            &b"HTTP/1.1 700 Odd\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"[..],
        ),
    ] {
        create_connection(&app, proxy_config(name, &raw_upstream(answer), 2000)).await;
        let a = send(
            &app,
            Some(ADMIN_KEY),
            Method::GET,
            &format!("/v1/gateway/{name}/x"),
            &[],
            None,
        )
        .await;
        assert_error(a.status, &a.json(), StatusCode::BAD_GATEWAY, "upstream_error");
    }
}

#[tokio::test]
async fn a_broken_request_body_is_400_and_only_an_oversized_one_413() {
    let upstream = Upstream::start().await;
    let app = spawn_app().await;
    create_connection(&app, proxy_config("proxy", &upstream.base(), 2000)).await;
    let auth = format!("Authorization: Bearer {ADMIN_KEY}");
    // a chunk size that is not hex
    let head = format!(
        "POST /v1/gateway/proxy/x HTTP/1.1\r\n{auth}\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close"
    );
    let answer = raw_exchange(
        &app,
        &head,
        b"zz\r\nhello\r\n0\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    let (status, body) = answer.expect("an answer");
    assert_error(
        StatusCode::from_u16(status).unwrap(),
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    // a chunked body over the cap is still 413
    create_connection(
        &app,
        json!({"name": "small", "kind": "outbound", "base_url": upstream.base(), "max_body_bytes": 8,
               "routes": [{"name": "any", "method": "*", "path": "/{*rest}"}]}),
    )
    .await;
    let head = format!(
        "POST /v1/gateway/small/x HTTP/1.1\r\n{auth}\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close"
    );
    let answer = raw_exchange(
        &app,
        &head,
        b"10\r\n0123456789abcdef\r\n0\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    let (status, body) = answer.expect("an answer");
    assert_error(
        StatusCode::from_u16(status).unwrap(),
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn a_reply_value_a_unique_column_already_holds_is_the_upstreams_502() {
    let upstream = Upstream::start().await;
    upstream.reply_with(Reply::json(200, json!({"code": "taken-code-1"})));
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/v1/vaults",
            json!({"name": "scratch", "tables": [{"name": "people", "columns": [
                {"name": "code", "type": "string", "unique": true}]}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    insert(&app, "scratch", "people", json!({"code": "taken-code-1"})).await;
    set_policies(&app, &connection_policies("out")).await;
    create_connection(
        &app,
        json!({"name": "out", "kind": "outbound", "base_url": upstream.base(),
               "routes": [{"name": "r", "method": "POST", "path": "/r", "response": {"tokenize": [
                   {"location": "body", "path": "$.code", "vault": "scratch", "table": "people", "column": "code"}]}}]}),
    )
    .await;
    let a = send_json(
        &app,
        Some(ADMIN_KEY),
        Method::POST,
        "/v1/gateway/out/r",
        &json!({}),
    )
    .await;
    assert_error(
        a.status,
        &a.json(),
        StatusCode::BAD_GATEWAY,
        "upstream_error",
    );
    assert!(!a.text().contains("taken-code-1"), "{}", a.text());
}

#[tokio::test]
async fn inbound_failures_tell_the_client_nothing_internal() {
    let upstream = Upstream::start().await;
    let app = spawn_app().await;
    upload(&app, "panicky-intake", "hostile_panic", json!([])).await;
    create_connection(
        &app,
        json!({"name": "intake", "kind": "inbound", "upstream": upstream.base(),
               "routes": [{"name": "r", "method": "POST", "path": "/r", "public": true,
                           "request": {"function": "panicky-intake"}}]}),
    )
    .await;
    create_connection(
        &app,
        json!({"name": "gone", "kind": "inbound",
               "upstream": format!("http://127.0.0.1:{}", closed_port()),
               "routes": [{"name": "r", "method": "POST", "path": "/r", "public": true}]}),
    )
    .await;
    for path in ["/v1/inbound/intake/r", "/v1/inbound/gone/r"] {
        let a = send_json(&app, None, Method::POST, path, &json!({"a": 1})).await;
        let answer = a.json();
        assert_error(a.status, &answer, StatusCode::BAD_GATEWAY, "upstream_error");
        assert_eq!(
            answer["error"]["message"], "the connection cannot be used now",
            "{path}: {answer}"
        );
    }
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn path_tricks_never_reach_the_upstream() {
    let upstream = Upstream::start().await;
    let app = spawn_app().await;
    create_connection(
        &app,
        proxy_config("proxy", &format!("{}/api", upstream.base()), 5000),
    )
    .await;

    for target in [
        "/v1/gateway/proxy/../admin",
        "/v1/gateway/proxy/a/../../admin",
        "/v1/gateway/proxy/a/..",
        "/v1/gateway/proxy/%2e%2e/admin",
        "/v1/gateway/proxy/%2E%2E/admin",
        "/v1/gateway/proxy/.%2e/admin",
        "/v1/gateway/proxy/a%2fb",
        "/v1/gateway/proxy/a%2F..%2F..%2Fadmin",
        "/v1/gateway/proxy//evil.example/x",
        "/v1/gateway/proxy/http://evil.example/x",
        "/v1/gateway/proxy/http:%2F%2Fevil.example/x",
        "/v1/gateway/proxy/%25252e%25252e/admin",
        "/v1/gateway/proxy/a%25252fb",
    ] {
        let (status, body) = raw_http(&app, "GET", target).await;
        assert_eq!(status, 400, "{target}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{target}: {body}");
        assert_eq!(
            upstream.count(),
            0,
            "{target} reached the upstream: {:?}",
            upstream.received()
        );
    }
    // the same connection works for a plain path (and keeps its query)
    let (status, body) = raw_http(&app, "GET", "/v1/gateway/proxy/ok/v1?x=1&y=a%20b").await;
    assert_eq!(status, 200, "{body}");
    let got = upstream.last();
    assert_eq!(got.path(), "/api/ok/v1");
    assert_eq!(
        got.query_pairs(),
        vec![
            ("x".to_string(), "1".to_string()),
            ("y".to_string(), "a b".to_string())
        ]
    );

    let event = wait_for_event(&app, "call_connection", |e| e["status"] == 400).await;
    assert!(event["connection"].to_string().contains("proxy"), "{event}");
    // every refused call is in the log
    let refused = audit_events(&app, "call_connection")
        .await
        .into_iter()
        .filter(|e| e["status"] == 400)
        .count();
    assert_eq!(refused, 13, "one audit event per refused call");
}

#[tokio::test]
async fn bodies_over_the_cap_and_redirects_are_not_carried() {
    let upstream = Upstream::start().await;
    upstream.reply_on("/big", Reply::text(200, &"x".repeat(4096)));
    upstream.reply_on(
        "/moved",
        Reply::text(302, "").header("location", &format!("{}/elsewhere", upstream.base())),
    );
    let app = spawn_app().await;
    let mut config = proxy_config("capped", &upstream.base(), 5000);
    config["max_body_bytes"] = json!(1024);
    create_connection(&app, config).await;

    // a request over the cap is refused before anything is sent
    let a = send(
        &app,
        Some(ADMIN_KEY),
        Method::POST,
        "/v1/gateway/capped/upload",
        &[],
        Some(("application/octet-stream", vec![b'a'; 2048])),
    )
    .await;
    assert_error(
        a.status,
        &a.json(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    assert_eq!(upstream.count(), 0);
    // a reply over the cap is not handed over
    let a = send(
        &app,
        Some(ADMIN_KEY),
        Method::GET,
        "/v1/gateway/capped/big",
        &[],
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.text());
    assert!(!a.text().contains(&"x".repeat(1025)));
    // redirects are answered, never followed (nor by this test's client)
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client
        .get(format!("{}/v1/gateway/capped/moved", app.base))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    let a = Answer {
        status: resp.status(),
        headers: resp.headers().clone(),
        body: resp.bytes().await.unwrap().to_vec(),
    };
    assert_eq!(a.status, StatusCode::FOUND, "{}", a.text());
    assert_eq!(
        a.headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("{}/elsewhere", upstream.base()).as_str())
    );
    let paths: Vec<String> = upstream
        .received()
        .iter()
        .map(|r| r.path().to_string())
        .collect();
    assert_eq!(paths, vec!["/big".to_string(), "/moved".to_string()]);
}

// ---- 6. hardening ----------------------------------------------------------------------------

#[tokio::test]
async fn secret_templates_with_spaces_are_filled_in() {
    let upstream = Upstream::start().await;
    let app = spawn_app().await;
    put_secret(&app, "api_key", "sk_spaced_value_1").await;
    // a secret whose value looks like a template is sent as it is, never expanded
    put_secret(&app, "tricky", "{{secret.signing}}").await;
    put_secret(&app, "signing", "whsec_never_on_the_wire").await;
    let mut config = simple_outbound("spaced", &upstream.base());
    config["headers"] = json!({"authorization": "Bearer {{ secret.api_key }}",
                              "x-tricky": "{{secret.tricky}}"});
    create_connection(&app, config).await;
    let a = send(
        &app,
        Some(ADMIN_KEY),
        Method::GET,
        "/v1/gateway/spaced/ping",
        &[],
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let got = upstream.last();
    assert_eq!(
        got.header("authorization"),
        Some("Bearer sk_spaced_value_1")
    );
    assert_eq!(got.header("x-tricky"), Some("{{secret.signing}}"));
    assert!(!got.all_text().contains("whsec_never_on_the_wire"));
}

#[tokio::test]
async fn encoded_echoes_of_revealed_values_are_blocked() {
    const ODD_NAME: &str = "José Núñez/O'Brien";
    let upstream = Upstream::start().await;
    let app = spawn_app().await;
    let p = payments(&app).await;
    let odd = insert(&app, "payments", "customers", json!({"name": ODD_NAME})).await;
    put_secret(&app, "stripe_key", "sk_test_x").await;
    set_policies(&app, &connection_policies("stripe")).await;
    create_connection(&app, stripe_config(&format!("{}/base", upstream.base()))).await;
    let checkout = app.service_account("checkout", &["app"]).await;
    let charge = |name_token: String| {
        let app = &app;
        let checkout = &checkout;
        let p = &p;
        async move {
            send(
                app,
                Some(checkout),
                Method::POST,
                &format!("/v1/gateway/stripe/v1/charges?customer={name_token}"),
                &[("x-customer-name", &token(&p.ada, "name"))],
                Some((
                    "application/json",
                    json!({"amount": 1}).to_string().into_bytes(),
                )),
            )
            .await
        }
    };

    // the gateway sent `customer=Grace%20Hopper`; echoes of it in every usual spelling
    for reply in [
        Reply::json(201, json!({"next": "/v1/charges?customer=Grace%20Hopper"})),
        Reply::text(302, "").header("location", "/v1/charges?customer=Grace+Hopper"),
        Reply::json(
            400,
            json!({"url": "/v1/charges?customer=grace%20hopper&customer=Grace%20Hopper"}),
        ),
        Reply::json_text(200, r#"{"next":"\/v1\/charges?customer=Grace%20Hopper"}"#),
        // the detokenized header, re-escaped by the upstream's JSON encoder
        Reply::json_text(200, r#"{"customer":"Ada\u0020Lovelace"}"#),
        Reply::json_text(200, r#"{"customer":"\u0041da Lovelace"}"#),
    ] {
        upstream.reply_on("/base/v1/charges", reply.clone());
        let a = charge(token(&p.grace, "name")).await;
        a.assert_blocked(GRACE_NAME);
        for encoded in ["Grace%20Hopper", "Grace+Hopper", "Ada\\u0020Lovelace"] {
            assert!(!a.text().contains(encoded), "{reply:?}: {}", a.text());
        }
    }
    // non-ASCII and reserved characters: upper and lower hex, `\u` escapes, PHP's `\/`
    for echoed in [
        "Jos%C3%A9%20N%C3%BA%C3%B1ez%2FO%27Brien",
        "Jos%c3%a9+N%c3%ba%c3%b1ez%2fO%27Brien",
        "Jos%c3%a9%20N%C3%BA%c3%b1ez/O'Brien",
    ] {
        upstream.reply_on(
            "/base/v1/charges",
            Reply::json(200, json!({ "next": format!("?customer={echoed}") })),
        );
        charge(token(&odd, "name")).await.assert_blocked(ODD_NAME);
    }
    for escaped in [
        r#"{"customer":"Jos\u00e9 N\u00fa\u00f1ez\/O'Brien"}"#,
        r#"{"customer":"Jos\u00E9 N\u00FA\u00F1ez/O\u0027Brien"}"#,
    ] {
        upstream.reply_on("/base/v1/charges", Reply::json_text(200, escaped));
        charge(token(&odd, "name")).await.assert_blocked(ODD_NAME);
    }
    // a form value the gateway percent-encoded (`ada%40example.test`), echoed back
    upstream.reply_on(
        "/base/v1/tokens",
        Reply::text(200, "created for ada%40example.test"),
    );
    let form = format!("card[number]={}", token(&p.ada, "email"));
    let a = send_form(&app, &checkout, "/v1/gateway/stripe/v1/tokens", &form).await;
    a.assert_blocked(ADA_EMAIL);
    assert!(!a.text().contains("ada%40example.test"), "{}", a.text());
    assert_eq!(
        upstream
            .last()
            .form()
            .get("card[number]")
            .map(String::as_str),
        Some(ADA_EMAIL)
    );
    // a reply with escapes but none of the values passes
    upstream.reply_on(
        "/base/v1/charges",
        Reply::json_text(
            201,
            r#"{"next":"\/v1\/charges?customer=Someone%20Else\u0021"}"#,
        ),
    );
    let a = charge(token(&p.grace, "name")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    assert_audit_has_no_plaintext(&app, &[GRACE_NAME, ADA_NAME, ODD_NAME, ADA_EMAIL]).await;
}

#[tokio::test]
async fn a_tokenize_rule_whose_column_is_gone_is_a_502_naming_no_vault() {
    let upstream = Upstream::start().await;
    upstream.reply_with(Reply::json(200, json!({"email": "x@example.test"})));
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/v1/vaults",
            json!({"name": "scratch", "tables": [{"name": "people", "columns": [
                {"name": "email", "type": "email"}]}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let rule = json!([{"location": "body", "path": "$.email",
                       "vault": "scratch", "table": "people", "column": "email"}]);
    create_connection(
        &app,
        json!({"name": "out", "kind": "outbound", "base_url": upstream.base(),
               "routes": [{"name": "r", "method": "POST", "path": "/r", "response": {"tokenize": rule}}]}),
    )
    .await;
    create_connection(
        &app,
        json!({"name": "in", "kind": "inbound", "upstream": upstream.base(),
               "routes": [{"name": "r", "method": "POST", "path": "/r", "public": true,
                           "request": {"tokenize": rule}}]}),
    )
    .await;
    let (status, _) = app.delete("/v1/vaults/scratch").await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let body = json!({"email": "client@example.test"});
    for path in ["/v1/gateway/out/r", "/v1/inbound/in/r"] {
        let a = send_json(&app, Some(ADMIN_KEY), Method::POST, path, &body).await;
        let answer = a.json();
        assert_error(a.status, &answer, StatusCode::BAD_GATEWAY, "upstream_error");
        assert!(
            !a.text().contains("scratch") && !a.text().contains("people"),
            "{path}: {answer}"
        );
        assert!(!a.text().contains("example.test"), "{path}: {answer}");
    }
    assert_eq!(
        upstream.count(),
        1,
        "the inbound request is not forwarded untokenized"
    );
}

/// Writes `head` (request line and headers, without the blank line) and `body` to a bare TCP
/// socket and reads one answer, waiting at most `wait`: the status and the body as JSON (or
/// text), or `None` when no complete answer came in time.
async fn raw_exchange(
    app: &TestApp,
    head: &str,
    body: &[u8],
    wait: Duration,
) -> Option<(u16, Value)> {
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut request = format!("{head}\r\nHost: {addr}\r\n\r\n").into_bytes();
    request.extend_from_slice(body);
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream.set_read_timeout(Some(wait)).unwrap();
        stream.write_all(&request).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while started.elapsed() < wait {
            let n = stream.read(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                let length = head.lines().find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                });
                if length.is_some_and(|len| rest.len() >= len) {
                    let status = head.split_whitespace().nth(1)?.parse().ok()?;
                    let json = serde_json::from_str(rest).unwrap_or(Value::String(rest.into()));
                    return Some((status, json));
                }
            }
        }
        None
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn inbound_clients_cannot_choose_hop_or_address_headers() {
    let upstream = Upstream::start().await;
    let app = spawn_app().await;
    create_connection(
        &app,
        json!({"name": "site", "kind": "inbound", "upstream": upstream.base(),
            "routes": [{"name": "pages", "method": "*", "path": "/{*rest}", "public": true}]}),
    )
    .await;
    let head = "GET /v1/inbound/site/page HTTP/1.1\r\nConnection: close, x-hop\r\nx-hop: 1\r\nx-kept: 2\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\nX-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\nX-Forwarded-Prefix: /evil.example\r\nX-Forwarded-Port: 6666\r\nTrue-Client-IP: 6.6.6.6\r\nCF-Connecting-IP: 6.6.6.6\r\nX-Client-IP: 6.6.6.6\r\nX-Cluster-Client-IP: 6.6.6.6";
    let answer = raw_exchange(&app, head, b"", Duration::from_secs(10)).await;
    assert_eq!(answer.as_ref().map(|(s, _)| *s), Some(200), "{answer:?}");
    let got = upstream.last();
    let text = got.headers_text();
    assert!(got.header("x-hop").is_none(), "{text}");
    assert_eq!(got.header("x-kept"), Some("2"), "{text}");
    assert!(
        !text.contains("6.6.6.6") && !text.contains("evil.example"),
        "{text}"
    );
    assert_eq!(got.header("x-forwarded-for"), Some("127.0.0.1"), "{text}");
    for claim in [
        "forwarded",
        "x-real-ip",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-original-url",
        "x-rewrite-url",
        "x-forwarded-prefix",
        "x-forwarded-port",
        "true-client-ip",
        "cf-connecting-ip",
        "x-client-ip",
        "x-cluster-client-ip",
    ] {
        assert!(got.header(claim).is_none(), "{claim}: {text}");
    }
    // nor can the connection's own headers replace the address the gateway sets
    assert_refused(
        &app,
        json!({"name": "spoof", "kind": "inbound", "upstream": upstream.base(),
               "headers": {"X-Forwarded-For": "6.6.6.6"},
               "routes": [{"name": "pages", "method": "*", "path": "/{*rest}", "public": true}]}),
        "headers.X-Forwarded-For",
    )
    .await;
    // an outbound caller cannot send the upstream to another path either
    create_connection(&app, proxy_config("out", &upstream.base(), 2000)).await;
    let a = send(
        &app,
        Some(ADMIN_KEY),
        Method::GET,
        "/v1/gateway/out/page",
        &[("x-original-url", "/admin"), ("x-rewrite-url", "/admin")],
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let got = upstream.last();
    assert!(
        got.header("x-original-url").is_none() && got.header("x-rewrite-url").is_none(),
        "{}",
        got.headers_text()
    );
}

#[tokio::test]
async fn inbound_requests_with_two_content_types_are_refused() {
    let upstream = Upstream::start().await;
    let app = spawn_app().await;
    create_connection(
        &app,
        json!({"name": "site", "kind": "inbound", "upstream": upstream.base(),
            "routes": [{"name": "pages", "method": "*", "path": "/{*rest}", "public": true}]}),
    )
    .await;
    let body = br#"{"email": "neo@matrix.test"}"#;
    let head = format!(
        "POST /v1/inbound/site/signup HTTP/1.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}",
        body.len()
    );
    let (status, answer) = raw_exchange(&app, &head, body, Duration::from_secs(10))
        .await
        .expect("an answer");
    assert_error(
        StatusCode::from_u16(status).unwrap(),
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn route_matching_reads_paths_as_loosely_as_upstreams_do() {
    let upstream = Upstream::start().await;
    let app = spawn_app().await;
    app.payments_vault().await;
    set_policies(&app, &connection_policies("site")).await;
    let created = create_connection(
        &app,
        json!({"name": "site", "kind": "inbound", "upstream": format!("{}/app", upstream.base()),
            "routes": [
                {"name": "signup", "method": "POST", "path": "/signup",
                 "request": {"tokenize": [{"location": "body", "path": "$.card",
                    "vault": "payments", "table": "customers", "column": "card_number"}]}},
                {"name": "pages", "method": "*", "path": "/{*rest}", "public": true}]}),
    )
    .await;
    let key = created["api_key"].as_str().unwrap().to_string();
    let card = json!({"card": NEO_CARD});

    // spellings an upstream reads as /signup take the private route: no key, no call
    for path in [
        "/signup/",
        "/sign%75p",
        "/%73ignup",
        "/signup;x",
        "/SignUp",
        "/sign%2575p",
    ] {
        let a = send_json(
            &app,
            None,
            Method::POST,
            &format!("/v1/inbound/site{path}"),
            &card,
        )
        .await;
        assert_error(
            a.status,
            &a.json(),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        );
        assert_eq!(
            upstream.count(),
            0,
            "{path} reached the upstream: {:?}",
            upstream.received()
        );
    }
    // with the key, the card is tokenized, and the path goes on normalised
    let a = send_json(
        &app,
        Some(&key),
        Method::POST,
        "/v1/inbound/site/sign%75p",
        &card,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let got = upstream.last();
    assert_eq!(got.path(), "/app/signup");
    assert!(!got.all_text().contains(NEO_CARD), "{}", got.all_text());

    // a public route is called as the method the gateway saw: overrides are not forwarded
    let a = send(
        &app,
        None,
        Method::GET,
        "/v1/inbound/site/about",
        &[
            ("x-http-method-override", "POST"),
            ("x-http-method", "POST"),
            ("x-method-override", "POST"),
        ],
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let got = upstream.last();
    assert_eq!(got.method, "GET");
    assert!(
        !got.headers_text().contains("override"),
        "{}",
        got.headers_text()
    );
    assert!(
        got.header("x-http-method").is_none(),
        "{}",
        got.headers_text()
    );
    assert_audit_has_no_plaintext(&app, &[NEO_CARD]).await;
}

#[tokio::test]
async fn bodies_are_not_read_before_the_call_is_admitted() {
    let upstream = Upstream::start().await;
    let app = spawn_app().await;
    let created = create_connection(
        &app,
        json!({"name": "capped", "kind": "inbound", "upstream": upstream.base(),
            "max_body_bytes": 1024,
            "routes": [{"name": "private", "method": "POST", "path": "/private"},
                       {"name": "open", "method": "POST", "path": "/open", "public": true}]}),
    )
    .await;
    let key = created["api_key"].as_str().unwrap().to_string();
    let mut outbound = proxy_config("proxy", &upstream.base(), 5000);
    outbound["max_body_bytes"] = json!(1024);
    create_connection(&app, outbound).await;

    // only the headers are sent, announcing 30 MB: the answer comes at once
    let wait = Duration::from_secs(5);
    let big = "Content-Type: application/json\r\nContent-Length: 30000000";
    for (target, auth, status, code) in [
        ("/v1/inbound/nope/x", String::new(), 404, "not_found"),
        (
            "/v1/inbound/capped/nowhere",
            String::new(),
            404,
            "not_found",
        ),
        (
            "/v1/inbound/capped/private",
            String::new(),
            401,
            "unauthenticated",
        ),
        (
            "/v1/inbound/capped/private",
            format!("\r\nAuthorization: Bearer {key}"),
            413,
            "payload_too_large",
        ),
        (
            "/v1/inbound/capped/open",
            String::new(),
            413,
            "payload_too_large",
        ),
        (
            "/v1/gateway/proxy/upload",
            format!("\r\nAuthorization: Bearer {ADMIN_KEY}"),
            413,
            "payload_too_large",
        ),
        (
            "/v1/gateway/nope/upload",
            format!("\r\nAuthorization: Bearer {ADMIN_KEY}"),
            404,
            "not_found",
        ),
    ] {
        let head = format!("POST {target} HTTP/1.1\r\n{big}{auth}");
        let answer = raw_exchange(&app, &head, b"", wait).await;
        let Some((got, body)) = answer else {
            panic!("{target}: no answer within {wait:?}: the body is being waited for");
        };
        assert_eq!(got, status, "{target}: {body}");
        assert_eq!(body["error"]["code"], code, "{target}: {body}");
    }
    // a body over the cap without a Content-Length (chunked) is cut off at the cap
    let head = format!(
        "POST /v1/inbound/capped/private HTTP/1.1\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked"
    );
    let mut chunked = format!("{:x}\r\n", 2048).into_bytes();
    chunked.extend_from_slice(&[b' '; 2048]);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let answer = raw_exchange(&app, &head, &chunked, wait).await;
    assert_eq!(answer.map(|(s, _)| s), Some(413));
    // within the cap, the call goes through
    let a = send_json(
        &app,
        Some(&key),
        Method::POST,
        "/v1/inbound/capped/private",
        &json!({"a": 1}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(upstream.count(), 1);
}
