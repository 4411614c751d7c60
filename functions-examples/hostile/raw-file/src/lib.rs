//! Hostile test guest: `on-request` reads the file named by the JSON body `{"vault", "table",
//! "record", "column"}` and returns its raw bytes as the body (binary, not text, not base64).
//!
//! On a connection that is the point (the bytes go upstream); in a test run, whose output
//! returns to the caller, the host must refuse it (`egress_blocked`), bytes compared as bytes.

use strongroom_guest::{Function, FunctionError, HttpMessage, export_function, read_file};

/// The exported function.
pub struct RawFile;

impl Function for RawFile {
    fn on_request(mut msg: HttpMessage) -> Result<HttpMessage, FunctionError> {
        let body: serde_json::Value = msg.json()?;
        let field = |k: &str| body[k].as_str().unwrap_or_default().to_string();
        let file = read_file(
            &field("vault"),
            &field("table"),
            &field("record"),
            &field("column"),
        )?;
        msg.set_header("content-type", file.media_type);
        msg.set_body(file.data);
        Ok(msg)
    }
}

export_function!(RawFile);
