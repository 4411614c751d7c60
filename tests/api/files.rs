//! `file` columns: encrypted documents with their name and media type, written as base64 JSON
//! or multipart, read at each redaction level, downloaded by authorized callers only.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use strongroom_tests::{ADMIN_KEY, TestApp, assert_error};

const RECORDS: &str = "/v1/vaults/legal/tables/contracts/records";
const PDF: &[u8] = b"%PDF-1.7\n% a tiny contract between Ada and the vault\n%%EOF\n";

async fn legal_vault(app: &TestApp) {
    let (status, body) = app
        .post(
            "/v1/vaults",
            json!({"name": "legal", "tables": [{"name": "contracts", "columns": [
                {"name": "signer", "type": "name"},
                {"name": "pdf", "type": "file"}]}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let pdf = &body["tables"][0]["columns"][1];
    assert_eq!(pdf["tokenization"], "random", "{body}");
    assert_eq!(pdf["redaction"], "masked", "{body}");
}

fn file(name: &str, media_type: &str, content: &[u8]) -> Value {
    json!({"name": name, "media_type": media_type, "content_base64": STANDARD.encode(content)})
}

async fn download(app: &TestApp, key: &str, id: &str) -> reqwest::Response {
    app.client
        .get(format!("{}{RECORDS}/{id}/files/pdf", app.base))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn file_columns_store_read_download_and_replace() {
    let app = TestApp::spawn().await;
    legal_vault(&app).await;
    let (status, body) = app
        .post(
            RECORDS,
            json!({"records": [{"fields": {"signer": "Ada Lovelace", "pdf": file("contract.pdf", "application/PDF", PDF)}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["records"][0]["id"].as_str().unwrap().to_string();
    let token = body["records"][0]["tokens"]["pdf"]
        .as_str()
        .unwrap()
        .to_string();

    // plain: what was submitted (media type normalised) and the size
    let (status, plain) = app.get(&format!("{RECORDS}/{id}?redaction=plain")).await;
    assert_eq!(status, StatusCode::OK, "{plain}");
    let pdf = &plain["fields"]["pdf"];
    assert_eq!(pdf["name"], "contract.pdf");
    assert_eq!(pdf["media_type"], "application/pdf");
    assert_eq!(pdf["size_bytes"], PDF.len());
    assert_eq!(pdf["content_base64"], STANDARD.encode(PDF));
    // default (masked): the media type and size, never the name or content
    let (_, masked) = app.get(&format!("{RECORDS}/{id}?redaction=masked")).await;
    assert_eq!(
        masked["fields"]["pdf"],
        format!("application/pdf file, {} bytes", PDF.len())
    );
    let (_, detok) = app
        .post(
            "/v1/vaults/legal/detokenize",
            json!({"tokens": [token], "redaction": "masked"}),
        )
        .await;
    assert_eq!(detok["results"][0]["column"], "pdf", "{detok}");
    assert!(!detok.to_string().contains("contract.pdf"));

    // download: the bytes, as an attachment, never sniffed or cached
    let resp = download(&app, ADMIN_KEY, &id).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "application/pdf");
    assert_eq!(
        h["content-disposition"],
        "attachment; filename*=UTF-8''contract%2Epdf"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), PDF);

    // multipart upload replaces it: a new token, the old one dead
    let new_pdf = b"%PDF-1.7\n% version two\n%%EOF\n".to_vec();
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(new_pdf.clone())
            .file_name("contract v2.pdf")
            .mime_str("application/pdf")
            .unwrap(),
    );
    let resp = app
        .client
        .put(format!("{}{RECORDS}/{id}/files/pdf", app.base))
        .bearer_auth(ADMIN_KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let updated: Value = resp.json().await.unwrap();
    assert!(updated["tokens"]["pdf"].is_string(), "{updated}");
    assert_ne!(updated["tokens"]["pdf"], token);
    let resp = download(&app, ADMIN_KEY, &id).await;
    assert_eq!(
        resp.headers()["content-disposition"],
        "attachment; filename*=UTF-8''contract%20v2%2Epdf"
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), new_pdf.as_slice());
    let (_, detok) = app
        .post(
            "/v1/vaults/legal/detokenize",
            json!({"tokens": [token], "redaction": "plain"}),
        )
        .await;
    assert_eq!(detok["results"][0]["error"]["code"], "not_found", "{detok}");

    // a file of 16 MiB goes in whole, one byte more does not
    let big = vec![7u8; 16 << 20];
    let (status, body) = app
        .post(
            RECORDS,
            json!({"records": [{"fields": {"pdf": file("big.bin", "application/octet-stream", &big)}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let big_id = body["records"][0]["id"].as_str().unwrap().to_string();
    let resp = download(&app, ADMIN_KEY, &big_id).await;
    assert_eq!(resp.bytes().await.unwrap().len(), big.len());
    let mut bigger = big;
    bigger.push(0);
    let (status, body) = app
        .post(
            RECORDS,
            json!({"records": [{"fields": {"pdf": file("big.bin", "application/octet-stream", &bigger)}}]}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(body["error"]["details"][0]["field"], "pdf", "{body}");
}

#[tokio::test]
async fn downloads_need_plain_access_to_the_column() {
    let app = TestApp::spawn().await;
    legal_vault(&app).await;
    let (_, body) = app
        .post(
            RECORDS,
            json!({"records": [{"fields": {"signer": "Ada Lovelace", "pdf": file("c.pdf", "application/pdf", PDF)}}]}),
        )
        .await;
    let id = body["records"][0]["id"].as_str().unwrap().to_string();
    let key = app.service_account("paralegal", &["paralegal"]).await;
    let (status, body) = app
        .policies(
            r#"@id("paralegal-masked")
permit(principal in Strongroom::Role::"paralegal", action == Strongroom::Action::"read", resource)
when { context.redaction == "masked" };"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // the masked summary is allowed...
    let (status, body) = app
        .call_with(&key, None, Method::GET, &format!("{RECORDS}/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["fields"]["pdf"],
        format!("application/pdf file, {} bytes", PDF.len())
    );
    // ...the content is not
    let resp = download(&app, &key, &id).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    let (_, audit) = app.get("/v1/audit?action=read_record").await;
    assert!(!audit.to_string().contains("c.pdf"));
}

#[tokio::test]
async fn bad_files_and_file_schemas_are_refused() {
    let app = TestApp::spawn().await;
    for (column, field) in [
        (
            json!({"name": "f", "type": "file", "tokenization": "deterministic"}),
            "tokenization",
        ),
        (
            json!({"name": "f", "type": "file", "tokenization": "format_preserving"}),
            "tokenization",
        ),
        (
            json!({"name": "f", "type": "file", "unique": true}),
            "unique",
        ),
        (
            json!({"name": "f", "type": "file", "policy_attribute": true}),
            "policy_attribute",
        ),
        (
            json!({"name": "f", "type": "file", "mask": "keep_last:4"}),
            "mask",
        ),
    ] {
        let (status, body) = app
            .post(
                "/v1/vaults",
                json!({"name": "bad", "tables": [{"name": "t", "columns": [column]}]}),
            )
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
        assert_eq!(
            body["error"]["details"][0]["field"],
            format!("tables[0].columns[0].{field}"),
            "{body}"
        );
    }

    legal_vault(&app).await;
    let secret = "Ada-Lovelace-Secret-Contract";
    for bad in [
        json!(secret),
        json!({"name": "a.pdf", "media_type": "application/pdf"}),
        json!({"name": "a.pdf", "media_type": "application/pdf", "content_base64": format!("{secret}!")}),
        json!({"name": format!("../{secret}"), "media_type": "application/pdf", "content_base64": ""}),
        json!({"name": "a.pdf", "media_type": secret, "content_base64": ""}),
    ] {
        let (status, body) = app
            .post(RECORDS, json!({"records": [{"fields": {"pdf": bad}}]}))
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
        assert_eq!(body["error"]["details"][0]["field"], "pdf", "{body}");
        assert!(!body.to_string().contains(secret), "{body}");
    }
    let n = app.count("records").await;
    assert_eq!(n, 0, "nothing stored");

    // downloads: not a file column, no such record, a record without a file
    let (_, body) = app
        .post(
            RECORDS,
            json!({"records": [{"fields": {"signer": "Ada Lovelace"}}]}),
        )
        .await;
    let id = body["records"][0]["id"].as_str().unwrap().to_string();
    let (status, body) = app.get(&format!("{RECORDS}/{id}/files/signer")).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, body) = app.get(&format!("{RECORDS}/{id}/files/pdf")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = app
        .get(&format!(
            "{RECORDS}/00000000-0000-4000-8000-000000000000/files/pdf"
        ))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    // multipart without a file name or with the wrong part
    let form = reqwest::multipart::Form::new().part(
        "document",
        reqwest::multipart::Part::bytes(PDF.to_vec())
            .file_name("c.pdf")
            .mime_str("application/pdf")
            .unwrap(),
    );
    let resp = app
        .client
        .put(format!("{}{RECORDS}/{id}/files/pdf", app.base))
        .bearer_auth(ADMIN_KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn detokenize_opens_a_repeated_file_once_and_refuses_answers_past_its_size_limit() {
    let app = TestApp::spawn().await;
    legal_vault(&app).await;
    // 1 MiB that is not text: about 1.4 MB sealed (base64 inside the sealed JSON).
    let content: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let (status, body) = app
        .post(
            RECORDS,
            json!({"records": [{"fields": {"signer": "Ada Lovelace", "pdf": file("big.bin", "application/octet-stream", &content)}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let token = body["records"][0]["tokens"]["pdf"].clone();
    let signer = body["records"][0]["tokens"]["signer"].clone();
    let detokenize = |key: &str, tokens: Vec<Value>| {
        let (key, app) = (key.to_string(), &app);
        async move {
            app.call_as(
                Some(&key),
                Method::POST,
                "/v1/vaults/legal/detokenize",
                Some(json!({"tokens": tokens, "redaction": "plain"})),
            )
            .await
        }
    };
    // The same file three times, between other tokens: each position answered, in order.
    let (status, body) = detokenize(
        ADMIN_KEY,
        vec![
            token.clone(),
            signer.clone(),
            token.clone(),
            json!("tok_unknown"),
            token.clone(),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    for i in [0, 2, 4] {
        assert_eq!(results[i]["token"], token);
        assert_eq!(
            results[i]["value"]["content_base64"],
            STANDARD.encode(&content)
        );
    }
    assert_eq!(results[1]["value"], "Ada Lovelace");
    assert_eq!(results[3]["error"]["code"], "not_found");
    // Forty copies would make an answer of about 56 MB: refused, before the file is read.
    let (status, body) = detokenize(ADMIN_KEY, vec![token.clone(); 40]).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    // A caller who may see none of it gets its answer at once, item by item.
    let nobody = app.service_account("nobody", &["nobody"]).await;
    let (status, body) = detokenize(&nobody, vec![token.clone(); 1000]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 1000);
    assert!(
        results.iter().all(|r| r["error"]["code"] == "forbidden"),
        "{}",
        results[0]
    );
}
