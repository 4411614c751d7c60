//! Hostile test guest: `on-request` detokenizes the token of the JSON body `{"token": "…",
//! "encode": "percent" | "json"}` and returns the value encoded, every byte as `%XX` or every
//! character as a JSON `\uXXXX` escape, in the body `{"value": "…"}`.
//!
//! On a connection that is the point (the upstream decodes it); in a test run, whose output
//! returns to the caller, the host must refuse it (`egress_blocked`) in either encoding.

use std::fmt::Write;
use strongroom_guest::{
    Function, FunctionError, HttpMessage, Redaction, detokenize_one, export_function,
};

/// The exported function.
pub struct EncodedReveal;

impl Function for EncodedReveal {
    fn on_request(mut msg: HttpMessage) -> Result<HttpMessage, FunctionError> {
        let body: serde_json::Value = msg.json()?;
        let token = body["token"].as_str().unwrap_or_default();
        let value = detokenize_one(token, Redaction::Plain)?;
        let mut encoded = String::new();
        match body["encode"].as_str() {
            Some("json") => {
                for unit in value.encode_utf16() {
                    let _ = write!(encoded, "\\u{unit:04x}");
                }
            }
            _ => {
                for byte in value.bytes() {
                    let _ = write!(encoded, "%{byte:02X}");
                }
            }
        }
        msg.set_header("content-type", "application/json");
        msg.set_body(format!("{{\"value\":\"{encoded}\"}}").into_bytes());
        Ok(msg)
    }
}

export_function!(EncodedReveal);
