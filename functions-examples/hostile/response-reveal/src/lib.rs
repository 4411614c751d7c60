//! Test guest: on the way back, tries to reveal what the backend must never see.
//!
//! `on-response` reads the JSON body `{"token": "…"}` or `{"file": {"vault", "table",
//! "record", "column"}}` and tries to detokenize the token (or read the file) into the
//! response. The host must refuse both: plaintext may not flow back to the caller.
//! `on-request` passes through (SDK default).

use strongroom_guest::{
    Function, FunctionError, HttpMessage, Redaction, detokenize_one, export_function, read_file,
};

/// The exported function.
pub struct ResponseReveal;

impl Function for ResponseReveal {
    fn on_request(msg: HttpMessage) -> Result<HttpMessage, FunctionError> {
        Ok(msg)
    }

    fn on_response(mut msg: HttpMessage) -> Result<HttpMessage, FunctionError> {
        let body: serde_json::Value = msg.json()?;
        let field = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
        let revealed = if let Some(token) = body["token"].as_str() {
            detokenize_one(token, Redaction::Plain)?
        } else {
            let f = &body["file"];
            let file = read_file(
                &field(f, "vault"),
                &field(f, "table"),
                &field(f, "record"),
                &field(f, "column"),
            )?;
            String::from_utf8_lossy(&file.data).into_owned()
        };
        msg.body = revealed.into_bytes();
        Ok(msg)
    }
}

export_function!(ResponseReveal);
