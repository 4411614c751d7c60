//! Governance through the real API: service accounts and keys, Cedar policies at column, row,
//! purpose and time level, the card guardrail, and the audit chain.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use strongroom_tests::{TestApp, assert_error};

const RECORDS: &str = "/v1/vaults/payments/tables/customers/records";

async fn insert(app: &TestApp, records: Value) -> Vec<Value> {
    let (status, body) = app.post(RECORDS, json!({ "records": records })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["records"].as_array().unwrap().clone()
}

fn customer(email: &str, region: &str) -> Value {
    json!({"fields": {"name": "Ada Lovelace", "email": email, "card_number": "4111111111111111",
                      "ssn": "123-45-6789", "region": region}})
}

#[tokio::test]
async fn service_accounts_keys_rotate_expire_and_revoke() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .post(
            "/v1/service-accounts",
            json!({"name": "checkout", "roles": ["app"], "attributes": {"team": "payments"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let key1 = body["api_key"].as_str().unwrap().to_string();
    let key_id = body["key_id"].as_str().unwrap().to_string();
    assert!(
        key1.starts_with(&format!("sr_{key_id}_")),
        "the key names its id"
    );
    // listed without the secret; the database holds only a keyed hash
    let (_, list) = app.get("/v1/service-accounts").await;
    assert!(!list.to_string().contains(&key1[20..]));
    let secret = key1.rsplit('_').next().unwrap();
    let db = app.db().await;
    let rows = db
        .query("SELECT secret_hash FROM api_keys", &[])
        .await
        .unwrap();
    for r in rows {
        let h: Vec<u8> = r.get(0);
        assert!(!String::from_utf8_lossy(&h).contains(secret));
    }
    // deny by default: a fresh account may do nothing
    let (status, body) = app
        .call_as(Some(&key1), Method::GET, "/v1/vaults", None)
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");

    // a second key works beside the first; revoking the first leaves the second
    let (status, second) = app
        .post("/v1/service-accounts/checkout/keys", json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    let key2 = second["api_key"].as_str().unwrap().to_string();
    let (status, _) = app
        .delete(&format!("/v1/service-accounts/checkout/keys/{key_id}"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app
        .call_as(Some(&key1), Method::GET, "/v1/vaults", None)
        .await;
    let err = assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert!(err["message"].as_str().unwrap().contains("revoked"));
    let (status, _) = app
        .call_as(Some(&key2), Method::GET, "/v1/vaults", None)
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "authenticated, still not permitted"
    );

    // an expiring key stops working at its expiry
    let (_, short) = app
        .post(
            "/v1/service-accounts/checkout/keys",
            json!({"expires_in_seconds": 1}),
        )
        .await;
    let key3 = short["api_key"].as_str().unwrap().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let (status, body) = app
        .call_as(Some(&key3), Method::GET, "/v1/vaults", None)
        .await;
    let err = assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert!(err["message"].as_str().unwrap().contains("expired"));

    // a wrong secret with a real key id is refused; deleting the account kills its keys
    let forged = format!("sr_{key_id}_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let (status, _) = app
        .call_as(Some(&forged), Method::GET, "/v1/vaults", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app.delete("/v1/service-accounts/checkout").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app
        .call_as(Some(&key2), Method::GET, "/v1/vaults", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // bad input
    let (status, body) = app
        .post("/v1/service-accounts", json!({"name": "Bad Name"}))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, body) = app
        .post(
            "/v1/service-accounts",
            json!({"name": "x", "roles": ["a b"]}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn policies_validate_version_and_take_effect_at_once() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let key = app.service_account("reporter", &["reporting"]).await;
    let (status, before) = app
        .raw(Method::GET, "/v1/policies", "text/plain", vec![])
        .await;
    assert_eq!(status, StatusCode::OK);

    // malformed Cedar: 400 with the position; nothing changes
    let (status, body) = app
        .policies("@id(\"broken\")\npermit(principal, action, resource) when {")
        .await;
    let err = assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_policy");
    assert!(err["details"][0]["line"].as_u64().unwrap() >= 3, "{err}");
    // an unknown attribute: the validator names the policy, line and column
    let (status, body) = app
        .policies("@id(\"typo\")\npermit(principal, action == Strongroom::Action::\"read\", resource)\n  when { resource.colour == \"red\" };")
        .await;
    let err = assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_policy");
    assert_eq!(err["details"][0]["policy"], "typo");
    assert_eq!(err["details"][0]["line"], 5);
    assert!(err["details"][0]["column"].as_u64().is_some());
    // an unknown entity type
    let (status, _) = app
        .policies("permit(principal == Strongroom::User::\"x\", action, resource);")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // a set that would lock the caller out (here: empty) is refused
    let (status, body) = app
        .raw(Method::PUT, "/v1/policies", "text/plain", Vec::new())
        .await;
    let err = assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        err["message"].as_str().unwrap().contains("lock you out"),
        "{err}"
    );
    let (_, after) = app
        .raw(Method::GET, "/v1/policies", "text/plain", vec![])
        .await;
    assert_eq!(before, after, "a rejected set changes nothing");

    // a valid set applies to the next request, no restart
    let (status, _) = app
        .call_as(Some(&key), Method::GET, "/v1/vaults", None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = app
        .policies("@id(\"reporting-list\")\npermit(principal in Strongroom::Role::\"reporting\", action == Strongroom::Action::\"list_vaults\", resource);")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = app
        .call_as(Some(&key), Method::GET, "/v1/vaults", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, versions) = app.get("/v1/policies/versions").await;
    assert_eq!(
        versions["versions"].as_array().unwrap().len(),
        2,
        "{versions}"
    );
    assert_eq!(versions["versions"][0]["active"], true);

    // the dry run names the deciding policy
    let (status, check) = app
        .post(
            "/v1/policies/check",
            json!({"principal": "reporter", "action": "list_vaults"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{check}");
    assert_eq!(check["decision"], "allow");
    assert_eq!(check["policies"], json!(["reporting-list"]));
    let (_, check) = app
        .post(
            "/v1/policies/check",
            json!({"principal": "reporter", "action": "read",
            "resource": {"vault": "payments", "table": "customers", "column": "ssn", "type": "ssn"},
            "context": {"purpose": "", "redaction": "plain", "granted": false},
            "record": {"attributes": {"region": "CA"}, "consents": []}}),
        )
        .await;
    assert_eq!(check["decision"], "deny", "{check}");
    let (status, body) = app
        .post(
            "/v1/policies/check",
            json!({"principal": "nobody", "action": "read"}),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    // non-admins cannot change policies
    let (status, _) = app
        .call_as(Some(&key), Method::GET, "/v1/policies/versions", None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// The roles functions and connections are members of cannot be given to an account: it would
/// be allowed whatever policies allow every function or connection.
#[tokio::test]
async fn the_roles_of_functions_and_connections_are_reserved() {
    let app = TestApp::spawn().await;
    for role in ["function", "connection"] {
        let (status, body) = app
            .post(
                "/v1/service-accounts",
                json!({"name": format!("as-{role}"), "roles": ["app", role]}),
            )
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let (_, list) = app.get("/v1/service-accounts").await;
    assert!(!list.to_string().contains("as-function"), "{list}");
}

/// Policy writes that race each other leave the newest stored version active, as a restart
/// would, whatever order they finish in.
#[tokio::test]
async fn racing_policy_writes_leave_the_newest_version_active() {
    let app = TestApp::spawn().await;
    for _ in 0..3 {
        let writes: Vec<_> = (0..8)
            .map(|i| {
                let (client, url) = (app.client.clone(), format!("{}/v1/policies", app.base));
                tokio::spawn(async move {
                    let source = format!(
                        "@id(\"admin-all\")\npermit (principal in Strongroom::Role::\"admin\", action, resource);\n@id(\"w{i}\")\nforbid (principal, action == Strongroom::Action::\"detokenize\", resource) when {{ false }};"
                    );
                    let resp = client
                        .put(url)
                        .bearer_auth(strongroom_tests::ADMIN_KEY)
                        .header("content-type", "text/plain")
                        .body(source)
                        .send()
                        .await
                        .expect("request");
                    assert_eq!(resp.status(), StatusCode::OK);
                })
            })
            .collect();
        for w in writes {
            w.await.expect("write");
        }
        let (_, versions) = app.get("/v1/policies/versions").await;
        let newest = versions["versions"]
            .as_array()
            .and_then(|v| v.iter().filter_map(|v| v["version"].as_i64()).max())
            .unwrap_or_else(|| panic!("{versions}"));
        let resp = app
            .client
            .get(format!("{}/v1/policies", app.base))
            .bearer_auth(strongroom_tests::ADMIN_KEY)
            .send()
            .await
            .expect("request");
        let active = resp.headers()["x-strongroom-policy-version"]
            .to_str()
            .ok()
            .and_then(|v| v.parse::<i64>().ok());
        assert_eq!(active, Some(newest), "{versions}");
    }
}

#[tokio::test]
async fn column_and_row_level_rules() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let recs = insert(
        &app,
        json!([
            customer("ca@example.com", "CA"),
            customer("ny@example.com", "NY")
        ]),
    )
    .await;
    let (ca, ny) = (
        recs[0]["id"].as_str().unwrap(),
        recs[1]["id"].as_str().unwrap(),
    );
    let key = app.service_account("support", &["support"]).await;
    let (status, body) = app
        .policies(r#"
@id("support-email-masked")
permit(principal in Strongroom::Role::"support", action in [Strongroom::Action::"read", Strongroom::Action::"detokenize"],
       resource == Strongroom::Column::"payments/customers/email")
when { context.redaction == "masked" && context.record.hasTag("region") && context.record.getTag("region") == "CA" };
@id("support-region")
permit(principal in Strongroom::Role::"support", action == Strongroom::Action::"read",
       resource == Strongroom::Column::"payments/customers/region")
when { context.record.hasTag("region") && context.record.getTag("region") == "CA" };
@id("support-update-region")
permit(principal in Strongroom::Role::"support", action == Strongroom::Action::"update", resource)
when { context.record.hasTag("region") && context.record.getTag("region") == "CA" };
"#)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let get = |id: &str, level: &str| {
        let path = format!("{RECORDS}/{id}?redaction={level}");
        let key = key.clone();
        let app = &app;
        async move { app.call_with(&key, None, Method::GET, &path, None).await }
    };
    // column level: email masked only; the rest withheld
    let (status, body) = get(ca, "default").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["fields"]["email"], "c***@example.com");
    assert_eq!(body["fields"]["region"], "CA");
    let withheld: Vec<&str> = body["withheld"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for c in ["name", "card_number", "ssn"] {
        assert!(withheld.contains(&c), "{body}");
    }
    let (_, body) = get(ca, "plain").await;
    assert!(
        body["fields"].get("email").is_none(),
        "plain is not allowed: {body}"
    );
    // row level: NY records are out of reach entirely
    let (status, body) = get(ny, "default").await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    // detokenize: per-token forbidden
    let (status, body) = app
        .call_with(&key, None, Method::POST, "/v1/vaults/payments/detokenize",
            Some(json!({"tokens": [recs[0]["tokens"]["email"], recs[1]["tokens"]["email"], recs[0]["tokens"]["ssn"]], "redaction": "masked"})))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["value"], "c***@example.com");
    assert_eq!(body["results"][1]["error"]["code"], "forbidden");
    assert_eq!(body["results"][2]["error"]["code"], "forbidden");
    // update and delete follow the row rule; a refused write changes nothing
    let (status, _) = app
        .call_with(
            &key,
            None,
            Method::PATCH,
            &format!("{RECORDS}/{ny}"),
            Some(json!({"fields": {"name": "Grace"}})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = app
        .call_with(
            &key,
            None,
            Method::PATCH,
            &format!("{RECORDS}/{ca}"),
            Some(json!({"fields": {"name": "Grace Hopper"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = app
        .call_with(&key, None, Method::DELETE, &format!("{RECORDS}/{ca}"), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no delete policy");
    let (_, still) = app.get(&format!("{RECORDS}/{ny}?redaction=plain")).await;
    assert_eq!(still["fields"]["name"], "Ada Lovelace");
    // look-up: needs `lookup` on the column
    let (status, _) = app
        .call_with(
            &key,
            None,
            Method::POST,
            &format!("{RECORDS}/lookup"),
            Some(json!({"column": "email", "values": ["ca@example.com"]})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// The seed scenario: phone numbers collected for authentication, marketing and integrity.
#[tokio::test]
async fn purpose_and_consent() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .post(
            "/v1/vaults",
            json!({"name": "payments", "tables": [{"name": "customers", "columns": [
            {"name": "phone", "type": "phone", "tokenization": "deterministic"}]}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app
        .post(RECORDS, json!({"records": [
            {"fields": {"phone": "+14155550100"}, "consents": ["authentication", "marketing", "integrity"]},
            {"fields": {"phone": "+14155550101"}, "consents": ["authentication", "integrity"]}]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let tokens: Vec<Value> = body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["tokens"]["phone"].clone())
        .collect();
    let second = body["records"][1]["id"].as_str().unwrap().to_string();
    let auth = app.service_account("auth", &["auth"]).await;
    let marketing = app.service_account("marketing", &["marketing"]).await;
    let fraud = app.service_account("fraud", &["fraud"]).await;
    let (status, body) = app
        .policies(r#"
@id("auth-plain-for-authentication")
permit(principal in Strongroom::Role::"auth", action == Strongroom::Action::"detokenize", resource)
when { context.purpose == "authentication" && context.record.consents.contains("authentication") };
@id("marketing-consented")
permit(principal in Strongroom::Role::"marketing", action == Strongroom::Action::"detokenize", resource)
when { context.purpose == "marketing" && context.record.consents.contains("marketing") };
@id("fraud-tokens-only")
permit(principal in Strongroom::Role::"fraud", action in [Strongroom::Action::"tokenize", Strongroom::Action::"lookup"], resource);
@id("never-detokenize-for-fraud")
forbid(principal in Strongroom::Role::"fraud", action in [Strongroom::Action::"detokenize", Strongroom::Action::"read"], resource);
"#)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let detok = |key: String, purpose: Option<&'static str>| {
        let app = &app;
        let tokens = tokens.clone();
        async move {
            let (status, body) = app
                .call_with(
                    &key,
                    purpose,
                    Method::POST,
                    "/v1/vaults/payments/detokenize",
                    Some(json!({"tokens": tokens, "redaction": "plain"})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["results"].as_array().unwrap().clone()
        }
    };
    let r = detok(auth.clone(), Some("authentication")).await;
    assert_eq!(r[0]["value"], "+14155550100");
    assert_eq!(r[1]["value"], "+14155550101");
    let r = detok(auth.clone(), Some("marketing")).await;
    assert_eq!(
        r[0]["error"]["code"], "forbidden",
        "auth may not read for marketing"
    );
    let r = detok(auth.clone(), None).await;
    assert_eq!(
        r[0]["error"]["code"], "forbidden",
        "no purpose, no plaintext"
    );
    let r = detok(marketing.clone(), Some("marketing")).await;
    assert_eq!(r[0]["value"], "+14155550100");
    assert_eq!(
        r[1]["error"]["code"], "forbidden",
        "did not consent to marketing"
    );
    // consent given later counts at once (decisions are memoised by the record's facts)
    let (status, patched) = app
        .call(
            Method::PATCH,
            &format!("{RECORDS}/{second}"),
            Some(json!({"fields": {}, "consents": ["authentication", "integrity", "marketing"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    let r = detok(marketing.clone(), Some("marketing")).await;
    assert_eq!(r[1]["value"], "+14155550101", "consented since");
    let r = detok(fraud.clone(), Some("integrity")).await;
    assert!(r.iter().all(|x| x["error"]["code"] == "forbidden"));
    // the fraud service works with tokens: equal numbers give equal tokens
    let (status, body) = app
        .call_with(
            &fraud,
            Some("integrity"),
            Method::POST,
            "/v1/vaults/payments/tokenize",
            Some(json!({"table": "customers", "column": "phone", "values": ["+1 415 555 0100"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tokens"][0], tokens[0]);
    // consents change through update; odd purposes are refused
    let (status, body) = app
        .call_with(
            &auth,
            Some("Marketing!"),
            Method::POST,
            "/v1/vaults/payments/detokenize",
            Some(json!({"tokens": tokens})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, body) = app
        .post(
            RECORDS,
            json!({"records": [{"fields": {"phone": "+14155550102"}, "consents": ["Not OK"]}]}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn time_bound_grants_and_the_card_guardrail() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let recs = insert(
        &app,
        json!([
            customer("a@example.com", "CA"),
            customer("b@example.com", "CA"),
            customer("c@example.com", "NY")
        ]),
    )
    .await;
    let agent = app.service_account("agent-7", &["support-agent"]).await;
    let (status, body) = app
        .policies(r#"
@id("queue")
permit(principal in Strongroom::Role::"support-agent", action == Strongroom::Action::"read", resource)
when { context.granted };
"#)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let read = |id: String| {
        let app = &app;
        let agent = agent.clone();
        async move {
            app.call_with(
                &agent,
                None,
                Method::GET,
                &format!("{RECORDS}/{id}?redaction=plain"),
                None,
            )
            .await
        }
    };
    let id = |i: usize| recs[i]["id"].as_str().unwrap().to_string();
    assert_eq!(read(id(0)).await.0, StatusCode::FORBIDDEN, "no grant yet");
    let (status, grant) = app
        .post(
            "/v1/grants",
            json!({"principal": "agent-7", "expires_in_seconds": 2,
            "records": [{"vault": "payments", "table": "customers", "id": id(0)}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{grant}");
    let (status, body) = read(id(0)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["fields"]["ssn"], "123-45-6789");
    // even though the policy permits plain reads of every column: the card guardrail
    assert!(body["fields"].get("card_number").is_none());
    assert_eq!(body["withheld"], json!(["card_number"]));
    assert_eq!(
        read(id(1)).await.0,
        StatusCode::FORBIDDEN,
        "not in the queue"
    );
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    assert_eq!(
        read(id(0)).await.0,
        StatusCode::FORBIDDEN,
        "the grant expired"
    );
    // bad grants
    let (status, body) = app
        .post(
            "/v1/grants",
            json!({"principal": "nobody", "expires_in_seconds": 60,
            "records": [{"vault": "payments", "table": "customers", "id": id(2)}]}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, body) = app
        .post("/v1/grants", json!({"principal": "agent-7", "expires_in_seconds": 60,
            "records": [{"vault": "payments", "table": "customers", "id": "00000000-0000-0000-0000-000000000000"}]}))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    // revoking a grant ends it at once
    let (_, g) = app
        .post(
            "/v1/grants",
            json!({"principal": "agent-7", "expires_in_seconds": 600,
            "records": [{"vault": "payments", "table": "customers", "id": id(2)}]}),
        )
        .await;
    assert_eq!(read(id(2)).await.0, StatusCode::OK);
    let (status, _) = app
        .delete(&format!("/v1/grants/{}", g["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(read(id(2)).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn audit_chain_records_access_and_detects_tampering() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let recs = insert(&app, json!([customer("audit@example.com", "CA")])).await;
    let id = recs[0]["id"].as_str().unwrap();
    app.get(&format!("{RECORDS}/{id}?redaction=plain")).await;
    let key = app.service_account("nosy", &["nobody"]).await;
    app.call_with(
        &key,
        Some("curiosity"),
        Method::GET,
        &format!("{RECORDS}/{id}"),
        None,
    )
    .await;

    let (status, page) = app.get("/v1/audit?limit=1000").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let events = page["events"].as_array().unwrap();
    let text = page.to_string();
    for secret in [
        "audit@example.com",
        "123-45-6789",
        "4111111111111111",
        "Ada Lovelace",
    ] {
        assert!(!text.contains(secret), "audit holds {secret}");
    }
    let read = events
        .iter()
        .find(|e| e["action"] == "read" && e["principal"] == "admin")
        .unwrap_or_else(|| panic!("{page}"));
    assert_eq!(read["key_id"], "bootstrap");
    assert_eq!(read["records"], json!([id]));
    assert_eq!(
        read["decision"], "partial",
        "card withheld by the guardrail: {read}"
    );
    assert!(
        read["policies"]
            .as_array()
            .unwrap()
            .contains(&json!("admin-all"))
    );
    let denied = events
        .iter()
        .find(|e| e["principal"] == "nosy")
        .unwrap_or_else(|| panic!("{page}"));
    assert_eq!(denied["outcome"], "denied");
    assert_eq!(denied["purpose"], "curiosity");
    assert_eq!(denied["decision"], "deny");
    // filters and paging
    let (_, only) = app.get("/v1/audit?principal=nosy").await;
    assert_eq!(only["events"].as_array().unwrap().len(), 1);
    let (_, first) = app.get("/v1/audit?limit=2").await;
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, next) = app.get(&format!("/v1/audit?limit=2&cursor={cursor}")).await;
    assert!(next["events"][0]["seq"].as_i64() > first["events"][1]["seq"].as_i64());
    let (status, body) = app.get("/v1/audit?limit=0").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");

    let (_, ok) = app.get("/v1/audit/verify").await;
    assert_eq!(ok["ok"], true, "{ok}");
    // tamper with one event: verify names it
    let seq = read["seq"].as_i64().unwrap();
    let db = app.db().await;
    db.execute(
        "UPDATE audit_events SET event = replace(event, '\"admin\"', '\"someone-else\"') WHERE seq = $1",
        &[&seq],
    )
    .await
    .unwrap();
    let (_, broken) = app.get("/v1/audit/verify").await;
    assert_eq!(broken["ok"], false, "{broken}");
    assert_eq!(broken["first_broken"]["seq"], seq);
    db.execute("UPDATE audit_events SET event = replace(event, '\"someone-else\"', '\"admin\"') WHERE seq = $1", &[&seq]).await.unwrap();
    let (_, ok) = app.get("/v1/audit/verify").await;
    assert_eq!(ok["ok"], true, "{ok}");
    // the columns searches filter on are checked against the content: an event moved out of
    // a principal's search, or out of a time window, is named
    let nosy = denied["seq"].as_i64().unwrap();
    for (column, ty, value) in [
        ("at", "timestamptz", "at - interval '1 day'"),
        ("action", "text", "'delete_vault'"),
        ("vault", "text", "'elsewhere'"),
        ("principal", "text", "'someone-else'"),
    ] {
        let original: Option<String> = db
            .query_one(
                &format!("SELECT {column}::text FROM audit_events WHERE seq = $1"),
                &[&nosy],
            )
            .await
            .unwrap()
            .get(0);
        db.execute(
            &format!("UPDATE audit_events SET {column} = {value} WHERE seq = $1"),
            &[&nosy],
        )
        .await
        .unwrap();
        let (_, moved) = app.get("/v1/audit/verify").await;
        assert_eq!(moved["ok"], false, "{column}: {moved}");
        assert_eq!(moved["first_broken"]["seq"], nosy, "{column}: {moved}");
        if column == "principal" {
            let (_, hidden) = app.get("/v1/audit?principal=nosy").await;
            assert_eq!(
                hidden["events"],
                json!([]),
                "the search is fooled, verify is not"
            );
        }
        db.execute(
            &format!("UPDATE audit_events SET {column} = $2::text::{ty} WHERE seq = $1"),
            &[&nosy, &original],
        )
        .await
        .unwrap();
        let (_, ok) = app.get("/v1/audit/verify").await;
        assert_eq!(ok["ok"], true, "{column} restored: {ok}");
    }
    // and a deleted event is a gap
    db.execute("DELETE FROM audit_events WHERE seq = 2", &[])
        .await
        .unwrap();
    let (_, gap) = app.get("/v1/audit/verify").await;
    assert_eq!(gap["first_broken"]["seq"], 2, "{gap}");
}

#[tokio::test]
async fn no_unaudited_access() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let recs = insert(&app, json!([customer("x@example.com", "CA")])).await;
    let id = recs[0]["id"].as_str().unwrap();
    // make audit writes fail: the read is refused rather than answered unaudited
    let db = app.db().await;
    db.execute(
        "ALTER TABLE audit_events ADD CONSTRAINT no_more CHECK (seq < 0) NOT VALID",
        &[],
    )
    .await
    .unwrap();
    let (status, body) = app.get(&format!("{RECORDS}/{id}?redaction=plain")).await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "audit_unavailable",
    );
    assert!(!body.to_string().contains("x@example.com"));
    db.execute("ALTER TABLE audit_events DROP CONSTRAINT no_more", &[])
        .await
        .unwrap();
    let (status, _) = app.get(&format!("{RECORDS}/{id}?redaction=plain")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "works again once audit can be written"
    );
    let (_, ok) = app.get("/v1/audit/verify").await;
    assert_eq!(ok["ok"], true, "{ok}");
}

/// A stalled audit write (the table locked, as a hung disk would hold it) does not hold
/// requests forever: after `audit_timeout_ms` the answer is 503, without the data. The event
/// is stored once the database moves again, and the chain stays intact.
#[tokio::test]
async fn a_stalled_audit_write_is_answered_503_in_bounded_time() {
    let app = TestApp::spawn_with(|s| s.audit_timeout_ms = 300).await;
    app.payments_vault().await;
    let recs = insert(&app, json!([customer("stall@example.com", "CA")])).await;
    let id = recs[0]["id"].as_str().unwrap();
    let before = app.count("audit_events").await;
    let db = app.db().await;
    db.batch_execute("BEGIN; LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (status, body) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        app.get(&format!("{RECORDS}/{id}?redaction=plain")),
    )
    .await
    .expect("no answer within 10 s: the wait for the audit write is not bounded");
    let waited = started.elapsed();
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "audit_unavailable",
    );
    assert!(!body.to_string().contains("stall@example.com"));
    assert!(
        waited >= std::time::Duration::from_millis(300)
            && waited < std::time::Duration::from_secs(3),
        "answered after {waited:?}"
    );
    db.batch_execute("COMMIT").await.unwrap();
    let (status, body) = app.get(&format!("{RECORDS}/{id}?redaction=plain")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // the withheld read's event and this one are both stored, in order
    assert_eq!(app.count("audit_events").await, before + 2);
    let (_, ok) = app.get("/v1/audit/verify").await;
    assert_eq!(ok["ok"], true, "{ok}");
}

/// A pool held by stalled requests does not hold the next request forever: after
/// `db_wait_timeout_ms` without a free connection it is answered 503, and the stalled requests
/// still finish once the database moves.
#[tokio::test]
async fn a_stalled_database_is_answered_503_in_bounded_time() {
    let app = TestApp::spawn_with(|s| {
        s.db_pool_size = 2;
        s.db_wait_timeout_ms = 300;
    })
    .await;
    app.payments_vault().await;
    let recs = insert(&app, json!([customer("pool@example.com", "CA")])).await;
    let read = format!(
        "{RECORDS}/{}?redaction=plain",
        recs[0]["id"].as_str().unwrap()
    );
    let db = app.db().await;
    db.batch_execute("BEGIN; LOCK TABLE records, record_values IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    // two reads take the pool's two connections and wait for the lock; a third request finds
    // no free connection
    let third = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let started = std::time::Instant::now();
        let answer =
            tokio::time::timeout(std::time::Duration::from_secs(10), app.get("/v1/vaults"))
                .await
                .expect("no answer within 10 s: the wait for a connection is not bounded");
        (answer, started.elapsed())
    };
    let release = async {
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        db.batch_execute("COMMIT").await.unwrap();
    };
    let (first, second, ((status, body), waited), ()) =
        tokio::join!(app.get(&read), app.get(&read), third, release);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        ["unavailable", "audit_unavailable"].contains(&body["error"]["code"].as_str().unwrap()),
        "{body}"
    );
    assert!(
        waited < std::time::Duration::from_secs(2),
        "answered after {waited:?}"
    );
    for (status, body) in [first, second] {
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["fields"]["email"], "pool@example.com");
    }
    let (status, body) = app.get("/v1/vaults").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A statement that waits too long, here for a row another transaction holds, is cancelled
/// after `statement_timeout_ms`: the request is answered 503 without having changed anything,
/// and its connection serves the next request.
#[tokio::test]
async fn a_stalled_statement_is_cancelled_and_answered_503() {
    let app = TestApp::spawn_with(|s| {
        s.db_pool_size = 1;
        s.statement_timeout_ms = 400;
    })
    .await;
    app.payments_vault().await;
    let recs = insert(&app, json!([customer("held@example.com", "CA")])).await;
    let id = recs[0]["id"].as_str().unwrap();
    let db = app.db().await;
    db.batch_execute("BEGIN").await.unwrap();
    db.execute(
        "SELECT 1 FROM records WHERE id = $1::text::uuid FOR UPDATE",
        &[&id],
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let (status, body) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        app.patch(
            &format!("{RECORDS}/{id}"),
            json!({"fields": {"email": "changed@example.com"}}),
        ),
    )
    .await
    .expect("no answer within 10 s: the statement was not cancelled");
    let waited = started.elapsed();
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    assert!(!body.to_string().contains("changed@example.com"), "{body}");
    assert!(
        waited >= std::time::Duration::from_millis(350)
            && waited < std::time::Duration::from_secs(3),
        "answered after {waited:?}"
    );
    // The pool's one connection is free again while the row is still held.
    let (status, body) = app.get(&format!("{RECORDS}/{id}?redaction=plain")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["fields"]["email"], "held@example.com");
    db.batch_execute("COMMIT").await.unwrap();
    let (status, body) = app
        .patch(
            &format!("{RECORDS}/{id}"),
            json!({"fields": {"email": "changed@example.com"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// The highest sequence number stored.
async fn last_seq(app: &TestApp) -> i64 {
    app.db()
        .await
        .query_one("SELECT coalesce(max(seq), 0) FROM audit_events", &[])
        .await
        .unwrap()
        .get(0)
}

/// A name that cannot exist (a NUL byte) in a path is 404 without the database, and the
/// audit events of the requests sent with it, in the same batches as everyone else's, are
/// stored: nobody gets 503 `audit_unavailable`.
#[tokio::test]
async fn a_nul_in_a_path_name_is_not_found_and_fails_no_audit_batch() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let nobody = app.service_account("nobody-here", &["nobody"]).await;
    // concurrent requests share audit batches: the bad ones must not sink the good ones
    let mut tasks = Vec::new();
    for i in 0..60 {
        let client = app.client.clone();
        let key = if i % 3 == 0 {
            nobody.clone()
        } else {
            strongroom_tests::ADMIN_KEY.to_string()
        };
        let path = if i % 2 == 0 {
            "/v1/vaults/a%00b"
        } else {
            "/v1/vaults/payments"
        };
        let url = format!("{}{path}", app.base);
        tasks.push(tokio::spawn(async move {
            let resp = client.get(url).bearer_auth(key).send().await.unwrap();
            let status = resp.status();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (i, status, body)
        }));
    }
    for t in tasks {
        let (i, status, body) = t.await.unwrap();
        match (i % 2 == 0, i % 3 == 0) {
            (true, _) => {
                assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
            }
            (false, true) => {
                assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
            }
            (false, false) => assert_eq!(status, StatusCode::OK, "{body}"),
        }
    }
    // every kind of name or id in a path
    let id = "00000000-0000-4000-8000-000000000000";
    for (method, path) in [
        (Method::GET, "/v1/vaults/a%00b".to_string()),
        (Method::GET, "/v1/vaults/x%00/keys".to_string()),
        (
            Method::GET,
            format!("/v1/vaults/payments/tables/a%00b/records/{id}"),
        ),
        (
            Method::GET,
            "/v1/vaults/payments/tables/customers/records/a%00b".to_string(),
        ),
        (
            Method::GET,
            format!("/v1/vaults/payments/tables/customers/records/{id}/files/a%00b"),
        ),
        (Method::GET, "/v1/service-accounts/a%00b".to_string()),
        (Method::DELETE, "/v1/service-accounts/a%00b".to_string()),
        (
            Method::DELETE,
            "/v1/service-accounts/admin/keys/a%00b".to_string(),
        ),
        (Method::DELETE, "/v1/grants/a%00b".to_string()),
        (Method::GET, "/v1/functions/a%00b".to_string()),
        (Method::GET, "/v1/connections/a%00b".to_string()),
        (Method::DELETE, "/v1/secrets/a%00b".to_string()),
        (Method::GET, "/v1/vaults/Payments".to_string()),
        (Method::GET, format!("/v1/vaults/{}", "a".repeat(64))),
    ] {
        let (status, body) = app.call(method.clone(), &path, None).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
        assert!(
            !body.to_string().contains('\u{0}'),
            "{method} {path}: {body}"
        );
    }
    // a PUT creates what it names: a bad name there is bad input
    let (status, body) = app
        .call(
            Method::PUT,
            "/v1/secrets/a%00b",
            Some(json!({"value": "v"})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    // and without a key, 401 comes first
    let (status, body) = app
        .call_as(None, Method::GET, "/v1/vaults/a%00b", None)
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");

    // body fields and query parameters that cannot name anything are 400 or 404, never 500
    for (path, body, expected, code) in [
        (
            "/v1/service-accounts",
            json!({"name": "tagged", "attributes": {"team": "a\u{0}b"}}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/grants",
            json!({"principal": "a\u{0}b", "records": [{"vault": "payments", "table": "customers", "id": id}], "expires_in_seconds": 60}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/grants",
            json!({"principal": "nobody-here", "records": [{"vault": "pay\u{0}ments", "table": "customers", "id": id}], "expires_in_seconds": 60}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/policies/check",
            json!({"principal": "a\u{0}b", "action": "read_vault", "resource": {"vault": "payments"}}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/v1/vaults",
            json!({"name": "x\u{0}y", "template": "pii"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ] {
        let (status, answer) = app.post(path, body).await;
        assert_error(status, &answer, expected, code);
        assert!(!answer.to_string().contains('\u{0}'), "{path}: {answer}");
    }
    for query in ["principal=a%00b", "vault=a%00b", "action=a%00b"] {
        let (status, body) = app.get(&format!("/v1/audit?{query}")).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let (status, body) = app
        .raw(
            Method::PUT,
            "/v1/policies",
            "text/plain",
            b"// a\0b\npermit (principal in Strongroom::Role::\"admin\", action, resource);"
                .to_vec(),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");

    // the chain holds all of it, with the bad names left out
    let (_, ok) = app.get("/v1/audit/verify").await;
    assert_eq!(ok["ok"], true, "{ok}");
    let (_, page) = app.get("/v1/audit?limit=1000").await;
    let events = page["events"].as_array().unwrap();
    let not_found = events
        .iter()
        .filter(|e| e["route"] == "/v1/vaults/{vault}" && e["status"] == 404)
        .count();
    assert!(not_found >= 30, "{not_found} 404s audited");
    let created = events
        .iter()
        .find(|e| e["action"] == "create_vault" && e["status"] == 400)
        .unwrap_or_else(|| panic!("{page}"));
    assert_eq!(created["vault"], "(invalid name)", "{created}");
    assert!(!page.to_string().contains("\\u0000"), "{page}");
}

/// Cutting events off the end of the log is reported by verify, before and after a restart,
/// and the chain goes on after the cut (the gap stays).
#[tokio::test]
async fn cutting_the_end_of_the_audit_log_is_detected_also_after_a_restart() {
    let mut app = TestApp::spawn().await;
    for _ in 0..10 {
        let (status, _) = app.get("/v1/vaults").await;
        assert_eq!(status, StatusCode::OK);
    }
    let (_, ok) = app.get("/v1/audit/verify").await;
    assert_eq!(ok["ok"], true, "{ok}");
    let last = last_seq(&app).await;
    let db = app.db().await;
    db.execute("DELETE FROM audit_events WHERE seq > $1", &[&(last - 3)])
        .await
        .unwrap();
    let first_gap = last - 2;
    let (_, cut) = app.get("/v1/audit/verify").await;
    assert_eq!(cut["ok"], false, "{cut}");
    assert_eq!(cut["first_broken"]["seq"], first_gap, "{cut}");
    // the running server goes on after its head: the cut is now a gap
    let (_, again) = app.get("/v1/audit/verify").await;
    assert_eq!(again["ok"], false, "{again}");
    assert_eq!(again["first_broken"]["seq"], first_gap, "{again}");

    // cut again, then restart: the new server does not continue from the cut end
    let last = last_seq(&app).await;
    db.execute("DELETE FROM audit_events WHERE seq > $1", &[&(last - 3)])
        .await
        .unwrap();
    let mut app2 = app.restart_with(|_| {}).await;
    let (status, _) = app2.get("/v1/vaults").await;
    assert_eq!(status, StatusCode::OK, "the log still takes events");
    let (_, after) = app2.get("/v1/audit/verify").await;
    assert_eq!(after["ok"], false, "{after}");
    assert_eq!(after["first_broken"]["seq"], first_gap, "{after}");
    let stored: Vec<i64> = db
        .query("SELECT seq FROM audit_events ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        stored.iter().any(|s| *s > last),
        "new events follow the signed head, not the cut end: {stored:?}"
    );
    assert!(strongroom_tests::logs().contains("missing from the end of the log"));

    // an emptied log is reported too
    db.execute("DELETE FROM audit_events", &[]).await.unwrap();
    let (_, empty) = app2.get("/v1/audit/verify").await;
    assert_eq!(empty["ok"], false, "{empty}");

    // a head moved by hand: nothing more is appended (answers are withheld), and a server
    // does not start on it
    db.execute("UPDATE audit_head SET seq = seq + 5", &[])
        .await
        .unwrap();
    let (status, body) = app2.get("/v1/vaults").await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "audit_unavailable",
    );
    app2.stop().await;
    let settings = strongroom_tests::test_settings(app.data_dir.clone());
    assert!(
        strongroom::startup::Application::build_with(settings, Some(app.db.clone()))
            .await
            .is_err(),
        "a server must not start on a head it did not sign"
    );
}

/// A log wiped, with its head reset to zero and unsigned (as a new installation has it), is not
/// taken in silently: the next start signs it with a warning and an `adopt_audit_head` event.
#[tokio::test]
async fn a_wiped_log_with_a_reset_head_is_adopted_loudly() {
    let mut app = TestApp::spawn().await;
    app.payments_vault().await;
    let (_, page) = app.get("/v1/audit?limit=1").await;
    assert_ne!(
        page["events"][0]["action"], "adopt_audit_head",
        "a new log: {page}"
    );
    let db = app.db().await;
    db.execute("DELETE FROM audit_events", &[]).await.unwrap();
    db.execute(
        "UPDATE audit_head SET seq = 0, hash = decode(repeat('00', 32), 'hex'), mac = ''",
        &[],
    )
    .await
    .unwrap();
    let app = app.restart_with(|_| {}).await;
    let (_, page) = app.get("/v1/audit?limit=1").await;
    assert_eq!(page["events"][0]["action"], "adopt_audit_head", "{page}");
    assert!(strongroom_tests::logs().contains("was not signed"));
}

/// Revoking the bootstrap key survives a restart with the same configured key; a new
/// configured key replaces it.
#[tokio::test]
async fn a_revoked_bootstrap_key_stays_revoked_across_restarts() {
    let mut app = TestApp::spawn().await;
    let ops = app.service_account("ops", &["admin"]).await;
    let (status, body) = app
        .delete("/v1/service-accounts/admin/keys/bootstrap")
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _) = app.get("/v1/vaults").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let mut again = app.restart_with(|_| {}).await;
    let (status, body) = again.get("/v1/vaults").await;
    let err = assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert!(
        err["message"].as_str().unwrap().contains("revoked"),
        "{err}"
    );
    let (status, _) = again
        .call_as(Some(&ops), Method::GET, "/v1/vaults", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let logs = strongroom_tests::logs();
    assert!(logs.contains("was revoked and stays revoked"));
    assert!(!logs.contains(strongroom_tests::ADMIN_KEY));

    // a new configured key replaces the revoked one
    const NEW_KEY: &str = "a-new-admin-key-0123456789abcdefghijklmnop";
    let third = again
        .restart_with(|s| s.admin_key = Some(NEW_KEY.to_string().into()))
        .await;
    let (status, _) = third
        .call_as(Some(NEW_KEY), Method::GET, "/v1/vaults", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = third.get("/v1/vaults").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the old key stays out");
}

/// `list_vaults` lists names; a schema is shown only where `read_vault` is allowed.
#[tokio::test]
async fn listing_vaults_shows_schemas_only_where_read_vault_is_allowed() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let (status, body) = app
        .post("/v1/vaults", json!({"name": "notes", "template": "pii"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app
        .policies(
            "@id(\"lister\")\npermit(principal in Strongroom::Role::\"lister\", action == Strongroom::Action::\"list_vaults\", resource);\n\
             @id(\"notes-reader\")\npermit(principal in Strongroom::Role::\"lister\", action == Strongroom::Action::\"read_vault\", resource == Strongroom::Vault::\"notes\");",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let key = app.service_account("lister", &["lister"]).await;
    let (status, body) = app
        .call_as(Some(&key), Method::GET, "/v1/vaults/payments", None)
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (status, list) = app
        .call_as(Some(&key), Method::GET, "/v1/vaults", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let vaults = list["vaults"].as_array().unwrap();
    let payments = vaults.iter().find(|v| v["name"] == "payments").unwrap();
    assert!(payments.get("tables").is_none(), "{payments}");
    assert!(payments["created_at"].is_string(), "{payments}");
    assert!(!list.to_string().contains("card_number"), "{list}");
    let notes = vaults.iter().find(|v| v["name"] == "notes").unwrap();
    assert!(
        notes["tables"].as_array().is_some_and(|t| !t.is_empty()),
        "{notes}"
    );
    // the admin sees every schema
    let (_, all) = app.get("/v1/vaults").await;
    assert!(
        all["vaults"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["tables"].is_array())
    );
}

/// A deleted account's name may be used again; the new account inherits nothing.
#[tokio::test]
async fn a_deleted_accounts_name_can_be_used_again() {
    let app = TestApp::spawn().await;
    app.payments_vault().await;
    let (status, body) = app
        .post(
            "/v1/vaults/payments/tables/customers/records",
            json!({"records": [customer("reuse@example.com", "CA")]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let record = body["records"][0]["id"].as_str().unwrap().to_string();
    let old = app.service_account("reused", &["app"]).await;
    let (status, body) = app
        .post(
            "/v1/grants",
            json!({"principal": "reused", "records": [{"vault": "payments", "table": "customers", "id": record}], "expires_in_seconds": 600}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = app.delete("/v1/service-accounts/reused").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let new = app.service_account("reused", &["app"]).await;
    let (status, list) = app.get("/v1/service-accounts").await;
    assert_eq!(status, StatusCode::OK);
    let named = list["service_accounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["name"] == "reused")
        .count();
    assert_eq!(named, 1, "{list}");
    // the old key stays dead, the new one works, and the old account's grant ended with it
    let (status, _) = app
        .call_as(Some(&old), Method::GET, "/v1/vaults", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app
        .call_as(Some(&new), Method::GET, "/v1/vaults", None)
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "authenticated, not permitted"
    );
    let live: i64 = app
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM grants WHERE principal = 'reused' AND revoked_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(live, 0);
    // live names stay unique, and `admin` cannot be deleted
    let (status, body) = app
        .post("/v1/service-accounts", json!({"name": "reused"}))
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, body) = app.delete("/v1/service-accounts/admin").await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, _) = app.get("/v1/vaults").await;
    assert_eq!(status, StatusCode::OK, "admin still works");
}
