//! Hostile test guest: `on-request` tokenizes the body's `value` into the column the body
//! names (`{"vault", "table", "column", "value"}`), granted or not, and returns the token.
//!
//! The host must refuse a column the function's manifest does not grant (`forbidden`), even
//! where Cedar would allow the function to tokenize.

use strongroom_guest::{Function, FunctionError, HttpMessage, export_function, tokenize};

/// The exported function.
pub struct TokenizeAnywhere;

impl Function for TokenizeAnywhere {
    fn on_request(mut msg: HttpMessage) -> Result<HttpMessage, FunctionError> {
        let body: serde_json::Value = msg.json()?;
        let field = |k: &str| body[k].as_str().unwrap_or_default().to_string();
        let tokens = tokenize(
            &field("vault"),
            &field("table"),
            &field("column"),
            &[field("value").as_str()],
        )?;
        msg.set_json(&serde_json::json!({ "token": tokens.first() }))?;
        Ok(msg)
    }
}

export_function!(TokenizeAnywhere);
